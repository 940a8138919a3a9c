//! The telephony side of `cxb-sim dial` for every protocol the worker serves: how a call's
//! handshake, caller audio and hang-ups look on the wire, and how each bot frame is validated
//! (written from shared/spec/wire-protocols.md §1, §2, §7 — not from the worker's adapters).
//!
//! | Protocol | Route | Caller audio | Bot audio | Clear | Mark echo | Bot hang-up |
//! |---|---|---|---|---|---|---|
//! | dialler | `/ws/{bot}` | `media` PCM16 8 kHz | `reverse-media` | `reverse-media-stop` | — | `reverse-hangup-call` |
//! | exotel | `/exotel/{bot}?sample-rate=` | `media` PCM16 | `media` ≥ 3.2 KB, ×320 B | `clear` | `mark` | socket close |
//! | twilio | `/twilio/{bot}` | `media` μ-law 8 kHz | `media` | `clear` (echoes pending marks) | `mark` | REST `POST …/Calls/{CA}.json` |
//! | telnyx | `/telnyx/{bot}` | `media` PCMU/PCMA | `media` | `clear` | `mark` | REST `POST /v2/calls/{id}/actions/hangup` |
//! | plivo | `/plivo/{bot}?from=&to=` | `media` μ-law / L16 | `playAudio` | `clearAudio` → `clearedAudio` | `checkpoint` → `playedStream` | REST `DELETE /v1/Account/{id}/Call/{id}/` |
//! | vonage | `/vonage/{bot}` | binary L16 | binary, exactly 20 ms | `{"action":"clear"}` → `websocket:cleared` | `notify` → `websocket:notify` | socket close |

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::dialler::{BotEvent, CallReport, Validator};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Dialler,
    Exotel,
    Twilio,
    Telnyx,
    Plivo,
    Vonage,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Dialler => "dialler",
            Protocol::Exotel => "exotel",
            Protocol::Twilio => "twilio",
            Protocol::Telnyx => "telnyx",
            Protocol::Plivo => "plivo",
            Protocol::Vonage => "vonage",
        }
    }

    /// The provider's REST hang-up is how the bot ends the call (else: a socket close / frame).
    pub fn rest_hangup(self) -> bool {
        matches!(self, Protocol::Twilio | Protocol::Telnyx | Protocol::Plivo)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Pcm16,
    Mulaw,
    Alaw,
}

/// The caller-side audio format of a run.
#[derive(Debug, Clone)]
pub struct WireFormat {
    pub protocol: Protocol,
    pub codec: Codec,
    pub rate: u32,
    /// Exotel: the `media_format` object of `start` (it describes the stream; the URL's
    /// `sample-rate` fixes it).
    pub media_format: Value,
}

impl WireFormat {
    /// Protocol defaults: Exotel/dialler PCM16 8 kHz, Twilio μ-law, Telnyx PCMU, Plivo μ-law,
    /// Vonage L16 16 kHz. `encoding`: telnyx `PCMU|PCMA`, plivo `mulaw|l16`; exotel the
    /// `media_format.encoding` label of `start` (default `base64`, as Exotel's integrations send
    /// it) or, given as a JSON object, the whole `media_format` (e.g. a numeric `sample_rate`).
    pub fn new(protocol: Protocol, rate: Option<u32>, encoding: Option<&str>) -> anyhow::Result<Self> {
        let enc = encoding.map(str::to_ascii_lowercase);
        let (codec, default_rate, rates): (Codec, u32, &[u32]) = match protocol {
            Protocol::Dialler => (Codec::Pcm16, 8000, &[8000, 16000]),
            Protocol::Exotel => (Codec::Pcm16, 8000, &[8000, 16000, 24000]),
            Protocol::Twilio => (Codec::Mulaw, 8000, &[8000]),
            Protocol::Telnyx => match enc.as_deref() {
                None | Some("pcmu") => (Codec::Mulaw, 8000, &[8000]),
                Some("pcma") => (Codec::Alaw, 8000, &[8000]),
                Some(e) => anyhow::bail!("telnyx encoding {e:?}: PCMU or PCMA"),
            },
            Protocol::Plivo => match enc.as_deref() {
                None | Some("mulaw") => (Codec::Mulaw, 8000, &[8000]),
                Some("l16") => (Codec::Pcm16, 8000, &[8000, 16000]),
                Some(e) => anyhow::bail!("plivo encoding {e:?}: mulaw or l16"),
            },
            Protocol::Vonage => (Codec::Pcm16, 16000, &[8000, 16000, 24000]),
        };
        if encoding.is_some() && !matches!(protocol, Protocol::Telnyx | Protocol::Plivo | Protocol::Exotel) {
            anyhow::bail!("--encoding applies to exotel, telnyx and plivo only");
        }
        let rate = rate.unwrap_or(default_rate);
        if !rates.contains(&rate) {
            anyhow::bail!("{} does not stream at {rate} Hz (supported: {rates:?})", protocol.name());
        }
        let media_format =
            if protocol == Protocol::Exotel { exotel_media_format(encoding, rate)? } else { Value::Null };
        Ok(Self { protocol, codec, rate, media_format })
    }

