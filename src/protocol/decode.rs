//! Incremental decoding of control packets from a read buffer.
//!
//! [`decode`] looks at the front of the connection's read buffer: if a whole frame is there it
//! splits it off (one `split_to`, no copy) and parses it into a [`Packet`] whose topics, strings
//! and payload are slices of that frame; if not, it returns `Ok(None)` and leaves the buffer
//! untouched. The fixed header is checked first (see [`super::header`]), so an oversized packet
//! is refused before its body arrives.
//!
//! Every structural rule of the three specs is checked here; rules that need session state
//! (topic aliases in use, packet identifiers in flight, which packets may flow in which
//! direction) belong to the session state machine.
//!
//! Pure; no I/O, no clock.

use bytes::{Bytes, BytesMut};

use super::cursor::Reader;
use super::error::Error;
use super::header::{self, FixedHeader};
use super::packet::*;
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;
use super::topic::{self, TopicFilter, TopicName};

/// Decodes one packet from the front of `buf`, removing its bytes; `Ok(None)` if `buf` does not
/// yet hold a whole packet (nothing is consumed).
///
/// `version` is the connection's protocol version (before CONNECT, any: CONNECT carries its own
/// and is decoded the same way in all three). `max_packet_size` bounds the whole frame;
/// `u32::MAX` means no limit beyond the protocol's.
#[inline]
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    max_packet_size: u32,
) -> Result<Option<Packet>, Error> {
    let Some(h) = header::parse(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    let len = h.frame_len();
    if buf.len() < len {
        return Ok(None);
    }
    let mut frame = buf.split_to(len).freeze();
    let body = frame.split_off(h.header_len as usize);
    decode_body(h, body, version).map(Some)
}

/// Decodes a packet whose fixed header `h` has been parsed and whose `body` (exactly
/// `h.remaining` bytes) is complete.
pub fn decode_body(h: FixedHeader, body: Bytes, version: Version) -> Result<Packet, Error> {
    debug_assert_eq!(body.len(), h.remaining as usize);
    let mut r = Reader::new(body);
    let packet = match h.packet_type() {
        PacketType::Publish => Packet::Publish(publish(h.flags(), &mut r, version)?),
        PacketType::PubAck => Packet::PubAck(pub_ack(PacketType::PubAck, &mut r, version)?),
        PacketType::PubRec => Packet::PubRec(pub_ack(PacketType::PubRec, &mut r, version)?),
        PacketType::PubRel => Packet::PubRel(pub_ack(PacketType::PubRel, &mut r, version)?),
        PacketType::PubComp => Packet::PubComp(pub_ack(PacketType::PubComp, &mut r, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Connect => Packet::Connect(Box::new(connect(&mut r)?)),
        PacketType::ConnAck => Packet::ConnAck(conn_ack(&mut r, version)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe(&mut r, version)?),
        PacketType::SubAck => Packet::SubAck(sub_ack(&mut r, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(&mut r, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsub_ack(&mut r, version)?),
        PacketType::Disconnect => {
            let (reason, properties) =
                reason_and_properties(&mut r, version, PacketType::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        PacketType::Auth => Packet::Auth(auth(&mut r, version)?),
    };
    if !r.is_empty() {
        return Err(trailing(h.packet_type()));
    }
    Ok(packet)
}

#[cold]
fn trailing(t: PacketType) -> Error {
    match t {
        PacketType::PingReq => {
            Error::malformed("§3.12.1", "PINGREQ with a non-zero remaining length")
        }
        PacketType::PingResp => {
            Error::malformed("§3.13.1", "PINGRESP with a non-zero remaining length")
        }
        _ => Error::malformed("§2.1.4", "bytes left over after the end of the packet"),
    }
}

/// A non-zero packet identifier ([MQTT-2.2.1-3], 3.1.1 [MQTT-2.3.1-1]).
#[inline]
fn packet_id(r: &mut Reader) -> Result<u16, Error> {
    let id = r.u16()?;
    if id == 0 {
        return Err(Error::protocol("MQTT-2.2.1-3", "packet identifier 0"));
    }
    Ok(id)
}

#[inline]
fn properties(r: &mut Reader, version: Version, t: PacketType) -> Result<Properties, Error> {
    if version.is_v5() {
        Properties::decode(r, PropertyContext::Packet(t))
    } else {
        Ok(Properties::new())
    }
}

#[inline]
fn publish(flags: u8, r: &mut Reader, version: Version) -> Result<Publish, Error> {
    let qos = match QoS::from_u8((flags >> 1) & 3) {
        Some(q) => q,
        None => unreachable!("QoS 3 is refused by the first-byte table"),
    };
    let topic = r.binary()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = properties(r, version, PacketType::Publish)?;
    if topic.is_empty() {
        if !version.is_v5() {
            return Err(Error::with_reason(
                "MQTT-4.7.3-1",
                "empty topic name",
                ReasonCode::TOPIC_NAME_INVALID,
            ));
        }
        if properties.topic_alias.is_none() {
            return Err(Error::protocol(
                "§3.3.2.1",
                "empty topic name and no topic alias",
            ));
        }
    } else {
        topic::validate_topic_name(&topic)?;
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 1 != 0,
        topic: TopicName::new_unchecked(topic),
        packet_id,
        payload: r.rest(),
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, then (5.0) an optional reason code and
/// optional properties.
#[inline]
fn pub_ack(t: PacketType, r: &mut Reader, version: Version) -> Result<PubAck, Error> {
    let packet_id = packet_id(r)?;
    let (reason, properties) = reason_and_properties(r, version, t)?;
    Ok(PubAck {
        packet_id,
        reason,
        properties,
    })
}

/// The 5.0 tail shared by acknowledgements, DISCONNECT and AUTH: nothing (success, no
/// properties), a reason code, or a reason code and properties (§3.4.2.1, §3.14.2.1, §3.15.2.1).
fn reason_and_properties(
    r: &mut Reader,
    version: Version,
    t: PacketType,
) -> Result<(ReasonCode, Properties), Error> {
    if !version.is_v5() || r.is_empty() {
        return Ok((ReasonCode::SUCCESS, Properties::new()));
    }
    let reason = reason_code(r, t)?;
    let properties = if r.is_empty() {
        Properties::new()
    } else {
        Properties::decode(r, PropertyContext::Packet(t))?
    };
    Ok((reason, properties))
}

/// AUTH (§3.15): empty (success), or a reason code, properties and an Authentication Method.
fn auth(r: &mut Reader, version: Version) -> Result<Auth, Error> {
    if r.remaining() == 1 {
        return Err(Error::malformed(
            "§3.15.2.1",
            "AUTH with a reason code but no property length",
        ));
    }
    let (reason, properties) = reason_and_properties(r, version, PacketType::Auth)?;
    if (reason != ReasonCode::SUCCESS || !properties.is_empty())
        && properties.authentication_method.is_none()
    {
        return Err(Error::protocol(
            "§3.15.2.2.2",
            "AUTH without an authentication method",
        ));
    }
    Ok(Auth { reason, properties })
}

fn reason_code(r: &mut Reader, t: PacketType) -> Result<ReasonCode, Error> {
    let reason = ReasonCode(r.u8()?);
    if !reason.valid_in(t) {
        let rule = match t {
            PacketType::PubAck => "MQTT-3.4.2-1",
            PacketType::PubRec => "MQTT-3.5.2-1",
            PacketType::PubRel => "MQTT-3.6.2-1",
            PacketType::PubComp => "MQTT-3.7.2-1",
            PacketType::UnsubAck => "MQTT-3.11.3-2",
            PacketType::Disconnect => "MQTT-3.14.2-1",
            _ => "MQTT-3.15.2-1",
        };
        return Err(Error::protocol(
            rule,
            "reason code not valid for this packet",
        ));
    }
    Ok(reason)
}

fn connect(r: &mut Reader) -> Result<Connect, Error> {
    let name = r.binary()?;
    let level = r.u8()?;
    let version = match (&name[..], level) {
        (b"MQTT", 4) => Version::V3_1_1,
        (b"MQTT", 5) => Version::V5,
        (b"MQIsdp", 3) => Version::V3_1,
        (b"MQTT", _) | (b"MQIsdp", _) => {
            return Err(Error::with_reason(
                "MQTT-3.1.2-2",
                "unsupported protocol level",
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ));
        }
        _ => {
            return Err(Error::with_reason(
                "MQTT-3.1.2-1",
                "protocol name is not MQTT (or MQIsdp for 3.1)",
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ));
        }
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(Error::malformed(
            "MQTT-3.1.2-3",
            "CONNECT reserved flag bit set",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos != 0 {
        return Err(Error::malformed(
            "MQTT-3.1.2-11",
            "will QoS set without the will flag",
        ));
    }
    if !will_flag && will_retain {
        return Err(Error::malformed(
            "MQTT-3.1.2-13",
            "will retain set without the will flag",
        ));
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return Err(Error::malformed("MQTT-3.1.2-12", "will QoS 3"));
    };
    if version == Version::V3_1_1 && password_flag && !username_flag {
        return Err(Error::malformed(
            "3.1.1 MQTT-3.1.2-22",
            "password flag set without user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = properties(r, version, PacketType::Connect)?;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(Error::protocol(
            "§3.1.2.11.10",
            "authentication data without an authentication method",
        ));
    }
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Will)?
        } else {
            Properties::new()
        };
        let topic = r.binary()?;
        topic::validate_topic_name(&topic)
            .map_err(|e| Error::with_reason(e.rule, e.what, ReasonCode::TOPIC_NAME_INVALID))?;
        let payload = r.binary()?;
        Some(Will {
            topic: TopicName::new_unchecked(topic),
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn conn_ack(r: &mut Reader, version: Version) -> Result<ConnAck, Error> {
    let flags = r.u8()?;
    // In 3.1 the whole byte is reserved and unused; Session Present arrived with 3.1.1.
    let flags = if version == Version::V3_1 { 0 } else { flags };
    if flags & 0xfe != 0 {
        return Err(Error::malformed(
            "MQTT-3.2.2-1",
            "CONNACK reserved flag bits set",
        ));
    }
    let code = r.u8()?;
    let reason = if version.is_v5() {
        let rc = ReasonCode(code);
        if !rc.valid_in(PacketType::ConnAck) {
            return Err(Error::protocol(
                "MQTT-3.2.2-8",
                "reason code not valid for CONNACK",
            ));
        }
        rc
    } else {
        ReasonCode::from_v3_connack(code).ok_or(Error::malformed(
            "3.1.1 §3.2.2.3",
            "reserved CONNACK return code",
        ))?
    };
    let session_present = flags & 1 != 0;
    if session_present && reason != ReasonCode::SUCCESS {
        return Err(Error::protocol(
            "MQTT-3.2.2-6",
            "session present with a refusing CONNACK",
        ));
    }
    let properties = properties(r, version, PacketType::ConnAck)?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

fn subscribe(r: &mut Reader, version: Version) -> Result<Subscribe, Error> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, version, PacketType::Subscribe)?;
    let mut filters = Vec::with_capacity(4);
    while !r.is_empty() {
        // validate_topic_filter checks the UTF-8 rules too: read the field as binary.
        let filter = r.binary()?;
        topic::validate_topic_filter(&filter)?;
        let o = r.u8()?;
        let options = if version.is_v5() {
            // Reserved bits first: with them set the byte is malformed whatever the QoS.
            if o & 0xc0 != 0 {
                return Err(Error::malformed(
                    "MQTT-3.8.3-5",
                    "reserved subscription option bits set",
                ));
            }
            let Some(qos) = QoS::from_u8(o & 0x03) else {
                return Err(Error::protocol("§3.8.3.1", "subscription maximum QoS 3"));
            };
            let retain_handling = match (o >> 4) & 0x03 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(Error::protocol("§3.8.3.1", "retain handling 3")),
            };
            let no_local = o & 0x04 != 0;
            if no_local && topic::parse_shared(&filter).is_some() {
                return Err(Error::protocol(
                    "MQTT-3.8.3-4",
                    "no local on a shared subscription",
                ));
            }
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: o & 0x08 != 0,
                retain_handling,
            }
        } else {
            match QoS::from_u8(o & 0x03) {
                Some(qos) if o & 0xfc == 0 => SubscriptionOptions::qos(qos),
                _ => {
                    return Err(Error::malformed(
                        "3.1.1 MQTT-3-8.3-4",
                        "reserved requested-QoS bits set, or QoS 3",
                    ));
                }
            }
        };
        filters.push((TopicFilter::new_unchecked(filter), options));
    }
    if filters.is_empty() {
        return Err(Error::protocol(
            "MQTT-3.8.3-2",
            "SUBSCRIBE with no topic filter",
        ));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn sub_ack(r: &mut Reader, version: Version) -> Result<SubAck, Error> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, version, PacketType::SubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = r.u8()?;
        let valid = if version.is_v5() {
            ReasonCode(code).valid_in(PacketType::SubAck)
        } else {
            matches!(code, 0x00 | 0x01 | 0x02 | 0x80)
        };
        if !valid {
            return Err(Error::protocol(
                "MQTT-3.9.3-2",
                "SUBACK reason code not valid",
            ));
        }
        reasons.push(ReasonCode(code));
    }
    if reasons.is_empty() {
        return Err(Error::protocol("§2.4", "SUBACK without a reason code"));
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, version: Version) -> Result<Unsubscribe, Error> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, version, PacketType::Unsubscribe)?;
    let mut filters = Vec::with_capacity(4);
    while !r.is_empty() {
        let filter = r.binary()?;
        topic::validate_topic_filter(&filter)?;
        filters.push(TopicFilter::new_unchecked(filter));
    }
    if filters.is_empty() {
        return Err(Error::protocol(
            "MQTT-3.10.3-2",
            "UNSUBSCRIBE with no topic filter",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsub_ack(r: &mut Reader, version: Version) -> Result<UnsubAck, Error> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, version, PacketType::UnsubAck)?;
    let mut reasons = Vec::new();
    if version.is_v5() {
        reasons.reserve(r.remaining());
        while !r.is_empty() {
            reasons.push(reason_code(r, PacketType::UnsubAck)?);
        }
        if reasons.is_empty() {
            return Err(Error::protocol("§2.4", "UNSUBACK without a reason code"));
        }
    }
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}
