//! Writing frames to a connection.
//!
//! Frames are written by whichever thread finds the connection idle: the thread that queued
//! them writes them at once with a non-blocking `sendmsg` ("direct write"), which costs no
//! thread wake-up. Only when the socket cannot take everything does the connection's writer
//! thread get the unwritten remainder ("handoff") and finish it with blocking writes. While
//! one thread writes, others only queue; the active writer takes every queued frame at once
//! (control frames first) and writes the batch with one system call.
//!
//! A reader thread *corks* while it dispatches one read buffer: writes that handlers on it
//! cause are collected and flushed in batches of a few frames (see `CORK_FRAMES`), and
//! whatever is left before the reader blocks again.
//!
//! No lock is held during a write; the `writing` flag in the connection's state says who
//! owns the socket's write side, and `kick_pending` that frames were queued meanwhile.
//! Frames come from the connection's owner (`Owner::take_frames`) and go back to it when
//! written (`Owner::written`).

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::sync::Arc;

use super::claim::Step;
use super::{Conn, Handoff, Socket};
use crate::error::Error;
use crate::frame::Frame;
use crate::message::Identity;
use crate::wire::{Preamble, TYPE_ACK, TYPE_NOOP, TYPE_REQ_ACK};

/// The kernel takes at most IOV_MAX (1024) slices per call.
const MAX_IOV: usize = 1024;
/// Rounds a direct writer makes before leaving further batches to the writer thread.
const DIRECT_ROUNDS: usize = 4;

/// The most frames a corked thread holds before writing them.
///
/// Holding every reply until the whole read buffer is dispatched runs the two ends of a busy
/// connection in lockstep: each sleeps while the other works through a batch. So a reader
/// splits the replies to one read buffer into about four writes of at most `CORK_FRAMES`
/// frames each (a buffer of up to 4 frames: each reply at once; 5–8: every 2; …; 16:
/// every 4; 100: every 25; 253 or more: every 64). The peer gets work early, both ends run
/// at once and seldom sleep, and big buffers still share system calls. (What this rule and
/// its cap gained over the earlier ones is in docs/performance-history.md.)
const CORK_FRAMES: usize = 64;

/// Counting more buffered frames than this does not change the cork's limit.
pub(crate) const CORK_COUNT: usize = 4 * (CORK_FRAMES - 1) + 1;

/// A connection a corked thread holds writes back for (whatever its socket).
trait HeldConn: Send + Sync {
    /// Writes what is held back.
    fn write_held(self: Arc<Self>);
}

impl<S: Socket> HeldConn for Conn<S> {
    fn write_held(self: Arc<Self>) {
        direct_write(&self);
    }
}

/// What a corked thread holds back.
struct Held {
    /// Connections with frames queued, by id.
    conns: Vec<(u64, Arc<dyn HeldConn>)>,
    /// Frames queued since the last write.
    frames: usize,
    /// Write once this many frames are queued.
    limit: usize,
}

thread_local! {
    /// Connections whose writes are held back while this (reader) thread dispatches a
    /// read buffer; `None` when not corked.
    static CORK: RefCell<Option<Held>> = const { RefCell::new(None) };
}

impl Held {
    /// Counts one more queued frame: whether the held writes are due now.
    fn count(&mut self) -> bool {
        self.frames += 1;
        let due = self.frames >= self.limit;
        if due {
            self.frames = 0;
        }
        due
    }
}

/// One more frame was queued on a connection whose kick is under way (the protocol core
/// kicks once until the writer takes frames): a corked thread counts it as it counts a
/// kick, so that its held writes still go out every few frames and not only when it
/// uncorks.
pub(crate) fn queued() {
    let due = CORK
        .try_with(|c| {
            c.borrow_mut()
                .as_mut()
                .filter(|held| !held.conns.is_empty())
                .and_then(|held| held.count().then(|| std::mem::take(&mut held.conns)))
        })
        .ok()
        .flatten();
    for (_, conn) in due.into_iter().flatten() {
        conn.write_held();
    }
}

