//! Real-time pacing of outbound audio: the one implementation behind the conversation engine's
//! playout and the Agent Desk hold worker.
//!
//! Audio goes out in talk spurts. A spurt starts when the first frame is released; from then on
//! a frame may go once real time is within `lead` of the moment the caller starts hearing it, so
//! the far end always holds about `lead` of audio — enough to ride out jitter, little enough that
//! a clear (barge-in) really stops speech. Frames may be released in batches of `batch`: a batch
//! starts once its last frame is due, then every due frame goes, which halves the writes and
//! wake-ups per second of speech at `batch = 2`. After a gap longer than one frame (the sender
//! woke late, or had nothing to send) the spurt restarts instead of bursting the backlog.
//!
//! Sans-IO: time is a [`Duration`] on the caller's clock, passed in.

use std::time::Duration;

use crate::frame_len;

/// Pacing state of one outbound audio stream.
#[derive(Debug, Clone)]
pub struct Pacer {
    sample_rate: u32,
    lead: Duration,
    batch: u32,
    /// Playing time of one frame: 20 ms, or the nearest whole-sample length below it at rates
    /// that do not divide into 20 ms frames (11 025 Hz: 220 samples, 19.95 ms).
    frame: Duration,
    /// Start of the current spurt and the samples released in it.
    spurt: Option<(Duration, usize)>,
}

impl Pacer {
    /// `lead`: how far ahead of real time audio is released; `batch`: frames per release (≥ 1).
    pub fn new(sample_rate: u32, lead: Duration, batch: u32) -> Self {
        let sample_rate = sample_rate.max(1);
        let frame = samples_duration(frame_len(sample_rate).max(1), sample_rate);
        Self { sample_rate, lead, batch: batch.max(1), frame, spurt: None }
    }

    /// A spurt is under way.
    pub fn is_active(&self) -> bool {
        self.spurt.is_some()
    }

    /// The spurt is over (nothing more to play, or the far end's queue was cleared).
    pub fn stop(&mut self) {
        self.spurt = None;
    }

    /// Playing time of `samples` at this stream's rate.
    pub fn duration_of(&self, samples: usize) -> Duration {
        samples_duration(samples, self.sample_rate)
    }

    /// When the caller will have heard everything released in this spurt (`None`: no spurt).
    pub fn heard_until(&self) -> Option<Duration> {
        self.spurt.map(|(start, samples)| start + self.duration_of(samples))
    }

    /// When the next frame is due (the first frame of an idle stream: at once).
    fn next_frame_due(&self) -> Duration {
        self.heard_until().map_or(Duration::ZERO, |t| t.saturating_sub(self.lead))
    }

    /// When the next batch may start: once its last frame is due. An idle stream: at once.
    pub fn next_release_at(&self) -> Duration {
        if self.spurt.is_none() {
            return Duration::ZERO;
        }
        self.next_frame_due() + self.frame * (self.batch - 1)
    }

    /// May a frame be released at `now`? `first_in_wakeup`: no frame was released yet in this
    /// wake-up, so the batch gate applies; later frames of the same wake-up go while due. Starts
    /// a spurt on an idle stream and restarts one after an underrun. Call [`Pacer::released`]
    /// for each frame actually sent.
    pub fn may_release(&mut self, now: Duration, first_in_wakeup: bool) -> bool {
        if let Some(until) = self.heard_until() {
            if now > until + self.frame {
                // Underrun: restart from now rather than burst what piled up.
                self.spurt = None;
            }
        }
        if self.spurt.is_none() {
            self.spurt = Some((now, 0));
        }
        let gate = if first_in_wakeup { self.next_release_at() } else { self.next_frame_due() };
        gate <= now
    }

    /// Count `samples` as released in the current spurt.
    pub fn released(&mut self, samples: usize) {
        if let Some((_, n)) = &mut self.spurt {
            *n += samples;
        }
    }

    /// Samples released that the caller has not heard yet at `now`.
    pub fn samples_ahead(&self, now: Duration) -> usize {
        let Some(until) = self.heard_until() else { return 0 };
        let ahead = until.saturating_sub(now);
        (ahead.as_micros() as u64 * self.sample_rate as u64 / 1_000_000) as usize
    }
}

fn samples_duration(samples: usize, sample_rate: u32) -> Duration {
    Duration::from_micros(samples as u64 * 1_000_000 / sample_rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 8000;
    const FRAME_SAMPLES: usize = 160;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Release every frame the pacer allows at `now`; returns how many went.
    fn wake(p: &mut Pacer, now: Duration, available: usize) -> usize {
        let mut n = 0;
        while n < available && p.may_release(now, n == 0) {
            p.released(FRAME_SAMPLES);
            n += 1;
        }
        n
    }

    #[test]
    fn a_spurt_releases_the_lead_at_once_then_one_frame_per_frame_time() {
        let mut p = Pacer::new(RATE, ms(60), 1);
        // 60 ms lead: the first frame plus three more are due at t=0.
        assert_eq!(wake(&mut p, ms(0), 100), 4);
        assert_eq!(p.next_release_at(), ms(20));
        assert_eq!(wake(&mut p, ms(19), 100), 0);
        assert_eq!(wake(&mut p, ms(20), 100), 1);
        assert_eq!(p.samples_ahead(ms(20)), 640, "four frames queued at the far end");
        assert_eq!(p.heard_until(), Some(ms(100)));
    }

    #[test]
    fn batches_start_once_their_last_frame_is_due() {
        let mut p = Pacer::new(RATE, ms(80), 2);
        assert_eq!(wake(&mut p, ms(1000), 100), 5);
        // Next frame due at 1100-80 = 1020 ms; the batch of two waits for its second at 1040 ms.
        assert_eq!(p.next_release_at(), ms(1040));
        assert_eq!(wake(&mut p, ms(1030), 100), 0);
        assert_eq!(wake(&mut p, ms(1040), 100), 2);
    }

    #[test]
    fn an_underrun_restarts_the_spurt_instead_of_bursting() {
        let mut p = Pacer::new(RATE, ms(40), 1);
        assert_eq!(wake(&mut p, ms(0), 1), 1);
        // Nothing to send for a while: heard until 20 ms; at 500 ms the spurt restarts.
        assert_eq!(wake(&mut p, ms(500), 100), 3);
        assert_eq!(p.heard_until(), Some(ms(560)));
    }

    #[test]
    fn stop_ends_the_spurt() {
        let mut p = Pacer::new(RATE, ms(40), 1);
        wake(&mut p, ms(0), 10);
        assert!(p.is_active());
        p.stop();
        assert!(!p.is_active());
        assert_eq!(p.samples_ahead(ms(0)), 0);
        assert_eq!(p.next_release_at(), Duration::ZERO);
    }

    #[test]
    fn the_batch_gate_and_underrun_use_the_real_frame_length() {
        // 11 025 Hz: a frame is 220 samples, 19 954 µs.
        let frame = Duration::from_micros(19_954);
        let mut p = Pacer::new(11_025, ms(0), 2);
        assert!(!p.may_release(ms(0), true), "a batch of two waits for its second frame");
        assert_eq!(p.next_release_at(), frame);
        let mut q = Pacer::new(11_025, ms(0), 1);
        assert!(q.may_release(ms(0), true));
        q.released(220);
        // A wake-up more than one frame after the released audio ran out restarts the spurt.
        let late = frame * 2 + Duration::from_micros(26);
        assert!(q.may_release(late, true));
        assert_eq!(q.heard_until(), Some(late));
    }
}
