//! Executing one tool call: render the request, send it under the tool's timeout, read a bounded
//! response, and turn every outcome into text the LLM can act on.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest::{Request, StatusCode};
use serde_json::Value;
use tracing::{debug, warn};

use crate::config::{header_value, BodySpec, HttpTool};
use crate::CallVariables;

/// Arguments longer than this are refused before parsing: the LLM's output is token-bounded, so
/// anything this large is a malfunction, and it would be copied into the request.
pub const MAX_ARGUMENTS_BYTES: usize = 256 * 1024;

/// At most this much of a 4xx/5xx body is shown to the LLM (error pages can be large HTML).
const ERROR_SNIPPET_BYTES: usize = 512;

/// The result of one tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutcome {
    /// What the LLM sees as the tool result: the response (compact JSON or text) on success, a
    /// one-line `error: …` message otherwise. Never longer than the tool's `max_response_bytes`
    /// (or a short fixed bound for error messages).
    pub content: String,
    /// True when the call failed in any way (bad arguments, HTTP error status, timeout, …).
    pub is_error: bool,
    /// The final HTTP status, when a response head arrived.
    pub status: Option<u16>,
    /// Time from the start of [`HttpTool::run`] to the outcome.
    pub elapsed: Duration,
    /// Response-body bytes received (may exceed the limit by up to one chunk when it was exceeded).
    pub response_bytes: usize,
    /// Why it failed, for telemetry; `None` on success.
    pub error: Option<ToolErrorKind>,
}

/// Failure classes of a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ToolErrorKind {
    /// The LLM's arguments were not a JSON object (or too large).
    InvalidArguments,
    /// A template referenced an argument or call variable that was not given; no request was made.
    MissingValue,
    /// A rendered value was unusable (CR/LF in a header, `..` path segment, URL no longer valid).
    InvalidValue,
    /// The whole request did not finish within the tool's timeout.
    Timeout,
    /// Connecting failed (DNS, TCP, TLS).
    Connect,
    /// The final response had a non-2xx status.
    HttpStatus,
    /// The response body exceeded `max_response_bytes`.
    ResponseTooLarge,
    /// Too many redirects, or a redirect that was refused.
    Redirect,
    /// Any other transport failure (e.g. the connection dropped mid-body).
    Request,
}

impl ToolErrorKind {
    /// A stable snake_case label for telemetry events.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolErrorKind::InvalidArguments => "invalid_arguments",
            ToolErrorKind::MissingValue => "missing_value",
            ToolErrorKind::InvalidValue => "invalid_value",
            ToolErrorKind::Timeout => "timeout",
            ToolErrorKind::Connect => "connect",
            ToolErrorKind::HttpStatus => "http_status",
            ToolErrorKind::ResponseTooLarge => "response_too_large",
            ToolErrorKind::Redirect => "redirect",
            ToolErrorKind::Request => "request",
        }
    }
}

/// Filled in while the request runs, so that a timeout still reports what had arrived.
#[derive(Default)]
struct Progress {
    status: Option<StatusCode>,
    bytes: usize,
}

enum Completed {
    Success(Vec<u8>),
    TooLarge,
    /// Non-2xx: the (bounded) start of the body and whether it was cut.
    Status(Vec<u8>, bool),
}

struct Failure {
    kind: ToolErrorKind,
    message: String,
}

impl Failure {
    fn new(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into() }
    }
}

