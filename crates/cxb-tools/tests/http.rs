//! Running tools against a real loopback axum server.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use cxb_tools::{default_client, CallVariables, HttpTool, ToolErrorKind, ToolRegistry};
use serde_json::{json, Value};

struct Server {
    base: String,
    hits: Arc<AtomicUsize>,
}

impl Server {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn count(State(hits): State<Arc<AtomicUsize>>, req: Request, next: Next) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    next.run(req).await
}

/// Echoes the request as the server saw it: raw (still percent-encoded) path and query.
async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let raw = String::from_utf8_lossy(&body).into_owned();
    Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "authorization": h("authorization"),
        "x_call": h("x-call"),
        "x_customer": h("x-customer"),
        "content_type": h("content-type"),
        "body_raw": raw,
        "body": serde_json::from_slice::<Value>(&body).ok(),
    }))
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "finally"
}

async fn delayed(Path(ms): Path<u64>) -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({"waited_ms": ms}))
}

/// Headers at once, then one byte every 100 ms for 10 s.
async fn trickle() -> Response {
    let stream = futures_util::stream::unfold(0u32, |i| async move {
        if i >= 100 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b"x")), i + 1))
    });
    Body::from_stream(stream).into_response()
}

/// 10 MB in 64 KiB chunks, no Content-Length.
async fn huge() -> Response {
    let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
    let stream = futures_util::stream::iter((0..160).map(move |_| Ok::<_, Infallible>(chunk.clone())));
    ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(stream)).into_response()
}

async fn huge_declared() -> Vec<u8> {
    vec![b'b'; 2 * 1024 * 1024]
}

async fn fail() -> (StatusCode, &'static str) {
    (StatusCode::INTERNAL_SERVER_ERROR, "database exploded")
}

async fn bad_gateway_page() -> (StatusCode, String) {
    (StatusCode::BAD_GATEWAY, format!("<html>{}</html>", "gateway trouble ".repeat(10_000)))
}

async fn not_found() -> (StatusCode, Json<Value>) {
    (StatusCode::NOT_FOUND, Json(json!({"error": "no such order"})))
}

async fn text() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "text/plain")], "Order 42 is out for delivery.")
}

async fn pretty() -> &'static str {
    "{\n  \"status\": \"shipped\",\n  \"items\": [ 1, 2 ],\n  \"note\": \"two  spaces\"\n}\n"
}

async fn empty() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn redirect(Path(n): Path<u32>) -> Response {
    if n == 0 {
        Json(json!({"redirected": true})).into_response()
    } else {
        Redirect::temporary(&format!("/redirect/{}", n - 1)).into_response()
    }
}

async fn start() -> Server {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/echo/{*rest}", any(echo))
        .route("/slow", any(slow))
        .route("/delayed/{ms}", any(delayed))
        .route("/trickle", get(trickle))
        .route("/huge", any(huge))
        .route("/huge-declared", get(huge_declared))
        .route("/fail", any(fail))
        .route("/bad-gateway", any(bad_gateway_page))
        .route("/not-found", any(not_found))
        .route("/text", any(text))
        .route("/pretty", any(pretty))
        .route("/empty", any(empty))
        .route("/redirect/{n}", any(redirect))
        .layer(middleware::from_fn_with_state(hits.clone(), count));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { base: format!("http://{addr}"), hits }
}

/// Builds one tool from a binding; panics (test failure) if the binding is rejected.
fn tool(name: &str, http: Value) -> HttpTool {
    let entry = json!({"type": "function", "function": {"name": name, "parameters": {}}, "http": http});
    let (reg, errors) = ToolRegistry::from_config(&[entry]);
    assert!(errors.is_empty(), "{errors:?}");
    reg.get(name).unwrap().clone()
}

fn call_vars() -> CallVariables {
    CallVariables::new()
        .with(CallVariables::SESSION_ID, "sess-1")
        .with(CallVariables::CALLER_ID, "+91 98765 43210")
        .with(CallVariables::DID, "080-4000")
        .with("crm_id", "C/77")
}

fn client() -> reqwest::Client {
    default_client().unwrap()
}

