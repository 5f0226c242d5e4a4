//! How stored records are laid out on disk: a retained message is one value, versioned so a
//! later format can still read it.
//!
//! ```text
//!  retained/<topic>  =  u8 format (1) │ u64 expiry, Unix seconds (0: none) │ u16 origin length
//!                       │ origin client id │ the message as an MQTT 5.0 PUBLISH frame
//! ```
//!
//! A parked persistent session is one value, and each message queued for it while it is
//! parked one more (appended, so a queued message costs one small write, not a rewrite):
//!
//! ```text
//!  sessions/<client id>        =  u8 format │ u8 protocol level │ u32 expiry │ u64 session end,
//!                                 Unix s (0: never) │ u64 will due, Unix s (0: none)
//!                                 │ u32 n × subscription (u16 len, filter, u8 options, u32 id)
//!                                 │ u32 n × inflight (u16 id, u8 state, u8 has message, outgoing)
//!                                 │ u32 n × u16 incoming QoS 2 id │ u32 n × outgoing (queue)
//!                                 │ u8 has will (u32 delay, message)
//!  queued/<client id>\0<u64 seq> =  outgoing
//!  outgoing                    =  u8 QoS │ u8 retain │ u8 n × u32 subscription id
//!                                 │ u16 len, shared group │ u32 len, message (as retained)
//! ```
//!
//! The PUBLISH frame is written and read by the protocol codec itself, so every property the
//! message carries survives a restart exactly. Message deadlines are kept in Unix seconds and
//! turned back into broker seconds (a clock that starts at 0 with the process) when read. No
//! I/O; called on the store thread (encode also on shards).

use bytes::{BufMut, Bytes, BytesMut};

use std::sync::Arc;

use crate::protocol::inflight::OutState;
use crate::protocol::session::{AppMessage, Outgoing, SessionImage, Subscription};
use crate::protocol::{
    Packet, Publish, QoS, RetainHandling, Str, SubscriptionOptions, TopicFilter, Version, Will,
    decode,
};

/// The format written by this version.
pub const FORMAT: u8 = 1;

/// A record that cannot be read: its format and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord(pub String);

impl std::fmt::Display for CorruptRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Encodes a retained message whose deadline is `expires_unix` (Unix seconds).
pub fn encode_message(m: &AppMessage, expires_unix: Option<u64>) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(16 + m.origin.len() + m.topic.len() + m.payload.len());
    out.put_u8(FORMAT);
    out.put_u64(expires_unix.unwrap_or(0));
    let origin = m.origin.as_bytes();
    let origin = &origin[..origin.len().min(u16::MAX as usize)];
    out.put_u16(origin.len() as u16);
    out.put_slice(origin);
    let p = Publish {
        dup: false,
        // A QoS > 0 frame needs an identifier; it is not kept.
        packet_id: u16::from(m.qos != QoS::AtMostOnce),
        ..m.publish.clone()
    };
    // A message that was routed encodes (its fields were validated on the way in).
    let _ = Packet::Publish(p).encode(Version::V5, &mut out);
    out.to_vec()
}

/// Decodes a record written by [`encode_message`]: the message (packet id 0) and its deadline.
pub fn decode_message(value: &[u8]) -> Result<(AppMessage, Option<u64>), CorruptRecord> {
    let bad = |what: &str| CorruptRecord(format!("retained record: {what}"));
    let (&format, rest) = value.split_first().ok_or_else(|| bad("empty"))?;
    if format != FORMAT {
        return Err(bad(&format!(
            "format {format}, this shardmq reads format {FORMAT} (written by a newer version?)"
        )));
    }
    if rest.len() < 10 {
        return Err(bad("truncated header"));
    }
    let expiry = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
    let origin_len = usize::from(u16::from_be_bytes([rest[8], rest[9]]));
    let rest = &rest[10..];
    if rest.len() < origin_len {
        return Err(bad("truncated origin"));
    }
    let origin = Str::new(Bytes::copy_from_slice(&rest[..origin_len]))
        .map_err(|e| bad(&format!("origin: {e}")))?;
    let mut frame = BytesMut::from(&rest[origin_len..]);
    let publish = match decode(&mut frame, Version::V5, u32::MAX) {
        Ok(Some(Packet::Publish(p))) if frame.is_empty() => p,
        Ok(Some(_)) => return Err(bad("not a PUBLISH, or trailing bytes")),
        Ok(None) => return Err(bad("truncated message")),
        Err(e) => return Err(bad(&format!("message: {e}"))),
    };
    let publish = Publish {
        packet_id: 0,
        dup: false,
        ..publish
    };
    let m = AppMessage {
        publish,
        origin,
        expires_at: None,
    };
    Ok((m, (expiry != 0).then_some(expiry)))
}

