//! Soniox real-time STT against a loopback server speaking wire-protocols-2 §1.

mod support;

use std::time::Duration;

use cxb_providers::stt::{self, SttEvent, SttParams};
use cxb_providers::ProviderError;
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn params(base_url: String, extra: Value) -> SttParams {
    SttParams {
        provider: "soniox".into(),
        base_url,
        api_key: "sx-key".into(),
        model: "stt-rt-v4".into(),
        language: "hi".into(),
        sample_rate: 8000,
        extra: extra.as_object().cloned().unwrap_or_default(),
        connect_timeout: Duration::from_secs(2),
    }
}

fn token(text: &str, is_final: bool) -> Value {
    json!({"text": text, "start_ms": 100, "end_ms": 300, "confidence": 0.9, "is_final": is_final})
}

fn result(tokens: Vec<Value>) -> Value {
    json!({"tokens": tokens, "final_audio_proc_ms": 300, "total_audio_proc_ms": 500})
}

/// (text, is_final, speech_final, from_finalize) of the next transcript, skipping SpeechStarted.
async fn transcript(events: &mut tokio::sync::mpsc::Receiver<SttEvent>) -> (String, bool, bool, bool) {
    loop {
        match event(events).await {
            SttEvent::Transcript(t) => return (t.text, t.is_final, t.speech_final, t.from_finalize),
            SttEvent::SpeechStarted => continue,
            other => panic!("expected a transcript, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn soniox_config_tokens_and_endpoint() {
    let (base, mut accepted) = ws_server().await;
    let extra = json!({"language_hints": ["hi-IN", "en"], "context": {"terms": ["IDV"]}, "should_interrupt": true});
    let (handle, mut events) = stt::connect(&params(base, extra)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    assert_eq!(server.path(), "/transcribe-websocket");
    assert_eq!(server.query(), vec![], "Soniox takes no query parameters");
    assert_eq!(server.header("authorization"), "Bearer sx-key");
    let ws = &mut server.ws;
    assert_eq!(
        next_json(ws).await,
        json!({"model":"stt-rt-v4","audio_format":"pcm_s16le","sample_rate":8000,"num_channels":1,
            "enable_endpoint_detection":true,"language_hints":["hi","en"],"context":{"terms":["IDV"]}})
    );

    handle.send_audio(&[1, -1, 2]).unwrap();
    assert_eq!(next_frame(ws).await, Message::binary(le_bytes(&[1, -1, 2])));

    send_json(ws, result(vec![token("मेरा", true), token(" पॉलिसी", false)])).await;
    assert_eq!(event(&mut events).await, SttEvent::SpeechStarted);
    assert_eq!(transcript(&mut events).await, ("मेरा पॉलिसी".into(), false, false, false));
    // Non-final tokens are replaced by the next message's tail; finals stay.
    send_json(ws, result(vec![token(" पॉलिसी", true), token(" नं", false)])).await;
    assert_eq!(transcript(&mut events).await, ("मेरा पॉलिसी नं".into(), false, false, false));
    send_json(ws, result(vec![token(" नंबर", true), json!({"text":"<end>","is_final":true}), token(" और", false)]))
        .await;
    assert_eq!(transcript(&mut events).await, ("मेरा पॉलिसी नंबर".into(), true, true, false));
    assert_eq!(event(&mut events).await, SttEvent::UtteranceEnd);
    // The token after the marker opens the next utterance.
    assert_eq!(event(&mut events).await, SttEvent::SpeechStarted);
    assert_eq!(transcript(&mut events).await, ("और".into(), false, false, false));
}

/// Default (contract §4.2): Soniox ends turns; `finalize()` sends nothing.
#[tokio::test]
async fn soniox_finalize_is_off_by_default() {
    let (base, mut accepted) = ws_server().await;
    let (handle, _events) = stt::connect(&params(base, json!({}))).await.unwrap();
    let mut server = accept(&mut accepted).await;
    let config = next_json(&mut server.ws).await;
    assert_eq!(config["enable_endpoint_detection"], true);
    handle.finalize();
    handle.send_audio(&[7]).unwrap();
    // The next thing on the wire is the audio: no finalize was sent.
    assert_eq!(next_frame(&mut server.ws).await, Message::binary(le_bytes(&[7])));
}

#[tokio::test]
async fn soniox_vad_forced_endpoint_sends_finalize() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = stt::connect(&params(base, json!({"vad_force_turn_endpoint": true}))).await.unwrap();
    let mut server = accept(&mut accepted).await;
    let ws = &mut server.ws;
    let config = next_json(ws).await;
    assert_eq!(config["enable_endpoint_detection"], false);
    assert!(config.get("vad_force_turn_endpoint").is_none(), "engine switches are not sent: {config}");
    send_json(ws, result(vec![token("yes", true)])).await;
    assert_eq!(transcript(&mut events).await, ("yes".into(), false, false, false));
    handle.finalize();
    assert_eq!(next_json(ws).await, json!({"type":"finalize"}));
    send_json(ws, result(vec![token(" please", true), json!({"text":"<fin>","is_final":true})])).await;
    assert_eq!(transcript(&mut events).await, ("yes please".into(), true, false, true));
}

#[tokio::test]
async fn soniox_deprecated_auth_puts_the_key_in_the_config() {
    let (base, mut accepted) = ws_server().await;
    let (_handle, _events) = stt::connect(&params(base, json!({"api_key_in_config": true}))).await.unwrap();
    let mut server = accept(&mut accepted).await;
    assert_eq!(server.header("authorization"), "", "never both");
    assert_eq!(next_json(&mut server.ws).await["api_key"], "sx-key");
}

#[tokio::test]
async fn soniox_close_sends_the_empty_frame_and_waits_for_finished() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = stt::connect(&params(base, json!({}))).await.unwrap();
    let mut server = accept(&mut accepted).await;
    let ws = &mut server.ws;
    next_json(ws).await;
    send_json(ws, result(vec![token("bye", true)])).await;
    assert_eq!(transcript(&mut events).await, ("bye".into(), false, false, false));
    handle.close();
    assert_eq!(next_frame(ws).await, Message::text(""));
    send_json(ws, result(vec![token(" now", true)])).await;
    send_json(ws, json!({"tokens":[],"final_audio_proc_ms":900,"total_audio_proc_ms":900,"finished":true})).await;
    // The unfinished utterance is delivered as a final before the stream ends.
    assert_eq!(transcript(&mut events).await, ("bye now".into(), false, false, false));
    assert_eq!(transcript(&mut events).await, ("bye now".into(), true, false, true));
    assert_eq!(event(&mut events).await, SttEvent::Closed);
}

#[tokio::test]
async fn soniox_error_message_is_terminal() {
    let (base, mut accepted) = ws_server().await;
    let (_handle, mut events) = stt::connect(&params(base, json!({}))).await.unwrap();
    let mut server = accept(&mut accepted).await;
    next_json(&mut server.ws).await;
    send_json(&mut server.ws, json!({"error_code": 400, "error_message": "Invalid model specified."})).await;
    close_with(&mut server.ws, 1000, "").await;
    match event(&mut events).await {
        SttEvent::Error(ProviderError::Remote { provider: "soniox", detail }) => {
            assert_eq!(detail, "400: Invalid model specified.")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(within(events.recv()).await, None);
}

#[tokio::test]
async fn soniox_refused_handshake_fails_connect() {
    let base = ws_server_rejecting(401, r#"{"error_code":401,"error_message":"Invalid API key."}"#).await;
    let err = stt::connect(&params(base, json!({}))).await.unwrap_err();
    assert!(matches!(err, ProviderError::Status { provider: "soniox", status: 401, .. }), "{err:?}");
}
