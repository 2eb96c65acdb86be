//! T5 (transformers' `T5ForConditionalGeneration`): an encoder-decoder with RMS layer norms,
//! unscaled attention and relative position buckets, as in Flan-T5.

use blip2_core::config::{Activation, T5Config};
use blip2_core::error::{Error, Result};
use blip2_core::nn::Dense;
use blip2_core::{nn, Weights};
use burn::module::{Module, Param};
use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::cache::KvCache;
use crate::LanguageModel;

/// `T5LayerNorm`: RMS normalisation (no mean, no bias). transformers computes the variance in
/// f32 whatever the weights' dtype; here it is computed in the input's dtype, which is always f32
/// because T5 only runs in f32 in this crate (docs/backends.md, "Precision").
#[derive(Module, Debug)]
pub struct T5LayerNorm {
    weight: Param<Tensor<1>>,
    eps: f64,
}

impl T5LayerNorm {
    /// Loads a `[d_model]` norm with the config's epsilon.
    fn load(w: &Weights, c: &T5Config, device: &Device) -> Result<Self> {
        Ok(T5LayerNorm {
            weight: nn::param(w, "weight", [c.d_model], device)?,
            eps: c.layer_norm_epsilon,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let dim = self.weight.dims()[0];
        let variance = x.clone().powf_scalar(2.0).mean_dim(2);
        let inv = (variance + self.eps).sqrt().recip();
        x * inv * self.weight.val().reshape([1, 1, dim])
    }
}

/// `T5Attention` without its position bias (which the stack computes once and shares): `q`, `k`,
/// `v`, `o` without biases, and no `1/sqrt(d)` scaling.
#[derive(Module, Debug)]
pub struct T5Attention {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    num_heads: usize,
}

impl T5Attention {
    fn load(w: &Weights, c: &T5Config, device: &Device) -> Result<Self> {
        let (d, inner) = (c.d_model, c.inner_dim());
        Ok(T5Attention {
            q: nn::linear(&w.pp("q"), d, inner, false, device)?,
            k: nn::linear(&w.pp("k"), d, inner, false, device)?,
            v: nn::linear(&w.pp("v"), d, inner, false, device)?,
            o: nn::linear(&w.pp("o"), inner, d, false, device)?,
            num_heads: c.num_heads,
        })
    }

    fn kv(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        (
            nn::split_heads(self.k.forward(x.clone()), self.num_heads),
            nn::split_heads(self.v.forward(x), self.num_heads),
        )
    }

    fn attend(
        &self,
        x: Tensor<3>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: Option<Tensor<4, Bool>>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let q = nn::split_heads(self.q.forward(x), self.num_heads);
        self.o
            .forward(nn::merge_heads(nn::attend(q, k, v, mask, bias, 1.0)))
    }
}

/// `T5LayerSelfAttention`: RMS norm, self-attention, residual.
#[derive(Module, Debug)]
pub struct T5LayerSelfAttention {
    self_attention: T5Attention,
    layer_norm: T5LayerNorm,
}

impl T5LayerSelfAttention {
    /// Loads `layer.0` of a block.
    fn load(w: &Weights, c: &T5Config, device: &Device) -> Result<Self> {
        Ok(T5LayerSelfAttention {
            self_attention: T5Attention::load(&w.pp("SelfAttention"), c, device)?,
            layer_norm: T5LayerNorm::load(&w.pp("layer_norm"), c, device)?,
        })
    }

    /// Over the whole sequence (the encoder), `padding` true at padded keys.
    fn forward(&self, x: Tensor<3>, padding: Tensor<4, Bool>, bias: Tensor<4>) -> Tensor<3> {
        let h = self.layer_norm.forward(x.clone());
        let (k, v) = self.self_attention.kv(h.clone());
        x + self
            .self_attention
            .attend(h, k, v, Some(padding), Some(bias))
    }

    /// One new position per row (the decoder), its keys and values appended to layer `layer` of
    /// `cache`.
    fn forward_cached(
        &self,
        x: Tensor<3>,
        cache: &mut KvCache,
        layer: usize,
        bias: Tensor<4>,
    ) -> Tensor<3> {
        let h = self.layer_norm.forward(x.clone());
        let (k, v) = self.self_attention.kv(h.clone());
        let keys = cache.len() + k.dims()[2];
        let (k, v) = cache.write(layer, k, v, keys);
        x + self.self_attention.attend(h, k, v, None, Some(bias))
    }
}

/// `T5LayerCrossAttention`: RMS norm, attention to the encoder output, residual.
#[derive(Module, Debug)]
pub struct T5LayerCrossAttention {
    enc_dec_attention: T5Attention,
    layer_norm: T5LayerNorm,
}

impl T5LayerCrossAttention {
    /// Loads `layer.1` of a decoder block.
    fn load(w: &Weights, c: &T5Config, device: &Device) -> Result<Self> {
        Ok(T5LayerCrossAttention {
            enc_dec_attention: T5Attention::load(&w.pp("EncDecAttention"), c, device)?,
            layer_norm: T5LayerNorm::load(&w.pp("layer_norm"), c, device)?,
        })
    }

    /// The keys and values of the encoder output, computed once per generation.
    fn kv(&self, encoded: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        self.enc_dec_attention.kv(encoded)
    }

    fn forward(
        &self,
        x: Tensor<3>,
        (k, v): (Tensor<4>, Tensor<4>),
        encoder_padding: Tensor<4, Bool>,
    ) -> Tensor<3> {
        let h = self.layer_norm.forward(x.clone());
        x + self
            .enc_dec_attention
            .attend(h, k, v, Some(encoder_padding), None)
    }
}

/// `T5DenseActDense`: `wo(act(wi x))` (original T5).
#[derive(Module, Debug)]
pub struct T5DenseActDense {
    wi: Dense,
    wo: Dense,
    #[module(skip)]
    activation: Activation,
}

/// `T5DenseGatedActDense`: `wo(act(wi_0 x) * wi_1 x)` (T5 v1.1, Flan-T5).
#[derive(Module, Debug)]
pub struct T5DenseGatedActDense {
    wi_0: Dense,
    wi_1: Dense,
    wo: Dense,
    #[module(skip)]
    activation: Activation,
}

/// The feed-forward of [`T5LayerFF`], as `feed_forward_proj` says.
#[derive(Module, Debug)]
pub enum T5DenseReluDense {
    /// Not gated (`"relu"`, …).
    ActDense(T5DenseActDense),
    /// Gated (`"gated-gelu"`, …).
    GatedActDense(T5DenseGatedActDense),
}

impl T5DenseReluDense {
    /// Loads `DenseReluDense`.
    fn load(w: &Weights, c: &T5Config, device: &Device) -> Result<Self> {
        let ff = c.feed_forward()?;
        let lin = |name: &str| nn::linear(&w.pp(name), c.d_model, c.d_ff, false, device);
        let wo = nn::linear(&w.pp("wo"), c.d_ff, c.d_model, false, device)?;
        Ok(if ff.gated {
            T5DenseReluDense::GatedActDense(T5DenseGatedActDense {
                wi_0: lin("wi_0")?,
                wi_1: lin("wi_1")?,
                wo,
                activation: ff.activation,
            })
        } else {
            T5DenseReluDense::ActDense(T5DenseActDense {
                wi: lin("wi")?,
                wo,
                activation: ff.activation,
            })
        })
    }

    fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        match self {
            T5DenseReluDense::ActDense(f) => {
                f.wo.forward(nn::activate(f.activation, f.wi.forward(h)))
            }
            T5DenseReluDense::GatedActDense(f) => {
                nn::gated_feed_forward(f.activation, &f.wi_0, &f.wi_1, &f.wo, h)
            }
        }
    }
}

/// `T5LayerFF`: RMS norm, feed-forward, residual.
#[derive(Module, Debug)]
pub struct T5LayerFF {
    dense_relu_dense: T5DenseReluDense,
    layer_norm: T5LayerNorm,
}

impl T5LayerFF {
    /// Loads the last layer of a block.
    fn load(w: &Weights, c: &T5Config, device: &Device) -> Result<Self> {
        Ok(T5LayerFF {
            dense_relu_dense: T5DenseReluDense::load(&w.pp("DenseReluDense"), c, device)?,
            layer_norm: T5LayerNorm::load(&w.pp("layer_norm"), c, device)?,
        })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.layer_norm.forward(x.clone());
        x + self.dense_relu_dense.forward(h)
    }
}

/// `T5Block`: self-attention, cross-attention (decoder blocks only), feed-forward.
#[derive(Module, Debug)]
pub struct T5Block {
    self_attention: T5LayerSelfAttention,
    cross_attention: Option<T5LayerCrossAttention>,
    ff: T5LayerFF,
}

impl T5Block {
    /// Loads `block.{i}`: `layer.0` self-attention, then `layer.1` cross-attention for a
    /// decoder, then the feed-forward.
    fn load(w: &Weights, c: &T5Config, is_decoder: bool, device: &Device) -> Result<Self> {
        let layer = w.pp("layer");
        let cross_attention = if is_decoder {
            Some(T5LayerCrossAttention::load(&layer.pp(1), c, device)?)
        } else {
            None
        };
        Ok(T5Block {
            self_attention: T5LayerSelfAttention::load(&layer.pp(0), c, device)?,
            ff: T5LayerFF::load(&layer.pp(if is_decoder { 2 } else { 1 }), c, device)?,
            cross_attention,
        })
    }
}

/// `T5Stack`: the encoder or the decoder: blocks, final RMS norm, and the relative position bias
/// of the first block, shared by all.
#[derive(Module, Debug)]
pub struct T5Stack {
    block: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    #[module(skip)]
    relative_bias: RelativeBias,
}

impl T5Stack {
    /// Loads `encoder` or `decoder` (`w` is its view) with `layers` blocks.
    fn load(
        w: &Weights,
        c: &T5Config,
        layers: usize,
        is_decoder: bool,
        device: &Device,
    ) -> Result<Self> {
        let block = (0..layers)
            .map(|i| T5Block::load(&w.pp("block").pp(i), c, is_decoder, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(T5Stack {
            block,
            final_layer_norm: T5LayerNorm::load(&w.pp("final_layer_norm"), c, device)?,
            relative_bias: RelativeBias::load(
                &w.pp("block.0.layer.0.SelfAttention"),
                c,
                !is_decoder,
            )?,
        })
    }

    /// The encoder over the whole sequence: its `last_hidden_state`.
    fn encode(&self, embeds: Tensor<3>, padding: Tensor<4, Bool>) -> Tensor<3> {
        let len = embeds.dims()[1];
        let bias = self.relative_bias.bias(0, len, len, &embeds.device());
        let mut x = embeds;
        for block in &self.block {
            x = block
                .self_attention
                .forward(x, padding.clone(), bias.clone());
            x = block.ff.forward(x);
        }
        self.final_layer_norm.forward(x)
    }

    /// The decoder at one new position per row (`state.cache.len()`): its normed output.
    fn decode(&self, x: Tensor<3>, state: &mut T5State) -> Tensor<3> {
        let position = state.cache.len();
        let bias = self
            .relative_bias
            .bias(position, 1, position + 1, &x.device());
        let mut x = x;
        for (i, block) in self.block.iter().enumerate() {
            x = block
                .self_attention
                .forward_cached(x, &mut state.cache, i, bias.clone());
            if let Some(cross) = &block.cross_attention {
                x = cross.forward(x, state.cross[i].clone(), state.encoder_padding.clone());
            }
            x = block.ff.forward(x);
        }
        state.cache.advance(1);
        self.final_layer_norm.forward(x)
    }

    /// Each decoder block's cross-attention keys and values of `encoded`.
    fn cross_kv(&self, encoded: &Tensor<3>) -> Vec<(Tensor<4>, Tensor<4>)> {
        self.block
            .iter()
            .filter_map(|b| b.cross_attention.as_ref())
            .map(|cross| cross.kv(encoded.clone()))
            .collect()
    }
}

/// The relative position bias of a stack's first block: `[buckets, heads]`, kept on the host to
/// build each call's `[1, heads, queries, keys]` bias.
#[derive(Debug, Clone)]
pub struct RelativeBias {
    table: Vec<f32>,
    num_heads: usize,
    num_buckets: usize,
    max_distance: usize,
    bidirectional: bool,
}

impl RelativeBias {
    fn load(w: &Weights, c: &T5Config, bidirectional: bool) -> Result<Self> {
        let data = w.get(
            "relative_attention_bias.weight",
            &[c.relative_attention_num_buckets, c.num_heads],
        )?;
        let table = data
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::Backend(format!("relative attention bias: {e:?}")))?;
        Ok(RelativeBias {
            table,
            num_heads: c.num_heads,
            num_buckets: c.relative_attention_num_buckets,
            max_distance: c.relative_attention_max_distance,
            bidirectional,
        })
    }

    /// transformers' `_relative_position_bucket`, with its f32 logarithm.
    fn bucket(&self, relative: i64) -> usize {
        let mut buckets = self.num_buckets as i64;
        let mut result = 0i64;
        let n = if self.bidirectional {
            buckets /= 2;
            if relative > 0 {
                result += buckets;
            }
            relative.abs()
        } else {
            (-relative).max(0)
        };
        let max_exact = buckets / 2;
        let bucket = if n < max_exact {
            n
        } else {
            let scale = (self.max_distance as f64 / max_exact as f64).ln() as f32;
            let large =
                ((n as f32 / max_exact as f32).ln() / scale * (buckets - max_exact) as f32) as i64;
            (max_exact + large).min(buckets - 1)
        };
        (result + bucket) as usize
    }

    /// `[1, heads, queries, keys]` bias for queries at positions `first_query..` over keys `0..keys`.
    fn bias(&self, first_query: usize, queries: usize, keys: usize, device: &Device) -> Tensor<4> {
        let mut values = vec![0f32; self.num_heads * queries * keys];
        for h in 0..self.num_heads {
            for i in 0..queries {
                for j in 0..keys {
                    let bucket = self.bucket(j as i64 - (first_query + i) as i64);
                    values[(h * queries + i) * keys + j] = self.table[bucket * self.num_heads + h];
                }
            }
        }
        Tensor::from_data(
            TensorData::new(values, [1, self.num_heads, queries, keys]),
            device,
        )
    }
}

/// Flan-T5 with its language-modelling head.
#[derive(Module, Debug)]
pub struct T5ForConditionalGeneration {
    shared: Param<Tensor<2>>,
    encoder: T5Stack,
    decoder: T5Stack,
    /// `[vocab, d_model]` (PyTorch's layout).
    lm_head: Dense,
    /// `d_model^-0.5` when the decoder output is rescaled before a tied head (original T5).
    output_scale: Option<f64>,
    decoder_start: u32,
    num_heads: usize,
    head_dim: usize,
}

/// Decoding state of T5 rows: the decoder's self-attention cache, each layer's cross-attention
/// keys and values (computed once from the encoder output), and the encoder padding mask.
#[derive(Debug, Clone)]
pub struct T5State {
    cache: KvCache,
    cross: Vec<(Tensor<4>, Tensor<4>)>,
    encoder_padding: Tensor<4, Bool>,
}

impl T5ForConditionalGeneration {
    /// Loads `language_model.*` from `w` (the view of `language_model`).
    pub fn load(w: &Weights, c: &T5Config, device: &Device) -> Result<Self> {
        c.validate()?;
        let (v, d) = (c.vocab_size, c.d_model);
        let encoder = T5Stack::load(&w.pp("encoder"), c, c.num_layers, false, device)?;
        let decoder = T5Stack::load(&w.pp("decoder"), c, c.decoder_layers(), true, device)?;
        let shared = nn::param(w, "shared.weight", [v, d], device)?;
        // A stored lm_head is used as is (Flan-T5); without one the head is tied to `shared`.
        let lm_head = match w.get_optional("lm_head.weight", &[v, d])? {
            Some(data) => nn::head(w, nn::tensor(data, device))?,
            None => nn::head(w, shared.val())?,
        };
        Ok(T5ForConditionalGeneration {
            shared,
            encoder,
            decoder,
            lm_head,
            output_scale: c.scale_decoder_outputs().then(|| (d as f64).powf(-0.5)),
            decoder_start: c.decoder_start(),
            num_heads: c.num_heads,
            head_dim: c.d_kv,
        })
    }

