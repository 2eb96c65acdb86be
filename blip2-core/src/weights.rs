//! How model crates read their weights: by HF key name, through [`WeightSource`].
//!
//! The model crates never open files. They ask a [`Weights`] view for a tensor by the name it has in
//! transformers' state dict (`vision_model.encoder.layers.0.self_attn.qkv.weight`) and the shape
//! their configuration implies; the source checks the shape and converts the stored dtype once.

use burn::tensor::TensorData;

use crate::error::{Error, Result};

/// The float dtype weights are converted to when they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightDType {
    /// 32-bit float: the exact, parity-tested mode, supported by every backend.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl WeightDType {
    /// burn's name for this dtype.
    pub fn to_burn(self) -> burn::tensor::DType {
        match self {
            WeightDType::F32 => burn::tensor::DType::F32,
            WeightDType::F16 => burn::tensor::DType::F16,
            WeightDType::BF16 => burn::tensor::DType::BF16,
        }
    }
}

impl std::str::FromStr for WeightDType {
    type Err = Error;

    /// `f32`, `f16` or `bf16`, in any case; also torch's names (`float32`, `float16`, `half`,
    /// `bfloat16`) and the `fp32`/`fp16` spelling.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(WeightDType::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(WeightDType::F16),
            "bf16" | "bfloat16" => Ok(WeightDType::BF16),
            _ => Err(Error::InvalidInput(format!(
                "unknown dtype {s:?}; expected f32, f16 or bf16"
            ))),
        }
    }
}

impl std::fmt::Display for WeightDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightDType::F32 => "f32",
            WeightDType::F16 => "f16",
            WeightDType::BF16 => "bf16",
        })
    }
}

/// How linear layers store their weights, beyond [`WeightDType`]'s conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Quantization {
    /// Weights as read, in the view's dtype.
    #[default]
    None,
    /// Weight-only int8: each linear layer's weight quantized once, at load, with one f32 scale
    /// per output row (`blip2_kernels::Int8Matrix`'s rule); inputs, sums, bias and outputs in
    /// f32. Approximate: results differ from f32's by the rounding of the weights.
    Int8,
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quantization::None => "none",
            Quantization::Int8 => "int8",
        })
    }
}

/// A checkpoint's tensors, by HF key name.
///
/// Implemented by `blip2-hub` over (sharded) safetensors files; tests may implement it over a map.
/// Implementations must be cheap to query: `shape` and `contains` read only the header.
pub trait WeightSource: Send + Sync {
    /// The stored shape of `key`, or `None` when the checkpoint lacks it.
    fn shape(&self, key: &str) -> Option<Vec<usize>>;

    /// Reads `key`, checks that its shape is `expected` and converts it to `dtype`.
    ///
    /// Errors: [`Error::MissingTensor`], [`Error::ShapeMismatch`], [`Error::UnsupportedDType`].
    fn read(&self, key: &str, expected: &[usize], dtype: WeightDType) -> Result<TensorData>;

    /// Whether the checkpoint holds `key`.
    fn contains(&self, key: &str) -> bool {
        self.shape(key).is_some()
    }

    /// Every key the checkpoint holds, sorted.
    fn keys(&self) -> Vec<String>;

    /// Where the weights come from, for error messages (a folder or file).
    fn location(&self) -> String;
}

/// A view of a [`WeightSource`] under a key prefix, converting to one dtype (and, for the
/// linear layers built from it by [`crate::nn::linear`], quantizing as it says).
///
/// Mirrors transformers' module tree: `weights.pp("vision_model").pp("embeddings")` reads keys
/// `vision_model.embeddings.*`.
#[derive(Clone)]
pub struct Weights<'a> {
    source: &'a dyn WeightSource,
    prefix: String,
    dtype: WeightDType,
    quantization: Quantization,
}

