//! Post-call processing end to end against an in-process OpenAI-compatible double: dispositions,
//! skip rules, analysis / QC / callback extraction, garbage and failing LLMs, telemetry, secret
//! scrubbing, transfer state and the NXLink peer format. Every payload is validated against the
//! checked-in `proto/results.schema.json`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cxb_core::postcall::{nxlink, PostCall};
use cxb_core::results::{build_payload, CallSummary};
use cxb_core::Settings;
use cxb_delivery::{Deliverer, Entry, EntryId, Outcome};
use cxb_engine::{CallRecord, EventRecord, LatencySample, TranscriptLine};
use cxb_wire::llm::Usage;
use cxb_wire::result::{CallResultsPayload, DisconnectedBy, Speaker};
use cxb_wire::BotConfig;
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------
// Fake OpenAI-compatible endpoint

#[derive(Clone, Debug)]
enum Reply {
    /// Stream `content` in two chunks, then `finish`, then usage.
    Text {
        content: String,
        finish: &'static str,
        usage: Value,
    },
    Status(u16),
    Hang,
}

fn text(content: &str) -> Reply {
    Reply::Text {
        content: content.into(),
        finish: "stop",
        usage: json!({"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}),
    }
}

#[derive(Clone, Default)]
struct Fake {
    /// Queued replies per purpose (`analysis`, `qc`, `callback`); the last one repeats.
    replies: Arc<Mutex<HashMap<&'static str, VecDeque<Reply>>>>,
    requests: Arc<Mutex<Vec<(&'static str, Value)>>>,
}

impl Fake {
    fn on(&self, purpose: &'static str, replies: Vec<Reply>) -> &Self {
        self.replies.lock().unwrap().insert(purpose, replies.into());
        self
    }
    fn requests(&self) -> Vec<(&'static str, Value)> {
        self.requests.lock().unwrap().clone()
    }
    fn count(&self, purpose: &str) -> usize {
        self.requests().iter().filter(|(p, _)| *p == purpose).count()
    }
}

fn purpose_of(body: &Value) -> &'static str {
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    if system.starts_with("QC:") {
        "qc"
    } else if system.contains("called back") {
        "callback"
    } else {
        "analysis"
    }
}

async fn chat(State(fake): State<Fake>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let purpose = purpose_of(&body);
    fake.requests.lock().unwrap().push((purpose, body));
    let reply = {
        let mut r = fake.replies.lock().unwrap();
        let q = r.entry(purpose).or_default();
        if q.len() > 1 {
            q.pop_front()
        } else {
            q.front().cloned()
        }
    };
    match reply.unwrap_or_else(|| text(r#"{"ok":true}"#)) {
        Reply::Status(code) => (
            axum::http::StatusCode::from_u16(code).unwrap(),
            [("content-type", "application/json")],
            r#"{"error":{"message":"boom"}}"#,
        )
            .into_response(),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "".into_response()
        }
        Reply::Text { content, finish, usage } => {
            let mid = content.char_indices().nth(content.chars().count() / 2).map(|(i, _)| i).unwrap_or(0);
            let mut sse = String::new();
            for part in [&content[..mid], &content[mid..]] {
                let chunk = json!({"choices":[{"index":0,"delta":{"content":part}}]});
                sse.push_str(&format!("data: {chunk}\n\n"));
            }
            sse.push_str(&format!("data: {}\n\n", json!({"choices":[{"index":0,"delta":{},"finish_reason":finish}]})));
            sse.push_str(&format!("data: {}\n\n", json!({"choices":[],"usage":usage})));
            sse.push_str("data: [DONE]\n\n");
            ([("content-type", "text/event-stream")], sse).into_response()
        }
    }
}

async fn start_fake(fake: Fake) -> SocketAddr {
    let app = axum::Router::new().route("/v1/chat/completions", post(chat)).with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn settings(timeout_ms: u64) -> Settings {
    let mut s = Settings::for_tests(std::env::temp_dir().join("cxb-postcall-tests"));
    s.postcall.postcall_timeout_ms = timeout_ms;
    s.postcall.postcall_temperature = Some(0.0);
    s
}

fn config(addr: SocketAddr, extra: Value) -> BotConfig {
    let mut v = json!({
        "session_id": "sess-1",
        "bot_id": "bot-7",
        "webhook_url": "http://127.0.0.1:1/results",
        "system_prompt": "You are a collections agent.",
        "opening_message": "Hello!",
        "post_call_analysis_prompt": "Classify the call. Keys: DISPOSITION, SUB_DISPOSITION, CALLING_REMARKS, summary.",
        "qc_prompt": "QC: score empathy_score, compliance_score, overall_score and remarks.",
        "llm": {"provider": "openai", "api_key": "sk-conv-SECRET-1", "model": "gpt-4.1-mini",
                "base_url": format!("http://{addr}/v1")},
        "stt": {"provider": "deepgram", "api_key": "dg-SECRET-2", "model": "nova-3"},
        "tts": {"provider": "cartesia", "api_key": "ct-SECRET-3", "voice_id": "v1"},
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut v, extra) {
        base.extend(more);
    }
    serde_json::from_value(v).unwrap()
}

fn summary(by: DisconnectedBy, secs: f64) -> CallSummary {
    let mut ce = Map::new();
    ce.insert("customer_name".into(), json!("Asha"));
    ce.insert("loan_id".into(), json!(42));
    ce.insert("taskId".into(), json!("task-9"));
    ce.insert("empty".into(), Value::Null);
    CallSummary {
        session_id: "sess-1".into(),
        bot_id: "bot-7".into(),
        transport: "websocket",
        stream_id: "st-1".into(),
        caller_id: "+919800000001".into(),
        did: "+918000000002".into(),
        call_direction: "outgoing".into(),
        connected_event: ce,
        started_at: chrono::DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z").unwrap().to_utc(),
        duration: Duration::from_secs_f64(secs),
        disconnected_by: by,
    }
}

fn line(speaker: Speaker, text: &str, at: f64) -> TranscriptLine {
    TranscriptLine { speaker, text: text.into(), at: Duration::from_secs_f64(at), interrupted: false }
}

fn conversation() -> CallRecord {
    let mut r = CallRecord {
        transcript: vec![
            line(Speaker::Bot, "Hello! This is about your loan.", 0.5),
            line(Speaker::Customer, "I am driving, call me tomorrow after 5 pm.", 4.0),
            line(Speaker::Bot, "Sure, I will call you tomorrow after 5 pm.", 7.0),
        ],
        customer_spoke: true,
        llm_requests: 2,
        tts_characters: 75,
        ..Default::default()
    };
    r.llm_usage = Usage {
        prompt_tokens: 900,
        completion_tokens: 40,
        total_tokens: 940,
        cached_tokens: 512,
        cache_write_tokens: 0,
        thoughts_tokens: 0,
    };
    r.latency = vec![LatencySample {
        turn: 1,
        stt_final_delay_ms: 120.0,
        llm_ttft_ms: Some(300.0),
        llm_first_sentence_ms: Some(340.0),
        tts_ttfb_ms: Some(150.0),
        total_response_ms: Some(800.0),
    }];
    r
}

fn silent() -> CallRecord {
    CallRecord { transcript: vec![line(Speaker::Bot, "Hello? Are you there?", 0.5)], ..Default::default() }
}

fn schema_validator() -> jsonschema::Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/results.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::draft202012::new(&schema).unwrap()
}

/// Schema-valid, no nulls anywhere; returns the JSON.
fn validated(p: &CallResultsPayload) -> Value {
    let v = serde_json::to_value(p).unwrap();
    let errors: Vec<String> =
        schema_validator().iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "payload violates proto/results.schema.json: {errors:#?}\n{v:#}");
    let mut path = String::from("$");
    assert!(!cxb_wire::result::find_null(&v, &mut path), "null at {path}");
    v
}

async fn run(post: &PostCall, cfg: &BotConfig, s: &CallSummary, r: &CallRecord) -> Value {
    let payload = build_payload(s, Some(r), Vec::new());
    validated(&payload);
    let out = post.process(cfg, s, r, payload).await;
    validated(&out)
}

fn events<'a>(v: &'a Value, kind: &str) -> Vec<&'a Value> {
    v["events"].as_array().unwrap().iter().filter(|e| e["type"] == kind).collect()
}

