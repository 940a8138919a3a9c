//! A route-aware fake of LiveKit's server API for end-to-end tests.
//!
//! LiveKit's server API is Twirp over HTTP: `POST /twirp/livekit.<Service>/<Method>` with a
//! protobuf body and `Authorization: Bearer <JWT>` (HS256 with the API secret, `iss` = API key).
//! [`FakeLiveKitServer`] serves the five methods the worker calls on 127.0.0.1, keeps per-room
//! participant lists that those methods read and change, answers dial-outs and transfers as the
//! test scripts them, and records every request (decoded, with whether its token was valid and
//! carried the grants LiveKit checks) so a test can assert on what the worker asked for.
//!
//! Checks run in LiveKit's order: token signature/issuer/expiry (LiveKit's auth middleware),
//! then Twirp routing (POST, known path, `application/protobuf`), body decoding, and finally the
//! method's grants (LiveKit's handlers). Grant failures are Twirp `unauthenticated`
//! "permissions denied", as LiveKit's `twirpAuthError` makes them. LiveKit's middleware answers
//! an invalid token with a plain-text 401; the fake sends a Twirp JSON `unauthenticated` 401
//! instead, which a Twirp client classifies identically.
//!
//! # SIP failures
//! A failed dial-out or transfer is a Twirp error whose `meta` carries `sip_status_code` and
//! `sip_status`, with the Twirp code LiveKit derives from the SIP status
//! (`livekit/protocol` `sipCodeToGRPCCode`) and the HTTP status Twirp gives that code:
//!
//! | SIP status (examples)        | Twirp code            | HTTP |
//! |------------------------------|-----------------------|------|
//! | 486 Busy Here, 480, 600      | `resource_exhausted`  | 429  |
//! | 603 Decline, 401, 403, 607   | `permission_denied`   | 403  |
//! | 408 Request Timeout, 504     | `deadline_exceeded`   | 408  |
//! | 404, 410, 481, 604           | `not_found`           | 404  |
//! | 487, 491                     | `aborted`             | 409  |
//! | 500–503, 409, 412, 482, 483  | `failed_precondition` | 412  |
//! | 407, 494 and identity errors | `unauthenticated`     | 401  |
//! | any other (400, 484, 488 …)  | `invalid_argument`    | 400  |
//!
//! ([`sip_twirp_code`] is the full table.) This is LiveKit's real mapping rather than a tidier
//! one (say `unavailable` for every no-answer): a client must classify by `meta.sip_status_code`
//! and never by the Twirp code, and friendlier codes could hide a client that does not.
//!
//! # Deliberate simplifications
//! - Only protobuf bodies are accepted (the Rust SDK and our client never send Twirp JSON);
//!   another content type is Twirp `bad_route`, as a Twirp server without JSON support answers.
//! - `ListParticipants` on a room nobody populated returns an empty list, and `DeleteRoom`
//!   always succeeds (it empties the room); real LiveKit answers `not_found` for unknown rooms.
//! - Dial delays do not look at the request's `ringing_timeout`: the test says what happens.
//! - A successful transfer leaves the room's participant list as it is.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cxb_livekit::token::{Claims, TokenVerifier};
use livekit_protocol as proto;
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::watch;

/// `ParticipantInfo.Kind` STANDARD.
pub const KIND_STANDARD: i32 = proto::participant_info::Kind::Standard as i32;
/// `ParticipantInfo.Kind` SIP.
pub const KIND_SIP: i32 = proto::participant_info::Kind::Sip as i32;
/// `ParticipantInfo.Kind` AGENT.
pub const KIND_AGENT: i32 = proto::participant_info::Kind::Agent as i32;

/// How long an answered dial-out rings unless the test says otherwise.
pub const DEFAULT_ANSWER_DELAY: Duration = Duration::from_millis(200);
/// Largest request body read; every real request is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Most requests kept for [`FakeLiveKitServer::calls`]; the oldest are dropped beyond it so a
/// runaway client cannot grow the test's memory without bound.
pub const MAX_RECORDED_CALLS: usize = 10_000;

