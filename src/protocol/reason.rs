//! MQTT 5.0 reason codes (§2.4), which packets may carry each, and the 3.1 / 3.1.1 mapping.
//!
//! A reason code is a byte whose meaning depends on the packet: 0x00 is "Success" in PUBACK,
//! "Normal disconnection" in DISCONNECT and "Granted QoS 0" in SUBACK. [`ReasonCode`] is
//! therefore a transparent byte with named constants (several names may share a value), and
//! [`ReasonCode::valid_in`] answers whether a code is one the spec lists for a packet.
//!
//! For 3.1 / 3.1.1 the codec speaks the same type: CONNACK return codes and SUBACK return codes
//! are mapped to and from their 5.0 equivalents (see [`ReasonCode::to_v3_connack`]).
//!
//! Pure data; no I/O.

use core::fmt;

use super::packet::PacketType;

/// A reason code byte (MQTT 5.0 §2.4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReasonCode(pub u8);

macro_rules! reason_codes {
    ($( $name:ident = $value:literal, $text:literal, [$($pkt:ident),*] ;)*) => {
        impl ReasonCode {
            $( #[doc = $text] pub const $name: ReasonCode = ReasonCode($value); )*
        }

        /// For each reason code byte, the set of packet types (bit = packet type number) in
        /// which MQTT 5.0 §2.4 Table 2-6 lists it.
        static VALID_IN: [u16; 256] = {
            let mut t = [0u16; 256];
            $( t[$value as usize] |= 0 $( | (1u16 << (PacketType::$pkt as u8)) )*; )*
            t
        };

        /// The spec's name for each code byte; the first name listed for a value wins.
        static NAMES: [&str; 256] = {
            let mut t = ["Unknown reason code"; 256];
            let mut named = [false; 256];
            $( if !named[$value as usize] { t[$value as usize] = $text; named[$value as usize] = true; } )*
            t
        };
    };
}

reason_codes! {
    SUCCESS = 0x00, "Success", [ConnAck, PubAck, PubRec, PubRel, PubComp, UnsubAck, Auth];
    NORMAL_DISCONNECTION = 0x00, "Normal disconnection", [Disconnect];
    GRANTED_QOS_0 = 0x00, "Granted QoS 0", [SubAck];
    GRANTED_QOS_1 = 0x01, "Granted QoS 1", [SubAck];
    GRANTED_QOS_2 = 0x02, "Granted QoS 2", [SubAck];
    DISCONNECT_WITH_WILL_MESSAGE = 0x04, "Disconnect with Will Message", [Disconnect];
    NO_MATCHING_SUBSCRIBERS = 0x10, "No matching subscribers", [PubAck, PubRec];
    NO_SUBSCRIPTION_EXISTED = 0x11, "No subscription existed", [UnsubAck];
    CONTINUE_AUTHENTICATION = 0x18, "Continue authentication", [Auth];
    RE_AUTHENTICATE = 0x19, "Re-authenticate", [Auth];
    UNSPECIFIED_ERROR = 0x80, "Unspecified error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    MALFORMED_PACKET = 0x81, "Malformed Packet", [ConnAck, Disconnect];
    PROTOCOL_ERROR = 0x82, "Protocol Error", [ConnAck, Disconnect];
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83, "Implementation specific error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    UNSUPPORTED_PROTOCOL_VERSION = 0x84, "Unsupported Protocol Version", [ConnAck];
    CLIENT_IDENTIFIER_NOT_VALID = 0x85, "Client Identifier not valid", [ConnAck];
    BAD_USER_NAME_OR_PASSWORD = 0x86, "Bad User Name or Password", [ConnAck];
    NOT_AUTHORIZED = 0x87, "Not authorized", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    SERVER_UNAVAILABLE = 0x88, "Server unavailable", [ConnAck];
    SERVER_BUSY = 0x89, "Server busy", [ConnAck, Disconnect];
    BANNED = 0x8A, "Banned", [ConnAck];
    SERVER_SHUTTING_DOWN = 0x8B, "Server shutting down", [Disconnect];
    BAD_AUTHENTICATION_METHOD = 0x8C, "Bad authentication method", [ConnAck, Disconnect];
    KEEP_ALIVE_TIMEOUT = 0x8D, "Keep Alive timeout", [Disconnect];
    SESSION_TAKEN_OVER = 0x8E, "Session taken over", [Disconnect];
    TOPIC_FILTER_INVALID = 0x8F, "Topic Filter invalid", [SubAck, UnsubAck, Disconnect];
    TOPIC_NAME_INVALID = 0x90, "Topic Name invalid", [ConnAck, PubAck, PubRec, Disconnect];
    PACKET_IDENTIFIER_IN_USE = 0x91, "Packet Identifier in use", [PubAck, PubRec, SubAck, UnsubAck];
    PACKET_IDENTIFIER_NOT_FOUND = 0x92, "Packet Identifier not found", [PubRel, PubComp];
    RECEIVE_MAXIMUM_EXCEEDED = 0x93, "Receive Maximum exceeded", [Disconnect];
    TOPIC_ALIAS_INVALID = 0x94, "Topic Alias invalid", [Disconnect];
    PACKET_TOO_LARGE = 0x95, "Packet too large", [ConnAck, Disconnect];
    MESSAGE_RATE_TOO_HIGH = 0x96, "Message rate too high", [Disconnect];
    QUOTA_EXCEEDED = 0x97, "Quota exceeded", [ConnAck, PubAck, PubRec, SubAck, Disconnect];
    ADMINISTRATIVE_ACTION = 0x98, "Administrative action", [Disconnect];
    PAYLOAD_FORMAT_INVALID = 0x99, "Payload format invalid", [ConnAck, PubAck, PubRec, Disconnect];
    RETAIN_NOT_SUPPORTED = 0x9A, "Retain not supported", [ConnAck, Disconnect];
    QOS_NOT_SUPPORTED = 0x9B, "QoS not supported", [ConnAck, Disconnect];
    USE_ANOTHER_SERVER = 0x9C, "Use another server", [ConnAck, Disconnect];
    SERVER_MOVED = 0x9D, "Server moved", [ConnAck, Disconnect];
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E, "Shared Subscriptions not supported", [SubAck, Disconnect];
    CONNECTION_RATE_EXCEEDED = 0x9F, "Connection rate exceeded", [ConnAck, Disconnect];
    MAXIMUM_CONNECT_TIME = 0xA0, "Maximum connect time", [Disconnect];
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1, "Subscription Identifiers not supported", [SubAck, Disconnect];
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2, "Wildcard Subscriptions not supported", [SubAck, Disconnect];
}

impl ReasonCode {
    /// Whether MQTT 5.0 lists this code for packets of type `packet`.
    #[inline]
    pub fn valid_in(self, packet: PacketType) -> bool {
        VALID_IN[self.0 as usize] & (1u16 << packet as u8) != 0
    }

    /// Whether the code reports success (values below 0x80, §2.4).
    #[inline]
    pub const fn is_success(self) -> bool {
        self.0 < 0x80
    }

    /// The spec's name for this code.
    pub fn name(self) -> &'static str {
        NAMES[self.0 as usize]
    }

    /// The 3.1 / 3.1.1 CONNACK return code (§3.2.2.3 of 3.1.1) closest to this 5.0 code.
    pub fn to_v3_connack(self) -> u8 {
        match self.0 {
            0x00 => 0,
            0x84 => 1,
            0x85 => 2,
            0x86 => 4,
            0x87 | 0x8A | 0x8C => 5,
            _ => 3,
        }
    }

    /// The 5.0 code for a 3.1 / 3.1.1 CONNACK return code, `None` for reserved values.
    pub fn from_v3_connack(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::SUCCESS,
            1 => Self::UNSUPPORTED_PROTOCOL_VERSION,
            2 => Self::CLIENT_IDENTIFIER_NOT_VALID,
            3 => Self::SERVER_UNAVAILABLE,
            4 => Self::BAD_USER_NAME_OR_PASSWORD,
            5 => Self::NOT_AUTHORIZED,
            _ => return None,
        })
    }

    /// The 3.1.1 SUBACK return code for this 5.0 code: the granted QoS, or 0x80 for any failure.
    pub const fn to_v3_suback(self) -> u8 {
        if self.0 <= 2 { self.0 } else { 0x80 }
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode(0x{:02X} {})", self.0, self.name())
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X} {}", self.0, self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_follows_table_2_6() {
        assert!(ReasonCode::SUCCESS.valid_in(PacketType::PubAck));
        assert!(ReasonCode::NORMAL_DISCONNECTION.valid_in(PacketType::Disconnect));
        assert!(ReasonCode::GRANTED_QOS_2.valid_in(PacketType::SubAck));
        assert!(!ReasonCode::GRANTED_QOS_2.valid_in(PacketType::PubAck));
        assert!(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND.valid_in(PacketType::PubRel));
        assert!(!ReasonCode::PACKET_IDENTIFIER_NOT_FOUND.valid_in(PacketType::PubAck));
        assert!(ReasonCode::SERVER_SHUTTING_DOWN.valid_in(PacketType::Disconnect));
        assert!(!ReasonCode::SERVER_SHUTTING_DOWN.valid_in(PacketType::ConnAck));
        assert!(!ReasonCode(0x03).valid_in(PacketType::SubAck));
        assert!(!ReasonCode(0xFF).valid_in(PacketType::Disconnect));
    }

    #[test]
    fn names_and_v3_mapping() {
        assert_eq!(ReasonCode(0x00).name(), "Success");
        assert_eq!(ReasonCode(0x8E).name(), "Session taken over");
        assert_eq!(ReasonCode(0x7F).name(), "Unknown reason code");
        for rc in 0..=5u8 {
            assert_eq!(ReasonCode::from_v3_connack(rc).unwrap().to_v3_connack(), rc);
        }
        assert_eq!(ReasonCode::from_v3_connack(6), None);
        assert_eq!(ReasonCode::NOT_AUTHORIZED.to_v3_suback(), 0x80);
        assert_eq!(ReasonCode::GRANTED_QOS_1.to_v3_suback(), 1);
    }
}
