//! Stopping the worker (SIGTERM) never costs a call its result: live calls run to their end and
//! the process leaves as soon as their results are persisted; at the drain deadline the worker
//! ends the calls itself, with a hang-up, a result and a finished recording; post-call work in
//! flight finishes before the exit and is not delivered again by the next start.

use std::time::{Duration, Instant};

use cxb_e2e::fake_livekit::FakeParticipant;
use cxb_e2e::livekit_worker::{caller_audio_16k, say, sip_participant, until_bot_spoke, LkWorker};
use cxb_e2e::*;
use serde_json::{json, Value};

async fn config_requests(sim: &Sim) -> usize {
    sim.get("/sim/config-requests").await.as_array().map_or(0, Vec::len)
}

fn has_event(result: &Value, kind: &str) -> bool {
    result["events"].as_array().is_some_and(|e| e.iter().any(|e| e["type"] == kind))
}

/// `n` calls talking (three turns each, ended by the bot); SIGTERM once they are all up.
async fn sigterm_with_live_calls(n: usize) {
    let sim = Sim::start(&[]).await;
    let max = (n * 2).to_string();
    let mut worker =
        Worker::start(Some(&sim), &[("CXBCORE_DRAIN_SECS", "300"), ("MAX_CONCURRENT_CALLS", max.as_str())]).await;
    let url = worker.ws_url("demo");
    let dialing = async {
        let summary = dial_url(&url, &sim, "assets/sim/scenario.json", n).await;
        (summary, Instant::now())
    };
    let stopping = async {
        assert!(
            poll_until(Duration::from_secs(30), || async { worker.health().await["worker_calls"] == n as u64 }).await,
            "all {n} calls up"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let configs = config_requests(&sim).await;
        let term = Instant::now();
        worker.proc.sigterm();
        assert!(
            poll_until(Duration::from_secs(1), || async {
                let h = worker.health().await;
                h["status"] == "draining" && h["total_available"] == 0
            })
            .await,
            "/health says draining within 1 s"
        );
        println!("draining visible {} ms after SIGTERM", term.elapsed().as_millis());
        assert_eq!(worker.get_text("/ready").await, (503, r#"{"status":"draining"}"#.to_string()));
        let (status, fleet) = worker.get_text("/health/fleet").await;
        assert_eq!(status, 200);
        assert!(fleet.contains(r#""fleet_available":0,"#), "{fleet}");
        // A new call is refused at the upgrade, before any side effect.
        match RawCall::connect(&worker.ws_url("demo")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 503);
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("JSON body");
                assert_eq!(body, json!({"status":"rejected","error":"draining"}));
            }
            other => panic!("a call was accepted while draining: {:?}", other.map(|_| ())),
        }
        assert_eq!(config_requests(&sim).await, configs, "no config fetched for the refused call");
        // Never `ok` again while the process lives; it leaves by itself.
        let mut polls = 0;
        while worker.proc.is_running() {
            if let Ok(r) = reqwest::get(format!("http://{}/health", worker.addr)).await {
                if let Ok(h) = r.json::<Value>().await {
                    assert_eq!(h["status"], "draining", "{h}");
                    polls += 1;
                }
            }
            assert!(term.elapsed() < Duration::from_secs(120), "the worker did not exit");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let exited = Instant::now();
        assert!(polls > 0);
        (worker.proc.wait_exit(Duration::from_secs(1)).await.expect("exited"), exited, term)
    };
    let ((summary, last_call_ended), (status, exited, term)) = tokio::join!(dialing, stopping);
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(summary["failed"], 0, "no call was cut: {summary:#}");
    assert_eq!(summary["completed"], n as u64);
    let exit_after_last_call = exited.saturating_duration_since(last_call_ended);
    println!(
        "{n} calls: SIGTERM → last call ended {:.1} s, → exit {:.1} s; exit {} ms after the last call's end",
        last_call_ended.duration_since(term).as_secs_f64(),
        exited.duration_since(term).as_secs_f64(),
        exit_after_last_call.as_millis()
    );
    assert!(exit_after_last_call < Duration::from_secs(5), "exits as soon as the results are persisted");
    let results = sim.wait_results(n, Duration::from_secs(5)).await;
    assert_eq!(results.len(), n, "every call's result");
    for r in &results {
        assert_ne!(r["disconnected_by"], "error", "{r:#}");
        assert!(!has_event(r, "worker_shutdown"), "{r:#}");
    }
    assert!(files_ending(&worker.data_path.join("journal"), ".jsonl").is_empty(), "no journal left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_ten_live_calls_end_then_exits() {
    sigterm_with_live_calls(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "100 concurrent calls: run alone (`cargo test -p cxb-e2e --test drain -- --ignored`)"]
async fn sigterm_lets_a_hundred_live_calls_end_then_exits() {
    sigterm_with_live_calls(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_drain_deadline_every_live_call_is_hung_up_with_a_result_and_a_recording() {
    const CALLS: usize = 5;
    let sim = Sim::start(&[]).await;
    let mut worker = Worker::start(Some(&sim), &[("CXBCORE_DRAIN_SECS", "2")]).await;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let url = worker.ws_url("demo");
            tokio::spawn(async move {
                let mut call = RawCall::connect(&url).await.expect("connect");
                call.handshake(&format!("deadline-{i}")).await;
                let closed = call.talk_until_closed(Duration::from_secs(60)).await;
                (closed, Instant::now())
            })
        })
        .collect();
    assert!(
        poll_until(Duration::from_secs(20), || async { worker.health().await["worker_calls"] == CALLS as u64 }).await,
        "calls up"
    );
    // Mid-greeting or just after: either way the calls are live and would go on for minutes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let term = Instant::now();
    worker.proc.sigterm();
    let status = worker.proc.wait_exit(Duration::from_secs(40)).await.expect("the worker exits after the deadline");
    let exited = term.elapsed();
    assert!(status.success(), "{status:?}");
    for c in calls {
        let (closed, at) = c.await.expect("call task");
        let hung_up = at.duration_since(term);
        assert!(hung_up >= Duration::from_millis(1500), "hung up only at the deadline, not {hung_up:?} after SIGTERM");
        let tail: Vec<&str> = closed
            .events
            .iter()
            .map(String::as_str)
            .filter(|e| e.starts_with("reverse-") && *e != "reverse-media")
            .collect();
        assert_eq!(tail.last_chunk::<2>(), Some(&["reverse-media-stop", "reverse-hangup-call"]), "{closed:?}");
    }
    println!("drain deadline 2 s: the worker exited {} ms after SIGTERM", exited.as_millis());
    let results = sim.wait_results(CALLS, Duration::from_secs(5)).await;
    assert_eq!(results.len(), CALLS);
    for r in &results {
        assert_eq!(r["disconnected_by"], "error", "{r:#}");
        assert!(has_event(r, "worker_shutdown"), "{r:#}");
        let key = r["recording_key"].as_str().expect("a recording");
        let secs = assert_valid_wav(&worker.data_path.join(key));
        assert!(secs > 3.0, "the recording covers the call ({secs} s)");
    }
    assert!(files_ending(&worker.data_path.join("recordings"), ".part").is_empty(), "no .part left");
    assert!(files_ending(&worker.data_path.join("journal"), ".jsonl").is_empty(), "no journal left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_post_call_waits_for_it_and_the_next_start_delivers_nothing_twice() {
    let (sim, _script) = sim_with_script(|s| {
        s["bots"] = json!({"demo": {"post_call_analysis_prompt": "Summarise the call as JSON with a key summary."}});
    })
    .await;
    let data = tempfile::tempdir().unwrap();
    let envs = [("CXBCORE_DRAIN_SECS", "60")];
    let mut worker = Worker::start_at(Some(&sim), &envs, data.path()).await;
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.expect("connect");
    call.handshake("postcall-stop").await;
    call.silence(4000).await;
    assert!(call.say("assets/audio/caller-1.wav").await);
    call.silence(3000).await;
    // Post-call's LLM request now takes 3 s: the stop lands in the middle of it.
    sim.control(json!({"llm_ttft_ms": 3000})).await;
    call.send(json!({"event":"hangup-call"})).await;
    call.until_closed_quiet().await;
    assert!(poll_until(Duration::from_secs(5), || async { worker.health().await["worker_calls"] == 0 }).await);
    worker.proc.sigterm();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(worker.proc.is_running(), "the worker waits for the post-call work");
    let status = worker.proc.wait_exit(Duration::from_secs(30)).await.expect("exits once post-call is done");
    assert!(status.success());
    let results = sim.wait_results(1, Duration::from_secs(5)).await;
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert!(r.get("pipeline_config").is_some(), "post-call ran before the exit: {r:#}");
    assert!(!has_event(r, "post_call_interrupted") && !has_event(r, "post_call_skipped"), "{r:#}");
    sim.control(json!({"llm_ttft_ms": 0})).await;
    // The next start finds nothing to deliver again.
    let worker = Worker::start_at(Some(&sim), &envs, data.path()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.results().await.len(), 1, "delivered once");
    assert_eq!(worker.admin("/admin/outbox/stats").await["pending"], 0);
    assert!(files_ending(&data.path().join("results/staging"), ".json").is_empty());
    assert!(files_ending(&data.path().join("journal"), ".jsonl").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_refuses_every_livekit_route_with_503_before_any_side_effect() {
    let sim = Sim::start(&[]).await;
    let mut w = LkWorker::start(Some(&sim), |_| {}).await;
    // One live inbound call keeps the draining worker up.
    let sip = "sip_+919812345678";
    w.lk.set_participants(
        "live-room",
        vec![FakeParticipant { identity: sip.into(), kind: 3, attributes: Default::default() }],
    );
    let live = json!({"room_name": "live-room", "caller_number": "+919812345678", "dialed_number": "+918000000001"});
    let (status, body) = w.post("/livekit/dispatch", live).await;
    assert_eq!(status, 200, "{body}");
    let room = w.room().await;
    room.participant_joined(sip_participant(sip, &[])).await.unwrap();
    assert!(until_bot_spoke(&room, sip, 16_000, Duration::from_secs(10)).await, "no greeting");

    w.begin_stop();
    assert!(poll_until(Duration::from_secs(1), || async { w.health().await["status"] == "draining" }).await);
    let (lookups, configs) = (sim.get("/sim/sip-lookups").await, config_requests(&sim).await);
    let lk_calls = w.lk.calls().len();
    let refused = json!({"status": "rejected", "error": "draining"});
    for (route, body) in [
        ("/livekit/dispatch", json!({"room_name": "new-room", "caller_number": "+1", "dialed_number": "+2"})),
        ("/livekit/dialout", json!({"bot_id": "demo", "to_number": "+919812345678"})),
        ("/attach", json!({"room_name": "camp-1", "bot_id": "demo", "to_number": "+1"})),
        ("/livekit/widget", json!({"room_name": "widget-x", "bot_id": "demo"})),
    ] {
        assert_eq!(w.post(route, body).await, (503, refused.clone()), "{route}");
    }
    assert_eq!(w.lk.calls().len(), lk_calls, "nothing reached LiveKit (no participant removed, no room made)");
    assert_eq!(sim.get("/sim/sip-lookups").await, lookups, "no SIP lookup");
    assert_eq!(config_requests(&sim).await, configs, "no config fetched");
    assert_eq!(w.rooms.connect_count(), 1, "no room joined");

    // The live call goes on to its natural end and delivers its result.
    say(&room, sip, &caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav")), 600).await;
    assert!(until_bot_spoke(&room, sip, 16_000, Duration::from_secs(10)).await, "the live call is still answered");
    room.participant_left(sip, Some("CLIENT_INITIATED")).await.unwrap();
    let results = sim.wait_results(1, Duration::from_secs(20)).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["disconnected_by"], "customer");
}
