//! MQTT 5.0 properties (§2.2.2): every property, its data type, and the packets it may appear in.
//!
//! All packets share one [`Properties`] type. It is one pointer wide and allocates nothing when
//! empty (the common case: every 3.1 / 3.1.1 packet and most 5.0 acknowledgements), so packets
//! stay small on the hot path; reading an absent field goes through a shared empty value.
//!
//! Decoding enforces, for the packet being decoded:
//! - an identifier not valid for the packet is a Malformed Packet (§2.2.2.2);
//! - a property other than User Property (and Subscription Identifier in a server→client
//!   PUBLISH) included more than once is a Protocol Error;
//! - the value rules the spec states for each property (0 / 1 flags, non-zero maxima, …).
//!
//! ```text
//!  id    property                          type          packets
//!  0x01  Payload Format Indicator          byte          PUBLISH, Will
//!  0x02  Message Expiry Interval           u32           PUBLISH, Will
//!  0x03  Content Type                      UTF-8         PUBLISH, Will
//!  0x08  Response Topic                    UTF-8         PUBLISH, Will
//!  0x09  Correlation Data                  binary        PUBLISH, Will
//!  0x0B  Subscription Identifier           varint        PUBLISH, SUBSCRIBE
//!  0x11  Session Expiry Interval           u32           CONNECT, CONNACK, DISCONNECT
//!  0x12  Assigned Client Identifier        UTF-8         CONNACK
//!  0x13  Server Keep Alive                 u16           CONNACK
//!  0x15  Authentication Method             UTF-8         CONNECT, CONNACK, AUTH
//!  0x16  Authentication Data               binary        CONNECT, CONNACK, AUTH
//!  0x17  Request Problem Information       byte          CONNECT
//!  0x18  Will Delay Interval               u32           Will
//!  0x19  Request Response Information      byte          CONNECT
//!  0x1A  Response Information              UTF-8         CONNACK
//!  0x1C  Server Reference                  UTF-8         CONNACK, DISCONNECT
//!  0x1F  Reason String                     UTF-8         CONNACK, PUBACK, PUBREC, PUBREL,
//!                                                        PUBCOMP, SUBACK, UNSUBACK,
//!                                                        DISCONNECT, AUTH
//!  0x21  Receive Maximum                   u16           CONNECT, CONNACK
//!  0x22  Topic Alias Maximum               u16           CONNECT, CONNACK
//!  0x23  Topic Alias                       u16           PUBLISH
//!  0x24  Maximum QoS                       byte          CONNACK
//!  0x25  Retain Available                  byte          CONNACK
//!  0x26  User Property                     UTF-8 pair    all packets with properties, Will
//!  0x27  Maximum Packet Size               u32           CONNECT, CONNACK
//!  0x28  Wildcard Subscription Available   byte          CONNACK
//!  0x29  Subscription Identifier Available byte          CONNACK
//!  0x2A  Shared Subscription Available     byte          CONNACK
//! ```
//!
//! Pure; no I/O.

use core::ops::{Deref, DerefMut};

use bytes::{BufMut, Bytes, BytesMut};

use super::cursor::{Reader, put_binary, put_varint};
use super::error::{EncodeError, Error};
use super::packet::PacketType;
use super::string::Str;
use super::varint;

/// Where a property list sits: a packet, or the will properties inside CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyContext {
    Packet(PacketType),
    Will,
}

impl PropertyContext {
    const fn bit(self) -> u16 {
        match self {
            PropertyContext::Packet(t) => 1 << t as u8,
            // Packet type 0 is reserved, so its bit is free for the will.
            PropertyContext::Will => 1,
        }
    }
}

/// The property identifiers (§2.2.2.2, Table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

const fn bits(types: &[PacketType], will: bool) -> u16 {
    let mut m = if will { 1 } else { 0 };
    let mut i = 0;
    while i < types.len() {
        m |= 1 << types[i] as u8;
        i += 1;
    }
    m
}

