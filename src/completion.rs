//! One-shot completions: the result of a send, request, release or submitted task.
//!
//! A [`Completion`] is the waiting half; the library holds the completing half. Every
//! completion the library hands out is completed exactly once — with a value, or with an
//! error when the node closes — so a `wait()` never hangs past `close()`.
//!
//! The waiting methods follow `crossbeam-channel`: [`Completion::wait`] blocks,
//! [`Completion::wait_timeout`] and [`Completion::wait_deadline`] give the completion back
//! when time runs out so you can wait again, and [`Completion::try_wait`] never blocks.

use std::fmt;
use std::time::{Duration, Instant};

use crate::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A callback registered with [`Completion::on_complete`], run by the completer.
type Callback<T> = Box<dyn FnOnce(T) + Send>;

enum Slot<T> {
    Pending,
    Ready(T),
    Taken,
    /// Nobody waits: the completer hands the value to this callback.
    Callback(Callback<T>),
}

struct State<T> {
    slot: Slot<T>,
    /// Threads blocked in a wait: only then does completing need a (system-call) wake-up.
    waiting: usize,
}

impl<T> std::ops::Deref for State<T> {
    type Target = Slot<T>;
    fn deref(&self) -> &Slot<T> {
        &self.slot
    }
}

impl<T> std::ops::DerefMut for State<T> {
    fn deref_mut(&mut self) -> &mut Slot<T> {
        &mut self.slot
    }
}

struct Shared<T> {
    slot: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A poisoned lock only means another thread panicked while holding it; the slot
        // itself is always in a consistent state, so keep going.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The waiting half of a one-shot result.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use libchirp::Completion;
///
/// let (completion, completer) = Completion::pair();
/// std::thread::spawn(move || completer.complete(42));
/// assert_eq!(completion.wait(), 42);
///
/// let done = Completion::ready("now");
/// assert!(done.is_ready());
/// assert_eq!(done.wait_timeout(Duration::from_millis(1)).ok(), Some("now"));
/// ```
#[must_use = "a completion does nothing unless waited on; dropping it is allowed"]
pub struct Completion<T> {
    shared: Arc<Shared<T>>,
}

/// The completing half of a [`Completion`].
///
/// Completing consumes it. Dropping it without completing leaves the waiter pending, so the
/// library wraps every completer in an owner whose `Drop` completes it with an error.
pub struct Completer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Completion<T> {
    /// Creates a connected pair: the completion to wait on and the completer to fulfil it.
    pub fn pair() -> (Completion<T>, Completer<T>) {
        let shared = Arc::new(Shared {
            slot: Mutex::new(State {
                slot: Slot::Pending,
                waiting: 0,
            }),
            ready: Condvar::new(),
        });
        (
            Completion {
                shared: shared.clone(),
            },
            Completer { shared },
        )
    }

    /// A completion that already holds its value.
    pub fn ready(value: T) -> Completion<T> {
        Completion {
            shared: Arc::new(Shared {
                slot: Mutex::new(State {
                    slot: Slot::Ready(value),
                    waiting: 0,
                }),
                ready: Condvar::new(),
            }),
        }
    }

    /// True when the value is available (a `wait` would not block).
    pub fn is_ready(&self) -> bool {
        matches!(**self.shared.lock(), Slot::Ready(_))
    }

    /// Blocks until the value is available and returns it.
    pub fn wait(self) -> T {
        let mut slot = self.shared.lock();
        loop {
            if let Some(v) = take(&mut slot) {
                return v;
            }
            slot.waiting += 1;
            slot = self
                .shared
                .ready
                .wait(slot)
                .unwrap_or_else(|e| e.into_inner());
            slot.waiting -= 1;
        }
    }

    /// Waits at most `timeout`; on time-out the completion is handed back to wait again.
    pub fn wait_timeout(self, timeout: Duration) -> Result<T, Completion<T>> {
        // Ready already (the common case of a pipelining sender): no clock read.
        let me = match self.try_wait() {
            Ok(v) => return Ok(v),
            Err(me) => me,
        };
        match Instant::now().checked_add(timeout) {
            Some(deadline) => me.wait_deadline(deadline),
            None => Ok(me.wait()),
        }
    }

