//! Prometheus metrics: one recorder per process, rendered at `GET /metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Per-stage latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];

/// Install the recorder once; later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests in one process): keep ours anyway.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_gauge!("cxb_active_calls", "Calls holding a CallTracker slot");
    metrics::describe_gauge!("cxb_call_slots", "CallTracker slots (MAX_CONCURRENT_CALLS)");
    metrics::describe_counter!("cxb_calls_total", "Finished calls by disconnected_by and transport");
    metrics::describe_counter!("cxb_calls_rejected_total", "Calls refused before starting, by reason");
    metrics::describe_counter!("cxb_provider_errors_total", "Provider failures by service and provider");
    metrics::describe_counter!("cxb_protocol_errors_total", "Malformed inbound frames by transport");
    metrics::describe_histogram!("cxb_response_latency_seconds", "Caller speech end to first bot audio");
    metrics::describe_histogram!("cxb_llm_ttft_seconds", "LLM request to first token");
    metrics::describe_histogram!("cxb_llm_first_sentence_seconds", "LLM request to the first sentence sent to TTS");
    metrics::describe_histogram!("cxb_tts_ttfb_seconds", "TTS text to first audio");
    metrics::describe_histogram!("cxb_stt_final_delay_seconds", "VAD end of speech to final transcript");
    metrics::describe_histogram!("cxb_config_fetch_seconds", "Config fetch duration");
}
