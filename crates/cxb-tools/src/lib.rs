//! Custom HTTP tools for bot configs (contract §3 #9, §7).
//!
//! A bot config's `tools` list holds OpenAI function definitions, either wrapped
//! (`{"type":"function","function":{"name","description","parameters"}}`) or bare
//! (`{"name","description","parameters"}`). A tool becomes callable over HTTP when its entry also
//! carries an `"http"` binding: at the top level of the entry (next to `type`/`function`, or next
//! to `name` in the bare form); inside `function` is accepted too, but not both.
//!
//! ```json
//! {
//!   "type": "function",
//!   "function": {"name": "order_status", "description": "…", "parameters": {"type": "object", …}},
//!   "http": {
//!     "method": "GET",
//!     "url": "https://api.example.com/orders/{{args.order_id}}?caller={{call.caller_id}}",
//!     "headers": {"Authorization": "Bearer abc", "X-Call": "{{call.session_id}}"},
//!     "query": {"k": "{{args.x}}"},
//!     "body": {"id": "{{args.order_id}}", "note": "from {{call.did}}"},
//!     "timeout_ms": 5000,
//!     "pre_message": "Let me check that for you.",
//!     "pre_message_after_ms": 1500,
//!     "max_response_bytes": 16384
//!   }
//! }
//! ```
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `method` | string | `POST` | `GET`, `POST`, `PUT`, `PATCH` or `DELETE` (case-insensitive) |
//! | `url` | string template | required | absolute `http(s)` URL; values are percent-encoded |
//! | `headers` | object of string templates | none | values inserted as text; CR/LF refused |
//! | `query` | object of string templates | none | appended form-encoded to the URL's query |
//! | `body` | any JSON template | the LLM's arguments (non-GET) | `null` = no body; not allowed with GET |
//! | `timeout_ms` | integer | 5000 | clamped to 100..=30000; bounds the whole request incl. body |
//! | `pre_message` | string | none | spoken when the call takes longer than `pre_message_after_ms` |
//! | `pre_message_after_ms` | integer | 1500 | at most 30000 |
//! | `max_response_bytes` | integer | 16384 | clamped to 1..=1 MiB; a longer body is an error |
//!
//! Unknown keys in `http` are config errors (a typo such as `header` would otherwise silently send
//! requests without credentials). Headers that define framing or the connection (`Content-Length`,
//! `Transfer-Encoding`, `Connection`, `Keep-Alive`, `Upgrade`, `TE`, `Trailer`, `Host`) may not be set.
//!
//! # Templates
//!
//! * `{{args.<name>}}`: an LLM argument; dotted paths reach into nested objects
//!   (`{{args.customer.id}}`) and numeric segments index arrays; `{{args}}` is the whole object.
//! * `{{call.<name>}}`: a [`CallVariables`] entry (`session_id`, `stream_id`, `caller_id`,
//!   `bot_id`, `from_number`, `did`, plus custom fields); `{{call}}` is all of them as an object.
//!
//! Whitespace inside the braces is ignored; anything else in `{{ }}` is a config error, and there
//! is no escape for a literal `{{`. In text, strings are inserted verbatim, numbers and booleans in
//! their JSON spelling, `null` as nothing, arrays/objects as compact JSON.
//!
//! * URL: substituted values are percent-encoded (all but `A-Z a-z 0-9 - . _ ~`), so a value can
//!   never add path segments or query parameters; placeholders stand for values, not URL structure
//!   (the template must be a valid URL with each placeholder replaced by `x`). A value of exactly
//!   `.` or `..` in the path is refused (path traversal).
//! * Headers: inserted as text; a value containing CR, LF or another control character fails the call.
//! * Body: a JSON string that is exactly one placeholder is replaced by the raw JSON value (numbers
//!   stay numbers, objects stay objects); placeholders inside longer strings are interpolated as
//!   text. Object keys are literal. The body is sent as `application/json` unless a configured
//!   `Content-Type` says otherwise.
//!
//! A missing argument or call variable fails the call before any request is made, with content such
//! as `error: missing argument "order_id"`.
//!
//! # Running a call
//!
//! [`ToolRegistry::from_config`] compiles the bindings once per call setup; [`llm_definition`] gives
//! the definition to offer the LLM (bindings stripped). On a tool call, [`HttpTool::run`] (or
//! [`HttpTool::run_with_pre_message`]) returns a [`ToolOutcome`]: 2xx JSON as compact JSON text,
//! other 2xx bodies as (lossy UTF-8) text, and every failure as `is_error` with an `error: …` line.
//! Use one [`default_client`] per process.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod run;
pub mod template;
mod vars;

use std::time::Duration;

pub use config::{
    llm_definition, HttpTool, ToolConfigError, ToolConfigErrorKind, ToolRegistry, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_PRE_MESSAGE_AFTER, DEFAULT_TIMEOUT, MAX_RESPONSE_BYTES_LIMIT, TIMEOUT_RANGE_MS,
};
pub use run::{ToolErrorKind, ToolOutcome, MAX_ARGUMENTS_BYTES};
pub use vars::CallVariables;

/// The most redirects a tool request follows.
pub const MAX_REDIRECTS: usize = 3;

/// The HTTP client tool calls should use (share one per process; it pools connections).
///
/// * follows at most [`MAX_REDIRECTS`] redirects and refuses an `https` → `http` downgrade
///   (reqwest drops `Authorization`/`Cookie` on cross-origin redirects; other configured headers
///   are forwarded, so bindings should not point at APIs that redirect elsewhere with secrets in
///   custom headers);
/// * no response decompression (a compressed body cannot expand past `max_response_bytes`
///   unnoticed — the limit applies to bytes on the wire and in memory alike);
/// * no client-wide timeout: each tool bounds its own request with `timeout_ms`.
///
/// Fails only if the TLS backend cannot be initialised.
pub fn default_client() -> Result<reqwest::Client, reqwest::Error> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        // `previous` starts with the original URL, so its length is the number of hops so far.
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if attempt.url().scheme() == "http" && attempt.previous().iter().any(|u| u.scheme() == "https") {
            attempt.error("refused redirect from https to http")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .redirect(policy)
        .user_agent(concat!("cxb-core-tools/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(8)
        .build()
}
