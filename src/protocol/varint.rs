//! Variable Byte Integer (MQTT 5.0 §1.5.5, 3.1.1 §2.2.3): the remaining length and a few
//! property values.
//!
//! Seven bits per byte, least significant group first, high bit = "more bytes follow", at most
//! four bytes (max 268 435 455). Decoding is branch-light: one 4-byte little-endian load, the
//! terminating byte found with `trailing_zeros` on the inverted continuation bits, the value
//! assembled with shifts and masks. Encodings longer than four bytes and non-minimal encodings
//! (a trailing `0x00` group, e.g. `0x80 0x00`) are rejected.
//!
//! Pure; no I/O.

use super::error::Error;

/// The largest value a Variable Byte Integer can hold.
pub const MAX: u32 = 268_435_455;

const TOO_LONG: Error = Error::malformed("§1.5.5", "variable byte integer longer than four bytes");
const NOT_MINIMAL: Error = Error::malformed(
    "MQTT-1.5.5-1",
    "variable byte integer not in its minimal encoding",
);

/// Decodes a Variable Byte Integer at the start of `buf`.
///
/// `Ok(None)` when `buf` ends before the integer does; `Ok(Some((value, bytes_used)))` otherwise.
#[inline]
pub fn decode(buf: &[u8]) -> Result<Option<(u32, usize)>, Error> {
    let (x, present) = if buf.len() >= 4 {
        (
            u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
            u32::MAX,
        )
    } else {
        let mut w = [0u8; 4];
        w[..buf.len()].copy_from_slice(buf);
        // Only the bytes actually present may terminate the integer.
        (
            u32::from_le_bytes(w),
            (1u32 << (8 * buf.len())).wrapping_sub(1),
        )
    };
    let stops = !x & 0x8080_8080 & present;
    if stops == 0 {
        return if buf.len() < 4 {
            Ok(None)
        } else {
            Err(TOO_LONG)
        };
    }
    let len = (stops.trailing_zeros() / 8 + 1) as usize;
    let keep = x & (u32::MAX >> (32 - 8 * len as u32));
    let value = (keep & 0x7f)
        | ((keep >> 1) & 0x3f80)
        | ((keep >> 2) & 0x001f_c000)
        | ((keep >> 3) & 0x0fe0_0000);
    if len > 1 && keep >> (8 * (len as u32 - 1)) == 0 {
        return Err(NOT_MINIMAL);
    }
    Ok(Some((value, len)))
}

/// How many bytes `v` takes when encoded (1–4). `v` must not exceed [`MAX`].
#[inline]
pub const fn len(v: u32) -> usize {
    debug_assert!(v <= MAX);
    1 + (v >= 0x80) as usize + (v >= 0x4000) as usize + (v >= 0x20_0000) as usize
}

/// Encodes `v` (at most [`MAX`]) into `out`, returning the number of bytes written.
#[inline]
pub fn encode(v: u32, out: &mut [u8; 4]) -> usize {
    let n = len(v);
    let mut rest = v;
    for (i, byte) in out.iter_mut().enumerate().take(n) {
        let more = if i + 1 < n { 0x80 } else { 0 };
        *byte = (rest & 0x7f) as u8 | more;
        rest >>= 7;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u32) -> Vec<u8> {
        let mut b = [0u8; 4];
        let n = encode(v, &mut b);
        b[..n].to_vec()
    }

    #[test]
    fn spec_table_boundaries() {
        // MQTT 5.0 Table 1-1.
        let cases: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for &(v, bytes) in cases {
            assert_eq!(enc(v), bytes, "encode {v}");
            assert_eq!(len(v), bytes.len());
            assert_eq!(decode(bytes).unwrap(), Some((v, bytes.len())), "decode {v}");
            // Trailing bytes do not change the result.
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(&[0xff, 0x00, 0x80]);
            assert_eq!(decode(&longer).unwrap(), Some((v, bytes.len())));
            // Every strict prefix needs more.
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]).unwrap(), None, "prefix {cut} of {v}");
            }
        }
    }

    #[test]
    fn rejects_five_bytes_and_non_minimal() {
        assert_eq!(
            decode(&[0x80, 0x80, 0x80, 0x80]).unwrap_err().rule,
            "§1.5.5"
        );
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0x01]).unwrap_err().rule,
            "§1.5.5"
        );
        for bad in [
            &[0x80, 0x00][..],
            &[0xff, 0x80, 0x00],
            &[0x80, 0x80, 0x80, 0x00],
        ] {
            assert_eq!(decode(bad).unwrap_err().rule, "MQTT-1.5.5-1", "{bad:?}");
        }
    }

    #[test]
    fn exhaustive_round_trip_sampled() {
        let mut v = 0u32;
        while v <= MAX {
            let b = enc(v);
            assert_eq!(decode(&b).unwrap(), Some((v, b.len())));
            v = v * 3 / 2 + 1;
        }
    }
}
