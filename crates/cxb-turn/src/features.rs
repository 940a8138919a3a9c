//! Whisper-style log-mel features, exactly as Smart Turn v3 was trained on them.
//!
//! This mirrors pipecat's `compute_whisper_log_mel_features` (pipecat-ai 1.14.0,
//! `pipecat/audio/turn/smart_turn/_whisper_features.py`), itself a copy of
//! `transformers.WhisperFeatureExtractor(chunk_length=8)` with `do_normalize=True`:
//!
//! 1. pad with zeros at the end / truncate to 8 s (128 000 samples at 16 kHz);
//! 2. zero-mean, unit-variance normalisation of the waveform (in `f32`, like the reference);
//! 3. centred STFT: reflect padding of `n_fft / 2`, periodic Hann window, `n_fft` 400, hop 160,
//!    power spectrum `|X|²` (in `f64`, like the reference);
//! 4. 80 Slaney-normalised triangular mel filters over 0–8 kHz (Slaney mel scale);
//! 5. `log10(max(mel, 1e-10))`, the last frame dropped (801 → 800 frames), values clamped to
//!    `max - 8`, then `(x + 4) / 4`.
//!
//! The output is `[80][800]` row-major (mel bin major), the `input_features` tensor of shape
//! `(1, 80, 800)` without its batch axis. Smart Turn itself picks *the last* 8 s and pads at the
//! *front* before calling this ([`last_window`]).

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use crate::TurnError;

/// Sample rate the features (and Smart Turn) expect.
pub const SAMPLE_RATE: u32 = 16_000;
/// STFT size.
pub const N_FFT: usize = 400;
/// STFT hop.
pub const HOP_LENGTH: usize = 160;
/// Mel bins.
pub const N_MELS: usize = 80;
/// Samples per analysis window: 8 s at 16 kHz.
pub const WINDOW_SAMPLES: usize = 8 * SAMPLE_RATE as usize;
/// Frames per window after the trailing frame is dropped.
pub const N_FRAMES: usize = WINDOW_SAMPLES / HOP_LENGTH;
/// Length of the feature matrix, `N_MELS * N_FRAMES`.
pub const FEATURES_LEN: usize = N_MELS * N_FRAMES;

const N_FREQ: usize = N_FFT / 2 + 1;
const MEL_FLOOR: f64 = 1e-10;
const NORM_VARIANCE_EPS: f32 = 1e-7;

/// One triangular mel filter, stored as its non-zero span only (most of the 201 weights are 0,
/// which makes the projection ~10x cheaper than the dense matrix product).
#[derive(Debug, Clone)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f64>,
}

/// Reusable extractor: the FFT plan, window, filterbank and every working buffer are allocated
/// once, so computing features for a turn allocates nothing.
pub struct WhisperFeatures {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    filters: Vec<MelFilter>,
    normalized: Vec<f32>,
    padded: Vec<f64>,
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
    log_mel: Vec<f64>,
}

impl std::fmt::Debug for WhisperFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperFeatures").field("n_fft", &N_FFT).field("n_mels", &N_MELS).finish()
    }
}

impl Default for WhisperFeatures {
    fn default() -> Self {
        Self::new()
    }
}

impl WhisperFeatures {
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let spectrum = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        Self {
            fft,
            window: periodic_hann(N_FFT),
            filters: mel_filterbank(),
            normalized: Vec::with_capacity(WINDOW_SAMPLES),
            padded: Vec::with_capacity(WINDOW_SAMPLES + N_FFT),
            frame: vec![0.0; N_FFT],
            spectrum,
            scratch,
            power: vec![0.0; N_FREQ],
            log_mel: vec![0.0; FEATURES_LEN],
        }
    }

    /// Features of `audio` (16 kHz mono, nominally −1..1) into `out`, which is resized to
    /// [`FEATURES_LEN`] and laid out `[mel][frame]`. Like the reference, shorter input is
    /// zero-padded *at the end* and longer input keeps its *first* 8 s.
    pub fn compute_into(&mut self, audio: &[f32], out: &mut Vec<f32>) -> Result<(), TurnError> {
        self.normalize(audio);
        self.reflect_pad();

        for frame_idx in 0..N_FRAMES {
            let start = frame_idx * HOP_LENGTH;
            let src = &self.padded[start..start + N_FFT];
            for ((dst, &s), &w) in self.frame.iter_mut().zip(src).zip(&self.window) {
                *dst = s * w;
            }
            self.fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch)
                .map_err(|e| TurnError::Internal(format!("STFT: {e}")))?;
            for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
                *p = c.norm_sqr();
            }
            for (mel_idx, filter) in self.filters.iter().enumerate() {
                let bins = &self.power[filter.first_bin..filter.first_bin + filter.weights.len()];
                let energy: f64 = bins.iter().zip(&filter.weights).map(|(p, w)| p * w).sum();
                self.log_mel[mel_idx * N_FRAMES + frame_idx] = energy.max(MEL_FLOOR).log10();
            }
        }

        let max = self.log_mel.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let floor = max - 8.0;
        out.clear();
        out.extend(self.log_mel.iter().map(|&v| ((v.max(floor) + 4.0) / 4.0) as f32));
        Ok(())
    }

    /// Convenience form of [`compute_into`](Self::compute_into).
    pub fn compute(&mut self, audio: &[f32]) -> Result<Vec<f32>, TurnError> {
        let mut out = Vec::with_capacity(FEATURES_LEN);
        self.compute_into(audio, &mut out)?;
        Ok(out)
    }

    /// Pad/truncate to the window, then zero-mean unit-variance. The reference normalises the
    /// float32 buffer in float32; the statistics are summed in f64 here (numpy sums pairwise in
    /// float32), a difference far below the model's sensitivity.
    fn normalize(&mut self, audio: &[f32]) {
        let take = audio.len().min(WINDOW_SAMPLES);
        self.normalized.clear();
        self.normalized.extend_from_slice(&audio[..take]);
        self.normalized.resize(WINDOW_SAMPLES, 0.0);

        let n = WINDOW_SAMPLES as f64;
        let mean = self.normalized.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = self.normalized.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
        let mean = mean as f32;
        let std = (var as f32 + NORM_VARIANCE_EPS).sqrt();
        for x in &mut self.normalized {
            *x = (*x - mean) / std;
        }
    }

    /// numpy `pad(mode="reflect")` by `N_FFT / 2` on each side (the edge sample is not repeated).
    fn reflect_pad(&mut self) {
        let pad = N_FFT / 2;
        let x = &self.normalized;
        let n = x.len();
        self.padded.clear();
        self.padded.extend((0..pad).map(|i| f64::from(x[pad - i])));
        self.padded.extend(x.iter().map(|&v| f64::from(v)));
        self.padded.extend((0..pad).map(|i| f64::from(x[n - 2 - i])));
    }
}

