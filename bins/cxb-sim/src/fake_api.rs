//! The fake CXB API: runtime config endpoint (contract §3 #1, §4), results receiver (§3 #4, §5)
//! and the `/sim/*` inspection and control endpoints.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::SimState;

/// Inbound secret header spellings (contract §2.1 / §13.2).
pub const SECRET_HEADERS: [&str; 2] = ["X-CXBCore-Secret", "X-CXB-Core-Secret"];

/// `disconnected_by` values accepted by the receiver (contract §5).
pub const DISCONNECTED_BY: [&str; 10] = [
    "bot",
    "customer",
    "voicemail",
    "RNR",
    "outside_hours",
    "no_answer",
    "rejected",
    "timeout",
    "transfer_to_agent",
    "error",
];

/// What the fake API has seen.
#[derive(Debug, Default)]
pub struct ApiStore {
    pub config_requests: Vec<Value>,
    /// Accepted result payloads in arrival order (duplicates included).
    pub results: Vec<Value>,
    pub rejections: Vec<Value>,
    pub sessions: HashSet<String>,
    pub duplicates: u64,
}

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/api/v1/config/{bot_id}", get(config))
        .route("/api/v1/call-results", post(results))
        .route("/sim/config-requests", get(list_config_requests))
        .route("/sim/results", get(list_results))
        .route("/sim/results/{session_id}", get(one_result))
        .route("/sim/rejections", get(list_rejections))
        .route("/sim/control", post(control))
        .route("/sim/settings", get(settings))
        .route("/sim/stats", get(stats))
        .route("/sim/llm-requests", get(llm_requests))
        .route("/sim/reset", post(reset))
        .route("/sim/health", get(|| async { Json(json!({"status":"ok"})) }))
}

