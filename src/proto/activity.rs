//! Whether a connection is idle, for garbage collection. A connection is *active* while it
//! moves bytes either way (a large message being written or read counts, long before its
//! frame is complete) and while it is held back by backpressure (received messages hold
//! its slots or wait in its park): such a connection is never collected.
//!
//! The driver reads the bytes the peer has moved so far (in the node, the kernel's
//! `TCP_INFO` counters: nothing is counted per message) and asks [`Activity::idle_for`]
//! when it collects: a count that changed since the last look means the connection was
//! active then.

use std::time::{Duration, Instant};

/// When a connection was last seen active.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Activity {
    last: Instant,
    bytes: u64,
}

impl Activity {
    /// A connection active now, having moved `bytes` so far.
    pub(crate) fn new(now: Instant, bytes: u64) -> Activity {
        Activity { last: now, bytes }
    }

    /// A frame was written or received.
    pub(crate) fn touch(&mut self, now: Instant) {
        self.last = self.last.max(now);
    }

    /// How long the connection has been idle at `now`, given the bytes it has moved so far
    /// and whether received messages hold its slots or wait in its park (`held`).
    pub(crate) fn idle_for(&mut self, now: Instant, bytes: u64, held: bool) -> Duration {
        if held || bytes != self.bytes {
            self.bytes = bytes;
            self.touch(now);
        }
        now.saturating_duration_since(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_bytes_or_holding_slots_keeps_a_connection_active() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut a = Activity::new(t0, 0);
        assert_eq!(a.idle_for(t0 + s, 0, false), s, "nothing moved");
        assert_eq!(
            a.idle_for(t0 + 2 * s, 10, false),
            Duration::ZERO,
            "bytes moved"
        );
        assert_eq!(a.idle_for(t0 + 5 * s, 10, true), Duration::ZERO, "held");
        assert_eq!(a.idle_for(t0 + 7 * s, 10, false), 2 * s, "idle again");
        a.touch(t0 + 8 * s);
        assert_eq!(a.idle_for(t0 + 8 * s, 10, false), Duration::ZERO, "a frame");
    }
}
