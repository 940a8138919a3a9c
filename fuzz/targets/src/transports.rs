//! Telephony adapters: a whole call per input. Records (kind byte, body):
//!
//! - `Q` query pairs of the stream URL (`k=v&k=v`; only as the first record: Exotel, Plivo)
//! - `S` the adapter's documented handshake (from `tests/fixtures/wire/`), so inputs reach the
//!   in-call state without rediscovering it
//! - `T` a text frame, `B` a binary frame: handshake frames until the call is answered, then
//!   in-call frames, as the worker feeds them (`call::handshake`, `link::WsLink`)
//! - `O` a bot config (JSON) for `on_config`; `A` one 20 ms frame of bot audio; `U` the end of a
//!   bot utterance; `C` clear (barge-in); `H` bot hang-up; `X` transfer to the body
//!
//! Invariants: no panic; decoded audio is within the per-frame limit (and, for binary PCM at the
//! engine rate, exactly the payload's samples); every text frame sent is a JSON object; a REST
//! hang-up goes to the configured API under a path the URL parser leaves as built.

use cxb_transports::dialler::Dialler;
use cxb_transports::exotel::Exotel;
use cxb_transports::media::MAX_INBOUND_FRAME_MS;
use cxb_transports::plivo::Plivo;
use cxb_transports::telnyx::Telnyx;
use cxb_transports::twilio::Twilio;
use cxb_transports::vonage::Vonage;
use cxb_transports::{HandshakeStep, Inbound, OutFrame, Transport};
use cxb_wire::BotConfig;

use crate::records::records;

/// Where the canned config sends REST hang-ups.
const API_BASE: &str = "http://127.0.0.1:9";

/// A config with credentials for every REST hang-up, so `H` exercises them. Twilio's account
/// comes from the stream (`accountSid`), as when the config names none. Parsed once.
fn canned_config() -> &'static BotConfig {
    static CONFIG: std::sync::OnceLock<BotConfig> = std::sync::OnceLock::new();
    CONFIG.get_or_init(parse_canned_config)
}

fn parse_canned_config() -> BotConfig {
    let json = format!(
        r#"{{"session_id":"fuzz","telephony":{{
            "twilio":{{"auth_token":"tok","api_base":"{API_BASE}"}},
            "telnyx":{{"api_key":"key","api_base":"{API_BASE}"}},
            "plivo":{{"auth_id":"MA1","auth_token":"tok","api_base":"{API_BASE}"}}}}}}"#
    );
    BotConfig::from_json(json.as_bytes()).expect("the canned config is valid")
}

macro_rules! fixture {
    ($proto:literal, $name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/wire/", $proto, "/", $name))
    };
}

const DIALLER: &[&str] = &[
    fixture!("dialler", "in-connected.json"),
    fixture!("dialler", "in-start.json"),
    fixture!("dialler", "in-answer.json"),
];
const EXOTEL: &[&str] = &[fixture!("exotel", "in-connected.json"), fixture!("exotel", "in-start-docs.json")];
const TWILIO: &[&str] = &[fixture!("twilio", "in-connected.json"), fixture!("twilio", "in-start.json")];
const TELNYX: &[&str] = &[fixture!("telnyx", "in-connected.json"), fixture!("telnyx", "in-start-asyncapi.json")];
const PLIVO: &[&str] = &[fixture!("plivo", "in-start.json")];
const VONAGE: &[&str] = &[fixture!("vonage", "in-connected.json")];

fn new_dialler(_: &[(String, String)]) -> Option<Dialler> {
    Some(Dialler::with_clock(|| "2025-01-01 00:00:00".into()))
}

/// A bad `sample-rate` is refused with HTTP 400 before the upgrade.
fn new_exotel(query: &[(String, String)]) -> Option<Exotel> {
    Exotel::from_query(query).ok()
}

fn new_plivo(query: &[(String, String)]) -> Option<Plivo> {
    Some(Plivo::new(Default::default(), query))
}

