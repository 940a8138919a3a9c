//! Handing a finished call's result to the durable outbox (contract §13.6).
//!
//! A result with a `webhook_url` is persisted (fsync'd) in the outbox before this returns —
//! the call counts as finished only then — and delivered by the outbox workers with retries.
//! Without a webhook (embedded default) it is written to the local results directory. If the
//! outbox refuses it (disk budget reached, I/O error), it is written to
//! `results/undelivered/` with a loud error: a result is never dropped.

use std::path::PathBuf;
use std::time::Instant;

use cxb_delivery::{HttpTarget, NewEntry, Outbox, OutboxError};
use cxb_wire::CallResultsPayload;
use tracing::{error, info};

use crate::auth;
use crate::results::write_atomic;

#[derive(Clone)]
pub struct ResultDelivery {
    outbox: Outbox,
    secret: Option<String>,
    results_dir: PathBuf,
}

/// Where a result ended up.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    /// Persisted in the outbox under this entry id.
    Outbox(String),
    /// Written to a local file (embedded default, or the outbox refused it).
    Local(PathBuf),
    /// Could not be persisted anywhere (logged at error level).
    Lost,
}

impl ResultDelivery {
    pub fn new(outbox: Outbox, secret: Option<String>, results_dir: PathBuf) -> Self {
        Self { outbox, secret, results_dir }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Persist the result; returns once it is durable.
    pub async fn deliver(&self, payload: CallResultsPayload, webhook_url: Option<String>) -> Delivered {
        let session = payload.session_id.clone();
        let name = format!("{}.json", sanitize(&session));
        let Some(url) = webhook_url.filter(|u| !u.trim().is_empty()) else {
            return self
                .write_local(
                    &self.results_dir.clone(),
                    &name,
                    &payload,
                    "result written to the local results directory",
                )
                .await;
        };
        let started = Instant::now();
        let entry = HttpTarget::post_json(url.clone(), &payload).map(|t| {
            let t = t.header("content-type", "application/json");
            auth::secret_headers(self.secret.as_deref()).into_iter().fold(t, |t, (k, v)| t.header(k, v))
        });
        let result = match entry {
            Ok(target) => self.outbox.enqueue(NewEntry::http("result", session.clone(), target)).await,
            Err(e) => Err(OutboxError::Serialize(e)),
        };
        match result {
            Ok(id) => {
                metrics::histogram!("cxb_result_persist_seconds").record(started.elapsed().as_secs_f64());
                info!(entry = %id, %url, persisted_ms = started.elapsed().as_millis() as u64, "result persisted");
                Delivered::Outbox(id.to_string())
            }
            Err(e) => {
                error!(error = %e, %url, "outbox refused the result; keeping it in results/undelivered");
                metrics::counter!("cxb_results_undelivered_total").increment(1);
                let dir = self.results_dir.join("undelivered");
                self.write_local(&dir, &name, &payload, "result kept locally for manual replay").await
            }
        }
    }

    async fn write_local(
        &self,
        dir: &std::path::Path,
        name: &str,
        payload: &CallResultsPayload,
        msg: &'static str,
    ) -> Delivered {
        let body = match serde_json::to_vec_pretty(payload) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "result does not serialise");
                return Delivered::Lost;
            }
        };
        let (dir, name) = (dir.to_path_buf(), name.to_string());
        match tokio::task::spawn_blocking(move || write_atomic(&dir, &name, &body)).await {
            Ok(Ok(path)) => {
                info!(path = %path.display(), "{msg}");
                Delivered::Local(path)
            }
            Ok(Err(e)) => {
                error!(error = %e, "could not write the result locally");
                Delivered::Lost
            }
            Err(e) => {
                error!(error = %e, "result writer task failed");
                Delivered::Lost
            }
        }
    }
}

/// File-name-safe form of a session id.
pub fn sanitize(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(128).collect()
}
