//! Image files that real datasets contain besides 8-bit RGB: CMYK JPEG, animated GIF, 16-bit PNG,
//! zero-size and non-UTF-8 paths. Each decodes to what is documented (docs/validation.md) or
//! fails with a typed error; none panics. Files from tools/parity/make_odd_images.py.

use std::path::PathBuf;

use blip2_core::config::PreprocessorConfig;
use blip2_core::image::{decode_image, load_image, to_rgb8, ImageLimits, ImageProcessor};
use blip2_core::Error;

fn odd(name: &str) -> PathBuf {
    blip2_test_support::fixture("images/odd").join(name)
}

fn preprocess_is_finite(image: &image::DynamicImage) {
    let processor = ImageProcessor::new(PreprocessorConfig::with_size(16, 16)).unwrap();
    let pixels = processor.preprocess(image).unwrap();
    assert_eq!(pixels.shape(), [1, 3, 16, 16]);
    assert!(pixels.as_slice().iter().all(|v| v.is_finite()));
}

#[test]
fn cmyk_jpeg_decodes_to_rgb() {
    let image = load_image(odd("cmyk.jpg"), ImageLimits::default()).unwrap();
    assert_eq!((image.width(), image.height()), (40, 30));
    let rgb = to_rgb8(&image);
    // The left half carries cyan ink: much less red than the blank right half, whatever the
    // decoder's convention for Adobe's inverted CMYK.
    let (left, right) = (rgb.get_pixel(5, 15).0, rgb.get_pixel(35, 15).0);
    assert!(
        (left[0] as i32) < right[0] as i32 - 100,
        "{left:?} vs {right:?}"
    );
    assert!(left[1] > 200 && left[2] > 200, "{left:?}");
    preprocess_is_finite(&image);
}

#[test]
fn animated_gif_gives_its_first_frame() {
    let image = load_image(odd("animated.gif"), ImageLimits::default()).unwrap();
    assert_eq!((image.width(), image.height()), (24, 16));
    let px = to_rgb8(&image).get_pixel(3, 3).0;
    assert_eq!(px, [255, 0, 0], "the first frame is red, the second blue");
}

#[test]
fn sixteen_bit_png_is_scaled_to_eight_bits() {
    let image = load_image(odd("grey16.png"), ImageLimits::default()).unwrap();
    assert_eq!(image.color(), image::ColorType::L16);
    let rgb = to_rgb8(&image);
    // 16-bit values are scaled (v / 257), where Pillow would clip them at 255.
    assert_eq!(rgb.get_pixel(0, 0).0, [0, 0, 0]);
    assert_eq!(rgb.get_pixel(19, 0).0, [255, 255, 255]);
    let mid = rgb.get_pixel(10, 0).0[0];
    assert!((130..=140).contains(&mid), "{mid}");
    preprocess_is_finite(&image);

    // 16-bit RGBA, encoded here, goes through the same path.
    let mut buf = Vec::new();
    let rgba16 = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(
        5,
        4,
        image::Rgba([65535, 0, 0, 65535]),
    );
    image::DynamicImage::ImageRgba16(rgba16)
        .write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
    let decoded = decode_image(&buf, ImageLimits::default()).unwrap();
    assert_eq!(to_rgb8(&decoded).get_pixel(1, 1).0, [255, 0, 0]);
}

#[test]
fn zero_size_image_is_a_decode_error() {
    // A PNG header declaring 0 x 7 pixels.
    let mut png = std::fs::read(odd("grey16.png")).unwrap();
    png[16..20].copy_from_slice(&0u32.to_be_bytes());
    png[20..24].copy_from_slice(&7u32.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        decode_image(&png, ImageLimits::default()),
        Err(Error::ImageDecode { .. })
    ));
}

#[cfg(unix)]
#[test]
fn non_utf8_paths_work() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.gif");
    let path = dir.path().join(name);
    std::fs::copy(odd("animated.gif"), &path).unwrap();
    let image = load_image(&path, ImageLimits::default()).unwrap();
    assert_eq!(image.width(), 24);
    // A missing one names the path in its error.
    let missing = dir.path().join(std::ffi::OsStr::from_bytes(b"\xfe.png"));
    match load_image(&missing, ImageLimits::default()) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
}
