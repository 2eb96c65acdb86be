//! `tokenizer.json`, loaded with the `tokenizers` crate.

use std::path::Path;

use blip2_core::error::{Error, Result};
pub use tokenizers::Tokenizer;

/// Loads a `tokenizer.json` (OPT's byte-level BPE, T5's unigram, BERT's WordPiece, ...).
pub fn load_tokenizer(path: impl AsRef<Path>) -> Result<Tokenizer> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(Error::Tokenizer {
            path: path.to_owned(),
            reason: "file not found (only tokenizer.json is supported, not the slow \
                     vocab/merges or sentencepiece files)"
                .to_owned(),
        });
    }
    Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}
