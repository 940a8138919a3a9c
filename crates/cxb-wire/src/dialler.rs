//! The telephony dialler WebSocket protocol (contract §6.1, wire-protocols §7): JSON text frames.
//! Parsing is liberal (numbers or strings for numeric fields, extra fields ignored, optional
//! fields may be missing); what the worker sends is exactly the documented shape.

use serde::Serialize;
use serde_json::{Map, Value};

/// Why an inbound frame could not be understood. Each maps to a clear log line (and, for
/// handshake errors, a close reason).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DiallerError {
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    #[error("frame is not a JSON object with a string \"event\" field")]
    NoEvent,
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    #[error("event {event:?}: field {field:?} is missing or has the wrong type")]
    BadField { event: &'static str, field: &'static str },
    #[error("media payload is not valid base64")]
    BadBase64,
    #[error("media payload has an odd number of bytes ({0}); LINEAR16 needs whole samples")]
    OddPcm(usize),
}

/// `mediaFormat` of the `start` event.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaFormat {
    pub encoding: String,
    /// `None` when the frame names no rate (8000 then, unless the encoding label carries one).
    pub sample_rate: Option<u32>,
    pub channels: u32,
}

/// A parsed dialler → bot frame.
#[derive(Debug, Clone, PartialEq)]
pub enum DiallerInbound {
    /// Every field except `event`, kept verbatim: it is forwarded as `connected_event`.
    Connected(Map<String, Value>),
    Start {
        stream_id: Option<String>,
        media_format: Option<MediaFormat>,
    },
    Answer,
    /// Decoded LINEAR16 little-endian samples.
    Media(Vec<i16>),
    HangupCall {
        disconnected_by: Option<String>,
    },
    Mark {
        name: String,
    },
}

impl DiallerInbound {
    /// Parse one text frame. Never panics on any input.
    pub fn parse(text: &str) -> Result<Self, DiallerError> {
        // Hot path: 50 media frames a second per call. Decode them from a borrowed view instead
        // of building a generic JSON tree.
        if let Ok(MediaPeek { event, payload: Some(payload) }) = serde_json::from_str::<MediaPeek>(text) {
            if event == "media" {
                return Ok(Self::Media(decode_linear16(&payload)?));
            }
        }
        let v: Value = serde_json::from_str(text).map_err(|e| DiallerError::NotJson(e.to_string()))?;
        let Value::Object(mut obj) = v else { return Err(DiallerError::NoEvent) };
        let event = match obj.remove("event") {
            Some(Value::String(s)) => s,
            _ => return Err(DiallerError::NoEvent),
        };
        match event.as_str() {
            "connected" => Ok(Self::Connected(obj)),
            "start" => {
                let stream_id = opt_str(&obj, "streamId");
                let media_format =
                    match obj.get("mediaFormat") {
                        None | Some(Value::Null) => None,
                        Some(Value::Object(mf)) => Some(MediaFormat {
                            encoding: mf.get("encoding").and_then(Value::as_str).unwrap_or("LINEAR").to_string(),
                            sample_rate: match mf.get("sampleRate").or_else(|| mf.get("sample_rate")) {
                                None | Some(Value::Null) => None,
                                Some(Value::String(s)) => {
                                    Some(crate::serde_util::parse_sample_rate(s).ok_or(DiallerError::BadField {
                                        event: "start",
                                        field: "mediaFormat.sampleRate",
                                    })?)
                                }
                                Some(v) => Some(as_u32(v).ok_or(DiallerError::BadField {
                                    event: "start",
                                    field: "mediaFormat.sampleRate",
                                })?),
                            },
                            channels: match mf.get("channels") {
                                None | Some(Value::Null) => 1,
                                Some(v) => as_u32(v)
                                    .ok_or(DiallerError::BadField { event: "start", field: "mediaFormat.channels" })?,
                            },
                        }),
                        Some(_) => return Err(DiallerError::BadField { event: "start", field: "mediaFormat" }),
                    };
                Ok(Self::Start { stream_id, media_format })
            }
            "answer" => Ok(Self::Answer),
            "media" => {
                // Some diallers nest the payload like Twilio (`media.payload`); accept both.
                let payload = obj
                    .get("payload")
                    .and_then(Value::as_str)
                    .or_else(|| obj.get("media").and_then(|m| m.get("payload")).and_then(Value::as_str))
                    .ok_or(DiallerError::BadField { event: "media", field: "payload" })?;
                Ok(Self::Media(decode_linear16(payload)?))
            }
            "hangup-call" => Ok(Self::HangupCall { disconnected_by: opt_str(&obj, "disconnectedBy") }),
            "mark" => {
                let name = match obj.get("mark") {
                    Some(Value::Object(m)) => opt_str(m, "name"),
                    _ => opt_str(&obj, "name"),
                }
                .ok_or(DiallerError::BadField { event: "mark", field: "mark.name" })?;
                Ok(Self::Mark { name })
            }
            _ => Err(DiallerError::UnknownEvent(truncate(&event, 64))),
        }
    }
}

