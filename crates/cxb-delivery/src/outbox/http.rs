//! Built-in deliverer for [`Target::Http`](super::Target::Http) entries.
//!
//! Classification (why: only failures that can heal by themselves are retried;
//! anything the receiver will keep refusing goes to the dead-letter state at
//! once, where an operator sees it instead of it retrying silently for 72 h):
//! - 2xx → delivered;
//! - 408, 429, 5xx, timeouts, connection/TLS errors → retry (`Retry-After`
//!   seconds or HTTP-date honoured as a floor);
//! - other 4xx (401/403/404/422…) → reject, response body kept;
//! - 3xx → reject: redirects are not followed because a POST silently turned
//!   into a GET by a 302 would be counted as delivered;
//! - an unbuildable request (bad method/URL/header) → reject.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

use super::entry::{HttpBody, HttpTarget};
use super::{truncate, OutboxError, Outcome, MAX_REASON_BYTES, MAX_RESPONSE_BODY_BYTES};

/// Result of one HTTP attempt plus what the metrics/logs need beyond [`Outcome`].
pub(crate) struct HttpAttempt {
    pub outcome: Outcome,
    /// `cxb_outbox_failures_total{reason}` label; None when delivered.
    pub label: Option<&'static str>,
    pub status: Option<u16>,
}

pub(crate) struct HttpDeliverer {
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpDeliverer {
    pub fn new(timeout: Duration) -> Result<HttpDeliverer, OutboxError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cxb-core-outbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OutboxError::Client(error_chain(&e)))?;
        Ok(HttpDeliverer { client, timeout })
    }

    pub async fn send(&self, t: &HttpTarget) -> HttpAttempt {
        let method = match reqwest::Method::from_bytes(t.method.as_bytes()) {
            Ok(m) => m,
            Err(_) => return invalid(format!("invalid HTTP method {:?}", t.method)),
        };
        let mut req = self.client.request(method, &t.url);
        let mut has_content_type = false;
        for (k, v) in &t.headers {
            has_content_type |= k.eq_ignore_ascii_case("content-type");
            req = req.header(k.as_str(), v.as_str());
        }
        if t.body.is_json() && !has_content_type {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if !matches!(t.body, HttpBody::Empty) {
            req = req.body(t.body.as_bytes().to_vec());
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => return invalid(format!("invalid request: {}", error_chain(&e))),
            Err(e) if e.is_timeout() => {
                return retry("timeout", None, format!("timeout after {:?}: {}", self.timeout, error_chain(&e)), None)
            }
            Err(e) => return retry("connect", None, error_chain(&e), None),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        // Read (bounded) even on success so the connection can be reused.
        let body = read_capped(&mut resp, MAX_RESPONSE_BODY_BYTES).await;
        if (200..300).contains(&status) {
            return HttpAttempt { outcome: Outcome::Delivered, label: None, status: Some(status) };
        }
        let reason = truncate(format!("HTTP {status}: {body}"), MAX_REASON_BYTES);
        match status {
            408 => retry("status_408", Some(status), reason, retry_after),
            429 => retry("status_429", Some(status), reason, retry_after),
            500..=599 => retry("status_5xx", Some(status), reason, retry_after),
            300..=399 => HttpAttempt {
                outcome: Outcome::Reject {
                    reason: format!("HTTP {status}: redirects are not followed"),
                    body: Some(body),
                },
                label: Some("redirect"),
                status: Some(status),
            },
            _ => HttpAttempt {
                outcome: Outcome::Reject { reason, body: Some(body) },
                label: Some("rejected_4xx"),
                status: Some(status),
            },
        }
    }
}

fn retry(label: &'static str, status: Option<u16>, reason: String, retry_after: Option<Duration>) -> HttpAttempt {
    HttpAttempt { outcome: Outcome::Retry { reason, retry_after }, label: Some(label), status }
}

fn invalid(reason: String) -> HttpAttempt {
    HttpAttempt { outcome: Outcome::Reject { reason, body: None }, label: Some("invalid"), status: None }
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>` (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is valid RFC 2822.
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&Utc) - now).to_std().unwrap_or(Duration::ZERO))
}

/// Reads at most `cap` bytes of the body; a read error just ends the body
/// (it is diagnostic only).
async fn read_capped(resp: &mut reqwest::Response, cap: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < cap {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(cap - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// reqwest's Display is terse ("error sending request"); the cause chain says
/// what actually happened (connection refused, DNS, TLS…).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    truncate(s, MAX_REASON_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("1994-11-06T08:49:30Z").expect("date").with_timezone(&Utc);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
