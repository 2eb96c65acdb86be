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

/// `c[i][j] = Σ_k a[i][k] w[j][k]` for 32 rows and 32 columns over `chunks` × 32 inputs: `a` is
/// `chunks` pairs of input tiles (rows 0–15, rows 16–31; each `[16][32]` bf16), `w` `chunks`
/// pairs of weight tiles (columns 0–15, 16–31; each `[16][16][2]`), `c` 32 rows of 32 f32.
///
/// # Safety
/// AMX-TILE and AMX-BF16 are usable by this thread (`amx_available`); `a` and `w` point at
/// `chunks * 1024` readable bf16 values each; `chunks > 0`.
pub unsafe fn block(
    a: *const half::bf16,
    w: *const half::bf16,
    chunks: usize,
    c: &mut [f32; 1024],
) {
    debug_assert!(chunks > 0);
    // SAFETY: the configuration is 64-byte aligned; the loads read `chunks` × 2 KiB from `a`
    // and from `w`, the stores write 32 rows of 128 bytes into `c`; the tile state is
    // released before the block ends, so nothing else sees it.
    unsafe {
        std::arch::asm!(
            "ldtilecfg [{cfg}]",
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
            "tilerelease",
            cfg = in(reg) &CONFIG,
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
