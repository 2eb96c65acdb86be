//! Weights from `model.safetensors` or a sharded `model.safetensors.index.json`, memory-mapped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use blip2_core::error::{Error, Result};
use blip2_core::weights::{WeightDType, WeightSource};
use burn::tensor::TensorData;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;
use serde::Deserialize;

/// The single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The sharded weights index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One memory-mapped safetensors file with its parsed, validated header.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (8-byte length + header).
    data_start: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only. As with every mmap, another process truncating the file
        // while it is mapped would fault; model files are not modified in place by HF tooling.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::CorruptWeights {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Shard {
            path: path.to_owned(),
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let (start, end) = info.data_offsets;
        // read_metadata checked that the offsets tile the data section exactly.
        &self.mmap[self.data_start + start..self.data_start + end]
    }

    /// Tells the kernel this process is done with a tensor's pages, once it has been converted,
    /// so the mapped file does not stay in the resident set beside the converted weights (the
    /// pages stay in the page cache, and a later read faults them back in).
    fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        {
            let (start, end) = info.data_offsets;
            // SAFETY: the map is a read-only shared mapping of a file: dropping its pages cannot
            // change what reading them returns, only when they are read from the page cache.
            // The range lies inside the map (checked by read_metadata).
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.data_start + start,
                    end - start,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = info;
    }
}

/// A checkpoint's safetensors weights: one file or several shards, each memory-mapped once.
///
/// Tensors are converted to the requested dtype when read; nothing is copied before that.
pub struct SafetensorsWeights {
    location: PathBuf,
    shards: Vec<Shard>,
    /// key -> index into `shards`.
    keys: HashMap<String, usize>,
    /// Keys read so far (see [`SafetensorsWeights::unread_keys`]).
    read_keys: Mutex<HashSet<String>>,
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorsWeights {
    /// Opens the weights of a model folder: `model.safetensors.index.json` when present (shards
    /// named by the index, never guessed), else `model.safetensors`.
    ///
    /// Errors: [`Error::PickleOnly`] when only `pytorch_model.bin` is there, [`Error::NoWeights`]
    /// when nothing is, and the errors of [`SafetensorsWeights::from_index`] and
    /// [`SafetensorsWeights::from_file`].
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::from_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::from_file(&single);
        }
        for pickle in ["pytorch_model.bin", "pytorch_model.bin.index.json"] {
            if dir.join(pickle).is_file() {
                return Err(Error::PickleOnly {
                    dir: dir.to_owned(),
                    file: pickle.to_owned(),
                });
            }
        }
        Err(Error::NoWeights {
            dir: dir.to_owned(),
        })
    }

    /// Opens one safetensors file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let shard = Shard::open(path.as_ref())?;
        let keys = shard
            .metadata
            .tensors()
            .into_keys()
            .map(|k| (k, 0))
            .collect();
        Ok(SafetensorsWeights {
            location: path.as_ref().to_owned(),
            shards: vec![shard],
            keys,
            read_keys: Mutex::default(),
        })
    }

    /// Opens the shards named by a `model.safetensors.index.json`.
    ///
    /// Shard names must be plain relative paths inside the index's folder: absolute paths, `..`
    /// and symlinks resolving outside the folder are refused ([`Error::UnsafeShardPath`]); a shard
    /// that does not exist is [`Error::MissingShard`]; a key the index maps to a shard lacking it
    /// is [`Error::CorruptWeights`].
    pub fn from_index(index_path: impl AsRef<Path>) -> Result<Self> {
        let index_path = index_path.as_ref();
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
        let index: Index = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: index_path.to_owned(),
            source,
        })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;

        let mut shard_ids: HashMap<&str, usize> = HashMap::new();
        let mut shards = Vec::new();
        for shard_name in index.weight_map.values() {
            if shard_ids.contains_key(shard_name.as_str()) {
                continue;
            }
            let path = shard_path(index_path, &root, shard_name)?;
            shard_ids.insert(shard_name, shards.len());
            shards.push(Shard::open(&path)?);
        }

        let mut keys = HashMap::with_capacity(index.weight_map.len());
        for (key, shard_name) in &index.weight_map {
            let id = shard_ids[shard_name.as_str()];
            if shards[id].metadata.info(key).is_none() {
                return Err(Error::CorruptWeights {
                    path: index_path.to_owned(),
                    reason: format!("maps {key:?} to {shard_name}, which does not contain it"),
                });
            }
            keys.insert(key.clone(), id);
        }
        Ok(SafetensorsWeights {
            location: dir.to_owned(),
            shards,
            keys,
            read_keys: Mutex::default(),
        })
    }

    /// The stored tensors that no [`WeightSource::read`] has asked for, sorted. After a model is
    /// loaded these are the checkpoint's extra tensors, which loading ignores (with a warning).
    pub fn unread_keys(&self) -> Vec<String> {
        let read = self.read_keys.lock().unwrap_or_else(|e| e.into_inner());
        let mut unread: Vec<String> = self
            .keys
            .keys()
            .filter(|k| !read.contains(*k))
            .cloned()
            .collect();
        unread.sort();
        unread
    }

    /// The dtype `key` is stored in, as safetensors names it (`F16`, `BF16`, ...).
    pub fn stored_dtype(&self, key: &str) -> Option<String> {
        self.info(key).map(|(_, info)| format!("{:?}", info.dtype))
    }

    fn info(&self, key: &str) -> Option<(&Shard, &TensorInfo)> {
        let shard = &self.shards[*self.keys.get(key)?];
        shard.metadata.info(key).map(|info| (shard, info))
    }
}