/// The audio Smart Turn scores: the *last* 8 s of `audio_16k`, front-padded with zeros when
/// shorter (pipecat's `truncate_audio_to_last_n_seconds`). `out` is resized to
/// [`WINDOW_SAMPLES`].
pub fn last_window(audio_16k: &[f32], out: &mut Vec<f32>) {
    out.clear();
    let tail = &audio_16k[audio_16k.len().saturating_sub(WINDOW_SAMPLES)..];
    out.resize(WINDOW_SAMPLES - tail.len(), 0.0);
    out.extend_from_slice(tail);
}

/// `np.hanning(n + 1)[:-1]` (= `torch.hann_window(n, periodic=True)`).
fn periodic_hann(n: usize) -> Vec<f64> {
    (0..n).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()).collect()
}

fn hz_to_mel_slaney(hz: f64) -> f64 {
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = 15.0;
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() * (27.0 / 6.4f64.ln())
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hz_slaney(mel: f64) -> f64 {
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = 15.0;
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * ((6.4f64.ln() / 27.0) * (mel - MIN_LOG_MEL)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// `np.linspace(start, stop, num)`: `start + i * step`, the last point exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// Slaney-normalised triangular filters, as the reference's `_build_mel_filterbank` with
/// `(201 bins, 80 filters, 0 Hz, 8000 Hz, 16 kHz)`.
fn mel_filterbank() -> Vec<MelFilter> {
    let nyquist = f64::from(SAMPLE_RATE) / 2.0;
    let mel_points = linspace(hz_to_mel_slaney(0.0), hz_to_mel_slaney(nyquist), N_MELS + 2);
    let filter_hz: Vec<f64> = mel_points.iter().map(|&m| mel_to_hz_slaney(m)).collect();
    let fft_hz = linspace(0.0, f64::from(SAMPLE_RATE / 2), N_FREQ);

    (0..N_MELS)
        .map(|m| {
            let (lower, center, upper) = (filter_hz[m], filter_hz[m + 1], filter_hz[m + 2]);
            let enorm = 2.0 / (upper - lower);
            let dense: Vec<f64> = fft_hz
                .iter()
                .map(|&f| {
                    let down = -(lower - f) / (center - lower);
                    let up = (upper - f) / (upper - center);
                    down.min(up).max(0.0) * enorm
                })
                .collect();
            let first = dense.iter().position(|&w| w > 0.0).unwrap_or(0);
            let last = dense.iter().rposition(|&w| w > 0.0).map_or(first, |l| l + 1);
            MelFilter { first_bin: first, weights: dense[first..last].to_vec() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filterbank_covers_the_spectrum_with_slaney_areas() {
        let filters = mel_filterbank();
        assert_eq!(filters.len(), N_MELS);
        // Every filter has some support and stays inside the 201 bins.
        for f in &filters {
            assert!(!f.weights.is_empty());
            assert!(f.first_bin + f.weights.len() <= N_FREQ);
            assert!(f.weights.iter().all(|&w| w >= 0.0));
        }
        // Filters move up in frequency.
        assert!(filters.windows(2).all(|w| w[0].first_bin <= w[1].first_bin));
        // Together the filters span 0 Hz up to just below Nyquist.
        assert!(filters[0].first_bin <= 1);
        let top = filters[N_MELS - 1].first_bin + filters[N_MELS - 1].weights.len();
        assert!(top >= N_FREQ - 2, "top bin {top}");
    }

    #[test]
    fn hann_is_periodic() {
        let w = periodic_hann(N_FFT);
        assert_eq!(w[0], 0.0);
        assert!((w[N_FFT / 2] - 1.0).abs() < 1e-12);
        assert!((w[1] - w[N_FFT - 1]).abs() < 1e-12);
    }

    #[test]
    fn slaney_scale_round_trips() {
        for hz in [0.0, 200.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz_slaney(hz_to_mel_slaney(hz)) - hz).abs() < 1e-9);
        }
    }
}
