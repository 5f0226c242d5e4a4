//! The fifteen MQTT control packets as plain data, shared by all three protocol versions.
//!
//! One type per packet, used in both directions (a server decodes `Connect` and encodes
//! `ConnAck`; the bench client does the reverse). Fields that exist only in MQTT 5.0 (reason
//! codes on acknowledgements, properties, subscription options beyond QoS) hold their 5.0
//! defaults for 3.1 / 3.1.1 packets and are not written when encoding for those versions.
//!
//! Topics, strings and payloads are [`Bytes`] slices of the frame they were decoded from.
//!
//! ```text
//!  type  name         v3.1 v3.1.1 v5   direction
//!   1    CONNECT       ✓    ✓     ✓    client → server
//!   2    CONNACK       ✓    ✓     ✓    server → client
//!   3    PUBLISH       ✓    ✓     ✓    both
//!   4    PUBACK        ✓    ✓     ✓    both
//!   5    PUBREC        ✓    ✓     ✓    both
//!   6    PUBREL        ✓    ✓     ✓    both
//!   7    PUBCOMP       ✓    ✓     ✓    both
//!   8    SUBSCRIBE     ✓    ✓     ✓    client → server
//!   9    SUBACK        ✓    ✓     ✓    server → client
//!  10    UNSUBSCRIBE   ✓    ✓     ✓    client → server
//!  11    UNSUBACK      ✓    ✓     ✓    server → client
//!  12    PINGREQ       ✓    ✓     ✓    client → server
//!  13    PINGRESP      ✓    ✓     ✓    server → client
//!  14    DISCONNECT    ✓    ✓     ✓    both in 5.0, client → server before
//!  15    AUTH                     ✓    both
//! ```
//!
//! Pure data; no I/O.

use bytes::Bytes;

use super::properties::Properties;
use super::reason::ReasonCode;
use super::string::Str;
use super::topic::{TopicFilter, TopicName};

/// The protocol level byte of CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Version {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V3_1 = 3,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V3_1_1 = 4,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5 = 5,
}

impl Version {
    /// Whether packets of this version carry properties and reason codes.
    #[inline]
    pub const fn is_v5(self) -> bool {
        matches!(self, Version::V5)
    }

    /// The protocol name written in CONNECT.
    pub const fn protocol_name(self) -> &'static [u8] {
        match self {
            Version::V3_1 => b"MQIsdp",
            _ => b"MQTT",
        }
    }
}

/// Quality of service of a PUBLISH or a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// Fire and forget.
    #[default]
    AtMostOnce = 0,
    /// Acknowledged delivery, possibly duplicated.
    AtLeastOnce = 1,
    /// Assured exactly-once delivery.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a two-bit value, `None` for the forbidden value 3.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The control packet type, the high nibble of byte 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The type for a high nibble, `None` for the reserved value 0.
    pub const fn from_nibble(n: u8) -> Option<PacketType> {
        Some(match n {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }

    /// The spec's upper-case name.
    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::ConnAck => "CONNACK",
            PacketType::Publish => "PUBLISH",
            PacketType::PubAck => "PUBACK",
            PacketType::PubRec => "PUBREC",
            PacketType::PubRel => "PUBREL",
            PacketType::PubComp => "PUBCOMP",
            PacketType::Subscribe => "SUBSCRIBE",
            PacketType::SubAck => "SUBACK",
            PacketType::Unsubscribe => "UNSUBSCRIBE",
            PacketType::UnsubAck => "UNSUBACK",
            PacketType::PingReq => "PINGREQ",
            PacketType::PingResp => "PINGRESP",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Auth => "AUTH",
        }
    }
}

/// Any control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// This packet's type.
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT (§3.1): the first packet a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version the client speaks.
    pub version: Version,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds, 0 = off.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: Str,
    /// The will message, if any.
    pub will: Option<Will>,
    /// User name, if the flag is set.
    pub username: Option<Str>,
    /// Password, if the flag is set (binary data).
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0).
    pub properties: Properties,
}

/// The will message carried by CONNECT (§3.1.3.2–3.1.3.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (5.0).
    pub properties: Properties,
}

/// CONNACK (§3.2).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// 5.0 reason code; 3.1 / 3.1.1 return codes map through [`ReasonCode::to_v3_connack`].
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// PUBLISH (§3.3).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Topic name; empty only for a 5.0 PUBLISH that names its topic by alias.
    pub topic: TopicName,
    /// Packet identifier; 0 for QoS 0 (and then absent on the wire).
    pub packet_id: u16,
    pub payload: Bytes,
    pub properties: Properties,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4–3.7) share one shape.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PubAck {
    pub packet_id: u16,
    /// 5.0 reason code; always success for 3.1 / 3.1.1.
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl PubAck {
    /// A successful acknowledgement with no properties.
    pub fn new(packet_id: u16) -> Self {
        Self {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }
}

/// Retain Handling subscription option (5.0 §3.8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// The options byte of one SUBSCRIBE entry (5.0 §3.8.3.1; only `qos` exists before 5.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with the given maximum QoS and 5.0 defaults for the rest.
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            ..Self::default()
        }
    }
}

/// SUBSCRIBE (§3.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    pub properties: Properties,
}

/// SUBACK (§3.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per requested filter: granted QoS (0x00–0x02) or a failure code.
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

/// UNSUBSCRIBE (§3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<TopicFilter>,
    pub properties: Properties,
}

/// UNSUBACK (§3.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// One per filter in 5.0; empty for 3.1 / 3.1.1, which carry none.
    pub reasons: Vec<ReasonCode>,
    pub properties: Properties,
}

/// DISCONNECT (§3.14).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// 5.0 reason code; normal disconnection for 3.1 / 3.1.1.
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// AUTH (5.0 §3.15).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}
