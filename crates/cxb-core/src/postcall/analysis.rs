//! Running one post-call LLM job (analysis, QC or callback extraction) and reading its JSON.

use std::sync::Arc;

use cxb_providers::llm::{LlmClient, LlmEvent, LlmParams};
use cxb_providers::ProviderError;
use cxb_wire::llm::{ChatMessage, ChatRequest, ResponseFormat, Usage};
use cxb_wire::result::{CallResultsPayload, LlmPurpose, Speaker};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::json::{extract_object, ExtractError};

/// Appended to every post-call system prompt.
pub const JSON_INSTRUCTION: &str =
    "\n\nRespond with a single JSON object only: no prose before or after it, no code fences.";

/// The built-in prompt of the dedicated callback extraction (`callback_detection_enabled`).
pub const CALLBACK_PROMPT: &str = "You read the transcript of a phone call between a voice bot and a customer and \
decide whether the customer asked to be called back later, or agreed to a callback the bot offered.\n\
Return a JSON object with exactly these keys:\n\
- \"callback_requested\": true or false;\n\
- \"callback_preferred_time_text\": when the customer wants the callback, in the customer's own words \
(for example \"tomorrow after 5 pm\"), or \"\" if no time was given;\n\
- \"callback_reason\": a short reason for the callback (for example \"busy driving\"), or \"\";\n\
- \"callback_confidence\": a number from 0 to 1, how sure you are about callback_requested.\n\
A customer who only says goodbye, or who refuses, has not requested a callback.";

/// One post-call LLM request to make.
#[derive(Debug, Clone)]
pub struct Job {
    pub purpose: LlmPurpose,
    pub request: ChatRequest,
}

/// Why a job produced no JSON object.
#[derive(Debug, Clone, PartialEq)]
pub enum JobError {
    /// The post-call deadline passed first.
    Timeout,
    /// The provider failed (after the retries).
    Llm(String),
    /// The model answered, but not with a usable JSON object. `truncated`: cut off by the token
    /// limit or mid-object.
    Parse { error: ExtractError, truncated: bool, preview: String },
}

impl JobError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Llm(_) => "llm",
            Self::Parse { truncated: true, .. } => "truncated",
            Self::Parse { .. } => "parse",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Timeout => "post-call deadline passed before the LLM answered".into(),
            Self::Llm(e) => e.clone(),
            Self::Parse { error, truncated: true, .. } => format!("output truncated: {error}"),
            Self::Parse { error, .. } => error.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JobResult {
    pub purpose: LlmPurpose,
    /// LLM requests sent (retries included).
    pub requests: u32,
    /// Usage summed over the requests that reported it.
    pub usage: Option<Usage>,
    pub outcome: Result<Map<String, Value>, JobError>,
}

impl JobResult {
    pub fn timed_out(purpose: LlmPurpose) -> Self {
        JobResult { purpose, requests: 0, usage: None, outcome: Err(JobError::Timeout) }
    }
}

/// Render the transcript for the analysis prompts, bounded to `max_chars` (middle elided).
pub fn transcript_text(p: &CallResultsPayload, timezone: &str, max_chars: usize) -> String {
    let mut out = String::new();
    out.push_str("Call details:\n");
    if let Some(t) = &p.started_at {
        out.push_str(&format!("- started at: {t} (bot timezone: {timezone})\n"));
    }
    out.push_str(&format!("- duration: {:.1} s\n", p.call_duration_seconds));
    if let Some(d) = p.disconnected_by {
        out.push_str(&format!("- ended by: {d}\n"));
    }
    if let Some(d) = &p.call_direction {
        out.push_str(&format!("- direction: {d}\n"));
    }
    out.push_str("\nTranscript:\n");
    let mut lines = String::new();
    for l in &p.transcript {
        let secs = l.offset_seconds.max(0.0) as u64;
        let who = match l.speaker {
            Speaker::Customer => "Customer",
            Speaker::Bot => "Bot",
        };
        let cut = if l.interrupted { " (interrupted)" } else { "" };
        lines.push_str(&format!("[{:02}:{:02}] {who}{cut}: {}\n", secs / 60, secs % 60, l.text.trim()));
    }
    if lines.is_empty() {
        lines.push_str("(no speech)\n");
    }
    out.push_str(&elide_middle(&lines, max_chars));
    out
}

fn elide_middle(s: &str, max_chars: usize) -> String {
    let n = s.chars().count();
    if max_chars == 0 || n <= max_chars {
        return s.to_string();
    }
    let keep = max_chars / 2;
    let head: String = s.chars().take(keep).collect();
    let tail: String = s.chars().skip(n - keep).collect();
    format!("{head}\n[… {} characters of the transcript omitted …]\n{tail}", n - 2 * keep)
}

/// The request for one purpose: the static prompt first (the cacheable prefix), then the call.
pub fn request(
    model: &str,
    prompt: &str,
    call_text: &str,
    response: ResponseFormat,
    extra: Map<String, Value>,
    max_tokens: u32,
    temperature: Option<f32>,
) -> ChatRequest {
    ChatRequest {
        model: model.to_string(),
        messages: vec![
            ChatMessage::System(format!("{}{JSON_INSTRUCTION}", prompt.trim())),
            ChatMessage::User(call_text.to_string()),
        ],
        tools: Vec::new(),
        temperature,
        max_tokens: Some(max_tokens),
        extra,
        response,
        prompt_cache: None,
    }
}

