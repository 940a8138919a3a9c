//! The CXB API client against a local axum server on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use cxb_knowledge::{ApiKnowledge, KnowledgeError, KnowledgeQuery, KnowledgeSource};
use serde_json::{json, Value};

#[derive(Default)]
struct Seen {
    requests: Vec<(HeaderMap, Value)>,
}

/// What the fake answers, chosen by the query text.
async fn search(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().unwrap_or_else(|p| p.into_inner()).requests.push((headers, v.clone()));
    match v["query"].as_str().unwrap_or_default() {
        "down" => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"detail": "search backend warming up"}))).into_response(),
        "html-error" => (StatusCode::BAD_GATEWAY, "<html>Bad Gateway</html>").into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({"results": []})).into_response()
        }
        "huge" => axum::Json(json!({"results": [{"text": "x".repeat(200_000), "score": 1}]})).into_response(),
        "garbage" => (StatusCode::OK, "not json at all").into_response(),
        _ => axum::Json(json!({
            "results": [
                {"chunk_id": "c2", "document_id": "d1", "kb_id": "kb_1", "text": "Refunds take 5 to 7 days.", "score": "0.61"},
                {"chunk_id": 17, "document_id": "d2", "kb_id": "kb_1", "text": "Returns within 30 days.", "score": 0.83, "title": "Returns", "page": 3},
                {"chunk_id": "c9", "document_id": "d3", "kb_id": "kb_2", "text": "Unrelated.", "score": 0.05}
            ],
            "total": 3
        }))
        .into_response(),
    }
}

async fn server() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new().route("/api/v1/knowledge/search", post(search)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/api/v1"), seen)
}

fn client(base: &str, timeout_ms: u64) -> ApiKnowledge {
    ApiKnowledge::new(base, Some("s3cret".into()), reqwest::Client::new(), Duration::from_millis(timeout_ms))
        .expect("client")
}

fn query(text: &str) -> KnowledgeQuery {
    let mut q = KnowledgeQuery::new(text, vec!["kb_1".into(), "kb_2".into()]);
    q.top_k = 5;
    q.score_threshold = 0.1;
    q.bot_id = "demo".into();
    q.session_id = "sess-1".into();
    q
}

#[tokio::test]
async fn sends_both_secrets_and_the_documented_body_and_reads_liberally() {
    let (base, seen) = server().await;
    let api = client(&format!("{base}/"), 2000);
    let source: &dyn KnowledgeSource = &api;
    assert_eq!(source.name(), "cxb_api");
    let hits = source.search(&query("  refund policy  ")).await.expect("search");

    // Sorted, threshold applied (0.05 dropped), numeric id read as text, title optional.
    let got: Vec<(&str, f64, Option<&str>)> =
        hits.iter().map(|h| (h.chunk_id.as_str(), h.score, h.title.as_deref())).collect();
    assert_eq!(got, [("17", 0.83, Some("Returns")), ("c2", 0.61, None)]);
    assert_eq!((hits[1].document_id.as_str(), hits[1].kb_id.as_str()), ("d1", "kb_1"));

    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    let (headers, body) = &seen.requests[0];
    assert_eq!(headers.get("x-cxbcore-secret").and_then(|v| v.to_str().ok()), Some("s3cret"));
    assert_eq!(headers.get("x-cxb-core-secret").and_then(|v| v.to_str().ok()), Some("s3cret"));
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
    assert_eq!(
        body,
        &json!({"query": "refund policy", "kb_ids": ["kb_1", "kb_2"], "top_k": 5, "score_threshold": 0.1,
                "bot_id": "demo", "session_id": "sess-1"})
    );
}

#[tokio::test]
async fn no_secret_sends_no_secret_headers_and_top_k_is_enforced_locally() {
    let (base, seen) = server().await;
    let api = ApiKnowledge::new(&base, None, reqwest::Client::new(), Duration::from_secs(2)).expect("client");
    let mut q = query("refund");
    q.top_k = 1;
    q.score_threshold = 0.0;
    let hits = api.search_api(&q).await.expect("search");
    assert_eq!(hits.len(), 1);
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    assert!(seen.requests[0].0.get("x-cxbcore-secret").is_none());
    assert!(seen.requests[0].0.get("x-cxb-core-secret").is_none());
}

#[tokio::test]
async fn failures_are_typed_errors() {
    let (base, _) = server().await;
    let api = client(&base, 2000);

    match api.search_api(&query("down")).await {
        Err(KnowledgeError::Status { status: 503, detail }) => assert_eq!(detail, "search backend warming up"),
        other => panic!("expected 503, got {other:?}"),
    }
    let err = api.search_api(&query("html-error")).await.expect_err("502");
    assert_eq!(err.to_string(), "the knowledge service answered HTTP 502: <html>Bad Gateway</html>");
    assert_eq!(err.kind(), "http_status");

    let err = api.search_api(&query("garbage")).await.expect_err("garbage");
    assert!(matches!(err, KnowledgeError::InvalidResponse(_)), "{err}");

    let small = client(&base, 2000).with_max_response_bytes(10_000);
    let err = small.search_api(&query("huge")).await.expect_err("too large");
    assert!(matches!(err, KnowledgeError::ResponseTooLarge(10_000)), "{err}");

    assert!(matches!(api.search_api(&query(" ")).await, Err(KnowledgeError::EmptyQuery)));

    // Nothing listens on port 9 of loopback.
    let dead = client("http://127.0.0.1:9/api/v1", 2000);
    let err = dead.search_api(&query("refund")).await.expect_err("connect");
    assert!(matches!(err, KnowledgeError::Connect), "{err}");
    assert!(!err.to_string().contains("127.0.0.1"), "no URL in the message: {err}");
}

#[tokio::test]
async fn a_slow_service_times_out_on_time() {
    let (base, _) = server().await;
    let api = client(&base, 300);
    let started = Instant::now();
    let err = api.search_api(&query("slow")).await.expect_err("timeout");
    let waited = started.elapsed();
    assert!(matches!(err, KnowledgeError::Timeout(t) if t == Duration::from_millis(300)), "{err}");
    assert_eq!(err.to_string(), "the knowledge search timed out after 300 ms");
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3), "{waited:?}");
}
