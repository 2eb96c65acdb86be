//! `Blip2QFormerLayer`: self-attention, cross-attention on some layers, and separate
//! feed-forward blocks for the query and the text positions.

use blip2_core::config::{Activation, QFormerConfig};
use blip2_core::error::Result;
use blip2_core::nn::Dense;
use blip2_core::{nn, Weights};
use burn::module::Module;
use burn::tensor::{s, Bool, Device, Tensor};

use crate::attention::{Blip2QFormerAttention, Blip2QFormerSelfOutput};

/// `intermediate` + `output` (or `intermediate_query` + `output_query`): dense → activation →
/// dense, then `LayerNorm(x + residual)`.
#[derive(Module, Debug)]
pub struct Blip2QFormerFeedForward {
    intermediate: Dense,
    output: Blip2QFormerSelfOutput,
    #[module(skip)]
    activation: Activation,
}

impl Blip2QFormerFeedForward {
    fn load(
        w: &Weights,
        intermediate: &str,
        output: &str,
        config: &QFormerConfig,
        device: &Device,
    ) -> Result<Self> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        Ok(Blip2QFormerFeedForward {
            intermediate: nn::linear(&w.pp(intermediate).pp("dense"), h, i, true, device)?,
            output: Blip2QFormerSelfOutput::load(&w.pp(output), i, config, device)?,
            activation: config.hidden_act,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let inner = nn::activate(self.activation, self.intermediate.forward(x.clone()));
        self.output.forward(inner, x)
    }
}

/// One Q-Former layer.
#[derive(Module, Debug)]
pub struct Blip2QFormerLayer {
    attention: Blip2QFormerAttention,
    crossattention: Option<Blip2QFormerAttention>,
    query_feed_forward: Blip2QFormerFeedForward,
    text_feed_forward: Option<Blip2QFormerFeedForward>,
}

impl Blip2QFormerLayer {
    /// Loads `qformer.encoder.layer.{layer_idx}` from `w`.
    pub fn load(
        w: &Weights,
        config: &QFormerConfig,
        layer_idx: usize,
        device: &Device,
    ) -> Result<Self> {
        let crossattention = if config.has_cross_attention(layer_idx) {
            Some(Blip2QFormerAttention::load(
                &w.pp("crossattention"),
                config,
                true,
                device,
            )?)
        } else {
            None
        };
        let text_feed_forward = if config.use_qformer_text_input {
            Some(Blip2QFormerFeedForward::load(
                w,
                "intermediate",
                "output",
                config,
                device,
            )?)
        } else {
            None
        };
        Ok(Blip2QFormerLayer {
            attention: Blip2QFormerAttention::load(&w.pp("attention"), config, false, device)?,
            crossattention,
            query_feed_forward: Blip2QFormerFeedForward::load(
                w,
                "intermediate_query",
                "output_query",
                config,
                device,
            )?,
            text_feed_forward,
        })
    }

    /// Whether this layer cross-attends to the image.
    pub fn has_cross_attention(&self) -> bool {
        self.crossattention.is_some()
    }

    /// `hidden`: `[batch, query_length + text, width]`; the first `query_length` positions are the
    /// queries (cross-attention and the query feed-forward), the rest text (text feed-forward).
    pub(crate) fn forward(
        &self,
        hidden: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        image: Option<&ImageContext>,
        query_length: usize,
    ) -> Tensor<3> {
        let attention = self.attention.forward(hidden, None, mask);
        let [batch, seq, width] = attention.dims();
        let text_ff = || {
            self.text_feed_forward
                .as_ref()
                .expect("text positions need the text feed-forward; checked by Blip2QFormerModel")
        };
        if query_length == 0 {
            return text_ff().forward(attention);
        }
        let mut queries = attention.clone().slice(s![.., 0..query_length, ..]);
        if let (Some(cross), Some(image)) = (&self.crossattention, image) {
            queries = cross.forward(queries, Some(image.states.clone()), image.mask.clone());
        }
        let queries = self.query_feed_forward.forward(queries);
        if seq == query_length {
            return queries;
        }
        let text = attention.slice(s![.., query_length..seq, ..]);
        let text = text_ff().forward(text);
        debug_assert_eq!(text.dims()[0], batch);
        debug_assert_eq!(text.dims()[2], width);
        Tensor::cat(vec![queries, text], 1)
    }
}

/// The image features the queries cross-attend to, with their mask.
#[derive(Debug, Clone)]
pub(crate) struct ImageContext {
    pub states: Tensor<3>,
    pub mask: Option<Tensor<4, Bool>>,
}
