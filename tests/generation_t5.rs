//! Flan-T5 generation against transformers' `generate()` on the tiny-t5 fixture (bf16 weights,
//! `q_bias`/`v_bias`, hub processor layout; `tests/fixtures/tiny-t5/generation.json` and
//! `generation.safetensors`, written by tools/parity/make_fixtures.py): encoder inputs, encoder
//! output and first-step logits (≤ 1e-4, f32 compute over the bf16-stored weights), generated ids
//! exactly.

mod common;

use common::{cases, run_case};

const FIXTURE: &str = "tiny-t5";

#[test]
fn every_golden_case_is_covered() {
    let names: Vec<String> = cases(FIXTURE)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let covered = [
        "caption_greedy",
        "caption_eos_min_new_tokens",
        "vqa_greedy",
        "batch_padded",
        "batch_padded_eos",
        "beam3",
        "beam3_eos",
        "beam3_two_returned",
        "penalties",
        "beam3_length_penalty",
    ];
    assert_eq!(names, covered);
}

#[test]
fn caption_greedy() {
    run_case(FIXTURE, "caption_greedy");
}
#[test]
fn caption_eos_min_new_tokens() {
    run_case(FIXTURE, "caption_eos_min_new_tokens");
}
#[test]
fn vqa_greedy() {
    run_case(FIXTURE, "vqa_greedy");
}
#[test]
fn batch_padded() {
    run_case(FIXTURE, "batch_padded");
}
#[test]
fn batch_padded_eos() {
    run_case(FIXTURE, "batch_padded_eos");
}
#[test]
fn beam3() {
    run_case(FIXTURE, "beam3");
}
#[test]
fn beam3_eos() {
    run_case(FIXTURE, "beam3_eos");
}
#[test]
fn beam3_two_returned() {
    run_case(FIXTURE, "beam3_two_returned");
}
#[test]
fn penalties() {
    run_case(FIXTURE, "penalties");
}
#[test]
fn beam3_length_penalty() {
    run_case(FIXTURE, "beam3_length_penalty");
}

#[test]
fn caption_and_ask_work_for_t5() {
    use blip2::preprocess::{load_image, ImageLimits};
    let model = common::model(FIXTURE);
    let image = load_image(
        common::fixtures().join("images/rgb_96x64.png"),
        ImageLimits::default(),
    )
    .unwrap();
    let caption = model.caption(&image).unwrap();
    let golden = common::case(FIXTURE, "caption_greedy");
    assert!(
        caption.starts_with(golden["texts"][0].as_str().unwrap().trim()),
        "{caption:?}"
    );
    let answer = model.ask(&image, "what is in the picture?").unwrap();
    let golden = common::case(FIXTURE, "vqa_greedy");
    assert!(
        answer.starts_with(golden["texts"][0].as_str().unwrap().trim()),
        "{answer:?}"
    );
}
