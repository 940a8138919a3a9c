//! OpenAI-compatible chat completions against a loopback SSE double (wire-protocols §4).

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use cxb_providers::llm::{LlmClient, LlmEvent, LlmParams, LlmStream};
use cxb_providers::ProviderError;
use cxb_wire::llm::{ChatMessage, ChatRequest, ToolCall, ToolSpec, Usage};
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::within;
use tokio::sync::mpsc;

/// What the double answers with.
#[derive(Clone)]
struct Plan {
    status: u16,
    /// Body pieces, each written (and flushed) separately.
    pieces: Vec<Vec<u8>>,
    /// Keep the body open forever after the pieces.
    stall: bool,
}

impl Plan {
    fn sse(body: &str) -> Self {
        Self { status: 200, pieces: vec![body.as_bytes().to_vec()], stall: false }
    }
}

/// The request the double received.
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// Signals when the response body is dropped (the client went away).
struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

struct Double {
    base_url: String,
    seen: mpsc::UnboundedReceiver<Seen>,
    body_dropped: mpsc::UnboundedReceiver<()>,
}

async fn double(plan: Plan) -> Double {
    let plan = Arc::new(plan);
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (drop_tx, body_dropped) = mpsc::unbounded_channel();
    let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let plan = Arc::clone(&plan);
        let seen_tx = seen_tx.clone();
        let guard = DropSignal(drop_tx.clone());
        async move {
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let _ = seen_tx.send(Seen { path: uri.path().to_string(), headers, body });
            respond(&plan, guard)
        }
    };
    let app = Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Double { base_url: format!("http://{addr}/v1/"), seen, body_dropped }
}

fn respond(plan: &Plan, guard: DropSignal) -> Response {
    let pieces = plan.pieces.clone();
    let stall = plan.stall;
    // Yielding between pieces makes hyper flush each one as its own write.
    let stream = futures_util::stream::iter(pieces)
        .then(|piece| async move {
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(Bytes::from(piece))
        })
        .chain(futures_util::stream::iter(stall.then_some(())).flat_map(|_| futures_util::stream::pending()))
        .map(move |piece| {
            let _keep = &guard;
            piece
        });
    let status = StatusCode::from_u16(plan.status).unwrap();
    let content_type = if plan.status == 200 { "text/event-stream" } else { "application/json" };
    (status, [("content-type", content_type)], Body::from_stream(stream)).into_response()
}

fn params(base_url: &str) -> LlmParams {
    LlmParams {
        provider: "openai".into(),
        base_url: base_url.into(),
        api_key: "sk-test".into(),
        idle_timeout: Duration::from_secs(2),
    }
}

fn request() -> ChatRequest {
    ChatRequest { model: "gpt-4.1-mini".into(), messages: vec![ChatMessage::User("hi".into())], ..Default::default() }
}

/// `data: {chunk}` with the vendor's full envelope.
fn chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let c = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini",
        "system_fingerprint":"fp","service_tier":"default",
        "choices":[{"index":0,"delta":delta,"finish_reason":finish_reason,"logprobs":null}],"usage":null});
    format!("data: {c}\n\n")
}

