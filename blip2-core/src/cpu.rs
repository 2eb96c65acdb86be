//! Linear layers on burn-flex through the `blip2-kernels` crate (feature `flex`): a few rows times
//! a large f32 weight, the shape of every decoding step, where burn's matrix product leaves most
//! of the memory bandwidth unused.
//!
//! `BLIP2_KERNELS=off` sends every product back to burn (to compare); `portable`, `avx2` and
//! `avx512` force a kernel level (see `blip2_kernels::Level::detected`).

use std::sync::OnceLock;

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};

/// `x Wᵀ (+ b)` for `x: [rows, in]`, `W: [out, in]`, `b: [out]`, computed by the kernels when
/// they apply: at most [`blip2_kernels::MAX_ROWS`] rows, everything f32, contiguous and on the
/// flex backend. `None` otherwise, and the caller uses burn's product.
pub fn linear(x: &Tensor<2>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Option<Tensor<2>> {
    let [rows, d_in] = x.dims();
    let [out, _] = weight.dims();
    if !enabled()
        || rows == 0
        || rows > blip2_kernels::MAX_ROWS
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || bias.is_some_and(|b| b.dtype() != DType::F32)
    {
        return None;
    }
    // O(1): the primitives share their storage with the tensors.
    let w = weight.clone().try_into_primitive::<Flex>().ok()?;
    let xs = x.clone().try_into_primitive::<Flex>().ok()?;
    let b = match bias {
        Some(b) => Some(b.clone().try_into_primitive::<Flex>().ok()?),
        None => None,
    };
    let b_slice = match &b {
        Some(b) => Some(b.as_slice::<f32>()?),
        None => None,
    };
    let mut y = vec![0f32; rows * out];
    blip2_kernels::linear_f32(
        xs.as_slice::<f32>()?,
        w.as_slice::<f32>()?,
        b_slice,
        d_in,
        &mut y,
    );
    Some(Tensor::from_data(
        TensorData::new(y, [rows, out]),
        &x.device(),
    ))
}

/// Whether `BLIP2_KERNELS` leaves the kernels on (read once).
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("BLIP2_KERNELS").map_or(true, |v| v != "off"))
}
