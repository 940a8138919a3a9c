//! The hold worker (contract §6.7 step 2), sans-IO: keeps the caller engaged after an Agent
//! Desk enqueue until an agent joins, and then stays quiet until the call is over.
//!
//! Like the conversation engine it owns no sockets, no clock and no tasks. Time is a
//! [`Duration`] since the call started; the driver feeds inputs and timer expiries, performs
//! actions and pulls paced audio frames:
//!
//! ```text
//! hold.handle(now, HoldInput::Start);
//! loop {
//!     while let Some(action) = hold.poll_action() { perform(action) }   // Speak, StopAudio, Event, End
//!     while let Some(frame) = hold.poll_frame(now) { publish(frame) }   // 20 ms message or music frames
//!     if hold.is_ended() { break }
//!     select! { input = next_input() => hold.handle(now, input),       // incl. the message's TTS audio
//!               _ = sleep_until(hold.poll_timeout()) => hold.handle_timeout(now) }
//! }
//! ```
//!
//! Behaviour:
//! - `Start`: the hold message (if any) is spoken first ([`HoldAction::Speak`]): the driver
//!   forwards its synthesised audio ([`HoldInput::MessageAudio`], then
//!   [`HoldInput::MessageSynthDone`]) and the worker plays it out; hold music starts once the
//!   message has played (or the driver reports [`HoldInput::MessageDone`], or `message_timeout`
//!   passes), and the message is repeated as a reminder every `reminder_every` of music. Music
//!   pauses while a message is spoken and resumes where it left off.
//! - Message and music frames are released in real time with a small lead (`playout_lead`) by
//!   [`cxb_audio::pacing::Pacer`], the pacing the conversation engine uses for bot speech, so
//!   stopping is immediate: at most the lead is queued in the transport.
//! - `AgentJoined`: [`HoldAction::StopAudio`] at once; no frame is released after it. The worker
//!   then waits quietly for the end of the call, at most `after_agent_max`. When every agent
//!   has left (and none rejoined within `agent_left_grace`) the call ends as
//!   [`HoldOutcome::AgentFinished`].
//! - Without an agent the wait is bounded by `max_hold` ([`HoldOutcome::HoldTimeout`]).
//! - After [`HoldAction::End`] nothing else is produced.
//!
//! Every call of the state machine is O(1) apart from frame copies; no input can panic it.

mod audio;

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use cxb_audio::pacing::Pacer;
use serde_json::{json, Map, Value};

pub use audio::{HoldAudio, HoldError, DEFAULT_GAIN, MAX_CHANNELS, MAX_FILE_DURATION, MAX_GAIN};

/// Duration of one hold-music frame.
pub const FRAME: Duration = Duration::from_millis(20);

/// Longest hold message buffered (the TTS sends faster than real time); audio beyond it is
/// dropped.
pub const MAX_MESSAGE: Duration = Duration::from_secs(60);

/// Distinct agent identities tracked at once; more joins are counted but not remembered
/// (bounds memory against a misbehaving room).
pub const MAX_AGENTS: usize = 32;

/// Hold worker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldConfig {
    /// Spoken first, then repeated as a reminder. `None` or blank: music only.
    pub message: Option<String>,
    /// Music time between reminders (default 45 s; zero = never repeat).
    pub reminder_every: Duration,
    /// Longest wait for an agent, from `Start` (default 20 min).
    pub max_hold: Duration,
    /// Longest call once an agent has joined (default 2 h).
    pub after_agent_max: Duration,
    /// Longest wait for `MessageDone` after a `Speak` (default 60 s). A TTS failure must not
    /// leave the caller in silence: the music resumes.
    pub message_timeout: Duration,
    /// After the last agent leaves, how long a rejoin (an agent's reconnect) keeps the call
    /// (default 10 s; zero = end at once).
    pub agent_left_grace: Duration,
    /// How far ahead of real time music frames are released (default 60 ms).
    pub playout_lead: Duration,
}

