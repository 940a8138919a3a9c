//! Sarvam Bulbul TTS double: `GET /text-to-speech/ws` (wire-protocols-2 §4).
//!
//! Strict like the service: the key in `api-subscription-key` (missing: HTTP 401, refused:
//! 403); `model` and `send_completion_event` in the query; the first message must be `config`
//! with typed, in-range fields (`speaker` lowercase and belonging to the model, `pace` in the
//! model's range, `speech_sample_rate` 8000/16000/22050/24000 as an int or a digit string —
//! both are seen in clients); then `text` (1–2500 characters), `flush` and `ping`. A wrong
//! message is answered `{"type":"error","data":{"message","code":400,…}}` and the socket closes
//! with 1008. Text is synthesized when `min_buffer_size` characters are buffered or on `flush`;
//! after a flush's audio comes `{"type":"event","data":{"event_type":"final",…}}` (with
//! `send_completion_event=true`). Sarvam has no cancel: a client interrupts by closing the
//! socket, which the double counts (`sarvam_tts_closed_mid_utterance` in `/sim/stats`) when
//! synthesis was unfinished.
//!
//! Every connection's history (opened, configured, first text, closed, mid-utterance or not) is
//! served at `GET /sim/sarvam-tts`, so a test can see that the socket used after a barge-in was
//! configured before it. `--tts-connect-ms` delays the upgrade (TLS stand-in);
//! `--tts-ttfb-ms` delays each flush's first audio (reported at `/sim/timings`).
//!
//! This module also holds the synthesizer task shared by the TTS doubles that stream on one
//! socket ([`Synth`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::audio::{pcm_bytes, samples_for_ms, text_duration_ms, SpeechSynth};
use crate::{close_ws, DoubleTimings, Latencies, SimState};

pub const MODELS: [&str; 4] = ["bulbul:v2", "bulbul:v3", "bulbul:v3-beta", "bulbul:v4-flash"];
pub const SAMPLE_RATES: [u64; 4] = [8000, 16000, 22050, 24000];
const LANGUAGES: [&str; 11] =
    ["bn-IN", "en-IN", "gu-IN", "hi-IN", "kn-IN", "ml-IN", "mr-IN", "od-IN", "pa-IN", "ta-IN", "te-IN"];
const V2_SPEAKERS: [&str; 7] = ["anushka", "manisha", "vidya", "arya", "abhilash", "karun", "hitesh"];
const V3_SPEAKERS: [&str; 25] = [
    "shubh", "aditya", "ritu", "priya", "neha", "rahul", "pooja", "rohan", "simran", "kavya", "amit", "dev", "ishita",
    "shreya", "ratan", "varun", "manan", "sumit", "roopa", "kabir", "aayan", "ashutosh", "advait", "amelia", "sophia",
];
const CODECS: [&str; 5] = ["linear16", "mulaw", "alaw", "mp3", "wav"];
const BITRATES: [&str; 5] = ["32k", "64k", "96k", "128k", "192k"];
const MAX_TEXT_CHARS: usize = 2500;
/// Text a client may leave buffered (a huge `min_buffer_size` must not grow it without end).
pub const MAX_BUFFERED_CHARS: usize = 100_000;
const DEFAULT_MIN_BUFFER: u64 = 50;
/// Sarvam closes a socket after a minute without messages.
const IDLE: Duration = Duration::from_secs(60);
/// Connection histories kept for `/sim/sarvam-tts`.
const LOG_KEPT: usize = 256;

/// Audio per chunk, and how much faster than real time the doubles synthesize.
const CHUNK_MS: u64 = 100;
const SPEED_UP: u64 = 4;

// ---------------------------------------------------------------- shared synthesizer

/// Work for a [`Synth`].
#[derive(Debug)]
pub enum Job {
    Text(String),
    /// Emitted in order after every job before it.
    Mark(Mark),
}

/// A boundary in the output stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    /// A text message to send once the audio before it is out.
    Send(String),
    /// Close the socket once the audio before it is out.
    Close,
}

#[derive(Debug)]
pub enum Produced {
    /// One chunk of LINEAR16 audio.
    Audio(Vec<u8>),
    /// A text job is fully synthesized.
    TextDone,
    Mark(Mark),
}

/// A synthesizer task: text in, paced LINEAR16 chunks out (`CHUNK_MS` of audio every
/// `CHUNK_MS / SPEED_UP`), the injected TTFB before the first audio after each mark. `clear`
/// drops everything queued or streaming; marks queued after it still come out.
pub struct Synth {
    jobs: mpsc::Sender<(u64, Instant, Job)>,
    generation: Arc<AtomicU64>,
}

