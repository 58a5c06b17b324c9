//! Property tests for the wire codec with arbitrary bytes (issue 8, item 1): decoding and
//! validating never panic, the size check never wraps, and the classification follows
//! docs/PROTOCOL.md §1.3. 20,000 cases each in a plain `cargo test`;
//! CI sets CHIRP_FUZZ_CASES=100000.
use libchirp::wire::{
    FrameKind, Handshake, Preamble, PreambleError, HANDSHAKE_SIZE, PREAMBLE_SIZE,
};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("CHIRP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_18_bytes_are_a_handshake_and_round_trip(bytes in prop::array::uniform18(any::<u8>())) {
        let hs = Handshake::decode(&bytes);
        prop_assert_eq!(hs.encode(), bytes);
    }

    #[test]
    fn any_27_bytes_decode_and_validate_without_panic(
        bytes in prop::collection::vec(any::<u8>(), PREAMBLE_SIZE),
        max in prop_oneof![Just(0u64), Just(100u64), Just(100 * 1024 * 1024u64), any::<u32>().prop_map(u64::from)],
    ) {
        let raw: [u8; PREAMBLE_SIZE] = bytes.clone().try_into().unwrap();
        let p = Preamble::decode(&raw);
        prop_assert_eq!(p.encode().to_vec(), bytes);
        let size = u64::from(p.header_len) + u64::from(p.data_len);
        match p.validate(max) {
            Ok(FrameKind::Data { req_ack }) => {
                prop_assert!(size <= max, "accepted {} > {}", size, max);
                prop_assert_eq!(req_ack, p.kind_bits & 1 != 0);
                prop_assert_eq!(p.kind_bits & 0x06, 0);
            }
            Ok(FrameKind::Ack) | Ok(FrameKind::Noop) => {
                prop_assert_eq!(size, 0);
                prop_assert_eq!(p.kind_bits & 1, 0);
            }
            Err(PreambleError::TooLarge { size: s, max: m }) => {
                prop_assert_eq!((s, m), (size, max));
                prop_assert!(s > m);
            }
            Err(PreambleError::ControlWithPayload) => prop_assert!(size > 0),
            Err(PreambleError::ControlWithReqAck) => prop_assert!(p.kind_bits & 1 != 0),
            Err(other) => prop_assert!(false, "an error this test does not know: {other:?}"),
        }
    }

    /// A byte stream split into frames the way the reader does it: only sizes that passed
    /// validation are ever used to take bytes, so a hostile length cannot make it allocate
    /// or wait for more than the maximum message size.
    #[test]
    fn framing_arbitrary_streams_is_bounded(stream in prop::collection::vec(any::<u8>(), 0..600), max in 0u64..300) {
        let mut rest = &stream[..];
        if rest.len() < HANDSHAKE_SIZE {
            return Ok(());
        }
        let _ = Handshake::decode(rest[..HANDSHAKE_SIZE].try_into().unwrap());
        rest = &rest[HANDSHAKE_SIZE..];
        while rest.len() >= PREAMBLE_SIZE {
            let p = Preamble::decode(rest[..PREAMBLE_SIZE].try_into().unwrap());
            match p.validate(max) {
                Ok(_) => {
                    let need = p.payload_len();
                    prop_assert!(need <= max);
                    let have = (rest.len() - PREAMBLE_SIZE) as u64;
                    if have < need {
                        break; // the reader would wait (with a deadline) for the rest
                    }
                    rest = &rest[PREAMBLE_SIZE + need as usize..];
                }
                Err(_) => break, // the reader closes the connection
            }
        }
    }
}
