//! LiveKit load benchmark with the fake room (no LiveKit server needed).
//!
//! ```sh
//! cargo build --release -p cxb-sim -p cxb-e2e --examples --bins
//! target/release/examples/livekit_load --calls 100 --duration-s 30 --dispatches 200
//! ```
//!
//! The worker runs in this process (`cxb_core::serve_with`) with the in-memory room connector and
//! the loopback fake LiveKit server API; cxb-sim (its own process) plays the providers and CXB API.
//!
//! 1. **Route latency under load**: `--calls` concurrent `POST /attach` (each starts a 16 kHz call),
//!    then, while those calls run, `--dispatches` `POST /livekit/dispatch` (secret check, capacity,
//!    SIP lookup at the fake CXB API, accept) with 20 in flight; each dispatched call is ended at once.
//! 2. **CPU per call-minute of the 16 kHz path**: every attach call's caller streams the scripted
//!    caller WAVs at 16 kHz in real time (20 ms frames) with pauses the bot answers in, for
//!    up to `--duration-s` (the script's third turn says goodbye and the bot hangs up); the
//!    process's CPU time over that window / the calls' summed duration. It includes the caller
//!    side's frame feeding (small: a channel send per frame), not cxb-sim's.

use std::time::{Duration, Instant};

use cxb_e2e::fake_livekit::FakeParticipant;
use cxb_e2e::livekit_worker::{caller_audio_16k, say, sip_participant, LkWorker};
use cxb_e2e::{repo_root, Sim};
use serde_json::json;

struct Args {
    calls: usize,
    duration: Duration,
    dispatches: usize,
}

