//! Outbox behaviour against real loopback HTTP receivers.

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_for, Resp, Server};
use cxb_delivery::outbox::{
    Deliverer, Entry, HttpTarget, NewEntry, Outbox, OutboxConfig, OutboxError, Outcome, State, Target,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn cfg(dir: &Path) -> OutboxConfig {
    let mut c = OutboxConfig::new(dir);
    c.backoff_base = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.request_timeout = Duration::from_secs(2);
    c
}

fn result_entry(srv: &Server, session: &str) -> NewEntry {
    let body =
        json!({"session_id": session, "disposition": "Connected", "transcript": [{"role": "bot", "text": "hello"}]});
    NewEntry::http(
        "result",
        session,
        HttpTarget::post_json(srv.url("/api/v1/call-results"), &body)
            .expect("json")
            .header("X-CXBCore-Secret", "s3cret")
            .header("X-CXB-Core-Secret", "s3cret"),
    )
}

fn files(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn drained(ob: &Outbox) -> bool {
    let s = ob.stats();
    s.pending == 0 && s.in_flight == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_persists_before_returning_then_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let ob = Outbox::open(cfg(dir.path())).await.unwrap();

    let id = ob.enqueue(result_entry(&srv, "sess-1")).await.unwrap();
    // Durable before any delivery loop exists.
    let path = dir.path().join("pending").join(format!("{id}.json"));
    let on_disk: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("entry file exists")).unwrap();
    assert_eq!(on_disk["id"], id.as_str());
    assert_eq!(on_disk["kind"], "result");
    assert_eq!(on_disk["key"], "sess-1");
    assert_eq!(on_disk["target"]["type"], "http");
    assert_eq!(on_disk["target"]["method"], "POST");
    assert_eq!(on_disk["target"]["body"]["json"]["session_id"], "sess-1");
    assert!(files(&dir.path().join("pending"), ".tmp").is_empty());

    let stop = CancellationToken::new();
    let h = ob.start(stop.clone());
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    assert!(ob.wait_idle(Duration::from_secs(1)).await);
    let hits = srv.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].path, "/api/v1/call-results");
    assert_eq!(hits[0].headers["x-cxbcore-secret"], "s3cret");
    assert_eq!(hits[0].headers["x-cxb-core-secret"], "s3cret");
    assert_eq!(hits[0].headers["content-type"], "application/json");
    let sent: serde_json::Value = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(sent["session_id"], "sess-1");
    assert!(!path.exists(), "delivered entry deleted");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_with_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    srv.script([Resp::status(503), Resp::status(500), Resp::status(502)]);
    let ob = Outbox::open(cfg(dir.path())).await.unwrap();
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    let id = ob.enqueue(result_entry(&srv, "sess-2")).await.unwrap();

    assert!(wait_for(Duration::from_secs(5), || srv.hit_count() >= 2).await);
    // Mid-retry bookkeeping is visible.
    let d = ob.get(id.as_str()).await;
    if let Some(d) = d {
        assert!(d.summary.attempts >= 1);
        assert!(d.summary.last_error.unwrap_or_default().contains("HTTP 5"));
    }
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    let hits = srv.hits();
    assert_eq!(hits.len(), 4);
    assert!(hits.iter().all(|h| h.body == hits[0].body), "same bytes every attempt");
    assert_eq!(ob.stats().dead, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    srv.script([Resp::status(429).header("retry-after", "1")]);
    let mut c = cfg(dir.path());
    c.backoff_max = Duration::from_secs(5);
    let ob = Outbox::open(c).await.unwrap();
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    ob.enqueue(result_entry(&srv, "sess-3")).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    let hits = srv.hits();
    assert_eq!(hits.len(), 2);
    let gap = hits[1].at - hits[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert!(gap < Duration::from_millis(2500), "retried after {gap:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_4xx_dead_letters_with_body_then_replay_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    srv.script([Resp::status(422).body(r#"{"detail":"disposition: field required"}"#)]);
    let ob = Outbox::open(cfg(dir.path())).await.unwrap();
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    let id = ob.enqueue(result_entry(&srv, "sess-4")).await.unwrap();

    assert!(wait_for(Duration::from_secs(5), || ob.stats().dead == 1).await);
    assert_eq!(srv.hit_count(), 1, "no retry after a 4xx");
    assert_eq!(ob.stats().pending, 0);
    assert!(dir.path().join(format!("dead/{id}.json")).exists());
    let dead = ob.list(State::Dead).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].dead_reason.as_deref(), Some("rejected"));
    let d = ob.get(id.as_str()).await.expect("dead entry");
    assert_eq!(d.summary.state, State::Dead);
    assert_eq!(d.last_status, Some(422));
    assert!(d.last_response_body.as_deref().unwrap_or_default().contains("field required"));
    assert!(d.entry.is_some());

    // Receiver fixed (default 200 now); operator replays.
    ob.replay(id.as_str()).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    assert_eq!(ob.stats().dead, 0);
    let hits = srv.hits();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].body, hits[1].body);
    assert!(files(&dir.path().join("dead"), "").is_empty());
    assert!(matches!(ob.replay(id.as_str()).await, Err(OutboxError::NotFound(_))));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    srv.script([Resp::status(200).delay(Duration::from_secs(3))]);
    let mut c = cfg(dir.path());
    c.request_timeout = Duration::from_millis(300);
    let ob = Outbox::open(c).await.unwrap();
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    let id = ob.enqueue(result_entry(&srv, "sess-5")).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    assert_eq!(srv.hit_count(), 2);
    assert!(ob.get(id.as_str()).await.is_none());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    // Bind then drop: nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ob = Outbox::open(cfg(dir.path())).await.unwrap();
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    let target = HttpTarget::post_json(format!("http://127.0.0.1:{port}/x"), &json!({})).unwrap();
    let id = ob.enqueue(NewEntry::http("agent_desk", "call-1", target)).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || ob.stats().pending == 1 && ob.stats().in_flight == 0).await);
    assert!(
        wait_for(Duration::from_secs(5), || {
            let l = ob.stats();
            l.pending == 1 && l.dead == 0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = ob.list(State::Pending).await;
    assert_eq!(s[0].id, id);
    assert!(s[0].attempts >= 2, "attempts {}", s[0].attempts);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    srv.set_default(Resp::status(503).body("down"));
    let mut c = cfg(dir.path());
    c.max_age = Duration::from_millis(400);
    let ob = Outbox::open(c).await.unwrap();
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    let id = ob.enqueue(result_entry(&srv, "sess-6")).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || ob.stats().dead == 1).await);
    let d = ob.get(id.as_str()).await.unwrap();
    assert_eq!(d.summary.dead_reason.as_deref(), Some("max_age"));
    assert!(d.summary.attempts >= 2);
    assert!(d.summary.last_error.unwrap().contains("HTTP 503"));
    assert_eq!(d.last_status, Some(503));

    // A replay gets a fresh max_age window, not one attempt.
    let before = srv.hit_count();
    let t = Instant::now();
    ob.replay(id.as_str()).await.unwrap();
    assert!(wait_for(Duration::from_secs(1), || ob.stats().dead == 0).await);
    assert!(wait_for(Duration::from_secs(5), || ob.stats().dead == 1).await);
    assert!(t.elapsed() >= Duration::from_millis(350), "{:?}", t.elapsed());
    assert!(srv.hit_count() - before >= 2);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_flight_then_reopen_replays_everything() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    // The receiver hangs: attempts are in flight when we "crash".
    srv.set_default(Resp::status(200).delay(Duration::from_secs(30)));
    let mut c = cfg(dir.path());
    c.max_concurrency = 2;
    c.request_timeout = Duration::from_secs(60);
    let ob = Outbox::open(c.clone()).await.unwrap();
    let stop = CancellationToken::new();
    let h = ob.start(stop.clone());
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(ob.enqueue(result_entry(&srv, &format!("crash-{i}"))).await.unwrap());
    }
    assert!(wait_for(Duration::from_secs(5), || ob.stats().in_flight == 2).await);

    // Crash: no shutdown signal, tasks aborted, handles dropped.
    h.abort();
    let _ = h.await;
    drop(ob);
    let pending = dir.path().join("pending");
    // A crash mid-enqueue leaves temp files: one empty, one half-written.
    std::fs::write(pending.join("1700000000000-00000000000000aa.json.tmp"), b"").unwrap();
    std::fs::write(
        pending.join("1700000000000-00000000000000ab.json.tmp"),
        br#"{"id":"1700000000000-00000000000000ab","kind":"res"#,
    )
    .unwrap();
    std::fs::write(pending.join("1700000000000-00000000000000ac.meta"), b"{}").unwrap();

    srv.set_default(Resp::status(200));
    // The dropped instance's lock goes away once its aborted tasks are reaped.
    let mut reopened = None;
    for _ in 0..200 {
        match Outbox::open(c.clone()).await {
            Ok(o) => {
                reopened = Some(o);
                break;
            }
            Err(OutboxError::Locked(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let ob = reopened.expect("reopen");
    assert!(files(&pending, ".tmp").is_empty(), "temp files removed");
    assert!(files(&pending, ".meta").is_empty(), "orphan sidecar removed");
    let listed: Vec<_> = ob.list(State::Pending).await.into_iter().map(|s| s.id).collect();
    assert_eq!(listed, ids, "all pending, in id order");

    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    let hits = srv.hits();
    for i in 0..5 {
        let key = format!("crash-{i}");
        assert!(hits.iter().any(|h| String::from_utf8_lossy(&h.body).contains(&key)), "{key} delivered");
    }
    // Replay in id order: the first two requests after restart (hits 0 and 1
    // were the hung ones before the crash) are the two oldest entries.
    let mut first: Vec<String> = hits[2..4]
        .iter()
        .map(|h| {
            serde_json::from_slice::<serde_json::Value>(&h.body).unwrap()["session_id"].as_str().unwrap().to_owned()
        })
        .collect();
    first.sort();
    assert_eq!(first, ["crash-0", "crash-1"]);
    assert!(files(&pending, ".json").is_empty());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    srv.set_default(Resp::status(200).delay(Duration::from_millis(150)));
    let mut c = cfg(dir.path());
    c.max_concurrency = 3;
    let ob = Outbox::open(c).await.unwrap();
    for i in 0..12 {
        ob.enqueue(result_entry(&srv, &format!("c-{i}"))).await.unwrap();
    }
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    assert!(wait_for(Duration::from_millis(300), || ob.stats().in_flight > 0).await);
    assert!(ob.stats().in_flight <= 3);
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    assert_eq!(srv.hit_count(), 12);
    assert_eq!(srv.max_in_flight(), 3);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_at_max_bytes_and_alarm_near_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let mut c = cfg(dir.path());
    c.max_bytes = 20_000;
    c.alarm_ratio = 0.5;
    let ob = Outbox::open(c).await.unwrap();
    let big = "x".repeat(2_000);
    let entry = |i: usize| {
        NewEntry::http(
            "result",
            format!("full-{i}"),
            HttpTarget::post_json(srv.url("/r"), &json!({"pad": big})).unwrap(),
        )
    };
    let mut ok = 0;
    let mut saw_alarm_before_full = false;
    let err = loop {
        match ob.enqueue(entry(ok)).await {
            Ok(_) => {
                ok += 1;
                saw_alarm_before_full |= ob.stats().disk_alarm;
            }
            Err(e) => break e,
        }
        assert!(ok < 100, "never became full");
    };
    assert!(matches!(err, OutboxError::Full { .. }), "{err}");
    assert!(saw_alarm_before_full);
    let s = ob.stats();
    assert!(s.disk_alarm);
    assert!(s.bytes <= 20_000);
    assert_eq!(s.pending, ok);
    assert_eq!(files(&dir.path().join("pending"), ".json").len(), ok);
    assert!(files(&dir.path().join("pending"), ".tmp").is_empty());

    // Draining clears the alarm and makes room again.
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    assert!(!ob.stats().disk_alarm);
    assert_eq!(ob.stats().bytes, 0);
    ob.enqueue(entry(999)).await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_error_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let ob = Outbox::open(cfg(dir.path())).await.unwrap();
    // Simulate the filesystem failing underneath (like ENOSPC/EIO on write).
    std::fs::remove_dir_all(dir.path().join("pending")).unwrap();
    let err = ob.enqueue(result_entry(&srv, "io-1")).await.unwrap_err();
    assert!(matches!(err, OutboxError::Io { .. }), "{err}");
    let s = ob.stats();
    assert_eq!((s.pending, s.bytes), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_get_discard() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let ob = Outbox::open(cfg(dir.path())).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(ob.enqueue(result_entry(&srv, &format!("l-{i}"))).await.unwrap());
    }
    let l = ob.list(State::Pending).await;
    assert_eq!(l.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(l[1].key, "l-1");
    assert_eq!(l[1].kind, "result");
    assert!(l[1].size_bytes > 0);
    assert!(ob.list(State::Dead).await.is_empty());

    let d = ob.get(ids[1].as_str()).await.unwrap();
    let Some(Entry { target: Target::Http(t), .. }) = d.entry else { panic!("http entry") };
    assert!(std::str::from_utf8(t.body.as_bytes()).unwrap().contains("l-1"));
    assert!(ob.get("nope").await.is_none());
    assert!(ob.get("../../etc/passwd").await.is_none());

    ob.discard(ids[1].as_str()).await.unwrap();
    assert!(!dir.path().join(format!("pending/{}.json", ids[1])).exists());
    assert_eq!(ob.list(State::Pending).await.len(), 2);
    assert!(matches!(ob.discard(ids[1].as_str()).await, Err(OutboxError::NotFound(_))));
    assert!(ob.get(ids[1].as_str()).await.is_none());

    // Discard a dead letter too.
    srv.set_default(Resp::status(404).body("no such route"));
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    assert!(wait_for(Duration::from_secs(5), || ob.stats().dead == 2).await);
    let held = ob.keys("result");
    assert_eq!(held, ["l-0", "l-2"].into_iter().map(String::from).collect(), "dead entries are held too");
    assert!(ob.keys("recording").is_empty());
    ob.discard(ids[0].as_str()).await.unwrap();
    assert_eq!(ob.stats().dead, 1);
    assert!(!ob.keys("result").contains("l-0"));
    assert_eq!(files(&dir.path().join("dead"), "").len(), 2, "json + meta of the other");
    stop.cancel();
}

struct Flaky {
    calls: AtomicUsize,
}

impl Deliverer for Flaky {
    fn deliver<'a>(&'a self, entry: &'a Entry) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async move {
            let Target::Custom { data } = &entry.target else {
                return Outcome::Reject { reason: "not custom".into(), body: None };
            };
            if data["fatal"] == true {
                return Outcome::Reject { reason: "bucket missing".into(), body: Some("NoSuchBucket".into()) };
            }
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Outcome::Retry { reason: "s3 503".into(), retry_after: None }
            } else {
                Outcome::Delivered
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_deliverer_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(cfg(dir.path())).await.unwrap();
    let flaky = Arc::new(Flaky { calls: AtomicUsize::new(0) });
    ob.register("recording", flaky.clone());
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    ob.enqueue(NewEntry::custom(
        "recording",
        "sess-r",
        json!({"path": "/var/rec/a.wav", "key": "recordings/2025/01/01/a.wav"}),
    ))
    .await
    .unwrap();
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);

    ob.enqueue(NewEntry::custom("recording", "sess-f", json!({"fatal": true}))).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || ob.stats().dead == 1).await);
    let dead = ob.list(State::Dead).await;
    let d = ob.get(dead[0].id.as_str()).await.unwrap();
    assert_eq!(d.last_response_body.as_deref(), Some("NoSuchBucket"));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _a = Outbox::open(cfg(dir.path())).await.unwrap();
    assert!(matches!(Outbox::open(cfg(dir.path())).await, Err(OutboxError::Locked(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_and_reopen_keeps_undelivered() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    srv.set_default(Resp::status(503));
    let ob = Outbox::open(cfg(dir.path())).await.unwrap();
    let stop = CancellationToken::new();
    let h = ob.start(stop.clone());
    let id = ob.enqueue(result_entry(&srv, "g-1")).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || srv.hit_count() >= 2).await);
    stop.cancel();
    let t = Instant::now();
    h.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    drop(ob);

    let ob = Outbox::open(cfg(dir.path())).await.unwrap();
    let l = ob.list(State::Pending).await;
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].id, id);
    assert!(l[0].attempts >= 2, "attempts survive restart via sidecar");
    srv.set_default(Resp::status(204));
    let stop = CancellationToken::new();
    let _h = ob.start(stop.clone());
    assert!(wait_for(Duration::from_secs(5), || drained(&ob)).await);
    stop.cancel();
}
