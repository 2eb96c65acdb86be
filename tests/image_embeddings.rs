//! Vision `last_hidden_state`, Q-Former `last_hidden_state` and the language projection against
//! transformers' goldens (`tests/fixtures/*/goldens.safetensors`, written by
//! tools/parity/make_fixtures.py), on the default backend in f32. Each fixture is loaded through
//! the public API from its committed HF folder: tiny-opt (fp16, sharded), tiny-t5 (bf16, q/v
//! biases), tiny-itm (f32, retrieval, no projection).

mod common;

use blip2::preprocess::{load_image, ImageLimits};
use blip2::{Checkpoint, Device, Error, ImageEncoder, Tensor, WeightDType};
use common::{fixtures, max_abs};
use safetensors::SafeTensors;

const TOLERANCE: f32 = 1e-4;

#[derive(serde::Deserialize)]
struct Meta {
    pixel_values_images: Vec<String>,
}

fn golden(goldens: &SafeTensors, key: &str) -> (Vec<usize>, Vec<f32>) {
    let t = goldens.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), values)
}

fn values<const D: usize>(t: &Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let data = t.clone().into_data();
    (
        data.shape().to_vec(),
        data.try_into_vec_as::<f32>().unwrap(),
    )
}

fn check(name: &str) {
    let dir = fixtures().join(name);
    let meta: Meta =
        serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("goldens.safetensors")).unwrap();
    let goldens = SafeTensors::deserialize(&bytes).unwrap();

    let checkpoint = Checkpoint::open(dir.to_str().unwrap(), None).unwrap();
    let images: Vec<_> = meta
        .pixel_values_images
        .iter()
        .map(|p| load_image(fixtures().join(p), ImageLimits::default()).unwrap())
        .collect();
    let pixels = checkpoint
        .image_processor()
        .preprocess_batch(&images)
        .unwrap();
    let (shape, expected) = golden(&goldens, "pixel_values");
    assert_eq!(pixels.shape().to_vec(), shape);
    let diff = max_abs(pixels.as_slice(), &expected);
    println!("{name}: pixel_values max-abs {diff:e}");
    assert!(diff <= 1e-6);

    let device = Device::default();
    let encoder = ImageEncoder::load(&checkpoint, &device, WeightDType::F32).unwrap();
    let vision = encoder
        .vision()
        .forward(encoder.pixel_tensor(&pixels))
        .unwrap();
    let embeddings = encoder.encode(&pixels).unwrap();
    assert_eq!(embeddings.len(), images.len());

    let mut outputs = vec![
        (
            "vision_last_hidden_state",
            values(&vision.last_hidden_state),
        ),
        (
            "qformer_last_hidden_state",
            values(embeddings.query_output().expect("BLIP-2 keeps the queries")),
        ),
    ];
    if let Some(projected) = embeddings.projected() {
        outputs.push(("language_projection", values(projected)));
    } else {
        assert!(
            goldens.tensor("language_projection").is_err(),
            "{name}: projection missing"
        );
    }
    for (key, (shape, ours)) in outputs {
        let (golden_shape, theirs) = golden(&goldens, key);
        assert_eq!(shape, golden_shape, "{name} {key}");
        let diff = max_abs(&ours, &theirs);
        println!("{name}: {key} {shape:?} max-abs {diff:e}");
        assert!(diff <= TOLERANCE, "{name} {key}: max-abs {diff}");
    }
}

#[test]
fn tiny_opt_image_embeddings_match_transformers() {
    check("tiny-opt");
}

#[test]
fn tiny_t5_image_embeddings_match_transformers() {
    check("tiny-t5");
}

#[test]
fn tiny_itm_image_features_match_transformers() {
    check("tiny-itm");
}

