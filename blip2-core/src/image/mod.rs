//! Image decoding and preprocessing with the semantics of transformers' `BlipImageProcessor`
//! (its PIL backend): convert to RGB compositing transparency onto white, resize with Pillow's
//! filter exactly, rescale, normalise, channels first.

mod resize;

use std::io::Cursor;
use std::path::Path;

use burn::tensor::TensorData;
use image::{DynamicImage, ImageReader};

pub use resize::resize_rgb8;

use crate::config::{PreprocessorConfig, Resample};
use crate::error::{Error, Result};

/// Bounds on the images this crate agrees to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest `width * height` accepted (default 100 megapixels). Checked from the header,
    /// before any pixel is decoded, so a decompression bomb costs nothing.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: 100_000_000,
        }
    }
}

/// Decodes an encoded image (PNG, JPEG, GIF's first frame, BMP, WebP, TIFF) within `limits`.
pub fn decode_image(bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage> {
    decode(bytes, limits, None)
}

/// Reads and decodes the image file at `path` within `limits`.
pub fn load_image(path: impl AsRef<Path>, limits: ImageLimits) -> Result<DynamicImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, limits, Some(path))
}

fn decode(bytes: &[u8], limits: ImageLimits, origin: Option<&Path>) -> Result<DynamicImage> {
    let decode_err = |reason: String| Error::ImageDecode {
        origin: origin.map(Path::to_owned),
        reason,
    };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_err(e.to_string()))
    };
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| decode_err(e.to_string()))?;
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(Error::ImageTooLarge {
            origin: origin.map(Path::to_owned),
            width: width as u64,
            height: height as u64,
            limit: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(decode_err("the image has no pixels".to_owned()));
    }
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(width);
    decoder_limits.max_image_height = Some(height);
    // The largest decoded buffer (RGBA, 32-bit float) plus the decoder's own scratch.
    decoder_limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(64 << 20));
    let mut reader = reader()?;
    reader.limits(decoder_limits);
    reader.decode().map_err(|e| decode_err(e.to_string()))
}

/// Converts an image to packed RGB8 as transformers' `convert_to_rgb` does for PIL images:
/// an image with an alpha channel is composited onto an opaque white background with Pillow's
/// `alpha_composite` arithmetic; grey and palette images are expanded.
///
/// 16-bit and float images are first reduced to 8 bits by the `image` crate; Pillow reduces
/// some of those modes differently, so only 8-bit inputs are bit-exact with transformers.
pub fn to_rgb8(image: &DynamicImage) -> image::RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for px in rgba.pixels() {
        let [r, g, b, a] = px.0;
        if a == 0 {
            out.extend_from_slice(&[255, 255, 255]);
            continue;
        }
        // Pillow's AlphaComposite.c with 7 bits of extra precision; over opaque white its
        // coefficients reduce to a * 128 and (255 - a) * 128 exactly.
        const BITS: u32 = 7;
        let a = a as u32;
        let coef1 = a * 255 * 255 * (1 << BITS) / (255 * 255);
        let coef2 = 255 * (1 << BITS) - coef1;
        for v in [r, g, b] {
            let t = v as u32 * coef1 + 255 * coef2 + (0x80 << BITS);
            out.push(((((t >> 8) + t) >> 8) >> BITS) as u8);
        }
    }
    image::RgbImage::from_raw(w, h, out).expect("buffer has width * height * 3 bytes")
}

/// Normalised pixel values, `[batch, 3, height, width]`, as `pixel_values` in transformers.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    data: Vec<f32>,
    shape: [usize; 4],
}

impl PixelValues {
    /// `[batch, channels, height, width]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The values, row-major in [`PixelValues::shape`] order.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The values as burn tensor data (f32), ready for `Tensor::from_data`.
    pub fn to_data(&self) -> TensorData {
        TensorData::new(self.data.clone(), self.shape.to_vec())
    }

