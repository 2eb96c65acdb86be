//! What the benches share.

use blip2_kernels::{bf16, f16, Weight};

/// A weight type the benches can fill.
pub trait Fill: Weight {
    /// Its name in the reports.
    const NAME: &'static str;
    /// `v` in this type.
    fn from(v: f32) -> Self;
}

impl Fill for f32 {
    const NAME: &'static str = "f32";
    fn from(v: f32) -> Self {
        v
    }
}

impl Fill for f16 {
    const NAME: &'static str = "f16";
    fn from(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Fill for bf16 {
    const NAME: &'static str = "bf16";
    fn from(v: f32) -> Self {
        bf16::from_f32(v)
    }
}
