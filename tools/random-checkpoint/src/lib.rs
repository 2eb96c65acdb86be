//! Random-weight BLIP-2 checkpoints at real shapes, in the Hugging Face hub's layout, written
//! without Python: what the GPU check (`scripts/gpu-check.sh`) makes on a machine with no network,
//! and what any benchmark can use in place of `tools/bench/make_models.py`.
//!
//! A checkpoint folder holds `config.json` (the hub's own layout for the named shape),
//! `generation_config.json`, `preprocessor_config.json`, `processor_config.json`,
//! `tokenizer_config.json`, a `tokenizer.json` whose word-level vocabulary has one token per
//! language-model id (so every generated id decodes), and the weights as (sharded)
//! safetensors, named and shaped as transformers' `save_pretrained` writes them
//! ([`layout::tensors`]). Values are deterministic from a seed; norms are one, biases zero, every
//! other tensor uniform with standard deviation 0.02.
//!
//! ```text
//! cargo run --release -p blip2-random-checkpoint -- --shape opt-2.7b --out target/bench-models/opt-2.7b
//! ```
#![warn(missing_docs)]

pub mod layout;
pub mod store;

use std::path::Path;
use std::time::Instant;

use blip2_core::config::TextConfig;
use blip2_core::Blip2Config;
use serde_json::{json, Value};

pub use layout::{tensors, Init, TensorSpec};
pub use store::StoredDType;

/// The shapes this tool knows by name: the hub's configurations (from
/// `tests/fixtures/hub-configs`), `bench-small` (`make_models.py`'s: ViT-g with 6 of its 39
/// layers, the real Q-Former, an OPT-125m-shaped language model) and `mini` (every part a few
/// layers and a few hundred wide at the real 224-pixel input, for checking a whole path on a
/// slow device in seconds).
pub const SHAPES: [&str; 6] = [
    "mini",
    "bench-small",
    "opt-2.7b",
    "opt-6.7b",
    "flan-t5-xl",
    "flan-t5-xxl",
];

const OPT_2_7B: &str = include_str!("../../../tests/fixtures/hub-configs/blip2-opt-2.7b.json");
const OPT_6_7B: &str = include_str!("../../../tests/fixtures/hub-configs/blip2-opt-6.7b.json");
const FLAN_T5_XL: &str = include_str!("../../../tests/fixtures/hub-configs/blip2-flan-t5-xl.json");
const FLAN_T5_XXL: &str =
    include_str!("../../../tests/fixtures/hub-configs/blip2-flan-t5-xxl.json");

/// The `config.json` of a named shape (see [`SHAPES`]), or `None` for an unknown name.
pub fn shape_config(name: &str) -> Option<Value> {
    let parse = |text: &str| serde_json::from_str::<Value>(text).expect("committed hub config");
    let mut config = match name {
        "opt-2.7b" => return Some(parse(OPT_2_7B)),
        "opt-6.7b" => return Some(parse(OPT_6_7B)),
        "flan-t5-xl" => return Some(parse(FLAN_T5_XL)),
        "flan-t5-xxl" => return Some(parse(FLAN_T5_XXL)),
        "bench-small" | "mini" => parse(OPT_2_7B),
        _ => return None,
    };
    // OPT-125m's language model (and its vocabulary of 50272 rows), as make_models.py writes it.
    let set = |config: &mut Value, section: &str, fields: &[(&str, Value)]| {
        for (key, value) in fields {
            config[section][*key] = value.clone();
        }
    };
    set(
        &mut config,
        "text_config",
        &[
            ("_name_or_path", json!("facebook/opt-125m")),
            ("hidden_size", json!(768)),
            ("num_hidden_layers", json!(12)),
            ("num_attention_heads", json!(12)),
            ("ffn_dim", json!(3072)),
            ("word_embed_proj_dim", json!(768)),
            ("vocab_size", json!(50272)),
        ],
    );
    set(
        &mut config,
        "vision_config",
        &[("num_hidden_layers", json!(6))],
    );
    if name == "mini" {
        fn narrow(ffn_key: &'static str) -> Vec<(&'static str, Value)> {
            vec![
                ("hidden_size", json!(256)),
                ("num_hidden_layers", json!(2)),
                ("num_attention_heads", json!(4)),
                (ffn_key, json!(1024)),
            ]
        }
        let mut text = narrow("ffn_dim");
        text.push(("word_embed_proj_dim", json!(256)));
        set(&mut config, "text_config", &text);
        set(&mut config, "vision_config", &narrow("intermediate_size"));
        let mut qformer = narrow("intermediate_size");
        qformer.push(("encoder_hidden_size", json!(256)));
        set(&mut config, "qformer_config", &qformer);
    }
    Some(config)
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Number of tensors.
    pub tensors: usize,
    /// Number of parameters.
    pub parameters: usize,
    /// Bytes of weight files.
    pub bytes: u64,
    /// Seconds it took, files included.
    pub seconds: f64,
}

/// Options of [`write()`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The stored dtype of every tensor.
    pub dtype: StoredDType,
    /// Seed of the random values.
    pub seed: u64,
    /// Largest shard, in bytes (a single tensor larger than this gets a shard of its own).
    pub max_shard_bytes: u64,
}

impl Default for Options {
    /// f16 (as the hub stores BLIP-2), seed 0, shards of at most 2 GB.
    fn default() -> Self {
        Options {
            dtype: StoredDType::F16,
            seed: 0,
            max_shard_bytes: 2_000_000_000,
        }
    }
}

