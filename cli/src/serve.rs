//! `chirp echo` and `chirp listen`: nodes that serve until SIGINT or SIGTERM.

use std::io::Write;
use std::time::Duration;

use libchirp::{Config, Node};

use crate::{announce, serve_until_signal, Fail, Signals};

/// Sends every received message back to its sender.
///
/// Synchronous: the request is released first, then answered, so a sender that waits for
/// its send before reading the answer is not left waiting on us while we wait on it.
///
/// Asynchronous: the request keeps its receive slot until its echo is written (the written
/// message is dropped, which releases it). A sender faster than our writes so fills our
/// slots and is held back by them, as slots are meant to; released first, its messages
/// piled up in our send queue until `max_queued` refused echoes, which were lost.
pub(crate) fn echo(config: Config, stats: Option<Duration>, signals: Signals) -> Result<(), Fail> {
    let synchronous = config.synchronous;
    let node = Node::start_inline(config, move |node, mut msg| {
        if synchronous {
            let _ = msg.release();
        }
        drop(node.send(msg));
    })?;
    announce(&node);
    serve_until_signal(&node, stats, &signals);
    node.close();
    Ok(())
}

/// Prints one line per received message: `ADDRESS:PORT IDENTITY SERIAL DATA`.
pub(crate) fn listen(
    config: Config,
    stats: Option<Duration>,
    signals: Signals,
) -> Result<(), Fail> {
    let node = Node::start(config, |msg| {
        let line = format!(
            "{} {} {} {}\n",
            msg.address().map(|a| a.to_string()).unwrap_or_default(),
            msg.identity(),
            msg.serial(),
            String::from_utf8_lossy(msg.data())
        );
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    })?;
    announce(&node);
    serve_until_signal(&node, stats, &signals);
    node.close();
    Ok(())
}