// ---------------------------------------------------------------------------------------------
// Analysis, QC, callback

#[tokio::test]
async fn analysis_qc_and_callback_fill_the_payload() {
    let fake = Fake::default();
    fake.on(
        "analysis",
        vec![Reply::Text {
            content: r#"{"DISPOSITION":"Callback","SUB_DISPOSITION":"BUSY","CALLING_REMARKS":"driving","summary":"Customer asked for a callback.","intents":["callback_request"]}"#.into(),
            finish: "stop",
            usage: json!({"prompt_tokens": 1200, "completion_tokens": 60, "total_tokens": 1260,
                          "prompt_tokens_details": {"cached_tokens": 1024}}),
        }],
    )
    .on("qc", vec![text("Here you go:\n```json\n{\"empathy_score\": 8, \"overall_score\": 7, \"remarks\": \"ok\"}\n```")])
    .on(
        "callback",
        vec![text(r#"{"callback_requested": true, "callback_preferred_time_text": "tomorrow after 5 pm", "callback_reason": "driving", "callback_confidence": 0.9}"#)],
    );
    let addr = start_fake(fake.clone()).await;
    let cfg = config(
        addr,
        json!({"callback_detection_enabled": true, "post_call_cache_enabled": true, "post_call_cache_version": "v3",
               "post_call_cache": {"prompt_cache_retention": "24h"}}),
    );
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(5000));
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 30.0), &conversation()).await;

    let a = &v["post_call_analysis"];
    assert_eq!(a["DISPOSITION"], "Callback");
    assert_eq!(a["summary"], "Customer asked for a callback.");
    assert_eq!(a["callback_requested"], true);
    assert_eq!(a["callback_preferred_time_text"], "tomorrow after 5 pm");
    assert_eq!(a["callback_reason"], "driving");
    assert_eq!(a["callback_confidence"], 0.9);
    assert_eq!(v["qc_analysis"], json!({"empathy_score": 8, "overall_score": 7, "remarks": "ok"}));
    assert_eq!(v["intents"], json!(["callback_request"]));
    assert!(events(&v, "service_error").is_empty(), "{:#}", v["events"]);

    // usage per purpose, cache summary from post_call + qc only
    let llm = v["usage_metrics"]["llm"].as_array().unwrap();
    let purposes: Vec<&str> = llm.iter().map(|e| e["purpose"].as_str().unwrap()).collect();
    assert_eq!(purposes, ["conversation", "post_call", "qc", "callback"]);
    assert_eq!(llm[0]["model"], "gpt-4.1-mini");
    assert_eq!(llm[0]["cache_read_input_tokens"], 512);
    assert_eq!(llm[1]["cache_read_input_tokens"], 1024);
    assert_eq!(llm[1]["cache_status"], "hit");
    assert_eq!(llm[2]["cache_status"], "miss");
    assert_eq!(v["usage_metrics"]["tts_characters"], 75);
    assert_eq!(v["usage_metrics"]["stt_audio_seconds"], 30.0);
    assert_eq!(
        v["llm_cache_summary"],
        json!({"enabled": true, "worked": true, "statuses": {"post_call": "hit", "qc": "miss"},
               "cache_read_input_tokens": 1024, "cache_creation_input_tokens": 0,
               "fresh_prompt_tokens": 176 + 1000, "completion_tokens": 110})
    );

    // requests: prompt first (cacheable prefix), transcript after, caching hints keyed by version
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    for (purpose, body) in &reqs {
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(body["messages"][1]["content"].as_str().unwrap().contains("Customer: I am driving"), "{body:#}");
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["prompt_cache_retention"], "24h");
        let key = body["prompt_cache_key"].as_str().unwrap();
        assert!(key.starts_with("cxb-postcall:bot-7:") && key.ends_with(":v3"), "{purpose}: {key}");
        assert!(!body.to_string().contains("dg-SECRET"), "no other provider's key in the request");
    }
}

