//! The runtime bot config returned by the CXB API config endpoint (contract §4).
//!
//! Every documented default is applied when a field is absent *or* `null`; unknown fields are
//! ignored so a newer CXB API never breaks an older worker.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::serde_util::null_default;

fn default_timezone() -> String {
    "UTC".into()
}
fn default_min_words() -> u32 {
    3
}
fn default_max_duration() -> u64 {
    600
}

/// What the bot says before hanging up when `end_call` brings no goodbye of its own and the LLM
/// gives none when asked.
pub const DEFAULT_END_CALL_MESSAGE: &str = "Thank you for calling. Goodbye.";

fn default_end_call_message() -> String {
    DEFAULT_END_CALL_MESSAGE.into()
}

/// The runtime config for one call.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BotConfig {
    /// Unique per call; correlates the result with the call skeleton at CXB API.
    pub session_id: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub bot_id: String,
    /// Results POST target. Absent only in local bot files (embedded default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub system_prompt: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub opening_message: String,
    #[serde(default = "default_timezone", deserialize_with = "tz_or_default")]
    #[schemars(with = "Option<String>")]
    pub timezone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re_engagement: Option<Value>,
    #[serde(default = "default_min_words", deserialize_with = "min_words_or_default")]
    #[schemars(with = "Option<u32>")]
    pub min_words_interruption: u32,
    #[serde(default = "default_max_duration", deserialize_with = "max_dur_or_default")]
    #[schemars(with = "Option<u64>")]
    pub max_call_duration_seconds: u64,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub voicemail_message: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub pre_transfer_message: String,
    /// Spoken before the hang-up when the LLM ends the call (`end_call`) without a
    /// `final_message` or any words in that turn, and its follow-up goodbye fails, times out or
    /// is empty. Absent, `null` or empty: "Thank you for calling. Goodbye.".
    #[serde(default = "default_end_call_message", deserialize_with = "end_call_message_or_default")]
    #[schemars(with = "Option<String>")]
    pub end_call_message: String,
    /// OpenAI-format function tool definitions (custom HTTP tools).
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<Vec<Value>>")]
    pub tools: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_policy: Option<Value>,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub transfer_numbers: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<Vec<TransferTarget>>")]
    pub transfer_targets: Vec<TransferTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_call_analysis_prompt: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<bool>")]
    pub post_call_cache_enabled: bool,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub post_call_cache_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_call_cache: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_dispositions: Option<BTreeMap<String, AutoDisposition>>,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<bool>")]
    pub callback_detection_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_parts: Option<Value>,
    /// Knowledge-base search (`knowledge_enabled`, `knowledge_kb_ids`, …, contract §4.1).
    #[serde(flatten)]
    pub knowledge: crate::knowledge::KnowledgeSettings,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<SttConfig>")]
    pub stt: SttConfig,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<LlmConfig>")]
    pub llm: LlmConfig,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<TtsConfig>")]
    pub tts: TtsConfig,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<VadConfig>")]
    pub vad: VadConfig,
    /// Optional second delivery of the result in the NXLink call-record callback shape
    /// (seed 002; mapping in proto/README.md). Absent or `null`: no second delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nxlink: Option<NxlinkConfig>,
    /// Credentials and API roots for the telephony REST primitives (Twilio / Telnyx / Plivo
    /// hang-up). Absent fields fall back to the worker's settings (`TWILIO_*`, `TELNYX_*`,
    /// `PLIVO_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telephony: Option<TelephonyConfig>,
    /// Turn-taking rules (cxb-core extension; every field optional, documented defaults).
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<InterruptionConfig>")]
    pub interruption: InterruptionConfig,
    /// Silence rules: RNR and dead-air timers (cxb-core extension).
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<SilenceConfig>")]
    pub silence: SilenceConfig,
    /// Turn detection (cxb-core extension).
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<TurnConfig>")]
    pub turn: TurnConfig,
    /// Filler phrase spoken when the LLM or a tool is slow (cxb-core extension).
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<FillerConfig>")]
    pub filler: FillerConfig,
    /// Phrases that end the call once the bot has said them. `null`/absent: the defaults;
    /// `[]`: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closure_phrases: Option<Vec<String>>,
    /// Offer the built-in `detected_voicemail` tool (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail_detection: Option<bool>,
    /// DTMF input and output (cxb-core extension).
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<DtmfConfig>")]
    pub dtmf: DtmfConfig,
}

