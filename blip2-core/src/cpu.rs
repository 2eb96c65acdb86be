//! Linear layers on burn-flex through the `blip2-kernels` crate (feature `flex`): a few rows times
//! a large weight, the shape of every decoding step, where burn's matrix product leaves most
//! of the memory bandwidth unused (and, in f16 and bf16, first converts the whole weight to f32).
//!
//! `BLIP2_KERNELS=off` sends every product back to burn (to compare); `portable`, `avx2` and
//! `avx512` force a kernel level (see `blip2_kernels::Level::detected`).

use std::sync::OnceLock;

use blip2_kernels::{bf16, f16, Weight};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::{DType, Element, Tensor, TensorData};

/// `x Wᵀ (+ b)` for `x: [rows, in]`, `W: [out, in]`, `b: [out]`, computed by the kernels when
/// they apply: at most [`blip2_kernels::MAX_ROWS`] rows, `x`, `W` and `b` of one dtype (f32, f16
/// or bf16), contiguous and on the flex backend. `None` otherwise, and the caller uses burn's
/// product.
///
/// In f16 and bf16 the products are summed in f32 and rounded to the dtype, then the bias is
/// added and the sum rounded again: the same numbers as burn's product followed by its addition,
/// so the kernels change the speed and nothing else. (PyTorch rounds once, after the bias; doing
/// that here measured 1.5–2.5× farther from transformers' and from the f32 results at the tiny
/// fixtures' Q-Former and logits, whose other layers are burn's — see docs/performance.md.)
pub fn linear(x: &Tensor<2>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Option<Tensor<2>> {
    let rows = x.dims()[0];
    let dtype = weight.dtype();
    if !enabled()
        || rows == 0
        || rows > blip2_kernels::MAX_ROWS
        || x.dtype() != dtype
        || bias.is_some_and(|b| b.dtype() != dtype)
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
    let [_, d_in] = x.dims();
    let out = weight.dims()[0];
    let data = match dtype {
        DType::F32 => {
            let mut y = vec![0f32; rows * out];
            let b = slice::<f32>(b.as_ref())?;
            blip2_kernels::linear(xs.as_slice()?, w.as_slice()?, b, d_in, &mut y);
            TensorData::new(y, [rows, out])
        }
        DType::F16 => TensorData::new(half::<f16>(&xs, &w, b.as_ref(), d_in)?, [rows, out]),
        DType::BF16 => TensorData::new(half::<bf16>(&xs, &w, b.as_ref(), d_in)?, [rows, out]),
        _ => return None,
    };
    Some(crate::nn::tensor(data, &x.device()))
}

/// Runs `f` on `x`'s f32 values in place when `x` is a contiguous f32 tensor on burn-flex;
/// `None` otherwise (nothing is run).
pub fn with_f32_slice<R>(x: &Tensor<2>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let xs = x.clone().try_into_primitive::<Flex>().ok()?;
    Some(f(xs.as_slice::<f32>()?))
}

/// A 16-bit float the kernels read and the output is rounded to.
trait Half: Weight + Element + bytemuck::Pod {
    fn round(v: f32) -> Self;
}

impl Half for f16 {
    fn round(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Half for bf16 {
    fn round(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// The product for 16-bit `x`, `w` and `b`: `x` widened to f32 (exactly), the sums in f32, each
/// rounded to `H`, then the bias added (and rounded) as burn adds it. `None` where a tensor is
/// not contiguous.
fn half<H: Half>(
    x: &FlexTensor,
    w: &FlexTensor,
    b: Option<&FlexTensor>,
    d_in: usize,
) -> Option<Vec<H>> {
    let w = w.as_slice::<H>()?;
    let b = slice::<H>(b)?;
    let x: Vec<f32> = x.as_slice::<H>()?.iter().map(|v| v.to_f32()).collect();
    let out = w.len() / d_in;
    let mut y = vec![0f32; x.len() / d_in * out];
    blip2_kernels::linear(&x, w, None, d_in, &mut y);
    Some(match b {
        Some(b) => y
            .into_iter()
            .zip(b.iter().cycle())
            .map(|(v, b)| H::round(H::round(v).to_f32() + b.to_f32()))
            .collect(),
        None => y.into_iter().map(H::round).collect(),
    })
}

/// The bias's values: `Some(None)` without a bias, `None` if it is not contiguous.
fn slice<E: Element + bytemuck::Pod>(b: Option<&FlexTensor>) -> Option<Option<&[E]>> {
    match b {
        Some(b) => Some(Some(b.as_slice::<E>()?)),
        None => Some(None),
    }
}

/// Whether `BLIP2_KERNELS` leaves the kernels on (read once).
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("BLIP2_KERNELS").map_or(true, |v| v != "off"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The kernels' result against burn's product and bias addition on the same tensors, in the
    /// same dtype (burn widens 16-bit operands to f32 and rounds the product, then the sum).
    #[test]
    fn kernels_agree_with_burn_in_every_dtype() {
        let device = burn::tensor::Device::default();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (rows, d_in, out) in [(1, 64, 96), (3, 33, 17), (16, 256, 40)] {
                let x =
                    Tensor::<2>::random([rows, d_in], Distribution::Uniform(-1.0, 1.0), &device)
                        .cast(dtype);
                let w = Tensor::<2>::random([out, d_in], Distribution::Uniform(-1.0, 1.0), &device)
                    .cast(dtype);
                let b = Tensor::<1>::random([out], Distribution::Uniform(-1.0, 1.0), &device)
                    .cast(dtype);
                for bias in [None, Some(&b)] {
                    let got = linear(&x, &w, bias).expect("the kernels apply");
                    assert_eq!(got.dtype(), dtype);
                    let product = x.clone().matmul(w.clone().transpose());
                    let want = match bias {
                        Some(b) => product + b.clone().unsqueeze::<2>(),
                        None => product,
                    }
                    .cast(DType::F32);
                    let diff: f32 = (got.cast(DType::F32) - want.clone())
                        .abs()
                        .max()
                        .into_scalar();
                    let scale: f32 = want.abs().max().into_scalar();
                    // Summation order only: within a unit in the last place of the dtype.
                    let ulp = match dtype {
                        DType::F32 => 1e-5,
                        DType::F16 => 1e-3,
                        _ => 8e-3,
                    };
                    assert!(
                        diff <= ulp * scale,
                        "{dtype:?} {rows}x{d_in}x{out}: {diff} vs {scale}"
                    );
                }
            }
        }
    }
}
