//! The int8 products on AVX2 and FMA, over [`Int8Matrix`](crate::Int8Matrix)'s panels of 32
//! outputs interleaved by input index: each input value is broadcast against the 32 weights of
//! its index, dequantized in registers (`vpmovsxbd`, `vcvtdq2ps`, times the row scales), and
//! added into four vectors of sums. A panel is one forward stream of `32 · d_in` bytes.

use std::arch::x86_64::*;

use crate::int8::PANEL;

/// Vectors of 8 lanes per panel row.
const V: usize = PANEL / 8;

/// Input indices per chunk when several rows share a panel: the chunk's weights are
/// dequantized once into `KC × 32` f32 (16 KiB, in L1) and every row reads them from there.
const KC: usize = 128;

/// How far ahead of the weights in use the next ones are asked for, in bytes.
const PREFETCH: usize = 4096;

/// `yt[o][r] = Σ_k x[r][k] (q[o][k] · scale[o])` for `x: [rows, d_in]` and `yt: [outs, rows]`,
/// where `q` and `scale` are the whole panels holding those `outs` outputs. Every sum is taken
/// with fused multiply-adds, `k = 0, 1, …` in order, whatever `rows` is.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn panels(x: &[f32], q: &[i8], scale: &[f32], d_in: usize, rows: usize, yt: &mut [f32]) {
    let outs = yt.len() / rows;
    let np = outs.div_ceil(PANEL);
    assert!(x.len() == rows * d_in && q.len() == np * PANEL * d_in && scale.len() == np * PANEL);
    let mut one = [[_mm256_setzero_ps(); V]];
    let mut several = Vec::new();
    let sums: &mut [[__m256; V]] = if rows == 1 {
        &mut one
    } else {
        several.resize(rows, [_mm256_setzero_ps(); V]);
        &mut several
    };
    let panels = q.chunks_exact(PANEL * d_in).zip(scale.chunks_exact(PANEL));
    for (p, (panel, scale)) in panels.enumerate() {
        let mut s = [_mm256_setzero_ps(); V];
        for (s, scale) in s.iter_mut().zip(scale.chunks_exact(8)) {
            // SAFETY: the chunk holds 8 values.
            *s = unsafe { _mm256_loadu_ps(scale.as_ptr()) };
        }
        if rows == 1 {
            sums[0] = row(x, panel, &s);
        } else {
            several_rows(x, panel, &s, d_in, sums);
        }
        let n = (outs - p * PANEL).min(PANEL);
        for (r, acc) in sums.iter().enumerate() {
            let mut lanes = [0f32; PANEL];
            for (lanes, a) in lanes.chunks_exact_mut(8).zip(acc) {
                // SAFETY: the chunk has room for 8 values.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            }
            for (j, &v) in lanes[..n].iter().enumerate() {
                yt[(p * PANEL + j) * rows + r] = v;
            }
        }
    }
}

/// One panel row's 32 weights, `q[j] · scale[j]` in f32.
#[target_feature(enable = "avx2")]
#[inline]
fn dequantize(q: &[i8], s: &[__m256; V]) -> [__m256; V] {
    assert_eq!(q.len(), PANEL);
    let mut w = [_mm256_setzero_ps(); V];
    for ((w, q), s) in w.iter_mut().zip(q.chunks_exact(8)).zip(s) {
        // SAFETY: `_mm_loadl_epi64` reads the chunk's 8 bytes and no more; sign-extended to 32
        // bits and converted (exactly: |q| <= 127), then multiplied by the scale (rounded once).
        let v = unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.as_ptr().cast())) };
        *w = _mm256_mul_ps(_mm256_cvtepi32_ps(v), *s);
    }
    w
}

