//! The Agent Desk requests cxb-core sends to CXB API (contract §3 call 6, §6.7), as durable
//! outbox entries.
//!
//! The contract names the routes but not the JSON keys ([UNCERTAIN], §12.6); the keys below are
//! our decision, documented in `docs/agent-desk.md`. All paths are under
//! `{api_base}/agent-desk`, where `api_base` is like `https://api.example/api/v1`:
//!
//! | Request | Path | Body |
//! |---|---|---|
//! | enqueue | `POST /agent-desk/enqueue` | [`EnqueueRequest`] |
//! | events | `POST /agent-desk/calls/{call_id}/events` | [`EventsUpdate`] |
//! | transcript | `POST /agent-desk/calls/{call_id}/transcript` | [`TranscriptUpdate`] |
//! | recording | `POST /agent-desk/calls/{call_id}/recording` | [`RecordingUpdate`] |
//! | customer-disconnected | `POST /agent-desk/calls/{call_id}/customer-disconnected` | [`CustomerDisconnected`] |
//!
//! Every request carries both secret header spellings (contract §13.2) and an
//! `Idempotency-Key` (the outbox delivers at least once and in no particular order, so the
//! receiver needs a way to drop duplicates). Absent optional fields are omitted, never `null`
//! (contract §13.7): the receiver stores with `exclude_none`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use cxb_delivery::{HttpTarget, NewEntry};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::hold::HoldAction;

/// Outbox entry kind of every Agent Desk request (selects metrics labels in the outbox).
pub const KIND: &str = "agent_desk";

/// Both spellings of the shared-secret header (contract §2.1: the Agent Desk pages say
/// `X-CXB-Core-Secret`, other pages `X-CXBCore-Secret`); we always send both.
pub const SECRET_HEADERS: [&str; 2] = ["X-CXB-Core-Secret", "X-CXBCore-Secret"];

/// Header naming the logical request, identical on every retry of it.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// Longest accepted `call_id`, in bytes. Ours are UUIDs; the bound keeps keys and URLs sane.
pub const MAX_CALL_ID_LEN: usize = 128;

/// Events per `events` request. The hold worker emits a handful per call; a caller batching
/// more than this has a bug (or should split the batch).
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AgentDeskError {
    #[error("invalid call_id {call_id:?}: {why}")]
    InvalidCallId { call_id: String, why: &'static str },
    #[error("invalid Agent Desk API base {0:?}: expected an http:// or https:// URL")]
    InvalidApiBase(String),
    #[error("an events update needs 1..={MAX_EVENTS_PER_REQUEST} events, got {0}")]
    EventCount(usize),
    #[error("cannot serialise the Agent Desk {request} body: {source}")]
    Serialize {
        request: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Who said a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Bot,
}

/// One transcript line: `{"role","text","at_seconds"}`, `at_seconds` since the call started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    pub role: Role,
    pub text: String,
    #[serde(with = "seconds")]
    pub at_seconds: f64,
}

/// The customer leg: `{"number"?,"identity"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    /// E.164 (or whatever the carrier gave); omitted when unknown (e.g. attach without `to_number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// The customer's LiveKit participant identity (e.g. `sip-+9180…`), so the desk can find it.
    pub identity: String,
}

/// The transfer target that led to the handoff: `{"id"?,"label","value"}` (contract §4.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnqueueTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub label: String,
    /// The queue name (`agent_queue` targets carry the queue in `value`).
    pub value: String,
}

/// `POST {api_base}/agent-desk/enqueue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnqueueRequest {
    pub call_id: String,
    pub session_id: String,
    /// The LiveKit room the customer is in; agents get tokens for this room.
    pub room_name: String,
    pub bot_id: String,
    /// The worker's transport name: `livekit_inbound`, `livekit_outbound` or `attach`.
    pub transport: String,
    pub caller: Caller,
    pub escalation_reason: String,
    pub target: EnqueueTarget,
    /// The bot conversation so far.
    pub transcript: Vec<TranscriptEntry>,
    /// `call.*` variables (connected_event fields, campaign data) as strings.
    pub variables: BTreeMap<String, String>,
    /// Free-form context (SIP headers, campaign ids, callback context, ...). `null` values are
    /// dropped on the wire: the receiver treats absent and null alike.
    #[serde(serialize_with = "object_without_nulls")]
    pub context: Map<String, Value>,
    #[serde(with = "rfc3339")]
    pub enqueued_at: DateTime<Utc>,
}

