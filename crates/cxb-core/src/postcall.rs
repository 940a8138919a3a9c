//! Post-call processing (contract §8): auto-dispositions, LLM analysis and QC, callback
//! extraction, telemetry summaries and the pipeline snapshot, applied to the result payload;
//! plus the optional NXLink second delivery ([`nxlink`]).
//!
//! ```text
//! let post = PostCall::new(app.llm.clone(), &settings);        // once per process, shared
//! let payload = build_payload(&summary, Some(&record), events);  // what the call knows
//! let payload = post.process(&cfg, &summary, &record, payload).await;  // bounded, never panics
//! delivery.deliver(payload, cfg.webhook_url.clone());
//! if let Some(entry) = nxlink::outbox_entry(&cfg, &payload) { outbox.enqueue(entry) }
//! ```
//!
//! Shapes and decisions: proto/README.md.

pub mod analysis;
pub mod disposition;
pub mod json;
pub mod nxlink;
pub mod scrub;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use cxb_engine::CallRecord;
use cxb_providers::llm::LlmClient;
use cxb_wire::llm::ResponseFormat;
use cxb_wire::result::{CallEvent, CallResultsPayload, LlmCacheSummary, LlmPurpose, LlmUsageEntry, UsageMetrics};
use cxb_wire::BotConfig;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::results::{has_customer_message, round3, CallSummary};
use analysis::{Job, JobError, JobResult};

pub use nxlink::{nxlink_entry, NxlinkDeliverer, NxlinkRequest};

/// Post-call settings.
#[derive(Debug, Clone, clap::Args)]
pub struct PostCallSettings {
    /// Bound on one call's post-call LLM work (analysis, QC and callback extraction run
    /// concurrently), in milliseconds. Past it the result is delivered without the missing parts
    /// and with a `service_error` event per missing part.
    #[arg(long, env = "CXBCORE_POSTCALL_TIMEOUT_MS", default_value_t = 45_000)]
    pub postcall_timeout_ms: u64,

    /// Run the LLM post-call work at all (auto-dispositions always apply). `false` is a kill
    /// switch for an LLM outage or cost incident.
    #[arg(long, env = "CXBCORE_POSTCALL_LLM", default_value_t = true, action = clap::ArgAction::Set)]
    pub postcall_llm: bool,

    /// Model for post-call requests; unset: the bot's `llm.model`.
    #[arg(long, env = "CXBCORE_POSTCALL_MODEL")]
    pub postcall_model: Option<String>,

    /// Completion-token limit of one post-call request. Output cut by it is reported as a
    /// `truncated` service error.
    #[arg(long, env = "CXBCORE_POSTCALL_MAX_TOKENS", default_value_t = 2048)]
    pub postcall_max_tokens: u32,

    /// Sampling temperature of post-call requests; unset: the provider's default (some
    /// reasoning models accept no other).
    #[arg(long, env = "CXBCORE_POSTCALL_TEMPERATURE")]
    pub postcall_temperature: Option<f32>,

    /// Ask for JSON output in the vendor's way (OpenAI: `response_format: {"type":"json_object"}`).
    /// Turn off for OpenAI-compatible servers that reject the parameter.
    #[arg(long, env = "CXBCORE_POSTCALL_JSON_MODE", default_value_t = true, action = clap::ArgAction::Set)]
    pub postcall_json_mode: bool,

    /// Retries of a post-call request after a transient provider failure (connect, timeout,
    /// 408/429/5xx), within the timeout.
    #[arg(long, env = "CXBCORE_POSTCALL_RETRIES", default_value_t = 1)]
    pub postcall_retries: u32,

    /// Post-call LLM requests in flight at once in this process (a burst of call ends queues).
    #[arg(long, env = "CXBCORE_POSTCALL_CONCURRENCY", default_value_t = 32)]
    pub postcall_concurrency: usize,

    /// Longest transcript sent for analysis, in characters; longer ones lose their middle.
    #[arg(long, env = "CXBCORE_POSTCALL_MAX_TRANSCRIPT_CHARS", default_value_t = 60_000)]
    pub postcall_max_transcript_chars: usize,
}

impl PostCallSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.postcall_timeout_ms.max(1))
    }
}

/// The process-wide post-call stage: one shared LLM client (connection pool) and a bound on
/// concurrent post-call requests. Cheap to clone.
#[derive(Clone)]
pub struct PostCall {
    llm: LlmClient,
    settings: Arc<crate::Settings>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for PostCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostCall").field("settings", &self.settings.postcall).finish_non_exhaustive()
    }
}

