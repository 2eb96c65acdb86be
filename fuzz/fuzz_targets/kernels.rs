//! Random bytes as a linear layer through the CPU kernels at every level (see
//! `blip2_fuzz::kernels`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| blip2_fuzz::kernels(data));
