//! The fake CXB API: runtime config endpoint (contract §3 #1, §4), results receiver (§3 #4, §5),
//! SIP DID and outbound-trunk lookups (§3 #2, #3), the Agent Desk receiver (§3 #6, §6.7; keys
//! in docs/agent-desk.md), knowledge search (§3 #8; shapes in crates/cxb-knowledge/src/api.rs)
//! and the `/sim/*` inspection and control endpoints.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// SIP DID and outbound-trunk lookups received (last [`KEPT`]).
    pub sip_lookups: VecDeque<Value>,
    /// Agent Desk requests received, accepted or not (last [`KEPT`]).
    pub agent_desk: VecDeque<Value>,
    /// Call ids enqueued so far (at most [`KEPT_CALLS`]), to flag duplicate enqueues.
    pub agent_desk_calls: HashSet<String>,
    /// Enqueue requests still to answer 503; `None` until first used (then taken from the
    /// script's `agent_desk.enqueue_503`, so `/sim/reset` re-arms the scripted count).
    pub agent_desk_enqueue_503: Option<u32>,
    /// Knowledge searches received, answered or not (last [`KEPT`]).
    pub knowledge_requests: VecDeque<Value>,
    /// `/sim/control` `knowledge_status`: answer every knowledge search with this status.
    pub knowledge_status: Option<u16>,
    /// `/sim/control` `knowledge_delay_ms`: wait this long before answering a knowledge search.
    pub knowledge_delay_ms: u64,
}

/// How many SIP lookups and Agent Desk requests the fake API remembers.
pub const KEPT: usize = 1000;
/// How many enqueued call ids are remembered for duplicate detection.
pub const KEPT_CALLS: usize = 100_000;

fn push_bounded(list: &mut VecDeque<Value>, v: Value) {
    if list.len() == KEPT {
        list.pop_front();
    }
    list.push_back(v);
}

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/api/v1/config/{bot_id}", get(config))
        .route("/api/v1/call-results", post(results))
        .route("/api/v1/sip/lookup", get(sip_lookup))
        .route("/api/v1/sip/outbound-trunk", get(outbound_trunk))
        .route("/api/v1/agent-desk/enqueue", post(agent_desk_enqueue))
        .route("/api/v1/agent-desk/calls/{call_id}/{update}", post(agent_desk_update))
        .route("/api/v1/knowledge/search", post(knowledge_search))
        .route("/sim/knowledge-requests", get(list_knowledge_requests))
        .route("/sim/agent-desk", get(list_agent_desk))
        .route("/sim/sip-lookups", get(list_sip_lookups))
        .route("/sim/config-requests", get(list_config_requests))
        .route("/sim/results", get(list_results))
        .route("/sim/results/{session_id}", get(one_result))
        .route("/sim/rejections", get(list_rejections))
        .route("/sim/control", post(control))
        .route("/sim/settings", get(settings))
        .route("/sim/stats", get(stats))
        .route("/sim/timings", get(timings).delete(clear_timings))
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
            _ => {
                let cfg = bot_config(&state, &bot_id);
                // The session this config opens: every one must end in a result.
                record.insert("session_id".into(), cfg["session_id"].clone());
                Json(cfg).into_response()
            }
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
    if let Some(speech) = speech_bot(bot_id) {
        merge(&mut cfg, &speech);
    }
    if let Some(overrides) = state.script.bots.get(bot_id) {
        merge(&mut cfg, &Value::Object(overrides.clone()));
    }
    cfg
}

