//! Byte-exact vectors and refusal tables for the MQTT codec (`shardmq::protocol`).
//!
//! - Every one of the fifteen control packets, in every protocol version that has it (3.1,
//!   3.1.1, 5.0; AUTH only in 5.0), as wire bytes written out by hand from the MQTT 3.1.1 and
//!   5.0 specifications (using the specs' own examples where they give one) next to the
//!   expected [`Packet`]: `decode` must yield exactly that packet and consume the whole
//!   buffer, and `Packet::encode` must give back exactly those bytes.
//! - Incremental decoding: strict prefixes need more bytes and consume nothing; packets
//!   back to back come out one at a time; a trailing partial packet is left in the buffer.
//! - The maximum packet size is enforced from the fixed header alone.
//! - A table of malformed and forbidden inputs, each with the spec statement (`Error::rule`)
//!   and the MQTT 5.0 reason code the codec must report.
//! - Spot checks that 3.1.1 acknowledgements decode with 5.0 defaults and that 5.0-only
//!   fields are left out when encoding for 3.1.1.
//! - Regression tests for codec bugs this suite found, each asserting what the spec requires.

use bytes::{Bytes, BytesMut};
use shardmq::protocol::{
    Auth, ConnAck, Connect, Disconnect, EncodeError, Packet, Properties, PropertyValues, PubAck,
    Publish, QoS, ReasonCode, RetainHandling, Str, SubAck, Subscribe, SubscriptionOptions,
    TopicFilter, TopicName, UnsubAck, Unsubscribe, Version, Will, decode,
};

use Version::{V3_1, V3_1_1, V5};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Concatenates hand-written pieces of a frame.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn s(v: &'static str) -> Str {
    Str::from_static(v)
}

fn topic(v: &'static str) -> TopicName {
    TopicName::from_static(v)
}

fn filter(v: &'static str) -> TopicFilter {
    TopicFilter::from_static(v)
}

fn bin(v: &'static [u8]) -> Bytes {
    Bytes::from_static(v)
}

fn user(k: &'static str, v: &'static str) -> (Str, Str) {
    (s(k), s(v))
}

fn props(v: PropertyValues) -> Properties {
    v.into()
}

fn none() -> Properties {
    Properties::default()
}

fn ack(packet_id: u16, reason: u8, properties: Properties) -> PubAck {
    PubAck {
        packet_id,
        reason: ReasonCode(reason),
        properties,
    }
}

fn opts(qos: QoS, no_local: bool, rap: bool, rh: RetainHandling) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local,
        retain_as_published: rap,
        retain_handling: rh,
    }
}

/// Decodes `wire` whole into `packet` and encodes `packet` back into exactly `wire`.
#[track_caller]
fn vector(version: Version, (wire, packet): (Vec<u8>, Packet)) {
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        decode(&mut buf, version, u32::MAX),
        Ok(Some(packet.clone())),
        "decode {version:?} {wire:02x?}"
    );
    assert!(buf.is_empty(), "{version:?}: {} bytes left over", buf.len());
    let mut out = BytesMut::new();
    assert_eq!(
        packet.encode(version, &mut out),
        Ok(()),
        "encode {version:?} {packet:?}"
    );
    assert_eq!(&out[..], &wire[..], "encode {version:?} {packet:?}");
}

/// Asserts that `decode` refuses the complete frame `bytes` with `rule` and `reason`.
#[track_caller]
fn refused(name: &str, version: Version, bytes: &[u8], rule: &str, reason: u8) {
    if let Some(problem) = refusal_problem(name, version, bytes, rule, reason) {
        panic!("{problem}");
    }
}

/// What is wrong with a refusal row, if anything.
fn refusal_problem(
    name: &str,
    version: Version,
    bytes: &[u8],
    rule: &str,
    reason: u8,
) -> Option<String> {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, version, u32::MAX) {
        Err(e) if e.rule == rule && e.reason == ReasonCode(reason) => None,
        other => Some(format!(
            "{name} ({version:?}, {bytes:02x?}): expected Err [{rule}] 0x{reason:02X}, got {other:?}"
        )),
    }
}

// Builders for the refusal table, so each row shows only what is wrong with it.

/// A frame with a one-byte remaining length.
fn frame(byte0: u8, body: &[u8]) -> Vec<u8> {
    let len = u8::try_from(body.len())
        .ok()
        .filter(|&n| n < 0x80)
        .expect("short body");
    cat(&[&[byte0, len], body])
}

/// A two-byte length prefix and `b`.
fn lp(b: &[u8]) -> Vec<u8> {
    let n = u16::try_from(b.len()).expect("short field");
    cat(&[&n.to_be_bytes(), b])
}

/// CONNECT with protocol name "MQTT" ("MQIsdp" for level 3), `level`, `flags`, keep alive 60,
/// then `rest` (properties for 5.0, then the payload).
fn connect_frame(level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
    frame(0x10, &cat(&[&lp(name), &[level, flags, 0x00, 0x3c], rest]))
}

/// A 3.1.1 CONNECT, clean session, with client identifier `id` and nothing else.
fn connect_id(id: &[u8]) -> Vec<u8> {
    connect_frame(4, 0x02, &lp(id))
}

/// A 5.0 CONNECT, clean start, with the property block `p` (without its length) and client
/// identifier "c".
fn connect_props(p: &[u8]) -> Vec<u8> {
    connect_frame(5, 0x02, &cat(&[&[p.len() as u8], p, &lp(b"c")]))
}

/// PUBLISH with first byte `byte0`, topic `t`, packet identifier 1 when QoS > 0, an empty
/// property block in 5.0, and no payload.
fn publish_frame(version: Version, byte0: u8, t: &[u8]) -> Vec<u8> {
    let id: &[u8] = if byte0 & 0x06 != 0 {
        &[0x00, 0x01]
    } else {
        &[]
    };
    let p: &[u8] = if version == V5 { &[0x00] } else { &[] };
    frame(byte0, &cat(&[&lp(t), id, p]))
}

/// SUBSCRIBE, packet identifier 1, an empty property block in 5.0, one filter and options.
fn subscribe_frame(version: Version, f: &[u8], options: u8) -> Vec<u8> {
    let p: &[u8] = if version == V5 { &[0x00] } else { &[] };
    frame(0x82, &cat(&[&[0x00, 0x01], p, &lp(f), &[options]]))
}

// ---------------------------------------------------------------------------------------------
// 1. Byte-exact vectors
// ---------------------------------------------------------------------------------------------

/// MQTT 3.1.1 §3.1.2 CONNECT variable header example (Figure 3.6: flags 0xCE, keep alive 10
/// as in §3.1.2.10 Figure 3.8) with a will, user name and password in the payload.
fn connect_v311_spec_example() -> (Vec<u8>, Packet) {
    let wire = cat(&[
        &[0x10, 0x25],   // CONNECT, remaining length 37
        b"\x00\x04MQTT", // protocol name "MQTT"
        &[0x04],         // protocol level 4
        &[0xce],         // user name, password, will QoS 1, will, clean session
        &[0x00, 0x0a],   // keep alive 10 s
        b"\x00\x03cid",  // client identifier "cid"
        b"\x00\x03w/t",  // will topic "w/t"
        b"\x00\x03bye",  // will message "bye"
        b"\x00\x04user", // user name "user"
        b"\x00\x04pass", // password "pass"
    ]);
    let packet = Packet::Connect(Box::new(Connect {
        version: V3_1_1,
        clean_start: true,
        keep_alive: 10,
        client_id: s("cid"),
        will: Some(Will {
            topic: topic("w/t"),
            payload: bin(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: none(),
        }),
        username: Some(s("user")),
        password: Some(bin(b"pass")),
        properties: none(),
    }));
    (wire, packet)
}

/// MQTT 3.1 CONNECT: protocol name "MQIsdp", level 3, a retained QoS 2 will.
fn connect_v31() -> (Vec<u8>, Packet) {
    let wire = cat(&[
        &[0x10, 0x16],     // CONNECT, remaining length 22
        b"\x00\x06MQIsdp", // protocol name "MQIsdp"
        &[0x03],           // protocol level 3
        &[0x36],           // will retain, will QoS 2, will, clean session
        &[0x00, 0x3c],     // keep alive 60 s
        b"\x00\x02c1",     // client identifier "c1"
        b"\x00\x01t",      // will topic "t"
        b"\x00\x01x",      // will message "x"
    ]);
    let packet = Packet::Connect(Box::new(Connect {
        version: V3_1,
        clean_start: true,
        keep_alive: 60,
        client_id: s("c1"),
        will: Some(Will {
            topic: topic("t"),
            payload: bin(b"x"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: none(),
        }),
        username: None,
        password: None,
        properties: none(),
    }));
    (wire, packet)
}

/// MQTT 5.0 §3.1.2.11 CONNECT variable header example (Figure 3-6: flags 0xCE, keep alive
/// 10, Session Expiry Interval 10), with an empty will property block.
fn connect_v5_spec_example() -> (Vec<u8>, Packet) {
    let wire = cat(&[
        &[0x10, 0x2c],                   // CONNECT, remaining length 44
        b"\x00\x04MQTT",                 // protocol name "MQTT"
        &[0x05],                         // protocol version 5
        &[0xce],                         // user name, password, will QoS 1, will, clean start
        &[0x00, 0x0a],                   // keep alive 10 s
        &[0x05],                         // property length 5
        &[0x11, 0x00, 0x00, 0x00, 0x0a], // session expiry interval 10 s
        b"\x00\x03cid",                  // client identifier "cid"
        &[0x00],                         // will property length 0
        b"\x00\x03w/t",                  // will topic "w/t"
        b"\x00\x03bye",                  // will payload "bye"
        b"\x00\x04user",                 // user name "user"
        b"\x00\x04pass",                 // password "pass"
    ]);
    let packet = Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive: 10,
        client_id: s("cid"),
        will: Some(Will {
            topic: topic("w/t"),
            payload: bin(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: none(),
        }),
        username: Some(s("user")),
        password: Some(bin(b"pass")),
        properties: props(PropertyValues {
            session_expiry_interval: Some(10),
            ..Default::default()
        }),
    }));
    (wire, packet)
}

