//! Encoding of control packets into a write buffer, for any of the three protocol versions.
//!
//! Each packet computes its body length first (cheap arithmetic, properties included), so the
//! fixed header is written once and the body is appended with no second pass or copy. Writing
//! for 3.1 / 3.1.1 leaves out what those versions do not have (properties, reason codes on
//! acknowledgements); AUTH has no 3.x form and is refused.
//!
//! The encoder refuses what it cannot represent ([`EncodeError`]): a packet over the maximum
//! remaining length, a field over 65 535 bytes, a packet identifier of 0 where one is needed,
//! a property the packet type may not carry. It does not re-validate topic syntax: a
//! [`TopicName`](super::topic::TopicName) was validated when it was built.
//!
//! Pure; no I/O.

use bytes::{BufMut, BytesMut};

use super::cursor::{put_binary, put_varint};
use super::error::EncodeError;
use super::packet::*;
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;
use super::varint;

/// A property block's size: `total` with its length prefix, `content` without.
#[derive(Clone, Copy, Default)]
struct Block {
    total: usize,
    content: usize,
}

/// The property block of a packet for `version` (empty before 5.0).
#[inline]
fn props_len(p: &Properties, version: Version, ctx: PropertyContext) -> Result<Block, EncodeError> {
    if !version.is_v5() {
        return Ok(Block::default());
    }
    p.check_allowed(ctx)?;
    let content = p.encoded_len();
    if content > varint::MAX as usize {
        return Err(EncodeError::PacketTooLarge);
    }
    Ok(Block {
        total: varint::len(content as u32) + content,
        content,
    })
}

#[inline]
fn write_props(
    out: &mut BytesMut,
    p: &Properties,
    version: Version,
    block: Block,
) -> Result<(), EncodeError> {
    if version.is_v5() {
        p.encode(block.content, out)?;
    }
    Ok(())
}

#[inline]
fn fixed_header(out: &mut BytesMut, byte0: u8, body: usize) -> Result<(), EncodeError> {
    if body > varint::MAX as usize {
        return Err(EncodeError::PacketTooLarge);
    }
    out.reserve(5 + body);
    out.put_u8(byte0);
    put_varint(out, body as u32);
    Ok(())
}

#[inline]
fn nonzero(id: u16) -> Result<u16, EncodeError> {
    if id == 0 {
        Err(EncodeError::ZeroPacketId)
    } else {
        Ok(id)
    }
}

impl Publish {
    /// The first byte: type 3 with DUP, QoS and RETAIN.
    #[inline]
    pub fn byte0(&self) -> u8 {
        0x30 | ((self.dup as u8) << 3) | ((self.qos as u8) << 1) | self.retain as u8
    }

    fn body_len(&self, version: Version) -> Result<(usize, Block), EncodeError> {
        let props = props_len(
            &self.properties,
            version,
            PropertyContext::Packet(PacketType::Publish),
        )?;
        let id = if self.qos == QoS::AtMostOnce { 0 } else { 2 };
        Ok((
            2 + self.topic.len() + id + props.total + self.payload.len(),
            props,
        ))
    }

    /// The size of the whole encoded frame.
    pub fn encoded_len(&self, version: Version) -> Result<usize, EncodeError> {
        let (body, _) = self.body_len(version)?;
        Ok(1 + varint::len(body.min(varint::MAX as usize) as u32) + body)
    }

    /// Appends this PUBLISH to `out`.
    #[inline]
    pub fn encode(&self, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_as(
            version,
            Delivery {
                dup: self.dup,
                qos: self.qos,
                retain: self.retain,
                packet_id: self.packet_id,
            },
            out,
        )
    }

    /// Appends this message to `out` as one subscriber receives it: with that delivery's DUP,
    /// QoS, RETAIN and packet identifier in place of the message's own, so one shared message
    /// is encoded for many subscribers without being copied.
    #[inline]
    pub fn encode_as(
        &self,
        version: Version,
        d: Delivery,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        self.encode_with(version, d, self.topic.as_bytes(), &self.properties, out)
    }

