//! `generation_config.json`: the checkpoint's default generation settings.

use serde::Deserialize;

use super::TokenIds;

/// The contents of `generation_config.json`, with transformers' key names.
///
/// Every field is optional: an absent field means "transformers' `GenerationConfig` default"
/// (resolved by the generation code, which also takes per-call overrides).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct GenerationConfigFile {
    /// Longest total length (prompt included for decoder-only models).
    pub max_length: Option<usize>,
    /// Most new tokens; takes precedence over `max_length`.
    pub max_new_tokens: Option<usize>,
    /// Shortest total length.
    pub min_length: Option<usize>,
    /// Fewest new tokens.
    pub min_new_tokens: Option<usize>,
    /// Beam width (1 = no beam search).
    pub num_beams: Option<usize>,
    /// Sample instead of taking the most likely token.
    pub do_sample: Option<bool>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Keep only the k most likely tokens when sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p when sampling.
    pub top_p: Option<f64>,
    /// Penalty (> 1 discourages) on tokens already present.
    pub repetition_penalty: Option<f64>,
    /// Forbid repeating any n-gram of this size.
    pub no_repeat_ngram_size: Option<usize>,
    /// Beam score exponent on the length.
    pub length_penalty: Option<f64>,
    /// Beam search stopping rule.
    pub early_stopping: Option<EarlyStopping>,
    /// Sequences returned per input.
    pub num_return_sequences: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s).
    pub eos_token_id: Option<TokenIds>,
    /// Padding token.
    pub pad_token_id: Option<u32>,
    /// First decoder token of encoder-decoder models.
    pub decoder_start_token_id: Option<u32>,
}

/// transformers' `early_stopping`: `true`, `false` or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// `true`: stop as soon as `num_beams` hypotheses are finished.
    Yes,
    /// `false`: stop when no better hypothesis is likely (the heuristic).
    Heuristic,
    /// `"never"`: stop only when no better hypothesis is possible.
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(EarlyStopping::Yes),
            Raw::Bool(false) => Ok(EarlyStopping::Heuristic),
            Raw::Str(s) if s == "never" => Ok(EarlyStopping::Never),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "early_stopping must be true, false or \"never\", found {s:?}"
            ))),
        }
    }
}
