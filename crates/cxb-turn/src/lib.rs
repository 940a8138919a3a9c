//! Turn taking for cxb-core: *has the caller finished speaking?*
//!
//! - [`SileroVad`] — Silero VAD v5/v6 speech probability per 32 ms chunk (8 or 16 kHz).
//! - [`SmartTurn`] — Smart Turn v3.2: from the last 8 s of the caller's audio, the probability
//!   that the utterance is complete (pipecat's `LocalSmartTurnAnalyzerV3`, same preprocessing).
//! - [`TurnGate`] — the pure state machine that turns VAD stops and predictions into "close the
//!   turn now" or "wait up to `max_wait` for more speech".
//! - [`TurnAudio`] — the bounded 16 kHz buffer of the current turn that Smart Turn scores.
//! - [`features`] — the Whisper log-mel front end of Smart Turn.
//!
//! The two models run on ONNX Runtime through `ort`, behind the `onnx` cargo feature (off by
//! default). ONNX Runtime is not linked: it is opened at run time from
//! `$CXB_ONNXRUNTIME_LIB`, else `<models dir>/libonnxruntime.so`, where `scripts/fetch-models.sh`
//! puts the library from the pinned PyPI wheel next to the two models (docs/turn-models.md).
//! Without the feature every type is still here and the constructors return
//! [`TurnError::OnnxDisabled`]; [`TurnGate`], [`TurnAudio`] and [`features`] work either way.
//!
//! Cost on this project's 2-core x86_64 machines (`examples/turn_bench.rs`, CPU time per call):
//! Silero ≈ 0.08 ms per 32 ms chunk at 8 kHz (0.11–0.14 ms at 16 kHz), Smart Turn ≈ 45–50 ms per
//! prediction, of which ≈ 2–3 ms are the log-mel features. So run Smart Turn off the audio path
//! (e.g. `spawn_blocking`), never inline in an async task. Each model object is single-threaded
//! (`&mut self`), `Send`, and owns one ONNX Runtime session using one intra-op thread, so one
//! object per call scales with calls rather than fighting over cores.

#![cfg_attr(not(feature = "onnx"), forbid(unsafe_code))]

mod audio;
mod error;
pub mod features;
pub mod gate;
mod runtime;
mod silero;
mod smart_turn;

pub use audio::TurnAudio;
pub use error::TurnError;
pub use gate::{CloseReason, GateAction, Ticket, TurnGate, TurnGateConfig};
pub use runtime::{
    init_onnxruntime, init_onnxruntime_from, models_dir, onnxruntime_lib_path, silero_model_path,
    smart_turn_model_path, ENV_MODELS_DIR, ENV_ONNXRUNTIME_LIB, ONNX_ENABLED, SILERO_MODEL_FILE, SMART_TURN_MODEL_FILE,
};
pub use silero::SileroVad;
pub use smart_turn::{SmartTurn, TurnPrediction};

/// Smart Turn's decision threshold (pipecat: `prediction = probability > 0.5`).
pub const COMPLETE_THRESHOLD: f32 = 0.5;
