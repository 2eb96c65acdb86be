//! Ranks texts against an image with a retrieval checkpoint (ITC similarity, then ITM re-ranking).
//!
//! ```sh
//! cargo run --release --example retrieval -- tests/fixtures/tiny-itm tests/fixtures/images/rgb_96x64.png \
//!     "a photo of a cat" "two dogs running on the beach" "a red car"
//! cargo run --release --example retrieval -- Salesforce/blip2-itm-vit-g photo.jpg "a dog" "a cat"
//! ```
//!
//! The tiny test model has random weights: its scores mean nothing, but they are transformers'.

use blip2::preprocess::{load_image, ImageLimits};
use blip2::Blip2Retrieval;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: retrieval <MODEL-DIR | HUB-ID> <IMAGE> <TEXT>...");
        std::process::exit(2);
    }
    if let Err(e) = run(&args[0], &args[1], &args[2..]) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(model: &str, image: &str, texts: &[String]) -> blip2::Result<()> {
    let model = Blip2Retrieval::from_pretrained(model)?;
    let image = load_image(image, ImageLimits::default())?;
    let probabilities = model.match_probability(std::slice::from_ref(&image), texts)?;
    let ranked = model.rank(std::slice::from_ref(&image), texts, texts.len())?;
    println!(
        "{:>5}  {:>8}  {:>8}  {:>8}  text",
        "rank", "ITC", "ITM p", "score"
    );
    for (rank, r) in ranked[0].iter().enumerate() {
        println!(
            "{:>5}  {:>8.4}  {:>8.4}  {:>8.4}  {}",
            rank + 1,
            r.itc,
            probabilities[0][r.index],
            r.score,
            texts[r.index]
        );
    }
    Ok(())
}
