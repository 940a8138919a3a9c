//! Real `kill -9`: a child process (this test binary re-executed) enqueues as
//! fast as it can while its delivery loop retries (503) and dead-letters (422)
//! entries concurrently; the parent SIGKILLs it at a random instant, reopens
//! the outbox and checks that every acknowledged entry is intact.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use cxb_delivery::outbox::{HttpTarget, NewEntry, Outbox, OutboxConfig, State};
use serde_json::json;

const CHILD_ENV: &str = "CXB_OUTBOX_KILL9_CHILD_DIR";

fn cfg(dir: &std::path::Path) -> OutboxConfig {
    let mut c = OutboxConfig::new(dir);
    c.backoff_base = Duration::from_millis(5);
    c.backoff_max = Duration::from_millis(20);
    c
}

/// Child role; a no-op when run as a normal test.
#[test]
fn kill9_child_role() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let srv = common::Server::start().await;
        // Every 3rd request is rejected (dead-letter move), the rest fail
        // transiently (sidecar rewrites): crash points all over the code.
        let mut script = Vec::new();
        for i in 0..100_000 {
            script.push(common::Resp::status(if i % 3 == 0 { 422 } else { 503 }).body("no"));
        }
        srv.script(script);
        let ob = Outbox::open(cfg(std::path::Path::new(&dir))).await.unwrap();
        let _h = ob.start(tokio_util::sync::CancellationToken::new());
        let mut out = std::io::stdout().lock();
        for i in 0.. {
            let target = HttpTarget::post_json(srv.url("/r"), &json!({"n": i, "pad": "z".repeat(2000)})).unwrap();
            let id = ob.enqueue(NewEntry::http("result", format!("k-{i}"), target)).await.unwrap();
            // Printed only after enqueue returned: this is the promise.
            writeln!(out, "ACK {id}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill9_child_role", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("ACK ") {
                    acked.push(id.to_owned());
                }
            }
            acked
        });
        std::thread::sleep(Duration::from_millis(400 + 150 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(acked.len() > 5, "child made progress: {}", acked.len());

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let ob = Outbox::open(cfg(dir.path())).await.unwrap();
            let mut have: HashSet<String> = HashSet::new();
            for s in ob.list(State::Pending).await {
                have.insert(s.id.to_string());
            }
            for s in ob.list(State::Dead).await {
                assert_ne!(s.dead_reason.as_deref(), Some("corrupt"));
                have.insert(s.id.to_string());
            }
            eprintln!("round {round}: {} acked, {} on disk", acked.len(), have.len());
            for id in &acked {
                assert!(have.contains(id), "acknowledged entry {id} lost");
                let d = ob.get(id).await.expect("readable");
                assert!(d.entry.is_some(), "entry {id} parses");
            }
            for sub in ["pending", "dead"] {
                for f in std::fs::read_dir(dir.path().join(sub)).unwrap() {
                    let name = f.unwrap().file_name();
                    assert!(!name.to_string_lossy().ends_with(".tmp"));
                }
            }
        });
    }
}
