//! Google Gemini streaming: the Gemini API (`POST {base}/v1beta/models/{model}:streamGenerateContent
//! ?alt=sse`, `x-goog-api-key`; wire-protocols part 2 §2), and the request/response code that
//! Gemini on Vertex AI shares (`llm_vertex`, part 2 §3).
//!
//! Request: `systemInstruction`, `contents` (roles `user`/`model`, consecutive same-role turns
//! merged), `functionDeclarations` with schemas cleaned to Google's Schema subset, `functionCall`
//! parts replayed with their `thoughtSignature`, `functionResponse` parts named by call id,
//! `generationConfig` (thinking off for 2.5 Flash unless configured), JSON mode. With the live
//! prompt cache the static block and the tools live in a `cachedContents` resource instead
//! (see [`crate::prompt_cache`]).
//!
//! Response: one `GenerateContentResponse` per `data:` event, no `[DONE]`; text deltas, whole
//! function calls, the last `usageMetadata` wins. Finish reasons are mapped to OpenAI's words
//! (`stop`, `length`, `tool_calls`, `content_filter`) so callers see one vocabulary.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cxb_wire::llm::{ChatMessage, ChatRequest, ResponseFormat, ToolCall, ToolSpec, Usage};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use url::Url;

use crate::google_auth::{AuthError, GoogleTokens, TokenSource};
use crate::llm::{LlmEvent, LlmParams};
use crate::llm_openai::{
    body_text, error_body, error_chain, f32_to_f64, report_failure, send_all, send_bounded, SseBody, StreamState,
};
use crate::prompt_cache::{
    split_system, BoxFuture, CacheBackend, CacheError, CacheKey, CacheReport, CacheStatus, ExplicitCaches,
};
use crate::ProviderError;

/// The Gemini API root (the client adds `/v1beta/…`).
pub const DEFAULT_BASE_URL: &str = crate::registry::GOOGLE.api_root;
/// What a conversation with no turn yet opens with (Gemini and Anthropic both need a user turn).
pub(crate) const OPENING_USER_TURN: &str = "(The call has started.)";
/// Ids this client makes up for function calls the API gave none for; never sent back as `id`.
const GENERATED_ID_PREFIX: &str = "call_cxb_";
/// A cache resource as the API answers it is a few hundred bytes.
const MAX_CACHE_ANSWER_BYTES: usize = 64 * 1024;
/// Schemas nest a few levels; a deeper one is broken or hostile.
const MAX_SCHEMA_DEPTH: usize = 32;

/// The Gemini API or Vertex AI: the same body with a few differences (part 2 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    Api,
    Vertex,
}

impl Flavour {
    pub(crate) fn provider(self) -> &'static str {
        match self {
            Self::Api => crate::registry::GOOGLE.name,
            Self::Vertex => crate::registry::GOOGLE_VERTEX.name,
        }
    }
}

/// The Google state an [`crate::llm::LlmClient`] shares across calls.
#[derive(Debug, Clone)]
pub(crate) struct GoogleShared {
    pub caches: Arc<ExplicitCaches>,
    pub tokens: Arc<GoogleTokens>,
}

/// How requests authenticate.
#[derive(Clone)]
pub(crate) enum GoogleAuth {
    ApiKey(String),
    Bearer(Arc<TokenSource>),
}

/// Without the key.
impl std::fmt::Debug for GoogleAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ApiKey(_) => f.write_str("ApiKey(…)"),
            Self::Bearer(source) => f.debug_tuple("Bearer").field(source).finish(),
        }
    }
}

impl GoogleAuth {
    /// Adds the credentials; with a bearer token, the token too (to invalidate it on a 401).
    async fn apply(
        &self,
        rb: reqwest::RequestBuilder,
        wait: Duration,
    ) -> Result<(reqwest::RequestBuilder, Option<String>), AuthError> {
        match self {
            Self::ApiKey(key) => Ok((rb.header("x-goog-api-key", key), None)),
            Self::Bearer(source) => {
                let token = source.token(wait).await?;
                Ok((rb.bearer_auth(&token), Some(token)))
            }
        }
    }
}

/// Where one model's requests go.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub flavour: Flavour,
    pub model: String,
    /// `…/models/{model}:streamGenerateContent?alt=sse`
    pub stream_url: Url,
    /// `POST` creates a cache here.
    pub caches_url: Url,
    /// API root with its version; a cache's resource name is appended to it.
    pub resource_root: Url,
    /// The model as a cache names it (`models/…` or `projects/…/publishers/google/models/…`).
    pub model_resource: String,
    pub auth: GoogleAuth,
    /// The account and endpoint, for cache keys (a cache is private to its project).
    pub scope: String,
}

/// `root` + path segments (each percent-encoded as one segment).
pub(crate) fn join_segments(root: &Url, segments: &[&str]) -> Url {
    let mut url = root.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        path.extend(segments);
    }
    url
}