const PROTOBUF: &str = "application/protobuf";

/// What `CreateSIPParticipant` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialBehaviour {
    /// The callee answers after `after`: 200 `SIPParticipantInfo`, and a SIP participant joins
    /// the room.
    Answer { after: Duration },
    /// The call fails with SIP `status` after `after` (see the module docs for the Twirp error).
    SipError { status: u16, after: Duration },
    /// LiveKit never answers (until the fake is dropped).
    Hang,
}

impl Default for DialBehaviour {
    fn default() -> Self {
        DialBehaviour::Answer { after: DEFAULT_ANSWER_DELAY }
    }
}

/// What `TransferSIPParticipant` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransferBehaviour {
    /// The REFER succeeds: 200 with an empty message.
    #[default]
    Ok,
    /// The transfer target answers with this final SIP status.
    SipError(u16),
}

/// A participant in a fake room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeParticipant {
    pub identity: String,
    /// `ParticipantInfo.Kind` ([`KIND_STANDARD`], [`KIND_SIP`], [`KIND_AGENT`] …).
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
}

impl FakeParticipant {
    pub fn new(identity: impl Into<String>, kind: i32) -> Self {
        FakeParticipant { identity: identity.into(), kind, attributes: BTreeMap::new() }
    }

    /// A phone caller as LiveKit SIP shows one once the call is up.
    pub fn sip(identity: impl Into<String>, phone_number: &str) -> Self {
        FakeParticipant::new(identity, KIND_SIP)
            .with_attribute("sip.callStatus", "active")
            .with_attribute("sip.phoneNumber", phone_number)
    }

    pub fn standard(identity: impl Into<String>) -> Self {
        FakeParticipant::new(identity, KIND_STANDARD)
    }

    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct SeenCall {
    /// `"livekit.SIP/CreateSIPParticipant"`; for a request outside `/twirp/`, its whole path.
    pub method: String,
    /// The JWT verified with the secret and carries the grants LiveKit requires for this method
    /// (for an unknown route: the JWT verified).
    pub authorized: bool,
    /// The decoded request, fields by proto name (`sip_call_to`, `room_name` …); durations are
    /// proto-JSON strings (`"45s"`), absent optional fields are left out. `null` when the body
    /// was not read or did not decode.
    pub body: Value,
    pub at: Instant,
}

/// A participant as stored: what the test sees plus what `ListParticipants` also reports.
#[derive(Debug, Clone)]
struct Stored {
    sid: String,
    name: String,
    joined_at: SystemTime,
    participant: FakeParticipant,
}

struct Inner {
    rooms: HashMap<String, Vec<Stored>>,
    dial: DialBehaviour,
    transfer: TransferBehaviour,
    calls: VecDeque<SeenCall>,
    next_id: u64,
}

impl Inner {
    fn next_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:012}", self.next_id)
    }

    fn stored(&mut self, participant: FakeParticipant, name: String) -> Stored {
        Stored { sid: self.next_id("PA_"), name, joined_at: SystemTime::now(), participant }
    }

    /// Add to the room, replacing a participant with the same identity (LiveKit lets a rejoin
    /// take over the identity).
    fn join(&mut self, room: &str, stored: Stored) {
        let list = self.rooms.entry(room.to_string()).or_default();
        list.retain(|p| p.participant.identity != stored.participant.identity);
        list.push(stored);
    }
}

struct Shared {
    inner: Mutex<Inner>,
    verifier: TokenVerifier,
    /// Bumped on every recorded call, so waiters need no polling.
    call_count: watch::Sender<u64>,
    /// Set when the fake is dropped: ends delayed and hanging requests and stops the server.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not turn every later request into a second panic.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, method: String, authorized: bool, body: Value, at: Instant) {
        {
            let mut inner = self.lock();
            if inner.calls.len() >= MAX_RECORDED_CALLS {
                inner.calls.pop_front();
            }
            inner.calls.push_back(SeenCall { method, authorized, body, at });
        }
        self.call_count.send_modify(|n| *n += 1);
    }

    /// Sleep for `d`; false when the fake shut down first.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = wait_shutdown(self.shutdown.subscribe()) => false,
        }
    }
}

