//! Fuzz target: the session state machine (`protocol::session`), driven as a shard drives it.
//!
//! The input is a small program. Its first 8 bytes pick the [`SessionLimits`] (tiny windows,
//! queues and packet sizes, features on or off) and whether a store keeps persistent
//! sessions; then come operations, an opcode byte (taken modulo 17) and a few argument
//! bytes each, missing bytes reading as 0:
//!
//! | op | arguments                      | what happens                                        |
//! |----|--------------------------------|-----------------------------------------------------|
//! |  0 | version flags props more keep  | CONNECT: a new connection (or, bit 7 of `flags`     |
//! |    |                                | clear while connected, a second CONNECT)            |
//! |  1 | flags id topic size props      | client PUBLISH, QoS 0/1/2, alias, expiry, format    |
//! |  2 | id                             | client PUBACK                                       |
//! |  3 | id reason                      | client PUBREC (5.0: maybe a failure reason)         |
//! |  4 | id                             | client PUBREL                                       |
//! |  5 | id                             | client PUBCOMP                                      |
//! |  6 | id n (filter options)×n props  | client SUBSCRIBE (1 to 3 filters)                   |
//! |  7 | id n filter×n                  | client UNSUBSCRIBE                                  |
//! |  8 |                                | client PINGREQ                                      |
//! |  9 | reason props                   | client DISCONNECT (reason 0x04, session expiry)     |
//! | 10 | reason                         | client AUTH                                         |
//! | 11 | flags topic size grant count   | the shard delivers a message (routed or granted)    |
//! | 12 | seconds                        | time passes (255: a day); parked-session timers run |
//! | 13 | how                            | the connection ends (lost, keep alive, shutdown)    |
//! | 14 |                                | broker restart: a parked session goes through the   |
//! |    |                                | store codec and `Session::from_image`               |
//! | 15 | bits                           | the client stops/starts reading, acks what it holds |
//! | 16 | len bytes×len                  | raw client bytes, decoded as the connection would   |
//!
//! A packet id argument is 0–7 (`< 0x80`), one the client has seen (`0x80..0xc0`), or near
//! 65535. Client packets are encoded and decoded back (with the broker's Maximum Packet Size)
//! before the session sees them, so it only ever gets what the decoder lets through.
//!
//! Checked after every operation, besides "never panics": every byte the session writes is a
//! whole packet the client accepts (within the client's Maximum Packet Size, only packets a
//! server sends, topic aliases within the client's maximum and known before used); QoS 1/2
//! PUBLISH packet ids are non-zero and not reused while in flight, and no more are
//! unacknowledged on a connection than its Receive Maximum (and `max_inflight`) allow; the
//! window never grows past its capacity; the queue never holds more than
//! `max_queued_messages`; ids in the window are unique and non-zero; an incoming QoS 2 id is
//! routed once until PUBREL, and the session's unreleased ids are exactly those; each store
//! sequence number is reported done at most once, and only one it was given; and the
//! session's image survives `encode_session` → `decode_session` (same bytes again) and
//! `Session::from_image` (same image again).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use shardmq::protocol::session::{
    Ack, Action, AppMessage, Grant, Message, Qos2Event, Session, SessionImage, SessionLimits,
    Subscription, check_connect, encode_refusal,
};
use shardmq::protocol::{
    Auth, Connect, Disconnect, Packet, PubAck, Publish, QoS, ReasonCode, RetainHandling, Str,
    Subscribe, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe, Version, Will, decode,
};
use shardmq::store::codec::{Deadlines, decode_session, encode_session};

/// The Unix time at which the broker's clock read 0 (for the store codec's deadlines).
const START_UNIX: u64 = 1_700_000_000;
/// The one client this target plays.
const CLIENT_ID: &str = "c";
/// Longest client identifier accepted.
const MAX_CLIENT_ID: usize = 23;
/// Retained messages the target's little retained store keeps.
const MAX_RETAINED: usize = 16;

/// Topic names the operations choose from (by the low 4 bits of a byte).
const TOPICS: [&str; 16] = [
    "a",
    "a/b",
    "a/b/c",
    "b",
    "$SYS/x",
    "a//b",
    "/a",
    "a/",
    "x/y/z/w/v/u/t/s/r",
    "é/ü",
    "c",
    "a/b/c/d",
    "$share/x",
    "r",
    "t",
    "w/t",
];

/// Topic filters the operations choose from (by the low 4 bits of a byte).
const FILTERS: [&str; 16] = [
    "a",
    "a/b",
    "a/+",
    "+/b",
    "#",
    "a/#",
    "+",
    "$SYS/#",
    "$share/g/a/#",
    "$share/g/#",
    "$share/h/+/b",
    "a/b/c/d",
    "+/+/+/+/+/+/+/+/+",
    "é/+",
    "/#",
    "w/t",
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut h = Harness::new(&mut input);
    while !input.0.is_empty() {
        h.step(&mut input);
        h.read();
        h.check();
    }
    // The end of the program: the connection goes away, the session parks or ends.
    h.close();
    h.check();
});

/// The fuzz input, read a byte at a time; past its end every byte reads as 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

fn qos(b: u8) -> QoS {
    [
        QoS::AtMostOnce,
        QoS::AtLeastOnce,
        QoS::ExactlyOnce,
        QoS::ExactlyOnce,
    ][usize::from(b & 3)]
}

