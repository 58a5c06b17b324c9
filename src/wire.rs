//! The libchirp 1.2.1 wire format: the 18-byte connection handshake and the 27-byte message
//! preamble. Pure encoding and decoding, no I/O (see `PROTOCOL.md` §1).
//!
//! **Outside the semver promise.** This module is public for the crate's fuzzers, tests and
//! protocol tools (a raw peer, a decoder); its items may change in any release. Programs
//! that send and receive messages never need it.
//!
//! All integers are big-endian. A preamble is followed by `header_len` header bytes and then
//! `data_len` data bytes; nothing separates frames.

use byteorder::{BigEndian, ByteOrder};

use crate::message::Identity;

/// Size of the connection handshake: advertised port (u16) + node identity (16 bytes).
pub const HANDSHAKE_SIZE: usize = 18;
/// Size of the message preamble: identity, serial, data length, header length, type.
pub const PREAMBLE_SIZE: usize = 27;

/// Type bit: the sender wants an ACK when the receiver releases the message.
pub const TYPE_REQ_ACK: u8 = 0x01;
/// Type bit: acknowledgement of the message with the same identity.
pub const TYPE_ACK: u8 = 0x02;
/// Type bit: keep-alive probe, discarded by the receiver.
pub const TYPE_NOOP: u8 = 0x04;

/// The handshake each side sends first on a connection (inside TLS when encrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// The port the sending node listens on (its "public" port).
    pub port: u16,
    /// The sending node's identity.
    pub identity: Identity,
}

impl Handshake {
    /// Encodes the handshake into its 18 wire bytes.
    pub fn encode(&self) -> [u8; HANDSHAKE_SIZE] {
        let mut out = [0u8; HANDSHAKE_SIZE];
        BigEndian::write_u16(&mut out[0..2], self.port);
        out[2..18].copy_from_slice(self.identity.as_bytes());
        out
    }

    /// Decodes a handshake. Any 18 bytes are a valid handshake (libchirp does not validate it).
    pub fn decode(bytes: &[u8; HANDSHAKE_SIZE]) -> Handshake {
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[2..18]);
        Handshake {
            port: BigEndian::read_u16(&bytes[0..2]),
            identity: Identity::from_bytes(id),
        }
    }
}

/// What kind of frame a validated preamble announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A data message; `req_ack` is true when the sender asked for an ACK on release.
    Data {
        /// Whether the sender set the REQ_ACK bit.
        req_ack: bool,
    },
    /// An acknowledgement (no payload).
    Ack,
    /// A keep-alive probe (no payload).
    Noop,
}

/// The 27-byte preamble of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Identity of the message (for an ACK: of the acknowledged message).
    pub identity: Identity,
    /// The sender's per-remote frame counter.
    pub serial: u32,
    /// Length of the data that follows the header.
    pub data_len: u32,
    /// Length of the header that follows the preamble.
    pub header_len: u16,
    /// The type bit-field.
    pub kind_bits: u8,
}

/// Why a preamble was refused (the crate's [`FrameError`](crate::FrameError)).
pub use crate::error::FrameError as PreambleError;

impl Preamble {
    /// Encodes the preamble into its 27 wire bytes (field order: identity, serial, data
    /// length, header length, type).
    pub fn encode(&self) -> [u8; PREAMBLE_SIZE] {
        let mut out = [0u8; PREAMBLE_SIZE];
        self.encode_into(&mut out);
        out
    }

    /// Encodes the preamble into the first 27 bytes of `out`.
    ///
    /// # Panics
    /// Panics if `out` is shorter than [`PREAMBLE_SIZE`].
    pub fn encode_into(&self, out: &mut [u8]) {
        out[0..16].copy_from_slice(self.identity.as_bytes());
        BigEndian::write_u32(&mut out[16..20], self.serial);
        BigEndian::write_u32(&mut out[20..24], self.data_len);
        BigEndian::write_u16(&mut out[24..26], self.header_len);
        out[26] = self.kind_bits;
    }

