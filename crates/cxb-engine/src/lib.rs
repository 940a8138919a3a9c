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

pub mod behaviour;
pub mod dtmf;
mod record;
pub mod sentences;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use cxb_wire::config::TransferTarget;
use cxb_wire::llm::{ChatMessage, ToolCall, Usage};
use cxb_wire::result::{DisconnectedBy, Speaker};
use cxb_wire::transfer::{self, ResolvedTransfer};
use serde_json::{json, Value};

use behaviour::PhraseSet;
pub use record::{CallRecord, EventRecord, LatencySample, TranscriptLine};
use sentences::SentenceSplitter;

/// Name of the built-in tool that ends the call.
pub const END_CALL_TOOL: &str = "end_call";
/// Built-in: the LLM heard an answering machine.
pub const VOICEMAIL_TOOL: &str = "detected_voicemail";
/// Built-in: hand the caller to a configured transfer target.
pub const TRANSFER_TOOL: &str = "transfer_call";
/// Built-in: play DTMF tones to the far end.
pub const SEND_DTMF_TOOL: &str = "send_dtmf";

/// Silence re-engagement: after `after` of caller silence say the next prompt, up to
/// `max_attempts` times, before the RNR / dead-air rules apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ReEngagementRule {
    pub after: Duration,
    pub max_attempts: u32,
    pub messages: Vec<String>,
}

/// What `transfer_call` may reach on this call (contract §4.4 inputs).
#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub targets: Vec<TransferTarget>,
    pub numbers: BTreeMap<String, String>,
    /// Transport name for method compatibility (`websocket`, `livekit_sip`, ...).
    pub transport: String,
    pub pre_transfer_message: String,
}

