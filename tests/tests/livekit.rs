//! LiveKit calls end to end, on machines without a LiveKit server: the worker runs in this
//! process (`cxb_core::serve_with`) with an in-memory room connector (`FakeConnector`) in place
//! of the FFI engine, its LiveKit server API pointed at a loopback fake Twirp server, and
//! cxb-sim (a real process) as providers and CXB API.
//!
//! The caller is played by the test: it joins the fake room as a SIP (or browser) participant,
//! streams the scripted caller WAVs at 16 kHz in real time and reads what the bot published.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cxb_e2e::fake_livekit::{DialBehaviour, FakeParticipant, TransferBehaviour};
use cxb_e2e::livekit_worker::{caller_audio_16k, person, say, sip_participant, until_bot_spoke, LkWorker};
use cxb_e2e::{assert_valid_result, repo_root, sim_with_script, Sim, SECRET};
use serde_json::{json, Value};

const SIP_KIND: i32 = 3;

async fn one_result(sim: &Sim) -> Value {
    let results = sim.wait_results(1, Duration::from_secs(20)).await;
    assert_eq!(results.len(), 1, "exactly one result");
    assert_valid_result(&results[0]);
    results[0].clone()
}

fn events<'a>(r: &'a Value, kind: &str) -> Vec<&'a Value> {
    r["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["type"] == kind || e["kind"] == kind).collect())
        .unwrap_or_default()
}

