//! Deepgram Flux (v2 turn-detecting STT) against a loopback double speaking wire-protocols §3.

mod support;

use std::time::Duration;

use cxb_providers::stt::SttParams;
use cxb_providers::stt_flux::{self, FluxConfigure, FluxEvent, FluxHandle, FluxWord, TurnInfo};
use cxb_providers::ProviderError;
use serde_json::{json, Value};
use support::*;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

fn params(base_url: String) -> SttParams {
    SttParams {
        provider: "deepgram_flux".into(),
        base_url,
        api_key: "dg-key".into(),
        model: "flux-general-en".into(),
        language: "en".into(),
        sample_rate: 8000,
        extra: json!({"eot_threshold": 0.75, "eager_eot_threshold": 0.5, "eot_timeout_ms": 3000,
            "keyterm": ["Exotel", "CXB"], "min_confidence": 0.3, "should_interrupt": true})
        .as_object()
        .cloned()
        .unwrap(),
        connect_timeout: Duration::from_secs(2),
    }
}

fn turn_info(event: &str, index: u32, transcript: &str, eot: f64) -> Value {
    let words: Vec<Value> = transcript.split_whitespace().map(|w| json!({"word": w, "confidence": 0.95})).collect();
    json!({"type":"TurnInfo","request_id":"req-1","sequence_id":1,"event":event,"turn_index":index,
        "audio_window_start":0.2,"audio_window_end":1.4,"transcript":transcript,"words":words,
        "end_of_turn_confidence":eot})
}

fn info(index: u32, transcript: &str, eot: f32) -> TurnInfo {
    TurnInfo {
        turn_index: index,
        transcript: transcript.into(),
        words: transcript.split_whitespace().map(|w| FluxWord { word: w.into(), confidence: 0.95 }).collect(),
        audio_window_start: 0.2,
        audio_window_end: 1.4,
        end_of_turn_confidence: eot,
    }
}

/// Connect, let the test's server see the upgrade, and answer it with `Connected`.
async fn open(
    p: SttParams,
    accepted: &mut mpsc::Receiver<Accepted>,
) -> (FluxHandle, mpsc::Receiver<FluxEvent>, Accepted) {
    let connecting = tokio::spawn(async move { stt_flux::connect(&p).await });
    let mut server = accept(accepted).await;
    send_json(&mut server.ws, json!({"type":"Connected","request_id":"req-1","sequence_id":0})).await;
    let (handle, events) = within(connecting).await.unwrap().expect("connect");
    (handle, events, server)
}