#[tokio::test]
async fn caching_hints_are_not_sent_when_disabled_and_statuses_say_disabled() {
    let fake = Fake::default();
    fake.on("analysis", vec![text(r#"{"DISPOSITION":"Connected"}"#)]);
    let addr = start_fake(fake.clone()).await;
    let cfg = config(addr, json!({"qc_prompt": null}));
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(5000));
    let v = run(&post, &cfg, &summary(DisconnectedBy::Bot, 30.0), &conversation()).await;
    assert_eq!(v["post_call_analysis"], json!({"DISPOSITION":"Connected"}));
    assert!(v.get("qc_analysis").is_none());
    assert_eq!(v["llm_cache_summary"]["enabled"], false);
    assert_eq!(v["llm_cache_summary"]["statuses"], json!({"post_call": "disabled"}));
    let (_, body) = &fake.requests()[0];
    assert!(body.get("prompt_cache_key").is_none());
}

// ---------------------------------------------------------------------------------------------
// Dispositions and skip rules

#[tokio::test]
async fn every_disposition_case_skips_the_llm_and_sets_the_documented_dict() {
    let fake = Fake::default();
    let addr = start_fake(fake.clone()).await;
    let cfg = config(addr, json!({"callback_detection_enabled": true}));
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(5000));
    let d = |a: &str, b: &str, c: &str| json!({"DISPOSITION": a, "SUB_DISPOSITION": b, "CALLING_REMARKS": c});
    let rnr = d("RNR", "RNR", "Customer picked up but did not respond.");
    let cases = [
        // (disconnected_by, secs, record, case, expected)
        (
            DisconnectedBy::Error,
            30.0,
            conversation(),
            "error",
            d("Failed", "fallback", "Call ended due to a system error."),
        ),
        (
            DisconnectedBy::Voicemail,
            30.0,
            conversation(),
            "voicemail",
            d("IVR", "MAIN_MESSAGE", "Voicemail or automated system detected."),
        ),
        (
            DisconnectedBy::Timeout,
            600.0,
            silent(),
            "timeout",
            d("Not Connected", "DSCN_PARTIAL", "Call exceeded maximum duration."),
        ),
        (DisconnectedBy::Rnr, 20.0, silent(), "rnr", rnr.clone()),
        (DisconnectedBy::Customer, 20.0, silent(), "no_customer_message", rnr.clone()),
        (DisconnectedBy::Bot, 20.0, silent(), "no_customer_message", rnr.clone()),
        (
            DisconnectedBy::Customer,
            4.0,
            conversation(),
            "short_call",
            d("Not Connected", "DSCN_PARTIAL", "Call ended within 5 seconds."),
        ),
        (
            DisconnectedBy::NoAnswer,
            0.0,
            CallRecord::default(),
            "no_answer",
            d("Not Connected", "NO_ANSWER", "Callee did not answer."),
        ),
        (
            DisconnectedBy::Rejected,
            0.0,
            CallRecord::default(),
            "rejected",
            d("Not Connected", "REJECTED", "Callee rejected the call."),
        ),
        (
            DisconnectedBy::OutsideHours,
            0.0,
            CallRecord::default(),
            "outside_hours",
            d("Not Connected", "OUTSIDE_HOURS", "Bot unavailable or outside its active hours."),
        ),
    ];
    for (by, secs, record, case, want) in cases {
        let v = run(&post, &cfg, &summary(by, secs), &record).await;
        assert_eq!(v["post_call_analysis"], want, "{by}");
        assert!(v.get("qc_analysis").is_none() && v.get("llm_cache_summary").is_none(), "{by}");
        let ev = events(&v, "auto_disposition");
        assert_eq!(ev.len(), 1, "{by}");
        assert_eq!(ev[0]["data"]["case"], case, "{by}");
        assert!(v["pipeline_config"].is_object());
    }
    assert!(fake.requests().is_empty(), "skipped calls never reach the LLM: {:?}", fake.requests());
}

#[tokio::test]
async fn per_bot_overrides_default_the_missing_fields() {
    let fake = Fake::default();
    let addr = start_fake(fake.clone()).await;
    let cfg = config(
        addr,
        json!({"auto_dispositions": {
            "voicemail": {"DISPOSITION": "Answering Machine"},
            "rnr": {"DISPOSITION": "Silent", "SUB_DISPOSITION": "NO_VOICE"},
            "error": {"DISPOSITION": "Tech Fail", "SUB_DISPOSITION": "SYS", "CALLING_REMARKS": "pipeline"}
        }}),
    );
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(5000));
    let v = run(&post, &cfg, &summary(DisconnectedBy::Voicemail, 12.0), &silent()).await;
    assert_eq!(
        v["post_call_analysis"],
        json!({"DISPOSITION": "Answering Machine", "SUB_DISPOSITION": "MAIN_MESSAGE",
               "CALLING_REMARKS": "Voicemail or automated system detected."})
    );
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 12.0), &silent()).await;
    assert_eq!(
        v["post_call_analysis"],
        json!({"DISPOSITION": "Silent", "SUB_DISPOSITION": "NO_VOICE",
               "CALLING_REMARKS": "Customer picked up but did not respond."}),
        "no_customer_message uses the bot's RNR disposition"
    );
    let v = run(&post, &cfg, &summary(DisconnectedBy::Error, 12.0), &conversation()).await;
    assert_eq!(
        v["post_call_analysis"],
        json!({"DISPOSITION": "Tech Fail", "SUB_DISPOSITION": "SYS", "CALLING_REMARKS": "pipeline"})
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn timeout_and_rnr_are_analysed_when_the_customer_spoke() {
    let fake = Fake::default();
    fake.on("analysis", vec![text(r#"{"DISPOSITION":"Partial"}"#)]);
    let addr = start_fake(fake.clone()).await;
    let cfg = config(addr, json!({"qc_prompt": null}));
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(5000));
    for by in [DisconnectedBy::Timeout, DisconnectedBy::Rnr, DisconnectedBy::TransferToAgent] {
        let v = run(&post, &cfg, &summary(by, 40.0), &conversation()).await;
        assert_eq!(v["post_call_analysis"], json!({"DISPOSITION":"Partial"}), "{by}");
        assert!(events(&v, "auto_disposition").is_empty());
    }
    assert_eq!(fake.count("analysis"), 3);
}

#[tokio::test]
async fn no_prompt_means_no_llm_and_no_analysis() {
    let fake = Fake::default();
    let addr = start_fake(fake.clone()).await;
    let cfg = config(addr, json!({"post_call_analysis_prompt": null, "qc_prompt": ""}));
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(5000));
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 40.0), &conversation()).await;
    assert!(v.get("post_call_analysis").is_none() && v.get("llm_cache_summary").is_none());
    assert!(fake.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Garbage and failures

#[tokio::test]
async fn garbage_analysis_is_an_error_event_and_the_rest_is_kept() {
    let fake = Fake::default();
    fake.on("analysis", vec![text("I'm sorry, I can't classify this call.")])
        .on("qc", vec![text("Sure! {\"overall_score\": 5} Hope that helps.")]);
    let addr = start_fake(fake.clone()).await;
    let cfg = config(addr, json!({}));
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(5000));
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 30.0), &conversation()).await;
    assert!(v.get("post_call_analysis").is_none(), "{:#}", v["post_call_analysis"]);
    assert_eq!(v["qc_analysis"], json!({"overall_score": 5}));
    let errs = events(&v, "service_error");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0]["data"]["service"], "post_call_analysis");
    assert_eq!(errs[0]["data"]["kind"], "parse");
    assert!(errs[0]["data"]["raw_preview"].as_str().unwrap().contains("can't classify"));
    assert!(errs[0]["offset_seconds"].as_f64().unwrap() >= 30.0, "post-call events come after the call");
}

