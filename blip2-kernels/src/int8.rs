//! Weight-only int8: a weight quantized once (per output row, symmetric absmax scale) and the
//! linear layer over it, with f32 inputs, sums and outputs.

use crate::Level;

/// Why a weight could not be quantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantizeError {
    /// The weight's length is not a multiple of its input width (or the width is 0).
    Shape {
        /// The weight's length.
        len: usize,
        /// The input width asked for.
        d_in: usize,
    },
    /// A row holds an infinity or a NaN, which no scale represents.
    NonFinite {
        /// The row (output index).
        row: usize,
    },
}

impl std::fmt::Display for QuantizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantizeError::Shape { len, d_in } => {
                write!(f, "a weight of {len} values is not [out, {d_in}]")
            }
            QuantizeError::NonFinite { row } => {
                write!(
                    f,
                    "row {row} of the weight is not finite; it cannot be quantized"
                )
            }
        }
    }
}

impl std::error::Error for QuantizeError {}

/// A weight `[out, in]` (PyTorch's layout) in int8 with one f32 scale per output row:
/// `W[o][k] ≈ q[o][k] · scale[o]`.
///
/// The rule (the same as `tools/parity`'s, so transformers can compute goldens from the
/// dequantized weight): `scale[o] = max_k |W[o][k]| / 127` in f32, `q[o][k] = W[o][k] / scale[o]`
/// in f32, rounded to the nearest integer with ties to even and clamped to ±127; a row of zeros
/// gets scale 1 (and q 0).
#[derive(Clone)]
pub struct Int8Matrix {
    q: Vec<i8>,
    scale: Vec<f32>,
    d_in: usize,
}

impl std::fmt::Debug for Int8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Int8Matrix")
            .field("d_out", &self.d_out())
            .field("d_in", &self.d_in)
            .finish_non_exhaustive()
    }
}

impl Int8Matrix {
    /// Quantizes `w: [out, d_in]` (row-major), rows in parallel on rayon's pool (the result does
    /// not depend on the thread count).
    pub fn quantize(w: &[f32], d_in: usize) -> Result<Self, QuantizeError> {
        if d_in == 0 || !w.len().is_multiple_of(d_in) {
            return Err(QuantizeError::Shape { len: w.len(), d_in });
        }
        let out = w.len() / d_in;
        let mut q = crate::huge::zeroed_i8(w.len());
        let mut scale = vec![0f32; out];
        use rayon::prelude::*;
        q.par_chunks_mut(d_in)
            .zip(scale.par_iter_mut())
            .zip(w.par_chunks(d_in))
            .enumerate()
            .try_for_each(|(row, ((q, s), w))| {
                *s = quantize_row(w, q).ok_or(QuantizeError::NonFinite { row })?;
                Ok(())
            })?;
        Ok(Int8Matrix { q, scale, d_in })
    }

    /// The input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// The output width (rows of the weight).
    pub fn d_out(&self) -> usize {
        self.scale.len()
    }

    /// The quantized values, `[out, in]` row-major.
    pub fn values(&self) -> &[i8] {
        &self.q
    }

    /// The scale of each output row.
    pub fn scales(&self) -> &[f32] {
        &self.scale
    }

    /// The weight as f32, `q · scale` (each product rounded once): what the products are
    /// computed with (see [`linear_int8_at`]).
    pub fn dequantize(&self) -> Vec<f32> {
        self.q
            .chunks_exact(self.d_in)
            .zip(&self.scale)
            .flat_map(|(q, &s)| q.iter().map(move |&v| f32::from(v) * s))
            .collect()
    }

    /// Bytes held (values and scales).
    pub fn size_bytes(&self) -> usize {
        self.q.len() + 4 * self.scale.len()
    }
}

/// Quantizes one row into `q`; returns its scale, or `None` if a value is not finite.
fn quantize_row(w: &[f32], q: &mut [i8]) -> Option<f32> {
    let mut absmax = 0f32;
    for &v in w {
        if !v.is_finite() {
            return None;
        }
        absmax = absmax.max(v.abs());
    }
    let scale = if absmax == 0.0 { 1.0 } else { absmax / 127.0 };
    for (q, &v) in q.iter_mut().zip(w) {
        // `as` saturates, and the clamp keeps -128 out (|v / scale| may round past 127 by an
        // ulp).
        *q = (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    Some(scale)
}

/// `y = x Wᵀ + b` at [`Level::detected`] for an int8 weight; see [`linear_int8_at`].
pub fn linear_int8(x: &[f32], w: &Int8Matrix, bias: Option<&[f32]>, y: &mut [f32]) {
    linear_int8_at(Level::detected(), x, w, bias, y)
}

/// `y = x Wᵀ + b` for `x: [rows, in]`, an int8 weight `[out, in]`, `bias: [out]` and
/// `y: [rows, out]`, at `level`, any number of rows. Each output is `Σ_k x[r][k] (q[o][k] ·
/// scale[o]) + b[o]`: every weight is dequantized in registers (the product rounded to f32, the
/// value [`Int8Matrix::dequantize`] gives), and the sum taken in f32 in [`crate::linear_at`]'s
/// order. So the result is the f32 product with the dequantized weight, up to summation order.
///
/// # Panics
/// If `x` or `y` does not fit these shapes, or the CPU cannot run `level`.
pub fn linear_int8_at(
    level: Level,
    x: &[f32],
    w: &Int8Matrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let scale = Some(w.scale.as_slice());
    crate::linear_scaled(level, x, &w.q, scale, bias, w.d_in, y)
}
