//! The writer thread: the only thread that writes to a connection's socket once it is set
//! up. It takes every queued frame at once (control frames first), encodes the preambles,
//! and writes the batch with one vectored write — or, with TLS, encrypts the batch and
//! writes the ciphertext — without holding any lock during the write.

use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use super::Conn;
use crate::error::Error;
use crate::message::Identity;
use crate::node::state::{After, Frame};
use crate::node::Inner;
use crate::wire::{Preamble, PREAMBLE_SIZE, TYPE_ACK, TYPE_NOOP, TYPE_REQ_ACK};

pub(crate) fn run(inner: &Arc<Inner>, conn: &Arc<Conn>) {
    let id = conn.id;
    let mut frames: Vec<(Frame, u32)> = Vec::new();
    let mut preambles: Vec<[u8; PREAMBLE_SIZE]> = Vec::new();
    let mut cipher: Vec<u8> = Vec::new();
    let mut after = After::default();
    let req_ack = if inner.lim.synchronous {
        TYPE_REQ_ACK
    } else {
        0
    };
    let mut st = inner.lock();
    while let Some(e) = st.conns.get_mut(&id) {
        if e.closing {
            break;
        }
        let flush = std::mem::take(&mut e.tls_flush);
        st.take_frames(&inner.lim, id, &mut frames);
        if frames.is_empty() && !flush {
            st = conn.writer_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        if !frames.is_empty() {
            if let Some(e) = st.conns.get_mut(&id) {
                e.writing = true;
            }
        }
        drop(st);

        preambles.clear();
        for (frame, serial) in &frames {
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
            preambles.push(p.encode());
        }
        let result = write_batch(conn, &frames, &preambles, &mut cipher);

        st = inner.lock();
        if !frames.is_empty() {
            st.frames_written(&inner.lim, id, &mut frames, result, &mut after);
        } else if let Err(e) = result {
            st.shutdown_conn(&inner.lim, id, e, false, &mut after);
        }
        if !after.is_empty() {
            drop(st);
            inner.run_after(&mut after);
            st = inner.lock();
        }
    }
    st.conn_thread_exit(id);
    drop(st);
    inner.run_after(&mut after);
}

fn write_error(e: io::Error) -> Error {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        Error::timeout("writing to the peer made no progress (is it reading?)")
    } else {
        Error::protocol(format!("writing to the peer failed: {e}"))
    }
}

fn write_batch(
    conn: &Conn,
    frames: &[(Frame, u32)],
    preambles: &[[u8; PREAMBLE_SIZE]],
    cipher: &mut Vec<u8>,
) -> Result<(), Error> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len() * 3);
    for ((frame, _), pre) in frames.iter().zip(preambles) {
        parts.push(pre);
        if let Frame::User(p) = frame {
            let m = p.msg();
            if !m.header.is_empty() {
                parts.push(&m.header);
            }
            if !m.data.is_empty() {
                parts.push(&m.data);
            }
        }
    }
    match conn.tls.get() {
        Some(tls) => {
            cipher.clear();
            if parts.is_empty() {
                tls.take_outgoing(cipher);
            } else {
                tls.encrypt(&parts, cipher)?;
            }
            (&conn.stream).write_all(cipher).map_err(write_error)?;
            if cipher.capacity() > 1 << 20 {
                *cipher = Vec::new();
            }
            Ok(())
        }
        None => write_all_vectored(&conn.stream, &parts).map_err(write_error),
    }
}

fn write_all_vectored(mut stream: &std::net::TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    // The kernel takes at most IOV_MAX (1024) slices per call.
    const MAX_IOV: usize = 1024;
    let mut slices: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut bufs: &mut [IoSlice] = &mut slices;
    while !bufs.is_empty() {
        let n = bufs.len().min(MAX_IOV);
        match stream.write_vectored(&bufs[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut bufs, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
