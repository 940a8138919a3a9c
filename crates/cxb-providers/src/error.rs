/// Everything a provider can do wrong, with the provider named so the `service_error` event and
/// the log line say who failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    #[error("{provider}: connect failed: {detail}")]
    Connect { provider: &'static str, detail: String },
    #[error("{provider}: HTTP {status}: {body}")]
    Status { provider: &'static str, status: u16, body: String },
    #[error("{provider}: protocol error: {detail}")]
    Protocol { provider: &'static str, detail: String },
    #[error("{provider}: timed out {what}")]
    Timeout { provider: &'static str, what: String },
    #[error("{provider}: connection closed: {detail}")]
    Closed { provider: &'static str, detail: String },
    #[error("{provider}: provider reported an error: {detail}")]
    Remote { provider: &'static str, detail: String },
    #[error("{provider}: input backlog full; the provider is not keeping up")]
    Backlog { provider: &'static str },
    /// A bot config names a provider the registry does not know (a config error).
    #[error("{}.provider {name:?} is not a known {kind} provider; known: {}", kind.block(), crate::registry::known_names(*kind))]
    UnknownProvider { kind: crate::registry::Kind, name: String },
    /// The bot's provider block cannot work as configured (a missing project, an unusable key).
    #[error("{provider}: configuration: {detail}")]
    Config { provider: &'static str, detail: String },
}

impl ProviderError {
    /// The vendor name for metrics labels.
    pub fn provider(&self) -> &'static str {
        match self {
            Self::Connect { provider, .. }
            | Self::Status { provider, .. }
            | Self::Protocol { provider, .. }
            | Self::Timeout { provider, .. }
            | Self::Closed { provider, .. }
            | Self::Remote { provider, .. }
            | Self::Config { provider, .. }
            | Self::Backlog { provider } => provider,
            Self::UnknownProvider { .. } => "unknown",
        }
    }
}