    pub fn bytes_per_sample(&self) -> usize {
        if self.codec == Codec::Pcm16 {
            2
        } else {
            1
        }
    }

    /// 8 kHz caller samples (the WAVs) → wire bytes at this format.
    pub fn encode_8k(&self, samples: &[i16]) -> Vec<u8> {
        let up = upsample(samples, (self.rate / 8000) as usize);
        match self.codec {
            Codec::Pcm16 => up.iter().flat_map(|s| s.to_le_bytes()).collect(),
            Codec::Mulaw => up.iter().map(|s| g711::ulaw_encode(*s)).collect(),
            Codec::Alaw => up.iter().map(|s| g711::alaw_encode(*s)).collect(),
        }
    }

    /// Is there sound in these wire bytes (bot audio)?
    pub fn audible(&self, bytes: &[u8]) -> bool {
        match self.codec {
            Codec::Pcm16 => bytes.chunks_exact(2).any(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs() > 64),
            Codec::Mulaw => bytes.iter().any(|b| g711::ulaw_decode(*b).unsigned_abs() > 64),
            Codec::Alaw => bytes.iter().any(|b| g711::alaw_decode(*b).unsigned_abs() > 64),
        }
    }

    pub fn duration(&self, bytes: usize) -> Duration {
        Duration::from_micros((bytes / self.bytes_per_sample()) as u64 * 1_000_000 / u64::from(self.rate))
    }
}

/// Exotel's `start.media_format` as its developer docs and public integrations show it:
/// `{"encoding":"base64","sample_rate":"8000","bit_rate":"128kbps"}` (every value a string).
/// `spec` replaces the encoding label, or the whole object when it is one (`{"sample_rate":8000,…}`).
fn exotel_media_format(spec: Option<&str>, rate: u32) -> anyhow::Result<Value> {
    let documented = json!({"encoding": "base64", "sample_rate": rate.to_string(), "bit_rate": "128kbps"});
    Ok(match spec.map(str::trim) {
        None => documented,
        Some(s) if s.starts_with('{') => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => anyhow::bail!("exotel --encoding {s:?}: not a JSON object"),
        },
        Some(label) => {
            let mut v = documented;
            v["encoding"] = json!(label);
            v
        }
    })
}

/// Linear interpolation by an integer factor (good enough for the energy-based STT double).
fn upsample(s: &[i16], factor: usize) -> Vec<i16> {
    if factor <= 1 {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len() * factor);
    for (i, a) in s.iter().enumerate() {
        let b = s.get(i + 1).copied().unwrap_or(*a);
        for k in 0..factor {
            out.push((*a as i32 + (b as i32 - *a as i32) * k as i32 / factor as i32) as i16);
        }
    }
    out
}

/// G.711 written from the ITU-T description (segment search), independently of the worker's
/// table-driven codec, so a codec bug on one side shows up as noise or silence on the other.
pub mod g711 {
    pub fn ulaw_encode(s: i16) -> u8 {
        const BIAS: i32 = 0x84;
        let mut v = s as i32;
        let sign = if v < 0 {
            v = -v;
            0x80
        } else {
            0
        };
        v = v.min(32635) + BIAS;
        let mut exp = 7;
        while exp > 0 && v & (0x4000 >> (7 - exp)) == 0 {
            exp -= 1;
        }
        let mant = (v >> (exp + 3)) & 0x0F;
        !(sign | (exp << 4) | mant) as u8
    }

