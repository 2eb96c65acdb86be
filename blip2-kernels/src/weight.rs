//! The weight element types the kernels read: f32, and f16 and bf16 converted to f32 in
//! registers (every conversion is exact).

use half::{bf16, f16};

/// An element type of the weight (and bias): `f32`, [`f16`](struct@crate::f16) or [`bf16`].
/// Products are summed in f32 whatever the weight's type. (int8 weights have their own layout
/// and kernel: [`Int8Matrix`](crate::Int8Matrix).)
pub trait Weight: Copy + Send + Sync + 'static + sealed::Loads {
    /// Zero (the padding of a packed weight's last panel).
    const ZERO: Self;

    /// Its value as f32 (exact).
    fn to_f32(self) -> f32;

    /// `values` themselves when they already are f32 (`None` for the 16-bit types).
    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        let _ = values;
        None
    }

    /// `values` widened to f32 into `out` (exact; the lengths must agree).
    fn widen(values: &[Self], out: &mut [f32]) {
        assert_eq!(values.len(), out.len(), "widen: lengths differ");
        out.iter_mut()
            .zip(values)
            .for_each(|(o, v)| *o = v.to_f32());
    }
}

impl Weight for f32 {
    const ZERO: Self = 0.0;

    fn to_f32(self) -> f32 {
        self
    }

    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }
}

impl Weight for f16 {
    const ZERO: Self = f16::ZERO;

    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn widen(values: &[Self], out: &mut [f32]) {
        // The `half` crate's slice conversion (F16C where the CPU has it).
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(values, out);
    }
}

impl Weight for bf16 {
    const ZERO: Self = bf16::ZERO;

    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

pub(crate) mod sealed {
    /// Vector loads that widen a weight type to f32 lanes, one set per instruction set. Sealed:
    /// the kernels are written for exactly the types above.
    pub trait Loads: Sized {
        /// 16 values from `p` as f32 lanes.
        ///
        /// # Safety
        /// AVX-512 F; `p` points at 16 readable values.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;

        /// The `n < 16` values at `p` as f32 lanes, the other lanes zero.
        ///
        /// # Safety
        /// AVX-512 F; `p` points at `n` readable values.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load16_tail(p: *const Self, n: usize) -> std::arch::x86_64::__m512;

        /// 8 values from `p` as f32 lanes.
        ///
        /// # Safety
        /// AVX2, FMA and F16C; `p` points at 8 readable values.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    }
}
