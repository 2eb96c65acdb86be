//! `vision_config`: transformers' `Blip2VisionConfig`.

use serde::Deserialize;

use super::{check_heads, check_positive, Activation, OneOrPair};
use crate::error::{Error, Result};

/// The EVA-CLIP ViT-g image encoder's configuration.
///
/// Every field omitted from `config.json` takes transformers' default, which is the real
/// BLIP-2 ViT-g (the hub's files omit almost all of them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Width of the encoder (1408).
    pub hidden_size: usize,
    /// Width of the MLP (6144).
    pub intermediate_size: usize,
    /// Number of encoder blocks (39).
    pub num_hidden_layers: usize,
    /// Attention heads per block (16).
    pub num_attention_heads: usize,
    /// Input resolution, square or `[height, width]` (224).
    pub image_size: OneOrPair,
    /// Patch size, square or `[height, width]` (14).
    pub patch_size: OneOrPair,
    /// Activation of the MLP (`gelu`: the exact erf form).
    pub hidden_act: Activation,
    /// LayerNorm epsilon (1e-6).
    pub layer_norm_eps: f64,
    /// Whether attention has the q and v biases (true).
    pub qkv_bias: bool,
    /// Input channels (3); transformers hard-codes RGB.
    pub num_channels: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: OneOrPair::One(224),
            patch_size: OneOrPair::One(14),
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            num_channels: 3,
        }
    }
}

impl VisionConfig {
    /// Image `(height, width)` in pixels.
    pub fn image_hw(&self) -> (usize, usize) {
        self.image_size.pair()
    }

    /// Patch `(height, width)` in pixels.
    pub fn patch_hw(&self) -> (usize, usize) {
        self.patch_size.pair()
    }

    /// Number of patches, without the class token.
    pub fn num_patches(&self) -> usize {
        let ((ih, iw), (ph, pw)) = (self.image_hw(), self.patch_hw());
        (ih / ph) * (iw / pw)
    }

    /// Number of tokens the encoder outputs: the class token plus one per patch.
    pub fn num_positions(&self) -> usize {
        self.num_patches() + 1
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the sizes and relations the model code relies on.
    pub fn validate(&self) -> Result<()> {
        let f = |name: &str| format!("vision_config.{name}");
        check_positive(&f("hidden_size"), self.hidden_size)?;
        check_positive(&f("intermediate_size"), self.intermediate_size)?;
        check_positive(&f("num_hidden_layers"), self.num_hidden_layers)?;
        check_heads(
            &f("num_attention_heads"),
            self.hidden_size,
            self.num_attention_heads,
        )?;
        let ((ih, iw), (ph, pw)) = (self.image_hw(), self.patch_hw());
        check_positive(&f("image_size"), ih.min(iw))?;
        check_positive(&f("patch_size"), ph.min(pw))?;
        if !ih.is_multiple_of(ph) || !iw.is_multiple_of(pw) {
            return Err(Error::invalid_config(
                f("image_size"),
                format!("image size {ih}x{iw} is not a multiple of the patch size {ph}x{pw}"),
            ));
        }
        if self.num_channels != 3 {
            return Err(Error::invalid_config(
                f("num_channels"),
                format!(
                    "BLIP-2 reads RGB images (3 channels), found {}",
                    self.num_channels
                ),
            ));
        }
        Ok(())
    }
}
