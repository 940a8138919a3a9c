//! Twilio Media Streams (bidirectional, `<Connect><Stream url="wss://…/twilio/{bot_id}"/>`),
//! wire-protocols §2.
//!
//! - Twilio → bot: `connected`, `start` (`streamSid`, `callSid`, `accountSid`,
//!   `customParameters` from the TwiML `<Parameter>`s), `media` (base64 μ-law 8 kHz, 20 ms),
//!   `dtmf`, `mark` (echo of ours), `stop`.
//! - caller_id / did / direction come from `customParameters` (`From` / `To` / `Direction`, as a
//!   TwiML app passes `{{From}}`…); every custom parameter is forwarded in `connected_event`.
//! - Bot → Twilio: `media` (20 ms μ-law), `clear` on barge-in, `mark` after each utterance.
//!   Twilio echoes marks when the audio before them has played *and* when a `clear` drops them;
//!   the latter are not counted as played.
//! - Bot hang-up: `POST {api}/2010-04-01/Accounts/{AC}/Calls/{CA}.json` `Status=completed` with
//!   Basic auth (credentials from the bot config's `telephony.twilio` or the worker settings).
//!   Twilio then sends `stop` and closes. Without credentials the socket is closed instead
//!   (Twilio then runs the TwiML after `<Connect>`).

use cxb_wire::config::TwilioConfig;
use serde_json::{json, Map, Value};

use crate::media::{self, Codec, FastMedia, Json, Marks, PayloadFrame, WireAudio};
use crate::{CallMeta, HandshakeStep, Inbound, OutFrame, ProtocolError, Transport};

const PROTO: &str = "twilio";
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitConnected,
    AwaitStart,
    Running,
}

#[derive(Debug)]
pub struct Twilio {
    phase: Phase,
    meta: CallMeta,
    stream_sid: String,
    call_sid: String,
    account_sid: String,
    creds: TwilioConfig,
    audio: WireAudio,
    marks: Marks,
    media_out: PayloadFrame,
    scratch: Vec<u8>,
    hung_up: bool,
}

impl Default for Twilio {
    fn default() -> Self {
        Self::new(TwilioConfig::default())
    }
}

impl Twilio {
    /// `creds`: the worker's defaults; the bot config's `telephony.twilio` overrides them.
    pub fn new(creds: TwilioConfig) -> Self {
        Self {
            phase: Phase::AwaitConnected,
            meta: CallMeta { sample_rate: 8000, call_direction: "incoming".into(), ..Default::default() },
            stream_sid: String::new(),
            call_sid: String::new(),
            account_sid: String::new(),
            creds,
            audio: WireAudio::new(Codec::Mulaw, 8000),
            marks: Marks::default(),
            media_out: PayloadFrame::default(),
            scratch: Vec::with_capacity(160),
            hung_up: false,
        }
    }

    pub fn marks_played(&self) -> u64 {
        self.marks.played()
    }

    /// The REST hang-up, when every piece of it is known.
    pub fn hangup_request(&self) -> Option<crate::HttpRequest> {
        let token = self.creds.auth_token.as_deref().filter(|t| !t.is_empty())?;
        let account = self.creds.account_sid.as_deref().filter(|a| !a.is_empty()).unwrap_or(&self.account_sid);
        if account.is_empty() || self.call_sid.is_empty() {
            return None;
        }
        let base = self.creds.api_base.as_deref().filter(|b| !b.is_empty()).unwrap_or(DEFAULT_API_BASE);
        let url = media::join_url(
            base,
            &format!("2010-04-01/Accounts/{}/Calls/{}.json", media::seg(account)?, media::seg(&self.call_sid)?),
        );
        Some(media::http(
            "POST",
            url,
            vec![
                ("Authorization", media::basic_auth(account, token)),
                ("Content-Type", "application/x-www-form-urlencoded".into()),
            ],
            Some("Status=completed".into()),
        ))
    }

