//! Matrix-vector throughput of the kernels at BLIP-2's decoding shapes, per level and weight
//! type, as GB/s of weight read (`cargo bench -p blip2-kernels --bench linear`). Each timed call
//! reads another copy of the weight, from a set of copies larger than any cache (≥ 1 GiB in all),
//! so the figures are memory bandwidth, not cache bandwidth; best of 20 calls. The first line is
//! the machine's own reference: a plain sum over 1 GiB on every thread the kernels use.
//!
//! `BENCH_LEVELS=avx2,portable` and `BENCH_TYPES=int8,f32` keep only those levels and weight
//! types (all of them by default).

use std::time::Instant;

use blip2_kernels::{bf16, f16, linear_at, linear_int8_at, Int8Matrix, Level};

mod common;
use common::Fill;

fn main() {
    stream_reference();
    // OPT-2.7b's fc1 and fc2, one attention projection, and bench-small's fc1.
    let shapes = [(10240, 2560), (2560, 10240), (2560, 2560), (3072, 768)];
    let levels = [
        (Level::Portable, "portable"),
        (Level::Avx2, "avx2"),
        (Level::Avx512, "avx512"),
    ];
    for (level, name) in levels {
        if !level.is_available() || !wanted("BENCH_LEVELS", name) {
            continue;
        }
        for &(out, d_in) in &shapes {
            if wanted("BENCH_TYPES", f32::NAME) {
                bench::<f32>(level, out, d_in);
            }
            if wanted("BENCH_TYPES", f16::NAME) {
                bench::<f16>(level, out, d_in);
            }
            if wanted("BENCH_TYPES", bf16::NAME) {
                bench::<bf16>(level, out, d_in);
            }
            if wanted("BENCH_TYPES", "int8") {
                bench_int8(level, out, d_in);
            }
        }
    }
}

/// Whether `name` is in the comma-separated list `$var` (everything is when it is unset).
fn wanted(var: &str, name: &str) -> bool {
    std::env::var(var).map_or(true, |list| list.split(',').any(|n| n.trim() == name))
}

fn bench<W: Fill>(level: Level, out: usize, d_in: usize) {
    let bytes = out * d_in * std::mem::size_of::<W>();
    let copies = (1usize << 30).div_ceil(bytes);
    let weights: Vec<Vec<W>> = (0..copies)
        .map(|c| {
            (0..out * d_in)
                .map(|i| W::from(((i + c) % 97) as f32 * 0.01))
                .collect()
        })
        .collect();
    for rows in [1, 8] {
        let x: Vec<f32> = (0..rows * d_in).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut y = vec![0f32; rows * out];
        let mut best = f64::INFINITY;
        for call in 0..20 + copies {
            let w = &weights[call % copies];
            let t = Instant::now();
            linear_at(level, &x, w, None, d_in, &mut y);
            // The first pass over the copies faults their pages in: not timed.
            if call >= copies {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        report(level, W::NAME, rows, out, d_in, bytes, best);
    }
}

/// As [`bench`], for an int8 weight (its scales included in the bytes read).
fn bench_int8(level: Level, out: usize, d_in: usize) {
    let bytes = out * d_in + 4 * out;
    let copies = (1usize << 30).div_ceil(bytes);
    let weights: Vec<Int8Matrix> = (0..copies)
        .map(|c| {
            let w: Vec<f32> = (0..out * d_in)
                .map(|i| ((i + c) % 97) as f32 * 0.01 - 0.48)
                .collect();
            Int8Matrix::quantize(&w, d_in).expect("finite")
        })
        .collect();
    for rows in [1, 8] {
        let x: Vec<f32> = (0..rows * d_in).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut y = vec![0f32; rows * out];
        let mut best = f64::INFINITY;
        for call in 0..20 + copies {
            let w = &weights[call % copies];
            let t = Instant::now();
            linear_int8_at(level, &x, w, None, &mut y);
            if call >= copies {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        report(level, "int8", rows, out, d_in, bytes, best);
    }
}

fn report(level: Level, name: &str, rows: usize, out: usize, d_in: usize, bytes: usize, best: f64) {
    println!(
        "{level:?}\t{name}\t[{rows}, {d_in}] x [{out}, {d_in}]ᵀ\t{:.3} ms\t{:.1} GB/s\t{:.1} GFLOP/s",
        best * 1e3,
        bytes as f64 / 1e9 / best,
        2.0 * (rows * out * d_in) as f64 / best / 1e9
    );
}

/// The machine's streaming read bandwidth, the reference for the figures below.
fn stream_reference() {
    println!(
        "stream\tsum over 1 GiB, every thread\t{:.1} GB/s",
        blip2_kernels::read_bandwidth_gb_s(10)
    );
}
