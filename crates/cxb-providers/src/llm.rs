//! Streaming chat completions with the vendor the registry names ([`crate::registry`]):
//! OpenAI-compatible SSE (wire-protocols §4), the Gemini API and Gemini on Vertex AI (part 2
//! §2–§3), Anthropic Messages (§4).
//!
//! ```text
//! let client = LlmClient::new(LlmClientConfig { .. });   // shared across calls (connection pool)
//! let mut stream = client.stream(&params, request);        // spawns one task; dropping `stream` aborts it
//! while let Some(ev) = stream.recv().await { ... }        // LlmEvent; Done or Error is last
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cxb_wire::llm::{ChatRequest, ToolCall, Usage};
use tokio::sync::mpsc;

use crate::google_auth::GoogleTokens;
pub use crate::google_auth::TokenSettings;
use crate::llm_gemini::GoogleShared;
use crate::prompt_cache::ExplicitCaches;
pub use crate::prompt_cache::{CacheReport, CacheStatus, PromptCacheSettings};
use crate::registry::{self, Client, Kind};
use crate::ProviderError;

/// Per-call resolved parameters from the bot config's `llm` block.
#[derive(Debug, Clone)]
pub struct LlmParams {
    /// An LLM vendor name or alias of the registry: `openai` (any OpenAI-compatible endpoint),
    /// `google` (Gemini API), `google_vertex` (Gemini on Vertex AI), `anthropic`.
    pub provider: String,
    /// API root: `https://api.openai.com/v1` (the client adds `/chat/completions`),
    /// `https://generativelanguage.googleapis.com`, `https://api.anthropic.com` (the client adds
    /// `/v1/messages`). Empty: the vendor's default (Vertex: the location's root).
    pub base_url: String,
    /// The API key; for `google_vertex`, the service-account key JSON (or empty to use
    /// `GOOGLE_APPLICATION_CREDENTIALS`).
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
    /// What the request did with the live prompt cache: once, before `Done` or `Error`, and only
    /// for requests carrying a `prompt_cache` hint.
    Cache(CacheReport),
    /// `finish_reason` in OpenAI's words for every vendor (`stop`, `length`, `tool_calls`,
    /// `content_filter`, or the vendor's own reason in lower case).
    Done {
        finish_reason: Option<String>,
        usage: Option<Usage>,
    },
    Error(ProviderError),
}

/// What a process-wide [`LlmClient`] keeps across calls.
#[derive(Debug, Clone, Default)]
pub struct LlmClientSettings {
    /// Explicit prompt caches (Gemini / Vertex).
    pub prompt_cache: PromptCacheSettings,
    /// Vertex access tokens.
    pub google_tokens: TokenSettings,
    /// The service-account key file for Vertex bots whose config carries no key JSON
    /// (`GOOGLE_APPLICATION_CREDENTIALS`).
    pub google_credentials_file: Option<PathBuf>,
}

impl LlmClientSettings {
    /// Defaults, with `GOOGLE_APPLICATION_CREDENTIALS` from the environment.
    pub fn from_env() -> Self {
        let file = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|v| !v.is_empty()).map(PathBuf::from);
        Self { google_credentials_file: file, ..Self::default() }
    }
}

/// Process-wide client: one HTTP connection pool, and the state every call shares (Vertex access
/// tokens, explicit prompt caches).
#[derive(Debug, Clone)]
pub struct LlmClient {
    pub(crate) http: reqwest::Client,
    pub(crate) google: GoogleShared,
}

impl Default for LlmClient {
    fn default() -> Self {
        Self::new()
    }
}

impl LlmClient {
    /// With [`LlmClientSettings::from_env`].
    pub fn new() -> Self {
        Self::with_settings(LlmClientSettings::from_env())
    }

    pub fn with_settings(settings: LlmClientSettings) -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .expect("reqwest client builds with static settings");
        let tokens = GoogleTokens::new(http.clone(), settings.google_tokens, settings.google_credentials_file);
        let google =
            GoogleShared { caches: Arc::new(ExplicitCaches::new(settings.prompt_cache)), tokens: Arc::new(tokens) };
        Self { http, google }
    }

    /// Start one streaming request with the vendor the registry resolves `params.provider` to
    /// (an unknown one yields a single `Error`). A request without a model gets the vendor's
    /// default. The returned stream aborts the request when dropped.
    pub fn stream(&self, params: &LlmParams, mut request: ChatRequest) -> LlmStream {
        let (tx, rx) = mpsc::channel(256);
        let task = match registry::resolve(Kind::Llm, &params.provider, &request.model) {
            Ok(vendor) => {
                let Client::Llm(driver) = vendor.client else {
                    unreachable!("resolve(Kind::Llm, ..) yields LLM vendors")
                };
                if request.model.trim().is_empty() {
                    request.model = vendor.default_model.to_string();
                }
                tokio::spawn((driver.run)(self.clone(), params.clone(), request, tx))
            }
            Err(e) => {
                let _ = tx.try_send(LlmEvent::Error(e));
                tokio::spawn(async {})
            }
        };
        LlmStream { rx, task }
    }

    /// Makes a request's explicit prompt cache (Gemini, Vertex) ready without generating anything:
    /// called at call start, while the greeting plays, it lets the first turn find the cache
    /// instead of waiting for its creation. Runs in the background; a failure only logs (the turn
    /// will report it). Vendors that cache on first use have nothing to do.
    pub fn prewarm_prompt_cache(&self, params: &LlmParams, request: ChatRequest) {
        if request.prompt_cache.is_none() {
            return;
        }
        let Ok(vendor) = registry::resolve(Kind::Llm, &params.provider, &request.model) else { return };
        if let Client::Llm(registry::LlmDriver { prewarm: Some(prewarm), .. }) = vendor.client {
            tokio::spawn(prewarm(self.clone(), params.clone(), request));
        }
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
