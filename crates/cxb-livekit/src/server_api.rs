//! The LiveKit server API (Twirp over HTTP, wire-protocols §6c/§6d) on the worker's own reqwest.
//!
//! Requests are protobuf (`application/protobuf`), the encoding LiveKit's Rust SDK uses, built
//! from `livekit-protocol`'s generated messages so field numbers cannot drift from the server.
//! Twirp errors are always JSON; a SIP failure carries `meta.sip_status_code`, which is what
//! [`ServerApiError::Sip`] and [`crate::sip::SipOutcome`] are built from.
//!
//! Every call mints its own short-lived token with only the grants that method checks, is bounded
//! by a timeout (for calls that block on SIP, longer than the SIP ringing timeout), and reads at
//! most a fixed number of response bytes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use prost::Message;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::room::{Participant, ParticipantKind};
use crate::sip::SipOutcome;
use crate::token::{grants, SIPGrants, TokenError, TokenIssuer, VideoGrants};

/// How long LiveKit lets the callee ring on a dial-out (the project's value, contract §6.4).
pub const DEFAULT_RINGING_TIMEOUT: Duration = Duration::from_secs(45);
/// Bound on a server-API call that does not wait on a phone.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to a ringing timeout for calls that block until SIP answers: LiveKit needs time to
/// route the INVITE before ringing starts and to report back after it ends, and our timeout
/// must never fire before LiveKit's own or a slow answer would be reported as a failure.
pub const DEFAULT_SIP_WAIT_MARGIN: Duration = Duration::from_secs(15);
/// Connect timeout of the client [`ServerApi::new`] builds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest successful response read (a `ListParticipants` of a big room stays far below).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Largest error body read; Twirp errors are a few hundred bytes.
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// How much of an unparseable body is quoted in an error.
const SNIPPET_CHARS: usize = 200;

const PROTOBUF: &str = "application/protobuf";

/// Where and how to reach the LiveKit server API (`LIVEKIT_URL`, `LIVEKIT_API_KEY`,
/// `LIVEKIT_API_SECRET`). `Debug` never shows the secret.
#[derive(Clone)]
pub struct ServerApiConfig {
    /// `wss://`, `ws://`, `https://` or `http://` host of the LiveKit server; a path prefix is kept.
    pub url: String,
    pub api_key: String,
    pub api_secret: String,
    /// Bound on calls that do not wait on a phone.
    pub request_timeout: Duration,
    /// Added to the ringing timeout of calls that wait on a phone (dial-out, transfer).
    pub sip_wait_margin: Duration,
}

impl ServerApiConfig {
    pub fn new(url: impl Into<String>, api_key: impl Into<String>, api_secret: impl Into<String>) -> Self {
        ServerApiConfig {
            url: url.into(),
            api_key: api_key.into(),
            api_secret: api_secret.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            sip_wait_margin: DEFAULT_SIP_WAIT_MARGIN,
        }
    }
}

impl fmt::Debug for ServerApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerApiConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key)
            .field("request_timeout", &self.request_timeout)
            .field("sip_wait_margin", &self.sip_wait_margin)
            .finish_non_exhaustive()
    }
}

/// `CreateSIPParticipant`: dial `sip_call_to` through an outbound trunk into `room_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSipParticipant {
    pub sip_trunk_id: String,
    /// The number to dial, already normalised ([`crate::sip::normalize_dial_number`]).
    pub sip_call_to: String,
    /// Caller ID; empty lets the trunk choose.
    pub sip_number: String,
    pub room_name: String,
    pub participant_identity: String,
    pub participant_name: String,
    pub participant_attributes: BTreeMap<String, String>,
    /// Extra SIP headers on the INVITE (`X-…`).
    pub headers: BTreeMap<String, String>,
    pub play_dialtone: bool,
    pub ringing_timeout: Duration,
    pub max_call_duration: Option<Duration>,
    /// Block until the callee answers or the call fails (the project always does).
    pub wait_until_answered: bool,
    pub krisp_enabled: bool,
    /// `From` display name: `None` keeps LiveKit's default (the caller's number).
    pub display_name: Option<String>,
}

