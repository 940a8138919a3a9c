//! Cartesia `/tts/websocket` against a loopback double speaking wire-protocols §5.

mod support;

use std::time::Duration;

use cxb_providers::tts::{self, TtsEvent, TtsParams, WordTiming};
use cxb_providers::ProviderError;
use serde_json::{json, Map, Value};
use support::*;

fn params(base_url: String) -> TtsParams {
    TtsParams {
        provider: "cartesia".into(),
        base_url,
        api_key: "ca-key".into(),
        model: String::new(),
        voice_id: "voice-1".into(),
        language: Some("en".into()),
        sample_rate: 8000,
        extra: Map::new(),
        connect_timeout: Duration::from_secs(2),
    }
}

fn generation(context_id: &str, transcript: &str, more: bool) -> Value {
    json!({"context_id":context_id,"model_id":"sonic-3","transcript":transcript,"continue":more,
        "voice":{"mode":"id","id":"voice-1"},"language":"en",
        "output_format":{"container":"raw","encoding":"pcm_s16le","sample_rate":8000},
        "add_timestamps":true,"use_normalized_timestamps":false,"max_buffer_delay_ms":0})
}

fn audio_chunk(context_id: &str, bytes: &[u8]) -> Value {
    json!({"type":"chunk","context_id":context_id,"data":b64(bytes),"done":false,"status_code":206,
        "step_time":123,"flush_id":1})
}

fn done(context_id: &str) -> Value {
    json!({"type":"done","context_id":context_id,"done":true,"status_code":206})
}

fn audio(context_id: &str, pcm: &[i16]) -> TtsEvent {
    TtsEvent::Audio { context_id: context_id.into(), pcm: pcm.to_vec() }
}

#[tokio::test]
async fn cartesia_speak_flush_done() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    assert_eq!(server.path(), "/tts/websocket");
    assert_eq!(server.header("x-api-key"), "ca-key");
    assert_eq!(server.header("cartesia-version"), "2026-03-01");
    let ws = &mut server.ws;

    handle.speak("turn-1", "Hello, ").unwrap();
    assert_eq!(next_json(ws).await, generation("turn-1", "Hello, ", true));
    handle.speak("turn-1", "world.").unwrap();
    assert_eq!(next_json(ws).await, generation("turn-1", "world.", true));
    handle.flush("turn-1").unwrap();
    assert_eq!(next_json(ws).await, generation("turn-1", "", false));

    // 5 bytes: two samples and a dangling low byte completed by the next chunk.
    let mut bytes = le_bytes(&[1, -2]);
    bytes.push(0x34);
    send_json(ws, audio_chunk("turn-1", &bytes)).await;
    send_json(
        ws,
        json!({"type":"timestamps","context_id":"turn-1","done":false,"status_code":206,
        "word_timestamps":{"words":["Hello,","world."],"start":[0.0,0.4],"end":[0.4,0.9]}}),
    )
    .await;
    send_json(ws, audio_chunk("turn-1", &[0x12, 0xff])).await;
    send_json(ws, audio_chunk("turn-1", &[0x7f, 0x05, 0x00])).await;
    send_json(
        ws,
        json!({"type":"flush_done","context_id":"turn-1","flush_done":true,"flush_id":1,
        "done":false,"status_code":206}),
    )
    .await;
    send_json(ws, done("turn-1")).await;

    assert_eq!(event(&mut events).await, audio("turn-1", &[1, -2]));
    assert_eq!(
        event(&mut events).await,
        TtsEvent::Words {
            context_id: "turn-1".into(),
            words: vec![
                WordTiming { word: "Hello,".into(), start_secs: 0.0, end_secs: 0.4 },
                WordTiming { word: "world.".into(), start_secs: 0.4, end_secs: 0.9 },
            ],
        }
    );
    assert_eq!(event(&mut events).await, audio("turn-1", &[0x1234]));
    assert_eq!(event(&mut events).await, audio("turn-1", &[0x7fff, 5]));
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "turn-1".into() });

    // Flushing a context that never spoke completes at once, without a request.
    handle.flush("empty").unwrap();
    assert_eq!(event(&mut events).await, TtsEvent::Done { context_id: "empty".into() });
}