/// `interruption` block.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct InterruptionConfig {
    /// Words that never interrupt the bot. `null`: the built-in list ("haan", "hmm", "okay",
    /// "ji", "uh-huh", "yes", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannels: Option<Vec<String>>,
    /// Phrases that interrupt at once ("wrong number", "already paid", "agent", "settlement",
    /// Hindi variants). `null`: the built-in list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_intent_phrases: Option<Vec<String>>,
    /// The opening message cannot be interrupted for this long once it starts playing (1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening_guard_ms: Option<u64>,
    /// Pause bot audio as soon as VAD hears the caller, resuming if no words follow (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_on_speech: Option<bool>,
    /// With `pause_on_speech`: resume after this long without words (800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_interruption_timeout_ms: Option<u64>,
}

/// `silence` block.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct SilenceConfig {
    /// A caller who has not said a word this long after the bot stopped talking → `RNR` (15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rnr_seconds: Option<f64>,
    /// A caller who spoke earlier but is now silent this long → the bot ends the call (20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_air_seconds: Option<f64>,
    /// Spoken before a dead-air hang-up (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_air_message: Option<String>,
}

/// `turn` block.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct TurnConfig {
    /// `vad_stt` (default: VAD stop plus the STT final), `smart_turn` (Smart Turn v3 model,
    /// needs the `smart-turn` build), or `stt` (the STT's own turn events, Deepgram Flux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Extra wait when the caller seems to be mid-way through a number or an e-mail (1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfinished_wait_ms: Option<u64>,
}

/// `filler` block.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct FillerConfig {
    /// Phrases, used in turn. Empty: no filler.
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<Vec<String>>")]
    pub phrases: Vec<String>,
    /// Say one when the LLM has not answered or a tool has not returned after this long (1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
}

/// `dtmf` block.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct DtmfConfig {
    /// Offer the built-in `send_dtmf` tool (in-band tones; default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_enabled: Option<bool>,
    /// Keypresses end as a caller turn after this long without another key, or on `#` (2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_timeout_ms: Option<u64>,
}

/// `re_engagement` block as cxb-core reads it (the original's sub-fields were not recovered).
/// Parsed leniently from the raw value so an unknown shape from an existing deployment never
/// rejects a call: unreadable → off.
#[derive(Debug, Clone, PartialEq)]
pub struct ReEngagement {
    /// Caller silence before each prompt.
    pub after_seconds: f64,
    /// Prompts before the silence rules (RNR / dead air) take over.
    pub max_attempts: u32,
    /// Prompts, used in turn (the last one repeats).
    pub messages: Vec<String>,
}

impl ReEngagement {
    /// `{"enabled"?: bool, "after_seconds"|"timeout_seconds"|"silence_seconds": n,
    ///   "max_attempts"|"max_prompts": n, "messages": [..] | "message": ".."}`.
    pub fn from_value(v: &Value) -> Option<Self> {
        let o = v.as_object()?;
        if o.get("enabled").and_then(Value::as_bool) == Some(false) {
            return None;
        }
        let num = |keys: &[&str]| keys.iter().find_map(|k| o.get(*k).and_then(Value::as_f64));
        let mut messages: Vec<String> = match o.get("messages") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => Vec::new(),
        };
        if let Some(m) = o.get("message").and_then(Value::as_str) {
            messages.push(m.to_string());
        }
        messages.retain(|m| !m.trim().is_empty());
        if messages.is_empty() {
            return None;
        }
        let after_seconds = num(&["after_seconds", "timeout_seconds", "silence_seconds"]).unwrap_or(8.0);
        let max_attempts = num(&["max_attempts", "max_prompts"]).unwrap_or(2.0);
        if !(after_seconds.is_finite() && after_seconds > 0.0 && max_attempts.is_finite() && max_attempts >= 1.0) {
            return None;
        }
        Some(Self { after_seconds: after_seconds.min(600.0), max_attempts: max_attempts.min(10.0) as u32, messages })
    }
}

fn tz_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(default_timezone))
}
fn min_words_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(Option::<u32>::deserialize(d)?.unwrap_or_else(default_min_words))
}
fn end_call_message_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let message = Option::<String>::deserialize(d)?.filter(|m| !m.trim().is_empty());
    Ok(message.unwrap_or_else(default_end_call_message))
}
fn max_dur_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or_else(default_max_duration))
}

