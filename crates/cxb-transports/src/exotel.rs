//! Exotel Voicebot applet ("AgentStream"), contract §6.2 and wire-protocols §1.
//!
//! - Route `WS /exotel/{bot_id}[?sample-rate=8000|16000|24000&k=v…]`; Exotel is the client.
//! - Exotel → bot: `connected`, `start`, `media`, `dtmf`, `mark`, `stop`. The docs show every
//!   value as a string; real peers also send numbers (`sequence_number`, `chunk`,
//!   `media_format.sample_rate`), other `media_format` labels and extra fields — all accepted.
//!   stream_id ← `start.stream_sid` (or `stream_sid`, `streamSid`, the call SID), caller_id ←
//!   `start.from`, did ← `start.to`; `custom_parameters` (the URL's custom `k=v` pairs) are
//!   forwarded in `connected_event`.
//! - Bot → Exotel: `media` (base64 PCM16LE at the stream rate) in chunks that are multiples of
//!   320 bytes, ≥ 3.2 KB (except the flush at the end of an utterance) and ≤ 100 KB; `clear` on
//!   barge-in; `mark` after each utterance (echoed back once played).
//! - Bot hang-up closes the socket (the App Bazaar flow moves on to its Hangup applet); `stop`
//!   is the customer hanging up. No transfer. No config → an `outside_hours` result.
//! - 24 kHz streams are resampled to 16 kHz for the engine (webrtc-vad runs at 8/16 kHz only)
//!   and back to 24 kHz for Exotel.

use serde_json::{json, Map, Value};

use crate::media::{self, Chunker, Codec, FastMedia, Json, Marks, PayloadFrame, WireAudio};
use crate::{CallMeta, HandshakeStep, Inbound, OutFrame, ProtocolError, Transport};

const PROTO: &str = "exotel";
/// Outbound chunk rules (support.exotel.com 3000108630).
pub const MIN_CHUNK: usize = 3200;
pub const CHUNK_MULTIPLE: usize = 320;
pub const MAX_CHUNK: usize = 100 * 1024;
pub const RATES: [u32; 3] = [8000, 16000, 24000];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitConnected,
    AwaitStart,
    Running,
}

/// Exotel protocol state for one call.
#[derive(Debug)]
pub struct Exotel {
    phase: Phase,
    meta: CallMeta,
    stream_sid: String,
    /// Did `start` carry a stream id? Only then must later frames' `stream_sid` match it.
    sid_from_peer: bool,
    /// `?sample-rate=` of the stream URL, when it has one: it fixes the stream's rate.
    url_rate: Option<u32>,
    /// The other query pairs of the stream URL.
    query: Map<String, Value>,
    audio: WireAudio,
    chunker: Chunker,
    marks: Marks,
    media_out: PayloadFrame,
    scratch: Vec<u8>,
    hung_up: bool,
}

impl Default for Exotel {
    fn default() -> Self {
        Self::with_rate(8000)
    }
}

fn parse_rate(s: &str) -> Result<u32, ProtocolError> {
    match cxb_wire::serde_util::parse_sample_rate(s) {
        Some(r) if RATES.contains(&r) => Ok(r),
        _ => Err(ProtocolError::Handshake(format!("sample-rate {s:?} is not one of 8000, 16000, 24000"))),
    }
}

impl Exotel {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_rate(rate: u32) -> Self {
        Self {
            phase: Phase::AwaitConnected,
            meta: CallMeta { sample_rate: rate.min(16000), call_direction: "incoming".into(), ..Default::default() },
            stream_sid: String::new(),
            sid_from_peer: false,
            url_rate: None,
            query: Map::new(),
            audio: WireAudio::new(Codec::Pcm16Le, rate),
            chunker: Chunker::new(MIN_CHUNK, CHUNK_MULTIPLE, MAX_CHUNK, 0),
            marks: Marks::default(),
            media_out: PayloadFrame::default(),
            scratch: Vec::with_capacity(1024),
            hung_up: false,
        }
    }

