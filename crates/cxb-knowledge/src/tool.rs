//! The `search_knowledge` tool as the LLM sees it: its definition, running one call, the result
//! text, and the `knowledge_retrieval` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cxb_wire::llm::ToolSpec;
use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use crate::query::finish_hits;
use crate::{Hit, KnowledgeError, KnowledgeQuery, KnowledgeSettings, KnowledgeSource};

/// The tool's name.
pub const TOOL_NAME: &str = "search_knowledge";
/// The `type` of the event recorded for every call.
pub const EVENT_TYPE: &str = "knowledge_retrieval";
/// Default bound on one search, end to end.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default total characters of chunk text in one result (about five local chunks).
pub const DEFAULT_RESULT_BUDGET_CHARS: usize = 6000;
/// Arguments longer than this are refused (the LLM's output is token-bounded; more is a fault).
pub const MAX_ARGUMENTS_BYTES: usize = 64 * 1024;
/// Longest trigger-instructions text put in the tool description, in characters.
const MAX_DESCRIPTION_INSTRUCTIONS_CHARS: usize = 2000;

const DEFAULT_DESCRIPTION: &str = "Search the knowledge base for facts about this business: products, prices, \
     policies, procedures, orders, billing. Call it before answering any such question, and answer only from \
     the passages it returns; never guess.";

/// The tool definition offered to the LLM: one string parameter `query`; the description is the
/// bot's `knowledge_trigger_instructions` when it has them.
pub fn tool_spec(settings: &KnowledgeSettings) -> ToolSpec {
    let description = match settings.knowledge_trigger_instructions.as_deref().map(str::trim) {
        Some(i) if !i.is_empty() => {
            let i: String = i.chars().take(MAX_DESCRIPTION_INSTRUCTIONS_CHARS).collect();
            format!("Search the knowledge base and answer only from the passages it returns. When to use it: {i}")
        }
        _ => DEFAULT_DESCRIPTION.to_string(),
    };
    ToolSpec {
        name: TOOL_NAME.to_string(),
        description,
        parameters: json!({
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "description": "The caller's question as a short, self-contained search query, in the caller's language."
                }
            },
            "required": ["query"]
        }),
    }
}

/// The tool, ready to run for one call (or shared by many: it holds no per-call state).
#[derive(Clone)]
pub struct KnowledgeTool {
    settings: KnowledgeSettings,
    source: Arc<dyn KnowledgeSource>,
    timeout: Duration,
    budget_chars: usize,
}

impl std::fmt::Debug for KnowledgeTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeTool")
            .field("source", &self.source.name())
            .field("timeout", &self.timeout)
            .field("budget_chars", &self.budget_chars)
            .finish_non_exhaustive()
    }
}

/// The outcome of one tool call.
#[derive(Debug)]
pub struct KnowledgeOutcome {
    /// The tool result for the LLM: the results JSON, or an `error: …` line.
    pub content: String,
    /// True when the search failed (the content says why).
    pub is_error: bool,
    /// The query as searched (bounded); empty text when the arguments were unusable.
    pub query: KnowledgeQuery,
    /// The hits, best first, at or above the threshold (all of them, even those the result's
    /// size budget left out of `content`).
    pub hits: Vec<Hit>,
    /// Strict mode found nothing: `content` tells the LLM to say the fallback message.
    pub fallback: bool,
    /// Time from the start of the call to the outcome.
    pub elapsed: Duration,
    /// Why it failed.
    pub error: Option<KnowledgeError>,
}

impl KnowledgeOutcome {
    /// The `knowledge_retrieval` event data (see [`retrieval_event`]).
    pub fn event(&self) -> Value {
        retrieval_event(&self.query, &self.hits, self.elapsed, self.fallback, self.error.as_ref())
    }
}

impl KnowledgeTool {
    /// A tool searching `source` with the bot's `settings`, bounded by [`DEFAULT_TIMEOUT`] and
    /// [`DEFAULT_RESULT_BUDGET_CHARS`].
    pub fn new(settings: KnowledgeSettings, source: Arc<dyn KnowledgeSource>) -> Self {
        KnowledgeTool { settings, source, timeout: DEFAULT_TIMEOUT, budget_chars: DEFAULT_RESULT_BUDGET_CHARS }
    }

