//! The worker's own parsers of untrusted input: the bot config from the CXB API, the LiveKit
//! call-start bodies, the outbox's entry files and the recordings route's `Range` header.

use cxb_core::livekit::{check_body, BodyRoute};
use cxb_core::recordings::{parse_range, RangeSpec};
use cxb_delivery::outbox::{Entry, EntryId, HttpBody, Target};
use cxb_wire::BotConfig;

/// `BotConfig::from_json`; an accepted config round-trips: what the worker writes back (results,
/// logs) parses again to the same config.
pub fn bot_config(data: &[u8]) {
    let Ok(cfg) = BotConfig::from_json(data) else { return };
    let written = serde_json::to_vec(&cfg).expect("a parsed config serialises");
    let again = BotConfig::from_json(&written).unwrap_or_else(|e| {
        panic!("a config the worker accepted does not parse back ({e}): {}", String::from_utf8_lossy(&written))
    });
    let rewritten = serde_json::to_vec(&again).expect("a parsed config serialises");
    assert_eq!(
        String::from_utf8_lossy(&written),
        String::from_utf8_lossy(&rewritten),
        "a config changes when written back and read again"
    );
}

fn livekit(route: BodyRoute, data: &[u8], country_codes: &[Option<&str>]) {
    for cc in country_codes {
        if let Err(rejection) = check_body(route, data, *cc) {
            assert_eq!(rejection.status().as_u16(), 422, "a bad body is a 422: {rejection:?}");
        }
    }
}

pub fn livekit_dispatch(data: &[u8]) {
    livekit(BodyRoute::Dispatch, data, &[None]);
}

/// Dial-out numbers are normalised with the worker's default country code (none, or `+91`/`1`).
pub fn livekit_dialout(data: &[u8]) {
    livekit(BodyRoute::Dialout, data, &[None, Some("+91"), Some("1")]);
}

pub fn livekit_attach(data: &[u8]) {
    livekit(BodyRoute::Attach, data, &[None]);
}

pub fn livekit_widget(data: &[u8]) {
    livekit(BodyRoute::Widget, data, &[None]);
}

/// An outbox entry file (read at start and by the admin API), and the input as an entry id
/// (file names, admin paths). A parsed entry round-trips, its JSON body byte for byte.
pub fn outbox_entry(data: &[u8]) {
    if let Some(id) = crate::text(data).and_then(EntryId::parse) {
        assert_eq!(id.as_str().as_bytes(), data);
    }
    let Ok(entry) = Entry::from_file_bytes(data) else { return };
    let written = serde_json::to_vec(&entry).expect("a parsed entry serialises");
    let again = Entry::from_file_bytes(&written)
        .unwrap_or_else(|e| panic!("an entry does not parse back ({e}): {}", String::from_utf8_lossy(&written)));
    assert_eq!(
        (&again.id, &again.kind, &again.key, again.created_at),
        (&entry.id, &entry.kind, &entry.key, entry.created_at)
    );
    match (&entry.target, &again.target) {
        (Target::Http(a), Target::Http(b)) => {
            assert_eq!((&a.method, &a.url, &a.headers), (&b.method, &b.url, &b.headers));
            assert_eq!(a.body.as_bytes(), b.body.as_bytes(), "the stored body is sent byte for byte");
            assert_eq!(matches!(a.body, HttpBody::Json(_)), matches!(b.body, HttpBody::Json(_)));
        }
        (Target::Custom { data: a }, Target::Custom { data: b }) => assert_eq!(a, b),
        _ => panic!("the target kind changed when written back"),
    }
}

/// The `Range` header against a file size: the first 8 bytes (little-endian, zero-padded) are the
/// size, the rest the header value. A range is inside the file.
pub fn recording_range(data: &[u8]) {
    let (size, header) = data.split_at(data.len().min(8));
    let mut le = [0u8; 8];
    le[..size.len()].copy_from_slice(size);
    let size = u64::from_le_bytes(le);
    let Some(header) = crate::text(header) else { return };
    if let RangeSpec::Range(start, end) = parse_range(header, size) {
        assert!(start <= end && end < size, "range {start}-{end} of a {size}-byte file");
    }
}

/// The crash journal reader (`journal::parse_journal`, what `read_journal` does with the file's
/// bytes) and the recovery that turns a journal into the call's result. Every non-blank line
/// after the header is a record, a skipped line or the torn tail; the result is always an
/// `error` ending with a `worker_crashed` event, and it serialises.
pub fn journal_reader(data: &[u8]) {
    use cxb_core::journal::{recovered_payload, CallHeader, CallLine};
    use cxb_delivery::journal::parse_journal;
    use cxb_wire::result::DisconnectedBy;

    let path = std::path::Path::new("fuzz.jsonl");
    let Ok(j) = parse_journal::<CallHeader, CallLine>(path, data) else { return };
    let lines = data.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count();
    assert_eq!(
        j.records.len() + j.skipped_lines + usize::from(j.torn_tail),
        lines - 1,
        "every line after the header is accounted for"
    );
    // No recording is on disk under this directory: the recovery must not need one.
    let payload = recovered_payload(&j, std::path::Path::new("/nonexistent/cxb-fuzz"));
    assert_eq!(payload.disconnected_by, Some(DisconnectedBy::Error));
    assert_eq!(payload.events.last().map(|e| e.kind.as_str()), Some("worker_crashed"));
    assert!(payload.recording_key.is_none());
    serde_json::to_vec(&payload).expect("a recovered result serialises");
}
