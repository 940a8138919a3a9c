//! Soniox real-time STT double: `GET /transcribe-websocket` (wire-protocols-2 §1).
//!
//! Strict like the service: the first message must be the JSON configuration with the
//! documented field types (a wrong one is answered `{"error_code":400,…}` and the socket closes,
//! as Soniox does); the API key goes in `Authorization: Bearer` or (deprecated) in the
//! configuration, never both. Caller utterances are found by energy
//! ([`crate::audio::UtteranceDetector`]); utterance N of a connection "is" the script's
//! `stt_transcripts[N]`, sent as sub-word-free word tokens with their leading spaces: words
//! older than the last two become final while the caller speaks, the rest stay non-final and are
//! re-sent; `--stt-latency-ms` after the utterance ends the rest turns final, with `<end>` when
//! endpoint detection is on. `{"type":"finalize"}` makes everything final at once and adds
//! `<fin>`; the empty text frame ends the stream (`finished:true`, close 1000). Neither audio
//! nor keepalive for twice the Deepgram idle timeout (20 s by default: Soniox's figure) is a 408.
//!
//! This module also holds the socket loop shared by the STT doubles that take binary or JSON
//! audio and answer on timers ([`Listener`], [`serve`]) and the scripted caller they hear
//! ([`ScriptedCaller`]).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::audio::{decode_pcm16, interim_word_count, DetEvent, UtteranceDetector, INTERIM_EVERY_MS};
use crate::{close_ws, Latencies, SimState};

/// Models the double answers to (`stt-rt-v3` is an alias of v4; the preview names are older).
pub const MODELS: [&str; 5] = ["stt-rt-v5", "stt-rt-v4", "stt-rt-v3", "stt-rt-preview", "stt-rt-preview-v2"];
/// Fields introduced with v5 that earlier models reject.
const V5_ONLY: [&str; 2] = ["endpoint_sensitivity", "endpoint_latency_adjustment_level"];
/// Legacy fields still seen in old clients; whether Soniox still accepts them is unconfirmed,
/// so the double does (wire-protocols-2 marks them UNCERTAIN).
const LEGACY_FIELDS: [&str; 2] = ["enable_non_final_tokens", "max_non_final_tokens_duration_ms"];

/// An error the way Soniox reports it: one JSON message, then the socket closes.
fn error_json(code: u16, message: &str) -> String {
    json!({"error_code": code, "error_message": message}).to_string()
}

pub async fn handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let header_key = match headers.get(axum::http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("")) {
        None => None,
        Some(auth) => match auth.strip_prefix("Bearer ").map(str::trim) {
            Some(key) if !key.is_empty() && key != "bad-key" => Some(key.to_string()),
            _ => {
                tracing::warn!("soniox: rejected upgrade, bad Authorization");
                let body = Json(json!({"error_code": 401, "error_message": "Invalid API key."}));
                return (StatusCode::UNAUTHORIZED, body).into_response();
            }
        },
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => return rej.into_response(),
    };
    state.counters.soniox_connections.fetch_add(1, Ordering::Relaxed);
    ws.read_buffer_size(crate::WS_READ_BUFFER).on_upgrade(move |socket| run(socket, state, header_key))
}

async fn run(mut socket: WebSocket, state: Arc<SimState>, header_key: Option<String>) {
    let idle = state.stt_idle_timeout * 2;
    let first = match tokio::time::timeout(idle, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(Message::Binary(_)))) => {
            refuse(&mut socket, 400, "The first message must be the JSON configuration.").await;
            return;
        }
        Ok(_) => return,
        Err(_) => {
            refuse(&mut socket, 408, "Request timeout: no configuration received.").await;
            return;
        }
    };
    let config = match parse_config(first.as_str(), header_key.as_deref()) {
        Ok(c) => c,
        Err((code, message)) => {
            tracing::warn!("soniox: refused configuration: {message}");
            refuse(&mut socket, code, &message).await;
            return;
        }
    };
    let conn = Conn::new(state, config);
    serve(socket, conn, idle).await;
}

async fn refuse(socket: &mut WebSocket, code: u16, message: &str) {
    let _ = socket.send(Message::Text(error_json(code, message).into())).await;
    close_ws(socket, 1000, "").await;
}