pub fn dialler(data: &[u8]) {
    run(data, DIALLER, new_dialler);
}

pub fn exotel(data: &[u8]) {
    run(data, EXOTEL, new_exotel);
}

pub fn twilio(data: &[u8]) {
    run(data, TWILIO, |_| Some(Twilio::default()));
}

pub fn telnyx(data: &[u8]) {
    run(data, TELNYX, |_| Some(Telnyx::default()));
}

pub fn plivo(data: &[u8]) {
    run(data, PLIVO, new_plivo);
}

pub fn vonage(data: &[u8]) {
    run(data, VONAGE, |_| Some(Vonage::new()));
}

/// `k=v&k=v` as the URL query extractor hands it over (no percent-decoding needed here).
fn query_pairs(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The call the records drive (`None` when the stream URL is refused).
fn run<T: Transport + 'static>(
    data: &[u8],
    handshake: &[&str],
    make: impl FnOnce(&[(String, String)]) -> Option<T>,
) -> Option<Call<T>> {
    let mut recs = records(data).peekable();
    let query = match recs.peek() {
        Some((b'Q', body)) => {
            let q = query_pairs(body);
            recs.next();
            q
        }
        _ => Vec::new(),
    };
    let mut call = Call { t: make(&query)?, answered: false, canned_config: true, out: Vec::new() };
    for (kind, body) in recs {
        if !call.step(kind, body, handshake) {
            break;
        }
    }
    Some(call)
}

struct Call<T> {
    t: T,
    answered: bool,
    /// The REST credentials are the canned ones (not replaced by an `O` record).
    canned_config: bool,
    out: Vec<OutFrame>,
}

impl<T: Transport + 'static> Call<T> {
    /// One record; `false` when the worker would have closed the socket.
    fn step(&mut self, kind: u8, body: &[u8], handshake: &[&str]) -> bool {
        match (kind, self.answered) {
            (b'S', false) => handshake.iter().all(|frame| self.handshake(frame)),
            (b'T', false) => crate::text(body).is_none_or(|text| self.handshake(text)),
            // A binary frame during the handshake is refused (close 1003).
            (b'B', false) => false,
            (b'T', true) => {
                if let Some(text) = crate::text(body) {
                    let inbound = self.t.on_text(text);
                    self.check_inbound(inbound, None);
                }
                true
            }
            (b'B', true) => {
                let inbound = self.t.on_binary(body);
                self.check_inbound(inbound, Some(body.len()));
                true
            }
            (b'O', true) => {
                if let Ok(cfg) = BotConfig::from_json(body) {
                    self.t.on_config(&cfg);
                    self.canned_config = false;
                }
                true
            }
            (b'A', true) => {
                let samples = self.t.meta().sample_rate as usize / 50;
                let frame: Vec<i16> = (0..samples)
                    .map(|i| body.get(i % body.len().max(1)).map_or(0, |b| i16::from(*b as i8) * 256))
                    .collect();
                self.t.audio(&frame, &mut self.out);
                self.check_out()
            }
            (b'U', true) => {
                self.t.utterance_done(&mut self.out);
                self.check_out()
            }
            (b'C', true) => {
                self.t.clear(&mut self.out);
                self.check_out()
            }
            (b'H', true) => {
                self.t.hang_up(&mut self.out);
                self.check_out()
            }
            (b'X', true) => {
                let to = String::from_utf8_lossy(body);
                let _ = self.t.transfer(&to, "fuzz", &mut self.out);
                self.check_out()
            }
            _ => true,
        }
    }

    /// A handshake frame; `false` when the call is refused.
    fn handshake(&mut self, text: &str) -> bool {
        match self.t.handshake_text(text) {
            Ok(HandshakeStep::Answered { early_audio }) => {
                self.answered = true;
                let rate = self.t.meta().sample_rate;
                assert!(rate == 8000 || rate == 16000, "the engine runs at 8 or 16 kHz, not {rate}");
                if let Some(samples) = early_audio {
                    check_audio_len(samples.len(), rate);
                }
                self.t.on_config(canned_config());
                true
            }
            Ok(HandshakeStep::Continue | HandshakeStep::MetaReady) => true,
            Err(_) => false,
        }
    }

    fn check_inbound(&mut self, inbound: Result<Inbound, cxb_transports::ProtocolError>, binary_len: Option<usize>) {
        let Ok(Inbound::Audio(samples)) = inbound else { return };
        let rate = self.t.meta().sample_rate;
        check_audio_len(samples.len(), rate);
        // Vonage's binary frames are raw PCM16: at the engine rate, one sample per two bytes.
        if let (Some(len), Some(wire_rate)) = (binary_len, wire_rate(&self.t)) {
            if wire_rate == rate {
                assert_eq!(samples.len() * 2, len, "binary PCM decodes to one sample per two bytes");
            }
        }
    }

    /// What the adapter put on the wire is well-formed. Always `true` (the call goes on).
    fn check_out(&mut self) -> bool {
        for frame in self.out.drain(..) {
            match frame {
                OutFrame::Text(text) => {
                    let v: serde_json::Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("a text frame the adapter sent is not JSON ({e}): {text}"));
                    assert!(v.is_object(), "a text frame the adapter sent is not a JSON object: {text}");
                }
                OutFrame::Http(req) if self.canned_config => {
                    let path = req
                        .url
                        .strip_prefix(API_BASE)
                        .unwrap_or_else(|| panic!("hang-up sent outside the configured API: {}", req.url));
                    let parsed = url::Url::parse(&req.url).unwrap_or_else(|e| panic!("{}: {e}", req.url));
                    assert_eq!(parsed.path(), path, "the hang-up URL's path is not the one built from the call ids");
                    assert!(parsed.query().is_none() && parsed.fragment().is_none(), "{}", req.url);
                }
                OutFrame::Binary(_) | OutFrame::Close { .. } | OutFrame::Http(_) => {}
            }
        }
        true
    }
}

