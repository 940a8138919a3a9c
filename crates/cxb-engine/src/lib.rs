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
//! Time is a [`Duration`] since the call was answered. Tests drive it with simulated time.
//! The engine also owns bot-audio playout: it releases one 20 ms frame at a time, paced in real
//! time with a small lead, so a barge-in clear really stops speech and the transcript keeps
//! only what the caller actually heard.

mod record;
pub mod sentences;

use std::collections::VecDeque;
use std::time::Duration;

use cxb_wire::llm::{ChatMessage, ToolCall, Usage};
use cxb_wire::result::{DisconnectedBy, Speaker};
use serde_json::{json, Value};

pub use record::{CallRecord, EventRecord, LatencySample, TranscriptLine};
use sentences::SentenceSplitter;

/// Name of the built-in tool that ends the call.
pub const END_CALL_TOOL: &str = "end_call";

/// Per-call engine settings, resolved from the bot config and worker defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Transport sample rate; bot audio frames are 20 ms at this rate.
    pub sample_rate: u32,
    pub system_prompt: String,
    pub opening_message: String,
    /// Custom tools from the bot config (OpenAI function format).
    pub custom_tools: Vec<Value>,
    /// Minimum caller words that interrupt the bot (0 or 1: any word interrupts).
    pub min_words_interruption: u32,
    pub max_call_duration: Duration,
    /// The opening message cannot be interrupted during its first `opening_guard` of playout,
    /// so line noise at pick-up does not cut the greeting.
    pub opening_guard: Duration,
    /// How far ahead of real time bot audio is released to the transport.
    pub playout_lead: Duration,
    /// After VAD says the caller stopped, how long to wait for the STT final before closing the
    /// turn with what we have (or dropping it as noise).
    pub stt_final_wait: Duration,
    pub llm_first_token_timeout: Duration,
    pub tts_first_audio_timeout: Duration,
    pub tool_timeout: Duration,
    /// The VAD's end-of-speech hangover: `SpeechStopped` arrives this long after the caller's
    /// last voiced frame. Response latency is measured from the real end of speech.
    pub vad_stop_hangover: Duration,
}

impl EngineConfig {
    /// Defaults for everything but the bot's texts.
    pub fn new(sample_rate: u32, system_prompt: String, opening_message: String) -> Self {
        Self {
            sample_rate,
            system_prompt,
            opening_message,
            custom_tools: Vec::new(),
            min_words_interruption: 3,
            max_call_duration: Duration::from_secs(600),
            opening_guard: Duration::from_millis(1000),
            playout_lead: Duration::from_millis(60),
            stt_final_wait: Duration::from_millis(1000),
            llm_first_token_timeout: Duration::from_secs(10),
            tts_first_audio_timeout: Duration::from_secs(8),
            tool_timeout: Duration::from_secs(15),
            vad_stop_hangover: Duration::ZERO,
        }
    }

    fn frame_samples(&self) -> usize {
        (self.sample_rate / 50) as usize
    }
}

/// Word timing reported by TTS, relative to the utterance's first sample.
#[derive(Debug, Clone, PartialEq)]
pub struct WordTime {
    pub word: String,
    pub start_secs: f32,
}

/// Which external service an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Stt,
    Llm,
    Tts,
    Transport,
}

impl Service {
    fn as_str(self) -> &'static str {
        match self {
            Service::Stt => "stt",
            Service::Llm => "llm",
            Service::Tts => "tts",
            Service::Transport => "transport",
        }
    }
}

