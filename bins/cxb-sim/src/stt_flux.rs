//! Deepgram Flux double: `GET /v2/listen` (wire-protocols §3, "Turn-detecting v2").
//!
//! Caller speech is found by energy exactly as in the v1 double ([`UtteranceDetector`]); caller
//! turn N of a connection is "recognised" as the script's `stt_transcripts[N]`.
//!
//! Turn model, in audio time from the detector and wall time for the decision latency:
//! - speech onset opens turn N; its first interim sends `StartOfTurn`, later interims `Update`s
//!   with a growing prefix of the transcript (one more word per 250 ms of speech);
//! - after `--stt-endpointing-ms` of silence (capped by `eot_timeout_ms`) the speech has ended:
//!   with `eager_eot_threshold` set, `EagerEndOfTurn` goes out at once; `EndOfTurn` follows after
//!   `--stt-latency-ms`, capped so that it comes no later than `eot_timeout_ms` after the speech;
//! - speech resuming before `EndOfTurn` continues the same turn (`TurnResumed` if the eager event
//!   was sent), as Flux does.
//!
//! `Configure` updates thresholds and keyterms (acknowledged with `ConfigureSuccess`); a changed
//! `eot_timeout_ms` caps later `EndOfTurn` latencies but not the silence the detector was built
//! with. `CloseStream` ends any open turn with `EndOfTurn` and closes with 1000.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::audio::{interim_word_count, DetEvent, UtteranceDetector};
use crate::stt_deepgram::dg_error;
use crate::{close_ws, Latencies, SimState};

/// Models the double accepts (Flux rejects every other model on `/v2/listen`).
pub const MODELS: &[&str] = &["flux-general-en", "flux-general-multi"];
/// Deepgram's defaults, reported in `ConfigureSuccess` when the client never set them.
pub const DEFAULT_EOT_THRESHOLD: f64 = 0.7;
pub const DEFAULT_EOT_TIMEOUT_MS: u64 = 5000;
/// Word confidence of every recognised word.
pub const WORD_CONFIDENCE: f64 = 0.98;
/// `end_of_turn_confidence` while the caller is still talking.
const SPEAKING_EOT_CONFIDENCE: f64 = 0.05;
/// `end_of_turn_confidence` of `EndOfTurn` (raised to `eot_threshold` when that is higher).
const END_EOT_CONFIDENCE: f64 = 0.9;
/// Longest keyterm list a `Configure` may carry; keeps one message from growing the state.
const MAX_KEYTERMS: usize = 500;

/// Query parameters the double acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxParams {
    pub model: String,
    pub sample_rate: u32,
    pub eot_threshold: Option<f64>,
    pub eager_eot_threshold: Option<f64>,
    pub eot_timeout_ms: Option<u64>,
    pub keyterms: Vec<String>,
}

fn threshold(key: &str, s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| format!("{key} must be a number between 0 and 1, got {s:?}"))
}

fn timeout_ms(s: &str) -> Result<u64, String> {
    s.parse::<u64>().map_err(|_| format!("eot_timeout_ms must be whole milliseconds, got {s:?}"))
}