/// A custom tool's own timing: its timeout and a message spoken if it runs long.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolTiming {
    pub timeout: Duration,
    pub pre_message: Option<(String, Duration)>,
}

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
    /// Frames released together once a spurt is under way (at least 1). Two halves the writes
    /// and wake-ups per second of bot speech; the caller's buffer then swings between
    /// `playout_lead` and `playout_lead` plus one frame less `batch` frames.
    pub playout_batch: u32,
    /// After VAD says the caller stopped, how long to wait for the STT final before closing the
    /// turn with what we have (or dropping it as noise).
    pub stt_final_wait: Duration,
    pub llm_first_token_timeout: Duration,
    pub tts_first_audio_timeout: Duration,
    pub tool_timeout: Duration,
    /// The VAD's end-of-speech hangover: `SpeechStopped` arrives this long after the caller's
    /// last voiced frame. Response latency is measured from the real end of speech.
    pub vad_stop_hangover: Duration,
    /// Caller words that never interrupt the bot while it holds the floor.
    pub backchannels: PhraseSet,
    /// Caller phrases that interrupt at once, past the word minimum and the opening guard.
    pub high_intent: PhraseSet,
    /// Bot phrases that end the call once played.
    pub closure_phrases: PhraseSet,
    /// Pause bot audio as soon as VAD hears the caller; resume if no words follow within
    /// `false_interruption_timeout`.
    pub pause_on_speech: bool,
    pub false_interruption_timeout: Duration,
    /// Extra wait before closing a turn that looks mid-number or mid-e-mail.
    pub unfinished_wait: Duration,
    pub re_engagement: Option<ReEngagementRule>,
    /// Caller silent since the call started, this long after the bot stopped → `RNR`.
    pub rnr_timeout: Duration,
    /// Caller silent (after having spoken) this long → the bot ends the call.
    pub dead_air_timeout: Duration,
    pub dead_air_message: String,
    /// Offer `detected_voicemail`.
    pub voicemail_detection: bool,
    pub voicemail_message: String,
    /// Offer `transfer_call` (None: the transport cannot transfer or nothing is configured).
    pub transfer: Option<TransferOptions>,
    /// How long the transport may take to confirm a transfer.
    pub transfer_timeout: Duration,
    /// After a transfer, how long to wait for the transport to drop the leg before leaving.
    pub transfer_hold: Duration,
    /// Filler phrases (in turn) when the LLM or a tool is slow; empty: none.
    pub filler_phrases: Vec<String>,
    pub filler_after: Duration,
    /// Per custom tool timeout and pre-message.
    pub tool_timings: HashMap<String, ToolTiming>,
    /// Offer `send_dtmf` (in-band tones).
    pub dtmf_send: bool,
    /// Keypresses become a caller turn after this long without another key (or on `#`).
    pub dtmf_input_timeout: Duration,
    /// Smart-turn mode: at VAD stop, ask a turn model ([`Action::PredictTurn`]) and close the turn
    /// only when it says complete — or after this long at most.
    pub turn_model_max_wait: Option<Duration>,
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
            playout_batch: 1,
            stt_final_wait: Duration::from_millis(1000),
            llm_first_token_timeout: Duration::from_secs(10),
            tts_first_audio_timeout: Duration::from_secs(8),
            tool_timeout: Duration::from_secs(15),
            vad_stop_hangover: Duration::ZERO,
            backchannels: PhraseSet::new(behaviour::DEFAULT_BACKCHANNELS),
            high_intent: PhraseSet::new(behaviour::DEFAULT_HIGH_INTENT),
            closure_phrases: PhraseSet::new(behaviour::DEFAULT_CLOSURE_PHRASES),
            pause_on_speech: false,
            false_interruption_timeout: Duration::from_millis(800),
            unfinished_wait: Duration::from_millis(1500),
            re_engagement: None,
            rnr_timeout: Duration::from_secs(15),
            dead_air_timeout: Duration::from_secs(20),
            dead_air_message: String::new(),
            voicemail_detection: true,
            voicemail_message: String::new(),
            transfer: None,
            transfer_timeout: Duration::from_secs(10),
            transfer_hold: Duration::from_secs(60),
            filler_phrases: Vec::new(),
            filler_after: Duration::from_millis(1500),
            tool_timings: HashMap::new(),
            dtmf_send: false,
            dtmf_input_timeout: Duration::from_secs(2),
            turn_model_max_wait: None,
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
    /// The caller pressed keys.
    Dtmf {
        digits: String,
    },
    /// The transport performed (or failed) the transfer asked for by [`Action::Transfer`].
    TransferResult {
        ok: bool,
        error: Option<String>,
    },
    /// The far end confirmed it played an utterance to its end (a playback mark came back).
    PlaybackConfirmed {
        utterance: u64,
    },
    /// The turn model's verdict on the audio up to the last VAD stop.
    TurnPrediction {
        complete: bool,
    },
    /// The worker is stopping and cannot wait for the call's natural end (drain deadline): end
    /// it now as `error`, hanging up, with a `worker_shutdown` event.
    Shutdown,
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
    /// The last frame of this utterance has been released: transports with playback marks
    /// place one (its echo comes back as [`Input::PlaybackConfirmed`]); chunking transports flush.
    UtteranceDone {
        utterance: u64,
    },
    /// Run the turn model on the caller's audio so far; answer with [`Input::TurnPrediction`].
    PredictTurn,
    /// Perform the transport's transfer primitive, then report [`Input::TransferResult`].
    Transfer {
        destination: String,
        method: String,
        /// The target's `type` (`sip_uri`, `tel_uri`, `phone_number`, `extension`, `agent_queue`).
        kind: String,
        target: String,
        reason: String,
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
    /// Filler or a tool's pre-message while the bot thinks.
    Filler,
    /// A silence re-engagement prompt.
    Prompt,
    /// Voicemail message, transfer announcement, dead-air goodbye, DTMF tones: not interruptible.
    Final,
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
    /// When the LLM request this utterance speaks was made (responses only).
    llm_started_at: Option<Duration>,
    first_audio_at: Option<Duration>,
    words: Vec<WordTime>,
    /// Index into `record.latency` this utterance completes, for the first response audio.
    latency_sample: Option<usize>,
    interruptible: bool,
    /// [`Action::UtteranceDone`] was emitted.
    done_signalled: bool,
    /// The far end confirmed it played this utterance to its end.
    confirmed: bool,
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
            llm_started_at: None,
            first_audio_at: None,
            words: Vec::new(),
            latency_sample: None,
            interruptible: kind != UtteranceKind::Final,
            done_signalled: false,
            confirmed: false,
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
    filler_spoken: bool,
}

