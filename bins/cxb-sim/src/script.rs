//! The conversation script shared by the STT and LLM doubles (assets/sim/script.json).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The script compiled into the binary (used when `--script` is not given).
pub const EMBEDDED_SCRIPT: &str = include_str!("../../../assets/sim/script.json");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Script {
    pub bot: BotScript,
    /// Transcript N is returned for caller utterance N of an STT connection.
    #[serde(default)]
    pub stt_transcripts: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default = "default_reply")]
    pub default_reply: Reply,
    /// Text reply when the last message is a tool result.
    #[serde(default = "default_after_tool")]
    pub after_tool_reply: String,
    /// Per-bot config fields merged over the served config (top-level keys replace), so one
    /// script can serve bots with transfer targets, custom tools, silence timers, ...
    #[serde(default)]
    pub bots: std::collections::BTreeMap<String, serde_json::Map<String, Value>>,
}

fn default_reply() -> Reply {
    Reply { text: "I see. Could you tell me a little more?".into(), tool_calls: Vec::new() }
}
fn default_after_tool() -> String {
    "Done.".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BotScript {
    #[serde(default)]
    pub system_prompt: String,
    #[serde(default)]
    pub opening_message: String,
    /// Served as `max_call_duration_seconds` (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_call_duration_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rule {
    /// Case-insensitive substring of the last user message.
    pub when_user_says: String,
    pub reply: Reply,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub tool_calls: Vec<ToolCallSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCallSpec {
    pub name: String,
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// The transcript returned once the scripted ones are used up.
pub const UNSCRIPTED: &str = "unscripted speech";

impl Script {
    pub fn embedded() -> Self {
        serde_json::from_str(EMBEDDED_SCRIPT).expect("embedded script is valid JSON")
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read script {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("script {} is invalid: {e}", path.display()))
    }

    /// Transcript for the `n`-th (0-based) utterance of a connection.
    pub fn transcript(&self, n: usize) -> &str {
        self.stt_transcripts.get(n).map(String::as_str).unwrap_or(UNSCRIPTED)
    }

    /// The reply to a user message: the first rule whose phrase occurs in it, else the default.
    pub fn reply_for_user(&self, content: &str) -> &Reply {
        let lower = content.to_lowercase();
        self.rules
            .iter()
            .find(|r| !r.when_user_says.is_empty() && lower.contains(&r.when_user_says.to_lowercase()))
            .map(|r| &r.reply)
            .unwrap_or(&self.default_reply)
    }

    /// For each scripted transcript: how many streamed LLM chunks (each preceded by the
    /// `--llm-token-interval-ms` delay) the reply needs before its first sentence is complete.
    /// Text replies: the words of the first sentence. Tool-only replies: the tool-call chunks
    /// (the worker needs the complete arguments before it can speak).
    pub fn first_sentence_chunks(&self) -> Vec<usize> {
        self.stt_transcripts
            .iter()
            .map(|t| {
                let r = self.reply_for_user(t);
                if r.text.trim().is_empty() {
                    r.tool_calls
                        .iter()
                        .map(|tc| 1 + crate::llm_openai::split_arguments(&tc.arguments.to_string()).len())
                        .sum()
                } else {
                    first_sentence_words(&r.text)
                }
            })
            .collect()
    }
}

/// Words up to and including the first sentence terminator (`.`, `!`, `?`).
pub fn first_sentence_words(text: &str) -> usize {
    let mut n = 0;
    for w in text.split_whitespace() {
        n += 1;
        if w.ends_with(['.', '!', '?']) {
            break;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_script_parses_and_matches_rules() {
        let s = Script::embedded();
        assert_eq!(s.stt_transcripts.len(), 3);
        assert!(s.reply_for_user("I want to check my ORDER STATUS").text.starts_with("Sure."));
        assert!(s.reply_for_user("a question about my bill").text.starts_with("Of course."));
        assert_eq!(s.reply_for_user("thank you, goodbye").tool_calls[0].name, "end_call");
        assert_eq!(s.reply_for_user("hmm").text, s.default_reply.text);
        assert_eq!(s.transcript(7), UNSCRIPTED);
        assert_eq!(s.bot.max_call_duration_seconds, None);
    }

    #[test]
    fn first_sentence_counts() {
        assert_eq!(first_sentence_words("Sure. Your order"), 1);
        assert_eq!(first_sentence_words("Of course. Yes"), 2);
        assert_eq!(first_sentence_words("no terminator here"), 3);
        let s = Script::embedded();
        let c = s.first_sentence_chunks();
        assert_eq!(&c[..2], &[1, 2]);
        assert!(c[2] >= 3, "tool reply: 1 header + >= 2 argument fragments");
    }
}
