//! Which tensors a BLIP-2 checkpoint holds, by the names and shapes transformers'
//! `save_pretrained` gives them, derived from the model's configuration.
//!
//! Checked against the committed fixtures (written by transformers itself) in
//! `tests/layout.rs`: for their configurations this lists exactly the tensors they hold.

use blip2_core::config::{OptConfig, QFormerConfig, T5Config, TextConfig, VisionConfig};
use blip2_core::Blip2Config;

/// How a tensor is filled: as transformers initialises it (normalisation weights one, biases
/// zero), every other tensor uniformly at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// All zeros: biases.
    Zeros,
    /// All ones: layer-norm and RMS-norm weights.
    Ones,
    /// Uniform with standard deviation 0.02 (transformers' `initializer_range`).
    Random,
}

/// One tensor of the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Its key in the state dict (`vision_model.encoder.layers.0.mlp.fc1.weight`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// How it is filled.
    pub init: Init,
}

impl TensorSpec {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a configuration has no layout here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// Collects tensors under a key prefix, mirroring transformers' module tree.
struct Scope<'a> {
    out: &'a mut Vec<TensorSpec>,
    prefix: String,
}

impl Scope<'_> {
    fn at(&mut self, name: impl std::fmt::Display) -> Scope<'_> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Scope {
            out: self.out,
            prefix,
        }
    }

    fn tensor(&mut self, name: &str, shape: &[usize]) {
        let init = if name.ends_with("bias") {
            Init::Zeros
        } else if self.prefix.to_ascii_lowercase().contains("norm")
            || name.to_ascii_lowercase().contains("norm")
        {
            Init::Ones
        } else {
            Init::Random
        };
        let name = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        };
        self.out.push(TensorSpec {
            name,
            shape: shape.to_vec(),
            init,
        });
    }

    /// A `nn.Linear(inputs, outputs)`: weight `[outputs, inputs]`, optionally a bias.
    fn linear(&mut self, name: &str, inputs: usize, outputs: usize, bias: bool) {
        let mut s = self.at(name);
        s.tensor("weight", &[outputs, inputs]);
        if bias {
            s.tensor("bias", &[outputs]);
        }
    }

    /// A `nn.LayerNorm(width)` with weight and bias.
    fn layer_norm(&mut self, name: &str, width: usize) {
        let mut s = self.at(name);
        s.tensor("weight", &[width]);
        s.tensor("bias", &[width]);
    }
}

/// Every tensor of a `Blip2ForConditionalGeneration` checkpoint with this configuration, in the
/// hub's layout (the vision attention's bias as `q_bias` and `v_bias`; tied embeddings stored
/// once).
///
/// Errors for what this tool does not write: retrieval checkpoints
/// (`Blip2ForImageTextRetrieval`), InstructBLIP's instruction-aware Q-Former and LLaMA language
/// models.
pub fn tensors(config: &Blip2Config) -> Result<Vec<TensorSpec>, Unsupported> {
    if config.is_retrieval() {
        return Err(Unsupported(
            "retrieval checkpoints (Blip2ForImageTextRetrieval) are not written by this tool"
                .into(),
        ));
    }
    if config.qformer_config.use_qformer_text_input {
        return Err(Unsupported(
            "a Q-Former with text input (InstructBLIP) is not written by this tool".into(),
        ));
    }
    let mut out = Vec::new();
    let mut root = Scope {
        out: &mut out,
        prefix: String::new(),
    };
    vision(&mut root.at("vision_model"), &config.vision_config);
    let q = &config.qformer_config;
    root.tensor("query_tokens", &[1, config.num_query_tokens, q.hidden_size]);
    qformer(&mut root.at("qformer"), q);
    root.linear(
        "language_projection",
        q.hidden_size,
        config.text_config.hidden_size(),
        true,
    );
    match &config.text_config {
        TextConfig::Opt(c) => opt(&mut root.at("language_model"), c),
        TextConfig::T5(c) => t5(&mut root.at("language_model"), c),
        TextConfig::Llama(_) => {
            return Err(Unsupported(
                "LLaMA language models (InstructBLIP Vicuna) are not written by this tool".into(),
            ))
        }
    }
    Ok(out)
}

/// `Blip2VisionModel`.
fn vision(s: &mut Scope<'_>, c: &VisionConfig) {
    let h = c.hidden_size;
    let (ph, pw) = c.patch_hw();
    {
        let mut e = s.at("embeddings");
        e.tensor("class_embedding", &[1, 1, h]);
        e.at("patch_embedding")
            .tensor("weight", &[h, c.num_channels, ph, pw]);
        e.at("patch_embedding").tensor("bias", &[h]);
        e.tensor("position_embedding", &[1, c.num_positions(), h]);
    }
    for i in 0..c.num_hidden_layers {
        let mut layer = s.at(format!("encoder.layers.{i}"));
        {
            let mut a = layer.at("self_attn");
            a.linear("qkv", h, 3 * h, false);
            if c.qkv_bias {
                a.tensor("q_bias", &[h]);
                a.tensor("v_bias", &[h]);
            }
            a.linear("projection", h, h, true);
        }
        layer.layer_norm("layer_norm1", h);
        layer.linear("mlp.fc1", h, c.intermediate_size, true);
        layer.linear("mlp.fc2", c.intermediate_size, h, true);
        layer.layer_norm("layer_norm2", h);
    }
    s.layer_norm("post_layernorm", h);
}

