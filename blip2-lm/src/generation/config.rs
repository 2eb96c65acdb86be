//! [`GenerationConfig`]: transformers' `GenerationConfig`, the fields BLIP-2 generation reads,
//! built from a checkpoint's files and validated.

use blip2_core::config::{EarlyStopping, GenerationConfigFile};
use blip2_core::error::{Error, Result};

/// New tokens generated when neither `max_new_tokens` nor `max_length` is set. (transformers'
/// own default, `max_length = 20` in all, is shorter than BLIP-2's image prefix.)
pub const DEFAULT_MAX_NEW_TOKENS: usize = 30;

/// A sampling seed that differs from call to call (std's randomly keyed hasher over the clock),
/// for sampling without a seed given: what the `blip2` command and server use.
pub fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Generation settings, with transformers' names and meanings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most new tokens (takes precedence over `max_length`).
    pub max_new_tokens: Option<usize>,
    /// Fewest new tokens before an end-of-sequence token may be chosen.
    pub min_new_tokens: Option<usize>,
    /// Longest total length, the prompt row included (image tokens too, for decoder-only models).
    pub max_length: Option<usize>,
    /// Shortest total length before an end-of-sequence token may be chosen.
    pub min_length: Option<usize>,
    /// Beam width; 1 is greedy search or sampling.
    pub num_beams: usize,
    /// Beam scores are divided by `generated_length ^ length_penalty`.
    pub length_penalty: f32,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// Sample from the distribution instead of choosing the most likely token.
    pub do_sample: bool,
    /// Sampling temperature (> 0).
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens (0 disables; transformers' default is 50).
    pub top_k: usize,
    /// Sample among the smallest set of tokens whose probability reaches `top_p`, in (0, 1].
    pub top_p: f32,
    /// Penalty (> 1 discourages) on every token already in the row.
    pub repetition_penalty: f32,
    /// Forbid repeating any n-gram of this size (0 disables).
    pub no_repeat_ngram_size: usize,
    /// Sequences returned per input.
    pub num_return_sequences: usize,
    /// Tokens that end a sequence.
    pub eos_token_id: Vec<u32>,
    /// Token fed to rows that already ended (defaults to the first EOS).
    pub pad_token_id: Option<u32>,
    /// Seed of the sampler; the same seed gives the same samples.
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: None,
            min_new_tokens: None,
            max_length: None,
            min_length: None,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            num_return_sequences: 1,
            eos_token_id: Vec::new(),
            pad_token_id: None,
            seed: 0,
        }
    }
}

impl GenerationConfig {
    /// transformers' defaults overridden by a checkpoint's `generation_config.json`, with the
    /// language model's `eos` and `pad` (its `text_config` in config.json) taking precedence over
    /// the file's: BLIP-2's and InstructBLIP's `generate` in transformers 5.24 hand over to the
    /// language model's own generation config, built from `text_config`, so a top-level
    /// generation_config.json that names other ids does not change where transformers stops.
    /// The file's ids apply only where the model config names none.
    pub fn from_file(file: &GenerationConfigFile, eos: Vec<u32>, pad: Option<u32>) -> Self {
        let d = GenerationConfig::default();
        GenerationConfig {
            max_new_tokens: file.max_new_tokens,
            min_new_tokens: file.min_new_tokens,
            max_length: file.max_length,
            min_length: file.min_length,
            num_beams: file.num_beams.unwrap_or(d.num_beams),
            length_penalty: file.length_penalty.map_or(d.length_penalty, |v| v as f32),
            early_stopping: file.early_stopping.unwrap_or(d.early_stopping),
            do_sample: file.do_sample.unwrap_or(d.do_sample),
            temperature: file.temperature.map_or(d.temperature, |v| v as f32),
            top_k: file.top_k.unwrap_or(d.top_k),
            top_p: file.top_p.map_or(d.top_p, |v| v as f32),
            repetition_penalty: file
                .repetition_penalty
                .map_or(d.repetition_penalty, |v| v as f32),
            no_repeat_ngram_size: file.no_repeat_ngram_size.unwrap_or(0),
            num_return_sequences: file.num_return_sequences.unwrap_or(1),
            eos_token_id: if eos.is_empty() {
                file.eos_token_id.as_ref().map_or(eos, |e| e.to_vec())
            } else {
                eos
            },
            pad_token_id: pad.or(file.pad_token_id),
            seed: 0,
        }
    }

    /// Checks that the options are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidInput(msg));
        if self.num_beams == 0 {
            return bad("num_beams must be at least 1".into());
        }
        if self.num_return_sequences == 0 {
            return bad("num_return_sequences must be at least 1".into());
        }
        if !self.do_sample && self.num_return_sequences > self.num_beams {
            return bad(format!(
                "num_return_sequences ({}) cannot exceed num_beams ({}) without sampling",
                self.num_return_sequences, self.num_beams
            ));
        }
        if self.do_sample && self.num_beams > 1 {
            return bad("beam sampling (do_sample with num_beams > 1) is not supported".into());
        }
        if self.do_sample && !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be > 0 when sampling, found {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], found {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be > 0, found {}",
                self.repetition_penalty
            ));
        }
        if !self.length_penalty.is_finite() {
            return bad("length_penalty must be finite".into());
        }
        if let (Some(min), Some(max)) = (self.min_new_tokens, self.max_new_tokens) {
            if min > max {
                return bad(format!("min_new_tokens ({min}) > max_new_tokens ({max})"));
            }
        }
        if let (Some(min), Some(max)) = (self.min_length, self.max_length) {
            if min > max {
                return bad(format!("min_length ({min}) > max_length ({max})"));
            }
        }
        if self.max_new_tokens == Some(0) {
            return bad("max_new_tokens must be at least 1".into());
        }
        Ok(())
    }

    /// New tokens to generate after a prompt of `prompt_len`.
    pub(super) fn new_token_budget(&self, prompt_len: usize) -> Result<usize> {
        match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => Ok(n),
            (None, Some(max)) if max > prompt_len => Ok(max - prompt_len),
            (None, Some(max)) => Err(Error::InvalidInput(format!(
                "max_length ({max}) leaves no room after the prompt ({prompt_len} tokens); set max_new_tokens"
            ))),
            (None, None) => Ok(DEFAULT_MAX_NEW_TOKENS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contradictory_options_are_errors() {
        let bad = [
            GenerationConfig {
                num_beams: 0,
                ..Default::default()
            },
            GenerationConfig {
                num_return_sequences: 2,
                ..Default::default()
            },
            GenerationConfig {
                top_p: 0.0,
                ..Default::default()
            },
            GenerationConfig {
                top_p: 1.5,
                ..Default::default()
            },
            GenerationConfig {
                do_sample: true,
                temperature: 0.0,
                ..Default::default()
            },
            GenerationConfig {
                min_new_tokens: Some(5),
                max_new_tokens: Some(2),
                ..Default::default()
            },
            GenerationConfig {
                do_sample: true,
                num_beams: 2,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(Error::InvalidInput(_))), "{c:?}");
        }
        assert!(GenerationConfig::default().validate().is_ok());
    }
}