    /// Waits until `deadline`; on time-out the completion is handed back to wait again.
    pub fn wait_deadline(self, deadline: Instant) -> Result<T, Completion<T>> {
        {
            let mut slot = self.shared.lock();
            loop {
                if let Some(v) = take(&mut slot) {
                    return Ok(v);
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                slot.waiting += 1;
                slot = self
                    .shared
                    .ready
                    .wait_timeout(slot, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                slot.waiting -= 1;
            }
        }
        Err(self)
    }

    /// Returns the value if it is available, otherwise hands the completion back.
    pub fn try_wait(self) -> Result<T, Completion<T>> {
        let v = take(&mut self.shared.lock());
        v.ok_or(self)
    }

    /// Instead of waiting, has `f` called with the value: at once, on this thread, if the
    /// value is available already; otherwise on the thread that completes it — one of the
    /// node's I/O threads, so `f` must be short and must not block (hand the value to a
    /// channel, for example). This is how an event loop or a language binding learns of
    /// completions without a thread blocked on each.
    ///
    /// ```
    /// use libchirp::Completion;
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let (completion, completer) = Completion::pair();
    /// completion.on_complete(move |v: u32| tx.send(v).unwrap());
    /// std::thread::spawn(move || completer.complete(7));
    /// assert_eq!(rx.recv().unwrap(), 7);
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// Completion::ready("now").on_complete(move |v| tx.send(v).unwrap());
    /// assert_eq!(rx.try_recv().unwrap(), "now");
    /// ```
    pub fn on_complete(self, f: impl FnOnce(T) + Send + 'static) {
        let mut state = self.shared.lock();
        match std::mem::replace(&mut state.slot, Slot::Taken) {
            Slot::Ready(v) => {
                drop(state);
                f(v);
            }
            // A `Completion` is consumed by whatever takes its value or registers a
            // callback, so while one exists the slot is pending or ready.
            Slot::Pending | Slot::Taken | Slot::Callback(_) => {
                state.slot = Slot::Callback(Box::new(f));
            }
        }
    }
}

fn take<T>(slot: &mut Slot<T>) -> Option<T> {
    // Checked first: a slot that is not ready stays where it is (no copy out and back).
    if !matches!(slot, Slot::Ready(_)) {
        return None;
    }
    match std::mem::replace(slot, Slot::Taken) {
        Slot::Ready(v) => Some(v),
        _ => None,
    }
}

impl<T> Completer<T> {
    /// Stores the value and wakes the waiter.
    pub fn complete(self, value: T) {
        let mut state = self.shared.lock();
        // Checked before it is moved: moving a pending slot out and back costs two copies
        // of the whole slot (a send's result is a few hundred bytes).
        if matches!(state.slot, Slot::Callback(_)) {
            if let Slot::Callback(f) = std::mem::replace(&mut state.slot, Slot::Taken) {
                drop(state);
                f(value);
            }
            return;
        }
        if Arc::strong_count(&self.shared) == 1 {
            // Nobody can wait any more (and nobody registered a callback, which is
            // stored in the slot): drop the value outside the lock.
            drop(state);
            drop(value);
            return;
        }
        state.slot = Slot::Ready(value);
        let wake = state.waiting > 0;
        drop(state);
        if wake {
            self.shared.ready.notify_all();
        }
    }
}

impl<T> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match **self.shared.lock() {
            Slot::Pending => "pending",
            Slot::Ready(_) => "ready",
            Slot::Taken => "taken",
            Slot::Callback(_) => "pending (callback registered)",
        };
        f.debug_struct("Completion").field("state", &state).finish()
    }
}

impl<T> fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeout_hands_back_then_completes() {
        let (c, done) = Completion::<u32>::pair();
        let c = c.wait_timeout(Duration::from_millis(5)).unwrap_err();
        let c = c.try_wait().unwrap_err();
        assert!(!c.is_ready());
        let t = std::thread::spawn(move || done.complete(7));
        assert_eq!(c.wait(), 7);
        t.join().unwrap();
    }
}

