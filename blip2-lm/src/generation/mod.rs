//! Generation with transformers' semantics: greedy search, beam search (transformers 5's
//! vectorised beam search, ported decision for decision) and sampling, with the logits processors
//! in transformers' order: repetition penalty → no-repeat-n-gram → min length → min new tokens,
//! then (sampling only) temperature → top-k → top-p.
//!
//! Token selection happens on the host over `[rows, vocab]` logits; the model runs one step per
//! token with its cache ([`LanguageModel`]).
//!
//! Laid out along transformers' seams: `config` (`GenerationConfig`), `processors` (one unit per
//! `LogitsProcessor` class, and the list built from a config), `sampling` (softmax, argmax, the
//! seeded sampler), `sample` (`_sample`: greedy search and sampling) and `beam`
//! (`_beam_search`, made of functions named after transformers' own).

mod beam;
mod config;
mod processors;
mod sample;
mod sampling;

use std::ops::ControlFlow;

use blip2_core::error::{Error, Result};
use burn::tensor::Tensor;

use crate::LanguageModel;

pub use config::{fresh_seed, GenerationConfig, DEFAULT_MAX_NEW_TOKENS};

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// It produced an end-of-sequence token (included in its tokens).
    Eos,
    /// It reached the length limit.
    Length,
    /// The caller stopped it (the streaming callback returned [`ControlFlow::Break`]).
    Stopped,
}

/// One generated sequence: the new tokens only (not the prompt).
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedSequence {
    /// New token ids, with the final EOS when it stopped on one.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Beam score (sum of log-probabilities / length^length_penalty); `None` outside beam search.
    pub score: Option<f32>,
}

/// The prompt of a generation call.
pub struct Prompt {
    /// `[rows, len, embed_dim]` input embeddings (image queries already in place).
    pub embeds: Tensor<3>,
    /// `attention_mask[row][pos]`: false for padding.
    pub attention_mask: Vec<Vec<bool>>,
    /// The token ids the embeddings stand for (image placeholders included), for inspection.
    pub input_ids: Vec<Vec<u32>>,
    /// The ids the logits processors see as the existing row (for OPT the whole input row: image
    /// tokens, padding, BOS, prompt; for T5 the decoder start). All rows have the same length.
    pub processor_ids: Vec<Vec<u32>>,
}

/// Generates for every row of `prompt`; returns `num_return_sequences` sequences per row.
///
/// `on_step` is called after every step of greedy search or sampling with the token chosen for
/// each row (`None` once a row has finished), for streaming; beam search calls it never. When it
/// returns [`ControlFlow::Break`], generation ends there: the rows still running keep the tokens
/// they have, with [`StopReason::Stopped`].
pub fn generate<M: LanguageModel>(
    model: &M,
    prompt: Prompt,
    config: &GenerationConfig,
    on_step: &mut dyn FnMut(&[Option<u32>]) -> ControlFlow<()>,
) -> Result<Vec<Vec<GeneratedSequence>>> {
    config.validate()?;
    let rows = prompt.processor_ids.len();
    let len = prompt.attention_mask.first().map_or(0, Vec::len);
    if rows == 0 || prompt.embeds.dims()[0] != rows || prompt.attention_mask.len() != rows {
        return Err(Error::InvalidInput("prompt rows do not match".to_owned()));
    }
    if len == 0 {
        return Err(Error::InvalidInput("an empty prompt".to_owned()));
    }
    let budget = config.new_token_budget(prompt.processor_ids[0].len())?;
    if config.num_beams > 1 {
        beam::beam_search(model, prompt, config, budget)
    } else {
        sample::sample(model, prompt, config, budget, on_step)
    }
}

/// Host copy of `[rows, vocab]` logits.
fn rows_of(logits: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [rows, vocab] = logits.dims();
    let flat = crate::read_back(logits)?
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Backend(format!("logits: {e:?}")))?;
    Ok((0..rows)
        .map(|r| flat[r * vocab..(r + 1) * vocab].to_vec())
        .collect())
}
