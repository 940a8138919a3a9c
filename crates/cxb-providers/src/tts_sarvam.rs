//! Sarvam Bulbul TTS over `/text-to-speech/ws` (wire-protocols-2 §4).
//!
//! The socket takes a `config` message first, then `text` pieces and a `flush`; audio comes back
//! as base64 LINEAR16 chunks at `speech_sample_rate` (8/16 kHz here: the transport's rate, so
//! nothing is resampled), and `send_completion_event=true` makes the server announce the end of
//! a flush's synthesis with an `event` of type `final`.
//!
//! **One socket per context.** Sarvam has no cancel or clear message and no context ids: a
//! socket's audio carries no label saying which text it belongs to. A barge-in therefore has to
//! close the socket (pipecat's `SarvamTTSService` reconnects, livekit's pool replaces it), and
//! giving each context (bot turn) its own socket keeps every chunk attributable to exactly one
//! context — also when Sarvam announces a `final` for an automatic mid-text flush, which the
//! spec leaves open. Sharing one socket between turns would let such a stray `final` end a
//! turn early and hand the rest of its audio to the next turn.
//!
//! **Warm spare.** Opening a socket (TLS, upgrade, `config`) is on the critical path of the
//! next reply unless it happens earlier, so one configured socket is always kept ready: opened
//! by `connect`, pinged every 20 s (Sarvam closes sockets idle for a minute), handed to the next
//! context when it starts, and replaced at once in the background. Replacing a spare that died
//! while waiting is bounded (`SPARE_ATTEMPTS`); after that the next context opens its own
//! socket. `tts.extra.warm_spare = false` turns the spare off (every context after the first
//! then connects on demand).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use url::Url;

use crate::tts::{TtsCommand, TtsEvent, TtsHandle, TtsParams};
use crate::ws::{self, WsStream};
use crate::ProviderError;

pub const PROVIDER: &str = crate::registry::SARVAM_TTS.name;
pub const DEFAULT_BASE_URL: &str = crate::registry::SARVAM_TTS.api_root;
/// The original's Sarvam model (contract glossary).
pub const DEFAULT_MODEL: &str = crate::registry::SARVAM_TTS.default_model;
/// `target_language_code` when the bot config names none (pipecat's default).
pub const DEFAULT_LANGUAGE: &str = "en-IN";
const PATH: &str = "/text-to-speech/ws";
/// Output rates the WebSocket offers.
pub const SAMPLE_RATES: [u32; 4] = [8000, 16000, 22050, 24000];
/// Longest `text` message the API takes.
const MAX_TEXT_CHARS: usize = 2500;
/// `tts.extra` keys forwarded into the `config` message.
const EXTRA_CONFIG_KEYS: &[&str] = &[
    "pitch",
    "pace",
    "loudness",
    "temperature",
    "enable_preprocessing",
    "min_buffer_size",
    "max_chunk_length",
    "dict_id",
    "output_audio_bitrate",
];
/// How often a spare may fail (to open, or by dying while it waits) before it gives up.
const SPARE_ATTEMPTS: u32 = 3;
/// Contexts synthesizing at once (one socket each); a call speaks one or two.
const MAX_LIVE_CONTEXTS: usize = 8;
const COMMAND_QUEUE: usize = 512;
const EVENT_QUEUE: usize = 256;
const CONTEXT_QUEUE: usize = 256;
/// Cancelled/finished context ids remembered to drop their late commands.
const REMEMBERED: usize = 64;

/// Timers of a session. Tests shorten them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Ping an idle socket this often (pipecat: 20 s; Sarvam closes after 60 s idle).
    pub ping: Duration,
    /// After our `flush`, give up on a context the server says nothing about for this long.
    pub done_wait: Duration,
    /// First back-off before a spare is reopened (doubles per failure).
    pub retry: Duration,
}

const TIMING: Timing =
    Timing { ping: Duration::from_secs(20), done_wait: Duration::from_secs(15), retry: Duration::from_millis(250) };

