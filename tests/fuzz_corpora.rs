//! Every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the check its fuzz target
//! runs (`fuzz/src/lib.rs`, included here as a module), in the ordinary test build.
//!
//! This is the part of fuzzing that CI repeats on every change: the inputs found by earlier
//! coverage-guided runs must still end in a value or a typed error. New inputs come from running
//! the fuzzers themselves (AddressSanitizer build, see fuzz/README.md), which is a manual step.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The corpus files of `target`, in a fixed order; the corpus must not be empty.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = root().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    files
}

/// Runs `check` over every file of `target`'s corpus, naming the file that failed.
fn replay(target: &str, mut check: impl FnMut(&[u8])) {
    let files = corpus(target);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        if outcome.is_err() {
            panic!("fuzz target {target} fails on {}", file.display());
        }
    }
    println!("{target}: {} corpus files replayed", files.len());
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}

#[test]
fn image_corpus() {
    replay("image", checks::image);
}

#[test]
fn safetensors_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("model.safetensors");
    replay("safetensors", |data| checks::safetensors(&scratch, data));
}

#[test]
fn prompt_corpus() {
    let fixture = checks::PromptFixture::load(&root().join("tests/fixtures"));
    replay("prompt", |data| fixture.check(data));
}

#[test]
fn kernels_corpus() {
    replay("kernels", checks::kernels);
}
