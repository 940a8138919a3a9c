//! Deepgram Aura-2 TTS over `/v1/speak` (wire-protocols §5 "Deepgram Aura TTS",
//! wire-protocols-2 §6).
//!
//! One socket per call carries one stream of text: `Speak` pieces, a `Flush` per context (bot
//! turn), raw LINEAR16 binary frames back and a `Flushed` after each flush's audio. Nothing on
//! the wire names a context, so contexts go out strictly in order: a context's text is sent
//! only once every earlier context's `Flush` is out, and audio belongs to the oldest context
//! not yet `Flushed`.
//!
//! Barge-in: cancelling the context whose audio is streaming sends `Clear` and drops every
//! binary frame until `Cleared` (Deepgram "will stop sending new audio chunks as soon as
//! possible"). `Clear` also empties the text buffer, so later contexts already sent are sent
//! again after `Cleared`. A cancelled context further back is not cleared (that would wipe the
//! one playing): its audio is dropped as it arrives.
//!
//! Deepgram accepts at most 20 `Flush` messages per 60 s and ignores the rest with a `Warning`.
//! Flushes are counted over a sliding window (slightly longer than 60 s, for network jitter)
//! and held back, with the contexts behind them, until the window allows them.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use crate::tts::{TtsCommand, TtsEvent, TtsHandle, TtsParams};
use crate::tts_sarvam::{split_text, RecentIds};
use crate::ws::{self, WsStream};
use crate::ProviderError;

pub const PROVIDER: &str = crate::registry::DEEPGRAM_AURA.name;
pub const DEFAULT_BASE_URL: &str = crate::registry::DEEPGRAM_AURA.api_root;
pub const DEFAULT_MODEL: &str = crate::registry::DEEPGRAM_AURA.default_model;
const PATH: &str = "/v1/speak";
/// Rates `/v1/speak` offers for LINEAR16 (no 22.05 kHz).
pub const SAMPLE_RATES: [u32; 5] = [8000, 16000, 24000, 32000, 48000];
/// `tts.extra` keys passed through as query parameters.
const QUERY_KEYS: &[&str] = &["speed", "mip_opt_out"];
/// Longest `Speak` text we send in one message (the limit is not confirmed; 2000 is the figure
/// other Deepgram messages use).
const MAX_SPEAK_CHARS: usize = 2000;
/// Contexts waiting or in flight on the one stream.
const MAX_CONTEXTS: usize = 16;
const COMMAND_QUEUE: usize = 512;
const EVENT_QUEUE: usize = 256;

/// Limits and timers of a session. Tests shorten them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Flushes allowed per `flush_window`.
    pub flush_limit: usize,
    pub flush_window: Duration,
    /// Longest silence from the server while a `Flushed` or `Cleared` is awaited.
    pub reply_wait: Duration,
}

/// 20 flushes per 60 s (Deepgram docs, tts-ws-flush), counted over 61 s.
const TIMING: Timing =
    Timing { flush_limit: 20, flush_window: Duration::from_secs(61), reply_wait: Duration::from_secs(10) };

/// Open an Aura session for one call; the socket opened here proves the key and the model.
pub async fn connect(params: &TtsParams) -> Result<(TtsHandle, mpsc::Receiver<TtsEvent>), ProviderError> {
    connect_with(params, TIMING).await
}

pub(crate) async fn connect_with(
    params: &TtsParams,
    timing: Timing,
) -> Result<(TtsHandle, mpsc::Receiver<TtsEvent>), ProviderError> {
    let cfg = Config::from_params(params)?;
    let socket = cfg.open().await?;
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let session = Session {
        cfg,
        timing,
        ws: Some(socket),
        ev_tx,
        queue: VecDeque::new(),
        ended: RecentIds::default(),
        flushes: VecDeque::new(),
        clearing: false,
        last_heard: Instant::now(),
    };
    tokio::spawn(session.run(cmd_rx));
    Ok((TtsHandle { tx: cmd_tx, provider: PROVIDER }, ev_rx))
}

struct Config {
    url: Url,
    api_key: String,
    connect_timeout: Duration,
}

