//! The bench message stamp: who sent a message, its sequence number and when it left.
//!
//! ```text
//!  bytes 0..4    publisher id   u32 little-endian
//!  bytes 4..12   sequence       u64 little-endian, 0, 1, 2, … per publisher
//!  bytes 12..20  sent at        u64 little-endian, nanoseconds since the run's start
//!  bytes 20..    filler up to the requested payload size
//! ```
//!
//! Publishers and subscribers live in one process, so one `Instant` is their common clock and
//! latency is `received at − sent at` with no clock skew. Pure; used on every bench thread.

/// The smallest payload that carries a stamp.
pub const STAMP_LEN: usize = 20;

/// What a received payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp into the first [`STAMP_LEN`] bytes of `payload`.
    #[inline]
    pub fn write(&self, payload: &mut [u8]) {
        payload[0..4].copy_from_slice(&self.publisher.to_le_bytes());
        payload[4..12].copy_from_slice(&self.seq.to_le_bytes());
        payload[12..20].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    /// Reads a stamp; `None` for a payload too short to hold one (not a bench message).
    #[inline]
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let b: &[u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Some(Stamp {
            publisher: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            seq: u64_at(4),
            sent_ns: u64_at(12),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_short_payloads_are_foreign() {
        let s = Stamp {
            publisher: 7,
            seq: u64::MAX - 3,
            sent_ns: 123_456_789,
        };
        let mut p = [0xAAu8; 64];
        s.write(&mut p);
        assert_eq!(Stamp::read(&p), Some(s));
        assert_eq!(p[20], 0xAA, "filler untouched");
        assert_eq!(Stamp::read(&p[..19]), None);
    }
}
