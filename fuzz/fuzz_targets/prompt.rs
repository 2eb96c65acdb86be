//! Random bytes as a prompt for the committed tiny OPT model: tokenizing and building the language
//! model's input (image tokens, BOS, padding, embeddings) must succeed for any UTF-8 text or fail
//! with a typed error. Also runs one prefill, which bounds the prompt by the position table.
#![no_main]

use std::sync::OnceLock;

use blip2::lm::LanguageModel;
use blip2::{Blip2, ImageEmbeddings, TextModel};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    model: Blip2,
    embeddings: ImageEmbeddings,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
        let model = Blip2::from_pretrained(&format!("{root}/tiny-opt")).expect("tiny-opt");
        let image = blip2::preprocess::load_image(
            format!("{root}/images/rgb_96x64.png"),
            Default::default(),
        )
        .expect("fixture image");
        let embeddings = model.encode_images(&[image]).expect("encode");
        Fixture { model, embeddings }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let Ok(prompt) = f.model.prompt(&f.embeddings, &[text]) else {
        return;
    };
    let [rows, len, _] = prompt.embeds.dims();
    assert_eq!((rows, prompt.attention_mask[0].len()), (1, len));
    if let TextModel::Opt(lm) = f.model.language_model() {
        let _ = lm.prefill(prompt.embeds, &prompt.attention_mask, 1);
    }
});
