//! Telnyx media streaming over WebSocket (Call Control `stream_url` with
//! `stream_bidirectional_mode: "rtp"`), wire-protocols §2.
//!
//! - Telnyx → bot: `connected`, `start` (top-level `stream_id`; `start.call_control_id`, `from`,
//!   `to`, `media_format` PCMU or PCMA at 8 kHz), `media` (base64 RTP payload), `dtmf`, `mark`,
//!   `error`, `stop`.
//! - Bot → Telnyx: `media` (20 ms of PCMU/PCMA, the stream's codec), `clear`, `mark`.
//! - Bot hang-up: `POST {api}/v2/calls/{call_control_id}/actions/hangup` with `Authorization:
//!   Bearer <key>` (bot config `telephony.telnyx` or settings). A 422 with code 90018 means the
//!   call already ended (logged by the driver, harmless). Without a key the socket is closed.
//! - Media order is not guaranteed by Telnyx; frames are used in arrival order (a late 20 ms
//!   frame is a few samples of misplaced audio for the VAD/STT, not worth a jitter buffer).

use cxb_wire::config::TelnyxConfig;
use serde_json::{json, Map, Value};

use crate::media::{self, Codec, FastMedia, Json, Marks, PayloadFrame, WireAudio};
use crate::{CallMeta, HandshakeStep, Inbound, OutFrame, ProtocolError, Transport};

const PROTO: &str = "telnyx";
pub const DEFAULT_API_BASE: &str = "https://api.telnyx.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitConnected,
    AwaitStart,
    Running,
}

#[derive(Debug)]
pub struct Telnyx {
    phase: Phase,
    meta: CallMeta,
    call_control_id: String,
    creds: TelnyxConfig,
    audio: WireAudio,
    marks: Marks,
    media_out: PayloadFrame,
    scratch: Vec<u8>,
    hung_up: bool,
}

impl Default for Telnyx {
    fn default() -> Self {
        Self::new(TelnyxConfig::default())
    }
}

impl Telnyx {
    pub fn new(creds: TelnyxConfig) -> Self {
        Self {
            phase: Phase::AwaitConnected,
            meta: CallMeta { sample_rate: 8000, call_direction: "incoming".into(), ..Default::default() },
            call_control_id: String::new(),
            creds,
            audio: WireAudio::new(Codec::Mulaw, 8000),
            marks: Marks::default(),
            media_out: PayloadFrame::new(r#"{"event":"media","media":{"payload":""#.into(), r#""}}"#.into()),
            scratch: Vec::with_capacity(160),
            hung_up: false,
        }
    }

    pub fn codec(&self) -> Codec {
        self.audio.codec
    }

    pub fn marks_played(&self) -> u64 {
        self.marks.played()
    }

    pub fn hangup_request(&self) -> Option<crate::HttpRequest> {
        let key = self.creds.api_key.as_deref().filter(|k| !k.is_empty())?;
        if self.call_control_id.is_empty() {
            return None;
        }
        let base = self.creds.api_base.as_deref().filter(|b| !b.is_empty()).unwrap_or(DEFAULT_API_BASE);
        let url = media::join_url(base, &format!("v2/calls/{}/actions/hangup", media::seg(&self.call_control_id)?));
        Some(media::http(
            "POST",
            url,
            vec![("Authorization", format!("Bearer {key}")), ("Content-Type", "application/json".into())],
            Some("{}".into()),
        ))
    }

    fn on_start(&mut self, j: &Json) -> Result<HandshakeStep, ProtocolError> {
        j.req_obj("start")?;
        let stream_id =
            j.first_str(&["stream_id", "start.stream_id", "streamId"])?.ok_or_else(|| j.missing("stream_id"))?;
        self.call_control_id = j.first_str(&["start.call_control_id", "call_control_id"])?.unwrap_or_default();
        let from = j.opt_scalar("start.from")?.unwrap_or_default();
        let to = j.opt_scalar("start.to")?.unwrap_or_default();
        // RTP payloads of the call's G.711 codec: Telnyx labels it `PCMU`/`PCMA` (its AsyncAPI
        // page) or `audio/x-mulaw` (its call-control API description).
        let (codec, _) = j.codec_label("start.media_format.encoding", &[Codec::Mulaw, Codec::Alaw])?;
        j.check_rate("start.media_format.sample_rate", &[8000], "G.711 runs at 8000 Hz")?;
        j.check_mono("start.media_format.channels")?;
        self.audio = WireAudio::new(codec, 8000);
        let direction = j.opt_str("start.direction")?.map(media::direction).unwrap_or_else(|| "incoming".into());
        // Custom parameters of `streaming_start` (a list of name/value pairs in the API).
        let mut ev: Map<String, Value> = j.params("start.custom_parameters")?;
        ev.extend(j.params("start.customParameters")?);
        for key in ["client_state", "call_session_id", "user_id"] {
            if let Some(v) = j.opt_scalar(&format!("start.{key}"))? {
                ev.insert(key.into(), Value::String(v));
            }
        }
        for (k, v) in [
            ("stream_id", &stream_id),
            ("call_control_id", &self.call_control_id),
            ("from", &from),
            ("to", &to),
            ("streamId", &stream_id),
            ("callerId", &from),
            ("did", &to),
            ("callDirection", &direction),
        ] {
            ev.insert(k.into(), Value::String(v.clone()));
        }
        self.meta = CallMeta {
            stream_id,
            caller_id: from,
            did: to,
            call_direction: direction,
            sample_rate: 8000,
            connected_event: ev,
        };
        self.phase = Phase::Running;
        Ok(HandshakeStep::Answered { early_audio: None })
    }
}

impl Transport for Telnyx {
    fn name(&self) -> &'static str {
        "telnyx"
    }

