//! Image → embeddings: the vision encoder, the Q-Former and the language projection, wired.

use blip2_core::image::PixelValues;
use blip2_core::nn;
use blip2_core::nn::Dense;
use blip2_core::{Blip2Config, Error, Result, WeightDType, Weights};
use blip2_qformer::Blip2QFormerModel;
use blip2_vision::Blip2VisionModel;
use burn::tensor::{Device, Tensor};

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
#[derive(Debug, Clone)]
pub struct ImageEmbeddings {
    query_output: Tensor<3>,
    projected: Option<Tensor<3>>,
}

impl ImageEmbeddings {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.query_output.dims()[0]
    }

    /// Whether there are no images (never true for embeddings made by [`ImageEncoder`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Q-Former's output, `[images, queries, qformer_hidden]`: the image features that the
    /// retrieval heads project.
    pub fn query_output(&self) -> &Tensor<3> {
        &self.query_output
    }

    /// The queries projected into the language model, `[images, queries, lm_hidden]`: what the
    /// language model reads in place of the `<image>` tokens. `None` for retrieval checkpoints.
    pub fn projected(&self) -> Option<&Tensor<3>> {
        self.projected.as_ref()
    }
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
    /// The vision model and the projection run in `weights`' dtype. The Q-Former and its query
    /// tokens stay in f32 when that dtype is f16, as transformers keeps them
    /// (`_keep_in_fp32_modules`); in bf16 everything is bf16, as there.
    pub fn from_weights(config: &Blip2Config, weights: &Weights, device: &Device) -> Result<Self> {
        let vision =
            Blip2VisionModel::load(&weights.pp("vision_model"), &config.vision_config, device)?;
        let qformer = Blip2QFormerModel::load(
            &weights.with_dtype(qformer_dtype(weights.dtype())),
            &config.qformer_config,
            config.num_query_tokens,
            device,
        )?;
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
        let query_output = self.qformer.forward_queries(vision.last_hidden_state)?;
        let projected = self.project(query_output.clone());
        Ok(ImageEmbeddings {
            query_output,
            projected,
        })
    }
}