impl BotConfig {
    /// Parse and validate a config body. Errors name the offending field.
    pub fn from_json(body: &[u8]) -> Result<Self, ConfigError> {
        let cfg: BotConfig = serde_json::from_slice(body).map_err(ConfigError::Json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Semantic checks serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.session_id.trim().is_empty() {
            return Err(ConfigError::Invalid("session_id is empty".into()));
        }
        if self.max_call_duration_seconds == 0 {
            return Err(ConfigError::Invalid("max_call_duration_seconds must be > 0".into()));
        }
        if let Some(v) = &self.vad.confidence {
            if !(0.0..=1.0).contains(v) {
                return Err(ConfigError::Invalid("vad.confidence must be within 0..=1".into()));
            }
        }
        for (name, secs) in [("vad.start_secs", self.vad.start_secs), ("vad.stop_secs", self.vad.stop_secs)] {
            if let Some(s) = secs {
                if !(0.0..=10.0).contains(&s) {
                    return Err(ConfigError::Invalid(format!("{name} must be within 0..=10 seconds")));
                }
            }
        }
        for t in &self.tools {
            if t.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).is_none()
                && t.get("name").and_then(Value::as_str).is_none()
            {
                return Err(ConfigError::Invalid("every tool needs a function name".into()));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid JSON for the bot-config schema: {0}")]
    Json(serde_json::Error),
    #[error("config is invalid: {0}")]
    Invalid(String),
}

/// `stt` block (contract §4.2).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct SttConfig {
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub provider: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub api_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// API root, as the vendor SDK takes it (e.g. `wss://api.deepgram.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub extra: serde_json::Map<String, Value>,
}

/// `llm` block (contract §4.2).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct LlmConfig {
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub provider: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub api_key: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// API root, e.g. `https://api.openai.com/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub extra: serde_json::Map<String, Value>,
}

/// `tts` block. Not recovered from the docs; this shape is our decision (documented in proto/).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct TtsConfig {
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub provider: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub api_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// API root, e.g. `wss://api.cartesia.ai`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub extra: serde_json::Map<String, Value>,
}

/// `vad` block. Every field is optional; `None` means the worker default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct VadConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_secs: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_secs: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_volume: Option<f32>,
}

/// A configured transfer destination (contract §4.4).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct TransferTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub label: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub method: String,
    #[serde(default, rename = "type", deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub value: String,
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<bool>")]
    pub is_default: bool,
    #[serde(default = "yes", deserialize_with = "enabled_or_default")]
    #[schemars(with = "Option<bool>")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}
fn enabled_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

/// One auto-disposition override: only `DISPOSITION` is required.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AutoDisposition {
    #[serde(rename = "DISPOSITION")]
    pub disposition: String,
    #[serde(rename = "SUB_DISPOSITION", default, skip_serializing_if = "Option::is_none")]
    pub sub_disposition: Option<String>,
    #[serde(rename = "CALLING_REMARKS", default, skip_serializing_if = "Option::is_none")]
    pub calling_remarks: Option<String>,
}

/// Per-bot NXLink peer delivery (seed 002). Every field is optional so a malformed block never
/// rejects a call; without a `url` (or with `enabled: false`) nothing is sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct NxlinkConfig {
    /// Turn the delivery off without removing the block.
    #[serde(default = "yes", deserialize_with = "enabled_or_default")]
    #[schemars(with = "Option<bool>")]
    pub enabled: bool,
    /// The call-record callback URL (NXLink `callCallbackUrl`).
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub url: String,
    /// `accessKey` header. Without it (or without `secret`) the request is sent unsigned.
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub access_key: String,
    /// Access secret used only to compute `sign`; never sent.
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<String>")]
    pub secret: String,
    /// `bizType` header; default `"100"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biz_type: Option<String>,
    /// `action` header; default `"nxai"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `taskId` when the call's CRM variables carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// `autoFlowId` (the NXLink AI Agent id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_flow_id: Option<i64>,
    /// `autoFlowName`; default the bot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_flow_name: Option<String>,
    /// Display names for `attributes[].name`, keyed by CRM variable key (default: the key).
    #[serde(default, deserialize_with = "null_default")]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub attribute_names: BTreeMap<String, String>,
}

/// `telephony` block: per-bot credentials for the providers whose hang-up is a REST call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TelephonyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twilio: Option<TwilioConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telnyx: Option<TelnyxConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plivo: Option<PlivoConfig>,
}

/// Twilio REST credentials: `POST {api_base}/2010-04-01/Accounts/{account_sid}/Calls/{CallSid}.json`
/// with Basic auth `account_sid:auth_token`. Without `account_sid` the stream's `accountSid` is used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TwilioConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Default `https://api.twilio.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
}

/// Telnyx Call Control key: `POST {api_base}/v2/calls/{call_control_id}/actions/hangup`, Bearer auth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TelnyxConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Default `https://api.telnyx.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
}

