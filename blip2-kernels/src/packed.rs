//! Products of many rows over a weight packed once, at load, into the layout a register-blocked
//! kernel reads: panels of [`PANEL`] output columns, each stored `[in][PANEL]`, so that one
//! step of the inner loop loads `PANEL` consecutive weights of one input and multiplies them by
//! one broadcast input value per row. Compared with the `gemm` crate on the weight in place,
//! nothing of the weight is copied per call (the crate packs its right-hand operand on every
//! call, a fifth of ViT-g's encoding time on this project's machine).
//!
//! The input rows are packed per call (they are small beside the weight) into blocks of
//! [`ROWS`] rows stored `[in][ROWS]`, the last block padded with zeros. Each output is the bias
//! plus `Σ_k x[r][k] w[o][k]` summed in order of `k`, by one thread: results do not depend on the
//! number of threads. The output columns are split over rayon's pool in contiguous runs of
//! panels.

use rayon::prelude::*;

use crate::{Level, Weight};

/// Output columns per panel: two AVX-512 vectors.
pub const PANEL: usize = 32;

/// Input rows per block of the packed input (the AVX-512 kernel keeps `ROWS` × `PANEL`
/// accumulators, 24 of the 32 vector registers).
pub(crate) const ROWS: usize = 12;

/// Inputs per pass over a panel: a panel's `DEPTH` × `PANEL` weights (32 KiB in f32) stay in
/// the level-1 cache while every row block is multiplied by them.
const DEPTH: usize = 256;

/// A weight `[out, in]` packed into panels of [`PANEL`] output columns, each `[in][PANEL]`
/// (the last panel padded with zeros), for [`linear_packed`]. It holds as many elements as the
/// weight, plus the padding of the last panel.
#[derive(Clone, Debug)]
pub struct PackedMatrix<W> {
    data: Vec<W>,
    d_in: usize,
    d_out: usize,
}

impl<W: Weight> PackedMatrix<W> {
    /// Packs `w` (`[out, in]`, row-major, `in = d_in`).
    ///
    /// # Panics
    /// If `d_in` is 0 or `w.len()` is not a multiple of it.
    pub fn pack(w: &[W], d_in: usize) -> Self {
        assert!(d_in > 0 && w.len().is_multiple_of(d_in), "shapes");
        let d_out = w.len() / d_in;
        let panels = d_out.div_ceil(PANEL);
        let mut data = vec![W::ZERO; panels * d_in * PANEL];
        data.par_chunks_mut(d_in * PANEL)
            .enumerate()
            .for_each(|(p, panel)| {
                let first = p * PANEL;
                for j in 0..PANEL.min(d_out - first) {
                    let row = &w[(first + j) * d_in..(first + j + 1) * d_in];
                    for (k, &v) in row.iter().enumerate() {
                        panel[k * PANEL + j] = v;
                    }
                }
            });
        PackedMatrix { data, d_in, d_out }
    }

    /// The weight back in its `[out, in]` layout.
    pub fn unpack(&self) -> Vec<W> {
        let mut w = vec![W::ZERO; self.d_out * self.d_in];
        for (o, row) in w.chunks_exact_mut(self.d_in).enumerate() {
            let panel = &self.data[o / PANEL * self.d_in * PANEL..];
            for (k, v) in row.iter_mut().enumerate() {
                *v = panel[k * PANEL + o % PANEL];
            }
        }
        w
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Bytes the packed weight holds.
    pub fn size_bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<W>()
    }
}

/// `y = x Wᵀ + b` at [`Level::detected`]; see [`linear_packed_at`].
pub fn linear_packed<W: Weight, X: Weight>(
    x: &[X],
    w: &PackedMatrix<W>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    linear_packed_at(Level::detected(), x, w, bias, y)
}

/// `y = x Wᵀ + b` for `x: [rows, in]` (f32, f16 or bf16, widened exactly while it is packed),
/// a packed `W` (`[out, in]`), `bias: [out]` and `y: [rows, out]`, at `level`: each output is the bias plus `Σ_k x[r][k] w[o][k]`, summed in
/// f32 in order of `k` (fused multiply-adds on AVX-512 and AVX2, a product then a sum
/// portably), by one thread.
///
/// # Panics
/// If the lengths do not fit these shapes, or if the CPU cannot run `level`.
pub fn linear_packed_at<W: Weight, X: Weight>(
    level: Level,
    x: &[X],
    w: &PackedMatrix<W>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (d_in, out) = (w.d_in, w.d_out);
    assert!(x.len().is_multiple_of(d_in), "x must be [rows, in]");
    let rows = x.len() / d_in;
    if !crate::check_outputs(level, rows, out, bias.map(<[f32]>::len), y.len()) {
        return;
    }
    let xp = pack_rows(x, d_in);
    let panels = out.div_ceil(PANEL);
    // About two runs of panels per thread, so that a thread held up elsewhere delays less.
    let runs = (2 * rayon::current_num_threads()).clamp(1, panels);
    let per = panels.div_ceil(runs);
    let y_at = Shared(y.as_mut_ptr());
    (0..panels.div_ceil(per)).into_par_iter().for_each(|run| {
        let first = run * per;
        let job = Job {
            xp: &xp,
            w,
            bias,
            rows,
            y: y_at,
        };
        job.panels(level, first, (first + per).min(panels));
    });
}

