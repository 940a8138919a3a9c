//! Sarvam streaming STT (Saarika / Saaras) on `/speech-to-text/ws` (wire-protocols-2 §5a).
//!
//! Sarvam has two STT sockets. This client speaks the generally available "Streaming API"
//! (§5a), which the `sarvamai` SDK's `speech_to_text_streaming`, pipecat's `SarvamSTTService`
//! and livekit's plugin all use; the newer "Realtime Streaming" socket (§5b) is a beta that
//! needs granted access, so a production bot cannot rely on it.
//!
//! The wire: everything is configured in the query (`language-code` with a hyphen, the rate
//! only at connection level because 8 kHz is not accepted per message); caller audio goes as
//! base64 inside JSON text frames (raw LINEAR16 labelled `audio/wav`, as pipecat and livekit
//! send it); `{"type":"flush"}` (honoured with `flush_signal=true`) forces the final when our
//! VAD ends a turn. There are no interim results: each `data` message is one utterance's final
//! transcript, delivered as a final with `speech_final` plus `UtteranceEnd`. Sarvam's own VAD
//! events (`vad_signals=true`) give `SpeechStarted`.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use url::Url;

use crate::stt::{SttEvent, SttHandle, SttParams, Transcript};
use crate::stt_session::{self, Dialect, Parsed, Timing};
use crate::ws;
use crate::ProviderError;

pub const PROVIDER: &str = crate::registry::SARVAM_STT.name;
pub const DEFAULT_BASE_URL: &str = crate::registry::SARVAM_STT.api_root;
/// The SDK's stable streaming model (saarika may be retired: wire-protocols-2 §5a).
pub const DEFAULT_MODEL: &str = crate::registry::SARVAM_STT.default_model;
const PATH: &str = "/speech-to-text/ws";
/// The only connection rates the socket takes.
pub const SAMPLE_RATES: [u32; 2] = [8000, 16000];
/// Query parameters taken from `stt.extra` (values sent as strings, as the SDK does).
const QUERY_KEYS: &[&str] = &[
    "mode",
    "high_vad_sensitivity",
    "input_audio_codec",
    "positive_speech_threshold",
    "negative_speech_threshold",
    "min_speech_frames",
    "first_turn_min_speech_frames",
    "negative_frames_count",
    "negative_frames_window",
    "start_speech_volume_threshold",
    "interrupt_min_speech_frames",
    "pre_speech_pad_frames",
    "num_initial_ignored_frames",
];
/// Base language codes Sarvam serves (`-IN` added); Odia is `od-IN` on this API.
const INDIAN_LANGUAGES: &[&str] = &[
    "as", "bn", "brx", "doi", "en", "gu", "hi", "kn", "kok", "ks", "mai", "ml", "mni", "mr", "ne", "od", "pa", "sa",
    "sat", "sd", "ta", "te", "ur",
];

/// No keepalive is documented; pipecat sends silence when the caller's audio pauses. A call's
/// audio normally never pauses, so this only matters for a stalled transport.
const TIMING: Timing = Timing { keepalive: Duration::from_secs(5), close_wait: Duration::from_secs(3) };
/// Silence sent as the keepalive.
const KEEPALIVE_SILENCE: Duration = Duration::from_millis(100);

/// Open a Sarvam STT stream.
pub async fn connect(params: &SttParams) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    let url = stream_url(params)?;
    let headers = [("api-subscription-key", params.api_key.clone())];
    let socket = ws::connect(PROVIDER, &url, &headers, params.connect_timeout).await?;
    let dialect = Sarvam { sample_rate: params.sample_rate, ..Sarvam::default() };
    Ok(stt_session::spawn(socket, dialect, TIMING))
}

/// `{base}/speech-to-text/ws?language-code=…&model=…&sample_rate=…&vad_signals=true&flush_signal=true…`
pub fn stream_url(params: &SttParams) -> Result<Url, ProviderError> {
    if !SAMPLE_RATES.contains(&params.sample_rate) {
        let detail = format!("Sarvam STT takes 8000 or 16000 Hz audio, not {}", params.sample_rate);
        return Err(ProviderError::Connect { provider: PROVIDER, detail });
    }
    let base = if params.base_url.is_empty() { DEFAULT_BASE_URL } else { params.base_url.as_str() };
    let mut url = ws::ws_url(PROVIDER, base, PATH)?;
    {
        let model = if params.model.is_empty() { DEFAULT_MODEL } else { params.model.as_str() };
        let language = language_code(&params.language).unwrap_or_else(|| "unknown".into());
        let mut q = url.query_pairs_mut();
        q.append_pair("language-code", &language)
            .append_pair("model", model)
            .append_pair("sample_rate", &params.sample_rate.to_string())
            .append_pair("vad_signals", "true")
            .append_pair("flush_signal", "true");
        for key in QUERY_KEYS {
            if let Some(value) = params.extra.get(*key).and_then(query_value) {
                q.append_pair(key, &value);
            }
        }
        if let Some(terms) = keyterms(&params.extra) {
            q.append_pair("keyterms", &terms);
        }
    }
    Ok(url)
}

