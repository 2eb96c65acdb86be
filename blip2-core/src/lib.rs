//! Shared foundations of the `blip2` crates: checkpoint configs with transformers' defaults, the
//! workspace's [`enum@Error`], image preprocessing with `BlipImageProcessor`'s exact semantics, and the
//! [`WeightSource`] trait through which model crates read weights by their HF names.
#![warn(missing_docs)]

pub mod config;
#[cfg(feature = "flex")]
mod cpu;
pub mod error;
pub mod image;
pub mod nn;
pub mod weights;

pub use config::Blip2Config;
pub use error::{Error, ErrorKind, Result};
pub use weights::{Quantization, RandomWeights, WeightDType, WeightSource, Weights};
