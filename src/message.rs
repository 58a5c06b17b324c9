//! Messages and node identities.

use smallvec::SmallVec;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use std::sync::Arc;

use crate::completion::{Completer, Completion};
use crate::error::Error;

/// A 16-byte identity: of a node (sent in the handshake) or of a message.
///
/// It prints as 32 lowercase hex digits and parses from the same.
///
/// # Examples
///
/// ```
/// use libchirp::Identity;
///
/// let id: Identity = "000102030405060708090a0b0c0d0e0f".parse().unwrap();
/// assert_eq!(id.as_bytes()[15], 15);
/// assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0e0f");
/// assert!(Identity::zero().is_zero());
/// assert_ne!(Identity::random(), Identity::random());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Identity([u8; 16]);

impl Identity {
    /// The all-zero identity.
    pub const fn zero() -> Identity {
        Identity([0; 16])
    }

    /// A fresh random identity.
    pub fn random() -> Identity {
        Identity(crate::rand::bytes16())
    }

    /// Wraps 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Identity {
        Identity(bytes)
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// True when every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({self})")
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Identity, Error> {
        let bad = || Error::invalid("identity", s, "32 hexadecimal digits");
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Identity(out))
    }
}

impl From<[u8; 16]> for Identity {
    fn from(bytes: [u8; 16]) -> Identity {
        Identity(bytes)
    }
}

/// The data of a [`Message`]: up to [`Payload::INLINE`] bytes are stored inside the message
/// itself, larger data on the heap.
///
/// You rarely name this type: the message constructors and [`Message::set_data`] take
/// anything that converts into it — a `Vec<u8>` (taken over without copying, unless it is
/// small enough to be stored inline), a byte slice or array, a `Cow<[u8]>`, a `String` or
/// `&str`. A small
/// payload given as a slice or array costs no heap allocation on the sending side, and a
/// small received payload none on the receiving side.
///
/// # Examples
///
/// ```
/// use libchirp::{Message, Payload};
///
/// let counter: u64 = 7;
/// // Eight bytes from a stack array: stored inline, no allocation.
/// let msg = Message::to("127.0.0.1:2998".parse().unwrap(), counter.to_be_bytes());
/// assert_eq!(msg.data(), &7u64.to_be_bytes());
/// assert!(Payload::from(&[0u8; 16][..]).is_inline());
/// assert!(!Payload::from(vec![0u8; 17]).is_inline());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Payload(SmallVec<[u8; Payload::INLINE]>);

impl Payload {
    /// The most bytes stored inside the message, without a heap allocation. (The inline
    /// buffer takes the place of a `Vec`'s pointer and length: a message is no larger.)
    pub const INLINE: usize = 16;

    /// True when the bytes are stored inline, not on the heap.
    pub fn is_inline(&self) -> bool {
        !self.0.spilled()
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Payload {
    /// Takes the vector over; one whose capacity fits inline is copied in and freed.
    fn from(v: Vec<u8>) -> Payload {
        Payload(SmallVec::from_vec(v))
    }
}

impl From<&Vec<u8>> for Payload {
    fn from(v: &Vec<u8>) -> Payload {
        Payload(SmallVec::from_slice(v))
    }
}

impl From<&[u8]> for Payload {
    fn from(v: &[u8]) -> Payload {
        Payload(SmallVec::from_slice(v))
    }
}

impl<const N: usize> From<[u8; N]> for Payload {
    fn from(v: [u8; N]) -> Payload {
        Payload(SmallVec::from_slice(&v))
    }
}

impl<const N: usize> From<&[u8; N]> for Payload {
    fn from(v: &[u8; N]) -> Payload {
        Payload(SmallVec::from_slice(v))
    }
}

impl From<Box<[u8]>> for Payload {
    fn from(v: Box<[u8]>) -> Payload {
        Payload::from(Vec::from(v))
    }
}

impl From<std::borrow::Cow<'_, [u8]>> for Payload {
    fn from(v: std::borrow::Cow<'_, [u8]>) -> Payload {
        match v {
            std::borrow::Cow::Borrowed(b) => Payload::from(b),
            std::borrow::Cow::Owned(v) => Payload::from(v),
        }
    }
}

impl From<String> for Payload {
    fn from(v: String) -> Payload {
        Payload::from(v.into_bytes())
    }
}

impl From<&str> for Payload {
    fn from(v: &str) -> Payload {
        Payload(SmallVec::from_slice(v.as_bytes()))
    }
}

impl From<Payload> for Vec<u8> {
    /// The bytes as a vector (a heap allocation when they were stored inline).
    fn from(p: Payload) -> Vec<u8> {
        p.0.into_vec()
    }
}

/// A message: identity, serial, header and data bytes, the peer's address, and — for a
/// received message — the slot it occupies until it is released.
///
/// A new message gets a random identity. A received message keeps the sender's identity, so
/// sending it back (after changing its data) is a reply the sender can match: that is how
/// [`Node::request`](crate::Node::request) works.
///
/// Dropping a received message releases its slot (and sends the ACK a synchronous sender is
/// waiting for); [`Message::release`] does the same explicitly and tells you when it is done.
///
/// # Examples
///
/// ```
/// use libchirp::Message;
///
/// let mut msg = Message::to("127.0.0.1:2998".parse().unwrap(), b"hello");
/// msg.set_header(b"greeting");
/// assert_eq!(msg.data(), b"hello");
/// assert_eq!(msg.address().unwrap().port(), 2998);
/// assert!(!msg.has_slot());
/// ```
pub struct Message {
    pub(crate) identity: Identity,
    pub(crate) serial: u32,
    pub(crate) header: Vec<u8>,
    pub(crate) data: Payload,
    pub(crate) address: Option<SocketAddr>,
    pub(crate) remote_identity: Identity,
    pub(crate) type_bits: u8,
    pub(crate) slot: Option<Slot>,
}

impl Message {
    /// A new message with a random identity and the given data, without a destination yet.
    ///
    /// Data of up to [`Payload::INLINE`] bytes given as a slice or array is kept inside
    /// the message, without a heap allocation; a `Vec` is taken over as it is.
    pub fn new(data: impl Into<Payload>) -> Message {
        Message {
            identity: Identity::random(),
            serial: 0,
            header: Vec::new(),
            data: data.into(),
            address: None,
            remote_identity: Identity::zero(),
            type_bits: 0,
            slot: None,
        }
    }

