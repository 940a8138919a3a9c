//! Cartesia streaming TTS (`/tts/websocket`, wire-protocols §5).
//!
//! One socket per call multiplexes contexts (one per bot turn). Cartesia closes sockets after
//! about five idle minutes and has no keepalive, so a socket lost while no context is active is
//! silently reopened on the next `speak`; losing it mid-context is terminal.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use crate::tts::{TtsCommand, TtsEvent, TtsHandle, TtsParams, WordTiming};
use crate::tts_context::Contexts;
use crate::ws::{self, WsStream};
use crate::ProviderError;

const PROVIDER: &str = crate::registry::CARTESIA.name;
/// The API version pipecat pins and the spec documents.
const API_VERSION: &str = "2026-03-01";
const DEFAULT_MODEL: &str = crate::registry::CARTESIA.default_model;
const COMMAND_QUEUE: usize = 512;
const EVENT_QUEUE: usize = 256;
/// `tts.extra` keys forwarded into every generation request.
const EXTRA_REQUEST_KEYS: &[&str] = &["generation_config", "pronunciation_dict_id", "max_buffer_delay_ms"];

pub(crate) async fn connect(params: &TtsParams) -> Result<(TtsHandle, mpsc::Receiver<TtsEvent>), ProviderError> {
    let cfg = Config::from_params(params)?;
    // Opening here proves reachability and the key before the call starts.
    let socket = cfg.open().await?;
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let session = Session { cfg, ws: Some(socket), cmd_rx, ev_tx, contexts: Contexts::default() };
    tokio::spawn(session.run());
    Ok((TtsHandle { tx: cmd_tx, provider: PROVIDER }, ev_rx))
}

struct Config {
    url: Url,
    api_key: String,
    connect_timeout: Duration,
    model: String,
    voice_id: String,
    language: Option<String>,
    sample_rate: u32,
    extra: Map<String, Value>,
}

impl Config {
    fn from_params(params: &TtsParams) -> Result<Self, ProviderError> {
        let model = if params.model.is_empty() { DEFAULT_MODEL } else { params.model.as_str() };
        let extra = params
            .extra
            .iter()
            .filter(|(k, _)| EXTRA_REQUEST_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self {
            url: ws::ws_url(PROVIDER, &params.base_url, "/tts/websocket")?,
            api_key: params.api_key.clone(),
            connect_timeout: params.connect_timeout,
            model: model.to_string(),
            voice_id: params.voice_id.clone(),
            language: params.language.clone().filter(|l| !l.is_empty()),
            sample_rate: params.sample_rate,
            extra,
        })
    }

    async fn open(&self) -> Result<WsStream, ProviderError> {
        let headers = [("x-api-key", self.api_key.clone()), ("cartesia-version", API_VERSION.to_string())];
        ws::connect(PROVIDER, &self.url, &headers, self.connect_timeout).await
    }

    /// One generation request; `transcript:""` with `continue:false` ends the context.
    fn generation(&self, context_id: &str, transcript: &str, more: bool) -> Value {
        let mut req = json!({
            "context_id": context_id,
            "model_id": self.model,
            "transcript": transcript,
            "continue": more,
            "voice": { "mode": "id", "id": self.voice_id },
            "output_format": { "container": "raw", "encoding": "pcm_s16le", "sample_rate": self.sample_rate },
            "add_timestamps": true,
            "use_normalized_timestamps": false,
            "max_buffer_delay_ms": 0,
        });
        if let Some(obj) = req.as_object_mut() {
            if let Some(language) = &self.language {
                obj.insert("language".into(), json!(language));
            }
            obj.extend(self.extra.clone());
        }
        req
    }
}

/// Whether the session goes on after handling something.
#[derive(PartialEq)]
enum Flow {
    Continue,
    Stop,
}

/// Per-context decoding state.
#[doc(hidden)]
#[derive(Default)]
pub struct Context {
    carry: Option<u8>,
}

struct Session {
    cfg: Config,
    /// `None` after the server dropped an idle socket; reopened on the next `speak`.
    ws: Option<WsStream>,
    cmd_rx: mpsc::Receiver<TtsCommand>,
    ev_tx: mpsc::Sender<TtsEvent>,
    /// Contexts spoken into and not yet done, failed or cancelled, and those recently ended.
    contexts: Contexts<Context>,
}

