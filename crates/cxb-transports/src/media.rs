//! Pieces shared by the media-stream protocols (Exotel, Twilio, Telnyx, Plivo, Vonage): JSON field
//! access with clear errors, wire codecs (PCM16LE, μ-law, A-law) with resampling for rates the
//! engine cannot run at, minimum-size chunking, playback marks and REST-call helpers.

use std::borrow::Cow;
use std::collections::VecDeque;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::resample::Resampler;
use crate::{HttpRequest, Inbound, ProtocolError};

/// Longest audio accepted in one inbound frame. Real peers send 20–100 ms; anything this long is
/// a broken or hostile peer, and would stall the VAD/STT path.
pub const MAX_INBOUND_FRAME_MS: u64 = 2000;

fn truncate(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// One parsed JSON text frame: its `event` (or Vonage's `action`-less `event`) and its fields.
#[derive(Debug)]
pub struct Json {
    pub proto: &'static str,
    pub event: String,
    pub obj: Map<String, Value>,
}

impl Json {
    /// Parse a text frame that must be a JSON object with a string `event` field.
    pub fn parse(proto: &'static str, text: &str) -> Result<Self, ProtocolError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ProtocolError::Malformed(format!("{proto}: frame is not JSON: {e}")))?;
        let Value::Object(mut obj) = v else {
            return Err(ProtocolError::Malformed(format!("{proto}: frame is not a JSON object")));
        };
        let event = match obj.remove("event") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(ProtocolError::Malformed(format!("{proto}: field \"event\" must be a string"))),
            None => return Err(ProtocolError::Malformed(format!("{proto}: frame has no \"event\" field"))),
        };
        Ok(Self { proto, event, obj })
    }

    pub fn unknown_event(&self) -> ProtocolError {
        ProtocolError::Malformed(format!("{}: unknown event {:?}", self.proto, truncate(&self.event, 64)))
    }

    /// The value at a dotted path; `Ok(None)` when absent, an error when a parent on the path
    /// is present but not an object.
    fn lookup(&self, path: &str) -> Result<Option<&Value>, ProtocolError> {
        let mut parts = path.split('.');
        let Some(mut v) = parts.next().and_then(|first| self.obj.get(first)) else { return Ok(None) };
        let mut walked = path.split('.').next().unwrap_or_default().len();
        for p in parts {
            match v {
                Value::Object(o) => match o.get(p) {
                    Some(x) => v = x,
                    None => return Ok(None),
                },
                Value::Null => return Ok(None),
                _ => return Err(self.type_error(&path[..walked], "an object")),
            }
            walked += 1 + p.len();
        }
        Ok(Some(v))
    }

    fn type_error(&self, path: &str, want: &str) -> ProtocolError {
        ProtocolError::Malformed(format!("{} {}: field {path:?} must be {want}", self.proto, self.event))
    }

    pub fn missing(&self, path: &str) -> ProtocolError {
        ProtocolError::Malformed(format!("{} {}: field {path:?} is missing", self.proto, self.event))
    }

    /// An optional string field (`null` counts as absent); any other type is an error.
    pub fn opt_str(&self, path: &str) -> Result<Option<&str>, ProtocolError> {
        match self.lookup(path)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.type_error(path, "a string")),
        }
    }

    pub fn req_str(&self, path: &str) -> Result<&str, ProtocolError> {
        self.opt_str(path)?.ok_or_else(|| self.missing(path))
    }

    /// A numeric field sent as a string (Exotel sends every value as a string) or as a number
    /// (`8000`, `8000.0` and `"8000"` are the same).
    pub fn opt_num(&self, path: &str) -> Result<Option<u64>, ProtocolError> {
        match self.lookup(path)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                s.trim().parse::<u64>().map(Some).map_err(|_| self.type_error(path, "a whole number"))
            }
            Some(Value::Number(n)) => whole_number(n).map(Some).ok_or_else(|| self.type_error(path, "a whole number")),
            Some(_) => Err(self.type_error(path, "a number or numeric string")),
        }
    }

    /// A sample rate as peers label it: `8000`, `"8000"`, `"8000Hz"`, `"8kHz"`.
    pub fn opt_rate(&self, path: &str) -> Result<Option<u32>, ProtocolError> {
        let want = "a sample rate such as 8000 or \"8000Hz\"";
        match self.lookup(path)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => {
                cxb_wire::serde_util::parse_sample_rate(s).map(Some).ok_or_else(|| self.type_error(path, want))
            }
            Some(Value::Number(n)) => {
                whole_number(n).and_then(|r| u32::try_from(r).ok()).map(Some).ok_or_else(|| self.type_error(path, want))
            }
            Some(_) => Err(self.type_error(path, want)),
        }
    }

    /// An optional text field that peers send as a string or a number (phone numbers, digits,
    /// mark names): numbers and booleans are taken as their text.
    pub fn opt_scalar(&self, path: &str) -> Result<Option<String>, ProtocolError> {
        match self.lookup(path)? {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar_string(v).map(Some).ok_or_else(|| self.type_error(path, "a string or a number")),
        }
    }

    pub fn req_scalar(&self, path: &str) -> Result<String, ProtocolError> {
        self.opt_scalar(path)?.ok_or_else(|| self.missing(path))
    }

    /// The first non-empty string among `paths` (ids that providers put at the top level, inside
    /// the event object, or under another spelling).
    pub fn first_str(&self, paths: &[&str]) -> Result<Option<String>, ProtocolError> {
        for p in paths {
            if let Some(s) = self.opt_str(p)?.filter(|s| !s.is_empty()) {
                return Ok(Some(s.to_string()));
            }
        }
        Ok(None)
    }

    /// Custom parameters as providers send them: an object, a list of `{"name","value"}` pairs
    /// (Telnyx's API), or an object serialised into a string. Anything else is kept by the caller
    /// verbatim and yields no pairs.
    pub fn params(&self, path: &str) -> Result<Map<String, Value>, ProtocolError> {
        Ok(match self.lookup(path)? {
            Some(Value::Object(o)) => o.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|it| {
                    let name = it.get("name").and_then(scalar_string)?;
                    Some((name, it.get("value").cloned().unwrap_or(Value::Null)))
                })
                .collect(),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(o)) => o,
                _ => Map::new(),
            },
            _ => Map::new(),
        })
    }

    /// The codec an encoding label at `path` stands for on a route that plays `allowed` (the
    /// first is the protocol's own, used when the label is absent or names no codec), and the
    /// rate the label carries, if any.
    pub fn codec_label(&self, path: &str, allowed: &[Codec]) -> Result<(Codec, Option<u32>), ProtocolError> {
        match self.opt_str(path)? {
            None => Ok((allowed[0], None)),
            Some(label) => check_label(self.proto, &self.event, path, label, allowed),
        }
    }

    /// A DTMF digit field (a string or a number).
    pub fn dtmf(&self, path: &str) -> Result<String, ProtocolError> {
        dtmf_digit(self.proto, &self.req_scalar(path)?)
    }

    /// A rate at `path`, when given, must be one of `allowed` (`why` says what the route streams).
    pub fn check_rate(&self, path: &str, allowed: &[u32], why: &str) -> Result<Option<u32>, ProtocolError> {
        match self.opt_rate(path)? {
            Some(r) if !allowed.contains(&r) => Err(unplayable(self.proto, &self.event, path, r, why)),
            r => Ok(r),
        }
    }

    /// `channels`, when given, must be 1.
    pub fn check_mono(&self, path: &str) -> Result<(), ProtocolError> {
        match self.opt_num(path)? {
            Some(c) if c != 1 => Err(unplayable(self.proto, &self.event, path, c, "only mono audio is supported")),
            _ => Ok(()),
        }
    }

    /// An optional object field.
    pub fn opt_obj(&self, path: &str) -> Result<Option<&Map<String, Value>>, ProtocolError> {
        match self.lookup(path)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(self.type_error(path, "an object")),
        }
    }

    pub fn req_obj(&self, path: &str) -> Result<&Map<String, Value>, ProtocolError> {
        self.opt_obj(path)?.ok_or_else(|| self.missing(path))
    }
}