#[tokio::test]
async fn cartesia_cancel_drops_late_output() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    let ws = &mut server.ws;

    handle.speak("turn-1", "A long answer. ").unwrap();
    assert_eq!(next_json(ws).await, generation("turn-1", "A long answer. ", true));
    send_json(ws, audio_chunk("turn-1", &le_bytes(&[7]))).await;
    assert_eq!(event(&mut events).await, audio("turn-1", &[7]));

    handle.cancel("turn-1").unwrap();
    assert_eq!(next_json(ws).await, json!({"context_id":"turn-1","cancel":true}));
    // Output already in flight for the cancelled context must not reach the caller.
    send_json(ws, audio_chunk("turn-1", &le_bytes(&[8]))).await;
    send_json(ws, done("turn-1")).await;
    handle.speak("turn-1", "late text").unwrap(); // dropped: the context is cancelled

    handle.speak("turn-2", "Sure. ").unwrap();
    assert_eq!(next_json(ws).await, generation("turn-2", "Sure. ", true));
    send_json(ws, audio_chunk("turn-2", &le_bytes(&[9]))).await;
    assert_eq!(event(&mut events).await, audio("turn-2", &[9]));
}

#[tokio::test]
async fn cartesia_error_message_fails_the_context() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    let ws = &mut server.ws;

    handle.speak("turn-1", "Hi").unwrap();
    next_json(ws).await;
    send_json(
        ws,
        json!({"type":"error","context_id":"turn-1","done":true,"status_code":400,
        "title":"Invalid model","message":"model foo not found","error_code":"model_not_found",
        "doc_url":"https://docs","request_id":"r"}),
    )
    .await;
    match event(&mut events).await {
        TtsEvent::Error { context_id: Some(ctx), error: ProviderError::Remote { provider: "cartesia", detail } } => {
            assert_eq!(ctx, "turn-1");
            assert_eq!(detail, "Invalid model: model foo not found (model_not_found, 400)");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The connection survives a context error.
    handle.speak("turn-2", "Hi").unwrap();
    assert_eq!(next_json(ws).await["context_id"], "turn-2");
}

#[tokio::test]
async fn cartesia_reopens_a_socket_closed_while_idle() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut first = accept(&mut accepted).await;
    close_with(&mut first.ws, 1000, "idle timeout").await;
    expect_closed(&mut first.ws).await;

    handle.speak("turn-1", "Back again. ").unwrap();
    let mut second = accept(&mut accepted).await;
    assert_eq!(second.header("x-api-key"), "ca-key");
    assert_eq!(next_json(&mut second.ws).await, generation("turn-1", "Back again. ", true));
    send_json(&mut second.ws, audio_chunk("turn-1", &le_bytes(&[5]))).await;
    assert_eq!(event(&mut events).await, audio("turn-1", &[5]));
}

#[tokio::test]
async fn cartesia_socket_lost_mid_context_is_terminal() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = tts::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    handle.speak("turn-1", "Hi").unwrap();
    next_json(&mut server.ws).await;
    close_with(&mut server.ws, 1011, "internal error").await;
    match event(&mut events).await {
        TtsEvent::Error { context_id: None, error: ProviderError::Remote { detail, .. } } => {
            assert_eq!(detail, "1011 internal error")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(within(events.recv()).await, None);
}

#[tokio::test]
async fn cartesia_bad_key_fails_connect() {
    let base = ws_server_rejecting(401, r#"{"error":"Invalid API key"}"#).await;
    let err = tts::connect(&params(base)).await.unwrap_err();
    assert!(matches!(err, ProviderError::Status { provider: "cartesia", status: 401, .. }), "{err:?}");
}
