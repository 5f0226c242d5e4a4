//! Broker behaviour over real sockets with an independent client (rumqttc), on one shard and
//! on three (so publishers and subscribers land on different shards and every cross-shard
//! path runs, even on a two-core machine).

mod common;

use std::time::{Duration, Instant};

use common::{Broker, Raw, WAIT, connect_packet};
use rumqttc::{Client, Connection, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS};

/// A rumqttc client with its event loop driven from the test thread.
struct Mq {
    client: Client,
    conn: Connection,
    session_present: Option<bool>,
}

fn options(b: &Broker, id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", b.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o
}

impl Mq {
    fn connect(b: &Broker, id: &str, clean: bool) -> Mq {
        Mq::with(options(b, id, clean))
    }

    fn with(o: MqttOptions) -> Mq {
        let (client, conn) = Client::new(o, 1000);
        let mut m = Mq {
            client,
            conn,
            session_present: None,
        };
        m.until(|e| matches!(e, Event::Incoming(Packet::ConnAck(_))));
        m
    }

    /// Drives the connection until `f` accepts an event; panics after [`WAIT`].
    fn until(&mut self, mut f: impl FnMut(&Event) -> bool) -> Event {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.conn.recv_timeout(left) {
                Ok(Ok(e)) => {
                    if let Event::Incoming(Packet::ConnAck(a)) = &e {
                        self.session_present = Some(a.session_present);
                    }
                    if f(&e) {
                        return e;
                    }
                }
                Ok(Err(e)) => panic!("connection error: {e:?}"),
                Err(_) => panic!("timed out waiting for an event"),
            }
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).unwrap();
        self.until(|e| matches!(e, Event::Incoming(Packet::SubAck(_))));
    }

    fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .unwrap();
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

    fn next_publish(&mut self) -> rumqttc::Publish {
        match self.until(|e| matches!(e, Event::Incoming(Packet::Publish(_)))) {
            Event::Incoming(Packet::Publish(p)) => p,
            _ => unreachable!(),
        }
    }

    /// Publishes received within `d` (the connection is driven meanwhile).
    fn publishes_within(&mut self, d: Duration) -> Vec<rumqttc::Publish> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
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
}

fn for_shards(f: impl Fn(&Broker)) {
    for shards in [1, 3] {
        let b = Broker::start(shards, &[]);
        f(&b);
    }
}

#[test]
fn publish_reaches_subscribers_on_every_shard_at_every_qos() {
    for_shards(|b| {
        // Several subscribers, so the kernel spreads them over the shards.
        let mut subs: Vec<Mq> = (0..6)
            .map(|i| {
                let mut s = Mq::connect(b, &format!("sub-{i}"), true);
                s.subscribe("fan/+/x", QoS::ExactlyOnce);
                s
            })
            .collect();
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let mut p = Mq::connect(b, &format!("pub-{i}"), true);
            p.publish("fan/a/x", qos, false, format!("m{i}").as_bytes());
            for s in &mut subs {
                let got = s.next_publish();
                assert_eq!(got.topic, "fan/a/x");
                assert_eq!(got.payload.as_ref(), format!("m{i}").as_bytes());
                assert_eq!(got.qos, qos);
                assert!(!got.retain);
            }
            p.disconnect();
        }
    });
}

#[test]
fn qos_is_downgraded_to_the_granted_qos_and_overlaps_deliver_once() {
    for_shards(|b| {
        let mut s = Mq::connect(b, "sub", true);
        s.subscribe("d/#", QoS::AtMostOnce);
        s.subscribe("d/+", QoS::AtLeastOnce);
        s.subscribe("d/x", QoS::AtMostOnce);
        let mut p = Mq::connect(b, "pub", true);
        p.publish("d/x", QoS::ExactlyOnce, false, b"one");
        let got = s.next_publish();
        assert_eq!(got.qos, QoS::AtLeastOnce, "max of the overlapping grants");
        p.publish("d/x", QoS::AtMostOnce, false, b"two");
        let more = s.publishes_within(Duration::from_millis(500));
        assert_eq!(more.len(), 1, "one delivery per message: {more:?}");
        assert_eq!(more[0].payload.as_ref(), b"two");
    });
}

