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