/// The rate of Vonage's binary frames (the only adapter that takes binary audio).
fn wire_rate<T: Transport + 'static>(t: &T) -> Option<u32> {
    (t.name() == "vonage").then(|| {
        let any: &dyn std::any::Any = t;
        any.downcast_ref::<Vonage>().map(Vonage::wire_rate)
    })?
}

fn check_audio_len(samples: usize, engine_rate: u32) {
    // Resampling a full-length frame may round up by a sample.
    let max = MAX_INBOUND_FRAME_MS as usize * engine_rate as usize / 1000 + 1;
    assert!(
        samples <= max,
        "{samples} samples in one frame exceed the {MAX_INBOUND_FRAME_MS} ms limit at {engine_rate} Hz"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered<T: Transport + 'static>(call: Option<Call<T>>) -> bool {
        call.is_some_and(|c| c.answered)
    }

    /// `S` (the canned handshake) gets every adapter into the call, so in-call records are reached.
    #[test]
    fn the_canned_handshakes_answer_the_call() {
        assert!(answered(run(b"S", DIALLER, new_dialler)));
        assert!(answered(run(b"S", EXOTEL, new_exotel)));
        assert!(answered(run(b"S", TWILIO, |_| Some(Twilio::default()))));
        assert!(answered(run(b"S", TELNYX, |_| Some(Telnyx::default()))));
        assert!(answered(run(b"S", PLIVO, new_plivo)));
        assert!(answered(run(b"S", VONAGE, |_| Some(Vonage::new()))));
        // A refused stream URL, and a binary frame during the handshake, end the call.
        assert!(run(&crate::join([(b'Q', &b"sample-rate=11025"[..]), (b'S', b"")]), EXOTEL, new_exotel).is_none());
        assert!(!answered(run(&crate::join([(b'B', &b"\0\0"[..]), (b'S', b"")]), VONAGE, |_| Some(Vonage::new()))));
    }
}
