//! Sarvam STT (`/speech-to-text/ws`) and TTS (`/text-to-speech/ws`) against loopback servers
//! speaking wire-protocols-2 §4 and §5a.

mod support;

use std::time::Duration;

use cxb_providers::stt::{self, SttEvent, SttParams};
use cxb_providers::tts::{self, TtsEvent, TtsParams};
use cxb_providers::ProviderError;
use serde_json::{json, Value};
use support::*;

fn stt_params(base_url: String) -> SttParams {
    SttParams {
        provider: "sarvam".into(),
        base_url,
        api_key: "sv-key".into(),
        model: "saarika:v2.5".into(),
        language: "hi-IN".into(),
        sample_rate: 8000,
        extra: serde_json::Map::new(),
        connect_timeout: Duration::from_secs(2),
    }
}

fn tts_params(base_url: String, extra: Value) -> TtsParams {
    TtsParams {
        provider: "sarvam".into(),
        base_url,
        api_key: "sv-key".into(),
        model: "bulbul:v2".into(),
        voice_id: "anushka".into(),
        language: Some("hi-IN".into()),
        sample_rate: 8000,
        extra: extra.as_object().cloned().unwrap_or_default(),
        connect_timeout: Duration::from_secs(2),
    }
}

fn config() -> Value {
    json!({"type":"config","data":{"target_language_code":"hi-IN","speaker":"anushka","model":"bulbul:v2",
        "speech_sample_rate":8000,"output_audio_codec":"linear16"}})
}

fn text(t: &str) -> Value {
    json!({"type":"text","data":{"text":t}})
}

fn audio(samples: &[i16]) -> Value {
    json!({"type":"audio","data":{"content_type":"audio/pcm","audio":b64(&le_bytes(samples)),"request_id":"r"}})
}

fn final_event() -> Value {
    json!({"type":"event","data":{"event_type":"final","message":"done","timestamp":"2026-08-20T10:15:02Z"}})
}

fn pcm(context_id: &str, samples: &[i16]) -> TtsEvent {
    TtsEvent::Audio { context_id: context_id.into(), pcm: samples.to_vec() }
}

// ---------------------------------------------------------------- STT

#[tokio::test]
async fn sarvam_stt_query_audio_and_transcripts() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = stt::connect(&stt_params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    assert_eq!(server.path(), "/speech-to-text/ws");
    assert_eq!(server.header("api-subscription-key"), "sv-key");
    let query: Vec<(String, String)> = server.query();
    let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        pairs,
        [
            ("language-code", "hi-IN"),
            ("model", "saarika:v2.5"),
            ("sample_rate", "8000"),
            ("vad_signals", "true"),
            ("flush_signal", "true")
        ]
    );
    let ws = &mut server.ws;
    handle.send_audio(&[1, -2]).unwrap();
    let frame = next_json(ws).await;
    assert_eq!(frame, json!({"audio":{"data":b64(&le_bytes(&[1, -2])),"sample_rate":8000,"encoding":"audio/wav"}}));

    send_json(ws, json!({"type":"events","data":{"event_type":"vad","signal_type":"START_SPEECH","occured_at":1.5}}))
        .await;
    assert_eq!(event(&mut events).await, SttEvent::SpeechStarted);
    send_json(ws, json!({"type":"events","data":{"signal_type":"END_SPEECH","occured_at":2.5}})).await;
    handle.finalize();
    assert_eq!(next_json(ws).await, json!({"type":"flush"}));
    send_json(
        ws,
        json!({"type":"data","data":{"request_id":"r","transcript":"मेरी पॉलिसी कब खत्म होगी","timestamps":null,
        "diarized_transcript":null,"language_code":"hi-IN","language_probability":null,
        "metrics":{"audio_duration":2.4,"processing_latency":0.31}}}),
    )
    .await;
    let SttEvent::Transcript(t) = event(&mut events).await else { panic!("expected a transcript") };
    assert_eq!(
        (t.text.as_str(), t.is_final, t.speech_final, t.from_finalize),
        ("मेरी पॉलिसी कब खत्म होगी", true, true, true)
    );
    assert_eq!(event(&mut events).await, SttEvent::UtteranceEnd);

    // Closing with nothing heard since the last transcript closes at once.
    handle.close();
    expect_closed(ws).await;
    assert_eq!(event(&mut events).await, SttEvent::Closed);
}

#[tokio::test]
async fn sarvam_stt_close_mid_utterance_flushes_and_waits_for_the_words() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = stt::connect(&stt_params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    let ws = &mut server.ws;
    send_json(ws, json!({"type":"events","data":{"signal_type":"START_SPEECH"}})).await;
    assert_eq!(event(&mut events).await, SttEvent::SpeechStarted);
    handle.close();
    assert_eq!(next_json(ws).await, json!({"type":"flush"}));
    send_json(ws, json!({"type":"data","data":{"transcript":"धन्यवाद"}})).await;
    assert!(matches!(event(&mut events).await, SttEvent::Transcript(t) if t.text == "धन्यवाद"));
    assert_eq!(event(&mut events).await, SttEvent::UtteranceEnd);
    assert_eq!(event(&mut events).await, SttEvent::Closed);
}