/// Parses and validates the raw query string (public for tests). Repeated `keyterm`s are kept
/// in order; for other keys the last occurrence wins.
pub fn parse_params(query: &str) -> Result<FluxParams, String> {
    let mut model = None;
    let mut encoding = None;
    let mut sample_rate = None;
    let mut p = FluxParams {
        model: String::new(),
        sample_rate: 0,
        eot_threshold: None,
        eager_eot_threshold: None,
        eot_timeout_ms: None,
        keyterms: Vec::new(),
    };
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "model" => model = Some(v.into_owned()),
            "encoding" => encoding = Some(v.into_owned()),
            "sample_rate" => sample_rate = Some(v.into_owned()),
            "eot_threshold" => p.eot_threshold = Some(threshold("eot_threshold", &v)?),
            "eager_eot_threshold" => p.eager_eot_threshold = Some(threshold("eager_eot_threshold", &v)?),
            "eot_timeout_ms" => p.eot_timeout_ms = Some(timeout_ms(&v)?),
            "keyterm" if p.keyterms.len() < MAX_KEYTERMS => p.keyterms.push(v.into_owned()),
            _ => {}
        }
    }
    p.model = match model {
        Some(m) if MODELS.contains(&m.as_str()) => m,
        Some(m) => return Err(format!("model {m:?} is not a Flux model ({})", MODELS.join(", "))),
        None => return Err("model is required (e.g. model=flux-general-en)".into()),
    };
    match encoding.as_deref() {
        Some("linear16") => {}
        Some(other) => return Err(format!("this double only supports encoding=linear16, got {other:?}")),
        None => return Err("encoding is required for raw audio (encoding=linear16)".into()),
    }
    p.sample_rate = match sample_rate {
        None => return Err("sample_rate is required for raw audio".into()),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|r| (1000..=192_000).contains(r))
            .ok_or_else(|| format!("sample_rate {s:?} is not a valid rate"))?,
    };
    Ok(p)
}

pub async fn handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    // Same key rule as the v1 double.
    if let Some(refused) = crate::stt_deepgram::refuse_bad_key(&headers, &request_id, "flux") {
        return refused;
    }
    let params = match parse_params(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("flux: rejected upgrade: {e}");
            return dg_error(StatusCode::BAD_REQUEST, "Bad Request", &e, &request_id);
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => return rej.into_response(),
    };
    state.counters.stt_connections.fetch_add(1, Ordering::Relaxed);
    let rid = request_id.clone();
    let mut resp = ws.read_buffer_size(crate::WS_READ_BUFFER).on_upgrade(move |socket| async move {
        let mut conn = Conn::new(state, params, rid);
        conn.run(socket).await;
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("dg-request-id", v);
    }
    resp
}

#[derive(Debug)]
struct Turn {
    index: u32,
    transcript: String,
    total_words: usize,
    onset_ms: u64,
    /// End of the last speech window of the turn (audio time).
    speech_end_ms: u64,
    /// Words in the last transcript sent; never shrinks.
    words_sent: usize,
    started: bool,
    eager_sent: bool,
    /// When `EndOfTurn` goes out; `None` while the caller is speaking.
    eot_due: Option<Instant>,
}

struct Conn {
    state: Arc<SimState>,
    p: FluxParams,
    request_id: String,
    /// Silence (ms of audio) that ends the caller's speech.
    endpoint_ms: u64,
    seq: u64,
    det: UtteranceDetector,
    next_index: usize,
    turn: Option<Turn>,
    odd_byte: Option<u8>,
    samples: Vec<i16>,
    events: Vec<DetEvent>,
    out: Vec<String>,
}

enum Flow {
    Continue,
    Stop,
    /// Flush pending output, send a close frame, stop.
    Close(u16, String),
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Conn {
    fn new(state: Arc<SimState>, p: FluxParams, request_id: String) -> Self {
        let endpoint_ms = Latencies::get(&state.lat.stt_endpointing_ms).min(p.eot_timeout_ms.unwrap_or(u64::MAX));
        Self {
            det: UtteranceDetector::new(p.sample_rate, endpoint_ms),
            endpoint_ms,
            state,
            p,
            request_id,
            seq: 0,
            next_index: 0,
            turn: None,
            odd_byte: None,
            samples: Vec::with_capacity(4096),
            events: Vec::with_capacity(8),
            out: Vec::with_capacity(8),
        }
    }

    /// Queue a server message, stamping the next `sequence_id`.
    fn push(&mut self, mut msg: Value) {
        msg["sequence_id"] = json!(self.seq);
        self.seq += 1;
        self.out.push(msg.to_string());
    }

    async fn run(&mut self, mut socket: WebSocket) {
        self.push(json!({"type": "Connected", "request_id": self.request_id}));
        let idle = self.state.stt_idle_timeout;
        let mut last_activity = Instant::now();
        loop {
            if self.flush_out(&mut socket).await.is_err() {
                return;
            }
            let mut deadline = last_activity + idle;
            if let Some(due) = self.turn.as_ref().and_then(|t| t.eot_due) {
                deadline = deadline.min(due);
            }
            let flow = tokio::select! {
                msg = socket.recv() => match msg {
                    None => Flow::Stop,
                    Some(Err(e)) => {
                        tracing::debug!("flux: socket error: {e}");
                        Flow::Stop
                    }
                    Some(Ok(Message::Binary(b))) => {
                        last_activity = Instant::now();
                        self.on_audio(&b);
                        Flow::Continue
                    }
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_str(), &mut last_activity),
                    Some(Ok(Message::Close(_))) => Flow::Stop,
                    Some(Ok(_)) => Flow::Continue,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if now >= last_activity + idle {
                        tracing::info!("flux: no audio for {idle:?}; closing with NET-0001");
                        Flow::Close(1011, "NET-0001".into())
                    } else {
                        self.on_timer(now);
                        Flow::Continue
                    }
                }
            };
            if self.flush_out(&mut socket).await.is_err() {
                return;
            }
            match flow {
                Flow::Continue => {}
                Flow::Stop => return,
                Flow::Close(code, reason) => {
                    close_ws(&mut socket, code, &reason).await;
                    return;
                }
            }
        }
    }

