//! Generation with transformers' semantics: greedy search, beam search (transformers 5's
//! vectorised beam search, ported decision for decision) and sampling, with the logits processors
//! in transformers' order: repetition penalty → no-repeat-n-gram → min length → min new tokens,
//! then (sampling only) temperature → top-k → top-p.
//!
//! Token selection happens on the host over `[rows, vocab]` logits; the model runs one step per
//! token with its cache ([`LanguageModel`]).

use std::ops::ControlFlow;

use blip2_core::config::{EarlyStopping, GenerationConfigFile};
use blip2_core::error::{Error, Result};
use burn::tensor::Tensor;

use crate::LanguageModel;

/// New tokens generated when neither `max_new_tokens` nor `max_length` is set. (transformers'
/// own default, `max_length = 20` in all, is shorter than BLIP-2's image prefix.)
pub const DEFAULT_MAX_NEW_TOKENS: usize = 30;

/// A sampling seed that differs from call to call (std's randomly keyed hasher over the clock),
/// for sampling without a seed given: what the `blip2` command and server use.
pub fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Generation settings, with transformers' names and meanings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most new tokens (takes precedence over `max_length`).
    pub max_new_tokens: Option<usize>,
    /// Fewest new tokens before an end-of-sequence token may be chosen.
    pub min_new_tokens: Option<usize>,
    /// Longest total length, the prompt row included (image tokens too, for decoder-only models).
    pub max_length: Option<usize>,
    /// Shortest total length before an end-of-sequence token may be chosen.
    pub min_length: Option<usize>,
    /// Beam width; 1 is greedy search or sampling.
    pub num_beams: usize,
    /// Beam scores are divided by `generated_length ^ length_penalty`.
    pub length_penalty: f32,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// Sample from the distribution instead of choosing the most likely token.
    pub do_sample: bool,
    /// Sampling temperature (> 0).
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens (0 disables; transformers' default is 50).
    pub top_k: usize,
    /// Sample among the smallest set of tokens whose probability reaches `top_p`, in (0, 1].
    pub top_p: f32,
    /// Penalty (> 1 discourages) on every token already in the row.
    pub repetition_penalty: f32,
    /// Forbid repeating any n-gram of this size (0 disables).
    pub no_repeat_ngram_size: usize,
    /// Sequences returned per input.
    pub num_return_sequences: usize,
    /// Tokens that end a sequence.
    pub eos_token_id: Vec<u32>,
    /// Token fed to rows that already ended (defaults to the first EOS).
    pub pad_token_id: Option<u32>,
    /// Seed of the sampler; the same seed gives the same samples.
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: None,
            min_new_tokens: None,
            max_length: None,
            min_length: None,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            num_return_sequences: 1,
            eos_token_id: Vec::new(),
            pad_token_id: None,
            seed: 0,
        }
    }
}

impl GenerationConfig {
    /// transformers' defaults overridden by a checkpoint's `generation_config.json`, with the
    /// language model's `eos` and `pad` (its `text_config` in config.json) taking precedence over
    /// the file's: BLIP-2's and InstructBLIP's `generate` in transformers 5.24 hand over to the
    /// language model's own generation config, built from `text_config`, so a top-level
    /// generation_config.json that names other ids does not change where transformers stops.
    /// The file's ids apply only where the model config names none.
    pub fn from_file(file: &GenerationConfigFile, eos: Vec<u32>, pad: Option<u32>) -> Self {
        let d = GenerationConfig::default();
        GenerationConfig {
            max_new_tokens: file.max_new_tokens,
            min_new_tokens: file.min_new_tokens,
            max_length: file.max_length,
            min_length: file.min_length,
            num_beams: file.num_beams.unwrap_or(d.num_beams),
            length_penalty: file.length_penalty.map_or(d.length_penalty, |v| v as f32),
            early_stopping: file.early_stopping.unwrap_or(d.early_stopping),
            do_sample: file.do_sample.unwrap_or(d.do_sample),
            temperature: file.temperature.map_or(d.temperature, |v| v as f32),
            top_k: file.top_k.unwrap_or(d.top_k),
            top_p: file.top_p.map_or(d.top_p, |v| v as f32),
            repetition_penalty: file
                .repetition_penalty
                .map_or(d.repetition_penalty, |v| v as f32),
            no_repeat_ngram_size: file.no_repeat_ngram_size.unwrap_or(0),
            num_return_sequences: file.num_return_sequences.unwrap_or(1),
            eos_token_id: if eos.is_empty() {
                file.eos_token_id.as_ref().map_or(eos, |e| e.to_vec())
            } else {
                eos
            },
            pad_token_id: pad.or(file.pad_token_id),
            seed: 0,
        }
    }