impl CreateSipParticipant {
    /// A dial-out with the project's defaults: 45 s ringing, wait until answered.
    pub fn new(
        sip_trunk_id: impl Into<String>,
        sip_call_to: impl Into<String>,
        room_name: impl Into<String>,
        participant_identity: impl Into<String>,
    ) -> Self {
        CreateSipParticipant {
            sip_trunk_id: sip_trunk_id.into(),
            sip_call_to: sip_call_to.into(),
            sip_number: String::new(),
            room_name: room_name.into(),
            participant_identity: participant_identity.into(),
            participant_name: String::new(),
            participant_attributes: BTreeMap::new(),
            headers: BTreeMap::new(),
            play_dialtone: false,
            ringing_timeout: DEFAULT_RINGING_TIMEOUT,
            max_call_duration: None,
            wait_until_answered: true,
            krisp_enabled: false,
            display_name: None,
        }
    }
}

/// `SIPParticipantInfo`: the SIP participant LiveKit created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipParticipantInfo {
    pub participant_id: String,
    pub participant_identity: String,
    pub room_name: String,
    pub sip_call_id: String,
}

/// `TransferSIPParticipant`: a SIP REFER of `participant_identity` to `transfer_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSipParticipant {
    pub room_name: String,
    pub participant_identity: String,
    /// `sip:…` or `tel:…` ([`crate::sip::transfer_destination`]).
    pub transfer_to: String,
    pub play_dialtone: bool,
    /// Headers added to the REFER.
    pub headers: BTreeMap<String, String>,
    /// How long the transfer destination may ring. `None` leaves LiveKit's default, and the
    /// client then waits [`DEFAULT_RINGING_TIMEOUT`] plus the margin.
    pub ringing_timeout: Option<Duration>,
}

impl TransferSipParticipant {
    pub fn new(
        room_name: impl Into<String>,
        participant_identity: impl Into<String>,
        transfer_to: impl Into<String>,
    ) -> Self {
        TransferSipParticipant {
            room_name: room_name.into(),
            participant_identity: participant_identity.into(),
            transfer_to: transfer_to.into(),
            play_dialtone: false,
            headers: BTreeMap::new(),
            ringing_timeout: None,
        }
    }
}

/// A participant as `ListParticipants` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantDetails {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub kind: ParticipantKind,
    pub metadata: String,
    pub attributes: BTreeMap<String, String>,
}

impl ParticipantDetails {
    /// The room seam's view of this participant.
    pub fn to_participant(&self) -> Participant {
        Participant { identity: self.identity.clone(), kind: self.kind, attributes: self.attributes.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerApiError {
    #[error("LiveKit server API configuration: {0}")]
    Config(String),
    #[error("invalid LiveKit request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The SIP side failed with a final status (Twirp error with `meta.sip_status_code`, or a
    /// failed transfer that reported one).
    #[error("SIP status {status_code} {status} (twirp code {twirp_code:?})")]
    Sip { status_code: u16, status: String, twirp_code: String },
    /// A transfer LiveKit reported as failed without a SIP status.
    #[error("SIP transfer failed: {reason}")]
    TransferFailed { reason: String },
    /// Any other Twirp error (or a non-Twirp error response, given the Twirp code its HTTP status
    /// maps to, as Twirp clients do for intermediaries).
    #[error("LiveKit returned HTTP {http_status} {code}: {msg}")]
    Twirp { http_status: u16, code: String, msg: String },
    #[error("LiveKit did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not connect to LiveKit: {0}")]
    Connect(String),
    #[error("HTTP transport error talking to LiveKit: {0}")]
    Transport(String),
    #[error("unusable response from LiveKit: {0}")]
    BadResponse(String),
}

impl ServerApiError {
    /// The final SIP status, when the failure came from the phone network.
    pub fn sip_status_code(&self) -> Option<u16> {
        match self {
            ServerApiError::Sip { status_code, .. } => Some(*status_code),
            _ => None,
        }
    }

    /// How a failed dial-out ends: by SIP status, or `error` for anything that is not a SIP answer.
    pub fn sip_outcome(&self) -> SipOutcome {
        self.sip_status_code().map(SipOutcome::from_status).unwrap_or(SipOutcome::Error)
    }

    /// Twirp `not_found`: e.g. removing a participant that already left.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ServerApiError::Twirp { code, .. } if code == "not_found")
    }
}

/// A LiveKit server API client. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct ServerApi {
    http: reqwest::Client,
    base: String,
    tokens: TokenIssuer,
    request_timeout: Duration,
    sip_wait_margin: Duration,
}

impl fmt::Debug for ServerApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerApi").field("base", &self.base).field("tokens", &self.tokens).finish_non_exhaustive()
    }
}

