//! The per-call driver: one task per call that performs the engine's actions and feeds it
//! transport frames, provider events and timer expiries (quinn's connection-driver shape).
//!
//! Every transport uses this same driver; a transport only contributes its [`CallLink`]
//! (a [`Transport`] adapter over a WebSocket, or a LiveKit room). A call goes:
//! - here: the WebSocket handshake and config fetch ([`run_ws_call`]), then [`run_conversation`];
//! - [`setup`]: engine rules, tools, recorder, VAD, STT and TTS;
//! - [`drive`]: the select loop and the actions it performs ([`inputs`] turns what arrives
//!   into engine inputs);
//! - [`handoff`]: after an Agent Desk transfer, the hold worker until the handed-off call ends;
//! - [`teardown`]: the result, metrics, the recording, staging and the post-call spawn.
//!
//! Every call journals its transcript and events as it goes ([`crate::journal`]) and listens to
//! its shutdown signal (the drain deadline: [`crate::drain`]).

use std::future::Future;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use cxb_transports::{CallMeta, HandshakeStep, Transport};
use cxb_wire::result::DisconnectedBy;
use cxb_wire::BotConfig;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

mod drive;
mod handoff;
mod inputs;
mod setup;
mod teardown;
mod timer;

use drive::Driver;
pub use handoff::{AgentDeskTarget, HandoffError};

use crate::app::AppState;
use crate::config_client::{CallLookup, ConfigFetchError};
use crate::link::{is_frame_too_large, CallLink, WsIo, WsLink};
use crate::results::{build_payload, CallSummary};
use crate::tracker::CallSlot;

/// Entry point for a WebSocket transport once the upgrade is done and a slot is held.
pub async fn run_ws_call<T: Transport + 'static>(
    app: AppState,
    socket: WebSocket,
    transport: T,
    bot_id: String,
    slot: CallSlot,
) {
    let span = tracing::info_span!("call", call_id = %slot.id(), bot_id = %bot_id, transport = transport.name(), session_id = tracing::field::Empty);
    async move {
        let mut ws = WsIo::new(socket);
        let mut transport = transport;
        match handshake(&app, &mut ws, &mut transport, &bot_id).await {
            Ok((cfg, early_audio)) => {
                tracing::Span::current().record("session_id", cfg.session_id.as_str());
                let link = WsLink::new(ws, transport, app.settings.max_frame_bytes);
                let options = CallOptions { early_audio, ..Default::default() };
                run_conversation(&app, link, &bot_id, cfg, slot.shutdown(), options).await;
            }
            Err(HandshakeEnd::Reject { code, reason, metric }) => {
                metrics::counter!("cxb_calls_rejected_total", "reason" => metric).increment(1);
                ws.close(code, &reason).await;
            }
            Err(HandshakeEnd::Gone) => {
                metrics::counter!("cxb_calls_rejected_total", "reason" => "vanished_before_answer").increment(1);
                info!("caller left before the call was answered");
            }
        }
        drop(slot);
    }
    .instrument(span)
    .await
}

enum HandshakeEnd {
    Reject { code: u16, reason: String, metric: &'static str },
    Gone,
}

/// Read the transport's handshake (bounded), fetching the config as soon as metadata is ready.
async fn handshake<T: Transport>(
    app: &AppState,
    ws: &mut WsIo,
    transport: &mut T,
    bot_id: &str,
) -> Result<(BotConfig, Option<Vec<i16>>), HandshakeEnd> {
    let deadline = tokio::time::Instant::now() + app.settings.handshake_timeout();
    let mut config_task: Option<tokio::task::JoinHandle<(Result<BotConfig, ConfigFetchError>, Duration)>> = None;
    let early_audio = loop {
        let msg = match tokio::time::timeout_at(deadline, ws.rx.next()).await {
            Err(_) => {
                warn!("handshake not completed within {:?}", app.settings.handshake_timeout());
                return Err(HandshakeEnd::Reject {
                    code: 1008,
                    reason: "handshake timeout".into(),
                    metric: "handshake_timeout",
                });
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Err(HandshakeEnd::Gone),
            Ok(Some(Err(e))) => {
                warn!(error = %e, "websocket error during handshake");
                return Err(reject_for_ws_error(&e));
            }
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                warn!("binary frame during handshake");
                return Err(HandshakeEnd::Reject {
                    code: 1003,
                    reason: "handshake: binary frame".into(),
                    metric: "handshake",
                });
            }
            _ => continue,
        };
        match transport.handshake_text(&text) {
            Ok(HandshakeStep::Continue) => {}
            Ok(HandshakeStep::MetaReady) => {
                if config_task.is_none() {
                    config_task = Some(spawn_config_fetch(app, bot_id, transport));
                }
            }
            Ok(HandshakeStep::Answered { early_audio }) => break early_audio,
            Err(e) => {
                warn!(error = %e, "rejecting call: bad handshake");
                metrics::counter!("cxb_protocol_errors_total", "transport" => transport.name()).increment(1);
                return Err(HandshakeEnd::Reject { code: 1008, reason: e.to_string(), metric: "handshake" });
            }
        }
    };
    let task = match config_task {
        Some(t) => t,
        None => spawn_config_fetch(app, bot_id, transport),
    };
    let (result, took) = match task.await {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "config fetch task failed");
            return Err(HandshakeEnd::Reject {
                code: 1011,
                reason: "config fetch failed".into(),
                metric: "config_internal",
            });
        }
    };
    metrics::histogram!("cxb_config_fetch_seconds").record(took.as_secs_f64());
    match result {
        Ok(cfg) => {
            transport.on_config(&cfg);
            Ok((cfg, early_audio))
        }
        Err(e) => {
            warn!(error = %e, "call rejected: config fetch failed");
            if let Some(reason) = transport.config_failure_result() {
                record_unstarted_call(app, None, transport.name(), transport.meta(), bot_id, reason).await;
            }
            Err(HandshakeEnd::Reject { code: e.close_code(), reason: format!("config: {e}"), metric: e.label() })
        }
    }
}

