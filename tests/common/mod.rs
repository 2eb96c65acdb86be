//! Helpers shared by the generation parity tests: fixtures, golden cases, and the check of one
//! case against transformers' outputs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::OnceLock;

use blip2::lm::LanguageModel;
use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Blip2, EarlyStopping, GenerationConfig, StopReason, Tensor, TextModel};
use burn::tensor::{Bool, TensorData};
use safetensors::SafeTensors;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The loaded tiny model of a fixture folder, shared by the tests of one binary.
pub fn model(fixture: &str) -> &'static Blip2 {
    static MODELS: OnceLock<Mutex<HashMap<String, &'static Blip2>>> = OnceLock::new();
    let mut models = MODELS.get_or_init(Default::default).lock().unwrap();
    models.entry(fixture.to_owned()).or_insert_with(|| {
        let model = Blip2::from_pretrained(fixtures().join(fixture).to_str().unwrap()).unwrap();
        Box::leak(Box::new(model))
    })
}

pub fn cases(fixture: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join(fixture).join("generation.json")).unwrap();
    let meta: Value = serde_json::from_str(&text).unwrap();
    meta["cases"].as_array().unwrap().clone()
}

pub fn case(fixture: &str, name: &str) -> Value {
    cases(fixture)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

pub fn config_for(model: &Blip2, kwargs: &Value) -> GenerationConfig {
    let mut c = model.generation_config().clone();
    let kw = kwargs.as_object().unwrap();
    for (key, v) in kw {
        match key.as_str() {
            "max_new_tokens" => c.max_new_tokens = Some(v.as_u64().unwrap() as usize),
            "min_new_tokens" => c.min_new_tokens = Some(v.as_u64().unwrap() as usize),
            "num_beams" => c.num_beams = v.as_u64().unwrap() as usize,
            "num_return_sequences" => c.num_return_sequences = v.as_u64().unwrap() as usize,
            "repetition_penalty" => c.repetition_penalty = v.as_f64().unwrap() as f32,
            "no_repeat_ngram_size" => c.no_repeat_ngram_size = v.as_u64().unwrap() as usize,
            "length_penalty" => c.length_penalty = v.as_f64().unwrap() as f32,
            "early_stopping" => {
                c.early_stopping = if v.as_bool().unwrap() {
                    EarlyStopping::Yes
                } else {
                    EarlyStopping::Heuristic
                }
            }
            "eos_token_id" => c.eos_token_id = vec![v.as_u64().unwrap() as u32],
            other => panic!("unhandled generate() option {other}"),
        }
    }
    c
}

pub fn images(case: &Value) -> Vec<image::DynamicImage> {
    case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| load_image(fixtures().join(p.as_str().unwrap()), ImageLimits::default()).unwrap())
        .collect()
}

pub fn prompts(case: &Value) -> Vec<String> {
    case["prompts"]
        .as_array()
        .map(|a| a.iter().map(|p| p.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// Runs one golden case of `fixture`: input rows, first-step logits (and the T5 encoder output)
/// within 1e-4, generated ids and texts exactly.
pub fn run_case(fixture: &str, name: &str) {
    let case = case(fixture, name);
    let model = model(fixture);
    let imgs = images(&case);
    let prompts = prompts(&case);
    let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let config = config_for(model, &case["generate_kwargs"]);

    // The input rows are the ones transformers' processor builds.
    let embeddings = model.encode_images(&imgs).unwrap();
    let prompt = model.prompt(&embeddings, &prompt_refs).unwrap();
    if let Some(ids) = case["input_ids"].as_array() {
        let expected: Vec<Vec<u32>> = ids
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect();
        assert_eq!(prompt.input_ids, expected, "{name}: input_ids");
        let mask: Vec<Vec<bool>> = case["attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() == 1)
                    .collect()
            })
            .collect();
        assert_eq!(prompt.attention_mask, mask, "{name}: attention_mask");

        // First-step logits (and, for T5, the encoder output).
        let bytes = std::fs::read(fixtures().join(fixture).join("generation.safetensors")).unwrap();
        let goldens = SafeTensors::deserialize(&bytes).unwrap();
        let logits = match model.language_model() {
            TextModel::Opt(lm) => {
                lm.prefill(prompt.embeds.clone(), &prompt.attention_mask, 1)
                    .unwrap()
                    .1
            }
            TextModel::T5(lm) => {
                let padding: Vec<bool> =
                    prompt.attention_mask.iter().flatten().map(|k| !k).collect();
                let [rows, len, _] = prompt.embeds.dims();
                let padding = Tensor::<4, Bool>::from_data(
                    TensorData::new(padding, [rows, 1, 1, len]),
                    &prompt.embeds.device(),
                );
                let encoded = lm.encode(prompt.embeds.clone(), padding);
                compare(
                    &goldens,
                    &format!("{name}.encoder_last_hidden_state"),
                    encoded,
                    name,
                );
                lm.prefill(prompt.embeds.clone(), &prompt.attention_mask, 1)
                    .unwrap()
                    .1
            }
            _ => unreachable!("a language model the tests do not know"),
        };
        compare(&goldens, &format!("{name}.first_logits"), logits, name);
    }

    let out = model
        .generate_from_embeddings(&embeddings, &prompt_refs, &config)
        .unwrap();
    let expected: Vec<Vec<u32>> = case["new_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let ours: Vec<Vec<u32>> = out.iter().flatten().map(|g| g.token_ids.clone()).collect();
    println!("{name}: {ours:?}");
    assert_eq!(ours, expected, "{name}: generated ids");
    let texts: Vec<String> = case["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().trim().to_owned())
        .collect();
    let our_texts: Vec<String> = out.iter().flatten().map(|g| g.text.clone()).collect();
    assert_eq!(our_texts, texts, "{name}: decoded text");
    for g in out.iter().flatten() {
        let ended_on_eos = g
            .token_ids
            .last()
            .is_some_and(|t| config.eos_token_id.contains(t));
        assert_eq!(g.stop_reason == StopReason::Eos, ended_on_eos, "{name}");
    }
}

fn compare<const D: usize>(goldens: &SafeTensors, key: &str, ours: Tensor<D>, name: &str) {
    let golden = goldens.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    let theirs: Vec<f32> = golden
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(ours.dims().to_vec(), golden.shape().to_vec(), "{key}");
    let ours = ours.into_data().try_into_vec_as::<f32>().unwrap();
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("{name}: {key} max-abs {diff:e}");
    assert!(diff <= 1e-4, "{key}: max-abs {diff}");
}
