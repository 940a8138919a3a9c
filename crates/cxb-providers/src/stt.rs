//! Streaming speech-to-text. API (vendors: [`crate::registry`]; Deepgram live v1 and Flux v2,
//! wire-protocols §3).
//!
//! ```text
//! let (handle, mut events) = stt::connect(&params).await?;   // bounded by params.connect_timeout
//! handle.send_audio(&pcm_i16_at_params_sample_rate)?;          // never blocks; Err(Backlog) if full
//! handle.finalize();                                           // {"type":"Finalize"}
//! handle.close();                                              // {"type":"CloseStream"}, then the task ends
//! while let Some(ev) = events.recv().await { ... }             // SttEvent; Error is terminal
//! ```

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::registry::{self, Client, Kind};
use crate::ProviderError;

/// Connection parameters, resolved from the bot config's `stt` block plus worker settings.
#[derive(Debug, Clone)]
pub struct SttParams {
    /// A vendor name or alias of the registry (`deepgram`, `deepgram_flux`, ...).
    pub provider: String,
    /// API root as the vendor SDK takes it, e.g. `wss://api.deepgram.com` (the client adds `/v1/listen`).
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    pub language: String,
    /// Sample rate of the LINEAR16 mono audio we send.
    pub sample_rate: u32,
    /// `stt.extra` from the bot config: endpointing, smart_format, punctuate, interim_results, ...
    pub extra: Map<String, Value>,
    pub connect_timeout: Duration,
}

/// One transcript result.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub is_final: bool,
    pub speech_final: bool,
    pub from_finalize: bool,
    pub confidence: f32,
    /// Seconds from the stream start.
    pub start: f64,
    pub duration: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SttEvent {
    Transcript(Transcript),
    /// `SpeechStarted` (vad_events=true).
    SpeechStarted,
    /// `UtteranceEnd`: fallback end-of-turn signal.
    UtteranceEnd,
    /// Terminal: the stream failed or was closed by the server unexpectedly.
    Error(ProviderError),
    /// Terminal: the stream ended after `close()`.
    Closed,
}

/// Commands from the call driver to the connection task.
#[derive(Debug)]
pub enum SttCommand {
    Audio(Vec<u8>),
    Finalize,
    Close,
}

/// Cheap, cloneable sender side of an STT stream.
#[derive(Debug, Clone)]
pub struct SttHandle {
    pub(crate) tx: mpsc::Sender<SttCommand>,
    pub(crate) provider: &'static str,
}

impl SttHandle {
    /// Queue caller audio (i16 samples, converted to LINEAR16 little-endian). Never blocks.
    pub fn send_audio(&self, pcm: &[i16]) -> Result<(), ProviderError> {
        let mut bytes = vec![0u8; pcm.len() * 2];
        for (b, s) in bytes.chunks_exact_mut(2).zip(pcm) {
            b.copy_from_slice(&s.to_le_bytes());
        }
        self.tx.try_send(SttCommand::Audio(bytes)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProviderError::Backlog { provider: self.provider },
            mpsc::error::TrySendError::Closed(_) => {
                ProviderError::Closed { provider: self.provider, detail: "stream task ended".into() }
            }
        })
    }

    /// Ask the server to flush a final result now (sent when our VAD closes a turn).
    pub fn finalize(&self) {
        let _ = self.tx.try_send(SttCommand::Finalize);
    }

    /// Close the stream gracefully.
    pub fn close(&self) {
        let _ = self.tx.try_send(SttCommand::Close);
    }
}

/// Open a streaming STT session with the vendor the registry resolves `params.provider` (and,
/// for Deepgram, `params.model`: a `flux-*` model opens the turn-detecting v2 stream) to.
pub async fn connect(params: &SttParams) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    let vendor = registry::resolve(Kind::Stt, &params.provider, &params.model)?;
    vendor.warn_unless_native(params.sample_rate);
    match vendor.client {
        Client::Stt(connect) => connect(params).await,
        Client::Llm(_) | Client::Tts(_) => unreachable!("resolve(Kind::Stt, ..) yields STT vendors"),
    }
}
