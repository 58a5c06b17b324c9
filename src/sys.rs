//! Socket set-up that `std::net` does not offer, done with `socket2`: IPv6-only listeners
//! with a chosen backlog, TCP keep-alive, a connect with a deadline that the node can
//! abandon, waking threads blocked in `accept`, and vectored sends that never block and
//! never raise `SIGPIPE`.

use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Idle time before TCP keep-alive probes start, as libchirp sets on every connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

fn new_socket(addr: &SocketAddr) -> io::Result<Socket> {
    // socket2 sets close-on-exec atomically where the platform allows.
    Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )
}

/// Binds and listens on `addr` with the given backlog; IPv6 sockets are IPv6-only so that
/// an IPv4 listener can share the port (as libchirp does).
pub(crate) fn listen(addr: SocketAddr, backlog: u8) -> io::Result<TcpListener> {
    let socket = new_socket(&addr)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::from(backlog))?;
    Ok(socket.into())
}

/// Wakes every thread blocked in `accept` on this listener (Linux returns an error to them).
pub(crate) fn shutdown_listener(listener: &TcpListener) {
    // Errors are irrelevant here: the listener is being closed anyway.
    let _ = SockRef::from(listener).shutdown(Shutdown::Both);
}

/// A TCP socket for `addr` that is not connected yet. Having the socket before connecting
/// lets the node shut it down from another thread, which ends a pending connect.
pub(crate) fn unconnected(addr: &SocketAddr) -> io::Result<TcpStream> {
    Ok(new_socket(addr)?.into())
}

/// Connects `stream` to `addr`, giving up at `deadline`, or as soon as `abandon` is set.
/// The node sets `abandon` and then shuts the socket down, which wakes the wait at once;
/// the flag is also checked after the connect started (a shutdown that came before it did
/// nothing) and every 50 ms. Leaves the socket in blocking mode.
pub(crate) fn connect(
    stream: &TcpStream,
    addr: &SocketAddr,
    deadline: Instant,
    abandon: &AtomicBool,
) -> io::Result<()> {
    let sock = SockRef::from(stream);
    sock.set_nonblocking(true)?;
    let r = connect_nonblocking(&sock, addr, deadline, abandon);
    sock.set_nonblocking(false)?;
    r
}

fn connect_nonblocking(
    sock: &SockRef,
    addr: &SocketAddr,
    deadline: Instant,
    abandon: &AtomicBool,
) -> io::Result<()> {
    match sock.connect(&(*addr).into()) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    loop {
        if abandon.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "node is closing",
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        if wait_writable(sock, (deadline - now).min(Duration::from_millis(50)))? {
            break;
        }
    }
    // Woken by the node's shutdown: that is the answer, not the socket's error (a reset).
    if abandon.load(Ordering::Acquire) {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "node is closing",
        ));
    }
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    // A refused connect can also surface only through getpeername.
    sock.peer_addr()?;
    Ok(())
}

/// The bytes the peer has moved on this connection so far, as the kernel counts them
/// (`TCP_INFO`): what it acknowledged of ours plus what we received from it. It grows only
/// while the peer takes part; bytes merely taken into our own send buffer do not count.
/// `None` if it cannot be told.
pub(crate) fn peer_progress(stream: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is that large and
    // alive across the call, and stores the length it wrote in `len`; the descriptor is
    // the stream's own.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0).then(|| info.tcpi_bytes_acked + info.tcpi_bytes_received)
}

/// Waits until the socket is writable (or has an error or hang-up), at most `timeout`.
/// `socket2` has no readiness wait, so this is the one system call made by hand.
fn wait_writable(sock: &SockRef, timeout: Duration) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is one valid, initialised pollfd that lives across the call, and the
    // count passed is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

/// One read from `sock` bounded by `deadline`: the number of bytes read (never 0). Used
/// while a connection is set up (TLS and chirp handshakes), before its threads run.
pub(crate) fn read_until(
    mut sock: &TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<usize, crate::error::Error> {
    use crate::error::Error;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::timeout(
                "waiting for the peer during connection set-up",
            ));
        }
        sock.set_read_timeout(Some(remaining))?;
        match sock.read(buf) {
            Ok(0) => return Err(Error::protocol("peer closed the connection during set-up")),
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(Error::broken("reading from the peer", e)),
        }
    }
}

