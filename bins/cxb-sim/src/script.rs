//! The conversation script shared by the STT and LLM doubles (assets/sim/script.json).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    /// Replies to the result of a particular tool, by tool name (e.g. the goodbye a model says
    /// after its `end_call` was acknowledged); other tools get `after_tool_reply`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub after_tool_replies: BTreeMap<String, Reply>,
    /// Per-bot config fields merged over the served config (top-level keys replace), so one
    /// script can serve bots with transfer targets, custom tools, silence timers, ...
    #[serde(default)]
    pub bots: std::collections::BTreeMap<String, serde_json::Map<String, Value>>,
    /// `GET /api/v1/sip/lookup?number=` answers, by dialed number. `null` → 404 (nothing
    /// mapped). The key `"*"` answers every other number; without it they get
    /// [`SipNumber::default`] (`demo` / `sim-carrier` / `sim-did`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sip_numbers: BTreeMap<String, Option<SipNumber>>,
    /// `GET /api/v1/sip/outbound-trunk?from_number=` answers, by from number (`""` = the
    /// request named none). `null` → 404 (no trunk). `"*"` answers every other number;
    /// without it they get [`OutboundTrunk::default`] (`ST_sim`, `+918000000000`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outbound_trunks: BTreeMap<String, Option<OutboundTrunk>>,
    /// Fake Agent Desk behaviour.
    #[serde(default)]
    pub agent_desk: AgentDeskScript,
}

/// A DID mapping returned by the SIP lookup (contract §3 call 2). Extra keys are returned as-is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SipNumber {
    pub bot_id: String,
    pub carrier_id: String,
    pub did_id: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for SipNumber {
    fn default() -> Self {
        Self { bot_id: "demo".into(), carrier_id: "sim-carrier".into(), did_id: "sim-did".into(), extra: Map::new() }
    }
}

/// An outbound trunk returned by the trunk lookup (contract §3 call 3). Extra keys (rate
/// limits, ...) are returned as-is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundTrunk {
    pub trunk_id: String,
    pub number: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for OutboundTrunk {
    fn default() -> Self {
        Self { trunk_id: "ST_sim".into(), number: "+918000000000".into(), extra: Map::new() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentDeskScript {
    /// The first N `POST /api/v1/agent-desk/enqueue` requests answer 503 (exercises the
    /// worker's outbox retry). `POST /sim/control {"agent_desk_enqueue_503": N}` re-arms it.
    #[serde(default)]
    pub enqueue_503: u32,
}

fn default_reply() -> Reply {
    Reply { text: "I see. Could you tell me a little more?".into(), ..Reply::default() }
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
    /// Answer from the tool result the way a model grounded in it does: say its
    /// `fallback_message` verbatim when it has one, else this prefix and the first sentence of
    /// its first result's `text` (`text` when the result has neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_tool_result: Option<String>,
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

/// What a model grounded in a search result says: the result's `fallback_message` verbatim, or
/// `prefix` and the first sentence of the first result's text.
fn grounded_answer(prefix: &str, content: &str) -> Option<String> {
    let v: Value = serde_json::from_str(content).ok()?;
    if let Some(m) = v.get("fallback_message").and_then(Value::as_str) {
        return Some(m.to_string());
    }
    let text = v.pointer("/results/0/text").and_then(Value::as_str)?.trim();
    let end =
        text.find(['.', '!', '?', '।']).map_or(text.len(), |i| i + text[i..].chars().next().map_or(1, char::len_utf8));
    Some(format!("{prefix} {}", text[..end].trim()).trim().to_string())
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

    /// The SIP lookup answer for a dialed number; `None` = not mapped (404).
    pub fn sip_number(&self, number: &str) -> Option<SipNumber> {
        match self.sip_numbers.get(number).or_else(|| self.sip_numbers.get("*")) {
            Some(entry) => entry.clone(),
            None => Some(SipNumber::default()),
        }
    }

    /// The outbound trunk for a from number (`""` when none was given); `None` = no trunk (404).
    pub fn outbound_trunk(&self, from_number: &str) -> Option<OutboundTrunk> {
        match self.outbound_trunks.get(from_number).or_else(|| self.outbound_trunks.get("*")) {
            Some(entry) => entry.clone(),
            None => Some(OutboundTrunk::default()),
        }
    }

    /// The reply to a tool result (`content`), given the name of the tool that produced it.
    pub fn reply_after_tool(&self, tool: Option<&str>, content: &str) -> Reply {
        let Some(reply) = tool.and_then(|t| self.after_tool_replies.get(t)) else {
            return Reply { text: self.after_tool_reply.clone(), ..Reply::default() };
        };
        let mut reply = reply.clone();
        if let Some(prefix) = reply.from_tool_result.take() {
            if let Some(text) = grounded_answer(&prefix, content) {
                reply.text = text;
            }
        }
        reply
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
    fn sip_maps_default_override_and_refuse() {
        let s = Script::embedded();
        assert_eq!(s.sip_number("+918000000001"), Some(SipNumber::default()));
        assert_eq!(s.outbound_trunk(""), Some(OutboundTrunk::default()));
        assert_eq!(s.agent_desk.enqueue_503, 0);

        let mut v: Value = serde_json::from_str(EMBEDDED_SCRIPT).expect("json");
        v["sip_numbers"] = serde_json::json!({
            "+911111": {"bot_id": "sales", "carrier_id": "c1", "did_id": "d1", "region": "north"},
            "+912222": null,
        });
        v["outbound_trunks"] = serde_json::json!({"": {"trunk_id": "ST_any", "number": "+913333"}, "*": null});
        v["agent_desk"] = serde_json::json!({"enqueue_503": 2});
        let s: Script = serde_json::from_value(v).expect("script");
        let sales = s.sip_number("+911111").expect("mapped");
        assert_eq!((sales.bot_id.as_str(), sales.extra["region"].as_str()), ("sales", Some("north")));
        assert_eq!(s.sip_number("+912222"), None);
        assert_eq!(s.sip_number("+919999"), Some(SipNumber::default()));
        assert_eq!(s.outbound_trunk("").map(|t| t.trunk_id), Some("ST_any".to_string()));
        assert_eq!(s.outbound_trunk("+914444"), None);
        assert_eq!(s.agent_desk.enqueue_503, 2);
        // Round trip keeps the maps (the served script is re-read by tests).
        let back: Script = serde_json::from_str(&serde_json::to_string(&s).expect("ser")).expect("de");
        assert_eq!(back.sip_numbers, s.sip_numbers);
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
