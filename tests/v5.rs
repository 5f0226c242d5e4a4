//! MQTT 5.0 features over real sockets, on one shard and on three (run side by side, each on a
//! fresh broker, so publishers, subscribers and group members land on different shards).
//!
//! The behaviour is observed with an independent client, rumqttc's v5 client. Our own codec
//! (`common::Raw`) drives the connection only where no independent client can produce or see
//! the detail: the reason code of a server DISCONNECT after a violation rumqttc refuses to
//! commit (Receive Maximum, Topic Alias, Maximum Packet Size) or that it cannot decode (a
//! DISCONNECT carrying only its reason code), topic aliases on the wire, a keep alive of 0,
//! Request Problem Information. The paho-mqtt scripts (`tests/paho_v5.rs`) cover what
//! rumqttc cannot send (DISCONNECT with properties or 0x04) and cross-check the rest.
//!
//! Tests that need a non-default configuration write a TOML file and pass `--config FILE`.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, Raw, WAIT, connect_packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectReturnCode, DisconnectReasonCode, Filter, LastWill,
    LastWillProperties, Packet, PubAckReason, PubRecReason, Publish, PublishProperties,
    RetainForwardRule, SubAck, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::{Client, Connection, ConnectionError, Event, MqttOptions, StateError};
use shardmq::protocol as wire;
use shardmq::protocol::{ReasonCode, Version};

// ---------------------------------------------------------------------------------------------
// Harness

/// Runs `f` against a fresh broker with one shard and one with three, side by side. `config`
/// is the text of a TOML configuration file (only the keys that differ from the defaults).
fn for_shards(config: Option<&str>, f: impl Fn(&Broker) + Sync) {
    let file = config.map(write_config);
    let failed: Vec<usize> = std::thread::scope(|s| {
        let runs: Vec<_> = [1usize, 3]
            .into_iter()
            .map(|shards| {
                let (f, file) = (&f, &file);
                let run = std::thread::Builder::new()
                    .name(format!("{shards} shard(s)"))
                    .spawn_scoped(s, move || {
                        let b = match file {
                            Some(p) => Broker::start(shards, &["--config", p.to_str().unwrap()]),
                            None => Broker::start(shards, &[]),
                        };
                        f(&b);
                    })
                    .unwrap();
                (shards, run)
            })
            .collect();
        runs.into_iter()
            .filter_map(|(shards, run)| run.join().is_err().then_some(shards))
            .collect()
    });
    if let Some(p) = file {
        let _ = std::fs::remove_file(p);
    }
    assert!(
        failed.is_empty(),
        "failed with {failed:?} shard(s); the panic messages above name the thread"
    );
}

/// Writes a configuration file for this test process.
fn write_config(text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "shardmq-v5-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn sleep_secs(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

fn texts(ps: &[Publish]) -> Vec<String> {
    ps.iter().map(text).collect()
}

fn topic(p: &Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

/// A rumqttc v5 client with its event loop driven from the test thread.
struct Mq {
    client: Client,
    conn: Connection,
    connack: Option<ConnAck>,
    /// PUBLISHes that arrived while waiting for something else (an acknowledgement).
    inbox: VecDeque<Publish>,
}

fn opts(b: &Broker, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", b.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Options for a session that outlives its connection (`expiry` seconds after it).
fn persistent(b: &Broker, id: &str, expiry: u32) -> MqttOptions {
    let mut o = opts(b, id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(expiry));
    o
}

impl Mq {
    fn connect(b: &Broker, id: &str) -> Mq {
        Mq::with(opts(b, id))
    }

    fn with(o: MqttOptions) -> Mq {
        match Mq::try_with(o) {
            Ok(m) => m,
            Err(e) => panic!("connect failed: {e:?}"),
        }
    }

    /// Connects, returning the connection error (a refusing CONNACK) instead of panicking.
    fn try_with(o: MqttOptions) -> Result<Mq, ConnectionError> {
        let (client, conn) = Client::new(o, 1000);
        let mut m = Mq {
            client,
            conn,
            connack: None,
            inbox: VecDeque::new(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match m.conn.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) => {
                    m.connack = Some(a);
                    return Ok(m);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => panic!("no CONNACK in time"),
            }
        }
    }

    fn session_present(&self) -> bool {
        self.connack.as_ref().unwrap().session_present
    }

    fn connack_props(&self) -> ConnAckProperties {
        self.connack
            .as_ref()
            .unwrap()
            .properties
            .clone()
            .expect("a 5.0 CONNACK with properties")
    }

    /// Drives the connection until `f` accepts an event; panics after [`WAIT`].
    fn until(&mut self, mut f: impl FnMut(&Event) -> bool) -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.conn.recv_timeout(left) {
                Ok(Ok(e)) => {
                    if f(&e) {
                        return e;
                    }
                    if let Event::Incoming(Packet::Publish(p)) = e {
                        self.inbox.push_back(p);
                    }
                }
                Ok(Err(e)) => panic!("connection error: {e:?}"),
                Err(_) => panic!("timed out waiting for an event"),
            }
        }
    }

    fn suback(&mut self) -> SubAck {
        match self.until(|e| matches!(e, Event::Incoming(Packet::SubAck(_)))) {
            Event::Incoming(Packet::SubAck(a)) => a,
            _ => unreachable!(),
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.client.subscribe(filter, qos).unwrap();
        self.suback()
    }

    fn subscribe_id(&mut self, filter: &str, qos: QoS, id: usize) -> SubAck {
        let props = SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        };
        self.client
            .subscribe_with_properties(filter, qos, props)
            .unwrap();
        self.suback()
    }

    fn subscribe_filter(&mut self, f: Filter) -> SubAck {
        self.client.subscribe_many([f]).unwrap();
        self.suback()
    }

    /// Subscribes and asserts the broker granted `qos`.
    fn subscribed(&mut self, filter: &str, qos: QoS) {
        let a = self.subscribe(filter, qos);
        assert_eq!(
            a.return_codes,
            [SubscribeReasonCode::Success(qos)],
            "SUBACK for {filter}"
        );
    }

    fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .unwrap();
        self.await_ack(qos);
    }

    fn publish_props(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
        props: PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, payload.to_vec(), props)
            .unwrap();
        self.await_ack(qos);
    }

    fn await_ack(&mut self, qos: QoS) {
        match qos {
            QoS::AtMostOnce => {
                self.until(|e| matches!(e, Event::Outgoing(rumqttc::Outgoing::Publish(_))));
            }
            QoS::AtLeastOnce => {
                self.until(|e| matches!(e, Event::Incoming(Packet::PubAck(_))));
            }
            QoS::ExactlyOnce => {
                self.until(|e| matches!(e, Event::Incoming(Packet::PubComp(_))));
            }
        }
    }

    fn next_publish(&mut self) -> Publish {
        if let Some(p) = self.inbox.pop_front() {
            return p;
        }
        match self.until(|e| matches!(e, Event::Incoming(Packet::Publish(_)))) {
            Event::Incoming(Packet::Publish(p)) => p,
            _ => unreachable!(),
        }
    }

    /// Publishes received within `d` (the connection is driven meanwhile).
    fn publishes_within(&mut self, d: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + d;
        let mut out: Vec<Publish> = self.inbox.drain(..).collect();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.conn.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => out.push(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("connection error: {e:?}"),
                Err(_) => return out,
            }
        }
    }

    /// The publishes received until `n` have arrived (or [`WAIT`] passed), and any more
    /// within `settle` after that.
    fn take(&mut self, n: usize, settle: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            out.extend(self.publishes_within(Duration::from_millis(100)));
        }
        out.extend(self.publishes_within(settle));
        out
    }

    fn quiet(&mut self, d: Duration, what: &str) {
        let got = self.publishes_within(d);
        assert!(got.is_empty(), "{what}: {:?}", texts(&got));
    }

    /// Normal DISCONNECT (reason 0x00).
    fn disconnect(mut self) {
        self.client.disconnect().unwrap();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.conn.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => return,
                Ok(Err(_)) => return,
                _ => {}
            }
        }
    }

    /// Drives the connection until the broker closes it.
    fn expect_dropped(&mut self) -> ConnectionError {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.conn.recv_timeout(left) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return e,
                Err(_) => panic!("the broker did not close the connection"),
            }
        }
    }

    /// Expects the broker to end the connection with a DISCONNECT carrying `reason`.
    fn expect_server_disconnect(&mut self, reason: DisconnectReasonCode) {
        match self.expect_dropped() {
            ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
                assert_eq!(reason_code, reason, "server DISCONNECT reason");
            }
            other => panic!("expected a server DISCONNECT {reason:?}, got {other:?}"),
        }
    }
}

