//! ElevenLabs `stream-input` TTS (single-context protocol, wire-protocols §5).
//!
//! The single-context endpoint ends its socket at end-of-stream, so each context (bot turn)
//! gets its own socket, driven by its own task. A session task routes commands to those tasks
//! and forwards their events, dropping everything from cancelled contexts. To hide handshake
//! latency one spare socket is kept open for the next context; `connect` opens the first one,
//! which also proves the key and the server before the call starts.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use url::Url;

use crate::tts::{TtsCommand, TtsEvent, TtsHandle, TtsParams, WordTiming};
use crate::tts_context::Contexts;
use crate::ws::{self, WsStream};
use crate::ProviderError;

const PROVIDER: &str = crate::registry::ELEVENLABS.name;
const DEFAULT_MODEL: &str = crate::registry::ELEVENLABS.default_model;
const COMMAND_QUEUE: usize = 512;
const EVENT_QUEUE: usize = 256;
/// Commands queued for one context task (text pieces of one turn).
const CONTEXT_QUEUE: usize = 256;
/// Seconds the server waits for text before closing (maximum allowed; default is 20).
const INACTIVITY_TIMEOUT_SECS: u32 = 180;
/// A spare older than this may already have hit the server's inactivity timeout.
const SPARE_MAX_AGE: Duration = Duration::from_secs(150);
const CHUNK_LENGTH_SCHEDULE: [u32; 4] = [120, 160, 250, 290];
/// `voice_settings` fields that may also be given flat in `tts.extra` (pipecat style).
const VOICE_SETTING_KEYS: &[&str] = &["stability", "similarity_boost", "style", "use_speaker_boost", "speed"];
/// `tts.extra` keys passed through as URL query parameters.
const QUERY_KEYS: &[&str] =
    &["auto_mode", "enable_ssml_parsing", "enable_logging", "apply_text_normalization", "sync_alignment"];

pub(crate) async fn connect(params: &TtsParams) -> Result<(TtsHandle, mpsc::Receiver<TtsEvent>), ProviderError> {
    let cfg = Arc::new(Config::from_params(params)?);
    let first = cfg.open().await?;
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (ctx_ev_tx, ctx_ev_rx) = mpsc::channel(EVENT_QUEUE);
    let session = Session {
        cfg,
        cmd_rx,
        ev_tx,
        ctx_ev_tx,
        ctx_ev_rx,
        contexts: Contexts::default(),
        spare: Some(Spare::ready(first)),
    };
    tokio::spawn(session.run());
    Ok((TtsHandle { tx: cmd_tx, provider: PROVIDER }, ev_rx))
}

struct Config {
    url: Url,
    api_key: String,
    connect_timeout: Duration,
    sample_rate: u32,
    voice_settings: Option<Value>,
}

