//! Parsing the `http` bindings of a bot config's `tools` list into a [`ToolRegistry`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::template::{JsonTemplate, Template, TemplateError};

/// Default for `timeout_ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);
/// `timeout_ms` is clamped into this range (milliseconds).
pub const TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=30_000;
/// Default for `pre_message_after_ms`.
pub const DEFAULT_PRE_MESSAGE_AFTER: Duration = Duration::from_millis(1500);
/// Default for `max_response_bytes`.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// Upper clamp for `max_response_bytes` (1 MiB): the body is buffered, and it all goes to the LLM.
pub const MAX_RESPONSE_BYTES_LIMIT: usize = 1024 * 1024;

/// Headers a binding may not set: they define message framing or the connection, which the HTTP
/// client owns; a configured value would at best be ignored and at worst desynchronise the stream.
const FORBIDDEN_HEADERS: &[&str] =
    &["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer", "host"];

const HTTP_KEYS: &[&str] = &[
    "method",
    "url",
    "headers",
    "query",
    "body",
    "timeout_ms",
    "pre_message",
    "pre_message_after_ms",
    "max_response_bytes",
];

/// One problem in the `tools` list. The tool it concerns is left out of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("tools[{index}]{}: {kind}", fmt_name(.name))]
pub struct ToolConfigError {
    /// Position in the `tools` array.
    pub index: usize,
    /// The tool's name, when it could be read.
    pub name: Option<String>,
    /// What is wrong.
    pub kind: ToolConfigErrorKind,
}

fn fmt_name(name: &Option<String>) -> String {
    name.as_ref().map(|n| format!(" ({n:?})")).unwrap_or_default()
}

/// What is wrong with a tool entry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ToolConfigErrorKind {
    /// The entry is not a JSON object.
    #[error("tool entry is not an object")]
    NotAnObject,
    /// `function` is present but not an object.
    #[error("\"function\" is not an object")]
    InvalidFunction,
    /// No non-empty string `name` (in `function`, or top level for the bare form).
    #[error("tool has an http binding but no name")]
    MissingName,
    /// An earlier tool with an http binding has the same name.
    #[error("duplicate tool name")]
    DuplicateName,
    /// `http` given both at the top level and inside `function`.
    #[error("\"http\" is given both at the top level and inside \"function\"")]
    HttpInTwoPlaces,
    /// `http` is not an object.
    #[error("\"http\" is not an object")]
    HttpNotObject,
    /// A key in `http` this version does not know (typos would otherwise silently drop, say, auth).
    #[error("unknown field \"http.{0}\"")]
    UnknownField(String),
    /// `method` is not one of GET, POST, PUT, PATCH, DELETE.
    #[error("invalid method {0:?} (expected GET, POST, PUT, PATCH or DELETE)")]
    InvalidMethod(String),
    /// `url` is absent or not a string.
    #[error("missing \"http.url\" (a string)")]
    MissingUrl,
    /// `url` does not form an absolute http(s) URL.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// A template in `field` does not compile.
    #[error("invalid template in {field}: {error}")]
    InvalidTemplate {
        /// e.g. `http.url`, `http.headers.X-Call`, `http.body`.
        field: String,
        /// The template problem.
        error: TemplateError,
    },
    /// A header name is not a valid HTTP token.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// A header the HTTP client owns (framing/connection).
    #[error("header {0:?} may not be set by a tool")]
    ForbiddenHeader(String),
    /// A header value contains CR, LF or another control character.
    #[error("invalid value for header {0:?} (control characters are not allowed)")]
    InvalidHeaderValue(String),
    /// A field has the wrong JSON type or range.
    #[error("\"{field}\" must be {expected}")]
    InvalidField {
        /// e.g. `http.timeout_ms`.
        field: String,
        /// What was expected.
        expected: &'static str,
    },
    /// `body` given for a GET (GET requests never carry a body).
    #[error("\"http.body\" is not allowed with GET")]
    BodyWithGet,
}

/// What a request carries as its body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BodySpec {
    /// No body (GET, or `"body": null`).
    Empty,
    /// The LLM's arguments object as-is (the default for non-GET).
    Arguments,
    /// A configured JSON template.
    Template(JsonTemplate),
}

/// One custom tool with a valid HTTP binding, ready to [`run`](HttpTool::run).
///
/// `Debug` never prints header values or the URL template's text (they carry credentials).
#[derive(Clone)]
pub struct HttpTool {
    pub(crate) name: String,
    pub(crate) method: Method,
    pub(crate) url: Template,
    pub(crate) query: Vec<(String, Template)>,
    pub(crate) headers: Vec<(HeaderName, Template)>,
    pub(crate) body: BodySpec,
    pub(crate) timeout: Duration,
    pub(crate) pre_message: Option<String>,
    pub(crate) pre_message_after: Duration,
    pub(crate) max_response_bytes: usize,
}

