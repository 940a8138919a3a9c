//! OpenAI-compatible streaming chat completions (`POST {base}/chat/completions`, SSE;
//! wire-protocols §4).
//!
//! The task is owned by an [`crate::llm::LlmStream`] and aborted when that is dropped, so every
//! await here is a cancellation point and nothing outlives the response body.

use std::collections::BTreeMap;

use std::time::Duration;

use cxb_wire::llm::{ChatMessage, ChatRequest, ResponseFormat, ToolCall, ToolSpec, Usage};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::llm::{LlmEvent, LlmParams};
use crate::prompt_cache::{split_system, CacheReport};
use crate::ws::{truncate, MAX_ERROR_BODY};
use crate::ProviderError;

const PROVIDER: &str = crate::registry::OPENAI.name;
/// A voice turn is a few hundred tokens; megabytes mean a runaway or broken server.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// One SSE line carries one JSON chunk; nothing legitimate comes near this.
const MAX_LINE_BYTES: usize = 1024 * 1024;

pub(crate) async fn run(http: reqwest::Client, params: LlmParams, req: ChatRequest, tx: mpsc::Sender<LlmEvent>) {
    if let Err(e) = stream_completion(&http, &params, &req, &tx).await {
        report_failure(e, &req.model, &tx).await;
    }
}

/// The request's last event: its error (logged, since the caller may be gone).
pub(crate) async fn report_failure(e: ProviderError, model: &str, tx: &mpsc::Sender<LlmEvent>) {
    tracing::warn!(error = %e, %model, "LLM request failed");
    let _ = tx.send(LlmEvent::Error(e)).await;
}

/// Sends the closing events in order, until the receiver goes away.
pub(crate) async fn send_all(tx: &mpsc::Sender<LlmEvent>, events: Vec<LlmEvent>) {
    for event in events {
        if tx.send(event).await.is_err() {
            break;
        }
    }
}

/// Runs the request to completion. `Ok` also covers "the receiver went away" (nothing to report).
async fn stream_completion(
    http: &reqwest::Client,
    params: &LlmParams,
    req: &ChatRequest,
    tx: &mpsc::Sender<LlmEvent>,
) -> Result<(), ProviderError> {
    let url = format!("{}/chat/completions", params.base_url.trim_end_matches('/'));
    let send = http.post(&url).bearer_auth(&params.api_key).json(&request_body(req)).send();
    let resp = send_bounded(PROVIDER, params.idle_timeout, send).await?;
    if !resp.status().is_success() {
        return Err(status_error(resp, params).await);
    }

    let mut acc = Accumulator::default();
    if !SseBody::new(PROVIDER, resp, params.idle_timeout).pump(&mut acc, tx).await? {
        return Ok(());
    }
    send_all(tx, acc.conclude(req.prompt_cache.is_some())?).await;
    Ok(())
}

/// Sends a request, bounded by `wait` up to the response headers.
pub(crate) async fn send_bounded(
    provider: &'static str,
    wait: Duration,
    send: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
) -> Result<reqwest::Response, ProviderError> {
    tokio::time::timeout(wait, send)
        .await
        .map_err(|_| ProviderError::Timeout { provider, what: "waiting for response headers".into() })?
        .map_err(|e| ProviderError::Connect { provider, detail: error_chain(&e) })
}

/// The SSE payloads of a streaming response body, each read bounded by the idle timeout.
pub(crate) struct SseBody {
    provider: &'static str,
    resp: reqwest::Response,
    parser: SseParser,
    idle_timeout: Duration,
    ended: bool,
}

impl SseBody {
    pub(crate) fn new(provider: &'static str, resp: reqwest::Response, idle_timeout: Duration) -> Self {
        Self { provider, resp, parser: SseParser::new(provider), idle_timeout, ended: false }
    }

    /// The payloads completed by the next piece of the body; `None` once the body has ended
    /// (its last payloads were returned before).
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<String>>, ProviderError> {
        if self.ended {
            return Ok(None);
        }
        let provider = self.provider;
        let chunk = tokio::time::timeout(self.idle_timeout, self.resp.chunk())
            .await
            .map_err(|_| ProviderError::Timeout { provider, what: "waiting for the next chunk".into() })?
            .map_err(|e| ProviderError::Closed { provider, detail: error_chain(&e) })?;
        match chunk {
            Some(bytes) => Ok(Some(self.parser.feed(&bytes)?)),
            None => {
                self.ended = true;
                // A final event may lack its blank-line terminator.
                Ok(Some(self.parser.finish().into_iter().collect()))
            }
        }
    }

