//! The NXLink call-record callback (seed 002): an optional per-bot second delivery of a call's
//! result, in NXLink's shape, through the durable outbox.
//!
//! Mapping table and the signing scheme: proto/README.md ("NXLink peer result"). Summary:
//! - body: NXLink's call-record fields from the payload; `callStatus` / `callResult` from
//!   `disconnected_by`; `attributes` from the CRM variables (`connected_event`);
//! - headers `accessKey`, `ts` (ms), `bizType` (`100`), `action` (`nxai`) and
//!   `sign = lower(hex(md5("accessKey=…&action=…&bizType=…&ts=…" + "&body=" + body +
//!   "&accessSecret=" + secret)))` — NXCloud's documented open-API convention, which this
//!   callback's header set and example value follow. The seed does not state the algorithm: this
//!   is our decision.
//!
//! `ts` must be within 60 s of NXLink's clock, so an attempt signed at enqueue time goes stale
//! during an outage. [`NxlinkDeliverer`] (outbox kind [`OUTBOX_KIND`]) re-signs every attempt
//! with a fresh `ts`; [`nxlink_entry`] gives a request signed now for a plain HTTP entry.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use cxb_delivery::{Deliverer, Entry, HttpBody, HttpTarget, NewEntry, Outcome, Target};
use cxb_wire::result::{CallResultsPayload, DisconnectedBy, Speaker};
use cxb_wire::BotConfig;
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

/// Outbox kind of NXLink deliveries (register [`NxlinkDeliverer`] for it).
pub const OUTBOX_KIND: &str = "nxlink";
const DEFAULT_BIZ_TYPE: &str = "100";
const DEFAULT_ACTION: &str = "nxai";

/// A ready NXLink request: POST `url` with `headers` and exactly `body`.
#[derive(Debug, Clone, PartialEq)]
pub struct NxlinkRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl NxlinkRequest {
    /// As a plain outbox HTTP target (the body bytes are kept verbatim, so the sign stays valid;
    /// the `ts` does not get refreshed on retries — prefer [`outbox_entry`]).
    pub fn into_http_target(self) -> Result<HttpTarget, serde_json::Error> {
        Ok(HttpTarget {
            method: "POST".into(),
            url: self.url,
            headers: self.headers,
            body: HttpBody::raw_json(self.body)?,
        })
    }
}

/// `(callStatus, callResult, hangupReason, sipCode)` for a `disconnected_by`.
pub fn status_codes(d: DisconnectedBy) -> (i64, i64, &'static str, &'static str) {
    use DisconnectedBy as D;
    match d {
        D::Customer => (10, 17, "NORMAL_CLEARING", "200"),
        D::Bot => (10, 3, "NORMAL_CLEARING", "200"),
        D::Timeout => (10, 3, "MAX_DURATION", "200"),
        D::TransferToAgent => (10, 1, "TRANSFER_TO_AGENT", "200"),
        D::Voicemail => (10, 18, "VOICEMAIL", "200"),
        D::Rnr => (10, 20, "NO_USER_RESPONSE", "200"),
        D::NoAnswer => (24, 9, "NO_ANSWER", "480"),
        D::Rejected => (15, 13, "CALL_REJECTED", "486"),
        D::OutsideHours => (16, 16, "OUTSIDE_HOURS", ""),
        D::Error => (18, 21, "SYSTEM_ERROR", ""),
    }
}

/// `hex(md5(headersStr + "&body=" + body + "&accessSecret=" + secret))`, lower case; the body
/// part is left out when the body is empty.
pub fn sign(access_key: &str, action: &str, biz_type: &str, ts: &str, body: &str, secret: &str) -> String {
    let mut text = format!("accessKey={access_key}&action={action}&bizType={biz_type}&ts={ts}");
    if !body.is_empty() {
        text.push_str("&body=");
        text.push_str(body);
    }
    text.push_str("&accessSecret=");
    text.push_str(secret);
    let digest = Md5::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signed headers for `body` at `ts_ms`. Without an access key nothing is added; without a
/// secret `sign` is left out.
pub fn headers(cfg: &cxb_wire::config::NxlinkConfig, ts_ms: i64, body: &str) -> Vec<(String, String)> {
    if cfg.access_key.trim().is_empty() {
        return Vec::new();
    }
    let biz = cfg.biz_type.as_deref().filter(|s| !s.is_empty()).unwrap_or(DEFAULT_BIZ_TYPE);
    let action = cfg.action.as_deref().filter(|s| !s.is_empty()).unwrap_or(DEFAULT_ACTION);
    let ts = ts_ms.to_string();
    let mut h = vec![
        ("accessKey".to_string(), cfg.access_key.trim().to_string()),
        ("ts".to_string(), ts.clone()),
        ("bizType".to_string(), biz.to_string()),
        ("action".to_string(), action.to_string()),
    ];
    if !cfg.secret.is_empty() {
        h.push(("sign".to_string(), sign(cfg.access_key.trim(), action, biz, &ts, body, &cfg.secret)));
    }
    h
}

fn epoch_secs(rfc3339: Option<&str>) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339?).ok().map(|t| t.timestamp())
}

