//! The reader's frame state machine, fed arbitrary byte streams over a real connection:
//! one node (asynchronous, small limits) listens on loopback; each input is written,
//! after a valid handshake, in pieces cut where the input says (half preambles, half
//! payloads, at every offset), then the connection is closed. The node must never panic,
//! and after every input it must still answer a well-formed peer.
#![no_main]
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libchirp::wire::{Handshake, Preamble};
use libchirp::{Config, Events, Identity, Node};
use libfuzzer_sys::fuzz_target;

fn node() -> &'static (Node, SocketAddr, Events) {
    static NODE: OnceLock<(Node, SocketAddr, Events)> = OnceLock::new();
    NODE.get_or_init(|| {
        let mut c = Config::default();
        c.port = 0;
        c.disable_encryption = true;
        c.synchronous = false;
        c.max_msg_size = 4096;
        c.buffer_size = 1024;
        c.max_slots = 2;
        c.timeout = Duration::from_millis(500);
        let node = Node::start(c, drop).expect("a node");
        let addr = SocketAddr::from(([127, 0, 0, 1], node.port()));
        let events = node.events();
        (node, addr, events)
    })
}

fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect to the node");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        &Handshake {
            port: 4000,
            identity: Identity::random(),
        }
        .encode(),
    )
    .unwrap();
    let mut hs = [0u8; 18];
    s.read_exact(&mut hs).expect("the node's handshake");
    s
}

fuzz_target!(|data: &[u8]| {
    let (node, addr, events) = node();
    // Only this input's events matter.
    while events.try_recv().is_some() {}
    // First byte: how many cut points follow (each one byte: a piece length).
    let (&n, rest) = data.split_first().unwrap_or((&0, &[]));
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, mut stream) = rest.split_at(n);
    let mut s = connect(*addr);
    for &cut in cuts {
        let (piece, tail) = stream.split_at(usize::from(cut).min(stream.len()));
        if s.write_all(piece).is_err() {
            break;
        }
        stream = tail;
    }
    let _ = s.write_all(stream);
    drop(s);
    // The node still serves a well-formed peer: a NOOP-free data frame is read and the
    // connection stays open.
    let mut ok = connect(*addr);
    let frame = Preamble {
        identity: Identity::random(),
        serial: 1,
        data_len: 2,
        header_len: 0,
        kind_bits: 0,
    };
    let wrote = ok
        .write_all(&frame.encode())
        .and_then(|()| ok.write_all(b"ok"));
    if let Err(e) = wrote {
        let seen: Vec<libchirp::Event> = events.try_iter().collect();
        panic!(
            "a well-formed peer was cut off after the input ({e}); stats {:?}; events {seen:#?}",
            node.stats()
        );
    }
    // Let the node's connection count settle so inputs do not pile up connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    drop(ok);
    while node.connection_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(!node.is_closed());
});
