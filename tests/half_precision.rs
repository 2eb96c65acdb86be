//! f16 and bf16 against transformers run in the same precision split (goldens from
//! `tools/parity/make_half_goldens.py`): encoder stages within the accuracy bound, first-step
//! logits within the precision's tolerance and the accuracy bound, the language model alone
//! (first-step and teacher-forced logits from transformers' own image features) within the
//! tolerance, generated ids over the steps where transformers' choice was clear (see
//! `tests/common/mod.rs`).

mod common;

use blip2::{Blip2, Checkpoint, Device, Error, ImageEncoder, Tensor, WeightDType};
use burn::tensor::TensorData;
use common::{Precision, BF16, F16};
use safetensors::SafeTensors;

/// Every golden case of `fixture` in `precision`, with a per-case report on failure.
fn run_all(fixture: &str, precision: &Precision) {
    if !Device::default().supports_dtype(precision.dtype.to_burn()) {
        eprintln!("skipped: this backend has no {:?}", precision.dtype);
        return;
    }
    for case in common::cases_in(fixture, precision) {
        common::run_case_in(fixture, case["name"].as_str().unwrap(), precision);
    }
}

#[test]
fn opt_f16() {
    run_all("tiny-opt", &F16);
}

/// The tiny T5 runs in f32 on image features computed in f16 or bf16, and its random weights
/// amplify their rounding noise twentyfold (first logits up to 2.0 apart in bf16 while the
/// features are 0.09 apart). Its features are held to the bounds in `encoder_stages`; its
/// logits are only reported, and its ids compared over the steps whose margin exceeds the
/// measured logit difference.
fn features_only(precision: &Precision) -> Precision {
    Precision {
        tolerance: f32::INFINITY,
        logits_held: false,
        ..*precision
    }
}

#[test]
fn t5_f16() {
    run_all("tiny-t5", &features_only(&F16));
}

#[test]
fn opt_bf16() {
    run_all("tiny-opt", &BF16);
}

#[test]
fn t5_bf16() {
    run_all("tiny-t5", &features_only(&BF16));
}

/// The vision model, Q-Former and projection alone, on the pixel values of `goldens.safetensors`;
/// prints each stage's distance to transformers in the same precision and to the f32 goldens.
fn encoder_stages(fixture: &str, precision: &Precision) {
    if !Device::default().supports_dtype(precision.dtype.to_burn()) {
        return;
    }
    let dir = common::fixtures().join(fixture);
    let checkpoint = Checkpoint::open(dir.to_str().unwrap(), None).unwrap();
    let device = Device::default();
    let encoder = ImageEncoder::load(&checkpoint, &device, precision.dtype).unwrap();
    let f32_bytes = std::fs::read(dir.join("goldens.safetensors")).unwrap();
    let f32_goldens = SafeTensors::deserialize(&f32_bytes).unwrap();
    let half_bytes = std::fs::read(dir.join(precision.tensors)).unwrap();
    let half_goldens = SafeTensors::deserialize(&half_bytes).unwrap();
    let pixels = f32_goldens.tensor("pixel_values").unwrap();
    let shape: [usize; 4] = pixels.shape().try_into().unwrap();
    let pixels =
        Tensor::<4>::from_data(TensorData::new(common::f32_values(&pixels), shape), &device);
    let vision = encoder.vision().forward(pixels).unwrap().last_hidden_state;
    let qformer = encoder.qformer().forward_queries(vision.clone()).unwrap();
    let projected = encoder.project(qformer.clone()).unwrap();
    let stages = [
        ("vision_last_hidden_state", vision),
        ("qformer_last_hidden_state", qformer),
        ("language_projection", projected),
    ];
    for (key, ours) in stages {
        let theirs = common::f32_values(&half_goldens.tensor(&format!("encoder.{key}")).unwrap());
        let exact = common::f32_values(&f32_goldens.tensor(key).unwrap());
        let ours = common::values(ours);
        let to_theirs = common::max_abs(&ours, &theirs);
        let (to_f32, theirs_to_f32) = common::check_accuracy(key, &ours, &theirs, &exact);
        println!(
            "{fixture} {:?} {key}: max-abs to transformers {to_theirs:.2e}; rms from f32: ours {to_f32:.2e}, transformers {theirs_to_f32:.2e}",
            precision.dtype
        );
        assert!(to_theirs <= precision.tolerance, "{key}: {to_theirs}");
    }
}

#[test]
fn encoder_f16() {
    encoder_stages("tiny-opt", &F16);
    encoder_stages("tiny-t5", &F16);
}

#[test]
fn encoder_bf16() {
    encoder_stages("tiny-opt", &BF16);
    encoder_stages("tiny-t5", &BF16);
}

/// A backend without f16 (ndarray) refuses it with an error, before reading any weights.
#[test]
fn a_dtype_the_backend_lacks_is_an_error() {
    let device = Device::default();
    for dtype in [WeightDType::F16, WeightDType::BF16] {
        let result = Blip2::builder(common::fixtures().join("tiny-opt").to_str().unwrap())
            .device(device.clone())
            .dtype(dtype)
            .build();
        if device.supports_dtype(dtype.to_burn()) {
            assert_eq!(result.unwrap().dtype(), dtype);
        } else {
            assert!(
                matches!(result, Err(Error::Unsupported(ref m)) if m.contains("cannot run")),
                "{dtype:?}"
            );
        }
    }
}
