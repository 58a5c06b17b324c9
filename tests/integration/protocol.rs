//! Wire-level behaviour checked with a hand-driven peer (tests/integration/support/raw.rs):
//! PROTOCOL.md §1–§3.
use crate::support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use libchirp::wire::{TYPE_ACK, TYPE_NOOP, TYPE_REQ_ACK};
use libchirp::{Error, Identity, Message};
use support::raw::Raw;
use support::*;

#[test]
fn handshake_advertises_the_bound_port_and_identity() {
    let (node, _rx) = inbox_node(config(true));
    assert_ne!(node.port(), 0);
    let raw = Raw::connect(v4(&node), 4000);
    assert_eq!(raw.peer.port, node.port());
    assert_eq!(raw.peer.identity, node.identity());
    let raw6 = Raw::connect(v6(&node), 4000);
    assert_eq!(raw6.peer.port, node.port());
    node.close();
}

#[test]
fn handshake_split_over_several_writes_is_accepted() {
    use std::io::Write;
    let (node, rx) = inbox_node(config(false));
    let mut s = std::net::TcpStream::connect(v4(&node)).unwrap();
    let me = Identity::random();
    let hs = libchirp::wire::Handshake {
        port: 4001,
        identity: me,
    }
    .encode();
    for chunk in hs.chunks(5) {
        s.write_all(chunk).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5)); // force separate segments
    }
    let mut raw = Raw {
        stream: s,
        peer: libchirp::wire::Handshake {
            port: 0,
            identity: Identity::zero(),
        },
        me,
    };
    raw.send_frame(Identity::random(), 1, 0, b"", b"after split handshake");
    let m = recv(&rx, "message after split handshake");
    assert_eq!(m.data(), b"after split handshake");
    node.close();
}

/// Payloads around the inline size (16 bytes are kept inside the message, 17 go to the
/// heap) arrive intact when their bytes come in separate segments: the preamble and a first
/// piece, then — once the node counted the message, so its reader has parsed the preamble
/// and waits mid-payload — the rest.
#[test]
fn small_payloads_split_across_segments_arrive_intact() {
    use std::io::Write;
    let (node, rx) = inbox_node(config(false));
    let mut raw = Raw::connect(v4(&node), 4002);
    raw.stream.set_nodelay(true).unwrap();
    for len in [1usize, 2, 15, 16, 17, 40] {
        let data: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(7) ^ 0x5a).collect();
        let frame = [
            &libchirp::wire::Preamble {
                identity: Identity::random(),
                serial: len as u32,
                data_len: len as u32,
                header_len: 0,
                kind_bits: 0,
            }
            .encode()[..],
            &data,
        ]
        .concat();
        let cut = frame.len() - len + len / 2;
        let counted = node.stats().msgs_in;
        raw.stream.write_all(&frame[..cut]).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || node.stats().msgs_in > counted),
            "the reader never parsed the {len}-byte message's preamble"
        );
        raw.stream.write_all(&frame[cut..]).unwrap();
        let m = recv(&rx, &format!("the {len}-byte message"));
        assert_eq!(
            m.data(),
            &data[..],
            "the {len}-byte payload arrived changed"
        );
        assert_eq!(m.serial(), len as u32);
    }
    node.close();
}

