//! Random numbers for message identities, serial starts and timer jitter.
//!
//! libchirp uses `rand()` for the same purpose: identities need to be unique, not secret.
//! Each thread has its own `fastrand` generator, seeded once from the operating system
//! (`getrandom`), so creating a message costs no system call and no lock. (`fastrand`'s own
//! thread-local generator seeds from the clock and the thread id, which two processes
//! started together can share.)

use std::cell::RefCell;

thread_local! {
    static RNG: RefCell<fastrand::Rng> = RefCell::new(fastrand::Rng::with_seed(os_seed()));
}

fn os_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        // Practically unreachable on Linux; fall back to fastrand's own (clock and thread
        // based) seeding rather than fail message creation.
        Err(_) => fastrand::u64(..),
    }
}

fn with<T>(f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// A random 64-bit value (a seed for a protocol core's own generator).
pub(crate) fn u64() -> u64 {
    with(|r| r.u64(..))
}

/// 16 random bytes.
pub(crate) fn bytes16() -> [u8; 16] {
    with(|r| r.u128(..)).to_le_bytes()
}

/// A random value in `[low, high)`; returns `low` when the range is empty.
pub(crate) fn range(low: u64, high: u64) -> u64 {
    if high <= low {
        return low;
    }
    with(|r| r.u64(low..high))
}

#[cfg(test)]
mod tests {
    #[test]
    fn identities_differ_and_range_is_respected() {
        let a = super::bytes16();
        let b = super::bytes16();
        assert_ne!(a, b);
        for _ in 0..1000 {
            let v = super::range(50, 550);
            assert!((50..550).contains(&v));
        }
        assert_eq!(super::range(5, 5), 5);
        assert_eq!(super::range(6, 5), 6);
    }

    #[test]
    fn threads_get_different_streams() {
        let a = std::thread::spawn(super::bytes16).join().unwrap();
        let b = std::thread::spawn(super::bytes16).join().unwrap();
        assert_ne!(a, b);
    }
}