fn query_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `extra.keyterms` as the JSON-encoded array the API takes (at most 50).
fn keyterms(extra: &Map<String, Value>) -> Option<String> {
    let terms: Vec<&str> = extra.get("keyterms")?.as_array()?.iter().filter_map(Value::as_str).take(50).collect();
    (!terms.is_empty()).then(|| json!(terms).to_string())
}

/// A bot's language as Sarvam's BCP-47 code: `hi` → `hi-IN`, `hi-in` → `hi-IN`, `or` → `od-IN`.
/// `None` for "no language" values; unknown languages pass through for the server to judge.
pub(crate) fn language_code(language: &str) -> Option<String> {
    let trimmed = language.trim();
    let base = trimmed.split(['-', '_']).next().unwrap_or("").to_ascii_lowercase();
    match base.as_str() {
        "" | "unknown" | "auto" | "multi" => None,
        "or" => Some("od-IN".into()),
        b if INDIAN_LANGUAGES.contains(&b) => Some(format!("{b}-IN")),
        _ => Some(trimmed.to_string()),
    }
}

#[derive(Default)]
pub(crate) struct Sarvam {
    sample_rate: u32,
    /// A flush was sent and its transcript has not come yet.
    flushed: bool,
    /// Sarvam's VAD heard speech whose transcript has not come yet.
    utterance_open: bool,
    /// `close()` was asked for: the next transcript is the last thing we wait for.
    closing: bool,
}

impl Dialect for Sarvam {
    const PROVIDER: &'static str = PROVIDER;

    fn audio(&mut self, bytes: Vec<u8>) -> Message {
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        let msg = json!({"audio": {"data": data, "sample_rate": self.sample_rate, "encoding": "audio/wav"}});
        Message::text(msg.to_string())
    }

    /// Our VAD ended the turn: ask for the final now instead of waiting for Sarvam's VAD.
    fn finalize(&mut self) -> Option<Message> {
        self.flushed = true;
        Some(Message::text(json!({"type": "flush"}).to_string()))
    }

    fn keepalive(&mut self) -> Message {
        let samples = (u64::from(self.sample_rate) * KEEPALIVE_SILENCE.as_millis() as u64 / 1000) as usize;
        self.audio(vec![0u8; samples * 2])
    }

    /// Flush an open utterance so its words come back before we close; nothing to wait for
    /// otherwise.
    fn end_of_stream(&mut self) -> Option<Message> {
        self.closing = true;
        if self.utterance_open {
            self.finalize()
        } else {
            None
        }
    }

    fn on_text(&mut self, text: &str) -> Parsed {
        let msg: ServerMsg = match serde_json::from_str(text) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed sarvam stt message");
                return Parsed::default();
            }
        };
        let events = self.on_message(msg);
        let finished = self.closing && !self.utterance_open;
        Parsed { events, finished }
    }

    fn on_end(&mut self) -> Vec<SttEvent> {
        Vec::new()
    }
}

