//! Nodes that each follow the rules do not deadlock, whatever their modes:
//!
//! (a) a synchronous echo that holds each request until its answer is released, against an
//!     asynchronous sender keeping 16 messages outstanding: the echo's reader goes on
//!     reading (parking the messages it cannot deliver yet), so the ACK it waits for is seen;
//! (b) a synchronous sender that sends, waits for the send, and only then receives the
//!     answer, against echoes written the safe way (release the request before waiting).
use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libchirp::{pool, queue, Config, Message, Node};
use support::{config, echo_node, v4};

/// Keeps `window` messages outstanding to `to` until `count` came back; panics if the echoes
/// stop coming for 10 s.
fn pipeline(sender_config: Config, to: std::net::SocketAddr, window: u64, count: u64) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let back = Arc::new(AtomicU64::new(0));
    let b = back.clone();
    let sender = Node::start(sender_config, move |m| {
        drop(m); // release at once
        b.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(());
    })
    .unwrap();
    let mut sends = std::collections::VecDeque::new();
    let mut sent = 0u64;
    while back.load(Ordering::Relaxed) < count {
        while sent < count && sent - back.load(Ordering::Relaxed) < window {
            sends.push_back(sender.send(Message::to(to, sent.to_be_bytes().to_vec())));
            sent += 1;
        }
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!(
                    "deadlock: {} of {count} came back, {sent} sent",
                    back.load(Ordering::Relaxed)
                )
            });
        while sends.front().is_some_and(|c| c.is_ready()) {
            sends.pop_front().unwrap().wait().expect("send");
        }
    }
    for s in sends {
        s.wait().expect("send");
    }
    sender.close();
}

#[test]
fn a_synchronous_echo_holding_its_requests_answers_a_pipelining_asynchronous_sender() {
    // The echo keeps each request (and its only slot) until its answer was released —
    // and its answer needs an ACK that travels behind the sender's next messages.
    let echo = echo_node(config(true));
    pipeline(config(false), v4(&echo), 16, 10_000);
    // Parked frames were bounded and are all gone.
    echo.close();
}

/// A synchronous sender that sends, waits for the send, then takes the answer.
fn send_wait_then_receive(to: std::net::SocketAddr, rounds: u32) {
    // Released by hand, and the release waited for: an answer's ACK must be written before
    // the sender closes, or the echo's last send fails with the lost connection (a race
    // this test once lost under load while it dropped answers unreleased at the end).
    let mut c = config(true);
    c.auto_release = false;
    let sender = queue::Chirp::new(c).unwrap();
    for i in 0..rounds {
        let data = i.to_be_bytes().to_vec();
        match sender
            .send(Message::to(to, data.clone()))
            .wait_timeout(Duration::from_secs(10))
        {
            Ok(r) => drop(r.expect("send")),
            Err(_) => panic!("round {i}: the send waits on the echo, which waits on us"),
        }
        let mut answer = sender
            .recv_timeout(Duration::from_secs(10))
            .expect("answer");
        assert_eq!(answer.data(), data);
        answer
            .release()
            .wait_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("round {i}: the answer's ACK was not written"));
    }
    sender.close();
}

#[test]
fn a_sender_that_waits_then_receives_gets_its_answer_from_every_safe_echo() {
    // Reader-thread echo, as `chirp echo` does it: release the request, then answer.
    let inline = Node::start_inline(config(true), |node, mut msg| {
        let _ = msg.release();
        drop(node.send(msg));
    })
    .unwrap();
    send_wait_then_receive(v4(&inline), 200);
    inline.close();

    // Pool echo, as examples/pool_echo.rs does it: release first, then wait for the answer.
    let mut c = config(true);
    c.auto_release = false;
    let pooled = pool::Chirp::new(c, |node, mut msg| {
        let _ = msg.release();
        node.send(msg).wait()?;
        Ok(())
    })
    .unwrap();
    send_wait_then_receive(v4(&pooled), 200);
    pooled.close();

    // Queue echo, as examples/queue_echo.rs does it: auto-release hands the message out
    // released; waiting for the answer then holds nothing of the sender's.
    let q = Arc::new(queue::Chirp::new(config(true)).unwrap());
    let qq = q.clone();
    let server = std::thread::spawn(move || {
        while let Ok(msg) = qq.recv_timeout(Duration::from_secs(5)) {
            qq.send(msg).wait().expect("echo");
        }
    });
    send_wait_then_receive(v4(&q), 200);
    // Every answer is in: closing ends the server's wait.
    q.close();
    server.join().unwrap();
}