async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens once the fake is gone too.
    let _ = rx.wait_for(|stopped| *stopped).await;
}

/// The fake LiveKit server API on 127.0.0.1. Dropping it stops the server and ends requests
/// still waiting (with Twirp `unavailable`).
pub struct FakeLiveKitServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl fmt::Debug for FakeLiveKitServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeLiveKitServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl FakeLiveKitServer {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime. Tokens must be signed with
    /// `api_secret` and issued by `api_key`.
    pub async fn start(api_key: &str, api_secret: &str) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rooms: HashMap::new(),
                dial: DialBehaviour::default(),
                transfer: TransferBehaviour::default(),
                calls: VecDeque::new(),
                next_id: 0,
            }),
            verifier: TokenVerifier::with_api_key(api_key, api_secret),
            call_count: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0 for fake LiveKit");
        let addr = listener.local_addr().expect("fake LiveKit local address");
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let stop = shared.shutdown.subscribe();
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(wait_shutdown(stop)).await;
            if let Err(e) = served {
                eprintln!("fake LiveKit server on {addr} stopped: {e}");
            }
        });
        FakeLiveKitServer { shared, addr }
    }

    /// What `LIVEKIT_URL` looks like: `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replace the room's participant list (an empty list empties the room).
    pub fn set_participants(&self, room: &str, participants: Vec<FakeParticipant>) {
        let mut inner = self.shared.lock();
        let stored: Vec<Stored> = participants.into_iter().map(|p| inner.stored(p, String::new())).collect();
        if stored.is_empty() {
            inner.rooms.remove(room);
        } else {
            inner.rooms.insert(room.to_string(), stored);
        }
    }

    /// The room's participants now, in join order.
    pub fn participants(&self, room: &str) -> Vec<FakeParticipant> {
        let inner = self.shared.lock();
        inner.rooms.get(room).map(|l| l.iter().map(|s| s.participant.clone()).collect()).unwrap_or_default()
    }

    /// How later `CreateSIPParticipant` requests end (default: answer after 200 ms). A request
    /// already waiting keeps the behaviour it started with.
    pub fn set_dial(&self, b: DialBehaviour) {
        self.shared.lock().dial = b;
    }

    /// How later `TransferSIPParticipant` requests end (default: success).
    pub fn set_transfer(&self, b: TransferBehaviour) {
        self.shared.lock().transfer = b;
    }

    /// Every request received, oldest first (at most [`MAX_RECORDED_CALLS`]).
    pub fn calls(&self) -> Vec<SeenCall> {
        self.shared.lock().calls.iter().cloned().collect()
    }

    /// The requests whose method ends with `method_suffix` (e.g. `"RemoveParticipant"`).
    pub fn calls_to(&self, method_suffix: &str) -> Vec<SeenCall> {
        self.shared.lock().calls.iter().filter(|c| c.method.ends_with(method_suffix)).cloned().collect()
    }

    /// The first request whose method ends with `method_suffix`, waiting up to `timeout` for one
    /// if none has arrived yet. Requests are recorded on arrival, before any dial delay.
    pub async fn wait_for_call(&self, method_suffix: &str, timeout: Duration) -> Option<SeenCall> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut count = self.shared.call_count.subscribe();
        loop {
            // Mark the current count seen before looking, so a call recorded after the look
            // still wakes `changed` below.
            count.borrow_and_update();
            if let Some(call) = self.calls_to(method_suffix).into_iter().next() {
                return Some(call);
            }
            match tokio::time::timeout_at(deadline, count.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the sender is gone (cannot happen while `self` lives).
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

impl Drop for FakeLiveKitServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// A decoded request of one of the routes the fake serves.
enum Rpc {
    ListParticipants(proto::ListParticipantsRequest),
    RemoveParticipant(proto::RoomParticipantIdentity),
    DeleteRoom(proto::DeleteRoomRequest),
    CreateSipParticipant(Box<proto::CreateSipParticipantRequest>),
    TransferSipParticipant(proto::TransferSipParticipantRequest),
}

#[derive(Clone, Copy)]
enum Route {
    ListParticipants,
    RemoveParticipant,
    DeleteRoom,
    CreateSipParticipant,
    TransferSipParticipant,
}

impl Route {
    fn from_method(method: &str) -> Option<Route> {
        Some(match method {
            "livekit.RoomService/ListParticipants" => Route::ListParticipants,
            "livekit.RoomService/RemoveParticipant" => Route::RemoveParticipant,
            "livekit.RoomService/DeleteRoom" => Route::DeleteRoom,
            "livekit.SIP/CreateSIPParticipant" => Route::CreateSipParticipant,
            "livekit.SIP/TransferSIPParticipant" => Route::TransferSipParticipant,
            _ => return None,
        })
    }

    fn decode(self, body: &[u8]) -> Result<Rpc, prost::DecodeError> {
        Ok(match self {
            Route::ListParticipants => Rpc::ListParticipants(Message::decode(body)?),
            Route::RemoveParticipant => Rpc::RemoveParticipant(Message::decode(body)?),
            Route::DeleteRoom => Rpc::DeleteRoom(Message::decode(body)?),
            Route::CreateSipParticipant => Rpc::CreateSipParticipant(Box::new(Message::decode(body)?)),
            Route::TransferSipParticipant => Rpc::TransferSipParticipant(Message::decode(body)?),
        })
    }
}

impl Rpc {
    /// The grants LiveKit's handler checks for this request (livekit-server `Ensure*Permission`).
    fn permitted(&self, claims: &Claims) -> bool {
        let room_admin = |room: &str| claims.video.room_admin && claims.video.room == room;
        match self {
            Rpc::ListParticipants(r) => room_admin(&r.room),
            Rpc::RemoveParticipant(r) => room_admin(&r.room),
            Rpc::DeleteRoom(_) => claims.video.room_create,
            Rpc::CreateSipParticipant(_) => claims.sip.call,
            Rpc::TransferSipParticipant(r) => claims.sip.call && room_admin(&r.room_name),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Rpc::ListParticipants(r) => json!({ "room": r.room }),
            Rpc::RemoveParticipant(r) => {
                json!({ "room": r.room, "identity": r.identity, "revoke_token_ts": r.revoke_token_ts })
            }
            Rpc::DeleteRoom(r) => json!({ "room": r.room }),
            Rpc::CreateSipParticipant(r) => {
                let mut v = json!({
                    "sip_trunk_id": r.sip_trunk_id,
                    "sip_call_to": r.sip_call_to,
                    "sip_number": r.sip_number,
                    "room_name": r.room_name,
                    "participant_identity": r.participant_identity,
                    "participant_name": r.participant_name,
                    "participant_metadata": r.participant_metadata,
                    "participant_attributes": sorted(&r.participant_attributes),
                    "headers": sorted(&r.headers),
                    "dtmf": r.dtmf,
                    "play_dialtone": r.play_dialtone,
                    "hide_phone_number": r.hide_phone_number,
                    "include_headers": r.include_headers,
                    "krisp_enabled": r.krisp_enabled,
                    "wait_until_answered": r.wait_until_answered,
                });
                if let Some(d) = &r.ringing_timeout {
                    v["ringing_timeout"] = duration_json(d.seconds, d.nanos).into();
                }
                if let Some(d) = &r.max_call_duration {
                    v["max_call_duration"] = duration_json(d.seconds, d.nanos).into();
                }
                if let Some(name) = &r.display_name {
                    v["display_name"] = name.clone().into();
                }
                v
            }
            Rpc::TransferSipParticipant(r) => {
                let mut v = json!({
                    "participant_identity": r.participant_identity,
                    "room_name": r.room_name,
                    "transfer_to": r.transfer_to,
                    "play_dialtone": r.play_dialtone,
                    "headers": sorted(&r.headers),
                });
                if let Some(d) = &r.ringing_timeout {
                    v["ringing_timeout"] = duration_json(d.seconds, d.nanos).into();
                }
                v
            }
        }
    }
}

fn sorted(map: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Proto3 JSON for `google.protobuf.Duration`: `"45s"`, `"1.500s"`.
fn duration_json(seconds: i64, nanos: i32) -> String {
    if nanos == 0 {
        return format!("{seconds}s");
    }
    let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
    let (s, n) = (seconds.unsigned_abs(), nanos.unsigned_abs());
    let frac = if n % 1_000_000 == 0 {
        format!("{:03}", n / 1_000_000)
    } else if n % 1_000 == 0 {
        format!("{:06}", n / 1_000)
    } else {
        format!("{n:09}")
    };
    format!("{sign}{s}.{frac}s")
}

/// A Twirp error response: JSON `{"code","msg","meta"}` with the HTTP status Twirp gives `code`.
fn twirp_error(code: &str, msg: impl Into<String>, meta: &[(&str, String)]) -> Response {
    let mut body = json!({ "code": code, "msg": msg.into() });
    if !meta.is_empty() {
        body["meta"] = meta.iter().map(|(k, v)| (k.to_string(), Value::from(v.clone()))).collect();
    }
    (twirp_http_status(code), [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Twirp's code → HTTP status table.
fn twirp_http_status(code: &str) -> StatusCode {
    match code {
        "canceled" | "deadline_exceeded" => StatusCode::REQUEST_TIMEOUT,
        "invalid_argument" | "malformed" | "out_of_range" => StatusCode::BAD_REQUEST,
        "not_found" | "bad_route" => StatusCode::NOT_FOUND,
        "already_exists" | "aborted" => StatusCode::CONFLICT,
        "permission_denied" => StatusCode::FORBIDDEN,
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
        "failed_precondition" => StatusCode::PRECONDITION_FAILED,
        "unimplemented" => StatusCode::NOT_IMPLEMENTED,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The Twirp code LiveKit sends for a final SIP status (`livekit/protocol` `sipCodeToGRPCCode`).
pub fn sip_twirp_code(status: u16) -> &'static str {
    match status {
        301 | 302 | 404 | 410 | 481 | 604 => "not_found",
        401 | 402 | 403 | 433 | 470 | 603 | 607 | 608 => "permission_denied",
        407 | 428 | 436 | 437 | 438 | 494 => "unauthenticated",
        408 | 504 => "deadline_exceeded",
        409 | 412 | 482 | 483 | 500..=503 => "failed_precondition",
        440 | 480 | 486 | 600 => "resource_exhausted",
        487 | 491 => "aborted",
        // LiveKit's table maps the remaining 3xx-6xx statuses to invalid_argument, and its
        // fallback for unlisted ones ends up there too.
        _ => "invalid_argument",
    }
}

/// The reason phrase of common final SIP statuses.
pub fn sip_reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        410 => "Gone",
        480 => "Temporarily Unavailable",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        _ => "",
    }
}

/// LiveKit's SIP failure: `"sip status 486: Busy Here"` with the status in `meta`.
fn sip_error(status: u16) -> Response {
    let reason = match sip_reason(status) {
        "" => format!("SIP status {status}"),
        r => r.to_string(),
    };
    twirp_error(
        sip_twirp_code(status),
        format!("sip status {status}: {reason}"),
        &[("sip_status_code", status.to_string()), ("sip_status", reason)],
    )
}

fn protobuf(message: &impl Message) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, PROTOBUF)], message.encode_to_vec()).into_response()
}

fn shutting_down() -> Response {
    twirp_error("unavailable", "fake LiveKit is shutting down", &[])
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn is_protobuf(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(PROTOBUF))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let at = Instant::now();
    let path = uri.path();
    let name = path.strip_prefix("/twirp/").unwrap_or(path).to_string();

    // LiveKit's auth middleware: a token that is present must verify. A missing token passes
    // here and fails the grant check below, as in LiveKit.
    let claims = match bearer(&headers).map(|t| shared.verifier.verify(t)) {
        None => None,
        Some(Ok(claims)) => Some(claims),
        Some(Err(e)) => {
            shared.record(name, false, Value::Null, at);
            return twirp_error("unauthenticated", format!("invalid token: {e}"), &[]);
        }
    };
    let token_ok = claims.is_some();

    // Twirp routing.
    let Some(route) = path.strip_prefix("/twirp/").and_then(Route::from_method) else {
        shared.record(name, token_ok, Value::Null, at);
        return twirp_error("bad_route", format!("no handler for path {path:?}"), &[]);
    };
    if method != Method::POST {
        shared.record(name, token_ok, Value::Null, at);
        return twirp_error("bad_route", format!("unsupported method {method:?} (only POST is allowed)"), &[]);
    }
    if !is_protobuf(headers.get(header::CONTENT_TYPE)) {
        shared.record(name, token_ok, Value::Null, at);
        return twirp_error("bad_route", format!("unexpected Content-Type for {path:?}"), &[]);
    }
    let bytes = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            shared.record(name, token_ok, Value::Null, at);
            return twirp_error("malformed", format!("failed to read request body: {e}"), &[]);
        }
    };
    let rpc = match route.decode(&bytes) {
        Ok(rpc) => rpc,
        Err(e) => {
            shared.record(name, token_ok, Value::Null, at);
            return twirp_error("malformed", format!("the request could not be decoded: {e}"), &[]);
        }
    };

    // LiveKit's handlers check the method's grants.
    let authorized = claims.as_ref().is_some_and(|c| rpc.permitted(c));
    shared.record(name, authorized, rpc.to_json(), at);
    if !authorized {
        return twirp_error("unauthenticated", "permissions denied", &[]);
    }

    match rpc {
        Rpc::ListParticipants(r) => list_participants(&shared, &r),
        Rpc::RemoveParticipant(r) => remove_participant(&shared, &r),
        Rpc::DeleteRoom(r) => {
            shared.lock().rooms.remove(&r.room);
            protobuf(&proto::DeleteRoomResponse {})
        }
        Rpc::CreateSipParticipant(r) => create_sip_participant(shared, *r).await,
        Rpc::TransferSipParticipant(r) => transfer_sip_participant(&shared, &r),
    }
}

