//! OpenAI-compatible streaming chat completions (`POST {base}/chat/completions`, SSE;
//! wire-protocols §4).
//!
//! The task is owned by an [`crate::llm::LlmStream`] and aborted when that is dropped, so every
//! await here is a cancellation point and nothing outlives the response body.

use std::collections::BTreeMap;

use cxb_wire::llm::{ChatMessage, ChatRequest, ResponseFormat, ToolCall, ToolSpec, Usage};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::llm::{LlmEvent, LlmParams};
use crate::ws::{truncate, MAX_ERROR_BODY};
use crate::ProviderError;

const PROVIDER: &str = crate::registry::OPENAI.name;
/// A voice turn is a few hundred tokens; megabytes mean a runaway or broken server.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// One SSE line carries one JSON chunk; nothing legitimate comes near this.
const MAX_LINE_BYTES: usize = 1024 * 1024;

pub(crate) async fn run(http: reqwest::Client, params: LlmParams, req: ChatRequest, tx: mpsc::Sender<LlmEvent>) {
    if let Err(e) = stream_completion(&http, &params, &req, &tx).await {
        tracing::warn!(error = %e, model = %req.model, "chat completion failed");
        let _ = tx.send(LlmEvent::Error(e)).await;
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
    let mut resp = tokio::time::timeout(params.idle_timeout, send)
        .await
        .map_err(|_| timeout("waiting for response headers"))?
        .map_err(|e| ProviderError::Connect { provider: PROVIDER, detail: error_chain(&e) })?;
    if !resp.status().is_success() {
        return Err(status_error(resp, params).await);
    }

    let mut parser = SseParser::default();
    let mut acc = Accumulator::default();
    loop {
        let chunk = tokio::time::timeout(params.idle_timeout, resp.chunk())
            .await
            .map_err(|_| timeout("waiting for the next chunk"))?
            .map_err(|e| ProviderError::Closed { provider: PROVIDER, detail: error_chain(&e) })?;
        let (payloads, body_ended) = match chunk {
            Some(bytes) => (parser.feed(&bytes)?, false),
            // A final event may lack its blank-line terminator.
            None => (parser.finish().into_iter().collect(), true),
        };
        for data in payloads {
            if let Some(token) = acc.on_data(&data)? {
                if tx.send(LlmEvent::Token(token)).await.is_err() {
                    return Ok(());
                }
            }
            if acc.done {
                return emit_end(acc, tx).await;
            }
        }
        if body_ended {
            break;
        }
    }
    // No `[DONE]`: still a usable answer if the model said it had finished.
    if acc.finish_reason.is_some() {
        return emit_end(acc, tx).await;
    }
    Err(ProviderError::Closed { provider: PROVIDER, detail: "stream ended before [DONE]".into() })
}

async fn emit_end(acc: Accumulator, tx: &mpsc::Sender<LlmEvent>) -> Result<(), ProviderError> {
    for event in acc.into_events() {
        if tx.send(event).await.is_err() {
            break;
        }
    }
    Ok(())
}

fn timeout(what: &str) -> ProviderError {
    ProviderError::Timeout { provider: PROVIDER, what: what.to_string() }
}

/// reqwest's Display hides the cause ("error sending request"); the chain says why.
fn error_chain(e: &dyn std::error::Error) -> String {
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
async fn status_error(mut resp: reqwest::Response, params: &LlmParams) -> ProviderError {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match tokio::time::timeout(params.idle_timeout, resp.chunk()).await {
            Ok(Ok(Some(bytes))) => body.extend_from_slice(&bytes),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY);
    let body = truncate(String::from_utf8_lossy(&body).into_owned(), MAX_ERROR_BODY);
    ProviderError::Status { provider: PROVIDER, status, body }
}

// ---------------------------------------------------------------------------------------------
// Request

pub(crate) fn request_body(req: &ChatRequest) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({ "include_usage": true }));
    body.insert("messages".into(), Value::Array(req.messages.iter().map(message_json).collect()));
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
fn f32_to_f64(v: f32) -> f64 {
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
#[derive(Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline.
    scanned: usize,
    data: String,
    has_data: bool,
    total: usize,
}

impl SseParser {
    /// Feed raw body bytes; returns the `data` payloads of the events completed by them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, ProviderError> {
        self.total += bytes.len();
        if self.total > MAX_RESPONSE_BYTES {
            return Err(protocol(format!("response larger than {MAX_RESPONSE_BYTES} bytes")));
        }
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + pos;
            if end - start > MAX_LINE_BYTES {
                return Err(protocol(format!("SSE line longer than {MAX_LINE_BYTES} bytes")));
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
            return Err(protocol(format!("SSE line longer than {MAX_LINE_BYTES} bytes")));
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
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            self.has_data = true;
        }
        None
    }
}

fn protocol(detail: String) -> ProviderError {
    ProviderError::Protocol { provider: PROVIDER, detail }
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

impl Accumulator {
    /// Apply one event payload; returns the content delta, if any.
    pub(crate) fn on_data(&mut self, data: &str) -> Result<Option<String>, ProviderError> {
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

    /// `ToolCalls` (if any) then `Done`.
    pub(crate) fn into_events(self) -> Vec<LlmEvent> {
        let mut events = Vec::with_capacity(2);
        if !self.tool_calls.is_empty() {
            events.push(LlmEvent::ToolCalls(self.tool_calls.into_values().collect()));
        }
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