/// One row of `x` (`d_in` values) against one panel: the 32 sums.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn row(x: &[f32], panel: &[i8], s: &[__m256; V]) -> [__m256; V] {
    let mut acc = [_mm256_setzero_ps(); V];
    let step = |acc: &mut [__m256; V], xk: f32, q: &[i8]| {
        let xb = _mm256_set1_ps(xk);
        let w = dequantize(q, s);
        for (a, w) in acc.iter_mut().zip(&w) {
            *a = _mm256_fmadd_ps(xb, *w, *a);
        }
    };
    // Two input indices per cache line of weights, and one prefetch per line.
    let lines = panel.chunks_exact(2 * PANEL);
    let tail = lines.remainder();
    let mut xs = x.chunks_exact(2);
    for (x, line) in xs.by_ref().zip(lines) {
        // A hint only: it never faults, and `wrapping_add` keeps the address computation
        // defined past the end of the panel.
        _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().wrapping_add(PREFETCH));
        step(&mut acc, x[0], &line[..PANEL]);
        step(&mut acc, x[1], &line[PANEL..]);
    }
    if let [xk] = xs.remainder() {
        step(&mut acc, *xk, tail);
    }
    acc
}

/// Every row of `x` (`[rows, d_in]`, `rows >= 2`) against one panel, into `sums` (one per row):
/// a chunk of the panel at a time is dequantized once, then read by the rows two at a time.
#[target_feature(enable = "avx2,fma")]
fn several_rows(x: &[f32], panel: &[i8], s: &[__m256; V], d_in: usize, sums: &mut [[__m256; V]]) {
    sums.fill([_mm256_setzero_ps(); V]);
    let mut buf = [[_mm256_setzero_ps(); V]; KC];
    for k0 in (0..d_in).step_by(KC) {
        let kc = (d_in - k0).min(KC);
        for (w, q) in buf.iter_mut().zip(panel[k0 * PANEL..].chunks_exact(PANEL)) {
            *w = dequantize(q, s);
        }
        let w = &buf[..kc];
        let x = |r: usize| &x[r * d_in + k0..r * d_in + k0 + kc];
        let rows = sums.len();
        let mut pairs = sums.chunks_exact_mut(2);
        for (pair, sums) in pairs.by_ref().enumerate() {
            let (a, b) = sums.split_at_mut(1);
            two_rows(x(2 * pair), x(2 * pair + 1), w, &mut a[0], &mut b[0]);
        }
        if let [last] = pairs.into_remainder() {
            *last = row_from(x(rows - 1), w, *last);
        }
    }
}

/// Two rows' `kc` inputs against a chunk of dequantized weights, added into their sums.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn two_rows(x0: &[f32], x1: &[f32], w: &[[__m256; V]], a0: &mut [__m256; V], a1: &mut [__m256; V]) {
    let (mut s0, mut s1) = (*a0, *a1);
    for ((&x0, &x1), w) in x0.iter().zip(x1).zip(w) {
        let (b0, b1) = (_mm256_set1_ps(x0), _mm256_set1_ps(x1));
        for i in 0..V {
            s0[i] = _mm256_fmadd_ps(b0, w[i], s0[i]);
            s1[i] = _mm256_fmadd_ps(b1, w[i], s1[i]);
        }
    }
    (*a0, *a1) = (s0, s1);
}

/// One row's `kc` inputs against a chunk of dequantized weights, added into `acc`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn row_from(x: &[f32], w: &[[__m256; V]], mut acc: [__m256; V]) -> [__m256; V] {
    for (&xk, w) in x.iter().zip(w) {
        let xb = _mm256_set1_ps(xk);
        for (a, w) in acc.iter_mut().zip(w) {
            *a = _mm256_fmadd_ps(xb, *w, *a);
        }
    }
    acc
}

/// Rows per block of the AVX-512 kernel: the sums of 8 rows × 32 outputs are 16 registers, and
/// the block's rows share each dequantized panel row while it is still in registers.
const ROWS_512: usize = 8;

