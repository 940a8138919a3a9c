//! Splitting a document into overlapping chunks of about [`DEFAULT_MAX_CHARS`] characters, at the
//! strongest boundary available: paragraph (blank line, or a Markdown heading), line, sentence
//! (UAX #29, so the Devanagari danda `।` ends a sentence too), word, and as a last resort a
//! grapheme cluster (a Devanagari conjunct or an emoji is never cut).
//!
//! Sizes are counted in characters (Unicode scalar values), like CXB API's ingestion. Every chunk
//! is a verbatim slice of the document: nothing is rewritten or joined with new separators.
//!
//! How a chunk is formed:
//!
//! 1. The document is cut into *pieces* no longer than the maximum: sentences, or smaller units
//!    when a sentence is longer. Each piece remembers the strength of the boundary before it.
//! 2. A chunk takes pieces while they fit. Among the places where it could end once at least half
//!    full, it ends at the strongest boundary (the latest of equals), so chunks end at paragraph
//!    ends when a paragraph end is near.
//! 3. The next chunk starts with the longest run of whole trailing pieces of the previous one that
//!    fits in the overlap (so overlap is whole sentences, at most [`DEFAULT_OVERLAP_CHARS`]); when
//!    the last sentence alone is longer than the overlap, chunks do not overlap.

use unicode_segmentation::UnicodeSegmentation;

/// Target (and maximum) chunk size in characters.
pub const DEFAULT_MAX_CHARS: usize = 1200;
/// Most characters the start of a chunk repeats from the end of the previous one.
pub const DEFAULT_OVERLAP_CHARS: usize = 200;

/// Chunk sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOptions {
    /// No chunk is longer than this many characters (at least 1).
    pub max_chars: usize,
    /// At most this many characters of whole trailing pieces are repeated (less than `max_chars`).
    pub overlap_chars: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions { max_chars: DEFAULT_MAX_CHARS, overlap_chars: DEFAULT_OVERLAP_CHARS }
    }
}

/// How strongly the text is divided before a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    Grapheme,
    Word,
    Sentence,
    Line,
    Paragraph,
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    start: usize,
    end: usize,
    /// Characters from the start of the text to `start` / `end`.
    char_start: usize,
    char_end: usize,
    before: Break,
}

/// The chunks of `text`, in order, as slices of it.
pub fn chunk_text(text: &str, options: ChunkOptions) -> Vec<&str> {
    let max = options.max_chars.max(1);
    let overlap = options.overlap_chars.min(max - 1);
    let pieces = pieces(text, max);
    let span = |a: usize, b: usize| pieces[b - 1].char_end - pieces[a].char_start;

    let mut chunks = Vec::new();
    let mut start = 0;
    while start < pieces.len() {
        // The furthest end that fits (a piece alone always fits).
        let mut fit = start + 1;
        while fit < pieces.len() && span(start, fit + 1) <= max {
            fit += 1;
        }
        let end = if fit == pieces.len() {
            fit
        } else {
            // The strongest boundary once the chunk is at least half full; the latest of equals.
            (start + 1..=fit)
                .filter(|&e| e == start + 1 || span(start, e) * 2 >= max)
                .max_by_key(|&e| (pieces[e].before, e))
                .unwrap_or(fit)
        };
        chunks.push(&text[pieces[start].start..pieces[end - 1].end]);
        if end == pieces.len() {
            break;
        }
        // Overlap: whole trailing pieces, as long as the next chunk can still take a new piece.
        let mut next = end;
        while next > start + 1 && span(next - 1, end) <= overlap && span(next - 1, end + 1) <= max {
            next -= 1;
        }
        start = next;
    }
    chunks
}

fn pieces(text: &str, max: usize) -> Vec<Piece> {
    let mut ranges: Vec<(usize, usize, Break)> = Vec::new();
    for (ps, pe) in paragraphs(text) {
        for (li, (ls, le)) in lines(text, ps, pe).into_iter().enumerate() {
            for (si, (ss, se)) in sentences(text, ls, le).into_iter().enumerate() {
                let before = match (li, si) {
                    (0, 0) => Break::Paragraph,
                    (_, 0) => Break::Line,
                    _ => Break::Sentence,
                };
                split_to_fit(text, ss, se, before, max, &mut ranges);
            }
        }
    }
    // Character offsets, in one pass over the text.
    let mut out = Vec::with_capacity(ranges.len());
    let (mut at_byte, mut at_char) = (0usize, 0usize);
    for (start, end, before) in ranges {
        at_char += text[at_byte..start].chars().count();
        let char_start = at_char;
        at_char += text[start..end].chars().count();
        at_byte = end;
        out.push(Piece { start, end, char_start, char_end: at_char, before });
    }
    out
}