/// A well-formed inbound `media` event, parsed without building a JSON tree (the hot path: one
/// per 20–100 ms per call). Anything else — other events, wrong field types, bad JSON — yields
/// `None` and goes through [`Json::parse`], which names the problem precisely.
#[derive(Debug, Deserialize)]
pub struct FastMedia<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    media: FastPayload<'a>,
    #[serde(borrow, default)]
    pub stream_sid: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct FastPayload<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
    #[serde(borrow, default)]
    track: Option<Cow<'a, str>>,
}

impl<'a> FastMedia<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let f: FastMedia<'a> = serde_json::from_str(text).ok()?;
        (f.event == "media").then_some(f)
    }

    pub fn payload(&self) -> &str {
        &self.media.payload
    }

    /// `outbound…` tracks are the bot's own audio echoed back (Twilio/Telnyx `both_tracks`).
    pub fn is_outbound_track(&self) -> bool {
        self.media.track.as_deref().is_some_and(|t| t.starts_with("outbound"))
    }
}

/// A JSON text frame with one base64 payload, formatted once per call: `prefix` + base64 +
/// `suffix`. Saves building a JSON tree for every 20 ms of bot audio.
#[derive(Debug, Default)]
pub struct PayloadFrame {
    prefix: String,
    suffix: String,
}

