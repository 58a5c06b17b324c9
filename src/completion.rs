//! One-shot completions: the result of a send, request, release or submitted task.
//!
//! A [`Completion`] is the waiting half; the library holds the completing half. Every
//! completion the library hands out is completed exactly once — with a value, or with an
//! error when the node closes — so a `wait()` never hangs past `close()`.
//!
//! The waiting methods follow `crossbeam-channel`: [`Completion::wait`] blocks,
//! [`Completion::wait_timeout`] and [`Completion::wait_deadline`] give the completion back
//! when time runs out so you can wait again, and [`Completion::try_wait`] never blocks.
//!
//! Inside, a completion is one allocation: a small atomic state, the value's cell, and a
//! lock and condition variable that only a blocking wait or a callback ever takes. So
//! completing a value nobody blocks on is one atomic operation, and so is finding it
//! ready. A send's completion goes further ([`lent_pair`]): the message waits in the
//! completion's own cell from the moment it is sent, the writer reads it from there, and
//! completing it moves nothing.

use std::fmt;
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

use crate::sync::{Arc, AtomicU8, Condvar, Mutex, MutexGuard, Ordering, UnsafeCell};

/// A callback registered with [`Completion::on_complete`], run by the completer.
type Callback<T> = Box<dyn FnOnce(T) + Send>;

// The phase of a completion, the low two bits of its state, says who may touch the cell.
/// Pending, the cell empty: the completing side fills it.
const EMPTY: u8 = 0;
/// Pending, the cell holding the value to be: the completing side reads it and may
/// change it; nobody else touches it.
const LENT: u8 = 1;
/// Complete: the cell holds the value, the waiting side's to take.
const READY: u8 = 2;
/// Complete, and the value taken (or handed to a callback).
const TAKEN: u8 = 3;
const PHASE: u8 = 3;
/// A thread blocks (or is about to) in a wait: completing must wake it.
const WAITING: u8 = 4;
/// A callback is registered: completing must run it.
const CALLBACK: u8 = 8;

pub(crate) struct Shared<T> {
    /// Phase and flags. Only the completing side moves the phase on from `EMPTY` or
    /// `LENT` (to `READY`), and only the waiting side (or whoever runs the callback) from
    /// `READY` (to `TAKEN`); the flags are set by the waiting side, holding `callback`.
    state: AtomicU8,
    value: UnsafeCell<Option<T>>,
    /// The registered callback. Its lock also orders a waiter going to sleep against the
    /// completer's wake-up; only those slow paths take it.
    callback: Mutex<Option<Callback<T>>>,
    ready: Condvar,
}

// SAFETY: the cell is reached by one side at a time, as the phase in `state` says (see
// each access), and the value moves between threads, hence `T: Send`. The other fields
// are `Sync` already.
unsafe impl<T: Send> Sync for Shared<T> {}

// A panic cannot leave the shared state broken for the other side: the phase changes only
// by single atomic operations, after the cell is written, and the lock ignores poisoning.
// (As when the state sat in a `Mutex`, completions stay unwind-safe.)
impl<T> std::panic::RefUnwindSafe for Shared<T> {}

