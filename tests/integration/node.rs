//! Node behaviour through the public API: lifecycle, connections, sync/async, slots,
//! release, messages and errors (issue 2).
use crate::support;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use libchirp::{Config, Error, Identity, Message, Node};
use support::*;

fn free_closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

#[test]
fn node_handle_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    fn send_sync<T: Send + Sync + 'static>() {}
    check::<Node>();
    send_sync::<libchirp::Completion<Result<Message, libchirp::SendError>>>();
}

#[test]
fn listens_on_ipv4_and_ipv6_and_either_can_be_switched_off() {
    let node = echo_node(config(false));
    assert_eq!(node.local_addrs().len(), 2);
    let (sender, inbox) = inbox_node(config(false));
    for to in [v4(&node), v6(&node)] {
        sender.send(Message::to(to, b"hi".to_vec())).wait().unwrap();
        let back = recv(&inbox, "echo");
        assert_eq!(back.address().unwrap().ip(), to.ip());
        assert_eq!(
            back.address().unwrap().port(),
            node.port(),
            "address carries the advertised port"
        );
    }
    let mut c = config(false);
    c.bind_v6 = None;
    let only4 = echo_node(c);
    assert!(only4.local_addrs().iter().all(|a| a.is_ipv4()));
    let e = sender
        .send(Message::to(v6(&only4), b"x".to_vec()))
        .wait()
        .unwrap_err();
    assert!(matches!(e.error(), Error::CannotConnect { .. }), "{e}");
    let mut c = config(false);
    c.bind_v4 = None;
    let only6 = echo_node(c);
    assert!(only6.local_addrs().iter().all(|a| a.is_ipv6()));
    sender
        .send(Message::to(v6(&only6), b"x".to_vec()))
        .wait()
        .unwrap();
    for n in [node, only4, only6, sender] {
        n.close();
    }
}

#[test]
fn address_in_use_is_reported() {
    let node = echo_node(config(true));
    let mut c = config(true);
    c.port = node.port();
    let err = Node::start(c, drop).unwrap_err();
    assert!(matches!(err, Error::AddressInUse { .. }), "{err}");
    assert!(err.to_string().contains(&node.port().to_string()));
    node.close();
}

#[test]
fn invalid_config_is_refused_with_field_and_range() {
    let mut c = config(true);
    c.backlog = 200;
    let err = Node::start(c, drop).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for backlog: 200 (allowed: 0 ..= 127)"
    );
}

#[test]
fn messages_keep_identity_and_carry_peer_information() {
    let (receiver, rx) = inbox_node(config(true));
    let (sender, back_rx) = inbox_node(config(true));
    let mut m = Message::to(v4(&receiver), b"data".to_vec());
    m.set_header(b"head".to_vec());
    let id = m.identity();
    assert_ne!(
        id,
        Message::new(Vec::new()).identity(),
        "identities are random"
    );
    let sending = sender.send(m);
    let mut got = recv(&rx, "message");
    assert_eq!(got.identity(), id);
    assert_eq!(got.header(), b"head");
    assert_eq!(got.data(), b"data");
    assert_eq!(got.remote_identity(), sender.identity());
    assert_eq!(
        got.address().unwrap(),
        SocketAddr::from(([127, 0, 0, 1], sender.port()))
    );
    assert!(got.has_slot());
    assert_eq!(got.type_bits(), libchirp::wire::TYPE_REQ_ACK);
    // Reply: the same message, new data, sent back.
    got.set_data(b"answer".to_vec());
    let replying = receiver.send(got);
    let answer = recv(&back_rx, "reply");
    assert_eq!(answer.identity(), id, "a reply keeps the identity");
    assert_eq!(answer.data(), b"answer");
    drop(answer);
    let replied = replying.wait().unwrap();
    assert!(
        replied.has_slot(),
        "the slot stays with the message until it is dropped"
    );
    drop(replied);
    sending.wait().unwrap();
    // The receiver answered over the accepted connection: it never dialed.
    assert_eq!(receiver.connection_count(), 1);
    receiver.close();
    sender.close();
}

#[test]
fn connections_are_reused_and_garbage_collected() {
    let mut c = config(false);
    c.timeout = Duration::from_millis(100);
    c.reuse_time = Duration::from_millis(500);
    let echo = echo_node(c.clone());
    let (sender, inbox) = inbox_node(c);
    for _ in 0..20 {
        sender
            .send(Message::to(v4(&echo), b"x".to_vec()))
            .wait()
            .unwrap();
        recv(&inbox, "echo");
    }
    assert_eq!(sender.connection_count(), 1);
    assert_eq!(echo.connection_count(), 1);
    assert!(
        eventually(Duration::from_secs(5), || sender.connection_count() == 0
            && echo.connection_count() == 0),
        "idle connection collected after the reuse time"
    );
    // And a new one is made on demand.
    sender
        .send(Message::to(v4(&echo), b"again".to_vec()))
        .wait()
        .unwrap();
    assert_eq!(recv(&inbox, "echo after gc").data(), b"again");
    sender.close();
    echo.close();
}

