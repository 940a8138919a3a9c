//! `search_knowledge`: answering a knowledge query for the LLM (contract §3 row 8, §4.1, §7).
//!
//! The original's bots answer from tenant knowledge bases through a built-in `search_knowledge`
//! tool; CXB API owns ingestion and search. This crate gives the worker that tool over one of two
//! backends, both behind [`KnowledgeSource`] (hold one `Arc<dyn KnowledgeSource>` per process):
//!
//! * [`ApiKnowledge`]: `POST {api_base}/knowledge/search` on CXB API, with both secret headers
//!   ([`api`] has the request and response shapes);
//! * [`LocalKnowledge`]: for the embedded default (no CXB API), a BM25 index in memory over a
//!   folder per knowledge base of Markdown and text files, re-indexed when they change ([`local`]
//!   has the layout and how scores map to 0–1).
//!
//! The tool ([`KnowledgeTool`]) is offered when the bot config's `knowledge_enabled` is true
//! ([`KnowledgeSettings`] reads the `knowledge_*` fields). The LLM calls it with `{"query": "…"}`
//! and gets
//!
//! ```json
//! {"results": [{"text": "…chunk, verbatim…", "title": "Returns", "score": 0.82, "kb_id": "demo"}]}
//! ```
//!
//! best first, at most `knowledge_top_k`, none under `knowledge_score_threshold`, and at most a
//! budget of characters (whole chunks). With `knowledge_strict` and nothing found, the result tells
//! the LLM to say `knowledge_fallback_message` instead. A failed or timed-out search is an error
//! result (`error: knowledge search failed: …`), never a panic. Every call yields a
//! `knowledge_retrieval` event ([`KnowledgeOutcome::event`]).
//!
//! ```no_run
//! # async fn demo(config_json: serde_json::Value) -> Result<(), cxb_knowledge::KnowledgeError> {
//! use std::sync::Arc;
//! use cxb_knowledge::{KnowledgeSettings, KnowledgeSource, KnowledgeTool, LocalKnowledge};
//!
//! let source: Arc<dyn KnowledgeSource> = Arc::new(LocalKnowledge::open("assets/knowledge")?);
//! let settings = KnowledgeSettings::from_config(&config_json);
//! if settings.knowledge_enabled {
//!     let tool = KnowledgeTool::new(settings, source);
//!     let spec = tool.spec(); // offer it to the LLM
//!     let outcome = tool.run(r#"{"query":"when will my order arrive"}"#, "demo", "session-1").await;
//!     // outcome.content -> the tool message; outcome.event() -> the knowledge_retrieval event data
//! }
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod chunk;
mod error;
pub mod local;
mod query;
pub mod tokenizer;
mod tool;

use futures_util::future::BoxFuture;

pub use api::ApiKnowledge;
pub use error::KnowledgeError;
pub use local::{LocalKnowledge, LocalLimits, RefreshReport, DEFAULT_KNOWLEDGE_DIR, DEFAULT_REFRESH_INTERVAL};
pub use query::{
    Hit, KnowledgeQuery, KnowledgeSettings, DEFAULT_FALLBACK_MESSAGE, DEFAULT_TOP_K, MAX_KB_IDS, MAX_QUERY_CHARS,
    MAX_TOP_K,
};
pub use tool::{
    render_result, retrieval_event, tool_spec, KnowledgeOutcome, KnowledgeTool, DEFAULT_RESULT_BUDGET_CHARS,
    DEFAULT_TIMEOUT, EVENT_TYPE, TOOL_NAME,
};

/// A place knowledge queries are answered: CXB API or the local index.
pub trait KnowledgeSource: Send + Sync {
    /// The hits for `query`, best first, at most `top_k`, none under `score_threshold`.
    fn search<'a>(&'a self, query: &'a KnowledgeQuery) -> BoxFuture<'a, Result<Vec<Hit>, KnowledgeError>>;

    /// A short label for logs and telemetry (`cxb_api`, `local`).
    fn name(&self) -> &'static str;
}
