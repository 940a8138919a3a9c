//! Deepgram Flux: turn-detecting live STT v2 (`/v2/listen`, wire-protocols §3 "Turn-detecting v2").
//!
//! Unlike v1, the server decides where a caller turn starts and ends and says so in `TurnInfo`
//! messages, so the stream surfaces turn events instead of transcript segments:
//!
//! ```text
//! let (handle, mut events) = stt_flux::connect(&params).await?;  // handshake + `Connected`, bounded
//! handle.send_audio(&pcm_i16_at_params_sample_rate)?;             // never blocks; Err(Backlog) if full
//! handle.configure(FluxConfigure { eot_threshold: Some(0.8), ..Default::default() })?;
//! handle.close();                                                 // {"type":"CloseStream"}, then the task ends
//! while let Some(ev) = events.recv().await { ... }                // FluxEvent; Error and Closed are terminal
//! ```
//!
//! One spawned task owns the socket. It coalesces caller audio into the ~80 ms binary frames
//! Deepgram recommends for Flux, and sends silence when audio stops flowing: Flux only closes a
//! turn when it hears the silence after it, so a stalled caller stream would otherwise leave the
//! turn open forever (and an idle stream gets dropped by the server).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use crate::stt::{SttCommand, SttEvent, SttHandle, SttParams, Transcript};
use crate::ws::{self, WsStream};
use crate::ProviderError;

/// Vendor label for errors and metrics.
pub const PROVIDER: &str = crate::registry::DEEPGRAM_FLUX.name;
/// The model used when the bot config names a non-Flux model (Flux rejects anything else).
pub const DEFAULT_MODEL: &str = crate::registry::DEEPGRAM_FLUX.default_model;
/// The only Flux model that takes `language_hint`.
pub const MULTILINGUAL_MODEL: &str = "flux-general-multi";

const COMMAND_QUEUE: usize = 512;
const EVENT_QUEUE: usize = 256;
/// Largest server text frame we parse. `TurnInfo` repeats the whole turn's transcript and words on
/// every update, which stays in the tens of KB even for a minute-long monologue; anything larger
/// is a broken peer and is dropped rather than parsed.
const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Events that arrive between the upgrade and `Connected` are kept (not dropped) up to this many.
const MAX_EARLY_EVENTS: usize = 32;

/// Timers of the session. Tests shorten them; production uses [`Timing::default`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Audio is sent in frames of at least this much (Deepgram recommends 80 ms for Flux).
    /// Zero sends every `send_audio` call as its own frame.
    pub audio_chunk: Duration,
    /// Inside a turn (after `StartOfTurn`, before `EndOfTurn`): after this long without caller
    /// audio, send this much silence so Flux can close the turn.
    pub turn_gap: Duration,
    /// Outside a turn: after this long without audio, send one `audio_chunk` of silence so the
    /// server does not drop the stream as idle (v1 drops after 10 s).
    pub idle_gap: Duration,
    /// How long to wait for the server's last turn events and close after `CloseStream`.
    pub close_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            audio_chunk: Duration::from_millis(80),
            turn_gap: Duration::from_millis(500),
            idle_gap: Duration::from_secs(4),
            close_wait: Duration::from_secs(2),
        }
    }
}

/// The turn-detecting options of `stt.extra` (contract §4.2). Invalid values are logged and
/// treated as unset, so a bad bot config degrades to Deepgram's defaults instead of failing calls.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxOptions {
    /// End-of-turn confidence needed to finish a turn (Deepgram default 0.7).
    pub eot_threshold: Option<f64>,
    /// Enables `EagerEndOfTurn`/`TurnResumed` at this confidence.
    pub eager_eot_threshold: Option<f64>,
    /// Silence after speech that ends a turn regardless of confidence (Deepgram default 5000).
    pub eot_timeout_ms: Option<u64>,
    pub keyterms: Vec<String>,
    /// Engine-side: a turn whose average word confidence is not above this is not acted on
    /// (see [`TurnInfo::meets_min_confidence`]). Not sent to Deepgram.
    pub min_confidence: Option<f64>,
    /// Sent as `language_hint` only with [`MULTILINGUAL_MODEL`].
    pub language_hints: Vec<String>,
    /// Engine-side: whether caller speech interrupts the bot (default true). Not sent to Deepgram.
    pub should_interrupt: bool,
}

impl Default for FluxOptions {
    fn default() -> Self {
        Self {
            eot_threshold: None,
            eager_eot_threshold: None,
            eot_timeout_ms: None,
            keyterms: Vec::new(),
            min_confidence: None,
            language_hints: Vec::new(),
            should_interrupt: true,
        }
    }
}

impl FluxOptions {
    pub fn from_extra(extra: &Map<String, Value>) -> Self {
        Self {
            eot_threshold: extra.get("eot_threshold").and_then(|v| unit_interval("eot_threshold", v)),
            eager_eot_threshold: extra.get("eager_eot_threshold").and_then(|v| unit_interval("eager_eot_threshold", v)),
            eot_timeout_ms: extra.get("eot_timeout_ms").and_then(|v| millis("eot_timeout_ms", v)),
            keyterms: extra.get("keyterm").map(|v| strings("keyterm", v)).unwrap_or_default(),
            min_confidence: extra.get("min_confidence").and_then(|v| unit_interval("min_confidence", v)),
            language_hints: extra.get("language_hints").map(|v| strings("language_hints", v)).unwrap_or_default(),
            should_interrupt: extra
                .get("should_interrupt")
                .map(|v| boolean("should_interrupt", v, true))
                .unwrap_or(true),
        }
    }
}

