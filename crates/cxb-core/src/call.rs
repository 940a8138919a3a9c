//! The per-call driver: one task per call that performs the engine's actions and feeds it
//! transport frames, provider events and timer expiries (quinn's connection-driver shape).
//!
//! Every transport uses this same driver; a transport only contributes its [`Transport`]
//! adapter (handshake, codec, hang-up/transfer frames).

use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use cxb_audio::vad::{VadSettings, VadTransition, VoiceDetector};
use cxb_engine::{Action, Conversation, EngineConfig, Input, Service, WordTime};
use cxb_providers::llm::{LlmEvent, LlmParams, LlmStream};
use cxb_providers::stt::{self, SttEvent, SttHandle};
use cxb_providers::tts::{self, TtsEvent, TtsHandle};
use cxb_transports::{CallMeta, HandshakeStep, Inbound, ProtocolError, Transport};
use cxb_wire::llm::ChatRequest;
use cxb_wire::result::{CallEvent, DisconnectedBy};
use cxb_wire::BotConfig;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn, Instrument};

mod handoff;
pub use handoff::AgentDeskTarget;

use crate::app::AppState;
use crate::config_client::{CallLookup, ConfigFetchError};
use crate::link::{is_frame_too_large, CallLink, LinkEvent, TransferStart, WsIo, WsLink};
use crate::providers;
use crate::results::{build_payload, CallSummary};
use crate::tracker::CallSlot;

/// Caller audio is batched into STT messages of this many milliseconds. Deepgram takes any
/// chunking; 60 ms cuts per-call messages and wake-ups threefold and stays far inside the VAD
/// end-of-speech hangover, so turn latency is unchanged.
const STT_BATCH_MS: usize = 60;

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
                run_conversation(&app, link, &bot_id, cfg, CallOptions { early_audio, ..Default::default() }).await;
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
    let meta = meta.clone();
    CallSummary {
        session_id,
        bot_id: bot_id.to_string(),
        transport,
        stream_id: meta.stream_id,
        caller_id: meta.caller_id,
        did: meta.did,
        call_direction: meta.call_direction,
        connected_event: meta.connected_event,
        started_at: chrono::Utc::now(),
        duration: Duration::ZERO,
        disconnected_by: reason,
    }
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
    tokio::spawn(
        async move {
            let started = Instant::now();
            let lookup = CallLookup {
                bot_id: &bot_id,
                caller_id: &meta.caller_id,
                stream_id: &meta.stream_id,
                connected_event: &meta.connected_event,
            };
            let r = source.fetch(&lookup).await;
            (r, started.elapsed())
        }
        .in_current_span(),
    )
}

/// Per-call state the driver keeps beside the engine.
struct Driver<'a, L: CallLink> {
    app: &'a AppState,
    cfg: BotConfig,
    link: L,
    engine: Conversation,
    t0: Instant,
    vad: Option<VoiceDetector>,
    stt: Option<SttHandle>,
    tts: Option<TtsHandle>,
    llm_params: LlmParams,
    llm: Option<(u64, LlmStream)>,
    tool_results: Vec<Input>,
    extra_events: Vec<CallEvent>,
    protocol_errors: u32,
    /// Caller audio waiting to go to STT: sent in 60 ms messages rather than one per frame.
    stt_buf: Vec<i16>,
    /// Stereo WAV of the call (customer left, bot right as played), streamed to disk.
    rec: Option<crate::recordings::CallRecording>,
    /// The bot sent the transport's hang-up primitive.
    bot_hung_up: bool,
    /// Playback marks placed and not yet echoed: mark name → engine utterance.
    marks: std::collections::HashMap<String, u64>,
    /// The bot's custom HTTP tools.
    tools: std::sync::Arc<cxb_tools::ToolRegistry>,
    /// Variables tool templates can use (`{{call.caller_id}}`, connected-event fields, ...).
    tool_vars: std::sync::Arc<cxb_tools::CallVariables>,
    /// Tool results from their tasks; bounded: at most a handful of tools run at once.
    tool_tx: mpsc::Sender<Input>,
    tool_rx: mpsc::Receiver<Input>,
    /// Smart-turn mode: the caller's last seconds at 16 kHz, the resampler to 16 kHz and its
    /// output scratch buffer.
    turn_audio: Option<(cxb_turn::TurnAudio, cxb_transports::resample::Resampler, Vec<i16>)>,
    /// Set when the call ends outside the conversation (a dial-out that was never answered).
    forced_end: Option<DisconnectedBy>,
    /// Call time when the conversation started (after the answer, for a dial-out).
    conversation_started: Option<Duration>,
    /// Agent Desk: where a handoff is enqueued, once one has been asked for.
    agent_desk: Option<handoff::AgentDeskTarget>,
}

