//! The protocol core: the state of a remote and the activity of a connection as plain state
//! machines that do no I/O. Events and the current time go in, actions come out (complete
//! this send, write on this connection, shut it down, dial, arm a timer). Nothing here
//! opens a socket, starts a thread, reads the clock or draws an unseeded random number;
//! connections are handles the driver gives it ([`ConnRef`]).
//!
//! Two drivers run this code: the node (`src/node/`, real sockets and threads, each remote
//! behind its own mutex) and the deterministic simulator (`sim`, tests only: many nodes
//! over a simulated network and clock, seeded, with faults), which checks the guarantees
//! the README makes on every run.

pub(crate) mod activity;
pub(crate) mod key;
pub(crate) mod remote;
#[cfg(test)]
mod sim;
pub(crate) mod slots;

use crate::error::Error;

/// What the core needs of a connection: a handle it can keep and compare. The core never
/// calls I/O through it; the driver acts on the handles the core's actions name.
pub(crate) trait ConnRef: Clone {
    /// Unique among the driver's connections, never reused.
    fn id(&self) -> u64;
    /// Why the connection was shut down, once it was.
    fn close_reason(&self) -> Option<Error>;
}
