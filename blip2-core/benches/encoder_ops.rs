//! Time of each operation of one EVA-CLIP ViT-g encoder layer (`[1, 257, 1408]`, 16 heads,
//! MLP 6144) on burn-flex, in f32 and bf16: where an image encoding spends its time besides
//! the matrix products. Random weights; the layer is built from the same pieces as
//! `blip2_vision::Blip2EncoderLayer` (packed `Dense`, `Norm` in f32, exact GELU, burn's
//! attention).
//!
//! `cargo bench -p blip2-core --features flex --bench encoder_ops` (`BENCH_DTYPES=bf16` for one
//! dtype; `BLIP2_KERNELS` as everywhere). Prints one JSON object per dtype: milliseconds per
//! operation (median of 15 after 3 warm-ups) and their sum.

use std::time::Instant;

use blip2_core::config::Activation;
use blip2_core::nn::{self, Dense};
use burn::module::Param;
use burn::nn::LayerNormConfig;
use burn::tensor::{DType, Device, Distribution, Tensor};

const SEQ: usize = 257;
const HIDDEN: usize = 1408;
const HEADS: usize = 16;
const MLP: usize = 6144;

fn main() {
    let device = Device::default();
    for (name, dtype) in [("f32", DType::F32), ("bf16", DType::BF16)] {
        if std::env::var("BENCH_DTYPES").is_ok_and(|l| !l.split(',').any(|n| n.trim() == name)) {
            continue;
        }
        layer(name, dtype, &device);
    }
}

/// A random `[out, in]` layer with bias, packed as the vision encoder packs its layers.
fn dense(d_in: usize, out: usize, dtype: DType, device: &Device) -> Dense {
    let scale = (d_in as f64).powf(-0.5);
    let w = Tensor::<2>::random([out, d_in], Distribution::Uniform(-scale, scale), device);
    let b = Tensor::<1>::random([out], Distribution::Uniform(-0.1, 0.1), device);
    Dense::new(w.cast(dtype), Some(b.cast(dtype))).packed()
}

fn layer(name: &str, dtype: DType, device: &Device) {
    let qkv = dense(HIDDEN, 3 * HIDDEN, dtype, device);
    let proj = dense(HIDDEN, HIDDEN, dtype, device);
    let fc1 = dense(HIDDEN, MLP, dtype, device);
    let fc2 = dense(MLP, HIDDEN, dtype, device);
    let mut norm = LayerNormConfig::new(HIDDEN).with_epsilon(1e-6).init(device);
    norm.gamma = Param::from_tensor(Tensor::random([HIDDEN], Distribution::Default, device));
    let norm = nn::Norm::from(norm);

    let x =
        Tensor::<3>::random([1, SEQ, HIDDEN], Distribution::Normal(0.0, 1.0), device).cast(dtype);
    let head_dim = HIDDEN / HEADS;
    let q4 = || {
        Tensor::<4>::random(
            [1, HEADS, SEQ, head_dim],
            Distribution::Normal(0.0, 1.0),
            device,
        )
        .cast(dtype)
    };
    let (q, k, v) = (q4(), q4(), q4());
    let mid =
        Tensor::<3>::random([1, SEQ, MLP], Distribution::Normal(0.0, 1.0), device).cast(dtype);
    let wide = qkv.forward(x.clone());

    let ops: Vec<(&str, f64)> = vec![
        ("layer_norm", median(|| drop(norm.forward(x.clone())))),
        ("qkv", median(|| drop(qkv.forward(x.clone())))),
        (
            "split_heads",
            median(|| {
                let t = wide
                    .clone()
                    .reshape([1, SEQ, 3, HEADS, head_dim])
                    .permute([2, 0, 3, 1, 4]);
                for i in 0..3 {
                    // What the attention reads: each part made contiguous once.
                    let p = t.clone().slice(i..i + 1).reshape([1, HEADS, SEQ, head_dim]);
                    drop(p.add_scalar(0.0));
                }
            }),
        ),
        (
            "attention",
            median(|| drop(nn::scaled_attention(q.clone(), k.clone(), v.clone(), None))),
        ),
        (
            "merge_heads",
            median(|| drop(nn::merge_heads(q.clone()).add_scalar(0.0))),
        ),
        ("projection", median(|| drop(proj.forward(x.clone())))),
        ("residual_add", median(|| drop(x.clone() + x.clone()))),
        ("fc1", median(|| drop(fc1.forward(x.clone())))),
        (
            "gelu",
            median(|| drop(nn::activate(Activation::Gelu, mid.clone()))),
        ),
        ("fc2", median(|| drop(fc2.forward(mid.clone())))),
    ];
    // Per layer: two norms and two residual adds.
    let total: f64 = ops
        .iter()
        .map(|(op, t)| {
            if matches!(*op, "layer_norm" | "residual_add") {
                2.0 * t
            } else {
                *t
            }
        })
        .sum();
    let fields: Vec<String> = ops
        .iter()
        .map(|(op, t)| format!("\"{op}_ms\": {:.3}", t * 1e3))
        .collect();
    println!(
        "{{\"dtype\": \"{name}\", {}, \"layer_total_ms\": {:.3}}}",
        fields.join(", "),
        total * 1e3
    );
}

/// Median seconds of `f` over 15 calls, after 3 untimed ones.
fn median(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..15)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}