fn retryable(e: &ProviderError) -> bool {
    match e {
        ProviderError::Connect { .. } | ProviderError::Closed { .. } | ProviderError::Timeout { .. } => true,
        ProviderError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
        _ => false,
    }
}

fn add_usage(total: &mut Option<Usage>, u: &Usage) {
    let t = total.get_or_insert_with(Usage::default);
    t.prompt_tokens += u.prompt_tokens;
    t.completion_tokens += u.completion_tokens;
    t.total_tokens += u.total_tokens;
    t.cached_tokens += u.cached_tokens;
    t.cache_write_tokens += u.cache_write_tokens;
}

/// One streamed completion, collected: `(text, finish_reason, usage)`.
async fn complete(
    client: &LlmClient,
    params: &LlmParams,
    req: ChatRequest,
) -> Result<(String, Option<String>, Option<Usage>), ProviderError> {
    let mut stream = client.stream(params, req);
    let mut text = String::new();
    loop {
        match stream.recv().await {
            Some(LlmEvent::Token(t)) => {
                // Bound memory against a runaway server; the provider client caps bytes too.
                if text.len() < 1 << 20 {
                    text.push_str(&t);
                }
            }
            Some(LlmEvent::ToolCalls(_) | LlmEvent::Cache(_)) => {}
            Some(LlmEvent::Done { finish_reason, usage }) => return Ok((text, finish_reason, usage)),
            Some(LlmEvent::Error(e)) => return Err(e),
            None => {
                return Err(ProviderError::Closed { provider: "llm", detail: "stream ended without a result".into() })
            }
        }
    }
}

/// Run one job to a [`JobResult`] before `deadline`, retrying transient provider failures.
pub async fn run(
    client: LlmClient,
    params: LlmParams,
    job: Job,
    deadline: Instant,
    retries: u32,
    permits: Arc<Semaphore>,
) -> JobResult {
    let mut res = JobResult { purpose: job.purpose, requests: 0, usage: None, outcome: Err(JobError::Timeout) };
    let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, permits.acquire_owned()).await else {
        return res;
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        res.requests += 1;
        let r = tokio::time::timeout_at(deadline, complete(&client, &params, job.request.clone())).await;
        match r {
            Err(_) => {
                res.outcome = Err(JobError::Timeout);
                return res;
            }
            Ok(Ok((text, finish_reason, usage))) => {
                if let Some(u) = &usage {
                    add_usage(&mut res.usage, u);
                }
                let cut_by_limit = finish_reason.as_deref() == Some("length");
                res.outcome = extract_object(&text).map_err(|error| JobError::Parse {
                    truncated: cut_by_limit || error == ExtractError::Truncated,
                    preview: text.chars().take(300).collect(),
                    error,
                });
                return res;
            }
            Ok(Err(e)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if attempt <= retries && retryable(&e) && left > std::time::Duration::from_secs(2) {
                    tracing::info!(purpose = job.purpose.as_str(), error = %e, "post-call LLM request failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500).min(left / 4)).await;
                    continue;
                }
                res.outcome = Err(JobError::Llm(e.to_string()));
                return res;
            }
        }
    }
}

/// The four callback keys, with types made exact: `callback_requested` bool,
/// `callback_preferred_time_text` and `callback_reason` strings (`""` when none),
/// `callback_confidence` a number in 0..=1.
pub fn normalize_callback(m: &Map<String, Value>) -> Map<String, Value> {
    let truthy = |v: Option<&Value>| match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Some(Value::String(s)) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "y" | "1"),
        _ => false,
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let confidence = match m.get("callback_confidence") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().trim_end_matches('%').parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
    .map(|x| if x > 1.0 && x <= 100.0 { x / 100.0 } else { x })
    .unwrap_or(0.0)
    .clamp(0.0, 1.0);
    let mut out = Map::new();
    out.insert("callback_requested".into(), Value::Bool(truthy(m.get("callback_requested"))));
    out.insert("callback_preferred_time_text".into(), Value::String(text(m.get("callback_preferred_time_text"))));
    out.insert("callback_reason".into(), Value::String(text(m.get("callback_reason"))));
    out.insert(
        "callback_confidence".into(),
        serde_json::Number::from_f64(confidence).map(Value::Number).unwrap_or(Value::from(0)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn callback_keys_are_typed() {
        let m = json!({"callback_requested": "yes", "callback_preferred_time_text": " after 5 ", "callback_confidence": "85%"});
        let n = normalize_callback(m.as_object().unwrap());
        assert_eq!(
            Value::Object(n),
            json!({"callback_requested": true, "callback_preferred_time_text": "after 5", "callback_reason": "",
                   "callback_confidence": 0.85})
        );
        let n = normalize_callback(&Map::new());
        assert_eq!(n["callback_requested"], false);
        assert_eq!(n["callback_confidence"], 0.0);
    }

    #[test]
    fn long_transcripts_are_elided_in_the_middle() {
        let s = "a".repeat(100) + &"b".repeat(100);
        let e = elide_middle(&s, 50);
        assert!(e.starts_with(&"a".repeat(25)) && e.ends_with(&"b".repeat(25)) && e.contains("150 characters"));
    }
}
