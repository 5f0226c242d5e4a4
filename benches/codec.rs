//! Codec benchmarks: shardmq's `protocol` module against `mqttbytes` 0.6 on the same bytes.
//!
//! Every group holds our implementation and the mqttbytes equivalent (its `v4` module for
//! MQTT 3.1.1, `v5` for 5.0), fed identical input, so one `cargo bench` run gives a fair ratio:
//!
//! - `varint`: a remaining length of 1, 2, 3 and 4 bytes at the front of a complete frame.
//!   mqttbytes keeps its varint reader private; the closest public entry point is
//!   `mqttbytes::check`, which reads byte 0, the remaining length and checks the whole frame
//!   is buffered. We show both our bare `varint::decode` and `header::parse` plus the same
//!   "frame complete?" test, which is the like-for-like comparison with `check`.
//! - `decode`: PUBLISH with a 64-byte payload at QoS 0 and 1, CONNECT and SUBSCRIBE (three
//!   filters), each for 3.1.1 and 5.0. Each iteration appends [`FRAMES_PER_ITER`] copies of
//!   the frame to one reused `BytesMut` (one `memcpy`, no allocation once warm) and decodes
//!   them one by one through each library's general entry point (`protocol::decode`,
//!   `v4::read` / `v5::read`), dropping each packet. `refill-only` times the append and a
//!   matching `advance`, the buffer handling both decoders share.
//! - `encode`: the same packets, built once, written into a reused `BytesMut` cleared every
//!   iteration. Setup asserts both libraries produce exactly the decode input's bytes.
//! - `topic_match`: `protocol::topic::matches(filter, topic)` against `mqttbytes::matches
//!   (topic, filter)` on a table of (filter, topic) pairs; setup asserts the expected answers.
//!
//! Times are per iteration; `decode` groups set `Throughput::Elements` to the number of
//! packets per iteration, so criterion's `thrpt` line is packets per second. The default
//! configuration (short warm-up and measurement) keeps a full run near a minute and a half on
//! two cores; command-line flags such as `--measurement-time` still override it. See
//! `perf/README.md` for how to run and profile.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shardmq::protocol::{
    self, Connect, Packet, Properties, PropertyValues, Publish, QoS, Str, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName, Version, header, topic, varint,
};

/// Frames appended and decoded per `decode` iteration.
const FRAMES_PER_ITER: usize = 32;

/// The maximum packet size handed to both decoders (whole frame for us, remaining length for
/// mqttbytes; every frame here is far below it).
const MAX_PACKET: usize = 1 << 20;

const PUBLISH_TOPIC: &str = "sensors/building-7/floor-3/room-12/temperature";
const CLIENT_ID: &str = "sensor-0042-5f3a9c";
const USERNAME: &str = "device-0042";
const PASSWORD: &str = "s3cr3t-t0k3n";
const FILTERS: [(&str, QoS); 3] = [
    ("sensors/+/floor-3/+/temperature", QoS::AtLeastOnce),
    ("alerts/#", QoS::ExactlyOnce),
    ("devices/dev-0042/commands", QoS::AtMostOnce),
];

/// One packet as both libraries represent it.
struct Case {
    name: &'static str,
    version: Version,
    ours: Packet,
    theirs: Theirs,
    /// The encoded frame, identical for both libraries.
    frame: Vec<u8>,
}

/// The mqttbytes form of a [`Case`] (boxed: a v5 packet is several times larger than a v4 one).
enum Theirs {
    V4(Box<mqttbytes::v4::Packet>),
    V5(Box<mqttbytes::v5::Packet>),
}

impl Theirs {
    /// Writes the packet with mqttbytes' per-type `write` (its packet enums have none).
    #[inline]
    fn write(&self, out: &mut BytesMut) -> Result<usize, mqttbytes::Error> {
        use mqttbytes::{v4, v5};
        match self {
            Theirs::V4(p) => match &**p {
                v4::Packet::Publish(p) => p.write(out),
                v4::Packet::Connect(c) => c.write(out),
                v4::Packet::Subscribe(s) => s.write(out),
                _ => unreachable!("no such bench case"),
            },
            Theirs::V5(p) => match &**p {
                v5::Packet::Publish(p) => p.write(out),
                v5::Packet::Connect(c) => c.write(out),
                v5::Packet::Subscribe(s) => s.write(out),
                _ => unreachable!("no such bench case"),
            },
        }
    }