impl ServerApi {
    /// A client with its own reqwest connection pool (rustls, 5 s connect timeout).
    pub fn new(config: ServerApiConfig) -> Result<Self, ServerApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ServerApiError::Config(format!("HTTP client: {}", error_chain(&e))))?;
        Self::with_client(config, http)
    }

    /// A client on an existing reqwest client, so the worker keeps one HTTP stack and pool.
    pub fn with_client(config: ServerApiConfig, http: reqwest::Client) -> Result<Self, ServerApiError> {
        let base = http_base(&config.url)?;
        if config.request_timeout.is_zero() {
            return Err(ServerApiError::Config("request_timeout must be positive".into()));
        }
        let tokens = TokenIssuer::new(config.api_key, config.api_secret)?;
        Ok(ServerApi {
            http,
            base,
            tokens,
            request_timeout: config.request_timeout,
            sip_wait_margin: config.sip_wait_margin,
        })
    }

    /// The `http(s)://` base the Twirp paths are appended to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The issuer for room-join tokens of the same project.
    pub fn tokens(&self) -> &TokenIssuer {
        &self.tokens
    }

    /// Dial out. With `wait_until_answered` this returns when the callee answers; a SIP failure
    /// (busy, declined, no answer…) is [`ServerApiError::Sip`]. The HTTP timeout is the ringing
    /// timeout plus the margin, so LiveKit's own verdict always arrives first.
    pub async fn create_sip_participant(
        &self,
        request: &CreateSipParticipant,
    ) -> Result<SipParticipantInfo, ServerApiError> {
        non_empty("sip_trunk_id", &request.sip_trunk_id)?;
        non_empty("sip_call_to", &request.sip_call_to)?;
        non_empty("room_name", &request.room_name)?;
        if request.ringing_timeout.is_zero() {
            return Err(ServerApiError::InvalidRequest("ringing_timeout must be positive".into()));
        }
        let body = proto::CreateSipParticipantRequest {
            sip_trunk_id: request.sip_trunk_id.clone(),
            sip_call_to: request.sip_call_to.clone(),
            sip_number: request.sip_number.clone(),
            room_name: request.room_name.clone(),
            participant_identity: request.participant_identity.clone(),
            participant_name: request.participant_name.clone(),
            participant_attributes: to_hash_map(&request.participant_attributes),
            headers: to_hash_map(&request.headers),
            play_dialtone: request.play_dialtone,
            ringing_timeout: Some(proto_duration(request.ringing_timeout)),
            max_call_duration: request.max_call_duration.map(proto_duration),
            wait_until_answered: request.wait_until_answered,
            krisp_enabled: request.krisp_enabled,
            display_name: request.display_name.clone(),
            ..Default::default()
        };
        let timeout = self.sip_wait(request.ringing_timeout);
        let info: proto::SipParticipantInfo =
            self.call("SIP", "CreateSIPParticipant", grants::sip_call(), &body, timeout).await?;
        Ok(SipParticipantInfo {
            participant_id: info.participant_id,
            participant_identity: info.participant_identity,
            room_name: info.room_name,
            sip_call_id: info.sip_call_id,
        })
    }

    /// SIP REFER. Returns when the transfer succeeded; failures come back as
    /// [`ServerApiError::Sip`] (with the destination's status) or [`ServerApiError::TransferFailed`].
    pub async fn transfer_sip_participant(&self, request: &TransferSipParticipant) -> Result<(), ServerApiError> {
        non_empty("room_name", &request.room_name)?;
        non_empty("participant_identity", &request.participant_identity)?;
        non_empty("transfer_to", &request.transfer_to)?;
        let body = proto::TransferSipParticipantRequest {
            participant_identity: request.participant_identity.clone(),
            room_name: request.room_name.clone(),
            transfer_to: request.transfer_to.clone(),
            play_dialtone: request.play_dialtone,
            headers: to_hash_map(&request.headers),
            ringing_timeout: request.ringing_timeout.map(proto_duration),
        };
        let timeout = self.sip_wait(request.ringing_timeout.unwrap_or(DEFAULT_RINGING_TIMEOUT));
        let grants = grants::sip_transfer(&request.room_name);
        let response: proto::TransferSipParticipantResponse =
            self.call("SIP", "TransferSIPParticipant", grants, &body, timeout).await?;
        transfer_result(&response)
    }

    /// Remove a participant (hangs up a SIP participant). A participant that is already gone is
    /// a `not_found` Twirp error; see [`ServerApiError::is_not_found`].
    pub async fn remove_participant(&self, room: &str, identity: &str) -> Result<(), ServerApiError> {
        non_empty("room", room)?;
        non_empty("identity", identity)?;
        let body = proto::RoomParticipantIdentity {
            room: room.to_string(),
            identity: identity.to_string(),
            ..Default::default()
        };
        let _: proto::RemoveParticipantResponse = self
            .call("RoomService", "RemoveParticipant", grants::room_admin(room), &body, self.request_timeout)
            .await?;
        Ok(())
    }

    pub async fn list_participants(&self, room: &str) -> Result<Vec<ParticipantDetails>, ServerApiError> {
        non_empty("room", room)?;
        let body = proto::ListParticipantsRequest { room: room.to_string() };
        let response: proto::ListParticipantsResponse =
            self.call("RoomService", "ListParticipants", grants::room_admin(room), &body, self.request_timeout).await?;
        Ok(response
            .participants
            .into_iter()
            .map(|p| ParticipantDetails {
                sid: p.sid,
                identity: p.identity,
                name: p.name,
                kind: ParticipantKind::from_proto(p.kind),
                metadata: p.metadata,
                attributes: p.attributes.into_iter().collect(),
            })
            .collect())
    }

    /// Delete a room, disconnecting everyone in it.
    pub async fn delete_room(&self, room: &str) -> Result<(), ServerApiError> {
        non_empty("room", room)?;
        let body = proto::DeleteRoomRequest { room: room.to_string() };
        let _: proto::DeleteRoomResponse =
            self.call("RoomService", "DeleteRoom", grants::room_create(), &body, self.request_timeout).await?;
        Ok(())
    }

    fn sip_wait(&self, ringing: Duration) -> Duration {
        (ringing + self.sip_wait_margin).max(self.request_timeout)
    }

    /// One Twirp call: POST `/twirp/livekit.<service>/<method>` with a fresh bearer token.
    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        (video, sip): (VideoGrants, SIPGrants),
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ServerApiError> {
        let token = self.tokens.server_token(video, sip)?;
        let url = format!("{}/twirp/livekit.{service}/{method}", self.base);
        let started = Instant::now();
        let request = self
            .http
            .post(&url)
            .bearer_auth(token)
            .header(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF))
            .timeout(timeout)
            .body(body.encode_to_vec());
        // reqwest's timeout already covers connect, headers and body; the outer bound also covers
        // our own body loop, so nothing here can outlive `timeout`.
        let result = tokio::time::timeout(timeout, async {
            let response = request.send().await.map_err(|e| transport_error(&e, timeout))?;
            let status = response.status();
            if status == StatusCode::OK {
                check_content_type(&response)?;
                let bytes = read_bounded(response, MAX_RESPONSE_BYTES, timeout).await?.ok_or_else(|| {
                    ServerApiError::BadResponse(format!("response larger than {MAX_RESPONSE_BYTES} bytes"))
                })?;
                Resp::decode(bytes.as_slice())
                    .map_err(|e| ServerApiError::BadResponse(format!("undecodable {method} response: {e}")))
            } else {
                let bytes = match read_bounded(response, MAX_ERROR_BYTES, timeout).await {
                    Ok(Some(b)) => b,
                    // Too large to be a Twirp error: classify it by status alone.
                    Ok(None) => Vec::new(),
                    Err(e) => return Err(e),
                };
                Err(twirp_error(status, &bytes))
            }
        })
        .await
        .unwrap_or_else(|_| Err(ServerApiError::Timeout(timeout)));
        match &result {
            Ok(_) => {
                tracing::debug!(service, method, elapsed_ms = started.elapsed().as_millis() as u64, "livekit api ok")
            }
            Err(e) => {
                tracing::debug!(service, method, elapsed_ms = started.elapsed().as_millis() as u64, error = %e, "livekit api failed")
            }
        }
        result
    }
}

