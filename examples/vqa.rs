//! Answers a question about an image ("Question: {q} Answer:").
//!
//! ```sh
//! cargo run --release --example vqa -- tests/fixtures/tiny-opt tests/fixtures/images/rgb_96x64.png "what is in the picture?"
//! cargo run --release --example vqa -- Salesforce/blip2-flan-t5-xl photo.jpg "what is the man holding?"
//! ```

use blip2::preprocess::{load_image, ImageLimits};
use blip2::Blip2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 {
        eprintln!("usage: vqa <MODEL-DIR | HUB-ID> <IMAGE> <QUESTION>");
        std::process::exit(2);
    }
    let run = || -> blip2::Result<String> {
        let model = Blip2::from_pretrained(&args[0])?;
        let image = load_image(&args[1], ImageLimits::default())?;
        model.ask(&image, &args[2])
    };
    match run() {
        Ok(answer) => println!("{answer}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