/// One event of an events update: `{"type","at","data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDeskEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "rfc3339")]
    pub at: DateTime<Utc>,
    /// Always an object (possibly empty); `null` values are dropped.
    #[serde(default, serialize_with = "object_without_nulls")]
    pub data: Map<String, Value>,
}

impl AgentDeskEvent {
    pub fn new(kind: impl Into<String>, at: DateTime<Utc>, data: Map<String, Value>) -> Self {
        Self { kind: kind.into(), at, data }
    }

    /// The event for a hold worker's [`HoldAction::Event`] (`None` for other actions), its call
    /// time turned into wall-clock time from when the call started.
    pub fn from_hold_action(call_started: DateTime<Utc>, action: &HoldAction) -> Option<Self> {
        match action {
            HoldAction::Event { kind, at, data } => Some(Self::new(*kind, wall_clock(call_started, *at), data.clone())),
            _ => None,
        }
    }
}

impl CustomerDisconnected {
    /// The body for a hold worker's [`HoldAction::End`] (`None` for other actions). `reason` is
    /// the outcome (`customer_left`, `room_closed`, `hold_timeout`, `end_requested`,
    /// `agent_finished`): a stable vocabulary for the receiver. The free-text reason travels in
    /// the `hold_ended` event.
    pub fn from_hold_end(call_started: DateTime<Utc>, action: &HoldAction) -> Option<Self> {
        match action {
            HoldAction::End { outcome, at, hold, agent_joined, .. } => Some(Self {
                reason: outcome.as_str().to_string(),
                at: wall_clock(call_started, *at),
                hold_seconds: hold.as_secs_f64(),
                agent_joined: *agent_joined,
            }),
            _ => None,
        }
    }
}

/// `call_started + at`; saturates instead of failing for absurd offsets.
pub fn wall_clock(call_started: DateTime<Utc>, at: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(at).ok().and_then(|d| call_started.checked_add_signed(d)).unwrap_or(call_started)
}

/// `POST {api_base}/agent-desk/calls/{call_id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsUpdate {
    pub events: Vec<AgentDeskEvent>,
}

/// `POST {api_base}/agent-desk/calls/{call_id}/transcript`: the whole transcript so far
/// (not a delta, so a lost or reordered update is repaired by the next one); `final` on the
/// last update of the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptUpdate {
    pub transcript: Vec<TranscriptEntry>,
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// `POST {api_base}/agent-desk/calls/{call_id}/recording`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingUpdate {
    /// Object key, e.g. `recordings/2026/05/19/<session_id>.wav` (contract §13.5).
    pub recording_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_url: Option<String>,
    #[serde(with = "seconds")]
    pub duration_seconds: f64,
}

/// `POST {api_base}/agent-desk/calls/{call_id}/customer-disconnected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerDisconnected {
    /// Why the customer leg ended (e.g. `participant_left`, `room_closed`, `hold_timeout`).
    pub reason: String,
    #[serde(with = "rfc3339")]
    pub at: DateTime<Utc>,
    /// Time on hold before an agent joined (or until the end, when none did).
    #[serde(with = "seconds")]
    pub hold_seconds: f64,
    pub agent_joined: bool,
}

/// Builds the Agent Desk outbox entries for one CXB API.
///
/// Cheap to clone; holds no connection. `api_base` is like `https://api.example/api/v1`
/// (see [`api_base_from_config_url`]); trailing slashes are ignored. Entry keys (also sent as
/// the `Idempotency-Key` header) start with the percent-encoded call_id.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentDesk {
    pub api_base: String,
    /// Sent in both header spellings when set and non-empty.
    pub secret: Option<String>,
}

