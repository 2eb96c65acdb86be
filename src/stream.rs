//! Turning generated tokens into text pieces as they arrive, for [`crate::Blip2::generate_stream`].
//!
//! Decoding each token on its own is wrong: byte-level BPE (OPT) splits multi-byte UTF-8
//! characters across tokens, and SentencePiece (T5) drops the space of the first token of
//! whatever it decodes. So, as text-generation servers do, this keeps two offsets into the token
//! list: text is decoded from `prefix_offset` (a token of context before the new ones, which fixes
//! the spacing) and compared with the decode of `prefix_offset..read_offset` (what was already
//! emitted); the difference is emitted only once it no longer ends in an incomplete character
//! (U+FFFD). The pieces, concatenated, are the final text: leading whitespace is dropped and
//! trailing whitespace held back, because [`crate::Generation::text`] is trimmed.

/// Incremental detokenizer: [`TextStream::push`] each new token, [`TextStream::finish`] at the end.
#[derive(Debug, Default, Clone)]
pub(crate) struct TextStream {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// Whether any text has been emitted (until then, leading whitespace is dropped).
    started: bool,
    /// Trailing whitespace of the text so far, emitted only if more text follows.
    held: String,
}

impl TextStream {
    /// Adds `token`; returns the text it completes, if any. `decode` turns a token slice into
    /// text (special tokens skipped), as the final text is decoded.
    pub(crate) fn push(&mut self, token: u32, decode: impl Fn(&[u32]) -> String) -> Option<String> {
        self.tokens.push(token);
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset]);
        let text = decode(&self.tokens[self.prefix_offset..]);
        if text.len() <= prefix.len() || text.ends_with('\u{FFFD}') {
            return None;
        }
        // Decoding more tokens from the same offset extends the earlier text; if a tokenizer ever
        // breaks that, wait for the end (`finish`) rather than emit something wrong.
        let piece = text.strip_prefix(prefix.as_str())?.to_owned();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
        self.emit(piece)
    }

    /// The text not emitted yet once generation is over (an incomplete character at the end is
    /// decoded as the final text decodes it).
    pub(crate) fn finish(&mut self, decode: impl Fn(&[u32]) -> String) -> Option<String> {
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset]);
        let text = decode(&self.tokens[self.prefix_offset..]);
        self.read_offset = self.tokens.len();
        let piece = text.strip_prefix(prefix.as_str())?.to_owned();
        // Whitespace still held after this is trailing: the final text drops it too.
        self.emit(piece)
    }

    /// Applies the trimming rules to a decoded piece: what of it can be shown now.
    fn emit(&mut self, piece: String) -> Option<String> {
        let piece = if self.started {
            piece
        } else {
            piece.trim_start().to_owned()
        };
        let body = piece.trim_end();
        if body.is_empty() {
            if self.started {
                self.held.push_str(&piece);
            }
            return None;
        }
        let out = std::mem::take(&mut self.held) + body;
        self.held = piece[body.len()..].to_owned();
        self.started = true;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::TextStream;

    /// A byte-level decoder over a made-up vocabulary: token `i` stands for `vocab[i]`'s bytes,
    /// and invalid UTF-8 decodes to U+FFFD, as tokenizers' ByteLevel decoder does.
    fn byte_level<'a>(vocab: &'a [&'a [u8]]) -> impl Fn(&[u32]) -> String + 'a {
        move |ids| {
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&i| vocab[i as usize].iter().copied())
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    fn stream(ids: &[u32], decode: &dyn Fn(&[u32]) -> String) -> Vec<String> {
        let mut s = TextStream::default();
        let mut pieces: Vec<String> = ids.iter().filter_map(|&t| s.push(t, decode)).collect();
        pieces.extend(s.finish(decode));
        pieces
    }

    #[test]
    fn a_four_byte_character_split_over_three_tokens_comes_out_whole() {
        // U+1F600 is F0 9F 98 80: split as [F0], [9F 98], [80].
        let vocab: &[&[u8]] = &[b" a", b" smile", b" \xF0", b"\x9F\x98", b"\x80", b" done"];
        let decode = byte_level(vocab);
        let ids = [0, 1, 2, 3, 4, 5];
        let pieces = stream(&ids, &decode);
        assert_eq!(pieces, ["a", " smile", " \u{1F600}", " done"]);
        assert_eq!(pieces.concat(), decode(&ids).trim());
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
    }

    #[test]
    fn pieces_concatenate_to_the_trimmed_text() {
        let vocab: &[&[u8]] = &[
            b"  ",
            b"\xE2\x80",
            b"\x99s",
            b" ok",
            b" ",
            b"\n",
            b"\xC3",
            b"\xA9",
        ];
        let decode = byte_level(vocab);
        for ids in [
            vec![0, 1, 2, 3, 4, 5],
            vec![4, 5, 3, 0, 3, 4],
            vec![6, 7, 6, 7, 4],
            vec![3, 1],          // ends inside a character: decoded as the final text is
            vec![0, 4, 5],       // whitespace only
            vec![1, 2, 0, 6, 3], // an incomplete character followed by more text
        ] {
            let pieces = stream(&ids, &decode);
            assert_eq!(pieces.concat(), decode(&ids).trim(), "{ids:?}: {pieces:?}");
            assert!(pieces.iter().all(|p| !p.is_empty()), "{ids:?}: {pieces:?}");
        }
    }

    #[test]
    fn a_decoder_that_drops_the_first_space_keeps_the_spaces_between_words() {
        // Like SentencePiece's Metaspace decoder: the first token of a decode loses its space.
        let words = ["▁a", "▁cat", "▁on", "▁a", "▁mat"];
        let decode = |ids: &[u32]| {
            let text: String = ids.iter().map(|&i| words[i as usize]).collect();
            text.replace('▁', " ").trim_start().to_owned()
        };
        let ids = [0, 1, 2, 3, 4];
        assert_eq!(stream(&ids, &decode), ["a", " cat", " on", " a", " mat"]);
    }

    /// The fixtures' real tokenizers (OPT's byte-level BPE, T5's unigram) on text whose
    /// characters take 2 to 4 bytes: every token streamed one at a time.
    #[test]
    fn real_tokenizers_stream_the_text_they_decode() {
        let fixtures = blip2_test_support::fixtures();
        let text = "a caf\u{e9} \u{2019}s \u{1F600} dog \u{4E2D}\u{6587} on a mat  ";
        for fixture in ["tiny-opt", "tiny-t5"] {
            let tokenizer =
                blip2_hub::load_tokenizer(fixtures.join(fixture).join("tokenizer.json")).unwrap();
            let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
            let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap();
            let pieces = stream(&ids, &decode);
            let whole = decode(&ids);
            assert_eq!(pieces.concat(), whole.trim(), "{fixture}: {pieces:?}");
            if !whole.contains('\u{FFFD}') {
                assert!(
                    pieces.iter().all(|p| !p.contains('\u{FFFD}')),
                    "{fixture}: {pieces:?}"
                );
            }
            println!(
                "{fixture}: {} tokens, {} pieces: {pieces:?}",
                ids.len(),
                pieces.len()
            );
        }
    }
}