fn usage_chunk() -> String {
    let c = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4.1-mini",
        "choices":[],"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,
        "prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0,"cache_write_tokens":null},
        "completion_tokens_details":{"reasoning_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}});
    format!("data: {c}\n\n")
}

const USAGE: Usage = Usage {
    prompt_tokens: 2006,
    completion_tokens: 300,
    total_tokens: 2306,
    cached_tokens: 1920,
    cache_write_tokens: 0,
    thoughts_tokens: 0,
};

async fn collect(mut stream: LlmStream) -> Vec<LlmEvent> {
    let mut events = Vec::new();
    while let Some(ev) = within(stream.recv()).await {
        events.push(ev);
    }
    events
}

fn text_body() -> String {
    [
        chunk(json!({"role":"assistant","content":""}), None),
        chunk(json!({"content":"Hel"}), None),
        chunk(json!({"content":"lo, wörld 👋"}), None),
        chunk(json!({}), Some("stop")),
        usage_chunk(),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat()
}

fn text_events() -> Vec<LlmEvent> {
    vec![
        LlmEvent::Token("Hel".into()),
        LlmEvent::Token("lo, wörld 👋".into()),
        LlmEvent::Done { finish_reason: Some("stop".into()), usage: Some(USAGE) },
    ]
}

#[tokio::test]
async fn openai_request_shape_tokens_and_usage() {
    let mut d = double(Plan::sse(&text_body())).await;
    let tool = json!({"type":"function","function":{"name":"transfer_call","description":"d",
        "parameters":{"type":"object","properties":{}}}});
    let req = ChatRequest {
        model: "gpt-4.1-mini".into(),
        messages: vec![
            ChatMessage::System("sys".into()),
            ChatMessage::User("hi".into()),
            ChatMessage::Assistant {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "end_call".into(),
                    arguments: "{}".into(),
                    thought_signature: None,
                }],
            },
            ChatMessage::Tool { tool_call_id: "call_1".into(), content: "ok".into() },
            ChatMessage::Assistant { content: Some("sure".into()), tool_calls: vec![] },
        ],
        tools: vec![ToolSpec::from_openai_json(&tool).unwrap()],
        temperature: Some(0.3),
        max_tokens: Some(300),
        extra: json!({"top_p": 0.9, "parallel_tool_calls": true}).as_object().cloned().unwrap(),
        ..Default::default()
    };
    let events = collect(LlmClient::new().stream(&params(&d.base_url), req)).await;
    assert_eq!(events, text_events());

    let seen = d.seen.recv().await.unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.headers.get("authorization").unwrap(), "Bearer sk-test");
    assert_eq!(
        seen.body,
        json!({"model":"gpt-4.1-mini","stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"system","content":"sys"},{"role":"user","content":"hi"},
                {"role":"assistant","tool_calls":[{"id":"call_1","type":"function",
                    "function":{"name":"end_call","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"ok"},
                {"role":"assistant","content":"sure"}],
            "tools":[tool],"tool_choice":"auto","temperature":0.3,"max_completion_tokens":300,
            "top_p":0.9,"parallel_tool_calls":true})
    );
}

#[tokio::test]
async fn openai_sse_split_at_every_byte() {
    // CRLF line endings, comments and multi-byte UTF-8, delivered one byte per write.
    let body = format!(": OPENROUTER PROCESSING\r\n\r\n{}", text_body().replace('\n', "\r\n"));
    let plan = Plan { status: 200, pieces: body.bytes().map(|b| vec![b]).collect(), stall: false };
    let d = double(plan).await;
    let events = collect(LlmClient::new().stream(&params(&d.base_url), request())).await;
    assert_eq!(events, text_events());
}

#[tokio::test]
async fn openai_parallel_tool_calls_from_fragments() {
    let first = |i: u32, id: &str, name: &str| {
        chunk(
            json!({"tool_calls":[{"index":i,"id":id,"type":"function","function":{"name":name,"arguments":""}}]}),
            None,
        )
    };
    let args = |i: u32, part: &str| chunk(json!({"tool_calls":[{"index":i,"function":{"arguments":part}}]}), None);
    let body = [
        chunk(json!({"role":"assistant","content":null}), None),
        first(0, "call_a", "transfer_call"),
        args(0, "{\"tar"),
        args(0, "get\":"),
        first(1, "call_b", "end_call"),
        args(1, "{"),
        args(0, "\"sales\"}"),
        args(1, "}"),
        chunk(json!({}), Some("tool_calls")),
        usage_chunk(),
        "data: [DONE]\n\n".into(),
    ]
    .concat();
    // Also split the body at odd boundaries.
    let pieces = body.as_bytes().chunks(7).map(<[u8]>::to_vec).collect();
    let d = double(Plan { status: 200, pieces, stall: false }).await;
    let events = collect(LlmClient::new().stream(&params(&d.base_url), request())).await;
    assert_eq!(
        events,
        vec![
            LlmEvent::ToolCalls(vec![
                ToolCall {
                    id: "call_a".into(),
                    name: "transfer_call".into(),
                    arguments: "{\"target\":\"sales\"}".into(),
                    thought_signature: None,
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "end_call".into(),
                    arguments: "{}".into(),
                    thought_signature: None
                },
            ]),
            LlmEvent::Done { finish_reason: Some("tool_calls".into()), usage: Some(USAGE) },
        ]
    );
}

#[tokio::test]
async fn openai_mid_stream_error() {
    let body = [
        chunk(json!({"content":"Hi"}), None),
        "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":null}}\n\n".into(),
    ]
    .concat();
    let d = double(Plan::sse(&body)).await;
    let events = collect(LlmClient::new().stream(&params(&d.base_url), request())).await;
    assert_eq!(events[0], LlmEvent::Token("Hi".into()));
    match &events[1..] {
        [LlmEvent::Error(ProviderError::Remote { provider: "openai", detail })] => {
            assert_eq!(detail, "overloaded (server_error)")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn openai_http_error_status() {
    let body = r#"{"error":{"message":"boom","type":"server_error"}}"#.repeat(100);
    let d = double(Plan { status: 500, pieces: vec![body.into_bytes()], stall: false }).await;
    let events = collect(LlmClient::new().stream(&params(&d.base_url), request())).await;
    match events.as_slice() {
        [LlmEvent::Error(ProviderError::Status { provider: "openai", status: 500, body })] => {
            assert!(body.starts_with(r#"{"error":{"message":"boom""#));
            assert_eq!(body.len(), 2048);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn openai_stall_times_out() {
    let plan = Plan { status: 200, pieces: vec![chunk(json!({"content":"Hi"}), None).into_bytes()], stall: true };
    let d = double(plan).await;
    let mut p = params(&d.base_url);
    p.idle_timeout = Duration::from_millis(300);
    let events = collect(LlmClient::new().stream(&p, request())).await;
    assert_eq!(events[0], LlmEvent::Token("Hi".into()));
    assert!(matches!(events[1..], [LlmEvent::Error(ProviderError::Timeout { provider: "openai", .. })]), "{events:?}");
}

#[tokio::test]
async fn openai_stream_cut_short() {
    // No [DONE] and no finish_reason: the answer is incomplete.
    let d = double(Plan::sse(&chunk(json!({"content":"Hi"}), None))).await;
    let events = collect(LlmClient::new().stream(&params(&d.base_url), request())).await;
    assert!(matches!(events[1..], [LlmEvent::Error(ProviderError::Closed { .. })]), "{events:?}");

    // A finish_reason but no [DONE] (and a last event without its blank line) is still complete.
    let body = format!(
        "{}data: {}",
        chunk(json!({"content":"Hi"}), None),
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#
    );
    let d = double(Plan::sse(&body)).await;
    let events = collect(LlmClient::new().stream(&params(&d.base_url), request())).await;
    assert_eq!(
        events,
        vec![LlmEvent::Token("Hi".into()), LlmEvent::Done { finish_reason: Some("stop".into()), usage: None }]
    );
}

#[tokio::test]
async fn openai_dropping_the_stream_aborts_the_request() {
    let plan = Plan { status: 200, pieces: vec![chunk(json!({"content":"Hi"}), None).into_bytes()], stall: true };
    let mut d = double(plan).await;
    let mut stream = LlmClient::new().stream(&params(&d.base_url), request());
    assert_eq!(within(stream.recv()).await, Some(LlmEvent::Token("Hi".into())));
    drop(stream);
    // The server notices the connection going away and drops the response body.
    within(d.body_dropped.recv()).await.unwrap();
}

#[tokio::test]
async fn openai_oversized_line_is_a_protocol_error() {
    let line = format!("data: {}", "x".repeat(1024 * 1024 + 10));
    let pieces = line.as_bytes().chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    let d = double(Plan { status: 200, pieces, stall: true }).await;
    let events = collect(LlmClient::new().stream(&params(&d.base_url), request())).await;
    assert!(matches!(events.as_slice(), [LlmEvent::Error(ProviderError::Protocol { .. })]), "{events:?}");
}