#[test]
fn retained_messages_set_replace_delete() {
    for_shards(|b| {
        let mut p = Mq::connect(b, "pub", true);
        p.publish("r/a", QoS::AtLeastOnce, true, b"first");
        p.publish("r/a", QoS::AtLeastOnce, true, b"second");
        p.publish("r/b", QoS::AtLeastOnce, true, b"other");
        // Retained replicas reach every shard over the mesh; give them a moment.
        std::thread::sleep(Duration::from_millis(200));
        let mut s = Mq::connect(b, "sub", true);
        s.subscribe("r/+", QoS::AtLeastOnce);
        let mut got: Vec<_> = (0..2).map(|_| s.next_publish()).collect();
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        assert_eq!(got[0].payload.as_ref(), b"second");
        assert!(got[0].retain && got[1].retain);
        assert_eq!(got[1].payload.as_ref(), b"other");
        // A live subscriber gets new retained publishes with RETAIN clear [MQTT-3.3.1-9].
        p.publish("r/a", QoS::AtLeastOnce, true, b"third");
        let live = s.next_publish();
        assert!(!live.retain);
        // Re-subscribing to the same filter re-sends the retained messages (3.1.1).
        s.subscribe("r/+", QoS::AtLeastOnce);
        let again = s.publishes_within(Duration::from_millis(500));
        assert_eq!(again.len(), 2, "{again:?}");
        // An empty retained payload deletes.
        p.publish("r/a", QoS::AtLeastOnce, true, b"");
        p.publish("r/b", QoS::AtLeastOnce, true, b"");
        std::thread::sleep(Duration::from_millis(200));
        let mut late = Mq::connect(b, "late", true);
        late.subscribe("r/#", QoS::AtLeastOnce);
        assert!(late.publishes_within(Duration::from_millis(500)).is_empty());
    });
}

#[test]
fn will_is_published_on_a_killed_socket_not_on_disconnect() {
    for_shards(|b| {
        let mut s = Mq::connect(b, "watcher", true);
        s.subscribe("will/#", QoS::AtLeastOnce);
        // A client that says goodbye: no will.
        let mut o = options(b, "polite", true);
        o.set_last_will(LastWill::new(
            "will/polite",
            "gone",
            QoS::AtLeastOnce,
            false,
        ));
        let polite = Mq::with(o);
        polite.disconnect();
        // A client whose socket dies: will.
        let mut raw = Raw::connect(b.addr, shardmq::protocol::Version::V3_1_1);
        let mut c = connect_packet(shardmq::protocol::Version::V3_1_1, "rude", true, 30);
        if let shardmq::protocol::Packet::Connect(c) = &mut c {
            c.will = Some(shardmq::protocol::Will {
                topic: "will/rude".into(),
                payload: bytes::Bytes::from_static(b"lost"),
                qos: shardmq::protocol::QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
            });
        }
        raw.send(&c);
        assert!(matches!(
            raw.recv(),
            Some(shardmq::protocol::Packet::ConnAck(_))
        ));
        drop(raw);
        let got = s.next_publish();
        assert_eq!(got.topic, "will/rude");
        assert_eq!(got.payload.as_ref(), b"lost");
        assert!(s.publishes_within(Duration::from_millis(300)).is_empty());
    });
}