    async fn flush_out(&mut self, socket: &mut WebSocket) -> Result<(), axum::Error> {
        for m in self.out.drain(..) {
            socket.send(Message::Text(m.into())).await?;
        }
        Ok(())
    }

    fn on_text(&mut self, text: &str, last_activity: &mut Instant) -> Flow {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let description = format!("control message is not JSON: {e}");
                tracing::warn!("flux: {description}");
                self.push(json!({"type": "Error", "code": "INVALID_MESSAGE", "description": description}));
                return Flow::Close(1008, "INVALID_MESSAGE".into());
            }
        };
        match v.get("type").and_then(Value::as_str) {
            Some("KeepAlive") => {
                *last_activity = Instant::now();
                Flow::Continue
            }
            Some("Configure") => {
                self.configure(&v);
                Flow::Continue
            }
            Some("CloseStream") => {
                self.close_stream();
                Flow::Close(1000, String::new())
            }
            other => {
                tracing::warn!("flux: ignoring unknown control message type {other:?}");
                Flow::Continue
            }
        }
    }

    fn on_audio(&mut self, bytes: &[u8]) {
        self.samples.clear();
        crate::audio::decode_pcm16(&mut self.odd_byte, bytes, &mut self.samples);
        self.events.clear();
        self.det.push(&self.samples, &mut self.events);
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            self.on_event(*ev);
        }
        self.events = events;
    }

    fn on_event(&mut self, ev: DetEvent) {
        match ev {
            DetEvent::Onset { at_ms } => {
                if let Some(t) = self.turn.as_mut() {
                    // Speech again before EndOfTurn: the same turn goes on.
                    t.eot_due = None;
                    if std::mem::take(&mut t.eager_sent) {
                        self.push_turn_info("TurnResumed", SPEAKING_EOT_CONFIDENCE);
                    }
                    return;
                }
                let transcript = self.state.script.transcript(self.next_index).to_string();
                self.state.counters.stt_utterances.fetch_add(1, Ordering::Relaxed);
                self.turn = Some(Turn {
                    index: u32::try_from(self.next_index).unwrap_or(u32::MAX),
                    total_words: transcript.split_whitespace().count(),
                    transcript,
                    onset_ms: at_ms,
                    speech_end_ms: at_ms,
                    words_sent: 0,
                    started: false,
                    eager_sent: false,
                    eot_due: None,
                });
                self.next_index += 1;
            }
            DetEvent::Interim { onset_ms, speech_ms } => {
                let Some(t) = self.turn.as_mut() else { return };
                t.words_sent = interim_word_count(speech_ms, t.total_words).max(t.words_sent);
                t.speech_end_ms = t.speech_end_ms.max(onset_ms + speech_ms);
                let event = if std::mem::replace(&mut t.started, true) { "Update" } else { "StartOfTurn" };
                self.push_turn_info(event, SPEAKING_EOT_CONFIDENCE);
            }
            DetEvent::End { end_ms, .. } => {
                let delay = self.eot_delay();
                let eager = self.p.eager_eot_threshold;
                let Some(t) = self.turn.as_mut() else { return };
                t.speech_end_ms = end_ms;
                t.words_sent = t.total_words;
                t.eot_due = Some(Instant::now() + delay);
                if let Some(confidence) = eager {
                    t.eager_sent = true;
                    self.push_turn_info("EagerEndOfTurn", confidence);
                }
            }
        }
    }

    /// Wall time from the end of speech (as the detector saw it) to `EndOfTurn`: the injected
    /// STT latency, but never past `eot_timeout_ms` of silence.
    fn eot_delay(&self) -> Duration {
        let mut ms = Latencies::get(&self.state.lat.stt_latency_ms);
        if let Some(timeout) = self.p.eot_timeout_ms {
            ms = ms.min(timeout.saturating_sub(self.endpoint_ms));
        }
        Duration::from_millis(ms)
    }

    fn on_timer(&mut self, now: Instant) {
        if self.turn.as_ref().and_then(|t| t.eot_due).is_some_and(|due| due <= now) {
            self.end_turn();
        }
    }

    /// Sends `EndOfTurn` for the open turn (if it was ever announced) and forgets it.
    fn end_turn(&mut self) {
        let Some(t) = self.turn.as_mut() else { return };
        t.words_sent = t.total_words;
        if t.started {
            let confidence = END_EOT_CONFIDENCE.max(self.p.eot_threshold.unwrap_or(DEFAULT_EOT_THRESHOLD));
            self.push_turn_info("EndOfTurn", confidence);
        }
        self.turn = None;
    }

    /// `{"type":"CloseStream"}`: end the open turn now; the caller closes with 1000.
    fn close_stream(&mut self) {
        if let Some(DetEvent::End { end_ms, .. }) = self.det.force_end() {
            if let Some(t) = self.turn.as_mut() {
                t.speech_end_ms = end_ms;
            }
        }
        self.end_turn();
    }

    /// `{"type":"Configure","thresholds":{…},"keyterms":[…]}`: all or nothing.
    fn configure(&mut self, v: &Value) {
        match parse_configure(v) {
            Ok(change) => {
                if let Some(x) = change.eot_threshold {
                    self.p.eot_threshold = Some(x);
                }
                if let Some(x) = change.eager_eot_threshold {
                    self.p.eager_eot_threshold = Some(x);
                }
                if let Some(x) = change.eot_timeout_ms {
                    self.p.eot_timeout_ms = Some(x);
                }
                if let Some(k) = change.keyterms {
                    self.p.keyterms = k;
                }
                let msg = json!({
                    "type": "ConfigureSuccess",
                    "request_id": self.request_id,
                    "thresholds": {
                        "eot_threshold": self.p.eot_threshold.unwrap_or(DEFAULT_EOT_THRESHOLD),
                        "eager_eot_threshold": self.p.eager_eot_threshold,
                        "eot_timeout_ms": self.p.eot_timeout_ms.unwrap_or(DEFAULT_EOT_TIMEOUT_MS),
                    },
                    "keyterms": self.p.keyterms,
                });
                self.push(msg);
            }
            Err(e) => {
                tracing::warn!("flux: rejected Configure: {e}");
                let msg = json!({"type": "ConfigureFailure", "request_id": self.request_id});
                self.push(msg);
            }
        }
    }

    /// Queue a `TurnInfo` for the open turn with its current word count.
    fn push_turn_info(&mut self, event: &str, eot_confidence: f64) {
        let msg = self.turn.as_ref().map(|t| {
            turn_info_json(
                &self.request_id,
                event,
                t.index,
                &t.transcript,
                t.words_sent,
                t.onset_ms,
                t.speech_end_ms,
                eot_confidence,
            )
        });
        if let Some(msg) = msg {
            self.push(msg);
        }
    }
}

