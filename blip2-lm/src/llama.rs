//! LLaMA (transformers' `LlamaForCausalLM`, the architecture of Vicuna): a decoder-only
//! transformer with RMSNorm, rotary position embeddings, a SiLU-gated MLP and grouped-query
//! attention.

use blip2_core::config::{Activation, LlamaConfig};
use blip2_core::error::Result;
use blip2_core::nn::Dense;
use blip2_core::{nn, Weights};
use burn::module::{Module, Param};
use burn::tensor::{s, Bool, DType, Device, Tensor, TensorData};

use crate::cache::KvCache;
use crate::decoder::{DecoderOnly, DecoderState};

/// `LlamaRMSNorm`: `weight * (x / sqrt(mean(x²) + eps))`, the normalisation computed in f32 and
/// rounded back to the input's precision before the weight is applied, as transformers does.
#[derive(Module, Debug)]
pub struct LlamaRmsNorm {
    weight: Param<Tensor<1>>,
    eps: f64,
}

impl LlamaRmsNorm {
    fn load(w: &Weights, dim: usize, eps: f64, device: &Device) -> Result<Self> {
        Ok(LlamaRmsNorm {
            weight: nn::param(w, "weight", [dim], device)?,
            eps,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let dtype = x.dtype();
        let dim = self.weight.dims()[0];
        let x = x.cast(DType::F32);
        let variance = x.clone().powf_scalar(2.0).mean_dim(2);
        let normed = (x * (variance + self.eps).sqrt().recip()).cast(dtype);
        self.weight.val().reshape([1, 1, dim]) * normed
    }
}

/// `LlamaRotaryEmbedding` (the `default` type): cosine and sine tables of every position, computed
/// in f32 as transformers does (`inv_freq = 1 / θ^(2i/d)`, angles `position · inv_freq`, the
/// half-width table repeated twice).
#[derive(Module, Debug)]
pub struct LlamaRotaryEmbedding {
    /// `[positions, head_dim]`.
    cos: Tensor<2>,
    /// `[positions, head_dim]`.
    sin: Tensor<2>,
}

impl LlamaRotaryEmbedding {
    fn new(positions: usize, head_dim: usize, theta: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(positions * head_dim);
        let mut sin = Vec::with_capacity(positions * head_dim);
        for p in 0..positions {
            for _ in 0..2 {
                for &f in &inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let table =
            |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [positions, head_dim]), device);
        LlamaRotaryEmbedding {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// `(cos, sin)` of `positions` (one per row and new position, row-major), as
    /// `[rows, 1, new, head_dim]` in `dtype`.
    fn at(&self, positions: &[i64], rows: usize, dtype: DType) -> (Tensor<4>, Tensor<4>) {
        let new = positions.len() / rows;
        let head_dim = self.cos.dims()[1];
        let ids = nn::index_tensor(positions, &self.cos.device());
        let pick = |t: &Tensor<2>| {
            t.clone()
                .select(0, ids.clone())
                .reshape([rows, 1, new, head_dim])
                .cast(dtype)
        };
        (pick(&self.cos), pick(&self.sin))
    }
}

/// `rotate_half`: `[x1, x2] → [-x2, x1]` over the last dimension.
fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let [b, h, n, d] = x.dims();
    let x1 = x.clone().slice(s![.., .., .., 0..d / 2]);
    let x2 = x.slice(s![.., .., .., d / 2..d]);
    let out = Tensor::cat(vec![x2.neg(), x1], 3);
    debug_assert_eq!(out.dims(), [b, h, n, d]);
    out
}

/// `apply_rotary_pos_emb` for one of q or k: `x · cos + rotate_half(x) · sin`.
fn rotate(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    x.clone() * cos.clone() + rotate_half(x) * sin.clone()
}

/// `LlamaAttention`: q, k, v (k and v with `num_key_value_heads` heads, shared by groups of query
/// heads) and o projections, rotary positions on q and k, scores scaled by `head_dim^-0.5`.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    o_proj: Dense,
    num_heads: usize,
    kv_heads: usize,
}

impl LlamaAttention {
    fn load(w: &Weights, c: &LlamaConfig, device: &Device) -> Result<Self> {
        let (h, d) = (c.hidden_size, c.head_dim());
        let (q, kv) = (c.num_attention_heads * d, c.kv_heads() * d);
        let bias = c.attention_bias;
        Ok(LlamaAttention {
            q_proj: nn::linear(&w.pp("q_proj"), h, q, bias, device)?,
            k_proj: nn::linear(&w.pp("k_proj"), h, kv, bias, device)?,
            v_proj: nn::linear(&w.pp("v_proj"), h, kv, bias, device)?,
            o_proj: nn::linear(&w.pp("o_proj"), q, h, bias, device)?,
            num_heads: c.num_attention_heads,
            kv_heads: c.kv_heads(),
        })
    }

    fn forward(
        &self,
        x: Tensor<3>,
        rotary: &(Tensor<4>, Tensor<4>),
        mask: Tensor<4, Bool>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        let (cos, sin) = rotary;
        let q = nn::split_heads(self.q_proj.forward(x.clone()), self.num_heads);
        let k = nn::split_heads(self.k_proj.forward(x.clone()), self.kv_heads);
        let v = nn::split_heads(self.v_proj.forward(x), self.kv_heads);
        let (q, k) = (rotate(q, cos, sin), rotate(k, cos, sin));
        let (k, v) = cache.write(layer, k, v, mask.dims()[3]);
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        self.o_proj
            .forward(nn::merge_heads(nn::scaled_attention(q, k, v, Some(mask))))
    }

    /// `repeat_kv`: each key/value head serves `num_heads / kv_heads` consecutive query heads.
    fn repeat_kv(&self, x: Tensor<4>) -> Tensor<4> {
        let groups = self.num_heads / self.kv_heads;
        if groups == 1 {
            return x;
        }
        let [b, kv, n, d] = x.dims();
        x.reshape([b, kv, 1, n, d])
            .expand([b, kv, groups, n, d])
            .reshape([b, kv * groups, n, d])
    }
}

/// `LlamaMLP`: `down(act(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    gate_proj: Dense,
    up_proj: Dense,
    down_proj: Dense,
    #[module(skip)]
    activation: Activation,
}

impl LlamaMlp {
    fn load(w: &Weights, c: &LlamaConfig, device: &Device) -> Result<Self> {
        let (h, i, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        Ok(LlamaMlp {
            gate_proj: nn::linear(&w.pp("gate_proj"), h, i, bias, device)?,
            up_proj: nn::linear(&w.pp("up_proj"), h, i, bias, device)?,
            down_proj: nn::linear(&w.pp("down_proj"), i, h, bias, device)?,
            activation: c.hidden_act,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up, down) = (&self.gate_proj, &self.up_proj, &self.down_proj);
        nn::gated_feed_forward(self.activation, gate, up, down, x)
    }
}

/// `LlamaDecoderLayer`: pre-norm attention and MLP, each with a residual.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    self_attn: LlamaAttention,
    mlp: LlamaMlp,
    input_layernorm: LlamaRmsNorm,
    post_attention_layernorm: LlamaRmsNorm,
}

impl LlamaDecoderLayer {
    fn load(w: &Weights, c: &LlamaConfig, device: &Device) -> Result<Self> {
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        Ok(LlamaDecoderLayer {
            self_attn: LlamaAttention::load(&w.pp("self_attn"), c, device)?,
            mlp: LlamaMlp::load(&w.pp("mlp"), c, device)?,
            input_layernorm: LlamaRmsNorm::load(&w.pp("input_layernorm"), h, eps, device)?,
            post_attention_layernorm: LlamaRmsNorm::load(
                &w.pp("post_attention_layernorm"),
                h,
                eps,
                device,
            )?,
        })
    }

