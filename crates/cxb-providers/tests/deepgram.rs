//! Deepgram live STT against a loopback double speaking wire-protocols §3.

mod support;

use std::time::Duration;

use cxb_providers::stt::{self, SttEvent, SttParams, Transcript};
use cxb_providers::ProviderError;
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn params(base_url: String) -> SttParams {
    SttParams {
        provider: "deepgram".into(),
        base_url,
        api_key: "dg-key".into(),
        model: "nova-3".into(),
        language: "en".into(),
        sample_rate: 8000,
        extra: json!({"keyterm": ["Exotel", "CXB"], "diarize": false}).as_object().cloned().unwrap(),
        connect_timeout: Duration::from_secs(2),
    }
}

fn results(transcript: &str, is_final: bool, speech_final: bool, from_finalize: bool, start: f64) -> Value {
    json!({"type":"Results","channel_index":[0,1],"duration":1.02,"start":start,"is_final":is_final,
        "speech_final":speech_final,"from_finalize":from_finalize,
        "channel":{"alternatives":[{"transcript":transcript,"confidence":0.98,"languages":["en"],
            "words":[{"word":"hello","start":3.52,"end":3.8,"confidence":0.99,"punctuated_word":"Hello",
                      "speaker":0,"language":"en"}]}]},
        "metadata":{"request_id":"r","model_uuid":"u","model_info":{"name":"n","version":"v","arch":"a"}}})
}

fn transcript(text: &str, is_final: bool, speech_final: bool, from_finalize: bool, start: f64) -> SttEvent {
    SttEvent::Transcript(Transcript {
        text: text.into(),
        is_final,
        speech_final,
        from_finalize,
        confidence: 0.98,
        start,
        duration: 1.02,
    })
}

#[tokio::test]
async fn deepgram_request_transcripts_finalize_and_close() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = stt::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;

    assert_eq!(server.path(), "/v1/listen");
    assert_eq!(server.header("authorization"), "Token dg-key");
    let expected: Vec<(String, String)> = [
        ("model", "nova-3"),
        ("language", "en"),
        ("encoding", "linear16"),
        ("sample_rate", "8000"),
        ("channels", "1"),
        ("interim_results", "true"),
        ("endpointing", "300"),
        ("utterance_end_ms", "1000"),
        ("vad_events", "true"),
        ("smart_format", "true"),
        ("punctuate", "true"),
        ("diarize", "false"),
        ("keyterm", "Exotel"),
        ("keyterm", "CXB"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(server.query(), expected);

    // Audio goes out as LINEAR16 little-endian binary frames.
    handle.send_audio(&[1, -2, 300]).unwrap();
    match next_frame(&mut server.ws).await {
        Message::Binary(bytes) => assert_eq!(bytes.as_ref(), le_bytes(&[1, -2, 300]).as_slice()),
        other => panic!("expected audio, got {other:?}"),
    }

    let ws = &mut server.ws;
    send_json(ws, json!({"type":"SpeechStarted","channel":[0],"timestamp":3.48})).await;
    send_json(ws, results("hel", false, false, false, 3.5)).await;
    send_json(ws, results("", false, false, false, 3.5)).await; // empty interim: dropped
    send_json(
        ws,
        json!({"type":"Metadata","transaction_key":"deprecated","request_id":"r","sha256":"x",
        "created":"2024-08-29T22:37:55.202Z","duration":0.0,"channels":0}),
    )
    .await;
    send_json(ws, json!({"type":"SomethingNew","x":1})).await;
    send_json(ws, results("hello there", true, true, false, 3.5)).await;
    send_json(ws, json!({"type":"UtteranceEnd","channel":[0,1],"last_word_end":4.91})).await;

    assert_eq!(event(&mut events).await, SttEvent::SpeechStarted);
    assert_eq!(event(&mut events).await, transcript("hel", false, false, false, 3.5));
    assert_eq!(event(&mut events).await, transcript("hello there", true, true, false, 3.5));
    assert_eq!(event(&mut events).await, SttEvent::UtteranceEnd);

    handle.finalize();
    assert_eq!(next_json(ws).await, json!({"type":"Finalize"}));
    send_json(ws, results("ok", true, false, true, 5.0)).await;
    assert_eq!(event(&mut events).await, transcript("ok", true, false, true, 5.0));

    // CloseStream: the server flushes its last result, then Metadata, then closes.
    handle.close();
    assert_eq!(next_json(ws).await, json!({"type":"CloseStream"}));
    send_json(ws, results("bye", true, true, false, 6.0)).await;
    send_json(ws, json!({"type":"Metadata","request_id":"r"})).await;
    close_with(ws, 1000, "").await;
    assert_eq!(event(&mut events).await, transcript("bye", true, true, false, 6.0));
    assert_eq!(event(&mut events).await, SttEvent::Closed);
    assert_eq!(within(events.recv()).await, None);
}

#[tokio::test]
async fn deepgram_handshake_rejection_is_a_status_error() {
    let base = ws_server_rejecting(401, r#"{"err_code":"INVALID_AUTH"}"#).await;
    let err = stt::connect(&params(base)).await.unwrap_err();
    match err {
        ProviderError::Status { provider: "deepgram", status: 401, body } => assert!(body.contains("INVALID_AUTH")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn deepgram_connect_is_bounded() {
    let base = silent_server().await;
    let mut p = params(base);
    p.connect_timeout = Duration::from_millis(200);
    let err = stt::connect(&p).await.unwrap_err();
    assert!(matches!(err, ProviderError::Timeout { provider: "deepgram", .. }), "{err:?}");
}

#[tokio::test]
async fn deepgram_server_close_is_an_error() {
    let (base, mut accepted) = ws_server().await;
    let (_handle, mut events) = stt::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    close_with(&mut server.ws, 1011, "NET-0001").await;
    match event(&mut events).await {
        SttEvent::Error(ProviderError::Remote { provider: "deepgram", detail }) => {
            assert_eq!(detail, "1011 NET-0001")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(within(events.recv()).await, None);
}

#[tokio::test]
async fn deepgram_dropping_handles_closes_the_stream() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events) = stt::connect(&params(base)).await.unwrap();
    let mut server = accept(&mut accepted).await;
    drop(handle);
    assert_eq!(next_json(&mut server.ws).await, json!({"type":"CloseStream"}));
    close_with(&mut server.ws, 1000, "").await;
    assert_eq!(event(&mut events).await, SttEvent::Closed);
}
