//! `Blip2QFormerModel`: the query tokens' LayerNorm and the Q-Former layers.

use blip2_core::config::QFormerConfig;
use blip2_core::error::{Error, Result};
use blip2_core::{nn, Weights};
use burn::module::{Module, Param};
use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::layer::{Blip2QFormerLayer, ImageContext};

/// The Q-Former, as transformers' `Blip2QFormerModel` (weights under `qformer`), together with the
/// learned `query_tokens` of the enclosing BLIP-2 model.
#[derive(Module, Debug)]
pub struct Blip2QFormerModel {
    query_tokens: Param<Tensor<3>>,
    layernorm: nn::Norm,
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
        self.check_image_width(width)?;
        let [_, n, hidden] = self.query_tokens.dims();
        let queries = self.query_tokens.val().expand([batch, n, hidden]);
        let image = ImageContext {
            states: image_embeds,
            mask: None,
        };
        Ok(self.forward_embeddings(queries, n, None, Some(&image)))
    }

    /// The text-only pass (query length 0): `text_embeds` `[texts, len, hidden]` from
    /// [`crate::embeddings::Blip2TextEmbeddings`], `padding[row][pos]` true for padding →
    /// `[texts, len, hidden]`.
    pub fn forward_text(&self, text_embeds: Tensor<3>, padding: &[Vec<bool>]) -> Result<Tensor<3>> {
        self.check_text(&text_embeds, padding)?;
        let mask = padding_mask(padding, 0, &text_embeds.device());
        Ok(self.forward_embeddings(text_embeds, 0, Some(mask), None))
    }

    /// The joint pass of image–text matching: the queries and the text attend to each other, the
    /// queries also to the image. `image_embeds` `[pairs, tokens, vision_width]`, `text_embeds`
    /// `[pairs, len, hidden]` → `[pairs, queries + len, hidden]`.
    pub fn forward_joint(
        &self,
        image_embeds: Tensor<3>,
        text_embeds: Tensor<3>,
        padding: &[Vec<bool>],
    ) -> Result<Tensor<3>> {
        self.check_text(&text_embeds, padding)?;
        let [batch, _, width] = image_embeds.dims();
        if batch != text_embeds.dims()[0] {
            return Err(Error::InvalidInput(format!(
                "{batch} images for {} texts in the joint pass",
                text_embeds.dims()[0]
            )));
        }
        self.check_image_width(width)?;
        let [_, n, hidden] = self.query_tokens.dims();
        let queries = self.query_tokens.val().expand([batch, n, hidden]);
        let device = text_embeds.device();
        let embeds = Tensor::cat(vec![queries, text_embeds], 1);
        let mask = padding_mask(padding, n, &device);
        let image = ImageContext {
            states: image_embeds,
            mask: None,
        };
        Ok(self.forward_embeddings(embeds, n, Some(mask), Some(&image)))
    }

    fn check_image_width(&self, width: usize) -> Result<()> {
        if width != self.encoder_hidden_size {
            return Err(Error::InvalidInput(format!(
                "image features are {width} wide, the Q-Former cross-attends to {}",
                self.encoder_hidden_size
            )));
        }
        Ok(())
    }

    fn check_text(&self, text_embeds: &Tensor<3>, padding: &[Vec<bool>]) -> Result<()> {
        if !self.has_text_input {
            return Err(Error::InvalidInput(
                "this Q-Former has no text branch (use_qformer_text_input is false)".to_owned(),
            ));
        }
        let [rows, len, _] = text_embeds.dims();
        if padding.len() != rows || padding.iter().any(|p| p.len() != len) {
            return Err(Error::InvalidInput(
                "text padding does not match the texts".to_owned(),
            ));
        }
        Ok(())
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

/// `[rows, 1, 1, queries + len]`: true at text padding (queries are never masked).
fn padding_mask(padding: &[Vec<bool>], queries: usize, device: &Device) -> Tensor<4, Bool> {
    let len = padding.first().map_or(0, Vec::len);
    let values: Vec<bool> = padding
        .iter()
        .flat_map(|row| std::iter::repeat_n(false, queries).chain(row.iter().copied()))
        .collect();
    Tensor::from_data(
        TensorData::new(values, [padding.len(), 1, 1, queries + len]),
        device,
    )
}