    fn forward(
        &self,
        x: Tensor<3>,
        rotary: &(Tensor<4>, Tensor<4>),
        mask: Tensor<4, Bool>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        let attended = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            rotary,
            mask,
            cache,
            layer,
        );
        let x = x + attended;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()));
        x + mlp
    }
}

/// LLaMA with its language-modelling head (`lm_head`, or `embed_tokens` when tied).
#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    embed_tokens: Param<Tensor<2>>,
    layers: Vec<LlamaDecoderLayer>,
    norm: LlamaRmsNorm,
    /// `[vocab, hidden]` (PyTorch's layout).
    lm_head: Dense,
    rotary: LlamaRotaryEmbedding,
    kv_heads: usize,
    head_dim: usize,
    max_positions: usize,
}

/// Decoding state of a batch of LLaMA rows (the same as OPT's).
pub type LlamaState = DecoderState;

impl LlamaForCausalLM {
    /// Loads `language_model.*` from `w` (the view of `language_model`: `model.*` and
    /// `lm_head.weight`).
    pub fn load(w: &Weights, c: &LlamaConfig, device: &Device) -> Result<Self> {
        c.validate()?;
        let m = w.pp("model");
        let (h, v) = (c.hidden_size, c.vocab_size);
        let layers = (0..c.num_hidden_layers)
            .map(|i| LlamaDecoderLayer::load(&m.pp("layers").pp(i), c, device))
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = nn::param(&m, "embed_tokens.weight", [v, h], device)?;
        let lm_head = match w.get_optional("lm_head.weight", &[v, h])? {
            Some(data) => nn::head(w, nn::tensor(data, device))?,
            None if c.tie_word_embeddings => nn::head(w, embed_tokens.val())?,
            None => return Err(w.missing("lm_head.weight")),
        };
        Ok(LlamaForCausalLM {
            embed_tokens,
            layers,
            norm: LlamaRmsNorm::load(&m.pp("norm"), h, c.rms_norm_eps, device)?,
            lm_head,
            rotary: LlamaRotaryEmbedding::new(
                c.max_position_embeddings,
                c.head_dim(),
                c.rope_theta(),
                device,
            ),
            kv_heads: c.kv_heads(),
            head_dim: c.head_dim(),
            max_positions: c.max_position_embeddings,
        })
    }