/// Starts holding back direct writes on this thread, which is about to dispatch a read
/// buffer holding `buffered` frames (counting a partial one).
pub(crate) fn cork(buffered: usize) {
    let limit = buffered.div_ceil(4).clamp(1, CORK_FRAMES);
    CORK.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_mut() {
            Some(held) => held.limit = limit,
            None => {
                *c = Some(Held {
                    conns: Vec::new(),
                    frames: 0,
                    limit,
                })
            }
        }
    });
}

/// Stops holding back and writes everything held back.
pub(crate) fn uncork() {
    let held = CORK.with(|c| c.borrow_mut().take());
    if let Some(held) = held {
        for (_, conn) in held.conns {
            conn.write_held();
        }
    }
}

type Batch = (Vec<(Frame, u32)>, Vec<u8>);

thread_local! {
    /// The batch vectors of the last direct write on this thread, reused by the next one.
    /// Taken, not borrowed: a direct write can start another one (a completion drops a
    /// message, which releases a slot, which queues an ACK).
    static SCRATCH: std::cell::Cell<Option<Batch>> = const { std::cell::Cell::new(None) };
}

/// Reusable batch vectors, handed back to this thread's `SCRATCH`, emptied, when dropped.
#[derive(Default)]
struct Scratch {
    frames: Vec<(Frame, u32)>,
    staging: Vec<u8>,
}

impl Scratch {
    fn take() -> Scratch {
        let (frames, staging) = SCRATCH
            .try_with(|c| c.take())
            .ok()
            .flatten()
            .unwrap_or_default();
        Scratch { frames, staging }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Frames left here (none on the normal paths) are failed by their own Drop, outside
        // the state lock, as everywhere else.
        self.frames.clear();
        self.staging.clear();
        if self.staging.capacity() > STAGING_KEEP {
            self.staging = Vec::new();
        }
        if self.frames.capacity() > FRAMES_KEEP {
            self.frames = Vec::new();
        }
        let batch = (
            std::mem::take(&mut self.frames),
            std::mem::take(&mut self.staging),
        );
        let _ = SCRATCH.try_with(|c| c.set(Some(batch)));
    }
}

/// Frames are queued on an idle connection: write them now, or later if corked (but no
/// later than the cork's frame limit allows).
pub(crate) fn kick<S: Socket>(conn: Arc<Conn<S>>, streaming: bool) {
    enum Then<S> {
        Write(Arc<Conn<S>>),
        Defer(Arc<Conn<S>>),
        Flush(Vec<(u64, Arc<dyn HeldConn>)>),
        Hold,
    }
    let then = CORK.with(|c| match c.borrow_mut().as_mut() {
        Some(held) => {
            let due = held.count();
            if due && held.conns.iter().all(|(id, _)| *id == conn.id) {
                // Only this connection is held (the usual case): no list to build.
                held.conns.clear();
                Then::Write(conn)
            } else {
                if !held.conns.iter().any(|(id, _)| *id == conn.id) {
                    held.conns.push((conn.id, conn));
                }
                if due {
                    Then::Flush(std::mem::take(&mut held.conns))
                } else {
                    Then::Hold
                }
            }
        }
        // Not corked (an application thread): write at once, unless this thread is
        // streaming sends, then the writer thread batches them.
        None if streaming => Then::Defer(conn),
        None => Then::Write(conn),
    });
    // Writes happen outside the borrow: a write can queue (and kick) more frames.
    match then {
        Then::Write(conn) => direct_write(&conn),
        Then::Defer(conn) => conn.defer_to_writer(),
        Then::Flush(conns) => {
            for (_, conn) in conns {
                conn.write_held();
            }
        }
        Then::Hold => {}
    }
}

