//! The pool and queue interfaces and request/response (issue 5).
use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libchirp::{pool, queue, Error, Message};
use support::*;

/// Captures log records so tests can check what was logged.
struct Capture(Mutex<Vec<String>>);
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Warn {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", r.level(), r.args()));
        }
    }
    fn flush(&self) {}
}
fn logs() -> &'static Capture {
    static LOGGER: OnceLock<&'static Capture> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(c).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
        c
    })
}
fn logged(needle: &str) -> bool {
    logs().0.lock().unwrap().iter().any(|l| l.contains(needle))
}

fn pool_config(sync: bool) -> libchirp::Config {
    let mut c = config(sync);
    c.pool_threads = 2;
    c
}

#[test]
fn sync_sender_unblocks_only_after_the_handler_released() {
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let receiver = pool::Chirp::new(pool_config(true), move |_, _msg| {
        g.wait(); // in the handler
        g.wait(); // released by the test
        Ok(())
    })
    .unwrap();
    let sender = pool::Chirp::new(pool_config(true), |_, _| Ok(())).unwrap();
    let sending = sender.send(Message::to(v4(&receiver), b"x".to_vec()));
    gate.wait(); // the handler runs
    let sending = sending
        .wait_timeout(Duration::from_millis(300))
        .expect_err("handler still running");
    gate.wait(); // let it return: auto-release
    sending.wait().unwrap();
}

#[test]
fn auto_release_off_releases_manually_or_on_drop() {
    let mut c = pool_config(true);
    c.auto_release = false;
    let kept = Arc::new(Mutex::new(Vec::new()));
    let k = kept.clone();
    let receiver = pool::Chirp::new(c, move |_, msg| {
        assert!(msg.has_slot());
        k.lock().unwrap().push(msg);
        Ok(())
    })
    .unwrap();
    let sender = pool::Chirp::new(pool_config(true), |_, _| Ok(())).unwrap();
    // Manual release.
    let s1 = sender.send(Message::to(v4(&receiver), b"1".to_vec()));
    assert!(eventually(Duration::from_secs(5), || kept
        .lock()
        .unwrap()
        .len()
        == 1));
    let s1 = s1
        .wait_timeout(Duration::from_millis(200))
        .expect_err("kept by the application");
    let mut m = kept.lock().unwrap().pop().unwrap();
    let (id, _serial) = m.release().wait();
    assert_eq!(id, m.identity());
    s1.wait().unwrap();
    // Drop releases too.
    let s2 = sender.send(Message::to(v4(&receiver), b"2".to_vec()));
    assert!(eventually(Duration::from_secs(5), || kept
        .lock()
        .unwrap()
        .len()
        == 1));
    let s2 = s2
        .wait_timeout(Duration::from_millis(200))
        .expect_err("kept by the application");
    kept.lock().unwrap().clear();
    s2.wait().unwrap();
}

#[test]
fn a_refused_message_is_not_acknowledged_and_its_sender_times_out() {
    let mut c = pool_config(true);
    c.auto_release = false;
    let kept = Arc::new(Mutex::new(Vec::new()));
    let k = kept.clone();
    let receiver = pool::Chirp::new(c, move |_, msg| {
        k.lock().unwrap().push(msg);
        Ok(())
    })
    .unwrap();
    let mut sc = pool_config(true);
    sc.timeout = Duration::from_millis(400);
    let sender = pool::Chirp::new(sc, |_, _| Ok(())).unwrap();
    let s1 = sender.send(Message::to(v4(&receiver), b"refused".to_vec()));
    assert!(
        eventually(Duration::from_secs(5), || kept.lock().unwrap().len() == 1),
        "the message never reached the handler"
    );
    let mut m = kept.lock().unwrap().pop().unwrap();
    m.refuse();
    assert!(!m.has_slot(), "refuse() left the slot held");
    let err = s1
        .wait_timeout(Duration::from_secs(5))
        .expect("the send has its outcome within its timeout")
        .expect_err("a refused message was reported delivered");
    assert!(err.error().is_timeout(), "expected a timeout, got {err:?}");
    // The slot is free: the next message is delivered and acknowledged.
    let s2 = sender.send(Message::to(v4(&receiver), b"kept".to_vec()));
    assert!(
        eventually(Duration::from_secs(5), || kept.lock().unwrap().len() == 1),
        "the next message never reached the handler"
    );
    kept.lock().unwrap().pop().unwrap().release().wait();
    s2.wait_timeout(Duration::from_secs(5))
        .expect("the second send has its outcome")
        .expect("the second message was released");
}

