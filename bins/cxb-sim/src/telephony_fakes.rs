//! Loopback fakes of the telephony REST hang-up APIs (wire-protocols §2). Each checks method,
//! path, auth and body the way the provider does, answers like it, and records the request:
//!
//! | Route | Provider check | Success |
//! |---|---|---|
//! | `POST /twilio/2010-04-01/Accounts/{AC}/Calls/{CA}.json` | Basic `{AC}:sim-twilio-token`, form body `Status=completed` | 200 call JSON |
//! | `POST /telnyx/v2/calls/{id}/actions/hangup` | `Bearer sim-telnyx-key`, JSON body (may be `{}`) | 200; again → 422 code 90018 |
//! | `DELETE /plivo/v1/Account/{id}/Call/{call}/` | Basic `{id}:sim-plivo-token` | 204; again → 404 |
//!
//! `GET /sim/telephony-requests` lists every request; `GET /sim/telephony-requests/wait?provider=
//! &call_id=&timeout_ms=` long-polls until a *valid* hang-up of that call arrives (200) or times
//! out (408) — `cxb-sim dial` uses it to end the stream the way the provider would.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::SimState;

pub const TWILIO_AUTH_TOKEN: &str = "sim-twilio-token";
pub const TELNYX_API_KEY: &str = "sim-telnyx-key";
pub const PLIVO_AUTH_TOKEN: &str = "sim-plivo-token";

/// What the fakes have seen.
#[derive(Debug, Default)]
pub struct Store {
    requests: Mutex<Vec<Value>>,
    ended: Mutex<HashSet<(String, String)>>,
    notify: tokio::sync::Notify,
}

impl Store {
    pub fn reset(&self) {
        lock(&self.requests).clear();
        lock(&self.ended).clear();
    }

    pub fn list(&self) -> Vec<Value> {
        lock(&self.requests).clone()
    }

    fn record(&self, v: Value) {
        lock(&self.requests).push(v);
        self.notify.notify_waiters();
    }

    /// First call of a valid hang-up for this call? (Later ones: the call has already ended.)
    fn end(&self, provider: &str, call: &str) -> bool {
        lock(&self.ended).insert((provider.to_string(), call.to_string()))
    }