/// Reads the fields of a record, front to back, failing (never panicking) on a short one.
struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn bad(&self, why: &str) -> CorruptRecord {
        CorruptRecord(format!("{} record: {why}", self.what))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptRecord> {
        if self.b.len() < n {
            return Err(self.bad("truncated"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CorruptRecord> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, CorruptRecord> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, CorruptRecord> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, CorruptRecord> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A count of items at least `min_size` bytes each: bounded by what is left, so a
    /// corrupt count cannot make the reader reserve memory the record could not fill.
    fn count(&mut self, min_size: usize) -> Result<usize, CorruptRecord> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size.max(1)) > self.b.len() {
            return Err(self.bad("count larger than the record"));
        }
        Ok(n)
    }
}

/// Broker seconds for a Unix deadline, on a broker whose clock started at `start_unix`.
fn to_broker(deadline_unix: u64, start_unix: u64) -> u32 {
    deadline_unix
        .saturating_sub(start_unix)
        .min(u64::from(u32::MAX)) as u32
}

fn put_outgoing(out: &mut BytesMut, o: &Outgoing, start_unix: u64) {
    put_delivery(out, &o.msg, o.qos, o.retain, o.ids(), o.share(), start_unix);
}

fn put_delivery(
    out: &mut BytesMut,
    msg: &AppMessage,
    qos: QoS,
    retain: bool,
    ids: &[u32],
    share: Option<&TopicFilter>,
    start_unix: u64,
) {
    out.put_u8(qos as u8);
    out.put_u8(u8::from(retain));
    let ids = &ids[..ids.len().min(255)];
    out.put_u8(ids.len() as u8);
    for &id in ids {
        out.put_u32(id);
    }
    let share = share.map_or(&[][..], |f| f.as_bytes());
    out.put_u16(share.len() as u16);
    out.put_slice(share);
    let unix = msg.expires_at.map(|at| start_unix + u64::from(at));
    let m = encode_message(msg, unix);
    out.put_u32(m.len() as u32);
    out.put_slice(&m);
}

/// Encodes one delivery to a persistent session (the `queued` partition) from its parts.
pub fn encode_delivery(
    msg: &AppMessage,
    qos: QoS,
    retain: bool,
    ids: &[u32],
    share: Option<&TopicFilter>,
    start_unix: u64,
) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(32 + msg.topic.len() + msg.payload.len());
    put_delivery(&mut out, msg, qos, retain, ids, share, start_unix);
    out.to_vec()
}

fn read_outgoing(r: &mut Reader<'_>, start_unix: u64, seq: u64) -> Result<Outgoing, CorruptRecord> {
    let qos = QoS::from_u8(r.u8()?).ok_or_else(|| r.bad("QoS 3"))?;
    let retain = r.u8()? != 0;
    let n = usize::from(r.u8()?);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(r.u32()?);
    }
    let share_len = usize::from(r.u16()?);
    let share = r.take(share_len)?;
    let share = if share.is_empty() {
        None
    } else {
        Some(
            TopicFilter::new(Bytes::copy_from_slice(share))
                .map_err(|e| r.bad(&format!("shared group: {e}")))?,
        )
    };
    let len = r.u32()? as usize;
    let (mut m, at) = decode_message(r.take(len)?)?;
    m.expires_at = at.map(|at| to_broker(at, start_unix));
    Ok(Outgoing::restored(
        Arc::new(m),
        qos,
        retain,
        &ids,
        share,
        seq,
    ))
}

/// Encodes a message queued for a parked session (the `queued` partition).
pub fn encode_outgoing(o: &Outgoing, start_unix: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_outgoing(&mut out, o, start_unix);
    out.to_vec()
}

