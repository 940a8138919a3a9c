//! Sarvam streaming STT double: `GET /speech-to-text/ws` (wire-protocols-2 §5a, the generally
//! available socket).
//!
//! Strict like the service: the key in `api-subscription-key` (missing: HTTP 401, refused:
//! 403), the connection configured by its query (`language-code` with a hyphen, `sample_rate`
//! 8000 or 16000, booleans as `"true"`/`"false"`; a wrong value refuses the upgrade with 400),
//! audio as base64 inside `{"audio":{"data","sample_rate","encoding":"audio/wav"}}` text frames
//! (anything else is answered `{"type":"error",…}` and the socket closes). Utterance N of a
//! connection "is" the script's `stt_transcripts[N]`: with `vad_signals=true` START_SPEECH and
//! END_SPEECH events frame it, and `--stt-latency-ms` after it ends one `data` message carries
//! its whole transcript (no interims, as on the real socket). `{"type":"flush"}` (honoured with
//! `flush_signal=true`) delivers the transcript at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::audio::DetEvent;
use crate::stt_soniox::{serve, Listener, ScriptedCaller, Step};
use crate::tts_sarvam::{http_error, refuse_bad_key};
use crate::SimState;

/// `language-code` values of the streaming socket (saaras adds the longer tail).
pub const LANGUAGES: [&str; 24] = [
    "unknown", "hi-IN", "bn-IN", "gu-IN", "kn-IN", "ml-IN", "mr-IN", "od-IN", "pa-IN", "ta-IN", "te-IN", "en-IN",
    "as-IN", "ur-IN", "ne-IN", "kok-IN", "ks-IN", "sd-IN", "sa-IN", "sat-IN", "mni-IN", "brx-IN", "mai-IN", "doi-IN",
];
/// Models; saarika/saaras v2.5 may be retired (UNCERTAIN), so they are still accepted.
pub const MODELS: [&str; 4] = ["saaras:v4", "saaras:v3", "saarika:v2.5", "saaras:v2.5"];
const MODES: [&str; 5] = ["transcribe", "translate", "verbatim", "translit", "codemix"];
const CODECS: [&str; 4] = ["wav", "pcm_s16le", "pcm_l16", "pcm_raw"];
const BOOLEAN_PARAMS: [&str; 3] = ["vad_signals", "high_vad_sensitivity", "flush_signal"];

/// The connection settings the double acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamParams {
    pub sample_rate: u32,
    pub vad_signals: bool,
    pub flush_signal: bool,
    pub language: String,
}

/// Validate the query of the upgrade request.
pub fn parse_params(q: &HashMap<String, String>) -> Result<StreamParams, String> {
    if q.contains_key("language_code") {
        return Err("unknown parameter language_code: this endpoint takes language-code".into());
    }
    let language = q.get("language-code").cloned().unwrap_or_else(|| "unknown".into());
    if !LANGUAGES.contains(&language.as_str()) {
        return Err(format!("language-code {language:?} is not supported"));
    }
    let model = q.get("model").map(String::as_str).unwrap_or("saaras:v3");
    if !MODELS.contains(&model) {
        return Err(format!("model {model:?} is not supported; use one of {MODELS:?}"));
    }
    if let Some(mode) = q.get("mode") {
        if !MODES.contains(&mode.as_str()) || !model.starts_with("saaras:v") || model.ends_with("v2.5") {
            return Err(format!("mode {mode:?} is not available with {model}"));
        }
    }
    let sample_rate = match q.get("sample_rate").map(String::as_str) {
        None | Some("16000") => 16000,
        Some("8000") => 8000,
        Some(other) => return Err(format!("sample_rate {other:?} is not supported; use 8000 or 16000")),
    };
    if let Some(codec) = q.get("input_audio_codec").filter(|c| !CODECS.contains(&c.as_str())) {
        return Err(format!("input_audio_codec {codec:?} is not supported; use one of {CODECS:?}"));
    }
    let mut flags = [false; 3];
    for (flag, key) in flags.iter_mut().zip(BOOLEAN_PARAMS) {
        *flag = match q.get(key).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("{key} must be \"true\" or \"false\", got {other:?}")),
        };
    }
    Ok(StreamParams { sample_rate, vad_signals: flags[0], flush_signal: flags[2], language })
}