/// The output pointer, shared by the tasks of one product: each writes its own columns.
#[derive(Clone, Copy)]
struct Shared(*mut f32);

// SAFETY: the tasks of `linear_packed_at` write disjoint columns of `y` (their own panels) and
// nothing reads them until every task has finished; `y` is borrowed mutably meanwhile.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// `x` widened to f32 and packed into blocks of [`ROWS`] rows, each `[in][ROWS]`, the last
/// padded with zeros.
fn pack_rows<X: Weight>(x: &[X], d_in: usize) -> Vec<f32> {
    let rows = x.len() / d_in;
    let blocks = rows.div_ceil(ROWS);
    let mut xp = vec![0f32; blocks * d_in * ROWS];
    for (b, block) in xp.chunks_exact_mut(d_in * ROWS).enumerate() {
        for i in 0..ROWS.min(rows - b * ROWS) {
            let row = &x[(b * ROWS + i) * d_in..(b * ROWS + i + 1) * d_in];
            for (k, &v) in row.iter().enumerate() {
                block[k * ROWS + i] = v.to_f32();
            }
        }
    }
    xp
}

/// One product's operands.
struct Job<'a, W> {
    xp: &'a [f32],
    w: &'a PackedMatrix<W>,
    bias: Option<&'a [f32]>,
    rows: usize,
    y: Shared,
}

/// Where a tile's accumulators start.
#[derive(Clone, Copy)]
pub(crate) enum Start {
    /// From zero (the first pass, without a bias).
    Zero,
    /// From the bias of the tile's columns (the first pass).
    Bias(*const f32),
    /// From the tile's outputs (later passes).
    Output,
}

/// One tile: `rows` (≤ [`ROWS`]) output rows × `cols` (≤ [`PANEL`]) columns at `c` (row stride
/// `ldc`), over `depth` inputs of one packed row block (`xp`, `[depth][ROWS]`) and one panel
/// (`wp`, `[depth][PANEL]`).
pub(crate) struct Tile<W> {
    pub xp: *const f32,
    pub wp: *const W,
    pub depth: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub start: Start,
}

impl<W: Weight> Job<'_, W> {
    /// Panels `first..end`, every row, in passes of [`DEPTH`] inputs.
    fn panels(&self, level: Level, first: usize, end: usize) {
        let (d_in, out) = (self.w.d_in, self.w.d_out);
        for k0 in (0..d_in).step_by(DEPTH) {
            let depth = DEPTH.min(d_in - k0);
            for p in first..end {
                let n0 = p * PANEL;
                let wp = self.w.data[p * d_in * PANEL + k0 * PANEL..].as_ptr();
                for b in 0..self.rows.div_ceil(ROWS) {
                    let r0 = b * ROWS;
                    let start = match (k0, self.bias) {
                        (0, Some(bias)) => Start::Bias(bias[n0..].as_ptr()),
                        (0, None) => Start::Zero,
                        _ => Start::Output,
                    };
                    let tile = Tile {
                        xp: self.xp[b * d_in * ROWS + k0 * ROWS..].as_ptr(),
                        wp,
                        depth,
                        // SAFETY: row r0 < rows and column n0 < out lie inside `y`.
                        c: unsafe { self.y.0.add(r0 * out + n0) },
                        ldc: out,
                        rows: ROWS.min(self.rows - r0),
                        cols: PANEL.min(out - n0),
                        start,
                    };
                    // SAFETY: `tile` describes `depth` × ROWS packed inputs and `depth` × PANEL
                    // packed weights inside `xp` and the panel, a bias of `cols` values, and
                    // `rows` × `cols` outputs inside `y` that only this task writes.
                    unsafe { run_tile(level, &tile) };
                }
            }
        }
    }
}

/// One tile at `level`.
///
/// # Safety
/// As [`Tile`] describes; the CPU runs `level`.
unsafe fn run_tile<W: Weight>(level: Level, tile: &Tile<W>) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's guarantees.
        Level::Avx512 => unsafe { crate::x86::packed::tile(tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's guarantees; the CPU runs AVX2 and FMA.
        Level::Avx2 => unsafe { tile_fma(tile) },
        // SAFETY: the caller's guarantees.
        _ => unsafe { tile_portable::<W, false>(tile) },
    }
}

