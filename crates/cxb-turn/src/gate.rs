//! [`TurnGate`]: when does the caller's turn end, given VAD stops and Smart Turn predictions?
//!
//! A pure state machine (no clock, no I/O, no model): time is passed in as a [`Duration`] since
//! the call was answered, the same convention as `cxb-engine`. The call driver feeds it and acts
//! on what it answers:
//!
//! ```text
//! VAD start            -> gate.on_speech_start(now)                       (turn open / resumed)
//! VAD stop             -> gate.on_speech_stop(now)  = Predict(ticket)     run SmartTurn on the
//!                                                                          turn's audio, off the
//!                                                                          audio path, then:
//! prediction           -> gate.on_prediction(ticket, p, now) = CloseTurn  (p > threshold)
//!                                                                = Wait { deadline }
//! model error/timeout  -> gate.on_prediction_failed(ticket, now) = Wait { deadline }
//! timer                -> gate.handle_timeout(now) = CloseTurn(MaxWait)    at poll_timeout()
//! ```
//!
//! The rules, following pipecat's smart-turn analyser (`BaseSmartTurn`):
//! - **Close now** when the model, scoring the audio up to the VAD stop, says the utterance is
//!   complete (probability > `threshold`, 0.5 by default, as pipecat).
//! - **Wait** otherwise: the caller paused mid-thought ("my account number is… "). The turn stays
//!   open for up to `max_wait` after the VAD stop (pipecat's `stop_secs`, 3 s). If the caller
//!   speaks again, the wait is cancelled; their next VAD stop asks for a fresh prediction over the
//!   whole turn so far. If `max_wait` passes in silence, the turn closes anyway
//!   ([`CloseReason::MaxWait`]) — silence is the fallback that always ends a turn.
//! - The same bound covers a slow or failed model: the deadline starts at the VAD stop, not when
//!   the prediction arrives, so inference latency never extends a turn past `max_wait`. A model
//!   error behaves like "incomplete".
//! - Predictions are matched to the VAD stop that asked for them by a [`Ticket`]. One that
//!   arrives after the caller resumed speaking (or after the turn closed) is stale and ignored:
//!   it scored audio that is no longer the end of the turn.

use std::time::Duration;

/// Tuning of the gate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnGateConfig {
    /// Smart Turn probability above which the turn is complete.
    pub threshold: f32,
    /// Longest silence after a VAD stop before the turn closes whatever the model said.
    pub max_wait: Duration,
}

impl Default for TurnGateConfig {
    fn default() -> Self {
        Self { threshold: crate::COMPLETE_THRESHOLD, max_wait: Duration::from_secs(3) }
    }
}

/// Identifies the VAD stop a prediction was requested for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// Why a turn closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CloseReason {
    /// The model said the utterance is complete.
    Complete { probability: f32 },
    /// `max_wait` of silence passed after the VAD stop.
    MaxWait,
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GateAction {
    /// Nothing (a stale prediction, a stop without a start, ...).
    None,
    /// Score the turn's audio with Smart Turn and report back with this ticket.
    Predict(Ticket),
    /// Keep the turn open; it closes at `deadline` unless the caller speaks again.
    Wait { deadline: Duration },
    /// The caller's turn is over: hand it to the conversation engine.
    CloseTurn(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// No caller turn in progress.
    Idle,
    /// The caller is speaking.
    Speaking,
    /// VAD stopped; a prediction for `ticket` is outstanding.
    Predicting { ticket: Ticket, deadline: Duration },
    /// The model said "incomplete" (or failed); waiting for more speech until `deadline`.
    Waiting { deadline: Duration },
}

/// The turn-end decision machine. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TurnGate {
    cfg: TurnGateConfig,
    state: State,
    next_ticket: u64,
}

impl TurnGate {
    pub fn new(cfg: TurnGateConfig) -> Self {
        Self { cfg, state: State::Idle, next_ticket: 0 }
    }

    pub fn config(&self) -> &TurnGateConfig {
        &self.cfg
    }

    /// A caller turn has started and not yet closed.
    pub fn is_turn_open(&self) -> bool {
        self.state != State::Idle
    }

    /// The caller is speaking right now (per the VAD).
    pub fn is_speaking(&self) -> bool {
        self.state == State::Speaking
    }

    /// VAD: the caller started (or resumed) speaking. Opens a turn, or keeps the open one going
    /// and cancels any wait or outstanding prediction.
    pub fn on_speech_start(&mut self, _now: Duration) {
        self.state = State::Speaking;
    }

    /// VAD: the caller stopped speaking. Asks for a prediction; the turn will close no later
    /// than `now + max_wait`. A stop outside a spoken turn is ignored.
    pub fn on_speech_stop(&mut self, now: Duration) -> GateAction {
        if self.state != State::Speaking {
            return GateAction::None;
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.state = State::Predicting { ticket, deadline: now.saturating_add(self.cfg.max_wait) };
        GateAction::Predict(ticket)
    }

    /// Smart Turn's probability that the utterance is complete, for `ticket`.
    pub fn on_prediction(&mut self, ticket: Ticket, probability: f32, now: Duration) -> GateAction {
        let State::Predicting { ticket: expected, deadline } = self.state else {
            return GateAction::None;
        };
        if ticket != expected {
            return GateAction::None;
        }
        // NaN (a broken model) fails this comparison and so counts as "incomplete".
        if probability > self.cfg.threshold {
            self.state = State::Idle;
            return GateAction::CloseTurn(CloseReason::Complete { probability });
        }
        self.wait_or_close(deadline, now)
    }

    /// The prediction for `ticket` could not be made (model error, worker gone). The silence
    /// bound still applies, so the turn closes at the deadline unless the caller speaks again.
    pub fn on_prediction_failed(&mut self, ticket: Ticket, now: Duration) -> GateAction {
        match self.state {
            State::Predicting { ticket: expected, deadline } if expected == ticket => self.wait_or_close(deadline, now),
            _ => GateAction::None,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if at all.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.state {
            State::Predicting { deadline, .. } | State::Waiting { deadline } => Some(deadline),
            State::Idle | State::Speaking => None,
        }
    }

    /// Closes the turn once its silence deadline has passed.
    pub fn handle_timeout(&mut self, now: Duration) -> GateAction {
        match self.poll_timeout() {
            Some(deadline) if now >= deadline => {
                self.state = State::Idle;
                GateAction::CloseTurn(CloseReason::MaxWait)
            }
            _ => GateAction::None,
        }
    }

    /// Forget the current turn (the call ended, or the driver closed the turn on its own, e.g.
    /// on an STT end-of-turn event). Outstanding tickets become stale.
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    fn wait_or_close(&mut self, deadline: Duration, now: Duration) -> GateAction {
        if now >= deadline {
            self.state = State::Idle;
            GateAction::CloseTurn(CloseReason::MaxWait)
        } else {
            self.state = State::Waiting { deadline };
            GateAction::Wait { deadline }
        }
    }
}

impl Default for TurnGate {
    fn default() -> Self {
        Self::new(TurnGateConfig::default())
    }
}
