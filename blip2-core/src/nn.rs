//! Small building blocks shared by the model crates: modules loaded from a [`Weights`] view by
//! their transformers names, activations, and multi-head attention.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation, Bool, DType, Device, Int, Tensor, TensorData};

use crate::config::Activation;
use crate::error::{Error, Result};
use crate::weights::{Quantization, Weights};

/// A tensor from weight data, on `device`, keeping the data's dtype (the dtype the [`Weights`]
/// view converted it to).
pub fn tensor<const D: usize>(data: TensorData, device: &Device) -> Tensor<D> {
    let dtype = data.dtype();
    Tensor::from_data(data, (device, dtype))
}

/// Reads `name` with `shape` as a parameter tensor.
pub fn param<const D: usize>(
    w: &Weights,
    name: &str,
    shape: [usize; D],
    device: &Device,
) -> Result<Param<Tensor<D>>> {
    Ok(Param::from_tensor(tensor(w.get(name, &shape)?, device)))
}

/// A linear layer, `y = x Wᵀ + b`, with the weight kept in PyTorch's `[out, in]` layout (loading
/// neither copies nor transposes it), or quantized to int8 ([`Dense::int8`]).
///
/// On burn-flex with the `flex` feature, a product of at most 16 rows in f32 (a decoding step)
/// goes through `blip2-kernels`, bias fused; anything else is computed by [`project`]. An int8
/// layer always runs on `blip2-kernels` (the CPU), whatever the backend.
#[derive(Module, Debug)]
pub enum Dense {
    /// A weight and bias in burn's tensors, in the model's dtype.
    Float(FloatDense),
    /// An int8 weight with one f32 scale per output row, and an f32 bias, outside burn.
    Int8(Int8Dense),
    /// A weight packed once for products of many rows (image encoding) on the CPU kernels, in
    /// the model's dtype (AMX tiles for bf16 where the CPU has them), and an f32 bias; see
    /// [`Dense::packed`].
    #[cfg(feature = "flex")]
    Packed(PackedDense),
}

/// The parameters of a [`Dense::Packed`] layer, shared between clones.
#[cfg(feature = "flex")]
#[derive(Module, Debug)]
pub struct PackedDense {
    #[module(skip)]
    inner: std::sync::Arc<crate::cpu::Packed>,
}

/// The parameters of a [`Dense::Float`] layer.
#[derive(Module, Debug)]
pub struct FloatDense {
    /// `[out, in]`.
    weight: Param<Tensor<2>>,
    /// `[out]`.
    bias: Option<Param<Tensor<1>>>,
}

/// The parameters of a [`Dense::Int8`] layer, shared between clones (the kernels read them as
/// slices).
#[derive(Module, Debug)]
pub struct Int8Dense {
    #[module(skip)]
    inner: std::sync::Arc<Int8Linear>,
}

/// An int8 layer's parameters.
#[derive(Debug)]
struct Int8Linear {
    weight: blip2_kernels::Int8Matrix,
    bias: Option<Vec<f32>>,
}

