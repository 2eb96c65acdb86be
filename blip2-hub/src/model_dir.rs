//! A model folder in HF layout and everything read from it.

use std::path::{Path, PathBuf};

use blip2_core::config::{Blip2Config, GenerationConfigFile, PreprocessorConfig, ProcessorConfig};
use blip2_core::error::{Error, Result};
use serde::de::DeserializeOwned;

use crate::safetensors::SafetensorsWeights;
use crate::tokenizer::{load_tokenizer, Tokenizer};

/// A local BLIP-2 checkpoint folder (`config.json`, weights, processor and tokenizer files),
/// with its JSON files parsed.
#[derive(Debug, Clone)]
pub struct ModelDir {
    dir: PathBuf,
    config: Blip2Config,
    preprocessor: PreprocessorConfig,
    processor: ProcessorConfig,
    generation: GenerationConfigFile,
    pad_token: Option<String>,
}

/// The one field of `tokenizer_config.json` the model needs: the token the processor pads with.
#[derive(serde::Deserialize, Default)]
struct TokenizerConfigFile {
    #[serde(default)]
    pad_token: Option<TokenSpelling>,
}

/// A special token as transformers writes it: a string, or an `AddedToken` object.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum TokenSpelling {
    Plain(String),
    Added { content: String },
}

impl ModelDir {
    /// Opens a folder and parses its `config.json`, image processor settings (from
    /// `preprocessor_config.json`, or nested in `processor_config.json` as transformers 5 writes
    /// it; BlipImageProcessor's defaults at the vision resolution when neither is there),
    /// `processor_config.json` and `generation_config.json` (both optional).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let config = Blip2Config::from_file(dir.join("config.json"))?;
        let processor: ProcessorConfig =
            read_optional_json(&dir.join("processor_config.json"))?.unwrap_or_default();
        let preprocessor = match read_optional_json(&dir.join("preprocessor_config.json"))? {
            Some(p) => p,
            None => processor.image_processor.clone().unwrap_or_else(|| {
                let (h, w) = config.vision_config.image_hw();
                PreprocessorConfig::with_size(h, w)
            }),
        };
        preprocessor.validate()?;
        let generation =
            read_optional_json(&dir.join("generation_config.json"))?.unwrap_or_default();
        let tokenizer_config: TokenizerConfigFile =
            read_optional_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let pad_token = tokenizer_config.pad_token.map(|t| match t {
            TokenSpelling::Plain(s) | TokenSpelling::Added { content: s } => s,
        });
        Ok(ModelDir {
            dir,
            config,
            preprocessor,
            processor,
            generation,
            pad_token,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `config.json`.
    pub fn config(&self) -> &Blip2Config {
        &self.config
    }

    /// The image processor's settings.
    pub fn preprocessor(&self) -> &PreprocessorConfig {
        &self.preprocessor
    }

    /// `processor_config.json` (empty when absent).
    pub fn processor(&self) -> &ProcessorConfig {
        &self.processor
    }

    /// `generation_config.json` (empty when absent).
    pub fn generation(&self) -> &GenerationConfigFile {
        &self.generation
    }

    /// How many `<image>` tokens the processor prepends: `processor_config.json`'s
    /// `num_query_tokens`, else the model's.
    pub fn num_image_tokens(&self) -> usize {
        self.processor
            .num_query_tokens
            .unwrap_or(self.config.num_query_tokens)
    }

    /// Memory-maps the weights (single file or shards).
    pub fn weights(&self) -> Result<SafetensorsWeights> {
        SafetensorsWeights::from_dir(&self.dir)
    }

    /// Loads `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        load_tokenizer(self.dir.join("tokenizer.json"))
    }

    /// Loads InstructBLIP's Q-Former tokenizer, `qformer_tokenizer/tokenizer.json`.
    pub fn qformer_tokenizer(&self) -> Result<Tokenizer> {
        load_tokenizer(self.dir.join("qformer_tokenizer").join("tokenizer.json"))
    }

    /// The token the processor pads prompts with (`tokenizer_config.json`'s `pad_token`), when
    /// the file names one. It can differ from the model's `pad_token_id` (InstructBLIP's Vicuna:
    /// the processor pads with an added `<pad>`, generation with the id config.json gives).
    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_deref()
    }
}

fn read_optional_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Json {
            path: path.to_owned(),
            source,
        })
}
