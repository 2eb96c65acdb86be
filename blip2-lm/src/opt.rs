//! OPT (transformers' `OPTForCausalLM`): a decoder-only transformer with learned positions.

use blip2_core::config::{Activation, OptConfig};
use blip2_core::error::Result;
use blip2_core::nn::Dense;
use blip2_core::{nn, Weights};
use burn::module::{Module, Param};
use burn::tensor::{s, Bool, DType, Device, Tensor};

use crate::cache::KvCache;
use crate::decoder::{DecoderOnly, DecoderState};

/// `OPTAttention`: q (scaled by `head_dim^-0.5`), k, v and out projections with biases.
#[derive(Module, Debug)]
pub struct OptAttention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    out_proj: Dense,
    num_heads: usize,
}

impl OptAttention {
    fn load(w: &Weights, c: &OptConfig, device: &Device) -> Result<Self> {
        let h = c.hidden_size;
        let lin = |name: &str| nn::linear(&w.pp(name), h, h, c.enable_bias, device);
        Ok(OptAttention {
            q_proj: lin("q_proj")?,
            k_proj: lin("k_proj")?,
            v_proj: lin("v_proj")?,
            out_proj: lin("out_proj")?,
            num_heads: c.num_attention_heads,
        })
    }

    fn forward(
        &self,
        x: Tensor<3>,
        mask: Tensor<4, Bool>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        // The queries scaled after the projection, in the model's dtype, and the attention
        // unscaled: transformers' order, which rounds differently in f16 and bf16 from scaling
        // the scores (f32 alike up to summation order).
        let q = self.q_proj.forward(x.clone());
        let head_dim = q.dims()[2] / self.num_heads;
        let q = nn::split_heads(q * (head_dim as f64).powf(-0.5), self.num_heads);
        let k = nn::split_heads(self.k_proj.forward(x.clone()), self.num_heads);
        let v = nn::split_heads(self.v_proj.forward(x), self.num_heads);
        let (k, v) = cache.write(layer, k, v, mask.dims()[3]);
        self.out_proj
            .forward(nn::merge_heads(nn::attend(q, k, v, Some(mask), None, 1.0)))
    }
}

/// `OPTDecoderLayer`: attention and ReLU MLP, pre-norm (or post-norm when
/// `do_layer_norm_before` is false).
#[derive(Module, Debug)]
pub struct OptDecoderLayer {
    self_attn: OptAttention,
    self_attn_layer_norm: nn::Norm,
    fc1: Dense,
    fc2: Dense,
    final_layer_norm: nn::Norm,
    pre_norm: bool,
    #[module(skip)]
    activation: Activation,
}

impl OptDecoderLayer {
    fn load(w: &Weights, c: &OptConfig, device: &Device) -> Result<Self> {
        let (h, f, eps) = (c.hidden_size, c.ffn_dim, OptConfig::LAYER_NORM_EPS);
        Ok(OptDecoderLayer {
            self_attn: OptAttention::load(&w.pp("self_attn"), c, device)?,
            self_attn_layer_norm: nn::layer_norm(&w.pp("self_attn_layer_norm"), h, eps, device)?,
            fc1: nn::linear(&w.pp("fc1"), h, f, c.enable_bias, device)?,
            fc2: nn::linear(&w.pp("fc2"), f, h, c.enable_bias, device)?,
            final_layer_norm: nn::layer_norm(&w.pp("final_layer_norm"), h, eps, device)?,
            pre_norm: c.do_layer_norm_before,
            activation: c.activation_function,
        })
    }

    fn forward(
        &self,
        x: Tensor<3>,
        mask: Tensor<4, Bool>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        let attn_in = if self.pre_norm {
            self.self_attn_layer_norm.forward(x.clone())
        } else {
            x.clone()
        };
        let mut x = x + self.self_attn.forward(attn_in, mask, cache, layer);
        if !self.pre_norm {
            x = self.self_attn_layer_norm.forward(x);
        }
        let mlp_in = if self.pre_norm {
            self.final_layer_norm.forward(x.clone())
        } else {
            x.clone()
        };
        let mlp = self
            .fc2
            .forward(nn::activate(self.activation, self.fc1.forward(mlp_in)));
        let x = x + mlp;
        if self.pre_norm {
            x
        } else {
            self.final_layer_norm.forward(x)
        }
    }
}