fn detail(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "detail": msg }))).into_response()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// (which secret headers were present, whether the secret check passes)
fn check_secret(state: &SimState, headers: &HeaderMap) -> (Map<String, Value>, bool) {
    let mut present = Map::new();
    let mut ok = state.secret.is_none();
    for name in SECRET_HEADERS {
        let v = headers.get(name).and_then(|v| v.to_str().ok());
        present.insert(name.to_string(), Value::Bool(v.is_some()));
        if let (Some(v), Some(secret)) = (v, state.secret.as_deref()) {
            if v == secret {
                ok = true;
            }
        }
    }
    (present, ok)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn config(
    State(state): State<Arc<SimState>>,
    Path(bot_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    state.counters.config_requests.fetch_add(1, Ordering::Relaxed);
    let (present, secret_ok) = check_secret(&state, &headers);
    let mut record = Map::new();
    record.insert("at".into(), json!(now_rfc3339()));
    record.insert("bot_id".into(), json!(bot_id));
    let mut q: Map<String, Value> = query.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    if let Some(raw) = query.get("connected_event") {
        match serde_json::from_str::<Value>(raw) {
            Ok(v) => {
                q.insert("connected_event".into(), v);
            }
            Err(e) => {
                record.insert("connected_event_error".into(), json!(e.to_string()));
            }
        }
    }
    record.insert("query".into(), Value::Object(q));
    record.insert("secret_headers".into(), Value::Object(present));
    record.insert("secret_ok".into(), json!(secret_ok));

    let injected = state.config_status.load(Ordering::Relaxed);
    let response = if !secret_ok {
        detail(StatusCode::FORBIDDEN, "invalid or missing secret")
    } else if injected != 200 {
        detail(StatusCode::from_u16(injected).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "injected")
    } else {
        match bot_id.as_str() {
            "missing" => detail(StatusCode::NOT_FOUND, "Bot not found"),
            "closed" => detail(StatusCode::SERVICE_UNAVAILABLE, "outside_active_hours: 09:00-18:00 Asia/Kolkata"),
            "deny" => detail(StatusCode::FORBIDDEN, "Forbidden"),
            "broken" => detail(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
            "garbage-config" => (StatusCode::OK, Json(json!({"session_id": 5}))).into_response(),
            "slow-config" => {
                tokio::time::sleep(state.slow_config_delay).await;
                Json(bot_config(&state, &bot_id)).into_response()
            }
            _ => Json(bot_config(&state, &bot_id)).into_response(),
        }
    };
    record.insert("status".into(), json!(response.status().as_u16()));
    lock(&state.api).config_requests.push(Value::Object(record));
    response
}

/// The runtime config served for `bot_id` (contract §4), pointing every provider at this server.
pub fn bot_config(state: &SimState, bot_id: &str) -> Value {
    let addr = state.public_addr();
    let ws = format!("ws://{addr}");
    let dead_ws = "ws://127.0.0.1:9".to_string();
    let max_dur = if bot_id == "short-call" { 8 } else { state.script.bot.max_call_duration_seconds.unwrap_or(600) };
    let endpointing = state.lat.stt_endpointing_ms.load(Ordering::Relaxed);

    let stt = json!({
        "provider": "deepgram",
        "api_key": if bot_id == "stt-badkey" { "bad-key" } else { "sim-key" },
        "model": "nova-3",
        "language": "en",
        "base_url": if bot_id == "stt-down" { dead_ws.clone() } else { ws.clone() },
        "extra": {"endpointing": endpointing, "utterance_end_ms": 1000},
    });
    let llm_model = match bot_id {
        "llm-stall" => "stall",
        "llm-500" => "fail-500",
        _ => "sim-model",
    };
    let llm = json!({
        "provider": "openai",
        "api_key": "sim-key",
        "model": llm_model,
        "base_url": if bot_id == "llm-down" { "http://127.0.0.1:9/v1".to_string() } else { format!("http://{addr}/v1") },
        "temperature": 0.3,
        "max_tokens": 256,
    });
    let (tts_provider, tts_model) =
        if bot_id == "demo-elevenlabs" { ("elevenlabs", "eleven_flash_v2_5") } else { ("cartesia", "sonic-3") };
    let tts = json!({
        "provider": tts_provider,
        "api_key": "sim-key",
        "voice_id": if bot_id == "bad-voice" { "fail-voice" } else { "sim-voice" },
        "model": tts_model,
        "base_url": if bot_id == "tts-down" { dead_ws } else { ws },
    });
    let mut cfg = json!({
        "session_id": uuid::Uuid::new_v4().to_string(),
        "bot_id": bot_id,
        "webhook_url": format!("http://{addr}/api/v1/call-results"),
        "system_prompt": state.script.bot.system_prompt,
        "opening_message": state.script.bot.opening_message,
        "timezone": "UTC",
        "re_engagement": null,
        "min_words_interruption": 3,
        "max_call_duration_seconds": max_dur,
        "voicemail_message": "",
        "pre_transfer_message": "",
        "tools": [],
        "conversation_policy": null,
        "transfer_numbers": {},
        "transfer_targets": [],
        "post_call_analysis_prompt": null,
        "post_call_cache_enabled": false,
        "post_call_cache_version": "",
        "qc_prompt": null,
        "auto_dispositions": null,
        "stt": stt,
        "llm": llm,
        "tts": tts,
        "vad": {"confidence": 0.7, "start_secs": 0.2, "stop_secs": 0.5, "min_volume": 0.6},
    });
    // Credentials for the telephony REST hang-ups, pointed at this server's fakes
    // (`no-telephony`: none, so the worker falls back to closing the socket).
    if bot_id != "no-telephony" {
        cfg["telephony"] = crate::telephony_fakes::config_block(&addr);
    }
    if let Some(overrides) = state.script.bots.get(bot_id) {
        merge(&mut cfg, &Value::Object(overrides.clone()));
    }
    cfg
}

/// Deep merge: objects merge key by key, anything else replaces.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Validates a results body the way CXB API's `CallResultsPayload` model would (plus: no nulls).
pub fn validate_results(v: &Value) -> Result<(), String> {
    let Value::Object(o) = v else { return Err("body must be a JSON object".into()) };
    let mut path = String::from("$");
    if find_null(v, &mut path) {
        return Err(format!("null value at {path} (absent fields must be omitted, not null)"));
    }
    match o.get("session_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(Value::String(_)) => return Err("session_id must not be empty".into()),
        Some(_) => return Err("session_id must be a string".into()),
        None => return Err("missing field session_id".into()),
    }
    match o.get("disconnected_by") {
        Some(Value::String(s)) if DISCONNECTED_BY.contains(&s.as_str()) => {}
        Some(Value::String(s)) => {
            return Err(format!("disconnected_by {s:?} is not one of {}", DISCONNECTED_BY.join("|")));
        }
        Some(_) => return Err("disconnected_by must be a string".into()),
        None => return Err("missing field disconnected_by".into()),
    }
    match o.get("call_duration_seconds") {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0 && f.is_finite()) => {}
        Some(Value::Number(_)) => return Err("call_duration_seconds must be >= 0".into()),
        Some(_) => return Err("call_duration_seconds must be a number".into()),
        None => return Err("missing field call_duration_seconds".into()),
    }
    match o.get("transcript") {
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Value::Object(t) = item else { return Err(format!("transcript[{i}] must be an object")) };
                match t.get("speaker") {
                    Some(Value::String(s)) if s == "customer" || s == "bot" => {}
                    Some(Value::String(s)) => {
                        return Err(format!("transcript[{i}].speaker {s:?} is not customer|bot"));
                    }
                    _ => return Err(format!("transcript[{i}].speaker must be a string")),
                }
                for key in ["text", "timestamp"] {
                    if !matches!(t.get(key), Some(Value::String(_))) {
                        return Err(format!("transcript[{i}].{key} must be a string"));
                    }
                }
            }
        }
        Some(_) => return Err("transcript must be an array".into()),
        None => return Err("missing field transcript".into()),
    }
    match o.get("events") {
        Some(Value::Array(items)) => {
            if let Some(i) = items.iter().position(|e| !e.is_object()) {
                return Err(format!("events[{i}] must be an object"));
            }
        }
        Some(_) => return Err("events must be an array".into()),
        None => return Err("missing field events".into()),
    }
    Ok(())
}

