//! The text analyser shared by indexing and querying: English, Hindi (Devanagari) and Hinglish
//! (Hindi written in Latin script).
//!
//! 1. **Words** are found by Unicode word boundaries (UAX #29), not by "alphanumeric runs": a
//!    Devanagari word carries combining marks (virama `्`, nukta `़`, some vowel signs) that are
//!    not alphanumeric, so a simple splitter cuts `नमस्ते` into `नमस` + `ते`. Segments without a
//!    letter or digit (spaces, punctuation, the danda `।`) are dropped.
//! 2. **NFC**: the same Devanagari letter can arrive precomposed (`क़`, U+0958) or as base +
//!    nukta (`क` + `़`); both become one form.
//! 3. **Lowercase** (Latin; Devanagari has no case).
//! 4. **English Snowball stemmer** for words written only in Latin letters (`refunds` →
//!    `refund`, `shipping` → `ship`). Hinglish words pass through it too; it only strips
//!    English suffixes, and query and index go through the same analyser, so a Hinglish word
//!    always matches itself (`kitna`, `paisa`, `hai` stay as they are). Devanagari words and
//!    words mixing digits are not stemmed.
//!
//! Tokens longer than [`MAX_TOKEN_CHARS`] (base64 blobs, URLs glued together) are dropped: they
//! never match a spoken question and only grow the term dictionary.

use rust_stemmers::{Algorithm, Stemmer};
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// The name the analyser is registered under in the index.
pub const TOKENIZER_NAME: &str = "cxb_multilingual";

/// Longer tokens are dropped.
pub const MAX_TOKEN_CHARS: usize = 40;

/// The tantivy tokenizer (cheap to clone: the stemmer is a table of function pointers).
#[derive(Clone)]
pub struct MultilingualTokenizer {
    stemmer: std::sync::Arc<Stemmer>,
    tokens: Vec<Token>,
}

impl Default for MultilingualTokenizer {
    fn default() -> Self {
        MultilingualTokenizer { stemmer: std::sync::Arc::new(Stemmer::create(Algorithm::English)), tokens: Vec::new() }
    }
}

impl Tokenizer for MultilingualTokenizer {
    type TokenStream<'a> = VecTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream<'a> {
        self.tokens.clear();
        // Index 0 is what `token()` shows before the first `advance()` (tantivy's contract leaves
        // it unspecified; this keeps it panic-free).
        self.tokens.push(Token::default());
        let stemmer = &self.stemmer;
        let tokens = &mut self.tokens;
        for_each_term(stemmer, text, |offset_from, offset_to, term| {
            tokens.push(Token { offset_from, offset_to, position: tokens.len() - 1, text: term, position_length: 1 });
        });
        VecTokenStream { tokens: &mut self.tokens, current: 0 }
    }
}

/// Tokens produced up front (the analysis needs whole words anyway); `tokens[0]` is a placeholder.
pub struct VecTokenStream<'a> {
    tokens: &'a mut Vec<Token>,
    current: usize,
}

impl TokenStream for VecTokenStream<'_> {
    fn advance(&mut self) -> bool {
        if self.current + 1 < self.tokens.len() {
            self.current += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        &self.tokens[self.current]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.current]
    }
}

/// The terms of `text`, in order, as the index sees them.
pub fn analyze(text: &str) -> Vec<String> {
    let stemmer = Stemmer::create(Algorithm::English);
    let mut out = Vec::new();
    for_each_term(&stemmer, text, |_, _, term| out.push(term));
    out
}

fn for_each_term(stemmer: &Stemmer, text: &str, mut emit: impl FnMut(usize, usize, String)) {
    for (offset, word) in text.split_word_bound_indices() {
        if !word.chars().any(char::is_alphanumeric) {
            continue;
        }
        let normalized: String = word.nfc().flat_map(char::to_lowercase).collect();
        if normalized.chars().count() > MAX_TOKEN_CHARS {
            continue;
        }
        let term = if normalized.chars().all(|c| c.is_ascii_alphabetic() || c == '\'') {
            stemmer.stem(&normalized).into_owned()
        } else {
            normalized
        };
        emit(offset, offset + word.len(), term);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_is_lowercased_and_stemmed() {
        assert_eq!(analyze("Refunds are PROCESSED within 5 days."), ["refund", "are", "process", "within", "5", "day"]);
        assert_eq!(analyze("shipping, shipped; ships"), ["ship", "ship", "ship"]);
    }

    #[test]
    fn devanagari_words_stay_whole() {
        // Virama (U+094D) and nukta are not alphanumeric: a naive splitter breaks these words.
        assert_eq!(analyze("नमस्ते, आपका ऑर्डर कल पहुँचेगा।"), ["नमस्ते", "आपका", "ऑर्डर", "कल", "पहुँचेगा"]);
        // Precomposed and decomposed nukta letters are the same term.
        assert_eq!(analyze("\u{0958}"), analyze("\u{0915}\u{093C}"));
    }

    #[test]
    fn hinglish_words_match_themselves_and_are_not_conflated() {
        let words =
            ["mera", "order", "kab", "aayega", "bill", "kitna", "hai", "paisa", "paise", "wapas", "karo", "kare"];
        let terms = analyze(&words.join(" "));
        assert_eq!(terms.len(), words.len());
        // Distinct Hinglish words keep distinct terms (no stemming harm).
        for (i, a) in terms.iter().enumerate() {
            for (j, b) in terms.iter().enumerate() {
                if i != j && words[i] != words[j] && !(words[i] == "order" || words[j] == "order") {
                    assert_ne!(a, b, "{} and {} conflated", words[i], words[j]);
                }
            }
        }
        // Case never matters.
        assert_eq!(analyze("Kitna HAI"), analyze("kitna hai"));
    }

    #[test]
    fn offsets_point_into_the_original_text_and_long_tokens_are_dropped() {
        let text = format!("ab {} नमस्ते", "x".repeat(MAX_TOKEN_CHARS + 1));
        let mut t = MultilingualTokenizer::default();
        let mut stream = t.token_stream(&text);
        let mut seen = Vec::new();
        while stream.advance() {
            let tok = stream.token();
            seen.push((text[tok.offset_from..tok.offset_to].to_string(), tok.position));
        }
        assert_eq!(seen, [("ab".to_string(), 0), ("नमस्ते".to_string(), 1)]);
    }
}
