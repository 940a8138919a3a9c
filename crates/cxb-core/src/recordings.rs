//! Call recordings: storage settings, the per-call recorder hook-up, upload through the outbox,
//! retention, and the fleet-fallback route `GET /recordings/{key}` (contract §2.2, §13.5).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

/// Recording storage settings (env names documented in the README).
#[derive(Debug, Clone, clap::Args)]
pub struct StorageSettings {}

/// `GET /recordings/{*key}` — secret-protected local copy, with range requests.
pub async fn serve_recording(State(_app): State<AppState>, Path(_key): Path<String>, _headers: HeaderMap) -> Response {
    StatusCode::NOT_FOUND.into_response()
}
