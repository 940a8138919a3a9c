//! Criterion benches for the outbox.
//!
//! - `enqueue_8k`: one durable enqueue of an ~8 KiB result (temp file, fsync,
//!   rename, fsync dir). Dominated by the disk's fsync latency.
//! - `drain_200`: delivery of 200 queued entries to a loopback 200-OK receiver.
//!
//! `cargo bench -p cxb-delivery --bench outbox`. Percentiles (p50/p99) are
//! printed by `cargo run --release -p cxb-delivery --example outbox_bench`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cxb_delivery::outbox::{HttpTarget, NewEntry, Outbox, OutboxConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn entry(url: &str, i: u64) -> NewEntry {
    let body = json!({"session_id": format!("bench-{i}"), "pad": "p".repeat(8 * 1024)});
    NewEntry::http("result", format!("bench-{i}"), HttpTarget::post_json(url, &body).expect("json"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn bench_enqueue(c: &mut Criterion) {
    let rt = runtime();
    // target/tmp: on the checkout's disk, not a tmpfs where fsync is free.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let ob = rt.block_on(Outbox::open(OutboxConfig::new(dir.path()))).expect("open");
    let mut g = c.benchmark_group("outbox");
    g.throughput(Throughput::Elements(1));
    g.sample_size(50);
    g.measurement_time(Duration::from_secs(8));
    let mut i = 0u64;
    g.bench_function("enqueue_8k", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(ob.enqueue(entry("http://127.0.0.1:9/unused", i))).expect("enqueue")
        })
    });
    g.finish();
}

fn bench_drain(c: &mut Criterion) {
    const BATCH: u64 = 200;
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let srv = rt.block_on(common::Server::start());
    let url = srv.url("/results");
    let ob = rt.block_on(Outbox::open(OutboxConfig::new(dir.path()))).expect("open");
    let mut g = c.benchmark_group("outbox");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.bench_function("drain_200", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for i in 0..BATCH {
                    rt.block_on(ob.enqueue(entry(&url, i))).expect("enqueue");
                }
                let stop = CancellationToken::new();
                let t0 = Instant::now();
                let h = {
                    // start() spawns onto the current runtime.
                    let _rt = rt.enter();
                    ob.start(stop.clone())
                };
                rt.block_on(async {
                    while ob.stats().pending > 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
                total += t0.elapsed();
                stop.cancel();
                rt.block_on(h).expect("loop");
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench_enqueue, bench_drain);
criterion_main!(benches);
