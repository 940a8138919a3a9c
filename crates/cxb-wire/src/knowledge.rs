//! The knowledge-base fields of a bot config (contract §4.1): whether the bot offers the
//! `search_knowledge` tool, which knowledge bases it searches and how. Read leniently: every
//! field optional, `null` meaning the default, out-of-range numbers clamped rather than refused
//! (a bot must not fail a call over a knowledge setting).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Results per search: default and allowed range (contract §4.1 `knowledge_top_k`).
pub const DEFAULT_TOP_K: u32 = 3;
/// Largest `top_k`.
pub const MAX_TOP_K: u32 = 10;

/// The knowledge fields of a bot config (contract §4.1): every one optional, `null` meaning the
/// default, out-of-range numbers clamped rather than refused (a bot must not fail a call over
/// a knowledge setting).
///
/// [`crate::BotConfig`] flattens it; [`KnowledgeSettings::from_config`] reads it from any JSON.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KnowledgeSettings {
    /// Offer the `search_knowledge` tool.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub knowledge_enabled: bool,
    /// When the LLM should search; becomes the tool description.
    #[serde(default, deserialize_with = "lenient_opt_string", skip_serializing_if = "Option::is_none")]
    pub knowledge_trigger_instructions: Option<String>,
    /// Knowledge bases to search (strings or numbers; a single id is accepted too).
    #[serde(default, deserialize_with = "lenient_ids")]
    pub knowledge_kb_ids: Vec<String>,
    /// Results per search, 1..=10 (default 3).
    #[serde(default, deserialize_with = "lenient_top_k", skip_serializing_if = "Option::is_none")]
    pub knowledge_top_k: Option<u32>,
    /// Minimum score, 0..=1 (default 0).
    #[serde(default, deserialize_with = "lenient_opt_f64", skip_serializing_if = "Option::is_none")]
    pub knowledge_score_threshold: Option<f64>,
    /// With no result at or above the threshold, answer with the fallback message.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub knowledge_strict: bool,
    /// What to say when strict and nothing was found.
    #[serde(default, deserialize_with = "lenient_opt_string", skip_serializing_if = "Option::is_none")]
    pub knowledge_fallback_message: Option<String>,
}

/// Said in strict mode when nothing was found and the bot sets no fallback message.
pub const DEFAULT_FALLBACK_MESSAGE: &str = "I'm sorry, I don't have that information right now.";

impl KnowledgeSettings {
    /// Reads the knowledge fields from a bot config JSON object; anything missing or unreadable
    /// takes its default.
    pub fn from_config(config: &Value) -> KnowledgeSettings {
        serde_json::from_value(config.clone()).unwrap_or_default()
    }

    /// `top_k` within 1..=10.
    pub fn top_k(&self) -> u32 {
        self.knowledge_top_k.map_or(DEFAULT_TOP_K, |k| k.clamp(1, MAX_TOP_K))
    }

    /// The threshold within 0..=1.
    pub fn score_threshold(&self) -> f64 {
        self.knowledge_score_threshold.map_or(0.0, clamp_unit)
    }

    /// The fallback message (the default when unset or blank).
    pub fn fallback_message(&self) -> &str {
        match self.knowledge_fallback_message.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() => m,
            _ => DEFAULT_FALLBACK_MESSAGE,
        }
    }
}

/// `x` in 0..=1; NaN is 0.
pub fn clamp_unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"),
        _ => false,
    })
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if !s.trim().is_empty() => Some(s),
        _ => None,
    })
}

/// A number (or numeric string), rounded and clamped to 1..=10.
fn lenient_top_k<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(lenient_number(&Value::deserialize(d)?).map(|k| k.round().clamp(1.0, MAX_TOP_K as f64) as u32))
}

fn lenient_opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(lenient_number(&Value::deserialize(d)?))
}

/// A number, or a string holding one.
pub fn lenient_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

/// An id: a non-empty string, or a number written as text.
pub fn lenient_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn lenient_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items.iter().filter_map(lenient_id).collect(),
        other => lenient_id(&other).into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_read_liberally_with_defaults() {
        let s = KnowledgeSettings::from_config(&json!({
            "knowledge_enabled": true, "knowledge_kb_ids": ["kb-1", 42, "", null],
            "knowledge_top_k": "25", "knowledge_score_threshold": 1.7, "knowledge_strict": "yes",
            "knowledge_fallback_message": "  ", "knowledge_trigger_instructions": null,
            "system_prompt": "unrelated"
        }));
        assert!(s.knowledge_enabled && s.knowledge_strict);
        assert_eq!(s.knowledge_kb_ids, ["kb-1", "42"]);
        assert_eq!((s.top_k(), s.score_threshold()), (10, 1.0));
        assert_eq!(s.fallback_message(), DEFAULT_FALLBACK_MESSAGE);
        assert_eq!(s.knowledge_trigger_instructions, None);

        let d = KnowledgeSettings::from_config(&json!({"knowledge_top_k": null, "knowledge_kb_ids": "solo"}));
        assert!(!d.knowledge_enabled);
        assert_eq!((d.top_k(), d.score_threshold(), d.knowledge_kb_ids.clone()), (3, 0.0, vec!["solo".to_string()]));
        assert_eq!(KnowledgeSettings::from_config(&json!("not an object")), KnowledgeSettings::default());
        assert_eq!(KnowledgeSettings::from_config(&json!({"knowledge_top_k": 0})).top_k(), 1);
        assert_eq!(KnowledgeSettings::from_config(&json!({"knowledge_score_threshold": -3})).score_threshold(), 0.0);
    }

    #[test]
    fn settings_can_be_flattened_into_a_config_type() {
        #[derive(Deserialize, Serialize)]
        struct Config {
            session_id: String,
            #[serde(flatten)]
            knowledge: KnowledgeSettings,
        }
        let c: Config = serde_json::from_value(json!({"session_id": "s", "knowledge_enabled": true,
            "knowledge_top_k": "4", "knowledge_kb_ids": [7], "other": null}))
        .expect("parses");
        assert_eq!((c.session_id.as_str(), c.knowledge.knowledge_enabled, c.knowledge.top_k()), ("s", true, 4));
        // Absent values stay absent when written back (no nulls).
        assert_eq!(
            serde_json::to_value(&c).unwrap_or_default(),
            json!({"session_id": "s", "knowledge_enabled": true, "knowledge_kb_ids": ["7"], "knowledge_top_k": 4,
                "knowledge_strict": false})
        );
    }
}