/// What a route adds to a call beyond the link and the config.
#[derive(Default)]
pub struct CallOptions {
    /// Audio that arrived with the answering frame.
    pub early_audio: Option<Vec<i16>>,
    /// The greeting waits for this (LiveKit dial-out rings first); `Err` ends the call unanswered.
    pub answered: Option<tokio::sync::oneshot::Receiver<Result<(), Unanswered>>>,
    /// Agent Desk handoff is possible for this call (LiveKit inbound, outbound, attach).
    pub agent_desk: Option<handoff::AgentDeskTarget>,
    /// The call's own config URL (dial-out / attach override), for derived CXB API URLs.
    pub config_url: Option<String>,
}

/// Why a call that rang was never answered.
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub disconnected_by: DisconnectedBy,
    pub detail: String,
}

/// Marks outstanding at once; older ones are forgotten (their echo then means nothing).
const MAX_PENDING_MARKS: usize = 64;

pub(crate) async fn run_conversation<L: CallLink>(
    app: &AppState,
    link: L,
    bot_id: &str,
    cfg: BotConfig,
    options: CallOptions,
) {
    let started_at = chrono::Utc::now();
    let t0 = Instant::now();
    let rate = link.meta().sample_rate;
    info!(caller_id = %link.meta().caller_id, stream_id = %link.meta().stream_id, rate, "call started");
    let transfer_transport = link.transfer_family();
    let (tools, tool_errors) = cxb_tools::ToolRegistry::from_config(&cfg.tools);
    for e in &tool_errors {
        warn!(error = %e, "custom tool binding is invalid; the tool will answer with an error");
    }
    let mut engine_cfg = engine_config(&cfg, rate, transfer_transport);
    for t in tools.iter() {
        let pre = t.pre_message().map(|m| (m.to_string(), t.pre_message_after()));
        // The engine's own bound sits just past the tool's, so the tool's timeout error wins.
        let timing = cxb_engine::ToolTiming { timeout: t.timeout() + Duration::from_millis(500), pre_message: pre };
        engine_cfg.tool_timings.insert(t.name().to_string(), timing);
    }
    let tool_vars = tool_variables(&cfg, link.meta());
    let smart_turn = cfg.turn.mode.as_deref() == Some("smart_turn") && {
        let ok = crate::smart_turn::available();
        if !ok {
            warn!("turn.mode is smart_turn but the model is unavailable; using VAD + STT turn detection");
        }
        ok
    };
    if smart_turn {
        engine_cfg.turn_model_max_wait = Some(Duration::from_secs(3));
    }
    let (tool_tx, tool_rx) = mpsc::channel(16);
    let vad_settings = vad_settings(&cfg);
    let mut d = Driver {
        app,
        llm_params: providers::llm_params(&cfg, &app.settings),
        engine: Conversation::new(engine_cfg),
        cfg,
        link,
        t0,
        vad: None,
        stt: None,
        tts: None,
        llm: None,
        tool_results: Vec::new(),
        extra_events: Vec::new(),
        protocol_errors: 0,
        stt_buf: Vec::with_capacity(2048),
        rec: None,
        bot_hung_up: false,
        marks: std::collections::HashMap::new(),
        tools: std::sync::Arc::new(tools),
        tool_vars: std::sync::Arc::new(tool_vars),
        tool_tx,
        tool_rx,
        turn_audio: smart_turn.then(|| {
            let resampler = cxb_transports::resample::Resampler::new(rate, crate::smart_turn::MODEL_RATE);
            (cxb_turn::TurnAudio::new(Duration::from_millis(500)), resampler, Vec::new())
        }),
        forced_end: None,
        conversation_started: None,
        agent_desk: options.agent_desk,
    };
    d.rec = match crate::recordings::CallRecording::start(&app.settings, &d.cfg.session_id, rate, started_at) {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot record this call; continuing without a recording");
            None
        }
    };
    let (stt_rx, tts_rx) = d.connect_providers(rate, vad_settings).await;
    if let Some(audio) = options.early_audio {
        d.on_caller_audio(&audio);
    }
    let (mut stt_rx, mut tts_rx) = (stt_rx, tts_rx);
    let mut answered = options.answered;
    d.run(&mut stt_rx, &mut tts_rx, &mut answered).await;

    // Teardown: close provider streams, build and hand off the result.
    d.flush_stt();
    if let Some(s) = &d.stt {
        s.close();
    }
    d.llm = None;
    let reason = d.forced_end.or(d.engine.disconnected_by()).unwrap_or(DisconnectedBy::Error);
    // A handed-off call stays up after the conversation: the hold worker keeps the caller
    // company until an agent takes over and the caller leaves (contract §6.7).
    let handoff = if reason == DisconnectedBy::TransferToAgent && d.link.supports_handoff() {
        Some(d.hold(&mut tts_rx).await)
    } else {
        None
    };
    if let Some(t) = &d.tts {
        t.close();
    }
    let meta = d.link.meta().clone();
    let summary = CallSummary {
        session_id: d.cfg.session_id.clone(),
        bot_id: if d.cfg.bot_id.is_empty() { bot_id.to_string() } else { d.cfg.bot_id.clone() },
        transport: d.link.name(),
        stream_id: meta.stream_id,
        caller_id: meta.caller_id,
        did: meta.did,
        call_direction: meta.call_direction,
        connected_event: meta.connected_event,
        started_at,
        // A dial-out's ringing is not call time; a call that never started lasted nothing.
        duration: d.conversation_started.map_or(Duration::ZERO, |s| t0.elapsed().saturating_sub(s)),
        disconnected_by: reason,
    };
    let record = d.engine.record().clone();
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
    metrics::counter!("cxb_calls_total", "disconnected_by" => reason.as_str(), "transport" => summary.transport)
        .increment(1);
    let mut payload = build_payload(&summary, Some(&record), std::mem::take(&mut d.extra_events));
    if let Some(rec) = d.rec.take() {
        match rec.finish(t0.elapsed()).await {
            Ok(done) => {
                // The key is known now; the upload goes through the outbox and the fleet
                // fallback route serves the local copy meanwhile.
                if let Err(e) = crate::recordings::enqueue_upload(app.delivery.outbox(), &done).await {
                    error!(error = %e, key = %done.key, "could not persist the recording upload; the local copy stays served");
                }
                payload.recording_key = Some(done.key.clone());
                payload.recording_url = done.url.clone();
            }
            Err(e) => error!(error = %e, "recording could not be finished"),
        }
    }
    info!(
        disconnected_by = %reason,
        duration_s = format!("{:.2}", summary.duration.as_secs_f64()),
        turns = record.latency.len(),
        protocol_errors = d.protocol_errors,
        "call ended"
    );
    // The raw result is durable before the call counts as finished; post-call analysis then
    // runs off the call's critical path (the slot is released when this function returns).
    let webhook = d.cfg.webhook_url.clone();
    let staged = app.delivery.stage(&payload, webhook.as_deref()).await;
    if let Some(report) = &handoff {
        d.report_handoff_end(report, &payload).await;
    }
    d.link.finish(d.bot_hung_up).await;
    let (postcall, delivery, cfg) = (app.postcall.clone(), app.delivery.clone(), d.cfg.clone());
    tokio::spawn(
        async move {
            let payload = postcall.process(&cfg, &summary, &record, payload).await;
            if let Some(entry) = crate::postcall::nxlink::outbox_entry(&cfg, &payload) {
                if let Err(e) = delivery.outbox().enqueue(entry).await {
                    error!(error = %e, "could not persist the NXLink callback");
                }
            }
            delivery.complete(staged, payload, webhook).await;
        }
        .in_current_span(),
    );
}

