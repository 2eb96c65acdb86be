//! `text_config` with `model_type: "t5"`: transformers' `T5Config`.

use serde::Deserialize;

use super::{check_positive, Activation, TokenIds};
use crate::error::{Error, Result};

/// The T5 encoder-decoder's configuration, as stored in `config.json`.
///
/// Omitted fields take transformers' `T5Config` defaults. The feed-forward block is resolved by
/// [`T5Config::feed_forward`] as transformers resolves it: gated or not from `feed_forward_proj`,
/// the activation from the file's `dense_act_fn` when it has one, else from `feed_forward_proj`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct T5Config {
    /// Vocabulary size (32128).
    pub vocab_size: usize,
    /// Width (512 by default; 2048 for Flan-T5-XL, 4096 for XXL).
    pub d_model: usize,
    /// Width of one attention head (64).
    pub d_kv: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Decoder layers; `None` means `num_layers`.
    pub num_decoder_layers: Option<usize>,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative position buckets (32).
    pub relative_attention_num_buckets: usize,
    /// Largest distance the buckets distinguish (128).
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon (1e-6).
    pub layer_norm_epsilon: f64,
    /// `"relu"`, `"gated-gelu"`, `"gated-silu"`, ...: see [`T5Config::feed_forward`].
    pub feed_forward_proj: String,
    /// The activation named in the file, if any; it overrides the one `feed_forward_proj` implies.
    pub dense_act_fn: Option<String>,
    /// As written in the file; `Some(false)` (the Flan-T5 case) means a separate `lm_head` and no
    /// rescaling of the decoder output. See [`T5Config::scale_decoder_outputs`].
    pub tie_word_embeddings: Option<bool>,
    /// Padding token (0).
    pub pad_token_id: Option<u32>,
    /// End-of-sequence token(s) (1, `</s>`).
    pub eos_token_id: Option<TokenIds>,
    /// First decoder token; `None` means `pad_token_id`, which is what T5 uses (0).
    pub decoder_start_token_id: Option<u32>,
}

impl Default for T5Config {
    fn default() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: None,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".to_owned(),
            dense_act_fn: None,
            tie_word_embeddings: None,
            pad_token_id: Some(0),
            eos_token_id: Some(TokenIds::One(1)),
            decoder_start_token_id: None,
        }
    }
}

/// T5's feed-forward block, as derived from `feed_forward_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct T5FeedForward {
    /// `wo(act(wi_0 x) * wi_1 x)` when true, `wo(act(wi x))` otherwise.
    pub gated: bool,
    /// The activation.
    pub activation: Activation,
}

impl T5Config {
    /// Decoder layers (`num_decoder_layers`, or `num_layers` when unset).
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Inner width of attention (`num_heads * d_kv`, which need not equal `d_model`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// The feed-forward block as transformers 5.24 resolves it: `"gated-X"` is gated and `"X"` is
    /// not; the activation is the file's `dense_act_fn` when it has one, else the one
    /// `feed_forward_proj` names, except that `"gated-gelu"` alone means `gelu_new` (the tanh
    /// approximation; a backwards-compatibility rule of `T5Config`).
    ///
    /// Measured with transformers 5.24: `T5Config.__post_init__` derives `dense_act_fn` from
    /// `feed_forward_proj` and then applies the remaining keys of the file, so an explicit
    /// `dense_act_fn` wins. The real BLIP-2 Flan-T5 configs say `"gated-gelu"` and
    /// `dense_act_fn: "gelu"`, so transformers runs them with the exact (erf) GELU, as LAVIS did.
    pub fn feed_forward(&self) -> Result<T5FeedForward> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let bad = || {
            Error::invalid_config(
                "text_config.feed_forward_proj",
                format!("{:?} is not `ACT` or `gated-ACT`", self.feed_forward_proj),
            )
        };
        let (gated, name) = match parts.as_slice() {
            [act] => (false, *act),
            ["gated", act] => (true, *act),
            _ => return Err(bad()),
        };
        let name = match &self.dense_act_fn {
            Some(explicit) => explicit.as_str(),
            None if self.feed_forward_proj == "gated-gelu" => "gelu_new",
            None => name,
        };
        let activation = Activation::from_name(name).ok_or_else(|| {
            Error::invalid_config("text_config", format!("unknown T5 activation {name:?}"))
        })?;
        Ok(T5FeedForward { gated, activation })
    }

    /// Whether the decoder output is multiplied by `d_model^-0.5` before a tied `lm_head`.
    /// transformers: true unless the file says `tie_word_embeddings: false` (T5 v1.1, Flan-T5).
    pub fn scale_decoder_outputs(&self) -> bool {
        self.tie_word_embeddings != Some(false)
    }

    /// The first decoder token (`decoder_start_token_id`, else `pad_token_id`, else 0).
    pub fn decoder_start(&self) -> u32 {
        self.decoder_start_token_id
            .or(self.pad_token_id)
            .unwrap_or(0)
    }

    /// The end-of-sequence ids, possibly several.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        TokenIds::list(self.eos_token_id.as_ref())
    }

    /// Checks the sizes and relations the model code relies on.
    pub fn validate(&self) -> Result<()> {
        let f = |name: &str| format!("text_config.{name}");
        check_positive(&f("vocab_size"), self.vocab_size)?;
        check_positive(&f("d_model"), self.d_model)?;
        check_positive(&f("d_kv"), self.d_kv)?;
        check_positive(&f("d_ff"), self.d_ff)?;
        check_positive(&f("num_layers"), self.num_layers)?;
        check_positive(&f("num_decoder_layers"), self.decoder_layers())?;
        check_positive(&f("num_heads"), self.num_heads)?;
        check_positive(
            &f("relative_attention_num_buckets"),
            self.relative_attention_num_buckets,
        )?;
        self.feed_forward().map(|_| ())
    }
}
