//! `Blip2EncoderLayer` (pre-norm transformer block) and `Blip2Mlp` (transformers' `Blip2MLP`).
//! transformers' `Blip2Encoder`, the stack of layers, is the `layers` field of
//! [`Blip2VisionModel`](crate::Blip2VisionModel).

use blip2_core::config::{Activation, VisionConfig};
use blip2_core::error::Result;
use blip2_core::nn::Dense;
use blip2_core::{nn, Weights};
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::attention::Blip2Attention;

/// `fc1` → activation (exact GELU for EVA-CLIP) → `fc2`.
#[derive(Module, Debug)]
pub struct Blip2Mlp {
    fc1: Dense,
    fc2: Dense,
    #[module(skip)]
    activation: Activation,
}

impl Blip2Mlp {
    /// Loads `...mlp` from `w`.
    pub fn load(w: &Weights, config: &VisionConfig, device: &Device) -> Result<Self> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        // Packed for products of `batch * (patches + 1)` rows (see `Dense::packed`).
        Ok(Blip2Mlp {
            fc1: nn::linear(&w.pp("fc1"), h, i, true, device)?.packed(),
            fc2: nn::linear(&w.pp("fc2"), i, h, true, device)?.packed(),
            activation: config.hidden_act,
        })
    }

    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2
            .forward(nn::activate(self.activation, self.fc1.forward(x)))
    }
}

/// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct Blip2EncoderLayer {
    self_attn: Blip2Attention,
    layer_norm1: nn::Norm,
    mlp: Blip2Mlp,
    layer_norm2: nn::Norm,
}

impl Blip2EncoderLayer {
    /// Loads `vision_model.encoder.layers.{i}` from `w`.
    pub fn load(w: &Weights, config: &VisionConfig, device: &Device) -> Result<Self> {
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        Ok(Blip2EncoderLayer {
            self_attn: Blip2Attention::load(&w.pp("self_attn"), config, device)?,
            layer_norm1: nn::layer_norm(&w.pp("layer_norm1"), h, eps, device)?,
            mlp: Blip2Mlp::load(&w.pp("mlp"), config, device)?,
            layer_norm2: nn::layer_norm(&w.pp("layer_norm2"), h, eps, device)?,
        })
    }

    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}
