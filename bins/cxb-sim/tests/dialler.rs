//! The load dialler against a tiny in-test "worker" that speaks the bot side of the dialler
//! protocol: opening audio, energy end-of-turn, reply, barge-in stop, bot hang-up.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::Path as AxPath;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use cxb_sim::audio::{samples_for_ms, DetEvent, SpeechSynth, UtteranceDetector};
use cxb_sim::dialler::{run_dial, DialOptions};
use serde_json::{json, Value};

fn tone_frames(ms: u64) -> Vec<Vec<i16>> {
    let mut s = SpeechSynth::new(8000);
    let mut v = Vec::new();
    s.render(samples_for_ms(8000, ms), &mut v);
    v.chunks(160).map(|c| c.to_vec()).collect()
}

enum Out {
    Audio(Vec<i16>),
    Text(String),
}

async fn worker(mut ws: WebSocket) {
    let mut ids = (String::new(), String::new());
    // Handshake: connected, start, answer.
    for expected in ["connected", "start", "answer"] {
        let Some(Ok(Message::Text(t))) = ws.recv().await else { return };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["event"], expected);
        if expected == "connected" {
            assert!(v["callerId"].as_str().unwrap().starts_with("+9198"));
            assert_eq!(v["customer_name"], "Test Caller");
            ids = (v["streamId"].as_str().unwrap().into(), v["callerId"].as_str().unwrap().into());
        }
    }
    let (stream_id, caller_id) = ids;
    let mut queue: VecDeque<Out> = tone_frames(1000).into_iter().map(Out::Audio).collect();
    let mut det = UtteranceDetector::new(8000, 200);
    let mut events = Vec::new();
    let mut chunk = 0u64;
    let mut reply_at: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if reply_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    reply_at = None;
                    queue.extend(tone_frames(300).into_iter().map(Out::Audio));
                    queue.push_back(Out::Text(json!({"event":"reverse-media-stop","callerId":caller_id,"streamId":stream_id}).to_string()));
                    queue.push_back(Out::Text(json!({"event":"reverse-hangup-call","streamId":stream_id,"callerId":caller_id,"source":"ai","message":"Call ended by bot"}).to_string()));
                }
                // One audio frame per tick; control messages go out right behind it.
                let mut sent_audio = false;
                while let Some(front) = queue.front() {
                    if matches!(front, Out::Audio(_)) && sent_audio {
                        break;
                    }
                    let msg = match queue.pop_front().unwrap() {
                        Out::Audio(s) => {
                            sent_audio = true;
                            chunk += 1;
                            let bytes: Vec<u8> = s.iter().flat_map(|x| x.to_le_bytes()).collect();
                            json!({"event":"reverse-media","chunk":chunk,"did":"+911140000000",
                                "payload":base64::engine::general_purpose::STANDARD.encode(bytes),
                                "timestamp":"2026-04-24 14:30:00","streamId":stream_id,"callerId":caller_id,
                                "chunk_durn_ms":20,"callDirection":"incoming","encoding":"LINEAR","RevMediaQ":0,"source":"ai"}).to_string()
                        }
                        Out::Text(t) => t,
                    };
                    if ws.send(Message::Text(msg.into())).await.is_err() {
                        return;
                    }
                }
            }
            m = ws.recv() => {
                let Some(Ok(Message::Text(t))) = m else { return };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v["event"].as_str() {
                    Some("media") => {
                        let b = base64::engine::general_purpose::STANDARD.decode(v["payload"].as_str().unwrap()).unwrap();
                        assert_eq!(b.len(), 320);
                        let s: Vec<i16> = b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
                        events.clear();
                        det.push(&s, &mut events);
                        for e in &events {
                            match e {
                                DetEvent::Onset { .. } if queue.iter().any(|o| matches!(o, Out::Audio(_))) => {
                                    // Barge-in: drop queued audio, tell the dialler to clear its buffer.
                                    queue.clear();
                                    let stop = json!({"event":"reverse-media-stop","callerId":caller_id,"streamId":stream_id});
                                    let _ = ws.send(Message::Text(stop.to_string().into())).await;
                                }
                                DetEvent::End { .. } => reply_at = Some(tokio::time::Instant::now() + Duration::from_millis(100)),
                                _ => {}
                            }
                        }
                    }
                    Some("hangup-call") => {
                        assert_eq!(v["disconnectedBy"], "bot");
                        return;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
}

async fn ws_route(AxPath(bot): AxPath<String>, ws: WebSocketUpgrade) -> Response {
    if bot == "full" {
        return (StatusCode::TOO_MANY_REQUESTS, "at capacity").into_response();
    }
    ws.read_buffer_size(cxb_sim::WS_READ_BUFFER).on_upgrade(worker)
}

async fn start_worker() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = Router::new().route("/ws/{bot}", get(ws_route));
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn write_wav(path: &Path, ms: u64) {
    let spec =
        hound::WavSpec { channels: 1, sample_rate: 8000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for f in tone_frames(ms) {
        for s in f {
            w.write_sample(s).unwrap();
        }
    }
    w.finalize().unwrap();
}

fn opts(url: String, scenario: &Path, calls: usize) -> DialOptions {
    DialOptions {
        url,
        calls,
        concurrency: 0,
        scenario: scenario.to_path_buf(),
        ramp_ms: 5,
        timeout_secs: 15,
        sim_url: None,
        out: None,
        frame_ms: 20,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialler_measures_latency_barge_in_and_hangup() {
    let addr = start_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("say.wav");
    write_wav(&wav, 600);
    let plain = dir.path().join("plain.json");
    std::fs::write(
        &plain,
        json!({"steps":[{"wait":"bot_done","timeout_ms":5000},{"say":wav},{"wait":"bot_hangup","timeout_ms":5000}]})
            .to_string(),
    )
    .unwrap();
    let barge = dir.path().join("barge.json");
    std::fs::write(
        &barge,
        json!({"steps":[{"wait":"bot_speaking","after_ms":200,"timeout_ms":5000},{"say":wav},{"wait":"bot_hangup","timeout_ms":5000}]}).to_string(),
    )
    .unwrap();

    let url = format!("ws://{addr}/ws/demo");
    let out = dir.path().join("summary.json");
    let mut o = opts(url.clone(), &plain, 2);
    o.out = Some(out.clone());
    let (a, b) = tokio::join!(run_dial(o), run_dial(opts(url, &barge, 2)));
    let a = a.unwrap();
    let b = b.unwrap();

    assert_eq!(
        (a["calls"].as_u64(), a["completed"].as_u64(), a["failed"].as_u64()),
        (Some(2), Some(2), Some(0)),
        "{a:#}"
    );
    assert_eq!(a["protocol_violations"], 0, "{a:#}");
    assert_eq!(a["bot_hangups"], 2);
    assert_eq!(a["barge_in_says"], 0);
    assert_eq!(a["latency_ms"]["count"], 2);
    let p50 = a["latency_ms"]["p50"].as_f64().unwrap();
    // 200 ms endpointing + 100 ms reply delay + up to two 20 ms ticks on each side.
    assert!((250.0..600.0).contains(&p50), "latency p50 {p50}");
    assert_eq!(a["latency_minus_injected_ms"]["p50"], a["latency_ms"]["p50"], "nothing injected without --sim-url");
    // Every caller frame's lateness against the fixed frame clock is in the summary.
    assert!(a["send_lag_ms"]["count"].as_u64().unwrap() >= 2 * 30, "{a:#}");
    assert!(a["send_lag_ms"]["p50"].as_f64().unwrap() <= a["max_send_lag_ms"].as_f64().unwrap() + 1.0);
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(on_disk["calls"], 2);

    assert_eq!(b["completed"], 2, "{b:#}");
    assert_eq!(b["barge_in_says"], 2);
    assert_eq!(b["media_stops"], 2);
    assert_eq!(b["barge_in_stop_ms"]["count"], 2);
    assert_eq!(b["latency_ms"]["count"], 2, "the reply after the barge-in counts; the cut-off opening does not");
    assert_eq!(b["protocol_violations"], 0, "{b:#}");

    // A refused upgrade is a failure with the HTTP status.
    let r = run_dial(opts(format!("ws://{addr}/ws/full"), &plain, 3)).await.unwrap();
    assert_eq!(r["failed"], 3);
    assert_eq!(r["failure_reasons"]["refused:429"], 3);
    // Nothing listening.
    let r = run_dial(opts("ws://127.0.0.1:9/ws/x".into(), &plain, 1)).await.unwrap();
    assert_eq!(r["failure_reasons"]["connect:ConnectionRefused"], 1, "{r:#}");
}

/// Capacity check of the dialler itself: `cargo test -p cxb-sim --release --test dialler -- --ignored`
/// (N from CXB_SIM_LOAD_CALLS, default 500). The in-test worker shares the process and the cores.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "load test: run explicitly"]
async fn dialler_many_concurrent_calls() {
    cxb_sim::raise_fd_limit();
    let calls: usize = std::env::var("CXB_SIM_LOAD_CALLS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    let addr = start_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("say.wav");
    write_wav(&wav, 1500);
    let sc = dir.path().join("sc.json");
    std::fs::write(
        &sc,
        json!({"steps":[{"wait":"bot_done","timeout_ms":20000},{"say":wav},{"silence_ms":100},{"wait":"bot_hangup","timeout_ms":20000}]}).to_string(),
    )
    .unwrap();
    let mut o = opts(format!("ws://{addr}/ws/demo"), &sc, calls);
    o.ramp_ms = 4;
    o.timeout_secs = 60;
    let r = run_dial(o).await.unwrap();
    eprintln!("{r:#}");
    assert_eq!(r["completed"].as_u64(), Some(calls as u64), "{r:#}");
    assert_eq!(r["protocol_violations"], 0);
}
