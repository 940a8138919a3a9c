//! Anthropic Messages double: `POST /v1/messages` with `stream: true` (SSE; wire-protocols §4).
//!
//! Strict like the real API: `x-api-key` (401) and `anthropic-version` (400) required; unknown
//! fields are "Extra inputs are not permitted"; the first message must be the user's; empty text
//! blocks, a `tool_use` without its `tool_result` in the next message (and the reverse), more than
//! four `cache_control` breakpoints, bad tool names or schemas are the vendor's 400 with its
//! `{"type":"error","error":{"type","message"}}` body.
//!
//! Prompt caching: the prefix up to the last breakpoint (tools, then system blocks) is cached for
//! five minutes when it reaches 1024 tokens: the first request reports
//! `cache_creation_input_tokens`, later ones `cache_read_input_tokens`. Replies come from the
//! script (the last user turn decides); tool calls stream as `tool_use` blocks with
//! `input_json_delta` fragments. Faults by model: `fail-500`, `overloaded` (529), `stall`,
//! `midstream-error` (an `error` event), `truncated` (no `message_delta`/`message_stop`).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::llm_openai::{keep_request, paced_sse, split_arguments, split_words, stalled_sse};
use crate::script::Reply;
use crate::SimState;

/// Prefixes shorter than this are not cached (silently, as the API does).
pub const MIN_CACHE_TOKENS: u64 = 1024;
const CACHE_TTL: Duration = Duration::from_secs(300);
const TOP_LEVEL: &[&str] = &[
    "model",
    "max_tokens",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "thinking",
    "service_tier",
];

/// Cached prefixes and counters.
#[derive(Debug, Default)]
pub struct Store {
    prefixes: Mutex<HashMap<u64, Instant>>,
    pub requests: AtomicU64,
    pub cache_writes: AtomicU64,
    pub cache_reads: AtomicU64,
}

pub fn routes() -> Router<Arc<SimState>> {
    Router::new().route("/v1/messages", post(handler))
}

pub fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message},
        "request_id": format!("req_sim{}", uuid::Uuid::new_v4().simple())});
    (status, Json(body)).into_response()
}

fn invalid(message: impl AsRef<str>) -> Response {
    anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", message.as_ref())
}

