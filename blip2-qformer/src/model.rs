//! `Blip2QFormerModel`: the query tokens' LayerNorm and the Q-Former layers.

use blip2_core::config::QFormerConfig;
use blip2_core::error::{Error, Result};
use blip2_core::{nn, Weights};
use burn::module::{Module, Param};
use burn::nn::LayerNorm;
use burn::tensor::{Bool, Device, Tensor};

use crate::layer::{Blip2QFormerLayer, ImageContext};

/// The Q-Former, as transformers' `Blip2QFormerModel` (weights under `qformer`), together with the
/// learned `query_tokens` of the enclosing BLIP-2 model.
#[derive(Module, Debug)]
pub struct Blip2QFormerModel {
    query_tokens: Param<Tensor<3>>,
    layernorm: LayerNorm,
    layers: Vec<Blip2QFormerLayer>,
    encoder_hidden_size: usize,
    has_text_input: bool,
}

impl Blip2QFormerModel {
    /// Loads the Q-Former from `w` (the whole checkpoint: it reads `query_tokens` and
    /// `qformer.*`), with `num_query_tokens` learned queries.
    pub fn load(
        w: &Weights,
        config: &QFormerConfig,
        num_query_tokens: usize,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let q = w.pp("qformer");
        let layers = (0..config.num_hidden_layers)
            .map(|i| Blip2QFormerLayer::load(&q.pp("encoder.layer").pp(i), config, i, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Blip2QFormerModel {
            query_tokens: nn::param(
                w,
                "query_tokens",
                [1, num_query_tokens, config.hidden_size],
                device,
            )?,
            layernorm: nn::layer_norm(
                &q.pp("layernorm"),
                config.hidden_size,
                config.layer_norm_eps,
                device,
            )?,
            layers,
            encoder_hidden_size: config.encoder_hidden_size,
            has_text_input: config.use_qformer_text_input,
        })
    }

    /// Number of learned queries.
    pub fn num_query_tokens(&self) -> usize {
        self.query_tokens.dims()[1]
    }

    /// The queries read the image: `image_embeds` `[batch, tokens, vision_width]` (the vision
    /// model's `last_hidden_state`, every token attended) → `[batch, queries, hidden]`, the
    /// Q-Former's `last_hidden_state`.
    pub fn forward_queries(&self, image_embeds: Tensor<3>) -> Result<Tensor<3>> {
        let [batch, _, width] = image_embeds.dims();
        if batch == 0 {
            return Err(Error::InvalidInput("a batch of zero images".to_owned()));
        }
        if width != self.encoder_hidden_size {
            return Err(Error::InvalidInput(format!(
                "image features are {width} wide, the Q-Former cross-attends to {}",
                self.encoder_hidden_size
            )));
        }
        let [_, n, hidden] = self.query_tokens.dims();
        let queries = self.query_tokens.val().expand([batch, n, hidden]);
        let image = ImageContext {
            states: image_embeds,
            mask: None,
        };
        Ok(self.forward_embeddings(queries, n, None, Some(&image)))
    }

    /// The general pass over already-embedded inputs `[batch, query_length + text, hidden]`
    /// (queries first): LayerNorm, then the layers. `mask` (`[batch, 1, 1, seq]`) is true for
    /// positions to ignore.
    pub(crate) fn forward_embeddings(
        &self,
        embeds: Tensor<3>,
        query_length: usize,
        mask: Option<Tensor<4, Bool>>,
        image: Option<&ImageContext>,
    ) -> Tensor<3> {
        debug_assert!(self.has_text_input || embeds.dims()[1] == query_length);
        let mut x = self.layernorm.forward(embeds);
        for layer in &self.layers {
            x = layer.forward(x, mask.clone(), image, query_length);
        }
        x
    }
}
