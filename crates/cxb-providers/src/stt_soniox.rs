//! Soniox real-time STT (`/transcribe-websocket`, wire-protocols-2 §1).
//!
//! The socket opens with one JSON configuration message, then carries binary LINEAR16 audio.
//! Every server message lists the tokens that became final since the last one, followed by the
//! current non-final tail; turning them into transcripts follows pipecat's Soniox service
//! (`services/soniox/stt.py`, read at acead05): final tokens accumulate and are shown as interim
//! text until an end marker arrives (`<end>` from Soniox's endpoint detection, `<fin>` after our
//! `finalize`), which turns the accumulated text into one whole-utterance final transcript.
//!
//! Turn endings (contract §4.2): by default Soniox detects the endpoint itself
//! (`enable_endpoint_detection: true`, `<end>` closes the caller's turn: a final with
//! `speech_final` plus `UtteranceEnd`). With `stt.extra.vad_force_turn_endpoint = true` our VAD
//! decides instead: endpoint detection is off and `finalize()` sends `{"type":"finalize"}`.
//!
//! Authentication: the current form is `Authorization: Bearer <key>` on the upgrade; the
//! deprecated form (the key as `api_key` in the configuration message, refused by Soniox after
//! 2027-01-15) is used when `stt.extra.api_key_in_config` is true. Never both: Soniox rejects a
//! connection that carries the key in both places.

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

pub const PROVIDER: &str = crate::registry::SONIOX.name;
/// API root as the Soniox SDKs take it; regional roots are `wss://stt-rt.eu.soniox.com` and
/// `wss://stt-rt.jp.soniox.com`.
pub const DEFAULT_BASE_URL: &str = crate::registry::SONIOX.api_root;
/// The original's default model (contract §4.2).
pub const DEFAULT_MODEL: &str = crate::registry::SONIOX.default_model;
const PATH: &str = "/transcribe-websocket";
const END_MARKER: &str = "<end>";
const FINALIZE_MARKER: &str = "<fin>";
/// Documented configuration fields taken from `stt.extra` as given (wire-protocols-2 §1).
const PASSTHROUGH_KEYS: &[&str] = &[
    "language_hints_strict",
    "context",
    "enable_speaker_diarization",
    "enable_language_identification",
    "client_reference_id",
    "max_endpoint_delay_ms",
    "endpoint_sensitivity",
    "endpoint_latency_adjustment_level",
    "translation",
];
/// Final tokens held while waiting for an end marker. A server that never sends one (endpoint
/// detection off and no `finalize`) must not grow the buffer for the whole call: past this the
/// text is delivered as a final.
const MAX_HELD_TOKENS: usize = 2000;
/// Language values that mean "no hint" rather than a language.
const NO_LANGUAGE: &[&str] = &["", "multi", "auto", "unknown"];

/// Soniox may close a stream that gets neither audio nor keepalive for 20 s; soniox-js and
/// livekit send a keepalive every 5 s while paused.
const TIMING: Timing = Timing { keepalive: Duration::from_secs(5), close_wait: Duration::from_secs(3) };

/// Open a Soniox stream: handshake, configuration message, then the shared session loop.
pub async fn connect(params: &SttParams) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    connect_with(params, TIMING).await
}

pub(crate) async fn connect_with(
    params: &SttParams,
    timing: Timing,
) -> Result<(SttHandle, mpsc::Receiver<SttEvent>), ProviderError> {
    let options = Options::from_extra(&params.extra);
    let url = transcribe_url(params)?;
    let headers: Vec<(&'static str, String)> = if options.api_key_in_config {
        Vec::new()
    } else {
        vec![("authorization", format!("Bearer {}", params.api_key))]
    };
    let mut socket = ws::connect(PROVIDER, &url, &headers, params.connect_timeout).await?;
    ws::send_json(PROVIDER, &mut socket, &config_message(params, &options)).await?;
    let dialect = Soniox { finalize: options.vad_force_turn_endpoint, transcript: TokenAssembler::default() };
    Ok(stt_session::spawn(socket, dialect, timing))
}

pub(crate) fn transcribe_url(params: &SttParams) -> Result<Url, ProviderError> {
    let base = if params.base_url.is_empty() { DEFAULT_BASE_URL } else { params.base_url.as_str() };
    ws::ws_url(PROVIDER, base, PATH)
}