#[test]
fn handler_errors_and_panics_are_logged_and_survived() {
    logs();
    let mut c = pool_config(true);
    c.pool_threads = 1; // the single worker must survive
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let receiver = pool::Chirp::new(c, move |_, msg| {
        h.fetch_add(1, Ordering::SeqCst);
        match msg.data() {
            b"error" => Err("the handler said no".into()),
            b"panic" => panic!("handler exploded"),
            _ => Ok(()),
        }
    })
    .unwrap();
    let sender = pool::Chirp::new(pool_config(true), |_, _| Ok(())).unwrap();
    let e = Message::to(v4(&receiver), b"error".to_vec());
    let eid = e.identity();
    sender.send(e).wait().unwrap();
    let p = Message::to(v4(&receiver), b"panic".to_vec());
    let pid = p.identity();
    sender
        .send(p)
        .wait()
        .expect("a panicking handler still releases the message");
    sender
        .send(Message::to(v4(&receiver), b"fine".to_vec()))
        .wait()
        .unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 3);
    assert!(eventually(Duration::from_secs(5), || logged(&format!(
        "handler failed for message {eid}: the handler said no"
    ))));
    assert!(eventually(Duration::from_secs(5), || logged(&format!(
        "handler panicked for message {pid}: handler exploded"
    ))));
    assert!(!receiver.is_closed());
}

#[test]
fn request_answer_timeout_and_late_answer() {
    // Success: the echo answers with the same identity; the answer does not reach our handler.
    let echo = pool::Chirp::new(pool_config(true), |chirp, mut msg| {
        if msg.data() == b"slow" {
            std::thread::sleep(Duration::from_millis(700)); // the requester's timeout is shorter
        }
        let mut data = b"re: ".to_vec();
        data.extend_from_slice(msg.data());
        msg.set_data(data);
        chirp.send(msg).wait()?;
        Ok(())
    })
    .unwrap();
    let handler_saw = Arc::new(Mutex::new(Vec::new()));
    let hs = handler_saw.clone();
    let mut c = pool_config(true);
    c.timeout = Duration::from_millis(400);
    c.auto_release = false;
    let client = pool::Chirp::new(c, move |_, msg| {
        hs.lock().unwrap().push(msg.data().to_vec());
        Ok(())
    })
    .unwrap();
    let q = Message::to(v4(&echo), b"question".to_vec());
    let qid = q.identity();
    let mut answer = client.request(q).wait().unwrap();
    assert_eq!(
        (answer.identity(), answer.data()),
        (qid, &b"re: question"[..])
    );
    assert!(
        answer.has_slot(),
        "the caller decides when the answer is released"
    );
    answer.release().wait();
    // Timeout; then the late answer arrives as an ordinary message.
    let t = Instant::now();
    let err = client
        .request(Message::to(v4(&echo), b"slow".to_vec()))
        .wait()
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(350) && t.elapsed() < Duration::from_secs(3));
    assert!(eventually(Duration::from_secs(5), || handler_saw
        .lock()
        .unwrap()
        .iter()
        .any(|d| d == b"re: slow")));
    assert!(
        !handler_saw
            .lock()
            .unwrap()
            .iter()
            .any(|d| d == b"re: question"),
        "answers are not delivered twice"
    );
    // No peer at all: the request fails with the send's error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = client
        .request(Message::to(closed, b"nobody".to_vec()))
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::CannotConnect { .. }), "{err}");
}

#[test]
fn executor_submit_map_and_shutdown() {
    let chirp = pool::Chirp::new(pool_config(true), |_, _| Ok(())).unwrap();
    assert_eq!(chirp.submit(|| 6 * 7).wait().unwrap(), 42);
    let p = chirp
        .submit(|| -> u8 { panic!("task failed") })
        .wait()
        .unwrap_err();
    assert!(matches!(p, Error::TaskPanicked { ref message } if message == "task failed"));
    // map keeps input order even when later items finish first.
    let out: Vec<u64> = chirp
        .map(
            |x: u64| {
                std::thread::sleep(Duration::from_millis(20 * (5 - x)));
                x * 10
            },
            0..5u64,
        )
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, [0, 10, 20, 30, 40]);
    // shutdown(false) returns while a task runs; shutdown(true) waits for it.
    let gate = Arc::new(Barrier::new(2));
    let finished = Arc::new(AtomicUsize::new(0));
    let (g, f) = (gate.clone(), finished.clone());
    let running = chirp.submit(move || {
        g.wait();
        std::thread::sleep(Duration::from_millis(300));
        f.fetch_add(1, Ordering::SeqCst);
    });
    gate.wait();
    let t = Instant::now();
    chirp.shutdown(false);
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "shutdown(false) does not wait"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    assert_eq!(chirp.submit(|| 1).wait().unwrap_err(), Error::Shutdown);
    chirp.shutdown(true);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "shutdown(true) waited for the running task"
    );
    running.wait().unwrap();
}

