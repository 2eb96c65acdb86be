//! `preprocessor_config.json` and `processor_config.json`: the image processor's settings and
//! the processor's `num_query_tokens`.

use serde::Deserialize;

use crate::error::{Error, Result};

/// CLIP's normalisation mean, BlipImageProcessor's default.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// CLIP's normalisation standard deviation, BlipImageProcessor's default.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The settings of transformers' `BlipImageProcessor`.
///
/// Omitted fields take `BlipImageProcessor`'s defaults (384x384, bicubic, CLIP mean/std).
/// The BLIP-2 repos set `size` to 224x224.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct PreprocessorConfig {
    /// Resize to `size` (true).
    pub do_resize: bool,
    /// The output size.
    pub size: ImageSize,
    /// PIL's resampling filter (3 = bicubic).
    pub resample: Resample,
    /// Multiply by `rescale_factor` (true).
    pub do_rescale: bool,
    /// 1/255.
    pub rescale_factor: f64,
    /// Subtract `image_mean` and divide by `image_std` (true).
    pub do_normalize: bool,
    /// Per-channel mean (one value is repeated).
    #[serde(deserialize_with = "three_floats")]
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation (one value is repeated).
    #[serde(deserialize_with = "three_floats")]
    pub image_std: [f64; 3],
    /// Convert to RGB first, compositing transparency onto white (true).
    pub do_convert_rgb: bool,
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        PreprocessorConfig {
            do_resize: true,
            size: ImageSize {
                height: 384,
                width: 384,
            },
            resample: Resample::Bicubic,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

impl PreprocessorConfig {
    /// BlipImageProcessor's defaults with the given output size.
    pub fn with_size(height: usize, width: usize) -> Self {
        PreprocessorConfig {
            size: ImageSize { height, width },
            ..Default::default()
        }
    }

    /// Checks the values preprocessing relies on.
    pub fn validate(&self) -> Result<()> {
        if self.size.height == 0 || self.size.width == 0 {
            return Err(Error::invalid_config(
                "size",
                "height and width must be positive",
            ));
        }
        if self.size.height > super::MAX_DIMENSION || self.size.width > super::MAX_DIMENSION {
            return Err(Error::invalid_config("size", "absurdly large output size"));
        }
        if self.image_std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(Error::invalid_config(
                "image_std",
                "must be finite and non-zero",
            ));
        }
        Ok(())
    }
}

/// An output size `{"height": H, "width": W}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Square(usize),
            HeightWidth { height: usize, width: usize },
            Other(serde_json::Value),
        }
        match Raw::deserialize(d)? {
            Raw::Square(n) => Ok(ImageSize {
                height: n,
                width: n,
            }),
            Raw::HeightWidth { height, width } => Ok(ImageSize { height, width }),
            Raw::Other(v) => Err(serde::de::Error::custom(format!(
                "size must be {{\"height\": H, \"width\": W}} for a BLIP image processor, found {v}"
            ))),
        }
    }
}

/// PIL's resampling filters, by the integer transformers stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// 0: nearest neighbour.
    Nearest,
    /// 1: Lanczos (a = 3).
    Lanczos,
    /// 2: bilinear (triangle).
    Bilinear,
    /// 3: bicubic (Keys, a = -0.5); BLIP-2's choice.
    Bicubic,
    /// 4: box.
    Box,
    /// 5: Hamming.
    Hamming,
}

impl<'de> Deserialize<'de> for Resample {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match u8::deserialize(d)? {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            n => {
                return Err(serde::de::Error::custom(format!(
                    "resample must be a PIL filter 0..=5, found {n}"
                )))
            }
        })
    }
}

fn three_floats<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<[f64; 3], D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(f64),
        Many(Vec<f64>),
    }
    match Raw::deserialize(d)? {
        Raw::One(x) => Ok([x; 3]),
        Raw::Many(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
        Raw::Many(v) => Err(serde::de::Error::custom(format!(
            "expected 3 per-channel values, found {}",
            v.len()
        ))),
    }
}

/// `processor_config.json`.
///
/// The updated hub repos ship a small one (`num_query_tokens`, `processor_class`) beside
/// `preprocessor_config.json`; transformers 5's `save_pretrained` writes the image processor's
/// settings nested in it under `image_processor` instead. Both layouts parse.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct ProcessorConfig {
    /// How many `<image>` tokens the processor prepends to every prompt.
    pub num_query_tokens: Option<usize>,
    /// E.g. `"Blip2Processor"`.
    pub processor_class: Option<String>,
    /// The image processor's settings, when nested here.
    pub image_processor: Option<PreprocessorConfig>,
}
