//! The generic `stt::connect`, `tts::connect` and `LlmClient::stream` dispatch through the
//! provider registry: an alias reaches its vendor's client (seen by the path it opens on a
//! loopback server), and an unknown name is a config error naming the field, the value and the
//! known names.

mod support;

use std::time::Duration;

use cxb_providers::llm::{LlmClient, LlmEvent, LlmParams};
use cxb_providers::registry::Kind;
use cxb_providers::stt::{self, SttParams};
use cxb_providers::tts::{self, TtsParams};
use cxb_providers::ProviderError;
use cxb_wire::llm::ChatRequest;
use serde_json::Map;
use support::*;

fn stt_params(provider: &str, model: &str, base_url: &str) -> SttParams {
    SttParams {
        provider: provider.into(),
        base_url: base_url.into(),
        api_key: "k".into(),
        model: model.into(),
        language: "en".into(),
        sample_rate: 8000,
        extra: Map::new(),
        connect_timeout: Duration::from_secs(2),
    }
}

fn tts_params(provider: &str, base_url: &str) -> TtsParams {
    TtsParams {
        provider: provider.into(),
        base_url: base_url.into(),
        api_key: "k".into(),
        model: String::new(),
        voice_id: "v1".into(),
        language: None,
        sample_rate: 8000,
        extra: Map::new(),
        connect_timeout: Duration::from_secs(2),
    }
}

/// The path the client opened for `provider`/`model`: which vendor's client ran.
async fn stt_path(provider: &str, model: &str) -> String {
    let (base, mut accepted) = ws_server().await;
    let params = stt_params(provider, model, &base);
    let client = tokio::spawn(async move { stt::connect(&params).await.map(|_| ()) });
    let path = accept(&mut accepted).await.path().to_string();
    client.abort();
    path
}

async fn tts_path(provider: &str) -> String {
    let (base, mut accepted) = ws_server().await;
    let params = tts_params(provider, &base);
    let client = tokio::spawn(async move { tts::connect(&params).await.map(|_| ()) });
    let path = accept(&mut accepted).await.path().to_string();
    client.abort();
    path
}

#[tokio::test]
async fn aliases_and_models_reach_their_vendors_client() {
    assert_eq!(stt_path("stt_streaming", "nova-3").await, "/v1/listen");
    assert_eq!(stt_path("Deepgram", "flux-general-en").await, "/v2/listen", "a flux model opens Flux");
    assert_eq!(stt_path("deepgram_flux", "").await, "/v2/listen");
    assert_eq!(tts_path("cartesia").await, "/tts/websocket");
    assert_eq!(tts_path("11labs").await, "/v1/text-to-speech/v1/stream-input");
}

#[tokio::test]
async fn unknown_providers_are_config_errors() {
    let err = stt::connect(&stt_params("whisperx", "", "ws://127.0.0.1:9")).await.unwrap_err();
    assert_eq!(err, ProviderError::UnknownProvider { kind: Kind::Stt, name: "whisperx".into() });
    assert!(err.to_string().contains("stt.provider \"whisperx\""), "{err}");
    assert!(err.to_string().contains("known: deepgram (stt_streaming, deepgram_nova, nova), deepgram_flux"), "{err}");

    let err = tts::connect(&tts_params("soniox", "ws://127.0.0.1:9")).await.unwrap_err();
    assert!(err.to_string().starts_with("tts.provider \"soniox\" is not a known TTS provider"), "{err}");

    let params = LlmParams {
        provider: "no-such-llm".into(),
        base_url: "http://127.0.0.1:9".into(),
        api_key: String::new(),
        idle_timeout: Duration::from_secs(1),
    };
    let mut stream = LlmClient::new().stream(&params, ChatRequest::default());
    match within(stream.recv()).await {
        Some(LlmEvent::Error(e @ ProviderError::UnknownProvider { kind: Kind::Llm, .. })) => {
            assert!(e.to_string().contains("llm.provider \"no-such-llm\"") && e.to_string().contains("openai"), "{e}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(within(stream.recv()).await, None, "the error is the stream's only event");
}
