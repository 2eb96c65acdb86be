//! Loading the tiny HF-saved checkpoints under tests/fixtures (written by
//! tools/parity/make_fixtures.py with transformers' `save_pretrained`):
//! tiny-opt (fp16, sharded, fused qkv bias), tiny-t5 (bf16, single file, q_bias/v_bias),
//! tiny-itm (f32, single file).

use std::path::Path;

use blip2_core::config::TextConfig;
use blip2_core::{WeightDType, WeightSource};
use blip2_hub::{ModelDir, SafetensorsWeights};
use burn::tensor::{DType, TensorData};

use blip2_test_support::fixture;

#[derive(serde::Deserialize)]
struct Goldens {
    weights: WeightGoldens,
    tokenizer: Vec<TokenizerProbe>,
}

#[derive(serde::Deserialize)]
struct WeightGoldens {
    num_tensors: usize,
    probes: std::collections::BTreeMap<String, Probe>,
}

#[derive(serde::Deserialize)]
struct Probe {
    dtype: String,
    shape: Vec<usize>,
    first: Vec<f64>,
    sum: f64,
}

#[derive(serde::Deserialize)]
struct TokenizerProbe {
    text: String,
    ids: Vec<u32>,
}

fn goldens(dir: &Path) -> Goldens {
    serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap()).unwrap()
}

fn to_f32(data: &TensorData) -> Vec<f32> {
    data.clone().try_into_vec_as::<f32>().unwrap()
}

/// Every probed tensor, read as f32 and in its stored dtype, equals what torch read from the
/// same file; and the key count matches.
fn check_weights(name: &str, stored: DType, stored_name: &str) {
    let dir = fixture(name);
    let g = goldens(&dir);
    let weights = SafetensorsWeights::from_dir(&dir).unwrap();
    assert_eq!(weights.keys().len(), g.weights.num_tensors, "{name}");
    assert!(g.weights.probes.len() >= 4, "{name}: too few probes");
    for (key, probe) in &g.weights.probes {
        assert_eq!(probe.dtype, stored_name, "{key}");
        assert_eq!(
            weights.shape(key).as_deref(),
            Some(&probe.shape[..]),
            "{key}"
        );
        let f32_data = weights.read(key, &probe.shape, WeightDType::F32).unwrap();
        assert_eq!(f32_data.dtype(), DType::F32);
        assert_eq!(f32_data.shape().to_vec(), probe.shape);
        let values = to_f32(&f32_data);
        for (i, (a, b)) in values.iter().zip(&probe.first).enumerate() {
            // Exact: widening f16/bf16 to f32 is lossless, and so is torch's.
            assert_eq!(*a as f64, *b, "{key}[{i}]");
        }
        let sum: f64 = values.iter().map(|v| *v as f64).sum();
        assert!(
            (sum - probe.sum).abs() <= 1e-9 * probe.sum.abs().max(1.0),
            "{key}: {sum} vs {}",
            probe.sum
        );

        // Reading in the stored dtype keeps it, bit for bit.
        let target = match stored {
            DType::F16 => WeightDType::F16,
            DType::BF16 => WeightDType::BF16,
            _ => WeightDType::F32,
        };
        let same = weights.read(key, &probe.shape, target).unwrap();
        assert_eq!(same.dtype(), stored, "{key}");
        assert_eq!(to_f32(&same), values, "{key}");
    }
}

#[test]
fn opt_fp16_sharded() {
    let dir = fixture("tiny-opt");
    let index = std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap();
    assert!(
        index.contains("model-00002-of-00004.safetensors"),
        "the fixture must be sharded"
    );
    check_weights("tiny-opt", DType::F16, "float16");
    let weights = SafetensorsWeights::from_dir(&dir).unwrap();
    // transformers ties OPT's lm_head to embed_tokens and does not save it.
    assert!(!weights.contains("language_model.lm_head.weight"));
    assert!(weights.contains("language_model.model.decoder.embed_tokens.weight"));
    assert_eq!(weights.stored_dtype("query_tokens").as_deref(), Some("F16"));
}

