//! The vision attention bias loads from both checkpoint layouts: tiny-opt stores the fused
//! `qkv.bias` (transformers 5's `save_pretrained`), tiny-t5 stores `q_bias` + `v_bias` (the hub
//! repos' layout). Both give `[q, 0, v]`.

use blip2_core::{Error, WeightDType, WeightSource, Weights};
use blip2_hub::SafetensorsWeights;
use blip2_vision::attention::read_qkv_bias;

fn weights(name: &str) -> SafetensorsWeights {
    SafetensorsWeights::from_dir(blip2_test_support::fixture(name)).unwrap()
}

fn values(data: burn::tensor::TensorData) -> Vec<f32> {
    data.try_into_vec_as::<f32>().unwrap()
}

#[test]
fn fused_and_split_layouts_give_the_same_shape_of_bias() {
    let hidden = 32;
    for name in ["tiny-opt", "tiny-t5"] {
        let source = weights(name);
        let attn =
            Weights::new(&source, WeightDType::F32).pp("vision_model.encoder.layers.0.self_attn");
        let bias = values(read_qkv_bias(&attn, hidden).unwrap().expect("bias present"));
        assert_eq!(bias.len(), 3 * hidden, "{name}");
        assert!(
            bias[hidden..2 * hidden].iter().all(|&b| b == 0.0),
            "{name}: k bias not zero"
        );
        assert!(
            bias[..hidden].iter().any(|&b| b != 0.0),
            "{name}: q bias all zero"
        );
    }
    // The split layout is [q_bias, 0, v_bias] exactly.
    let source = weights("tiny-t5");
    let attn =
        Weights::new(&source, WeightDType::F32).pp("vision_model.encoder.layers.1.self_attn");
    let fused = values(read_qkv_bias(&attn, hidden).unwrap().unwrap());
    let q = values(attn.get("q_bias", &[hidden]).unwrap());
    let v = values(attn.get("v_bias", &[hidden]).unwrap());
    assert_eq!(&fused[..hidden], &q[..]);
    assert_eq!(&fused[2 * hidden..], &v[..]);
    // The bf16 run keeps the checkpoint's dtype.
    let bf16 =
        Weights::new(&source, WeightDType::BF16).pp("vision_model.encoder.layers.1.self_attn");
    assert_eq!(
        read_qkv_bias(&bf16, hidden).unwrap().unwrap().dtype(),
        burn::tensor::DType::BF16
    );
    assert!(source.contains("vision_model.encoder.layers.1.self_attn.q_bias"));
}

#[test]
fn half_a_split_bias_is_an_error() {
    struct OnlyQ(SafetensorsWeights);
    impl WeightSource for OnlyQ {
        fn shape(&self, key: &str) -> Option<Vec<usize>> {
            if key.ends_with("v_bias") {
                None
            } else {
                self.0.shape(key)
            }
        }
        fn read(
            &self,
            key: &str,
            expected: &[usize],
            dtype: WeightDType,
        ) -> blip2_core::Result<burn::tensor::TensorData> {
            self.0.read(key, expected, dtype)
        }
        fn keys(&self) -> Vec<String> {
            self.0.keys()
        }
        fn location(&self) -> String {
            self.0.location()
        }
    }
    let source = OnlyQ(weights("tiny-t5"));
    let attn =
        Weights::new(&source, WeightDType::F32).pp("vision_model.encoder.layers.0.self_attn");
    match read_qkv_bias(&attn, 32) {
        Err(Error::MissingTensor { key, .. }) => {
            assert_eq!(key, "vision_model.encoder.layers.0.self_attn.v_bias")
        }
        other => panic!("{other:?}"),
    }
    // Neither layout: no bias (qkv_bias: false).
    let source = weights("tiny-t5");
    let attn = Weights::new(&source, WeightDType::F32).pp("vision_model.encoder.layers.0.mlp");
    assert!(read_qkv_bias(&attn, 32).unwrap().is_none());
}