impl Config {
    fn from_params(params: &TtsParams) -> Result<Self, ProviderError> {
        let path = format!("/v1/text-to-speech/{}/stream-input", urlencode_segment(&params.voice_id));
        let mut url = ws::ws_url(PROVIDER, &params.base_url, &path)?;
        {
            let model = if params.model.is_empty() { DEFAULT_MODEL } else { params.model.as_str() };
            let mut q = url.query_pairs_mut();
            q.append_pair("model_id", model).append_pair("output_format", &format!("pcm_{}", params.sample_rate));
            if let Some(language) = params.language.as_deref().filter(|l| !l.is_empty()) {
                q.append_pair("language_code", language);
            }
            q.append_pair("inactivity_timeout", &INACTIVITY_TIMEOUT_SECS.to_string());
            for key in QUERY_KEYS {
                match params.extra.get(*key) {
                    Some(Value::String(s)) => {
                        q.append_pair(key, s);
                    }
                    Some(v @ (Value::Bool(_) | Value::Number(_))) => {
                        q.append_pair(key, &v.to_string());
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            url,
            api_key: params.api_key.clone(),
            connect_timeout: params.connect_timeout,
            sample_rate: params.sample_rate.max(1),
            voice_settings: voice_settings(&params.extra),
        })
    }

    async fn open(&self) -> Result<WsStream, ProviderError> {
        ws::connect(PROVIDER, &self.url, &[("xi-api-key", self.api_key.clone())], self.connect_timeout).await
    }

    /// First message on a socket. ElevenLabs accepts `voice_settings` only here.
    fn init_message(&self) -> Value {
        let mut init = json!({
            "text": " ",
            "generation_config": { "chunk_length_schedule": CHUNK_LENGTH_SCHEDULE },
        });
        if let (Some(obj), Some(settings)) = (init.as_object_mut(), &self.voice_settings) {
            obj.insert("voice_settings".into(), settings.clone());
        }
        init
    }
}

/// Voice ids are opaque strings; keep them from breaking out of their path segment.
fn urlencode_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

/// `extra.voice_settings` as given, else the flat keys gathered; `None` when there are none.
fn voice_settings(extra: &Map<String, Value>) -> Option<Value> {
    if let Some(settings @ Value::Object(_)) = extra.get("voice_settings") {
        return Some(settings.clone());
    }
    let flat: Map<String, Value> = VOICE_SETTING_KEYS
        .iter()
        .filter_map(|k| extra.get(*k).filter(|v| !v.is_null()).map(|v| (k.to_string(), v.clone())))
        .collect();
    (!flat.is_empty()).then_some(Value::Object(flat))
}

/// A socket opened ahead of need for the next context.
struct Spare {
    opened_at: Instant,
    socket: JoinHandle<Result<WsStream, ProviderError>>,
}

impl Spare {
    fn ready(socket: WsStream) -> Self {
        Self { opened_at: Instant::now(), socket: tokio::spawn(async move { Ok(socket) }) }
    }

    fn opening(cfg: &Arc<Config>) -> Self {
        let cfg = Arc::clone(cfg);
        Self { opened_at: Instant::now(), socket: tokio::spawn(async move { cfg.open().await }) }
    }

    /// The spare if it opened and is still young enough, else a fresh socket.
    async fn take_or_open(spare: Option<Spare>, cfg: &Config) -> Result<WsStream, ProviderError> {
        if let Some(mut spare) = spare {
            if spare.opened_at.elapsed() < SPARE_MAX_AGE {
                match (&mut spare.socket).await {
                    Ok(Ok(socket)) => return Ok(socket),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "elevenlabs spare socket failed; opening another")
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "elevenlabs spare task failed; opening another")
                    }
                }
            }
            // Too old: dropping it aborts and closes it.
        }
        cfg.open().await
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // An unused spare must not keep connecting (or hold a socket) after the session ends.
        self.socket.abort();
    }
}

enum ContextCmd {
    Speak(String),
    Flush,
    Cancel,
}

struct Session {
    cfg: Arc<Config>,
    cmd_rx: mpsc::Receiver<TtsCommand>,
    ev_tx: mpsc::Sender<TtsEvent>,
    /// Events from context tasks, checked against `contexts` before forwarding.
    ctx_ev_tx: mpsc::Sender<TtsEvent>,
    ctx_ev_rx: mpsc::Receiver<TtsEvent>,
    /// Live contexts with the command queue of their task, and those recently ended (their
    /// later commands and events are dropped).
    contexts: Contexts<mpsc::Sender<ContextCmd>>,
    spare: Option<Spare>,
}

