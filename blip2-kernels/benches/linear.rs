//! Matrix-vector throughput of the kernels at BLIP-2's decoding shapes, per level, as GB/s of
//! weight read (`cargo bench -p blip2-kernels --bench linear`). Each timed call reads another
//! copy of the weight, from a set of copies larger than any cache (≥ 1 GiB in all), so the
//! figures are memory bandwidth, not cache bandwidth; best of 20 calls.

use std::time::Instant;

use blip2_kernels::{linear_f32_at, Level};

fn main() {
    // OPT-2.7b's fc1 and fc2, one attention projection, and bench-small's fc1.
    let shapes = [(10240, 2560), (2560, 10240), (2560, 2560), (3072, 768)];
    for level in [Level::Portable, Level::Avx2, Level::Avx512] {
        if !level.is_available() {
            continue;
        }
        for &(out, d_in) in &shapes {
            for rows in [1, 8] {
                let copies = (1usize << 30).div_ceil(out * d_in * 4);
                let weights: Vec<Vec<f32>> = (0..copies)
                    .map(|c| {
                        (0..out * d_in)
                            .map(|i| ((i + c) % 97) as f32 * 0.01)
                            .collect()
                    })
                    .collect();
                let x: Vec<f32> = (0..rows * d_in).map(|i| (i % 13) as f32 * 0.1).collect();
                let mut y = vec![0f32; rows * out];
                let mut best = f64::INFINITY;
                for call in 0..20 + copies {
                    let w = &weights[call % copies];
                    let t = Instant::now();
                    linear_f32_at(level, &x, w, None, d_in, &mut y);
                    // The first pass over the copies faults their pages in: not timed.
                    if call >= copies {
                        best = best.min(t.elapsed().as_secs_f64());
                    }
                }
                let gb = (out * d_in * 4) as f64 / 1e9;
                println!(
                    "{level:?}\t[{rows}, {d_in}] x [{out}, {d_in}]ᵀ\t{:.3} ms\t{:.1} GB/s\t{:.1} GFLOP/s",
                    best * 1e3,
                    gb / best,
                    2.0 * (rows * out * d_in) as f64 / best / 1e9
                );
            }
        }
    }
}