/// For each identifier, the contexts (bit per packet type, bit 0 = will) that may carry it.
static ALLOWED: [u16; 0x2B] = {
    use PacketType::*;
    let mut t = [0u16; 0x2B];
    t[id::PAYLOAD_FORMAT_INDICATOR as usize] = bits(&[Publish], true);
    t[id::MESSAGE_EXPIRY_INTERVAL as usize] = bits(&[Publish], true);
    t[id::CONTENT_TYPE as usize] = bits(&[Publish], true);
    t[id::RESPONSE_TOPIC as usize] = bits(&[Publish], true);
    t[id::CORRELATION_DATA as usize] = bits(&[Publish], true);
    t[id::SUBSCRIPTION_IDENTIFIER as usize] = bits(&[Publish, Subscribe], false);
    t[id::SESSION_EXPIRY_INTERVAL as usize] = bits(&[Connect, ConnAck, Disconnect], false);
    t[id::ASSIGNED_CLIENT_IDENTIFIER as usize] = bits(&[ConnAck], false);
    t[id::SERVER_KEEP_ALIVE as usize] = bits(&[ConnAck], false);
    t[id::AUTHENTICATION_METHOD as usize] = bits(&[Connect, ConnAck, Auth], false);
    t[id::AUTHENTICATION_DATA as usize] = bits(&[Connect, ConnAck, Auth], false);
    t[id::REQUEST_PROBLEM_INFORMATION as usize] = bits(&[Connect], false);
    t[id::WILL_DELAY_INTERVAL as usize] = bits(&[], true);
    t[id::REQUEST_RESPONSE_INFORMATION as usize] = bits(&[Connect], false);
    t[id::RESPONSE_INFORMATION as usize] = bits(&[ConnAck], false);
    t[id::SERVER_REFERENCE as usize] = bits(&[ConnAck, Disconnect], false);
    t[id::REASON_STRING as usize] = bits(
        &[
            ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth,
        ],
        false,
    );
    t[id::RECEIVE_MAXIMUM as usize] = bits(&[Connect, ConnAck], false);
    t[id::TOPIC_ALIAS_MAXIMUM as usize] = bits(&[Connect, ConnAck], false);
    t[id::TOPIC_ALIAS as usize] = bits(&[Publish], false);
    t[id::MAXIMUM_QOS as usize] = bits(&[ConnAck], false);
    t[id::RETAIN_AVAILABLE as usize] = bits(&[ConnAck], false);
    t[id::USER_PROPERTY as usize] = bits(
        &[
            Connect,
            ConnAck,
            Publish,
            PubAck,
            PubRec,
            PubRel,
            PubComp,
            Subscribe,
            SubAck,
            Unsubscribe,
            UnsubAck,
            Disconnect,
            Auth,
        ],
        true,
    );
    t[id::MAXIMUM_PACKET_SIZE as usize] = bits(&[Connect, ConnAck], false);
    t[id::WILDCARD_SUBSCRIPTION_AVAILABLE as usize] = bits(&[ConnAck], false);
    t[id::SUBSCRIPTION_IDENTIFIER_AVAILABLE as usize] = bits(&[ConnAck], false);
    t[id::SHARED_SUBSCRIPTION_AVAILABLE as usize] = bits(&[ConnAck], false);
    t
};

/// Whether property `id` may appear in `ctx`.
pub fn allowed(id: u8, ctx: PropertyContext) -> bool {
    ALLOWED.get(id as usize).is_some_and(|m| m & ctx.bit() != 0)
}

/// The values of every MQTT 5.0 property; absent ones are `None` / empty.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PropertyValues {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<Str>,
    pub response_topic: Option<Str>,
    pub correlation_data: Option<Bytes>,
    /// One in SUBSCRIBE; one per matching subscription in a server→client PUBLISH.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<Str>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<Str>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<Str>,
    pub server_reference: Option<Str>,
    pub reason_string: Option<Str>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    /// In wire order; a name may repeat.
    pub user_properties: Vec<(Str, Str)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

