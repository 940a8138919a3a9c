//! Outbox throughput/latency probe (prints percentiles; criterion does not).
//!
//! ```text
//! cargo run --release -p cxb-delivery --example outbox_bench [-- DIR]
//! ```
//! A temp dir is created inside DIR (default: the system temp dir). Point it
//! at the filesystem you want to measure (not a tmpfs, where fsync is free):
//! fsync cost is the whole story.
//!
//! 1. enqueue 2,000 entries of ~8 KiB one after another (persist + fsync +
//!    rename + fsync dir each) → persisted/s, p50/p90/p99/max latency;
//! 2. the same with 8 concurrent producers (calls ending together);
//! 3. drain 1,000 queued entries to a local 200-OK receiver (default config:
//!    8 in flight) → seconds until empty.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cxb_delivery::outbox::{HttpTarget, NewEntry, Outbox, OutboxConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const N: usize = 2_000;
const BODY_BYTES: usize = 8 * 1024;
const DRAIN: usize = 1_000;
const PRODUCERS: usize = 8;

fn entry(url: &str, i: usize) -> NewEntry {
    // ~8 KiB of JSON, shaped like a results payload with a transcript.
    let turns: Vec<_> =
        (0..40).map(|t| json!({"role": if t % 2 == 0 {"bot"} else {"customer"}, "text": "x".repeat(150)})).collect();
    let mut body = json!({"session_id": format!("bench-{i}"), "transcript": turns});
    let len = serde_json::to_string(&body).map(|s| s.len()).unwrap_or(0);
    body["pad"] = json!("p".repeat(BODY_BYTES.saturating_sub(len + 10)));
    let target = HttpTarget::post_json(url, &body).expect("serializable").header("X-CXBCore-Secret", "bench");
    NewEntry::http("result", format!("bench-{i}"), target)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(label: &str, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort();
    println!(
        "{label}: {} entries in {:.2}s = {:.0} persisted/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(&lat, 0.50).as_secs_f64() * 1e3,
        pct(&lat, 0.90).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base: PathBuf = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new().prefix("outbox-bench-").tempdir_in(&base)?;
    let srv = common::Server::start().await;
    let url = srv.url("/api/v1/call-results");
    let sample = serde_json::to_vec(&entry(&url, 0).target)?.len();
    println!("dir {} | entry file ~{} bytes", tmp.path().display(), sample);

    // 1. Sequential enqueue.
    let ob = Outbox::open(OutboxConfig::new(tmp.path().join("seq"))).await?;
    let mut lat = Vec::with_capacity(N);
    let t0 = Instant::now();
    for i in 0..N {
        let t = Instant::now();
        ob.enqueue(entry(&url, i)).await?;
        lat.push(t.elapsed());
    }
    report("enqueue sequential", lat, t0.elapsed());
    drop(ob);

    // 2. Concurrent producers.
    let ob = Outbox::open(OutboxConfig::new(tmp.path().join("conc"))).await?;
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for p in 0..PRODUCERS {
        let ob = ob.clone();
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (p..N).step_by(PRODUCERS) {
                let e = entry(&url, i);
                let t = Instant::now();
                ob.enqueue(e).await.map_err(|e| e.to_string())?;
                lat.push(t.elapsed());
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut lat = Vec::with_capacity(N);
    for h in handles {
        lat.extend(h.await??);
    }
    report(&format!("enqueue {PRODUCERS} producers"), lat, t0.elapsed());
    drop(ob);

    // 3. Drain to a local receiver.
    let ob = Outbox::open(OutboxConfig::new(tmp.path().join("drain"))).await?;
    for i in 0..DRAIN {
        ob.enqueue(entry(&url, i)).await?;
    }
    let before = srv.hit_count();
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let h = ob.start(stop.clone());
    while ob.stats().pending > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if t0.elapsed() > Duration::from_secs(120) {
            return Err("drain did not finish in 120 s".into());
        }
    }
    let wall = t0.elapsed();
    println!(
        "drain: {DRAIN} entries delivered in {:.2}s = {:.0}/s ({} requests received, max {} in flight)",
        wall.as_secs_f64(),
        DRAIN as f64 / wall.as_secs_f64(),
        srv.hit_count() - before,
        srv.max_in_flight(),
    );
    stop.cancel();
    h.await?;
    Ok(())
}