/// Payloads up to this size are copied next to their preamble into one contiguous buffer;
/// larger ones are written from where they are (a slice of their own in the gather write).
/// The kernel pays per slice, so a batch of 16-byte messages goes out as one slice
/// instead of two per message.
const COPY_MAX: usize = 512;

/// Encodes the batch for one gather write: preambles and small payloads go into `staging`,
/// and the slices returned cover it, interleaved with the large payloads in wire order.
fn gather<'a>(
    frames: &'a [(Frame, u32)],
    staging: &'a mut Vec<u8>,
    req_ack: u8,
) -> Vec<IoSlice<'a>> {
    staging.clear();
    // Large payloads, each with the staging offset it follows.
    let mut large: Vec<(usize, &'a [u8])> = Vec::new();
    for (frame, serial) in frames {
        let p = match frame {
            Frame::User(p) => {
                let m = p.msg();
                Preamble {
                    identity: m.identity,
                    serial: *serial,
                    data_len: m.data.len() as u32,
                    header_len: m.header.len() as u16,
                    kind_bits: req_ack,
                }
            }
            Frame::Ack(r) => Preamble {
                identity: r.identity,
                serial: *serial,
                data_len: 0,
                header_len: 0,
                kind_bits: TYPE_ACK,
            },
            Frame::Noop => Preamble {
                identity: Identity::zero(),
                serial: *serial,
                data_len: 0,
                header_len: 0,
                kind_bits: TYPE_NOOP,
            },
        };
        staging.extend_from_slice(&p.encode());
        if let Frame::User(p) = frame {
            let m = p.msg();
            for part in [&m.header[..], &m.data[..]] {
                if part.len() <= COPY_MAX {
                    staging.extend_from_slice(part);
                } else {
                    large.push((staging.len(), part));
                }
            }
        }
    }
    let staging: &'a Vec<u8> = staging;
    let mut parts = Vec::with_capacity(2 * large.len() + 1);
    let mut from = 0;
    for (at, part) in large {
        if at > from {
            parts.push(IoSlice::new(&staging[from..at]));
        }
        parts.push(IoSlice::new(part));
        from = at;
    }
    if staging.len() > from {
        parts.push(IoSlice::new(&staging[from..]));
    }
    parts
}

/// Staging buffers larger than this are not kept between batches: every thread that writes
/// keeps its own (a reader thread per connection among them), so an idle connection must
/// not hold on to the buffer of its largest batch.
const STAGING_KEEP: usize = 64 * 1024;
/// The same for the batch's frame list (a frame is about 200 bytes).
const FRAMES_KEEP: usize = 256;

fn req_ack_bits<S: Socket>(conn: &Conn<S>) -> u8 {
    if conn.settings.synchronous {
        TYPE_REQ_ACK
    } else {
        0
    }
}

/// What a non-blocking write achieved.
enum Outcome {
    Done,
    /// The socket is full: these bytes are still to be written.
    Rest(Vec<u8>),
}

/// Writes queued frames of `conn` from the calling thread without blocking.
pub(crate) fn direct_write<S: Socket>(conn: &Arc<Conn<S>>) {
    let req_ack = req_ack_bits(conn);
    let owner = &conn.owner;
    let mut scratch = Scratch::take();
    let Scratch { frames, staging } = &mut scratch;
    let mut cipher = Vec::new();
    let mut again = false;
    for _ in 0..DIRECT_ROUNDS {
        if !conn.claim_write() {
            return;
        }
        owner.take_frames(conn, frames);
        if frames.is_empty() {
            again = conn.end_write(None);
            if again {
                continue;
            }
            return;
        }
        let outcome = {
            let mut parts = gather(frames, staging, req_ack);
            try_write(conn, &mut parts, &mut cipher)
        };
        match outcome {
            Ok(Outcome::Done) => {
                conn.traffic.written(frames);
                let now = crate::sync::now();
                owner.written(conn, frames, Ok(()), now);
                conn.end_write(Some(now));
                // A batch is bounded: more may be queued. Look until the queue is empty.
                again = true;
            }
            Ok(Outcome::Rest(rest)) => {
                // The socket is full: the writer thread finishes (still `writing`).
                let mut st = conn.lock();
                if st.closing {
                    drop(st);
                    owner.written(
                        conn,
                        frames,
                        Err(conn.close_reason().unwrap_or(Error::Shutdown)),
                        crate::sync::now(),
                    );
                    conn.end_write(None);
                } else {
                    st.write.hand_off(Handoff {
                        frames: std::mem::take(frames),
                        rest,
                    });
                    conn.wake_writer(st);
                }
                return;
            }
            Err(e) => {
                owner.written(conn, frames, Err(e.clone()), crate::sync::now());
                conn.end_write(None);
                conn.shutdown(e, true);
                return;
            }
        }
    }
    if again {
        // Still busy after a few rounds: let the writer thread take over.
        conn.defer_to_writer();
    }
}