    fn device(&self) -> Device {
        self.shared.val().device()
    }

    /// The first decoder token (`decoder_start_token_id`).
    pub fn decoder_start(&self) -> u32 {
        self.decoder_start
    }

    /// The encoder's `last_hidden_state` for `embeds` (`[rows, len, d_model]`) with padding
    /// `padding` (`[rows, 1, 1, len]`, true = padding).
    pub fn encode(&self, embeds: Tensor<3>, padding: Tensor<4, Bool>) -> Tensor<3> {
        self.encoder.encode(embeds, padding)
    }

    /// One decoder position for every row: `tokens` at position `state.cache.len()`.
    fn decode(&self, state: &mut T5State, tokens: &[u32]) -> Result<Tensor<2>> {
        let rows = tokens.len();
        let x = self.embed_tokens(&tokens.iter().map(|&t| vec![t]).collect::<Vec<_>>())?;
        let d = self.shared.dims()[1];
        let mut x = self.decoder.decode(x, state).reshape([rows, d]);
        if let Some(scale) = self.output_scale {
            x = x * scale;
        }
        Ok(self.lm_head.forward(x))
    }
}

impl LanguageModel for T5ForConditionalGeneration {
    type State = T5State;

    fn embed_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor<3>> {
        nn::embed_rows(&self.shared.val(), ids)
    }