    fn find_valid(&self, provider: &str, call_id: &str) -> Option<Value> {
        lock(&self.requests)
            .iter()
            .find(|r| r["provider"] == provider && r["call_id"] == call_id && r["valid"] == true)
            .cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/twilio/2010-04-01/Accounts/{account}/Calls/{call_file}", post(twilio))
        .route("/telnyx/v2/calls/{call}/actions/hangup", post(telnyx))
        .route("/plivo/v1/Account/{auth_id}/Call/{call}/", delete(plivo))
        .route("/sim/telephony-requests", get(list))
        .route("/sim/telephony-requests/wait", get(wait))
}

/// The `telephony` block the fake CXB API serves: every provider's REST API pointed at this sim.
pub fn config_block(addr: &str) -> Value {
    json!({
        "twilio": {"auth_token": TWILIO_AUTH_TOKEN, "api_base": format!("http://{addr}/twilio")},
        "telnyx": {"api_key": TELNYX_API_KEY, "api_base": format!("http://{addr}/telnyx")},
        "plivo": {"auth_id": "MASIMPLIVO0001", "auth_token": PLIVO_AUTH_TOKEN, "api_base": format!("http://{addr}/plivo")},
    })
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// (user, password) of a Basic `Authorization` header.
fn basic(h: &HeaderMap) -> Option<(String, String)> {
    let v = header(h, "authorization")?.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(v.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

struct Check {
    provider: &'static str,
    call_id: String,
    errors: Vec<String>,
}

impl Check {
    fn record(self, state: &SimState, method: &Method, path: String, body: &Bytes, status: StatusCode) {
        let valid = self.errors.is_empty();
        state.telephony.record(json!({
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "provider": self.provider,
            "method": method.as_str(),
            "path": path,
            "call_id": self.call_id,
            "body": String::from_utf8_lossy(body),
            "valid": valid,
            "errors": self.errors,
            "status": status.as_u16(),
        }));
        if !valid {
            tracing::warn!(provider = self.provider, call_id = %self.call_id, errors = ?self.errors, "telephony REST request refused");
        }
    }
}

async fn twilio(
    State(state): State<Arc<SimState>>,
    method: Method,
    Path((account, call_file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/twilio/2010-04-01/Accounts/{account}/Calls/{call_file}");
    let Some(call) = call_file.strip_suffix(".json").map(str::to_string) else {
        return (StatusCode::NOT_FOUND, Json(json!({"code":20404,"message":"The requested resource was not found"})))
            .into_response();
    };
    let mut c = Check { provider: "twilio", call_id: call.clone(), errors: vec![] };
    let auth_ok = basic(&headers).is_some_and(|(u, p)| u == account && p == TWILIO_AUTH_TOKEN);
    if !auth_ok {
        c.errors.push("Basic auth must be {AccountSid}:{AuthToken}".into());
    }
    let ct_ok = header(&headers, "content-type").is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !ct_ok {
        c.errors.push("Content-Type must be application/x-www-form-urlencoded".into());
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    if !form.iter().any(|(k, v)| k == "Status" && v == "completed") {
        c.errors.push("body must set Status=completed".into());
    }
    let (status, resp) = if !auth_ok {
        (StatusCode::UNAUTHORIZED, json!({"code":20003,"message":"Authenticate","status":401}))
    } else if !c.errors.is_empty() {
        (StatusCode::BAD_REQUEST, json!({"code":21218,"message":c.errors.join("; "),"status":400}))
    } else {
        state.telephony.end("twilio", &call);
        (StatusCode::OK, json!({"sid":call,"account_sid":account,"status":"completed"}))
    };
    c.record(&state, &method, path, &body, status);
    (status, Json(resp)).into_response()
}

async fn telnyx(
    State(state): State<Arc<SimState>>,
    method: Method,
    Path(call): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/telnyx/v2/calls/{call}/actions/hangup");
    let mut c = Check { provider: "telnyx", call_id: call.clone(), errors: vec![] };
    let auth_ok = header(&headers, "authorization") == Some(&format!("Bearer {TELNYX_API_KEY}"));
    if !auth_ok {
        c.errors.push("Authorization must be Bearer <API key>".into());
    }
    if !body.is_empty() {
        if !header(&headers, "content-type").is_some_and(|v| v.starts_with("application/json")) {
            c.errors.push("Content-Type must be application/json".into());
        }
        if !matches!(serde_json::from_slice::<Value>(&body), Ok(Value::Object(_))) {
            c.errors.push("body must be a JSON object".into());
        }
    }
    let (status, resp) = if !auth_ok {
        (StatusCode::UNAUTHORIZED, json!({"errors":[{"code":"10009","title":"Authentication failed"}]}))
    } else if !c.errors.is_empty() {
        (StatusCode::UNPROCESSABLE_ENTITY, json!({"errors":[{"code":"10015","title":c.errors.join("; ")}]}))
    } else if !state.telephony.end("telnyx", &call) {
        (StatusCode::UNPROCESSABLE_ENTITY, json!({"errors":[{"code":"90018","title":"Call has already ended"}]}))
    } else {
        (StatusCode::OK, json!({"data":{"result":"ok"}}))
    };
    c.record(&state, &method, path, &body, status);
    (status, Json(resp)).into_response()
}

async fn plivo(
    State(state): State<Arc<SimState>>,
    method: Method,
    Path((auth_id, call)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/plivo/v1/Account/{auth_id}/Call/{call}/");
    let mut c = Check { provider: "plivo", call_id: call.clone(), errors: vec![] };
    let auth_ok = basic(&headers).is_some_and(|(u, p)| u == auth_id && p == PLIVO_AUTH_TOKEN);
    if !auth_ok {
        c.errors.push("Basic auth must be {auth_id}:{auth_token}".into());
    }
    if !body.is_empty() {
        c.errors.push("DELETE takes no body".into());
    }
    let status = if !auth_ok {
        StatusCode::UNAUTHORIZED
    } else if !c.errors.is_empty() {
        StatusCode::BAD_REQUEST
    } else if !state.telephony.end("plivo", &call) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::NO_CONTENT
    };
    c.record(&state, &method, path, &body, status);
    if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        (status, Json(json!({"error": c_error(status)}))).into_response()
    }
}

fn c_error(s: StatusCode) -> &'static str {
    match s {
        StatusCode::UNAUTHORIZED => "authentication failed",
        StatusCode::NOT_FOUND => "call not found",
        _ => "bad request",
    }
}

async fn list(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(Value::Array(state.telephony.list()))
}

#[derive(Deserialize)]
struct WaitQuery {
    provider: String,
    call_id: String,
    #[serde(default = "default_wait")]
    timeout_ms: u64,
}

fn default_wait() -> u64 {
    30_000
}

async fn wait(State(state): State<Arc<SimState>>, Query(q): Query<WaitQuery>) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.timeout_ms.min(600_000));
    loop {
        // Registered before the check, so a request recorded in between still wakes us.
        let notified = state.telephony.notify.notified();
        if let Some(r) = state.telephony.find_valid(&q.provider, &q.call_id) {
            return Json(r).into_response();
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return (StatusCode::REQUEST_TIMEOUT, Json(json!({"detail":"no valid hang-up for this call"})))
                .into_response();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_parses() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic QUMxOnRvaw==".parse().unwrap());
        assert_eq!(basic(&h), Some(("AC1".into(), "tok".into())));
        h.insert("authorization", "Bearer x".parse().unwrap());
        assert_eq!(basic(&h), None);
    }
}
