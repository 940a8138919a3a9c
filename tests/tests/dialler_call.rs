//! Complete calls over the dialler WebSocket against the real binary and the provider doubles.

use std::time::Duration;

use cxb_e2e::*;
use serde_json::Value;

fn by_speaker<'a>(result: &'a Value, speaker: &str) -> Vec<&'a Value> {
    result["transcript"].as_array().unwrap().iter().filter(|l| l["speaker"] == speaker).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_turn_call_with_barge_in_and_end_call() {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let summary = dial(&worker, &sim, "demo", "assets/sim/scenario.json", 1).await;
    assert_eq!(summary["completed"], 1, "{summary:#}\n{}", worker.log_text());
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["protocol_violations"], 0, "{summary:#}");
    assert_eq!(summary["bot_hangups"], 1);
    assert_eq!(summary["media_stops"], 1, "one reverse-media-stop for the barge-in: {summary:#}");
    assert!(summary["media_stops_total"].as_u64().unwrap() >= 2, "barge-in stop and hang-up stop: {summary:#}");

    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    assert_eq!(results.len(), 1, "exactly one result: {results:#?}");
    let r = &results[0];
    assert_no_nulls(r, "$");
    assert_eq!(r["disconnected_by"], "bot");
    assert_eq!(r["transport"], "websocket");
    assert_eq!(r["bot_id"], "demo");
    assert!(r["call_duration_seconds"].as_f64().unwrap() > 5.0);
    assert_eq!(r["connected_event"]["customer_name"], "Test Caller");
    let customer = by_speaker(r, "customer");
    assert_eq!(customer.len(), 3, "{:#}", r["transcript"]);
    assert_eq!(customer[0]["text"], "I want to check my order status");
    let bot = by_speaker(r, "bot");
    assert_eq!(bot[0]["text"], "Hello! This is the CXB demo line. How can I help you today?");
    // The long order-status answer was cut by the barge-in: only the heard prefix is kept.
    let cut = bot.iter().find(|l| l["interrupted"] == true).expect("an interrupted bot line");
    let full = "Sure. Your order shipped yesterday and should arrive tomorrow before noon. I can also send you the tracking link by text message if you like. Is there anything else I can help you with today?";
    let cut_text = cut["text"].as_str().unwrap();
    assert!(!cut_text.is_empty() && cut_text.len() < full.len() && full.starts_with(cut_text), "{cut_text}");
    assert_eq!(bot.last().unwrap()["text"], "Thank you for calling. Goodbye!");
    assert_goodbye_heard(&summary, r);
    let kinds: Vec<&str> = r["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"interruption") && kinds.contains(&"tool_call"), "{kinds:?}");
    assert_eq!(r["latency_samples"].as_array().unwrap().len(), 3);
    assert!(r["latency"]["total_avg_response_ms"].as_f64().unwrap() > 0.0);
    assert!(worker.wait_idle(Duration::from_secs(5)).await, "slot released after a normal end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_hangup_is_recorded_as_customer() {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let summary = dial(&worker, &sim, "demo", "assets/sim/scenario-hangup.json", 1).await;
    assert_eq!(summary["completed"], 1, "{summary:#}");
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    assert_eq!(results[0]["disconnected_by"], "customer");
    assert!(worker.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_fetch_sends_the_documented_query_and_both_secret_headers() {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let mut call = RawCall::connect(&worker.ws_url("demo")).await.unwrap();
    call.send(serde_json::json!({"event":"connected","callerId":"+9198","did":"+9111","callDirection":"outgoing","streamId":"st-q","crm_id":"C42"})).await;
    call.send(serde_json::json!({"event":"start","streamId":"st-q","mediaFormat":{"encoding":"LINEAR","sampleRate":8000,"channels":1}})).await;
    call.send(serde_json::json!({"event":"answer"})).await;
    call.silence(600).await;
    call.send(serde_json::json!({"event":"hangup-call","disconnectedBy":"customer"})).await;
    let reqs = sim.get("/sim/config-requests").await;
    let req = &reqs.as_array().unwrap()[0];
    let text = req.to_string();
    assert!(text.contains("st-q") && text.contains("+9198") && text.contains("C42"), "{req:#}");
    assert!(text.contains("X-CXBCore-Secret") || text.contains("x-cxbcore-secret"), "{req:#}");
    assert!(text.contains("X-CXB-Core-Secret") || text.contains("x-cxb-core-secret"), "{req:#}");
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    let r = &results[0];
    assert_eq!(r["disconnected_by"], "customer");
    assert_eq!(r["stream_id"], "st-q");
    assert_eq!(r["caller_id"], "+9198");
    assert_eq!(r["from_number"], "+9111");
    assert_eq!(r["call_direction"], "outgoing");
    assert_eq!(r["connected_event"]["crm_id"], "C42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_voice_call_and_its_recording_is_served_as_stereo_wav() {
    let sim = Sim::start(&[]).await;
    let worker = Worker::start(Some(&sim), &[]).await;
    let summary = dial(&worker, &sim, "demo-elevenlabs", "assets/sim/scenario-hangup.json", 1).await;
    assert_eq!(summary["completed"], 1, "{summary:#}\n{}", worker.log_text());
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    let r = &results[0];
    assert_eq!(r["disconnected_by"], "customer");
    assert_eq!(by_speaker(r, "bot")[0]["text"], "Hello! This is the CXB demo line. How can I help you today?");
    // The recording key is in the result and the fleet-fallback route serves it (secret-protected).
    let key = r["recording_key"].as_str().expect("recording_key");
    assert!(key.starts_with("recordings/") && key.ends_with(".wav"), "{key}");
    let http = reqwest::Client::new();
    let url = r["recording_url"].as_str().expect("recording_url without object storage").to_string();
    assert_eq!(url, format!("http://{}/recordings/{key}", worker.addr));
    assert_eq!(http.get(&url).send().await.unwrap().status(), 403);
    let resp = http.get(&url).header("X-CXB-Core-Secret", SECRET).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/wav");
    let bytes = resp.bytes().await.unwrap();
    let wav = hound::WavReader::new(std::io::Cursor::new(bytes.to_vec())).expect("a valid WAV");
    let spec = wav.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, 8000, 16));
    let seconds = wav.duration() as f64 / 8000.0;
    let call = r["call_duration_seconds"].as_f64().unwrap();
    assert!((seconds - call).abs() < 1.0, "recording {seconds:.2} s vs call {call:.2} s");
    // Both channels carry audio: the caller's speech (left) and the bot's (right).
    let samples: Vec<i16> = wav.into_samples::<i16>().map(|s| s.unwrap()).collect();
    let energy = |ch: usize| samples.iter().skip(ch).step_by(2).map(|s| (*s as f64).powi(2)).sum::<f64>();
    assert!(energy(0) > 0.0 && energy(1) > 0.0);
    let range = http.get(&url).header("X-CXB-Core-Secret", SECRET).header("Range", "bytes=0-43").send().await.unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.bytes().await.unwrap().len(), 44);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_variables_are_rendered_on_the_embedded_default() {
    let sim = Sim::start(&[]).await;
    // The demo bot file, pointed at this test's doubles, with variables CXB API would have rendered.
    let mut bot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("assets/bots/demo.json")).unwrap()).unwrap();
    let text = bot.to_string().replace("127.0.0.1:9100", &sim.addr);
    bot = serde_json::from_str(&text).unwrap();
    bot["system_prompt"] = "Caller {{call.callerId}} is {{ crm.customer_name }}. [{{crm.unknown_field}}]".into();
    bot["opening_message"] = "Hello {{crm.customer_name}}!".into();
    bot["webhook_url"] = format!("http://{}/api/v1/call-results", sim.addr).into();
    let bots = tempfile::tempdir().unwrap();
    std::fs::write(bots.path().join("vars.json"), bot.to_string()).unwrap();
    let worker = Worker::start(None, &[("CXBCORE_BOTS_DIR", bots.path().to_str().unwrap())]).await;
    let mut call = RawCall::connect(&worker.ws_url("vars")).await.unwrap();
    call.send(serde_json::json!({"event":"connected","callerId":"+919800000001","did":"+911140000000",
        "callDirection":"incoming","streamId":"st-vars","crm":{"customer_name":"Rahul Sharma"}}))
        .await;
    call.send(serde_json::json!({"event":"start","streamId":"st-vars","mediaFormat":{"encoding":"LINEAR","sampleRate":8000,"channels":1}})).await;
    call.send(serde_json::json!({"event":"answer"})).await;
    call.silence(3000).await;
    assert!(call.say("assets/audio/caller-1.wav").await);
    call.silence(1500).await;
    let asked = poll_until(Duration::from_secs(10), || async {
        sim.get("/sim/llm-requests").await.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert!(asked, "the LLM was asked: {}", worker.log_text());
    call.send(serde_json::json!({"event":"hangup-call","disconnectedBy":"customer"})).await;
    let requests = sim.get("/sim/llm-requests").await;
    let system = &requests[0]["messages"][0];
    assert_eq!(system["role"], "system");
    assert_eq!(system["content"], "Caller +919800000001 is Rahul Sharma. []");
    let results = sim.wait_results(1, Duration::from_secs(10)).await;
    let r = &results[0];
    assert_eq!(by_speaker(r, "bot")[0]["text"], "Hello Rahul Sharma!");
    let unrendered: Vec<&serde_json::Value> =
        r["events"].as_array().unwrap().iter().filter(|e| e["type"] == "unrendered_variable").collect();
    assert_eq!(unrendered.len(), 1, "{unrendered:?}");
    assert_eq!(unrendered[0]["data"]["variable"], "crm.unknown_field");
}