    /// Body lines that were not SSE fields (an error body sent without `data:` framing).
    pub(crate) fn stray_text(&self) -> &str {
        self.parser.stray()
    }

    /// Feeds every payload to `state` and sends its text as tokens, until the body ends or the
    /// state has seen the vendor's end marker. `Ok(false)`: the receiver went away.
    pub(crate) async fn pump(
        &mut self,
        state: &mut impl StreamState,
        tx: &mpsc::Sender<LlmEvent>,
    ) -> Result<bool, ProviderError> {
        while let Some(payloads) = self.next().await? {
            for data in payloads {
                if let Some(text) = state.on_data(&data)? {
                    if tx.send(LlmEvent::Token(text)).await.is_err() {
                        return Ok(false);
                    }
                }
                if state.finished() {
                    return Ok(true);
                }
            }
        }
        Ok(true)
    }
}

/// One response's state across its SSE payloads.
pub(crate) trait StreamState {
    /// Apply one payload; its text delta, if any.
    fn on_data(&mut self, data: &str) -> Result<Option<String>, ProviderError>;
    /// The vendor's end marker was seen: read no further.
    fn finished(&self) -> bool {
        false
    }
}

/// reqwest's Display hides the cause ("error sending request"); the chain says why.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Non-2xx: keep the first 2 KB of the body (the vendor's error JSON), bounded in time too.
async fn status_error(resp: reqwest::Response, params: &LlmParams) -> ProviderError {
    let status = resp.status().as_u16();
    let body = error_body(resp, params.idle_timeout).await;
    ProviderError::Status { provider: PROVIDER, status, body }
}

/// The first 2 KB of an error response's body, each read bounded by `wait`.
pub(crate) async fn error_body(resp: reqwest::Response, wait: Duration) -> String {
    body_text(resp, wait, MAX_ERROR_BODY).await
}

/// The first `max` bytes of a response's body as text, each read bounded by `wait`.
pub(crate) async fn body_text(mut resp: reqwest::Response, wait: Duration, max: usize) -> String {
    let mut body = Vec::new();
    while body.len() < max {
        match tokio::time::timeout(wait, resp.chunk()).await {
            Ok(Ok(Some(bytes))) => body.extend_from_slice(&bytes),
            _ => break,
        }
    }
    body.truncate(max);
    truncate(String::from_utf8_lossy(&body).into_owned(), max)
}

// ---------------------------------------------------------------------------------------------
// Request

pub(crate) fn request_body(req: &ChatRequest) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    match &req.prompt_cache {
        // The cacheable block first: OpenAI caches the longest prefix it has seen before.
        Some(cache) => {
            let system = split_system(req);
            let text = system.joined();
            if !text.is_empty() {
                messages.push(json!({ "role": "system", "content": text }));
            }
            messages.extend(system.conversation.iter().map(message_json));
            let key = cache.openai_key.clone().unwrap_or_else(|| format!("{}:{}", cache.key, cache.static_version));
            body.insert("prompt_cache_key".into(), json!(key));
            if let Some(retention) = &cache.retention {
                body.insert("prompt_cache_retention".into(), json!(retention));
            }
        }
        None => messages.extend(req.messages.iter().map(message_json)),
    }
    body.insert("messages".into(), Value::Array(messages));
    if !req.tools.is_empty() {
        body.insert("tools".into(), Value::Array(req.tools.iter().map(ToolSpec::to_openai_json).collect()));
        body.insert("tool_choice".into(), json!("auto"));
    }
    if let Some(format) = response_format(&req.response) {
        body.insert("response_format".into(), format);
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(f32_to_f64(t)));
    }
    if let Some(max) = req.max_tokens {
        body.insert("max_completion_tokens".into(), json!(max));
    }
    for (key, value) in &req.extra {
        body.insert(key.clone(), value.clone());
    }
    Value::Object(body)
}

/// `response_format` (platform.openai.com/docs/guides/structured-outputs): JSON mode, or
/// Structured Outputs when a schema is given. Not `strict`: a schema from a bot's prompt need
/// not meet strict mode's subset of JSON Schema. Text is the default and is not sent.
fn response_format(format: &ResponseFormat) -> Option<Value> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::Json { schema: None } => Some(json!({"type": "json_object"})),
        ResponseFormat::Json { schema: Some(schema) } => {
            Some(json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}))
        }
    }
}

