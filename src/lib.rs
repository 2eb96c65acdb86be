//! BLIP-2 in Rust, on the [burn](https://burn.dev) deep-learning framework.
//!
//! BLIP-2 turns an image into text: a frozen EVA-CLIP ViT-g encodes the image, a Q-Former's
//! learned queries read it through cross-attention, a linear layer projects them into a frozen
//! language model (OPT or Flan-T5) that writes a caption or answers a question. The reference for
//! every number this crate computes is Hugging Face `transformers`.
//!
//! # Status
//!
//! OPT and Flan-T5 checkpoints caption and answer questions with transformers' generation
//! semantics (greedy, beam search, sampling, penalties, batches, streaming), and the retrieval
//! checkpoint scores and embeds images and texts (ITM, ITC), at parity with transformers on tiny
//! reference models, in f32, f16 and bf16 (see `docs/backends.md`). The CPU backends are tested;
//! WGPU is tested on a CPU Vulkan driver; CUDA is type-checked only, not yet run on a GPU.
//!
//! ```no_run
//! use blip2::{Blip2, GenerationConfig};
//!
//! # fn main() -> blip2::Result<()> {
//! let model = Blip2::from_pretrained("Salesforce/blip2-opt-2.7b")?;
//! let image = blip2::preprocess::load_image("photo.jpg", Default::default())?;
//! println!("{}", model.caption(&image)?);
//! println!("{}", model.ask(&image, "what is the man holding?")?);
//! let beams = GenerationConfig { num_beams: 3, ..model.generation_config().clone() };
//! let out = model.generate(&[image], &["a photo of"], &beams)?;
//! println!("{}", out[0][0].text);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod backend;
mod builder;
mod checkpoint;
mod encoder;
mod model;
mod prompt;
mod retrieval;
mod stream;

pub use blip2_core::config;
pub use blip2_core::config::EarlyStopping;
pub use blip2_core::{
    Blip2Config, Error, ErrorKind, Quantization, RandomWeights, Result, WeightDType, WeightSource,
    Weights,
};
pub use blip2_hub::{ModelDir, SafetensorsWeights, Tokenizer};
pub use blip2_lm::{GenerationConfig, StopReason};
pub use builder::{Blip2Builder, Blip2RetrievalBuilder, Builder};
pub use burn::tensor::{Device, Tensor};
pub use checkpoint::{
    Checkpoint, CheckpointInfo, CheckpointKind, CheckpointSummary, ImageTokenInfo, ImagesInfo,
    LanguageInfo, LanguageKind, QFormerInfo, VisionInfo, WeightsInfo,
};
pub use encoder::{ImageEmbeddings, ImageEncoder};
pub use model::{
    Blip2, Generation, InstructionRows, TextModel, Timings, DEFAULT_QUESTION_TEMPLATE,
    INSTRUCTBLIP_CAPTION_PROMPT, INSTRUCTBLIP_QUESTION_TEMPLATE, NO_PROMPTS,
};
pub use prompt::{InputLayout, InputRows, SpecialTokens};
pub use retrieval::{Blip2Retrieval, RankedText, Scores, TokenizedTexts, ITM_PAIRS_PER_PASS};

/// Lower-level generation pieces: the language-model trait, prompts, sequences.
pub mod lm {
    pub use blip2_lm::generation::{fresh_seed, Prompt, DEFAULT_MAX_NEW_TOKENS};
    pub use blip2_lm::{
        check_device, generate, read_back, GeneratedSequence, LanguageModel, LlamaForCausalLM,
        OptForCausalLM, T5ForConditionalGeneration,
    };
}
pub use image;

/// Borrows a slice of strings of any kind as `&str`s.
fn as_strs(texts: &[impl AsRef<str>]) -> Vec<&str> {
    texts.iter().map(AsRef::as_ref).collect()
}

/// The README's Rust examples, compiled by `cargo test --doc` so that they cannot drift from the
/// API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;

/// The examples of `docs/generation.md`, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/generation.md")]
pub struct GenerationDocExamples;

/// The examples of `docs/retrieval.md`, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/retrieval.md")]
pub struct RetrievalDocExamples;

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