/// A base URL as given in a bot config: an http(s) API root.
pub(crate) fn parse_root(provider: &'static str, base: &str, default: &str) -> Result<Url, ProviderError> {
    let base = if base.trim().is_empty() { default } else { base.trim() };
    let config = |detail: String| ProviderError::Config { provider, detail };
    let url = Url::parse(base).map_err(|e| config(format!("bad base_url {base:?}: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.cannot_be_a_base() {
        return Err(config(format!("base_url {base:?} is not an http(s) URL")));
    }
    Ok(url)
}

/// The model id as the path wants it (`models/gemini-2.5-flash` → `gemini-2.5-flash`).
pub(crate) fn bare_model(model: &str) -> &str {
    let model = model.trim();
    model.strip_prefix("models/").unwrap_or(model)
}

fn api_endpoint(params: &LlmParams, model: &str) -> Result<Endpoint, ProviderError> {
    let provider = Flavour::Api.provider();
    if params.api_key.trim().is_empty() {
        return Err(ProviderError::Config { provider, detail: "no API key (llm.api_key or GEMINI_API_KEY)".into() });
    }
    let root = parse_root(provider, &params.base_url, DEFAULT_BASE_URL)?;
    let model = bare_model(model).to_string();
    let mut stream_url = join_segments(&root, &["v1beta", "models", &format!("{model}:streamGenerateContent")]);
    stream_url.set_query(Some("alt=sse"));
    let mut hasher = DefaultHasher::new();
    params.api_key.trim().hash(&mut hasher);
    Ok(Endpoint {
        flavour: Flavour::Api,
        stream_url,
        caches_url: join_segments(&root, &["v1beta", "cachedContents"]),
        resource_root: join_segments(&root, &["v1beta"]),
        model_resource: format!("models/{model}"),
        auth: GoogleAuth::ApiKey(params.api_key.trim().to_string()),
        scope: format!("{root}|key:{:016x}", hasher.finish()),
        model,
    })
}

/// Where a request goes: the Gemini API, or Vertex AI (which also needs the account's token source).
async fn endpoint(
    flavour: Flavour,
    params: &LlmParams,
    req: &ChatRequest,
    shared: &GoogleShared,
) -> Result<Endpoint, ProviderError> {
    match flavour {
        Flavour::Api => api_endpoint(params, &req.model),
        Flavour::Vertex => crate::llm_vertex::endpoint(params, req, shared).await,
    }
}

/// One streamed generation on the Gemini API or Vertex AI.
pub(crate) async fn run(
    http: reqwest::Client,
    params: LlmParams,
    req: ChatRequest,
    tx: mpsc::Sender<LlmEvent>,
    shared: GoogleShared,
    flavour: Flavour,
) {
    match endpoint(flavour, &params, &req, &shared).await {
        Ok(endpoint) => generate(&http, &params, &req, &tx, &shared, endpoint).await,
        Err(e) => report_failure(e, &req.model, &tx).await,
    }
}

/// [`crate::llm::LlmClient::prewarm_prompt_cache`]: the request's cache, without a generation.
pub(crate) async fn prewarm(
    http: reqwest::Client,
    params: LlmParams,
    req: ChatRequest,
    shared: GoogleShared,
    flavour: Flavour,
) {
    let endpoint = match endpoint(flavour, &params, &req, &shared).await {
        Ok(endpoint) => endpoint,
        Err(e) => return tracing::debug!(error = %e, "prompt cache not prewarmed"),
    };
    let tools = &req.tools;
    if let Some(cache) = CacheUse::start(&http, &req, tools, &endpoint, &shared).await {
        tracing::debug!(status = cache.report.status.as_str(), detail = ?cache.report.detail, "prompt cache prewarmed");
    }
}

/// One streamed generation against `endpoint`, through the prompt cache when the request carries
/// one. Every event (tokens, tool calls, cache report, `Done` or `Error`) goes to `tx`.
async fn generate(
    http: &reqwest::Client,
    params: &LlmParams,
    req: &ChatRequest,
    tx: &mpsc::Sender<LlmEvent>,
    shared: &GoogleShared,
    endpoint: Endpoint,
) {
    let provider = endpoint.flavour.provider();
    let tools = &req.tools;
    let mut cache = CacheUse::start(http, req, tools, &endpoint, shared).await;
    let result = send_with_retries(http, params, req, tools, &endpoint, shared, &mut cache).await;
    let report = cache.map(|c| c.report);
    let outcome = match result {
        Ok(resp) => stream_response(resp, provider, params.idle_timeout, tx).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(Some(acc)) => send_all(tx, acc.into_events(report)).await,
        Ok(None) => {} // the receiver went away
        Err(e) => {
            if let Some(report) = report {
                let _ = tx.send(LlmEvent::Cache(report)).await;
            }
            report_failure(e, &req.model, tx).await
        }
    }
}

/// Sends the request; retries once with a fresh cache when the provider dropped the cache (then
/// once uncached if that fails too), and once with a fresh token after a 401.
async fn send_with_retries(
    http: &reqwest::Client,
    params: &LlmParams,
    req: &ChatRequest,
    tools: &[ToolSpec],
    endpoint: &Endpoint,
    shared: &GoogleShared,
    cache: &mut Option<CacheUse>,
) -> Result<reqwest::Response, ProviderError> {
    let provider = endpoint.flavour.provider();
    let mut auth_retried = false;
    let mut cache_retried = false;
    loop {
        let cached = cache.as_ref().and_then(|c| c.name.as_deref());
        let body = request_body(req, tools, endpoint.flavour, cached);
        let rb = http.post(endpoint.stream_url.clone()).json(&body);
        let (rb, token) = endpoint.auth.apply(rb, params.idle_timeout).await.map_err(|e| auth_error(provider, e))?;
        let resp = send_bounded(provider, params.idle_timeout, rb.send()).await?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let failure = GoogleFailure::read(resp, params.idle_timeout).await;
        match (&endpoint.auth, token) {
            (GoogleAuth::Bearer(source), Some(token)) if status == 401 && !auth_retried => {
                tracing::info!(detail = %failure.detail(), "Vertex refused the access token; fetching a new one");
                source.invalidate(&token);
                auth_retried = true;
                continue;
            }
            _ => {}
        }
        let Some(use_) = cache.as_mut().filter(|c| c.name.is_some() && failure.cache_missing()) else {
            return Err(ProviderError::Status { provider, status, body: failure.detail() });
        };
        if cache_retried {
            use_.go_uncached(format!("cache missing again after recreating it: {}", failure.detail()));
        } else {
            cache_retried = true;
            use_.recreate(shared, &failure.detail()).await;
        }
    }
}

fn auth_error(provider: &'static str, e: AuthError) -> ProviderError {
    match e {
        AuthError::BadKey(detail) => ProviderError::Config { provider, detail },
        AuthError::Timeout(_) => ProviderError::Timeout { provider, what: "waiting for an access token".into() },
        AuthError::Token { .. } => ProviderError::Remote { provider, detail: format!("no access token: {e}") },
    }
}

/// Reads the stream to its end; `None` when the receiver went away.
async fn stream_response(
    resp: reqwest::Response,
    provider: &'static str,
    idle_timeout: Duration,
    tx: &mpsc::Sender<LlmEvent>,
) -> Result<Option<Accumulator>, ProviderError> {
    let mut body = SseBody::new(provider, resp, idle_timeout);
    let mut acc = Accumulator::new(provider);
    if !body.pump(&mut acc, tx).await? {
        return Ok(None);
    }
    acc.conclude(body.stray_text()).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A Google error body: `{"error":{"code","message","status","details"}}`, possibly wrapped in a
/// one-element array.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GoogleError {
    pub message: String,
    pub status: Option<String>,
}

impl GoogleError {
    pub(crate) fn detail(&self) -> String {
        match &self.status {
            Some(status) => format!("{} ({status})", self.message),
            None => self.message.clone(),
        }
    }
}

pub(crate) fn parse_google_error(text: &str) -> Option<GoogleError> {
    let value: Value = serde_json::from_str(text.trim()).ok()?;
    let value = match value {
        Value::Array(mut items) if items.len() == 1 => items.remove(0),
        v => v,
    };
    google_error(value.get("error")?)
}

fn google_error(error: &Value) -> Option<GoogleError> {
    let message = match error.get("message") {
        Some(Value::String(m)) => m.clone(),
        _ => error.as_str().map(str::to_string)?,
    };
    Some(GoogleError { message, status: error.get("status").and_then(Value::as_str).map(str::to_string) })
}

/// A non-2xx answer.
struct GoogleFailure {
    status: u16,
    body: String,
    parsed: Option<GoogleError>,
}

impl GoogleFailure {
    async fn read(resp: reqwest::Response, wait: Duration) -> Self {
        let status = resp.status().as_u16();
        let body = error_body(resp, wait).await;
        let parsed = parse_google_error(&body);
        Self { status, body, parsed }
    }

    /// The message and canonical status, or the raw body when it is no Google error.
    fn detail(&self) -> String {
        self.parsed.as_ref().map(GoogleError::detail).unwrap_or_else(|| self.body.clone())
    }

    /// The request referenced a cache the provider no longer has ("CachedContent not found (or
    /// permission denied)", 403 on the Gemini API).
    fn cache_missing(&self) -> bool {
        cache_missing(self.status, &self.detail())
    }
}

fn cache_missing(status: u16, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    let about_cache = m.contains("cachedcontent") || m.contains("cached content");
    about_cache && (matches!(status, 403 | 404) || m.contains("not found") || m.contains("expired"))
}

// ---------------------------------------------------------------------------------------------
// The explicit cache of one request

/// The request's use of the worker's explicit cache.
struct CacheUse {
    key: CacheKey,
    backend: Arc<dyn CacheBackend>,
    /// The cache referenced; `None` when going uncached.
    name: Option<String>,
    report: CacheReport,
}

impl CacheUse {
    async fn start(
        http: &reqwest::Client,
        req: &ChatRequest,
        tools: &[ToolSpec],
        endpoint: &Endpoint,
        shared: &GoogleShared,
    ) -> Option<Self> {
        let hint = req.prompt_cache.as_ref()?;
        let content = cache_content(req, tools, endpoint.flavour)?;
        let mut hasher = DefaultHasher::new();
        Value::Object(content.clone()).to_string().hash(&mut hasher);
        let key = CacheKey {
            scope: endpoint.scope.clone(),
            model: endpoint.model.clone(),
            key: hint.key.clone(),
            version: hint.static_version.clone(),
            content: hasher.finish(),
        };
        let display_name: String = format!("cxb:{}:{}", hint.key, hint.static_version).chars().take(128).collect();
        let backend: Arc<dyn CacheBackend> =
            Arc::new(GeminiCaches { http: http.clone(), endpoint: endpoint.clone(), content, display_name });
        let mut use_ = CacheUse { key, backend, name: None, report: CacheReport::fallback(String::new()) };
        use_.resolve(shared, CacheStatus::Created).await;
        Some(use_)
    }

    /// `created_as`: how a creation made for this request is reported.
    async fn resolve(&mut self, shared: &GoogleShared, created_as: CacheStatus) {
        match shared.caches.resolve(&self.key, Arc::clone(&self.backend)).await {
            Ok(resolved) => {
                let status = if resolved.status == CacheStatus::Created { created_as } else { resolved.status };
                self.report = CacheReport { status, resource: Some(resolved.name.clone()), detail: None };
                self.name = Some(resolved.name);
            }
            Err(detail) => self.go_uncached(detail),
        }
    }

    async fn recreate(&mut self, shared: &GoogleShared, why: &str) {
        if let Some(name) = self.name.take() {
            tracing::info!(cache = %name, %why, "prompt cache gone; recreating it and retrying the request");
            shared.caches.invalidate(&self.key, &name);
        }
        self.resolve(shared, CacheStatus::Recreated).await;
        if self.report.status == CacheStatus::Reused {
            // Another request recreated it meanwhile.
            self.report.status = CacheStatus::Recreated;
        }
    }

    fn go_uncached(&mut self, detail: String) {
        tracing::info!(%detail, bot = %self.key.key, "request goes without the prompt cache");
        self.name = None;
        self.report = CacheReport::fallback(detail);
    }
}

/// The `cachedContents` collection of one endpoint, for one content.
struct GeminiCaches {
    http: reqwest::Client,
    endpoint: Endpoint,
    /// `systemInstruction`, `tools`, `toolConfig`.
    content: Map<String, Value>,
    display_name: String,
}

impl CacheBackend for GeminiCaches {
    fn create(&self, ttl: Duration) -> BoxFuture<Result<String, CacheError>> {
        let mut body = self.content.clone();
        body.insert("model".into(), json!(self.endpoint.model_resource));
        body.insert("displayName".into(), json!(self.display_name));
        body.insert("ttl".into(), json!(format!("{}s", ttl.as_secs())));
        let http = self.http.clone();
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            let rb = http.post(endpoint.caches_url.clone()).json(&body);
            created_cache_name(&cache_request(rb, &endpoint).await?, endpoint.flavour)
        })
    }

    fn extend(&self, name: String, ttl: Duration) -> BoxFuture<Result<(), CacheError>> {
        let http = self.http.clone();
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            let rb = http
                .patch(cache_url(&endpoint.resource_root, &name))
                .json(&json!({ "ttl": format!("{}s", ttl.as_secs()) }));
            cache_request(rb, &endpoint).await.map(|_| ())
        })
    }
}

