//! Audio DSP for the call path: 20 ms framing, voice activity detection with start/stop
//! hysteresis, the streaming stereo call recorder ([`recorder`], which writes its WAV file
//! synchronously), and (later) resampling. No async.

pub mod pacing;
pub mod recorder;
pub mod vad;

/// Every frame on the call path is 20 ms.
pub const FRAME_MS: u32 = 20;

/// Samples in one 20 ms mono frame at `sample_rate`.
pub const fn frame_len(sample_rate: u32) -> usize {
    (sample_rate / (1000 / FRAME_MS)) as usize
}

/// RMS level of a frame in dBFS (−inf for digital silence is clamped to −100).
pub fn dbfs(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return -100.0;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
    let rms = (sum / samples.len() as f64).sqrt();
    if rms < 1.0 {
        return -100.0;
    }
    (20.0 * (rms / 32768.0).log10()) as f32
}
