//! Context bookkeeping every streaming TTS client needs: which contexts (bot turns) are live,
//! with the client's own state for each, and which ended recently. A cancelled, failed or
//! finished context must stay dead: commands the driver sends for it afterwards (a cancel racing
//! the end of synthesis, a flush behind a failure) and audio the server still sends for it are
//! dropped, never a reason to open it again.

use std::collections::{HashMap, VecDeque};

/// Ended contexts remembered. A call ends a handful of turns at a time, and anything older than
/// this has long gone quiet.
const REMEMBERED_CLOSED: usize = 64;

/// Live contexts with per-context state `T`, and a bounded ring of closed context ids.
pub(crate) struct Contexts<T> {
    live: HashMap<String, T>,
    closed: VecDeque<String>,
}

impl<T> Default for Contexts<T> {
    fn default() -> Self {
        Self { live: HashMap::new(), closed: VecDeque::with_capacity(REMEMBERED_CLOSED) }
    }
}

impl<T> Contexts<T> {
    /// Ended recently: its commands and messages are to be dropped.
    pub(crate) fn is_closed(&self, context_id: &str) -> bool {
        self.closed.iter().any(|c| c == context_id)
    }

    pub(crate) fn is_live(&self, context_id: &str) -> bool {
        self.live.contains_key(context_id)
    }

    /// Any context waiting for audio.
    pub(crate) fn any_live(&self) -> bool {
        !self.live.is_empty()
    }

    pub(crate) fn get(&self, context_id: &str) -> Option<&T> {
        self.live.get(context_id)
    }

    pub(crate) fn get_mut(&mut self, context_id: &str) -> Option<&mut T> {
        self.live.get_mut(context_id)
    }

    /// The live context's state, opening it with `open` first if it is not live. The caller
    /// checks [`Self::is_closed`] before: a closed context is not to be reopened.
    pub(crate) fn get_or_open(&mut self, context_id: &str, open: impl FnOnce() -> T) -> &mut T {
        self.live.entry(context_id.to_string()).or_insert_with(open)
    }

    /// The context ended (done, failed or cancelled): no longer live, and remembered as closed.
    /// Returns its state if it was live.
    pub(crate) fn close(&mut self, context_id: &str) -> Option<T> {
        if !self.is_closed(context_id) {
            if self.closed.len() == REMEMBERED_CLOSED {
                self.closed.pop_front();
            }
            self.closed.push_back(context_id.to_string());
        }
        self.live.remove(context_id)
    }

    /// Drop every live context's state (the session is ending).
    pub(crate) fn clear(&mut self) {
        self.live.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_context_stays_closed_and_the_ring_is_bounded() {
        let mut c: Contexts<u32> = Contexts::default();
        *c.get_or_open("u1", || 0) += 1;
        *c.get_or_open("u1", || 0) += 1;
        assert_eq!(c.get("u1"), Some(&2));
        assert!(c.any_live() && c.is_live("u1") && !c.is_closed("u1"));
        assert_eq!(c.close("u1"), Some(2));
        assert!(!c.any_live() && c.is_closed("u1"));
        // Closing again (a cancel after done) changes nothing and is not remembered twice.
        assert_eq!(c.close("u1"), None);
        assert_eq!(c.closed.len(), 1);
        for i in 0..REMEMBERED_CLOSED {
            c.close(&format!("x{i}"));
        }
        assert_eq!(c.closed.len(), REMEMBERED_CLOSED);
        assert!(!c.is_closed("u1"), "the oldest is forgotten");
        assert!(c.is_closed(&format!("x{}", REMEMBERED_CLOSED - 1)));
        c.get_or_open("u2", || 7);
        c.clear();
        assert!(!c.any_live() && c.get_mut("u2").is_none());
    }
}