impl Synth {
    pub fn spawn(state: Arc<SimState>, sample_rate: u32) -> (Self, mpsc::Receiver<Produced>) {
        let (jobs, job_rx) = mpsc::channel(256);
        let (out, out_rx) = mpsc::channel(64);
        let generation = Arc::new(AtomicU64::new(0));
        tokio::spawn(synthesize(state, sample_rate, job_rx, out, Arc::clone(&generation)));
        (Self { jobs, generation }, out_rx)
    }

    /// Queue a job; false when the queue is full (the client is flooding us).
    pub fn submit(&self, job: Job) -> bool {
        let generation = self.generation.load(Ordering::SeqCst);
        self.jobs.try_send((generation, Instant::now(), job)).is_ok()
    }

    /// Stop streaming and drop every queued job.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn synthesize(
    state: Arc<SimState>,
    rate: u32,
    mut jobs: mpsc::Receiver<(u64, Instant, Job)>,
    out: mpsc::Sender<Produced>,
    generation: Arc<AtomicU64>,
) {
    let mut speech = SpeechSynth::new(rate);
    let chunk = samples_for_ms(rate, CHUNK_MS).max(1);
    let mut pcm = Vec::with_capacity(chunk);
    let mut first_of_turn = true;
    let current = |g: u64| generation.load(Ordering::SeqCst) == g;
    while let Some((g, submitted, job)) = jobs.recv().await {
        let text = match job {
            Job::Mark(mark) => {
                first_of_turn = true;
                if current(g) && out.send(Produced::Mark(mark)).await.is_err() {
                    return;
                }
                continue;
            }
            Job::Text(_) if !current(g) => continue,
            Job::Text(text) => text,
        };
        if std::mem::take(&mut first_of_turn) {
            tokio::time::sleep(Latencies::dur(&state.lat.tts_ttfb_ms)).await;
        }
        let mut left = samples_for_ms(rate, text_duration_ms(&text));
        let mut first_chunk = true;
        while left > 0 && current(g) {
            let n = left.min(chunk);
            left -= n;
            pcm.clear();
            speech.render(n, &mut pcm);
            if out.send(Produced::Audio(pcm_bytes(&pcm))).await.is_err() {
                return;
            }
            if std::mem::take(&mut first_chunk) {
                DoubleTimings::record(&state.timings.tts_ttfb, submitted);
            }
            tokio::time::sleep(Duration::from_millis(CHUNK_MS / SPEED_UP)).await;
        }
        if current(g) && out.send(Produced::TextDone).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- connection log

/// One connection's history, in ms since the server started.
#[derive(Debug, Clone, Default)]
struct Record {
    id: u64,
    opened_ms: u64,
    configured_ms: Option<u64>,
    first_text_ms: Option<u64>,
    closed_ms: Option<u64>,
    closed_mid_utterance: bool,
    flushes: u64,
}

/// Sarvam TTS connection histories (bounded).
#[derive(Debug)]
pub struct Log {
    started: Instant,
    next_id: AtomicU64,
    records: Mutex<VecDeque<Record>>,
}

impl Default for Log {
    fn default() -> Self {
        Self { started: Instant::now(), next_id: AtomicU64::new(1), records: Mutex::new(VecDeque::new()) }
    }
}

impl Log {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn open(&self) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() == LOG_KEPT {
            records.pop_front();
        }
        records.push_back(Record { id, opened_ms: self.now_ms(), ..Record::default() });
        id
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Record, u64)) {
        let now = self.now_ms();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = records.iter_mut().find(|r| r.id == id) {
            f(r, now);
        }
    }

    /// Sockets configured and open with no text yet: warm spares waiting to be used.
    pub fn spares_waiting(&self) -> usize {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .iter()
            .filter(|r| r.configured_ms.is_some() && r.first_text_ms.is_none() && r.closed_ms.is_none())
            .count()
    }

    pub fn json(&self) -> Value {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        Value::Array(
            records
                .iter()
                .map(|r| {
                    json!({"id": r.id, "opened_ms": r.opened_ms, "configured_ms": r.configured_ms,
                        "first_text_ms": r.first_text_ms, "closed_ms": r.closed_ms,
                        "closed_mid_utterance": r.closed_mid_utterance, "flushes": r.flushes})
                })
                .collect(),
        )
    }
}

