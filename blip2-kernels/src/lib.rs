//! CPU kernels for linear layers, on plain slices (no burn types): `y = x Wᵀ + b` for a few rows
//! of `x` (one decoding step, a few beams, a small batch) and a weight in PyTorch's `[out, in]`
//! row-major layout, read in place. The weight and bias are f32, f16 or bf16 ([`Weight`]),
//! widened to f32 in registers; the input and output are f32 and every sum is taken in f32.
//! A weight can also be quantized once to int8 with a scale per output row ([`Int8Matrix`],
//! [`linear_int8`]): a quarter of f32's bytes to stream per product.
//!
//! These products are bound by memory: every weight byte is read once per call, so the kernel
//! streams the weight's rows (four at a time) and keeps the input rows in cache. The output rows
//! are split over rayon's global pool (the one burn-flex runs on, so threads are not
//! oversubscribed) in contiguous blocks; each output element is reduced by one thread, in an
//! order that depends only on `in`, so results do not depend on the number of threads.
//!
//! More rows than [`MAX_ROWS`] (image encoding, the Q-Former, a prefill) are bound by compute
//! instead: [`linear`] hands them to the `gemm` crate's cache-blocked kernels, with the weight
//! read in place as the transposed operand (16-bit weights widened a block of rows at a time)
//! and the bias read from the output, split over the same pool.
//!
//! The instruction set is chosen once at run time ([`Level::detected`]): AVX-512, AVX2 with FMA
//! and F16C, or portable Rust. `BLIP2_KERNELS=portable|avx2|avx512` forces a level (the CPU's best is used
//! when it lacks the one asked for), so tests can cover each path on one machine.

#![warn(missing_docs)]

#[cfg(target_arch = "x86_64")]
mod amx;
mod huge;
mod int8;
mod many;
mod packed;
mod portable;
mod weight;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "x86_64")]
pub use amx::{amx_available, linear_amx, AmxInput, AmxMatrix};
pub use half::{bf16, f16};
pub use int8::{linear_int8, linear_int8_at, Int8Matrix, QuantizeError};
pub use packed::{linear_packed, linear_packed_at, PackedMatrix, PANEL};
pub use weight::Weight;

use std::sync::OnceLock;

/// Most input rows the matrix-vector kernels take; [`linear`] multiplies more rows with the
/// `gemm` crate's blocked kernels (cache-blocked, compute-bound), the weight read in place.
pub const MAX_ROWS: usize = 16;

/// This machine's streaming read bandwidth in GB/s, the figure the kernels are bound by: every
/// thread sums its share of a 1 GiB buffer, best of `passes`. For benchmarks (it allocates and
/// reads 1 GiB); nothing in the kernels calls it.
pub fn read_bandwidth_gb_s(passes: usize) -> f64 {
    let data = vec![1.0f32; 1 << 28];
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = data.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let start = std::time::Instant::now();
        let total: f32 = std::thread::scope(|scope| {
            let parts: Vec<_> = data
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        // Sixteen independent sums, so the loop is bound by loads, not by adds.
                        let mut acc = [0f32; 16];
                        for block in part.chunks_exact(16) {
                            for (a, v) in acc.iter_mut().zip(block) {
                                *a += v;
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                })
                .collect();
            parts.into_iter().map(|p| p.join().unwrap_or(0.0)).sum()
        });
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(total);
    }
    (data.len() * 4) as f64 / best / 1e9
}

/// An instruction-set level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust (the compiler may vectorise it).
    Portable,
    /// AVX2, FMA and F16C (x86-64).
    Avx2,
    /// AVX-512 F (x86-64).
    Avx512,
}