fn non_empty(field: &str, value: &str) -> Result<(), ServerApiError> {
    if value.trim().is_empty() {
        Err(ServerApiError::InvalidRequest(format!("{field} is empty")))
    } else {
        Ok(())
    }
}

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn proto_duration(d: Duration) -> pbjson_types::Duration {
    // Saturate absurd values rather than wrap; LiveKit caps them anyway.
    pbjson_types::Duration { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

/// `wss://host` → `https://host` (the API lives on the same host as signalling).
fn http_base(url: &str) -> Result<String, ServerApiError> {
    let trimmed = url.trim().trim_end_matches('/');
    let converted = if let Some(rest) = trimmed.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = trimmed.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if trimmed.starts_with("https://") || trimmed.starts_with("http://") {
        trimmed.to_string()
    } else {
        return Err(ServerApiError::Config(format!(
            "LiveKit URL {url:?} must start with wss://, ws://, https:// or http://"
        )));
    };
    let parsed = reqwest::Url::parse(&converted)
        .map_err(|e| ServerApiError::Config(format!("LiveKit URL {url:?} is not a valid URL: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ServerApiError::Config(format!("LiveKit URL {url:?} needs a host and no query or fragment")));
    }
    Ok(converted)
}

fn check_content_type(response: &reqwest::Response) -> Result<(), ServerApiError> {
    match response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        // Absent is tolerated (some proxies strip it); anything else means this is not the
        // protobuf reply we asked for (a login page, a JSON-only gateway…).
        None => Ok(()),
        Some(ct) if ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case(PROTOBUF)) => Ok(()),
        Some(ct) => Err(ServerApiError::BadResponse(format!("expected {PROTOBUF}, got content type {ct:?}"))),
    }
}

/// The body, or `None` when it exceeds `limit` bytes (reading stops there).
async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, ServerApiError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(&e, timeout))? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn transport_error(e: &reqwest::Error, timeout: Duration) -> ServerApiError {
    if e.is_timeout() {
        ServerApiError::Timeout(timeout)
    } else if e.is_connect() {
        ServerApiError::Connect(error_chain(e))
    } else if e.is_builder() {
        ServerApiError::Config(error_chain(e))
    } else {
        ServerApiError::Transport(error_chain(e))
    }
}

/// reqwest's `Display` omits the cause ("error sending request"); the chain says what failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[derive(Deserialize)]
struct TwirpErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    meta: HashMap<String, serde_json::Value>,
}

