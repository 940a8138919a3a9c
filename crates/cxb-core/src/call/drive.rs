//! The drive loop: one `select!` over the link, the providers, the results of the call's tasks
//! and the timers; after every wake-up each queued engine action is performed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cxb_audio::vad::VoiceDetector;
use cxb_engine::{Action, Conversation, Input, Service};
use cxb_providers::llm::{LlmEvent, LlmParams, LlmStream};
use cxb_providers::stt::{SttEvent, SttHandle};
use cxb_providers::tts::{TtsEvent, TtsHandle};
use cxb_wire::llm::{ChatRequest, ToolSpec};
use cxb_wire::result::{CallEvent, DisconnectedBy};
use cxb_wire::BotConfig;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::timer::Deadline;
use super::{spawn_in_call, AgentDeskTarget, Unanswered};
use crate::app::AppState;
use crate::journal::CallJournal;
use crate::link::{CallLink, TransferError, TransferStart};
use crate::recordings::CallRecording;

/// Marks outstanding at once; older ones are forgotten (their echo then means nothing).
const MAX_PENDING_MARKS: usize = 64;

/// Task results queued towards the call at once; at most a handful of tools run at a time.
pub(super) const TASK_RESULTS: usize = 16;

/// Per-call state the driver keeps beside the engine, in parts that each own their state.
pub(super) struct Driver<'a, L: CallLink> {
    pub(super) app: &'a AppState,
    pub(super) cfg: BotConfig,
    pub(super) link: L,
    pub(super) engine: Conversation,
    /// Call time zero: the clock of the engine, the recording and the events.
    pub(super) t0: Instant,
    pub(super) providers: Providers,
    pub(super) caller: CallerAudio,
    pub(super) tasks: Tasks,
    pub(super) marks: Marks,
    /// Stereo WAV of the call (customer left, bot right as played), streamed to disk.
    pub(super) recording: Option<CallRecording>,
    pub(super) log: CallLog,
    /// Agent Desk: where a handoff is enqueued, once one has been asked for.
    pub(super) agent_desk: Option<AgentDeskTarget>,
    /// Fires when the worker must end the call (drain deadline).
    pub(super) shutdown: CancellationToken,
    /// The crash guard: transcript and events on disk as they happen.
    pub(super) journal: CallJournal,
}

/// The call's STT, TTS and LLM connections with their event streams.
pub(super) struct Providers {
    pub(super) stt: Option<SttHandle>,
    pub(super) stt_rx: Option<mpsc::Receiver<SttEvent>>,
    pub(super) tts: Option<TtsHandle>,
    pub(super) tts_rx: Option<mpsc::Receiver<TtsEvent>>,
    pub(super) llm_params: LlmParams,
    /// The LLM request streaming now, with its engine turn.
    pub(super) llm: Option<(u64, LlmStream)>,
}

/// The caller's audio on its way to the VAD, STT and the turn model.
pub(super) struct CallerAudio {
    pub(super) vad: Option<VoiceDetector>,
    /// Audio waiting to go to STT: sent in batches rather than one message per frame.
    pub(super) stt_buf: Vec<i16>,
    /// Samples per STT message.
    pub(super) stt_batch: usize,
    /// Smart-turn mode only.
    pub(super) turn: Option<TurnWindow>,
}

/// The caller's last seconds at the turn model's rate.
pub(super) struct TurnWindow {
    pub(super) audio: cxb_turn::TurnAudio,
    pub(super) resampler: cxb_transports::resample::Resampler,
    /// The resampler's output, reused frame after frame.
    pub(super) scratch: Vec<i16>,
}