/// Open a Sarvam TTS session for one call. The first socket is opened (and configured) here,
/// which proves the key and the server before the call starts; it becomes the first spare.
pub async fn connect(params: &TtsParams) -> Result<(TtsHandle, mpsc::Receiver<TtsEvent>), ProviderError> {
    connect_with(params, TIMING).await
}

pub(crate) async fn connect_with(
    params: &TtsParams,
    timing: Timing,
) -> Result<(TtsHandle, mpsc::Receiver<TtsEvent>), ProviderError> {
    let cfg = Arc::new(Config::from_params(params, timing)?);
    let first = cfg.open().await?;
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (ctx_tx, ctx_rx) = mpsc::channel(EVENT_QUEUE);
    let spare = Some(Spare::start(Arc::clone(&cfg), Some(first)));
    let session = Session { cfg, ev_tx, ctx_tx, live: HashMap::new(), ended: RecentIds::default(), spare };
    tokio::spawn(session.run(cmd_rx, ctx_rx));
    Ok((TtsHandle { tx: cmd_tx, provider: PROVIDER }, ev_rx))
}

pub(crate) struct Config {
    url: Url,
    api_key: String,
    connect_timeout: Duration,
    /// The `config` message every socket starts with.
    config: Value,
    warm_spare: bool,
    timing: Timing,
}

impl Config {
    fn from_params(params: &TtsParams, timing: Timing) -> Result<Self, ProviderError> {
        if !SAMPLE_RATES.contains(&params.sample_rate) {
            let detail = format!("Sarvam TTS streams {SAMPLE_RATES:?} Hz, not {}", params.sample_rate);
            return Err(ProviderError::Connect { provider: PROVIDER, detail });
        }
        let model = if params.model.is_empty() { DEFAULT_MODEL } else { params.model.as_str() };
        let base = if params.base_url.is_empty() { DEFAULT_BASE_URL } else { params.base_url.as_str() };
        let mut url = ws::ws_url(PROVIDER, base, PATH)?;
        url.query_pairs_mut().append_pair("model", model).append_pair("send_completion_event", "true");
        Ok(Self {
            url,
            api_key: params.api_key.clone(),
            connect_timeout: params.connect_timeout,
            config: config_message(params, model),
            warm_spare: params.extra.get("warm_spare").and_then(Value::as_bool).unwrap_or(true),
            timing,
        })
    }

    /// A socket ready for text: upgraded and configured.
    async fn open(&self) -> Result<WsStream, ProviderError> {
        let headers = [("api-subscription-key", self.api_key.clone())];
        let mut socket = ws::connect(PROVIDER, &self.url, &headers, self.connect_timeout).await?;
        ws::send_json(PROVIDER, &mut socket, &self.config).await?;
        Ok(socket)
    }
}

/// The `config` message: language and speaker from the bot's `tts` block, raw LINEAR16 at the
/// transport rate, the model repeated inside (pipecat sends it in both places), and the voice
/// knobs given in `tts.extra`.
pub(crate) fn config_message(params: &TtsParams, model: &str) -> Value {
    let language = params
        .language
        .as_deref()
        .and_then(crate::stt_sarvam::language_code)
        .unwrap_or_else(|| DEFAULT_LANGUAGE.to_string());
    let mut data = Map::new();
    data.insert("target_language_code".into(), json!(language));
    // Speakers are lowercase and case-sensitive on Sarvam's side.
    let speaker = params.voice_id.trim().to_ascii_lowercase();
    if !speaker.is_empty() {
        data.insert("speaker".into(), json!(speaker));
    }
    data.insert("model".into(), json!(model));
    data.insert("speech_sample_rate".into(), json!(params.sample_rate));
    data.insert("output_audio_codec".into(), json!("linear16"));
    for key in EXTRA_CONFIG_KEYS {
        if let Some(value) = params.extra.get(*key).filter(|v| !v.is_null()) {
            data.insert((*key).to_string(), value.clone());
        }
    }
    json!({"type": "config", "data": data})
}

/// `text` messages for one piece of text, each within the API's length limit.
pub(crate) fn text_messages(text: &str) -> Vec<Value> {
    split_text(text, MAX_TEXT_CHARS).into_iter().map(|piece| json!({"type": "text", "data": {"text": piece}})).collect()
}