impl std::fmt::Debug for AgentDesk {
    // The secret must not end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentDesk")
            .field("api_base", &self.api_base)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AgentDesk {
    /// Validates and normalises `api_base` (trailing slashes removed).
    pub fn new(api_base: impl Into<String>, secret: Option<String>) -> Result<Self, AgentDeskError> {
        let api_base = api_base.into();
        let base = checked_base(&api_base)?.to_string();
        Ok(Self { api_base: base, secret: secret.filter(|s| !s.is_empty()) })
    }

    /// From the runtime config URL (`https://x/api/v1/config` → base `https://x/api/v1`), the
    /// way the worker derives every other CXB API URL (contract §3).
    pub fn from_config_url(config_url: &str, secret: Option<String>) -> Result<Self, AgentDeskError> {
        Self::new(api_base_from_config_url(config_url), secret)
    }

    /// `POST /agent-desk/enqueue`. Key `{call_id}:enqueue`.
    pub fn enqueue(&self, req: &EnqueueRequest) -> Result<NewEntry, AgentDeskError> {
        check_call_id(&req.call_id)?;
        let url = format!("{}/agent-desk/enqueue", checked_base(&self.api_base)?);
        self.entry("enqueue", &req.call_id, url, req, false)
    }

    /// `POST /agent-desk/calls/{call_id}/events`. Key `{call_id}:events:{body hash}`, so two
    /// different batches are distinct requests and a retried batch is the same one.
    pub fn events(&self, call_id: &str, events: &[AgentDeskEvent]) -> Result<NewEntry, AgentDeskError> {
        if events.is_empty() || events.len() > MAX_EVENTS_PER_REQUEST {
            return Err(AgentDeskError::EventCount(events.len()));
        }
        #[derive(Serialize)]
        struct Body<'a> {
            events: &'a [AgentDeskEvent],
        }
        let url = self.call_url(call_id, "events")?;
        self.entry("events", call_id, url, &Body { events }, true)
    }

    /// `POST /agent-desk/calls/{call_id}/transcript`. Key `{call_id}:transcript:{body hash}`.
    pub fn transcript(&self, call_id: &str, update: &TranscriptUpdate) -> Result<NewEntry, AgentDeskError> {
        let url = self.call_url(call_id, "transcript")?;
        self.entry("transcript", call_id, url, update, true)
    }

    /// `POST /agent-desk/calls/{call_id}/recording`. Key `{call_id}:recording`.
    pub fn recording(&self, call_id: &str, update: &RecordingUpdate) -> Result<NewEntry, AgentDeskError> {
        let url = self.call_url(call_id, "recording")?;
        self.entry("recording", call_id, url, update, false)
    }

    /// `POST /agent-desk/calls/{call_id}/customer-disconnected`. Key
    /// `{call_id}:customer-disconnected`.
    pub fn customer_disconnected(
        &self,
        call_id: &str,
        update: &CustomerDisconnected,
    ) -> Result<NewEntry, AgentDeskError> {
        let url = self.call_url(call_id, "customer-disconnected")?;
        self.entry("customer-disconnected", call_id, url, update, false)
    }

    /// `{api_base}/agent-desk/calls/{percent-encoded call_id}/{what}`.
    fn call_url(&self, call_id: &str, what: &str) -> Result<String, AgentDeskError> {
        check_call_id(call_id)?;
        Ok(format!("{}/agent-desk/calls/{}/{what}", checked_base(&self.api_base)?, urlencoding::encode(call_id)))
    }

    fn entry<T: Serialize + ?Sized>(
        &self,
        request: &'static str,
        call_id: &str,
        url: String,
        body: &T,
        hash_in_key: bool,
    ) -> Result<NewEntry, AgentDeskError> {
        let target =
            HttpTarget::post_json(url, body).map_err(|source| AgentDeskError::Serialize { request, source })?;
        // Percent-encoded: header values must be visible ASCII, and a call_id may not be.
        let id = urlencoding::encode(call_id);
        let key = if hash_in_key {
            format!("{id}:{request}:{:016x}", fnv1a(target.body.as_bytes()))
        } else {
            format!("{id}:{request}")
        };
        let mut target = target.header("Content-Type", "application/json").header(IDEMPOTENCY_HEADER, key.clone());
        if let Some(secret) = self.secret.as_deref().filter(|s| !s.is_empty()) {
            for name in SECRET_HEADERS {
                target = target.header(name, secret);
            }
        }
        Ok(NewEntry::http(KIND, key, target))
    }
}

