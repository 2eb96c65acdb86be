//! Opens a BLIP-2 checkpoint and preprocesses an image with its settings.
//!
//! ```sh
//! cargo run --release --example inspect -- tests/fixtures/tiny-opt tests/fixtures/images/rgb_96x64.png
//! cargo run --release --example inspect -- Salesforce/blip2-opt-2.7b photo.jpg   # from the HF cache
//! ```

use blip2::preprocess::{load_image, ImageLimits};
use blip2::Checkpoint;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() > 2 {
        eprintln!("usage: inspect <MODEL-DIR | HUB-ID> [IMAGE]");
        std::process::exit(2);
    }
    if let Err(e) = run(&args[0], args.get(1).map(String::as_str)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(model: &str, image: Option<&str>) -> blip2::Result<()> {
    let checkpoint = Checkpoint::open(model, None)?;
    println!("{}", checkpoint.summary());
    if let Some(path) = image {
        let image = load_image(path, ImageLimits::default())?;
        let pixels = checkpoint.image_processor().preprocess(&image)?;
        let values = pixels.as_slice();
        let mean = values.iter().map(|v| *v as f64).sum::<f64>() / values.len() as f64;
        let (min, max) = values
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        println!(
            "image        {path}: {}x{} -> pixel_values {:?}, mean {mean:.4}, min {min:.4}, max {max:.4}",
            image.width(),
            image.height(),
            pixels.shape()
        );
    }
    Ok(())
}