    /// [`encode_as`](Self::encode_as) with this subscriber's own topic bytes (empty when a
    /// topic alias names it) and property list (its subscription identifiers, the remaining
    /// message expiry, a topic alias) in place of the message's.
    #[inline]
    pub fn encode_with(
        &self,
        version: Version,
        d: Delivery,
        topic: &[u8],
        properties: &Properties,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let props = props_len(
            properties,
            version,
            PropertyContext::Packet(PacketType::Publish),
        )?;
        let id = if d.qos == QoS::AtMostOnce { 0 } else { 2 };
        let body = 2 + topic.len() + id + props.total + self.payload.len();
        if topic.len() > u16::MAX as usize {
            return Err(EncodeError::FieldTooLong);
        }
        let byte0 = 0x30 | ((d.dup as u8) << 3) | ((d.qos as u8) << 1) | d.retain as u8;
        fixed_header(out, byte0, body)?;
        put_binary(out, topic)?;
        if d.qos != QoS::AtMostOnce {
            out.put_u16(nonzero(d.packet_id)?);
        }
        write_props(out, properties, version, props)?;
        out.put_slice(&self.payload);
        Ok(())
    }
}

/// The per-subscriber header fields of an outgoing PUBLISH (see [`Publish::encode_as`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// DUP: a retransmission.
    pub dup: bool,
    /// The QoS this subscriber gets (the message's, downgraded to the granted QoS).
    pub qos: QoS,
    /// RETAIN as this subscriber sees it (set when sent because of a new subscription).
    pub retain: bool,
    /// Packet identifier; ignored for QoS 0.
    pub packet_id: u16,
}

/// The 5.0 tail of acknowledgements, DISCONNECT and AUTH: omitted entirely when the reason is
/// success and there are no properties; the reason alone when there are no properties.
fn tail_len(
    reason: ReasonCode,
    p: &Properties,
    version: Version,
    t: PacketType,
) -> Result<(usize, Block), EncodeError> {
    if !version.is_v5() {
        return Ok((0, Block::default()));
    }
    if p.is_empty() {
        return Ok((usize::from(reason != ReasonCode::SUCCESS), Block::default()));
    }
    let props = props_len(p, version, PropertyContext::Packet(t))?;
    Ok((1 + props.total, props))
}

fn write_tail(
    out: &mut BytesMut,
    reason: ReasonCode,
    p: &Properties,
    version: Version,
    tail: (usize, Block),
) -> Result<(), EncodeError> {
    if tail.0 > 0 {
        out.put_u8(reason.0);
    }
    if tail.1.total > 0 {
        write_props(out, p, version, tail.1)?;
    }
    Ok(())
}

fn pub_ack(
    a: &PubAck,
    byte0: u8,
    t: PacketType,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let tail = tail_len(a.reason, &a.properties, version, t)?;
    fixed_header(out, byte0, 2 + tail.0)?;
    out.put_u16(nonzero(a.packet_id)?);
    write_tail(out, a.reason, &a.properties, version, tail)
}

