//! Everything before the conversation: the engine's rules, tools, the recorder, VAD, STT and TTS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cxb_audio::vad::{VadSettings, VoiceDetector};
use cxb_engine::{Conversation, EngineConfig, Service};
use cxb_providers::{stt, tts};
use cxb_wire::BotConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::drive::{CallLog, CallerAudio, Driver, Marks, Providers, Tasks, TurnWindow, TASK_RESULTS};
use super::{spawn_in_call, AgentDeskTarget};
use crate::app::AppState;
use crate::journal::{CallHeader, CallJournal};
use crate::link::CallLink;
use crate::providers;
use crate::recordings::CallRecording;

/// Caller audio is batched into STT messages of this many milliseconds. Deepgram takes any
/// chunking; 60 ms cuts per-call messages and wake-ups threefold and stays far inside the VAD
/// end-of-speech hangover, so turn latency is unchanged.
const STT_BATCH_MS: usize = 60;

impl<'a, L: CallLink> Driver<'a, L> {
    /// Build the call's driver: engine, tools, recorder, and the providers connected. A failure
    /// here does not return early: the engine is told, and the call ends as `error` with a result.
    pub(super) async fn setup(
        app: &'a AppState,
        link: L,
        mut cfg: BotConfig,
        agent_desk: Option<AgentDeskTarget>,
        shutdown: CancellationToken,
    ) -> Driver<'a, L> {
        let started_at = chrono::Utc::now();
        let t0 = Instant::now();
        let rate = link.meta().sample_rate;
        info!(caller_id = %link.meta().caller_id, stream_id = %link.meta().stream_id, rate, "call started");
        let call_vars = crate::variables::call_variables(&cfg, link.meta());
        let prompt_vars = crate::prompt_vars::PromptVariables::new(call_vars.clone(), &link.meta().connected_event);
        let unrendered = crate::prompt_vars::render_config(&mut cfg, &prompt_vars);
        if !unrendered.is_empty() {
            warn!(variables = ?unrendered, "prompt variables without a value were rendered empty");
        }
        let (tools, tool_errors) = cxb_tools::ToolRegistry::from_config(&cfg.tools);
        for e in &tool_errors {
            warn!(error = %e, "custom tool binding is invalid; the tool will answer with an error");
        }
        let mut engine_cfg = engine_config(&cfg, rate, link.transfer_family());
        for t in tools.iter() {
            let pre = t.pre_message().map(|m| (m.to_string(), t.pre_message_after()));
            // The engine's own bound sits just past the tool's, so the tool's timeout error wins.
            let timing = cxb_engine::ToolTiming { timeout: t.timeout() + Duration::from_millis(500), pre_message: pre };
            engine_cfg.tool_timings.insert(t.name().to_string(), timing);
        }
        let knowledge = crate::knowledge::tool_for(&cfg, app.knowledge.as_ref(), &app.settings);
        if let Some(k) = &knowledge {
            engine_cfg.custom_tools.push(k.spec().to_openai_json());
            // A slow search is covered by the filler; the engine's bound sits past the search's.
            let timeout = Duration::from_millis(app.settings.knowledge_timeout_ms) + Duration::from_millis(500);
            engine_cfg
                .tool_timings
                .insert(cxb_knowledge::TOOL_NAME.into(), cxb_engine::ToolTiming { timeout, pre_message: None });
        }
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
        let vars =
            call_vars.into_iter().fold(cxb_tools::CallVariables::new(), |vars, (name, value)| vars.with(name, value));
        let (tx, rx) = mpsc::channel(TASK_RESULTS);
        let recording = match crate::recordings::CallRecording::start(&app.settings, &cfg.session_id, rate, started_at)
        {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot record this call; continuing without a recording");
                None
            }
        };
        // The journal is created (and synced) while the providers connect: the call says
        // nothing before both are done.
        let (data_dir, header) =
            (app.settings.data_dir.clone(), journal_header(&cfg, &link, started_at, recording.as_ref()));
        let journal = spawn_in_call(async move { CallJournal::open(&data_dir, header).await });
        let mut driver = Driver {
            app,
            providers: Providers {
                stt: None,
                stt_rx: None,
                tts: None,
                tts_rx: None,
                llm_params: providers::llm_params(&cfg, &app.settings),
                llm: None,
            },
            caller: CallerAudio {
                vad: None,
                stt_buf: Vec::with_capacity(2048),
                stt_batch: (rate as usize * STT_BATCH_MS / 1000).max(1),
                turn: smart_turn.then(|| TurnWindow {
                    audio: cxb_turn::TurnAudio::new(Duration::from_millis(500)),
                    resampler: cxb_transports::resample::Resampler::new(rate, crate::smart_turn::MODEL_RATE),
                    scratch: Vec::new(),
                }),
            },
            tasks: Tasks { tools: Arc::new(tools), knowledge, vars: Arc::new(vars), tx, rx, ready: Vec::new() },
            marks: Marks::default(),
            recording,
            log: CallLog {
                started_at,
                events: Vec::new(),
                protocol_errors: 0,
                bot_hung_up: false,
                forced_end: None,
                conversation_started: None,
            },
            agent_desk,
            shutdown,
            journal: CallJournal::default(),
            engine: Conversation::new(engine_cfg),
            cfg,
            link,
            t0,
        };
        for name in unrendered {
            let event = driver.event("unrendered_variable", serde_json::json!({"variable": name}));
            driver.log.events.push(event);
        }
        driver.connect_providers(rate).await;
        match journal.await {
            Ok(j) => driver.journal = j,
            Err(e) => error!(error = %e, "journal task failed; this call has no crash guard"),
        }
        driver
    }

    /// Connect STT and TTS concurrently; a failure ends the call as `error` with a result.
    async fn connect_providers(&mut self, rate: u32) {
        match VoiceDetector::new(rate, vad_settings(&self.cfg)) {
            Ok(v) => self.caller.vad = Some(v),
            Err(e) => return self.service_failed(Service::Transport, "vad", e.to_string()),
        }
        let stt_params = providers::stt_params(&self.cfg, &self.app.settings, rate);
        let tts_params = providers::tts_params(&self.cfg, &self.app.settings, rate);
        info!(
            stt = %stt_params.provider,
            stt_model = %stt_params.model,
            stt_turns = providers::stt_detects_turns(&self.cfg),
            tts = %tts_params.provider,
            "connecting providers"
        );
        let (stt_res, tts_res) = tokio::join!(stt::connect(&stt_params), tts::connect(&tts_params));
        match stt_res {
            Ok((h, r)) => (self.providers.stt, self.providers.stt_rx) = (Some(h), Some(r)),
            Err(e) => self.service_failed(Service::Stt, e.provider(), e.to_string()),
        }
        match tts_res {
            Ok((h, r)) => (self.providers.tts, self.providers.tts_rx) = (Some(h), Some(r)),
            Err(e) => self.service_failed(Service::Tts, e.provider(), e.to_string()),
        }
    }
}