#[test]
fn sync_sends_one_in_flight_with_serials_per_remote_and_ack_semantics() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (node, _rx) = inbox_node(config(true));
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    let a = node.send(Message::to(to, b"one".to_vec()));
    let b = node.send(Message::to(to, b"two".to_vec()));
    let mut raw = Raw::accept(&listener);
    assert_eq!(raw.peer.port, node.port());
    let f1 = raw.read_frame();
    assert_eq!(
        f1.kind, TYPE_REQ_ACK,
        "synchronous data frames carry REQ_ACK"
    );
    assert_eq!(f1.data, b"one");
    // One message in flight: the second is not written before the first is acknowledged.
    assert!(raw.quiet_for(Duration::from_millis(200)));
    assert!(!a.is_ready());
    raw.ack(Identity::random(), 99); // unknown identity: ignored
    raw.ack(f1.identity, 12345); // any serial is accepted
    let a = a.wait().expect("first send completes after its ACK");
    assert_eq!(a.data(), b"one");
    let f2 = raw.read_frame();
    assert_eq!(f2.data, b"two");
    assert_eq!(
        f2.serial,
        f1.serial.wrapping_add(1),
        "serial increments per frame"
    );
    raw.ack(f2.identity, 1);
    b.wait().expect("second send");
    // Our node acks what it receives (REQ_ACK) with its own next serial.
    let (node2, rx2) = inbox_node(config(true));
    let mut raw2 = Raw::connect(v4(&node2), 4002);
    let id = Identity::random();
    raw2.send_frame(id, 7, TYPE_REQ_ACK, b"hdr", b"data");
    let m = recv(&rx2, "sync message");
    assert_eq!(
        (m.identity(), m.serial(), m.header(), m.data()),
        (id, 7, &b"hdr"[..], &b"data"[..])
    );
    assert!(
        raw2.quiet_for(Duration::from_millis(100)),
        "no ACK before release"
    );
    let first_ack_wait = Instant::now();
    drop(m);
    let ack = raw2.read_frame();
    assert!(first_ack_wait.elapsed() < Duration::from_secs(5));
    assert_eq!((ack.kind, ack.identity), (TYPE_ACK, id));
    assert!(ack.header.is_empty() && ack.data.is_empty());
    // The ACK consumed a serial: the next frame to that remote continues from it.
    let reply = node2.send(Message::to(
        "127.0.0.1:4002".parse().unwrap(),
        b"x".to_vec(),
    ));
    let f = raw2.read_frame();
    assert_eq!(f.serial, ack.serial.wrapping_add(1));
    raw2.ack(f.identity, 0);
    reply.wait().expect("reply over the accepted connection");
    node.close();
    node2.close();
}

#[test]
fn async_frames_have_no_req_ack_and_complete_without_ack() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (node, _rx) = inbox_node(config(false));
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    let sends: Vec<_> = (0..50u32)
        .map(|i| node.send(Message::to(to, i.to_be_bytes().to_vec())))
        .collect();
    let mut raw = Raw::accept(&listener);
    let mut last = None;
    for i in 0..50u32 {
        let f = raw.read_frame();
        assert_eq!(f.kind, 0);
        assert_eq!(f.data, i.to_be_bytes());
        if let Some(prev) = last {
            assert_eq!(f.serial, u32::wrapping_add(prev, 1));
        }
        last = Some(f.serial);
    }
    for s in sends {
        s.wait().expect("async send completes when written");
    }
    node.close();
}

#[test]
fn noop_probe_precedes_a_message_after_three_quarters_of_reuse_time() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = config(false);
    c.timeout = Duration::from_millis(200);
    c.reuse_time = Duration::from_millis(1000);
    let (node, _rx) = inbox_node(c);
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    let first = node.send(Message::to(to, b"first".to_vec()));
    let mut raw = Raw::accept(&listener);
    first.wait().unwrap();
    let f1 = raw.read_frame();
    // Idle for more than 3/4 of the reuse time, less than all of it.
    std::thread::sleep(Duration::from_millis(800));
    node.send(Message::to(to, b"second".to_vec()))
        .wait()
        .unwrap();
    let noop = raw.read_frame();
    assert_eq!(noop.kind, TYPE_NOOP);
    assert_eq!(noop.identity, Identity::zero());
    assert_eq!(noop.serial, f1.serial.wrapping_add(1));
    let f2 = raw.read_frame();
    assert_eq!(f2.data, b"second");
    assert_eq!(f2.serial, f1.serial.wrapping_add(2));
    node.close();
}

