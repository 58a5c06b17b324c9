//! The send path: checking an outgoing message, queueing it on its remote (one remote lock,
//! the peer's shard read lock for the lookup, no node-wide lock), and requests.

use super::remotes::Placed;
use super::*;
use crate::completion::Completer;
use crate::frame::SendResult;

impl Inner {
    /// Queues `p` for `addr` and gets it moving.
    pub(super) fn enqueue(self: &Arc<Self>, addr: SocketAddr, p: Pending) {
        self.enqueue_via(None, addr, &mut Some(p));
    }

    /// Queues the message in `p` (taken out of it) for `addr`, starting from the remote in
    /// `cache` when there is one (a [`Peer`]'s: no table lookup; updated
    /// when that remote was garbage-collected meanwhile). By reference: see
    /// [`RemoteCore::enqueue`](crate::proto::remote::RemoteCore::enqueue).
    pub(super) fn enqueue_via(
        self: &Arc<Self>,
        cache: Option<&Mutex<Arc<Remote>>>,
        addr: SocketAddr,
        p: &mut Option<Pending>,
    ) {
        let mut after = After::default();
        let dial = |r: &Arc<Remote>| self.dial_conn(r);
        let (placed, remote) = match cache {
            Some(c) => {
                let mut remote = c.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let first = Arc::as_ptr(&remote);
                let placed =
                    self.remotes
                        .enqueue(addr, &mut remote, &self.lim, p, &dial, &mut after);
                if !std::ptr::eq(first, Arc::as_ptr(&remote)) {
                    // Garbage-collected meanwhile: the replacement goes into the cache.
                    *c.lock().unwrap_or_else(|e| e.into_inner()) = remote.clone();
                }
                (placed, remote)
            }
            None => self
                .remotes
                .enqueue_remembered(addr, &self.lim, p, &dial, &mut after),
        };
        if let (Placed::Full, Some(back)) = (placed, p.take()) {
            bump(&self.counters.queue_full);
            bump(&self.counters.sends_failed_limit);
            let e = Error::LimitReached {
                limit: "max_queued",
                value: self.lim.max_queued,
            };
            if let Some((id, identity, e)) = back.finish(Err(e)) {
                self.requests.fail(id, identity, e);
            }
            return;
        }
        if placed == Placed::Closed {
            self.end_connections_of(&remote, false, &mut after);
        }
        self.run_after(&mut after);
    }

    /// Queues `batch` for the remote at `addr`, starting from the remote in `cache` (updated
    /// when that one was garbage-collected meanwhile): one remote lock and one kick for
    /// the whole batch. What does not fit under `max_queued` fails with `LimitReached`.
    /// `batch` is left empty (its capacity is the caller's to reuse).
    pub(super) fn enqueue_batch(
        self: &Arc<Self>,
        cache: &Mutex<Arc<Remote>>,
        addr: SocketAddr,
        batch: &mut Vec<Pending>,
    ) {
        let mut after = After::default();
        let dial = |r: &Arc<Remote>| self.dial_conn(r);
        let lock = |c: &Mutex<Arc<Remote>>| c.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut remote = lock(cache);
        let first = Arc::as_ptr(&remote);
        let placed =
            self.remotes
                .enqueue_batch(addr, &mut remote, &self.lim, batch, &dial, &mut after);
        if !std::ptr::eq(first, Arc::as_ptr(&remote)) {
            // Garbage-collected meanwhile: the replacement goes into the cache.
            *cache.lock().unwrap_or_else(|e| e.into_inner()) = remote.clone();
        }
        if !batch.is_empty() {
            bump(&self.counters.queue_full);
            let e = Error::LimitReached {
                limit: "max_queued",
                value: self.lim.max_queued,
            };
            for p in batch.drain(..) {
                self.counters.send_failed(&e);
                let _ = p.finish(Err(e.clone()));
            }
        }
        if placed == Placed::Closed {
            self.end_connections_of(&remote, false, &mut after);
        }
        self.run_after(&mut after);
    }
}

impl Node {
    pub(super) fn check_outgoing(&self, msg: &Message) -> Result<SocketAddr, Error> {
        let addr = msg.address.ok_or_else(|| {
            Error::invalid(
                "message address",
                "None",
                "the address and port of the receiving node",
            )
        })?;
        if addr.port() == 0 {
            return Err(Error::invalid("message port", 0, "1 ..= 65535"));
        }
        if msg.header.len() > usize::from(u16::MAX) {
            return Err(Error::invalid(
                "message header",
                format!("{} bytes", msg.header.len()),
                "at most 65535 bytes",
            ));
        }
        let cfg = &self.inner.cfg.config;
        let max = if cfg.check_outgoing_size {
            u64::from(cfg.max_msg_size)
        } else {
            u64::from(u32::MAX)
        };
        if msg.payload_len() > max || msg.data.len() as u64 > u64::from(u32::MAX) {
            return Err(Error::MessageTooLarge {
                size: msg.payload_len(),
                max,
            });
        }
        Ok(addr)
    }

