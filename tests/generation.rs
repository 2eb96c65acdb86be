//! OPT generation against transformers' `generate()` on the tiny-opt fixture
//! (`tests/fixtures/tiny-opt/generation.json` and `generation.safetensors`, written by
//! tools/parity/make_fixtures.py): the model's input rows, the first-step logits (≤ 1e-4), and
//! the generated token ids (exactly) for greedy, batched, beam and penalised decoding.

mod common;

use std::ops::ControlFlow;

use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Blip2, GenerationConfig, StopReason, NO_PROMPTS};
use common::{case, cases, fixtures, images, prompts};
use serde_json::Value;

const FIXTURE: &str = "tiny-opt";

fn model() -> &'static Blip2 {
    common::model(FIXTURE)
}

fn run_case(name: &str) {
    common::run_case(FIXTURE, name);
}

#[test]
fn every_golden_case_is_covered() {
    let names: Vec<String> = cases(FIXTURE)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let covered = [
        "caption_greedy",
        "caption_eos",
        "caption_eos_min_new_tokens",
        "vqa_greedy",
        "batch_padded",
        "batch_padded_eos",
        "beam3",
        "beam3_eos",
        "beam3_two_returned",
        "penalties",
        "beam3_length_penalty",
        "beam4_length_penalty_negative",
    ];
    assert_eq!(names, covered);
}

#[test]
fn caption_greedy() {
    run_case("caption_greedy");
}
#[test]
fn caption_eos() {
    run_case("caption_eos");
}
#[test]
fn caption_eos_min_new_tokens() {
    run_case("caption_eos_min_new_tokens");
}
#[test]
fn vqa_greedy() {
    run_case("vqa_greedy");
}
#[test]
fn batch_padded() {
    run_case("batch_padded");
}
#[test]
fn batch_padded_eos() {
    run_case("batch_padded_eos");
}
#[test]
fn beam3() {
    run_case("beam3");
}
#[test]
fn beam3_eos() {
    run_case("beam3_eos");
}
#[test]
fn beam3_two_returned() {
    run_case("beam3_two_returned");
}
#[test]
fn penalties() {
    run_case("penalties");
}
#[test]
fn beam3_length_penalty() {
    run_case("beam3_length_penalty");
}
#[test]
fn beam4_length_penalty_negative() {
    run_case("beam4_length_penalty_negative");
}

fn photo() -> image::DynamicImage {
    load_image(
        fixtures().join("images/rgb_96x64.png"),
        ImageLimits::default(),
    )
    .unwrap()
}

#[test]
fn sampling_is_seeded_and_top_k_1_is_greedy() {
    let model = model();
    let img = [photo()];
    let base = GenerationConfig {
        max_new_tokens: Some(10),
        ..model.generation_config().clone()
    };
    let sampled = |seed| {
        let c = GenerationConfig {
            do_sample: true,
            top_k: 0,
            temperature: 1.5,
            seed,
            ..base.clone()
        };
        model.generate(&img, NO_PROMPTS, &c).unwrap()[0][0]
            .token_ids
            .clone()
    };
    assert_eq!(
        sampled(7),
        sampled(7),
        "the same seed must give the same sample"
    );
    let seeds_differ = (0..8)
        .map(sampled)
        .collect::<std::collections::HashSet<_>>()
        .len()
        > 1;
    assert!(
        seeds_differ,
        "different seeds should give different samples at temperature 1.5"
    );

    let greedy = model.generate(&img, NO_PROMPTS, &base).unwrap()[0][0]
        .token_ids
        .clone();
    let top1 = GenerationConfig {
        do_sample: true,
        top_k: 1,
        seed: 3,
        ..base.clone()
    };
    assert_eq!(
        model.generate(&img, NO_PROMPTS, &top1).unwrap()[0][0].token_ids,
        greedy
    );

    let several = GenerationConfig {
        do_sample: true,
        num_return_sequences: 3,
        seed: 1,
        ..base
    };
    let out = model.generate(&img, NO_PROMPTS, &several).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 3);
}

