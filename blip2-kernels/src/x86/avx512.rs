//! AVX-512 F: 16 lanes, masked loads for the tail of `in`.

use std::arch::x86_64::*;

use super::dispatch_tile;
use crate::Weight;

/// `yt[o][r] = Σ_k x[r][k] w[o][k]` for `x: [rows, d_in]`, `w: [outs, d_in]`, `yt: [outs, rows]`,
/// in tiles of up to 4 rows × 4 outputs.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
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

/// `sums[r][o] = Σ_k x[r][k] w[o][k]` over `R` rows of `x` and `O` rows of `w`.
///
/// # Safety
/// AVX-512 F; `x.len() >= R * d_in` and `w.len() >= O * d_in`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<W: Weight, const R: usize, const O: usize>(
    x: &[f32],
    w: &[W],
    d_in: usize,
    sums: &mut [[f32; O]; R],
) {
    debug_assert!(x.len() >= R * d_in && w.len() >= O * d_in);
    let (x, w) = (x.as_ptr(), w.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); O]; R];
    let full = d_in / 16 * 16;
    let mut k = 0;
    while k < full {
        let mut wv = [_mm512_setzero_ps(); O];
        for (o, v) in wv.iter_mut().enumerate() {
            // SAFETY: k + 16 <= d_in, so row o's 16 values at k are inside `w`.
            *v = unsafe { W::load16(w.add(o * d_in + k)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above, for row r of `x`.
            let xv = unsafe { _mm512_loadu_ps(x.add(r * d_in + k)) };
            for (a, wv) in acc.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(xv, *wv, *a);
            }
        }
        k += 16;
    }
    if k < d_in {
        let n = d_in - k;
        let mask: __mmask16 = ((1u32 << n) - 1) as u16;
        let mut wv = [_mm512_setzero_ps(); O];
        for (o, v) in wv.iter_mut().enumerate() {
            // SAFETY: the n = d_in - k values left in row o are inside `w`.
            *v = unsafe { W::load16_tail(w.add(o * d_in + k), n) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: the mask covers only the n values left in row r of `x`; masked-off lanes
            // are neither read nor faulted on.
            let xv = unsafe { _mm512_maskz_loadu_ps(mask, x.add(r * d_in + k)) };
            for (a, wv) in acc.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(xv, *wv, *a);
            }
        }
    }
    for (sums, acc) in sums.iter_mut().zip(&acc) {
        for (s, a) in sums.iter_mut().zip(acc) {
            *s = _mm512_reduce_add_ps(*a);
        }
    }
}
