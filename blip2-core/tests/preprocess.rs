//! Pixel values against transformers' BlipImageProcessor (PIL backend), golden
//! `tests/fixtures/preprocess/pixel_values.safetensors` written by tools/parity/make_fixtures.py.

use blip2_core::config::PreprocessorConfig;
use blip2_core::image::{decode_image, load_image, ImageLimits, ImageProcessor};
use blip2_core::Error;
use safetensors::SafeTensors;

use blip2_test_support::fixtures;

#[derive(serde::Deserialize)]
struct Case {
    key: String,
    image: String,
    height: usize,
    width: usize,
    mode: String,
}

#[test]
fn pixel_values_match_transformers() {
    let dir = fixtures().join("preprocess");
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("pixel_values.safetensors")).unwrap();
    let goldens = SafeTensors::deserialize(&bytes).unwrap();
    assert!(cases.len() >= 14, "expected every image at two sizes");
    let mut worst = 0f32;
    for case in &cases {
        let image = load_image(fixtures().join(&case.image), ImageLimits::default()).unwrap();
        let processor =
            ImageProcessor::new(PreprocessorConfig::with_size(case.height, case.width)).unwrap();
        let ours = processor.preprocess(&image).unwrap();
        assert_eq!(
            ours.shape(),
            [1, 3, case.height, case.width],
            "{}",
            case.key
        );
        let golden = goldens.tensor(&case.key).unwrap();
        assert_eq!(golden.shape(), &[3, case.height, case.width]);
        let golden: Vec<f32> = golden
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let max_abs = ours
            .as_slice()
            .iter()
            .zip(&golden)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{:<28} mode {:<3} max-abs {max_abs:e}", case.key, case.mode);
        worst = worst.max(max_abs);
        assert!(max_abs <= 1e-6, "{}: max-abs {max_abs}", case.key);
    }
    println!("worst max-abs over {} cases: {worst:e}", cases.len());
}

#[test]
fn batch_stacks_images_in_order() {
    let load = |name: &str| {
        load_image(fixtures().join("images").join(name), ImageLimits::default()).unwrap()
    };
    let a = load("rgb_96x64.png");
    let b = load("grey_70x50.png");
    let processor = ImageProcessor::new(PreprocessorConfig::with_size(16, 24)).unwrap();
    let batch = processor.preprocess_batch(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(batch.shape(), [2, 3, 16, 24]);
    let one = processor.preprocess(&a).unwrap();
    let two = processor.preprocess(&b).unwrap();
    let n = 3 * 16 * 24;
    assert_eq!(&batch.as_slice()[..n], one.as_slice());
    assert_eq!(&batch.as_slice()[n..], two.as_slice());
    let data = batch.to_data();
    assert_eq!(data.shape().to_vec(), vec![2, 3, 16, 24]);
}

#[test]
fn bad_images_are_typed_errors() {
    let limits = ImageLimits::default();
    assert!(matches!(
        decode_image(b"definitely not an image", limits),
        Err(Error::ImageDecode { .. })
    ));
    assert!(matches!(
        decode_image(&[], limits),
        Err(Error::ImageDecode { .. })
    ));

    // A PNG whose header claims 100000 x 100000 pixels: refused from the header, before decoding.
    let png = std::fs::read(fixtures().join("images/rgb_20x28.png")).unwrap();
    let mut bomb = png.clone();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    // The IHDR chunk's CRC covers its type and data (bytes 12..29) and sits at 29..33.
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    match decode_image(&bomb, limits) {
        Err(Error::ImageTooLarge { width, height, .. }) => {
            assert_eq!((width, height), (100_000, 100_000))
        }
        other => panic!("expected ImageTooLarge, got {other:?}"),
    }
    // A lower limit applies to an ordinary image.
    let small = ImageLimits { max_pixels: 100 };
    assert!(matches!(
        decode_image(&png, small),
        Err(Error::ImageTooLarge { .. })
    ));

    // Truncated data.
    assert!(matches!(
        decode_image(&png[..png.len() / 2], limits),
        Err(Error::ImageDecode { .. })
    ));

    let missing = fixtures().join("images/missing.png");
    assert!(matches!(load_image(&missing, limits), Err(Error::Io { path, .. }) if path == missing));

    let processor = ImageProcessor::new(PreprocessorConfig::with_size(8, 8)).unwrap();
    assert!(matches!(
        processor.preprocess_batch(&[]),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn bad_processor_settings_are_typed_errors() {
    let mut config = PreprocessorConfig::with_size(8, 8);
    config.image_std = [0.0, 1.0, 1.0];
    assert!(matches!(
        ImageProcessor::new(config),
        Err(Error::InvalidConfig { .. })
    ));
    let config: PreprocessorConfig = serde_json::from_str(r#"{"resample": 0}"#).unwrap();
    assert!(matches!(
        ImageProcessor::new(config),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        ImageProcessor::new(PreprocessorConfig::with_size(0, 8)),
        Err(Error::InvalidConfig { .. })
    ));
}

#[derive(serde::Deserialize)]
struct ResizeCase {
    key: String,
    filter: String,
    width: usize,
    height: usize,
}

/// Pillow's `Image.resize` of a noise image to many sizes with every convolution filter, golden
/// `tests/fixtures/preprocess/resized.safetensors`: must be identical, byte for byte.
#[test]
fn resize_is_pillow_exact() {
    use blip2_core::config::Resample;
    use blip2_core::image::resize_rgb8;

    let dir = fixtures().join("preprocess");
    let cases: Vec<ResizeCase> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("resize_cases.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(dir.join("resized.safetensors")).unwrap();
    let goldens = SafeTensors::deserialize(&bytes).unwrap();
    let noise = load_image(
        fixtures().join("images/noise_61x47.png"),
        ImageLimits::default(),
    )
    .unwrap()
    .to_rgb8();
    let mut differing = Vec::new();
    for case in &cases {
        let filter = match case.filter.as_str() {
            "bicubic" => Resample::Bicubic,
            "bilinear" => Resample::Bilinear,
            "lanczos" => Resample::Lanczos,
            "box" => Resample::Box,
            "hamming" => Resample::Hamming,
            other => panic!("unknown filter {other}"),
        };
        let ours = resize_rgb8(noise.as_raw(), 61, 47, case.width, case.height, filter).unwrap();
        let golden = goldens.tensor(&case.key).unwrap();
        assert_eq!(golden.shape(), &[case.height, case.width, 3]);
        let n = ours
            .iter()
            .zip(golden.data())
            .filter(|(a, b)| a != b)
            .count();
        if n > 0 {
            differing.push(format!("{}: {n} bytes differ", case.key));
        }
    }
    let photo = load_image(
        fixtures().join("images/rgb_300x120.png"),
        ImageLimits::default(),
    )
    .unwrap()
    .to_rgb8();
    let ours = resize_rgb8(photo.as_raw(), 300, 120, 224, 224, Resample::Bicubic).unwrap();
    if ours != goldens.tensor("photo@224x224").unwrap().data() {
        differing.push("photo@224x224".to_owned());
    }
    println!(
        "{} resize cases compared, {} differ",
        cases.len() + 1,
        differing.len()
    );
    assert!(differing.is_empty(), "{differing:#?}");
}
