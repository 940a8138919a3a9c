//! CallTracker: the per-process slot limiter (contract §1, §13.1, §13.4).
//!
//! A slot is taken atomically *before* any side effect and released by an RAII guard, so every
//! exit path — normal end, error, a panicking task, a vanished client — gives it back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Inner {
    max: u64,
    active: AtomicU64,
    draining: AtomicBool,
    idle: tokio::sync::Notify,
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
}

impl CallTracker {
    pub fn new(max: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                max,
                active: AtomicU64::new(0),
                draining: AtomicBool::new(false),
                idle: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Take a slot for `call_id`, or `None` at capacity or while draining.
    pub fn try_acquire(&self, call_id: impl Into<String>) -> Option<CallSlot> {
        if self.inner.draining.load(Ordering::Acquire) {
            return None;
        }
        let max = self.inner.max;
        self.inner.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        metrics::gauge!("cxb_active_calls").set(self.active() as f64);
        Some(CallSlot { inner: self.inner.clone(), id: call_id.into() })
    }

    pub fn active(&self) -> u64 {
        self.inner.active.load(Ordering::Acquire)
    }

    pub fn max(&self) -> u64 {
        self.inner.max
    }

    pub fn available(&self) -> u64 {
        self.inner.max.saturating_sub(self.active())
    }

    /// Stop accepting calls (SIGTERM).
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Wait until no call holds a slot.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl CallSlot {
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let left = self.inner.active.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("cxb_active_calls").set(left as f64);
        if left == 0 {
            self.inner.idle.notify_waiters();
        }
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
        assert!(t.try_acquire("c").is_none());
        assert_eq!(t.available(), 0);
        drop(a);
        assert_eq!(t.active(), 1);
        assert!(t.try_acquire("c").is_some());
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
        assert!(t.try_acquire("q").is_some());
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
                        if let Some(slot) = t.try_acquire(format!("{i}-{j}")) {
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
    fn draining_refuses_new_calls() {
        let t = CallTracker::new(5);
        t.start_draining();
        assert!(t.try_acquire("x").is_none());
    }
}
