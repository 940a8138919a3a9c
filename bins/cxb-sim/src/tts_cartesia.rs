//! Cartesia TTS double: `GET /tts/websocket` (wire-protocols §5, Cartesia).
//!
//! Each context runs in its own task, so contexts are independent: a new context can start while
//! an earlier one is still streaming, and `cancel` stops exactly one context.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::audio::{samples_for_ms, text_duration_ms, word_spans, SpeechSynth};
use crate::{close_ws, DoubleTimings, Latencies, SimState};

pub const SAMPLE_RATES: [u32; 6] = [8000, 16000, 22050, 24000, 44100, 48000];
/// Cartesia closes an idle socket after about 5 minutes.
const IDLE: Duration = Duration::from_secs(300);
const CHUNK_MS: u64 = 100;
/// Longest transcript piece accepted (bounds the audio one request can ask for).
pub const MAX_TRANSCRIPT_CHARS: usize = 5000;

pub async fn handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("").trim();
    if key.is_empty() || key == "bad-key" {
        tracing::warn!("cartesia: rejected upgrade, bad X-API-Key");
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "Invalid API key", "status_code": 401})))
            .into_response();
    }
    if headers.get("cartesia-version").and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim().is_empty()) {
        tracing::warn!("cartesia: rejected upgrade, no Cartesia-Version");
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Cartesia-Version header is required", "status_code": 400})),
        )
            .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => return rej.into_response(),
    };
    state.counters.cartesia_connections.fetch_add(1, Ordering::Relaxed);
    ws.read_buffer_size(crate::WS_READ_BUFFER).on_upgrade(move |socket| run(socket, state))
}

/// One validated generation request.
#[derive(Debug, Clone)]
struct GenReq {
    transcript: String,
    cont: bool,
    add_timestamps: bool,
    flush: bool,
}

/// Context settings fixed by its first request.
#[derive(Debug, Clone, Copy)]
struct CtxFormat {
    sample_rate: u32,
}

struct CtxHandle {
    tx: mpsc::UnboundedSender<GenReq>,
    cancelled: Arc<AtomicBool>,
}

/// A message for the socket, dropped if its context was cancelled before it went out.
type Outgoing = (Option<Arc<AtomicBool>>, String);

fn error_msg(context_id: Option<&str>, title: &str, message: &str, error_code: &str) -> String {
    json!({
        "type": "error",
        "context_id": context_id.unwrap_or(""),
        "done": true,
        "status_code": 400,
        "title": title,
        "message": message,
        "error_code": error_code,
        "doc_url": "https://docs.cartesia.ai/api-reference/tts/websocket",
        "request_id": uuid::Uuid::new_v4().to_string(),
    })
    .to_string()
}

/// Validates a generation request: (request, format) or (title, message, error_code).
fn parse_request(v: &Value) -> Result<(GenReq, CtxFormat), (&'static str, String, &'static str)> {
    let transcript = match v.get("transcript") {
        Some(Value::String(s)) if s.chars().count() > MAX_TRANSCRIPT_CHARS => {
            return Err((
                "Invalid request",
                format!("transcript longer than {MAX_TRANSCRIPT_CHARS} characters"),
                "invalid_request",
            ))
        }
        Some(Value::String(s)) => s.clone(),
        None => return Err(("Invalid request", "transcript is required".into(), "invalid_request")),
        Some(_) => return Err(("Invalid request", "transcript must be a string".into(), "invalid_request")),
    };
    if v.get("model_id").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(("Invalid model", "model_id is required".into(), "model_not_found"));
    }
    let voice = v.get("voice");
    let voice_id = voice.and_then(|vo| vo.get("id")).and_then(Value::as_str);
    match (voice.and_then(|vo| vo.get("mode")).and_then(Value::as_str), voice_id) {
        (Some("id") | None, Some(id)) if !id.is_empty() => {
            if id == "fail-voice" {
                return Err(("Invalid voice", format!("Voice not found: {id}"), "voice_not_found"));
            }
        }
        _ => {
            return Err((
                "Invalid voice",
                "voice must be {\"mode\":\"id\",\"id\":\"<voice id>\"}".into(),
                "invalid_voice",
            ))
        }
    }
    let Some(fmt) = v.get("output_format") else {
        return Err(("Invalid output format", "output_format is required".into(), "invalid_output_format"));
    };
    if let Some(c) = fmt.get("container").and_then(Value::as_str) {
        if c != "raw" {
            return Err((
                "Invalid output format",
                format!("this double only supports container raw, got {c}"),
                "invalid_output_format",
            ));
        }
    }
    match fmt.get("encoding").and_then(Value::as_str) {
        Some("pcm_s16le") => {}
        other => {
            return Err((
                "Invalid output format",
                format!("this double only supports encoding pcm_s16le, got {other:?}"),
                "invalid_output_format",
            ))
        }
    }
    let sample_rate = fmt
        .get("sample_rate")
        .and_then(Value::as_u64)
        .and_then(|r| u32::try_from(r).ok())
        .filter(|r| SAMPLE_RATES.contains(r))
        .ok_or((
            "Invalid output format",
            format!("sample_rate must be one of {SAMPLE_RATES:?}"),
            "invalid_output_format",
        ))?;
    Ok((
        GenReq {
            transcript,
            // Cartesia's `continue` defaults to false: a lone request is a whole context.
            cont: v.get("continue").and_then(Value::as_bool).unwrap_or(false),
            add_timestamps: v.get("add_timestamps").and_then(Value::as_bool).unwrap_or(false),
            flush: v.get("flush").and_then(Value::as_bool).unwrap_or(false),
        },
        CtxFormat { sample_rate },
    ))
}

