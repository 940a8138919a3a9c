//! What a search asks for, what it finds, and the bot config fields that shape it.

use serde::{Deserialize, Serialize};

pub use cxb_wire::knowledge::{clamp_unit, KnowledgeSettings, DEFAULT_FALLBACK_MESSAGE, DEFAULT_TOP_K, MAX_TOP_K};

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

impl KnowledgeQuery {
    /// The query a bot with `settings` sends for `text`.
    pub fn for_bot(settings: &KnowledgeSettings, text: &str, bot_id: &str, session_id: &str) -> KnowledgeQuery {
        KnowledgeQuery {
            query: text.to_string(),
            kb_ids: settings.knowledge_kb_ids.clone(),
            top_k: settings.top_k(),
            score_threshold: settings.score_threshold(),
            bot_id: bot_id.to_string(),
            session_id: session_id.to_string(),
        }
        .bounded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