/// `Blip2QFormerModel` without text input: its embeddings' layer norm and the encoder.
fn qformer(s: &mut Scope<'_>, c: &QFormerConfig) {
    let h = c.hidden_size;
    s.layer_norm("layernorm", h);
    for i in 0..c.num_hidden_layers {
        let mut layer = s.at(format!("encoder.layer.{i}"));
        attention(&mut layer.at("attention"), h, h);
        if c.has_cross_attention(i) {
            attention(&mut layer.at("crossattention"), h, c.encoder_hidden_size);
        }
        layer.linear("intermediate_query.dense", h, c.intermediate_size, true);
        let mut output = layer.at("output_query");
        output.linear("dense", c.intermediate_size, h, true);
        output.layer_norm("LayerNorm", h);
    }
}

/// `Blip2QFormerAttention`: queries over `h`, keys and values over `kv` (the image's width in
/// cross-attention), then the output dense layer and its layer norm.
fn attention(s: &mut Scope<'_>, h: usize, kv: usize) {
    let mut a = s.at("attention");
    a.linear("query", h, h, true);
    a.linear("key", kv, h, true);
    a.linear("value", kv, h, true);
    let mut o = s.at("output");
    o.linear("dense", h, h, true);
    o.layer_norm("LayerNorm", h);
}

/// `OPTForCausalLM`.
fn opt(s: &mut Scope<'_>, c: &OptConfig) {
    let h = c.hidden_size;
    let e = c.embed_dim();
    let bias = c.enable_bias;
    {
        let mut d = s.at("model.decoder");
        d.tensor("embed_tokens.weight", &[c.vocab_size, e]);
        // OPT's learned positions are offset by 2.
        d.tensor(
            "embed_positions.weight",
            &[c.max_position_embeddings + 2, h],
        );
        if e != h {
            d.linear("project_in", e, h, false);
            d.linear("project_out", h, e, false);
        }
        if c.do_layer_norm_before && !c.remove_final_layer_norm {
            d.layer_norm("final_layer_norm", h);
        }
        for i in 0..c.num_hidden_layers {
            let mut layer = d.at(format!("layers.{i}"));
            for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
                layer.at("self_attn").linear(proj, h, h, bias);
            }
            layer.layer_norm("self_attn_layer_norm", h);
            layer.linear("fc1", h, c.ffn_dim, bias);
            layer.linear("fc2", c.ffn_dim, h, bias);
            layer.layer_norm("final_layer_norm", h);
        }
    }
    if !c.tie_word_embeddings {
        s.tensor("lm_head.weight", &[c.vocab_size, e]);
    }
}

/// `T5ForConditionalGeneration`: the shared embedding, `T5Stack` encoder and decoder, and the
/// untied `lm_head`.
fn t5(s: &mut Scope<'_>, c: &T5Config) {
    let d = c.d_model;
    s.tensor("shared.weight", &[c.vocab_size, d]);
    let gated = c.feed_forward().map(|f| f.gated).unwrap_or(false);
    for (stack, layers, decoder) in [
        ("encoder", c.num_layers, false),
        ("decoder", c.decoder_layers(), true),
    ] {
        let mut st = s.at(stack);
        for i in 0..layers {
            let mut block = st.at(format!("block.{i}"));
            let mut sub = 0;
            t5_attention(
                &mut block.at(format!("layer.{sub}")),
                "SelfAttention",
                c,
                i == 0,
            );
            if decoder {
                sub += 1;
                t5_attention(
                    &mut block.at(format!("layer.{sub}")),
                    "EncDecAttention",
                    c,
                    false,
                );
            }
            sub += 1;
            let mut ff = block.at(format!("layer.{sub}"));
            {
                let mut dense = ff.at("DenseReluDense");
                if gated {
                    dense.linear("wi_0", d, c.d_ff, false);
                    dense.linear("wi_1", d, c.d_ff, false);
                } else {
                    dense.linear("wi", d, c.d_ff, false);
                }
                dense.linear("wo", c.d_ff, d, false);
            }
            ff.tensor("layer_norm.weight", &[d]);
        }
        st.tensor("final_layer_norm.weight", &[d]);
    }
    if !c.tie_word_embeddings.unwrap_or(true) {
        s.tensor("lm_head.weight", &[c.vocab_size, d]);
    }
}

/// A `T5LayerSelfAttention` / `T5LayerCrossAttention`: q, k, v, o without biases, the relative
/// position bias in the stack's first block only, and the layer's RMS norm.
fn t5_attention(s: &mut Scope<'_>, name: &str, c: &T5Config, relative_bias: bool) {
    let inner = c.inner_dim();
    let mut a = s.at(name);
    for proj in ["q", "k", "v"] {
        a.linear(proj, c.d_model, inner, false);
    }
    a.linear("o", inner, c.d_model, false);
    if relative_bias {
        a.tensor(
            "relative_attention_bias.weight",
            &[c.relative_attention_num_buckets, c.num_heads],
        );
    }
    s.tensor("layer_norm.weight", &[c.d_model]);
}