/// Decodes [`encode_outgoing`] / [`encode_delivery`] (store sequence `seq`), on a broker
/// whose clock started at `start_unix`.
pub fn decode_outgoing(value: &[u8], start_unix: u64, seq: u64) -> Result<Outgoing, CorruptRecord> {
    let mut r = Reader {
        b: value,
        what: "queued message",
    };
    let o = read_outgoing(&mut r, start_unix, seq)?;
    if !r.b.is_empty() {
        return Err(r.bad("trailing bytes"));
    }
    Ok(o)
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

fn options_from(b: u8) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_u8(b & 3)?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        },
    })
}

/// When a parked session ends and when its delayed will is due, in Unix seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadlines {
    /// The session expires (None: never).
    pub session_end: Option<u64>,
    /// Its delayed will is due (None: no will waits).
    pub will_due: Option<u64>,
}

/// Encodes a parked session; message deadlines are turned into Unix seconds with
/// `start_unix` (the Unix time at which the broker's clock was 0).
pub fn encode_session(s: &SessionImage, d: Deadlines, start_unix: u64) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT);
    out.put_u8(s.version as u8);
    out.put_u32(s.expiry);
    out.put_u64(d.session_end.unwrap_or(0));
    out.put_u64(d.will_due.unwrap_or(0));
    out.put_u32(s.subscriptions.len() as u32);
    for (f, sub) in &s.subscriptions {
        out.put_u16(f.len() as u16);
        out.put_slice(f.as_bytes());
        out.put_u8(options_byte(&sub.options));
        out.put_u32(sub.id);
    }
    out.put_u32(s.inflight.len() as u32);
    for (id, state, o) in &s.inflight {
        out.put_u16(*id);
        out.put_u8(match state {
            OutState::AwaitPubAck => 0,
            OutState::AwaitPubRec => 1,
            OutState::AwaitPubComp => 2,
        });
        match o {
            Some(o) => {
                out.put_u8(1);
                put_outgoing(&mut out, o, start_unix);
            }
            None => out.put_u8(0),
        }
    }
    out.put_u32(s.inbound.len() as u32);
    for id in &s.inbound {
        out.put_u16(*id);
    }
    out.put_u32(s.queue.len() as u32);
    for o in &s.queue {
        put_outgoing(&mut out, o, start_unix);
    }
    match &s.will {
        Some(w) => {
            out.put_u8(1);
            let mut properties = w.properties.clone();
            let delay = properties.will_delay_interval.take().unwrap_or(0);
            out.put_u32(delay);
            let m = AppMessage::new(Publish {
                qos: w.qos,
                retain: w.retain,
                topic: w.topic.clone(),
                payload: w.payload.clone(),
                properties,
                ..Default::default()
            });
            let m = encode_message(&m, None);
            out.put_u32(m.len() as u32);
            out.put_slice(&m);
        }
        None => out.put_u8(0),
    }
    out.to_vec()
}