/// One cache API call; the answer's JSON.
async fn cache_request(rb: reqwest::RequestBuilder, endpoint: &Endpoint) -> Result<Value, CacheError> {
    // The caller bounds the whole call; this bounds the token wait inside it.
    let wait = Duration::from_secs(30);
    let (rb, _) = endpoint.auth.apply(rb, wait).await.map_err(|e| CacheError::Failed(e.to_string()))?;
    let resp = rb.send().await.map_err(|e| CacheError::Failed(error_chain(&e)))?;
    let status = resp.status().as_u16();
    read_cache_answer(status, &body_text(resp, wait, MAX_CACHE_ANSWER_BYTES).await)
}

/// A cache API answer: the JSON of a 2xx, else the failure, classified.
pub(crate) fn read_cache_answer(status: u16, body: &str) -> Result<Value, CacheError> {
    if (200..300).contains(&status) {
        return serde_json::from_str(body).map_err(|e| CacheError::Failed(format!("unreadable answer: {e}")));
    }
    let detail = parse_google_error(body).map(|e| e.detail()).unwrap_or_else(|| body.to_string());
    let detail = format!("HTTP {status}: {detail}");
    Err(if cache_missing(status, &detail) || status == 404 {
        CacheError::NotFound(detail)
    } else if (400..500).contains(&status) && status != 408 && status != 429 {
        CacheError::Rejected(detail)
    } else {
        CacheError::Failed(detail)
    })
}