fn attr_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        other => Some(other.to_string()),
    }
}

fn first_str(m: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| m.get(*k).and_then(attr_value)).filter(|s| !s.is_empty())
}

fn first_int(m: &Map<String, Value>, keys: &[&str]) -> Option<i64> {
    keys.iter().find_map(|k| match m.get(*k) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

fn analysis_str(p: &CallResultsPayload, keys: &[&str]) -> Option<String> {
    let a = p.post_call_analysis.as_ref()?;
    keys.iter().find_map(|k| a.get(*k).and_then(Value::as_str)).map(str::to_string).filter(|s| !s.trim().is_empty())
}

/// The NXLink call-record body for a payload (field order as in the seed's example).
pub fn body(cfg: &BotConfig, p: &CallResultsPayload, now_secs: i64) -> Value {
    let nx = cfg.nxlink.clone().unwrap_or_default();
    let empty = Map::new();
    let ce = p.connected_event.as_ref().unwrap_or(&empty);
    let disconnected_by = p.disconnected_by.unwrap_or(DisconnectedBy::Error);
    let (mut status, result, mut hangup, sip_code) = status_codes(disconnected_by);
    let start = epoch_secs(p.started_at.as_deref()).unwrap_or(now_secs);
    let end = epoch_secs(p.ended_at.as_deref()).unwrap_or(start + p.call_duration_seconds.round() as i64);
    let answered =
        !matches!(disconnected_by, DisconnectedBy::NoAnswer | DisconnectedBy::Rejected | DisconnectedBy::OutsideHours)
            && p.call_duration_seconds > 0.0;
    if p.was_transferred == Some(true) {
        hangup = "TRANSFERRED";
    }
    if disconnected_by == DisconnectedBy::Error && !answered {
        status = 18;
    }
    let outbound = p.call_direction.as_deref().is_some_and(|d| {
        let d = d.to_ascii_lowercase();
        d.starts_with("out")
    });
    let customer = p.caller_id.clone().unwrap_or_default();
    let line = p.from_number.clone().unwrap_or_default();
    let (caller, callee) = if outbound { (line, customer.clone()) } else { (customer.clone(), line) };
    let turns = p.transcript.iter().filter(|l| l.speaker == Speaker::Customer && !l.text.trim().is_empty()).count();
    let intent = analysis_str(p, &["DISPOSITION", "disposition", "intent", "user_intent"])
        .or_else(|| {
            p.intents.as_ref()?.first().and_then(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => {
                    o.get("intent").or_else(|| o.get("name")).and_then(Value::as_str).map(str::to_string)
                }
                _ => None,
            })
        })
        .unwrap_or_default();
    let summary =
        analysis_str(p, &["summary", "SUMMARY", "call_summary", "CALL_SUMMARY", "CALLING_REMARKS"]).unwrap_or_default();
    let attributes: Vec<Value> = ce
        .iter()
        .filter_map(|(k, v)| {
            let value = attr_value(v)?;
            let name = nx.attribute_names.get(k).cloned().unwrap_or_else(|| k.clone());
            Some(json!({"name": name, "key": k, "value": value}))
        })
        .collect();
    json!({
        "taskId": first_str(ce, &["taskId", "task_id"]).or(nx.task_id.clone()).unwrap_or_else(|| cfg.bot_id.clone()),
        "userTaskId": first_str(ce, &["userTaskId", "user_task_id", "campaign_id", "campaignId"]).unwrap_or_default(),
        "contactId": first_str(ce, &["contactId", "contact_id", "customer_id", "customerId", "campaign_call_id"])
            .unwrap_or_default(),
        "other": first_str(ce, &["other"]).unwrap_or_default(),
        "autoFlowId": nx.auto_flow_id.or_else(|| first_int(ce, &["autoFlowId"])).unwrap_or(0),
        "orderHead": first_int(ce, &["orderHead"]).unwrap_or(1),
        "orderTail": first_int(ce, &["orderTail"]).unwrap_or(1),
        "callerPhone": caller,
        "calleePhone": callee,
        "realPhone": customer,
        "callId": p.session_id,
        "callStatus": status,
        "callResult": result,
        "createTs": start,
        "opTs": now_secs,
        "callStart": start,
        "callAnswer": if answered { start } else { 0 },
        "callEnd": end,
        "callRingTime": 0,
        "callElapsed": if answered { p.call_duration_seconds.round() as i64 } else { 0 },
        "lineId": first_str(ce, &["lineId", "line_id"]).unwrap_or_default(),
        "routeId": first_str(ce, &["routeId", "route_id"]).unwrap_or_default(),
        "callAudioUrl": p.recording_url.clone().unwrap_or_default(),
        "userIntent": intent,
        "callSummary": summary,
        "turnTime": turns,
        "manualCallStart": 0,
        "manualCallAnswer": 0,
        "manualCallEnd": 0,
        "manualCallStatus": 0,
        "manualElapsed": 0,
        "agentName": "",
        "agentId": "",
        "agentGroupName": "",
        "agentGroupId": "",
        "sipAddr": first_str(ce, &["sipAddr", "sip_addr"]).unwrap_or_default(),
        "sipCode": sip_code,
        "hangupReason": hangup,
        "attributes": attributes,
        "autoFlowName": nx.auto_flow_name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| cfg.bot_id.clone()),
    })
}

