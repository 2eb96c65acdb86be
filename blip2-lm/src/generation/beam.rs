//! Beam search: transformers 5's `_beam_search`, per input, made of functions named after its
//! helpers so the two can be read side by side: `_get_top_k_continuations`,
//! `_get_running_beams_for_next_iteration`, `_update_finished_beams`,
//! `_check_early_stop_heuristic` and `_beam_search_has_unfinished_sequences`.
//!
//! Each step keeps `num_beams` running beams per input; takes the top
//! `max(2, 1 + n_eos) * num_beams` continuations; those among the top `num_beams` that hit a
//! stopping criterion (EOS, or the length limit) become finished hypotheses scored
//! `sum_logprobs / generated_len ^ length_penalty`; the best `num_beams` others keep running.

use blip2_core::config::EarlyStopping;
use blip2_core::error::Result;

use super::processors::LogitsProcessorList;
use super::sampling::log_softmax;
use super::{rows_of, GeneratedSequence, GenerationConfig, Prompt, StopReason};
use crate::LanguageModel;

/// Added to scores that must not win, as transformers does (-1e9, not -inf, so sums stay finite).
const EXCLUDED: f32 = -1.0e9;

/// A running beam or a finished hypothesis.
#[derive(Clone)]
struct Hypothesis {
    /// The row so far, prompt included.
    tokens: Vec<u32>,
    /// Running: the sum of log-probabilities. Finished: that over the length penalty.
    score: f32,
    /// A real finished hypothesis (the list starts with placeholders).
    finished: bool,
}

/// One continuation of a running beam: transformers' `topk_running_beam_indices`, `topk_ids`,
/// `topk_log_probs` and `did_top_num_beams_just_finished`'s inputs, one row.
#[derive(Clone, Copy)]
struct Candidate {
    /// The running beam it continues.
    beam: usize,
    /// The token added.
    token: u32,
    /// The beam's score plus the token's processed log-probability.
    score: f32,
    /// It ends the sequence: an EOS token, or the length limit.
    hit: bool,
}