impl Default for HoldConfig {
    fn default() -> Self {
        Self {
            message: None,
            reminder_every: Duration::from_secs(45),
            max_hold: Duration::from_secs(20 * 60),
            after_agent_max: Duration::from_secs(2 * 3600),
            message_timeout: Duration::from_secs(60),
            agent_left_grace: Duration::from_secs(10),
            playout_lead: Duration::from_millis(60),
        }
    }
}

/// What the driver tells the hold worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldInput {
    /// The enqueue is persisted: start holding.
    Start,
    /// Synthesised audio of the last [`HoldAction::Speak`], at the hold audio's rate; the worker
    /// plays it out through [`Hold::poll_frame`].
    MessageAudio(Vec<i16>),
    /// The TTS sent all of the last [`HoldAction::Speak`]: the music resumes once it has played.
    MessageSynthDone,
    /// The last [`HoldAction::Speak`] is over now (played elsewhere, or it cannot be spoken):
    /// what is buffered of it is dropped and the music resumes.
    MessageDone,
    AgentJoined {
        identity: String,
    },
    AgentLeft {
        identity: String,
    },
    /// The customer left the room (hung up).
    CustomerLeft {
        reason: String,
    },
    RoomClosed {
        reason: String,
    },
    /// The worker or CXB API wants the call over (drain, policy loop).
    EndRequested {
        reason: String,
    },
}

/// Why the hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldOutcome {
    CustomerLeft,
    RoomClosed,
    /// `max_hold` without an agent, or `after_agent_max` with one.
    HoldTimeout,
    EndRequested,
    /// Every agent left the room.
    AgentFinished,
}

impl HoldOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldOutcome::CustomerLeft => "customer_left",
            HoldOutcome::RoomClosed => "room_closed",
            HoldOutcome::HoldTimeout => "hold_timeout",
            HoldOutcome::EndRequested => "end_requested",
            HoldOutcome::AgentFinished => "agent_finished",
        }
    }
}