/// A topic name by the low 4 bits of `b`; bit 4 makes it long (past the broker's longest
/// aliased topic).
fn topic(b: u8) -> TopicName {
    let mut t = TOPICS[usize::from(b & 15)].to_string();
    if b & 0x10 != 0 {
        t.push('/');
        t.push_str(&"l".repeat(300));
    }
    TopicName::new(Bytes::from(t)).expect("the table holds valid topic names")
}

fn filter(b: u8) -> TopicFilter {
    TopicFilter::new(Bytes::from_static(FILTERS[usize::from(b & 15)].as_bytes()))
        .expect("the table holds valid topic filters")
}

/// A payload of `b` bytes (bit 7: of `(b & 0x7f) * 32` bytes).
fn payload(b: u8, utf8: bool) -> Bytes {
    let n = if b & 0x80 != 0 {
        usize::from(b & 0x7f) * 32
    } else {
        usize::from(b)
    };
    let mut p = vec![b'x'; n];
    if !utf8 && n > 0 {
        p[n / 2] = 0xff;
    }
    Bytes::from(p)
}

/// The limits and whether a store keeps persistent sessions, from 8 bytes.
fn limits(i: &mut Input) -> (SessionLimits, bool) {
    let b: [u8; 8] = std::array::from_fn(|_| i.u8());
    let l = SessionLimits {
        max_inflight: if b[0] & 0x80 != 0 {
            64
        } else {
            1 + u16::from(b[0] % 8)
        },
        max_queued_messages: usize::from(b[1] % 17),
        max_queued_bytes: if b[2] == 0 {
            16 << 20
        } else {
            usize::from(b[2]) * 16
        },
        queue_qos0_offline: b[3] & 1 != 0,
        retain_available: b[3] & 2 == 0,
        wildcard_subscriptions: b[3] & 4 == 0,
        subscription_identifiers: b[3] & 8 == 0,
        shared_subscriptions: b[3] & 0x10 == 0,
        server_topic_aliases: b[3] & 0x20 == 0,
        maximum_qos: [
            QoS::ExactlyOnce,
            QoS::AtMostOnce,
            QoS::AtLeastOnce,
            QoS::ExactlyOnce,
        ][usize::from(b[3] >> 6)],
        max_subscriptions: usize::from(b[4] & 15),
        max_topic_levels: 1 + usize::from((b[4] >> 4) % 8),
        receive_maximum: 1 + u16::from(b[5] % 8),
        max_topic_aliases: u16::from((b[5] >> 4) % 4),
        max_keep_alive: [0, 10, 60, u16::MAX][usize::from(b[6] & 3)],
        max_session_expiry: [u32::MAX, 0, 30, 1000][usize::from((b[6] >> 2) & 3)],
        response_information: if b[6] & 0x10 != 0 {
            "resp/%c".into()
        } else {
            String::new()
        },
        max_packet_size: [1 << 20, 128, 300, 2000][usize::from(b[7] & 3)],
        max_write_buffer: [4 << 20, 64, 600, 5000][usize::from((b[7] >> 2) & 3)],
    };
    (l, b[6] & 0x20 == 0)
}

/// The live connection as its client sees it.
struct Conn {
    version: Version,
    /// The client's Maximum Packet Size.
    max_packet: u32,
    /// QoS 1/2 PUBLISHes the broker may have unacknowledged on this connection: the client's
    /// Receive Maximum, bounded by `max_inflight`.
    cap: usize,
    /// The client's Topic Alias Maximum.
    alias_max: u16,
    /// Topic aliases the broker set on this connection.
    aliases: BTreeMap<u16, TopicName>,
    /// QoS 1/2 PUBLISHes received on this connection whose packet id the client has not
    /// freed (PUBACK, PUBCOMP, failed PUBREC): at most `cap`, never sent again meanwhile.
    in_use: BTreeMap<u16, QoS>,
    /// PUBRELs received: PUBCOMP owed.
    rels: BTreeSet<u16>,
    /// PUBRECs received for the client's QoS 2 PUBLISHes: PUBREL owed.
    recs: BTreeSet<u16>,
    /// The client is not reading.
    stalled: bool,
}

/// One shard with one client, its session, and what the target knows they must agree on.
struct Harness {
    limits: Arc<SessionLimits>,
    /// Persistent sessions go through the store (store sequence numbers).
    store: bool,
    now: u32,
    /// The client's session, connected or parked.
    session: Option<Session>,
    conn: Option<Conn>,
    /// When the session was parked.
    parked_at: u32,
    /// Retained messages by topic.
    retained: BTreeMap<Vec<u8>, Message>,
    /// Incoming QoS 2 ids routed and not yet released.
    inbound_qos2: BTreeSet<u16>,
    /// Store sequence numbers handed out and reported done.
    seqs: BTreeSet<u64>,
    done: BTreeSet<u64>,
    /// The window's size after the previous operation.
    prev_inflight: usize,
    actions: Vec<Action>,
    /// Subscriptions of the SUBSCRIBE being applied.
    subscribed: Vec<(TopicFilter, Subscription, bool)>,
}

impl Harness {
    fn new(i: &mut Input) -> Self {
        let (limits, store) = limits(i);
        Self {
            limits: Arc::new(limits),
            store,
            now: 0,
            session: None,
            conn: None,
            parked_at: 0,
            retained: BTreeMap::new(),
            inbound_qos2: BTreeSet::new(),
            seqs: BTreeSet::new(),
            done: BTreeSet::new(),
            prev_inflight: 0,
            actions: Vec::new(),
            subscribed: Vec::new(),
        }
    }

