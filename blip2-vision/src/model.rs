//! `Blip2VisionModel`: embeddings → encoder layers → `post_layernorm`.

use blip2_core::config::VisionConfig;
use blip2_core::error::Result;
use blip2_core::{nn, Weights};
use burn::module::Module;
use burn::tensor::{s, Device, Tensor};

use crate::embeddings::Blip2VisionEmbeddings;
use crate::encoder::Blip2EncoderLayer;

/// The EVA-CLIP ViT-g image encoder, as transformers' `Blip2VisionModel`.
#[derive(Module, Debug)]
pub struct Blip2VisionModel {
    embeddings: Blip2VisionEmbeddings,
    layers: Vec<Blip2EncoderLayer>,
    post_layernorm: nn::Norm,
}

/// What the vision model returns.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// `[batch, 1 + patches, hidden]`, after `post_layernorm`: what the Q-Former cross-attends to.
    pub last_hidden_state: Tensor<3>,
    /// `[batch, hidden]`: the class token, with `post_layernorm` applied a second time, as
    /// transformers does.
    pub pooler_output: Tensor<2>,
}

impl Blip2VisionModel {
    /// Loads the vision model from `w` (the view of `vision_model`).
    pub fn load(w: &Weights, config: &VisionConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Blip2EncoderLayer::load(&w.pp("encoder.layers").pp(i), config, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Blip2VisionModel {
            embeddings: Blip2VisionEmbeddings::load(&w.pp("embeddings"), config, device)?,
            layers,
            post_layernorm: nn::layer_norm(
                &w.pp("post_layernorm"),
                config.hidden_size,
                config.layer_norm_eps,
                device,
            )?,
        })
    }

    /// Encodes `[batch, 3, H, W]` pixel values.
    ///
    /// Errors: wrong channel count, image size or an empty batch (see
    /// [`Blip2VisionEmbeddings::forward`]).
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<VisionOutput> {
        let mut x = self.embeddings.forward(pixel_values)?;
        for layer in &self.layers {
            x = layer.forward(x);
        }
        let last_hidden_state = self.post_layernorm.forward(x);
        let [batch, _, hidden] = last_hidden_state.dims();
        let cls = last_hidden_state
            .clone()
            .slice(s![.., 0..1, ..])
            .reshape([batch, hidden]);
        Ok(VisionOutput {
            pooler_output: self.post_layernorm.forward(cls),
            last_hidden_state,
        })
    }
}
