//! The checked-in JSON Schemas in `proto/` must equal what the Rust types generate.
//!
//! Drift fails the build. To update after changing a wire type:
//!
//! ```text
//! UPDATE_SCHEMAS=1 cargo test -p cxb-wire --test schema
//! ```

use std::path::PathBuf;

use cxb_wire::config::config_schema;
use cxb_wire::result::{
    results_schema, CallEvent, CallResultsPayload, DisconnectedBy, LatencySummary, LlmCacheSummary, LlmPurpose,
    LlmUsageEntry, Speaker, TranscriptEntry, TurnLatency, UsageMetrics,
};
use serde_json::{json, Value};

fn proto_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

fn render(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("schema serialises");
    s.push('\n');
    s
}

fn check(file: &str, generated: &Value) {
    let path = proto_dir().join(file);
    let want = render(generated);
    if std::env::var_os("UPDATE_SCHEMAS").is_some_and(|v| v != "0") {
        std::fs::write(&path, &want).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(have.lines().count().min(want.lines().count()));
        panic!(
            "proto/{file} is out of date with the Rust types (first difference at line {}).\n\
             Regenerate it and commit the result:\n\n    UPDATE_SCHEMAS=1 cargo test -p cxb-wire --test schema\n",
            line + 1
        );
    }
}

#[test]
fn results_schema_is_checked_in_and_current() {
    check("results.schema.json", &results_schema());
}

#[test]
fn config_schema_is_checked_in_and_current() {
    check("config.schema.json", &config_schema());
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::new(schema).expect("the generated schema is a valid draft 2020-12 schema")
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

fn full_payload() -> CallResultsPayload {
    let mut analysis = serde_json::Map::new();
    analysis.insert("DISPOSITION".into(), json!("Connected"));
    analysis.insert("callback_requested".into(), json!(false));
    CallResultsPayload {
        session_id: "s-1".into(),
        bot_id: Some("demo".into()),
        stream_id: Some("st".into()),
        caller_id: Some("+9198".into()),
        from_number: Some("+9111".into()),
        call_direction: Some("outgoing".into()),
        transport: Some("websocket".into()),
        started_at: Some("2026-01-01T00:00:00.000Z".into()),
        ended_at: Some("2026-01-01T00:01:00.000Z".into()),
        call_duration_seconds: 60.0,
        disconnected_by: Some(DisconnectedBy::Customer),
        transcript: vec![TranscriptEntry {
            speaker: Speaker::Bot,
            text: "Hello".into(),
            timestamp: "2026-01-01T00:00:00.500Z".into(),
            offset_seconds: 0.5,
            interrupted: true,
        }],
        events: vec![CallEvent {
            kind: "transfer_sent".into(),
            timestamp: "2026-01-01T00:00:30.000Z".into(),
            offset_seconds: 30.0,
            data: json!({"destination": "+9100"}).as_object().cloned().unwrap_or_default(),
        }],
        intents: Some(vec![json!({"intent": "pay"})]),
        recording_url: Some("https://x/r.wav".into()),
        recording_key: Some("recordings/2026/01/01/s-1.wav".into()),
        recording_access_token: None,
        post_call_analysis: Some(analysis.clone()),
        qc_analysis: Some(analysis),
        latency: Some(LatencySummary {
            turns: 1,
            stt_final_delay_avg_ms: Some(100.0),
            total_avg_response_ms: Some(900.0),
            ..Default::default()
        }),
        latency_samples: Some(vec![TurnLatency { turn: 1, stt_final_delay_ms: 100.0, ..Default::default() }]),
        usage_metrics: Some(UsageMetrics {
            llm: vec![LlmUsageEntry {
                purpose: LlmPurpose::PostCall,
                model: Some("m".into()),
                requests: 1,
                prompt_tokens: 10,
                completion_tokens: 2,
                total_tokens: 12,
                cache_read_input_tokens: 0,
                cache_creation_input_tokens: 0,
                cache_status: Some("miss".into()),
            }],
            tts_characters: 5,
            stt_audio_seconds: 60.0,
        }),
        llm_cache_summary: Some(LlmCacheSummary { enabled: true, ..Default::default() }),
        pipeline_config: Some(serde_json::Map::new()),
        connected_event: Some(serde_json::Map::new()),
        was_transferred: Some(true),
        transfer_destination: Some("+9100".into()),
        transfer_target: Some("sales".into()),
        transfer_reason: Some("asked".into()),
        transfer_method: Some("websocket_reverse_transfer".into()),
        transfer_at: Some(30.0),
        transfer_failed_reason: None,
    }
}

#[test]
fn payloads_validate_and_nulls_or_unknown_enums_do_not() {
    let v = validator(&results_schema());
    let doc = serde_json::to_value(full_payload()).unwrap();
    assert!(errors(&v, &doc).is_empty(), "{:?}", errors(&v, &doc));
    let minimal = serde_json::to_value(CallResultsPayload {
        session_id: "s".into(),
        disconnected_by: Some(DisconnectedBy::Rnr),
        ..Default::default()
    })
    .unwrap();
    assert!(errors(&v, &minimal).is_empty(), "{:?}", errors(&v, &minimal));

    for (ptr, bad) in [
        ("/recording_url", Value::Null),
        ("/disconnected_by", json!("hung_up")),
        ("/transcript/0/speaker", json!("agent")),
        ("/latency/turns", json!(-1)),
        ("/usage_metrics/llm/0/purpose", json!("chat")),
        ("/post_call_analysis", json!("not an object")),
        ("/was_transferred", json!("yes")),
    ] {
        let mut d = doc.clone();
        *d.pointer_mut(ptr).unwrap_or_else(|| panic!("{ptr}")) = bad.clone();
        assert!(!errors(&v, &d).is_empty(), "{ptr} = {bad} must be rejected");
    }
    let mut missing = doc.clone();
    missing.as_object_mut().unwrap().remove("disconnected_by");
    assert!(!errors(&v, &missing).is_empty(), "disconnected_by is required");
}

#[test]
fn the_demo_bot_and_a_null_heavy_config_validate_against_the_config_schema() {
    let v = validator(&config_schema());
    let mut demo: Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/bots/demo.json"))
            .unwrap(),
    )
    .unwrap();
    // Local bot files get their session_id from the worker.
    demo["session_id"] = json!("s-local");
    assert!(errors(&v, &demo).is_empty(), "{:?}", errors(&v, &demo));
    let nully = json!({"session_id":"s","webhook_url":"http://x","system_prompt":null,"opening_message":"hi",
        "timezone":null,"tools":null,"auto_dispositions":{"rnr":{"DISPOSITION":"X"}},"qc_prompt":null,
        "nxlink":{"url":"https://nx/cb","access_key":"AK","secret":"S","auto_flow_id":207}});
    assert!(errors(&v, &nully).is_empty(), "{:?}", errors(&v, &nully));
    let bad = json!({"session_id":"s","auto_dispositions":{"rnr":{"SUB_DISPOSITION":"no disposition"}}});
    assert!(!errors(&v, &bad).is_empty(), "an override without DISPOSITION is invalid");
}