impl PostCall {
    /// `llm`: the process's shared client (e.g. `AppState::llm`). API keys fall back to the
    /// worker settings exactly as for the conversation (`providers::llm_params`).
    pub fn new(llm: LlmClient, settings: &crate::Settings) -> Self {
        let permits = Arc::new(Semaphore::new(settings.postcall.postcall_concurrency.max(1)));
        Self { llm, settings: Arc::new(settings.clone()), permits }
    }

    fn pc(&self) -> &PostCallSettings {
        &self.settings.postcall
    }

    /// Add the post-call parts to `payload`: `pipeline_config`, the conversation model, the
    /// auto-disposition or the LLM analysis / QC / callback keys, post-call usage,
    /// `llm_cache_summary` and `intents`. Bounded by `CXBCORE_POSTCALL_TIMEOUT_MS` (plus a
    /// 250 ms grace); never panics — any failure becomes a `service_error` event and the rest
    /// of the payload is delivered as is.
    pub async fn process(
        &self,
        cfg: &BotConfig,
        summary: &CallSummary,
        record: &CallRecord,
        payload: CallResultsPayload,
    ) -> CallResultsPayload {
        let t0 = Instant::now();
        let deadline = t0 + self.pc().timeout();
        let original = payload.clone();
        let prepared = std::panic::catch_unwind(AssertUnwindSafe(|| self.prepare(cfg, summary, record, payload)));
        let (mut p, jobs) = match prepared {
            Ok(x) => x,
            Err(_) => {
                let mut p = original;
                push_event(
                    &mut p,
                    summary,
                    "service_error",
                    internal_error("post_call", "post-call preparation panicked"),
                );
                return p;
            }
        };
        if jobs.is_empty() {
            return p;
        }
        let purposes: Vec<LlmPurpose> = jobs.iter().map(|j| j.purpose).collect();
        let params = {
            let mut params = crate::providers::llm_params(cfg, &self.settings);
            params.idle_timeout = self.pc().timeout();
            params
        };
        let (client, retries, permits) = (self.llm.clone(), self.pc().postcall_retries, self.permits.clone());
        let handle = crate::call::spawn_in_call(async move {
            let runs = jobs
                .into_iter()
                .map(|job| analysis::run(client.clone(), params.clone(), job, deadline, retries, permits.clone()));
            futures_util::future::join_all(runs).await
        });
        let abort = handle.abort_handle();
        let results = match tokio::time::timeout_at(deadline + Duration::from_millis(250), handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(error = %e, "post-call LLM task failed");
                purposes
                    .iter()
                    .map(|&purpose| JobResult {
                        purpose,
                        requests: 0,
                        usage: None,
                        outcome: Err(JobError::Llm("post-call task failed".into())),
                    })
                    .collect()
            }
            Err(_) => {
                abort.abort();
                purposes.iter().map(|&pp| JobResult::timed_out(pp)).collect()
            }
        };
        let before = p.clone();
        match std::panic::catch_unwind(AssertUnwindSafe(move || {
            self.merge(cfg, summary, &mut p, results);
            p
        })) {
            Ok(p) => {
                info!(elapsed_ms = t0.elapsed().as_millis() as u64, "post-call analysis done");
                p
            }
            Err(_) => {
                let mut p = before;
                push_event(&mut p, summary, "service_error", internal_error("post_call", "post-call merge panicked"));
                p
            }
        }
    }

    /// The deterministic part: snapshot, disposition or the jobs to run.
    fn prepare(
        &self,
        cfg: &BotConfig,
        summary: &CallSummary,
        record: &CallRecord,
        mut p: CallResultsPayload,
    ) -> (CallResultsPayload, Vec<Job>) {
        p.pipeline_config = Some(scrub::pipeline_config(cfg, summary.transport));
        if let Some(u) = &mut p.usage_metrics {
            for e in &mut u.llm {
                if e.purpose == LlmPurpose::Conversation && e.model.is_none() && !cfg.llm.model.trim().is_empty() {
                    e.model = Some(cfg.llm.model.clone());
                }
            }
        }
        let has_msg = has_customer_message(&p);
        let spoke = record.customer_spoke || has_msg;
        let by = p.disconnected_by.unwrap_or(summary.disconnected_by);
        if let Some((case, reason)) = disposition::skip_case(by, spoke, has_msg, summary.duration) {
            let d = disposition::disposition(case, cfg.auto_dispositions.as_ref());
            let mut data = d.clone();
            data.insert("case".into(), json!(case.key()));
            data.insert("reason".into(), json!(reason));
            push_event(&mut p, summary, "auto_disposition", data);
            p.post_call_analysis = Some(d);
            return (p, Vec::new());
        }
        if !self.pc().postcall_llm {
            return (p, Vec::new());
        }
        let model = self.pc().postcall_model.clone().filter(|m| !m.trim().is_empty()).unwrap_or(cfg.llm.model.clone());
        let text = analysis::transcript_text(&p, &cfg.timezone, self.pc().postcall_max_transcript_chars);
        let non_empty = |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        let mut wanted: Vec<(LlmPurpose, String)> = Vec::new();
        if let Some(prompt) = non_empty(&cfg.post_call_analysis_prompt) {
            wanted.push((LlmPurpose::PostCall, prompt));
        }
        if let Some(prompt) = non_empty(&cfg.qc_prompt) {
            wanted.push((LlmPurpose::Qc, prompt));
        }
        if cfg.callback_detection_enabled {
            wanted.push((LlmPurpose::Callback, analysis::CALLBACK_PROMPT.to_string()));
        }
        let jobs = wanted
            .into_iter()
            .map(|(purpose, prompt)| Job {
                purpose,
                request: analysis::request(
                    &model,
                    &prompt,
                    &text,
                    self.response_format(),
                    self.request_extra(cfg, purpose),
                    self.pc().postcall_max_tokens,
                    self.pc().postcall_temperature,
                ),
            })
            .collect();
        (p, jobs)
    }

    /// A JSON object, unless JSON mode is switched off (the prompt asks for JSON either way).
    fn response_format(&self) -> ResponseFormat {
        if self.pc().postcall_json_mode {
            ResponseFormat::Json { schema: None }
        } else {
            ResponseFormat::Text
        }
    }

    /// Provider parameters: when `post_call_cache_enabled`, OpenAI-style prompt caching hints
    /// keyed by `post_call_cache_version` (`post_call_cache.prompt_cache_key` /
    /// `prompt_cache_retention` override them).
    fn request_extra(&self, cfg: &BotConfig, purpose: LlmPurpose) -> Map<String, Value> {
        let mut m = Map::new();
        if cfg.post_call_cache_enabled {
            let hints = cfg.post_call_cache.as_ref().and_then(Value::as_object);
            let hint = |k: &str| hints.and_then(|h| h.get(k)).and_then(Value::as_str).filter(|s| !s.is_empty());
            let version = if cfg.post_call_cache_version.is_empty() { "0" } else { &cfg.post_call_cache_version };
            let key = match hint("prompt_cache_key") {
                Some(k) => format!("{k}:{}", purpose.as_str()),
                None => format!("cxb-postcall:{}:{}:{version}", cfg.bot_id, purpose.as_str()),
            };
            m.insert("prompt_cache_key".into(), json!(key));
            if let Some(r) = hint("prompt_cache_retention") {
                m.insert("prompt_cache_retention".into(), json!(r));
            }
        }
        m
    }

    fn merge(&self, cfg: &BotConfig, summary: &CallSummary, p: &mut CallResultsPayload, results: Vec<JobResult>) {
        let mut callback = None;
        for r in &results {
            if r.requests > 0 || r.usage.is_some() {
                let entry = usage_entry(cfg, r, self.pc().postcall_model.as_deref());
                p.usage_metrics
                    .get_or_insert_with(|| UsageMetrics {
                        llm: Vec::new(),
                        tts_characters: 0,
                        stt_audio_seconds: round3(summary.duration.as_secs_f64()),
                    })
                    .llm
                    .push(entry);
            }
            match (&r.outcome, r.purpose) {
                (Ok(m), LlmPurpose::PostCall) => p.post_call_analysis = Some(m.clone()),
                (Ok(m), LlmPurpose::Qc) => p.qc_analysis = Some(m.clone()),
                (Ok(m), LlmPurpose::Callback) => callback = Some(analysis::normalize_callback(m)),
                (Ok(_), LlmPurpose::Conversation) => {}
                (Err(e), purpose) => {
                    let service = match purpose {
                        LlmPurpose::PostCall => "post_call_analysis",
                        LlmPurpose::Qc => "qc",
                        LlmPurpose::Callback => "callback_extraction",
                        LlmPurpose::Conversation => "llm",
                    };
                    warn!(service, kind = e.kind(), error = %e.message(), "post-call LLM work failed");
                    metrics::counter!("cxb_postcall_failures_total", "service" => service, "kind" => e.kind())
                        .increment(1);
                    let mut data = Map::new();
                    data.insert("service".into(), json!(service));
                    data.insert("kind".into(), json!(e.kind()));
                    data.insert("error".into(), json!(e.message()));
                    if let JobError::Parse { preview, .. } = e {
                        if !preview.is_empty() {
                            data.insert("raw_preview".into(), json!(preview));
                        }
                    }
                    push_event(p, summary, "service_error", data);
                }
            }
        }
        if let Some(cb) = callback {
            p.post_call_analysis.get_or_insert_with(Map::new).extend(cb);
        }
        p.llm_cache_summary = cache_summary(cfg, p.usage_metrics.as_ref());
        if p.intents.is_none() {
            p.intents = intents_from_analysis(p.post_call_analysis.as_ref());
        }
    }
}