#[test]
fn offline_queue_is_delivered_on_reconnect_with_session_present() {
    for_shards(|b| {
        let mut s = Mq::connect(b, "durable", false);
        assert_eq!(s.session_present, Some(false));
        s.subscribe("q/#", QoS::AtLeastOnce);
        s.disconnect();
        let mut p = Mq::connect(b, "pub", true);
        for i in 0..20 {
            p.publish("q/x", QoS::AtLeastOnce, false, format!("{i}").as_bytes());
        }
        p.publish("q/x", QoS::AtMostOnce, false, b"qos0-not-queued");
        let mut s = Mq::connect(b, "durable", false);
        assert_eq!(s.session_present, Some(true));
        let got: Vec<String> = (0..20)
            .map(|_| String::from_utf8(s.next_publish().payload.to_vec()).unwrap())
            .collect();
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "in order");
        assert!(s.publishes_within(Duration::from_millis(300)).is_empty());
        // Clean session discards it.
        s.disconnect();
        let s = Mq::connect(b, "durable", true);
        assert_eq!(s.session_present, Some(false));
    });
}

#[test]
fn takeover_disconnects_the_first_connection_on_any_shard() {
    for_shards(|b| {
        for round in 0..4 {
            let mut first = Mq::connect(b, "twin", false);
            first.subscribe("tw/x", QoS::AtLeastOnce);
            let mut second = Mq::connect(b, "twin", false);
            assert_eq!(second.session_present, Some(true), "round {round}");
            first.expect_dropped();
            // The session (and its subscription) moved to the second connection.
            let mut p = Mq::connect(b, "pub", true);
            p.publish("tw/x", QoS::AtLeastOnce, false, b"to-second");
            assert_eq!(second.next_publish().payload.as_ref(), b"to-second");
            second.disconnect();
            p.disconnect();
        }
        let s = Mq::connect(b, "twin", true);
        assert_eq!(s.session_present, Some(false));
    });
}

#[test]
fn unsubscribe_stops_delivery() {
    for_shards(|b| {
        let mut s = Mq::connect(b, "sub", true);
        s.subscribe("u/x", QoS::AtLeastOnce);
        s.client.unsubscribe("u/x").unwrap();
        s.until(|e| matches!(e, Event::Incoming(Packet::UnsubAck(_))));
        let mut p = Mq::connect(b, "pub", true);
        p.publish("u/x", QoS::AtLeastOnce, false, b"nobody");
        assert!(s.publishes_within(Duration::from_millis(300)).is_empty());
    });
}

#[test]
fn dollar_topics_do_not_match_leading_wildcards() {
    for_shards(|b| {
        let mut s = Mq::connect(b, "sub", true);
        s.subscribe("#", QoS::AtMostOnce);
        s.subscribe("+/x", QoS::AtMostOnce);
        let mut d = Mq::connect(b, "dollar", true);
        d.subscribe("$app/#", QoS::AtMostOnce);
        let mut p = Mq::connect(b, "pub", true);
        p.publish("$app/x", QoS::AtLeastOnce, false, b"d");
        assert_eq!(d.next_publish().topic, "$app/x");
        assert!(s.publishes_within(Duration::from_millis(300)).is_empty());
    });
}

#[test]
fn the_epoll_driver_serves_the_same_semantics() {
    let b = Broker::start(3, &["--io-driver", "epoll"]);
    let mut subs: Vec<Mq> = (0..4)
        .map(|i| {
            let mut s = Mq::connect(&b, &format!("e-sub-{i}"), false);
            s.subscribe("ep/#", QoS::AtLeastOnce);
            s
        })
        .collect();
    let mut p = Mq::connect(&b, "e-pub", true);
    p.publish("ep/x", QoS::ExactlyOnce, false, b"via epoll");
    for s in &mut subs {
        assert_eq!(s.next_publish().payload.as_ref(), b"via epoll");
    }
    let mut again = Mq::connect(&b, "e-sub-0", false);
    assert_eq!(again.session_present, Some(true));
    subs[0].expect_dropped();
    p.publish("ep/y", QoS::AtLeastOnce, false, b"moved");
    assert_eq!(again.next_publish().payload.as_ref(), b"moved");
}
