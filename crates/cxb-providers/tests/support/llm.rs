//! The LLM tests' side of cxb-sim's strict vendor doubles: a server per test, parameters, and
//! readers for the events a stream produced.

use std::time::Duration;

use cxb_providers::llm::{CacheReport, LlmEvent, LlmParams, LlmStream};
use cxb_providers::ProviderError;
use cxb_sim::{start, ServeOptions, SimServer};
use cxb_wire::llm::{ToolCall, Usage};

use super::within;

/// A sim with no injected delays.
pub async fn sim_with(f: impl FnOnce(&mut ServeOptions)) -> SimServer {
    let mut o = ServeOptions { llm_ttft_ms: 0, llm_token_interval_ms: 0, ..ServeOptions::default() };
    f(&mut o);
    start(o).await.expect("sim starts")
}

pub async fn sim() -> SimServer {
    sim_with(|_| {}).await
}

pub fn params(provider: &str, base_url: &str, api_key: &str) -> LlmParams {
    LlmParams {
        provider: provider.into(),
        base_url: base_url.into(),
        api_key: api_key.into(),
        idle_timeout: Duration::from_secs(3),
    }
}

/// Every event until the stream ends.
pub async fn collect(mut stream: LlmStream) -> Vec<LlmEvent> {
    let mut events = Vec::new();
    while let Some(ev) = within(stream.recv()).await {
        events.push(ev);
    }
    events
}

/// The streamed text.
pub fn text(events: &[LlmEvent]) -> String {
    events.iter().filter_map(|e| if let LlmEvent::Token(t) = e { Some(t.as_str()) } else { None }).collect()
}

/// `Done`'s finish reason and usage; panics unless the stream ended with `Done`.
pub fn done(events: &[LlmEvent]) -> (Option<String>, Option<Usage>) {
    match events.last() {
        Some(LlmEvent::Done { finish_reason, usage }) => (finish_reason.clone(), *usage),
        _ => panic!("stream did not end with Done: {events:?}"),
    }
}

pub fn tool_calls(events: &[LlmEvent]) -> Vec<ToolCall> {
    events.iter().find_map(|e| if let LlmEvent::ToolCalls(c) = e { Some(c.clone()) } else { None }).unwrap_or_default()
}

pub fn cache_report(events: &[LlmEvent]) -> Option<CacheReport> {
    events.iter().find_map(|e| if let LlmEvent::Cache(r) = e { Some(r.clone()) } else { None })
}

/// The error that ended the stream; panics otherwise.
pub fn error(events: &[LlmEvent]) -> ProviderError {
    match events.last() {
        Some(LlmEvent::Error(e)) => e.clone(),
        _ => panic!("stream did not end with an error: {events:?}"),
    }
}

/// A static system prompt big enough for the vendors' cache minimums (1024 tokens).
pub fn big_static_prompt() -> String {
    let rule = "Always confirm the caller's policy number before discussing renewal terms. ";
    format!("You are Priya, a polite renewal agent.\n{}", rule.repeat(80))
}