/// `text` in pieces of at most `max_chars` characters, cut after a space where there is one.
pub(crate) fn split_text(text: &str, max_chars: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let cut = match rest.char_indices().nth(max_chars) {
            None => rest.len(),
            Some((limit, _)) => match rest[..limit].char_indices().rev().find(|(_, c)| c.is_whitespace()) {
                Some((space, c)) if space > 0 => space + c.len_utf8(),
                _ => limit,
            },
        };
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    pieces
}

/// A bounded memory of context ids whose later commands and events are dropped.
#[derive(Debug, Default)]
pub(crate) struct RecentIds(VecDeque<String>);

impl RecentIds {
    pub fn remember(&mut self, id: &str) {
        if self.0.len() == REMEMBERED {
            self.0.pop_front();
        }
        self.0.push_back(id.to_string());
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|known| known == id)
    }
}

/// A configured socket kept ready for the next context (module docs).
struct Spare {
    take: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<WsStream, ProviderError>>,
}

impl Spare {
    /// Keep `first` (or a socket opened now) ready until taken.
    fn start(cfg: Arc<Config>, first: Option<WsStream>) -> Self {
        let (take, taken) = oneshot::channel();
        Self { take: Some(take), task: tokio::spawn(keep_ready(cfg, first, taken)) }
    }

    /// The ready socket; waits for one still connecting rather than opening a second.
    async fn take(mut self) -> Result<WsStream, ProviderError> {
        if let Some(take) = self.take.take() {
            let _ = take.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(ProviderError::Closed { provider: PROVIDER, detail: format!("spare task failed: {e}") }),
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // An unused spare must not hold a socket (or keep reconnecting) after the session ends.
        self.task.abort();
    }
}

/// How a ready spare stopped waiting.
enum Waited {
    Taken,
    Lost(ProviderError),
}

/// The spare's task: open (bounded retries), then ping and watch the socket until taken.
async fn keep_ready(
    cfg: Arc<Config>,
    mut socket: Option<WsStream>,
    mut taken: oneshot::Receiver<()>,
) -> Result<WsStream, ProviderError> {
    let mut failures = 0;
    loop {
        let mut ready = match socket.take() {
            Some(ready) => ready,
            None => match cfg.open().await {
                Ok(ready) => ready,
                Err(e) => {
                    failures += 1;
                    if failures >= SPARE_ATTEMPTS {
                        return Err(e);
                    }
                    tokio::select! {
                        // Needed now: the context connects by itself rather than wait out a back-off.
                        _ = &mut taken => return Err(e),
                        _ = tokio::time::sleep(cfg.timing.retry * 2u32.pow(failures - 1)) => continue,
                    }
                }
            },
        };
        match wait_ready(&cfg, &mut ready, &mut taken).await {
            Waited::Taken => return Ok(ready),
            Waited::Lost(e) => {
                tracing::debug!(error = %e, "sarvam spare socket lost; reopening");
                failures += 1;
                if failures >= SPARE_ATTEMPTS {
                    return Err(e);
                }
            }
        }
    }
}

async fn wait_ready(cfg: &Config, socket: &mut WsStream, taken: &mut oneshot::Receiver<()>) -> Waited {
    let mut ping_at = Instant::now() + cfg.timing.ping;
    loop {
        tokio::select! {
            biased;
            _ = &mut *taken => return Waited::Taken,
            msg = socket.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Some(Incoming::Error(e)) = parse(text.as_str()) {
                        return Waited::Lost(e);
                    }
                }
                Some(Ok(Message::Close(frame))) => return Waited::Lost(ws::unexpected_close(PROVIDER, frame.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Waited::Lost(ws::socket_error(PROVIDER, e)),
                None => return Waited::Lost(ProviderError::Closed { provider: PROVIDER, detail: "socket ended".into() }),
            },
            _ = tokio::time::sleep_until(ping_at) => {
                ping_at = Instant::now() + cfg.timing.ping;
                if let Err(e) = ws::send_json(PROVIDER, socket, &json!({"type": "ping"})).await {
                    return Waited::Lost(e);
                }
            }
        }
    }
}

/// Commands for one context's task.
enum ContextCmd {
    Speak(String),
    Flush,
}

/// Routes the call's commands to per-context tasks and their events back, dropping everything
/// from cancelled contexts.
struct Session {
    cfg: Arc<Config>,
    ev_tx: mpsc::Sender<TtsEvent>,
    /// Cloned into every context task; its events come back through the session.
    ctx_tx: mpsc::Sender<TtsEvent>,
    /// Contexts synthesizing now and their task's queue. Dropping a queue ends the task, which
    /// closes its socket: that is the cancel.
    live: HashMap<String, mpsc::Sender<ContextCmd>>,
    /// Finished, failed or cancelled contexts.
    ended: RecentIds,
    spare: Option<Spare>,
}

impl Session {
    async fn run(mut self, mut commands: mpsc::Receiver<TtsCommand>, mut results: mpsc::Receiver<TtsEvent>) {
        loop {
            let go_on = tokio::select! {
                cmd = commands.recv() => match cmd {
                    None | Some(TtsCommand::Close) => false,
                    Some(TtsCommand::Speak { context_id, text }) => self.speak(context_id, text).await,
                    Some(TtsCommand::Flush { context_id }) => self.flush(context_id).await,
                    Some(TtsCommand::Cancel { context_id }) => {
                        self.ended.remember(&context_id);
                        self.live.remove(&context_id);
                        true
                    }
                },
                Some(event) = results.recv() => self.relay(event).await,
            };
            if !go_on {
                return;
            }
        }
    }