/// Decodes [`encode_session`] for `client_id`, on a broker whose clock started at
/// `start_unix`.
pub fn decode_session(
    client_id: &[u8],
    value: &[u8],
    start_unix: u64,
) -> Result<(SessionImage, Deadlines), CorruptRecord> {
    let mut r = Reader {
        b: value,
        what: "session",
    };
    let format = r.u8()?;
    if format != FORMAT {
        return Err(r.bad(&format!(
            "format {format}, this shardmq reads format {FORMAT} (written by a newer version?)"
        )));
    }
    let version = match r.u8()? {
        3 => Version::V3_1,
        4 => Version::V3_1_1,
        5 => Version::V5,
        v => return Err(r.bad(&format!("protocol level {v}"))),
    };
    let client_id =
        Str::new(Bytes::copy_from_slice(client_id)).map_err(|e| r.bad(&format!("id: {e}")))?;
    let expiry = r.u32()?;
    let end = r.u64()?;
    let due = r.u64()?;
    let d = Deadlines {
        session_end: (end != 0).then_some(end),
        will_due: (due != 0).then_some(due),
    };
    let n = r.count(7)?;
    let mut subscriptions = Vec::with_capacity(n);
    for _ in 0..n {
        let len = usize::from(r.u16()?);
        let f = TopicFilter::new(Bytes::copy_from_slice(r.take(len)?))
            .map_err(|e| r.bad(&format!("filter: {e}")))?;
        let options = options_from(r.u8()?).ok_or_else(|| r.bad("subscription options"))?;
        let id = r.u32()?;
        subscriptions.push((f, Subscription { options, id }));
    }
    let n = r.count(4)?;
    let mut inflight = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.u16()?;
        let state = match r.u8()? {
            0 => OutState::AwaitPubAck,
            1 => OutState::AwaitPubRec,
            2 => OutState::AwaitPubComp,
            _ => return Err(r.bad("inflight state")),
        };
        let o = match r.u8()? {
            0 => None,
            _ => Some(read_outgoing(&mut r, start_unix, 0)?),
        };
        inflight.push((id, state, o));
    }
    let n = r.count(2)?;
    let mut inbound = Vec::with_capacity(n);
    for _ in 0..n {
        inbound.push(r.u16()?);
    }
    let n = r.count(9)?;
    let mut queue = Vec::with_capacity(n);
    for _ in 0..n {
        queue.push(read_outgoing(&mut r, start_unix, 0)?);
    }
    let will = match r.u8()? {
        0 => None,
        _ => {
            let delay = r.u32()?;
            let len = r.u32()? as usize;
            let (m, _) = decode_message(r.take(len)?)?;
            let mut properties = m.publish.properties;
            if delay > 0 {
                properties.will_delay_interval = Some(delay);
            }
            Some(Will {
                topic: m.publish.topic,
                payload: m.publish.payload,
                qos: m.publish.qos,
                retain: m.publish.retain,
                properties,
            })
        }
    };
    if !r.b.is_empty() {
        return Err(r.bad("trailing bytes"));
    }
    let image = SessionImage {
        client_id,
        version,
        expiry,
        subscriptions,
        inflight,
        inbound,
        queue,
        will,
    };
    Ok((image, d))
}

/// Encodes an outgoing QoS 2 delivery in flight (the `inflight` partition, keyed by client
/// id and packet identifier): its store sequence number, and whether PUBREC came.
pub fn encode_inflight(seq: u64, released: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(9);
    v.extend_from_slice(&seq.to_be_bytes());
    v.push(u8::from(released));
    v
}

/// The packet identifier at the end of an `inflight` / `inbound` key.
pub fn decode_packet_id(key: &[u8]) -> Option<u16> {
    let at = key.len().checked_sub(2)?;
    let id = u16::from_be_bytes([key[at], key[at + 1]]);
    (id != 0).then_some(id)
}

