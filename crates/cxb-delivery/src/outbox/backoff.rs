//! Retry delay policy.
//!
//! Attempt `n` (1-based, counting failed attempts) waits
//! `d = min(base · 2^(n-1), max)` and then a uniformly random time in
//! `[d/2, d]` ("equal jitter": never hammers the receiver sooner than half the
//! nominal delay, yet spreads a burst of failures from many calls over time).
//! With the defaults (base 1 s, max 5 min): 0.5–1 s, 1–2 s, 2–4 s, 4–8 s, …,
//! reaching the 2.5–5 min band on the 10th attempt; with `max_age` 72 h that is
//! roughly 1,150 attempts (mean 3.75 min apart once capped) before an undeliverable entry is dead-lettered.
//!
//! A receiver's `Retry-After` is a floor: the delay is
//! `max(jittered backoff, min(retry_after, max))`.

use std::time::Duration;

use rand::Rng as _;

/// Nominal (un-jittered) delay before retry number `attempt` (≥ 1).
pub fn nominal(attempt: u32, base: Duration, max: Duration) -> Duration {
    2u32.checked_pow(attempt.saturating_sub(1)).and_then(|factor| base.checked_mul(factor)).map_or(max, |d| d.min(max))
}

/// Jittered delay in `[d/2, d]` with `d = nominal(attempt)`, raised to the
/// receiver's `Retry-After` (itself capped at `max`).
pub fn delay(attempt: u32, base: Duration, max: Duration, retry_after: Option<Duration>) -> Duration {
    let d = nominal(attempt, base, max);
    let hi = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let jittered = Duration::from_nanos(rand::rng().random_range(hi / 2..=hi));
    match retry_after {
        Some(ra) => jittered.max(ra.min(max)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_doubles_and_caps() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(300);
        assert_eq!(nominal(1, b, m), Duration::from_secs(1));
        assert_eq!(nominal(2, b, m), Duration::from_secs(2));
        assert_eq!(nominal(9, b, m), Duration::from_secs(256));
        assert_eq!(nominal(10, b, m), m);
        assert_eq!(nominal(1000, b, m), m);
        assert_eq!(nominal(0, b, m), b);
    }

    #[test]
    fn jitter_within_band_and_retry_after_floor() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(10);
        for attempt in 1..20 {
            let n = nominal(attempt, b, m);
            let d = delay(attempt, b, m, None);
            assert!(d >= n / 2 && d <= n, "{d:?} vs {n:?}");
        }
        assert_eq!(delay(1, b, m, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(delay(1, b, m, Some(Duration::from_secs(3600))), m);
    }
}
