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

/// Outputs per panel of an [`Int8Matrix`]: four AVX2 vectors, so one input row keeps four
/// independent sums in flight.
pub(crate) const PANEL: usize = 32;

/// A weight `[out, in]` (PyTorch's layout) in int8 with one f32 scale per output row:
/// `W[o][k] ≈ q[o][k] · scale[o]`.
///
/// The rule (the same as `tools/parity`'s, so transformers can compute goldens from the
/// dequantized weight): `scale[o] = max_k |W[o][k]| / 127` in f32, `q[o][k] = W[o][k] / scale[o]`
/// in f32, rounded to the nearest integer with ties to even and clamped to ±127; a row of zeros
/// gets scale 1 (and q 0).
///
/// The values are held in panels of 32 output rows interleaved by input index
/// (`panel[p][k][j] = q[32p + j][k]`, the last panel padded with zero rows), so one product
/// reads the whole weight as a single forward stream, 32 bytes per input value. The buffer is
/// on huge pages where Linux allows it.
#[derive(Clone)]
pub struct Int8Matrix {
    /// `[panels][d_in][PANEL]`.
    q: Vec<i8>,
    /// `[panels · PANEL]`, the padding rows' scales 1.
    scale: Vec<f32>,
    d_in: usize,
    d_out: usize,
}

impl std::fmt::Debug for Int8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Int8Matrix")
            .field("d_out", &self.d_out)
            .field("d_in", &self.d_in)
            .finish_non_exhaustive()
    }
}

impl Int8Matrix {
    /// Quantizes `w: [out, d_in]` (row-major), panels in parallel on rayon's pool (the result
    /// does not depend on the thread count).
    pub fn quantize(w: &[f32], d_in: usize) -> Result<Self, QuantizeError> {
        if d_in == 0 || !w.len().is_multiple_of(d_in) {
            return Err(QuantizeError::Shape { len: w.len(), d_in });
        }
        let d_out = w.len() / d_in;
        let panels = d_out.div_ceil(PANEL);
        let mut q = crate::huge::zeroed_i8(panels * PANEL * d_in);
        let mut scale = vec![1f32; panels * PANEL];
        use rayon::prelude::*;
        q.par_chunks_mut(PANEL * d_in)
            .zip(scale.par_chunks_mut(PANEL))
            .enumerate()
            .try_for_each(|(p, (q, scale))| {
                let first = p * PANEL;
                let rows = w[first * d_in..].chunks_exact(d_in).take(PANEL);
                for (j, (w, s)) in rows.zip(scale).enumerate() {
                    let row = first + j;
                    *s = quantize_row(w, &mut q[j..], PANEL)
                        .ok_or(QuantizeError::NonFinite { row })?;
                }
                Ok(())
            })?;
        crate::huge::collapse(&q);
        Ok(Int8Matrix {
            q,
            scale,
            d_in,
            d_out,
        })
    }

    /// The input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// The output width (rows of the weight).
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// The quantized values, `[out, in]` row-major (unpacked from the panels: a copy).
    pub fn values(&self) -> Vec<i8> {
        (0..self.d_out)
            .flat_map(|o| (0..self.d_in).map(move |k| self.q[self.at(o, k)]))
            .collect()
    }

    /// The scale of each output row.
    pub fn scales(&self) -> &[f32] {
        &self.scale[..self.d_out]
    }

    /// The weight as f32, `[out, in]` row-major, `q · scale` (each product rounded once): what
    /// the products are computed with (see [`linear_int8_at`]).
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.d_out)
            .flat_map(|o| {
                let s = self.scale[o];
                (0..self.d_in).map(move |k| f32::from(self.q[self.at(o, k)]) * s)
            })
            .collect()
    }

    /// Bytes held (values and scales, padding included).
    pub fn size_bytes(&self) -> usize {
        self.q.len() + 4 * self.scale.len()
    }

    /// Where `q[o][k]` is in the panels.
    fn at(&self, o: usize, k: usize) -> usize {
        (o / PANEL * self.d_in + k) * PANEL + o % PANEL
    }
}

/// Quantizes one row into `q[0]`, `q[stride]`, `q[2·stride]`, …; returns its scale, or `None`
/// if a value is not finite.
fn quantize_row(w: &[f32], q: &mut [i8], stride: usize) -> Option<f32> {
    let mut absmax = 0f32;
    for &v in w {
        if !v.is_finite() {
            return None;
        }
        absmax = absmax.max(v.abs());
    }
    let scale = if absmax == 0.0 { 1.0 } else { absmax / 127.0 };
    for (q, &v) in q.iter_mut().step_by(stride).zip(w) {
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
/// `y: [rows, out]`, at `level`, any number of rows.
///
/// Each output is `Σ_k x[r][k] · (q[o][k] · scale[o]) + b[o]`: every weight is dequantized in
/// registers to the value [`Int8Matrix::dequantize`] gives, and the products are summed in f32
/// one input index after another (`k = 0, 1, …`), fused multiply-adds on AVX2 and separate
/// multiplies and adds in portable code; then the bias is added. That order does not depend on
/// the number of rows or threads, so a row's result is the same alone or in a batch, and AVX2
/// and AVX-512 give the same bits.
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
    let d_in = w.d_in;
    assert!(x.len().is_multiple_of(d_in), "x must be [rows, in]");
    let rows = x.len() / d_in;
    crate::with_outputs(level, rows, w.d_out, bias, y, |yt| {
        products(level, x, w, rows, yt)
    })
}

/// `yt[o][r] = Σ_k x[r][k] (q[o][k] · scale[o])` for every output, the panels in contiguous
/// blocks over rayon's pool.
fn products(level: Level, x: &[f32], w: &Int8Matrix, rows: usize, yt: &mut [f32]) {
    let d_in = w.d_in;
    let panels = w.scale.len() / PANEL;
    let threads = rayon::current_num_threads().max(1);
    // About one block of panels per thread; tiny layers stay on one thread.
    let per = if w.q.len() < 1 << 16 {
        panels
    } else {
        panels.div_ceil(threads)
    };
    use rayon::prelude::*;
    yt.par_chunks_mut(per * PANEL * rows)
        .enumerate()
        .for_each(|(block, yt)| {
            let first = block * per;
            let n = (yt.len() / rows).div_ceil(PANEL);
            let q = &w.q[first * PANEL * d_in..(first + n) * PANEL * d_in];
            let scale = &w.scale[first * PANEL..(first + n) * PANEL];
            panels_at(level, x, q, scale, d_in, rows, yt);
        });
}

/// Some panels' outputs, `yt: [outs, rows]` (`outs` at most the panels' rows).
fn panels_at(
    level: Level,
    x: &[f32],
    q: &[i8],
    scale: &[f32],
    d_in: usize,
    rows: usize,
    yt: &mut [f32],
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `with_outputs` checked that the CPU runs `level`.
        Level::Avx2 => unsafe { crate::x86::int8::panels(x, q, scale, d_in, rows, yt) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx512 => unsafe { crate::x86::int8::panels_avx512(x, q, scale, d_in, rows, yt) },
        _ => crate::portable::int8_panels(x, q, scale, d_in, rows, yt),
    }
}