/// The settings a valid `Configure` changes.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigureChange {
    pub eot_threshold: Option<f64>,
    pub eager_eot_threshold: Option<f64>,
    pub eot_timeout_ms: Option<u64>,
    pub keyterms: Option<Vec<String>>,
}

/// Validates a `Configure` message (public for tests).
pub fn parse_configure(v: &Value) -> Result<ConfigureChange, String> {
    let mut change = ConfigureChange::default();
    match v.get("thresholds") {
        None | Some(Value::Null) => {}
        Some(Value::Object(t)) => {
            let unit = |key: &str| -> Result<Option<f64>, String> {
                match t.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(x) => x
                        .as_f64()
                        .filter(|f| (0.0..=1.0).contains(f))
                        .map(Some)
                        .ok_or_else(|| format!("thresholds.{key} must be a number between 0 and 1")),
                }
            };
            change.eot_threshold = unit("eot_threshold")?;
            change.eager_eot_threshold = unit("eager_eot_threshold")?;
            change.eot_timeout_ms = match t.get("eot_timeout_ms") {
                None | Some(Value::Null) => None,
                Some(x) => Some(x.as_u64().ok_or("thresholds.eot_timeout_ms must be whole milliseconds")?),
            };
        }
        Some(_) => return Err("thresholds must be an object".into()),
    }
    change.keyterms = match v.get("keyterms") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) if items.len() <= MAX_KEYTERMS => Some(
            items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or("keyterms must be strings"))
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(format!("keyterms must be a string or a list of at most {MAX_KEYTERMS} strings")),
    };
    Ok(change)
}

