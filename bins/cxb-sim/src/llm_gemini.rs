//! Gemini doubles (wire-protocols part 2 §2–§3): the Gemini API
//! (`POST /v1beta/models/{model}:streamGenerateContent?alt=sse`, `x-goog-api-key`), Gemini on
//! Vertex AI (`POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:…`, a Bearer
//! token from [`crate::oauth_token`]) and both `cachedContents` collections (create, get, patch,
//! delete; caches expire on their TTL, or all at once through `POST /sim/google/expire-caches`).
//!
//! Strict like the real service: an unknown field, a schema keyword Google's Schema object lacks,
//! an OBJECT with empty `properties`, `required` naming an undefined property, a bad function
//! name, turns that do not alternate, function responses that do not answer the function calls
//! before them, a Gemini 3 function call replayed without its thought signature, a cached request
//! that also sends `systemInstruction`/`tools`/`toolConfig` — each is the vendor's 400 with its
//! `{"error":{"code","message","status"}}` body (message texts as the spec and public reports
//! quote them). Proto JSON accepts snake_case field names too, so this does as well.
//!
//! Replies come from the script like the OpenAI double's (the last turn decides); calls come whole
//! with a thought signature on the first `functionCall` part, usage on every chunk (the last one
//! complete, with `cachedContentTokenCount` when a cache is referenced). Faults by model name:
//! `fail-500`, `fail-429`, `stall`, `midstream-error`, `truncated` (no `finishReason`), `blocked`
//! (`promptFeedback.blockReason`), `unframed-error` (an error JSON without `data:` framing).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::llm_openai::{keep_request, paced_sse, split_words, stalled_sse};
use crate::script::Reply;
use crate::SimState;

/// Explicit caches smaller than this are refused (the 2.5 Flash minimum of the docs' earlier table).
pub const MIN_CACHE_TOKENS: u64 = 1024;
/// Generate requests kept for inspection.
const REQUESTS_KEPT: usize = 200;
/// Thought signatures remembered (to recognise replays).
const SIGNATURES_KEPT: usize = 10_000;
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
const GENERATION_KEYS: &[&str] = &[
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "thinkingConfig",
    "responseLogprobs",
    "logprobs",
    "mediaResolution",
    "speechConfig",
];

#[derive(Debug)]
struct Cache {
    model: String,
    display_name: String,
    token_count: u64,
    expires_at: Instant,
    create_time: String,
}

/// A generate request as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub body: Value,
}

/// Caches, recorded requests and counters of the Gemini doubles.
#[derive(Debug, Default)]
pub struct Store {
    caches: Mutex<HashMap<String, Cache>>,
    signatures: Mutex<HashSet<String>>,
    requests: Mutex<VecDeque<Seen>>,
    pub generate_requests: AtomicU64,
    /// Generate requests that referenced a live cache.
    pub cached_requests: AtomicU64,
    pub cache_creates: AtomicU64,
    pub cache_patches: AtomicU64,
    pub cache_gets: AtomicU64,
    pub cache_deletes: AtomicU64,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// The generate requests received (the last 200), oldest first.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.requests).iter().cloned().collect()
    }

    /// Every cache expires now (the next request referencing one gets the real 403).
    pub fn expire_caches(&self) {
        lock(&self.caches).clear();
    }

    /// Names of the caches alive now.
    pub fn live_caches(&self) -> Vec<String> {
        let now = Instant::now();
        lock(&self.caches).iter().filter(|(_, c)| c.expires_at > now).map(|(n, _)| n.clone()).collect()
    }

    pub fn stats(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "generate_requests": g(&self.generate_requests),
            "cached_requests": g(&self.cached_requests),
            "cache_creates": g(&self.cache_creates),
            "cache_patches": g(&self.cache_patches),
            "cache_gets": g(&self.cache_gets),
            "cache_deletes": g(&self.cache_deletes),
            "live_caches": self.live_caches(),
        })
    }

    fn new_signature(&self) -> String {
        let raw = format!("sim-thought:{}", uuid::Uuid::new_v4());
        let signature = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut known = lock(&self.signatures);
        if known.len() >= SIGNATURES_KEPT {
            known.clear();
        }
        known.insert(signature.clone());
        signature
    }
}

pub fn routes() -> Router<Arc<SimState>> {
    let vertex = "/v1/projects/{project}/locations/{location}";
    Router::new()
        .route("/v1beta/models/{method}", post(api_generate))
        .route("/v1beta/cachedContents", post(api_create))
        .route("/v1beta/cachedContents/{id}", get(api_get).patch(api_patch).delete(api_delete))
        .route(&format!("{vertex}/publishers/google/models/{{method}}"), post(vertex_generate))
        .route(&format!("{vertex}/cachedContents"), post(vertex_create))
        .route(&format!("{vertex}/cachedContents/{{id}}"), get(vertex_get).patch(vertex_patch).delete(vertex_delete))
        .route("/sim/google", get(|State(s): State<Arc<SimState>>| async move { Json(google_stats(&s)) }))
        .route("/sim/google/requests", get(list_requests))
        .route("/sim/google/expire-caches", post(expire))
}

/// Counters of the Gemini doubles and the token endpoint.
pub fn google_stats(state: &SimState) -> Value {
    let mut v = state.google.stats();
    v["token_requests"] = json!(state.oauth.token_requests.load(Ordering::Relaxed));
    v["tokens_issued"] = json!(state.oauth.tokens_issued.load(Ordering::Relaxed));
    v
}