async fn handler(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let received = Instant::now();
    state.counters.llm_requests.fetch_add(1, Ordering::Relaxed);
    state.anthropic.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or("");
    match header("x-api-key") {
        "" => return anthropic_error(StatusCode::UNAUTHORIZED, "authentication_error", "x-api-key header is required"),
        "bad-key" => return anthropic_error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid x-api-key"),
        _ => {}
    }
    if header("anthropic-version").is_empty() {
        return invalid("anthropic-version: header is required");
    }
    let req: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(o)) => o,
        _ => {
            return invalid("There was an error parsing the body of your request. Please check that it is valid JSON.")
        }
    };
    keep_request(&state, &Value::Object(req.clone()));
    if let Err(message) = validate(&req) {
        return invalid(message);
    }
    let model = req["model"].as_str().unwrap_or_default().to_string();
    match model.as_str() {
        "fail-500" => return anthropic_error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "Internal server error"),
        "overloaded" => {
            return anthropic_error(
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded_error",
                "Overloaded",
            )
        }
        "stall" => return stalled_sse(&state),
        _ => {}
    }
    let messages = req["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let reply = choose_reply(&state.script, messages);
    let usage = usage(&state.anthropic, &req);
    let events = plan_events(&model, &reply, usage);
    let frames = match model.as_str() {
        "midstream-error" => {
            // The start, the first block and ping, one text delta, then the error.
            let mut f: Vec<Bytes> = events.into_iter().take(4).collect();
            f.push(event(
                "error",
                &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            f
        }
        "truncated" => events.into_iter().take_while(|b| !b.starts_with(b"event: message_delta")).collect(),
        _ => events,
    };
    paced_sse(state, received, frames)
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// After a tool result, that tool's reply (by the name of the `tool_use` it answers), else by
/// the last user text.
fn choose_reply(script: &crate::Script, messages: &[Value]) -> Reply {
    let Some(last) = messages.last() else { return script.default_reply.clone() };
    let blocks = match &last["content"] {
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(b) => b.clone(),
        _ => Vec::new(),
    };
    if let Some(result) = blocks.iter().find(|b| b["type"] == "tool_result") {
        let id = result["tool_use_id"].as_str();
        let name =
            messages.iter().rev().filter_map(|m| m["content"].as_array()).flatten().find_map(|b| {
                (b["type"] == "tool_use" && b["id"].as_str() == id).then(|| b["name"].as_str()).flatten()
            });
        let content = match &result["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
            _ => String::new(),
        };
        return script.reply_after_tool(name, &content);
    }
    match blocks.iter().rev().find_map(|b| b["text"].as_str()) {
        Some(text) if last["role"] == "user" => script.reply_for_user(text).clone(),
        _ => script.default_reply.clone(),
    }
}

#[derive(Clone, Copy)]
struct Usage {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
}

/// Tokens ≈ characters / 4; the prefix up to the last system breakpoint is cached.
fn usage(store: &Store, req: &Map<String, Value>) -> Usage {
    let tokens = |v: &Value| (v.to_string().len() / 4) as u64;
    let total = ["tools", "system", "messages"].iter().filter_map(|k| req.get(*k)).map(tokens).sum::<u64>().max(1);
    let tools = req.get("tools").cloned().unwrap_or(Value::Null);
    let system: Vec<Value> = req.get("system").and_then(Value::as_array).cloned().unwrap_or_default();
    let Some(last_mark) = system.iter().rposition(|b| b.get("cache_control").is_some()) else {
        return Usage { input: total, cache_creation: 0, cache_read: 0 };
    };
    let prefix = json!([tools, &system[..=last_mark]]);
    let prefix_tokens = tokens(&prefix);
    if prefix_tokens < MIN_CACHE_TOKENS {
        return Usage { input: total, cache_creation: 0, cache_read: 0 };
    }
    let mut hasher = DefaultHasher::new();
    prefix.to_string().hash(&mut hasher);
    let key = hasher.finish();
    let now = Instant::now();
    let mut prefixes = store.prefixes.lock().unwrap_or_else(|p| p.into_inner());
    let hit = prefixes.get(&key).is_some_and(|expiry| *expiry > now);
    // Each read refreshes the entry's five minutes.
    prefixes.insert(key, now + CACHE_TTL);
    let input = total.saturating_sub(prefix_tokens);
    if hit {
        store.cache_reads.fetch_add(1, Ordering::Relaxed);
        Usage { input, cache_creation: 0, cache_read: prefix_tokens }
    } else {
        store.cache_writes.fetch_add(1, Ordering::Relaxed);
        Usage { input, cache_creation: prefix_tokens, cache_read: 0 }
    }
}

fn plan_events(model: &str, reply: &Reply, usage: Usage) -> Vec<Bytes> {
    let id = format!("msg_sim{}", uuid::Uuid::new_v4().simple());
    let mut out = vec![event(
        "message_start",
        &json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": usage.input, "cache_creation_input_tokens": usage.cache_creation,
                "cache_read_input_tokens": usage.cache_read, "output_tokens": 1,
                "cache_creation": {"ephemeral_5m_input_tokens": usage.cache_creation, "ephemeral_1h_input_tokens": 0}}}}),
    )];
    let mut index = 0;
    let words = split_words(&reply.text);
    if !words.is_empty() {
        out.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ));
        out.push(event("ping", &json!({"type": "ping"})));
        for w in &words {
            out.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": w}}),
            ));
        }
        out.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": index})));
        index += 1;
    }
    for call in &reply.tool_calls {
        let tool_id = format!("toolu_sim{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        out.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": tool_id, "name": call.name, "input": {}}}),
        ));
        for fragment in split_arguments(&call.arguments.to_string()) {
            out.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": fragment}}),
            ));
        }
        out.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": index})));
        index += 1;
    }
    let output_chars = reply.text.len() + reply.tool_calls.iter().map(|t| t.arguments.to_string().len()).sum::<usize>();
    let stop_reason = if reply.tool_calls.is_empty() { "end_turn" } else { "tool_use" };
    out.push(event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {"output_tokens": (output_chars / 4).max(1)}}),
    ));
    out.push(event("message_stop", &json!({"type": "message_stop"})));
    out
}

