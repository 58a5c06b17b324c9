//! The node's side of one connection: [`Link`] implements the connection's
//! [`Owner`] interface by routing each event to the connection's
//! remote (found at the handshake, then kept), the request table or the node's sink.
//!
//! The link holds a weak reference to the node: a connection never keeps a closed node
//! alive, and events arriving after the node is gone are ignored.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use crate::connection::{Conn, Owner};
use crate::error::Error;
use crate::frame::Frame;
use crate::message::{Identity, Message, ReleaseDone};

use super::remote::{After, Remote};
use super::stats::{bump, Event};
use super::Inner;

pub(crate) struct Link {
    node: Weak<Inner>,
    /// The connection's remote: known at dial time, or found when the peer's handshake
    /// arrives on an accepted connection.
    remote: OnceLock<Arc<Remote>>,
    /// An accepted connection counted in the node's handshaking gauge (until its handshake
    /// is over, one way or the other).
    handshaking: AtomicBool,
}

impl Link {
    pub(crate) fn new(node: Weak<Inner>, remote: Option<Arc<Remote>>, handshaking: bool) -> Link {
        let cell = OnceLock::new();
        if let Some(r) = remote {
            let _ = cell.set(r);
        }
        Link {
            node,
            remote: cell,
            handshaking: AtomicBool::new(handshaking),
        }
    }

    /// Takes the connection out of the handshaking gauge, once.
    fn handshake_over(&self, node: &Inner) {
        if self.handshaking.swap(false, Ordering::Relaxed) {
            node.handshake_over();
        }
    }

    pub(crate) fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.get()
    }

    /// The node and the remote, when both are there.
    fn both(&self) -> Option<(Arc<Inner>, &Arc<Remote>)> {
        Some((self.node.upgrade()?, self.remote.get()?))
    }
}

impl Owner for Link {
    fn spawn(
        &self,
        conn: &Arc<Conn>,
        name: String,
        stack: usize,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> io::Result<()> {
        let node = self
            .node
            .upgrade()
            .ok_or_else(|| io::Error::other("the node is closed"))?;
        let r = node.spawn(name, stack, move |_| f());
        if let Err(e) = &r {
            node.resources_failed(conn, e);
        }
        r
    }

    fn connected(&self, conn: &Arc<Conn>) -> Result<(), Error> {
        let node = self.node.upgrade().ok_or(Error::Shutdown)?;
        self.handshake_over(&node);
        if node.is_closed() {
            return Err(Error::Shutdown);
        }
        let info = conn.peer_info().ok_or(Error::Shutdown)?;
        // A dialed connection belongs to the remote it was dialed for, whatever port the
        // peer advertises; an accepted one to the peer's address and advertised port.
        let mut after = After::default();
        let ok = match self.remote.get() {
            Some(dialed) => dialed.attach(conn, &mut after),
            None => loop {
                let remote = node
                    .remotes
                    .get_or_create(SocketAddr::new(conn.peer.ip(), info.port));
                if remote.attach(conn, &mut after) {
                    let _ = self.remote.set(remote);
                    break true;
                }
                // The remote was dropped between the lookup and the attach (its previous
                // connection just closed with nothing pending): the next lookup makes a
                // new one — unless the node is closing.
                if node.is_closed() {
                    break false;
                }
                std::thread::yield_now();
            },
        };
        node.run_after(&mut after);
        if ok && !node.is_closed() {
            node.events.emit(|| Event::Connected {
                address: SocketAddr::new(conn.peer.ip(), info.port),
                identity: info.identity,
                encrypted: conn.is_encrypted(),
                incoming: !conn.outgoing,
            });
            Ok(())
        } else {
            Err(Error::Shutdown)
        }
    }

    fn take_frames(&self, conn: &Arc<Conn>, out: &mut Vec<(Frame, u32)>) {
        if let Some((node, remote)) = self.both() {
            remote.take_frames(&node.lim, conn, out);
        }
    }

    fn written(
        &self,
        conn: &Arc<Conn>,
        frames: &mut Vec<(Frame, u32)>,
        result: Result<(), Error>,
        now: Instant,
    ) {
        match self.both() {
            Some((node, remote)) => {
                let mut after = After::default();
                remote.written(&node.lim, now, conn, frames, result, &mut after);
                super::remote::finish_written(frames);
                node.run_after(&mut after);
            }
            // The node is gone: dropping the frames fails their waiters.
            None => frames.clear(),
        }
    }

    fn ack(&self, _conn: &Arc<Conn>, identity: Identity) {
        if let Some((node, remote)) = self.both() {
            let mut after = After::default();
            remote.ack_received(identity, &mut after);
            node.run_after(&mut after);
        }
    }

    fn activity(&self, _conn: &Arc<Conn>) {
        if let Some(remote) = self.remote.get() {
            remote.touch();
        }
    }

    fn deliver(&self, _conn: &Arc<Conn>, msg: Message) {
        // After close nothing reaches the application (a connection's parked messages are
        // delivered as slots free up, which may be later): dropping releases the slot.
        let Some(node) = self.node.upgrade().filter(|n| !n.is_closed()) else {
            return;
        };
        match node.requests.take_answered(&msg.identity) {
            Some(done) => {
                bump(&node.counters.requests_answered);
                done.complete(Ok(msg))
            }
            None => (node.sink)(msg),
        }
    }

    fn ack_due(&self, _conn: &Arc<Conn>, done: ReleaseDone) {
        match self.both() {
            Some((node, remote)) if !node.is_closed() => {
                let mut after = After::default();
                let dial = |r: &Arc<Remote>| node.dial_conn(r);
                if let Err(done) = remote.queue_ack(done, &dial, &mut after) {
                    // A retired connection's remote was collected: the ACK goes through the
                    // remote now in the table (made, and dialed, if need be). The sender
                    // waits for it: the message crossed our end of stream and was delivered.
                    let fresh = node.remotes.get_or_create(remote.dial_addr);
                    if let Err(done) = fresh.queue_ack(done, &dial, &mut after) {
                        done.finish(); // removed again at once: the node is closing
                    }
                }
                node.run_after(&mut after);
            }
            _ => done.finish(),
        }
    }

    fn closed(&self, conn: &Arc<Conn>, reason: &Error, in_flight: bool) {
        if let Some(node) = self.node.upgrade() {
            node.conn_ended(conn, reason);
        }
        if let Some((node, remote)) = self.both() {
            let mut after = After::default();
            remote.conn_closed(
                &node.lim,
                conn,
                reason,
                in_flight,
                node.is_closed(),
                &mut after,
            );
            // A peer that connected to us and left, with nothing pending either way, needs
            // no remote until it comes back (a dialed remote stays: it keeps the reconnect
            // debounce of a failing peer).
            if !conn.outgoing
                && node
                    .remotes
                    .take_out_if(remote, |core| core.release_if_vacant())
            {
                bump(&node.counters.remotes_released);
            }
            node.run_after(&mut after);
        }
    }

    fn ended(&self, conn: &Arc<Conn>) {
        if let Some(node) = self.node.upgrade() {
            self.handshake_over(&node);
            node.forget(conn.id);
        }
    }
}