/// The bot's custom tools, and the results of work the call does off its task.
pub(super) struct Tasks {
    pub(super) tools: Arc<cxb_tools::ToolRegistry>,
    /// `search_knowledge`, when the bot enables knowledge.
    pub(super) knowledge: Option<cxb_knowledge::KnowledgeTool>,
    /// The `{{call.*}}` values tool templates can use.
    pub(super) vars: Arc<cxb_tools::CallVariables>,
    /// Bounded ([`TASK_RESULTS`]); each task sends one result.
    pub(super) tx: mpsc::Sender<TaskResult>,
    pub(super) rx: mpsc::Receiver<TaskResult>,
    /// Results waiting for the engine: produced on the spot while performing, or received.
    pub(super) ready: Vec<TaskResult>,
}

/// What a piece of work done for the engine reports back.
pub(super) enum TaskResult {
    Tool {
        call_id: String,
        content: String,
        is_error: bool,
    },
    /// A knowledge search: a tool result plus its `knowledge_retrieval` event.
    Knowledge {
        call_id: String,
        content: String,
        is_error: bool,
        event: serde_json::Value,
    },
    Transfer(Result<(), TransferError>),
    TurnPrediction {
        complete: bool,
    },
}

impl TaskResult {
    fn into_input(self) -> Input {
        match self {
            TaskResult::Tool { call_id, content, is_error }
            | TaskResult::Knowledge { call_id, content, is_error, .. } => {
                Input::ToolResult { call_id, content, is_error }
            }
            TaskResult::Transfer(Ok(())) => Input::TransferResult { ok: true, error: None },
            TaskResult::Transfer(Err(error)) => {
                warn!(%error, "transfer failed");
                Input::TransferResult { ok: false, error: Some(error.to_string()) }
            }
            TaskResult::TurnPrediction { complete } => Input::TurnPrediction { complete },
        }
    }
}

/// Playback marks placed and not yet echoed: mark name → engine utterance.
#[derive(Default)]
pub(super) struct Marks(HashMap<String, u64>);

impl Marks {
    fn place(&mut self, mark: String, utterance: u64) {
        if self.0.len() >= MAX_PENDING_MARKS {
            self.0.clear();
        }
        self.0.insert(mark, utterance);
    }

    /// The utterance whose playback the far end confirmed, if the mark is still tracked.
    pub(super) fn echoed(&mut self, mark: &str) -> Option<u64> {
        self.0.remove(mark)
    }
}

/// What the result needs beyond the engine's record.
pub(super) struct CallLog {
    pub(super) started_at: chrono::DateTime<chrono::Utc>,
    /// Events the driver adds to the engine's (bad frames, the answer, the handoff).
    pub(super) events: Vec<CallEvent>,
    pub(super) protocol_errors: u32,
    /// The bot sent the transport's hang-up primitive.
    pub(super) bot_hung_up: bool,
    /// Set when the call ends outside the conversation (a dial-out that was never answered).
    pub(super) forced_end: Option<DisconnectedBy>,
    /// Call time when the conversation started (after the answer, for a dial-out).
    pub(super) conversation_started: Option<Duration>,
}