fn usage_entry(cfg: &BotConfig, r: &JobResult, model_override: Option<&str>) -> LlmUsageEntry {
    let u = r.usage.unwrap_or_default();
    let status = if r.usage.is_none() && matches!(r.outcome, Err(JobError::Llm(_) | JobError::Timeout)) {
        "error"
    } else if !cfg.post_call_cache_enabled {
        "disabled"
    } else if u.cached_tokens > 0 {
        "hit"
    } else if u.cache_write_tokens > 0 {
        "created"
    } else {
        "miss"
    };
    let model = model_override.filter(|m| !m.trim().is_empty()).unwrap_or(&cfg.llm.model);
    LlmUsageEntry {
        purpose: r.purpose,
        model: (!model.trim().is_empty()).then(|| model.to_string()),
        requests: r.requests,
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.total_tokens,
        cache_read_input_tokens: u.cached_tokens,
        cache_creation_input_tokens: u.cache_write_tokens,
        cache_status: Some(status.into()),
    }
}

/// `llm_cache_summary` over the `post_call` and `qc` usage entries (seed 000); `None` when
/// neither made a request.
pub fn cache_summary(cfg: &BotConfig, usage: Option<&UsageMetrics>) -> Option<LlmCacheSummary> {
    let entries: Vec<&LlmUsageEntry> =
        usage?.llm.iter().filter(|e| matches!(e.purpose, LlmPurpose::PostCall | LlmPurpose::Qc)).collect();
    if entries.is_empty() {
        return None;
    }
    let mut s = LlmCacheSummary { enabled: cfg.post_call_cache_enabled, ..Default::default() };
    for e in entries {
        s.cache_read_input_tokens += e.cache_read_input_tokens;
        s.cache_creation_input_tokens += e.cache_creation_input_tokens;
        s.fresh_prompt_tokens +=
            e.prompt_tokens.saturating_sub(e.cache_read_input_tokens).saturating_sub(e.cache_creation_input_tokens);
        s.completion_tokens += e.completion_tokens;
        if let Some(st) = &e.cache_status {
            s.statuses.insert(e.purpose.as_str().to_string(), st.clone());
        }
    }
    s.worked = s.cache_read_input_tokens > 0;
    Some(s)
}