/// The CXB API base from a runtime config URL: query and fragment dropped, trailing slashes
/// and one trailing `/config` segment removed. `https://x/api/v1/config` → `https://x/api/v1`.
/// A URL without a `/config` segment is returned without its trailing slashes.
pub fn api_base_from_config_url(config_url: &str) -> String {
    let url = config_url.trim();
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let url = url.trim_end_matches('/');
    let url = url.strip_suffix("/config").unwrap_or(url);
    url.trim_end_matches('/').to_string()
}

fn checked_base(api_base: &str) -> Result<&str, AgentDeskError> {
    let base = api_base.trim().trim_end_matches('/');
    let lower = base.to_ascii_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    // A host is required, and whitespace or control characters would corrupt the request line.
    let ok = rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && !base.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(base)
    } else {
        Err(AgentDeskError::InvalidApiBase(api_base.to_string()))
    }
}

/// A call_id must name exactly one path segment once percent-encoded: `.` and `..` survive
/// encoding (they are unreserved) and would be folded away by URL normalisation.
fn check_call_id(call_id: &str) -> Result<(), AgentDeskError> {
    let why = if call_id.is_empty() {
        Some("empty")
    } else if call_id.len() > MAX_CALL_ID_LEN {
        Some("longer than 128 bytes")
    } else if call_id == "." || call_id == ".." {
        Some("a dot segment")
    } else if call_id.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(AgentDeskError::InvalidCallId { call_id: call_id.chars().take(64).collect(), why }),
        None => Ok(()),
    }
}

/// FNV-1a 64: a stable (across processes and versions) fingerprint of a request body.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Serialises an object with every `null` removed, recursively, array elements included: the
/// receiver stores with `exclude_none`, and a free-form context has no index semantics to keep.
fn object_without_nulls<S: serde::Serializer>(map: &Map<String, Value>, s: S) -> Result<S::Ok, S::Error> {
    fn clean(v: &Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Object(o) => {
                Some(Value::Object(o.iter().filter_map(|(k, v)| Some((k.clone(), clean(v)?))).collect()))
            }
            Value::Array(a) => Some(Value::Array(a.iter().filter_map(clean).collect())),
            other => Some(other.clone()),
        }
    }
    let cleaned: Map<String, Value> = map.iter().filter_map(|(k, v)| Some((k.clone(), clean(v)?))).collect();
    cleaned.serialize(s)
}

/// RFC 3339 UTC with milliseconds (`2026-05-19T10:00:00.123Z`), the results payload's format.
pub fn format_rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

