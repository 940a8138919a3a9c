//! Error paths of construction, with and without the `onnx` feature. A separate test binary:
//! ONNX Runtime is process-global, and nothing here may load it successfully first.

use std::path::Path;

use cxb_turn::{init_onnxruntime_from, SileroVad, SmartTurn, TurnError};

#[test]
fn unsupported_rate_is_rejected_before_anything_loads() {
    let err = SileroVad::new("/nonexistent/silero_vad.onnx", 44_100).unwrap_err();
    assert!(matches!(err, TurnError::UnsupportedSampleRate(44_100)), "{err}");
    assert_eq!(SileroVad::chunk_len(8000), Some(256));
    assert_eq!(SileroVad::chunk_len(16000), Some(512));
    assert_eq!(SileroVad::chunk_len(48000), None);
}

#[cfg(not(feature = "onnx"))]
#[test]
fn without_the_feature_constructors_say_so() {
    const { assert!(!cxb_turn::ONNX_ENABLED) };
    for err in [
        SileroVad::new(cxb_turn::silero_model_path(), 8000).unwrap_err(),
        SmartTurn::new(cxb_turn::smart_turn_model_path()).unwrap_err(),
        init_onnxruntime_from(Path::new("/usr/lib/libonnxruntime.so")).unwrap_err(),
        cxb_turn::init_onnxruntime().unwrap_err(),
    ] {
        assert!(matches!(err, TurnError::OnnxDisabled(_)), "{err}");
        assert!(err.to_string().contains("built without the `onnx` feature"), "{err}");
    }
}

#[cfg(feature = "onnx")]
#[test]
fn missing_library_is_an_error_not_a_panic() {
    let err = init_onnxruntime_from(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
    assert!(matches!(err, TurnError::RuntimeMissing { .. }), "{err}");
    assert!(err.to_string().contains("scripts/fetch-models.sh"), "{err}");
}

#[cfg(feature = "onnx")]
#[test]
fn a_file_that_is_not_onnx_runtime_is_an_error() {
    // Any existing non-library file: this test's own source.
    let not_a_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtime_errors.rs");
    let err = init_onnxruntime_from(&not_a_lib).unwrap_err();
    assert!(matches!(err, TurnError::RuntimeLoad { .. }), "{err}");
    // A real shared library without OrtGetApiBase.
    let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file());
    if let Some(libc) = libc {
        let err = init_onnxruntime_from(libc).unwrap_err();
        assert!(err.to_string().contains("not an ONNX Runtime library"), "{err}");
    }
}

#[cfg(feature = "onnx")]
#[test]
fn missing_model_is_reported_with_its_path() {
    let err = SileroVad::new("/nonexistent/silero_vad.onnx", 8000).unwrap_err();
    assert!(matches!(&err, TurnError::ModelMissing { path } if path == Path::new("/nonexistent/silero_vad.onnx")));
    let err = SmartTurn::new("/nonexistent/smart-turn.onnx").unwrap_err();
    assert!(matches!(err, TurnError::ModelMissing { .. }), "{err}");
}
