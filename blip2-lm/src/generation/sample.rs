//! Greedy search and sampling: one token per row and step, chosen after the logits processors.

use std::ops::ControlFlow;

use blip2_core::error::Result;

use super::processors::LogitsProcessorList;
use super::sampling::{argmax, softmax, Rng};
use super::{rows_of, GeneratedSequence, GenerationConfig, Prompt, StopReason};
use crate::LanguageModel;

/// transformers' `_sample`: greedy search, or multinomial sampling with `do_sample`, for every
/// row repeated `num_return_sequences` times; `on_step` sees each step's chosen tokens.
pub(super) fn sample<M: LanguageModel>(
    model: &M,
    prompt: Prompt,
    config: &GenerationConfig,
    budget: usize,
    on_step: &mut dyn FnMut(&[Option<u32>]) -> ControlFlow<()>,
) -> Result<Vec<Vec<GeneratedSequence>>> {
    let inputs = prompt.processor_ids.len();
    let copies = config.num_return_sequences;
    let prompt_len = prompt.processor_ids[0].len();
    let (mut state, logits) = model.prefill(prompt.embeds, &prompt.attention_mask, budget)?;
    // Every input row repeated num_return_sequences times, as transformers expands its inputs.
    let expand: Vec<usize> = (0..inputs)
        .flat_map(|r| std::iter::repeat_n(r, copies))
        .collect();
    if copies > 1 {
        model.reorder(&mut state, &expand);
    }
    let mut logits = rows_of(logits)?;
    if copies > 1 {
        logits = expand.iter().map(|&r| logits[r].clone()).collect();
    }
    let mut rows: Vec<Vec<u32>> = expand
        .iter()
        .map(|&r| prompt.processor_ids[r].clone())
        .collect();
    let mut done: Vec<Option<StopReason>> = vec![None; rows.len()];
    let pad = config
        .pad_token_id
        .or(config.eos_token_id.first().copied())
        .unwrap_or(0);
    let mut rng = Rng(config.seed);
    let processors = LogitsProcessorList::processors(config, prompt_len);
    let warpers = LogitsProcessorList::warpers(config);
    for step in 0..budget {
        let mut chosen = Vec::with_capacity(rows.len());
        for (r, scores) in logits.iter_mut().enumerate() {
            if done[r].is_some() {
                chosen.push(None);
                continue;
            }
            processors.process(&rows[r], scores);
            let token = if config.do_sample {
                warpers.process(&rows[r], scores);
                rng.sample(&softmax(scores))
            } else {
                argmax(scores)
            } as u32;
            rows[r].push(token);
            if config.eos_token_id.contains(&token) {
                done[r] = Some(StopReason::Eos);
            } else if step + 1 == budget {
                done[r] = Some(StopReason::Length);
            }
            chosen.push(Some(token));
        }
        if on_step(&chosen).is_break() {
            for reason in done.iter_mut().filter(|d| d.is_none()) {
                *reason = Some(StopReason::Stopped);
            }
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        let feed: Vec<u32> = chosen.iter().map(|t| t.unwrap_or(pad)).collect();
        logits = rows_of(model.step(&mut state, &feed)?)?;
    }
    let mut out: Vec<Vec<GeneratedSequence>> = vec![Vec::new(); inputs];
    for (r, row) in rows.into_iter().enumerate() {
        out[expand[r]].push(GeneratedSequence {
            tokens: row[prompt_len..].to_vec(),
            stop_reason: done[r].unwrap_or(StopReason::Length),
            score: None,
        });
    }
    Ok(out)
}
