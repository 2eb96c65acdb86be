//! `text_config` with `model_type: "llama"`: transformers' `LlamaConfig` (Vicuna, the language
//! model of `instructblip-vicuna-7b` and `-13b`).

use serde::Deserialize;

use super::{check_heads, check_positive, Activation, TokenIds};
use crate::error::{Error, Result};

/// `rope_parameters` (transformers 5), or the legacy `rope_theta` / `rope_scaling` pair.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeParameters {
    /// Only `"default"` (plain rotary embeddings) is supported.
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
    /// The base of the rotary frequencies (10000).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
}

fn default_rope_type() -> String {
    "default".to_owned()
}

fn default_rope_theta() -> f64 {
    10000.0
}

/// The LLaMA decoder's configuration. Omitted fields take transformers' `LlamaConfig` defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    /// Vocabulary size (32000; the InstructBLIP Vicuna repos store 32001 after adding tokens).
    pub vocab_size: usize,
    /// Width (4096 for 7b, 5120 for 13b).
    pub hidden_size: usize,
    /// Width of the gated MLP (11008 for 7b).
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `None` means as many as query heads.
    pub num_key_value_heads: Option<usize>,
    /// Width of one head; `None` means `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    /// The MLP's activation (`silu`).
    pub hidden_act: Activation,
    /// Longest sequence (2048).
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon (1e-6).
    pub rms_norm_eps: f64,
    /// Padding token (`None` in `LlamaConfig`).
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence token (1, `<s>`).
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s) (2, `</s>`).
    pub eos_token_id: Option<TokenIds>,
    /// Whether `lm_head` shares `embed_tokens` (false).
    pub tie_word_embeddings: bool,
    /// Biases on the attention projections (false).
    pub attention_bias: bool,
    /// Biases on the MLP projections (false).
    pub mlp_bias: bool,
    /// The rotary embedding parameters (transformers 5 layout).
    pub rope_parameters: Option<RopeParameters>,
    /// The legacy spelling of `rope_parameters.rope_theta`.
    pub rope_theta: Option<f64>,
    /// The legacy RoPE scaling; only `null` is supported.
    pub rope_scaling: Option<serde_json::Value>,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            hidden_act: Activation::Silu,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            pad_token_id: None,
            bos_token_id: Some(1),
            eos_token_id: Some(TokenIds::One(2)),
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            rope_parameters: None,
            rope_theta: None,
            rope_scaling: None,
        }
    }
}

impl LlamaConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The base of the rotary frequencies: `rope_parameters.rope_theta`, else `rope_theta`, else
    /// 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or_else(default_rope_theta)
    }

    /// The end-of-sequence ids, possibly several.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        TokenIds::list(self.eos_token_id.as_ref())
    }

    /// Checks the sizes and relations the model code relies on.
    pub fn validate(&self) -> Result<()> {
        let f = |name: &str| format!("text_config.{name}");
        check_positive(&f("vocab_size"), self.vocab_size)?;
        check_positive(&f("hidden_size"), self.hidden_size)?;
        check_positive(&f("intermediate_size"), self.intermediate_size)?;
        check_positive(&f("num_hidden_layers"), self.num_hidden_layers)?;
        check_positive(&f("max_position_embeddings"), self.max_position_embeddings)?;
        check_positive(&f("num_attention_heads"), self.num_attention_heads)?;
        if self.head_dim.is_none() {
            check_heads(
                &f("num_attention_heads"),
                self.hidden_size,
                self.num_attention_heads,
            )?;
        }
        check_positive(&f("head_dim"), self.head_dim())?;
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::invalid_config(
                f("head_dim"),
                format!(
                    "rotary embeddings need an even head width, found {}",
                    self.head_dim()
                ),
            ));
        }
        check_heads(
            &f("num_key_value_heads"),
            self.num_attention_heads,
            self.kv_heads(),
        )?;
        if let Some(rope) = &self.rope_parameters {
            if rope.rope_type != "default" {
                return Err(Error::invalid_config(
                    f("rope_parameters.rope_type"),
                    format!("only \"default\" is supported, found {:?}", rope.rope_type),
                ));
            }
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Error::invalid_config(
                f("rope_scaling"),
                "scaled rotary embeddings are not supported",
            ));
        }
        let theta = self.rope_theta();
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::invalid_config(
                f("rope_theta"),
                format!("must be a finite number above 1, found {theta}"),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(Error::invalid_config(
                f("rms_norm_eps"),
                format!(
                    "must be a finite non-negative number, found {}",
                    self.rms_norm_eps
                ),
            ));
        }
        Ok(())
    }
}
