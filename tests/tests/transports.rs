//! The telephony media-stream transports (Exotel, Twilio, Telnyx, Plivo, Vonage) end to end:
//! the real `cxb-core` binary, `cxb-sim dial --protocol …` as the provider, the sim's provider
//! doubles, fake CXB API and telephony REST fakes.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use cxb_e2e::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Run `cxb-sim dial --protocol <proto>` against `ws://worker/<route>` and return its summary.
async fn dial_proto(worker: &Worker, sim: &Sim, route: &str, proto: &str, scenario: &str, extra: &[&str]) -> Value {
    let out = sim.dir.path().join(format!("dial-{proto}-{}.json", free_port()));
    let url = format!("ws://{}/{route}", worker.addr);
    let sim_url = format!("http://{}", sim.addr);
    let out_s = out.to_string_lossy().to_string();
    let mut args = vec![
        "dial",
        "--protocol",
        proto,
        "--url",
        &url,
        "--calls",
        "1",
        "--scenario",
        scenario,
        "--sim-url",
        &sim_url,
        "--out",
        &out_s,
    ];
    args.extend_from_slice(extra);
    let status = tokio::process::Command::new(bin("cxb-sim"))
        .current_dir(repo_root())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("dial runs");
    assert!(status.success() || out.exists(), "dial failed to run");
    serde_json::from_slice(&std::fs::read(&out).expect("summary written")).expect("summary json")
}

async fn setup(envs: &[(&str, &str)]) -> (Sim, Worker) {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), envs).await;
    (sim, worker)
}

fn by_speaker<'a>(result: &'a Value, speaker: &str) -> Vec<&'a Value> {
    result["transcript"].as_array().unwrap().iter().filter(|l| l["speaker"] == speaker).collect()
}