impl Level {
    /// The best level this CPU runs.
    pub fn best() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            // AVX-512 as a level includes AVX2 (the int8 kernel is AVX2 code on every x86
            // level); every AVX-512 CPU has it.
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if avx2 {
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

/// `y = x Wᵀ + b` at [`Level::detected`]; see [`linear_at`].
pub fn linear<W: Weight>(x: &[f32], w: &[W], bias: Option<&[W]>, d_in: usize, y: &mut [f32]) {
    linear_at(Level::detected(), x, w, bias, d_in, y)
}

/// `y = x Wᵀ + b` for `x: [rows, in]`, `w: [out, in]` (row-major), `bias: [out]`,
/// `y: [rows, out]`, at `level`. Each output is `Σ_k x[r][k] w[o][k]` summed in f32 in an order
/// that depends only on `in` and `level`, plus the bias, rounded once to f32. Past
/// [`MAX_ROWS`] rows the products are `gemm`'s (whatever `level`; `gemm` picks its own
/// instruction set), summed in an order that depends on the shapes only, the bias added to
/// the sum.
///
/// # Panics
/// If the lengths do not fit these shapes (`d_in` = 0, `w.len()` not a multiple of `d_in`, ...),
/// or if the CPU cannot run `level`.
pub fn linear_at<W: Weight>(
    level: Level,
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    d_in: usize,
    y: &mut [f32],
) {
    assert!(
        d_in > 0 && w.len().is_multiple_of(d_in) && x.len().is_multiple_of(d_in),
        "shapes"
    );
    let (out, rows) = (w.len() / d_in, x.len() / d_in);
    if rows > MAX_ROWS {
        assert_eq!(y.len(), rows * out, "y must be [rows, out]");
        if let Some(b) = bias {
            assert_eq!(b.len(), out, "bias must be [out]");
        }
        many::linear_many(x, w, bias, d_in, y);
        return;
    }
    with_outputs(level, rows, out, bias, y, |yt| {
        products(level, x, w, d_in, rows, yt)
    })
}

/// Panics unless `y` holds `[rows, out]`, the bias (its length given) `[out]`, and the CPU runs
/// `level`; whether there is anything to compute (`rows` and `out` both non-zero).
pub(crate) fn check_outputs(
    level: Level,
    rows: usize,
    out: usize,
    bias: Option<usize>,
    y: usize,
) -> bool {
    assert_eq!(y, rows * out, "y must be [rows, out]");
    if let Some(b) = bias {
        assert_eq!(b, out, "bias must be [out]");
    }
    assert!(
        level.is_available(),
        "{level:?} is not available on this CPU"
    );
    rows > 0 && out > 0
}

/// Checks `y: [rows, out]`, `bias: [out]` and `level`, then has `products` fill the products
/// `Σ_k x[r][k] w[o][k]` in `[out, rows]` order and adds the bias into `y`. One row (a decoding
/// step) is `y`'s own layout, so its products go straight into it, with no scratch buffer.
pub(crate) fn with_outputs<B: Weight>(
    level: Level,
    rows: usize,
    out: usize,
    bias: Option<&[B]>,
    y: &mut [f32],
    products: impl FnOnce(&mut [f32]),
) {
    if !check_outputs(level, rows, out, bias.map(<[B]>::len), y.len()) {
        return;
    }
    if rows == 1 {
        products(y);
        if let Some(b) = bias {
            y.iter_mut().zip(b).for_each(|(v, b)| *v += b.to_f32());
        }
        return;
    }
    // Transposed output, `[out, rows]`: each thread writes one contiguous block of it.
    let mut yt = vec![0f32; out * rows];
    products(&mut yt);
    for r in 0..rows {
        let row = &mut y[r * out..(r + 1) * out];
        for (o, v) in row.iter_mut().enumerate() {
            *v = yt[o * rows + r] + bias.map_or(0.0, |b| b[o].to_f32());
        }
    }
}

/// `yt[o][r] = Σ_k x[r][k] w[o][k]` for every output, in contiguous blocks over rayon's pool.
fn products<W: Weight>(level: Level, x: &[f32], w: &[W], d_in: usize, rows: usize, yt: &mut [f32]) {
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
fn block_at<W: Weight>(level: Level, x: &[f32], w: &[W], d_in: usize, rows: usize, yt: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `with_outputs` checked that the CPU runs `level`.
        Level::Avx512 => unsafe { x86::avx512::block(x, w, d_in, rows, yt) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::avx2::block(x, w, d_in, rows, yt) },
        _ => portable::block(x, w, d_in, rows, yt),
    }
}

/// Helpers the unit tests of every module share.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{Level, Weight};

    /// Deterministic values in [-1, 1).
    pub fn values(n: usize, seed: u64) -> Vec<f32> {
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

    /// `y = x Wᵀ + b` in f64 (`x: [rows, in]`, `w: [out, in]`, `bias: [out]`), summed in order:
    /// the ground truth.
    pub fn reference<W: Weight, B: Weight>(
        x: &[f32],
        w: &[W],
        bias: Option<&[B]>,
        d_in: usize,
    ) -> Vec<f64> {
        let (rows, out) = (x.len() / d_in, w.len() / d_in);
        let mut y = vec![0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let dot: f64 = (0..d_in)
                    .map(|k| f64::from(x[r * d_in + k]) * f64::from(w[o * d_in + k].to_f32()))
                    .sum();
                y[r * out + o] = dot + bias.map_or(0.0, |b| f64::from(b[o].to_f32()));
            }
        }
        y
    }

    /// `f` on a pool of `threads` threads.
    pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool")
            .install(f)
    }

