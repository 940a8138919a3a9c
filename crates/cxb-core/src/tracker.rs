//! CallTracker: the per-process slot limiter (contract §1, §13.1, §13.4).
//!
//! A slot is taken atomically *before* any side effect and released by an RAII guard, so every
//! exit path — normal end, error, a panicking task, a vanished client — gives it back.
//!
//! The tracker is also where a stop reaches the calls: once draining it refuses every new call
//! (and `/health`, `/ready` say so), and each slot carries the call's shutdown signal, a child of
//! one root token (tokio's mini-redis shutdown pattern) that [`CallTracker::end_live_calls`]
//! cancels when the drain deadline passes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Inner {
    max: u64,
    active: InFlight,
    draining: AtomicBool,
    /// Parent of every call's shutdown signal.
    shutdown: CancellationToken,
}

/// A count of things in flight that can be awaited down to zero: the call slots, and the
/// post-call work the drain waits for ([`WorkTracker`]).
#[derive(Debug, Default)]
struct InFlight {
    n: AtomicU64,
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// One more, unless `max` are in flight; the new count.
    fn try_add(&self, max: u64) -> Option<u64> {
        self.n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok().map(|n| n + 1)
    }

    /// One fewer; the new count. Waiters wake when it reaches zero.
    fn remove(&self) -> u64 {
        let left = self.n.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 {
            self.idle.notify_waiters();
        }
        left
    }

    fn get(&self) -> u64 {
        self.n.load(Ordering::Acquire)
    }

    async fn wait_idle(&self) {
        loop {
            // Registered before the check, so a drop to zero in between is not missed.
            let notified = self.idle.notified();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Tasks the drain waits for (post-call work): each holds a guard, so every exit of the task —
/// a panic included — counts. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct WorkTracker {
    inner: Arc<InFlight>,
}

struct WorkGuard(Arc<InFlight>);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.0.remove();
    }
}

impl WorkTracker {
    /// Spawn `work` as a tracked task.
    pub fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.try_add(u64::MAX);
        let guard = WorkGuard(self.inner.clone());
        tokio::spawn(async move {
            let _guard = guard;
            work.await;
        });
    }

    /// Tracked tasks still running.
    pub fn active(&self) -> u64 {
        self.inner.get()
    }

    /// Wait until no tracked task runs.
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }
}

/// Why a call was not given a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is taken (HTTP 429).
    AtCapacity,
    /// The worker is stopping (HTTP 503).
    Draining,
}

impl Refusal {
    /// The `error` of the refusal's JSON body and its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::AtCapacity => "at_capacity",
            Refusal::Draining => "draining",
        }
    }
}

/// Cheap to clone; all clones share the same slots.
#[derive(Debug, Clone)]
pub struct CallTracker {
    inner: Arc<Inner>,
}

/// Holds one slot. Dropping it releases the slot.
#[derive(Debug)]
pub struct CallSlot {
    inner: Arc<Inner>,
    id: String,
    shutdown: CancellationToken,
}

impl CallTracker {
    pub fn new(max: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                max,
                active: InFlight::default(),
                draining: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Take a slot for `call_id`; refused at capacity or while draining.
    pub fn try_acquire(&self, call_id: impl Into<String>) -> Result<CallSlot, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let now = self.inner.active.try_add(self.inner.max).ok_or(Refusal::AtCapacity)?;
        metrics::gauge!("cxb_active_calls").set(now as f64);
        let shutdown = self.inner.shutdown.child_token();
        Ok(CallSlot { inner: self.inner.clone(), id: call_id.into(), shutdown })
    }

    pub fn active(&self) -> u64 {
        self.inner.active.get()
    }

    pub fn max(&self) -> u64 {
        self.inner.max
    }

    pub fn available(&self) -> u64 {
        self.inner.max.saturating_sub(self.active())
    }

    /// Stop accepting calls (SIGTERM), for the rest of the process's life.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The drain deadline passed: tell every live call (and any that still gets through its
    /// start) to end now.
    pub fn end_live_calls(&self) {
        self.inner.shutdown.cancel();
    }

    /// Wait until no call holds a slot.
    pub async fn wait_idle(&self) {
        self.inner.active.wait_idle().await;
    }
}

impl CallSlot {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This call's shutdown signal: cancelled when the worker must end its calls.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let left = self.inner.active.remove();
        metrics::gauge!("cxb_active_calls").set(left as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn slots_are_limited_and_released_on_drop() {
        let t = CallTracker::new(2);
        let a = t.try_acquire("a").unwrap();
        let _b = t.try_acquire("b").unwrap();
        assert_eq!(t.try_acquire("c").err(), Some(Refusal::AtCapacity));
        assert_eq!(t.available(), 0);
        drop(a);
        assert_eq!(t.active(), 1);
        assert!(t.try_acquire("c").is_ok());
    }

    #[tokio::test]
    async fn a_panicking_call_task_still_releases_its_slot() {
        let t = CallTracker::new(1);
        let slot = t.try_acquire("p").unwrap();
        let h = tokio::spawn(async move {
            let _slot = slot;
            panic!("boom");
        });
        assert!(h.await.is_err());
        assert_eq!(t.active(), 0);
        assert!(t.try_acquire("q").is_ok());
    }

    #[test]
    fn concurrent_acquire_never_exceeds_max() {
        let t = CallTracker::new(50);
        let held = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for i in 0..8 {
                let t = t.clone();
                let held = held.clone();
                s.spawn(move || {
                    for j in 0..100 {
                        if let Ok(slot) = t.try_acquire(format!("{i}-{j}")) {
                            held.lock().unwrap().push(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(held.lock().unwrap().len(), 50);
        assert_eq!(t.active(), 50);
    }

    #[test]
    fn draining_refuses_new_calls_for_good() {
        let t = CallTracker::new(5);
        let live = t.try_acquire("live").unwrap();
        t.start_draining();
        assert!(t.is_draining());
        assert_eq!(t.try_acquire("x").err(), Some(Refusal::Draining));
        drop(live);
        assert_eq!(t.try_acquire("y").err(), Some(Refusal::Draining), "idle is still draining");
    }

    #[tokio::test]
    async fn tracked_work_is_awaited_to_its_end_even_when_it_panics() {
        let work = WorkTracker::default();
        work.wait_idle().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        work.spawn(async move {
            let _ = rx.await;
        });
        work.spawn(async { panic!("post-call bug") });
        assert!(work.active() >= 1);
        let waiting = tokio::spawn({
            let work = work.clone();
            async move { work.wait_idle().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "one task still runs");
        tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting).await.expect("idle").unwrap();
        assert_eq!(work.active(), 0);
    }

    #[tokio::test]
    async fn ending_live_calls_signals_every_slot_and_nothing_before() {
        let t = CallTracker::new(5);
        let (a, b) = (t.try_acquire("a").unwrap(), t.try_acquire("b").unwrap());
        let (sa, sb) = (a.shutdown(), b.shutdown());
        assert!(!sa.is_cancelled() && !sb.is_cancelled());
        drop(b); // a finished call's signal is simply gone
        t.start_draining();
        assert!(!sa.is_cancelled(), "draining alone lets calls run to their end");
        t.end_live_calls();
        tokio::time::timeout(std::time::Duration::from_secs(1), sa.cancelled()).await.expect("signalled");
        assert!(sb.is_cancelled());
    }
}