pub async fn log_handler(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(state.sarvam_tts.json())
}

// ---------------------------------------------------------------- the endpoint

/// Sarvam's error body for refused requests.
pub(crate) fn http_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message, "code": status.as_u16()}}))).into_response()
}

/// Sarvam's key rule for every Sarvam double: `api-subscription-key`, missing → 401, refused
/// (`bad-key`) → 403. `Some` is the answer to give.
pub(crate) fn refuse_bad_key(headers: &HeaderMap) -> Option<Response> {
    match headers.get("api-subscription-key").and_then(|v| v.to_str().ok()).map(str::trim) {
        None | Some("") => {
            Some(http_error(StatusCode::UNAUTHORIZED, "Websocket initialized with invalid credentials."))
        }
        Some("bad-key") => Some(http_error(StatusCode::FORBIDDEN, "Invalid API subscription key.")),
        Some(_) => None,
    }
}

fn error_json(code: u16, message: &str) -> String {
    let data = json!({"message": message, "code": code, "details": {}, "request_id": uuid::Uuid::new_v4().to_string()});
    json!({"type": "error", "data": data}).to_string()
}

pub async fn handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(refused) = refuse_bad_key(&headers) {
        return refused;
    }
    let model = q.get("model").cloned().unwrap_or_else(|| "bulbul:v2".into());
    if !MODELS.contains(&model.as_str()) {
        return http_error(
            StatusCode::BAD_REQUEST,
            &format!("model {model:?} is not supported; use one of {MODELS:?}"),
        );
    }
    let completion_event = match q.get("send_completion_event").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                &format!("send_completion_event must be true or false, not {other:?}"),
            )
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => return rej.into_response(),
    };
    // The handshake's own latency (TLS, the vendor's front end): the upgrade answers after it.
    tokio::time::sleep(Latencies::dur(&state.lat.tts_connect_ms)).await;
    state.counters.sarvam_tts_connections.fetch_add(1, Ordering::Relaxed);
    let id = state.sarvam_tts.open();
    ws.read_buffer_size(crate::WS_READ_BUFFER).on_upgrade(move |socket| async move {
        let mut conn = Conn { state, id, model, completion_event, buffer: String::new(), min_buffer: 0, unfinished: 0 };
        conn.run(socket).await;
    })
}

/// The settings a `config` message fixes.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceConfig {
    pub sample_rate: u32,
    pub min_buffer_size: u64,
}

/// Validate a `config` message's `data` for `model`.
pub fn parse_config(data: &Map<String, Value>, model: &str) -> Result<VoiceConfig, String> {
    let v2 = model == "bulbul:v2";
    let language = data.get("target_language_code").or_else(|| data.get("language_code"));
    match language.and_then(Value::as_str) {
        Some(l) if LANGUAGES.contains(&l) => {}
        Some(l) => return Err(format!("target_language_code {l:?} is not supported")),
        None => return Err("target_language_code is required".into()),
    }
    if let Some(speaker) = data.get("speaker") {
        let s = speaker.as_str().ok_or("speaker must be a string")?;
        let known = if v2 { V2_SPEAKERS.contains(&s) } else { V3_SPEAKERS.contains(&s) || model == "bulbul:v4-flash" };
        if s != s.to_lowercase() || !known {
            return Err(format!("speaker {s:?} is not available for {model} (speakers are lowercase)"));
        }
    }
    if let Some(m) = data.get("model").and_then(Value::as_str).filter(|m| *m != model) {
        return Err(format!("config model {m:?} differs from the connection's {model:?}"));
    }
    let (pace_min, pace_max) = if v2 { (0.3, 3.0) } else { (0.5, 2.0) };
    for (key, lo, hi) in
        [("pitch", -0.75, 0.75), ("pace", pace_min, pace_max), ("loudness", 0.3, 3.0), ("temperature", 0.01, 1.0)]
    {
        match data.get(key) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_f64().is_some_and(|x| (lo..=hi).contains(&x)) => {}
            Some(v) => return Err(format!("{key} must be a number in {lo}..={hi}, got {v}")),
        }
    }
    let sample_rate = match data.get("speech_sample_rate") {
        None => 22050,
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(_) => 0,
    };
    if !SAMPLE_RATES.contains(&sample_rate) {
        return Err(format!("speech_sample_rate must be one of {SAMPLE_RATES:?}"));
    }
    match data.get("output_audio_codec").and_then(Value::as_str) {
        Some("linear16") => {}
        Some(c) if CODECS.contains(&c) => return Err(format!("this double streams linear16 only, not {c:?}")),
        _ => {
            return Err(
                "output_audio_codec must be one of linear16, mulaw, alaw, mp3, wav (this double: linear16)".into()
            )
        }
    }
    if let Some(b) = data.get("output_audio_bitrate").filter(|b| !b.as_str().is_some_and(|b| BITRATES.contains(&b))) {
        return Err(format!("output_audio_bitrate {b} is not one of {BITRATES:?}"));
    }
    if data.get("enable_preprocessing").is_some_and(|v| !v.is_boolean()) {
        return Err("enable_preprocessing must be a boolean".into());
    }
    let int = |key: &str| data.get(key).map(|v| v.as_u64().ok_or(format!("{key} must be an integer"))).transpose();
    let min_buffer_size = int("min_buffer_size")?.unwrap_or(DEFAULT_MIN_BUFFER);
    int("max_chunk_length")?;
    Ok(VoiceConfig { sample_rate: sample_rate as u32, min_buffer_size })
}

