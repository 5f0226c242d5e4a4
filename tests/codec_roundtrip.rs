//! Property tests for the MQTT codec (`shardmq::protocol`): arbitrary valid packets of all
//! fifteen types, in every protocol version that has them (3.1, 3.1.1, 5.0; AUTH only in 5.0),
//! must cross the wire unchanged.
//!
//! The strategies build only what the target version can represent, so that encoding and then
//! decoding is exactly the identity:
//! - strings are arbitrary UTF-8 without U+0000 (non-ASCII included), topic names are one to
//!   five levels of such strings without `+`, `#` or `/` (levels may be empty), topic filters
//!   use whole-level `+` and a final `#`, and are sometimes `$share/{group}/{filter}` (never
//!   with No Local);
//! - MQTT 5.0 properties are drawn from what `properties::allowed` permits for the packet (or
//!   the will), each present or absent, with values in their valid ranges; 3.1 / 3.1.1 packets
//!   carry no properties and only the reason codes their wire format can express.
//!
//! Properties checked:
//! 1. encode → decode is the identity and consumes the whole frame, for every packet type and
//!    version (and `Publish::encoded_len` is the number of bytes written), and for PUBLISH
//!    frames on both sides of every step of the remaining length (1- to 4-byte headers);
//! 2. a frame split at any point, or fed one byte at a time, needs more bytes (consuming none)
//!    until it is complete, then decodes to the packet;
//! 3. two or three frames back to back decode in order;
//! 4. `decode` never panics on arbitrary bytes, framed garbage or mutated valid frames, never
//!    consumes bytes when it needs more, and whatever it decodes re-encodes to a frame that
//!    decodes to the same packet;
//! 5. a frame of n bytes decodes under a maximum packet size of n and is refused with 0x95
//!    (Packet too large) under n - 1, from its fixed header alone.

use std::fmt::Debug;
use std::ops::RangeInclusive;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::Union;
use shardmq::protocol::properties::{PropertyContext, allowed, id};
use shardmq::protocol::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Properties, PropertyValues, PubAck,
    Publish, QoS, ReasonCode, RetainHandling, Str, SubAck, Subscribe, SubscriptionOptions,
    TopicFilter, TopicName, UnsubAck, Unsubscribe, Version, Will, decode,
};

use Version::{V3_1, V3_1_1, V5};

const ALL_VERSIONS: &[Version] = &[V3_1, V3_1_1, V5];
const ONLY_V5: &[Version] = &[V5];

/// The largest Variable Byte Integer, hence the largest Subscription Identifier.
const VARINT_MAX: u32 = 268_435_455;

// ---------------------------------------------------------------------------------------------
// Strings, topics, binary data
// ---------------------------------------------------------------------------------------------

/// Every character but U+0000 (surrogates are not `char`s, so all of these are valid UTF-8).
const STRING_CHARS: &[RangeInclusive<char>] = &['\u{1}'..='\u{D7FF}', '\u{E000}'..='\u{10FFFF}'];

/// [`STRING_CHARS`] less the topic separator `/` and the wildcards `+` and `#`.
const LEVEL_CHARS: &[RangeInclusive<char>] = &[
    '\u{1}'..='\u{22}',
    '\u{24}'..='\u{2A}',
    '\u{2C}'..='\u{2E}',
    '\u{30}'..='\u{D7FF}',
    '\u{E000}'..='\u{10FFFF}',
];

fn chars(
    set: &'static [RangeInclusive<char>],
    len: RangeInclusive<usize>,
) -> impl Strategy<Value = String> + Clone {
    vec(proptest::char::ranges(set.into()), len).prop_map(String::from_iter)
}

/// An MQTT UTF-8 string of up to 40 characters.
fn string() -> impl Strategy<Value = String> + Clone {
    chars(STRING_CHARS, 0..=40)
}

fn mqtt_str() -> impl Strategy<Value = Str> + Clone {
    string().prop_map(|s| Str::new(Bytes::from(s)).expect("generated strings are valid"))
}

