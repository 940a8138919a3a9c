//! Smart Turn v3 (pipecat's `smart-turn-v3.2-cpu.onnx`) on ONNX Runtime.

use std::path::Path;

use crate::TurnError;

/// Smart Turn's answer for one utterance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnPrediction {
    /// `probability > 0.5` ([`COMPLETE_THRESHOLD`](crate::COMPLETE_THRESHOLD)).
    pub complete: bool,
    /// The model's probability (0..1) that the caller finished their utterance.
    pub probability: f32,
}

impl TurnPrediction {
    pub fn from_probability(probability: f32) -> Self {
        Self { complete: probability > crate::COMPLETE_THRESHOLD, probability }
    }
}

/// Smart Turn v3: is the caller's utterance complete, judged from how it sounds (intonation,
/// pace, filler words) rather than from silence alone?
///
/// [`predict`](Self::predict) mirrors pipecat's `LocalSmartTurnAnalyzerV3._predict_endpoint`:
/// the last 8 s of 16 kHz audio (zeros in front when shorter), Whisper log-mel features
/// ([`features`](crate::features)), one run of the ONNX model on `input_features` (1, 80, 800),
/// whose single output is the probability of "complete".
pub struct SmartTurn {
    #[cfg(feature = "onnx")]
    inner: onnx::Model,
    #[cfg(not(feature = "onnx"))]
    never: std::convert::Infallible,
}

impl std::fmt::Debug for SmartTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartTurn").finish_non_exhaustive()
    }
}

impl SmartTurn {
    /// Load `smart-turn-v3.2-cpu.onnx`. Loads ONNX Runtime first if needed
    /// ([`init_onnxruntime`](crate::init_onnxruntime)).
    pub fn new(model_path: impl AsRef<Path>) -> Result<Self, TurnError> {
        #[cfg(feature = "onnx")]
        {
            Ok(Self { inner: onnx::Model::new(model_path.as_ref())? })
        }
        #[cfg(not(feature = "onnx"))]
        {
            let _ = model_path;
            Err(TurnError::OnnxDisabled("Smart Turn"))
        }
    }

    /// Score the caller's utterance: `audio_16k` is 16 kHz mono in −1..1, from shortly before
    /// the speech started up to now (see [`TurnAudio`](crate::TurnAudio)); only its last 8 s
    /// count.
    pub fn predict(&mut self, audio_16k: &[f32]) -> Result<TurnPrediction, TurnError> {
        if audio_16k.is_empty() {
            return Err(TurnError::InvalidAudio("no audio to score"));
        }
        let tail = &audio_16k[audio_16k.len().saturating_sub(crate::features::WINDOW_SAMPLES)..];
        if !tail.iter().all(|s| s.is_finite()) {
            return Err(TurnError::InvalidAudio("NaN or infinite sample"));
        }
        #[cfg(feature = "onnx")]
        {
            self.inner.predict(tail).map(TurnPrediction::from_probability)
        }
        #[cfg(not(feature = "onnx"))]
        match self.never {}
    }
}

#[cfg(feature = "onnx")]
mod onnx {
    use std::path::Path;

    use ort::session::Session;
    use ort::value::TensorRef;

    use crate::features::{last_window, WhisperFeatures, FEATURES_LEN, N_FRAMES, N_MELS, WINDOW_SAMPLES};
    use crate::TurnError;

    const MODEL: &str = "Smart Turn";
    const INPUT: &str = "input_features";

    pub(super) struct Model {
        session: Session,
        output: String,
        extractor: WhisperFeatures,
        window: Vec<f32>,
        features: Vec<f32>,
    }

    impl Model {
        pub(super) fn new(path: &Path) -> Result<Self, TurnError> {
            crate::runtime::require_model(path)?;
            crate::init_onnxruntime()?;
            let session = crate::runtime::session(MODEL, path)?;
            if !session.inputs.iter().any(|i| i.name == INPUT) {
                return Err(TurnError::Model {
                    model: MODEL,
                    message: format!("no `{INPUT}` input: not Smart Turn v3"),
                });
            }
            // pipecat reads `outputs[0]` (named `logits`, though it already is a sigmoid).
            let output = session
                .outputs
                .first()
                .map(|o| o.name.clone())
                .ok_or_else(|| TurnError::Model { model: MODEL, message: "model has no output".into() })?;
            Ok(Self {
                session,
                output,
                extractor: WhisperFeatures::new(),
                window: Vec::with_capacity(WINDOW_SAMPLES),
                features: Vec::with_capacity(FEATURES_LEN),
            })
        }

        pub(super) fn predict(&mut self, audio: &[f32]) -> Result<f32, TurnError> {
            let err = |e: ort::Error| TurnError::Model { model: MODEL, message: e.to_string() };
            last_window(audio, &mut self.window);
            self.extractor.compute_into(&self.window, &mut self.features)?;
            let input =
                TensorRef::from_array_view(([1usize, N_MELS, N_FRAMES], self.features.as_slice())).map_err(err)?;
            let outputs = self.session.run(ort::inputs![INPUT => input]).map_err(err)?;
            let bad = |what: &str| TurnError::Model { model: MODEL, message: what.to_string() };
            let (_, values) = outputs
                .get(&self.output)
                .ok_or_else(|| bad("output missing"))?
                .try_extract_tensor::<f32>()
                .map_err(err)?;
            let probability = *values.first().ok_or_else(|| bad("empty output"))?;
            if !(0.0..=1.0).contains(&probability) {
                return Err(bad("probability outside 0..1"));
            }
            Ok(probability)
        }
    }
}