#[test]
fn caption_ask_and_stream() {
    let model = model();
    let img = photo();
    let caption = model.caption(&img).unwrap();
    let greedy = case(FIXTURE, "caption_greedy");
    // The checkpoint's defaults (30 new tokens, EOS "\n") extend the 12-token golden.
    let golden_text = greedy["texts"][0].as_str().unwrap().trim();
    assert!(
        caption.starts_with(golden_text),
        "{caption:?} vs {golden_text:?}"
    );
    let answer = model.ask(&img, "what is in the picture?").unwrap();
    let vqa = case(FIXTURE, "vqa_greedy");
    assert!(
        answer.starts_with(vqa["texts"][0].as_str().unwrap().trim()),
        "{answer:?}"
    );

    let config = GenerationConfig {
        max_new_tokens: Some(12),
        ..model.generation_config().clone()
    };
    let mut pieces = Vec::new();
    let done = model
        .generate_stream(&img, None, &config, &mut |p| {
            pieces.push(p.to_owned());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(pieces.len() > 1);
    assert_eq!(pieces.concat().trim(), done.text);
    assert_eq!(
        done.token_ids,
        greedy["new_tokens"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    );
}

/// Every fixture image, 30 tokens or more, greedy and sampled: the streamed pieces concatenate to
/// the text `generate` returns for the same settings (the tiny model's byte-level BPE splits
/// multi-byte characters over tokens, which once made the stream drop text).
#[test]
fn streamed_pieces_are_the_generated_text_on_every_image() {
    let model = model();
    let dir = fixtures().join("images");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 8, "{paths:?}");
    let greedy = GenerationConfig {
        min_new_tokens: Some(30),
        max_new_tokens: Some(40),
        ..model.generation_config().clone()
    };
    let sampled = GenerationConfig {
        do_sample: true,
        seed: 7,
        ..greedy.clone()
    };
    let mut split_characters = 0;
    for path in &paths {
        let img = load_image(path, ImageLimits::default()).unwrap();
        for config in [&greedy, &sampled] {
            let mut pieces = Vec::new();
            let streamed = model
                .generate_stream(&img, None, config, &mut |p| {
                    pieces.push(p.to_owned());
                    ControlFlow::Continue(())
                })
                .unwrap();
            let generated = &model
                .generate(std::slice::from_ref(&img), NO_PROMPTS, config)
                .unwrap()[0][0];
            assert!(generated.token_ids.len() >= 30);
            assert_eq!(streamed, *generated, "{}", path.display());
            assert_eq!(
                pieces.concat(),
                generated.text,
                "{}: {pieces:?}",
                path.display()
            );
            assert!(pieces.iter().all(|p| !p.is_empty()));
            // How often a token ended inside a character (its own decode is not valid UTF-8).
            let tokenizer = model.tokenizer();
            split_characters += generated
                .token_ids
                .iter()
                .filter(|&&t| tokenizer.decode(&[t], true).unwrap().contains('\u{FFFD}'))
                .count();
        }
    }
    println!("{split_characters} generated tokens ended inside a multi-byte character");
    assert!(
        split_characters > 0,
        "the case this test is for never came up"
    );
}

#[test]
fn the_stream_callback_can_stop_generation() {
    let model = model();
    let config = GenerationConfig {
        min_new_tokens: Some(30),
        max_new_tokens: Some(30),
        ..model.generation_config().clone()
    };
    let mut pieces = Vec::new();
    let stopped = model
        .generate_stream(&photo(), None, &config, &mut |p| {
            pieces.push(p.to_owned());
            if pieces.len() == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(pieces.len(), 3);
    assert_eq!(stopped.stop_reason, StopReason::Stopped);
    assert!(stopped.token_ids.len() < 30, "{:?}", stopped.token_ids);
    let full = &model.generate(&[photo()], NO_PROMPTS, &config).unwrap()[0][0];
    assert!(full.token_ids.starts_with(&stopped.token_ids));
    assert!(full.text.starts_with(&pieces.concat()));
}

#[test]
fn bad_generation_inputs_are_errors() {
    use blip2::Error;
    let model = model();
    let img = photo();
    let base = GenerationConfig {
        max_new_tokens: Some(4),
        ..model.generation_config().clone()
    };
    let err = |r: blip2::Result<Vec<Vec<blip2::Generation>>>| match r {
        Err(e @ Error::InvalidInput(_)) if e.is_input() => e.to_string(),
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    // Prompt longer than the position table (64 in the tiny model).
    let long = "a photo of a cat ".repeat(20);
    println!(
        "{}",
        err(model.generate(std::slice::from_ref(&img), &[long.as_str()], &base))
    );
    println!("{}", err(model.generate(&[], NO_PROMPTS, &base)));
    println!(
        "{}",
        err(model.generate(std::slice::from_ref(&img), &["a", "b"], &base))
    );
    for bad in [
        GenerationConfig {
            num_beams: 0,
            ..base.clone()
        },
        GenerationConfig {
            top_p: 1.5,
            ..base.clone()
        },
        GenerationConfig {
            top_p: 0.0,
            ..base.clone()
        },
        GenerationConfig {
            do_sample: true,
            temperature: 0.0,
            ..base.clone()
        },
        GenerationConfig {
            num_return_sequences: 4,
            num_beams: 2,
            ..base.clone()
        },
        GenerationConfig {
            min_new_tokens: Some(9),
            ..base.clone()
        },
    ] {
        println!(
            "{}",
            err(model.generate(std::slice::from_ref(&img), NO_PROMPTS, &bad))
        );
    }
}

#[test]
fn blip2_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Blip2>();
}

/// A checkpoint without `image_token_index` (the older hub configs): the queries are prepended
/// to the text embeddings instead of replacing `<image>` tokens. The language model sees the same
/// sequence, so greedy ids without penalties equal the golden ones.
#[test]
fn legacy_checkpoint_without_image_tokens_generates_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny-opt")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    let config_path = tmp.path().join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("image_token_index");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let legacy = Blip2::from_pretrained(tmp.path().to_str().unwrap()).unwrap();
    for name in ["caption_greedy", "vqa_greedy", "batch_padded"] {
        let case = case(FIXTURE, name);
        let prompts = prompts(&case);
        let config = GenerationConfig {
            max_new_tokens: case["generate_kwargs"]["max_new_tokens"]
                .as_u64()
                .map(|n| n as usize),
            ..legacy.generation_config().clone()
        };
        let out = legacy.generate(&images(&case), &prompts, &config).unwrap();
        let ours: Vec<Value> = out
            .iter()
            .flatten()
            .map(|g| serde_json::json!(g.token_ids))
            .collect();
        assert_eq!(Value::Array(ours), case["new_tokens"], "{name}");
    }
}

#[test]
fn the_builder_takes_a_path_and_a_question_template() {
    let dir = fixtures().join(FIXTURE);
    let model = Blip2::builder(dir.as_path())
        .question_template("Q: {} Short answer:")
        .build()
        .unwrap();
    let debug = format!("{model:?}");
    assert!(
        debug.contains("OPT") && debug.contains("Short answer"),
        "{debug}"
    );
    let img = photo();
    let config = model.generation_config().clone();
    let direct = model
        .generate(
            std::slice::from_ref(&img),
            &["Q: what is it? Short answer:"],
            &config,
        )
        .unwrap();
    assert_eq!(model.ask(&img, "what is it?").unwrap(), direct[0][0].text);
    // A template without `{}` is refused before anything is read.
    let err = Blip2::builder(dir.join("does-not-exist"))
        .question_template("Q: A:")
        .build()
        .unwrap_err();
    assert!(matches!(err, blip2::Error::InvalidInput(_)), "{err}");
}
