//! Vonage Voice API WebSocket (NCCO `connect` to `{"type":"websocket","uri":"wss://…/vonage/{bot_id}",
//! "content-type":"audio/l16;rate=16000","headers":{…}}`), wire-protocols §2.
//!
//! - Vonage → bot: a first text event `{"event":"websocket:connected","content-type":…, …headers}`,
//!   then **binary** frames of raw 16-bit little-endian PCM (no base64), plus text events
//!   `websocket:dtmf` (`digit`), `websocket:notify` (echo of ours), `websocket:cleared`.
//! - The NCCO `headers` arrive as fields of `websocket:connected`: caller_id ← `from`, did ← `to`,
//!   stream_id ← `uuid` / `call_uuid` / `conversation_uuid`; all of them go to `connected_event`.
//! - Rates: 8000 and 16000 run natively; 24000 is resampled to 16 kHz for the engine.
//! - Bot → Vonage: binary frames of exactly 20 ms (640 bytes at 16 kHz), `{"action":"clear"}` on
//!   barge-in, `{"action":"notify","payload":{"mark":…}}` after each utterance (echoed as
//!   `websocket:notify` once the audio before it has played).
//! - Bot hang-up: close the WebSocket (Vonage ends the websocket leg and the NCCO continues or the
//!   call ends). Customer hang-up: the socket closes.

use serde_json::{json, Value};

use crate::media::{self, Chunker, Codec, Json, Marks, WireAudio};
use crate::{CallMeta, HandshakeStep, Inbound, OutFrame, ProtocolError, Transport};

const PROTO: &str = "vonage";

#[derive(Debug)]
pub struct Vonage {
    started: bool,
    meta: CallMeta,
    audio: WireAudio,
    frames: Chunker,
    marks: Marks,
    scratch: Vec<u8>,
    hung_up: bool,
}

impl Default for Vonage {
    fn default() -> Self {
        Self::new()
    }
}

/// The wire rate a `content-type` such as `audio/l16;rate=16000` announces.
fn content_type_rate(event: &str, ct: &str) -> Result<u32, ProtocolError> {
    let (_, rate) = media::check_label(PROTO, event, "content-type", ct, &[Codec::Pcm16Le])?;
    match rate.unwrap_or(16000) {
        r @ (8000 | 16000 | 24000) => Ok(r),
        r => Err(media::unplayable(
            PROTO,
            event,
            "content-type",
            ct,
            &format!("rate {r}: Vonage streams at 8000, 16000 or 24000 Hz"),
        )),
    }
}

impl Vonage {
    pub fn new() -> Self {
        Self::with_rate(16000)
    }

    fn with_rate(rate: u32) -> Self {
        let audio = WireAudio::new(Codec::Pcm16Le, rate);
        let fb = audio.frame_bytes();
        Self {
            started: false,
            meta: CallMeta { sample_rate: audio.engine_rate, call_direction: "incoming".into(), ..Default::default() },
            audio,
            frames: Chunker::new(fb, fb, fb, 0),
            marks: Marks::default(),
            scratch: Vec::with_capacity(fb),
            hung_up: false,
        }
    }

    pub fn marks_played(&self) -> u64 {
        self.marks.played()
    }

    pub fn wire_rate(&self) -> u32 {
        self.audio.wire_rate
    }

    fn on_connected(&mut self, j: &Json) -> Result<HandshakeStep, ProtocolError> {
        let rate = match j.opt_str("content-type")? {
            Some(ct) => content_type_rate(&j.event, ct)?,
            None => 16000,
        };
        let mut fresh = Self::with_rate(rate);
        let fields = j.obj.clone();
        let caller = media::first_of(&fields, &["from", "caller_id", "callerId"]).unwrap_or_default();
        let did = media::first_of(&fields, &["to", "did"]).unwrap_or_default();
        let direction = media::first_of(&fields, &["direction", "call_direction", "callDirection"])
            .map(|d| media::direction(&d))
            .unwrap_or_else(|| "incoming".into());
        let stream_id = media::first_of(&fields, &["uuid", "call_uuid", "conversation_uuid", "streamId", "stream_id"])
            .unwrap_or_else(|| media::generated_id(PROTO));
        let mut ev = fields;
        for (k, v) in [("streamId", &stream_id), ("callerId", &caller), ("did", &did), ("callDirection", &direction)] {
            ev.entry(k.to_string()).or_insert_with(|| Value::String(v.clone()));
        }
        fresh.meta = CallMeta {
            stream_id,
            caller_id: caller,
            did,
            call_direction: direction,
            sample_rate: fresh.audio.engine_rate,
            connected_event: ev,
        };
        fresh.started = true;
        *self = fresh;
        Ok(HandshakeStep::Answered { early_audio: None })
    }
}