struct Conn {
    state: Arc<SimState>,
    id: u64,
    model: String,
    completion_event: bool,
    /// Text not yet handed to the synthesizer.
    buffer: String,
    min_buffer: usize,
    /// Text jobs handed over and not fully synthesized, plus flushes not yet answered.
    unfinished: usize,
}

/// Why the connection loop ended.
enum Ending {
    /// Send this error, then close 1008.
    Refuse(String),
    ClientLeft,
    Quiet,
}

impl Conn {
    async fn run(&mut self, mut socket: WebSocket) {
        let ending = self.serve(&mut socket).await;
        let mid_utterance = matches!(ending, Ending::ClientLeft) && (self.unfinished > 0 || !self.buffer.is_empty());
        if mid_utterance {
            self.state.counters.sarvam_tts_closed_mid_utterance.fetch_add(1, Ordering::Relaxed);
        }
        self.state.sarvam_tts.update(self.id, |r, now| {
            r.closed_ms = Some(now);
            r.closed_mid_utterance = mid_utterance;
        });
        if let Ending::Refuse(message) = ending {
            tracing::warn!("sarvam tts: {message}");
            let _ = socket.send(Message::Text(error_json(400, &message).into())).await;
            close_ws(&mut socket, 1008, "invalid request").await;
        }
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> Ending {
        let config = match tokio::time::timeout(IDLE, socket.recv()).await {
            Ok(Some(Ok(Message::Text(t)))) => match self.config(t.as_str()) {
                Ok(c) => c,
                Err(e) => return Ending::Refuse(e),
            },
            Ok(Some(Ok(_))) => return Ending::Refuse("the first message must be a config message".into()),
            Ok(_) => return Ending::ClientLeft,
            Err(_) => return Ending::Quiet,
        };
        self.state.sarvam_tts.update(self.id, |r, now| r.configured_ms = Some(now));
        self.min_buffer = config.min_buffer_size as usize;
        let (synth, mut produced) = Synth::spawn(Arc::clone(&self.state), config.sample_rate);
        let request_id = format!("{}_{}", chrono::Utc::now().format("%Y%m%d"), uuid::Uuid::new_v4());
        loop {
            tokio::select! {
                msg = tokio::time::timeout(IDLE, socket.recv()) => match msg {
                    Err(_) => return Ending::Quiet,
                    Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Ending::ClientLeft,
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if let Err(e) = self.on_text(t.as_str(), &synth) {
                            return Ending::Refuse(e);
                        }
                    }
                    Ok(Some(Ok(Message::Binary(_)))) => return Ending::Refuse("binary frames are not supported".into()),
                    Ok(Some(Ok(_))) => {}
                },
                Some(item) = produced.recv() => {
                    let msg = match item {
                        Produced::Audio(pcm) => {
                            let audio = base64::engine::general_purpose::STANDARD.encode(pcm);
                            let data = json!({"content_type": "audio/pcm", "audio": audio, "request_id": request_id});
                            json!({"type": "audio", "data": data}).to_string()
                        }
                        Produced::TextDone => {
                            self.unfinished = self.unfinished.saturating_sub(1);
                            continue;
                        }
                        Produced::Mark(Mark::Send(m)) => {
                            self.unfinished = self.unfinished.saturating_sub(1);
                            if !self.completion_event {
                                continue;
                            }
                            m
                        }
                        Produced::Mark(Mark::Close) => return Ending::Quiet,
                    };
                    if socket.send(Message::Text(msg.into())).await.is_err() {
                        return Ending::ClientLeft;
                    }
                }
            }
        }
    }