impl HttpTool {
    /// Runs one call of this tool with the LLM's raw `arguments_json` and the call's variables.
    ///
    /// Never panics and never returns early without an outcome: every failure becomes an
    /// `is_error` outcome whose `content` tells the LLM what went wrong. Use a client from
    /// [`default_client`](crate::default_client) (bounded redirects).
    pub async fn run(&self, client: &reqwest::Client, arguments_json: &str, call: &CallVariables) -> ToolOutcome {
        let started = Instant::now();
        let request = parse_arguments(arguments_json).and_then(|args| self.build_request(client, &args, call));
        let request = match request {
            Ok(r) => r,
            Err(f) => {
                warn!(tool = %self.name, kind = f.kind.as_str(), "tool call not sent: {}", f.message);
                return self.outcome(started, Err(f), &Progress::default());
            }
        };
        let host = request.url().host_str().unwrap_or_default().to_string();

        let mut progress = Progress::default();
        // One deadline over connect, send, redirects and the body read: a server trickling bytes
        // cannot hold the call past the tool's timeout.
        let result = match tokio::time::timeout(self.timeout, self.execute(client, request, &mut progress)).await {
            Ok(r) => r,
            Err(_) => {
                Err(Failure::new(ToolErrorKind::Timeout, format!("timed out after {} ms", self.timeout.as_millis())))
            }
        };
        let out = self.outcome(started, result, &progress);
        if out.is_error {
            warn!(
                tool = %self.name, method = %self.method, %host, status = out.status, kind = out.error.map(ToolErrorKind::as_str),
                elapsed_ms = out.elapsed.as_millis() as u64, bytes = out.response_bytes, "tool call failed: {}", out.content
            );
        } else {
            debug!(
                tool = %self.name, method = %self.method, %host, status = out.status,
                elapsed_ms = out.elapsed.as_millis() as u64, bytes = out.response_bytes, "tool call succeeded"
            );
        }
        out
    }

    /// Like [`run`](Self::run), but calls `on_pre_message` with the tool's pre-message if the call
    /// is still running after [`pre_message_after`](Self::pre_message_after). The callback runs
    /// at most once, and never when the tool has no pre-message or finishes first.
    pub async fn run_with_pre_message<F>(
        &self,
        client: &reqwest::Client,
        arguments_json: &str,
        call: &CallVariables,
        on_pre_message: F,
    ) -> ToolOutcome
    where
        F: FnOnce(&str),
    {
        let run = self.run(client, arguments_json, call);
        let Some(message) = self.pre_message() else { return run.await };
        tokio::pin!(run);
        tokio::select! {
            // Prefer the outcome when both are ready: no pre-message for a call that is done.
            biased;
            out = &mut run => out,
            _ = tokio::time::sleep(self.pre_message_after) => {
                on_pre_message(message);
                run.await
            }
        }
    }

    fn build_request(&self, client: &reqwest::Client, args: &Value, call: &CallVariables) -> Result<Request, Failure> {
        let render_err = |e: crate::template::RenderError| {
            let kind = match e {
                crate::template::RenderError::DotSegment(_) => ToolErrorKind::InvalidValue,
                _ => ToolErrorKind::MissingValue,
            };
            Failure::new(kind, e.to_string())
        };

        let url_text = self.url.render_url(args, call).map_err(render_err)?;
        let mut url = url::Url::parse(&url_text)
            .map_err(|e| Failure::new(ToolErrorKind::InvalidValue, format!("the rendered URL is invalid ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(Failure::new(ToolErrorKind::InvalidValue, "the rendered URL is not an http(s) URL"));
        }
        if !self.query.is_empty() {
            let mut rendered = Vec::with_capacity(self.query.len());
            for (k, t) in &self.query {
                rendered.push((k, t.render_text(args, call).map_err(render_err)?));
            }
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &rendered {
                pairs.append_pair(k, v);
            }
        }

        let mut headers = HeaderMap::with_capacity(self.headers.len() + 2);
        for (name, t) in &self.headers {
            let text = t.render_text(args, call).map_err(render_err)?;
            let value = header_value(&text).ok_or_else(|| {
                Failure::new(
                    ToolErrorKind::InvalidValue,
                    format!("the value for header \"{name}\" contains a line break or control character"),
                )
            })?;
            headers.append(name.clone(), value);
        }
        if !headers.contains_key(ACCEPT) {
            headers
                .insert(ACCEPT, reqwest::header::HeaderValue::from_static("application/json, text/*;q=0.9, */*;q=0.5"));
        }

        let body = match &self.body {
            BodySpec::Empty => None,
            BodySpec::Arguments => Some(args.clone()),
            BodySpec::Template(t) => Some(t.render(args, call).map_err(render_err)?),
        };
        let mut builder = client.request(self.method.clone(), url);
        if let Some(body) = body {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, reqwest::header::HeaderValue::from_static("application/json"));
            }
            // Serialising a `Value` cannot fail (its keys are strings); map it anyway, no panics.
            let bytes = serde_json::to_vec(&body)
                .map_err(|e| Failure::new(ToolErrorKind::InvalidValue, format!("could not encode the body ({e})")))?;
            builder = builder.body(bytes);
        }
        builder.headers(headers).build().map_err(|e| {
            Failure::new(ToolErrorKind::InvalidValue, format!("could not build the request ({})", e.without_url()))
        })
    }