fn args() -> Args {
    let mut a = Args { calls: 100, duration: Duration::from_secs(30), dispatches: 200 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{k} needs a number"));
        match k.as_str() {
            "--calls" => a.calls = v as usize,
            "--duration-s" => a.duration = Duration::from_secs(v),
            "--dispatches" => a.dispatches = v as usize,
            other => panic!("unknown argument {other}; use --calls N --duration-s S --dispatches N"),
        }
    }
    a
}

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`; utime and stime are the 14th and 15th fields overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.95), at(0.99))
}

#[tokio::main]
async fn main() {
    let a = args();
    let sim = Sim::start(&[]).await;
    let w = LkWorker::start(Some(&sim), |s| {
        s.max_concurrent_calls = (a.calls + a.dispatches + 10) as u64;
        s.livekit.lookup_timeout_ms = 10_000;
    })
    .await;
    let turns: Vec<Vec<i16>> =
        (1..=3).map(|i| caller_audio_16k(&repo_root().join(format!("assets/audio/caller-{i}.wav")))).collect();
    let base_rss = rss_mb();

    // 1a. /attach under a burst of `calls` concurrent requests.
    let mut reqs = Vec::new();
    for i in 0..a.calls {
        let http = w.http.clone();
        let url = format!("{}/attach", w.base);
        reqs.push(tokio::spawn(async move {
            let body = json!({"room_name": format!("load-{i}"), "bot_id": "demo", "to_number": format!("+1555{i:06}")});
            let t = Instant::now();
            let r = http.post(url).header("X-CXB-Core-Secret", cxb_e2e::SECRET).json(&body).send().await;
            (r.map(|r| r.status().as_u16()).unwrap_or(0), t.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut attach_ms = Vec::new();
    for r in reqs {
        let (status, ms) = r.await.unwrap();
        assert_eq!(status, 200, "attach refused");
        attach_ms.push(ms);
    }

    // 2. The calls: each caller talks in real time for the window.
    let t_calls = Instant::now();
    let cpu0 = cpu_seconds();
    let mut callers = Vec::new();
    for _ in 0..a.calls {
        let room = w.room().await;
        let i: usize = room.request().room_name.trim_start_matches("load-").parse().unwrap();
        let identity = format!("sip-+1555{i:06}");
        let turns = turns.clone();
        let duration = a.duration;
        callers.push(tokio::spawn(async move {
            room.participant_joined(sip_participant(&identity, &[])).await.ok();
            let start = Instant::now();
            let mut n = 0;
            say(&room, &identity, &[], 3000).await;
            // The script's third turn says goodbye and the bot ends the call (`end_call`).
            while !room.is_disconnected() && start.elapsed() + Duration::from_secs(7) < duration {
                say(&room, &identity, &turns[n % turns.len()], 4000).await;
                n += 1;
            }
            if !room.is_disconnected() {
                let rest = duration.saturating_sub(start.elapsed());
                say(&room, &identity, &[], rest.as_millis() as u64).await;
                let _ = room.participant_left(&identity, None).await;
            }
            n
        }));
    }

    // 1b. /livekit/dispatch while the calls run.
    let mut dispatch_ms = Vec::new();
    let mut next = 0;
    while next < a.dispatches {
        let batch: Vec<usize> = (next..(next + 20).min(a.dispatches)).collect();
        next += batch.len();
        let mut inflight = Vec::new();
        for j in batch {
            let room = format!("disp-{j}");
            w.lk.set_participants(&room, vec![FakeParticipant::sip(format!("sip_disp_{j}"), "+15550000000")]);
            let http = w.http.clone();
            let url = format!("{}/livekit/dispatch", w.base);
            inflight.push(tokio::spawn(async move {
                let body = json!({"room_name": room, "caller_number": "+15550000000", "dialed_number": "+18000000000"});
                let t = Instant::now();
                let r = http.post(url).header("X-CXB-Core-Secret", cxb_e2e::SECRET).json(&body).send().await;
                (r.map(|r| r.status().as_u16()).unwrap_or(0), t.elapsed().as_secs_f64() * 1000.0)
            }));
        }
        for r in inflight {
            let (status, ms) = r.await.unwrap();
            assert_eq!(status, 200, "dispatch refused");
            dispatch_ms.push(ms);
        }
        // End the dispatched calls straight away (they only measure the route).
        while let Some(room) = w.rooms.try_next_room() {
            room.remote_disconnect("benchmark");
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Some(room) = w.rooms.try_next_room() {
        room.remote_disconnect("benchmark");
    }

    let mut peak_rss = rss_mb();
    let mut turns_said = 0;
    for c in callers {
        turns_said += c.await.unwrap();
        peak_rss = peak_rss.max(rss_mb());
    }
    let window = t_calls.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let results = sim.wait_results(a.calls + a.dispatches, Duration::from_secs(60)).await;
    let attach_results = results.iter().filter(|r| r["transport"] == "attach").count();
    let bot_lines: usize = results
        .iter()
        .filter(|r| r["transport"] == "attach")
        .map(|r| r["transcript"].as_array().map_or(0, |t| t.iter().filter(|l| l["speaker"] == "bot").count()))
        .sum();
    // Call time as the worker measured it (answer to hang-up), summed over the attach calls.
    let call_minutes: f64 = results
        .iter()
        .filter(|r| r["transport"] == "attach")
        .filter_map(|r| r["call_duration_seconds"].as_f64())
        .sum::<f64>()
        / 60.0;
    let (a50, a95, a99) = percentiles(attach_ms);
    let (d50, d95, d99) = percentiles(dispatch_ms);
    let summary = json!({
        "calls": a.calls,
        "call_minutes": call_minutes,
        "disconnected_by_bot": results.iter().filter(|r| r["transport"] == "attach" && r["disconnected_by"] == "bot").count(),
        "call_window_s": window.as_secs_f64(),
        "attach_results": attach_results,
        "dispatch_results": results.len() - attach_results,
        "caller_turns": turns_said,
        "bot_lines": bot_lines,
        "cpu_s_per_call_minute": cpu / call_minutes,
        "rss_mb_base": base_rss,
        "rss_mb_peak": peak_rss,
        "rss_mb_per_call": (peak_rss - base_rss) / a.calls.max(1) as f64,
        "attach_route_ms": {"p50": a50, "p95": a95, "p99": a99},
        "dispatch_route_ms": {"p50": d50, "p95": d95, "p99": d99, "requests": a.dispatches},
    });
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    assert_eq!(attach_results, a.calls, "every call delivered a result");
}