#[tokio::test]
async fn truncated_analysis_is_reported_as_truncated() {
    let fake = Fake::default();
    fake.on(
        "analysis",
        vec![Reply::Text {
            content: "```json\n{\"DISPOSITION\":\"Conn".into(),
            finish: "length",
            usage: json!({"prompt_tokens": 10, "completion_tokens": 2048, "total_tokens": 2058}),
        }],
    );
    let addr = start_fake(fake.clone()).await;
    let cfg = config(addr, json!({"qc_prompt": null}));
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(5000));
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 30.0), &conversation()).await;
    let errs = events(&v, "service_error");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0]["data"]["kind"], "truncated");
    assert_eq!(v["usage_metrics"]["llm"][1]["completion_tokens"], 2048, "usage is kept for failed parses");
}

#[tokio::test]
async fn failing_llm_still_delivers_with_error_events_after_one_retry() {
    let fake = Fake::default();
    fake.on("analysis", vec![Reply::Status(500)]).on("qc", vec![Reply::Status(400)]);
    let addr = start_fake(fake.clone()).await;
    let cfg = config(addr, json!({}));
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(5000));
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 30.0), &conversation()).await;
    assert_eq!(fake.count("analysis"), 2, "5xx is retried once");
    assert_eq!(fake.count("qc"), 1, "4xx is not retried");
    let errs = events(&v, "service_error");
    let services: Vec<&str> = errs.iter().map(|e| e["data"]["service"].as_str().unwrap()).collect();
    assert_eq!(services, ["post_call_analysis", "qc"]);
    assert!(errs.iter().all(|e| e["data"]["kind"] == "llm"));
    assert!(errs[0]["data"]["error"].as_str().unwrap().contains("500"));
    let llm = v["usage_metrics"]["llm"].as_array().unwrap();
    assert_eq!(llm[1]["requests"], 2);
    assert_eq!(llm[1]["cache_status"], "error");
    assert_eq!(v["llm_cache_summary"]["worked"], false);
    assert!(v.get("post_call_analysis").is_none());
}

