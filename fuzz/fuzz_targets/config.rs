//! Config validation with arbitrary values: it never panics, and what it accepts is within
//! the documented ranges (the effective values are what a node would run with).
#![no_main]
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libchirp::Config;
use libfuzzer_sys::fuzz_target;

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fuzz_target!(|input: &[u8]| {
    let mut d = input;
    let mut c = Config::default();
    let millis = |b: [u8; 8]| Duration::from_millis(u64::from_be_bytes(b) % 10_000_000_000);
    c.timeout = millis(take(&mut d));
    c.reuse_time = millis(take(&mut d));
    c.port = u16::from_be_bytes(take(&mut d));
    c.backlog = take::<1>(&mut d)[0];
    c.max_slots = take::<1>(&mut d)[0];
    let flags = take::<1>(&mut d)[0];
    c.synchronous = flags & 1 != 0;
    c.disable_encryption = flags & 2 != 0;
    c.always_encrypt = flags & 4 != 0;
    c.auto_release = flags & 8 != 0;
    if flags & 16 != 0 {
        c.bind_v4 = None;
    } else {
        c.bind_v4 = Some(Ipv4Addr::from(take::<4>(&mut d)));
    }
    if flags & 32 != 0 {
        c.bind_v6 = None;
    } else {
        c.bind_v6 = Some(Ipv6Addr::from(take::<16>(&mut d)));
    }
    if flags & 64 != 0 {
        c.cert_chain = Some("/nonexistent/chain.pem".into());
        c.dh_params = Some("/nonexistent/dh.pem".into());
    }
    c.buffer_size = u32::from_be_bytes(take(&mut d));
    c.max_msg_size = u32::from_be_bytes(take(&mut d));
    c.pool_threads = usize::from(u16::from_be_bytes(take(&mut d)));
    c.max_connections = u32::from_be_bytes(take(&mut d)) as usize;
    c.max_handshaking = u32::from_be_bytes(take(&mut d)) as usize;
    c.max_queued = u32::from_be_bytes(take(&mut d)) as usize;
    c.cert_expiry_warning = millis(take(&mut d));
    if let Ok(e) = c.validate() {
        assert!(
            e.timeout() >= Duration::from_millis(100) && e.timeout() <= Duration::from_secs(1200)
        );
        assert!(e.reuse_time() >= e.timeout() * 3);
        assert!(e.max_slots() >= 1 && e.max_slots() <= 32);
        assert!(!c.synchronous || e.max_slots() == 1);
        assert!(e.buffer_size() > 0);
        assert!(e.max_connections() > 0 && e.max_queued() > 0);
        assert!(c.port == 0 || c.port > 1024);
    }
});