/// `{{call.*}}` for tool templates: the call's identity plus every connected-event field.
fn tool_variables(cfg: &BotConfig, meta: &cxb_transports::CallMeta) -> cxb_tools::CallVariables {
    let mut v = cxb_tools::CallVariables::new();
    for (k, val) in &meta.connected_event {
        match val {
            serde_json::Value::String(s) => v.insert(k.clone(), s.clone()),
            serde_json::Value::Number(n) => v.insert(k.clone(), n.to_string()),
            serde_json::Value::Bool(b) => v.insert(k.clone(), b.to_string()),
            _ => None,
        };
    }
    v.insert("session_id", cfg.session_id.clone());
    v.insert("bot_id", cfg.bot_id.clone());
    v.insert("stream_id", meta.stream_id.clone());
    v.insert("caller_id", meta.caller_id.clone());
    v.insert("from_number", meta.caller_id.clone());
    v.insert("did", meta.did.clone());
    v.insert("call_direction", meta.call_direction.clone());
    v
}

/// The engine's rules for this call: the bot config's values over the documented defaults.
/// `transport` names the transfer methods the call can use (contract §4.4).
pub(crate) fn engine_config(cfg: &BotConfig, rate: u32, transport: &str) -> EngineConfig {
    use cxb_engine::behaviour::PhraseSet;
    let mut e = EngineConfig::new(rate, cfg.system_prompt.clone(), cfg.opening_message.clone());
    e.custom_tools = cfg.tools.clone();
    e.min_words_interruption = cfg.min_words_interruption;
    e.max_call_duration = Duration::from_secs(cfg.max_call_duration_seconds);
    e.vad_stop_hangover = Duration::from_secs_f32(vad_settings(cfg).stop_secs.max(0.0));
    // Frames go out in pairs, one write and one wake-up per 40 ms of bot speech instead of two;
    // the 80 ms lead keeps at least 60 ms queued at the far end between batches.
    e.playout_lead = Duration::from_millis(80);
    e.playout_batch = 2;
    let millis = |v: Option<u64>, max: u64| v.map(|ms| Duration::from_millis(ms.min(max)));
    let seconds =
        |v: Option<f64>| v.filter(|s| s.is_finite() && *s >= 0.0).map(|s| Duration::from_secs_f64(s.min(3600.0)));
    let i = &cfg.interruption;
    if let Some(b) = &i.backchannels {
        e.backchannels = PhraseSet::new(b);
    }
    if let Some(h) = &i.high_intent_phrases {
        e.high_intent = PhraseSet::new(h);
    }
    if let Some(g) = millis(i.opening_guard_ms, 10_000) {
        e.opening_guard = g;
    }
    e.pause_on_speech = i.pause_on_speech.unwrap_or(false);
    if let Some(t) = millis(i.false_interruption_timeout_ms, 10_000) {
        e.false_interruption_timeout = t;
    }
    if let Some(w) = millis(cfg.turn.unfinished_wait_ms, 10_000) {
        e.unfinished_wait = w;
    }
    if let Some(c) = &cfg.closure_phrases {
        e.closure_phrases = PhraseSet::new(c);
    }
    if let Some(t) = seconds(cfg.silence.rnr_seconds) {
        e.rnr_timeout = t;
    }
    if let Some(t) = seconds(cfg.silence.dead_air_seconds) {
        e.dead_air_timeout = t;
    }
    e.dead_air_message = cfg.silence.dead_air_message.clone().unwrap_or_default();
    e.re_engagement = cfg.re_engagement.as_ref().and_then(cxb_wire::config::ReEngagement::from_value).map(|r| {
        cxb_engine::ReEngagementRule {
            after: Duration::from_secs_f64(r.after_seconds),
            max_attempts: r.max_attempts,
            messages: r.messages,
        }
    });
    e.voicemail_detection = cfg.voicemail_detection.unwrap_or(true);
    e.voicemail_message = cfg.voicemail_message.clone();
    e.transfer = Some(cxb_engine::TransferOptions {
        targets: cfg.transfer_targets.clone(),
        numbers: cfg.transfer_numbers.clone(),
        transport: transport.to_string(),
        pre_transfer_message: cfg.pre_transfer_message.clone(),
    });
    e.filler_phrases = cfg.filler.phrases.iter().filter(|p| !p.trim().is_empty()).cloned().collect();
    if let Some(t) = millis(cfg.filler.after_ms, 30_000) {
        e.filler_after = t;
    }
    let flux = cfg.stt.model.as_deref().is_some_and(|m| m.starts_with("flux")) || cfg.stt.provider == "deepgram_flux";
    if flux || cfg.turn.mode.as_deref() == Some("stt") {
        // The STT's own end-of-turn event closes the turn; VAD silence only bounds the wait.
        e.stt_final_wait = Duration::from_secs(3);
    }
    e.dtmf_send = cfg.dtmf.send_enabled.unwrap_or(false);
    if let Some(t) = millis(cfg.dtmf.input_timeout_ms, 30_000) {
        e.dtmf_input_timeout = t;
    }
    e
}

