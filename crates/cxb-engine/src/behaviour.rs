//! Text rules of turn-taking: backchannels, high-intent phrases, closure phrases, and
//! "the caller is still spelling something out" (digits, e-mail addresses).
//!
//! All matching works on normalised tokens: lower case, punctuation removed (`uh-huh` →
//! `uh huh`), so configured phrases and STT output with or without punctuation agree.

/// Backchannels that never interrupt the bot (English, Hindi and Hinglish).
pub const DEFAULT_BACKCHANNELS: &[&str] = &[
    "haan",
    "han",
    "haa",
    "hmm",
    "hm",
    "mm",
    "mhm",
    "okay",
    "ok",
    "ji",
    "haan ji",
    "ji haan",
    "uh huh",
    "yes",
    "yeah",
    "yep",
    "right",
    "achha",
    "acha",
    "theek hai",
    "thik hai",
    "sure",
    "हाँ",
    "हां",
    "जी",
    "अच्छा",
    "ठीक है",
];

/// Phrases that interrupt the bot at once, whatever `min_words_interruption` says.
pub const DEFAULT_HIGH_INTENT: &[&str] = &[
    "wrong number",
    "already paid",
    "i have paid",
    "agent",
    "human",
    "settlement",
    "stop calling",
    "galat number",
    "galat no",
    "pehle hi",
    "paid kar diya",
    "bhar diya",
    "jama kar diya",
    "settle",
    "गलत नंबर",
    "पहले ही",
    "भर दिया",
    "एजेंट",
    "सेटलमेंट",
];

/// When the bot's last sentence contains one of these, the call ends after it has played.
pub const DEFAULT_CLOSURE_PHRASES: &[&str] =
    &["goodbye", "good bye", "bye bye", "have a nice day", "have a great day", "alvida", "अलविदा"];

/// Lower-case words with punctuation removed. `@` and `.` inside a word survive (e-mail addresses
/// and decimals keep their shape for [`looks_unfinished`]).
pub fn tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    for raw in lower.split(|c: char| c.is_whitespace() || c == '-' || c == '/') {
        let w: String = raw
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '@' || *c == '.' || *c == '\'' || is_mark(*c))
            .collect();
        let w = w.trim_matches(|c: char| c == '.' || c == '\'').to_string();
        if !w.is_empty() {
            out.push(w);
        }
    }
    out
}

/// Combining marks (Devanagari vowel signs, nukta, virama) are part of a word.
fn is_mark(c: char) -> bool {
    matches!(c as u32, 0x0900..=0x0903 | 0x093A..=0x094F | 0x0951..=0x0957 | 0x0962..=0x0963)
}

/// A set of phrases matched as whole-token sequences.
#[derive(Debug, Clone, Default)]
pub struct PhraseSet {
    phrases: Vec<Vec<String>>,
}

impl PhraseSet {
    pub fn new<S: AsRef<str>>(phrases: impl IntoIterator<Item = S>) -> Self {
        let mut phrases: Vec<Vec<String>> =
            phrases.into_iter().map(|p| tokens(p.as_ref())).filter(|t| !t.is_empty()).collect();
        // Longest first, so "haan ji" wins over "haan" when covering a text.
        phrases.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self { phrases }
    }

    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// Does any phrase occur in `words` as a contiguous token run?
    pub fn occurs_in(&self, words: &[String]) -> bool {
        self.phrases.iter().any(|p| words.windows(p.len()).any(|w| w == p.as_slice()))
    }

    /// Is `words` made only of phrases from the set ("haan haan ji", "okay okay")?
    pub fn covers(&self, words: &[String]) -> bool {
        if words.is_empty() {
            return false;
        }
        let mut i = 0;
        'outer: while i < words.len() {
            for p in &self.phrases {
                if words[i..].starts_with(p) {
                    i += p.len();
                    continue 'outer;
                }
            }
            return false;
        }
        true
    }
}

const NUMBER_WORDS: &[(&str, u32)] = &[
    ("zero", 1),
    ("oh", 1),
    ("one", 1),
    ("two", 1),
    ("three", 1),
    ("four", 1),
    ("five", 1),
    ("six", 1),
    ("seven", 1),
    ("eight", 1),
    ("nine", 1),
    ("shunya", 1),
    ("ek", 1),
    ("do", 1),
    ("teen", 1),
    ("char", 1),
    ("chaar", 1),
    ("paanch", 1),
    ("panch", 1),
    ("chhe", 1),
    ("che", 1),
    ("saat", 1),
    ("aath", 1),
    ("nau", 1),
];

