//! Several images, one prompt each, beam search with two sequences per image, from images encoded
//! once.
//!
//! ```sh
//! cargo run --release --example batch -- tests/fixtures/tiny-opt \
//!     tests/fixtures/images/rgb_96x64.png tests/fixtures/images/rgba_64x64.png
//! ```

use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Blip2, GenerationConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: batch <MODEL-DIR | HUB-ID> <IMAGE>...");
        std::process::exit(2);
    }
    if let Err(e) = run(&args[0], &args[1..]) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(model: &str, paths: &[String]) -> blip2::Result<()> {
    let model = Blip2::from_pretrained(model)?;
    let images = paths
        .iter()
        .map(|p| load_image(p, ImageLimits::default()))
        .collect::<blip2::Result<Vec<_>>>()?;
    // Encode once, generate twice.
    let embeddings = model.encode_images(&images)?;
    let beams = GenerationConfig {
        num_beams: 3,
        num_return_sequences: 2,
        max_new_tokens: Some(12),
        ..model.generation_config().clone()
    };
    let captions = model.generate_from_embeddings(&embeddings, blip2::NO_PROMPTS, &beams)?;
    let prompts: Vec<&str> = (0..images.len())
        .map(|_| "Question: what is this? Answer:")
        .collect();
    let answers =
        model.generate_from_embeddings(&embeddings, &prompts, model.generation_config())?;
    for (i, path) in paths.iter().enumerate() {
        for (k, c) in captions[i].iter().enumerate() {
            println!("{path}\tcaption {}: {}", k + 1, c.text);
        }
        println!("{path}\tanswer: {}", answers[i][0].text);
    }
    Ok(())
}