impl Session {
    async fn run(mut self) {
        loop {
            let keep_going = tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(TtsCommand::Close) | None => false,
                    Some(cmd) => self.on_command(cmd).await,
                },
                Some(event) = self.ctx_ev_rx.recv() => self.on_context_event(event).await,
            };
            if !keep_going {
                break;
            }
        }
        // Dropping the context senders makes every context task close its socket and end.
        self.contexts.clear();
    }

    /// Returns false when the session should end.
    async fn on_command(&mut self, cmd: TtsCommand) -> bool {
        match cmd {
            TtsCommand::Speak { context_id, text } => self.speak(context_id, text).await,
            TtsCommand::Flush { context_id } => self.flush(context_id).await,
            TtsCommand::Cancel { context_id } => {
                if let Some(tx) = self.contexts.close(&context_id) {
                    // If the queue is full, dropping `tx` still ends the task.
                    let _ = tx.try_send(ContextCmd::Cancel);
                }
                true
            }
            TtsCommand::Close => false,
        }
    }

    async fn speak(&mut self, context_id: String, text: String) -> bool {
        // An empty text message is end-of-stream on this protocol: never forward one.
        if text.is_empty() || self.contexts.is_closed(&context_id) {
            return true;
        }
        if !self.contexts.is_live(&context_id) {
            self.start_context(&context_id);
        }
        self.forward(&context_id, ContextCmd::Speak(text)).await
    }

    async fn flush(&mut self, context_id: String) -> bool {
        if self.contexts.is_live(&context_id) {
            return self.forward(&context_id, ContextCmd::Flush).await;
        }
        if self.contexts.is_closed(&context_id) {
            return true;
        }
        // Nothing was spoken in this context: it is trivially done.
        self.ev_tx.send(TtsEvent::Done { context_id }).await.is_ok()
    }

    /// Never blocks: the context task may itself be waiting for us to drain its events, so a
    /// full queue fails the context instead of risking a deadlock.
    async fn forward(&mut self, context_id: &str, cmd: ContextCmd) -> bool {
        let Some(tx) = self.contexts.get(context_id) else {
            return true;
        };
        match tx.try_send(cmd) {
            Ok(()) => true,
            // The task already ended and reported why; its Error/Done event is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.contexts.close(context_id);
                let error = ProviderError::Backlog { provider: PROVIDER };
                let event = TtsEvent::Error { context_id: Some(context_id.to_string()), error };
                self.ev_tx.send(event).await.is_ok()
            }
        }
    }

    fn start_context(&mut self, context_id: &str) {
        let (tx, rx) = mpsc::channel(CONTEXT_QUEUE);
        let spare = self.spare.take();
        let task = ContextTask {
            context_id: context_id.to_string(),
            cfg: Arc::clone(&self.cfg),
            cmd_rx: rx,
            out: self.ctx_ev_tx.clone(),
            decoder: ContextDecoder::new(self.cfg.sample_rate),
            flushed: false,
        };
        tokio::spawn(task.run(spare));
        self.contexts.get_or_open(context_id, || tx);
        // Pre-open the socket for the next turn while this one plays.
        self.spare = Some(Spare::opening(&self.cfg));
    }

    async fn on_context_event(&mut self, event: TtsEvent) -> bool {
        let Some(context_id) = event.context_id() else {
            return self.ev_tx.send(event).await.is_ok(); // the connection itself failed
        };
        if !self.contexts.is_live(context_id) {
            return true; // cancelled: its output is dropped on purpose
        }
        if matches!(event, TtsEvent::Done { .. } | TtsEvent::Error { .. }) {
            self.contexts.close(context_id);
        }
        self.ev_tx.send(event).await.is_ok()
    }
}

/// One context on its own socket: init, text pieces, EOS; audio and alignment back.
struct ContextTask {
    context_id: String,
    cfg: Arc<Config>,
    cmd_rx: mpsc::Receiver<ContextCmd>,
    out: mpsc::Sender<TtsEvent>,
    decoder: ContextDecoder,
    flushed: bool,
}

/// How a context's socket loop ended.
enum Outcome {
    /// Audio complete (`isFinal`).
    Done,
    /// Cancelled or the session went away: say nothing.
    Quiet,
    Failed(ProviderError),
}

impl ContextTask {
    async fn run(mut self, spare: Option<Spare>) {
        match self.open(spare).await {
            Ok(mut socket) => {
                let outcome = self.pump(&mut socket).await;
                // Report before the close handshake so Done is not delayed by it.
                self.report(outcome).await;
                ws::close_quietly(&mut socket).await;
            }
            Err(e) => self.report(Outcome::Failed(e)).await,
        }
    }

    async fn report(&mut self, outcome: Outcome) {
        let context_id = self.context_id.clone();
        match outcome {
            Outcome::Done => {
                if let Some(word) = self.decoder.finish() {
                    let words = vec![word];
                    self.emit(TtsEvent::Words { context_id: context_id.clone(), words }).await;
                }
                self.emit(TtsEvent::Done { context_id }).await;
            }
            Outcome::Failed(error) => {
                tracing::warn!(error = %error, context_id, "elevenlabs context failed");
                self.emit(TtsEvent::Error { context_id: Some(context_id), error }).await;
            }
            Outcome::Quiet => {}
        }
    }

    /// Take the spare (or open a socket) and send the init message, retrying once on a fresh
    /// socket if the spare turns out to be dead.
    async fn open(&self, spare: Option<Spare>) -> Result<WsStream, ProviderError> {
        let init = self.cfg.init_message();
        let mut socket = Spare::take_or_open(spare, &self.cfg).await?;
        if ws::send_json(PROVIDER, &mut socket, &init).await.is_ok() {
            return Ok(socket);
        }
        let mut socket = self.cfg.open().await?;
        ws::send_json(PROVIDER, &mut socket, &init).await?;
        Ok(socket)
    }

