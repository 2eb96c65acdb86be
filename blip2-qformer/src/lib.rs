//! The BLIP-2 Q-Former (transformers' `Blip2QFormerModel`) and its retrieval heads, on burn.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout.