/// The fields of a flat `media` frame, borrowed from the input where possible.
#[derive(serde::Deserialize)]
struct MediaPeek<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<std::borrow::Cow<'a, str>>,
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
            .and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Decode a base64 LINEAR16 little-endian payload into samples.
pub fn decode_linear16(b64: &str) -> Result<Vec<i16>, DiallerError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| DiallerError::BadBase64)?;
    if bytes.len() % 2 != 0 {
        return Err(DiallerError::OddPcm(bytes.len()));
    }
    Ok(bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect())
}

/// Encode samples as base64 LINEAR16 little-endian.
pub fn encode_linear16(samples: &[i16]) -> String {
    use base64::Engine;
    let mut bytes = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Identity of the call leg, copied onto every bot → dialler frame.
#[derive(Debug, Clone, Default)]
pub struct LegIdentity {
    pub stream_id: String,
    pub caller_id: String,
    pub did: String,
    pub call_direction: String,
    /// The identity fields JSON-escaped once: `reverse-media` goes out 50 times a second.
    #[doc(hidden)]
    pub escaped: std::sync::OnceLock<[String; 4]>,
}

/// `reverse-media`: one chunk of bot audio, with every documented field.
#[derive(Debug, Serialize)]
pub struct ReverseMedia<'a> {
    pub event: &'static str,
    pub chunk: u64,
    pub did: &'a str,
    pub payload: String,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub timestamp: String,
    #[serde(rename = "streamId")]
    pub stream_id: &'a str,
    #[serde(rename = "callerId")]
    pub caller_id: &'a str,
    pub chunk_durn_ms: u32,
    #[serde(rename = "callDirection")]
    pub call_direction: &'a str,
    pub encoding: &'static str,
    #[serde(rename = "RevMediaQ")]
    pub rev_media_q: u32,
    pub source: &'static str,
}

impl LegIdentity {
    pub fn reverse_media(&self, chunk: u64, samples: &[i16], chunk_durn_ms: u32, timestamp: String) -> String {
        use std::fmt::Write;
        // Field order and names as `ReverseMedia` (the documented frame); the identity fields are
        // escaped once per call and the base64 payload needs no escaping.
        let [did, stream_id, caller_id, direction] = self.escaped.get_or_init(|| {
            let esc = |v: &str| serde_json::to_string(v).expect("strings serialise");
            [esc(&self.did), esc(&self.stream_id), esc(&self.caller_id), esc(&self.call_direction)]
        });
        let payload = encode_linear16(samples);
        let mut out = String::with_capacity(payload.len() + 320);
        let _ = write!(
            out,
            r#"{{"event":"reverse-media","chunk":{chunk},"did":{did},"payload":"{payload}","timestamp":{ts},"streamId":{stream_id},"callerId":{caller_id},"chunk_durn_ms":{chunk_durn_ms},"callDirection":{direction},"encoding":"LINEAR","RevMediaQ":0,"source":"ai"}}"#,
            ts = serde_json::to_string(&timestamp).expect("strings serialise"),
        );
        out
    }

    /// The same frame built with serde, for tests comparing the fast path.
    pub fn reverse_media_serde(&self, chunk: u64, samples: &[i16], chunk_durn_ms: u32, timestamp: String) -> String {
        let msg = ReverseMedia {
            event: "reverse-media",
            chunk,
            did: &self.did,
            payload: encode_linear16(samples),
            timestamp,
            stream_id: &self.stream_id,
            caller_id: &self.caller_id,
            chunk_durn_ms,
            call_direction: &self.call_direction,
            encoding: "LINEAR",
            rev_media_q: 0,
            source: "ai",
        };
        serde_json::to_string(&msg).expect("plain struct serialises")
    }

