//! The durable outbox end to end: no result is lost to a receiver outage, a rejecting receiver,
//! a full disk, or `kill -9` at any moment.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cxb_e2e::*;
use rand::Rng;
use serde_json::{json, Value};

const FAST_RETRY: &[(&str, &str)] = &[
    ("CXBCORE_OUTBOX_BACKOFF_BASE_MS", "200"),
    ("CXBCORE_OUTBOX_BACKOFF_MAX_MS", "2000"),
    ("CXBCORE_OUTBOX_TIMEOUT_MS", "2000"),
];

async fn pending(worker: &Worker) -> u64 {
    worker.admin("/admin/outbox/stats").await["pending"].as_u64().unwrap_or(0)
}

fn sessions(results: &[Value]) -> Vec<String> {
    results.iter().map(|r| r["session_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_for_60s_then_up_delivers_everything() {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), FAST_RETRY).await;
    sim.control(json!({"results_status": 503})).await;
    let down_since = Instant::now();
    for i in 0..5 {
        quick_call(&worker, &format!("down-{i}"), 400).await.expect("call");
    }
    assert!(worker.wait_idle(Duration::from_secs(20)).await);
    // Post-call runs after the slot is released; the results reach the outbox right after.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&worker).await < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending(&worker).await, 5, "all five results are persisted and pending");
    let (_, metrics) = worker.get_text("/metrics").await;
    assert!(metrics.contains("cxb_outbox_pending"), "{metrics}");
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(down_since.elapsed())).await;
    assert!(sim.results().await.is_empty());
    sim.control(json!({"results_status": 200})).await;
    let results = sim.wait_results(5, Duration::from_secs(30)).await;
    let unique: HashSet<String> = sessions(&results).into_iter().collect();
    assert_eq!(unique.len(), 5, "{results:#?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while pending(&worker).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending(&worker).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_422_goes_to_dead_letter_with_its_body_and_replays_after_the_fix() {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), FAST_RETRY).await;
    sim.control(json!({"results_status": 422})).await;
    quick_call(&worker, "st-422", 400).await.expect("call");
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let d = worker.admin("/admin/outbox?state=dead").await;
        if d.as_array().is_some_and(|a| !a.is_empty()) || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let entry = &dead.as_array().expect("list")[0];
    assert_eq!(entry["kind"], "result");
    assert_eq!(entry["attempts"], 1, "a 422 is not retried: {entry:#}");
    let id = entry["id"].as_str().unwrap().to_string();
    let detail = worker.admin(&format!("/admin/outbox/{id}")).await;
    assert!(detail["last_response_body"].as_str().unwrap_or_default().contains("injected"), "{detail:#}");
    assert!(worker.log_text().contains("422"), "logged loudly");

    // The operator fixes the receiver and replays with the CLI.
    sim.control(json!({"results_status": 200})).await;
    let out = std::process::Command::new(bin("cxb-core"))
        .args(["outbox", "--url", &format!("http://{}", worker.addr), "replay", &id])
        .env("CXBCORE_SECRET", SECRET)
        .output()
        .expect("cli runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["stream_id"], "st-422");
    // The CLI lists the (now empty) dead letters.
    let out = std::process::Command::new(bin("cxb-core"))
        .args(["outbox", "--url", &format!("http://{}", worker.addr), "list", "--state", "dead"])
        .env("CXBCORE_SECRET", SECRET)
        .output()
        .expect("cli runs");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_secret() {
    let worker = Worker::start(None, &[]).await;
    let (status, _) = worker.get_text("/admin/outbox").await;
    assert_eq!(status, 403);
    assert!(worker.admin("/admin/outbox").await.is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_keeps_results_locally_and_calls_still_complete() {
    let sim = Sim::start(&[]).await;
    let data = tempfile::tempdir().unwrap();
    let mut envs = FAST_RETRY.to_vec();
    envs.push(("CXBCORE_OUTBOX_MAX_BYTES", "6000"));
    let worker = Worker::start_at(Some(&sim), &envs, data.path()).await;
    sim.control(json!({"results_status": 503})).await;
    let undelivered = data.path().join("results/undelivered");
    let mut calls = 0;
    while calls < 8 && finished_files(&undelivered).is_empty() {
        quick_call(&worker, &format!("full-{calls}"), 300).await.expect("call completes");
        calls += 1;
        assert!(worker.wait_idle(Duration::from_secs(5)).await, "slot released");
    }
    // The fallback writes `.name.tmp` then renames; wait for a finished file rather than racing the rename.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while finished_files(&undelivered).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = finished_files(&undelivered);
    assert!(!kept.is_empty(), "a result the outbox could not take is kept locally");
    for path in kept {
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).expect("valid JSON, not truncated");
        assert!(v["session_id"].is_string());
    }
    let log = worker.log_text();
    assert!(log.contains("outbox refused the result"), "alarm in the log");
    let (_, metrics) = worker.get_text("/metrics").await;
    assert!(metrics.contains("cxb_results_undelivered_total"), "alarm metric");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = pending(&worker).await;
    assert!(stored >= 1);
    // No corruption: a restarted worker replays what was stored once the receiver is back.
    drop(worker);
    sim.control(json!({"results_status": 200})).await;
    let worker = Worker::start_at(Some(&sim), &envs, data.path()).await;
    let results = sim.wait_results(stored as usize, Duration::from_secs(15)).await;
    assert_eq!(results.len() as u64, stored);
    drop(worker);
}

/// Runs calls and `kill -9`s the worker at random moments; every result that was persisted
/// must reach the receiver (duplicates are allowed by at-least-once and are counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_9_never_loses_a_persisted_result() {
    let sim = Sim::start(&[]).await;
    let data = tempfile::tempdir().unwrap();
    let seed: u64 = rand::rng().random();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    println!("chaos seed {seed}");
    let rounds = 10;
    for round in 0..rounds {
        // Half the rounds run with a failing receiver so entries sit in the outbox when killed.
        let status = if round % 2 == 0 { 503 } else { 200 };
        sim.control(json!({"results_status": status})).await;
        let mut worker = Worker::start_at(Some(&sim), FAST_RETRY, data.path()).await;
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let url = worker.ws_url("demo");
                let ms = 200 + 300 * (i as u64);
                tokio::spawn(async move {
                    if let Ok(mut c) = RawCall::connect(&url).await {
                        c.handshake(&format!("chaos-{round}-{i}")).await;
                        c.silence(ms).await;
                        c.send(json!({"event":"hangup-call"})).await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), c.until_closed_quiet()).await;
                    }
                })
            })
            .collect();
        let kill_after = Duration::from_millis(rng.random_range(300..3000));
        tokio::time::sleep(kill_after).await;
        worker.proc.kill9();
        for c in calls {
            c.abort();
        }
        println!("round {round}: receiver {status}, killed after {kill_after:?}");
    }
    // Final: receiver healthy, worker restarted, outbox drains.
    sim.control(json!({"results_status": 200})).await;
    let worker = Worker::start_at(Some(&sim), FAST_RETRY, data.path()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&worker).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pending(&worker).await, 0, "outbox drained");
    assert_eq!(worker.admin("/admin/outbox/stats").await["dead"], 0);

    // Every session the workers logged as persisted was delivered.
    let mut persisted = HashSet::new();
    for f in std::fs::read_dir(data.path()).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("worker-") {
            for line in strip_ansi(&std::fs::read_to_string(f.path()).unwrap_or_default()).lines() {
                if let Some(rest) = line.split("persisted_session=").nth(1) {
                    persisted.insert(rest.split_whitespace().next().unwrap().trim_matches('"').to_string());
                }
            }
        }
    }
    let results = sim.results().await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for s in sessions(&results) {
        *counts.entry(s).or_default() += 1;
    }
    let missing: Vec<_> = persisted.iter().filter(|s| !counts.contains_key(*s)).collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    println!(
        "chaos: {} persisted, {} delivered sessions, {} duplicate deliveries, seed {seed}",
        persisted.len(),
        counts.len(),
        duplicates
    );
    assert!(!persisted.is_empty(), "some calls finished between kills");
    assert!(missing.is_empty(), "persisted but never delivered: {missing:?} (seed {seed})");
}

/// Remove terminal colour sequences (`ESC [ ... m`) from a log.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Result files that finished their atomic write (the in-flight `.name.tmp` files are skipped).
fn finished_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.')))
                .collect()
        })
        .unwrap_or_default()
}