/// A `TurnInfo` with the first `k` words of `transcript` (without `sequence_id`; the connection
/// stamps it).
#[allow(clippy::too_many_arguments)]
pub fn turn_info_json(
    request_id: &str,
    event: &str,
    turn_index: u32,
    transcript: &str,
    k: usize,
    start_ms: u64,
    end_ms: u64,
    eot_confidence: f64,
) -> Value {
    let tokens: Vec<&str> = transcript.split_whitespace().take(k).collect();
    let words: Vec<Value> = tokens.iter().map(|w| json!({"word": w, "confidence": WORD_CONFIDENCE})).collect();
    json!({
        "type": "TurnInfo",
        "request_id": request_id,
        "event": event,
        "turn_index": turn_index,
        "audio_window_start": round3(secs(start_ms)),
        "audio_window_end": round3(secs(end_ms.max(start_ms))),
        "transcript": tokens.join(" "),
        "words": words,
        "end_of_turn_confidence": eot_confidence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{pcm_bytes, samples_for_ms, SpeechSynth};
    use crate::{start, ServeOptions, SimServer};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue as TValue;
    use tokio_tungstenite::tungstenite::{self, protocol::CloseFrame, Message as TMessage};

    type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    #[test]
    fn params_are_validated() {
        let base = "model=flux-general-en&encoding=linear16&sample_rate=8000";
        let p = parse_params(&format!(
            "{base}&eot_threshold=0.8&eager_eot_threshold=0.5&eot_timeout_ms=3000&keyterm=a+b&keyterm=CXB"
        ))
        .unwrap();
        assert_eq!(
            p,
            FluxParams {
                model: "flux-general-en".into(),
                sample_rate: 8000,
                eot_threshold: Some(0.8),
                eager_eot_threshold: Some(0.5),
                eot_timeout_ms: Some(3000),
                keyterms: vec!["a b".into(), "CXB".into()],
            }
        );
        assert!(parse_params("encoding=linear16&sample_rate=8000").unwrap_err().contains("model"));
        assert!(parse_params("model=nova-3&encoding=linear16&sample_rate=8000").unwrap_err().contains("Flux"));
        assert!(parse_params("model=flux-general-en&sample_rate=8000").unwrap_err().contains("encoding"));
        assert!(parse_params("model=flux-general-en&encoding=linear16").unwrap_err().contains("sample_rate"));
        assert!(parse_params(&format!("{base}&eot_threshold=2")).is_err());
        assert!(parse_params(&format!("{base}&eager_eot_threshold=x")).is_err());
        assert!(parse_params(&format!("{base}&eot_timeout_ms=1.5")).is_err());
    }

    #[test]
    fn configure_is_validated() {
        let ok = parse_configure(&json!({"type":"Configure","thresholds":{"eot_threshold":0.8,"eot_timeout_ms":2000},
            "keyterms":["x"]}))
        .unwrap();
        assert_eq!(
            ok,
            ConfigureChange {
                eot_threshold: Some(0.8),
                eager_eot_threshold: None,
                eot_timeout_ms: Some(2000),
                keyterms: Some(vec!["x".into()])
            }
        );
        assert_eq!(parse_configure(&json!({"type":"Configure"})).unwrap(), ConfigureChange::default());
        for bad in [
            json!({"type":"Configure","thresholds":{"eot_threshold":1.5}}),
            json!({"type":"Configure","thresholds":{"eot_timeout_ms":-1}}),
            json!({"type":"Configure","thresholds":[1]}),
            json!({"type":"Configure","keyterms":[1]}),
        ] {
            assert!(parse_configure(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn turn_info_shape() {
        let v = turn_info_json("r", "Update", 2, "Actually wait, I have", 2, 1000, 1500, 0.05);
        assert_eq!(v["transcript"], "Actually wait,");
        assert_eq!(v["words"], json!([{"word":"Actually","confidence":0.98},{"word":"wait,","confidence":0.98}]));
        assert_eq!((v["audio_window_start"].as_f64(), v["audio_window_end"].as_f64()), (Some(1.0), Some(1.5)));
        for k in ["type", "request_id", "event", "turn_index", "end_of_turn_confidence"] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }

    // ------------------------------------------------------------ over a real socket

    async fn server(f: impl FnOnce(&mut ServeOptions)) -> SimServer {
        let mut o = ServeOptions { stt_latency_ms: 30, stt_endpointing_ms: 200, ..ServeOptions::default() };
        f(&mut o);
        start(o).await.expect("server starts")
    }

    fn tone(ms: u64) -> Vec<u8> {
        let mut s = SpeechSynth::new(8000);
        let mut v = Vec::new();
        s.render(samples_for_ms(8000, ms), &mut v);
        pcm_bytes(&v)
    }

    fn silence(ms: u64) -> Vec<u8> {
        vec![0u8; samples_for_ms(8000, ms) * 2]
    }

    const QUERY: &str = "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=8000";

    async fn connect(s: &SimServer, query: &str, auth: Option<&str>) -> Result<Ws, tungstenite::Error> {
        let mut req = format!("{}{query}", s.url("ws")).into_client_request()?;
        if let Some(a) = auth {
            req.headers_mut().insert("authorization", TValue::from_str(a).unwrap());
        }
        Ok(tokio_tungstenite::connect_async(req).await?.0)
    }

    async fn open(s: &SimServer, query: &str) -> Ws {
        let mut ws = connect(s, query, Some("Token sim-key")).await.unwrap();
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["type"], "Connected");
        assert_eq!(hello["sequence_id"], 0);
        assert!(hello["request_id"].as_str().is_some_and(|r| !r.is_empty()));
        ws
    }

    fn http_status(r: Result<Ws, tungstenite::Error>) -> u16 {
        match r {
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("upgrade unexpectedly accepted"),
        }
    }

    enum Got {
        Json(Value),
        Closed(Option<CloseFrame>),
        Timeout,
    }

    async fn next(ws: &mut Ws, within: Duration) -> Got {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Got::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return Got::Closed(None),
                Ok(Some(Ok(TMessage::Close(cf)))) => return Got::Closed(cf),
                Ok(Some(Ok(TMessage::Text(t)))) => return Got::Json(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    async fn next_json(ws: &mut Ws) -> Value {
        match next(ws, Duration::from_secs(3)).await {
            Got::Json(v) => v,
            Got::Closed(cf) => panic!("closed: {cf:?}"),
            Got::Timeout => panic!("no message within 3 s"),
        }
    }

    async fn send_audio(ws: &mut Ws, pcm: &[u8]) {
        for c in pcm.chunks(1280) {
            ws.send(TMessage::Binary(c.to_vec().into())).await.unwrap();
        }
    }

    async fn send_text(ws: &mut Ws, v: Value) {
        ws.send(TMessage::Text(v.to_string().into())).await.unwrap();
    }

    /// Reads `TurnInfo`s until one with `event` arrives; returns the events seen on the way
    /// (including the last) and that message.
    async fn until(ws: &mut Ws, event: &str, seq: &mut u64) -> (Vec<String>, Value) {
        let mut seen = Vec::new();
        loop {
            let v = next_json(ws).await;
            assert_eq!(v["sequence_id"], json!(*seq), "{v}");
            *seq += 1;
            assert_eq!(v["type"], "TurnInfo", "{v}");
            seen.push(v["event"].as_str().unwrap().to_string());
            if v["event"] == event {
                return (seen, v);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flux_rejects_bad_upgrades() {
        let s = server(|_| {}).await;
        assert_eq!(http_status(connect(&s, QUERY, None).await), 401);
        assert_eq!(http_status(connect(&s, QUERY, Some("Token bad-key")).await), 401);
        let bad_model = "/v2/listen?model=nova-3&encoding=linear16&sample_rate=8000";
        assert_eq!(http_status(connect(&s, bad_model, Some("Token k")).await), 400);
        let no_rate = "/v2/listen?model=flux-general-en&encoding=linear16";
        assert_eq!(http_status(connect(&s, no_rate, Some("Token k")).await), 400);
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flux_turns_updates_end_of_turn_configure_and_close() {
        let s = server(|_| {}).await;
        let mut ws = open(&s, QUERY).await;
        let mut seq = 1;

        // Turn 0: 1 s of speech after 200 ms of silence, then 400 ms of silence.
        let mut audio = silence(200);
        audio.extend(tone(1000));
        audio.extend(silence(400));
        send_audio(&mut ws, &audio).await;
        let (events, end) = until(&mut ws, "EndOfTurn", &mut seq).await;
        assert_eq!(events, ["StartOfTurn", "Update", "Update", "Update", "EndOfTurn"]);
        assert_eq!(end["turn_index"], 0);
        assert_eq!(end["transcript"], "I want to check my order status");
        assert_eq!(end["words"].as_array().unwrap().len(), 7);
        assert_eq!(end["words"][0], json!({"word":"I","confidence":0.98}));
        assert_eq!((end["audio_window_start"].as_f64(), end["audio_window_end"].as_f64()), (Some(0.2), Some(1.2)));
        assert_eq!(end["end_of_turn_confidence"], 0.9);

        // Configure: accepted and echoed with the effective settings; a bad one is rejected.
        send_text(&mut ws, json!({"type":"Configure","thresholds":{"eot_threshold":0.85},"keyterms":["bill"]})).await;
        let ok = next_json(&mut ws).await;
        seq += 1;
        assert_eq!(ok["type"], "ConfigureSuccess");
        assert_eq!(ok["thresholds"], json!({"eot_threshold":0.85,"eager_eot_threshold":null,"eot_timeout_ms":5000}));
        assert_eq!(ok["keyterms"], json!(["bill"]));
        send_text(&mut ws, json!({"type":"Configure","thresholds":{"eot_threshold":"high"}})).await;
        let failed = next_json(&mut ws).await;
        seq += 1;
        assert_eq!(failed["type"], "ConfigureFailure");
        assert_eq!(failed["sequence_id"], json!(seq - 1));

        // Turn 1 is still open when CloseStream arrives: it ends with EndOfTurn, then close 1000.
        send_audio(&mut ws, &tone(600)).await;
        send_text(&mut ws, json!({"type":"KeepAlive"})).await;
        let (_, start) = until(&mut ws, "StartOfTurn", &mut seq).await;
        assert_eq!(start["turn_index"], 1);
        send_text(&mut ws, json!({"type":"CloseStream"})).await;
        let (_, end) = until(&mut ws, "EndOfTurn", &mut seq).await;
        assert_eq!(end["transcript"], "Actually wait, I have a different question about my bill");
        assert_eq!(end["end_of_turn_confidence"], 0.9);
        match next(&mut ws, Duration::from_secs(3)).await {
            Got::Closed(Some(cf)) => assert_eq!(u16::from(cf.code), 1000),
            _ => panic!("expected close 1000"),
        }
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flux_eager_end_of_turn_and_resume() {
        // EndOfTurn waits 800 ms after the speech ends, so the caller can resume in between.
        let s = server(|o| o.stt_latency_ms = 800).await;
        let mut ws = open(&s, &format!("{QUERY}&eager_eot_threshold=0.4")).await;
        let mut seq = 1;
        let mut audio = tone(400);
        audio.extend(silence(300));
        send_audio(&mut ws, &audio).await;
        let (events, eager) = until(&mut ws, "EagerEndOfTurn", &mut seq).await;
        assert_eq!(events, ["StartOfTurn", "Update", "EagerEndOfTurn"]);
        assert_eq!(eager["end_of_turn_confidence"], 0.4);
        assert_eq!(eager["transcript"], "I want to check my order status");

        // Speech resumes before EndOfTurn: same turn, TurnResumed, then another eager + the end.
        let mut audio = tone(300);
        audio.extend(silence(300));
        send_audio(&mut ws, &audio).await;
        let (events, resumed) = until(&mut ws, "TurnResumed", &mut seq).await;
        assert_eq!(events, ["TurnResumed"]);
        assert_eq!(resumed["turn_index"], 0);
        let (events, _) = until(&mut ws, "EagerEndOfTurn", &mut seq).await;
        assert!(events.iter().all(|e| e == "Update" || e == "EagerEndOfTurn"), "{events:?}");
        let (events, end) = until(&mut ws, "EndOfTurn", &mut seq).await;
        assert_eq!(events, ["EndOfTurn"]);
        assert_eq!((end["turn_index"].as_u64(), end["audio_window_end"].as_f64()), (Some(0), Some(1.0)));
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flux_eot_timeout_caps_latency_and_idle_closes() {
        // 5 s of injected latency, but eot_timeout_ms=600 with 200 ms endpointing: EndOfTurn is
        // due 400 ms after the detector saw the speech end.
        let s = server(|o| {
            o.stt_latency_ms = 5000;
            o.stt_idle_timeout = Duration::from_millis(1500);
        })
        .await;
        let mut ws = open(&s, &format!("{QUERY}&eot_timeout_ms=600")).await;
        let mut seq = 1;
        let mut audio = tone(300);
        audio.extend(silence(300));
        send_audio(&mut ws, &audio).await;
        let started = Instant::now();
        let (_, end) = until(&mut ws, "EndOfTurn", &mut seq).await;
        assert!(started.elapsed() < Duration::from_millis(1200), "{:?}", started.elapsed());
        assert_eq!(end["transcript"], "I want to check my order status");
        // Nothing else, then NET-0001 once no audio has arrived for the idle timeout.
        match next(&mut ws, Duration::from_secs(3)).await {
            Got::Closed(Some(cf)) => {
                assert_eq!(u16::from(cf.code), 1011);
                assert_eq!(cf.reason.as_str(), "NET-0001");
            }
            Got::Json(v) => panic!("unexpected {v}"),
            _ => panic!("expected close 1011"),
        }
        s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flux_garbage_control_message_is_a_fatal_error() {
        let s = server(|_| {}).await;
        let mut ws = open(&s, QUERY).await;
        ws.send(TMessage::Text("{nope".into())).await.unwrap();
        let err = next_json(&mut ws).await;
        assert_eq!(
            (err["type"].as_str(), err["code"].as_str(), err["sequence_id"].as_u64()),
            (Some("Error"), Some("INVALID_MESSAGE"), Some(1))
        );
        assert!(err["description"].is_string());
        match next(&mut ws, Duration::from_secs(3)).await {
            Got::Closed(Some(cf)) => assert_eq!(u16::from(cf.code), 1008),
            _ => panic!("expected close 1008"),
        }
        s.shutdown().await;
    }
}