#[test]
fn protocol_violations_close_only_that_connection() {
    let (node, rx) = inbox_node(config(false));
    let mut good = Raw::connect(v4(&node), 4100);
    let cases: Vec<(u8, Vec<u8>)> = vec![
        (TYPE_ACK, b"payload".to_vec()),
        (TYPE_NOOP, b"payload".to_vec()),
        (TYPE_ACK | TYPE_REQ_ACK, vec![]),
    ];
    for (kind, data) in cases {
        let mut bad = Raw::connect(v4(&node), 4200);
        bad.send_frame(Identity::random(), 1, kind, &[], &data);
        assert!(
            bad.closed_within(Duration::from_secs(5)),
            "kind {kind:#x} closes the connection"
        );
    }
    // Too large (and the u32 wrap C misses): header 1 + data 0xFFFFFFFF.
    let mut bad = Raw::connect(v4(&node), 4201);
    use std::io::Write;
    let pre = libchirp::wire::Preamble {
        identity: Identity::random(),
        serial: 1,
        data_len: u32::MAX,
        header_len: 1,
        kind_bits: 0,
    };
    bad.stream.write_all(&pre.encode()).unwrap();
    assert!(bad.closed_within(Duration::from_secs(5)));
    good.send_frame(Identity::random(), 5, 0, b"", b"still served");
    assert_eq!(recv(&rx, "good peer's message").data(), b"still served");
    assert!(!node.is_closed());
    node.close();
}

#[test]
fn accepted_connection_without_handshake_is_closed_after_connect_timeout() {
    let mut c = config(true);
    c.timeout = Duration::from_millis(200); // connect timeout 400 ms
    let (node, _rx) = inbox_node(c);
    let mut s = std::net::TcpStream::connect(v4(&node)).unwrap();
    let t = Instant::now();
    assert!(support::raw::closed_within(&mut s, Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "closed too early: {:?}",
        t.elapsed()
    );
    node.close();
}

#[test]
fn connect_timeout_covers_a_peer_that_never_handshakes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = config(true);
    c.timeout = Duration::from_millis(250); // connect timeout 500 ms
    let (node, _rx) = inbox_node(c);
    let t = Instant::now();
    let r = node
        .send(Message::to(
            format!("127.0.0.1:{port}").parse().unwrap(),
            b"x".to_vec(),
        ))
        .wait();
    let err = r.unwrap_err();
    assert!(err.error().is_timeout(), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(450) && t.elapsed() < Duration::from_secs(5));
    drop(listener);
    node.close();
}

#[test]
fn sync_send_times_out_when_the_peer_never_releases() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = config(true);
    c.timeout = Duration::from_millis(300);
    let (node, _rx) = inbox_node(c);
    let sending = node.send(Message::to(
        format!("127.0.0.1:{port}").parse().unwrap(),
        b"x".to_vec(),
    ));
    let mut raw = Raw::accept(&listener);
    let _f = raw.read_frame();
    let t = Instant::now();
    let err = sending.wait().unwrap_err();
    assert!(matches!(err.error(), Error::Timeout { .. }), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(3));
    assert_eq!(
        err.into_message().data(),
        b"x",
        "the message is handed back"
    );
    assert!(
        raw.closed_within(Duration::from_secs(5)),
        "the connection is shut down"
    );
    node.close();
}

/// `burst` asynchronous messages arrive in one TCP write. The handler (on the reader
/// thread) echoes each; at message `gate` it waits until the peer has received the first
/// reply. Returns whether that happened: a reader that held every reply until it had
/// dispatched the whole buffer would write nothing while the handler waits.
fn first_reply_arrives_while_dispatching(burst: u8, gate: u8) -> bool {
    let (got_tx, got_rx) = crossbeam_channel::bounded::<()>(1);
    let (result_tx, result_rx) = crossbeam_channel::bounded::<bool>(1);
    let waiter = std::sync::Mutex::new(Some((got_rx, result_tx)));
    let node = libchirp::Node::start_inline(config(false), move |node, msg| {
        let n = msg.data()[0];
        drop(node.send(msg));
        if n == gate {
            if let Some((rx, result)) = waiter.lock().unwrap().take() {
                let _ = result.send(rx.recv_timeout(Duration::from_secs(5)).is_ok());
            }
        }
    })
    .unwrap();
    let mut raw = Raw::connect(v4(&node), 4010);
    // One round trip first, so that the connection's threads are up and idle.
    raw.send_frame(Identity::random(), 100, 0, &[], &[100]);
    assert_eq!(raw.read_frame().data, [100]);
    let mut bytes = Vec::new();
    for i in 0..burst {
        bytes.extend_from_slice(
            &libchirp::wire::Preamble {
                identity: Identity::random(),
                serial: u32::from(i),
                data_len: 1,
                header_len: 0,
                kind_bits: 0,
            }
            .encode(),
        );
        bytes.push(i);
    }
    use std::io::Write;
    raw.stream.write_all(&bytes).unwrap();
    assert_eq!(raw.read_frame().data, [0]);
    got_tx.send(()).unwrap();
    let in_time = result_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    for i in 1..burst {
        assert_eq!(raw.read_frame().data, [i], "replies in order");
    }
    node.close();
    in_time
}