impl<T> Shared<T> {
    fn new(phase: u8, value: Option<T>) -> Shared<T> {
        Shared {
            state: AtomicU8::new(phase),
            value: UnsafeCell::new(value),
            callback: Mutex::new(None),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Callback<T>>> {
        // A poisoned lock only means a callback panicked; the state is consistent.
        self.callback.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn phase(&self) -> u8 {
        self.state.load(Ordering::Acquire) & PHASE
    }

    /// The value, if it is ready; called by the waiting side (or by whoever runs the
    /// callback, which stands in for it).
    #[inline]
    fn take(&self) -> Option<T> {
        if self.phase() != READY {
            return None;
        }
        // SAFETY: in `READY` the cell is the waiting side's, and the caller is it; the
        // acquire load above saw the completer's release of the value.
        let v = self.value.with_mut(|p| unsafe { (*p).take() });
        // Nobody else changes the state once it is ready.
        self.state.fetch_add(TAKEN - READY, Ordering::Relaxed);
        v
    }

    /// Marks a waiter about to sleep (the caller holds the lock). False when the value
    /// arrived meanwhile: take it instead of sleeping.
    fn announce(&self, flag: u8) -> bool {
        let s = self.state.load(Ordering::Acquire);
        if s & PHASE >= READY {
            return false;
        }
        s & flag != 0
            || self
                .state
                .compare_exchange(s, s | flag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Makes the value in the cell the waiting side's; called by the completing side, in
    /// phase `from`. Wakes a sleeping waiter, or runs the callback.
    #[inline]
    fn publish(&self, from: u8) {
        let old = self.hand_over(from);
        self.follow_up(old);
    }

    /// The first half of [`Shared::publish`]: the value is the waiting side's from here
    /// on. Returns the state before, for [`Shared::follow_up`].
    #[inline]
    fn hand_over(&self, from: u8) -> u8 {
        self.state.fetch_add(READY - from, Ordering::AcqRel)
    }

    /// The second half of [`Shared::publish`], given the state before the hand-over:
    /// wakes a sleeping waiter or runs the callback, if there is one.
    #[inline]
    fn follow_up(&self, old: u8) {
        if old & (CALLBACK | WAITING) == 0 {
            return;
        }
        if old & CALLBACK != 0 {
            // Stored before the flag was set, under the lock.
            let f = self.lock().take();
            if let (Some(f), Some(v)) = (f, self.take()) {
                f(v);
            }
            return;
        }
        // The waiter set `WAITING` holding the lock and holds it until it sleeps, so
        // once the lock is ours it sleeps and the notification reaches it.
        drop(self.lock());
        self.ready.notify_all();
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

/// The waiting side's reference to the shared state. Dropped, it gives the allocation
/// back to the dropping thread's [`Pool`] (for completions made by [`lent_pair`]).
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
/// dropping thread's pool, reset to pending, and the next [`lent_pair`]
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

    /// A recycled allocation: empty, nobody waiting, referred to by nothing else.
    #[cfg(not(loom))]
    fn take(&self) -> Option<Arc<Shared<T>>> {
        self.0.try_borrow_mut().ok()?.pop()
    }

    /// Keeps `shared` if nothing else refers to it any more (it is reset to pending and
    /// its value dropped) and there is room; otherwise it is simply dropped.
    #[cfg(not(loom))]
    fn put(&self, mut shared: Arc<Shared<T>>) {
        let Some(s) = Arc::get_mut(&mut shared) else {
            return;
        };
        // A poisoned lock is not worth keeping.
        let Ok(callback) = s.callback.get_mut() else {
            return;
        };
        *callback = None;
        *s.state.get_mut() = EMPTY;
        // A value nobody took (the completion was dropped unwaited) is dropped here.
        let value = s.value.get_mut();
        if value.is_some() {
            *value = None;
        }
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

/// The completing half of a completion made by [`lent_pair`]: the value to be is in the
/// completion's cell already. The completer reads it ([`Lent::get`]), may change it
/// ([`Lent::complete_with`]), and completes by handing it over, which moves nothing.
///
/// Like a [`Completer`], dropping it without completing leaves the waiter pending; its
/// owner's `Drop` completes it.
pub(crate) struct Lent<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Completion<T> {
    /// Creates a connected pair: the completion to wait on and the completer to fulfil it.
    pub fn pair() -> (Completion<T>, Completer<T>) {
        let shared = Arc::new(Shared::new(EMPTY, None));
        (Completion::of(shared.clone(), None), Completer { shared })
    }

    fn of(shared: Arc<Shared<T>>, give_back: Option<fn(Arc<Shared<T>>)>) -> Completion<T> {
        Completion {
            shared: Handle {
                arc: ManuallyDrop::new(shared),
                give_back,
            },
        }
    }

    /// A completion that already holds its value.
    pub fn ready(value: T) -> Completion<T> {
        Completion::of(Arc::new(Shared::new(READY, Some(value))), None)
    }

    /// True when the value is available (a `wait` would not block).
    pub fn is_ready(&self) -> bool {
        self.shared.phase() == READY
    }

    /// Blocks until the value is available and returns it.
    pub fn wait(self) -> T {
        if let Some(v) = self.shared.take() {
            return v;
        }
        let mut guard = self.shared.lock();
        loop {
            if let Some(v) = self.shared.take() {
                return v;
            }
            if self.shared.announce(WAITING) {
                guard = self
                    .shared
                    .ready
                    .wait(guard)
                    .unwrap_or_else(|e| e.into_inner());
            }
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
        if let Some(v) = self.shared.take() {
            return Ok(v);
        }
        {
            let mut guard = self.shared.lock();
            loop {
                if let Some(v) = self.shared.take() {
                    return Ok(v);
                }
                let now = Instant::now();
                if now >= deadline {
                    // Nobody sleeps any more: spare the completer the wake-up.
                    self.shared.state.fetch_and(!WAITING, Ordering::Relaxed);
                    break;
                }
                if self.shared.announce(WAITING) {
                    guard = self
                        .shared
                        .ready
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        Err(self)
    }

    /// Returns the value if it is available, otherwise hands the completion back.
    pub fn try_wait(self) -> Result<T, Completion<T>> {
        match self.shared.take() {
            Some(v) => Ok(v),
            None => Err(self),
        }
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
        if let Some(v) = self.shared.take() {
            return f(v);
        }
        let mut callback = self.shared.lock();
        *callback = Some(Box::new(f));
        if self.shared.announce(CALLBACK) {
            // The completer runs it.
            return;
        }
        // The value arrived meanwhile: run it here.
        let f = callback.take();
        drop(callback);
        if let (Some(f), Some(v)) = (f, self.shared.take()) {
            f(v);
        }
    }
}

/// A completion whose value to be, `value`, waits in the completion itself until the
/// completer hands it over ([`Lent`]). The allocation is taken from this thread's [`Pool`]
/// when it has one; the completion gives it back to the pool of the thread that drops it,
/// when nothing else refers to it any more. Under loom nothing is recycled (an allocation
/// would carry one model execution's state into the next).
pub(crate) fn lent_pair<T: Pooled>(value: T) -> (Completion<T>, Lent<T>) {
    #[cfg(not(loom))]
    {
        let shared = match T::with_pool(Pool::take).flatten() {
            Some(shared) => {
                // SAFETY: a pooled allocation is referred to by nothing else (`Pool::put`
                // keeps only those), so this thread has the cell and the state to itself;
                // handing the `Arc`s to other threads later publishes both.
                shared
                    .value
                    .with_mut(|p| unsafe { std::ptr::write(p, Some(value)) });
                shared.state.store(LENT, Ordering::Relaxed);
                shared
            }
            None => Arc::new(Shared::new(LENT, Some(value))),
        };
        (
            Completion::of(shared.clone(), Some(give_back::<T>)),
            Lent { shared },
        )
    }
    #[cfg(loom)]
    {
        let shared = Arc::new(Shared::new(LENT, Some(value)));
        (Completion::of(shared.clone(), None), Lent { shared })
    }
}

impl<T> Completer<T> {
    /// Stores the value and wakes the waiter.
    pub fn complete(self, value: T) {
        // SAFETY: in `EMPTY` the cell is the completing side's, and this is it; an empty
        // cell holds `None`, which owns nothing, so nothing is leaked by not dropping it.
        self.shared
            .value
            .with_mut(|p| unsafe { std::ptr::write(p, Some(value)) });
        self.shared.publish(EMPTY);
    }
}

impl<T> Lent<T> {
    /// The value to be, still the completer's.
    #[inline]
    pub(crate) fn get(&self) -> &T {
        // SAFETY: in `LENT` the cell is the completing side's, and it changes only in
        // `complete_with`, which consumes `self`: the reference cannot outlive the phase.
        let v = self.shared.value.with(|p| unsafe { (*p).as_ref() });
        v.expect("a lent completion holds its value until completed")
    }

    /// Hands the value over as it is.
    #[inline]
    pub(crate) fn complete(self) {
        self.shared.publish(LENT);
    }

    /// Hands the value over as it is, but leaves waking the waiter (or running its
    /// callback) to the [`Wake`] returned, if one is owed: a writer that completes a run
    /// of messages wakes their waiter once, at the end, rather than once per message as it
    /// catches up.
    #[inline]
    pub(crate) fn complete_later(self) -> Option<Wake<T>> {
        let old = self.shared.hand_over(LENT);
        (old & (CALLBACK | WAITING) != 0).then(|| Wake {
            shared: self.shared,
            old,
        })
    }

    /// Hands over `f(value, arg)`.
    pub(crate) fn complete_with<A>(self, arg: A, f: impl FnOnce(T, A) -> T) {
        // SAFETY: as in `get`; `self` is consumed, so no reference from `get` is alive.
        self.shared.value.with_mut(|p| unsafe {
            if let Some(v) = (*p).take() {
                std::ptr::write(p, Some(f(v, arg)));
            }
        });
        self.shared.publish(LENT);
    }
}

/// A wake-up owed after [`Lent::complete_later`]: dropping it wakes the waiter, or runs
/// the callback.
pub(crate) struct Wake<T> {
    shared: Arc<Shared<T>>,
    old: u8,
}

impl<T> Drop for Wake<T> {
    fn drop(&mut self) {
        self.shared.follow_up(self.old);
    }
}

impl<T> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shared.state.load(Ordering::Acquire);
        let state = match s & PHASE {
            READY => "ready",
            TAKEN => "taken",
            _ if s & CALLBACK != 0 => "pending (callback registered)",
            _ => "pending",
        };
        f.debug_struct("Completion").field("state", &state).finish()
    }
}

impl<T> fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Lent<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result type with its own pool, and a count of its values' drops.
    struct Counted(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
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
        let (v, drops) = counted();
        let (c, done) = lent_pair(v);
        let first = Arc::as_ptr(&c.shared);
        assert!(!c.is_ready(), "lent, not yet handed over: {c:?}");
        done.complete();
        // Dropped ready, without waiting: the value goes with the reset, exactly once.
        drop(c);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "value drops");
        assert_eq!(kept(), before + 1, "the allocation went back to the pool");
        let (v, drops) = counted();
        let (c, done) = lent_pair(v);
        assert_eq!(Arc::as_ptr(&c.shared), first, "the next pair reuses it");
        assert_eq!(kept(), before);
        assert!(!c.is_ready(), "a reused completion starts pending: {c:?}");
        let c = c.try_wait().map(|_| ()).expect_err("nothing to take yet");
        assert_eq!(drops.load(Ordering::SeqCst), 0, "the lent value is alive");
        done.complete();
        let got = c.wait();
        assert_eq!(drops.load(Ordering::SeqCst), 0, "waited value alive");
        drop(got);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "value drops");
        assert_eq!(kept(), before + 1, "given back again after the wait");
    }

    #[test]
    fn a_lent_value_is_read_changed_and_handed_over_once() {
        let (v, drops) = counted();
        let (c, done) = lent_pair(v);
        assert!(
            Arc::ptr_eq(&done.get().0, &drops),
            "get reads the lent value"
        );
        let (other, other_drops) = counted();
        // The completer swaps in another value (as a failed send wraps its message).
        done.complete_with(other, |old, new| {
            drop(old);
            new
        });
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "the old value dropped once"
        );
        let got = c.try_wait().map_err(|c| format!("{c:?}")).expect("ready");
        assert!(Arc::ptr_eq(&got.0, &other_drops), "the new value arrived");
        drop(got);
        assert_eq!(other_drops.load(Ordering::SeqCst), 1, "new value drops");
    }

    #[test]
    fn a_completion_still_shared_is_not_pooled() {
        let before = kept();
        let (v, drops) = counted();
        let (c, done) = lent_pair(v);
        drop(c);
        assert_eq!(kept(), before, "the completer still refers to it");
        assert_eq!(drops.load(Ordering::SeqCst), 0, "the lent value is alive");
        // Nobody waits any more: the value is dropped with the allocation.
        done.complete();
        assert_eq!(drops.load(Ordering::SeqCst), 1, "value drops");
        assert_eq!(kept(), before, "a completer never pools");
    }

    #[test]
    fn the_pool_keeps_at_most_keep_and_goes_to_the_dropping_thread() {
        let pairs: Vec<_> = (0..Pool::<Counted>::KEEP + 10)
            .map(|_| lent_pair(counted().0))
            .collect();
        // Completed and waited on another thread: that thread's pool gets them.
        let other = std::thread::spawn(move || {
            for (c, done) in pairs {
                done.complete();
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
    fn a_callback_runs_once_on_whichever_side_comes_second() {
        for callback_first in [true, false] {
            let (tx, rx) = std::sync::mpsc::channel();
            let (c, done) = Completion::<u32>::pair();
            if callback_first {
                c.on_complete(move |v| tx.send(v).expect("receiver alive"));
                assert!(rx.try_recv().is_err(), "not run before the value");
                done.complete(5);
            } else {
                done.complete(5);
                c.on_complete(move |v| tx.send(v).expect("receiver alive"));
            }
            assert_eq!(
                rx.try_recv().ok(),
                Some(5),
                "callback first: {callback_first}"
            );
            assert!(
                rx.try_recv().is_err(),
                "run once (callback first: {callback_first})"
            );
        }
    }

    #[test]
    fn a_timed_out_wait_leaves_no_waiter_flag_behind() {
        let (c, done) = Completion::<u32>::pair();
        let c = c.wait_timeout(Duration::from_millis(1)).unwrap_err();
        let s = c.shared.state.load(Ordering::SeqCst);
        assert_eq!(s & WAITING, 0, "state after the time-out: {s:#b}");
        done.complete(3);
        assert_eq!(c.wait(), 3);
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

    impl Pooled for Counted {
        fn with_pool<R>(_f: impl FnOnce(&Pool<Self>) -> R) -> Option<R> {
            None
        }
    }

    /// A lent value (a send's message) read by the completer while the waiter goes to
    /// sleep, then handed over: the waiter wakes with it, and it is dropped once.
    #[test]
    fn loom_lent_complete_races_wait() {
        loom::model(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let (c, done) = lent_pair(Counted(drops.clone()));
            let seen = drops.clone();
            let t = thread::spawn(move || {
                assert!(Arc::ptr_eq(&done.get().0, &seen), "the completer reads it");
                done.complete();
            });
            let v = c.wait();
            assert_eq!(drops.load(Ordering::SeqCst), 0, "alive while held");
            drop(v);
            t.join().unwrap();
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        });
    }

    /// A lent value changed on completion (a failed send) while a callback is being
    /// registered: the callback runs once, with the changed value; both values are
    /// dropped exactly once.
    #[test]
    fn loom_lent_complete_with_races_on_complete() {
        loom::model(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let calls = Arc::new(AtomicUsize::new(0));
            let (c, done) = lent_pair(Counted(drops.clone()));
            let replacement = Counted(drops.clone());
            let t = thread::spawn(move || {
                done.complete_with(replacement, |old, new| {
                    drop(old);
                    new
                })
            });
            let seen = calls.clone();
            let d = drops.clone();
            c.on_complete(move |v| {
                assert_eq!(d.load(Ordering::SeqCst), 1, "the old value went first");
                drop(v);
                seen.fetch_add(1, Ordering::SeqCst);
            });
            t.join().unwrap();
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            assert_eq!(drops.load(Ordering::SeqCst), 2);
        });
    }

    /// The waiter gives up on a lent completion while it is handed over: the value is
    /// dropped exactly once.
    #[test]
    fn loom_dropping_a_lent_completion_races_complete() {
        loom::model(|| {
            let drops = Arc::new(AtomicUsize::new(0));
            let (c, done) = lent_pair(Counted(drops.clone()));
            let t = thread::spawn(move || done.complete());
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
