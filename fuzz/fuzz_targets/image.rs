//! Random bytes as an image file: decoding (with a small pixel limit, so a hostile header cannot
//! make the fuzzer allocate gigabytes) and preprocessing must give pixels or a typed error.
#![no_main]

use blip2_core::config::PreprocessorConfig;
use blip2_core::image::{decode_image, ImageLimits, ImageProcessor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits {
        max_pixels: 1 << 20,
    };
    let Ok(image) = decode_image(data, limits) else {
        return;
    };
    assert!(u64::from(image.width()) * u64::from(image.height()) <= limits.max_pixels);
    let processor = ImageProcessor::new(PreprocessorConfig::with_size(16, 16)).expect("valid");
    let pixels = processor
        .preprocess(&image)
        .expect("a decoded image preprocesses");
    assert!(pixels.as_slice().iter().all(|v| v.is_finite()));
});
