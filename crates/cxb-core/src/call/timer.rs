//! A sans-IO machine's next deadline as one long-lived timer.

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// The deadline a state machine asked for (`poll_timeout`), or none. One `Sleep` lives for the
/// whole call and is re-armed only when the deadline moves: re-creating it every loop turn
/// would re-register it in the timer wheel 50+ times a second.
pub(super) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Deadline {
    pub(super) fn new() -> Self {
        Self { sleep: Box::pin(tokio::time::sleep_until(Instant::now())), armed: false }
    }

    /// Wait for `at`, or for nothing when `None`.
    pub(super) fn set(&mut self, at: Option<Instant>) {
        match at {
            Some(t) if !self.armed || self.sleep.deadline() != t => {
                self.sleep.as_mut().reset(t);
                self.armed = true;
            }
            Some(_) => {}
            None => self.armed = false,
        }
    }

    /// Resolves when the deadline passes; never while none is set. Cancel-safe (for `select!`).
    pub(super) async fn passed(&mut self) {
        if !self.armed {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = false;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_and_never_without_one() {
        let mut d = Deadline::new();
        let unset = tokio::time::timeout(Duration::from_secs(3600), d.passed()).await;
        assert!(unset.is_err(), "no deadline: never fires");
        let start = Instant::now();
        d.set(Some(start + Duration::from_millis(250)));
        d.passed().await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        // Fired once: disarmed until set again.
        assert!(tokio::time::timeout(Duration::from_secs(10), d.passed()).await.is_err());
        d.set(Some(Instant::now() + Duration::from_millis(40)));
        d.set(None);
        assert!(tokio::time::timeout(Duration::from_secs(10), d.passed()).await.is_err(), "cleared");
    }
}
