//! Inputs the coverage-guided fuzzers (fuzz/, scripts/fuzz.sh) found, kept as regression
//! tests: each replays the input the way its fuzz target does and checks what the target
//! checks.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use libchirp::wire::{Handshake, Preamble};
use libchirp::{Config, Event, Identity, Node};

/// The `reader` target's node: asynchronous, small limits, plaintext on loopback.
fn reader_node() -> (Node, SocketAddr) {
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
    (node, addr)
}

/// Connects, exchanges handshakes (advertising port 4000, as the fuzz target does).
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

/// Replays a `reader` input on the node at `addr` as the fuzz target does: cut points, then
/// the byte stream, then a well-formed peer, which must be served.
fn replay_reader(addr: SocketAddr, events: &libchirp::Events, input: &[u8]) {
    while events.try_recv().is_some() {}
    let (&n, rest) = input.split_first().unwrap_or((&0, &[]));
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, mut stream) = rest.split_at(n);
    let mut s = connect(addr);
    for &cut in cuts {
        let (piece, tail) = stream.split_at(usize::from(cut).min(stream.len()));
        if s.write_all(piece).is_err() {
            break;
        }
        stream = tail;
    }
    let _ = s.write_all(stream);
    drop(s);
    let mut ok = connect(addr);
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
    let seen: Vec<Event> = events.try_iter().collect();
    assert!(
        wrote.is_ok(),
        "a well-formed peer after the input is served: {wrote:?}; events {seen:#?}"
    );
    drop(ok);
}

/// Found by `reader` after about 10,000 inputs on one node: a peer's connection closes (here
/// for an oversize frame) while the next peer under the same advertised port is in its
/// handshake. The closing connection's remote, left with nothing pending, was dropped from
/// the table between the new connection's lookup and its attach, and the new connection
/// was shut down right after the handshake ("Disconnected ... Shutdown"; broken pipe on the
/// peer's first write). The attach now looks the remote up again. The race is narrow, so
/// the input is replayed many times, with the next peer connecting while the node closes
/// the previous one.
#[test]
fn reader_a_new_peer_is_not_cut_off_when_its_remote_is_dropped_during_its_handshake() {
    let input: &[u8] = &[
        0, 17, 17, 17, 17, 17, 17, 17, 1, 175, 0, 6, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        1, 0, 0, 0, 1, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 0, 0, 0, 2,
        0, 0, 0, 1, 0, 0, 0, 17, 2, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 0,
        0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 3, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17,
        17, 17, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 29, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17,
        17, 17, 17, 17, 17, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 5, 17, 17, 17, 17, 17, 17, 17, 17, 17,
        17, 17, 17, 17, 17, 17, 17, 0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 6, 17, 17, 17, 17, 17, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 17, 17, 17, 17, 0, 0,
        0, 7, 0, 0, 0, 1, 0, 0, 0, 7, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17, 17,
        17, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 8, 17, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 108,
        140, 0, 0, 0,
    ];
    let (node, addr) = reader_node();
    let events = node.events();
    // An oversize frame: the node closes that connection at once.
    let mut oversize = vec![0u8];
    oversize.extend_from_slice(
        &Preamble {
            identity: Identity::random(),
            serial: 1,
            data_len: 1 << 20,
            header_len: 0,
            kind_bits: 0,
        }
        .encode(),
    );
    for i in 0..1500 {
        replay_reader(addr, &events, if i % 2 == 0 { input } else { &oversize });
    }
    node.close();
}
