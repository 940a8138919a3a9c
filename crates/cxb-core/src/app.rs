//! Router, shared state and the non-call routes (health, readiness, fleet health, metrics).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cxb_providers::llm::LlmClient;
use cxb_transports::dialler::Dialler;
use cxb_transports::Transport;
use cxb_wire::health::{FleetHealth, FleetWorker, WorkerHealth};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tracing::warn;

use crate::call::run_ws_call;
use crate::config_client::{valid_bot_id, ConfigSource};
use crate::delivery::ResultDelivery;
use crate::drain::Drain;
use crate::settings::Settings;
use crate::tracker::{CallTracker, Refusal};

/// Shared by every route and call task.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub tracker: CallTracker,
    /// Post-call work the drain waits for.
    pub drain: Drain,
    pub config: ConfigSource,
    pub llm: LlmClient,
    pub delivery: ResultDelivery,
    pub postcall: crate::postcall::PostCall,
    pub http: reqwest::Client,
    /// Client for custom HTTP tools: bounded redirects, no https→http downgrade.
    pub tool_http: reqwest::Client,
    pub metrics: PrometheusHandle,
    /// LiveKit server API and room media; `None` when `LIVEKIT_URL` is unset (routes answer 503).
    pub livekit: Option<crate::livekit::LiveKit>,
    /// Where `search_knowledge` looks: CXB API, or the local index on the embedded default.
    pub knowledge: Option<Arc<dyn cxb_knowledge::KnowledgeSource>>,
}