    /// The levels this CPU runs.
    pub fn levels() -> Vec<Level> {
        [Level::Portable, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|l| l.is_available())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{levels, reference, values};

    /// Values of the weight type (rounded from [-1, 1)).
    trait FromF32: Weight {
        fn from(v: f32) -> Self;
    }
    impl FromF32 for f32 {
        fn from(v: f32) -> Self {
            v
        }
    }
    impl FromF32 for f16 {
        fn from(v: f32) -> Self {
            f16::from_f32(v)
        }
    }
    impl FromF32 for bf16 {
        fn from(v: f32) -> Self {
            bf16::from_f32(v)
        }
    }

    fn weights<W: FromF32>(n: usize, seed: u64) -> Vec<W> {
        values(n, seed).into_iter().map(W::from).collect()
    }

    fn check<W: FromF32>(level: Level, rows: usize, out: usize, d_in: usize, with_bias: bool) {
        let x = values(rows * d_in, 1 + rows as u64);
        let w = weights::<W>(out * d_in, 7 + out as u64 * 31 + d_in as u64);
        let b = weights::<W>(out, 3);
        let bias = with_bias.then_some(b.as_slice());
        let mut y = vec![f32::NAN; rows * out];
        linear_at(level, &x, &w, bias, d_in, &mut y);
        let want = reference(&x, &w, bias, d_in);
        for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
            // f32 summation of d_in products of magnitude <= 1 (the weights widened exactly):
            // error well under d_in * 2^-23.
            let bound = 1e-6 * (d_in as f64 + 1.0);
            assert!(
                (f64::from(got) - want).abs() <= bound,
                "{level:?} {} rows {rows} out {out} in {d_in}: y[{i}] = {got}, want {want}",
                std::any::type_name::<W>()
            );
        }
    }

    fn every_tail_shape<W: FromF32>() {
        for level in levels() {
            for d_in in (1..=40).chain([63, 64, 65, 127, 129, 257]) {
                for out in [1, 2, 3, 4, 5, 7, 8, 9, 17] {
                    for rows in [1, 2, 3, 4, 5, 8, 9, 16, 17] {
                        check::<W>(level, rows, out, d_in, (d_in + out) % 2 == 0);
                    }
                }
            }
        }
    }

    #[test]
    fn every_level_matches_the_reference_at_every_tail_shape_f32() {
        every_tail_shape::<f32>();
    }

    #[test]
    fn every_level_matches_the_reference_at_every_tail_shape_f16() {
        every_tail_shape::<f16>();
    }

    #[test]
    fn every_level_matches_the_reference_at_every_tail_shape_bf16() {
        every_tail_shape::<bf16>();
    }

    #[test]
    fn large_layers_split_over_threads_match_too() {
        for level in levels() {
            check::<f32>(level, 1, 1030, 300, true);
            check::<f32>(level, 3, 2049, 96, false);
            check::<bf16>(level, 1, 1030, 2560, true);
            check::<f16>(level, 2, 2049, 33, true);
        }
    }

    /// Past `MAX_ROWS` rows (`gemm`, 16-bit weights widened a block at a time): against the
    /// reference at the first row count past the limit, at tails of `gemm`'s register blocks and
    /// of the widening block (`out` of 1, 255–257 and 300 columns), with and without a bias.
    #[test]
    fn many_rows_match_the_reference() {
        let level = Level::detected();
        for rows in [MAX_ROWS + 1, 33, 70] {
            for (out, d_in) in [(1, 9), (17, 33), (255, 64), (257, 31), (300, 130)] {
                for bias in [false, true] {
                    check::<f32>(level, rows, out, d_in, bias);
                    check::<f16>(level, rows, out, d_in, bias);
                    check::<bf16>(level, rows, out, d_in, bias);
                }
            }
        }
    }

