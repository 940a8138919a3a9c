//! Deepgram Aura-2 TTS (`/v1/speak`) against a loopback server speaking wire-protocols §5 and
//! wire-protocols-2 §6.

mod support;

use std::time::Duration;

use cxb_providers::tts::{self, TtsEvent, TtsParams};
use cxb_providers::ProviderError;
use futures_util::SinkExt;
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn params(base_url: String) -> TtsParams {
    TtsParams {
        provider: "deepgram".into(),
        base_url,
        api_key: "dg-key".into(),
        model: "aura-2-thalia-en".into(),
        voice_id: String::new(),
        language: None,
        sample_rate: 8000,
        extra: serde_json::Map::new(),
        connect_timeout: Duration::from_secs(2),
    }
}

fn speak(text: &str) -> Value {
    json!({"type": "Speak", "text": text})
}

fn kind(t: &str) -> Value {
    json!({"type": t})
}

async fn binary(ws: &mut ServerWs, samples: &[i16]) {
    ws.send(Message::binary(le_bytes(samples))).await.unwrap();
}

fn pcm(context_id: &str, samples: &[i16]) -> TtsEvent {
    TtsEvent::Audio { context_id: context_id.into(), pcm: samples.to_vec() }
}

#[tokio::test]
async fn aura_speak_flush_audio_flushed() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    assert_eq!(server.path(), "/v1/speak");
    let query = server.query();
    assert_eq!(
        query,
        [("model", "aura-2-thalia-en"), ("encoding", "linear16"), ("sample_rate", "8000")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(server.header("authorization"), "Token dg-key");
    let ws = &mut server.ws;
    send_json(ws, json!({"type":"Metadata","request_id":"r","model_name":"aura-2-thalia-en","model_version":"v","model_uuid":"u"})).await;

    handle.speak("t1", "Your policy renews ").unwrap();
    handle.speak("t1", "on September 30th. ").unwrap();
    handle.flush("t1").unwrap();
    assert_eq!(next_json(ws).await, speak("Your policy renews "));
    assert_eq!(next_json(ws).await, speak("on September 30th. "));
    assert_eq!(next_json(ws).await, kind("Flush"));
    // Binary frames split a sample across frames; the client joins it.
    let mut bytes = le_bytes(&[3]);
    bytes.push(0x34);
    ws.send(Message::binary(bytes)).await.unwrap();
    ws.send(Message::binary(vec![0x12])).await.unwrap();
    send_json(ws, json!({"type":"Flushed","sequence_id":0})).await;
    assert_eq!(event(&mut events).await, pcm("t1", &[3]));
    assert_eq!(event(&mut events).await, pcm("t1", &[0x1234]));
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t1".into() });

    handle.flush("never-spoke").unwrap();
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "never-spoke".into() });
    handle.close();
    assert_eq!(next_json(ws).await, kind("Close"));
}

/// One stream, contexts in order: a later context's text waits for the earlier one's Flush,
/// and audio belongs to the oldest context not yet Flushed.
#[tokio::test]
async fn aura_contexts_go_out_in_order() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    let ws = &mut server.ws;
    handle.speak("t1", "One. ").unwrap();
    handle.speak("t2", "Two. ").unwrap();
    assert_eq!(next_json(ws).await, speak("One. "));
    handle.flush("t2").unwrap();
    handle.flush("t1").unwrap();
    assert_eq!(next_json(ws).await, kind("Flush"));
    assert_eq!(next_json(ws).await, speak("Two. "));
    assert_eq!(next_json(ws).await, kind("Flush"));
    binary(ws, &[1]).await;
    send_json(ws, json!({"type":"Flushed","sequence_id":0})).await;
    binary(ws, &[2]).await;
    send_json(ws, json!({"type":"Flushed","sequence_id":1})).await;
    assert_eq!(event(&mut events).await, pcm("t1", &[1]));
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t1".into() });
    assert_eq!(event(&mut events).await, pcm("t2", &[2]));
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t2".into() });
}