/// The name of the cache a create call made, checked ([`valid_cache_name`]).
pub(crate) fn created_cache_name(answer: &Value, flavour: Flavour) -> Result<String, CacheError> {
    let name = answer.get("name").and_then(Value::as_str).unwrap_or_default();
    valid_cache_name(name, flavour)
        .map(str::to_string)
        .ok_or_else(|| CacheError::Failed(format!("unexpected cache name {name:?}")))
}

/// The URL of the cache `name` (a checked name) under the API root `resource_root`.
pub(crate) fn cache_url(resource_root: &Url, name: &str) -> Url {
    let segments: Vec<&str> = name.split('/').collect();
    join_segments(resource_root, &segments)
}

/// A cache name from the provider, before it goes into a URL path: `cachedContents/{id}`, or on
/// Vertex `projects/{project}/locations/{location}/cachedContents/{id}` (Vertex names the project
/// by its number, not the id the request used).
fn valid_cache_name(name: &str, flavour: Flavour) -> Option<&str> {
    let segments: Vec<&str> = name.split('/').collect();
    let plain =
        |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let shape_ok = matches!(
        (flavour, segments.as_slice()),
        (Flavour::Api, ["cachedContents", _]) | (Flavour::Vertex, ["projects", _, "locations", _, "cachedContents", _])
    );
    (shape_ok && segments.iter().all(plain) && !segments.contains(&"..") && !segments.contains(&".")).then_some(name)
}

// ---------------------------------------------------------------------------------------------
// Request body

/// What goes into an explicit cache: the static block, the tools and their config. `None` when
/// the request has no static block.
pub(crate) fn cache_content(req: &ChatRequest, tools: &[ToolSpec], flavour: Flavour) -> Option<Map<String, Value>> {
    let system = split_system(req);
    let static_block = system.cacheable?;
    let mut content = Map::new();
    content.insert("systemInstruction".into(), json!({ "parts": [{ "text": static_block }] }));
    if !tools.is_empty() {
        content.insert("tools".into(), tools_json(tools, flavour));
        content.insert("toolConfig".into(), tool_config());
    }
    Some(content)
}

/// The `streamGenerateContent` body. With `cached_content` the system instruction and tools are in
/// the cache, and the rest of the system prompt opens the conversation as a user turn.
pub(crate) fn request_body(
    req: &ChatRequest,
    tools: &[ToolSpec],
    flavour: Flavour,
    cached_content: Option<&str>,
) -> Value {
    let system = split_system(req);
    let mut body = Map::new();
    let opening = match cached_content {
        Some(name) => {
            body.insert("cachedContent".into(), json!(name));
            system.rest.clone()
        }
        None => {
            let text = system.joined();
            if !text.is_empty() {
                body.insert("systemInstruction".into(), json!({ "parts": [{ "text": text }] }));
            }
            if !tools.is_empty() {
                body.insert("tools".into(), tools_json(tools, flavour));
                body.insert("toolConfig".into(), tool_config());
            }
            String::new()
        }
    };
    let mut turns = contents(system.conversation, &opening, flavour);
    if turns.is_empty() {
        turns.push(json!({ "role": "user", "parts": [{ "text": OPENING_USER_TURN }] }));
    }
    body.insert("contents".into(), Value::Array(turns));
    let options = Options::read(req, flavour);
    if let Some(safety) = options.safety_settings {
        body.insert("safetySettings".into(), safety);
    }
    if !options.generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(options.generation));
    }
    Value::Object(body)
}

fn tool_config() -> Value {
    json!({ "functionCallingConfig": { "mode": "AUTO" } })
}

fn tools_json(tools: &[ToolSpec], flavour: Flavour) -> Value {
    let declarations: Vec<Value> = tools
        .iter()
        .map(|t| {
            let mut d = Map::new();
            d.insert("name".into(), json!(t.name));
            if !t.description.trim().is_empty() {
                d.insert("description".into(), json!(t.description));
            }
            // The API refuses an OBJECT with no properties: a function without parameters has none.
            let params = clean_schema(&t.parameters, flavour);
            if params.get("properties").is_some_and(|p| p.as_object().is_some_and(|p| !p.is_empty())) {
                d.insert("parameters".into(), params);
            }
            Value::Object(d)
        })
        .collect();
    json!([{ "functionDeclarations": declarations }])
}

/// `contents`: the conversation as `user`/`model` turns, consecutive parts of one role merged
/// into one turn (parallel calls in one `model` turn, their results in the next `user` turn).
fn contents(conversation: &[ChatMessage], opening: &str, flavour: Flavour) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, part: Value| match turns.last_mut() {
        Some((last, parts)) if *last == role => parts.push(part),
        _ => turns.push((role, vec![part])),
    };
    if !opening.trim().is_empty() {
        push("user", json!({ "text": opening }));
    }
    let mut names: HashMap<&str, &str> = HashMap::new();
    for msg in conversation {
        match msg {
            // A system message after the first turn is a note to the model (pipecat does the same).
            ChatMessage::System(text) | ChatMessage::User(text) => {
                if !text.trim().is_empty() {
                    push("user", json!({ "text": text }));
                }
            }
            ChatMessage::Assistant { content, tool_calls } => {
                if let Some(text) = content.as_deref().filter(|t| !t.is_empty()) {
                    push("model", json!({ "text": text }));
                }
                for call in tool_calls {
                    names.insert(&call.id, &call.name);
                    push("model", function_call_part(call, flavour));
                }
            }
            ChatMessage::Tool { tool_call_id, content } => match names.get(tool_call_id.as_str()) {
                Some(name) => push("user", function_response_part(tool_call_id, name, content, flavour)),
                // Its call is no longer in the history: keep the result as text.
                None => push("user", json!({ "text": format!("Result of tool call {tool_call_id}: {content}") })),
            },
        }
    }
    turns.into_iter().map(|(role, parts)| json!({ "role": role, "parts": parts })).collect()
}