    async fn speak(&mut self, context_id: String, text: String) -> bool {
        if text.trim().is_empty() || self.ended.contains(&context_id) {
            return true;
        }
        if !self.live.contains_key(&context_id) {
            if self.live.len() >= MAX_LIVE_CONTEXTS {
                return self.fail(context_id, ProviderError::Backlog { provider: PROVIDER }).await;
            }
            self.start(&context_id);
        }
        self.command_context(context_id, ContextCmd::Speak(text)).await
    }

    async fn flush(&mut self, context_id: String) -> bool {
        if self.live.contains_key(&context_id) {
            return self.command_context(context_id, ContextCmd::Flush).await;
        }
        if self.ended.contains(&context_id) {
            return true;
        }
        // Nothing was spoken in this context: there is no audio to wait for.
        self.ev_tx.send(TtsEvent::Done { context_id }).await.is_ok()
    }

    /// Start a context on the spare and open the next spare right away.
    fn start(&mut self, context_id: &str) {
        let spare = self.spare.take();
        if self.cfg.warm_spare {
            self.spare = Some(Spare::start(Arc::clone(&self.cfg), None));
        }
        let (tx, rx) = mpsc::channel(CONTEXT_QUEUE);
        let task = ContextTask { id: context_id.to_string(), cfg: Arc::clone(&self.cfg), out: self.ctx_tx.clone() };
        tokio::spawn(task.run(spare, rx));
        self.live.insert(context_id.to_string(), tx);
    }

    /// Never waits on a context's queue: its task may itself be waiting for us to take its
    /// events, so a full queue fails the context rather than risk a deadlock.
    async fn command_context(&mut self, context_id: String, cmd: ContextCmd) -> bool {
        let Some(queue) = self.live.get(&context_id) else { return true };
        match queue.try_send(cmd) {
            // A closed queue: the task already ended and its Done/Error is on the way.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.fail(context_id, ProviderError::Backlog { provider: PROVIDER }).await
            }
        }
    }

    async fn fail(&mut self, context_id: String, error: ProviderError) -> bool {
        self.live.remove(&context_id);
        self.ended.remember(&context_id);
        self.ev_tx.send(TtsEvent::Error { context_id: Some(context_id), error }).await.is_ok()
    }

