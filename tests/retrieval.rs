//! Retrieval (ITM, ITC, embeddings) against transformers' `Blip2ForImageTextRetrieval` on the
//! tiny-itm fixture: a 3×3 grid of images × texts (`goldens.json` "retrieval",
//! `goldens.safetensors` itc_* / itm_*, written by tools/parity/make_fixtures.py).

mod common;

use std::sync::OnceLock;

use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Blip2, Blip2Retrieval, Error, ErrorKind};
use common::fixtures;
use safetensors::SafeTensors;
use serde_json::Value;

fn model() -> &'static Blip2Retrieval {
    static MODEL: OnceLock<Blip2Retrieval> = OnceLock::new();
    MODEL.get_or_init(|| {
        Blip2Retrieval::from_pretrained(fixtures().join("tiny-itm").to_str().unwrap()).unwrap()
    })
}

struct Grid {
    images: Vec<image::DynamicImage>,
    texts: Vec<String>,
    meta: Value,
    goldens: Vec<u8>,
}

fn grid() -> Grid {
    let dir = fixtures().join("tiny-itm");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap()).unwrap();
    let r = &meta["retrieval"];
    let images = r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| load_image(fixtures().join(p.as_str().unwrap()), ImageLimits::default()).unwrap())
        .collect();
    let texts = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    Grid {
        images,
        texts,
        meta: meta.clone(),
        goldens: std::fs::read(dir.join("goldens.safetensors")).unwrap(),
    }
}

fn golden(g: &Grid, key: &str) -> (Vec<usize>, Vec<f32>) {
    let st = SafeTensors::deserialize(&g.goldens).unwrap();
    let t = st.tensor(key).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

fn check(name: &str, ours: Vec<f32>, theirs: &[f32], tolerance: f32) {
    assert_eq!(ours.len(), theirs.len(), "{name}");
    let diff = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("{name}: max-abs {diff:e}");
    assert!(diff <= tolerance, "{name}: max-abs {diff}");
}

#[test]
fn tokenization_matches_the_processor() {
    let g = grid();
    let texts = &g.texts; // owned Strings: the API takes any AsRef<str>
    let blip2::TokenizedTexts { ids, padding } = model().tokenize(texts).unwrap();
    let r = &g.meta["retrieval"];
    let expected: Vec<Vec<u32>> = serde_json::from_value(r["text_input_ids"].clone()).unwrap();
    let mask: Vec<Vec<u8>> = serde_json::from_value(r["text_attention_mask"].clone()).unwrap();
    assert_eq!(ids, expected);
    let ours: Vec<Vec<u8>> = padding
        .iter()
        .map(|p| p.iter().map(|&pad| u8::from(!pad)).collect())
        .collect();
    assert_eq!(ours, mask);
}

#[test]
fn itc_embeddings_and_similarity_match_transformers() {
    let g = grid();
    let texts = &g.texts;
    let m = model();
    let (shape, theirs) = golden(&g, "itc_image_embeds");
    let ours = m.image_embeddings(&g.images).unwrap();
    assert_eq!(vec![ours.len(), ours[0].len(), ours[0][0].len()], shape);
    check(
        "image embeddings",
        ours.into_iter().flatten().flatten().collect(),
        &theirs,
        1e-4,
    );
    let (shape, theirs) = golden(&g, "itc_text_embeds");
    let ours = m.text_embeddings(texts).unwrap();
    assert_eq!(vec![ours.len(), ours[0].len()], shape);
    check(
        "text embeddings",
        ours.into_iter().flatten().collect(),
        &theirs,
        1e-4,
    );
    let (_, theirs) = golden(&g, "itc_similarity");
    let ours = m.similarity(&g.images, texts).unwrap();
    assert_eq!((ours.len(), ours[0].len()), (3, 3));
    check(
        "ITC similarity",
        ours.into_iter().flatten().collect(),
        &theirs,
        1e-4,
    );
}

#[test]
fn itm_matches_transformers() {
    let g = grid();
    let texts = &g.texts;
    let m = model();
    let (_, theirs) = golden(&g, "itm_logits");
    let ours = m.match_logits(&g.images, texts).unwrap();
    check(
        "ITM logits",
        ours.into_iter().flatten().flatten().collect(),
        &theirs,
        1e-4,
    );
    let (_, theirs) = golden(&g, "itm_probability");
    let ours: Vec<f32> = m
        .match_probability(&g.images, texts)
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    // The probabilities are small here (random weights): compare relative to their size too.
    for (a, b) in ours.iter().zip(&theirs) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1e-2),
            "ITM probability {a} vs {b}"
        );
    }
    check("ITM probability", ours, &theirs, 1e-6);
}

#[test]
fn rank_reorders_itc_candidates_by_itm() {
    let g = grid();
    let texts = &g.texts;
    let m = model();
    let ranked = m.rank(&g.images, texts, 2).unwrap();
    let itc = m.similarity(&g.images, texts).unwrap();
    let logits = m.match_logits(&g.images, texts).unwrap();
    for (i, r) in ranked.iter().enumerate() {
        assert_eq!(r.len(), 2);
        // The candidates are the two best by ITC...
        let mut by_itc: Vec<usize> = (0..3).collect();
        by_itc.sort_by(|&a, &b| itc[i][b].total_cmp(&itc[i][a]));
        let mut chosen: Vec<usize> = r.iter().map(|t| t.index).collect();
        chosen.sort();
        let mut top2 = by_itc[..2].to_vec();
        top2.sort();
        assert_eq!(chosen, top2);
        // ...ordered by ITM logit + ITC.
        for t in r {
            assert!((t.itm_logit - logits[i][t.index][1]).abs() < 1e-5);
            assert!((t.score - (t.itm_logit + t.itc)).abs() < 1e-6);
        }
        assert!(r[0].score >= r[1].score);
    }
}

