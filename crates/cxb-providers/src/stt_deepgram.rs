//! Deepgram live STT v1 (`/v1/listen`, wire-protocols §3).
//!
//! The shared STT session loop ([`crate::stt_session`]) owns the socket: caller audio goes as
//! binary frames, `KeepAlive` keeps the stream alive while no audio flows, and server JSON
//! becomes [`SttEvent`]s.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use url::Url;

use crate::stt::{SttEvent, SttHandle, SttParams, Transcript};
use crate::stt_session::{self, Dialect, Parsed, Timing};
use crate::ws;
use crate::ProviderError;

const PROVIDER: &str = crate::registry::DEEPGRAM.name;

/// Query parameters we always set ourselves: the engine depends on interim results and VAD
/// events, and the audio format is dictated by what `send_audio` produces.
const FIXED_PARAMS: &[&str] =
    &["model", "language", "encoding", "sample_rate", "channels", "interim_results", "vad_events"];
/// Parameters with a default of ours that `stt.extra` may override (see `listen_url`).
const DEFAULTED_PARAMS: &[&str] = &["endpointing", "utterance_end_ms", "smart_format", "punctuate"];
/// `stt.extra` keys read by the engine, not by Deepgram; sending them would be noise at best.
const ENGINE_ONLY_KEYS: &[&str] = &["should_interrupt", "min_confidence"];

/// `KeepAlive` after 4 s without audio (Deepgram drops the stream after 10 s); up to 2 s for
/// the last results and the close after `CloseStream`.
const TIMING: Timing = Timing { keepalive: Duration::from_secs(4), close_wait: Duration::from_secs(2) };

pub(crate) async fn connect(params: &SttParams) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    connect_with(params, TIMING).await
}

pub(crate) async fn connect_with(
    params: &SttParams,
    timing: Timing,
) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    let url = listen_url(params)?;
    let auth = format!("Token {}", params.api_key);
    let socket = ws::connect(PROVIDER, &url, &[("authorization", auth)], params.connect_timeout).await?;
    Ok(stt_session::spawn(socket, Deepgram, timing))
}

/// `{base}/v1/listen?…` with our fixed parameters, defaults, and every scalar `extra` key.
pub(crate) fn listen_url(params: &SttParams) -> Result<Url, ProviderError> {
    let mut url = ws::ws_url(PROVIDER, &params.base_url, "/v1/listen")?;
    {
        let mut q = url.query_pairs_mut();
        if !params.model.is_empty() {
            q.append_pair("model", &params.model);
        }
        if !params.language.is_empty() {
            q.append_pair("language", &params.language);
        }
        q.append_pair("encoding", "linear16")
            .append_pair("sample_rate", &params.sample_rate.to_string())
            .append_pair("channels", "1")
            .append_pair("interim_results", "true");
        // Same order as the vendor's telephony example, which keeps URLs easy to compare in logs.
        let extra_or = |key: &str, default: &str| {
            let values = params.extra.get(key).map(query_values).unwrap_or_default();
            values.into_iter().next().unwrap_or_else(|| default.to_string())
        };
        q.append_pair("endpointing", &extra_or("endpointing", "300"))
            .append_pair("utterance_end_ms", &extra_or("utterance_end_ms", "1000"))
            .append_pair("vad_events", "true")
            .append_pair("smart_format", &extra_or("smart_format", "true"))
            .append_pair("punctuate", &extra_or("punctuate", "true"));
        for (key, value) in passthrough_extra(&params.extra) {
            q.append_pair(key, &value);
        }
    }
    Ok(url)
}

/// The `extra` entries not handled above, flattened to query pairs (arrays repeat the key).
fn passthrough_extra(extra: &Map<String, Value>) -> Vec<(&str, String)> {
    let handled = |k: &str| FIXED_PARAMS.contains(&k) || ENGINE_ONLY_KEYS.contains(&k) || DEFAULTED_PARAMS.contains(&k);
    let mut pairs = Vec::new();
    for (key, value) in extra {
        if handled(key) {
            if FIXED_PARAMS.contains(&key.as_str()) {
                tracing::debug!(key, "ignoring stt.extra override of a fixed Deepgram parameter");
            }
            continue;
        }
        pairs.extend(query_values(value).into_iter().map(|v| (key.as_str(), v)));
    }
    pairs
}

/// Query-string spelling of a JSON value. Objects and nulls have none.
fn query_values(value: &Value) -> Vec<String> {
    match value {
        Value::Bool(b) => vec![b.to_string()],
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![number_text(n)],
        Value::Array(items) => items.iter().filter(|v| !v.is_array()).flat_map(query_values).collect(),
        Value::Null | Value::Object(_) => Vec::new(),
    }
}

/// `300.0` from a YAML/JSON config means `300`; Deepgram rejects the float spelling for ints.
fn number_text(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => n.to_string(),
    }
}

/// Deepgram's frames on the shared session loop.
struct Deepgram;

fn control(kind: &str) -> Message {
    Message::text(json!({ "type": kind }).to_string())
}