impl Transport for Vonage {
    fn name(&self) -> &'static str {
        "vonage"
    }

    fn handshake_text(&mut self, text: &str) -> Result<HandshakeStep, ProtocolError> {
        let j = Json::parse(PROTO, text)?;
        match j.event.as_str() {
            "websocket:connected" => self.on_connected(&j),
            ev => Err(ProtocolError::Handshake(format!("unexpected {ev:?} while waiting for websocket:connected"))),
        }
    }

    fn meta(&self) -> &CallMeta {
        &self.meta
    }

    fn on_text(&mut self, text: &str) -> Result<Inbound, ProtocolError> {
        let j = Json::parse(PROTO, text)?;
        match j.event.as_str() {
            // Vonage's docs show `digit`; some integrations read `dtmf.digit` or `dtmf.digits`.
            "websocket:dtmf" => {
                let path = ["digit", "dtmf.digit", "dtmf.digits"]
                    .into_iter()
                    .find(|p| j.opt_scalar(p).is_ok_and(|d| d.is_some()))
                    .unwrap_or("digit");
                Ok(Inbound::Dtmf(j.dtmf(path)?))
            }
            "websocket:notify" => match j.opt_scalar("payload.mark")? {
                Some(name) => Ok(self.marks.on_echo(&name)),
                None => Ok(Inbound::Ignored("notify without a mark")),
            },
            "websocket:cleared" => Ok(Inbound::Ignored("websocket:cleared")),
            "websocket:connected" => Ok(Inbound::Ignored("handshake event after start")),
            "websocket:error" => Err(ProtocolError::Malformed(format!(
                "vonage reported an error: {}",
                Value::Object(j.obj.clone()).to_string().chars().take(200).collect::<String>()
            ))),
            _ => Err(j.unknown_event()),
        }
    }

    fn on_binary(&mut self, bytes: &[u8]) -> Result<Inbound, ProtocolError> {
        Ok(Inbound::Audio(self.audio.decode(PROTO, bytes)?))
    }

    fn audio(&mut self, frame: &[i16], out: &mut Vec<OutFrame>) {
        if self.hung_up {
            return;
        }
        self.scratch.clear();
        self.audio.encode(frame, &mut self.scratch);
        self.frames.push(&self.scratch, |f| out.push(OutFrame::Binary(f.to_vec())));
    }

    fn utterance_done(&mut self, out: &mut Vec<OutFrame>) -> Option<String> {
        if self.hung_up {
            return None;
        }
        self.frames.flush(|f| out.push(OutFrame::Binary(f.to_vec())));
        let name = self.marks.place();
        out.push(media::text(json!({"action": "notify", "payload": {"mark": name.clone()}})));
        Some(name)
    }

    fn clear(&mut self, out: &mut Vec<OutFrame>) {
        self.frames.clear();
        self.marks.on_clear();
        out.push(media::text(json!({"action": "clear"})));
    }

    fn hang_up(&mut self, out: &mut Vec<OutFrame>) {
        if self.hung_up {
            return;
        }
        self.frames.flush(|f| out.push(OutFrame::Binary(f.to_vec())));
        self.hung_up = true;
        out.push(OutFrame::Close { code: 1000, reason: "call ended by bot".into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(ct: &str) -> Vonage {
        let mut v = Vonage::new();
        let c = json!({"event":"websocket:connected","content-type":ct,"from":"447700900001","to":"447700900002",
            "uuid":"u-1","crm_id":"C9"});
        assert_eq!(v.handshake_text(&c.to_string()).unwrap(), HandshakeStep::Answered { early_audio: None });
        v
    }

    #[test]
    fn connected_event_sets_rate_and_metadata() {
        let v = running("audio/l16;rate=16000");
        let m = v.meta();
        assert_eq!(
            (m.stream_id.as_str(), m.caller_id.as_str(), m.did.as_str(), m.sample_rate),
            ("u-1", "447700900001", "447700900002", 16000)
        );
        assert_eq!(m.connected_event["crm_id"], "C9");
        assert_eq!(m.connected_event["content-type"], "audio/l16;rate=16000");
        assert_eq!(running("audio/l16;rate=8000").meta().sample_rate, 8000);
        let v = running("audio/l16;rate=24000");
        assert_eq!((v.meta().sample_rate, v.wire_rate()), (16000, 24000));
        let mut v = Vonage::new();
        assert!(v.handshake_text(r#"{"event":"websocket:connected","content-type":"audio/pcmu"}"#).is_err());
        let mut v = Vonage::new();
        assert!(v.handshake_text(r#"{"event":"websocket:connected","content-type":"audio/l16;rate=44100"}"#).is_err());
        let mut v = Vonage::new();
        assert!(v
            .handshake_text(r#"{"event":"websocket:dtmf","digit":"1"}"#)
            .unwrap_err()
            .to_string()
            .contains("waiting"));
        let mut v = Vonage::new();
        v.handshake_text(r#"{"event":"websocket:connected"}"#).unwrap();
        assert!(v.meta().stream_id.starts_with("vonage-"));
    }

    #[test]
    fn binary_audio_both_ways_in_exact_20ms_frames() {
        let mut v = running("audio/l16;rate=16000");
        assert_eq!(v.on_binary(&[1, 0, 255, 255]).unwrap(), Inbound::Audio(vec![1, -1]));
        assert!(v.on_binary(&[1, 0, 2]).unwrap_err().to_string().contains("odd"));
        let mut out = vec![];
        v.audio(&[7; 320], &mut out);
        assert_eq!(out.len(), 1);
        let OutFrame::Binary(b) = &out[0] else { panic!() };
        assert_eq!(b.len(), 640);
        // 24 kHz: 960-byte frames.
        let mut v = running("audio/l16;rate=24000");
        let mut out = vec![];
        for _ in 0..3 {
            v.audio(&[7; 320], &mut out);
        }
        assert!(out.iter().all(|f| matches!(f, OutFrame::Binary(b) if b.len() == 960)), "{}", out.len());
        assert_eq!(v.on_binary(&[0; 1920]).unwrap(), Inbound::Audio(vec![0; 640]));
    }

    #[test]
    fn notify_clear_dtmf_and_hang_up() {
        let mut v = running("audio/l16;rate=16000");
        let mut out = vec![];
        v.utterance_done(&mut out);
        assert_eq!(out[0], OutFrame::Text(json!({"action":"notify","payload":{"mark":"bot-1"}}).to_string()));
        assert_eq!(
            v.on_text(r#"{"event":"websocket:notify","payload":{"mark":"bot-1"}}"#).unwrap(),
            Inbound::Mark("bot-1".into())
        );
        v.clear(&mut out);
        assert_eq!(out[1], OutFrame::Text(json!({"action":"clear"}).to_string()));
        assert!(matches!(v.on_text(r#"{"event":"websocket:cleared"}"#).unwrap(), Inbound::Ignored(_)));
        assert_eq!(
            v.on_text(r#"{"event":"websocket:dtmf","digit":"9","duration":260}"#).unwrap(),
            Inbound::Dtmf("9".into())
        );
        assert_eq!(v.on_text(r#"{"event":"websocket:dtmf","digit":4}"#).unwrap(), Inbound::Dtmf("4".into()));
        assert!(v.on_text(r#"{"event":"websocket:dtmf","digit":{}}"#).is_err());
        assert!(v.on_text(r#"{"event":"websocket:what"}"#).unwrap_err().to_string().contains("unknown event"));
        assert!(v.on_text("not json").unwrap_err().to_string().contains("not JSON"));
        let mut out = vec![];
        v.hang_up(&mut out);
        assert_eq!(out, vec![OutFrame::Close { code: 1000, reason: "call ended by bot".into() }]);
    }
}
