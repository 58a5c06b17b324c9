//! What the write side of a connection needs from its socket: a vectored send that may or
//! may not block, a plain write, shutdown, and the kernel's count of bytes the peer moved.
//! Production connections use a [`TcpStream`]; the loom models (`scripts/loom.sh`) give
//! the same connection code an in-memory socket, so that the writer's loops they check
//! are the ones that run in production.

use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};

/// A connection's socket, as its write side and its shutdown use it.
pub(crate) trait Socket: Send + Sync + 'static {
    /// One vectored send; with `blocking` false it never blocks (see
    /// [`crate::sys::send_vectored`]).
    fn send_vectored(&self, bufs: &[IoSlice], blocking: bool) -> io::Result<usize>;
    /// One blocking write, bounded by the socket's write timeout.
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Shuts down one or both directions; unblocks a thread blocked in a call on it.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// Bytes the peer has moved so far, if the system can tell (see
    /// [`crate::sys::peer_progress`]).
    fn peer_progress(&self) -> Option<u64>;
}

impl Socket for TcpStream {
    fn send_vectored(&self, bufs: &[IoSlice], blocking: bool) -> io::Result<usize> {
        crate::sys::send_vectored(self, bufs, blocking)
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        Write::write(&mut &*self, buf)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }

    fn peer_progress(&self) -> Option<u64> {
        crate::sys::peer_progress(self)
    }
}
