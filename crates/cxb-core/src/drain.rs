//! Stopping without losing a call's result (docs/reliability.md).
//!
//! On SIGTERM the worker stops taking calls at once (`/health` says `draining` with nothing
//! available, `/ready` answers 503, call-start routes refuse with 503) and waits for the live
//! calls to end by themselves and for their post-call work to persist their results; it exits as
//! soon as both are done. `CXBCORE_DRAIN_SECS` bounds that wait. When it runs out, every live call
//! is ended through its shutdown signal (hang-up, result as `error` with a `worker_shutdown`
//! event, recording finished), post-call work still running [`POSTCALL_GRACE`] later is skipped
//! with a `post_call_skipped` event, and the worker exits once those results are persisted.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument as _};

use crate::tracker::{CallTracker, WorkTracker};

/// After the drain deadline, how long post-call work may still run before its result is
/// delivered without it.
pub const POSTCALL_GRACE: Duration = Duration::from_secs(10);
/// After the drain deadline, the bound on ending the calls (hang-up and close handshakes are
/// bounded by a few seconds each) and persisting their results.
pub const AFTER_DEADLINE: Duration = Duration::from_secs(20);

/// The drain's view of the worker: the call slots and the post-call work still running.
#[derive(Clone)]
pub struct Drain {
    tracker: CallTracker,
    postcall: WorkTracker,
    postcall_stop: CancellationToken,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every call ended by itself and every result is persisted.
    Graceful,
    /// The deadline passed; the calls still live were ended by the worker.
    Deadline,
}

impl Drain {
    pub fn new(tracker: CallTracker) -> Self {
        Self { tracker, postcall: WorkTracker::default(), postcall_stop: CancellationToken::new() }
    }

    /// Run a call's post-call work (analysis, then the result's delivery) as a task the drain
    /// waits for, in the current span.
    pub fn spawn_postcall<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.postcall.spawn(work.in_current_span());
    }

    /// Resolves when post-call work must stop and deliver what it has.
    pub fn postcall_stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.postcall_stop.clone().cancelled_owned()
    }

    /// The drain, from SIGTERM to "nothing left to wait for".
    pub async fn run(&self, period: Duration) -> Drained {
        let started = Instant::now();
        self.tracker.start_draining();
        info!(
            live_calls = self.tracker.active(),
            drain_secs = period.as_secs(),
            "draining: refusing new calls, letting live ones end"
        );
        if tokio::time::timeout(period, self.settled()).await.is_ok() {
            info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "drained: every call ended and its result is persisted"
            );
            return Drained::Graceful;
        }
        warn!(live_calls = self.tracker.active(), "drain deadline: ending the live calls");
        metrics::counter!("cxb_drain_deadline_total").increment(1);
        self.tracker.end_live_calls();
        let stop = self.postcall_stop.clone();
        let grace = tokio::spawn(async move {
            tokio::time::sleep(POSTCALL_GRACE).await;
            stop.cancel();
        });
        if tokio::time::timeout(AFTER_DEADLINE, self.settled()).await.is_err() {
            warn!(live_calls = self.tracker.active(), "calls still ending after the drain deadline; exiting anyway");
        }
        grace.abort();
        info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained after the deadline");
        Drained::Deadline
    }

    /// No call holds a slot and no post-call work runs. Calls spawn their post-call work before
    /// they release their slot, so once the slots are idle no new work can appear.
    async fn settled(&self) {
        self.tracker.wait_idle().await;
        self.postcall.wait_idle().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_calls_then_for_their_post_call_work() {
        let tracker = CallTracker::new(4);
        let drain = Drain::new(tracker.clone());
        let slot = tracker.try_acquire("c1").unwrap();
        let d = drain.clone();
        // The call ends at 5 s and hands 3 s of post-call work over before releasing its slot.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            d.spawn_postcall(tokio::time::sleep(Duration::from_secs(3)));
            drop(slot);
        });
        let started = Instant::now();
        assert_eq!(drain.run(Duration::from_secs(60)).await, Drained::Graceful);
        assert_eq!(started.elapsed(), Duration::from_secs(8), "exits when the work is done, not at the deadline");
        assert!(tracker.try_acquire("late").is_err(), "still refusing");
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_deadline_calls_are_signalled_and_post_call_is_cut_after_its_grace() {
        let tracker = CallTracker::new(4);
        let drain = Drain::new(tracker.clone());
        let slot = tracker.try_acquire("long").unwrap();
        let (d, signal) = (drain.clone(), slot.shutdown());
        let skipped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = skipped.clone();
        // A call that only ends when told to, then has post-call work longer than the grace.
        tokio::spawn(async move {
            signal.cancelled().await;
            let stop = d.postcall_stopped();
            d.spawn_postcall(async move {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(600)) => {}
                    () = stop => seen.store(true, std::sync::atomic::Ordering::SeqCst),
                }
            });
            drop(slot);
        });
        let started = Instant::now();
        assert_eq!(drain.run(Duration::from_secs(2)).await, Drained::Deadline);
        assert_eq!(started.elapsed(), Duration::from_secs(2) + POSTCALL_GRACE);
        assert!(skipped.load(std::sync::atomic::Ordering::SeqCst), "post-call told to stop");
    }
}
