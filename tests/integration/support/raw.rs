//! A hand-driven libchirp peer over a plain socket, for checking the node byte by byte.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use libchirp::wire::{Handshake, Preamble, HANDSHAKE_SIZE, PREAMBLE_SIZE};
use libchirp::Identity;

/// A frame as read off the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub identity: Identity,
    pub serial: u32,
    pub kind: u8,
    pub header: Vec<u8>,
    pub data: Vec<u8>,
}

pub struct Raw {
    pub stream: TcpStream,
    pub peer: Handshake,
    /// The identity this raw peer sent in its handshake.
    pub me: Identity,
}

impl Raw {
    fn start(stream: TcpStream, my_port: u16, my_id: Identity) -> Raw {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut s = stream;
        s.write_all(
            &Handshake {
                port: my_port,
                identity: my_id,
            }
            .encode(),
        )
        .unwrap();
        let mut hs = [0u8; HANDSHAKE_SIZE];
        s.read_exact(&mut hs).expect("peer handshake");
        Raw {
            stream: s,
            peer: Handshake::decode(&hs),
            me: my_id,
        }
    }

    /// Connects to a node and exchanges handshakes, advertising `my_port`.
    pub fn connect(addr: SocketAddr, my_port: u16) -> Raw {
        Raw::start(
            TcpStream::connect(addr).expect("connect"),
            my_port,
            Identity::random(),
        )
    }

    /// Exchanges handshakes on an accepted stream, advertising `my_port`.
    pub fn from_stream(stream: TcpStream, my_port: u16) -> Raw {
        Raw::start(stream, my_port, Identity::random())
    }

    /// Accepts one connection from a node and exchanges handshakes.
    pub fn accept(listener: &TcpListener) -> Raw {
        let port = listener.local_addr().unwrap().port();
        let (s, _) = listener.accept().expect("accept");
        Raw::start(s, port, Identity::random())
    }

    pub fn send_frame(
        &mut self,
        identity: Identity,
        serial: u32,
        kind: u8,
        header: &[u8],
        data: &[u8],
    ) {
        let mut out = Preamble {
            identity,
            serial,
            data_len: data.len() as u32,
            header_len: header.len() as u16,
            kind_bits: kind,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(header);
        out.extend_from_slice(data);
        self.stream.write_all(&out).unwrap();
    }

    pub fn ack(&mut self, identity: Identity, serial: u32) {
        self.send_frame(identity, serial, libchirp::wire::TYPE_ACK, &[], &[]);
    }

    pub fn read_frame(&mut self) -> Frame {
        let mut p = [0u8; PREAMBLE_SIZE];
        self.stream.read_exact(&mut p).expect("frame preamble");
        let pre = Preamble::decode(&p);
        let mut header = vec![0; pre.header_len as usize];
        self.stream.read_exact(&mut header).expect("frame header");
        let mut data = vec![0; pre.data_len as usize];
        self.stream.read_exact(&mut data).expect("frame data");
        Frame {
            identity: pre.identity,
            serial: pre.serial,
            kind: pre.kind_bits,
            header,
            data,
        }
    }

    /// True if nothing arrives within `d` (and the connection is still open).
    pub fn quiet_for(&mut self, d: Duration) -> bool {
        self.stream.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 1];
        let r = self.stream.peek(&mut b);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        matches!(r, Err(ref e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }

    /// Waits (up to `d`) for the node to close the connection.
    pub fn closed_within(&mut self, d: Duration) -> bool {
        closed_within(&mut self.stream, d)
    }
}

/// Reads and discards until EOF or reset, up to `d`; true if the peer closed.
pub fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    let deadline = std::time::Instant::now() + d;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}
