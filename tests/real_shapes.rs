//! The real ViT-g and Q-Former (transformers' default config: 1408 wide, 39 layers; 768 wide,
//! 12 layers, 32 queries) built from random weights, one 224x224 image through both.
//! Ignored by default (≈1.1 B parameters, 4.5 GB in f32). Run it with
//!
//! ```sh
//! cargo test --release --test real_shapes -- --ignored --nocapture
//! ```
//!
//! It reports the time; it asserts only the shapes.

use std::time::Instant;

use blip2::{Blip2Config, Device, ImageEncoder, RandomWeights, Tensor, WeightDType, Weights};

#[test]
#[ignore = "builds the full-size ViT-g (4.5 GB); run with --ignored in release mode"]
fn real_vit_g_and_qformer_shapes() {
    let config = Blip2Config::default();
    let device = Device::default();
    let source = RandomWeights::new(0.02);
    let weights = Weights::new(&source, WeightDType::F32);

    let start = Instant::now();
    let encoder = ImageEncoder::from_weights(&config, &weights, &device).unwrap();
    let built = start.elapsed();

    let pixels = Tensor::<4>::random(
        [1, 3, 224, 224],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let start = Instant::now();
    let vision = encoder.vision().forward(pixels).unwrap();
    let queries = encoder
        .qformer()
        .forward_queries(vision.last_hidden_state.clone())
        .unwrap();
    let _ = queries.clone().into_data();
    let encoded = start.elapsed();

    assert_eq!(vision.last_hidden_state.dims(), [1, 257, 1408]);
    assert_eq!(vision.pooler_output.dims(), [1, 1408]);
    assert_eq!(queries.dims(), [1, 32, 768]);
    println!(
        "real ViT-g + Q-Former on {device:?}: built from random weights in {:.2} s, one 224x224 image encoded in {:.2} s",
        built.as_secs_f64(),
        encoded.as_secs_f64()
    );
}
