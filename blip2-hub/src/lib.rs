//! Finding and reading BLIP-2 checkpoints in Hugging Face layout.
//!
//! - [`resolve_local`]: a folder, or a hub id already in the HF cache (no network access).
//! - [`ModelDir`]: the folder's JSON files parsed into `blip2-core`'s config types.
//! - [`SafetensorsWeights`]: single or sharded safetensors, memory-mapped, converted to the
//!   requested dtype when a tensor is read; implements [`blip2_core::WeightSource`].
//! - [`load_tokenizer`]: `tokenizer.json` through the `tokenizers` crate.
//! - `download` (feature `download`): fetch a model missing from the HF cache from the hub.
#![warn(missing_docs)]

#[cfg(feature = "download")]
mod download;
mod model_dir;
mod safetensors;
mod source;
mod tokenizer;

#[cfg(feature = "download")]
pub use download::download;
pub use model_dir::ModelDir;
pub use safetensors::{SafetensorsWeights, INDEX_FILE, SINGLE_FILE};
pub use source::{find_in_cache, hf_cache_dir, is_hub_id, resolve_local};
pub use tokenizer::{load_tokenizer, Tokenizer};
