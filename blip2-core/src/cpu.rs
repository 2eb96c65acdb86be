//! Linear layers on burn-flex through the `blip2-kernels` crate (feature `flex`): a few rows times
//! a large weight, the shape of every decoding step, where burn's matrix product leaves most
//! of the memory bandwidth unused (and, in f16 and bf16, first converts the whole weight to f32),
//! and many rows (image encoding, prefill) through `gemm`'s blocked kernels called on the weight
//! in place, where burn's product goes through transposed copies.
//!
//! `BLIP2_KERNELS=off` sends every product back to burn (to compare); `portable`, `avx2` and
//! `avx512` force a kernel level (see `blip2_kernels::Level::detected`).

use std::sync::OnceLock;

use blip2_kernels::{bf16, f16, PackedMatrix, Weight};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::{DType, Element, Tensor, TensorData};

/// `x Wᵀ (+ b)` for `x: [rows, in]`, `W: [out, in]`, `b: [out]`, computed by the kernels when
/// they apply: `x`, `W` and `b` of one dtype (f32, f16 or bf16), contiguous and on the flex
/// backend; up to [`blip2_kernels::MAX_ROWS`] rows by the matrix-vector kernels, more by `gemm`.
/// With the kernels off (`BLIP2_KERNELS=off`), f16 and bf16 on flex go through burn's f32
/// product (below). `None` otherwise, and the caller uses burn's product.
///
/// In f16 and bf16 the products and the bias are summed in f32 and rounded once, as torch's CPU
/// linear layer computes them (checked element for element against torch 2.15 on this project's
/// machine); with the kernels off the product is burn's over the operands widened to f32, with
/// the same single rounding. burn's own half-precision product rounds before the bias is added:
/// on the tiny InstructBLIP fixture that second rounding put the f16 Q-Former output 6.7e-3
/// (rms) from f32, against 4.0e-3 without it and transformers' 3.2e-3 (docs/performance.md).
pub fn linear(x: &Tensor<2>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Option<Tensor<2>> {
    let rows = x.dims()[0];
    let dtype = weight.dtype();
    if !enabled() {
        // The same numbers without the kernels (`BLIP2_KERNELS=off` changes only the speed).
        return wide_half(x, weight, bias);
    }
    if rows == 0 || x.dtype() != dtype || bias.is_some_and(|b| b.dtype() != dtype) {
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

/// With the kernels off, in f16 or bf16 on flex: burn's product of the operands widened to f32
/// (exactly), the bias added in f32, and one rounding, as torch computes it (burn's
/// half-precision product widens both operands too, but rounds before the bias is added). `None`
/// for f32, and off flex.
fn wide_half(x: &Tensor<2>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Option<Tensor<2>> {
    let dtype = weight.dtype();
    if !matches!(dtype, DType::F16 | DType::BF16)
        || x.dtype() != dtype
        || bias.is_some_and(|b| b.dtype() != dtype)
    {
        return None;
    }
    // Only on flex: other backends multiply half precision natively.
    weight.clone().try_into_primitive::<Flex>().ok()?;
    let y = crate::nn::project_burn(x.clone().cast(DType::F32), weight.clone().cast(DType::F32));
    let y = match bias {
        Some(b) => y + b.clone().cast(DType::F32).unsqueeze::<2>(),
        None => y,
    };
    Some(y.cast(dtype))
}

/// A weight packed once, at load, for products of many rows (image encoding): the f32, f16
/// or bf16 weight in `blip2_kernels::PackedMatrix`'s panels, or a bf16 weight in AMX tiles
/// where the CPU has them ([`blip2_kernels::amx_available`]), and the bias in f32.
#[derive(Debug)]
pub struct Packed {
    weight: PackedWeight,
    bias: Option<Vec<f32>>,
}

/// The packed weight, in the model's dtype.
#[derive(Debug)]
enum PackedWeight {
    F32(PackedMatrix<f32>),
    F16(PackedMatrix<f16>),
    Bf16(PackedMatrix<bf16>),
    #[cfg(target_arch = "x86_64")]
    Amx(blip2_kernels::AmxMatrix),
}

impl Packed {
    /// `weight` (`[out, in]`) and `bias` (`[out]`) packed, when the kernels are on, both are
    /// contiguous flex tensors of one dtype among f32, f16 and bf16; `None` otherwise.
    pub fn new(weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Option<Packed> {
        let dtype = weight.dtype();
        if !enabled() || bias.is_some_and(|b| b.dtype() != dtype) {
            return None;
        }
        let w = weight.clone().try_into_primitive::<Flex>().ok()?;
        let b = match bias {
            Some(b) => Some(b.clone().try_into_primitive::<Flex>().ok()?),
            None => None,
        };
        let d_in = weight.dims()[1];
        let (weight, bias) = match dtype {
            DType::F32 => (
                PackedWeight::F32(PackedMatrix::pack(w.as_slice()?, d_in)),
                wide::<f32>(b.as_ref())?,
            ),
            DType::F16 => (
                PackedWeight::F16(PackedMatrix::pack(w.as_slice()?, d_in)),
                wide::<f16>(b.as_ref())?,
            ),
            DType::BF16 => {
                let w = w.as_slice::<bf16>()?;
                #[cfg(target_arch = "x86_64")]
                let weight = if blip2_kernels::amx_available() {
                    PackedWeight::Amx(blip2_kernels::AmxMatrix::pack(w, d_in))
                } else {
                    PackedWeight::Bf16(PackedMatrix::pack(w, d_in))
                };
                #[cfg(not(target_arch = "x86_64"))]
                let weight = PackedWeight::Bf16(PackedMatrix::pack(w, d_in));
                (weight, wide::<bf16>(b.as_ref())?)
            }
            _ => return None,
        };
        Some(Packed { weight, bias })
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        match &self.weight {
            PackedWeight::F32(m) => m.d_out(),
            PackedWeight::F16(m) => m.d_out(),
            PackedWeight::Bf16(m) => m.d_out(),
            #[cfg(target_arch = "x86_64")]
            PackedWeight::Amx(m) => m.d_out(),
        }
    }

    /// The weight's dtype, also the input's and the output's.
    pub fn dtype(&self) -> DType {
        match &self.weight {
            PackedWeight::F32(_) => DType::F32,
            PackedWeight::F16(_) => DType::F16,
            PackedWeight::Bf16(_) => DType::BF16,
            #[cfg(target_arch = "x86_64")]
            PackedWeight::Amx(_) => DType::BF16,
        }
    }

    /// Bytes the packed weight (padding included) and the bias hold.
    pub fn size_bytes(&self) -> usize {
        let weight = match &self.weight {
            PackedWeight::F32(m) => m.size_bytes(),
            PackedWeight::F16(m) => m.size_bytes(),
            PackedWeight::Bf16(m) => m.size_bytes(),
            #[cfg(target_arch = "x86_64")]
            PackedWeight::Amx(m) => m.size_bytes(),
        };
        weight + 4 * self.bias.as_ref().map_or(0, Vec::len)
    }

    /// `x Wᵀ + b` for `x: [rows, in]` in the layer's dtype (a flex tensor): the products and
    /// the bias summed in f32, rounded once to the dtype. Reads `x` in place when it is
    /// contiguous, through a copy otherwise.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [rows, _] = x.dims();
        let out = self.d_out();
        let device = x.device();
        let bias = self.bias.as_deref();
        let mut y = vec![0f32; rows * out];
        let data = match &self.weight {
            PackedWeight::F32(m) => {
                with_values::<f32>(x, |x| blip2_kernels::linear_packed(x, m, bias, &mut y));
                TensorData::new(y, [rows, out])
            }
            PackedWeight::F16(m) => {
                with_values::<f16>(x, |x| blip2_kernels::linear_packed(x, m, bias, &mut y));
                rounded::<f16>(y, rows, out)
            }
            PackedWeight::Bf16(m) => {
                with_values::<bf16>(x, |x| blip2_kernels::linear_packed(x, m, bias, &mut y));
                rounded::<bf16>(y, rows, out)
            }
            #[cfg(target_arch = "x86_64")]
            PackedWeight::Amx(m) => {
                with_values::<bf16>(x, |x| blip2_kernels::linear_amx(x, m, bias, &mut y));
                rounded::<bf16>(y, rows, out)
            }
        };
        crate::nn::tensor(data, &device)
    }
}

/// Runs `f` on `x`'s values as `E` (the tensor's dtype): in place on flex when contiguous,
/// from a copy otherwise.
fn with_values<E: Element + bytemuck::Pod>(x: Tensor<2>, f: impl FnOnce(&[E])) {
    if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
        if let Some(values) = p.as_slice::<E>() {
            return f(values);
        }
    }
    let data = x.into_data().convert::<E>();
    f(data.as_slice::<E>().expect("converted"))
}

/// f32 sums rounded once to `H`, as `[rows, out]`.
fn rounded<H: Half>(y: Vec<f32>, rows: usize, out: usize) -> TensorData {
    TensorData::new(y.into_iter().map(H::round).collect::<Vec<H>>(), [rows, out])
}

/// A bias's values widened to f32: `Some(None)` without a bias, `None` if not contiguous.
fn wide<E: Weight + Element + bytemuck::Pod>(b: Option<&FlexTensor>) -> Option<Option<Vec<f32>>> {
    Some(slice::<E>(b)?.map(|b| b.iter().map(|v| v.to_f32()).collect()))
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

/// The product for 16-bit `x`, `w` and `b`: `x` widened to f32 (exactly), the sums and the bias
/// in f32, each output rounded once to `H`. `None` where a tensor is not contiguous.
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
            .map(|(v, b)| H::round(v + b.to_f32()))
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

    /// The result against a reference from the operands widened to f32, product and bias summed
    /// in f32 and rounded once to the dtype (what torch computes), through the matrix-vector
    /// kernels (up to 16 rows) and `gemm` (more), or burn's wide product with the kernels off
    /// (`BLIP2_KERNELS=off`; f32 then has no result here). Summation order may move an output across a rounding
    /// boundary now and then, never by more than a unit in the last place; a second rounding
    /// (product, then bias) changes about a third of the outputs, which the count below catches.
    #[test]
    fn one_rounding_after_the_bias_in_every_dtype() {
        let device = burn::tensor::Device::default();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (rows, d_in, out) in [(1, 64, 96), (3, 33, 17), (16, 256, 40), (40, 96, 48)] {
                let x =
                    Tensor::<2>::random([rows, d_in], Distribution::Uniform(-1.0, 1.0), &device)
                        .cast(dtype);
                let w = Tensor::<2>::random([out, d_in], Distribution::Uniform(-1.0, 1.0), &device)
                    .cast(dtype);
                let b = Tensor::<1>::random([out], Distribution::Uniform(-1.0, 1.0), &device)
                    .cast(dtype);
                for bias in [None, Some(&b)] {
                    let Some(got) = linear(&x, &w, bias) else {
                        // burn's own f32 product, with the kernels off.
                        assert!(dtype == DType::F32 && !enabled());
                        continue;
                    };
                    assert_eq!(got.dtype(), dtype);
                    let wide = |t: &Tensor<2>| t.clone().cast(DType::F32);
                    let product = wide(&x).matmul(wide(&w).transpose());
                    let want = match bias {
                        Some(b) => product + b.clone().cast(DType::F32).unsqueeze::<2>(),
                        None => product,
                    }
                    .cast(dtype)
                    .cast(DType::F32);
                    let got: Vec<f32> = got
                        .cast(DType::F32)
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap();
                    let want: Vec<f32> = want.into_data().try_to_vec::<f32>().unwrap();
                    // A unit in the last place at the largest output (f32: summation order
                    // over up to 256 terms, as the old check allowed).
                    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let ulp = match dtype {
                        DType::F32 => 1e-5,
                        DType::F16 => 2f32.powi(-10),
                        _ => 2f32.powi(-7),
                    };
                    let mut differ = 0;
                    for (g, r) in got.iter().zip(&want) {
                        let diff = (g - r).abs();
                        assert!(
                            diff <= ulp * scale,
                            "{dtype:?} {rows}x{d_in}x{out}: {g} against {r}"
                        );
                        differ += usize::from(diff > 0.0);
                    }
                    if dtype != DType::F32 {
                        assert!(
                            differ * 50 <= got.len(),
                            "{dtype:?} {rows}x{d_in}x{out} bias {}: {differ} of {} outputs differ",
                            bias.is_some(),
                            got.len()
                        );
                    }
                }
            }
        }
    }

    /// A packed layer (AVX-512 or portable panels; bf16 on AMX where the CPU has it) against the
    /// layer on the weight in place: the same dtype, and the same values up to summation order
    /// (a unit in the last place at the largest output), with and without a bias, at row
    /// counts around the kernels' blocks. With the kernels off nothing is packed.
    #[test]
    fn packed_layers_give_the_unpacked_results() {
        let device = burn::tensor::Device::default();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (rows, d_in, out) in [(1, 64, 96), (13, 33, 17), (40, 300, 70)] {
                let random = |shape: [usize; 2]| {
                    Tensor::<2>::random(shape, Distribution::Uniform(-1.0, 1.0), &device)
                        .cast(dtype)
                };
                let (x, w) = (random([rows, d_in]), random([out, d_in]));
                let b = random([1, out]).reshape([out]);
                for bias in [None, Some(&b)] {
                    let Some(packed) = Packed::new(&w, bias) else {
                        assert!(!enabled(), "{dtype:?} not packed");
                        continue;
                    };
                    assert_eq!((packed.dtype(), packed.d_out()), (dtype, out));
                    let got = packed.forward(x.clone());
                    assert_eq!(got.dtype(), dtype);
                    let want = linear(&x, &w, bias).expect("the kernels are on");
                    let values = |t: Tensor<2>| -> Vec<f32> {
                        t.cast(DType::F32).into_data().try_to_vec::<f32>().unwrap()
                    };
                    let (got, want) = (values(got), values(want));
                    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let ulp = match dtype {
                        DType::F32 => 1e-5,
                        DType::F16 => 2f32.powi(-10),
                        _ => 2f32.powi(-7),
                    };
                    for (g, r) in got.iter().zip(&want) {
                        assert!(
                            (g - r).abs() <= ulp * scale,
                            "{dtype:?} {rows}x{d_in}x{out}: {g} against {r}"
                        );
                    }
                }
            }
        }
    }
}
