//! Random bytes as an image file (see `blip2_fuzz::image`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blip2_fuzz::image(data));