fn vad_settings(cfg: &BotConfig) -> VadSettings {
    let d = VadSettings::default();
    VadSettings {
        confidence: cfg.vad.confidence.unwrap_or(d.confidence),
        start_secs: cfg.vad.start_secs.unwrap_or(d.start_secs),
        stop_secs: cfg.vad.stop_secs.unwrap_or(d.stop_secs),
        min_volume: cfg.vad.min_volume.unwrap_or(d.min_volume),
    }
}

fn transfer_input(result: Result<(), String>) -> Input {
    match result {
        Ok(()) => Input::TransferResult { ok: true, error: None },
        Err(error) => {
            warn!(%error, "transfer failed");
            Input::TransferResult { ok: false, error: Some(error) }
        }
    }
}

fn utterance_context(id: u64) -> String {
    format!("u{id}")
}

fn parse_context(ctx: &str) -> Option<u64> {
    ctx.strip_prefix('u')?.parse().ok()
}

/// Await the current LLM stream's next event, or forever when there is none.
async fn next_llm(llm: &mut Option<(u64, LlmStream)>) -> (u64, Option<LlmEvent>) {
    match llm {
        Some((turn, s)) => (*turn, s.recv().await),
        None => std::future::pending().await,
    }
}

/// The answer verdict of a ringing call; pending forever when there is none to wait for.
/// A dropped sender means the dialling task died: the call fails as `error`.
async fn wait_answer(
    gate: &mut Option<tokio::sync::oneshot::Receiver<Result<(), Unanswered>>>,
) -> Result<(), Unanswered> {
    match gate {
        Some(rx) => rx.await.unwrap_or_else(|_| {
            Err(Unanswered {
                disconnected_by: DisconnectedBy::Error,
                detail: "the dialling task ended without a verdict".into(),
            })
        }),
        None => std::future::pending().await,
    }
}

