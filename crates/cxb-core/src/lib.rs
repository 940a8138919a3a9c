//! The cxb-core worker: routes (axum), CallTracker, the per-call driver, config fetch, result
//! delivery, settings and metrics. `run` is what the binary calls.

pub mod admin;
pub mod app;
pub mod auth;
pub mod call;
pub mod config_client;
pub mod delivery;
pub mod drain;
pub mod journal;
pub mod knowledge;
pub mod link;
pub mod livekit;
pub mod metrics_setup;
pub mod postcall;
pub mod prompt_vars;
pub mod providers;
pub mod recordings;
pub mod results;
pub mod settings;
pub mod smart_turn;
pub mod tracker;
pub mod transport_routes;
pub mod transports;
pub(crate) mod variables;

use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use settings::Settings;

/// Bind, serve, and on SIGTERM/SIGINT drain: refuse new calls, let live ones finish and their
/// results persist, then exit; at `drain_secs` the calls still live are ended ([`drain`]).
pub async fn run(settings: Settings) -> anyhow_free::Result<()> {
    let listener = TcpListener::bind(settings.listen_addr).await?;
    serve(listener, settings, shutdown_signal()).await
}

/// Serve on an already-bound listener until `shutdown` resolves, then drain.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow_free::Result<()> {
    serve_with(listener, settings, shutdown, |_| {}).await
}

/// [`serve`] with a hook that adjusts the shared state before the first request — how
/// in-process tests put a fake LiveKit room connector in place of the FFI engine.
pub async fn serve_with(
    listener: TcpListener,
    mut settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    customize: impl FnOnce(&mut app::AppState),
) -> anyhow_free::Result<()> {
    settings.derive_public_url(listener.local_addr()?);
    let handle = metrics_setup::install();
    let drain = Duration::from_secs(settings.drain_secs);
    let mode = match &settings.config_url {
        Some(u) => format!("config from {u}"),
        None => format!(
            "embedded default: bots from {}, results to {}",
            settings.bots_dir.display(),
            settings.results_dir().display()
        ),
    };
    let mut state = app::AppState::new(settings, handle).await?;
    customize(&mut state);
    let tracker = state.tracker.clone();
    let outbox = state.delivery.outbox().clone();
    let outbox_stop = tokio_util::sync::CancellationToken::new();
    // Recordings: register the uploader, repair what a crash left, start retention — before
    // any call (a live call's file is also `.part`).
    let (_uploader, sweeper) = recordings::start_services(&state.settings, &outbox, outbox_stop.clone()).await?;
    // What the last process left unfinished, before the outbox delivers anything (it decides by
    // what the outbox holds): calls it died in, then results it staged for post-call.
    let crashed = journal::recover(&state).await;
    if crashed > 0 {
        warn!(crashed, "delivered the results of calls the last process died in");
    }
    let recovered = state.delivery.recover_staged().await;
    if recovered > 0 {
        warn!(recovered, "delivered results staged before the last stop");
    }
    let outbox_task = outbox.start(outbox_stop.clone());
    let addr = listener.local_addr()?;
    let stats = outbox.stats();
    info!(%addr, max_calls = tracker.max(), %mode, outbox_pending = stats.pending, outbox_dead = stats.dead, "cxb-core listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drainer = state.drain.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!("shutdown requested");
        drainer.run(drain).await;
        let _ = stop_tx.send(());
    });
    let app = app::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Media frames are small and timed: Nagle would hold a frame written while the previous one
    // is unacknowledged until the peer's delayed ACK (up to 40 ms) — audible jitter.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            warn!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        })
        .await?;
    // Give in-flight deliveries a moment; anything still pending stays on disk for the next start.
    let _ = outbox.wait_idle(Duration::from_secs(2)).await;
    outbox_stop.cancel();
    let _ = outbox_task.await;
    let _ = sweeper.await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// The library's own error for `run` (the binary wraps it in anyhow).
pub mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Error>;

    #[derive(Debug, thiserror::Error)]
    pub enum Error {
        #[error("I/O: {0}")]
        Io(#[from] std::io::Error),
        #[error("outbox: {0}")]
        Outbox(#[from] cxb_delivery::OutboxError),
        #[error("recording storage: {0}")]
        Storage(#[from] cxb_delivery::storage::StorageError),
    }
}
