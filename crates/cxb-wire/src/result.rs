//! The call-results payload (`CallResultsPayload`, contract §5).
//!
//! CXB API stores it with `exclude_none=True`, so an absent field must be *omitted*, never `null`:
//! every optional field carries `skip_serializing_if`.
//!
//! The JSON Schema of the payload ([`results_schema`]) is checked in as `proto/results.schema.json`
//! (regenerate with `UPDATE_SCHEMAS=1 cargo test -p cxb-wire --test schema`); `proto/README.md`
//! documents every shape and the decisions behind them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who or what ended the call (contract §5). Serialised exactly as documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DisconnectedBy {
    #[serde(rename = "bot")]
    Bot,
    #[serde(rename = "customer")]
    Customer,
    #[serde(rename = "voicemail")]
    Voicemail,
    #[serde(rename = "RNR")]
    Rnr,
    #[serde(rename = "outside_hours")]
    OutsideHours,
    #[serde(rename = "no_answer")]
    NoAnswer,
    #[serde(rename = "rejected")]
    Rejected,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "transfer_to_agent")]
    TransferToAgent,
    #[serde(rename = "error")]
    Error,
}

impl DisconnectedBy {
    pub const ALL: [DisconnectedBy; 10] = [
        Self::Bot,
        Self::Customer,
        Self::Voicemail,
        Self::Rnr,
        Self::OutsideHours,
        Self::NoAnswer,
        Self::Rejected,
        Self::Timeout,
        Self::TransferToAgent,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bot => "bot",
            Self::Customer => "customer",
            Self::Voicemail => "voicemail",
            Self::Rnr => "RNR",
            Self::OutsideHours => "outside_hours",
            Self::NoAnswer => "no_answer",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::TransferToAgent => "transfer_to_agent",
            Self::Error => "error",
        }
    }
}

impl std::fmt::Display for DisconnectedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who said a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    /// The caller.
    Customer,
    /// The voice bot.
    Bot,
}

/// One transcript line: speaker + text + timestamp (contract §5; exact keys are our decision §13.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TranscriptEntry {
    pub speaker: Speaker,
    pub text: String,
    /// Wall-clock time the line started, RFC 3339 UTC.
    pub timestamp: String,
    /// Seconds since the call started.
    pub offset_seconds: f64,
    /// True when a bot line was cut short by a barge-in: `text` is only what was played.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// One entry of `events`: a typed record with a free-form `data` object (per-type keys in
/// proto/README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CallEvent {
    /// `tool_call`, `custom_tool_result`, `service_error`, `transfer_sent`, `transfer_failed`,
    /// `interruption`, `latency`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339 UTC.
    pub timestamp: String,
    /// Seconds since the call started.
    pub offset_seconds: f64,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
}

/// The results body POSTed to `webhook_url` (contract §5). Absent fields are omitted, never `null`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CallResultsPayload {
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_direction: Option<String>,
    /// Which transport carried the call (`websocket`, `exotel`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// RFC 3339 UTC wall-clock start of the call (the `answer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    pub call_duration_seconds: f64,
    /// Always present in a delivered result.
    pub disconnected_by: Option<DisconnectedBy>,
    #[serde(default)]
    pub transcript: Vec<TranscriptEntry>,
    #[serde(default)]
    pub events: Vec<CallEvent>,
    /// Intents recognised during or after the call: `intent` events' data, else the analysis'
    /// `intents`/`intent`. Omitted when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intents: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_access_token: Option<String>,
    /// The raw JSON object the LLM returned for `post_call_analysis_prompt` (plus the callback
    /// keys when callback detection ran), or the auto-disposition
    /// `{DISPOSITION, SUB_DISPOSITION, CALLING_REMARKS}` when analysis was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_call_analysis: Option<Map<String, Value>>,
    /// The raw JSON object the LLM returned for `qc_prompt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc_analysis: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
    /// One entry per answered caller turn, in turn order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_samples: Option<Vec<TurnLatency>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metrics: Option<UsageMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_cache_summary: Option<LlmCacheSummary>,
    /// Diagnostic snapshot of the pipeline this call ran with. Every secret is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_event: Option<Map<String, Value>>,
    /// True only when a `transfer_sent` event fired and no later `transfer_failed` did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was_transferred: Option<bool>,
    /// Resolved destination address (number, extension or URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_destination: Option<String>,
    /// Configured transfer target name (label or id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_target: Option<String>,
    /// Reason the LLM gave for transferring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_reason: Option<String>,
    /// `websocket_reverse_transfer`, `livekit_sip_refer` or `agent_desk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_method: Option<String>,
    /// Seconds into the call of the transfer attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_at: Option<f64>,
    /// Why the (last) transfer attempt failed; only when `was_transferred` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_failed_reason: Option<String>,
}

/// `latency`: per-call averages over the turns in `latency_samples`, in milliseconds. A stage
/// with no measurement in any turn is omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct LatencySummary {
    /// Number of measured caller turns (= `latency_samples.len()`).
    pub turns: u32,
    /// Average end-of-speech → final transcript in hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stt_final_delay_avg_ms: Option<f64>,
    /// Average LLM request → first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_ttft_avg_ms: Option<f64>,
    /// Average first text sent to TTS → first audio back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_ttfb_avg_ms: Option<f64>,
    /// Average total response time: the caller's last voiced frame → first bot audio sent
    /// (the documented name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_avg_response_ms: Option<f64>,
    /// Slowest total response time of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_max_response_ms: Option<f64>,
    /// Average custom tool round trip (`tool_call` → its `custom_tool_result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_avg_ms: Option<f64>,
}

