//! bf16 products of many rows on Intel's AMX tile units (`tdpbf16ps`): the weight packed once
//! into the units' tile layout ([`AmxMatrix`]), the input rows rounded to bf16 and packed per
//! call, every product of a pair of bf16 values summed in f32 by the units, the bias added to
//! the sum once the sum is complete. About five times the f32 FMA rate of this project's
//! machine (docs/performance.md).
//!
//! The units treat subnormal bf16 inputs as zero and flush subnormal results to zero; the
//! order of the sums inside a tile instruction is the hardware's. A bf16 model is rounded to
//! 8 bits of mantissa anyway: the results are bf16 products summed in f32, like torch's bf16
//! linear layer on this CPU (oneDNN on the same units), not bit for bit its sums.
//!
//! AMX is used when the CPU has AMX-TILE and AMX-BF16, the OS saves the tile state, Linux grants
//! this process the tile data ([`amx_available`]), and `BLIP2_KERNELS` does not force a level
//! (`avx512`, `avx2` and `portable` turn AMX off, so tests can run the fallbacks here).

use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

/// Output columns per panel of an [`AmxMatrix`] (two tiles of 16).
const COLS: usize = 32;
/// Inputs per tile row (32 bf16 values, 64 bytes).
const DEPTH: usize = 32;
/// Input rows per block of the packed input (two tiles of 16).
const ROWS: usize = 32;
/// bf16 values per tile (16 rows of 64 bytes).
const TILE: usize = 512;

/// Whether the AMX kernels run in this process: the CPU has AMX-TILE and AMX-BF16, the OS saves
/// the tile state, Linux lets this process use it, and `BLIP2_KERNELS` does not force a level
/// (unset, or `amx`). Decided once per process.
pub fn amx_available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let forced = matches!(
            std::env::var("BLIP2_KERNELS").ok().as_deref(),
            Some("avx512" | "avx2" | "portable" | "off")
        );
        !forced && hardware()
    })
}

/// The CPU and OS side of [`amx_available`].
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn hardware() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    let (leaf1, leaf7) = (__cpuid(1), __cpuid_count(7, 0));
    let osxsave = leaf1.ecx & (1 << 27) != 0;
    let tile = leaf7.edx & (1 << 24) != 0;
    let bf16 = leaf7.edx & (1 << 22) != 0;
    if !(osxsave && tile && bf16 && crate::Level::best() == crate::Level::Avx512) {
        return false;
    }
    // SAFETY: OSXSAVE is set, so XGETBV is available.
    let xcr0 = unsafe { _xgetbv(0) };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: without it the first tile instruction faults.
    // SAFETY: a system call with plain integer arguments.
    let granted = unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1023, 18) };
    granted == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn hardware() -> bool {
    false
}

/// A weight `[out, in]` in bf16, packed into AMX tiles for [`linear_amx`]: panels of 32 output
/// columns, each a run of tile pairs over 32 inputs; a tile holds 16 columns × 32 inputs as
/// `[in / 2][column][in % 2]`. `in` is padded to a multiple of 32 and `out` to one of 32, with
/// zeros.
#[derive(Clone, Debug)]
pub struct AmxMatrix {
    data: Vec<bf16>,
    d_in: usize,
    d_out: usize,
}

impl AmxMatrix {
    /// Packs `w` (`[out, in]`, row-major, `in = d_in`).
    ///
    /// # Panics
    /// If `d_in` is 0 or `w.len()` is not a multiple of it.
    pub fn pack(w: &[bf16], d_in: usize) -> Self {
        assert!(d_in > 0 && w.len().is_multiple_of(d_in), "shapes");
        let d_out = w.len() / d_in;
        let chunks = d_in.div_ceil(DEPTH);
        let panel = chunks * 2 * TILE;
        let mut data = vec![bf16::ZERO; d_out.div_ceil(COLS) * panel];
        data.par_chunks_mut(panel).enumerate().for_each(|(p, out)| {
            for j in 0..COLS.min(d_out - p * COLS) {
                let row = &w[(p * COLS + j) * d_in..(p * COLS + j + 1) * d_in];
                for (k, &v) in row.iter().enumerate() {
                    out[in_panel(j, k)] = v;
                }
            }
        });
        AmxMatrix { data, d_in, d_out }
    }