#[test]
fn bad_pixel_values_are_errors() {
    let dir = fixtures().join("tiny-opt");
    let checkpoint = Checkpoint::open(dir.to_str().unwrap(), None).unwrap();
    let encoder = ImageEncoder::load(&checkpoint, &Device::default(), WeightDType::F32).unwrap();
    let device = Device::default();
    let wrong_size = Tensor::<4>::zeros([1, 3, 40, 32], &device);
    assert!(matches!(
        encoder.vision().forward(wrong_size),
        Err(Error::InvalidInput(_))
    ));
    let wrong_channels = Tensor::<4>::zeros([1, 4, 32, 32], &device);
    assert!(matches!(
        encoder.vision().forward(wrong_channels),
        Err(Error::InvalidInput(_))
    ));
    let empty = Tensor::<4>::zeros([0, 3, 32, 32], &device);
    assert!(matches!(
        encoder.vision().forward(empty),
        Err(Error::InvalidInput(_))
    ));
    // Preprocessed at a size the model does not take.
    let image = load_image(
        fixtures().join("images/rgb_96x64.png"),
        ImageLimits::default(),
    )
    .unwrap();
    let processor = blip2::preprocess::ImageProcessor::new(
        blip2::config::PreprocessorConfig::with_size(48, 48),
    )
    .unwrap();
    let pixels = processor.preprocess(&image).unwrap();
    assert!(matches!(
        encoder.encode(&pixels),
        Err(Error::InvalidInput(_))
    ));
}

/// Images encoded one at a time and concatenated are the batch encoded at once (up to summation
/// order: within the f32 tolerance), `image(i)` takes one image back out, and both refuse what they cannot do.
#[test]
fn embeddings_split_and_concatenate_as_batches() {
    let model = blip2::Blip2::from_pretrained(fixtures().join("tiny-opt")).unwrap();
    let images: Vec<_> = ["rgb_96x64.png", "noise_61x47.png", "grey_70x50.png"]
        .iter()
        .map(|n| load_image(fixtures().join("images").join(n), ImageLimits::default()).unwrap())
        .collect();
    let batch = model.encode_images(&images).unwrap();
    let alone: Vec<_> = images
        .iter()
        .map(|i| model.encode_images(std::slice::from_ref(i)).unwrap())
        .collect();
    let joined = blip2::ImageEmbeddings::concat(&alone).unwrap();
    assert_eq!(joined.len(), 3);
    let pairs = [
        (batch.projected(), joined.projected()),
        (batch.query_output(), joined.query_output()),
    ];
    for (whole, parts) in pairs {
        let ((shape, whole), (parts_shape, parts)) =
            (values(whole.unwrap()), values(parts.unwrap()));
        assert_eq!(shape, parts_shape);
        let diff = max_abs(&whole, &parts);
        assert!(
            diff <= TOLERANCE,
            "batched vs one at a time: max-abs {diff}"
        );
    }
    for (i, one) in alone.iter().enumerate() {
        let taken = batch.image(i).unwrap();
        assert_eq!(taken.len(), 1);
        let (shape, taken) = values(taken.projected().unwrap());
        let (_, single) = values(one.projected().unwrap());
        assert_eq!(shape[0], 1);
        assert!(max_abs(&taken, &single) <= TOLERANCE);
    }
    assert!(matches!(batch.image(3), Err(Error::InvalidInput(_))));
    assert!(matches!(
        blip2::ImageEmbeddings::concat(&[]),
        Err(Error::InvalidInput(_))
    ));
    // A retrieval encoder's embeddings have no projection: they do not batch with BLIP-2's.
    let itm = Checkpoint::open(fixtures().join("tiny-itm").to_str().unwrap(), None).unwrap();
    let encoder = ImageEncoder::load(&itm, &Device::default(), WeightDType::F32).unwrap();
    let pixels = model
        .image_processor()
        .preprocess_batch(&images[..1])
        .unwrap();
    let retrieval = encoder.encode(&pixels).unwrap();
    assert!(matches!(
        blip2::ImageEmbeddings::concat(&[alone[0].clone(), retrieval]),
        Err(Error::InvalidInput(_))
    ));
}