    async fn pump(&mut self, socket: &mut WsStream) -> Outcome {
        loop {
            tokio::select! {
                // Commands first so a cancel is not delayed behind buffered audio.
                biased;
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(ContextCmd::Speak(text)) => {
                        let msg = json!({ "text": with_trailing_space(text), "try_trigger_generation": true });
                        if let Err(e) = ws::send_json(PROVIDER, socket, &msg).await {
                            return Outcome::Failed(e);
                        }
                    }
                    Some(ContextCmd::Flush) if !self.flushed => {
                        self.flushed = true;
                        if let Err(e) = ws::send_json(PROVIDER, socket, &json!({ "text": "" })).await {
                            return Outcome::Failed(e);
                        }
                    }
                    Some(ContextCmd::Flush) => {}
                    Some(ContextCmd::Cancel) | None => return Outcome::Quiet,
                },
                msg = socket.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(outcome) = self.on_text(text.as_str()).await {
                            return outcome;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => return self.on_close(frame.as_ref()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Outcome::Failed(ws::socket_error(PROVIDER, e)),
                    None => return self.on_close(None),
                },
            }
        }
    }

    /// The server closing after our EOS is a normal end even if `isFinal` never came.
    fn on_close(&self, frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> Outcome {
        let normal = frame.is_some_and(|f| f.code == CloseCode::Normal);
        if self.flushed && normal {
            return Outcome::Done;
        }
        Outcome::Failed(ws::unexpected_close(PROVIDER, frame))
    }

    /// Handle one server message; `Some` ends the context.
    async fn on_text(&mut self, text: &str) -> Option<Outcome> {
        let message = match self.decoder.on_text(text) {
            Ok(Some(message)) => message,
            Ok(None) => return None,
            Err(error) => return Some(Outcome::Failed(error)),
        };
        if let Some(pcm) = message.audio {
            if !self.emit(TtsEvent::Audio { context_id: self.context_id.clone(), pcm }).await {
                return Some(Outcome::Quiet);
            }
        }
        if !message.words.is_empty() {
            let event = TtsEvent::Words { context_id: self.context_id.clone(), words: message.words };
            if !self.emit(event).await {
                return Some(Outcome::Quiet);
            }
        }
        message.is_final.then_some(Outcome::Done)
    }

    async fn emit(&self, event: TtsEvent) -> bool {
        self.out.send(event).await.is_ok()
    }
}

/// One context's server messages, decoded without I/O: audio (an odd trailing byte carried to
/// the next chunk), words from the per-character alignment, the end marker and errors.
#[doc(hidden)]
pub struct ContextDecoder {
    sample_rate: u32,
    /// Odd trailing byte of the last audio chunk.
    carry: Option<u8>,
    /// Samples delivered so far: the time base of the next chunk's alignment.
    samples: u64,
    words: WordAligner,
}

/// What one server message of a context carried.
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub struct ContextMessage {
    pub audio: Option<Vec<i16>>,
    pub words: Vec<WordTiming>,
    /// `isFinal`: the context's audio is complete.
    pub is_final: bool,
}

impl ContextDecoder {
    pub fn new(sample_rate: u32) -> Self {
        Self { sample_rate, carry: None, samples: 0, words: WordAligner::default() }
    }

    /// `Ok(None)`: a malformed message, ignored. `Err`: the server reported an error.
    pub fn on_text(&mut self, text: &str) -> Result<Option<ContextMessage>, ProviderError> {
        let msg: ServerMsg = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed elevenlabs message");
                return Ok(None);
            }
        };
        if let Some(error) = msg.error.as_ref().filter(|e| !e.is_null()) {
            return Err(ProviderError::Remote { provider: PROVIDER, detail: msg.error_detail(error) });
        }
        // Alignment times count from the start of this message's audio.
        let chunk_start_ms = self.samples as f64 * 1000.0 / f64::from(self.sample_rate);
        let mut audio = None;
        if let Some(b64) = msg.audio.as_deref().filter(|a| !a.is_empty()) {
            match ws::pcm_from_base64(&mut self.carry, b64) {
                Ok(pcm) if !pcm.is_empty() => {
                    self.samples += pcm.len() as u64;
                    audio = Some(pcm);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "dropping undecodable elevenlabs audio"),
            }
        }
        let words = match msg.alignment.or(msg.normalized_alignment) {
            Some(alignment) => self.words.push(&alignment, chunk_start_ms),
            None => Vec::new(),
        };
        Ok(Some(ContextMessage { audio, words, is_final: msg.is_final == Some(true) }))
    }

    /// The word still in progress when the context ends.
    pub fn finish(&mut self) -> Option<WordTiming> {
        self.words.finish()
    }
}