/// Writes a whole checkpoint folder for `config` (a `config.json` document) into `dir`,
/// creating it. Errors for a configuration the crate cannot parse or this tool cannot lay out
/// (see [`layout::tensors`]) and for I/O.
pub fn write(
    dir: &Path,
    mut config: Value,
    options: Options,
) -> Result<Written, Box<dyn std::error::Error>> {
    let start = Instant::now();
    config["torch_dtype"] = json!(options.dtype.torch_name());
    let parsed = Blip2Config::from_json(&config.to_string())?;
    let specs = tensors(&parsed)?;
    std::fs::create_dir_all(dir)?;
    let files = Files::new(&parsed)?;
    std::fs::write(dir.join("config.json"), format!("{config:#}\n"))?;
    for (name, document) in files.documents(&parsed) {
        std::fs::write(dir.join(name), format!("{document:#}\n"))?;
    }
    let bytes = store::write_checkpoint_weights(
        dir,
        &specs,
        options.dtype,
        options.seed,
        options.max_shard_bytes,
    )?;
    Ok(Written {
        tensors: specs.len(),
        parameters: specs.iter().map(TensorSpec::len).sum(),
        bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The special tokens and ids of the language model's tokenizer.
struct Files {
    vocab_size: usize,
    /// (id, token) of every special token.
    special: Vec<(u32, &'static str)>,
    /// The token the post-processor adds: OPT prepends `</s>` as BOS, T5 appends `</s>`.
    added: (u32, &'static str),
    prepend: bool,
    generation: Value,
    tokenizer_config: Value,
}

impl Files {
    fn new(config: &Blip2Config) -> Result<Files, layout::Unsupported> {
        let mut files = match &config.text_config {
            TextConfig::T5(c) => Files {
                vocab_size: c.vocab_size,
                special: vec![(0, "<pad>"), (1, "</s>"), (2, "<unk>")],
                added: (1, "</s>"),
                prepend: false,
                generation: json!({
                    "decoder_start_token_id": c.decoder_start(),
                    "eos_token_id": c.eos_token_ids().first().copied().unwrap_or(1),
                    "pad_token_id": c.pad_token_id.unwrap_or(0),
                }),
                tokenizer_config: json!({
                    "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                    "extra_ids": 0, "processor_class": "Blip2Processor",
                    "tokenizer_class": "T5Tokenizer",
                }),
            },
            // OPT (and anything else this tool lays out): GPT-2's BPE conventions.
            TextConfig::Opt(c) => Files {
                vocab_size: c.vocab_size,
                special: vec![(0, "<s>"), (1, "<pad>"), (2, "</s>"), (3, "<unk>")],
                added: (c.bos_token_id.unwrap_or(2), "</s>"),
                prepend: true,
                generation: json!({
                    "bos_token_id": c.bos_token_id.unwrap_or(2),
                    "eos_token_id": c.eos_token_ids().first().copied().unwrap_or(2),
                    "pad_token_id": c.pad_token_id.unwrap_or(1),
                }),
                tokenizer_config: json!({
                    "bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>",
                    "unk_token": "<unk>", "add_prefix_space": false,
                    "processor_class": "Blip2Processor", "tokenizer_class": "GPT2Tokenizer",
                }),
            },
            TextConfig::Llama(_) => {
                return Err(layout::Unsupported(
                    "LLaMA language models are not written by this tool".into(),
                ))
            }
        };
        if let Some(image) = config.image_token_index {
            files.special.push((image, "<image>"));
        }
        Ok(files)
    }

    /// Every JSON file but `config.json`, by name.
    fn documents(&self, config: &Blip2Config) -> Vec<(&'static str, Value)> {
        let (height, width) = config.vision_config.image_hw();
        let preprocessor = json!({
            "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "BlipImageProcessor", "processor_class": "Blip2Processor",
            "resample": 3, "rescale_factor": 0.00392156862745098,
            "size": { "height": height, "width": width },
        });
        vec![
            ("generation_config.json", self.generation.clone()),
            ("preprocessor_config.json", preprocessor),
            (
                "processor_config.json",
                json!({ "num_query_tokens": config.num_query_tokens, "processor_class": "Blip2Processor" }),
            ),
            ("tokenizer_config.json", self.tokenizer_config.clone()),
            ("tokenizer.json", self.tokenizer()),
        ]
    }

    /// A `tokenizers` word-level tokenizer with one token per id (`w{id}`, the special tokens
    /// at their ids), split on whitespace, with the family's post-processor.
    fn tokenizer(&self) -> Value {
        let name = |id: u32| {
            self.special
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, t)| (*t).to_owned())
                .unwrap_or_else(|| format!("w{id}"))
        };
        let vocab: serde_json::Map<String, Value> = (0..self.vocab_size as u32)
            .map(|id| (name(id), json!(id)))
            .collect();
        let added: Vec<Value> = self
            .special
            .iter()
            .map(|(id, content)| {
                json!({ "id": id, "content": content, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": true })
            })
            .collect();
        let (id, token) = self.added;
        let special = json!({ "SpecialToken": { "id": token, "type_id": 0 } });
        let sequence = |s: &str| json!({ "Sequence": { "id": s, "type_id": 0 } });
        let (single, pair) = if self.prepend {
            (
                vec![special.clone(), sequence("A")],
                vec![
                    special.clone(),
                    sequence("A"),
                    special.clone(),
                    sequence("B"),
                ],
            )
        } else {
            (
                vec![sequence("A"), special.clone()],
                vec![
                    sequence("A"),
                    special.clone(),
                    sequence("B"),
                    special.clone(),
                ],
            )
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": { "type": "WhitespaceSplit" },
            "post_processor": {
                "type": "TemplateProcessing",
                "single": single,
                "pair": pair,
                "special_tokens": { token: { "id": token, "ids": [id], "tokens": [token] } },
            },
            "decoder": null,
            "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" },
        })
    }
}
