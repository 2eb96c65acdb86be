//! Random bytes as every JSON file of a checkpoint folder (see `blip2_fuzz::config`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blip2_fuzz::config(data));