// Raw (our codec) helpers, for what no independent client can send or see.

fn topic_name(s: &str) -> wire::TopicName {
    wire::TopicName::new(Bytes::copy_from_slice(s.as_bytes())).unwrap()
}

/// A 5.0 connection on our codec; `f` adjusts the CONNECT (clean start 1, keep alive 30).
fn raw_connect(b: &Broker, id: &str, f: impl FnOnce(&mut wire::Connect)) -> (Raw, wire::ConnAck) {
    let mut raw = Raw::connect(b.addr, Version::V5);
    let mut c = connect_packet(Version::V5, id, true, 30);
    if let wire::Packet::Connect(c) = &mut c {
        f(c);
    }
    raw.send(&c);
    match raw.recv() {
        Some(wire::Packet::ConnAck(a)) => (raw, a),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn raw_subscribe(
    raw: &mut Raw,
    filter: &str,
    qos: wire::QoS,
    props: wire::Properties,
) -> wire::SubAck {
    raw.send(&wire::Packet::Subscribe(wire::Subscribe {
        packet_id: 1,
        filters: vec![(
            wire::TopicFilter::new(Bytes::copy_from_slice(filter.as_bytes())).unwrap(),
            wire::SubscriptionOptions::qos(qos),
        )],
        properties: props,
    }));
    match raw.recv() {
        Some(wire::Packet::SubAck(a)) => a,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn raw_publish(
    topic: &str,
    qos: wire::QoS,
    packet_id: u16,
    payload: &[u8],
    props: wire::Properties,
) -> wire::Packet {
    wire::Packet::Publish(wire::Publish {
        qos,
        topic: if topic.is_empty() {
            wire::TopicName::default()
        } else {
            topic_name(topic)
        },
        packet_id,
        payload: Bytes::copy_from_slice(payload),
        properties: props,
        ..Default::default()
    })
}

fn alias_props(alias: u16) -> wire::Properties {
    let mut p = wire::Properties::default();
    p.topic_alias = Some(alias);
    p
}

/// The next PUBLISH on a raw connection (acknowledged when QoS 1).
fn raw_next_publish(raw: &mut Raw) -> wire::Publish {
    match raw.recv() {
        Some(wire::Packet::Publish(p)) => {
            if p.qos == wire::QoS::AtLeastOnce {
                raw.send(&wire::Packet::PubAck(wire::PubAck::new(p.packet_id)));
            }
            p
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Expects the broker to send DISCONNECT with `reason` as its last packet, then close.
fn expect_disconnect(raw: &mut Raw, reason: ReasonCode, what: &str) -> Vec<wire::Packet> {
    let seen = raw.expect_closed();
    assert!(
        matches!(seen.last(), Some(wire::Packet::Disconnect(d)) if d.reason == reason),
        "{what}: expected DISCONNECT {reason:?} then close, got {seen:?}"
    );
    seen
}

/// Reads a raw connection (nothing buffered yet) until the broker closes it, within `d`.
fn closed_within(raw: &mut Raw, d: Duration) -> Result<Vec<wire::Packet>, String> {
    use std::io::Read;
    let deadline = Instant::now() + d;
    let mut bytes = bytes::BytesMut::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("still open after {d:?}, received {bytes:?}"));
        }
        raw.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 4096];
        match raw.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let mut packets = Vec::new();
    while let Some(p) =
        wire::decode(&mut bytes, Version::V5, u32::MAX).map_err(|e| e.to_string())?
    {
        packets.push(p);
    }
    Ok(packets)
}

// ---------------------------------------------------------------------------------------------
// 1. CONNACK properties

#[test]
fn connack_announces_the_default_limits_and_no_unavailable_feature() {
    for_shards(None, |b| {
        let m = Mq::connect(b, "props");
        let p = m.connack_props();
        assert_eq!(p.receive_max, Some(1024), "Receive Maximum");
        assert_eq!(p.max_packet_size, Some(1_048_576), "Maximum Packet Size");
        assert_eq!(p.topic_alias_max, Some(64), "Topic Alias Maximum");
        // Absent means available (QoS 2, retain, wildcards, identifiers, shared).
        assert_eq!(p.max_qos, None, "Maximum QoS");
        assert_eq!(p.retain_available, None, "Retain Available");
        assert_eq!(p.wildcard_subscription_available, None, "Wildcard");
        assert_eq!(
            p.subscription_identifiers_available, None,
            "Subscription Id"
        );
        assert_eq!(p.shared_subscription_available, None, "Shared");
        // Nothing asked, nothing to say.
        assert_eq!(p.assigned_client_identifier, None);
        assert_eq!(p.server_keep_alive, None);
        assert_eq!(p.response_information, None);
        m.disconnect();
    });
}

#[test]
fn connack_assigns_a_client_identifier_for_an_empty_one() {
    for_shards(None, |b| {
        let one = Mq::connect(b, "");
        let two = Mq::connect(b, "");
        let a = one.connack_props().assigned_client_identifier;
        let c = two.connack_props().assigned_client_identifier;
        assert!(a.as_ref().is_some_and(|a| !a.is_empty()), "{a:?}");
        assert!(c.as_ref().is_some_and(|c| !c.is_empty()), "{c:?}");
        assert_ne!(a, c, "two connections, two identifiers");
        // A client that named itself is not told one.
        let named = Mq::connect(b, "named");
        assert_eq!(named.connack_props().assigned_client_identifier, None);
    });
}

#[test]
fn connack_server_keep_alive_caps_the_clients_keep_alive() {
    for_shards(Some("[limits]\nmax_keep_alive_secs = 10\n"), |b| {
        let mut o = opts(b, "ka-long");
        o.set_keep_alive(Duration::from_secs(60));
        let m = Mq::with(o);
        assert_eq!(m.connack_props().server_keep_alive, Some(10), "asked 60");
        // Below the cap: granted as asked, no Server Keep Alive.
        let mut o = opts(b, "ka-short");
        o.set_keep_alive(Duration::from_secs(5));
        let m = Mq::with(o);
        assert_eq!(m.connack_props().server_keep_alive, None, "asked 5");
        // Keep alive 0 (off) is not granted either: rumqttc cannot ask 0, our codec can.
        let (_raw, ack) = raw_connect(b, "ka-zero", |c| c.keep_alive = 0);
        assert_eq!(ack.properties.server_keep_alive, Some(10), "asked 0");
    });
}

#[test]
fn connack_response_information_only_when_requested() {
    for_shards(None, |b| {
        let mut o = opts(b, "asker");
        o.set_request_response_info(Some(1));
        let m = Mq::with(o);
        assert_eq!(
            m.connack_props().response_information.as_deref(),
            Some("response/asker")
        );
        let m = Mq::connect(b, "silent");
        assert_eq!(m.connack_props().response_information, None, "not asked");
        let mut o = opts(b, "declines");
        o.set_request_response_info(Some(0));
        let m = Mq::with(o);
        assert_eq!(m.connack_props().response_information, None, "asked 0");
    });
}

#[test]
fn connack_caps_the_session_expiry_interval() {
    for_shards(Some("[limits]\nmax_session_expiry_secs = 5\n"), |b| {
        let m = Mq::with(persistent(b, "greedy", 100));
        assert_eq!(m.connack_props().session_expiry_interval, Some(5));
        // Under the cap the client's value stands (CONNACK may repeat it).
        let m = Mq::with(persistent(b, "modest", 3));
        let granted = m.connack_props().session_expiry_interval;
        assert!(matches!(granted, None | Some(3)), "{granted:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Session expiry

#[test]
fn session_expiry_keeps_the_session_for_the_interval_then_ends_it() {
    for_shards(None, |b| {
        let mut s = Mq::with(persistent(b, "exp2", 2));
        assert!(!s.session_present());
        s.subscribed("se/#", QoS::AtLeastOnce);
        s.disconnect();
        let mut p = Mq::connect(b, "se-pub");
        p.publish("se/x", QoS::AtLeastOnce, false, b"while away");
        let mut s = Mq::with(persistent(b, "exp2", 2));
        assert!(s.session_present(), "reconnected within the interval");
        assert_eq!(text(&s.next_publish()), "while away");
        s.disconnect();
        sleep_secs(4.0);
        let mut s = Mq::with(persistent(b, "exp2", 2));
        assert!(!s.session_present(), "reconnected after the interval");
        // The subscription went with the session.
        p.publish("se/x", QoS::AtLeastOnce, false, b"nobody listens");
        s.quiet(
            Duration::from_millis(500),
            "expired subscription still delivers",
        );
    });
}

#[test]
fn session_expiry_zero_ends_the_session_at_disconnect() {
    for_shards(None, |b| {
        let mut s = Mq::with(persistent(b, "exp0", 0));
        s.subscribed("s0/#", QoS::AtLeastOnce);
        s.disconnect();
        let mut p = Mq::connect(b, "s0-pub");
        p.publish("s0/x", QoS::AtLeastOnce, false, b"lost");
        let mut s = Mq::with(persistent(b, "exp0", 0));
        assert!(!s.session_present());
        s.quiet(
            Duration::from_millis(500),
            "a session of expiry 0 kept its queue",
        );
    });
}

#[test]
fn session_expiry_max_never_expires() {
    for_shards(None, |b| {
        let mut s = Mq::with(persistent(b, "forever", u32::MAX));
        s.subscribed("sf/#", QoS::AtLeastOnce);
        s.disconnect();
        let mut p = Mq::connect(b, "sf-pub");
        p.publish("sf/x", QoS::AtLeastOnce, false, b"kept");
        sleep_secs(3.0);
        let mut s = Mq::with(persistent(b, "forever", u32::MAX));
        assert!(s.session_present());
        assert_eq!(text(&s.next_publish()), "kept");
    });
}

// ---------------------------------------------------------------------------------------------
// 3. DISCONNECT changing the session expiry (the zero-to-zero and shortening cases are in
// tests/paho/session_expiry.py: rumqttc cannot put properties in its DISCONNECT)

#[test]
fn disconnect_may_not_set_a_session_expiry_when_connect_had_zero() {
    for_shards(None, |b| {
        let (mut raw, ack) = raw_connect(b, "zero-then-60", |c| c.clean_start = false);
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        raw_subscribe(&mut raw, "z/#", wire::QoS::AtLeastOnce, Default::default());
        let mut d = wire::Disconnect::default();
        d.properties.session_expiry_interval = Some(60);
        raw.send(&wire::Packet::Disconnect(d));
        expect_disconnect(
            &mut raw,
            ReasonCode::PROTOCOL_ERROR,
            "DISCONNECT with expiry 60 after CONNECT with 0 [MQTT-3.14.2-2]",
        );
        let s = Mq::with(persistent(b, "zero-then-60", 60));
        assert!(!s.session_present(), "the session was kept");
    });
}

// ---------------------------------------------------------------------------------------------
// 4. Receive Maximum

#[test]
fn receive_maximum_of_the_client_bounds_unacknowledged_deliveries() {
    for_shards(None, |b| {
        let mut o = opts(b, "rm-sub");
        o.set_receive_maximum(Some(2));
        o.set_manual_acks(true);
        let mut s = Mq::with(o);
        s.subscribed("rm/t", QoS::AtLeastOnce);
        let mut p = Mq::connect(b, "rm-pub");
        for i in 0..10 {
            p.publish("rm/t", QoS::AtLeastOnce, false, i.to_string().as_bytes());
        }
        let first = s.take(2, Duration::from_millis(500));
        assert_eq!(
            texts(&first),
            ["0", "1"],
            "two (Receive Maximum) before any acknowledgement"
        );
        let mut got = first.clone();
        let mut unacked: VecDeque<Publish> = first.into();
        while got.len() < 10 {
            let oldest = unacked.pop_front().expect("something to acknowledge");
            s.client.ack(&oldest).unwrap();
            let next = s.next_publish();
            got.push(next.clone());
            unacked.push_back(next);
        }
        for m in unacked {
            s.client.ack(&m).unwrap();
        }
        let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(texts(&got), want, "all ten, in order");
        s.quiet(Duration::from_millis(300), "more than sent");
    });
}

#[test]
fn receive_maximum_of_the_broker_exceeded_is_a_disconnect() {
    for_shards(Some("[limits]\nreceive_maximum = 2\n"), |b| {
        let mut watcher = Mq::connect(b, "rx-watch");
        watcher.subscribed("rx/#", QoS::AtLeastOnce);
        let (mut raw, ack) = raw_connect(b, "rx-pub", |_| {});
        assert_eq!(ack.properties.receive_maximum, Some(2));
        let q2 = wire::QoS::ExactlyOnce;
        // Two unreleased QoS 2 messages: at the limit, accepted.
        for id in 1..=2u16 {
            raw.send(&raw_publish(
                "rx/t",
                q2,
                id,
                id.to_string().as_bytes(),
                Default::default(),
            ));
            assert!(
                matches!(raw.recv(), Some(wire::Packet::PubRec(a)) if a.packet_id == id),
                "PUBREC {id}"
            );
        }
        // Releasing one makes room for one more.
        raw.send(&wire::Packet::PubRel(wire::PubAck::new(1)));
        assert!(matches!(raw.recv(), Some(wire::Packet::PubComp(a)) if a.packet_id == 1));
        raw.send(&raw_publish("rx/t", q2, 3, b"3", Default::default()));
        assert!(matches!(raw.recv(), Some(wire::Packet::PubRec(a)) if a.packet_id == 3));
        // Ids 2 and 3 unreleased: a third is one too many.
        raw.send(&raw_publish("rx/t", q2, 4, b"4", Default::default()));
        let seen = expect_disconnect(
            &mut raw,
            ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            "third unreleased QoS 2 PUBLISH",
        );
        assert!(
            !seen.iter().any(|p| matches!(p, wire::Packet::PubRec(_))),
            "{seen:?}"
        );
        let got = texts(&watcher.publishes_within(Duration::from_millis(500)));
        assert!(
            !got.contains(&"4".to_string()),
            "the excess was delivered: {got:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Maximum Packet Size

#[test]
fn maximum_packet_size_of_the_client_is_never_exceeded() {
    for_shards(None, |b| {
        let mut o = opts(b, "mps-sub");
        o.set_max_packet_size(Some(200));
        // rumqttc fails the connection on any larger incoming packet.
        let mut s = Mq::with(o);
        s.subscribed("mps/#", QoS::AtLeastOnce);
        let mut p = Mq::connect(b, "mps-pub");
        p.publish("mps/t", QoS::AtLeastOnce, false, &[b'x'; 500]);
        p.publish("mps/t", QoS::AtLeastOnce, false, b"small");
        assert_eq!(text(&s.next_publish()), "small", "the large one is skipped");
        // The skipped QoS 1 message does not hold a slot of the window.
        p.publish("mps/t", QoS::AtLeastOnce, false, b"after");
        assert_eq!(text(&s.next_publish()), "after");
        s.quiet(Duration::from_millis(300), "unexpected");
    });
}

#[test]
fn a_packet_over_the_maximum_packet_size_is_a_disconnect() {
    for_shards(Some("[limits]\nmax_packet_size = 1024\n"), |b| {
        let mut watcher = Mq::connect(b, "big-watch");
        watcher.subscribed("big/#", QoS::AtLeastOnce);
        let (mut raw, ack) = raw_connect(b, "big-pub", |_| {});
        assert_eq!(ack.properties.maximum_packet_size, Some(1024));
        raw.send(&raw_publish(
            "big/t",
            wire::QoS::AtMostOnce,
            0,
            &[b'x'; 2000],
            Default::default(),
        ));
        expect_disconnect(&mut raw, ReasonCode::PACKET_TOO_LARGE, "2000-byte PUBLISH");
        // Everyone else is still served, and the large message went nowhere.
        let mut p = Mq::connect(b, "big-ok");
        p.publish("big/t", QoS::AtLeastOnce, false, b"ok");
        assert_eq!(text(&watcher.next_publish()), "ok");
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Topic aliases, client to broker

#[test]
fn topic_alias_from_the_client_names_the_topic_for_subscribers() {
    for_shards(None, |b| {
        let mut s = Mq::connect(b, "ta-sub");
        s.subscribed("alias/#", QoS::AtLeastOnce);
        let mut p = Mq::connect(b, "ta-pub");
        let alias = |a| PublishProperties {
            topic_alias: Some(a),
            ..Default::default()
        };
        let q1 = QoS::AtLeastOnce;
        p.publish_props("alias/one", q1, false, b"1", alias(1));
        p.publish_props("", q1, false, b"2", alias(1));
        p.publish_props("alias/two", q1, false, b"3", alias(2));
        p.publish_props("", q1, false, b"4", alias(2));
        p.publish_props("", q1, false, b"5", alias(1));
        // Re-mapped.
        p.publish_props("alias/three", q1, false, b"6", alias(1));
        p.publish_props("", q1, false, b"7", alias(1));
        let want = [
            ("alias/one", "1"),
            ("alias/one", "2"),
            ("alias/two", "3"),
            ("alias/two", "4"),
            ("alias/one", "5"),
            ("alias/three", "6"),
            ("alias/three", "7"),
        ];
        for (t, m) in want {
            let got = s.next_publish();
            assert_eq!((topic(&got).as_str(), text(&got).as_str()), (t, m));
            // The subscriber allows no aliases, and the publisher's are its own.
            let a = got.properties.as_ref().and_then(|p| p.topic_alias);
            assert_eq!(a, None, "the subscriber saw an alias on {t} {m}");
        }
    });
}

#[test]
fn invalid_topic_aliases_from_the_client_are_a_disconnect() {
    for_shards(None, |b| {
        for alias in [0u16, 65] {
            let (mut raw, _) = raw_connect(b, &format!("bad-alias-{alias}"), |_| {});
            raw.send(&raw_publish(
                "ta/x",
                wire::QoS::AtMostOnce,
                0,
                b"x",
                alias_props(alias),
            ));
            expect_disconnect(
                &mut raw,
                ReasonCode::TOPIC_ALIAS_INVALID,
                &format!("topic alias {alias} (maximum 64)"),
            );
        }
        // An empty topic with an alias never set.
        let (mut raw, _) = raw_connect(b, "unset-alias", |_| {});
        raw.send(&raw_publish(
            "",
            wire::QoS::AtMostOnce,
            0,
            b"x",
            alias_props(3),
        ));
        expect_disconnect(
            &mut raw,
            ReasonCode::PROTOCOL_ERROR,
            "empty topic with an unknown alias",
        );
        // Aliases are per connection: one set by another client is unknown here.
        let (mut setter, _) = raw_connect(b, "alias-setter", |_| {});
        setter.send(&raw_publish(
            "ta/y",
            wire::QoS::AtLeastOnce,
            1,
            b"y",
            alias_props(4),
        ));
        assert!(matches!(setter.recv(), Some(wire::Packet::PubAck(_))));
        let (mut other, _) = raw_connect(b, "alias-other", |_| {});
        other.send(&raw_publish(
            "",
            wire::QoS::AtMostOnce,
            0,
            b"y",
            alias_props(4),
        ));
        expect_disconnect(
            &mut other,
            ReasonCode::PROTOCOL_ERROR,
            "another connection's alias",
        );
    });
}

#[test]
fn topic_alias_maximum_follows_the_config() {
    for_shards(Some("[limits]\nmax_topic_aliases = 2\n"), |b| {
        let (mut raw, ack) = raw_connect(b, "two-aliases", |_| {});
        assert_eq!(ack.properties.topic_alias_maximum, Some(2));
        let q1 = wire::QoS::AtLeastOnce;
        raw.send(&raw_publish("tm/a", q1, 1, b"a", alias_props(2)));
        assert!(matches!(raw.recv(), Some(wire::Packet::PubAck(a)) if a.packet_id == 1));
        raw.send(&raw_publish("tm/b", q1, 2, b"b", alias_props(3)));
        expect_disconnect(
            &mut raw,
            ReasonCode::TOPIC_ALIAS_INVALID,
            "topic alias 3 (maximum 2)",
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 7. Topic aliases, broker to client

fn raw_subscriber(b: &Broker, id: &str, alias_max: Option<u16>, filter: &str) -> Raw {
    let (mut raw, _) = raw_connect(b, id, |c| c.properties.topic_alias_maximum = alias_max);
    let a = raw_subscribe(&mut raw, filter, wire::QoS::AtLeastOnce, Default::default());
    assert_eq!(a.reasons, [ReasonCode::GRANTED_QOS_1]);
    raw
}

fn publish_three(b: &Broker, id: &str, t: &str) {
    let mut p = Mq::connect(b, id);
    for i in 0..3 {
        p.publish(t, QoS::AtLeastOnce, false, format!("m{i}").as_bytes());
    }
    p.disconnect();
}

/// What a correct receiver makes of server topic aliases: the topic of each PUBLISH, after
/// checking it names one (its own, or an alias set earlier on this connection).
struct Aliases {
    max: u16,
    map: BTreeMap<u16, String>,
}

impl Aliases {
    fn resolve(&mut self, p: &wire::Publish) -> String {
        match (p.topic.as_str(), p.properties.topic_alias) {
            ("", None) => panic!("a PUBLISH with neither topic nor alias: {p:?}"),
            (t, None) => t.to_string(),
            (t, Some(a)) => {
                assert!(
                    (1..=self.max).contains(&a),
                    "alias {a} outside 1..={}",
                    self.max
                );
                if t.is_empty() {
                    self.map
                        .get(&a)
                        .cloned()
                        .unwrap_or_else(|| panic!("alias {a} used before it was set: {p:?}"))
                } else {
                    self.map.insert(a, t.to_string());
                    t.to_string()
                }
            }
        }
    }
}

#[test]
fn topic_aliases_to_a_client_that_allows_them() {
    for_shards(None, |b| {
        let mut raw = raw_subscriber(b, "sta-raw", Some(5), "sta/#");
        publish_three(b, "sta-pub", "sta/t");
        let first = raw_next_publish(&mut raw);
        assert_eq!(first.topic.as_str(), "sta/t", "first use carries the topic");
        let alias = first.properties.topic_alias;
        assert!(
            alias.is_some_and(|a| (1..=5).contains(&a)),
            "first use carries an alias within the client's maximum: {alias:?}"
        );
        assert_eq!(first.payload.as_ref(), b"m0");
        for i in 1..3 {
            let p = raw_next_publish(&mut raw);
            assert_eq!(
                p.topic.as_str(),
                "",
                "message {i} names the topic by alias only"
            );
            assert_eq!(p.properties.topic_alias, alias, "message {i}");
            assert_eq!(p.payload.as_ref(), format!("m{i}").as_bytes());
        }
        // More topics than aliases: whatever the broker assigns or re-maps, each message
        // must resolve to its own topic.
        let mut seen = Aliases {
            max: 5,
            map: BTreeMap::from([(alias.unwrap(), "sta/t".to_string())]),
        };
        let topics: Vec<String> = (0..24).map(|i| format!("sta/{}", i % 8)).collect();
        let mut p = Mq::connect(b, "sta-pub-many");
        for t in &topics {
            p.publish(t, QoS::AtLeastOnce, false, t.as_bytes());
        }
        for t in &topics {
            let m = raw_next_publish(&mut raw);
            assert_eq!(&seen.resolve(&m), t, "{m:?}");
            assert_eq!(m.payload.as_ref(), t.as_bytes());
        }
    });
}

#[test]
fn no_topic_aliases_to_a_client_that_does_not_allow_them() {
    for_shards(None, |b| {
        let mut zero = raw_subscriber(b, "nta-zero", Some(0), "nta/#");
        let mut absent = raw_subscriber(b, "nta-absent", None, "nta/#");
        publish_three(b, "nta-pub", "nta/t");
        for (raw, who) in [
            (&mut zero, "Topic Alias Maximum 0"),
            (&mut absent, "absent"),
        ] {
            for i in 0..3 {
                let p = raw_next_publish(raw);
                assert_eq!(p.topic.as_str(), "nta/t", "{who}, message {i}");
                assert_eq!(p.properties.topic_alias, None, "{who}, message {i}");
            }
        }
    });
}

#[test]
fn no_topic_aliases_when_server_topic_aliases_is_off() {
    for_shards(Some("[mqtt]\nserver_topic_aliases = false\n"), |b| {
        let mut raw = raw_subscriber(b, "off-raw", Some(5), "off/#");
        publish_three(b, "off-pub", "off/t");
        for i in 0..3 {
            let p = raw_next_publish(&mut raw);
            assert_eq!(p.topic.as_str(), "off/t", "message {i}");
            assert_eq!(p.properties.topic_alias, None, "message {i}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Message expiry

fn expiring(secs: u32) -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

#[test]
fn message_expiry_drops_expired_messages_queued_for_an_offline_session() {
    for_shards(None, |b| {
        let mut s = Mq::with(persistent(b, "mx-sub", 60));
        s.subscribed("mx/#", QoS::AtLeastOnce);
        // A live subscriber sees the interval too.
        let mut live = Mq::connect(b, "mx-live");
        live.subscribed("mx/#", QoS::AtLeastOnce);
        s.disconnect();
        let mut p = Mq::connect(b, "mx-pub");
        p.publish_props("mx/t", QoS::AtLeastOnce, false, b"short", expiring(1));
        p.publish_props("mx/t", QoS::AtLeastOnce, false, b"long", expiring(30));
        for want in ["short", "long"] {
            let m = live.next_publish();
            assert_eq!(text(&m), want);
            let left = m.properties.and_then(|p| p.message_expiry_interval);
            let limit = if want == "short" { 1 } else { 30 };
            assert!(left.is_some_and(|v| v <= limit), "live {want}: {left:?}");
        }
        sleep_secs(3.0);
        let mut s = Mq::with(persistent(b, "mx-sub", 60));
        assert!(s.session_present());
        let m = s.next_publish();
        assert_eq!(text(&m), "long", "the expired message was delivered");
        let left = m.properties.and_then(|p| p.message_expiry_interval);
        // Waited 3 s in the broker: the interval sent on is what remains.
        assert!(left.is_some_and(|v| v < 30), "remaining expiry {left:?}");
        s.quiet(
            Duration::from_millis(500),
            "more than the unexpired message",
        );
    });
}

#[test]
fn message_expiry_removes_expired_retained_messages() {
    for_shards(None, |b| {
        let mut p = Mq::connect(b, "mxr-pub");
        p.publish_props("mxr/short", QoS::AtLeastOnce, true, b"short", expiring(1));
        p.publish_props("mxr/long", QoS::AtLeastOnce, true, b"long", expiring(30));
        sleep_secs(3.0);
        let mut s = Mq::connect(b, "mxr-sub");
        s.subscribed("mxr/#", QoS::AtLeastOnce);
        let got = s.take(1, Duration::from_millis(500));
        assert_eq!(texts(&got), ["long"], "retained after 3 s");
        assert!(got[0].retain);
        let left = got[0]
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval);
        assert!(left.is_some_and(|v| v < 30), "remaining expiry {left:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// 9. Properties forwarded

fn app_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json; charset=utf-8".into()),
        response_topic: Some("pp/reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr\xff")),
        user_properties: vec![
            ("k".into(), "1".into()),
            ("other".into(), "x y".into()),
            ("k".into(), "2".into()),
            ("k".into(), "1".into()),
        ],
        ..Default::default()
    }
}

#[test]
fn publish_properties_reach_a_v5_subscriber_unaltered() {
    for_shards(None, |b| {
        let mut s = Mq::connect(b, "pp-sub");
        s.subscribed("pp/#", QoS::ExactlyOnce);
        let mut queued = Mq::with(persistent(b, "pp-offline", 60));
        queued.subscribed("pp/#", QoS::AtLeastOnce);
        queued.disconnect();
        let mut p = Mq::connect(b, "pp-pub");
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            p.publish_props("pp/t", qos, false, b"{}", app_properties());
            let got = s.next_publish();
            assert_eq!(got.qos, qos);
            assert_eq!(got.properties, Some(app_properties()), "live at {qos:?}");
        }
        // From the offline queue.
        let mut queued = Mq::with(persistent(b, "pp-offline", 60));
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let got = queued.next_publish();
            assert_eq!(got.properties, Some(app_properties()), "queued at {qos:?}");
        }
        // From the retained store.
        p.publish_props("pp/kept", QoS::AtLeastOnce, true, b"{}", app_properties());
        std::thread::sleep(Duration::from_millis(200));
        let mut late = Mq::connect(b, "pp-late");
        late.subscribed("pp/kept", QoS::AtLeastOnce);
        let got = late.next_publish();
        assert!(got.retain);
        assert_eq!(got.properties, Some(app_properties()), "retained");
    });
}

impl Mq {
    /// Publishes at QoS 1 and returns the PUBACK's reason code.
    fn puback_reason(
        &mut self,
        topic: &str,
        payload: &[u8],
        props: PublishProperties,
    ) -> PubAckReason {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_vec(), props)
            .unwrap();
        match self.until(|e| matches!(e, Event::Incoming(Packet::PubAck(_)))) {
            Event::Incoming(Packet::PubAck(a)) => a.reason,
            _ => unreachable!(),
        }
    }

    /// Publishes at QoS 2 and returns the PUBREC's reason code.
    fn pubrec_reason(
        &mut self,
        topic: &str,
        payload: &[u8],
        props: PublishProperties,
    ) -> PubRecReason {
        self.client
            .publish_with_properties(topic, QoS::ExactlyOnce, false, payload.to_vec(), props)
            .unwrap();
        match self.until(|e| matches!(e, Event::Incoming(Packet::PubRec(_)))) {
            Event::Incoming(Packet::PubRec(a)) => a.reason,
            _ => unreachable!(),
        }
    }
}

#[test]
fn puback_says_when_no_subscriber_matched() {
    for_shards(None, |b| {
        let mut p = Mq::connect(b, "nm-pub");
        let none = PublishProperties::default;
        assert_eq!(
            p.puback_reason("nm/t", b"x", none()),
            PubAckReason::NoMatchingSubscribers
        );
        assert_eq!(
            p.pubrec_reason("nm/t", b"x", none()),
            PubRecReason::NoMatchingSubscribers
        );
        // A subscriber on any shard, plain or shared, is a match.
        let mut s = Mq::connect(b, "nm-sub");
        s.subscribed("nm/#", QoS::AtLeastOnce);
        assert_eq!(p.puback_reason("nm/t", b"y", none()), PubAckReason::Success);
        assert_eq!(text(&s.next_publish()), "y");
        let mut g = Mq::connect(b, "nm-group");
        g.subscribed("$share/g/nm2/#", QoS::AtLeastOnce);
        assert_eq!(
            p.puback_reason("nm2/t", b"z", none()),
            PubAckReason::Success
        );
        assert_eq!(text(&g.next_publish()), "z");
    });
}

#[test]
fn a_payload_declared_utf8_that_is_not_is_refused() {
    for_shards(None, |b| {
        let mut s = Mq::connect(b, "pf-sub");
        s.subscribed("pf/#", QoS::AtLeastOnce);
        let mut p = Mq::connect(b, "pf-pub");
        let utf8 = |v| PublishProperties {
            payload_format_indicator: Some(v),
            ..Default::default()
        };
        let bad = b"\xff\xfe not utf-8";
        assert_eq!(
            p.puback_reason("pf/t", bad, utf8(1)),
            PubAckReason::PayloadFormatInvalid
        );
        assert_eq!(
            p.pubrec_reason("pf/t", bad, utf8(1)),
            PubRecReason::PayloadFormatInvalid
        );
        s.quiet(
            Duration::from_millis(300),
            "an invalid UTF-8 payload was routed",
        );
        // Declared unspecified bytes, the same payload is fine.
        assert_eq!(p.puback_reason("pf/t", bad, utf8(0)), PubAckReason::Success);
        assert_eq!(s.next_publish().payload.as_ref(), bad);
    });
}

// ---------------------------------------------------------------------------------------------
// 10. Subscription identifiers

fn ids(p: &Publish) -> Vec<usize> {
    let mut v = p
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    v.sort_unstable();
    v
}

#[test]
fn subscription_identifiers_of_every_matching_subscription_are_delivered() {
    for_shards(None, |b| {
        let mut s = Mq::connect(b, "sid");
        for (f, id) in [("sid/+", 5), ("sid/#", 7)] {
            let a = s.subscribe_id(f, QoS::AtLeastOnce, id);
            assert_eq!(
                a.return_codes,
                [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
            );
        }
        s.subscribed("other/t", QoS::AtLeastOnce);
        let mut p = Mq::connect(b, "sid-pub");
        p.publish("sid/b", QoS::AtLeastOnce, false, b"both");
        let got = s.next_publish();
        assert_eq!(ids(&got), [5, 7], "one delivery with both identifiers");
        s.quiet(Duration::from_millis(300), "a second delivery");
        p.publish("sid/b/c", QoS::AtLeastOnce, false, b"deep");
        assert_eq!(ids(&s.next_publish()), [7]);
        p.publish("other/t", QoS::AtLeastOnce, false, b"none");
        assert_eq!(ids(&s.next_publish()), Vec::<usize>::new());
        // Subscribing again to a filter replaces its identifier.
        s.subscribe_id("sid/+", QoS::AtLeastOnce, 9);
        p.publish("sid/b", QoS::AtLeastOnce, false, b"replaced");
        assert_eq!(ids(&s.next_publish()), [7, 9]);
    });
}

// ---------------------------------------------------------------------------------------------
// 11. Subscription options

fn filter(path: &str) -> Filter {
    Filter::new(path, QoS::AtLeastOnce)
}

#[test]
fn no_local_subscription_skips_the_clients_own_publishes() {
    for_shards(None, |b| {
        let mut x = Mq::connect(b, "nl-x");
        let mut f = filter("nl/t");
        f.nolocal = true;
        x.subscribe_filter(f);
        let mut y = Mq::connect(b, "nl-y");
        y.subscribed("nl/t", QoS::AtLeastOnce);
        x.publish("nl/t", QoS::AtLeastOnce, false, b"from-x");
        assert_eq!(text(&y.next_publish()), "from-x", "others still get it");
        x.quiet(Duration::from_millis(500), "no local, yet received its own");
        y.publish("nl/t", QoS::AtLeastOnce, false, b"from-y");
        assert_eq!(
            text(&x.next_publish()),
            "from-y",
            "others' publishes arrive"
        );
        assert_eq!(
            text(&y.next_publish()),
            "from-y",
            "without No Local, own ones too"
        );
    });
}

#[test]
fn retain_as_published_keeps_the_retain_flag_on_live_delivery() {
    for_shards(None, |b| {
        let mut keep = Mq::connect(b, "rap-keep");
        let mut f = filter("rap/t");
        f.preserve_retain = true;
        keep.subscribe_filter(f);
        let mut clear = Mq::connect(b, "rap-clear");
        clear.subscribed("rap/t", QoS::AtLeastOnce);
        let mut p = Mq::connect(b, "rap-pub");
        p.publish("rap/t", QoS::AtLeastOnce, true, b"retained");
        assert!(keep.next_publish().retain, "Retain As Published 1");
        assert!(!clear.next_publish().retain, "Retain As Published 0");
        p.publish("rap/t", QoS::AtLeastOnce, false, b"plain");
        assert!(!keep.next_publish().retain, "not set, not kept");
        assert!(!clear.next_publish().retain);
        // A retained message sent because of a subscription always has RETAIN set.
        std::thread::sleep(Duration::from_millis(200));
        let mut late = Mq::connect(b, "rap-late");
        late.subscribed("rap/t", QoS::AtLeastOnce);
        let m = late.next_publish();
        assert_eq!(text(&m), "retained");
        assert!(m.retain);
    });
}

#[test]
fn retain_handling_0_1_2() {
    for_shards(None, |b| {
        let mut p = Mq::connect(b, "rh-pub");
        p.publish("rh/t", QoS::AtLeastOnce, true, b"kept");
        // Retained replicas reach every shard over the mesh; give them a moment.
        std::thread::sleep(Duration::from_millis(200));
        let rule = |r| {
            let mut f = filter("rh/t");
            f.retain_forward_rule = r;
            f
        };
        let short = Duration::from_millis(500);
        let mut every = Mq::connect(b, "rh-0");
        for round in 0..2 {
            every.subscribe_filter(rule(RetainForwardRule::OnEverySubscribe));
            let got = every.take(1, short);
            assert_eq!(
                texts(&got),
                ["kept"],
                "Retain Handling 0, subscribe {round}"
            );
            assert!(got[0].retain);
        }
        let mut new = Mq::connect(b, "rh-1");
        new.subscribe_filter(rule(RetainForwardRule::OnNewSubscribe));
        assert_eq!(texts(&new.take(1, short)), ["kept"], "1, new");
        new.subscribe_filter(rule(RetainForwardRule::OnNewSubscribe));
        new.quiet(short, "Retain Handling 1 on an existing subscription");
        let mut never = Mq::connect(b, "rh-2");
        never.subscribe_filter(rule(RetainForwardRule::Never));
        never.quiet(short, "Retain Handling 2");
        // Live messages reach all three.
        p.publish("rh/t", QoS::AtLeastOnce, false, b"live");
        for (m, who) in [(&mut every, 0), (&mut new, 1), (&mut never, 2)] {
            assert_eq!(text(&m.next_publish()), "live", "Retain Handling {who}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 12. Features turned off, and limits, in CONNACK, SUBACK and DISCONNECT

const RESTRICTED: &str = "\
[mqtt]
maximum_qos = 1
retain_available = false
wildcard_subscriptions = false
subscription_identifiers = false
shared_subscriptions = false
[limits]
max_topic_levels = 4
";

#[test]
fn connack_announces_the_features_turned_off() {
    for_shards(Some(RESTRICTED), |b| {
        let p = Mq::connect(b, "restricted").connack_props();
        assert_eq!(p.max_qos, Some(1), "Maximum QoS");
        assert_eq!(p.retain_available, Some(0), "Retain Available");
        assert_eq!(p.wildcard_subscription_available, Some(0), "Wildcard");
        assert_eq!(
            p.subscription_identifiers_available,
            Some(0),
            "Subscription Id"
        );
        assert_eq!(p.shared_subscription_available, Some(0), "Shared");
    });
}

#[test]
fn suback_refuses_shared_subscriptions_when_off() {
    for_shards(Some(RESTRICTED), |b| {
        let mut s = Mq::connect(b, "no-share");
        let a = s.subscribe("$share/g/t", QoS::AtLeastOnce);
        assert_eq!(
            a.return_codes,
            [SubscribeReasonCode::SharedSubscriptionsNotSupported]
        );
    });
}

#[test]
fn suback_refuses_wildcards_when_off() {
    for_shards(Some(RESTRICTED), |b| {
        let mut s = Mq::connect(b, "no-wild");
        for f in ["w/+", "w/#", "#", "+/x"] {
            let a = s.subscribe(f, QoS::AtLeastOnce);
            assert_eq!(
                a.return_codes,
                [SubscribeReasonCode::WildcardSubscriptionsNotSupported],
                "{f}"
            );
        }
        // Exact filters are fine.
        s.subscribed("w/x", QoS::AtLeastOnce);
    });
}

#[test]
fn suback_refuses_filters_with_too_many_levels() {
    for_shards(Some(RESTRICTED), |b| {
        let mut s = Mq::connect(b, "deep");
        let a = s.subscribe("a/b/c/d/e/f", QoS::AtLeastOnce);
        assert_eq!(a.return_codes, [SubscribeReasonCode::TopicFilterInvalid]);
        s.subscribed("a/b/c/d", QoS::AtLeastOnce);
    });
}

#[test]
fn suback_grants_at_most_the_maximum_qos() {
    for_shards(Some(RESTRICTED), |b| {
        let mut s = Mq::connect(b, "q-sub");
        let a = s.subscribe("mq/t", QoS::ExactlyOnce);
        assert_eq!(
            a.return_codes,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        let mut p = Mq::connect(b, "q-pub");
        p.publish("mq/t", QoS::AtLeastOnce, false, b"one");
        assert_eq!(s.next_publish().qos, QoS::AtLeastOnce);
    });
}

#[test]
fn suback_refuses_subscription_identifiers_when_off() {
    for_shards(Some(RESTRICTED), |b| {
        let mut s = Mq::connect(b, "no-sid");
        let a = s.subscribe_id("sid/t", QoS::AtLeastOnce, 5);
        assert_eq!(
            a.return_codes,
            [SubscribeReasonCode::SubscriptionIdNotSupported]
        );
    });
}

#[test]
fn publish_with_retain_when_retain_is_unavailable_is_a_disconnect() {
    for_shards(Some(RESTRICTED), |b| {
        let mut p = Mq::connect(b, "no-retain");
        p.client
            .publish("nr/t", QoS::AtLeastOnce, true, b"x".to_vec())
            .unwrap();
        p.expect_server_disconnect(DisconnectReasonCode::RetainNotSupported);
    });
}

#[test]
fn publish_above_the_maximum_qos_is_a_disconnect() {
    for_shards(Some(RESTRICTED), |b| {
        let mut p = Mq::connect(b, "too-high");
        p.client
            .publish("mq/t", QoS::ExactlyOnce, false, b"x".to_vec())
            .unwrap();
        p.expect_server_disconnect(DisconnectReasonCode::QoSNotSupported);
    });
}

// ---------------------------------------------------------------------------------------------
// 13. Shared subscriptions

/// Drives every client until `done` says the payloads gathered so far (per client) suffice,
/// or [`WAIT`] passes; then drains each once more to catch late duplicates.
fn gather(clients: &mut [&mut Mq], done: impl Fn(&[Vec<String>]) -> bool) -> Vec<Vec<String>> {
    let mut got = vec![Vec::new(); clients.len()];
    let deadline = Instant::now() + WAIT;
    while !done(&got) && Instant::now() < deadline {
        for (c, g) in clients.iter_mut().zip(&mut got) {
            g.extend(texts(&c.publishes_within(Duration::from_millis(150))));
        }
    }
    for (c, g) in clients.iter_mut().zip(&mut got) {
        g.extend(texts(&c.publishes_within(Duration::from_millis(300))));
    }
    got
}

fn counts(lists: &[Vec<String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in lists.iter().flatten() {
        *m.entry(s.clone()).or_insert(0) += 1;
    }
    m
}

fn numbers(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

fn publish_numbers(b: &Broker, id: &str, t: &str, n: usize) {
    publish_range(b, id, t, 0..n);
}

fn publish_range(b: &Broker, id: &str, t: &str, range: std::ops::Range<usize>) {
    let mut p = Mq::connect(b, id);
    for i in range {
        p.publish(t, QoS::AtLeastOnce, false, i.to_string().as_bytes());
    }
    p.disconnect();
}

#[test]
fn shared_subscription_delivers_each_message_to_one_member() {
    for_shards(None, |b| {
        let mut members: Vec<Mq> = (0..3)
            .map(|i| {
                let mut m = Mq::connect(b, &format!("sh-{i}"));
                m.subscribed("$share/g/s/#", QoS::AtLeastOnce);
                m
            })
            .collect();
        // Ten publishers, each on whichever shard the kernel picks for it.
        for k in 0..10 {
            publish_range(b, &format!("sh-pub-{k}"), "s/x", k * 6..k * 6 + 6);
        }
        let mut refs: Vec<&mut Mq> = members.iter_mut().collect();
        let got = gather(&mut refs, |g| g.iter().map(Vec::len).sum::<usize>() >= 60);
        let c = counts(&got);
        let want: BTreeMap<String, usize> = numbers(60).into_iter().map(|s| (s, 1)).collect();
        assert_eq!(c, want, "every message exactly once across the group");
        let busy = got.iter().filter(|g| !g.is_empty()).count();
        let spread: Vec<usize> = got.iter().map(Vec::len).collect();
        assert!(busy > 1, "one member got everything: {spread:?}");
    });
}

#[test]
fn shared_subscription_groups_and_plain_subscribers_each_get_every_message() {
    for_shards(None, |b| {
        let member = |id: &str, f: &str| {
            let mut m = Mq::connect(b, id);
            m.subscribed(f, QoS::AtLeastOnce);
            m
        };
        let mut g1 = [
            member("g1-a", "$share/g1/s2/#"),
            member("g1-b", "$share/g1/s2/#"),
        ];
        let mut g2 = [
            member("g2-a", "$share/g2/s2/#"),
            member("g2-b", "$share/g2/s2/#"),
        ];
        let mut plain = member("plain", "s2/#");
        publish_numbers(b, "g-pub", "s2/x", 30);
        let once: BTreeMap<String, usize> = numbers(30).into_iter().map(|s| (s, 1)).collect();
        for (name, group) in [("g1", &mut g1), ("g2", &mut g2)] {
            let mut refs: Vec<&mut Mq> = group.iter_mut().collect();
            let got = gather(&mut refs, |g| g.iter().map(Vec::len).sum::<usize>() >= 30);
            assert_eq!(counts(&got), once, "group {name}");
        }
        let got = gather(&mut [&mut plain], |g| g[0].len() >= 30);
        assert_eq!(got[0], numbers(30), "the plain subscriber, in order");
    });
}

#[test]
fn shared_subscription_redelivers_what_a_lost_member_left_unacknowledged() {
    for_shards(None, |b| {
        let mut o = opts(b, "sr-lost");
        o.set_manual_acks(true);
        let mut lost = Mq::with(o);
        lost.subscribed("$share/r/sr/#", QoS::AtLeastOnce);
        // Alone in the group at first, it is sent the first 30 (within the default window of
        // 32); it reads them and acknowledges nothing.
        publish_range(b, "sr-pub-1", "sr/x", 0..30);
        let mut held = gather(&mut [&mut lost], |g| g[0].len() >= 30).remove(0);
        assert_eq!(held.len(), 30, "the only member: {held:?}");
        let mut stay: Vec<Mq> = (0..2)
            .map(|i| {
                let mut m = Mq::connect(b, &format!("sr-{i}"));
                m.subscribed("$share/r/sr/#", QoS::AtLeastOnce);
                m
            })
            .collect();
        publish_range(b, "sr-pub-2", "sr/x", 30..60);
        held.extend(texts(&lost.publishes_within(Duration::from_millis(500))));
        // Its socket dies (no DISCONNECT); its session (expiry 0) ends with it.
        drop(lost);
        let mut refs: Vec<&mut Mq> = stay.iter_mut().collect();
        let got = gather(&mut refs, |g| counts(g).len() >= 60);
        let c = counts(&got);
        let missing: Vec<String> = numbers(60)
            .into_iter()
            .filter(|n| !c.contains_key(n))
            .collect();
        assert!(
            missing.is_empty(),
            "never reached the remaining members: {missing:?} (the lost one held {held:?})"
        );
        let bad_dups: Vec<&String> = c
            .iter()
            .filter(|(n, k)| **k > 1 && !held.contains(n))
            .map(|(n, _)| n)
            .collect();
        assert!(
            bad_dups.is_empty(),
            "duplicated though never unacknowledged elsewhere: {bad_dups:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 14. Will delay (DISCONNECT 0x04 is in tests/paho/will.py: rumqttc cannot send it)

fn with_will(b: &Broker, id: &str, delay: u32, session_expiry: u32) -> MqttOptions {
    let mut o = opts(b, id);
    o.set_session_expiry_interval(Some(session_expiry));
    let props = LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    o.set_last_will(LastWill::new(
        format!("wd/{id}"),
        "gone",
        QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    o
}

fn watcher(b: &Broker, id: &str) -> Mq {
    let mut w = Mq::connect(b, id);
    w.subscribed("wd/#", QoS::AtLeastOnce);
    w
}

#[test]
fn will_delay_postpones_the_will() {
    for_shards(None, |b| {
        let mut w = watcher(b, "wd-watch-a");
        let c = Mq::with(with_will(b, "wd-a", 2, 30));
        drop(c); // the socket dies, no DISCONNECT
        w.quiet(Duration::from_secs(1), "will before its delay");
        let got = w.next_publish();
        assert_eq!((topic(&got), text(&got)), ("wd/wd-a".into(), "gone".into()));
    });
}

#[test]
fn reconnecting_within_the_will_delay_cancels_the_will() {
    for_shards(None, |b| {
        let mut w = watcher(b, "wd-watch-b");
        drop(Mq::with(with_will(b, "wd-b", 2, 30)));
        let back = Mq::with(persistent(b, "wd-b", 30));
        assert!(back.session_present());
        w.quiet(Duration::from_secs(4), "will after the client came back");
    });
}

#[test]
fn the_will_is_published_when_the_session_ends_before_the_will_delay() {
    for_shards(None, |b| {
        let mut w = watcher(b, "wd-watch-c");
        drop(Mq::with(with_will(b, "wd-c", 30, 1)));
        // The session expires after 1 s: the will goes then, not after 30 s.
        let got = w.next_publish();
        assert_eq!(topic(&got), "wd/wd-c");
    });
}

#[test]
fn a_normal_disconnect_discards_the_will_even_with_a_session() {
    for_shards(None, |b| {
        let mut w = watcher(b, "wd-watch-d");
        Mq::with(with_will(b, "wd-d", 0, 30)).disconnect();
        Mq::with(with_will(b, "wd-e", 1, 30)).disconnect();
        w.quiet(Duration::from_secs(2), "will after DISCONNECT 0x00");
    });
}

// ---------------------------------------------------------------------------------------------
// 15. Server DISCONNECT reason codes

#[test]
fn takeover_is_reported_with_session_taken_over() {
    // Byte-exact here: the broker sends the short form `e0 01 8e` (reason code only, which
    // MQTT 5.0 §3.14.2.2.1 allows, as mosquitto does), and neither independent client reads
    // its reason: rumqttc 0.25 waits for a Property Length that is not there and reports
    // ConnectionAborted; paho-mqtt 2.1 reads the reason only when Remaining Length > 2
    // (eclipse-paho/paho.mqtt.python#860). tests/paho/server_disconnect.py checks that paho
    // gets a DISCONNECT packet.
    for_shards(None, |b| {
        for round in 0..3 {
            let (mut first, _) = raw_connect(b, "twin5", |c| {
                c.clean_start = false;
                c.properties.session_expiry_interval = Some(60);
            });
            let second = Mq::with(persistent(b, "twin5", 60));
            assert!(second.session_present(), "round {round}");
            expect_disconnect(
                &mut first,
                ReasonCode::SESSION_TAKEN_OVER,
                &format!("round {round}"),
            );
            second.disconnect();
        }
    });
}

#[test]
fn keep_alive_timeout_is_reported_with_0x8d() {
    for_shards(None, |b| {
        let (mut raw, _) = raw_connect(b, "sleepy5", |c| c.keep_alive = 1);
        // 1.5 s of grace checked by a one-second wheel: well within 6 s.
        let seen = closed_within(&mut raw, Duration::from_secs(6))
            .unwrap_or_else(|e| panic!("keep alive 1, silent: {e}"));
        assert!(
            matches!(&seen[..], [wire::Packet::Disconnect(d)] if d.reason == ReasonCode::KEEP_ALIVE_TIMEOUT),
            "expected DISCONNECT 0x8D then close, got {seen:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 16. Request Problem Information

#[test]
fn request_problem_information_0_keeps_reason_strings_out_of_suback() {
    // More levels than the default max_topic_levels (64).
    let deep = vec!["l"; 70].join("/");
    for_shards(None, |b| {
        let (mut raw, _) = raw_connect(b, "rpi-0", |c| {
            c.properties.request_problem_information = Some(0)
        });
        let a = raw_subscribe(&mut raw, &deep, wire::QoS::AtLeastOnce, Default::default());
        assert!(!a.reasons[0].is_success(), "{a:?}");
        assert_eq!(a.properties.reason_string, None, "{a:?}");
        assert!(a.properties.user_properties.is_empty(), "{a:?}");
        // By default the broker may explain (not required); the refusal is the same.
        let (mut raw, _) = raw_connect(b, "rpi-1", |_| {});
        let a = raw_subscribe(&mut raw, &deep, wire::QoS::AtLeastOnce, Default::default());
        assert!(!a.reasons[0].is_success(), "{a:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// 18. Enhanced authentication with no method configured

#[test]
fn an_authentication_method_the_broker_does_not_offer_is_refused() {
    for_shards(None, |b| {
        let mut o = opts(b, "scram");
        o.set_authentication_method(Some("SCRAM-SHA-256".into()));
        o.set_authentication_data(Some(Bytes::from_static(b"n,,n=user,r=nonce")));
        match Mq::try_with(o) {
            Err(ConnectionError::ConnectionRefused(code)) => {
                assert_eq!(code, ConnectReturnCode::BadAuthenticationMethod)
            }
            Err(e) => panic!("expected CONNACK 0x8C, got {e:?}"),
            Ok(m) => panic!("accepted: {:?}", m.connack),
        }
        // The broker serves everyone else.
        Mq::connect(b, "plain").disconnect();
    });
}
