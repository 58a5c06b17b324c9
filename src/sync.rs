//! The synchronisation types of the hand-rolled concurrency (completions, batches): std's,
//! or loom's when built with `RUSTFLAGS="--cfg loom"`, so that the loom models in
//! `scripts/loom.sh` check the production code itself.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
