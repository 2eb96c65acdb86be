//! The EVA-CLIP ViT-g image encoder of BLIP-2 (transformers' `Blip2VisionModel`), on burn.
//!
//! One module per transformers module, weights read by their transformers names:
//! [`embeddings`] (`Blip2VisionEmbeddings`), [`attention`] (`Blip2Attention`), [`encoder`]
//! (`Blip2EncoderLayer`, `Blip2Mlp`), [`model`] (`Blip2VisionModel`). Backend-agnostic: everything
//! takes a burn `Device`.
#![warn(missing_docs)]

pub mod attention;
pub mod embeddings;
pub mod encoder;
pub mod model;

pub use model::{Blip2VisionModel, VisionOutput};