/// The configuration fields the double acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub model: String,
    pub sample_rate: u32,
    pub endpoint_detection: bool,
    /// The first language hint, reported on tokens with language identification.
    pub language: Option<String>,
    pub language_identification: bool,
    pub diarization: bool,
}

/// Validate the first message: `Err((error_code, error_message))` as Soniox would answer.
pub fn parse_config(text: &str, header_key: Option<&str>) -> Result<Config, (u16, String)> {
    let bad = |m: String| Err((400, m));
    let v: Value = serde_json::from_str(text).map_err(|e| (400, format!("Invalid configuration JSON: {e}")))?;
    let Value::Object(o) = v else { return bad("The configuration must be a JSON object.".into()) };
    match (header_key, o.get("api_key")) {
        (Some(_), Some(Value::String(_))) => {
            return bad("The API key was sent both in the Authorization header and in the configuration.".into())
        }
        (Some(_), None | Some(Value::Null)) => {}
        (None, Some(Value::String(k))) if !k.trim().is_empty() && k != "bad-key" => {}
        (None, _) => return Err((401, "Invalid API key.".into())),
        (Some(_), Some(_)) => return bad("api_key must be a string.".into()),
    }
    let model = match o.get("model") {
        Some(Value::String(m)) if MODELS.contains(&m.as_str()) => m.clone(),
        Some(Value::String(_)) => return bad("Invalid model specified.".into()),
        _ => return bad("model is required and must be a string.".into()),
    };
    match o.get("audio_format") {
        Some(Value::String(f)) if f == "pcm_s16le" => {}
        Some(Value::String(f)) => return bad(format!("this double decodes pcm_s16le only, not {f:?}")),
        _ => return bad("audio_format is required for raw audio.".into()),
    }
    let sample_rate = match o.get("sample_rate") {
        Some(Value::Number(n)) => n.as_u64().filter(|r| (2000..=96_000).contains(r)),
        _ => None,
    }
    .ok_or((400, "sample_rate must be an integer between 2000 and 96000.".to_string()))? as u32;
    if o.get("num_channels").and_then(Value::as_u64) != Some(1) {
        return bad("num_channels must be the integer 1 (this double takes mono).".into());
    }
    check_fields(&o, &model)?;
    let flag = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or(false);
    let language = o.get("language_hints").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str);
    Ok(Config {
        model,
        sample_rate,
        endpoint_detection: flag("enable_endpoint_detection"),
        language: language.map(str::to_string),
        language_identification: flag("enable_language_identification"),
        diarization: flag("enable_speaker_diarization"),
    })
}

/// Types and ranges of the optional fields; `null` stands for "unset" everywhere (pipecat sends
/// every key that way and the service accepts it). Unknown fields are refused.
fn check_fields(o: &Map<String, Value>, model: &str) -> Result<(), (u16, String)> {
    for (key, value) in o {
        if value.is_null() {
            continue;
        }
        let ok = match key.as_str() {
            "api_key" | "model" | "audio_format" | "sample_rate" | "num_channels" => true,
            "language_hints" => value.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            "language_hints_strict"
            | "enable_speaker_diarization"
            | "enable_language_identification"
            | "enable_endpoint_detection" => value.is_boolean(),
            "context" => value.is_string() || valid_context(value),
            "client_reference_id" => value.as_str().is_some_and(|s| s.chars().count() <= 256),
            "max_endpoint_delay_ms" => value.as_u64().is_some_and(|ms| (500..=3000).contains(&ms)),
            "endpoint_sensitivity" => value.as_f64().is_some_and(|x| (-1.0..=1.0).contains(&x)),
            "endpoint_latency_adjustment_level" => value.as_u64().is_some_and(|l| l <= 3),
            "translation" => {
                value.get("type").and_then(Value::as_str).is_some_and(|t| t == "one_way" || t == "two_way")
            }
            k if LEGACY_FIELDS.contains(&k) => true,
            other => return Err((400, format!("Unknown configuration field {other:?}."))),
        };
        if !ok {
            return Err((400, format!("Invalid value for {key}: {value}")));
        }
        if V5_ONLY.contains(&key.as_str()) && model != "stt-rt-v5" {
            return Err((400, format!("{key} is not supported by model {model}.")));
        }
    }
    Ok(())
}

