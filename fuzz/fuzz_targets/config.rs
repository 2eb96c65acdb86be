//! Random bytes as every JSON file of a checkpoint folder: config.json, the image processor's
//! settings and generation_config.json. Parsing may fail with an error, never panic, and a parsed
//! config must validate without allocating what it claims.
#![no_main]

use blip2_core::config::{Blip2Config, GenerationConfigFile, PreprocessorConfig};
use blip2_core::image::ImageProcessor;
use blip2_lm::GenerationConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Blip2Config::from_json(text) {
        // Derived sizes must not overflow or panic.
        let _ = config.vision_config.num_patches();
    }
    if let Ok(config) = serde_json::from_str::<PreprocessorConfig>(text) {
        let _ = ImageProcessor::new(config);
    }
    if let Ok(file) = serde_json::from_str::<GenerationConfigFile>(text) {
        let _ = GenerationConfig::from_file(&file, vec![2], Some(1)).validate();
    }
});