#[derive(Debug)]
struct ToolRound {
    assistant_text: Option<String>,
    calls: Vec<ToolCall>,
    results: Vec<Option<String>>,
    started_at: Duration,
    deadline: Duration,
    latency_sample: Option<usize>,
    /// Calls whose pre-message (or the filler) has been spoken.
    announced: Vec<bool>,
    filler_spoken: bool,
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
    /// The close was already postponed once because the words looked unfinished.
    unfinished_extended: bool,
    /// Waiting for the turn model's verdict before closing.
    awaiting_turn_model: bool,
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

/// Where a `transfer_call` stands.
#[derive(Debug)]
enum TransferState {
    Idle,
    /// The pre-transfer message is playing; the primitive follows once it has been heard.
    Announcing {
        call: ToolCall,
        resolved: ResolvedTransfer,
        reason: String,
    },
    /// [`Action::Transfer`] is out; waiting for [`Input::TransferResult`].
    InFlight {
        call: ToolCall,
        resolved: ResolvedTransfer,
        reason: String,
        deadline: Duration,
    },
    /// The transport took the caller; the bot is silent until the leg drops.
    Done {
        deadline: Duration,
    },
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
    /// Since when neither side has held the floor (silence timers).
    silence_since: Option<Duration>,
    reengage_attempts: u32,
    /// Bot audio paused by caller speech that has not (yet) become words.
    paused_since: Option<Duration>,
    transfer: TransferState,
    filler_next: usize,
    dtmf: String,
    dtmf_started: Option<Duration>,
    dtmf_deadline: Option<Duration>,
}

impl Conversation {
    pub fn new(cfg: EngineConfig) -> Self {
        let mut tools = vec![end_call_tool()];
        if cfg.voicemail_detection {
            tools.push(voicemail_tool());
        }
        if let Some(t) = &cfg.transfer {
            if transfer::transfer_available(&t.targets, &t.numbers, &t.transport) {
                tools.push(transfer_tool(t));
            }
        }
        if cfg.dtmf_send {
            tools.push(send_dtmf_tool());
        }
        let builtin = [END_CALL_TOOL, VOICEMAIL_TOOL, TRANSFER_TOOL, SEND_DTMF_TOOL];
        for t in &cfg.custom_tools {
            let t = normalise_tool(t);
            let name = t.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
            // A custom tool may not shadow a built-in one.
            if !builtin.contains(&name) {
                tools.push(t);
            }
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
            silence_since: None,
            reengage_attempts: 0,
            paused_since: None,
            transfer: TransferState::Idle,
            filler_next: 0,
            dtmf: String::new(),
            dtmf_started: None,
            dtmf_deadline: None,
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
            Input::Dtmf { digits } => self.on_dtmf(now, digits),
            Input::TransferResult { ok, error } => self.on_transfer_result(now, ok, error),
            Input::TurnPrediction { complete } => self.on_turn_prediction(now, complete),
            Input::Shutdown => {
                self.record.event("worker_shutdown", now, json!({}));
                self.end(now, DisconnectedBy::Error, true);
            }
            Input::PlaybackConfirmed { utterance } => {
                if let Some(u) = self.utterance_mut(utterance) {
                    u.confirmed = true;
                }
            }
        }
        self.pump(now);
        self.refresh_silence(now);
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
        if self.dtmf_deadline.is_some_and(|d| now >= d) {
            self.close_dtmf_turn(now);
        }
        if self.paused_since.is_some_and(|p| now >= p + self.cfg.false_interruption_timeout)
            && word_count(&self.user.text()) == 0
        {
            self.resume_after_false_interruption(now);
        }
        self.speak_fillers(now);
        match &self.transfer {
            TransferState::InFlight { deadline, .. } if now >= *deadline => {
                let error = format!("no confirmation within {} ms", self.cfg.transfer_timeout.as_millis());
                self.on_transfer_result(now, false, Some(error));
            }
            TransferState::Done { deadline } if now >= *deadline => {
                // The transport never dropped the leg: leave it to whoever has it now.
                self.end(now, DisconnectedBy::Bot, false);
                return;
            }
            _ => {}
        }
        if self.silence_deadline().is_some_and(|d| now >= d) {
            self.on_silence(now);
        }
        self.pump(now);
        self.refresh_silence(now);
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
        consider(self.dtmf_deadline);
        if self.paused_since.is_some() && word_count(&self.user.text()) == 0 {
            consider(self.paused_since.map(|p| p + self.cfg.false_interruption_timeout));
        }
        consider(self.filler_due());
        match &self.transfer {
            TransferState::InFlight { deadline, .. } | TransferState::Done { deadline } => consider(Some(*deadline)),
            _ => {}
        }
        consider(self.silence_deadline());
        for u in &self.utterances {
            if !u.cancelled && u.received == 0 {
                consider(u.text_sent_at.map(|t| t + self.cfg.tts_first_audio_timeout));
            }
        }
        if self.front_has_audio() && self.paused_since.is_none() {
            consider(Some(self.next_release_at()));
        }
        if self.acts_after_speech()
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
        self.llm.is_some()
            || self.tool_round.is_some()
            || self.utterances.iter().any(|u| !u.cancelled)
            || !matches!(self.transfer, TransferState::Idle)
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
        self.user.unfinished_extended = false;
        self.user.awaiting_turn_model = false;
        if self.user.started_at.is_none() {
            self.user.started_at = Some(now);
        }
        if self.cfg.pause_on_speech
            && self.paused_since.is_none()
            && self.playout.active
            && self.utterances.front().is_some_and(|u| u.interruptible && u.sent > 0)
            && !self.in_opening_guard(now)
        {
            // Stop releasing audio at once; words will decide between barge-in and resuming.
            self.paused_since = Some(now);
            self.record.event("bot_paused", now, Value::Null);
        }
    }

    fn resume_after_false_interruption(&mut self, now: Duration) {
        if let Some(since) = self.paused_since.take() {
            self.record.event("false_interruption", now, json!({"paused_ms": ms(now.saturating_sub(since))}));
        }
    }

    fn on_speech_stopped(&mut self, now: Duration) {
        self.vad_speaking = false;
        self.user.vad_stopped_at = Some(now);
        if let Some(max_wait) = self.cfg.turn_model_max_wait {
            // Smart turn: the model decides; the wait is bounded either way.
            self.user.awaiting_turn_model = true;
            self.user.final_deadline = Some(now + max_wait);
            self.actions.push_back(Action::PredictTurn);
            return;
        }
        self.close_at_speech_stop(now);
    }

