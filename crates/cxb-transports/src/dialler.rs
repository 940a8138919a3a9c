//! The telephony dialler WebSocket (contract §6.1): `connected` → `start` → `answer`, `media`,
//! `hangup-call`; bot side `reverse-media` (20 ms chunks), `reverse-media-stop`,
//! `reverse-hangup-call`, `reverse-call-transfer`.

use cxb_wire::dialler::{DiallerInbound, LegIdentity};

use crate::media::{self, Codec};
use crate::{CallMeta, HandshakeStep, Inbound, OutFrame, ProtocolError, Transport};

const PROTO: &str = "dialler";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitConnected,
    AwaitStart,
    AwaitAnswer,
    Running,
}

/// Dialler protocol state for one call.
#[derive(Debug)]
pub struct Dialler {
    phase: Phase,
    meta: CallMeta,
    leg: LegIdentity,
    chunk: u64,
    /// Wall clock for the `timestamp` field; injected so tests are deterministic.
    clock: fn() -> String,
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for `reverse-media`: formatted once per second per thread, not
/// once per 20 ms frame of every call.
fn wall_clock() -> String {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != now.timestamp() {
            *last = (now.timestamp(), now.format("%Y-%m-%d %H:%M:%S").to_string());
        }
        last.1.clone()
    })
}

impl Default for Dialler {
    fn default() -> Self {
        Self::new()
    }
}

impl Dialler {
    pub fn new() -> Self {
        Self::with_clock(wall_clock)
    }

    pub fn with_clock(clock: fn() -> String) -> Self {
        Self {
            phase: Phase::AwaitConnected,
            meta: CallMeta { sample_rate: 8000, call_direction: "incoming".into(), ..Default::default() },
            leg: LegIdentity::default(),
            chunk: 0,
            clock,
        }
    }

    fn parse(text: &str) -> Result<DiallerInbound, ProtocolError> {
        DiallerInbound::parse(text).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }

    fn sync_leg(&mut self) {
        self.leg = LegIdentity {
            stream_id: self.meta.stream_id.clone(),
            caller_id: self.meta.caller_id.clone(),
            did: self.meta.did.clone(),
            call_direction: self.meta.call_direction.clone(),
            ..Default::default()
        };
    }
}

