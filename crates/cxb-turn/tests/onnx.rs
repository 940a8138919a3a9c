//! Silero VAD and Smart Turn on the real models (`--features onnx`, after
//! `scripts/fetch-models.sh`). Outputs are checked for sanity and against what the Python stack
//! (onnxruntime + pipecat's preprocessing) answers for the same input:
//! tests/data/onnx_reference.txt, made by tests/data/gen_onnx_reference.py. The float Silero
//! model matches it to 1e-3 on any CPU; the int8 Smart Turn model within a tolerance that comes
//! from ONNX Runtime's per-ISA int8 kernels (`SMART_TURN_LOGIT_TOLERANCE`).
//! Every test skips, saying so on stderr, when the library or the models are not there.
#![cfg(feature = "onnx")]

use std::io::Write;
use std::path::Path;

use cxb_turn::{
    onnxruntime_lib_path, silero_model_path, smart_turn_model_path, SileroVad, SmartTurn, TurnAudio, TurnError,
};

const REFERENCE: &str = include_str!("data/onnx_reference.txt");

fn models_ready(test: &str) -> bool {
    let needed = [onnxruntime_lib_path(), silero_model_path(), smart_turn_model_path()];
    match needed.iter().find(|p| !p.is_file()) {
        None => true,
        Some(missing) => {
            // Straight to stderr: libtest captures print macros, and a skip must be visible.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {} is missing; run scripts/fetch-models.sh (or set CXB_MODELS_DIR / CXB_ONNXRUNTIME_LIB)",
                missing.display()
            );
            false
        }
    }
}

fn caller_wav(n: u32) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../assets/audio/caller-{n}.wav"));
    let mut reader = hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!((spec.sample_rate, spec.channels, spec.bits_per_sample), (8000, 1, 16));
    reader.samples::<i16>().map(|s| f32::from(s.unwrap()) / 32768.0).collect()
}

/// 8 kHz -> 16 kHz by linear interpolation, the last sample repeated: numpy's `interp` in the
/// reference generator. Good enough for these checks; a driver would use a proper resampler.
fn upsample2(a: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len() * 2);
    for (i, &s) in a.iter().enumerate() {
        out.push(s);
        let next = a.get(i + 1).copied().unwrap_or(s);
        out.push(((f64::from(s) + f64::from(next)) / 2.0) as f32);
    }
    out
}

fn reference(key: &str) -> Vec<f32> {
    let line = REFERENCE
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no `{key}` in onnx_reference.txt"));
    line[key.len()..].split_whitespace().map(|v| v.parse().expect("number")).collect()
}

fn silero_probs(vad: &mut SileroVad, audio: &[f32]) -> Vec<f32> {
    audio.chunks_exact(vad.chunk_size()).map(|c| vad.speech_probability(c).unwrap()).collect()
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

#[test]
fn models_are_send() {
    fn send<T: Send>() {}
    send::<SileroVad>();
    send::<SmartTurn>();
}

#[test]
fn silero_8k_hears_the_caller_and_not_silence() {
    if !models_ready("silero_8k_hears_the_caller_and_not_silence") {
        return;
    }
    let mut vad = SileroVad::new(silero_model_path(), 8000).unwrap();
    assert_eq!(vad.chunk_size(), 256);
    let speech = silero_probs(&mut vad, &caller_wav(1));
    let max = speech.iter().copied().fold(0.0, f32::max);
    assert!(max > 0.95 && mean(&speech) > 0.8, "speech: max {max}, mean {}", mean(&speech));

    vad.reset();
    let silence = silero_probs(&mut vad, &[0.0; 8000]);
    let max = silence.iter().copied().fold(0.0, f32::max);
    assert!(max < 0.1, "silence: max {max}");

    // Faint noise (~-50 dBFS) is not speech either.
    let mut seed = 0x2545_f491_u32;
    let noise: Vec<f32> = (0..8000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32 - 0.5) * 0.006
        })
        .collect();
    vad.reset();
    let max = silero_probs(&mut vad, &noise).into_iter().fold(0.0, f32::max);
    assert!(max < 0.2, "noise: max {max}");
}

