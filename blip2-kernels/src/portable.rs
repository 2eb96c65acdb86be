//! The portable kernel: plain Rust, eight partial sums per dot product.

use crate::Weight;

/// `yt[o][r] = Σ_k x[r][k] w[o][k]` for `x: [rows, d_in]`, `w: [outs, d_in]`, `yt: [outs, rows]`;
/// with `scale` (`[outs]`), each weight first multiplied by its row's scale (rounded to f32).
pub fn block<W: Weight>(
    x: &[f32],
    w: &[W],
    scale: Option<&[f32]>,
    d_in: usize,
    rows: usize,
    yt: &mut [f32],
) {
    for (o, yt) in yt.chunks_exact_mut(rows).enumerate() {
        let wr = &w[o * d_in..(o + 1) * d_in];
        let s = scale.map_or(1.0, |s| s[o]);
        for (r, y) in yt.iter_mut().enumerate() {
            *y = match scale {
                Some(_) => dot(&x[r * d_in..(r + 1) * d_in], wr, |v| v.to_f32() * s),
                None => dot(&x[r * d_in..(r + 1) * d_in], wr, W::to_f32),
            };
        }
    }
}

/// The dot product of equal-length slices, `b`'s values read through `value`, in a fixed order.
fn dot<W: Weight>(a: &[f32], b: &[W], value: impl Fn(W) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            // Not `mul_add`: without FMA in the target that is a libm call.
            lanes[i] += ca[i] * value(cb[i]);
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (p, q) in a_rest.iter().zip(b_rest) {
        sum += p * value(*q);
    }
    sum
}