impl Dense {
    /// A layer from its weight (`[out, in]`) and optional bias (`[out]`).
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Dense::Float(FloatDense {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
        })
    }

    /// An int8 layer: `weight` (`[out, in]`, f32 values) quantized with one scale per output row
    /// (see `blip2_kernels::Int8Matrix`), the bias (`[out]`) kept in f32. Inputs are cast to
    /// f32, and outputs are f32.
    ///
    /// Errors: [`Error::InvalidInput`] if the weight is not 2-d or holds an infinity or a NaN.
    pub fn int8(weight: &[f32], d_in: usize, bias: Option<Vec<f32>>) -> Result<Self> {
        let weight = blip2_kernels::Int8Matrix::quantize(weight, d_in)
            .map_err(|e| Error::InvalidInput(format!("int8 quantization: {e}")))?;
        if bias.as_ref().is_some_and(|b| b.len() != weight.d_out()) {
            return Err(Error::InvalidInput(format!(
                "a bias of {} values for an int8 layer of {} outputs",
                bias.map_or(0, |b| b.len()),
                weight.d_out()
            )));
        }
        let inner = std::sync::Arc::new(Int8Linear { weight, bias });
        Ok(Dense::Int8(Int8Dense { inner }))
    }

    /// This layer with its weight packed for products of many rows, for the layers of image
    /// encoding: on burn-flex with the kernels on (feature `flex`), an f32, f16 or bf16 layer
    /// becomes a [`Dense::Packed`] one (the packed copy replaces the tensor: no more memory);
    /// anything else is returned as it is. Same results up to summation order (in bf16 on AMX,
    /// the tile units' order and their flushing of subnormal inputs to zero).
    pub fn packed(self) -> Self {
        #[cfg(feature = "flex")]
        if let Dense::Float(f) = &self {
            let bias = f.bias.as_ref().map(Param::val);
            if let Some(p) = crate::cpu::Packed::new(&f.weight.val(), bias.as_ref()) {
                return Dense::Packed(PackedDense {
                    inner: std::sync::Arc::new(p),
                });
            }
        }
        self
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        match self {
            Dense::Float(f) => f.weight.dims()[0],
            Dense::Int8(q) => q.inner.weight.d_out(),
            #[cfg(feature = "flex")]
            Dense::Packed(p) => p.inner.d_out(),
        }
    }

    /// The dtype of the weight (f32 for an int8 layer, whose inputs and outputs are f32), which
    /// is also the dtype of the output.
    pub fn dtype(&self) -> DType {
        match self {
            Dense::Float(f) => f.weight.dtype(),
            Dense::Int8(_) => DType::F32,
            #[cfg(feature = "flex")]
            Dense::Packed(p) => p.inner.dtype(),
        }
    }

    /// Bytes the layer's weight and bias hold.
    pub fn size_bytes(&self) -> usize {
        match self {
            Dense::Float(f) => {
                let bias = f
                    .bias
                    .as_ref()
                    .map_or(0, |b| b.dims()[0] * b.dtype().size());
                f.weight.dims().iter().product::<usize>() * f.weight.dtype().size() + bias
            }
            Dense::Int8(q) => {
                q.inner.weight.size_bytes() + 4 * q.inner.bias.as_ref().map_or(0, Vec::len)
            }
            #[cfg(feature = "flex")]
            Dense::Packed(p) => p.inner.size_bytes(),
        }
    }

    /// Applies the layer to the last dimension of `x` (`[..., in]` → `[..., out]`).
    ///
    /// `x` is first cast to the weight's dtype, as PyTorch models do where a module kept in one
    /// precision reads the output of a module in another (a no-op when they already agree).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = x.cast(self.dtype());
        let mut dims = x.dims();
        let d_in = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let x = x.reshape([rows, d_in]);
        dims[D - 1] = self.d_out();
        match self {
            Dense::Float(f) => f.forward(x).reshape(dims),
            Dense::Int8(q) => int8_forward(x, &q.inner).reshape(dims),
            #[cfg(feature = "flex")]
            Dense::Packed(p) => p.inner.forward(x).reshape(dims),
        }
    }
}

impl FloatDense {
    /// `x Wᵀ + b` for `x: [rows, in]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let weight = self.weight.val();
        #[cfg(feature = "flex")]
        {
            let bias = self.bias.as_ref().map(Param::val);
            if let Some(y) = crate::cpu::linear(&x, &weight, bias.as_ref()) {
                return y;
            }
        }
        let y = project(x, weight);
        match &self.bias {
            Some(b) => y + b.val().unsqueeze::<2>(),
            None => y,
        }
    }
}

/// An int8 layer over `x: [rows, in]` (f32): on the kernels, reading `x` in place on burn-flex
/// and through a host copy elsewhere.
fn int8_forward(x: Tensor<2>, q: &Int8Linear) -> Tensor<2> {
    let rows = x.dims()[0];
    let mut y = vec![0f32; rows * q.weight.d_out()];
    let device = x.device();
    let bias = q.bias.as_deref();
    #[cfg(feature = "flex")]
    if crate::cpu::with_f32_slice(&x, |x| {
        blip2_kernels::linear_int8(x, &q.weight, bias, &mut y)
    })
    .is_some()
    {
        return tensor(TensorData::new(y, [rows, q.weight.d_out()]), &device);
    }
    let data = x.into_data().convert::<f32>();
    let x = data.as_slice::<f32>().expect("converted to f32");
    blip2_kernels::linear_int8(x, &q.weight, bias, &mut y);
    tensor(TensorData::new(y, [rows, q.weight.d_out()]), &device)
}

