//! OPT and T5 language models behind one `LanguageModel` trait, with KV cache and generation, on
//! burn.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout.
