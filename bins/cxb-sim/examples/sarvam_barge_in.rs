//! Sarvam TTS barge-in latency, with and without the warm spare socket.
//!
//! Against the Sarvam double with an injected upgrade delay (a stand-in for TLS and Sarvam's
//! front end), each round: a long reply starts, plays for a while after its first audio, the
//! caller barges in (`cancel`), and the next reply is spoken at once; measured is `cancel` →
//! the next reply's first audio. The spare makes the upgrade happen before it is needed;
//! without it every reply after the first connects on demand. A barge-in sooner than one
//! upgrade after the interrupted reply started finds the replacement spare still connecting
//! (the interrupted reply took the previous one), so `listen_ms` matters.
//!
//! ```sh
//! cargo run -p cxb-sim --example sarvam_barge_in -- [connect_ms] [ttfb_ms] [listen_ms] [rounds]
//! ```
//! (defaults: 150 ms upgrade delay, 50 ms TTFB, barge-in 500 ms into the reply, 30 rounds per
//! mode). Prints one JSON line per mode with the mean, p50, p95 and max in milliseconds.

use std::time::{Duration, Instant};

use cxb_providers::tts::{self, TtsEvent, TtsParams};
use cxb_sim::{start, ServeOptions};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
/// Time between rounds: barge-ins are seconds apart in a call, which leaves the replacement
/// spare time to open.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(400);

async fn first_audio(events: &mut mpsc::Receiver<TtsEvent>, context: &str) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await? {
            Some(TtsEvent::Audio { context_id, .. }) if context_id == context => return Ok(()),
            Some(TtsEvent::Error { error, .. }) => anyhow::bail!("tts error: {error}"),
            Some(_) => continue,
            None => anyhow::bail!("tts session ended"),
        }
    }
}

/// `rounds` barge-ins on one session, each `listen` after the reply's first audio; the
/// latencies in ms, sorted.
async fn run(base_url: String, warm_spare: bool, listen: Duration, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let params = TtsParams {
        provider: "sarvam".into(),
        base_url,
        api_key: "bench-key".into(),
        model: "bulbul:v2".into(),
        voice_id: "anushka".into(),
        language: Some("hi-IN".into()),
        sample_rate: 8000,
        extra: json!({"warm_spare": warm_spare}).as_object().cloned().unwrap_or_default(),
        connect_timeout: WAIT,
    };
    let (handle, mut events) = tts::connect(&params).await?;
    let long_reply = "यह एक लंबा उत्तर है जिसे ग्राहक बीच में रोक देगा। ".repeat(4);
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let talking = format!("long-{round}");
        handle.speak(&talking, &long_reply)?;
        handle.flush(&talking)?;
        first_audio(&mut events, &talking).await?;
        tokio::time::sleep(listen).await;
        let next = format!("next-{round}");
        let barge_in = Instant::now();
        handle.cancel(&talking)?;
        handle.speak(&next, "जी, बताइए। ")?;
        handle.flush(&next)?;
        first_audio(&mut events, &next).await?;
        latencies.push(barge_in.elapsed().as_secs_f64() * 1000.0);
        handle.cancel(&next)?;
        tokio::time::sleep(BETWEEN_ROUNDS).await;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

fn summary(mode: &str, ms: &[f64], settings: serde_json::Value) -> serde_json::Value {
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    json!({"mode": mode, "rounds": ms.len(), "settings": settings,
        "mean_ms": r1(mean), "p50_ms": r1(pick(0.5)), "p95_ms": r1(pick(0.95)), "max_ms": r1(pick(1.0))})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let connect_ms = args.next().transpose()?.unwrap_or(150);
    let ttfb_ms = args.next().transpose()?.unwrap_or(50);
    let listen_ms = args.next().transpose()?.unwrap_or(500);
    let rounds = args.next().transpose()?.unwrap_or(30).max(1) as usize;
    let settings = json!({"connect_delay_ms": connect_ms, "ttfb_ms": ttfb_ms, "listen_ms": listen_ms});
    let sim =
        start(ServeOptions { tts_connect_ms: connect_ms, tts_ttfb_ms: ttfb_ms, ..ServeOptions::default() }).await?;
    for (mode, warm_spare) in [("warm_spare", true), ("no_spare", false)] {
        let ms = run(sim.url("ws"), warm_spare, Duration::from_millis(listen_ms), rounds).await?;
        println!("{}", summary(mode, &ms, settings.clone()));
    }
    sim.shutdown().await;
    Ok(())
}