    fn on_turn_prediction(&mut self, now: Duration, complete: bool) {
        if !self.user.awaiting_turn_model || self.vad_speaking {
            return;
        }
        self.record.event("turn_prediction", now, json!({"complete": complete}));
        if complete {
            self.user.awaiting_turn_model = false;
            self.close_at_speech_stop(now);
        }
        // Incomplete: keep listening until the caller goes on or the bounded wait ends.
    }

    /// VAD says the caller stopped (and the turn model, if any, agrees): close the turn now, or
    /// wait a bounded time for the STT to catch up.
    fn close_at_speech_stop(&mut self, now: Duration) {
        if self.user.is_empty() {
            // Speech with no words yet: wait a bounded time for STT to catch up.
            self.user.final_deadline = Some(now + self.cfg.stt_final_wait);
            return;
        }
        if self.user.interim.trim().is_empty() || self.user.end_signalled {
            self.try_close_user_turn(now);
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
        if final_in_hand
            && !self.vad_speaking
            && !self.user.awaiting_turn_model
            && (self.user.vad_stopped_at.is_some() || speech_final)
        {
            self.try_close_user_turn(now);
        }
    }

    fn on_utterance_end(&mut self, now: Duration) {
        self.user.end_signalled = true;
        if !self.vad_speaking && !self.user.is_empty() && !self.user.awaiting_turn_model {
            self.try_close_user_turn(now);
        }
    }

    /// Close the caller's turn — unless the words so far look like a number or an e-mail being
    /// spelled out, in which case wait (once per pause) for the caller to go on.
    fn try_close_user_turn(&mut self, now: Duration) {
        if !self.user.unfinished_extended
            && !self.cfg.unfinished_wait.is_zero()
            && behaviour::looks_unfinished(&self.user.text())
        {
            self.user.unfinished_extended = true;
            self.user.final_deadline = Some(now + self.cfg.unfinished_wait);
            return;
        }
        self.close_user_turn(now);
    }

    fn on_dtmf(&mut self, now: Duration, digits: String) {
        let digits: String = digits.chars().filter(|c| dtmf::is_dtmf(*c)).collect();
        if digits.is_empty() {
            return;
        }
        self.record.event("dtmf", now, json!({"digits": digits}));
        if matches!(self.transfer, TransferState::Idle)
            && self.utterances.front().is_some_and(|u| u.interruptible && !u.cancelled)
            && !self.in_opening_guard(now)
        {
            // A keypress is deliberate: it interrupts like a high-intent phrase.
            self.interrupt(now, 0);
        }
        self.dtmf_started.get_or_insert(now);
        self.dtmf.push_str(&digits);
        if self.dtmf.ends_with('#') || self.dtmf.len() >= 32 {
            self.close_dtmf_turn(now);
        } else {
            self.dtmf_deadline = Some(now + self.cfg.dtmf_input_timeout);
        }
    }

    fn close_dtmf_turn(&mut self, now: Duration) {
        self.dtmf_deadline = None;
        let digits = std::mem::take(&mut self.dtmf);
        let started = self.dtmf_started.take().unwrap_or(now);
        if digits.is_empty() || !matches!(self.transfer, TransferState::Idle) {
            return;
        }
        let text = format!("[DTMF] {digits}");
        self.take_turn(now, text, started, None);
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
            let closing = content
                .as_deref()
                .is_some_and(|t| self.cfg.closure_phrases.occurs_in(&behaviour::tokens(behaviour::last_sentence(t))));
            self.messages.push(ChatMessage::Assistant { content, tool_calls: vec![] });
            self.discard_if_silent(llm.utterance);
            if closing {
                self.record.event("closure_phrase", now, Value::Null);
                self.end_after_speech = Some(DisconnectedBy::Bot);
                self.after_playout_change(now);
            }
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
        if let Some(vm) = calls.iter().find(|c| c.name == VOICEMAIL_TOOL) {
            self.record.event("voicemail_detected", now, Value::Null);
            self.messages.push(ChatMessage::Assistant { content, tool_calls: vec![vm.clone()] });
            let message = self.cfg.voicemail_message.trim().to_string();
            if !message.is_empty() {
                let id = self.new_utterance(UtteranceKind::Final);
                self.speak(now, id, &message);
                self.flush(id);
            }
            self.end_after_speech = Some(DisconnectedBy::Voicemail);
            self.after_playout_change(now);
            return;
        }
        if let Some(i) = calls.iter().position(|c| c.name == TRANSFER_TOOL) {
            self.start_transfer(now, content, calls, i);
            return;
        }
        let n = calls.len();
        let mut results = vec![None; n];
        let mut timeout = Duration::ZERO;
        for (i, c) in calls.iter().enumerate() {
            if c.name == SEND_DTMF_TOOL && self.cfg.dtmf_send {
                results[i] = Some(self.send_dtmf(now, &c.arguments));
                continue;
            }
            timeout = timeout.max(self.cfg.tool_timings.get(&c.name).map_or(self.cfg.tool_timeout, |t| t.timeout));
            self.actions.push_back(Action::RunTool {
                call_id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            });
        }
        self.tool_round = Some(ToolRound {
            assistant_text: content,
            calls,
            results,
            started_at: now,
            deadline: now + timeout,
            latency_sample: llm.latency_sample,
            announced: vec![false; n],
            filler_spoken: false,
        });
        self.finish_tool_round_if_complete(now);
    }

    /// `send_dtmf(digits)`: queue in-band tones (not interruptible) and tell the LLM.
    fn send_dtmf(&mut self, now: Duration, arguments: &str) -> String {
        let digits = serde_json::from_str::<Value>(arguments)
            .ok()
            .and_then(|v| v.get("digits").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        let digits: String = digits.chars().filter(|c| dtmf::is_dtmf(*c)).take(32).collect();
        if digits.is_empty() {
            return "error: no valid DTMF digits (0-9, *, #, A-D)".into();
        }
        self.record.event("dtmf_sent", now, json!({"digits": digits}));
        let id = self.new_utterance(UtteranceKind::Final);
        let pcm = dtmf::tones(&digits, self.cfg.sample_rate);
        if let Some(u) = self.utterance_mut(id) {
            u.received = pcm.len();
            u.audio.extend(pcm);
            u.flushed = true;
            u.tts_done = true;
        }
        format!("sent DTMF {digits}")
    }

    // ----- transfers -----

    fn start_transfer(&mut self, now: Duration, content: Option<String>, calls: Vec<ToolCall>, idx: usize) {
        let call = calls[idx].clone();
        let args = serde_json::from_str::<Value>(&call.arguments).unwrap_or(Value::Null);
        let reason = args.get("reason").and_then(Value::as_str).unwrap_or_default().to_string();
        let requested = args.get("target").and_then(Value::as_str).map(str::to_string);
        let resolved = match &self.cfg.transfer {
            Some(o) => transfer::resolve(&o.targets, &o.numbers, &o.transport, requested.as_deref()),
            None => Err(transfer::TransferTargetError::NotSupported),
        };
        self.messages.push(ChatMessage::Assistant { content, tool_calls: calls.clone() });
        for c in calls.iter().filter(|c| c.id != call.id) {
            self.messages.push(ChatMessage::Tool {
                tool_call_id: c.id.clone(),
                content: "error: not run because the call is being transferred".into(),
            });
        }
        match resolved {
            Err(e) => {
                self.record.event(
                    "transfer_failed",
                    now,
                    json!({"reason": reason, "target": requested, "error": e.to_string()}),
                );
                self.messages.push(ChatMessage::Tool {
                    tool_call_id: call.id.clone(),
                    content: format!("error: TransferTargetError: {e}"),
                });
                self.start_llm(now, None);
            }
            Ok(resolved) => {
                let message = self.cfg.transfer.as_ref().map(|o| o.pre_transfer_message.trim().to_string());
                if let Some(m) = message.filter(|m| !m.is_empty()) {
                    let id = self.new_utterance(UtteranceKind::Final);
                    self.speak(now, id, &m);
                    self.flush(id);
                }
                self.transfer = TransferState::Announcing { call, resolved, reason };
                self.after_playout_change(now);
            }
        }
    }

    fn on_transfer_result(&mut self, now: Duration, ok: bool, error: Option<String>) {
        let TransferState::InFlight { call, resolved, reason, .. } =
            std::mem::replace(&mut self.transfer, TransferState::Idle)
        else {
            return;
        };
        let mut data = json!({
            "destination": resolved.destination,
            "target": resolved.target,
            "reason": reason,
            "method": resolved.method,
        });
        if ok {
            self.record.event("transfer_sent", now, data);
            self.messages.push(ChatMessage::Tool {
                tool_call_id: call.id,
                content: format!("ok: the caller is being transferred to {}", resolved.target),
            });
            if resolved.method == transfer::METHOD_AGENT_DESK {
                // The handoff is durably enqueued: the conversation is over, but the caller
                // stays connected (the driver's hold worker takes over until an agent joins).
                self.end(now, DisconnectedBy::TransferToAgent, false);
                return;
            }
            self.transfer = TransferState::Done { deadline: now + self.cfg.transfer_hold };
            return;
        }
        let error = error.unwrap_or_else(|| "unknown".into());
        data["error"] = Value::String(error.clone());
        self.record.event("transfer_failed", now, data);
        self.messages
            .push(ChatMessage::Tool { tool_call_id: call.id, content: format!("error: the transfer failed: {error}") });
        self.start_llm(now, None);
    }

    /// Once the pre-transfer message has been heard, perform the transfer.
    fn transfer_when_announced(&mut self, now: Duration) {
        if !self.utterances.is_empty() || self.llm.is_some() || self.tool_round.is_some() {
            return;
        }
        if !matches!(self.transfer, TransferState::Announcing { .. }) {
            return;
        }
        let TransferState::Announcing { call, resolved, reason } =
            std::mem::replace(&mut self.transfer, TransferState::Idle)
        else {
            return;
        };
        self.actions.push_back(Action::Transfer {
            destination: resolved.destination.clone(),
            method: resolved.method.clone(),
            kind: resolved.kind.clone(),
            target: resolved.target.clone(),
            reason: reason.clone(),
        });
        self.transfer = TransferState::InFlight { call, resolved, reason, deadline: now + self.cfg.transfer_timeout };
    }

    // ----- silence -----

    /// Is nobody holding the floor? Then the silence clock runs.
    fn refresh_silence(&mut self, now: Duration) {
        let idle = self.started
            && self.ended.is_none()
            && !self.bot_active()
            && !self.vad_speaking
            && self.user.started_at.is_none()
            && self.user.is_empty()
            && self.dtmf.is_empty()
            && self.end_after_speech.is_none();
        if idle {
            self.silence_since.get_or_insert(now);
        } else {
            self.silence_since = None;
        }
    }

    fn silence_deadline(&self) -> Option<Duration> {
        let since = self.silence_since?;
        if let Some(re) = &self.cfg.re_engagement {
            if self.reengage_attempts < re.max_attempts {
                return Some(since + re.after);
            }
        }
        let limit = if self.record.customer_spoke { self.cfg.dead_air_timeout } else { self.cfg.rnr_timeout };
        (!limit.is_zero()).then_some(since + limit)
    }

    fn on_silence(&mut self, now: Duration) {
        let silent_ms = self.silence_since.map(|s| ms(now.saturating_sub(s)));
        self.silence_since = None;
        if let Some(re) = self.cfg.re_engagement.clone() {
            if self.reengage_attempts < re.max_attempts {
                let i = (self.reengage_attempts as usize).min(re.messages.len().saturating_sub(1));
                let Some(message) = re.messages.get(i).cloned() else { return };
                self.reengage_attempts += 1;
                self.record.event(
                    "re_engagement",
                    now,
                    json!({"attempt": self.reengage_attempts, "message": message, "silence_ms": silent_ms}),
                );
                let id = self.new_utterance(UtteranceKind::Prompt);
                self.speak(now, id, &message);
                self.flush(id);
                self.messages.push(ChatMessage::Assistant { content: Some(message), tool_calls: vec![] });
                return;
            }
        }
        if self.record.customer_spoke {
            self.record.event("dead_air", now, json!({"silence_ms": silent_ms}));
            let message = self.cfg.dead_air_message.trim().to_string();
            if message.is_empty() {
                self.end(now, DisconnectedBy::Bot, true);
            } else {
                let id = self.new_utterance(UtteranceKind::Final);
                self.speak(now, id, &message);
                self.flush(id);
                self.end_after_speech = Some(DisconnectedBy::Bot);
            }
        } else {
            self.record.event("no_response", now, json!({"silence_ms": silent_ms}));
            self.end(now, DisconnectedBy::Rnr, true);
        }
    }

    // ----- fillers -----

    fn filler_due(&self) -> Option<Duration> {
        let mut due: Option<Duration> = None;
        let mut consider = |d: Duration| due = Some(due.map_or(d, |x| x.min(d)));
        let fillers = !self.cfg.filler_phrases.is_empty();
        if let Some(llm) = &self.llm {
            if fillers && llm.first_token_at.is_none() && !llm.filler_spoken {
                consider(llm.started_at + self.cfg.filler_after);
            }
        }
        if let Some(r) = &self.tool_round {
            for (i, c) in r.calls.iter().enumerate() {
                if r.results[i].is_none() && !r.announced[i] {
                    if let Some((_, after)) = self.cfg.tool_timings.get(&c.name).and_then(|t| t.pre_message.as_ref()) {
                        consider(r.started_at + *after);
                    }
                }
            }
            if fillers && !r.filler_spoken && r.results.iter().any(Option::is_none) {
                consider(r.started_at + self.cfg.filler_after);
            }
        }
        due
    }

    fn next_filler(&mut self) -> String {
        let phrase = self.cfg.filler_phrases[self.filler_next % self.cfg.filler_phrases.len()].clone();
        self.filler_next += 1;
        phrase
    }

    /// Something audible is queued or playing (no dead air to cover).
    fn bot_audible(&self) -> bool {
        self.utterances.iter().any(|u| !u.cancelled && (!u.text.is_empty() || !u.audio.is_empty()))
    }

    /// Say a tool's pre-message or the filler when the LLM or a tool keeps the caller waiting.
    fn speak_fillers(&mut self, now: Duration) {
        if self.filler_due().is_none_or(|d| now < d) {
            return;
        }
        let fillers = !self.cfg.filler_phrases.is_empty();
        let llm_due = self.llm.as_ref().is_some_and(|l| {
            fillers && l.first_token_at.is_none() && !l.filler_spoken && now >= l.started_at + self.cfg.filler_after
        });
        if llm_due {
            let audible = self.bot_audible();
            let llm = self.llm.as_mut().expect("checked");
            llm.filler_spoken = true;
            let before = llm.utterance;
            if !audible {
                let phrase = self.next_filler();
                self.record.event("filler", now, json!({"text": phrase, "waiting_for": "llm"}));
                let id = self.insert_utterance_before(before, UtteranceKind::Filler);
                self.speak(now, id, &phrase);
                self.flush(id);
            }
        }
        let Some(round) = self.tool_round.as_ref() else { return };
        let mut to_say = Vec::new();
        let mut announced = Vec::new();
        for (i, c) in round.calls.iter().enumerate() {
            if round.results[i].is_some() || round.announced[i] {
                continue;
            }
            if let Some((text, after)) = self.cfg.tool_timings.get(&c.name).and_then(|t| t.pre_message.clone()) {
                if now >= round.started_at + after {
                    announced.push(i);
                    to_say.push((text, c.name.clone()));
                }
            }
        }
        let filler_due = fillers
            && !round.filler_spoken
            && to_say.is_empty()
            && round.results.iter().any(Option::is_none)
            && now >= round.started_at + self.cfg.filler_after;
        let audible = self.bot_audible();
        let round = self.tool_round.as_mut().expect("checked");
        for i in announced {
            round.announced[i] = true;
        }
        if !to_say.is_empty() || filler_due {
            round.filler_spoken = true;
        }
        if audible {
            return;
        }
        if filler_due {
            let phrase = self.next_filler();
            to_say.push((phrase, String::new()));
        }
        for (text, tool) in to_say {
            let kind = if tool.is_empty() { "filler" } else { "tool_pre_message" };
            self.record.event(kind, now, json!({"text": text, "tool": tool}));
            let id = self.new_utterance(UtteranceKind::Filler);
            self.speak(now, id, &text);
            self.flush(id);
        }
    }

    fn insert_utterance_before(&mut self, before: u64, kind: UtteranceKind) -> u64 {
        let id = self.fresh_id();
        let pos = self.utterances.iter().position(|u| u.id == before).unwrap_or(self.utterances.len());
        self.utterances.insert(pos, Utterance::new(id, kind));
        id
    }

    fn on_tool_result(&mut self, now: Duration, call_id: String, content: String, is_error: bool) {
        let Some(round) = self.tool_round.as_mut() else { return };
        let Some(i) = round.calls.iter().position(|c| c.id == call_id) else { return };
        if round.results[i].is_some() {
            return;
        }
        let name = round.calls[i].name.clone();
        let elapsed_ms = ms(now.saturating_sub(round.started_at));
        round.results[i] = Some(content.clone());
        let mut preview: String = content.chars().take(500).collect();
        if preview.len() < content.len() {
            preview.push('…');
        }
        self.record.event(
            "custom_tool_result",
            now,
            json!({"tool_call_id": call_id, "name": name, "is_error": is_error, "result": preview, "elapsed_ms": elapsed_ms}),
        );
        self.finish_tool_round_if_complete(now);
    }

    fn finish_tool_round_if_complete(&mut self, now: Duration) {
        if self.tool_round.as_ref().is_none_or(|r| r.results.iter().any(Option::is_none)) {
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
    ///
    /// Backchannels ("haan", "hmm", "okay") never interrupt; high-intent phrases ("wrong number",
    /// "already paid") interrupt at once, past the word minimum and the opening guard. Nothing
    /// interrupts a voicemail message, a transfer announcement or DTMF tones.
    fn maybe_interrupt(&mut self, now: Duration) {
        if !self.bot_active() || !matches!(self.transfer, TransferState::Idle) {
            return;
        }
        if self.utterances.front().is_some_and(|u| !u.interruptible && !u.cancelled) {
            return;
        }
        let text = self.user.text();
        let tokens = behaviour::tokens(&text);
        let words = word_count(&text);
        let high_intent = self.cfg.high_intent.occurs_in(&tokens);
        if !high_intent {
            if self.cfg.backchannels.covers(&tokens) || words < self.cfg.min_words_interruption.max(1) as usize {
                return;
            }
            if self.in_opening_guard(now) {
                return;
            }
        }
        if high_intent {
            self.record.event("high_intent", now, json!({"text": text}));
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
        self.paused_since = None;
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
                let heard = if u.confirmed { u.sent } else { u.sent.saturating_sub(heard_ahead) };
                let text = if u.confirmed && u.finished_playing() {
                    u.text.clone()
                } else {
                    heard_text(&u, heard, self.cfg.sample_rate)
                };
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
        if !matches!(self.transfer, TransferState::Idle) {
            // The caller is being handed over; the bot no longer answers.
            self.record.event("ignored_speech", now, json!({"text": text, "why": "transfer"}));
            return;
        }
        if self.end_after_speech.is_some() && self.utterances.iter().any(|u| !u.cancelled && !u.interruptible) {
            // A voicemail message or a last goodbye is playing; the call ends after it.
            self.record.event("ignored_speech", now, json!({"text": text, "why": "ending"}));
            return;
        }
        let words = word_count(&text);
        let tokens = behaviour::tokens(&text);
        let high_intent = self.cfg.high_intent.occurs_in(&tokens);
        if self.bot_active()
            && !high_intent
            && (words < self.cfg.min_words_interruption.max(1) as usize || self.cfg.backchannels.covers(&tokens))
        {
            // A short utterance or a backchannel while the bot holds the floor is not a turn.
            self.record.event("ignored_speech", now, json!({"text": text}));
            self.resume_after_false_interruption(now);
            return;
        }
        self.take_turn(now, text, turn.started_at.unwrap_or(now), turn.vad_stopped_at);
    }

    /// The caller's words (or keypresses) become a turn the LLM answers.
    fn take_turn(&mut self, now: Duration, text: String, started: Duration, vad_stopped_at: Option<Duration>) {
        self.paused_since = None;
        self.reengage_attempts = 0;
        if self.bot_active() {
            // Enough words but the interruption was blocked (opening guard): the caller still
            // gets an answer once the bot finishes; cancel only pending thinking.
            if let Some(llm) = self.llm.take() {
                self.actions.push_back(Action::CancelLlm { turn: llm.id });
            }
        }
        self.record.customer_spoke = true;
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
        let vad_stop = vad_stopped_at.unwrap_or(now);
        let speech_end = match vad_stopped_at {
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
            u.llm_started_at = Some(now);
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
            filler_spoken: false,
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
            if let (Some(i), Some(asked)) = (u.latency_sample, u.llm_started_at) {
                self.record.latency[i].llm_first_sentence_ms = Some(ms(now.saturating_sub(asked)));
            }
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

    /// When the next batch of frames goes out: once the last frame of the batch is due. A
    /// spurt's first frames go at once.
    fn next_release_at(&self) -> Duration {
        if !self.playout.active {
            return Duration::ZERO;
        }
        let extra = self.cfg.frame_samples() * self.cfg.playout_batch.max(1).saturating_sub(1) as usize;
        self.next_frame_due() + self.frame_duration(extra)
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
        let mut released = false;
        loop {
            if !self.front_has_audio() || self.paused_since.is_some() {
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
            // A batch starts once its last frame is due; then every due frame goes.
            let gate = if released { self.next_frame_due() } else { self.next_release_at() };
            if gate > now {
                break;
            }
            released = true;
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
            if front.sent > 0 && !front.done_signalled {
                let id = front.id;
                self.actions.push_back(Action::UtteranceDone { utterance: id });
                if let Some(u) = self.utterances.front_mut() {
                    u.done_signalled = true;
                }
            }
            // Played in full — but the tail is only heard once real time catches up.
            if self.samples_ahead(now) > 0 && self.utterances.len() == 1 && self.acts_after_speech() {
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
                    return;
                }
            }
            self.transfer_when_announced(now);
        }
    }

    /// Something (hang-up, transfer) must wait until the caller has heard the last word.
    fn acts_after_speech(&self) -> bool {
        self.end_after_speech.is_some() || matches!(self.transfer, TransferState::Announcing { .. })
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
                let heard = if u.confirmed { u.sent } else { u.sent.saturating_sub(ahead) };
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

fn voicemail_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": VOICEMAIL_TOOL,
            "description": "Call this when you reach an answering machine or voicemail greeting instead of a person.",
            "parameters": {"type": "object", "properties": {}, "required": []}
        }
    })
}

fn transfer_tool(opts: &TransferOptions) -> Value {
    let mut names: Vec<String> =
        transfer::usable_targets(&opts.targets, &opts.transport).iter().map(|t| t.label.clone()).collect();
    names.extend(opts.numbers.keys().cloned());
    names.retain(|n| !n.trim().is_empty());
    json!({
        "type": "function",
        "function": {
            "name": TRANSFER_TOOL,
            "description": format!(
                "Transfer the caller to a human or another department. Available targets: {}.",
                if names.is_empty() { "the default".to_string() } else { names.join(", ") }
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "Why the caller is being transferred."},
                    "target": {"type": "string", "description": "Target label; omit for the default."}
                },
                "required": ["reason"]
            }
        }
    })
}

fn send_dtmf_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": SEND_DTMF_TOOL,
            "description": "Press keys on the phone keypad (for IVR menus).",
            "parameters": {
                "type": "object",
                "properties": {"digits": {"type": "string", "description": "Keys to press: 0-9, *, #."}},
                "required": ["digits"]
            }
        }
    })
}

/// Accept both `{"type":"function","function":{...}}` and a bare `{"name":..,"parameters":..}`,
/// keeping only what the LLM may see (an HTTP binding's URL and headers stay private).
fn normalise_tool(t: &Value) -> Value {
    let function = match t.get("function") {
        Some(f) => f.clone(),
        None => {
            let mut f = t.clone();
            if let Some(o) = f.as_object_mut() {
                o.remove("http");
                o.remove("type");
            }
            f
        }
    };
    json!({"type": "function", "function": function})
}

#[cfg(test)]
mod tests;