/// ElevenLabs buffers text until it sees a word boundary; a trailing space marks one.
fn with_trailing_space(mut text: String) -> String {
    if !text.ends_with(char::is_whitespace) {
        text.push(' ');
    }
    text
}

#[derive(Deserialize)]
struct ServerMsg {
    audio: Option<String>,
    #[serde(rename = "isFinal")]
    is_final: Option<bool>,
    alignment: Option<Alignment>,
    #[serde(rename = "normalizedAlignment")]
    normalized_alignment: Option<Alignment>,
    message: Option<String>,
    error: Option<Value>,
}

impl ServerMsg {
    fn error_detail(&self, error: &Value) -> String {
        let code = error.as_str().map(str::to_string).unwrap_or_else(|| error.to_string());
        match &self.message {
            Some(message) => format!("{message} ({code})"),
            None => code,
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct Alignment {
    #[serde(default)]
    chars: Vec<String>,
    #[serde(default, rename = "charStartTimesMs")]
    starts_ms: Vec<f64>,
    #[serde(default, rename = "charDurationsMs")]
    durations_ms: Vec<f64>,
}

/// Groups per-character alignment into words. A word may span two messages, so the word in
/// progress is carried until whitespace (or the end of the context) closes it.
#[derive(Default)]
pub(crate) struct WordAligner {
    word: String,
    start_ms: f64,
    end_ms: f64,
}

impl WordAligner {
    /// Words completed by this alignment, whose times are relative to `offset_ms`.
    pub(crate) fn push(&mut self, alignment: &Alignment, offset_ms: f64) -> Vec<WordTiming> {
        let n = alignment.chars.len().min(alignment.starts_ms.len()).min(alignment.durations_ms.len());
        if n != alignment.chars.len() {
            tracing::debug!("elevenlabs alignment arrays differ in length; using the common prefix");
        }
        let mut words = Vec::new();
        for i in 0..n {
            let ch = &alignment.chars[i];
            if ch.trim().is_empty() {
                words.extend(self.finish());
                continue;
            }
            let start = offset_ms + alignment.starts_ms[i];
            if self.word.is_empty() {
                self.start_ms = start;
            }
            self.word.push_str(ch);
            self.end_ms = start + alignment.durations_ms[i];
        }
        words
    }

    /// The word in progress, if any.
    pub(crate) fn finish(&mut self) -> Option<WordTiming> {
        if self.word.is_empty() {
            return None;
        }
        Some(WordTiming {
            word: std::mem::take(&mut self.word),
            start_secs: (self.start_ms / 1000.0) as f32,
            end_secs: (self.end_ms / 1000.0) as f32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alignment(text: &str, step: f64) -> Alignment {
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let starts_ms = (0..chars.len()).map(|i| i as f64 * step).collect();
        let durations_ms = vec![step; chars.len()];
        Alignment { chars, starts_ms, durations_ms }
    }

    #[test]
    fn words_span_messages() {
        let mut aligner = WordAligner::default();
        let first = aligner.push(&alignment("Hi th", 100.0), 0.0);
        assert_eq!(first, vec![WordTiming { word: "Hi".into(), start_secs: 0.0, end_secs: 0.2 }]);
        let second = aligner.push(&alignment("ere you", 100.0), 500.0);
        assert_eq!(second, vec![WordTiming { word: "there".into(), start_secs: 0.3, end_secs: 0.8 }]);
        assert_eq!(aligner.finish(), Some(WordTiming { word: "you".into(), start_secs: 0.9, end_secs: 1.2 }));
    }

    #[test]
    fn trailing_space_and_voice_settings() {
        assert_eq!(with_trailing_space("Hi.".into()), "Hi. ");
        assert_eq!(with_trailing_space("Hi. ".into()), "Hi. ");
        let extra = json!({"stability": 0.5, "speed": 1.1, "other": 1});
        assert_eq!(voice_settings(extra.as_object().unwrap()), Some(json!({"stability": 0.5, "speed": 1.1})));
        assert_eq!(voice_settings(&Map::new()), None);
    }
}