#[tokio::test]
async fn a_hanging_llm_is_cut_at_the_timeout() {
    let fake = Fake::default();
    fake.on("analysis", vec![Reply::Hang]).on("qc", vec![text(r#"{"overall_score": 9}"#)]);
    let addr = start_fake(fake.clone()).await;
    let cfg = config(addr, json!({}));
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(700));
    let t0 = std::time::Instant::now();
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 30.0), &conversation()).await;
    assert!(t0.elapsed() < Duration::from_secs(10), "bounded by the timeout: {:?}", t0.elapsed());
    assert_eq!(v["qc_analysis"], json!({"overall_score": 9}), "finished parts are kept");
    let errs = events(&v, "service_error");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0]["data"]["kind"], "timeout");
}

#[tokio::test]
async fn an_unreachable_or_unsupported_llm_is_an_error_event() {
    let cfg = config("127.0.0.1:9".parse().unwrap(), json!({"qc_prompt": null}));
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(3000));
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 30.0), &conversation()).await;
    let errs = events(&v, "service_error");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0]["data"]["kind"], "llm");

    let mut cfg = cfg;
    cfg.llm.provider = "no-such-llm".into();
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 30.0), &conversation()).await;
    assert!(events(&v, "service_error")[0]["data"]["error"].as_str().unwrap().contains("no-such-llm"));
}

#[tokio::test]
async fn the_llm_kill_switch_keeps_dispositions() {
    let fake = Fake::default();
    let addr = start_fake(fake.clone()).await;
    let cfg = config(addr, json!({}));
    let mut s = settings(5000);
    s.postcall.postcall_llm = false;
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &s);
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 30.0), &conversation()).await;
    assert!(v.get("post_call_analysis").is_none());
    let v = run(&post, &cfg, &summary(DisconnectedBy::Voicemail, 30.0), &conversation()).await;
    assert_eq!(v["post_call_analysis"]["DISPOSITION"], "IVR");
    assert!(fake.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Telemetry, pipeline_config

#[tokio::test]
async fn latency_usage_and_tool_telemetry() {
    let s = summary(DisconnectedBy::Bot, 60.0);
    let mut r = conversation();
    r.latency.push(LatencySample {
        turn: 2,
        stt_final_delay_ms: 80.0,
        llm_ttft_ms: None,
        llm_first_sentence_ms: None,
        tts_ttfb_ms: Some(250.0),
        total_response_ms: Some(1200.0),
    });
    r.events = vec![
        EventRecord {
            kind: "tool_call",
            at: Duration::from_secs(10),
            data: json!({"tool_call_id": "c1", "name": "lookup"}).as_object().unwrap().clone(),
        },
        EventRecord {
            kind: "custom_tool_result",
            at: Duration::from_millis(10_400),
            data: json!({"tool_call_id": "c1", "name": "lookup", "is_error": false, "result": "ok", "junk": null})
                .as_object()
                .unwrap()
                .clone(),
        },
        EventRecord {
            kind: "intent",
            at: Duration::from_secs(12),
            data: json!({"intent": "pay_later"}).as_object().unwrap().clone(),
        },
    ];
    let p = build_payload(&s, Some(&r), Vec::new());
    let v = validated(&p);
    assert_eq!(
        v["latency"],
        json!({"turns": 2, "stt_final_delay_avg_ms": 100.0, "llm_ttft_avg_ms": 300.0, "tts_ttfb_avg_ms": 200.0,
               "total_avg_response_ms": 1000.0, "total_max_response_ms": 1200.0, "tool_avg_ms": 400.0})
    );
    assert_eq!(v["latency_samples"].as_array().unwrap().len(), 2);
    assert!(v["latency_samples"][1].get("llm_ttft_ms").is_none(), "absent, not null");
    assert_eq!(
        v["usage_metrics"]["llm"][0],
        json!({"purpose": "conversation", "requests": 2, "prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940,
               "cache_read_input_tokens": 512, "cache_creation_input_tokens": 0})
    );
    assert_eq!(v["intents"], json!([{"intent": "pay_later", "offset_seconds": 12.0}]));
    assert!(events(&v, "custom_tool_result")[0]["data"].get("junk").is_none());
    assert_eq!(v["was_transferred"], false);
    assert!(v.get("connected_event").unwrap().get("empty").is_none());
}

#[tokio::test]
async fn pipeline_config_has_no_secret_anywhere() {
    let fake = Fake::default();
    let addr = start_fake(fake.clone()).await;
    let cfg = config(
        addr,
        json!({
            "stt": {"provider": "deepgram", "api_key": "dg-SECRET-2", "model": "nova-3",
                    "base_url": "wss://user:pw-SECRET-4@stt.example.com/v1?token=tok-SECRET-5&model=nova-3",
                    "extra": {"endpointing": 200, "Authorization": "Bearer bearer-SECRET-6", "keyterm": ["loan"]}},
            "tts": {"provider": "elevenlabs", "api_key": "el-SECRET-7", "voice_id": "v1",
                    "extra": {"xi-api-key": "xi-SECRET-8", "stability": 0.5, "note": "key is el-SECRET-7"}},
            "llm": {"provider": "openai", "api_key": "sk-conv-SECRET-1", "model": "gpt-4.1-mini",
                    "base_url": format!("http://{addr}/v1?api_key=qp-SECRET-9"), "max_tokens": 256,
                    "extra": {"headers": {"x-api-key": "hdr-SECRET-10"}, "top_p": 0.9}},
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}},
                       "http": {"url": "https://crm.example.com/lookup", "headers": {"Authorization": "Bearer tool-SECRET-11"}}}],
            "nxlink": {"url": "https://nx.example.com/cb", "access_key": "AK-SECRET-12", "secret": "nx-SECRET-13"},
            "prompt_parts": {"mode": "direct", "cache_enabled": true, "static_system_prompt": "very long static prompt",
                             "prompt_cache_key": "pk"},
            "system_prompt": "You are the bot. Password hint: SECRET-IN-PROMPT-14",
            "post_call_analysis_prompt": null, "qc_prompt": null,
        }),
    );
    let post = PostCall::new(cxb_providers::llm::LlmClient::new(), &settings(2000));
    let v = run(&post, &cfg, &summary(DisconnectedBy::Customer, 30.0), &conversation()).await;
    let pc = &v["pipeline_config"];
    let text = pc.to_string();
    for i in 1..=14 {
        assert!(!text.contains(&format!("SECRET-{i}")), "secret #{i} leaked into pipeline_config: {pc:#}");
    }
    for key in ["\"api_key\"", "\"Authorization\"", "\"xi-api-key\"", "\"x-api-key\"", "\"secret\"", "\"access_key\""] {
        assert!(!text.contains(key), "{key} in {pc:#}");
    }
    assert!(!text.contains("pw-") && !text.contains("static prompt"), "{pc:#}");
    assert!(!v.to_string().contains("SECRET"), "no secret anywhere in the payload");
    // the diagnostic value stays
    assert_eq!(pc["stt"]["model"], "nova-3");
    assert_eq!(pc["stt"]["extra"]["endpointing"], 200);
    assert_eq!(pc["stt"]["base_url"], "wss://stt.example.com/v1?token=%5Bredacted%5D&model=nova-3");
    assert_eq!(pc["tts"]["extra"]["stability"], 0.5);
    assert_eq!(pc["llm"]["max_tokens"], 256);
    assert_eq!(pc["llm"]["extra"]["top_p"], 0.9);
    assert_eq!(pc["tools"], json!(["lookup"]));
    assert_eq!(pc["prompt_parts"], json!({"mode": "direct", "cache_enabled": true}));
    assert_eq!(pc["post_call"]["nxlink"], true);
    assert_eq!(pc["transport"], "websocket");
    assert!(pc["system_prompt_chars"].as_u64().unwrap() > 10);
}