// ---------------------------------------------------------------------------------------------
// Validation: the API's own wording (pydantic-style paths `messages.1.content.0`)

fn validate(req: &Map<String, Value>) -> Result<(), String> {
    if let Some(k) = req.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
        return Err(format!("{k}: Extra inputs are not permitted"));
    }
    if !req.get("model").is_some_and(Value::is_string) {
        return Err("model: Field required".into());
    }
    if req.get("max_tokens").and_then(Value::as_u64).is_none_or(|n| n < 1) {
        return Err("max_tokens: Field required".into());
    }
    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        return Err("this double serves streaming requests only: set \"stream\": true".into());
    }
    if let Some(t) = req.get("temperature") {
        if !t.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)) {
            return Err("temperature: Input should be less than or equal to 1".into());
        }
    }
    let mut breakpoints = 0;
    match req.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                text_block(b, &format!("system.{i}"), &mut breakpoints)?;
            }
        }
        Some(_) => return Err("system: Input should be a valid string or list of text blocks".into()),
    }
    let tool_names = tools(req, &mut breakpoints)?;
    let messages = match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => return Err("messages: at least one message is required".into()),
    };
    let mut pending_tool_uses: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages.{i}");
        let o = m.as_object().ok_or_else(|| format!("{at}: Input should be a valid dictionary"))?;
        if let Some(k) = o.keys().find(|k| !["role", "content"].contains(&k.as_str())) {
            return Err(format!("{at}.{k}: Extra inputs are not permitted"));
        }
        let role = o.get("role").and_then(Value::as_str).unwrap_or("");
        if !["user", "assistant"].contains(&role) {
            return Err(format!("{at}.role: Input should be 'user' or 'assistant'"));
        }
        if i == 0 && role != "user" {
            return Err("messages: first message must use the \"user\" role".into());
        }
        let blocks = match o.get("content") {
            Some(Value::String(s)) if s.is_empty() => {
                return Err("messages: text content blocks must be non-empty".into())
            }
            Some(Value::String(_)) => Vec::new(),
            Some(Value::Array(b)) if !b.is_empty() => b.clone(),
            _ => return Err(format!("{at}.content: Field required")),
        };
        let mut results = Vec::new();
        let mut uses = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let bat = format!("{at}.content.{j}");
            match b.get("type").and_then(Value::as_str) {
                Some("text") => text_block(b, &bat, &mut breakpoints)?,
                Some("tool_use") if role == "assistant" => {
                    keys(b, &["type", "id", "name", "input", "cache_control"], &bat)?;
                    let id = b.get("id").and_then(Value::as_str).filter(|id| valid_name(id, 200));
                    let id = id.ok_or_else(|| format!("{bat}.id: String should match pattern '^[a-zA-Z0-9_-]+$'"))?;
                    if !b.get("input").is_some_and(Value::is_object) {
                        return Err(format!("{bat}.input: Input should be a valid dictionary"));
                    }
                    if !tool_names.iter().any(|n| Some(n.as_str()) == b["name"].as_str()) {
                        return Err(format!("{bat}: tool_use names a tool the request does not define"));
                    }
                    uses.push(id.to_string());
                }
                Some("tool_result") if role == "user" => {
                    keys(b, &["type", "tool_use_id", "content", "is_error", "cache_control"], &bat)?;
                    let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("").to_string();
                    if !pending_tool_uses.contains(&id) {
                        return Err(format!("{bat}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."));
                    }
                    results.push(id);
                }
                other => {
                    return Err(format!(
                        "{bat}.type: Input tag {other:?} found using 'type' does not match any of the expected tags"
                    ))
                }
            }
        }
        let missing: Vec<&String> = pending_tool_uses.iter().filter(|id| !results.contains(id)).collect();
        if !missing.is_empty() {
            let ids = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            return Err(format!("messages.{}: `tool_use` ids were found without `tool_result` blocks immediately after: {ids}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.", i - 1));
        }
        pending_tool_uses = uses;
    }
    if breakpoints > 4 {
        return Err(format!("A maximum of 4 blocks with cache_control may be provided. Found {breakpoints}."));
    }
    Ok(())
}