    /// Decodes 27 bytes into a preamble without validating it.
    pub fn decode(bytes: &[u8; PREAMBLE_SIZE]) -> Preamble {
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[0..16]);
        Preamble {
            identity: Identity::from_bytes(id),
            serial: BigEndian::read_u32(&bytes[16..20]),
            data_len: BigEndian::read_u32(&bytes[20..24]),
            header_len: BigEndian::read_u16(&bytes[24..26]),
            kind_bits: bytes[26],
        }
    }

    /// Total payload size (header + data), computed without overflow.
    pub fn payload_len(&self) -> u64 {
        u64::from(self.header_len) + u64::from(self.data_len)
    }

    /// Validates the preamble as libchirp does (PROTOCOL.md §1.3), but with the size sum in
    /// u64 so that it cannot wrap, and classifies it. NOOP is checked before ACK; unknown
    /// type bits are ignored.
    pub fn validate(&self, max_msg_size: u64) -> Result<FrameKind, PreambleError> {
        let size = self.payload_len();
        if size > max_msg_size {
            return Err(PreambleError::TooLarge {
                size,
                max: max_msg_size,
            });
        }
        let control = self.kind_bits & (TYPE_ACK | TYPE_NOOP) != 0;
        if control {
            if size != 0 {
                return Err(PreambleError::ControlWithPayload);
            }
            if self.kind_bits & TYPE_REQ_ACK != 0 {
                return Err(PreambleError::ControlWithReqAck);
            }
            if self.kind_bits & TYPE_NOOP != 0 {
                return Ok(FrameKind::Noop);
            }
            return Ok(FrameKind::Ack);
        }
        Ok(FrameKind::Data {
            req_ack: self.kind_bits & TYPE_REQ_ACK != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn handshake_golden_bytes() {
        // PROTOCOL.md Appendix A: a node on port 3001 sends 0bb9 + its identity.
        let hs = Handshake {
            port: 3001,
            identity: Identity::from_bytes([0xAB; 16]),
        };
        let bytes = hs.encode();
        assert_eq!(bytes.to_vec(), hex("0bb9 abababababababababababababababab"));
        assert_eq!(Handshake::decode(&bytes), hs);
    }

    #[test]
    fn ack_golden_bytes() {
        // PROTOCOL.md Appendix A: ACK for identity 42..42 with serial 711b7f79.
        let p = Preamble {
            identity: Identity::from_bytes([0x42; 16]),
            serial: 0x711b_7f79,
            data_len: 0,
            header_len: 0,
            kind_bits: TYPE_ACK,
        };
        let bytes = p.encode();
        assert_eq!(
            bytes.to_vec(),
            hex("42424242424242424242424242424242 711b7f79 00000000 0000 02")
        );
        assert_eq!(Preamble::decode(&bytes), p);
        assert_eq!(p.validate(100), Ok(FrameKind::Ack));
    }

    #[test]
    fn data_preamble_field_order_is_identity_serial_datalen_headerlen_type() {
        let p = Preamble {
            identity: Identity::from_bytes([1; 16]),
            serial: 0x0102_0304,
            data_len: 0x0A0B_0C0D,
            header_len: 0x0E0F,
            kind_bits: TYPE_REQ_ACK,
        };
        assert_eq!(
            p.encode().to_vec(),
            hex("01010101010101010101010101010101 01020304 0a0b0c0d 0e0f 01")
        );
    }

    #[test]
    fn validation_rules() {
        let base = Preamble {
            identity: Identity::zero(),
            serial: 1,
            data_len: 0,
            header_len: 0,
            kind_bits: 0,
        };
        assert_eq!(base.validate(0), Ok(FrameKind::Data { req_ack: false }));
        let sync = Preamble {
            kind_bits: TYPE_REQ_ACK,
            data_len: 10,
            ..base
        };
        assert_eq!(sync.validate(10), Ok(FrameKind::Data { req_ack: true }));
        assert!(matches!(
            sync.validate(9),
            Err(PreambleError::TooLarge { size: 10, max: 9 })
        ));
        // The u32 wrap that C libchirp misses: 1 + 0xFFFFFFFF.
        let wrap = Preamble {
            header_len: 1,
            data_len: u32::MAX,
            ..base
        };
        assert_eq!(
            wrap.validate(100 * 1024 * 1024),
            Err(PreambleError::TooLarge {
                size: 1u64 << 32,
                max: 100 * 1024 * 1024
            })
        );
        let ack_with_data = Preamble {
            kind_bits: TYPE_ACK,
            data_len: 1,
            ..base
        };
        assert_eq!(
            ack_with_data.validate(100),
            Err(PreambleError::ControlWithPayload)
        );
        let noop_req_ack = Preamble {
            kind_bits: TYPE_NOOP | TYPE_REQ_ACK,
            ..base
        };
        assert_eq!(
            noop_req_ack.validate(100),
            Err(PreambleError::ControlWithReqAck)
        );
        // NOOP is checked before ACK, unknown bits are ignored.
        let both = Preamble {
            kind_bits: TYPE_NOOP | TYPE_ACK | 0x80,
            ..base
        };
        assert_eq!(both.validate(0), Ok(FrameKind::Noop));
        let unknown = Preamble {
            kind_bits: 0xF8,
            ..base
        };
        assert_eq!(unknown.validate(0), Ok(FrameKind::Data { req_ack: false }));
    }
}