/// Plivo credentials: `DELETE {api_base}/v1/Account/{auth_id}/Call/{call_id}/`, Basic auth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlivoConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Default `https://api.plivo.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
}

fn overlay(dst: &mut Option<String>, src: &Option<String>) {
    if let Some(v) = src.as_ref().filter(|v| !v.trim().is_empty()) {
        *dst = Some(v.clone());
    }
}

impl TwilioConfig {
    /// Take every non-empty field of `o` (bot config over worker settings).
    pub fn overlay(&mut self, o: &TwilioConfig) {
        overlay(&mut self.account_sid, &o.account_sid);
        overlay(&mut self.auth_token, &o.auth_token);
        overlay(&mut self.api_base, &o.api_base);
    }
}

impl TelnyxConfig {
    pub fn overlay(&mut self, o: &TelnyxConfig) {
        overlay(&mut self.api_key, &o.api_key);
        overlay(&mut self.api_base, &o.api_base);
    }
}

impl PlivoConfig {
    pub fn overlay(&mut self, o: &PlivoConfig) {
        overlay(&mut self.auth_id, &o.auth_id);
        overlay(&mut self.auth_token, &o.auth_token);
        overlay(&mut self.api_base, &o.api_base);
    }
}

/// The JSON Schema (draft 2020-12) of the runtime bot config as this worker reads it.
/// `null` is accepted wherever a documented default exists.
pub fn config_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().for_deserialize().into_generator();
    let mut v = generator.into_root_schema_for::<BotConfig>().to_value();
    if let Value::Object(o) = &mut v {
        o.insert("$id".into(), Value::String("https://cxbridge.io/schemas/bot-config.schema.json".into()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let cfg = BotConfig::from_json(
            br#"{"session_id":"s1","webhook_url":"http://x","system_prompt":"p","opening_message":"hi"}"#,
        )
        .unwrap();
        assert_eq!(cfg.min_words_interruption, 3);
        assert_eq!(cfg.max_call_duration_seconds, 600);
        assert_eq!(cfg.timezone, "UTC");
        assert!(cfg.tools.is_empty());
    }

    #[test]
    fn documented_null_defaults_are_accepted() {
        let body = br#"{"session_id":"s1","webhook_url":"http://x","system_prompt":null,"opening_message":"hi",
            "timezone":null,"re_engagement":null,"min_words_interruption":null,"max_call_duration_seconds":null,
            "tools":null,"conversation_policy":null,"transfer_numbers":null,"transfer_targets":null,
            "post_call_analysis_prompt":null,"qc_prompt":null,"auto_dispositions":null,"post_call_cache":null,
            "stt":{"provider":"deepgram","api_key":null,"model":null,"language":null,"extra":null},
            "llm":{"provider":"openai","model":"gpt-4.1-mini","temperature":null,"max_tokens":null,"extra":null},
            "tts":{"provider":"cartesia","voice_id":null,"model":null},
            "vad":{"confidence":null,"start_secs":null,"stop_secs":null,"min_volume":null}}"#;
        let cfg = BotConfig::from_json(body).unwrap();
        assert_eq!(cfg.min_words_interruption, 3);
        assert_eq!(cfg.max_call_duration_seconds, 600);
        assert_eq!(cfg.system_prompt, "");
        assert!(cfg.vad.stop_secs.is_none());
    }

    #[test]
    fn end_call_message_defaults_when_absent_null_or_empty() {
        let parse = |extra: &str| {
            let body = format!(r#"{{"session_id":"s1"{extra}}}"#);
            BotConfig::from_json(body.as_bytes()).unwrap().end_call_message
        };
        assert_eq!(parse(""), DEFAULT_END_CALL_MESSAGE);
        assert_eq!(parse(r#","end_call_message":null"#), DEFAULT_END_CALL_MESSAGE);
        assert_eq!(parse(r#","end_call_message":"  ""#), DEFAULT_END_CALL_MESSAGE);
        assert_eq!(parse(r#","end_call_message":"Dhanyavaad. Namaste.""#), "Dhanyavaad. Namaste.");
    }

    #[test]
    fn bad_configs_are_rejected_with_the_field_named() {
        let err = BotConfig::from_json(br#"{"webhook_url":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("session_id"), "{err}");
        let err = BotConfig::from_json(br#"{"session_id":"s","vad":{"confidence":3}}"#).unwrap_err();
        assert!(err.to_string().contains("vad.confidence"), "{err}");
        let err = BotConfig::from_json(br#"{"session_id":"s","min_words_interruption":"three"}"#).unwrap_err();
        assert!(
            err.to_string().contains("min_words_interruption") || err.to_string().contains("invalid type"),
            "{err}"
        );
    }
}