    /// Many rows split over threads by `gemm` (a product large enough to go parallel) give the
    /// same bits on 1, 2 and 3 threads, and infinities and NaN in the weight propagate.
    #[test]
    fn many_rows_do_not_depend_on_the_thread_count() {
        // Both of `gemm`'s orientations (up to 64 rows, and more).
        for (rows, out, d_in) in [(64, 1030, 128), (65, 1030, 128)] {
            assert!(
                rows * out * d_in >= 192 * 192 * 192,
                "large enough to be split"
            );
            let x = values(rows * d_in, 8);
            let mut w = weights::<bf16>(out * d_in, 9);
            w[5] = bf16::INFINITY;
            w[d_in * 7 + 3] = bf16::NAN;
            let w32: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut y = vec![0f32; rows * out];
                let mut y32 = vec![0f32; rows * out];
                pool.install(|| {
                    linear(&x, &w, None, d_in, &mut y);
                    linear(&x, &w32, None, d_in, &mut y32);
                });
                (y, y32)
            };
            let one = run(1);
            assert_eq!(one.0[0], f32::INFINITY * x[5].signum());
            assert!(one.0[7].is_nan() && one.1[7].is_nan());
            let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for threads in [2, 3] {
                let other = run(threads);
                assert_eq!(bits(&one.0), bits(&other.0), "{rows} rows, bf16");
                assert_eq!(bits(&one.1), bits(&other.1), "{rows} rows, f32");
            }
        }
    }

    /// Special values go through the widening unchanged: infinities and NaN propagate, and
    /// subnormal f16 weights are not flushed to zero.
    #[test]
    fn special_weight_values_widen_exactly() {
        let d_in = 19;
        let x = vec![1.0f32; d_in];
        let tiny = f16::from_bits(1); // the smallest subnormal, 2^-24
        for level in levels() {
            let mut y = [0f32; 3];
            let mut w = vec![f16::ZERO; 3 * d_in];
            w[0] = f16::INFINITY;
            w[d_in + 18] = f16::NAN;
            w[2 * d_in + 17] = tiny;
            linear_at(level, &x, &w, None, d_in, &mut y);
            assert_eq!(y[0], f32::INFINITY, "{level:?}");
            assert!(y[1].is_nan(), "{level:?}");
            assert_eq!(y[2], 2f32.powi(-24), "{level:?}");
            let wb: Vec<bf16> = [bf16::NEG_INFINITY, bf16::from_f32(3.0)]
                .into_iter()
                .chain(std::iter::repeat_n(bf16::ZERO, 2 * d_in - 2))
                .collect();
            let mut yb = [0f32; 2];
            linear_at(level, &x, &wb, None, d_in, &mut yb);
            assert_eq!(yb, [f32::NEG_INFINITY, 0.0], "{level:?}");
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (rows, out, d_in) = (2, 4099, 77);
        let x = values(rows * d_in, 5);
        let w = values(out * d_in, 6);
        let wb = weights::<bf16>(out * d_in, 6);
        for level in levels() {
            let run = |threads: usize, half: bool| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut y = vec![0f32; rows * out];
                pool.install(|| {
                    if half {
                        linear_at(level, &x, &wb, None, d_in, &mut y)
                    } else {
                        linear_at(level, &x, &w, None, d_in, &mut y)
                    }
                });
                y
            };
            assert_eq!(run(1, false), run(3, false), "{level:?}");
            assert_eq!(run(1, true), run(2, true), "{level:?} bf16");
        }
    }

    /// An int8 weight quantized from values in [-1, 1), with some rows scaled up or down so
    /// the scales differ.
    fn int8_weight(out: usize, d_in: usize, seed: u64) -> Int8Matrix {
        let mut w = values(out * d_in, seed);
        for (o, row) in w.chunks_mut(d_in).enumerate() {
            let f = [1.0, 3.5, 0.01, 250.0][o % 4];
            row.iter_mut().for_each(|v| *v *= f);
        }
        Int8Matrix::quantize(&w, d_in).unwrap()
    }

    fn check_int8(level: Level, rows: usize, out: usize, d_in: usize, with_bias: bool) {
        let x = values(rows * d_in, 11 + rows as u64);
        let w = int8_weight(out, d_in, 5 + out as u64 * 17 + d_in as u64);
        let b = values(out, 9);
        let bias = with_bias.then_some(b.as_slice());
        let mut y = vec![f32::NAN; rows * out];
        linear_int8_at(level, &x, &w, bias, &mut y);
        // The weight the products must use: each q·scale rounded to f32, as dequantize gives.
        let dq = w.dequantize();
        // Bit for bit the documented order: the products with `dq` summed k = 0, 1, … from
        // zero (fused multiply-adds on x86, separate ones in portable code), then the bias;
        // the same for every row count, so a row's result does not depend on its batch.
        let mut ordered = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let xr = &x[r * d_in..(r + 1) * d_in];
                let acc = xr.iter().zip(&dq[o * d_in..]).fold(0f32, |acc, (&x, &w)| {
                    if level == Level::Portable {
                        acc + x * w
                    } else {
                        x.mul_add(w, acc)
                    }
                });
                ordered[r * out + o] = acc + bias.map_or(0.0, |b| b[o]);
            }
        }
        assert_eq!(
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            ordered.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{level:?} int8 rows {rows} out {out} in {d_in}: not the documented order's bits"
        );
        for r in 0..rows {
            for o in 0..out {
                let wr = &dq[o * d_in..(o + 1) * d_in];
                let xr = &x[r * d_in..(r + 1) * d_in];
                let dot: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(&a, &v)| f64::from(a) * f64::from(v))
                    .sum();
                let size: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(&a, &v)| f64::from(a.abs() * v.abs()))
                    .sum();
                let want = dot + bias.map_or(0.0, |b| f64::from(b[o]));
                let got = f64::from(y[r * out + o]);
                // The f32 sum: d_in roundings of partial sums of size <= `size`, and the bias.
                let bound = 1e-7 * (d_in as f64 + 2.0) * size + 1.2e-7 * want.abs() + 1e-30;
                assert!(
                    (got - want).abs() <= bound,
                    "{level:?} int8 rows {rows} out {out} in {d_in}: y = {got}, want {want}"
                );
            }
        }
    }

    #[test]
    fn every_level_matches_the_reference_at_every_tail_shape_int8() {
        for level in levels() {
            // Panels of 32 outputs; on AVX2 chunks of 128 inputs when several rows share a
            // panel, on AVX-512 blocks of up to 8 rows (every block size 1..=8 below).
            for d_in in (1..=40).chain([63, 64, 65, 127, 128, 129, 257, 300]) {
                for out in [1, 2, 3, 4, 5, 7, 8, 9, 17, 31, 32, 33, 65] {
                    for rows in [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 33] {
                        check_int8(level, rows, out, d_in, (d_in + out) % 2 == 1);
                    }
                }
            }
            check_int8(level, 1, 1030, 2560, true);
            check_int8(level, 3, 2049, 96, false);
        }
    }

    /// The quantization rule on values where it is easy to follow: absmax 127 makes the scale
    /// exactly 1, so q is the value rounded half to even.
    #[test]
    fn int8_quantization_rounds_half_to_even_per_row() {
        let w = [
            127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -127.0, //
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
            -0.25, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let m = Int8Matrix::quantize(&w, 8).unwrap();
        assert_eq!((m.d_out(), m.d_in()), (3, 8));
        assert_eq!(m.values().len(), 24);
        assert_eq!(m.scales(), &[1.0, 1.0, 0.25 / 127.0]);
        assert_eq!(&m.values()[..8], &[127, 2, 4, -2, 0, 0, 2, -127]);
        assert_eq!(&m.values()[8..16], &[0; 8]);
        // 0.125 / (0.25 / 127) = 63.5 in f32: ties to even gives 64.
        assert_eq!(&m.values()[16..18], &[-127, 64]);
        let d = m.dequantize();
        assert_eq!(d[1], 2.0);
        assert_eq!(d[17], 64.0 * (0.25f32 / 127.0));
        // One panel of 32 rows (29 of them padding), values and scales.
        assert_eq!(m.size_bytes(), 32 * 8 + 32 * 4);
    }

    #[test]
    fn int8_quantization_refuses_bad_input() {
        assert_eq!(
            Int8Matrix::quantize(&[1.0; 6], 4).unwrap_err(),
            QuantizeError::Shape { len: 6, d_in: 4 }
        );
        assert!(Int8Matrix::quantize(&[1.0; 6], 0).is_err());
        let mut w = vec![0.5f32; 12];
        w[9] = f32::INFINITY;
        assert_eq!(
            Int8Matrix::quantize(&w, 4).unwrap_err(),
            QuantizeError::NonFinite { row: 2 }
        );
        w[9] = f32::NAN;
        assert!(Int8Matrix::quantize(&w, 4).is_err());
    }

    #[test]
    fn int8_results_do_not_depend_on_the_thread_count() {
        let (out, d_in) = (4099, 77);
        let w = values(out * d_in, 6);
        let x = values(3 * d_in, 5);
        for level in levels() {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let m = Int8Matrix::quantize(&w, d_in).unwrap();
                    let mut y = vec![0f32; 3 * out];
                    linear_int8_at(level, &x, &m, None, &mut y);
                    (m.values(), m.scales().to_vec(), y)
                })
            };
            assert_eq!(run(1), run(3), "{level:?}");
        }
    }

    #[test]
    #[should_panic(expected = "y must be")]
    fn wrong_shapes_panic_with_a_message() {
        let mut y = vec![0f32; 3];
        linear_at(Level::Portable, &[1.0; 4], &[1.0f32; 8], None, 4, &mut y);
    }
}
