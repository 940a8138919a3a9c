use std::path::PathBuf;

/// Everything that can go wrong in this crate. The same variants exist with and without the
/// `onnx` feature, so callers handle one type whichever way the crate was built.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The crate was compiled without the `onnx` cargo feature.
    #[error("{0} is unavailable: cxb-turn was built without the `onnx` feature (rebuild with `--features onnx`)")]
    OnnxDisabled(&'static str),

    /// No ONNX Runtime library at the resolved path.
    #[error(
        "ONNX Runtime library not found at {}: run scripts/fetch-models.sh or set CXB_ONNXRUNTIME_LIB",
        path.display()
    )]
    RuntimeMissing { path: PathBuf },

    /// The library exists but could not be opened, or is not ONNX Runtime.
    #[error("cannot load ONNX Runtime from {}: {reason}", path.display())]
    RuntimeLoad { path: PathBuf, reason: String },

    /// The library is older than the API version `ort` was built for.
    #[error("ONNX Runtime at {} is version {found}; cxb-turn needs 1.{needed}.x or newer", path.display())]
    RuntimeVersion { path: PathBuf, found: String, needed: u32 },

    /// A model file is missing.
    #[error(
        "model file not found: {}: run scripts/fetch-models.sh or set CXB_MODELS_DIR",
        path.display()
    )]
    ModelMissing { path: PathBuf },

    /// Silero VAD runs at 8 kHz or 16 kHz only.
    #[error("Silero VAD does not support {0} Hz (8000 or 16000 only)")]
    UnsupportedSampleRate(u32),

    /// A VAD chunk was not the model's native length.
    #[error("Silero VAD at {sample_rate} Hz takes chunks of exactly {expected} samples, got {got}")]
    ChunkSize { sample_rate: u32, expected: usize, got: usize },

    /// Audio that no model can score (empty, NaN or infinite samples).
    #[error("invalid audio: {0}")]
    InvalidAudio(&'static str),

    /// ONNX Runtime failed to load or run a model, or the model's inputs/outputs are not the
    /// ones this crate was written for (a wrong or corrupted file).
    #[error("{model}: {message}")]
    Model { model: &'static str, message: String },

    /// An internal invariant broke (a bug here, not bad input).
    #[error("internal error: {0}")]
    Internal(String),
}
