//! The logits processors and warpers, each one unit named after its transformers class
//! (`generation/logits_process.py`), and the lists transformers builds from a config
//! (`_get_logits_processor`), in its order: repetition penalty → no-repeat-n-gram → min length →
//! min new tokens; then, when sampling, temperature → top-k → top-p.
//!
//! Each works on one row: `row` is the row's ids so far (prompt included), `scores` its scores
//! over the vocabulary.

use std::collections::HashSet;

use super::sampling::softmax;
use super::GenerationConfig;

/// One of transformers' `LogitsProcessor`s, on one row.
pub(super) trait LogitsProcessor {
    /// Changes `scores` for a row whose ids so far are `row`.
    fn process(&self, row: &[u32], scores: &mut [f32]);
}

/// `RepetitionPenaltyLogitsProcessor`: every token already in the row has its score divided by
/// the penalty (multiplied, when negative), once however often it appears.
pub(super) struct RepetitionPenaltyLogitsProcessor {
    pub penalty: f32,
}

impl LogitsProcessor for RepetitionPenaltyLogitsProcessor {
    fn process(&self, row: &[u32], scores: &mut [f32]) {
        let p = self.penalty;
        let mut seen = HashSet::new();
        for &t in row {
            if seen.insert(t) {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = if *s < 0.0 { *s * p } else { *s / p };
                }
            }
        }
    }
}

/// `NoRepeatNGramLogitsProcessor`: bans every token that would complete an n-gram already in the
/// row.
pub(super) struct NoRepeatNGramLogitsProcessor {
    pub ngram_size: usize,
}

impl LogitsProcessor for NoRepeatNGramLogitsProcessor {
    fn process(&self, row: &[u32], scores: &mut [f32]) {
        let n = self.ngram_size;
        if row.len() + 1 < n {
            return;
        }
        let prefix = &row[row.len() + 1 - n..];
        for window in row.windows(n) {
            if &window[..n - 1] == prefix {
                if let Some(s) = scores.get_mut(window[n - 1] as usize) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// `MinLengthLogitsProcessor`: no end of sequence while the row is shorter than `min_length`.
pub(super) struct MinLengthLogitsProcessor<'a> {
    pub min_length: usize,
    pub eos_token_id: &'a [u32],
}

impl LogitsProcessor for MinLengthLogitsProcessor<'_> {
    fn process(&self, row: &[u32], scores: &mut [f32]) {
        if row.len() < self.min_length {
            ban(scores, self.eos_token_id);
        }
    }
}

/// `MinNewTokensLengthLogitsProcessor`: no end of sequence before `min_new_tokens` tokens after
/// the prompt's `prompt_length_to_skip`.
pub(super) struct MinNewTokensLengthLogitsProcessor<'a> {
    pub prompt_length_to_skip: usize,
    pub min_new_tokens: usize,
    pub eos_token_id: &'a [u32],
}

impl LogitsProcessor for MinNewTokensLengthLogitsProcessor<'_> {
    fn process(&self, row: &[u32], scores: &mut [f32]) {
        if row.len() - self.prompt_length_to_skip < self.min_new_tokens {
            ban(scores, self.eos_token_id);
        }
    }
}

