//! The EVA-CLIP ViT-g image encoder of BLIP-2 (transformers' `Blip2VisionModel`), on burn.
#![warn(missing_docs)]

pub mod attention;
