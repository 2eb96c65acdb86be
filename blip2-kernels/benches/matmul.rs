//! Compute-bound products (many rows) at ViT-g's encoding shapes (bench-small's and the real
//! model's widths, 257 rows: one image), as GFLOP/s: the packed kernel ([`linear_packed_at`],
//! weight packed once beforehand, not timed) against the `gemm` crate on the weight in place
//! ([`linear_at`] past `MAX_ROWS`), per weight type, and for bf16 the AMX kernel ([`linear_amx`])
//! where the CPU has it. Median of 15 calls after 3 warm-ups
//! (`cargo bench -p blip2-kernels --bench matmul`). `BENCH_TYPES=f32,bf16` keeps only those
//! types; `BENCH_ROWS=257,2056` sets the row counts.

use std::time::Instant;

use blip2_kernels::{
    bf16, f16, linear_amx, linear_at, linear_packed_at, AmxMatrix, Level, PackedMatrix,
};

mod common;
use common::Fill;

fn main() {
    // [out, in]: qkv, the attention output, fc1 and fc2 of ViT-g (hidden 1408, MLP 6144).
    let shapes = [(4224, 1408), (1408, 1408), (6144, 1408), (1408, 6144)];
    let rows: Vec<usize> = std::env::var("BENCH_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![257]);
    let level = Level::detected();
    println!("level {level:?}, {} threads", rayon::current_num_threads());
    for &r in &rows {
        for &(out, d_in) in &shapes {
            if wanted(f32::NAME) {
                bench::<f32>(level, r, out, d_in);
            }
            if wanted(f16::NAME) {
                bench::<f16>(level, r, out, d_in);
            }
            if wanted(bf16::NAME) {
                bench::<bf16>(level, r, out, d_in);
            }
        }
    }
}

fn wanted(name: &str) -> bool {
    std::env::var("BENCH_TYPES").map_or(true, |list| list.split(',').any(|n| n.trim() == name))
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

fn bench<W: Fill>(level: Level, rows: usize, out: usize, d_in: usize) {
    let w: Vec<W> = (0..out * d_in)
        .map(|i| W::from((i % 97) as f32 * 0.01 - 0.48))
        .collect();
    let b: Vec<W> = (0..out).map(|i| W::from((i % 7) as f32 * 0.1)).collect();
    let b32: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
    let x: Vec<f32> = (0..rows * d_in).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut y = vec![0f32; rows * out];
    let gemm = median(|| linear_at(level, &x, &w, Some(&b), d_in, &mut y));
    let packed = PackedMatrix::pack(&w, d_in);
    let mine = median(|| linear_packed_at(level, &x, &packed, Some(&b32), &mut y));
    let gflop = 2.0 * (rows * out * d_in) as f64 / 1e9;
    print!(
        "{}\t[{rows}, {d_in}] x [{out}, {d_in}]ᵀ\tgemm {:.2} ms {:.0} GFLOP/s\tpacked {:.2} ms {:.0} GFLOP/s ({:.2}x)",
        W::NAME,
        gemm * 1e3,
        gflop / gemm,
        mine * 1e3,
        gflop / mine,
        gemm / mine
    );
    if W::NAME == "bf16" && blip2_kernels::amx_available() {
        let wb: Vec<bf16> = w.iter().map(|v| bf16::from_f32(v.to_f32())).collect();
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let tiles = AmxMatrix::pack(&wb, d_in);
        let amx = median(|| linear_amx(&xb, &tiles, Some(&b32), &mut y));
        print!(
            "\tamx {:.2} ms {:.0} GFLOP/s ({:.2}x)",
            amx * 1e3,
            gflop / amx,
            gemm / amx
        );
    }
    println!();
}
