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
use std::mem::ManuallyDrop;
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

impl<T> Slot<T> {
    /// Stores `value` (the slot was pending). Assigning would call the slot's drop glue
    /// out of line for the old value, which costs more than all the rest of completing.
    #[inline]
    fn fill(&mut self, value: T) {
        match self {
            Slot::Pending | Slot::Taken => {
                // SAFETY: these variants own nothing, so overwriting without dropping
                // leaks nothing; `self` is a valid, exclusive place.
                unsafe { std::ptr::write(self, Slot::Ready(value)) }
            }
            _ => *self = Slot::Ready(value),
        }
    }

    /// Makes the slot pending again (see [`Slot::fill`] for why not by assigning).
    #[cfg(not(loom))]
    #[inline]
    fn reset(&mut self) {
        match self {
            Slot::Pending => {}
            Slot::Taken => {
                // SAFETY: as in `fill`: `Taken` owns nothing.
                unsafe { std::ptr::write(self, Slot::Pending) }
            }
            _ => *self = Slot::Pending,
        }
    }
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

pub(crate) struct Shared<T> {
    slot: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Shared<T> {
    fn new(slot: Slot<T>) -> Shared<T> {
        Shared {
            slot: Mutex::new(State { slot, waiting: 0 }),
            ready: Condvar::new(),
        }
    }
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
    shared: Handle<T>,
}

/// The waiting side's reference to the shared slot. Dropped, it gives the allocation back
/// to the dropping thread's [`Pool`] (for completions made by [`pooled_pair`]).
struct Handle<T> {
    /// Always present; `ManuallyDrop` only so that `Drop` can hand it to `give_back`.
    arc: ManuallyDrop<Arc<Shared<T>>>,
    #[cfg_attr(loom, allow(dead_code))]
    give_back: Option<fn(Arc<Shared<T>>)>,
}

impl<T> std::ops::Deref for Handle<T> {
    type Target = Arc<Shared<T>>;
    fn deref(&self) -> &Arc<Shared<T>> {
        &self.arc
    }
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        // SAFETY: `arc` is taken out exactly once, here, and `self` is not used after
        // `drop` returns.
        let arc = unsafe { ManuallyDrop::take(&mut self.arc) };
        #[cfg(not(loom))]
        if let Some(give_back) = self.give_back {
            give_back(arc);
            return;
        }
        drop(arc);
    }
}

/// A result type whose completions are recycled: `with_pool` runs `f` on the calling
/// thread's [`Pool`] of them (declare it with `thread_local!`), or returns `None` when
/// that pool is gone (the thread is ending).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) trait Pooled: Sized + 'static {
    fn with_pool<R>(f: impl FnOnce(&Pool<Self>) -> R) -> Option<R>;
}

/// A thread's stock of completion allocations for one result type, so that a thread
/// that sends many messages does not allocate (and free, often after another core
/// touched it) a completion for each: a completion dropped last goes back into the
/// dropping thread's pool, reset to pending, and the next [`pooled_pair`]
/// on that thread takes it from there. A pool keeps at most [`Pool::KEEP`]
/// allocations; what it keeps is freed when its thread ends.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct Pool<T>(std::cell::RefCell<Vec<Arc<Shared<T>>>>);

#[cfg_attr(loom, allow(dead_code))]
impl<T> Pool<T> {
    /// At most this many allocations are kept per thread and result type: a window of
    /// outstanding sends gives them back about as fast as it takes them.
    pub(crate) const KEEP: usize = 256;

    /// An empty pool, for a `thread_local!`.
    pub(crate) const fn new() -> Pool<T> {
        Pool(std::cell::RefCell::new(Vec::new()))
    }

    /// A recycled allocation: pending, nobody waiting, referred to by nothing else.
    #[cfg(not(loom))]
    fn take(&self) -> Option<Arc<Shared<T>>> {
        self.0.try_borrow_mut().ok()?.pop()
    }

    /// Keeps `shared` if nothing else refers to it any more (it is reset to pending) and
    /// there is room; otherwise it is simply dropped.
    #[cfg(not(loom))]
    fn put(&self, mut shared: Arc<Shared<T>>) {
        let Some(s) = Arc::get_mut(&mut shared) else {
            return;
        };
        // A poisoned lock is not worth keeping.
        let Ok(state) = s.slot.get_mut() else {
            return;
        };
        state.slot.reset();
        state.waiting = 0;
        if let Ok(mut kept) = self.0.try_borrow_mut() {
            if kept.len() < Self::KEEP {
                kept.push(shared);
            }
        }
    }
}