impl fmt::Debug for HttpTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTool")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("headers", &self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("pre_message", &self.pre_message)
            .field("pre_message_after", &self.pre_message_after)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl HttpTool {
    /// The function name the LLM calls.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Bound on the whole request: connect, send, and reading the response body.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Spoken when the call is still running after [`pre_message_after`](Self::pre_message_after).
    pub fn pre_message(&self) -> Option<&str> {
        self.pre_message.as_deref()
    }

    /// How long to wait before speaking the pre-message.
    pub fn pre_message_after(&self) -> Duration {
        self.pre_message_after
    }

    /// The most response-body bytes read; a longer body is an error.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }
}

/// The tools of one bot config that have valid HTTP bindings, by name.
#[derive(Debug, Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, HttpTool>,
}

impl ToolRegistry {
    /// Reads every entry of a config's `tools` list. Entries without an `http` binding are not
    /// errors (they are served elsewhere or not at all) and are simply absent; entries with an
    /// invalid binding are reported and absent. Never panics on any input.
    pub fn from_config(tools: &[Value]) -> (ToolRegistry, Vec<ToolConfigError>) {
        let mut reg = ToolRegistry::default();
        let mut errors = Vec::new();
        for (index, entry) in tools.iter().enumerate() {
            match parse_entry(entry) {
                Ok(None) => {}
                Ok(Some(tool)) => {
                    if reg.tools.contains_key(&tool.name) {
                        errors.push(ToolConfigError {
                            index,
                            name: Some(tool.name),
                            kind: ToolConfigErrorKind::DuplicateName,
                        });
                    } else {
                        reg.tools.insert(tool.name.clone(), tool);
                    }
                }
                Err((name, kind)) => errors.push(ToolConfigError { index, name, kind }),
            }
        }
        (reg, errors)
    }

    /// The tool named `name`, if it has a valid HTTP binding.
    pub fn get(&self, name: &str) -> Option<&HttpTool> {
        self.tools.get(name)
    }

    /// Tool names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    /// All tools, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &HttpTool> {
        self.tools.values()
    }

    /// Number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when no tool has a valid binding.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// The OpenAI `{"type":"function","function":{…}}` definition to offer the LLM for one config
/// entry, in either accepted form, with every `http` key removed so URLs and credentials never
/// reach the model. Top-level keys other than `type`/`function` are dropped (the API knows no
/// others). A non-object entry is returned unchanged.
pub fn llm_definition(tool: &Value) -> Value {
    let Some(obj) = tool.as_object() else { return tool.clone() };
    let mut function = match obj.get("function") {
        Some(Value::Object(f)) => f.clone(),
        // A wrapped entry whose "function" is not an object: pass it through minus the binding;
        // the LLM API will reject it loudly, which beats guessing.
        Some(_) => {
            let mut o = obj.clone();
            o.remove("http");
            return Value::Object(o);
        }
        None => {
            let mut f = obj.clone();
            f.remove("type");
            f
        }
    };
    function.remove("http");
    let mut out = Map::new();
    out.insert("type".into(), Value::String("function".into()));
    out.insert("function".into(), Value::Object(function));
    Value::Object(out)
}

type EntryError = (Option<String>, ToolConfigErrorKind);

fn parse_entry(entry: &Value) -> Result<Option<HttpTool>, EntryError> {
    let obj = entry.as_object().ok_or((None, ToolConfigErrorKind::NotAnObject))?;
    let function = match obj.get("function") {
        None => None,
        Some(Value::Object(f)) => Some(f),
        Some(_) => return Err((None, ToolConfigErrorKind::InvalidFunction)),
    };
    let name_source = function.unwrap_or(obj);
    let name = name_source.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string);

    // `"http": null` is the same as no binding.
    let top = obj.get("http").filter(|h| !h.is_null());
    let inner = function.and_then(|f| f.get("http")).filter(|h| !h.is_null());
    let http = match (top, inner) {
        (None, None) => return Ok(None),
        (Some(h), None) | (None, Some(h)) => h,
        (Some(_), Some(_)) => return Err((name, ToolConfigErrorKind::HttpInTwoPlaces)),
    };
    let Some(name) = name else { return Err((None, ToolConfigErrorKind::MissingName)) };
    match parse_http(name.clone(), http) {
        Ok(t) => Ok(Some(t)),
        Err(kind) => Err((Some(name), kind)),
    }
}

fn invalid(field: &str, expected: &'static str) -> ToolConfigErrorKind {
    ToolConfigErrorKind::InvalidField { field: field.to_string(), expected }
}

fn template(field: String, src: &str) -> Result<Template, ToolConfigErrorKind> {
    Template::parse(src).map_err(|error| ToolConfigErrorKind::InvalidTemplate { field, error })
}

