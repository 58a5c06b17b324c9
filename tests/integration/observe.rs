//! Observing a node: every counter and event of `Node::stats()`, `Node::remotes()` and
//! `Node::events()`, each caused by a scenario that should move it.
use crate::support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use libchirp::pki::TestPki;
use libchirp::wire::{TYPE_ACK, TYPE_REQ_ACK};
use libchirp::{Error, Event, Identity, Message, Node, Stats};
use support::raw::Raw;
use support::{config, echo_node, eventually, inbox_node, recv, v4};

fn wait_stats(node: &Node, what: &str, f: impl Fn(&Stats) -> bool) -> Stats {
    let ok = eventually(Duration::from_secs(10), || f(&node.stats()));
    let s = node.stats();
    assert!(ok, "{what}: {s:#?}");
    s
}

fn next_event(events: &libchirp::Events) -> Event {
    events
        .recv_timeout(Duration::from_secs(10))
        .expect("an event within 10 s")
}

#[test]
fn traffic_counts_messages_bytes_and_acks_both_ways() {
    let echo = echo_node(config(true));
    let (node, inbox) = inbox_node(config(true));
    for i in 0..10u8 {
        let mut m = Message::to(v4(&echo), vec![i; 96]);
        m.set_header(b"head".to_vec());
        let sending = node.send(m);
        drop(recv(&inbox, "echo")); // released: the echo's send completes, then ours
        sending.wait().unwrap();
    }
    // Counters move right after each write or read: wait until all have (a peer can act
    // on a frame before its writer has counted it).
    let s = wait_stats(&node, "sender", |s| {
        (
            s.msgs_out,
            s.bytes_out,
            s.msgs_in,
            s.bytes_in,
            s.acks_in,
            s.acks_out,
        ) == (10, 1000, 10, 1000, 10, 10)
    });
    assert_eq!((s.dialed, s.accepted, s.connections), (1, 0, 1));
    let e = wait_stats(&echo, "echo", |s| {
        (s.msgs_in, s.msgs_out, s.acks_in, s.acks_out) == (10, 10, 10, 10)
    });
    assert_eq!((e.accepted, e.dialed), (1, 0));
    // Per remote: the echo, by its listening address, with its identity.
    let remotes = node.remotes();
    assert_eq!(remotes.len(), 1);
    let r = &remotes[0];
    assert_eq!(r.address, v4(&echo));
    assert_eq!(r.identity, Some(echo.identity()));
    assert!(!r.encrypted);
    assert!(r.connected_since.is_some());
    assert_eq!((r.msgs_out, r.bytes_out, r.msgs_in), (10, 1000, 10));
    assert_eq!((r.queued, r.in_flight, r.slots_in_use), (0, 0, 0));
    // Traffic of closed connections stays in the totals.
    echo.close();
    let s = wait_stats(&node, "after the echo closed", |s| s.connections == 0);
    assert_eq!((s.msgs_out, s.msgs_in), (10, 10));
    assert_eq!(
        s.closed_peer, 1,
        "the echo closing is the peer closing: {s:#?}"
    );
    node.close();
}

