//! Plivo Audio Streaming (`<Stream bidirectional="true" keepCallAlive="true">wss://…/plivo/{bot_id}</Stream>`),
//! wire-protocols §2.
//!
//! - Plivo → bot: `start` (`streamId`, `callId`, `accountId`, `mediaFormat`: `audio/x-mulaw` 8 kHz
//!   or `audio/x-l16` 8/16 kHz), `media`, `dtmf`, `playedStream` (echo of a `checkpoint`),
//!   `clearedAudio`, `stop`.
//! - Plivo's `start` carries no caller numbers: they come from the stream URL's query
//!   (`?from=…&to=…&direction=…`, e.g. `…/plivo/demo?from={From}&to={To}` in the answer XML);
//!   every query pair and the `extra_headers` are forwarded in `connected_event`.
//! - Bot → Plivo: `playAudio` (20 ms, the stream's content type and rate), `clearAudio` on
//!   barge-in, `checkpoint` after each utterance (answered with `playedStream` once played).
//! - Bot hang-up: `DELETE {api}/v1/Account/{auth_id}/Call/{call_id}/` with Basic auth (bot config
//!   `telephony.plivo` or settings); Plivo answers 204. Without credentials the socket is closed.
//! - L16 is taken as little-endian 16-bit PCM, like every other PCM stream here [recall].

use cxb_wire::config::PlivoConfig;
use serde_json::{json, Map, Value};

use crate::media::{self, Codec, FastMedia, Json, Marks, PayloadFrame, WireAudio};
use crate::{CallMeta, HandshakeStep, Inbound, OutFrame, ProtocolError, Transport};

const PROTO: &str = "plivo";
pub const DEFAULT_API_BASE: &str = "https://api.plivo.com";

#[derive(Debug)]
pub struct Plivo {
    started: bool,
    meta: CallMeta,
    stream_id: String,
    call_id: String,
    query: Map<String, Value>,
    creds: PlivoConfig,
    audio: WireAudio,
    marks: Marks,
    media_out: PayloadFrame,
    scratch: Vec<u8>,
    hung_up: bool,
}

impl Default for Plivo {
    fn default() -> Self {
        Self::new(PlivoConfig::default(), &[])
    }
}

impl Plivo {
    /// `query`: the stream URL's query pairs (`from`, `to`, `direction`, CRM fields…).
    pub fn new(creds: PlivoConfig, query: &[(String, String)]) -> Self {
        let query: Map<String, Value> = query.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let caller = media::first_of(&query, &["from", "caller_id", "callerId"]).unwrap_or_default();
        let did = media::first_of(&query, &["to", "did"]).unwrap_or_default();
        let direction = media::first_of(&query, &["direction", "call_direction", "callDirection"])
            .map(|d| media::direction(&d))
            .unwrap_or_else(|| "incoming".into());
        Self {
            started: false,
            meta: CallMeta {
                sample_rate: 8000,
                caller_id: caller,
                did,
                call_direction: direction,
                ..Default::default()
            },
            stream_id: String::new(),
            call_id: String::new(),
            query,
            creds,
            audio: WireAudio::new(Codec::Mulaw, 8000),
            marks: Marks::default(),
            media_out: PayloadFrame::default(),
            scratch: Vec::with_capacity(320),
            hung_up: false,
        }
    }

    pub fn marks_played(&self) -> u64 {
        self.marks.played()
    }

    pub fn hangup_request(&self) -> Option<crate::HttpRequest> {
        let id = self.creds.auth_id.as_deref().filter(|v| !v.is_empty())?;
        let token = self.creds.auth_token.as_deref().filter(|v| !v.is_empty())?;
        if self.call_id.is_empty() {
            return None;
        }
        let base = self.creds.api_base.as_deref().filter(|b| !b.is_empty()).unwrap_or(DEFAULT_API_BASE);
        let url =
            media::join_url(base, &format!("v1/Account/{}/Call/{}/", media::seg(id)?, media::seg(&self.call_id)?));
        Some(media::http("DELETE", url, vec![("Authorization", media::basic_auth(id, token))], None))
    }