/// A call that never started still gets a minimal result where the transport's contract says so
/// (Exotel without config → `outside_hours`): zero duration, POSTed to `{api base}/call-results`
/// derived from the config URL, through the outbox.
/// `config_url` is the call's own override of the settings' config URL (dial-out, attach).
pub(crate) async fn record_unstarted_call(
    app: &AppState,
    config_url: Option<&str>,
    transport: &'static str,
    meta: &CallMeta,
    bot_id: &str,
    reason: DisconnectedBy,
) {
    let Some(base) = config_url.or(app.settings.config_url.as_deref()).and_then(api_base) else {
        info!(%reason, "no CXB API configured; the unstarted call is only logged");
        return;
    };
    let session_id = format!(
        "{}-{}",
        transport,
        if meta.stream_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { meta.stream_id.clone() }
    );
    let summary = unstarted_summary(session_id, bot_id, transport, meta, reason);
    let payload = build_payload(&summary, None, vec![]);
    let _ = app.delivery.deliver(payload, Some(format!("{base}/call-results"))).await;
}

/// The summary of a call that never got a conversation: it lasted nothing and has no transcript.
pub(crate) fn unstarted_summary(
    session_id: String,
    bot_id: &str,
    transport: &'static str,
    meta: &CallMeta,
    reason: DisconnectedBy,
) -> CallSummary {
    CallSummary::new(session_id, bot_id, transport, meta, chrono::Utc::now(), Duration::ZERO, reason)
}

/// `https://api.example/api/v1/config` → `https://api.example/api/v1`.
pub fn api_base(config_url: &str) -> Option<String> {
    let trimmed = config_url.trim_end_matches('/');
    let base = trimmed.strip_suffix("/config").unwrap_or(trimmed);
    (!base.is_empty()).then(|| base.to_string())
}

fn reject_for_ws_error(e: &axum::Error) -> HandshakeEnd {
    if is_frame_too_large(e) {
        HandshakeEnd::Reject { code: 1009, reason: "frame too large".into(), metric: "frame_too_large" }
    } else {
        HandshakeEnd::Gone
    }
}

fn spawn_config_fetch<T: Transport>(
    app: &AppState,
    bot_id: &str,
    transport: &T,
) -> tokio::task::JoinHandle<(Result<BotConfig, ConfigFetchError>, Duration)> {
    let source = app.config.clone();
    let meta = transport.meta().clone();
    let bot_id = bot_id.to_string();
    spawn_in_call(async move {
        let started = Instant::now();
        let lookup = CallLookup {
            bot_id: &bot_id,
            caller_id: &meta.caller_id,
            stream_id: &meta.stream_id,
            connected_event: &meta.connected_event,
        };
        let r = source.fetch(&lookup).await;
        (r, started.elapsed())
    })
}

/// Every task a call spawns runs in the call's span, so its log lines carry `call_id`,
/// `bot_id` and `session_id`.
pub(crate) fn spawn_in_call<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(task.in_current_span())
}
/// What a route adds to a call beyond the link and the config.
#[derive(Default)]
pub struct CallOptions {
    /// Audio that arrived with the answering frame.
    pub early_audio: Option<Vec<i16>>,
    /// The greeting waits for this (LiveKit dial-out rings first); `Err` ends the call unanswered.
    pub answered: Option<tokio::sync::oneshot::Receiver<Result<(), Unanswered>>>,
    /// Agent Desk handoff is possible for this call (LiveKit inbound, outbound, attach).
    pub agent_desk: Option<AgentDeskTarget>,
}

/// Why a call that rang was never answered.
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub disconnected_by: DisconnectedBy,
    pub detail: String,
}

/// The conversation over an established link: setup, the drive loop, teardown. Returns once the
/// result is durable; post-call analysis and delivery go on in their own (tracked) task.
/// `shutdown` is the call's shutdown signal (its slot's): when it fires the worker ends the call.
pub(crate) async fn run_conversation<L: CallLink>(
    app: &AppState,
    link: L,
    bot_id: &str,
    mut cfg: BotConfig,
    shutdown: CancellationToken,
    options: CallOptions,
) {
    let CallOptions { early_audio, answered, agent_desk } = options;
    if cfg.bot_id.is_empty() {
        // The route's bot id names the call wherever the config does not (result, journal).
        cfg.bot_id = bot_id.to_string();
    }
    let mut driver = Driver::setup(app, link, cfg, agent_desk, shutdown).await;
    if let Some(audio) = early_audio {
        driver.on_caller_audio(&audio);
    }
    driver.drive(answered).await;
    driver.teardown(bot_id).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_call_tasks_run_in_the_call_span() {
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
        let span = tracing::info_span!("call", call_id = "c-1");
        let seen = async { spawn_in_call(async { tracing::Span::current().metadata().map(|m| m.name()) }).await }
            .instrument(span)
            .await
            .expect("task");
        assert_eq!(seen, Some("call"));
    }
}
