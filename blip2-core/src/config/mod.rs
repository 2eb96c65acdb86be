//! The checkpoint's JSON files as typed values, with transformers' defaults.
//!
//! The hub's `config.json` for BLIP-2 omits most vision and Q-Former fields; every omitted field
//! takes the default of transformers' config class, so a parsed [`Blip2Config`] holds the effective
//! values the model is built with.

mod generation;
mod llama;
mod opt;
mod processor;
mod qformer;
mod t5;
mod vision;

use std::path::Path;

use serde::Deserialize;

pub use generation::{EarlyStopping, GenerationConfigFile};
pub use llama::{LlamaConfig, RopeParameters};
pub use opt::OptConfig;
pub use processor::{ImageSize, PreprocessorConfig, ProcessorConfig, Resample};
pub use qformer::QFormerConfig;
pub use t5::{T5Config, T5FeedForward};
pub use vision::VisionConfig;

use crate::error::{Error, Result};

/// The largest width, vocabulary or table size accepted from a config file. Real BLIP-2 sizes are
/// far below; the limit stops a hostile or broken file from requesting absurd allocations.
pub const MAX_DIMENSION: usize = 1 << 22;
/// The largest layer count accepted from a config file.
pub const MAX_LAYERS: usize = 1024;

/// Which model of the BLIP-2 family a checkpoint holds (`config.json`'s `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ModelFamily {
    /// BLIP-2 (`model_type: "blip-2"`): the queries read the image alone.
    #[default]
    Blip2,
    /// InstructBLIP (`model_type: "instructblip"`): the prompt is also fed to the Q-Former (with
    /// its own BERT tokenizer), whose queries and instruction attend to each other.
    InstructBlip,
}

/// `config.json` of a BLIP-2 or InstructBLIP checkpoint (`model_type: "blip-2"` or
/// `"instructblip"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Blip2Config {
    /// BLIP-2 or InstructBLIP.
    pub family: ModelFamily,
    /// The image encoder.
    pub vision_config: VisionConfig,
    /// The Q-Former; its `encoder_hidden_size` equals the vision width.
    pub qformer_config: QFormerConfig,
    /// The language model (OPT when the file has no `text_config`, as in transformers).
    pub text_config: TextConfig,
    /// Number of learned query tokens (32).
    pub num_query_tokens: usize,
    /// Width of the retrieval embeddings (256).
    pub image_text_hidden_size: usize,
    /// The `<image>` placeholder id when the checkpoint uses the processor's image tokens
    /// (50265 for OPT, 32100 for Flan-T5 in the updated hub repos); `None` for older checkpoints,
    /// whose queries are prepended to the text embeddings.
    pub image_token_index: Option<u32>,
    /// `architectures` as written, e.g. `["Blip2ForConditionalGeneration"]`.
    pub architectures: Vec<String>,
}

/// The language model's configuration, chosen by `text_config.model_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum TextConfig {
    /// A decoder-only OPT (`model_type: "opt"`).
    Opt(OptConfig),
    /// An encoder-decoder T5 / Flan-T5 (`model_type: "t5"`).
    T5(T5Config),
    /// A decoder-only LLaMA / Vicuna (`model_type: "llama"`).
    Llama(LlamaConfig),
}