#[test]
fn simultaneous_connects_both_deliver() {
    for round in 0..5 {
        let (a, arx) = inbox_node(config(false));
        let (b, brx) = inbox_node(config(false));
        let (ta, tb) = (v4(&b), v4(&a));
        let sa = a.send(Message::to(ta, format!("a{round}").into_bytes()));
        let sb = b.send(Message::to(tb, format!("b{round}").into_bytes()));
        sa.wait().unwrap();
        sb.wait().unwrap();
        assert_eq!(recv(&brx, "a->b").data(), format!("a{round}").as_bytes());
        assert_eq!(recv(&arx, "b->a").data(), format!("b{round}").as_bytes());
        // Traffic keeps flowing both ways afterwards.
        for i in 0..10u8 {
            a.send(Message::to(ta, vec![i])).wait().unwrap();
            b.send(Message::to(tb, vec![i])).wait().unwrap();
            assert_eq!(recv(&brx, "a->b").data(), [i]);
            assert_eq!(recv(&arx, "b->a").data(), [i]);
        }
        a.close();
        b.close();
    }
}

#[test]
fn a_failure_fails_one_queued_message_and_reconnects_are_debounced() {
    let (node, _rx) = inbox_node(config(true));
    let to = free_closed_port();
    let start = Instant::now();
    let sends: Vec<_> = (0..3)
        .map(|i| node.send(Message::to(to, vec![i])))
        .collect();
    let mut times = Vec::new();
    for (i, s) in sends.into_iter().enumerate() {
        let err = s.wait().unwrap_err();
        times.push(start.elapsed());
        assert!(matches!(err.error(), Error::CannotConnect { .. }), "{err}");
        assert_eq!(
            err.into_message().data(),
            [i as u8],
            "each failure fails the queue head, in order"
        );
    }
    assert!(
        times[1] - times[0] >= Duration::from_millis(45),
        "{times:?}"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(45),
        "{times:?}"
    );
    node.close();
}

#[test]
fn sync_send_completes_only_after_the_receiver_released() {
    let mut c = config(true);
    c.auto_release = false;
    let (receiver, rx) = inbox_node(c);
    let (sender, _) = inbox_node(config(true));
    let sending = sender.send(Message::to(v4(&receiver), b"hold".to_vec()));
    let mut msg = recv(&rx, "message");
    let sending = sending
        .wait_timeout(Duration::from_millis(200))
        .expect_err("not complete before release");
    let released = msg.release().wait();
    assert_eq!(released, (msg.identity(), msg.serial()));
    assert!(!msg.has_slot());
    // Releasing again does nothing and completes at once.
    assert!(msg.release().is_ready());
    sending.wait().unwrap();
    sender.close();
    receiver.close();
}

#[test]
fn slots_give_backpressure_and_nothing_is_lost_or_corrupted() {
    let mut c = config(false);
    c.max_slots = 2;
    let (receiver, rx) = inbox_node(c);
    let (sender, _) = inbox_node(config(false));
    let n = 200usize;
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let mut m = Message::to(v4(&receiver), vec![(i % 251) as u8; 1000 + i * 37]);
            m.set_header((i as u32).to_be_bytes().to_vec());
            sender.send(m)
        })
        .collect();
    let mut held = vec![recv(&rx, "first"), recv(&rx, "second")];
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a third message needs a free slot"
    );
    let mut expected = 0usize;
    for m in held.drain(..) {
        assert_eq!(m.header(), (expected as u32).to_be_bytes());
        expected += 1;
    }
    while expected < n {
        let m = recv(&rx, "next");
        assert_eq!(m.header(), (expected as u32).to_be_bytes(), "order kept");
        assert_eq!(m.data().len(), 1000 + expected * 37);
        assert!(
            m.data().iter().all(|&b| b == (expected % 251) as u8),
            "bytes intact"
        );
        expected += 1;
    }
    for s in sends {
        s.wait().unwrap();
    }
    sender.close();
    receiver.close();
}

#[test]
fn sending_messages_that_cannot_be_sent_fails_at_once() {
    let mut c = config(true);
    c.max_msg_size = 100;
    let (node, _) = inbox_node(c);
    let e = node
        .send(Message::new(b"no address".to_vec()))
        .wait()
        .unwrap_err();
    assert!(matches!(e.error(), Error::InvalidValue { .. }), "{e}");
    let big = Message::to("127.0.0.1:9".parse().unwrap(), vec![0; 101]);
    let e = node.send(big).wait().unwrap_err();
    assert_eq!(
        e.error(),
        &Error::MessageTooLarge {
            size: 101,
            max: 100
        }
    );
    assert_eq!(e.into_message().data().len(), 101);
    node.close();
}

