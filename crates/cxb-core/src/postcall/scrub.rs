//! The `pipeline_config` diagnostic snapshot, with every secret removed.
//!
//! Three layers, so a secret in an unexpected place still does not leak:
//! 1. an allow-list: only provider blocks, VAD, timings, tool/transfer names and post-call
//!    switches are copied — never prompts, and never `nxlink`;
//! 2. any object key that names a credential (`api_key`, `secret`, `token`, `password`,
//!    `authorization`, `access_key`, `signature`, `cookie`, …) is dropped, at any depth;
//! 3. every string value is cleaned: URL user-info and credential-like query parameters are
//!    redacted, and any occurrence of a secret known from the config (API keys, NXLink secret,
//!    credential-named values anywhere in the config) is replaced by `[redacted]`.

use cxb_wire::BotConfig;
use serde_json::{json, Map, Value};

const REDACTED: &str = "[redacted]";

/// Normalised (lowercase, alphanumerics only) key fragments that mark a credential.
const SECRET_FRAGMENTS: &[&str] = &[
    "apikey",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "privatekey",
    "accesskey",
    "authorization",
    "bearer",
    "cookie",
    "signature",
    "clientsecret",
];
/// Whole normalised keys that are credentials.
const SECRET_KEYS: &[&str] = &["key", "auth", "sign", "sig", "pwd", "xapikey", "apitoken", "jwt", "session_token"];
/// Keys ending in `key` that are not credentials.
const SAFE_KEY_SUFFIXED: &[&str] = &["promptcachekey", "cachekey", "recordingkey", "key_term", "idempotencykey"];

