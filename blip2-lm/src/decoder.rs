//! What the decoder-only models (OPT, LLaMA) share: positions counted over the attention mask,
//! the causal mask with padding, and the state kept between steps.

use blip2_core::error::{Error, Result};
use blip2_core::nn;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::cache::KvCache;
use crate::LanguageModel;

/// A decoder-only model (OPT, LLaMA): what it supplies for [`LanguageModel`]'s prefill, steps and
/// reordering, which are the same for all of them.
pub trait DecoderOnly: Send + Sync {
    /// The position id transformers gives padding (OPT: -1, LLaMA: 0; never attended to).
    const PAD_POSITION: i64;

    /// The token embedding table, `[vocab, embed_dim]`.
    fn token_embeddings(&self) -> Tensor<2>;

    /// How many positions the model can take.
    fn position_limit(&self) -> usize;

    /// An empty cache for `rows` rows of up to `capacity` positions.
    fn new_cache(&self, rows: usize, capacity: usize) -> KvCache;

    /// Runs the decoder over `embeds` (`[rows, new, embed_dim]`) at `positions` (row-major) with
    /// `mask` (`[rows, 1, new, keys]`, true = ignore), appending to the cache; returns the f32
    /// logits of the last position, `[rows, vocab]`.
    fn run(
        &self,
        embeds: Tensor<3>,
        positions: &[i64],
        mask: Tensor<4, Bool>,
        cache: &mut KvCache,
    ) -> Tensor<2>;
}

impl<M: DecoderOnly> LanguageModel for M {
    type State = DecoderState;

    fn embed_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor<3>> {
        nn::embed_rows(&self.token_embeddings(), ids)
    }

    fn prefill(
        &self,
        embeds: Tensor<3>,
        attention_mask: &[Vec<bool>],
        max_new_tokens: usize,
    ) -> Result<(DecoderState, Tensor<2>)> {
        let (rows, len) = crate::check_prompt(&embeds, attention_mask)?;
        let device = embeds.device();
        let cache = self.new_cache(rows, len + max_new_tokens);
        let Prefill {
            mut state,
            positions,
            mask,
        } = DecoderState::prefill(
            attention_mask,
            max_new_tokens,
            self.position_limit(),
            Self::PAD_POSITION,
            cache,
            &device,
        )?;
        let logits = self.run(embeds, &positions, mask, &mut state.cache);
        Ok((state, logits))
    }

    fn step(&self, state: &mut DecoderState, tokens: &[u32]) -> Result<Tensor<2>> {
        let embeds = self.embed_tokens(&tokens.iter().map(|&t| vec![t]).collect::<Vec<_>>())?;
        let (positions, mask) = state.step(tokens.len(), &embeds.device())?;
        Ok(self.run(embeds, &positions, mask, &mut state.cache))
    }

    fn reorder(&self, state: &mut DecoderState, rows: &[usize]) {
        state.reorder(rows);
    }
}

/// Decoding state of a batch of decoder-only rows: the KV cache, which cached positions are
/// padding, and the next position id of each row.
#[derive(Debug, Clone)]
pub struct DecoderState {
    cache: KvCache,
    padding: Vec<Vec<bool>>,
    next_position: Vec<i64>,
}

/// A prefill's inputs as the model runs them: a position id per prompt position (row-major) and
/// the `[rows, 1, len, len]` mask (true = ignore).
struct Prefill {
    state: DecoderState,
    positions: Vec<i64>,
    mask: Tensor<4, Bool>,
}

impl DecoderState {
    /// Lays out a prompt batch: positions as transformers counts them (`cumsum(mask) - 1`, so
    /// that left padding takes no position; padding itself gets `pad_position`), a causal mask
    /// that also hides padding keys, and the state for the steps after it. Errors when the prompt
    /// and `max_new_tokens` need more than `max_positions` positions.
    fn prefill(
        attention_mask: &[Vec<bool>],
        max_new_tokens: usize,
        max_positions: usize,
        pad_position: i64,
        cache: KvCache,
        device: &Device,
    ) -> Result<Prefill> {
        let rows = attention_mask.len();
        let len = attention_mask.first().map_or(0, Vec::len);
        let mut positions = Vec::with_capacity(rows * len);
        let mut next_position = Vec::with_capacity(rows);
        for row in attention_mask {
            let mut count = 0i64;
            for &keep in row {
                count += keep as i64;
                positions.push(if keep { count - 1 } else { pad_position });
            }
            next_position.push(count);
        }
        let needed = next_position.iter().max().copied().unwrap_or(0) as usize + max_new_tokens;
        if needed > max_positions {
            return Err(Error::InvalidInput(format!(
                "prompt and generation need {needed} positions, the model has {max_positions}"
            )));
        }
        let padding: Vec<Vec<bool>> = attention_mask
            .iter()
            .map(|r| r.iter().map(|k| !k).collect())
            .collect();
        // Causal, and padding keys ignored; every position still sees itself, so that a padding
        // query never has all keys masked (its output is never read).
        let mut mask = Vec::with_capacity(rows * len * len);
        for pad in &padding {
            for i in 0..len {
                mask.extend((0..len).map(|j| j > i || (pad[j] && j != i)));
            }
        }
        let mask = Tensor::<4, Bool>::from_data(TensorData::new(mask, [rows, 1, len, len]), device);
        Ok(Prefill {
            state: DecoderState {
                cache,
                padding,
                next_position,
            },
            positions,
            mask,
        })
    }

    /// Makes room for one more token per row (`tokens` of them): its position per row and the
    /// `[rows, 1, 1, keys]` mask over the cache's whole buffers (the cached positions, the new
    /// one, and the positions not yet written, which are masked).
    fn step(&mut self, tokens: usize, device: &Device) -> Result<(Vec<i64>, Tensor<4, Bool>)> {
        let rows = self.padding.len();
        if tokens != rows {
            return Err(Error::InvalidInput(format!(
                "{tokens} tokens for {rows} rows"
            )));
        }
        if self.cache.len() >= self.cache.capacity() {
            return Err(Error::InvalidInput("the KV cache is full".to_owned()));
        }
        for pad in &mut self.padding {
            pad.push(false);
        }
        let keys = self.cache.reserve(1);
        let unwritten = keys - self.cache.len() - 1;
        let mask: Vec<bool> = self
            .padding
            .iter()
            .flat_map(|p| {
                p.iter()
                    .copied()
                    .chain(std::iter::repeat_n(true, unwritten))
            })
            .collect();
        let mask = Tensor::<4, Bool>::from_data(TensorData::new(mask, [rows, 1, 1, keys]), device);
        let positions = self.next_position.clone();
        for p in &mut self.next_position {
            *p += 1;
        }
        Ok((positions, mask))
    }

    /// Keeps rows `rows` of the state, in that order (repeats allowed).
    fn reorder(&mut self, rows: &[usize]) {
        self.cache.select_rows(rows);
        self.padding = rows.iter().map(|&r| self.padding[r].clone()).collect();
        self.next_position = rows.iter().map(|&r| self.next_position[r]).collect();
    }
}