fn str_field(m: &serde_json::Map<String, serde_json::Value>, k: &str) -> Option<String> {
    match m.get(k)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Transport for Dialler {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn supports_transfer(&self) -> bool {
        true
    }

    fn handshake_text(&mut self, text: &str) -> Result<HandshakeStep, ProtocolError> {
        let ev = Self::parse(text)?;
        match (self.phase, ev) {
            (Phase::AwaitConnected, DiallerInbound::Connected(fields)) => {
                self.meta.caller_id = str_field(&fields, "callerId").unwrap_or_default();
                self.meta.did = str_field(&fields, "did").unwrap_or_default();
                if let Some(d) = str_field(&fields, "callDirection") {
                    self.meta.call_direction = d;
                }
                self.meta.stream_id = str_field(&fields, "streamId").unwrap_or_default();
                self.meta.connected_event = fields;
                self.phase = Phase::AwaitStart;
                Ok(HandshakeStep::Continue)
            }
            (Phase::AwaitStart, DiallerInbound::Start { stream_id, media_format }) => {
                if let Some(s) = stream_id.filter(|s| !s.is_empty()) {
                    self.meta.stream_id = s;
                }
                if let Some(mf) = media_format {
                    // The dialler streams LINEAR16; `encoding` is "LINEAR", "LINEAR16",
                    // "audio/x-l16", "pcm_s16le", … in the wild — any PCM16 label (or none) is fine.
                    let (_, label_rate) =
                        media::check_label(PROTO, "start", "mediaFormat.encoding", &mf.encoding, &[Codec::Pcm16Le])?;
                    if mf.channels != 1 {
                        return Err(media::unplayable(
                            PROTO,
                            "start",
                            "mediaFormat.channels",
                            mf.channels,
                            "only mono audio is supported",
                        ));
                    }
                    let rate = mf.sample_rate.or(label_rate).unwrap_or(8000);
                    if rate != 8000 && rate != 16000 {
                        return Err(media::unplayable(
                            PROTO,
                            "start",
                            "mediaFormat.sampleRate",
                            rate,
                            "the dialler streams at 8000 or 16000 Hz",
                        ));
                    }
                    self.meta.sample_rate = rate;
                }
                if self.meta.stream_id.is_empty() {
                    return Err(ProtocolError::Handshake("no streamId in connected or start".into()));
                }
                self.sync_leg();
                self.phase = Phase::AwaitAnswer;
                Ok(HandshakeStep::MetaReady)
            }
            (Phase::AwaitAnswer, DiallerInbound::Answer) => {
                self.phase = Phase::Running;
                Ok(HandshakeStep::Answered { early_audio: None })
            }
            // The protocol allows starting on the first media when `answer` never comes.
            (Phase::AwaitAnswer, DiallerInbound::Media(samples)) => {
                self.phase = Phase::Running;
                Ok(HandshakeStep::Answered { early_audio: Some(samples) })
            }
            (phase, ev) => Err(ProtocolError::Handshake(format!(
                "unexpected {} while waiting for {}",
                event_name(&ev),
                match phase {
                    Phase::AwaitConnected => "connected",
                    Phase::AwaitStart => "start",
                    Phase::AwaitAnswer => "answer",
                    Phase::Running => "nothing",
                }
            ))),
        }
    }

    fn meta(&self) -> &CallMeta {
        &self.meta
    }

    fn on_text(&mut self, text: &str) -> Result<Inbound, ProtocolError> {
        match Self::parse(text)? {
            DiallerInbound::Media(samples) => Ok(Inbound::Audio(samples)),
            DiallerInbound::HangupCall { disconnected_by } => Ok(Inbound::Hangup { by: disconnected_by }),
            DiallerInbound::Mark { name } => Ok(Inbound::Mark(name)),
            DiallerInbound::Answer => Ok(Inbound::Ignored("duplicate answer")),
            DiallerInbound::Connected(_) | DiallerInbound::Start { .. } => {
                Ok(Inbound::Ignored("handshake event after answer"))
            }
        }
    }

    fn audio(&mut self, frame: &[i16], out: &mut Vec<OutFrame>) {
        self.chunk += 1;
        let ms = (frame.len() as u64 * 1000 / self.meta.sample_rate.max(1) as u64) as u32;
        out.push(OutFrame::Text(self.leg.reverse_media(self.chunk, frame, ms, (self.clock)())));
    }

    fn clear(&mut self, out: &mut Vec<OutFrame>) {
        out.push(OutFrame::Text(self.leg.reverse_media_stop()));
    }

    fn hang_up(&mut self, out: &mut Vec<OutFrame>) {
        out.push(OutFrame::Text(self.leg.reverse_media_stop()));
        out.push(OutFrame::Text(self.leg.reverse_hangup_call()));
    }

    fn transfer(&mut self, to: &str, reason: &str, out: &mut Vec<OutFrame>) -> Result<(), ProtocolError> {
        out.push(OutFrame::Text(self.leg.reverse_call_transfer(to, reason)));
        Ok(())
    }
}

fn event_name(ev: &DiallerInbound) -> &'static str {
    match ev {
        DiallerInbound::Connected(_) => "connected",
        DiallerInbound::Start { .. } => "start",
        DiallerInbound::Answer => "answer",
        DiallerInbound::Media(_) => "media",
        DiallerInbound::HangupCall { .. } => "hangup-call",
        DiallerInbound::Mark { .. } => "mark",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn clock() -> String {
        "2026-04-24 14:30:00".into()
    }

    #[test]
    fn the_wall_clock_is_utc_to_the_second_and_follows_time() {
        let parse = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap();
        let before = chrono::Utc::now().naive_utc() - chrono::Duration::seconds(1);
        let first = wall_clock();
        assert_eq!(first.len(), 19, "{first}");
        assert!(parse(&first) >= before, "{first}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(parse(&wall_clock()) > parse(&first), "the cached second moves on");
    }

    fn handshake(d: &mut Dialler) {
        assert_eq!(
            d.handshake_text(
                r#"{"event":"connected","callerId":"+9198","did":"+9111","callDirection":"outgoing","crm":"x"}"#
            )
            .unwrap(),
            HandshakeStep::Continue
        );
        assert_eq!(
            d.handshake_text(r#"{"event":"start","streamId":"st-1","mediaFormat":{"encoding":"LINEAR","sampleRate":8000,"channels":1}}"#).unwrap(),
            HandshakeStep::MetaReady
        );
        assert_eq!(d.handshake_text(r#"{"event":"answer"}"#).unwrap(), HandshakeStep::Answered { early_audio: None });
    }

    #[test]
    fn handshake_extracts_metadata() {
        let mut d = Dialler::with_clock(clock);
        handshake(&mut d);
        let m = d.meta();
        assert_eq!(
            (m.caller_id.as_str(), m.did.as_str(), m.stream_id.as_str(), m.call_direction.as_str()),
            ("+9198", "+9111", "st-1", "outgoing")
        );
        assert_eq!(m.connected_event["crm"], "x");
        assert!(!m.connected_event.contains_key("event"));
    }

    #[test]
    fn out_of_order_handshake_is_refused_with_a_clear_reason() {
        let mut d = Dialler::new();
        let e = d.handshake_text(r#"{"event":"answer"}"#).unwrap_err();
        assert_eq!(e.to_string(), "handshake: unexpected answer while waiting for connected");
        let mut d = Dialler::new();
        d.handshake_text(r#"{"event":"connected","callerId":"1"}"#).unwrap();
        assert!(d
            .handshake_text(r#"{"event":"media","payload":""}"#)
            .unwrap_err()
            .to_string()
            .contains("waiting for start"));
        let mut d = Dialler::new();
        d.handshake_text(r#"{"event":"connected","callerId":"1"}"#).unwrap();
        assert!(d
            .handshake_text(r#"{"event":"start","mediaFormat":{"sampleRate":8000}}"#)
            .unwrap_err()
            .to_string()
            .contains("streamId"));
    }

    #[test]
    fn start_labels_describe_and_refusals_name_the_field() {
        let start = |mf: &str| {
            let mut d = Dialler::new();
            d.handshake_text(r#"{"event":"connected","streamId":"s"}"#).unwrap();
            d.handshake_text(&format!(r#"{{"event":"start","mediaFormat":{mf}}}"#)).map(|_| d.meta().sample_rate)
        };
        for (mf, rate) in [
            (r#"{"encoding":"pcm_s16le","sampleRate":"16000"}"#, 16000),
            (r#"{"encoding":"base64","sampleRate":8000.0,"channels":"1"}"#, 8000),
            (r#"{"encoding":"audio/L16;rate=16000"}"#, 16000),
            (r#"{"encoding":"LINEAR16","sample_rate":"8kHz","bitsPerSample":16}"#, 8000),
        ] {
            assert_eq!(start(mf).unwrap(), rate, "{mf}");
        }
        for (mf, needle) in [
            (r#"{"encoding":"PCMU"}"#, r#"mediaFormat.encoding "PCMU" cannot be played"#),
            (r#"{"sampleRate":44100}"#, "mediaFormat.sampleRate 44100 cannot be played"),
            (r#"{"channels":2}"#, "mediaFormat.channels 2 cannot be played"),
        ] {
            let err = start(mf).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn first_media_stands_in_for_a_missing_answer() {
        let mut d = Dialler::new();
        d.handshake_text(r#"{"event":"connected","streamId":"s"}"#).unwrap();
        d.handshake_text(r#"{"event":"start"}"#).unwrap();
        assert_eq!(
            d.handshake_text(r#"{"event":"media","payload":"AQACAA=="}"#).unwrap(),
            HandshakeStep::Answered { early_audio: Some(vec![1, 2]) }
        );
    }

    #[test]
    fn bot_frames_have_the_documented_shapes() {
        let mut d = Dialler::with_clock(clock);
        handshake(&mut d);
        let mut out = vec![];
        d.audio(&[0; 160], &mut out);
        d.audio(&[0; 160], &mut out);
        d.clear(&mut out);
        d.hang_up(&mut out);
        d.transfer("+91111", "billing", &mut out).unwrap();
        let v: Vec<Value> = out
            .iter()
            .map(|f| match f {
                OutFrame::Text(t) => serde_json::from_str(t).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(v[0]["chunk"], 1);
        assert_eq!(v[1]["chunk"], 2);
        assert_eq!(v[0]["chunk_durn_ms"], 20);
        assert_eq!(v[0]["timestamp"], "2026-04-24 14:30:00");
        assert_eq!(v[0]["callDirection"], "outgoing");
        assert_eq!(v[2], serde_json::json!({"event":"reverse-media-stop","callerId":"+9198","streamId":"st-1"}));
        assert_eq!(v[3]["event"], "reverse-media-stop");
        assert_eq!(
            v[4],
            serde_json::json!({"event":"reverse-hangup-call","streamId":"st-1","callerId":"+9198","source":"ai","message":"Call ended by bot"})
        );
        assert_eq!(v[5]["event"], "reverse-call-transfer");
        assert_eq!(v[5]["transferTo"], "+91111");
    }

    #[test]
    fn running_call_frames() {
        let mut d = Dialler::new();
        handshake(&mut d);
        assert_eq!(
            d.on_text(r#"{"event":"hangup-call","disconnectedBy":"customer"}"#).unwrap(),
            Inbound::Hangup { by: Some("customer".into()) }
        );
        assert!(matches!(d.on_text(r#"{"event":"bogus"}"#), Err(ProtocolError::Malformed(_))));
        assert!(matches!(d.on_binary(&[1, 2]), Err(ProtocolError::Unsupported(_))));
    }
}