    /// Checks that the options are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidInput(msg));
        if self.num_beams == 0 {
            return bad("num_beams must be at least 1".into());
        }
        if self.num_return_sequences == 0 {
            return bad("num_return_sequences must be at least 1".into());
        }
        if !self.do_sample && self.num_return_sequences > self.num_beams {
            return bad(format!(
                "num_return_sequences ({}) cannot exceed num_beams ({}) without sampling",
                self.num_return_sequences, self.num_beams
            ));
        }
        if self.do_sample && self.num_beams > 1 {
            return bad("beam sampling (do_sample with num_beams > 1) is not supported".into());
        }
        if self.do_sample && !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be > 0 when sampling, found {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], found {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be > 0, found {}",
                self.repetition_penalty
            ));
        }
        if !self.length_penalty.is_finite() {
            return bad("length_penalty must be finite".into());
        }
        if let (Some(min), Some(max)) = (self.min_new_tokens, self.max_new_tokens) {
            if min > max {
                return bad(format!("min_new_tokens ({min}) > max_new_tokens ({max})"));
            }
        }
        if let (Some(min), Some(max)) = (self.min_length, self.max_length) {
            if min > max {
                return bad(format!("min_length ({min}) > max_length ({max})"));
            }
        }
        if self.max_new_tokens == Some(0) {
            return bad("max_new_tokens must be at least 1".into());
        }
        Ok(())
    }

    /// New tokens to generate after a prompt of `prompt_len`.
    fn new_token_budget(&self, prompt_len: usize) -> Result<usize> {
        match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => Ok(n),
            (None, Some(max)) if max > prompt_len => Ok(max - prompt_len),
            (None, Some(max)) => Err(Error::InvalidInput(format!(
                "max_length ({max}) leaves no room after the prompt ({prompt_len} tokens); set max_new_tokens"
            ))),
            (None, None) => Ok(DEFAULT_MAX_NEW_TOKENS),
        }
    }
}

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
        beam_search(model, prompt, config, budget)
    } else {
        sample_or_greedy(model, prompt, config, budget, on_step)
    }
}

// ------------------------------------------------------------------------------------------------
// logits processors
// ------------------------------------------------------------------------------------------------

