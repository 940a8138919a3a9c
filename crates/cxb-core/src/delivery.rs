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
use cxb_wire::result::CallEvent;
use cxb_wire::CallResultsPayload;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

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

/// A result waiting for post-call analysis, on disk so a crash cannot lose it.
#[derive(Serialize, Deserialize)]
struct Staged {
    webhook_url: Option<String>,
    payload: CallResultsPayload,
}

impl ResultDelivery {
    pub fn new(outbox: Outbox, secret: Option<String>, results_dir: PathBuf) -> Self {
        Self { outbox, secret, results_dir }
    }

    fn staging_dir(&self) -> PathBuf {
        self.results_dir.join("staging")
    }

    /// Persist a finished call's result (fsync'd) before post-call analysis starts. From here
    /// on the result survives a crash: `recover_staged` delivers it at the next start.
    pub async fn stage(&self, payload: &CallResultsPayload, webhook_url: Option<&str>) -> Option<PathBuf> {
        let started = Instant::now();
        let staged = Staged { webhook_url: webhook_url.map(str::to_string), payload: payload.clone() };
        let body = serde_json::to_vec(&staged).ok()?;
        let (dir, name) = (self.staging_dir(), format!("{}.json", sanitize(&payload.session_id)));
        match tokio::task::spawn_blocking(move || write_atomic(&dir, &name, &body)).await {
            Ok(Ok(path)) => {
                metrics::histogram!("cxb_result_persist_seconds").record(started.elapsed().as_secs_f64());
                info!(persisted_session = %payload.session_id, persisted_ms = started.elapsed().as_millis() as u64, "result persisted (staged for post-call)");
                Some(path)
            }
            Ok(Err(e)) => {
                error!(error = %e, "could not stage the result; it is delivered after post-call without a crash guard");
                None
            }
            Err(e) => {
                error!(error = %e, "staging task failed");
                None
            }
        }
    }

    /// Deliver the post-processed result, then drop its staging copy.
    pub async fn complete(
        &self,
        staged: Option<PathBuf>,
        payload: CallResultsPayload,
        webhook_url: Option<String>,
    ) -> Delivered {
        let delivered = self.deliver(payload, webhook_url).await;
        if let (Some(path), false) = (staged, matches!(delivered, Delivered::Lost)) {
            if let Err(e) = tokio::fs::remove_file(&path).await {
                warn!(error = %e, path = %path.display(), "could not remove the staged result");
            }
        }
        delivered
    }

    /// At startup: results staged by a process that died during post-call are delivered as
    /// they are, with an event saying the analysis was interrupted.
    pub async fn recover_staged(&self) -> usize {
        let Ok(mut dir) = tokio::fs::read_dir(self.staging_dir()).await else { return 0 };
        let mut n = 0;
        while let Ok(Some(e)) = dir.next_entry().await {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                let _ = tokio::fs::remove_file(&path).await; // a torn temp file from a crash
                continue;
            }
            let Ok(bytes) = tokio::fs::read(&path).await else { continue };
            match serde_json::from_slice::<Staged>(&bytes) {
                Ok(mut s) => {
                    s.payload.events.push(CallEvent {
                        kind: "post_call_interrupted".into(),
                        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        offset_seconds: s.payload.call_duration_seconds,
                        data: Default::default(),
                    });
                    warn!(session_id = %s.payload.session_id, "delivering a result staged before a restart (post-call analysis was interrupted)");
                    self.complete(Some(path), s.payload, s.webhook_url).await;
                    n += 1;
                }
                Err(err) => {
                    error!(error = %err, path = %path.display(), "unreadable staged result left in place for an operator")
                }
            }
        }
        n
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
                info!(entry = %id, persisted_session = %session, %url, persisted_ms = started.elapsed().as_millis() as u64, "result persisted");
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