/// A number, or a string holding one: bot configs written by hand mix the two.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

fn unit_interval(key: &str, value: &Value) -> Option<f64> {
    let parsed = number(value).filter(|f| (0.0..=1.0).contains(f));
    if parsed.is_none() && !value.is_null() {
        tracing::warn!(key, %value, "ignoring stt.extra option: expected a number between 0 and 1");
    }
    parsed
}

fn millis(key: &str, value: &Value) -> Option<u64> {
    // `1500.0` from a YAML/JSON config means 1500; Deepgram rejects the float spelling.
    let parsed = number(value).filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e12).map(|f| f as u64);
    if parsed.is_none() && !value.is_null() {
        tracing::warn!(key, %value, "ignoring stt.extra option: expected whole milliseconds");
    }
    parsed
}

/// A string or an array of strings; empty strings and non-strings are dropped.
fn strings(key: &str, value: &Value) -> Vec<String> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str().map(str::trim) {
            Some(s) if !s.is_empty() => out.push(s.to_string()),
            Some(_) => {}
            None => tracing::warn!(key, %item, "ignoring non-string stt.extra list entry"),
        }
    }
    out
}

fn boolean(key: &str, value: &Value, default: bool) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) if s.eq_ignore_ascii_case("true") => true,
        Value::String(s) if s.eq_ignore_ascii_case("false") => false,
        Value::Null => default,
        other => {
            tracing::warn!(key, %other, "ignoring stt.extra option: expected true or false");
            default
        }
    }
}

/// Mid-stream settings change (`Configure`). `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FluxConfigure {
    pub eot_threshold: Option<f64>,
    pub eager_eot_threshold: Option<f64>,
    pub eot_timeout_ms: Option<u64>,
    /// Replaces the keyterm list; `Some(vec![])` clears it.
    pub keyterms: Option<Vec<String>>,
}

impl FluxConfigure {
    /// The wire message, or `None` when nothing would change.
    pub fn to_message(&self) -> Option<Value> {
        let mut thresholds = Map::new();
        if let Some(v) = self.eot_threshold {
            thresholds.insert("eot_threshold".into(), json!(v));
        }
        if let Some(v) = self.eager_eot_threshold {
            thresholds.insert("eager_eot_threshold".into(), json!(v));
        }
        if let Some(v) = self.eot_timeout_ms {
            thresholds.insert("eot_timeout_ms".into(), json!(v));
        }
        let mut msg = Map::new();
        msg.insert("type".into(), json!("Configure"));
        if !thresholds.is_empty() {
            msg.insert("thresholds".into(), Value::Object(thresholds));
        }
        if let Some(keyterms) = &self.keyterms {
            msg.insert("keyterms".into(), json!(keyterms));
        }
        (msg.len() > 1).then_some(Value::Object(msg))
    }
}

/// One word of a turn's transcript (punctuated and cased, as Flux sends it).
#[derive(Debug, Clone, PartialEq)]
pub struct FluxWord {
    pub word: String,
    pub confidence: f32,
}

/// The payload of a `TurnInfo` message.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnInfo {
    pub turn_index: u32,
    /// Everything said in the turn so far (not a delta).
    pub transcript: String,
    pub words: Vec<FluxWord>,
    /// Seconds from the stream start.
    pub audio_window_start: f64,
    pub audio_window_end: f64,
    /// Flux's confidence that no more speech is coming in this turn.
    pub end_of_turn_confidence: f32,
}

impl TurnInfo {
    /// Mean word confidence; `None` without words.
    pub fn word_confidence(&self) -> Option<f32> {
        if self.words.is_empty() {
            return None;
        }
        Some(self.words.iter().map(|w| w.confidence).sum::<f32>() / self.words.len() as f32)
    }

