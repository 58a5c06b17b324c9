//! The reader thread: reads the socket (decrypting when TLS), parses every frame the read
//! buffer holds, takes a slot for each data message and delivers it.
//!
//! When all slots are taken, data messages are *parked* (up to the read buffer's size) and
//! reading goes on, so that ACK and NOOP frames behind them are still seen; a released slot
//! delivers the oldest parked message. Only when the park is full does the reader stop
//! reading — and then TCP flow control pushes back on the sender: chirp's backpressure.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Conn, ReadBuf};
use crate::error::Error;
use crate::message::{Message, Payload, Slot};
use crate::proto::slots::{Admit, Closed};
use crate::wire::{FrameKind, Preamble, PREAMBLE_SIZE};

/// Payloads at least this large are read straight into the message instead of through the
/// read buffer.
const DIRECT_READ: usize = 16 * 1024;

/// Reads plaintext from the connection into its read buffer.
pub(crate) struct Source<'a> {
    conn: &'a Arc<Conn>,
    pub(crate) buf: ReadBuf,
    cipher: Vec<u8>,
    /// The socket read timeout currently set (to avoid a system call when unchanged).
    read_timeout: Option<Duration>,
    /// Between frames: a read timeout that fires now only means the connection is idle.
    /// (The timeout is cleared lazily, when that happens, instead of after every read that
    /// ends on a frame boundary: a busy stream would pay a system call every other read.)
    between_frames: bool,
}

impl<'a> Source<'a> {
    pub(crate) fn new(conn: &'a Arc<Conn>) -> Source<'a> {
        Source {
            conn,
            buf: ReadBuf::new(conn.settings.buffer_size),
            cipher: Vec::new(),
            read_timeout: None,
            between_frames: false,
        }
    }

    fn set_timeout(&mut self, t: Option<Duration>) -> Result<(), Error> {
        if self.read_timeout != t {
            self.conn.stream.set_read_timeout(t)?;
            self.read_timeout = t;
        }
        Ok(())
    }

    /// Reads more plaintext into the buffer. With a deadline, waits at most until then;
    /// without, waits as long as the socket has no read timeout set.
    pub(crate) fn fill(&mut self, deadline: Option<Instant>) -> Result<usize, Error> {
        let mut dst = std::mem::take(&mut self.buf);
        let r = self.read_into(dst.space(), deadline);
        if let Ok(n) = r {
            dst.filled(n);
        }
        self.buf = dst;
        r
    }

    /// Reads plaintext into `dst` (at least one byte).
    fn read_into(&mut self, dst: &mut [u8], deadline: Option<Instant>) -> Result<usize, Error> {
        let conn = self.conn;
        // Whatever handlers queued while we dispatched goes out before we block.
        super::writer::uncork();
        loop {
            if let Some(d) = deadline {
                let remaining = d.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(Error::timeout("waiting for the peer"));
                }
                self.set_timeout(Some(remaining))?;
            }
            match conn.tls.get() {
                None => match (&conn.stream).read(dst) {
                    Ok(0) => return Err(conn.end_of_stream()),
                    Ok(n) => return Ok(n),
                    Err(e) => self.read_error(e, deadline)?,
                },
                Some(tls) => {
                    // Plaintext already decrypted but not taken yet comes first.
                    let d = tls.decrypt(&[], dst)?;
                    if d.plain > 0 {
                        return Ok(d.plain);
                    }
                    if self.cipher.len() < 17 * 1024 {
                        self.cipher.resize(17 * 1024, 0);
                    }
                    let n = match (&conn.stream).read(&mut self.cipher) {
                        Ok(0) => return Err(conn.end_of_stream()),
                        Ok(n) => n,
                        Err(e) => {
                            self.read_error(e, deadline)?;
                            continue;
                        }
                    };
                    let d = tls.decrypt(&self.cipher[..n], dst)?;
                    if d.wants_flush {
                        let mut st = conn.lock();
                        st.tls_flush = true;
                        conn.wake_writer(st);
                    }
                    if d.plain > 0 {
                        return Ok(d.plain);
                    }
                }
            }
        }
    }

