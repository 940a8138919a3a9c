//! The CXB API backend: `POST {api_base}/knowledge/search` (contract §3 row 8; the path and body
//! are this project's decision, the original's were not recovered).
//!
//! Request (both secret headers, as every outbound CXB API call, contract §13.2):
//!
//! ```json
//! {"query": "refund policy", "kb_ids": ["kb_1"], "top_k": 3, "score_threshold": 0.2,
//!  "bot_id": "demo", "session_id": "…"}
//! ```
//!
//! Response: `{"results": [{"chunk_id", "document_id", "kb_id", "text", "score", "title"?}]}`.
//! Read liberally: unknown fields are ignored; a bare array is taken as the results; `content`
//! stands for `text` and `id` for `chunk_id`; ids may be numbers; `score` may be a number or a
//! numeric string (missing: 0) and is clamped to 0..=1; items without text are skipped. The hits
//! are then sorted, filtered by the threshold and cut to `top_k` here too, so a service that
//! ignores those fields still gives the LLM what the bot asked for.
//!
//! Bounded: one deadline over connect, send and the whole body read; the body is refused past
//! [`DEFAULT_MAX_RESPONSE_BYTES`] (or the configured cap).

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;
use tracing::{debug, warn};

use crate::query::{clamp_unit, finish_hits};
use crate::{Hit, KnowledgeError, KnowledgeQuery, KnowledgeSource};
use cxb_wire::knowledge::{lenient_id as id_text, lenient_number as number};

/// Both spellings of the shared secret header; outbound requests send both (contract §13.2).
pub const SECRET_HEADERS: [&str; 2] = ["X-CXBCore-Secret", "X-CXB-Core-Secret"];

/// Largest response body read (ten chunks of 1,200 characters are ~50 KB even in Devanagari).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How much of an error body is kept in [`KnowledgeError::Status`].
const ERROR_DETAIL_CHARS: usize = 300;

/// Searches through CXB API.
#[derive(Debug, Clone)]
pub struct ApiKnowledge {
    endpoint: url::Url,
    secret: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
    max_response_bytes: usize,
}

impl ApiKnowledge {
    /// A client for `{api_base}/knowledge/search`, where `api_base` is CXB API's `…/api/v1`
    /// (the config URL without its `/config`). `timeout` bounds each whole search.
    pub fn new(
        api_base: &str,
        secret: Option<String>,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<ApiKnowledge, KnowledgeError> {
        let endpoint = format!("{}/knowledge/search", api_base.trim().trim_end_matches('/'));
        let endpoint = url::Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()))
            .ok_or_else(|| {
                KnowledgeError::InvalidConfig(format!("knowledge API base {api_base:?} is not an http(s) URL"))
            })?;
        Ok(ApiKnowledge { endpoint, secret, http, timeout, max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES })
    }

    /// Refuse response bodies larger than `bytes` (at least 1).
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes.max(1);
        self
    }

    /// The URL searches are posted to.
    pub fn endpoint(&self) -> &url::Url {
        &self.endpoint
    }

    /// One search (the [`KnowledgeSource`] implementation).
    pub async fn search_api(&self, query: &KnowledgeQuery) -> Result<Vec<Hit>, KnowledgeError> {
        let query = query.bounded();
        if query.query.is_empty() {
            return Err(KnowledgeError::EmptyQuery);
        }
        let result = tokio::time::timeout(self.timeout, self.post(&query)).await;
        let out = match result {
            Ok(r) => r,
            Err(_) => Err(KnowledgeError::Timeout(self.timeout)),
        };
        match &out {
            Ok(hits) => debug!(hits = hits.len(), bot_id = %query.bot_id, "knowledge search answered"),
            Err(e) => warn!(kind = e.kind(), bot_id = %query.bot_id, "knowledge search failed: {e}"),
        }
        out
    }

    async fn post(&self, query: &KnowledgeQuery) -> Result<Vec<Hit>, KnowledgeError> {
        let body = serde_json::to_vec(query).map_err(|e| KnowledgeError::Internal(e.to_string()))?;
        let mut req = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body);
        if let Some(secret) = &self.secret {
            for name in SECRET_HEADERS {
                req = req.header(name, secret);
            }
        }
        let mut resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        let limit = if status.is_success() { self.max_response_bytes } else { ERROR_DETAIL_CHARS * 4 };
        if status.is_success() && resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(KnowledgeError::ResponseTooLarge(limit));
        }
        let mut buf = Vec::with_capacity(resp.content_length().map_or(8192, |n| n as usize).min(limit));
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                // For an error status the status is the news; a broken error body is not.
                Err(_) if !status.is_success() => break,
                Err(e) => return Err(transport_error(e)),
            };
            if buf.len() + chunk.len() > limit {
                if status.is_success() {
                    return Err(KnowledgeError::ResponseTooLarge(limit));
                }
                buf.extend_from_slice(&chunk[..limit - buf.len()]);
                break;
            }
            buf.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(KnowledgeError::Status { status: status.as_u16(), detail: error_detail(&buf) });
        }
        parse_response(&buf, query)
    }
}

impl KnowledgeSource for ApiKnowledge {
    fn search<'a>(&'a self, query: &'a KnowledgeQuery) -> BoxFuture<'a, Result<Vec<Hit>, KnowledgeError>> {
        Box::pin(self.search_api(query))
    }

    fn name(&self) -> &'static str {
        "cxb_api"
    }
}