/// `stt.extra` switches read by this client (not sent to Soniox).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Options {
    /// Our VAD ends turns with `finalize` (pipecat's default); ours is false (contract §4.2).
    pub vad_force_turn_endpoint: bool,
    /// Deprecated authentication: the key inside the configuration message.
    pub api_key_in_config: bool,
}

impl Options {
    pub fn from_extra(extra: &Map<String, Value>) -> Self {
        let flag = |key: &str| match extra.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        Self { vad_force_turn_endpoint: flag("vad_force_turn_endpoint"), api_key_in_config: flag("api_key_in_config") }
    }
}

/// The first message on the socket. Unset optional fields are omitted, as livekit and the
/// Soniox SDKs do.
pub(crate) fn config_message(params: &SttParams, options: &Options) -> Value {
    let model = if params.model.is_empty() { DEFAULT_MODEL } else { params.model.as_str() };
    let mut config = json!({
        "model": model,
        "audio_format": "pcm_s16le",
        "sample_rate": params.sample_rate,
        "num_channels": 1,
        "enable_endpoint_detection": !options.vad_force_turn_endpoint,
    });
    let Some(obj) = config.as_object_mut() else { return config };
    if options.api_key_in_config {
        obj.insert("api_key".into(), json!(params.api_key));
    }
    if let Some(hints) = language_hints(params) {
        obj.insert("language_hints".into(), json!(hints));
    }
    for key in PASSTHROUGH_KEYS {
        if let Some(value) = params.extra.get(*key).filter(|v| !v.is_null()) {
            obj.insert((*key).to_string(), value.clone());
        }
    }
    config
}

/// `extra.language_hints` when given (an array or one string), else the bot's `language`.
/// Regional codes are reduced to their base (`hi-IN` → `hi`) and duplicates dropped, keeping
/// the order, as pipecat does; `None` when nothing is left.
pub(crate) fn language_hints(params: &SttParams) -> Option<Vec<String>> {
    let given: Vec<&str> = match params.extra.get("language_hints") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split(',').collect(),
        _ => vec![params.language.as_str()],
    };
    let mut hints: Vec<String> = Vec::new();
    for code in given {
        let base = code.trim().split(['-', '_']).next().unwrap_or("").to_ascii_lowercase();
        if !NO_LANGUAGE.contains(&base.as_str()) && !hints.contains(&base) {
            hints.push(base);
        }
    }
    (!hints.is_empty()).then_some(hints)
}

#[derive(Default)]
pub(crate) struct Soniox {
    /// `finalize()` sends `{"type":"finalize"}` (only with `vad_force_turn_endpoint`).
    finalize: bool,
    transcript: TokenAssembler,
}

impl Dialect for Soniox {
    const PROVIDER: &'static str = PROVIDER;

    fn audio(&mut self, bytes: Vec<u8>) -> Message {
        Message::binary(bytes)
    }

    fn finalize(&mut self) -> Option<Message> {
        self.finalize.then(|| Message::text(json!({"type": "finalize"}).to_string()))
    }

    fn keepalive(&mut self) -> Message {
        Message::text(json!({"type": "keepalive"}).to_string())
    }

    /// An empty text frame asks Soniox to finalize everything, send `finished` and close.
    fn end_of_stream(&mut self) -> Option<Message> {
        Some(Message::text(""))
    }

    fn on_text(&mut self, text: &str) -> Parsed {
        match serde_json::from_str::<ServerMsg>(text) {
            Ok(msg) => self.transcript.on_message(msg),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring malformed soniox message");
                Parsed::default()
            }
        }
    }

    fn on_end(&mut self) -> Vec<SttEvent> {
        self.transcript.flush(false).into_iter().collect()
    }
}

/// One server message. `Option`s and loose types throughout: a missing field must not cost us
/// the message, and `error_code` is an int or a string depending on the server version.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ServerMsg {
    #[serde(default)]
    pub tokens: Vec<Token>,
    pub error_code: Option<Value>,
    pub error_message: Option<String>,
    pub finished: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Token {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub is_final: bool,
    pub start_ms: Option<f64>,
    pub end_ms: Option<f64>,
    pub confidence: Option<f32>,
}