impl Sarvam {
    fn on_message(&mut self, msg: ServerMsg) -> Vec<SttEvent> {
        match msg.kind.as_str() {
            "data" => {
                self.utterance_open = false;
                let from_finalize = std::mem::take(&mut self.flushed);
                let data: TranscriptData = serde_json::from_value(msg.data).unwrap_or_default();
                let text = data.transcript.trim().to_string();
                if text.is_empty() {
                    return Vec::new();
                }
                let duration = data.metrics.and_then(|m| m.audio_duration).unwrap_or(0.0);
                let confidence = data.language_probability.unwrap_or(1.0) as f32;
                let transcript = Transcript {
                    text,
                    is_final: true,
                    speech_final: true,
                    from_finalize,
                    confidence,
                    start: 0.0,
                    duration,
                };
                vec![SttEvent::Transcript(transcript), SttEvent::UtteranceEnd]
            }
            // livekit also accepts the singular spelling.
            "events" | "event" => match msg.data.get("signal_type").and_then(Value::as_str) {
                Some("START_SPEECH") => {
                    self.utterance_open = true;
                    vec![SttEvent::SpeechStarted]
                }
                _ => Vec::new(),
            },
            "error" | "errors" => {
                let detail = error_detail(&msg.data);
                vec![SttEvent::Error(ProviderError::Remote { provider: PROVIDER, detail })]
            }
            other => {
                tracing::debug!(kind = other, "ignoring sarvam stt message");
                Vec::new()
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ServerMsg {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Default, Deserialize)]
struct TranscriptData {
    #[serde(default)]
    transcript: String,
    language_probability: Option<f64>,
    metrics: Option<Metrics>,
}

#[derive(Debug, Deserialize)]
struct Metrics {
    audio_duration: Option<f64>,
}

/// `{"error":"…","code":"…"}` → "… (code)"; other shapes are logged whole.
fn error_detail(data: &Value) -> String {
    let message = data.get("error").or_else(|| data.get("message")).and_then(Value::as_str);
    let code = match data.get("code") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match (message, code) {
        (Some(m), Some(c)) => format!("{m} ({c})"),
        (Some(m), None) => m.to_string(),
        _ => ws::truncate(data.to_string(), ws::MAX_ERROR_BODY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: Value) -> SttParams {
        SttParams {
            provider: "sarvam".into(),
            base_url: "https://api.sarvam.ai/".into(),
            api_key: "sv-key".into(),
            model: String::new(),
            language: "hi".into(),
            sample_rate: 8000,
            extra: extra.as_object().cloned().unwrap_or_default(),
            connect_timeout: Duration::from_secs(2),
        }
    }

    fn dialect() -> Sarvam {
        Sarvam { sample_rate: 8000, ..Sarvam::default() }
    }

    #[test]
    fn url_carries_the_connection_config() {
        let extra = json!({"mode": "codemix", "high_vad_sensitivity": true, "min_speech_frames": 3,
            "keyterms": ["IDV", "NCB"], "unknown_key": "x"});
        let url = stream_url(&params(extra)).unwrap();
        assert_eq!(
            url.as_str(),
            "wss://api.sarvam.ai/speech-to-text/ws?language-code=hi-IN&model=saaras%3Av3&sample_rate=8000\
             &vad_signals=true&flush_signal=true&mode=codemix&high_vad_sensitivity=true&min_speech_frames=3\
             &keyterms=%5B%22IDV%22%2C%22NCB%22%5D"
        );
        let mut bad_rate = params(json!({}));
        bad_rate.sample_rate = 24000;
        assert!(matches!(stream_url(&bad_rate), Err(ProviderError::Connect { .. })));
    }

    #[test]
    fn language_codes() {
        assert_eq!(language_code("hi").as_deref(), Some("hi-IN"));
        assert_eq!(language_code("TA-in").as_deref(), Some("ta-IN"));
        assert_eq!(language_code("or").as_deref(), Some("od-IN"));
        assert_eq!(language_code("en-US").as_deref(), Some("en-IN"));
        assert_eq!(language_code("fr-FR").as_deref(), Some("fr-FR"));
        assert_eq!(language_code("multi"), None);
    }

    #[test]
    fn audio_is_base64_json() {
        let Message::Text(text) = dialect().audio(vec![1, 0, 255, 127]) else { panic!() };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(v, json!({"audio":{"data":"AQD/fw==","sample_rate":8000,"encoding":"audio/wav"}}));
        let Message::Text(text) = dialect().keepalive() else { panic!() };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(v["audio"]["data"].as_str().unwrap()).unwrap().len(),
            1600
        );
    }

    /// Server shapes from wire-protocols-2 §5a ("Server → client").
    #[test]
    fn server_messages() {
        let mut d = dialect();
        let started = d.on_text(
            r#"{"type":"events","data":{"event_type":"vad","timestamp":"2026-08-20T10:15:02Z","signal_type":"START_SPEECH","occured_at":1787200000.12}}"#,
        );
        assert_eq!(started.events, vec![SttEvent::SpeechStarted]);
        assert!(d.on_text(r#"{"type":"events","data":{"signal_type":"END_SPEECH"}}"#).events.is_empty());
        d.finalize();
        let data = d.on_text(
            r#"{"type":"data","data":{"request_id":"r","transcript":"मेरी पॉलिसी कब खत्म होगी","timestamps":null,
            "diarized_transcript":null,"language_code":"hi-IN","language_probability":0.97,
            "metrics":{"audio_duration":2.4,"processing_latency":0.31}}}"#,
        );
        let [SttEvent::Transcript(t), SttEvent::UtteranceEnd] = data.events.as_slice() else { panic!("{data:?}") };
        assert_eq!(
            (t.text.as_str(), t.is_final, t.speech_final, t.from_finalize),
            ("मेरी पॉलिसी कब खत्म होगी", true, true, true)
        );
        assert!((t.duration - 2.4).abs() < 1e-9);
        // The flush was answered: the next utterance is Sarvam's own.
        let next = d.on_text(r#"{"type":"data","data":{"transcript":"हाँ"}}"#);
        assert!(matches!(&next.events[0], SttEvent::Transcript(t) if !t.from_finalize));
        assert!(d.on_text(r#"{"type":"data","data":{"transcript":"  "}}"#).events.is_empty());
        let error = d.on_text(r#"{"type":"error","data":{"error":"Invalid audio format","code":"invalid_audio"}}"#);
        assert!(matches!(&error.events[0], SttEvent::Error(ProviderError::Remote { detail, .. })
            if detail == "Invalid audio format (invalid_audio)"));
        assert!(d.on_text("not json").events.is_empty());
    }
}
