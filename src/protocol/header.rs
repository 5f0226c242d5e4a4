//! The fixed header (MQTT 5.0 §2.1, 3.1.1 §2.2): byte 0 checked against a table, then the
//! remaining length.
//!
//! ```text
//!   bit   7   6   5   4   3   2   1   0
//!  byte 0 | packet type   | flags          |   flags: PUBLISH = DUP QoS QoS RETAIN,
//!  byte 1…| remaining length (1–4 bytes)   |          PUBREL/SUBSCRIBE/UNSUBSCRIBE = 0010,
//!                                                     all others = 0000
//! ```
//!
//! Byte 0 is validated with one load from a 256-entry table that says, per protocol version,
//! whether that byte can start a packet; only a refused byte goes to the (cold) code that works
//! out which rule it broke. The maximum packet size is enforced here, from the header alone,
//! before the body is buffered.
//!
//! Pure; no I/O.

use super::error::Error;
use super::packet::{PacketType, Version};
use super::reason::ReasonCode;
use super::varint;

const V3_1: u8 = 1 << 0;
const V3_1_1: u8 = 1 << 1;
const V5: u8 = 1 << 2;
const ALL: u8 = V3_1 | V3_1_1 | V5;

const fn version_bit(v: Version) -> u8 {
    match v {
        Version::V3_1 => V3_1,
        Version::V3_1_1 => V3_1_1,
        Version::V5 => V5,
    }
}

/// Per byte-0 value, the versions in which it is a valid first byte.
static FIRST_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut ty = 1;
    while ty <= 15 {
        let base = ty << 4;
        match ty {
            3 => {
                let mut flags = 0;
                while flags < 16 {
                    let qos = (flags >> 1) & 3;
                    let dup = flags & 8 != 0;
                    if qos != 3 {
                        // DUP on a QoS 0 PUBLISH is refused from 3.1.1 on.
                        t[base | flags] = if dup && qos == 0 { V3_1 } else { ALL };
                    }
                    flags += 1;
                }
            }
            6 | 8 | 10 => {
                t[base | 0b0010] = ALL;
                // MQTT 3.1 let a client set DUP on these retransmittable packets.
                t[base | 0b1010] = V3_1;
            }
            15 => t[base] = V5,
            _ => t[base] = ALL,
        }
        ty += 1;
    }
    t
};

/// A parsed fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHeader {
    /// Byte 0: type and flags.
    pub byte0: u8,
    /// The remaining length: bytes after the fixed header.
    pub remaining: u32,
    /// Bytes taken by the fixed header (2–5).
    pub header_len: u8,
}

impl FixedHeader {
    /// The packet type (byte 0 was validated, so this is never reserved type 0).
    #[inline]
    pub fn packet_type(&self) -> PacketType {
        match PacketType::from_nibble(self.byte0 >> 4) {
            Some(t) => t,
            None => unreachable!("type 0 is refused by the first-byte table"),
        }
    }

    /// The flags nibble.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.byte0 & 0x0f
    }

    /// The whole frame's length in bytes.
    #[inline]
    pub fn frame_len(&self) -> usize {
        self.header_len as usize + self.remaining as usize
    }
}

/// Parses the fixed header at the start of `buf`.
///
/// `Ok(None)` when the header is not complete yet. A frame longer than `max_packet_size` bytes
/// (whole frame, as MQTT 5.0 §3.1.2.11.4 counts it) is refused as soon as its length is known.
#[inline]
pub fn parse(
    buf: &[u8],
    version: Version,
    max_packet_size: u32,
) -> Result<Option<FixedHeader>, Error> {
    let Some(&byte0) = buf.first() else {
        return Ok(None);
    };
    if FIRST_BYTE[byte0 as usize] & version_bit(version) == 0 {
        return Err(first_byte_error(byte0, version));
    }
    let Some((remaining, n)) = varint::decode(&buf[1..])? else {
        return Ok(None);
    };
    let header_len = 1 + n as u8;
    if remaining as u64 + header_len as u64 > max_packet_size as u64 {
        return Err(Error::with_reason(
            "MQTT-3.2.2-15",
            "packet larger than the maximum packet size",
            ReasonCode::PACKET_TOO_LARGE,
        ));
    }
    Ok(Some(FixedHeader {
        byte0,
        remaining,
        header_len,
    }))
}