/// Turns token messages into transcripts (pipecat's rules, module docs).
#[derive(Debug, Default)]
pub(crate) struct TokenAssembler {
    /// Final tokens since the last end marker.
    finals: Vec<Token>,
    /// Tokens were seen since the last end marker (for `SpeechStarted`).
    speaking: bool,
}

impl TokenAssembler {
    pub fn on_message(&mut self, mut msg: ServerMsg) -> Parsed {
        let mut events = Vec::new();
        let mut non_final: Vec<Token> = Vec::new();
        let tokens = std::mem::take(&mut msg.tokens);
        let had_tokens = !tokens.is_empty();
        for token in tokens {
            let marker = token.text == END_MARKER || token.text == FINALIZE_MARKER;
            if !marker && !self.speaking && !token.text.trim().is_empty() {
                self.speaking = true;
                events.push(SttEvent::SpeechStarted);
            }
            match (token.is_final, token.text.as_str()) {
                (true, END_MARKER) => {
                    if let Some(t) = self.flush(true) {
                        events.extend([t, SttEvent::UtteranceEnd]);
                    }
                }
                (true, FINALIZE_MARKER) => events.extend(self.flush(false)),
                (true, _) => {
                    self.finals.push(token);
                    if self.finals.len() >= MAX_HELD_TOKENS {
                        events.extend(self.flush(false));
                    }
                }
                (false, _) => non_final.push(token),
            }
        }
        // Non-final tokens replace last message's tail; finals show as interim until a marker.
        if had_tokens && (!self.finals.is_empty() || !non_final.is_empty()) {
            let text = join_tokens(self.finals.iter().chain(&non_final));
            if !text.is_empty() {
                let interim = transcript(&self.finals, &non_final, text, false);
                events.push(SttEvent::Transcript(interim));
            }
        }
        let failed = msg.error_code.as_ref().is_some_and(|c| !c.is_null()) || msg.error_message.is_some();
        if failed {
            // Whatever was heard before the error is still the caller's words.
            events.extend(self.flush(false));
            events.push(SttEvent::Error(ProviderError::Remote { provider: PROVIDER, detail: error_detail(&msg) }));
        }
        let finished = msg.finished == Some(true);
        if finished {
            events.extend(self.flush(false));
        }
        Parsed { events, finished }
    }

    /// The accumulated final tokens as one final transcript; `speech_final` for an endpoint
    /// (`<end>`), `from_finalize` otherwise (`<fin>`, end of stream).
    pub fn flush(&mut self, endpoint: bool) -> Option<SttEvent> {
        self.speaking = false;
        let finals = std::mem::take(&mut self.finals);
        let text = join_tokens(finals.iter());
        if text.is_empty() {
            return None;
        }
        let mut t = transcript(&finals, &[], text, true);
        t.speech_final = endpoint;
        t.from_finalize = !endpoint;
        Some(SttEvent::Transcript(t))
    }
}

/// Tokens carry their own leading spaces: concatenate as-is, trim the ends.
fn join_tokens<'a>(tokens: impl Iterator<Item = &'a Token>) -> String {
    tokens.map(|t| t.text.as_str()).collect::<String>().trim().to_string()
}

fn transcript(finals: &[Token], non_final: &[Token], text: String, is_final: bool) -> Transcript {
    let all = || finals.iter().chain(non_final);
    let confidences: Vec<f32> = all().filter_map(|t| t.confidence).collect();
    let confidence =
        if confidences.is_empty() { 0.0 } else { confidences.iter().sum::<f32>() / confidences.len() as f32 };
    let start_ms = all().find_map(|t| t.start_ms).unwrap_or(0.0);
    let end_ms = all().filter_map(|t| t.end_ms).next_back().unwrap_or(start_ms);
    Transcript {
        text,
        is_final,
        speech_final: false,
        from_finalize: false,
        confidence,
        start: start_ms / 1000.0,
        duration: ((end_ms - start_ms) / 1000.0).max(0.0),
    }
}