    /// A new message addressed to `addr` (address and port of the receiving node).
    pub fn to(addr: SocketAddr, data: impl Into<Payload>) -> Message {
        let mut m = Message::new(data);
        m.address = Some(addr);
        m
    }

    /// The message identity: random for a new message, the sender's for a received one.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Replaces the identity. A reply carries the identity of the message it answers, and
    /// sending the received message back keeps it; this is for code that keeps a copy of
    /// the received fields instead (a language binding, a proxy) and answers from the copy.
    ///
    /// ```
    /// use libchirp::{Identity, Message};
    /// let mut answer = Message::new(b"pong");
    /// let id = Identity::from_bytes([7; 16]);
    /// answer.set_identity(id);
    /// assert_eq!(answer.identity(), id);
    /// ```
    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = identity;
    }

    /// The serial the message arrived with (the sender's per-peer frame counter); 0 for a
    /// message created locally.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The raw type bits the message arrived with (0x01 = the sender waits for release).
    pub fn type_bits(&self) -> u8 {
        self.type_bits
    }

    /// The header bytes (an opaque upper-layer header, at most 65,535 bytes).
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Replaces the header.
    pub fn set_header(&mut self, header: impl Into<Vec<u8>>) {
        self.header = header.into();
    }

    /// The data bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Replaces the data (for example to reply with the received message).
    pub fn set_data(&mut self, data: impl Into<Payload>) {
        self.data = data.into();
    }

    /// Takes the data out, leaving the message's data empty.
    pub fn take_data(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data).into()
    }

    /// The peer: the sender's address and advertised port on a received message, the
    /// destination on an outgoing one.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// Sets the destination.
    pub fn set_address(&mut self, addr: SocketAddr) {
        self.address = Some(addr);
    }

    /// The identity of the node the message came from (all zeros for a local message).
    /// It changes when that node restarts.
    pub fn remote_identity(&self) -> Identity {
        self.remote_identity
    }

    /// True while the message occupies a receive slot that has not been released.
    pub fn has_slot(&self) -> bool {
        self.slot.is_some()
    }

    /// Releases the message's slot now. If the sender asked for it (synchronous mode) the
    /// ACK is sent, and the completion finishes once it was written (or could not be).
    /// Completes at once with `(identity, serial)` when the message has no slot. Dropping a
    /// message releases it too; a slot is never released twice.
    pub fn release(&mut self) -> Completion<(Identity, u32)> {
        match self.slot.take() {
            Some(slot) => slot.release(),
            None => Completion::ready((self.identity, self.serial)),
        }
    }

    /// Frees the message's slot *without* acknowledging it: for a message your application
    /// could not process. A synchronous sender is not told it was delivered: its send fails
    /// when its timeout passes (and it closes that connection), as if the message had never
    /// been released. For an asynchronous sender (no ACK asked) this is [`release`]. Does
    /// nothing when the message holds no slot.
    ///
    /// ```
    /// let mut msg = libchirp::Message::new(&b"a local message holds no slot"[..]);
    /// msg.refuse();
    /// assert!(!msg.has_slot());
    /// ```
    ///
    /// [`release`]: Message::release
    pub fn refuse(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.refuse();
        }
    }

    /// Total payload size: header plus data.
    pub fn payload_len(&self) -> u64 {
        self.header.len() as u64 + self.data.len() as u64
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("address", &self.address)
            .field("header_len", &self.header.len())
            .field("data_len", &self.data.len())
            .field("remote_identity", &self.remote_identity)
            .field("has_slot", &self.has_slot())
            .finish()
    }
}

