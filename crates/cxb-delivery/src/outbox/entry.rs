//! On-disk and public data types of the outbox.
//!
//! An entry file is one JSON document, written once and never modified:
//!
//! ```json
//! {"id":"1763750000123-9f3c2a1b4d5e6f70","kind":"result","created_at":"2025-11-21T19:00:00.123Z",
//!  "key":"<session_id>",
//!  "target":{"type":"http","method":"POST","url":"https://api/…/call-results",
//!            "headers":[["X-CXBCore-Secret","…"]],"body":{"json":{…}}}}
//! ```
//!
//! `body` is `{"json": <verbatim JSON>}`, `{"base64": "<bytes>"}` or absent. A
//! custom target is `{"type":"custom","data":<JSON>}` and is handled by the
//! [`Deliverer`](super::Deliverer) registered for the entry's kind.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Sortable entry id: 13-digit zero-padded Unix millis, `-`, 16 hex digits.
///
/// Lexicographic order is creation order (monotonic within one process, like
/// a monotonic ULID), so a directory listing sorted by name replays oldest
/// first. The alphabet (`0-9a-f-`) is filename-safe, which is why external
/// ids are validated with [`EntryId::parse`] before touching the filesystem.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntryId(String);

const MILLIS_DIGITS: usize = 13;
const RAND_DIGITS: usize = 16;
const ID_LEN: usize = MILLIS_DIGITS + 1 + RAND_DIGITS;

/// Last issued (millis, random) pair, for monotonic ids within a process.
static LAST_ID: Mutex<(u64, u64)> = Mutex::new((0, 0));

impl EntryId {
    /// Creates a new id, strictly greater than any previously generated in
    /// this process (the random part is incremented within the same millisecond).
    pub(crate) fn generate(now: DateTime<Utc>) -> EntryId {
        let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        let mut last = LAST_ID.lock().unwrap_or_else(|p| p.into_inner());
        let (ms, rnd) = if now_ms > last.0 {
            // Top bit clear leaves 2^63 increments of headroom in one millisecond.
            (now_ms, rand::random::<u64>() >> 1)
        } else {
            match last.1.checked_add(1) {
                Some(r) => (last.0, r),
                None => (last.0 + 1, 0),
            }
        };
        *last = (ms, rnd);
        EntryId(format!("{ms:013}-{rnd:016x}"))
    }

    /// Validates an externally supplied id (admin API, file names).
    pub fn parse(s: &str) -> Option<EntryId> {
        let b = s.as_bytes();
        let ok = b.len() == ID_LEN
            && b[..MILLIS_DIGITS].iter().all(u8::is_ascii_digit)
            && b[MILLIS_DIGITS] == b'-'
            && b[MILLIS_DIGITS + 1..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        ok.then(|| EntryId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EntryId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        EntryId::parse(&s).ok_or_else(|| format!("invalid entry id {s:?}"))
    }
}

impl From<EntryId> for String {
    fn from(id: EntryId) -> String {
        id.0
    }
}

/// HTTP request body, stored so that every attempt sends identical bytes.
#[derive(Clone, Debug, Default)]
pub enum HttpBody {
    #[default]
    Empty,
    /// JSON text kept verbatim (never re-serialized), sent as-is.
    Json(Box<RawValue>),
    /// Arbitrary bytes, stored base64-encoded.
    Bytes(Vec<u8>),
}

impl HttpBody {
    /// Serializes `value` once; those bytes are what every attempt sends.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<HttpBody, serde_json::Error> {
        let text = serde_json::to_string(value)?;
        Ok(HttpBody::Json(RawValue::from_string(text)?))
    }

    /// Uses already-serialized JSON text verbatim (validated, not reformatted).
    pub fn raw_json(text: String) -> Result<HttpBody, serde_json::Error> {
        Ok(HttpBody::Json(RawValue::from_string(text)?))
    }

    /// The exact bytes put on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HttpBody::Empty => &[],
            HttpBody::Json(raw) => raw.get().as_bytes(),
            HttpBody::Bytes(b) => b,
        }
    }

    pub fn is_json(&self) -> bool {
        matches!(self, HttpBody::Json(_))
    }
}