    /// Bound each search by `timeout` (at least 1 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Put at most `chars` characters of chunk text in a result (whole chunks; at least one).
    pub fn with_result_budget(mut self, chars: usize) -> Self {
        self.budget_chars = chars.max(1);
        self
    }

    /// The definition to offer the LLM.
    pub fn spec(&self) -> ToolSpec {
        tool_spec(&self.settings)
    }

    /// Runs one call with the LLM's raw `arguments_json`. Never panics: every failure (bad
    /// arguments, a backend error, the timeout) is an `is_error` outcome whose content tells the
    /// LLM what happened.
    pub async fn run(&self, arguments_json: &str, bot_id: &str, session_id: &str) -> KnowledgeOutcome {
        let started = Instant::now();
        let text = match query_argument(arguments_json) {
            Ok(t) => t,
            Err(message) => {
                let query = KnowledgeQuery::for_bot(&self.settings, "", bot_id, session_id);
                return self.failed(query, started, KnowledgeError::InvalidArguments(message));
            }
        };
        let query = KnowledgeQuery::for_bot(&self.settings, &text, bot_id, session_id);
        if query.query.is_empty() {
            return self.failed(query, started, KnowledgeError::EmptyQuery);
        }
        let searched = tokio::time::timeout(self.timeout, self.source.search(&query)).await;
        let hits = match searched {
            Ok(Ok(hits)) => finish_hits(hits, &query),
            Ok(Err(e)) => return self.failed(query, started, e),
            Err(_) => return self.failed(query, started, KnowledgeError::Timeout(self.timeout)),
        };
        let strict_fallback = self.settings.knowledge_strict.then(|| self.settings.fallback_message());
        let content = render_result(&hits, strict_fallback, self.budget_chars);
        let outcome = KnowledgeOutcome {
            content,
            is_error: false,
            fallback: hits.is_empty() && strict_fallback.is_some(),
            query,
            hits,
            elapsed: started.elapsed(),
            error: None,
        };
        debug!(
            source = self.source.name(),
            hits = outcome.hits.len(),
            fallback = outcome.fallback,
            elapsed_ms = outcome.elapsed.as_millis() as u64,
            "knowledge search done"
        );
        outcome
    }

    fn failed(&self, query: KnowledgeQuery, started: Instant, error: KnowledgeError) -> KnowledgeOutcome {
        warn!(source = self.source.name(), kind = error.kind(), bot_id = %query.bot_id, "knowledge search failed: {error}");
        KnowledgeOutcome {
            content: format!("error: knowledge search failed: {error}"),
            is_error: true,
            query,
            hits: Vec::new(),
            fallback: false,
            elapsed: started.elapsed(),
            error: Some(error),
        }
    }
}

/// The `query` argument: `{"query": "…"}` (a bare JSON string is accepted too).
fn query_argument(arguments_json: &str) -> Result<String, String> {
    if arguments_json.len() > MAX_ARGUMENTS_BYTES {
        return Err(format!("the arguments are larger than {MAX_ARGUMENTS_BYTES} bytes"));
    }
    match serde_json::from_str::<Value>(arguments_json.trim()) {
        Ok(Value::Object(o)) => match o.get("query") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Null) | None => Err("missing \"query\"".into()),
            Some(_) => Err("\"query\" must be a string".into()),
        },
        Ok(Value::String(s)) => Ok(s),
        Ok(_) => Err("expected a JSON object {\"query\": \"…\"}".into()),
        Err(e) => Err(format!("the arguments are not valid JSON (line {}, column {})", e.line(), e.column())),
    }
}