    /// `stt.extra.min_confidence` semantics: no threshold (or 0) accepts everything; otherwise the
    /// mean word confidence must exceed it, and a turn without words does not.
    pub fn meets_min_confidence(&self, min_confidence: Option<f64>) -> bool {
        match min_confidence {
            None => true,
            Some(min) if min <= 0.0 => true,
            Some(min) => self.word_confidence().is_some_and(|c| f64::from(c) > min),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FluxEvent {
    /// The caller began a new turn.
    StartOfTurn(TurnInfo),
    /// More of the current turn was transcribed.
    Update(TurnInfo),
    /// Moderate confidence the turn is over: a chance to start preparing a reply.
    EagerEndOfTurn(TurnInfo),
    /// Speech continued after `EagerEndOfTurn`: drop the speculative reply.
    TurnResumed(TurnInfo),
    /// The turn is over; `transcript` is final.
    EndOfTurn(TurnInfo),
    /// The server accepted a `Configure`.
    Configured,
    /// The server rejected a `Configure`; the stream continues with the previous settings.
    ConfigureFailed(String),
    /// Terminal: the stream failed, the server sent `Error`, or it closed unexpectedly.
    Error(ProviderError),
    /// Terminal: the stream ended after `close()`.
    Closed,
}

#[derive(Debug)]
enum Command {
    Audio(Vec<u8>),
    Configure(Value),
    Close,
}

/// Cheap, cloneable sender side of a Flux stream. Dropping every clone closes the stream.
#[derive(Debug, Clone)]
pub struct FluxHandle {
    tx: mpsc::Sender<Command>,
    request_id: Arc<str>,
}

impl FluxHandle {
    /// Queue caller audio (i16 samples, sent as LINEAR16 little-endian). Never blocks.
    pub fn send_audio(&self, pcm: &[i16]) -> Result<(), ProviderError> {
        let mut bytes = Vec::with_capacity(pcm.len() * 2);
        for s in pcm {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        self.send_linear16(bytes)
    }

    /// Queue audio that is already LINEAR16 little-endian (what [`crate::stt::SttHandle`]
    /// produces), without converting it again. Never blocks.
    pub fn send_linear16(&self, bytes: Vec<u8>) -> Result<(), ProviderError> {
        self.try_send(Command::Audio(bytes))
    }

    /// Change turn-detection thresholds or keyterms mid-stream. The answer arrives as
    /// [`FluxEvent::Configured`] or [`FluxEvent::ConfigureFailed`]. A no-op change sends nothing.
    pub fn configure(&self, change: &FluxConfigure) -> Result<(), ProviderError> {
        match change.to_message() {
            Some(msg) => self.try_send(Command::Configure(msg)),
            None => Ok(()),
        }
    }

    /// Close the stream gracefully: `CloseStream`, the server's last events, then `Closed`.
    pub fn close(&self) {
        let _ = self.tx.try_send(Command::Close);
    }

    /// Deepgram's id for this stream (from `Connected`), for logs and support tickets.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    fn try_send(&self, cmd: Command) -> Result<(), ProviderError> {
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProviderError::Backlog { provider: PROVIDER },
            mpsc::error::TrySendError::Closed(_) => {
                ProviderError::Closed { provider: PROVIDER, detail: "stream task ended".into() }
            }
        })
    }
}

/// Flux behind the generic STT API ([`crate::stt::connect`] for `deepgram_flux`): `StartOfTurn` →
/// `SpeechStarted`, `Update` → interim transcript, `EndOfTurn` → final transcript with
/// `speech_final` plus `UtteranceEnd`, so the STT's own turn decision closes the caller's turn.
pub(crate) async fn connect_stt(params: &SttParams) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    let (flux, mut flux_rx) = connect(params).await?;
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<SttCommand>(64);
    let (ev_tx, ev_rx) = mpsc::channel::<SttEvent>(64);
    let provider = PROVIDER;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(SttCommand::Audio(bytes)) => {
                        if let Err(e) = flux.send_linear16(bytes) {
                            let _ = ev_tx.send(SttEvent::Error(e)).await;
                            return;
                        }
                    }
                    // Flux decides turn ends itself; there is nothing to flush.
                    Some(SttCommand::Finalize) => {}
                    Some(SttCommand::Close) | None => flux.close(),
                },
                ev = flux_rx.recv() => {
                    let mapped: Vec<SttEvent> = match ev {
                        Some(FluxEvent::StartOfTurn(_)) => vec![SttEvent::SpeechStarted],
                        Some(FluxEvent::Update(t)) if !t.transcript.trim().is_empty() => vec![SttEvent::Transcript(Transcript {
                            text: t.transcript,
                            is_final: false,
                            speech_final: false,
                            from_finalize: false,
                            confidence: 1.0,
                            start: t.audio_window_start,
                            duration: (t.audio_window_end - t.audio_window_start).max(0.0),
                        })],
                        Some(FluxEvent::EndOfTurn(t)) => vec![
                            SttEvent::Transcript(Transcript {
                                confidence: t.end_of_turn_confidence,
                                text: t.transcript,
                                is_final: true,
                                speech_final: true,
                                from_finalize: false,
                                start: t.audio_window_start,
                                duration: (t.audio_window_end - t.audio_window_start).max(0.0),
                            }),
                            SttEvent::UtteranceEnd,
                        ],
                        Some(FluxEvent::Error(e)) => vec![SttEvent::Error(e)],
                        Some(FluxEvent::Closed) | None => vec![SttEvent::Closed],
                        Some(_) => vec![],
                    };
                    for m in mapped {
                        let terminal = matches!(m, SttEvent::Error(_) | SttEvent::Closed);
                        if ev_tx.send(m).await.is_err() || terminal {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok((SttHandle { tx: cmd_tx, provider }, ev_rx))
}

/// Open a Flux stream. `params.provider` is not consulted; `params.model` is used when it names a
/// Flux model, else [`DEFAULT_MODEL`]; `params.language` is unused (Flux models are per language).
/// Returns once the server has sent `Connected`, all within `params.connect_timeout`.
pub async fn connect(params: &SttParams) -> Result<(FluxHandle, mpsc::Receiver<FluxEvent>), ProviderError> {
    connect_with(params, Timing::default()).await
}

pub(crate) async fn connect_with(
    params: &SttParams,
    timing: Timing,
) -> Result<(FluxHandle, mpsc::Receiver<FluxEvent>), ProviderError> {
    let deadline = Instant::now() + params.connect_timeout;
    let options = FluxOptions::from_extra(&params.extra);
    let url = listen_url(params, &options)?;
    let auth = format!("Token {}", params.api_key);
    let mut socket = ws::connect(PROVIDER, &url, &[("authorization", auth)], params.connect_timeout).await?;
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let mut early = Vec::new();
    let request_id = match tokio::time::timeout_at(deadline, await_connected(&mut socket, &mut early)).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => {
            ws::close_quietly(&mut socket).await;
            return Err(e);
        }
        Err(_) => {
            ws::close_quietly(&mut socket).await;
            return Err(ProviderError::Timeout { provider: PROVIDER, what: "waiting for Connected".into() });
        }
    };
    tracing::debug!(request_id, "deepgram flux stream connected");
    let mut turn_open = false;
    for event in early {
        turn_open = track_turn(turn_open, &event);
        // The queue is fresh and larger than MAX_EARLY_EVENTS, so this cannot fail.
        let _ = ev_tx.try_send(event);
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let chunk_bytes = bytes_for(params.sample_rate, timing.audio_chunk);
    let session = Session {
        ws: socket,
        cmd_rx,
        ev_tx,
        timing,
        sample_rate: params.sample_rate,
        chunk_bytes,
        pending: Vec::with_capacity(chunk_bytes),
        turn_open,
    };
    tokio::spawn(session.run());
    Ok((FluxHandle { tx: cmd_tx, request_id: Arc::from(request_id) }, ev_rx))
}

/// Read until `Connected`. A server `Error` or close before it is a connect failure.
async fn await_connected(socket: &mut WsStream, early: &mut Vec<FluxEvent>) -> Result<String, ProviderError> {
    loop {
        match socket.next().await {
            None => {
                return Err(ProviderError::Closed {
                    provider: PROVIDER,
                    detail: "socket ended before Connected".into(),
                })
            }
            Some(Err(e)) => return Err(ws::socket_error(PROVIDER, e)),
            Some(Ok(Message::Close(frame))) => return Err(ws::unexpected_close(PROVIDER, frame.as_ref())),
            Some(Ok(Message::Text(text))) => match parse_server_message(text.as_str()) {
                Some(Incoming::Connected { request_id }) => return Ok(request_id),
                Some(Incoming::Fatal(e)) => return Err(e),
                Some(Incoming::Event(event)) if early.len() < MAX_EARLY_EVENTS => early.push(event),
                Some(Incoming::Event(_)) => tracing::debug!("dropping deepgram flux event received before Connected"),
                None => {}
            },
            Some(Ok(_)) => {}
        }
    }
}

/// `{base}/v2/listen?model=…&encoding=linear16&sample_rate=…` plus the options that are set.
pub fn listen_url(params: &SttParams, options: &FluxOptions) -> Result<Url, ProviderError> {
    let mut url = ws::ws_url(PROVIDER, &params.base_url, "/v2/listen")?;
    let model = if params.model.starts_with("flux-") {
        params.model.as_str()
    } else {
        if !params.model.is_empty() {
            tracing::debug!(model = params.model, "not a Flux model; using {DEFAULT_MODEL}");
        }
        DEFAULT_MODEL
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("model", model)
            .append_pair("encoding", "linear16")
            .append_pair("sample_rate", &params.sample_rate.to_string());
        // f64's Display prints 0.7 as "0.7" and 1.0 as "1": no float noise in the URL.
        if let Some(v) = options.eot_threshold {
            q.append_pair("eot_threshold", &v.to_string());
        }
        if let Some(v) = options.eager_eot_threshold {
            q.append_pair("eager_eot_threshold", &v.to_string());
        }
        if let Some(v) = options.eot_timeout_ms {
            q.append_pair("eot_timeout_ms", &v.to_string());
        }
        for keyterm in &options.keyterms {
            q.append_pair("keyterm", keyterm);
        }
        if model == MULTILINGUAL_MODEL {
            for hint in &options.language_hints {
                q.append_pair("language_hint", hint);
            }
        } else if !options.language_hints.is_empty() {
            tracing::debug!(model, "language_hints apply only to {MULTILINGUAL_MODEL}; not sent");
        }
    }
    Ok(url)
}

/// Bytes of LINEAR16 mono audio in `d` at `rate`, rounded down to whole samples.
fn bytes_for(rate: u32, d: Duration) -> usize {
    (u128::from(rate) * d.as_millis() / 1000) as usize * 2
}

/// Whether a turn is open after `event`, given whether one was open before.
fn track_turn(open: bool, event: &FluxEvent) -> bool {
    match event {
        FluxEvent::StartOfTurn(_) | FluxEvent::EagerEndOfTurn(_) | FluxEvent::TurnResumed(_) => true,
        FluxEvent::EndOfTurn(_) => false,
        // Flux may send `Update`s between turns too; they say nothing about turn state.
        _ => open,
    }
}

/// Why the session loop stopped.
enum End {
    /// Graceful close after `CloseStream`.
    Closed,
    Failed(ProviderError),
    /// Nobody listens to events any more; just drop the socket.
    ReceiverGone,
}

struct Session {
    ws: WsStream,
    cmd_rx: mpsc::Receiver<Command>,
    ev_tx: mpsc::Sender<FluxEvent>,
    timing: Timing,
    sample_rate: u32,
    /// Frame size audio is coalesced to.
    chunk_bytes: usize,
    /// Caller audio not yet sent (always whole samples, less than `chunk_bytes`).
    pending: Vec<u8>,
    /// Between `StartOfTurn` and `EndOfTurn`: silence is due sooner when audio stops.
    turn_open: bool,
}

impl Session {
    async fn run(mut self) {
        let terminal = match self.pump().await {
            End::Closed => FluxEvent::Closed,
            End::Failed(e) => {
                tracing::warn!(error = %e, "deepgram flux stream failed");
                // The server may still be waiting for our side of the close handshake.
                ws::close_quietly(&mut self.ws).await;
                FluxEvent::Error(e)
            }
            End::ReceiverGone => return,
        };
        let _ = self.ev_tx.send(terminal).await;
    }

    async fn pump(&mut self) -> End {
        let mut last_audio = Instant::now();
        loop {
            let gap = if self.turn_open { self.timing.turn_gap } else { self.timing.idle_gap };
            tokio::select! {
                cmd = self.cmd_rx.recv() => {
                    let sent = match cmd {
                        Some(Command::Audio(bytes)) => {
                            last_audio = Instant::now();
                            self.queue_audio(bytes).await
                        }
                        Some(Command::Configure(msg)) => ws::send_json(PROVIDER, &mut self.ws, &msg).await,
                        // Every handle dropped counts as a close: nobody can send audio any more.
                        Some(Command::Close) | None => return self.close_stream().await,
                    };
                    if let Err(e) = sent {
                        return End::Failed(e);
                    }
                }
                msg = self.ws.next() => {
                    if let Some(end) = self.on_message(msg).await {
                        return end;
                    }
                }
                _ = tokio::time::sleep_until(last_audio + gap) => {
                    last_audio = Instant::now();
                    let silence = if self.turn_open { self.timing.turn_gap } else { self.timing.audio_chunk };
                    if let Err(e) = self.send_silence(silence).await {
                        return End::Failed(e);
                    }
                }
            }
        }
    }

    /// Buffer caller audio and send it once a whole chunk is there.
    async fn queue_audio(&mut self, bytes: Vec<u8>) -> Result<(), ProviderError> {
        if self.pending.is_empty() && bytes.len() >= self.chunk_bytes {
            return self.send_frame(bytes).await;
        }
        self.pending.extend_from_slice(&bytes);
        if self.pending.len() >= self.chunk_bytes {
            self.flush_audio().await?;
        }
        Ok(())
    }

    async fn flush_audio(&mut self) -> Result<(), ProviderError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let frame = std::mem::replace(&mut self.pending, Vec::with_capacity(self.chunk_bytes));
        self.send_frame(frame).await
    }

    /// Buffered audio plus `d` of silence, as one frame.
    async fn send_silence(&mut self, d: Duration) -> Result<(), ProviderError> {
        let zeros = bytes_for(self.sample_rate, d).max(2);
        tracing::debug!(
            turn_open = self.turn_open,
            ms = d.as_millis() as u64,
            "no caller audio; sending silence to flux"
        );
        let mut frame = std::mem::replace(&mut self.pending, Vec::with_capacity(self.chunk_bytes));
        frame.resize(frame.len() + zeros, 0);
        self.send_frame(frame).await
    }

    async fn send_frame(&mut self, bytes: Vec<u8>) -> Result<(), ProviderError> {
        // An empty binary frame means "end of audio" to Deepgram: never send one.
        if bytes.is_empty() {
            return Ok(());
        }
        self.ws.send(Message::binary(bytes)).await.map_err(|e| ws::socket_error(PROVIDER, e))
    }

    /// Handle one read from the socket; `Some` ends the session.
    async fn on_message(&mut self, msg: Option<Result<Message, tungstenite::Error>>) -> Option<End> {
        match msg {
            None => Some(End::Failed(ProviderError::Closed { provider: PROVIDER, detail: "socket ended".into() })),
            Some(Err(e)) => Some(End::Failed(ws::socket_error(PROVIDER, e))),
            Some(Ok(Message::Close(frame))) => Some(End::Failed(ws::unexpected_close(PROVIDER, frame.as_ref()))),
            Some(Ok(Message::Text(text))) => match parse_server_message(text.as_str())? {
                Incoming::Event(event) => {
                    self.turn_open = track_turn(self.turn_open, &event);
                    self.ev_tx.send(event).await.err().map(|_| End::ReceiverGone)
                }
                Incoming::Fatal(e) => Some(End::Failed(e)),
                Incoming::Connected { .. } => {
                    tracing::debug!("ignoring repeated deepgram flux Connected");
                    None
                }
            },
            Some(Ok(_)) => None,
        }
    }

    /// Flush audio, `CloseStream`, then forward the server's last events until it closes (bounded).
    async fn close_stream(&mut self) -> End {
        let sent = match self.flush_audio().await {
            Ok(()) => ws::send_json(PROVIDER, &mut self.ws, &json!({"type": "CloseStream"})).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "deepgram flux socket already gone at close");
            return End::Closed;
        }
        let deadline = Instant::now() + self.timing.close_wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => {
                    tracing::debug!("deepgram flux did not close the stream in time");
                    break;
                }
                Ok(Some(Ok(Message::Text(text)))) => match parse_server_message(text.as_str()) {
                    Some(Incoming::Event(event)) => {
                        if self.ev_tx.send(event).await.is_err() {
                            return End::ReceiverGone;
                        }
                    }
                    Some(Incoming::Fatal(e)) => return End::Failed(e),
                    Some(Incoming::Connected { .. }) | None => {}
                },
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                Ok(Some(Ok(_))) => {}
            }
        }
        ws::close_quietly(&mut self.ws).await;
        End::Closed
    }
}

