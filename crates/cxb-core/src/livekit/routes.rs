//! The four LiveKit call-start routes (contract §2.2, §6.3–§6.6).
//!
//! Every route: secret (403) → body (422) → LiveKit configured (503) → a CallTracker slot
//! (429, taken before any side effect) → the route's own checks → `200 accepted`, with the call
//! itself running in a background task that owns the slot. Error bodies are
//! `{"status":"rejected","error":"<code>","detail":"…"}`.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cxb_livekit::room::{JoinRequest, ParticipantKind, RoomError, RoomHandle};
use cxb_livekit::{CreateSipParticipant, JoinGrant, SipOutcome};
use cxb_transports::CallMeta;
use cxb_wire::result::DisconnectedBy;
use cxb_wire::BotConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tracing::{error, info, warn, Instrument};

use super::cxb_api::{CxbApi, LookupError};
use super::{CallerMatch, LiveKit, RoomLink, SAMPLE_RATE};
use crate::app::AppState;
use crate::call::{run_conversation, unstarted_summary, AgentDeskTarget, CallOptions, Unanswered};
use crate::config_client::{valid_bot_id, CallLookup, ConfigFetchError, ConfigSource};
use crate::results::build_payload;
use crate::tracker::CallSlot;

/// Call-start bodies are a few hundred bytes; connected events a few KB.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/livekit/dispatch", post(dispatch))
        .route("/livekit/dialout", post(dialout))
        .route("/attach", post(attach))
        .route("/livekit/widget", post(widget))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

// ----- request bodies -----

#[derive(Debug, Deserialize)]
struct DispatchRequest {
    #[serde(deserialize_with = "text")]
    room_name: String,
    #[serde(deserialize_with = "text")]
    caller_number: String,
    #[serde(deserialize_with = "text")]
    dialed_number: String,
    #[serde(default, deserialize_with = "opt_text")]
    call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DialoutRequest {
    #[serde(deserialize_with = "text")]
    bot_id: String,
    #[serde(deserialize_with = "text")]
    to_number: String,
    #[serde(default, deserialize_with = "opt_text")]
    from_number: Option<String>,
    #[serde(default)]
    connected_event: Option<Value>,
    /// CRM data for `{{crm.*}}` (the public dial-out API's `variables`), kept under
    /// `connected_event.crm`.
    #[serde(default)]
    variables: Option<Value>,
    #[serde(default, deserialize_with = "opt_text")]
    config_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AttachRequest {
    #[serde(deserialize_with = "text")]
    room_name: String,
    #[serde(deserialize_with = "text")]
    bot_id: String,
    #[serde(default, deserialize_with = "opt_text")]
    to_number: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    from_number: Option<String>,
    #[serde(default, deserialize_with = "opt_text")]
    config_url: Option<String>,
    #[serde(default)]
    connected_event: Option<Value>,
    /// CRM data for `{{crm.*}}`, kept under `connected_event.crm`.
    #[serde(default)]
    variables: Option<Value>,
    #[serde(default, deserialize_with = "opt_text")]
    campaign_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WidgetRequest {
    #[serde(deserialize_with = "text")]
    bot_id: String,
    #[serde(deserialize_with = "text")]
    room_name: String,
    #[serde(default, deserialize_with = "opt_text")]
    caller_id: Option<String>,
}

/// Phone numbers and ids sometimes arrive as JSON numbers; both are taken as text.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("expected a string, got {other}"))),
    }
}

fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!("expected a string, got {other}"))),
    }
}

// ----- body checks (no I/O; each route runs them after the LiveKit gate) -----

impl DispatchRequest {
    fn check(&self) -> Result<(), Rejection> {
        check_name("room_name", &self.room_name)
            .and_then(|_| check_number("caller_number", &self.caller_number))
            .and_then(|_| check_number("dialed_number", &self.dialed_number))
            .and_then(|_| self.call_id.as_deref().map_or(Ok(()), |c| check_name("call_id", c)))
    }
}

