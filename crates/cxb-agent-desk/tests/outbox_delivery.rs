//! The Agent Desk entries delivered by the real outbox to a loopback HTTP receiver: what
//! CXB API actually receives (method, path, headers, body), and retry after a 503.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use cxb_agent_desk::{
    AgentDesk, AgentDeskEvent, Caller, CustomerDisconnected, EnqueueRequest, EnqueueTarget, Role, TranscriptEntry,
};
use cxb_delivery::{Outbox, OutboxConfig};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct Receiver {
    hits: Mutex<Vec<Hit>>,
    /// Answer 503 to this many enqueue requests first.
    fail_enqueues: Mutex<u32>,
}

async fn handle(State(rx): State<Arc<Receiver>>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let path = uri.path().to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    rx.hits.lock().expect("lock").push(Hit { path: path.clone(), headers: headers.clone(), body });
    if headers.get("x-cxb-core-secret").and_then(|v| v.to_str().ok()) != Some("s3cret") {
        return StatusCode::FORBIDDEN;
    }
    if path.ends_with("/enqueue") {
        let mut n = rx.fail_enqueues.lock().expect("lock");
        if *n > 0 {
            *n -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    StatusCode::OK
}

async fn start_receiver(rx: Arc<Receiver>) -> String {
    let app = Router::new().route("/api/v1/agent-desk/{*rest}", post(handle)).with_state(rx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/api/v1")
}

fn request(call_id: &str) -> EnqueueRequest {
    EnqueueRequest {
        call_id: call_id.into(),
        session_id: "sess-1".into(),
        room_name: "call-room".into(),
        bot_id: "demo".into(),
        transport: "attach".into(),
        caller: Caller { number: None, identity: "sip-+918000000001".into() },
        escalation_reason: "asked for an agent".into(),
        target: EnqueueTarget { id: Some("q1".into()), label: "Sales".into(), value: "sales".into() },
        transcript: vec![TranscriptEntry { role: Role::Customer, text: "agent please".into(), at_seconds: 2.5 }],
        variables: Default::default(),
        context: Map::new(),
        enqueued_at: chrono::Utc::now(),
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_delivers_every_request_with_both_secrets_and_retries_a_503() {
    let rx = Arc::new(Receiver { fail_enqueues: Mutex::new(2), ..Default::default() });
    let base = start_receiver(rx.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = OutboxConfig::new(dir.path());
    cfg.backoff_base = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(100);
    let outbox = Outbox::open(cfg).await.expect("outbox");
    let stop = CancellationToken::new();
    let worker = outbox.start(stop.clone());

    let desk = AgentDesk::from_config_url(&format!("{base}/config"), Some("s3cret".into())).expect("desk");
    let call_id = "call/7 ü";
    outbox.enqueue(desk.enqueue(&request(call_id)).expect("entry")).await.expect("persisted");
    let mut data = Map::new();
    data.insert("identity".into(), json!("agent-1"));
    let ev = [AgentDeskEvent::new("agent_joined", chrono::Utc::now(), data)];
    outbox.enqueue(desk.events(call_id, &ev).expect("entry")).await.expect("persisted");
    let cd = CustomerDisconnected {
        reason: "participant_left".into(),
        at: chrono::Utc::now(),
        hold_seconds: 12.0,
        agent_joined: true,
    };
    outbox.enqueue(desk.customer_disconnected(call_id, &cd).expect("entry")).await.expect("persisted");

    let ok = |p: &str| rx.hits.lock().expect("lock").iter().filter(|h| h.path.ends_with(p)).count();
    until("three enqueue attempts and both updates", || {
        ok("/enqueue") == 3 && ok("/events") == 1 && ok("/customer-disconnected") == 1
    })
    .await;
    until("the outbox to drain", || outbox.stats().pending == 0).await;

    let hits = rx.hits.lock().expect("lock").clone();
    let paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    assert!(paths.contains(&"/api/v1/agent-desk/calls/call%2F7%20%C3%BC/events"), "{paths:?}");
    assert!(paths.contains(&"/api/v1/agent-desk/calls/call%2F7%20%C3%BC/customer-disconnected"), "{paths:?}");
    for h in &hits {
        assert_eq!(h.headers["x-cxb-core-secret"], "s3cret");
        assert_eq!(h.headers["x-cxbcore-secret"], "s3cret");
        assert_eq!(h.headers["content-type"], "application/json");
        assert!(h.headers["idempotency-key"].to_str().expect("ascii").starts_with("call%2F7%20%C3%BC:"));
    }
    let enqueues: Vec<&Hit> = hits.iter().filter(|h| h.path.ends_with("/enqueue")).collect();
    // Every retry carried the same bytes.
    assert!(enqueues.windows(2).all(|w| w[0].body == w[1].body));
    assert_eq!(enqueues[0].body["call_id"], "call/7 ü");
    assert_eq!(enqueues[0].body["caller"], json!({"identity": "sip-+918000000001"}));
    let cd = hits.iter().find(|h| h.path.ends_with("/customer-disconnected")).expect("posted");
    assert_eq!(cd.body["agent_joined"], true);
    assert_eq!(cd.body["hold_seconds"], 12.0);

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
}