/// `intents` from the analysis dict: its `intents` array, or its `intent` value.
fn intents_from_analysis(a: Option<&Map<String, Value>>) -> Option<Vec<Value>> {
    let a = a?;
    match a.get("intents").or_else(|| a.get("INTENTS")) {
        Some(Value::Array(v)) if !v.is_empty() => {
            return Some(v.iter().filter(|x| !x.is_null()).cloned().collect()).filter(|v: &Vec<Value>| !v.is_empty())
        }
        _ => {}
    }
    match a.get("intent").or_else(|| a.get("INTENT")) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(vec![Value::String(s.clone())]),
        Some(v @ Value::Object(_)) => Some(vec![v.clone()]),
        _ => None,
    }
}

fn internal_error(service: &str, error: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("service".into(), json!(service));
    m.insert("kind".into(), json!("internal"));
    m.insert("error".into(), json!(error));
    m
}

/// Append a post-call event, timed now (its offset is past the end of the call).
fn push_event(p: &mut CallResultsPayload, summary: &CallSummary, kind: &str, data: Map<String, Value>) {
    let now = chrono::Utc::now();
    let offset = (now - summary.started_at).to_std().unwrap_or(summary.duration).max(summary.duration);
    p.events.push(CallEvent {
        kind: kind.to_string(),
        timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        offset_seconds: round3(offset.as_secs_f64()),
        data: crate::results::strip_nulls(data),
    });
}