pub async fn handler(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(refused) = refuse_bad_key(&headers) {
        return refused;
    }
    let params = match parse_params(&q) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("sarvam stt: rejected upgrade: {e}");
            return http_error(StatusCode::BAD_REQUEST, &e);
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rej) => return rej.into_response(),
    };
    state.counters.sarvam_stt_connections.fetch_add(1, Ordering::Relaxed);
    let idle = state.stt_idle_timeout;
    ws.read_buffer_size(crate::WS_READ_BUFFER).on_upgrade(move |socket| serve(socket, Conn::new(state, params), idle))
}

fn error_json(code: &str, message: &str) -> String {
    json!({"type": "error", "data": {"error": message, "code": code}}).to_string()
}

struct Conn {
    params: StreamParams,
    caller: ScriptedCaller,
    /// The utterance being heard: (transcript, onset ms).
    current: Option<(String, u64)>,
    /// Ended utterances: (due, transcript, audio seconds).
    pending: VecDeque<(Instant, String, f64)>,
    out: Vec<String>,
}

impl Conn {
    fn new(state: Arc<SimState>, params: StreamParams) -> Self {
        let caller = ScriptedCaller::new(state, params.sample_rate);
        Self { params, caller, current: None, pending: VecDeque::new(), out: Vec::new() }
    }

    fn vad_event(&mut self, signal: &str) {
        if self.params.vad_signals {
            let now = chrono::Utc::now();
            let at = now.timestamp_millis() as f64 / 1000.0;
            let timestamp = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            // `occured_at` is Sarvam's spelling.
            let data = json!({"event_type": "vad", "timestamp": timestamp, "signal_type": signal, "occured_at": at});
            self.out.push(json!({"type": "events", "data": data}).to_string());
        }
    }

    fn transcript(&mut self, text: &str, audio_secs: f64) {
        let language_code = if self.params.language == "unknown" { "hi-IN" } else { self.params.language.as_str() };
        let mut data = json!({"request_id": uuid::Uuid::new_v4().to_string(), "transcript": text, "timestamps": null,
            "diarized_transcript": null, "language_code": language_code,
            "metrics": {"audio_duration": audio_secs, "processing_latency": 0.05}});
        // Only an auto-detected language comes with a probability.
        data["language_probability"] = if self.params.language == "unknown" { json!(0.97) } else { Value::Null };
        self.out.push(json!({"type": "data", "data": data}).to_string());
    }

    fn on_event(&mut self, ev: DetEvent) {
        match ev {
            DetEvent::Onset { at_ms } => {
                let transcript = self.caller.next_transcript();
                self.current = Some((transcript, at_ms));
                self.vad_event("START_SPEECH");
            }
            DetEvent::Interim { .. } => {}
            DetEvent::End { onset_ms, end_ms } => {
                if let Some((transcript, _)) = self.current.take() {
                    self.vad_event("END_SPEECH");
                    let due = Instant::now() + self.caller.latency();
                    self.pending.push_back((due, transcript, end_ms.saturating_sub(onset_ms) as f64 / 1000.0));
                }
            }
        }
    }

    /// `{"type":"flush"}`: transcripts of everything heard, now.
    fn flush(&mut self) {
        while let Some((_, text, secs)) = self.pending.pop_front() {
            self.transcript(&text, secs);
        }
        if let Some(DetEvent::End { onset_ms, end_ms }) = self.caller.detector().force_end() {
            if let Some((text, _)) = self.current.take() {
                self.transcript(&text, end_ms.saturating_sub(onset_ms) as f64 / 1000.0);
            }
        }
    }