impl Config {
    fn from_params(params: &TtsParams) -> Result<Self, ProviderError> {
        if !SAMPLE_RATES.contains(&params.sample_rate) {
            let detail = format!("Aura streams LINEAR16 at {SAMPLE_RATES:?} Hz, not {}", params.sample_rate);
            return Err(ProviderError::Connect { provider: PROVIDER, detail });
        }
        let base = if params.base_url.is_empty() { DEFAULT_BASE_URL } else { params.base_url.as_str() };
        let mut url = ws::ws_url(PROVIDER, base, PATH)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("model", &model(params))
                .append_pair("encoding", "linear16")
                .append_pair("sample_rate", &params.sample_rate.to_string());
            for key in QUERY_KEYS {
                match params.extra.get(*key) {
                    Some(Value::String(s)) => q.append_pair(key, s),
                    Some(v @ (Value::Bool(_) | Value::Number(_))) => q.append_pair(key, &v.to_string()),
                    _ => continue,
                };
            }
        }
        Ok(Self { url, api_key: params.api_key.clone(), connect_timeout: params.connect_timeout })
    }

    async fn open(&self) -> Result<WsStream, ProviderError> {
        let auth = format!("Token {}", self.api_key);
        ws::connect(PROVIDER, &self.url, &[("authorization", auth)], self.connect_timeout).await
    }
}

/// On Aura the voice is the model (`aura-2-thalia-en`): a `voice_id` that names one wins, then
/// the `model` field, then the default voice.
fn model(params: &TtsParams) -> String {
    let voice = params.voice_id.trim();
    if voice.starts_with("aura") {
        voice.to_string()
    } else if !params.model.trim().is_empty() {
        params.model.trim().to_string()
    } else {
        DEFAULT_MODEL.to_string()
    }
}

/// One context on the stream, kept until `Flushed` so it can be sent again after a `Clear`.
struct Context {
    id: String,
    texts: Vec<String>,
    /// How many of `texts` are on the wire.
    sent: usize,
    flush_wanted: bool,
    flush_sent: bool,
    /// Audio has been delivered for it (it can no longer be sent again from the start).
    heard: bool,
    /// Cancelled while not at the front: its audio and `Flushed` are dropped.
    cancelled: bool,
    carry: Option<u8>,
}

impl Context {
    fn new(id: String) -> Self {
        Self {
            id,
            texts: Vec::new(),
            sent: 0,
            flush_wanted: false,
            flush_sent: false,
            heard: false,
            cancelled: false,
            carry: None,
        }
    }

    fn on_wire(&self) -> bool {
        self.sent > 0 || self.flush_sent
    }

    /// The server dropped its text (after `Clear`, or a new socket): send everything again.
    fn unsend(&mut self) {
        self.sent = 0;
        self.flush_sent = false;
        self.carry = None;
    }
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Stop,
}

struct Session {
    cfg: Config,
    timing: Timing,
    /// `None` after the server closed an idle socket; reopened when there is text to send.
    ws: Option<WsStream>,
    ev_tx: mpsc::Sender<TtsEvent>,
    /// Contexts in speaking order; the front one owns the audio now arriving.
    queue: VecDeque<Context>,
    ended: RecentIds,
    /// When each flush of the current window went out.
    flushes: VecDeque<Instant>,
    /// `Clear` sent, `Cleared` not yet received: audio is dropped and nothing is sent.
    clearing: bool,
    /// Last message from the server (for [`Timing::reply_wait`]).
    last_heard: Instant,
}

impl Session {
    async fn run(mut self, mut commands: mpsc::Receiver<TtsCommand>) {
        loop {
            let wake = self.next_wake();
            let flow = tokio::select! {
                cmd = commands.recv() => match cmd {
                    None | Some(TtsCommand::Close) => Flow::Stop,
                    Some(cmd) => self.on_command(cmd).await,
                },
                msg = next_message(&mut self.ws) => self.on_message(msg).await,
                _ = sleep_until(wake) => self.on_timer().await,
            };
            if flow == Flow::Stop {
                break;
            }
        }
        if let Some(socket) = self.ws.as_mut() {
            // `Close` asks Deepgram to finish and close with 1000; we are leaving either way.
            let _ = socket.send(Message::text(json!({"type": "Close"}).to_string())).await;
            ws::close_quietly(socket).await;
        }
    }

    async fn on_command(&mut self, cmd: TtsCommand) -> Flow {
        match cmd {
            TtsCommand::Speak { context_id, text } => self.speak(context_id, text).await,
            TtsCommand::Flush { context_id } => self.flush(context_id).await,
            TtsCommand::Cancel { context_id } => self.cancel(&context_id).await,
            TtsCommand::Close => Flow::Stop,
        }
    }