/// Context version 2: `general[{key,value}]`, `text`, `terms[]`, `translation_terms[{source,target}]`.
fn valid_context(v: &Value) -> bool {
    let Value::Object(o) = v else { return false };
    let pairs = |items: &Value, a: &str, b: &str| {
        items.as_array().is_some_and(|l| {
            l.iter().all(|i| i.get(a).is_some_and(Value::is_string) && i.get(b).is_some_and(Value::is_string))
        })
    };
    o.iter().all(|(k, v)| match k.as_str() {
        "general" => pairs(v, "key", "value"),
        "text" => v.is_string(),
        "terms" => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        "translation_terms" => pairs(v, "source", "target"),
        _ => false,
    })
}

/// What to do after a client message.
pub enum Step {
    Continue,
    /// Send what is queued, then close with this code and reason.
    Close(u16, String),
}

/// A streaming STT double driven by [`serve`].
pub trait Listener: Send {
    fn on_binary(&mut self, bytes: &[u8]) -> Step;
    fn on_text(&mut self, text: &str) -> Step;
    /// Run whatever is due at `now`.
    fn on_time(&mut self, now: Instant);
    fn next_due(&self) -> Option<Instant>;
    /// Messages waiting to be sent.
    fn outbox(&mut self) -> &mut Vec<String>;
    /// Nothing from the client for the idle timeout: queue the farewell, say how to close.
    fn on_idle(&mut self) -> (u16, String);
}

/// The socket loop of an STT double: client messages in, timers, queued messages out, and the
/// idle timeout (any client message counts as activity).
pub async fn serve<L: Listener>(mut socket: WebSocket, mut listener: L, idle: Duration) {
    let mut last_activity = Instant::now();
    loop {
        let idle_at = last_activity + idle;
        let wake = listener.next_due().map_or(idle_at, |due| due.min(idle_at));
        let step = tokio::select! {
            msg = socket.recv() => {
                last_activity = Instant::now();
                match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Binary(b))) => listener.on_binary(&b),
                    Some(Ok(Message::Text(t))) => listener.on_text(t.as_str()),
                    Some(Ok(_)) => Step::Continue,
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= idle_at {
                    let (code, reason) = listener.on_idle();
                    Step::Close(code, reason)
                } else {
                    listener.on_time(now);
                    Step::Continue
                }
            }
        };
        for m in listener.outbox().drain(..) {
            if socket.send(Message::Text(m.into())).await.is_err() {
                return;
            }
        }
        if let Step::Close(code, reason) = step {
            close_ws(&mut socket, code, &reason).await;
            return;
        }
    }
}

/// The caller as every script-driven STT double hears it: LINEAR16 in, utterances found by
/// energy, utterance N of the connection saying the script's transcript N.
#[derive(Debug)]
pub struct ScriptedCaller {
    state: Arc<SimState>,
    detector: UtteranceDetector,
    odd_byte: Option<u8>,
    samples: Vec<i16>,
    next_index: usize,
}

impl ScriptedCaller {
    /// Utterances end after `--stt-endpointing-ms` of silence.
    pub fn new(state: Arc<SimState>, sample_rate: u32) -> Self {
        let endpointing = Latencies::get(&state.lat.stt_endpointing_ms);
        Self {
            detector: UtteranceDetector::new(sample_rate, endpointing),
            state,
            odd_byte: None,
            samples: Vec::with_capacity(4096),
            next_index: 0,
        }
    }

    /// Feed audio; the detector's events are appended to `events`.
    pub fn hear(&mut self, bytes: &[u8], events: &mut Vec<DetEvent>) {
        self.samples.clear();
        decode_pcm16(&mut self.odd_byte, bytes, &mut self.samples);
        self.detector.push(&self.samples, events);
    }

    /// What the utterance that just began says (counted in `/sim/stats`).
    pub fn next_transcript(&mut self) -> String {
        let transcript = self.state.script.transcript(self.next_index).to_string();
        self.next_index += 1;
        self.state.counters.stt_utterances.fetch_add(1, Ordering::Relaxed);
        transcript
    }

    /// Utterances begun so far.
    pub fn utterances(&self) -> usize {
        self.next_index
    }

    pub fn detector(&mut self) -> &mut UtteranceDetector {
        &mut self.detector
    }

    /// The delay before an ended utterance's final result.
    pub fn latency(&self) -> Duration {
        Latencies::dur(&self.state.lat.stt_latency_ms)
    }
}