    fn on_start(&mut self, j: &Json) -> Result<HandshakeStep, ProtocolError> {
        j.req_obj("start")?;
        let stream_sid = j
            .first_str(&["start.streamSid", "streamSid", "start.stream_sid"])?
            .ok_or_else(|| j.missing("start.streamSid"))?;
        self.call_sid = j.first_str(&["start.callSid", "start.call_sid"])?.unwrap_or_default();
        self.account_sid = j.first_str(&["start.accountSid", "start.account_sid"])?.unwrap_or_default();
        // Twilio streams μ-law at 8 kHz, always; `mediaFormat` describes it.
        j.codec_label("start.mediaFormat.encoding", &[Codec::Mulaw])?;
        j.check_rate("start.mediaFormat.sampleRate", &[8000], "Twilio streams at 8000 Hz")?;
        j.check_mono("start.mediaFormat.channels")?;
        let custom = j.params("start.customParameters")?;
        let caller = media::first_of(&custom, &["From", "caller_id", "callerId", "caller"]).unwrap_or_default();
        let did = media::first_of(&custom, &["To", "did", "called"]).unwrap_or_default();
        let direction = media::first_of(&custom, &["Direction", "call_direction", "callDirection"])
            .map(|d| media::direction(&d))
            .unwrap_or_else(|| "incoming".into());
        let mut ev: Map<String, Value> = custom.clone();
        for (k, v) in [
            ("streamSid", &stream_sid),
            ("callSid", &self.call_sid),
            ("accountSid", &self.account_sid),
            ("streamId", &stream_sid),
            ("callerId", &caller),
            ("did", &did),
            ("callDirection", &direction),
        ] {
            ev.insert(k.into(), Value::String(v.clone()));
        }
        ev.insert("customParameters".into(), Value::Object(custom));
        self.stream_sid = stream_sid.clone();
        self.media_out = PayloadFrame::new(
            format!(r#"{{"event":"media","streamSid":{},"media":{{"payload":""#, media::json_str(&stream_sid)),
            r#""}}"#.into(),
        );
        self.meta = CallMeta {
            stream_id: stream_sid,
            caller_id: caller,
            did,
            call_direction: direction,
            sample_rate: 8000,
            connected_event: ev,
        };
        self.phase = Phase::Running;
        Ok(HandshakeStep::Answered { early_audio: None })
    }
}

impl Transport for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn on_config(&mut self, cfg: &cxb_wire::BotConfig) {
        if let Some(t) = cfg.telephony.as_ref().and_then(|t| t.twilio.as_ref()) {
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
                if matches!(ev, "media" | "dtmf" | "mark" | "stop" | "connected") {
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
        out.push(media::text(json!({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name.clone()}})));
        Some(name)
    }