    async fn speak(&mut self, context_id: String, text: String) -> Flow {
        if text.is_empty() || self.ended.contains(&context_id) {
            return Flow::Continue;
        }
        let position = self.queue.iter().position(|c| c.id == context_id);
        let ctx = match position {
            Some(i) => &mut self.queue[i],
            None if self.queue.len() >= MAX_CONTEXTS => {
                return self.fail(&context_id, ProviderError::Backlog { provider: PROVIDER }).await;
            }
            None => {
                self.queue.push_back(Context::new(context_id));
                self.queue.back_mut().expect("just pushed")
            }
        };
        if ctx.flush_wanted {
            tracing::debug!(context_id = ctx.id, "dropping aura text after the context's flush");
            return Flow::Continue;
        }
        ctx.texts.extend(split_text(&text, MAX_SPEAK_CHARS).into_iter().map(str::to_string));
        self.advance().await
    }

    async fn flush(&mut self, context_id: String) -> Flow {
        match self.queue.iter_mut().find(|c| c.id == context_id) {
            Some(ctx) => ctx.flush_wanted = true,
            None if self.ended.contains(&context_id) => return Flow::Continue,
            // Nothing was spoken in this context: there is no audio to wait for.
            None => return self.emit(TtsEvent::Done { context_id }).await,
        }
        self.advance().await
    }

    async fn cancel(&mut self, context_id: &str) -> Flow {
        self.ended.remember(context_id);
        let Some(i) = self.queue.iter().position(|c| c.id == context_id) else { return Flow::Continue };
        if !self.queue[i].on_wire() {
            self.queue.remove(i);
            return Flow::Continue;
        }
        if i > 0 {
            // Clearing would also wipe the context playing now: let this one run out unheard.
            let ctx = &mut self.queue[i];
            ctx.cancelled = true;
            ctx.flush_wanted = true;
            return self.advance().await;
        }
        self.queue.pop_front();
        for ctx in &mut self.queue {
            ctx.unsend();
        }
        self.clearing = true;
        self.last_heard = Instant::now();
        match self.send_json(&json!({"type": "Clear"})).await {
            Ok(()) => Flow::Continue,
            Err(e) => self.socket_lost(e).await,
        }
    }

    /// [`Self::send_ready`], treating a failure as the socket's loss.
    async fn advance(&mut self) -> Flow {
        match self.send_ready().await {
            Ok(()) => Flow::Continue,
            Err(e) => self.socket_lost(e).await,
        }
    }

    /// Put on the wire whatever the order and the flush budget allow.
    async fn send_ready(&mut self) -> Result<(), ProviderError> {
        if self.clearing {
            return Ok(());
        }
        let now = Instant::now();
        for i in 0..self.queue.len() {
            while self.queue[i].sent < self.queue[i].texts.len() {
                let ctx = &self.queue[i];
                let speak = json!({"type": "Speak", "text": ctx.texts[ctx.sent]});
                self.send_json(&speak).await?;
                self.queue[i].sent += 1;
            }
            let ctx = &self.queue[i];
            if ctx.flush_sent {
                continue;
            }
            if !ctx.flush_wanted || !self.flush_budget(now) {
                // Later contexts wait: their text would join this one's flush.
                break;
            }
            self.send_json(&json!({"type": "Flush"})).await?;
            self.flushes.push_back(now);
            if !self.queue.iter().any(|c| c.flush_sent) {
                // Start the reply clock at the first awaited flush, not at an old message.
                self.last_heard = now;
            }
            self.queue[i].flush_sent = true;
        }
        Ok(())
    }

    /// Whether one more flush fits in the sliding window ending `now`.
    fn flush_budget(&mut self, now: Instant) -> bool {
        while self.flushes.front().is_some_and(|&at| now.duration_since(at) >= self.timing.flush_window) {
            self.flushes.pop_front();
        }
        self.flushes.len() < self.timing.flush_limit
    }

    /// Send on the socket, opening one if the last was closed while idle.
    async fn send_json(&mut self, value: &Value) -> Result<(), ProviderError> {
        let socket = match self.ws.as_mut() {
            Some(socket) => socket,
            None => self.ws.insert(self.cfg.open().await?),
        };
        ws::send_json(PROVIDER, socket, value).await
    }

    async fn on_message(&mut self, msg: Option<Result<Message, tungstenite::Error>>) -> Flow {
        self.last_heard = Instant::now();
        match msg {
            Some(Ok(Message::Binary(bytes))) => self.on_audio(&bytes).await,
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
            Some(Ok(Message::Close(frame))) => self.socket_lost(ws::unexpected_close(PROVIDER, frame.as_ref())).await,
            Some(Ok(_)) => Flow::Continue,
            Some(Err(e)) => self.socket_lost(ws::socket_error(PROVIDER, e)).await,
            None => self.socket_lost(ProviderError::Closed { provider: PROVIDER, detail: "socket ended".into() }).await,
        }
    }