/// One `latency_samples` entry: one caller turn → bot response, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct TurnLatency {
    /// 1-based caller turn number.
    pub turn: u32,
    /// End-of-speech decision → final transcript in hand.
    pub stt_final_delay_ms: f64,
    /// LLM request → first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_ttft_ms: Option<f64>,
    /// LLM request → first speakable text (a whole sentence, or the reply's end) sent to TTS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_first_sentence_ms: Option<f64>,
    /// First text sent to TTS → first audio back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_ttfb_ms: Option<f64>,
    /// The caller's last voiced frame → first bot audio sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_response_ms: Option<f64>,
}

/// What an LLM request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LlmPurpose {
    /// The live conversation.
    Conversation,
    /// Post-call analysis (`post_call_analysis_prompt`).
    PostCall,
    /// Quality check (`qc_prompt`).
    Qc,
    /// Dedicated callback extraction (`callback_detection_enabled`).
    Callback,
}

impl LlmPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conversation => "conversation",
            Self::PostCall => "post_call",
            Self::Qc => "qc",
            Self::Callback => "callback",
        }
    }
}

/// `usage_metrics`: what the call consumed. Token counts only, never money.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct UsageMetrics {
    /// One entry per purpose that made at least one LLM request (the conversation entry is
    /// always present).
    #[serde(default)]
    pub llm: Vec<LlmUsageEntry>,
    /// Characters sent to TTS.
    pub tts_characters: u64,
    /// Seconds of caller audio streamed to STT (the whole answered call).
    pub stt_audio_seconds: f64,
}

/// Token usage of one purpose, summed over its requests (OpenAI accounting: `prompt_tokens`
/// includes the cached and cache-written tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct LlmUsageEntry {
    pub purpose: LlmPurpose,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub requests: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache.
    pub cache_read_input_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache.
    pub cache_creation_input_tokens: u64,
    /// Post-call purposes only: `hit` (cache read), `created` (cache written, nothing read),
    /// `miss` (caching requested, neither), `disabled` (`post_call_cache_enabled` false) or
    /// `error` (the request failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_status: Option<String>,
}

/// `llm_cache_summary`: token-only facts about post-call prompt caching, aggregated over the
/// `post_call` and `qc` usage entries (seed 000). Never money.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct LlmCacheSummary {
    /// `post_call_cache_enabled` of the bot.
    pub enabled: bool,
    /// At least one prompt token was read from the cache.
    pub worked: bool,
    /// `cache_status` per purpose (`post_call`, `qc`).
    #[serde(default)]
    pub statuses: BTreeMap<String, String>,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    /// Prompt tokens neither read from nor written to the cache.
    pub fresh_prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The JSON Schema (draft 2020-12) of [`CallResultsPayload`] as serialised: fields that may be
/// absent are not `required`, and no field admits `null` (the receiver stores with
/// exclude_none; an absent field is omitted).
pub fn results_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().for_serialize().into_generator();
    let mut v = generator.into_root_schema_for::<CallResultsPayload>().to_value();
    forbid_null(&mut v);
    if let Value::Object(o) = &mut v {
        o.insert("$id".into(), Value::String("https://cxbridge.io/schemas/call-results.schema.json".into()));
    }
    v
}

/// Remove `null` from every type union of a generated schema (Option<T> → T).
fn forbid_null(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(types)) = o.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let t = types.remove(0);
                    o.insert("type".into(), t);
                }
            }
            for key in ["anyOf", "oneOf"] {
                let Some(Value::Array(alts)) = o.get_mut(key) else { continue };
                alts.retain(|a| {
                    a.get("type") != Some(&Value::String("null".into())) && a.get("const") != Some(&Value::Null)
                });
                if alts.len() == 1 {
                    let Some(Value::Object(only)) = alts.pop() else { continue };
                    o.remove(key);
                    for (k, x) in only {
                        o.entry(k).or_insert(x);
                    }
                }
            }
            if let Some(Value::Array(e)) = o.get_mut("enum") {
                e.retain(|x| !x.is_null());
            }
            o.values_mut().for_each(forbid_null);
        }
        Value::Array(a) => a.iter_mut().for_each(forbid_null),
        _ => {}
    }
}

/// Recursively checks a JSON document for `null` values; the results receiver must never see one.
pub fn find_null(v: &Value, path: &mut String) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().enumerate().any(|(i, x)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find_null(x, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Object(o) => o.iter().any(|(k, x)| {
            let len = path.len();
            path.push('.');
            path.push_str(k);
            let found = find_null(x, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_are_omitted_not_null() {
        let p = CallResultsPayload {
            session_id: "s".into(),
            disconnected_by: Some(DisconnectedBy::Rnr),
            ..Default::default()
        };
        let v = serde_json::to_value(&p).unwrap();
        let mut path = String::new();
        assert!(!find_null(&v, &mut path), "null at {path}");
        assert_eq!(v["disconnected_by"], "RNR");
        assert!(v.get("recording_url").is_none());
    }

    #[test]
    fn disconnected_by_names_match_the_contract() {
        for d in DisconnectedBy::ALL {
            assert_eq!(serde_json::to_value(d).unwrap(), Value::String(d.as_str().into()));
        }
    }
}
