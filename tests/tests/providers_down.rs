//! A provider that refuses, errors or stalls ends the call cleanly with a delivered result.

use std::time::Duration;

use cxb_e2e::*;
use serde_json::Value;

async fn call_with(bot: &str, talk: bool) -> (Value, Closed, Worker, Sim) {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(
        Some(&sim),
        &[("CXBCORE_PROVIDER_CONNECT_TIMEOUT_MS", "2000"), ("CXBCORE_LLM_TIMEOUT_MS", "2000")],
    )
    .await;
    let mut call = RawCall::connect(&worker.ws_url(bot)).await.unwrap();
    call.handshake("st-p").await;
    if talk {
        // Play the first caller turn so the LLM is asked.
        call.silence(2500).await;
        call.say("assets/audio/caller-1.wav").await;
        call.silence(1000).await;
    }
    let closed = call.until_closed(Duration::from_secs(30)).await;
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    assert_eq!(results.len(), 1, "a result is delivered: {}", worker.log_text());
    (results[0].clone(), closed, worker, sim)
}

fn service_error(r: &Value) -> Value {
    r["events"].as_array().unwrap().iter().find(|e| e["type"] == "service_error").cloned().expect("service_error event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stt_down_ends_the_call_as_error_with_a_result() {
    let (r, closed, worker, _sim) = call_with("stt-down", false).await;
    assert_eq!(r["disconnected_by"], "error");
    assert_eq!(service_error(&r)["data"]["service"], "stt");
    assert_eq!(closed.events, vec!["reverse-media-stop", "reverse-hangup-call"], "bot hang-up frames: {closed:?}");
    assert!(worker.wait_idle(Duration::from_secs(5)).await, "slot released after an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_down_and_bad_voice_end_the_call_as_error() {
    for bot in ["tts-down", "bad-voice"] {
        let (r, _closed, worker, _sim) = call_with(bot, false).await;
        assert_eq!(r["disconnected_by"], "error", "{bot}");
        assert_eq!(service_error(&r)["data"]["service"], "tts", "{bot}");
        assert!(worker.wait_idle(Duration::from_secs(5)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_down_500_and_stall_end_the_call_as_error() {
    for bot in ["llm-down", "llm-500", "llm-stall"] {
        let (r, closed, worker, _sim) = call_with(bot, true).await;
        assert_eq!(r["disconnected_by"], "error", "{bot}: {r:#}");
        assert_eq!(service_error(&r)["data"]["service"], "llm", "{bot}");
        assert!(closed.events.contains(&"reverse-hangup-call".to_string()), "{bot}: {closed:?}");
        // The opening message was still spoken and recorded.
        assert_eq!(r["transcript"][0]["speaker"], "bot", "{bot}");
        assert!(worker.wait_idle(Duration::from_secs(5)).await);
    }
}