    /// Decodes one packet with mqttbytes' general entry point for this case's version.
    #[inline]
    fn read(&self, buf: &mut BytesMut) {
        match self {
            Theirs::V4(_) => {
                black_box(mqttbytes::v4::read(buf, MAX_PACKET).expect("mqttbytes v4 decodes"));
            }
            Theirs::V5(_) => {
                black_box(mqttbytes::v5::read(buf, MAX_PACKET).expect("mqttbytes v5 decodes"));
            }
        }
    }

    /// Whether a packet mqttbytes decoded equals this one.
    fn check_read(&self, frame: &[u8]) {
        let mut buf = BytesMut::from(frame);
        match self {
            Theirs::V4(p) => assert_eq!(mqttbytes::v4::read(&mut buf, MAX_PACKET).unwrap(), **p),
            Theirs::V5(p) => assert_eq!(mqttbytes::v5::read(&mut buf, MAX_PACKET).unwrap(), **p),
        }
        assert!(buf.is_empty());
    }
}

fn payload() -> Vec<u8> {
    (0..64u8).map(|i| b'a' + i % 26).collect()
}

fn publish_case(name: &'static str, version: Version, qos: QoS) -> Case {
    let packet_id = if qos == QoS::AtMostOnce { 0 } else { 4242 };
    let ours = Packet::Publish(Publish {
        qos,
        topic: TopicName::from_static(PUBLISH_TOPIC),
        packet_id,
        payload: payload().into(),
        ..Publish::default()
    });
    let theirs = if version.is_v5() {
        let mut p = mqttbytes::v5::Publish::new(PUBLISH_TOPIC, to_their_qos(qos), payload());
        p.pkid = packet_id;
        Theirs::V5(Box::new(mqttbytes::v5::Packet::Publish(p)))
    } else {
        let mut p = mqttbytes::v4::Publish::new(PUBLISH_TOPIC, to_their_qos(qos), payload());
        p.pkid = packet_id;
        Theirs::V4(Box::new(mqttbytes::v4::Packet::Publish(p)))
    };
    Case::new(name, version, ours, theirs)
}

fn connect_case(name: &'static str, version: Version) -> Case {
    let mut properties = Properties::new();
    if version.is_v5() {
        // Listed in the order both encoders write them.
        properties = Properties::from(PropertyValues {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(64),
            topic_alias_maximum: Some(16),
            user_properties: vec![(Str::from_static("site"), Str::from_static("eu-west-1"))],
            ..PropertyValues::default()
        });
    }
    let ours = Packet::Connect(Box::new(Connect {
        version,
        clean_start: true,
        keep_alive: 60,
        client_id: Str::from_static(CLIENT_ID),
        will: None,
        username: Some(Str::from_static(USERNAME)),
        password: Some(PASSWORD.as_bytes().to_vec().into()),
        properties,
    }));
    let theirs = if version.is_v5() {
        let mut c = mqttbytes::v5::Connect::new(CLIENT_ID);
        c.keep_alive = 60;
        c.set_login(USERNAME, PASSWORD);
        c.properties = Some(mqttbytes::v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(64),
            max_packet_size: None,
            topic_alias_max: Some(16),
            request_response_info: None,
            request_problem_info: None,
            user_properties: vec![("site".into(), "eu-west-1".into())],
            authentication_method: None,
            authentication_data: None,
        });
        Theirs::V5(Box::new(mqttbytes::v5::Packet::Connect(c)))
    } else {
        let mut c = mqttbytes::v4::Connect::new(CLIENT_ID);
        c.keep_alive = 60;
        c.set_login(USERNAME, PASSWORD);
        Theirs::V4(Box::new(mqttbytes::v4::Packet::Connect(c)))
    };
    Case::new(name, version, ours, theirs)
}

