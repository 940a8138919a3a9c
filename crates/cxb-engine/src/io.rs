//! What the driver feeds the engine ([`Input`]) and what the engine asks of it ([`Action`]).

use cxb_wire::llm::{ChatMessage, ToolCall, Usage};
use cxb_wire::result::DisconnectedBy;
use cxb_wire::transfer::ResolvedTransfer;
use serde_json::Value;

/// Word timing reported by TTS, relative to the utterance's first sample.
#[derive(Debug, Clone, PartialEq)]
pub struct WordTime {
    pub word: String,
    pub start_secs: f32,
}

/// Which external service an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Stt,
    Llm,
    Tts,
    Transport,
}

impl Service {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Service::Stt => "stt",
            Service::Llm => "llm",
            Service::Tts => "tts",
            Service::Transport => "transport",
        }
    }
}

/// Everything that can happen to a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The call is answered: speak the opening message.
    Start,
    /// VAD: the caller started speaking.
    SpeechStarted,
    /// VAD: the caller stopped speaking (after the stop hangover).
    SpeechStopped,
    /// An STT result. Interim results replace each other; finals accumulate.
    Transcript {
        text: String,
        is_final: bool,
        speech_final: bool,
    },
    /// STT fallback end-of-utterance signal.
    UtteranceEnd,
    LlmToken {
        turn: u64,
        text: String,
    },
    LlmToolCalls {
        turn: u64,
        calls: Vec<ToolCall>,
    },
    LlmDone {
        turn: u64,
        usage: Option<Usage>,
    },
    LlmFailed {
        turn: u64,
        error: String,
    },
    TtsAudio {
        utterance: u64,
        pcm: Vec<i16>,
    },
    TtsWords {
        utterance: u64,
        words: Vec<WordTime>,
    },
    TtsDone {
        utterance: u64,
    },
    /// A provider or the transport failed irrecoverably.
    ServiceFailed {
        service: Service,
        error: String,
    },
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
    /// The caller hung up (hangup-call, stop, participant left, or a vanished socket).
    CustomerHangup,
    /// The caller pressed keys.
    Dtmf {
        digits: String,
    },
    /// The transport performed (or failed) the transfer asked for by [`Action::Transfer`].
    TransferResult {
        ok: bool,
        error: Option<String>,
    },
    /// The far end confirmed it played an utterance to its end (a playback mark came back).
    PlaybackConfirmed {
        utterance: u64,
    },
    /// The turn model's verdict on the audio up to the last VAD stop.
    TurnPrediction {
        complete: bool,
    },
    /// The worker is stopping and cannot wait for the call's natural end (drain deadline): end
    /// it now as `error`, hanging up, with a `worker_shutdown` event.
    Shutdown,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    StartLlm {
        turn: u64,
        messages: Vec<ChatMessage>,
        tools: Vec<Value>,
    },
    CancelLlm {
        turn: u64,
    },
    /// Send text to TTS for utterance (context) `utterance`.
    Speak {
        utterance: u64,
        text: String,
    },
    /// No more text for this utterance.
    FlushSpeech {
        utterance: u64,
    },
    CancelSpeech {
        utterance: u64,
    },
    /// Send this 20 ms frame of bot audio to the caller now.
    PlayAudio {
        frame: Vec<i16>,
    },
    /// Drop any bot audio the transport has queued (barge-in).
    ClearAudio,
    /// Ask STT to flush a final result now.
    FinalizeStt,
    RunTool {
        call_id: String,
        name: String,
        arguments: String,
    },
    /// The last frame of this utterance has been released: transports with playback marks
    /// place one (its echo comes back as [`Input::PlaybackConfirmed`]); chunking transports flush.
    UtteranceDone {
        utterance: u64,
    },
    /// Run the turn model on the caller's audio so far; answer with [`Input::TurnPrediction`].
    PredictTurn,
    /// Perform the transfer to `to` (the transport's primitive, or an Agent Desk handoff when
    /// [`ResolvedTransfer::is_agent_desk`]), then report [`Input::TransferResult`].
    Transfer {
        to: ResolvedTransfer,
        /// Why, in the LLM's words.
        reason: String,
    },
    /// The call is over. `hang_up`: the bot ends it, so the transport's hang-up primitive must be
    /// sent; false when the caller already left.
    End {
        disconnected_by: DisconnectedBy,
        hang_up: bool,
    },
}