/// MQTT 5.0 CONNECT with many properties, user properties in order with a repeated name, and
/// will properties; remaining length 144 takes two bytes.
fn connect_v5_full() -> (Vec<u8>, Packet) {
    let wire = cat(&[
        &[0x10, 0x90, 0x01],             // CONNECT, remaining length 144
        b"\x00\x04MQTT",                 // protocol name "MQTT"
        &[0x05],                         // protocol version 5
        &[0xae],                         // user name, will retain, will QoS 1, will, clean
        &[0x00, 0x1e],                   // keep alive 30 s
        &[0x36],                         // property length 54
        &[0x11, 0x00, 0x00, 0x0e, 0x10], // session expiry interval 3600
        b"\x15\x00\x05SCRAM",            // authentication method "SCRAM"
        &[0x16, 0x00, 0x02, 0x01, 0x02], // authentication data 01 02
        &[0x17, 0x00],                   // request problem information 0
        &[0x19, 0x01],                   // request response information 1
        &[0x21, 0x00, 0x14],             // receive maximum 20
        &[0x22, 0x00, 0x0a],             // topic alias maximum 10
        b"\x26\x00\x01k\x00\x011",       // user property k=1
        b"\x26\x00\x01a\x00\x01x",       // user property a=x
        b"\x26\x00\x01k\x00\x012",       // user property k=2 (name repeated)
        &[0x27, 0x00, 0x00, 0x04, 0x00], // maximum packet size 1024
        b"\x00\x05dev-1",                // client identifier "dev-1"
        &[0x2b],                         // will property length 43
        &[0x01, 0x01],                   // payload format indicator 1 (UTF-8)
        &[0x02, 0x00, 0x00, 0x00, 0x3c], // message expiry interval 60
        b"\x03\x00\x0atext/plain",       // content type "text/plain"
        b"\x08\x00\x03r/t",              // response topic "r/t"
        &[0x09, 0x00, 0x02, 0xca, 0xfe], // correlation data ca fe
        &[0x18, 0x00, 0x00, 0x00, 0x05], // will delay interval 5
        b"\x26\x00\x01w\x00\x011",       // user property w=1
        b"\x00\x0adev/status",           // will topic "dev/status"
        b"\x00\x07offline",              // will payload "offline"
        b"\x00\x05alice",                // user name "alice"
    ]);
    let packet = Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive: 30,
        client_id: s("dev-1"),
        will: Some(Will {
            topic: topic("dev/status"),
            payload: bin(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: props(PropertyValues {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some(s("text/plain")),
                response_topic: Some(s("r/t")),
                correlation_data: Some(bin(&[0xca, 0xfe])),
                will_delay_interval: Some(5),
                user_properties: vec![user("w", "1")],
                ..Default::default()
            }),
        }),
        username: Some(s("alice")),
        password: None,
        properties: props(PropertyValues {
            session_expiry_interval: Some(3600),
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(bin(&[0x01, 0x02])),
            request_problem_information: Some(0),
            request_response_information: Some(1),
            receive_maximum: Some(20),
            topic_alias_maximum: Some(10),
            user_properties: vec![user("k", "1"), user("a", "x"), user("k", "2")],
            maximum_packet_size: Some(1024),
            ..Default::default()
        }),
    }));
    (wire, packet)
}

#[test]
fn connect_vectors() {
    vector(V3_1, connect_v31());
    vector(V3_1_1, connect_v311_spec_example());
    vector(V5, connect_v5_spec_example());
    vector(V5, connect_v5_full());
}

/// A password without a user name is refused in 3.1.1 (see the refusal table) but is
/// allowed in 5.0 (§3.1.2.9) and accepted in 3.1.
#[test]
fn connect_password_without_user_name_outside_3_1_1() {
    let packet = |version| {
        Packet::Connect(Box::new(Connect {
            version,
            clean_start: true,
            keep_alive: 60,
            client_id: s("c1"),
            will: None,
            username: None,
            password: Some(bin(b"pw")),
            properties: none(),
        }))
    };
    let v31 = cat(&[
        &[0x10, 0x14],     // CONNECT, remaining length 20
        b"\x00\x06MQIsdp", // protocol name "MQIsdp"
        &[0x03],           // protocol level 3
        &[0x42],           // password, clean session; no user name
        &[0x00, 0x3c],     // keep alive 60 s
        b"\x00\x02c1",     // client identifier "c1"
        b"\x00\x02pw",     // password "pw"
    ]);
    vector(V3_1, (v31, packet(V3_1)));
    let v5 = cat(&[
        &[0x10, 0x13],   // CONNECT, remaining length 19
        b"\x00\x04MQTT", // protocol name "MQTT"
        &[0x05],         // protocol version 5
        &[0x42],         // password, clean start; no user name
        &[0x00, 0x3c],   // keep alive 60 s
        &[0x00],         // property length 0
        b"\x00\x02c1",   // client identifier "c1"
        b"\x00\x02pw",   // password "pw"
    ]);
    vector(V5, (v5, packet(V5)));
}

fn connack_v5_full() -> (Vec<u8>, Packet) {
    let wire = cat(&[
        &[0x20, 0x55],                   // CONNACK, remaining length 85
        &[0x00],                         // no session present
        &[0x00],                         // reason: success
        &[0x52],                         // property length 82
        &[0x11, 0xff, 0xff, 0xff, 0xff], // session expiry interval: never
        b"\x12\x00\x06auto-1",           // assigned client identifier "auto-1"
        &[0x13, 0x00, 0x78],             // server keep alive 120
        b"\x1a\x00\x05resp/",            // response information "resp/"
        b"\x1c\x00\x0aother:1883",       // server reference "other:1883"
        b"\x1f\x00\x07welcome",          // reason string "welcome"
        &[0x21, 0x00, 0x64],             // receive maximum 100
        &[0x22, 0x00, 0x10],             // topic alias maximum 16
        &[0x24, 0x01],                   // maximum QoS 1
        &[0x25, 0x00],                   // retain available 0
        b"\x26\x00\x06region\x00\x02eu", // user property region=eu
        &[0x27, 0x00, 0x01, 0x00, 0x00], // maximum packet size 65536
        &[0x28, 0x01],                   // wildcard subscription available 1
        &[0x29, 0x00],                   // subscription identifiers available 0
        &[0x2a, 0x01],                   // shared subscription available 1
    ]);
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::SUCCESS,
        properties: props(PropertyValues {
            session_expiry_interval: Some(u32::MAX),
            assigned_client_identifier: Some(s("auto-1")),
            server_keep_alive: Some(120),
            response_information: Some(s("resp/")),
            server_reference: Some(s("other:1883")),
            reason_string: Some(s("welcome")),
            receive_maximum: Some(100),
            topic_alias_maximum: Some(16),
            maximum_qos: Some(1),
            retain_available: Some(0),
            user_properties: vec![user("region", "eu")],
            maximum_packet_size: Some(65_536),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(0),
            shared_subscription_available: Some(1),
            ..Default::default()
        }),
    });
    (wire, packet)
}