fn lines(r: &Value, speaker: &str) -> Vec<String> {
    r["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["speaker"] == speaker)
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

async fn sim_with(bot: &str, overrides: Value, rules: Option<Value>) -> (Sim, tempfile::TempDir) {
    sim_with_script(|script| {
        if let Some(r) = rules {
            script["rules"] = r;
        }
        script["bots"] = json!({ bot: overrides });
    })
    .await
}

// ----- /livekit/dispatch -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_runs_the_call_in_the_room_until_the_caller_leaves() {
    let sim = Sim::start(&[]).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let mut headers = BTreeMap::new();
    headers.insert("sip.h.X-Campaign".to_string(), "spring".to_string());
    headers.insert("sip.callStatus".to_string(), "active".to_string());
    w.lk.set_participants(
        "call-in-1",
        vec![FakeParticipant { identity: "sip_+919812345678".into(), kind: SIP_KIND, attributes: headers }],
    );
    let (status, body) = w
        .post(
            "/livekit/dispatch",
            json!({"room_name": "call-in-1", "caller_number": "+919812345678", "dialed_number": "+918000000001", "call_id": "lk-call-1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "accepted", "call_id": "lk-call-1"}));

    let room = w.room().await;
    let req = room.request().clone();
    assert_eq!((req.room_name.as_str(), req.sample_rate, req.num_channels), ("call-in-1", 16_000, 1));
    room.participant_joined(sip_participant("sip_+919812345678", &[("X-Campaign", "spring")])).await.unwrap();
    // The greeting is published at 16 kHz.
    assert!(until_bot_spoke(&room, "sip_+919812345678", 16_000, Duration::from_secs(10)).await, "no greeting");
    // One caller turn, answered.
    say(&room, "sip_+919812345678", &caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav")), 600).await;
    assert!(until_bot_spoke(&room, "sip_+919812345678", 16_000, Duration::from_secs(10)).await, "no answer");
    room.participant_left("sip_+919812345678", Some("CLIENT_INITIATED")).await.unwrap();

    let r = one_result(&sim).await;
    assert_eq!(r["disconnected_by"], "customer");
    assert_eq!(r["transport"], "livekit_inbound");
    assert_eq!(r["caller_id"], "+919812345678");
    assert_eq!(r["connected_event"]["sip_candidate_headers"]["X-Campaign"], "spring");
    assert_eq!(r["connected_event"]["dialed_number"], "+918000000001");
    assert_eq!(lines(&r, "customer"), vec!["I want to check my order status".to_string()]);
    assert!(lines(&r, "bot").len() >= 2, "greeting and answer: {r}");
    assert!(room.wait_disconnected(Duration::from_secs(5)).await, "the bot left the room");
    assert!(w.wait_idle(Duration::from_secs(5)).await);
    // The config fetch carried the SIP lookup's bot and the enriched connected event.
    let reqs = sim.get("/sim/config-requests").await;
    assert_eq!(reqs[0]["bot_id"], "demo", "{reqs}");
    let ev = &reqs[0]["query"]["connected_event"];
    assert_eq!(ev["sip_candidate_headers"]["X-Campaign"], "spring", "{reqs}");
    assert_eq!(ev["caller_number"], "+919812345678");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_checks_secret_body_and_configuration() {
    let sim = Sim::start(&[]).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let good = json!({"room_name": "call-x", "caller_number": "+1", "dialed_number": "+2"});
    let (s, b) = w.post_with("/livekit/dispatch", good.clone(), None).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("forbidden")));
    let (s, _) = w.post_with("/livekit/dispatch", good.clone(), Some("wrong")).await;
    assert_eq!(s, 403);
    let (s, b) = w.post("/livekit/dispatch", json!({"room_name": "call-x", "caller_number": "+1"})).await;
    assert_eq!(s, 422);
    assert!(b["detail"].as_str().unwrap().contains("dialed_number"), "{b}");
    let (s, b) =
        w.post("/livekit/dispatch", json!({"room_name": "../etc", "caller_number": "+1", "dialed_number": "+2"})).await;
    assert_eq!(s, 422, "{b}");
    let resp = w
        .http
        .post(format!("{}/livekit/dispatch", w.base))
        .header("X-CXBCore-Secret", SECRET)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    assert!(w.lk.calls().is_empty(), "nothing reached LiveKit");

    // Without LIVEKIT_URL: 503, nothing else happens.
    let bare = LkWorker::start(Some(&sim), |s| s.livekit.livekit_url = None).await;
    let (s, b) = bare.post("/livekit/dispatch", good).await;
    assert_eq!((s, b["error"].as_str()), (503, Some("livekit_not_configured")));
    assert_eq!(bare.health().await["worker_calls"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_at_capacity_removes_the_sip_participant_before_answering_429() {
    let sim = Sim::start(&[]).await;
    let w = LkWorker::start(Some(&sim), |s| s.max_concurrent_calls = 0).await;
    w.lk.set_participants(
        "call-full",
        vec![FakeParticipant { identity: "sip_caller".into(), kind: SIP_KIND, attributes: BTreeMap::new() }],
    );
    let (s, b) = w
        .post("/livekit/dispatch", json!({"room_name": "call-full", "caller_number": "+1", "dialed_number": "+2"}))
        .await;
    assert_eq!(s, 429);
    assert_eq!(b, json!({"status": "rejected", "error": "at_capacity"}));
    let removed = w.lk.calls_to("RemoveParticipant");
    assert_eq!(removed.len(), 1, "removed before the answer");
    assert!(removed[0].authorized);
    assert_eq!(removed[0].body["identity"], "sip_caller");
    assert_eq!(removed[0].body["room"], "call-full");
    assert!(sim.get("/sim/sip-lookups").await.as_array().unwrap().is_empty(), "no lookup at capacity");
    assert_eq!(w.rooms.connect_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_for_an_unmapped_number_removes_the_participant_and_releases_the_slot() {
    let (sim, _dir) = sim_with_script(|script| script["sip_numbers"] = json!({"+918000000404": null})).await;
    let w = LkWorker::start(Some(&sim), |s| s.max_concurrent_calls = 1).await;
    w.lk.set_participants(
        "call-404",
        vec![FakeParticipant { identity: "sip_caller".into(), kind: SIP_KIND, attributes: BTreeMap::new() }],
    );
    let (s, b) = w
        .post(
            "/livekit/dispatch",
            json!({"room_name": "call-404", "caller_number": "+1", "dialed_number": "+918000000404"}),
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (404, Some("no_bot_for_number")), "{b}");
    assert_eq!(w.lk.calls_to("RemoveParticipant").len(), 1);
    assert_eq!(w.health().await["worker_calls"], 0, "slot released");
    let lookups = sim.get("/sim/sip-lookups").await;
    assert_eq!(lookups[0]["number"], "+918000000404", "{lookups}");
    // The one slot is free again: the next call is accepted.
    let (s, _) = w
        .post("/livekit/dispatch", json!({"room_name": "call-ok", "caller_number": "+1", "dialed_number": "+2"}))
        .await;
    assert_eq!(s, 200);
}

// ----- /livekit/dialout -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialout_holds_the_greeting_until_the_callee_answers() {
    let sim = Sim::start(&[]).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    w.lk.set_dial(DialBehaviour::Answer { after: Duration::from_millis(1500) });
    let (s, b) = w
        .post(
            "/livekit/dialout",
            json!({"bot_id": "demo", "to_number": "919812345678", "connected_event": {"customer_name": "Asha"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let call_id = b["call_id"].as_str().unwrap().to_string();
    assert_eq!(b["room_name"], format!("dialout-{call_id}"));
    // The pipeline joins first...
    let room = w.room().await;
    assert_eq!(room.request().room_name, format!("dialout-{call_id}"));
    let dial = w.lk.wait_for_call("CreateSIPParticipant", Duration::from_secs(5)).await.expect("dialled");
    assert!(dial.authorized);
    assert_eq!(dial.body["sip_call_to"], "+919812345678", "normalised: {}", dial.body);
    assert_eq!(dial.body["sip_trunk_id"], "ST_sim");
    assert_eq!(dial.body["wait_until_answered"], true);
    assert_eq!(dial.body["participant_identity"], "sip-+919812345678");
    // ...and says nothing while it rings.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(room.captured_sample_count(), 0, "no greeting before the answer");
    room.participant_joined(sip_participant("sip-+919812345678", &[])).await.unwrap();
    assert!(
        until_bot_spoke(&room, "sip-+919812345678", 16_000, Duration::from_secs(10)).await,
        "greeting after answer"
    );
    room.participant_left("sip-+919812345678", None).await.unwrap();
    let r = one_result(&sim).await;
    assert_eq!(r["disconnected_by"], "customer");
    assert_eq!(r["transport"], "livekit_outbound");
    assert_eq!(r["connected_event"]["customer_name"], "Asha");
    assert_eq!(events(&r, "call_answered").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialout_sip_failures_become_the_documented_outcomes() {
    let sim = Sim::start(&[]).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let cases = [(486, "rejected"), (603, "rejected"), (408, "no_answer"), (480, "no_answer"), (500, "error")];
    for (i, (status, expected)) in cases.iter().enumerate() {
        w.lk.set_dial(DialBehaviour::SipError { status: *status, after: Duration::from_millis(100) });
        let (s, b) = w.post("/livekit/dialout", json!({"bot_id": "demo", "to_number": "+919812345678"})).await;
        assert_eq!(s, 200, "{b}");
        let room = w.room().await;
        let results = sim.wait_results(i + 1, Duration::from_secs(15)).await;
        assert_eq!(results.len(), i + 1, "a result for SIP {status}");
        let r = results.iter().find(|r| r["connected_event"]["call_id"] == b["call_id"]).expect("this call's result");
        assert_eq!(r["disconnected_by"], *expected, "SIP {status}");
        assert_eq!(events(r, "call_not_answered").len(), 1);
        assert_eq!(r["call_duration_seconds"].as_f64(), Some(0.0), "ringing is not call time");
        assert_eq!(room.captured_sample_count(), 0, "nothing was said to nobody");
        assert!(room.wait_disconnected(Duration::from_secs(5)).await);
    }
    assert!(w.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialout_whose_pipeline_dies_early_fails_without_ringing() {
    let (sim, _dir) = sim_with("demo", json!({"tts": {"base_url": "ws://127.0.0.1:9"}}), None).await;
    // The alive check is a wall-clock wait: the harness's 300 ms is shorter than the provider
    // connect failure takes on a loaded 2-core machine (it rang in 1 of 3 runs there). The
    // pipeline's death ends the check early, so a long one costs nothing here.
    let w = LkWorker::start(Some(&sim), |s| s.livekit.dialout_alive_check_ms = 10_000).await;
    let (s, _) = w.post("/livekit/dialout", json!({"bot_id": "demo", "to_number": "+919812345678"})).await;
    assert_eq!(s, 200);
    let r = one_result(&sim).await;
    assert_eq!(r["disconnected_by"], "error");
    assert!(!events(&r, "service_error").is_empty(), "{r}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(w.lk.calls_to("CreateSIPParticipant").is_empty(), "never rang the callee");
    assert!(w.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialout_validates_the_number_and_needs_a_trunk() {
    let (sim, _dir) = sim_with_script(|script| script["outbound_trunks"] = json!({"+918000000999": null})).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let (s, b) = w.post("/livekit/dialout", json!({"bot_id": "demo", "to_number": "call me maybe"})).await;
    assert_eq!(s, 422, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("to_number"));
    let (s, _) = w.post("/livekit/dialout", json!({"bot_id": "../x", "to_number": "+919812345678"})).await;
    assert_eq!(s, 422);
    let (s, b) = w
        .post(
            "/livekit/dialout",
            json!({"bot_id": "demo", "to_number": "+919812345678", "from_number": "+918000000999"}),
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (404, Some("no_outbound_trunk")), "{b}");
    assert_eq!(w.health().await["worker_calls"], 0);
    assert_eq!(w.rooms.connect_count(), 0);
}

// ----- /attach and /livekit/widget -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_speaks_at_once_to_the_callee_and_ignores_other_participants() {
    let sim = Sim::start(&[]).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let (s, b) = w
        .post(
            "/attach",
            json!({"room_name": "camp-77", "bot_id": "demo", "to_number": "+919800000077", "campaign_call_id": "cc-77",
                   "connected_event": {"callback_reason": "asked to call back"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["room_name"], "camp-77");
    let room = w.room().await;
    // The greeting starts without waiting for anyone.
    assert!(room.wait_for_samples(8_000, Duration::from_secs(10)).await, "greeting at once");
    room.participant_joined(sip_participant("sip-+919800000077", &[])).await.unwrap();
    room.participant_joined(person("supervisor-1")).await.unwrap();
    // Someone else talking is not the caller: no user turn.
    say(&room, "supervisor-1", &caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav")), 800).await;
    room.participant_left("supervisor-1", None).await.unwrap();
    room.participant_left("sip-+919800000077", None).await.unwrap();
    let r = one_result(&sim).await;
    assert_eq!(r["transport"], "attach");
    assert_eq!(r["disconnected_by"], "customer");
    assert_eq!(r["stream_id"], "cc-77");
    assert!(lines(&r, "customer").is_empty(), "the supervisor's speech was not the caller's: {r}");
    assert_eq!(r["connected_event"]["callback_reason"], "asked to call back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_and_widget_without_config_post_a_minimal_error_result() {
    let sim = Sim::start(&[]).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let (s, _) = w.post("/attach", json!({"room_name": "camp-1", "bot_id": "missing", "to_number": "+1"})).await;
    assert_eq!(s, 200);
    let (s, b) = w.post("/livekit/widget", json!({"room_name": "widget-x", "bot_id": "missing"})).await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "accepted");
    let results = sim.wait_results(2, Duration::from_secs(10)).await;
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(r["disconnected_by"], "error", "{r}");
        assert_eq!(r["call_duration_seconds"].as_f64(), Some(0.0));
    }
    assert_eq!(w.rooms.connect_count(), 0, "no room joined without a config");
    assert!(w.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_joins_talks_to_the_browser_user_and_offers_no_transfer() {
    let overrides = json!({"transfer_targets": [
        {"label": "Desk", "method": "agent_desk", "type": "agent_queue", "value": "support", "is_default": true, "enabled": true}
    ]});
    let (sim, _dir) = sim_with("demo", overrides, None).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let (s, b) = w.post("/livekit/widget", json!({"room_name": "widget-demo-abc", "bot_id": "demo"})).await;
    assert_eq!(s, 200, "{b}");
    let room = w.room().await;
    room.participant_joined(person("browser-user-1")).await.unwrap();
    assert!(until_bot_spoke(&room, "browser-user-1", 16_000, Duration::from_secs(10)).await);
    say(&room, "browser-user-1", &caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav")), 600).await;
    assert!(until_bot_spoke(&room, "browser-user-1", 8_000, Duration::from_secs(10)).await);
    room.participant_left("browser-user-1", None).await.unwrap();
    let r = one_result(&sim).await;
    assert_eq!((r["transport"].as_str(), r["disconnected_by"].as_str()), (Some("widget"), Some("customer")));
    assert_eq!(r["caller_id"], "widget-user");
    let reqs = sim.get("/sim/llm-requests").await;
    let tools: Vec<String> = reqs[0]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["function"]["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    assert!(!tools.iter().any(|t| t == "transfer_call"), "no transfer on the widget: {tools:?}");
}

// ----- barge-in, transfer, Agent Desk -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_clears_the_rooms_audio_source() {
    let sim = Sim::start(&[]).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let (s, _) = w.post("/attach", json!({"room_name": "camp-b", "bot_id": "demo", "to_number": "+15550001"})).await;
    assert_eq!(s, 200);
    let room = w.room().await;
    room.participant_joined(sip_participant("sip-+15550001", &[])).await.unwrap();
    assert!(until_bot_spoke(&room, "sip-+15550001", 16_000, Duration::from_secs(10)).await);
    say(&room, "sip-+15550001", &caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav")), 400).await;
    // The long answer starts; the caller talks over it.
    assert!(until_bot_spoke(&room, "sip-+15550001", 8_000, Duration::from_secs(10)).await);
    say(&room, "sip-+15550001", &caller_audio_16k(&repo_root().join("assets/audio/caller-2.wav")), 400).await;
    assert!(room.wait_for_clears(1, Duration::from_secs(5)).await, "barge-in cleared the source");
    room.participant_left("sip-+15550001", None).await.unwrap();
    let r = one_result(&sim).await;
    assert!(r["transcript"].as_array().unwrap().iter().any(|l| l["interrupted"] == true), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_call_sends_a_sip_refer_for_the_callers_leg() {
    let overrides = json!({"transfer_targets": [
        {"label": "Sales", "method": "livekit_sip_refer", "type": "phone_number", "value": "09876543210", "is_default": true, "enabled": true}
    ], "pre_transfer_message": "Transferring you now."});
    let rules = json!([{"when_user_says": "order status", "reply": {"text": "", "tool_calls": [
        {"name": "transfer_call", "arguments": {"reason": "wants sales"}}]}}]);
    let (sim, _dir) = sim_with("demo", overrides, Some(rules)).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let (s, _) = w.post("/attach", json!({"room_name": "camp-t", "bot_id": "demo", "to_number": "+15550002"})).await;
    assert_eq!(s, 200);
    let room = w.room().await;
    room.participant_joined(sip_participant("sip-+15550002", &[])).await.unwrap();
    assert!(until_bot_spoke(&room, "sip-+15550002", 16_000, Duration::from_secs(10)).await);
    say(&room, "sip-+15550002", &caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav")), 600).await;
    let refer = w.lk.wait_for_call("TransferSIPParticipant", Duration::from_secs(15)).await.expect("REFER sent");
    assert!(refer.authorized);
    assert_eq!(refer.body["participant_identity"], "sip-+15550002");
    assert_eq!(refer.body["transfer_to"], "tel:+919876543210");
    assert_eq!(refer.body["room_name"], "camp-t");
    // LiveKit answers the REFER, then moves the caller's leg away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    room.participant_left("sip-+15550002", Some("transferred")).await.unwrap();
    let r = one_result(&sim).await;
    let sent = events(&r, "transfer_sent");
    assert_eq!(sent.len(), 1, "{r}");
    assert_eq!(sent[0]["data"]["method"], "livekit_sip_refer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refer_goes_back_to_the_llm() {
    let overrides = json!({"transfer_targets": [
        {"label": "Sales", "method": "livekit_sip_refer", "type": "sip_uri", "value": "sip:sales@pbx.example", "is_default": true, "enabled": true}
    ]});
    let rules = json!([{"when_user_says": "order status", "reply": {"text": "", "tool_calls": [
        {"name": "transfer_call", "arguments": {"reason": "wants sales"}}]}}]);
    let (sim, _dir) = sim_with("demo", overrides, Some(rules)).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    w.lk.set_transfer(TransferBehaviour::SipError(486));
    let (s, _) = w.post("/attach", json!({"room_name": "camp-f", "bot_id": "demo", "to_number": "+15550003"})).await;
    assert_eq!(s, 200);
    let room = w.room().await;
    room.participant_joined(sip_participant("sip-+15550003", &[])).await.unwrap();
    assert!(until_bot_spoke(&room, "sip-+15550003", 16_000, Duration::from_secs(10)).await);
    say(&room, "sip-+15550003", &caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav")), 600).await;
    w.lk.wait_for_call("TransferSIPParticipant", Duration::from_secs(15)).await.expect("REFER sent");
    // The LLM hears about the failure and speaks again.
    assert!(until_bot_spoke(&room, "sip-+15550003", 4_000, Duration::from_secs(10)).await);
    room.participant_left("sip-+15550003", None).await.unwrap();
    let r = one_result(&sim).await;
    let failed = events(&r, "transfer_failed");
    assert_eq!(failed.len(), 1, "{r}");
    assert!(failed[0]["data"]["error"].as_str().unwrap().contains("486"), "{r}");
    assert_eq!(r["disconnected_by"], "customer");
}

/// Records of one kind received by the fake Agent Desk, polled until `n` are there.
async fn desk_requests(sim: &Sim, request: &str, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = sim.get("/sim/agent-desk").await;
        let got: Vec<Value> =
            all.as_array().unwrap().iter().filter(|r| r["request"] == request && r["status"] == 200).cloned().collect();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_desk_handoff_holds_the_caller_until_the_agent_and_reports_everything() {
    let overrides = json!({
        "transfer_targets": [
            {"label": "Collections desk", "method": "agent_desk", "type": "agent_queue", "value": "collections", "is_default": true, "enabled": true}
        ],
        "pre_transfer_message": "Let me get a colleague.",
        // The handed-off call must outlive this.
        "max_call_duration_seconds": 10,
    });
    let rules = json!([{"when_user_says": "order status", "reply": {"text": "", "tool_calls": [
        {"name": "transfer_call", "arguments": {"reason": "wants a person"}}]}}]);
    let (sim, _dir) = sim_with("demo", overrides, Some(rules)).await;
    // The first enqueue attempt meets a 503: the outbox retries it.
    sim.control(json!({"agent_desk_enqueue_503": 1})).await;
    let w = LkWorker::start(Some(&sim), |s| {
        s.livekit.hold_message = "Please hold for an agent.".into();
        s.livekit.hold_reminder_s = 0;
    })
    .await;
    let (s, b) = w
        .post("/attach", json!({"room_name": "camp-a", "bot_id": "demo", "to_number": "+15550009", "connected_event": {"loan_id": "L-9"}}))
        .await;
    assert_eq!(s, 200, "{b}");
    let call_id = b["call_id"].as_str().unwrap().to_string();
    let room = w.room().await;
    let caller = "sip-+15550009";
    room.participant_joined(sip_participant(caller, &[])).await.unwrap();
    assert!(until_bot_spoke(&room, caller, 48_000, Duration::from_secs(10)).await, "greeting");
    let handoff_started = Instant::now();
    say(&room, caller, &caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav")), 600).await;

    // The enqueue is durable and delivered (after one 503).
    let enq = desk_requests(&sim, "enqueue", 1, Duration::from_secs(15)).await;
    if enq.is_empty() {
        let _ = room.participant_left(caller, None).await;
        let r = sim.wait_results(1, Duration::from_secs(10)).await;
        panic!("no enqueue; result: {r:?}");
    }
    let body = &enq[0]["body"];
    assert_eq!(body["call_id"], call_id.as_str());
    assert_eq!(body["room_name"], "camp-a");
    assert_eq!(body["transport"], "attach");
    assert_eq!(body["caller"]["identity"], caller);
    assert_eq!(body["target"]["value"], "collections");
    assert_eq!(body["escalation_reason"], "wants a person");
    assert_eq!(body["variables"]["loan_id"], "L-9");
    assert!(
        body["transcript"].as_array().unwrap().iter().any(|l| l["text"] == "I want to check my order status"),
        "{body}"
    );
    assert_eq!(enq[0]["secret_ok"], true);

    // On hold: the hold message, then music, keep flowing past max_call_duration.
    let hold_from = room.captured_sample_count();
    while handoff_started.elapsed() < Duration::from_secs(11) {
        say(&room, caller, &[], 200).await;
    }
    let held = room.captured_sample_count() - hold_from;
    assert!(held > 16_000 * 3, "hold audio keeps playing ({held} samples)");

    // The agent joins: hold audio stops at once.
    let clears = room.clear_buffer_count();
    room.participant_joined(person("agent-7")).await.unwrap();
    assert!(room.wait_for_clears(clears + 1, Duration::from_secs(2)).await, "hold audio cleared");
    say(&room, caller, &[], 300).await;
    let after_join = room.captured_sample_count();
    say(&room, caller, &[], 1000).await;
    assert!(room.captured_sample_count() - after_join <= 16_000 / 10, "quiet once the agent is there");
    room.audio("agent-7", vec![3000; 320]).await.unwrap();

    // The customer hangs up: the result and the Agent Desk updates follow.
    room.participant_left(caller, None).await.unwrap();
    let r = one_result(&sim).await;
    assert_eq!(r["disconnected_by"], "transfer_to_agent");
    assert!(r["call_duration_seconds"].as_f64().unwrap() > 11.0, "the call outlived max_call_duration: {r}");
    let ended = events(&r, "agent_desk_ended");
    assert_eq!(ended.len(), 1, "{r}");
    assert_eq!(ended[0]["data"]["agent_joined"], true);
    assert_eq!(ended[0]["data"]["outcome"], "customer_left");
    for request in ["events", "transcript", "recording", "customer-disconnected"] {
        let got = desk_requests(&sim, request, 1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "one {request} update");
        assert_eq!(got[0]["call_id"], call_id.as_str());
    }
    let cd = &desk_requests(&sim, "customer-disconnected", 1, Duration::from_secs(1)).await[0]["body"];
    assert_eq!(cd["agent_joined"], true);
    assert!(cd["hold_seconds"].as_f64().unwrap() > 3.0, "{cd}");
    let rec = &desk_requests(&sim, "recording", 1, Duration::from_secs(1)).await[0]["body"];
    assert_eq!(rec["recording_key"], r["recording_key"]);
    assert!(room.wait_disconnected(Duration::from_secs(5)).await);
    assert!(w.lk.calls_to("RemoveParticipant").is_empty(), "the caller left by themselves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_hang_up_removes_the_callers_sip_leg_and_leaves_the_room() {
    let rules = json!([{"when_user_says": "order status", "reply": {"text": "", "tool_calls": [
        {"name": "end_call", "arguments": {"final_message": "Goodbye!"}}]}}]);
    let (sim, _dir) = sim_with("demo", json!({}), Some(rules)).await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    let (s, _) = w.post("/attach", json!({"room_name": "camp-h", "bot_id": "demo", "to_number": "+15550004"})).await;
    assert_eq!(s, 200);
    let room = w.room().await;
    let caller = "sip-+15550004";
    w.lk.set_participants("camp-h", vec![FakeParticipant::sip(caller, "+15550004")]);
    room.participant_joined(sip_participant(caller, &[])).await.unwrap();
    assert!(until_bot_spoke(&room, caller, 48_000, Duration::from_secs(10)).await);
    say(&room, caller, &caller_audio_16k(&repo_root().join("assets/audio/caller-1.wav")), 600).await;
    let removed = w.lk.wait_for_call("RemoveParticipant", Duration::from_secs(15)).await.expect("SIP leg removed");
    assert!(removed.authorized);
    assert_eq!((removed.body["room"].as_str(), removed.body["identity"].as_str()), (Some("camp-h"), Some(caller)));
    assert!(room.wait_disconnected(Duration::from_secs(5)).await, "left the room");
    let r = one_result(&sim).await;
    assert_eq!(r["disconnected_by"], "bot");
    assert_eq!(lines(&r, "bot").last().map(String::as_str), Some("Goodbye!"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatched_call_without_config_hangs_up_the_caller() {
    let (sim, _dir) = sim_with_script(|script| {
        script["sip_numbers"] = json!({"+918000000777": {"bot_id": "closed", "carrier_id": "c1", "did_id": "d1"}})
    })
    .await;
    let w = LkWorker::start(Some(&sim), |_| {}).await;
    w.lk.set_participants("call-closed", vec![FakeParticipant::sip("sip_caller_7", "+15550007")]);
    let (s, _) = w
        .post(
            "/livekit/dispatch",
            json!({"room_name": "call-closed", "caller_number": "+15550007", "dialed_number": "+918000000777"}),
        )
        .await;
    assert_eq!(s, 200, "accepted before the config is known");
    let removed = w.lk.wait_for_call("RemoveParticipant", Duration::from_secs(10)).await.expect("caller removed");
    assert_eq!(removed.body["identity"], "sip_caller_7");
    let r = one_result(&sim).await;
    assert_eq!(r["disconnected_by"], "outside_hours");
    assert_eq!(r["transport"], "livekit_inbound");
    assert_eq!(w.rooms.connect_count(), 0, "no room joined");
    assert!(w.wait_idle(Duration::from_secs(5)).await);
}
