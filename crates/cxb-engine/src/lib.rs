//! The sans-IO conversation engine.
//!
//! A call is a state machine fed with [`Input`]s (caller speech transitions from VAD, STT
//! results, LLM tokens and tool calls, TTS audio, tool results, hang-ups) at explicit times, and
//! answering with [`Action`]s (start/cancel an LLM turn, speak/cancel text, play or clear audio,
//! run a tool, end the call). It owns no sockets, no clock and no tasks — the quinn-proto / str0m
//! contract:
//!
//! ```text
//! loop {
//!     engine.handle(now, input) / engine.handle_timeout(now);
//!     while let Some(action) = engine.poll_action() { perform(action) }
//!     sleep_until(engine.poll_timeout());
//! }
//! ```
//!
//! Time is a [`Duration`] since the call was answered. Tests drive it with simulated time; a
//! `now` older than one already seen counts as that one. Every deadline lives in one
//! [`Timer`] table, set where its state changes: `poll_timeout` reports the earliest and
//! `handle_timeout` handles each expired timer once.
//!
//! The engine also owns bot-audio playout: it releases one 20 ms frame at a time, paced in real
//! time with a small lead, so a barge-in clear really stops speech and the transcript keeps
//! only what the caller actually heard.
//!
//! This file orchestrates; each concern keeps its state and handlers in its own module
//! (`user_turn`, `llm_turn`, `barge_in`, `playout`, `tools`, `transfer`, `silence`, `filler`,
//! `dtmf`, `ending`).

mod barge_in;
pub mod behaviour;
mod config;
pub mod dtmf;
mod ending;
mod filler;
mod io;
mod llm_turn;
mod playout;
mod record;
pub mod sentences;
mod silence;
mod timer;
mod tools;
mod transfer;
mod user_turn;
mod utterance;

use std::collections::VecDeque;
use std::time::Duration;

use cxb_audio::pacing::Pacer;
use cxb_wire::llm::ChatMessage;
use cxb_wire::result::DisconnectedBy;
use serde_json::{json, Value};
use tracing::trace;

pub use config::{EngineConfig, ReEngagementRule, ToolTiming, TransferOptions};
pub use cxb_wire::transfer::{ResolvedTransfer, TransferChoices};
pub use io::{Action, Input, Service, WordTime};
pub use record::{CallRecord, EventRecord, LatencySample, TranscriptLine};
pub use timer::Timer;
pub use tools::{END_CALL_TOOL, SEND_DTMF_TOOL, TRANSFER_TOOL, VOICEMAIL_TOOL};
pub use user_turn::word_count;

use dtmf::Keypad;
use llm_turn::LlmTurn;
use silence::Silence;
use timer::{Clock, TimerTable};
use tools::ToolRound;
use transfer::TransferState;
use user_turn::UserTurn;
use utterance::{Speech, UtteranceKind};

/// The conversation state machine for one call.
#[derive(Debug)]
pub struct Conversation {
    cfg: EngineConfig,
    clock: Clock,
    timers: TimerTable,
    started: bool,
    ended: Option<DisconnectedBy>,
    actions: VecDeque<Action>,
    /// The LLM context: the system prompt, then what was said and done.
    messages: Vec<ChatMessage>,
    tools: Vec<Value>,
    next_id: u64,
    user: UserTurn,
    vad_speaking: bool,
    llm: Option<LlmTurn>,
    tool_round: Option<ToolRound>,
    speech: Speech,
    /// End the call once all queued speech has played.
    end_after_speech: Option<DisconnectedBy>,
    /// The bot is saying the goodbye it asked for after a bare `end_call` (or its fallback):
    /// nothing the caller says or presses stops it.
    saying_goodbye: bool,
    turns: u32,
    /// Latency sample waiting for its first response audio, with the caller's speech end.
    pending_speech_end: Option<(usize, Duration)>,
    record: CallRecord,
    silence: Silence,
    transfer: TransferState,
    filler_next: usize,
    keys: Keypad,
}

impl Conversation {
    pub fn new(cfg: EngineConfig) -> Self {
        let tools = tools::offered(&cfg);
        let messages = vec![ChatMessage::System(cfg.system_prompt.clone())];
        let pacer = Pacer::new(cfg.sample_rate, cfg.playout_lead, cfg.playout_batch);
        Self {
            cfg,
            clock: Clock::default(),
            timers: TimerTable::default(),
            started: false,
            ended: None,
            actions: VecDeque::new(),
            messages,
            tools,
            next_id: 1,
            user: UserTurn::default(),
            vad_speaking: false,
            llm: None,
            tool_round: None,
            speech: Speech::new(pacer),
            end_after_speech: None,
            saying_goodbye: false,
            turns: 0,
            pending_speech_end: None,
            record: CallRecord::default(),
            silence: Silence::default(),
            transfer: TransferState::Idle,
            filler_next: 0,
            keys: Keypad::default(),
        }
    }