fn connect(c: &Connect, out: &mut BytesMut) -> Result<(), EncodeError> {
    let version = c.version;
    let name = version.protocol_name();
    let props = props_len(
        &c.properties,
        version,
        PropertyContext::Packet(PacketType::Connect),
    )?;
    let mut body = 2 + name.len() + 1 + 1 + 2 + props.total + 2 + c.client_id.len();
    let mut flags = (c.clean_start as u8) << 1;
    let mut will_props = Block::default();
    if let Some(w) = &c.will {
        will_props = props_len(&w.properties, version, PropertyContext::Will)?;
        body += will_props.total + 2 + w.topic.len() + 2 + w.payload.len();
        flags |= 0x04 | ((w.qos as u8) << 3) | ((w.retain as u8) << 5);
    }
    if let Some(u) = &c.username {
        body += 2 + u.len();
        flags |= 0x80;
    }
    if let Some(p) = &c.password {
        body += 2 + p.len();
        flags |= 0x40;
    }
    fixed_header(out, 0x10, body)?;
    put_binary(out, name)?;
    out.put_u8(version as u8);
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    write_props(out, &c.properties, version, props)?;
    put_binary(out, c.client_id.as_bytes())?;
    if let Some(w) = &c.will {
        write_props(out, &w.properties, version, will_props)?;
        put_binary(out, w.topic.as_bytes())?;
        put_binary(out, &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_binary(out, u.as_bytes())?;
    }
    if let Some(p) = &c.password {
        put_binary(out, p)?;
    }
    Ok(())
}

fn conn_ack(a: &ConnAck, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    let props = props_len(
        &a.properties,
        version,
        PropertyContext::Packet(PacketType::ConnAck),
    )?;
    fixed_header(out, 0x20, 2 + props.total)?;
    // 3.1 has no Session Present flag: the byte is reserved.
    out.put_u8((a.session_present && version != Version::V3_1) as u8);
    out.put_u8(if version.is_v5() {
        a.reason.0
    } else {
        a.reason.to_v3_connack()
    });
    write_props(out, &a.properties, version, props)
}

fn subscribe(s: &Subscribe, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    let props = props_len(
        &s.properties,
        version,
        PropertyContext::Packet(PacketType::Subscribe),
    )?;
    let body = 2 + props.total + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
    fixed_header(out, 0x82, body)?;
    out.put_u16(nonzero(s.packet_id)?);
    write_props(out, &s.properties, version, props)?;
    for (f, o) in &s.filters {
        put_binary(out, f.as_bytes())?;
        let mut b = o.qos as u8;
        if version.is_v5() {
            b |= (o.no_local as u8) << 2
                | (o.retain_as_published as u8) << 3
                | (o.retain_handling as u8) << 4;
        }
        out.put_u8(b);
    }
    Ok(())
}

fn sub_ack(s: &SubAck, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    let props = props_len(
        &s.properties,
        version,
        PropertyContext::Packet(PacketType::SubAck),
    )?;
    fixed_header(out, 0x90, 2 + props.total + s.reasons.len())?;
    out.put_u16(nonzero(s.packet_id)?);
    write_props(out, &s.properties, version, props)?;
    for r in &s.reasons {
        out.put_u8(if version.is_v5() {
            r.0
        } else {
            r.to_v3_suback()
        });
    }
    Ok(())
}

fn unsubscribe(u: &Unsubscribe, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    let props = props_len(
        &u.properties,
        version,
        PropertyContext::Packet(PacketType::Unsubscribe),
    )?;
    let body = 2 + props.total + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
    fixed_header(out, 0xa2, body)?;
    out.put_u16(nonzero(u.packet_id)?);
    write_props(out, &u.properties, version, props)?;
    for f in &u.filters {
        put_binary(out, f.as_bytes())?;
    }
    Ok(())
}

fn unsub_ack(u: &UnsubAck, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
    let props = props_len(
        &u.properties,
        version,
        PropertyContext::Packet(PacketType::UnsubAck),
    )?;
    let codes = if version.is_v5() { u.reasons.len() } else { 0 };
    fixed_header(out, 0xb0, 2 + props.total + codes)?;
    out.put_u16(nonzero(u.packet_id)?);
    write_props(out, &u.properties, version, props)?;
    if version.is_v5() {
        for r in &u.reasons {
            out.put_u8(r.0);
        }
    }
    Ok(())
}

fn reason_only(
    byte0: u8,
    t: PacketType,
    reason: ReasonCode,
    p: &Properties,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let tail = tail_len(reason, p, version, t)?;
    fixed_header(out, byte0, tail.0)?;
    write_tail(out, reason, p, version, tail)
}

impl Packet {
    /// Appends this packet, encoded for `version`, to `out`. A CONNECT is always written in
    /// its own `version` field's protocol.
    pub fn encode(&self, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Packet::Publish(p) => p.encode(version, out),
            Packet::PubAck(a) => pub_ack(a, 0x40, PacketType::PubAck, version, out),
            Packet::PubRec(a) => pub_ack(a, 0x50, PacketType::PubRec, version, out),
            Packet::PubRel(a) => pub_ack(a, 0x62, PacketType::PubRel, version, out),
            Packet::PubComp(a) => pub_ack(a, 0x70, PacketType::PubComp, version, out),
            Packet::Connect(c) => connect(c, out),
            Packet::ConnAck(a) => conn_ack(a, version, out),
            Packet::Subscribe(s) => subscribe(s, version, out),
            Packet::SubAck(s) => sub_ack(s, version, out),
            Packet::Unsubscribe(u) => unsubscribe(u, version, out),
            Packet::UnsubAck(u) => unsub_ack(u, version, out),
            Packet::PingReq => {
                out.put_slice(&[0xc0, 0x00]);
                Ok(())
            }
            Packet::PingResp => {
                out.put_slice(&[0xd0, 0x00]);
                Ok(())
            }
            Packet::Disconnect(d) => reason_only(
                0xe0,
                PacketType::Disconnect,
                d.reason,
                &d.properties,
                version,
                out,
            ),
            Packet::Auth(a) => {
                if !version.is_v5() {
                    return Err(EncodeError::NotInVersion);
                }
                reason_only(
                    0xf0,
                    PacketType::Auth,
                    a.reason,
                    &a.properties,
                    version,
                    out,
                )
            }
        }
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self, version: Version) -> Result<BytesMut, EncodeError> {
        let mut out = BytesMut::new();
        self.encode(version, &mut out)?;
        Ok(out)
    }
}