    /// Classifies a read error: retry (interrupted, or a time-out before the deadline) or
    /// fail.
    fn read_error(&mut self, e: io::Error, deadline: Option<Instant>) -> Result<(), Error> {
        match e.kind() {
            io::ErrorKind::Interrupted => Ok(()),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => match deadline {
                Some(d) if Instant::now() < d => Ok(()),
                Some(_) => Err(Error::timeout("waiting for the peer")),
                // Idle between frames: from now on wait without a timeout.
                None if self.between_frames => self.set_timeout(None),
                None => Err(Error::timeout(format!(
                    "peer sent part of a frame and then nothing for {:?}",
                    self.conn.settings.timeout
                ))),
            },
            _ => Err(Error::broken("reading from the peer", e)),
        }
    }

    /// Reads exactly `len` data bytes: a small payload into the message itself (no heap
    /// allocation), a larger one as [`Source::read_payload`] does. The read buffer (at least
    /// 1 KiB) always has room for a whole small payload, so this waits until it holds one.
    fn read_data(&mut self, len: usize) -> Result<Payload, Error> {
        if len > Payload::INLINE {
            return self.read_payload(len).map(Payload::from);
        }
        self.between_frames = false;
        while self.buf.len() < len {
            self.set_timeout(Some(self.conn.settings.timeout))?;
            self.fill(None)?;
        }
        let data = Payload::from(&self.buf.data()[..len]);
        self.buf.consume(len);
        Ok(data)
    }

    /// Reads exactly `len` payload bytes into a new vector: first what the buffer holds,
    /// then (for large payloads) straight from the socket, growing the vector only as bytes
    /// arrive so that a peer announcing a large message and then stalling costs little.
    fn read_payload(&mut self, len: usize) -> Result<Vec<u8>, Error> {
        let have = self.buf.len().min(len);
        let mut v = Vec::with_capacity(if len <= DIRECT_READ {
            len
        } else {
            have.max(DIRECT_READ)
        });
        v.extend_from_slice(&self.buf.data()[..have]);
        self.buf.consume(have);
        self.between_frames = false;
        while v.len() < len {
            let missing = len - v.len();
            self.set_timeout(Some(self.conn.settings.timeout))?;
            if missing >= DIRECT_READ {
                let old = v.len();
                let grow = missing.min(old.max(DIRECT_READ));
                v.resize(old + grow, 0);
                let n = self.read_into(&mut v[old..], None)?;
                v.truncate(old + n);
            } else {
                self.fill(None)?;
                let take = self.buf.len().min(missing);
                v.extend_from_slice(&self.buf.data()[..take]);
                self.buf.consume(take);
            }
        }
        Ok(v)
    }
}

/// Reads and dispatches frames until the connection fails; returns the reason.
pub(crate) fn run(conn: &Arc<Conn>, src: &mut Source) -> Error {
    match read_loop(conn, src) {
        Ok(()) => Error::Shutdown,
        Err(e) => e,
    }
}

fn read_loop(conn: &Arc<Conn>, src: &mut Source) -> Result<(), Error> {
    let settings = &conn.settings;
    let max = u64::from(settings.max_msg_size);
    let info = conn.peer_info().ok_or(Error::Shutdown)?;
    let from = SocketAddr::new(conn.peer.ip(), info.port);
    let owner = &conn.owner;
    loop {
        super::writer::cork(frames_buffered(src.buf.data(), super::writer::CORK_COUNT));
        // Data and NOOP frames (not ACKs) refresh the activity time stamps: once per read
        // buffer, not per message.
        let mut alive = false;
        while let Some(pre) = peek_preamble(src.buf.data()) {
            let kind = pre.validate(max).map_err(Error::frame)?;
            match kind {
                FrameKind::Ack => {
                    src.buf.consume(PREAMBLE_SIZE);
                    super::bump(&conn.traffic.acks_in, 1);
                    owner.ack(conn, pre.identity);
                }
                FrameKind::Noop => {
                    src.buf.consume(PREAMBLE_SIZE);
                    alive = true;
                }
                FrameKind::Data { req_ack } => {
                    alive = true;
                    let len = usize::from(pre.header_len).saturating_add(pre.data_len as usize);
                    let admit = admit(conn, len)?;
                    src.buf.consume(PREAMBLE_SIZE);
                    super::bump(&conn.traffic.msgs_in, 1);
                    super::bump(&conn.traffic.bytes_in, len as u64);
                    let header = if pre.header_len == 0 {
                        Vec::new()
                    } else {
                        src.read_payload(usize::from(pre.header_len))?
                    };
                    let data = if pre.data_len == 0 {
                        Payload::default()
                    } else {
                        src.read_data(pre.data_len as usize)?
                    };
                    let mut msg = Message {
                        identity: pre.identity,
                        serial: pre.serial,
                        header,
                        data,
                        address: Some(from),
                        remote_identity: info.identity,
                        type_bits: pre.kind_bits,
                        slot: None,
                    };
                    match admit {
                        Admit::Direct => {
                            msg.slot =
                                Some(Slot::new(conn.clone(), req_ack, pre.identity, pre.serial));
                            owner.deliver(conn, msg);
                        }
                        Admit::Park(cost) => conn.park(msg, req_ack, cost),
                    }
                }
            }
        }
        if alive {
            conn.lock().active.touch(Instant::now());
            owner.activity(conn);
        }
        // Mid-frame, the rest must come within the timeout; between frames, wait freely
        // (idle connections are garbage-collected, which shuts the socket down). A timeout
        // left set from mid-frame is cleared only if it fires while idle.
        src.between_frames = src.buf.len() == 0;
        if !src.between_frames {
            src.set_timeout(Some(settings.timeout))?;
        }
        src.fill(None)?;
    }
}