/// Ids go back only on the Gemini API (Vertex has no `id` on function parts) and only when the
/// model gave them.
fn sends_id(id: &str, flavour: Flavour) -> bool {
    flavour == Flavour::Api && !id.is_empty() && !id.starts_with(GENERATED_ID_PREFIX)
}

/// The model's call, replayed as it came: arguments as an object, its thought signature beside it.
fn function_call_part(call: &ToolCall, flavour: Flavour) -> Value {
    let args = match serde_json::from_str::<Value>(&call.arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    };
    let mut fc = json!({ "name": call.name, "args": args });
    if sends_id(&call.id, flavour) {
        fc["id"] = json!(call.id);
    }
    let mut part = json!({ "functionCall": fc });
    if let Some(signature) = &call.thought_signature {
        part["thoughtSignature"] = json!(signature);
    }
    part
}

/// `response` must be an object: `{"output": …}` (or the tool's own `{"error": …}`).
fn function_response_part(id: &str, name: &str, content: &str, flavour: Flavour) -> Value {
    let response = match serde_json::from_str::<Value>(content) {
        Ok(Value::Object(o)) if o.contains_key("output") || o.contains_key("error") => Value::Object(o),
        Ok(v) => json!({ "output": v }),
        Err(_) => json!({ "output": content }),
    };
    let mut fr = json!({ "name": name, "response": response });
    if sends_id(id, flavour) {
        fr["id"] = json!(id);
    }
    json!({ "functionResponse": fr })
}

/// `generationConfig` keys, by the snake_case name bot configs use.
const GENERATION_KEYS: &[(&str, &str)] = &[
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("candidate_count", "candidateCount"),
    ("max_output_tokens", "maxOutputTokens"),
    ("stop_sequences", "stopSequences"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
    ("seed", "seed"),
    ("response_logprobs", "responseLogprobs"),
    ("logprobs", "logprobs"),
    ("media_resolution", "mediaResolution"),
];

/// `llm.extra` keys the Google clients use elsewhere or that belong to other vendors' hints.
const NOT_GENERATION_KEYS: &[&str] =
    &["project_id", "location", "prompt_cache_key", "prompt_cache_retention", "safety_settings", "safetySettings"];

/// The request's `generationConfig` and `safetySettings`.
struct Options {
    generation: Map<String, Value>,
    safety_settings: Option<Value>,
}

impl Options {
    fn read(req: &ChatRequest, flavour: Flavour) -> Self {
        let mut generation = Map::new();
        if let Some(t) = req.temperature {
            generation.insert("temperature".into(), json!(f32_to_f64(t)));
        }
        if let Some(max) = req.max_tokens {
            generation.insert("maxOutputTokens".into(), json!(max));
        }
        let mut thinking = Map::new();
        let mut json_mode = match &req.response {
            ResponseFormat::Json { schema } => Some(schema.clone()),
            ResponseFormat::Text => None,
        };
        for (key, value) in &req.extra {
            match key.as_str() {
                "thinking_budget" | "thinkingBudget" => {
                    thinking.insert("thinkingBudget".into(), value.clone());
                }
                "thinking_level" | "thinkingLevel" => {
                    thinking.insert("thinkingLevel".into(), upper(value));
                }
                "include_thoughts" | "includeThoughts" => {
                    thinking.insert("includeThoughts".into(), value.clone());
                }
                "thinking_config" | "thinkingConfig" => {
                    for (k, v) in value.as_object().into_iter().flatten() {
                        let k = camel_case(k);
                        let v = if k == "thinkingLevel" { upper(v) } else { v.clone() };
                        thinking.insert(k, v);
                    }
                }
                // OpenAI's name for stop sequences.
                "stop" => {
                    let stops = if value.is_string() { json!([value]) } else { value.clone() };
                    generation.insert("stopSequences".into(), stops);
                }
                // OpenAI's JSON mode, as the post-call requests set it.
                "response_format" => {
                    json_mode = json_mode.or_else(|| openai_json_mode(value));
                }
                k if NOT_GENERATION_KEYS.contains(&k) => {}
                k => match GENERATION_KEYS.iter().find(|(snake, camel)| *snake == k || *camel == k) {
                    Some((_, camel)) => {
                        generation.insert((*camel).to_string(), value.clone());
                    }
                    None => tracing::debug!(key = k, "llm.extra key not used by Gemini"),
                },
            }
        }
        if thinking.is_empty() {
            thinking = default_thinking(&req.model);
        }
        if !thinking.is_empty() {
            generation.insert("thinkingConfig".into(), Value::Object(thinking));
        }
        if let Some(schema) = json_mode {
            generation.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = schema {
                generation.insert("responseSchema".into(), clean_schema(&schema, flavour));
            }
        }
        let safety_settings = req.extra.get("safety_settings").or_else(|| req.extra.get("safetySettings")).cloned();
        Self { generation, safety_settings }
    }
}

/// `{"type":"json_object"}` or `{"type":"json_schema","json_schema":{"schema":…}}`.
fn openai_json_mode(v: &Value) -> Option<Option<Value>> {
    match v.get("type").and_then(Value::as_str)? {
        "json_object" => Some(None),
        "json_schema" => Some(v.pointer("/json_schema/schema").cloned()),
        _ => None,
    }
}

/// Low latency unless the bot says otherwise (pipecat's defaults, part 2 §2): no thinking on 2.5
/// Flash; the lowest level every 3-series Flash accepts (3.7 refuses `MINIMAL`). 2.5 Pro cannot
/// turn thinking off, so other models keep theirs.
fn default_thinking(model: &str) -> Map<String, Value> {
    let model = bare_model(model).to_ascii_lowercase();
    let mut m = Map::new();
    if model.starts_with("gemini-2.5-flash") {
        m.insert("thinkingBudget".into(), json!(0));
    } else if model.starts_with("gemini-3") && model.contains("flash") {
        m.insert("thinkingLevel".into(), json!("LOW"));
    }
    m
}

fn upper(v: &Value) -> Value {
    v.as_str().map(|s| json!(s.to_ascii_uppercase())).unwrap_or_else(|| v.clone())
}

fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Schema cleaning: JSON Schema → Google's Schema object (an OpenAPI 3.0 subset)

/// Keys Google's Schema object has.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "properties",
    "required",
    "propertyOrdering",
    "minProperties",
    "maxProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "anyOf",
    "default",
    "example",
];