/// How many row blocks [`project`] splits a weight into.
const PROJECT_BLOCKS: usize = 4;

/// `x Wᵀ` for `x: [rows, in]` and `W: [out, in]` (PyTorch's layout), as `[rows, out]`.
///
/// With the `flex` feature, on burn-flex, at most 16 rows go through `blip2-kernels`
/// (memory-bound matrix-vector kernels), and more rows in f16 or bf16 through the product below
/// over operands widened to f32, rounded once (`cpu::linear`); otherwise, as follows.
///
/// Computed as `(W xᵀ)ᵀ` with `W`'s rows split into four blocks, one batched
/// matrix product. On the CPU backend this is both the fastest orientation for BLIP-2's shapes and
/// the only one that uses every core when `rows` is small: burn-flex runs a single
/// matrix-vector product (one decoding step) on one thread, but spreads the blocks of a batched
/// product over its thread pool. Measured with `[1, 2560] × [2560, 10240]` (an OPT-2.7b MLP
/// during decoding), 2 threads: 6 ms instead of 11 ms. The result is the same up to summation
/// order.
pub fn project(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if let Some(y) = crate::cpu::linear(&x, &weight, None) {
        return y;
    }
    project_burn(x, weight)
}

/// [`project`] by burn's matrix product alone (the kernels not asked), in `x`'s dtype.
pub(crate) fn project_burn(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    let [out, d_in] = weight.dims();
    let rows = x.dims()[0];
    let blocks = if out % PROJECT_BLOCKS == 0 {
        PROJECT_BLOCKS
    } else {
        1
    };
    let xt = x.transpose().unsqueeze::<3>();
    let y: Tensor<3> = weight.reshape([blocks, out / blocks, d_in]).matmul(xt);
    y.reshape([out, rows]).transpose()
}

/// `nn.Linear(d_in, d_out, bias)` stored under `w` as `weight` (`[d_out, d_in]`, PyTorch's layout)
/// and `bias`.
///
/// When `w` says [`Quantization::Int8`], the weight is read in f32 and quantized
/// ([`Dense::int8`]), and the bias kept in f32.
pub fn linear(
    w: &Weights,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &Device,
) -> Result<Dense> {
    if w.quantization() == Quantization::Int8 {
        let f32s = w.with_dtype(crate::WeightDType::F32);
        let bias = if bias {
            Some(f32_values(f32s.get("bias", &[d_out])?)?)
        } else {
            None
        };
        return Dense::int8(
            &f32_values(f32s.get("weight", &[d_out, d_in])?)?,
            d_in,
            bias,
        );
    }
    let weight = tensor(w.get("weight", &[d_out, d_in])?, device);
    let bias = if bias {
        Some(tensor(w.get("bias", &[d_out])?, device))
    } else {
        None
    };
    Ok(Dense::new(weight, bias))
}

/// A language-modelling head without bias over `weight` (`[vocab, hidden]`, read from `w` or
/// tied to an embedding table): int8 when `w` says [`Quantization::Int8`] (the table itself is
/// left as it is), else the tensor itself, shared.
pub fn head(w: &Weights, weight: Tensor<2>) -> Result<Dense> {
    if w.quantization() == Quantization::Int8 {
        let d_in = weight.dims()[1];
        let values = f32_values(weight.into_data())?;
        return Dense::int8(&values, d_in, None);
    }
    Ok(Dense::new(weight, None))
}

/// Weight data as f32 values (any float dtype is widened).
fn f32_values(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::InvalidInput(format!("weight data: {e:?}")))
}

/// `nn.LayerNorm`, computed in f32 whatever the precision of its input, the result rounded back to
/// that precision once, as PyTorch's kernels do for f16 and bf16 inputs. The result then does not
/// depend on how a backend reduces half-precision rows (burn-flex already gives the same either
/// way; GPU backends need not).
#[derive(Module, Debug)]
pub struct Norm {
    inner: LayerNorm,
}

impl From<LayerNorm> for Norm {
    /// burn's layer norm, computed in f32 (its parameters should be f32).
    fn from(inner: LayerNorm) -> Self {
        Norm { inner }
    }
}