/// A non-negative integer number of milliseconds/bytes. Whole-valued floats (`5000.0`) are
/// accepted because some config editors emit them.
fn non_negative_int(http: &Map<String, Value>, key: &str) -> Result<Option<u64>, ToolConfigErrorKind> {
    let Some(v) = http.get(key) else { return Ok(None) };
    if v.is_null() {
        return Ok(None);
    }
    if let Some(n) = v.as_u64() {
        return Ok(Some(n));
    }
    match v.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 => Ok(Some(f.min(u64::MAX as f64) as u64)),
        _ => Err(invalid(&format!("http.{key}"), "a non-negative integer")),
    }
}

fn parse_http(name: String, http: &Value) -> Result<HttpTool, ToolConfigErrorKind> {
    let http = http.as_object().ok_or(ToolConfigErrorKind::HttpNotObject)?;
    if let Some(k) = http.keys().find(|k| !HTTP_KEYS.contains(&k.as_str())) {
        return Err(ToolConfigErrorKind::UnknownField(k.clone()));
    }

    let method = match http.get("method") {
        None | Some(Value::Null) => Method::POST,
        Some(Value::String(m)) => match m.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            _ => return Err(ToolConfigErrorKind::InvalidMethod(m.clone())),
        },
        Some(other) => return Err(ToolConfigErrorKind::InvalidMethod(other.to_string())),
    };

    let url_src = http.get("url").and_then(Value::as_str).ok_or(ToolConfigErrorKind::MissingUrl)?;
    let url = template("http.url".into(), url_src)?;
    // Placeholders stand for values, never URL structure: with each replaced by a plain sample
    // the template must already be an absolute http(s) URL with a host.
    let sample = url.render_with_sample("x");
    let parsed = url::Url::parse(&sample).map_err(|e| ToolConfigErrorKind::InvalidUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ToolConfigErrorKind::InvalidUrl(format!("scheme {:?} is not http or https", parsed.scheme())));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ToolConfigErrorKind::InvalidUrl("no host".into()));
    }

    let mut query = Vec::new();
    match http.get("query") {
        None | Some(Value::Null) => {}
        Some(Value::Object(q)) => {
            for (k, v) in q {
                let field = format!("http.query.{k}");
                let t = match v {
                    Value::String(s) => template(field, s)?,
                    Value::Number(_) | Value::Bool(_) => template(field, &v.to_string())?,
                    _ => return Err(invalid(&field, "a string, number or boolean")),
                };
                query.push((k.clone(), t));
            }
        }
        Some(_) => return Err(invalid("http.query", "an object")),
    }

    let mut headers = Vec::new();
    match http.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let hn = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| ToolConfigErrorKind::InvalidHeaderName(k.clone()))?;
                if FORBIDDEN_HEADERS.contains(&hn.as_str()) {
                    return Err(ToolConfigErrorKind::ForbiddenHeader(k.clone()));
                }
                let field = format!("http.headers.{k}");
                let src = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    _ => return Err(invalid(&field, "a string")),
                };
                let t = template(field, &src)?;
                // The literal parts must already be a valid header value.
                if header_value(&t.render_with_sample("x")).is_none() {
                    return Err(ToolConfigErrorKind::InvalidHeaderValue(k.clone()));
                }
                headers.push((hn, t));
            }
        }
        Some(_) => return Err(invalid("http.headers", "an object")),
    }

    let body = match http.get("body") {
        None if method == Method::GET => BodySpec::Empty,
        None => BodySpec::Arguments,
        Some(Value::Null) => BodySpec::Empty,
        Some(_) if method == Method::GET => return Err(ToolConfigErrorKind::BodyWithGet),
        Some(b) => BodySpec::Template(
            JsonTemplate::parse(b)
                .map_err(|error| ToolConfigErrorKind::InvalidTemplate { field: "http.body".into(), error })?,
        ),
    };

    let timeout_ms = non_negative_int(http, "timeout_ms")?
        .map(|ms| ms.clamp(*TIMEOUT_RANGE_MS.start(), *TIMEOUT_RANGE_MS.end()))
        .unwrap_or(DEFAULT_TIMEOUT.as_millis() as u64);
    let pre_message_after = non_negative_int(http, "pre_message_after_ms")?
        .map(|ms| Duration::from_millis(ms.min(*TIMEOUT_RANGE_MS.end())))
        .unwrap_or(DEFAULT_PRE_MESSAGE_AFTER);
    let max_response_bytes = non_negative_int(http, "max_response_bytes")?
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX).clamp(1, MAX_RESPONSE_BYTES_LIMIT))
        .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
    let pre_message = match http.get("pre_message") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("http.pre_message", "a string")),
    };

    Ok(HttpTool {
        name,
        method,
        url,
        query,
        headers,
        body,
        timeout: Duration::from_millis(timeout_ms),
        pre_message,
        pre_message_after,
        max_response_bytes,
    })
}

/// A header value, or `None` when it contains CR, LF or another control character (HTAB allowed).
/// Checked explicitly rather than trusting the HTTP library alone: CR/LF in a value is header
/// injection.
pub(crate) fn header_value(s: &str) -> Option<HeaderValue> {
    if s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    HeaderValue::from_bytes(s.as_bytes()).ok()
}
