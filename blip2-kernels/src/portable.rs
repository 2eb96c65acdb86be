//! The portable kernel: plain Rust, eight partial sums per dot product.

use crate::Weight;

/// `yt[o][r] = Σ_k x[r][k] w[o][k]` for `x: [rows, d_in]`, `w: [outs, d_in]`, `yt: [outs, rows]`.
pub fn block<W: Weight>(x: &[f32], w: &[W], d_in: usize, rows: usize, yt: &mut [f32]) {
    for (o, yt) in yt.chunks_exact_mut(rows).enumerate() {
        let wr = &w[o * d_in..(o + 1) * d_in];
        for (r, y) in yt.iter_mut().enumerate() {
            *y = dot(&x[r * d_in..(r + 1) * d_in], wr);
        }
    }
}

/// The int8 panels' products (see `x86::int8::panels`, whose layout and order this follows):
/// `yt[o][r] = Σ_k x[r][k] (q[o][k] · scale[o])`, summed one `k` after another with separate
/// multiplies and adds, for `yt: [outs, rows]` and `q` the panels holding those outputs.
pub fn int8_panels(x: &[f32], q: &[i8], scale: &[f32], d_in: usize, rows: usize, yt: &mut [f32]) {
    use crate::int8::PANEL;
    for (p, yt) in yt.chunks_mut(PANEL * rows).enumerate() {
        let panel = &q[p * PANEL * d_in..(p + 1) * PANEL * d_in];
        let scale = &scale[p * PANEL..(p + 1) * PANEL];
        for r in 0..rows {
            let x = &x[r * d_in..(r + 1) * d_in];
            let mut acc = [0f32; PANEL];
            for (&x, q) in x.iter().zip(panel.chunks_exact(PANEL)) {
                for ((a, &q), &s) in acc.iter_mut().zip(q).zip(scale) {
                    *a += x * (f32::from(q) * s);
                }
            }
            for (j, y) in yt.chunks_exact_mut(rows).enumerate() {
                y[r] = acc[j];
            }
        }
    }
}

/// The dot product of equal-length slices (`b` widened to f32), in a fixed order.
fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            // Not `mul_add`: without FMA in the target that is a libm call.
            lanes[i] += ca[i] * cb[i].to_f32();
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (p, q) in a_rest.iter().zip(b_rest) {
        sum += p * q.to_f32();
    }
    sum
}