impl AppState {
    /// Build the shared state; opens (and replays) the durable outbox.
    pub async fn new(settings: Settings, metrics: PrometheusHandle) -> Result<Self, cxb_delivery::OutboxError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("static reqwest settings");
        let config = match &settings.config_url {
            Some(url) => ConfigSource::Api {
                base_url: url.clone(),
                secret: settings.secret.clone(),
                timeout: settings.config_timeout(),
                http: http.clone(),
            },
            None => ConfigSource::Local { dir: settings.bots_dir.clone() },
        };
        let outbox = cxb_delivery::Outbox::open(settings.outbox_config()).await?;
        outbox.register(
            crate::postcall::nxlink::OUTBOX_KIND,
            Arc::new(crate::postcall::nxlink::NxlinkDeliverer::new(Duration::from_secs(10))),
        );
        let delivery = ResultDelivery::new(outbox, settings.secret.clone(), settings.results_dir());
        let llm = LlmClient::new();
        let postcall = crate::postcall::PostCall::new(llm.clone(), &settings);
        metrics::gauge!("cxb_call_slots").set(settings.max_concurrent_calls as f64);
        let livekit = crate::livekit::LiveKit::from_settings(&settings.livekit);
        let knowledge = crate::knowledge::source(&settings, &http).await;
        let tracker = CallTracker::new(settings.max_concurrent_calls);
        Ok(Self {
            livekit,
            knowledge,
            drain: Drain::new(tracker.clone()),
            tracker,
            settings: Arc::new(settings),
            config,
            llm,
            delivery,
            postcall,
            http,
            tool_http: cxb_tools::default_client().expect("static reqwest settings"),
            metrics,
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/fleet", get(fleet_health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_route))
        .route("/ws/{bot_id}", get(ws_route))
        .route("/recordings/{*key}", get(crate::recordings::serve_recording))
        .merge(crate::admin::routes(state.clone()))
        .merge(crate::transport_routes::routes())
        .merge(crate::livekit::routes())
        .with_state(state)
}

/// A call-start route's refusal: 429 at capacity (contract §13.4), 503 while draining; the body
/// is `{"status":"rejected","error":"at_capacity"|"draining"}`.
pub fn refused(why: Refusal) -> Response {
    (refusal_status(why), Json(json!({"status":"rejected","error":why.as_str()}))).into_response()
}

pub fn refusal_status(why: Refusal) -> StatusCode {
    match why {
        Refusal::AtCapacity => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Draining => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Every refused call is counted by reason and logged with its route.
pub fn count_refusal(why: Refusal, route: &str) {
    metrics::counter!("cxb_calls_rejected_total", "reason" => why.as_str()).increment(1);
    warn!(route, reason = why.as_str(), "refusing a call");
}

async fn ws_route(State(app): State<AppState>, Path(bot_id): Path<String>, ws: WebSocketUpgrade) -> Response {
    start_ws_call(app, bot_id, ws, Dialler::new())
}

/// Shared entry of every WebSocket telephony route: validate the bot id, take a CallTracker slot
/// before anything else (at capacity the upgrade is refused with 429), then upgrade and hand the
/// socket to the call driver with the route's transport adapter.
pub fn start_ws_call<T: Transport + 'static>(
    app: AppState,
    bot_id: String,
    ws: WebSocketUpgrade,
    transport: T,
) -> Response {
    if !valid_bot_id(&bot_id) {
        return (StatusCode::NOT_FOUND, Json(json!({"status":"rejected","error":"invalid bot id"}))).into_response();
    }
    let call_id = uuid::Uuid::new_v4().to_string();
    let slot = match app.tracker.try_acquire(call_id) {
        Ok(slot) => slot,
        Err(why) => {
            count_refusal(why, transport.name());
            return refused(why);
        }
    };
    let max = app.settings.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        // tungstenite zero-fills its whole read buffer on every read: 128 KiB by default is
        // most of the per-frame CPU at hundreds of calls; our frames are a few hundred bytes.
        .read_buffer_size(8 * 1024)
        .on_upgrade(move |socket| run_ws_call(app, socket, transport, bot_id, slot))
}

/// `status` of a draining worker in `/health` and `/ready`.
const DRAINING: &str = "draining";

/// A draining worker answers `status` `draining` with nothing available, so fleet selection and
/// HAProxy send it no new call; it never says `ok` again (it stays 200: it is alive).
fn worker_health(app: &AppState) -> WorkerHealth {
    let calls = app.tracker.active();
    let max = app.tracker.max();
    let total_capacity = max * app.settings.workers;
    let draining = app.tracker.is_draining();
    WorkerHealth {
        status: if draining { DRAINING } else { "ok" }.into(),
        worker_calls: calls,
        worker_max: max,
        total_capacity,
        total_available: if draining { 0 } else { total_capacity.saturating_sub(calls) },
        workers: app.settings.workers,
        worker_id: app.settings.worker_id.clone(),
        worker_pid: std::process::id(),
    }
}

async fn health(State(app): State<AppState>) -> Json<WorkerHealth> {
    Json(worker_health(&app))
}

/// `GET /ready`: 200 `{"status":"ready"}` while taking calls, 503 `{"status":"draining"}` once
/// stopping (Kubernetes readiness: a draining pod leaves the Service at once).
async fn ready(State(app): State<AppState>) -> Response {
    if app.tracker.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": DRAINING}))).into_response()
    } else {
        Json(json!({"status":"ready"})).into_response()
    }
}

async fn fleet_health(State(app): State<AppState>) -> Json<FleetHealth> {
    let me = worker_health(&app);
    // Free slots per worker: a draining one (this or a peer) has none.
    let mut available = vec![free_slots(&me)];
    let mut workers = vec![FleetWorker::Up {
        id: me.worker_id.clone(),
        calls: me.worker_calls,
        max: me.worker_max,
        pid: me.worker_pid,
    }];
    let peers = app.settings.fleet_peers.iter().filter(|p| !p.trim().is_empty()).enumerate().map(|(i, base)| {
        let http = app.http.clone();
        let url = format!("{}/health", base.trim_end_matches('/'));
        async move {
            let fallback_id = format!("peer-{}", i + 1);
            let r = http.get(&url).timeout(Duration::from_secs(3)).send().await;
            match r {
                Ok(resp) if resp.status().is_success() => match resp.json::<WorkerHealth>().await {
                    Ok(h) => {
                        let free = free_slots(&h);
                        let up = FleetWorker::Up {
                            id: h.worker_id,
                            calls: h.worker_calls,
                            max: h.worker_max,
                            pid: h.worker_pid,
                        };
                        (up, free)
                    }
                    Err(_) => (FleetWorker::Unreachable { id: fallback_id, status: "unreachable".into() }, 0),
                },
                _ => (FleetWorker::Unreachable { id: fallback_id, status: "unreachable".into() }, 0),
            }
        }
    });
    for (worker, free) in futures_util::future::join_all(peers).await {
        workers.push(worker);
        available.push(free);
    }
    let (mut calls, mut max) = (0, 0);
    for w in &workers {
        if let FleetWorker::Up { calls: c, max: m, .. } = w {
            calls += c;
            max += m;
        }
    }
    let mut available: u64 = available.iter().sum();
    if app.settings.health_cap16 {
        available = available.min(16);
    }
    Json(FleetHealth { status: "ok".into(), fleet_calls: calls, fleet_max: max, fleet_available: available, workers })
}

/// A worker's free slots for the fleet: none while it drains.
fn free_slots(h: &WorkerHealth) -> u64 {
    if h.status == DRAINING {
        0
    } else {
        h.worker_max.saturating_sub(h.worker_calls)
    }
}

async fn metrics_route(State(app): State<AppState>) -> Response {
    metrics::gauge!("cxb_active_calls").set(app.tracker.active() as f64);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}