    fn v5(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.version.is_v5())
    }

    /// A packet id: 0–7, one the client has seen, or one near 65535.
    fn id(&self, b: u8) -> u16 {
        match b >> 6 {
            0 | 1 => u16::from(b & 7),
            2 => {
                let mut known: Vec<u16> = self.inbound_qos2.iter().copied().collect();
                if let Some(c) = &self.conn {
                    known.extend(c.in_use.keys());
                    known.extend(&c.rels);
                    known.extend(&c.recs);
                }
                if known.is_empty() {
                    1
                } else {
                    known[usize::from(b & 0x3f) % known.len()]
                }
            }
            _ => u16::MAX - u16::from(b & 0x3f),
        }
    }

    fn step(&mut self, i: &mut Input) {
        match i.u8() % 17 {
            0 => self.connect_op(i),
            1 => self.publish_op(i),
            2 => {
                let id = self.id(i.u8());
                self.send(Packet::PubAck(PubAck::new(id)));
            }
            3 => {
                let id = self.id(i.u8());
                let mut a = PubAck::new(id);
                a.reason = ReasonCode(
                    [0x00, 0x10, 0x80, 0x87, 0x91, 0x97, 0x83, 0x00][usize::from(i.u8() & 7)],
                );
                self.send(Packet::PubRec(a));
            }
            4 => {
                let id = self.id(i.u8());
                self.send(Packet::PubRel(PubAck::new(id)));
            }
            5 => {
                let id = self.id(i.u8());
                self.send(Packet::PubComp(PubAck::new(id)));
            }
            6 => self.subscribe_op(i),
            7 => {
                let packet_id = self.id(i.u8());
                let n = 1 + i.u8() % 3;
                let filters = (0..n).map(|_| filter(i.u8())).collect();
                self.send(Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    properties: Default::default(),
                }));
            }
            8 => self.send(Packet::PingReq),
            9 => {
                let reason =
                    [0x00, 0x04, 0x80, 0x8e, 0x81, 0x95, 0x00, 0x04][usize::from(i.u8() & 7)];
                let mut d = Disconnect {
                    reason: ReasonCode(reason),
                    properties: Default::default(),
                };
                if let Some(e) = [None, Some(0), Some(30), Some(u32::MAX)][usize::from(i.u8() & 3)]
                {
                    d.properties.session_expiry_interval = Some(e);
                }
                self.send(Packet::Disconnect(d));
            }
            10 => {
                let b = i.u8();
                let mut a = Auth {
                    reason: ReasonCode([0x00, 0x18, 0x19, 0x18][usize::from(b & 3)]),
                    properties: Default::default(),
                };
                if b & 4 != 0 {
                    a.properties.authentication_method = Some(Str::from("SCRAM-SHA-256"));
                }
                self.send(Packet::Auth(a));
            }
            11 => self.deliver_op(i),
            12 => {
                let b = i.u8();
                self.now = self
                    .now
                    .saturating_add(if b == 0xff { 86_400 } else { u32::from(b) });
                self.timers();
            }
            13 => match i.u8() & 3 {
                1 => self.kick(ReasonCode::KEEP_ALIVE_TIMEOUT),
                2 => self.kick(ReasonCode::SERVER_SHUTTING_DOWN),
                _ => self.close(),
            },
            14 => self.restart(),
            15 => self.client_op(i.u8()),
            _ => {
                let n = usize::from(i.u8());
                let bytes: Vec<u8> = (0..n).map(|_| i.u8()).collect();
                self.client_bytes(BytesMut::from(&bytes[..]));
            }
        }
    }

    fn connect_op(&mut self, i: &mut Input) {
        let version = [Version::V3_1, Version::V3_1_1, Version::V5][usize::from(i.u8() % 3)];
        let flags = i.u8();
        let p = i.u8();
        let q = i.u8();
        let keep_alive = u16::from(i.u8());
        let mut c = Connect {
            version,
            clean_start: flags & 1 != 0,
            keep_alive,
            client_id: Str::from(if q & 8 != 0 { "" } else { CLIENT_ID }),
            will: None,
            username: (flags & 0x20 != 0).then(|| Str::from("user")),
            password: (flags & 0x40 != 0).then(|| Bytes::from_static(b"pass")),
            properties: Default::default(),
        };
        if flags & 2 != 0 {
            let mut will = Will {
                topic: topic(q >> 4),
                payload: Bytes::from_static(b"gone"),
                qos: qos(flags >> 2),
                retain: flags & 0x10 != 0,
                properties: Default::default(),
            };
            if version.is_v5() {
                if let Some(d) = [None, Some(0), Some(5), Some(100)][usize::from(q & 3)] {
                    will.properties.will_delay_interval = Some(d);
                }
                if q & 4 != 0 {
                    will.properties.message_expiry_interval = Some(10);
                }
            }
            c.will = Some(will);
        }
        if version.is_v5() {
            let cp = &mut c.properties;
            if let Some(e) = [None, Some(0), Some(60), Some(u32::MAX)][usize::from(p & 3)] {
                cp.session_expiry_interval = Some(e);
            }
            if let Some(r) = [None, Some(1), Some(2), Some(5)][usize::from((p >> 2) & 3)] {
                cp.receive_maximum = Some(r);
            }
            if let Some(m) = [None, Some(40), Some(300), Some(100_000)][usize::from((p >> 4) & 3)] {
                cp.maximum_packet_size = Some(m);
            }
            if p & 0x40 != 0 {
                cp.topic_alias_maximum = Some(2);
            }
            if p & 0x80 != 0 {
                cp.request_problem_information = Some(0);
            }
            if q & 0x80 != 0 {
                cp.request_response_information = Some(1);
            }
        }
        if self.conn.is_some() && flags & 0x80 == 0 {
            // A second CONNECT on the same connection.
            self.send(Packet::Connect(Box::new(c)));
            return;
        }
        // A new connection: its CONNECT as the decoder gives it.
        let mut wire = BytesMut::new();
        if Packet::Connect(Box::new(c))
            .encode(version, &mut wire)
            .is_err()
        {
            return;
        }
        let c = match decode(&mut wire, version, self.limits.max_packet_size) {
            Ok(Some(Packet::Connect(c))) => *c,
            Ok(other) => panic!("a CONNECT decoded as {other:?}"),
            // Malformed (or too large): closed before it has a session.
            Err(_) => return,
        };
        self.accept(c);
    }

    /// The shard's CONNECT handling after the decoder: refusals, takeover, attach, CONNACK.
    fn accept(&mut self, c: Connect) {
        let l = self.limits.clone();
        let will_refusal = c.will.as_ref().and_then(|w| {
            if w.qos > l.maximum_qos {
                Some(ReasonCode::QOS_NOT_SUPPORTED)
            } else if w.retain && !l.retain_available {
                Some(ReasonCode::RETAIN_NOT_SUPPORTED)
            } else {
                None
            }
        });
        let accepted = match will_refusal {
            Some(reason) => Err(reason),
            None => check_connect(&c, MAX_CLIENT_ID, || Str::from(CLIENT_ID)),
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(reason) => {
                let mut out = BytesMut::new();
                encode_refusal(c.version, reason, &mut out);
                match decode(&mut out, c.version, u32::MAX) {
                    Ok(Some(Packet::ConnAck(a))) => assert!(!a.session_present),
                    other => panic!("a refusal decoded as {other:?}"),
                }
                assert!(out.is_empty());
                return;
            }
        };
        assert_eq!(accepted.client_id.as_str(), CLIENT_ID);
        // Takeover: the old connection is kicked; a clean start ends the old session.
        if self.conn.is_some() {
            self.disconnect_with(ReasonCode::SESSION_TAKEN_OVER);
            self.read();
            self.conn = None;
            let s = self.session.as_mut().expect("a connection has a session");
            let will = s.detach();
            let delayed = s.take_delayed_will();
            if let Some(w) = will.or(if c.clean_start { delayed } else { None }) {
                self.publish_will(w, false);
            }
        }
        let old = self.session.take();
        let (mut s, present) = match old {
            Some(old) if !c.clean_start => (old, true),
            old => {
                if let Some(mut old) = old {
                    if let Some(w) = old.take_delayed_will() {
                        self.publish_will(w, false);
                    }
                    old.take_shared(true);
                    old.clear();
                }
                self.inbound_qos2.clear();
                self.seqs.clear();
                self.done.clear();
                self.prev_inflight = 0;
                (Session::new(accepted.client_id.clone(), l.clone()), false)
            }
        };
        s.attach(&c);
        s.set_authz(None);
        let assigned = accepted.assigned.then_some(&accepted.client_id);
        s.connack(present, &c, assigned, None, self.now);
        assert!(s.is_connected());
        let v5 = c.version.is_v5();
        let p = &c.properties;
        let receive_max = if v5 {
            p.receive_maximum.unwrap_or(u16::MAX)
        } else {
            u16::MAX
        };
        self.conn = Some(Conn {
            version: c.version,
            max_packet: if v5 {
                p.maximum_packet_size.unwrap_or(u32::MAX)
            } else {
                u32::MAX
            },
            cap: usize::from(l.max_inflight.min(receive_max).max(1)),
            alias_max: if v5 {
                p.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
            aliases: BTreeMap::new(),
            in_use: BTreeMap::new(),
            rels: BTreeSet::new(),
            recs: BTreeSet::new(),
            stalled: false,
        });
        // The CONNACK comes first (the client reads it even if it later stops reading).
        let mut tx = BytesMut::new();
        s.swap_tx(&mut tx);
        self.session = Some(s);
        match decode(
            &mut tx,
            c.version,
            self.conn.as_ref().map_or(u32::MAX, |c| c.max_packet),
        ) {
            Ok(Some(Packet::ConnAck(a))) => {
                assert!(a.reason.is_success(), "{a:?}");
                assert_eq!(a.session_present, present && c.version != Version::V3_1);
            }
            other => panic!("the first packet of a connection is {other:?}, not a CONNACK"),
        }
        self.observe(tx);
    }

    fn publish_op(&mut self, i: &mut Input) {
        let f = i.u8();
        let id = self.id(i.u8());
        let t = i.u8();
        let size = i.u8();
        let pr = i.u8();
        let q = qos(f);
        let mut p = Publish {
            dup: f & 4 != 0 || f & 3 == 3,
            qos: q,
            retain: f & 8 != 0,
            topic: topic(t),
            packet_id: if q == QoS::AtMostOnce { 0 } else { id },
            payload: payload(size, pr & 0x40 == 0),
            properties: Default::default(),
        };
        if self.v5() {
            let pp = &mut p.properties;
            if let Some(a) = [None, Some(1), Some(2), Some(9)][usize::from(pr & 3)] {
                pp.topic_alias = Some(a);
                if pr & 4 != 0 {
                    p.topic = TopicName::default();
                }
            }
            if let Some(e) = [None, Some(0), Some(1), Some(30)][usize::from((pr >> 3) & 3)] {
                pp.message_expiry_interval = Some(e);
            }
            if pr & 0x20 != 0 {
                pp.payload_format_indicator = Some(1);
            }
            if pr & 0x80 != 0 {
                pp.subscription_identifiers = vec![1];
            }
            if f & 0x10 != 0 {
                pp.user_properties = vec![(Str::from("k"), Str::from("v"))];
            }
            if f & 0x20 != 0 {
                pp.response_topic = Some(Str::from("r"));
                pp.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
            }
        }
        self.send(Packet::Publish(p));
    }

    fn subscribe_op(&mut self, i: &mut Input) {
        let packet_id = self.id(i.u8());
        let n = 1 + i.u8() % 3;
        let filters = (0..n)
            .map(|_| {
                let f = filter(i.u8());
                let o = i.u8();
                let options = SubscriptionOptions {
                    qos: qos(o),
                    no_local: o & 4 != 0,
                    retain_as_published: o & 8 != 0,
                    retain_handling: [
                        RetainHandling::SendAtSubscribe,
                        RetainHandling::SendIfNew,
                        RetainHandling::DoNotSend,
                        RetainHandling::SendAtSubscribe,
                    ][usize::from((o >> 4) & 3)],
                };
                (f, options)
            })
            .collect();
        let pb = i.u8();
        let mut s = Subscribe {
            packet_id,
            filters,
            properties: Default::default(),
        };
        if pb & 1 != 0 {
            s.properties.subscription_identifiers = vec![1 + u32::from(pb >> 1)];
        }
        self.send(Packet::Subscribe(s));
    }

    /// The shard delivers a message: routed through the session's subscriptions (as
    /// `deliver_local`), or with a grant of its own (a retained message, a shared group's
    /// pick, a message from another shard).
    fn deliver_op(&mut self, i: &mut Input) {
        let f = i.u8();
        let t = i.u8();
        let size = i.u8();
        let g = i.u8();
        let count = 1 + i.u8() % 16;
        let mut publish = Publish {
            qos: qos(f),
            retain: f & 4 != 0,
            topic: topic(t),
            payload: payload(size, true),
            ..Default::default()
        };
        if f & 0x40 != 0 {
            publish.properties.user_properties = vec![(Str::from("k"), Str::from("v"))];
            publish.properties.content_type = Some(Str::from("text/plain"));
        }
        if f & 0x80 != 0 {
            publish.properties.payload_format_indicator = Some(1);
        }
        let expires_at = [None, Some(0), Some(5), Some(100)][usize::from((f >> 3) & 3)]
            .map(|e| self.now.saturating_add(e));
        let msg = Arc::new(AppMessage {
            publish,
            origin: Str::from(if f & 0x20 != 0 { CLIENT_ID } else { "other" }),
            expires_at,
        });
        const IDS: [&[u32]; 4] = [&[], &[1], &[1, 2], &[7]];
        let ids = IDS[usize::from((g >> 3) & 3)];
        let share =
            (g & 0x20 != 0).then(|| TopicFilter::new(Bytes::from_static(b"$share/g/#")).unwrap());
        for _ in 0..count {
            if g & 0x80 != 0 {
                self.route(msg.clone());
            } else {
                let grant = Grant {
                    qos: qos(g),
                    retain: g & 4 != 0,
                    ids,
                    share: share.as_ref(),
                    seq: 0,
                };
                self.deliver_to(&msg, grant);
            }
        }
    }

    fn client_op(&mut self, b: u8) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        if b & 1 != 0 {
            c.stalled = !c.stalled;
        }
        if b & 2 == 0 {
            return;
        }
        // The client acknowledges everything it holds, oldest id first (bit 2: newest first).
        let mut acks: Vec<Packet> = Vec::new();
        for (&id, &q) in &c.in_use {
            if q == QoS::AtLeastOnce {
                acks.push(Packet::PubAck(PubAck::new(id)));
            } else if !c.rels.contains(&id) {
                acks.push(Packet::PubRec(PubAck::new(id)));
            }
        }
        acks.extend(c.rels.iter().map(|&id| Packet::PubComp(PubAck::new(id))));
        acks.extend(c.recs.iter().map(|&id| Packet::PubRel(PubAck::new(id))));
        if b & 4 != 0 {
            acks.reverse();
        }
        for p in acks {
            if self.conn.is_none() {
                break;
            }
            self.send(p);
            self.read();
        }
    }

    /// The client sends `p` (nothing without a connection).
    fn send(&mut self, p: Packet) {
        let Some(c) = &self.conn else {
            return;
        };
        let mut wire = BytesMut::new();
        if p.encode(c.version, &mut wire).is_err() {
            return;
        }
        self.client_bytes(wire);
    }

    /// Bytes from the client, decoded and handled as the connection task does.
    fn client_bytes(&mut self, mut wire: BytesMut) {
        loop {
            let Some(c) = &self.conn else {
                return;
            };
            match decode(&mut wire, c.version, self.limits.max_packet_size) {
                Ok(Some(p)) => self.handle(p),
                Ok(None) => return,
                Err(e) => {
                    let s = self.session.as_mut().expect("a connection has a session");
                    s.disconnect_because(e.reason, Some(e.what));
                    self.read();
                    self.close();
                    return;
                }
            }
        }
    }

    fn handle(&mut self, p: Packet) {
        let v5 = self.v5();
        let c = self.conn.as_mut().expect("connected");
        // The client frees its ids before the broker may reuse them.
        let mut released = None;
        match &p {
            Packet::PubAck(a) | Packet::PubComp(a) => {
                c.in_use.remove(&a.packet_id);
                c.rels.remove(&a.packet_id);
            }
            Packet::PubRec(a) if v5 && !a.reason.is_success() => {
                c.in_use.remove(&a.packet_id);
            }
            Packet::PubRel(a) => {
                c.recs.remove(&a.packet_id);
                released = Some(a.packet_id);
            }
            _ => {}
        }
        let s = self.session.as_mut().expect("a connection has a session");
        let mut actions = std::mem::take(&mut self.actions);
        let r = s.handle(p, self.now, &mut actions);
        if let Err(e) = r {
            // A protocol violation: the shard closes without applying anything.
            actions.clear();
            self.actions = actions;
            let s = self.session.as_mut().expect("a connection has a session");
            s.disconnect_because(e.reason, Some(e.what));
            self.read();
            self.close();
            return;
        }
        if let Some(id) = released {
            self.inbound_qos2.remove(&id);
        }
        let mut disconnect = false;
        for action in actions.drain(..) {
            match action {
                Action::Publish { msg, ack } => {
                    assert_eq!(msg.packet_id, 0);
                    assert!(!msg.dup && !msg.topic.is_empty());
                    assert_eq!(msg.properties.topic_alias, None);
                    assert_eq!(msg.origin.as_str(), CLIENT_ID);
                    assert!(msg.qos <= self.limits.maximum_qos);
                    if let Ack::PubRec(id) = ack {
                        assert!(
                            self.inbound_qos2.insert(id),
                            "incoming QoS 2 id {id} routed twice before PUBREL"
                        );
                    }
                    let matched = self.route(msg);
                    if let Some(s) = self.session.as_mut() {
                        s.ack(ack, matched);
                    }
                }
                Action::Subscribe {
                    filter,
                    sub,
                    is_new,
                } => {
                    assert!(sub.options.qos <= self.limits.maximum_qos);
                    self.subscribed.push((filter, sub, is_new));
                }
                Action::SubAck { packet_id, reasons } => {
                    let Some(s) = self.session.as_mut() else {
                        continue;
                    };
                    s.suback(packet_id, reasons);
                    for (filter, sub, is_new) in std::mem::take(&mut self.subscribed) {
                        let s = self.session.as_ref().expect("still here");
                        if !s.retained_on_subscribe(&filter, &sub.options, is_new) {
                            continue;
                        }
                        let found: Vec<Message> = self
                            .retained
                            .values()
                            .filter(|m| filter.matches(&m.topic) && !m.is_expired(self.now))
                            .cloned()
                            .collect();
                        let ids: &[u32] = if sub.id != 0 {
                            core::slice::from_ref(&sub.id)
                        } else {
                            &[]
                        };
                        for m in found {
                            let grant = Grant {
                                qos: sub.options.qos,
                                retain: true,
                                ids,
                                share: None,
                                seq: 0,
                            };
                            self.deliver_to(&m, grant);
                        }
                    }
                }
                Action::Unsubscribe(_) => {}
                Action::Disconnect { .. } => disconnect = true,
            }
        }
        self.actions = actions;
        if disconnect {
            // The will goes out from `close` when the DISCONNECT asked for it (0x04).
            self.read();
            self.close();
        }
    }

    /// Routes a message as the shard does: the retained store, then the session's matching
    /// subscriptions (No Local, Retain As Published, subscription ids, shared groups).
    fn route(&mut self, msg: Message) -> bool {
        if msg.retain {
            if msg.payload.is_empty() {
                self.retained.remove(msg.topic.as_bytes());
            } else if self.retained.len() < MAX_RETAINED
                || self.retained.contains_key(msg.topic.as_bytes())
            {
                self.retained
                    .insert(msg.topic.as_bytes().to_vec(), msg.clone());
            }
        }
        let Some(s) = &self.session else {
            return false;
        };
        let v5 = s.version().is_v5();
        let mut matched = false;
        let mut plain: Option<(QoS, bool, Vec<u32>)> = None;
        let mut shared: Vec<(TopicFilter, Subscription)> = Vec::new();
        for (f, sub) in s.subscriptions() {
            if !f.matches(&msg.topic) {
                continue;
            }
            matched = true;
            if f.shared().is_some() {
                shared.push((f.clone(), *sub));
                continue;
            }
            let o = &sub.options;
            if o.no_local && msg.origin == *s.client_id() {
                continue;
            }
            let g = plain.get_or_insert((QoS::AtMostOnce, false, Vec::new()));
            g.0 = g.0.max(o.qos);
            g.1 |= o.retain_as_published && msg.retain && v5;
            if sub.id != 0 {
                g.2.push(sub.id);
            }
        }
        if let Some((qos, retain, ids)) = plain {
            let grant = Grant {
                qos,
                retain,
                ids: &ids,
                share: None,
                seq: 0,
            };
            self.deliver_to(&msg, grant);
        }
        for (f, sub) in shared {
            let ids = [sub.id];
            let grant = Grant {
                qos: sub.options.qos,
                retain: false,
                ids: if sub.id != 0 { &ids } else { &[] },
                share: Some(&f),
                seq: 0,
            };
            self.deliver_to(&msg, grant);
        }
        matched
    }

    /// One delivery to the session; a QoS 1/2 delivery to a persistent session gets a store
    /// sequence number when a store is configured.
    fn deliver_to(&mut self, msg: &Message, mut grant: Grant<'_>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let qos = msg.qos.min(grant.qos);
        if self.store && qos != QoS::AtMostOnce && s.is_persistent() {
            grant.seq = s.next_store_seq();
            assert!(
                self.seqs.insert(grant.seq),
                "store sequence {} given twice",
                grant.seq
            );
        }
        s.deliver(msg, grant, self.now);
    }

    fn publish_will(&mut self, will: Will, route: bool) {
        let mut properties = will.properties;
        if !properties.is_empty() {
            properties.will_delay_interval = None;
        }
        let expires_at = properties
            .message_expiry_interval
            .map(|e| self.now.saturating_add(e));
        let publish = Publish {
            qos: will.qos.min(self.limits.maximum_qos),
            retain: will.retain && self.limits.retain_available,
            topic: will.topic,
            payload: will.payload,
            properties,
            ..Default::default()
        };
        let msg = Arc::new(AppMessage {
            publish,
            origin: Str::from(CLIENT_ID),
            expires_at,
        });
        if route {
            self.route(msg);
        } else if msg.retain {
            // The session is being replaced: only the retained store sees the will.
            let kept = self.session.take();
            self.route(msg);
            self.session = kept;
        }
    }

    /// The broker kicks the client (5.0: DISCONNECT with `reason` first).
    fn kick(&mut self, reason: ReasonCode) {
        if self.conn.is_none() {
            return;
        }
        self.disconnect_with(reason);
        self.read();
        self.close();
    }

    fn disconnect_with(&mut self, reason: ReasonCode) {
        if let Some(s) = self.session.as_mut() {
            s.disconnect_with(reason);
        }
        // The client reads what is left even if it had stopped reading.
        if let Some(c) = self.conn.as_mut() {
            c.stalled = false;
        }
    }

    /// The connection ends: the will (unless DISCONNECT discarded it), then the session parks
    /// (persistent) or ends.
    fn close(&mut self) {
        if self.conn.take().is_none() {
            return;
        }
        let s = self.session.as_mut().expect("a connection has a session");
        let will = s.detach();
        assert!(!s.is_connected());
        if let Some(w) = will {
            self.publish_will(w, true);
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.is_persistent() {
            self.parked_at = self.now;
            s.take_shared(false);
        } else {
            self.end_session();
        }
    }

    fn end_session(&mut self) {
        let Some(mut s) = self.session.take() else {
            return;
        };
        assert!(!s.is_connected());
        if let Some(w) = s.take_delayed_will() {
            self.publish_will(w, true);
        }
        s.take_shared(true);
        s.clear();
        assert_eq!(
            (s.subscription_count(), s.queued(), s.inflight()),
            (0, 0, 0)
        );
        self.drain(&mut s);
        self.inbound_qos2.clear();
        self.seqs.clear();
        self.done.clear();
        self.prev_inflight = 0;
    }

    /// A parked session's timers: its delayed will, its expiry.
    fn timers(&mut self) {
        if self.conn.is_some() {
            return;
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.will_delay()
            .is_some_and(|d| self.now >= self.parked_at.saturating_add(d))
            && let Some(w) = s.take_delayed_will()
        {
            self.publish_will(w, true);
        }
        let Some(s) = self.session.as_ref() else {
            return;
        };
        let expiry = s.expiry();
        if expiry != u32::MAX && self.now >= self.parked_at.saturating_add(expiry) {
            self.end_session();
        }
    }

    /// A broker restart: the parked session comes back from its stored image.
    fn restart(&mut self) {
        if self.conn.is_some() {
            return;
        }
        let Some(s) = self.session.as_ref() else {
            return;
        };
        let bytes = encode_session(&s.image(), self.deadlines(s), START_UNIX);
        let (image, _) = decode_session(CLIENT_ID.as_bytes(), &bytes, START_UNIX)
            .unwrap_or_else(|e| panic!("a stored session does not decode: {e}"));
        let restored = Session::from_image(image, self.limits.clone());
        // Store sequence numbers live in the store's own records, not in this image.
        self.seqs.clear();
        self.done.clear();
        self.prev_inflight = restored.inflight();
        self.session = Some(restored);
    }

    fn deadlines(&self, s: &Session) -> Deadlines {
        let at = |secs: u32| START_UNIX + u64::from(self.now) + u64::from(secs);
        Deadlines {
            session_end: (s.expiry() != u32::MAX).then(|| at(s.expiry())),
            will_due: s.will_delay().map(at),
        }
    }

    /// The client reads what the session wrote (unless it stopped reading).
    fn read(&mut self) {
        let (Some(c), Some(s)) = (&self.conn, self.session.as_mut()) else {
            return;
        };
        if c.stalled {
            return;
        }
        let mut tx = BytesMut::new();
        s.swap_tx(&mut tx);
        self.observe(tx);
    }

    /// Checks each packet the client got.
    fn observe(&mut self, mut tx: BytesMut) {
        let c = self.conn.as_mut().expect("connected");
        while !tx.is_empty() {
            let p = match decode(&mut tx, c.version, c.max_packet) {
                Ok(Some(p)) => p,
                Ok(None) => panic!("the transmit buffer ends in a partial packet: {tx:02x?}"),
                Err(e) => panic!(
                    "the client refuses what the broker sent ({:?}, Maximum Packet Size {}): {e}",
                    c.version, c.max_packet
                ),
            };
            match p {
                Packet::Publish(p) => {
                    if p.qos != QoS::AtMostOnce {
                        let id = p.packet_id;
                        assert_ne!(id, 0, "a QoS {:?} PUBLISH with packet id 0", p.qos);
                        assert!(
                            c.in_use.insert(id, p.qos).is_none(),
                            "packet id {id} sent again while in flight (dup {})",
                            p.dup
                        );
                        assert!(
                            c.in_use.len() <= c.cap,
                            "{} QoS 1/2 PUBLISHes unacknowledged, Receive Maximum / max_inflight {}",
                            c.in_use.len(),
                            c.cap
                        );
                    }
                    match p.properties.topic_alias {
                        Some(a) => {
                            assert!(
                                a >= 1 && a <= c.alias_max,
                                "topic alias {a} over {}",
                                c.alias_max
                            );
                            if p.topic.is_empty() {
                                assert!(
                                    c.aliases.contains_key(&a),
                                    "topic alias {a} used before set"
                                );
                            } else {
                                c.aliases.insert(a, p.topic.clone());
                            }
                        }
                        None => assert!(!p.topic.is_empty(), "a PUBLISH without a topic"),
                    }
                    assert!(!p.properties.subscription_identifiers.contains(&0));
                }
                Packet::PubRel(a) if a.reason.is_success() => {
                    c.rels.insert(a.packet_id);
                }
                Packet::PubRec(a) if a.reason.is_success() => {
                    c.recs.insert(a.packet_id);
                }
                Packet::Connect(_)
                | Packet::Subscribe(_)
                | Packet::Unsubscribe(_)
                | Packet::PingReq => panic!("the broker sent a client's packet: {p:?}"),
                _ => {}
            }
        }
    }

    /// Store sequence numbers reported done: each one given out, and reported once.
    fn drain(&mut self, s: &mut Session) {
        let (seqs, done) = (&self.seqs, &mut self.done);
        s.drain_done(
            |seq| {
                assert!(
                    seqs.contains(&seq),
                    "store sequence {seq} done but never given"
                );
                assert!(done.insert(seq), "store sequence {seq} done twice");
            },
            |e| match e {
                Qos2Event::Sent { id, .. }
                | Qos2Event::Released { id, .. }
                | Qos2Event::Completed { id }
                | Qos2Event::Received { id }
                | Qos2Event::Freed { id } => assert_ne!(id, 0),
            },
        );
    }

    fn check(&mut self) {
        let Some(mut s) = self.session.take() else {
            assert!(self.conn.is_none());
            return;
        };
        assert_eq!(s.is_connected(), self.conn.is_some());
        let l = self.limits.clone();
        assert!(
            s.queued() <= l.max_queued_messages,
            "{} queued, max_queued_messages {}",
            s.queued(),
            l.max_queued_messages
        );
        // The window grows only while below its capacity.
        let cap = self.conn.as_ref().map_or(0, |c| c.cap);
        if s.inflight() > self.prev_inflight {
            assert!(
                s.inflight() <= cap,
                "window of {} over its capacity {cap}",
                s.inflight()
            );
        }
        self.prev_inflight = s.inflight();

        let image = s.image();
        let mut ids = BTreeSet::new();
        for (id, _, _) in &image.inflight {
            assert_ne!(*id, 0, "packet id 0 in flight");
            assert!(ids.insert(*id), "packet id {id} twice in the window");
        }
        let inbound: BTreeSet<u16> = image.inbound.iter().copied().collect();
        assert_eq!(
            inbound.len(),
            image.inbound.len(),
            "an incoming QoS 2 id twice"
        );
        assert_eq!(inbound, self.inbound_qos2, "unreleased incoming QoS 2 ids");
        assert!(inbound.len() <= usize::from(l.receive_maximum));

        self.drain(&mut s);

        // The image through the store codec: the same bytes again, and the same image again
        // from the session rebuilt from it.
        let d = self.deadlines(&s);
        let bytes = encode_session(&image, d, START_UNIX);
        let (back, d2) = decode_session(CLIENT_ID.as_bytes(), &bytes, START_UNIX)
            .unwrap_or_else(|e| panic!("a session image does not decode: {e}"));
        assert_eq!(d2, d);
        assert_eq!(
            encode_session(&back, d2, START_UNIX),
            bytes,
            "re-encoded image differs"
        );
        let rebuilt = Session::from_image(back, l);
        assert_eq!(
            sorted(&rebuilt.image(), d),
            sorted(&image, d),
            "Session::from_image gives another image"
        );
        self.session = Some(s);
    }
}

/// The image's encoding with its subscriptions in filter order (a session keeps them in a
/// hash map).
fn sorted(image: &SessionImage, d: Deadlines) -> Vec<u8> {
    let mut image = image.clone();
    image
        .subscriptions
        .sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    encode_session(&image, d, START_UNIX)
}
