//! Building the CallResultsPayload (contract §5) and handing it to delivery.
//!
//! [`build_payload`] assembles everything the call itself knows: identity, transcript, events,
//! latency telemetry, conversation usage and the transfer state derived from the events. The
//! post-call stage ([`crate::postcall::PostCall::process`]) then adds dispositions, the LLM
//! analyses, post-call usage, the cache summary and the pipeline snapshot. Shapes are published
//! in `proto/results.schema.json` and described in `proto/README.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cxb_engine::CallRecord;
use cxb_wire::result::{
    CallEvent, CallResultsPayload, DisconnectedBy, LatencySummary, LlmPurpose, LlmUsageEntry, Speaker, TranscriptEntry,
    TurnLatency, UsageMetrics,
};
use serde_json::{Map, Value};

/// Everything about a finished call the payload needs beyond the engine's record.
#[derive(Debug, Clone)]
pub struct CallSummary {
    pub session_id: String,
    pub bot_id: String,
    pub transport: &'static str,
    pub stream_id: String,
    pub caller_id: String,
    pub did: String,
    pub call_direction: String,
    pub connected_event: Map<String, Value>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub duration: Duration,
    pub disconnected_by: DisconnectedBy,
}

impl CallSummary {
    /// A call's summary: its identity from the link's metadata, its span and how it ended.
    pub fn new(
        session_id: String,
        bot_id: &str,
        transport: &'static str,
        meta: &cxb_transports::CallMeta,
        started_at: chrono::DateTime<chrono::Utc>,
        duration: Duration,
        disconnected_by: DisconnectedBy,
    ) -> Self {
        CallSummary {
            session_id,
            bot_id: bot_id.to_string(),
            transport,
            stream_id: meta.stream_id.clone(),
            caller_id: meta.caller_id.clone(),
            did: meta.did.clone(),
            call_direction: meta.call_direction.clone(),
            connected_event: meta.connected_event.clone(),
            started_at,
            duration,
            disconnected_by,
        }
    }
}

