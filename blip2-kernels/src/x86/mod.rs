//! x86-64 kernels: one module per instruction set.

pub mod amx;
pub mod avx2;
pub mod avx512;
pub mod int8;
mod loads;
pub mod packed;

/// Calls `$tile::<R, O>(x, w, d_in, &mut sums)` for a run-time tile of `$nr` rows × `$no`
/// outputs (each 1 to 4), and writes the sums into `yt` (`[outs, rows]`).
macro_rules! dispatch_tile {
    ($tile:ident, $nr:expr, $no:expr, $x:expr, $w:expr, $d_in:expr, $rows:expr, $yt:expr, $r0:expr, $o0:expr) => {{
        macro_rules! run {
            ($r:literal, $o:literal) => {{
                let mut sums = [[0f32; $o]; $r];
                $tile::<_, $r, $o>($x, $w, $d_in, &mut sums);
                for (r, row) in sums.iter().enumerate() {
                    for (o, &v) in row.iter().enumerate() {
                        $yt[($o0 + o) * $rows + $r0 + r] = v;
                    }
                }
            }};
        }
        match ($nr, $no) {
            (1, 1) => run!(1, 1),
            (1, 2) => run!(1, 2),
            (1, 3) => run!(1, 3),
            (1, 4) => run!(1, 4),
            (2, 1) => run!(2, 1),
            (2, 2) => run!(2, 2),
            (2, 3) => run!(2, 3),
            (2, 4) => run!(2, 4),
            (3, 1) => run!(3, 1),
            (3, 2) => run!(3, 2),
            (3, 3) => run!(3, 3),
            (3, 4) => run!(3, 4),
            (4, 1) => run!(4, 1),
            (4, 2) => run!(4, 2),
            (4, 3) => run!(4, 3),
            _ => run!(4, 4),
        }
    }};
}
pub(crate) use dispatch_tile;