/// Twirp meta values are strings; a number is accepted too.
fn meta_str(meta: &HashMap<String, serde_json::Value>, key: &str) -> Option<String> {
    match meta.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn twirp_error(status: StatusCode, body: &[u8]) -> ServerApiError {
    match serde_json::from_slice::<TwirpErrorBody>(body) {
        Ok(err) if !err.code.is_empty() => {
            let sip_code = meta_str(&err.meta, "sip_status_code").and_then(|c| c.trim().parse::<u16>().ok());
            match sip_code {
                Some(status_code) => ServerApiError::Sip {
                    status_code,
                    status: meta_str(&err.meta, "sip_status").unwrap_or(err.msg),
                    twirp_code: err.code,
                },
                None => ServerApiError::Twirp { http_status: status.as_u16(), code: err.code, msg: err.msg },
            }
        }
        // Not from Twirp (a proxy, a load balancer): Twirp's "error from intermediary" rule.
        _ => ServerApiError::Twirp {
            http_status: status.as_u16(),
            code: intermediary_code(status).to_string(),
            msg: format!("non-Twirp error response from an intermediary: {}", snippet(body)),
        },
    }
}

/// Twirp's HTTP-status → code mapping for responses that are not Twirp errors.
fn intermediary_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        300..=399 => "internal",
        400 => "internal",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "bad_route",
        429 | 502 | 503 | 504 => "unavailable",
        _ => "unknown",
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(SNIPPET_CHARS).filter(|c| !c.is_control()).collect();
    if text.chars().count() > SNIPPET_CHARS {
        out.push('…');
    }
    if out.trim().is_empty() {
        out = "(empty body)".into();
    }
    out
}