    async fn on_audio(&mut self, bytes: &[u8]) -> Flow {
        if self.clearing {
            return Flow::Continue; // audio of the cleared context, still in flight
        }
        let Some(ctx) = self.queue.front_mut() else {
            tracing::debug!("dropping aura audio with no context speaking");
            return Flow::Continue;
        };
        if ctx.cancelled {
            return Flow::Continue;
        }
        let pcm = ws::pcm_from_le_bytes(&mut ctx.carry, bytes);
        if pcm.is_empty() {
            return Flow::Continue;
        }
        ctx.heard = true;
        let event = TtsEvent::Audio { context_id: ctx.id.clone(), pcm };
        self.emit(event).await
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        match parse(text) {
            Some(Incoming::Flushed) if self.clearing => Flow::Continue,
            Some(Incoming::Flushed) => {
                let Some(front) = self.queue.front() else {
                    tracing::debug!("aura Flushed with no context waiting");
                    return Flow::Continue;
                };
                if !front.flush_sent {
                    tracing::warn!(context_id = front.id, "aura Flushed before our Flush; ignoring");
                    return Flow::Continue;
                }
                let ctx = self.queue.pop_front().expect("front checked");
                self.ended.remember(&ctx.id);
                if !ctx.cancelled && self.emit(TtsEvent::Done { context_id: ctx.id }).await == Flow::Stop {
                    return Flow::Stop;
                }
                self.advance().await
            }
            Some(Incoming::Cleared) => {
                self.clearing = false;
                self.advance().await
            }
            Some(Incoming::Error(error)) => self.socket_lost(error).await,
            None => Flow::Continue,
        }
    }

    /// A flush held back by the budget, or a server that stopped answering.
    async fn on_timer(&mut self) -> Flow {
        if self.awaiting_reply() && self.last_heard.elapsed() >= self.timing.reply_wait {
            let what = format!("{:?} for Flushed/Cleared", self.timing.reply_wait);
            return self.socket_lost(ProviderError::Timeout { provider: PROVIDER, what }).await;
        }
        self.advance().await
    }

    fn awaiting_reply(&self) -> bool {
        self.clearing || self.queue.iter().any(|c| c.flush_sent)
    }

    /// The next moment something may be due: a held flush, or the reply deadline.
    fn next_wake(&self) -> Option<Instant> {
        let held_flush = self
            .queue
            .iter()
            .find(|c| !c.flush_sent)
            .filter(|c| c.flush_wanted && c.sent == c.texts.len() && self.flushes.len() >= self.timing.flush_limit)
            .and_then(|_| self.flushes.front().map(|&at| at + self.timing.flush_window));
        let reply = self.awaiting_reply().then(|| self.last_heard + self.timing.reply_wait);
        [held_flush, reply].into_iter().flatten().min()
    }

