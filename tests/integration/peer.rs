//! `Node::peer` and `Peer::send_batch`: the streaming path. Every message of a batch is
//! delivered in order or handed back, in order, with its error; one completion per batch.
use crate::support;

use std::time::{Duration, Instant};

use libchirp::{Config, Error, Message, Node};
use support::*;

fn numbered(range: std::ops::Range<u32>) -> impl Iterator<Item = Message> {
    range.map(|i| Message::new(i.to_be_bytes()))
}

fn number(m: &Message) -> u32 {
    u32::from_be_bytes(m.data().try_into().expect("4-byte message"))
}

/// A queue node that releases each message as it hands it out.
fn inbox(config: Config) -> libchirp::queue::Chirp {
    libchirp::queue::Chirp::new(config).expect("inbox")
}

#[test]
fn an_asynchronous_batch_is_delivered_in_order_with_one_completion() {
    let rx = inbox(config(false));
    let tx = Node::start(config(false), drop).unwrap();
    let peer = tx.peer(v4(&rx)).unwrap();
    let mut sent = 0;
    for round in 0..5u32 {
        let n = peer
            .send_batch(numbered(round * 300..(round + 1) * 300))
            .wait_timeout(Duration::from_secs(10))
            .expect("the batch completes within 10 s")
            .expect("every message written");
        assert_eq!(n, 300);
        sent += n;
    }
    let got: Vec<u32> = rx.iter().take(sent).map(|m| number(&m)).collect();
    assert_eq!(got, (0..1500).collect::<Vec<u32>>(), "in order, once each");
    assert_eq!(
        peer.send_batch(Vec::new()).wait().unwrap(),
        0,
        "empty batch"
    );
}

#[test]
fn a_synchronous_batch_completes_when_every_message_was_released() {
    let (seen_tx, seen) = crossbeam_channel::unbounded();
    let rx = Node::start(config(true), move |m: Message| {
        let _ = seen_tx.send(number(&m));
        // Released when dropped, right here.
    })
    .unwrap();
    let tx = Node::start(config(true), drop).unwrap();
    let peer = tx.peer(v4(&rx)).unwrap();
    let n = peer
        .send_batch(numbered(0..50))
        .wait()
        .expect("all released");
    assert_eq!(n, 50);
    let got: Vec<u32> = seen.try_iter().collect();
    assert_eq!(
        got,
        (0..50).collect::<Vec<u32>>(),
        "all seen before the batch completed"
    );
    let s = tx.stats();
    assert_eq!(
        (s.msgs_out, s.acks_in),
        (50, 50),
        "one ACK per message: {s:?}"
    );
}

#[test]
fn messages_beyond_max_queued_are_handed_back_in_order() {
    let rx = inbox(config(false));
    let mut c = config(false);
    c.max_queued = 10;
    let tx = Node::start(c, drop).unwrap();
    let peer = tx.peer(v4(&rx)).unwrap();
    let err = peer
        .send_batch(numbered(0..25))
        .wait()
        .expect_err("15 do not fit");
    assert_eq!(err.delivered(), 10, "{err}");
    assert!(matches!(err.error(), Error::LimitReached { .. }), "{err}");
    let back: Vec<u32> = err.into_messages().iter().map(number).collect();
    assert_eq!(
        back,
        (10..25).collect::<Vec<u32>>(),
        "exactly the tail, in order"
    );
    let got: Vec<u32> = rx.iter().take(10).map(|m| number(&m)).collect();
    assert_eq!(got, (0..10).collect::<Vec<u32>>());
    assert_eq!(tx.stats().sends_failed_limit, 15);
}

