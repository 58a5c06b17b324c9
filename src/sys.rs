//! The few socket operations `std::net` does not offer: IPv6-only listeners with a chosen
//! backlog, TCP keep-alive, a connect that can be abandoned when the node closes, and
//! waking a thread blocked in `accept`.

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn new_socket(addr: &SocketAddr) -> io::Result<RawFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain system call.
    cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Binds and listens on `addr` with the given backlog; IPv6 sockets are IPv6-only so that
/// an IPv4 listener can share the port (as libchirp does).
pub(crate) fn listen(addr: SocketAddr, backlog: u8) -> io::Result<TcpListener> {
    let fd = new_socket(&addr)?;
    // SAFETY: fd is a fresh socket we own; the TcpListener closes it on drop.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = sockaddr(&addr);
    // SAFETY: storage/len come from sockaddr() for this address family.
    cvt(unsafe { libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) })?;
    // SAFETY: plain system call on our socket.
    cvt(unsafe { libc::listen(fd, libc::c_int::from(backlog)) })?;
    Ok(listener)
}

/// Wakes every thread blocked in `accept` on this listener (Linux returns EINVAL to them).
pub(crate) fn shutdown_listener(fd: RawFd) {
    // SAFETY: shutting down a socket we still own; errors are irrelevant here.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// A TCP socket for `addr` that is not connected yet. Having the socket before connecting
/// lets the node shut it down from another thread.
pub(crate) fn unconnected(addr: &SocketAddr) -> io::Result<TcpStream> {
    let fd = new_socket(addr)?;
    // SAFETY: fd is a fresh socket we own.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

/// Connects `stream` to `addr`, giving up at `deadline` or as soon as `abandon` is set
/// (checked at least every 50 ms). Leaves the socket in blocking mode.
pub(crate) fn connect(
    stream: &TcpStream,
    addr: &SocketAddr,
    deadline: Instant,
    abandon: &AtomicBool,
) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    stream.set_nonblocking(true)?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage/len come from sockaddr() for this family.
    let r = unsafe { libc::connect(fd, &storage as *const _ as *const libc::sockaddr, len) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
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
            let slice = (deadline - now).min(Duration::from_millis(50));
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, slice.as_millis().max(1) as libc::c_int) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n > 0 {
                break;
            }
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        // A refused connect can also surface only through getpeername.
        stream.peer_addr()?;
    }
    stream.set_nonblocking(false)?;
    Ok(())
}

/// TCP_NODELAY and keep-alive with a 60 s idle delay, as libchirp sets on every connection.
pub(crate) fn configure_stream(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let fd = stream.as_raw_fd();
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60)?;
    Ok(())
}