/// A JSON string literal (quoted, escaped).
pub fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

impl PayloadFrame {
    pub fn new(prefix: String, suffix: String) -> Self {
        Self { prefix, suffix }
    }

    pub fn render(&self, bytes: &[u8]) -> crate::OutFrame {
        let mut s = String::with_capacity(self.prefix.len() + self.suffix.len() + bytes.len().div_ceil(3) * 4);
        s.push_str(&self.prefix);
        base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut s);
        s.push_str(&self.suffix);
        crate::OutFrame::Text(s)
    }
}

fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64()
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u32::MAX as f64).map(|f| f as u64))
}

/// A refusal that names the field and the value: the driver logs it with the session id and
/// puts it in the close reason.
pub fn unplayable(proto: &str, event: &str, field: &str, value: impl std::fmt::Debug, why: &str) -> ProtocolError {
    ProtocolError::Handshake(format!("{proto} {event}: {field} {value:?} cannot be played ({why})"))
}

/// What an encoding label says about the samples on the wire. Labels describe; the protocol and
/// the stream URL fix the format. Every spelling seen in providers' docs and public
/// integrations is understood (tests/fixtures/wire/README.md lists where each was seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioLabel {
    /// The label names a codec we decode; `rate` when it carries one (`audio/L16;rate=16000`).
    Codec { codec: Codec, rate: Option<u32> },
    /// The label names no sample format (`base64` is the transfer encoding, not a codec): the
    /// protocol's own format applies.
    Unspecified { rate: Option<u32> },
    /// A format we cannot decode (Opus, MP3, G.722, G.729, AMR, 8/24/32-bit, float or
    /// big-endian PCM, …).
    Unplayable,
}

/// Compact spellings (lower case, letters and digits only) of formats that cannot be decoded
/// as 16-bit little-endian PCM or G.711. Matched as prefixes.
const UNPLAYABLE: &[&str] = &[
    "opus", "mp3", "mpeg", "g722", "g723", "g726", "g729", "amr", "speex", "ogg", "flac", "aac", "webm", "gsm", "ilbc",
    "l8", "l20", "l24", "u8", "s8", "s24", "s32", "f32", "f64", "float", "pcmu8", "pcms8", "pcms24", "pcms32",
    "pcmf32", "pcmf64",
];

impl AudioLabel {
    pub fn parse(label: &str) -> Self {
        let lower = label.trim().to_lowercase().replace(['μ', 'µ'], "mu");
        let mut parts = lower.split(';');
        let base = parts.next().unwrap_or_default().trim();
        let rate = parts.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim() == "rate").then(|| cxb_wire::serde_util::parse_sample_rate(v)).flatten()
        });
        let name = base.strip_prefix("audio/").unwrap_or(base);
        let name = name.strip_prefix("x-").unwrap_or(name);
        let c: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
        let codec = |codec| AudioLabel::Codec { codec, rate };
        if UNPLAYABLE.iter().any(|u| c.starts_with(u))
            || (c.starts_with("pcm") || c.starts_with("s16")) && c.ends_with("be")
        {
            AudioLabel::Unplayable
        } else if c.contains("mulaw") || c.contains("ulaw") || c == "pcmu" || c.starts_with("g711u") || c == "basic" {
            codec(Codec::Mulaw)
        } else if c.contains("alaw") || c == "pcma" || c.starts_with("g711a") {
            codec(Codec::Alaw)
        } else if ["raw", "slin", "l16", "linear", "pcm", "s16"].iter().any(|p| c.starts_with(p)) {
            codec(Codec::Pcm16Le)
        } else {
            // `base64`, an empty label, or a name we have never seen: it says nothing we can use.
            AudioLabel::Unspecified { rate }
        }
    }
}