async fn recv_opt<E>(rx: &mut Option<mpsc::Receiver<E>>) -> Option<E> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl<L: CallLink> Driver<'_, L> {
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn input(&mut self, input: Input) {
        let now = self.now();
        self.engine.handle(now, input);
    }

    fn service_failed(&mut self, service: Service, provider: &'static str, error: String) {
        warn!(service = ?service, provider, error = %error, "provider failed; ending the call");
        metrics::counter!("cxb_provider_errors_total", "service" => format!("{service:?}").to_lowercase(), "provider" => provider).increment(1);
        self.input(Input::ServiceFailed { service, error });
    }

    /// Connect STT and TTS concurrently; a failure ends the call as `error` with a result.
    async fn connect_providers(
        &mut self,
        rate: u32,
        vad_settings: VadSettings,
    ) -> (Option<mpsc::Receiver<SttEvent>>, Option<mpsc::Receiver<TtsEvent>>) {
        match VoiceDetector::new(rate, vad_settings) {
            Ok(v) => self.vad = Some(v),
            Err(e) => {
                self.service_failed(Service::Transport, "vad", e.to_string());
                return (None, None);
            }
        }
        let stt_params = providers::stt_params(&self.cfg, &self.app.settings, rate);
        let tts_params = providers::tts_params(&self.cfg, &self.app.settings, rate);
        info!(
            stt = %stt_params.provider,
            stt_model = %stt_params.model,
            stt_turns = stt::detects_turns(&stt_params),
            tts = %tts_params.provider,
            "connecting providers"
        );
        let (stt_res, tts_res) = tokio::join!(stt::connect(&stt_params), tts::connect(&tts_params));
        let mut rx = (None, None);
        match stt_res {
            Ok((h, r)) => {
                self.stt = Some(h);
                rx.0 = Some(r);
            }
            Err(e) => self.service_failed(Service::Stt, e.provider(), e.to_string()),
        }
        match tts_res {
            Ok((h, r)) => {
                self.tts = Some(h);
                rx.1 = Some(r);
            }
            Err(e) => self.service_failed(Service::Tts, e.provider(), e.to_string()),
        }
        rx
    }

    async fn run(
        &mut self,
        stt_rx: &mut Option<mpsc::Receiver<SttEvent>>,
        tts_rx: &mut Option<mpsc::Receiver<TtsEvent>>,
        answered: &mut Option<tokio::sync::oneshot::Receiver<Result<(), Unanswered>>>,
    ) {
        // The conversation starts now, or (dial-out) once the callee answers.
        if answered.is_none() && !self.engine.is_ended() {
            self.start_conversation();
        }
        let idle = self.app.settings.inbound_idle_timeout();
        let mut last_inbound = tokio::time::Instant::now();
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        // Both timers live across iterations and are only re-armed when their deadline moves:
        // re-creating a Sleep per loop turn re-registers it in the timer wheel 50+ times a second.
        let engine_timer = tokio::time::sleep_until(far());
        let idle_timer = tokio::time::sleep_until(last_inbound + idle);
        tokio::pin!(engine_timer, idle_timer);
        self.perform().await;
        while !self.engine.is_ended() && self.forced_end.is_none() {
            let want = self.engine.poll_timeout().map(|d| tokio::time::Instant::from_std(self.t0 + d));
            match want {
                Some(t) if t != engine_timer.deadline() => engine_timer.as_mut().reset(t),
                None if engine_timer.deadline() < tokio::time::Instant::now() + Duration::from_secs(1800) => {
                    engine_timer.as_mut().reset(far())
                }
                _ => {}
            }
            tokio::select! {
                ev = self.link.recv() => {
                    last_inbound = tokio::time::Instant::now();
                    self.on_link_event(ev);
                }
                verdict = wait_answer(answered) => {
                    *answered = None;
                    match verdict {
                        Ok(()) => {
                            info!("callee answered; starting the conversation");
                            self.extra_events.push(self.event("call_answered", json!({})));
                            self.start_conversation();
                        }
                        Err(u) => {
                            info!(disconnected_by = %u.disconnected_by, detail = %u.detail, "call not answered");
                            self.extra_events.push(self.event("call_not_answered", json!({"disconnected_by": u.disconnected_by.as_str(), "detail": u.detail})));
                            self.forced_end = Some(u.disconnected_by);
                        }
                    }
                }
                ev = recv_opt(stt_rx) => self.on_stt(ev),
                ev = recv_opt(tts_rx) => self.on_tts(ev),
                (turn, ev) = next_llm(&mut self.llm) => self.on_llm(turn, ev),
                Some(input) = self.tool_rx.recv() => self.input(input),
                _ = &mut engine_timer => {
                    let now = self.now();
                    self.engine.handle_timeout(now);
                    engine_timer.as_mut().reset(far());
                }
                _ = &mut idle_timer => {
                    // Lazily re-armed: frames only move `last_inbound`; the timer checks it here.
                    // A ringing call has no caller audio yet; the dialling bounds that wait.
                    if last_inbound + idle > tokio::time::Instant::now() || answered.is_some() {
                        idle_timer.as_mut().reset(tokio::time::Instant::now().max(last_inbound) + idle);
                    } else {
                        warn!("no frame from the caller for {idle:?}; the client has vanished");
                        self.extra_events.push(self.event("caller_vanished", json!({"idle_ms": idle.as_millis() as u64})));
                        self.input(Input::CustomerHangup);
                    }
                }
            }
            for input in std::mem::take(&mut self.tool_results) {
                self.input(input);
            }
            self.perform().await;
        }
    }

    fn event(&self, kind: &str, data: serde_json::Value) -> CallEvent {
        let offset = self.now();
        CallEvent {
            kind: kind.into(),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            offset_seconds: (offset.as_secs_f64() * 1000.0).round() / 1000.0,
            data: match data {
                serde_json::Value::Object(m) => m,
                _ => Default::default(),
            },
        }
    }

    fn start_conversation(&mut self) {
        self.conversation_started = Some(self.now());
        self.input(Input::Start);
    }

    fn on_link_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Inbound(inb) => self.on_inbound(inb),
            LinkEvent::Protocol(e) => self.protocol_error(e),
            LinkEvent::Gone { why } => {
                info!(%why, "caller gone");
                self.input(Input::CustomerHangup);
            }
            LinkEvent::Failed { error, event } => {
                if let Some((kind, data)) = event {
                    self.extra_events.push(self.event(kind, data));
                }
                warn!(%error, "the link to the caller failed; ending the call");
                self.input(Input::ServiceFailed { service: Service::Transport, error });
            }
            // Agents only matter once the call is handed off (see `hold`).
            LinkEvent::AgentJoined { identity } | LinkEvent::AgentLeft { identity } => {
                debug!(%identity, "agent participant change before any handoff")
            }
            LinkEvent::AgentAudio(_) => {}
        }
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.protocol_errors += 1;
        metrics::counter!("cxb_protocol_errors_total", "transport" => self.link.name()).increment(1);
        // Log the first few in full, then only count, so a flood cannot fill the logs.
        if self.protocol_errors <= 5 {
            warn!(error = %e, "ignoring bad frame");
        }
        if self.protocol_errors <= 20 {
            self.extra_events.push(self.event("protocol_error", json!({"error": e.to_string()})));
        }
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Audio(samples) => self.on_caller_audio(&samples),
            Inbound::Hangup { by } => {
                info!(by = ?by, "caller hung up");
                self.input(Input::CustomerHangup);
            }
            Inbound::Mark(name) => match self.marks.remove(&name) {
                Some(utterance) => self.input(Input::PlaybackConfirmed { utterance }),
                None => debug!(mark = %name, "echo of a mark no longer tracked"),
            },
            Inbound::Dtmf(digits) => {
                info!(%digits, "caller pressed keys");
                self.input(Input::Dtmf { digits });
            }
            Inbound::Ignored(why) => debug!(why, "ignored frame"),
        }
    }

    fn on_caller_audio(&mut self, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        if let Some(rec) = &mut self.rec {
            rec.customer(samples, self.t0.elapsed());
        }
        self.stt_buf.extend_from_slice(samples);
        let batch = (self.link.meta().sample_rate as usize * STT_BATCH_MS / 1000).max(1);
        if self.stt_buf.len() >= batch {
            self.flush_stt();
        }
        if let Some((buf, resampler, scratch)) = &mut self.turn_audio {
            scratch.clear();
            resampler.process(samples, scratch);
            buf.push_i16(scratch);
        }
        let mut transitions: [Option<VadTransition>; 4] = [None; 4];
        let mut n = 0;
        if let Some(vad) = &mut self.vad {
            vad.push(samples, |t, _| {
                if n < transitions.len() {
                    transitions[n] = Some(t);
                    n += 1;
                }
            });
        }
        for t in transitions.into_iter().flatten() {
            if let (VadTransition::Started, Some((buf, _, _))) = (t, &mut self.turn_audio) {
                buf.speech_started();
            }
            let input = match t {
                VadTransition::Started => Input::SpeechStarted,
                VadTransition::Stopped => Input::SpeechStopped,
            };
            self.input(input);
        }
    }

    /// Send buffered caller audio to STT now.
    fn flush_stt(&mut self) {
        if self.stt_buf.is_empty() {
            return;
        }
        if let Some(stt) = &self.stt {
            if let Err(e) = stt.send_audio(&self.stt_buf) {
                let provider = e.provider();
                self.stt_buf.clear();
                self.service_failed(Service::Stt, provider, e.to_string());
                return;
            }
        }
        self.stt_buf.clear();
    }

    fn on_stt(&mut self, ev: Option<SttEvent>) {
        match ev {
            Some(SttEvent::Transcript(t)) => {
                if !t.text.trim().is_empty() || t.is_final {
                    self.input(Input::Transcript { text: t.text, is_final: t.is_final, speech_final: t.speech_final });
                }
            }
            Some(SttEvent::UtteranceEnd) => self.input(Input::UtteranceEnd),
            Some(SttEvent::SpeechStarted) => {}
            Some(SttEvent::Error(e)) => self.service_failed(Service::Stt, e.provider(), e.to_string()),
            Some(SttEvent::Closed) | None => {
                self.service_failed(Service::Stt, "stt", "stream closed unexpectedly".into());
            }
        }
    }

    fn on_tts(&mut self, ev: Option<TtsEvent>) {
        match ev {
            Some(TtsEvent::Audio { context_id, pcm }) => {
                if let Some(utterance) = parse_context(&context_id) {
                    self.input(Input::TtsAudio { utterance, pcm });
                }
            }
            Some(TtsEvent::Words { context_id, words }) => {
                if let Some(utterance) = parse_context(&context_id) {
                    let words =
                        words.into_iter().map(|w| WordTime { word: w.word, start_secs: w.start_secs }).collect();
                    self.input(Input::TtsWords { utterance, words });
                }
            }
            Some(TtsEvent::Done { context_id }) => {
                if let Some(utterance) = parse_context(&context_id) {
                    self.input(Input::TtsDone { utterance });
                }
            }
            Some(TtsEvent::Error { error, .. }) => {
                self.service_failed(Service::Tts, error.provider(), error.to_string())
            }
            None => self.service_failed(Service::Tts, "tts", "stream closed unexpectedly".into()),
        }
    }

    fn on_llm(&mut self, turn: u64, ev: Option<LlmEvent>) {
        match ev {
            Some(LlmEvent::Token(text)) => self.input(Input::LlmToken { turn, text }),
            Some(LlmEvent::ToolCalls(calls)) => self.input(Input::LlmToolCalls { turn, calls }),
            // Only requests with a prompt_cache hint report one; the driver sends none yet.
            Some(LlmEvent::Cache(_)) => {}
            Some(LlmEvent::Done { usage, .. }) => {
                self.llm = None;
                self.input(Input::LlmDone { turn, usage });
            }
            Some(LlmEvent::Error(e)) => {
                self.llm = None;
                metrics::counter!("cxb_provider_errors_total", "service" => "llm", "provider" => e.provider())
                    .increment(1);
                warn!(error = %e, "LLM request failed");
                self.input(Input::LlmFailed { turn, error: e.to_string() });
            }
            None => {
                self.llm = None;
                self.input(Input::LlmFailed { turn, error: "LLM stream ended without a result".into() });
            }
        }
    }

    /// Perform every queued engine action, writing frames to the transport.
    async fn perform(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::PlayAudio { frame } => {
                    if let Some(rec) = &mut self.rec {
                        rec.bot(&frame, self.t0.elapsed());
                    }
                    self.link.audio(&frame)
                }
                Action::ClearAudio => {
                    if let Some(rec) = &mut self.rec {
                        rec.bot_cleared(self.t0.elapsed());
                    }
                    self.link.clear()
                }
                Action::Speak { utterance, text } => {
                    self.tts_command(|t| t.speak(&utterance_context(utterance), &text))
                }
                Action::FlushSpeech { utterance } => self.tts_command(|t| t.flush(&utterance_context(utterance))),
                Action::CancelSpeech { utterance } => self.tts_command(|t| t.cancel(&utterance_context(utterance))),
                Action::StartLlm { turn, messages, tools } => {
                    let req = ChatRequest {
                        model: self.cfg.llm.model.clone(),
                        messages,
                        tools,
                        temperature: self.cfg.llm.temperature,
                        max_tokens: self.cfg.llm.max_tokens,
                        extra: self.cfg.llm.extra.clone(),
                        ..Default::default()
                    };
                    self.llm = Some((turn, self.app.llm.stream(&self.llm_params, req)));
                }
                Action::CancelLlm { turn } => {
                    if self.llm.as_ref().is_some_and(|(t, _)| *t == turn) {
                        self.llm = None;
                    }
                }
                Action::FinalizeStt => {
                    self.flush_stt();
                    if let Some(s) = &self.stt {
                        s.finalize();
                    }
                }
                Action::UtteranceDone { utterance } => {
                    if let Some(mark) = self.link.utterance_done() {
                        if self.marks.len() >= MAX_PENDING_MARKS {
                            self.marks.clear();
                        }
                        self.marks.insert(mark, utterance);
                    }
                }
                Action::Transfer { destination, method, kind, target, reason } => {
                    info!(%destination, %method, %target, %reason, "transferring the call");
                    let start = if method == cxb_wire::transfer::METHOD_AGENT_DESK {
                        self.enqueue_handoff(&destination, &target, &reason)
                    } else {
                        self.link.transfer(&destination, &method, &kind, &reason)
                    };
                    match start {
                        TransferStart::Done(result) => self.tool_results.push(transfer_input(result)),
                        TransferStart::Pending(fut) => {
                            let tx = self.tool_tx.clone();
                            tokio::spawn(
                                async move {
                                    let _ = tx.send(transfer_input(fut.await)).await;
                                }
                                .in_current_span(),
                            );
                        }
                    }
                }
                Action::RunTool { call_id, name, arguments } => self.run_tool(call_id, name, arguments),
                Action::PredictTurn => {
                    let mut audio = Vec::with_capacity(crate::smart_turn::WINDOW_SECS * 16_000);
                    if let Some((buf, _, _)) = &self.turn_audio {
                        buf.copy_to(&mut audio);
                    }
                    let tx = self.tool_tx.clone();
                    tokio::spawn(async move {
                        // No verdict (model error): treat as complete, the VAD already said stop.
                        let complete = crate::smart_turn::predict(audio).await.unwrap_or(true);
                        let _ = tx.send(Input::TurnPrediction { complete }).await;
                    });
                }
                Action::End { disconnected_by, hang_up } => {
                    if hang_up {
                        self.link.hang_up();
                        self.bot_hung_up = true;
                    }
                    info!(%disconnected_by, hang_up, "ending call");
                }
            }
        }
        if !self.link.flush().await && !self.engine.is_ended() {
            self.input(Input::CustomerHangup);
            Box::pin(self.perform()).await;
            return;
        }
        // Tool results produced while performing are fed on the next loop turn.
        if !self.tool_results.is_empty() && !self.engine.is_ended() {
            for input in std::mem::take(&mut self.tool_results) {
                self.input(input);
            }
            Box::pin(self.perform()).await;
        }
    }

    /// Run a custom HTTP tool in its own task; its (bounded) result comes back on `tool_rx`.
    fn run_tool(&mut self, call_id: String, name: String, arguments: String) {
        if self.tools.get(&name).is_none() {
            warn!(tool = %name, "the LLM called a tool without a usable HTTP binding");
            self.tool_results.push(Input::ToolResult {
                call_id,
                content: format!("error: the tool {name:?} is not available"),
                is_error: true,
            });
            return;
        }
        let (tools, vars, client, tx) =
            (self.tools.clone(), self.tool_vars.clone(), self.app.tool_http.clone(), self.tool_tx.clone());
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let Some(tool) = tools.get(&name) else { return };
                let outcome = tool.run(&client, &arguments, &vars).await;
                let kind = outcome.error.map_or("ok", |k| k.as_str());
                metrics::counter!("cxb_tool_calls_total", "result" => kind).increment(1);
                metrics::histogram!("cxb_tool_seconds").record(outcome.elapsed.as_secs_f64());
                info!(
                    tool = %name,
                    status = ?outcome.status,
                    elapsed_ms = outcome.elapsed.as_millis() as u64,
                    bytes = outcome.response_bytes,
                    result = kind,
                    "tool finished"
                );
                let input = Input::ToolResult { call_id, content: outcome.content, is_error: outcome.is_error };
                // The call may have ended meanwhile; then nobody waits for the result.
                let _ = tx.send(input).await;
            }
            .instrument(span),
        );
    }

    fn tts_command(&mut self, f: impl FnOnce(&TtsHandle) -> Result<(), cxb_providers::ProviderError>) {
        let Some(t) = &self.tts else { return };
        if let Err(e) = f(t) {
            self.service_failed(Service::Tts, e.provider(), e.to_string());
        }
    }
}