fn subscribe_case(name: &'static str, version: Version) -> Case {
    let ours = Packet::Subscribe(Subscribe {
        packet_id: 7,
        filters: FILTERS
            .iter()
            .map(|&(f, q)| (TopicFilter::from_static(f), SubscriptionOptions::qos(q)))
            .collect(),
        properties: Properties::new(),
    });
    let theirs = if version.is_v5() {
        let mut s = mqttbytes::v5::Subscribe::empty_subscribe();
        s.pkid = 7;
        for (f, q) in FILTERS {
            s.add(f.into(), to_their_qos(q));
        }
        Theirs::V5(Box::new(mqttbytes::v5::Packet::Subscribe(s)))
    } else {
        let mut s = mqttbytes::v4::Subscribe::empty_subscribe();
        s.pkid = 7;
        for (f, q) in FILTERS {
            s.add(f.into(), to_their_qos(q));
        }
        Theirs::V4(Box::new(mqttbytes::v4::Packet::Subscribe(s)))
    };
    Case::new(name, version, ours, theirs)
}

fn to_their_qos(q: QoS) -> mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

impl Case {
    /// Encodes with both libraries, insists on identical bytes, and checks both decoders give
    /// back the packet, so every group below runs on the same, valid input.
    fn new(name: &'static str, version: Version, ours: Packet, theirs: Theirs) -> Case {
        let frame = ours.to_bytes(version).expect("shardmq encodes").to_vec();
        let mut other = BytesMut::new();
        theirs.write(&mut other).expect("mqttbytes encodes");
        assert_eq!(frame, &other[..], "{name}: the two encoders disagree");
        let mut buf = BytesMut::from(&frame[..]);
        let decoded = protocol::decode(&mut buf, version, MAX_PACKET as u32);
        assert_eq!(
            decoded.expect("shardmq decodes").as_ref(),
            Some(&ours),
            "{name}"
        );
        assert!(buf.is_empty());
        theirs.check_read(&frame);
        Case {
            name,
            version,
            ours,
            theirs,
            frame,
        }
    }
}

fn cases() -> Vec<Case> {
    vec![
        publish_case("publish-qos0/v4", Version::V3_1_1, QoS::AtMostOnce),
        publish_case("publish-qos1/v4", Version::V3_1_1, QoS::AtLeastOnce),
        publish_case("publish-qos0/v5", Version::V5, QoS::AtMostOnce),
        publish_case("publish-qos1/v5", Version::V5, QoS::AtLeastOnce),
        connect_case("connect/v4", Version::V3_1_1),
        connect_case("connect/v5", Version::V5),
        subscribe_case("subscribe-3/v4", Version::V3_1_1),
        subscribe_case("subscribe-3/v5", Version::V5),
    ]
}