/// [`panels`] on AVX-512 F: each panel row of 32 weights is dequantized once into two 16-lane
/// registers and used by up to 8 rows at once, with no buffer in between. The sums are the same
/// fused multiply-adds in the same order (`k = 0, 1, …` per output), so the results are those of
/// [`panels`] bit for bit.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
pub unsafe fn panels_avx512(
    x: &[f32],
    q: &[i8],
    scale: &[f32],
    d_in: usize,
    rows: usize,
    yt: &mut [f32],
) {
    let outs = yt.len() / rows;
    let np = outs.div_ceil(PANEL);
    assert!(x.len() == rows * d_in && q.len() == np * PANEL * d_in && scale.len() == np * PANEL);
    let panels = q.chunks_exact(PANEL * d_in).zip(scale.chunks_exact(PANEL));
    for (p, (panel, scale)) in panels.enumerate() {
        // SAFETY: the panel's scales are 32 values: two loads of 16.
        let s = unsafe {
            [
                _mm512_loadu_ps(scale.as_ptr()),
                _mm512_loadu_ps(scale.as_ptr().add(16)),
            ]
        };
        let n = (outs - p * PANEL).min(PANEL);
        for r0 in (0..rows).step_by(ROWS_512) {
            let nr = (rows - r0).min(ROWS_512);
            let x = &x[r0 * d_in..(r0 + nr) * d_in];
            let mut sums = [[_mm512_setzero_ps(); 2]; ROWS_512];
            let sums_of = &mut sums[..nr];
            match nr {
                1 => block_512::<1>(x, panel, &s, sums_of),
                2 => block_512::<2>(x, panel, &s, sums_of),
                3 => block_512::<3>(x, panel, &s, sums_of),
                4 => block_512::<4>(x, panel, &s, sums_of),
                5 => block_512::<5>(x, panel, &s, sums_of),
                6 => block_512::<6>(x, panel, &s, sums_of),
                7 => block_512::<7>(x, panel, &s, sums_of),
                _ => block_512::<ROWS_512>(x, panel, &s, sums_of),
            }
            for (r, acc) in sums[..nr].iter().enumerate() {
                let mut lanes = [0f32; PANEL];
                for (lanes, a) in lanes.chunks_exact_mut(16).zip(acc) {
                    // SAFETY: the chunk has room for 16 values.
                    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *a) };
                }
                for (j, &v) in lanes[..n].iter().enumerate() {
                    yt[(p * PANEL + j) * rows + r0 + r] = v;
                }
            }
        }
    }
}

/// `R` rows of `x` (`[R, d_in]`) against one panel (`[d_in][32]`), the 32 sums of each row into
/// `sums` (`R` entries).
#[target_feature(enable = "avx512f")]
#[inline]
fn block_512<const R: usize>(x: &[f32], panel: &[i8], s: &[__m512; 2], sums: &mut [[__m512; 2]]) {
    let d_in = panel.len() / PANEL;
    assert!(x.len() == R * d_in && sums.len() == R);
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[r * d_in..(r + 1) * d_in]);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for (k, q) in panel.chunks_exact(PANEL).enumerate() {
        if k % 2 == 0 {
            // A hint only, once per 64-byte line: it never faults, and `wrapping_add` keeps
            // the address computation defined past the end of the panel.
            _mm_prefetch::<_MM_HINT_T0>(q.as_ptr().wrapping_add(PREFETCH));
        }
        let mut w = [_mm512_setzero_ps(); 2];
        for ((w, q), s) in w.iter_mut().zip(q.chunks_exact(16)).zip(s) {
            // SAFETY: `_mm_loadu_si128` reads the chunk's 16 bytes and no more; sign-extended
            // to 32 bits and converted (exactly: |q| <= 127), then multiplied by the scale
            // (rounded once, as in `dequantize`).
            let v = unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(q.as_ptr().cast())) };
            *w = _mm512_mul_ps(_mm512_cvtepi32_ps(v), *s);
        }
        for (acc, xr) in acc.iter_mut().zip(&xs) {
            let xb = _mm512_set1_ps(xr[k]);
            acc[0] = _mm512_fmadd_ps(xb, w[0], acc[0]);
            acc[1] = _mm512_fmadd_ps(xb, w[1], acc[1]);
        }
    }
    sums.copy_from_slice(&acc);
}