impl<'a> Weights<'a> {
    /// A view of the whole checkpoint, converting every tensor to `dtype`.
    pub fn new(source: &'a dyn WeightSource, dtype: WeightDType) -> Self {
        Weights {
            source,
            prefix: String::new(),
            dtype,
            quantization: Quantization::None,
        }
    }

    /// How linear layers under this view store their weights.
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    /// The same view, with linear layers stored as `quantization` says (views below it
    /// inherit it).
    pub fn with_quantization(&self, quantization: Quantization) -> Weights<'a> {
        Weights {
            quantization,
            ..self.clone()
        }
    }

    /// The dtype tensors are converted to.
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// The same view, converting tensors to `dtype` instead: for a part of the model kept in
    /// another precision (BLIP-2's Q-Former stays in f32 when the rest runs in f16).
    pub fn with_dtype(&self, dtype: WeightDType) -> Weights<'a> {
        Weights {
            dtype,
            ..self.clone()
        }
    }

    /// The full key of `name` under this view's prefix.
    pub fn key(&self, name: &str) -> String {
        join(&self.prefix, name)
    }

    /// A view one level down: `pp("layers").pp(0)` reads `layers.0.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Weights<'a> {
        Weights {
            source: self.source,
            prefix: join(&self.prefix, &name.to_string()),
            dtype: self.dtype,
            quantization: self.quantization,
        }
    }

    /// Reads `name` (relative to this view) with the expected shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<TensorData> {
        self.source.read(&self.key(name), shape, self.dtype)
    }

    /// Reads `name` if the checkpoint has it, `None` otherwise (a wrong shape is still an error).
    pub fn get_optional(&self, name: &str, shape: &[usize]) -> Result<Option<TensorData>> {
        let key = self.key(name);
        if self.source.contains(&key) {
            self.source.read(&key, shape, self.dtype).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Whether the checkpoint holds `name` under this view.
    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.key(name))
    }

    /// The error for a tensor under this view that is required but absent.
    pub fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            key: self.key(name),
            location: self.source.location(),
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A weight source that invents every tensor it is asked for: deterministic pseudo-random values
/// (uniform in `[-scale, scale]`, seeded by the key name), any shape.
///
/// For building a model at its real size without files (shape checks, benchmarks). Every key
/// "exists", so optional tensors (such as a fused `qkv.bias`) are always present.
#[derive(Debug, Clone)]
pub struct RandomWeights {
    scale: f32,
}

impl RandomWeights {
    /// Values uniform in `[-scale, scale]`.
    pub fn new(scale: f32) -> Self {
        RandomWeights { scale }
    }
}

impl WeightSource for RandomWeights {
    fn shape(&self, _key: &str) -> Option<Vec<usize>> {
        None
    }

    fn contains(&self, _key: &str) -> bool {
        true
    }

    fn read(&self, key: &str, expected: &[usize], dtype: WeightDType) -> Result<TensorData> {
        // FNV-1a of the key seeds a xorshift generator.
        let mut state = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        let n: usize = expected.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * self.scale
            })
            .collect();
        Ok(TensorData::new(values, expected.to_vec()).convert_dtype(dtype.to_burn()))
    }

    fn keys(&self) -> Vec<String> {
        Vec::new()
    }

    fn location(&self) -> String {
        "random weights".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::WeightDType;

    #[test]
    fn dtype_names_parse_in_every_spelling() {
        let cases = [
            ("f32", WeightDType::F32),
            ("FP32", WeightDType::F32),
            ("float32", WeightDType::F32),
            ("f16", WeightDType::F16),
            ("fp16", WeightDType::F16),
            ("Half", WeightDType::F16),
            ("float16", WeightDType::F16),
            ("bf16", WeightDType::BF16),
            ("bfloat16", WeightDType::BF16),
        ];
        for (name, dtype) in cases {
            assert_eq!(name.parse::<WeightDType>().unwrap(), dtype, "{name}");
        }
        for bad in ["", "f64", "int8", "fp8"] {
            assert!(bad.parse::<WeightDType>().is_err(), "{bad}");
        }
    }
}