/// The original's Indian-language provider set, served on the same doubles: `demo-hindi`
/// (Soniox STT, Sarvam TTS), `demo-sarvam` (Sarvam STT and TTS), `demo-aura` (Deepgram Aura TTS).
fn speech_bot(bot_id: &str) -> Option<Value> {
    let soniox = json!({"provider": "soniox", "model": "stt-rt-v4", "language": "hi",
        "extra": {"language_hints": ["hi", "en"]}});
    let sarvam_stt = json!({"provider": "sarvam", "model": "saaras:v3", "language": "hi-IN", "extra": {}});
    let sarvam_tts = json!({"provider": "sarvam", "model": "bulbul:v2", "voice_id": "anushka", "language": "hi-IN"});
    let aura = json!({"provider": "deepgram", "model": "aura-2-thalia-en"});
    match bot_id {
        "demo-hindi" => Some(json!({"stt": soniox, "tts": sarvam_tts})),
        "demo-sarvam" => Some(json!({"stt": sarvam_stt, "tts": sarvam_tts})),
        "demo-aura" => Some(json!({"tts": aura})),
        _ => None,
    }
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

async fn timings(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(state.timings.json())
}

async fn clear_timings(State(state): State<Arc<SimState>>) -> StatusCode {
    state.timings.clear();
    StatusCode::NO_CONTENT
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

/// `POST /sim/control`: `{"results_status":503}`, `{"config_status":500}`,
/// `{"agent_desk_enqueue_503":2}` (the next 2 Agent Desk enqueues answer 503),
/// `{"knowledge_status":503}` (every knowledge search answers 503; 200 restores),
/// `{"knowledge_delay_ms":4000}`, and any latency setting (`llm_ttft_ms`, ...). Answers with the
/// current control state.
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
        ("tts_connect_ms", &l.tts_connect_ms),
    ] {
        if let Some(x) = v.get(key) {
            match x.as_u64() {
                Some(ms) => target.store(ms, Ordering::Relaxed),
                None => return detail(StatusCode::BAD_REQUEST, &format!("{key} must be a non-negative integer")),
            }
        }
    }
    if let Some(x) = v.get("agent_desk_enqueue_503") {
        match x.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => lock(&state.api).agent_desk_enqueue_503 = Some(n),
            None => return detail(StatusCode::BAD_REQUEST, "agent_desk_enqueue_503 must be a non-negative integer"),
        }
    }
    if let Some(x) = v.get("knowledge_status") {
        match x.as_u64().filter(|s| (100..=599).contains(s)) {
            Some(s) => lock(&state.api).knowledge_status = (s != 200).then_some(s as u16),
            None => return detail(StatusCode::BAD_REQUEST, "knowledge_status must be an HTTP status 100..=599"),
        }
    }
    if let Some(x) = v.get("knowledge_delay_ms") {
        match x.as_u64().filter(|ms| *ms <= 600_000) {
            Some(ms) => lock(&state.api).knowledge_delay_ms = ms,
            None => return detail(StatusCode::BAD_REQUEST, "knowledge_delay_ms must be an integer 0..=600000"),
        }
    }
    let mut out = state.settings_json();
    out["results_status"] = json!(state.results_status.load(Ordering::Relaxed));
    out["config_status"] = json!(state.config_status.load(Ordering::Relaxed));
    {
        let mut api = lock(&state.api);
        out["agent_desk_enqueue_503"] = json!(enqueue_503_remaining(&state, &mut api));
        out["knowledge_status"] = json!(api.knowledge_status.unwrap_or(200));
        out["knowledge_delay_ms"] = json!(api.knowledge_delay_ms);
    }
    Json(out).into_response()
}

fn enqueue_503_remaining(state: &SimState, api: &mut ApiStore) -> u32 {
    *api.agent_desk_enqueue_503.get_or_insert(state.script.agent_desk.enqueue_503)
}

/// Consumes one injected enqueue 503, if any are left.
fn take_injected_503(state: &SimState, api: &mut ApiStore) -> bool {
    let remaining = enqueue_503_remaining(state, api);
    if remaining == 0 {
        return false;
    }
    api.agent_desk_enqueue_503 = Some(remaining - 1);
    true
}

// ---------------------------------------------------------------------------------------------
// SIP lookups (contract §3 calls 2 and 3)

fn record_lookup(
    state: &SimState,
    mut record: Map<String, Value>,
    present: Map<String, Value>,
    secret_ok: bool,
    status: StatusCode,
) {
    record.insert("at".into(), json!(now_rfc3339()));
    record.insert("secret_headers".into(), Value::Object(present));
    record.insert("secret_ok".into(), json!(secret_ok));
    record.insert("status".into(), json!(status.as_u16()));
    push_bounded(&mut lock(&state.api).sip_lookups, Value::Object(record));
}

/// `GET /api/v1/sip/lookup?number=`: the bot for a dialed number (script `sip_numbers`).
async fn sip_lookup(
    State(state): State<Arc<SimState>>,
    Query(query): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let (present, secret_ok) = check_secret(&state, &headers);
    let number = query.get("number").cloned();
    let mut record = Map::new();
    record.insert("kind".into(), json!("lookup"));
    record.insert("number".into(), json!(number.clone().unwrap_or_default()));
    // The raw query shows encoding bugs: an unencoded `+` arrives as a space in `number`.
    record.insert("raw_query".into(), json!(uri.query().unwrap_or_default()));
    let response = if !secret_ok {
        detail(StatusCode::FORBIDDEN, "invalid or missing secret")
    } else {
        match number.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            None => detail(StatusCode::UNPROCESSABLE_ENTITY, "query parameter number is required"),
            Some(n) => match state.script.sip_number(n) {
                Some(m) => Json(m).into_response(),
                None => detail(StatusCode::NOT_FOUND, "No bot mapped to this number"),
            },
        }
    };
    record_lookup(&state, record, present, secret_ok, response.status());
    response
}

/// `GET /api/v1/sip/outbound-trunk?from_number=`: the trunk to dial out on (script
/// `outbound_trunks`; an empty `from_number` lets the API choose).
async fn outbound_trunk(
    State(state): State<Arc<SimState>>,
    Query(query): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let (present, secret_ok) = check_secret(&state, &headers);
    let from = query.get("from_number").map(|s| s.trim().to_string()).unwrap_or_default();
    let mut record = Map::new();
    record.insert("kind".into(), json!("outbound_trunk"));
    record.insert("from_number".into(), json!(from));
    record.insert("raw_query".into(), json!(uri.query().unwrap_or_default()));
    let response = if !secret_ok {
        detail(StatusCode::FORBIDDEN, "invalid or missing secret")
    } else {
        match state.script.outbound_trunk(&from) {
            Some(t) => Json(t).into_response(),
            None => detail(StatusCode::NOT_FOUND, "No outbound trunk available"),
        }
    };
    record_lookup(&state, record, present, secret_ok, response.status());
    response
}