/// A JSON Schema rewritten to what Gemini accepts: `$ref`s inlined (recursive ones cut to a bare
/// OBJECT), `allOf` merged, `oneOf` → `anyOf`, `const` → one-value `enum`, type lists →
/// `nullable`/`anyOf`, upper-case types, non-string enums and unsupported formats dropped, and
/// every other keyword (`additionalProperties` except on Vertex, `$schema`, `x-*`, `examples`, …)
/// removed.
pub(crate) fn clean_schema(schema: &Value, flavour: Flavour) -> Value {
    let mut defs = Map::new();
    for key in ["$defs", "definitions"] {
        if let Some(d) = schema.get(key).and_then(Value::as_object) {
            defs.extend(d.clone());
        }
    }
    let mut cleaner = SchemaCleaner { defs, flavour, refs: Vec::new() };
    Value::Object(cleaner.clean(schema, 0))
}

struct SchemaCleaner {
    defs: Map<String, Value>,
    flavour: Flavour,
    /// `$ref`s being inlined (to cut recursion).
    refs: Vec<String>,
}

impl SchemaCleaner {
    fn clean(&mut self, schema: &Value, depth: usize) -> Map<String, Value> {
        let Some(obj) = schema.as_object() else { return Map::new() };
        if depth > MAX_SCHEMA_DEPTH {
            return Map::new();
        }
        if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
            let mut siblings = obj.clone();
            siblings.remove("$ref");
            let mut out = self.clean(&Value::Object(siblings), depth + 1);
            merge_schema(&mut out, self.inline(reference, depth));
            return out;
        }
        if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
            let mut rest = obj.clone();
            rest.remove("allOf");
            let mut out = self.clean(&Value::Object(rest), depth + 1);
            for sub in all {
                let sub = self.clean(sub, depth + 1);
                merge_schema(&mut out, sub);
            }
            return out;
        }
        let mut out = Map::new();
        let mut nullable = obj.get("nullable").and_then(Value::as_bool).unwrap_or(false);
        let mut any_of = Vec::new();
        match obj.get("type") {
            Some(Value::String(t)) if t == "null" => nullable = true,
            Some(Value::String(t)) => {
                if let Some(t) = google_type(t) {
                    out.insert("type".into(), json!(t));
                }
            }
            Some(Value::Array(types)) => {
                let named: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
                nullable |= named.contains(&"null");
                let kinds: Vec<&str> = named.into_iter().filter_map(google_type).filter(|t| *t != "NULL").collect();
                match kinds.as_slice() {
                    [] => {}
                    [one] => {
                        out.insert("type".into(), json!(one));
                    }
                    many => any_of.extend(many.iter().map(|t| json!({ "type": t }))),
                }
            }
            _ => {}
        }
        for (key, value) in obj {
            match key.as_str() {
                "type" | "nullable" | "$defs" | "definitions" => {}
                "properties" => {
                    let props: Map<String, Value> = value
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(name, s)| (name.clone(), Value::Object(self.clean(s, depth + 1))))
                        .collect();
                    if !props.is_empty() {
                        out.insert("properties".into(), Value::Object(props));
                    }
                }
                "items" => {
                    // A tuple (`items: [..]`) has no Schema form: its first element stands for all.
                    let item = value.as_array().and_then(|a| a.first()).unwrap_or(value);
                    out.insert("items".into(), Value::Object(self.clean(item, depth + 1)));
                }
                "anyOf" | "oneOf" => {
                    for option in value.as_array().into_iter().flatten() {
                        if option.get("type").and_then(Value::as_str) == Some("null") {
                            nullable = true;
                        } else {
                            any_of.push(Value::Object(self.clean(option, depth + 1)));
                        }
                    }
                }
                "enum" => {
                    let values = value.as_array().map(Vec::as_slice).unwrap_or_default();
                    if !values.is_empty() && values.iter().all(Value::is_string) {
                        out.insert("enum".into(), value.clone());
                    }
                }
                "const" if value.is_string() => {
                    out.insert("enum".into(), json!([value]));
                }
                "additionalProperties" if self.flavour == Flavour::Vertex => {
                    let v = if value.is_object() { Value::Object(self.clean(value, depth + 1)) } else { value.clone() };
                    out.insert(key.clone(), v);
                }
                k if SCHEMA_KEYS.contains(&k) && k != "required" && k != "format" => {
                    out.insert(key.clone(), value.clone());
                }
                _ => {}
            }
        }
        if let Some(format) = obj.get("format").and_then(Value::as_str) {
            if supported_format(out.get("type").and_then(Value::as_str), format) {
                out.insert("format".into(), json!(format));
            }
        }
        if !any_of.is_empty() {
            out.insert("anyOf".into(), Value::Array(any_of));
        }
        if nullable {
            out.insert("nullable".into(), json!(true));
        }
        // `required` may only name properties the schema has.
        let required: Vec<Value> = match (obj.get("required").and_then(Value::as_array), out.get("properties")) {
            (Some(names), Some(Value::Object(props))) => {
                names.iter().filter(|n| n.as_str().is_some_and(|n| props.contains_key(n))).cloned().collect()
            }
            _ => Vec::new(),
        };
        if !required.is_empty() {
            out.insert("required".into(), Value::Array(required));
        }
        out
    }

    fn inline(&mut self, reference: &str, depth: usize) -> Map<String, Value> {
        let name = reference.rsplit('/').next().unwrap_or(reference).to_string();
        let known = reference.starts_with("#/$defs/") || reference.starts_with("#/definitions/");
        let Some(def) = self.defs.get(&name).filter(|_| known).cloned() else {
            tracing::warn!(reference, "dropping a $ref that points nowhere this schema defines");
            return Map::new();
        };
        if self.refs.contains(&name) {
            tracing::warn!(reference, "cutting a recursive $ref (Gemini schemas cannot recurse)");
            let mut cut = Map::new();
            cut.insert("type".into(), json!("OBJECT"));
            return cut;
        }
        self.refs.push(name);
        let out = self.clean(&def, depth + 1);
        self.refs.pop();
        out
    }
}