/// Everything that can happen to a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The call is answered: speak the opening message.
    Start,
    /// VAD: the caller started speaking.
    SpeechStarted,
    /// VAD: the caller stopped speaking (after the stop hangover).
    SpeechStopped,
    /// An STT result. Interim results replace each other; finals accumulate.
    Transcript {
        text: String,
        is_final: bool,
        speech_final: bool,
    },
    /// STT fallback end-of-utterance signal.
    UtteranceEnd,
    LlmToken {
        turn: u64,
        text: String,
    },
    LlmToolCalls {
        turn: u64,
        calls: Vec<ToolCall>,
    },
    LlmDone {
        turn: u64,
        usage: Option<Usage>,
    },
    LlmFailed {
        turn: u64,
        error: String,
    },
    TtsAudio {
        utterance: u64,
        pcm: Vec<i16>,
    },
    TtsWords {
        utterance: u64,
        words: Vec<WordTime>,
    },
    TtsDone {
        utterance: u64,
    },
    /// A provider or the transport failed irrecoverably.
    ServiceFailed {
        service: Service,
        error: String,
    },
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
    /// The caller hung up (hangup-call, stop, participant left, or a vanished socket).
    CustomerHangup,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    StartLlm {
        turn: u64,
        messages: Vec<ChatMessage>,
        tools: Vec<Value>,
    },
    CancelLlm {
        turn: u64,
    },
    /// Send text to TTS for utterance (context) `utterance`.
    Speak {
        utterance: u64,
        text: String,
    },
    /// No more text for this utterance.
    FlushSpeech {
        utterance: u64,
    },
    CancelSpeech {
        utterance: u64,
    },
    /// Send this 20 ms frame of bot audio to the caller now.
    PlayAudio {
        frame: Vec<i16>,
    },
    /// Drop any bot audio the transport has queued (barge-in).
    ClearAudio,
    /// Ask STT to flush a final result now.
    FinalizeStt,
    RunTool {
        call_id: String,
        name: String,
        arguments: String,
    },
    /// The call is over. `hang_up`: the bot ends it, so the transport's hang-up primitive must be
    /// sent; false when the caller already left.
    End {
        disconnected_by: DisconnectedBy,
        hang_up: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UtteranceKind {
    Opening,
    Response,
}

#[derive(Debug)]
struct Utterance {
    id: u64,
    kind: UtteranceKind,
    text: String,
    flushed: bool,
    tts_done: bool,
    cancelled: bool,
    audio: VecDeque<i16>,
    received: usize,
    sent: usize,
    text_sent_at: Option<Duration>,
    first_audio_at: Option<Duration>,
    words: Vec<WordTime>,
    /// Index into `record.latency` this utterance completes, for the first response audio.
    latency_sample: Option<usize>,
}

impl Utterance {
    fn new(id: u64, kind: UtteranceKind) -> Self {
        Self {
            id,
            kind,
            text: String::new(),
            flushed: false,
            tts_done: false,
            cancelled: false,
            audio: VecDeque::new(),
            received: 0,
            sent: 0,
            text_sent_at: None,
            first_audio_at: None,
            words: Vec::new(),
            latency_sample: None,
        }
    }

    fn finished_playing(&self) -> bool {
        self.flushed && self.tts_done && self.audio.is_empty()
    }
}

#[derive(Debug)]
struct LlmTurn {
    id: u64,
    started_at: Duration,
    first_token_at: Option<Duration>,
    utterance: u64,
    splitter: SentenceSplitter,
    text: String,
    tool_calls: Vec<ToolCall>,
    latency_sample: Option<usize>,
}

#[derive(Debug)]
struct ToolRound {
    assistant_text: Option<String>,
    calls: Vec<ToolCall>,
    results: Vec<Option<String>>,
    deadline: Duration,
    latency_sample: Option<usize>,
}

#[derive(Debug, Default)]
struct UserTurn {
    started_at: Option<Duration>,
    finals: String,
    interim: String,
    vad_stopped_at: Option<Duration>,
    final_deadline: Option<Duration>,
    finalize_sent: bool,
    end_signalled: bool,
}

impl UserTurn {
    fn text(&self) -> String {
        let mut t = self.finals.trim().to_string();
        let interim = self.interim.trim();
        if !interim.is_empty() {
            if !t.is_empty() {
                t.push(' ');
            }
            t.push_str(interim);
        }
        t
    }

    fn is_empty(&self) -> bool {
        self.finals.trim().is_empty() && self.interim.trim().is_empty()
    }
}

/// Real-time pacing of bot audio.
#[derive(Debug, Default)]
struct Playout {
    /// Start of the current talk spurt and samples released in it.
    spurt_start: Duration,
    spurt_samples: usize,
    active: bool,
}

/// The conversation state machine for one call.
#[derive(Debug)]
pub struct Conversation {
    cfg: EngineConfig,
    started: bool,
    ended: Option<DisconnectedBy>,
    actions: VecDeque<Action>,
    messages: Vec<ChatMessage>,
    tools: Vec<Value>,
    next_id: u64,
    user: UserTurn,
    vad_speaking: bool,
    llm: Option<LlmTurn>,
    tool_round: Option<ToolRound>,
    utterances: VecDeque<Utterance>,
    playout: Playout,
    /// When the current opening's first frame was played (for the opening guard).
    opening_started_at: Option<Duration>,
    /// End the call once all queued speech has played.
    end_after_speech: Option<DisconnectedBy>,
    turns: u32,
    /// Latency sample waiting for its first response audio, with the caller's speech end.
    pending_speech_end: Option<(usize, Duration)>,
    record: CallRecord,
}

impl Conversation {
    pub fn new(cfg: EngineConfig) -> Self {
        let mut tools = vec![end_call_tool()];
        for t in &cfg.custom_tools {
            tools.push(normalise_tool(t));
        }
        let messages = vec![ChatMessage::System(cfg.system_prompt.clone())];
        Self {
            cfg,
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
            utterances: VecDeque::new(),
            playout: Playout::default(),
            opening_started_at: None,
            end_after_speech: None,
            turns: 0,
            pending_speech_end: None,
            record: CallRecord::default(),
        }
    }

    /// Feed one input at time `now` (since the call was answered).
    pub fn handle(&mut self, now: Duration, input: Input) {
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
            Input::LlmToolCalls { turn, calls } => {
                if let Some(llm) = self.llm.as_mut().filter(|l| l.id == turn) {
                    llm.tool_calls.extend(calls);
                }
                self.mark_first_token(now, turn);
            }
            Input::LlmDone { turn, usage } => self.on_llm_done(now, turn, usage),
            Input::LlmFailed { turn, error } => {
                if self.llm.as_ref().is_some_and(|l| l.id == turn) {
                    self.fail(now, Service::Llm, error);
                }
            }
            Input::TtsAudio { utterance, pcm } => self.on_tts_audio(now, utterance, pcm),
            Input::TtsWords { utterance, words } => {
                if let Some(u) = self.utterance_mut(utterance) {
                    u.words.extend(words);
                }
            }
            Input::TtsDone { utterance } => {
                if let Some(u) = self.utterance_mut(utterance) {
                    u.tts_done = true;
                }
                self.after_playout_change(now);
            }
            Input::ServiceFailed { service, error } => self.fail(now, service, error),
            Input::ToolResult { call_id, content, is_error } => self.on_tool_result(now, call_id, content, is_error),
            Input::CustomerHangup => self.end(now, DisconnectedBy::Customer, false),
        }
        self.pump(now);
    }

    /// Advance timers to `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.ended.is_some() {
            return;
        }
        if self.started && now >= self.cfg.max_call_duration {
            self.record.event(
                "max_duration_reached",
                now,
                json!({"max_call_duration_seconds": self.cfg.max_call_duration.as_secs()}),
            );
            self.end(now, DisconnectedBy::Timeout, true);
            return;
        }
        if self.user.final_deadline.is_some_and(|d| now >= d) {
            self.user.final_deadline = None;
            self.close_user_turn(now);
        }
        if let Some(llm) = &self.llm {
            if llm.first_token_at.is_none() && now >= llm.started_at + self.cfg.llm_first_token_timeout {
                let error = format!("no response within {} ms", self.cfg.llm_first_token_timeout.as_millis());
                self.fail(now, Service::Llm, error);
                return;
            }
        }
        if let Some(round) = &self.tool_round {
            if now >= round.deadline {
                self.record.event("tool_timeout", now, json!({"timeout_ms": self.cfg.tool_timeout.as_millis() as u64}));
                let pending: Vec<String> = round
                    .calls
                    .iter()
                    .zip(&round.results)
                    .filter(|(_, r)| r.is_none())
                    .map(|(c, _)| c.id.clone())
                    .collect();
                for id in pending {
                    self.on_tool_result(now, id, "error: the tool did not answer in time".into(), true);
                }
            }
        }
        let tts_deadline = self.cfg.tts_first_audio_timeout;
        if self
            .utterances
            .iter()
            .any(|u| !u.cancelled && u.received == 0 && u.text_sent_at.is_some_and(|t| now >= t + tts_deadline))
        {
            let error = format!("no audio within {} ms", tts_deadline.as_millis());
            self.fail(now, Service::Tts, error);
            return;
        }
        self.pump(now);
    }

    /// The next action to perform, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Conversation::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.ended.is_some() {
            return None;
        }
        let mut t: Option<Duration> = None;
        let mut consider = |d: Option<Duration>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |x: Duration| x.min(d)));
            }
        };
        if self.started {
            consider(Some(self.cfg.max_call_duration));
        }
        consider(self.user.final_deadline);
        if let Some(llm) = &self.llm {
            if llm.first_token_at.is_none() {
                consider(Some(llm.started_at + self.cfg.llm_first_token_timeout));
            }
        }
        consider(self.tool_round.as_ref().map(|r| r.deadline));
        for u in &self.utterances {
            if !u.cancelled && u.received == 0 {
                consider(u.text_sent_at.map(|t| t + self.cfg.tts_first_audio_timeout));
            }
        }
        if self.front_has_audio() {
            consider(Some(self.next_frame_due()));
        }
        if self.end_after_speech.is_some()
            && self.playout.active
            && self.utterances.front().is_some_and(Utterance::finished_playing)
        {
            // Hang up once the caller has heard the last released frame.
            consider(Some(self.playout.spurt_start + self.frame_duration(self.playout.spurt_samples)));
        }
        t
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

    /// The conversation so far (system prompt first), for diagnostics.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The tool definitions offered to the LLM.
    pub fn tools(&self) -> &[Value] {
        &self.tools
    }

    /// Is the bot holding the floor (thinking, running a tool, or speaking)?
    pub fn bot_active(&self) -> bool {
        self.llm.is_some() || self.tool_round.is_some() || self.utterances.iter().any(|u| !u.cancelled)
    }

    // ----- inputs -----

    fn on_start(&mut self, now: Duration) {
        if self.started {
            return;
        }
        self.started = true;
        self.record.event("call_started", now, Value::Null);
        let opening = self.cfg.opening_message.trim().to_string();
        if opening.is_empty() {
            return;
        }
        let id = self.new_utterance(UtteranceKind::Opening);
        self.speak(now, id, &opening);
        self.flush(id);
        self.messages.push(ChatMessage::Assistant { content: Some(opening), tool_calls: vec![] });
    }

    fn on_speech_started(&mut self, now: Duration) {
        self.vad_speaking = true;
        self.user.vad_stopped_at = None;
        self.user.final_deadline = None;
        self.user.finalize_sent = false;
        if self.user.started_at.is_none() {
            self.user.started_at = Some(now);
        }
    }

    fn on_speech_stopped(&mut self, now: Duration) {
        self.vad_speaking = false;
        self.user.vad_stopped_at = Some(now);
        if self.user.is_empty() {
            // Speech with no words yet: wait a bounded time for STT to catch up.
            self.user.final_deadline = Some(now + self.cfg.stt_final_wait);
            return;
        }
        if self.user.interim.trim().is_empty() || self.user.end_signalled {
            self.close_user_turn(now);
        } else {
            // Words are still pending as an interim result: ask STT to finalize them now.
            self.request_finalize();
            self.user.final_deadline = Some(now + self.cfg.stt_final_wait);
        }
    }

    fn request_finalize(&mut self) {
        if !self.user.finalize_sent {
            self.user.finalize_sent = true;
            self.actions.push_back(Action::FinalizeStt);
        }
    }

    fn on_transcript(&mut self, now: Duration, text: String, is_final: bool, speech_final: bool) {
        let text = text.trim();
        if self.user.started_at.is_none() && !text.is_empty() {
            self.user.started_at = Some(now);
        }
        if is_final {
            if !text.is_empty() {
                if !self.user.finals.is_empty() {
                    self.user.finals.push(' ');
                }
                self.user.finals.push_str(text);
            }
            self.user.interim.clear();
        } else {
            self.user.interim = text.to_string();
        }
        if !text.is_empty() {
            self.maybe_interrupt(now);
        }
        if speech_final {
            self.user.end_signalled = true;
        }
        let final_in_hand = is_final && !self.user.finals.is_empty();
        if final_in_hand && !self.vad_speaking && (self.user.vad_stopped_at.is_some() || speech_final) {
            self.close_user_turn(now);
        }
    }

    fn on_utterance_end(&mut self, now: Duration) {
        self.user.end_signalled = true;
        if !self.vad_speaking && !self.user.is_empty() {
            self.close_user_turn(now);
        }
    }

    fn on_llm_token(&mut self, now: Duration, turn: u64, text: String) {
        self.mark_first_token(now, turn);
        let Some(llm) = self.llm.as_mut().filter(|l| l.id == turn) else { return };
        llm.text.push_str(&text);
        let pieces = llm.splitter.push(&text);
        let utterance = llm.utterance;
        for p in pieces {
            self.speak(now, utterance, &p);
        }
    }

    fn mark_first_token(&mut self, now: Duration, turn: u64) {
        let Some(llm) = self.llm.as_mut().filter(|l| l.id == turn) else { return };
        if llm.first_token_at.is_none() {
            llm.first_token_at = Some(now);
            if let Some(i) = llm.latency_sample {
                self.record.latency[i].llm_ttft_ms = Some(ms(now - llm.started_at));
            }
        }
    }

    fn on_llm_done(&mut self, now: Duration, turn: u64, usage: Option<Usage>) {
        if self.llm.as_ref().is_none_or(|l| l.id != turn) {
            return;
        }
        let Some(mut llm) = self.llm.take() else { return };
        if let Some(u) = usage {
            self.record.add_usage(&u);
        }
        if let Some(tail) = llm.splitter.finish() {
            self.speak(now, llm.utterance, &tail);
        }
        let content = Some(llm.text.trim().to_string()).filter(|t| !t.is_empty());
        let calls = std::mem::take(&mut llm.tool_calls);
        if calls.is_empty() {
            self.flush(llm.utterance);
            self.messages.push(ChatMessage::Assistant { content, tool_calls: vec![] });
            self.discard_if_silent(llm.utterance);
            return;
        }
        for c in &calls {
            self.record.event(
                "tool_call",
                now,
                json!({"tool_call_id": c.id, "name": c.name, "arguments": c.arguments}),
            );
        }
        if let Some(end) = calls.iter().find(|c| c.name == END_CALL_TOOL) {
            let final_message = serde_json::from_str::<Value>(&end.arguments)
                .ok()
                .and_then(|v| v.get("final_message").and_then(Value::as_str).map(str::to_string))
                .filter(|s| !s.trim().is_empty());
            if let Some(m) = &final_message {
                self.speak(now, llm.utterance, m);
            }
            self.flush(llm.utterance);
            let spoken = [content.clone(), final_message].into_iter().flatten().collect::<Vec<_>>().join(" ");
            self.messages.push(ChatMessage::Assistant {
                content: Some(spoken).filter(|s| !s.is_empty()),
                tool_calls: vec![end.clone()],
            });
            self.discard_if_silent(llm.utterance);
            self.end_after_speech = Some(DisconnectedBy::Bot);
            self.after_playout_change(now);
            return;
        }
        self.flush(llm.utterance);
        self.discard_if_silent(llm.utterance);
        let n = calls.len();
        for c in &calls {
            self.actions.push_back(Action::RunTool {
                call_id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            });
        }
        self.tool_round = Some(ToolRound {
            assistant_text: content,
            calls,
            results: vec![None; n],
            deadline: now + self.cfg.tool_timeout,
            latency_sample: llm.latency_sample,
        });
    }

    fn on_tool_result(&mut self, now: Duration, call_id: String, content: String, is_error: bool) {
        let Some(round) = self.tool_round.as_mut() else { return };
        let Some(i) = round.calls.iter().position(|c| c.id == call_id) else { return };
        if round.results[i].is_some() {
            return;
        }
        let name = round.calls[i].name.clone();
        round.results[i] = Some(content.clone());
        let mut preview: String = content.chars().take(500).collect();
        if preview.len() < content.len() {
            preview.push('…');
        }
        self.record.event(
            "custom_tool_result",
            now,
            json!({"tool_call_id": call_id, "name": name, "is_error": is_error, "result": preview}),
        );
        if round.results.iter().any(Option::is_none) {
            return;
        }
        let Some(round) = self.tool_round.take() else { return };
        self.messages.push(ChatMessage::Assistant { content: round.assistant_text, tool_calls: round.calls.clone() });
        for (call, result) in round.calls.iter().zip(round.results) {
            self.messages
                .push(ChatMessage::Tool { tool_call_id: call.id.clone(), content: result.unwrap_or_default() });
        }
        self.start_llm(now, round.latency_sample);
    }

    fn on_tts_audio(&mut self, now: Duration, utterance: u64, pcm: Vec<i16>) {
        let Some(u) = self.utterance_mut(utterance) else { return };
        if u.cancelled || pcm.is_empty() {
            return;
        }
        if u.received == 0 {
            if let (Some(i), Some(sent)) = (u.latency_sample, u.text_sent_at) {
                self.record.latency[i].tts_ttfb_ms = Some(ms(now - sent));
            }
        }
        let u = self.utterance_mut(utterance).expect("checked above");
        u.received += pcm.len();
        u.audio.extend(pcm);
    }

    // ----- turn taking -----

    /// Barge-in rule: while the bot holds the floor, caller speech of at least
    /// `min_words_interruption` words interrupts it — except during the opening guard.
    fn maybe_interrupt(&mut self, now: Duration) {
        if !self.bot_active() {
            return;
        }
        let words = word_count(&self.user.text());
        if words < self.cfg.min_words_interruption.max(1) as usize {
            return;
        }
        if self.in_opening_guard(now) {
            return;
        }
        self.interrupt(now, words);
    }

    fn in_opening_guard(&self, now: Duration) -> bool {
        let Some(front) = self.utterances.front() else { return false };
        if front.kind != UtteranceKind::Opening {
            return false;
        }
        match self.opening_started_at {
            None => true,
            Some(t) => now < t + self.cfg.opening_guard,
        }
    }

    fn interrupt(&mut self, now: Duration, words: usize) {
        if let Some(llm) = self.llm.take() {
            self.actions.push_back(Action::CancelLlm { turn: llm.id });
            // The LLM text never reached the caller beyond what was played (handled below).
            let utt = llm.utterance;
            if let Some(u) = self.utterance_mut(utt) {
                u.flushed = true;
            }
        }
        self.tool_round = None;
        let heard_ahead = self.samples_ahead(now);
        let mut spoken_texts = Vec::new();
        let mut cleared = false;
        let drained: Vec<Utterance> = self.utterances.drain(..).collect();
        for (i, mut u) in drained.into_iter().enumerate() {
            if !u.tts_done || !u.flushed {
                self.actions.push_back(Action::CancelSpeech { utterance: u.id });
            }
            u.cancelled = true;
            if i == 0 && u.sent > 0 {
                let heard = u.sent.saturating_sub(heard_ahead);
                let text = heard_text(&u, heard, self.cfg.sample_rate);
                if !u.audio.is_empty() || heard < u.sent || !u.tts_done {
                    cleared = true;
                }
                spoken_texts.push((u.first_audio_at.unwrap_or(now), text, u.kind));
            }
        }
        if cleared || self.playout.active {
            self.actions.push_back(Action::ClearAudio);
        }
        self.playout.active = false;
        self.opening_started_at = None;
        // The context keeps only what the caller heard.
        let heard: String = spoken_texts.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>().join(" ");
        self.rewrite_last_assistant(&heard);
        for (at, text, _) in spoken_texts {
            if !text.is_empty() {
                self.record.transcript.push(TranscriptLine { speaker: Speaker::Bot, text, at, interrupted: true });
            }
        }
        self.end_after_speech = None;
        self.record.event("interruption", now, json!({"words": words}));
    }

    /// Replace the trailing assistant message (or add one) with what was actually heard.
    fn rewrite_last_assistant(&mut self, heard: &str) {
        let heard = heard.trim();
        match self.messages.last_mut() {
            Some(ChatMessage::Assistant { content, tool_calls }) if tool_calls.is_empty() => {
                if heard.is_empty() {
                    self.messages.pop();
                } else {
                    *content = Some(heard.to_string());
                }
            }
            _ => {
                if !heard.is_empty() {
                    self.messages.push(ChatMessage::Assistant { content: Some(heard.to_string()), tool_calls: vec![] });
                }
            }
        }
    }

    fn close_user_turn(&mut self, now: Duration) {
        let turn = std::mem::take(&mut self.user);
        let text = turn.text();
        if text.is_empty() {
            return;
        }
        let words = word_count(&text);
        if self.bot_active() && words < self.cfg.min_words_interruption.max(1) as usize {
            // A short utterance while the bot holds the floor (a backchannel) is not a turn.
            self.record.event("ignored_speech", now, json!({"text": text}));
            return;
        }
        if self.bot_active() {
            // Enough words but the interruption was blocked (opening guard): the caller still
            // gets an answer once the bot finishes; cancel only pending thinking.
            if let Some(llm) = self.llm.take() {
                self.actions.push_back(Action::CancelLlm { turn: llm.id });
            }
        }
        self.record.customer_spoke = true;
        let started = turn.started_at.unwrap_or(now);
        self.record.transcript.push(TranscriptLine {
            speaker: Speaker::Customer,
            text: text.clone(),
            at: started,
            interrupted: false,
        });
        match self.messages.last_mut() {
            Some(ChatMessage::User(prev)) => {
                prev.push(' ');
                prev.push_str(&text);
            }
            _ => self.messages.push(ChatMessage::User(text)),
        }
        self.turns += 1;
        let vad_stop = turn.vad_stopped_at.unwrap_or(now);
        let speech_end = match turn.vad_stopped_at {
            Some(t) => t.saturating_sub(self.cfg.vad_stop_hangover),
            None => now,
        };
        let sample = LatencySample {
            turn: self.turns,
            stt_final_delay_ms: ms(now.saturating_sub(vad_stop)),
            ..Default::default()
        };
        self.record.latency.push(sample);
        let idx = self.record.latency.len() - 1;
        self.pending_speech_end = Some((idx, speech_end));
        self.start_llm(now, Some(idx));
    }

    fn start_llm(&mut self, now: Duration, latency_sample: Option<usize>) {
        let id = self.fresh_id();
        let utterance = self.new_utterance(UtteranceKind::Response);
        if let Some(u) = self.utterance_mut(utterance) {
            u.latency_sample = latency_sample;
        }
        self.record.llm_requests += 1;
        self.actions.push_back(Action::StartLlm {
            turn: id,
            messages: self.messages.clone(),
            tools: self.tools.clone(),
        });
        self.llm = Some(LlmTurn {
            id,
            started_at: now,
            first_token_at: None,
            utterance,
            splitter: SentenceSplitter::default(),
            text: String::new(),
            tool_calls: vec![],
            latency_sample,
        });
    }

    // ----- speech and playout -----

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn new_utterance(&mut self, kind: UtteranceKind) -> u64 {
        let id = self.fresh_id();
        self.utterances.push_back(Utterance::new(id, kind));
        id
    }

    fn utterance_mut(&mut self, id: u64) -> Option<&mut Utterance> {
        self.utterances.iter_mut().find(|u| u.id == id)
    }

    fn speak(&mut self, now: Duration, utterance: u64, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.record.tts_characters += text.chars().count() as u64;
        let Some(u) = self.utterance_mut(utterance) else { return };
        if !u.text.is_empty() {
            u.text.push(' ');
        }
        u.text.push_str(text);
        if u.text_sent_at.is_none() {
            u.text_sent_at = Some(now);
        }
        self.actions.push_back(Action::Speak { utterance, text: text.to_string() });
    }

    fn flush(&mut self, utterance: u64) {
        if let Some(u) = self.utterance_mut(utterance) {
            if !u.flushed {
                u.flushed = true;
                self.actions.push_back(Action::FlushSpeech { utterance });
            }
        }
    }

    /// An utterance that never got any text (a pure tool-call response) produces no audio.
    fn discard_if_silent(&mut self, utterance: u64) {
        if let Some(pos) = self.utterances.iter().position(|u| u.id == utterance && u.text.is_empty()) {
            let u = self.utterances.remove(pos).expect("position is valid");
            // Keep the latency sample pointing at the next response.
            if let (Some(i), Some(round)) = (u.latency_sample, self.tool_round.as_mut()) {
                round.latency_sample = Some(i);
            }
        }
    }

    /// Can the front utterance release a frame now? A partial last frame waits until TTS is
    /// done with the utterance (then it is padded), so this never reports work it cannot do.
    fn front_has_audio(&self) -> bool {
        self.utterances.front().is_some_and(|u| {
            !u.cancelled
                && !u.audio.is_empty()
                && (u.audio.len() >= self.cfg.frame_samples() || (u.tts_done && u.flushed))
        })
    }

    fn frame_duration(&self, samples: usize) -> Duration {
        Duration::from_micros(samples as u64 * 1_000_000 / self.cfg.sample_rate as u64)
    }

    fn next_frame_due(&self) -> Duration {
        if !self.playout.active {
            return Duration::ZERO;
        }
        (self.playout.spurt_start + self.frame_duration(self.playout.spurt_samples))
            .saturating_sub(self.cfg.playout_lead)
    }

    /// Samples released to the transport that the caller has not heard yet.
    fn samples_ahead(&self, now: Duration) -> usize {
        if !self.playout.active {
            return 0;
        }
        let released = self.frame_duration(self.playout.spurt_samples);
        let elapsed = now.saturating_sub(self.playout.spurt_start);
        let ahead = released.saturating_sub(elapsed);
        (ahead.as_micros() as u64 * self.cfg.sample_rate as u64 / 1_000_000) as usize
    }

    /// Release every frame that is due, then handle finished utterances.
    fn pump(&mut self, now: Duration) {
        if self.ended.is_some() {
            return;
        }
        let frame = self.cfg.frame_samples();
        loop {
            if !self.front_has_audio() {
                break;
            }
            if self.playout.active {
                // Underrun recovery: after a gap, restart the spurt instead of bursting.
                let due_unpaced = self.playout.spurt_start + self.frame_duration(self.playout.spurt_samples);
                if now > due_unpaced + self.frame_duration(frame) {
                    self.playout.active = false;
                }
            }
            if !self.playout.active {
                self.playout = Playout { spurt_start: now, spurt_samples: 0, active: true };
            }
            if self.next_frame_due() > now {
                break;
            }
            let u = self.utterances.front_mut().expect("front_has_audio");
            let take = frame.min(u.audio.len());
            let mut out: Vec<i16> = u.audio.drain(..take).collect();
            out.resize(frame, 0);
            u.sent += take;
            if u.first_audio_at.is_none() {
                u.first_audio_at = Some(now);
                if u.kind == UtteranceKind::Opening {
                    self.opening_started_at = Some(now);
                }
                if let Some(i) = u.latency_sample.take() {
                    if let Some((idx, speech_end)) = self.pending_speech_end.take().filter(|(idx, _)| *idx == i) {
                        self.record.latency[idx].total_response_ms = Some(ms(now.saturating_sub(speech_end)));
                    }
                }
            }
            self.playout.spurt_samples += frame;
            self.actions.push_back(Action::PlayAudio { frame: out });
        }
        self.after_playout_change(now);
    }

    /// Retire utterances that finished playing; end the call when a pending end is due.
    fn after_playout_change(&mut self, now: Duration) {
        while let Some(front) = self.utterances.front() {
            if front.cancelled {
                self.utterances.pop_front();
                continue;
            }
            if !front.finished_playing() {
                break;
            }
            // Played in full — but the tail is only heard once real time catches up.
            if self.samples_ahead(now) > 0 && self.utterances.len() == 1 && self.end_after_speech.is_some() {
                break;
            }
            let u = self.utterances.pop_front().expect("front exists");
            if u.kind == UtteranceKind::Opening {
                self.opening_started_at = None;
            }
            if !u.text.is_empty() && u.sent > 0 {
                self.record.transcript.push(TranscriptLine {
                    speaker: Speaker::Bot,
                    text: u.text.clone(),
                    at: u.first_audio_at.unwrap_or(now),
                    interrupted: false,
                });
            }
        }
        if self.utterances.is_empty() {
            self.playout.active = false;
            if self.llm.is_none() && self.tool_round.is_none() {
                if let Some(reason) = self.end_after_speech.take() {
                    self.end(now, reason, true);
                }
            }
        }
    }

    fn fail(&mut self, now: Duration, service: Service, error: String) {
        self.record.event("service_error", now, json!({"service": service.as_str(), "error": error}));
        self.end(now, DisconnectedBy::Error, true);
    }

    fn end(&mut self, now: Duration, reason: DisconnectedBy, hang_up: bool) {
        if self.ended.is_some() {
            return;
        }
        if let Some(llm) = self.llm.take() {
            self.actions.push_back(Action::CancelLlm { turn: llm.id });
        }
        // Whatever was playing is cut; keep what was heard in the transcript.
        let ahead = self.samples_ahead(now);
        let drained: Vec<Utterance> = self.utterances.drain(..).collect();
        for (i, u) in drained.into_iter().enumerate() {
            if i == 0 && u.sent > 0 && !u.cancelled {
                let heard = u.sent.saturating_sub(ahead);
                let complete = u.finished_playing() && heard >= u.sent;
                let text = if complete { u.text.clone() } else { heard_text(&u, heard, self.cfg.sample_rate) };
                if !text.is_empty() {
                    self.record.transcript.push(TranscriptLine {
                        speaker: Speaker::Bot,
                        text,
                        at: u.first_audio_at.unwrap_or(now),
                        interrupted: !complete,
                    });
                }
            }
        }
        self.record.event("call_ended", now, json!({"disconnected_by": reason.as_str()}));
        self.ended = Some(reason);
        self.actions.push_back(Action::End { disconnected_by: reason, hang_up });
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Words as the interruption rule counts them.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().filter(|w| w.chars().any(char::is_alphanumeric)).count()
}