/// `0.3f32 as f64` is 0.30000001192…; go through the shortest decimal form instead.
pub(crate) fn f32_to_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

fn message_json(msg: &ChatMessage) -> Value {
    match msg {
        ChatMessage::System(text) => json!({ "role": "system", "content": text }),
        ChatMessage::User(text) => json!({ "role": "user", "content": text }),
        ChatMessage::Assistant { content, tool_calls } => {
            let mut m = Map::new();
            m.insert("role".into(), json!("assistant"));
            match content {
                Some(text) => {
                    m.insert("content".into(), json!(text));
                }
                // The API rejects an assistant message with neither content nor tool calls.
                None if tool_calls.is_empty() => {
                    m.insert("content".into(), json!(""));
                }
                None => {}
            }
            if !tool_calls.is_empty() {
                let calls = tool_calls
                    .iter()
                    .map(|c| {
                        json!({ "id": c.id, "type": "function",
                                "function": { "name": c.name, "arguments": c.arguments } })
                    })
                    .collect();
                m.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(m)
        }
        ChatMessage::Tool { tool_call_id, content } => {
            json!({ "role": "tool", "tool_call_id": tool_call_id, "content": content })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SSE framing

/// Incremental `text/event-stream` parser. Works on bytes and decodes only whole lines, so a
/// network split in the middle of a line or a UTF-8 sequence is harmless.
pub(crate) struct SseParser {
    /// Named in the errors it returns.
    provider: &'static str,
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    data: String,
    has_data: bool,
    total: usize,
    /// The first lines that were no SSE field (bounded): an error body sent without framing.
    stray: String,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(PROVIDER)
    }
}

/// How much of the unframed body an [`SseParser`] keeps for the error it may hold.
const MAX_STRAY_BYTES: usize = 16 * 1024;

impl SseParser {
    pub(crate) fn new(provider: &'static str) -> Self {
        Self {
            provider,
            buf: Vec::new(),
            scanned: 0,
            data: String::new(),
            has_data: false,
            total: 0,
            stray: String::new(),
        }
    }

    /// Feed raw body bytes; returns the `data` payloads of the events completed by them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, ProviderError> {
        self.total += bytes.len();
        if self.total > MAX_RESPONSE_BYTES {
            return Err(self.protocol(format!("response larger than {MAX_RESPONSE_BYTES} bytes")));
        }
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + pos;
            if end - start > MAX_LINE_BYTES {
                return Err(self.protocol(format!("SSE line longer than {MAX_LINE_BYTES} bytes")));
            }
            let line = self.buf[start..end].strip_suffix(b"\r").unwrap_or(&self.buf[start..end]);
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(data) = self.on_line(&line) {
                events.push(data);
            }
            start = end + 1;
            self.scanned = start;
        }
        self.buf.drain(..start);
        self.scanned -= start;
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(self.protocol(format!("SSE line longer than {MAX_LINE_BYTES} bytes")));
        }
        Ok(events)
    }

    /// End of body: dispatch a trailing event that had no blank line after it.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        let rest = String::from_utf8_lossy(rest.strip_suffix(b"\r").unwrap_or(&rest)).into_owned();
        if !rest.is_empty() {
            let _ = self.on_line(&rest);
        }
        self.on_line("")
    }

    fn on_line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            if !self.has_data {
                return None;
            }
            self.has_data = false;
            return Some(std::mem::take(&mut self.data));
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
                self.has_data = true;
            }
            "event" | "id" | "retry" => {}
            _ if self.stray.len() + line.len() < MAX_STRAY_BYTES => {
                self.stray.push_str(line);
                self.stray.push('\n');
            }
            _ => {}
        }
        None
    }

    /// Body lines that were no SSE field (bounded).
    pub(crate) fn stray(&self) -> &str {
        &self.stray
    }

    fn protocol(&self, detail: String) -> ProviderError {
        ProviderError::Protocol { provider: self.provider, detail }
    }
}

// ---------------------------------------------------------------------------------------------
// Chunk interpretation

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    index: Option<usize>,
    id: Option<String>,
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct UsageJson {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
}