/// Union of two object schemas: properties and `required` joined, other keys kept from `into`.
fn merge_schema(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (key, value) in from {
        match (key.as_str(), into.get_mut(&key), value) {
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                for (k, v) in theirs {
                    mine.entry(k).or_insert(v);
                }
            }
            ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                for name in theirs {
                    if !mine.contains(&name) {
                        mine.push(name);
                    }
                }
            }
            (_, Some(_), _) => {}
            (_, None, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn google_type(json_type: &str) -> Option<&'static str> {
    Some(match json_type.to_ascii_lowercase().as_str() {
        "string" => "STRING",
        "number" => "NUMBER",
        "integer" => "INTEGER",
        "boolean" => "BOOLEAN",
        "array" => "ARRAY",
        "object" => "OBJECT",
        "null" => "NULL",
        _ => return None,
    })
}

/// The formats the Gemini API accepts per type.
fn supported_format(google_type: Option<&str>, format: &str) -> bool {
    matches!(
        (google_type, format),
        (Some("STRING"), "enum" | "date-time")
            | (Some("INTEGER"), "int32" | "int64")
            | (Some("NUMBER"), "float" | "double")
    )
}

// ---------------------------------------------------------------------------------------------
// Response

/// State of one response across chunks.
pub(crate) struct Accumulator {
    provider: &'static str,
    tool_calls: Vec<ToolCall>,
    /// The raw `finishReason`.
    finish: Option<String>,
    usage: Option<Usage>,
    /// Chunks that parsed as responses.
    chunks: usize,
}

static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(1);

impl StreamState for Accumulator {
    /// Apply one `data:` payload; returns its text, if any.
    fn on_data(&mut self, data: &str) -> Result<Option<String>, ProviderError> {
        let value: Value = match serde_json::from_str(data) {
            Ok(Value::Array(mut items)) if items.len() == 1 => items.remove(0),
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed Gemini chunk");
                return Ok(None);
            }
        };
        if let Some(error) = value.get("error").and_then(google_error) {
            return Err(ProviderError::Remote { provider: self.provider, detail: error.detail() });
        }
        self.chunks += 1;
        if let Some(reason) = value.pointer("/promptFeedback/blockReason").and_then(Value::as_str) {
            return Err(ProviderError::Remote { provider: self.provider, detail: format!("prompt blocked: {reason}") });
        }
        if let Some(meta) = value.get("usageMetadata") {
            self.usage = Some(usage(meta));
        }
        let candidates = value.get("candidates").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let Some(candidate) = candidates.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        else {
            return Ok(None);
        };
        let mut text = String::new();
        let parts =
            candidate.pointer("/content/parts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for part in parts {
            // A thought summary (`includeThoughts`) is not for the caller's ears.
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = part.get("text").and_then(Value::as_str) {
                text.push_str(t);
            }
            if let Some(call) = part.get("functionCall") {
                self.on_function_call(call, part.get("thoughtSignature"));
            }
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            self.finish = Some(reason.to_string());
        }
        Ok((!text.is_empty()).then_some(text))
    }
}

impl Accumulator {
    pub(crate) fn new(provider: &'static str) -> Self {
        Self { provider, tool_calls: Vec::new(), finish: None, usage: None, chunks: 0 }
    }

    /// Calls come whole (name and `args` object); the id is made up when the API gave none.
    fn on_function_call(&mut self, call: &Value, signature: Option<&Value>) {
        let Some(name) = call.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
            tracing::warn!(%call, "ignoring a function call without a name");
            return;
        };
        let id = match call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()) {
            Some(id) => id.to_string(),
            None => format!("{GENERATED_ID_PREFIX}{}", NEXT_CALL_ID.fetch_add(1, Ordering::Relaxed)),
        };
        let args = call.get("args").filter(|a| a.is_object()).cloned().unwrap_or_else(|| json!({}));
        self.tool_calls.push(ToolCall {
            id,
            name: name.to_string(),
            arguments: args.to_string(),
            thought_signature: signature.and_then(Value::as_str).map(str::to_string),
        });
    }

    /// The body ended: the finished answer, or why there is none. `stray`: the body's lines that
    /// were no SSE field — an error body without `data:` framing (python-genai parses such bodies
    /// as the error).
    pub(crate) fn conclude(self, stray: &str) -> Result<Self, ProviderError> {
        if self.finish.is_some() {
            return Ok(self);
        }
        if self.chunks == 0 {
            if let Some(error) = parse_google_error(stray) {
                return Err(ProviderError::Remote { provider: self.provider, detail: error.detail() });
            }
        }
        Err(ProviderError::Closed { provider: self.provider, detail: "stream ended without a finishReason".into() })
    }

    /// `ToolCalls` (if any), the cache report (if any), then `Done`.
    pub(crate) fn into_events(self, cache: Option<CacheReport>) -> Vec<LlmEvent> {
        let finish_reason = self.finish.as_deref().map(|r| finish_reason(r, !self.tool_calls.is_empty()));
        let mut events = Vec::with_capacity(3);
        if !self.tool_calls.is_empty() {
            events.push(LlmEvent::ToolCalls(self.tool_calls));
        }
        events.extend(cache.map(LlmEvent::Cache));
        events.push(LlmEvent::Done { finish_reason, usage: self.usage });
        events
    }
}

