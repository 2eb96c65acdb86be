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

/// Random bytes as the shapes and values of a linear layer, through the CPU kernels at every
/// level this CPU runs: the f32, f16 and bf16 products within a summation bound of an f64
/// reference, and the int8 product bit for bit its documented order on the dequantized weight
/// (and within the same bound).
pub fn kernels(data: &[u8]) {
    use blip2_kernels::{bf16, f16, linear_at, linear_int8_at, Int8Matrix, Level};
    let [a, b, c, rest @ ..] = data else {
        return;
    };
    if rest.is_empty() {
        return;
    }
    let (rows, out, d_in) = (
        1 + *a as usize % 20,
        1 + *b as usize % 24,
        1 + *c as usize % 160,
    );
    let value = |i: usize| f32::from(rest[i % rest.len()] as i8) / 16.0;
    let x: Vec<f32> = (0..rows * d_in).map(value).collect();
    let w: Vec<f32> = (0..out * d_in).map(|i| value(i + rows * d_in)).collect();
    let bias: Vec<f32> = (0..out).map(|i| value(i * 7 + 3)).collect();
    let reference = |w: &[f32]| -> Vec<(f64, f64)> {
        let mut y = Vec::with_capacity(rows * out);
        for r in 0..rows {
            for o in 0..out {
                let terms =
                    (0..d_in).map(|k| f64::from(x[r * d_in + k]) * f64::from(w[o * d_in + k]));
                let size: f64 = terms.clone().map(f64::abs).sum();
                y.push((terms.sum::<f64>() + f64::from(bias[o]), size));
            }
        }
        y
    };
    let close = |name: &str, got: &[f32], want: &[(f64, f64)]| {
        for (g, (v, size)) in got.iter().zip(want) {
            let bound = 1e-7 * (d_in as f64 + 2.0) * size + 1.2e-7 * v.abs() + 1e-30;
            assert!(
                (f64::from(*g) - v).abs() <= bound,
                "{name} {rows}x{out}x{d_in}: {g} vs {v}"
            );
        }
    };
    let q = Int8Matrix::quantize(&w, d_in).expect("finite weights");
    let dq = q.dequantize();
    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let b16: Vec<f16> = bias.iter().map(|&v| f16::from_f32(v)).collect();
    let bb: Vec<bf16> = bias.iter().map(|&v| bf16::from_f32(v)).collect();
    for level in [Level::Portable, Level::Avx2, Level::Avx512] {
        if !level.is_available() {
            continue;
        }
        let mut y = vec![0f32; rows * out];
        linear_at(level, &x, &w, Some(&bias), d_in, &mut y);
        close("f32", &y, &reference(&w));
        // The values are multiples of 1/16 within ±8: exact in f16 and bf16 (and so are their
        // biases).
        let mut y16 = vec![0f32; rows * out];
        linear_at(level, &x, &w16, Some(&b16), d_in, &mut y16);
        close("f16", &y16, &reference(&w));
        linear_at(level, &x, &wb, Some(&bb), d_in, &mut y16);
        close("bf16", &y16, &reference(&w));
        let mut y8 = vec![0f32; rows * out];
        linear_int8_at(level, &x, &q, Some(&bias), &mut y8);
        close("int8", &y8, &reference(&dq));
        // k = 0, 1, … from zero, fused on x86 and not in portable code, then the bias.
        let ordered: Vec<f32> = (0..rows * out)
            .map(|i| {
                let (r, o) = (i / out, i % out);
                let terms = x[r * d_in..(r + 1) * d_in].iter().zip(&dq[o * d_in..]);
                let sum = terms.fold(0f32, |acc, (&x, &w)| match level {
                    Level::Portable => acc + x * w,
                    _ => x.mul_add(w, acc),
                });
                sum + bias[o]
            })
            .collect();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&y8),
            bits(&ordered),
            "int8 {level:?} {rows}x{out}x{d_in}"
        );
    }
}
