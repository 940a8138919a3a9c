//! Every deadline of a call in one table, one slot per kind of timer (the shape of quinn-proto's
//! `TimerTable`). A deadline is written where the state it belongs to changes and never
//! recomputed when asked, so [`Conversation::poll_timeout`](crate::Conversation::poll_timeout)
//! and [`Conversation::handle_timeout`](crate::Conversation::handle_timeout) cannot disagree:
//! the driver sleeps until exactly the deadline that fires.

use std::time::Duration;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The bot config's maximum call duration.
    MaxDuration,
    /// The caller stopped: the wait for the STT final, the turn model or the rest of a number.
    SttFinal,
    /// The LLM's first token (or tool call).
    LlmFirstToken,
    /// The slowest custom tool of a round.
    ToolRound,
    /// The oldest text sent to TTS that has no audio yet.
    TtsFirstAudio,
    /// Keypresses become a caller turn.
    Dtmf,
    /// Bot audio paused by caller noise resumes.
    FalseInterruption,
    /// A filler phrase, or a slow tool's pre-message.
    Filler,
    /// The transport confirms a transfer, or drops the transferred leg.
    Transfer,
    /// Re-engagement prompt, RNR or dead air.
    Silence,
    /// The next batch of bot audio frames.
    Playout,
    /// The caller has heard the last frame before a hang-up or a transfer.
    AfterPlayout,
}

impl Timer {
    /// Every timer, in the order expired ones are handled.
    pub const ALL: [Timer; 12] = [
        Timer::MaxDuration,
        Timer::SttFinal,
        Timer::LlmFirstToken,
        Timer::ToolRound,
        Timer::TtsFirstAudio,
        Timer::Dtmf,
        Timer::FalseInterruption,
        Timer::Filler,
        Timer::Transfer,
        Timer::Silence,
        Timer::Playout,
        Timer::AfterPlayout,
    ];
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    at: [Option<Duration>; Timer::ALL.len()],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Duration) {
        self.at[timer as usize] = Some(at);
    }

    pub(crate) fn clear(&mut self, timer: Timer) {
        self.at[timer as usize] = None;
    }

    /// Arm `timer` at `at`, or disarm it with `None`.
    pub(crate) fn put(&mut self, timer: Timer, at: Option<Duration>) {
        self.at[timer as usize] = at;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Duration> {
        self.at[timer as usize]
    }

    pub(crate) fn clear_all(&mut self) {
        self.at = Default::default();
    }

    /// The earliest deadline and its timer (the first in [`Timer::ALL`] order on a tie).
    pub(crate) fn next_timeout(&self) -> Option<(Timer, Duration)> {
        Timer::ALL.iter().filter_map(|&t| self.get(t).map(|at| (t, at))).min_by_key(|&(_, at)| at)
    }

    /// Is `timer` due at `now`? Then it is disarmed: each expiry is handled once.
    pub(crate) fn expire(&mut self, timer: Timer, now: Duration) -> bool {
        let due = self.get(timer).is_some_and(|at| at <= now);
        if due {
            self.clear(timer);
        }
        due
    }
}

/// The engine's view of time: the latest `now` it was given. An older `now` (a driver whose
/// clock readings crossed threads, a test feeding random times) counts as the latest, so
/// durations never go negative.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Clock {
    latest: Duration,
}

impl Clock {
    pub(crate) fn advance(&mut self, now: Duration) -> Duration {
        self.latest = self.latest.max(now);
        self.latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn the_earliest_deadline_is_next_and_fires_once() {
        let mut t = TimerTable::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Timer::Silence, ms(300));
        t.set(Timer::Playout, ms(100));
        t.set(Timer::MaxDuration, ms(100));
        assert_eq!(t.next_timeout(), Some((Timer::MaxDuration, ms(100))), "ties go in handling order");
        assert!(!t.expire(Timer::Silence, ms(299)));
        assert!(t.expire(Timer::Playout, ms(150)));
        assert!(!t.expire(Timer::Playout, ms(150)), "an expiry is handled once");
        t.put(Timer::MaxDuration, None);
        assert_eq!(t.next_timeout(), Some((Timer::Silence, ms(300))));
        t.clear_all();
        assert_eq!(t.next_timeout(), None);
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut c = Clock::default();
        assert_eq!(c.advance(ms(500)), ms(500));
        assert_eq!(c.advance(ms(200)), ms(500));
        assert_eq!(c.advance(ms(700)), ms(700));
    }
}