/// The codec `label` (the value of `field`) stands for on a route that plays `allowed`; the first
/// of `allowed` is the protocol's own. Refuses what cannot be played there, naming field and value.
pub fn check_label(
    proto: &str,
    event: &str,
    field: &str,
    label: &str,
    allowed: &[Codec],
) -> Result<(Codec, Option<u32>), ProtocolError> {
    match AudioLabel::parse(label) {
        AudioLabel::Codec { codec, rate } if allowed.contains(&codec) => Ok((codec, rate)),
        AudioLabel::Unspecified { rate } => Ok((allowed[0], rate)),
        _ => {
            let names: Vec<&str> = allowed.iter().map(|c| c.describe()).collect();
            Err(unplayable(
                proto,
                event,
                field,
                truncate(label, 64),
                &format!("this route plays {}", names.join(" or ")),
            ))
        }
    }
}

/// A stream id made up when the peer sends none.
pub fn generated_id(proto: &str) -> String {
    format!("{proto}-{}", chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default())
}

/// The string value of a JSON scalar (custom parameters may arrive as numbers or booleans).
pub fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// First non-empty string among `keys` of `m` (case-insensitive key match).
pub fn first_of(m: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    for k in keys {
        if let Some(v) = m.iter().find(|(mk, _)| mk.eq_ignore_ascii_case(k)).and_then(|(_, v)| scalar_string(v)) {
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    None
}

/// Normalise a provider's direction label to the dialler's `incoming` / `outgoing`.
pub fn direction(label: &str) -> String {
    let l = label.to_ascii_lowercase();
    if l.starts_with("out") {
        "outgoing".into()
    } else if l.starts_with("in") {
        "incoming".into()
    } else {
        label.to_string()
    }
}

/// A DTMF digit as telephony peers send it: one of `0-9 * # A-D`.
pub fn dtmf_digit(proto: &str, d: &str) -> Result<String, ProtocolError> {
    let d = d.trim();
    let ok = d.len() == 1 && d.chars().all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D' | 'a'..='d'));
    if ok {
        Ok(d.to_ascii_uppercase())
    } else {
        Err(ProtocolError::Malformed(format!("{proto} dtmf: digit {:?} is not one of 0-9 * # A-D", truncate(d, 16))))
    }
}

/// A JSON value as a text frame.
pub fn text(v: Value) -> crate::OutFrame {
    crate::OutFrame::Text(v.to_string())
}

pub fn b64_decode(proto: &str, payload: &str) -> Result<Vec<u8>, ProtocolError> {
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|_| ProtocolError::Malformed(format!("{proto} media: payload is not valid base64")))
}

pub fn b64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `Authorization: Basic …` value.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", b64_encode(format!("{user}:{password}").as_bytes()))
}

/// A URL path segment: characters outside RFC 3986 `pchar` percent-encoded (call ids come from
/// the peer; Telnyx ids such as `v3:…` keep their colon). `None` for `.` and `..`: URL parsers
/// resolve those as "this" and "the parent" segment, so a peer's id could move a REST call to
/// another path of the provider's API.
pub fn seg(s: &str) -> Option<String> {
    if s == "." || s == ".." {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Some(out)
}

/// Join an API base (`https://api.twilio.com`, or a test double) and a path.
pub fn join_url(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

/// A REST request as the driver performs it.
pub fn http(method: &str, url: String, headers: Vec<(&str, String)>, body: Option<String>) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        url,
        headers: headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        body,
    }
}

/// Sample encodings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// 16-bit little-endian linear PCM.
    Pcm16Le,
    /// G.711 μ-law (PCMU).
    Mulaw,
    /// G.711 A-law (PCMA).
    Alaw,
}

impl Codec {
    pub fn describe(self) -> &'static str {
        match self {
            Codec::Pcm16Le => "16-bit PCM",
            Codec::Mulaw => "μ-law",
            Codec::Alaw => "A-law",
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            Codec::Pcm16Le => 2,
            Codec::Mulaw | Codec::Alaw => 1,
        }
    }

    /// The silence byte pattern (for padding).
    pub fn silence(self) -> u8 {
        match self {
            Codec::Pcm16Le => 0,
            Codec::Mulaw => 0xFF,
            Codec::Alaw => 0xD5,
        }
    }
}