/// The journal's header: who the call is, for a result made from the journal after a crash.
fn journal_header<L: CallLink>(
    cfg: &BotConfig,
    link: &L,
    started_at: chrono::DateTime<chrono::Utc>,
    recording: Option<&CallRecording>,
) -> CallHeader {
    CallHeader {
        session_id: cfg.session_id.clone(),
        bot_id: cfg.bot_id.clone(),
        webhook_url: cfg.webhook_url.clone(),
        transport: link.name().to_string(),
        meta: link.meta().clone(),
        started_at,
        recording_key: recording.map(|r| r.key().to_string()),
        recording_url: recording.and_then(|r| r.url().map(str::to_string)),
    }
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
    e.end_call_message = cfg.end_call_message.clone();
    e.transfer = cxb_engine::TransferChoices::for_transport(&cfg.transfer_targets, &cfg.transfer_numbers, transport)
        .map(|choices| cxb_engine::TransferOptions { choices, pre_transfer_message: cfg.pre_transfer_message.clone() });
    e.filler_phrases = cfg.filler.phrases.iter().filter(|p| !p.trim().is_empty()).cloned().collect();
    if let Some(t) = millis(cfg.filler.after_ms, 30_000) {
        e.filler_after = t;
    }
    if providers::stt_detects_turns(cfg) || cfg.turn.mode.as_deref() == Some("stt") {
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
