//! Prints a caption piece by piece as the tokens are generated.
//!
//! ```sh
//! cargo run --release --example stream -- tests/fixtures/tiny-opt tests/fixtures/images/rgb_96x64.png
//! ```

use std::io::Write;
use std::ops::ControlFlow;

use blip2::preprocess::{load_image, ImageLimits};
use blip2::Blip2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 {
        eprintln!("usage: stream <MODEL-DIR | HUB-ID> <IMAGE> [PROMPT]");
        std::process::exit(2);
    }
    let run = || -> blip2::Result<()> {
        let model = Blip2::from_pretrained(&args[0])?;
        let image = load_image(&args[1], ImageLimits::default())?;
        let config = model.generation_config().clone();
        model.generate_stream(
            &image,
            args.get(2).map(String::as_str),
            &config,
            &mut |piece| {
                print!("{piece}");
                let _ = std::io::stdout().flush();
                ControlFlow::Continue(())
            },
        )?;
        println!();
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
