//! Random bytes as a model.safetensors file (see `blip2_fuzz::safetensors`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("blip2-fuzz-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| blip2_fuzz::safetensors(scratch(), data));