/// Which rule a refused first byte breaks.
#[cold]
fn first_byte_error(byte0: u8, version: Version) -> Error {
    let ty = byte0 >> 4;
    let flags = byte0 & 0x0f;
    match ty {
        0 => Error::malformed("§2.1.2", "reserved control packet type 0"),
        15 if version == Version::V5 => {
            Error::malformed("MQTT-3.15.1-1", "AUTH reserved flag bits not 0")
        }
        15 => Error::malformed(
            "3.1.1 §2.2.1",
            "AUTH (type 15) does not exist before MQTT 5.0",
        ),
        3 if (flags >> 1) & 3 == 3 => Error::malformed("MQTT-3.3.1-4", "PUBLISH with QoS 3"),
        3 => Error::malformed("MQTT-3.3.1-2", "DUP flag set on a QoS 0 PUBLISH"),
        _ => Error::malformed(
            "MQTT-2.1.3-1",
            "reserved fixed-header flag bits not as specified",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_table() {
        let ok = |b: u8, v: Version| FIRST_BYTE[b as usize] & version_bit(v) != 0;
        for v in [Version::V3_1, Version::V3_1_1, Version::V5] {
            for b in [
                0x10, 0x20, 0x30, 0x31, 0x32, 0x3b, 0x3d, 0x40, 0x50, 0x62, 0x70, 0x82,
            ] {
                assert!(ok(b, v), "{b:#04x} {v:?}");
            }
            for b in [0x90, 0xa2, 0xb0, 0xc0, 0xd0, 0xe0] {
                assert!(ok(b, v), "{b:#04x} {v:?}");
            }
            for b in [
                0x00, 0x0f, 0x11, 0x36, 0x37, 0x3e, 0x3f, 0x41, 0x60, 0x63, 0x80, 0xc1,
            ] {
                assert!(!ok(b, v), "{b:#04x} {v:?}");
            }
        }
        assert!(ok(0xf0, Version::V5));
        assert!(!ok(0xf0, Version::V3_1_1));
        assert!(!ok(0xf1, Version::V5));
        assert!(ok(0x38, Version::V3_1) && !ok(0x38, Version::V3_1_1) && !ok(0x38, Version::V5));
        assert!(ok(0x8a, Version::V3_1) && !ok(0x8a, Version::V3_1_1));
        // 14 fixed-flag types plus 16 PUBLISH flag values less 4 with QoS 3 and 2 with DUP on QoS 0.
        assert_eq!(
            FIRST_BYTE.iter().filter(|&&b| b & V5 != 0).count(),
            14 + 16 - 4 - 2
        );
    }

    #[test]
    fn header_needs_more_and_limits() {
        assert_eq!(parse(&[], Version::V5, u32::MAX).unwrap(), None);
        assert_eq!(parse(&[0x30], Version::V5, u32::MAX).unwrap(), None);
        assert_eq!(parse(&[0x30, 0x80], Version::V5, u32::MAX).unwrap(), None);
        let h = parse(&[0x30, 0x80, 0x01], Version::V5, u32::MAX)
            .unwrap()
            .unwrap();
        assert_eq!((h.remaining, h.header_len, h.frame_len()), (128, 3, 131));
        assert!(
            parse(&[0x30, 0x80, 0x01], Version::V5, 131)
                .unwrap()
                .is_some()
        );
        let e = parse(&[0x30, 0x80, 0x01], Version::V5, 130).unwrap_err();
        assert_eq!(e.reason, ReasonCode::PACKET_TOO_LARGE);
        assert_eq!(
            parse(&[0x36, 0x00], Version::V5, 100).unwrap_err().rule,
            "MQTT-3.3.1-4"
        );
        assert_eq!(
            parse(&[0x60, 0x02], Version::V5, 100).unwrap_err().rule,
            "MQTT-2.1.3-1"
        );
        assert_eq!(
            parse(&[0x00, 0x00], Version::V5, 100).unwrap_err().rule,
            "§2.1.2"
        );
    }
}
