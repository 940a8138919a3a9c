//! The per-call driver: one task per call that performs the engine's actions and feeds it
//! transport frames, provider events and timer expiries (quinn's connection-driver shape).
//!
//! Every transport uses this same driver; a transport only contributes its [`Transport`]
//! adapter (handshake, codec, hang-up/transfer frames).

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use cxb_audio::vad::{VadSettings, VadTransition, VoiceDetector};
use cxb_engine::{Action, Conversation, EngineConfig, Input, Service, WordTime};
use cxb_providers::llm::{LlmEvent, LlmParams, LlmStream};
use cxb_providers::stt::{self, SttEvent, SttHandle};
use cxb_providers::tts::{self, TtsEvent, TtsHandle};
use cxb_transports::{HandshakeStep, Inbound, OutFrame, ProtocolError, Transport};
use cxb_wire::llm::ChatRequest;
use cxb_wire::result::{CallEvent, DisconnectedBy};
use cxb_wire::BotConfig;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn, Instrument};

use crate::app::AppState;
use crate::config_client::{CallLookup, ConfigFetchError};
use crate::providers;
use crate::results::{build_payload, CallSummary};
use crate::tracker::CallSlot;

/// How long a single outbound frame may take to write before the caller counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);

type WsTx = SplitSink<WebSocket, Message>;
type WsRx = SplitStream<WebSocket>;

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
        let (tx, rx) = socket.split();
        let mut ws = WsIo { tx, rx, closed: false };
        let mut transport = transport;
        match handshake(&app, &mut ws, &mut transport, &bot_id).await {
            Ok((cfg, early_audio)) => {
                tracing::Span::current().record("session_id", cfg.session_id.as_str());
                run_conversation(&app, ws, transport, &bot_id, cfg, early_audio).await;
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

struct WsIo {
    tx: WsTx,
    rx: WsRx,
    closed: bool,
}

impl WsIo {
    async fn send(&mut self, frame: OutFrame) -> bool {
        if self.closed {
            return false;
        }
        let msg = match frame {
            OutFrame::Text(t) => Message::Text(t.into()),
            OutFrame::Binary(b) => Message::Binary(b.into()),
            OutFrame::Close { code, reason } => {
                self.close(code, &reason).await;
                return true;
            }
        };
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(msg)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                debug!(error = %e, "send failed; caller gone");
                self.closed = true;
                false
            }
            Err(_) => {
                warn!("send blocked for {SEND_TIMEOUT:?}; treating the caller as gone");
                self.closed = true;
                false
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Close reasons are limited to 123 bytes by RFC 6455.
        let mut reason: String = reason.chars().take(100).collect();
        while reason.len() > 123 {
            reason.pop();
        }
        let frame = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        let _ = tokio::time::timeout(SEND_TIMEOUT, async {
            let _ = self.tx.send(frame).await;
            let _ = self.tx.close().await;
        })
        .await;
    }
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
        Ok(cfg) => Ok((cfg, early_audio)),
        Err(e) => {
            warn!(error = %e, "call rejected: config fetch failed");
            Err(HandshakeEnd::Reject { code: e.close_code(), reason: format!("config: {e}"), metric: e.label() })
        }
    }
}

fn reject_for_ws_error(e: &axum::Error) -> HandshakeEnd {
    let text = e.to_string();
    if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
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
struct Driver<'a, T: Transport> {
    app: &'a AppState,
    cfg: BotConfig,
    ws: WsIo,
    transport: T,
    engine: Conversation,
    t0: Instant,
    vad: Option<VoiceDetector>,
    stt: Option<SttHandle>,
    tts: Option<TtsHandle>,
    llm_params: LlmParams,
    llm: Option<(u64, LlmStream)>,
    out: Vec<OutFrame>,
    tool_results: Vec<Input>,
    extra_events: Vec<CallEvent>,
    protocol_errors: u32,
}

async fn run_conversation<T: Transport>(
    app: &AppState,
    ws: WsIo,
    transport: T,
    bot_id: &str,
    cfg: BotConfig,
    early_audio: Option<Vec<i16>>,
) {
    let started_at = chrono::Utc::now();
    let t0 = Instant::now();
    let rate = transport.meta().sample_rate;
    info!(caller_id = %transport.meta().caller_id, stream_id = %transport.meta().stream_id, rate, "call answered");
    let engine_cfg = engine_config(&cfg, rate);
    let vad_settings = vad_settings(&cfg);
    let mut d = Driver {
        app,
        llm_params: providers::llm_params(&cfg, &app.settings),
        engine: Conversation::new(engine_cfg),
        cfg,
        ws,
        transport,
        t0,
        vad: None,
        stt: None,
        tts: None,
        llm: None,
        out: Vec::with_capacity(4),
        tool_results: Vec::new(),
        extra_events: Vec::new(),
        protocol_errors: 0,
    };
    let (stt_rx, tts_rx) = d.connect_providers(rate, vad_settings).await;
    if let Some(audio) = early_audio {
        d.on_caller_audio(&audio);
    }
    d.run(stt_rx, tts_rx).await;

    // Teardown: close provider streams, build and hand off the result.
    if let Some(s) = &d.stt {
        s.close();
    }
    if let Some(t) = &d.tts {
        t.close();
    }
    d.llm = None;
    let reason = d.engine.disconnected_by().unwrap_or(DisconnectedBy::Error);
    let meta = d.transport.meta().clone();
    let summary = CallSummary {
        session_id: d.cfg.session_id.clone(),
        bot_id: if d.cfg.bot_id.is_empty() { bot_id.to_string() } else { d.cfg.bot_id.clone() },
        transport: d.transport.name(),
        stream_id: meta.stream_id,
        caller_id: meta.caller_id,
        did: meta.did,
        call_direction: meta.call_direction,
        connected_event: meta.connected_event,
        started_at,
        duration: t0.elapsed(),
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
        if let Some(v) = l.tts_ttfb_ms {
            metrics::histogram!("cxb_tts_ttfb_seconds").record(v / 1000.0);
        }
        metrics::histogram!("cxb_stt_final_delay_seconds").record(l.stt_final_delay_ms / 1000.0);
    }
    metrics::counter!("cxb_calls_total", "disconnected_by" => reason.as_str(), "transport" => summary.transport)
        .increment(1);
    let payload = build_payload(&summary, Some(&record), std::mem::take(&mut d.extra_events));
    info!(
        disconnected_by = %reason,
        duration_s = format!("{:.2}", summary.duration.as_secs_f64()),
        turns = record.latency.len(),
        protocol_errors = d.protocol_errors,
        "call ended"
    );
    let _ = app.delivery.deliver(payload, d.cfg.webhook_url.clone()).await;
    d.ws.close(1000, "call ended").await;
}

fn engine_config(cfg: &BotConfig, rate: u32) -> EngineConfig {
    let mut e = EngineConfig::new(rate, cfg.system_prompt.clone(), cfg.opening_message.clone());
    e.custom_tools = cfg.tools.clone();
    e.min_words_interruption = cfg.min_words_interruption;
    e.max_call_duration = Duration::from_secs(cfg.max_call_duration_seconds);
    e.vad_stop_hangover = Duration::from_secs_f32(vad_settings(cfg).stop_secs.max(0.0));
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

async fn recv_opt<E>(rx: &mut Option<mpsc::Receiver<E>>) -> Option<E> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl<T: Transport> Driver<'_, T> {
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
        if !self.engine.is_ended() {
            self.input(Input::Start);
        }
        rx
    }

    async fn run(
        &mut self,
        mut stt_rx: Option<mpsc::Receiver<SttEvent>>,
        mut tts_rx: Option<mpsc::Receiver<TtsEvent>>,
    ) {
        let idle = self.app.settings.inbound_idle_timeout();
        let mut last_inbound = tokio::time::Instant::now();
        self.perform().await;
        while !self.engine.is_ended() {
            let timer = self.engine.poll_timeout().map(|d| tokio::time::Instant::from_std(self.t0 + d));
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                msg = self.ws.rx.next() => {
                    last_inbound = tokio::time::Instant::now();
                    self.on_ws_message(msg);
                }
                ev = recv_opt(&mut stt_rx) => self.on_stt(ev),
                ev = recv_opt(&mut tts_rx) => self.on_tts(ev),
                (turn, ev) = next_llm(&mut self.llm) => self.on_llm(turn, ev),
                _ = tokio::time::sleep_until(timer.unwrap_or(far)) => {
                    let now = self.now();
                    self.engine.handle_timeout(now);
                }
                _ = tokio::time::sleep_until(last_inbound + idle) => {
                    warn!("no frame from the caller for {idle:?}; the client has vanished");
                    self.extra_events.push(self.event("caller_vanished", json!({"idle_ms": idle.as_millis() as u64})));
                    self.input(Input::CustomerHangup);
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

    fn on_ws_message(&mut self, msg: Option<Result<Message, axum::Error>>) {
        match msg {
            None | Some(Ok(Message::Close(_))) => {
                info!("caller closed the connection");
                self.input(Input::CustomerHangup);
            }
            Some(Err(e)) => {
                if let HandshakeEnd::Reject { reason, .. } = reject_for_ws_error(&e) {
                    warn!(error = %e, limit = self.app.settings.max_frame_bytes, "oversized frame; ending the call");
                    self.extra_events.push(self.event(
                        "protocol_error",
                        json!({"error": reason, "limit_bytes": self.app.settings.max_frame_bytes}),
                    ));
                    self.input(Input::ServiceFailed { service: Service::Transport, error: format!("{e}") });
                } else {
                    info!(error = %e, "connection lost");
                    self.input(Input::CustomerHangup);
                }
            }
            Some(Ok(Message::Text(t))) => match self.transport.on_text(&t) {
                Ok(inb) => self.on_inbound(inb),
                Err(e) => self.protocol_error(e),
            },
            Some(Ok(Message::Binary(b))) => match self.transport.on_binary(&b) {
                Ok(inb) => self.on_inbound(inb),
                Err(e) => self.protocol_error(e),
            },
            Some(Ok(_)) => {}
        }
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.protocol_errors += 1;
        metrics::counter!("cxb_protocol_errors_total", "transport" => self.transport.name()).increment(1);
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
            Inbound::Mark(name) => debug!(mark = %name, "mark"),
            Inbound::Dtmf(d) => debug!(digit = %d, "dtmf"),
            Inbound::Ignored(why) => debug!(why, "ignored frame"),
        }
    }

    fn on_caller_audio(&mut self, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        if let Some(stt) = &self.stt {
            if let Err(e) = stt.send_audio(samples) {
                let provider = e.provider();
                self.service_failed(Service::Stt, provider, e.to_string());
                return;
            }
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
            let input = match t {
                VadTransition::Started => Input::SpeechStarted,
                VadTransition::Stopped => Input::SpeechStopped,
            };
            self.input(input);
        }
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
                Action::PlayAudio { frame } => self.transport.audio(&frame, &mut self.out),
                Action::ClearAudio => self.transport.clear(&mut self.out),
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
                    };
                    self.llm = Some((turn, self.app.llm.stream(&self.llm_params, req)));
                }
                Action::CancelLlm { turn } => {
                    if self.llm.as_ref().is_some_and(|(t, _)| *t == turn) {
                        self.llm = None;
                    }
                }
                Action::FinalizeStt => {
                    if let Some(s) = &self.stt {
                        s.finalize();
                    }
                }
                Action::RunTool { call_id, name, .. } => {
                    // Custom HTTP tool bindings are not configured for this bot: tell the LLM.
                    warn!(tool = %name, "tool has no HTTP binding");
                    self.tool_results.push(Input::ToolResult {
                        call_id,
                        content: format!("error: the tool {name:?} is not available in this deployment"),
                        is_error: true,
                    });
                }
                Action::End { disconnected_by, hang_up } => {
                    if hang_up {
                        self.transport.hang_up(&mut self.out);
                    }
                    info!(%disconnected_by, hang_up, "ending call");
                }
            }
            if !self.out.is_empty() {
                let frames: Vec<OutFrame> = self.out.drain(..).collect();
                for f in frames {
                    if !self.ws.send(f).await {
                        if !self.engine.is_ended() {
                            self.input(Input::CustomerHangup);
                        }
                        break;
                    }
                }
            }
        }
        // Tool results produced while performing are fed on the next loop turn.
        if !self.tool_results.is_empty() && !self.engine.is_ended() {
            for input in std::mem::take(&mut self.tool_results) {
                self.input(input);
            }
            Box::pin(self.perform()).await;
        }
    }

    fn tts_command(&mut self, f: impl FnOnce(&TtsHandle) -> Result<(), cxb_providers::ProviderError>) {
        let Some(t) = &self.tts else { return };
        if let Err(e) = f(t) {
            self.service_failed(Service::Tts, e.provider(), e.to_string());
        }
    }
}
