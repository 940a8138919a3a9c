//! Streaming chat completions. API (vendors: [`crate::registry`]; OpenAI-compatible SSE,
//! wire-protocols §4).
//!
//! ```text
//! let client = LlmClient::new(LlmClientConfig { .. });   // shared across calls (connection pool)
//! let mut stream = client.stream(&params, request);        // spawns one task; dropping `stream` aborts it
//! while let Some(ev) = stream.recv().await { ... }        // LlmEvent; Done or Error is last
//! ```

use std::time::Duration;

use cxb_wire::llm::{ChatRequest, ToolCall, Usage};
use tokio::sync::mpsc;

use crate::registry::{self, Client, Kind, Vendor};
use crate::ProviderError;

/// Per-call resolved parameters from the bot config's `llm` block.
#[derive(Debug, Clone)]
pub struct LlmParams {
    /// An LLM vendor name or alias of the registry (`openai`: any OpenAI-compatible endpoint).
    pub provider: String,
    /// API root, e.g. `https://api.openai.com/v1` (the client adds `/chat/completions`).
    pub base_url: String,
    pub api_key: String,
    /// Bound on the wait for the response headers and for each following chunk.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    /// A content delta.
    Token(String),
    /// All tool calls of the response, reassembled, emitted once at the end before `Done`.
    ToolCalls(Vec<ToolCall>),
    Done {
        finish_reason: Option<String>,
        usage: Option<Usage>,
    },
    Error(ProviderError),
}

/// Process-wide client (one HTTP connection pool).
#[derive(Debug, Clone)]
pub struct LlmClient {
    pub(crate) http: reqwest::Client,
}

impl Default for LlmClient {
    fn default() -> Self {
        Self::new()
    }
}

impl LlmClient {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .expect("reqwest client builds with static settings");
        Self { http }
    }

    /// Start one streaming request with the vendor the registry resolves `params.provider` to
    /// (an unknown one yields a single `Error`). A request without a model gets the vendor's
    /// default. The returned stream aborts the request when dropped.
    pub fn stream(&self, params: &LlmParams, mut request: ChatRequest) -> LlmStream {
        let (tx, rx) = mpsc::channel(256);
        let task = match registry::resolve(Kind::Llm, &params.provider, &request.model) {
            Ok(Vendor { client: Client::Llm(run), default_model, .. }) => {
                if request.model.trim().is_empty() {
                    request.model = default_model.to_string();
                }
                tokio::spawn(run(self.http.clone(), params.clone(), request, tx))
            }
            Ok(_) => unreachable!("resolve(Kind::Llm, ..) yields LLM vendors"),
            Err(e) => {
                let _ = tx.try_send(LlmEvent::Error(e));
                tokio::spawn(async {})
            }
        };
        LlmStream { rx, task }
    }
}

/// Receiver of one request's events. Dropping it cancels the request.
#[derive(Debug)]
pub struct LlmStream {
    rx: mpsc::Receiver<LlmEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl LlmStream {
    pub async fn recv(&mut self) -> Option<LlmEvent> {
        self.rx.recv().await
    }
}

impl Drop for LlmStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
