//! A remote's front door: the way a send joins a remote's queue without taking the
//! remote's lock, while the remote is streaming.
//!
//! The remote's lock is shared by the sending threads and the connection's writer. While
//! a writer is busy with a remote, every send used to wait for the writer's lock holds
//! (taking frames, reporting them written) and pull the lock's cache line back across
//! cores. The front is a gate in front of that lock:
//!
//! * **Open** only between two holds of the remote's lock, and only when a later hold is
//!   certain to come: a kick is under way, or the current connection's writer took frames
//!   and will come back for more (see [`RemoteCore`](super::remote::RemoteCore)). It opens
//!   with a number of places (what is left of `max_queued`).
//! * **A send** takes a place ([`Front::admit`]), pushes its message into the inbox, and
//!   looks at the gate once more ([`Front::confirm`], a read-modify-write, so it sees the
//!   latest state). Still open: the next lock hold is still to come and takes the message
//!   in. Closed meanwhile: that hold may have come before the push, so the sender takes
//!   the lock itself ([`RemoteCore::nudge`](super::remote::RemoteCore::nudge)). Either
//!   way someone holding the lock takes every pushed message into the queue, in the order
//!   each sender pushed them.
//! * **Every hold** of the lock that can change what the gate relies on closes it first
//!   and takes the inbox in (`RemoteCore::enter`); the places taken meanwhile are counted
//!   as queued until their messages arrive, so `max_queued`, garbage collection ("nothing
//!   queued") and the outcome bound see them. A hold that leaves the gate's conditions
//!   true opens it again.
//!
//! A closed gate costs a send nothing but one failed compare: it takes the lock, as every
//! send did before.

use crate::frame::Pending;
use crate::sync::{AtomicU64, Inbox, Ordering};

/// The gate's state word: this bit when open, and the places left below it.
const OPEN: u64 = 1 << 63;

/// A remote's gate and inbox (see the module).
pub(crate) struct Front {
    word: AtomicU64,
    inbox: Inbox<Pending>,
}

/// What became of a message offered at the front ([`Front::offer`]).
pub(crate) enum Offer {
    /// In the inbox; a hold of the remote's lock still to come takes it in.
    Taken,
    /// In the inbox, but the gate closed before the sender looked again: the sender must
    /// take the remote's lock and take the inbox in itself
    /// ([`RemoteCore::nudge`](super::remote::RemoteCore::nudge)).
    Nudge,
    /// The gate is closed or full: the message goes the way that takes the lock.
    Refused(Pending),
}

impl Default for Front {
    fn default() -> Self {
        Front::new()
    }
}

impl Front {
    /// A closed gate and an empty inbox.
    pub(crate) fn new() -> Front {
        Front {
            word: AtomicU64::new(0),
            inbox: Inbox::new(),
        }
    }

    /// Offers `p` at the front: [`Front::admit`], [`Front::push`], [`Front::confirm`].
    #[inline]
    pub(crate) fn offer(&self, p: Pending) -> Offer {
        if !self.admit() {
            return Offer::Refused(p);
        }
        self.push(p);
        if self.confirm() {
            Offer::Taken
        } else {
            Offer::Nudge
        }
    }

    /// Takes a place if the gate is open and has one. A sender that took a place must push
    /// its message ([`Front::push`]) and then [`Front::confirm`].
    #[inline]
    pub(crate) fn admit(&self) -> bool {
        let mut w = self.word.load(Ordering::Relaxed);
        loop {
            if w & OPEN == 0 || w == OPEN {
                return false;
            }
            match self
                .word
                .compare_exchange_weak(w, w - 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
    }

    /// Puts an admitted message into the inbox.
    #[inline]
    pub(crate) fn push(&self, p: Pending) {
        self.inbox.push(p);
    }

    /// After the push: whether the gate is still open. A read-modify-write, so that it
    /// reads the latest state and is ordered with the close that takes the inbox in: if
    /// it reads the gate open, the close comes after it (and after the push it follows),
    /// and that close's drain finds the message.
    #[inline]
    pub(crate) fn confirm(&self) -> bool {
        self.word.fetch_add(0, Ordering::AcqRel) & OPEN != 0
    }

    /// Whether the gate is open now (for decisions taken under the remote's lock, where
    /// nothing can open it meanwhile).
    pub(crate) fn is_open(&self) -> bool {
        self.word.load(Ordering::Acquire) & OPEN != 0
    }

    /// Closes the gate (under the remote's lock): the places left if it was open.
    #[inline]
    pub(super) fn close(&self) -> Option<u64> {
        let w = self.word.swap(0, Ordering::AcqRel);
        (w & OPEN != 0).then_some(w & !OPEN)
    }

    /// Opens the gate with `places` (under the remote's lock, as its last step).
    #[inline]
    pub(super) fn open(&self, places: u64) {
        debug_assert!(places > 0 && places < OPEN, "a gate opens with places");
        self.word.store(OPEN | places, Ordering::Release);
    }

    /// The next pushed message (under the remote's lock).
    #[inline]
    pub(super) fn pop(&self) -> Option<Pending> {
        self.inbox.pop()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::completion::lent_pair;
    use crate::message::Message;

    fn pending(data: &[u8]) -> Pending {
        let addr = "127.0.0.1:9".parse().expect("an address");
        Pending::lent(lent_pair(Ok(Message::to(addr, data))).1)
    }

    /// A closed gate refuses and hands the message back; an open one takes as many as it
    /// has places, then refuses; closing reports the places left.
    #[test]
    fn the_gate_takes_as_many_as_it_has_places() {
        let f = Front::new();
        assert!(
            matches!(f.offer(pending(b"a")), Offer::Refused(_)),
            "a closed gate took a message"
        );
        f.open(2);
        for m in [b"b", b"c"] {
            assert!(
                matches!(f.offer(pending(m)), Offer::Taken),
                "an open gate with places refused {m:?}"
            );
        }
        assert!(
            matches!(f.offer(pending(b"d")), Offer::Refused(_)),
            "a gate without places took a message"
        );
        assert_eq!(f.close(), Some(0), "no places left at the close");
        assert_eq!(f.close(), None, "closed already");
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| f.pop())
            .map(|p| p.msg().data.to_vec())
            .collect();
        assert_eq!(got, [b"b".to_vec(), b"c".to_vec()], "the inbox, in order");
    }

    /// A gate closed between a sender's place and its look asks the sender to nudge.
    #[test]
    fn a_gate_closed_after_the_place_asks_for_a_nudge() {
        let f = Front::new();
        f.open(3);
        assert!(f.admit(), "a place");
        assert_eq!(f.close(), Some(2), "one place taken");
        f.push(pending(b"x"));
        assert!(!f.confirm(), "the sender sees the gate closed");
        assert!(f.pop().is_some(), "the message is in the inbox");
    }
}