    fn on_start(&mut self, j: &Json) -> Result<HandshakeStep, ProtocolError> {
        j.req_obj("start")?;
        let stream_id = j
            .first_str(&["start.streamId", "streamId", "start.stream_id"])?
            .ok_or_else(|| j.missing("start.streamId"))?;
        self.call_id = j.first_str(&["start.callId", "start.call_id", "callId"])?.unwrap_or_default();
        let account_id = j.first_str(&["start.accountId", "start.account_id"])?.unwrap_or_default();
        // μ-law 8 kHz unless the `<Stream contentType>` asked for L16 (`audio/x-l16;rate=16000`).
        let (codec, label_rate) = j.codec_label("start.mediaFormat.encoding", &[Codec::Mulaw, Codec::Pcm16Le])?;
        let rate = j.opt_rate("start.mediaFormat.sampleRate")?.or(label_rate).unwrap_or(8000);
        let (content_type, rates): (&str, &[u32]) = match codec {
            Codec::Pcm16Le => ("audio/x-l16", &[8000, 16000]),
            _ => ("audio/x-mulaw", &[8000]),
        };
        if !rates.contains(&rate) {
            let why = format!("Plivo streams {content_type} at {rates:?} Hz");
            return Err(media::unplayable(PROTO, &j.event, "start.mediaFormat.sampleRate", rate, &why));
        }
        j.check_mono("start.mediaFormat.channels")?;
        self.audio = WireAudio::new(codec, rate);
        let mut ev = self.query.clone();
        let extra = j.obj.get("extra_headers").or_else(|| j.obj.get("extraHeaders")).cloned();
        if let Some(x) = extra.filter(|x| !x.is_null()) {
            ev.insert("extra_headers".into(), x);
        }
        for (k, v) in [
            ("streamId", &stream_id),
            ("callId", &self.call_id),
            ("accountId", &account_id),
            ("callerId", &self.meta.caller_id),
            ("did", &self.meta.did),
            ("callDirection", &self.meta.call_direction),
        ] {
            ev.insert(k.into(), Value::String(v.clone()));
        }
        self.media_out = PayloadFrame::new(
            format!(
                r#"{{"event":"playAudio","media":{{"contentType":"{content_type}","sampleRate":{rate},"payload":""#
            ),
            format!(r#""}},"streamId":{}}}"#, media::json_str(&stream_id)),
        );
        self.stream_id = stream_id.clone();
        self.meta.stream_id = stream_id;
        self.meta.sample_rate = self.audio.engine_rate;
        self.meta.connected_event = ev;
        self.started = true;
        Ok(HandshakeStep::Answered { early_audio: None })
    }
}

impl Transport for Plivo {
    fn name(&self) -> &'static str {
        "plivo"
    }

    fn on_config(&mut self, cfg: &cxb_wire::BotConfig) {
        if let Some(p) = cfg.telephony.as_ref().and_then(|t| t.plivo.as_ref()) {
            self.creds.overlay(p);
        }
    }