fn keys(b: &Value, allowed: &[&str], at: &str) -> Result<(), String> {
    match b.as_object().and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str()))) {
        Some(k) => Err(format!("{at}.{k}: Extra inputs are not permitted")),
        None => Ok(()),
    }
}

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn cache_control(b: &Value, at: &str, breakpoints: &mut usize) -> Result<(), String> {
    let Some(cc) = b.get("cache_control") else { return Ok(()) };
    keys(cc, &["type", "ttl"], &format!("{at}.cache_control"))?;
    if cc.get("type").and_then(Value::as_str) != Some("ephemeral") {
        return Err(format!("{at}.cache_control.type: Input should be 'ephemeral'"));
    }
    if cc.get("ttl").is_some_and(|t| !["5m", "1h"].contains(&t.as_str().unwrap_or(""))) {
        return Err(format!("{at}.cache_control.ttl: Input should be '5m' or '1h'"));
    }
    *breakpoints += 1;
    Ok(())
}

fn text_block(b: &Value, at: &str, breakpoints: &mut usize) -> Result<(), String> {
    keys(b, &["type", "text", "cache_control", "citations"], at)?;
    if b.get("type").and_then(Value::as_str) != Some("text") {
        return Err(format!("{at}.type: Input should be 'text'"));
    }
    match b.get("text").and_then(Value::as_str) {
        Some("") => Err(if at.starts_with("system") {
            format!("{at}.text: text content blocks must be non-empty")
        } else {
            "messages: text content blocks must be non-empty".into()
        }),
        Some(_) => cache_control(b, at, breakpoints),
        None => Err(format!("{at}.text: Field required")),
    }
}

/// The tools' names, after checking them.
fn tools(req: &Map<String, Value>, breakpoints: &mut usize) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for (i, t) in req.get("tools").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let at = format!("tools.{i}");
        keys(t, &["name", "description", "input_schema", "cache_control", "type"], &at)?;
        let name = t.get("name").and_then(Value::as_str).unwrap_or("");
        if !valid_name(name, 128) {
            return Err(format!("{at}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"));
        }
        if t.pointer("/input_schema/type").and_then(Value::as_str) != Some("object") {
            return Err(format!("{at}.input_schema.type: Input should be 'object'"));
        }
        cache_control(t, &at, breakpoints)?;
        names.push(name.to_string());
    }
    if let Some(choice) = req.get("tool_choice") {
        keys(choice, &["type", "name", "disable_parallel_tool_use"], "tool_choice")?;
        let kind = choice.get("type").and_then(Value::as_str).unwrap_or("");
        if !["auto", "any", "tool", "none"].contains(&kind) {
            return Err("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'".into());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(messages: Value) -> Map<String, Value> {
        json!({"model": "m", "max_tokens": 10, "stream": true, "messages": messages,
            "tools": [{"name": "lookup", "input_schema": {"type": "object"}}]})
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn pairing_and_order_rules() {
        let use_ = json!({"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]});
        let result =
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]});
        let hi = json!({"role": "user", "content": "hi"});
        assert!(validate(&body(json!([hi, use_, result]))).is_ok());
        assert!(validate(&body(json!([hi, use_, hi])))
            .unwrap_err()
            .contains("`tool_use` ids were found without `tool_result`"));
        assert!(validate(&body(json!([hi, result]))).unwrap_err().contains("unexpected `tool_use_id`"));
        assert_eq!(validate(&body(json!([use_]))).unwrap_err(), "messages: first message must use the \"user\" role");
        let mut extra = body(json!([hi]));
        extra.insert("parallel_tool_calls".into(), json!(true));
        assert_eq!(validate(&extra).unwrap_err(), "parallel_tool_calls: Extra inputs are not permitted");
    }
}