    fn clear(&mut self, out: &mut Vec<OutFrame>) {
        self.marks.on_clear();
        out.push(media::text(json!({"event": "clear", "streamSid": self.stream_sid})));
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

    fn running(creds: TwilioConfig) -> Twilio {
        let mut t = Twilio::new(creds);
        t.handshake_text(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#).unwrap();
        let start = json!({"event":"start","sequenceNumber":"1","streamSid":"MZ9","start":{"streamSid":"MZ9",
            "accountSid":"AC1","callSid":"CA7","tracks":["inbound"],
            "customParameters":{"From":"+15550001","To":"+15550002","Direction":"outbound-api","crm":"x"},
            "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}});
        assert_eq!(t.handshake_text(&start.to_string()).unwrap(), HandshakeStep::Answered { early_audio: None });
        t
    }

    fn texts(out: &[OutFrame]) -> Vec<Value> {
        out.iter()
            .filter_map(|f| match f {
                OutFrame::Text(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn handshake_and_metadata() {
        let t = running(TwilioConfig::default());
        let m = t.meta();
        assert_eq!(
            (m.stream_id.as_str(), m.caller_id.as_str(), m.did.as_str(), m.call_direction.as_str(), m.sample_rate),
            ("MZ9", "+15550001", "+15550002", "outgoing", 8000)
        );
        assert_eq!(m.connected_event["crm"], "x");
        assert_eq!(m.connected_event["callSid"], "CA7");
        let mut t = Twilio::default();
        t.handshake_text(r#"{"event":"connected"}"#).unwrap();
        let err = t.handshake_text(r#"{"event":"media","media":{"payload":""}}"#).unwrap_err();
        assert_eq!(err.to_string(), "handshake: unexpected media while waiting for start");
        let mut t = Twilio::default();
        let bad =
            r#"{"event":"start","start":{"streamSid":"s","mediaFormat":{"encoding":"audio/x-l16","sampleRate":8000}}}"#;
        assert!(t.handshake_text(bad).unwrap_err().to_string().contains("encoding"));
        let mut t = Twilio::default();
        let bad = r#"{"event":"start","start":{"streamSid":"s","mediaFormat":{"sampleRate":"fast"}}}"#;
        assert!(t.handshake_text(bad).unwrap_err().to_string().contains("sample rate"));
        let mut t = Twilio::default();
        assert!(t.handshake_text(r#"{"event":"start","start":{}}"#).unwrap_err().to_string().contains("streamSid"));
    }

    #[test]
    fn inbound_frames() {
        let mut t = running(TwilioConfig::default());
        let media = json!({"event":"media","sequenceNumber":"3","streamSid":"MZ9",
            "media":{"track":"inbound","chunk":"1","timestamp":"5","payload": media::b64_encode(&[0xFF, 0x80, 0x00])}});
        assert_eq!(t.on_text(&media.to_string()).unwrap(), Inbound::Audio(vec![0, 32124, -32124]));
        assert_eq!(
            t.on_text(r##"{"event":"dtmf","streamSid":"MZ9","dtmf":{"track":"inbound_track","digit":"#"}}"##).unwrap(),
            Inbound::Dtmf("#".into())
        );
        assert_eq!(
            t.on_text(r#"{"event":"stop","stop":{"callSid":"CA7"}}"#).unwrap(),
            Inbound::Hangup { by: Some("customer".into()) }
        );
        for (bad, needle) in [
            (r#"{"event":"media","media":{"payload":"!!"}}"#, "base64"),
            (r#"{"event":"media","media":{"payload":null}}"#, "is missing"),
            (r#"{"event":"media","media":{"payload":["a"]}}"#, "must be a string"),
            (r#"{"event":"mark","mark":{}}"#, "mark.name"),
            (r#"{"event":"surprise"}"#, "unknown event"),
        ] {
            assert!(t.on_text(bad).unwrap_err().to_string().contains(needle), "{bad}");
        }
    }

    #[test]
    fn outbound_media_clear_and_marks() {
        let mut t = running(TwilioConfig::default());
        let mut out = vec![];
        t.audio(&[0; 160], &mut out);
        t.utterance_done(&mut out);
        assert_eq!(t.on_text(r#"{"event":"mark","mark":{"name":"bot-1"}}"#).unwrap(), Inbound::Mark("bot-1".into()));
        t.audio(&[0; 160], &mut out);
        t.utterance_done(&mut out);
        t.clear(&mut out);
        let v = texts(&out);
        assert_eq!(v[0]["event"], "media");
        assert_eq!(v[0]["streamSid"], "MZ9");
        assert_eq!(media::b64_decode("t", v[0]["media"]["payload"].as_str().unwrap()).unwrap(), vec![0xFF; 160]);
        assert_eq!(v[1], json!({"event":"mark","streamSid":"MZ9","mark":{"name":"bot-1"}}));
        assert_eq!(v[4], json!({"event":"clear","streamSid":"MZ9"}));
        // bot-2 was dropped by the clear: Twilio echoes it anyway.
        assert!(matches!(t.on_text(r#"{"event":"mark","mark":{"name":"bot-2"}}"#).unwrap(), Inbound::Ignored(_)));
        assert_eq!(t.marks_played(), 1);
    }

    #[test]
    fn hang_up_is_a_rest_call_with_basic_auth() {
        let mut t = running(TwilioConfig { auth_token: Some("settings-token".into()), ..Default::default() });
        let mut cfg: cxb_wire::BotConfig = serde_json::from_value(json!({"session_id":"s","telephony":{"twilio":{
            "auth_token":"tok","api_base":"http://127.0.0.1:9/twilio/"}}}))
        .unwrap();
        t.on_config(&cfg);
        let mut out = vec![];
        t.hang_up(&mut out);
        t.hang_up(&mut out);
        assert_eq!(out.len(), 1, "once");
        let OutFrame::Http(req) = &out[0] else { panic!("{out:?}") };
        assert_eq!(req.method, "POST");
        assert_eq!(req.url, "http://127.0.0.1:9/twilio/2010-04-01/Accounts/AC1/Calls/CA7.json");
        assert_eq!(req.body.as_deref(), Some("Status=completed"));
        assert!(req.headers.contains(&("Authorization".into(), media::basic_auth("AC1", "tok"))));
        assert!(req.headers.contains(&("Content-Type".into(), "application/x-www-form-urlencoded".into())));
        // A configured account SID (a subaccount's parent, say) wins over the stream's.
        cfg.telephony.as_mut().unwrap().twilio.as_mut().unwrap().account_sid = Some("ACparent".into());
        let mut t = running(TwilioConfig::default());
        t.on_config(&cfg);
        assert!(t.hangup_request().unwrap().url.contains("/Accounts/ACparent/Calls/CA7.json"));
        // No credentials: close the socket instead.
        let mut t = running(TwilioConfig::default());
        let mut out = vec![];
        t.hang_up(&mut out);
        assert!(matches!(out[0], OutFrame::Close { code: 1000, .. }));
        let mut after = vec![];
        t.audio(&[0; 160], &mut after);
        assert!(after.is_empty());
    }

    /// Found by the fuzz target's URL check: an `accountSid` of `..` from the stream turned the
    /// hang-up into `POST /2010-04-01/Calls/CA7.json` once the URL was parsed.
    #[test]
    fn a_dot_segment_id_never_reaches_the_rest_path() {
        let mut t = Twilio::new(TwilioConfig { auth_token: Some("tok".into()), ..Default::default() });
        t.handshake_text(r#"{"event":"connected"}"#).unwrap();
        t.handshake_text(r#"{"event":"start","start":{"streamSid":"MZ9","accountSid":"..","callSid":"CA7"}}"#).unwrap();
        assert_eq!(t.hangup_request(), None);
        let mut out = vec![];
        t.hang_up(&mut out);
        assert!(matches!(out[..], [OutFrame::Close { code: 1000, .. }]), "{out:?}");
    }
}