/// Decodes an `inflight` record: (packet identifier, store sequence, PUBREC came).
pub fn decode_inflight(key: &[u8], value: &[u8]) -> Option<(u16, u64, bool)> {
    let id = decode_packet_id(key)?;
    let seq = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let released = match value.get(8)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    (value.len() == 9).then_some((id, seq, released))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_records_round_trip_and_bad_ones_are_refused() {
        let key = [b"client".as_slice(), &[0], &7u16.to_be_bytes()].concat();
        assert_eq!(
            decode_inflight(&key, &encode_inflight(42, true)),
            Some((7, 42, true))
        );
        assert_eq!(
            decode_inflight(&key, &encode_inflight(1, false)),
            Some((7, 1, false))
        );
        assert_eq!(decode_inflight(&key, &[0; 8]), None, "short");
        assert_eq!(
            decode_inflight(&key, &[0, 0, 0, 0, 0, 0, 0, 1, 2]),
            None,
            "state 2"
        );
        assert_eq!(decode_packet_id(b"c\0\0\0"), None, "packet id 0");
    }

    fn message() -> AppMessage {
        let mut p = Publish {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            payload: Bytes::from_static(b"21.5"),
            ..Default::default()
        };
        p.properties.content_type = Some(Str::from("text/plain"));
        p.properties.user_properties = vec![("k".into(), "1".into()), ("k".into(), "2".into())];
        AppMessage {
            publish: p,
            origin: Str::from("sensor-1"),
            expires_at: Some(9),
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let m = message();
        let v = encode_message(&m, Some(1_800_000_000));
        let (back, expiry) = decode_message(&v).unwrap();
        assert_eq!(expiry, Some(1_800_000_000));
        assert_eq!(back.publish, m.publish);
        assert_eq!(back.origin, m.origin);
        let (_, none) = decode_message(&encode_message(&m, None)).unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn every_truncation_and_a_newer_format_are_errors_not_panics() {
        let v = encode_message(&message(), None);
        for n in 0..v.len() {
            assert!(decode_message(&v[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut newer = v.clone();
        newer[0] = 9;
        let e = decode_message(&newer).unwrap_err();
        assert!(e.0.contains("format 9"), "{e}");
        let mut junk = v;
        junk.push(0);
        assert!(decode_message(&junk).is_err());
    }

    fn image() -> SessionImage {
        let m = Arc::new(message());
        let group = TopicFilter::from("$share/g/a/#");
        let mut will_props = crate::protocol::Properties::default();
        will_props.will_delay_interval = Some(30);
        will_props.content_type = Some(Str::from("text/plain"));
        SessionImage {
            client_id: Str::from("dev-1"),
            version: Version::V5,
            expiry: 3600,
            subscriptions: vec![
                (
                    TopicFilter::from("a/+"),
                    Subscription {
                        options: SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: RetainHandling::DoNotSend,
                        },
                        id: 7,
                    },
                ),
                (group.clone(), Subscription::default()),
            ],
            inflight: vec![
                (
                    3,
                    OutState::AwaitPubAck,
                    Some(Outgoing::restored(
                        m.clone(),
                        QoS::AtLeastOnce,
                        false,
                        &[7],
                        None,
                        0,
                    )),
                ),
                (4, OutState::AwaitPubComp, None),
            ],
            inbound: vec![9, 10],
            queue: vec![Outgoing::restored(
                m,
                QoS::ExactlyOnce,
                true,
                &[],
                Some(group),
                0,
            )],
            will: Some(Will {
                topic: "w".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: will_props,
            }),
        }
    }

    #[test]
    fn a_session_round_trips() {
        let img = image();
        let d = Deadlines {
            session_end: Some(1_900_000_000),
            will_due: Some(1_800_000_030),
        };
        // The message expires at broker second 9 on a clock that started at Unix 1000.
        let v = encode_session(&img, d, 1000);
        let (back, d2) = decode_session(b"dev-1", &v, 1000).unwrap();
        assert_eq!(d2, d);
        assert_eq!(back.client_id, img.client_id);
        assert_eq!(back.version, img.version);
        assert_eq!(back.expiry, 3600);
        assert_eq!(back.subscriptions, img.subscriptions);
        assert_eq!(back.inbound, img.inbound);
        assert_eq!(back.will, img.will);
        assert_eq!(back.inflight.len(), 2);
        let (id, state, o) = &back.inflight[0];
        let o = o.as_ref().unwrap();
        assert_eq!(
            (*id, *state, o.qos, o.ids()),
            (3, OutState::AwaitPubAck, QoS::AtLeastOnce, &[7][..])
        );
        assert_eq!(o.msg.publish, message().publish);
        assert_eq!(o.msg.expires_at, Some(9));
        assert!(back.inflight[1].2.is_none());
        let q = &back.queue[0];
        assert_eq!((q.qos, q.retain), (QoS::ExactlyOnce, true));
        assert_eq!(q.share().unwrap().as_str(), "$share/g/a/#");
        // Read on a broker started 5 s later: the deadline is 5 s nearer.
        let (later, _) = decode_session(b"dev-1", &v, 1005).unwrap();
        assert_eq!(later.queue[0].msg.expires_at, Some(4));
    }

    #[test]
    fn a_damaged_session_record_is_an_error_not_a_panic() {
        let v = encode_session(&image(), Deadlines::default(), 0);
        for n in 0..v.len() {
            assert!(decode_session(b"x", &v[..n], 0).is_err(), "prefix {n}");
        }
        let mut huge = v.clone();
        // The subscription count, made absurd.
        huge[22..26].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_session(b"x", &huge, 0).is_err());
        let o = Outgoing::restored(Arc::new(message()), QoS::AtMostOnce, false, &[], None, 0);
        let q = encode_outgoing(&o, 0);
        for n in 0..q.len() {
            assert!(decode_outgoing(&q[..n], 0, 1).is_err(), "prefix {n}");
        }
        let back = decode_outgoing(&q, 0, 7).unwrap();
        assert_eq!((back.seq, &back.msg.publish), (7, &message().publish));
    }
}
