//! Handing a finished call's result to the durable outbox (contract §13.6).
//!
//! A result with a `webhook_url` is persisted (fsync'd) in the outbox before this returns —
//! the call counts as finished only then — and delivered by the outbox workers with retries.
//! Without a webhook (embedded default) it is written to the local results directory. If the
//! outbox refuses it (disk budget reached, I/O error), it is written to
//! `results/undelivered/` with a loud error: a result is never dropped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cxb_delivery::{HttpBody, HttpTarget, NewEntry, Outbox, OutboxError};
use cxb_wire::CallResultsPayload;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{error, info, warn};

use crate::auth;
use crate::results::{after_call_event, write_atomic};

/// Outbox kind of a call result; its entry's key is the session id, so the outbox can tell
/// which sessions' results it holds.
pub const RESULT_KIND: &str = "result";

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

/// A result waiting for post-call analysis, on disk so a crash cannot lose it. When post-call is
/// done, the final payload's exact bytes replace it (`post_call_done`) just before they go to the
/// outbox: a crash between the two delivers those same bytes again, never a second, different
/// payload for the session.
#[derive(Serialize, Deserialize)]
struct Staged {
    webhook_url: Option<String>,
    payload: Box<RawValue>,
    #[serde(default)]
    post_call_done: bool,
}

