//! What a search asks for, what it finds, and the bot config fields that shape it.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Results per search: default and allowed range (contract §4.1 `knowledge_top_k`).
pub const DEFAULT_TOP_K: u32 = 3;
/// Largest `top_k`.
pub const MAX_TOP_K: u32 = 10;
/// Longest query sent to a backend, in characters (a longer one is cut at a character boundary:
/// a query is the LLM's rephrasing of a spoken question, so more than this is a malfunction).
pub const MAX_QUERY_CHARS: usize = 1000;
/// Most knowledge base ids one search may name.
pub const MAX_KB_IDS: usize = 50;

/// One knowledge search.
///
/// Serialises to the body of `POST {api_base}/knowledge/search`:
/// `{"query","kb_ids","top_k","score_threshold","bot_id","session_id"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnowledgeQuery {
    /// The text to search for.
    pub query: String,
    /// Knowledge bases to search. Empty: the backend decides from `bot_id` (CXB API: the bot's
    /// knowledge bases; the local index: the knowledge base named like the bot).
    pub kb_ids: Vec<String>,
    /// Most results wanted, 1..=10.
    pub top_k: u32,
    /// Results scoring below this (0..=1) are dropped.
    pub score_threshold: f64,
    /// The bot the call runs (may be empty).
    pub bot_id: String,
    /// The call's session id (may be empty).
    pub session_id: String,
}

impl KnowledgeQuery {
    /// A query with the default `top_k` and no threshold.
    pub fn new(query: impl Into<String>, kb_ids: Vec<String>) -> Self {
        KnowledgeQuery {
            query: query.into(),
            kb_ids,
            top_k: DEFAULT_TOP_K,
            score_threshold: 0.0,
            bot_id: String::new(),
            session_id: String::new(),
        }
    }

    /// The same query with every field inside its bounds: the text trimmed and cut to
    /// [`MAX_QUERY_CHARS`], `top_k` in 1..=10, the threshold in 0..=1 (NaN → 0), at most
    /// [`MAX_KB_IDS`] distinct non-empty kb ids. Backends call this before searching.
    pub fn bounded(&self) -> KnowledgeQuery {
        let text = self.query.trim();
        let text = match text.char_indices().nth(MAX_QUERY_CHARS) {
            Some((cut, _)) => &text[..cut],
            None => text,
        };
        let mut kb_ids: Vec<String> = Vec::new();
        for id in self.kb_ids.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
            if kb_ids.len() < MAX_KB_IDS && !kb_ids.iter().any(|k| k == id) {
                kb_ids.push(id.to_string());
            }
        }
        KnowledgeQuery {
            query: text.to_string(),
            kb_ids,
            top_k: self.top_k.clamp(1, MAX_TOP_K),
            score_threshold: clamp_unit(self.score_threshold),
            bot_id: self.bot_id.clone(),
            session_id: self.session_id.clone(),
        }
    }
}

/// `x` in 0..=1; NaN is 0.
pub(crate) fn clamp_unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// One retrieved chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The chunk's id (unique within its knowledge base).
    pub chunk_id: String,
    /// The document the chunk comes from.
    pub document_id: String,
    /// The knowledge base the document belongs to.
    pub kb_id: String,
    /// The chunk text, verbatim.
    pub text: String,
    /// Relevance in 0..=1 (higher is better).
    pub score: f64,
    /// The document's title, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// Orders hits best first (ties keep their order), drops those under `threshold` and keeps
/// `top_k`. Both backends finish with this, so a backend that ignores the threshold or returns
/// extra results still yields what the query asked for.
pub(crate) fn finish_hits(mut hits: Vec<Hit>, query: &KnowledgeQuery) -> Vec<Hit> {
    hits.retain(|h| h.score >= query.score_threshold);
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    hits.truncate(query.top_k as usize);
    hits
}

/// The knowledge fields of a bot config (contract §4.1): every one optional, `null` meaning the
/// default, out-of-range numbers clamped rather than refused (a bot must not fail a call over
/// a knowledge setting).
///
/// Read them from the config JSON with [`KnowledgeSettings::from_config`], or flatten this struct
/// into a config type (`#[serde(flatten)]`).
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

    /// The query this bot sends for `text`.
    pub fn query(&self, text: &str, bot_id: &str, session_id: &str) -> KnowledgeQuery {
        KnowledgeQuery {
            query: text.to_string(),
            kb_ids: self.knowledge_kb_ids.clone(),
            top_k: self.top_k(),
            score_threshold: self.score_threshold(),
            bot_id: bot_id.to_string(),
            session_id: session_id.to_string(),
        }
        .bounded()
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
    Ok(number(&Value::deserialize(d)?).map(|k| k.round().clamp(1.0, MAX_TOP_K as f64) as u32))
}

fn lenient_opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(number(&Value::deserialize(d)?))
}

/// A number, or a string holding one.
pub(crate) fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

/// An id: a non-empty string, or a number written as text.
pub(crate) fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn lenient_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items.iter().filter_map(id_text).collect(),
        other => id_text(&other).into_iter().collect(),
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

    #[test]
    fn queries_are_bounded() {
        let mut q = KnowledgeQuery::new(format!("  {}  ", "ह".repeat(MAX_QUERY_CHARS + 5)), vec![]);
        q.kb_ids = vec![" a ".into(), "a".into(), "".into(), "b".into()];
        q.top_k = 0;
        q.score_threshold = f64::NAN;
        let b = q.bounded();
        assert_eq!(b.query.chars().count(), MAX_QUERY_CHARS);
        assert_eq!(b.kb_ids, ["a", "b"]);
        assert_eq!((b.top_k, b.score_threshold), (1, 0.0));
        q.top_k = 99;
        q.kb_ids = (0..80).map(|i| i.to_string()).collect();
        assert_eq!(q.bounded().top_k, MAX_TOP_K);
        assert_eq!(q.bounded().kb_ids.len(), MAX_KB_IDS);
    }

    #[test]
    fn the_body_has_the_documented_keys() {
        let mut q = KnowledgeQuery::new("refund policy", vec!["kb1".into()]);
        q.bot_id = "demo".into();
        q.session_id = "s-1".into();
        assert_eq!(
            serde_json::to_value(&q).unwrap_or_default(),
            json!({"query":"refund policy","kb_ids":["kb1"],"top_k":3,"score_threshold":0.0,"bot_id":"demo","session_id":"s-1"})
        );
    }

    #[test]
    fn finishing_sorts_filters_and_truncates() {
        let hit = |id: &str, score: f64| Hit {
            chunk_id: id.into(),
            document_id: "d".into(),
            kb_id: "k".into(),
            text: id.into(),
            score,
            title: None,
        };
        let mut q = KnowledgeQuery::new("x", vec![]);
        q.top_k = 2;
        q.score_threshold = 0.3;
        let out = finish_hits(vec![hit("a", 0.2), hit("b", 0.9), hit("c", 0.5), hit("d", 0.7)], &q);
        assert_eq!(out.iter().map(|h| h.chunk_id.as_str()).collect::<Vec<_>>(), ["b", "d"]);
    }
}