#[test]
fn bad_retrieval_inputs() {
    let g = grid();
    let m = model();
    assert!(matches!(
        m.similarity(&g.images, &[""]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        m.similarity(&g.images, blip2::NO_PROMPTS),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        m.similarity(&[], &["a cat"]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        m.rank(&g.images, &["a cat"], 0),
        Err(Error::InvalidInput(_))
    ));
    // Longer than the 32 positions of the tiny Q-Former: truncated, keeping [SEP].
    let long = "a photo of a cat ".repeat(20);
    let ids = m.tokenize(&[long.as_str()]).unwrap().ids;
    assert_eq!(ids[0].len(), 32);
    let short = m.tokenize(&["a cat"]).unwrap().ids;
    assert_eq!(ids[0].last(), short[0].last());
    assert_eq!(
        m.similarity(&g.images[..1], &[long.as_str()]).unwrap()[0].len(),
        1
    );
    // A captioning checkpoint is not a retrieval checkpoint, and the other way round: a set-up
    // problem, not a bad argument.
    let opt = fixtures().join("tiny-opt");
    let err = Blip2Retrieval::from_pretrained(opt.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Setup);
    let itm = fixtures().join("tiny-itm");
    let err = Blip2::from_pretrained(itm.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Setup);
}

#[test]
fn errors_tell_bad_calls_from_a_bad_set_up() {
    let g = grid();
    let m = model();
    // The caller's mistakes: the same model works with other arguments.
    for err in [
        m.similarity(&g.images, &[""]).unwrap_err(),
        m.similarity(&[], &["a cat"]).unwrap_err(),
        m.rank(&g.images, &["a cat"], 0).unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Input, "{err}");
        assert!(err.is_input());
    }
    // The set-up's: a model that is not there, an option the model cannot honour.
    let missing = Blip2Retrieval::from_pretrained(fixtures().join("no-such-model")).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::Setup, "{missing}");
    let f16 = Blip2Retrieval::builder(fixtures().join("tiny-itm"))
        .dtype(blip2::WeightDType::F16)
        .build()
        .unwrap_err();
    assert_eq!(f16.kind(), ErrorKind::Setup, "{f16}");
    assert!(!f16.is_input());
    let backend = blip2::backend::device("no-such-backend").unwrap_err();
    assert_eq!(backend.kind(), ErrorKind::Setup, "{backend}");
}

#[test]
fn loading_uses_every_stored_tensor() {
    // Extra tensors are only warned about; the fixtures have none, so each model's loader reads
    // every tensor transformers saved for it.
    for (name, retrieval) in [("tiny-opt", false), ("tiny-t5", false), ("tiny-itm", true)] {
        let dir = fixtures().join(name);
        let checkpoint = blip2::Checkpoint::open(&dir, None).unwrap();
        let device = blip2::Device::default();
        if retrieval {
            blip2::Blip2Retrieval::load(&checkpoint, &device).unwrap();
        } else {
            blip2::Blip2::load(&checkpoint, &device).unwrap();
        }
        assert_eq!(
            checkpoint.weights().unread_keys(),
            Vec::<String>::new(),
            "{name}"
        );
    }
}

#[test]
fn scores_match_transformers_with_and_without_itm() {
    // `similarity` is `scores` without ITM, so compare with transformers, not with each other.
    let g = grid();
    let texts = &g.texts;
    let m = model();
    let flat = |v: &Vec<Vec<f32>>| v.iter().flatten().copied().collect::<Vec<f32>>();
    let (_, itc) = golden(&g, "itc_similarity");
    let (_, itm) = golden(&g, "itm_probability");
    let both = m.scores(&g.images, texts, true).unwrap();
    check("scores' ITC", flat(&both.itc), &itc, 1e-4);
    check("scores' ITM", flat(both.itm.as_ref().unwrap()), &itm, 1e-6);
    let itc_only = m.scores(&g.images, texts, false).unwrap();
    check("ITC alone", flat(&itc_only.itc), &itc, 1e-4);
    assert!(itc_only.itm.is_none());
}

#[test]
fn itm_over_more_pairs_than_one_pass_matches_transformers() {
    // 3 images × 12 texts = 36 pairs: two passes of at most 32.
    let g = grid();
    let copies = 4;
    let texts: Vec<&str> = (0..copies)
        .flat_map(|_| g.texts.iter().map(String::as_str))
        .collect();
    assert!(g.images.len() * texts.len() > blip2::ITM_PAIRS_PER_PASS);
    let ours = model().match_logits(&g.images, &texts).unwrap();
    let (_, theirs) = golden(&g, "itm_logits");
    let n = g.texts.len();
    let mut expected = Vec::new();
    for i in 0..g.images.len() {
        for j in 0..copies * n {
            let pair = i * n + j % n;
            expected.extend_from_slice(&theirs[pair * 2..pair * 2 + 2]);
        }
    }
    check(
        "ITM logits, two passes",
        ours.into_iter().flatten().flatten().collect(),
        &expected,
        1e-4,
    );
}

#[test]
fn the_retrieval_builder_takes_paths_and_refuses_other_dtypes() {
    let dir = fixtures().join("tiny-itm");
    let m = Blip2Retrieval::builder(&dir)
        .device(blip2::Device::default())
        .build()
        .unwrap();
    let debug = format!("{m:?}");
    assert!(debug.starts_with("Blip2Retrieval"), "{debug}");
    assert!(debug.contains("num_query_tokens"), "{debug}");
    let err = Blip2Retrieval::builder(dir.as_path())
        .dtype(blip2::WeightDType::F16)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("f32 only"), "{err}");
}
