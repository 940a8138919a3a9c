//! Every message in `tests/fixtures/wire/<protocol>/` — shapes seen in the providers' docs,
//! official SDKs and public integrations (`tests/fixtures/wire/README.md` says where) — goes
//! through its adapter: handshakes give the right metadata, media decodes to known samples,
//! marks/DTMF/stops give the right `Inbound`, and what the adapters send has the documented
//! shape of the `out-*` fixtures. A fixture without an expectation here fails its test.

use std::collections::BTreeSet;
use std::path::PathBuf;

use cxb_transports::dialler::Dialler;
use cxb_transports::exotel::Exotel;
use cxb_transports::plivo::Plivo;
use cxb_transports::telnyx::Telnyx;
use cxb_transports::twilio::Twilio;
use cxb_transports::vonage::Vonage;
use cxb_transports::{CallMeta, HandshakeStep, Inbound, OutFrame, Transport};
use cxb_wire::config::{PlivoConfig, TelnyxConfig, TwilioConfig};
use serde_json::Value;

/// The samples behind every media fixture's payload, per codec.
const PCM: [i16; 8] = [0, 1, -1, 1000, -1000, 32767, -32768, 12345];
const ULAW: [i16; 8] = [0, 0, 32124, -32124, 988, -988, 120, -120];
const ALAW: [i16; 8] = [8, -8, 32256, -32256, 1008, -1008, 24, -24];
/// Those samples' wire bytes, base64 (the payloads of the fixtures).
const PCM_B64: &str = "AAABAP//6AMY/P9/AIA5MA==";
const ULAW_B64: &str = "/3+AAM5O8HA=";
const ALAW_B64: &str = "1VWqKvp61FQ=";

const ANSWERED: HandshakeStep = HandshakeStep::Answered { early_audio: None };

fn dir(proto: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wire").join(proto)
}