/// Gemini's finish reasons in OpenAI's words (a turn that calls a function ends with `STOP`).
fn finish_reason(raw: &str, has_calls: bool) -> String {
    match raw {
        "STOP" if has_calls => "tool_calls".into(),
        "STOP" => "stop".into(),
        "MAX_TOKENS" => "length".into(),
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// `usageMetadata` (part 2 §2): prompt counts include cached tokens; thoughts are apart.
fn usage(meta: &Value) -> Usage {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt_tokens: n("promptTokenCount"),
        completion_tokens: n("candidatesTokenCount"),
        total_tokens: n("totalTokenCount"),
        cached_tokens: n("cachedContentTokenCount"),
        cache_write_tokens: 0,
        thoughts_tokens: n("thoughtsTokenCount"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_cleaning_follows_the_spec_table() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "x-internal": true,
            "properties": {
                "phone": {"type": "string", "format": "phone", "examples": ["+91"]},
                "when": {"type": "string", "format": "date-time"},
                "kind": {"const": "renewal"},
                "tier": {"enum": [1, 2]},
                "note": {"type": ["string", "null"]},
                "id": {"type": ["string", "integer"]},
                "addr": {"$ref": "#/$defs/Address", "description": "where"},
                "choice": {"oneOf": [{"type": "string"}, {"type": "null"}]},
                "both": {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]},
                                   {"properties": {"b": {"type": "number"}}, "required": ["b"]}]},
                "tree": {"$ref": "#/$defs/Node"},
                "empty": {"type": "object", "properties": {}}
            },
            "required": ["phone", "ghost"],
            "$defs": {
                "Address": {"type": "object", "properties": {"city": {"type": "string"}}},
                "Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}
            }
        });
        let out = clean_schema(&schema, Flavour::Api);
        let p = &out["properties"];
        assert_eq!(out["type"], "OBJECT");
        assert!(
            out.get("additionalProperties").is_none()
                && out.get("$schema").is_none()
                && out.get("x-internal").is_none()
        );
        assert_eq!(out["required"], json!(["phone"]));
        assert_eq!(p["phone"], json!({"type": "STRING"}));
        assert_eq!(p["when"], json!({"type": "STRING", "format": "date-time"}));
        assert_eq!(p["kind"], json!({"enum": ["renewal"]}));
        assert_eq!(p["tier"], json!({}));
        assert_eq!(p["note"], json!({"type": "STRING", "nullable": true}));
        assert_eq!(p["id"], json!({"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]}));
        assert_eq!(
            p["addr"],
            json!({"type": "OBJECT", "description": "where", "properties": {"city": {"type": "STRING"}}})
        );
        assert_eq!(p["choice"], json!({"anyOf": [{"type": "STRING"}], "nullable": true}));
        assert_eq!(p["both"]["properties"], json!({"a": {"type": "STRING"}, "b": {"type": "NUMBER"}}));
        assert_eq!(p["both"]["required"], json!(["a", "b"]));
        assert_eq!(p["tree"]["properties"]["child"], json!({"type": "OBJECT"}));
        assert_eq!(p["empty"], json!({"type": "OBJECT"}));

        let vertex = clean_schema(&schema, Flavour::Vertex);
        assert_eq!(vertex["additionalProperties"], json!(false));
    }

    #[test]
    fn hostile_schemas_stay_bounded() {
        let mut deep = json!({"type": "string"});
        for _ in 0..200 {
            deep = json!({"type": "object", "properties": {"x": deep}});
        }
        let out = clean_schema(&deep, Flavour::Api);
        assert_eq!(out["type"], "OBJECT");
        assert_eq!(clean_schema(&json!("nonsense"), Flavour::Api), json!({}));
        assert_eq!(clean_schema(&json!({"$ref": "http://elsewhere/x"}), Flavour::Api), json!({}));
    }

    #[test]
    fn finish_reasons_in_openai_words() {
        assert_eq!(finish_reason("STOP", false), "stop");
        assert_eq!(finish_reason("STOP", true), "tool_calls");
        assert_eq!(finish_reason("MAX_TOKENS", false), "length");
        assert_eq!(finish_reason("SAFETY", false), "content_filter");
        assert_eq!(finish_reason("MALFORMED_FUNCTION_CALL", false), "malformed_function_call");
    }

    #[test]
    fn chunk_parsing_keeps_ids_signatures_and_the_last_usage() {
        let mut acc = Accumulator::new("google");
        let first = json!({"usageMetadata": {"promptTokenCount": 10}});
        assert_eq!(acc.on_data(&first.to_string()).unwrap(), None);
        let chunk = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking...", "thought": true},
            {"text": "Ok"},
            {"functionCall": {"id": "fc_9", "name": "lookup", "args": {"q": 1}}, "thoughtSignature": "c2ln"},
            {"functionCall": {"name": "end_call"}}
        ]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1830, "candidatesTokenCount": 14, "cachedContentTokenCount": 1024,
                              "thoughtsTokenCount": 7, "totalTokenCount": 1851}});
        assert_eq!(acc.on_data(&chunk.to_string()).unwrap(), Some("Ok".into()));
        let events = acc.into_events(None);
        let LlmEvent::ToolCalls(calls) = &events[0] else { panic!("{events:?}") };
        assert_eq!((calls[0].id.as_str(), calls[0].arguments.as_str()), ("fc_9", r#"{"q":1}"#));
        assert_eq!(calls[0].thought_signature.as_deref(), Some("c2ln"));
        assert!(calls[1].id.starts_with(GENERATED_ID_PREFIX) && calls[1].arguments == "{}");
        assert_eq!(
            events[1],
            LlmEvent::Done {
                finish_reason: Some("tool_calls".into()),
                usage: Some(Usage {
                    prompt_tokens: 1830,
                    completion_tokens: 14,
                    total_tokens: 1851,
                    cached_tokens: 1024,
                    cache_write_tokens: 0,
                    thoughts_tokens: 7
                })
            }
        );
    }

    #[test]
    fn errors_are_read_with_or_without_the_array_wrapper() {
        let wrapped = r#"[{"error":{"code":400,"message":"Function call is missing a thought_signature","status":"INVALID_ARGUMENT"}}]"#;
        assert_eq!(
            parse_google_error(wrapped).unwrap().detail(),
            "Function call is missing a thought_signature (INVALID_ARGUMENT)"
        );
        assert!(parse_google_error("<html>").is_none());
        assert!(cache_missing(403, "CachedContent not found (or permission denied) (PERMISSION_DENIED)"));
        assert!(!cache_missing(400, "CachedContent can not be used with GenerateContent request setting tools"));
        assert!(!cache_missing(403, "Permission denied on resource project"));
    }

    #[test]
    fn names_and_camel_case() {
        assert_eq!(camel_case("include_thoughts"), "includeThoughts");
        assert_eq!(bare_model("models/gemini-2.5-flash"), "gemini-2.5-flash");
        assert_eq!(valid_cache_name("cachedContents/abc-1", Flavour::Api), Some("cachedContents/abc-1"));
        assert_eq!(valid_cache_name("cachedContents/../x", Flavour::Api), None);
        assert_eq!(valid_cache_name("cachedContents/..", Flavour::Api), None);
        assert_eq!(valid_cache_name("other/abc", Flavour::Api), None);
        let vertex = "projects/123456789/locations/us-central1/cachedContents/987";
        assert_eq!(valid_cache_name(vertex, Flavour::Vertex), Some(vertex));
        assert_eq!(valid_cache_name("cachedContents/abc", Flavour::Vertex), None);
    }
}
