//! Secret-protected operations routes: the durable outbox's pending and dead-letter entries.
//!
//! Without a configured secret these routes answer only loopback clients.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cxb_delivery::OutboxError;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/outbox", get(list))
        .route("/admin/outbox/stats", get(stats))
        .route("/admin/outbox/{id}", get(show).delete(discard))
        .route("/admin/outbox/{id}/replay", post(replay))
        .route("/admin/outbox/{id}/discard", post(discard))
        .route_layer(middleware::from_fn_with_state(state, require_operator))
}

/// Every admin route: the secret (either header), or loopback when no secret is configured.
async fn require_operator(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if !allowed(&app, req.headers(), Some(peer)) {
        return forbidden();
    }
    next.run(req).await
}

fn allowed(app: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> bool {
    match app.settings.secret.as_deref() {
        Some(s) => auth::authorized(headers, Some(s)),
        None => peer.is_some_and(|p| p.ip().is_loopback()),
    }
}

fn forbidden() -> Response {
    (StatusCode::FORBIDDEN, Json(json!({"error":"forbidden"}))).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list(State(app): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let state = match q.state.as_deref().unwrap_or("pending") {
        "pending" => cxb_delivery::State::Pending,
        "dead" => cxb_delivery::State::Dead,
        other => {
            return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": format!("unknown state {other:?}")})))
                .into_response()
        }
    };
    Json(app.delivery.outbox().list(state).await).into_response()
}

async fn stats(State(app): State<AppState>) -> Response {
    Json(app.delivery.outbox().stats()).into_response()
}

async fn show(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.delivery.outbox().get(&id).await {
        Some(d) => Json(d).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error":"no such entry"}))).into_response(),
    }
}

fn op_result(r: Result<(), OutboxError>, what: &str, id: &str) -> Response {
    match r {
        Ok(()) => {
            tracing::info!(entry = %id, "outbox entry {what} by an operator");
            Json(json!({"status":"ok","id":id,"op":what})).into_response()
        }
        Err(OutboxError::NotFound(_)) => {
            (StatusCode::NOT_FOUND, Json(json!({"error":"no such entry"}))).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

async fn replay(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    op_result(app.delivery.outbox().replay(&id).await, "replayed", &id)
}

async fn discard(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    op_result(app.delivery.outbox().discard(&id).await, "discarded", &id)
}