/// Loom models (`scripts/loom.sh`): every interleaving of a completer and a waiter, with
/// the production code above built on loom's `Mutex`, `Condvar` and `Arc`.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    /// A value that counts its drops, to check it is dropped exactly once wherever it ends.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn loom_complete_races_wait() {
        loom::model(|| {
            let (c, done) = Completion::<u32>::pair();
            let t = thread::spawn(move || done.complete(7));
            assert_eq!(c.wait(), 7);
            t.join().unwrap();
        });
    }

    #[test]
    fn loom_complete_races_try_wait_then_wait() {
        loom::model(|| {
            let (c, done) = Completion::<u32>::pair();
            let t = thread::spawn(move || done.complete(7));
            let v = match c.try_wait() {
                Ok(v) => v,
                Err(c) => {
                    let _ = c.is_ready();
                    c.wait()
                }
            };
            assert_eq!(v, 7);
            t.join().unwrap();
        });
    }

    /// A deadline that has passed: the waiter either takes the value or is handed the
    /// completion back, and then always gets the value; never both, never neither.
    #[test]
    fn loom_complete_races_an_expired_wait_deadline() {
        loom::model(|| {
            let (c, done) = Completion::<u32>::pair();
            let t = thread::spawn(move || done.complete(7));
            let v = match c.wait_deadline(Instant::now()) {
                Ok(v) => v,
                Err(c) => c.wait(),
            };
            assert_eq!(v, 7);
            t.join().unwrap();
        });
    }

    /// loom's timed wait never times out, so this checks the waiting branch of
    /// `wait_timeout`: it ends with the value however the completion interleaves.
    #[test]
    fn loom_complete_races_wait_timeout() {
        loom::model(|| {
            let (c, done) = Completion::<u32>::pair();
            let t = thread::spawn(move || done.complete(7));
            let v = c
                .wait_timeout(Duration::from_secs(3600))
                .unwrap_or_else(|c| c.wait());
            assert_eq!(v, 7);
            t.join().unwrap();
        });
    }

    /// A callback registered while the value arrives: it runs exactly once, with the
    /// value, on whichever thread came second.
    #[test]
    fn loom_on_complete_races_complete() {
        loom::model(|| {
            let calls = Arc::new(AtomicUsize::new(0));
            let (c, done) = Completion::<u32>::pair();
            let t = thread::spawn(move || done.complete(7));
            let seen = calls.clone();
            c.on_complete(move |v| {
                assert_eq!(v, 7);
                seen.fetch_add(1, Ordering::SeqCst);
            });
            t.join().unwrap();
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        });
    }

    /// The waiter gives up (drops its completion) while the value arrives: the value is
    /// dropped exactly once, by whichever side holds it last.
    #[test]
    fn loom_dropping_the_completion_races_complete() {
        loom::model(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let (c, done) = Completion::<Counted>::pair();
            let value = Counted(drops.clone());
            let t = thread::spawn(move || done.complete(value));
            drop(c);
            t.join().unwrap();
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        });
    }

    /// Two threads waiting on two completions completed from a third: nobody sleeps
    /// through its wake-up (the `waiting` count and `notify_all` agree).
    #[test]
    fn loom_two_waiters_two_completions() {
        loom::model(|| {
            let (a, da) = Completion::<u32>::pair();
            let (b, db) = Completion::<u32>::pair();
            let t = thread::spawn(move || {
                da.complete(1);
                db.complete(2);
            });
            let w = thread::spawn(move || b.wait());
            assert_eq!(a.wait(), 1);
            assert_eq!(w.join().unwrap(), 2);
            t.join().unwrap();
        });
    }
}