    /// Feed one input at time `now` (since the call was answered).
    pub fn handle(&mut self, now: Duration, input: Input) {
        let now = self.clock.advance(now);
        if self.ended.is_some() {
            return;
        }
        match input {
            Input::Start => self.on_start(now),
            Input::SpeechStarted => self.on_speech_started(now),
            Input::SpeechStopped => self.on_speech_stopped(now),
            Input::Transcript { text, is_final, speech_final } => self.on_transcript(now, text, is_final, speech_final),
            Input::UtteranceEnd => self.on_utterance_end(now),
            Input::LlmToken { turn, text } => self.on_llm_token(now, turn, text),
            Input::LlmToolCalls { turn, calls } => self.on_llm_tool_calls(now, turn, calls),
            Input::LlmDone { turn, usage } => self.on_llm_done(now, turn, usage),
            Input::LlmFailed { turn, error } => self.on_llm_failed(now, turn, error),
            Input::TtsAudio { utterance, pcm } => self.on_tts_audio(now, utterance, pcm),
            Input::TtsWords { utterance, words } => self.on_tts_words(utterance, words),
            Input::TtsDone { utterance } => self.on_tts_done(now, utterance),
            Input::ServiceFailed { service, error } => self.fail(now, service, error),
            Input::ToolResult { call_id, content, is_error } => self.on_tool_result(now, call_id, content, is_error),
            Input::CustomerHangup => self.end(now, DisconnectedBy::Customer, false),
            Input::Dtmf { digits } => self.on_dtmf(now, digits),
            Input::TransferResult { ok, error } => self.on_transfer_result(now, ok, error),
            Input::TurnPrediction { complete } => self.on_turn_prediction(now, complete),
            Input::Shutdown => self.shut_down(now),
            Input::PlaybackConfirmed { utterance } => self.on_playback_confirmed(utterance),
        }
        self.pump(now);
        self.refresh_silence(now);
    }

    /// Handle every timer due at `now`, each once, in [`Timer::ALL`] order.
    pub fn handle_timeout(&mut self, now: Duration) {
        let now = self.clock.advance(now);
        for timer in Timer::ALL {
            if self.ended.is_some() {
                return;
            }
            if self.timers.expire(timer, now) {
                trace!(?timer, ?now, "engine timer expired");
                self.on_timer(now, timer);
            }
        }
        self.pump(now);
        self.refresh_silence(now);
    }

    fn on_timer(&mut self, now: Duration, timer: Timer) {
        match timer {
            Timer::MaxDuration => {
                let limit = self.cfg.max_call_duration.as_secs();
                self.record.event("max_duration_reached", now, json!({"max_call_duration_seconds": limit}));
                self.end(now, DisconnectedBy::Timeout, true);
            }
            Timer::SttFinal => self.close_user_turn(now),
            Timer::LlmFirstToken => self.on_llm_first_token_timeout(now),
            Timer::ToolRound => self.on_tool_timeout(now),
            Timer::TtsFirstAudio => {
                let error = format!("no audio within {} ms", self.cfg.tts_first_audio_timeout.as_millis());
                self.fail(now, Service::Tts, error);
            }
            Timer::Dtmf => self.close_dtmf_turn(now),
            Timer::FalseInterruption => self.resume_after_false_interruption(now),
            Timer::Filler => self.speak_fillers(now),
            Timer::Transfer => self.on_transfer_timeout(now),
            Timer::Silence => self.on_silence(now),
            // The pump that ends every wake-up releases due frames and settles played speech.
            Timer::Playout | Timer::AfterPlayout => {}
        }
    }

    /// The next action to perform, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Conversation::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let (timer, at) = self.next_timer()?;
        trace!(?timer, ?at, "next engine timer");
        Some(at)
    }

    /// The timer behind [`Conversation::poll_timeout`], and its deadline.
    pub fn next_timer(&self) -> Option<(Timer, Duration)> {
        if self.ended.is_some() {
            return None;
        }
        self.timers.next_timeout()
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    pub fn disconnected_by(&self) -> Option<DisconnectedBy> {
        self.ended
    }

    pub fn record(&self) -> &CallRecord {
        &self.record
    }

    /// The tool definitions offered to the LLM.
    pub fn tools(&self) -> &[Value] {
        &self.tools
    }

    /// Is the bot holding the floor (thinking, running a tool, speaking or transferring)?
    pub fn bot_active(&self) -> bool {
        self.llm.is_some()
            || self.tool_round.is_some()
            || !self.speech.queue.is_empty()
            || !matches!(self.transfer, TransferState::Idle)
    }

    fn on_start(&mut self, now: Duration) {
        if self.started {
            return;
        }
        self.started = true;
        self.record.event("call_started", now, Value::Null);
        self.timers.set(Timer::MaxDuration, self.cfg.max_call_duration);
        let opening = self.cfg.opening_message.trim().to_string();
        if opening.is_empty() {
            return;
        }
        self.say(now, UtteranceKind::Opening, &opening);
        self.messages.push(ChatMessage::Assistant { content: Some(opening), tool_calls: vec![] });
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests;
