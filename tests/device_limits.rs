//! A model too large for the device is refused with a typed error when it is loaded, not by a
//! panic in the middle of generation. lavapipe (which CI runs the wgpu tests on), like WebGPU's
//! default limits, cannot bind a buffer over 128 MiB; on the CPU backends the same model runs.

use blip2::config::OptConfig;
use blip2::lm::OptForCausalLM;
use blip2::{Device, Error, RandomWeights, WeightDType, Weights};

#[test]
fn an_embedding_over_the_binding_limit_is_an_error_not_a_panic() {
    // OPT-125m's width with OPT's vocabulary: a 154 MB f32 embedding, one small layer.
    let config: OptConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 1, "ffn_dim": 64,
        "num_attention_heads": 12, "max_position_embeddings": 64, "word_embed_proj_dim": 768
    }))
    .unwrap();
    let device = Device::default();
    let source = RandomWeights::new(0.02);
    let weights = Weights::new(&source, WeightDType::F32);
    let lm = OptForCausalLM::load(&weights.pp("language_model"), &config, &device).unwrap();
    let result = blip2::lm::check_device(&lm);
    if blip2::backend::is_cpu(&device) {
        result.unwrap();
    } else {
        // A GPU with a larger binding limit runs it; one below 154 MB must say so, and lavapipe
        // (selected by VK_ICD_FILENAMES in CI) is one.
        let lavapipe = std::env::var("VK_ICD_FILENAMES").is_ok_and(|v| v.contains("lvp"));
        match result {
            Ok(()) if !lavapipe => println!("{device:?} binds 154 MB buffers"),
            Ok(()) => panic!("lavapipe ran a 154 MB buffer: its limit changed?"),
            Err(Error::Backend(message)) => println!("{device:?}: {message}"),
            Err(other) => panic!("expected Error::Backend, got {other}"),
        }
    }
}