/// Just enough of a payload to name its session.
#[derive(Deserialize)]
struct SessionOf {
    session_id: String,
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
        let body = serde_json::to_string(payload).ok()?;
        let path = self.write_staged(&payload.session_id, webhook_url, body, false).await?;
        metrics::histogram!("cxb_result_persist_seconds").record(started.elapsed().as_secs_f64());
        info!(persisted_session = %payload.session_id, persisted_ms = started.elapsed().as_millis() as u64, "result persisted (staged for post-call)");
        Some(path)
    }

    async fn write_staged(
        &self,
        session: &str,
        webhook_url: Option<&str>,
        body: String,
        post_call_done: bool,
    ) -> Option<PathBuf> {
        let payload = RawValue::from_string(body).ok()?;
        let staged = Staged { webhook_url: webhook_url.map(str::to_string), payload, post_call_done };
        let bytes = serde_json::to_vec(&staged).ok()?;
        let (dir, name) = (self.staging_dir(), format!("{}.json", sanitize(session)));
        match tokio::task::spawn_blocking(move || write_atomic(&dir, &name, &bytes)).await {
            Ok(Ok(path)) => Some(path),
            Ok(Err(e)) => {
                error!(error = %e, "could not stage the result");
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
        let session = payload.session_id.clone();
        let body = match serde_json::to_string(&payload) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "result does not serialise");
                return Delivered::Lost;
            }
        };
        if staged.is_some() {
            // The bytes about to be delivered replace the staged copy first (see `Staged`).
            self.write_staged(&session, webhook_url.as_deref(), body.clone(), true).await;
        }
        let delivered = self.deliver_body(&session, body, webhook_url).await;
        if let (Some(path), false) = (staged, matches!(delivered, Delivered::Lost)) {
            if let Err(e) = tokio::fs::remove_file(&path).await {
                warn!(error = %e, path = %path.display(), "could not remove the staged result");
            }
        }
        delivered
    }

    /// The session's result is on disk outside the outbox: staged for post-call, or written to
    /// a local results file. (The outbox itself answers with [`Outbox::keys`].)
    pub fn is_persisted(&self, session: &str) -> bool {
        self.staging_dir().join(format!("{}.json", sanitize(session))).is_file() || self.local_result_exists(session)
    }

    fn local_result_exists(&self, session: &str) -> bool {
        let name = format!("{}.json", sanitize(session));
        [self.results_dir.clone(), self.results_dir.join("undelivered")].iter().any(|dir| dir.join(&name).is_file())
    }

    /// At startup, before the outbox delivers: results staged by a process that stopped during
    /// post-call. A session whose result already reached the outbox (or a local file) is only
    /// cleaned up; a finished post-call's bytes are delivered as they are; an interrupted one's
    /// result is delivered with an event saying so.
    pub async fn recover_staged(&self) -> usize {
        let Ok(mut dir) = tokio::fs::read_dir(self.staging_dir()).await else { return 0 };
        let held = self.outbox.keys(RESULT_KIND);
        let mut n = 0;
        while let Ok(Some(e)) = dir.next_entry().await {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                let _ = tokio::fs::remove_file(&path).await; // a torn temp file from a crash
                continue;
            }
            let Ok(bytes) = tokio::fs::read(&path).await else { continue };
            let staged = serde_json::from_slice::<Staged>(&bytes).and_then(|s| {
                let session = serde_json::from_str::<SessionOf>(s.payload.get())?.session_id;
                Ok((s, session))
            });
            let (s, session) = match staged {
                Ok(x) => x,
                Err(err) => {
                    error!(error = %err, path = %path.display(), "unreadable staged result left in place for an operator");
                    continue;
                }
            };
            if held.contains(&session) || self.local_result_exists(&session) {
                info!(%session, "staged result already persisted before the restart; not delivered again");
                let _ = tokio::fs::remove_file(&path).await;
                continue;
            }
            let body = if s.post_call_done {
                warn!(%session, "delivering a result finished just before a restart");
                s.payload.get().to_string()
            } else {
                let Ok(mut payload) = serde_json::from_str::<CallResultsPayload>(s.payload.get()) else {
                    error!(path = %path.display(), "staged payload is not a result; left in place for an operator");
                    continue;
                };
                let interrupted = after_call_event(&payload, "post_call_interrupted", serde_json::json!({}));
                payload.events.push(interrupted);
                warn!(%session, "delivering a result staged before a restart (post-call analysis was interrupted)");
                match serde_json::to_string(&payload) {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            };
            if !matches!(self.deliver_body(&session, body, s.webhook_url).await, Delivered::Lost) {
                let _ = tokio::fs::remove_file(&path).await;
                n += 1;
            }
        }
        n
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Persist the result; returns once it is durable.
    pub async fn deliver(&self, payload: CallResultsPayload, webhook_url: Option<String>) -> Delivered {
        match serde_json::to_string(&payload) {
            Ok(body) => self.deliver_body(&payload.session_id, body, webhook_url).await,
            Err(e) => {
                error!(error = %e, "result does not serialise");
                Delivered::Lost
            }
        }
    }

    /// Persist a serialised result: these bytes are what the receiver gets, on every attempt.
    async fn deliver_body(&self, session: &str, body: String, webhook_url: Option<String>) -> Delivered {
        let name = format!("{}.json", sanitize(session));
        let Some(url) = webhook_url.filter(|u| !u.trim().is_empty()) else {
            return self
                .write_local(&self.results_dir.clone(), &name, &body, "result written to the local results directory")
                .await;
        };
        let started = Instant::now();
        let entry = HttpBody::raw_json(body.clone()).map(|body| {
            let t = HttpTarget { method: "POST".into(), url: url.clone(), headers: Vec::new(), body }
                .header("content-type", "application/json");
            auth::secret_headers(self.secret.as_deref()).into_iter().fold(t, |t, (k, v)| t.header(k, v))
        });
        let result = match entry {
            Ok(target) => self.outbox.enqueue(NewEntry::http(RESULT_KIND, session.to_string(), target)).await,
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
                self.write_local(&dir, &name, &body, "result kept locally for manual replay").await
            }
        }
    }

    /// A local result file: pretty JSON for people reading it (the content of `body`).
    async fn write_local(&self, dir: &Path, name: &str, body: &str, msg: &'static str) -> Delivered {
        let pretty = match serde_json::from_str::<serde_json::Value>(body).and_then(|v| serde_json::to_vec_pretty(&v)) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "result does not serialise");
                return Delivered::Lost;
            }
        };
        let (dir, name) = (dir.to_path_buf(), name.to_string());
        match tokio::task::spawn_blocking(move || write_atomic(&dir, &name, &pretty)).await {
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

#[cfg(test)]
mod tests {
    use cxb_delivery::{OutboxConfig, State, Target};

    use super::*;

    async fn delivery(dir: &Path) -> ResultDelivery {
        let outbox = Outbox::open(OutboxConfig::new(dir.join("outbox"))).await.unwrap();
        ResultDelivery::new(outbox, Some("s3cret".into()), dir.join("results"))
    }

    fn payload(session: &str) -> CallResultsPayload {
        CallResultsPayload { session_id: session.into(), call_duration_seconds: 12.5, ..Default::default() }
    }

    /// The bodies of the pending result entries for `session`.
    async fn bodies(d: &ResultDelivery, session: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in d.outbox().list(State::Pending).await.into_iter().filter(|e| e.key == session) {
            let detail = d.outbox().get(e.id.as_str()).await.unwrap();
            let Some(cxb_delivery::Entry { target: Target::Http(t), .. }) = detail.entry else { panic!("http") };
            out.push(String::from_utf8(t.body.as_bytes().to_vec()).unwrap());
        }
        out
    }

    const HOOK: &str = "http://127.0.0.1:9/results";

    #[tokio::test]
    async fn a_staged_result_already_in_the_outbox_is_not_delivered_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = delivery(dir.path()).await;
        let staged = d.stage(&payload("s-1"), Some(HOOK)).await.expect("staged");
        // A stop after the result reached the outbox but before the staged copy was removed.
        let mut done = payload("s-1");
        done.post_call_analysis = Some(serde_json::Map::from_iter([("summary".into(), "ok".into())]));
        d.deliver(done, Some(HOOK.into())).await;
        assert!(d.is_persisted("s-1"));
        assert_eq!(d.recover_staged().await, 0);
        assert!(!staged.exists(), "cleaned up");
        assert_eq!(bodies(&d, "s-1").await.len(), 1, "one result for the session");
    }

    #[tokio::test]
    async fn a_finished_post_call_is_recovered_with_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let d = delivery(dir.path()).await;
        let staged = d.stage(&payload("s-2"), Some(HOOK)).await.expect("staged");
        let mut done = payload("s-2");
        done.post_call_analysis = Some(serde_json::Map::from_iter([("summary".into(), "fine".into())]));
        let body = serde_json::to_string(&done).unwrap();
        // Killed between the final bytes replacing the staged copy and the outbox write.
        d.write_staged("s-2", Some(HOOK), body.clone(), true).await.unwrap();
        drop(d);
        let d = delivery(dir.path()).await;
        assert_eq!(d.recover_staged().await, 1);
        assert_eq!(bodies(&d, "s-2").await, vec![body], "exactly the bytes post-call produced");
        assert!(!staged.exists());
    }

    #[tokio::test]
    async fn an_interrupted_post_call_is_recovered_with_an_event_and_complete_removes_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let d = delivery(dir.path()).await;
        d.stage(&payload("s-3"), Some(HOOK)).await.expect("staged");
        assert_eq!(d.recover_staged().await, 1);
        let got: CallResultsPayload = serde_json::from_str(&bodies(&d, "s-3").await[0]).unwrap();
        assert_eq!(
            got.events.last().map(|e| (e.kind.as_str(), e.offset_seconds)),
            Some(("post_call_interrupted", 12.5))
        );
        assert!(!d.is_persisted("s-3"), "no staged copy left");

        let staged = d.stage(&payload("s-4"), Some(HOOK)).await.expect("staged");
        assert!(matches!(
            d.complete(Some(staged.clone()), payload("s-4"), Some(HOOK.into())).await,
            Delivered::Outbox(_)
        ));
        assert!(!staged.exists());
        assert_eq!(d.recover_staged().await, 0);
    }

    #[tokio::test]
    async fn a_local_result_counts_as_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let d = delivery(dir.path()).await;
        assert!(!d.is_persisted("s-5"));
        assert!(matches!(d.deliver(payload("s-5"), None).await, Delivered::Local(_)));
        assert!(d.is_persisted("s-5"));
        let text = std::fs::read_to_string(dir.path().join("results/s-5.json")).unwrap();
        assert!(text.contains("\n  \"session_id\": \"s-5\""), "pretty for people: {text}");
    }
}
