//! Writing tensors straight into safetensors files, sharded like `save_pretrained`, without
//! holding a tensor in memory: values are generated in chunks (in parallel) in the stored dtype
//! and written as they are made.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use rayon::prelude::*;
use serde_json::{json, Map, Value};

use crate::layout::{Init, TensorSpec};

/// The dtype tensors are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDType {
    /// 32-bit float.
    F32,
    /// IEEE half precision (what the hub's BLIP-2 repos and `make_models.py` store).
    F16,
    /// bfloat16.
    BF16,
}

impl StoredDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StoredDType::F32 => 4,
            StoredDType::F16 | StoredDType::BF16 => 2,
        }
    }

    /// The name in a safetensors header.
    pub fn header_name(self) -> &'static str {
        match self {
            StoredDType::F32 => "F32",
            StoredDType::F16 => "F16",
            StoredDType::BF16 => "BF16",
        }
    }

    /// torch's name, for `config.json`'s `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            StoredDType::F32 => "float32",
            StoredDType::F16 => "float16",
            StoredDType::BF16 => "bfloat16",
        }
    }
}

impl std::str::FromStr for StoredDType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(StoredDType::F32),
            "f16" | "float16" => Ok(StoredDType::F16),
            "bf16" | "bfloat16" => Ok(StoredDType::BF16),
            other => Err(format!(
                "unknown dtype {other:?}; expected f32, f16 or bf16"
            )),
        }
    }
}

/// Standard deviation of the random tensors (transformers' `initializer_range`).
const STD: f32 = 0.02;
/// Elements generated per parallel chunk.
const CHUNK: usize = 1 << 20;

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed per tensor: FNV-1a of its name, mixed with the checkpoint's seed.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    let fnv = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    mix(fnv ^ mix(seed))
}

/// Element `i` of a random tensor: uniform in `[-a, a]` with `a = √3 · STD`, a function of the
/// tensor's seed and `i` alone, so chunks can be made in any order on any number of threads.
fn value(seed: u64, i: usize) -> f32 {
    let bits = mix(seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let unit = (bits >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
    (unit * 2.0 - 1.0) * (STD * 3f32.sqrt())
}

/// Encodes elements `start..start + out.len() / size` of a tensor into `out`, through a small
/// f32 block converted with `half`'s slice conversions (F16C where the CPU has it).
fn fill(out: &mut [u8], start: usize, init: Init, seed: u64, dtype: StoredDType) {
    const BLOCK: usize = 4096;
    let size = dtype.size();
    let mut values = [0f32; BLOCK];
    let mut halves = [0u16; BLOCK];
    for (b, bytes) in out.chunks_mut(BLOCK * size).enumerate() {
        let n = bytes.len() / size;
        let first = start + b * BLOCK;
        let values = &mut values[..n];
        match init {
            Init::Zeros => values.fill(0.0),
            Init::Ones => values.fill(1.0),
            Init::Random => {
                for (k, v) in values.iter_mut().enumerate() {
                    *v = value(seed, first + k);
                }
            }
        }
        let halves = &mut halves[..n];
        match dtype {
            StoredDType::F32 => {
                for (v, out) in values.iter().zip(bytes.chunks_exact_mut(4)) {
                    out.copy_from_slice(&v.to_le_bytes());
                }
                continue;
            }
            StoredDType::F16 => {
                let halves: &mut [f16] = halves.reinterpret_cast_mut();
                halves.convert_from_f32_slice(values);
            }
            StoredDType::BF16 => {
                let halves: &mut [bf16] = halves.reinterpret_cast_mut();
                halves.convert_from_f32_slice(values);
            }
        }
        for (h, out) in halves.iter().zip(bytes.chunks_exact_mut(2)) {
            out.copy_from_slice(&h.to_le_bytes());
        }
    }
}

/// The safetensors header for `tensors` stored back to back: the JSON, padded with spaces to a
/// multiple of 8 bytes as the format's reference writer does.
fn header(tensors: &[&TensorSpec], dtype: StoredDType) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.len() * dtype.size();
        map.insert(
            t.name.clone(),
            json!({ "dtype": dtype.header_name(), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&Value::Object(map)).expect("a JSON map serialises");
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    text
}

/// Writes one safetensors file holding `tensors`, generating each in parallel chunks of the
/// stored dtype (memory: a few chunks, never a whole tensor). Returns the bytes written.
pub fn write_file(
    path: &Path,
    tensors: &[&TensorSpec],
    dtype: StoredDType,
    seed: u64,
) -> std::io::Result<u64> {
    let mut file = BufWriter::with_capacity(1 << 22, File::create(path)?);
    let head = header(tensors, dtype);
    file.write_all(&(head.len() as u64).to_le_bytes())?;
    file.write_all(&head)?;
    let mut written = 8 + head.len() as u64;
    let threads = rayon::current_num_threads().max(1);
    let mut buffer = vec![0u8; CHUNK * dtype.size() * threads];
    for t in tensors {
        let seed = tensor_seed(seed, &t.name);
        let n = t.len();
        let mut start = 0;
        while start < n {
            let count = (n - start).min(CHUNK * threads);
            let bytes = &mut buffer[..count * dtype.size()];
            bytes
                .par_chunks_mut(CHUNK * dtype.size())
                .enumerate()
                .for_each(|(c, out)| fill(out, start + c * CHUNK, t.init, seed, dtype));
            file.write_all(bytes)?;
            written += bytes.len() as u64;
            start += count;
        }
    }
    file.flush()?;
    Ok(written)
}

/// Splits tensors into shards of at most `max_shard_bytes` each (a larger tensor gets a shard of
/// its own), in order, as transformers' `save_pretrained(max_shard_size=…)` does.
pub fn shards(
    tensors: &[TensorSpec],
    dtype: StoredDType,
    max_shard_bytes: u64,
) -> Vec<Vec<&TensorSpec>> {
    let mut out: Vec<Vec<&TensorSpec>> = Vec::new();
    let mut current = 0u64;
    for t in tensors {
        let bytes = (t.len() * dtype.size()) as u64;
        match out.last_mut() {
            Some(shard) if current + bytes <= max_shard_bytes => {
                shard.push(t);
                current += bytes;
            }
            _ => {
                out.push(vec![t]);
                current = bytes;
            }
        }
    }
    out
}

/// Writes `tensors` into `dir` as `model.safetensors`, or, past one shard, as
/// `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`. Returns the bytes
/// written.
pub fn write_checkpoint_weights(
    dir: &Path,
    tensors: &[TensorSpec],
    dtype: StoredDType,
    seed: u64,
    max_shard_bytes: u64,
) -> std::io::Result<u64> {
    let shards = shards(tensors, dtype, max_shard_bytes);
    let mut total = 0;
    if shards.len() <= 1 {
        let all: Vec<&TensorSpec> = tensors.iter().collect();
        return write_file(&dir.join("model.safetensors"), &all, dtype, seed);
    }
    let mut weight_map = Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        total += write_file(&dir.join(&file), shard, dtype, seed)?;
        for t in shard {
            weight_map.insert(t.name.clone(), Value::String(file.clone()));
        }
    }
    let parameters: usize = tensors.iter().map(TensorSpec::len).sum();
    let index = json!({
        "metadata": {
            "total_parameters": parameters,
            "total_size": parameters * dtype.size(),
        },
        "weight_map": weight_map,
    });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        format!("{index:#}\n"),
    )?;
    Ok(total)
}