    /// `{"audio":{…}}`: Err is the error message that closes the socket.
    fn on_audio(&mut self, audio: &Value) -> Result<(), String> {
        if audio.get("encoding").and_then(Value::as_str) != Some("audio/wav") {
            return Err("audio.encoding must be \"audio/wav\"".into());
        }
        let rate_ok = match audio.get("sample_rate") {
            Some(Value::Number(n)) => n.as_u64().is_some(),
            // The SDK types it as an int; other clients send the digits as a string.
            Some(Value::String(s)) => s.parse::<u32>().is_ok(),
            _ => false,
        };
        if !rate_ok {
            return Err("audio.sample_rate is required (an integer)".into());
        }
        let data = audio.get("data").and_then(Value::as_str).ok_or("audio.data must be a base64 string")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("audio.data is not base64: {e}"))?;
        // A WAV-wrapped chunk: skip its header (44 bytes for the canonical PCM layout).
        let pcm = if bytes.starts_with(b"RIFF") && bytes.len() >= 44 { &bytes[44..] } else { &bytes[..] };
        let mut events = Vec::new();
        self.caller.hear(pcm, &mut events);
        for ev in events {
            self.on_event(ev);
        }
        Ok(())
    }
}

impl Listener for Conn {
    fn on_binary(&mut self, _bytes: &[u8]) -> Step {
        self.out.push(error_json("invalid_request", "Binary frames are not supported; send audio as JSON."));
        Step::Close(1003, "binary frames are not supported".into())
    }

    fn on_text(&mut self, text: &str) -> Step {
        let v: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                self.out.push(error_json("invalid_request", "Messages must be JSON objects."));
                return Step::Close(1008, "invalid message".into());
            }
        };
        if let Some(audio) = v.get("audio").filter(|_| v.get("type").is_none()) {
            return match self.on_audio(audio) {
                Ok(()) => Step::Continue,
                Err(e) => {
                    self.out.push(error_json("invalid_audio", &e));
                    Step::Close(1008, "invalid audio message".into())
                }
            };
        }
        match v.get("type").and_then(Value::as_str) {
            Some("flush") if self.params.flush_signal => {
                self.flush();
                Step::Continue
            }
            // Without flush_signal=true the server ignores flushes.
            Some("flush") => Step::Continue,
            Some("config") if v.get("prompt").is_none_or(Value::is_string) => Step::Continue,
            // livekit's end-of-stream message (UNCERTAIN on the real service): accepted.
            Some("end_of_stream") => {
                self.flush();
                Step::Close(1000, String::new())
            }
            other => {
                self.out.push(error_json("invalid_request", &format!("unknown message type {other:?}")));
                Step::Close(1008, "invalid message".into())
            }
        }
    }

    fn on_time(&mut self, now: Instant) {
        while self.pending.front().is_some_and(|(due, ..)| *due <= now) {
            if let Some((_, text, secs)) = self.pending.pop_front() {
                self.transcript(&text, secs);
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|(due, ..)| *due)
    }

    fn outbox(&mut self) -> &mut Vec<String> {
        &mut self.out
    }

    fn on_idle(&mut self) -> (u16, String) {
        tracing::info!("sarvam stt: no input; closing");
        (1008, "inactivity timeout".into())
    }
}

/// A query map from pairs, for the doubles' parameter tests.
#[cfg(test)]
pub(crate) fn query_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use query_map as q;

    #[test]
    fn query_is_validated() {
        let p = parse_params(&q(&[
            ("language-code", "hi-IN"),
            ("model", "saaras:v3"),
            ("sample_rate", "8000"),
            ("vad_signals", "true"),
            ("flush_signal", "true"),
            ("mode", "codemix"),
        ]))
        .unwrap();
        assert_eq!(
            p,
            StreamParams { sample_rate: 8000, vad_signals: true, flush_signal: true, language: "hi-IN".into() }
        );
        assert_eq!(parse_params(&q(&[])).unwrap().sample_rate, 16000);
        for bad in [
            q(&[("language_code", "hi-IN")]),
            q(&[("language-code", "hi")]),
            q(&[("model", "nova-3")]),
            q(&[("sample_rate", "22050")]),
            q(&[("vad_signals", "yes")]),
            q(&[("input_audio_codec", "mp3")]),
            q(&[("model", "saarika:v2.5"), ("mode", "translate")]),
        ] {
            assert!(parse_params(&bad).is_err(), "{bad:?}");
        }
    }
}