    pub fn reverse_media_stop(&self) -> String {
        serde_json::json!({"event":"reverse-media-stop","callerId":self.caller_id,"streamId":self.stream_id})
            .to_string()
    }

    pub fn reverse_hangup_call(&self) -> String {
        serde_json::json!({"event":"reverse-hangup-call","streamId":self.stream_id,"callerId":self.caller_id,
            "source":"ai","message":"Call ended by bot"})
        .to_string()
    }

    pub fn reverse_call_transfer(&self, transfer_to: &str, reason: &str) -> String {
        serde_json::json!({"event":"reverse-call-transfer","streamId":self.stream_id,"callerId":self.caller_id,
            "transferTo":transfer_to,"source":"ai","reason":reason})
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_frames_parse() {
        let c = DiallerInbound::parse(r#"{"event":"connected","callerId":"+9198","did":"+9111","callDirection":"incoming","streamId":"s1","crm_id":"42"}"#).unwrap();
        let DiallerInbound::Connected(m) = c else { panic!() };
        assert_eq!(m["crm_id"], "42");
        assert!(!m.contains_key("event"));
        let s = DiallerInbound::parse(
            r#"{"event":"start","streamId":"s1","mediaFormat":{"encoding":"LINEAR","sampleRate":8000,"channels":1}}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            DiallerInbound::Start {
                stream_id: Some("s1".into()),
                media_format: Some(MediaFormat { encoding: "LINEAR".into(), sample_rate: Some(8000), channels: 1 })
            }
        );
        assert_eq!(DiallerInbound::parse(r#"{"event":"answer"}"#).unwrap(), DiallerInbound::Answer);
    }

    #[test]
    fn media_round_trips_and_bad_payloads_are_errors() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN];
        let frame = format!(r#"{{"event":"media","payload":"{}"}}"#, encode_linear16(&samples));
        assert_eq!(DiallerInbound::parse(&frame).unwrap(), DiallerInbound::Media(samples.to_vec()));
        assert_eq!(DiallerInbound::parse(r#"{"event":"media","payload":"!!!"}"#), Err(DiallerError::BadBase64));
        assert_eq!(DiallerInbound::parse(r#"{"event":"media","payload":"AA=="}"#), Err(DiallerError::OddPcm(1)));
        assert!(matches!(DiallerInbound::parse(r#"{"event":"media"}"#), Err(DiallerError::BadField { .. })));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for f in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"event":5}"#,
            r#"{"event":"nope"}"#,
            "\u{0}",
            r#"{"event":"start","mediaFormat":{"sampleRate":"x"}}"#,
        ] {
            assert!(DiallerInbound::parse(f).is_err(), "{f}");
        }
    }

    #[test]
    fn fast_reverse_media_is_byte_identical_to_serde() {
        let leg = LegIdentity {
            stream_id: "s\"1".into(),
            caller_id: "+91 98".into(),
            did: "d\\x".into(),
            call_direction: "incoming".into(),
            ..Default::default()
        };
        let samples: Vec<i16> = (0..160).map(|i| (i * 37 - 3000) as i16).collect();
        assert_eq!(
            leg.reverse_media(7, &samples, 20, "2026-04-24 14:30:00".into()),
            leg.reverse_media_serde(7, &samples, 20, "2026-04-24 14:30:00".into())
        );
    }

    #[test]
    fn reverse_media_carries_every_documented_field() {
        let leg = LegIdentity {
            stream_id: "s".into(),
            caller_id: "c".into(),
            did: "d".into(),
            call_direction: "incoming".into(),
            ..Default::default()
        };
        let v: Value =
            serde_json::from_str(&leg.reverse_media(42, &[0; 160], 20, "2026-04-24 14:30:00".into())).unwrap();
        for k in [
            "event",
            "chunk",
            "did",
            "payload",
            "timestamp",
            "streamId",
            "callerId",
            "chunk_durn_ms",
            "callDirection",
            "encoding",
            "RevMediaQ",
            "source",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["chunk"], 42);
        assert_eq!(v["encoding"], "LINEAR");
        assert_eq!(v["source"], "ai");
    }
}