/// Seconds as a JSON number rounded to milliseconds. NaN/∞/negative would serialise as `null`
/// or nonsense, so they are sent as 0.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        let v = if v.is_finite() && *v > 0.0 { (v * 1000.0).round() / 1000.0 } else { 0.0 };
        s.serialize_f64(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        f64::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use cxb_delivery::{HttpTarget, Target};
    use serde_json::json;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 19, 10, 0, 0).single().expect("valid") + chrono::Duration::milliseconds(123)
    }

    fn desk() -> AgentDesk {
        AgentDesk::new("https://api.example/api/v1/", Some("s3cret".into())).expect("valid base")
    }

    pub(crate) fn enqueue_request() -> EnqueueRequest {
        let mut context = Map::new();
        context.insert("campaign_call_id".into(), json!("cc-1"));
        context.insert("dropped".into(), Value::Null);
        context.insert("sip".into(), json!({"X-Lead": "42", "X-Empty": null, "list": [1, null, 2]}));
        EnqueueRequest {
            call_id: "c-1".into(),
            session_id: "s-1".into(),
            room_name: "call-abc".into(),
            bot_id: "demo".into(),
            transport: "livekit_inbound".into(),
            caller: Caller { number: Some("+918000000001".into()), identity: "sip-+918000000001".into() },
            escalation_reason: "customer asked for a human".into(),
            target: EnqueueTarget { id: None, label: "Billing desk".into(), value: "billing".into() },
            transcript: vec![
                TranscriptEntry { role: Role::Bot, text: "Hello!".into(), at_seconds: 0.4 },
                TranscriptEntry { role: Role::Customer, text: "A human please".into(), at_seconds: 3.21049 },
            ],
            variables: BTreeMap::from([("call.name".to_string(), "Asha".to_string())]),
            context,
            enqueued_at: at(),
        }
    }

    fn http(entry: &NewEntry) -> &HttpTarget {
        match &entry.target {
            Target::Http(h) => h,
            Target::Custom { .. } => panic!("expected an http target"),
        }
    }

    fn body(entry: &NewEntry) -> Value {
        serde_json::from_slice(http(entry).body.as_bytes()).expect("json body")
    }

    fn header<'a>(entry: &'a NewEntry, name: &str) -> Vec<&'a str> {
        http(entry).headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    #[test]
    fn enqueue_body_has_the_documented_keys_and_no_nulls() {
        let e = desk().enqueue(&enqueue_request()).expect("entry");
        assert_eq!(e.kind, "agent_desk");
        assert_eq!(e.key, "c-1:enqueue");
        assert_eq!(http(&e).method, "POST");
        assert_eq!(http(&e).url, "https://api.example/api/v1/agent-desk/enqueue");
        assert_eq!(
            body(&e),
            json!({
                "call_id": "c-1", "session_id": "s-1", "room_name": "call-abc", "bot_id": "demo",
                "transport": "livekit_inbound",
                "caller": {"number": "+918000000001", "identity": "sip-+918000000001"},
                "escalation_reason": "customer asked for a human",
                "target": {"label": "Billing desk", "value": "billing"},
                "transcript": [
                    {"role": "bot", "text": "Hello!", "at_seconds": 0.4},
                    {"role": "customer", "text": "A human please", "at_seconds": 3.21}
                ],
                "variables": {"call.name": "Asha"},
                "context": {"campaign_call_id": "cc-1", "sip": {"X-Lead": "42", "list": [1, 2]}},
                "enqueued_at": "2026-05-19T10:00:00.123Z"
            })
        );
    }

    #[test]
    fn optional_fields_are_omitted_and_present_when_set() {
        let mut r = enqueue_request();
        r.caller.number = None;
        r.target.id = Some("t-9".into());
        let b = body(&desk().enqueue(&r).expect("entry"));
        assert_eq!(b["caller"], json!({"identity": "sip-+918000000001"}));
        assert_eq!(b["target"]["id"], "t-9");

        let rec =
            RecordingUpdate { recording_key: "recordings/k.wav".into(), recording_url: None, duration_seconds: 61.5 };
        let b = body(&desk().recording("c-1", &rec).expect("entry"));
        assert_eq!(b, json!({"recording_key": "recordings/k.wav", "duration_seconds": 61.5}));
        let rec = RecordingUpdate { recording_url: Some("https://cdn/k.wav".into()), ..rec };
        assert_eq!(body(&desk().recording("c-1", &rec).expect("entry"))["recording_url"], "https://cdn/k.wav");
    }

    #[test]
    fn both_secret_headers_and_an_idempotency_key_are_sent() {
        let e = desk().enqueue(&enqueue_request()).expect("entry");
        assert_eq!(header(&e, "X-CXB-Core-Secret"), ["s3cret"]);
        assert_eq!(header(&e, "X-CXBCore-Secret"), ["s3cret"]);
        assert_eq!(header(&e, "Idempotency-Key"), ["c-1:enqueue"]);
        assert_eq!(header(&e, "Content-Type"), ["application/json"]);

        for secret in [None, Some(String::new())] {
            let d = AgentDesk::new("http://h/api/v1", secret).expect("valid");
            let e = d.enqueue(&enqueue_request()).expect("entry");
            assert!(header(&e, "X-CXB-Core-Secret").is_empty() && header(&e, "X-CXBCore-Secret").is_empty());
        }
        // A struct literal with an empty secret sends none either.
        let d = AgentDesk { api_base: "http://h/api/v1".into(), secret: Some(String::new()) };
        assert!(header(&d.enqueue(&enqueue_request()).expect("entry"), "X-CXBCore-Secret").is_empty());
    }

    #[test]
    fn update_routes_bodies_and_keys() {
        let d = desk();
        let ev = vec![
            AgentDeskEvent::new("hold_started", at(), Map::new()),
            AgentDeskEvent::new(
                "agent_joined",
                at(),
                json!({"identity": "agent-1", "x": null}).as_object().cloned().unwrap_or_default(),
            ),
        ];
        let e = d.events("c-1", &ev).expect("entry");
        assert_eq!(http(&e).url, "https://api.example/api/v1/agent-desk/calls/c-1/events");
        assert_eq!(
            body(&e),
            json!({"events": [
                {"type": "hold_started", "at": "2026-05-19T10:00:00.123Z", "data": {}},
                {"type": "agent_joined", "at": "2026-05-19T10:00:00.123Z", "data": {"identity": "agent-1"}}
            ]})
        );
        assert!(e.key.starts_with("c-1:events:") && e.key.len() == "c-1:events:".len() + 16, "{}", e.key);
        // Same batch → same key (a rebuilt request is the same request); another batch → another key.
        assert_eq!(d.events("c-1", &ev).expect("entry").key, e.key);
        assert_ne!(d.events("c-1", &ev[..1]).expect("entry").key, e.key);
        assert!(matches!(d.events("c-1", &[]), Err(AgentDeskError::EventCount(0))));
        let many = vec![ev[0].clone(); MAX_EVENTS_PER_REQUEST + 1];
        assert!(matches!(d.events("c-1", &many), Err(AgentDeskError::EventCount(_))));

        let t = TranscriptUpdate { transcript: enqueue_request().transcript, is_final: true };
        let e = d.transcript("c-1", &t).expect("entry");
        assert_eq!(http(&e).url, "https://api.example/api/v1/agent-desk/calls/c-1/transcript");
        assert_eq!(body(&e)["final"], true);
        assert_eq!(body(&e)["transcript"][1]["role"], "customer");
        assert!(e.key.starts_with("c-1:transcript:"));
        let partial = TranscriptUpdate { is_final: false, ..t };
        assert_ne!(d.transcript("c-1", &partial).expect("entry").key, e.key);

        let r = RecordingUpdate { recording_key: "k".into(), recording_url: None, duration_seconds: 1.0 };
        let e = d.recording("c-1", &r).expect("entry");
        assert_eq!(
            (http(&e).url.as_str(), e.key.as_str()),
            ("https://api.example/api/v1/agent-desk/calls/c-1/recording", "c-1:recording")
        );

        let cd = CustomerDisconnected {
            reason: "participant_left".into(),
            at: at(),
            hold_seconds: f64::NAN,
            agent_joined: false,
        };
        let e = d.customer_disconnected("c-1", &cd).expect("entry");
        assert_eq!(http(&e).url, "https://api.example/api/v1/agent-desk/calls/c-1/customer-disconnected");
        assert_eq!(e.key, "c-1:customer-disconnected");
        assert_eq!(
            body(&e),
            json!({"reason": "participant_left", "at": "2026-05-19T10:00:00.123Z", "hold_seconds": 0.0, "agent_joined": false})
        );
    }

    #[test]
    fn call_ids_are_percent_encoded_or_refused() {
        let d = desk();
        let r = RecordingUpdate { recording_key: "k".into(), recording_url: None, duration_seconds: 1.0 };
        let e = d.recording("a/b?c#d e%", &r).expect("entry");
        assert_eq!(http(&e).url, "https://api.example/api/v1/agent-desk/calls/a%2Fb%3Fc%23d%20e%25/recording");
        let e = d.recording("ünï", &r).expect("entry");
        assert_eq!(http(&e).url, "https://api.example/api/v1/agent-desk/calls/%C3%BCn%C3%AF/recording");
        for bad in ["", ".", "..", "a\nb", "a\u{0}"] {
            let err = d.recording(bad, &r).expect_err(bad);
            assert!(matches!(err, AgentDeskError::InvalidCallId { .. }), "{bad:?}: {err}");
        }
        assert!(d.recording(&"x".repeat(MAX_CALL_ID_LEN), &r).is_ok());
        assert!(d.recording(&"x".repeat(MAX_CALL_ID_LEN + 1), &r).is_err());
        let mut q = enqueue_request();
        q.call_id = "..".into();
        assert!(matches!(d.enqueue(&q), Err(AgentDeskError::InvalidCallId { .. })));
    }

    #[test]
    fn api_bases() {
        assert_eq!(api_base_from_config_url("https://x/api/v1/config"), "https://x/api/v1");
        assert_eq!(api_base_from_config_url("https://x/api/v1/config/"), "https://x/api/v1");
        assert_eq!(api_base_from_config_url("https://x/api/v1/config//"), "https://x/api/v1");
        assert_eq!(api_base_from_config_url(" http://x:8080/api/v1/config?a=1#f "), "http://x:8080/api/v1");
        assert_eq!(api_base_from_config_url("https://x/api/v1/"), "https://x/api/v1");
        assert_eq!(api_base_from_config_url("https://x/api/v1/configs"), "https://x/api/v1/configs");

        let d = AgentDesk::from_config_url("https://x/api/v1/config", None).expect("valid");
        assert_eq!(d.api_base, "https://x/api/v1");
        for bad in ["", "x/api/v1", "ftp://x/api", "https://", "https:///path", "http://a b/api"] {
            assert!(matches!(AgentDesk::new(bad, None), Err(AgentDeskError::InvalidApiBase(_))), "{bad:?}");
        }
        let broken = AgentDesk { api_base: "not a url".into(), secret: None };
        assert!(matches!(broken.enqueue(&enqueue_request()), Err(AgentDeskError::InvalidApiBase(_))));
        assert!(!format!("{:?}", desk()).contains("s3cret"));
    }

    #[test]
    fn hold_actions_become_request_bodies() {
        use crate::hold::{HoldAction, HoldOutcome};
        use std::time::Duration;
        let started = at();
        let mut data = Map::new();
        data.insert("identity".into(), json!("agent-1"));
        let ev = HoldAction::Event { kind: "agent_joined", at: Duration::from_millis(41_500), data: data.clone() };
        let e = AgentDeskEvent::from_hold_action(started, &ev).expect("an event");
        assert_eq!(e, AgentDeskEvent::new("agent_joined", started + chrono::Duration::milliseconds(41_500), data));
        assert!(CustomerDisconnected::from_hold_end(started, &ev).is_none());

        let end = HoldAction::End {
            outcome: HoldOutcome::HoldTimeout,
            reason: "no agent within 1200 s".into(),
            at: Duration::from_secs(1230),
            hold: Duration::from_secs(1200),
            agent_joined: false,
        };
        let cd = CustomerDisconnected::from_hold_end(started, &end).expect("a body");
        assert_eq!(
            cd,
            CustomerDisconnected {
                reason: "hold_timeout".into(),
                at: started + chrono::Duration::seconds(1230),
                hold_seconds: 1200.0,
                agent_joined: false
            }
        );
        assert!(AgentDeskEvent::from_hold_action(started, &end).is_none());
        assert!(AgentDeskEvent::from_hold_action(started, &HoldAction::StopAudio).is_none());
        assert_eq!(wall_clock(started, Duration::MAX), started);
    }

    #[test]
    fn bodies_round_trip_through_serde() {
        let r = enqueue_request();
        let text = serde_json::to_string(&r).expect("ser");
        let back: EnqueueRequest = serde_json::from_str(&text).expect("de");
        assert_eq!(back.enqueued_at, r.enqueued_at);
        assert_eq!(back.transcript[1].at_seconds, 3.21);
        assert!(!back.context.contains_key("dropped"));
        let bad = text.replace("2026-05-19T10:00:00.123Z", "yesterday");
        assert!(serde_json::from_str::<EnqueueRequest>(&bad).is_err());
    }
}
