//! How stored records are laid out on disk: a retained message is one value, versioned so a
//! later format can still read it.
//!
//! ```text
//!  retained/<topic>  =  u8 format (1) │ u64 expiry, Unix seconds (0: none) │ u16 origin length
//!                       │ origin client id │ the message as an MQTT 5.0 PUBLISH frame
//! ```
//!
//! The PUBLISH frame is written and read by the protocol codec itself, so every property the
//! message carries survives a restart exactly. No I/O; called on the store thread (encode
//! also on shards).

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::session::AppMessage;
use crate::protocol::{Packet, Publish, QoS, Str, Version, decode};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