    /// Build from the stream URL's query pairs: `sample-rate` (8000 | 16000 | 24000) and up to
    /// three custom pairs (kept for `connected_event`; Exotel also echoes them in `start`).
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, ProtocolError> {
        let mut rate = None;
        let mut query = Map::new();
        for (k, v) in pairs {
            match k.as_str() {
                "sample-rate" | "sample_rate" | "sampleRate" => rate = Some(parse_rate(v)?),
                _ => {
                    query.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
        let mut e = Self::with_rate(rate.unwrap_or(8000));
        e.url_rate = rate;
        e.query = query;
        Ok(e)
    }

    /// Utterances whose end mark Exotel echoed (audio confirmed played).
    pub fn marks_played(&self) -> u64 {
        self.marks.played()
    }

    /// The wire sample rate of the stream.
    pub fn wire_rate(&self) -> u32 {
        self.audio.wire_rate
    }

    fn on_start(&mut self, j: &Json) -> Result<HandshakeStep, ProtocolError> {
        j.req_obj("start")?;
        // Exotel's docs put `stream_sid` at both levels; its own sample repo (exotel/Agent-Stream)
        // shows a `start` with neither, and other paths use camelCase. The call SID, then a
        // made-up id, stand in when no stream id comes.
        let call_sid = j.first_str(&["start.call_sid", "start.callSid", "call_sid"])?.unwrap_or_default();
        let peer_sid = j.first_str(&["start.stream_sid", "stream_sid", "start.streamSid", "streamSid"])?;
        self.sid_from_peer = peer_sid.is_some();
        let stream_sid = peer_sid
            .or_else(|| (!call_sid.is_empty()).then(|| call_sid.clone()))
            .unwrap_or_else(|| media::generated_id(PROTO));
        let account_sid = j.first_str(&["start.account_sid", "start.accountSid"])?.unwrap_or_default();
        let from = j.opt_scalar("start.from")?.unwrap_or_default();
        let to = j.opt_scalar("start.to")?.unwrap_or_default();
        let custom = j.params("start.custom_parameters")?;
        // The stream's format is PCM16LE at the URL's `?sample-rate=`; `media_format` only
        // describes it (`encoding` is "base64", "audio/x-raw", "raw/slin", "linear16"… in the
        // wild, `sample_rate` a string, a number or "8kHz", `bit_rate` "16" or "128kbps" — it is
        // not read). A μ-law label means μ-law (Exotel's stream API defaults to
        // `audio/x-mulaw;rate=8000`). The label's rate is used only when the URL has none.
        let (codec, label_rate) = j.codec_label("start.media_format.encoding", &[Codec::Pcm16Le, Codec::Mulaw])?;
        j.check_mono("start.media_format.channels")?;
        let rate = match self.url_rate {
            Some(r) => r,
            None => match j.opt_rate("start.media_format.sample_rate")?.or(label_rate) {
                None => 8000,
                Some(r) if RATES.contains(&r) => r,
                Some(r) => {
                    return Err(media::unplayable(
                        PROTO,
                        &j.event,
                        "start.media_format.sample_rate",
                        r,
                        "Exotel streams at 8000, 16000 or 24000 Hz",
                    ))
                }
            },
        };
        if (codec, rate) != (self.audio.codec, self.audio.wire_rate) {
            self.audio = WireAudio::new(codec, rate);
            self.chunker = Chunker::new(MIN_CHUNK, CHUNK_MULTIPLE, MAX_CHUNK, codec.silence());
        }
        self.stream_sid = stream_sid.clone();
        self.media_out = PayloadFrame::new(
            format!(r#"{{"event":"media","stream_sid":{},"media":{{"payload":""#, media::json_str(&stream_sid)),
            r#""}}"#.into(),
        );
        let mut ev = self.query.clone();
        for (k, v) in &custom {
            ev.insert(k.clone(), v.clone());
        }
        let direction = media::first_of(&custom, &["call_direction", "callDirection", "direction"])
            .or_else(|| media::first_of(&self.query, &["call_direction", "callDirection", "direction"]))
            .map(|d| media::direction(&d))
            .unwrap_or_else(|| "incoming".into());
        for (k, v) in [
            ("stream_sid", &stream_sid),
            ("call_sid", &call_sid),
            ("account_sid", &account_sid),
            ("from", &from),
            ("to", &to),
            ("streamId", &stream_sid),
            ("callerId", &from),
            ("did", &to),
            ("callDirection", &direction),
        ] {
            ev.insert(k.into(), Value::String(v.clone()));
        }
        ev.insert("custom_parameters".into(), Value::Object(custom));
        if let Some(mf) = j.opt_obj("start.media_format")? {
            ev.insert("media_format".into(), Value::Object(mf.clone()));
        }
        self.meta = CallMeta {
            stream_id: stream_sid,
            caller_id: from,
            did: to,
            call_direction: direction,
            sample_rate: self.audio.engine_rate,
            connected_event: ev,
        };
        self.phase = Phase::Running;
        Ok(HandshakeStep::Answered { early_audio: None })
    }

    fn check_sid(&self, event: &str, sid: Option<&str>) -> Result<(), ProtocolError> {
        match sid {
            Some(s) if self.sid_from_peer && !s.is_empty() && s != self.stream_sid => Err(ProtocolError::Malformed(
                format!("exotel {event}: stream_sid {s:?} is not this call's ({:?})", self.stream_sid),
            )),
            _ => Ok(()),
        }
    }

    fn check_stream(&self, j: &Json) -> Result<(), ProtocolError> {
        self.check_sid(&j.event, j.opt_str("stream_sid")?)
    }

    fn emit_media<'a>(frame: &'a PayloadFrame, out: &'a mut Vec<OutFrame>) -> impl FnMut(&[u8]) + 'a {
        move |chunk: &[u8]| out.push(frame.render(chunk))
    }
}

impl Transport for Exotel {
    fn name(&self) -> &'static str {
        "exotel"
    }

    fn config_failure_result(&self) -> Option<cxb_wire::DisconnectedBy> {
        Some(cxb_wire::DisconnectedBy::OutsideHours)
    }

    fn handshake_text(&mut self, text: &str) -> Result<HandshakeStep, ProtocolError> {
        let j = Json::parse(PROTO, text)?;
        match (self.phase, j.event.as_str()) {
            (Phase::AwaitConnected, "connected") => {
                self.phase = Phase::AwaitStart;
                Ok(HandshakeStep::Continue)
            }
            // Exotel retries the handshake once: a repeated `connected` is harmless.
            (Phase::AwaitStart, "connected") => Ok(HandshakeStep::Continue),
            (Phase::AwaitConnected | Phase::AwaitStart, "start") => self.on_start(&j),
            (phase, ev) => {
                let known = matches!(ev, "media" | "dtmf" | "mark" | "stop");
                let want = if phase == Phase::AwaitConnected { "connected" } else { "start" };
                if known {
                    Err(ProtocolError::Handshake(format!("unexpected {ev} while waiting for {want}")))
                } else {
                    Err(ProtocolError::Handshake(format!("unknown event {ev:?} while waiting for {want}")))
                }
            }
        }
    }

    fn meta(&self) -> &CallMeta {
        &self.meta
    }

    fn on_text(&mut self, text: &str) -> Result<Inbound, ProtocolError> {
        if let Some(m) = FastMedia::parse(text) {
            self.check_sid("media", m.stream_sid.as_deref())?;
            let bytes = media::b64_decode(PROTO, m.payload())?;
            return Ok(Inbound::Audio(self.audio.decode(PROTO, &bytes)?));
        }
        let j = Json::parse(PROTO, text)?;
        match j.event.as_str() {
            "media" => {
                self.check_stream(&j)?;
                let payload = j.req_str("media.payload")?;
                let bytes = media::b64_decode(PROTO, payload)?;
                Ok(Inbound::Audio(self.audio.decode(PROTO, &bytes)?))
            }
            "dtmf" => {
                self.check_stream(&j)?;
                Ok(Inbound::Dtmf(j.dtmf("dtmf.digit")?))
            }
            "mark" => {
                self.check_stream(&j)?;
                Ok(self.marks.on_echo(&j.req_scalar("mark.name")?))
            }
            "stop" => Ok(Inbound::Hangup { by: Some("customer".into()) }),
            "connected" | "start" => Ok(Inbound::Ignored("handshake event after start")),
            _ => Err(j.unknown_event()),
        }
    }

    fn audio(&mut self, frame: &[i16], out: &mut Vec<OutFrame>) {
        if self.hung_up {
            return;
        }
        self.scratch.clear();
        self.audio.encode(frame, &mut self.scratch);
        let (chunker, scratch) = (&mut self.chunker, &self.scratch);
        chunker.push(scratch, Self::emit_media(&self.media_out, out));
    }

    fn utterance_done(&mut self, out: &mut Vec<OutFrame>) -> Option<String> {
        if self.hung_up {
            return None;
        }
        self.chunker.flush(Self::emit_media(&self.media_out, out));
        let name = self.marks.place();
        out.push(media::text(json!({"event": "mark", "stream_sid": self.stream_sid, "mark": {"name": name.clone()}})));
        Some(name)
    }

    fn clear(&mut self, out: &mut Vec<OutFrame>) {
        self.chunker.clear();
        self.marks.on_clear();
        out.push(media::text(json!({"event": "clear", "stream_sid": self.stream_sid})));
    }

    fn hang_up(&mut self, out: &mut Vec<OutFrame>) {
        if self.hung_up {
            return;
        }
        self.chunker.flush(Self::emit_media(&self.media_out, out));
        self.hung_up = true;
        out.push(OutFrame::Close { code: 1000, reason: "call ended by bot".into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_frame(rate: &str) -> String {
        json!({"event":"start","sequence_number":"1","stream_sid":"MZ1","start":{"stream_sid":"MZ1","call_sid":"CA1",
            "account_sid":"AC1","from":"+919800000001","to":"+918000000002","custom_parameters":{"crm_id":"C42","lang":"hi"},
            "media_format":{"encoding":"audio/x-raw","sample_rate":rate,"bit_rate":"16"}}})
        .to_string()
    }

    fn running(rate: &str) -> Exotel {
        let mut e =
            Exotel::from_query(&[("sample-rate".into(), rate.into()), ("crm_id".into(), "C42".into())]).unwrap();
        assert_eq!(e.handshake_text(r#"{"event":"connected"}"#).unwrap(), HandshakeStep::Continue);
        assert_eq!(e.handshake_text(&start_frame(rate)).unwrap(), HandshakeStep::Answered { early_audio: None });
        e
    }

    fn texts(out: &[OutFrame]) -> Vec<Value> {
        out.iter()
            .filter_map(|f| match f {
                OutFrame::Text(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn payload_len(v: &Value) -> usize {
        media::b64_decode("t", v["media"]["payload"].as_str().unwrap()).unwrap().len()
    }

    #[test]
    fn handshake_maps_metadata_as_documented() {
        let e = running("8000");
        let m = e.meta();
        assert_eq!(
            (m.stream_id.as_str(), m.caller_id.as_str(), m.did.as_str(), m.call_direction.as_str(), m.sample_rate),
            ("MZ1", "+919800000001", "+918000000002", "incoming", 8000)
        );
        let ev = &m.connected_event;
        assert_eq!(ev["custom_parameters"]["crm_id"], "C42");
        assert_eq!(ev["crm_id"], "C42");
        assert_eq!(ev["lang"], "hi");
        assert_eq!(ev["call_sid"], "CA1");
        assert_eq!(ev["callerId"], "+919800000001");
        assert!(!ev.contains_key("event"));
        assert_eq!(e.name(), "exotel");
        assert!(!e.supports_transfer());
        assert_eq!(e.config_failure_result(), Some(cxb_wire::DisconnectedBy::OutsideHours));
    }

    #[test]
    fn sample_rates_from_url_and_media_format() {
        assert!(Exotel::from_query(&[("sample-rate".into(), "44100".into())])
            .unwrap_err()
            .to_string()
            .contains("44100"));
        let mut e = Exotel::from_query(&[("sample-rate".into(), "16000".into())]).unwrap();
        e.handshake_text(r#"{"event":"connected"}"#).unwrap();
        e.handshake_text(r#"{"event":"start","start":{"stream_sid":"s","call_sid":"c","account_sid":"a"}}"#).unwrap();
        assert_eq!((e.meta().sample_rate, e.wire_rate()), (16000, 16000));
        // media_format wins over the URL; 24 kHz runs the engine at 16 kHz.
        let e = running("24000");
        assert_eq!((e.meta().sample_rate, e.wire_rate()), (16000, 24000));
        let mut e = Exotel::new();
        e.handshake_text(r#"{"event":"connected"}"#).unwrap();
        let err = e.handshake_text(&start_frame("11025")).unwrap_err();
        assert!(err.to_string().contains("11025"), "{err}");
        let mut e = Exotel::new();
        let bad = start_frame("8000").replace("audio/x-raw", "audio/x-opus");
        assert!(e.handshake_text(&bad).unwrap_err().to_string().contains("encoding"));
    }

    #[test]
    fn labels_describe_the_url_fixes_the_rate() {
        // Issue #14: Exotel's own docs and integrations say `base64` / `128kbps`.
        let start = |mf: Value| {
            json!({"event":"start","sequence_number":1,"stream_sid":"MZ2","start":{"stream_sid":"MZ2","media_format":mf}})
                .to_string()
        };
        let mut e = Exotel::from_query(&[("sample-rate".into(), "16000".into())]).unwrap();
        let mf = json!({"encoding":"base64","sample_rate":"8000","bit_rate":"128kbps"});
        assert_eq!(e.handshake_text(&start(mf)).unwrap(), HandshakeStep::Answered { early_audio: None });
        assert_eq!(e.wire_rate(), 16000, "the URL fixes the rate; the label only describes it");
        // A μ-law label means μ-law, both ways.
        let mut e = Exotel::new();
        e.handshake_text(&start(json!({"encoding":"audio/x-mulaw;rate=8000"}))).unwrap();
        assert_eq!(
            e.on_text(r#"{"event":"media","media":{"payload":"/4A="}}"#).unwrap(),
            Inbound::Audio(vec![0, 32124])
        );
        let mut out = vec![];
        e.audio(&[0; 160], &mut out);
        e.utterance_done(&mut out);
        // 160 μ-law bytes, padded to Exotel's 320-byte multiple with μ-law silence (0xFF).
        assert_eq!(
            media::b64_decode("t", texts(&out)[0]["media"]["payload"].as_str().unwrap()).unwrap(),
            vec![0xFF; 320]
        );
        // What cannot be played is refused, naming the field and the value.
        for (mf, needle) in [
            (json!({"encoding":"PCMA"}), "start.media_format.encoding \"PCMA\""),
            (json!({"sample_rate":"44.1kHz"}), "start.media_format.sample_rate 44100"),
            (json!({"channels":2}), "start.media_format.channels 2"),
        ] {
            let err = Exotel::new().handshake_text(&start(mf)).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn malformed_handshakes_are_refused_clearly() {
        let mut e = Exotel::new();
        e.handshake_text(r#"{"event":"connected"}"#).unwrap();
        let err = e.handshake_text(r#"{"event":"media","media":{"payload":""}}"#).unwrap_err();
        assert_eq!(err.to_string(), "handshake: unexpected media while waiting for start");
        let mut e = Exotel::new();
        assert!(e.handshake_text(r#"{"event":"hello"}"#).unwrap_err().to_string().contains("unknown event"));
        let mut e = Exotel::new();
        assert!(e.handshake_text("{").unwrap_err().to_string().contains("not JSON"));
        let mut e = Exotel::new();
        let err = e.handshake_text(r#"{"event":"start","start":{"stream_sid":5}}"#).unwrap_err();
        assert!(err.to_string().contains("\"start.stream_sid\" must be a string"), "{err}");
        let mut e = Exotel::new();
        assert!(e.handshake_text(r#"{"event":"start"}"#).unwrap_err().to_string().contains("\"start\" is missing"));
        // No stream id at all (as in Exotel's own sample repo): the call SID stands in, and
        // media frames without a `stream_sid` are this call's.
        let mut e = Exotel::new();
        e.handshake_text(r#"{"event":"start","start":{"call_sid":"c"}}"#).unwrap();
        assert_eq!(e.meta().stream_id, "c");
        assert_eq!(e.on_text(r#"{"event":"media","media":{"payload":"AQA="}}"#).unwrap(), Inbound::Audio(vec![1]));
    }

    #[test]
    fn inbound_frames() {
        let mut e = running("8000");
        let media = json!({"event":"media","sequence_number":"3","stream_sid":"MZ1",
            "media":{"chunk":"2","timestamp":"200","payload": media::b64_encode(&[1,0,2,0])}})
        .to_string();
        assert_eq!(e.on_text(&media).unwrap(), Inbound::Audio(vec![1, 2]));
        assert_eq!(
            e.on_text(r#"{"event":"dtmf","stream_sid":"MZ1","dtmf":{"digit":"5","duration":"100"}}"#).unwrap(),
            Inbound::Dtmf("5".into())
        );
        assert_eq!(
            e.on_text(r#"{"event":"stop","stream_sid":"MZ1","stop":{"call_sid":"CA1","reason":"callended"}}"#).unwrap(),
            Inbound::Hangup { by: Some("customer".into()) }
        );
        for (bad, needle) in [
            (r#"{"event":"media","media":{"payload":"***"}}"#, "base64"),
            (r#"{"event":"media","media":{"payload":"AAE"}}"#, "base64"),
            (r#"{"event":"media","media":{"payload":"AAEC"}}"#, "odd number of bytes"),
            (r#"{"event":"media","media":{"payload":7}}"#, "must be a string"),
            (r#"{"event":"media","media":"x"}"#, "must be an object"),
            (r#"{"event":"media"}"#, "is missing"),
            (r#"{"event":"media","stream_sid":"other","media":{"payload":""}}"#, "not this call's"),
            (r#"{"event":"dtmf","dtmf":{"digit":"55"}}"#, "digit"),
            (r#"{"event":"dtmf","dtmf":{"digit":[5]}}"#, "must be a string or a number"),
            (r#"{"event":"bogus"}"#, "unknown event"),
            (r#"[]"#, "not a JSON object"),
        ] {
            let err = e.on_text(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let big = json!({"event":"media","media":{"payload": media::b64_encode(&vec![0u8; 8000 * 2 * 3])}}).to_string();
        assert!(e.on_text(&big).unwrap_err().to_string().contains("exceeds"));
        assert!(matches!(e.on_binary(&[0, 0]), Err(ProtocolError::Unsupported(_))));
    }

    #[test]
    fn outbound_audio_obeys_the_chunk_rules_and_flushes_at_utterance_end() {
        for (rate, frame_samples, chunk) in [("8000", 160, 3200), ("16000", 320, 3200), ("24000", 320, 3840)] {
            let mut e = running(rate);
            let mut out = vec![];
            for _ in 0..23 {
                e.audio(&vec![1000i16; frame_samples], &mut out);
            }
            e.utterance_done(&mut out);
            let v = texts(&out);
            let media: Vec<&Value> = v.iter().filter(|f| f["event"] == "media").collect();
            let sizes: Vec<usize> = media.iter().map(|f| payload_len(f)).collect();
            let total_wire = 23 * 20 * rate.parse::<usize>().unwrap() / 1000 * 2;
            assert_eq!(sizes.iter().sum::<usize>(), total_wire, "{rate}: {sizes:?}");
            assert!(sizes.iter().all(|s| s % 320 == 0 && *s <= MAX_CHUNK), "{rate}: {sizes:?}");
            assert!(sizes[..sizes.len() - 1].iter().all(|s| *s == chunk), "{rate}: {sizes:?}");
            assert!(*sizes.last().unwrap() < MIN_CHUNK, "final flush {rate}: {sizes:?}");
            assert_eq!(media[0]["stream_sid"], "MZ1");
            assert_eq!(media[0].as_object().unwrap().len(), 3, "only event, stream_sid, media");
            assert_eq!(v.last().unwrap(), &json!({"event":"mark","stream_sid":"MZ1","mark":{"name":"bot-1"}}));
        }
    }

    #[test]
    fn clear_drops_the_buffer_and_marks_tell_what_played() {
        let mut e = running("8000");
        let mut out = vec![];
        for _ in 0..12 {
            e.audio(&[5; 160], &mut out);
        }
        e.utterance_done(&mut out);
        assert_eq!(
            e.on_text(r#"{"event":"mark","stream_sid":"MZ1","mark":{"name":"bot-1"}}"#).unwrap(),
            Inbound::Mark("bot-1".into())
        );
        out.clear();
        for _ in 0..15 {
            e.audio(&[5; 160], &mut out);
        }
        e.utterance_done(&mut out);
        for _ in 0..5 {
            e.audio(&[5; 160], &mut out);
        }
        let before = out.len();
        e.clear(&mut out);
        assert_eq!(out.len(), before + 1, "the 5 buffered frames are dropped, not sent");
        assert_eq!(texts(&out[before..])[0], json!({"event":"clear","stream_sid":"MZ1"}));
        // An echo of a mark that the clear dropped does not count as played.
        assert!(matches!(e.on_text(r#"{"event":"mark","mark":{"name":"bot-2"}}"#).unwrap(), Inbound::Ignored(_)));
        assert_eq!(e.marks_played(), 1);
        // Nothing left to flush after the clear.
        let mut out = vec![];
        e.utterance_done(&mut out);
        assert_eq!(texts(&out).len(), 1);
        assert_eq!(texts(&out)[0]["event"], "mark");
    }

    #[test]
    fn bot_hang_up_flushes_and_closes_the_socket() {
        let mut e = running("8000");
        let mut out = vec![];
        for _ in 0..3 {
            e.audio(&[9; 160], &mut out);
        }
        e.hang_up(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(payload_len(&texts(&out)[0]), 960);
        assert_eq!(out[1], OutFrame::Close { code: 1000, reason: "call ended by bot".into() });
        let mut more = vec![];
        e.audio(&[9; 160], &mut more);
        e.hang_up(&mut more);
        assert!(more.is_empty());
        assert!(e.transfer("+91", "x", &mut more).is_err());
    }
}