/// Path of the first `null` in a document, JSONPath-like.
pub fn find_null(v: &Value, path: &mut String) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if find_null(x, path) {
                    return true;
                }
                path.truncate(len);
            }
            false
        }
        Value::Object(o) => {
            for (k, x) in o {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                if find_null(x, path) {
                    return true;
                }
                path.truncate(len);
            }
            false
        }
        _ => false,
    }
}

async fn results(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    state.counters.results_posts.fetch_add(1, Ordering::Relaxed);
    let (present, secret_ok) = check_secret(&state, &headers);
    if !secret_ok {
        reject(&state, "invalid or missing secret", None, &present, 403);
        return detail(StatusCode::FORBIDDEN, "invalid or missing secret");
    }
    let injected = state.results_status.load(Ordering::Relaxed);
    if injected != 200 {
        return detail(StatusCode::from_u16(injected).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "injected");
    }
    let ct_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    let parsed: Result<Value, String> = if ct_json {
        serde_json::from_slice(&body).map_err(|e| format!("body is not valid JSON: {e}"))
    } else {
        Err("Content-Type must be application/json".into())
    };
    let outcome = parsed.and_then(|v| validate_results(&v).map(|()| v));
    match outcome {
        Err(reason) => {
            let sid = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("session_id").and_then(Value::as_str).map(str::to_string));
            tracing::warn!(%reason, session_id = ?sid, "results rejected");
            reject(&state, &reason, sid, &present, 422);
            detail(StatusCode::UNPROCESSABLE_ENTITY, &reason)
        }
        Ok(v) => {
            let sid = v.get("session_id").and_then(Value::as_str).unwrap_or_default().to_string();
            if let Some(path) = &state.results_file {
                let line = format!("{v}\n");
                let res = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
                if let Err(e) = res {
                    tracing::error!(path = %path.display(), "cannot append results: {e}");
                }
            }
            {
                let mut api = lock(&state.api);
                if !api.sessions.insert(sid.clone()) {
                    api.duplicates += 1;
                    tracing::info!(session_id = %sid, "duplicate result stored");
                }
                api.results.push(v);
            }
            tracing::info!(session_id = %sid, "result stored");
            Json(json!({"status":"ok","session_id":sid})).into_response()
        }
    }
}

fn reject(state: &SimState, reason: &str, session_id: Option<String>, present: &Map<String, Value>, status: u16) {
    let mut r = json!({"at": now_rfc3339(), "reason": reason, "status": status, "secret_headers": present});
    if let Some(s) = session_id {
        r["session_id"] = json!(s);
    }
    lock(&state.api).rejections.push(r);
}

async fn list_config_requests(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(Value::Array(lock(&state.api).config_requests.clone()))
}

async fn list_results(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(Value::Array(lock(&state.api).results.clone()))
}

async fn one_result(State(state): State<Arc<SimState>>, Path(session_id): Path<String>) -> Response {
    let api = lock(&state.api);
    match api.results.iter().rev().find(|r| r.get("session_id").and_then(Value::as_str) == Some(&session_id)) {
        Some(v) => Json(v.clone()).into_response(),
        None => detail(StatusCode::NOT_FOUND, "no result for this session_id"),
    }
}

async fn list_rejections(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(Value::Array(lock(&state.api).rejections.clone()))
}

async fn settings(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(state.settings_json())
}

async fn stats(State(state): State<Arc<SimState>>) -> Json<Value> {
    let mut v = state.stats_json();
    let api = lock(&state.api);
    v["results_stored"] = json!(api.results.len());
    v["results_unique_sessions"] = json!(api.sessions.len());
    v["results_duplicates"] = json!(api.duplicates);
    v["results_rejected"] = json!(api.rejections.len());
    Json(v)
}

async fn llm_requests(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(Value::Array(lock(&state.llm_requests).iter().cloned().collect()))
}

async fn reset(State(state): State<Arc<SimState>>) -> Json<Value> {
    *lock(&state.api) = ApiStore::default();
    lock(&state.llm_requests).clear();
    state.telephony.reset();
    Json(json!({"status":"ok"}))
}

