//! Building the CallResultsPayload (contract §5) and handing it to delivery.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cxb_engine::CallRecord;
use cxb_wire::result::{CallEvent, CallResultsPayload, DisconnectedBy, TranscriptEntry};
use serde_json::{json, Map, Value};

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

fn rfc3339(start: chrono::DateTime<chrono::Utc>, offset: Duration) -> String {
    let t = start + chrono::Duration::from_std(offset).unwrap_or_default();
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Assemble the payload. Absent facts are omitted, never null.
pub fn build_payload(s: &CallSummary, record: Option<&CallRecord>, extra_events: Vec<CallEvent>) -> CallResultsPayload {
    let mut transcript: Vec<TranscriptEntry> = Vec::new();
    let mut events: Vec<CallEvent> = extra_events;
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
        events.extend(r.events.iter().map(|e| CallEvent {
            kind: e.kind.to_string(),
            timestamp: rfc3339(s.started_at, e.at),
            offset_seconds: round3(e.at.as_secs_f64()),
            data: strip_nulls(e.data.clone()),
        }));
        if !r.latency.is_empty() {
            let samples: Vec<Value> = r
                .latency
                .iter()
                .map(|l| {
                    let mut m = Map::new();
                    m.insert("turn".into(), json!(l.turn));
                    m.insert("stt_final_delay_ms".into(), json!(round3(l.stt_final_delay_ms)));
                    if let Some(v) = l.llm_ttft_ms {
                        m.insert("llm_ttft_ms".into(), json!(round3(v)));
                    }
                    if let Some(v) = l.tts_ttfb_ms {
                        m.insert("tts_ttfb_ms".into(), json!(round3(v)));
                    }
                    if let Some(v) = l.total_response_ms {
                        m.insert("total_response_ms".into(), json!(round3(v)));
                    }
                    Value::Object(m)
                })
                .collect();
            let avg = |f: &dyn Fn(&cxb_engine::LatencySample) -> Option<f64>| {
                let v: Vec<f64> = r.latency.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| round3(v.iter().sum::<f64>() / v.len() as f64))
            };
            let mut m = Map::new();
            for (k, v) in [
                ("stt_final_delay_avg_ms", avg(&|l| Some(l.stt_final_delay_ms))),
                ("llm_ttft_avg_ms", avg(&|l| l.llm_ttft_ms)),
                ("tts_ttfb_avg_ms", avg(&|l| l.tts_ttfb_ms)),
                ("total_avg_response_ms", avg(&|l| l.total_response_ms)),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), json!(v));
                }
            }
            m.insert("turns".into(), json!(r.latency.len()));
            latency = Some(Value::Object(m));
            latency_samples = Some(samples);
        }
        let u = &r.llm_usage;
        usage = Some(json!({
            "llm": [{
                "purpose": "conversation",
                "requests": r.llm_requests,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens,
                "cache_read_input_tokens": u.cached_tokens,
                "cache_creation_input_tokens": u.cache_write_tokens,
            }],
            "tts_characters": r.tts_characters,
            "stt_audio_seconds": round3(s.duration.as_secs_f64()),
        }));
    }
    events.sort_by(|a, b| a.offset_seconds.total_cmp(&b.offset_seconds));
    let non_empty = |x: &str| (!x.is_empty()).then(|| x.to_string());
    CallResultsPayload {
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
    }
}

/// CXB API stores with exclude_none; a `null` inside an echoed object must not reach it either.
pub fn strip_nulls(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|_, v| !v.is_null());
    for v in m.values_mut() {
        strip_value(v);
    }
    m
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