impl std::fmt::Display for HoldOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum HoldAction {
    /// Synthesise this text (TTS) and feed its audio back ([`HoldInput::MessageAudio`], then
    /// [`HoldInput::MessageSynthDone`]), or [`HoldInput::MessageDone`] when it cannot be spoken.
    Speak { text: String },
    /// Stop all hold audio now: drop queued music frames and cancel any hold message in TTS.
    StopAudio,
    /// For the Agent Desk events update (`type` = `kind`); `at` is call time.
    Event { kind: &'static str, at: Duration, data: Map<String, Value> },
    /// The hold is over; nothing follows this action.
    End {
        outcome: HoldOutcome,
        /// Free text from the input that ended it, or the limit that was reached.
        reason: String,
        at: Duration,
        /// Time on hold: until the first agent joined, or until the end when none did.
        hold: Duration,
        agent_joined: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Holding,
    Agent,
    Ended,
}

/// A hold message being spoken: its audio comes from the driver's TTS, faster than real time.
#[derive(Debug)]
struct Speech {
    since: Duration,
    audio: VecDeque<i16>,
    /// The TTS sent everything: once `audio` has played, the message is over.
    synth_done: bool,
}

impl Speech {
    fn new(since: Duration) -> Speech {
        Speech { since, audio: VecDeque::new(), synth_done: false }
    }

    fn played_out(&self) -> bool {
        self.synth_done && self.audio.is_empty()
    }

    /// A whole frame is buffered, or the last part of the message (padded with silence).
    fn frame_ready(&self, frame_samples: usize) -> bool {
        self.audio.len() >= frame_samples || (self.synth_done && !self.audio.is_empty())
    }

    fn fill(&mut self, out: &mut [i16]) {
        let n = out.len().min(self.audio.len());
        for (o, s) in out.iter_mut().zip(self.audio.drain(..n)) {
            *o = s;
        }
        out[n..].fill(0);
    }
}

/// The hold worker for one call.
#[derive(Debug)]
pub struct Hold {
    cfg: HoldConfig,
    audio: HoldAudio,
    phase: Phase,
    last_now: Duration,
    started_at: Duration,
    /// Holding: a message is being spoken.
    speaking: Option<Speech>,
    /// Holding: music is playing.
    music: bool,
    /// Real-time pacing of the frames released (message and music alike).
    pacer: Pacer,
    next_reminder: Option<Duration>,
    messages: u32,
    /// Loop position of the music, kept across pauses.
    pos: usize,
    frame: Vec<i16>,
    agents: BTreeSet<String>,
    agent_joins: u64,
    agent_joined_at: Option<Duration>,
    agents_gone_since: Option<Duration>,
    actions: VecDeque<HoldAction>,
    outcome: Option<HoldOutcome>,
}

impl Hold {
    pub fn new(cfg: HoldConfig, audio: HoldAudio) -> Hold {
        let frame = vec![0; audio.frame_samples()];
        let pacer = Pacer::new(audio.rate(), cfg.playout_lead, 1);
        Hold {
            cfg,
            audio,
            phase: Phase::Idle,
            last_now: Duration::ZERO,
            started_at: Duration::ZERO,
            speaking: None,
            music: false,
            pacer,
            next_reminder: None,
            messages: 0,
            pos: 0,
            frame,
            agents: BTreeSet::new(),
            agent_joins: 0,
            agent_joined_at: None,
            agents_gone_since: None,
            actions: VecDeque::new(),
            outcome: None,
        }
    }

    /// Feed one input at call time `now`. Timers due by `now` fire first, so a late input
    /// cannot undo a limit that already passed. Time never runs backwards: an earlier `now`
    /// than seen before counts as the latest one.
    pub fn handle(&mut self, now: Duration, input: HoldInput) {
        let now = self.clock(now);
        self.fire_timers(now);
        if self.phase == Phase::Ended {
            return;
        }
        match input {
            HoldInput::Start => {
                if self.phase == Phase::Idle {
                    self.start(now);
                }
            }
            HoldInput::MessageAudio(pcm) => {
                let max = self.max_message_samples();
                if let Some(speech) = self.speaking.as_mut() {
                    let room = max.saturating_sub(speech.audio.len());
                    speech.audio.extend(pcm.iter().take(room));
                }
            }
            HoldInput::MessageSynthDone => {
                if let Some(speech) = self.speaking.as_mut() {
                    speech.synth_done = true;
                }
                self.settle_message(now);
            }
            HoldInput::MessageDone => {
                if self.phase == Phase::Holding && self.speaking.is_some() {
                    self.message_finished(now);
                }
            }
            HoldInput::AgentJoined { identity } => self.on_agent_joined(now, identity),
            HoldInput::AgentLeft { identity } => self.on_agent_left(now, identity),
            HoldInput::CustomerLeft { reason } => self.end(now, HoldOutcome::CustomerLeft, reason),
            HoldInput::RoomClosed { reason } => self.end(now, HoldOutcome::RoomClosed, reason),
            HoldInput::EndRequested { reason } => self.end(now, HoldOutcome::EndRequested, reason),
        }
    }

    /// Advance timers to `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        let now = self.clock(now);
        self.fire_timers(now);
    }

    /// The next action to perform, if any.
    pub fn poll_action(&mut self) -> Option<HoldAction> {
        self.actions.pop_front()
    }

    /// The next 20 ms frame (hold message or music) if it is due by `now + playout_lead`. Call
    /// until `None`. After an underrun (the driver woke late) pacing restarts from `now` instead
    /// of bursting the backlog, which would only pile up in the transport.
    pub fn poll_frame(&mut self, now: Duration) -> Option<&[i16]> {
        if self.phase != Phase::Holding {
            return None;
        }
        let now = self.clock(now);
        self.settle_message(now);
        if !self.frame_ready() || !self.pacer.may_release(now, true) {
            return None;
        }
        match self.speaking.as_mut() {
            Some(speech) => speech.fill(&mut self.frame),
            None => self.audio.fill(&mut self.pos, &mut self.frame),
        }
        self.pacer.released(self.frame.len());
        Some(&self.frame)
    }

    /// When [`Hold::handle_timeout`] (or [`Hold::poll_frame`]) must next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let candidates: [Option<Duration>; 4] = match self.phase {
            Phase::Idle | Phase::Ended => return None,
            Phase::Holding => [
                Some(self.hold_deadline()),
                self.speaking.as_ref().map(|s| s.since.saturating_add(self.cfg.message_timeout)),
                self.next_reminder,
                self.next_frame_at(),
            ],
            Phase::Agent => [self.agent_deadline(), self.grace_deadline(), None, None],
        };
        candidates.into_iter().flatten().min()
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    pub fn outcome(&self) -> Option<HoldOutcome> {
        self.outcome
    }