/// Decodes (without validating) the preamble at the start of `buf`, if it is all there.
fn peek_preamble(buf: &[u8]) -> Option<Preamble> {
    let raw: &[u8; PREAMBLE_SIZE] = buf.get(..PREAMBLE_SIZE)?.try_into().ok()?;
    Some(Preamble::decode(raw))
}

/// The number of frames that start in `buf` (the last may be partial), counting up to
/// `max`. Only preambles are looked at; they are validated when the frame is dispatched.
fn frames_buffered(buf: &[u8], max: usize) -> usize {
    let (mut off, mut n) = (0usize, 0usize);
    while n < max && off < buf.len() {
        n += 1;
        let Some(pre) = peek_preamble(&buf[off..]) else {
            break;
        };
        off = off
            .saturating_add(PREAMBLE_SIZE + usize::from(pre.header_len))
            .saturating_add(pre.data_len as usize);
    }
    n
}

/// Decides how the data frame of `len` payload bytes is taken in (see
/// [`Slots::admit`](crate::proto::slots::Slots::admit)). Waits only when it can neither have a
/// slot nor be parked: the park is full, or it is alone and larger than the whole park.
/// (Until then the reader goes on reading — ACKs and NOOPs behind an undeliverable message
/// are still seen, so two nodes waiting on each other's ACK do not deadlock.) Before it
/// would wait, it writes what handlers queued (their releases may be in it).
fn admit(conn: &Arc<Conn>, len: usize) -> Result<Admit, Error> {
    let cost = len.saturating_add(super::PARK_OVERHEAD);
    conn.slots
        .admit(cost, super::writer::uncork, || {
            super::writer::cork(usize::MAX)
        })
        .map_err(|Closed| conn.close_reason().unwrap_or(Error::Shutdown))
}

#[cfg(test)]
mod tests {
    use super::frames_buffered;
    use crate::wire::{Preamble, PREAMBLE_SIZE};
    use crate::Identity;

    fn frame(data_len: u32) -> Vec<u8> {
        let mut v = Preamble {
            identity: Identity::zero(),
            serial: 0,
            data_len,
            header_len: 0,
            kind_bits: 0,
        }
        .encode()
        .to_vec();
        v.resize(PREAMBLE_SIZE + (data_len as usize).min(64), 7);
        v
    }

    #[test]
    fn counts_frames_up_to_the_limit_and_survives_hostile_lengths() {
        assert_eq!(frames_buffered(&[], 5), 0);
        let three: Vec<u8> = [frame(1), frame(0), frame(16)].concat();
        assert_eq!(frames_buffered(&three, 5), 3);
        assert_eq!(frames_buffered(&three, 2), 2);
        // A partial preamble or payload counts as a frame.
        assert_eq!(frames_buffered(&three[..PREAMBLE_SIZE + 1 + 5], 5), 2);
        let many: Vec<u8> = (0..10).flat_map(|_| frame(3)).collect();
        assert_eq!(frames_buffered(&many, 5), 5);
        // The largest announced length ends the walk instead of overflowing.
        let hostile: Vec<u8> = [frame(u32::MAX), frame(1)].concat();
        assert_eq!(frames_buffered(&hostile, 5), 1);
    }
}