// ---------------------------------------------------------------------------------------------
// Transfer state (seed 001)

fn ev(kind: &'static str, at: f64, data: Value) -> EventRecord {
    EventRecord { kind, at: Duration::from_secs_f64(at), data: data.as_object().unwrap().clone() }
}

fn transfer_payload(events: Vec<EventRecord>) -> Value {
    let r = CallRecord { events, ..conversation() };
    validated(&build_payload(&summary(DisconnectedBy::Bot, 60.0), Some(&r), Vec::new()))
}

fn sent(at: f64) -> EventRecord {
    ev(
        "transfer_sent",
        at,
        json!({"destination": "+911234", "target": "Sales desk", "reason": "customer asked for a human",
                                   "method": "websocket_reverse_transfer"}),
    )
}

#[test]
fn transfer_sent_means_transferred() {
    let v = transfer_payload(vec![sent(20.25)]);
    assert_eq!(v["was_transferred"], true);
    assert_eq!(v["transfer_destination"], "+911234");
    assert_eq!(v["transfer_target"], "Sales desk");
    assert_eq!(v["transfer_reason"], "customer asked for a human");
    assert_eq!(v["transfer_method"], "websocket_reverse_transfer");
    assert_eq!(v["transfer_at"], 20.25);
    assert!(v.get("transfer_failed_reason").is_none());
}

#[test]
fn transfer_sent_then_failed_is_not_transferred() {
    let v = transfer_payload(vec![sent(20.0), ev("transfer_failed", 21.0, json!({"error": "SIP 486 busy"}))]);
    assert_eq!(v["was_transferred"], false);
    assert_eq!(v["transfer_destination"], "+911234");
    assert_eq!(v["transfer_at"], 20.0);
    assert_eq!(v["transfer_failed_reason"], "SIP 486 busy");
}

#[test]
fn transfer_failed_only() {
    let v = transfer_payload(vec![ev(
        "transfer_failed",
        15.0,
        json!({"error": "no compatible transfer target", "reason": "wants agent", "method": "livekit_sip_refer"}),
    )]);
    assert_eq!(v["was_transferred"], false);
    assert_eq!(v["transfer_failed_reason"], "no compatible transfer target");
    assert_eq!(v["transfer_reason"], "wants agent");
    assert_eq!(v["transfer_method"], "livekit_sip_refer");
    assert_eq!(v["transfer_at"], 15.0);
    assert!(v.get("transfer_destination").is_none());
}

