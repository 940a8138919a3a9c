//! After the conversation: providers closed, the handoff's hold (if any), the result built and
//! made durable (then the call's journal is dropped), metrics, the recording finished and
//! queued, and post-call analysis spawned as work the drain waits for.

use std::time::Duration;

use cxb_engine::CallRecord;
use cxb_wire::result::DisconnectedBy;
use cxb_wire::CallResultsPayload;
use serde_json::json;
use tracing::{error, info, warn};

use super::drive::Driver;
use crate::delivery::Delivered;
use crate::link::CallLink;
use crate::results::{after_call_event, build_payload, CallSummary};

impl<L: CallLink> Driver<'_, L> {
    /// End the call. Returns once the raw result is durable; post-call analysis then runs off
    /// the call's critical path (the slot is released when the caller returns).
    pub(super) async fn teardown(mut self, bot_id: &str) {
        self.flush_stt();
        if let Some(s) = &self.providers.stt {
            s.close();
        }
        self.providers.llm = None;
        let reason = self.log.forced_end.or(self.engine.disconnected_by()).unwrap_or(DisconnectedBy::Error);
        // A handed-off call stays up after the conversation: the hold worker keeps the caller
        // company until an agent takes over and the caller leaves (contract §6.7).
        let handoff = if reason == DisconnectedBy::TransferToAgent && self.link.supports_handoff() {
            Some(self.hold().await)
        } else {
            None
        };
        if let Some(t) = &self.providers.tts {
            t.close();
        }
        let summary = CallSummary::new(
            self.cfg.session_id.clone(),
            if self.cfg.bot_id.is_empty() { bot_id } else { &self.cfg.bot_id },
            self.link.name(),
            self.link.meta(),
            self.log.started_at,
            // A dial-out's ringing is not call time; a call that never started lasted nothing.
            self.log.conversation_started.map_or(Duration::ZERO, |s| self.t0.elapsed().saturating_sub(s)),
            reason,
        );
        let record = self.engine.record().clone();
        record_metrics(&record, &summary);
        let mut payload = build_payload(&summary, Some(&record), std::mem::take(&mut self.log.events));
        self.finish_recording(&mut payload).await;
        info!(
            disconnected_by = %reason,
            duration_s = format!("{:.2}", summary.duration.as_secs_f64()),
            turns = record.latency.len(),
            protocol_errors = self.log.protocol_errors,
            "call ended"
        );
        // The raw result is durable before the call counts as finished; from then on the
        // staged copy, not the journal, guards it.
        let app = self.app;
        let webhook = self.cfg.webhook_url.clone();
        let staged = app.delivery.stage(&payload, webhook.as_deref()).await;
        let journal = std::mem::take(&mut self.journal);
        let journal = match staged {
            Some(_) => {
                journal.close().await;
                None
            }
            None => Some(journal),
        };
        if let Some(report) = &handoff {
            self.report_handoff_end(report, &payload).await;
        }
        self.link.finish(self.log.bot_hung_up).await;
        let (postcall, delivery, cfg) = (app.postcall.clone(), app.delivery.clone(), self.cfg);
        // Tracked: the drain waits for it. Past the drain deadline's grace it stops, and the
        // result goes out without the analysis (`post_call_skipped`).
        let stop = app.drain.postcall_stopped();
        app.drain.spawn_postcall(async move {
            let payload = tokio::select! {
                biased;
                p = postcall.process(&cfg, &summary, &record, payload.clone()) => p,
                () = stop => {
                    warn!("the worker is stopping: delivering the result without post-call analysis");
                    let mut p = payload;
                    let skipped = after_call_event(&p, "post_call_skipped", json!({"reason": "worker_shutdown"}));
                    p.events.push(skipped);
                    p
                }
            };
            if let Some(entry) = crate::postcall::nxlink::outbox_entry(&cfg, &payload) {
                if let Err(e) = delivery.outbox().enqueue(entry).await {
                    error!(error = %e, "could not persist the NXLink callback");
                }
            }
            let delivered = delivery.complete(staged, payload, webhook).await;
            if let (Some(journal), false) = (journal, delivered == Delivered::Lost) {
                journal.close().await;
            }
        });
    }

    /// Close the call's WAV and queue its upload; the payload names the recording.
    async fn finish_recording(&mut self, payload: &mut CallResultsPayload) {
        let Some(rec) = self.recording.take() else { return };
        match rec.finish(self.t0.elapsed()).await {
            Ok(done) => {
                // The key is known now; the upload goes through the outbox and the fleet
                // fallback route serves the local copy meanwhile.
                if let Err(e) = crate::recordings::enqueue_upload(self.app.delivery.outbox(), &done).await {
                    error!(error = %e, key = %done.key, "could not persist the recording upload; the local copy stays served");
                }
                payload.recording_key = Some(done.key.clone());
                payload.recording_url = done.url.clone();
            }
            Err(e) => error!(error = %e, "recording could not be finished"),
        }
    }
}

/// Per-turn latencies into the stage histograms, and the call into `cxb_calls_total`.
fn record_metrics(record: &CallRecord, summary: &CallSummary) {
    for l in &record.latency {
        if let Some(v) = l.total_response_ms {
            metrics::histogram!("cxb_response_latency_seconds").record(v / 1000.0);
        }
        if let Some(v) = l.llm_ttft_ms {
            metrics::histogram!("cxb_llm_ttft_seconds").record(v / 1000.0);
        }
        if let Some(v) = l.llm_first_sentence_ms {
            metrics::histogram!("cxb_llm_first_sentence_seconds").record(v / 1000.0);
        }
        if let Some(v) = l.tts_ttfb_ms {
            metrics::histogram!("cxb_tts_ttfb_seconds").record(v / 1000.0);
        }
        metrics::histogram!("cxb_stt_final_delay_seconds").record(l.stt_final_delay_ms / 1000.0);
    }
    let reason = summary.disconnected_by.as_str();
    metrics::counter!("cxb_calls_total", "disconnected_by" => reason, "transport" => summary.transport).increment(1);
}
