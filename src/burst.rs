//! Logging that stays readable under a flood: at most one line per second for one kind of
//! event, saying how many more happened in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_secs(1);

/// One kind of event that may come in bursts.
pub(crate) struct Burst {
    start: Instant,
    /// Milliseconds since `start` of the last logged event, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for Burst {
    fn default() -> Burst {
        Burst::new()
    }
}

impl Burst {
    pub(crate) fn new() -> Burst {
        Burst {
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log this event now; if so, how many were suppressed since the last one.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now < last + PERIOD.as_millis() as u64 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Suffix for a log line: how many similar events were not logged.
pub(crate) fn more(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since the last report)")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_per_period_counting_the_rest() {
        let b = super::Burst::new();
        assert_eq!(b.allow(), Some(0));
        for _ in 0..100 {
            assert_eq!(b.allow(), None);
        }
        assert_eq!(super::more(0), "");
        assert!(super::more(100).contains("100 more"));
    }
}