/// Resolves a shard name from an index, refusing anything that leaves the model folder.
fn shard_path(index_path: &Path, root: &Path, name: &str) -> Result<PathBuf> {
    let unsafe_path = || Error::UnsafeShardPath {
        index: index_path.to_owned(),
        shard: name.to_owned(),
    };
    let relative = Path::new(name);
    if name.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(unsafe_path());
    }
    let path = root.join(relative);
    let resolved = match path.canonicalize() {
        Ok(p) => p,
        Err(_) => {
            return Err(Error::MissingShard {
                index: index_path.to_owned(),
                shard: name.to_owned(),
            })
        }
    };
    if !resolved.starts_with(root) {
        return Err(unsafe_path());
    }
    Ok(resolved)
}

impl WeightSource for SafetensorsWeights {
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.info(key).map(|(_, info)| info.shape.clone())
    }

    fn read(&self, key: &str, expected: &[usize], dtype: WeightDType) -> Result<TensorData> {
        let (shard, info) = self.info(key).ok_or_else(|| Error::MissingTensor {
            key: key.to_owned(),
            location: self.location(),
        })?;
        if info.shape != expected {
            return Err(Error::ShapeMismatch {
                key: key.to_owned(),
                file: shard.name(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let bytes = shard.bytes(info);
        let shape = info.shape.clone();
        let data = match (info.dtype, dtype) {
            (Dtype::F32, WeightDType::F32) => TensorData::new(le_f32(bytes), shape),
            (Dtype::F16, WeightDType::F32) => TensorData::new(widen::<f16>(bytes), shape),
            (Dtype::BF16, WeightDType::F32) => TensorData::new(widen::<bf16>(bytes), shape),
            (Dtype::F16, WeightDType::F16) => TensorData::new(le_u16::<f16>(bytes), shape),
            (Dtype::BF16, WeightDType::BF16) => TensorData::new(le_u16::<bf16>(bytes), shape),
            (Dtype::F32, WeightDType::F16) => {
                let mut out = vec![f16::ZERO; bytes.len() / 4];
                out.convert_from_f32_slice(&le_f32(bytes));
                TensorData::new(out, shape)
            }
            (Dtype::F32, WeightDType::BF16) => {
                let mut out = vec![bf16::ZERO; bytes.len() / 4];
                out.convert_from_f32_slice(&le_f32(bytes));
                TensorData::new(out, shape)
            }
            (Dtype::F16, WeightDType::BF16) => {
                let wide = widen::<f16>(bytes);
                let mut out = vec![bf16::ZERO; wide.len()];
                out.convert_from_f32_slice(&wide);
                TensorData::new(out, shape)
            }
            (Dtype::BF16, WeightDType::F16) => {
                let wide = widen::<bf16>(bytes);
                let mut out = vec![f16::ZERO; wide.len()];
                out.convert_from_f32_slice(&wide);
                TensorData::new(out, shape)
            }
            (other, _) => {
                return Err(Error::UnsupportedDType {
                    key: key.to_owned(),
                    file: shard.name(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        shard.release(info);
        self.read_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned());
        Ok(data)
    }

    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.keys.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn location(&self) -> String {
        self.location.display().to_string()
    }
}

fn le_f32(bytes: &[u8]) -> Vec<f32> {
    convert(bytes, 4, |src, dst: &mut [f32]| {
        for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    })
}

/// Elements per conversion task; smaller tensors are converted on the calling thread.
const CONVERT_CHUNK: usize = 1 << 20;

/// Converts `bytes` (`width` bytes per element) into a new vector with `f`, which fills a piece of
/// the output from the matching piece of the input. Large tensors are split over the machine's
/// cores: loading is otherwise bound by this one-thread loop.
fn convert<T: Copy + Default + Send>(
    bytes: &[u8],
    width: usize,
    f: impl Fn(&[u8], &mut [T]) + Sync,
) -> Vec<T> {
    let n = bytes.len() / width;
    let mut out = vec![T::default(); n];
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = n.div_ceil(threads).max(CONVERT_CHUNK);
    if chunk >= n {
        f(bytes, &mut out);
        return out;
    }
    std::thread::scope(|scope| {
        for (dst, src) in out.chunks_mut(chunk).zip(bytes.chunks(chunk * width)) {
            let f = &f;
            scope.spawn(move || f(src, dst));
        }
    });
    out
}

trait Half16: Copy {
    fn from_bits(bits: u16) -> Self;
}

impl Half16 for f16 {
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
}

impl Half16 for bf16 {
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
}

fn le_u16<T: Half16>(bytes: &[u8]) -> Vec<T> {
    bytes
        .chunks_exact(2)
        .map(|b| T::from_bits(u16::from_le_bytes([b[0], b[1]])))
        .collect()
}

fn widen<T: Half16 + Default + Send + Sync>(bytes: &[u8]) -> Vec<f32>
where
    [T]: HalfFloatSliceExt,
{
    convert(bytes, 2, |src, dst: &mut [f32]| {
        // Through a small buffer of halves, so the SIMD conversion of `half` does the widening.
        let mut halves = [T::default(); 4096];
        for (src, dst) in src
            .chunks(2 * halves.len())
            .zip(dst.chunks_mut(halves.len()))
        {
            let halves = &mut halves[..dst.len()];
            for (h, b) in halves.iter_mut().zip(src.chunks_exact(2)) {
                *h = T::from_bits(u16::from_le_bytes([b[0], b[1]]));
            }
            halves.convert_to_f32_slice(dst);
        }
    })
}