#[tokio::test]
async fn flux_request_turn_events_configure_and_close() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events, mut server) = open(params(base), &mut accepted).await;
    assert_eq!(handle.request_id(), "req-1");

    assert_eq!(server.path(), "/v2/listen");
    assert_eq!(server.header("authorization"), "Token dg-key");
    let expected: Vec<(String, String)> = [
        ("model", "flux-general-en"),
        ("encoding", "linear16"),
        ("sample_rate", "8000"),
        ("eot_threshold", "0.75"),
        ("eager_eot_threshold", "0.5"),
        ("eot_timeout_ms", "3000"),
        ("keyterm", "Exotel"),
        ("keyterm", "CXB"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(server.query(), expected);

    // Audio goes out as LINEAR16 little-endian binary frames of 80 ms (640 samples at 8 kHz):
    // four 20 ms frames from the caller make one frame on the wire.
    let samples: Vec<i16> = (0..640).map(|i| (i * 37 - 9000) as i16).collect();
    for quarter in samples.chunks(160) {
        handle.send_audio(quarter).unwrap();
    }
    match next_frame(&mut server.ws).await {
        Message::Binary(bytes) => assert_eq!(bytes.as_ref(), le_bytes(&samples).as_slice()),
        other => panic!("expected audio, got {other:?}"),
    }

    let ws = &mut server.ws;
    send_json(ws, turn_info("StartOfTurn", 0, "I", 0.02)).await;
    send_json(ws, turn_info("Update", 0, "I want", 0.05)).await;
    send_raw(ws, "{not json").await;
    send_json(ws, json!({"type":"TurnInfo","event":"Update"})).await; // no turn_index: dropped
    send_json(ws, json!({"type":"SomethingNew","x":1})).await;
    send_json(ws, json!({"type":"Warning","request_id":"r","sequence_id":2,"code":"W","description":"w"})).await;
    send_json(ws, turn_info("EagerEndOfTurn", 0, "I want to", 0.55)).await;
    send_json(ws, turn_info("TurnResumed", 0, "I want to", 0.1)).await;
    send_json(ws, turn_info("EndOfTurn", 0, "I want to check my order.", 0.9)).await;

    assert_eq!(event(&mut events).await, FluxEvent::StartOfTurn(info(0, "I", 0.02)));
    assert_eq!(event(&mut events).await, FluxEvent::Update(info(0, "I want", 0.05)));
    assert_eq!(event(&mut events).await, FluxEvent::EagerEndOfTurn(info(0, "I want to", 0.55)));
    assert_eq!(event(&mut events).await, FluxEvent::TurnResumed(info(0, "I want to", 0.1)));
    let FluxEvent::EndOfTurn(end) = event(&mut events).await else { panic!("expected EndOfTurn") };
    assert_eq!(end, info(0, "I want to check my order.", 0.9));
    assert!(end.meets_min_confidence(Some(0.3)));

    // Configure goes out as the SDK spells it; both answers surface.
    let change = FluxConfigure {
        eot_threshold: Some(0.8),
        eager_eot_threshold: None,
        eot_timeout_ms: Some(2000),
        keyterms: Some(vec!["refund".into()]),
    };
    handle.configure(&change).unwrap();
    handle.configure(&FluxConfigure::default()).unwrap(); // nothing to change: nothing sent
    assert_eq!(
        next_json(ws).await,
        json!({"type":"Configure","thresholds":{"eot_threshold":0.8,"eot_timeout_ms":2000},"keyterms":["refund"]})
    );
    send_json(
        ws,
        json!({"type":"ConfigureSuccess","request_id":"req-1","sequence_id":9,
            "thresholds":{"eot_threshold":0.8,"eot_timeout_ms":2000},"keyterms":["refund"]}),
    )
    .await;
    assert_eq!(event(&mut events).await, FluxEvent::Configured);
    send_json(ws, json!({"type":"ConfigureFailure","request_id":"req-1","sequence_id":10})).await;
    assert!(matches!(event(&mut events).await, FluxEvent::ConfigureFailed(_)));

    // A partial chunk is flushed before CloseStream; the server's last turn still arrives.
    handle.send_audio(&[5, 6]).unwrap();
    handle.close();
    match next_frame(ws).await {
        Message::Binary(bytes) => assert_eq!(bytes.as_ref(), le_bytes(&[5, 6]).as_slice()),
        other => panic!("expected the audio tail, got {other:?}"),
    }
    assert_eq!(next_json(ws).await, json!({"type":"CloseStream"}));
    send_json(ws, turn_info("StartOfTurn", 1, "Bye", 0.02)).await;
    send_json(ws, turn_info("EndOfTurn", 1, "Bye now.", 0.92)).await;
    close_with(ws, 1000, "").await;
    assert_eq!(event(&mut events).await, FluxEvent::StartOfTurn(info(1, "Bye", 0.02)));
    assert_eq!(event(&mut events).await, FluxEvent::EndOfTurn(info(1, "Bye now.", 0.92)));
    assert_eq!(event(&mut events).await, FluxEvent::Closed);
    assert_eq!(within(events.recv()).await, None);
    // The handle now reports the ended stream instead of queueing audio nobody sends.
    assert!(matches!(handle.send_audio(&[1]), Err(ProviderError::Closed { .. })));
}

/// Sends a raw (possibly invalid) text frame.
async fn send_raw(ws: &mut ServerWs, text: &str) {
    use futures_util::SinkExt;
    ws.send(Message::text(text.to_string())).await.unwrap();
}

#[tokio::test]
async fn flux_error_message_is_terminal() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events, mut server) = open(params(base), &mut accepted).await;
    send_json(&mut server.ws, turn_info("StartOfTurn", 0, "Hi", 0.02)).await;
    send_json(
        &mut server.ws,
        json!({"type":"Error","sequence_id":2,"code":"INTERNAL_SERVER_ERROR","description":"model crashed"}),
    )
    .await;
    assert_eq!(event(&mut events).await, FluxEvent::StartOfTurn(info(0, "Hi", 0.02)));
    assert_eq!(
        event(&mut events).await,
        FluxEvent::Error(ProviderError::Remote {
            provider: "deepgram_flux",
            detail: "INTERNAL_SERVER_ERROR: model crashed".into()
        })
    );
    assert_eq!(within(events.recv()).await, None);
    // The client leaves: the server sees the socket close.
    expect_closed(&mut server.ws).await;
    drop(handle);
}