    /// The socket is gone. Contexts that already played audio fail; the others (and any not
    /// yet sent) go out again on a new socket. Nothing in flight: reopen quietly on demand.
    async fn socket_lost(&mut self, error: ProviderError) -> Flow {
        if let Some(mut socket) = self.ws.take() {
            ws::close_quietly(&mut socket).await;
        }
        self.clearing = false;
        let mut kept = VecDeque::with_capacity(self.queue.len());
        let mut failed = Vec::new();
        for mut ctx in std::mem::take(&mut self.queue) {
            if ctx.heard || ctx.cancelled {
                failed.push(ctx);
            } else {
                ctx.unsend();
                kept.push_back(ctx);
            }
        }
        self.queue = kept;
        if failed.is_empty() && self.queue.is_empty() {
            tracing::debug!(error = %error, "aura socket closed while idle; will reopen on demand");
            return Flow::Continue;
        }
        for ctx in failed {
            if !ctx.cancelled && self.fail(&ctx.id, error.clone()).await == Flow::Stop {
                return Flow::Stop;
            }
        }
        if self.queue.is_empty() {
            return Flow::Continue;
        }
        tracing::warn!(error = %error, "aura socket lost; sending the waiting contexts again");
        let resent = match self.cfg.open().await {
            Ok(socket) => {
                self.ws = Some(socket);
                self.send_ready().await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = resent {
            // A second failure in a row: the service is down for now; fail what waits.
            self.ws = None;
            for ctx in std::mem::take(&mut self.queue) {
                if self.fail(&ctx.id, e.clone()).await == Flow::Stop {
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }

    async fn fail(&mut self, context_id: &str, error: ProviderError) -> Flow {
        self.ended.remember(context_id);
        self.emit(TtsEvent::Error { context_id: Some(context_id.to_string()), error }).await
    }

    async fn emit(&self, event: TtsEvent) -> Flow {
        match self.ev_tx.send(event).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}

async fn next_message(ws: &mut Option<WsStream>) -> Option<Result<Message, tungstenite::Error>> {
    match ws {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[derive(Deserialize)]
struct ServerMsg {
    #[serde(rename = "type", default)]
    kind: String,
    description: Option<String>,
    message: Option<String>,
    code: Option<Value>,
}

/// A server text frame that asks something of the session.
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// The audio of the flushed text has all been sent.
    Flushed,
    /// A `Clear` took effect.
    Cleared,
    /// The server gives up on the socket.
    Error(ProviderError),
}

/// One server text frame; `None` for what needs no action (`Metadata`, `Warning`, unknown or
/// malformed messages, logged).
pub(crate) fn parse(text: &str) -> Option<Incoming> {
    let msg: ServerMsg = match serde_json::from_str(text) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed aura message");
            return None;
        }
    };
    match msg.kind.as_str() {
        "Flushed" => Some(Incoming::Flushed),
        "Cleared" => Some(Incoming::Cleared),
        "Warning" => {
            tracing::warn!(description = ?msg.description, code = ?msg.code, "aura warning");
            None
        }
        "Metadata" => None,
        "Error" => {
            let detail = msg.description.or(msg.message).unwrap_or_else(|| text.to_string());
            Some(Incoming::Error(ProviderError::Remote { provider: PROVIDER, detail }))
        }
        other => {
            tracing::debug!(kind = other, "ignoring aura message");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn params(base_url: String) -> TtsParams {
        TtsParams {
            provider: "deepgram".into(),
            base_url,
            api_key: "dg-key".into(),
            model: String::new(),
            voice_id: String::new(),
            language: None,
            sample_rate: 8000,
            extra: serde_json::Map::new(),
            connect_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn url_and_model_choice() {
        let mut p = params(String::new());
        p.extra.insert("speed".into(), json!(1.1));
        p.extra.insert("mip_opt_out".into(), json!(true));
        let cfg = Config::from_params(&p).unwrap();
        assert_eq!(
            cfg.url.as_str(),
            "wss://api.deepgram.com/v1/speak?model=aura-2-thalia-en&encoding=linear16&sample_rate=8000&speed=1.1&mip_opt_out=true"
        );
        p.model = "aura-2-andromeda-en".into();
        assert_eq!(model(&p), "aura-2-andromeda-en");
        p.voice_id = "aura-2-helena-en".into();
        assert_eq!(model(&p), "aura-2-helena-en");
        p.sample_rate = 22050;
        assert!(matches!(Config::from_params(&p), Err(ProviderError::Connect { .. })));
    }

    /// The flush budget holds the third flush of a 2-per-window budget until the window moves,
    /// and the context behind it waits with it (its text would otherwise join that flush).
    /// The held context's own text goes out at once: it follows the previous flush.
    #[tokio::test]
    async fn flushes_respect_the_rate_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("ws://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let started = Instant::now();
            let mut seen = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                let kind = v["type"].as_str().unwrap().to_string();
                let label = if kind == "Speak" { v["text"].as_str().unwrap().to_string() } else { kind.clone() };
                seen.push((label, started.elapsed()));
                if kind == "Flush" {
                    let n = seen.iter().filter(|(l, _)| l == "Flush").count() - 1;
                    ws.send(Message::text(json!({"type":"Flushed","sequence_id":n}).to_string())).await.unwrap();
                    if n == 3 {
                        break;
                    }
                }
            }
            seen
        });
        let timing =
            Timing { flush_limit: 2, flush_window: Duration::from_millis(400), reply_wait: Duration::from_secs(5) };
        let (handle, mut events) = connect_with(&params(base), timing).await.unwrap();
        for i in 0..4 {
            handle.speak(&format!("t{i}"), &format!("text {i}")).unwrap();
            handle.flush(&format!("t{i}")).unwrap();
        }
        let seen = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
        let labels: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["text 0", "Flush", "text 1", "Flush", "text 2", "Flush", "text 3", "Flush"]);
        let at = |i: usize| seen[i].1;
        assert!(at(3) < Duration::from_millis(300), "the first two flushes went at once: {seen:?}");
        assert!(at(4) < Duration::from_millis(300), "text after a flush goes at once: {seen:?}");
        assert!(at(5) >= at(1) + Duration::from_millis(390), "the third flush waited for the window: {seen:?}");
        assert!(at(6) >= at(5), "the fourth context waited behind it: {seen:?}");
        for i in 0..4 {
            assert_eq!(events.recv().await, Some(TtsEvent::Done { context_id: format!("t{i}") }));
        }
    }
}