/// "400: Invalid model specified." (the code may be an int or a string).
fn error_detail(msg: &ServerMsg) -> String {
    let code = match &msg.error_code {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let message = msg.error_message.as_deref().unwrap_or("unknown error");
    if code.is_empty() {
        message.to_string()
    } else {
        format!("{code}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: Value) -> SttParams {
        SttParams {
            provider: "soniox".into(),
            base_url: String::new(),
            api_key: "sx-key".into(),
            model: String::new(),
            language: "hi-IN".into(),
            sample_rate: 8000,
            extra: extra.as_object().cloned().unwrap_or_default(),
            connect_timeout: Duration::from_secs(2),
        }
    }

    fn parse(assembler: &mut TokenAssembler, text: &str) -> Parsed {
        assembler.on_message(serde_json::from_str(text).unwrap())
    }

    fn texts(parsed: &Parsed) -> Vec<(String, bool, bool)> {
        parsed
            .events
            .iter()
            .filter_map(|e| match e {
                SttEvent::Transcript(t) => Some((t.text.clone(), t.is_final, t.speech_final)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn url_defaults_to_the_us_region() {
        assert_eq!(
            transcribe_url(&params(json!({}))).unwrap().as_str(),
            "wss://stt-rt.soniox.com/transcribe-websocket"
        );
    }

    #[test]
    fn language_hints_reduce_and_dedupe() {
        assert_eq!(language_hints(&params(json!({}))), Some(vec!["hi".to_string()]));
        let p = params(json!({"language_hints": ["hi-IN", "en-IN", "hi", "en-US"]}));
        assert_eq!(language_hints(&p), Some(vec!["hi".to_string(), "en".to_string()]));
        assert_eq!(language_hints(&params(json!({"language_hints": "ta, en"}))), Some(vec!["ta".into(), "en".into()]));
        let mut multi = params(json!({}));
        multi.language = "multi".into();
        assert_eq!(language_hints(&multi), None);
    }

    /// The message of wire-protocols-2 §1, built from a bot config.
    #[test]
    fn config_message_shape() {
        let extra = json!({"language_hints": ["hi", "en"], "language_hints_strict": false,
            "context": {"terms": ["IDV", "NCB"]}, "enable_language_identification": true,
            "client_reference_id": "call-7f3a", "vad_force_turn_endpoint": false, "should_interrupt": true,
            "enable_speaker_diarization": null});
        let p = params(extra);
        let options = Options::from_extra(&p.extra);
        assert_eq!(
            config_message(&p, &options),
            json!({"model":"stt-rt-v4","audio_format":"pcm_s16le","sample_rate":8000,"num_channels":1,
                "enable_endpoint_detection":true,"language_hints":["hi","en"],"language_hints_strict":false,
                "context":{"terms":["IDV","NCB"]},"enable_language_identification":true,
                "client_reference_id":"call-7f3a"})
        );
        let p = params(json!({"vad_force_turn_endpoint": true, "api_key_in_config": "true"}));
        let options = Options::from_extra(&p.extra);
        let config = config_message(&p, &options);
        assert_eq!(
            (config["enable_endpoint_detection"].as_bool(), config["api_key"].as_str()),
            (Some(false), Some("sx-key"))
        );
    }

    /// Messages shaped as in wire-protocols-2 §1 ("Result message", "Special tokens").
    #[test]
    fn tokens_become_interims_then_one_final() {
        let mut a = TokenAssembler::default();
        let first = parse(
            &mut a,
            r#"{"tokens":[{"text":"मेरा","start_ms":600,"end_ms":880,"confidence":0.97,"is_final":true,"language":"hi"},
            {"text":" पॉलिसी","start_ms":900,"end_ms":1320,"confidence":0.93,"is_final":true,"language":"hi"},
            {"text":" नंबर","start_ms":1340,"end_ms":1600,"confidence":0.71,"is_final":false,"language":"hi"}],
            "final_audio_proc_ms":1320,"total_audio_proc_ms":1640}"#,
        );
        assert_eq!(first.events[0], SttEvent::SpeechStarted);
        assert_eq!(texts(&first), vec![("मेरा पॉलिसी नंबर".to_string(), false, false)]);
        // The non-final tail is replaced, not appended.
        let second = parse(&mut a, r#"{"tokens":[{"text":" नंबरों","is_final":false}]}"#);
        assert_eq!(texts(&second), vec![("मेरा पॉलिसी नंबरों".to_string(), false, false)]);
        let end = parse(
            &mut a,
            r#"{"tokens":[{"text":" नंबर","start_ms":1340,"end_ms":1600,"confidence":0.9,"is_final":true},
            {"text":"<end>","is_final":true}]}"#,
        );
        assert_eq!(texts(&end), vec![("मेरा पॉलिसी नंबर".to_string(), true, true)]);
        assert_eq!(end.events.last(), Some(&SttEvent::UtteranceEnd));
        let SttEvent::Transcript(t) = &end.events[0] else { panic!() };
        assert!((t.start - 0.6).abs() < 1e-9 && (t.duration - 1.0).abs() < 1e-9, "{t:?}");
        // Nothing buffered: a lone marker says nothing.
        assert_eq!(parse(&mut a, r#"{"tokens":[{"text":"<fin>","is_final":true}]}"#), Parsed::default());
    }

    #[test]
    fn finalize_marker_errors_and_finish_flush_the_buffer() {
        let mut a = TokenAssembler::default();
        parse(&mut a, r#"{"tokens":[{"text":"yes","is_final":true}]}"#);
        let fin = parse(&mut a, r#"{"tokens":[{"text":" please","is_final":true},{"text":"<fin>","is_final":true}]}"#);
        let SttEvent::Transcript(t) = &fin.events[0] else { panic!("{fin:?}") };
        assert_eq!((t.text.as_str(), t.is_final, t.speech_final, t.from_finalize), ("yes please", true, false, true));

        parse(&mut a, r#"{"tokens":[{"text":"half","is_final":true}]}"#);
        let failed = parse(
            &mut a,
            r#"{"error_code":503,"error_message":"Cannot continue request (code N). Please restart the request."}"#,
        );
        assert_eq!(texts(&failed), vec![("half".to_string(), true, false)]);
        assert!(matches!(failed.events.last(), Some(SttEvent::Error(ProviderError::Remote { detail, .. }))
            if detail == "503: Cannot continue request (code N). Please restart the request."));
        let string_code = parse(&mut a, r#"{"error_code":"401","error_message":"Invalid API key."}"#);
        assert!(
            matches!(&string_code.events[0], SttEvent::Error(ProviderError::Remote { detail, .. }) if detail == "401: Invalid API key.")
        );

        parse(&mut a, r#"{"tokens":[{"text":"bye","is_final":true}]}"#);
        let done =
            parse(&mut a, r#"{"tokens":[],"final_audio_proc_ms":95320,"total_audio_proc_ms":95320,"finished":true}"#);
        assert!(done.finished);
        assert_eq!(texts(&done), vec![("bye".to_string(), true, false)]);
    }

    /// Without end markers the held finals are bounded: the text comes out as a final.
    #[test]
    fn held_tokens_are_bounded() {
        let mut a = TokenAssembler::default();
        let tokens: Vec<Value> = (0..MAX_HELD_TOKENS).map(|_| json!({"text": " x", "is_final": true})).collect();
        let parsed = a.on_message(serde_json::from_value(json!({"tokens": tokens})).unwrap());
        let finals: Vec<usize> = parsed
            .events
            .iter()
            .filter_map(|e| match e {
                SttEvent::Transcript(t) if t.is_final => Some(t.text.split_whitespace().count()),
                _ => None,
            })
            .collect();
        assert_eq!(finals, [MAX_HELD_TOKENS]);
        assert!(a.finals.is_empty());
    }

    /// The configuration, then keepalives while no audio flows (short interval here).
    #[tokio::test]
    async fn keepalive_when_silent() {
        let texts = stt_session::tests::texts_while_idle(3, |base| async move {
            let timing = Timing { keepalive: Duration::from_millis(50), close_wait: Duration::from_millis(200) };
            connect_with(&SttParams { base_url: base, ..params(json!({})) }, timing).await
        })
        .await;
        assert_eq!(serde_json::from_str::<Value>(&texts[0]).unwrap()["model"], "stt-rt-v4");
        assert_eq!(texts[1..], [r#"{"type":"keepalive"}"#, r#"{"type":"keepalive"}"#]);
    }
}
