//! What each fuzz target checks, as plain functions over one input.
//!
//! The cargo-fuzz targets (`fuzz_targets/*.rs`) call them on libFuzzer's inputs, under
//! AddressSanitizer. The workspace test `tests/fuzz_corpora.rs` includes this file and calls them
//! on every committed corpus file, so the ordinary `cargo test` build replays the corpora without
//! a sanitizer build of its own. Each function returns normally or panics: a panic is a finding.

use std::path::Path;

use blip2::lm::LanguageModel;
use blip2::{Blip2, ImageEmbeddings, TextModel};
use blip2_core::config::{Blip2Config, GenerationConfigFile, PreprocessorConfig};
use blip2_core::image::{decode_image, ImageLimits, ImageProcessor};
use blip2_core::{WeightDType, WeightSource};
use blip2_hub::SafetensorsWeights;
use blip2_lm::GenerationConfig;

/// Bytes as every JSON file of a checkpoint folder: config.json, the image processor's settings
/// and generation_config.json. Parsing may fail with an error, never panic, and a parsed config
/// must validate without allocating what it claims.
pub fn config(data: &[u8]) {
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
}

/// Bytes as an image file: decoding (with a small pixel limit, so a hostile header cannot make
/// the fuzzer allocate gigabytes) and preprocessing must give pixels or a typed error.
pub fn image(data: &[u8]) {
    let limits = ImageLimits {
        max_pixels: 1 << 20,
    };
    let Ok(image) = decode_image(data, limits) else {
        return;
    };
    assert!(u64::from(image.width()) * u64::from(image.height()) <= limits.max_pixels);
    let processor = ImageProcessor::new(PreprocessorConfig::with_size(16, 16)).expect("valid");
    let pixels = processor
        .preprocess(&image)
        .expect("a decoded image preprocesses");
    assert!(pixels.as_slice().iter().all(|v| v.is_finite()));
}

/// Bytes as a model.safetensors file, written to `scratch` first because the reader
/// memory-maps a file, as it does for real checkpoints: opening it, then reading every tensor it
/// lists as f32 and as f16, must give data or a typed error, never a panic or an out-of-bounds
/// read.
pub fn safetensors(scratch: &Path, data: &[u8]) {
    std::fs::write(scratch, data).expect("scratch file");
    let Ok(weights) = SafetensorsWeights::from_file(scratch) else {
        return;
    };
    for key in weights.keys() {
        let shape = weights.shape(&key).expect("listed keys have shapes");
        for dtype in [WeightDType::F32, WeightDType::F16] {
            if let Ok(tensor) = weights.read(&key, &shape, dtype) {
                assert_eq!(tensor.num_elements(), shape.iter().product::<usize>());
            }
        }
        // A wrong expected shape is an error, not a misread.
        let mut wrong = shape.clone();
        wrong.push(2);
        assert!(weights.read(&key, &wrong, WeightDType::F32).is_err());
    }
    let _ = weights.unread_keys();
}

/// The committed tiny OPT model and one encoded fixture image, for [`PromptFixture::check`].
pub struct PromptFixture {
    model: Blip2,
    embeddings: ImageEmbeddings,
}

impl PromptFixture {
    /// Loads `tiny-opt` from the fixtures folder (`tests/fixtures` of the workspace).
    pub fn load(fixtures: &Path) -> Self {
        let model = Blip2::from_pretrained(
            fixtures
                .join("tiny-opt")
                .to_str()
                .expect("a UTF-8 fixtures path"),
        )
        .expect("tiny-opt");
        let image = blip2::preprocess::load_image(
            fixtures.join("images/rgb_96x64.png"),
            Default::default(),
        )
        .expect("fixture image");
        let embeddings = model.encode_images(&[image]).expect("encode");
        Self { model, embeddings }
    }

    /// Bytes as a prompt: tokenizing and building the language model's input (image tokens, BOS,
    /// padding, embeddings) must succeed for any UTF-8 text or fail with a typed error. Also runs
    /// one prefill, which bounds the prompt by the position table.
    pub fn check(&self, data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(prompt) = self.model.prompt(&self.embeddings, &[text]) else {
            return;
        };
        let [rows, len, _] = prompt.embeds.dims();
        assert_eq!((rows, prompt.attention_mask[0].len()), (1, len));
        if let TextModel::Opt(lm) = self.model.language_model() {
            let _ = lm.prefill(prompt.embeds, &prompt.attention_mask, 1);
        }
    }
}