/// A transfer response can itself say the transfer failed (protocol ≥ 1.x reports
/// `STR_CALL_ENDED` that way instead of as an error).
fn transfer_result(response: &proto::TransferSipParticipantResponse) -> Result<(), ServerApiError> {
    if response.status != proto::SipTransferStatus::StsTransferFailed as i32 {
        return Ok(());
    }
    if let Some(sip) = response.sip_status.as_ref().filter(|s| s.code >= 300) {
        if let Ok(status_code) = u16::try_from(sip.code) {
            return Err(ServerApiError::Sip { status_code, status: sip.status.clone(), twirp_code: String::new() });
        }
    }
    let reason = proto::SipTransferReason::try_from(response.reason)
        .map(|r| r.as_str_name().to_string())
        .unwrap_or_else(|_| format!("reason {}", response.reason));
    Err(ServerApiError::TransferFailed { reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(http_base("wss://lk.example.com").unwrap(), "https://lk.example.com");
        assert_eq!(http_base("ws://127.0.0.1:7880/").unwrap(), "http://127.0.0.1:7880");
        assert_eq!(http_base(" https://lk.example.com/prefix/ ").unwrap(), "https://lk.example.com/prefix");
        assert!(matches!(http_base("lk.example.com"), Err(ServerApiError::Config(_))));
        assert!(matches!(http_base("ftp://lk"), Err(ServerApiError::Config(_))));
        assert!(matches!(http_base("https://"), Err(ServerApiError::Config(_))));
        assert!(matches!(http_base("https://h/?a=b"), Err(ServerApiError::Config(_))));
    }

    #[test]
    fn twirp_error_bodies() {
        let e = twirp_error(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"code":"resource_exhausted","msg":"sip status 486: Busy Here","meta":{"sip_status_code":"486","sip_status":"Busy Here"}}"#,
        );
        match &e {
            ServerApiError::Sip { status_code, status, twirp_code } => {
                assert_eq!(
                    (*status_code, status.as_str(), twirp_code.as_str()),
                    (486, "Busy Here", "resource_exhausted")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.sip_outcome(), SipOutcome::Rejected);

        // A numeric meta value and no sip_status: the message stands in.
        let e = twirp_error(
            StatusCode::GATEWAY_TIMEOUT,
            br#"{"code":"deadline_exceeded","msg":"sip status 408","meta":{"sip_status_code":408}}"#,
        );
        assert!(
            matches!(&e, ServerApiError::Sip { status_code: 408, status, .. } if status == "sip status 408"),
            "{e:?}"
        );

        let e = twirp_error(StatusCode::NOT_FOUND, br#"{"code":"not_found","msg":"participant not found"}"#);
        assert!(e.is_not_found());
        assert_eq!(e.sip_outcome(), SipOutcome::Error);

        // An unparseable sip_status_code is not a SIP answer.
        let e = twirp_error(
            StatusCode::BAD_REQUEST,
            br#"{"code":"invalid_argument","msg":"m","meta":{"sip_status_code":"abc"}}"#,
        );
        assert!(matches!(e, ServerApiError::Twirp { http_status: 400, ref code, .. } if code == "invalid_argument"));

        let e = twirp_error(StatusCode::BAD_GATEWAY, b"<html>\r\nbad gateway</html>");
        match e {
            ServerApiError::Twirp { http_status, code, msg } => {
                assert_eq!((http_status, code.as_str()), (502, "unavailable"));
                assert!(msg.contains("bad gateway") && !msg.contains('\r'), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        let long = vec![b'x'; 10_000];
        let ServerApiError::Twirp { msg, code, .. } = twirp_error(StatusCode::INTERNAL_SERVER_ERROR, &long) else {
            panic!("twirp")
        };
        assert_eq!(code, "unknown");
        assert!(msg.len() < 400, "{}", msg.len());
    }

    #[test]
    fn transfer_response_failures() {
        let ok = proto::TransferSipParticipantResponse::default();
        assert!(transfer_result(&ok).is_ok());
        let failed = proto::TransferSipParticipantResponse {
            status: proto::SipTransferStatus::StsTransferFailed as i32,
            reason: proto::SipTransferReason::StrCallEnded as i32,
            ..Default::default()
        };
        assert!(
            matches!(transfer_result(&failed), Err(ServerApiError::TransferFailed { reason }) if reason == "STR_CALL_ENDED")
        );
        let busy = proto::TransferSipParticipantResponse {
            status: proto::SipTransferStatus::StsTransferFailed as i32,
            sip_status: Some(proto::SipStatus { code: 486, status: "Busy Here".into() }),
            ..Default::default()
        };
        assert_eq!(transfer_result(&busy).unwrap_err().sip_status_code(), Some(486));
    }

    #[test]
    fn config_debug_hides_secret() {
        let c = ServerApiConfig::new("wss://h", "key", "hunter2-secret");
        assert!(!format!("{c:?}").contains("hunter2"));
        let api = ServerApi::new(c).unwrap();
        assert!(!format!("{api:?}").contains("hunter2"));
        assert_eq!(api.base_url(), "https://h");
    }

    #[test]
    fn sip_wait_exceeds_ringing() {
        let api = ServerApi::new(ServerApiConfig::new("https://h", "k", "s")).unwrap();
        assert_eq!(api.sip_wait(DEFAULT_RINGING_TIMEOUT), Duration::from_secs(60));
        // Never below the plain request timeout.
        assert_eq!(api.sip_wait(Duration::from_millis(1)), Duration::from_secs(15) + Duration::from_millis(1));
    }
}