    /// Pass a context's event on unless the context was cancelled meanwhile.
    async fn relay(&mut self, event: TtsEvent) -> bool {
        let (context_id, last) = match &event {
            TtsEvent::Audio { context_id, .. } | TtsEvent::Words { context_id, .. } => (context_id, false),
            TtsEvent::Done { context_id } | TtsEvent::Error { context_id: Some(context_id), .. } => (context_id, true),
            TtsEvent::Error { context_id: None, .. } => return self.ev_tx.send(event).await.is_ok(),
        };
        if !self.live.contains_key(context_id) {
            return true;
        }
        if last {
            let id = context_id.clone();
            self.live.remove(&id);
            self.ended.remember(&id);
        }
        self.ev_tx.send(event).await.is_ok()
    }
}

/// One context on its own socket.
struct ContextTask {
    id: String,
    cfg: Arc<Config>,
    out: mpsc::Sender<TtsEvent>,
}

/// How a context's socket loop ended.
enum Outcome {
    /// `final` after our flush (or a normal close after it).
    Done,
    /// Cancelled, or the session is gone: say nothing.
    Quiet,
    Failed(ProviderError),
}

/// What a server message means to a context.
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Audio(String),
    Final,
    Error(ProviderError),
}

impl ContextTask {
    async fn run(self, spare: Option<Spare>, commands: mpsc::Receiver<ContextCmd>) {
        let socket = match spare {
            Some(spare) => match spare.take().await {
                Ok(socket) => Ok(socket),
                Err(e) => {
                    tracing::debug!(error = %e, "no sarvam spare socket; connecting now");
                    self.cfg.open().await
                }
            },
            None => self.cfg.open().await,
        };
        let mut socket = match socket {
            Ok(socket) => socket,
            Err(e) => return self.report(Outcome::Failed(e)).await,
        };
        let outcome = Stream {
            task: &self,
            socket: &mut socket,
            commands,
            carry: None,
            sent: Vec::new(),
            answered: false,
            replayed: false,
        }
        .pump()
        .await;
        // Report before the close handshake so Done is not delayed by it.
        self.report(outcome).await;
        ws::close_quietly(&mut socket).await;
    }

    async fn report(&self, outcome: Outcome) {
        let context_id = self.id.clone();
        let event = match outcome {
            Outcome::Done => TtsEvent::Done { context_id },
            Outcome::Failed(error) => {
                tracing::warn!(error = %error, context_id, "sarvam tts context failed");
                TtsEvent::Error { context_id: Some(context_id), error }
            }
            Outcome::Quiet => return,
        };
        let _ = self.out.send(event).await;
    }
}

/// The socket loop of one context.
struct Stream<'a> {
    task: &'a ContextTask,
    socket: &'a mut WsStream,
    commands: mpsc::Receiver<ContextCmd>,
    /// Odd trailing byte of the last audio chunk.
    carry: Option<u8>,
    /// Messages sent so far, replayed once on a fresh socket if the spare turns out dead
    /// before the server answered.
    sent: Vec<Value>,
    /// The server has sent audio or an event on this socket.
    answered: bool,
    replayed: bool,
}

