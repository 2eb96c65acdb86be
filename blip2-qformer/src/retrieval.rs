//! The retrieval heads of `Blip2ForImageTextRetrieval`: image–text matching (ITM) and the
//! contrastive projections (ITC).

use blip2_core::config::Blip2Config;
use blip2_core::error::Result;
use blip2_core::nn::Dense;
use blip2_core::{nn, Weights};
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::embeddings::Blip2TextEmbeddings;

/// Text embeddings, `vision_projection`, `text_projection` and `itm_head`.
#[derive(Module, Debug)]
pub struct RetrievalHeads {
    /// The Q-Former's text embeddings.
    pub embeddings: Blip2TextEmbeddings,
    vision_projection: Dense,
    text_projection: Dense,
    itm_head: Dense,
}

impl RetrievalHeads {
    /// Loads the heads from `w` (the whole checkpoint).
    pub fn load(w: &Weights, config: &Blip2Config, device: &Device) -> Result<Self> {
        let (h, d) = (
            config.qformer_config.hidden_size,
            config.image_text_hidden_size,
        );
        Ok(RetrievalHeads {
            embeddings: Blip2TextEmbeddings::load(
                &w.pp("embeddings"),
                &config.qformer_config,
                device,
            )?,
            vision_projection: nn::linear(&w.pp("vision_projection"), h, d, true, device)?,
            text_projection: nn::linear(&w.pp("text_projection"), h, d, true, device)?,
            itm_head: nn::linear(&w.pp("itm_head"), h, 2, true, device)?,
        })
    }

    /// ITC image features: L2-normalised `vision_projection` of every query output,
    /// `[images, queries, hidden]` → `[images, queries, dim]`.
    pub fn image_features(&self, query_output: Tensor<3>) -> Tensor<3> {
        l2_normalize(self.vision_projection.forward(query_output))
    }

    /// ITC text feature: L2-normalised `text_projection` of the first (`[CLS]`) position of the
    /// text-only pass, `[texts, len, hidden]` → `[texts, dim]`.
    pub fn text_features(&self, text_output: Tensor<3>) -> Tensor<2> {
        let [rows, _, hidden] = text_output.dims();
        let cls = text_output
            .slice(burn::tensor::s![.., 0..1, ..])
            .reshape([rows, hidden]);
        l2_normalize(self.text_projection.forward(cls))
    }

    /// ITM logits: `itm_head` over the query positions of the joint pass, averaged over queries,
    /// `[pairs, queries + len, hidden]` → `[pairs, 2]` (index 1: "matches").
    pub fn itm_logits(&self, joint_output: Tensor<3>, num_queries: usize) -> Tensor<2> {
        let queries = joint_output.slice(burn::tensor::s![.., 0..num_queries, ..]);
        let [rows, _, _] = queries.dims();
        self.itm_head
            .forward(queries)
            .mean_dim(1)
            .reshape([rows, 2])
    }
}

/// `x / max(‖x‖₂, 1e-12)` over the last dimension, as `torch.nn.functional.normalize`.
fn l2_normalize<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(D - 1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}