/// The call's audio path between wire bytes and the engine's i16 samples.
///
/// The engine (and webrtc-vad) runs at 8 or 16 kHz. A 24 kHz wire (Exotel `sample-rate=24000`,
/// Vonage `audio/l16;rate=24000`) is resampled to 16 kHz inbound and back to 24 kHz outbound.
#[derive(Debug)]
pub struct WireAudio {
    pub codec: Codec,
    pub wire_rate: u32,
    pub engine_rate: u32,
    down: Option<Resampler>,
    up: Option<Resampler>,
    scratch: Vec<i16>,
}

impl WireAudio {
    pub fn new(codec: Codec, wire_rate: u32) -> Self {
        let engine_rate = if wire_rate == 8000 || wire_rate == 16000 { wire_rate } else { 16000 };
        let (down, up) = if engine_rate == wire_rate {
            (None, None)
        } else {
            (Some(Resampler::new(wire_rate, engine_rate)), Some(Resampler::new(engine_rate, wire_rate)))
        };
        Self { codec, wire_rate, engine_rate, down, up, scratch: Vec::new() }
    }

    /// Bytes of one 20 ms wire frame.
    pub fn frame_bytes(&self) -> usize {
        (self.wire_rate / 50) as usize * self.codec.bytes_per_sample()
    }

    /// Wire bytes → engine samples. Errors name the protocol and the problem.
    pub fn decode(&mut self, proto: &str, bytes: &[u8]) -> Result<Vec<i16>, ProtocolError> {
        let bps = self.codec.bytes_per_sample();
        if !bytes.len().is_multiple_of(bps) {
            return Err(ProtocolError::Malformed(format!(
                "{proto} media: payload has an odd number of bytes ({}); 16-bit PCM needs whole samples",
                bytes.len()
            )));
        }
        let samples = bytes.len() / bps;
        let ms = samples as u64 * 1000 / self.wire_rate as u64;
        if ms > MAX_INBOUND_FRAME_MS {
            return Err(ProtocolError::Malformed(format!(
                "{proto} media: {ms} ms of audio in one frame exceeds the {MAX_INBOUND_FRAME_MS} ms limit"
            )));
        }
        let mut pcm = Vec::with_capacity(samples);
        match self.codec {
            Codec::Pcm16Le => pcm.extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]))),
            Codec::Mulaw => crate::g711::decode_ulaw(bytes, &mut pcm),
            Codec::Alaw => crate::g711::decode_alaw(bytes, &mut pcm),
        }
        match &mut self.down {
            None => Ok(pcm),
            Some(r) => {
                let mut out = Vec::with_capacity(pcm.len() * self.engine_rate as usize / self.wire_rate as usize + 1);
                r.process(&pcm, &mut out);
                Ok(out)
            }
        }
    }

    /// Engine samples → wire bytes, appended to `out`.
    pub fn encode(&mut self, frame: &[i16], out: &mut Vec<u8>) {
        let samples: &[i16] = match &mut self.up {
            None => frame,
            Some(r) => {
                self.scratch.clear();
                r.process(frame, &mut self.scratch);
                &self.scratch
            }
        };
        match self.codec {
            Codec::Pcm16Le => {
                out.reserve(samples.len() * 2);
                for s in samples {
                    out.extend_from_slice(&s.to_le_bytes());
                }
            }
            Codec::Mulaw => crate::g711::encode_ulaw(samples, out),
            Codec::Alaw => crate::g711::encode_alaw(samples, out),
        }
    }
}

/// Groups outbound audio into chunks that obey a protocol's size rules: every chunk is a
/// multiple of `multiple` bytes, at least `min` bytes (except a final flush) and at most `max`.
#[derive(Debug)]
pub struct Chunker {
    buf: Vec<u8>,
    min: usize,
    multiple: usize,
    max: usize,
    pad: u8,
}

impl Chunker {
    pub fn new(min: usize, multiple: usize, max: usize, pad: u8) -> Self {
        assert!(multiple > 0 && min >= multiple && max >= min, "inconsistent chunk rules");
        let min = min.div_ceil(multiple) * multiple;
        let max = max / multiple * multiple;
        Self { buf: Vec::with_capacity(2 * min), min, multiple, max, pad }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Add bytes; emit every full chunk that is ready.
    pub fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= self.min {
            let take = (self.buf.len() / self.multiple * self.multiple).min(self.max);
            emit(&self.buf[..take]);
            self.buf.drain(..take);
        }
    }