/// `POST /sim/control`: `{"results_status":503}`, `{"config_status":500}`, and any latency
/// setting (`llm_ttft_ms`, ...). Answers with the current control state.
async fn control(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(o)) => Value::Object(o),
        _ => return detail(StatusCode::BAD_REQUEST, "body must be a JSON object"),
    };
    for (key, target) in [("results_status", &state.results_status), ("config_status", &state.config_status)] {
        if let Some(x) = v.get(key) {
            match x.as_u64().filter(|s| (100..=599).contains(s)) {
                Some(s) => target.store(s as u16, Ordering::Relaxed),
                None => return detail(StatusCode::BAD_REQUEST, &format!("{key} must be an HTTP status 100..=599")),
            }
        }
    }
    let l = &state.lat;
    for (key, target) in [
        ("stt_latency_ms", &l.stt_latency_ms),
        ("stt_endpointing_ms", &l.stt_endpointing_ms),
        ("llm_ttft_ms", &l.llm_ttft_ms),
        ("llm_token_interval_ms", &l.llm_token_interval_ms),
        ("tts_ttfb_ms", &l.tts_ttfb_ms),
    ] {
        if let Some(x) = v.get(key) {
            match x.as_u64() {
                Some(ms) => target.store(ms, Ordering::Relaxed),
                None => return detail(StatusCode::BAD_REQUEST, &format!("{key} must be a non-negative integer")),
            }
        }
    }
    let mut out = state.settings_json();
    out["results_status"] = json!(state.results_status.load(Ordering::Relaxed));
    out["config_status"] = json!(state.config_status.load(Ordering::Relaxed));
    Json(out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_payload() -> Value {
        json!({"session_id":"s1","disconnected_by":"customer","call_duration_seconds":12.5,
            "transcript":[{"speaker":"bot","text":"hi","timestamp":"2026-01-01T00:00:00Z"}],
            "events":[{"type":"latency","timestamp":"2026-01-01T00:00:00Z"}]})
    }

    #[test]
    fn valid_payload_passes() {
        assert_eq!(validate_results(&ok_payload()), Ok(()));
    }

    #[test]
    fn nulls_are_found_anywhere() {
        let mut p = ok_payload();
        p["latency"] = json!({"turns":[{"llm_ms":null}]});
        let err = validate_results(&p).unwrap_err();
        assert!(err.contains("$.latency.turns[0].llm_ms"), "{err}");
        let mut p = ok_payload();
        p["recording_url"] = Value::Null;
        assert!(validate_results(&p).unwrap_err().contains("recording_url"));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "object"),
            (json!({"disconnected_by":"bot","call_duration_seconds":1,"transcript":[],"events":[]}), "session_id"),
            (
                json!({"session_id":"","disconnected_by":"bot","call_duration_seconds":1,"transcript":[],"events":[]}),
                "session_id",
            ),
            (
                json!({"session_id":"s","disconnected_by":"hangup","call_duration_seconds":1,"transcript":[],"events":[]}),
                "disconnected_by",
            ),
            (
                json!({"session_id":"s","disconnected_by":"Bot","call_duration_seconds":1,"transcript":[],"events":[]}),
                "disconnected_by",
            ),
            (
                json!({"session_id":"s","disconnected_by":"rnr","call_duration_seconds":1,"transcript":[],"events":[]}),
                "disconnected_by",
            ),
            (
                json!({"session_id":"s","disconnected_by":"bot","call_duration_seconds":-1,"transcript":[],"events":[]}),
                "call_duration_seconds",
            ),
            (
                json!({"session_id":"s","disconnected_by":"bot","call_duration_seconds":"1","transcript":[],"events":[]}),
                "call_duration_seconds",
            ),
            (json!({"session_id":"s","disconnected_by":"bot","call_duration_seconds":1,"events":[]}), "transcript"),
            (
                json!({"session_id":"s","disconnected_by":"bot","call_duration_seconds":1,"transcript":[{"speaker":"agent","text":"x","timestamp":"t"}],"events":[]}),
                "speaker",
            ),
            (
                json!({"session_id":"s","disconnected_by":"bot","call_duration_seconds":1,"transcript":[{"speaker":"bot","text":1,"timestamp":"t"}],"events":[]}),
                "text",
            ),
            (
                json!({"session_id":"s","disconnected_by":"bot","call_duration_seconds":1,"transcript":[{"speaker":"bot","text":"x"}],"events":[]}),
                "timestamp",
            ),
            (
                json!({"session_id":"s","disconnected_by":"bot","call_duration_seconds":1,"transcript":[],"events":{}}),
                "events",
            ),
        ];
        for (v, needle) in cases {
            let err = validate_results(&v).expect_err(&v.to_string());
            assert!(err.contains(needle), "{v}: {err}");
        }
        for d in DISCONNECTED_BY {
            let mut p = ok_payload();
            p["disconnected_by"] = json!(d);
            assert_eq!(validate_results(&p), Ok(()), "{d}");
        }
    }
}