impl DialoutRequest {
    /// The number to dial (normalised) and the connected event with the request's variables.
    fn check(&self, country_code: Option<&str>) -> Result<(String, Map<String, Value>), Rejection> {
        check_bot_id(&self.bot_id)
            .and_then(|_| check_number("to_number", &self.to_number))
            .and_then(|_| self.from_number.as_deref().map_or(Ok(()), |f| check_number("from_number", f)))
            .and_then(|_| check_config_url(&self.config_url))?;
        let to = cxb_livekit::normalize_dial_number(&self.to_number, country_code)
            .map_err(|e| invalid(format!("to_number: {e}")))?;
        Ok((to, connected_with_variables(self.connected_event.clone(), self.variables.clone())?))
    }
}

impl AttachRequest {
    /// The connected event with the request's variables.
    fn check(&self) -> Result<Map<String, Value>, Rejection> {
        check_name("room_name", &self.room_name)
            .and_then(|_| check_bot_id(&self.bot_id))
            .and_then(|_| self.to_number.as_deref().map_or(Ok(()), |n| check_number("to_number", n)))
            .and_then(|_| self.from_number.as_deref().map_or(Ok(()), |n| check_number("from_number", n)))
            .and_then(|_| self.campaign_call_id.as_deref().map_or(Ok(()), |c| check_name("campaign_call_id", c)))
            .and_then(|_| check_config_url(&self.config_url))?;
        connected_with_variables(self.connected_event.clone(), self.variables.clone())
    }
}

impl WidgetRequest {
    /// The caller id the call will carry.
    fn check(&self) -> Result<String, Rejection> {
        let caller_id = self.caller_id.clone().unwrap_or_else(|| "widget-user".into());
        check_bot_id(&self.bot_id)
            .and_then(|_| check_name("room_name", &self.room_name))
            .and_then(|_| check_number("caller_id", &caller_id))?;
        Ok(caller_id)
    }
}

/// A LiveKit call-start route, for [`check_body`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRoute {
    Dispatch,
    Dialout,
    Attach,
    Widget,
}

/// A route's body gates without I/O: parse (422) and the route's own checks (422), exactly as
/// the route runs them. For the fuzz targets; not a stable API.
#[doc(hidden)]
pub fn check_body(route: BodyRoute, body: &[u8], country_code: Option<&str>) -> Result<(), Rejection> {
    let body = Bytes::copy_from_slice(body);
    match route {
        BodyRoute::Dispatch => parse::<DispatchRequest>(&body)?.check(),
        BodyRoute::Dialout => parse::<DialoutRequest>(&body)?.check(country_code).map(drop),
        BodyRoute::Attach => parse::<AttachRequest>(&body)?.check().map(drop),
        BodyRoute::Widget => parse::<WidgetRequest>(&body)?.check().map(drop),
    }
}

// ----- responses -----

/// A refused request: `{"status":"rejected","error":…,"detail":…}` with its status code.
#[doc(hidden)]
#[derive(Debug)]
pub struct Rejection {
    status: StatusCode,
    error: &'static str,
    detail: Option<String>,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut body = json!({"status": "rejected", "error": self.error});
        if let Some(d) = self.detail {
            body["detail"] = Value::String(d);
        }
        (self.status, Json(body)).into_response()
    }
}

fn rejected(status: StatusCode, error: &'static str, detail: impl Into<Option<String>>) -> Rejection {
    Rejection { status, error, detail: detail.into() }
}

fn invalid(detail: impl Into<String>) -> Rejection {
    rejected(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", Some(detail.into()))
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|e| invalid(format!("invalid body: {e}")))
}

/// Room names, call ids: printable, bounded, no path or header tricks.
fn check_name(field: &str, v: &str) -> Result<(), Rejection> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+' | '@'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{field} must be 1-128 characters of letters, digits and - _ . : + @")))
    }
}

fn check_bot_id(v: &str) -> Result<(), Rejection> {
    if valid_bot_id(v) {
        Ok(())
    } else {
        Err(invalid("bot_id must be 1-128 characters of letters, digits and - _ ."))
    }
}

fn check_number(field: &str, v: &str) -> Result<(), Rejection> {
    let ok = !v.trim().is_empty() && v.len() <= 64 && v.chars().all(|c| !c.is_control());
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{field} must be a phone number or SIP user (at most 64 characters)")))
    }
}

fn check_config_url(v: &Option<String>) -> Result<(), Rejection> {
    match v {
        Some(u) => match url::Url::parse(u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") && p.host_str().is_some() => Ok(()),
            _ => Err(invalid("config_url must be an http(s) URL")),
        },
        None => Ok(()),
    }
}