/// The part of an utterance's text covered by its first `heard` samples: by TTS word timings
/// when we have them, else proportionally by characters, cut back to a word boundary.
fn heard_text(u: &Utterance, heard: usize, sample_rate: u32) -> String {
    if heard == 0 {
        return String::new();
    }
    let heard_secs = heard as f32 / sample_rate as f32;
    if !u.words.is_empty() {
        let n = u.words.iter().take_while(|w| w.start_secs < heard_secs).count();
        return u.text.split_whitespace().take(n).collect::<Vec<_>>().join(" ");
    }
    let total = if u.tts_done { u.received.max(1) } else { u.received.max(heard).max(1) };
    let frac = (heard as f64 / total as f64).min(1.0);
    let chars: Vec<char> = u.text.chars().collect();
    if frac >= 1.0 && u.tts_done {
        return u.text.clone();
    }
    let cut = (chars.len() as f64 * frac) as usize;
    let prefix: String = chars[..cut.min(chars.len())].iter().collect();
    // Only whole words the caller heard.
    let full_word_end = if cut < chars.len() && !chars[cut].is_whitespace() {
        prefix.rfind(char::is_whitespace).unwrap_or(0)
    } else {
        prefix.len()
    };
    prefix[..full_word_end].trim().to_string()
}

fn end_call_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": END_CALL_TOOL,
            "description": "End the current call. Use it when the conversation is complete or the caller wants to hang up. Say goodbye in final_message.",
            "parameters": {
                "type": "object",
                "properties": {
                    "final_message": {"type": "string", "description": "A short goodbye spoken before hanging up."}
                },
                "required": []
            }
        }
    })
}

/// Accept both `{"type":"function","function":{...}}` and a bare `{"name":..,"parameters":..}`.
fn normalise_tool(t: &Value) -> Value {
    if t.get("function").is_some() {
        let mut t = t.clone();
        if let Some(o) = t.as_object_mut() {
            o.insert("type".into(), Value::String("function".into()));
        }
        t
    } else {
        json!({"type": "function", "function": t})
    }
}

#[cfg(test)]
mod tests;