/// An HTTP delivery target handled by the built-in deliverer.
#[derive(Clone, Debug)]
pub struct HttpTarget {
    pub method: String,
    pub url: String,
    /// Sent in order; duplicates allowed. `Content-Type: application/json` is
    /// added at send time for JSON bodies unless a content-type is present.
    pub headers: Vec<(String, String)>,
    pub body: HttpBody,
}

impl HttpTarget {
    /// `POST url` with a JSON body serialized now.
    pub fn post_json<T: Serialize + ?Sized>(url: impl Into<String>, body: &T) -> Result<HttpTarget, serde_json::Error> {
        Ok(HttpTarget { method: "POST".into(), url: url.into(), headers: Vec::new(), body: HttpBody::json(body)? })
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> HttpTarget {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Where an entry goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "TargetRepr", into = "TargetRepr")]
pub enum Target {
    Http(HttpTarget),
    /// Opaque data for the [`Deliverer`](super::Deliverer) registered for the kind.
    Custom {
        data: serde_json::Value,
    },
}

/// Flat wire form of [`Target`]. A plain struct rather than an internally
/// tagged enum because serde buffers tagged enums, which breaks `RawValue`.
#[derive(Serialize, Deserialize)]
struct TargetRepr {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    headers: Option<Vec<(String, String)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<BodyRepr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BodyRepr {
    Json(Box<RawValue>),
    Base64(String),
}

impl TryFrom<TargetRepr> for Target {
    type Error = String;
    fn try_from(r: TargetRepr) -> Result<Self, Self::Error> {
        match r.ty.as_str() {
            "http" => {
                let body = match r.body {
                    None => HttpBody::Empty,
                    Some(BodyRepr::Json(raw)) => HttpBody::Json(raw),
                    Some(BodyRepr::Base64(s)) => HttpBody::Bytes(
                        base64::engine::general_purpose::STANDARD
                            .decode(s)
                            .map_err(|e| format!("invalid base64 body: {e}"))?,
                    ),
                };
                Ok(Target::Http(HttpTarget {
                    method: r.method.ok_or("http target without method")?,
                    url: r.url.ok_or("http target without url")?,
                    headers: r.headers.unwrap_or_default(),
                    body,
                }))
            }
            "custom" => Ok(Target::Custom { data: r.data.unwrap_or(serde_json::Value::Null) }),
            other => Err(format!("unknown target type {other:?}")),
        }
    }
}

impl From<Target> for TargetRepr {
    fn from(t: Target) -> TargetRepr {
        match t {
            Target::Http(h) => TargetRepr {
                ty: "http".into(),
                method: Some(h.method),
                url: Some(h.url),
                headers: Some(h.headers),
                body: match h.body {
                    HttpBody::Empty => None,
                    HttpBody::Json(raw) => Some(BodyRepr::Json(raw)),
                    HttpBody::Bytes(b) => Some(BodyRepr::Base64(base64::engine::general_purpose::STANDARD.encode(b))),
                },
                data: None,
            },
            Target::Custom { data } => {
                TargetRepr { ty: "custom".into(), method: None, url: None, headers: None, body: None, data: Some(data) }
            }
        }
    }
}

/// A persisted entry, as handed to deliverers. Immutable once written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub id: EntryId,
    /// `result`, `agent_desk`, `recording`, … selects the deliverer and labels metrics.
    pub kind: String,
    pub created_at: DateTime<Utc>,
    /// Dedupe / correlation key (e.g. session_id); informational for the outbox.
    pub key: String,
    pub target: Target,
}

impl Entry {
    /// Parses an entry file (the outbox reads every one at start, and a torn or tampered file must
    /// come out as an error, never a panic).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Entry, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What a producer hands to [`Outbox::enqueue`](super::Outbox::enqueue).
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub kind: String,
    pub key: String,
    pub target: Target,
}

impl NewEntry {
    pub fn new(kind: impl Into<String>, key: impl Into<String>, target: Target) -> NewEntry {
        NewEntry { kind: kind.into(), key: key.into(), target }
    }

    /// Convenience: an HTTP entry.
    pub fn http(kind: impl Into<String>, key: impl Into<String>, target: HttpTarget) -> NewEntry {
        NewEntry::new(kind, key, Target::Http(target))
    }