fn enabled(cfg: &BotConfig) -> Option<&cxb_wire::config::NxlinkConfig> {
    cfg.nxlink.as_ref().filter(|n| n.enabled && !n.url.trim().is_empty())
}

/// The NXLink request for this call, signed now; `None` when the bot has no (enabled) NXLink
/// block.
pub fn nxlink_entry(cfg: &BotConfig, payload: &CallResultsPayload) -> Option<NxlinkRequest> {
    let nx = enabled(cfg)?;
    let now = chrono::Utc::now();
    let body = serde_json::to_string(&body(cfg, payload, now.timestamp())).ok()?;
    Some(NxlinkRequest { url: nx.url.trim().to_string(), headers: headers(nx, now.timestamp_millis(), &body), body })
}

/// An outbox entry of kind [`OUTBOX_KIND`] (key = session_id) for [`NxlinkDeliverer`], which
/// signs each attempt afresh. The entry file holds the NXLink secret, like result entries hold
/// the CXB secret header.
pub fn outbox_entry(cfg: &BotConfig, payload: &CallResultsPayload) -> Option<NewEntry> {
    let nx = enabled(cfg)?;
    let body = serde_json::to_string(&body(cfg, payload, chrono::Utc::now().timestamp())).ok()?;
    let data = json!({
        "url": nx.url.trim(),
        "body": body,
        "nxlink": {
            "url": nx.url.trim(), "access_key": nx.access_key, "secret": nx.secret,
            "biz_type": nx.biz_type, "action": nx.action,
        },
    });
    Some(NewEntry::custom(OUTBOX_KIND, payload.session_id.clone(), crate::results::strip_nulls_value(data)))
}

/// Delivers [`OUTBOX_KIND`] entries: POST with headers signed at attempt time.
///
/// Outcome: HTTP 2xx with NXLink `code` 0 (or no `code`) → delivered; `code` 1004 (timestamp
/// expired), 408, 429, 5xx, timeouts and connection errors → retry; other codes (1001–1003,
/// 1005 auth, 20000 business error) and other 4xx/3xx → dead letter with the body kept.
#[derive(Debug, Clone)]
pub struct NxlinkDeliverer {
    http: reqwest::Client,
}

impl NxlinkDeliverer {
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { http }
    }

    async fn attempt(&self, entry: &Entry) -> Outcome {
        let Target::Custom { data } = &entry.target else {
            return Outcome::Reject { reason: "nxlink entry without custom data".into(), body: None };
        };
        let (Some(url), Some(body)) = (data["url"].as_str(), data["body"].as_str()) else {
            return Outcome::Reject { reason: "nxlink entry without url/body".into(), body: None };
        };
        let nx: cxb_wire::config::NxlinkConfig = serde_json::from_value(data["nxlink"].clone()).unwrap_or_default();
        let mut req = self.http.post(url).header("content-type", "application/json").body(body.to_string());
        for (k, v) in headers(&nx, chrono::Utc::now().timestamp_millis(), body) {
            req = req.header(k, v);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => return Outcome::Reject { reason: format!("invalid request: {e}"), body: None },
            Err(e) => return Outcome::Retry { reason: format!("nxlink: {e}"), retry_after: None },
        };
        let status = resp.status().as_u16();
        let text: String = resp.text().await.unwrap_or_default().chars().take(64 * 1024).collect();
        classify(status, &text)
    }
}

/// Classify an NXLink response (see [`NxlinkDeliverer`]).
pub fn classify(status: u16, body: &str) -> Outcome {
    let reason = |what: &str| format!("nxlink {what}: HTTP {status}: {}", body.chars().take(500).collect::<String>());
    match status {
        200..=299 => {
            let code = serde_json::from_str::<Value>(body).ok().and_then(|v| v.get("code").and_then(Value::as_i64));
            match code {
                None | Some(0) => Outcome::Delivered,
                Some(1004) => Outcome::Retry { reason: reason("timestamp expired"), retry_after: None },
                Some(c) => Outcome::Reject { reason: reason(&format!("code {c}")), body: Some(body.to_string()) },
            }
        }
        408 | 429 | 500..=599 => Outcome::Retry { reason: reason("transient"), retry_after: None },
        _ => Outcome::Reject { reason: reason("rejected"), body: Some(body.to_string()) },
    }
}

impl Deliverer for NxlinkDeliverer {
    fn deliver<'a>(&'a self, entry: &'a Entry) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(self.attempt(entry))
    }
}