#[test]
fn connected_and_disconnected_events_and_a_killed_peer() {
    let (node, _inbox) = inbox_node(config(false));
    let events = node.events();
    let mut raw = Raw::connect(v4(&node), 4321);
    match next_event(&events) {
        Event::Connected {
            address,
            identity,
            encrypted,
            incoming,
        } => {
            assert_eq!(address.port(), 4321, "the advertised port");
            assert_eq!(identity, raw.me);
            assert!(!encrypted && incoming);
        }
        other => panic!("{other:?}"),
    }
    raw.send_frame(Identity::random(), 1, 0, b"", b"x");
    drop(raw); // the peer dies
    match next_event(&events) {
        Event::Disconnected {
            address, reason, ..
        } => {
            assert_eq!(address.port(), 4321);
            assert!(matches!(reason, Error::Protocol { .. }), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let s = wait_stats(&node, "closed by the peer", |s| s.closed_peer == 1);
    assert_eq!(s.accepted, 1);
    node.close();
}

#[test]
fn a_closed_nodes_events_end_after_its_last_disconnect() {
    let (node, _inbox) = inbox_node(config(false));
    let events = node.events();
    let _raw = Raw::connect(v4(&node), 4322);
    assert!(matches!(next_event(&events), Event::Connected { .. }));
    assert!(!events.is_closed(), "an open node's events go on");
    node.close();
    // What the close caused is still delivered, then the stream ends without waiting.
    let rest: Vec<Event> = events.iter().collect();
    assert!(
        matches!(
            rest.as_slice(),
            [Event::Disconnected {
                reason: Error::Shutdown,
                ..
            }]
        ),
        "after close: {rest:?}"
    );
    assert!(events.is_closed());
    assert!(events.recv().is_none() && events.try_recv().is_none());
}

#[test]
fn protocol_violations_count_as_closed_or_refused() {
    let (node, _inbox) = inbox_node(config(true));
    let events = node.events();
    // After the handshake: an ACK carrying data.
    let mut raw = Raw::connect(v4(&node), 5000);
    assert!(matches!(next_event(&events), Event::Connected { .. }));
    raw.send_frame(Identity::random(), 1, TYPE_ACK, b"", b"data");
    assert!(raw.closed_within(Duration::from_secs(10)));
    assert!(matches!(
        next_event(&events),
        Event::Disconnected {
            reason: Error::Protocol { .. },
            ..
        }
    ));
    wait_stats(&node, "closed for a violation", |s| s.closed_protocol == 1);
    // Before the handshake: a peer that connects and goes away.
    drop(TcpStream::connect(v4(&node)).unwrap());
    assert!(matches!(next_event(&events), Event::Refused { .. }));
    wait_stats(&node, "refused before its handshake", |s| {
        s.refused_protocol == 1
    });
    node.close();
}

#[test]
fn a_stranger_without_our_tls_is_refused_and_counted() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chirp-observe-pki-{}", std::process::id()));
    let pki = TestPki::generate(&dir).unwrap();
    let mut c = config(true);
    c.disable_encryption = false;
    c.always_encrypt = true;
    c.cert_chain = Some(pki.node_v3.clone());
    c.dh_params = Some(pki.dh_params.clone());
    let (node, _inbox) = inbox_node(c.clone());
    let events = node.events();
    // Plaintext where TLS is required.
    let mut s = TcpStream::connect(v4(&node)).unwrap();
    std::io::Write::write_all(
        &mut s,
        &libchirp::wire::Handshake {
            port: 1,
            identity: Identity::random(),
        }
        .encode(),
    )
    .unwrap();
    assert!(support::raw::closed_within(&mut s, Duration::from_secs(10)));
    match next_event(&events) {
        Event::Refused { reason, .. } => assert!(matches!(reason, Error::Tls { .. }), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A node with a certificate from another CA.
    c.cert_chain = Some(pki.foreign.clone());
    let (stranger, _) = inbox_node(c);
    let e = stranger
        .send(Message::to(v4(&node), b"hi".to_vec()))
        .wait()
        .unwrap_err();
    assert!(matches!(e.error(), Error::Tls { .. }), "{e}");
    wait_stats(&node, "two strangers refused", |s| {
        s.refused_tls == 2 && s.connections == 0
    });
    assert_eq!(stranger.stats().sends_failed_connection, 1);
    stranger.close();
    node.close();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn timeouts_garbage_collection_and_requests() {
    // A peer that takes messages but never ACKs: the synchronous send times out.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap();
    let mut c = config(true);
    c.timeout = Duration::from_millis(300);
    c.reuse_time = Duration::from_millis(500);
    let (node, _inbox) = inbox_node(c.clone());
    let sending = node.send(Message::to(to, b"never acked".to_vec()));
    let mut raw = Raw::accept(&listener);
    let f = raw.read_frame();
    assert_eq!(f.kind, TYPE_REQ_ACK);
    assert!(sending.wait().unwrap_err().error().is_timeout());
    let s = wait_stats(&node, "ACK timeout", |s| s.closed_timeout == 1);
    assert_eq!(s.sends_failed_timeout, 1);
    assert_eq!(s.sends_failed, 1);
    // A request nobody answers times out; one to an echo is answered.
    let pending = node.request(Message::to(to, b"q".to_vec()));
    let mut raw2 = Raw::accept(&listener);
    let _ = raw2.read_frame();
    assert!(pending.wait().unwrap_err().is_timeout());
    // (The echo keeps its connections for the default 30 s: our side collects it first.)
    let echo = echo_node(config(true));
    let answer = node
        .request(Message::to(v4(&echo), b"q".to_vec()))
        .wait()
        .unwrap();
    drop(answer);
    wait_stats(&node, "requests", |s| {
        s.requests_answered == 1 && s.requests_timed_out == 1
    });
    // Idle connections are garbage-collected (reuse time 0.9 s: 3 × timeout).
    wait_stats(&node, "garbage collection", |s| {
        s.closed_gc >= 1 && s.connections == 0
    });
    drop((raw, raw2));
    echo.close();
    node.close();
    let s = node.stats();
    assert_eq!(s.connections, 0);
}

#[test]
fn gauges_show_queued_in_flight_and_held_slots() {
    // A receiver that holds every message: the sender's next messages queue up.
    let (receiver, inbox) = inbox_node(config(true));
    let (node, _) = inbox_node(config(true));
    let to = v4(&receiver);
    let sends: Vec<_> = (0..3u8)
        .map(|i| node.send(Message::to(to, vec![i])))
        .collect();
    let held = recv(&inbox, "first message");
    let s = wait_stats(&node, "sender gauges", |s| {
        s.in_flight == 1 && s.queued == 2
    });
    assert_eq!(s.connections, 1);
    let r = wait_stats(&receiver, "receiver gauges", |s| s.slots_in_use == 1);
    assert_eq!(r.msgs_in, 1);
    let remote = &node.remotes()[0];
    assert_eq!((remote.queued, remote.in_flight), (2, 1));
    drop(held);
    for (i, s) in sends.into_iter().enumerate() {
        if i > 0 {
            drop(recv(&inbox, "next message"));
        }
        s.wait().unwrap();
    }
    let s = wait_stats(&node, "drained", |s| s.in_flight == 0 && s.queued == 0);
    assert!(s.threads >= 3, "{s:#?}");
    node.close();
    receiver.close();
}

#[test]
fn events_that_nobody_reads_are_dropped_and_counted_never_blocking() {
    let mut c = config(false);
    c.max_connections = 1;
    c.max_handshaking = 1;
    let node = echo_node(c);
    let _events = node.events(); // subscribed, never read
    let to: SocketAddr = v4(&node);
    let _held = Raw::connect(to, 1);
    // Every further connection is refused: one event each, 1,024 fit.
    for _ in 0..1100 {
        let mut s = TcpStream::connect(to).unwrap();
        assert!(support::raw::closed_within(&mut s, Duration::from_secs(10)));
    }
    // 1,101 events (one connected, 1,100 refused); 1,024 fit.
    wait_stats(&node, "refusals", |s| {
        s.refused_capacity == 1100 && s.events_dropped == 1100 + 1 - 1024
    });
    node.close();
}
