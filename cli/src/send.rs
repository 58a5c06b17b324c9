//! `chirp send` and `chirp request`, and the event-driven sender that `send --echo` shares
//! with the benchmarks.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use libchirp::{Completion, Config, Message, Node, SendError};

use crate::{print_rate, stats_line, watch_signals, Fail, Signals};

/// What to send, where, and how many at once.
pub(crate) struct Opts {
    pub(crate) to: SocketAddr,
    pub(crate) payload: Vec<u8>,
    pub(crate) count: u64,
    pub(crate) window: u64,
    /// Send in batches of this many through one `Peer` (0: one `send` per message).
    pub(crate) batch: u64,
}

/// `chirp send`: `count` messages, `window` outstanding; with `echo`, waits for every
/// message to come back and prints the rate.
pub(crate) fn send(config: Config, opts: Opts, echo: bool, signals: Signals) -> Result<(), Fail> {
    if echo {
        let count = opts.count;
        let elapsed = echo_round_trips(config, opts, signals)?;
        print_rate(count, elapsed);
        return Ok(());
    }
    // Whatever comes back is released at once (a synchronous echo node's send, and so its
    // release of ours, waits for that).
    let node = Arc::new(Node::start(config, drop)?);
    watch_signals(&node, signals);
    let r = plain_sends(&node, &opts);
    summary(&node, &r);
    node.close();
    r
}

/// `chirp request`: one request, its answer's data on stdout.
pub(crate) fn request(
    config: Config,
    to: SocketAddr,
    data: String,
    signals: Signals,
) -> Result<(), Fail> {
    let node = Arc::new(Node::start(config, drop)?);
    watch_signals(&node, signals);
    let answer = node.request(Message::to(to, data.into_bytes())).wait();
    let r = match answer {
        Ok(mut msg) => {
            println!("{}", String::from_utf8_lossy(msg.data()));
            // Release now, so a synchronous peer's send completes before we close.
            let _ = msg.release().wait_timeout(node.config().timeout());
            Ok(())
        }
        Err(e) => Err(Fail(e.to_string())),
    };
    node.close();
    r
}

/// `chirp send --report`: `count` messages one at a time, a line per outcome, going on
/// after failures (for watching a node across failures; see the CLI help for the format).
pub(crate) fn report(
    config: Config,
    to: SocketAddr,
    count: u64,
    echo: bool,
    pace: Duration,
    signals: Signals,
) -> Result<(), Fail> {
    use std::io::Write;
    let timeout = config.timeout;
    let (tx, answers) = crossbeam_channel::unbounded();
    let node = Arc::new(Node::start(config, move |m| {
        let _ = tx.send((m.data().to_vec(), m.remote_identity()));
    })?);
    watch_signals(&node, signals);
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    };
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        if node.is_closed() {
            break;
        }
        let data = i.to_string().into_bytes();
        let start = Instant::now();
        let r = node.send(Message::to(to, data.clone())).wait();
        let ms = start.elapsed().as_millis();
        let line = match &r {
            Ok(_) => format!("ok {i} {} {ms}", unix_ms()),
            Err(e) => format!("err {i} {} {ms} {}", unix_ms(), e.error()),
        };
        let _ = writeln!(out, "{line}");
        if echo && r.is_ok() {
            // The answer to this message (older answers that come late are skipped).
            let deadline = Instant::now() + timeout;
            let mut got = None;
            while let Ok((d, id)) = answers.recv_deadline(deadline) {
                if d == data {
                    got = Some(id);
                    break;
                }
            }
            let _ = match got {
                Some(id) => writeln!(out, "echo {i} {} {id}", unix_ms()),
                None => writeln!(out, "noecho {i} {}", unix_ms()),
            };
        }
        let _ = out.flush();
        if !pace.is_zero() {
            std::thread::sleep(pace); // the requested pace, not a wait for an event
        }
    }
    drop(out);
    node.close();
    Ok(())
}

/// After a successful run, the node's statistics on stderr (after a failure, the one error
/// line stays alone).
fn summary<T>(node: &Node, r: &Result<T, Fail>) {
    if r.is_ok() {
        eprintln!("summary: {}", stats_line(&node.stats(), None));
    }
}

/// An event-driven sender. The handler (on the reader thread, like a C libchirp callback)
/// releases each echo and sends the next message, so the round trip costs no extra thread
/// wake-up; the main thread only watches for errors and the end.
struct Driver {
    opts: Opts,
    state: std::sync::Mutex<DriverState>,
    done: Sender<()>,
}

#[derive(Default)]
struct DriverState {
    sent: u64,
    back: u64,
    sends: VecDeque<Completion<Result<Message, SendError>>>,
    /// The first send that failed.
    failed: Option<SendError>,
}

impl DriverState {
    /// Takes finished sends off the front (keeping the first failure); returns how many
    /// are still pending.
    fn reap(&mut self) -> usize {
        while let Some(front) = self.sends.pop_front() {
            match front.try_wait() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.failed.get_or_insert(e);
                }
                Err(pending) => {
                    self.sends.push_front(pending);
                    break;
                }
            }
        }
        self.sends.len()
    }
}

impl Driver {
    /// Sends while fewer than `window` are outstanding, after taking the finished sends
    /// off the front. (Done here, on the thread that sent them, and a few at a time: the
    /// main thread taking tens of thousands at once held this lock against the reader
    /// thread and freed memory another thread had allocated.)
    fn fill(&self, node: &Node) {
        let o = &self.opts;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.reap();
        while st.sent < o.count && st.sent - st.back < o.window {
            st.sent += 1;
            let c = node.send(Message::to(o.to, &o.payload[..]));
            st.sends.push_back(c);
        }
    }