    pub fn ulaw_decode(c: u8) -> i16 {
        let c = !c as i32;
        let t = (((c & 0x0F) << 3) + 0x84) << ((c & 0x70) >> 4);
        (if c & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
    }

    pub fn alaw_encode(s: i16) -> u8 {
        let (v, mask) = if s >= 0 { ((s as i32) >> 3, 0xD5) } else { (-((s as i32) >> 3) - 1, 0x55) };
        let mut seg = 0;
        while seg < 8 && v > ((0x20 << seg) - 1) {
            seg += 1;
        }
        if seg >= 8 {
            return (0x7F ^ mask) as u8;
        }
        let mant = if seg < 2 { (v >> 1) & 0x0F } else { (v >> seg) & 0x0F };
        (((seg << 4) | mant) ^ mask) as u8
    }

    pub fn alaw_decode(c: u8) -> i16 {
        let a = (c ^ 0x55) as i32;
        let seg = (a & 0x70) >> 4;
        let mut t = (a & 0x0F) << 4;
        t = match seg {
            0 => t + 8,
            1 => t + 0x108,
            _ => (t + 0x108) << (seg - 1),
        };
        (if a & 0x80 != 0 { t } else { -t }) as i16
    }
}

/// One caller frame, pre-encoded once per run and shared by every call.
#[derive(Debug, Clone)]
pub enum FramePayload {
    /// A complete text frame (the dialler's `media`).
    Text(Utf8Bytes),
    /// A base64 payload wrapped per call (the frame carries the call's ids).
    B64(Arc<str>),
    /// A binary frame (Vonage).
    Bin(Bytes),
}

impl WireFormat {
    pub fn frame(&self, samples_8k: &[i16]) -> FramePayload {
        let bytes = self.encode_8k(samples_8k);
        match self.protocol {
            Protocol::Dialler => FramePayload::Text(crate::dialler::media_frame(samples_8k)),
            Protocol::Vonage => FramePayload::Bin(Bytes::from(bytes)),
            _ => FramePayload::B64(base64::engine::general_purpose::STANDARD.encode(bytes).into()),
        }
    }
}

/// A reply the far end sends to a bot frame.
#[derive(Debug, Clone)]
pub enum Reply {
    Now(Message),
    /// Once the audio received before it has played (mark / checkpoint / notify echoes).
    AfterPlayout(Message),
}

#[derive(Debug, Clone)]
pub struct Checked {
    pub ev: BotEvent,
    pub reply: Option<Reply>,
}

impl From<BotEvent> for Checked {
    fn from(ev: BotEvent) -> Self {
        Checked { ev, reply: None }
    }
}

/// One call's identity and protocol state.
pub struct Session {
    pub fmt: Arc<WireFormat>,
    pub stream_id: String,
    pub call_id: String,
    pub account_id: String,
    pub caller_id: String,
    pub did: String,
    seq: u64,
    sent_ms: u64,
    frame_ms: u64,
    dialler: Validator,
    /// Exotel: a chunk shorter than 3.2 KB was seen; the next bot frame must not be media.
    short_chunk_open: bool,
    buf: Vec<u8>,
}

fn trunc(s: &str) -> String {
    let mut out: String = s.chars().take(160).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

impl Session {
    pub fn new(fmt: Arc<WireFormat>, index: usize, number_base: u64, frame_ms: u64) -> Self {
        let n = (number_base + index as u64) % 100_000_000;
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let (stream_id, call_id, account_id) = match fmt.protocol {
            Protocol::Exotel | Protocol::Twilio => {
                (format!("MZ{uuid}"), format!("CA{uuid}"), "ACsim0000000000000000000000000001".to_string())
            }
            Protocol::Telnyx => (uuid.clone(), format!("v3:{uuid}"), String::new()),
            Protocol::Plivo => (uuid.clone(), format!("call-{uuid}"), "MASIMPLIVO0001".into()),
            _ => (uuid.clone(), uuid, String::new()),
        };
        let caller_id = format!("+9198{n:08}");
        let did = "+911140000000".to_string();
        let dialler = Validator::new(&stream_id, &caller_id, &did);
        Self {
            fmt,
            stream_id,
            call_id,
            account_id,
            caller_id,
            did,
            seq: 1,
            sent_ms: 0,
            frame_ms,
            dialler,
            short_chunk_open: false,
            buf: Vec::with_capacity(4096),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The URL to dial: protocol options in the query.
    pub fn url(&self, base: &str) -> String {
        let sep = if base.contains('?') { '&' } else { '?' };
        match self.fmt.protocol {
            Protocol::Exotel if !base.contains("sample-rate=") => {
                format!("{base}{sep}sample-rate={}&crm_id=CRM-{}", self.fmt.rate, &self.caller_id[5..])
            }
            Protocol::Plivo => format!(
                "{base}{sep}from={}&to={}&customer_name=Test%20Caller",
                urlencode(&self.caller_id),
                urlencode(&self.did)
            ),
            _ => base.to_string(),
        }
    }

    pub fn handshake(&self) -> Vec<Message> {
        let (sid, call, acct, caller, did) =
            (&self.stream_id, &self.call_id, &self.account_id, &self.caller_id, &self.did);
        match self.fmt.protocol {
            Protocol::Dialler => vec![
                text(json!({"event":"connected","callerId":caller,"did":did,"callDirection":"incoming",
                    "streamId":sid,"customer_name":"Test Caller"})),
                text(
                    json!({"event":"start","streamId":sid,"mediaFormat":{"encoding":"LINEAR","sampleRate":self.fmt.rate,"channels":1}}),
                ),
                text(json!({"event":"answer"})),
            ],
            // Exotel's `start` as its docs and integrations show it, with the numeric
            // `sequence_number` real streams carry.
            Protocol::Exotel => vec![
                text(json!({"event":"connected"})),
                text(json!({"event":"start","sequence_number":1,"stream_sid":sid,"start":{"stream_sid":sid,
                    "call_sid":call,"account_sid":acct,"from":caller,"to":did,
                    "custom_parameters":{"crm_id":format!("CRM-{}", &caller[5..]),"customer_name":"Test Caller"},
                    "media_format":self.fmt.media_format}})),
            ],
            Protocol::Twilio => vec![
                text(json!({"event":"connected","protocol":"Call","version":"1.0.0"})),
                text(json!({"event":"start","sequenceNumber":"1","streamSid":sid,"start":{"streamSid":sid,
                    "accountSid":acct,"callSid":call,"tracks":["inbound"],
                    "customParameters":{"From":caller,"To":did,"Direction":"inbound","customer_name":"Test Caller"},
                    "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}})),
            ],
            Protocol::Telnyx => vec![
                text(json!({"event":"connected","version":"1.0.0"})),
                text(json!({"event":"start","sequence_number":"1","stream_id":sid,"start":{"call_control_id":call,
                    "from":caller,"to":did,"direction":"incoming",
                    "media_format":{"encoding":if self.fmt.codec == Codec::Alaw {"PCMA"} else {"PCMU"},"sample_rate":8000,"channels":1}}})),
            ],
            Protocol::Plivo => vec![text(json!({"event":"start","sequenceNumber":0,"start":{"callId":call,
                "streamId":sid,"accountId":acct,"tracks":["inbound"],"mediaFormat":{
                    "encoding":if self.fmt.codec == Codec::Mulaw {"audio/x-mulaw"} else {"audio/x-l16"},
                    "sampleRate":self.fmt.rate}},"extra_headers":"{}"}))],
            Protocol::Vonage => vec![text(json!({"event":"websocket:connected",
                "content-type":format!("audio/l16;rate={}", self.fmt.rate),
                "from":caller,"to":did,"uuid":sid,"customer_name":"Test Caller"}))],
        }
    }

    /// A caller frame as this call sends it.
    pub fn media(&mut self, f: &FramePayload) -> Message {
        let seq = self.next_seq();
        let ts = self.sent_ms;
        self.sent_ms += self.frame_ms;
        let chunk = seq - 1;
        match f {
            FramePayload::Text(t) => Message::Text(t.clone()),
            FramePayload::Bin(b) => Message::Binary(b.clone()),
            FramePayload::B64(p) => {
                let (sid, p) = (&self.stream_id, &**p);
                let s = match self.fmt.protocol {
                    Protocol::Exotel => format!(
                        r#"{{"event":"media","sequence_number":{seq},"stream_sid":"{sid}","media":{{"chunk":{chunk},"timestamp":"{ts}","payload":"{p}"}}}}"#
                    ),
                    Protocol::Twilio => format!(
                        r#"{{"event":"media","sequenceNumber":"{seq}","streamSid":"{sid}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{ts}","payload":"{p}"}}}}"#
                    ),
                    Protocol::Telnyx => format!(
                        r#"{{"event":"media","sequence_number":"{seq}","stream_id":"{sid}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{ts}","payload":"{p}"}}}}"#
                    ),
                    _ => format!(
                        r#"{{"event":"media","sequenceNumber":{seq},"streamId":"{sid}","media":{{"track":"inbound","timestamp":"{ts}","chunk":{chunk},"payload":"{p}"}},"extra_headers":"{{}}"}}"#
                    ),
                };
                Message::Text(s.into())
            }
        }
    }

    /// The customer hangs up (sent before the close).
    pub fn customer_hangup(&mut self) -> Vec<Message> {
        let seq = self.next_seq().to_string();
        match self.fmt.protocol {
            Protocol::Dialler => vec![text(json!({"event":"hangup-call","disconnectedBy":"customer"}))],
            Protocol::Exotel => vec![text(json!({"event":"stop","sequence_number":seq,"stream_sid":self.stream_id,
                "stop":{"call_sid":self.call_id,"account_sid":self.account_id,"reason":"callended"}}))],
            Protocol::Twilio => vec![text(json!({"event":"stop","sequenceNumber":seq,"streamSid":self.stream_id,
                "stop":{"accountSid":self.account_id,"callSid":self.call_id}}))],
            Protocol::Telnyx => vec![text(json!({"event":"stop","sequence_number":seq,"stream_id":self.stream_id,
                "stop":{"call_control_id":self.call_id}}))],
            // Plivo and Vonage just close the socket.
            Protocol::Plivo | Protocol::Vonage => vec![],
        }
    }

    /// What the far end sends after the bot's hang-up reached it.
    pub fn after_bot_hangup(&mut self) -> Vec<Message> {
        match self.fmt.protocol {
            Protocol::Dialler => vec![text(json!({"event":"hangup-call","disconnectedBy":"bot"}))],
            _ => self.customer_hangup(),
        }
    }

    /// (provider, call id) of the REST hang-up this call expects.
    pub fn rest_hangup_id(&self) -> Option<(&'static str, &str)> {
        self.fmt.protocol.rest_hangup().then(|| (self.fmt.protocol.name(), self.call_id.as_str()))
    }

    /// Twilio echoes marks still pending when a `clear` drops them.
    pub fn echo_marks_on_clear(&self) -> bool {
        self.fmt.protocol == Protocol::Twilio
    }

    fn payload(&mut self, p: &str, rep: &mut CallReport, ev: &str) -> Option<usize> {
        self.buf.clear();
        if base64::engine::general_purpose::STANDARD.decode_vec(p.as_bytes(), &mut self.buf).is_err() {
            rep.violation(&format!("{ev}.payload_not_base64"), || trunc(p));
            return None;
        }
        Some(self.buf.len())
    }

    fn media_event(&mut self, bytes: usize, rep: &mut CallReport) -> BotEvent {
        rep.bot_frames += 1;
        BotEvent::Media { audible: self.fmt.audible(&self.buf[..bytes]), dur: self.fmt.duration(bytes) }
    }

    fn ident(&self, rep: &mut CallReport, v: &Value, ev: &str, key: &str) {
        match v.get(key) {
            Some(Value::String(s)) if *s == self.stream_id => {}
            Some(Value::String(s)) => {
                rep.violation(&format!("{ev}.wrong.{key}"), || format!("{s:?} ≠ {:?}", self.stream_id))
            }
            Some(_) => rep.violation(&format!("{ev}.bad_type.{key}"), || v.to_string()),
            None => rep.violation(&format!("{ev}.missing.{key}"), || trunc(&v.to_string())),
        }
    }

    fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
        let mut x = v;
        for p in path {
            x = x.get(p)?;
        }
        x.as_str()
    }

    /// Validate a bot text frame.
    pub fn check_text(&mut self, t: &str, rep: &mut CallReport) -> Checked {
        let proto = self.fmt.protocol;
        if proto == Protocol::Dialler {
            return self.dialler.check(t, rep).into();
        }
        let v: Value = match serde_json::from_str(t) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                rep.violation("not_json_object", || trunc(t));
                return BotEvent::Ignored.into();
            }
        };
        if proto == Protocol::Vonage {
            return self.check_vonage(&v, rep);
        }
        let Some(event) = v.get("event").and_then(Value::as_str).map(str::to_string) else {
            rep.violation("missing.event", || trunc(t));
            return BotEvent::Ignored.into();
        };
        if proto == Protocol::Exotel {
            if let Some(path) = non_string(&v, "") {
                rep.violation(&format!("{event}.non_string_value"), || format!("{path} in {}", trunc(t)));
            }
        }
        let seq = self.next_seq();
        let sid_key = match proto {
            Protocol::Exotel => Some("stream_sid"),
            Protocol::Twilio => Some("streamSid"),
            Protocol::Plivo => Some("streamId"),
            _ => None,
        };
        let media_event = if proto == Protocol::Plivo { "playAudio" } else { "media" };
        let clear_event = if proto == Protocol::Plivo { "clearAudio" } else { "clear" };
        let mark_event = if proto == Protocol::Plivo { "checkpoint" } else { "mark" };
        if let Some(k) = sid_key {
            self.ident(rep, &v, &event, k);
        }
        if event == media_event {
            let Some(p) = Self::str_at(&v, &["media", "payload"]) else {
                rep.violation(&format!("{event}.missing.media.payload"), || trunc(t));
                return BotEvent::Ignored.into();
            };
            let Some(bytes) = self.payload(p, rep, &event) else { return BotEvent::Ignored.into() };
            match proto {
                Protocol::Exotel => {
                    if v.as_object().is_some_and(|o| o.len() != 3)
                        || v["media"].as_object().is_some_and(|m| m.len() != 1)
                    {
                        rep.violation("media.unexpected_fields", || trunc(t));
                    }
                    if bytes % 320 != 0 {
                        rep.violation("media.size_not_multiple_of_320", || bytes.to_string());
                    }
                    if bytes > 100 * 1024 {
                        rep.violation("media.larger_than_100KB", || bytes.to_string());
                    }
                    if self.short_chunk_open {
                        rep.violation("media.short_chunk_not_final", || {
                            "a chunk < 3200 bytes was followed by more media".into()
                        });
                    }
                    self.short_chunk_open = bytes < 3200;
                }
                Protocol::Plivo => {
                    let want_ct = if self.fmt.codec == Codec::Mulaw { "audio/x-mulaw" } else { "audio/x-l16" };
                    if Self::str_at(&v, &["media", "contentType"]) != Some(want_ct) {
                        rep.violation("playAudio.wrong.contentType", || trunc(t));
                    }
                    if v["media"]["sampleRate"].as_u64() != Some(u64::from(self.fmt.rate)) {
                        rep.violation("playAudio.wrong.sampleRate", || trunc(t));
                    }
                }
                _ => {}
            }
            if bytes == 0 || bytes % self.fmt.bytes_per_sample() != 0 {
                rep.payload_size_mismatches += 1;
                rep.violation(&format!("{event}.payload_size"), || bytes.to_string());
            }
            return self.media_event(bytes, rep).into();
        }
        self.short_chunk_open = false;
        if event == clear_event {
            let reply = (proto == Protocol::Plivo).then(|| {
                Reply::Now(text(json!({"event":"clearedAudio","streamId":self.stream_id,"sequenceNumber":seq})))
            });
            return Checked { ev: BotEvent::MediaStop, reply };
        }
        if event == mark_event {
            let name_path: &[&str] = if proto == Protocol::Plivo { &["name"] } else { &["mark", "name"] };
            let Some(name) = Self::str_at(&v, name_path).map(str::to_string) else {
                rep.violation(&format!("{event}.missing.name"), || trunc(t));
                return BotEvent::Ignored.into();
            };
            rep.marks_sent += 1;
            let echo = match proto {
                Protocol::Exotel => {
                    json!({"event":"mark","sequence_number":seq.to_string(),"stream_sid":self.stream_id,"mark":{"name":name}})
                }
                Protocol::Twilio => {
                    json!({"event":"mark","sequenceNumber":seq.to_string(),"streamSid":self.stream_id,"mark":{"name":name}})
                }
                Protocol::Telnyx => {
                    json!({"event":"mark","sequence_number":seq.to_string(),"stream_id":self.stream_id,"mark":{"name":name}})
                }
                _ => json!({"event":"playedStream","sequenceNumber":seq,"streamId":self.stream_id,"name":name}),
            };
            return Checked { ev: BotEvent::Ignored, reply: Some(Reply::AfterPlayout(text(echo))) };
        }
        rep.violation(&format!("unknown_event.{}", event.chars().take(32).collect::<String>()), || trunc(t));
        BotEvent::Ignored.into()
    }

    fn check_vonage(&mut self, v: &Value, rep: &mut CallReport) -> Checked {
        match v.get("action").and_then(Value::as_str) {
            Some("clear") => {
                Checked { ev: BotEvent::MediaStop, reply: Some(Reply::Now(text(json!({"event":"websocket:cleared"})))) }
            }
            Some("notify") => {
                rep.marks_sent += 1;
                let payload = v.get("payload").cloned().unwrap_or(Value::Null);
                Checked {
                    ev: BotEvent::Ignored,
                    reply: Some(Reply::AfterPlayout(text(json!({"event":"websocket:notify","payload":payload})))),
                }
            }
            _ => {
                rep.violation("unknown_action", || trunc(&v.to_string()));
                BotEvent::Ignored.into()
            }
        }
    }

    /// Validate a bot binary frame.
    pub fn check_binary(&mut self, b: &[u8], rep: &mut CallReport) -> Checked {
        if self.fmt.protocol != Protocol::Vonage {
            rep.violation("binary_frame", || "bot sent a binary frame".into());
            return BotEvent::Ignored.into();
        }
        let want = (self.fmt.rate / 50) as usize * 2;
        if b.len() != want {
            rep.payload_size_mismatches += 1;
            rep.violation("binary.not_20ms", || format!("{} bytes, want {want}", b.len()));
        }
        self.buf.clear();
        self.buf.extend_from_slice(b);
        self.media_event(b.len(), rep).into()
    }
}

/// Path of the first non-string scalar (Exotel sends and expects every value as a string).
fn non_string(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(_) => None,
        Value::Object(o) => o.iter().find_map(|(k, x)| non_string(x, &format!("{path}.{k}"))),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| non_string(x, &format!("{path}[{i}]"))),
        _ => Some(path.to_string()),
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_matches_known_values() {
        use g711::*;
        for (s, u, a) in
            [(0i16, 0xFFu8, 0xD5u8), (1000, 0xCE, 0xFA), (-1000, 0x4E, 0x7A), (32767, 0x80, 0xAA), (-32768, 0x00, 0x2A)]
        {
            assert_eq!(ulaw_encode(s), u, "ulaw {s}");
            assert_eq!(alaw_encode(s), a, "alaw {s}");
        }
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(alaw_decode(0xD5), 8);
        for c in 0..=255u8 {
            let back = if c == 0x7F { 0xFF } else { c };
            assert_eq!(ulaw_encode(ulaw_decode(c)), back, "{c:#x}");
            assert_eq!(alaw_encode(alaw_decode(c)), c, "{c:#x}");
        }
    }

    fn session(p: Protocol, rate: Option<u32>) -> Session {
        Session::new(Arc::new(WireFormat::new(p, rate, None).unwrap()), 0, 1, 20)
    }

    #[test]
    fn formats_and_frames() {
        assert!(WireFormat::new(Protocol::Twilio, Some(16000), None).is_err());
        assert!(WireFormat::new(Protocol::Twilio, None, Some("pcma")).is_err());
        assert_eq!(WireFormat::new(Protocol::Telnyx, None, Some("PCMA")).unwrap().codec, Codec::Alaw);
        let f = WireFormat::new(Protocol::Exotel, Some(24000), None).unwrap();
        assert_eq!(f.encode_8k(&[0; 160]).len(), 960);
        let mut s = session(Protocol::Exotel, None);
        let frame = s.fmt.frame(&[0; 160]);
        let Message::Text(t) = s.media(&frame) else { panic!() };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["stream_sid"], s.stream_id.as_str());
        // Numeric `sequence_number` and `chunk`, as real Exotel streams send them.
        assert!(v["sequence_number"].is_u64() && v["media"]["chunk"].is_u64(), "{v}");
        assert!(s.url("ws://h/exotel/demo").contains("sample-rate=8000"));
        // Exotel's documented `start`: `encoding: "base64"`, the rate as a string, the call's ids.
        let Message::Text(t) = &s.handshake()[1] else { panic!() };
        let start: Value = serde_json::from_str(t).unwrap();
        assert_eq!(
            start["start"]["media_format"],
            json!({"encoding":"base64","sample_rate":"8000","bit_rate":"128kbps"})
        );
        for k in ["stream_sid", "call_sid", "account_sid", "from", "to"] {
            assert!(start["start"][k].as_str().is_some_and(|v| !v.is_empty()), "{k}: {start}");
        }
        assert_eq!(start["start"]["custom_parameters"]["customer_name"], "Test Caller");
        // --encoding: a label, or the whole media_format.
        let f = WireFormat::new(Protocol::Exotel, None, Some("audio/x-raw")).unwrap();
        assert_eq!(f.media_format["encoding"], "audio/x-raw");
        let f = WireFormat::new(Protocol::Exotel, None, Some(r#"{"encoding":"base64","sample_rate":8000}"#)).unwrap();
        assert_eq!(f.media_format["sample_rate"], 8000);
        assert!(WireFormat::new(Protocol::Exotel, None, Some("{oops")).is_err());
        assert!(WireFormat::new(Protocol::Twilio, None, Some("base64")).is_err());
        let mut s = session(Protocol::Plivo, None);
        let Message::Text(t) = s.media(&s.fmt.clone().frame(&[0; 160])) else { panic!() };
        let _: Value = serde_json::from_str(&t).unwrap();
        let mut s = session(Protocol::Twilio, None);
        let Message::Text(t) = s.media(&s.fmt.clone().frame(&[0; 160])) else { panic!() };
        let _: Value = serde_json::from_str(&t).unwrap();
        let mut s = session(Protocol::Telnyx, None);
        let Message::Text(t) = s.media(&s.fmt.clone().frame(&[0; 160])) else { panic!() };
        let _: Value = serde_json::from_str(&t).unwrap();
        for p in
            [Protocol::Dialler, Protocol::Exotel, Protocol::Twilio, Protocol::Telnyx, Protocol::Plivo, Protocol::Vonage]
        {
            let s = session(p, None);
            for m in s.handshake() {
                let Message::Text(t) = m else { panic!() };
                let _: Value = serde_json::from_str(&t).unwrap();
            }
        }
    }

    #[test]
    fn exotel_validation() {
        let mut s = session(Protocol::Exotel, None);
        let sid = s.stream_id.clone();
        let mut rep = CallReport::default();
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![9u8; n]);
        let media = |n: usize| json!({"event":"media","stream_sid":sid,"media":{"payload":b64(n)}}).to_string();
        let c = s.check_text(&media(3200), &mut rep);
        assert!(matches!(c.ev, BotEvent::Media { audible: true, .. }));
        s.check_text(&media(640), &mut rep);
        let c = s.check_text(&json!({"event":"mark","stream_sid":sid,"mark":{"name":"m1"}}).to_string(), &mut rep);
        assert!(matches!(c.reply, Some(Reply::AfterPlayout(_))));
        assert!(rep.violations.is_empty(), "{:?}", rep.violations);
        s.check_text(&media(1000), &mut rep);
        s.check_text(&media(640), &mut rep);
        s.check_text(&media(3200), &mut rep);
        s.check_text(
            &json!({"event":"media","stream_sid":"x","media":{"payload":b64(3200)},"seq":1}).to_string(),
            &mut rep,
        );
        for k in [
            "media.size_not_multiple_of_320",
            "media.short_chunk_not_final",
            "media.wrong.stream_sid",
            "media.non_string_value",
            "media.unexpected_fields",
        ] {
            assert!(rep.violations.contains_key(k), "{k}: {:?}", rep.violations);
        }
        let c = s.check_text(&json!({"event":"clear","stream_sid":sid}).to_string(), &mut rep);
        assert_eq!(c.ev, BotEvent::MediaStop);
    }

    #[test]
    fn vonage_and_plivo_validation() {
        let mut s = session(Protocol::Vonage, None);
        let mut rep = CallReport::default();
        assert!(matches!(s.check_binary(&[1u8; 640], &mut rep).ev, BotEvent::Media { .. }));
        s.check_binary(&[1u8; 600], &mut rep);
        assert!(rep.violations.contains_key("binary.not_20ms"));
        assert!(matches!(s.check_text(r#"{"action":"clear"}"#, &mut rep).reply, Some(Reply::Now(_))));
        assert!(matches!(
            s.check_text(r#"{"action":"notify","payload":{"mark":"a"}}"#, &mut rep).reply,
            Some(Reply::AfterPlayout(_))
        ));
        let mut s = session(Protocol::Plivo, None);
        let mut rep = CallReport::default();
        let ok = json!({"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"//8="},"streamId":s.stream_id});
        assert!(matches!(s.check_text(&ok.to_string(), &mut rep).ev, BotEvent::Media { audible: false, .. }));
        assert!(rep.violations.is_empty(), "{:?}", rep.violations);
        let c =
            s.check_text(&json!({"event":"checkpoint","streamId":s.stream_id,"name":"bot-1"}).to_string(), &mut rep);
        let Some(Reply::AfterPlayout(Message::Text(t))) = c.reply else { panic!() };
        assert!(t.contains("playedStream"));
    }
}
