//! One loaded model shared by several threads: every thread gets exactly what a sequential run
//! gives, and nothing deadlocks.

use std::sync::Arc;
use std::thread;

use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Blip2, Generation, GenerationConfig};

const IMAGES: [&str; 4] = [
    "rgb_96x64.png",
    "rgba_64x64.png",
    "noise_61x47.png",
    "grey_70x50.png",
];

fn fixture(path: &str) -> String {
    blip2_test_support::fixture(path).display().to_string()
}

/// Each thread's work: a caption with greedy search, a question with beam search, and a sampled
/// caption (the seed makes it deterministic).
fn work(model: &Blip2, image_name: &str) -> Vec<Generation> {
    let image = load_image(
        fixture(&format!("images/{image_name}")),
        ImageLimits::default(),
    )
    .expect("fixture image");
    let base = model.generation_config().clone();
    let greedy = GenerationConfig {
        max_new_tokens: Some(8),
        ..base.clone()
    };
    let beams = GenerationConfig {
        num_beams: 3,
        ..greedy.clone()
    };
    let sampled = GenerationConfig {
        do_sample: true,
        top_k: 20,
        seed: 7,
        ..greedy.clone()
    };
    let images = std::slice::from_ref(&image);
    let mut out = Vec::new();
    for (prompts, config) in [
        (&[][..], &greedy),
        (&["Question: what is it? Answer:"][..], &beams),
        (&[][..], &sampled),
    ] {
        out.extend(model.generate(images, prompts, config).expect("generate")[0].clone());
    }
    out
}

#[test]
fn four_threads_share_one_model() {
    let model = Arc::new(Blip2::from_pretrained(fixture("tiny-opt")).expect("tiny-opt loads"));
    let sequential: Vec<Vec<Generation>> = IMAGES.iter().map(|i| work(&model, i)).collect();
    // The images give different outputs, so a mix-up between threads would show.
    assert!(sequential.windows(2).any(|w| w[0] != w[1]));

    for _round in 0..3 {
        let handles: Vec<_> = IMAGES
            .iter()
            .map(|&image| {
                let model = Arc::clone(&model);
                thread::spawn(move || work(&model, image))
            })
            .collect();
        let parallel: Vec<Vec<Generation>> = handles
            .into_iter()
            .map(|h| h.join().expect("no thread panics"))
            .collect();
        assert_eq!(parallel, sequential);
    }
}