pub(crate) fn rfc3339(start: chrono::DateTime<chrono::Utc>, offset: Duration) -> String {
    // A start time read back from a crash journal can sit at chrono's last representable day;
    // an end past it is written as the start rather than panicking the recovery.
    let t = chrono::Duration::from_std(offset).ok().and_then(|d| start.checked_add_signed(d)).unwrap_or(start);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn round3(x: f64) -> f64 {
    if !x.is_finite() {
        return 0.0;
    }
    (x * 1000.0).round() / 1000.0
}

/// Assemble the payload. Absent facts are omitted, never null.
pub fn build_payload(s: &CallSummary, record: Option<&CallRecord>, extra_events: Vec<CallEvent>) -> CallResultsPayload {
    let mut transcript: Vec<TranscriptEntry> = Vec::new();
    let mut events: Vec<CallEvent> = extra_events.into_iter().map(clean_event).collect();
    let mut latency = None;
    let mut latency_samples = None;
    let mut usage = None;
    if let Some(r) = record {
        let mut lines = r.transcript.clone();
        lines.sort_by_key(|l| l.at);
        transcript = lines
            .into_iter()
            .map(|l| TranscriptEntry {
                speaker: l.speaker,
                text: l.text,
                timestamp: rfc3339(s.started_at, l.at),
                offset_seconds: round3(l.at.as_secs_f64()),
                interrupted: l.interrupted,
            })
            .collect();
        events.extend(r.events.iter().map(|e| engine_event(s.started_at, e)));
        if !r.latency.is_empty() {
            latency_samples = Some(
                r.latency
                    .iter()
                    .map(|l| TurnLatency {
                        turn: l.turn,
                        stt_final_delay_ms: round3(l.stt_final_delay_ms),
                        llm_ttft_ms: l.llm_ttft_ms.map(round3),
                        llm_first_sentence_ms: l.llm_first_sentence_ms.map(round3),
                        tts_ttfb_ms: l.tts_ttfb_ms.map(round3),
                        total_response_ms: l.total_response_ms.map(round3),
                    })
                    .collect(),
            );
        }
        let u = &r.llm_usage;
        usage = Some(UsageMetrics {
            llm: vec![LlmUsageEntry {
                purpose: LlmPurpose::Conversation,
                model: None,
                requests: r.llm_requests,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
                cache_read_input_tokens: u.cached_tokens,
                cache_creation_input_tokens: u.cache_write_tokens,
                cache_status: None,
            }],
            tts_characters: r.tts_characters,
            stt_audio_seconds: round3(s.duration.as_secs_f64()),
        });
    }
    events.sort_by(|a, b| a.offset_seconds.total_cmp(&b.offset_seconds));
    if let Some(r) = record {
        latency = latency_summary(&r.latency, &events);
    }
    let non_empty = |x: &str| (!x.trim().is_empty()).then(|| x.to_string());
    let mut payload = CallResultsPayload {
        session_id: s.session_id.clone(),
        bot_id: non_empty(&s.bot_id),
        stream_id: non_empty(&s.stream_id),
        caller_id: non_empty(&s.caller_id),
        from_number: non_empty(&s.did),
        call_direction: non_empty(&s.call_direction),
        transport: Some(s.transport.to_string()),
        started_at: Some(rfc3339(s.started_at, Duration::ZERO)),
        ended_at: Some(rfc3339(s.started_at, s.duration)),
        call_duration_seconds: round3(s.duration.as_secs_f64()),
        disconnected_by: Some(s.disconnected_by),
        transcript,
        events,
        latency,
        latency_samples,
        usage_metrics: usage,
        connected_event: Some(strip_nulls(s.connected_event.clone())),
        ..Default::default()
    };
    payload.intents = intents_from_events(&payload.events);
    apply_transfer_state(&mut payload);
    payload
}

/// An event the worker adds once the call is over (post-call, recovery), stamped now at the
/// call's end.
pub fn after_call_event(p: &CallResultsPayload, kind: &str, data: Value) -> CallEvent {
    CallEvent {
        kind: kind.into(),
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        offset_seconds: p.call_duration_seconds,
        data: match data {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

/// An engine event as the payload carries it.
pub(crate) fn engine_event(started_at: chrono::DateTime<chrono::Utc>, e: &cxb_engine::EventRecord) -> CallEvent {
    CallEvent {
        kind: e.kind.to_string(),
        timestamp: rfc3339(started_at, e.at),
        offset_seconds: round3(e.at.as_secs_f64()),
        data: strip_nulls(e.data.clone()),
    }
}

fn clean_event(mut e: CallEvent) -> CallEvent {
    e.data = strip_nulls(e.data);
    e.offset_seconds = round3(e.offset_seconds);
    e
}

/// `latency`: averages over the turns, plus the custom-tool round trip from the events.
pub fn latency_summary(samples: &[cxb_engine::LatencySample], events: &[CallEvent]) -> Option<LatencySummary> {
    let tool = tool_round_trips_ms(events);
    if samples.is_empty() && tool.is_empty() {
        return None;
    }
    fn avg(v: impl Iterator<Item = f64>) -> Option<f64> {
        let (n, sum) = v.filter(|x| x.is_finite()).fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
        (n > 0).then(|| round3(sum / n as f64))
    }
    Some(LatencySummary {
        turns: samples.len() as u32,
        stt_final_delay_avg_ms: avg(samples.iter().map(|l| l.stt_final_delay_ms)),
        llm_ttft_avg_ms: avg(samples.iter().filter_map(|l| l.llm_ttft_ms)),
        tts_ttfb_avg_ms: avg(samples.iter().filter_map(|l| l.tts_ttfb_ms)),
        total_avg_response_ms: avg(samples.iter().filter_map(|l| l.total_response_ms)),
        total_max_response_ms: samples
            .iter()
            .filter_map(|l| l.total_response_ms)
            .filter(|x| x.is_finite())
            .reduce(f64::max)
            .map(round3),
        tool_avg_ms: avg(tool.into_iter()),
    })
}

/// `tool_call` → `custom_tool_result` with the same `tool_call_id`, in milliseconds.
fn tool_round_trips_ms(events: &[CallEvent]) -> Vec<f64> {
    let mut started: HashMap<&str, f64> = HashMap::new();
    let mut out = Vec::new();
    for e in events {
        let Some(id) = e.data.get("tool_call_id").and_then(Value::as_str) else { continue };
        match e.kind.as_str() {
            "tool_call" => {
                started.insert(id, e.offset_seconds);
            }
            "custom_tool_result" => {
                if let Some(t0) = started.remove(id) {
                    out.push(((e.offset_seconds - t0) * 1000.0).max(0.0));
                }
            }
            _ => {}
        }
    }
    out
}

/// `intents` from `intent` events (their data objects, with the offset), if any.
pub fn intents_from_events(events: &[CallEvent]) -> Option<Vec<Value>> {
    let v: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == "intent")
        .map(|e| {
            let mut m = e.data.clone();
            m.entry("offset_seconds").or_insert_with(|| Value::from(e.offset_seconds));
            Value::Object(m)
        })
        .collect();
    (!v.is_empty()).then_some(v)
}

/// True when the customer said anything (a transcript line from the customer with text).
pub fn has_customer_message(p: &CallResultsPayload) -> bool {
    p.transcript.iter().any(|l| l.speaker == Speaker::Customer && !l.text.trim().is_empty())
}

fn data_str(e: &CallEvent, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match e.data.get(*k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Derive the transfer fields from the events (seed 001): `was_transferred` is true only when a
/// `transfer_sent` event fired and no later `transfer_failed` did.
///
/// Event data keys read (documented in proto/README.md): `transfer_sent` and `transfer_failed`
/// carry `destination`, `target`, `reason` (the LLM's reason), `method`; `transfer_failed` also
/// carries `error` (why it failed). The details come from the last `transfer_sent` (falling back
/// to the last `transfer_failed` when none was sent); `transfer_at` is that event's offset;
/// `transfer_failed_reason` is set only when the transfer did not stand.
pub fn apply_transfer_state(p: &mut CallResultsPayload) {
    let last_sent = p.events.iter().rposition(|e| e.kind == "transfer_sent");
    let last_failed = p.events.iter().rposition(|e| e.kind == "transfer_failed");
    let was_transferred = match (last_sent, last_failed) {
        (Some(s), Some(f)) => s > f,
        (Some(_), None) => true,
        _ => false,
    };
    p.was_transferred = Some(was_transferred);
    p.transfer_destination = None;
    p.transfer_target = None;
    p.transfer_reason = None;
    p.transfer_method = None;
    p.transfer_at = None;
    p.transfer_failed_reason = None;
    let Some(main) = last_sent.or(last_failed) else { return };
    let failed = (!was_transferred).then(|| last_failed.map(|f| &p.events[f])).flatten();
    let e = &p.events[main];
    let pick = |keys: &[&str]| data_str(e, keys).or_else(|| failed.and_then(|f| data_str(f, keys)));
    let destination = pick(&["destination", "transfer_to", "transferTo"]);
    let target = pick(&["target", "target_label", "target_id"]);
    let reason = pick(&["reason"]);
    let method = pick(&["method"]);
    let at = e.offset_seconds;
    let failed_reason = failed.map(|f| data_str(f, &["error", "failed_reason"]).unwrap_or_else(|| "unknown".into()));
    p.transfer_destination = destination;
    p.transfer_target = target;
    p.transfer_reason = reason;
    p.transfer_method = method;
    p.transfer_at = Some(round3(at));
    p.transfer_failed_reason = failed_reason;
}

/// CXB API stores with exclude_none; a `null` inside an echoed object must not reach it either.
pub fn strip_nulls(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|_, v| !v.is_null());
    for v in m.values_mut() {
        strip_value(v);
    }
    m
}

/// [`strip_nulls`] for any JSON value.
pub fn strip_nulls_value(mut v: Value) -> Value {
    strip_value(&mut v);
    v
}

fn strip_value(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|_, x| !x.is_null());
            o.values_mut().for_each(strip_value);
        }
        Value::Array(a) => {
            a.retain(|x| !x.is_null());
            a.iter_mut().for_each(strip_value);
        }
        _ => {}
    }
}

/// Write `bytes` to `dir/name` atomically and durably (tmp + fsync + rename + dir fsync).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &dst)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(dst)
}