#[test]
fn connack_vectors() {
    let connack = |session_present, reason| {
        Packet::ConnAck(ConnAck {
            session_present,
            reason,
            properties: none(),
        })
    };
    // 3.1: the first byte is reserved; return code 2 "identifier rejected".
    let wire = vec![
        0x20, 0x02, // CONNACK, remaining length 2
        0x00, // reserved
        0x02, // return code 2: identifier rejected
    ];
    vector(
        V3_1,
        (
            wire,
            connack(false, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        ),
    );
    let wire = vec![
        0x20, 0x02, // CONNACK, remaining length 2
        0x01, // session present
        0x00, // return code 0: accepted
    ];
    vector(V3_1_1, (wire, connack(true, ReasonCode::SUCCESS)));
    let wire = vec![
        0x20, 0x02, // CONNACK, remaining length 2
        0x00, // no session present
        0x05, // return code 5: not authorized
    ];
    vector(V3_1_1, (wire, connack(false, ReasonCode::NOT_AUTHORIZED)));
    let wire = vec![
        0x20, 0x03, // CONNACK, remaining length 3
        0x01, // session present
        0x00, // reason: success
        0x00, // property length 0
    ];
    vector(V5, (wire, connack(true, ReasonCode::SUCCESS)));
    let wire = vec![
        0x20, 0x03, // CONNACK, remaining length 3
        0x00, // no session present
        0x9c, // reason: use another server
        0x00, // property length 0
    ];
    vector(V5, (wire, connack(false, ReasonCode::USE_ANOTHER_SERVER)));
    vector(V5, connack_v5_full());
}

/// A PUBLISH without DUP, RETAIN or properties; an empty `topic_name` leaves the topic empty,
/// as in a 5.0 PUBLISH that names its topic by alias.
fn publish(qos: QoS, topic_name: &'static str, packet_id: u16, payload: &'static [u8]) -> Publish {
    let mut p = Publish {
        qos,
        packet_id,
        payload: bin(payload),
        ..Publish::default()
    };
    if !topic_name.is_empty() {
        p.topic = topic(topic_name);
    }
    p
}

/// MQTT 3.1.1 §3.3.2 PUBLISH variable header example (Figure 3.11: topic "a/b", packet
/// identifier 10).
fn publish_v311_spec_example() -> (Vec<u8>, Packet) {
    let wire = cat(&[
        &[0x32, 0x0c],  // PUBLISH QoS 1, remaining length 12
        b"\x00\x03a/b", // topic name "a/b"
        &[0x00, 0x0a],  // packet identifier 10
        b"hello",       // payload
    ]);
    (
        wire,
        Packet::Publish(publish(QoS::AtLeastOnce, "a/b", 10, b"hello")),
    )
}

/// MQTT 5.0 PUBLISH with an empty topic name and a topic alias, and the other message
/// properties, including two subscription identifiers (the second a two-byte varint).
fn publish_v5_full() -> (Vec<u8>, Packet) {
    let wire = cat(&[
        &[0x32, 0x32],                         // PUBLISH QoS 1, remaining length 50
        &[0x00, 0x00],                         // topic name "" (the alias names it)
        &[0x00, 0x01],                         // packet identifier 1
        &[0x2b],                               // property length 43
        &[0x02, 0x00, 0x00, 0x0e, 0x10],       // message expiry interval 3600
        b"\x03\x00\x04json",                   // content type "json"
        b"\x08\x00\x07reply/1",                // response topic "reply/1"
        &[0x09, 0x00, 0x03, 0x00, 0x01, 0x02], // correlation data 00 01 02
        &[0x0b, 0x01],                         // subscription identifier 1
        &[0x0b, 0xc8, 0x01],                   // subscription identifier 200
        &[0x23, 0x00, 0x05],                   // topic alias 5
        b"\x26\x00\x01k\x00\x01v",             // user property k=v
        b"{}",                                 // payload
    ]);
    let mut p = publish(QoS::AtLeastOnce, "", 1, b"{}");
    p.properties = props(PropertyValues {
        message_expiry_interval: Some(3600),
        content_type: Some(s("json")),
        response_topic: Some(s("reply/1")),
        correlation_data: Some(bin(&[0x00, 0x01, 0x02])),
        subscription_identifiers: vec![1, 200],
        topic_alias: Some(5),
        user_properties: vec![user("k", "v")],
        ..Default::default()
    });
    (wire, Packet::Publish(p))
}

static PAYLOAD: [u8; 130] = [b'x'; 130];

/// A QoS 0 PUBLISH whose 130-byte payload makes the remaining length take two bytes.
fn publish_long(version: Version) -> (Vec<u8>, Packet) {
    let header: &[u8] = if version == V5 {
        &[0x30, 0x86, 0x01, 0x00, 0x01, b'a', 0x00] // remaining 134, topic "a", no properties
    } else {
        &[0x30, 0x85, 0x01, 0x00, 0x01, b'a'] // remaining 133, topic "a"
    };
    let wire = cat(&[header, &PAYLOAD]);
    (
        wire,
        Packet::Publish(publish(QoS::AtMostOnce, "a", 0, &PAYLOAD)),
    )
}

#[test]
fn publish_vectors() {
    // 3.1, QoS 0.
    let wire = cat(&[
        &[0x30, 0x07],  // PUBLISH QoS 0, remaining length 7
        b"\x00\x03a/b", // topic name "a/b"
        b"hi",          // payload
    ]);
    vector(
        V3_1,
        (
            wire,
            Packet::Publish(publish(QoS::AtMostOnce, "a/b", 0, b"hi")),
        ),
    );
    // 3.1, QoS 2, retain.
    let wire = cat(&[
        &[0x35, 0x08],  // PUBLISH QoS 2 RETAIN, remaining length 8
        b"\x00\x03a/b", // topic name "a/b"
        &[0x00, 0x0a],  // packet identifier 10
        b"x",           // payload
    ]);
    let mut p = publish(QoS::ExactlyOnce, "a/b", 10, b"x");
    p.retain = true;
    vector(V3_1, (wire, Packet::Publish(p)));
    // 3.1 did not forbid DUP on a QoS 0 message (3.1.1 [MQTT-3.3.1-2] does).
    let wire = cat(&[
        &[0x38, 0x03], // PUBLISH DUP QoS 0, remaining length 3
        b"\x00\x01a",  // topic name "a", no payload
    ]);
    let mut p = publish(QoS::AtMostOnce, "a", 0, b"");
    p.dup = true;
    vector(V3_1, (wire, Packet::Publish(p)));

    vector(V3_1_1, publish_v311_spec_example());
    // 3.1.1, DUP QoS 2 RETAIN, empty payload.
    let wire = cat(&[
        &[0x3d, 0x10],           // PUBLISH DUP QoS 2 RETAIN, remaining length 16
        b"\x00\x0csport/tennis", // topic name "sport/tennis"
        &[0x12, 0x34],           // packet identifier 0x1234
    ]);
    let mut p = publish(QoS::ExactlyOnce, "sport/tennis", 0x1234, b"");
    (p.dup, p.retain) = (true, true);
    vector(V3_1_1, (wire, Packet::Publish(p)));
    vector(V3_1, publish_long(V3_1));
    vector(V3_1_1, publish_long(V3_1_1));
    vector(V5, publish_long(V5));

    // MQTT 5.0 §3.3.2 PUBLISH variable header example: topic "a/b", packet identifier 10,
    // no properties.
    let wire = cat(&[
        &[0x32, 0x0d],  // PUBLISH QoS 1, remaining length 13
        b"\x00\x03a/b", // topic name "a/b"
        &[0x00, 0x0a],  // packet identifier 10
        &[0x00],        // property length 0
        b"hello",       // payload
    ]);
    vector(
        V5,
        (
            wire,
            Packet::Publish(publish(QoS::AtLeastOnce, "a/b", 10, b"hello")),
        ),
    );
    // 5.0, QoS 0 RETAIN, a topic name and the alias it sets up, UTF-8 payload.
    let wire = cat(&[
        &[0x31, 0x0d],       // PUBLISH QoS 0 RETAIN, remaining length 13
        b"\x00\x03a/b",      // topic name "a/b"
        &[0x05],             // property length 5
        &[0x01, 0x01],       // payload format indicator 1 (UTF-8)
        &[0x23, 0x00, 0x01], // topic alias 1
        b"ok",               // payload
    ]);
    let mut p = publish(QoS::AtMostOnce, "a/b", 0, b"ok");
    p.retain = true;
    p.properties = props(PropertyValues {
        payload_format_indicator: Some(1),
        topic_alias: Some(1),
        ..Default::default()
    });
    vector(V5, (wire, Packet::Publish(p)));
    vector(V5, publish_v5_full());
}

/// Wraps the shared acknowledgement shape into one of the four packets.
type AckKind = fn(PubAck) -> Packet;

/// PUBACK, PUBREC, PUBREL and PUBCOMP: first byte and how to wrap the shared shape.
const ACKS: [(u8, AckKind); 4] = [
    (0x40, Packet::PubAck),
    (0x50, Packet::PubRec),
    (0x62, Packet::PubRel),
    (0x70, Packet::PubComp),
];

#[test]
fn pub_ack_family_vectors_all_versions() {
    for (byte0, wrap) in ACKS {
        for version in [V3_1, V3_1_1, V5] {
            let wire = vec![
                byte0, 0x02, // fixed header, remaining length 2
                0x00, 0x0a, // packet identifier 10
            ];
            vector(version, (wire, wrap(PubAck::new(10))));
        }
    }
}

#[test]
fn pub_ack_family_vectors_v5() {
    // PUBACK, 3-byte form: packet identifier and reason code.
    let wire = vec![
        0x40, 0x03, // PUBACK, remaining length 3
        0x00, 0x0a, // packet identifier 10
        0x10, // reason: no matching subscribers
    ];
    vector(V5, (wire, Packet::PubAck(ack(10, 0x10, none()))));
    // PUBACK with properties.
    let wire = cat(&[
        &[0x40, 0x14],             // PUBACK, remaining length 20
        &[0x00, 0x0a],             // packet identifier 10
        &[0x87],                   // reason: not authorized
        &[0x10],                   // property length 16
        b"\x1f\x00\x06denied",     // reason string "denied"
        b"\x26\x00\x01a\x00\x01b", // user property a=b
    ]);
    let p = props(PropertyValues {
        reason_string: Some(s("denied")),
        user_properties: vec![user("a", "b")],
        ..Default::default()
    });
    vector(V5, (wire, Packet::PubAck(ack(10, 0x87, p))));
    let wire = vec![
        0x50, 0x03, // PUBREC, remaining length 3
        0x00, 0x0b, // packet identifier 11
        0x10, // reason: no matching subscribers
    ];
    vector(V5, (wire, Packet::PubRec(ack(11, 0x10, none()))));
    let wire = vec![
        0x62, 0x03, // PUBREL, remaining length 3
        0x00, 0x0c, // packet identifier 12
        0x92, // reason: packet identifier not found
    ];
    vector(V5, (wire, Packet::PubRel(ack(12, 0x92, none()))));
    let wire = vec![
        0x70, 0x03, // PUBCOMP, remaining length 3
        0x00, 0x0d, // packet identifier 13
        0x92, // reason: packet identifier not found
    ];
    vector(V5, (wire, Packet::PubComp(ack(13, 0x92, none()))));
    // Success with properties: the reason code byte is still written.
    let wire = cat(&[
        &[0x70, 0x0a],      // PUBCOMP, remaining length 10
        &[0x00, 0x0d],      // packet identifier 13
        &[0x00],            // reason: success
        &[0x06],            // property length 6
        b"\x1f\x00\x03ok!", // reason string "ok!"
    ]);
    let p = props(PropertyValues {
        reason_string: Some(s("ok!")),
        ..Default::default()
    });
    vector(V5, (wire, Packet::PubComp(ack(13, 0x00, p))));
}

/// MQTT 5.0 SUBSCRIBE using every option bit, a shared subscription and a three-byte
/// subscription identifier.
fn subscribe_v5_full() -> (Vec<u8>, Packet) {
    let wire = cat(&[
        &[0x82, 0x25],             // SUBSCRIBE, remaining length 37
        &[0x01, 0x02],             // packet identifier 0x0102
        &[0x0b],                   // property length 11
        &[0x0b, 0x80, 0x80, 0x01], // subscription identifier 16384
        b"\x26\x00\x01a\x00\x01b", // user property a=b
        b"\x00\x03a/+",            // filter "a/+"
        &[0x2e],                   // retain handling 2, retain as published, no local, QoS 2
        b"\x00\x0a$share/g/#",     // filter "$share/g/#"
        &[0x19],                   // retain handling 1, retain as published, QoS 1
        b"\x00\x01x",              // filter "x"
        &[0x00],                   // retain handling 0, QoS 0
    ]);
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 0x0102,
        filters: vec![
            (
                filter("a/+"),
                opts(QoS::ExactlyOnce, true, true, RetainHandling::DoNotSend),
            ),
            (
                filter("$share/g/#"),
                opts(QoS::AtLeastOnce, false, true, RetainHandling::SendIfNew),
            ),
            (filter("x"), SubscriptionOptions::default()),
        ],
        properties: props(PropertyValues {
            subscription_identifiers: vec![16_384],
            user_properties: vec![user("a", "b")],
            ..Default::default()
        }),
    });
    (wire, packet)
}

