//! How remotes are told apart: the peer's IP address and the port it advertises in its
//! handshake. A leaf module, so that the remote, the table and the timers can all name a
//! remote without importing each other.

use std::net::{IpAddr, SocketAddr};

/// Remotes are keyed by peer IP address and the port the peer advertises.
pub(crate) type RemoteKey = (IpAddr, u16);

pub(crate) fn key_of(addr: &SocketAddr) -> RemoteKey {
    (addr.ip(), addr.port())
}
