//! Streaming text-to-speech. API (vendors: [`crate::registry`]; Cartesia `/tts/websocket` and
//! ElevenLabs `stream-input`, wire-protocols §5). Raw PCM s16le mono at the transport's rate.
//!
//! ```text
//! let (handle, mut events) = tts::connect(&params).await?;
//! handle.speak("turn-1", "Hello there. ")?;   // more text for a context (a bot turn)
//! handle.flush("turn-1")?;                    // no more text for this context
//! handle.cancel("turn-1")?;                   // barge-in: drop queued/ongoing synthesis
//! while let Some(ev) = events.recv().await { ... }
//! ```

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::registry::{self, Client, Kind};
use crate::ProviderError;

#[derive(Debug, Clone)]
pub struct TtsParams {
    /// A TTS vendor name or alias of the registry (`cartesia`, `elevenlabs`, ...).
    pub provider: String,
    /// API root as the vendor SDK takes it (`wss://api.cartesia.ai`, `wss://api.elevenlabs.io`).
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    pub voice_id: String,
    pub language: Option<String>,
    pub sample_rate: u32,
    pub extra: Map<String, Value>,
    pub connect_timeout: Duration,
}

/// Timing of one spoken word, relative to the start of its context's audio.
#[derive(Debug, Clone, PartialEq)]
pub struct WordTiming {
    pub word: String,
    pub start_secs: f32,
    pub end_secs: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TtsEvent {
    Audio {
        context_id: String,
        pcm: Vec<i16>,
    },
    Words {
        context_id: String,
        words: Vec<WordTiming>,
    },
    /// All audio of a flushed context has been delivered.
    Done {
        context_id: String,
    },
    /// A failure. `context_id` is set when only that context failed; `None` means the
    /// connection is gone (terminal).
    Error {
        context_id: Option<String>,
        error: ProviderError,
    },
}

impl TtsEvent {
    /// The context the event belongs to; `None` for a failure of the whole connection.
    pub fn context_id(&self) -> Option<&str> {
        match self {
            TtsEvent::Audio { context_id, .. } | TtsEvent::Words { context_id, .. } | TtsEvent::Done { context_id } => {
                Some(context_id)
            }
            TtsEvent::Error { context_id, .. } => context_id.as_deref(),
        }
    }
}

#[derive(Debug)]
pub enum TtsCommand {
    Speak { context_id: String, text: String },
    Flush { context_id: String },
    Cancel { context_id: String },
    Close,
}

impl TtsCommand {
    /// The context the command is for; `None` for `Close`.
    pub fn context_id(&self) -> Option<&str> {
        match self {
            TtsCommand::Speak { context_id, .. }
            | TtsCommand::Flush { context_id }
            | TtsCommand::Cancel { context_id } => Some(context_id),
            TtsCommand::Close => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TtsHandle {
    pub(crate) tx: mpsc::Sender<TtsCommand>,
    pub(crate) provider: &'static str,
}

impl TtsHandle {
    fn send(&self, cmd: TtsCommand) -> Result<(), ProviderError> {
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProviderError::Backlog { provider: self.provider },
            mpsc::error::TrySendError::Closed(_) => {
                ProviderError::Closed { provider: self.provider, detail: "tts task ended".into() }
            }
        })
    }
    pub fn speak(&self, context_id: &str, text: &str) -> Result<(), ProviderError> {
        self.send(TtsCommand::Speak { context_id: context_id.into(), text: text.into() })
    }
    pub fn flush(&self, context_id: &str) -> Result<(), ProviderError> {
        self.send(TtsCommand::Flush { context_id: context_id.into() })
    }
    pub fn cancel(&self, context_id: &str) -> Result<(), ProviderError> {
        self.send(TtsCommand::Cancel { context_id: context_id.into() })
    }
    pub fn close(&self) {
        let _ = self.tx.try_send(TtsCommand::Close);
    }
}

/// Open a TTS session for one call with the vendor the registry resolves `params.provider` to.
pub async fn connect(params: &TtsParams) -> Result<(TtsHandle, mpsc::Receiver<TtsEvent>), ProviderError> {
    let vendor = registry::resolve(Kind::Tts, &params.provider, &params.model)?;
    vendor.warn_unless_native(params.sample_rate);
    match vendor.client {
        Client::Tts(connect) => connect(params).await,
        Client::Stt(_) | Client::Llm(_) => unreachable!("resolve(Kind::Tts, ..) yields TTS vendors"),
    }
}