/// Digits a token stands for in a spelled-out number: `98` → 2, `nine` → 1, `double` → 1 extra
/// (it repeats the next digit). `None` when the token is not part of a number.
fn digit_weight(token: &str) -> Option<u32> {
    if !token.is_empty() && token.chars().all(|c| c.is_ascii_digit()) {
        return Some(token.len() as u32);
    }
    match token {
        "double" => Some(1),
        "triple" => Some(2),
        _ => NUMBER_WORDS.iter().find(|(w, _)| *w == token).map(|(_, n)| *n),
    }
}

/// Is the caller, by the look of the words so far, in the middle of spelling something out?
///
/// - A run of digits at the end that is shorter than a phone number (fewer than 10 digits,
///   counting spoken digits and `double`/`triple`), with at least two digits in it, or ending in
///   a bare number word: "my number is nine eight seven" waits, "nine eight seven six five four
///   three two one zero" does not.
/// - An e-mail address being dictated: the text ends in `at`, `dot`, `underscore`, `dash`,
///   `hyphen`, or an `@` with no domain yet.
pub fn looks_unfinished(text: &str) -> bool {
    let words = tokens(text);
    let Some(last) = words.last() else { return false };
    if matches!(last.as_str(), "at" | "dot" | "underscore" | "dash" | "hyphen" | "@") {
        return true;
    }
    if let Some(at) = last.find('@') {
        if !last[at + 1..].contains('.') {
            return true;
        }
    }
    let mut digits = 0u32;
    let mut run = 0usize;
    for w in words.iter().rev() {
        match digit_weight(w) {
            Some(n) => {
                digits += n;
                run += 1;
            }
            None => break,
        }
    }
    run > 0 && digits < 10 && (digits >= 2 || run >= 2)
}

/// The last sentence of a bot utterance, for closure-phrase matching.
pub fn last_sentence(text: &str) -> &str {
    let trimmed = text.trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '.' | '!' | '?' | '।'));
    match trimmed.rfind(['.', '!', '?', '।']) {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_drop_punctuation_and_split_hyphens() {
        assert_eq!(tokens("Uh-huh, OKAY!"), vec!["uh", "huh", "okay"]);
        assert_eq!(tokens("raj@example.com."), vec!["raj@example.com"]);
        assert_eq!(tokens("ठीक है।"), vec!["ठीक", "है"]);
    }

    #[test]
    fn backchannels_cover_repeats_and_multiword_phrases() {
        let set = PhraseSet::new(DEFAULT_BACKCHANNELS);
        assert!(set.covers(&tokens("haan haan ji")));
        assert!(set.covers(&tokens("Uh-huh.")));
        assert!(set.covers(&tokens("okay okay okay")));
        assert!(!set.covers(&tokens("okay but I already paid")));
        assert!(!set.covers(&tokens("")));
    }

    #[test]
    fn high_intent_phrases_match_whole_words_only() {
        let set = PhraseSet::new(DEFAULT_HIGH_INTENT);
        assert!(set.occurs_in(&tokens("sorry, wrong number")));
        assert!(set.occurs_in(&tokens("main pehle hi bhar diya")));
        assert!(set.occurs_in(&tokens("I want an agent")));
        assert!(!set.occurs_in(&tokens("the agency said so")));
    }

    #[test]
    fn spelled_numbers_and_emails_look_unfinished() {
        assert!(looks_unfinished("my number is nine eight seven"));
        assert!(looks_unfinished("it is 98 76"));
        assert!(looks_unfinished("double five"));
        assert!(!looks_unfinished("nine eight seven six five four three two one zero"));
        assert!(!looks_unfinished("9876543210"));
        assert!(!looks_unfinished("I am calling about my loan"));
        assert!(!looks_unfinished("I have one"));
        assert!(looks_unfinished("my email is raj at"));
        assert!(looks_unfinished("raj dot kumar at gmail dot"));
        assert!(looks_unfinished("raj@"));
        assert!(!looks_unfinished("raj@example.com"));
    }

    #[test]
    fn last_sentence_ignores_trailing_punctuation() {
        assert_eq!(last_sentence("Thanks for calling. Have a great day!").trim(), "Have a great day");
        assert_eq!(last_sentence("Have a great day! Is there anything else?").trim(), "Is there anything else");
    }
}
