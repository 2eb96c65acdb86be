//! CPU kernels for linear layers, on plain slices (no burn types): `y = x Wᵀ + b` for a few rows
//! of `x` (one decoding step, a few beams, a small batch) and a weight in PyTorch's `[out, in]`
//! row-major layout, read in place.
//!
//! These products are bound by memory: every weight byte is read once per call, so the kernel
//! streams the weight's rows (four at a time) and keeps the input rows in cache. The output rows
//! are split over rayon's global pool (the one burn-flex runs on, so threads are not
//! oversubscribed) in contiguous blocks; each output element is reduced by one thread, in an
//! order that depends only on `in`, so results do not depend on the number of threads.
//!
//! The instruction set is chosen once at run time ([`Level::detected`]): AVX-512, AVX2 with FMA,
//! or portable Rust. `BLIP2_KERNELS=portable|avx2|avx512` forces a level (the CPU's best is used
//! when it lacks the one asked for), so tests can cover each path on one machine.

#![warn(missing_docs)]

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

/// Most input rows the kernels are meant for; beyond it a blocked GEMM (burn's) is faster.
pub const MAX_ROWS: usize = 16;

/// An instruction-set level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust (the compiler may vectorise it).
    Portable,
    /// AVX2 and FMA (x86-64).
    Avx2,
    /// AVX-512 F (x86-64).
    Avx512,
}

impl Level {
    /// The best level this CPU runs.
    pub fn best() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx2;
            }
        }
        Level::Portable
    }

    /// The level in use: [`Level::best`], or the one `BLIP2_KERNELS` asks for if the CPU runs
    /// it. Decided once per process.
    pub fn detected() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let best = Level::best();
            match std::env::var("BLIP2_KERNELS").ok().as_deref() {
                Some("portable") => Level::Portable,
                Some("avx2") => best.min(Level::Avx2),
                Some("avx512") => best.min(Level::Avx512),
                _ => best,
            }
        })
    }

    /// Whether this CPU can run this level.
    pub fn is_available(self) -> bool {
        self <= Level::best()
    }
}

/// `y = x Wᵀ + b` at [`Level::detected`]; see [`linear_f32_at`].
pub fn linear_f32(x: &[f32], w: &[f32], bias: Option<&[f32]>, d_in: usize, y: &mut [f32]) {
    linear_f32_at(Level::detected(), x, w, bias, d_in, y)
}