#[test]
fn subscribe_vectors() {
    let sub = |packet_id, filters: Vec<(TopicFilter, SubscriptionOptions)>| {
        Packet::Subscribe(Subscribe {
            packet_id,
            filters,
            properties: none(),
        })
    };
    let wire = cat(&[
        &[0x82, 0x08],  // SUBSCRIBE (QoS 1 in the fixed header), remaining length 8
        &[0x00, 0x0a],  // packet identifier 10
        b"\x00\x03a/b", // filter "a/b"
        &[0x01],        // requested QoS 1
    ]);
    vector(
        V3_1,
        (
            wire,
            sub(
                10,
                vec![(filter("a/b"), SubscriptionOptions::qos(QoS::AtLeastOnce))],
            ),
        ),
    );
    // MQTT 3.1.1 §3.8.2 / §3.8.3 examples: packet identifier 10, "a/b" QoS 1, "c/d" QoS 2.
    let two = || {
        vec![
            (filter("a/b"), SubscriptionOptions::qos(QoS::AtLeastOnce)),
            (filter("c/d"), SubscriptionOptions::qos(QoS::ExactlyOnce)),
        ]
    };
    let wire = cat(&[
        &[0x82, 0x0e],  // SUBSCRIBE, remaining length 14
        &[0x00, 0x0a],  // packet identifier 10
        b"\x00\x03a/b", // filter "a/b"
        &[0x01],        // requested QoS 1
        b"\x00\x03c/d", // filter "c/d"
        &[0x02],        // requested QoS 2
    ]);
    vector(V3_1_1, (wire, sub(10, two())));
    // MQTT 5.0 §3.8.2 / §3.8.3 examples: the same, with an empty property block.
    let wire = cat(&[
        &[0x82, 0x0f],  // SUBSCRIBE, remaining length 15
        &[0x00, 0x0a],  // packet identifier 10
        &[0x00],        // property length 0
        b"\x00\x03a/b", // filter "a/b"
        &[0x01],        // options: QoS 1
        b"\x00\x03c/d", // filter "c/d"
        &[0x02],        // options: QoS 2
    ]);
    vector(V5, (wire, sub(10, two())));
    vector(V5, subscribe_v5_full());
}

#[test]
fn suback_vectors() {
    let suback = |codes: &[u8], properties| {
        Packet::SubAck(SubAck {
            packet_id: 10,
            reasons: codes.iter().map(|&c| ReasonCode(c)).collect(),
            properties,
        })
    };
    let wire = vec![
        0x90, 0x03, // SUBACK, remaining length 3
        0x00, 0x0a, // packet identifier 10
        0x01, // granted QoS 1
    ];
    vector(V3_1, (wire, suback(&[0x01], none())));
    // MQTT 3.1.1 §3.9.3 payload example: granted QoS 0, granted QoS 2, failure.
    let wire = vec![
        0x90, 0x05, // SUBACK, remaining length 5
        0x00, 0x0a, // packet identifier 10
        0x00, // success, maximum QoS 0
        0x02, // success, maximum QoS 2
        0x80, // failure
    ];
    vector(V3_1_1, (wire, suback(&[0x00, 0x02, 0x80], none())));
    let wire = cat(&[
        &[0x90, 0x11],          // SUBACK, remaining length 17
        &[0x00, 0x0a],          // packet identifier 10
        &[0x0a],                // property length 10
        b"\x1f\x00\x07partial", // reason string "partial"
        &[0x01],                // granted QoS 1
        &[0x8f],                // topic filter invalid
        &[0xa2],                // wildcard subscriptions not supported
        &[0x97],                // quota exceeded
    ]);
    let p = props(PropertyValues {
        reason_string: Some(s("partial")),
        ..Default::default()
    });
    vector(V5, (wire, suback(&[0x01, 0x8f, 0xa2, 0x97], p)));
}

#[test]
fn unsubscribe_vectors() {
    let unsub = |filters, properties| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters,
            properties,
        })
    };
    let wire = cat(&[
        &[0xa2, 0x07],  // UNSUBSCRIBE (QoS 1 in the fixed header), remaining length 7
        &[0x00, 0x0a],  // packet identifier 10
        b"\x00\x03a/b", // filter "a/b"
    ]);
    vector(V3_1, (wire, unsub(vec![filter("a/b")], none())));
    // MQTT 3.1.1 §3.10.3 payload example: "a/b", "c/d".
    let wire = cat(&[
        &[0xa2, 0x0c],  // UNSUBSCRIBE, remaining length 12
        &[0x00, 0x0a],  // packet identifier 10
        b"\x00\x03a/b", // filter "a/b"
        b"\x00\x03c/d", // filter "c/d"
    ]);
    vector(
        V3_1_1,
        (wire, unsub(vec![filter("a/b"), filter("c/d")], none())),
    );
    let wire = cat(&[
        &[0xa2, 0x1b],             // UNSUBSCRIBE, remaining length 27
        &[0x00, 0x0a],             // packet identifier 10
        &[0x07],                   // property length 7
        b"\x26\x00\x01k\x00\x01v", // user property k=v
        b"\x00\x03a/b",            // filter "a/b"
        b"\x00\x0a$share/g/c",     // filter "$share/g/c"
    ]);
    let p = props(PropertyValues {
        user_properties: vec![user("k", "v")],
        ..Default::default()
    });
    vector(
        V5,
        (wire, unsub(vec![filter("a/b"), filter("$share/g/c")], p)),
    );
}

#[test]
fn unsuback_vectors() {
    for version in [V3_1, V3_1_1] {
        let wire = vec![
            0xb0, 0x02, // UNSUBACK, remaining length 2
            0x00, 0x0a, // packet identifier 10
        ];
        let packet = Packet::UnsubAck(UnsubAck {
            packet_id: 10,
            reasons: vec![],
            properties: none(),
        });
        vector(version, (wire, packet));
    }
    let wire = vec![
        0xb0, 0x07, // UNSUBACK, remaining length 7
        0x00, 0x0a, // packet identifier 10
        0x00, // property length 0
        0x00, // success
        0x11, // no subscription existed
        0x87, // not authorized
        0x8f, // topic filter invalid
    ];
    let reasons = [0x00, 0x11, 0x87, 0x8f].map(ReasonCode).to_vec();
    vector(
        V5,
        (
            wire,
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                reasons,
                properties: none(),
            }),
        ),
    );
}

#[test]
fn ping_vectors() {
    for version in [V3_1, V3_1_1, V5] {
        vector(version, (vec![0xc0, 0x00], Packet::PingReq)); // PINGREQ, remaining length 0
        vector(version, (vec![0xd0, 0x00], Packet::PingResp)); // PINGRESP, remaining length 0
    }
}

#[test]
fn disconnect_vectors() {
    for version in [V3_1, V3_1_1, V5] {
        // DISCONNECT, remaining length 0 (in 5.0: normal disconnection, no properties).
        vector(
            version,
            (vec![0xe0, 0x00], Packet::Disconnect(Disconnect::default())),
        );
    }
    let wire = vec![
        0xe0, 0x01, // DISCONNECT, remaining length 1
        0x04, // reason: disconnect with will message
    ];
    let d = Disconnect {
        reason: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
        properties: none(),
    };
    vector(V5, (wire, Packet::Disconnect(d)));
    let wire = cat(&[
        &[0xe0, 0x0d],                   // DISCONNECT, remaining length 13
        &[0x04],                         // reason: disconnect with will message
        &[0x0b],                         // property length 11
        &[0x11, 0x00, 0x00, 0x00, 0x3c], // session expiry interval 60
        b"\x1f\x00\x03bye",              // reason string "bye"
    ]);
    let d = Disconnect {
        reason: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
        properties: props(PropertyValues {
            session_expiry_interval: Some(60),
            reason_string: Some(s("bye")),
            ..Default::default()
        }),
    };
    vector(V5, (wire, Packet::Disconnect(d)));
}

#[test]
fn auth_vectors() {
    // AUTH, remaining length 0: success, no properties.
    vector(V5, (vec![0xf0, 0x00], Packet::Auth(Auth::default())));
    let wire = cat(&[
        &[0xf0, 0x17],                               // AUTH, remaining length 23
        &[0x18],                                     // reason: continue authentication
        &[0x15],                                     // property length 21
        b"\x15\x00\x0bSCRAM-SHA-1",                  // authentication method "SCRAM-SHA-1"
        &[0x16, 0x00, 0x04, 0x01, 0x02, 0x03, 0x04], // authentication data 01 02 03 04
    ]);
    let a = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: props(PropertyValues {
            authentication_method: Some(s("SCRAM-SHA-1")),
            authentication_data: Some(bin(&[0x01, 0x02, 0x03, 0x04])),
            ..Default::default()
        }),
    };
    vector(V5, (wire, Packet::Auth(a)));
    let wire = cat(&[
        &[0xf0, 0x0a],        // AUTH, remaining length 10
        &[0x19],              // reason: re-authenticate
        &[0x08],              // property length 8
        b"\x15\x00\x05SCRAM", // authentication method "SCRAM"
    ]);
    let a = Auth {
        reason: ReasonCode::RE_AUTHENTICATE,
        properties: props(PropertyValues {
            authentication_method: Some(s("SCRAM")),
            ..Default::default()
        }),
    };
    vector(V5, (wire, Packet::Auth(a)));
    // AUTH does not exist before 5.0.
    for version in [V3_1, V3_1_1] {
        let mut out = BytesMut::new();
        assert_eq!(
            Packet::Auth(Auth::default()).encode(version, &mut out),
            Err(EncodeError::NotInVersion)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Incremental decoding
// ---------------------------------------------------------------------------------------------

fn incremental_samples() -> Vec<(Version, (Vec<u8>, Packet))> {
    vec![
        (V3_1_1, connect_v311_spec_example()),
        (V5, connect_v5_full()),
        (V5, connack_v5_full()),
        (V3_1_1, publish_long(V3_1_1)),
        (V5, publish_v5_full()),
        (V5, subscribe_v5_full()),
        (V5, (vec![0xc0, 0x00], Packet::PingReq)),
    ]
}

#[test]
fn strict_prefixes_need_more_and_consume_nothing() {
    for (version, (wire, _)) in incremental_samples() {
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(
                decode(&mut buf, version, u32::MAX),
                Ok(None),
                "{version:?} prefix {cut} of {wire:02x?}"
            );
            assert_eq!(
                &buf[..],
                &wire[..cut],
                "{version:?} prefix {cut} was consumed"
            );
        }
    }
}

#[test]
fn packets_back_to_back_decode_one_at_a_time() {
    let second = [0x40, 0x02, 0x00, 0x0a]; // PUBACK, packet identifier 10
    for (version, (first, packet)) in incremental_samples() {
        let mut buf = BytesMut::from(&cat(&[&first, &second])[..]);
        assert_eq!(decode(&mut buf, version, u32::MAX), Ok(Some(packet)));
        assert_eq!(&buf[..], &second[..]);
        assert_eq!(
            decode(&mut buf, version, u32::MAX),
            Ok(Some(Packet::PubAck(PubAck::new(10))))
        );
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf, version, u32::MAX), Ok(None));
    }
}