#[test]
fn replies_are_written_every_few_frames_not_only_after_the_whole_read_buffer() {
    assert!(
        first_reply_arrives_while_dispatching(16, 7),
        "no reply reached the peer while the handler was still dispatching 16 frames"
    );
}

#[test]
fn with_eight_frames_buffered_replies_go_out_in_pairs() {
    assert!(
        first_reply_arrives_while_dispatching(8, 2),
        "the first reply was held back while the handler dispatched the third of 8 frames"
    );
}

#[test]
fn with_few_frames_buffered_each_reply_is_written_at_once() {
    assert!(
        first_reply_arrives_while_dispatching(3, 1),
        "the first reply was held back while the handler dispatched the second of 3 frames"
    );
}

/// A frame that arrives in pieces leaves the reader's mid-frame timeout set; when the
/// connection then goes idle for longer than the timeout, that is idleness, not a stalled
/// frame: the connection stays open and the next frame is delivered.
#[test]
fn an_idle_connection_outlives_the_mid_frame_timeout() {
    use std::io::Write;
    let mut c = config(false);
    c.timeout = Duration::from_millis(200);
    let (node, rx) = inbox_node(c);
    let mut raw = Raw::connect(v4(&node), 4002);
    // One frame in two writes: the reader sees a partial frame first.
    let mut frame = libchirp::wire::Preamble {
        identity: Identity::random(),
        serial: 1,
        data_len: 5,
        header_len: 0,
        kind_bits: 0,
    }
    .encode()
    .to_vec();
    frame.extend_from_slice(b"first");
    raw.stream.write_all(&frame[..20]).unwrap();
    raw.stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50)); // a separate segment
    raw.stream.write_all(&frame[20..]).unwrap();
    assert_eq!(recv(&rx, "first").data(), b"first");
    // Idle for three timeouts (the scenario), then another frame on the same connection.
    std::thread::sleep(Duration::from_millis(600));
    raw.send_frame(Identity::random(), 2, 0, b"", b"second");
    assert_eq!(recv(&rx, "second").data(), b"second");
    assert_eq!(node.stats().closed(), 0, "{:?}", node.stats());
    node.close();
}

/// Accepts one connection from a node within `d` and exchanges handshakes.
fn accept_within(listener: &TcpListener, d: Duration) -> Option<Raw> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + d;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                let port = listener.local_addr().unwrap().port();
                let raw = Raw::from_stream(s, port);
                return Some(raw);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The race between a send and the peer's garbage collection, sender's side: the peer ends
/// the connection in order (its end of stream) just after our synchronous message went
/// out, and acknowledges it afterwards on a new connection. The send succeeds: an orderly
/// end does not fail a message that may still be acknowledged.
#[test]
fn a_message_that_crossed_the_peers_end_of_stream_waits_for_its_ack_on_a_new_connection() {
    let mut c = config(true);
    c.timeout = Duration::from_secs(5);
    let (node, _rx) = inbox_node(c);
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let sending = node.send(Message::to(
        peer.local_addr().unwrap(),
        b"crossing".to_vec(),
    ));
    let mut first = accept_within(&peer, Duration::from_secs(10)).expect("the node dials");
    let msg = first.read_frame();
    assert_eq!(msg.kind & TYPE_REQ_ACK, TYPE_REQ_ACK, "{msg:?}");
    // Our end of stream crosses the message; the node closes its side in turn.
    first.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        first.closed_within(Duration::from_secs(10)),
        "the node ends the connection after our end of stream"
    );
    let sending = match sending.try_wait() {
        Err(pending) => pending,
        Ok(r) => panic!("the send completed at the orderly end, without its ACK: {r:?}"),
    };
    // The ACK comes on a new connection.
    let mut second = Raw::connect(v4(&node), peer.local_addr().unwrap().port());
    second.ack(msg.identity, msg.serial);
    match sending.wait_timeout(Duration::from_secs(10)) {
        Ok(Ok(m)) => assert_eq!(m.data(), b"crossing"),
        Ok(Err(e)) => panic!("the send failed although its ACK came: {e}"),
        Err(_) => panic!("no outcome within 10 s of the ACK"),
    }
    node.close();
}