#[test]
fn shutdown_true_waits_for_running_handlers() {
    let gate = Arc::new(Barrier::new(2));
    let done = Arc::new(AtomicUsize::new(0));
    let (g, d) = (gate.clone(), done.clone());
    let mut c = pool_config(false);
    c.pool_threads = 1;
    let receiver = pool::Chirp::new(c, move |_, _| {
        g.wait();
        std::thread::sleep(Duration::from_millis(300));
        d.fetch_add(1, Ordering::SeqCst);
        Ok(())
    })
    .unwrap();
    let sender = pool::Chirp::new(pool_config(false), |_, _| Ok(())).unwrap();
    sender
        .send(Message::to(v4(&receiver), b"x".to_vec()))
        .wait()
        .unwrap();
    gate.wait();
    receiver.shutdown(true);
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[test]
fn queue_recv_variants_and_auto_release() {
    let receiver = queue::Chirp::new(config(true)).unwrap();
    let sender = queue::Chirp::new(config(true)).unwrap();
    assert!(receiver.try_recv().unwrap().is_none());
    let t = Instant::now();
    assert!(receiver
        .recv_timeout(Duration::from_millis(100))
        .unwrap_err()
        .is_timeout());
    assert!(t.elapsed() >= Duration::from_millis(90));
    // Auto-release: released when handed out, so the sync send completes then.
    let s = sender.send(Message::to(v4(&receiver), b"a".to_vec()));
    let m = receiver.recv().unwrap();
    assert!(!m.has_slot());
    assert_eq!(m.data(), b"a");
    s.wait().unwrap();
    let s = sender.send(Message::to(v4(&receiver), b"b".to_vec()));
    assert!(eventually(Duration::from_secs(5), || !receiver.is_empty()));
    assert_eq!(receiver.try_recv().unwrap().unwrap().data(), b"b");
    s.wait().unwrap();
    let s = sender.send(Message::to(v4(&receiver), b"c".to_vec()));
    assert_eq!(receiver.iter().next().unwrap().data(), b"c");
    s.wait().unwrap();
    receiver.close();
    assert_eq!(receiver.recv().unwrap_err(), Error::Shutdown);
    assert_eq!(receiver.try_recv().unwrap_err(), Error::Shutdown);
    assert!(receiver.iter().next().is_none());
}

#[test]
fn queue_without_auto_release_holds_the_slot() {
    let mut c = config(true);
    c.auto_release = false;
    let receiver = queue::Chirp::new(c).unwrap();
    let sender = queue::Chirp::new(config(true)).unwrap();
    let s = sender.send(Message::to(v4(&receiver), b"a".to_vec()));
    let m = receiver.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(m.has_slot());
    let s = s
        .wait_timeout(Duration::from_millis(200))
        .expect_err("slot still held");
    drop(m);
    s.wait().unwrap();
}

/// `request_with_send` reports the send as `send` would and the answer as `request` does;
/// a send that fails fails both.
#[test]
fn request_with_send_reports_the_send_and_the_answer() {
    for synchronous in [true, false] {
        let echo = support::echo_node(support::config(synchronous));
        let (client, _inbox) = support::inbox_node(support::config(synchronous));
        let q = Message::to(v4(&echo), b"question".to_vec());
        let qid = q.identity();
        let (sent, answer) = client.request_with_send(q);
        let mut answer = answer
            .wait_timeout(Duration::from_secs(10))
            .expect("answer within 10 s")
            .expect("answer");
        assert_eq!((answer.identity(), answer.data()), (qid, &b"question"[..]));
        answer.release().wait();
        let sent = sent
            .wait_timeout(Duration::from_secs(10))
            .expect("send outcome within 10 s")
            .expect("sent");
        assert_eq!(
            sent.identity(),
            qid,
            "the request is handed back (synchronous: {synchronous})"
        );

        // Nobody listens on the port of a closed node: both completions fail.
        let gone = support::echo_node(support::config(synchronous));
        let to = v4(&gone);
        gone.close();
        let (sent, answer) = client.request_with_send(Message::to(to, b"lost".to_vec()));
        let err = sent.wait().expect_err("a send to a closed port fails");
        assert_eq!(err.message().data(), b"lost", "the message is handed back");
        let aerr = answer.wait().expect_err("so does the request");
        assert!(
            !aerr.is_timeout(),
            "fails with the send's error, not a timeout: {aerr}"
        );
    }
}
