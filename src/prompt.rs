//! From prompt token ids to the language model's input rows, as transformers' `Blip2Processor`
//! (or `InstructBlipProcessor`) and `generate` lay them out, and the special tokens that layout
//! uses, resolved in one place from the files that name them.
//!
//! Nothing here needs a loaded model: [`Blip2::prompt`](crate::Blip2::prompt) tokenizes, calls
//! [`InputLayout::row`] for each prompt and [`InputLayout::batch`] for the batch, then embeds.

use blip2_core::config::{GenerationConfigFile, TextConfig};
use blip2_lm::GenerationConfig;

/// The special token ids of one checkpoint, resolved as transformers resolves them.
///
/// Sources, first found wins:
/// - `bos`: `generation_config.json`'s `bos_token_id`, then `text_config.bos_token_id` (T5 has
///   none).
/// - `eos`: the first of `text_config.eos_token_id`, then of `generation_config.json`'s
///   (transformers' BLIP-2 `generate` runs the language model's own generation config, built from
///   `text_config`; see docs/checkpoints.md).
/// - `pad`: `text_config.pad_token_id`, then `generation_config.json`'s, then `eos`, then 0.
/// - `text_pad`: the tokenizer's `pad_token` (`tokenizer_config.json`), then `pad`.
/// - `decoder_start`: `text_config.decoder_start_token_id`, then its `pad_token_id`, then 0 (T5
///   only). `generation_config.json`'s `decoder_start_token_id` is not read: transformers 5.24
///   does not read it either (the language model's generation config does not see the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Put first in every decoder-only prompt row (OPT's `</s>`, LLaMA's `<s>`).
    pub bos: Option<u32>,
    /// Put last in every encoder-decoder prompt row (T5's `</s>`); the first id generation stops
    /// on.
    pub eos: Option<u32>,
    /// The language model's padding id: fills finished rows, and stands for the image positions
    /// of a checkpoint without an image token.
    pub pad: u32,
    /// The id the processor pads prompt rows with.
    pub text_pad: u32,
    /// The id of the image placeholders in the input rows (`config.json`'s `image_token_index`;
    /// `None` for checkpoints saved before transformers had it).
    pub image: Option<u32>,
    /// The first decoder id of an encoder-decoder model; `None` for decoder-only ones.
    pub decoder_start: Option<u32>,
}

impl SpecialTokens {
    /// Resolves the special tokens from the language model's config, `generation_config.json`,
    /// the generation settings built from both ([`GenerationConfig::from_file`] with
    /// `text_config`'s eos and pad), the id of the tokenizer's `pad_token` and `config.json`'s
    /// `image_token_index`.
    pub fn resolve(
        text: &TextConfig,
        file: &GenerationConfigFile,
        generation: &GenerationConfig,
        tokenizer_pad: Option<u32>,
        image: Option<u32>,
    ) -> Self {
        let eos = generation.eos_token_id.first().copied();
        let pad = generation.pad_token_id.or(eos).unwrap_or(0);
        SpecialTokens {
            bos: file.bos_token_id.or(text.bos_token_id()),
            eos,
            pad,
            text_pad: tokenizer_pad.unwrap_or(pad),
            image,
            decoder_start: text.decoder_start(),
        }
    }
}

/// The language model's input ids for a batch of prompts, before embedding
/// ([`InputLayout::batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRows {
    /// The padded prompt rows (what is embedded by the language model's token embeddings).
    pub text_ids: Vec<Vec<u32>>,
    /// The whole input rows: image placeholders, then the padded prompt rows.
    pub input_ids: Vec<Vec<u32>>,
    /// `attention_mask[row][pos]` over the whole input rows: false at padding.
    pub attention_mask: Vec<Vec<bool>>,
    /// What the logits processors see as the sequence so far (see [`InputLayout`]).
    pub processor_ids: Vec<Vec<u32>>,
}

/// How prompts are laid out for one checkpoint's language model.
///
/// - Decoder-only (OPT, LLaMA): each prompt's ids with BOS first (a caption is BOS alone), rows
///   left-padded; the logits processors see the whole input row, image placeholders included (for
///   a checkpoint without an image token, only the text: transformers then gets no image ids).
/// - Encoder-decoder (T5): each prompt's ids with EOS last (a caption is EOS alone), rows
///   right-padded; this is the encoder's input, and the processors see the decoder's ids, which
///   start with `decoder_start`.
///
/// Either way `queries` image placeholders go before every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLayout {
    tokens: SpecialTokens,
}

impl InputLayout {
    /// The layout for these tokens: encoder-decoder when they have a decoder start.
    pub fn new(tokens: SpecialTokens) -> Self {
        InputLayout { tokens }
    }

