//! The widening loads of each weight type (see `weight::sealed::Loads`).

use std::arch::x86_64::*;

use half::{bf16, f16};

use crate::weight::sealed::Loads;

impl Loads for f32 {
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable values at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16_tail(p: *const f32, n: usize) -> __m512 {
        debug_assert!(n < 16);
        let mask = ((1u32 << n) - 1) as __mmask16;
        // SAFETY: the mask covers the `n` readable values; masked-off lanes are neither read
        // nor faulted on.
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable values at `p`.
        unsafe { _mm256_loadu_ps(p) }
    }
}

/// The `n < 16` 16-bit values at `p`, zero-padded to 16 (for the tail of a row).
///
/// # Safety
/// `p` points at `n` readable values.
#[inline]
unsafe fn padded<T: Copy>(p: *const T, n: usize, zero: T) -> [T; 16] {
    let mut buf = [zero; 16];
    // SAFETY: `n < 16` values are readable at `p` and fit in `buf`; the two do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(16)) };
    buf
}

impl Loads for f16 {
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16(p: *const f16) -> __m512 {
        // SAFETY: 16 readable f16 values are 32 bytes; `vcvtph2ps` widens them exactly.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16_tail(p: *const f16, n: usize) -> __m512 {
        // SAFETY: `padded` reads only the `n` values the caller guarantees.
        let buf = unsafe { padded(p, n, f16::ZERO) };
        // SAFETY: `buf` holds 16 values.
        unsafe { Self::load16(buf.as_ptr()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: 8 readable f16 values are 16 bytes.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

impl Loads for bf16 {
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16(p: *const bf16) -> __m512 {
        // SAFETY: 16 readable bf16 values are 32 bytes. A bf16 is the upper half of an f32:
        // zero-extend each to 32 bits and shift it up.
        unsafe {
            let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16_tail(p: *const bf16, n: usize) -> __m512 {
        // SAFETY: `padded` reads only the `n` values the caller guarantees.
        let buf = unsafe { padded(p, n, bf16::ZERO) };
        // SAFETY: `buf` holds 16 values.
        unsafe { Self::load16(buf.as_ptr()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // SAFETY: 8 readable bf16 values are 16 bytes; widened as in `load16`.
        unsafe {
            let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
        }
    }
}
