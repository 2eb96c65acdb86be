//! Captions an image (or answers a question about it) with a BLIP-2 checkpoint.
//!
//! ```sh
//! cargo run --release --example caption -- tests/fixtures/tiny-opt tests/fixtures/images/rgb_96x64.png
//! cargo run --release --example caption -- Salesforce/blip2-opt-2.7b photo.jpg "what is the man holding?"
//! ```
//!
//! The first argument is a model folder or a hub id already in the Hugging Face cache
//! (`huggingface-cli download Salesforce/blip2-opt-2.7b`). The tiny test model has random
//! weights: its captions are gibberish, but they are exactly the tokens transformers produces.

use std::time::Instant;

use blip2::preprocess::{load_image, ImageLimits};
use blip2::Blip2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 {
        eprintln!("usage: caption <MODEL-DIR | HUB-ID> <IMAGE> [QUESTION]");
        std::process::exit(2);
    }
    if let Err(e) = run(&args[0], &args[1], args.get(2).map(String::as_str)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(model: &str, image: &str, question: Option<&str>) -> blip2::Result<()> {
    let start = Instant::now();
    let blip2 = Blip2::from_pretrained(model)?;
    eprintln!("loaded {model} in {:.2} s", start.elapsed().as_secs_f64());
    let image = load_image(image, ImageLimits::default())?;
    let start = Instant::now();
    let text = match question {
        Some(q) => blip2.ask(&image, q)?,
        None => blip2.caption(&image)?,
    };
    eprintln!("generated in {:.2} s", start.elapsed().as_secs_f64());
    println!("{text}");
    Ok(())
}