/// OPT with its language-modelling head (tied to `embed_tokens` when the checkpoint has no
/// `lm_head`).
#[derive(Module, Debug)]
pub struct OptForCausalLM {
    embed_tokens: Param<Tensor<2>>,
    embed_positions: Param<Tensor<2>>,
    project_in: Option<Dense>,
    project_out: Option<Dense>,
    layers: Vec<OptDecoderLayer>,
    final_layer_norm: Option<nn::Norm>,
    /// `[vocab, embed_dim]` (PyTorch's layout).
    lm_head: Dense,
    num_heads: usize,
    max_positions: usize,
}

/// Decoding state of a batch of OPT rows: the KV cache, which cached positions are padding, and
/// the next position id of each row.
pub type OptState = DecoderState;

impl OptForCausalLM {
    /// Loads `language_model.*` from `w` (the view of `language_model`).
    pub fn load(w: &Weights, c: &OptConfig, device: &Device) -> Result<Self> {
        c.validate()?;
        let d = w.pp("model.decoder");
        let (h, e, v) = (c.hidden_size, c.embed_dim(), c.vocab_size);
        let positions = c.max_position_embeddings + OptConfig::POSITION_OFFSET;
        let (project_in, project_out) = if e != h {
            (
                Some(nn::linear(&d.pp("project_in"), e, h, false, device)?),
                Some(nn::linear(&d.pp("project_out"), h, e, false, device)?),
            )
        } else {
            (None, None)
        };
        let final_layer_norm = if c.do_layer_norm_before && !c.remove_final_layer_norm {
            Some(nn::layer_norm(
                &d.pp("final_layer_norm"),
                h,
                OptConfig::LAYER_NORM_EPS,
                device,
            )?)
        } else {
            None
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| OptDecoderLayer::load(&d.pp("layers").pp(i), c, device))
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = nn::param(&d, "embed_tokens.weight", [v, e], device)?;
        let lm_head = match w.get_optional("lm_head.weight", &[v, e])? {
            Some(data) => nn::head(w, nn::tensor(data, device))?,
            None => nn::head(w, embed_tokens.val())?,
        };
        Ok(OptForCausalLM {
            embed_positions: nn::param(&d, "embed_positions.weight", [positions, h], device)?,
            embed_tokens,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
            num_heads: c.num_attention_heads,
            max_positions: c.max_position_embeddings,
        })
    }

    fn device(&self) -> Device {
        self.embed_tokens.val().device()
    }

    /// Runs the decoder over `embeds` (`[rows, new, embed_dim]`) at `positions` with `mask`
    /// (`[rows, 1, new, keys]`, true = ignore), appending to the cache; returns the logits of the
    /// last position, `[rows, vocab]`.
    fn decode(
        &self,
        embeds: Tensor<3>,
        positions: &[i64],
        mask: Tensor<4, Bool>,
        cache: &mut KvCache,
    ) -> Tensor<2> {
        let [rows, new, _] = embeds.dims();
        let device = self.device();
        let offset: Vec<i64> = positions
            .iter()
            .map(|p| p + OptConfig::POSITION_OFFSET as i64)
            .collect();
        let ids = nn::index_tensor(&offset, &device);
        let hidden = self.embed_positions.dims()[1];
        let pos = self
            .embed_positions
            .val()
            .select(0, ids)
            .reshape([rows, new, hidden]);
        let x = match &self.project_in {
            Some(p) => p.forward(embeds),
            None => embeds,
        };
        let mut x = x + pos;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, mask.clone(), cache, i);
        }
        cache.advance(new);
        let mut last = x.slice(s![.., new - 1..new, ..]).reshape([rows, hidden]);
        if let Some(norm) = &self.final_layer_norm {
            last = norm.forward(last);
        }
        if let Some(p) = &self.project_out {
            last = p.forward(last);
        }
        // Generation works on f32 logits whatever the model's precision, as in transformers.
        self.lm_head.forward(last).cast(DType::F32)
    }
}

impl DecoderOnly for OptForCausalLM {
    // transformers: positions = cumsum(mask) * mask - 1.
    const PAD_POSITION: i64 = -1;

    fn token_embeddings(&self) -> Tensor<2> {
        self.embed_tokens.val()
    }

    fn position_limit(&self) -> usize {
        self.max_positions
    }

    fn new_cache(&self, rows: usize, capacity: usize) -> KvCache {
        let head_dim = self.embed_positions.dims()[1] / self.num_heads;
        let device = self.device();
        KvCache::new(
            self.layers.len(),
            rows,
            self.num_heads,
            capacity,
            head_dim,
            (&device, self.embed_tokens.dtype()),
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