/// Barge-in: `Clear`, then every frame until `Cleared` is dropped; text for the next context
/// waits for `Cleared`, and a context queued behind the cleared one is sent again.
#[tokio::test]
async fn aura_clear_discards_audio_until_cleared() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    let ws = &mut server.ws;
    handle.speak("t1", "A long answer. ").unwrap();
    handle.flush("t1").unwrap();
    handle.speak("t2", "Queued behind. ").unwrap();
    assert_eq!(next_json(ws).await, speak("A long answer. "));
    assert_eq!(next_json(ws).await, kind("Flush"));
    assert_eq!(next_json(ws).await, speak("Queued behind. "));
    binary(ws, &[1]).await;
    assert_eq!(event(&mut events).await, pcm("t1", &[1]));

    handle.cancel("t1").unwrap();
    assert_eq!(next_json(ws).await, kind("Clear"));
    handle.speak("t3", "After the clear. ").unwrap();
    // Still in flight when the server processed Clear: dropped.
    binary(ws, &[2, 2]).await;
    send_json(ws, json!({"type":"Flushed","sequence_id":0})).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), futures_util::StreamExt::next(ws)).await.is_err(),
        "nothing is sent before Cleared"
    );
    send_json(ws, json!({"type":"Cleared","sequence_id":1})).await;
    // The buffer was emptied: t2 goes again, then t3 behind it once t2 is flushed.
    assert_eq!(next_json(ws).await, speak("Queued behind. "));
    handle.flush("t2").unwrap();
    assert_eq!(next_json(ws).await, kind("Flush"));
    assert_eq!(next_json(ws).await, speak("After the clear. "));
    binary(ws, &[5]).await;
    assert_eq!(event(&mut events).await, pcm("t2", &[5]), "no t1 audio after the cancel");
}

/// Cancelling a context behind the one playing does not `Clear` (that would cut the one
/// playing): its audio and `Flushed` are dropped as they come.
#[tokio::test]
async fn aura_cancel_behind_the_playing_context_drops_its_audio() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    let ws = &mut server.ws;
    handle.speak("t1", "Playing. ").unwrap();
    handle.flush("t1").unwrap();
    handle.speak("t2", "Unwanted. ").unwrap();
    for _ in 0..3 {
        next_json(ws).await;
    }
    handle.cancel("t2").unwrap();
    // t2 is flushed to end it (no Clear).
    assert_eq!(next_json(ws).await, kind("Flush"));
    binary(ws, &[1]).await;
    send_json(ws, json!({"type":"Flushed","sequence_id":0})).await;
    binary(ws, &[2]).await;
    send_json(ws, json!({"type":"Flushed","sequence_id":1})).await;
    handle.speak("t3", "Next. ").unwrap();
    assert_eq!(next_json(ws).await, speak("Next. "));
    handle.flush("t3").unwrap();
    next_json(ws).await;
    binary(ws, &[3]).await;
    assert_eq!(event(&mut events).await, pcm("t1", &[1]));
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "t1".into() });
    assert_eq!(event(&mut events).await, pcm("t3", &[3]));
}

/// The socket dropping mid-context fails the context that already played audio; the next
/// context goes out on a new socket.
#[tokio::test]
async fn aura_socket_lost_mid_context() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    handle.speak("t1", "Hi. ").unwrap();
    handle.flush("t1").unwrap();
    next_json(&mut server.ws).await;
    next_json(&mut server.ws).await;
    binary(&mut server.ws, &[1]).await;
    assert_eq!(event(&mut events).await, pcm("t1", &[1]));
    close_with(&mut server.ws, 1011, "internal error").await;
    match event(&mut events).await {
        TtsEvent::Error { context_id: Some(ctx), error: ProviderError::Remote { detail, .. } } => {
            assert_eq!((ctx.as_str(), detail.as_str()), ("t1", "1011 internal error"))
        }
        other => panic!("unexpected {other:?}"),
    }
    handle.speak("t2", "Again. ").unwrap();
    let mut second = accept(&mut accepted).await;
    assert_eq!(next_json(&mut second.ws).await, speak("Again. "));
}

#[tokio::test]
async fn aura_bad_key_fails_connect() {
    let base = ws_server_rejecting(401, r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}"#).await;
    let err = tts::connect(&params(base)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Status { provider: "deepgram", status: 401, .. }), "{err:?}");
}