/// One non-blocking attempt to write `parts` (encrypting them first with TLS).
fn try_write<S: Socket>(
    conn: &Conn<S>,
    parts: &mut [IoSlice],
    cipher: &mut Vec<u8>,
) -> Result<Outcome, Error> {
    match conn.tls.get() {
        Some(tls) => {
            cipher.clear();
            tls.encrypt(parts, cipher)?;
            let mut off = 0;
            while off < cipher.len() {
                match send_nonblocking(conn, &[IoSlice::new(&cipher[off..])]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Outcome::Rest(cipher[off..].to_vec()));
                    }
                    Err(e) => return Err(write_error(conn, e)),
                }
            }
            Ok(Outcome::Done)
        }
        None => {
            let mut bufs: &mut [IoSlice] = parts;
            while !bufs.is_empty() {
                let n = bufs.len().min(MAX_IOV);
                match send_nonblocking(conn, &bufs[..n]) {
                    Ok(written) => IoSlice::advance_slices(&mut bufs, written),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let total: usize = bufs.iter().map(|b| b.len()).sum();
                        let mut rest = Vec::with_capacity(total);
                        for b in bufs.iter() {
                            rest.extend_from_slice(b);
                        }
                        return Ok(Outcome::Rest(rest));
                    }
                    Err(e) => return Err(write_error(conn, e)),
                }
            }
            Ok(Outcome::Done)
        }
    }
}

/// A send that never blocks, whatever the socket's mode.
fn send_nonblocking<S: Socket>(conn: &Conn<S>, bufs: &[IoSlice]) -> io::Result<usize> {
    conn.stream.send_vectored(bufs, false)
}