    /// The special tokens it uses.
    pub fn tokens(&self) -> &SpecialTokens {
        &self.tokens
    }

    /// Whether this is a decoder-only layout (BOS first, left padding).
    pub fn is_decoder_only(&self) -> bool {
        self.tokens.decoder_start.is_none()
    }

    /// One prompt's row, unpadded, from its tokenizer ids (no special tokens added): BOS first
    /// for a decoder-only model, EOS last for an encoder-decoder one.
    pub fn row(&self, ids: &[u32]) -> Vec<u32> {
        let mut row = Vec::with_capacity(ids.len() + 1);
        if self.is_decoder_only() {
            row.extend(self.tokens.bos);
            row.extend_from_slice(ids);
        } else {
            row.extend_from_slice(ids);
            row.extend(self.tokens.eos);
        }
        row
    }

    /// The batch of `rows` (from [`InputLayout::row`]) padded to the longest, each after `queries`
    /// image placeholders.
    pub fn batch(&self, rows: Vec<Vec<u32>>, queries: usize) -> InputRows {
        let t = &self.tokens;
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let image_ids = vec![t.image.unwrap_or(t.pad); queries];
        let n = rows.len();
        let mut out = InputRows {
            text_ids: Vec::with_capacity(n),
            input_ids: Vec::with_capacity(n),
            attention_mask: Vec::with_capacity(n),
            processor_ids: Vec::with_capacity(n),
        };
        for row in rows {
            let (real, pad) = (row.len(), width - row.len());
            let pads = std::iter::repeat_n(t.text_pad, pad);
            let mut mask = vec![true; queries];
            let padded: Vec<u32> = if self.is_decoder_only() {
                mask.extend((0..width).map(|i| i >= pad));
                pads.chain(row).collect()
            } else {
                mask.extend((0..width).map(|i| i < real));
                row.into_iter().chain(pads).collect()
            };
            let seen = match t.decoder_start {
                Some(start) => vec![start],
                None if t.image.is_some() => image_ids.iter().chain(&padded).copied().collect(),
                None => padded.clone(),
            };
            out.processor_ids.push(seen);
            out.attention_mask.push(mask);
            out.input_ids
                .push(image_ids.iter().chain(&padded).copied().collect());
            out.text_ids.push(padded);
        }
        out
    }
}

