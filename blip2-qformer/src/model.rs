//! `Blip2QFormerModel`: the query tokens' LayerNorm and the Q-Former layers.

use blip2_core::config::QFormerConfig;
use blip2_core::error::{Error, Result};
use blip2_core::{nn, Weights};
use burn::module::{Module, Param};
use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::embeddings::Blip2TextEmbeddings;
use crate::layer::{Blip2QFormerLayer, ImageContext};

/// The Q-Former, as transformers' `Blip2QFormerModel` (weights under `qformer`), together with the
/// learned `query_tokens` of the enclosing BLIP-2 model; or InstructBLIP's
/// `InstructBlipQFormerModel`, which also embeds the instruction
/// ([`Blip2QFormerModel::load_instructblip`]).
#[derive(Module, Debug)]
pub struct Blip2QFormerModel {
    query_tokens: Param<Tensor<3>>,
    layernorm: nn::Norm,
    /// InstructBLIP's instruction embeddings (`qformer.embeddings`).
    instruction_embeddings: Option<Blip2TextEmbeddings>,
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
        Self::load_family(w, config, num_query_tokens, false, device)
    }

    /// Loads InstructBLIP's Q-Former from `w` (the whole checkpoint: `query_tokens` and
    /// `qformer.*`, whose LayerNorm and word and position embeddings are under
    /// `qformer.embeddings`); see [`Blip2QFormerModel::forward_instructed`].
    pub fn load_instructblip(
        w: &Weights,
        config: &QFormerConfig,
        num_query_tokens: usize,
        device: &Device,
    ) -> Result<Self> {
        Self::load_family(w, config, num_query_tokens, true, device)
    }

    fn load_family(
        w: &Weights,
        config: &QFormerConfig,
        num_query_tokens: usize,
        instructed: bool,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        // InstructBLIP's layers always have the text feed-forward blocks.
        let config = &QFormerConfig {
            use_qformer_text_input: config.use_qformer_text_input || instructed,
            ..config.clone()
        };
        let q = w.pp("qformer");
        let (layernorm, instruction_embeddings) = if instructed {
            let e = q.pp("embeddings");
            (
                e.pp("layernorm"),
                Some(Blip2TextEmbeddings::load(&e, config, device)?),
            )
        } else {
            (q.pp("layernorm"), None)
        };
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
                &layernorm,
                config.hidden_size,
                config.layer_norm_eps,
                device,
            )?,
            instruction_embeddings,
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

    /// Whether this is InstructBLIP's Q-Former, which reads an instruction with the image.
    pub fn is_instructed(&self) -> bool {
        self.instruction_embeddings.is_some()
    }

    /// InstructBLIP's pass: the queries and the instruction (`ids`, token ids of the Q-Former's
    /// BERT tokenizer, equal-length rows; `padding[row][pos]` true for padding) attend to each
    /// other, the queries also to the image. `image_embeds` `[batch, tokens, vision_width]` →
    /// `[batch, queries + len, hidden]`; the language model reads the first `queries` positions.
    ///
    /// Errors: a Q-Former without instruction embeddings (BLIP-2's), rows that do not match the
    /// images or the padding, ids outside the vocabulary, more tokens than positions.
    pub fn forward_instructed(
        &self,
        image_embeds: Tensor<3>,
        ids: &[Vec<u32>],
        padding: &[Vec<bool>],
    ) -> Result<Tensor<3>> {
        let embeddings = self.instruction_embeddings.as_ref().ok_or_else(|| {
            Error::InvalidInput("this Q-Former reads no instruction (it is BLIP-2's)".to_owned())
        })?;
        let text = embeddings.forward(ids)?;
        self.forward_joint(image_embeds, text, padding)
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
