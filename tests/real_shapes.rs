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

/// `instructblip-vicuna-7b`'s shape from random weights in bf16: the image side (ViT-g, then the
/// Q-Former over 32 queries and a 10-token instruction, then the projection to 4096) for one
/// 224x224 image, and the language model (4096 wide, 32 layers, 32 heads, MLP 11008, vocabulary
/// 32001; 13.5 GB, where f32 would need 27 GB): a prefill of 32 image queries and 8 prompt
/// tokens, then 8 decoding steps. Reports the times (tools/bench/llama_shape.py does the same
/// with transformers); asserts the shapes. `BLIP2_LLAMA_LAYERS=8` builds fewer layers.
///
/// ```sh
/// BLIP2_LLAMA_LAYERS=8 cargo test --release --test real_shapes -- --ignored --nocapture vicuna
/// ```
#[test]
#[ignore = "builds Vicuna-7b's 6.7 B parameters in bf16 (13.5 GB); run with --ignored in release mode"]
fn real_vicuna_7b_shape() {
    use blip2::lm::{LanguageModel, LlamaForCausalLM};

    let layers = std::env::var("BLIP2_LLAMA_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let config: blip2::config::LlamaConfig = serde_json::from_str(&format!(
        r#"{{"vocab_size": 32001, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": {layers}, "num_attention_heads": 32, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6, "pad_token_id": 0}}"#
    ))
    .unwrap();
    let device = Device::default();
    let source = RandomWeights::new(0.02);
    let weights = Weights::new(&source, WeightDType::BF16);

    let full = Blip2Config::from_json(
        r#"{"model_type": "instructblip", "text_config": {"model_type": "llama"}}"#,
    )
    .unwrap();
    let encoder = ImageEncoder::from_weights(&full, &weights, &device).unwrap();
    let pixels = Tensor::<4>::random(
        [1, 3, 224, 224],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let ids = vec![(0..10).map(|i| 1000 + i).collect::<Vec<u32>>()];
    let start = Instant::now();
    let vision = encoder.vision().forward(pixels).unwrap();
    let queries = encoder
        .qformer()
        .forward_instructed(vision.last_hidden_state, &ids, &[vec![false; 10]])
        .unwrap();
    let projected = encoder
        .project(queries.slice(burn::tensor::s![.., 0..32, ..]))
        .unwrap();
    let _ = projected.clone().into_data();
    let encoded = start.elapsed();
    assert_eq!(projected.dims(), [1, 32, 4096]);
    drop(encoder);

    let start = Instant::now();
    let lm = LlamaForCausalLM::load(&weights.pp("language_model"), &config, &device).unwrap();
    let built = start.elapsed();

    let (prompt, steps) = (40, 8);
    let embeds = lm
        .embed_tokens(&[(0..prompt as u32).map(|i| 100 + i).collect()])
        .unwrap();
    let start = Instant::now();
    let (mut state, logits) = lm.prefill(embeds, &[vec![true; prompt]], steps).unwrap();
    let _ = logits.clone().into_data();
    let prefill = start.elapsed();
    assert_eq!(logits.dims(), [1, 32001]);
    let start = Instant::now();
    for i in 0..steps {
        let logits = lm.step(&mut state, &[200 + i as u32]).unwrap();
        let _ = logits.into_data();
    }
    let per_token = start.elapsed().as_secs_f64() / steps as f64;
    println!(
        "vicuna-7b shape ({layers} layers, bf16) on {device:?}: image encoded (ViT-g, Q-Former with a 10-token instruction, projection) in {:.2} s; LM built in {:.1} s, prefill of {prompt} positions {:.3} s, decode {per_token:.4} s/token",
        encoded.as_secs_f64(),
        built.as_secs_f64(),
        prefill.as_secs_f64()
    );
}