/// `y = x Wᵀ + b` for `x: [rows, in]`, `w: [out, in]` (row-major), `bias: [out]`,
/// `y: [rows, out]`, at `level`.
///
/// # Panics
/// If the lengths do not fit these shapes (`d_in` = 0, `w.len()` not a multiple of `d_in`, ...),
/// or if the CPU cannot run `level`.
pub fn linear_f32_at(
    level: Level,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    d_in: usize,
    y: &mut [f32],
) {
    assert!(
        d_in > 0 && w.len().is_multiple_of(d_in) && x.len().is_multiple_of(d_in),
        "shapes"
    );
    let out = w.len() / d_in;
    let rows = x.len() / d_in;
    assert_eq!(y.len(), rows * out, "y must be [rows, out]");
    if let Some(b) = bias {
        assert_eq!(b.len(), out, "bias must be [out]");
    }
    assert!(
        level.is_available(),
        "{level:?} is not available on this CPU"
    );
    if rows == 0 || out == 0 {
        return;
    }
    // One row (a decoding step): `[out, 1]` is `y`'s own layout, so the products go straight
    // into it, with no scratch buffer and no transposition.
    if rows == 1 {
        products(level, x, w, d_in, rows, y);
        if let Some(b) = bias {
            y.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
        return;
    }
    // Transposed output, `[out, rows]`: each thread writes one contiguous block of it.
    let mut yt = vec![0f32; out * rows];
    products(level, x, w, d_in, rows, &mut yt);
    for r in 0..rows {
        let row = &mut y[r * out..(r + 1) * out];
        for (o, v) in row.iter_mut().enumerate() {
            *v = yt[o * rows + r] + bias.map_or(0.0, |b| b[o]);
        }
    }
}

/// `yt[o][r] = Σ_k x[r][k] w[o][k]` for every output, in contiguous blocks over rayon's pool.
fn products(level: Level, x: &[f32], w: &[f32], d_in: usize, rows: usize, yt: &mut [f32]) {
    let out = yt.len() / rows;
    let threads = rayon::current_num_threads().max(1);
    // Blocks of a multiple of 4 outputs (the micro-kernel's width), about one per thread; tiny
    // layers stay on one thread.
    let per = out.div_ceil(threads).next_multiple_of(4);
    let per = if out * d_in < 1 << 16 { out } else { per };
    use rayon::prelude::*;
    yt.par_chunks_mut(per * rows)
        .enumerate()
        .for_each(|(block, yt)| {
            let first = block * per;
            let n = yt.len() / rows;
            let w = &w[first * d_in..(first + n) * d_in];
            block_at(level, x, w, d_in, rows, yt);
        });
}

/// One block of outputs: `yt[o][r] = Σ_k x[r][k] w[o][k]`.
fn block_at(level: Level, x: &[f32], w: &[f32], d_in: usize, rows: usize, yt: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `linear_f32_at` checked that the CPU runs `level`.
        Level::Avx512 => unsafe { x86::avx512::block(x, w, d_in, rows, yt) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::avx2::block(x, w, d_in, rows, yt) },
        _ => portable::block(x, w, d_in, rows, yt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product in f64, summed in order: the ground truth.
    fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, d_in: usize) -> Vec<f64> {
        let (rows, out) = (x.len() / d_in, w.len() / d_in);
        let mut y = vec![0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let dot: f64 = (0..d_in)
                    .map(|k| f64::from(x[r * d_in + k]) * f64::from(w[o * d_in + k]))
                    .sum();
                y[r * out + o] = dot + bias.map_or(0.0, |b| f64::from(b[o]));
            }
        }
        y
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn levels() -> Vec<Level> {
        [Level::Portable, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|l| l.is_available())
            .collect()
    }

    fn check(level: Level, rows: usize, out: usize, d_in: usize, with_bias: bool) {
        let x = values(rows * d_in, 1 + rows as u64);
        let w = values(out * d_in, 7 + out as u64 * 31 + d_in as u64);
        let b = values(out, 3);
        let bias = with_bias.then_some(b.as_slice());
        let mut y = vec![f32::NAN; rows * out];
        linear_f32_at(level, &x, &w, bias, d_in, &mut y);
        let want = reference(&x, &w, bias, d_in);
        for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
            // f32 summation of d_in products of magnitude <= 1: error well under d_in * 2^-23.
            let bound = 1e-6 * (d_in as f64 + 1.0);
            assert!(
                (f64::from(got) - want).abs() <= bound,
                "{level:?} rows {rows} out {out} in {d_in}: y[{i}] = {got}, want {want}"
            );
        }
    }

    #[test]
    fn every_level_matches_the_reference_at_every_tail_shape() {
        for level in levels() {
            for d_in in (1..=40).chain([63, 64, 65, 127, 129, 257]) {
                for out in [1, 2, 3, 4, 5, 7, 8, 9, 17] {
                    for rows in [1, 2, 3, 4, 5, 8, 9, 16] {
                        check(level, rows, out, d_in, (d_in + out) % 2 == 0);
                    }
                }
            }
        }
    }

    #[test]
    fn large_layers_split_over_threads_match_too() {
        for level in levels() {
            check(level, 1, 1030, 300, true);
            check(level, 3, 2049, 96, false);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (rows, out, d_in) = (2, 4099, 77);
        let x = values(rows * d_in, 5);
        let w = values(out * d_in, 6);
        for level in levels() {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut y = vec![0f32; rows * out];
                pool.install(|| linear_f32_at(level, &x, &w, None, d_in, &mut y));
                y
            };
            assert_eq!(run(1), run(3), "{level:?}");
        }
    }

    #[test]
    #[should_panic(expected = "y must be")]
    fn wrong_shapes_panic_with_a_message() {
        let mut y = vec![0f32; 3];
        linear_f32_at(Level::Portable, &[1.0; 4], &[1.0; 8], None, 4, &mut y);
    }
}
