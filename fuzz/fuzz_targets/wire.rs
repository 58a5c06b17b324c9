//! The handshake and preamble decoders with arbitrary bytes: decoding never panics, what
//! decodes encodes back to the same bytes, and validation accepts exactly the frames the
//! protocol allows (a payload no larger than the limit, control frames without payload or
//! request for an ACK).
#![no_main]
use libchirp::wire::{FrameKind, Handshake, Preamble, HANDSHAKE_SIZE, PREAMBLE_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(hs) = data.get(..HANDSHAKE_SIZE) {
        let bytes: [u8; HANDSHAKE_SIZE] = hs.try_into().unwrap();
        assert_eq!(Handshake::decode(&bytes).encode(), bytes);
    }
    // The limit from the first four bytes, then every whole preamble that follows.
    let Some((max, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max = u64::from(u32::from_be_bytes(*max));
    for chunk in rest.chunks_exact(PREAMBLE_SIZE) {
        let bytes: [u8; PREAMBLE_SIZE] = chunk.try_into().unwrap();
        let p = Preamble::decode(&bytes);
        assert_eq!(p.encode(), bytes);
        let size = u64::from(p.header_len) + u64::from(p.data_len);
        match p.validate(max) {
            Ok(FrameKind::Data { req_ack }) => {
                assert!(size <= max);
                assert_eq!(req_ack, p.kind_bits & 1 != 0);
            }
            Ok(FrameKind::Ack) | Ok(FrameKind::Noop) => {
                assert_eq!(size, 0);
                assert_eq!(p.kind_bits & 1, 0);
            }
            Err(_) => {}
        }
    }
});
