//! The synchronisation types of the hand-rolled concurrency (completions, batches): std's,
//! or loom's when built with `RUSTFLAGS="--cfg loom"`, so that the loom models in
//! `scripts/loom.sh` check the production code itself.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

/// The clock of the connection's thread-side code: `Instant::now()`; in a loom model a
/// fixed instant, since loom replays each interleaving and needs every run of it to take
/// the same branches (a model says when time passes where that matters).
#[cfg(not(loom))]
#[inline]
pub(crate) fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// See the other `now`: under loom, time stands still.
#[cfg(loom)]
pub(crate) fn now() -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicU8;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicU8;

/// std's `UnsafeCell` with loom's interface (`with`, `with_mut`), so that code using it
/// is checked by loom (which tracks every access to the cell) and costs nothing in a
/// normal build.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> UnsafeCell<T> {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a pointer for reading the contents.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a pointer for writing the contents.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }

    /// The contents, through exclusive access (no other thread can touch them).
    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }
}

/// A lock-free FIFO queue (crossbeam's `SegQueue`): the inbox of a remote's
/// [`Front`](crate::proto::front::Front). Under loom, a loom `Mutex` around a `VecDeque`
/// (loom cannot see inside crossbeam's atomics); pushes and pops are linearizable either
/// way, which is all the front relies on.
#[cfg(not(loom))]
pub(crate) struct Inbox<T>(crossbeam_queue::SegQueue<T>);

#[cfg(not(loom))]
impl<T> Inbox<T> {
    pub(crate) fn new() -> Inbox<T> {
        Inbox(crossbeam_queue::SegQueue::new())
    }

    #[inline]
    pub(crate) fn push(&self, value: T) {
        self.0.push(value);
    }

    #[inline]
    pub(crate) fn pop(&self) -> Option<T> {
        self.0.pop()
    }
}

/// See the other `Inbox`: loom's model of it, with the orderings of `SegQueue` (a
/// sequentially consistent claim of the tail, a release of the written slot; a pop fences,
/// reads the tail, and waits for a claimed slot to be written), so that loom checks what
/// the front relies on of it. Fixed capacity: a model pushes a handful.
#[cfg(loom)]
pub(crate) struct Inbox<T> {
    slots: Vec<(AtomicBool, UnsafeCell<Option<T>>)>,
    tail: AtomicUsize,
    /// Pops happen under the remote's lock: one popper at a time.
    head: AtomicUsize,
}

// SAFETY: a slot's value is written by the one push that claimed it and read by the one
// pop that found it written (`ready`, release/acquire): never shared, only handed over.
#[cfg(loom)]
unsafe impl<T: Send> Sync for Inbox<T> {}

#[cfg(loom)]
impl<T> Inbox<T> {
    const CAP: usize = 8;

    pub(crate) fn new() -> Inbox<T> {
        Inbox {
            slots: (0..Self::CAP)
                .map(|_| (AtomicBool::new(false), UnsafeCell::new(None)))
                .collect(),
            tail: AtomicUsize::new(0),
            head: AtomicUsize::new(0),
        }
    }

    pub(crate) fn push(&self, value: T) {
        let i = self.tail.fetch_add(1, Ordering::SeqCst);
        let (ready, cell) = &self.slots[i];
        // SAFETY: slot `i` was claimed by this push alone, and is read only after `ready`.
        cell.with_mut(|p| unsafe { *p = Some(value) });
        ready.store(true, Ordering::Release);
    }

    pub(crate) fn pop(&self) -> Option<T> {
        let h = self.head.load(Ordering::Relaxed);
        loom::sync::atomic::fence(Ordering::SeqCst);
        if self.tail.load(Ordering::Relaxed) == h {
            return None;
        }
        let (ready, cell) = &self.slots[h];
        while !ready.load(Ordering::Acquire) {
            loom::thread::yield_now();
        }
        self.head.store(h + 1, Ordering::Relaxed);
        // SAFETY: the slot was written (`ready`), and its pusher is done with it.
        cell.with_mut(|p| unsafe { (*p).take() })
    }
}