#[tokio::test]
async fn sarvam_stt_error_is_terminal() {
    let (base, mut accepted) = ws_server().await;
    let (_handle, mut events) = stt::connect(&stt_params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    send_json(&mut server.ws, json!({"type":"error","data":{"error":"Invalid audio","code":"invalid_audio"}})).await;
    match event(&mut events).await {
        SttEvent::Error(ProviderError::Remote { provider: "sarvam", detail }) => {
            assert_eq!(detail, "Invalid audio (invalid_audio)")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(within(events.recv()).await, None);
}

#[tokio::test]
async fn sarvam_stt_refuses_rates_it_cannot_take() {
    let (base, _accepted) = ws_server().await;
    let mut p = stt_params(base);
    p.sample_rate = 24000;
    assert!(matches!(stt::connect(&p).await.unwrap_err(), ProviderError::Connect { provider: "sarvam", .. }));
}

// ---------------------------------------------------------------- TTS

#[tokio::test]
async fn sarvam_tts_speak_flush_audio_done() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&tts_params(base, json!({"pace": 1.1}))).await.unwrap();
    // connect() opened and configured the first socket: it waits as the spare.
    let mut first = accept(&mut accepted).await;
    assert_eq!(first.path(), "/text-to-speech/ws");
    assert_eq!(first.query_value("model").as_deref(), Some("bulbul:v2"));
    assert_eq!(first.query_value("send_completion_event").as_deref(), Some("true"));
    assert_eq!(first.header("api-subscription-key"), "sv-key");
    let mut expected_config = config();
    expected_config["data"]["pace"] = json!(1.1);
    assert_eq!(next_json(&mut first.ws).await, expected_config);

    handle.speak("t1", "नमस्ते, ").unwrap();
    handle.speak("t1", "मैं प्रिया बोल रही हूँ। ").unwrap();
    handle.flush("t1").unwrap();
    let ws = &mut first.ws;
    assert_eq!(next_json(ws).await, text("नमस्ते, "));
    assert_eq!(next_json(ws).await, text("मैं प्रिया बोल रही हूँ। "));
    assert_eq!(next_json(ws).await, json!({"type":"flush"}));
    // The next context's socket was opened and configured while this one speaks.
    let mut spare = accept(&mut accepted).await;
    assert_eq!(next_json(&mut spare.ws).await, expected_config);

    // 3 bytes then 1: a sample split across chunks is joined.
    let mut split = le_bytes(&[5]);
    split.push(0x34);
    send_json(ws, json!({"type":"audio","data":{"content_type":"audio/pcm","audio":b64(&split)}})).await;
    send_json(ws, json!({"type":"audio","data":{"content_type":"audio/pcm","audio":b64(&[0x12])}})).await;
    send_json(ws, final_event()).await;
    assert_eq!(event(&mut events).await, pcm("t1", &[5]));
    assert_eq!(event(&mut events).await, pcm("t1", &[0x1234]));
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t1".into() });
    expect_closed(ws).await;

    // A context that never spoke is done at once.
    handle.flush("t0").unwrap();
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t0".into() });
}

/// Barge-in: the cancelled context's socket is closed and its late audio dropped; the next
/// context's text goes out on the spare, opened (and configured) before the cancel, so no
/// handshake is on its critical path; a new spare replaces it.
#[tokio::test]
async fn sarvam_tts_barge_in_uses_the_warm_spare() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&tts_params(base, json!({}))).await.unwrap();
    let mut first = accept(&mut accepted).await;
    next_json(&mut first.ws).await;
    handle.speak("t1", "A long answer that will be interrupted. ").unwrap();
    assert_eq!(next_json(&mut first.ws).await, text("A long answer that will be interrupted. "));
    let mut spare = accept(&mut accepted).await;
    assert_eq!(next_json(&mut spare.ws).await, config(), "the spare is configured before it is needed");
    send_json(&mut first.ws, audio(&[1])).await;
    assert_eq!(event(&mut events).await, pcm("t1", &[1]));

    handle.cancel("t1").unwrap();
    // Audio already on its way for t1 must not reach the caller.
    send_json(&mut first.ws, audio(&[2])).await;
    expect_closed(&mut first.ws).await;
    handle.speak("t1", "late").unwrap(); // dropped: cancelled

    handle.speak("t2", "Sure. ").unwrap();
    handle.flush("t2").unwrap();
    assert_eq!(next_json(&mut spare.ws).await, text("Sure. "));
    assert_eq!(next_json(&mut spare.ws).await, json!({"type":"flush"}));
    send_json(&mut spare.ws, audio(&[9])).await;
    assert_eq!(event(&mut events).await, pcm("t2", &[9]));
    // Using the spare started the next one.
    let mut next_spare = accept(&mut accepted).await;
    assert_eq!(next_json(&mut next_spare.ws).await, config());
    send_json(&mut spare.ws, final_event()).await;
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t2".into() });
}