impl Session {
    async fn run(mut self) {
        loop {
            let flow = tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(TtsCommand::Close) | None => Flow::Stop,
                    Some(cmd) => self.on_command(cmd).await,
                },
                msg = next_message(&mut self.ws) => self.on_message(msg).await,
            };
            if flow == Flow::Stop {
                break;
            }
        }
        if let Some(socket) = self.ws.as_mut() {
            ws::close_quietly(socket).await;
        }
    }

    async fn on_command(&mut self, cmd: TtsCommand) -> Flow {
        let Some(context_id) = cmd.context_id().map(str::to_string) else {
            return Flow::Stop;
        };
        if self.contexts.is_closed(&context_id) {
            tracing::debug!(context_id, "dropping command for a closed tts context");
            return Flow::Continue;
        }
        match cmd {
            TtsCommand::Speak { text, .. } if text.is_empty() => Flow::Continue,
            TtsCommand::Speak { text, .. } => self.speak(&context_id, &text).await,
            TtsCommand::Flush { .. } => self.flush(&context_id).await,
            TtsCommand::Cancel { .. } => self.cancel(&context_id).await,
            TtsCommand::Close => Flow::Stop,
        }
    }

    async fn speak(&mut self, context_id: &str, text: &str) -> Flow {
        let request = self.cfg.generation(context_id, text, true);
        let mut retried = false;
        loop {
            let mut socket = match self.ws.take() {
                Some(socket) => socket,
                None => match self.cfg.open().await {
                    Ok(socket) => socket,
                    Err(e) => return self.context_failed(context_id, e).await,
                },
            };
            let sent = ws::send_json(PROVIDER, &mut socket, &request).await;
            self.ws = Some(socket);
            match sent {
                Ok(()) => {
                    self.contexts.get_or_open(context_id, Context::default);
                    return Flow::Continue;
                }
                // Other contexts (or this one) live on this socket: the connection is gone.
                Err(e) if self.contexts.any_live() => return self.socket_lost(e).await,
                // An idle socket the server closed may only show up as a failed write.
                Err(e) if !retried => {
                    tracing::debug!(error = %e, "cartesia idle socket gone; reconnecting");
                    self.ws = None;
                    retried = true;
                }
                Err(e) => {
                    self.ws = None;
                    return self.context_failed(context_id, e).await;
                }
            }
        }
    }

    async fn flush(&mut self, context_id: &str) -> Flow {
        if !self.contexts.is_live(context_id) {
            // Nothing was spoken: there is no audio to wait for.
            return self.emit(TtsEvent::Done { context_id: context_id.to_string() }).await;
        }
        let request = self.cfg.generation(context_id, "", false);
        self.send(&request).await
    }

    async fn cancel(&mut self, context_id: &str) -> Flow {
        if self.contexts.close(context_id).is_none() {
            return Flow::Continue;
        }
        self.send(&json!({ "context_id": context_id, "cancel": true })).await
    }

    /// Send on the current socket; a failure here always has an active context at stake.
    async fn send(&mut self, value: &Value) -> Flow {
        let Some(socket) = self.ws.as_mut() else {
            return self.socket_lost(closed("socket not open")).await;
        };
        match ws::send_json(PROVIDER, socket, value).await {
            Ok(()) => Flow::Continue,
            Err(e) => self.socket_lost(e).await,
        }
    }

    async fn on_message(&mut self, msg: Option<Result<Message, tungstenite::Error>>) -> Flow {
        match msg {
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
            Some(Ok(Message::Close(frame))) => self.socket_lost(ws::unexpected_close(PROVIDER, frame.as_ref())).await,
            Some(Ok(_)) => Flow::Continue,
            Some(Err(e)) => self.socket_lost(ws::socket_error(PROVIDER, e)).await,
            None => self.socket_lost(closed("socket ended")).await,
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        match react(&mut self.contexts, text) {
            Reaction::None => Flow::Continue,
            Reaction::Emit(event) => self.emit(event).await,
            Reaction::ContextFailed { context_id, error } => self.context_failed(&context_id, error).await,
            Reaction::ConnectionFailed(error) => {
                self.emit(TtsEvent::Error { context_id: None, error }).await;
                Flow::Stop
            }
        }
    }

    /// One context is lost; the connection carries on.
    async fn context_failed(&mut self, context_id: &str, error: ProviderError) -> Flow {
        tracing::warn!(error = %error, context_id, "cartesia context failed");
        self.contexts.close(context_id);
        self.emit(TtsEvent::Error { context_id: Some(context_id.to_string()), error }).await
    }

    /// The socket is gone. Harmless while idle (reopen later); terminal mid-context.
    async fn socket_lost(&mut self, error: ProviderError) -> Flow {
        self.ws = None;
        if !self.contexts.any_live() {
            tracing::debug!(error = %error, "cartesia socket closed while idle; will reopen on demand");
            return Flow::Continue;
        }
        tracing::warn!(error = %error, "cartesia socket lost mid-context");
        self.emit(TtsEvent::Error { context_id: None, error }).await;
        Flow::Stop
    }

    async fn emit(&self, event: TtsEvent) -> Flow {
        match self.ev_tx.send(event).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}

fn closed(detail: &str) -> ProviderError {
    ProviderError::Closed { provider: PROVIDER, detail: detail.to_string() }
}

/// Next socket message, or never while there is no socket.
async fn next_message(ws: &mut Option<WsStream>) -> Option<Result<Message, tungstenite::Error>> {
    match ws {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

/// What one server text frame asks of the session.
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub enum Reaction {
    None,
    Emit(TtsEvent),
    /// One context is lost; the connection carries on.
    ContextFailed {
        context_id: String,
        error: ProviderError,
    },
    /// An error tied to no context: the connection itself is unusable.
    ConnectionFailed(ProviderError),
}

/// Interprets one server text frame against the live contexts, without I/O: the session performs
/// the reaction. Output for a context that is not live (cancelled, failed or finished) is dropped
/// on purpose.
pub(crate) fn react(contexts: &mut Contexts<Context>, text: &str) -> Reaction {
    let msg: ServerMsg = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed cartesia message");
            return Reaction::None;
        }
    };
    let Some(context_id) = msg.context_id.clone() else {
        if msg.kind.as_deref() == Some("error") {
            return Reaction::ConnectionFailed(ProviderError::Remote {
                provider: PROVIDER,
                detail: msg.error_detail(),
            });
        }
        tracing::debug!(kind = ?msg.kind, "ignoring cartesia message without context");
        return Reaction::None;
    };
    let Some(ctx) = contexts.get_mut(&context_id) else {
        tracing::trace!(context_id, kind = ?msg.kind, "dropping message for inactive context");
        return Reaction::None;
    };
    match msg.kind.as_deref() {
        Some("chunk") => match ws::pcm_from_base64(&mut ctx.carry, msg.data.as_deref().unwrap_or("")) {
            Ok(pcm) if pcm.is_empty() => Reaction::None,
            Ok(pcm) => Reaction::Emit(TtsEvent::Audio { context_id, pcm }),
            Err(e) => {
                tracing::warn!(error = %e, context_id, "dropping undecodable cartesia audio chunk");
                Reaction::None
            }
        },
        Some("timestamps") => match msg.word_timestamps.map(WordTimestamps::into_words) {
            Some(words) if !words.is_empty() => Reaction::Emit(TtsEvent::Words { context_id, words }),
            _ => Reaction::None,
        },
        Some("done") => {
            contexts.close(&context_id);
            Reaction::Emit(TtsEvent::Done { context_id })
        }
        Some("error") => {
            let error = ProviderError::Remote { provider: PROVIDER, detail: msg.error_detail() };
            Reaction::ContextFailed { context_id, error }
        }
        Some("flush_done") => Reaction::None,
        other => {
            tracing::debug!(kind = ?other, "ignoring cartesia message");
            Reaction::None
        }
    }
}

#[derive(Deserialize)]
struct ServerMsg {
    #[serde(rename = "type")]
    kind: Option<String>,
    context_id: Option<String>,
    data: Option<String>,
    word_timestamps: Option<WordTimestamps>,
    title: Option<String>,
    message: Option<String>,
    // Loosely typed: an unexpected type here must not cost us the error message itself.
    error_code: Option<Value>,
    status_code: Option<Value>,
}

impl ServerMsg {
    /// "Invalid model: … (model_not_found, 400)".
    fn error_detail(&self) -> String {
        let text = match (&self.title, &self.message) {
            (Some(t), Some(m)) => format!("{t}: {m}"),
            (Some(s), None) | (None, Some(s)) => s.clone(),
            (None, None) => "unknown error".to_string(),
        };
        let tag = |v: &Option<Value>| match v {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        let tags: Vec<String> = [tag(&self.error_code), tag(&self.status_code)].into_iter().flatten().collect();
        if tags.is_empty() {
            text
        } else {
            format!("{text} ({})", tags.join(", "))
        }
    }
}

#[derive(Deserialize)]
struct WordTimestamps {
    #[serde(default)]
    words: Vec<String>,
    #[serde(default)]
    start: Vec<f32>,
    #[serde(default)]
    end: Vec<f32>,
}

impl WordTimestamps {
    fn into_words(self) -> Vec<WordTiming> {
        self.words
            .into_iter()
            .zip(self.start)
            .zip(self.end)
            .map(|((word, start_secs), end_secs)| WordTiming { word, start_secs, end_secs })
            .collect()
    }
}
