//! Untrusted input on the dialler socket: every bad frame gets a clear error, nothing panics,
//! and once a call has started its result is delivered.

use std::time::Duration;

use cxb_e2e::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn setup(envs: &[(&str, &str)]) -> (Sim, Worker) {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), envs).await;
    (sim, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_mid_call_are_logged_and_the_call_goes_on() {
    let (sim, worker) = setup(&[]).await;
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    call.handshake("st-g").await;
    call.silence(300).await;
    for bad in [
        "not json at all".to_string(),
        json!({"event":"bogus-event"}).to_string(),
        json!({"no_event":1}).to_string(),
        json!({"event":"media","payload":"***not base64***"}).to_string(),
        json!({"event":"media","payload":"AAE="}).to_string().replace("AAE=", "AA=="),
        json!({"event":"media"}).to_string(),
    ] {
        assert!(call.send_raw(Message::Text(bad.into())).await);
    }
    assert!(call.send_raw(Message::Binary(vec![1, 2, 3].into())).await);
    // The call is still alive: the bot keeps talking and hang-up works normally.
    call.silence(500).await;
    call.send(json!({"event":"hangup-call","disconnectedBy":"customer"})).await;
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    let r = &results[0];
    assert_eq!(r["disconnected_by"], "customer");
    let errors: Vec<String> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "protocol_error")
        .map(|e| e["data"]["error"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 7, "{errors:#?}");
    assert!(errors.iter().any(|e| e.contains("not JSON")));
    assert!(errors.iter().any(|e| e.contains("unknown event")));
    assert!(errors.iter().any(|e| e.contains("base64")));
    assert!(errors.iter().any(|e| e.contains("odd number of bytes")));
    assert!(errors.iter().any(|e| e.contains("binary")));
    let log = worker.log_text();
    assert!(log.contains("ignoring bad frame") && log.contains("session_id"), "log lines carry the session id");
    assert!(!log.contains("panicked"));
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_out_of_order_is_refused_with_1008() {
    let (sim, worker) = setup(&[]).await;
    for first in
        [json!({"event":"answer"}), json!({"event":"start","streamId":"x"}), json!({"event":"media","payload":""})]
    {
        let mut call = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
        call.send(first.clone()).await;
        let closed = call.until_closed(Duration::from_secs(5)).await;
        assert_eq!(closed.code, Some(1008), "{first}: {closed:?}");
        assert!(closed.reason.contains("handshake"), "{closed:?}");
    }
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    call.send_raw(Message::Text("{{{".into())).await;
    let closed = call.until_closed(Duration::from_secs(5)).await;
    assert_eq!(closed.code, Some(1008));
    assert!(closed.reason.contains("not JSON"), "{closed:?}");
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
    assert!(
        sim.get("/sim/config-requests").await.as_array().unwrap().is_empty(),
        "nothing fetched for a bad handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_before_answer_starts_the_call_as_the_protocol_allows() {
    let (sim, worker) = setup(&[]).await;
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    call.send(json!({"event":"connected","callerId":"+91","streamId":"st-m"})).await;
    call.send(json!({"event":"start","streamId":"st-m"})).await;
    call.silence(400).await;
    assert!(call.wait_event("reverse-media", Duration::from_secs(5)).await.is_some(), "the bot greets");
    call.send(json!({"event":"hangup-call"})).await;
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    assert_eq!(results[0]["disconnected_by"], "customer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_with_1009_and_still_delivers_a_result() {
    let (sim, worker) = setup(&[("CXBCORE_MAX_FRAME_BYTES", "16384")]).await;
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    call.handshake("st-big").await;
    call.silence(200).await;
    let huge = json!({"event":"media","payload": base64_zeros(64 * 1024)}).to_string();
    call.send_raw(Message::Text(huge.into())).await;
    let closed = call.until_closed(Duration::from_secs(5)).await;
    assert!(closed.code.is_none() || closed.code == Some(1009) || closed.code == Some(1000), "{closed:?}");
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    let r = &results[0];
    assert_eq!(r["disconnected_by"], "error", "{r:#}");
    assert!(r["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "protocol_error" && e["data"]["limit_bytes"] == 16384));
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_handshake_frame_is_refused() {
    let (_sim, worker) = setup(&[("CXBCORE_MAX_FRAME_BYTES", "4096")]).await;
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    let big = json!({"event":"connected","callerId":"x".repeat(10_000)}).to_string();
    call.send_raw(Message::Text(big.into())).await;
    let closed = call.until_closed(Duration::from_secs(5)).await;
    assert!(closed.code.is_none() || closed.code == Some(1009), "{closed:?}");
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_then_a_vanished_client_still_delivers_a_result_and_frees_the_slot() {
    let (sim, worker) = setup(&[("CXBCORE_INBOUND_IDLE_TIMEOUT_MS", "1500")]).await;
    // 1) The socket is dropped without a close frame.
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    call.handshake("st-v1").await;
    call.silence(600).await;
    drop(call);
    // 2) The client stays connected but goes silent (a half-open peer).
    let mut call2 = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    call2.handshake("st-v2").await;
    call2.silence(300).await;
    let results = sim.wait_results(2, Duration::from_secs(15)).await;
    assert_eq!(results.len(), 2, "{}", worker.log_text());
    for r in &results {
        assert_eq!(r["disconnected_by"], "customer");
    }
    let vanished = results.iter().find(|r| r["stream_id"] == "st-v2").unwrap();
    assert!(vanished["events"].as_array().unwrap().iter().any(|e| e["type"] == "caller_vanished"));
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
    drop(call2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_that_never_completes_times_out() {
    let (_sim, worker) = setup(&[("CXBCORE_HANDSHAKE_TIMEOUT_MS", "800")]).await;
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    call.send(json!({"event":"connected","callerId":"1","streamId":"s"})).await;
    let closed = call.until_closed(Duration::from_secs(5)).await;
    assert_eq!(closed.code, Some(1008));
    assert!(closed.reason.contains("handshake timeout"));
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}
