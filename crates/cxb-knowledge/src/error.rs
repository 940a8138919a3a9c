//! Why a knowledge search failed.

use std::path::PathBuf;
use std::time::Duration;

/// A failed search or index operation. The display text is safe to show the LLM: it never holds
/// a URL (it may carry credentials) or a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KnowledgeError {
    /// The LLM's tool arguments were unusable.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The query text is empty after trimming.
    #[error("the search query is empty")]
    EmptyQuery,
    /// The search did not finish in time.
    #[error("the knowledge search timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The knowledge service could not be reached (DNS, TCP, TLS).
    #[error("the knowledge service could not be reached")]
    Connect,
    /// The knowledge service answered with a non-2xx status.
    #[error("the knowledge service answered HTTP {status}{}", detail_suffix(.detail))]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the error body (at most a few hundred characters), if any.
        detail: String,
    },
    /// The response body was larger than allowed.
    #[error("the knowledge service response exceeded {0} bytes")]
    ResponseTooLarge(usize),
    /// The response was not the expected JSON.
    #[error("the knowledge service response is not valid: {0}")]
    InvalidResponse(String),
    /// Any other transport failure (the connection dropped mid-body, …).
    #[error("the knowledge service request failed: {0}")]
    Request(String),
    /// The local index failed.
    #[error("the knowledge index failed: {0}")]
    Index(String),
    /// A knowledge directory or file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A setting is unusable (e.g. the API base is not an http(s) URL).
    #[error("{0}")]
    InvalidConfig(String),
    /// The worker could not run the search (its task was cancelled or panicked).
    #[error("the knowledge search could not run: {0}")]
    Internal(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl KnowledgeError {
    /// A stable snake_case label for telemetry events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            KnowledgeError::InvalidArguments(_) => "invalid_arguments",
            KnowledgeError::EmptyQuery => "empty_query",
            KnowledgeError::Timeout(_) => "timeout",
            KnowledgeError::Connect => "connect",
            KnowledgeError::Status { .. } => "http_status",
            KnowledgeError::ResponseTooLarge(_) => "response_too_large",
            KnowledgeError::InvalidResponse(_) => "invalid_response",
            KnowledgeError::Request(_) => "request",
            KnowledgeError::Index(_) => "index",
            KnowledgeError::Io { .. } => "io",
            KnowledgeError::InvalidConfig(_) => "invalid_config",
            KnowledgeError::Internal(_) => "internal",
        }
    }
}

impl From<tantivy::TantivyError> for KnowledgeError {
    fn from(e: tantivy::TantivyError) -> Self {
        KnowledgeError::Index(e.to_string())
    }
}