    fn config(&self, text: &str) -> Result<VoiceConfig, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("message is not JSON: {e}"))?;
        if v.get("type").and_then(Value::as_str) != Some("config") {
            return Err("the first message must be a config message".into());
        }
        let data = v.get("data").and_then(Value::as_object).ok_or("config.data must be an object")?;
        parse_config(data, &self.model)
    }

    fn on_text(&mut self, text: &str, synth: &Synth) -> Result<(), String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("message is not JSON: {e}"))?;
        match v.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = v.pointer("/data/text").and_then(Value::as_str).ok_or("text.data.text must be a string")?;
                let n = t.chars().count();
                if n == 0 || n > MAX_TEXT_CHARS {
                    return Err(format!("text must be 1..={MAX_TEXT_CHARS} characters, got {n}"));
                }
                self.state.sarvam_tts.update(self.id, |r, now| {
                    r.first_text_ms.get_or_insert(now);
                });
                if self.buffer.len() + t.len() > MAX_BUFFERED_CHARS * 4 {
                    return Err(format!("more than {MAX_BUFFERED_CHARS} characters buffered without a flush"));
                }
                self.buffer.push_str(t);
                if self.buffer.chars().count() >= self.min_buffer {
                    self.synthesize(synth)?;
                }
                Ok(())
            }
            Some("flush") => {
                self.synthesize(synth)?;
                self.state.sarvam_tts.update(self.id, |r, _| r.flushes += 1);
                let data = json!({"event_type": "final", "message": "Synthesis complete",
                    "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
                let final_event = json!({"type": "event", "data": data}).to_string();
                self.unfinished += 1;
                submit(synth, Job::Mark(Mark::Send(final_event)))
            }
            Some("ping") => Ok(()),
            Some("config") => {
                let data = v.get("data").and_then(Value::as_object).ok_or("config.data must be an object")?;
                // A new config applies after the buffered text (which it flushes).
                parse_config(data, &self.model)?;
                self.synthesize(synth)
            }
            other => Err(format!("unknown message type {other:?}")),
        }
    }

    fn synthesize(&mut self, synth: &Synth) -> Result<(), String> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.unfinished += 1;
        submit(synth, Job::Text(std::mem::take(&mut self.buffer)))
    }
}

fn submit(synth: &Synth, job: Job) -> Result<(), String> {
    if synth.submit(job) {
        Ok(())
    } else {
        Err("too much text queued".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(extra: Value) -> Map<String, Value> {
        let mut d = json!({"target_language_code":"hi-IN","speaker":"anushka","speech_sample_rate":8000,
            "output_audio_codec":"linear16"});
        for (k, v) in extra.as_object().unwrap() {
            d[k] = v.clone();
        }
        d.as_object().unwrap().clone()
    }

    #[test]
    fn config_is_validated() {
        let c = parse_config(&data(json!({"pace": 1.2, "min_buffer_size": 30})), "bulbul:v2").unwrap();
        assert_eq!(c, VoiceConfig { sample_rate: 8000, min_buffer_size: 30 });
        assert_eq!(
            parse_config(&data(json!({"speech_sample_rate": "16000"})), "bulbul:v2").unwrap().sample_rate,
            16000
        );
        assert!(parse_config(&data(json!({"language_code": "hi-IN"})), "bulbul:v2").is_ok());
        for bad in [
            json!({"speaker": "Anushka"}),
            json!({"speaker": "shubh"}),
            json!({"pace": 3.5}),
            json!({"pitch": "0"}),
            json!({"speech_sample_rate": 44100}),
            json!({"output_audio_codec": "mp3"}),
            json!({"target_language_code": "hi"}),
            json!({"min_buffer_size": "50"}),
            json!({"model": "bulbul:v3"}),
        ] {
            assert!(parse_config(&data(bad.clone()), "bulbul:v2").is_err(), "{bad}");
        }
        assert!(parse_config(&data(json!({"speaker": "shubh", "pace": 0.4})), "bulbul:v3").is_err());
        let mut no_language = data(json!({}));
        no_language.remove("target_language_code");
        assert!(parse_config(&no_language, "bulbul:v2").is_err());
    }
}