/// One input's beams.
struct Beams {
    running: Vec<Hypothesis>,
    finished: Vec<Hypothesis>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`: better hypotheses may still come.
    unsatisfied: bool,
}

/// The settings one search runs with.
struct Search<'a> {
    config: &'a GenerationConfig,
    processors: LogitsProcessorList<'a>,
    num_beams: usize,
    prompt_len: usize,
    max_length: usize,
    /// Continuations taken per step: `max(2, 1 + n_eos) * num_beams`.
    keep: usize,
    length_penalty: f64,
}

/// Beam search over every row of `prompt`, `budget` new tokens at most.
pub(super) fn beam_search<M: LanguageModel>(
    model: &M,
    prompt: Prompt,
    config: &GenerationConfig,
    budget: usize,
) -> Result<Vec<Vec<GeneratedSequence>>> {
    let nb = config.num_beams;
    let inputs = prompt.processor_ids.len();
    let prompt_len = prompt.processor_ids[0].len();
    let search = Search {
        config,
        processors: LogitsProcessorList::processors(config, prompt_len),
        num_beams: nb,
        prompt_len,
        max_length: prompt_len + budget,
        keep: 2usize.max(1 + config.eos_token_id.len()) * nb,
        length_penalty: config.length_penalty as f64,
    };
    let (mut state, logits) = model.prefill(prompt.embeds, &prompt.attention_mask, budget)?;
    let expand: Vec<usize> = (0..inputs)
        .flat_map(|r| std::iter::repeat_n(r, nb))
        .collect();
    model.reorder(&mut state, &expand);
    let first = rows_of(logits)?;
    let mut logits: Vec<Vec<f32>> = expand.iter().map(|&r| first[r].clone()).collect();
    let mut beams: Vec<Beams> = prompt
        .processor_ids
        .iter()
        .map(|row| search.start(row))
        .collect();
    let mut cur_len = prompt_len;
    loop {
        let mut all_hit = true;
        let mut reorder = Vec::with_capacity(inputs * nb);
        for (b, input) in beams.iter_mut().enumerate() {
            let rows = &mut logits[b * nb..(b + 1) * nb];
            let candidates = search.get_top_k_continuations(input, rows, cur_len);
            all_hit &= candidates.iter().all(|c| c.hit);
            let (running, sources) =
                search.get_running_beams_for_next_iteration(input, &candidates);
            input.finished = search.update_finished_beams(input, &candidates, cur_len);
            input.running = running;
            reorder.extend(sources.into_iter().map(|beam| b * nb + beam));
        }
        model.reorder(&mut state, &reorder);
        cur_len += 1;
        for input in &mut beams {
            input.unsatisfied &= search.check_early_stop_heuristic(input, cur_len);
        }
        if !search.beam_search_has_unfinished_sequences(&beams, all_hit) {
            break;
        }
        let feed: Vec<u32> = beams
            .iter()
            .flat_map(|input| &input.running)
            .map(|h| *h.tokens.last().expect("non-empty"))
            .collect();
        logits = rows_of(model.step(&mut state, &feed)?)?;
    }
    Ok(beams
        .into_iter()
        .map(|input| search.finish(input))
        .collect())
}

impl Search<'_> {
    /// An input's beams before the first step: one live beam (the others excluded, so the first
    /// step's continuations all come from it) and `num_beams` placeholder hypotheses.
    fn start(&self, row: &[u32]) -> Beams {
        let hypothesis = |score| Hypothesis {
            tokens: row.to_vec(),
            score,
            finished: false,
        };
        Beams {
            running: (0..self.num_beams)
                .map(|j| hypothesis(if j == 0 { 0.0 } else { EXCLUDED }))
                .collect(),
            finished: vec![hypothesis(EXCLUDED); self.num_beams],
            unsatisfied: true,
        }
    }

    /// `_get_top_k_continuations`: the log-probabilities of every continuation of every running
    /// beam (`logits`, one row per beam, turned into log-probabilities and processed in place),
    /// plus the beam's score; the best `keep` of them, best first.
    fn get_top_k_continuations(
        &self,
        beams: &Beams,
        logits: &mut [Vec<f32>],
        cur_len: usize,
    ) -> Vec<Candidate> {
        let vocab = logits[0].len();
        let mut scores = Vec::with_capacity(self.num_beams * vocab);
        for (row, beam) in logits.iter_mut().zip(&beams.running) {
            log_softmax(row);
            self.processors.process(&beam.tokens, row);
            scores.extend(row.iter().map(|s| s + beam.score));
        }
        top_k_indices(&scores, self.keep)
            .into_iter()
            .map(|i| {
                let token = (i % vocab) as u32;
                Candidate {
                    beam: i / vocab,
                    token,
                    score: scores[i],
                    hit: self.config.eos_token_id.contains(&token)
                        || cur_len + 1 >= self.max_length,
                }
            })
            .collect()
    }

    /// `_get_running_beams_for_next_iteration`: the best `num_beams` continuations that did not
    /// stop, and for each the running beam it continues.
    fn get_running_beams_for_next_iteration(
        &self,
        beams: &Beams,
        candidates: &[Candidate],
    ) -> (Vec<Hypothesis>, Vec<usize>) {
        let scores: Vec<f32> = candidates
            .iter()
            .map(|c| c.score + if c.hit { EXCLUDED } else { 0.0 })
            .collect();
        top_k_indices(&scores, self.num_beams)
            .into_iter()
            .map(|k| {
                let c = candidates[k];
                let hypothesis = Hypothesis {
                    tokens: continued(&beams.running[c.beam], c.token),
                    score: scores[k],
                    finished: false,
                };
                (hypothesis, c.beam)
            })
            .unzip()
    }

    /// `_update_finished_beams`: the best `num_beams` of the finished hypotheses so far and the
    /// top-`num_beams` continuations that just stopped (scored with the length penalty; the
    /// others, and all of them once the input is done, excluded).
    fn update_finished_beams(
        &self,
        beams: &Beams,
        candidates: &[Candidate],
        cur_len: usize,
    ) -> Vec<Hypothesis> {
        let full = beams.finished.iter().all(|h| h.finished)
            && self.config.early_stopping == EarlyStopping::Yes;
        let denom = ((cur_len + 1 - self.prompt_len) as f64).powf(self.length_penalty) as f32;
        let mut merged = beams.finished.clone();
        for (k, c) in candidates.iter().enumerate() {
            let just_finished = c.hit && k < self.num_beams;
            let mut score = c.score / denom;
            // One exclusion per reason, added in transformers' order.
            for excluded in [full, !beams.unsatisfied, !just_finished] {
                if excluded {
                    score += EXCLUDED;
                }
            }
            merged.push(Hypothesis {
                tokens: continued(&beams.running[c.beam], c.token),
                score,
                finished: just_finished,
            });
        }
        let scores: Vec<f32> = merged.iter().map(|h| h.score).collect();
        top_k_indices(&scores, self.num_beams)
            .into_iter()
            .map(|i| merged[i].clone())
            .collect()
    }

    /// `_check_early_stop_heuristic`: whether the best running beam, at the best length it could
    /// still reach, could beat a finished hypothesis (always, while placeholders remain).
    fn check_early_stop_heuristic(&self, beams: &Beams, cur_len: usize) -> bool {
        let lp = self.length_penalty;
        let best_len = if self.config.early_stopping == EarlyStopping::Never && lp > 0.0 {
            self.max_length - self.prompt_len
        } else {
            cur_len - self.prompt_len
        };
        let best_running = beams.running[0].score / ((best_len as f64).powf(lp) as f32);
        let min_finished = beams
            .finished
            .iter()
            .map(|h| h.score)
            .fold(f32::INFINITY, f32::min);
        beams
            .finished
            .iter()
            .any(|h| best_running > if h.finished { min_finished } else { EXCLUDED })
    }

    /// `_beam_search_has_unfinished_sequences`, over the whole batch: some input may still
    /// improve, early stopping has not closed every input, and not every continuation stopped.
    fn beam_search_has_unfinished_sequences(&self, beams: &[Beams], all_hit: bool) -> bool {
        let all_finished = beams.iter().flat_map(|b| &b.finished).all(|h| h.finished);
        let open = !(all_finished && self.config.early_stopping == EarlyStopping::Yes);
        beams.iter().any(|b| b.unsatisfied) && open && !all_hit
    }

    /// The best `num_return_sequences` finished hypotheses, as sequences of new tokens.
    fn finish(&self, beams: Beams) -> Vec<GeneratedSequence> {
        let eos = &self.config.eos_token_id;
        beams
            .finished
            .into_iter()
            .take(self.config.num_return_sequences)
            .map(|h| {
                let tokens = h.tokens[self.prompt_len..].to_vec();
                let stop_reason = if tokens.last().is_some_and(|t| eos.contains(t)) {
                    StopReason::Eos
                } else {
                    StopReason::Length
                };
                GeneratedSequence {
                    tokens,
                    stop_reason,
                    score: Some(h.score),
                }
            })
            .collect()
    }
}

/// `beam`'s tokens with `token` after them.
fn continued(beam: &Hypothesis, token: u32) -> Vec<u32> {
    let mut tokens = Vec::with_capacity(beam.tokens.len() + 1);
    tokens.extend_from_slice(&beam.tokens);
    tokens.push(token);
    tokens
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    if k < idx.len() {
        idx.select_nth_unstable_by(k, |&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        idx.truncate(k);
    }
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_stable() {
        assert_eq!(top_k_indices(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
        assert_eq!(top_k_indices(&[1.0, 2.0], 5), vec![1, 0]);
    }
}
