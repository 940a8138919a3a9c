//! OpenAI Chat Completions double: `POST /v1/chat/completions` with `stream:true` (SSE,
//! wire-protocols §4). Replies come from the script; fault injection is chosen by `model`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::script::Reply;
use crate::{DoubleTimings, Latencies, SimState, LLM_REQUESTS_KEPT};

fn openai_error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    (status, Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))).into_response()
}

/// Splits text into one word (with its trailing whitespace) per piece.
pub fn split_words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Splits a JSON arguments string into at least 2 fragments (about 8 characters each).
pub fn split_arguments(args: &str) -> Vec<String> {
    let chars: Vec<char> = args.chars().collect();
    if chars.len() <= 1 {
        return vec![args.to_string(), String::new()];
    }
    let size = 8.min(chars.len().div_ceil(2)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Text content of a message (`content` as a string or as an array of text parts).
fn content_text(msg: &Value) -> String {
    match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

/// The scripted reply for a conversation (looks at the last message only).
pub fn choose_reply(script: &crate::Script, messages: &[Value]) -> Reply {
    let Some(last) = messages.last() else { return script.default_reply.clone() };
    match last.get("role").and_then(Value::as_str) {
        Some("user") => script.reply_for_user(&content_text(last)).clone(),
        Some("tool") => script.reply_after_tool(tool_name(messages, last), &content_text(last)),
        _ => script.default_reply.clone(),
    }
}

/// The name of the tool whose result `tool_msg` is, from the assistant message that called it.
fn tool_name<'a>(messages: &'a [Value], tool_msg: &Value) -> Option<&'a str> {
    let id = tool_msg.get("tool_call_id").and_then(Value::as_str)?;
    messages.iter().rev().filter_map(|m| m.get("tool_calls").and_then(Value::as_array)).flatten().find_map(|c| {
        (c.get("id").and_then(Value::as_str) == Some(id))
            .then(|| c.pointer("/function/name").and_then(Value::as_str))?
    })
}

/// Everything that identifies one streamed completion.
pub struct ChunkCtx<'a> {
    pub id: &'a str,
    pub created: i64,
    pub model: &'a str,
}

impl ChunkCtx<'_> {
    fn chunk(&self, delta: Value, finish_reason: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_cxbsim",
            "service_tier": "default",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}],
            "usage": null,
        })
    }
}

/// The chunks of a reply, in order, excluding the usage chunk and `[DONE]`.
/// `first_call_id` numbers the tool calls `call_<n>`, `call_<n+1>`, ...
pub fn plan_chunks(ctx: &ChunkCtx<'_>, reply: &Reply, first_call_id: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let words = split_words(&reply.text);
    let tool_only = words.is_empty() && !reply.tool_calls.is_empty();
    if !tool_only {
        out.push(ctx.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        for w in &words {
            out.push(ctx.chunk(json!({"content": w}), Value::Null));
        }
    }
    for (i, tc) in reply.tool_calls.iter().enumerate() {
        let header = json!({
            "index": i,
            "id": format!("call_{}", first_call_id + i as u64),
            "type": "function",
            "function": {"name": tc.name, "arguments": ""},
        });
        if tool_only && i == 0 {
            out.push(ctx.chunk(json!({"role": "assistant", "content": null, "tool_calls": [header]}), Value::Null));
        } else {
            out.push(ctx.chunk(json!({"tool_calls": [header]}), Value::Null));
        }
        for frag in split_arguments(&tc.arguments.to_string()) {
            out.push(ctx.chunk(json!({"tool_calls": [{"index": i, "function": {"arguments": frag}}]}), Value::Null));
        }
    }
    let finish = if reply.tool_calls.is_empty() { "stop" } else { "tool_calls" };
    out.push(ctx.chunk(json!({}), json!(finish)));
    out
}

/// The usage chunk (`choices: []`) for `include_usage`.
pub fn usage_chunk(ctx: &ChunkCtx<'_>, messages: &[Value], reply: &Reply) -> Value {
    let prompt_chars: usize = messages.iter().map(|m| m.to_string().len()).sum();
    let prompt_tokens = (prompt_chars / 4).max(1) as u64;
    let completion_chars =
        reply.text.len() + reply.tool_calls.iter().map(|t| t.name.len() + t.arguments.to_string().len()).sum::<usize>();
    let completion_tokens = (completion_chars / 4).max(1) as u64;
    let cached = if prompt_tokens >= 1024 { prompt_tokens / 128 * 128 } else { 0 };
    json!({
        "id": ctx.id,
        "object": "chat.completion.chunk",
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": "fp_cxbsim",
        "service_tier": "default",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0, "cache_write_tokens": null},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        },
    })
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Keeps a request body for `GET /sim/llm-requests` (the last [`LLM_REQUESTS_KEPT`]), whatever
/// the vendor.
pub fn keep_request(state: &SimState, body: &Value) {
    let mut kept = state.llm_requests.lock().unwrap_or_else(|p| p.into_inner());
    if kept.len() >= LLM_REQUESTS_KEPT {
        kept.pop_front();
    }
    kept.push_back(body.clone());
}