#[tokio::test]
async fn templates_reach_url_query_headers_and_body() {
    let srv = start().await;
    let t = tool(
        "order",
        json!({
            "method": "post",
            "url": format!("{}/echo/orders/{{{{args.order_id}}}}?caller={{{{call.caller_id}}}}", srv.base),
            "query": {"crm": "{{call.crm_id}}", "k": "{{args.filter}}"},
            "headers": {"Authorization": "Bearer abc", "X-Call": "{{call.session_id}}", "X-Customer": "{{args.customer.name}}"},
            "body": {
                "count": "{{args.count}}",
                "customer": "{{args.customer}}",
                "note": "order {{args.order_id}} for {{call.caller_id}} x{{args.count}}",
                "fixed": [true, 1.5, null]
            }
        }),
    );
    let args =
        json!({"order_id": "A/B 7?x", "filter": "x y&z=1", "count": 3, "customer": {"name": "Asha Rao", "vip": true}});
    let out = t.run(&client(), &args.to_string(), &call_vars()).await;
    assert!(!out.is_error, "{out:?}");
    assert_eq!(out.status, Some(200));
    assert_eq!(out.response_bytes, out.content.len());
    let echo: Value = serde_json::from_str(&out.content).unwrap();
    assert_eq!(echo["method"], "POST");
    // Percent-encoded: the '/' and '?' in the argument did not change the path or query shape.
    assert_eq!(echo["path"], "/echo/orders/A%2FB%207%3Fx");
    // Template query first, then the configured `query` map form-encoded.
    assert_eq!(echo["query"], "caller=%2B91%2098765%2043210&crm=C%2F77&k=x+y%26z%3D1");
    assert_eq!(echo["authorization"], "Bearer abc");
    assert_eq!(echo["x_call"], "sess-1");
    assert_eq!(echo["x_customer"], "Asha Rao");
    assert_eq!(echo["content_type"], "application/json");
    assert_eq!(
        echo["body"],
        json!({
            "count": 3,
            "customer": {"name": "Asha Rao", "vip": true},
            "note": "order A/B 7?x for +91 98765 43210 x3",
            "fixed": [true, 1.5, null]
        })
    );
    // A number stays a number on the wire, not "3".
    assert!(echo["body_raw"].as_str().unwrap().contains(r#""count":3"#), "{}", echo["body_raw"]);
    assert_eq!(srv.hits(), 1);
}

#[tokio::test]
async fn default_bodies_get_none_post_and_delete_arguments() {
    let srv = start().await;
    let c = client();
    let args = r#"{"id": 5, "reason": "late"}"#;

    let get = tool("g", json!({"method": "GET", "url": format!("{}/echo/g?id={{{{args.id}}}}", srv.base)}));
    let echo: Value = serde_json::from_str(&get.run(&c, args, &call_vars()).await.content).unwrap();
    assert_eq!((echo["method"].as_str(), echo["query"].as_str()), (Some("GET"), Some("id=5")));
    assert_eq!(echo["body_raw"], "", "GET sends no body");
    assert_eq!(echo["content_type"], Value::Null);

    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let t = tool("m", json!({"method": method, "url": format!("{}/echo/m", srv.base)}));
        let out = t.run(&c, args, &call_vars()).await;
        let echo: Value = serde_json::from_str(&out.content).unwrap();
        assert_eq!(echo["method"], method);
        assert_eq!(echo["body"], json!({"id": 5, "reason": "late"}), "{method} sends the arguments by default");
    }

    // `"body": null` opts out of a body; an empty arguments string means {}.
    let none = tool("n", json!({"url": format!("{}/echo/n", srv.base), "body": null}));
    let echo: Value = serde_json::from_str(&none.run(&c, "", &call_vars()).await.content).unwrap();
    assert_eq!((echo["method"].as_str(), echo["body_raw"].as_str()), (Some("POST"), Some("")));
    assert_eq!(srv.hits(), 6);
}

#[tokio::test]
async fn missing_values_fail_without_a_request() {
    let srv = start().await;
    let c = client();
    let t = tool(
        "order",
        json!({"url": format!("{}/echo/orders/{{{{args.order_id}}}}", srv.base), "headers": {"X-Call": "{{call.stream_id}}"}}),
    );
    let out = t.run(&c, r#"{"other": 1}"#, &call_vars()).await;
    assert!(out.is_error);
    assert_eq!(out.content, r#"error: missing argument "order_id""#);
    assert_eq!((out.error, out.status, out.response_bytes), (Some(ToolErrorKind::MissingValue), None, 0));

    let out = t.run(&c, r#"{"order_id": 1}"#, &call_vars()).await;
    assert_eq!(out.content, r#"error: missing call variable "stream_id""#);

    // Nested path, in the body.
    let b = tool("b", json!({"url": format!("{}/echo/b", srv.base), "body": {"id": "{{args.customer.id}}"}}));
    let out = b.run(&c, r#"{"customer": {"name": "x"}}"#, &call_vars()).await;
    assert_eq!(out.content, r#"error: missing argument "customer.id""#);
    assert_eq!(srv.hits(), 0, "no request may be made when a value is missing");
}

#[tokio::test]
async fn unsafe_values_fail_without_a_request() {
    let srv = start().await;
    let c = client();
    let h = tool("h", json!({"url": format!("{}/echo/h", srv.base), "headers": {"X-Customer": "{{args.name}}"}}));
    let out = h.run(&c, r#"{"name": "Asha\r\nX-Injected: 1"}"#, &call_vars()).await;
    assert!(out.is_error);
    assert_eq!(out.error, Some(ToolErrorKind::InvalidValue));
    assert!(out.content.contains("x-customer") && out.content.contains("line break"), "{}", out.content);

    let p = tool("p", json!({"url": format!("{}/echo/orders/{{{{args.id}}}}/detail", srv.base)}));
    let out = p.run(&c, r#"{"id": ".."}"#, &call_vars()).await;
    assert_eq!(out.error, Some(ToolErrorKind::InvalidValue), "{}", out.content);
    assert_eq!(srv.hits(), 0);
}

#[tokio::test]
async fn invalid_llm_arguments_are_reported() {
    let srv = start().await;
    let c = client();
    let t = tool("t", json!({"url": format!("{}/echo/t", srv.base)}));
    let out = t.run(&c, "{not json", &call_vars()).await;
    assert!(out.is_error);
    assert_eq!(out.error, Some(ToolErrorKind::InvalidArguments));
    assert!(out.content.starts_with("error: invalid arguments JSON: "), "{}", out.content);
    let out = t.run(&c, "[1, 2]", &call_vars()).await;
    assert_eq!(out.content, "error: invalid arguments: expected a JSON object");
    assert_eq!(srv.hits(), 0);
}

#[tokio::test]
async fn slow_server_times_out_within_bound() {
    let srv = start().await;
    let t = tool("slow", json!({"method": "GET", "url": format!("{}/slow", srv.base), "timeout_ms": 300}));
    let started = Instant::now();
    let out = t.run(&client(), "{}", &call_vars()).await;
    let took = started.elapsed();
    assert!(out.is_error);
    assert_eq!(out.content, "error: timed out after 300 ms");
    assert_eq!((out.error, out.status), (Some(ToolErrorKind::Timeout), None));
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "{took:?}");
    assert!(out.elapsed >= Duration::from_millis(300) && out.elapsed <= took);
}

#[tokio::test]
async fn trickling_body_is_bounded_by_the_same_timeout() {
    let srv = start().await;
    let t = tool("trickle", json!({"method": "GET", "url": format!("{}/trickle", srv.base), "timeout_ms": 400}));
    let started = Instant::now();
    let out = t.run(&client(), "{}", &call_vars()).await;
    assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());
    assert_eq!(out.content, "error: timed out after 400 ms");
    // The head had arrived and some bytes were read before the deadline.
    assert_eq!(out.status, Some(200));
    assert!(out.response_bytes >= 1 && out.response_bytes < 10, "{}", out.response_bytes);
}

#[tokio::test]
async fn server_error_reports_status_and_snippet() {
    let srv = start().await;
    let c = client();
    let t = tool("f", json!({"url": format!("{}/fail", srv.base)}));
    let out = t.run(&c, "{}", &call_vars()).await;
    assert!(out.is_error);
    assert_eq!((out.status, out.error), (Some(500), Some(ToolErrorKind::HttpStatus)));
    assert_eq!(out.content, "error: HTTP 500 Internal Server Error: database exploded");

    let nf = tool("nf", json!({"method": "GET", "url": format!("{}/not-found", srv.base)}));
    let out = nf.run(&c, "{}", &call_vars()).await;
    assert_eq!(out.content, r#"error: HTTP 404 Not Found: {"error":"no such order"}"#);

    // A 160 KB error page is cut to a short snippet.
    let bg = tool("bg", json!({"url": format!("{}/bad-gateway", srv.base)}));
    let out = bg.run(&c, "{}", &call_vars()).await;
    assert_eq!(out.status, Some(502));
    assert!(out.content.starts_with("error: HTTP 502 Bad Gateway: <html>gateway trouble"), "{}", out.content);
    assert!(out.content.ends_with('…') && out.content.len() < 600, "{}", out.content.len());
}

#[tokio::test]
async fn huge_streamed_response_is_cut_off_quickly() {
    let srv = start().await;
    let t = tool("huge", json!({"method": "GET", "url": format!("{}/huge", srv.base), "timeout_ms": 10_000}));
    let started = Instant::now();
    let out = t.run(&client(), "{}", &call_vars()).await;
    let took = started.elapsed();
    assert!(out.is_error);
    assert_eq!(out.content, "error: response exceeded 16384 bytes");
    assert_eq!((out.status, out.error), (Some(200), Some(ToolErrorKind::ResponseTooLarge)));
    // Stopped after the first chunk(s), not after 10 MB.
    assert!(out.response_bytes > 16384 && out.response_bytes <= 256 * 1024, "{}", out.response_bytes);
    assert!(took < Duration::from_secs(9), "cut before the 10 s timeout: {took:?}");
}

#[tokio::test]
async fn declared_oversized_response_is_refused_without_reading() {
    let srv = start().await;
    let t =
        tool("big", json!({"method": "GET", "url": format!("{}/huge-declared", srv.base), "max_response_bytes": 1000}));
    let out = t.run(&client(), "{}", &call_vars()).await;
    assert_eq!(out.content, "error: response exceeded 1000 bytes");
    assert_eq!(out.response_bytes, 0);
}

#[tokio::test]
async fn success_bodies_text_json_and_empty() {
    let srv = start().await;
    let c = client();
    let text = tool("text", json!({"method": "GET", "url": format!("{}/text", srv.base)}));
    let out = text.run(&c, "{}", &call_vars()).await;
    assert!(!out.is_error);
    assert_eq!(out.content, "Order 42 is out for delivery.");

    let pretty = tool("pretty", json!({"method": "GET", "url": format!("{}/pretty", srv.base)}));
    let out = pretty.run(&c, "{}", &call_vars()).await;
    assert_eq!(out.content, r#"{"status":"shipped","items":[1,2],"note":"two  spaces"}"#);
    assert!(out.response_bytes > out.content.len());

    let empty = tool("empty", json!({"url": format!("{}/empty", srv.base)}));
    let out = empty.run(&c, "{}", &call_vars()).await;
    assert!(!out.is_error);
    assert_eq!((out.status, out.content.as_str()), (Some(204), "ok (HTTP 204, empty response)"));
}

#[tokio::test]
async fn redirects_are_followed_at_most_three_times() {
    let srv = start().await;
    let c = client();
    let three = tool("r3", json!({"method": "GET", "url": format!("{}/redirect/3", srv.base)}));
    let out = three.run(&c, "{}", &call_vars()).await;
    assert!(!out.is_error, "{out:?}");
    assert_eq!(out.content, r#"{"redirected":true}"#);

    let four = tool("r4", json!({"method": "GET", "url": format!("{}/redirect/4", srv.base)}));
    let out = four.run(&c, "{}", &call_vars()).await;
    assert!(out.is_error);
    assert_eq!(out.error, Some(ToolErrorKind::Redirect), "{}", out.content);
    // 4 + 4 requests: the fourth hop of the second chain was never made.
    assert_eq!(srv.hits(), 8);
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    // Bind then drop: nothing listens on the port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = tool("down", json!({"url": format!("http://127.0.0.1:{port}/x?key=SECRET")}));
    let out = t.run(&client(), "{}", &call_vars()).await;
    assert!(out.is_error);
    assert_eq!((out.error, out.status), (Some(ToolErrorKind::Connect), None));
    assert_eq!(out.content, "error: could not connect to the tool's server");
    assert!(!out.content.contains("SECRET"));
}

#[tokio::test]
async fn pre_message_fires_only_for_slow_calls() {
    let srv = start().await;
    let c = client();
    let slow = tool(
        "slow",
        json!({"method": "GET", "url": format!("{}/delayed/600", srv.base), "pre_message": "Let me check that for you.",
               "pre_message_after_ms": 100}),
    );
    let mut spoken = Vec::new();
    let started = Instant::now();
    let out =
        slow.run_with_pre_message(&c, "{}", &call_vars(), |m| spoken.push((m.to_string(), started.elapsed()))).await;
    assert!(!out.is_error, "{out:?}");
    assert_eq!(spoken.len(), 1);
    assert_eq!(spoken[0].0, "Let me check that for you.");
    assert!(spoken[0].1 >= Duration::from_millis(100) && spoken[0].1 < Duration::from_millis(550), "{:?}", spoken[0].1);

    let fast = tool(
        "fast",
        json!({"method": "GET", "url": format!("{}/delayed/0", srv.base), "pre_message": "One moment.",
               "pre_message_after_ms": 1000}),
    );
    let mut fired = false;
    let out = fast.run_with_pre_message(&c, "{}", &call_vars(), |_| fired = true).await;
    assert!(!out.is_error && !fired);

    // A call that fails before sending never speaks the pre-message either.
    let out = slow.run_with_pre_message(&c, "not json", &call_vars(), |_| fired = true).await;
    assert!(out.is_error && !fired);
}