/// Remaining lengths of 1–4 bytes, each at the front of a complete PUBLISH-typed frame.
fn bench_varint(c: &mut Criterion) {
    let mut g = c.benchmark_group("varint");
    for (bytes, remaining) in [(1usize, 100u32), (2, 1_000), (3, 100_000), (4, 2_100_000)] {
        let mut len = [0u8; 4];
        assert_eq!(varint::encode(remaining, &mut len), bytes);
        let mut frame = vec![0x30];
        frame.extend_from_slice(&len[..bytes]);
        frame.resize(1 + bytes + remaining as usize, 0);
        let frame = &frame[..];
        assert_eq!(
            varint::decode(&frame[1..]).unwrap(),
            Some((remaining, bytes))
        );
        assert_eq!(
            mqttbytes::check(frame.iter(), usize::MAX)
                .unwrap()
                .frame_length(),
            frame.len()
        );

        let id = format!("{bytes}B");
        g.bench_with_input(
            BenchmarkId::new("shardmq varint::decode", &id),
            frame,
            |b, f| b.iter(|| varint::decode(&black_box(f)[1..])),
        );
        g.bench_with_input(
            BenchmarkId::new("shardmq header::parse", &id),
            frame,
            |b, f| {
                b.iter(|| {
                    let f = black_box(f);
                    match header::parse(f, Version::V3_1_1, u32::MAX) {
                        Ok(Some(h)) if h.frame_len() <= f.len() => Some(h),
                        _ => None,
                    }
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("mqttbytes check", &id), frame, |b, f| {
            b.iter(|| mqttbytes::check(black_box(f).iter(), usize::MAX).ok())
        });
    }
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(FRAMES_PER_ITER as u64));
    for case in cases() {
        let stream = case.frame.repeat(FRAMES_PER_ITER);
        let mut buf = BytesMut::with_capacity(stream.len());
        let version = case.version;
        g.bench_function(BenchmarkId::new("shardmq", case.name), |b| {
            b.iter(|| {
                buf.extend_from_slice(black_box(&stream));
                for _ in 0..FRAMES_PER_ITER {
                    let p = protocol::decode(&mut buf, version, MAX_PACKET as u32);
                    black_box(p.expect("decodes").expect("whole frame"));
                }
            })
        });
        assert!(buf.is_empty(), "every appended frame was decoded");
        g.bench_function(BenchmarkId::new("mqttbytes", case.name), |b| {
            b.iter(|| {
                buf.extend_from_slice(black_box(&stream));
                for _ in 0..FRAMES_PER_ITER {
                    case.theirs.read(&mut buf);
                }
            })
        });
        assert!(buf.is_empty(), "every appended frame was decoded");
        let frame_len = case.frame.len();
        g.bench_function(BenchmarkId::new("refill-only", case.name), |b| {
            b.iter(|| {
                buf.extend_from_slice(black_box(&stream));
                for _ in 0..FRAMES_PER_ITER {
                    black_box(&buf[..frame_len]);
                    buf.advance(frame_len);
                }
            })
        });
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    for case in cases() {
        let mut buf = BytesMut::with_capacity(1024);
        let version = case.version;
        match &case.ours {
            // PUBLISH is the hot path and has its own entry point; use it as a caller would.
            Packet::Publish(p) => {
                g.bench_function(BenchmarkId::new("shardmq", case.name), |b| {
                    b.iter(|| {
                        buf.clear();
                        black_box(p).encode(version, &mut buf).expect("encodes");
                        black_box(&buf);
                    })
                });
            }
            p => {
                g.bench_function(BenchmarkId::new("shardmq", case.name), |b| {
                    b.iter(|| {
                        buf.clear();
                        black_box(p).encode(version, &mut buf).expect("encodes");
                        black_box(&buf);
                    })
                });
            }
        }
        g.bench_function(BenchmarkId::new("mqttbytes", case.name), |b| {
            b.iter(|| {
                buf.clear();
                black_box(&case.theirs).write(&mut buf).expect("encodes");
                black_box(&buf);
            })
        });
    }
    g.finish();
}

/// (case, filter, topic, expected) — `$SYS/…` must not match a leading wildcard (MQTT-4.7.2-1).
const TOPIC_TABLE: [(&str, &str, &str, bool); 6] = [
    (
        "exact",
        "sensors/building-7/floor-3/room-12/temperature",
        "sensors/building-7/floor-3/room-12/temperature",
        true,
    ),
    (
        "plus-middle",
        "sensors/+/floor-3/+/temperature",
        "sensors/building-7/floor-3/room-12/temperature",
        true,
    ),
    (
        "hash-tail",
        "sensors/building-7/#",
        "sensors/building-7/floor-3/room-12/temperature",
        true,
    ),
    (
        "miss-early",
        "alerts/building-7/floor-3/room-12/temperature",
        "sensors/building-7/floor-3/room-12/temperature",
        false,
    ),
    (
        "miss-late",
        "sensors/building-7/floor-3/room-12/humidity",
        "sensors/building-7/floor-3/room-12/temperature",
        false,
    ),
    ("sys-vs-hash", "#", "$SYS/broker/clients/connected", false),
];

fn bench_topic_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic_match");
    for (name, filter, topic_name, expected) in TOPIC_TABLE {
        assert_eq!(
            topic::matches(filter.as_bytes(), topic_name.as_bytes()),
            expected,
            "{name}"
        );
        assert_eq!(
            mqttbytes::matches(topic_name, filter),
            expected,
            "mqttbytes {name}"
        );
        g.bench_function(BenchmarkId::new("shardmq", name), |b| {
            b.iter(|| {
                topic::matches(
                    black_box(filter.as_bytes()),
                    black_box(topic_name.as_bytes()),
                )
            })
        });
        g.bench_function(BenchmarkId::new("mqttbytes", name), |b| {
            b.iter(|| mqttbytes::matches(black_box(topic_name), black_box(filter)))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(50)
        .nresamples(10_000)
}

criterion_group! {
    name = codec;
    config = config();
    targets = bench_varint, bench_decode, bench_encode, bench_topic_match
}
criterion_main!(codec);