    /// Is the caller hearing (or about to hear) hold audio: music or a hold message?
    pub fn audio_active(&self) -> bool {
        self.phase == Phase::Holding && (self.music || self.speaking.is_some())
    }

    /// Has an agent joined at any point?
    pub fn agent_joined(&self) -> bool {
        self.agent_joined_at.is_some()
    }

    /// Agents currently in the room.
    pub fn agents(&self) -> impl Iterator<Item = &str> {
        self.agents.iter().map(String::as_str)
    }

    pub fn config(&self) -> &HoldConfig {
        &self.cfg
    }

    fn clock(&mut self, now: Duration) -> Duration {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    fn message(&self) -> Option<&str> {
        self.cfg.message.as_deref().map(str::trim).filter(|m| !m.is_empty())
    }

    fn max_message_samples(&self) -> usize {
        self.audio.rate() as usize * MAX_MESSAGE.as_secs() as usize
    }

    /// Is there a frame to release (pacing aside)? A played-out message counts: polling ends it.
    fn frame_ready(&self) -> bool {
        match &self.speaking {
            Some(speech) => speech.frame_ready(self.frame.len()),
            None => self.music,
        }
    }

    /// When the next frame may go: at once when the stream is idle, else when the pacer says.
    fn next_frame_at(&self) -> Option<Duration> {
        let due = self.speaking.as_ref().is_some_and(Speech::played_out) || self.frame_ready();
        due.then(|| if self.pacer.is_active() { self.pacer.next_release_at() } else { self.last_now })
    }

    /// Stop releasing: the driver drops what is queued towards the caller.
    fn stop_audio(&mut self) {
        self.actions.push_back(HoldAction::StopAudio);
        self.pacer.stop();
    }

    fn hold_deadline(&self) -> Duration {
        self.started_at.saturating_add(self.cfg.max_hold)
    }

    fn agent_deadline(&self) -> Option<Duration> {
        self.agent_joined_at.map(|t| t.saturating_add(self.cfg.after_agent_max))
    }

    fn grace_deadline(&self) -> Option<Duration> {
        // Capped by the agent deadline, so a leave near the end cannot stretch the call.
        let grace = self.agents_gone_since?.saturating_add(self.cfg.agent_left_grace);
        Some(self.agent_deadline().map_or(grace, |d| grace.min(d)))
    }

    fn hold_time(&self, now: Duration) -> Duration {
        self.agent_joined_at.unwrap_or(now).saturating_sub(self.started_at)
    }

    fn event(&mut self, kind: &'static str, at: Duration, data: Value) {
        let data = match data {
            Value::Object(o) => o,
            _ => Map::new(),
        };
        self.actions.push_back(HoldAction::Event { kind, at, data });
    }

    fn start(&mut self, now: Duration) {
        self.phase = Phase::Holding;
        self.started_at = now;
        let has_message = self.message().is_some();
        self.event(
            "hold_started",
            now,
            json!({"message": has_message, "max_hold_seconds": self.cfg.max_hold.as_secs()}),
        );
        if has_message {
            self.speak(now, false);
        } else {
            self.music = true;
        }
    }

    fn speak(&mut self, now: Duration, reminder: bool) {
        let Some(text) = self.message().map(str::to_string) else { return };
        self.music = false;
        self.next_reminder = None;
        self.speaking = Some(Speech::new(now));
        self.messages = self.messages.saturating_add(1);
        self.event("hold_message", now, json!({"reminder": reminder, "count": self.messages}));
        self.actions.push_back(HoldAction::Speak { text });
    }

    /// A message whose audio has all played is over.
    fn settle_message(&mut self, now: Duration) {
        if self.phase == Phase::Holding && self.speaking.as_ref().is_some_and(Speech::played_out) {
            self.message_finished(now);
        }
    }

    fn message_finished(&mut self, now: Duration) {
        self.speaking = None;
        self.music = true;
        self.next_reminder = (!self.cfg.reminder_every.is_zero()).then(|| now.saturating_add(self.cfg.reminder_every));
    }

    fn fire_timers(&mut self, now: Duration) {
        match self.phase {
            Phase::Idle | Phase::Ended => {}
            Phase::Holding => {
                if now >= self.hold_deadline() {
                    let reason = format!("no agent within {} s", self.cfg.max_hold.as_secs());
                    self.end(now, HoldOutcome::HoldTimeout, reason);
                    return;
                }
                if self.speaking.as_ref().is_some_and(|s| now >= s.since.saturating_add(self.cfg.message_timeout)) {
                    // The message never finished: make sure it is cut before the music comes
                    // back, so the two never overlap.
                    self.stop_audio();
                    self.event("hold_message_timeout", now, json!({}));
                    self.message_finished(now);
                }
                self.settle_message(now);
                if self.music && self.next_reminder.is_some_and(|t| now >= t) {
                    self.speak(now, true);
                }
            }
            Phase::Agent => {
                if self.agent_deadline().is_some_and(|d| now >= d) {
                    let reason = format!("agent call longer than {} s", self.cfg.after_agent_max.as_secs());
                    self.end(now, HoldOutcome::HoldTimeout, reason);
                    return;
                }
                if self.grace_deadline().is_some_and(|d| now >= d) {
                    self.end(now, HoldOutcome::AgentFinished, "every agent left".into());
                }
            }
        }
    }

    fn on_agent_joined(&mut self, now: Duration, identity: String) {
        self.agent_joins = self.agent_joins.saturating_add(1);
        match self.phase {
            Phase::Idle | Phase::Holding => {
                if self.phase == Phase::Idle {
                    // Joined before the driver said Start: nothing to play, zero hold time.
                    self.started_at = now;
                }
                if self.audio_active() {
                    self.stop_audio();
                }
                self.music = false;
                self.speaking = None;
                self.next_reminder = None;
                self.phase = Phase::Agent;
                self.agent_joined_at = Some(now);
                let hold_seconds = self.hold_time(now).as_secs_f64();
                self.event("agent_joined", now, json!({"identity": identity, "hold_seconds": hold_seconds}));
            }
            Phase::Agent => {
                let rejoined = self.agents_gone_since.take().is_some();
                self.event("agent_joined", now, json!({"identity": identity, "rejoined": rejoined}));
            }
            Phase::Ended => return,
        }
        if self.agents.len() < MAX_AGENTS {
            self.agents.insert(identity);
        }
    }

    fn on_agent_left(&mut self, now: Duration, identity: String) {
        if self.phase != Phase::Agent || !self.agents.remove(&identity) {
            return; // not an agent we saw join
        }
        self.event("agent_left", now, json!({"identity": identity, "remaining": self.agents.len()}));
        if self.agents.is_empty() {
            self.agents_gone_since = Some(now);
            self.fire_timers(now); // zero grace ends at once
        }
    }

    fn end(&mut self, now: Duration, outcome: HoldOutcome, reason: String) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.audio_active() {
            self.stop_audio();
        }
        if self.phase == Phase::Idle {
            self.started_at = now;
        }
        let hold = self.hold_time(now);
        let agent_joined = self.agent_joined_at.is_some();
        self.event(
            "hold_ended",
            now,
            json!({"outcome": outcome.as_str(), "reason": reason, "hold_seconds": hold.as_secs_f64(),
                   "agent_joined": agent_joined}),
        );
        self.actions.push_back(HoldAction::End { outcome, reason, at: now, hold, agent_joined });
        self.phase = Phase::Ended;
        self.outcome = Some(outcome);
        self.music = false;
        self.speaking = None;
        self.next_reminder = None;
        self.agents_gone_since = None;
    }
}

#[cfg(test)]
mod tests;