#[test]
fn documented_field_names_are_exactly_the_contracts() {
    let schema = results_schema();
    let props = schema["properties"].as_object().unwrap();
    // contract §5, seed 001
    for f in [
        "session_id",
        "stream_id",
        "caller_id",
        "from_number",
        "call_direction",
        "call_duration_seconds",
        "disconnected_by",
        "transcript",
        "events",
        "intents",
        "recording_url",
        "recording_key",
        "recording_access_token",
        "post_call_analysis",
        "qc_analysis",
        "latency",
        "latency_samples",
        "usage_metrics",
        "llm_cache_summary",
        "pipeline_config",
        "connected_event",
        "was_transferred",
        "transfer_destination",
        "transfer_target",
        "transfer_reason",
        "transfer_method",
        "transfer_at",
        "transfer_failed_reason",
    ] {
        assert!(props.contains_key(f), "missing documented field {f}");
    }
    assert_eq!(schema["additionalProperties"], json!(false), "stray keys must fail validation");
    // seed 000: token-only facts plus enabled/worked/statuses, never money
    let cache = &schema["$defs"]["LlmCacheSummary"]["properties"];
    let mut keys: Vec<&str> = cache.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "completion_tokens",
            "enabled",
            "fresh_prompt_tokens",
            "statuses",
            "worked"
        ]
    );
    assert!(schema["$defs"]["LatencySummary"]["properties"].get("total_avg_response_ms").is_some());
    let disc: Vec<&str> =
        schema["$defs"]["DisconnectedBy"]["enum"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(disc, DisconnectedBy::ALL.map(DisconnectedBy::as_str));
}
