//! Streaming speech-to-text. API (implementation: Deepgram live v1, wire-protocols §3).
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

use crate::ProviderError;

/// Connection parameters, resolved from the bot config's `stt` block plus worker settings.
#[derive(Debug, Clone)]
pub struct SttParams {
    /// `deepgram` (aliases resolved by the caller).
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

/// Open a streaming STT session. A Deepgram `flux-*` model (or provider `deepgram_flux`) opens
/// the turn-detecting v2 stream, adapted to the same events: `StartOfTurn` → `SpeechStarted`,
/// `Update` → interim transcript, `EndOfTurn` → final transcript with `speech_final` plus
/// `UtteranceEnd`, so the STT's own turn decision closes the caller's turn.
pub async fn connect(params: &SttParams) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    match params.provider.as_str() {
        "deepgram" if params.model.starts_with("flux") => connect_flux(params).await,
        "deepgram_flux" => connect_flux(params).await,
        "deepgram" => crate::stt_deepgram::connect(params).await,
        "soniox" => crate::stt_soniox::connect(params).await,
        "sarvam" => crate::stt_sarvam::connect(params).await,
        other => Err(ProviderError::Unsupported(other.to_string())),
    }
}

/// Is this the turn-detecting STT (whose end-of-turn events decide when the caller is done)?
pub fn detects_turns(params: &SttParams) -> bool {
    params.provider == "deepgram_flux" || (params.provider == "deepgram" && params.model.starts_with("flux"))
}

async fn connect_flux(params: &SttParams) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    use crate::stt_flux::{self, FluxEvent};
    let (flux, mut flux_rx) = stt_flux::connect(params).await?;
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<SttCommand>(64);
    let (ev_tx, ev_rx) = mpsc::channel::<SttEvent>(64);
    let provider = stt_flux::PROVIDER;
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
