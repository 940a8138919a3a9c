//! ElevenLabs `stream-input` against a loopback double speaking wire-protocols §5.

mod support;

use std::time::Duration;

use cxb_providers::tts::{self, TtsEvent, TtsParams, WordTiming};
use cxb_providers::ProviderError;
use serde_json::{json, Value};
use support::*;

fn params(base_url: String) -> TtsParams {
    TtsParams {
        provider: "elevenlabs".into(),
        base_url,
        api_key: "xi-key".into(),
        model: String::new(),
        voice_id: "voice-1".into(),
        language: Some("en".into()),
        sample_rate: 16000,
        extra: json!({"stability": 0.5, "similarity_boost": 0.75}).as_object().cloned().unwrap(),
        connect_timeout: Duration::from_secs(2),
    }
}

fn init() -> Value {
    json!({"text":" ","voice_settings":{"stability":0.5,"similarity_boost":0.75},
        "generation_config":{"chunk_length_schedule":[120,160,250,290]}})
}

/// An audio message with `samples` samples and 20 ms-per-character alignment of `text`.
fn audio_message(samples: usize, text: &str) -> Value {
    let pcm: Vec<i16> = (0..samples).map(|i| i as i16).collect();
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let starts: Vec<u32> = (0..chars.len() as u32).map(|i| i * 20).collect();
    let durations = vec![20; chars.len()];
    let alignment = json!({"chars":chars,"charStartTimesMs":starts,"charDurationsMs":durations});
    json!({"audio":b64(&le_bytes(&pcm)),"isFinal":null,"normalizedAlignment":alignment,"alignment":alignment})
}

fn assert_words(event: TtsEvent, expected: &[(&str, f32, f32)]) {
    let TtsEvent::Words { words, .. } = event else { panic!("expected words, got {event:?}") };
    let got: Vec<(String, f32, f32)> =
        words.into_iter().map(|w: WordTiming| (w.word, w.start_secs, w.end_secs)).collect();
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for ((word, start, end), (eword, estart, eend)) in got.iter().zip(expected) {
        assert_eq!(word, eword);
        assert!((start - estart).abs() < 1e-4 && (end - eend).abs() < 1e-4, "{got:?}");
    }
}

#[tokio::test]
async fn elevenlabs_stream_input_roundtrip() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    // connect() itself opened the first socket.
    let mut first = accept(&mut accepted).await;
    assert_eq!(first.path(), "/v1/text-to-speech/voice-1/stream-input");
    assert_eq!(first.header("xi-api-key"), "xi-key");
    assert_eq!(first.query_value("model_id").as_deref(), Some("eleven_flash_v2_5"));
    assert_eq!(first.query_value("output_format").as_deref(), Some("pcm_16000"));
    assert_eq!(first.query_value("language_code").as_deref(), Some("en"));
    assert_eq!(first.query_value("inactivity_timeout").as_deref(), Some("180"));

    handle.speak("t1", "Hello there.").unwrap();
    let ws = &mut first.ws;
    assert_eq!(next_json(ws).await, init());
    assert_eq!(next_json(ws).await, json!({"text":"Hello there. ","try_trigger_generation":true}));
    handle.speak("t1", "How are you? ").unwrap();
    assert_eq!(next_json(ws).await, json!({"text":"How are you? ","try_trigger_generation":true}));
    handle.flush("t1").unwrap();
    assert_eq!(next_json(ws).await, json!({"text":""}));
    // The next turn's socket is opened ahead of time.
    let _spare = accept(&mut accepted).await;

    // 1600 samples = 100 ms: the second message's alignment counts from there.
    send_json(ws, audio_message(1600, "Hello th")).await;
    send_json(ws, audio_message(800, "ere.")).await;
    send_json(ws, json!({"isFinal":true})).await;

    let TtsEvent::Audio { context_id, pcm } = event(&mut events).await else { panic!("expected audio") };
    assert_eq!((context_id.as_str(), pcm.len(), pcm[1599]), ("t1", 1600, 1599));
    assert_words(event(&mut events).await, &[("Hello", 0.0, 0.1)]);
    let TtsEvent::Audio { pcm, .. } = event(&mut events).await else { panic!("expected audio") };
    assert_eq!(pcm.len(), 800);
    // "there." spans both messages; it is completed by the end of the context.
    assert_words(event(&mut events).await, &[("there.", 0.12, 0.18)]);
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t1".into() });
    expect_closed(ws).await;
}

#[tokio::test]
async fn elevenlabs_cancel_closes_the_context_socket() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut first = accept(&mut accepted).await;
    handle.speak("t1", "A long answer").unwrap();
    assert_eq!(next_json(&mut first.ws).await, init());
    assert_eq!(next_json(&mut first.ws).await["text"], "A long answer ");
    let mut spare = accept(&mut accepted).await;

    handle.cancel("t1").unwrap();
    expect_closed(&mut first.ws).await;
    handle.speak("t1", "late").unwrap(); // dropped: cancelled context

    // The next context uses the pre-opened socket.
    handle.speak("t2", "Sure.").unwrap();
    assert_eq!(next_json(&mut spare.ws).await, init());
    assert_eq!(next_json(&mut spare.ws).await["text"], "Sure. ");
    send_json(&mut spare.ws, json!({"audio": b64(&le_bytes(&[42])), "isFinal": null})).await;
    assert_eq!(event(&mut events).await, TtsEvent::Audio { context_id: "t2".into(), pcm: vec![42] });
}

#[tokio::test]
async fn elevenlabs_server_error_fails_the_context() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut first = accept(&mut accepted).await;
    handle.speak("t1", "Hi").unwrap();
    next_json(&mut first.ws).await;
    next_json(&mut first.ws).await;
    send_json(
        &mut first.ws,
        json!({"message":"Have not received a new text input within the timeout of 20 seconds.",
        "error":"input_timeout_exceeded","code":1008}),
    )
    .await;
    close_with(&mut first.ws, 1008, "input timeout").await;
    match event(&mut events).await {
        TtsEvent::Error { context_id: Some(ctx), error: ProviderError::Remote { provider: "elevenlabs", detail } } => {
            assert_eq!(ctx, "t1");
            assert!(detail.ends_with("(input_timeout_exceeded)"), "{detail}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Flushing a context that never spoke is trivially done.
    handle.flush("t0").unwrap();
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t0".into() });
}

#[tokio::test]
async fn elevenlabs_bad_key_fails_connect() {
    let base = ws_server_rejecting(401, r#"{"detail":{"status":"invalid_api_key"}}"#).await;
    match tts::connect(&params(base)).await.unwrap_err() {
        ProviderError::Status { provider: "elevenlabs", status: 401, body } => {
            assert!(body.contains("invalid_api_key"))
        }
        other => panic!("unexpected {other:?}"),
    }
}