/// The writer thread: finishes handoffs, writes batches when direct writers leave them,
/// flushes ciphertext a TLS read produced. Ends when the connection is shut down, or when it
/// has had nothing to do for `WRITER_LINGER` (it is started again when needed).
pub(crate) fn run<S: Socket>(conn: &Arc<Conn<S>>) {
    let owner = &conn.owner;
    let mut frames: Vec<(Frame, u32)> = Vec::new();
    let mut staging: Vec<u8> = Vec::new();
    let mut cipher: Vec<u8> = Vec::new();
    let req_ack = req_ack_bits(conn);
    let mut st = conn.lock();
    let mut yielded = false;
    loop {
        if st.closing {
            break;
        }
        if Conn::<S>::draining(&st) {
            // The peer closed its side: nothing new is written. Wait for the shutdown
            // the reader makes once the write under way has ended.
            st = conn.wait_writer(st, super::WRITER_LINGER).0;
            continue;
        }
        let result;
        let tls_flush = st.tls_flush;
        match st.write.next(tls_flush) {
            Step::Finish(h) => {
                // A direct writer filled the socket: finish its batch.
                drop(st);
                frames = h.frames;
                result = write_all(conn, &h.rest).map_err(|e| write_error(conn, e));
            }
            Step::Wait => {
                // A direct writer is active (it hands over or finishes by itself), or
                // nothing is to be done: wait, and end after a while of nothing.
                if !yielded
                    && crate::sync::now().saturating_duration_since(st.last_write)
                        < super::STREAM_GAP
                {
                    yielded = true;
                    drop(st);
                    std::thread::yield_now();
                    st = conn.lock();
                    continue;
                }
                yielded = false;
                st.write.set_asleep(true);
                let (g, timed_out) = conn.wait_writer(st, super::WRITER_LINGER);
                st = g;
                st.write.set_asleep(false);
                if timed_out && st.write.idle(st.tls_flush) {
                    st.writer_running = false;
                    return;
                }
                continue;
            }
            Step::Write => {
                let flush = std::mem::take(&mut st.tls_flush);
                drop(st);
                owner.take_frames(conn, &mut frames);
                if frames.is_empty() && !flush {
                    // Frames queued since we looked (their kick found us writing) are ours:
                    // dropping `end_write`'s answer here lost them until the next kick
                    // (found by the loom model in claim.rs).
                    let again = conn.end_write(None);
                    st = conn.lock();
                    if again {
                        st.write.defer();
                    }
                    continue;
                }
                let mut parts = gather(&frames, &mut staging, req_ack);
                result = write_blocking(conn, &mut parts, &mut cipher);
                drop(parts);
                if staging.capacity() > STAGING_KEEP {
                    staging = Vec::new();
                }
            }
        }
        if result.is_ok() {
            conn.traffic.written(&frames);
        }
        let now = crate::sync::now();
        owner.written(conn, &mut frames, result.clone(), now);
        if let Err(e) = result {
            conn.end_write(None);
            conn.shutdown(e, true);
            return;
        }
        conn.end_write(Some(now));
        st = conn.lock();
        // A batch is bounded: more may be queued. Look until the queue is empty.
        st.write.defer();
    }
}

/// What a failed write reports: the connection's own close reason if it was shut down
/// meanwhile (a write cut short by the shutdown is not the cause), else the OS error.
fn write_error<S: Socket>(conn: &Conn<S>, e: io::Error) -> Error {
    if let Some(reason) = conn.close_reason() {
        return reason;
    }
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        Error::timeout("writing to the peer made no progress (is it reading?)")
    } else {
        Error::broken("writing to the peer", e)
    }
}

/// Blocking write (bounded by the socket's write timeout) of a batch, or of the ciphertext
/// a TLS read left behind when `parts` is empty.
fn write_blocking<S: Socket>(
    conn: &Conn<S>,
    parts: &mut [IoSlice],
    cipher: &mut Vec<u8>,
) -> Result<(), Error> {
    match conn.tls.get() {
        Some(tls) => {
            cipher.clear();
            if parts.is_empty() {
                tls.take_outgoing(cipher);
            } else {
                tls.encrypt(parts, cipher)?;
            }
            write_all(conn, cipher).map_err(|e| write_error(conn, e))?;
            if cipher.capacity() > 1 << 20 {
                *cipher = Vec::new();
            }
            Ok(())
        }
        None => write_all_vectored(conn, parts).map_err(|e| write_error(conn, e)),
    }
}

/// Writes every slice, blocking (bounded by the socket's write timeout).
fn write_all_vectored<S: Socket>(conn: &Conn<S>, parts: &mut [IoSlice]) -> io::Result<()> {
    let mut bufs: &mut [IoSlice] = parts;
    let mut seen = None;
    while !bufs.is_empty() {
        let n = bufs.len().min(MAX_IOV);
        match conn.stream.send_vectored(&bufs[..n], true) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut bufs, written),
            Err(e) => draining(conn, e, &mut seen)?,
        }
    }
    Ok(())
}

