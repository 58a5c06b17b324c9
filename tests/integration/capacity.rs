//! Admission control and bounded memory: connection caps, the half-open cap and the
//! per-remote queue bound refuse the one connection or message involved, count it, and
//! leave the node serving everyone else.
use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use libchirp::wire::{Handshake, HANDSHAKE_SIZE};
use libchirp::{Error, Identity, Message};
use support::{config, echo_node, eventually, inbox_node, recv, v4};

/// What became of a raw client: the node's handshake arrived (served) or the node closed
/// the socket at once (refused).
#[derive(Debug, PartialEq)]
enum Fate {
    Served,
    Refused,
}

fn fate(s: &mut TcpStream) -> Fate {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hs = [0u8; HANDSHAKE_SIZE];
    match s.read_exact(&mut hs) {
        Ok(()) => Fate::Served,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Fate::Refused,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Fate::Refused,
        Err(e) => panic!("neither served nor refused within 10 s: {e}"),
    }
}

/// A raw client that connects and sends a chirp handshake.
fn handshaking_client(to: SocketAddr, port: u16) -> TcpStream {
    let mut s = TcpStream::connect(to).unwrap();
    let hs = Handshake {
        port,
        identity: Identity::random(),
    };
    s.write_all(&hs.encode()).unwrap();
    s
}

#[test]
fn max_connections_serves_the_first_50_of_80_refuses_and_counts_30_and_stays_healthy() {
    let mut c = config(false);
    c.max_connections = 50;
    c.max_handshaking = 50;
    let echo = echo_node(c);
    assert_eq!(echo.config().max_connections(), 50);
    let to = v4(&echo);
    let mut clients: Vec<TcpStream> = (0..80)
        .map(|i| handshaking_client(to, 10_000 + i))
        .collect();
    let fates: Vec<Fate> = clients.iter_mut().map(fate).collect();
    let served = fates.iter().filter(|f| **f == Fate::Served).count();
    assert_eq!(served, 50, "{fates:?}");
    assert!(
        fates[..50].iter().all(|f| *f == Fate::Served),
        "the first 50 are served"
    );
    assert!(eventually(Duration::from_secs(10), || echo
        .stats()
        .refused_capacity
        == 30));
    let stats = echo.stats();
    assert_eq!(stats.refused_capacity, 30, "{stats:?}");
    assert_eq!(stats.accepted, 50, "{stats:?}");
    assert_eq!(echo.connection_count(), 50);
    // A dial that would need a 51st connection fails with the limit and its value.
    let other = echo_node(config(false));
    let e = echo
        .send(Message::to(v4(&other), b"x".to_vec()))
        .wait()
        .unwrap_err();
    assert!(
        matches!(
            e.error(),
            Error::LimitReached {
                limit: "max_connections",
                value: 50
            }
        ),
        "{e}"
    );
    assert_eq!(e.into_message().data(), b"x");
    // Room again: ten clients leave, a real peer is served and gets its echo.
    clients.truncate(40);
    assert!(eventually(Duration::from_secs(10), || echo
        .connection_count()
        == 40));
    let (peer, inbox) = inbox_node(config(false));
    peer.send(Message::to(to, b"healthy".to_vec()))
        .wait()
        .unwrap();
    assert_eq!(recv(&inbox, "echo").data(), b"healthy");
    drop(clients);
    peer.close();
    other.close();
    echo.close();
}

#[test]
fn half_open_connections_are_capped_and_real_peers_are_served_again_once_they_go() {
    let mut c = config(false);
    c.timeout = Duration::from_secs(10); // handshake budget 20 s: longer than the test
    c.max_handshaking = 5;
    let echo = echo_node(c);
    let to = v4(&echo);
    // An established peer before the flood.
    let (good, inbox) = inbox_node(config(false));
    good.send(Message::to(to, b"before".to_vec()))
        .wait()
        .unwrap();
    assert_eq!(recv(&inbox, "echo").data(), b"before");
    // Five silent sockets fill the half-open cap (the node greets each one), the next
    // five are closed at once.
    let mut silent: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(to).unwrap()).collect();
    for s in &mut silent {
        assert_eq!(fate(s), Fate::Served, "greeted while in the handshake");
    }
    let mut flood: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(to).unwrap()).collect();
    for s in &mut flood {
        assert_eq!(fate(s), Fate::Refused);
    }
    let stats = echo.stats();
    assert_eq!(stats.refused_handshaking, 5, "{stats:?}");
    assert_eq!(stats.handshaking, 5, "{stats:?}");
    // The established peer is served throughout.
    good.send(Message::to(to, b"during".to_vec()))
        .wait()
        .unwrap();
    assert_eq!(recv(&inbox, "echo").data(), b"during");
    // The silent ones go (their handshake fails); new peers are served again. (That
    // silent sockets are also closed when their handshake time runs out is proved in
    // tests/integration/protocol.rs.)
    drop(silent);
    assert!(eventually(Duration::from_secs(10), || echo
        .stats()
        .handshaking
        == 0));
    let mut late = handshaking_client(to, 4242);
    assert_eq!(fate(&mut late), Fate::Served);
    good.close();
    echo.close();
}

#[test]
fn a_full_send_queue_refuses_at_once_and_hands_the_message_back() {
    // A peer that accepts TCP but never answers the handshake: messages wait in the queue.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap();
    let mut c = config(true);
    c.max_queued = 4;
    c.timeout = Duration::from_secs(5);
    let (node, _) = inbox_node(c);
    assert_eq!(node.config().max_queued(), 4);
    let waiting: Vec<_> = (0..4u8)
        .map(|i| node.send(Message::to(to, vec![i])))
        .collect();
    let fifth = node.send(Message::to(to, b"fifth".to_vec()));
    assert!(fifth.is_ready(), "a full queue refuses at once");
    let refused = fifth.wait().unwrap_err();
    assert!(
        matches!(
            refused.error(),
            Error::LimitReached {
                limit: "max_queued",
                value: 4
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("max_queued (4)"), "{refused}");
    assert_eq!(refused.into_message().data(), b"fifth");
    assert_eq!(node.stats().queue_full, 1);
    // Requests are bounded the same way.
    let r = node
        .request(Message::to(to, b"q".to_vec()))
        .wait()
        .unwrap_err();
    assert!(
        matches!(
            r,
            Error::LimitReached {
                limit: "max_queued",
                ..
            }
        ),
        "{r}"
    );
    node.close();
    for w in waiting {
        assert!(w.wait().unwrap_err().error().is_shutdown());
    }
    drop(listener);
}

#[test]
fn the_default_limits_come_from_the_process_and_are_reported() {
    let mut c = config(false);
    c.max_connections = 0;
    let node = echo_node(c);
    let eff = node.config();
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().0;
    assert!(eff.max_connections() >= 16);
    assert!(
        (eff.max_connections() as u64) < nofile,
        "headroom below RLIMIT_NOFILE"
    );
    assert_eq!(eff.max_handshaking(), (eff.max_connections() / 4).max(16));
    assert_eq!(eff.max_queued(), 1024);
    node.close();
    // A half-open cap above the connection cap is a configuration error.
    let mut bad = config(false);
    bad.max_connections = 10;
    bad.max_handshaking = 11;
    let e = bad.validate().unwrap_err();
    assert!(e.to_string().contains("max_handshaking"), "{e}");
}