    fn echoed(&self, node: &Node, msg: Message) {
        drop(msg); // release: lets the echo's send (and so our synchronous send) complete
        let back = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.back += 1;
            st.back
        };
        if back == self.opts.count {
            let _ = self.done.send(());
        } else {
            self.fill(node);
        }
    }

    /// Takes finished sends off the front; the first failure is returned.
    fn reap(&self) -> Result<usize, Fail> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let pending = st.reap();
        match st.failed.take() {
            Some(e) => Err(Fail::from(e)),
            None => Ok(pending),
        }
    }

    fn back(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).back
    }
}

/// Starts a node that sends `opts.count` messages to an echo node, `opts.window`
/// outstanding, and returns the time until all came back (and all sends completed).
pub(crate) fn echo_round_trips(
    config: Config,
    opts: Opts,
    signals: Signals,
) -> Result<Duration, Fail> {
    let (to, count) = (opts.to, opts.count);
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let driver = Arc::new(Driver {
        opts,
        state: Default::default(),
        done: done_tx,
    });
    let d = driver.clone();
    let node = Arc::new(Node::start_inline(config, move |node, msg| {
        d.echoed(node, msg)
    })?);
    watch_signals(&node, signals);
    let timeout = node.config().timeout();
    let patience = timeout * 3 + Duration::from_secs(1);
    let progress = std::io::stderr().is_terminal();
    let start = Instant::now();
    let result = (|| {
        if count == 0 {
            return Ok(());
        }
        driver.fill(&node);
        let mut last = (0u64, Instant::now());
        let mut shown = Instant::now();
        loop {
            match done.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => break,
                Err(_) => {
                    driver.reap()?;
                    if node.is_closed() {
                        return Err(Fail("interrupted".into()));
                    }
                    let back = driver.back();
                    if back != last.0 {
                        last = (back, Instant::now());
                    } else if last.1.elapsed() > patience {
                        return Err(Fail(format!(
                            "no echo from {to} within {patience:?} ({back} of {count} came back)"
                        )));
                    }
                    if progress && shown.elapsed() >= Duration::from_secs(1) {
                        shown = Instant::now();
                        eprint!("\r{back}/{count} ");
                    }
                }
            }
        }
        // Every send must also have completed.
        let deadline = Instant::now() + patience;
        while driver.reap()? > 0 {
            if Instant::now() > deadline {
                return Err(Fail(format!(
                    "sends to {to} did not complete within {patience:?}"
                )));
            }
            std::thread::park_timeout(Duration::from_millis(1));
        }
        Ok(())
    })();
    let elapsed = start.elapsed();
    if progress {
        eprint!("\r");
    }
    summary(&node, &result);
    node.close();
    result.map(|()| elapsed)
}

/// Sends `opts.count` messages with at most `opts.window` sends outstanding (no echo
/// expected).
pub(crate) fn plain_sends(node: &Node, opts: &Opts) -> Result<(), Fail> {
    if opts.batch > 0 {
        return batch_sends(node, opts);
    }
    let to = opts.to;
    let patience = node.config().timeout() * 3 + Duration::from_secs(1);
    let mut sends: VecDeque<Completion<Result<Message, SendError>>> = VecDeque::new();
    for _ in 0..opts.count {
        if sends.len() as u64 >= opts.window {
            wait_send(sends.pop_front().expect("non-empty"), to, patience)?;
        }
        sends.push_back(node.send(Message::to(to, &opts.payload[..])));
    }
    for s in sends {
        wait_send(s, to, patience)?;
    }
    Ok(())
}

/// The streaming path: batches of `opts.batch` messages through one [`libchirp::Peer`],
/// with as many whole batches outstanding as fit in `opts.window` messages (at least one).
fn batch_sends(node: &Node, opts: &Opts) -> Result<(), Fail> {
    let to = opts.to;
    let patience = node.config().timeout() * 3 + Duration::from_secs(1);
    let peer = node.peer(to)?;
    let in_flight = (opts.window / opts.batch).max(1) as usize;
    let mut batches: VecDeque<Completion<Result<usize, libchirp::BatchError>>> =
        VecDeque::with_capacity(in_flight);
    let mut left = opts.count;
    while left > 0 {
        if batches.len() >= in_flight {
            wait_batch(batches.pop_front().expect("non-empty"), to, patience)?;
        }
        let n = left.min(opts.batch);
        left -= n;
        let msgs = (0..n).map(|_| Message::new(&opts.payload[..]));
        batches.push_back(peer.send_batch(msgs));
    }
    for b in batches {
        wait_batch(b, to, patience)?;
    }
    Ok(())
}

fn wait_batch(
    c: Completion<Result<usize, libchirp::BatchError>>,
    to: SocketAddr,
    patience: Duration,
) -> Result<(), Fail> {
    match c.wait_timeout(patience) {
        Ok(r) => r
            .map(drop)
            .map_err(|e| Fail(format!("sending to {to}: {e}"))),
        Err(_) => Err(Fail(format!(
            "a batch to {to} did not complete within {patience:?}"
        ))),
    }
}

fn wait_send(
    c: Completion<Result<Message, SendError>>,
    to: SocketAddr,
    patience: Duration,
) -> Result<(), Fail> {
    match c.wait_timeout(patience) {
        Ok(r) => r.map(drop).map_err(Fail::from),
        Err(_) => Err(Fail(format!(
            "send to {to} did not complete within {patience:?}"
        ))),
    }
}