#[test]
fn a_trailing_partial_packet_stays_in_the_buffer() {
    let (first, p1) = publish_v311_spec_example();
    let (next, _) = connect_v311_spec_example();
    // Cut the next packet inside its fixed header, inside its variable header, one short.
    for cut in [1, 2, 7, next.len() - 1] {
        let mut buf = BytesMut::from(&cat(&[&first, &next[..cut]])[..]);
        assert_eq!(decode(&mut buf, V3_1_1, u32::MAX), Ok(Some(p1.clone())));
        assert_eq!(&buf[..], &next[..cut]);
        assert_eq!(decode(&mut buf, V3_1_1, u32::MAX), Ok(None));
        assert_eq!(&buf[..], &next[..cut], "Ok(None) consumed bytes");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Maximum packet size
// ---------------------------------------------------------------------------------------------

#[test]
fn oversized_packets_are_refused_from_the_fixed_header() {
    // (fixed header alone, whole frame length it announces)
    let headers: [(&[u8], u32); 4] = [
        (&[0x30, 0x7f], 2 + 127),                           // remaining length 127
        (&[0x30, 0x80, 0x01], 3 + 128),                     // remaining length 128
        (&[0x30, 0x80, 0x80, 0x01], 4 + 16_384),            // remaining length 16 384
        (&[0x30, 0xff, 0xff, 0xff, 0x7f], 5 + 268_435_455), // remaining length 268 435 455
    ];
    for version in [V3_1, V3_1_1, V5] {
        for (header, frame_len) in headers {
            let mut buf = BytesMut::from(header);
            let e = decode(&mut buf, version, frame_len - 1).unwrap_err();
            assert_eq!(
                (e.rule, e.reason),
                ("MQTT-3.2.2-15", ReasonCode::PACKET_TOO_LARGE),
                "{header:02x?}"
            );
            // At exactly the limit the header is fine and the body is awaited.
            let mut buf = BytesMut::from(header);
            assert_eq!(
                decode(&mut buf, version, frame_len),
                Ok(None),
                "{header:02x?}"
            );
            assert_eq!(&buf[..], header);
        }
    }
    // A small limit refuses a whole, small packet too.
    let (wire, _) = publish_v311_spec_example();
    let mut buf = BytesMut::from(&wire[..]);
    let e = decode(&mut buf, V3_1_1, wire.len() as u32 - 1).unwrap_err();
    assert_eq!(e.reason, ReasonCode::PACKET_TOO_LARGE);
    let mut buf = BytesMut::from(&wire[..]);
    assert!(
        decode(&mut buf, V3_1_1, wire.len() as u32)
            .unwrap()
            .is_some()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Refusals
// ---------------------------------------------------------------------------------------------

const MALFORMED: u8 = 0x81;
const PROTOCOL: u8 = 0x82;
const UNSUPPORTED_VERSION: u8 = 0x84;
const FILTER_INVALID: u8 = 0x8f;
const TOPIC_INVALID: u8 = 0x90;
const ALIAS_INVALID: u8 = 0x94;

/// (name, version, bytes, rule, reason code)
type Row = (&'static str, Version, Vec<u8>, &'static str, u8);

fn refusal_rows() -> Vec<Row> {
    const RESERVED_V311: &str = "MQTT-2.1.3-1"; // the 5.0 id: the rule is the same in both
    const RESERVED_V5: &str = "MQTT-2.1.3-1";
    const SUB_OPTS_V311: &str = "3.1.1 MQTT-3-8.3-4"; // sic: the identifier as 3.1.1 prints it
    let ab = b"\x00\x03a/b".as_slice();
    vec![
        // Fixed header.
        (
            "remaining length of 5 bytes",
            V5,
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
            "§1.5.5",
            MALFORMED,
        ),
        (
            "remaining length of 5 bytes",
            V3_1_1,
            vec![0x30, 0x80, 0x80, 0x80, 0x80, 0x01],
            "§1.5.5",
            MALFORMED,
        ),
        (
            "non-minimal remaining length",
            V5,
            vec![0x30, 0x80, 0x00],
            "MQTT-1.5.5-1",
            MALFORMED,
        ),
        (
            "non-minimal remaining length",
            V3_1_1,
            vec![0x30, 0x80, 0x00],
            "MQTT-1.5.5-1",
            MALFORMED,
        ),
        (
            "non-minimal 3-byte remaining length",
            V5,
            vec![0xe0, 0x80, 0x80, 0x00],
            "MQTT-1.5.5-1",
            MALFORMED,
        ),
        (
            "PUBACK flags 0001",
            V3_1_1,
            vec![0x41, 0x02, 0x00, 0x01],
            RESERVED_V311,
            MALFORMED,
        ),
        (
            "PUBACK flags 0001",
            V5,
            vec![0x41, 0x02, 0x00, 0x01],
            RESERVED_V5,
            MALFORMED,
        ),
        (
            "PUBREL flags 0000",
            V3_1_1,
            vec![0x60, 0x02, 0x00, 0x01],
            RESERVED_V311,
            MALFORMED,
        ),
        (
            "PUBREL flags 0000",
            V5,
            vec![0x60, 0x02, 0x00, 0x01],
            RESERVED_V5,
            MALFORMED,
        ),
        (
            "SUBSCRIBE flags 0000",
            V3_1_1,
            frame(0x80, &cat(&[&[0x00, 0x01], ab, &[0x00]])),
            RESERVED_V311,
            MALFORMED,
        ),
        (
            "SUBSCRIBE flags 0000",
            V5,
            frame(0x80, &cat(&[&[0x00, 0x01, 0x00], ab, &[0x00]])),
            RESERVED_V5,
            MALFORMED,
        ),
        (
            "UNSUBSCRIBE flags 0000",
            V3_1_1,
            frame(0xa0, &cat(&[&[0x00, 0x01], ab])),
            RESERVED_V311,
            MALFORMED,
        ),
        (
            "UNSUBSCRIBE flags 0000",
            V5,
            frame(0xa0, &cat(&[&[0x00, 0x01, 0x00], ab])),
            RESERVED_V5,
            MALFORMED,
        ),
        (
            "PINGREQ flags 0001",
            V3_1_1,
            vec![0xc1, 0x00],
            RESERVED_V311,
            MALFORMED,
        ),
        (
            "PINGREQ flags 1000",
            V5,
            vec![0xc8, 0x00],
            RESERVED_V5,
            MALFORMED,
        ),
        (
            "CONNECT flags 0001",
            V3_1_1,
            vec![0x11, 0x00],
            RESERVED_V311,
            MALFORMED,
        ),
        (
            "CONNECT flags 0010",
            V5,
            vec![0x12, 0x00],
            RESERVED_V5,
            MALFORMED,
        ),
        (
            "PUBLISH QoS 3",
            V3_1,
            publish_frame(V3_1, 0x36, b"a"),
            "MQTT-3.3.1-4",
            MALFORMED,
        ),
        (
            "PUBLISH QoS 3",
            V3_1_1,
            publish_frame(V3_1_1, 0x36, b"a"),
            "MQTT-3.3.1-4",
            MALFORMED,
        ),
        (
            "PUBLISH QoS 3",
            V5,
            publish_frame(V5, 0x37, b"a"),
            "MQTT-3.3.1-4",
            MALFORMED,
        ),
        (
            "PUBLISH DUP on QoS 0",
            V3_1_1,
            publish_frame(V3_1_1, 0x38, b"a"),
            "MQTT-3.3.1-2",
            MALFORMED,
        ),
        (
            "PUBLISH DUP on QoS 0",
            V5,
            publish_frame(V5, 0x39, b"a"),
            "MQTT-3.3.1-2",
            MALFORMED,
        ),
        (
            "reserved packet type 0",
            V3_1_1,
            vec![0x00, 0x00],
            "§2.1.2",
            MALFORMED,
        ),
        (
            "reserved packet type 0",
            V5,
            vec![0x00, 0x00],
            "§2.1.2",
            MALFORMED,
        ),
        (
            "AUTH in 3.1.1",
            V3_1_1,
            vec![0xf0, 0x00],
            "3.1.1 §2.2.1",
            MALFORMED,
        ),
        (
            "AUTH in 3.1",
            V3_1,
            vec![0xf0, 0x00],
            "3.1.1 §2.2.1",
            MALFORMED,
        ),
        (
            "PINGREQ with remaining length 1",
            V3_1_1,
            vec![0xc0, 0x01, 0x00],
            "§3.12.1",
            MALFORMED,
        ),
        (
            "PINGREQ with remaining length 1",
            V5,
            vec![0xc0, 0x01, 0x00],
            "§3.12.1",
            MALFORMED,
        ),
        // UTF-8 strings: topic names and client identifiers.
        (
            "topic: overlong '/'",
            V3_1_1,
            publish_frame(V3_1_1, 0x30, b"a\xc0\xafb"),
            "MQTT-1.5.4-1",
            MALFORMED,
        ),
        (
            "topic: overlong U+0000",
            V5,
            publish_frame(V5, 0x30, b"\xc0\x80"),
            "MQTT-1.5.4-1",
            MALFORMED,
        ),
        (
            "topic: surrogate U+D800",
            V3_1_1,
            publish_frame(V3_1_1, 0x30, b"\xed\xa0\x80"),
            "MQTT-1.5.4-1",
            MALFORMED,
        ),
        (
            "topic: surrogate U+D800",
            V5,
            publish_frame(V5, 0x32, b"a/\xed\xa0\x80"),
            "MQTT-1.5.4-1",
            MALFORMED,
        ),
        (
            "topic: lone continuation byte",
            V3_1_1,
            publish_frame(V3_1_1, 0x30, b"a\x80b"),
            "MQTT-1.5.4-1",
            MALFORMED,
        ),
        (
            "topic: U+0000",
            V3_1_1,
            publish_frame(V3_1_1, 0x30, b"a\x00b"),
            "MQTT-1.5.4-2",
            MALFORMED,
        ),
        (
            "topic: U+0000",
            V5,
            publish_frame(V5, 0x30, b"a/b/c/d/e\x00"),
            "MQTT-1.5.4-2",
            MALFORMED,
        ),
        (
            "client id: overlong 'A'",
            V3_1_1,
            connect_id(b"\xc1\x81"),
            "MQTT-1.5.4-1",
            MALFORMED,
        ),
        (
            "client id: surrogate U+D800",
            V3_1_1,
            connect_id(b"id\xed\xa0\x80"),
            "MQTT-1.5.4-1",
            MALFORMED,
        ),
        (
            "client id: lone continuation byte",
            V3_1_1,
            connect_id(b"\xbf"),
            "MQTT-1.5.4-1",
            MALFORMED,
        ),
        (
            "client id: U+0000",
            V3_1_1,
            connect_id(b"id\x00"),
            "MQTT-1.5.4-2",
            MALFORMED,
        ),
        (
            "client id: U+0000",
            V5,
            connect_frame(5, 0x02, &[0x00, 0x00, 0x01, 0x00]),
            "MQTT-1.5.4-2",
            MALFORMED,
        ),
        // Topic names.
        (
            "'+' in a PUBLISH topic",
            V3_1_1,
            publish_frame(V3_1_1, 0x30, b"a/+"),
            "MQTT-3.3.2-2",
            MALFORMED,
        ),
        (
            "'#' in a PUBLISH topic",
            V3_1_1,
            publish_frame(V3_1_1, 0x32, b"a/#"),
            "MQTT-3.3.2-2",
            MALFORMED,
        ),
        (
            "'+' in a PUBLISH topic",
            V5,
            publish_frame(V5, 0x30, b"+"),
            "MQTT-3.3.2-2",
            MALFORMED,
        ),
        (
            "'#' in a PUBLISH topic",
            V5,
            publish_frame(V5, 0x34, b"sport/tennis#"),
            "MQTT-3.3.2-2",
            MALFORMED,
        ),
        (
            "empty PUBLISH topic",
            V3_1_1,
            vec![0x30, 0x02, 0x00, 0x00],
            "MQTT-4.7.3-1",
            TOPIC_INVALID,
        ),
        (
            "empty PUBLISH topic",
            V3_1,
            vec![0x32, 0x04, 0x00, 0x00, 0x00, 0x01],
            "MQTT-4.7.3-1",
            TOPIC_INVALID,
        ),
        (
            "empty topic without alias",
            V5,
            vec![0x30, 0x03, 0x00, 0x00, 0x00],
            "§3.3.2.1",
            PROTOCOL,
        ),
        (
            "empty topic, properties but no alias",
            V5,
            vec![0x30, 0x05, 0x00, 0x00, 0x02, 0x01, 0x00],
            "§3.3.2.1",
            PROTOCOL,
        ),
        (
            "topic alias 0",
            V5,
            vec![0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x00],
            "MQTT-3.3.2-8",
            ALIAS_INVALID,
        ),
        (
            "topic alias 0",
            V5,
            frame(0x30, &cat(&[ab, &[0x03, 0x23, 0x00, 0x00]])),
            "MQTT-3.3.2-8",
            ALIAS_INVALID,
        ),
        // Topic filters.
        (
            "filter a/#/b",
            V3_1_1,
            subscribe_frame(V3_1_1, b"a/#/b", 0),
            "MQTT-4.7.1-1",
            FILTER_INVALID,
        ),
        (
            "filter a#",
            V3_1_1,
            subscribe_frame(V3_1_1, b"a#", 0),
            "MQTT-4.7.1-1",
            FILTER_INVALID,
        ),
        (
            "filter a+/b",
            V3_1_1,
            subscribe_frame(V3_1_1, b"a+/b", 0),
            "MQTT-4.7.1-2",
            FILTER_INVALID,
        ),
        (
            "filter #a",
            V3_1_1,
            subscribe_frame(V3_1_1, b"#a", 0),
            "MQTT-4.7.1-1",
            FILTER_INVALID,
        ),
        (
            "filter a/#/b",
            V5,
            subscribe_frame(V5, b"a/#/b", 0),
            "MQTT-4.7.1-1",
            FILTER_INVALID,
        ),
        (
            "filter a+/b",
            V5,
            subscribe_frame(V5, b"a+/b", 0),
            "MQTT-4.7.1-2",
            FILTER_INVALID,
        ),
        (
            "unsubscribe filter a#",
            V5,
            frame(0xa2, &cat(&[&[0x00, 0x01, 0x00], b"\x00\x02a#"])),
            "MQTT-4.7.1-1",
            FILTER_INVALID,
        ),
        (
            "filter with U+0000",
            V3_1_1,
            subscribe_frame(V3_1_1, b"a/\x00", 0),
            "MQTT-1.5.4-2",
            MALFORMED,
        ),
        (
            "empty ShareName",
            V5,
            subscribe_frame(V5, b"$share//t", 0),
            "MQTT-4.8.2-1",
            FILTER_INVALID,
        ),
        (
            "ShareName without a filter",
            V5,
            subscribe_frame(V5, b"$share/g", 0),
            "MQTT-4.8.2-2",
            FILTER_INVALID,
        ),
        (
            "wildcard in a ShareName",
            V3_1_1,
            subscribe_frame(V3_1_1, b"$share/g+/t", 0),
            "MQTT-4.8.2-2",
            FILTER_INVALID,
        ),
        (
            "empty filter",
            V3_1_1,
            subscribe_frame(V3_1_1, b"", 0),
            "MQTT-4.7.3-1",
            FILTER_INVALID,
        ),
        // SUBSCRIBE / UNSUBSCRIBE payloads.
        (
            "SUBSCRIBE with no filter",
            V3_1_1,
            vec![0x82, 0x02, 0x00, 0x01],
            "MQTT-3.8.3-2",
            PROTOCOL,
        ),
        (
            "SUBSCRIBE with no filter",
            V5,
            vec![0x82, 0x03, 0x00, 0x01, 0x00],
            "MQTT-3.8.3-2",
            PROTOCOL,
        ),
        (
            "UNSUBSCRIBE with no filter",
            V3_1_1,
            vec![0xa2, 0x02, 0x00, 0x01],
            "MQTT-3.10.3-2",
            PROTOCOL,
        ),
        (
            "UNSUBSCRIBE with no filter",
            V5,
            vec![0xa2, 0x03, 0x00, 0x01, 0x00],
            "MQTT-3.10.3-2",
            PROTOCOL,
        ),
        (
            "subscription option bit 2 in 3.1.1",
            V3_1_1,
            subscribe_frame(V3_1_1, b"a", 0x04),
            SUB_OPTS_V311,
            MALFORMED,
        ),
        (
            "subscription option bit 7 in 3.1.1",
            V3_1_1,
            subscribe_frame(V3_1_1, b"a", 0x81),
            SUB_OPTS_V311,
            MALFORMED,
        ),
        (
            "subscription option bits 2-5 in 3.1",
            V3_1,
            subscribe_frame(V3_1, b"a", 0x3c),
            SUB_OPTS_V311,
            MALFORMED,
        ),
        (
            "subscription QoS 3 in 3.1.1",
            V3_1_1,
            subscribe_frame(V3_1_1, b"a", 0x03),
            SUB_OPTS_V311,
            MALFORMED,
        ),
        (
            "subscription option bit 6 in 5.0",
            V5,
            subscribe_frame(V5, b"a", 0x40),
            "MQTT-3.8.3-5",
            MALFORMED,
        ),
        (
            "subscription option bit 7 in 5.0",
            V5,
            subscribe_frame(V5, b"a", 0x81),
            "MQTT-3.8.3-5",
            MALFORMED,
        ),
        (
            "retain handling 3",
            V5,
            subscribe_frame(V5, b"a", 0x30),
            "§3.8.3.1",
            PROTOCOL,
        ),
        (
            "no local on $share/g/t",
            V5,
            subscribe_frame(V5, b"$share/g/t", 0x04),
            "MQTT-3.8.3-4",
            PROTOCOL,
        ),
        // CONNECT.
        (
            "will QoS 1 without will flag",
            V3_1_1,
            connect_frame(4, 0x0a, &lp(b"c")),
            "MQTT-3.1.2-11",
            MALFORMED,
        ),
        (
            "will QoS 2 without will flag",
            V5,
            connect_frame(5, 0x12, &[0x00, 0x00, 0x01, b'c']),
            "MQTT-3.1.2-11",
            MALFORMED,
        ),
        (
            "will retain without will flag",
            V3_1_1,
            connect_frame(4, 0x22, &lp(b"c")),
            "MQTT-3.1.2-13",
            MALFORMED,
        ),
        (
            "will retain without will flag",
            V5,
            connect_frame(5, 0x22, &[0x00, 0x00, 0x01, b'c']),
            "MQTT-3.1.2-13",
            MALFORMED,
        ),
        (
            "will QoS 3",
            V3_1_1,
            connect_frame(4, 0x1e, &cat(&[&lp(b"c"), &lp(b"t"), &lp(b"m")])),
            "MQTT-3.1.2-12",
            MALFORMED,
        ),
        (
            "will topic with '#'",
            V3_1_1,
            connect_frame(4, 0x06, &cat(&[&lp(b"c"), &lp(b"a/#"), &lp(b"m")])),
            "MQTT-3.3.2-2",
            TOPIC_INVALID,
        ),
        (
            "empty will topic",
            V5,
            connect_frame(
                5,
                0x06,
                &cat(&[&[0x00], &lp(b"c"), &[0x00], &lp(b""), &lp(b"m")]),
            ),
            "MQTT-4.7.3-1",
            TOPIC_INVALID,
        ),
        (
            "CONNECT reserved flag bit 0",
            V3_1_1,
            connect_frame(4, 0x03, &lp(b"c")),
            "MQTT-3.1.2-3",
            MALFORMED,
        ),
        (
            "CONNECT reserved flag bit 0",
            V5,
            connect_frame(5, 0x01, &[0x00, 0x00, 0x01, b'c']),
            "MQTT-3.1.2-3",
            MALFORMED,
        ),
        (
            "password without user name in 3.1.1",
            V3_1_1,
            connect_frame(4, 0x42, &cat(&[&lp(b"c"), &lp(b"pw")])),
            "3.1.1 MQTT-3.1.2-22",
            MALFORMED,
        ),
        (
            "protocol level 6",
            V5,
            connect_frame(6, 0x02, &lp(b"c")),
            "MQTT-3.1.2-2",
            UNSUPPORTED_VERSION,
        ),
        (
            "protocol level 3 with name MQTT",
            V3_1_1,
            frame(0x10, &cat(&[b"\x00\x04MQTT\x03\x02\x00\x3c", &lp(b"c")])),
            "MQTT-3.1.2-2",
            UNSUPPORTED_VERSION,
        ),
        (
            "protocol level 4 with name MQIsdp",
            V3_1_1,
            frame(0x10, &cat(&[b"\x00\x06MQIsdp\x04\x02\x00\x3c", &lp(b"c")])),
            "MQTT-3.1.2-2",
            UNSUPPORTED_VERSION,
        ),
        (
            "protocol name MQTX",
            V3_1_1,
            frame(0x10, &cat(&[b"\x00\x04MQTX\x04\x02\x00\x3c", &lp(b"c")])),
            "MQTT-3.1.2-1",
            UNSUPPORTED_VERSION,
        ),
        (
            "protocol name mqtt",
            V5,
            frame(
                0x10,
                &cat(&[b"\x00\x04mqtt\x05\x02\x00\x3c\x00", &lp(b"c")]),
            ),
            "MQTT-3.1.2-1",
            UNSUPPORTED_VERSION,
        ),
        // Packet identifiers.
        (
            "PUBLISH QoS 1 packet id 0",
            V3_1_1,
            frame(0x32, &cat(&[b"\x00\x01a", &[0x00, 0x00]])),
            "MQTT-2.2.1-3",
            PROTOCOL,
        ),
        (
            "PUBLISH QoS 2 packet id 0",
            V5,
            frame(0x34, &cat(&[b"\x00\x01a", &[0x00, 0x00, 0x00]])),
            "MQTT-2.2.1-3",
            PROTOCOL,
        ),
        (
            "PUBACK packet id 0",
            V3_1_1,
            vec![0x40, 0x02, 0x00, 0x00],
            "MQTT-2.2.1-3",
            PROTOCOL,
        ),
        (
            "PUBACK packet id 0",
            V5,
            vec![0x40, 0x02, 0x00, 0x00],
            "MQTT-2.2.1-3",
            PROTOCOL,
        ),
        (
            "SUBSCRIBE packet id 0",
            V3_1_1,
            frame(0x82, &cat(&[&[0x00, 0x00], ab, &[0x00]])),
            "MQTT-2.2.1-3",
            PROTOCOL,
        ),
        (
            "UNSUBSCRIBE packet id 0",
            V3_1_1,
            frame(0xa2, &cat(&[&[0x00, 0x00], ab])),
            "MQTT-2.2.1-3",
            PROTOCOL,
        ),
        (
            "UNSUBSCRIBE packet id 0",
            V5,
            frame(0xa2, &cat(&[&[0x00, 0x00, 0x00], ab])),
            "MQTT-2.2.1-3",
            PROTOCOL,
        ),
        // Properties.
        (
            "session expiry interval twice",
            V5,
            connect_props(&[0x11, 0x00, 0x00, 0x00, 0x01, 0x11, 0x00, 0x00, 0x00, 0x02]),
            "§3.1.2.11.2",
            PROTOCOL,
        ),
        (
            "topic alias twice",
            V5,
            frame(
                0x30,
                &cat(&[ab, &[0x06, 0x23, 0x00, 0x01, 0x23, 0x00, 0x02]]),
            ),
            "§3.3.2.3.4",
            PROTOCOL,
        ),
        (
            "subscription identifier twice in SUBSCRIBE",
            V5,
            frame(
                0x82,
                &cat(&[&[0x00, 0x01, 0x04, 0x0b, 0x01, 0x0b, 0x02], ab, &[0x00]]),
            ),
            "§3.8.2.1.2",
            PROTOCOL,
        ),
        (
            "topic alias in CONNECT",
            V5,
            connect_props(&[0x23, 0x00, 0x01]),
            "§2.2.2.2",
            MALFORMED,
        ),
        (
            "will delay interval in CONNECT",
            V5,
            connect_props(&[0x18, 0x00, 0x00, 0x00, 0x01]),
            "§2.2.2.2",
            MALFORMED,
        ),
        (
            "session expiry interval in PUBLISH",
            V5,
            frame(0x30, &cat(&[ab, &[0x05, 0x11, 0x00, 0x00, 0x00, 0x01]])),
            "§2.2.2.2",
            MALFORMED,
        ),
        (
            "reason string in PUBLISH",
            V5,
            frame(0x30, &cat(&[ab, &[0x04, 0x1f, 0x00, 0x01, b'r']])),
            "§2.2.2.2",
            MALFORMED,
        ),
        (
            "unknown property 0x7f",
            V5,
            vec![0xe0, 0x03, 0x00, 0x01, 0x7f],
            "§2.2.2.2",
            MALFORMED,
        ),
        (
            "receive maximum 0",
            V5,
            connect_props(&[0x21, 0x00, 0x00]),
            "§3.1.2.11.3",
            PROTOCOL,
        ),
        (
            "maximum packet size 0",
            V5,
            connect_props(&[0x27, 0x00, 0x00, 0x00, 0x00]),
            "§3.1.2.11.4",
            PROTOCOL,
        ),
        (
            "request problem information 2",
            V5,
            connect_props(&[0x17, 0x02]),
            "§3.1.2.11.7",
            PROTOCOL,
        ),
        (
            "request response information 2",
            V5,
            connect_props(&[0x19, 0x02]),
            "§3.1.2.11.6",
            PROTOCOL,
        ),
        (
            "subscription identifier 0",
            V5,
            frame(0x82, &cat(&[&[0x00, 0x01, 0x02, 0x0b, 0x00], ab, &[0x00]])),
            "§3.8.2.1.2",
            PROTOCOL,
        ),
        (
            "subscription identifier 0 in PUBLISH",
            V5,
            frame(0x30, &cat(&[ab, &[0x02, 0x0b, 0x00]])),
            "§3.8.2.1.2",
            PROTOCOL,
        ),
        // Lengths.
        (
            "topic length overruns the packet",
            V3_1_1,
            vec![0x30, 0x03, 0x00, 0x05, b'a'],
            "§1.5",
            MALFORMED,
        ),
        (
            "client id length overruns the packet",
            V3_1_1,
            connect_frame(4, 0x02, &[0x00, 0x09, b'c']),
            "§1.5",
            MALFORMED,
        ),
        (
            "property length overruns the packet",
            V5,
            vec![0x30, 0x05, 0x00, 0x01, b'a', 0x09, 0x01],
            "§1.5",
            MALFORMED,
        ),
        (
            "string inside properties overruns them",
            V5,
            vec![0xe0, 0x06, 0x00, 0x04, 0x1f, 0x00, 0x05, b'x'],
            "§1.5",
            MALFORMED,
        ),
        (
            "bytes left over after a PUBACK",
            V3_1_1,
            vec![0x40, 0x03, 0x00, 0x01, 0x00],
            "§2.1.4",
            MALFORMED,
        ),
        (
            "bytes left over after a DISCONNECT",
            V3_1_1,
            vec![0xe0, 0x01, 0x00],
            "§2.1.4",
            MALFORMED,
        ),
        (
            "bytes left over after a CONNACK",
            V3_1_1,
            vec![0x20, 0x03, 0x00, 0x00, 0x00],
            "§2.1.4",
            MALFORMED,
        ),
        // CONNACK.
        (
            "CONNACK return code 6",
            V3_1_1,
            vec![0x20, 0x02, 0x00, 0x06],
            "3.1.1 §3.2.2.3",
            MALFORMED,
        ),
        (
            "CONNACK reserved flag bit 1",
            V3_1_1,
            vec![0x20, 0x02, 0x02, 0x00],
            "MQTT-3.2.2-1",
            MALFORMED,
        ),
        (
            "session present with return code 5",
            V3_1_1,
            vec![0x20, 0x02, 0x01, 0x05],
            "MQTT-3.2.2-6",
            PROTOCOL,
        ),
        (
            "session present with reason 0x87",
            V5,
            vec![0x20, 0x03, 0x01, 0x87, 0x00],
            "MQTT-3.2.2-6",
            PROTOCOL,
        ),
    ]
}

#[test]
fn malformed_and_forbidden_inputs_are_refused() {
    let problems: Vec<String> = refusal_rows()
        .into_iter()
        .filter_map(|(name, version, bytes, rule, reason)| {
            refusal_problem(name, version, &bytes, rule, reason)
        })
        .collect();
    assert!(
        problems.is_empty(),
        "{} rows failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// A reason code a packet may not carry is a Protocol Error naming the packet's own "MUST use
/// one of the … Reason Codes" statement.
#[test]
fn reason_codes_not_listed_for_the_packet_are_refused() {
    let rows: [(&[u8], &str); 8] = [
        (&[0x40, 0x03, 0x00, 0x01, 0x02], "MQTT-3.4.2-1"), // PUBACK 0x02 (a SUBACK code)
        (&[0x50, 0x03, 0x00, 0x01, 0x92], "MQTT-3.5.2-1"), // PUBREC 0x92 (PUBREL / PUBCOMP only)
        (&[0x62, 0x03, 0x00, 0x01, 0x10], "MQTT-3.6.2-1"), // PUBREL 0x10 (PUBACK / PUBREC only)
        (&[0x70, 0x03, 0x00, 0x01, 0x80], "MQTT-3.7.2-1"), // PUBCOMP 0x80
        (&[0xb0, 0x04, 0x00, 0x01, 0x00, 0x04], "MQTT-3.11.3-2"), // UNSUBACK 0x04
        (&[0xe0, 0x01, 0x18], "MQTT-3.14.2-1"),            // DISCONNECT 0x18 (AUTH only)
        (&[0xf0, 0x02, 0x04, 0x00], "MQTT-3.15.2-1"),      // AUTH 0x04
        (&[0x20, 0x03, 0x00, 0x10, 0x00], "MQTT-3.2.2-8"), // CONNACK 0x10
    ];
    for (bytes, rule) in rows {
        let e = decode(&mut BytesMut::from(bytes), V5, u32::MAX).unwrap_err();
        assert_eq!(
            (e.rule, e.reason),
            (rule, ReasonCode::PROTOCOL_ERROR),
            "{bytes:02x?}: {e}"
        );
    }
    // 3.1.1 SUBACK knows only 0x00-0x02 and 0x80.
    let e = decode(
        &mut BytesMut::from(&[0x90, 0x03, 0x00, 0x01, 0x87][..]),
        V3_1_1,
        u32::MAX,
    )
    .unwrap_err();
    assert_eq!(
        (e.rule, e.reason),
        ("MQTT-3.9.3-2", ReasonCode::PROTOCOL_ERROR)
    );
}

/// AUTH: a reason code alone (remaining length 1) is malformed; a non-empty AUTH needs an
/// Authentication Method (5.0 §3.15.2.1, §3.15.2.2.2); SUBACK and UNSUBACK need a reason code.
#[test]
fn auth_and_ack_shapes() {
    refused(
        "AUTH reason only",
        V5,
        &[0xf0, 0x01, 0x18],
        "§3.15.2.1",
        MALFORMED,
    );
    refused(
        "AUTH without method",
        V5,
        &[0xf0, 0x02, 0x18, 0x00],
        "§3.15.2.2.2",
        PROTOCOL,
    );
    refused(
        "SUBACK without codes",
        V5,
        &[0x90, 0x03, 0x00, 0x01, 0x00],
        "§2.4",
        PROTOCOL,
    );
    refused(
        "SUBACK without codes",
        V3_1_1,
        &[0x90, 0x02, 0x00, 0x01],
        "§2.4",
        PROTOCOL,
    );
    refused(
        "UNSUBACK without codes",
        V5,
        &[0xb0, 0x03, 0x00, 0x01, 0x00],
        "§2.4",
        PROTOCOL,
    );
    refused("AUTH flags", V5, &[0xf1, 0x00], "MQTT-3.15.1-1", MALFORMED);
}

// Fixed codec bugs found by this suite: each asserts what the specification requires.

/// MQTT 5.0 §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
#[test]
fn v5_subscription_qos_3_is_a_protocol_error() {
    refused(
        "subscription QoS 3",
        V5,
        &subscribe_frame(V5, b"a", 0x03),
        "§3.8.3.1",
        PROTOCOL,
    );
}

/// MQTT 5.0 §3.1.2.11.10: "It is a Protocol Error to include Authentication Data if there is
/// no Authentication Method."
#[test]
fn authentication_data_without_method_is_a_protocol_error() {
    let bytes = connect_props(&[0x16, 0x00, 0x01, 0xaa]);
    refused(
        "authentication data without method",
        V5,
        &bytes,
        "§3.1.2.11.10",
        PROTOCOL,
    );
}

/// PINGRESP is §3.13 in both 3.1.1 and 5.0; §3.12 is PINGREQ.
#[test]
fn pingresp_with_a_body_names_its_own_section() {
    refused(
        "PINGRESP with remaining length 1",
        V3_1_1,
        &[0xd0, 0x01, 0x00],
        "§3.13.1",
        MALFORMED,
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Version round-trip spot checks
// ---------------------------------------------------------------------------------------------

#[test]
fn v3_acknowledgements_decode_with_v5_defaults() {
    for version in [V3_1, V3_1_1] {
        for (byte0, _) in ACKS {
            let mut buf = BytesMut::from(&[byte0, 0x02, 0x00, 0x07][..]);
            let Some(
                Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a),
            ) = decode(&mut buf, version, u32::MAX).unwrap()
            else {
                panic!("{byte0:#04x} did not decode to an acknowledgement");
            };
            assert_eq!(a.packet_id, 7);
            assert_eq!(a.reason, ReasonCode::SUCCESS);
            assert!(a.properties.is_empty());
        }
        let mut buf = BytesMut::from(&[0xb0, 0x02, 0x00, 0x07][..]);
        let Some(Packet::UnsubAck(u)) = decode(&mut buf, version, u32::MAX).unwrap() else {
            panic!("UNSUBACK did not decode");
        };
        assert!(u.reasons.is_empty() && u.properties.is_empty());
        let mut buf = BytesMut::from(&[0xe0, 0x00][..]);
        let Some(Packet::Disconnect(d)) = decode(&mut buf, version, u32::MAX).unwrap() else {
            panic!("DISCONNECT did not decode");
        };
        assert_eq!(d.reason, ReasonCode::NORMAL_DISCONNECTION);
        assert!(d.properties.is_empty());
    }
    // 3.1 has no Session Present flag: the byte is ignored when decoding.
    let mut buf = BytesMut::from(&[0x20, 0x02, 0x01, 0x00][..]);
    let Some(Packet::ConnAck(c)) = decode(&mut buf, V3_1, u32::MAX).unwrap() else {
        panic!("CONNACK did not decode");
    };
    assert!(!c.session_present);
}

#[track_caller]
fn encodes_to(version: Version, packet: Packet, wire: &[u8]) {
    let mut out = BytesMut::new();
    assert_eq!(packet.encode(version, &mut out), Ok(()));
    assert_eq!(&out[..], wire, "{version:?} {packet:?}");
}

#[test]
fn v5_only_fields_are_dropped_for_v3() {
    let reason_string = || {
        props(PropertyValues {
            reason_string: Some(s("r")),
            ..Default::default()
        })
    };
    for version in [V3_1, V3_1_1] {
        // PUBACK 0x10 with properties: packet identifier only.
        encodes_to(
            version,
            Packet::PubAck(ack(0x0102, 0x10, reason_string())),
            &[0x40, 0x02, 0x01, 0x02],
        );
        encodes_to(
            version,
            Packet::PubRel(ack(0x0102, 0x92, none())),
            &[0x62, 0x02, 0x01, 0x02],
        );
        // DISCONNECT with a reason and properties: empty.
        let d = Disconnect {
            reason: ReasonCode::SERVER_SHUTTING_DOWN,
            properties: reason_string(),
        };
        encodes_to(version, Packet::Disconnect(d), &[0xe0, 0x00]);
        // UNSUBACK: no reason codes, no properties.
        let u = UnsubAck {
            packet_id: 1,
            reasons: vec![ReasonCode(0x11)],
            properties: reason_string(),
        };
        encodes_to(version, Packet::UnsubAck(u), &[0xb0, 0x02, 0x00, 0x01]);
        // SUBACK: failure codes become 0x80, no properties.
        let sa = SubAck {
            packet_id: 1,
            reasons: vec![ReasonCode(0x01), ReasonCode(0x97)],
            properties: reason_string(),
        };
        encodes_to(
            version,
            Packet::SubAck(sa),
            &[0x90, 0x04, 0x00, 0x01, 0x01, 0x80],
        );
        // PUBLISH: no property block.
        let mut p = publish(QoS::AtMostOnce, "a", 0, b"p");
        p.properties = props(PropertyValues {
            message_expiry_interval: Some(9),
            ..Default::default()
        });
        encodes_to(
            version,
            Packet::Publish(p),
            &[0x30, 0x04, 0x00, 0x01, b'a', b'p'],
        );
        // SUBSCRIBE: the options byte keeps only the QoS; no property block.
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![(
                filter("a"),
                opts(QoS::AtLeastOnce, true, true, RetainHandling::DoNotSend),
            )],
            properties: props(PropertyValues {
                subscription_identifiers: vec![3],
                ..Default::default()
            }),
        };
        encodes_to(
            version,
            Packet::Subscribe(sub),
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01],
        );
        // CONNACK: 5.0 reason mapped to a 3.x return code, no properties.
        let c = ConnAck {
            session_present: false,
            reason: ReasonCode::BANNED,
            properties: reason_string(),
        };
        encodes_to(version, Packet::ConnAck(c), &[0x20, 0x02, 0x00, 0x05]);
    }
    // CONNACK: 3.1 has no Session Present flag.
    let c = ConnAck {
        session_present: true,
        reason: ReasonCode::SUCCESS,
        properties: none(),
    };
    encodes_to(V3_1, Packet::ConnAck(c.clone()), &[0x20, 0x02, 0x00, 0x00]);
    encodes_to(V3_1_1, Packet::ConnAck(c), &[0x20, 0x02, 0x01, 0x00]);
    // CONNECT written as 3.1.1 leaves out its properties and the will's.
    let Packet::Connect(mut c) = connect_v5_full().1 else {
        unreachable!()
    };
    c.version = V3_1_1;
    let wire = cat(&[
        &[0x10, 0x2d],         // CONNECT, remaining length 45
        b"\x00\x04MQTT",       // protocol name "MQTT"
        &[0x04],               // protocol level 4
        &[0xae],               // user name, will retain, will QoS 1, will, clean session
        &[0x00, 0x1e],         // keep alive 30 s
        b"\x00\x05dev-1",      // client identifier "dev-1"
        b"\x00\x0adev/status", // will topic "dev/status"
        b"\x00\x07offline",    // will message "offline"
        b"\x00\x05alice",      // user name "alice"
    ]);
    encodes_to(V3_1_1, Packet::Connect(c), &wire);
}