impl From<UsageJson> for Usage {
    fn from(u: UsageJson) -> Self {
        let details = u.prompt_tokens_details;
        Usage {
            prompt_tokens: u.prompt_tokens.unwrap_or(0),
            completion_tokens: u.completion_tokens.unwrap_or(0),
            total_tokens: u.total_tokens.unwrap_or(0),
            cached_tokens: details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0),
            cache_write_tokens: details.as_ref().and_then(|d| d.cache_write_tokens).unwrap_or(0),
            // OpenAI counts reasoning inside `completion_tokens`.
            thoughts_tokens: 0,
        }
    }
}

/// State of one response across chunks: tool-call fragments, finish reason, usage.
#[derive(Default)]
pub(crate) struct Accumulator {
    tool_calls: BTreeMap<usize, ToolCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    /// `data: [DONE]` seen.
    done: bool,
}

impl StreamState for Accumulator {
    fn on_data(&mut self, data: &str) -> Result<Option<String>, ProviderError> {
        self.apply(data)
    }

    fn finished(&self) -> bool {
        self.done
    }
}

impl Accumulator {
    /// Apply one event payload; returns the content delta, if any.
    pub(crate) fn apply(&mut self, data: &str) -> Result<Option<String>, ProviderError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let value: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed completion chunk");
                return Ok(None);
            }
        };
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            return Err(ProviderError::Remote { provider: PROVIDER, detail: remote_detail(error) });
        }
        let chunk: Chunk = match serde_json::from_value(value) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring completion chunk of unexpected shape");
                return Ok(None);
            }
        };
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        let mut content = String::new();
        // n=1 is all we ask for; other choice indexes would be a different answer.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
            let Some(delta) = choice.delta else { continue };
            content.push_str(delta.content.as_deref().unwrap_or(""));
            for fragment in delta.tool_calls.unwrap_or_default() {
                self.apply_tool_fragment(fragment);
            }
        }
        Ok((!content.is_empty()).then_some(content))
    }

    /// The first fragment of a call carries id and name; later ones only more arguments.
    /// Some compatible servers repeat id/name on every fragment or omit `index`, so id and
    /// name are set once and a missing index means "a new call if it has an id, else the last".
    fn apply_tool_fragment(&mut self, fragment: ToolCallDelta) {
        let index = fragment.index.unwrap_or_else(|| {
            let last = self.tool_calls.keys().next_back().copied();
            match (last, &fragment.id) {
                (Some(last), None) => last,
                (Some(last), Some(_)) => last + 1,
                (None, _) => 0,
            }
        });
        let call = self.tool_calls.entry(index).or_insert_with(|| ToolCall {
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
            thought_signature: None,
        });
        if let Some(id) = fragment.id.filter(|id| !id.is_empty()) {
            if call.id.is_empty() {
                call.id = id;
            }
        }
        if let Some(function) = fragment.function {
            if let Some(name) = function.name.filter(|n| !n.is_empty()) {
                if call.name.is_empty() {
                    call.name = name;
                }
            }
            call.arguments.push_str(function.arguments.as_deref().unwrap_or(""));
        }
    }

    /// The body ended: the closing events (the cache report when the request carried a cache
    /// hint), or why the answer is incomplete. Without `[DONE]` it is still a usable answer if
    /// the model said it had finished.
    pub(crate) fn conclude(self, cache_hint: bool) -> Result<Vec<LlmEvent>, ProviderError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(ProviderError::Closed { provider: PROVIDER, detail: "stream ended before [DONE]".into() });
        }
        let cache = cache_hint.then(|| CacheReport::from_usage(self.usage.as_ref()));
        Ok(self.into_events(cache))
    }

    /// `ToolCalls` (if any), the cache report (if any), then `Done`.
    fn into_events(self, cache: Option<CacheReport>) -> Vec<LlmEvent> {
        let mut events = Vec::with_capacity(3);
        if !self.tool_calls.is_empty() {
            events.push(LlmEvent::ToolCalls(self.tool_calls.into_values().collect()));
        }
        events.extend(cache.map(LlmEvent::Cache));
        events.push(LlmEvent::Done { finish_reason: self.finish_reason, usage: self.usage });
        events
    }
}