    /// Emit what is left (padded to a whole multiple), however short: the end of an utterance.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if self.buf.is_empty() {
            return;
        }
        let padded = self.buf.len().div_ceil(self.multiple) * self.multiple;
        self.buf.resize(padded, self.pad);
        for c in self.buf.chunks(self.max) {
            emit(c);
        }
        self.buf.clear();
    }

    /// Drop what is buffered (barge-in). Returns the bytes dropped.
    pub fn clear(&mut self) -> usize {
        let n = self.buf.len();
        self.buf.clear();
        n
    }
}

/// Playback marks: one is placed after each bot utterance; the peer echoes it once the audio
/// before it has played. A `clear` drops the audio *and* the marks queued behind it — some peers
/// (Twilio) echo those at once, which must not count as "played".
#[derive(Debug, Default)]
pub struct Marks {
    next: u64,
    pending: VecDeque<String>,
    cleared: VecDeque<String>,
    played: u64,
    last_played: Option<String>,
}

const CLEARED_KEPT: usize = 64;

impl Marks {
    /// Name for the next mark (`bot-1`, `bot-2`, …), now pending.
    pub fn place(&mut self) -> String {
        self.next += 1;
        let name = format!("bot-{}", self.next);
        self.pending.push_back(name.clone());
        name
    }

    /// A clear dropped everything queued: pending marks will never be played.
    pub fn on_clear(&mut self) {
        while let Some(m) = self.pending.pop_front() {
            self.cleared.push_back(m);
        }
        while self.cleared.len() > CLEARED_KEPT {
            self.cleared.pop_front();
        }
    }

    /// The peer echoed a mark.
    pub fn on_echo(&mut self, name: &str) -> Inbound {
        if let Some(i) = self.pending.iter().position(|m| m == name) {
            // Marks play in order: everything before it has played too.
            for _ in 0..=i {
                self.pending.pop_front();
                self.played += 1;
            }
            self.last_played = Some(name.to_string());
            return Inbound::Mark(name.to_string());
        }
        if let Some(i) = self.cleared.iter().position(|m| m == name) {
            self.cleared.remove(i);
            return Inbound::Ignored("mark of audio dropped by a clear");
        }
        Inbound::Ignored("mark this call did not place")
    }

    /// Utterances confirmed played by the peer.
    pub fn played(&self) -> u64 {
        self.played
    }

    pub fn last_played(&self) -> Option<&str> {
        self.last_played.as_deref()
    }

    /// Marks placed and not yet echoed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OutFrame;