#[test]
fn silero_matches_the_python_stack_chunk_by_chunk() {
    if !models_ready("silero_matches_the_python_stack_chunk_by_chunk") {
        return;
    }
    let c1 = caller_wav(1);
    let mut vad8 = SileroVad::new(silero_model_path(), 8000).unwrap();
    let got = silero_probs(&mut vad8, &c1);
    let want = reference("silero_8k_caller1");
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-3, "8 kHz chunk {i}: {g} vs python {w}");
    }

    let mut vad16 = SileroVad::new(silero_model_path(), 16000).unwrap();
    assert_eq!(vad16.chunk_size(), 512);
    let got = silero_probs(&mut vad16, &upsample2(&c1));
    let want = reference("silero_16k_caller1");
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-3, "16 kHz chunk {i}: {g} vs python {w}");
    }
    assert!(mean(&got) > 0.7, "16 kHz speech mean {}", mean(&got));
}

#[test]
fn silero_state_carries_across_chunks_and_reset_clears_it() {
    if !models_ready("silero_state_carries_across_chunks_and_reset_clears_it") {
        return;
    }
    let c1 = caller_wav(1);
    let mut vad = SileroVad::new(silero_model_path(), 8000).unwrap();
    let first = silero_probs(&mut vad, &c1);
    // Without a reset the stream goes on: the same audio again is scored with a warm state.
    let warm = silero_probs(&mut vad, &c1);
    assert_ne!(first, warm);
    vad.reset();
    assert_eq!(silero_probs(&mut vad, &c1), first, "reset = a fresh stream");

    // Context matters: the same chunk scores differently after speech than after silence.
    let chunk = &c1[256 * 20..256 * 21];
    vad.reset();
    silero_probs(&mut vad, &[0.0; 256 * 4]);
    let after_silence = vad.speech_probability(chunk).unwrap();
    vad.reset();
    silero_probs(&mut vad, &c1[..256 * 20]);
    let after_speech = vad.speech_probability(chunk).unwrap();
    assert_ne!(after_silence, after_speech);
}

#[test]
fn silero_rejects_bad_chunks() {
    if !models_ready("silero_rejects_bad_chunks") {
        return;
    }
    let mut vad = SileroVad::new(silero_model_path(), 16000).unwrap();
    let err = vad.speech_probability(&[0.0; 256]).unwrap_err();
    assert!(matches!(err, TurnError::ChunkSize { expected: 512, got: 256, .. }), "{err}");
    let mut chunk = [0.0; 512];
    chunk[7] = f32::NAN;
    assert!(matches!(vad.speech_probability(&chunk), Err(TurnError::InvalidAudio(_))));
    // Still usable afterwards.
    assert!(vad.speech_probability(&[0.0; 512]).unwrap() < 0.1);
}

/// How far Smart Turn's score may sit from the reference, in logits (log-odds).
///
/// The CPU build of Smart Turn v3 is int8-quantized (QDQ format: ONNX Runtime fuses its
/// QuantizeLinear/DequantizeLinear pairs into u8×s8 integer kernels), and ONNX Runtime picks
/// those kernels by instruction set. With VNNI (AVX-512 VNNI, AVX-VNNI) the products are summed
/// in 32 bits; the AVX2 kernel (`vpmaddubsw`) adds pairs of products into 16 bits with
/// saturation — the "saturation issue" of 8-bit inference on CPUs without VNNI (ONNX Runtime's
/// quantization guide; docs.openvino.ai `pot_saturation_issue`, which finds > 1 % accuracy
/// differences between such CPUs). So the same model scores slightly differently per CPU. The
/// reference (tests/data/onnx_reference.txt) was made on an AVX-512 VNNI machine. On 2-core AMD
/// EPYC machines with AVX2 only, the utterances followed by silence (what the worker scores: a
/// VAD stop always comes after `stop_secs` of silence) moved by up to 0.58 logits (`caller3
/// cut60` 0.9708 against 0.9486); the tolerance is 1 logit: about ±0.05 in probability at 0.95,
/// ±0.25 at 0.5 — where the decision is not a property of the model on any CPU, so it is not
/// asserted. Utterances cut at the last word with no silence after them sit where the model is
/// unsure, and there the kernels moved the score by up to 4.6 logits (`caller3 full_no_tail`
/// 0.7988 against 0.0381) on the same machines: those are checked for sanity only.
const SMART_TURN_LOGIT_TOLERANCE: f32 = 1.0;

fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

#[test]
fn smart_turn_scores_full_and_cut_utterances_like_pipecat() {
    if !models_ready("smart_turn_scores_full_and_cut_utterances_like_pipecat") {
        return;
    }
    let mut model = SmartTurn::new(smart_turn_model_path()).unwrap();
    let tail = vec![0.0f32; 4800]; // 300 ms of silence after the words, as at a VAD stop
    let mut report = String::new();
    for n in 1..=3 {
        let a16 = upsample2(&caller_wav(n));
        let cut = &a16[..a16.len() * 6 / 10];
        for (case, audio) in [
            ("full", [a16.as_slice(), &tail].concat()),
            ("cut60", [cut, &tail].concat()),
            ("full_no_tail", a16.clone()),
        ] {
            let p = model.predict(&audio).unwrap();
            assert!((0.0..=1.0).contains(&p.probability), "{case}: {p:?}");
            assert_eq!(p.complete, p.probability > 0.5);
            let want = reference(&format!("smart_turn caller{n}_{case}"))[0];
            report.push_str(&format!("caller{n} {case}: {:.4} (python {want:.4})\n", p.probability));
            if case == "full_no_tail" {
                continue; // ISA-sensitive (see SMART_TURN_LOGIT_TOLERANCE): sanity only
            }
            let gap = (logit(p.probability) - logit(want)).abs();
            assert!(
                gap < SMART_TURN_LOGIT_TOLERANCE,
                "caller{n} {case}: {} vs python {want} ({gap:.3} logits apart)",
                p.probability
            );
            // The decision must match wherever the reference is clear of the threshold by more
            // than the kernels can move it; closer than that it is not a property of the model.
            if logit(want).abs() > SMART_TURN_LOGIT_TOLERANCE {
                assert_eq!(p.complete, want > 0.5, "caller{n} {case}: {} vs python {want}", p.probability);
            }
        }
    }
    let _ = write!(std::io::stderr(), "Smart Turn probabilities:\n{report}");
}

#[test]
fn smart_turn_uses_only_the_last_8_seconds() {
    if !models_ready("smart_turn_uses_only_the_last_8_seconds") {
        return;
    }
    let mut model = SmartTurn::new(smart_turn_model_path()).unwrap();
    let utterance = [upsample2(&caller_wav(2)), vec![0.0; 4800]].concat();
    let short = model.predict(&utterance).unwrap();
    // 10 s of loud unrelated audio before the last 8 s changes nothing.
    let mut long = vec![0.25f32; 10 * 16_000];
    long.extend(std::iter::repeat_n(0.0, 8 * 16_000 - utterance.len()));
    long.extend_from_slice(&utterance);
    assert_eq!(model.predict(&long).unwrap(), short);

    assert!(matches!(model.predict(&[]), Err(TurnError::InvalidAudio(_))));
    assert!(matches!(model.predict(&[f32::INFINITY; 100]), Err(TurnError::InvalidAudio(_))));
}

#[test]
fn turn_audio_feeds_smart_turn() {
    if !models_ready("turn_audio_feeds_smart_turn") {
        return;
    }
    let mut model = SmartTurn::new(smart_turn_model_path()).unwrap();
    let a16 = upsample2(&caller_wav(1));
    let mut buf = TurnAudio::new(std::time::Duration::from_millis(500));
    buf.push(&[0.0; 16_000]); // silence before the turn: only 500 ms of it is kept
    buf.speech_started();
    for frame in a16.chunks(320).chain(std::iter::once(&[0.0f32; 4800][..])) {
        buf.push(frame);
    }
    let mut window = Vec::new();
    buf.copy_to(&mut window);
    assert_eq!(window.len(), 8000 + a16.len() + 4800);
    // The zeros in front make no difference: the model pads with zeros anyway.
    let via_buffer = model.predict(&window).unwrap();
    let direct = model.predict(&[a16.as_slice(), &[0.0; 4800]].concat()).unwrap();
    assert_eq!(via_buffer, direct);
}
