//! Fetching the bot config (contract §3 row 1, §13.3): from CXB API when a config URL is set,
//! else from the local bot directory (embedded default).

use std::path::PathBuf;
use std::time::Duration;

use cxb_wire::BotConfig;
use serde_json::{Map, Value};

use crate::auth;

/// Why a config could not be had. Each variant maps to a documented call rejection.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFetchError {
    #[error("unknown bot (404)")]
    NotFound,
    #[error("outside active hours (503): {0}")]
    OutsideHours(String),
    #[error("secret mismatch (403)")]
    Forbidden,
    #[error("config endpoint answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("config fetch timed out after {0:?}")]
    Timeout(Duration),
    #[error("config endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Invalid(String),
}

impl ConfigFetchError {
    /// WebSocket close code for a rejected call: 1008 for policy refusals, 1013 (try again
    /// later) for outside hours / unavailable, 1011 for faults.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::NotFound | Self::Forbidden => 1008,
            Self::OutsideHours(_) => 1013,
            _ => 1011,
        }
    }

    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::OutsideHours(_) => "outside_hours",
            Self::Forbidden => "forbidden",
            Self::Status { .. } => "status",
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// Where configs come from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    Api { base_url: String, secret: Option<String>, timeout: Duration, http: reqwest::Client },
    Local { dir: PathBuf },
}

/// The identifying bits of a call, sent with the fetch.
#[derive(Debug, Clone)]
pub struct CallLookup<'a> {
    pub bot_id: &'a str,
    pub caller_id: &'a str,
    pub stream_id: &'a str,
    pub connected_event: &'a Map<String, Value>,
}

/// Bot ids become a URL path segment and a file name: keep them boring.
pub fn valid_bot_id(bot_id: &str) -> bool {
    !bot_id.is_empty()
        && bot_id.len() <= 128
        && bot_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !bot_id.starts_with('.')
}

impl ConfigSource {
    pub async fn fetch(&self, call: &CallLookup<'_>) -> Result<BotConfig, ConfigFetchError> {
        if !valid_bot_id(call.bot_id) {
            return Err(ConfigFetchError::NotFound);
        }
        match self {
            ConfigSource::Api { base_url, secret, timeout, http } => {
                let url = format!("{}/{}", base_url.trim_end_matches('/'), urlencoding::encode(call.bot_id));
                let connected = serde_json::to_string(call.connected_event).unwrap_or_else(|_| "{}".into());
                let req = http
                    .get(&url)
                    .query(&[
                        ("caller_id", call.caller_id),
                        ("stream_id", call.stream_id),
                        ("connected_event", connected.as_str()),
                    ])
                    .timeout(*timeout);
                let resp = auth::with_secret(req, secret.as_deref()).send().await.map_err(|e| {
                    if e.is_timeout() {
                        ConfigFetchError::Timeout(*timeout)
                    } else {
                        ConfigFetchError::Unreachable(e.to_string())
                    }
                })?;
                let status = resp.status().as_u16();
                let body = tokio::time::timeout(*timeout, resp.bytes())
                    .await
                    .map_err(|_| ConfigFetchError::Timeout(*timeout))?
                    .map_err(|e| ConfigFetchError::Unreachable(e.to_string()))?;
                match status {
                    200 => BotConfig::from_json(&body).map_err(|e| ConfigFetchError::Invalid(e.to_string())),
                    404 => Err(ConfigFetchError::NotFound),
                    503 => Err(ConfigFetchError::OutsideHours(detail(&body))),
                    403 => Err(ConfigFetchError::Forbidden),
                    other => Err(ConfigFetchError::Status { status: other, body: detail(&body) }),
                }
            }
            ConfigSource::Local { dir } => {
                let path = dir.join(format!("{}.json", call.bot_id));
                let bytes = match tokio::fs::read(&path).await {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ConfigFetchError::NotFound),
                    Err(e) => return Err(ConfigFetchError::Invalid(format!("{}: {e}", path.display()))),
                };
                // Local bot files are templates: each call gets a fresh session id.
                let mut v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ConfigFetchError::Invalid(format!("{}: {e}", path.display())))?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("session_id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
                    o.entry("bot_id").or_insert_with(|| Value::String(call.bot_id.to_string()));
                }
                let body = serde_json::to_vec(&v).unwrap_or_default();
                BotConfig::from_json(&body).map_err(|e| ConfigFetchError::Invalid(format!("{}: {e}", path.display())))
            }
        }
    }
}

fn detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let d = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.to_string());
    d.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_ids_cannot_escape_the_bot_dir() {
        assert!(valid_bot_id("demo"));
        assert!(valid_bot_id("bot_1.v2"));
        for bad in ["", "../etc/passwd", "a/b", ".hidden", "a b", &"x".repeat(200)] {
            assert!(!valid_bot_id(bad), "{bad}");
        }
    }
}