async fn run(mut socket: WebSocket, state: Arc<SimState>) {
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(64);
    let mut contexts: HashMap<String, CtxHandle> = HashMap::new();
    let mut last_input = Instant::now();
    // One idle timer per socket, re-armed only when it fires early (input arrived meanwhile):
    // a fresh `sleep_until` per loop turn was a timer insert/remove for every audio chunk sent.
    let idle = tokio::time::sleep_until(last_input + IDLE);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let text = match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        let e = error_msg(None, "Invalid message", "binary frames are not supported; send JSON text", "invalid_request");
                        if socket.send(Message::Text(e.into())).await.is_err() { break; }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                last_input = Instant::now();
                let v: Value = match serde_json::from_str(text.as_str()) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        tracing::warn!("cartesia: message is not a JSON object");
                        let e = error_msg(None, "Invalid message", "message must be a JSON object", "invalid_request");
                        if socket.send(Message::Text(e.into())).await.is_err() { break; }
                        continue;
                    }
                };
                let context_id = v.get("context_id").and_then(Value::as_str).map(str::to_string);
                if v.get("cancel").and_then(Value::as_bool) == Some(true) {
                    if let Some(h) = context_id.as_deref().and_then(|c| contexts.remove(c)) {
                        h.cancelled.store(true, Ordering::SeqCst);
                        tracing::debug!(?context_id, "cartesia: context cancelled");
                    }
                    continue;
                }
                let (req, fmt) = match parse_request(&v) {
                    Ok(x) => x,
                    Err((title, message, code)) => {
                        tracing::warn!(?context_id, "cartesia: {title}: {message}");
                        let e = error_msg(context_id.as_deref(), title, &message, code);
                        if socket.send(Message::Text(e.into())).await.is_err() { break; }
                        continue;
                    }
                };
                let cid = context_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let ends = !req.cont;
                let mut req = Some(req);
                if let Some(h) = contexts.get(&cid) {
                    if let Some(r) = req.take() {
                        if let Err(back) = h.tx.send(r) {
                            req = Some(back.0);
                        }
                    }
                }
                if let Some(r) = req {
                    // New context (or the old one already finished).
                    let (tx, rx) = mpsc::unbounded_channel();
                    let cancelled = Arc::new(AtomicBool::new(false));
                    let _ = tx.send(r);
                    state.counters.cartesia_contexts.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(run_context(cid.clone(), fmt, rx, cancelled.clone(), out_tx.clone(), state.clone()));
                    contexts.insert(cid.clone(), CtxHandle { tx, cancelled });
                }
                if ends {
                    // The task finishes the queued audio and sends `done`; a later request with
                    // this id starts a new context.
                    contexts.remove(&cid);
                }
            }
            Some((flag, m)) = out_rx.recv() => {
                if flag.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                    continue;
                }
                if socket.send(Message::Text(m.into())).await.is_err() { break; }
            }
            _ = &mut idle => {
                if Instant::now() < last_input + IDLE {
                    idle.as_mut().reset(last_input + IDLE);
                    continue;
                }
                tracing::info!("cartesia: idle for {IDLE:?}, closing");
                close_ws(&mut socket, 1000, "idle timeout").await;
                break;
            }
        }
    }
    for h in contexts.values() {
        h.cancelled.store(true, Ordering::SeqCst);
    }
}