fn protocol_errors(r: &Value) -> Vec<String> {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "protocol_error")
        .map(|e| e["data"]["error"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The shared checks of a complete scripted call (3 caller turns, barge-in, bot `end_call`).
fn assert_three_turn_call(summary: &Value, r: &Value, transport: &str) {
    assert_eq!(summary["completed"], 1, "{summary:#}");
    assert_eq!(summary["protocol_violations"], 0, "{summary:#}");
    assert_eq!(summary["bot_hangups"], 1, "{summary:#}");
    assert_eq!(summary["media_stops"], 1, "one clear for the barge-in: {summary:#}");
    assert!(summary["max_bot_audio_ahead_ms"].as_f64().unwrap() < 1000.0, "paced in real time: {summary:#}");
    // Marks are placed at the end of each utterance once the driver reports it; every mark
    // placed must have been echoed (played) or dropped by the barge-in clear.
    assert!(summary["marks_echoed"].as_u64() <= summary["marks_sent"].as_u64(), "{summary:#}");
    // One mark after each utterance that played to its end: the greeting, the answer to the
    // second turn and the goodbye (the interrupted answer was cleared before its end).
    assert!(summary["marks_sent"].as_u64().unwrap() >= 3, "a mark after each utterance: {summary:#}");
    assert!(summary["marks_echoed"].as_u64().unwrap() >= 2, "the peer echoed played marks: {summary:#}");
    assert_no_nulls(r, "$");
    assert_eq!(r["transport"], transport);
    assert_eq!(r["disconnected_by"], "bot", "{r:#}");
    assert_eq!(r["bot_id"], "demo");
    assert_eq!(r["from_number"], "+911140000000");
    assert!(r["caller_id"].as_str().unwrap().starts_with("+9198"), "{r:#}");
    assert!(!r["stream_id"].as_str().unwrap().is_empty());
    let customer = by_speaker(r, "customer");
    assert_eq!(customer.len(), 3, "{:#}", r["transcript"]);
    assert_eq!(customer[0]["text"], "I want to check my order status");
    let bot = by_speaker(r, "bot");
    assert_eq!(bot[0]["text"], "Hello! This is the CXB demo line. How can I help you today?");
    assert!(bot.iter().any(|l| l["interrupted"] == true), "the barge-in cut a bot line: {:#}", r["transcript"]);
    assert_eq!(bot.last().unwrap()["text"], "Thank you for calling. Goodbye!");
    assert_goodbye_heard(summary, r);
    assert_eq!(r["latency_samples"].as_array().unwrap().len(), 3);
    assert!(protocol_errors(r).is_empty(), "{:?}", protocol_errors(r));
}

async fn one_result(sim: &Sim) -> Value {
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    assert_eq!(results.len(), 1, "exactly one result: {results:#?}");
    results[0].clone()
}

async fn rest_requests(sim: &Sim) -> Vec<Value> {
    sim.get("/sim/telephony-requests").await.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exotel_three_turn_call_with_barge_in_and_bot_close() {
    let (sim, worker) = setup(&[]).await;
    // cxb-sim sends Exotel's documented `start` (`encoding: "base64"`, `sample_rate: "8000"`).
    let summary = dial_proto(&worker, &sim, "exotel/demo", "exotel", "assets/sim/scenario.json", &[]).await;
    assert_eq!(summary["bot_hangups_close"], 1, "Exotel's bot hang-up is a socket close: {summary:#}");
    let r = one_result(&sim).await;
    assert_three_turn_call(&summary, &r, "exotel");
    // custom_parameters (the URL's k=v pairs, echoed in `start`) reach the config fetch and result.
    assert_eq!(r["connected_event"]["custom_parameters"]["customer_name"], "Test Caller");
    assert!(r["connected_event"]["crm_id"].as_str().unwrap().starts_with("CRM-"));
    assert!(r["stream_id"].as_str().unwrap().starts_with("MZ"));
    let cfg = sim.get("/sim/config-requests").await;
    assert!(cfg.to_string().contains("customer_name"), "{cfg:#}");
    assert!(rest_requests(&sim).await.is_empty(), "no REST calls for Exotel");
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

/// Issue #14: Exotel's integrations label the stream `encoding: "base64"`, send `sample_rate` as a
/// number and `sequence_number`/`chunk` as numbers. Such a call runs to its end like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exotel_call_with_a_base64_label_and_numeric_rate_and_sequence_numbers() {
    let (sim, worker) = setup(&[]).await;
    let media_format = r#"{"encoding":"base64","sample_rate":8000,"bit_rate":"128kbps"}"#;
    let extra = ["--encoding", media_format];
    let summary = dial_proto(&worker, &sim, "exotel/demo", "exotel", "assets/sim/scenario.json", &extra).await;
    assert_eq!(summary["bot_hangups_close"], 1, "{summary:#}\n{}", worker.log_text());
    let r = one_result(&sim).await;
    assert_three_turn_call(&summary, &r, "exotel");
    // The label reached the config fetch and the result as Exotel sent it.
    assert_eq!(r["connected_event"]["media_format"]["encoding"], "base64");
    assert_eq!(r["connected_event"]["media_format"]["sample_rate"], 8000);
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exotel_24k_stream_and_customer_stop() {
    let (sim, worker) = setup(&[]).await;
    let summary = dial_proto(
        &worker,
        &sim,
        "exotel/demo",
        "exotel",
        "assets/sim/scenario-hangup.json",
        &["--sample-rate", "24000"],
    )
    .await;
    assert_eq!(summary["completed"], 1, "{summary:#}\n{}", worker.log_text());
    assert_eq!(summary["protocol_violations"], 0, "24 kHz chunks obey the 320-byte rules: {summary:#}");
    let r = one_result(&sim).await;
    assert_eq!(r["disconnected_by"], "customer", "stop → customer");
    assert_eq!(
        by_speaker(&r, "customer")[0]["text"],
        "I want to check my order status",
        "resampled audio is understood"
    );
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exotel_without_config_records_outside_hours() {
    let (sim, worker) = setup(&[]).await;
    let mut call = RawCall::connect(&format!("ws://{}/exotel/closed?sample-rate=8000", worker.addr)).await.unwrap();
    call.send(json!({"event":"connected"})).await;
    call.send(exotel_start("MZ-closed", "8000")).await;
    let closed = call.until_closed(Duration::from_secs(10)).await;
    assert!(closed.reason.contains("config"), "{closed:?}");
    let r = one_result(&sim).await;
    assert_eq!(r["disconnected_by"], "outside_hours", "{r:#}");
    assert_eq!(r["transport"], "exotel");
    assert_eq!(r["stream_id"], "MZ-closed");
    assert_eq!(r["caller_id"], "+919800000001");
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_three_turn_call_with_rest_hang_up() {
    let (sim, worker) = setup(&[]).await;
    let summary = dial_proto(&worker, &sim, "twilio/demo", "twilio", "assets/sim/scenario.json", &[]).await;
    assert_eq!(summary["bot_hangups_rest"], 1, "{summary:#}");
    let r = one_result(&sim).await;
    assert_three_turn_call(&summary, &r, "twilio");
    assert_eq!(r["connected_event"]["customer_name"], "Test Caller", "customParameters are forwarded");
    let reqs = rest_requests(&sim).await;
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    let q = &reqs[0];
    assert_eq!(
        (q["provider"].as_str(), q["method"].as_str(), q["valid"].as_bool()),
        (Some("twilio"), Some("POST"), Some(true)),
        "{q:#}"
    );
    assert_eq!(q["body"], "Status=completed");
    assert!(q["path"].as_str().unwrap().ends_with(&format!("/Calls/{}.json", q["call_id"].as_str().unwrap())));
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_without_credentials_hangs_up_by_closing() {
    let (sim, worker) = setup(&[]).await;
    let url = "twilio/no-telephony";
    let summary = dial_proto(&worker, &sim, url, "twilio", "assets/sim/scenario.json", &[]).await;
    assert_eq!(summary["completed"], 1, "{summary:#}");
    assert_eq!(summary["bot_hangups_close"], 1, "{summary:#}");
    assert!(rest_requests(&sim).await.is_empty());
    assert_eq!(one_result(&sim).await["disconnected_by"], "bot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_alaw_three_turn_call_with_rest_hang_up() {
    let (sim, worker) = setup(&[]).await;
    let summary =
        dial_proto(&worker, &sim, "telnyx/demo", "telnyx", "assets/sim/scenario.json", &["--encoding", "PCMA"]).await;
    assert_eq!(summary["bot_hangups_rest"], 1, "{summary:#}");
    let r = one_result(&sim).await;
    assert_three_turn_call(&summary, &r, "telnyx");
    let reqs = rest_requests(&sim).await;
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!((reqs[0]["method"].as_str(), reqs[0]["valid"].as_bool()), (Some("POST"), Some(true)), "{reqs:#?}");
    assert!(reqs[0]["call_id"].as_str().unwrap().starts_with("v3:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plivo_l16_16k_three_turn_call_with_rest_hang_up() {
    let (sim, worker) = setup(&[]).await;
    let extra = ["--encoding", "l16", "--sample-rate", "16000"];
    let summary = dial_proto(&worker, &sim, "plivo/demo", "plivo", "assets/sim/scenario.json", &extra).await;
    assert_eq!(summary["bot_hangups_rest"], 1, "{summary:#}");
    let r = one_result(&sim).await;
    assert_three_turn_call(&summary, &r, "plivo");
    assert_eq!(r["connected_event"]["customer_name"], "Test Caller", "the stream URL's query is forwarded");
    let reqs = rest_requests(&sim).await;
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!((reqs[0]["method"].as_str(), reqs[0]["status"].as_u64()), (Some("DELETE"), Some(204)), "{reqs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_three_turn_call_over_binary_frames() {
    let (sim, worker) = setup(&[]).await;
    let summary = dial_proto(&worker, &sim, "vonage/demo", "vonage", "assets/sim/scenario.json", &[]).await;
    assert_eq!(summary["bot_hangups_close"], 1, "{summary:#}");
    assert_eq!(summary["sample_rate"], 16000);
    let r = one_result(&sim).await;
    assert_three_turn_call(&summary, &r, "vonage");
    assert_eq!(r["connected_event"]["customer_name"], "Test Caller", "NCCO headers are forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_hang_up_on_every_protocol() {
    let (sim, worker) = setup(&[]).await;
    for (route, proto) in
        [("twilio/demo", "twilio"), ("telnyx/demo", "telnyx"), ("plivo/demo", "plivo"), ("vonage/demo", "vonage")]
    {
        let summary = dial_proto(&worker, &sim, route, proto, "assets/sim/scenario-hangup.json", &[]).await;
        assert_eq!(summary["completed"], 1, "{proto}: {summary:#}");
        assert_eq!(summary["protocol_violations"], 0, "{proto}: {summary:#}");
    }
    let results = sim.wait_results(4, Duration::from_secs(10)).await;
    assert_eq!(results.len(), 4);
    for r in &results {
        assert_eq!(r["disconnected_by"], "customer", "{}", r["transport"]);
    }
    assert!(rest_requests(&sim).await.is_empty(), "no bot hang-up when the customer leaves");
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

// ---------------------------------------------------------------------------------------------
// Malformed input, per protocol.

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn exotel_start(sid: &str, rate: &str) -> Value {
    json!({"event":"start","sequence_number":"1","stream_sid":sid,"start":{"stream_sid":sid,"call_sid":"CA1",
        "account_sid":"AC1","from":"+919800000001","to":"+911140000000","custom_parameters":{"k":"v"},
        "media_format":{"encoding":"audio/x-raw","sample_rate":rate,"bit_rate":"16"}}})
}

/// A protocol's handshake and a valid 20 ms silence frame.
struct Proto {
    route: &'static str,
    handshake: Vec<Value>,
    silence: Message,
    stop: Option<Value>,
}

fn protos() -> Vec<Proto> {
    vec![
        Proto {
            route: "exotel",
            handshake: vec![json!({"event":"connected"}), exotel_start("MZ-bad", "8000")],
            silence: Message::Text(
                json!({"event":"media","stream_sid":"MZ-bad","media":{"payload":b64(&[0; 320])}}).to_string().into(),
            ),
            stop: Some(json!({"event":"stop","stream_sid":"MZ-bad","stop":{"reason":"callended"}})),
        },
        Proto {
            route: "twilio",
            handshake: vec![
                json!({"event":"connected","protocol":"Call","version":"1.0.0"}),
                json!({"event":"start","streamSid":"MZ-t","start":{"streamSid":"MZ-t","accountSid":"AC1","callSid":"CA1",
                    "customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}),
            ],
            silence: Message::Text(
                json!({"event":"media","streamSid":"MZ-t","media":{"payload":b64(&[0xFF; 160])}}).to_string().into(),
            ),
            stop: Some(json!({"event":"stop","streamSid":"MZ-t","stop":{}})),
        },
        Proto {
            route: "telnyx",
            handshake: vec![
                json!({"event":"connected","version":"1.0.0"}),
                json!({"event":"start","stream_id":"st-x","start":{"call_control_id":"v3:x","from":"+1","to":"+2",
                    "media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}),
            ],
            silence: Message::Text(json!({"event":"media","media":{"payload":b64(&[0xFF; 160])}}).to_string().into()),
            stop: Some(json!({"event":"stop","stop":{}})),
        },
        Proto {
            route: "plivo",
            handshake: vec![
                json!({"event":"start","start":{"streamId":"s-p","callId":"c-p","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000}}}),
            ],
            silence: Message::Text(
                json!({"event":"media","streamId":"s-p","media":{"payload":b64(&[0xFF; 160])}}).to_string().into(),
            ),
            stop: None,
        },
        Proto {
            route: "vonage",
            handshake: vec![
                json!({"event":"websocket:connected","content-type":"audio/l16;rate=16000","from":"+1","to":"+2"}),
            ],
            silence: Message::Binary(vec![0u8; 640].into()),
            stop: None,
        },
    ]
}

async fn frames(call: &mut RawCall, m: &Message, n: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..n {
        tick.tick().await;
        if !call.send_raw(m.clone()).await {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes_are_refused_clearly_on_every_protocol() {
    let (sim, worker) = setup(&[]).await;
    let cases: Vec<(&str, Vec<Message>, &str)> = vec![
        // Missing start: media straight after connected.
        (
            "exotel/demo",
            vec![txt(json!({"event":"connected"})), txt(json!({"event":"media","media":{"payload":""}}))],
            "waiting for start",
        ),
        (
            "exotel/demo",
            vec![txt(json!({"event":"connected"})), txt(json!({"event":"start","start":{"stream_sid":7}}))],
            "must be a string",
        ),
        ("exotel/demo", vec![txt(json!({"event":"hello"}))], "unknown event"),
        (
            "twilio/demo",
            vec![txt(json!({"event":"connected"})), txt(json!({"event":"dtmf","dtmf":{"digit":"1"}}))],
            "waiting for start",
        ),
        (
            "twilio/demo",
            vec![
                txt(json!({"event":"connected"})),
                txt(json!({"event":"start","start":{"streamSid":"s","mediaFormat":{"encoding":"audio/x-l16"}}})),
            ],
            "encoding",
        ),
        (
            "telnyx/demo",
            vec![txt(json!({"event":"start","stream_id":"s","start":{"media_format":{"encoding":"OPUS"}}}))],
            "OPUS",
        ),
        ("plivo/demo", vec![txt(json!({"event":"media","media":{"payload":""}}))], "waiting for start"),
        ("plivo/demo", vec![Message::Text("{not json".into())], "not JSON"),
        ("vonage/demo", vec![txt(json!({"event":"websocket:connected","content-type":"audio/pcmu"}))], "content-type"),
        ("vonage/demo", vec![Message::Binary(vec![0u8; 640].into())], "binary"),
    ];
    for (route, msgs, needle) in cases {
        let mut call = RawCall::connect(&format!("ws://{}/{route}", worker.addr)).await.unwrap();
        for m in msgs {
            call.send_raw(m).await;
        }
        let closed = call.until_closed(Duration::from_secs(5)).await;
        assert!(matches!(closed.code, Some(1008) | Some(1003)), "{route} {needle}: {closed:?}");
        assert!(closed.reason.contains(needle), "{route}: {closed:?} should mention {needle:?}");
    }
    // A bad Exotel stream URL is refused before the upgrade.
    let err =
        RawCall::connect(&format!("ws://{}/exotel/demo?sample-rate=44100", worker.addr)).await.err().expect("refused");
    assert!(err.to_string().contains("400"), "{err}");
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
    assert!(sim.get("/sim/config-requests").await.as_array().unwrap().is_empty(), "nothing fetched for bad handshakes");
    assert!(!worker.log_text().contains("panicked"));
}

fn txt(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_mid_call_are_logged_and_every_call_still_delivers_a_result() {
    let (sim, worker) = setup(&[]).await;
    let bad_common = vec![
        Message::Text("not json at all".into()),
        txt(json!({"event":"bogus-event"})),
        txt(json!({"no_event":1})),
        txt(json!({"event":"media","media":{"payload":"***not base64***"}})),
        txt(json!({"event":"media","media":{"payload":12345}})),
        txt(json!({"event":"media","media":"wrong type"})),
        txt(json!({"event":"dtmf","dtmf":{"digit":"XYZ"}})),
        // More than 2 s of audio in one frame.
        txt(json!({"event":"media","media":{"payload":b64(&vec![0u8; 40_000])}})),
    ];
    let protos = protos();
    for p in &protos {
        let mut call = RawCall::connect(&format!("ws://{}/{}/demo", worker.addr, p.route)).await.unwrap();
        for h in &p.handshake {
            call.send(h.clone()).await;
        }
        frames(&mut call, &p.silence, 10).await;
        let mut bad = bad_common.clone();
        match p.route {
            // Wrong chunk sizes: PCM with an odd number of bytes.
            "exotel" => bad.push(txt(json!({"event":"media","media":{"payload":b64(&[0u8; 321])}}))),
            "vonage" => {
                bad.retain(|m| !m.to_text().unwrap_or_default().contains("\"media\""));
                bad.push(Message::Binary(vec![0u8; 641].into()));
                // 2.02 s of 16 kHz audio: over the per-frame limit, under the 64 KiB frame cap.
                bad.push(Message::Binary(vec![0u8; 64_640].into()));
            }
            _ => bad.push(Message::Binary(vec![1, 2, 3].into())),
        }
        let n_bad = bad.len();
        for m in bad {
            assert!(call.send_raw(m).await);
        }
        // Still alive: the call goes on, then the customer leaves the protocol's way.
        frames(&mut call, &p.silence, 15).await;
        if let Some(stop) = &p.stop {
            call.send(stop.clone()).await;
        }
        let _ = call.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), call.until_closed_quiet()).await;
        let results = sim.wait_results(1, Duration::from_secs(10)).await;
        let r = results.last().expect("a result for the started call").clone();
        let _ = reqwest::Client::new().post(format!("http://{}/sim/reset", sim.addr)).send().await;
        assert_eq!(r["transport"], p.route, "{r:#}");
        assert_eq!(r["disconnected_by"], "customer", "{}: {r:#}", p.route);
        let errors = protocol_errors(&r);
        assert_eq!(errors.len(), n_bad, "{}: {errors:#?}", p.route);
        assert!(errors.iter().any(|e| e.contains("not JSON")), "{}: {errors:#?}", p.route);
        assert!(
            errors.iter().any(|e| e.contains("unknown event") || e.contains("unknown_event")),
            "{}: {errors:#?}",
            p.route
        );
        if p.route != "vonage" {
            assert!(errors.iter().any(|e| e.contains("base64")), "{}: {errors:#?}", p.route);
            assert!(errors.iter().any(|e| e.contains("must be a string")), "{}: {errors:#?}", p.route);
            assert!(errors.iter().any(|e| e.contains("must be an object")), "{}: {errors:#?}", p.route);
        }
        assert!(errors.iter().any(|e| e.contains("exceeds") || e.contains("binary")), "{}: {errors:#?}", p.route);
    }
    let log = worker.log_text();
    assert!(log.contains("ignoring bad frame"), "bad frames are logged");
    assert!(!log.contains("panicked"));
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_ends_the_call_with_a_result_on_every_protocol() {
    let (sim, worker) = setup(&[("CXBCORE_MAX_FRAME_BYTES", "16384")]).await;
    let protos = protos();
    for (i, p) in protos.iter().enumerate() {
        let mut call = RawCall::connect(&format!("ws://{}/{}/demo", worker.addr, p.route)).await.unwrap();
        for h in &p.handshake {
            call.send(h.clone()).await;
        }
        frames(&mut call, &p.silence, 10).await;
        let huge = if p.route == "vonage" {
            Message::Binary(vec![0u8; 64 * 1024].into())
        } else {
            txt(json!({"event":"media","media":{"payload": base64_zeros(64 * 1024)}}))
        };
        call.send_raw(huge).await;
        let closed = call.until_closed(Duration::from_secs(10)).await;
        assert!(closed.code.is_none() || matches!(closed.code, Some(1009) | Some(1000)), "{}: {closed:?}", p.route);
        let results = sim.wait_results(i + 1, Duration::from_secs(10)).await;
        let r =
            results.iter().find(|r| r["transport"] == p.route).unwrap_or_else(|| panic!("{}: {results:#?}", p.route));
        assert_eq!(r["disconnected_by"], "error", "{r:#}");
        assert!(r["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "protocol_error" && e["data"]["limit_bytes"] == 16384));
    }
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}