/// Applies repetition penalty, no-repeat-n-gram, min length and min new tokens to `scores` for a
/// row whose tokens so far are `row` (`prompt_len` of them the prompt), in transformers' order.
fn process(scores: &mut [f32], row: &[u32], prompt_len: usize, config: &GenerationConfig) {
    if config.repetition_penalty != 1.0 {
        let p = config.repetition_penalty;
        let mut seen = std::collections::HashSet::new();
        for &t in row {
            if seen.insert(t) {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = if *s < 0.0 { *s * p } else { *s / p };
                }
            }
        }
    }
    let n = config.no_repeat_ngram_size;
    if n > 0 && row.len() + 1 >= n {
        let prefix = &row[row.len() + 1 - n..];
        for window in row.windows(n) {
            if &window[..n - 1] == prefix {
                if let Some(s) = scores.get_mut(window[n - 1] as usize) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }
    let ban_eos = config.min_length.is_some_and(|m| row.len() < m)
        || config
            .min_new_tokens
            .is_some_and(|m| row.len() - prompt_len < m);
    if ban_eos {
        for &e in &config.eos_token_id {
            if let Some(s) = scores.get_mut(e as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// Temperature, top-k and top-p, as transformers' warpers (keeping at least one token).
fn warp(scores: &mut [f32], config: &GenerationConfig) {
    if config.temperature != 1.0 {
        for s in scores.iter_mut() {
            *s /= config.temperature;
        }
    }
    if config.top_k > 0 && config.top_k < scores.len() {
        let mut sorted: Vec<f32> = scores.to_vec();
        let k = config.top_k;
        sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let threshold = sorted[k - 1];
        for s in scores.iter_mut() {
            if *s < threshold {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    if config.top_p < 1.0 {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let probs = softmax(&order.iter().map(|&i| scores[i]).collect::<Vec<_>>());
        let mut cumulative = 0.0f32;
        let last = order.len() - 1;
        let mut remove = Vec::new();
        for (rank, &i) in order.iter().enumerate() {
            cumulative += probs[rank];
            if cumulative <= 1.0 - config.top_p && rank != last {
                remove.push(i);
            }
        }
        for i in remove {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn log_softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    for v in x.iter_mut() {
        *v = *v - max - log_sum;
    }
}

fn argmax(x: &[f32]) -> usize {
    // First maximum, as torch.argmax.
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
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

/// A small, seedable generator (SplitMix64) for sampling.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    fn sample(&mut self, probs: &[f32]) -> usize {
        let u = self.next_f32() * probs.iter().sum::<f32>();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc && *p > 0.0 {
                return i;
            }
        }
        probs.iter().rposition(|p| *p > 0.0).unwrap_or(0)
    }
}

// ------------------------------------------------------------------------------------------------
// greedy search and sampling
// ------------------------------------------------------------------------------------------------

fn sample_or_greedy<M: LanguageModel>(
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
    for step in 0..budget {
        let mut chosen = Vec::with_capacity(rows.len());
        for (r, scores) in logits.iter_mut().enumerate() {
            if done[r].is_some() {
                chosen.push(None);
                continue;
            }
            process(scores, &rows[r], prompt_len, config);
            let token = if config.do_sample {
                warp(scores, config);
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

// ------------------------------------------------------------------------------------------------
// beam search
// ------------------------------------------------------------------------------------------------

/// Added to scores that must not win, as transformers does (-1e9, not -inf, so sums stay finite).
const EXCLUDED: f32 = -1.0e9;

#[derive(Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    score: f32,
    finished: bool,
}

/// transformers 5's `_beam_search`, per input: keep `num_beams` running beams; at each step take
/// the top `max(2, 1 + n_eos) * num_beams` continuations; those among the top `num_beams` that hit
/// a stopping criterion (EOS, or the length limit) become finished hypotheses with score
/// `sum_logprobs / generated_len ^ length_penalty`; the best `num_beams` others keep running.
fn beam_search<M: LanguageModel>(
    model: &M,
    prompt: Prompt,
    config: &GenerationConfig,
    budget: usize,
) -> Result<Vec<Vec<GeneratedSequence>>> {
    let nb = config.num_beams;
    let inputs = prompt.processor_ids.len();
    let prompt_len = prompt.processor_ids[0].len();
    let max_length = prompt_len + budget;
    let keep = (2usize).max(1 + config.eos_token_id.len()) * nb;
    let lp = config.length_penalty as f64;

    let (mut state, logits) = model.prefill(prompt.embeds, &prompt.attention_mask, budget)?;
    let expand: Vec<usize> = (0..inputs)
        .flat_map(|r| std::iter::repeat_n(r, nb))
        .collect();
    model.reorder(&mut state, &expand);
    let first = rows_of(logits)?;
    let mut logits: Vec<Vec<f32>> = expand.iter().map(|&r| first[r].clone()).collect();

    let mut running: Vec<Vec<Hypothesis>> = (0..inputs)
        .map(|r| {
            (0..nb)
                .map(|j| Hypothesis {
                    tokens: prompt.processor_ids[r].clone(),
                    score: if j == 0 { 0.0 } else { EXCLUDED },
                    finished: false,
                })
                .collect()
        })
        .collect();
    let mut finished: Vec<Vec<Hypothesis>> = (0..inputs)
        .map(|r| {
            vec![
                Hypothesis {
                    tokens: prompt.processor_ids[r].clone(),
                    score: EXCLUDED,
                    finished: false
                };
                nb
            ]
        })
        .collect();
    let mut unsatisfied = vec![true; inputs];
    let mut cur_len = prompt_len;

    loop {
        let mut all_hit = true;
        let mut reorder = Vec::with_capacity(inputs * nb);
        for b in 0..inputs {
            // Log-probabilities of every continuation of every beam, processed per beam.
            let vocab = logits[b * nb].len();
            let mut candidates = Vec::with_capacity(nb * vocab);
            for j in 0..nb {
                let scores = &mut logits[b * nb + j];
                log_softmax(scores);
                process(scores, &running[b][j].tokens, prompt_len, config);
                let base = running[b][j].score;
                candidates.extend(scores.iter().map(|s| s + base));
            }
            let top = top_k_indices(&candidates, keep);
            let cands: Vec<(usize, u32, f32, bool)> = top
                .iter()
                .map(|&i| {
                    let (beam, token) = (i / vocab, (i % vocab) as u32);
                    let hit = config.eos_token_id.contains(&token) || cur_len + 1 >= max_length;
                    (beam, token, candidates[i], hit)
                })
                .collect();
            all_hit &= cands.iter().all(|c| c.3);

            // The next running beams: the best continuations that did not stop.
            let running_scores: Vec<f32> = cands
                .iter()
                .map(|c| c.2 + if c.3 { EXCLUDED } else { 0.0 })
                .collect();
            let next = top_k_indices(&running_scores, nb);
            let new_running: Vec<Hypothesis> = next
                .iter()
                .map(|&k| {
                    let (beam, token, _, _) = cands[k];
                    let mut tokens = running[b][beam].tokens.clone();
                    tokens.push(token);
                    Hypothesis {
                        tokens,
                        score: running_scores[k],
                        finished: false,
                    }
                })
                .collect();
            reorder.extend(next.iter().map(|&k| b * nb + cands[k].0));

            // Finished hypotheses: merge the top-num_beams continuations that stopped.
            let full = finished[b].iter().all(|h| h.finished)
                && config.early_stopping == EarlyStopping::Yes;
            let denom = ((cur_len + 1 - prompt_len) as f64).powf(lp) as f32;
            let mut merged = finished[b].clone();
            for (k, &(beam, token, score, hit)) in cands.iter().enumerate() {
                let just_finished = hit && k < nb;
                let mut s = score / denom;
                if full {
                    s += EXCLUDED;
                }
                if !unsatisfied[b] {
                    s += EXCLUDED;
                }
                if !just_finished {
                    s += EXCLUDED;
                }
                let mut tokens = running[b][beam].tokens.clone();
                tokens.push(token);
                merged.push(Hypothesis {
                    tokens,
                    score: s,
                    finished: just_finished,
                });
            }
            let merged_scores: Vec<f32> = merged.iter().map(|h| h.score).collect();
            finished[b] = top_k_indices(&merged_scores, nb)
                .into_iter()
                .map(|i| merged[i].clone())
                .collect();
            running[b] = new_running;
        }
        model.reorder(&mut state, &reorder);
        cur_len += 1;

        // transformers' early-stop heuristic, then its loop condition (over the whole batch).
        for b in 0..inputs {
            let best_len = if config.early_stopping == EarlyStopping::Never && lp > 0.0 {
                max_length - prompt_len
            } else {
                cur_len - prompt_len
            };
            let best_running = running[b][0].score / ((best_len as f64).powf(lp) as f32);
            let min_finished = finished[b]
                .iter()
                .map(|h| h.score)
                .fold(f32::INFINITY, f32::min);
            let improvable = finished[b]
                .iter()
                .any(|h| best_running > if h.finished { min_finished } else { EXCLUDED });
            unsatisfied[b] &= improvable;
        }
        let all_finished = finished.iter().flatten().all(|h| h.finished);
        let open = !(all_finished && config.early_stopping == EarlyStopping::Yes);
        if !(unsatisfied.iter().any(|&u| u) && open && !all_hit) {
            break;
        }
        let feed: Vec<u32> = running
            .iter()
            .flatten()
            .map(|h| *h.tokens.last().expect("non-empty"))
            .collect();
        logits = rows_of(model.step(&mut state, &feed)?)?;
    }

    Ok(finished
        .into_iter()
        .map(|hyps| {
            hyps.into_iter()
                .take(config.num_return_sequences)
                .map(|h| {
                    let tokens = h.tokens[prompt_len..].to_vec();
                    let eos = tokens
                        .last()
                        .is_some_and(|t| config.eos_token_id.contains(t));
                    GeneratedSequence {
                        tokens,
                        stop_reason: if eos {
                            StopReason::Eos
                        } else {
                            StopReason::Length
                        },
                        score: Some(h.score),
                    }
                })
                .collect()
        })
        .collect())
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

    #[test]
    fn processors_follow_transformers() {
        let config = GenerationConfig {
            repetition_penalty: 2.0,
            no_repeat_ngram_size: 2,
            min_new_tokens: Some(2),
            eos_token_id: vec![4],
            ..Default::default()
        };
        let mut scores = vec![1.0, -1.0, 2.0, 0.5, 3.0];
        // Row [0, 1, 2, 0]: 0 and 1 and 2 are penalised; the bigram (0, 1) was seen, so after a
        // final 0 token 1 is banned; one new token so far, so EOS (4) is banned.
        process(&mut scores, &[0, 1, 2, 0], 3, &config);
        assert_eq!(scores[0], 0.5);
        assert_eq!(scores[1], f32::NEG_INFINITY);
        assert_eq!(scores[2], 1.0);
        assert_eq!(scores[3], 0.5);
        assert_eq!(scores[4], f32::NEG_INFINITY);
    }

    #[test]
    fn top_k_and_top_p_keep_the_likeliest() {
        let config = GenerationConfig {
            do_sample: true,
            top_k: 2,
            top_p: 1.0,
            ..Default::default()
        };
        let mut s = vec![0.0, 3.0, 1.0, 2.0];
        warp(&mut s, &config);
        assert_eq!(s, vec![f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY, 2.0]);
        let config = GenerationConfig {
            do_sample: true,
            top_k: 0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut s = vec![0.0, 5.0, 1.0, 0.5];
        warp(&mut s, &config);
        assert_eq!(s.iter().filter(|v| v.is_finite()).count(), 1);
        assert_eq!(s[1], 5.0);
    }

    #[test]
    fn contradictory_options_are_errors() {
        let bad = [
            GenerationConfig {
                num_beams: 0,
                ..Default::default()
            },
            GenerationConfig {
                num_return_sequences: 2,
                ..Default::default()
            },
            GenerationConfig {
                top_p: 0.0,
                ..Default::default()
            },
            GenerationConfig {
                top_p: 1.5,
                ..Default::default()
            },
            GenerationConfig {
                do_sample: true,
                temperature: 0.0,
                ..Default::default()
            },
            GenerationConfig {
                min_new_tokens: Some(5),
                max_new_tokens: Some(2),
                ..Default::default()
            },
            GenerationConfig {
                do_sample: true,
                num_beams: 2,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(Error::InvalidInput(_))), "{c:?}");
        }
        assert!(GenerationConfig::default().validate().is_ok());
    }
}
