//! Splits a stream of LLM tokens into speakable pieces, so TTS can start on the first sentence
//! while the model is still writing the rest.

/// Accumulates tokens; yields complete sentences.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buf: String,
    /// Pieces yielded so far: the first one goes to TTS as soon as it is a sentence.
    pieces: usize,
}

/// Later pieces shorter than this are held back even at a boundary ("Ok." joins the next
/// sentence): very short TTS requests cost a round trip each and break the prosody.
const MIN_PIECE_CHARS: usize = 12;
/// The reply's first piece only has to be a sentence ("Sure."): every token held back before
/// the first TTS request is time the caller waits in silence.
const MIN_FIRST_PIECE_CHARS: usize = 2;
/// Words whose full stop does not end a sentence.
const ABBREVIATIONS: &[&str] =
    &["mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "prof", "approx"];
/// A run-on without a sentence end is cut at a comma or space past this length.
const MAX_PIECE_CHARS: usize = 220;

impl SentenceSplitter {
    /// Add a token; returns the complete pieces it closed, in order.
    pub fn push(&mut self, token: &str) -> Vec<String> {
        self.buf.push_str(token);
        let mut out = Vec::new();
        while let Some(cut) = self.next_cut() {
            let rest = self.buf.split_off(cut);
            let piece = std::mem::replace(&mut self.buf, rest);
            let piece = piece.trim();
            if !piece.is_empty() {
                out.push(piece.to_string());
                self.pieces += 1;
            }
            let trimmed = self.buf.trim_start().len();
            self.buf.drain(..self.buf.len() - trimmed);
        }
        out
    }

    /// The unfinished tail, at the end of the response.
    pub fn finish(&mut self) -> Option<String> {
        let piece = std::mem::take(&mut self.buf);
        let piece = piece.trim();
        (!piece.is_empty()).then(|| piece.to_string())
    }

    fn next_cut(&self) -> Option<usize> {
        let min_chars = if self.pieces == 0 { MIN_FIRST_PIECE_CHARS } else { MIN_PIECE_CHARS };
        let mut iter = self.buf.char_indices().peekable();
        let mut last_soft = None;
        while let Some((i, c)) = iter.next() {
            let next = iter.peek().map(|&(_, n)| n);
            let end = i + c.len_utf8();
            if c == '\n' && end >= 2 {
                return Some(end);
            }
            let terminal = matches!(c, '.' | '!' | '?' | '।' | '॥' | '。' | '？' | '！');
            if terminal && end >= min_chars && !(c == '.' && ends_with_abbreviation(&self.buf[..i])) {
                match next {
                    Some(n) if n.is_whitespace() => return Some(end),
                    // Wait for the next token: "3." may be "3.5".
                    _ => {}
                }
            }
            if (c == ',' || c == ';' || c == ' ') && end > 0 {
                last_soft = Some(end);
            }
            if end >= MAX_PIECE_CHARS {
                return last_soft.or(Some(end));
            }
        }
        None
    }
}

/// Does `text` end with a word like "Dr" whose full stop is not a sentence end?
fn ends_with_abbreviation(text: &str) -> bool {
    let word = text.rsplit(|c: char| c.is_whitespace() || c == '(').next().unwrap_or("");
    ABBREVIATIONS.iter().any(|a| word.eq_ignore_ascii_case(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(tokens: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::default();
        let mut out: Vec<String> = tokens.iter().flat_map(|t| s.push(t)).collect();
        out.extend(s.finish());
        out
    }

    #[test]
    fn splits_on_sentence_ends_as_tokens_arrive() {
        assert_eq!(
            feed(&["Sure", ". Your order ", "shipped yesterday", ". Anything", " else?"]),
            vec!["Sure.", "Your order shipped yesterday.", "Anything else?"]
        );
    }

    #[test]
    fn the_first_sentence_goes_as_soon_as_it_ends() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("Sure").is_empty());
        assert!(s.push(".").is_empty(), "a full stop alone may still be a decimal point");
        assert_eq!(s.push(" Your"), vec!["Sure."]);
        assert_eq!(s.push(" order. "), Vec::<String>::new(), "later short pieces wait");
        assert_eq!(s.push("Thanks for calling. "), vec!["Your order. Thanks for calling."]);
    }

    #[test]
    fn decimals_abbreviations_and_short_later_pieces_do_not_split() {
        assert_eq!(feed(&["It costs 3", ".5 dollars today. Ok"]), vec!["It costs 3.5 dollars today.", "Ok"]);
        assert_eq!(feed(&["Hi. Ok. Good to hear. "]), vec!["Hi.", "Ok. Good to hear."]);
        assert_eq!(
            feed(&["Dr. Rao will call you. Mrs. Shah too, e.g. tomorrow. "]),
            vec!["Dr. Rao will call you.", "Mrs. Shah too, e.g. tomorrow."]
        );
    }

    #[test]
    fn hindi_danda_and_run_ons() {
        assert_eq!(feed(&["नमस्ते, आप कैसे हैं। ", "ठीक"]), vec!["नमस्ते, आप कैसे हैं।", "ठीक"]);
        let long = "word ".repeat(100);
        let pieces = feed(&[&long]);
        assert!(pieces.len() >= 2 && pieces.iter().all(|p| p.len() <= MAX_PIECE_CHARS));
    }
}
