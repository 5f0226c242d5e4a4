//! Codec errors: what went wrong, which spec statement it breaks, and what to answer.
//!
//! Every error names the normative statement it enforces (`[MQTT-3.3.2-2]`) or, where the
//! specification has no numbered statement, the section (`§2.2.2`). Statement numbers follow
//! MQTT 5.0 where the rule exists there and MQTT 3.1.1 (prefixed `3.1.1 `) where it exists only
//! there. The error also carries the MQTT 5.0 reason code a server sends in DISCONNECT or CONNACK;
//! a 3.1 / 3.1.1 peer is simply disconnected.
//!
//! Runs on whichever shard owns the connection; no I/O.

use core::fmt;

use super::reason::ReasonCode;

/// A packet the codec refuses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// The statement broken, e.g. `"MQTT-3.3.2-2"` or `"§2.2.2"`.
    pub rule: &'static str,
    /// What was wrong, in a few words.
    pub what: &'static str,
    /// The reason code to send to an MQTT 5.0 peer.
    pub reason: ReasonCode,
}

impl Error {
    /// A malformed packet (0x81): the bytes cannot be parsed as the spec describes.
    pub const fn malformed(rule: &'static str, what: &'static str) -> Self {
        Self {
            rule,
            what,
            reason: ReasonCode::MALFORMED_PACKET,
        }
    }

    /// A protocol error (0x82): well-formed bytes that break a rule of the protocol.
    pub const fn protocol(rule: &'static str, what: &'static str) -> Self {
        Self {
            rule,
            what,
            reason: ReasonCode::PROTOCOL_ERROR,
        }
    }

    /// An error with an explicit reason code.
    pub const fn with_reason(rule: &'static str, what: &'static str, reason: ReasonCode) -> Self {
        Self { rule, what, reason }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ({})", self.what, self.rule, self.reason)
    }
}

impl std::error::Error for Error {}

/// A packet the encoder cannot represent on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded packet would exceed the 268 435 455-byte remaining-length limit.
    PacketTooLarge,
    /// A string or binary field exceeds 65 535 bytes.
    FieldTooLong,
    /// A property is set that this packet type may not carry (MQTT 5.0 §2.2.2.2).
    PropertyNotAllowed(u8),
    /// A packet identifier of 0 on a packet that needs one.
    ZeroPacketId,
    /// The packet type does not exist in the chosen protocol version (AUTH before 5.0).
    NotInVersion,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PacketTooLarge => f.write_str("packet exceeds the maximum remaining length"),
            Self::FieldTooLong => f.write_str("string or binary field exceeds 65535 bytes"),
            Self::PropertyNotAllowed(id) => {
                write!(f, "property 0x{id:02X} is not allowed in this packet")
            }
            Self::ZeroPacketId => f.write_str("packet identifier 0 where one is required"),
            Self::NotInVersion => {
                f.write_str("packet type does not exist in this protocol version")
            }
        }
    }
}

impl std::error::Error for EncodeError {}