#[tokio::test]
async fn flux_bad_key_is_a_connect_error() {
    let base = ws_server_rejecting(401, r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}"#).await;
    match stt_flux::connect(&params(base)).await.unwrap_err() {
        ProviderError::Status { provider: "deepgram_flux", status: 401, body } => {
            assert!(body.contains("INVALID_AUTH"), "{body}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn flux_error_before_connected_is_a_connect_error() {
    let (base, mut accepted) = ws_server().await;
    let connecting = tokio::spawn(async move { stt_flux::connect(&params(base)).await });
    let mut server = accept(&mut accepted).await;
    send_json(&mut server.ws, json!({"type":"Error","sequence_id":0,"code":"BAD_REQUEST","description":"bad model"}))
        .await;
    let err = within(connecting).await.unwrap().unwrap_err();
    assert_eq!(err, ProviderError::Remote { provider: "deepgram_flux", detail: "BAD_REQUEST: bad model".into() });
}

#[tokio::test]
async fn flux_connect_is_bounded() {
    // TCP accepted, WebSocket handshake never answered.
    let mut p = params(silent_server().await);
    p.connect_timeout = Duration::from_millis(200);
    let err = stt_flux::connect(&p).await.unwrap_err();
    assert!(matches!(err, ProviderError::Timeout { provider: "deepgram_flux", .. }), "{err:?}");

    // Upgrade accepted, `Connected` never sent: the same budget covers the wait for it.
    let (base, mut accepted) = ws_server().await;
    let mut p = params(base);
    p.connect_timeout = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let connecting = tokio::spawn(async move { stt_flux::connect(&p).await });
    let _server = accept(&mut accepted).await;
    match within(connecting).await.unwrap().unwrap_err() {
        ProviderError::Timeout { provider: "deepgram_flux", what } => assert!(what.contains("Connected"), "{what}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
}

#[tokio::test]
async fn flux_server_close_is_an_error() {
    let (base, mut accepted) = ws_server().await;
    let (_handle, mut events, mut server) = open(params(base), &mut accepted).await;
    close_with(&mut server.ws, 1011, "NET-0001").await;
    match event(&mut events).await {
        FluxEvent::Error(ProviderError::Remote { provider: "deepgram_flux", detail }) => {
            assert_eq!(detail, "1011 NET-0001")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(within(events.recv()).await, None);
}

#[tokio::test]
async fn flux_dropping_handles_closes_the_stream() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events, mut server) = open(params(base), &mut accepted).await;
    let clone = handle.clone();
    drop(handle);
    drop(clone);
    assert_eq!(next_json(&mut server.ws).await, json!({"type":"CloseStream"}));
    close_with(&mut server.ws, 1000, "").await;
    assert_eq!(event(&mut events).await, FluxEvent::Closed);
}

#[tokio::test]
async fn flux_close_is_bounded_when_the_server_never_closes() {
    let (base, mut accepted) = ws_server().await;
    let (handle, mut events, mut server) = open(params(base), &mut accepted).await;
    handle.close();
    assert_eq!(next_json(&mut server.ws).await, json!({"type":"CloseStream"}));
    // The server says nothing more; the client gives up after its close wait (2 s).
    assert_eq!(event(&mut events).await, FluxEvent::Closed);
    assert_eq!(within(events.recv()).await, None);
}