impl<L: CallLink> Driver<'_, L> {
    /// Run the conversation until the engine ends it (or the call ends unanswered).
    pub(super) async fn drive(&mut self, mut answered: Option<oneshot::Receiver<Result<(), Unanswered>>>) {
        // The conversation starts now, or (dial-out) once the callee answers.
        if answered.is_none() && !self.engine.is_ended() {
            self.start_conversation();
        }
        let idle = self.app.settings.inbound_idle_timeout();
        let mut last_inbound = tokio::time::Instant::now();
        let mut engine_timer = Deadline::new();
        // Lazily re-armed: frames only move `last_inbound`; the timer checks it when it fires.
        let idle_timer = tokio::time::sleep_until(last_inbound + idle);
        tokio::pin!(idle_timer);
        self.perform().await;
        while !self.engine.is_ended() && self.log.forced_end.is_none() {
            self.journal_progress();
            engine_timer.set(self.engine.poll_timeout().map(|d| tokio::time::Instant::from_std(self.t0 + d)));
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    warn!("the worker is stopping: ending the call");
                    self.input(Input::Shutdown);
                }
                ev = self.link.recv() => {
                    last_inbound = tokio::time::Instant::now();
                    self.on_link_event(ev);
                }
                verdict = wait_answer(&mut answered) => {
                    answered = None;
                    self.on_answer(verdict);
                }
                ev = recv_opt(&mut self.providers.stt_rx) => self.on_stt(ev),
                ev = recv_opt(&mut self.providers.tts_rx) => self.on_tts(ev),
                (turn, ev) = next_llm(&mut self.providers.llm) => self.on_llm(turn, ev),
                Some(result) = self.tasks.rx.recv() => self.tasks.ready.push(result),
                () = engine_timer.passed() => {
                    let now = self.now();
                    self.engine.handle_timeout(now);
                }
                _ = &mut idle_timer => {
                    // A ringing call has no caller audio yet; the dialling bounds that wait.
                    if last_inbound + idle > tokio::time::Instant::now() || answered.is_some() {
                        idle_timer.as_mut().reset(tokio::time::Instant::now().max(last_inbound) + idle);
                    } else {
                        warn!("no frame from the caller for {idle:?}; the client has vanished");
                        self.log.events.push(self.event("caller_vanished", json!({"idle_ms": idle.as_millis() as u64})));
                        self.input(Input::CustomerHangup);
                    }
                }
            }
            self.perform().await;
        }
        self.journal_progress();
    }

    /// Journal what the call added since the last wake-up (nothing, almost every time).
    pub(super) fn journal_progress(&mut self) {
        self.journal.progress(self.engine.record(), &self.log.events, self.log.started_at);
    }

    fn on_answer(&mut self, verdict: Result<(), Unanswered>) {
        match verdict {
            Ok(()) => {
                info!("callee answered; starting the conversation");
                self.log.events.push(self.event("call_answered", json!({})));
                self.start_conversation();
            }
            Err(u) => {
                info!(disconnected_by = %u.disconnected_by, detail = %u.detail, "call not answered");
                let data = json!({"disconnected_by": u.disconnected_by.as_str(), "detail": u.detail});
                self.log.events.push(self.event("call_not_answered", data));
                self.log.forced_end = Some(u.disconnected_by);
            }
        }
    }

    fn start_conversation(&mut self) {
        self.log.conversation_started = Some(self.now());
        self.input(Input::Start);
    }

    pub(super) fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub(super) fn input(&mut self, input: Input) {
        let now = self.now();
        self.engine.handle(now, input);
    }

    pub(super) fn service_failed(&mut self, service: Service, provider: &'static str, error: String) {
        warn!(service = ?service, provider, error = %error, "provider failed; ending the call");
        metrics::counter!("cxb_provider_errors_total", "service" => format!("{service:?}").to_lowercase(), "provider" => provider).increment(1);
        self.input(Input::ServiceFailed { service, error });
    }

    /// A driver event for the result, at the current call time.
    pub(super) fn event(&self, kind: &str, data: serde_json::Value) -> CallEvent {
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

    /// Perform every queued engine action, writing frames to the link, and feed back what that
    /// produced, until the engine has nothing more to do.
    pub(super) async fn perform(&mut self) {
        loop {
            while let Some(action) = self.engine.poll_action() {
                self.perform_action(action);
            }
            if !self.link.flush().await && !self.engine.is_ended() {
                self.input(Input::CustomerHangup);
                continue;
            }
            if self.engine.is_ended() || self.tasks.ready.is_empty() {
                return;
            }
            // The one place task results reach the engine: produced on the spot by the actions
            // above, or received from a task by the drive loop.
            for result in std::mem::take(&mut self.tasks.ready) {
                if let TaskResult::Knowledge { event, .. } = &result {
                    let event = self.event(cxb_knowledge::EVENT_TYPE, event.clone());
                    self.log.events.push(event);
                }
                self.input(result.into_input());
            }
        }
    }

    fn perform_action(&mut self, action: Action) {
        match action {
            Action::PlayAudio { frame } => {
                if let Some(rec) = &mut self.recording {
                    rec.bot(&frame, self.t0.elapsed());
                }
                self.link.audio(&frame)
            }
            Action::ClearAudio => {
                if let Some(rec) = &mut self.recording {
                    rec.bot_cleared(self.t0.elapsed());
                }
                self.link.clear()
            }
            Action::Speak { utterance, text } => self.tts_command(|t| t.speak(&utterance_context(utterance), &text)),
            Action::FlushSpeech { utterance } => self.tts_command(|t| t.flush(&utterance_context(utterance))),
            Action::CancelSpeech { utterance } => self.tts_command(|t| t.cancel(&utterance_context(utterance))),
            Action::StartLlm { turn, messages, tools } => {
                let req = ChatRequest {
                    model: self.cfg.llm.model.clone(),
                    messages,
                    tools: tools.iter().filter_map(ToolSpec::from_openai_json).collect(),
                    temperature: self.cfg.llm.temperature,
                    max_tokens: self.cfg.llm.max_tokens,
                    extra: self.cfg.llm.extra.clone(),
                    ..Default::default()
                };
                self.providers.llm = Some((turn, self.app.llm.stream(&self.providers.llm_params, req)));
            }
            Action::CancelLlm { turn } => {
                if self.providers.llm.as_ref().is_some_and(|(t, _)| *t == turn) {
                    self.providers.llm = None;
                }
            }
            Action::FinalizeStt => {
                self.flush_stt();
                if let Some(s) = &self.providers.stt {
                    s.finalize();
                }
            }
            Action::UtteranceDone { utterance } => {
                if let Some(mark) = self.link.utterance_done() {
                    self.marks.place(mark, utterance);
                }
            }
            Action::Transfer { to, reason } => {
                info!(destination = %to.destination, method = %to.method, target = %to.target, %reason, "transferring the call");
                let start = if to.is_agent_desk() {
                    self.enqueue_handoff(&to.destination, &to.target, &reason)
                } else {
                    self.link.transfer(&to.destination, &to.method, &to.kind, &reason)
                };
                match start {
                    TransferStart::Done(result) => self.tasks.ready.push(TaskResult::Transfer(result)),
                    TransferStart::Pending(fut) => {
                        let tx = self.tasks.tx.clone();
                        spawn_in_call(async move {
                            let _ = tx.send(TaskResult::Transfer(fut.await)).await;
                        });
                    }
                }
            }
            Action::RunTool { call_id, name, arguments } => self.run_tool(call_id, name, arguments),
            Action::PredictTurn => {
                let mut audio = Vec::with_capacity(crate::smart_turn::WINDOW_SECS * 16_000);
                if let Some(turn) = &self.caller.turn {
                    turn.audio.copy_to(&mut audio);
                }
                let tx = self.tasks.tx.clone();
                spawn_in_call(async move {
                    // No verdict (model error): treat as complete, the VAD already said stop.
                    let complete = crate::smart_turn::predict(audio).await.unwrap_or(true);
                    let _ = tx.send(TaskResult::TurnPrediction { complete }).await;
                });
            }
            Action::End { disconnected_by, hang_up } => {
                if hang_up {
                    self.link.hang_up();
                    self.log.bot_hung_up = true;
                }
                info!(%disconnected_by, hang_up, "ending call");
            }
        }
    }

    /// Run a custom HTTP tool in its own task; its (bounded) result comes back on the task
    /// channel.
    fn run_tool(&mut self, call_id: String, name: String, arguments: String) {
        if let Some(knowledge) = self.tasks.knowledge.clone().filter(|_| name == cxb_knowledge::TOOL_NAME) {
            let (tx, bot_id, session_id) =
                (self.tasks.tx.clone(), self.cfg.bot_id.clone(), self.cfg.session_id.clone());
            spawn_in_call(async move {
                let outcome = knowledge.run(&arguments, &bot_id, &session_id).await;
                let result = if outcome.error.is_some() { "error" } else { "ok" };
                metrics::counter!("cxb_knowledge_searches_total", "result" => result).increment(1);
                metrics::histogram!("cxb_knowledge_search_seconds").record(outcome.elapsed.as_secs_f64());
                info!(
                    hits = outcome.hits.len(),
                    elapsed_ms = outcome.elapsed.as_millis() as u64,
                    result,
                    "knowledge search finished"
                );
                let event = outcome.event();
                let result =
                    TaskResult::Knowledge { call_id, content: outcome.content, is_error: outcome.is_error, event };
                let _ = tx.send(result).await;
            });
            return;
        }
        if self.tasks.tools.get(&name).is_none() {
            warn!(tool = %name, "the LLM called a tool without a usable HTTP binding");
            let content = format!("error: the tool {name:?} is not available");
            self.tasks.ready.push(TaskResult::Tool { call_id, content, is_error: true });
            return;
        }
        let (tools, vars, client, tx) =
            (self.tasks.tools.clone(), self.tasks.vars.clone(), self.app.tool_http.clone(), self.tasks.tx.clone());
        spawn_in_call(async move {
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
            let result = TaskResult::Tool { call_id, content: outcome.content, is_error: outcome.is_error };
            // The call may have ended meanwhile; then nobody waits for the result.
            let _ = tx.send(result).await;
        });
    }

    fn tts_command(&mut self, f: impl FnOnce(&TtsHandle) -> Result<(), cxb_providers::ProviderError>) {
        let Some(t) = &self.providers.tts else { return };
        if let Err(e) = f(t) {
            self.service_failed(Service::Tts, e.provider(), e.to_string());
        }
    }
}