#[cfg(not(loom))]
fn give_back<T: Pooled>(shared: Arc<Shared<T>>) {
    // Without a pool (the thread is ending) the closure is dropped, and `shared` with it.
    let _ = T::with_pool(move |p| p.put(shared));
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
        Completion::pair_of(Arc::new(Shared::new(Slot::Pending)), None)
    }

    fn pair_of(
        shared: Arc<Shared<T>>,
        give_back: Option<fn(Arc<Shared<T>>)>,
    ) -> (Completion<T>, Completer<T>) {
        (
            Completion {
                shared: Handle {
                    arc: ManuallyDrop::new(shared.clone()),
                    give_back,
                },
            },
            Completer { shared },
        )
    }

    /// A completion that already holds its value.
    pub fn ready(value: T) -> Completion<T> {
        Completion {
            shared: Handle {
                arc: ManuallyDrop::new(Arc::new(Shared::new(Slot::Ready(value)))),
                give_back: None,
            },
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

/// [`Completion::pair`] with the allocation taken from this thread's [`Pool`] when it
/// has one; the completion gives it back to the pool of the thread that drops it, when
/// nothing else refers to it any more. Under loom nothing is recycled (an allocation
/// would carry one model execution's state into the next).
pub(crate) fn pooled_pair<T: Pooled>() -> (Completion<T>, Completer<T>) {
    #[cfg(not(loom))]
    {
        let shared = T::with_pool(Pool::take)
            .flatten()
            .unwrap_or_else(|| Arc::new(Shared::new(Slot::Pending)));
        Completion::pair_of(shared, Some(give_back::<T>))
    }
    #[cfg(loom)]
    Completion::pair()
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
        state.slot.fill(value);
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

    /// A result type with its own pool, and a count of its values' drops.
    struct Counted(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    std::thread_local! {
        static COUNTED: Pool<Counted> = const { Pool::new() };
    }

    impl Pooled for Counted {
        fn with_pool<R>(f: impl FnOnce(&Pool<Self>) -> R) -> Option<R> {
            COUNTED.try_with(f).ok()
        }
    }

    fn kept() -> usize {
        Counted::with_pool(|p| p.0.borrow().len()).expect("the pool is there")
    }

    fn counted() -> (Counted, Arc<std::sync::atomic::AtomicUsize>) {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (Counted(n.clone()), n)
    }

    #[test]
    fn a_pooled_completion_is_reused_pending_and_its_value_dropped_once() {
        let before = kept();
        let (c, done) = pooled_pair::<Counted>();
        let first = Arc::as_ptr(&c.shared);
        let (v, drops) = counted();
        done.complete(v);
        // Dropped ready, without waiting: the value goes with the reset, exactly once.
        drop(c);
        assert_eq!(
            drops.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "value drops"
        );
        assert_eq!(kept(), before + 1, "the allocation went back to the pool");
        let (c, done) = pooled_pair::<Counted>();
        assert_eq!(Arc::as_ptr(&c.shared), first, "the next pair reuses it");
        assert_eq!(kept(), before);
        assert!(!c.is_ready(), "a reused completion starts pending: {c:?}");
        let c = c.try_wait().map(|_| ()).expect_err("nothing to take yet");
        let (v, drops) = counted();
        done.complete(v);
        let got = c.wait();
        assert_eq!(
            drops.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "waited value alive"
        );
        drop(got);
        assert_eq!(
            drops.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "value drops"
        );
        assert_eq!(kept(), before + 1, "given back again after the wait");
    }

    #[test]
    fn a_completion_still_shared_is_not_pooled() {
        let before = kept();
        let (c, done) = pooled_pair::<Counted>();
        drop(c);
        assert_eq!(kept(), before, "the completer still refers to it");
        let (v, drops) = counted();
        // Nobody waits any more: the value is dropped, and the allocation with it.
        done.complete(v);
        assert_eq!(
            drops.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "value drops"
        );
        assert_eq!(kept(), before, "a completer never pools");
    }

    #[test]
    fn the_pool_keeps_at_most_keep_and_goes_to_the_dropping_thread() {
        let pairs: Vec<_> = (0..Pool::<Counted>::KEEP + 10)
            .map(|_| pooled_pair::<Counted>())
            .collect();
        // Completed and waited on another thread: that thread's pool gets them.
        let other = std::thread::spawn(move || {
            for (c, done) in pairs {
                let (v, _) = counted();
                done.complete(v);
                drop(c.wait());
            }
            kept()
        })
        .join()
        .expect("the other thread ran");
        assert_eq!(other, Pool::<Counted>::KEEP, "kept on the dropping thread");
        assert_eq!(kept(), 0, "nothing came back to this thread");
    }

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
