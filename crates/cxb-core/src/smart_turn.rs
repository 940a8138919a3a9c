//! The optional Smart Turn v3 model (`turn.mode = "smart_turn"`, cargo feature `smart-turn`).
//!
//! One model per process, loaded on first use from `CXB_MODELS_DIR` with ONNX Runtime from
//! `CXB_ONNXRUNTIME_LIB` (scripts/fetch-models.sh). A prediction costs about 50 ms of CPU, so it
//! runs on the blocking pool, one at a time. Without the feature, or when the model cannot be
//! loaded, calls fall back to VAD + STT turn detection with a warning.

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

/// Caller audio at the transport rate → 16 kHz for the model (linear interpolation for 8 kHz;
/// other rates are rare on the smart-turn path and are resampled the same way).
pub fn to_16k(pcm: &[i16], rate: u32, out: &mut Vec<i16>) {
    if rate == 16_000 {
        out.extend_from_slice(pcm);
        return;
    }
    if pcm.is_empty() || rate == 0 {
        return;
    }
    let n_out = pcm.len() * 16_000 / rate as usize;
    for i in 0..n_out {
        let pos = i as f64 * rate as f64 / 16_000.0;
        let j = pos as usize;
        let frac = pos - j as f64;
        let a = pcm[j.min(pcm.len() - 1)] as f64;
        let b = pcm[(j + 1).min(pcm.len() - 1)] as f64;
        out.push((a + (b - a) * frac) as i16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_khz_doubles_with_interpolated_midpoints() {
        let mut out = Vec::new();
        to_16k(&[0, 100, 200], 8000, &mut out);
        assert_eq!(out, vec![0, 50, 100, 150, 200, 200]);
        let mut same = Vec::new();
        to_16k(&[1, 2], 16_000, &mut same);
        assert_eq!(same, vec![1, 2]);
    }

    #[cfg(not(feature = "smart-turn"))]
    #[test]
    fn without_the_feature_the_model_is_unavailable() {
        assert!(!available());
    }
}