#[test]
fn t5_bf16_single_file() {
    check_weights("tiny-t5", DType::BF16, "bfloat16");
    let weights = SafetensorsWeights::from_dir(fixture("tiny-t5")).unwrap();
    assert!(weights.contains("language_model.lm_head.weight"));
    assert!(weights.contains("vision_model.encoder.layers.0.self_attn.q_bias"));
    assert!(!weights.contains("vision_model.encoder.layers.0.self_attn.qkv.bias"));
}

#[test]
fn itm_f32_single_file() {
    check_weights("tiny-itm", DType::F32, "float32");
}

#[test]
fn dtype_conversions_round_trip() {
    let weights = SafetensorsWeights::from_dir(fixture("tiny-itm")).unwrap();
    let key = "vision_model.embeddings.class_embedding";
    let shape = [1, 1, 32];
    let f32_values = to_f32(&weights.read(key, &shape, WeightDType::F32).unwrap());
    for (target, dtype) in [
        (WeightDType::F16, DType::F16),
        (WeightDType::BF16, DType::BF16),
    ] {
        let narrowed = weights.read(key, &shape, target).unwrap();
        assert_eq!(narrowed.dtype(), dtype);
        let back = to_f32(&narrowed);
        for (a, b) in back.iter().zip(&f32_values) {
            // Round to nearest: within half a unit in the last place of the narrow type.
            let ulp = if dtype == DType::F16 {
                2f32.powi(-10)
            } else {
                2f32.powi(-7)
            };
            assert!((a - b).abs() <= b.abs() * ulp, "{a} vs {b}");
        }
    }
}

#[test]
fn model_dirs_parse_both_processor_layouts() {
    // transformers 5 layout: the image processor nested in processor_config.json.
    let opt = ModelDir::open(fixture("tiny-opt")).unwrap();
    assert!(!opt.path().join("preprocessor_config.json").exists());
    assert_eq!(
        (
            opt.preprocessor().size.height,
            opt.preprocessor().size.width
        ),
        (32, 32)
    );
    assert_eq!(opt.num_image_tokens(), 8);
    let c = opt.config();
    assert_eq!(c.vision_config.hidden_size, 32);
    assert_eq!(c.vision_config.patch_hw(), (8, 8));
    assert_eq!(c.qformer_config.num_hidden_layers, 3);
    assert_eq!(c.qformer_config.encoder_hidden_size, 32);
    assert_eq!(c.num_query_tokens, 8);
    assert_eq!(c.image_token_index, Some(400));
    let TextConfig::Opt(t) = &c.text_config else {
        panic!("tiny-opt is OPT")
    };
    assert_eq!(t.eos_token_ids(), vec![202]);
    assert_eq!(
        opt.generation().eos_token_id.as_ref().unwrap().to_vec(),
        vec![202]
    );
    assert_eq!(opt.generation().pad_token_id, Some(1));

    // Hub layout: preprocessor_config.json plus a small processor_config.json.
    let t5 = ModelDir::open(fixture("tiny-t5")).unwrap();
    assert!(t5.path().join("preprocessor_config.json").exists());
    assert_eq!(t5.processor().num_query_tokens, Some(8));
    assert_eq!(t5.preprocessor().size.height, 32);
    assert!(matches!(t5.config().text_config, TextConfig::T5(_)));

    let itm = ModelDir::open(fixture("tiny-itm")).unwrap();
    assert!(itm.config().is_retrieval());
    assert!(itm.config().qformer_config.use_qformer_text_input);
}

#[test]
fn tokenizers_match_transformers() {
    for name in ["tiny-opt", "tiny-t5", "tiny-itm"] {
        let dir = fixture(name);
        let tokenizer = ModelDir::open(&dir).unwrap().tokenizer().unwrap();
        for probe in goldens(&dir).tokenizer {
            let ids = tokenizer.encode(probe.text.as_str(), true).unwrap();
            assert_eq!(ids.get_ids(), &probe.ids[..], "{name}: {:?}", probe.text);
        }
    }
}
