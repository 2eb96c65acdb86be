//! Image → embeddings: the vision encoder, the Q-Former and the language projection, wired.

use blip2_core::config::ModelFamily;
use blip2_core::image::PixelValues;
use blip2_core::nn;
use blip2_core::nn::Dense;
use blip2_core::{Blip2Config, Error, Result, WeightDType, Weights};
use blip2_qformer::Blip2QFormerModel;
use blip2_vision::Blip2VisionModel;
use burn::tensor::{s, Device, Tensor};

use crate::Checkpoint;

/// The precision the Q-Former runs in when the rest of the model runs in `dtype`.
pub(crate) fn qformer_dtype(dtype: WeightDType) -> WeightDType {
    match dtype {
        WeightDType::F16 => WeightDType::F32,
        other => other,
    }
}

/// The image side of BLIP-2: EVA-CLIP ViT-g → Q-Former (learned queries cross-attending to every
/// image token) → `language_projection` into the language model's embedding width.
///
/// Retrieval checkpoints (`Blip2ForImageTextRetrieval`) have no language projection; for them
/// [`ImageEmbeddings::projected`] is `None`.
#[derive(Debug)]
pub struct ImageEncoder {
    vision: Blip2VisionModel,
    qformer: Blip2QFormerModel,
    language_projection: Option<Dense>,
    device: Device,
}

/// The encoded form of a batch of images, computed once and reusable: ask many questions of an
/// image without encoding it again.
///
/// For BLIP-2 this is the Q-Former's output and its projection. InstructBLIP's Q-Former reads the
/// instruction too, so for it only the vision encoder's output is kept here, and the Q-Former
/// runs once per prompt ([`ImageEncoder::instruct`]).
#[derive(Debug, Clone)]
pub struct ImageEmbeddings {
    /// BLIP-2's queries (`None` for InstructBLIP).
    query_output: Option<Tensor<3>>,
    /// Their projection (`None` for retrieval checkpoints and InstructBLIP).
    projected: Option<Tensor<3>>,
    /// InstructBLIP's vision output (`None` for BLIP-2).
    vision: Option<Tensor<3>>,
}

impl ImageEmbeddings {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.query_output
            .as_ref()
            .or(self.vision.as_ref())
            .map_or(0, |t| t.dims()[0])
    }

    /// Whether there are no images (never true for embeddings made by [`ImageEncoder`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Q-Former's output, `[images, queries, qformer_hidden]`: the image features that the
    /// retrieval heads project. `None` for InstructBLIP, whose queries depend on the prompt.
    pub fn query_output(&self) -> Option<&Tensor<3>> {
        self.query_output.as_ref()
    }

    /// The queries projected into the language model, `[images, queries, lm_hidden]`: what the
    /// language model reads in place of the `<image>` tokens. `None` for retrieval checkpoints,
    /// and for InstructBLIP (see [`ImageEncoder::instruct`]).
    pub fn projected(&self) -> Option<&Tensor<3>> {
        self.projected.as_ref()
    }

    /// The vision encoder's output, `[images, tokens, vision_hidden]`, when these embeddings
    /// keep it (InstructBLIP's).
    pub fn vision_states(&self) -> Option<&Tensor<3>> {
        self.vision.as_ref()
    }

    /// Image `index` of the batch alone, to keep (a cache of encoded images) or to batch again
    /// with others through [`ImageEmbeddings::concat`].
    ///
    /// Errors: `index` past the last image.
    pub fn image(&self, index: usize) -> Result<ImageEmbeddings> {
        if index >= self.len() {
            return Err(Error::InvalidInput(format!(
                "image {index} of a batch of {}",
                self.len()
            )));
        }
        let row = |t: &Option<Tensor<3>>| t.as_ref().map(|t| t.clone().narrow(0, index, 1));
        Ok(ImageEmbeddings {
            query_output: row(&self.query_output),
            projected: row(&self.projected),
            vision: row(&self.vision),
        })
    }

    /// Batches encoded separately, as one batch in their order: what encoding all their images
    /// together gives (up to the order of summation in the encoder's products).
    ///
    /// Errors: no parts, or parts that did not come from the same kind of encoder (BLIP-2 and
    /// InstructBLIP, with and without a language projection) or whose widths differ.
    pub fn concat(parts: &[ImageEmbeddings]) -> Result<ImageEmbeddings> {
        let Some(first) = parts.first() else {
            return Err(Error::InvalidInput(
                "no embeddings to concatenate".to_owned(),
            ));
        };
        let field = |get: fn(&ImageEmbeddings) -> &Option<Tensor<3>>| -> Result<Option<Tensor<3>>> {
            let Some(head) = get(first) else {
                return if parts.iter().all(|p| get(p).is_none()) {
                    Ok(None)
                } else {
                    Err(mixed_embeddings())
                };
            };
            let inner = &head.dims()[1..];
            let mut all = Vec::with_capacity(parts.len());
            for part in parts {
                match get(part) {
                    Some(t) if t.dims()[1..] == *inner => all.push(t.clone()),
                    _ => return Err(mixed_embeddings()),
                }
            }
            Ok(Some(Tensor::cat(all, 0)))
        };
        Ok(ImageEmbeddings {
            query_output: field(|e| &e.query_output)?,
            projected: field(|e| &e.projected)?,
            vision: field(|e| &e.vision)?,
        })
    }
}