#[test]
fn without_the_outgoing_check_a_message_over_the_own_limit_reaches_a_peer_that_accepts_it() {
    let mut c = config(true);
    c.max_msg_size = 100;
    c.check_outgoing_size = false;
    let (sender, _) = inbox_node(c);
    let (receiver, inbox) = inbox_node(config(true));
    let big = Message::to(v4(&receiver), vec![7; 1000]);
    let sending = sender.send(big);
    let got = inbox
        .recv_timeout(Duration::from_secs(5))
        .expect("the message was delivered");
    assert_eq!(got.data(), &[7; 1000][..], "the payload changed");
    drop(got); // released: the ACK goes out
    sending
        .wait_timeout(Duration::from_secs(10))
        .expect("an outcome within the timeout")
        .expect("the receiver allows 1,000 bytes");
    sender.close();
    receiver.close();
}

#[test]
fn close_fails_pending_operations_and_later_sends() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let to: SocketAddr = listener.local_addr().unwrap();
    let (node, _) = inbox_node(config(true));
    // Stuck peer: accepts (kernel backlog) but never handshakes.
    let pending: Vec<_> = (0..5)
        .map(|_| node.send(Message::to(to, b"x".to_vec())))
        .collect();
    let request = node.request(Message::to(to, b"r".to_vec()));
    let t = Instant::now();
    node.close();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "close returns promptly: {:?}",
        t.elapsed()
    );
    for p in pending {
        assert_eq!(p.wait().unwrap_err().error(), &Error::Shutdown);
    }
    assert_eq!(request.wait().unwrap_err(), Error::Shutdown);
    assert_eq!(
        node.send(Message::to(to, b"late".to_vec()))
            .wait()
            .unwrap_err()
            .error(),
        &Error::Shutdown
    );
    assert_eq!(node.thread_count(), 0);
    node.close(); // twice is fine
}

#[test]
fn dropping_the_last_handle_closes_the_node() {
    let node = Node::start(config(true), drop).unwrap();
    let port = node.port();
    let probe = node.clone();
    drop(node);
    assert!(!probe.is_closed());
    drop(probe);
    // The port is free again.
    assert!(eventually(Duration::from_secs(5), || TcpListener::bind((
        "127.0.0.1",
        port
    ))
    .is_ok()));
}

#[test]
fn configured_identity_is_used_whole() {
    let mut c = config(true);
    let mut id = [0u8; 16];
    id[15] = 5;
    c.identity = Identity::from_bytes(id);
    let node = Node::start(c, drop).unwrap();
    assert_eq!(node.identity(), Identity::from_bytes(id));
    node.close();
}

#[test]
fn ack_queued_when_the_connection_fails_still_completes_release() {
    let mut c = config(true);
    c.auto_release = false;
    let (receiver, rx) = inbox_node(c);
    let mut raw = support::raw::Raw::connect(v4(&receiver), 4300);
    raw.send_frame(
        Identity::random(),
        1,
        libchirp::wire::TYPE_REQ_ACK,
        b"",
        b"x",
    );
    let mut m = recv(&rx, "message");
    drop(raw); // peer goes away before we release
    assert!(eventually(Duration::from_secs(5), || receiver
        .connection_count()
        == 0));
    let done = m.release();
    assert!(done.wait_timeout(Duration::from_secs(5)).is_ok());
    receiver.close();
}

#[test]
fn config_default_matches_libchirp() {
    let c = Config::default();
    assert_eq!(
        (c.timeout, c.reuse_time, c.port),
        (Duration::from_secs(5), Duration::from_secs(30), 2998)
    );
}

/// Resident memory of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Peers that connect under a new advertised port each time (each handshakes, sends one
/// message and closes) leave no remote behind: the table and the memory stay bounded
/// long before garbage collection (30 s here) could act.
#[test]
fn peers_that_come_and_go_under_new_ports_leave_no_remote_behind() {
    let mut c = config(false);
    c.reuse_time = Duration::from_secs(30);
    let (node, rx) = inbox_node(c);
    let warm = |from: u16, n: u16| {
        for port in from..from + n {
            let mut raw = support::raw::Raw::connect(v4(&node), port);
            raw.send_frame(Identity::random(), 1, 0, b"", b"x");
            drop(recv(&rx, "the message"));
            drop(raw);
        }
    };
    warm(10_000, 300); // allocator and thread caches settle
    assert!(
        eventually(Duration::from_secs(10), || node.remotes().is_empty()),
        "after the warm-up: {} remotes",
        node.remotes().len()
    );
    let before = rss_kib();
    let mut most = 0;
    for round in 0..10u16 {
        warm(20_000 + round * 300, 300);
        most = most.max(node.remotes().len());
    }
    assert!(
        eventually(Duration::from_secs(10), || node.remotes().is_empty()),
        "{} remotes left after 3,000 peers came and went",
        node.remotes().len()
    );
    let grown = rss_kib().saturating_sub(before);
    assert!(
        most <= 50,
        "at most a few remotes at a time (connections still closing), saw {most}"
    );
    // ~1.7 KiB per leftover remote before: 3,000 would be ~5 MiB.
    assert!(grown < 2048, "memory grew by {grown} KiB over 3,000 peers");
    assert!(
        node.stats().remotes_released >= 3_300,
        "counted: {}",
        node.stats().remotes_released
    );
    node.close();
}