async fn list_sip_lookups(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(Value::Array(lock(&state.api).sip_lookups.iter().cloned().collect()))
}

// ---------------------------------------------------------------------------------------------
// Agent Desk receiver (contract §3 call 6, §6.7; body keys: docs/agent-desk.md)

/// The update routes under `/api/v1/agent-desk/calls/{call_id}/`.
pub const AGENT_DESK_UPDATES: [&str; 4] = ["events", "transcript", "recording", "customer-disconnected"];

fn want_str(o: &Map<String, Value>, key: &str, at: &str) -> Result<(), String> {
    match o.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(()),
        Some(Value::String(_)) => Err(format!("{at}{key} must not be empty")),
        Some(_) => Err(format!("{at}{key} must be a string")),
        None => Err(format!("missing field {at}{key}")),
    }
}

fn want_opt_str(o: &Map<String, Value>, key: &str, at: &str) -> Result<(), String> {
    match o.get(key) {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(format!("{at}{key} must be a string")),
    }
}

fn want_seconds(o: &Map<String, Value>, key: &str, at: &str) -> Result<(), String> {
    match o.get(key) {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0) => Ok(()),
        Some(_) => Err(format!("{at}{key} must be a number >= 0")),
        None => Err(format!("missing field {at}{key}")),
    }
}

fn want_bool(o: &Map<String, Value>, key: &str) -> Result<(), String> {
    match o.get(key) {
        Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(format!("{key} must be a boolean")),
        None => Err(format!("missing field {key}")),
    }
}

fn want_time(o: &Map<String, Value>, key: &str, at: &str) -> Result<(), String> {
    want_str(o, key, at)?;
    let s = o.get(key).and_then(Value::as_str).unwrap_or_default();
    chrono::DateTime::parse_from_rfc3339(s).map(|_| ()).map_err(|e| format!("{at}{key} is not RFC 3339: {e}"))
}

fn want_object<'a>(o: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a Map<String, Value>, String> {
    match o.get(key) {
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("{at}{key} must be an object")),
        None => Err(format!("missing field {at}{key}")),
    }
}

fn validate_transcript(o: &Map<String, Value>) -> Result<(), String> {
    let Some(Value::Array(items)) = o.get("transcript") else { return Err("transcript must be an array".into()) };
    for (i, item) in items.iter().enumerate() {
        let at = format!("transcript[{i}].");
        let Value::Object(t) = item else { return Err(format!("transcript[{i}] must be an object")) };
        match t.get("role") {
            Some(Value::String(r)) if r == "customer" || r == "bot" => {}
            _ => return Err(format!("{at}role must be customer|bot")),
        }
        if !matches!(t.get("text"), Some(Value::String(_))) {
            return Err(format!("{at}text must be a string"));
        }
        want_seconds(t, "at_seconds", &at)?;
    }
    Ok(())
}

/// Validates an Agent Desk body the way a strict CXB API would (and: no nulls anywhere).
pub fn validate_agent_desk(request: &str, v: &Value) -> Result<(), String> {
    let Value::Object(o) = v else { return Err("body must be a JSON object".into()) };
    let mut path = String::from("$");
    if find_null(v, &mut path) {
        return Err(format!("null value at {path} (absent fields must be omitted, not null)"));
    }
    match request {
        "enqueue" => {
            for key in ["call_id", "session_id", "room_name", "bot_id", "transport", "escalation_reason"] {
                want_str(o, key, "")?;
            }
            want_time(o, "enqueued_at", "")?;
            let caller = want_object(o, "caller", "")?;
            want_str(caller, "identity", "caller.")?;
            want_opt_str(caller, "number", "caller.")?;
            let target = want_object(o, "target", "")?;
            want_str(target, "label", "target.")?;
            want_str(target, "value", "target.")?;
            want_opt_str(target, "id", "target.")?;
            validate_transcript(o)?;
            if want_object(o, "variables", "")?.values().any(|v| !v.is_string()) {
                return Err("variables values must be strings".into());
            }
            want_object(o, "context", "")?;
        }
        "events" => {
            let Some(Value::Array(events)) = o.get("events") else { return Err("events must be an array".into()) };
            if events.is_empty() {
                return Err("events must not be empty".into());
            }
            for (i, e) in events.iter().enumerate() {
                let at = format!("events[{i}].");
                let Value::Object(e) = e else { return Err(format!("events[{i}] must be an object")) };
                want_str(e, "type", &at)?;
                want_time(e, "at", &at)?;
                want_object(e, "data", &at)?;
            }
        }
        "transcript" => {
            validate_transcript(o)?;
            want_bool(o, "final")?;
        }
        "recording" => {
            want_str(o, "recording_key", "")?;
            want_opt_str(o, "recording_url", "")?;
            want_seconds(o, "duration_seconds", "")?;
        }
        "customer-disconnected" => {
            want_str(o, "reason", "")?;
            want_time(o, "at", "")?;
            want_seconds(o, "hold_seconds", "")?;
            want_bool(o, "agent_joined")?;
        }
        other => return Err(format!("unknown Agent Desk request {other:?}")),
    }
    Ok(())
}