/// Pushes `text[start..end]` as one piece if it fits, else its words (and a too-long word as
/// runs of grapheme clusters).
fn split_to_fit(text: &str, start: usize, end: usize, before: Break, max: usize, out: &mut Vec<(usize, usize, Break)>) {
    if text[start..end].chars().count() <= max {
        out.push((start, end, before));
        return;
    }
    let mut first = true;
    for (offset, word) in text[start..end].split_word_bound_indices() {
        if word.trim().is_empty() {
            continue;
        }
        let (ws, we) = (start + offset, start + offset + word.len());
        let word_before = if first { before } else { Break::Word };
        first = false;
        if word.chars().count() <= max {
            out.push((ws, we, word_before));
            continue;
        }
        let (mut run_start, mut run_chars, mut run_before) = (ws, 0usize, word_before);
        for (g_offset, g) in word.grapheme_indices(true) {
            let g_chars = g.chars().count();
            if run_chars > 0 && run_chars + g_chars > max {
                out.push((run_start, ws + g_offset, run_before));
                (run_start, run_chars, run_before) = (ws + g_offset, 0, Break::Grapheme);
            }
            // A single grapheme longer than `max` (absurd combining sequences) stays whole.
            run_chars += g_chars;
        }
        out.push((run_start, we, run_before));
    }
}

/// Trimmed paragraphs: separated by blank lines; a Markdown heading line starts a new one.
fn paragraphs(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let (ls, le) = trimmed(text, offset, offset + line.len());
        offset += line.len();
        if ls == le {
            out.extend(current.take());
            continue;
        }
        if text[ls..le].starts_with('#') {
            out.extend(current.take());
        }
        current = Some(match current {
            Some((s, _)) => (s, le),
            None => (ls, le),
        });
    }
    out.extend(current);
    out
}

/// Trimmed non-empty lines of `text[start..end]`.
fn lines(text: &str, start: usize, end: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut offset = start;
    for line in text[start..end].split_inclusive('\n') {
        let (ls, le) = trimmed(text, offset, offset + line.len());
        offset += line.len();
        if ls < le {
            out.push((ls, le));
        }
    }
    out
}

/// Trimmed non-empty sentences of `text[start..end]`.
fn sentences(text: &str, start: usize, end: usize) -> Vec<(usize, usize)> {
    text[start..end]
        .split_sentence_bound_indices()
        .map(|(o, s)| trimmed(text, start + o, start + o + s.len()))
        .filter(|(s, e)| s < e)
        .collect()
}

