//! `text_config` with `model_type: "opt"`: transformers' `OPTConfig`.

use serde::Deserialize;

use super::{check_heads, check_positive, Activation, TokenIds};
use crate::error::Result;

/// The OPT decoder's configuration. Omitted fields take transformers' `OPTConfig` defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct OptConfig {
    /// Vocabulary size (50272; the BLIP-2 repos store 50304 after adding `<image>`).
    pub vocab_size: usize,
    /// Width (768 by default; 2560 for opt-2.7b, 4096 for opt-6.7b).
    pub hidden_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Feed-forward width.
    pub ffn_dim: usize,
    /// Size of the learned position table, without OPT's offset of 2 (2048).
    pub max_position_embeddings: usize,
    /// Pre-norm (`true`, every OPT but 350m) or post-norm blocks.
    pub do_layer_norm_before: bool,
    /// Drops the final layer norm (only old 350m checkpoints).
    #[serde(rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// Width of the token embeddings; `None` means `hidden_size` (no `project_in`/`project_out`).
    pub word_embed_proj_dim: Option<usize>,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward activation (`relu`).
    pub activation_function: Activation,
    /// Padding token (1).
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence token (2, which is `</s>`).
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s) (2; the BLIP-2 repos say 50118, which is `"\n"`).
    pub eos_token_id: Option<TokenIds>,
    /// Whether linear layers have biases (true).
    pub enable_bias: bool,
    /// Whether layer norms have weight and bias (true).
    pub layer_norm_elementwise_affine: bool,
    /// Whether `lm_head` shares `embed_tokens` (true).
    pub tie_word_embeddings: bool,
}

impl Default for OptConfig {
    fn default() -> Self {
        OptConfig {
            vocab_size: 50272,
            hidden_size: 768,
            num_hidden_layers: 12,
            ffn_dim: 3072,
            max_position_embeddings: 2048,
            do_layer_norm_before: true,
            remove_final_layer_norm: false,
            word_embed_proj_dim: None,
            num_attention_heads: 12,
            activation_function: Activation::Relu,
            pad_token_id: Some(1),
            bos_token_id: Some(2),
            eos_token_id: Some(TokenIds::One(2)),
            enable_bias: true,
            layer_norm_elementwise_affine: true,
            tie_word_embeddings: true,
        }
    }
}

impl OptConfig {
    /// LayerNorm epsilon: OPT uses PyTorch's default, not a config field.
    pub const LAYER_NORM_EPS: f64 = 1e-5;
    /// OPT's learned positions are shifted by 2 (a fairseq legacy).
    pub const POSITION_OFFSET: usize = 2;

    /// Width of the token embeddings (`word_embed_proj_dim`, or `hidden_size` when unset).
    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
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
        check_positive(&f("num_hidden_layers"), self.num_hidden_layers)?;
        check_positive(&f("ffn_dim"), self.ffn_dim)?;
        check_positive(&f("max_position_embeddings"), self.max_position_embeddings)?;
        check_positive(&f("word_embed_proj_dim"), self.embed_dim())?;
        check_heads(
            &f("num_attention_heads"),
            self.hidden_size,
            self.num_attention_heads,
        )
    }
}
