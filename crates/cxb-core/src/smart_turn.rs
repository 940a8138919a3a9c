//! The optional Smart Turn v3 model (`turn.mode = "smart_turn"`, cargo feature `smart-turn`).
//!
//! One model per process, loaded on first use from `CXB_MODELS_DIR` with ONNX Runtime from
//! `CXB_ONNXRUNTIME_LIB` (scripts/fetch-models.sh). A prediction costs about 50 ms of CPU, so it
//! runs on the blocking pool, one at a time. Without the feature, or when the model cannot be
//! loaded, calls fall back to VAD + STT turn detection with a warning.

/// Sample rate the model takes (caller audio is resampled with `cxb_transports::resample`).
pub const MODEL_RATE: u32 = 16_000;

/// Seconds of caller audio (16 kHz) the model looks at.
pub const WINDOW_SECS: usize = 8;

#[cfg(feature = "smart-turn")]
mod imp {
    use std::sync::{Mutex, OnceLock};

    use tracing::{error, info};

    static MODEL: OnceLock<Option<Mutex<cxb_turn::SmartTurn>>> = OnceLock::new();

    fn model() -> Option<&'static Mutex<cxb_turn::SmartTurn>> {
        MODEL
            .get_or_init(|| {
                let path = cxb_turn::smart_turn_model_path();
                match cxb_turn::init_onnxruntime().and_then(|_| cxb_turn::SmartTurn::new(&path)) {
                    Ok(m) => {
                        info!(model = %path.display(), "smart turn model loaded");
                        Some(Mutex::new(m))
                    }
                    Err(e) => {
                        error!(error = %e, model = %path.display(), "smart turn model unavailable");
                        None
                    }
                }
            })
            .as_ref()
    }

    pub fn available() -> bool {
        model().is_some()
    }

    pub async fn predict(audio_16k: Vec<f32>) -> Option<bool> {
        let m = model()?;
        tokio::task::spawn_blocking(move || {
            let mut guard = m.lock().ok()?;
            guard.predict(&audio_16k).ok().map(|p| p.complete)
        })
        .await
        .ok()
        .flatten()
    }
}

#[cfg(not(feature = "smart-turn"))]
mod imp {
    pub fn available() -> bool {
        false
    }

    pub async fn predict(_audio_16k: Vec<f32>) -> Option<bool> {
        None
    }
}

pub use imp::{available, predict};

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "smart-turn"))]
    #[test]
    fn without_the_feature_the_model_is_unavailable() {
        assert!(!available());
    }
}