fn trimmed(text: &str, start: usize, end: usize) -> (usize, usize) {
    let s = &text[start..end];
    let lead = s.len() - s.trim_start().len();
    let trail = s.len() - s.trim_end().len();
    if lead == s.len() {
        (start, start)
    } else {
        (start + lead, end - trail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max: usize, overlap: usize) -> ChunkOptions {
        ChunkOptions { max_chars: max, overlap_chars: overlap }
    }

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    #[test]
    fn short_text_is_one_chunk_and_empty_text_none() {
        assert_eq!(chunk_text("  Hello there.  \n", ChunkOptions::default()), ["Hello there."]);
        assert!(chunk_text(" \n\n \t", ChunkOptions::default()).is_empty());
    }

    #[test]
    fn chunks_are_bounded_overlap_and_cover_the_text() {
        // 40 numbered sentences of ~60 characters in paragraphs of 5.
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!("Sentence number {i:02} talks about deliveries and refunds here. "));
            if i % 5 == 4 {
                text.push_str("\n\n");
            }
        }
        let chunks = chunk_text(&text, ChunkOptions::default());
        assert!(chunks.len() >= 2, "{}", chunks.len());
        for c in &chunks {
            assert!(chars(c) <= DEFAULT_MAX_CHARS, "{}", chars(c));
            assert!(chars(c) >= DEFAULT_MAX_CHARS / 2 || std::ptr::eq(*c, *chunks.last().unwrap()), "{}", chars(c));
            // Every chunk starts at a sentence start and ends at a sentence end.
            assert!(c.starts_with("Sentence number"), "{c:?}");
            assert!(c.ends_with('.'), "{c:?}");
        }
        for pair in chunks.windows(2) {
            // The next chunk begins with whole sentences from the end of the previous one, at
            // most the overlap long.
            let first_of_next: String = pair[1].split(". ").next().unwrap_or_default().to_string();
            assert!(pair[0].contains(&first_of_next), "no overlap between {:?} and {:?}", pair[0], pair[1]);
            let shared = pair[0].len() - pair[0].find(&first_of_next).unwrap_or(0);
            assert!(chars(&pair[0][pair[0].len() - shared..]) <= DEFAULT_OVERLAP_CHARS);
        }
        // Every sentence is in some chunk.
        for i in 0..40 {
            let needle = format!("Sentence number {i:02} ");
            assert!(chunks.iter().any(|c| c.contains(&needle)), "{needle}");
        }
    }

    #[test]
    fn chunks_end_at_paragraph_ends_when_one_is_near() {
        // Paragraphs of ~700 characters: two do not fit in 1,200, so each chunk is one paragraph
        // (plus overlap), never a paragraph and a half.
        let para =
            |n: usize| format!("Paragraph {n} begins. {}It ends here.", "Some filler words in a sentence. ".repeat(20));
        let text = (0..4).map(para).collect::<Vec<_>>().join("\n\n");
        let chunks = chunk_text(&text, ChunkOptions::default());
        for c in &chunks {
            assert!(c.ends_with("It ends here."), "{c:?}");
        }
        assert_eq!(chunks.len(), 4);
    }

    #[test]
    fn long_sentences_split_at_words_and_long_words_at_graphemes() {
        let sentence = "word ".repeat(100);
        let chunks = chunk_text(&sentence, opts(50, 10));
        assert!(chunks.iter().all(|c| chars(c) <= 50 && c.starts_with("word") && c.ends_with("word")), "{chunks:?}");
        // A "word" of 30 Devanagari conjuncts (क्ष = 3 chars each) splits between clusters only.
        let word = "क्ष".repeat(30);
        let chunks = chunk_text(&word, opts(10, 0));
        assert_eq!(chunks.concat(), word);
        assert!(chunks.iter().all(|c| chars(c) <= 10 && c.starts_with('क') && c.ends_with('ष')), "{chunks:?}");
    }

    #[test]
    fn hindi_sentences_end_at_the_danda() {
        let text = "आपका ऑर्डर कल पहुँचेगा। रिफंड पाँच दिन में आता है। धन्यवाद।";
        let chunks = chunk_text(text, opts(30, 0));
        assert_eq!(chunks, ["आपका ऑर्डर कल पहुँचेगा।", "रिफंड पाँच दिन में आता है।", "धन्यवाद।"]);
    }

    #[test]
    fn headings_start_new_paragraphs_and_chunks_stay_verbatim() {
        let text = "# Title\nIntro line.\n## Returns\r\nWithin 30 days.\n";
        let chunks = chunk_text(text, opts(30, 0));
        assert_eq!(chunks, ["# Title\nIntro line.", "## Returns\r\nWithin 30 days."]);
        for c in chunks {
            assert!(text.contains(c));
        }
    }

    #[test]
    fn progress_is_guaranteed_with_overlap_close_to_the_maximum() {
        let text = "a b c d e f g h i j k l m n o p q r s t u v w x y z. ".repeat(30);
        for (max, overlap) in [(10, 9), (1, 5), (60, 59), (3, 2)] {
            let chunks = chunk_text(&text, opts(max, overlap));
            assert!(!chunks.is_empty());
            assert!(chunks.len() < text.len() * 2, "{max}/{overlap}");
            assert!(chunks.iter().all(|c| chars(c) <= max), "{max}/{overlap}");
        }
    }
}
