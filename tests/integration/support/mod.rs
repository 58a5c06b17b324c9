//! Shared fixtures for the integration tests: nodes on port 0, loopback addresses, and
//! counting of the process's threads and file descriptors.
#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libchirp::{Config, Message, Node};

/// A plaintext config on an ephemeral port.
pub fn config(synchronous: bool) -> Config {
    let mut c = Config::default();
    c.port = 0;
    c.disable_encryption = true;
    c.synchronous = synchronous;
    c.timeout = Duration::from_secs(5);
    c
}

/// The node's IPv4 loopback address.
pub fn v4(node: &Node) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.port()))
}

/// The node's IPv6 loopback address.
pub fn v6(node: &Node) -> SocketAddr {
    format!("[::1]:{}", node.port()).parse().unwrap()
}

/// A node whose received messages arrive on a channel.
pub fn inbox_node(config: Config) -> (Node, crossbeam_channel::Receiver<Message>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let node = Node::start(config, move |m| {
        let _ = tx.send(m);
    })
    .expect("start node");
    (node, rx)
}

/// An echo node: every message is sent back to its sender (same identity) from the reader
/// thread, and released once that send completed. No helper thread: it ends with the node.
pub fn echo_node(config: Config) -> Node {
    Node::start_inline(config, |node, msg| drop(node.send(msg))).expect("start echo node")
}

/// Receives with a deadline, panicking with `what` on time-out.
pub fn recv(rx: &crossbeam_channel::Receiver<Message>, what: &str) -> Message {
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Number of libchirp threads in this process (all are named `chirp-*`), read from
/// /proc/self/task; test-harness threads coming and going do not disturb it.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .map(|c| c.starts_with("chirp-"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Number of open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until `f` holds, up to `timeout`; returns whether it did.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(5));
    }
}