    /// Convenience: an entry for a custom deliverer.
    pub fn custom(kind: impl Into<String>, key: impl Into<String>, data: serde_json::Value) -> NewEntry {
        NewEntry::new(kind, key, Target::Custom { data })
    }
}

/// Attempt bookkeeping, in `<id>.meta` next to the entry file. Advisory: if it
/// is missing or unreadable the entry is still delivered (with attempts = 0).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Set by `replay`: `max_age` counts from here instead of `created_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_at: Option<DateTime<Utc>>,
    /// Last response body (truncated to 64 KiB); only kept for dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_response_body: Option<String>,
}

/// Which directory an entry lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Dead,
}

/// One row of [`Outbox::list`](super::Outbox::list).
#[derive(Clone, Debug, Serialize)]
pub struct EntrySummary {
    pub id: EntryId,
    pub state: State,
    pub kind: String,
    pub key: String,
    pub created_at: DateTime<Utc>,
    /// Entry file plus sidecar size on disk.
    pub size_bytes: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Pending only: when the next attempt is scheduled (None while in flight).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub in_flight: bool,
    /// Dead only: `rejected`, `max_age`, `corrupt`.
    pub dead_reason: Option<String>,
}

/// Full view of one entry, from [`Outbox::get`](super::Outbox::get).
#[derive(Clone, Debug, Serialize)]
pub struct EntryDetail {
    pub summary: EntrySummary,
    /// None if the entry file could not be parsed (corrupt dead letter).
    pub entry: Option<Entry>,
    pub last_status: Option<u16>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
    /// Dead letters: the receiver's last response body (≤ 64 KiB).
    pub last_response_body: Option<String>,
}

/// Point-in-time counters, cheap to read (no I/O).
#[derive(Clone, Debug, Serialize)]
pub struct OutboxStats {
    pub pending: usize,
    pub dead: usize,
    pub in_flight: usize,
    /// Age of the oldest pending entry.
    pub oldest_pending_age: Option<Duration>,
    /// Bytes of pending + dead entry files and sidecars.
    pub bytes: u64,
    pub max_bytes: u64,
    /// `bytes >= alarm_ratio * max_bytes`.
    pub disk_alarm: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_monotonic_and_valid() {
        let now = Utc::now();
        let mut prev = EntryId::generate(now);
        for _ in 0..1000 {
            let id = EntryId::generate(now);
            assert!(id > prev, "{id} <= {prev}");
            assert_eq!(EntryId::parse(id.as_str()), Some(id.clone()));
            prev = id;
        }
        assert!(EntryId::parse("../../etc/passwd").is_none());
        assert!(EntryId::parse("1763750000123-9F3C2A1B4D5E6F70").is_none());
    }

    #[test]
    fn json_body_roundtrips_verbatim() {
        let text = r#"{"b":1,"a":[1.50,"x"]}"#.to_string();
        let entry = Entry {
            id: EntryId::generate(Utc::now()),
            kind: "result".into(),
            created_at: Utc::now(),
            key: "s1".into(),
            target: Target::Http(HttpTarget {
                method: "POST".into(),
                url: "http://x/y".into(),
                headers: vec![("a".into(), "b".into())],
                body: HttpBody::raw_json(text.clone()).expect("valid"),
            }),
        };
        let file = serde_json::to_vec(&entry).expect("ser");
        let back: Entry = serde_json::from_slice(&file).expect("de");
        let Target::Http(h) = back.target else { panic!("not http") };
        assert_eq!(h.body.as_bytes(), text.as_bytes());
        assert_eq!(h.headers, vec![("a".to_string(), "b".to_string())]);
    }

    #[test]
    fn bytes_body_roundtrips() {
        let t = Target::Http(HttpTarget {
            method: "PUT".into(),
            url: "http://x".into(),
            headers: vec![],
            body: HttpBody::Bytes(vec![0, 1, 2, 255]),
        });
        let s = serde_json::to_string(&t).expect("ser");
        assert!(s.contains(r#""base64":"AAEC/w==""#), "{s}");
        let back: Target = serde_json::from_str(&s).expect("de");
        let Target::Http(h) = back else { panic!("not http") };
        assert_eq!(h.body.as_bytes(), &[0, 1, 2, 255]);
    }
}