    fn handshake_text(&mut self, text: &str) -> Result<HandshakeStep, ProtocolError> {
        let j = Json::parse(PROTO, text)?;
        match j.event.as_str() {
            "start" => self.on_start(&j),
            ev @ ("media" | "dtmf" | "playedStream" | "clearedAudio" | "stop") => {
                Err(ProtocolError::Handshake(format!("unexpected {ev} while waiting for start")))
            }
            ev => Err(ProtocolError::Handshake(format!("unknown event {ev:?} while waiting for start"))),
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
            "playedStream" => Ok(self.marks.on_echo(&j.req_scalar("name")?)),
            "clearedAudio" => Ok(Inbound::Ignored("clearedAudio")),
            "stop" => Ok(Inbound::Hangup { by: Some("customer".into()) }),
            "start" => Ok(Inbound::Ignored("handshake event after start")),
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
        out.push(media::text(json!({"event": "checkpoint", "streamId": self.stream_id, "name": name.clone()})));
        Some(name)
    }

    fn clear(&mut self, out: &mut Vec<OutFrame>) {
        self.marks.on_clear();
        out.push(media::text(json!({"event": "clearAudio", "streamId": self.stream_id})));
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

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn running(format: Value, creds: PlivoConfig) -> Plivo {
        let mut p = Plivo::new(creds, &q(&[("from", "+15550001"), ("to", "+15550002"), ("crm", "z")]));
        let start = json!({"event":"start","sequenceNumber":0,"start":{"callId":"c-1","streamId":"s-1",
            "accountId":"MA1","tracks":["inbound"],"mediaFormat":format},"extra_headers":"{'k':'v'}"});
        assert_eq!(p.handshake_text(&start.to_string()).unwrap(), HandshakeStep::Answered { early_audio: None });
        p
    }

    fn mulaw() -> Value {
        json!({"encoding":"audio/x-mulaw","sampleRate":8000})
    }

    #[test]
    fn handshake_query_metadata_and_formats() {
        let p = running(mulaw(), PlivoConfig::default());
        let m = p.meta();
        assert_eq!(
            (m.stream_id.as_str(), m.caller_id.as_str(), m.did.as_str(), m.sample_rate),
            ("s-1", "+15550001", "+15550002", 8000)
        );
        assert_eq!(m.connected_event["crm"], "z");
        assert_eq!(m.connected_event["callId"], "c-1");
        assert_eq!(m.connected_event["extra_headers"], "{'k':'v'}");
        let p = running(json!({"encoding":"audio/x-l16;rate=16000","sampleRate":16000}), PlivoConfig::default());
        assert_eq!(p.meta().sample_rate, 16000);
        let mut p = Plivo::default();
        let bad = json!({"event":"start","start":{"streamId":"s","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":16000}}});
        assert!(p.handshake_text(&bad.to_string()).unwrap_err().to_string().contains("16000"));
        let mut p = Plivo::default();
        assert!(p
            .handshake_text(r#"{"event":"media","media":{"payload":""}}"#)
            .unwrap_err()
            .to_string()
            .contains("waiting for start"));
        let mut p = Plivo::default();
        assert!(p
            .handshake_text(r#"{"event":"start","start":{"streamId":["x"]}}"#)
            .unwrap_err()
            .to_string()
            .contains("must be a string"));
    }

    #[test]
    fn l16_out_and_in() {
        let mut p = running(json!({"encoding":"audio/x-l16","sampleRate":16000}), PlivoConfig::default());
        let mut out = vec![];
        p.audio(&[1; 320], &mut out);
        let OutFrame::Text(s) = &out[0] else { panic!() };
        let v: Value = serde_json::from_str(s).unwrap();
        assert_eq!(v["event"], "playAudio");
        assert_eq!(v["streamId"], "s-1");
        assert_eq!(v["media"]["contentType"], "audio/x-l16");
        assert_eq!(v["media"]["sampleRate"], 16000);
        assert_eq!(media::b64_decode("t", v["media"]["payload"].as_str().unwrap()).unwrap().len(), 640);
        let inb = json!({"event":"media","streamId":"s-1","media":{"track":"inbound","timestamp":"1","chunk":1,"payload":media::b64_encode(&[3,0,4,0])}});
        assert_eq!(p.on_text(&inb.to_string()).unwrap(), Inbound::Audio(vec![3, 4]));
        assert!(p.on_text(r#"{"event":"media","media":{"payload":"AAAA"}}"#).unwrap_err().to_string().contains("odd"));
    }

    #[test]
    fn checkpoints_clear_and_events() {
        let mut p = running(mulaw(), PlivoConfig::default());
        let mut out = vec![];
        p.utterance_done(&mut out);
        p.clear(&mut out);
        assert_eq!(out[0], OutFrame::Text(json!({"event":"checkpoint","streamId":"s-1","name":"bot-1"}).to_string()));
        assert_eq!(out[1], OutFrame::Text(json!({"event":"clearAudio","streamId":"s-1"}).to_string()));
        assert!(matches!(
            p.on_text(r#"{"event":"playedStream","streamId":"s-1","name":"bot-1"}"#).unwrap(),
            Inbound::Ignored(_)
        ));
        p.utterance_done(&mut out);
        assert_eq!(p.on_text(r#"{"event":"playedStream","name":"bot-2"}"#).unwrap(), Inbound::Mark("bot-2".into()));
        assert!(matches!(p.on_text(r#"{"event":"clearedAudio","streamId":"s-1"}"#).unwrap(), Inbound::Ignored(_)));
        assert_eq!(p.on_text(r#"{"event":"dtmf","dtmf":{"digit":"*"}}"#).unwrap(), Inbound::Dtmf("*".into()));
        assert!(p.on_text(r#"{"event":"playAudio"}"#).unwrap_err().to_string().contains("unknown event"));
    }

    #[test]
    fn hang_up_is_a_delete_with_basic_auth() {
        let mut p = running(mulaw(), PlivoConfig::default());
        let cfg: cxb_wire::BotConfig = serde_json::from_value(json!({"session_id":"s","telephony":{"plivo":{
            "auth_id":"MA1","auth_token":"pt","api_base":"http://127.0.0.1:1/plivo"}}}))
        .unwrap();
        p.on_config(&cfg);
        let mut out = vec![];
        p.hang_up(&mut out);
        let OutFrame::Http(req) = &out[0] else { panic!("{out:?}") };
        assert_eq!(req.method, "DELETE");
        assert_eq!(req.url, "http://127.0.0.1:1/plivo/v1/Account/MA1/Call/c-1/");
        assert!(req.headers.contains(&("Authorization".into(), media::basic_auth("MA1", "pt"))));
        assert!(req.body.is_none());
        let mut p = running(mulaw(), PlivoConfig { auth_id: Some("MA1".into()), ..Default::default() });
        let mut out = vec![];
        p.hang_up(&mut out);
        assert!(matches!(out[0], OutFrame::Close { .. }), "no token → close");
    }

    /// Found by the fuzz target's URL check (see `media::seg`).
    #[test]
    fn a_dot_segment_call_id_never_reaches_the_rest_path() {
        let creds = PlivoConfig { auth_id: Some("MA1".into()), auth_token: Some("pt".into()), api_base: None };
        let mut p = Plivo::new(creds, &[]);
        p.handshake_text(r#"{"event":"start","start":{"streamId":"s-1","callId":".."}}"#).unwrap();
        assert_eq!(p.hangup_request(), None);
    }
}