/// The TTS context of an engine utterance (`u7`), and back.
fn utterance_context(id: u64) -> String {
    format!("u{id}")
}

pub(super) fn parse_context(ctx: &str) -> Option<u64> {
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
async fn wait_answer(gate: &mut Option<oneshot::Receiver<Result<(), Unanswered>>>) -> Result<(), Unanswered> {
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

/// The next event of a provider stream; pending forever when there is none.
pub(super) async fn recv_opt<E>(rx: &mut Option<mpsc::Receiver<E>>) -> Option<E> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_bounded_and_each_echo_counts_once() {
        let mut marks = Marks::default();
        for u in 0..MAX_PENDING_MARKS as u64 {
            marks.place(format!("m{u}"), u);
        }
        assert_eq!(marks.echoed("m3"), Some(3));
        assert_eq!(marks.echoed("m3"), None, "an echo counts once");
        marks.place("m-last".into(), 99);
        // One more than the bound forgets the older marks instead of growing.
        marks.place("m-over".into(), 100);
        assert_eq!(marks.echoed("m0"), None);
        assert_eq!(marks.echoed("m-over"), Some(100));
    }

    #[test]
    fn task_results_become_their_engine_inputs() {
        let failed = TaskResult::Transfer(Err(TransferError::NotSip)).into_input();
        assert_eq!(failed, Input::TransferResult { ok: false, error: Some("the caller is not on a SIP call".into()) });
        assert_eq!(TaskResult::Transfer(Ok(())).into_input(), Input::TransferResult { ok: true, error: None });
        assert_eq!(
            TaskResult::TurnPrediction { complete: false }.into_input(),
            Input::TurnPrediction { complete: false }
        );
        let tool = TaskResult::Tool { call_id: "c1".into(), content: "ok".into(), is_error: false };
        assert_eq!(
            tool.into_input(),
            Input::ToolResult { call_id: "c1".into(), content: "ok".into(), is_error: false }
        );
    }
}