#[test]
fn a_later_successful_transfer_stands_and_no_transfer_is_false() {
    let v = transfer_payload(vec![sent(10.0), ev("transfer_failed", 11.0, json!({"error": "busy"})), sent(30.0)]);
    assert_eq!(v["was_transferred"], true);
    assert_eq!(v["transfer_at"], 30.0);
    assert!(v.get("transfer_failed_reason").is_none());
    let v = transfer_payload(Vec::new());
    assert_eq!(v["was_transferred"], false);
    for k in [
        "transfer_destination",
        "transfer_target",
        "transfer_reason",
        "transfer_method",
        "transfer_at",
        "transfer_failed_reason",
    ] {
        assert!(v.get(k).is_none(), "{k}");
    }
}

// ---------------------------------------------------------------------------------------------
// NXLink peer format (seed 002)

fn nx_cfg(extra: Value) -> BotConfig {
    let mut cfg = config("127.0.0.1:9".parse().unwrap(), json!({}));
    let mut nx = json!({"url": "https://nx.example.com/callback", "access_key": "AK-1", "secret": "SECRET",
                        "auto_flow_id": 207, "auto_flow_name": "collections", "attribute_names": {"customer_name": "Name"}});
    if let (Value::Object(a), Value::Object(b)) = (&mut nx, extra) {
        a.extend(b);
    }
    cfg.nxlink = Some(serde_json::from_value(nx).unwrap());
    cfg
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn nxlink_sign_is_the_documented_md5_scheme() {
    assert_eq!(
        nxlink::sign("AK-1", "nxai", "100", "1655710885431", r#"{"a":1}"#, "SECRET"),
        "0f4b03105715a0a7496954ca3b463cea"
    );
}

#[test]
fn nxlink_mapping() {
    let cfg = nx_cfg(json!({}));
    let s = summary(DisconnectedBy::Customer, 137.4);
    let mut p = build_payload(&s, Some(&conversation()), Vec::new());
    p.recording_url = Some("https://rec.example.com/r.wav".into());
    let mut a = Map::new();
    a.insert("DISPOSITION".into(), json!("Callback"));
    a.insert("summary".into(), json!("Asked for a callback."));
    p.post_call_analysis = Some(a);
    let req = nxlink::nxlink_entry(&cfg, &p).expect("an NXLink request");
    assert_eq!(req.url, "https://nx.example.com/callback");
    let h: HashMap<&str, &str> = req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(h["accessKey"], "AK-1");
    assert_eq!(h["bizType"], "100");
    assert_eq!(h["action"], "nxai");
    let ts = h["ts"];
    assert_eq!(ts.len(), 13, "milliseconds");
    let want =
        md5_hex(&format!("accessKey=AK-1&action=nxai&bizType=100&ts={ts}&body={}&accessSecret=SECRET", req.body));
    assert_eq!(h["sign"], want);
    assert!(!req.body.contains("SECRET"), "the secret is never sent");

    let b: Value = serde_json::from_str(&req.body).unwrap();
    let start = 1772359200; // 2026-03-01T10:00:00Z
    assert_eq!(b["callId"], "sess-1");
    assert_eq!(b["taskId"], "task-9");
    assert_eq!(b["autoFlowId"], 207);
    assert_eq!(b["autoFlowName"], "collections");
    assert_eq!(b["callStatus"], 10);
    assert_eq!(b["callResult"], 17);
    assert_eq!(b["callerPhone"], "+918000000002", "outgoing: our line calls the customer");
    assert_eq!(b["calleePhone"], "+919800000001");
    assert_eq!(b["realPhone"], "+919800000001");
    assert_eq!(b["callStart"], start);
    assert_eq!(b["callAnswer"], start);
    assert_eq!(b["callEnd"], start + 137);
    assert_eq!(b["callElapsed"], 137);
    assert_eq!(b["callAudioUrl"], "https://rec.example.com/r.wav");
    assert_eq!(b["userIntent"], "Callback");
    assert_eq!(b["callSummary"], "Asked for a callback.");
    assert_eq!(b["turnTime"], 1);
    assert_eq!(b["sipCode"], "200");
    assert_eq!(b["hangupReason"], "NORMAL_CLEARING");
    let attrs = b["attributes"].as_array().unwrap();
    assert!(attrs.contains(&json!({"name": "Name", "key": "customer_name", "value": "Asha"})), "{attrs:?}");
    assert!(attrs.contains(&json!({"name": "loan_id", "key": "loan_id", "value": "42"})), "{attrs:?}");
    assert!(!attrs.iter().any(|a| a["key"] == "empty"), "null variables are left out");
    // every field of the seed's example body is present
    for k in [
        "taskId",
        "userTaskId",
        "contactId",
        "other",
        "autoFlowId",
        "orderHead",
        "orderTail",
        "callerPhone",
        "calleePhone",
        "realPhone",
        "callId",
        "callStatus",
        "callResult",
        "createTs",
        "opTs",
        "callStart",
        "callAnswer",
        "callEnd",
        "callRingTime",
        "callElapsed",
        "lineId",
        "routeId",
        "callAudioUrl",
        "userIntent",
        "callSummary",
        "turnTime",
        "manualCallStart",
        "manualCallAnswer",
        "manualCallEnd",
        "manualCallStatus",
        "manualElapsed",
        "agentName",
        "agentId",
        "agentGroupName",
        "agentGroupId",
        "sipAddr",
        "sipCode",
        "hangupReason",
        "attributes",
        "autoFlowName",
    ] {
        assert!(b.get(k).is_some_and(|v| !v.is_null()), "missing {k}");
    }
}

#[test]
fn nxlink_status_table_and_unanswered_calls() {
    let cfg = nx_cfg(json!({}));
    let table = [
        (DisconnectedBy::Customer, 10, 17),
        (DisconnectedBy::Bot, 10, 3),
        (DisconnectedBy::Timeout, 10, 3),
        (DisconnectedBy::TransferToAgent, 10, 1),
        (DisconnectedBy::Voicemail, 10, 18),
        (DisconnectedBy::Rnr, 10, 20),
        (DisconnectedBy::NoAnswer, 24, 9),
        (DisconnectedBy::Rejected, 15, 13),
        (DisconnectedBy::OutsideHours, 16, 16),
        (DisconnectedBy::Error, 18, 21),
    ];
    for (by, status, result) in table {
        let secs = if matches!(by, DisconnectedBy::NoAnswer | DisconnectedBy::Rejected | DisconnectedBy::OutsideHours) {
            0.0
        } else {
            20.0
        };
        let p = build_payload(&summary(by, secs), Some(&CallRecord::default()), Vec::new());
        let b: Value = serde_json::from_str(&nxlink::nxlink_entry(&cfg, &p).unwrap().body).unwrap();
        assert_eq!((b["callStatus"].as_i64().unwrap(), b["callResult"].as_i64().unwrap()), (status, result), "{by}");
        if secs == 0.0 {
            assert_eq!(b["callAnswer"], 0, "{by}");
            assert_eq!(b["callElapsed"], 0, "{by}");
        }
    }
    // incoming: the customer is the caller
    let mut s = summary(DisconnectedBy::Customer, 20.0);
    s.call_direction = "incoming".into();
    let p = build_payload(&s, None, Vec::new());
    let b: Value = serde_json::from_str(&nxlink::nxlink_entry(&cfg, &p).unwrap().body).unwrap();
    assert_eq!(b["callerPhone"], "+919800000001");
    // disabled, missing url, or no block: no second delivery
    assert!(nxlink::nxlink_entry(&nx_cfg(json!({"enabled": false})), &p).is_none());
    assert!(nxlink::nxlink_entry(&nx_cfg(json!({"url": ""})), &p).is_none());
    assert!(nxlink::nxlink_entry(&config("127.0.0.1:9".parse().unwrap(), json!({})), &p).is_none());
    // no access key: unsigned
    assert!(nxlink::nxlink_entry(&nx_cfg(json!({"access_key": ""})), &p).unwrap().headers.is_empty());
}

type Seen = Vec<(HashMap<String, String>, String)>;

#[derive(Clone, Default)]
struct NxServer {
    seen: Arc<Mutex<Seen>>,
    codes: Arc<Mutex<VecDeque<(u16, String)>>>,
}

async fn nx_handler(State(s): State<NxServer>, headers: HeaderMap, body: String) -> Response {
    let h = headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    s.seen.lock().unwrap().push((h, body));
    let (status, text) = s.codes.lock().unwrap().pop_front().unwrap_or((200, r#"{"code":0,"data":""}"#.into()));
    (axum::http::StatusCode::from_u16(status).unwrap(), text).into_response()
}

#[tokio::test]
async fn nxlink_deliverer_signs_each_attempt_and_classifies_answers() {
    let server = NxServer::default();
    let app = axum::Router::new().route("/cb", post(nx_handler)).with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cfg = nx_cfg(json!({"url": format!("http://{addr}/cb")}));
    let p = build_payload(&summary(DisconnectedBy::Bot, 20.0), Some(&conversation()), Vec::new());
    let new = nxlink::outbox_entry(&cfg, &p).unwrap();
    assert_eq!(new.kind, nxlink::OUTBOX_KIND);
    assert_eq!(new.key, "sess-1");
    let entry = Entry {
        id: EntryId::parse("0000000000001-0000000000000001").unwrap(),
        kind: new.kind.clone(),
        created_at: chrono::Utc::now(),
        key: new.key.clone(),
        target: new.target.clone(),
    };
    let d = nxlink::NxlinkDeliverer::new(Duration::from_secs(5));
    *server.codes.lock().unwrap() = VecDeque::from([
        (200, r#"{"code":1004}"#.to_string()),
        (503, "busy".to_string()),
        (200, r#"{"code":0,"data":""}"#.to_string()),
        (200, r#"{"code":1003}"#.to_string()),
    ]);
    assert!(matches!(d.deliver(&entry).await, Outcome::Retry { .. }), "1004 timestamp expired: retry");
    assert!(matches!(d.deliver(&entry).await, Outcome::Retry { .. }), "503: retry");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(d.deliver(&entry).await, Outcome::Delivered));
    assert!(matches!(d.deliver(&entry).await, Outcome::Reject { .. }), "1003 invalid signature: dead letter");
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for (h, body) in &seen {
        let ts = &h["ts"];
        let want = md5_hex(&format!("accessKey=AK-1&action=nxai&bizType=100&ts={ts}&body={body}&accessSecret=SECRET"));
        assert_eq!(h["sign"], want, "each attempt is signed for its own ts");
        assert_eq!(h["content-type"], "application/json");
        assert!(!body.contains("SECRET"));
    }
    assert_eq!(seen[0].1, seen[2].1, "identical body on every attempt");
    assert_ne!(seen[0].0["ts"], seen[2].0["ts"], "a fresh ts per attempt");
    assert!(matches!(nxlink::classify(404, "nope"), Outcome::Reject { .. }));
    assert!(matches!(nxlink::classify(200, "not json"), Outcome::Delivered));
}