/// Keep-alive probes after the idle delay: every 10 s, three unanswered close the
/// connection (TCP's defaults, 75 s × 9, would keep a dead idle peer for 11 minutes).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// TCP_NODELAY and keep-alive with a 60 s idle delay, as libchirp sets on every connection,
/// with probes every 10 s (three unanswered end the connection) where libchirp leaves
/// TCP's defaults (75 s × 9). Invisible on the wire. (A write that makes no progress is
/// bounded by the write timeout; data left unacknowledged with nothing more to write, by
/// garbage collection. A TCP_USER_TIMEOUT was tried: it raced with the write timeout and
/// turned "the peer stopped reading" into "broken pipe".)
pub(crate) fn configure_stream(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    SockRef::from(stream).set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )
}

/// One vectored send. With `blocking` false it never blocks, whatever the socket's mode
/// (`MSG_DONTWAIT`); it never raises `SIGPIPE` (`MSG_NOSIGNAL`), which matters when the
/// library lives in a program that did not ignore that signal. Retries on `EINTR`.
pub(crate) fn send_vectored(
    stream: &TcpStream,
    bufs: &[IoSlice],
    blocking: bool,
) -> io::Result<usize> {
    let flags = if blocking {
        libc::MSG_NOSIGNAL
    } else {
        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
    };
    let sock = SockRef::from(stream);
    loop {
        match sock.send_vectored_with_flags(bufs, flags) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_listener_is_v6_only_so_v4_can_share_the_port() {
        let v4 = listen("127.0.0.1:0".parse().unwrap(), 10).unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = listen(format!("[::1]:{port}").parse().unwrap(), 10).unwrap();
        assert_eq!(v6.local_addr().unwrap().port(), port);
        assert!(SockRef::from(&v6).only_v6().unwrap());
    }

    #[test]
    fn keepalive_and_nodelay_are_set() {
        let l = listen("127.0.0.1:0".parse().unwrap(), 10).unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        configure_stream(&s).unwrap();
        let sock = SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert!(s.nodelay().unwrap());
    }

    #[test]
    fn shutdown_wakes_a_blocked_accept() {
        let l = std::sync::Arc::new(listen("127.0.0.1:0".parse().unwrap(), 10).unwrap());
        let l2 = l.clone();
        let t = std::thread::spawn(move || l2.accept().is_err());
        // The accept may not have started yet; shutting down first also makes it fail.
        shutdown_listener(&l);
        assert!(t.join().unwrap(), "accept returned an error after shutdown");
    }

    /// A port nobody listens on: bound, then closed again.
    fn closed_port() -> SocketAddr {
        let l = listen("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn connect_fails_with_the_os_error_or_as_abandoned() {
        let addr = closed_port();
        let deadline = Instant::now() + Duration::from_secs(5);
        let s = unconnected(&addr).unwrap();
        let e = connect(&s, &addr, deadline, &AtomicBool::new(false)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let s = unconnected(&addr).unwrap();
        let e = connect(&s, &addr, deadline, &AtomicBool::new(true)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
    }

    #[test]
    fn a_pending_connect_ends_when_the_socket_is_shut_down() {
        // A listener whose accept queue is full drops further SYNs: the connect hangs.
        let l = listen("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let addr = l.local_addr().unwrap();
        let mut fillers = Vec::new();
        let s = loop {
            let s = std::sync::Arc::new(unconnected(&addr).unwrap());
            let soon = Instant::now() + Duration::from_millis(200);
            if connect(&s, &addr, soon, &AtomicBool::new(false)).is_err() {
                break std::sync::Arc::new(unconnected(&addr).unwrap());
            }
            fillers.push(s);
            assert!(fillers.len() < 64, "the accept queue never filled");
        };
        let abandon = std::sync::Arc::new(AtomicBool::new(false));
        let (s2, a2) = (s.clone(), abandon.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let _ = tx.send(());
            connect(&s2, &addr, deadline, &a2)
        });
        rx.recv().unwrap();
        // Whether the connect has started or not, it must end promptly, as abandoned.
        abandon.store(true, Ordering::Release);
        let _ = s.shutdown(Shutdown::Both);
        let started = Instant::now();
        let e = t.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the connect was not woken"
        );
    }

    #[test]
    fn nonblocking_send_reports_would_block_on_a_full_socket() {
        let l = listen("127.0.0.1:0".parse().unwrap(), 10).unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _peer = l.accept().unwrap(); // never reads
        let chunk = vec![7u8; 1 << 16];
        let mut total = 0usize;
        let err = loop {
            match send_vectored(&s, &[IoSlice::new(&chunk)], false) {
                Ok(n) => total += n,
                Err(e) => break e,
            }
            assert!(total < 1 << 30, "a never-read socket took a GiB");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(total > 0);
    }
}