impl TextConfig {
    /// transformers' `model_type` of this language model.
    pub fn model_type(&self) -> &'static str {
        match self {
            TextConfig::Opt(_) => "opt",
            TextConfig::T5(_) => "t5",
            TextConfig::Llama(_) => "llama",
        }
    }

    /// Width of the language model's input embeddings (what `language_projection` maps to).
    pub fn hidden_size(&self) -> usize {
        match self {
            TextConfig::Opt(c) => c.hidden_size,
            TextConfig::T5(c) => c.d_model,
            TextConfig::Llama(c) => c.hidden_size,
        }
    }

    /// Whether this is a decoder-only model (transformers' `use_decoder_only_language_model`).
    pub fn is_decoder_only(&self) -> bool {
        !matches!(self, TextConfig::T5(_))
    }

    /// The end-of-sequence ids (`eos_token_id`, possibly several).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self {
            TextConfig::Opt(c) => c.eos_token_ids(),
            TextConfig::T5(c) => c.eos_token_ids(),
            TextConfig::Llama(c) => c.eos_token_ids(),
        }
    }

    /// The padding id (`pad_token_id`).
    pub fn pad_token_id(&self) -> Option<u32> {
        match self {
            TextConfig::Opt(c) => c.pad_token_id,
            TextConfig::T5(c) => c.pad_token_id,
            TextConfig::Llama(c) => c.pad_token_id,
        }
    }

    /// The beginning-of-sequence id (`bos_token_id`; T5 has none).
    pub fn bos_token_id(&self) -> Option<u32> {
        match self {
            TextConfig::Opt(c) => c.bos_token_id,
            TextConfig::T5(_) => None,
            TextConfig::Llama(c) => c.bos_token_id,
        }
    }

    /// The first decoder id of an encoder-decoder model ([`T5Config::decoder_start`]); `None` for
    /// decoder-only ones.
    pub fn decoder_start(&self) -> Option<u32> {
        match self {
            TextConfig::T5(c) => Some(c.decoder_start()),
            TextConfig::Opt(_) | TextConfig::Llama(_) => None,
        }
    }

    fn from_value(value: serde_json::Value) -> std::result::Result<Self, ConfigParseError> {
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("opt")
            .to_owned();
        match model_type.as_str() {
            "opt" => Ok(TextConfig::Opt(
                serde_json::from_value(value).map_err(ConfigParseError::Json)?,
            )),
            "t5" => Ok(TextConfig::T5(
                serde_json::from_value(value).map_err(ConfigParseError::Json)?,
            )),
            "llama" => Ok(TextConfig::Llama(
                serde_json::from_value(value).map_err(ConfigParseError::Json)?,
            )),
            _ => Err(ConfigParseError::Unsupported(Error::UnsupportedModelType {
                field: "text_config.model_type".to_owned(),
                found: model_type,
                supported: "\"opt\", \"t5\", \"llama\"".to_owned(),
            })),
        }
    }
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig::Opt(OptConfig::default())
    }
}

enum ConfigParseError {
    Json(serde_json::Error),
    Unsupported(Error),
}

/// The file as serde reads it; [`Blip2Config`] is this after defaults and derivations.
#[derive(Deserialize)]
struct RawBlip2Config {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    vision_config: Option<VisionConfig>,
    #[serde(default)]
    qformer_config: Option<QFormerConfig>,
    #[serde(default)]
    text_config: Option<serde_json::Value>,
    #[serde(default = "default_num_query_tokens")]
    num_query_tokens: usize,
    #[serde(default = "default_image_text_hidden_size")]
    image_text_hidden_size: usize,
    #[serde(default, alias = "image_token_id")]
    image_token_index: Option<u32>,
}

fn default_num_query_tokens() -> usize {
    32
}

fn default_image_text_hidden_size() -> usize {
    256
}

impl Default for Blip2Config {
    /// transformers' `Blip2Config()`: the blip2-opt-2.7b-style architecture with an OPT-125m-sized
    /// default `OPTConfig`.
    fn default() -> Self {
        let mut config = Blip2Config {
            family: ModelFamily::Blip2,
            vision_config: VisionConfig::default(),
            qformer_config: QFormerConfig::default(),
            text_config: TextConfig::default(),
            num_query_tokens: default_num_query_tokens(),
            image_text_hidden_size: default_image_text_hidden_size(),
            image_token_index: None,
            architectures: Vec::new(),
        };
        config.qformer_config.encoder_hidden_size = config.vision_config.hidden_size;
        config
    }
}

