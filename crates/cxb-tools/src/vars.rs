//! Per-call variables available to `{{call.<name>}}` placeholders.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The call variables a tool binding may reference as `{{call.<name>}}`.
///
/// The caller fills the standard names ([`CallVariables::SESSION_ID`] and friends) plus any custom
/// fields; every value is text. A name that is absent makes a binding that references it fail for
/// that call (no request is made).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallVariables(BTreeMap<String, String>);

impl CallVariables {
    /// `session_id`: the config response's per-call session id.
    pub const SESSION_ID: &'static str = "session_id";
    /// `stream_id`: the transport's stream/call id.
    pub const STREAM_ID: &'static str = "stream_id";
    /// `caller_id`: the customer's number as presented.
    pub const CALLER_ID: &'static str = "caller_id";
    /// `bot_id`: the bot handling the call.
    pub const BOT_ID: &'static str = "bot_id";
    /// `from_number`: the calling number.
    pub const FROM_NUMBER: &'static str = "from_number";
    /// `did`: the dialled number.
    pub const DID: &'static str = "did";

    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` (replacing an earlier value) and returns `self`, for building in one expression.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(name, value);
        self
    }

    /// Sets `name`, returning the previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(name.into(), value.into())
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// All variables, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no variables.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying map.
    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }
}

impl From<BTreeMap<String, String>> for CallVariables {
    fn from(m: BTreeMap<String, String>) -> Self {
        CallVariables(m)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for CallVariables {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        CallVariables(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for CallVariables {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.0.extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}
