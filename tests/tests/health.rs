//! /health, /health/fleet and /metrics: exact field names and compact formatting.

use cxb_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_bodies_match_the_contract_byte_for_byte() {
    let worker =
        Worker::start(None, &[("MAX_CONCURRENT_CALLS", "12"), ("CXBCORE_WORKERS", "1"), ("CXBCORE_WORKER_ID", "3")])
            .await;
    let (status, body) = worker.get_text("/health").await;
    assert_eq!(status, 200);
    let pid = worker.health().await["worker_pid"].as_u64().unwrap();
    assert_eq!(
        body,
        format!(
            r#"{{"status":"ok","worker_calls":0,"worker_max":12,"total_capacity":12,"total_available":12,"workers":1,"worker_id":"3","worker_pid":{pid}}}"#
        )
    );
    let (status, fleet) = worker.get_text("/health/fleet").await;
    assert_eq!(status, 200);
    assert_eq!(
        fleet,
        format!(
            r#"{{"status":"ok","fleet_calls":0,"fleet_max":12,"fleet_available":12,"workers":[{{"id":"3","calls":0,"max":12,"pid":{pid}}}]}}"#
        )
    );
    // The HAProxy check pattern `"fleet_available":([1-9]|1[0-6])[,}]` matches.
    assert!(fleet.contains(r#""fleet_available":12,"#));
    let (status, metrics) = worker.get_text("/metrics").await;
    assert_eq!(status, 200);
    for name in ["cxb_active_calls", "cxb_call_slots"] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_aggregates_peers_marks_unreachable_ones_and_can_cap_at_16() {
    let peer = Worker::start(None, &[("MAX_CONCURRENT_CALLS", "40"), ("CXBCORE_WORKER_ID", "2")]).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let peers = format!("http://{},{}", peer.addr, dead);
    let worker = Worker::start(
        None,
        &[
            ("MAX_CONCURRENT_CALLS", "10"),
            ("CXBCORE_WORKER_ID", "1"),
            ("CXBCORE_FLEET_PEERS", &peers),
            ("CXBCORE_HEALTH_CAP16", "true"),
        ],
    )
    .await;
    let (_, fleet) = worker.get_text("/health/fleet").await;
    let v: serde_json::Value = serde_json::from_str(&fleet).unwrap();
    assert_eq!(v["fleet_max"], 50);
    assert_eq!(v["fleet_calls"], 0);
    assert_eq!(v["fleet_available"], 16, "capped for the documented HAProxy pattern");
    assert_eq!(v["workers"][1]["id"], "2");
    assert_eq!(v["workers"][2], serde_json::json!({"id":"peer-2","status":"unreachable"}));
}
