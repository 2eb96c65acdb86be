//! The language models of BLIP-2 and InstructBLIP on burn, behind one [`LanguageModel`] trait:
//! OPT ([`opt::OptForCausalLM`]), T5 ([`t5::T5ForConditionalGeneration`]) and LLaMA / Vicuna
//! ([`llama::LlamaForCausalLM`]), with a preallocated
//! [`cache::KvCache`], and the generation
//! strategies of transformers ([`generation`]).
#![warn(missing_docs)]

pub mod cache;
pub mod decoder;
pub mod generation;
pub mod llama;
pub mod opt;
pub mod t5;
pub mod timing;

use blip2_core::{Error, Result};
use burn::tensor::Tensor;

pub use generation::{generate, GeneratedSequence, GenerationConfig, StopReason};
pub use llama::LlamaForCausalLM;
pub use opt::OptForCausalLM;
pub use t5::T5ForConditionalGeneration;
pub use timing::Timed;

/// What generation needs from a language model: embed tokens, run the prompt once (prefill), then
/// one step per token, and reorder its cached state for beam search.
pub trait LanguageModel: Send + Sync {
    /// Everything kept between steps (KV caches, masks, positions) for a batch of rows.
    type State;

    /// Token embeddings of equal-length rows of ids, `[rows, len, embed_dim]`.
    fn embed_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor<3>>;

    /// Runs the prompt `embeds` (`[rows, len, embed_dim]`; `attention_mask[row][pos]` false for
    /// padding) with room for `max_new_tokens` more positions; returns the state and the logits of
    /// the last position, `[rows, vocab]`.
    fn prefill(
        &self,
        embeds: Tensor<3>,
        attention_mask: &[Vec<bool>],
        max_new_tokens: usize,
    ) -> Result<(Self::State, Tensor<2>)>;

    /// Feeds one token per row; returns the next logits, `[rows, vocab]`.
    fn step(&self, state: &mut Self::State, tokens: &[u32]) -> Result<Tensor<2>>;

    /// Keeps rows `rows` of the state, in that order (repeats allowed).
    fn reorder(&self, state: &mut Self::State, rows: &[usize]);
}

/// Runs a one-token prompt through `lm` and reads its logits back: an error, rather than a
/// failure in the middle of generation, when the device cannot hold or run the model (GPU drivers
/// that refuse buffers larger than their binding limit only say so when results are read).
pub fn check_device<M: LanguageModel>(lm: &M) -> Result<()> {
    let embeds = lm.embed_tokens(&[vec![0]])?;
    let (_, logits) = lm.prefill(embeds, &[vec![true]], 1)?;
    read_back(logits).map(drop)
}

/// The host copy of `t`, or [`Error::Backend`] when the device failed to compute it.
pub fn read_back<const D: usize>(t: Tensor<D>) -> Result<burn::tensor::TensorData> {
    t.try_into_data().map_err(|e| {
        Error::Backend(format!(
            "{} (a weight may exceed what the device can bind in one buffer)",
            e.to_string().lines().collect::<Vec<_>>().join(" ")
        ))
    })
}

/// Checks a prefill's inputs: at least one row, a non-empty prompt, and a mask of the same shape.
pub(crate) fn check_prompt(
    embeds: &Tensor<3>,
    attention_mask: &[Vec<bool>],
) -> Result<(usize, usize)> {
    let [rows, len, _] = embeds.dims();
    if rows == 0 || len == 0 {
        return Err(Error::InvalidInput("an empty prompt batch".to_owned()));
    }
    if attention_mask.len() != rows || attention_mask.iter().any(|m| m.len() != len) {
        return Err(Error::InvalidInput(
            "attention mask does not match the inputs".to_owned(),
        ));
    }
    Ok((rows, len))
}