    fn on_config(&mut self, cfg: &cxb_wire::BotConfig) {
        if let Some(t) = cfg.telephony.as_ref().and_then(|t| t.telnyx.as_ref()) {
            self.creds.overlay(t);
        }
    }

    fn handshake_text(&mut self, text: &str) -> Result<HandshakeStep, ProtocolError> {
        let j = Json::parse(PROTO, text)?;
        match (self.phase, j.event.as_str()) {
            (Phase::AwaitConnected, "connected") => {
                self.phase = Phase::AwaitStart;
                Ok(HandshakeStep::Continue)
            }
            (Phase::AwaitConnected | Phase::AwaitStart, "start") => self.on_start(&j),
            (phase, ev) => {
                let want = if phase == Phase::AwaitConnected { "connected" } else { "start" };
                if matches!(ev, "media" | "dtmf" | "mark" | "stop" | "error" | "connected") {
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
            if m.is_outbound_track() {
                return Ok(Inbound::Ignored("outbound track"));
            }
            let bytes = media::b64_decode(PROTO, m.payload())?;
            return Ok(Inbound::Audio(self.audio.decode(PROTO, &bytes)?));
        }
        let j = Json::parse(PROTO, text)?;
        match j.event.as_str() {
            "media" => {
                if j.opt_str("media.track")?.is_some_and(|t| t.starts_with("outbound")) {
                    return Ok(Inbound::Ignored("outbound track"));
                }
                let bytes = media::b64_decode(PROTO, j.req_str("media.payload")?)?;
                Ok(Inbound::Audio(self.audio.decode(PROTO, &bytes)?))
            }
            "dtmf" => Ok(Inbound::Dtmf(j.dtmf("dtmf.digit")?)),
            "mark" => Ok(self.marks.on_echo(&j.req_scalar("mark.name")?)),
            "stop" => Ok(Inbound::Hangup { by: Some("customer".into()) }),
            "error" => {
                // Telnyx's docs show the details in `error`; older integrations read `payload`.
                let detail =
                    j.obj.get("error").or_else(|| j.obj.get("payload")).map(|p| p.to_string()).unwrap_or_default();
                Err(ProtocolError::Malformed(format!(
                    "telnyx reported an error: {}",
                    detail.chars().take(200).collect::<String>()
                )))
            }
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
        out.push(self.media_out.render(&self.scratch));
    }

    fn utterance_done(&mut self, out: &mut Vec<OutFrame>) -> Option<String> {
        if self.hung_up {
            return None;
        }
        let name = self.marks.place();
        out.push(media::text(json!({"event": "mark", "mark": {"name": name.clone()}})));
        Some(name)
    }

    fn clear(&mut self, out: &mut Vec<OutFrame>) {
        self.marks.on_clear();
        out.push(media::text(json!({"event": "clear"})));
    }

    fn hang_up(&mut self, out: &mut Vec<OutFrame>) {
        if self.hung_up {
            return;
        }
        self.hung_up = true;
        match self.hangup_request() {
            Some(req) => out.push(OutFrame::Http(req)),
            None => out.push(OutFrame::Close { code: 1000, reason: "call ended by bot".into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(encoding: &str, creds: TelnyxConfig) -> Telnyx {
        let mut t = Telnyx::new(creds);
        t.handshake_text(r#"{"event":"connected","version":"1.0.0"}"#).unwrap();
        let start = json!({"event":"start","sequence_number":"1","stream_id":"st-1","start":{"call_control_id":"v3:abc",
            "from":"+15550001","to":"+15550002","direction":"inbound","client_state":"eyJ4IjoxfQ==",
            "media_format":{"encoding":encoding,"sample_rate":8000,"channels":1}}});
        assert_eq!(t.handshake_text(&start.to_string()).unwrap(), HandshakeStep::Answered { early_audio: None });
        t
    }

    #[test]
    fn handshake_codecs_and_metadata() {
        let t = running("PCMA", TelnyxConfig::default());
        assert_eq!(t.codec(), Codec::Alaw);
        let m = t.meta();
        assert_eq!((m.stream_id.as_str(), m.caller_id.as_str(), m.did.as_str()), ("st-1", "+15550001", "+15550002"));
        assert_eq!(m.connected_event["call_control_id"], "v3:abc");
        assert_eq!(m.connected_event["client_state"], "eyJ4IjoxfQ==");
        assert_eq!(running("PCMU", TelnyxConfig::default()).codec(), Codec::Mulaw);
        let mut t = Telnyx::default();
        let bad =
            r#"{"event":"start","stream_id":"s","start":{"media_format":{"encoding":"OPUS","sample_rate":16000}}}"#;
        assert!(t.handshake_text(bad).unwrap_err().to_string().contains("OPUS"));
        let mut t = Telnyx::default();
        assert!(t.handshake_text(r#"{"event":"start","start":{}}"#).unwrap_err().to_string().contains("stream_id"));
        let mut t = Telnyx::default();
        t.handshake_text(r#"{"event":"connected"}"#).unwrap();
        assert!(t.handshake_text(r#"{"event":"media"}"#).unwrap_err().to_string().contains("waiting for start"));
    }

    #[test]
    fn alaw_both_ways() {
        let mut t = running("PCMA", TelnyxConfig::default());
        let frame = json!({"event":"media","stream_id":"st-1","media":{"track":"inbound","chunk":"1","timestamp":"5",
            "payload": media::b64_encode(&[0xD5, 0xAA])}});
        assert_eq!(t.on_text(&frame.to_string()).unwrap(), Inbound::Audio(vec![8, 32256]));
        let mut out = vec![];
        t.audio(&[0; 160], &mut out);
        let OutFrame::Text(s) = &out[0] else { panic!() };
        let v: Value = serde_json::from_str(s).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(media::b64_decode("t", v["media"]["payload"].as_str().unwrap()).unwrap(), vec![0xD5; 160]);
    }

    #[test]
    fn inbound_events() {
        let mut t = running("PCMU", TelnyxConfig::default());
        assert_eq!(t.on_text(r#"{"event":"dtmf","dtmf":{"digit":"7"}}"#).unwrap(), Inbound::Dtmf("7".into()));
        assert_eq!(
            t.on_text(r#"{"event":"stop","stop":{}}"#).unwrap(),
            Inbound::Hangup { by: Some("customer".into()) }
        );
        let err = t.on_text(r#"{"event":"error","payload":{"code":100003,"title":"malformed frame"}}"#).unwrap_err();
        assert!(err.to_string().contains("malformed frame"));
        assert!(t.on_text(r#"{"event":"media","media":{"payload":"%%"}}"#).unwrap_err().to_string().contains("base64"));
        let mut out = vec![];
        t.utterance_done(&mut out);
        t.clear(&mut out);
        assert_eq!(out[0], OutFrame::Text(json!({"event":"mark","mark":{"name":"bot-1"}}).to_string()));
        assert_eq!(out[1], OutFrame::Text(json!({"event":"clear"}).to_string()));
    }

    #[test]
    fn hang_up_uses_the_bearer_key() {
        let mut t = running("PCMU", TelnyxConfig { api_key: Some("KEY0".into()), api_base: None });
        let mut out = vec![];
        t.hang_up(&mut out);
        let OutFrame::Http(req) = &out[0] else { panic!("{out:?}") };
        assert_eq!(req.method, "POST");
        assert_eq!(req.url, "https://api.telnyx.com/v2/calls/v3:abc/actions/hangup");
        assert!(req.headers.contains(&("Authorization".into(), "Bearer KEY0".into())));
        assert_eq!(req.body.as_deref(), Some("{}"));
        let cfg: cxb_wire::BotConfig = serde_json::from_value(
            json!({"session_id":"s","telephony":{"telnyx":{"api_key":"KEY1","api_base":"http://x/telnyx"}}}),
        )
        .unwrap();
        let mut t = running("PCMU", TelnyxConfig::default());
        t.on_config(&cfg);
        let req = t.hangup_request().unwrap();
        assert_eq!(req.url, "http://x/telnyx/v2/calls/v3:abc/actions/hangup");
        assert!(req.headers.contains(&("Authorization".into(), "Bearer KEY1".into())));
        let mut t = running("PCMU", TelnyxConfig::default());
        let mut out = vec![];
        t.hang_up(&mut out);
        assert!(matches!(out[0], OutFrame::Close { .. }));
    }

    /// Found by the fuzz target's URL check (see `media::seg`).
    #[test]
    fn a_dot_segment_call_control_id_never_reaches_the_rest_path() {
        let mut t = Telnyx::new(TelnyxConfig { api_key: Some("KEY0".into()), api_base: None });
        t.handshake_text(r#"{"event":"start","stream_id":"st-1","start":{"call_control_id":"."}}"#).unwrap();
        assert_eq!(t.hangup_request(), None);
    }
}