/// Checks, records and answers one Agent Desk request.
fn agent_desk_request(
    state: &SimState,
    request: &str,
    path: &str,
    call_id: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let (present, secret_ok) = check_secret(state, headers);
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let mut api = lock(&state.api);
    let inject_503 = secret_ok && request == "enqueue" && take_injected_503(state, &mut api);
    let response = if !secret_ok {
        detail(StatusCode::FORBIDDEN, "invalid or missing secret")
    } else if inject_503 {
        detail(StatusCode::SERVICE_UNAVAILABLE, "injected: agent desk unavailable")
    } else {
        let ct_json = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
        let checked = match (&parsed, ct_json) {
            (_, false) => Err("Content-Type must be application/json".to_string()),
            (None, true) => Err("body is not valid JSON".to_string()),
            (Some(v), true) => validate_agent_desk(request, v),
        };
        match checked {
            Err(reason) => {
                tracing::warn!(%reason, request, "agent desk request rejected");
                detail(StatusCode::UNPROCESSABLE_ENTITY, &reason)
            }
            Ok(()) if request == "enqueue" => {
                let id = parsed.as_ref().and_then(|v| v.get("call_id")).and_then(Value::as_str).unwrap_or_default();
                let duplicate = api.agent_desk_calls.contains(id);
                if !duplicate && api.agent_desk_calls.len() < KEPT_CALLS {
                    api.agent_desk_calls.insert(id.to_string());
                }
                tracing::info!(call_id = %id, duplicate, "agent desk enqueue stored");
                Json(json!({"status": "queued", "call_id": id, "duplicate": duplicate})).into_response()
            }
            Ok(()) => {
                // Updates are accepted for calls not (yet) enqueued: the worker's outbox
                // delivers at least once and in no particular order.
                let id = call_id.unwrap_or_default();
                let known = api.agent_desk_calls.contains(id);
                Json(json!({"status": "ok", "call_id": id, "known_call": known})).into_response()
            }
        }
    };
    let mut record = json!({
        "at": now_rfc3339(),
        "path": path,
        "request": request,
        "body": parsed.unwrap_or_else(|| json!(String::from_utf8_lossy(body))),
        "status": response.status().as_u16(),
        "secret_headers": present,
        "secret_ok": secret_ok,
    });
    if let Some(id) = call_id {
        record["call_id"] = json!(id);
    }
    push_bounded(&mut api.agent_desk, record);
    response
}

async fn agent_desk_enqueue(
    State(state): State<Arc<SimState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    agent_desk_request(&state, "enqueue", uri.path(), None, &headers, &body)
}

async fn agent_desk_update(
    State(state): State<Arc<SimState>>,
    Path((call_id, update)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(request) = AGENT_DESK_UPDATES.iter().find(|u| **u == update) else {
        return detail(StatusCode::NOT_FOUND, "Not Found");
    };
    agent_desk_request(&state, request, uri.path(), Some(&call_id), &headers, &body)
}

async fn list_agent_desk(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(Value::Array(lock(&state.api).agent_desk.iter().cloned().collect()))
}

// ---------------------------------------------------------------------------------------------
// Knowledge search (contract §3 call 8; request and response shapes: crates/cxb-knowledge)

/// The knowledge base the fake searches; an empty `kb_ids` searches it too.
pub const FAKE_KB_ID: &str = "kb_demo";

/// The fake's knowledge base: (chunk_id, document_id, title, text), on the demo line's topics.
const FAKE_KB: [(&str, &str, &str, &str); 4] = [
    (
        "orders-1",
        "doc-orders",
        "Orders and delivery",
        "Orders placed before 2 pm ship the same day. Standard delivery takes 2 to 4 working days in metro \
         cities, and a tracking link is sent by SMS when the order ships.",
    ),
    (
        "orders-2",
        "doc-orders",
        "Order status",
        "To check an order status the agent needs the order number (CXB followed by 8 digits) or the \
         registered mobile number. Statuses: confirmed, packed, shipped, out for delivery, delivered.",
    ),
    (
        "billing-1",
        "doc-billing",
        "Billing",
        "Monthly bills are issued on the 1st and are due by the 10th; a late fee of Rs 50 applies after \
         that. A bill can be paid by UPI, card or net banking.",
    ),
    (
        "refunds-1",
        "doc-refunds",
        "Returns and refunds",
        "Refunds reach the original payment method 5 to 7 working days after the returned item arrives \
         at the warehouse.",
    ),
];

/// Lowercase words of 3+ letters, a plural `s` dropped, minus filler words.
fn fake_terms(text: &str) -> HashSet<String> {
    const FILLER: [&str; 14] =
        ["the", "and", "for", "you", "your", "what", "how", "when", "does", "can", "with", "are", "want", "have"];
    text.split(|c: char| !c.is_alphanumeric())
        .map(|w| w.to_lowercase())
        .filter(|w| w.chars().count() >= 3 && !FILLER.contains(&w.as_str()))
        .map(|w| w.strip_suffix('s').map(str::to_string).unwrap_or(w))
        .collect()
}

/// Hits of the fake knowledge base: the share of query words a chunk has, mapped to the
/// 0.2–0.9 range real similarity scores live in; chunks sharing no word are not hits.
pub fn fake_knowledge_hits(query: &str, top_k: usize, threshold: f64) -> Vec<Value> {
    let wanted = fake_terms(query);
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut hits: Vec<(f64, Value)> = FAKE_KB
        .iter()
        .filter_map(|(chunk_id, document_id, title, text)| {
            let have = fake_terms(&format!("{title} {text}"));
            let shared = wanted.intersection(&have).count();
            let score = (0.2 + 0.7 * shared as f64 / wanted.len() as f64) * 1000.0;
            let score = score.round() / 1000.0;
            (shared > 0 && score >= threshold).then(|| {
                let hit = json!({"chunk_id": chunk_id, "document_id": document_id, "kb_id": FAKE_KB_ID,
                    "text": text, "score": score, "title": title});
                (score, hit)
            })
        })
        .collect();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0));
    hits.into_iter().take(top_k).map(|(_, h)| h).collect()
}

