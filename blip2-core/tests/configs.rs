//! Parses config.json files laid out like the real hub repos' and checks the effective values,
//! most of which come from transformers' defaults because the files omit them.

use blip2_core::config::{
    Activation, Blip2Config, GenerationConfigFile, PreprocessorConfig, ProcessorConfig, Resample,
    TextConfig,
};
use blip2_core::Error;

fn hub_config(name: &str) -> Blip2Config {
    let path = blip2_test_support::fixture("hub-configs").join(name);
    Blip2Config::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_vit_g_and_qformer_defaults(c: &Blip2Config) {
    let v = &c.vision_config;
    assert_eq!(v.hidden_size, 1408);
    assert_eq!(v.num_hidden_layers, 39);
    assert_eq!(v.num_attention_heads, 16);
    assert_eq!(v.intermediate_size, 6144);
    assert_eq!(v.image_hw(), (224, 224));
    assert_eq!(v.patch_hw(), (14, 14));
    assert_eq!(v.num_positions(), 257);
    assert_eq!(v.layer_norm_eps, 1e-6);
    assert!(v.qkv_bias);
    assert_eq!(v.hidden_act, Activation::Gelu);

    let q = &c.qformer_config;
    assert_eq!(q.hidden_size, 768);
    assert_eq!(q.num_hidden_layers, 12);
    assert_eq!(q.num_attention_heads, 12);
    assert_eq!(q.intermediate_size, 3072);
    assert_eq!(q.layer_norm_eps, 1e-12);
    assert_eq!(q.cross_attention_frequency, 2);
    assert_eq!(q.max_position_embeddings, 512);
    assert_eq!(q.hidden_act, Activation::Gelu);
    // Blip2Config ties the Q-Former's cross-attention width to the vision width.
    assert_eq!(q.encoder_hidden_size, 1408);
    assert!(q.has_cross_attention(0) && !q.has_cross_attention(1) && q.has_cross_attention(10));

    assert_eq!(c.num_query_tokens, 32);
    assert_eq!(c.image_text_hidden_size, 256);
}

#[test]
fn blip2_opt_2_7b() {
    let c = hub_config("blip2-opt-2.7b.json");
    assert_vit_g_and_qformer_defaults(&c);
    assert_eq!(c.image_token_index, Some(50265));
    assert!(c.use_decoder_only_language_model());
    let TextConfig::Opt(t) = &c.text_config else {
        panic!("expected OPT, got {:?}", c.text_config)
    };
    assert_eq!(t.hidden_size, 2560);
    assert_eq!(t.ffn_dim, 10240);
    assert_eq!(t.num_hidden_layers, 32);
    assert_eq!(t.num_attention_heads, 32);
    assert_eq!(t.head_dim(), 80);
    assert_eq!(t.vocab_size, 50304);
    assert_eq!(t.embed_dim(), 2560);
    assert_eq!(t.max_position_embeddings, 2048);
    assert!(t.do_layer_norm_before);
    assert_eq!(t.activation_function, Activation::Relu);
    // "\n" stops generation; </s> is BOS; <pad> is 1 (the last two are OPTConfig defaults).
    assert_eq!(t.eos_token_ids(), vec![50118]);
    assert_eq!(t.bos_token_id, Some(2));
    assert_eq!(t.pad_token_id, Some(1));
    assert!(t.tie_word_embeddings);
    assert!(t.enable_bias);
}

#[test]
fn blip2_opt_6_7b() {
    let c = hub_config("blip2-opt-6.7b.json");
    assert_vit_g_and_qformer_defaults(&c);
    let TextConfig::Opt(t) = &c.text_config else {
        panic!("expected OPT")
    };
    assert_eq!(
        (t.hidden_size, t.ffn_dim, t.num_hidden_layers),
        (4096, 16384, 32)
    );
    assert_eq!(t.head_dim(), 128);
    assert_eq!(c.text_config.hidden_size(), 4096);
}

fn assert_flan_t5_common(c: &Blip2Config) -> &blip2_core::config::T5Config {
    assert_vit_g_and_qformer_defaults(c);
    assert_eq!(c.image_token_index, Some(32100));
    assert!(!c.use_decoder_only_language_model());
    let TextConfig::T5(t) = &c.text_config else {
        panic!("expected T5, got {:?}", c.text_config)
    };
    assert_eq!(t.d_kv, 64);
    assert_eq!((t.num_layers, t.decoder_layers()), (24, 24));
    assert_eq!(t.vocab_size, 32128);
    assert_eq!(t.relative_attention_num_buckets, 32);
    assert_eq!(t.relative_attention_max_distance, 128);
    assert_eq!(t.layer_norm_epsilon, 1e-6);
    // "gated-gelu" with an explicit dense_act_fn "gelu": transformers 5.24 keeps the file's
    // dense_act_fn, so the gated block uses the exact GELU.
    let ff = t.feed_forward().unwrap();
    assert!(ff.gated);
    assert_eq!(ff.activation, Activation::Gelu);
    // tie_word_embeddings: false -> separate lm_head, no d_model^-0.5 rescale.
    assert!(!t.scale_decoder_outputs());
    assert_eq!(t.decoder_start(), 0);
    assert_eq!(t.eos_token_ids(), vec![1]);
    assert_eq!(t.pad_token_id, Some(0));
    t
}

#[test]
fn blip2_flan_t5_xl() {
    let c = hub_config("blip2-flan-t5-xl.json");
    let t = assert_flan_t5_common(&c);
    assert_eq!((t.d_model, t.d_ff, t.num_heads), (2048, 5120, 32));
    assert_eq!(t.inner_dim(), 2048);
}

#[test]
fn blip2_flan_t5_xxl() {
    let c = hub_config("blip2-flan-t5-xxl.json");
    let t = assert_flan_t5_common(&c);
    assert_eq!((t.d_model, t.d_ff, t.num_heads), (4096, 10240, 64));
}

#[test]
fn blip2_itm_vit_g() {
    let c = hub_config("blip2-itm-vit-g.json");
    assert_vit_g_and_qformer_defaults(&c);
    assert!(c.is_retrieval());
    assert!(c.qformer_config.use_qformer_text_input);
    assert_eq!(c.qformer_config.vocab_size, 30523);
    assert_eq!(c.image_token_index, None);
    // No text_config: transformers falls back to a default OPTConfig.
    assert_eq!(c.text_config.model_type(), "opt");
}

#[test]
fn t5_activation_rules_follow_transformers() {
    // Expected values measured with transformers 5.24 (T5Config.from_dict(...).dense_act_fn).
    let parse = |proj: &str, act: Option<&str>| {
        let act = act
            .map(|a| format!(r#", "dense_act_fn": "{a}""#))
            .unwrap_or_default();
        let json = format!(
            r#"{{"model_type": "blip-2", "text_config": {{"model_type": "t5", "feed_forward_proj": "{proj}"{act}}}}}"#
        );
        match Blip2Config::from_json(&json).map(|c| c.text_config) {
            Ok(TextConfig::T5(t)) => t.feed_forward(),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        }
    };
    let ff = |proj, act| parse(proj, act).map(|f| (f.gated, f.activation));
    assert_eq!(ff("gated-gelu", None).unwrap(), (true, Activation::GeluNew));
    assert_eq!(
        ff("gated-gelu", Some("gelu")).unwrap(),
        (true, Activation::Gelu)
    );
    assert_eq!(ff("relu", None).unwrap(), (false, Activation::Relu));
    assert_eq!(ff("gelu", None).unwrap(), (false, Activation::Gelu));
    assert_eq!(ff("gated-silu", None).unwrap(), (true, Activation::Silu));
    assert_eq!(
        ff("relu", Some("gelu_new")).unwrap(),
        (false, Activation::GeluNew)
    );
    assert!(matches!(
        ff("gated-gelu-x", None),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        ff("gated-cube", None),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn empty_config_is_transformers_default() {
    let c = Blip2Config::from_json("{}").unwrap();
    assert_eq!(c, Blip2Config::default());
    let TextConfig::Opt(t) = &c.text_config else {
        panic!()
    };
    assert_eq!(
        (t.hidden_size, t.num_hidden_layers, t.vocab_size),
        (768, 12, 50272)
    );
    assert_eq!(t.eos_token_ids(), vec![2]);
}

#[test]
fn image_token_id_alias_and_pair_sizes() {
    let c = Blip2Config::from_json(
        r#"{"image_token_id": 7, "vision_config": {"image_size": [28, 42], "patch_size": 14, "hidden_size": 64, "num_attention_heads": 4}}"#,
    )
    .unwrap();
    assert_eq!(c.image_token_index, Some(7));
    assert_eq!(c.vision_config.image_hw(), (28, 42));
    assert_eq!(c.vision_config.num_patches(), 6);
    assert_eq!(c.qformer_config.encoder_hidden_size, 64);
}

#[test]
fn bad_configs_are_typed_errors() {
    let err = |json: &str| Blip2Config::from_json(json).unwrap_err();
    assert!(matches!(err("not json"), Error::Json { .. }));
    assert!(matches!(
        err(r#"{"vision_config": {"hidden_size": "wide"}}"#),
        Error::Json { .. }
    ));
    match err(r#"{"model_type": "llava"}"#) {
        Error::UnsupportedModelType { field, found, .. } => {
            assert_eq!((field.as_str(), found.as_str()), ("model_type", "llava"))
        }
        e => panic!("{e}"),
    }
    match err(r#"{"text_config": {"model_type": "gpt2"}}"#) {
        Error::UnsupportedModelType { field, found, .. } => {
            assert_eq!(field, "text_config.model_type");
            assert_eq!(found, "gpt2");
        }
        e => panic!("{e}"),
    }
    for (text_config, bad_field) in [
        (
            r#"{"model_type": "llama", "rope_parameters": {"rope_type": "yarn"}}"#,
            "text_config.rope_parameters.rope_type",
        ),
        (
            r#"{"model_type": "llama", "rope_scaling": {"type": "linear", "factor": 2.0}}"#,
            "text_config.rope_scaling",
        ),
        (
            r#"{"model_type": "llama", "hidden_size": 96, "num_attention_heads": 4, "head_dim": 7}"#,
            "text_config.head_dim",
        ),
        (
            r#"{"model_type": "llama", "num_attention_heads": 32, "num_key_value_heads": 5}"#,
            "text_config.num_key_value_heads",
        ),
        (
            r#"{"model_type": "llama", "rope_theta": 0.5}"#,
            "text_config.rope_theta",
        ),
    ] {
        match err(&format!(r#"{{"text_config": {text_config}}}"#)) {
            Error::InvalidConfig { field, .. } => assert_eq!(field, bad_field, "{text_config}"),
            e => panic!("{text_config}: {e}"),
        }
    }
    match err(r#"{"vision_config": {"hidden_size": 1000000000}}"#) {
        Error::InvalidConfig { field, .. } => assert_eq!(field, "vision_config.hidden_size"),
        e => panic!("{e}"),
    }
    match err(r#"{"text_config": {"model_type": "opt", "num_hidden_layers": 1000000}}"#) {
        Error::InvalidConfig { field, .. } => assert_eq!(field, "text_config.num_hidden_layers"),
        e => panic!("{e}"),
    }
    match err(r#"{"qformer_config": {"hidden_size": 770}}"#) {
        Error::InvalidConfig { field, reason } => {
            assert_eq!(field, "qformer_config.num_attention_heads");
            assert!(reason.contains("770"), "{reason}");
        }
        e => panic!("{e}"),
    }
    match err(r#"{"vision_config": {"image_size": 225}}"#) {
        Error::InvalidConfig { field, .. } => assert_eq!(field, "vision_config.image_size"),
        e => panic!("{e}"),
    }
    assert!(matches!(
        err(r#"{"vision_config": {"hidden_act": "mish"}}"#),
        Error::Json { .. }
    ));
    assert!(matches!(
        err(r#"{"num_query_tokens": 0}"#),
        Error::InvalidConfig { .. }
    ));
}

#[test]
fn config_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{ broken").unwrap();
    let e = Blip2Config::from_file(&path).unwrap_err();
    assert!(
        matches!(&e, Error::Json { path: p, .. } if p == &path),
        "{e}"
    );
    assert!(e.to_string().contains("config.json"));
    let missing = dir.path().join("nope.json");
    assert!(matches!(
        Blip2Config::from_file(&missing),
        Err(Error::Io { path, .. }) if path == missing
    ));
}

#[test]
fn preprocessor_config_hub_layout() {
    let json = r#"{
        "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "BlipImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "Blip2Processor",
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}
    }"#;
    let p: PreprocessorConfig = serde_json::from_str(json).unwrap();
    assert_eq!((p.size.height, p.size.width), (224, 224));
    assert_eq!(p.resample, Resample::Bicubic);
    assert_eq!(p.image_mean, [0.48145466, 0.4578275, 0.40821073]);
    assert!(p.do_convert_rgb);

    // BlipImageProcessor's own defaults when fields are omitted.
    let d: PreprocessorConfig = serde_json::from_str("{}").unwrap();
    assert_eq!((d.size.height, d.size.width), (384, 384));
    assert_eq!(d.rescale_factor, 1.0 / 255.0);

    let bad: Result<PreprocessorConfig, _> =
        serde_json::from_str(r#"{"size": {"shortest_edge": 224}}"#);
    assert!(bad.is_err());
    let bad: Result<PreprocessorConfig, _> = serde_json::from_str(r#"{"resample": 9}"#);
    assert!(bad.is_err());
}

#[test]
fn processor_config_both_layouts() {
    let small: ProcessorConfig =
        serde_json::from_str(r#"{"num_query_tokens": 32, "processor_class": "Blip2Processor"}"#)
            .unwrap();
    assert_eq!(small.num_query_tokens, Some(32));
    assert!(small.image_processor.is_none());
    let nested: ProcessorConfig = serde_json::from_str(
        r#"{"image_processor": {"size": {"height": 32, "width": 32}}, "num_query_tokens": 8}"#,
    )
    .unwrap();
    assert_eq!(nested.image_processor.unwrap().size.height, 32);
}

#[test]
fn generation_config_file() {
    let g: GenerationConfigFile = serde_json::from_str(
        r#"{"_from_model_config": true, "bos_token_id": 2, "eos_token_id": 50118, "pad_token_id": 1, "transformers_version": "4.47.0.dev0"}"#,
    )
    .unwrap();
    assert_eq!(g.eos_token_id.unwrap().to_vec(), vec![50118]);
    assert_eq!((g.bos_token_id, g.pad_token_id), (Some(2), Some(1)));
    let g: GenerationConfigFile = serde_json::from_str(
        r#"{"eos_token_id": [1, 2], "early_stopping": "never", "num_beams": 5}"#,
    )
    .unwrap();
    assert_eq!(g.eos_token_id.unwrap().to_vec(), vec![1, 2]);
    assert_eq!(
        g.early_stopping,
        Some(blip2_core::config::EarlyStopping::Never)
    );
}

/// InstructBLIP's config.json: the family, a Q-Former that always reads text, LLaMA's defaults
/// and the legacy `rope_theta` spelling.
#[test]
fn instructblip_configs_parse_with_transformers_defaults() {
    let c = Blip2Config::from_json(
        r#"{"model_type": "instructblip", "text_config": {"model_type": "llama", "rope_theta": 500000.0,
            "num_key_value_heads": 8}, "qformer_config": {"model_type": "instructblip_qformer"}}"#,
    )
    .unwrap();
    assert_eq!(c.family, blip2_core::config::ModelFamily::InstructBlip);
    assert!(c.qformer_config.use_qformer_text_input);
    assert!(c.use_decoder_only_language_model());
    let TextConfig::Llama(t) = &c.text_config else {
        panic!("{:?}", c.text_config)
    };
    assert_eq!(
        (
            t.hidden_size,
            t.num_hidden_layers,
            t.kv_heads(),
            t.head_dim()
        ),
        (4096, 32, 8, 128)
    );
    assert_eq!(t.rope_theta(), 500000.0);
    assert_eq!(
        (t.bos_token_id, t.eos_token_ids(), t.pad_token_id),
        (Some(1), vec![2], None)
    );
    let blip2 = Blip2Config::from_json("{}").unwrap();
    assert_eq!(blip2.family, blip2_core::config::ModelFamily::Blip2);
    assert!(!blip2.qformer_config.use_qformer_text_input);
}