fn list_participants(shared: &Shared, r: &proto::ListParticipantsRequest) -> Response {
    let inner = shared.lock();
    let participants =
        inner.rooms.get(&r.room).map(|list| list.iter().map(participant_info).collect()).unwrap_or_default();
    drop(inner);
    protobuf(&proto::ListParticipantsResponse { participants })
}

fn participant_info(s: &Stored) -> proto::ParticipantInfo {
    let joined_ms = s.joined_at.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let joined_ms = i64::try_from(joined_ms).unwrap_or(i64::MAX);
    proto::ParticipantInfo {
        sid: s.sid.clone(),
        identity: s.participant.identity.clone(),
        name: s.name.clone(),
        state: proto::participant_info::State::Active as i32,
        kind: s.participant.kind,
        attributes: s.participant.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        joined_at: joined_ms / 1000,
        joined_at_ms: joined_ms,
        ..Default::default()
    }
}

fn remove_participant(shared: &Shared, r: &proto::RoomParticipantIdentity) -> Response {
    let mut inner = shared.lock();
    let Some(list) = inner.rooms.get_mut(&r.room) else {
        return twirp_error("not_found", "requested room does not exist", &[]);
    };
    let before = list.len();
    list.retain(|p| p.participant.identity != r.identity);
    if list.len() == before {
        return twirp_error("not_found", "participant not found", &[]);
    }
    if list.is_empty() {
        inner.rooms.remove(&r.room);
    }
    drop(inner);
    protobuf(&proto::RemoveParticipantResponse {})
}