/// Binary data of up to 40 bytes.
fn binary() -> impl Strategy<Value = Bytes> + Clone {
    vec(any::<u8>(), 0..=40).prop_map(Bytes::from)
}

/// An application message of up to 300 bytes.
fn payload() -> impl Strategy<Value = Bytes> + Clone {
    vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

/// One topic level: no `/`, `+` or `#`; may be empty.
fn level() -> impl Strategy<Value = String> + Clone {
    chars(LEVEL_CHARS, 0..=12)
}

/// A topic name as a string: one to five levels, not empty as a whole.
fn topic_name_string() -> impl Strategy<Value = String> + Clone {
    vec(level(), 1..=5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are not empty", |t| !t.is_empty())
}

fn topic_name() -> impl Strategy<Value = TopicName> + Clone {
    topic_name_string()
        .prop_map(|t| TopicName::new(Bytes::from(t)).expect("generated topic names are valid"))
}

/// A plain (not shared) topic filter: one to five levels of words and `+`, the last one
/// possibly `#`.
fn plain_filter() -> impl Strategy<Value = String> + Clone {
    let level = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (vec(level, 1..=5), prop::bool::weighted(0.3))
        .prop_map(|(mut levels, hash)| {
            if hash {
                *levels.last_mut().expect("at least one level") = "#".to_owned();
            }
            levels.join("/")
        })
        // A first level of exactly "$share" would make it a shared subscription.
        .prop_filter("plain filters are neither empty nor shared", |f| {
            !f.is_empty() && !f.starts_with("$share/")
        })
}

/// A topic filter and whether it is a shared subscription (`$share/{group}/{filter}`).
fn topic_filter() -> impl Strategy<Value = (TopicFilter, bool)> + Clone {
    let group = chars(LEVEL_CHARS, 1..=12);
    prop_oneof![
        4 => plain_filter().prop_map(|f| (f, false)),
        1 => (group, plain_filter()).prop_map(|(g, f)| (format!("$share/{g}/{f}"), true)),
    ]
    .prop_map(|(f, shared)| {
        let f = TopicFilter::new(Bytes::from(f)).expect("generated topic filters are valid");
        (f, shared)
    })
}

fn qos() -> impl Strategy<Value = QoS> + Clone {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn retain_handling() -> impl Strategy<Value = RetainHandling> + Clone {
    prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> + Clone {
    1..=u16::MAX
}

// ---------------------------------------------------------------------------------------------
// Reason codes
// ---------------------------------------------------------------------------------------------

/// Every code MQTT 5.0 lists for packets of type `t`.
fn codes_valid_in(t: PacketType) -> Vec<ReasonCode> {
    (0..=u8::MAX)
        .map(ReasonCode)
        .filter(|r| r.valid_in(t))
        .collect()
}

/// The reason code of an acknowledgement, DISCONNECT or AUTH: any valid one in 5.0 (0x00, valid
/// in all of them, more often), always success before.
fn reason(v: Version, t: PacketType) -> BoxedStrategy<ReasonCode> {
    if v.is_v5() {
        prop_oneof![1 => Just(ReasonCode(0)), 3 => select(codes_valid_in(t))].boxed()
    } else {
        Just(ReasonCode::SUCCESS).boxed()
    }
}

/// The six 5.0 codes that a 3.x CONNACK return code maps to (and back from).
const V3_CONNACK_CODES: &[ReasonCode] = &[
    ReasonCode::SUCCESS,
    ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
    ReasonCode::SERVER_UNAVAILABLE,
    ReasonCode::BAD_USER_NAME_OR_PASSWORD,
    ReasonCode::NOT_AUTHORIZED,
];

/// The return codes a 3.x SUBACK can carry.
const V3_SUBACK_CODES: &[ReasonCode] = &[
    ReasonCode(0x00),
    ReasonCode(0x01),
    ReasonCode(0x02),
    ReasonCode(0x80),
];

// ---------------------------------------------------------------------------------------------
// MQTT 5.0 properties
// ---------------------------------------------------------------------------------------------

/// `Some` or `None` from `s` if `ctx` may carry property `id`, always `None` otherwise.
fn opt<S>(ctx: PropertyContext, id: u8, s: S) -> BoxedStrategy<Option<S::Value>>
where
    S: Strategy + 'static,
    S::Value: Clone + Debug,
{
    if allowed(id, ctx) {
        option::of(s).boxed()
    } else {
        Just(None).boxed()
    }
}

/// A list of up to `max` values from `s` if `ctx` may carry property `id`, empty otherwise.
fn list<S>(ctx: PropertyContext, id: u8, s: S, max: usize) -> BoxedStrategy<Vec<S::Value>>
where
    S: Strategy + 'static,
    S::Value: Clone + Debug,
{
    if allowed(id, ctx) {
        vec(s, 0..=max).boxed()
    } else {
        Just(Vec::new()).boxed()
    }
}

/// A Subscription Identifier: 1 to 268 435 455, with the Variable Byte Integer's length
/// boundaries often.
fn subscription_id() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![
        select(
            &[
                1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, VARINT_MAX
            ][..]
        ),
        1..=VARINT_MAX,
    ]
}

/// A User Property; names repeat often.
fn user_property() -> impl Strategy<Value = (Str, Str)> + Clone {
    let name = prop_oneof![
        1 => Just(Str::from_static("k")),
        1 => Just(Str::from_static("cl\u{e9}")),
        2 => mqtt_str(),
    ];
    (name, mqtt_str())
}

/// An arbitrary MQTT 5.0 property list that `ctx` may carry, every value in its valid range.
fn properties(ctx: PropertyContext) -> BoxedStrategy<Properties> {
    let flag = || 0..=1u8;
    // SUBSCRIBE carries at most one Subscription Identifier; a PUBLISH one per match.
    let max_ids = if ctx == PropertyContext::Packet(PacketType::Subscribe) {
        1
    } else {
        3
    };
    let publish_like = (
        opt(ctx, id::PAYLOAD_FORMAT_INDICATOR, flag()),
        opt(ctx, id::MESSAGE_EXPIRY_INTERVAL, any::<u32>()),
        opt(ctx, id::CONTENT_TYPE, mqtt_str()),
        opt(
            ctx,
            id::RESPONSE_TOPIC,
            topic_name_string().prop_map(|t| Str::new(Bytes::from(t)).expect("valid")),
        ),
        opt(ctx, id::CORRELATION_DATA, binary()),
        list(ctx, id::SUBSCRIPTION_IDENTIFIER, subscription_id(), max_ids),
        opt(ctx, id::TOPIC_ALIAS, 1..=u16::MAX),
        opt(ctx, id::WILL_DELAY_INTERVAL, any::<u32>()),
    );
    let session = (
        opt(ctx, id::SESSION_EXPIRY_INTERVAL, any::<u32>()),
        opt(ctx, id::ASSIGNED_CLIENT_IDENTIFIER, mqtt_str()),
        opt(ctx, id::SERVER_KEEP_ALIVE, any::<u16>()),
        // Authentication Data only ever comes with an Authentication Method.
        opt(
            ctx,
            id::AUTHENTICATION_METHOD,
            (mqtt_str(), option::of(binary())),
        ),
        opt(ctx, id::REQUEST_PROBLEM_INFORMATION, flag()),
        opt(ctx, id::REQUEST_RESPONSE_INFORMATION, flag()),
        opt(ctx, id::RESPONSE_INFORMATION, mqtt_str()),
        opt(ctx, id::SERVER_REFERENCE, mqtt_str()),
        opt(ctx, id::REASON_STRING, mqtt_str()),
    );
    let limits = (
        opt(ctx, id::RECEIVE_MAXIMUM, 1..=u16::MAX),
        opt(ctx, id::TOPIC_ALIAS_MAXIMUM, any::<u16>()),
        opt(ctx, id::MAXIMUM_QOS, flag()),
        opt(ctx, id::RETAIN_AVAILABLE, flag()),
        list(ctx, id::USER_PROPERTY, user_property(), 3),
        opt(ctx, id::MAXIMUM_PACKET_SIZE, 1..=u32::MAX),
        opt(ctx, id::WILDCARD_SUBSCRIPTION_AVAILABLE, flag()),
        opt(ctx, id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, flag()),
        opt(ctx, id::SHARED_SUBSCRIPTION_AVAILABLE, flag()),
    );
    (publish_like, session, limits)
        .prop_map(move |(publish_like, session, limits)| {
            let (pfi, mei, content_type, response_topic, correlation_data, ids, alias, wdi) =
                publish_like;
            let (sei, aci, ska, auth, rpi, rri, response_information, server_reference, rs) =
                session;
            let (rm, tam, mq, ra, user_properties, mps, wsa, sia, ssa) = limits;
            let (authentication_method, authentication_data) = match auth {
                Some((method, data)) => (
                    Some(method),
                    data.filter(|_| allowed(id::AUTHENTICATION_DATA, ctx)),
                ),
                None => (None, None),
            };
            Properties::from(PropertyValues {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                content_type,
                response_topic,
                correlation_data,
                subscription_identifiers: ids,
                session_expiry_interval: sei,
                assigned_client_identifier: aci,
                server_keep_alive: ska,
                authentication_method,
                authentication_data,
                request_problem_information: rpi,
                will_delay_interval: wdi,
                request_response_information: rri,
                response_information,
                server_reference,
                reason_string: rs,
                receive_maximum: rm,
                topic_alias_maximum: tam,
                topic_alias: alias,
                maximum_qos: mq,
                retain_available: ra,
                user_properties,
                maximum_packet_size: mps,
                wildcard_subscription_available: wsa,
                subscription_identifier_available: sia,
                shared_subscription_available: ssa,
            })
        })
        .boxed()
}

/// The properties of a packet of type `t` for version `v`: none before 5.0.
fn props(v: Version, t: PacketType) -> BoxedStrategy<Properties> {
    props_in(v, PropertyContext::Packet(t))
}

fn props_in(v: Version, ctx: PropertyContext) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        // Sometimes the unallocated empty list, whose wire form is the same.
        prop_oneof![1 => Just(Properties::default()), 4 => properties(ctx)].boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------------

fn will(v: Version) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        payload(),
        qos(),
        any::<bool>(),
        props_in(v, PropertyContext::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(v: Version) -> BoxedStrategy<Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        mqtt_str(),
        option::of(will(v)),
        option::of(mqtt_str()),
        option::of(binary()),
        props(v, PacketType::Connect),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1.1 forbids a password without a user name [MQTT-3.1.2-22].
                let password = password.filter(|_| v != V3_1_1 || username.is_some());
                Packet::Connect(Box::new(Connect {
                    version: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
        .boxed()
}

fn connack(v: Version) -> BoxedStrategy<Packet> {
    let reason = if v.is_v5() {
        prop_oneof![
            1 => Just(ReasonCode::SUCCESS),
            3 => select(codes_valid_in(PacketType::ConnAck)),
        ]
        .boxed()
    } else {
        prop_oneof![1 => Just(ReasonCode::SUCCESS), 2 => select(V3_CONNACK_CODES)].boxed()
    };
    (any::<bool>(), reason, props(v, PacketType::ConnAck))
        .prop_map(move |(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                // Only with success [MQTT-3.2.2-6], and 3.1 has no such flag.
                session_present: session_present && reason == ReasonCode::SUCCESS && v != V3_1,
                reason,
                properties,
            })
        })
        .boxed()
}

fn publish(v: Version) -> BoxedStrategy<Packet> {
    (
        (qos(), any::<bool>(), any::<bool>()),
        topic_name(),
        prop::bool::weighted(0.2),
        packet_id(),
        payload(),
        props(v, PacketType::Publish),
        1..=u16::MAX,
    )
        .prop_map(
            move |((qos, dup, retain), topic, no_topic, id, payload, mut properties, alias)| {
                // Only a 5.0 PUBLISH may leave out its topic, and only with a Topic Alias.
                let topic = if v.is_v5() && no_topic {
                    properties.topic_alias.get_or_insert(alias);
                    Publish::default().topic
                } else {
                    topic
                };
                let (dup, packet_id) = if qos == QoS::AtMostOnce {
                    (false, 0)
                } else {
                    (dup, id)
                };
                Packet::Publish(Publish {
                    dup,
                    qos,
                    retain,
                    topic,
                    packet_id,
                    payload,
                    properties,
                })
            },
        )
        .boxed()
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP, as `t` says.
fn pub_ack(v: Version, t: PacketType) -> BoxedStrategy<Packet> {
    (packet_id(), reason(v, t), props(v, t))
        .prop_map(move |(packet_id, reason, properties)| {
            let a = PubAck {
                packet_id,
                reason,
                properties,
            };
            match t {
                PacketType::PubAck => Packet::PubAck(a),
                PacketType::PubRec => Packet::PubRec(a),
                PacketType::PubRel => Packet::PubRel(a),
                PacketType::PubComp => Packet::PubComp(a),
                other => panic!("{other:?} is not a publish acknowledgement"),
            }
        })
        .boxed()
}

fn subscribe(v: Version) -> BoxedStrategy<Packet> {
    let entry = (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        retain_handling(),
    )
        .prop_map(move |((filter, shared), qos, no_local, rap, rh)| {
            let options = if v.is_v5() {
                SubscriptionOptions {
                    qos,
                    // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
                    no_local: no_local && !shared,
                    retain_as_published: rap,
                    retain_handling: rh,
                }
            } else {
                SubscriptionOptions::qos(qos)
            };
            (filter, options)
        });
    (
        packet_id(),
        vec(entry, 1..=4),
        props(v, PacketType::Subscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

fn suback(v: Version) -> BoxedStrategy<Packet> {
    let code = if v.is_v5() {
        select(codes_valid_in(PacketType::SubAck))
    } else {
        select(V3_SUBACK_CODES)
    };
    (packet_id(), vec(code, 1..=6), props(v, PacketType::SubAck))
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        })
        .boxed()
}

fn unsubscribe(v: Version) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        vec(topic_filter().prop_map(|(f, _)| f), 1..=4),
        props(v, PacketType::Unsubscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

fn unsuback(v: Version) -> BoxedStrategy<Packet> {
    // One reason per filter in 5.0; 3.x UNSUBACK carries none.
    let reasons = if v.is_v5() {
        vec(select(codes_valid_in(PacketType::UnsubAck)), 1..=6).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), reasons, props(v, PacketType::UnsubAck))
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons,
                properties,
            })
        })
        .boxed()
}

fn pingreq(_: Version) -> BoxedStrategy<Packet> {
    Just(Packet::PingReq).boxed()
}

fn pingresp(_: Version) -> BoxedStrategy<Packet> {
    Just(Packet::PingResp).boxed()
}

fn disconnect(v: Version) -> BoxedStrategy<Packet> {
    (
        reason(v, PacketType::Disconnect),
        props(v, PacketType::Disconnect),
    )
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
        .boxed()
}

/// AUTH (5.0 only): any property block names its Authentication Method, and so does any
/// reason other than success (§3.15.2.2.2).
fn auth(v: Version) -> BoxedStrategy<Packet> {
    assert!(v.is_v5(), "AUTH exists only in MQTT 5.0");
    (
        reason(v, PacketType::Auth),
        props(v, PacketType::Auth),
        mqtt_str(),
    )
        .prop_map(|(reason, mut properties, method)| {
            if reason != ReasonCode::SUCCESS || !properties.is_empty() {
                properties.authentication_method.get_or_insert(method);
            }
            Packet::Auth(Auth { reason, properties })
        })
        .boxed()
}

/// Any packet that exists in version `v`.
fn packet(v: Version) -> BoxedStrategy<Packet> {
    let mut all = vec![
        connect(v),
        connack(v),
        publish(v),
        pub_ack(v, PacketType::PubAck),
        pub_ack(v, PacketType::PubRec),
        pub_ack(v, PacketType::PubRel),
        pub_ack(v, PacketType::PubComp),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        pingreq(v),
        pingresp(v),
        disconnect(v),
    ];
    if v.is_v5() {
        all.push(auth(v));
    }
    Union::new(all).boxed()
}

/// A version from `versions` and a packet from `f` for it.
fn versioned(
    versions: &[Version],
    f: impl Fn(Version) -> BoxedStrategy<Packet>,
) -> BoxedStrategy<(Version, Packet)> {
    Union::new(
        versions
            .iter()
            .map(|&v| f(v).prop_map(move |p| (v, p)).boxed()),
    )
    .boxed()
}

/// Any packet of any version.
fn any_packet() -> BoxedStrategy<(Version, Packet)> {
    versioned(ALL_VERSIONS, packet)
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

fn encode(v: Version, p: &Packet) -> Result<BytesMut, TestCaseError> {
    let mut buf = BytesMut::new();
    p.encode(v, &mut buf)
        .map_err(|e| TestCaseError::fail(format!("encode {v:?} {p:?}: {e}")))?;
    Ok(buf)
}

/// Property 1: encode → decode is the identity and eats the whole frame.
fn roundtrip(v: Version, p: &Packet) -> Result<(), TestCaseError> {
    let mut buf = encode(v, p)?;
    if let Packet::Publish(publish) = p {
        prop_assert_eq!(publish.encoded_len(v), Ok(buf.len()));
    }
    let wire = buf.clone();
    prop_assert_eq!(
        decode(&mut buf, v, u32::MAX),
        Ok(Some(p.clone())),
        "wire {:02x?}",
        &wire[..]
    );
    prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(())
}

/// Property 4: decodes `bytes` packet by packet until it needs more or fails; never consumes
/// on "need more", and every packet decoded re-encodes to a frame that decodes to itself.
fn decode_all_stable(v: Version, bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.len();
        match decode(&mut buf, v, u32::MAX) {
            Ok(None) => {
                prop_assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return Ok(());
            }
            Err(_) => return Ok(()),
            Ok(Some(p)) => {
                prop_assert!(buf.len() < before, "a packet from no bytes");
                let mut again = encode(v, &p)?;
                let wire = again.clone();
                prop_assert_eq!(
                    decode(&mut again, v, u32::MAX),
                    Ok(Some(p)),
                    "re-encoded as {:02x?}",
                    &wire[..]
                );
                prop_assert!(again.is_empty());
            }
        }
    }
}

/// Property 5: a frame of n bytes decodes under a maximum packet size of n, and under n - 1 is
/// refused with Packet too large as soon as its fixed header is in.
fn max_packet_size(v: Version, p: &Packet) -> Result<(), TestCaseError> {
    let wire = encode(v, p)?;
    let n = u32::try_from(wire.len()).expect("frames under 4 GiB");
    let mut buf = wire.clone();
    prop_assert_eq!(decode(&mut buf, v, n), Ok(Some(p.clone())));
    prop_assert!(buf.is_empty());
    let mut buf = wire.clone();
    match decode(&mut buf, v, n - 1) {
        Err(e) => prop_assert_eq!(e.reason, ReasonCode::PACKET_TOO_LARGE, "{}", e),
        Ok(got) => prop_assert!(false, "max {} accepted a {n}-byte frame: {got:?}", n - 1),
    }
    let header = &wire[..header_len(&wire)];
    match decode(&mut BytesMut::from(header), v, n - 1) {
        Err(e) => prop_assert_eq!(e.reason, ReasonCode::PACKET_TOO_LARGE, "{}", e),
        Ok(got) => prop_assert!(false, "header alone under max {}: {got:?}", n - 1),
    }
    if header.len() < wire.len() {
        prop_assert_eq!(decode(&mut BytesMut::from(header), v, n), Ok(None));
    }
    Ok(())
}

/// The length of the fixed header at the start of a complete frame.
fn header_len(frame: &[u8]) -> usize {
    1 + frame[1..]
        .iter()
        .position(|&b| b & 0x80 == 0)
        .expect("a complete remaining length")
        + 1
}

/// Remaining lengths at which the Variable Byte Integer gains a byte (and the last ones before).
const VARINT_STEPS: &[usize] = &[127, 128, 16_383, 16_384, 2_097_151, 2_097_152];

/// First bytes that some version accepts, so framed garbage reaches the body parsers.
fn first_byte() -> impl Strategy<Value = u8> {
    let valid: Vec<u8> = (1..=15u8)
        .flat_map(|t| {
            let flags: &[u8] = match t {
                3 => &[0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13],
                6 | 8 | 10 => &[2, 10],
                _ => &[0],
            };
            flags.iter().map(move |f| t << 4 | f)
        })
        .collect();
    prop_oneof![4 => select(valid), 1 => any::<u8>()]
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    // 1. encode → decode identity, per packet type.

    #[test]
    fn roundtrip_connect((v, p) in versioned(ALL_VERSIONS, connect)) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_connack((v, p) in versioned(ALL_VERSIONS, connack)) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_publish((v, p) in versioned(ALL_VERSIONS, publish)) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_puback((v, p) in versioned(ALL_VERSIONS, |v| pub_ack(v, PacketType::PubAck))) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_pubrec((v, p) in versioned(ALL_VERSIONS, |v| pub_ack(v, PacketType::PubRec))) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_pubrel((v, p) in versioned(ALL_VERSIONS, |v| pub_ack(v, PacketType::PubRel))) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_pubcomp(
        (v, p) in versioned(ALL_VERSIONS, |v| pub_ack(v, PacketType::PubComp)),
    ) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_subscribe((v, p) in versioned(ALL_VERSIONS, subscribe)) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_suback((v, p) in versioned(ALL_VERSIONS, suback)) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_unsubscribe((v, p) in versioned(ALL_VERSIONS, unsubscribe)) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_unsuback((v, p) in versioned(ALL_VERSIONS, unsuback)) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_pingreq_pingresp(
        (v, p) in versioned(ALL_VERSIONS, |v| Union::new([pingreq(v), pingresp(v)]).boxed()),
    ) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_disconnect((v, p) in versioned(ALL_VERSIONS, disconnect)) {
        roundtrip(v, &p)?;
    }

    #[test]
    fn roundtrip_auth((v, p) in versioned(ONLY_V5, auth)) {
        roundtrip(v, &p)?;
    }

    // 2. Incomplete frames.

    #[test]
    fn split_at_every_boundary((v, p) in any_packet()) {
        let wire = encode(v, &p)?;
        for k in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..k]);
            prop_assert_eq!(decode(&mut buf, v, u32::MAX), Ok(None), "split at {}", k);
            prop_assert_eq!(&buf[..], &wire[..k], "split at {}: bytes consumed", k);
            buf.extend_from_slice(&wire[k..]);
            prop_assert_eq!(
                decode(&mut buf, v, u32::MAX),
                Ok(Some(p.clone())),
                "split at {}",
                k
            );
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn one_byte_at_a_time((v, p) in any_packet()) {
        let wire = encode(v, &p)?;
        let mut buf = BytesMut::new();
        for (i, &b) in wire.iter().enumerate() {
            buf.put_u8(b);
            let got = decode(&mut buf, v, u32::MAX);
            if i + 1 < wire.len() {
                prop_assert_eq!(got, Ok(None), "after {} bytes", i + 1);
                prop_assert_eq!(buf.len(), i + 1, "after {} bytes: bytes consumed", i + 1);
            } else {
                prop_assert_eq!(got, Ok(Some(p.clone())));
                prop_assert!(buf.is_empty());
            }
        }
    }

    // 3. Frames back to back.

    #[test]
    fn concatenated_packets_decode_in_order(
        (v, packets) in Union::new(
            ALL_VERSIONS
                .iter()
                .map(|&v| vec(packet(v), 2..=3).prop_map(move |ps| (v, ps)).boxed()),
        ),
    ) {
        let mut buf = BytesMut::new();
        for p in &packets {
            buf.unsplit(encode(v, p)?);
        }
        for p in &packets {
            prop_assert_eq!(decode(&mut buf, v, u32::MAX), Ok(Some(p.clone())));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decode(&mut buf, v, u32::MAX), Ok(None));
    }

    // 4. Hostile input.

    #[test]
    fn arbitrary_bytes_never_panic(
        v in select(ALL_VERSIONS),
        bytes in vec(any::<u8>(), 0..200),
    ) {
        decode_all_stable(v, &bytes)?;
    }

    /// A plausible first byte and a correct remaining length around an arbitrary body, so the
    /// body parsers see the garbage.
    #[test]
    fn framed_garbage_never_panics(
        v in select(ALL_VERSIONS),
        frames in vec((first_byte(), vec(any::<u8>(), 0..200)), 1..=2),
    ) {
        let mut bytes = Vec::new();
        for (byte0, body) in frames {
            bytes.push(byte0);
            let mut n = body.len();
            loop {
                let b = (n % 128) as u8;
                n /= 128;
                bytes.push(if n > 0 { b | 0x80 } else { b });
                if n == 0 {
                    break;
                }
            }
            bytes.extend_from_slice(&body);
        }
        decode_all_stable(v, &bytes)?;
    }

    /// A valid frame with a few bytes overwritten (mostly in the body, so the frame holds
    /// together) and sometimes cut short.
    #[test]
    fn mutated_packets_never_panic(
        (v, p) in any_packet(),
        edits in vec((prop::bool::weighted(0.8), any::<Index>(), any::<u8>()), 1..=3),
        cut in option::weighted(0.2, any::<Index>()),
    ) {
        let mut bytes = encode(v, &p)?.to_vec();
        let body = header_len(&bytes);
        for (in_body, at, b) in edits {
            let at = if in_body && body < bytes.len() {
                body + at.index(bytes.len() - body)
            } else {
                at.index(bytes.len())
            };
            bytes[at] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        decode_all_stable(v, &bytes)?;
    }

    // 5. Maximum packet size.

    #[test]
    fn maximum_packet_size_is_the_frame_size((v, p) in any_packet()) {
        max_packet_size(v, &p)?;
    }
}

proptest! {
    // Large frames are cheap to build but not to split byte by byte: fewer cases, and only
    // properties 1 and 5.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// PUBLISH frames whose remaining length sits on either side of each step of the Variable
    /// Byte Integer (1 → 2 → 3 → 4 bytes), so the fixed header takes every size it can.
    #[test]
    fn publish_around_remaining_length_steps(
        (v, p) in versioned(ALL_VERSIONS, publish),
        step in any::<Index>(),
        delta in 0..=2usize,
        fill in any::<u8>(),
    ) {
        let Packet::Publish(mut publish) = p else {
            unreachable!("the publish strategy makes PUBLISH packets")
        };
        publish.payload = Bytes::new();
        let empty = encode(v, &Packet::Publish(publish.clone()))?;
        let fixed = empty.len() - header_len(&empty);
        // The remaining lengths at or around a step that this topic and these properties fit.
        let targets: Vec<usize> = VARINT_STEPS
            .iter()
            .flat_map(|&s| [s - delta, s + delta])
            .filter(|&r| r >= fixed)
            .collect();
        let remaining = *step.get(&targets);
        publish.payload = Bytes::from(vec![fill; remaining - fixed]);
        let p = Packet::Publish(publish);
        let wire = encode(v, &p)?;
        prop_assert_eq!(wire.len() - header_len(&wire), remaining);
        roundtrip(v, &p)?;
        max_packet_size(v, &p)?;
    }
}
