//! `Blip2TextEmbeddings`: word + absolute position embeddings of the Q-Former's text branch.
//! (The Q-Former's `layernorm` is applied to them by the model, with the queries.)

use blip2_core::config::QFormerConfig;
use blip2_core::error::{Error, Result};
use blip2_core::{nn, Weights};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

/// Word and position embeddings (keys `embeddings.word_embeddings` / `position_embeddings`).
#[derive(Module, Debug)]
pub struct Blip2TextEmbeddings {
    word_embeddings: Param<Tensor<2>>,
    position_embeddings: Param<Tensor<2>>,
}

impl Blip2TextEmbeddings {
    /// Loads `embeddings.*` from `w` (the view of `embeddings`).
    pub fn load(w: &Weights, config: &QFormerConfig, device: &Device) -> Result<Self> {
        let h = config.hidden_size;
        Ok(Blip2TextEmbeddings {
            word_embeddings: nn::param(
                w,
                "word_embeddings.weight",
                [config.vocab_size, h],
                device,
            )?,
            position_embeddings: nn::param(
                w,
                "position_embeddings.weight",
                [config.max_position_embeddings, h],
                device,
            )?,
        })
    }

    /// Longest text the position table covers.
    pub fn max_positions(&self) -> usize {
        self.position_embeddings.dims()[0]
    }

    /// `[rows, len, hidden]` embeddings of equal-length rows of token ids (positions `0..len`).
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<Tensor<3>> {
        let rows = ids.len();
        let len = ids.first().map_or(0, Vec::len);
        if rows == 0 || len == 0 || ids.iter().any(|r| r.len() != len) {
            return Err(Error::InvalidInput(
                "text rows must be non-empty and of equal length".to_owned(),
            ));
        }
        if len > self.max_positions() {
            return Err(Error::InvalidInput(format!(
                "text of {len} tokens is longer than the {} positions of the Q-Former",
                self.max_positions()
            )));
        }
        let hidden = self.word_embeddings.dims()[1];
        let words = nn::embed_rows(&self.word_embeddings.val(), ids)?;
        let positions = self
            .position_embeddings
            .val()
            .slice(burn::tensor::s![0..len, ..])
            .reshape([1, len, hidden]);
        Ok(words + positions)
    }
}
