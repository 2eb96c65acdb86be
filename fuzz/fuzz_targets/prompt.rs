//! Random bytes as a prompt for the committed tiny OPT model (see `blip2_fuzz::PromptFixture`).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use blip2_fuzz::PromptFixture;
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static PromptFixture {
    static FIXTURE: OnceLock<PromptFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        PromptFixture::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")))
    })
}

fuzz_target!(|data: &[u8]| fixture().check(data));
