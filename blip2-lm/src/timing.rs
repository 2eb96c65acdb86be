//! Where a generation's time goes: [`Timed`] wraps a [`LanguageModel`] and notes when its prefill
//! ran and how many decoding steps followed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use blip2_core::Result;
use burn::tensor::Tensor;

use crate::LanguageModel;

/// A [`LanguageModel`] that records the start and end of its prefill and counts its steps;
/// otherwise it is the wrapped model.
///
/// The times are host wall-clock times of the calls. On CPU backends a call returns when its work
/// is done; on GPU backends work may still be queued when a call returns and is then counted in
/// whatever waits for it next (reading the logits, in [`crate::generate`]).
pub struct Timed<'a, M> {
    model: &'a M,
    record: Mutex<Record>,
}

/// What [`Timed`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    /// When the (last) prefill started and ended.
    pub prefill: Option<(Instant, Instant)>,
    /// How many [`LanguageModel::step`] calls followed it.
    pub steps: usize,
}

impl<'a, M: LanguageModel> Timed<'a, M> {
    /// Wraps `model`.
    pub fn new(model: &'a M) -> Self {
        Timed {
            model,
            record: Mutex::new(Record::default()),
        }
    }

    /// What was recorded so far.
    pub fn record(&self) -> Record {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // The record is plain data: a panic elsewhere cannot leave it half-written.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Record {
    /// The prefill's duration.
    pub fn prefill_time(&self) -> Duration {
        self.prefill
            .map_or(Duration::ZERO, |(start, end)| end - start)
    }

    /// Time from the end of the prefill to `end`: the decoding phase, when `end` is the moment
    /// generation returned.
    pub fn decode_time(&self, end: Instant) -> Duration {
        self.prefill.map_or(Duration::ZERO, |(_, done)| {
            end.saturating_duration_since(done)
        })
    }
}

impl<M: LanguageModel> LanguageModel for Timed<'_, M> {
    type State = M::State;

    fn embed_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor<3>> {
        self.model.embed_tokens(ids)
    }

    fn prefill(
        &self,
        embeds: Tensor<3>,
        attention_mask: &[Vec<bool>],
        capacity: usize,
    ) -> Result<(Self::State, Tensor<2>)> {
        let start = Instant::now();
        let out = self.model.prefill(embeds, attention_mask, capacity);
        *self.lock() = Record {
            prefill: Some((start, Instant::now())),
            steps: 0,
        };
        out
    }

    fn step(&self, state: &mut Self::State, tokens: &[u32]) -> Result<Tensor<2>> {
        let out = self.model.step(state, tokens);
        self.lock().steps += 1;
        out
    }

    fn reorder(&self, state: &mut Self::State, rows: &[usize]) {
        self.model.reorder(state, rows)
    }
}
