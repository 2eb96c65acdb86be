//! Random bytes as a model.safetensors file: opening it, then reading every tensor it lists as
//! f32 and as f16, must give data or a typed error, never a panic or an out-of-bounds read.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use blip2_core::{WeightDType, WeightSource};
use blip2_hub::SafetensorsWeights;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("blip2-fuzz-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    // The reader memory-maps a file, as it does for real checkpoints.
    std::fs::write(scratch(), data).expect("scratch file");
    let Ok(weights) = SafetensorsWeights::from_file(scratch()) else {
        return;
    };
    for key in weights.keys() {
        let shape = weights.shape(&key).expect("listed keys have shapes");
        for dtype in [WeightDType::F32, WeightDType::F16] {
            if let Ok(tensor) = weights.read(&key, &shape, dtype) {
                assert_eq!(tensor.num_elements(), shape.iter().product::<usize>());
            }
        }
        // A wrong expected shape is an error, not a misread.
        let mut wrong = shape.clone();
        wrong.push(2);
        assert!(weights.read(&key, &wrong, WeightDType::F32).is_err());
    }
    let _ = weights.unread_keys();
});