impl Stream<'_> {
    async fn pump(&mut self) -> Outcome {
        let timing = self.task.cfg.timing;
        let mut ping_at = Instant::now() + timing.ping;
        // Set once flushed: how long the server may stay silent before we give up.
        let mut give_up_at: Option<Instant> = None;
        loop {
            let give_up = async {
                match give_up_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Commands first: a cancel must not wait behind buffered audio.
                biased;
                cmd = self.commands.recv() => {
                    let messages = match cmd {
                        Some(ContextCmd::Speak(text)) => text_messages(&text),
                        Some(ContextCmd::Flush) if give_up_at.is_none() => {
                            give_up_at = Some(Instant::now() + timing.done_wait);
                            vec![json!({"type": "flush"})]
                        }
                        Some(ContextCmd::Flush) => Vec::new(),
                        // Cancelled (the session dropped our queue): closing the socket is the cancel.
                        None => return Outcome::Quiet,
                    };
                    for message in messages {
                        if let Err(e) = self.send(message).await {
                            return Outcome::Failed(e);
                        }
                    }
                    ping_at = Instant::now() + timing.ping;
                }
                msg = self.socket.next() => {
                    if let Some(at) = give_up_at.as_mut() {
                        *at = Instant::now() + timing.done_wait;
                    }
                    let flushed = give_up_at.is_some();
                    let lost = match msg {
                        Some(Ok(Message::Text(text))) => match parse(text.as_str()) {
                            Some(Incoming::Audio(b64)) => {
                                // Answered: no replay is possible any more, so stop keeping the text.
                                self.answered = true;
                                self.sent = Vec::new();
                                if !self.audio(&b64).await {
                                    return Outcome::Quiet;
                                }
                                continue;
                            }
                            // A `final` before our flush ends an automatic flush, not the context.
                            Some(Incoming::Final) if flushed => return Outcome::Done,
                            Some(Incoming::Final) | None => continue,
                            Some(Incoming::Error(e)) => return Outcome::Failed(e),
                        },
                        Some(Ok(Message::Close(frame))) => {
                            let normal = frame.as_ref().is_some_and(|f| f.code == CloseCode::Normal);
                            if flushed && normal && self.answered {
                                return Outcome::Done;
                            }
                            ws::unexpected_close(PROVIDER, frame.as_ref())
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => ws::socket_error(PROVIDER, e),
                        None => ProviderError::Closed { provider: PROVIDER, detail: "socket ended".into() },
                    };
                    if let Err(e) = self.recover(lost).await {
                        return Outcome::Failed(e);
                    }
                }
                _ = tokio::time::sleep_until(ping_at) => {
                    ping_at = Instant::now() + timing.ping;
                    if let Err(e) = ws::send_json(PROVIDER, self.socket, &json!({"type": "ping"})).await {
                        return Outcome::Failed(e);
                    }
                }
                _ = give_up => {
                    let what = format!("waiting {:?} for the end of context {}", timing.done_wait, self.task.id);
                    return Outcome::Failed(ProviderError::Timeout { provider: PROVIDER, what });
                }
            }
        }
    }

    /// Send one message, recovering once from a socket that was dead on arrival.
    async fn send(&mut self, message: Value) -> Result<(), ProviderError> {
        let sent = ws::send_json(PROVIDER, self.socket, &message).await;
        if !self.answered {
            self.sent.push(message);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(e) => self.recover(e).await,
        }
    }

    /// A spare can die unnoticed between its last ping and its first use. While the server has
    /// not answered on this socket yet, reconnect once and replay what was sent; otherwise the
    /// failure stands.
    async fn recover(&mut self, error: ProviderError) -> Result<(), ProviderError> {
        if self.answered || self.replayed {
            return Err(error);
        }
        tracing::debug!(error = %error, "sarvam socket dead on first use; reconnecting");
        self.replayed = true;
        *self.socket = self.task.cfg.open().await?;
        for message in &self.sent {
            ws::send_json(PROVIDER, self.socket, message).await?;
        }
        Ok(())
    }

    async fn audio(&mut self, b64: &str) -> bool {
        match ws::pcm_from_base64(&mut self.carry, b64) {
            Ok(pcm) if pcm.is_empty() => true,
            Ok(pcm) => {
                let event = TtsEvent::Audio { context_id: self.task.id.clone(), pcm };
                self.task.out.send(event).await.is_ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "dropping undecodable sarvam audio chunk");
                true
            }
        }
    }
}

/// `{"type":"audio"|"event"|"error","data":{…}}`; `None` for anything else (pongs, unknown).
pub(crate) fn parse(text: &str) -> Option<Incoming> {
    let msg: ServerMsg = match serde_json::from_str(text) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed sarvam tts message");
            return None;
        }
    };
    match msg.kind.as_str() {
        "audio" => msg.data.get("audio").and_then(Value::as_str).map(|a| Incoming::Audio(a.to_string())),
        "event" if msg.data.get("event_type").and_then(Value::as_str) == Some("final") => Some(Incoming::Final),
        "error" => Some(Incoming::Error(ProviderError::Remote { provider: PROVIDER, detail: error_detail(&msg.data) })),
        other => {
            tracing::debug!(kind = other, "ignoring sarvam tts message");
            None
        }
    }
}