    #[test]
    fn json_fields_have_clear_errors() {
        let j = Json::parse("exotel", r#"{"event":"media","media":{"payload":5,"chunk":"2"},"seq":"x"}"#).unwrap();
        assert_eq!(j.event, "media");
        assert_eq!(
            j.req_str("media.payload").unwrap_err().to_string(),
            "exotel media: field \"media.payload\" must be a string"
        );
        assert_eq!(j.opt_num("media.chunk").unwrap(), Some(2));
        assert!(j.opt_num("seq").unwrap_err().to_string().contains("whole number"));
        assert!(j.req_str("media.nope").unwrap_err().to_string().contains("is missing"));
        assert!(Json::parse("x", "nope").unwrap_err().to_string().contains("not JSON"));
        assert!(Json::parse("x", "[1]").unwrap_err().to_string().contains("not a JSON object"));
        assert!(Json::parse("x", r#"{"event":1}"#).unwrap_err().to_string().contains("must be a string"));
        assert!(Json::parse("x", r#"{"a":1}"#).unwrap_err().to_string().contains("no \"event\""));
    }

    #[test]
    fn fast_media_path_takes_only_well_formed_media() {
        let f = FastMedia::parse(
            r#"{"event":"media","stream_sid":"s","media":{"payload":"AAA=","track":"inbound","chunk":"1"}}"#,
        )
        .unwrap();
        assert_eq!((f.payload(), f.stream_sid.as_deref(), f.is_outbound_track()), ("AAA=", Some("s"), false));
        assert!(FastMedia::parse(r#"{"event":"media","media":{"payload":"AAA=","track":"outbound"}}"#)
            .unwrap()
            .is_outbound_track());
        for slow in [
            r#"{"event":"mark","media":{"payload":""}}"#,
            r#"{"event":"media","media":{"payload":5}}"#,
            r#"{"event":"media","stream_sid":7,"media":{"payload":""}}"#,
            r#"{"event":"media"}"#,
            r#"{"event":"media","media":{"payload":""}} trailing"#,
        ] {
            assert!(FastMedia::parse(slow).is_none(), "{slow}");
        }
        let OutFrame::Text(t) =
            PayloadFrame::new(format!(r#"{{"a":{},"p":""#, json_str("q\"x")), "\"}".into()).render(&[0, 1])
        else {
            panic!()
        };
        assert_eq!(serde_json::from_str::<Value>(&t).unwrap(), serde_json::json!({"a":"q\"x","p":"AAE="}));
    }

    #[test]
    fn chunker_obeys_exotel_rules() {
        let mut c = Chunker::new(3200, 320, 100 * 1024, 0);
        let mut sizes = vec![];
        for _ in 0..25 {
            c.push(&[1u8; 320], |b| sizes.push(b.len()));
        }
        assert_eq!(sizes, vec![3200, 3200]);
        assert_eq!(c.buffered(), 1600);
        c.flush(|b| sizes.push(b.len()));
        assert_eq!(sizes, vec![3200, 3200, 1600]);
        // 24 kHz frames (960 bytes): chunks of 3840, multiples of 320.
        let mut c = Chunker::new(3200, 320, 100 * 1024, 0);
        let mut sizes = vec![];
        for _ in 0..8 {
            c.push(&[1u8; 960], |b| sizes.push(b.len()));
        }
        assert_eq!(sizes, vec![3840, 3840]);
        // Odd remainders are padded to a whole multiple with the pad byte.
        c.push(&[1u8; 100], |_| unreachable!());
        let mut last = vec![];
        c.flush(|b| last.extend_from_slice(b));
        assert_eq!(last.len(), 320);
        assert!(last[100..].iter().all(|b| *b == 0));
        // Never more than max.
        let mut c = Chunker::new(3200, 320, 6400, 0);
        let mut sizes = vec![];
        c.push(&vec![0u8; 20_000], |b| sizes.push(b.len()));
        assert!(sizes.iter().all(|s| *s <= 6400 && *s >= 3200 && s % 320 == 0), "{sizes:?}");
        assert_eq!(c.clear(), 20_000 - sizes.iter().sum::<usize>());
    }

    #[test]
    fn marks_distinguish_played_from_cleared() {
        let mut m = Marks::default();
        let a = m.place();
        let b = m.place();
        assert_eq!(m.on_echo(&a), Inbound::Mark("bot-1".into()));
        let c = m.place();
        m.on_clear();
        // Twilio echoes marks dropped by a clear: not "played".
        assert!(matches!(m.on_echo(&b), Inbound::Ignored(_)));
        assert!(matches!(m.on_echo(&c), Inbound::Ignored(_)));
        assert!(matches!(m.on_echo("other"), Inbound::Ignored(_)));
        let d = m.place();
        let e = m.place();
        // An echo implies the earlier marks played.
        assert_eq!(m.on_echo(&e), Inbound::Mark(e.clone()));
        assert_eq!(m.played(), 3);
        assert_eq!(m.pending(), 0);
        assert_eq!(m.last_played(), Some(e.as_str()));
        let _ = d;
    }

    #[test]
    fn wire_audio_codecs_and_limits() {
        let mut w = WireAudio::new(Codec::Pcm16Le, 8000);
        assert_eq!(w.decode("t", &[1, 0, 2, 0]).unwrap(), vec![1, 2]);
        assert!(w.decode("t", &[1, 0, 2]).unwrap_err().to_string().contains("odd number of bytes"));
        assert!(w.decode("t", &vec![0; 8000 * 2 * 3]).unwrap_err().to_string().contains("exceeds"));
        let mut out = vec![];
        w.encode(&[1, -1], &mut out);
        assert_eq!(out, vec![1, 0, 0xFF, 0xFF]);
        let mut u = WireAudio::new(Codec::Mulaw, 8000);
        assert_eq!(u.decode("t", &[0xFF, 0x80]).unwrap(), vec![0, 32124]);
        let mut out = vec![];
        u.encode(&[0; 160], &mut out);
        assert_eq!(out, vec![0xFF; 160]);
        let mut hi = WireAudio::new(Codec::Pcm16Le, 24000);
        assert_eq!((hi.engine_rate, hi.frame_bytes()), (16000, 960));
        let mut out = vec![];
        hi.encode(&[0; 320], &mut out);
        assert_eq!(out.len(), 960);
        assert_eq!(hi.decode("t", &[0; 4800]).unwrap().len(), 1600);
    }

    #[test]
    fn audio_labels_seen_in_the_wild() {
        let pcm = |rate| AudioLabel::Codec { codec: Codec::Pcm16Le, rate };
        let mulaw = |rate| AudioLabel::Codec { codec: Codec::Mulaw, rate };
        let alaw = AudioLabel::Codec { codec: Codec::Alaw, rate: None };
        for (label, want) in [
            ("base64", AudioLabel::Unspecified { rate: None }),
            ("", AudioLabel::Unspecified { rate: None }),
            ("something-new", AudioLabel::Unspecified { rate: None }),
            ("audio/x-raw", pcm(None)),
            ("raw/slin", pcm(None)),
            ("slin16", pcm(None)),
            ("audio/x-l16", pcm(None)),
            ("audio/pcm", pcm(None)),
            ("audio/L16;rate=16000", pcm(Some(16000))),
            ("audio/l16; rate=8000; channels=1", pcm(Some(8000))),
            ("LINEAR", pcm(None)),
            ("LINEAR16", pcm(None)),
            ("linear16", pcm(None)),
            ("pcm_s16le", pcm(None)),
            ("s16le", pcm(None)),
            ("audio/x-mulaw", mulaw(None)),
            ("audio/x-mulaw;rate=8000", mulaw(Some(8000))),
            ("PCMU", mulaw(None)),
            ("g711_ulaw", mulaw(None)),
            ("μ-law", mulaw(None)),
            ("audio/basic", mulaw(None)),
            ("PCMA", alaw),
            ("audio/PCMA", alaw),
            ("audio/x-alaw", alaw),
            ("G711_ALAW", alaw),
        ] {
            assert_eq!(AudioLabel::parse(label), want, "{label:?}");
        }
        for label in [
            "OPUS",
            "audio/x-opus",
            "mp3",
            "audio/mpeg",
            "G722",
            "G729",
            "AMR-WB",
            "pcm_f32le",
            "pcm_s16be",
            "L24",
            "pcm_u8",
        ] {
            assert_eq!(AudioLabel::parse(label), AudioLabel::Unplayable, "{label:?}");
        }
        let err =
            check_label("exotel", "start", "start.media_format.encoding", "PCMA", &[Codec::Pcm16Le, Codec::Mulaw])
                .unwrap_err()
                .to_string();
        assert_eq!(
            err,
            "handshake: exotel start: start.media_format.encoding \"PCMA\" cannot be played (this route plays 16-bit PCM or μ-law)"
        );
    }

    #[test]
    fn lenient_numbers_rates_and_params() {
        let j = Json::parse(
            "t",
            r#"{"event":"start","a":8000.0,"b":"16kHz","c":8000,"d":"x","e":[{"name":"k","value":1}],"f":"{\"k\":2}","g":7}"#,
        )
        .unwrap();
        assert_eq!(j.opt_num("a").unwrap(), Some(8000));
        assert_eq!((j.opt_rate("b").unwrap(), j.opt_rate("c").unwrap()), (Some(16000), Some(8000)));
        assert!(j.opt_rate("d").unwrap_err().to_string().contains("sample rate"));
        assert_eq!(j.params("e").unwrap()["k"], 1);
        assert_eq!(j.params("f").unwrap()["k"], 2);
        assert!(j.params("g").unwrap().is_empty());
        assert_eq!(j.opt_scalar("g").unwrap().as_deref(), Some("7"));
        assert!(j.opt_scalar("e").is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(basic_auth("AC1", "tok"), "Basic QUMxOnRvaw==");
        assert_eq!(join_url("http://x/twilio/", "/2010-04-01/A"), "http://x/twilio/2010-04-01/A");
        assert_eq!(seg("a b/c").as_deref(), Some("a%20b%2Fc"));
        assert_eq!(seg("...").as_deref(), Some("..."));
        assert_eq!((seg("."), seg("..")), (None, None));
        assert_eq!(direction("outbound-api"), "outgoing");
        assert_eq!(direction("inbound"), "incoming");
        let m: Map<String, Value> = serde_json::from_str(r#"{"From":"+1","to":5,"x":""}"#).unwrap();
        assert_eq!(first_of(&m, &["x", "from"]), Some("+1".into()));
        assert_eq!(first_of(&m, &["TO"]), Some("5".into()));
    }
}
