//! The call-results payload (`CallResultsPayload`, contract §5).
//!
//! CXB API stores it with `exclude_none=True`, so an absent field must be *omitted*, never `null`:
//! every optional field carries `skip_serializing_if`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who or what ended the call (contract §5). Serialised exactly as documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    /// The caller.
    Customer,
    /// The voice bot.
    Bot,
}

/// One transcript line: speaker + text + timestamp (contract §5; exact keys are our decision §13.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// One entry of `events`: a typed record with a free-form `data` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// The results body POSTed to `webhook_url`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    pub disconnected_by: Option<DisconnectedBy>,
    #[serde(default)]
    pub transcript: Vec<TranscriptEntry>,
    #[serde(default)]
    pub events: Vec<CallEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intents: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_call_analysis: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc_analysis: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_samples: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metrics: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_cache_summary: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_event: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was_transferred: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_failed_reason: Option<String>,
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