/// A `chunk` message, written directly: one allocation per chunk, base64 encoded straight into
/// it. (Building it with `json!` cost a map, the base64 string, and an escape scan of that
/// string when serialising — the double's largest CPU cost at hundreds of calls.)
fn chunk_message(cid_json: &str, pcm: &[u8], step_time: f64) -> String {
    use std::fmt::Write;
    let mut m = String::with_capacity(pcm.len().div_ceil(3) * 4 + cid_json.len() + 96);
    m.push_str(r#"{"type":"chunk","context_id":"#);
    m.push_str(cid_json);
    m.push_str(r#","data":""#);
    base64::engine::general_purpose::STANDARD.encode_string(pcm, &mut m);
    // step_time is finite (an elapsed time); `{:?}` prints it as a JSON float ("0.0", "12.5"),
    // as `json!` did.
    let _ = write!(m, r#"","done":false,"status_code":206,"step_time":{step_time:?}}}"#);
    m
}

async fn run_context(
    cid: String,
    fmt: CtxFormat,
    mut rx: mpsc::UnboundedReceiver<GenReq>,
    cancelled: Arc<AtomicBool>,
    out: mpsc::Sender<Outgoing>,
    state: Arc<SimState>,
) {
    let ttfb = Latencies::dur(&state.lat.tts_ttfb_ms);
    let timings = &state.timings;
    let mut first = true;
    let mut synth = SpeechSynth::new(fmt.sample_rate);
    let mut offset_ms = 0.0f64;
    let mut flush_id = 0u64;
    let chunk_samples = samples_for_ms(fmt.sample_rate, CHUNK_MS).max(1);
    let mut pcm = Vec::with_capacity(chunk_samples);
    let mut bytes = Vec::with_capacity(chunk_samples * 2);
    // The context id as a JSON string literal, escaped once for every chunk of the context.
    let cid_json = Value::String(cid.clone()).to_string();
    let is_cancelled = || cancelled.load(Ordering::SeqCst);
    let send = |m: String| {
        let out = out.clone();
        let flag = cancelled.clone();
        async move { out.send((Some(flag), m)).await.is_ok() }
    };
    while let Some(req) = rx.recv().await {
        if is_cancelled() {
            return;
        }
        let mut first_request_at = first.then(Instant::now);
        if first {
            first = false;
            tokio::time::sleep(ttfb).await;
            if is_cancelled() {
                return;
            }
        }
        let dur_ms = text_duration_ms(&req.transcript);
        if dur_ms > 0 {
            let started = Instant::now();
            let mut left = samples_for_ms(fmt.sample_rate, dur_ms);
            while left > 0 {
                if is_cancelled() {
                    return;
                }
                let n = left.min(chunk_samples);
                left -= n;
                pcm.clear();
                synth.render(n, &mut pcm);
                bytes.clear();
                bytes.extend(pcm.iter().flat_map(|s| s.to_le_bytes()));
                let step_time = (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
                if !send(chunk_message(&cid_json, &bytes, step_time)).await {
                    return;
                }
                if let Some(at) = first_request_at.take() {
                    DoubleTimings::record(&timings.tts_ttfb, at);
                }
            }
            if req.add_timestamps {
                let spans = word_spans(&req.transcript, dur_ms as f64);
                let r3 = |ms: f64| ((offset_ms + ms) / 1000.0 * 1000.0).round() / 1000.0;
                let words: Vec<&str> = spans.iter().map(|s| s.0.as_str()).collect();
                let start: Vec<f64> = spans.iter().map(|s| r3(s.1)).collect();
                let end: Vec<f64> = spans.iter().map(|s| r3(s.2)).collect();
                let m = json!({"type":"timestamps","context_id":cid,"done":false,"status_code":206,
                    "word_timestamps":{"words":words,"start":start,"end":end}});
                if !send(m.to_string()).await {
                    return;
                }
            }
            offset_ms += dur_ms as f64;
        }
        if req.flush {
            flush_id += 1;
            let m = json!({"type":"flush_done","context_id":cid,"flush_done":true,"flush_id":flush_id,"done":false,"status_code":206});
            if !send(m.to_string()).await {
                return;
            }
        }
        if !req.cont {
            if !is_cancelled() {
                let _ = send(json!({"type":"done","context_id":cid,"done":true,"status_code":206}).to_string()).await;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(voice: &str, enc: &str, rate: u64) -> Value {
        json!({"context_id":"c","model_id":"sonic-3","transcript":"Hi","continue":true,
            "voice":{"mode":"id","id":voice},"language":"en",
            "output_format":{"container":"raw","encoding":enc,"sample_rate":rate},"add_timestamps":true})
    }

    #[test]
    fn chunk_messages_are_the_documented_json() {
        let cid = Value::String("ctx \"1\"".into()).to_string();
        let m: Value = serde_json::from_str(&chunk_message(&cid, &[1, 0, 255, 127], 12.5)).unwrap();
        assert_eq!(
            m,
            json!({"type":"chunk","context_id":"ctx \"1\"","data":"AQD/fw==","done":false,"status_code":206,"step_time":12.5})
        );
        let m: Value = serde_json::from_str(&chunk_message(&cid, &[], 0.0)).unwrap();
        assert_eq!(m["data"], "");
        assert!(m["step_time"].is_f64(), "{m}");
    }

    #[test]
    fn requests_are_validated() {
        let (r, f) = parse_request(&req("v", "pcm_s16le", 8000)).unwrap();
        assert!(r.cont && r.add_timestamps && !r.flush);
        assert_eq!(f.sample_rate, 8000);
        assert_eq!(parse_request(&req("fail-voice", "pcm_s16le", 8000)).unwrap_err().2, "voice_not_found");
        assert_eq!(parse_request(&req("v", "pcm_f32le", 8000)).unwrap_err().2, "invalid_output_format");
        assert_eq!(parse_request(&req("v", "pcm_s16le", 11025)).unwrap_err().2, "invalid_output_format");
        let mut no_model = req("v", "pcm_s16le", 8000);
        no_model.as_object_mut().unwrap().remove("model_id");
        assert!(parse_request(&no_model).is_err());
        let mut lone = req("v", "pcm_s16le", 8000);
        lone.as_object_mut().unwrap().remove("continue");
        assert!(!parse_request(&lone).unwrap().0.cont);
    }
}