impl Norm {
    /// Normalizes the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        self.inner.forward(x.cast(DType::F32)).cast(dtype)
    }
}

/// `nn.LayerNorm(dim, eps)` stored under `w` as `weight` and `bias` (read in `w`'s dtype, as the
/// model stores them, and kept in f32 for the computation).
pub fn layer_norm(w: &Weights, dim: usize, eps: f64, device: &Device) -> Result<Norm> {
    let read = |name: &str| -> Result<Tensor<1>> {
        Ok(tensor::<1>(w.get(name, &[dim])?, device).cast(DType::F32))
    };
    let mut inner = LayerNormConfig::new(dim).with_epsilon(eps).init(device);
    inner.gamma = Param::from_tensor(read("weight")?);
    inner.beta = Some(Param::from_tensor(read("bias")?));
    Ok(Norm { inner })
}

/// A gated feed-forward: `down(act(gate x) * up x)` (transformers' `LlamaMLP`,
/// `T5DenseGatedActDense`).
pub fn gated_feed_forward<const D: usize>(
    activation: Activation,
    gate: &Dense,
    up: &Dense,
    down: &Dense,
    x: Tensor<D>,
) -> Tensor<D> {
    let gated = activate(activation, gate.forward(x.clone()));
    down.forward(gated * up.forward(x))
}

/// Applies a transformers activation.
pub fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        Activation::Relu => activation::relu(x),
        Activation::Gelu => activation::gelu(x),
        Activation::GeluNew => activation::gelu_approximate(x),
        // burn's silu is `x · sigmoid(x)`, two roundings in half precision; torch's is one.
        Activation::Silu => in_f32(x, activation::silu),
        Activation::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
    }
}

/// `f(x)` computed in f32 and rounded once to `x`'s precision, as torch's CPU kernels compute an
/// element-wise function of f16 or bf16 values.
fn in_f32<const D: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<D>) -> Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return f(x);
    }
    f(x.cast(DType::F32)).cast(dtype)
}

/// Splits `[batch, seq, heads * head_dim]` into `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads])
        .swap_dims(1, 2)
}

/// Merges `[batch, heads, seq, head_dim]` back into `[batch, seq, heads * head_dim]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// Softmax attention over `[batch, heads, seq, head_dim]` inputs with scores scaled by
/// `head_dim^-0.5`; `mask` is true where a key must be ignored (broadcast over heads and queries
/// when given as `[batch, 1, 1, keys]`).
pub fn scaled_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    let head_dim = q.dims()[3];
    attend(q, k, v, mask, None, (head_dim as f64).powf(-0.5))
}

/// Softmax attention with scores `q·kᵀ · scale + bias`; `mask` (true = ignore) and `bias` are
/// broadcast to `[batch, heads, queries, keys]`.
pub fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    bias: Option<Tensor<4>>,
    scale: f64,
) -> Tensor<4> {
    let [batch, heads, seq_q, _] = q.dims();
    let seq_k = k.dims()[2];
    let shape = [batch, heads, seq_q, seq_k];
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: false,
    };
    // burn-flex computes f16 and bf16 attention in f32 and rounds only the output.
    attention(
        q,
        k,
        v,
        mask.map(|m| m.expand(shape)),
        bias.map(|b| b.expand(shape)),
        options,
    )
}

/// Looks up equal-length rows of token ids in an embedding table `[vocab, dim]`:
/// `[rows, len, dim]`. Rows of different lengths, or ids outside the vocabulary, are errors.
pub fn embed_rows(table: &Tensor<2>, ids: &[Vec<u32>]) -> Result<Tensor<3>> {
    let rows = ids.len();
    let len = ids.first().map_or(0, Vec::len);
    if ids.iter().any(|r| r.len() != len) {
        return Err(Error::InvalidInput(
            "token rows of different lengths".to_owned(),
        ));
    }
    let [vocab, dim] = table.dims();
    if let Some(bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidInput(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
    Ok(table
        .clone()
        .select(0, index_tensor(&flat, &table.device()))
        .reshape([rows, len, dim]))
}

/// A 1-D integer tensor of indices, for `select`.
pub fn index_tensor(indices: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(indices.to_vec(), [indices.len()]), device)
}
