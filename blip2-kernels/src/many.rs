//! Products of many rows (image encoding, the Q-Former, prefill): the `gemm` crate's blocked f32
//! kernels called on the weight in place, as the transposed right-hand operand, with the bias
//! read from the output it is written into. burn's matrix product over the same crate asks for a
//! transposed copy of either the weight or the output and, in f16 and bf16, for both operands in
//! f32 as whole tensors; here 16-bit weights are widened a block of rows at a time into a
//! buffer that stays in cache while the block is multiplied.

use rayon::prelude::*;

use crate::Weight;

/// Output columns (weight rows) widened to f32 at a time for a 16-bit weight: with the widest
/// inputs of BLIP-2's models (6144 for ViT-g's `fc2`, 10240 for OPT-2.7b's) a block of 4–10 MiB.
const BLOCK: usize = 256;

/// Below this many multiply-adds a product stays on the calling thread (the figure burn-flex
/// uses for the same crate).
const PARALLEL_FROM: usize = 192 * 192 * 192;

/// `y = x Wᵀ + b` for `x: [rows, in]`, `w: [out, in]`, `bias: [out]`, `y: [rows, out]`, summed in
/// f32 by `gemm`'s kernels (the instruction set is `gemm`'s own choice at run time), the bias
/// added once to each finished sum. The summation order depends on the shapes and on `gemm`'s
/// cache blocking, not on the number of threads. Shapes are checked by the caller.
pub(crate) fn linear_many<W: Weight>(
    x: &[f32],
    w: &[W],
    bias: Option<&[W]>,
    d_in: usize,
    y: &mut [f32],
) {
    let (rows, out) = (x.len() / d_in, w.len() / d_in);
    match bias {
        Some(b) => y
            .chunks_exact_mut(out)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v = b.to_f32())),
        None => y.fill(0.0),
    }
    if let Some(w) = W::as_f32(w) {
        product(x, w, d_in, 0, out, y, parallel(rows * out * d_in));
        return;
    }
    // One task per block of output columns, each on one thread: the block boundaries, and so
    // the sums, do not depend on the number of threads. (With `gemm` splitting each block
    // instead, a few rows against a 256-column block stay below its parallel threshold.)
    let firsts: Vec<usize> = (0..out).step_by(BLOCK).collect();
    let blocks: Vec<Vec<f32>> = firsts
        .par_iter()
        .map(|&first| {
            let n = BLOCK.min(out - first);
            let mut wide = vec![0f32; n * d_in];
            W::widen(&w[first * d_in..(first + n) * d_in], &mut wide);
            let mut part = vec![0f32; rows * n];
            product(x, &wide, d_in, 0, n, &mut part, gemm::Parallelism::None);
            part
        })
        .collect();
    for (&first, part) in firsts.iter().zip(&blocks) {
        let n = part.len() / rows.max(1);
        for (row, part) in y.chunks_exact_mut(out).zip(part.chunks_exact(n)) {
            row[first..first + n]
                .iter_mut()
                .zip(part)
                .for_each(|(v, p)| *v += p);
        }
    }
}

/// `gemm` on rayon's pool for products of at least [`PARALLEL_FROM`] multiply-adds.
fn parallel(multiply_adds: usize) -> gemm::Parallelism {
    if multiply_adds >= PARALLEL_FROM {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// Up to this many rows `gemm` is asked for `w xᵀ` (`[n, rows]`, then added into `y` by a
/// transposing loop) instead of `x wᵀ` written straight into `y`: measured on BLIP-2's shapes,
/// 2 threads, its kernels run a few rows against a wide weight 1.2–3.8× faster in that
/// orientation (33 × 3072 × 768: 1.0 ms against 3.8 ms, the copy included), while at 257 rows
/// (ViT-g) the copy costs more than it saves.
const TRANSPOSED_UP_TO: usize = 64;

/// `y[:, first..first + n] += x wᵀ` for `w: [n, in]` (f32, row-major) and `y: [rows, out]`.
fn product(
    x: &[f32],
    w: &[f32],
    d_in: usize,
    first: usize,
    out: usize,
    y: &mut [f32],
    parallelism: gemm::Parallelism,
) {
    let (rows, n) = (x.len() / d_in, w.len() / d_in);
    assert!(
        first + n <= out && y.len() == rows * out,
        "block out of bounds"
    );
    if rows == 0 || n == 0 {
        return;
    }
    if rows <= TRANSPOSED_UP_TO {
        let mut yt = vec![0f32; n * rows];
        // SAFETY: `dst` is `yt`, n × rows at row stride `rows`, owned here. `lhs` is `w`
        // (n × d_in, row stride d_in) and `rhs` is `xᵀ` read in place: element (k, r) at
        // `r * d_in + k`, within `x`'s rows × d_in. Without `read_dst`, dst = lhs·rhs.
        unsafe {
            gemm::gemm(
                n,
                rows,
                d_in,
                yt.as_mut_ptr(),
                1,
                rows as isize,
                false,
                w.as_ptr(),
                1,
                d_in as isize,
                x.as_ptr(),
                d_in as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        for (r, row) in y.chunks_exact_mut(out).enumerate() {
            for (j, v) in row[first..first + n].iter_mut().enumerate() {
                *v += yt[j * rows + r];
            }
        }
        return;
    }
    // SAFETY: `dst` is `y` from column `first`: rows × n elements at row stride `out`, all in
    // bounds (checked above) and written by nobody else while this call runs (`y` is borrowed
    // mutably). `lhs` is `x` (rows × d_in, row stride d_in) and `rhs` is `wᵀ` read in place:
    // element (k, j) at `j * d_in + k`, within `w`'s n × d_in. `read_dst` with alpha = beta = 1
    // computes dst + lhs·rhs.
    unsafe {
        gemm::gemm(
            rows,
            n,
            d_in,
            y.as_mut_ptr().add(first),
            1,
            out as isize,
            true,
            x.as_ptr(),
            1,
            d_in as isize,
            w.as_ptr(),
            d_in as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
