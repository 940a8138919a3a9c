//! Handing a finished call's result to CXB API (or the local results directory).
//!
//! This is the plain retrying POST of the foundation; the durable outbox replaces the HTTP
//! path. A result that cannot be delivered is written to `results/undelivered/` — never lost.

use std::path::PathBuf;
use std::time::Duration;

use cxb_wire::CallResultsPayload;
use tracing::{error, info, warn};

use crate::auth;
use crate::results::write_atomic;

#[derive(Debug, Clone)]
pub struct ResultDelivery {
    http: reqwest::Client,
    secret: Option<String>,
    results_dir: PathBuf,
}

impl ResultDelivery {
    pub fn new(http: reqwest::Client, secret: Option<String>, results_dir: PathBuf) -> Self {
        Self { http, secret, results_dir }
    }

    /// Deliver in the background; returns once the delivery is under way (or written locally).
    pub async fn deliver(&self, payload: CallResultsPayload, webhook_url: Option<String>) {
        let body = match serde_json::to_vec(&payload) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, session_id = %payload.session_id, "result does not serialise");
                return;
            }
        };
        let name = format!("{}.json", sanitize(&payload.session_id));
        let Some(url) = webhook_url.filter(|u| !u.trim().is_empty()) else {
            match write_atomic(&self.results_dir, &name, &body) {
                Ok(path) => info!(path = %path.display(), "result written to the local results directory"),
                Err(e) => error!(error = %e, dir = %self.results_dir.display(), "could not write the result locally"),
            }
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=6 {
                let req = this
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .timeout(Duration::from_secs(10));
                match auth::with_secret(req, this.secret.as_deref()).send().await {
                    Ok(r) if r.status().is_success() => {
                        info!(%url, attempt, "result delivered");
                        metrics::counter!("cxb_results_delivered_total").increment(1);
                        return;
                    }
                    Ok(r)
                        if r.status().is_client_error() && r.status().as_u16() != 408 && r.status().as_u16() != 429 =>
                    {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        error!(%url, status, body = %text.chars().take(500).collect::<String>(), "results endpoint rejected the payload");
                        break;
                    }
                    Ok(r) => warn!(%url, attempt, status = r.status().as_u16(), "result delivery failed; retrying"),
                    Err(e) => warn!(%url, attempt, error = %e, "result delivery failed; retrying"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            let dir = this.results_dir.join("undelivered");
            match write_atomic(&dir, &name, &body) {
                Ok(path) => error!(path = %path.display(), "result could not be delivered; kept locally"),
                Err(e) => error!(error = %e, "result could not be delivered nor kept locally"),
            }
        });
    }
}

/// File-name-safe form of a session id.
pub fn sanitize(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(128).collect()
}