/// A `final` before our flush ends one of Sarvam's automatic flushes, not the context.
#[tokio::test]
async fn sarvam_tts_final_before_flush_keeps_the_context() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&tts_params(base, json!({}))).await.unwrap();
    let mut first = accept(&mut accepted).await;
    let ws = &mut first.ws;
    next_json(ws).await;
    handle.speak("t1", "First sentence, long enough to be synthesized on its own. ").unwrap();
    next_json(ws).await;
    send_json(ws, audio(&[1])).await;
    send_json(ws, final_event()).await;
    send_json(ws, audio(&[2])).await;
    assert_eq!(event(&mut events).await, pcm("t1", &[1]));
    assert_eq!(event(&mut events).await, pcm("t1", &[2]));
    handle.flush("t1").unwrap();
    assert_eq!(next_json(ws).await, json!({"type":"flush"}));
    send_json(ws, final_event()).await;
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t1".into() });
}

#[tokio::test]
async fn sarvam_tts_error_fails_the_context_only() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&tts_params(base, json!({}))).await.unwrap();
    let mut first = accept(&mut accepted).await;
    next_json(&mut first.ws).await;
    handle.speak("t1", "Hi").unwrap();
    next_json(&mut first.ws).await;
    let error = json!({"type":"error","data":{"message":"Text too long","code":400,"details":{},"request_id":"r"}});
    send_json(&mut first.ws, error).await;
    match event(&mut events).await {
        TtsEvent::Error { context_id: Some(ctx), error: ProviderError::Remote { provider: "sarvam", detail } } => {
            assert_eq!((ctx.as_str(), detail.as_str()), ("t1", "Text too long (400)"))
        }
        other => panic!("unexpected {other:?}"),
    }
    // The session goes on: the next context uses the spare.
    let mut spare = accept(&mut accepted).await;
    next_json(&mut spare.ws).await;
    handle.speak("t2", "Hello").unwrap();
    assert_eq!(next_json(&mut spare.ws).await, text("Hello"));
}

/// A spare that died while waiting is replaced; a context never gets a dead socket.
#[tokio::test]
async fn sarvam_tts_dead_spare_is_replaced() {
    let (base, mut accepted) = ws_server().await;
    let (handle, _events) = tts::connect(&tts_params(base, json!({}))).await.unwrap();
    let mut first = accept(&mut accepted).await;
    next_json(&mut first.ws).await;
    close_with(&mut first.ws, 1000, "idle").await;
    let mut replacement = accept(&mut accepted).await;
    assert_eq!(next_json(&mut replacement.ws).await, config());
    handle.speak("t1", "Hello").unwrap();
    assert_eq!(next_json(&mut replacement.ws).await, text("Hello"));
}

/// Without the warm spare, contexts after the first connect on demand.
#[tokio::test]
async fn sarvam_tts_spare_can_be_turned_off() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&tts_params(base, json!({"warm_spare": false}))).await.unwrap();
    let mut first = accept(&mut accepted).await;
    next_json(&mut first.ws).await;
    handle.speak("t1", "Hi").unwrap();
    handle.flush("t1").unwrap();
    next_json(&mut first.ws).await;
    next_json(&mut first.ws).await;
    assert!(tokio::time::timeout(Duration::from_millis(300), accepted.recv()).await.is_err(), "no spare opened");
    send_json(&mut first.ws, final_event()).await;
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t1".into() });
    handle.speak("t2", "Again").unwrap();
    let mut second = accept(&mut accepted).await;
    assert_eq!(next_json(&mut second.ws).await, config());
    assert_eq!(next_json(&mut second.ws).await, text("Again"));
}

#[tokio::test]
async fn sarvam_tts_bad_key_fails_connect() {
    let base = ws_server_rejecting(403, r#"{"error":{"message":"Invalid API subscription key."}}"#).await;
    match tts::connect(&tts_params(base, json!({}))).await.unwrap_err() {
        ProviderError::Status { provider: "sarvam", status: 403, body } => assert!(body.contains("Invalid")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn sarvam_tts_audio_is_pcm_at_the_transport_rate() {
    // 16 kHz: the config asks for exactly the rate the call runs at.
    let (base, mut accepted) = ws_server().await;
    let mut p = tts_params(base, json!({}));
    p.sample_rate = 16000;
    let (_handle, _events) = tts::connect(&p).await.unwrap();
    let mut first = accept(&mut accepted).await;
    let config = next_json(&mut first.ws).await;
    let data = &config["data"];
    assert_eq!(
        (data["speech_sample_rate"].as_u64(), data["output_audio_codec"].as_str()),
        (Some(16000), Some("linear16"))
    );
}