/// Streams `chunks` as an SSE body: the first after the injected time to first token, the others
/// `llm_token_interval_ms` apart; the applied TTFT goes to `/sim/timings`. Shared by the LLM doubles.
pub fn paced_sse(state: Arc<SimState>, received: tokio::time::Instant, chunks: Vec<Bytes>) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let ttft = Latencies::dur(&state.lat.llm_ttft_ms);
    let interval = Latencies::dur(&state.lat.llm_token_interval_ms);
    tokio::spawn(async move {
        tokio::time::sleep(ttft).await;
        for (i, c) in chunks.into_iter().enumerate() {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if tx.send(c).await.is_err() {
                tracing::debug!("llm: client went away mid-stream");
                return;
            }
            if i == 0 {
                DoubleTimings::record(&state.timings.llm_ttft, received);
            }
        }
    });
    sse_response(rx)
}

/// Headers out, then no body byte: held until the client goes away or `llm_stall_max`.
pub fn stalled_sse(state: &SimState) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let hold = state.llm_stall_max;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = tx.closed() => {}
        }
    });
    sse_response(rx)
}

fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&format!("req_{}", uuid::Uuid::new_v4().simple())) {
        h.insert("x-request-id", v);
    }
    r
}

pub async fn handler(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let received = tokio::time::Instant::now();
    state.counters.llm_requests.fetch_add(1, Ordering::Relaxed);
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = auth.strip_prefix("Bearer ").map(str::trim).unwrap_or("");
    if key.is_empty() {
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth.",
            "invalid_request_error",
            Some("invalid_api_key"),
        );
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return openai_error(StatusCode::BAD_REQUEST, "body must be a JSON object", "invalid_request_error", None)
        }
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("We could not parse the JSON body of your request: {e}"),
                "invalid_request_error",
                None,
            )
        }
    };
    keep_request(&state, &req);
    let model = req.get("model").and_then(Value::as_str).unwrap_or("").to_string();
    if model.is_empty() {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            "invalid_request_error",
            None,
        );
    }
    if req.get("stream").and_then(Value::as_bool) != Some(true) {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "this double only serves streaming completions: set \"stream\": true",
            "invalid_request_error",
            None,
        );
    }
    let messages = match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m.clone(),
        _ => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "'messages' must be a non-empty array",
                "invalid_request_error",
                None,
            )
        }
    };
    if model == "fail-500" {
        return openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        );
    }
    let include_usage =
        req.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);

    if model == "stall" {
        return stalled_sse(&state);
    }

    let reply = choose_reply(&state.script, &messages);
    let n_calls = reply.tool_calls.len() as u64;
    let first_call_id = state.next_call_id.fetch_add(n_calls.max(1), Ordering::Relaxed);
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    let ctx = ChunkCtx { id: &id, created, model: &model };

    if model == "midstream-error" {
        let first = split_words(&reply.text).first().map(|s| s.to_string()).unwrap_or_else(|| "Hello ".into());
        let c = ctx.chunk(json!({"role": "assistant", "content": first}), Value::Null);
        let err = json!({"error": {"message": "boom", "type": "server_error", "code": "internal"}});
        return paced_sse(state, received, vec![sse(&c), sse(&err)]);
    }

    let mut chunks: Vec<Bytes> = plan_chunks(&ctx, &reply, first_call_id).iter().map(sse).collect();
    if include_usage {
        chunks.push(sse(&usage_chunk(&ctx, &messages, &reply)));
    }
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    paced_sse(state, received, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::ToolCallSpec;

    #[test]
    fn words_keep_trailing_space() {
        assert_eq!(split_words("Sure. Your order  shipped"), vec!["Sure. ", "Your ", "order  ", "shipped"]);
        assert_eq!(split_words(""), Vec::<&str>::new());
        assert_eq!(split_words("one"), vec!["one"]);
        assert_eq!(split_words("Sure. Your order shipped").concat(), "Sure. Your order shipped");
    }

    #[test]
    fn arguments_split_into_at_least_two_fragments() {
        for args in ["{}", "{\"final_message\":\"Thank you for calling. Goodbye!\"}", "x", ""] {
            let f = split_arguments(args);
            assert!(f.len() >= 2, "{args}: {f:?}");
            assert_eq!(f.concat(), args);
        }
    }

    #[test]
    fn tool_call_chunks_follow_the_spec() {
        let reply = Reply {
            text: String::new(),
            tool_calls: vec![ToolCallSpec { name: "end_call".into(), arguments: json!({"final_message": "Bye!"}) }],
            ..Reply::default()
        };
        let ctx = ChunkCtx { id: "chatcmpl-1", created: 1, model: "m" };
        let chunks = plan_chunks(&ctx, &reply, 7);
        let first = &chunks[0]["choices"][0]["delta"];
        assert_eq!(first["role"], "assistant");
        let tc = &first["tool_calls"][0];
        assert_eq!(
            (tc["index"].as_u64(), tc["id"].as_str(), tc["type"].as_str()),
            (Some(0), Some("call_7"), Some("function"))
        );
        assert_eq!(tc["function"]["name"], "end_call");
        assert_eq!(tc["function"]["arguments"], "");
        let frags: Vec<&Value> =
            chunks[1..chunks.len() - 1].iter().map(|c| &c["choices"][0]["delta"]["tool_calls"][0]).collect();
        assert!(frags.len() >= 2);
        let args: String = frags.iter().map(|f| f["function"]["arguments"].as_str().unwrap()).collect();
        assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"final_message": "Bye!"}));
        for f in &frags {
            assert!(f.get("id").is_none() && f["index"] == 0);
        }
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert!(c["usage"].is_null() && c["choices"][0]["logprobs"].is_null());
        }
    }

    #[test]
    fn text_chunks_and_usage() {
        let reply = Reply { text: "Of course. Bye".into(), ..Reply::default() };
        let ctx = ChunkCtx { id: "c", created: 1, model: "m" };
        let chunks = plan_chunks(&ctx, &reply, 1);
        let contents: Vec<&str> = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(contents, vec!["", "Of ", "course. ", "Bye"]);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
        let big = vec![json!({"role": "system", "content": "x".repeat(8000)})];
        let u = usage_chunk(&ctx, &big, &reply);
        let p = u["usage"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(), p / 128 * 128);
        let small = usage_chunk(&ctx, &[json!({"role": "user", "content": "hi"})], &reply);
        assert_eq!(small["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }

    #[test]
    fn reply_choice_by_last_message() {
        let s = crate::Script::embedded();
        let user = |t: &str| json!({"role": "user", "content": t});
        assert!(choose_reply(&s, &[user("check my order status")]).text.starts_with("Sure."));
        let parts = json!({"role": "user", "content": [{"type": "text", "text": "my BILL please"}]});
        assert!(choose_reply(&s, &[parts]).text.starts_with("Of course."));
        assert_eq!(
            choose_reply(&s, &[user("x"), json!({"role": "tool", "tool_call_id": "c", "content": "ok"})]).text,
            "Done."
        );
        assert_eq!(choose_reply(&s, &[json!({"role": "system", "content": "s"})]).text, s.default_reply.text);
    }

    #[test]
    fn a_tool_result_is_answered_by_that_tools_reply() {
        let mut s = crate::Script::embedded();
        s.after_tool_replies
            .insert("end_call".into(), crate::script::Reply { text: "Goodbye!".into(), ..Default::default() });
        let call = |id: &str, name: &str| {
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": name, "arguments": "{}"}}]})
        };
        let result = |id: &str| json!({"role": "tool", "tool_call_id": id, "content": "ok"});
        let ended = [call("c1", "lookup"), result("c1"), call("c2", "end_call"), result("c2")];
        assert_eq!(choose_reply(&s, &ended).text, "Goodbye!");
        assert_eq!(choose_reply(&s, &ended[..2]).text, "Done.");
        // A result with no matching call falls back to the generic reply.
        assert_eq!(choose_reply(&s, &[result("zz")]).text, "Done.");
    }
}