/// Checks a search body; `(query, kb_ids, top_k, score_threshold)`.
fn parse_knowledge_search(v: &Value) -> Result<(String, Vec<String>, usize, f64), String> {
    let Value::Object(o) = v else { return Err("body must be a JSON object".into()) };
    let query = match o.get("query") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.clone(),
        Some(Value::String(_)) => return Err("query must not be empty".into()),
        _ => return Err("query must be a string".into()),
    };
    let kb_ids = match o.get("kb_ids") {
        None => Vec::new(),
        Some(Value::Array(ids)) if ids.iter().all(Value::is_string) => {
            ids.iter().filter_map(Value::as_str).map(str::to_string).collect()
        }
        Some(_) => return Err("kb_ids must be an array of strings".into()),
    };
    let top_k = match o.get("top_k") {
        None => 3,
        Some(k) => match k.as_u64().filter(|k| (1..=10).contains(k)) {
            Some(k) => k as usize,
            None => return Err("top_k must be an integer 1..=10".into()),
        },
    };
    let threshold = match o.get("score_threshold") {
        None => 0.0,
        Some(t) => match t.as_f64().filter(|t| (0.0..=1.0).contains(t)) {
            Some(t) => t,
            None => return Err("score_threshold must be a number 0..=1".into()),
        },
    };
    Ok((query, kb_ids, top_k, threshold))
}

/// `POST /api/v1/knowledge/search`: checks the secret and the body, records the request, and
/// answers from [`FAKE_KB`] (kb [`FAKE_KB_ID`]).
async fn knowledge_search(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (present, secret_ok) = check_secret(&state, &headers);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let (injected, delay_ms) = {
        let api = lock(&state.api);
        (api.knowledge_status, api.knowledge_delay_ms)
    };
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    let response = if !secret_ok {
        detail(StatusCode::FORBIDDEN, "invalid or missing secret")
    } else if let Some(status) = injected {
        detail(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "injected")
    } else {
        match parsed.as_ref().ok_or_else(|| "body is not valid JSON".to_string()).and_then(parse_knowledge_search) {
            Err(reason) => detail(StatusCode::UNPROCESSABLE_ENTITY, &reason),
            Ok((query, kb_ids, top_k, threshold)) => {
                let searched = kb_ids.is_empty() || kb_ids.iter().any(|k| k == FAKE_KB_ID);
                let results = if searched { fake_knowledge_hits(&query, top_k, threshold) } else { Vec::new() };
                Json(json!({ "results": results })).into_response()
            }
        }
    };
    let record = json!({
        "at": now_rfc3339(),
        "body": parsed.unwrap_or_else(|| json!(String::from_utf8_lossy(&body))),
        "status": response.status().as_u16(),
        "secret_headers": present,
        "secret_ok": secret_ok,
    });
    push_bounded(&mut lock(&state.api).knowledge_requests, record);
    response
}