/// A blocking write timed out (`e`): the kernel wakes a blocked writer only once much of
/// its send buffer is free, so a peer that reads slowly can leave it asleep for longer
/// than the timeout. The first time-out of a write takes the count of bytes the peer has
/// moved (`seen`) and waits once more; a later one goes on if the peer moved bytes since
/// (it is reading; the remote's stall check bounds the whole wait). Any other error, or
/// no progress, is returned.
fn draining<S: Socket>(conn: &Conn<S>, e: io::Error, seen: &mut Option<u64>) -> io::Result<()> {
    if !matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return Err(e);
    }
    let now = conn.bytes_moved();
    let progress = seen.map_or(true, |before| before != now);
    *seen = Some(now);
    if progress {
        Ok(())
    } else {
        Err(e)
    }
}

/// Writes all of `buf`, blocking (bounded by the socket's write timeout while the peer
/// takes nothing, see [`draining`]).
fn write_all<S: Socket>(conn: &Conn<S>, mut buf: &[u8]) -> io::Result<()> {
    let mut seen = None;
    while !buf.is_empty() {
        match conn.stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => draining(conn, e, &mut seen)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{gather, COPY_MAX};
    use crate::frame::{Done, Frame, Pending};
    use crate::message::{Identity, Message};
    use crate::wire::{Preamble, TYPE_NOOP};

    fn user(header: usize, data: usize, fill: u8) -> Frame {
        let mut m = Message::new(vec![fill; data]);
        m.set_header(vec![fill.wrapping_add(1); header]);
        Frame::User(Pending::new(m, Done::Request(0, Identity::zero())))
    }

    /// The frames as the wire carries them, encoded one by one.
    fn expected(frames: &[(Frame, u32)], req_ack: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for (f, serial) in frames {
            match f {
                Frame::User(p) => {
                    let m = p.msg();
                    let pre = Preamble {
                        identity: m.identity(),
                        serial: *serial,
                        data_len: m.data().len() as u32,
                        header_len: m.header().len() as u16,
                        kind_bits: req_ack,
                    };
                    out.extend_from_slice(&pre.encode());
                    out.extend_from_slice(m.header());
                    out.extend_from_slice(m.data());
                }
                Frame::Noop => out.extend_from_slice(
                    &Preamble {
                        identity: Identity::zero(),
                        serial: *serial,
                        data_len: 0,
                        header_len: 0,
                        kind_bits: TYPE_NOOP,
                    }
                    .encode(),
                ),
                Frame::Ack(_) => unreachable!("not used here"),
            }
        }
        out
    }

    #[test]
    fn a_gathered_batch_is_the_frames_in_wire_order_with_only_large_payloads_apart() {
        let frames = vec![
            (user(0, 16, 1), 1),
            (user(3, COPY_MAX + 1, 2), 2),
            (Frame::Noop, 3),
            (user(COPY_MAX + 7, 0, 3), 4),
            (user(0, 0, 4), 5),
            (user(5, COPY_MAX, 5), 6),
            (user(0, 70_000, 6), 7),
        ];
        let mut staging = Vec::new();
        let parts = gather(&frames, &mut staging, 1);
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(joined, expected(&frames, 1));
        // The three payloads larger than COPY_MAX are written from where they are, each a
        // slice of its own between staged runs: 3 staged runs and 3 borrowed payloads.
        let borrowed = |p: &std::io::IoSlice| {
            frames.iter().any(|(f, _)| match f {
                Frame::User(q) => [q.msg().header(), q.msg().data()]
                    .iter()
                    .any(|b| !b.is_empty() && b.as_ptr() == p.as_ptr()),
                _ => false,
            })
        };
        assert_eq!(parts.iter().filter(|p| borrowed(p)).count(), 3);
        assert!(parts
            .iter()
            .filter(|p| borrowed(p))
            .all(|p| p.len() > COPY_MAX));
        assert_eq!(parts.len(), 6);

        // Small messages only: one slice for the whole batch.
        let small: Vec<(Frame, u32)> = (0..100).map(|i| (user(2, 16, i as u8), i)).collect();
        let parts = gather(&small, &mut staging, 0);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].to_vec(), expected(&small, 0));
    }
}