impl Blip2Config {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Json { source, .. } => Error::Json {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let json_err = |source| Error::Json {
            path: "config.json".into(),
            source,
        };
        let raw: RawBlip2Config = serde_json::from_str(text).map_err(json_err)?;
        let family = match raw.model_type.as_deref() {
            Some("blip-2") | None => ModelFamily::Blip2,
            Some("instructblip") => ModelFamily::InstructBlip,
            Some(other) => {
                return Err(Error::UnsupportedModelType {
                    field: "model_type".to_owned(),
                    found: other.to_owned(),
                    supported: "\"blip-2\", \"instructblip\"".to_owned(),
                })
            }
        };
        let text_config = match raw.text_config {
            None | Some(serde_json::Value::Null) => TextConfig::default(),
            Some(value) => TextConfig::from_value(value).map_err(|e| match e {
                ConfigParseError::Json(source) => json_err(source),
                ConfigParseError::Unsupported(e) => e,
            })?,
        };
        let vision_config = raw.vision_config.unwrap_or_default();
        let mut qformer_config = raw.qformer_config.unwrap_or_default();
        // transformers' Blip2Config overwrites whatever the file says with the vision width.
        qformer_config.encoder_hidden_size = vision_config.hidden_size;
        if family == ModelFamily::InstructBlip {
            // InstructBlipQFormerModel always has the text embeddings and feed-forward blocks.
            qformer_config.use_qformer_text_input = true;
        }
        let config = Blip2Config {
            family,
            vision_config,
            qformer_config,
            text_config,
            num_query_tokens: raw.num_query_tokens,
            image_text_hidden_size: raw.image_text_hidden_size,
            image_token_index: raw.image_token_index,
            architectures: raw.architectures,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks sizes and relations the model code relies on.
    pub fn validate(&self) -> Result<()> {
        self.vision_config.validate()?;
        self.qformer_config.validate()?;
        match &self.text_config {
            TextConfig::Opt(c) => c.validate()?,
            TextConfig::T5(c) => c.validate()?,
            TextConfig::Llama(c) => c.validate()?,
        }
        check_positive("num_query_tokens", self.num_query_tokens)?;
        check_positive("image_text_hidden_size", self.image_text_hidden_size)?;
        Ok(())
    }

    /// Whether the language model is decoder-only (OPT, LLaMA) rather than encoder-decoder (T5).
    pub fn use_decoder_only_language_model(&self) -> bool {
        self.text_config.is_decoder_only()
    }

    /// Whether `architectures` names the retrieval model (`Blip2ForImageTextRetrieval`).
    pub fn is_retrieval(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "Blip2ForImageTextRetrieval")
    }
}

/// A transformers activation name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `relu`.
    Relu,
    /// `gelu`: the exact erf form.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluNew,
    /// `silu` / `swish`.
    Silu,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
}

impl Activation {
    /// The activation transformers' `ACT2FN` maps `name` to, if supported here.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            "silu" | "swish" => Activation::Silu,
            "quick_gelu" => Activation::QuickGelu,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for Activation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Activation::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unsupported activation {name:?} (supported: relu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, silu, swish, quick_gelu)"
            ))
        })
    }
}

/// A size given either as one number (square) or as `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrPair {
    /// Square.
    One(usize),
    /// `[height, width]`.
    Pair([usize; 2]),
}

impl OneOrPair {
    /// `(height, width)`.
    pub fn pair(self) -> (usize, usize) {
        match self {
            OneOrPair::One(n) => (n, n),
            OneOrPair::Pair([h, w]) => (h, w),
        }
    }
}

/// One token id or several (`eos_token_id` may be either).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }

    /// The ids of an optional field as a list (empty when absent).
    pub fn list(ids: Option<&TokenIds>) -> Vec<u32> {
        ids.map(TokenIds::to_vec).unwrap_or_default()
    }
}

pub(crate) fn check_positive(field: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::invalid_config(field, "must be positive, found 0"));
    }
    let limit = if field.ends_with("layers") {
        MAX_LAYERS
    } else {
        MAX_DIMENSION
    };
    if value > limit {
        return Err(Error::invalid_config(
            field,
            format!("{value} is larger than this crate accepts ({limit})"),
        ));
    }
    Ok(())
}

pub(crate) fn check_heads(field: &str, hidden: usize, heads: usize) -> Result<()> {
    check_positive(field, heads)?;
    if !hidden.is_multiple_of(heads) {
        return Err(Error::invalid_config(
            field,
            format!("width {hidden} is not divisible by {heads} heads"),
        ));
    }
    Ok(())
}