    /// The weight back in its `[out, in]` layout.
    pub fn unpack(&self) -> Vec<bf16> {
        let panel = self.d_in.div_ceil(DEPTH) * 2 * TILE;
        let mut w = vec![bf16::ZERO; self.d_out * self.d_in];
        for (o, row) in w.chunks_exact_mut(self.d_in).enumerate() {
            let tiles = &self.data[o / COLS * panel..];
            for (k, v) in row.iter_mut().enumerate() {
                *v = tiles[in_panel(o % COLS, k)];
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

    /// Bytes the packed weight holds (padding included).
    pub fn size_bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// Where weight `[j][k]` of a panel (column `j` < 32 of it, input `k`) lies in the panel: tile
/// pair `k / 32`, tile `j / 16`, then `[k % 32 / 2][j % 16][k % 2]`.
fn in_panel(j: usize, k: usize) -> usize {
    let (chunk, kk) = (k / DEPTH, k % DEPTH);
    (chunk * 2 + j / 16) * TILE + (kk / 2) * 32 + (j % 16) * 2 + kk % 2
}

/// `y = x Wᵀ + b` for `x: [rows, in]` (bf16 values, or f32 values rounded to bf16 to nearest
/// even), an AMX-packed `W`, `bias: [out]` (f32) and `y: [rows, out]` (f32): the products summed
/// by the tile units in f32, then the bias added. Each output is computed by one thread from the
/// same operands in the same order whatever the number of threads.
///
/// # Panics
/// If the lengths do not fit these shapes, or if [`amx_available`] is false.
pub fn linear_amx<X: AmxInput>(x: &[X], w: &AmxMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    let (d_in, out) = (w.d_in, w.d_out);
    assert!(x.len().is_multiple_of(d_in), "x must be [rows, in]");
    let rows = x.len() / d_in;
    assert!(amx_available(), "AMX is not available in this process");
    // AMX implies AVX-512 (`hardware`), so the level check passes.
    if !crate::check_outputs(
        crate::Level::Avx512,
        rows,
        out,
        bias.map(<[f32]>::len),
        y.len(),
    ) {
        return;
    }
    let chunks = d_in.div_ceil(DEPTH);
    let xp = pack_rows(x, d_in, chunks);
    let panels = out.div_ceil(COLS);
    let runs = (2 * rayon::current_num_threads()).clamp(1, panels);
    let per = panels.div_ceil(runs);
    let y_at = SharedOut(y.as_mut_ptr());
    (0..panels.div_ceil(per)).into_par_iter().for_each(|run| {
        let mut c = Scratch([0f32; ROWS * COLS]);
        // SAFETY: `amx_available` was checked above (it also asked Linux for the tile state),
        // and this closure makes no nested rayon call, so no other `Tiles` is live on this
        // worker thread while this one is.
        let tiles = unsafe { crate::x86::amx::Tiles::configure() };
        for p in run * per..((run + 1) * per).min(panels) {
            let wp = &w.data[p * chunks * 2 * TILE..(p + 1) * chunks * 2 * TILE];
            let n0 = p * COLS;
            let cols = COLS.min(out - n0);
            for b in 0..rows.div_ceil(ROWS) {
                let a = &xp[b * chunks * 2 * TILE..(b + 1) * chunks * 2 * TILE];
                // SAFETY: `a` and `wp` hold `chunks` pairs of tiles each, `c` 32 × 32 f32.
                unsafe {
                    crate::x86::amx::block(&tiles, a.as_ptr(), wp.as_ptr(), chunks, &mut c.0)
                };
                let r0 = b * ROWS;
                for i in 0..ROWS.min(rows - r0) {
                    // SAFETY: row r0 + i < rows, columns n0..n0 + cols < out: inside `y`, and
                    // only this task writes these columns.
                    let yr = unsafe {
                        std::slice::from_raw_parts_mut(y_at.ptr().add((r0 + i) * out + n0), cols)
                    };
                    let sums = &c.0[i * COLS..i * COLS + cols];
                    match bias {
                        Some(bias) => {
                            for ((y, s), b) in yr.iter_mut().zip(sums).zip(&bias[n0..]) {
                                *y = s + b;
                            }
                        }
                        None => yr.copy_from_slice(sums),
                    }
                }
            }
        }
    });
}

/// The output of one product, shared by its tasks: each writes its own columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the tasks of `linear_amx` write disjoint columns of `y` and nothing reads them until
// every task has finished; `y` is borrowed mutably meanwhile.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// 32 × 32 f32 sums, aligned for the tile stores.
#[repr(C, align(64))]
struct Scratch([f32; ROWS * COLS]);

/// An input element [`linear_amx`] takes: bf16 as it is, f32 rounded to bf16.
pub trait AmxInput: Copy + Send + Sync {
    /// This value in bf16.
    fn to_bf16(self) -> bf16;
}

impl AmxInput for bf16 {
    fn to_bf16(self) -> bf16 {
        self
    }
}

impl AmxInput for f32 {
    fn to_bf16(self) -> bf16 {
        bf16::from_f32(self)
    }
}

/// `x` in bf16, in blocks of 32 rows, each a run of tile pairs (rows 0–15, 16–31) over 32
/// inputs, a tile `[row][32 inputs]`; rows and inputs padded with zeros.
fn pack_rows<X: AmxInput>(x: &[X], d_in: usize, chunks: usize) -> Vec<bf16> {
    let rows = x.len() / d_in;
    let block = chunks * 2 * TILE;
    let mut xp = vec![bf16::ZERO; rows.div_ceil(ROWS) * block];
    xp.par_chunks_mut(block).enumerate().for_each(|(b, out)| {
        for i in 0..ROWS.min(rows - b * ROWS) {
            let row = &x[(b * ROWS + i) * d_in..(b * ROWS + i + 1) * d_in];
            let (half, r) = (i / 16, i % 16);
            for (chunk, part) in row.chunks(DEPTH).enumerate() {
                let at = (chunk * 2 + half) * TILE + r * DEPTH;
                for (o, v) in out[at..at + part.len()].iter_mut().zip(part) {
                    *o = v.to_bf16();
                }
            }
        }
    });
    xp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{on_threads, reference, values};

    #[test]
    fn packing_round_trips() {
        for (out, d_in) in [(1, 1), (33, 31), (64, 64), (70, 97)] {
            let w: Vec<bf16> = values(out * d_in, 4)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            assert_eq!(AmxMatrix::pack(&w, d_in).unpack(), w, "{out}x{d_in}");
        }
    }

    /// Against an f64 reference from the bf16-rounded operands, at every tail of the row
    /// blocks (rows around multiples of 16 and 32, up to 257), the panels (out around multiples
    /// of 16 and 32) and the tiles' depth (in around multiples of 32), with and without a bias.
    /// Products of bf16 values are exact in f32, so the only error is the f32 summation.
    #[test]
    fn amx_products_match_the_reference() {
        if !amx_available() {
            eprintln!("AMX not available: skipped");
            return;
        }
        for (rows, out, d_in) in [
            (1, 1, 1),
            (15, 17, 31),
            (16, 16, 32),
            (17, 33, 33),
            (31, 48, 63),
            (32, 32, 64),
            (33, 65, 65),
            (257, 70, 520),
        ] {
            let x = values(rows * d_in, rows as u64);
            let w: Vec<bf16> = values(out * d_in, 7 + out as u64)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            let b = values(out, 9);
            let packed = AmxMatrix::pack(&w, d_in);
            for bias in [None, Some(b.as_slice())] {
                let mut y = vec![f32::NAN; rows * out];
                linear_amx(&x, &packed, bias, &mut y);
                let mut yb = vec![f32::NAN; rows * out];
                let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
                linear_amx(&xb, &packed, bias, &mut yb);
                assert_eq!(y, yb, "f32 inputs are rounded to bf16");
                let x_rounded: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
                let want = reference(&x_rounded, &w, bias, d_in);
                for (i, (&got, want)) in y.iter().zip(want).enumerate() {
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-6 * (d_in as f64 + 1.0),
                        "{rows}x{out}x{d_in} [{i}]: {got} against {want}"
                    );
                }
            }
        }
    }

    /// The same bits on 1, 2 and 3 threads.
    #[test]
    fn amx_products_do_not_depend_on_the_thread_count() {
        if !amx_available() {
            eprintln!("AMX not available: skipped");
            return;
        }
        let (rows, out, d_in) = (45, 200, 300);
        let x = values(rows * d_in, 1);
        let w: Vec<bf16> = values(out * d_in, 2)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let b = values(out, 3);
        let packed = AmxMatrix::pack(&w, d_in);
        let run = |threads: usize| {
            let mut y = vec![0f32; rows * out];
            on_threads(threads, || linear_amx(&x, &packed, Some(&b), &mut y));
            y
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}
