//! Silero VAD (v5 / v6 ONNX graph) on ONNX Runtime.

use std::path::Path;

use crate::TurnError;

/// Silero VAD: the probability that a 32 ms chunk is speech.
///
/// The model is recurrent and streaming. Each call feeds one chunk of its native length (256
/// samples at 8 kHz, 512 at 16 kHz), prefixed with the last 32 / 64 samples of the previous
/// chunk (the "context" Silero v5 needs to see across chunk edges), and carries the `(2, 1, 128)`
/// state from one call to the next — exactly what the `silero-vad` package's `OnnxWrapper` and
/// pipecat's `SileroOnnxModel` do. [`reset`](Self::reset) clears both.
///
/// pipecat resets the model every ≥ 2 s of audio during clear non-speech (5 windows < 0.1 while
/// its VAD is quiet), because music or long silence can leave the state unable to detect the
/// speech that follows; a driver that sees such audio should do the same with `reset`.
pub struct SileroVad {
    sample_rate: u32,
    chunk: usize,
    #[cfg(feature = "onnx")]
    inner: onnx::Silero,
    #[cfg(not(feature = "onnx"))]
    never: std::convert::Infallible,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad").field("sample_rate", &self.sample_rate).field("chunk", &self.chunk).finish()
    }
}

impl SileroVad {
    /// The model's chunk length at `sample_rate` (256 at 8 kHz, 512 at 16 kHz).
    pub const fn chunk_len(sample_rate: u32) -> Option<usize> {
        match sample_rate {
            8000 => Some(256),
            16000 => Some(512),
            _ => None,
        }
    }

    /// Load `silero_vad.onnx` for audio at `sample_rate` (8000 or 16000). Loads ONNX Runtime
    /// first if needed ([`init_onnxruntime`](crate::init_onnxruntime)).
    pub fn new(model_path: impl AsRef<Path>, sample_rate: u32) -> Result<Self, TurnError> {
        let chunk = Self::chunk_len(sample_rate).ok_or(TurnError::UnsupportedSampleRate(sample_rate))?;
        #[cfg(feature = "onnx")]
        {
            let inner = onnx::Silero::new(model_path.as_ref(), sample_rate, chunk)?;
            Ok(Self { sample_rate, chunk, inner })
        }
        #[cfg(not(feature = "onnx"))]
        {
            let _ = (model_path, chunk);
            Err(TurnError::OnnxDisabled("Silero VAD"))
        }
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Samples per [`speech_probability`](Self::speech_probability) call.
    pub fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// Speech probability (0..1) of the next chunk of the stream. `chunk` must hold exactly
    /// [`chunk_size`](Self::chunk_size) samples in −1..1.
    pub fn speech_probability(&mut self, chunk: &[f32]) -> Result<f32, TurnError> {
        if chunk.len() != self.chunk {
            return Err(TurnError::ChunkSize { sample_rate: self.sample_rate, expected: self.chunk, got: chunk.len() });
        }
        if !chunk.iter().all(|s| s.is_finite()) {
            return Err(TurnError::InvalidAudio("NaN or infinite sample"));
        }
        #[cfg(feature = "onnx")]
        {
            self.inner.run(chunk, self.sample_rate)
        }
        #[cfg(not(feature = "onnx"))]
        match self.never {}
    }

    /// Forget the stream: zero the recurrent state and the context.
    pub fn reset(&mut self) {
        #[cfg(feature = "onnx")]
        self.inner.reset();
        #[cfg(not(feature = "onnx"))]
        match self.never {}
    }
}

#[cfg(feature = "onnx")]
mod onnx {
    use std::path::Path;

    use ort::session::Session;
    use ort::value::TensorRef;

    use crate::TurnError;

    const MODEL: &str = "Silero VAD";
    const STATE_LEN: usize = 2 * 128;

    pub(super) struct Silero {
        session: Session,
        context: usize,
        /// `[context | chunk]`, the model's `input` of shape (1, context + chunk).
        input: Vec<f32>,
        /// The recurrent state, shape (2, 1, 128).
        state: Vec<f32>,
    }

    impl Silero {
        pub(super) fn new(path: &Path, sample_rate: u32, chunk: usize) -> Result<Self, TurnError> {
            crate::runtime::require_model(path)?;
            crate::init_onnxruntime()?;
            let session = crate::runtime::session(MODEL, path)?;
            for want in ["input", "state", "sr"] {
                if !session.inputs.iter().any(|i| i.name == want) {
                    return Err(TurnError::Model {
                        model: MODEL,
                        message: format!("no `{want}` input: not Silero v5+"),
                    });
                }
            }
            for want in ["output", "stateN"] {
                if !session.outputs.iter().any(|o| o.name == want) {
                    return Err(TurnError::Model {
                        model: MODEL,
                        message: format!("no `{want}` output: not Silero v5+"),
                    });
                }
            }
            let context = if sample_rate == 16000 { 64 } else { 32 };
            Ok(Self { session, context, input: vec![0.0; context + chunk], state: vec![0.0; STATE_LEN] })
        }

        pub(super) fn reset(&mut self) {
            self.input.fill(0.0);
            self.state.fill(0.0);
        }

        pub(super) fn run(&mut self, chunk: &[f32], sample_rate: u32) -> Result<f32, TurnError> {
            let err = |e: ort::Error| TurnError::Model { model: MODEL, message: e.to_string() };
            // The previous call left its last `context` samples at the end of `input`.
            let total = self.input.len();
            self.input.copy_within(total - self.context.., 0);
            self.input[self.context..].copy_from_slice(chunk);

            let sr = [i64::from(sample_rate)];
            let outputs = self
                .session
                .run(ort::inputs![
                    "input" => TensorRef::from_array_view(([1usize, total], self.input.as_slice())).map_err(err)?,
                    "state" => TensorRef::from_array_view(([2usize, 1, 128], self.state.as_slice())).map_err(err)?,
                    "sr" => TensorRef::from_array_view(((), &sr[..])).map_err(err)?,
                ])
                .map_err(err)?;

            let bad = |what: &str| TurnError::Model { model: MODEL, message: what.to_string() };
            let (_, prob) =
                outputs.get("output").ok_or_else(|| bad("no output"))?.try_extract_tensor::<f32>().map_err(err)?;
            let prob = *prob.first().ok_or_else(|| bad("empty output"))?;
            let (_, state) =
                outputs.get("stateN").ok_or_else(|| bad("no stateN"))?.try_extract_tensor::<f32>().map_err(err)?;
            if state.len() != STATE_LEN {
                return Err(bad("stateN is not (2, 1, 128)"));
            }
            if !(0.0..=1.0).contains(&prob) {
                return Err(bad("probability outside 0..1"));
            }
            self.state.copy_from_slice(state);
            Ok(prob)
        }
    }
}