static EMPTY: PropertyValues = PropertyValues {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

/// A packet's property list: one pointer, no allocation while empty.
///
/// Read fields through `Deref` (`props.topic_alias`); writing through `DerefMut` allocates the
/// list on first use. Two lists are equal when their values are, however they were built.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

impl Deref for Properties {
    type Target = PropertyValues;
    #[inline]
    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl DerefMut for Properties {
    #[inline]
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Default::default)
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl core::fmt::Debug for Properties {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.is_empty() {
            f.write_str("Properties {}")
        } else {
            (**self).fmt(f)
        }
    }
}

impl From<PropertyValues> for Properties {
    fn from(v: PropertyValues) -> Self {
        Properties(Some(Box::new(v)))
    }
}

fn flag(r: &mut Reader, rule: &'static str, what: &'static str) -> Result<u8, Error> {
    let v = r.u8()?;
    if v > 1 {
        return Err(Error::protocol(rule, what));
    }
    Ok(v)
}

macro_rules! set_once {
    ($rule:expr, $slot:expr, $value:expr, $what:literal) => {{
        if $slot.is_some() {
            return Err(Error::protocol(
                $rule,
                concat!($what, " included more than once"),
            ));
        }
        $slot = Some($value);
    }};
}

/// The section that says "It is a Protocol Error to include the … more than once" for a
/// property (the statements are unnumbered). PUBLISH's own sections are silent for some; the
/// will sections that share those properties are cited.
fn duplicate_rule(id: u8) -> &'static str {
    match id {
        id::PAYLOAD_FORMAT_INDICATOR => "§3.1.3.2.3",
        id::MESSAGE_EXPIRY_INTERVAL => "§3.1.3.2.4",
        id::CONTENT_TYPE => "§3.3.2.3.9",
        id::RESPONSE_TOPIC => "§3.3.2.3.5",
        id::CORRELATION_DATA => "§3.3.2.3.6",
        id::SUBSCRIPTION_IDENTIFIER => "§3.8.2.1.2",
        id::SESSION_EXPIRY_INTERVAL => "§3.1.2.11.2",
        id::ASSIGNED_CLIENT_IDENTIFIER => "§3.2.2.3.7",
        id::SERVER_KEEP_ALIVE => "§3.2.2.3.14",
        id::AUTHENTICATION_METHOD => "§3.1.2.11.9",
        id::AUTHENTICATION_DATA => "§3.1.2.11.10",
        id::REQUEST_PROBLEM_INFORMATION => "§3.1.2.11.7",
        id::WILL_DELAY_INTERVAL => "§3.1.3.2.2",
        id::REQUEST_RESPONSE_INFORMATION => "§3.1.2.11.6",
        id::RESPONSE_INFORMATION => "§3.2.2.3.15",
        id::SERVER_REFERENCE => "§3.2.2.3.16",
        id::REASON_STRING => "§3.2.2.3.9",
        id::RECEIVE_MAXIMUM => "§3.1.2.11.3",
        id::TOPIC_ALIAS_MAXIMUM => "§3.1.2.11.5",
        id::TOPIC_ALIAS => "§3.3.2.3.4",
        id::MAXIMUM_QOS => "§3.2.2.3.4",
        id::RETAIN_AVAILABLE => "§3.2.2.3.5",
        id::MAXIMUM_PACKET_SIZE => "§3.1.2.11.4",
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => "§3.2.2.3.11",
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => "§3.2.2.3.12",
        id::SHARED_SUBSCRIPTION_AVAILABLE => "§3.2.2.3.13",
        _ => "§2.2.2.2",
    }
}

impl Properties {
    /// An empty list.
    pub const fn new() -> Self {
        Properties(None)
    }