async fn list_requests(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(Value::Array(state.google.requests().into_iter().map(|s| json!({"path": s.path, "body": s.body})).collect()))
}

async fn expire(State(state): State<Arc<SimState>>) -> StatusCode {
    state.google.expire_caches();
    StatusCode::NO_CONTENT
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A failed request: Google's status, canonical code and message.
struct Bad {
    status: StatusCode,
    canonical: &'static str,
    message: String,
}

type Check = Result<(), Bad>;

fn invalid(message: impl Into<String>) -> Bad {
    Bad { status: StatusCode::BAD_REQUEST, canonical: "INVALID_ARGUMENT", message: message.into() }
}

fn unknown_field(name: &str, at: &str) -> Bad {
    if at.is_empty() {
        invalid(format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field."))
    } else {
        invalid(format!("Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."))
    }
}

fn cache_not_found() -> Bad {
    Bad {
        status: StatusCode::FORBIDDEN,
        canonical: "PERMISSION_DENIED",
        message: "CachedContent not found (or permission denied)".into(),
    }
}

impl IntoResponse for Bad {
    fn into_response(self) -> Response {
        google_error(self.status, self.canonical, &self.message)
    }
}

pub fn google_error(status: StatusCode, canonical: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": canonical}});
    (status, Json(body)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Field names: proto JSON takes lowerCamelCase and the proto's snake_case

fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = false;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn field<'a>(o: &'a Map<String, Value>, camel_name: &str) -> Option<&'a Value> {
    o.get(camel_name).or_else(|| o.get(&snake(camel_name)))
}

fn check_keys(o: &Map<String, Value>, allowed: &[&str], at: &str) -> Check {
    match o.keys().find(|k| !allowed.contains(&camel(k).as_str())) {
        Some(k) => Err(unknown_field(k, at)),
        None => Ok(()),
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

// ---------------------------------------------------------------------------------------------
// Where a request went

struct Target {
    vertex: bool,
    project: String,
    location: String,
}

impl Target {
    fn api() -> Self {
        Self { vertex: false, project: String::new(), location: String::new() }
    }

    fn parent(&self) -> String {
        if self.vertex {
            format!("projects/{}/locations/{}/", self.project, self.location)
        } else {
            String::new()
        }
    }

    fn model_resource(&self, model: &str) -> String {
        if self.vertex {
            format!("{}publishers/google/models/{model}", self.parent())
        } else {
            format!("models/{model}")
        }
    }

    fn cache_name(&self, id: &str) -> String {
        format!("{}cachedContents/{id}", self.parent())
    }
}

fn api_key(headers: &HeaderMap, query: &HashMap<String, String>) -> Check {
    let key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()).or(query.get("key").map(String::as_str));
    match key.map(str::trim) {
        None | Some("") => Err(Bad {
            status: StatusCode::FORBIDDEN,
            canonical: "PERMISSION_DENIED",
            message: "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.".into(),
        }),
        Some("bad-key") => Err(invalid("API key not valid. Please pass a valid API key.")),
        Some(_) => Ok(()),
    }
}

fn bearer(state: &SimState, headers: &HeaderMap) -> Check {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    match auth.strip_prefix("Bearer ") {
        Some(token) if state.oauth.token_valid(token.trim()) => Ok(()),
        _ => Err(Bad {
            status: StatusCode::UNAUTHORIZED,
            canonical: "UNAUTHENTICATED",
            message: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.".into(),
        }),
    }
}

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, Bad> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(invalid("Invalid JSON payload received. Expected an object.")),
        Err(e) => Err(invalid(format!("Invalid JSON payload received. {e}"))),
    }
}

type Q = Query<HashMap<String, String>>;

async fn api_generate(
    State(state): State<Arc<SimState>>,
    Path(method): Path<String>,
    Query(query): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(bad) = api_key(&headers, &query) {
        return bad.into_response();
    }
    let path = format!("/v1beta/models/{method}");
    generate(state, Target::api(), &method, &query, path, body)
}

async fn vertex_generate(
    State(state): State<Arc<SimState>>,
    Path((project, location, method)): Path<(String, String, String)>,
    Query(query): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(bad) = bearer(&state, &headers) {
        return bad.into_response();
    }
    let path = format!("/v1/projects/{project}/locations/{location}/publishers/google/models/{method}");
    generate(state, Target { vertex: true, project, location }, &method, &query, path, body)
}

async fn api_create(State(state): State<Arc<SimState>>, Query(query): Q, headers: HeaderMap, body: Bytes) -> Response {
    match api_key(&headers, &query) {
        Ok(()) => create_cache(&state, &Target::api(), &body),
        Err(bad) => Err(bad),
    }
    .unwrap_or_else(IntoResponse::into_response)
}

async fn vertex_create(
    State(state): State<Arc<SimState>>,
    Path((project, location)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match bearer(&state, &headers) {
        Ok(()) => create_cache(&state, &Target { vertex: true, project, location }, &body),
        Err(bad) => Err(bad),
    }
    .unwrap_or_else(IntoResponse::into_response)
}

/// What a call on one cache does.
#[derive(Clone, Copy)]
enum CacheOp {
    Get,
    Patch,
    Delete,
}

async fn api_get(s: State<Arc<SimState>>, Path(id): Path<String>, Query(q): Q, h: HeaderMap) -> Response {
    api_cache_op(s, id, q, h, Bytes::new(), CacheOp::Get)
}
async fn api_patch(s: State<Arc<SimState>>, Path(id): Path<String>, Query(q): Q, h: HeaderMap, b: Bytes) -> Response {
    api_cache_op(s, id, q, h, b, CacheOp::Patch)
}
async fn api_delete(s: State<Arc<SimState>>, Path(id): Path<String>, Query(q): Q, h: HeaderMap) -> Response {
    api_cache_op(s, id, q, h, Bytes::new(), CacheOp::Delete)
}

fn api_cache_op(
    State(state): State<Arc<SimState>>,
    id: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
    op: CacheOp,
) -> Response {
    match api_key(&headers, &query) {
        Ok(()) => cache_op(&state, &Target::api().cache_name(&id), &body, op),
        Err(bad) => Err(bad),
    }
    .unwrap_or_else(IntoResponse::into_response)
}

type VertexCachePath = Path<(String, String, String)>;

async fn vertex_get(s: State<Arc<SimState>>, Path(p): VertexCachePath, h: HeaderMap) -> Response {
    vertex_cache_op(s, p, h, Bytes::new(), CacheOp::Get)
}
async fn vertex_patch(s: State<Arc<SimState>>, Path(p): VertexCachePath, h: HeaderMap, b: Bytes) -> Response {
    vertex_cache_op(s, p, h, b, CacheOp::Patch)
}
async fn vertex_delete(s: State<Arc<SimState>>, Path(p): VertexCachePath, h: HeaderMap) -> Response {
    vertex_cache_op(s, p, h, Bytes::new(), CacheOp::Delete)
}

fn vertex_cache_op(
    State(state): State<Arc<SimState>>,
    (project, location, id): (String, String, String),
    headers: HeaderMap,
    body: Bytes,
    op: CacheOp,
) -> Response {
    let target = Target { vertex: true, project, location };
    match bearer(&state, &headers) {
        Ok(()) => cache_op(&state, &target.cache_name(&id), &body, op),
        Err(bad) => Err(bad),
    }
    .unwrap_or_else(IntoResponse::into_response)
}

// ---------------------------------------------------------------------------------------------
// cachedContents

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `"3600s"` / `"1.5s"`.
fn parse_ttl(v: &Value) -> Option<Duration> {
    let secs: f64 = v.as_str()?.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn cache_json(name: &str, c: &Cache) -> Value {
    let remaining = c.expires_at.saturating_duration_since(Instant::now());
    let expire = chrono::Utc::now() + chrono::Duration::milliseconds(remaining.as_millis() as i64);
    json!({
        "name": name,
        "model": c.model,
        "displayName": c.display_name,
        "createTime": c.create_time,
        "updateTime": now_rfc3339(),
        "expireTime": expire.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "usageMetadata": {"totalTokenCount": c.token_count},
    })
}

fn create_cache(state: &SimState, target: &Target, body: &Bytes) -> Result<Response, Bad> {
    let store = &state.google;
    store.cache_creates.fetch_add(1, Ordering::Relaxed);
    let o = parse_body(body)?;
    let allowed = ["model", "displayName", "systemInstruction", "contents", "tools", "toolConfig", "ttl", "expireTime"];
    check_keys(&o, &allowed, "cached_content")?;
    let model = field(&o, "model").and_then(Value::as_str).unwrap_or("");
    let prefix = target.model_resource("");
    if model.strip_prefix(&prefix).is_none_or(str::is_empty) {
        return Err(invalid(format!(
            "* CreateCachedContentRequest.cached_content.model: model must be {prefix}{{model}}"
        )));
    }
    let checker = Checker { vertex: target.vertex, request: "CreateCachedContentRequest.cached_content" };
    if let Some(si) = field(&o, "systemInstruction") {
        checker.content(si, "cached_content.system_instruction", false)?;
    }
    checker.tools_and_config(&o, "cached_content")?;
    let ttl = match (field(&o, "ttl"), field(&o, "expireTime")) {
        (Some(ttl), None) => parse_ttl(ttl).ok_or_else(|| {
            invalid(format!(
                "Invalid value at 'cached_content.ttl' (type.googleapis.com/google.protobuf.Duration), {ttl}"
            ))
        })?,
        (None, _) => Duration::from_secs(3600),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "* CreateCachedContentRequest.cached_content: only one of ttl and expire_time may be set",
            ))
        }
    };
    let content_chars: usize = ["systemInstruction", "contents", "tools"]
        .iter()
        .filter_map(|k| field(&o, k))
        .map(|v| v.to_string().len())
        .sum();
    let token_count = (content_chars / 4) as u64;
    if token_count < MIN_CACHE_TOKENS {
        return Err(invalid(format!(
            "Cached content is too small. total_token_count={token_count}, min_total_token_count={MIN_CACHE_TOKENS}"
        )));
    }
    let id = format!(
        "sim{}{}",
        store.next_id.fetch_add(1, Ordering::Relaxed),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let name = target.cache_name(&id);
    let cache = Cache {
        model: model.to_string(),
        display_name: field(&o, "displayName").and_then(Value::as_str).unwrap_or("").to_string(),
        token_count,
        expires_at: Instant::now() + ttl,
        create_time: now_rfc3339(),
    };
    let answer = cache_json(&name, &cache);
    lock(&store.caches).insert(name, cache);
    Ok(Json(answer).into_response())
}

fn cache_op(state: &SimState, name: &str, body: &Bytes, op: CacheOp) -> Result<Response, Bad> {
    let store = &state.google;
    let now = Instant::now();
    let mut caches = lock(&store.caches);
    let live = caches.get(name).is_some_and(|c| c.expires_at > now);
    if !live {
        caches.remove(name);
        return Err(cache_not_found());
    }
    match op {
        CacheOp::Get => store.cache_gets.fetch_add(1, Ordering::Relaxed),
        CacheOp::Patch => store.cache_patches.fetch_add(1, Ordering::Relaxed),
        CacheOp::Delete => store.cache_deletes.fetch_add(1, Ordering::Relaxed),
    };
    match op {
        CacheOp::Delete => {
            caches.remove(name);
            Ok(Json(json!({})).into_response())
        }
        CacheOp::Get => Ok(Json(cache_json(name, &caches[name])).into_response()),
        CacheOp::Patch => {
            let o = parse_body(body)?;
            check_keys(&o, &["ttl", "expireTime", "displayName"], "cached_content")?;
            let ttl = field(&o, "ttl").and_then(parse_ttl).ok_or_else(|| {
                invalid("* UpdateCachedContentRequest.cached_content.ttl: a ttl like \"600s\" is required")
            })?;
            let cache = caches.get_mut(name).expect("checked live above");
            cache.expires_at = now + ttl;
            Ok(Json(cache_json(name, cache)).into_response())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// streamGenerateContent

/// What a valid request asks of the reply.
struct Checked {
    /// Token count of the cache referenced.
    cached_tokens: u64,
    thinking_off: bool,
}

fn generate(
    state: Arc<SimState>,
    target: Target,
    method: &str,
    query: &HashMap<String, String>,
    path: String,
    body: Bytes,
) -> Response {
    let received = Instant::now();
    let Some(model) = method.strip_suffix(":streamGenerateContent") else {
        let msg = format!("this double serves :streamGenerateContent only, not {method:?}");
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", &msg);
    };
    if query.get("alt").map(String::as_str) != Some("sse") {
        return invalid("this double streams SSE only: add ?alt=sse").into_response();
    }
    state.counters.llm_requests.fetch_add(1, Ordering::Relaxed);
    state.google.generate_requests.fetch_add(1, Ordering::Relaxed);
    let o = match parse_body(&body) {
        Ok(o) => o,
        Err(bad) => return bad.into_response(),
    };
    let body_value = Value::Object(o.clone());
    keep_request(&state, &body_value);
    {
        let mut kept = lock(&state.google.requests);
        if kept.len() >= REQUESTS_KEPT {
            kept.pop_front();
        }
        kept.push_back(Seen { path, body: body_value });
    }
    match model {
        "fail-500" => {
            let msg = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting";
            return google_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", msg);
        }
        "fail-429" => {
            let msg = "Resource has been exhausted (e.g. check quota).";
            return google_error(StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", msg);
        }
        "stall" => return stalled_sse(&state),
        _ => {}
    }
    let checked = match validate(&state, &target, model, &o) {
        Ok(c) => c,
        Err(bad) => return bad.into_response(),
    };
    let contents = field(&o, "contents").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let reply = choose_reply(&state.script, contents);
    let prompt_chars: usize = ["systemInstruction", "contents", "tools"]
        .iter()
        .filter_map(|k| field(&o, k))
        .map(|v| v.to_string().len())
        .sum();
    let usage = UsageCounts {
        prompt: (prompt_chars / 4).max(1) as u64 + checked.cached_tokens,
        cached: checked.cached_tokens,
        thoughts: if checked.thinking_off { 0 } else { 24 },
    };
    let chunks = plan_chunks(&state.google, model, &reply, usage);
    let sse = |v: &Value| Bytes::from(format!("data: {v}\r\n\r\n"));
    let frames: Vec<Bytes> = match model {
        "midstream-error" => {
            let error =
                json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}});
            vec![sse(&chunks[0]), sse(&error)]
        }
        "truncated" => chunks.iter().take(chunks.len().saturating_sub(1).max(1)).map(sse).collect(),
        "blocked" => {
            let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"},
                "usageMetadata": {"promptTokenCount": usage.prompt, "totalTokenCount": usage.prompt}, "modelVersion": model});
            vec![sse(&blocked)]
        }
        "unframed-error" => {
            let error = json!([{"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}]);
            vec![Bytes::from(serde_json::to_string_pretty(&error).unwrap_or_default())]
        }
        _ => chunks.iter().map(sse).collect(),
    };
    paced_sse(state, received, frames)
}

#[derive(Clone, Copy)]
struct UsageCounts {
    prompt: u64,
    cached: u64,
    thoughts: u64,
}

/// The scripted reply: after a function response, that function's reply, else by the last
/// user text.
fn choose_reply(script: &crate::Script, contents: &[Value]) -> Reply {
    let Some(last) = contents.last() else { return script.default_reply.clone() };
    let parts = last.get("parts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let response = parts.iter().find_map(|p| field(p.as_object()?, "functionResponse"));
    if let Some(response) = response {
        let name = response.get("name").and_then(Value::as_str);
        // What the tool returned: `{"output": <result>}` (a JSON result stays JSON).
        let output = response.pointer("/response/output").cloned().unwrap_or(Value::Null);
        let content = match output {
            Value::String(s) => s,
            other => other.to_string(),
        };
        return script.reply_after_tool(name, &content);
    }
    match parts.iter().rev().find_map(|p| p.get("text").and_then(Value::as_str)) {
        Some(text) if last.get("role").and_then(Value::as_str) != Some("model") => script.reply_for_user(text).clone(),
        _ => script.default_reply.clone(),
    }
}

/// One chunk per word, the calls whole in one chunk (a signature on the first), usage on every
/// chunk, `finishReason` and the complete counts on the last.
fn plan_chunks(store: &Store, model: &str, reply: &Reply, usage: UsageCounts) -> Vec<Value> {
    let response_id = uuid::Uuid::new_v4().simple().to_string();
    let completion_chars =
        reply.text.len() + reply.tool_calls.iter().map(|t| t.name.len() + t.arguments.to_string().len()).sum::<usize>();
    let candidates_tokens = (completion_chars / 4).max(1) as u64;
    let mut part_lists: Vec<Vec<Value>> =
        split_words(&reply.text).into_iter().map(|w| vec![json!({"text": w})]).collect();
    if !reply.tool_calls.is_empty() {
        let calls = reply
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut part = json!({"functionCall": {"name": c.name, "args": c.arguments}});
                if i == 0 {
                    part["thoughtSignature"] = json!(store.new_signature());
                }
                part
            })
            .collect();
        part_lists.push(calls);
    }
    if part_lists.is_empty() {
        part_lists.push(vec![json!({"text": ""})]);
    }
    let last = part_lists.len() - 1;
    part_lists
        .into_iter()
        .enumerate()
        .map(|(i, parts)| {
            let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
            let mut meta = json!({"promptTokenCount": usage.prompt, "totalTokenCount": usage.prompt});
            if usage.cached > 0 {
                meta["cachedContentTokenCount"] = json!(usage.cached);
            }
            if i == last {
                candidate["finishReason"] = json!("STOP");
                meta["candidatesTokenCount"] = json!(candidates_tokens);
                meta["thoughtsTokenCount"] = json!(usage.thoughts);
                meta["totalTokenCount"] = json!(usage.prompt + candidates_tokens + usage.thoughts);
            }
            json!({"candidates": [candidate], "usageMetadata": meta, "modelVersion": model, "responseId": response_id})
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Validation

fn validate(state: &SimState, target: &Target, model: &str, o: &Map<String, Value>) -> Result<Checked, Bad> {
    let mut allowed = vec![
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "safetySettings",
        "generationConfig",
        "cachedContent",
        "model",
    ];
    if target.vertex {
        allowed.push("labels");
    }
    check_keys(o, &allowed, "")?;
    let checker = Checker { vertex: target.vertex, request: "GenerateContentRequest" };
    let contents = match field(o, "contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        _ => return Err(invalid("* GenerateContentRequest.contents: contents is not specified")),
    };
    for (i, content) in contents.iter().enumerate() {
        checker.content(content, &format!("contents[{i}]"), true)?;
    }
    checker.turns(contents, &state.google, model)?;
    if let Some(si) = field(o, "systemInstruction") {
        checker.content(si, "system_instruction", false)?;
    }
    checker.tools_and_config(o, "")?;
    if let Some(settings) = field(o, "safetySettings") {
        for (i, s) in settings.as_array().ok_or_else(|| invalid("safety_settings must be a list"))?.iter().enumerate() {
            let allowed: &[&str] =
                if target.vertex { &["category", "threshold", "method"] } else { &["category", "threshold"] };
            check_keys(
                s.as_object().ok_or_else(|| invalid("safety setting must be an object"))?,
                allowed,
                &format!("safety_settings[{i}]"),
            )?;
        }
    }
    let mut thinking_off = false;
    if let Some(gc) = field(o, "generationConfig") {
        thinking_off = checker.generation_config(gc, model)?;
    }
    let mut cached_tokens = 0;
    if let Some(name) = field(o, "cachedContent") {
        if ["systemInstruction", "tools", "toolConfig"].iter().any(|k| field(o, k).is_some()) {
            return Err(invalid("CachedContent can not be used with GenerateContent request setting system_instruction, tools or tool_config.\n\nProposed fix: move those values to CachedContent from GenerateContent request."));
        }
        let name = name.as_str().unwrap_or("");
        let caches = lock(&state.google.caches);
        let cache = caches
            .get(name)
            .filter(|c| c.expires_at > Instant::now() && name.starts_with(&target.parent()))
            .ok_or_else(cache_not_found)?;
        let wanted = target.model_resource(model);
        if cache.model != wanted {
            return Err(invalid(format!(
                "Model used by GenerateContent request ({wanted}) and CachedContent ({}) has to be the same.",
                cache.model
            )));
        }
        cached_tokens = cache.token_count;
        state.google.cached_requests.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Checked { cached_tokens, thinking_off })
}

struct Checker {
    vertex: bool,
    /// The request message named in `* Request.path: …` errors.
    request: &'static str,
}

impl Checker {
    fn field_error(&self, at: &str, what: &str) -> Bad {
        invalid(format!("* {}.{at}: {what}", self.request))
    }

    /// A `Content`: `role` and non-empty `parts`.
    fn content(&self, content: &Value, at: &str, in_contents: bool) -> Check {
        let o = content.as_object().ok_or_else(|| {
            invalid(format!(
                "Invalid value at '{at}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Content)"
            ))
        })?;
        check_keys(o, &["role", "parts"], at)?;
        match field(o, "role").and_then(Value::as_str) {
            Some("user" | "model") => {}
            None if !in_contents || !self.vertex => {}
            _ if !in_contents => {}
            _ => return Err(invalid("Please use a valid role: user, model.")),
        }
        let parts = match field(o, "parts") {
            Some(Value::Array(p)) if !p.is_empty() => p,
            _ => return Err(self.field_error(&format!("{at}.parts"), "contents.parts must not be empty.")),
        };
        for (j, part) in parts.iter().enumerate() {
            self.part(part, &format!("{at}.parts[{j}]"), in_contents)?;
        }
        Ok(())
    }

    fn part(&self, part: &Value, at: &str, in_contents: bool) -> Check {
        let o = part.as_object().ok_or_else(|| {
            invalid(format!("Invalid value at '{at}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Part)"))
        })?;
        let data = [
            "text",
            "inlineData",
            "fileData",
            "functionCall",
            "functionResponse",
            "executableCode",
            "codeExecutionResult",
        ];
        let mut allowed = data.to_vec();
        allowed.extend(["thought", "thoughtSignature", "videoMetadata"]);
        check_keys(o, &allowed, at)?;
        let kinds = data.iter().filter(|k| field(o, k).is_some()).count();
        if kinds != 1 {
            return Err(invalid(format!(
                "* {}.{at}.data: required oneof field 'data' must have one initialized field",
                self.request
            )));
        }
        if let Some(text) = field(o, "text") {
            let text = text.as_str().ok_or_else(|| invalid(format!("Invalid value at '{at}.text' (TYPE_STRING)")))?;
            if text.is_empty() && self.vertex {
                return Err(invalid("Unable to submit request because it has an empty text parameter. Add a value to the parameter and try again."));
            }
        }
        if !in_contents && field(o, "text").is_none() {
            return Err(invalid(format!("* {}.{at}: system instructions take text parts only", self.request)));
        }
        let id_field: &[&str] = if self.vertex { &[] } else { &["id"] };
        if let Some(call) = field(o, "functionCall") {
            let at = format!("{at}.function_call");
            let c = call.as_object().ok_or_else(|| invalid(format!("Invalid value at '{at}'")))?;
            check_keys(c, &[&["name", "args"], id_field].concat(), &at)?;
            if field(c, "name").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(self.field_error(&format!("{at}.name"), "Name cannot be empty."));
            }
            if field(c, "args").is_some_and(|a| !a.is_object()) {
                return Err(invalid(format!(
                    "Invalid value at '{at}.args' (type.googleapis.com/google.protobuf.Struct)"
                )));
            }
        }
        if let Some(response) = field(o, "functionResponse") {
            let at = format!("{at}.function_response");
            let r = response.as_object().ok_or_else(|| invalid(format!("Invalid value at '{at}'")))?;
            check_keys(r, &[&["name", "response"], id_field].concat(), &at)?;
            if field(r, "name").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(self.field_error(&format!("{at}.name"), "Name cannot be empty."));
            }
            if !field(r, "response").is_some_and(Value::is_object) {
                return Err(invalid(format!(
                    "Invalid value at '{at}.response' (type.googleapis.com/google.protobuf.Struct)"
                )));
            }
        }
        Ok(())
    }

    /// Turns alternate; function responses answer the calls just before them, one each; a Gemini 3
    /// model's function-call turns come back with the signature it gave them.
    fn turns(&self, contents: &[Value], store: &Store, model: &str) -> Check {
        let parts_of = |c: &Value| c.get("parts").and_then(Value::as_array).cloned().unwrap_or_default();
        let count = |parts: &[Value], kind: &str| {
            parts.iter().filter(|p| field(p.as_object().unwrap_or(&Map::new()), kind).is_some()).count()
        };
        let signatures = lock(&store.signatures);
        for (i, content) in contents.iter().enumerate() {
            let role = content.get("role").and_then(Value::as_str).unwrap_or("user");
            if i > 0 && contents[i - 1].get("role").and_then(Value::as_str).unwrap_or("user") == role {
                return Err(invalid("Please ensure that multiturn requests alternate between user and model."));
            }
            let parts = parts_of(content);
            let responses = count(&parts, "functionResponse");
            if responses > 0 {
                let calls = if i > 0 { count(&parts_of(&contents[i - 1]), "functionCall") } else { 0 };
                if calls == 0 {
                    return Err(invalid(
                        "Please ensure that function response turn comes immediately after a function call turn.",
                    ));
                }
                if calls != responses {
                    return Err(invalid("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn."));
                }
            }
            for part in &parts {
                if let Some(signature) = part.get("thoughtSignature").and_then(Value::as_str) {
                    if !signatures.contains(signature) {
                        return Err(invalid("Corrupted thought signature."));
                    }
                }
            }
            let first_call =
                parts.iter().find(|p| field(p.as_object().unwrap_or(&Map::new()), "functionCall").is_some());
            if let Some(call) = first_call.filter(|_| model.starts_with("gemini-3")) {
                if call.get("thoughtSignature").is_none() {
                    let name = call.pointer("/functionCall/name").and_then(Value::as_str).unwrap_or("");
                    return Err(invalid(format!("Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{name}` , position {}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details.", i + 1)));
                }
            }
        }
        Ok(())
    }

    fn tools_and_config(&self, o: &Map<String, Value>, at: &str) -> Check {
        if let Some(tools) = field(o, "tools") {
            let tools = tools.as_array().ok_or_else(|| {
                invalid(format!(
                    "Invalid value at '{}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Tool)",
                    join(at, "tools")
                ))
            })?;
            for (i, tool) in tools.iter().enumerate() {
                let tat = join(at, &format!("tools[{i}]"));
                let t = tool.as_object().ok_or_else(|| invalid(format!("Invalid value at '{tat}'")))?;
                check_keys(
                    t,
                    &["functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext"],
                    &tat,
                )?;
                for (j, d) in
                    field(t, "functionDeclarations").and_then(Value::as_array).into_iter().flatten().enumerate()
                {
                    self.declaration(d, &format!("{tat}.function_declarations[{j}]"))?;
                }
            }
        }
        if let Some(config) = field(o, "toolConfig") {
            let cat = join(at, "tool_config");
            let c = config.as_object().ok_or_else(|| invalid(format!("Invalid value at '{cat}'")))?;
            check_keys(c, &["functionCallingConfig", "retrievalConfig"], &cat)?;
            if let Some(fcc) = field(c, "functionCallingConfig").and_then(Value::as_object) {
                let fat = format!("{cat}.function_calling_config");
                let allowed: &[&str] = if self.vertex {
                    &["mode", "allowedFunctionNames", "streamFunctionCallArguments"]
                } else {
                    &["mode", "allowedFunctionNames"]
                };
                check_keys(fcc, allowed, &fat)?;
                let mode = field(fcc, "mode").and_then(Value::as_str).unwrap_or("MODE_UNSPECIFIED");
                if !["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"].contains(&mode) {
                    return Err(invalid(format!("Invalid value at '{fat}.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\"")));
                }
            }
        }
        Ok(())
    }

    fn declaration(&self, d: &Value, at: &str) -> Check {
        let o = d.as_object().ok_or_else(|| invalid(format!("Invalid value at '{at}'")))?;
        check_keys(
            o,
            &[
                "name",
                "description",
                "parameters",
                "parametersJsonSchema",
                "response",
                "responseJsonSchema",
                "behavior",
            ],
            at,
        )?;
        let name = field(o, "name").and_then(Value::as_str).unwrap_or("");
        let starts_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let chars_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
        if !starts_ok || !chars_ok || name.len() > 64 {
            return Err(self.field_error(&format!("{at}.name"), "Invalid function name. Must start with a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or dashes (-), with a maximum length of 64."));
        }
        if field(o, "parameters").is_some() && field(o, "parametersJsonSchema").is_some() {
            return Err(self.field_error(at, "parameters and parameters_json_schema are mutually exclusive"));
        }
        if let Some(params) = field(o, "parameters") {
            self.schema(params, &format!("{at}.parameters"), 0)?;
        }
        Ok(())
    }

    /// Google's Schema object, recursively.
    fn schema(&self, s: &Value, at: &str, depth: usize) -> Check {
        let o = s.as_object().ok_or_else(|| {
            invalid(format!(
                "Invalid value at '{at}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Schema), {s}"
            ))
        })?;
        if depth > 40 {
            return Err(self.field_error(at, "schema nesting too deep"));
        }
        let mut allowed = SCHEMA_KEYS.to_vec();
        if self.vertex {
            allowed.extend(["additionalProperties", "ref", "defs"]);
        }
        check_keys(o, &allowed, at)?;
        let kind = match field(o, "type") {
            None => None,
            Some(Value::String(t))
                if ["STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL", "TYPE_UNSPECIFIED"]
                    .contains(&t.to_ascii_uppercase().as_str()) =>
            {
                Some(t.to_ascii_uppercase())
            }
            Some(other) => {
                return Err(invalid(format!(
                "Invalid value at '{at}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), {other}"
            )))
            }
        };
        if let Some(values) = field(o, "enum") {
            for (i, v) in values.as_array().into_iter().flatten().enumerate() {
                if !v.is_string() {
                    return Err(invalid(format!("Invalid value at '{at}.enum[{i}]' (TYPE_STRING), {v}")));
                }
            }
        }
        if let Some(format) = field(o, "format").and_then(Value::as_str) {
            let ok = match kind.as_deref() {
                Some("STRING") => ["enum", "date-time"].contains(&format),
                Some("INTEGER") => ["int32", "int64"].contains(&format),
                Some("NUMBER") => ["float", "double"].contains(&format),
                _ => false,
            };
            if !ok {
                return Err(self.field_error(&format!("{at}.format"), "only 'enum' and 'date-time' are supported for STRING type, 'int32' and 'int64' for INTEGER, 'float' and 'double' for NUMBER"));
            }
        }
        let props = field(o, "properties")
            .map(|p| p.as_object().ok_or_else(|| invalid(format!("Invalid value at '{at}.properties'"))))
            .transpose()?;
        if let Some(props) = props {
            if props.is_empty() && kind.as_deref() == Some("OBJECT") {
                return Err(self.field_error(&format!("{at}.properties"), "should be non-empty for OBJECT type"));
            }
            for (i, (_, p)) in props.iter().enumerate() {
                self.schema(p, &format!("{at}.properties[{i}].value"), depth + 1)?;
            }
        }
        for (i, name) in field(o, "required").and_then(Value::as_array).into_iter().flatten().enumerate() {
            if !name.as_str().is_some_and(|n| props.is_some_and(|p| p.contains_key(n))) {
                return Err(self.field_error(&format!("{at}.required[{i}]"), "property is not defined"));
            }
        }
        if let Some(items) = field(o, "items") {
            self.schema(items, &format!("{at}.items"), depth + 1)?;
        }
        for (i, option) in field(o, "anyOf").and_then(Value::as_array).into_iter().flatten().enumerate() {
            self.schema(option, &format!("{at}.any_of[{i}]"), depth + 1)?;
        }
        Ok(())
    }

    /// Returns whether thinking is off (`thinkingBudget: 0`).
    fn generation_config(&self, gc: &Value, model: &str) -> Result<bool, Bad> {
        let at = "generation_config";
        let o = gc.as_object().ok_or_else(|| invalid(format!("Invalid value at '{at}'")))?;
        check_keys(o, GENERATION_KEYS, at)?;
        for key in ["maxOutputTokens", "topK", "candidateCount", "seed"] {
            if field(o, key).is_some_and(|v| !v.is_i64()) {
                return Err(invalid(format!("Invalid value at '{at}.{}' (TYPE_INT32)", snake(key))));
            }
        }
        for key in ["temperature", "topP", "presencePenalty", "frequencyPenalty"] {
            if field(o, key).is_some_and(|v| !v.is_number()) {
                return Err(invalid(format!("Invalid value at '{at}.{}' (TYPE_FLOAT)", snake(key))));
            }
        }
        let mut thinking_off = false;
        if let Some(tc) = field(o, "thinkingConfig") {
            let tat = format!("{at}.thinking_config");
            let t = tc.as_object().ok_or_else(|| invalid(format!("Invalid value at '{tat}'")))?;
            check_keys(t, &["thinkingBudget", "thinkingLevel", "includeThoughts"], &tat)?;
            if let Some(level) = field(t, "thinkingLevel") {
                let ok = level
                    .as_str()
                    .is_some_and(|l| ["MINIMAL", "LOW", "MEDIUM", "HIGH"].contains(&l.to_ascii_uppercase().as_str()));
                if !ok {
                    return Err(invalid(format!("Invalid value at '{tat}.thinking_level' (type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingConfig.ThinkingLevel), {level}")));
                }
            }
            let budget = field(t, "thinkingBudget").and_then(Value::as_i64);
            if budget == Some(0) && model.contains("pro") {
                return Err(invalid("Budget 0 is invalid. This model only works in thinking mode."));
            }
            thinking_off = budget == Some(0);
        }
        if let Some(mime) = field(o, "responseMimeType").and_then(Value::as_str) {
            if !["text/plain", "application/json", "text/x.enum"].contains(&mime) {
                return Err(self.field_error(
                    &format!("{at}.response_mime_type"),
                    "allowed mimetypes are `text/plain`, `application/json`, `text/x.enum`.",
                ));
            }
        }
        if let Some(schema) = field(o, "responseSchema") {
            self.schema(schema, &format!("{at}.response_schema"), 0)?;
        }
        Ok(thinking_off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_both_spellings() {
        assert_eq!(snake("systemInstruction"), "system_instruction");
        assert_eq!(camel("function_declarations"), "functionDeclarations");
        let o = json!({"generation_config": {"top_p": 1}});
        assert!(field(o.as_object().unwrap(), "generationConfig").is_some());
    }

    #[test]
    fn schema_rules() {
        let c = Checker { vertex: false, request: "GenerateContentRequest" };
        let ok = json!({"type": "OBJECT", "properties": {"q": {"type": "string", "enum": ["a"]}}, "required": ["q"]});
        assert!(c.schema(&ok, "p", 0).is_ok());
        let msg = |s: Value| c.schema(&s, "tools[0].function_declarations[0].parameters", 0).err().unwrap().message;
        assert_eq!(
            msg(json!({"type": "object", "properties": {}, "additionalProperties": false})),
            "Invalid JSON payload received. Unknown name \"additionalProperties\" at 'tools[0].function_declarations[0].parameters': Cannot find field."
        );
        assert!(msg(json!({"type": "OBJECT", "properties": {}}))
            .ends_with("properties: should be non-empty for OBJECT type"));
        assert!(msg(json!({"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "required": ["b"]}))
            .ends_with("required[0]: property is not defined"));
        assert!(msg(json!({"type": "STRING", "format": "email"})).contains("only 'enum' and 'date-time'"));
        assert!(msg(json!({"type": "STRING", "enum": [1]})).contains("TYPE_STRING"));
        let vertex = Checker { vertex: true, request: "GenerateContentRequest" };
        assert!(vertex
            .schema(
                &json!({"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "additionalProperties": false}),
                "p",
                0
            )
            .is_ok());
    }

    #[test]
    fn ttl_strings() {
        assert_eq!(parse_ttl(&json!("300s")), Some(Duration::from_secs(300)));
        assert_eq!(parse_ttl(&json!("1.5s")), Some(Duration::from_millis(1500)));
        assert_eq!(parse_ttl(&json!("300")), None);
        assert_eq!(parse_ttl(&json!("-1s")), None);
    }
}