/// The completion of a release, fired after the ACK was written (or could not be), or at
/// once when no ACK is due. Dropping it unfinished fires it too: a release never hangs.
pub(crate) struct ReleaseDone {
    pub(crate) identity: Identity,
    pub(crate) serial: u32,
    done: Option<Completer<(Identity, u32)>>,
}

impl ReleaseDone {
    /// The release of message `identity`/`serial`, completing `done` when finished.
    pub(crate) fn new(
        identity: Identity,
        serial: u32,
        done: Option<Completer<(Identity, u32)>>,
    ) -> ReleaseDone {
        ReleaseDone {
            identity,
            serial,
            done,
        }
    }

    pub(crate) fn finish(mut self) {
        if let Some(c) = self.done.take() {
            c.complete((self.identity, self.serial));
        }
    }
}

impl Drop for ReleaseDone {
    fn drop(&mut self) {
        if let Some(c) = self.done.take() {
            c.complete((self.identity, self.serial));
        }
    }
}

/// Whatever gave a received message its slot (its connection) and takes it back.
pub(crate) trait SlotOwner: Send + Sync {
    /// The slot is free again; `req_ack`: the sender asked for an ACK, which `done`
    /// completes after it was written.
    fn release_slot(self: Arc<Self>, req_ack: bool, done: ReleaseDone);
}

/// A received message's claim on its connection's slot pool. Released explicitly through
/// [`Message::release`] or when dropped; never twice.
pub(crate) struct Slot {
    /// Taken when released.
    owner: Option<Arc<dyn SlotOwner>>,
    req_ack: bool,
    identity: Identity,
    serial: u32,
}

impl Slot {
    pub(crate) fn new(
        owner: Arc<dyn SlotOwner>,
        req_ack: bool,
        identity: Identity,
        serial: u32,
    ) -> Slot {
        Slot {
            owner: Some(owner),
            req_ack,
            identity,
            serial,
        }
    }

    pub(crate) fn release(mut self) -> Completion<(Identity, u32)> {
        let (completion, done) = Completion::pair();
        self.do_release(Some(done));
        completion
    }

    /// Frees the slot without an ACK.
    pub(crate) fn refuse(mut self) {
        self.req_ack = false;
        self.do_release(None);
    }

    fn do_release(&mut self, done: Option<Completer<(Identity, u32)>>) {
        let rd = ReleaseDone::new(self.identity, self.serial, done);
        match self.owner.take() {
            Some(owner) => owner.release_slot(self.req_ack, rd),
            None => rd.finish(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.owner.is_some() {
            self.do_release(None);
        }
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn every_conversion_keeps_the_bytes_and_only_small_ones_stay_inline() {
        for len in [0, 1, 15, 16, 17, 100, 5000] {
            let b = bytes(len);
            let inline = len <= Payload::INLINE;
            let all = [
                Payload::from(b.clone()),
                Payload::from(&b),
                Payload::from(&b[..]),
                Payload::from(b.clone().into_boxed_slice()),
            ];
            for (i, p) in all.iter().enumerate() {
                assert_eq!(&p[..], &b[..], "conversion {i} changed {len} bytes");
                // A Vec is taken over as it is, unless its capacity fits inline.
                assert_eq!(p.is_inline(), inline, "conversion {i} of {len} bytes");
            }
            assert_eq!(Vec::from(all[0].clone()), b, "{len} bytes back into a Vec");
        }
        assert_eq!(&Payload::from("hi")[..], b"hi");
        assert_eq!(&Payload::from(String::from("hi"))[..], b"hi");
        assert_eq!(&Payload::from([1u8, 2, 3])[..], &[1, 2, 3]);
        assert_eq!(&Payload::from(&[1u8, 2, 3])[..], &[1, 2, 3]);
        assert!(
            !Payload::from(Vec::<u8>::with_capacity(64)).is_inline(),
            "an empty Vec with room for 64 bytes was copied instead of taken over"
        );
    }

    #[test]
    fn the_inline_buffer_takes_no_more_room_than_a_vec() {
        assert_eq!(
            std::mem::size_of::<Payload>(),
            std::mem::size_of::<Vec<u8>>(),
            "a Payload is larger than the Vec it replaced"
        );
    }

    #[test]
    fn a_message_hands_its_data_back_whatever_its_size() {
        for len in [0, 16, 17, 300] {
            let mut m = Message::new(&bytes(len)[..]);
            assert_eq!(m.data(), &bytes(len)[..]);
            assert_eq!(m.take_data(), bytes(len), "take_data of {len} bytes");
            assert!(m.data().is_empty());
            m.set_data(bytes(len));
            assert_eq!(m.payload_len(), len as u64);
        }
    }
}