/// The fixture file names of a protocol, sorted (never empty).
fn names(proto: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir(proto))
        .unwrap_or_else(|e| panic!("{}: {e}", dir(proto).display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures for {proto}");
    v
}

fn text(proto: &str, name: &str) -> String {
    std::fs::read_to_string(dir(proto).join(name)).unwrap_or_else(|e| panic!("{proto}/{name}: {e}"))
}

fn json(proto: &str, name: &str) -> Value {
    serde_json::from_str(&text(proto, name)).unwrap_or_else(|e| panic!("{proto}/{name}: {e}"))
}

fn no_expectation(proto: &str, name: &str) -> ! {
    panic!("{proto}/{name}: a fixture without an expectation in wire_fixtures.rs")
}

fn audio(samples: &[i16]) -> Inbound {
    Inbound::Audio(samples.to_vec())
}

fn customer() -> Inbound {
    Inbound::Hangup { by: Some("customer".into()) }
}

/// (stream id, caller id, did, direction, engine rate) of a handshake.
fn ids(m: &CallMeta) -> (&str, &str, &str, &str, u32) {
    (&m.stream_id, &m.caller_id, &m.did, &m.call_direction, m.sample_rate)
}

/// `ours` has the shape of the documented frame `doc`: the same keys at every level, the same
/// JSON types, and the same values where the value is the message's kind.
fn assert_shape(doc: &Value, ours: &Value, at: &str) {
    const CONSTANT: [&str; 5] = ["event", "action", "encoding", "contentType", "source"];
    match (doc, ours) {
        (Value::Object(d), Value::Object(o)) => {
            let (dk, ok): (BTreeSet<&String>, BTreeSet<&String>) = (d.keys().collect(), o.keys().collect());
            assert_eq!(dk, ok, "{at}: documented keys vs sent keys\n doc: {doc}\n ours: {ours}");
            for (k, dv) in d {
                if CONSTANT.contains(&k.as_str()) {
                    assert_eq!(dv, &o[k], "{at}.{k}");
                }
                assert_shape(dv, &o[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(d), Value::Array(o)) => d.iter().zip(o).for_each(|(dv, ov)| assert_shape(dv, ov, at)),
        (d, o) => assert_eq!(std::mem::discriminant(d), std::mem::discriminant(o), "{at}: documented {d} but sent {o}"),
    }
}

/// The JSON text frames among `out`, by their `event` (or Vonage's `action`).
fn sent(out: &[OutFrame], kind: &str) -> Value {
    out.iter()
        .filter_map(|f| match f {
            OutFrame::Text(t) => serde_json::from_str::<Value>(t).ok(),
            _ => None,
        })
        .find(|v| v.get("event").or_else(|| v.get("action")).and_then(Value::as_str) == Some(kind))
        .unwrap_or_else(|| panic!("no {kind:?} frame sent among {out:?}"))
}

/// A REST hang-up has the documented method, path (placeholders filled) and auth scheme.
fn assert_rest_hangup(doc: &Value, out: &[OutFrame], base: &str, fill: &[(&str, &str)]) {
    let Some(OutFrame::Http(req)) = out.iter().find(|f| matches!(f, OutFrame::Http(_))) else {
        panic!("no REST hang-up in {out:?}")
    };
    let mut path = doc["path"].as_str().unwrap().to_string();
    for (k, v) in fill {
        path = path.replace(&format!("{{{k}}}"), v);
    }
    assert_eq!(req.method, doc["method"].as_str().unwrap());
    assert_eq!(req.url, format!("{base}{path}"));
    if let Some(body) = doc.get("body").and_then(Value::as_str) {
        assert_eq!(req.body.as_deref(), Some(body));
    }
    let scheme = if doc["auth"] == "basic" { "Basic " } else { "Bearer " };
    assert!(req.headers.iter().any(|(k, v)| k == "Authorization" && v.starts_with(scheme)), "{req:?}");
}

/// `in-connected.json`, then the `start` fixture: the call is answered.
fn connected_then_started<T: Transport>(mut t: T, proto: &str, start: &str) -> T {
    assert_eq!(t.handshake_text(&text(proto, "in-connected.json")).unwrap(), HandshakeStep::Continue);
    assert_eq!(t.handshake_text(&text(proto, start)).unwrap(), ANSWERED, "{proto}/{start}");
    t
}

/// The frame an `out-*` fixture documents was sent in that shape: a text frame of the same kind,
/// or (no `event`) the REST hang-up at `base` with `fill` for the path's placeholders.
fn assert_documented(proto: &str, name: &str, out: &[OutFrame], base: &str, fill: &[(&str, &str)]) {
    let doc = json(proto, name);
    match doc["event"].as_str() {
        Some(kind) => assert_shape(&doc, &sent(out, kind), name),
        None => assert_rest_hangup(&doc, out, base, fill),
    }
}

/// Bot audio, end of utterance, barge-in and hang-up, as one call would send them.
fn drive_outbound(t: &mut dyn Transport, frame_samples: usize) -> Vec<OutFrame> {
    let mut out = vec![];
    t.audio(&vec![0; frame_samples], &mut out);
    t.utterance_done(&mut out);
    t.clear(&mut out);
    t.hang_up(&mut out);
    out
}

#[test]
fn dialler_fixtures() {
    const P: &str = "dialler";
    let handshake = |connected: &str, start: &str| {
        let mut d = Dialler::new();
        assert_eq!(d.handshake_text(&text(P, connected)).unwrap(), HandshakeStep::Continue, "{connected}");
        assert_eq!(d.handshake_text(&text(P, start)).unwrap(), HandshakeStep::MetaReady, "{start}");
        assert_eq!(d.handshake_text(&text(P, "in-answer.json")).unwrap(), ANSWERED);
        d
    };
    let mut running = handshake("in-connected.json", "in-start.json");
    for name in names(P) {
        let (n, on) = (name.as_str(), |t: &mut Dialler| t.on_text(&text(P, &name)).unwrap());
        match n {
            "in-connected.json" => {
                let m = running.meta();
                assert_eq!(ids(m), ("stream-abc", "+919876500001", "+911140000000", "incoming", 8000));
                assert_eq!(
                    (m.connected_event["customer_name"].as_str(), m.connected_event.get("event")),
                    (Some("Asha"), None)
                );
            }
            "in-connected-icallmate.json" => {
                let d = handshake(n, "in-start-linear16-strings.json");
                assert_eq!(ids(d.meta()), ("ICM-7781", "919876500001", "1140000000", "outgoing", 8000));
                assert_eq!(d.meta().connected_event["extraParams"]["campaign"], "renewals");
                assert_eq!(d.meta().connected_event["sysrefno"], 88121);
            }
            "in-start.json" | "in-start-linear16-strings.json" | "in-start-no-media-format.json" => {
                assert_eq!(handshake("in-connected.json", n).meta().sample_rate, 8000, "{n}");
            }
            "in-start-l16-label-rate.json" => {
                let d = handshake("in-connected.json", n);
                assert_eq!((d.meta().stream_id.as_str(), d.meta().sample_rate), ("stream-16k", 16000));
            }
            "in-answer.json" => {} // every handshake above ends with it
            "in-media.json" | "in-media-nested.json" => assert_eq!(on(&mut running), audio(&PCM), "{n}"),
            "in-mark.json" => assert_eq!(on(&mut running), Inbound::Mark("bot-1".into())),
            "in-hangup-call.json" => assert_eq!(on(&mut running), customer()),
            "out-reverse-media.json" => {
                let mut out = vec![];
                running.audio(&[0; 160], &mut out);
                assert_shape(&json(P, n), &sent(&out, "reverse-media"), n);
            }
            "out-reverse-media-stop.json" | "out-reverse-hangup-call.json" => {
                let out = drive_outbound(&mut running, 160);
                assert_shape(&json(P, n), &sent(&out, json(P, n)["event"].as_str().unwrap()), n);
            }
            "out-reverse-call-transfer.json" => {
                let mut out = vec![];
                running.transfer("+91111111111", "billing", &mut out).unwrap();
                assert_shape(&json(P, n), &sent(&out, "reverse-call-transfer"), n);
            }
            _ => no_expectation(P, n),
        }
    }
}

fn exotel(query: &[(&str, &str)], start: &str) -> Exotel {
    let pairs: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    connected_then_started(Exotel::from_query(&pairs).unwrap(), "exotel", start)
}

#[test]
fn exotel_fixtures() {
    const P: &str = "exotel";
    let url_8k = [("sample-rate", "8000")];
    let mut running = exotel(&url_8k, "in-start-docs.json");
    for name in names(P) {
        let n = name.as_str();
        let on = |e: &mut Exotel| e.on_text(&text(P, n)).unwrap();
        match n {
            "in-connected.json" | "in-connected-protocol.json" => {
                let mut e = Exotel::new();
                assert_eq!(e.handshake_text(&text(P, n)).unwrap(), HandshakeStep::Continue);
                // Exotel retries the handshake once: a second `connected` is harmless.
                assert_eq!(e.handshake_text(&text(P, n)).unwrap(), HandshakeStep::Continue);
            }
            "in-start-docs.json" => {
                let m = running.meta();
                assert_eq!(
                    ids(m),
                    ("MZ18ad3ab5a668481ce02b83e7395059f0", "+919876543210", "+918047491899", "incoming", 8000)
                );
                assert_eq!(
                    (m.connected_event["key1"].as_str(), m.connected_event["call_sid"].as_str()),
                    (Some("value1"), Some("CA8e9f1c"))
                );
            }
            // Issue #14: `encoding: "base64"`, `bit_rate: "128kbps"`, the rate as a string or a
            // number — with and without the URL's `sample-rate`.
            "in-start-base64-string-rate.json" | "in-start-base64-number-rate.json" => {
                for query in [&url_8k[..], &[]] {
                    let mut e = exotel(query, n);
                    assert_eq!((e.meta().sample_rate, e.wire_rate()), (8000, 8000), "{n}");
                    assert!(e.meta().stream_id.contains("stream"), "{n}: {:?}", e.meta().stream_id);
                    assert_eq!(e.on_text(&text(P, "in-media-no-sid.json")).unwrap(), audio(&PCM));
                }
            }
            "in-start-agentstream-repo.json" => {
                // No stream id anywhere: the call SID stands in; media without `stream_sid` is ours.
                let mut e = exotel(&[], n);
                assert_eq!(ids(e.meta()), ("abc123", "+1234567890", "+0987654321", "incoming", 8000));
                assert_eq!(e.meta().connected_event["campaign_id"], "12345");
                assert_eq!(e.on_text(&text(P, "in-media-no-sid.json")).unwrap(), audio(&PCM));
                assert_eq!(e.on_text(&text(P, "in-stop-agentstream-repo.json")).unwrap(), customer());
            }
            "in-start-l16-khz-rate.json" => {
                // "16kHz" labels the rate when the URL has none; the URL wins when it has one.
                let e = exotel(&[], n);
                assert_eq!((e.meta().sample_rate, e.wire_rate()), (16000, 16000));
                assert_eq!(exotel(&url_8k, n).wire_rate(), 8000);
            }
            "in-media.json" | "in-media-numeric.json" | "in-media-no-sid.json" => {
                assert_eq!(on(&mut running), audio(&PCM), "{n}")
            }
            "in-dtmf.json" => assert_eq!(on(&mut running), Inbound::Dtmf("5".into())),
            "in-mark.json" => {
                let mut out = vec![];
                assert_eq!(running.utterance_done(&mut out).as_deref(), Some("bot-1"));
                assert_eq!(on(&mut running), Inbound::Mark("bot-1".into()));
            }
            "in-stop.json" | "in-stop-agentstream-repo.json" => assert_eq!(on(&mut running), customer(), "{n}"),
            "out-media.json" | "out-mark.json" | "out-clear.json" => {
                let mut e = exotel(&url_8k, "in-start-docs.json");
                let doc = json(P, n);
                let out = drive_outbound(&mut e, 160);
                assert_shape(&doc, &sent(&out, doc["event"].as_str().unwrap()), n);
                assert!(matches!(out.last(), Some(OutFrame::Close { code: 1000, .. })), "bot hang-up closes: {out:?}");
            }
            _ => no_expectation(P, n),
        }
    }
}

fn twilio(start: &str, creds: TwilioConfig) -> Twilio {
    connected_then_started(Twilio::new(creds), "twilio", start)
}

#[test]
fn twilio_fixtures() {
    const P: &str = "twilio";
    let mut running = twilio("in-start.json", TwilioConfig::default());
    for name in names(P) {
        let n = name.as_str();
        let on = |t: &mut Twilio| t.on_text(&text(P, n)).unwrap();
        match n {
            "in-connected.json" => {} // every handshake starts with it
            "in-start.json" => {
                let m = running.meta();
                assert_eq!(ids(m), ("MZ7f8e", "+15550001111", "+15550002222", "outgoing", 8000));
                assert_eq!(
                    (m.connected_event["crm_id"].as_str(), m.connected_event["callSid"].as_str()),
                    (Some("X-7"), Some("CA5678"))
                );
            }
            "in-start-both-tracks.json" => {
                let t = twilio(n, TwilioConfig::default());
                assert_eq!(ids(t.meta()), ("MZboth", "15550003333", "+15550004444", "incoming", 8000));
            }
            "in-media.json" => assert_eq!(on(&mut running), audio(&ULAW)),
            "in-media-outbound-track.json" => assert!(matches!(on(&mut running), Inbound::Ignored(_))),
            "in-dtmf.json" => assert_eq!(on(&mut running), Inbound::Dtmf("1".into())),
            "in-mark.json" => {
                running.utterance_done(&mut vec![]);
                assert_eq!(on(&mut running), Inbound::Mark("bot-1".into()));
            }
            "in-stop.json" => assert_eq!(on(&mut running), customer()),
            "out-media.json" | "out-mark.json" | "out-clear.json" | "out-hangup-rest.json" => {
                let creds = TwilioConfig { auth_token: Some("tok".into()), ..Default::default() };
                let out = drive_outbound(&mut twilio("in-start.json", creds), 160);
                assert_documented(
                    P,
                    n,
                    &out,
                    "https://api.twilio.com",
                    &[("AccountSid", "AC1234"), ("CallSid", "CA5678")],
                );
            }
            _ => no_expectation(P, n),
        }
    }
}

fn telnyx(start: &str, creds: TelnyxConfig) -> Telnyx {
    connected_then_started(Telnyx::new(creds), "telnyx", start)
}

#[test]
fn telnyx_fixtures() {
    const P: &str = "telnyx";
    let mut running = telnyx("in-start-asyncapi.json", TelnyxConfig::default());
    for name in names(P) {
        let n = name.as_str();
        let on = |t: &mut Telnyx| t.on_text(&text(P, n));
        match n {
            "in-connected.json" => {}
            "in-start-asyncapi.json" => {
                let m = running.meta();
                assert_eq!(
                    ids(m),
                    ("32DE0DEA-53CB-4B21-89A4-9E1819C043BC", "+13122010094", "+13122123456", "incoming", 8000)
                );
                assert_eq!(m.connected_event["call_session_id"], "ff55a038-6f5d-11ef-9692-02420aeffb1f");
            }
            "in-start-api-mulaw.json" => {
                // `audio/x-mulaw` (the call-control API's example) is PCMU.
                let mut t = telnyx(n, TelnyxConfig::default());
                assert_eq!(t.meta().connected_event["client_state"], "aGF2ZSBhIG5pY2UgZGF5ID1d");
                assert_eq!(t.on_text(&text(P, "in-media.json")).unwrap(), audio(&ULAW));
            }
            "in-start-pcma.json" => {
                let mut t = telnyx(n, TelnyxConfig::default());
                assert_eq!(ids(t.meta()), ("a2b4c6d8-pcma", "+442071234567", "+442079876543", "outgoing", 8000));
                assert_eq!(t.meta().connected_event["crm_id"], "C-9", "custom_parameters as name/value pairs");
                // The same frame carrying A-law bytes.
                let media = text(P, "in-media-numeric.json").replace(ULAW_B64, ALAW_B64);
                assert_eq!(t.on_text(&media).unwrap(), audio(&ALAW));
            }
            "in-media.json" | "in-media-numeric.json" => assert_eq!(on(&mut running).unwrap(), audio(&ULAW), "{n}"),
            "in-dtmf.json" => assert_eq!(on(&mut running).unwrap(), Inbound::Dtmf("1".into())),
            "in-mark.json" => {
                running.utterance_done(&mut vec![]);
                assert_eq!(on(&mut running).unwrap(), Inbound::Mark("bot-1".into()));
            }
            "in-stop.json" => assert_eq!(on(&mut running).unwrap(), customer()),
            "in-error.json" => {
                let err = on(&mut running).unwrap_err().to_string();
                assert!(err.contains("rate_limit_reached") && err.contains("100005"), "{err}");
            }
            "out-media.json" | "out-mark.json" | "out-clear.json" | "out-hangup-rest.json" => {
                let creds = TelnyxConfig { api_key: Some("KEY".into()), api_base: None };
                let out = drive_outbound(&mut telnyx("in-start-api-mulaw.json", creds), 160);
                assert_documented(
                    P,
                    n,
                    &out,
                    "https://api.telnyx.com",
                    &[("call_control_id", "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg")],
                );
            }
            _ => no_expectation(P, n),
        }
    }
}

fn plivo(start: &str, creds: PlivoConfig) -> Plivo {
    let query = [("from", "+15550001111"), ("to", "+15550002222")].map(|(k, v)| (k.to_string(), v.to_string()));
    let mut p = Plivo::new(creds, &query);
    assert_eq!(p.handshake_text(&text("plivo", start)).unwrap(), ANSWERED, "{start}");
    p
}

#[test]
fn plivo_fixtures() {
    const P: &str = "plivo";
    let mut running = plivo("in-start.json", PlivoConfig::default());
    for name in names(P) {
        let n = name.as_str();
        let on = |p: &mut Plivo| p.on_text(&text(P, n)).unwrap();
        match n {
            "in-start.json" => {
                let m = running.meta();
                assert_eq!(
                    ids(m),
                    ("20170ada-f610-433b-8758-c02a2aab3662", "+15550001111", "+15550002222", "incoming", 8000)
                );
                assert_eq!(m.connected_event["callId"], "8b1c6c3a-2f67-4d9e-9c2b-1e1a5f0d7b11");
            }
            "in-start-l16.json" | "in-start-l16-strings.json" => {
                let mut p = plivo(n, PlivoConfig::default());
                assert_eq!(p.meta().sample_rate, 16000, "{n}");
                let media = text(P, "in-media.json").replace(ULAW_B64, PCM_B64);
                assert_eq!(p.on_text(&media).unwrap(), audio(&PCM));
                let out = drive_outbound(&mut p, 320);
                assert_eq!(sent(&out, "playAudio")["media"]["contentType"], "audio/x-l16");
                assert_eq!(sent(&out, "playAudio")["media"]["sampleRate"], 16000);
            }
            "in-media.json" => assert_eq!(on(&mut running), audio(&ULAW)),
            "in-dtmf.json" => assert_eq!(on(&mut running), Inbound::Dtmf("5".into())),
            "in-dtmf-nested-sid.json" => assert_eq!(on(&mut running), Inbound::Dtmf("#".into())),
            "in-played-stream.json" | "in-played-stream-no-sid.json" => {
                let mut p = plivo("in-start.json", PlivoConfig::default());
                p.utterance_done(&mut vec![]);
                assert_eq!(on(&mut p), Inbound::Mark("bot-1".into()), "{n}");
            }
            "in-cleared-audio.json" => assert!(matches!(on(&mut running), Inbound::Ignored(_))),
            "out-play-audio.json" | "out-checkpoint.json" | "out-clear-audio.json" | "out-hangup-rest.json" => {
                let creds = PlivoConfig { auth_id: Some("MA1".into()), auth_token: Some("t".into()), api_base: None };
                let out = drive_outbound(&mut plivo("in-start.json", creds), 160);
                assert_documented(
                    P,
                    n,
                    &out,
                    "https://api.plivo.com",
                    &[("auth_id", "MA1"), ("call_id", "8b1c6c3a-2f67-4d9e-9c2b-1e1a5f0d7b11")],
                );
            }
            _ => no_expectation(P, n),
        }
    }
}

fn vonage(connected: &str) -> Vonage {
    let mut v = Vonage::new();
    assert_eq!(v.handshake_text(&text("vonage", connected)).unwrap(), ANSWERED, "{connected}");
    v
}

#[test]
fn vonage_fixtures() {
    const P: &str = "vonage";
    let mut running = vonage("in-connected.json");
    for name in names(P) {
        let n = name.as_str();
        let on = |v: &mut Vonage| v.on_text(&text(P, n)).unwrap();
        match n {
            "in-connected.json" => {
                let m = running.meta();
                assert_eq!(
                    ids(m),
                    ("aaaaaaaa-bbbb-cccc-dddd-0123456789ab", "447700900001", "447700900002", "incoming", 16000)
                );
                assert_eq!(m.connected_event["customer_name"], "Sam");
            }
            "in-connected-8k.json" => {
                let v = vonage(n);
                assert_eq!(ids(v.meta()), ("CON-1234", "447700900003", "447700900004", "outgoing", 8000));
            }
            "in-media.hex" => {
                let hex = text(P, n);
                let bytes: Vec<u8> = (0..hex.trim().len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).unwrap())
                    .collect();
                assert_eq!(running.on_binary(&bytes).unwrap(), audio(&PCM));
            }
            "in-dtmf.json" => assert_eq!(on(&mut running), Inbound::Dtmf("9".into())),
            "in-notify.json" => {
                running.utterance_done(&mut vec![]);
                assert_eq!(on(&mut running), Inbound::Mark("bot-1".into()));
            }
            "in-cleared.json" => assert!(matches!(on(&mut running), Inbound::Ignored(_))),
            "out-notify.json" | "out-clear.json" => {
                let out = drive_outbound(&mut vonage("in-connected.json"), 320);
                let doc = json(P, n);
                assert_shape(&doc, &sent(&out, doc["action"].as_str().unwrap()), n);
                // Audio goes as binary frames of exactly 20 ms (640 bytes at 16 kHz).
                assert!(matches!(&out[0], OutFrame::Binary(b) if b.len() == 640), "{:?}", out[0]);
            }
            _ => no_expectation(P, n),
        }
    }
}