fn connected_object(v: Option<Value>) -> Result<Map<String, Value>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(invalid("connected_event must be a JSON object")),
    }
}

/// The connected event with a request's `variables` merged into its `crm` object (the request's
/// values win), where `{{crm.*}}` prompt variables are read from.
fn connected_with_variables(
    connected: Option<Value>,
    variables: Option<Value>,
) -> Result<Map<String, Value>, Rejection> {
    let mut connected = connected_object(connected)?;
    let vars = match variables {
        None | Some(Value::Null) => return Ok(connected),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid("variables must be a JSON object")),
    };
    let crm = connected.entry("crm").or_insert_with(|| Value::Object(Map::new()));
    if !crm.is_object() {
        return Err(invalid("connected_event.crm must be a JSON object"));
    }
    if let Some(crm) = crm.as_object_mut() {
        crm.extend(vars);
    }
    Ok(connected)
}

/// The gate every route passes first: secret, then body, then LiveKit.
fn admit<T: DeserializeOwned>(app: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<(T, LiveKit), Rejection> {
    if !crate::auth::authorized(headers, app.settings.secret.as_deref()) {
        return Err(rejected(StatusCode::FORBIDDEN, "forbidden", None));
    }
    let req = parse::<T>(body)?;
    let Some(lk) = app.livekit.clone() else {
        return Err(rejected(
            StatusCode::SERVICE_UNAVAILABLE,
            "livekit_not_configured",
            Some("LIVEKIT_URL is not set".into()),
        ));
    };
    if !lk.media_available() {
        return Err(rejected(
            StatusCode::SERVICE_UNAVAILABLE,
            "livekit_media_unavailable",
            Some("the LiveKit FFI engine could not be loaded".into()),
        ));
    }
    Ok((req, lk))
}

fn take_slot(app: &AppState, route: &'static str, call_id: &str) -> Result<CallSlot, Rejection> {
    app.tracker.try_acquire(call_id.to_string()).map_err(|why| {
        crate::app::count_refusal(why, route);
        rejected(crate::app::refusal_status(why), why.as_str(), None)
    })
}

fn cxb_api(app: &AppState, config_url: Option<&str>) -> Option<CxbApi> {
    let base = config_url.and_then(crate::call::api_base).or_else(|| app.settings.api_base())?;
    Some(CxbApi {
        base,
        secret: app.settings.secret.clone(),
        timeout: app.settings.livekit.lookup_timeout(),
        http: app.http.clone(),
    })
}

/// Run a route, turning a rejection into its response, and record its latency and status.
async fn timed(route: &'static str, inner: impl std::future::Future<Output = Result<Response, Rejection>>) -> Response {
    let started = Instant::now();
    let resp = inner.await.unwrap_or_else(IntoResponse::into_response);
    metrics::histogram!("cxb_livekit_route_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    metrics::counter!("cxb_livekit_route_total", "route" => route, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

// ----- POST /livekit/dispatch -----

async fn dispatch(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    timed("dispatch", dispatch_inner(app, headers, body)).await
}

async fn dispatch_inner(app: AppState, headers: HeaderMap, body: Bytes) -> Result<Response, Rejection> {
    let (req, lk) = admit::<DispatchRequest>(&app, &headers, &body)?;
    req.check()?;
    let call_id = req.call_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!("dispatch", %call_id, room = %req.room_name);
    async move {
        let slot = match take_slot(&app, "dispatch", &call_id) {
            Ok(s) => s,
            Err(resp) => {
                // At capacity, the caller would otherwise ring into a room nobody serves (contract
                // §6.3); a draining worker refuses (503) before any side effect.
                if resp.status == StatusCode::TOO_MANY_REQUESTS {
                    remove_sip_participants(&lk, &app, &req.room_name).await;
                }
                return Err(resp);
            }
        };
        let Some(api) = cxb_api(&app, None) else {
            drop(slot);
            return Err(rejected(
                StatusCode::SERVICE_UNAVAILABLE,
                "cxb_api_not_configured",
                Some("SIP lookups need CXB_API_URL or CXB_API_CONFIG_URL".into()),
            ));
        };
        let lookup = match api.sip_lookup(&req.dialed_number).await {
            Ok(l) => l,
            Err(LookupError::NotFound) => {
                info!(dialed = %req.dialed_number, "no bot is mapped to the dialled number");
                remove_sip_participants(&lk, &app, &req.room_name).await;
                drop(slot);
                return Err(rejected(StatusCode::NOT_FOUND, "no_bot_for_number", Some(req.dialed_number.clone())));
            }
            Err(e) => {
                warn!(error = %e, dialed = %req.dialed_number, "SIP lookup failed");
                drop(slot);
                return Err(rejected(StatusCode::BAD_GATEWAY, "lookup_failed", Some(e.to_string())));
            }
        };
        info!(bot_id = %lookup.bot_id, "inbound SIP call accepted");
        let mut connected = Map::new();
        connected.insert("event".into(), json!("connected"));
        for (k, v) in &lookup.extra {
            connected.insert(k.clone(), v.clone());
        }
        connected.insert("transport".into(), json!("livekit_inbound"));
        connected.insert("call_id".into(), json!(call_id));
        connected.insert("room_name".into(), json!(req.room_name));
        connected.insert("caller_number".into(), json!(req.caller_number));
        connected.insert("dialed_number".into(), json!(req.dialed_number));
        connected.insert("bot_id".into(), json!(lookup.bot_id));
        if let Some(c) = &lookup.carrier_id {
            connected.insert("carrier_id".into(), c.clone());
        }
        if let Some(d) = &lookup.did_id {
            connected.insert("did_id".into(), d.clone());
        }
        let call = RoomCall {
            app: app.clone(),
            lk,
            _slot: slot,
            transport: "livekit_inbound",
            bot_id: lookup.bot_id,
            room_name: req.room_name.clone(),
            call_id: call_id.clone(),
            meta: CallMeta {
                stream_id: call_id.clone(),
                caller_id: req.caller_number.clone(),
                did: req.dialed_number.clone(),
                call_direction: "inbound".into(),
                sample_rate: SAMPLE_RATE,
                connected_event: connected,
            },
            caller: CallerMatch::AnySip,
            config_url: None,
            agent_desk: true,
            missing_config: MissingConfig::HangUp,
        };
        tokio::spawn(call.run_inbound().in_current_span());
        Ok((StatusCode::OK, Json(json!({"status": "accepted", "call_id": call_id}))).into_response())
    }
    .instrument(span)
    .await
}

/// Remove every SIP participant of a room we will not serve (bounded; failures are logged).
async fn remove_sip_participants(lk: &LiveKit, app: &AppState, room: &str) {
    let bound = app.settings.livekit.lookup_timeout();
    let work = async {
        let participants = lk.server.list_participants(room).await?;
        for p in participants.iter().filter(|p| p.to_participant().kind == ParticipantKind::Sip) {
            match lk.server.remove_participant(room, &p.identity).await {
                Ok(()) => info!(identity = %p.identity, "removed the SIP participant"),
                Err(e) if e.is_not_found() => {}
                Err(e) => warn!(error = %e, identity = %p.identity, "could not remove the SIP participant"),
            }
        }
        Ok::<(), cxb_livekit::ServerApiError>(())
    };
    match tokio::time::timeout(bound, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, %room, "could not list the room's participants to remove the caller"),
        Err(_) => warn!(%room, "removing the SIP participant timed out"),
    }
}

// ----- POST /livekit/dialout -----

async fn dialout(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    timed("dialout", dialout_inner(app, headers, body)).await
}

async fn dialout_inner(app: AppState, headers: HeaderMap, body: Bytes) -> Result<Response, Rejection> {
    let (req, lk) = admit::<DialoutRequest>(&app, &headers, &body)?;
    let (to, connected_in) = req.check(app.settings.livekit.country_code())?;
    let call_id = uuid::Uuid::new_v4().to_string();
    let room_name = format!("dialout-{call_id}");
    let span = tracing::info_span!("dialout", %call_id, bot_id = %req.bot_id);
    async move {
        let slot = take_slot(&app, "dialout", &call_id)?;
        let Some(api) = cxb_api(&app, req.config_url.as_deref()) else {
            return Err(rejected(
                StatusCode::SERVICE_UNAVAILABLE,
                "cxb_api_not_configured",
                Some("trunk lookups need CXB_API_URL, CXB_API_CONFIG_URL or a config_url".into()),
            ));
        };
        let trunk = match api.outbound_trunk(req.from_number.as_deref().unwrap_or("")).await {
            Ok(t) => t,
            Err(LookupError::NotFound) => {
                return Err(rejected(StatusCode::NOT_FOUND, "no_outbound_trunk", req.from_number.clone()));
            }
            Err(e) => {
                warn!(error = %e, "outbound trunk lookup failed");
                return Err(rejected(StatusCode::BAD_GATEWAY, "trunk_lookup_failed", Some(e.to_string())));
            }
        };
        let from = trunk.number.clone().or(req.from_number.clone()).unwrap_or_default();
        let mut connected = connected_in;
        connected.entry("event").or_insert(json!("connected"));
        connected.insert("transport".into(), json!("livekit_outbound"));
        connected.insert("call_id".into(), json!(call_id));
        connected.insert("room_name".into(), json!(room_name));
        connected.insert("to_number".into(), json!(to));
        connected.insert("from_number".into(), json!(from));
        connected.insert("trunk_id".into(), json!(trunk.trunk_id));
        let identity = format!("sip-{to}");
        info!(%to, trunk = %trunk.trunk_id, %room_name, "dial-out accepted");
        let call = RoomCall {
            app: app.clone(),
            lk,
            _slot: slot,
            transport: "livekit_outbound",
            bot_id: req.bot_id.clone(),
            room_name: room_name.clone(),
            call_id: call_id.clone(),
            meta: CallMeta {
                stream_id: call_id.clone(),
                caller_id: to.clone(),
                did: from.clone(),
                call_direction: "outbound".into(),
                sample_rate: SAMPLE_RATE,
                connected_event: connected,
            },
            caller: CallerMatch::Identity(identity.clone()),
            config_url: req.config_url.clone(),
            agent_desk: true,
            missing_config: MissingConfig::MinimalResult,
        };
        let mut dial = CreateSipParticipant::new(trunk.trunk_id, to, room_name.clone(), identity);
        dial.sip_number = from;
        dial.ringing_timeout = app.settings.livekit.ring_timeout();
        dial.participant_attributes.insert("cxb.call_id".into(), call_id.clone());
        tokio::spawn(call.run_dialout(dial).in_current_span());
        Ok((StatusCode::OK, Json(json!({"status": "accepted", "call_id": call_id, "room_name": room_name})))
            .into_response())
    }
    .instrument(span)
    .await
}

// ----- POST /attach -----

async fn attach(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    timed("attach", attach_inner(app, headers, body)).await
}

async fn attach_inner(app: AppState, headers: HeaderMap, body: Bytes) -> Result<Response, Rejection> {
    let (req, lk) = admit::<AttachRequest>(&app, &headers, &body)?;
    let mut connected = req.check()?;
    let call_id = uuid::Uuid::new_v4().to_string();
    let slot = take_slot(&app, "attach", &call_id)?;
    connected.entry("event").or_insert(json!("connected"));
    connected.insert("transport".into(), json!("attach"));
    connected.insert("call_id".into(), json!(call_id));
    connected.insert("room_name".into(), json!(req.room_name));
    for (k, v) in
        [("to_number", &req.to_number), ("from_number", &req.from_number), ("campaign_call_id", &req.campaign_call_id)]
    {
        if let Some(v) = v {
            connected.insert(k.into(), json!(v));
        }
    }
    let caller = match &req.to_number {
        Some(n) => CallerMatch::Identity(format!("sip-{n}")),
        None => CallerMatch::AnySip,
    };
    let call = RoomCall {
        app: app.clone(),
        lk,
        _slot: slot,
        transport: "attach",
        bot_id: req.bot_id.clone(),
        room_name: req.room_name.clone(),
        call_id: call_id.clone(),
        meta: CallMeta {
            stream_id: req.campaign_call_id.clone().unwrap_or_else(|| call_id.clone()),
            caller_id: req.to_number.clone().unwrap_or_default(),
            did: req.from_number.clone().unwrap_or_default(),
            call_direction: "outbound".into(),
            sample_rate: SAMPLE_RATE,
            connected_event: connected,
        },
        caller,
        config_url: req.config_url.clone(),
        agent_desk: true,
        missing_config: MissingConfig::MinimalResult,
    };
    let span = tracing::info_span!("attach", %call_id, bot_id = %req.bot_id, room = %req.room_name);
    tokio::spawn(call.run_inbound().instrument(span));
    Ok((StatusCode::OK, Json(json!({"status": "accepted", "call_id": call_id, "room_name": req.room_name})))
        .into_response())
}

// ----- POST /livekit/widget -----

async fn widget(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    timed("widget", widget_inner(app, headers, body)).await
}

async fn widget_inner(app: AppState, headers: HeaderMap, body: Bytes) -> Result<Response, Rejection> {
    let (req, lk) = admit::<WidgetRequest>(&app, &headers, &body)?;
    let caller_id = req.check()?;
    let call_id = uuid::Uuid::new_v4().to_string();
    // At capacity nothing else happens (contract §2.2).
    let slot = take_slot(&app, "widget", &call_id)?;
    let mut connected = Map::new();
    connected.insert("event".into(), json!("connected"));
    connected.insert("transport".into(), json!("widget"));
    connected.insert("call_id".into(), json!(call_id));
    connected.insert("room_name".into(), json!(req.room_name));
    connected.insert("caller_id".into(), json!(caller_id));
    let call = RoomCall {
        app: app.clone(),
        lk,
        _slot: slot,
        transport: "widget",
        bot_id: req.bot_id.clone(),
        room_name: req.room_name.clone(),
        call_id: call_id.clone(),
        meta: CallMeta {
            stream_id: call_id.clone(),
            caller_id,
            did: String::new(),
            call_direction: "inbound".into(),
            sample_rate: SAMPLE_RATE,
            connected_event: connected,
        },
        caller: CallerMatch::AnyStandard,
        config_url: None,
        agent_desk: false,
        missing_config: MissingConfig::ErrorResult,
    };
    let span = tracing::info_span!("widget", %call_id, bot_id = %req.bot_id, room = %req.room_name);
    tokio::spawn(call.run_inbound().instrument(span));
    Ok((StatusCode::OK, Json(json!({"status": "accepted", "call_id": call_id}))).into_response())
}

// ----- the call itself -----

/// What happens when the config cannot be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MissingConfig {
    /// Inbound SIP: hang the caller up (they would hear nothing) and record the reason.
    HangUp,
    /// Dial-out / attach: POST a minimal result to `{api}/call-results` (contract §3 row 5).
    MinimalResult,
    /// Widget: a minimal result with `disconnected_by=error` (contract §6.6).
    ErrorResult,
}

struct RoomCall {
    app: AppState,
    lk: LiveKit,
    /// Held for the whole call: dropping it (any exit, a panic included) frees the slot.
    _slot: CallSlot,
    transport: &'static str,
    bot_id: String,
    room_name: String,
    call_id: String,
    meta: CallMeta,
    caller: CallerMatch,
    config_url: Option<String>,
    agent_desk: bool,
    missing_config: MissingConfig,
}

impl RoomCall {
    /// Dispatch, attach and widget: config, join, converse.
    async fn run_inbound(mut self) {
        let span = tracing::info_span!("call", call_id = %self.call_id, bot_id = %self.bot_id, transport = self.transport, session_id = tracing::field::Empty);
        async move {
            if self.transport == "livekit_inbound" {
                self.enrich_from_sip_participant().await;
            }
            let Some(cfg) = self.config().await else { return };
            tracing::Span::current().record("session_id", cfg.session_id.as_str());
            let room = match self.join().await {
                Ok(r) => r,
                Err(e) => return self.failed_before_start(&cfg, &format!("could not join the room: {e}")).await,
            };
            self.converse(cfg, room, None).await;
        }
        .instrument(span)
        .await
    }

    /// Dial-out: config, join and start the pipeline (greeting held), check it is alive, ring,
    /// then release the greeting or end the call with the SIP outcome.
    async fn run_dialout(self, dial: CreateSipParticipant) {
        let span = tracing::info_span!("call", call_id = %self.call_id, bot_id = %self.bot_id, transport = self.transport, session_id = tracing::field::Empty);
        async move {
            let Some(cfg) = self.config().await else { return };
            tracing::Span::current().record("session_id", cfg.session_id.as_str());
            let room = match self.join().await {
                Ok(r) => r,
                Err(e) => return self.failed_before_start(&cfg, &format!("could not join the room: {e}")).await,
            };
            let (answer_tx, answer_rx) = oneshot::channel();
            let server = self.lk.server.clone();
            let alive_check = Duration::from_millis(self.app.settings.livekit.dialout_alive_check_ms);
            let ring = dial.ringing_timeout;
            let (room_name, identity) = (dial.room_name.clone(), dial.participant_identity.clone());
            let pipeline = self.converse(cfg, room, Some(answer_rx));
            tokio::pin!(pipeline);
            // Pipeline-alive check (contract §6.4 step 6): a pipeline that dies straight away
            // (providers down, ...) fails the call as `error` before anyone's phone rings.
            tokio::select! {
                _ = &mut pipeline => {
                    warn!("the pipeline ended before dialling; the call failed without ringing");
                    return;
                }
                _ = tokio::time::sleep(alive_check) => {}
            }
            info!(ring_s = ring.as_secs(), "dialling");
            let dialling = async {
                let started = Instant::now();
                let verdict = server.create_sip_participant(&dial).await;
                metrics::histogram!("cxb_dialout_ring_seconds").record(started.elapsed().as_secs_f64());
                verdict
            };
            tokio::select! {
                _ = &mut pipeline => {
                    warn!("the pipeline ended while ringing; hanging up the dial-out");
                    let _ = tokio::time::timeout(Duration::from_secs(5), server.remove_participant(&room_name, &identity)).await;
                    return;
                }
                verdict = dialling => {
                    let answer = match verdict {
                        Ok(info) => {
                            info!(sip_call_id = %info.sip_call_id, "the callee answered");
                            metrics::counter!("cxb_dialout_total", "outcome" => "answered").increment(1);
                            Ok(())
                        }
                        Err(e) => {
                            let outcome = e.sip_outcome();
                            metrics::counter!("cxb_dialout_total", "outcome" => outcome.as_disconnected_by()).increment(1);
                            info!(error = %e, sip_status = ?e.sip_status_code(), %outcome, "the dial-out failed");
                            Err(Unanswered { disconnected_by: disconnected_by(outcome), detail: e.to_string() })
                        }
                    };
                    let _ = answer_tx.send(answer);
                }
            }
            pipeline.await;
        }
        .instrument(span)
        .await
    }

    /// Inbound SIP: the SIP participant's identity and its `sip.*` attributes (X-headers
    /// included) go into the connected event (`sip_candidate_headers`).
    async fn enrich_from_sip_participant(&mut self) {
        let bound = self.app.settings.livekit.lookup_timeout();
        let listed = tokio::time::timeout(bound, self.lk.server.list_participants(&self.room_name)).await;
        let participants = match listed {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return warn!(error = %e, "could not list the room's participants"),
            Err(_) => return warn!("listing the room's participants timed out"),
        };
        let Some(sip) = participants.iter().map(|p| p.to_participant()).find(|p| p.kind == ParticipantKind::Sip) else {
            return;
        };
        let headers: Map<String, Value> = sip
            .attributes
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("sip.h.").map(|h| (h.to_string(), json!(v))))
            .collect();
        let ev = &mut self.meta.connected_event;
        ev.insert("sip_participant_identity".into(), json!(sip.identity));
        if let Some(call_id) = sip.attributes.get("sip.callID") {
            ev.insert("sip_call_id".into(), json!(call_id));
        }
        ev.insert("sip_candidate_headers".into(), Value::Object(headers));
        self.caller = CallerMatch::Identity(sip.identity);
    }

    async fn config(&self) -> Option<BotConfig> {
        let source = match &self.config_url {
            Some(url) => ConfigSource::Api {
                base_url: url.clone(),
                secret: self.app.settings.secret.clone(),
                timeout: self.app.settings.config_timeout(),
                http: self.app.http.clone(),
            },
            None => self.app.config.clone(),
        };
        let lookup = CallLookup {
            bot_id: &self.bot_id,
            caller_id: &self.meta.caller_id,
            stream_id: &self.meta.stream_id,
            connected_event: &self.meta.connected_event,
        };
        let started = Instant::now();
        let result = source.fetch(&lookup).await;
        metrics::histogram!("cxb_config_fetch_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(cfg) => Some(cfg),
            Err(e) => {
                metrics::counter!("cxb_calls_rejected_total", "reason" => e.label()).increment(1);
                warn!(error = %e, "call not started: config fetch failed");
                self.config_missing(&e).await;
                None
            }
        }
    }

    async fn config_missing(&self, e: &ConfigFetchError) {
        let reason = match (self.missing_config, e) {
            (MissingConfig::ErrorResult, _) => DisconnectedBy::Error,
            (_, ConfigFetchError::OutsideHours(_)) => DisconnectedBy::OutsideHours,
            _ => DisconnectedBy::Error,
        };
        if self.missing_config == MissingConfig::HangUp {
            remove_sip_participants(&self.lk, &self.app, &self.room_name).await;
        }
        crate::call::record_unstarted_call(
            &self.app,
            self.config_url.as_deref(),
            self.transport,
            &self.meta,
            &self.bot_id,
            reason,
        )
        .await;
    }

    async fn join(&self) -> Result<RoomHandle, RoomError> {
        let identity = format!("cxb-bot-{}", self.call_id);
        let mut grant = JoinGrant::bot(self.room_name.clone(), identity.clone());
        grant.name = "CXB bot".into();
        let token = self.lk.server.tokens().join_token(&grant).map_err(|e| RoomError::Connect(e.to_string()))?;
        let request = JoinRequest {
            url: self.lk.url.clone(),
            token,
            room_name: self.room_name.clone(),
            identity,
            sample_rate: SAMPLE_RATE,
            num_channels: 1,
        };
        let bound = self.app.settings.livekit.join_timeout();
        let started = Instant::now();
        let joined = match tokio::time::timeout(bound, self.lk.connector.connect(request)).await {
            Ok(r) => r,
            Err(_) => Err(RoomError::Connect(format!("no answer within {bound:?}"))),
        };
        metrics::histogram!("cxb_livekit_join_seconds").record(started.elapsed().as_secs_f64());
        if joined.is_ok() {
            info!(room = %self.room_name, join_ms = started.elapsed().as_millis() as u64, "joined the room");
        }
        joined
    }

    /// The config was fetched but the call never got going: a result with `error`.
    async fn failed_before_start(&self, cfg: &BotConfig, why: &str) {
        error!(%why, "call failed before it started");
        metrics::counter!("cxb_calls_total", "disconnected_by" => "error", "transport" => self.transport).increment(1);
        let summary =
            unstarted_summary(cfg.session_id.clone(), &self.bot_id, self.transport, &self.meta, DisconnectedBy::Error);
        let mut payload = build_payload(&summary, None, vec![]);
        payload.events.push(cxb_wire::result::CallEvent {
            kind: "service_error".into(),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            offset_seconds: 0.0,
            data: json!({"service": "transport", "error": why}).as_object().cloned().unwrap_or_default(),
        });
        self.app.delivery.deliver(payload, cfg.webhook_url.clone()).await;
    }

    async fn converse(
        &self,
        cfg: BotConfig,
        room: RoomHandle,
        answered: Option<oneshot::Receiver<Result<(), Unanswered>>>,
    ) {
        let link = RoomLink::new(
            self.transport,
            self.meta.clone(),
            room,
            self.room_name.clone(),
            self.caller.clone(),
            Some(self.lk.server.clone()),
            self.app.settings.livekit.country_code().map(str::to_string),
        );
        let agent_desk = if self.agent_desk {
            self.config_url.as_deref().and_then(crate::call::api_base).or_else(|| self.app.settings.api_base()).map(
                |api_base| AgentDeskTarget {
                    api_base,
                    room_name: self.room_name.clone(),
                    call_id: self.call_id.clone(),
                },
            )
        } else {
            None
        };
        let options = CallOptions { answered, agent_desk, ..Default::default() };
        run_conversation(&self.app, link, &self.bot_id, cfg, self._slot.shutdown(), options).await;
    }
}

fn disconnected_by(outcome: SipOutcome) -> DisconnectedBy {
    match outcome {
        SipOutcome::NoAnswer => DisconnectedBy::NoAnswer,
        SipOutcome::Rejected => DisconnectedBy::Rejected,
        _ => DisconnectedBy::Error,
    }
}