    /// Sends `msg` to its address. The completion finishes — with the message handed back —
    /// when the peer released it (synchronous mode) or when it was written to the operating
    /// system (asynchronous mode), or with a [`SendError`] that also hands the message back.
    ///
    /// The connection is set up on demand, reused, and garbage-collected when idle.
    pub fn send(&self, msg: Message) -> Completion<Result<Message, SendError>> {
        let addr = match self.check_outgoing(&msg) {
            Ok(_) if self.inner.is_closed() => Err(Error::Shutdown),
            other => other,
        };
        let addr = match addr {
            Ok(a) => a,
            Err(error) => {
                self.inner.counters.send_failed(&error);
                return Completion::ready(Err(SendError {
                    error,
                    message: msg,
                }));
            }
        };
        let (completion, lent) = crate::completion::lent_pair(Ok(msg));
        let mut p = Some(Pending::lent(lent));
        self.inner.enqueue_via(None, addr, &mut p);
        completion
    }

    /// Sends `msg` as a request and completes with the answer: the first message that
    /// arrives with the same identity (a peer answers by sending the received message back).
    /// The answer is not also given to the handler or queue; you decide when its slot is
    /// released. Fails with a timeout error when no answer arrives within the timeout; an
    /// answer arriving later is delivered as an ordinary message.
    ///
    /// The identity is registered before the message is queued, so even an answer that
    /// arrives before this call returns is matched.
    pub fn request(&self, msg: Message) -> Completion<Result<Message, Error>> {
        self.request_inner(msg, None)
    }

    /// Like [`Node::request`], and also reports the send itself, as [`Node::send`] would:
    /// the first completion finishes — with the request message handed back — when the
    /// peer released it (synchronous mode) or when it was written (asynchronous mode); the
    /// second with the answer. A failed send fails both.
    ///
    /// ```no_run
    /// # use libchirp::{Config, Message, Node};
    /// # let node = Node::start(Config::default(), drop)?;
    /// let to = "127.0.0.1:2998".parse().unwrap();
    /// let (sent, answer) = node.request_with_send(Message::to(to, b"ping"));
    /// let mut reply = answer.wait()?; // the peer answered
    /// reply.release().wait(); // a peer that answers before it releases waits for this
    /// let request = sent.wait()?; // the peer released the request
    /// assert_eq!(reply.identity(), request.identity());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    // Two completions, named in the docs above: a struct would only rename the tuple.
    #[allow(clippy::type_complexity)]
    pub fn request_with_send(
        &self,
        msg: Message,
    ) -> (
        Completion<Result<Message, SendError>>,
        Completion<Result<Message, Error>>,
    ) {
        let (sent, sent_done) = Completion::pair();
        let answer = self.request_inner(msg, Some(sent_done));
        (sent, answer)
    }

    fn request_inner(
        &self,
        msg: Message,
        sent: Option<Completer<SendResult>>,
    ) -> Completion<Result<Message, Error>> {
        let addr = match self.check_outgoing(&msg) {
            Ok(_) if self.inner.is_closed() => Err(Error::Shutdown),
            other => other,
        };
        let addr = match addr {
            Ok(a) => a,
            Err(e) => {
                if let Some(s) = sent {
                    s.complete(Err(SendError {
                        error: e.clone(),
                        message: msg,
                    }));
                }
                return Completion::ready(Err(e));
            }
        };
        let inner = &self.inner;
        let (completion, done) = Completion::pair();
        let identity = msg.identity;
        let id = inner.requests.next_id();
        let deadline = Instant::now() + inner.lim.timeout;
        if let Err(done) = inner.requests.insert(identity, id, done) {
            let e = Error::invalid(
                "request identity",
                identity,
                "an identity without a pending request",
            );
            if let Some(s) = sent {
                s.complete(Err(SendError {
                    error: e.clone(),
                    message: msg,
                }));
            }
            done.complete(Err(e));
            return completion;
        }
        // Registered before the check: either close() fails it, or we see close() here.
        if inner.is_closed() {
            inner.requests.fail(id, identity, Error::Shutdown);
            if let Some(s) = sent {
                s.complete(Err(SendError {
                    error: Error::Shutdown,
                    message: msg,
                }));
            }
            return completion;
        }
        inner
            .timers
            .schedule(deadline, Timed::Request(id, identity));
        let done = match sent {
            Some(s) => Done::RequestSent(id, identity, s),
            None => Done::Request(id, identity),
        };
        inner.enqueue(addr, Pending::new(msg, done));
        completion
    }
}
