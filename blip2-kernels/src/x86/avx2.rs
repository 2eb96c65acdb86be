//! AVX2 + FMA (+ F16C for f16 weights): 8 lanes, the tail of `in` summed in scalar code.

use std::arch::x86_64::*;

use super::dispatch_tile;
use crate::Weight;

/// `yt[o][r] = Σ_k x[r][k] w[o][k]` for `x: [rows, d_in]`, `w: [outs, d_in]`, `yt: [outs, rows]`,
/// in tiles of up to 4 rows × 4 outputs.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn block<W: Weight>(x: &[f32], w: &[W], d_in: usize, rows: usize, yt: &mut [f32]) {
    let outs = yt.len() / rows;
    assert!(x.len() == rows * d_in && w.len() == outs * d_in);
    for o0 in (0..outs).step_by(4) {
        let no = (outs - o0).min(4);
        for r0 in (0..rows).step_by(4) {
            let nr = (rows - r0).min(4);
            let (xt, wt) = (
                &x[r0 * d_in..(r0 + nr) * d_in],
                &w[o0 * d_in..(o0 + no) * d_in],
            );
            // SAFETY: `xt` holds `nr` rows and `wt` `no` rows of `d_in` values, as `tile` reads.
            unsafe { dispatch_tile!(tile, nr, no, xt, wt, d_in, rows, yt, r0, o0) };
        }
    }
}

/// The sum of a vector's 8 lanes.
#[target_feature(enable = "avx2")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// `sums[r][o] = Σ_k x[r][k] w[o][k]` over `R` rows of `x` and `O` rows of `w`.
///
/// # Safety
/// AVX2, FMA and F16C; `x.len() >= R * d_in` and `w.len() >= O * d_in`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile<W: Weight, const R: usize, const O: usize>(
    x: &[f32],
    w: &[W],
    d_in: usize,
    sums: &mut [[f32; O]; R],
) {
    debug_assert!(x.len() >= R * d_in && w.len() >= O * d_in);
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); O]; R];
    let full = d_in / 8 * 8;
    let mut k = 0;
    while k < full {
        let mut wv = [_mm256_setzero_ps(); O];
        for (o, v) in wv.iter_mut().enumerate() {
            // SAFETY: k + 8 <= d_in, so row o's 8 values at k are inside `w`.
            *v = unsafe { W::load8(wp.add(o * d_in + k)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above, for row r of `x`.
            let xv = unsafe { _mm256_loadu_ps(xp.add(r * d_in + k)) };
            for (a, wv) in acc.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(xv, *wv, *a);
            }
        }
        k += 8;
    }
    for (r, (sums, acc)) in sums.iter_mut().zip(&acc).enumerate() {
        for (o, (s, a)) in sums.iter_mut().zip(acc).enumerate() {
            let mut sum = hsum(*a);
            for k in full..d_in {
                sum = x[r * d_in + k].mul_add(w[o * d_in + k].to_f32(), sum);
            }
            *s = sum;
        }
    }
}
