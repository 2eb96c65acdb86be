//! `Builder`: where a model is and how to load it, shared by [`Blip2`] and [`Blip2Retrieval`].

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use blip2_core::{Quantization, Result, WeightDType};
use burn::tensor::Device;

use crate::{Blip2, Blip2Retrieval, Checkpoint};

/// Options for loading a model `M`: [`Blip2Builder`] ([`Blip2::builder`]) or
/// [`Blip2RetrievalBuilder`] ([`Blip2Retrieval::builder`]). Each has its own `build`.
pub struct Builder<M> {
    pub(crate) model: PathBuf,
    pub(crate) revision: Option<String>,
    pub(crate) device: Option<Device>,
    pub(crate) dtype: WeightDType,
    pub(crate) quantization: Quantization,
    pub(crate) question_template: Option<String>,
    loads: PhantomData<fn() -> M>,
}

/// Options for loading a [`Blip2`].
pub type Blip2Builder = Builder<Blip2>;

/// Options for loading a [`Blip2Retrieval`].
pub type Blip2RetrievalBuilder = Builder<Blip2Retrieval>;

impl<M> Builder<M> {
    /// Where to find the model: a folder (`&str`, `String`, `&Path`, …), or a hub id already in
    /// the HF cache (see [`Checkpoint::open`]).
    pub fn new(model: impl AsRef<Path>) -> Self {
        Builder {
            model: model.as_ref().to_owned(),
            revision: None,
            device: None,
            dtype: WeightDType::F32,
            quantization: Quantization::None,
            question_template: None,
            loads: PhantomData,
        }
    }

    /// Branch, tag or commit of a hub id (default `main`).
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = Some(revision.into());
        self
    }

    /// The device (and so the backend) to run on; default: burn's default device.
    pub fn device(mut self, device: Device) -> Self {
        self.device = Some(device);
        self
    }

    /// The precision to run in (default f32); weights are converted once, at load.
    ///
    /// For [`Blip2`]:
    /// - `F32`: every backend; the parity-tested mode.
    /// - `F16`: the vision model, the projection and OPT in f16; the Q-Former stays in f32 (as in
    ///   transformers) and so does Flan-T5, which overflows in f16.
    /// - `BF16`: as `F16`, but the Q-Former runs in bf16 too (as in transformers); Flan-T5 stays
    ///   in f32.
    ///
    /// Loading refuses a dtype the device's backend cannot run (ndarray runs only f32); see
    /// `docs/backends.md` for which backend supports which. [`Blip2Retrieval`] is parity-tested
    /// in f32 only and refuses anything else for now.
    pub fn dtype(mut self, dtype: WeightDType) -> Self {
        self.dtype = dtype;
        self
    }

    /// How the language model's linear layers store their weights (default
    /// [`Quantization::None`]).
    ///
    /// [`Quantization::Int8`]: every linear layer of the language model (attention, MLP and the
    /// language-modelling head; OPT, LLaMA and Flan-T5) quantized once at load to int8 with one
    /// scale per output row; the rest of the language model (embeddings, norms, KV cache) runs
    /// in f32. The vision model, Q-Former and projection keep [`Builder::dtype`]'s precision.
    /// About a quarter of f32's bytes per decoding step, on the CPU kernels (any backend reads
    /// the activations through the host). Approximate: docs/performance.md gives the measured
    /// drift from f32. [`Blip2Retrieval`] has no language model and refuses it.
    pub fn quantization(mut self, quantization: Quantization) -> Self {
        self.quantization = quantization;
        self
    }

    /// The checkpoint, opened, and the device to load it on.
    pub(crate) fn open(&self) -> Result<(Checkpoint, Device)> {
        let checkpoint = Checkpoint::open(&self.model, self.revision.as_deref())?;
        Ok((checkpoint, self.device.clone().unwrap_or_default()))
    }
}

impl<M> Clone for Builder<M> {
    fn clone(&self) -> Self {
        Builder {
            model: self.model.clone(),
            revision: self.revision.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
            quantization: self.quantization,
            question_template: self.question_template.clone(),
            loads: PhantomData,
        }
    }
}

impl<M> fmt::Debug for Builder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("model", &self.model)
            .field("revision", &self.revision)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("quantization", &self.quantization)
            .field("question_template", &self.question_template)
            .finish()
    }
}