/// [`tile_portable`] compiled for AVX2 and FMA, with fused multiply-adds.
///
/// # Safety
/// As [`Tile`] describes; the CPU runs AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_fma<W: Weight>(tile: &Tile<W>) {
    // SAFETY: the caller's guarantees.
    unsafe { tile_portable::<W, true>(tile) }
}

/// A tile in plain Rust, one output row at a time (`PANEL` accumulators; the compiler
/// vectorises the column loop), products fused into the sums when `FUSED`.
///
/// # Safety
/// As [`Tile`] describes.
#[inline(always)]
unsafe fn tile_portable<W: Weight, const FUSED: bool>(tile: &Tile<W>) {
    // SAFETY: the caller guarantees these extents.
    let (xp, wp) = unsafe {
        (
            std::slice::from_raw_parts(tile.xp, tile.depth * ROWS),
            std::slice::from_raw_parts(tile.wp, tile.depth * PANEL),
        )
    };
    for i in 0..tile.rows {
        // SAFETY: row i of the tile holds `cols` outputs at `c + i * ldc`.
        let c = unsafe { std::slice::from_raw_parts_mut(tile.c.add(i * tile.ldc), tile.cols) };
        let mut acc = [0f32; PANEL];
        match tile.start {
            Start::Zero => {}
            // SAFETY: the bias holds `cols` values.
            Start::Bias(b) => acc[..tile.cols]
                .copy_from_slice(unsafe { std::slice::from_raw_parts(b, tile.cols) }),
            Start::Output => acc[..tile.cols].copy_from_slice(c),
        }
        for k in 0..tile.depth {
            let a = xp[k * ROWS + i];
            let w = &wp[k * PANEL..(k + 1) * PANEL];
            for (s, w) in acc.iter_mut().zip(w) {
                *s = if FUSED {
                    a.mul_add(w.to_f32(), *s)
                } else {
                    *s + a * w.to_f32()
                };
            }
        }
        c.copy_from_slice(&acc[..tile.cols]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{levels, on_threads, reference, values};
    use crate::{bf16, f16};

    /// Against an f64 reference, at every tail of the row blocks (rows around multiples of 12,
    /// up to 257 = 21·12 + 5), the panels (out around multiples of 32) and the passes (in
    /// around multiples of 256), with and without a bias.
    fn tails<W: Weight>(from: fn(f32) -> W) {
        for level in levels() {
            for (rows, out, d_in) in [
                (1, 1, 1),
                (1, 33, 15),
                (11, 31, 16),
                (12, 32, 17),
                (13, 65, 33),
                (24, 64, 255),
                (25, 40, 256),
                (37, 97, 257),
                (257, 70, 520),
            ] {
                let x = values(rows * d_in, rows as u64);
                let w: Vec<W> = values(out * d_in, 5 + out as u64)
                    .into_iter()
                    .map(from)
                    .collect();
                let b = values(out, 9);
                let packed = PackedMatrix::pack(&w, d_in);
                let bits = |w: &[W]| w.iter().map(|v| v.to_f32().to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&packed.unpack()), bits(&w));
                for bias in [None, Some(b.as_slice())] {
                    let mut y = vec![f32::NAN; rows * out];
                    linear_packed_at(level, &x, &packed, bias, &mut y);
                    let want = reference(&x, &w, bias, d_in);
                    for (i, (&got, want)) in y.iter().zip(want).enumerate() {
                        assert!(
                            (f64::from(got) - want).abs() <= 1e-6 * (d_in as f64 + 1.0),
                            "{level:?} {rows}x{out}x{d_in} [{i}]: {got} against {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_products_match_the_reference() {
        tails::<f32>(|v| v);
        tails::<f16>(f16::from_f32);
        tails::<bf16>(bf16::from_f32);
    }

    #[test]
    fn packing_round_trips() {
        let w = values(70 * 9, 3);
        assert_eq!(PackedMatrix::pack(&w, 9).unpack(), w);
    }

    /// The same bits on 1, 2 and 3 threads, at every level.
    #[test]
    fn packed_products_do_not_depend_on_the_thread_count() {
        let (rows, out, d_in) = (29, 200, 300);
        let x = values(rows * d_in, 1);
        let w: Vec<bf16> = values(out * d_in, 2)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let b = values(out, 3);
        let packed = PackedMatrix::pack(&w, d_in);
        for level in levels() {
            let run = |threads: usize| {
                let mut y = vec![0f32; rows * out];
                on_threads(threads, || {
                    linear_packed_at(level, &x, &packed, Some(&b), &mut y)
                });
                y
            };
            let one = run(1);
            assert_eq!(one, run(2), "{level:?}");
            assert_eq!(one, run(3), "{level:?}");
        }
    }
}