/// The same race, retiring side: the node's garbage collection retires an idle connection
/// (its end of stream goes out), a synchronous message arrives on it just after, and the
/// node delivers it and sends its ACK on a new connection to the sender's advertised port.
#[test]
fn a_message_arriving_on_a_retired_connection_is_acknowledged_on_a_new_connection() {
    let mut c = config(true);
    // The node retires the idle connection after the reuse time (1.5 s, the least for this
    // timeout), and reads what crosses its end of stream for up to the timeout.
    c.timeout = Duration::from_millis(500);
    c.reuse_time = Duration::from_millis(1500);
    let (node, rx) = inbox_node(c);
    let me = TcpListener::bind("127.0.0.1:0").unwrap();
    let my_port = me.local_addr().unwrap().port();
    let mut raw = Raw::connect(v4(&node), my_port);
    // Idle: the node retires the connection after the reuse time.
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut b = [0u8; 1];
    let n = std::io::Read::read(&mut raw.stream, &mut b).expect("the node's end of stream");
    assert_eq!(n, 0, "the node sent nothing but its end of stream");
    // A message crosses it.
    let id = Identity::random();
    raw.send_frame(id, 1, TYPE_REQ_ACK, b"", b"late");
    let got = recv(&rx, "the message that crossed the end of stream");
    assert_eq!(got.data(), b"late");
    drop(got); // released: the ACK is due
    let mut back = accept_within(&me, Duration::from_secs(10))
        .expect("the node dials our advertised port to acknowledge");
    let ack = back.read_frame();
    assert_eq!(
        (ack.kind, ack.identity),
        (TYPE_ACK, id),
        "the ACK for the message, on the new connection: {ack:?}"
    );
    node.close();
}

/// The peer ends its side in an orderly way (as its garbage collection does, reading on
/// until we end ours) while a large write is under way: the write finishes and its message
/// is delivered, instead of failing with "peer closed the connection"; a message queued
/// behind it goes out on a new connection.
#[test]
fn a_write_under_way_when_the_peer_ends_its_side_finishes_and_is_delivered() {
    use libchirp::wire::{Preamble, PREAMBLE_SIZE};
    use std::io::Read;
    let mut c = config(false);
    c.timeout = Duration::from_secs(5);
    let (node, _rx) = inbox_node(c);
    let me = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = me.local_addr().unwrap();
    // Larger than both sockets' buffers: the write blocks until we read.
    let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let first = node.send(Message::to(to, big.clone()));
    let mut raw = Raw::accept(&me);
    let mut p = [0u8; PREAMBLE_SIZE];
    raw.stream
        .read_exact(&mut p)
        .expect("the big message's preamble");
    let pre = Preamble::decode(&p);
    assert_eq!(
        pre.data_len as usize,
        big.len(),
        "the big message comes first: {pre:?}"
    );
    // The write is under way. Another message queues behind it; then we end our side.
    let second = node.send(Message::to(to, b"behind".to_vec()));
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut data = vec![0u8; big.len()];
    raw.stream
        .read_exact(&mut data)
        .expect("the whole message, after our end of stream");
    assert!(data == big, "the message arrived intact");
    first
        .wait_timeout(Duration::from_secs(10))
        .expect("an outcome")
        .expect("the write under way finished: the message was delivered");
    assert!(
        raw.closed_within(Duration::from_secs(10)),
        "then the node ends its side too"
    );
    let mut again = accept_within(&me, Duration::from_secs(10))
        .expect("the queued message goes out on a new connection");
    let f = again.read_frame();
    assert_eq!(f.data, b"behind", "the queued message: {f:?}");
    second
        .wait_timeout(Duration::from_secs(10))
        .expect("an outcome")
        .expect("the queued message was written");
    node.close();
}
