//! The AMX micro-kernel: 32 rows × 32 columns in four f32 accumulator tiles, two input tiles
//! and two weight tiles per 32 inputs.

/// The tile configuration: palette 1, tiles 0–7 of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

const CONFIG: Config = {
    let mut c = [0u8; 64];
    c[0] = 1; // palette
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = 16; // rows
        t += 1;
    }
    Config(c)
};

/// The tile state of one thread, configured for [`block`]: created once per run of blocks (the
/// configuration costs more than a block's loop overhead), released when dropped. Not `Send`: the
/// configuration belongs to the thread that loaded it.
pub struct Tiles(std::marker::PhantomData<*const ()>);

impl Tiles {
    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// AMX-TILE and AMX-BF16 are usable by this thread (`amx_available`), and no other tile
    /// configuration is live on it (no other `Tiles` exists on this thread).
    pub unsafe fn configure() -> Tiles {
        // SAFETY: the configuration is 64-byte aligned and valid for palette 1; the caller
        // guarantees the tile instructions are enabled for this thread.
        unsafe {
            std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) &CONFIG, options(nostack, readonly));
        }
        Tiles(std::marker::PhantomData)
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a `Tiles` exists only after `configure` succeeded on this thread (it is not
        // `Send`), so the tile instructions are enabled here; releasing returns the tile state
        // to its initial one.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `c[i][j] = Σ_k a[i][k] w[j][k]` for 32 rows and 32 columns over `chunks` × 32 inputs: `a` is
/// `chunks` pairs of input tiles (rows 0–15, rows 16–31; each `[16][32]` bf16), `w` `chunks`
/// pairs of weight tiles (columns 0–15, 16–31; each `[16][16][2]`), `c` 32 rows of 32 f32.
///
/// # Safety
/// `a` and `w` point at `chunks * 1024` readable bf16 values each; `chunks > 0`. (`tiles`, which
/// only this thread can hold, proves the tile configuration is loaded here.)
pub unsafe fn block(
    _tiles: &Tiles,
    a: *const half::bf16,
    w: *const half::bf16,
    chunks: usize,
    c: &mut [f32; 1024],
) {
    debug_assert!(chunks > 0);
    // SAFETY: `_tiles` shows this thread's tiles are configured as 16 rows × 64 bytes; the
    // loads read `chunks` × 2 KiB from `a` and from `w`, the stores write 32 rows of 128 bytes
    // into `c`; the accumulators are zeroed first, so no earlier block's state leaks in.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a} + {s64}]",
            "tileloadd tmm6, [{w} + {s64}]",
            "add {a}, 1024",
            "add {w}, 1024",
            "tileloadd tmm5, [{a} + {s64}]",
            "tileloadd tmm7, [{w} + {s64}]",
            "add {a}, 1024",
            "add {w}, 1024",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {s128}], tmm0",
            "tilestored [{c1} + {s128}], tmm1",
            "tilestored [{c2} + {s128}], tmm2",
            "tilestored [{c3} + {s128}], tmm3",
            a = inout(reg) a => _,
            w = inout(reg) w => _,
            n = inout(reg) chunks => _,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            c = in(reg) c.as_mut_ptr(),
            c1 = in(reg) c.as_mut_ptr().add(16),
            c2 = in(reg) c.as_mut_ptr().add(16 * 32),
            c3 = in(reg) c.as_mut_ptr().add(16 * 32 + 16),
            options(nostack),
        );
    }
}