/// A server message that matters to the client.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Connected {
        request_id: String,
    },
    Event(FluxEvent),
    /// `Error`: the server is about to close the stream.
    Fatal(ProviderError),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
}

/// `Option`s everywhere: a missing or null field must not cost us the whole turn.
#[derive(Deserialize)]
struct TurnInfoMsg {
    event: Option<String>,
    turn_index: Option<f64>,
    audio_window_start: Option<f64>,
    audio_window_end: Option<f64>,
    transcript: Option<String>,
    words: Option<Vec<WordMsg>>,
    end_of_turn_confidence: Option<f32>,
}

#[derive(Deserialize)]
struct WordMsg {
    word: Option<String>,
    confidence: Option<f32>,
}

#[derive(Deserialize)]
struct ConnectedMsg {
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorMsg {
    code: Option<String>,
    description: Option<String>,
}

/// Map one server text frame; `None` for messages we do not surface (malformed ones included).
pub(crate) fn parse_server_message(text: &str) -> Option<Incoming> {
    if text.len() > MAX_TEXT_BYTES {
        tracing::debug!(bytes = text.len(), "ignoring oversized deepgram flux message");
        return None;
    }
    let kind = match serde_json::from_str::<Envelope>(text) {
        Ok(envelope) => envelope.kind,
        Err(e) => {
            tracing::debug!(error = %e, "ignoring malformed deepgram flux message");
            return None;
        }
    };
    match kind.as_str() {
        "TurnInfo" => parse_turn_info(text).map(Incoming::Event),
        "Connected" => {
            let msg: ConnectedMsg = parse_or_log(text, "Connected")?;
            Some(Incoming::Connected { request_id: msg.request_id.unwrap_or_default() })
        }
        "Error" => {
            // Even a mangled Error means the server is giving up on the stream.
            let msg = parse_or_log::<ErrorMsg>(text, "Error").unwrap_or(ErrorMsg { code: None, description: None });
            let code = msg.code.unwrap_or_else(|| "UNKNOWN".into());
            let detail = match msg.description.filter(|d| !d.is_empty()) {
                Some(d) => format!("{code}: {d}"),
                None => code,
            };
            Some(Incoming::Fatal(ProviderError::Remote { provider: PROVIDER, detail: ws::truncate(detail, 512) }))
        }
        "ConfigureSuccess" => Some(Incoming::Event(FluxEvent::Configured)),
        "ConfigureFailure" => {
            let msg = parse_or_log::<ErrorMsg>(text, "ConfigureFailure");
            let detail = msg.and_then(|m| m.description.or(m.code)).unwrap_or_else(|| "rejected".into());
            Some(Incoming::Event(FluxEvent::ConfigureFailed(ws::truncate(detail, 512))))
        }
        "Warning" => {
            if let Some(m) = parse_or_log::<ErrorMsg>(text, "Warning") {
                tracing::warn!(
                    code = m.code.as_deref(),
                    description = m.description.as_deref(),
                    "deepgram flux warning"
                );
            }
            None
        }
        other => {
            tracing::debug!(kind = other, "ignoring deepgram flux message");
            None
        }
    }
}

fn parse_or_log<T: for<'de> Deserialize<'de>>(text: &str, kind: &str) -> Option<T> {
    match serde_json::from_str(text) {
        Ok(msg) => Some(msg),
        Err(e) => {
            tracing::debug!(kind, error = %e, "ignoring malformed deepgram flux message");
            None
        }
    }
}

fn parse_turn_info(text: &str) -> Option<FluxEvent> {
    let msg: TurnInfoMsg = parse_or_log(text, "TurnInfo")?;
    // The spec types the index as a double; anything that is not a small whole number is garbage.
    let turn_index = match msg.turn_index {
        Some(i) if i >= 0.0 && i.fract() == 0.0 && i <= f64::from(u32::MAX) => i as u32,
        other => {
            tracing::debug!(turn_index = ?other, "ignoring deepgram flux TurnInfo without a valid turn_index");
            return None;
        }
    };
    let info = TurnInfo {
        turn_index,
        transcript: msg.transcript.unwrap_or_default(),
        words: msg
            .words
            .unwrap_or_default()
            .into_iter()
            .filter_map(|w| Some(FluxWord { word: w.word?, confidence: w.confidence.unwrap_or(0.0) }))
            .collect(),
        audio_window_start: msg.audio_window_start.unwrap_or(0.0),
        audio_window_end: msg.audio_window_end.unwrap_or(0.0),
        end_of_turn_confidence: msg.end_of_turn_confidence.unwrap_or(0.0),
    };
    match msg.event.as_deref() {
        Some("StartOfTurn") => Some(FluxEvent::StartOfTurn(info)),
        Some("Update") => Some(FluxEvent::Update(info)),
        Some("EagerEndOfTurn") => Some(FluxEvent::EagerEndOfTurn(info)),
        Some("TurnResumed") => Some(FluxEvent::TurnResumed(info)),
        Some("EndOfTurn") => Some(FluxEvent::EndOfTurn(info)),
        other => {
            tracing::debug!(event = ?other, "ignoring deepgram flux TurnInfo event");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn params(base_url: String, extra: Value) -> SttParams {
        SttParams {
            provider: "deepgram_flux".into(),
            base_url,
            api_key: "k".into(),
            model: "flux-general-en".into(),
            language: "en".into(),
            sample_rate: 8000,
            extra: extra.as_object().cloned().unwrap_or_default(),
            connect_timeout: Duration::from_secs(2),
        }
    }

    fn turn(event: &str, index: u32, transcript: &str) -> String {
        json!({"type":"TurnInfo","request_id":"r","sequence_id":3,"event":event,"turn_index":index,
            "audio_window_start":0.5,"audio_window_end":1.75,"transcript":transcript,
            "words":[{"word":"Hello","confidence":0.9},{"word":"there.","confidence":0.7}],
            "end_of_turn_confidence":0.81})
        .to_string()
    }

    fn info(index: u32, transcript: &str) -> TurnInfo {
        TurnInfo {
            turn_index: index,
            transcript: transcript.into(),
            words: vec![
                FluxWord { word: "Hello".into(), confidence: 0.9 },
                FluxWord { word: "there.".into(), confidence: 0.7 },
            ],
            audio_window_start: 0.5,
            audio_window_end: 1.75,
            end_of_turn_confidence: 0.81,
        }
    }

    #[test]
    fn parses_every_turn_event() {
        let ev = |e: &str| parse_server_message(&turn(e, 2, "Hello there."));
        let i = info(2, "Hello there.");
        assert_eq!(ev("StartOfTurn"), Some(Incoming::Event(FluxEvent::StartOfTurn(i.clone()))));
        assert_eq!(ev("Update"), Some(Incoming::Event(FluxEvent::Update(i.clone()))));
        assert_eq!(ev("EagerEndOfTurn"), Some(Incoming::Event(FluxEvent::EagerEndOfTurn(i.clone()))));
        assert_eq!(ev("TurnResumed"), Some(Incoming::Event(FluxEvent::TurnResumed(i.clone()))));
        assert_eq!(ev("EndOfTurn"), Some(Incoming::Event(FluxEvent::EndOfTurn(i))));
        assert_eq!(ev("SomethingNew"), None);
    }

    #[test]
    fn parses_control_messages() {
        let connected = r#"{"type":"Connected","request_id":"abc","sequence_id":0}"#;
        assert_eq!(parse_server_message(connected), Some(Incoming::Connected { request_id: "abc".into() }));
        let err = r#"{"type":"Error","sequence_id":4,"code":"INTERNAL_SERVER_ERROR","description":"boom"}"#;
        assert_eq!(
            parse_server_message(err),
            Some(Incoming::Fatal(ProviderError::Remote {
                provider: PROVIDER,
                detail: "INTERNAL_SERVER_ERROR: boom".into()
            }))
        );
        // A mangled Error is still fatal.
        assert!(matches!(parse_server_message(r#"{"type":"Error","code":7}"#), Some(Incoming::Fatal(_))));
        let ok = r#"{"type":"ConfigureSuccess","request_id":"a","sequence_id":5,"thresholds":{},"keyterms":[]}"#;
        assert_eq!(parse_server_message(ok), Some(Incoming::Event(FluxEvent::Configured)));
        let failed = r#"{"type":"ConfigureFailure","request_id":"a","sequence_id":6}"#;
        assert_eq!(parse_server_message(failed), Some(Incoming::Event(FluxEvent::ConfigureFailed("rejected".into()))));
        let warning = r#"{"type":"Warning","request_id":"a","sequence_id":7,"code":"X","description":"y"}"#;
        assert_eq!(parse_server_message(warning), None);
    }

    #[test]
    fn malformed_messages_are_ignored() {
        for bad in [
            "not json",
            "[]",
            r#"{"no_type":1}"#,
            r#"{"type":"TurnInfo","event":"Update"}"#,
            r#"{"type":"TurnInfo","event":"Update","turn_index":-1}"#,
            r#"{"type":"TurnInfo","event":"Update","turn_index":1.5}"#,
            r#"{"type":"TurnInfo","event":"Update","turn_index":1,"words":"x"}"#,
            r#"{"type":"TurnInfo","event":7,"turn_index":1}"#,
        ] {
            assert_eq!(parse_server_message(bad), None, "{bad}");
        }
        // Missing optional fields and null words still make an event.
        let sparse = r#"{"type":"TurnInfo","event":"EndOfTurn","turn_index":0,"words":null}"#;
        let Some(Incoming::Event(FluxEvent::EndOfTurn(t))) = parse_server_message(sparse) else { panic!() };
        assert_eq!((t.turn_index, t.transcript.as_str(), t.words.len()), (0, "", 0));
        // Oversized frames are not parsed at all.
        let huge = turn("Update", 1, &"a".repeat(MAX_TEXT_BYTES));
        assert_eq!(parse_server_message(&huge), None);
    }

    #[test]
    fn confidence_rules() {
        let t = info(0, "Hello there.");
        assert!((t.word_confidence().unwrap() - 0.8).abs() < 1e-6);
        assert!(t.meets_min_confidence(None));
        assert!(t.meets_min_confidence(Some(0.0)));
        assert!(t.meets_min_confidence(Some(0.75)));
        assert!(!t.meets_min_confidence(Some(0.8)));
        let empty = TurnInfo { words: vec![], ..t };
        assert_eq!(empty.word_confidence(), None);
        assert!(!empty.meets_min_confidence(Some(0.1)));
    }

    #[test]
    fn options_from_extra() {
        let extra = json!({"eot_threshold": "0.8", "eager_eot_threshold": 0.5, "eot_timeout_ms": 1500.0,
            "keyterm": ["Exotel", "", 3, "CXB"], "min_confidence": 0.4, "language_hints": "hi",
            "should_interrupt": false});
        let o = FluxOptions::from_extra(extra.as_object().unwrap());
        assert_eq!(
            o,
            FluxOptions {
                eot_threshold: Some(0.8),
                eager_eot_threshold: Some(0.5),
                eot_timeout_ms: Some(1500),
                keyterms: vec!["Exotel".into(), "CXB".into()],
                min_confidence: Some(0.4),
                language_hints: vec!["hi".into()],
                should_interrupt: false,
            }
        );
        let bad = json!({"eot_threshold": 7, "eager_eot_threshold": "x", "eot_timeout_ms": -5,
            "keyterm": {"a": 1}, "should_interrupt": "maybe"});
        assert_eq!(FluxOptions::from_extra(bad.as_object().unwrap()), FluxOptions::default());
    }

    #[test]
    fn url_has_only_the_options_set() {
        let p = params("https://api.deepgram.com/".into(), json!({}));
        let url = listen_url(&p, &FluxOptions::default()).unwrap();
        assert_eq!(
            url.as_str(),
            "wss://api.deepgram.com/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=8000"
        );

        let mut p = params("wss://api.deepgram.com".into(), json!({}));
        p.model = "nova-3".into();
        let o = FluxOptions {
            eot_threshold: Some(0.7),
            eager_eot_threshold: Some(0.4),
            eot_timeout_ms: Some(3000),
            keyterms: vec!["a b".into(), "c".into()],
            language_hints: vec!["hi".into()],
            ..FluxOptions::default()
        };
        assert_eq!(
            listen_url(&p, &o).unwrap().as_str(),
            "wss://api.deepgram.com/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=8000\
             &eot_threshold=0.7&eager_eot_threshold=0.4&eot_timeout_ms=3000&keyterm=a+b&keyterm=c"
        );
        p.model = MULTILINGUAL_MODEL.into();
        assert!(listen_url(&p, &o).unwrap().as_str().ends_with("&keyterm=c&language_hint=hi"));
    }

    #[test]
    fn configure_message_shape() {
        assert_eq!(FluxConfigure::default().to_message(), None);
        let c = FluxConfigure { eot_threshold: Some(0.8), eot_timeout_ms: Some(2000), ..Default::default() };
        assert_eq!(
            c.to_message(),
            Some(json!({"type":"Configure","thresholds":{"eot_threshold":0.8,"eot_timeout_ms":2000}}))
        );
        let c = FluxConfigure { keyterms: Some(vec![]), ..Default::default() };
        assert_eq!(c.to_message(), Some(json!({"type":"Configure","keyterms":[]})));
    }

    /// A loopback server that sends `Connected` and returns every frame the client sends.
    async fn recording_server() -> (String, tokio::task::JoinHandle<Vec<Message>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("ws://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(Message::text(r#"{"type":"Connected","request_id":"r1","sequence_id":0}"#)).await.unwrap();
            ws.send(Message::text(turn("StartOfTurn", 0, "Hello"))).await.unwrap();
            let mut frames = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                let done = matches!(&msg, Message::Text(t) if t.as_str().contains("CloseStream"));
                frames.push(msg);
                if done {
                    break;
                }
            }
            frames
        });
        (base, server)
    }

    /// Audio is coalesced into chunks; when audio stops inside a turn, silence goes out so the
    /// server can end the turn; the partial chunk is flushed before `CloseStream`.
    #[tokio::test]
    async fn coalesces_audio_and_fills_gaps_with_silence() {
        let (base, server) = recording_server().await;
        let timing = Timing {
            audio_chunk: Duration::from_millis(40), // 320 samples at 8 kHz
            turn_gap: Duration::from_millis(100),
            idle_gap: Duration::from_secs(30),
            close_wait: Duration::from_millis(200),
        };
        let (handle, mut events) = connect_with(&params(base, json!({})), timing).await.unwrap();
        assert_eq!(handle.request_id(), "r1");
        assert!(matches!(events.recv().await, Some(FluxEvent::StartOfTurn(_))));
        for _ in 0..3 {
            handle.send_audio(&[7; 160]).unwrap(); // 20 ms each
        }
        // Turn is open and audio stopped: expect 100 ms of silence after ~100 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
        handle.send_audio(&[9; 10]).unwrap();
        handle.close();
        let frames = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
        let sizes: Vec<(usize, u8)> = frames
            .iter()
            .map(|m| match m {
                Message::Binary(b) => (b.len(), b[b.len() - 1]),
                Message::Text(_) => (0, 0),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // 640 B of audio; then the leftover 320 B + 1600 B of silence; more silence while we
        // slept; then the 20 B tail, then CloseStream.
        assert_eq!(sizes[0], (640, 0)); // 7i16 little-endian ends with the high byte 0
        assert_eq!(sizes[1], (320 + 1600, 0));
        assert!(sizes[2..sizes.len() - 2].iter().all(|s| *s == (1600, 0)), "{sizes:?}");
        assert_eq!(sizes[sizes.len() - 2], (20, 0));
        assert_eq!(frames.last().unwrap(), &Message::text(r#"{"type":"CloseStream"}"#));
        assert_eq!(&frames[1].clone().into_data()[..2], &[7, 0]);
    }

    /// Outside a turn, an idle stream gets a short silence frame as a keepalive.
    #[tokio::test]
    async fn idle_keepalive_is_silence() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("ws://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(Message::text(r#"{"type":"Connected","request_id":"r","sequence_id":0}"#)).await.unwrap();
            let mut sizes = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Binary(b) = msg {
                    assert!(b.iter().all(|x| *x == 0));
                    sizes.push(b.len());
                    if sizes.len() == 2 {
                        break;
                    }
                }
            }
            sizes
        });
        let timing = Timing {
            audio_chunk: Duration::from_millis(80),
            turn_gap: Duration::from_millis(10),
            idle_gap: Duration::from_millis(50),
            close_wait: Duration::from_millis(100),
        };
        let (handle, _events) = connect_with(&params(base, json!({})), timing).await.unwrap();
        let sizes = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
        assert_eq!(sizes, vec![1280, 1280]);
        drop(handle);
    }
}