fn ban(scores: &mut [f32], tokens: &[u32]) {
    for &t in tokens {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// `TemperatureLogitsWarper`: scores divided by the temperature.
pub(super) struct TemperatureLogitsWarper {
    pub temperature: f32,
}

impl LogitsProcessor for TemperatureLogitsWarper {
    fn process(&self, _row: &[u32], scores: &mut [f32]) {
        for s in scores.iter_mut() {
            *s /= self.temperature;
        }
    }
}

/// `TopKLogitsWarper`: only the `top_k` highest scores (and ties with the last) stay.
pub(super) struct TopKLogitsWarper {
    pub top_k: usize,
}

impl LogitsProcessor for TopKLogitsWarper {
    fn process(&self, _row: &[u32], scores: &mut [f32]) {
        let k = self.top_k;
        if k == 0 || k >= scores.len() {
            return;
        }
        let mut sorted: Vec<f32> = scores.to_vec();
        sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let threshold = sorted[k - 1];
        for s in scores.iter_mut() {
            if *s < threshold {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// `TopPLogitsWarper`: only the most likely tokens whose probability sums to `top_p` stay
/// (always at least one).
pub(super) struct TopPLogitsWarper {
    pub top_p: f32,
}

impl LogitsProcessor for TopPLogitsWarper {
    fn process(&self, _row: &[u32], scores: &mut [f32]) {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let probs = softmax(&order.iter().map(|&i| scores[i]).collect::<Vec<_>>());
        let mut cumulative = 0.0f32;
        let last = order.len() - 1;
        let mut remove = Vec::new();
        for (rank, &i) in order.iter().enumerate() {
            cumulative += probs[rank];
            if cumulative <= 1.0 - self.top_p && rank != last {
                remove.push(i);
            }
        }
        for i in remove {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// Processors applied in order; transformers' `LogitsProcessorList`.
pub(super) struct LogitsProcessorList<'a>(Vec<Box<dyn LogitsProcessor + 'a>>);

impl<'a> LogitsProcessorList<'a> {
    /// The processors `config` asks for, for rows whose prompt is `prompt_len` ids long
    /// (transformers' `_get_logits_processor`, without the warpers).
    pub fn processors(config: &'a GenerationConfig, prompt_len: usize) -> Self {
        let mut list: Vec<Box<dyn LogitsProcessor + 'a>> = Vec::new();
        if config.repetition_penalty != 1.0 {
            list.push(Box::new(RepetitionPenaltyLogitsProcessor {
                penalty: config.repetition_penalty,
            }));
        }
        if config.no_repeat_ngram_size > 0 {
            list.push(Box::new(NoRepeatNGramLogitsProcessor {
                ngram_size: config.no_repeat_ngram_size,
            }));
        }
        let eos_token_id = config.eos_token_id.as_slice();
        if let Some(min_length) = config.min_length {
            list.push(Box::new(MinLengthLogitsProcessor {
                min_length,
                eos_token_id,
            }));
        }
        if let Some(min_new_tokens) = config.min_new_tokens {
            list.push(Box::new(MinNewTokensLengthLogitsProcessor {
                prompt_length_to_skip: prompt_len,
                min_new_tokens,
                eos_token_id,
            }));
        }
        LogitsProcessorList(list)
    }

    /// The warpers sampling adds after the processors: temperature, top-k, top-p.
    pub fn warpers(config: &GenerationConfig) -> Self {
        let mut list: Vec<Box<dyn LogitsProcessor>> = Vec::new();
        if config.temperature != 1.0 {
            list.push(Box::new(TemperatureLogitsWarper {
                temperature: config.temperature,
            }));
        }
        if config.top_k > 0 {
            list.push(Box::new(TopKLogitsWarper {
                top_k: config.top_k,
            }));
        }
        if config.top_p < 1.0 {
            list.push(Box::new(TopPLogitsWarper {
                top_p: config.top_p,
            }));
        }
        LogitsProcessorList(list)
    }

    /// Every processor in turn on one row's scores.
    pub fn process(&self, row: &[u32], scores: &mut [f32]) {
        for p in &self.0 {
            p.process(row, scores);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        LogitsProcessorList::processors(&config, 3).process(&[0, 1, 2, 0], &mut scores);
        assert_eq!(scores[0], 0.5);
        assert_eq!(scores[1], f32::NEG_INFINITY);
        assert_eq!(scores[2], 1.0);
        assert_eq!(scores[3], 0.5);
        assert_eq!(scores[4], f32::NEG_INFINITY);
    }

    #[test]
    fn min_length_counts_the_whole_row() {
        let eos = [1];
        let p = MinLengthLogitsProcessor {
            min_length: 3,
            eos_token_id: &eos,
        };
        let mut scores = vec![0.0, 0.0];
        p.process(&[5, 5], &mut scores);
        assert_eq!(scores[1], f32::NEG_INFINITY);
        let mut scores = vec![0.0, 0.0];
        p.process(&[5, 5, 5], &mut scores);
        assert_eq!(scores[1], 0.0);
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
        LogitsProcessorList::warpers(&config).process(&[], &mut s);
        assert_eq!(s, vec![f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY, 2.0]);
        let config = GenerationConfig {
            do_sample: true,
            top_k: 0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut s = vec![0.0, 5.0, 1.0, 0.5];
        LogitsProcessorList::warpers(&config).process(&[], &mut s);
        assert_eq!(s.iter().filter(|v| v.is_finite()).count(), 1);
        assert_eq!(s[1], 5.0);
    }
}