#[test]
fn an_oversize_message_fails_alone_and_the_rest_go_through() {
    let rx = inbox(config(false));
    let mut c = config(false);
    c.max_msg_size = 100;
    let tx = Node::start(c, drop).unwrap();
    let peer = tx.peer(v4(&rx)).unwrap();
    let mut batch: Vec<Message> = numbered(0..6).collect();
    batch[3] = Message::new(vec![7u8; 101]);
    let err = peer.send_batch(batch).wait().expect_err("one is too large");
    assert_eq!(err.delivered(), 5);
    assert_eq!(err.failures().len(), 1);
    assert!(
        matches!(err.error(), Error::MessageTooLarge { .. }),
        "{err}"
    );
    assert_eq!(err.into_messages()[0].data().len(), 101);
    let got: Vec<u32> = rx.iter().take(5).map(|m| number(&m)).collect();
    assert_eq!(got, [0, 1, 2, 4, 5]);
}

#[test]
fn an_unreachable_peer_hands_every_message_back_with_its_error() {
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = config(false);
    c.timeout = Duration::from_millis(500);
    let tx = Node::start(c, drop).unwrap();
    let peer = tx.peer(([127, 0, 0, 1], port).into()).unwrap();
    let started = Instant::now();
    let err = peer
        .send_batch(numbered(0..3))
        .wait_timeout(Duration::from_secs(20))
        .expect("an outcome within 20 s")
        .expect_err("nothing delivered");
    assert_eq!(err.delivered(), 0);
    let back: Vec<u32> = err.failures().iter().map(|f| number(f.message())).collect();
    assert_eq!(back, [0, 1, 2]);
    assert!(
        err.failures()
            .iter()
            .all(|f| matches!(f.error(), Error::CannotConnect { .. })),
        "{err}"
    );
    eprintln!("3 failed dials in {:?}", started.elapsed());
}

#[test]
fn closing_the_node_hands_back_what_was_still_queued() {
    // A synchronous peer that never releases: the first message waits for its ACK, the
    // rest stay queued until close().
    let (held_tx, held) = crossbeam_channel::unbounded();
    let rx = Node::start(config(true), move |m| {
        let _ = held_tx.send(m);
    })
    .unwrap();
    let tx = Node::start(config(true), drop).unwrap();
    let peer = tx.peer(v4(&rx)).unwrap();
    let sending = peer.send_batch(numbered(0..20));
    let first = held
        .recv_timeout(Duration::from_secs(10))
        .expect("the first arrives");
    assert_eq!(number(&first), 0);
    tx.close();
    let err = sending
        .wait_timeout(Duration::from_secs(10))
        .expect("close() completes the batch")
        .expect_err("not delivered");
    assert_eq!(err.delivered(), 0, "the first was never released");
    let back: Vec<u32> = err.into_messages().iter().map(number).collect();
    assert_eq!(back, (0..20).collect::<Vec<u32>>());
    // After close, a batch fails at once.
    let late = peer.send_batch(numbered(0..2)).wait().expect_err("closed");
    assert!(matches!(late.error(), Error::Shutdown), "{late}");
    drop(first);
}

#[test]
fn a_peer_outlives_garbage_collection_of_its_remote_and_send_sets_the_address() {
    let rx = inbox(config(false));
    let mut c = config(false);
    c.timeout = Duration::from_millis(100);
    c.reuse_time = Duration::from_millis(500);
    let tx = Node::start(c, drop).unwrap();
    let peer = tx.peer(v4(&rx)).unwrap();
    assert_eq!(peer.send_batch(numbered(0..3)).wait().unwrap(), 3);
    assert!(
        eventually(Duration::from_secs(10), || tx.remotes().is_empty()),
        "the idle remote is collected: {:?}",
        tx.remotes()
    );
    // The handle finds (makes) the remote again.
    assert_eq!(peer.send_batch(numbered(3..6)).wait().unwrap(), 3);
    // A message addressed elsewhere goes to the peer.
    let mut m = Message::to("127.0.0.1:9".parse().unwrap(), 6u32.to_be_bytes());
    m.set_header(b"h".to_vec());
    let sent = peer.send(m).wait().expect("sent to the peer");
    assert_eq!(sent.address(), Some(v4(&rx)));
    let got: Vec<u32> = rx.iter().take(7).map(|m| number(&m)).collect();
    assert_eq!(got, (0..7).collect::<Vec<u32>>());
    assert!(tx.peer("127.0.0.1:0".parse().unwrap()).is_err(), "port 0");
}
