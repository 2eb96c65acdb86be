//! `Blip2QFormerMultiHeadAttention`, `Blip2QFormerSelfOutput` and `Blip2QFormerAttention`.

use blip2_core::config::QFormerConfig;
use blip2_core::error::Result;
use blip2_core::nn::Dense;
use blip2_core::{nn, Weights};
use burn::module::Module;
use burn::tensor::{Bool, Device, Tensor};

/// BERT multi-head attention with separate `query`/`key`/`value`; as cross-attention its keys
/// and values come from the image features (`encoder_hidden_size` wide).
#[derive(Module, Debug)]
pub struct Blip2QFormerMultiHeadAttention {
    query: Dense,
    key: Dense,
    value: Dense,
    num_heads: usize,
}

impl Blip2QFormerMultiHeadAttention {
    fn load(w: &Weights, config: &QFormerConfig, cross: bool, device: &Device) -> Result<Self> {
        let h = config.hidden_size;
        let kv_in = if cross { config.encoder_hidden_size } else { h };
        Ok(Blip2QFormerMultiHeadAttention {
            query: nn::linear(&w.pp("query"), h, h, true, device)?,
            key: nn::linear(&w.pp("key"), kv_in, h, true, device)?,
            value: nn::linear(&w.pp("value"), kv_in, h, true, device)?,
            num_heads: config.num_attention_heads,
        })
    }

    /// Attends from `hidden` (`[batch, seq, hidden]`) to `context` (itself for self-attention);
    /// `mask` (`[batch, 1, 1, keys]`) is true for keys to ignore.
    fn forward(
        &self,
        hidden: Tensor<3>,
        context: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let q = nn::split_heads(self.query.forward(hidden), self.num_heads);
        let k = nn::split_heads(self.key.forward(context.clone()), self.num_heads);
        let v = nn::split_heads(self.value.forward(context), self.num_heads);
        nn::merge_heads(nn::scaled_attention(q, k, v, mask))
    }
}

/// `LayerNorm(dense(x) + residual)` (post-norm, as BERT).
#[derive(Module, Debug)]
pub struct Blip2QFormerSelfOutput {
    dense: Dense,
    layer_norm: nn::Norm,
}

impl Blip2QFormerSelfOutput {
    pub(crate) fn load(
        w: &Weights,
        d_in: usize,
        config: &QFormerConfig,
        device: &Device,
    ) -> Result<Self> {
        let h = config.hidden_size;
        Ok(Blip2QFormerSelfOutput {
            dense: nn::linear(&w.pp("dense"), d_in, h, true, device)?,
            layer_norm: nn::layer_norm(&w.pp("LayerNorm"), h, config.layer_norm_eps, device)?,
        })
    }

    pub(crate) fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.layer_norm.forward(self.dense.forward(x) + residual)
    }
}

/// Attention followed by its output block (`attention` / `crossattention` in a layer).
#[derive(Module, Debug)]
pub struct Blip2QFormerAttention {
    attention: Blip2QFormerMultiHeadAttention,
    output: Blip2QFormerSelfOutput,
}

impl Blip2QFormerAttention {
    /// Loads `...attention` or `...crossattention` (`cross`) from `w`.
    pub fn load(w: &Weights, config: &QFormerConfig, cross: bool, device: &Device) -> Result<Self> {
        Ok(Blip2QFormerAttention {
            attention: Blip2QFormerMultiHeadAttention::load(
                &w.pp("attention"),
                config,
                cross,
                device,
            )?,
            output: Blip2QFormerSelfOutput::load(
                &w.pp("output"),
                config.hidden_size,
                config,
                device,
            )?,
        })
    }

    /// Self-attention over `hidden`, or cross-attention to `context` when given.
    pub fn forward(
        &self,
        hidden: Tensor<3>,
        context: Option<Tensor<3>>,
        mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let context = context.unwrap_or_else(|| hidden.clone());
        let attended = self.attention.forward(hidden.clone(), context, mask);
        self.output.forward(attended, hidden)
    }
}
