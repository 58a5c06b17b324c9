//! A small, fast pseudo-random source for message identities, serial starts and timer jitter.
//!
//! libchirp uses `rand()` for the same purpose; identities need to be unique, not secret.
//! Each thread runs its own xoshiro256** generator seeded once from the operating system
//! (`getrandom`), so creating a message costs no system call.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<[u64; 4]> = Cell::new(seed());
}

fn seed() -> [u64; 4] {
    let mut bytes = [0u8; 32];
    if getrandom::getrandom(&mut bytes).is_err() {
        // Extremely unlikely; fall back to time and address entropy rather than panic.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let addr = &bytes as *const _ as usize as u128;
        bytes[..16].copy_from_slice(&(t ^ (addr << 64)).to_le_bytes());
        bytes[16..].copy_from_slice(&(t.rotate_left(64) ^ addr).to_le_bytes());
    }
    let mut s = [0u64; 4];
    for (i, chunk) in bytes.chunks_exact(8).enumerate() {
        s[i] = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    if s == [0; 4] {
        s[0] = 0x9E37_79B9_7F4A_7C15;
    }
    s
}

/// Next 64 random bits from this thread's generator.
pub(crate) fn next_u64() -> u64 {
    STATE.with(|cell| {
        let mut s = cell.get();
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        cell.set(s);
        result
    })
}

/// 16 random bytes.
pub(crate) fn bytes16() -> [u8; 16] {
    let a = next_u64().to_le_bytes();
    let b = next_u64().to_le_bytes();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a);
    out[8..].copy_from_slice(&b);
    out
}

/// A random value in `[low, high)`; returns `low` when the range is empty.
pub(crate) fn range(low: u64, high: u64) -> u64 {
    if high <= low {
        return low;
    }
    low + next_u64() % (high - low)
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
    }
}