fn transport_error(e: reqwest::Error) -> KnowledgeError {
    // `without_url`: the URL must not reach logs or the LLM through the message.
    let e = e.without_url();
    if e.is_connect() {
        KnowledgeError::Connect
    } else if e.is_timeout() {
        KnowledgeError::Request("the HTTP client timed out".into())
    } else {
        KnowledgeError::Request(e.to_string())
    }
}

/// `detail` of a JSON error body (FastAPI style), else the start of the body as text. Public for
/// the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn error_detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let detail = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    detail.chars().take(ERROR_DETAIL_CHARS).collect()
}

/// Reads a search response liberally (see the module docs).
pub fn parse_response(body: &[u8], query: &KnowledgeQuery) -> Result<Vec<Hit>, KnowledgeError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| KnowledgeError::InvalidResponse(format!("not JSON ({})", json_error_kind(&e))))?;
    let items = match &v {
        Value::Array(items) => items,
        Value::Object(o) => match o.get("results") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => return Err(KnowledgeError::InvalidResponse("no \"results\" array".into())),
            Some(_) => return Err(KnowledgeError::InvalidResponse("\"results\" is not an array".into())),
        },
        _ => return Err(KnowledgeError::InvalidResponse("expected an object with \"results\"".into())),
    };
    let hits = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let o = item.as_object()?;
            let text = o.get("text").or_else(|| o.get("content")).and_then(Value::as_str)?;
            if text.trim().is_empty() {
                return None;
            }
            let document_id = o.get("document_id").and_then(id_text).unwrap_or_default();
            let chunk_id = o
                .get("chunk_id")
                .or_else(|| o.get("id"))
                .and_then(id_text)
                .unwrap_or_else(|| format!("{document_id}#{i}"));
            Some(Hit {
                chunk_id,
                document_id,
                kb_id: o.get("kb_id").and_then(id_text).unwrap_or_default(),
                text: text.to_string(),
                score: clamp_unit(o.get("score").and_then(number).unwrap_or(0.0)),
                title: o
                    .get("title")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
            })
        })
        .collect();
    Ok(finish_hits(hits, query))
}

/// Names what serde_json found wrong without echoing the body.
fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "truncated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(top_k: u32, threshold: f64) -> KnowledgeQuery {
        let mut q = KnowledgeQuery::new("x", vec![]);
        q.top_k = top_k;
        q.score_threshold = threshold;
        q
    }

    #[test]
    fn responses_are_read_liberally() {
        let body = json!({"results": [
            {"chunk_id": "c1", "document_id": "d1", "kb_id": "kb", "text": "one", "score": "0.42", "title": "T", "extra": 1},
            {"id": 7, "document_id": 9, "kb_id": 3, "content": "two", "score": 0.9, "title": null},
            {"chunk_id": "c3", "text": "   ", "score": 1},
            {"chunk_id": "c4", "score": 1},
            "junk",
            {"chunk_id": "c5", "text": "five", "score": 7.5},
            {"chunk_id": "c6", "text": "six"}
        ], "took_ms": 12});
        let hits = parse_response(body.to_string().as_bytes(), &q(10, 0.0)).unwrap_or_default();
        let got: Vec<(&str, f64, Option<&str>)> =
            hits.iter().map(|h| (h.chunk_id.as_str(), h.score, h.title.as_deref())).collect();
        assert_eq!(got, [("c5", 1.0, None), ("7", 0.9, None), ("c1", 0.42, Some("T")), ("c6", 0.0, None)]);
        assert_eq!((hits[1].document_id.as_str(), hits[1].kb_id.as_str(), hits[1].text.as_str()), ("9", "3", "two"));

        let bare = json!([{"chunk_id": "a", "text": "t", "score": 0.1}, {"chunk_id": "b", "text": "t", "score": 0.6}]);
        let hits = parse_response(bare.to_string().as_bytes(), &q(1, 0.5)).unwrap_or_default();
        assert_eq!(hits.iter().map(|h| h.chunk_id.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn unusable_responses_are_typed_errors() {
        for (body, needle) in [
            (&b"<html>"[..], "syntax error"),
            (&b"{\"results\": {}}"[..], "not an array"),
            (&b"{\"hits\": []}"[..], "no \"results\""),
            (&b"42"[..], "expected an object"),
            (&b"{\"results\": ["[..], "truncated"),
        ] {
            let err = parse_response(body, &q(3, 0.0)).expect_err("invalid");
            assert!(matches!(err, KnowledgeError::InvalidResponse(_)), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
        assert_eq!(parse_response(b"{\"results\": []}", &q(3, 0.0)).map(|h| h.len()).ok(), Some(0));
    }

    #[test]
    fn the_endpoint_is_derived_from_the_api_base() {
        let c = reqwest::Client::new();
        let t = Duration::from_secs(1);
        let a = ApiKnowledge::new("https://api.example.com/api/v1/", None, c.clone(), t).expect("valid");
        assert_eq!(a.endpoint().as_str(), "https://api.example.com/api/v1/knowledge/search");
        for bad in ["", "ftp://x/api/v1", "not a url", "mailto:ops@example.com"] {
            assert!(
                matches!(ApiKnowledge::new(bad, None, c.clone(), t), Err(KnowledgeError::InvalidConfig(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_details_prefer_the_json_detail() {
        assert_eq!(error_detail(br#"{"detail":"kb not found"}"#), "kb not found");
        assert_eq!(error_detail(b"  Bad Gateway \n"), "Bad Gateway");
        assert_eq!(error_detail("é".repeat(400).as_bytes()).chars().count(), ERROR_DETAIL_CHARS);
    }
}