    /// Consumes the values into burn tensor data (f32).
    pub fn into_data(self) -> TensorData {
        TensorData::new(self.data, self.shape.to_vec())
    }
}

/// transformers' `BlipImageProcessor` (PIL backend) for a given `preprocessor_config.json`.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    config: PreprocessorConfig,
    /// `value_lut[c][v]`: the output for channel `c` and 8-bit input `v`, computed once with
    /// transformers' exact dtypes (rescale in f64 then cast to f32; normalise in f32).
    value_lut: [[f32; 256]; 3],
}

impl ImageProcessor {
    /// A processor for `config` (see [`PreprocessorConfig`]).
    pub fn new(config: PreprocessorConfig) -> Result<Self> {
        config.validate()?;
        if config.do_resize && config.resample == Resample::Nearest {
            return Err(Error::invalid_config(
                "resample",
                "nearest-neighbour resizing (0) is not supported; BLIP-2 uses bicubic (3)",
            ));
        }
        let mut value_lut = [[0f32; 256]; 3];
        for (c, lut) in value_lut.iter_mut().enumerate() {
            let mean = config.image_mean[c] as f32;
            let std = config.image_std[c] as f32;
            for (v, out) in lut.iter_mut().enumerate() {
                let mut x = if config.do_rescale {
                    (v as f64 * config.rescale_factor) as f32
                } else {
                    v as f32
                };
                if config.do_normalize {
                    x = (x - mean) / std;
                }
                *out = x;
            }
        }
        Ok(ImageProcessor { config, value_lut })
    }

    /// The settings this processor applies.
    pub fn config(&self) -> &PreprocessorConfig {
        &self.config
    }

    /// `(height, width)` of the output, when resizing.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        self.config
            .do_resize
            .then_some((self.config.size.height, self.config.size.width))
    }

    /// Preprocesses one image into `[1, 3, H, W]`.
    pub fn preprocess(&self, image: &DynamicImage) -> Result<PixelValues> {
        self.preprocess_batch(std::slice::from_ref(image))
    }

    /// Preprocesses a batch into `[batch, 3, H, W]`.
    ///
    /// Errors: an empty batch; images of different sizes when `do_resize` is off.
    pub fn preprocess_batch(&self, images: &[DynamicImage]) -> Result<PixelValues> {
        if images.is_empty() {
            return Err(Error::InvalidInput("no images to preprocess".to_owned()));
        }
        let mut data = Vec::new();
        let mut hw = None;
        for image in images {
            let (h, w) = self.push_chw(image, &mut data)?;
            if *hw.get_or_insert((h, w)) != (h, w) {
                return Err(Error::InvalidInput(format!(
                    "images of different sizes cannot be batched without resizing ({:?} and {h}x{w})",
                    hw
                )));
            }
        }
        let (h, w) = hw.expect("batch is not empty");
        Ok(PixelValues {
            data,
            shape: [images.len(), 3, h, w],
        })
    }

    /// Appends one image's `[3, H, W]` values to `out`; returns `(H, W)`.
    fn push_chw(&self, image: &DynamicImage, out: &mut Vec<f32>) -> Result<(usize, usize)> {
        let rgb = if self.config.do_convert_rgb {
            to_rgb8(image)
        } else {
            image.to_rgb8()
        };
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::InvalidInput("an image has no pixels".to_owned()));
        }
        let (pixels, h, w) = match self.output_size() {
            Some((oh, ow)) => {
                let resized = resize_rgb8(rgb.as_raw(), w, h, ow, oh, self.config.resample)
                    .expect("nearest is refused in ImageProcessor::new");
                (resized, oh, ow)
            }
            None => (rgb.into_raw(), h, w),
        };
        out.reserve(3 * h * w);
        for (c, lut) in self.value_lut.iter().enumerate() {
            out.extend(pixels[c..].iter().step_by(3).map(|&v| lut[v as usize]));
        }
        Ok((h, w))
    }
}