/// The tool result for hits already filtered and sorted (best first):
/// `{"results": [{"text", "title"?, "score", "kb_id"}]}` with chunk texts verbatim, as many whole
/// chunks as fit in `budget_chars` characters of text (always the first one; alone over the
/// budget, it is cut there and ends with `…`).
///
/// No hits: with `strict_fallback` (strict mode's message) the result tells the LLM to say that
/// message and nothing else; without it, that nothing was found.
pub fn render_result(hits: &[Hit], strict_fallback: Option<&str>, budget_chars: usize) -> String {
    if hits.is_empty() {
        let v = match strict_fallback {
            Some(message) => json!({
                "results": [],
                "instruction": "Nothing relevant was found in the knowledge base. Do not answer from your own \
                    knowledge and do not guess: reply to the caller with exactly the fallback_message.",
                "fallback_message": message,
            }),
            None => json!({"results": [], "note": "Nothing relevant was found in the knowledge base."}),
        };
        return v.to_string();
    }
    let mut used = 0usize;
    let mut results = Vec::new();
    for (i, hit) in hits.iter().enumerate() {
        let chars = hit.text.chars().count();
        let text = if i == 0 && chars > budget_chars {
            let mut cut: String = hit.text.chars().take(budget_chars.saturating_sub(1)).collect();
            cut.push('…');
            cut
        } else if used + chars > budget_chars {
            break;
        } else {
            hit.text.clone()
        };
        used += chars;
        let mut item = Map::new();
        item.insert("text".into(), Value::String(text));
        if let Some(title) = &hit.title {
            item.insert("title".into(), Value::String(title.clone()));
        }
        item.insert("score".into(), json!(round3(hit.score)));
        item.insert("kb_id".into(), Value::String(hit.kb_id.clone()));
        results.push(Value::Object(item));
    }
    json!({ "results": results }).to_string()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The `knowledge_retrieval` event data:
/// `{"query", "kb_ids", "hits": [{"chunk_id", "document_id", "kb_id", "score", "title"?}],
/// "top_score"?, "elapsed_ms"}`, plus `"fallback": true` when strict mode found nothing and
/// `"error"`, `"error_kind"` when the search failed. Chunk texts are left out (they are in the
/// knowledge base; the results payload stays small). Absent values are omitted, never `null`.
pub fn retrieval_event(
    query: &KnowledgeQuery,
    hits: &[Hit],
    elapsed: Duration,
    fallback: bool,
    error: Option<&KnowledgeError>,
) -> Value {
    let hit_list: Vec<Value> = hits
        .iter()
        .map(|h| {
            let mut o = Map::new();
            o.insert("chunk_id".into(), json!(h.chunk_id));
            o.insert("document_id".into(), json!(h.document_id));
            o.insert("kb_id".into(), json!(h.kb_id));
            o.insert("score".into(), json!(round3(h.score)));
            if let Some(t) = &h.title {
                o.insert("title".into(), json!(t));
            }
            Value::Object(o)
        })
        .collect();
    let mut o = Map::new();
    o.insert("query".into(), json!(query.query));
    o.insert("kb_ids".into(), json!(query.kb_ids));
    o.insert("hits".into(), Value::Array(hit_list));
    if let Some(top) = hits.iter().map(|h| h.score).reduce(f64::max) {
        o.insert("top_score".into(), json!(round3(top)));
    }
    o.insert("elapsed_ms".into(), json!(elapsed.as_millis() as u64));
    if fallback {
        o.insert("fallback".into(), Value::Bool(true));
    }
    if let Some(e) = error {
        o.insert("error".into(), json!(e.to_string()));
        o.insert("error_kind".into(), json!(e.kind()));
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        assert_eq!(query_argument(r#"{"query":"refund"}"#), Ok("refund".to_string()));
        assert_eq!(query_argument(r#""refund""#), Ok("refund".to_string()));
        assert_eq!(query_argument(r#"{"q":"x"}"#), Err("missing \"query\"".to_string()));
        assert_eq!(query_argument(r#"{"query":5}"#), Err("\"query\" must be a string".to_string()));
        assert!(query_argument("[1]").is_err_and(|e| e.contains("expected a JSON object")));
        assert!(query_argument("{").is_err_and(|e| e.contains("not valid JSON")));
        assert!(query_argument(&"x".repeat(MAX_ARGUMENTS_BYTES + 1)).is_err_and(|e| e.contains("larger than")));
    }
}