/// The utterance being heard.
#[derive(Debug, Clone)]
struct Utterance {
    words: Vec<String>,
    onset_ms: u64,
    /// Words already sent as final tokens.
    finals_sent: usize,
    /// The stream's first utterance: its first token has no leading space.
    first: bool,
}

struct Conn {
    config: Config,
    caller: ScriptedCaller,
    current: Option<Utterance>,
    /// Ended utterances whose last tokens are due after the STT latency.
    pending: VecDeque<(Instant, Utterance)>,
    out: Vec<String>,
}

impl Conn {
    fn new(state: Arc<SimState>, config: Config) -> Self {
        let caller = ScriptedCaller::new(state, config.sample_rate);
        Self { config, caller, current: None, pending: VecDeque::new(), out: Vec::new() }
    }

    /// Word `index` of `u` as a token; tokens carry their leading space, as Soniox's do.
    fn token(&self, u: &Utterance, index: usize, is_final: bool) -> Value {
        let word = &u.words[index];
        let text = if u.first && index == 0 { word.clone() } else { format!(" {word}") };
        let start_ms = u.onset_ms + index as u64 * INTERIM_EVERY_MS;
        let mut t = json!({"text": text, "start_ms": start_ms, "end_ms": start_ms + INTERIM_EVERY_MS - 20,
            "confidence": 0.95, "is_final": is_final});
        if self.config.language_identification {
            t["language"] = json!(self.config.language.as_deref().unwrap_or("en"));
        }
        if self.config.diarization {
            t["speaker"] = json!("1");
        }
        t
    }

    fn marker(text: &str) -> Value {
        json!({"text": text, "is_final": true})
    }

    /// One result message: newly final tokens first, then the non-final tail.
    fn result(&mut self, tokens: Vec<Value>, finished: bool) {
        let ms = self.caller.detector().audio_ms();
        let mut m = json!({"tokens": tokens, "final_audio_proc_ms": ms, "total_audio_proc_ms": ms});
        if finished {
            m["finished"] = json!(true);
        }
        self.out.push(m.to_string());
    }

    /// Words `from..to` of `u` as tokens, final or not.
    fn tokens(&self, u: &Utterance, from: usize, to: usize, is_final: bool) -> Vec<Value> {
        (from..to).map(|i| self.token(u, i, is_final)).collect()
    }

    fn on_event(&mut self, ev: DetEvent) {
        match ev {
            DetEvent::Onset { at_ms } => {
                let transcript = self.caller.next_transcript();
                let words = transcript.split_whitespace().map(str::to_string).collect();
                let first = self.caller.utterances() == 1;
                self.current = Some(Utterance { words, onset_ms: at_ms, finals_sent: 0, first });
            }
            DetEvent::Interim { speech_ms, .. } => {
                let Some(mut u) = self.current.take() else { return };
                let heard = interim_word_count(speech_ms, u.words.len());
                // Words older than the last two are settled.
                let settled = heard.saturating_sub(2).max(u.finals_sent);
                let mut tokens = self.tokens(&u, u.finals_sent, settled, true);
                tokens.extend(self.tokens(&u, settled, heard, false));
                u.finals_sent = settled;
                self.current = Some(u);
                self.result(tokens, false);
            }
            DetEvent::End { .. } => {
                if let Some(u) = self.current.take() {
                    self.pending.push_back((Instant::now() + self.caller.latency(), u));
                }
            }
        }
    }

    /// Everything of `u` not yet final, as final tokens, plus an optional marker.
    fn settle(&mut self, u: &Utterance, marker: Option<&str>) -> Vec<Value> {
        let mut tokens = self.tokens(u, u.finals_sent, u.words.len(), true);
        tokens.extend(marker.map(Self::marker));
        tokens
    }

    /// `finalize` / end of stream: every pending and current word becomes final now.
    fn finalize_all(&mut self, marker: Option<&str>) -> Vec<Value> {
        let mut tokens = Vec::new();
        while let Some((_, u)) = self.pending.pop_front() {
            tokens.extend(self.settle(&u, None));
        }
        if let Some(u) = self.current.as_mut() {
            let snapshot = u.clone();
            u.finals_sent = u.words.len();
            tokens.extend(self.settle(&snapshot, None));
        }
        tokens.extend(marker.map(Self::marker));
        tokens
    }
}