    async fn execute(
        &self,
        client: &reqwest::Client,
        request: Request,
        progress: &mut Progress,
    ) -> Result<Completed, Failure> {
        let mut response = client.execute(request).await.map_err(transport_failure)?;
        let status = response.status();
        progress.status = Some(status);
        let success = status.is_success();
        let limit = if success { self.max_response_bytes } else { ERROR_SNIPPET_BYTES.min(self.max_response_bytes) };

        // A declared length over the limit fails without reading anything.
        if success && response.content_length().is_some_and(|n| n > limit as u64) {
            return Ok(Completed::TooLarge);
        }
        let capacity = response.content_length().map_or(limit, |n| (n as usize).min(limit));
        let mut buf = Vec::with_capacity(capacity);
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                // For an error status, the status is the news; a broken error body is not.
                Err(_) if !success => break,
                Err(e) => return Err(transport_failure(e)),
            };
            progress.bytes += chunk.len();
            let room = limit - buf.len();
            if chunk.len() > room {
                // Stop here: dropping `response` closes the connection rather than draining it.
                if success {
                    return Ok(Completed::TooLarge);
                }
                buf.extend_from_slice(&chunk[..room]);
                return Ok(Completed::Status(buf, true));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(if success { Completed::Success(buf) } else { Completed::Status(buf, false) })
    }

    fn outcome(&self, started: Instant, result: Result<Completed, Failure>, progress: &Progress) -> ToolOutcome {
        let status = progress.status;
        let (content, error) = match result {
            Ok(Completed::Success(body)) => (success_content(&body, status, self.max_response_bytes), None),
            Ok(Completed::TooLarge) => (
                format!("error: response exceeded {} bytes", self.max_response_bytes),
                Some(ToolErrorKind::ResponseTooLarge),
            ),
            Ok(Completed::Status(snippet, cut)) => {
                let status = status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut text = format!("error: HTTP {status}");
                let body = String::from_utf8_lossy(&snippet);
                let body = body.trim();
                if !body.is_empty() {
                    text.push_str(": ");
                    text.push_str(truncate_chars(body, ERROR_SNIPPET_BYTES));
                    if cut {
                        text.push('…');
                    }
                }
                (text, Some(ToolErrorKind::HttpStatus))
            }
            Err(f) => (format!("error: {}", f.message), Some(f.kind)),
        };
        ToolOutcome {
            content,
            is_error: error.is_some(),
            status: status.map(|s| s.as_u16()),
            elapsed: started.elapsed(),
            response_bytes: progress.bytes,
            error,
        }
    }
}

/// An empty string (some models send that for no-argument tools) and `null` mean `{}`.
fn parse_arguments(arguments_json: &str) -> Result<Value, Failure> {
    if arguments_json.len() > MAX_ARGUMENTS_BYTES {
        return Err(Failure::new(
            ToolErrorKind::InvalidArguments,
            format!("the arguments are larger than {MAX_ARGUMENTS_BYTES} bytes"),
        ));
    }
    let trimmed = arguments_json.trim();
    if trimmed.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Null) => Ok(Value::Object(Default::default())),
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Failure::new(ToolErrorKind::InvalidArguments, "invalid arguments: expected a JSON object")),
        Err(e) => Err(Failure::new(ToolErrorKind::InvalidArguments, format!("invalid arguments JSON: {e}"))),
    }
}