async fn list_knowledge_requests(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(Value::Array(lock(&state.api).knowledge_requests.iter().cloned().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_payload() -> Value {
        json!({"session_id":"s1","disconnected_by":"customer","call_duration_seconds":12.5,
            "transcript":[{"speaker":"bot","text":"hi","timestamp":"2026-01-01T00:00:00Z"}],
            "events":[{"type":"latency","timestamp":"2026-01-01T00:00:00Z"}]})
    }

    async fn server(script: Value) -> crate::SimServer {
        let script: crate::Script = serde_json::from_value(script).expect("script");
        crate::start(crate::ServeOptions { secret: Some("s3cret".into()), script, ..Default::default() })
            .await
            .expect("server")
    }

    fn script_with(extra: Value) -> Value {
        let mut v: Value = serde_json::from_str(crate::script::EMBEDDED_SCRIPT).expect("json");
        for (k, x) in extra.as_object().cloned().unwrap_or_default() {
            v[k] = x;
        }
        v
    }

    async fn get_json(c: &reqwest::Client, url: &str, secret: Option<(&str, &str)>) -> (u16, Value) {
        send(c.get(url), secret).await
    }

    /// Sends with the optional secret header; the status and the JSON body (Null if none).
    async fn send(mut r: reqwest::RequestBuilder, secret: Option<(&str, &str)>) -> (u16, Value) {
        if let Some((h, v)) = secret {
            r = r.header(h, v);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn sip_lookup_defaults_maps_refuses_and_records() {
        let srv = server(script_with(json!({"sip_numbers": {
            "+911111": {"bot_id": "sales", "carrier_id": "c1", "did_id": "d1"},
            "+912222": null,
        }})))
        .await;
        let c = reqwest::Client::new();
        let base = srv.url("http");
        let ok = Some(("X-CXB-Core-Secret", "s3cret"));
        let url = |n: &str| format!("{base}/api/v1/sip/lookup?number={}", urlencoding_plus(n));
        assert_eq!(
            get_json(&c, &url("+918000000001"), ok).await,
            (200, json!({"bot_id":"demo","carrier_id":"sim-carrier","did_id":"sim-did"}))
        );
        assert_eq!(
            get_json(&c, &url("+911111"), Some(("X-CXBCore-Secret", "s3cret"))).await,
            (200, json!({"bot_id":"sales","carrier_id":"c1","did_id":"d1"}))
        );
        assert_eq!(get_json(&c, &url("+912222"), ok).await.0, 404);
        assert_eq!(get_json(&c, &url("+911111"), None).await.0, 403);
        assert_eq!(get_json(&c, &url("+911111"), Some(("X-CXB-Core-Secret", "wrong"))).await.0, 403);
        assert_eq!(get_json(&c, &format!("{base}/api/v1/sip/lookup"), ok).await.0, 422);
        // An unencoded + is a space to a form decoder: a client bug the fake makes visible.
        assert_eq!(get_json(&c, &format!("{base}/api/v1/sip/lookup?number=+912222"), ok).await.0, 200);

        let (_, list) = get_json(&c, &format!("{base}/sim/sip-lookups"), None).await;
        let list = list.as_array().cloned().unwrap_or_default();
        assert_eq!(list.len(), 7);
        assert_eq!(list[0]["number"], "+918000000001");
        assert_eq!(list[0]["kind"], "lookup");
        assert_eq!(list[0]["secret_ok"], true);
        assert_eq!(list[0]["secret_headers"]["X-CXB-Core-Secret"], true);
        assert_eq!(list[0]["secret_headers"]["X-CXBCore-Secret"], false);
        assert_eq!(list[3]["status"], 403);
        assert_eq!(list[6]["number"], " 912222");
        assert_eq!(list[6]["raw_query"], "number=+912222");
        srv.shutdown().await;
    }

    /// `+` must be percent-encoded in a query (reqwest's `.query()` does this).
    fn urlencoding_plus(n: &str) -> String {
        n.replace('+', "%2B")
    }

    #[tokio::test]
    async fn outbound_trunk_defaults_overrides_and_refuses() {
        let c = reqwest::Client::new();
        let ok = Some(("X-CXB-Core-Secret", "s3cret"));
        let srv = server(script_with(json!({}))).await;
        let base = srv.url("http");
        for q in ["", "?from_number=", "?from_number=%2B919999"] {
            assert_eq!(
                get_json(&c, &format!("{base}/api/v1/sip/outbound-trunk{q}"), ok).await,
                (200, json!({"trunk_id":"ST_sim","number":"+918000000000"})),
                "{q}"
            );
        }
        assert_eq!(get_json(&c, &format!("{base}/api/v1/sip/outbound-trunk"), None).await.0, 403);
        srv.shutdown().await;

        let srv = server(script_with(json!({"outbound_trunks": {
            "+914444": {"trunk_id": "ST_x", "number": "+914444", "max_calls_per_second": 5},
            "*": null,
        }})))
        .await;
        let base = srv.url("http");
        assert_eq!(
            get_json(&c, &format!("{base}/api/v1/sip/outbound-trunk?from_number=%2B914444"), ok).await,
            (200, json!({"trunk_id":"ST_x","number":"+914444","max_calls_per_second":5}))
        );
        assert_eq!(get_json(&c, &format!("{base}/api/v1/sip/outbound-trunk"), ok).await.0, 404);
        let (_, list) = get_json(&c, &format!("{base}/sim/sip-lookups"), None).await;
        assert_eq!(list[0]["kind"], "outbound_trunk");
        assert_eq!(list[0]["from_number"], "+914444");
        assert_eq!(list[1]["status"], 404);
        srv.shutdown().await;
    }

    fn enqueue_body(call_id: &str) -> Value {
        json!({
            "call_id": call_id, "session_id": "s1", "room_name": "call-1", "bot_id": "demo",
            "transport": "livekit_inbound",
            "caller": {"number": "+918000000001", "identity": "sip-+918000000001"},
            "escalation_reason": "asked for a human",
            "target": {"label": "Billing", "value": "billing"},
            "transcript": [{"role": "customer", "text": "human please", "at_seconds": 3.2}],
            "variables": {"call.name": "Asha"},
            "context": {"campaign": {"id": 7}},
            "enqueued_at": "2026-05-19T10:00:00.123Z"
        })
    }

    async fn post(c: &reqwest::Client, url: &str, body: &Value, secret: Option<(&str, &str)>) -> (u16, Value) {
        send(c.post(url).json(body), secret).await
    }

    #[tokio::test]
    async fn agent_desk_requests_are_checked_recorded_and_can_fail_on_purpose() {
        let srv = server(script_with(json!({"agent_desk": {"enqueue_503": 2}}))).await;
        let c = reqwest::Client::new();
        let base = srv.url("http");
        let ok = Some(("X-CXBCore-Secret", "s3cret"));
        let enqueue = format!("{base}/api/v1/agent-desk/enqueue");
        let body = enqueue_body("c-1");

        assert_eq!(post(&c, &enqueue, &body, None).await.0, 403);
        assert_eq!(post(&c, &enqueue, &body, ok).await.0, 503, "scripted 503 #1");
        assert_eq!(post(&c, &enqueue, &body, ok).await.0, 503, "scripted 503 #2");
        assert_eq!(
            post(&c, &enqueue, &body, ok).await,
            (200, json!({"status":"queued","call_id":"c-1","duplicate":false}))
        );
        assert_eq!(post(&c, &enqueue, &body, ok).await.1["duplicate"], true);

        // Control re-arms the failure switch.
        assert_eq!(post(&c, &format!("{base}/sim/control"), &json!({"agent_desk_enqueue_503": 1}), None).await.0, 200);
        assert_eq!(post(&c, &enqueue, &enqueue_body("c-2"), ok).await.0, 503);
        assert_eq!(post(&c, &enqueue, &enqueue_body("c-2"), ok).await.0, 200);

        // Strict bodies: nulls and missing keys are refused with the path named.
        let mut bad = enqueue_body("c-3");
        bad["target"]["id"] = Value::Null;
        let (status, err) = post(&c, &enqueue, &bad, ok).await;
        assert_eq!(
            (status, err["detail"].as_str().unwrap_or_default()),
            (422, "null value at $.target.id (absent fields must be omitted, not null)")
        );
        let mut bad = enqueue_body("c-3");
        bad.as_object_mut().map(|o| o.remove("room_name"));
        assert!(post(&c, &enqueue, &bad, ok).await.1["detail"].as_str().unwrap_or_default().contains("room_name"));

        let calls = format!("{base}/api/v1/agent-desk/calls");
        let updates = [
            (
                "c-1/events",
                json!({"events": [{"type": "agent_joined", "at": "2026-05-19T10:01:00Z", "data": {"identity": "a"}}]}),
            ),
            (
                "c-1/transcript",
                json!({"transcript": [{"role": "bot", "text": "hi", "at_seconds": 0.5}], "final": true}),
            ),
            ("c-1/recording", json!({"recording_key": "recordings/2026/05/19/s1.wav", "duration_seconds": 62.0})),
            (
                "c-1/customer-disconnected",
                json!({"reason": "participant_left", "at": "2026-05-19T10:02:00Z", "hold_seconds": 12.5, "agent_joined": true}),
            ),
            ("never%2Fenqueued/events", json!({"events": [{"type": "x", "at": "2026-05-19T10:01:00Z", "data": {}}]})),
        ];
        for (path, body) in &updates {
            let (status, resp) = post(&c, &format!("{calls}/{path}"), body, ok).await;
            assert_eq!(status, 200, "{path}: {resp}");
            assert_eq!(resp["known_call"], !path.starts_with("never"), "{path}");
        }
        for (path, body) in [
            ("c-1/events", json!({"events": []})),
            ("c-1/events", json!({"events": [{"type": "x", "at": "yesterday", "data": {}}]})),
            (
                "c-1/transcript",
                json!({"transcript": [{"role": "agent", "text": "x", "at_seconds": 1}], "final": false}),
            ),
            ("c-1/recording", json!({"recording_key": "k", "duration_seconds": -1})),
            ("c-1/customer-disconnected", json!({"reason": "x", "at": "2026-05-19T10:02:00Z", "hold_seconds": 1})),
        ] {
            assert_eq!(post(&c, &format!("{calls}/{path}"), &body, ok).await.0, 422, "{path} {body}");
        }
        assert_eq!(post(&c, &format!("{calls}/c-1/unknown"), &json!({}), ok).await.0, 404);
        assert_eq!(post(&c, &format!("{calls}/c-1/events"), &updates[0].1, None).await.0, 403);

        let (_, list) = get_json(&c, &format!("{base}/sim/agent-desk"), None).await;
        let list = list.as_array().cloned().unwrap_or_default();
        assert_eq!(list.len(), 5 + 2 + 2 + 5 + 5 + 1);
        assert_eq!(list[0]["status"], 403);
        assert_eq!(list[3]["path"], "/api/v1/agent-desk/enqueue");
        assert_eq!(list[3]["body"], enqueue_body("c-1"));
        assert_eq!(list[3]["status"], 200);
        assert!(list[3]["at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
        let ev =
            list.iter().find(|r| r["path"] == "/api/v1/agent-desk/calls/never%2Fenqueued/events").expect("recorded");
        assert_eq!(ev["call_id"], "never/enqueued");
        assert_eq!(ev["request"], "events");

        // Reset forgets everything and re-arms the scripted failures.
        assert_eq!(post(&c, &format!("{base}/sim/reset"), &json!({}), None).await.0, 200);
        assert_eq!(get_json(&c, &format!("{base}/sim/agent-desk"), None).await.1, json!([]));
        assert_eq!(post(&c, &enqueue, &body, ok).await.0, 503);
        srv.shutdown().await;
    }

    #[tokio::test]
    async fn knowledge_search_checks_records_and_answers_from_its_kb() {
        let srv = server(script_with(json!({}))).await;
        let c = reqwest::Client::new();
        let base = srv.url("http");
        let url = format!("{base}/api/v1/knowledge/search");
        let ok = Some(("X-CXB-Core-Secret", "s3cret"));
        let body = |query: &str, kb: &str, threshold: f64| {
            json!({"query": query, "kb_ids": [kb], "top_k": 3, "score_threshold": threshold,
                "bot_id": "demo", "session_id": "s-1"})
        };

        let (status, v) = post(&c, &url, &body("I want to check my order status", FAKE_KB_ID, 0.0), ok).await;
        assert_eq!(status, 200, "{v}");
        let results = v["results"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            results.iter().map(|r| r["chunk_id"].clone()).collect::<Vec<_>>(),
            [json!("orders-2"), json!("orders-1")]
        );
        assert_eq!(results[0]["score"], 0.9);
        assert_eq!(results[0]["kb_id"], FAKE_KB_ID);
        assert!(results[1]["score"].as_f64().is_some_and(|s| s > 0.2 && s < 0.9));
        assert!(results[0]["text"].as_str().is_some_and(|t| t.contains("order number")));
        // The threshold, another knowledge base, no matching word.
        assert_eq!(
            post(&c, &url, &body("check my order status", FAKE_KB_ID, 0.5), ok).await.1["results"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(post(&c, &url, &body("order status", "kb_other", 0.0), ok).await.1, json!({"results": []}));
        assert_eq!(post(&c, &url, &body("weather on mars", FAKE_KB_ID, 0.0), ok).await.1, json!({"results": []}));
        // No kb ids: the fake's own.
        let (_, v) = post(&c, &url, &json!({"query": "late fee on my bill"}), ok).await;
        assert_eq!(v["results"][0]["chunk_id"], "billing-1");

        // Refusals: secret, body.
        assert_eq!(post(&c, &url, &body("order", FAKE_KB_ID, 0.0), None).await.0, 403);
        assert_eq!(post(&c, &url, &body("order", FAKE_KB_ID, 0.0), Some(("X-CXBCore-Secret", "nope"))).await.0, 403);
        for bad in [
            json!({"query": " "}),
            json!({"query": "x", "top_k": 0}),
            json!({"query": "x", "kb_ids": "kb"}),
            json!({"query": "x", "score_threshold": 2}),
            json!([1]),
        ] {
            assert_eq!(post(&c, &url, &bad, ok).await.0, 422, "{bad}");
        }
        // Injected failures, then back to normal.
        assert_eq!(post(&c, &format!("{base}/sim/control"), &json!({"knowledge_status": 503}), None).await.0, 200);
        assert_eq!(post(&c, &url, &body("order", FAKE_KB_ID, 0.0), ok).await.0, 503);
        assert_eq!(
            post(&c, &format!("{base}/sim/control"), &json!({"knowledge_status": 200}), None).await.1
                ["knowledge_status"],
            200
        );
        assert_eq!(post(&c, &url, &body("order", FAKE_KB_ID, 0.0), ok).await.0, 200);

        // Everything was recorded, with the secret headers seen.
        let (_, list) = get_json(&c, &format!("{base}/sim/knowledge-requests"), None).await;
        let list = list.as_array().cloned().unwrap_or_default();
        assert_eq!(list.len(), 14);
        assert_eq!(list[0]["body"], body("I want to check my order status", FAKE_KB_ID, 0.0));
        assert_eq!((list[0]["status"].clone(), list[0]["secret_ok"].clone()), (json!(200), json!(true)));
        assert_eq!(list[0]["secret_headers"]["X-CXB-Core-Secret"], true);
        assert_eq!(list[0]["secret_headers"]["X-CXBCore-Secret"], false);
        assert_eq!((list[5]["status"].clone(), list[5]["secret_ok"].clone()), (json!(403), json!(false)));
        assert_eq!(list[12]["status"], 503);
        assert_eq!(post(&c, &format!("{base}/sim/reset"), &json!({}), None).await.0, 200);
        assert_eq!(get_json(&c, &format!("{base}/sim/knowledge-requests"), None).await.1, json!([]));
        srv.shutdown().await;
    }

    #[test]
    fn lists_are_bounded() {
        let mut l = VecDeque::new();
        for i in 0..KEPT + 10 {
            push_bounded(&mut l, json!(i));
        }
        assert_eq!(l.len(), KEPT);
        assert_eq!(l[0], json!(10));
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