impl Dialect for Deepgram {
    const PROVIDER: &'static str = PROVIDER;

    // An empty binary frame is Deepgram's legacy "close stream" signal; the loop never sends one.
    fn audio(&mut self, bytes: Vec<u8>) -> Message {
        Message::binary(bytes)
    }

    fn finalize(&mut self) -> Option<Message> {
        Some(control("Finalize"))
    }

    fn keepalive(&mut self) -> Message {
        control("KeepAlive")
    }

    /// `CloseStream`: Deepgram sends its last results and closes.
    fn end_of_stream(&mut self) -> Option<Message> {
        Some(control("CloseStream"))
    }

    fn on_text(&mut self, text: &str) -> Parsed {
        Parsed { events: parse_server_message(text).into_iter().collect(), finished: false }
    }

    fn on_end(&mut self) -> Vec<SttEvent> {
        Vec::new()
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
}

/// `Option`s everywhere: a missing or null field must not cost us the whole result.
#[derive(Deserialize)]
struct ResultsMsg {
    is_final: Option<bool>,
    speech_final: Option<bool>,
    from_finalize: Option<bool>,
    start: Option<f64>,
    duration: Option<f64>,
    channel: Option<ChannelMsg>,
}

#[derive(Deserialize)]
struct ChannelMsg {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    transcript: Option<String>,
    confidence: Option<f32>,
}

/// Map one server text frame to an event; `None` for messages we do not surface.
pub(crate) fn parse_server_message(text: &str) -> Option<SttEvent> {
    let kind = match serde_json::from_str::<Envelope>(text) {
        Ok(envelope) => envelope.kind,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed deepgram message");
            return None;
        }
    };
    match kind.as_str() {
        "Results" => parse_results(text),
        "UtteranceEnd" => Some(SttEvent::UtteranceEnd),
        "SpeechStarted" => Some(SttEvent::SpeechStarted),
        "Metadata" => None,
        other => {
            tracing::debug!(kind = other, "ignoring deepgram message");
            None
        }
    }
}

fn parse_results(text: &str) -> Option<SttEvent> {
    let msg: ResultsMsg = match serde_json::from_str(text) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed deepgram Results");
            return None;
        }
    };
    let best = msg.channel.and_then(|c| c.alternatives.into_iter().next());
    let (text, confidence) = best.map(|a| (a.transcript.unwrap_or_default(), a.confidence)).unwrap_or_default();
    let is_final = msg.is_final.unwrap_or(false);
    // Empty interims carry no information; empty finals still matter (speech_final, finalize).
    if !is_final && text.is_empty() {
        return None;
    }
    Some(SttEvent::Transcript(Transcript {
        text,
        is_final,
        speech_final: msg.speech_final.unwrap_or(false),
        from_finalize: msg.from_finalize.unwrap_or(false),
        confidence: confidence.unwrap_or(0.0),
        start: msg.start.unwrap_or(0.0),
        duration: msg.duration.unwrap_or(0.0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(base_url: String, extra: Value) -> SttParams {
        SttParams {
            provider: "deepgram".into(),
            base_url,
            api_key: "k".into(),
            model: "nova-3".into(),
            language: "en".into(),
            sample_rate: 8000,
            extra: extra.as_object().cloned().unwrap_or_default(),
            connect_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn url_defaults_and_passthrough() {
        let extra = json!({"endpointing": 500.0, "smart_format": false, "keyterm": ["a b", "c"],
            "diarize": true, "should_interrupt": true, "interim_results": false, "nested": {"x": 1}});
        let url = listen_url(&params("wss://api.deepgram.com/".into(), extra)).unwrap();
        assert_eq!(
            url.as_str(),
            "wss://api.deepgram.com/v1/listen?model=nova-3&language=en&encoding=linear16&sample_rate=8000\
             &channels=1&interim_results=true&endpointing=500&utterance_end_ms=1000&vad_events=true\
             &smart_format=false&punctuate=true&diarize=true&keyterm=a+b&keyterm=c"
        );
    }

    #[test]
    fn malformed_messages_are_ignored() {
        assert_eq!(parse_server_message("not json"), None);
        assert_eq!(parse_server_message(r#"{"type":"Results","channel":7}"#), None);
        assert_eq!(parse_server_message(r#"{"type":"Results","is_final":false,"channel":{"alternatives":[]}}"#), None);
        let ev = parse_server_message(r#"{"type":"Results","is_final":true,"channel":{"alternatives":[]}}"#);
        assert!(matches!(ev, Some(SttEvent::Transcript(t)) if t.is_final && t.text.is_empty()));
    }

    /// KeepAlive goes out when no audio flows; tested here with a short interval.
    #[tokio::test]
    async fn keepalive_when_idle() {
        let texts = stt_session::tests::texts_while_idle(2, |base| async move {
            let timing = Timing { keepalive: Duration::from_millis(50), close_wait: Duration::from_millis(200) };
            connect_with(&params(base, json!({})), timing).await
        })
        .await;
        assert_eq!(texts, vec![r#"{"type":"KeepAlive"}"#; 2]);
    }
}