    fn prefill(
        &self,
        embeds: Tensor<3>,
        attention_mask: &[Vec<bool>],
        max_new_tokens: usize,
    ) -> Result<(T5State, Tensor<2>)> {
        let (rows, len) = crate::check_prompt(&embeds, attention_mask)?;
        let device = self.device();
        let padding: Vec<bool> = attention_mask.iter().flatten().map(|keep| !keep).collect();
        let padding =
            Tensor::<4, Bool>::from_data(TensorData::new(padding, [rows, 1, 1, len]), &device);
        let encoded = self.encode(embeds, padding.clone());
        let cross = self.decoder.cross_kv(&encoded);
        let cache = KvCache::new(
            self.decoder.block.len(),
            rows,
            self.num_heads,
            1 + max_new_tokens,
            self.head_dim,
            (&device, self.shared.dtype()),
        );
        let mut state = T5State {
            cache,
            cross,
            encoder_padding: padding,
        };
        let logits = self.decode(&mut state, &vec![self.decoder_start; rows])?;
        Ok((state, logits))
    }

    fn step(&self, state: &mut T5State, tokens: &[u32]) -> Result<Tensor<2>> {
        let rows = state.encoder_padding.dims()[0];
        if tokens.len() != rows {
            return Err(Error::InvalidInput(format!(
                "{} tokens for {rows} rows",
                tokens.len()
            )));
        }
        if state.cache.len() >= state.cache.capacity() {
            return Err(Error::InvalidInput("the KV cache is full".to_owned()));
        }
        self.decode(state, tokens)
    }

