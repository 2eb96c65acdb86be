//! `Blip2VisionEmbeddings`: patch embedding, class token, learned positions.

use blip2_core::config::VisionConfig;
use blip2_core::error::{Error, Result};
use blip2_core::{nn, Weights};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

/// Patch embedding (a `Conv2d` with kernel = stride = patch size, computed as one matrix product
/// over the flattened patches), the class token and the position table.
#[derive(Module, Debug)]
pub struct Blip2VisionEmbeddings {
    /// `patch_embedding.weight` flattened to `[hidden, 3 * patch_h * patch_w]`.
    patch_weight: Param<Tensor<2>>,
    patch_bias: Param<Tensor<1>>,
    class_embedding: Param<Tensor<3>>,
    position_embedding: Param<Tensor<3>>,
    image_h: usize,
    image_w: usize,
    patch_h: usize,
    patch_w: usize,
}

impl Blip2VisionEmbeddings {
    /// Loads `vision_model.embeddings` from `w`.
    pub fn load(w: &Weights, config: &VisionConfig, device: &Device) -> Result<Self> {
        let hidden = config.hidden_size;
        let (image_h, image_w) = config.image_hw();
        let (patch_h, patch_w) = config.patch_hw();
        let conv: Tensor<4> = nn::tensor(
            w.get("patch_embedding.weight", &[hidden, 3, patch_h, patch_w])?,
            device,
        );
        Ok(Blip2VisionEmbeddings {
            patch_weight: Param::from_tensor(conv.reshape([hidden, 3 * patch_h * patch_w])),
            patch_bias: nn::param(w, "patch_embedding.bias", [hidden], device)?,
            class_embedding: nn::param(w, "class_embedding", [1, 1, hidden], device)?,
            position_embedding: nn::param(
                w,
                "position_embedding",
                [1, config.num_positions(), hidden],
                device,
            )?,
            image_h,
            image_w,
            patch_h,
            patch_w,
        })
    }

    /// `[batch, 3, H, W]` pixel values → `[batch, 1 + patches, hidden]`.
    ///
    /// Errors: a channel count other than 3, or an image size other than the configured one
    /// (position embeddings are not interpolated).
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<Tensor<3>> {
        let [batch, channels, height, width] = pixel_values.dims();
        if channels != 3 {
            return Err(Error::InvalidInput(format!(
                "pixel values must have 3 channels, found {channels}"
            )));
        }
        if (height, width) != (self.image_h, self.image_w) {
            return Err(Error::InvalidInput(format!(
                "pixel values are {height}x{width}, the vision model takes {}x{} \
                 (position embeddings are not interpolated)",
                self.image_h, self.image_w
            )));
        }
        if batch == 0 {
            return Err(Error::InvalidInput("a batch of zero images".to_owned()));
        }
        let (gh, gw) = (height / self.patch_h, width / self.patch_w);
        let (ph, pw) = (self.patch_h, self.patch_w);
        // [B, C, gh, ph, gw, pw] -> [B, gh, gw, C, ph, pw] -> [B, gh * gw, C * ph * pw]: patches in
        // the conv's row-major output order, each flattened in the conv weight's (c, kh, kw) order.
        // Pixels come in f32; the model may run in another precision (as transformers casts them).
        let patches = pixel_values
            .cast(self.patch_weight.dtype())
            .reshape([batch, 3, gh, ph, gw, pw])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([batch, gh * gw, 3 * ph * pw]);
        let hidden = self.patch_bias.dims()[0];
        let patch_embeds = patches.matmul(self.patch_weight.val().transpose().unsqueeze::<3>())
            + self.patch_bias.val().reshape([1, 1, hidden]);
        let class = self.class_embedding.val().expand([batch, 1, hidden]);
        let embeddings = Tensor::cat(vec![class, patch_embeds], 1);
        Ok(embeddings + self.position_embedding.val())
    }
}