    /// Whether no property is set.
    #[inline]
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            None => true,
            Some(v) => **v == EMPTY,
        }
    }

    /// Reads a property list (length varint, then properties) for `ctx`.
    pub(crate) fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Properties, Error> {
        let len = r.varint()? as usize;
        if len == 0 {
            return Ok(Properties(None));
        }
        let mut r = r.sub(len)?;
        let mut p = PropertyValues::default();
        while !r.is_empty() {
            let id = r.u8()?;
            if !allowed(id, ctx) {
                return Err(Error::malformed(
                    "§2.2.2.2",
                    "property identifier not valid for this packet",
                ));
            }
            let dup_rule = duplicate_rule(id);
            match id {
                id::PAYLOAD_FORMAT_INDICATOR => set_once!(
                    dup_rule,
                    p.payload_format_indicator,
                    flag(
                        &mut r,
                        "§3.3.2.3.2",
                        "payload format indicator other than 0 or 1"
                    )?,
                    "payload format indicator"
                ),
                id::MESSAGE_EXPIRY_INTERVAL => {
                    set_once!(
                        dup_rule,
                        p.message_expiry_interval,
                        r.u32()?,
                        "message expiry interval"
                    )
                }
                id::CONTENT_TYPE => {
                    set_once!(dup_rule, p.content_type, r.string()?, "content type")
                }
                id::RESPONSE_TOPIC => {
                    let t = r.string()?;
                    super::topic::validate_topic_name(t.as_bytes()).map_err(|_| {
                        Error::protocol("MQTT-3.3.2-14", "response topic is not a valid topic name")
                    })?;
                    set_once!(dup_rule, p.response_topic, t, "response topic")
                }
                id::CORRELATION_DATA => {
                    set_once!(
                        dup_rule,
                        p.correlation_data,
                        r.binary()?,
                        "correlation data"
                    )
                }
                id::SUBSCRIPTION_IDENTIFIER => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(Error::protocol(
                            "§3.8.2.1.2",
                            "subscription identifier of 0",
                        ));
                    }
                    if ctx == PropertyContext::Packet(PacketType::Subscribe)
                        && !p.subscription_identifiers.is_empty()
                    {
                        return Err(Error::protocol(
                            dup_rule,
                            "subscription identifier included more than once",
                        ));
                    }
                    p.subscription_identifiers.push(v);
                }
                id::SESSION_EXPIRY_INTERVAL => {
                    set_once!(
                        dup_rule,
                        p.session_expiry_interval,
                        r.u32()?,
                        "session expiry interval"
                    )
                }
                id::ASSIGNED_CLIENT_IDENTIFIER => set_once!(
                    dup_rule,
                    p.assigned_client_identifier,
                    r.string()?,
                    "assigned client identifier"
                ),
                id::SERVER_KEEP_ALIVE => {
                    set_once!(dup_rule, p.server_keep_alive, r.u16()?, "server keep alive")
                }
                id::AUTHENTICATION_METHOD => {
                    set_once!(
                        dup_rule,
                        p.authentication_method,
                        r.string()?,
                        "authentication method"
                    )
                }
                id::AUTHENTICATION_DATA => {
                    set_once!(
                        dup_rule,
                        p.authentication_data,
                        r.binary()?,
                        "authentication data"
                    )
                }
                id::REQUEST_PROBLEM_INFORMATION => set_once!(
                    dup_rule,
                    p.request_problem_information,
                    flag(
                        &mut r,
                        "§3.1.2.11.7",
                        "request problem information other than 0 or 1"
                    )?,
                    "request problem information"
                ),
                id::WILL_DELAY_INTERVAL => {
                    set_once!(
                        dup_rule,
                        p.will_delay_interval,
                        r.u32()?,
                        "will delay interval"
                    )
                }
                id::REQUEST_RESPONSE_INFORMATION => set_once!(
                    dup_rule,
                    p.request_response_information,
                    flag(
                        &mut r,
                        "§3.1.2.11.6",
                        "request response information other than 0 or 1"
                    )?,
                    "request response information"
                ),
                id::RESPONSE_INFORMATION => {
                    set_once!(
                        dup_rule,
                        p.response_information,
                        r.string()?,
                        "response information"
                    )
                }
                id::SERVER_REFERENCE => {
                    set_once!(
                        dup_rule,
                        p.server_reference,
                        r.string()?,
                        "server reference"
                    )
                }
                id::REASON_STRING => {
                    set_once!(dup_rule, p.reason_string, r.string()?, "reason string")
                }
                id::RECEIVE_MAXIMUM => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(Error::protocol("§3.1.2.11.3", "receive maximum of 0"));
                    }
                    set_once!(dup_rule, p.receive_maximum, v, "receive maximum")
                }
                id::TOPIC_ALIAS_MAXIMUM => {
                    set_once!(
                        dup_rule,
                        p.topic_alias_maximum,
                        r.u16()?,
                        "topic alias maximum"
                    )
                }
                id::TOPIC_ALIAS => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(Error::with_reason(
                            "MQTT-3.3.2-8",
                            "topic alias of 0",
                            super::reason::ReasonCode::TOPIC_ALIAS_INVALID,
                        ));
                    }
                    set_once!(dup_rule, p.topic_alias, v, "topic alias")
                }
                id::MAXIMUM_QOS => set_once!(
                    dup_rule,
                    p.maximum_qos,
                    flag(&mut r, "§3.2.2.3.4", "maximum QoS other than 0 or 1")?,
                    "maximum QoS"
                ),
                id::RETAIN_AVAILABLE => set_once!(
                    dup_rule,
                    p.retain_available,
                    flag(&mut r, "§3.2.2.3.5", "retain available other than 0 or 1")?,
                    "retain available"
                ),
                id::USER_PROPERTY => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                id::MAXIMUM_PACKET_SIZE => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(Error::protocol("§3.1.2.11.4", "maximum packet size of 0"));
                    }
                    set_once!(dup_rule, p.maximum_packet_size, v, "maximum packet size")
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => set_once!(
                    dup_rule,
                    p.wildcard_subscription_available,
                    flag(
                        &mut r,
                        "§3.2.2.3.11",
                        "wildcard subscription available other than 0 or 1"
                    )?,
                    "wildcard subscription available"
                ),
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => set_once!(
                    dup_rule,
                    p.subscription_identifier_available,
                    flag(
                        &mut r,
                        "§3.2.2.3.12",
                        "subscription identifier available other than 0 or 1"
                    )?,
                    "subscription identifier available"
                ),
                id::SHARED_SUBSCRIPTION_AVAILABLE => set_once!(
                    dup_rule,
                    p.shared_subscription_available,
                    flag(
                        &mut r,
                        "§3.2.2.3.13",
                        "shared subscription available other than 0 or 1"
                    )?,
                    "shared subscription available"
                ),
                _ => unreachable!("the allowed table admits only the identifiers above"),
            }
        }
        Ok(Properties(Some(Box::new(p))))
    }

    /// A bitmask (bit = identifier) of the properties that are set.
    fn present(&self) -> u64 {
        let Some(p) = self.0.as_deref() else { return 0 };
        let mut m = 0u64;
        let mut mark = |id: u8, set: bool| m |= (set as u64) << id;
        mark(
            id::PAYLOAD_FORMAT_INDICATOR,
            p.payload_format_indicator.is_some(),
        );
        mark(
            id::MESSAGE_EXPIRY_INTERVAL,
            p.message_expiry_interval.is_some(),
        );
        mark(id::CONTENT_TYPE, p.content_type.is_some());
        mark(id::RESPONSE_TOPIC, p.response_topic.is_some());
        mark(id::CORRELATION_DATA, p.correlation_data.is_some());
        mark(
            id::SUBSCRIPTION_IDENTIFIER,
            !p.subscription_identifiers.is_empty(),
        );
        mark(
            id::SESSION_EXPIRY_INTERVAL,
            p.session_expiry_interval.is_some(),
        );
        mark(
            id::ASSIGNED_CLIENT_IDENTIFIER,
            p.assigned_client_identifier.is_some(),
        );
        mark(id::SERVER_KEEP_ALIVE, p.server_keep_alive.is_some());
        mark(id::AUTHENTICATION_METHOD, p.authentication_method.is_some());
        mark(id::AUTHENTICATION_DATA, p.authentication_data.is_some());
        mark(
            id::REQUEST_PROBLEM_INFORMATION,
            p.request_problem_information.is_some(),
        );
        mark(id::WILL_DELAY_INTERVAL, p.will_delay_interval.is_some());
        mark(
            id::REQUEST_RESPONSE_INFORMATION,
            p.request_response_information.is_some(),
        );
        mark(id::RESPONSE_INFORMATION, p.response_information.is_some());
        mark(id::SERVER_REFERENCE, p.server_reference.is_some());
        mark(id::REASON_STRING, p.reason_string.is_some());
        mark(id::RECEIVE_MAXIMUM, p.receive_maximum.is_some());
        mark(id::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum.is_some());
        mark(id::TOPIC_ALIAS, p.topic_alias.is_some());
        mark(id::MAXIMUM_QOS, p.maximum_qos.is_some());
        mark(id::RETAIN_AVAILABLE, p.retain_available.is_some());
        mark(id::USER_PROPERTY, !p.user_properties.is_empty());
        mark(id::MAXIMUM_PACKET_SIZE, p.maximum_packet_size.is_some());
        mark(
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            p.wildcard_subscription_available.is_some(),
        );
        mark(
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            p.subscription_identifier_available.is_some(),
        );
        mark(
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            p.shared_subscription_available.is_some(),
        );
        m
    }

    /// Fails with the first property set that `ctx` may not carry.
    pub(crate) fn check_allowed(&self, ctx: PropertyContext) -> Result<(), EncodeError> {
        let mut present = self.present();
        while present != 0 {
            let id = present.trailing_zeros() as u8;
            if !allowed(id, ctx) {
                return Err(EncodeError::PropertyNotAllowed(id));
            }
            present &= present - 1;
        }
        Ok(())
    }

    /// The encoded size of the properties, without the length prefix.
    pub fn encoded_len(&self) -> usize {
        let Some(p) = self.0.as_deref() else { return 0 };
        let s = |v: &Option<Str>| v.as_ref().map_or(0, |s| 3 + s.len());
        let b = |v: &Option<Bytes>| v.as_ref().map_or(0, |b| 3 + b.len());
        let n = |v: Option<u8>, size: usize| v.map_or(0, |_| 1 + size);
        let n16 = |v: Option<u16>| v.map_or(0, |_| 3);
        let n32 = |v: Option<u32>| v.map_or(0, |_| 5);
        n(p.payload_format_indicator, 1)
            + n32(p.message_expiry_interval)
            + s(&p.content_type)
            + s(&p.response_topic)
            + b(&p.correlation_data)
            + p.subscription_identifiers
                .iter()
                .map(|&v| 1 + varint::len(v))
                .sum::<usize>()
            + n32(p.session_expiry_interval)
            + s(&p.assigned_client_identifier)
            + n16(p.server_keep_alive)
            + s(&p.authentication_method)
            + b(&p.authentication_data)
            + n(p.request_problem_information, 1)
            + n32(p.will_delay_interval)
            + n(p.request_response_information, 1)
            + s(&p.response_information)
            + s(&p.server_reference)
            + s(&p.reason_string)
            + n16(p.receive_maximum)
            + n16(p.topic_alias_maximum)
            + n16(p.topic_alias)
            + n(p.maximum_qos, 1)
            + n(p.retain_available, 1)
            + p.user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
            + n32(p.maximum_packet_size)
            + n(p.wildcard_subscription_available, 1)
            + n(p.subscription_identifier_available, 1)
            + n(p.shared_subscription_available, 1)
    }

    /// The bytes of an optional string property.
    fn s(v: &Option<Str>) -> Option<&[u8]> {
        v.as_ref().map(|s| s.as_bytes())
    }

    /// Writes the length prefix and the properties. `len` is [`Self::encoded_len`].
    pub(crate) fn encode(&self, len: usize, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_varint(out, len as u32);
        let Some(p) = self.0.as_deref() else {
            return Ok(());
        };
        let byte = |out: &mut BytesMut, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u8(v);
            }
        };
        let two = |out: &mut BytesMut, id: u8, v: Option<u16>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u16(v);
            }
        };
        let four = |out: &mut BytesMut, id: u8, v: Option<u32>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u32(v);
            }
        };
        let bin = |out: &mut BytesMut, id: u8, v: Option<&[u8]>| -> Result<(), EncodeError> {
            if let Some(v) = v {
                out.put_u8(id);
                put_binary(out, v)?;
            }
            Ok(())
        };
        byte(
            out,
            id::PAYLOAD_FORMAT_INDICATOR,
            p.payload_format_indicator,
        );
        four(out, id::MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
        bin(out, id::CONTENT_TYPE, Self::s(&p.content_type))?;
        bin(out, id::RESPONSE_TOPIC, Self::s(&p.response_topic))?;
        bin(out, id::CORRELATION_DATA, p.correlation_data.as_deref())?;
        for &v in &p.subscription_identifiers {
            out.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_varint(out, v);
        }
        four(out, id::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
        bin(
            out,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            Self::s(&p.assigned_client_identifier),
        )?;
        two(out, id::SERVER_KEEP_ALIVE, p.server_keep_alive);
        bin(
            out,
            id::AUTHENTICATION_METHOD,
            Self::s(&p.authentication_method),
        )?;
        bin(
            out,
            id::AUTHENTICATION_DATA,
            p.authentication_data.as_deref(),
        )?;
        byte(
            out,
            id::REQUEST_PROBLEM_INFORMATION,
            p.request_problem_information,
        );
        four(out, id::WILL_DELAY_INTERVAL, p.will_delay_interval);
        byte(
            out,
            id::REQUEST_RESPONSE_INFORMATION,
            p.request_response_information,
        );
        bin(
            out,
            id::RESPONSE_INFORMATION,
            Self::s(&p.response_information),
        )?;
        bin(out, id::SERVER_REFERENCE, Self::s(&p.server_reference))?;
        bin(out, id::REASON_STRING, Self::s(&p.reason_string))?;
        two(out, id::RECEIVE_MAXIMUM, p.receive_maximum);
        two(out, id::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
        two(out, id::TOPIC_ALIAS, p.topic_alias);
        byte(out, id::MAXIMUM_QOS, p.maximum_qos);
        byte(out, id::RETAIN_AVAILABLE, p.retain_available);
        for (k, v) in &p.user_properties {
            out.put_u8(id::USER_PROPERTY);
            put_binary(out, k.as_bytes())?;
            put_binary(out, v.as_bytes())?;
        }
        four(out, id::MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
        byte(
            out,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            p.wildcard_subscription_available,
        );
        byte(
            out,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            p.subscription_identifier_available,
        );
        byte(
            out,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            p.shared_subscription_available,
        );
        Ok(())
    }
}