    fn reorder(&self, state: &mut T5State, rows: &[usize]) {
        state.cache.select_rows(rows);
        let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = nn::index_tensor(&rows, &self.device());
        for (k, v) in &mut state.cross {
            *k = k.clone().select(0, index.clone());
            *v = v.clone().select(0, index.clone());
        }
        state.encoder_padding = state.encoder_padding.clone().select(0, index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bias(bidirectional: bool) -> RelativeBias {
        RelativeBias {
            table: Vec::new(),
            num_heads: 1,
            num_buckets: 32,
            max_distance: 128,
            bidirectional,
        }
    }

    #[test]
    fn buckets_match_transformers() {
        // Values of transformers' _relative_position_bucket (32 buckets, max distance 128).
        let enc = bias(true);
        let cases = [
            (0, 0),
            (1, 17),
            (-1, 1),
            (7, 23),
            (-8, 8),
            (20, 26),
            (-20, 10),
            (200, 31),
            (-200, 15),
        ];
        for (relative, expected) in cases {
            assert_eq!(enc.bucket(relative), expected, "bidirectional {relative}");
        }
        let dec = bias(false);
        let cases = [
            (0, 0),
            (1, 0),
            (-1, 1),
            (-15, 15),
            (-16, 16),
            (-40, 23),
            (-500, 31),
        ];
        for (relative, expected) in cases {
            assert_eq!(dec.bucket(relative), expected, "causal {relative}");
        }
    }
}