    fn device(&self) -> Device {
        self.embed_tokens.val().device()
    }

    /// [`DecoderOnly::run`].
    fn decode(
        &self,
        embeds: Tensor<3>,
        positions: &[i64],
        mask: Tensor<4, Bool>,
        cache: &mut KvCache,
    ) -> Tensor<2> {
        let [rows, new, hidden] = embeds.dims();
        let rotary = self.rotary.at(positions, rows, embeds.dtype());
        let mut x = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, &rotary, mask.clone(), cache, i);
        }
        cache.advance(new);
        let last = self.norm.forward(x.slice(s![.., new - 1..new, ..]));
        self.lm_head
            .forward(last.reshape([rows, hidden]))
            .cast(DType::F32)
    }
}

impl DecoderOnly for LlamaForCausalLM {
    // transformers' generate(): positions = cumsum(mask) - 1, padding at 0.
    const PAD_POSITION: i64 = 0;

    fn token_embeddings(&self) -> Tensor<2> {
        self.embed_tokens.val()
    }

    fn position_limit(&self) -> usize {
        self.max_positions
    }

    fn new_cache(&self, rows: usize, capacity: usize) -> KvCache {
        KvCache::new(
            self.layers.len(),
            rows,
            self.kv_heads,
            capacity,
            self.head_dim,
            (&self.device(), self.embed_tokens.dtype()),
        )
    }

    fn run(
        &self,
        embeds: Tensor<3>,
        positions: &[i64],
        mask: Tensor<4, Bool>,
        cache: &mut KvCache,
    ) -> Tensor<2> {
        self.decode(embeds, positions, mask, cache)
    }
}