fn normalise(key: &str) -> String {
    key.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

/// Does this object key name a credential?
pub fn is_secret_key(key: &str) -> bool {
    let n = normalise(key);
    if n.is_empty() {
        return false;
    }
    if SECRET_KEYS.iter().any(|k| normalise(k) == n) || SECRET_FRAGMENTS.iter().any(|f| n.contains(f)) {
        return true;
    }
    // access_token, auth_token, id_token … but not max_tokens / prompt_tokens counts.
    if n.ends_with("token") {
        return true;
    }
    n.ends_with("key") && !SAFE_KEY_SUFFIXED.iter().any(|s| normalise(s) == n)
}

/// Collect every string stored under a credential-named key anywhere in `v`.
fn collect_secret_values(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if is_secret_key(k) {
                    collect_strings(x, out);
                } else {
                    collect_secret_values(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_secret_values(x, out)),
        _ => {}
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            // A bare "Bearer xyz" must also hide "xyz" on its own.
            for part in std::iter::once(s.as_str()).chain(s.split_whitespace()) {
                if part.trim().len() >= 4 {
                    out.push(part.trim().to_string());
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// Every secret value the config holds: provider API keys, the NXLink secret and access key,
/// and any string under a credential-named key (tools' headers, provider `extra`, …).
pub fn known_secrets(cfg: &BotConfig) -> Vec<String> {
    let mut out = Vec::new();
    for s in [&cfg.stt.api_key, &cfg.llm.api_key, &cfg.tts.api_key] {
        if s.trim().len() >= 4 {
            out.push(s.trim().to_string());
        }
    }
    if let Some(n) = &cfg.nxlink {
        for s in [&n.secret, &n.access_key] {
            if s.trim().len() >= 4 {
                out.push(s.trim().to_string());
            }
        }
    }
    if let Ok(v) = serde_json::to_value(cfg) {
        collect_secret_values(&v, &mut out);
    }
    // Longest first, so a secret containing another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// Remove credential keys at any depth and clean every string.
pub fn scrub(v: &mut Value, secrets: &[String]) {
    match v {
        Value::Object(o) => {
            o.retain(|k, _| !is_secret_key(k));
            o.values_mut().for_each(|x| scrub(x, secrets));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| scrub(x, secrets)),
        Value::String(s) => {
            let cleaned = scrub_str(s, secrets);
            if cleaned != *s {
                *s = cleaned;
            }
        }
        _ => {}
    }
}

fn scrub_str(s: &str, secrets: &[String]) -> String {
    let mut out = s.to_string();
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    if out.contains("://") {
        out = scrub_url(&out);
    }
    out
}

/// Redact user-info and credential-like query parameters of a URL string.
fn scrub_url(s: &str) -> String {
    let Ok(mut url) = url::Url::parse(s) else { return s.to_string() };
    let mut changed = false;
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("");
        let _ = url.set_password(None);
        changed = true;
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        if pairs.iter().any(|(k, _)| is_secret_key(k)) {
            let mut q = url.query_pairs_mut();
            q.clear();
            for (k, v) in &pairs {
                q.append_pair(k, if is_secret_key(k) { REDACTED } else { v });
            }
            drop(q);
            changed = true;
        }
    }
    if changed {
        url.to_string()
    } else {
        s.to_string()
    }
}

fn block(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The diagnostic snapshot of the pipeline a call ran with (documented in proto/README.md).
pub fn pipeline_config(cfg: &BotConfig, transport: &str) -> Map<String, Value> {
    let tool_names: Vec<Value> = cfg
        .tools
        .iter()
        .filter_map(|t| t.get("function").and_then(|f| f.get("name")).or_else(|| t.get("name")).and_then(Value::as_str))
        .map(|n| Value::String(n.to_string()))
        .collect();
    let targets: Vec<Value> = cfg
        .transfer_targets
        .iter()
        .map(|t| {
            json!({"id": t.id, "label": t.label, "method": t.method, "type": t.kind,
                   "is_default": t.is_default, "enabled": t.enabled})
        })
        .collect();
    let prompt_parts = cfg.prompt_parts.as_ref().and_then(Value::as_object).map(|p| {
        let mut m = Map::new();
        for k in ["mode", "cache_enabled", "static_version", "prompt_cache_retention"] {
            if let Some(v) = p.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
        Value::Object(m)
    });
    let auto_keys: Vec<Value> = cfg
        .auto_dispositions
        .as_ref()
        .map(|m| m.keys().map(|k| Value::String(k.clone())).collect())
        .unwrap_or_default();
    let mut v = json!({
        "worker_version": env!("CARGO_PKG_VERSION"),
        "transport": transport,
        "bot_id": cfg.bot_id,
        "timezone": cfg.timezone,
        "stt": block(&cfg.stt),
        "llm": block(&cfg.llm),
        "tts": block(&cfg.tts),
        "vad": block(&cfg.vad),
        "min_words_interruption": cfg.min_words_interruption,
        "max_call_duration_seconds": cfg.max_call_duration_seconds,
        "system_prompt_chars": cfg.system_prompt.chars().count(),
        "opening_message_chars": cfg.opening_message.chars().count(),
        "re_engagement": cfg.re_engagement.is_some(),
        "conversation_policy": cfg.conversation_policy.is_some(),
        "tools": tool_names,
        "transfer_targets": targets,
        "transfer_numbers": cfg.transfer_numbers.keys().collect::<Vec<_>>(),
        "prompt_parts": prompt_parts,
        "post_call": {
            "analysis_prompt": cfg.post_call_analysis_prompt.as_deref().is_some_and(|p| !p.trim().is_empty()),
            "qc_prompt": cfg.qc_prompt.as_deref().is_some_and(|p| !p.trim().is_empty()),
            "callback_detection_enabled": cfg.callback_detection_enabled,
            "cache_enabled": cfg.post_call_cache_enabled,
            "cache_version": cfg.post_call_cache_version,
            "auto_dispositions": auto_keys,
            "nxlink": cfg.nxlink.as_ref().is_some_and(|n| n.enabled && !n.url.trim().is_empty()),
        },
    });
    scrub(&mut v, &known_secrets(cfg));
    match v {
        Value::Object(m) => crate::results::strip_nulls(m),
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_keys() {
        for k in [
            "api_key",
            "apiKey",
            "API-KEY",
            "x-api-key",
            "secret",
            "client_secret",
            "access_token",
            "token",
            "Authorization",
            "password",
            "accessKey",
            "sign",
            "private_key",
            "aws_secret_access_key",
            "key",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["max_tokens", "prompt_tokens", "model", "voice_id", "prompt_cache_key", "keyterm", "language"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn urls_lose_userinfo_and_credential_parameters() {
        assert_eq!(
            scrub_url("https://user:pw@api.example.com/v1?key=abc&model=m"),
            "https://api.example.com/v1?key=%5Bredacted%5D&model=m"
        );
        assert_eq!(scrub_url("wss://api.deepgram.com"), "wss://api.deepgram.com");
    }
}