#[derive(Deserialize)]
struct ServerMsg {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    data: Value,
}

/// "Text too long (400)".
fn error_detail(data: &Value) -> String {
    let message = data.get("message").and_then(Value::as_str).unwrap_or("unknown error");
    match data.get("code").filter(|c| !c.is_null()) {
        Some(Value::String(code)) => format!("{message} ({code})"),
        Some(code) => format!("{message} ({code})"),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: Value) -> TtsParams {
        TtsParams {
            provider: "sarvam".into(),
            base_url: String::new(),
            api_key: "sv-key".into(),
            model: String::new(),
            voice_id: "Anushka".into(),
            language: Some("hi".into()),
            sample_rate: 8000,
            extra: extra.as_object().cloned().unwrap_or_default(),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// The `config` of wire-protocols-2 §4, built from a bot config.
    #[test]
    fn config_and_url() {
        let p = params(json!({"pace": 1.1, "pitch": 0.0, "loudness": 1.2, "warm_spare": true, "other": 1}));
        let cfg = Config::from_params(&p, TIMING).unwrap();
        assert_eq!(
            cfg.url.as_str(),
            "wss://api.sarvam.ai/text-to-speech/ws?model=bulbul%3Av2&send_completion_event=true"
        );
        assert_eq!(
            cfg.config,
            json!({"type":"config","data":{"target_language_code":"hi-IN","speaker":"anushka","model":"bulbul:v2",
                "speech_sample_rate":8000,"output_audio_codec":"linear16","pace":1.1,"pitch":0.0,"loudness":1.2}})
        );
        let mut odd_rate = params(json!({}));
        odd_rate.sample_rate = 11025;
        assert!(matches!(Config::from_params(&odd_rate, TIMING), Err(ProviderError::Connect { .. })));
        let mut no_language = params(json!({}));
        no_language.language = None;
        assert_eq!(config_message(&no_language, "bulbul:v3")["data"]["target_language_code"], "en-IN");
    }

    #[test]
    fn long_text_is_split_within_the_limit() {
        assert_eq!(text_messages("नमस्ते। "), vec![json!({"type":"text","data":{"text":"नमस्ते। "}})]);
        let long = "शब्द ".repeat(1000); // 5000 chars
        let pieces: Vec<String> =
            text_messages(&long).iter().map(|m| m["data"]["text"].as_str().unwrap().to_string()).collect();
        assert!(
            pieces.iter().all(|p| p.chars().count() <= MAX_TEXT_CHARS),
            "{:?}",
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
        );
        assert_eq!(pieces.concat(), long);
        assert!(pieces[0].ends_with(' '), "split after a space");
        let solid = "x".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(text_messages(&solid).len(), 2);
    }

    /// Server shapes from wire-protocols-2 §4 ("Server → client").
    #[test]
    fn server_messages() {
        let audio = parse(r#"{"type":"audio","data":{"content_type":"audio/pcm","audio":"AQA=","request_id":"r"}}"#);
        assert!(matches!(audio, Some(Incoming::Audio(a)) if a == "AQA="));
        let fin =
            parse(r#"{"type":"event","data":{"event_type":"final","message":"m","timestamp":"2026-08-20T10:15:02Z"}}"#);
        assert!(matches!(fin, Some(Incoming::Final)));
        let err =
            parse(r#"{"type":"error","data":{"message":"Text too long","code":400,"details":{},"request_id":"r"}}"#);
        assert!(
            matches!(err, Some(Incoming::Error(ProviderError::Remote { detail, .. })) if detail == "Text too long (400)")
        );
        assert!(parse(r#"{"type":"pong"}"#).is_none());
        assert!(parse("garbage").is_none());
    }

    #[test]
    fn recent_ids_are_bounded() {
        let mut ids = RecentIds::default();
        for i in 0..=REMEMBERED {
            ids.remember(&i.to_string());
        }
        assert!(!ids.contains("0") && ids.contains("1") && ids.contains(&REMEMBERED.to_string()));
    }
}
