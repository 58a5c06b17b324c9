//! `chirp bench-latency`: open-loop latency against an echo node, and `chirp
//! bench-histogram`, the same summary for latencies another program recorded (the C
//! libchirp and ZeroMQ harnesses write theirs to a file).
//!
//! Open loop: message `i` is *scheduled* at `start + i / rate`, whatever happened to the
//! messages before it. The sending thread sends every message whose time has come and
//! sleeps until the next one; its echo's latency is measured from the scheduled time, so a
//! sender that stalls (a full queue, a slow peer) is charged for it — no coordinated
//! omission. Percentiles come from an HDR histogram (3 significant digits).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use libchirp::{Completion, Config, Message, Node, SendError};

use crate::Fail;

/// Most sends outstanding before the sender waits for the oldest (under the default
/// `max_queued`); the wait is charged to the messages scheduled meanwhile.
const MAX_OUTSTANDING: usize = 1000;

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s in nanoseconds, 3 significant digits.
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid bounds")
}

/// One line: `latency offered=R sent=N achieved=A/s p50=… p90=… p99=… p999=… max=… us`.
fn summary(offered: f64, h: &Histogram<u64>, elapsed: Duration) -> String {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "latency offered={offered:.0}/s received={} achieved={:.0}/s p50={:.1} p90={:.1} p99={:.1} p999={:.1} max={:.1} us",
        h.len(),
        h.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    )
}

/// Sends `count` messages of `size` bytes to the echo at `to` at `rate` per second (0: as
/// fast as the node takes them, at most [`MAX_OUTSTANDING`] outstanding: the saturation
/// rate) and prints the summary line.
pub(crate) fn run(
    mut config: Config,
    to: SocketAddr,
    rate: f64,
    count: u64,
    size: usize,
) -> Result<(), Fail> {
    if !(rate.is_finite() && rate >= 0.0) {
        return Err(Fail(format!(
            "--rate must be 0 or a positive number, got {rate}"
        )));
    }
    let size = size.max(8);
    config.max_queued = config.max_queued.max(MAX_OUTSTANDING + 24);
    let start = Instant::now();
    // Scheduled send times, in ns since `start`, by message number (written before the
    // message is sent, read when its echo comes back).
    let scheduled: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let hist = Arc::new(Mutex::new(histogram()));
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let received = Arc::new(AtomicU64::new(0));
    let node = {
        let (scheduled, hist, received) = (scheduled.clone(), hist.clone(), received.clone());
        Node::start(config, move |m: Message| {
            let now = start.elapsed().as_nanos() as u64;
            let Some(i) = m
                .data()
                .get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
            else {
                return;
            };
            let Some(at) = scheduled.get(i as usize) else {
                return;
            };
            let latency = now.saturating_sub(at.load(Ordering::Relaxed)).max(1_000);
            let _ = hist
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(latency);
            if received.fetch_add(1, Ordering::Relaxed) + 1 == count {
                let _ = done_tx.send(());
            }
        })?
    };
    let patience = node.config().timeout() * 3 + Duration::from_secs(1);
    let mut outstanding: VecDeque<Completion<Result<Message, SendError>>> = VecDeque::new();
    let mut payload = vec![0u8; size];
    for i in 0..count {
        let due = if rate > 0.0 {
            Duration::from_secs_f64(i as f64 / rate)
        } else {
            start.elapsed()
        };
        let now = start.elapsed();
        if due > now {
            // The requested pace: sleep until this message's time.
            std::thread::sleep(due - now);
        }
        while outstanding.len() >= MAX_OUTSTANDING {
            let oldest = outstanding.pop_front().expect("non-empty");
            match oldest.wait_timeout(patience) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Fail(format!("send {i}: {}", e.error()))),
                Err(_) => return Err(Fail(format!("a send did not complete within {patience:?}"))),
            }
        }
        // Scheduled now (rate 0) or at its slot; a late send is charged from `due`.
        scheduled[i as usize].store(due.as_nanos() as u64, Ordering::Relaxed);
        payload[..8].copy_from_slice(&i.to_be_bytes());
        outstanding.push_back(node.send(Message::to(to, &payload[..])));
        // Drop the ones that finished (asynchronous mode: written).
        while outstanding.front().is_some_and(|c| c.is_ready()) {
            if let Err(e) = outstanding.pop_front().expect("non-empty").wait() {
                return Err(Fail(format!("send: {}", e.error())));
            }
        }
    }
    let r = done
        .recv_timeout(patience + Duration::from_secs(10))
        .map_err(|_| {
            Fail(format!(
                "only {} of {count} echoes came back",
                received.load(Ordering::Relaxed)
            ))
        });
    let elapsed = start.elapsed();
    node.close();
    r?;
    let h = hist.lock().unwrap_or_else(|e| e.into_inner());
    let offered = if rate > 0.0 {
        rate
    } else {
        count as f64 / elapsed.as_secs_f64()
    };
    println!("{}", summary(offered, &h, elapsed));
    Ok(())
}

/// `chirp bench-histogram FILE OFFERED SECS`: the summary line for latencies in FILE (one
/// integer of nanoseconds per line), as `bench-latency` prints it.
pub(crate) fn summarize(file: &std::path::Path, offered: f64, secs: f64) -> Result<(), Fail> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Fail(format!("reading {}: {e}", file.display())))?;
    let mut h = histogram();
    for (n, line) in text.lines().enumerate() {
        let ns: u64 = line.trim().parse().map_err(|_| {
            Fail(format!(
                "{}:{}: not a number of nanoseconds: {line:?}",
                file.display(),
                n + 1
            ))
        })?;
        let _ = h.record(ns.max(1_000));
    }
    if h.is_empty() {
        return Err(Fail(format!("{}: no latencies", file.display())));
    }
    println!(
        "{}",
        summary(offered, &h, Duration::from_secs_f64(secs.max(1e-9)))
    );
    Ok(())
}