fn mixed_embeddings() -> Error {
    Error::InvalidInput(
        "embeddings from different kinds of encoders (or of different widths) cannot be batched \
         together"
            .to_owned(),
    )
}

impl ImageEncoder {
    /// Loads the vision model, the Q-Former (with its query tokens) and, when the checkpoint has
    /// one, the language projection, converting weights to `dtype` on `device` (see
    /// [`ImageEncoder::from_weights`] for the parts kept in f32).
    pub fn load(checkpoint: &Checkpoint, device: &Device, dtype: WeightDType) -> Result<Self> {
        let weights = Weights::new(checkpoint.weights(), dtype);
        Self::from_weights(checkpoint.dir().config(), &weights, device)
    }

    /// Builds the encoder for `config` from any weight source (for instance
    /// [`blip2_core::RandomWeights`], to run the real architecture without files).
    ///
    /// The vision model and the projection run in `weights`' dtype. BLIP-2's Q-Former and its
    /// query tokens stay in f32 when that dtype is f16, as transformers keeps them
    /// (`_keep_in_fp32_modules`); in bf16 everything is bf16, as there. InstructBLIP's Q-Former
    /// runs in `weights`' dtype (transformers keeps only its query tokens in f32, and rounds them
    /// to the Q-Former's precision before use).
    pub fn from_weights(config: &Blip2Config, weights: &Weights, device: &Device) -> Result<Self> {
        let vision =
            Blip2VisionModel::load(&weights.pp("vision_model"), &config.vision_config, device)?;
        let qformer = match config.family {
            ModelFamily::InstructBlip => Blip2QFormerModel::load_instructblip(
                weights,
                &config.qformer_config,
                config.num_query_tokens,
                device,
            )?,
            _ => Blip2QFormerModel::load(
                &weights.with_dtype(qformer_dtype(weights.dtype())),
                &config.qformer_config,
                config.num_query_tokens,
                device,
            )?,
        };
        let projection = weights.pp("language_projection");
        let language_projection = if projection.contains("weight") {
            Some(nn::linear(
                &projection,
                config.qformer_config.hidden_size,
                config.text_config.hidden_size(),
                true,
                device,
            )?)
        } else if config.is_retrieval() {
            None
        } else {
            return Err(projection.missing("weight"));
        };
        Ok(ImageEncoder {
            vision,
            qformer,
            language_projection,
            device: device.clone(),
        })
    }

    /// The vision encoder.
    pub fn vision(&self) -> &Blip2VisionModel {
        &self.vision
    }

    /// The Q-Former.
    pub fn qformer(&self) -> &Blip2QFormerModel {
        &self.qformer
    }

    /// The language projection of Q-Former outputs (`[images, queries, qformer_hidden]` →
    /// `[images, queries, lm_hidden]`, in the vision model's precision); `None` for retrieval
    /// checkpoints, which have none.
    pub fn project(&self, query_output: Tensor<3>) -> Option<Tensor<3>> {
        self.language_projection
            .as_ref()
            .map(|p| p.forward(query_output))
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pixel values as a tensor on this encoder's device.
    pub fn pixel_tensor(&self, pixels: &PixelValues) -> Tensor<4> {
        Tensor::from_data(pixels.to_data(), &self.device)
    }

    /// Encodes preprocessed images (see [`crate::preprocess::ImageProcessor`]).
    ///
    /// Errors: an empty batch, or pixel values of the wrong size or channel count.
    pub fn encode(&self, pixels: &PixelValues) -> Result<ImageEmbeddings> {
        if pixels.shape()[0] == 0 {
            return Err(Error::InvalidInput("a batch of zero images".to_owned()));
        }
        let vision = self.vision.forward(self.pixel_tensor(pixels))?;
        if self.qformer.is_instructed() {
            return Ok(ImageEmbeddings {
                query_output: None,
                projected: None,
                vision: Some(vision.last_hidden_state),
            });
        }
        let query_output = self.qformer.forward_queries(vision.last_hidden_state)?;
        let projected = self.project(query_output.clone());
        Ok(ImageEmbeddings {
            query_output: Some(query_output),
            projected,
            vision: None,
        })
    }

    /// InstructBLIP: the Q-Former reads each image of `embeddings` with its instruction (`ids`,
    /// the Q-Former tokenizer's rows, right-padded; `padding` true at padding) → the queries'
    /// output `[images, queries, qformer_hidden]` and their projection into the language model
    /// `[images, queries, lm_hidden]`.
    ///
    /// Errors: a BLIP-2 encoder or BLIP-2 embeddings (no instruction to read), rows that do not
    /// match the images, ids outside the Q-Former's vocabulary, instructions longer than its
    /// positions.
    pub fn instruct(
        &self,
        embeddings: &ImageEmbeddings,
        ids: &[Vec<u32>],
        padding: &[Vec<bool>],
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let states = embeddings.vision_states().ok_or_else(|| {
            Error::InvalidInput(
                "these embeddings hold no vision states (they are BLIP-2's)".to_owned(),
            )
        })?;
        let all = self
            .qformer
            .forward_instructed(states.clone(), ids, padding)?;
        let queries = self.qformer.num_query_tokens();
        let query_output = all.slice(s![.., 0..queries, ..]);
        let projected = self.project(query_output.clone()).ok_or_else(|| {
            Error::Unsupported("this checkpoint has no language projection".to_owned())
        })?;
        Ok((query_output, projected))
    }
}