/// Right-pads `rows` with `pad` to the longest; returns the rows and `padding[row][pos]` (true at
/// padding). The Q-Former's text inputs (InstructBLIP's instructions, retrieval texts) are laid
/// out this way.
pub(crate) fn pad_right(rows: Vec<Vec<u32>>, pad: u32) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let padding = rows
        .iter()
        .map(|r| (0..width).map(|i| i >= r.len()).collect())
        .collect();
    let ids = rows
        .into_iter()
        .map(|mut r| {
            r.resize(width, pad);
            r
        })
        .collect();
    (ids, padding)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OPT's ids: BOS and EOS `</s>` = 2, pad 1, image token 50265.
    fn opt() -> SpecialTokens {
        SpecialTokens {
            bos: Some(2),
            eos: Some(2),
            pad: 1,
            text_pad: 1,
            image: Some(50265),
            decoder_start: None,
        }
    }

    /// Flan-T5's ids: EOS 1, pad and decoder start 0, image token 32100.
    fn t5() -> SpecialTokens {
        SpecialTokens {
            bos: None,
            eos: Some(1),
            pad: 0,
            text_pad: 0,
            image: Some(32100),
            decoder_start: Some(0),
        }
    }

    #[test]
    fn decoder_only_rows_start_with_bos_and_are_left_padded() {
        let layout = InputLayout::new(opt());
        assert!(layout.is_decoder_only());
        let rows = vec![layout.row(&[10, 11, 12]), layout.row(&[])];
        assert_eq!(rows, [vec![2, 10, 11, 12], vec![2]]);
        let b = layout.batch(rows, 2);
        assert_eq!(b.text_ids, [vec![2, 10, 11, 12], vec![1, 1, 1, 2]]);
        assert_eq!(
            b.input_ids,
            [
                vec![50265, 50265, 2, 10, 11, 12],
                vec![50265, 50265, 1, 1, 1, 2]
            ]
        );
        assert_eq!(
            b.attention_mask,
            [vec![true; 6], vec![true, true, false, false, false, true]]
        );
        // The processors see the whole input row.
        assert_eq!(b.processor_ids, b.input_ids);
    }

    #[test]
    fn encoder_decoder_rows_end_with_eos_and_are_right_padded() {
        let layout = InputLayout::new(t5());
        assert!(!layout.is_decoder_only());
        let rows = vec![layout.row(&[]), layout.row(&[7, 8])];
        assert_eq!(rows, [vec![1], vec![7, 8, 1]]);
        let b = layout.batch(rows, 1);
        assert_eq!(b.text_ids, [vec![1, 0, 0], vec![7, 8, 1]]);
        assert_eq!(b.input_ids, [vec![32100, 1, 0, 0], vec![32100, 7, 8, 1]]);
        assert_eq!(
            b.attention_mask,
            [vec![true, true, false, false], vec![true; 4]]
        );
        // The processors see the decoder's ids: the decoder start alone.
        assert_eq!(b.processor_ids, [vec![0], vec![0]]);
    }

    #[test]
    fn without_an_image_token_the_queries_take_pad_and_the_processors_see_only_text() {
        let tokens = SpecialTokens {
            image: None,
            ..opt()
        };
        let layout = InputLayout::new(tokens);
        let b = layout.batch(vec![layout.row(&[5])], 3);
        assert_eq!(b.input_ids, [vec![1, 1, 1, 2, 5]]);
        assert_eq!(b.processor_ids, [vec![2, 5]]);
    }

    #[test]
    fn prompt_rows_pad_with_the_tokenizers_pad_not_the_models() {
        // Vicuna: the tokenizer's <pad> (32000) is not the config's pad (0).
        let tokens = SpecialTokens {
            bos: Some(1),
            eos: Some(2),
            pad: 0,
            text_pad: 32000,
            image: Some(32001),
            decoder_start: None,
        };
        let layout = InputLayout::new(tokens);
        let b = layout.batch(vec![layout.row(&[9, 9]), layout.row(&[9])], 1);
        assert_eq!(b.text_ids[1], [32000, 1, 9]);
        assert_eq!(b.input_ids[1][0], 32001);
    }

    #[test]
    fn no_bos_and_no_eos_add_nothing() {
        let layout = InputLayout::new(SpecialTokens { bos: None, ..opt() });
        assert_eq!(layout.row(&[4, 5]), [4, 5]);
        let layout = InputLayout::new(SpecialTokens { eos: None, ..t5() });
        assert_eq!(layout.row(&[4, 5]), [4, 5]);
    }

    #[test]
    fn special_tokens_come_from_text_config_then_generation_config() {
        use blip2_core::config::{OptConfig, T5Config, TokenIds};
        let opt = OptConfig {
            bos_token_id: Some(2),
            eos_token_id: Some(TokenIds::One(50118)),
            pad_token_id: Some(1),
            ..OptConfig::default()
        };
        let text = TextConfig::Opt(opt.clone());
        let mut file = GenerationConfigFile {
            pad_token_id: Some(7),
            ..Default::default()
        };
        let generation = GenerationConfig::from_file(&file, opt.eos_token_ids(), opt.pad_token_id);
        let t = SpecialTokens::resolve(&text, &file, &generation, None, Some(50265));
        assert_eq!(
            (t.bos, t.eos, t.pad, t.text_pad),
            (Some(2), Some(50118), 1, 1)
        );
        assert_eq!((t.image, t.decoder_start), (Some(50265), None));
        // generation_config.json's bos wins; the tokenizer's pad pads prompt rows.
        file.bos_token_id = Some(9);
        let t = SpecialTokens::resolve(&text, &file, &generation, Some(3), None);
        assert_eq!((t.bos, t.pad, t.text_pad), (Some(9), 1, 3));

        // T5: no BOS; the decoder start is the config's, never generation_config.json's.
        let t5 = T5Config {
            decoder_start_token_id: Some(4),
            ..T5Config::default()
        };
        file.decoder_start_token_id = Some(5);
        let generation = GenerationConfig::from_file(&file, t5.eos_token_ids(), t5.pad_token_id);
        let t = SpecialTokens::resolve(&TextConfig::T5(t5.clone()), &file, &generation, None, None);
        assert_eq!(t.bos, Some(9));
        assert_eq!(t.decoder_start, Some(4));
        assert_eq!(t.eos, t5.eos_token_ids().first().copied());
    }

    #[test]
    fn pad_right_pads_to_the_longest_and_marks_the_padding() {
        let (ids, padding) = pad_right(vec![vec![101, 7, 102], vec![101, 102]], 0);
        assert_eq!(ids, [vec![101, 7, 102], vec![101, 102, 0]]);
        assert_eq!(padding, [vec![false; 3], vec![false, false, true]]);
        assert_eq!(pad_right(Vec::new(), 0), (Vec::new(), Vec::new()));
    }
}
