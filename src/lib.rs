//! BLIP-2 in Rust, on the [burn](https://burn.dev) deep-learning framework.
//!
//! BLIP-2 turns an image into text: a frozen EVA-CLIP ViT-g encodes the image, a Q-Former's
//! learned queries read it through cross-attention, a linear layer projects them into a frozen
//! language model (OPT or Flan-T5) that writes a caption or answers a question. The reference for
//! every number this crate computes is Hugging Face `transformers`.
//!
//! # Status
//!
//! This release reads the real `Salesforce/blip2-*` checkpoints (configs with transformers'
//! defaults, single or sharded safetensors in f32/f16/bf16, tokenizers) and preprocesses images
//! exactly as transformers' `BlipImageProcessor` does. The models themselves (vision encoder,
//! Q-Former, OPT/T5 generation) are the next milestones; see the repository's issues.
//!
//! ```no_run
//! use blip2::Checkpoint;
//!
//! # fn main() -> blip2::Result<()> {
//! let checkpoint = Checkpoint::open("Salesforce/blip2-opt-2.7b", None)?;
//! println!("{}", checkpoint.summary());
//! let image = blip2::preprocess::load_image("photo.jpg", Default::default())?;
//! let pixels = checkpoint.image_processor().preprocess(&image)?;
//! assert_eq!(pixels.shape(), [1, 3, 224, 224]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod checkpoint;
mod encoder;

pub use blip2_core::config;
pub use blip2_core::{
    Blip2Config, Error, RandomWeights, Result, WeightDType, WeightSource, Weights,
};
pub use blip2_hub::{ModelDir, SafetensorsWeights, Tokenizer};
pub use burn::tensor::{Device, Tensor};
pub use checkpoint::{Checkpoint, CheckpointSummary};
pub use encoder::{ImageEmbeddings, ImageEncoder};
pub use image;

/// Image decoding and `BlipImageProcessor` preprocessing.
pub mod preprocess {
    pub use blip2_core::image::{
        decode_image, load_image, resize_rgb8, to_rgb8, ImageLimits, ImageProcessor, PixelValues,
    };
}

/// Finding checkpoints: local folders and the Hugging Face cache.
pub mod hub {
    pub use blip2_hub::{
        find_in_cache, hf_cache_dir, is_hub_id, load_tokenizer, resolve_local, INDEX_FILE,
        SINGLE_FILE,
    };
}
