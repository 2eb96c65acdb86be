//! AVX-512 F tile of the packed product: [`ROWS`] rows × [`PANEL`] columns in 24 vector
//! accumulators; per input, two vector loads of the panel and one broadcast per row.

use std::arch::x86_64::*;

use crate::packed::{Start, Tile, PANEL, ROWS};
use crate::Weight;

/// The lane masks of a tile's two column vectors for `cols` (1 to [`PANEL`]) columns.
fn masks(cols: usize) -> (__mmask16, __mmask16) {
    let lanes = |n: usize| -> __mmask16 {
        if n >= 16 {
            u16::MAX
        } else {
            ((1u32 << n) - 1) as u16
        }
    };
    (lanes(cols), lanes(cols.saturating_sub(16)))
}

/// `c[i][j] = start + Σ_k xp[k][i] wp[k][j]` for the tile's rows and columns, summed with fused
/// multiply-adds in order of `k`.
///
/// # Safety
/// AVX-512 F; the pointers and extents as [`Tile`] describes.
#[target_feature(enable = "avx512f")]
pub unsafe fn tile<W: Weight>(t: &Tile<W>) {
    debug_assert!(t.rows <= ROWS && t.cols <= PANEL && t.cols > 0);
    let (m0, m1) = masks(t.cols);
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    match t.start {
        Start::Zero => {}
        Start::Bias(b) => {
            // SAFETY: the bias holds `cols` values; the masks cover only those.
            let v = unsafe {
                [
                    _mm512_maskz_loadu_ps(m0, b),
                    _mm512_maskz_loadu_ps(m1, b.add(16)),
                ]
            };
            acc = [v; ROWS];
        }
        Start::Output => {
            // Every index constant (the loop unrolled, a row past `rows` skipped), so the
            // accumulators stay in registers.
            for (i, a) in acc.iter_mut().enumerate() {
                if i < t.rows {
                    // SAFETY: row i < rows holds `cols` outputs at `c + i * ldc`; the masks
                    // cover only those (a masked-off lane is neither read nor faulted on).
                    unsafe {
                        let c = t.c.add(i * t.ldc);
                        *a = [
                            _mm512_maskz_loadu_ps(m0, c),
                            _mm512_maskz_loadu_ps(m1, c.add(16)),
                        ];
                    }
                }
            }
        }
    }
    let (mut xp, mut wp) = (t.xp, t.wp);
    for _ in 0..t.depth {
        // SAFETY: each step reads one row of the panel (PANEL values) and one of the packed
        // inputs (ROWS values), `depth` steps in all, inside the extents the caller gives.
        unsafe {
            let w0 = W::load16(wp);
            let w1 = W::load16(wp.add(16));
            for (i, a) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*xp.add(i));
                a[0] = _mm512_fmadd_ps(x, w0, a[0]);
                a[1] = _mm512_fmadd_ps(x, w1, a[1]);
            }
            xp = xp.add(ROWS);
            wp = wp.add(PANEL);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        if i < t.rows {
            // SAFETY: as for the loads from the output above.
            unsafe {
                let c = t.c.add(i * t.ldc);
                _mm512_mask_storeu_ps(c, m0, a[0]);
                _mm512_mask_storeu_ps(c.add(16), m1, a[1]);
            }
        }
    }
}
