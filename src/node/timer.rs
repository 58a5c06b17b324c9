//! One housekeeping thread per node runs every timed event: garbage collection, reconnect
//! debounce, ACK deadlines and request deadlines.
//!
//! Deadlines sit in a heap. Scheduling wakes the thread only when the new deadline is
//! earlier than the one it is already sleeping towards, so the steady stream of
//! "now + timeout" deadlines costs no wake-ups.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::proto::remote::Timer;

/// A timed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Gc,
    /// Publish the statistics through the `metrics` facade.
    #[cfg(feature = "metrics")]
    Metrics,
    /// One of a remote's timers.
    Remote(Timer),
    /// A retired connection's time to close is up.
    Retire(u64),
    Request(u64, crate::message::Identity),
}

struct Entry {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest first.
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

struct Inner {
    heap: BinaryHeap<Entry>,
    seq: u64,
    /// The instant the thread sleeps towards (None: sleeping without deadline or busy).
    planned: Option<Instant>,
    sleeping: bool,
    stop: bool,
}

/// The timer heap shared between the node and its housekeeping thread.
pub(crate) struct Timers {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers {
            inner: Mutex::new(Inner {
                heap: BinaryHeap::new(),
                seq: 0,
                planned: None,
                sleeping: false,
                stop: false,
            }),
            cv: Condvar::new(),
        }
    }

    /// Schedules `event` at `at`.
    pub(crate) fn schedule(&self, at: Instant, event: Event) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.seq += 1;
        let seq = g.seq;
        g.heap.push(Entry { at, seq, event });
        let wake = g.sleeping && g.planned.map_or(true, |p| at < p);
        drop(g);
        if wake {
            self.cv.notify_one();
        }
    }

    /// Stops the thread running [`Timers::run`].
    pub(crate) fn stop(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.stop = true;
        g.heap.clear();
        drop(g);
        self.cv.notify_all();
    }

    /// Runs due events through `fire` until stopped.
    pub(crate) fn run(&self, mut fire: impl FnMut(Event)) {
        let mut due = Vec::new();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.stop {
                return;
            }
            let now = Instant::now();
            while g.heap.peek().is_some_and(|e| e.at <= now) {
                due.push(g.heap.pop().expect("peeked").event);
            }
            if !due.is_empty() {
                drop(g);
                for ev in due.drain(..) {
                    fire(ev);
                }
                g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            g.planned = g.heap.peek().map(|e| e.at);
            g.sleeping = true;
            g = match g.planned {
                Some(at) => {
                    self.cv
                        .wait_timeout(g, at.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
            };
            g.sleeping = false;
            g.planned = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn events_fire_in_deadline_order_and_stop_ends_the_thread() {
        let timers = Arc::new(Timers::new());
        let (tx, rx) = crossbeam_channel::unbounded();
        let t = {
            let timers = timers.clone();
            std::thread::spawn(move || timers.run(|ev| tx.send(ev).unwrap()))
        };
        let now = Instant::now();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        timers.schedule(
            now + Duration::from_millis(60),
            Event::Remote(Timer::Debounce((ip, 2))),
        );
        timers.schedule(
            now + Duration::from_millis(20),
            Event::Remote(Timer::Debounce((ip, 1))),
        );
        timers.schedule(now, Event::Gc);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(rx.recv_deadline(deadline).unwrap(), Event::Gc);
        assert_eq!(
            rx.recv_deadline(deadline).unwrap(),
            Event::Remote(Timer::Debounce((ip, 1)))
        );
        assert_eq!(
            rx.recv_deadline(deadline).unwrap(),
            Event::Remote(Timer::Debounce((ip, 2)))
        );
        assert!(now.elapsed() >= Duration::from_millis(60));
        timers.stop();
        t.join().unwrap();
    }
}
