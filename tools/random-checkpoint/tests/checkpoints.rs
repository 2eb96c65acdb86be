//! The written checkpoints against what transformers writes and what the crate loads: the
//! layout for the committed fixtures' configurations is exactly their tensors (names, shapes),
//! the files load through `blip2`'s public API and generate, values are deterministic from the
//! seed and initialised as documented, and every named shape lays out.

use std::collections::BTreeMap;
use std::path::Path;

use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Blip2, Blip2Config, GenerationConfig, NO_PROMPTS};
use blip2_random_checkpoint::{shape_config, tensors, write, Init, Options, StoredDType, SHAPES};
use safetensors::SafeTensors;
use serde_json::Value;

use blip2_test_support::fixtures;

fn fixture_config(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Name → (dtype, shape) of every tensor in a checkpoint folder's weight files
/// (`model*.safetensors`; the fixtures' goldens sit beside them).
fn stored(dir: &Path) -> BTreeMap<String, (String, Vec<usize>)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("model") && name.ends_with(".safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let file = SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in file.tensors() {
                let dtype = format!("{:?}", view.dtype());
                out.insert(name, (dtype, view.shape().to_vec()));
            }
        }
    }
    out
}

fn layout_of(config: &Value) -> BTreeMap<String, Vec<usize>> {
    let parsed = Blip2Config::from_json(&config.to_string()).unwrap();
    tensors(&parsed)
        .unwrap()
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect()
}

#[test]
fn the_layout_is_what_transformers_saved_for_the_fixtures() {
    // tiny-t5 has the hub's vision biases (q_bias, v_bias); tiny-opt was saved with the fused
    // qkv.bias of newer exports, which the layout writes as the hub's two halves.
    for fixture in ["tiny-t5", "tiny-opt"] {
        let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (name, (_, shape)) in stored(&fixtures().join(fixture)) {
            match name.strip_suffix("self_attn.qkv.bias") {
                Some(layer) => {
                    let h = shape[0] / 3;
                    expected.insert(format!("{layer}self_attn.q_bias"), vec![h]);
                    expected.insert(format!("{layer}self_attn.v_bias"), vec![h]);
                }
                None => {
                    expected.insert(name, shape);
                }
            }
        }
        let ours = layout_of(&fixture_config(fixture));
        let missing: Vec<_> = expected.keys().filter(|k| !ours.contains_key(*k)).collect();
        let extra: Vec<_> = ours.keys().filter(|k| !expected.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{fixture}: missing {missing:?}, extra {extra:?}"
        );
        for (name, shape) in &expected {
            assert_eq!(&ours[name], shape, "{fixture}: {name}");
        }
    }
}

#[test]
fn written_checkpoints_load_and_generate() {
    let image = load_image(
        fixtures().join("images/rgb_96x64.png"),
        ImageLimits::default(),
    )
    .unwrap();
    for (fixture, dtype) in [
        ("tiny-opt", StoredDType::F16),
        ("tiny-t5", StoredDType::BF16),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            dtype,
            // Small shards, so the sharded layout and its index are what gets loaded.
            max_shard_bytes: 50_000,
            ..Options::default()
        };
        let written = write(dir.path(), fixture_config(fixture), options).unwrap();
        assert!(dir.path().join("model.safetensors.index.json").is_file());
        let files = stored(dir.path());
        assert_eq!(files.len(), written.tensors);
        let want = format!("{dtype:?}").to_uppercase();
        assert!(files.values().all(|(d, _)| *d == want), "{fixture}: {want}");

        let model = Blip2::from_pretrained(dir.path()).unwrap();
        let config = GenerationConfig {
            max_new_tokens: Some(4),
            min_new_tokens: Some(4),
            ..model.generation_config().clone()
        };
        let out = model
            .generate(std::slice::from_ref(&image), NO_PROMPTS, &config)
            .unwrap();
        let generation = &out[0][0];
        assert_eq!(generation.token_ids.len(), 4, "{fixture}");
        // Every id is in the word-level vocabulary: ordinary ones decode as `w{id}`.
        for id in &generation.token_ids {
            let token = model.tokenizer().decode(&[*id], false).unwrap();
            assert!(
                token == format!("w{id}") || token.starts_with('<'),
                "{fixture}: {id} decodes as {token:?}"
            );
        }
    }
}

#[test]
fn values_follow_the_seed_and_the_initialisation() {
    let config = fixture_config("tiny-opt");
    let write_with = |seed| {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            dtype: StoredDType::F32,
            seed,
            ..Options::default()
        };
        write(dir.path(), config.clone(), options).unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        (dir, bytes)
    };
    let (_a, first) = write_with(7);
    let (_b, again) = write_with(7);
    let (_c, other) = write_with(8);
    assert_eq!(first, again, "same seed, same bytes");
    assert_ne!(first, other, "another seed, other values");

    let file = SafeTensors::deserialize(&first).unwrap();
    let parsed = Blip2Config::from_json(&config.to_string()).unwrap();
    let mut random = Vec::new();
    for spec in tensors(&parsed).unwrap() {
        let values: Vec<f32> = file
            .tensor(&spec.name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        match spec.init {
            Init::Zeros => assert!(values.iter().all(|&v| v == 0.0), "{}", spec.name),
            Init::Ones => assert!(values.iter().all(|&v| v == 1.0), "{}", spec.name),
            Init::Random => random.extend(values),
        }
    }
    let n = random.len() as f64;
    let mean = random.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (random
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let bound = 0.02 * 3f64.sqrt();
    assert!(mean.abs() < 1e-3, "mean {mean}");
    assert!((std - 0.02).abs() < 1e-3, "std {std}");
    assert!(random.iter().all(|&v| (v as f64).abs() <= bound + 1e-7));
}

#[test]
fn every_named_shape_lays_out() {
    let mut parameters = BTreeMap::new();
    for name in SHAPES {
        let config = shape_config(name).unwrap();
        let parsed = Blip2Config::from_json(&config.to_string()).unwrap();
        let count: usize = tensors(&parsed).unwrap().iter().map(|t| t.len()).sum();
        parameters.insert(name, count);
    }
    assert!(shape_config("opt-1b").is_none());
    // bench-small is make_models.py's shape: it reported 384M parameters.
    assert_eq!(parameters["bench-small"], 383_680_128);
    // The full shapes: about 3.7B, 7.6B, 3.9B and 12.1B parameters, as on the hub's model cards.
    for (name, low, high) in [
        ("opt-2.7b", 3.6e9, 3.9e9),
        ("opt-6.7b", 7.5e9, 7.8e9),
        ("flan-t5-xl", 3.8e9, 4.0e9),
        ("flan-t5-xxl", 11.9e9, 12.3e9),
    ] {
        let p = parameters[name] as f64;
        assert!(p > low && p < high, "{name}: {p}");
    }
}