fn transport_failure(e: reqwest::Error) -> Failure {
    // `without_url`: the URL may carry credentials in its query and must not reach the LLM.
    let e = e.without_url();
    if e.is_timeout() {
        // Only reachable if the caller's client has its own, shorter timeout.
        Failure::new(ToolErrorKind::Timeout, "timed out (client timeout)")
    } else if e.is_redirect() {
        Failure::new(ToolErrorKind::Redirect, "too many redirects (or a refused redirect)")
    } else if e.is_connect() {
        Failure::new(ToolErrorKind::Connect, "could not connect to the tool's server")
    } else if e.is_body() || e.is_decode() {
        Failure::new(ToolErrorKind::Request, "the response body could not be read")
    } else {
        Failure::new(ToolErrorKind::Request, "the request failed before a response arrived")
    }
}

fn success_content(body: &[u8], status: Option<StatusCode>, limit: usize) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        let status = status.map_or(200, |s| s.as_u16());
        return format!("ok (HTTP {status}, empty response)");
    }
    let text = if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        // Strip insignificant whitespace without re-serialising: keeps key order and number
        // spelling exactly as the server sent them, and can only shrink the text.
        String::from_utf8_lossy(&minify_json(body)).into_owned()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    // Lossy decoding can grow invalid bytes into U+FFFD; keep the promised bound.
    let cut = truncate_chars(&text, limit).len();
    let mut text = text;
    text.truncate(cut);
    text
}

/// Removes whitespace outside strings from valid JSON.
fn minify_json(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in src {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    out
}

/// The longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn truncate_chars(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minify_keeps_strings_and_order() {
        let src = br#" { "b" : [1, 2.50 ,{"s":"a \" b\\ ", "t":"x\ny"}], "a":1e3 } "#;
        assert_eq!(minify_json(src), br#"{"b":[1,2.50,{"s":"a \" b\\ ","t":"x\ny"}],"a":1e3}"#.to_vec());
    }

    #[test]
    fn success_content_rules() {
        assert_eq!(success_content(b" {\"a\": 1} ", None, 100), r#"{"a":1}"#);
        assert_eq!(success_content(b"plain text", None, 100), "plain text");
        assert_eq!(success_content(b"", Some(StatusCode::NO_CONTENT), 100), "ok (HTTP 204, empty response)");
        // Invalid UTF-8 becomes U+FFFD (3 bytes each) and is cut back to the limit on a boundary.
        let out = success_content(&[0xff; 10], None, 10);
        assert!(out.len() <= 10 && out.chars().all(|c| c == '\u{fffd}'), "{out:?}");
    }

    #[test]
    fn arguments_parsing() {
        assert_eq!(parse_arguments("").ok(), Some(serde_json::json!({})));
        assert_eq!(parse_arguments(" null ").ok(), Some(serde_json::json!({})));
        assert_eq!(parse_arguments(r#"{"a":1}"#).ok(), Some(serde_json::json!({"a": 1})));
        let e = parse_arguments("[1]").err().unwrap();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ToolErrorKind::InvalidArguments, "invalid arguments: expected a JSON object")
        );
        let e = parse_arguments("{\"a\":").err().unwrap();
        assert!(e.message.starts_with("invalid arguments JSON: "), "{}", e.message);
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_ARGUMENTS_BYTES));
        assert_eq!(parse_arguments(&big).err().unwrap().kind, ToolErrorKind::InvalidArguments);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "h");
        assert_eq!(truncate_chars("héllo", 3), "hé");
        assert_eq!(truncate_chars("abc", 10), "abc");
    }
}