impl Listener for Conn {
    fn on_binary(&mut self, bytes: &[u8]) -> Step {
        if bytes.is_empty() {
            // An empty binary frame may also end the stream (UNCERTAIN): accept it like "".
            return self.on_text("");
        }
        let mut events = Vec::new();
        self.caller.hear(bytes, &mut events);
        for ev in events {
            self.on_event(ev);
        }
        Step::Continue
    }

    fn on_text(&mut self, text: &str) -> Step {
        if text.is_empty() {
            let tokens = self.finalize_all(None);
            if !tokens.is_empty() {
                self.result(tokens, false);
            }
            self.result(Vec::new(), true);
            return Step::Close(1000, String::new());
        }
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                self.out.push(error_json(400, "Control messages must be JSON."));
                return Step::Close(1000, String::new());
            }
        };
        match v.get("type").and_then(Value::as_str) {
            Some("keepalive") => Step::Continue,
            Some("finalize") => {
                if v.get("trailing_silence_ms").is_some_and(|t| !t.is_null() && t.as_u64().is_none()) {
                    self.out.push(error_json(400, "trailing_silence_ms must be a non-negative integer."));
                    return Step::Close(1000, String::new());
                }
                let tokens = self.finalize_all(Some("<fin>"));
                self.result(tokens, false);
                Step::Continue
            }
            other => {
                self.out.push(error_json(400, &format!("Unknown control message type {other:?}.")));
                Step::Close(1000, String::new())
            }
        }
    }

    fn on_time(&mut self, now: Instant) {
        while self.pending.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, u)) = self.pending.pop_front() else { break };
            let marker = self.config.endpoint_detection.then_some("<end>");
            let tokens = self.settle(&u, marker);
            self.result(tokens, false);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|(due, _)| *due)
    }

    fn outbox(&mut self) -> &mut Vec<String> {
        &mut self.out
    }

    fn on_idle(&mut self) -> (u16, String) {
        tracing::info!("soniox: no audio or keepalive; closing with 408");
        self.out.push(error_json(408, "Request timeout: no audio or keepalive received."));
        (1000, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: Value) -> Value {
        let mut c = json!({"model":"stt-rt-v4","audio_format":"pcm_s16le","sample_rate":8000,"num_channels":1});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn check(extra: Value, key: Option<&str>) -> Result<Config, (u16, String)> {
        parse_config(&config(extra).to_string(), key)
    }

    #[test]
    fn authentication_forms() {
        assert!(check(json!({}), Some("k")).is_ok());
        assert!(check(json!({"api_key": "k"}), None).is_ok());
        assert_eq!(check(json!({}), None).unwrap_err().0, 401);
        assert_eq!(check(json!({"api_key": "bad-key"}), None).unwrap_err().0, 401);
        assert_eq!(check(json!({"api_key": "k"}), Some("k")).unwrap_err().0, 400, "never both");
    }

    #[test]
    fn fields_are_typed() {
        let c = check(
            json!({"enable_endpoint_detection": true, "language_hints": ["hi", "en"],
            "context": {"general": [{"key": "domain", "value": "Insurance"}], "terms": ["IDV"]},
            "language_hints_strict": null, "client_reference_id": "call-1"}),
            Some("k"),
        )
        .unwrap();
        assert!(c.endpoint_detection);
        assert_eq!(c.language.as_deref(), Some("hi"));
        for bad in [
            json!({"sample_rate": "8000"}),
            json!({"sample_rate": 8000.5}),
            json!({"num_channels": 2}),
            json!({"audio_format": "mulaw"}),
            json!({"model": "nova-3"}),
            json!({"enable_endpoint_detection": "true"}),
            json!({"language_hints": "hi"}),
            json!({"context": {"terms": "IDV"}}),
            json!({"max_endpoint_delay_ms": 100}),
            json!({"endpoint_sensitivity": 0.5}),
            json!({"made_up": 1}),
        ] {
            assert_eq!(check(bad.clone(), Some("k")).unwrap_err().0, 400, "{bad}");
        }
        let v5 = json!({"model": "stt-rt-v5", "endpoint_sensitivity": 0.5, "enable_non_final_tokens": true});
        assert!(check(v5, Some("k")).is_ok());
        assert_eq!(parse_config("[]", Some("k")).unwrap_err().0, 400);
    }
}
