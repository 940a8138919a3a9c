//! Calls refused before they start: config failures and capacity.

use std::time::Duration;

use cxb_e2e::*;

async fn rejected_by_config(bot: &str) -> (Closed, Worker, Sim) {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), &[("CXBCORE_CONFIG_TIMEOUT_MS", "1500")]).await;
    let mut call = RawCall::connect(&worker.ws_url(bot)).await.unwrap();
    call.handshake("st-1").await;
    let closed = call.until_closed(Duration::from_secs(10)).await;
    (closed, worker, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_404_rejects_the_call_with_a_clear_close_reason() {
    let (closed, worker, sim) = rejected_by_config("missing").await;
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert!(closed.reason.contains("unknown bot"), "{closed:?}");
    assert!(closed.events.is_empty(), "no bot audio on a rejected call: {closed:?}");
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
    assert!(worker.log_text().contains("bot_id=missing") || worker.log_text().contains("missing"), "log names the bot");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sim.results().await.is_empty(), "a rejected call has no result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_503_rejects_the_call_as_outside_hours() {
    let (closed, worker, _sim) = rejected_by_config("closed").await;
    assert_eq!(closed.code, Some(1013), "{closed:?}");
    assert!(closed.reason.contains("outside active hours"), "{closed:?}");
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_403_500_timeout_and_garbage_are_rejected() {
    for (bot, code, words) in [
        ("deny", 1008, "secret"),
        ("broken", 1011, "500"),
        ("slow-config", 1011, "timed out"),
        ("garbage-config", 1011, "invalid"),
    ] {
        let (closed, worker, _sim) = rejected_by_config(bot).await;
        assert_eq!(closed.code, Some(code), "{bot}: {closed:?}");
        assert!(closed.reason.contains(words), "{bot}: {closed:?}");
        assert!(worker.wait_idle(Duration::from_secs(5)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_the_upgrade_is_refused_with_429_and_nothing_else_happens() {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), &[("MAX_CONCURRENT_CALLS", "1")]).await;
    let mut first = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    first.handshake("st-a").await;
    assert_eq!(worker.health().await["worker_calls"], 1);
    let err = RawCall::connect(&worker.ws_url("demo")).await.err().expect("second call refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body, serde_json::json!({"status":"rejected","error":"at_capacity"}));
        }
        other => panic!("expected HTTP 429, got {other:?}"),
    }
    // Only the first call reached the config endpoint.
    let mut fetched = 0;
    for _ in 0..60 {
        fetched = sim.get("/sim/config-requests").await.as_array().unwrap().len();
        if fetched > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fetched, 1);
    assert_eq!(sim.get("/sim/config-requests").await.as_array().unwrap().len(), 1);
    let (_, metrics) = worker.get_text("/metrics").await;
    assert!(metrics.contains("cxb_calls_rejected_total{reason=\"at_capacity\"} 1"), "{metrics}");
    first.send(serde_json::json!({"event":"hangup-call","disconnectedBy":"customer"})).await;
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
    // The freed slot is usable again.
    assert!(RawCall::connect(&worker.ws_url("demo")).await.is_ok());
}
