//! The Whisper log-mel front end against pipecat's own numpy implementation
//! (tests/data/mel_reference.txt, made by tests/data/gen_mel_reference.py), and its properties.

use cxb_turn::features::{last_window, WhisperFeatures, FEATURES_LEN, N_FRAMES, N_MELS, WINDOW_SAMPLES};

const REFERENCE: &str = include_str!("data/mel_reference.txt");

/// The generator's signal: 3 s of 0.3·sin(440 Hz) + 0.2·sin(3 kHz) at 16 kHz, computed in f64.
fn two_tone() -> Vec<f32> {
    (0..48_000)
        .map(|n| {
            let t = f64::from(n) / 16_000.0;
            (0.3 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 0.2 * (2.0 * std::f64::consts::PI * 3000.0 * t).sin()) as f32
        })
        .collect()
}

fn reference(key: &str) -> Vec<f32> {
    let line = REFERENCE
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no `{key}` in mel_reference.txt"));
    line[key.len()..].split_whitespace().map(|v| v.parse().expect("number")).collect()
}

fn frame(features: &[f32], frame: usize) -> Vec<f32> {
    (0..N_MELS).map(|m| features[m * N_FRAMES + frame]).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, numpy {w}");
    }
}

#[test]
fn matches_pipecat_numpy_reference() {
    let features = WhisperFeatures::new().compute(&two_tone()).unwrap();
    assert_eq!(features.len(), FEATURES_LEN);
    assert_close(
        "mel_means",
        &(0..N_MELS)
            .map(|m| {
                features[m * N_FRAMES..(m + 1) * N_FRAMES].iter().map(|&v| f64::from(v)).sum::<f64>() as f32
                    / N_FRAMES as f32
            })
            .collect::<Vec<_>>(),
        &reference("mel_means"),
        2e-5,
    );
    for f in [0, 1, 150, 299, 300, 301, 500, 799] {
        assert_close(&format!("frame {f}"), &frame(&features, f), &reference(&format!("frame {f}")), 1e-5);
    }
}

#[test]
fn values_follow_the_whisper_normalisation() {
    let features = WhisperFeatures::new().compute(&two_tone()).unwrap();
    assert!(features.iter().all(|v| v.is_finite()));
    let max = features.iter().copied().fold(f32::MIN, f32::max);
    let min = features.iter().copied().fold(f32::MAX, f32::min);
    // Clamped to max - 8 in log10 units, then scaled by 1/4: the range is at most 2.
    assert!(max - min <= 2.0 + 1e-5, "range {min}..{max}");
    assert!((max - min - 2.0).abs() < 1e-5, "the zero tail sits on the clamp floor");
    // The tones are in the mel bins around 440 Hz and 3 kHz, not in between (mid-signal frame).
    let mid = frame(&features, 150);
    let bin_of = |hz: f64| {
        // Slaney mel: linear below 1 kHz, log above; 82 points from 0 to mel(8 kHz).
        let mel = |f: f64| if f < 1000.0 { 3.0 * f / 200.0 } else { 15.0 + (f / 1000.0).ln() * 27.0 / 6.4f64.ln() };
        (mel(hz) / mel(8000.0) * 81.0).round() as usize - 1
    };
    let between = mid[bin_of(1500.0)];
    assert!(mid[bin_of(440.0)] > between + 1.0, "440 Hz bin {} vs {between}", mid[bin_of(440.0)]);
    assert!(mid[bin_of(3000.0)] > between + 1.0, "3 kHz bin {} vs {between}", mid[bin_of(3000.0)]);
}

#[test]
fn silence_and_extreme_inputs_stay_finite() {
    let mut ex = WhisperFeatures::new();
    for audio in [vec![], vec![0.0; 10], vec![1.0; WINDOW_SAMPLES], vec![-1.0; 3 * WINDOW_SAMPLES]] {
        let f = ex.compute(&audio).unwrap();
        assert_eq!(f.len(), FEATURES_LEN);
        assert!(f.iter().all(|v| v.is_finite()), "len {}", audio.len());
    }
    // Pure silence: every bin is the 1e-10 floor -> log10 = -10 -> (-10 + 4) / 4.
    let f = ex.compute(&[0.0; 16_000]).unwrap();
    assert!(f.iter().all(|&v| (v - -1.5).abs() < 1e-6), "{}", f[0]);
}

#[test]
fn extractor_is_reusable_and_deterministic() {
    let mut ex = WhisperFeatures::new();
    let a = ex.compute(&two_tone()).unwrap();
    let _ = ex.compute(&[0.5; 1000]).unwrap();
    let b = ex.compute(&two_tone()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn reference_pads_at_the_end_and_keeps_the_first_window() {
    let mut ex = WhisperFeatures::new();
    let tone = two_tone();
    let mut longer = tone.clone();
    longer.resize(WINDOW_SAMPLES, 0.0);
    longer.extend(std::iter::repeat_n(0.9, 16_000));
    assert_eq!(ex.compute(&tone).unwrap(), ex.compute(&longer).unwrap());
}

#[test]
fn last_window_keeps_the_end_and_pads_the_front() {
    let mut out = Vec::new();
    last_window(&[1.0, 2.0, 3.0], &mut out);
    assert_eq!(out.len(), WINDOW_SAMPLES);
    assert!(out[..WINDOW_SAMPLES - 3].iter().all(|&v| v == 0.0));
    assert_eq!(&out[WINDOW_SAMPLES - 3..], &[1.0, 2.0, 3.0]);

    let long: Vec<f32> = (0..WINDOW_SAMPLES + 5).map(|i| i as f32).collect();
    last_window(&long, &mut out);
    assert_eq!(out.len(), WINDOW_SAMPLES);
    assert_eq!(out[0], 5.0);
    assert_eq!(*out.last().unwrap(), (WINDOW_SAMPLES + 4) as f32);

    last_window(&[], &mut out);
    assert_eq!(out, vec![0.0; WINDOW_SAMPLES]);
}