async fn create_sip_participant(shared: Arc<Shared>, r: proto::CreateSipParticipantRequest) -> Response {
    // LiveKit's own validation of the fields a dial-out cannot do without.
    if r.sip_trunk_id.is_empty() && r.trunk.is_none() {
        return twirp_error("invalid_argument", "missing sip trunk id", &[]);
    }
    if r.sip_call_to.is_empty() {
        return twirp_error("invalid_argument", "missing sip callee number", &[]);
    }
    if r.room_name.is_empty() {
        return twirp_error("invalid_argument", "missing room name", &[]);
    }
    let (behaviour, stored, info) = {
        let mut inner = shared.lock();
        // LiveKit's default identity for a SIP participant is derived from the number.
        let identity = if r.participant_identity.is_empty() {
            format!("sip_{}", r.sip_call_to)
        } else {
            r.participant_identity.clone()
        };
        let sip_call_id = inner.next_id("SCL_");
        let mut attributes = BTreeMap::from([
            ("sip.callID".to_string(), sip_call_id.clone()),
            ("sip.callStatus".to_string(), "active".to_string()),
            ("sip.trunkID".to_string(), r.sip_trunk_id.clone()),
        ]);
        if !r.hide_phone_number {
            attributes.insert("sip.phoneNumber".into(), r.sip_call_to.clone());
            if !r.sip_number.is_empty() {
                attributes.insert("sip.trunkPhoneNumber".into(), r.sip_number.clone());
            }
        }
        attributes.extend(r.participant_attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
        let stored = inner.stored(FakeParticipant { identity, kind: KIND_SIP, attributes }, r.participant_name.clone());
        let info = proto::SipParticipantInfo {
            participant_id: stored.sid.clone(),
            participant_identity: stored.participant.identity.clone(),
            room_name: r.room_name.clone(),
            sip_call_id,
        };
        (inner.dial, stored, info)
    };

    if !r.wait_until_answered {
        // LiveKit answers at once and the call proceeds in the background; only an answered
        // call ever shows up in the room.
        if let DialBehaviour::Answer { after } = behaviour {
            let shared = shared.clone();
            let room = r.room_name.clone();
            tokio::spawn(async move {
                if shared.sleep(after).await {
                    shared.lock().join(&room, stored);
                }
            });
        }
        return protobuf(&info);
    }

    match behaviour {
        DialBehaviour::Answer { after } => {
            if !shared.sleep(after).await {
                return shutting_down();
            }
            shared.lock().join(&r.room_name, stored);
            protobuf(&info)
        }
        DialBehaviour::SipError { status, after } => {
            if !shared.sleep(after).await {
                return shutting_down();
            }
            sip_error(status)
        }
        DialBehaviour::Hang => {
            wait_shutdown(shared.shutdown.subscribe()).await;
            shutting_down()
        }
    }
}

fn transfer_sip_participant(shared: &Shared, r: &proto::TransferSipParticipantRequest) -> Response {
    if r.room_name.is_empty() || r.participant_identity.is_empty() {
        return twirp_error("invalid_argument", "missing room name or participant identity", &[]);
    }
    if r.transfer_to.is_empty() {
        return twirp_error("invalid_argument", "missing transfer destination", &[]);
    }
    let behaviour = shared.lock().transfer;
    match behaviour {
        TransferBehaviour::Ok => protobuf(&proto::TransferSipParticipantResponse::default()),
        TransferBehaviour::SipError(status) => sip_error(status),
    }
}
