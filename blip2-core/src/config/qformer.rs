//! `qformer_config`: transformers' `Blip2QFormerConfig`.

use serde::Deserialize;

use super::{check_heads, check_positive, Activation};
use crate::error::{Error, Result};

/// The Q-Former's configuration (a BERT-base with cross-attention to the image).
///
/// Omitted fields take transformers' defaults. `encoder_hidden_size` is always overwritten with
/// the vision width by [`Blip2Config`](super::Blip2Config), as transformers does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct QFormerConfig {
    /// Text vocabulary (30522; the retrieval checkpoint adds `[DEC]`).
    pub vocab_size: usize,
    /// Width (768).
    pub hidden_size: usize,
    /// Number of layers (12).
    pub num_hidden_layers: usize,
    /// Attention heads (12).
    pub num_attention_heads: usize,
    /// Feed-forward width (3072).
    pub intermediate_size: usize,
    /// Feed-forward activation (`gelu`, exact).
    pub hidden_act: Activation,
    /// Size of the text position table (512).
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon (1e-12).
    pub layer_norm_eps: f64,
    /// Padding token of the text branch (0).
    pub pad_token_id: Option<u32>,
    /// A cross-attention block on every layer whose index is a multiple of this (2).
    pub cross_attention_frequency: usize,
    /// Width of the image features cross-attended to (the vision width, 1408).
    pub encoder_hidden_size: usize,
    /// Whether the Q-Former has text embeddings (the InstructBLIP/retrieval text branch).
    pub use_qformer_text_input: bool,
    /// Position embedding type; only `absolute` exists in BLIP-2.
    pub position_embedding_type: String,
}

impl Default for QFormerConfig {
    fn default() -> Self {
        QFormerConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            use_qformer_text_input: false,
            position_embedding_type: "absolute".to_owned(),
        }
    }
}

impl QFormerConfig {
    /// Whether layer `layer_idx` has a cross-attention block.
    pub fn has_cross_attention(&self, layer_idx: usize) -> bool {
        layer_idx.is_multiple_of(self.cross_attention_frequency)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the sizes and relations the model code relies on.
    pub fn validate(&self) -> Result<()> {
        let f = |name: &str| format!("qformer_config.{name}");
        check_positive(&f("hidden_size"), self.hidden_size)?;
        check_positive(&f("intermediate_size"), self.intermediate_size)?;
        check_positive(&f("num_hidden_layers"), self.num_hidden_layers)?;
        check_positive(
            &f("cross_attention_frequency"),
            self.cross_attention_frequency,
        )?;
        check_positive(&f("encoder_hidden_size"), self.encoder_hidden_size)?;
        check_heads(
            &f("num_attention_heads"),
            self.hidden_size,
            self.num_attention_heads,
        )?;
        if self.position_embedding_type != "absolute" {
            return Err(Error::invalid_config(
                f("position_embedding_type"),
                format!(
                    "only \"absolute\" is supported, found {:?}",
                    self.position_embedding_type
                ),
            ));
        }
        Ok(())
    }
}