/// `{"message":…,"type":…,"code":…}` → "message (type, code)"; tolerate a bare string.
fn remote_detail(error: &Value) -> String {
    let Some(obj) = error.as_object() else {
        return error.as_str().map(str::to_string).unwrap_or_else(|| error.to_string());
    };
    let text = |k: &str| match obj.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let message = text("message").unwrap_or_else(|| "unknown error".into());
    let tags: Vec<String> = ["type", "code"].iter().filter_map(|k| text(k)).collect();
    if tags.is_empty() {
        message
    } else {
        format!("{message} ({})", tags.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_handles_crlf_comments_and_split_utf8() {
        let stream = ": keep-alive\r\ndata: {\"x\":\"h\u{e9}\"}\r\n\r\ndata: [DONE]\n\n";
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for b in stream.as_bytes() {
            out.extend(parser.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(out, vec!["{\"x\":\"h\u{e9}\"}".to_string(), "[DONE]".to_string()]);
        assert_eq!(parser.finish(), None);
    }

    #[test]
    fn parser_joins_multiline_data_and_flushes_at_eof() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b"data: a\ndata: b\n\ndata: tail").unwrap() == vec!["a\nb".to_string()]);
        assert_eq!(parser.finish(), Some("tail".into()));
    }

    #[test]
    fn parser_bounds_line_length() {
        let mut parser = SseParser::default();
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        assert!(matches!(parser.feed(&long), Err(ProviderError::Protocol { .. })));
    }

    #[test]
    fn prompt_cache_hints() {
        let mut req = ChatRequest {
            model: "m".into(),
            messages: vec![ChatMessage::System("notes".into()), ChatMessage::User("hi".into())],
            prompt_cache: Some(cxb_wire::llm::PromptCache {
                key: "bot-1".into(),
                static_system: "STATIC".into(),
                dynamic_system: "DYN".into(),
                static_version: "v2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let body = request_body(&req);
        assert_eq!(body["messages"][0], json!({"role": "system", "content": "STATIC\n\nDYN\n\nnotes"}));
        assert_eq!(body["messages"][1], json!({"role": "user", "content": "hi"}));
        assert_eq!(body["prompt_cache_key"], "bot-1:v2");
        assert!(body.get("prompt_cache_retention").is_none());
        if let Some(cache) = &mut req.prompt_cache {
            cache.openai_key = Some("custom".into());
            cache.retention = Some("24h".into());
        }
        let body = request_body(&req);
        assert_eq!(
            (body["prompt_cache_key"].as_str(), body["prompt_cache_retention"].as_str()),
            (Some("custom"), Some("24h"))
        );

        let mut acc = Accumulator::default();
        acc.apply(r#"{"choices":[],"usage":{"prompt_tokens":2000,"completion_tokens":5,"total_tokens":2005,"prompt_tokens_details":{"cached_tokens":1920}}}"#).unwrap();
        acc.apply(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#).unwrap();
        let report = CacheReport::from_usage(acc.usage.as_ref());
        let events = acc.into_events(Some(report));
        assert!(matches!(&events[0], LlmEvent::Cache(r) if r.status == crate::prompt_cache::CacheStatus::Hit));
        assert!(matches!(events[1], LlmEvent::Done { .. }));
    }

    #[test]
    fn body_shape() {
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![
                ChatMessage::Assistant {
                    content: None,
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "end_call".into(),
                        arguments: "{}".into(),
                        thought_signature: None,
                    }],
                },
                ChatMessage::Tool { tool_call_id: "c1".into(), content: "ok".into() },
            ],
            temperature: Some(0.3),
            ..Default::default()
        };
        let body = request_body(&req);
        assert_eq!(body["temperature"], json!(0.3));
        assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
        assert!(body.get("response_format").is_none(), "text is the default");
        assert!(body["messages"][0].get("content").is_none());
        assert_eq!(body["messages"][0]["tool_calls"][0]["function"]["name"], "end_call");
    }

    #[test]
    fn json_output_renders_response_format() {
        let json_mode = ChatRequest { response: ResponseFormat::Json { schema: None }, ..Default::default() };
        assert_eq!(request_body(&json_mode)["response_format"], json!({"type": "json_object"}));
        let schema = json!({"type": "object", "properties": {"DISPOSITION": {"type": "string"}}});
        let structured =
            ChatRequest { response: ResponseFormat::Json { schema: Some(schema.clone()) }, ..Default::default() };
        assert_eq!(
            request_body(&structured)["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}})
        );
        // A vendor parameter in `extra` still has the last word.
        let mut overridden = json_mode.clone();
        overridden.extra.insert("response_format".into(), json!({"type": "text"}));
        assert_eq!(request_body(&overridden)["response_format"], json!({"type": "text"}));
    }
}
