//! Byte-level tests of the session state machine.

use super::*;
use crate::protocol::decode;

fn connect(version: Version, clean: bool) -> Connect {
    Connect {
        version,
        clean_start: clean,
        keep_alive: 30,
        client_id: Str::from("c"),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

fn sent(s: &mut Session) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    s.swap_tx(&mut buf);
    let mut out = Vec::new();
    while let Some(p) = decode(&mut buf, s.version(), u32::MAX).unwrap() {
        out.push(p);
    }
    assert!(buf.is_empty());
    out
}

fn message(topic: &'static str, qos: QoS) -> Message {
    Arc::new(AppMessage::new(Publish {
        qos,
        topic: topic.into(),
        payload: Bytes::from_static(b"x"),
        ..Default::default()
    }))
}

fn session(limits: SessionLimits) -> Session {
    Session::new(Str::from("c"), Arc::new(limits))
}

fn grant(qos: QoS) -> Grant<'static> {
    Grant::qos(qos, false)
}

#[test]
fn qos1_window_queue_and_replay_with_dup() {
    let limits = SessionLimits {
        max_inflight: 1,
        ..Default::default()
    };
    let mut s = session(limits);
    s.attach(&connect(Version::V3_1_1, false));
    s.connack(false, &connect(Version::V3_1_1, false), None, None, 0);
    assert!(matches!(sent(&mut s)[..], [Packet::ConnAck(_)]));
    let m = message("t", QoS::AtLeastOnce);
    assert_eq!(s.deliver(&m, grant(QoS::ExactlyOnce), 0), Delivered::Sent);
    assert_eq!(s.deliver(&m, grant(QoS::AtLeastOnce), 0), Delivered::Queued);
    let first = match &sent(&mut s)[..] {
        [Packet::Publish(p)] => p.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!((first.qos, first.dup), (QoS::AtLeastOnce, false));
    // Reconnect without acknowledging: the same id again, with DUP.
    assert_eq!(s.detach(), None);
    s.attach(&connect(Version::V3_1_1, false));
    s.connack(true, &connect(Version::V3_1_1, false), None, None, 0);
    match &sent(&mut s)[..] {
        [Packet::ConnAck(a), Packet::Publish(p)] => {
            assert!(a.session_present);
            assert_eq!((p.packet_id, p.dup), (first.packet_id, true));
        }
        other => panic!("{other:?}"),
    }
    let mut actions = Vec::new();
    s.handle(
        Packet::PubAck(PubAck::new(first.packet_id)),
        0,
        &mut actions,
    )
    .unwrap();
    assert!(matches!(&sent(&mut s)[..], [Packet::Publish(p)] if !p.dup));
}

#[test]
fn qos2_inbound_is_delivered_once_until_pubrel() {
    let mut s = session(SessionLimits::default());
    s.attach(&connect(Version::V3_1_1, false));
    let mut actions = Vec::new();
    let p = Publish {
        qos: QoS::ExactlyOnce,
        packet_id: 7,
        topic: "t".into(),
        ..Default::default()
    };
    s.handle(Packet::Publish(p.clone()), 0, &mut actions)
        .unwrap();
    s.handle(Packet::Publish(Publish { dup: true, ..p }), 0, &mut actions)
        .unwrap();
    assert_eq!(actions.len(), 1, "delivered once");
    // The first PUBREC goes out once the shard has routed the message.
    let Action::Publish { ack, .. } = actions[0] else {
        panic!()
    };
    assert_eq!(ack, Ack::PubRec(7));
    s.ack(ack, true);
    s.handle(Packet::PubRel(PubAck::new(7)), 0, &mut actions)
        .unwrap();
    let out = sent(&mut s);
    assert!(matches!(
        &out[..],
        [Packet::PubRec(_), Packet::PubRec(_), Packet::PubComp(c)] if c.packet_id == 7
    ));
}

#[test]
fn a_second_connect_is_a_protocol_error() {
    let mut s = session(SessionLimits::default());
    s.attach(&connect(Version::V3_1_1, true));
    let e = s
        .handle(
            Packet::Connect(Box::new(connect(Version::V3_1_1, true))),
            0,
            &mut Vec::new(),
        )
        .unwrap_err();
    assert_eq!(e.rule, "MQTT-3.1.0-2");
}

#[test]
fn queue_bounds_drop_qos0_first_then_refuse() {
    let limits = SessionLimits {
        max_queued_messages: 2,
        queue_qos0_offline: true,
        ..Default::default()
    };
    let mut s = session(limits);
    s.attach(&connect(Version::V3_1_1, false));
    assert!(s.detach().is_none());
    let q0 = message("a", QoS::AtMostOnce);
    let q1 = message("b", QoS::AtLeastOnce);
    assert_eq!(s.deliver(&q0, grant(QoS::AtMostOnce), 0), Delivered::Queued);
    assert_eq!(
        s.deliver(&q1, grant(QoS::AtLeastOnce), 0),
        Delivered::Queued
    );
    // Full: a QoS 1 message evicts the queued QoS 0 one.
    assert_eq!(
        s.deliver(&q1, grant(QoS::AtLeastOnce), 0),
        Delivered::Queued
    );
    assert_eq!(s.drops.queue_full, 1);
    // Full of QoS 1: refused.
    assert_eq!(
        s.deliver(&q1, grant(QoS::AtLeastOnce), 0),
        Delivered::Dropped
    );
    assert_eq!(
        s.deliver(&q0, grant(QoS::AtMostOnce), 0),
        Delivered::Dropped
    );
    assert_eq!(s.drops.queue_full, 3);
    assert_eq!(s.queued(), 2);
}

#[test]
fn a_slow_consumer_loses_qos0_not_qos1() {
    let limits = SessionLimits {
        max_write_buffer: 64,
        ..Default::default()
    };
    let mut s = session(limits);
    s.attach(&connect(Version::V3_1_1, true));
    let q0 = message("a", QoS::AtMostOnce);
    let mut dropped = 0;
    for _ in 0..100 {
        if s.deliver(&q0, grant(QoS::AtMostOnce), 0) == Delivered::Dropped {
            dropped += 1;
        }
    }
    assert!(dropped > 80, "{dropped}");
    assert_eq!(s.drops.slow_consumer, dropped);
    let q1 = message("b", QoS::AtLeastOnce);
    assert_ne!(
        s.deliver(&q1, grant(QoS::AtLeastOnce), 0),
        Delivered::Dropped
    );
}

#[test]
fn shared_subscriptions_are_refused_when_disabled() {
    for (v, code) in [
        (Version::V3_1_1, ReasonCode::UNSPECIFIED_ERROR),
        (Version::V5, ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
    ] {
        let mut s = session(SessionLimits {
            shared_subscriptions: false,
            ..Default::default()
        });
        s.attach(&connect(v, true));
        let mut actions = Vec::new();
        let sub = crate::protocol::Subscribe {
            packet_id: 1,
            filters: vec![
                (
                    "$share/g/t".into(),
                    SubscriptionOptions::qos(QoS::AtLeastOnce),
                ),
                ("t".into(), SubscriptionOptions::qos(QoS::AtLeastOnce)),
            ],
            properties: Default::default(),
        };
        s.handle(Packet::Subscribe(sub), 0, &mut actions).unwrap();
        assert!(matches!(
            &actions[0],
            Action::Subscribe { is_new: true, .. }
        ));
        assert!(matches!(
            &actions[1],
            Action::SubAck { reasons, .. } if reasons[..] == [code, ReasonCode(1)]
        ));
    }
}

fn v5_connect(f: impl FnOnce(&mut Connect)) -> Connect {
    let mut c = connect(Version::V5, true);
    f(&mut c);
    c
}

#[test]
fn connack_announces_limits_and_features() {
    let mut s = session(SessionLimits {
        maximum_qos: QoS::AtLeastOnce,
        retain_available: false,
        max_session_expiry: 60,
        response_information: "r/%c".into(),
        ..Default::default()
    });
    let c = v5_connect(|c| {
        c.properties.session_expiry_interval = Some(600);
        c.properties.request_response_information = Some(1);
    });
    s.attach(&c);
    s.connack(false, &c, None, None, 0);
    let [Packet::ConnAck(a)] = &sent(&mut s)[..] else {
        panic!()
    };
    let p = &a.properties;
    assert_eq!(p.receive_maximum, Some(1024));
    assert_eq!(p.maximum_packet_size, Some(1 << 20));
    assert_eq!(p.topic_alias_maximum, Some(64));
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.retain_available, Some(0));
    assert_eq!(p.session_expiry_interval, Some(60));
    assert_eq!(p.response_information.as_ref().unwrap().as_str(), "r/c");
    assert_eq!(p.shared_subscription_available, None);
    assert_eq!(s.expiry(), 60);
}

/// Found by the `session` fuzz target: the Response Information (the template with the
/// client id in it) made the CONNACK larger than the client's Maximum Packet Size
/// [MQTT-3.1.2-24]. It is left out then (the server may omit it, §3.2.2.3.15).
#[test]
fn connack_leaves_out_response_information_over_the_client_maximum_packet_size() {
    let long_id = Str::new(Bytes::from("d".repeat(200))).unwrap();
    let limits = Arc::new(SessionLimits {
        response_information: "responses/%c".into(),
        ..Default::default()
    });
    for (max, kept) in [(1024, true), (128, false)] {
        let mut s = Session::new(long_id.clone(), limits.clone());
        let c = v5_connect(|c| {
            c.client_id = long_id.clone();
            c.properties.request_response_information = Some(1);
            c.properties.maximum_packet_size = Some(max);
        });
        s.attach(&c);
        s.connack(false, &c, None, None, 0);
        let mut buf = BytesMut::new();
        s.swap_tx(&mut buf);
        assert!(
            buf.len() <= max as usize,
            "{} bytes, client maximum {max}",
            buf.len()
        );
        let Ok(Some(Packet::ConnAck(a))) = decode(&mut buf, Version::V5, max) else {
            panic!("no CONNACK")
        };
        assert!(a.reason.is_success());
        assert_eq!(a.properties.response_information.is_some(), kept, "{max}");
        assert_eq!(a.properties.maximum_packet_size, Some(1 << 20));
    }
}

#[test]
fn topic_aliases_from_the_client_resolve_and_are_stripped() {
    let mut s = session(SessionLimits::default());
    s.attach(&connect(Version::V5, true));
    let mut actions = Vec::new();
    let mut p = Publish {
        topic: "a/b".into(),
        ..Default::default()
    };
    p.properties.topic_alias = Some(3);
    s.handle(Packet::Publish(p.clone()), 0, &mut actions)
        .unwrap();
    p.topic = TopicName::default();
    s.handle(Packet::Publish(p.clone()), 0, &mut actions)
        .unwrap();
    for a in &actions {
        let Action::Publish { msg: m, .. } = a else {
            panic!()
        };
        assert_eq!(m.topic.as_str(), "a/b");
        assert_eq!(m.properties.topic_alias, None);
        assert_eq!(m.origin.as_str(), "c");
    }
    p.properties.topic_alias = Some(9);
    let e = s
        .handle(Packet::Publish(p.clone()), 0, &mut actions)
        .unwrap_err();
    assert_eq!(e.rule, "§3.3.2.3.4");
    p.properties.topic_alias = Some(65);
    let e = s.handle(Packet::Publish(p), 0, &mut actions).unwrap_err();
    assert_eq!(e.reason, ReasonCode::TOPIC_ALIAS_INVALID);
}

#[test]
fn topic_aliases_to_the_client_replace_repeated_topics() {
    let mut s = session(SessionLimits::default());
    s.attach(&v5_connect(|c| c.properties.topic_alias_maximum = Some(1)));
    let (a, b) = (message("a", QoS::AtMostOnce), message("b", QoS::AtMostOnce));
    for m in [&a, &a, &b] {
        assert_eq!(s.deliver(m, grant(QoS::AtMostOnce), 0), Delivered::Sent);
    }
    let out = sent(&mut s);
    let seen: Vec<(&str, Option<u16>)> = out
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic.as_str(), p.properties.topic_alias),
            _ => panic!(),
        })
        .collect();
    assert_eq!(seen, [("a", Some(1)), ("", Some(1)), ("b", None)]);
}

#[test]
fn expiry_subscription_ids_and_maximum_packet_size_per_delivery() {
    let mut s = session(SessionLimits::default());
    s.attach(&v5_connect(|c| c.properties.maximum_packet_size = Some(64)));
    let mut m = AppMessage::new(Publish {
        qos: QoS::AtLeastOnce,
        topic: "t".into(),
        payload: Bytes::from_static(b"x"),
        ..Default::default()
    });
    m.expires_at = Some(10);
    let m = Arc::new(m);
    let g = Grant {
        qos: QoS::AtLeastOnce,
        ids: &[5, 7],
        ..Default::default()
    };
    assert_eq!(s.deliver(&m, g, 4), Delivered::Sent);
    let [Packet::Publish(p)] = &sent(&mut s)[..] else {
        panic!()
    };
    assert_eq!(p.properties.message_expiry_interval, Some(6));
    assert_eq!(p.properties.subscription_identifiers, [5, 7]);
    // Expired: dropped, counted.
    assert_eq!(s.deliver(&m, g, 10), Delivered::Dropped);
    assert_eq!(s.drops.expired, 1);
    // Larger than the client's Maximum Packet Size: dropped, and the window is free again.
    let big = Arc::new(AppMessage::new(Publish {
        qos: QoS::AtLeastOnce,
        topic: "t".into(),
        payload: Bytes::from(vec![0u8; 100]),
        ..Default::default()
    }));
    assert_eq!(
        s.deliver(&big, grant(QoS::AtLeastOnce), 0),
        Delivered::Dropped
    );
    assert_eq!(s.drops.too_large, 1);
    assert_eq!(s.inflight(), 1);
    assert!(sent(&mut s).is_empty());
}

#[test]
fn disconnect_may_not_raise_a_zero_session_expiry() {
    let mut s = session(SessionLimits::default());
    s.attach(&connect(Version::V5, true));
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(30);
    let e = s
        .handle(Packet::Disconnect(d.clone()), 0, &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.rule, "MQTT-3.14.2-2");
    // From a non-zero expiry it may change, down to 0 (the session then ends).
    s.attach(&v5_connect(|c| {
        c.properties.session_expiry_interval = Some(10)
    }));
    assert!(s.is_persistent());
    d.properties.session_expiry_interval = Some(0);
    s.handle(Packet::Disconnect(d), 0, &mut Vec::new()).unwrap();
    assert!(!s.is_persistent());
}

#[test]
fn a_delayed_will_waits_unless_the_session_ends_now() {
    let will = |delay| Will {
        topic: "w".into(),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: {
            let mut p = Properties::default();
            p.will_delay_interval = Some(delay);
            p
        },
    };
    let mut s = session(SessionLimits::default());
    s.attach(&v5_connect(|c| {
        c.will = Some(will(30));
        c.properties.session_expiry_interval = Some(5);
    }));
    assert!(s.detach().is_none());
    assert_eq!(s.will_delay(), Some(5), "the session ends before the delay");
    // Reconnecting cancels it.
    s.attach(&v5_connect(|c| {
        c.properties.session_expiry_interval = Some(5)
    }));
    assert!(s.take_delayed_will().is_none());
    // Session expiry 0: the session ends with the connection, the will goes at once.
    s.attach(&v5_connect(|c| c.will = Some(will(30))));
    assert!(s.detach().is_some());
}

#[test]
fn shared_messages_go_back_when_the_member_leaves() {
    let mut s = session(SessionLimits::default());
    s.attach(&connect(Version::V5, true));
    let m = message("t", QoS::AtLeastOnce);
    let group = TopicFilter::from("$share/g/t");
    let g = Grant {
        qos: QoS::AtLeastOnce,
        share: Some(&group),
        ..Default::default()
    };
    assert_eq!(s.deliver(&m, g, 0), Delivered::Sent);
    assert_eq!(s.deliver(&m, grant(QoS::AtLeastOnce), 0), Delivered::Sent);
    let taken = s.take_shared(true);
    assert_eq!(taken.len(), 1);
    assert_eq!(s.inflight(), 1, "the plain subscription's message stays");
}

#[test]
fn a_session_stays_small() {
    // Every idle connection has one: the rarer 5.0 state (aliases, a delayed will, delivery
    // extras) is boxed; the store's bookkeeping (sequence, completed deliveries), the ACL
    // pointer and the drop / limit counters are inline.
    let size = std::mem::size_of::<Session>();
    assert!(size <= 496, "Session is {size} bytes");
    assert!(std::mem::size_of::<Outgoing>() <= 32);
}

#[test]
fn reason_strings_give_way_to_the_clients_maximum_packet_size() {
    for (max, with_string) in [(u32::MAX, true), (8, false)] {
        let mut s = session(SessionLimits::default());
        s.attach(&v5_connect(|c| {
            c.properties.maximum_packet_size = Some(max)
        }));
        s.disconnect_with(ReasonCode::SESSION_TAKEN_OVER);
        let [Packet::Disconnect(d)] = &sent(&mut s)[..] else {
            panic!()
        };
        assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER);
        assert_eq!(
            d.properties.reason_string.is_some(),
            with_string,
            "max {max}"
        );
    }
}

#[test]
fn an_alias_is_kept_only_for_a_message_that_was_sent() {
    let mut s = session(SessionLimits::default());
    s.attach(&v5_connect(|c| {
        c.properties.topic_alias_maximum = Some(4);
        c.properties.maximum_packet_size = Some(64);
    }));
    let big = Arc::new(AppMessage::new(Publish {
        topic: "a".into(),
        payload: Bytes::from(vec![0u8; 100]),
        ..Default::default()
    }));
    assert_eq!(
        s.deliver(&big, grant(QoS::AtMostOnce), 0),
        Delivered::Dropped
    );
    let small = message("a", QoS::AtMostOnce);
    assert_eq!(
        s.deliver(&small, grant(QoS::AtMostOnce), 0),
        Delivered::Sent
    );
    let out = sent(&mut s);
    let [Packet::Publish(p)] = &out[..] else {
        panic!("{out:?}")
    };
    // The client never learnt alias 1: it must get the topic name.
    assert_eq!(
        p.topic.as_str(),
        "a",
        "alias-only PUBLISH for an alias never sent: {p:?}"
    );
}

#[test]
fn the_replay_after_a_reconnect_respects_the_new_receive_maximum() {
    let mut s = session(SessionLimits::default());
    let c1 = v5_connect(|c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(100);
        c.properties.receive_maximum = Some(10);
    });
    s.attach(&c1);
    s.connack(false, &c1, None, None, 0);
    sent(&mut s);
    let m = message("t", QoS::AtLeastOnce);
    for _ in 0..10 {
        assert_eq!(s.deliver(&m, grant(QoS::AtLeastOnce), 0), Delivered::Sent);
    }
    sent(&mut s);
    s.detach();
    let c2 = v5_connect(|c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(100);
        c.properties.receive_maximum = Some(1);
    });
    s.attach(&c2);
    s.connack(true, &c2, None, None, 0);
    let out = sent(&mut s);
    let publishes = out
        .iter()
        .filter(|p| matches!(p, Packet::Publish(_)))
        .count();
    assert!(
        publishes <= 1,
        "{publishes} unacknowledged PUBLISHes against Receive Maximum 1"
    );
    // Each PUBACK lets the next one through, with DUP, until all ten are acknowledged.
    let mut acked = 0;
    let mut last = out;
    while acked < 10 {
        let id = last
            .iter()
            .find_map(|p| match p {
                Packet::Publish(p) => {
                    assert!(p.dup);
                    Some(p.packet_id)
                }
                _ => None,
            })
            .expect("one more replayed PUBLISH");
        s.handle(Packet::PubAck(PubAck::new(id)), 0, &mut Vec::new())
            .unwrap();
        acked += 1;
        last = sent(&mut s);
        let n = last
            .iter()
            .filter(|p| matches!(p, Packet::Publish(_)))
            .count();
        assert!(n <= 1, "{n} at once");
    }
    assert_eq!(s.inflight(), 0);
}

#[test]
fn a_replay_too_large_for_the_new_connection_frees_the_window() {
    let limits = SessionLimits {
        max_inflight: 1,
        ..Default::default()
    };
    let mut s = session(limits);
    let c1 = v5_connect(|c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(100);
    });
    s.attach(&c1);
    s.connack(false, &c1, None, None, 0);
    sent(&mut s);
    let big = Arc::new(AppMessage::new(Publish {
        qos: QoS::AtLeastOnce,
        topic: "t".into(),
        payload: Bytes::from(vec![0u8; 100]),
        ..Default::default()
    }));
    assert_eq!(s.deliver(&big, grant(QoS::AtLeastOnce), 0), Delivered::Sent);
    sent(&mut s);
    s.detach();
    let c2 = v5_connect(|c| {
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(100);
        c.properties.maximum_packet_size = Some(64);
    });
    s.attach(&c2);
    s.connack(true, &c2, None, None, 0);
    sent(&mut s);
    assert_eq!(s.drops.too_large, 1);
    let m = message("t", QoS::AtLeastOnce);
    assert_eq!(
        s.deliver(&m, grant(QoS::AtLeastOnce), 0),
        Delivered::Sent,
        "window stuck: inflight={}",
        s.inflight()
    );
}

#[test]
fn limits_the_session_runs_into_are_counted() {
    let mut s = session(SessionLimits {
        max_subscriptions: 1,
        max_topic_levels: 3,
        receive_maximum: 1,
        ..Default::default()
    });
    s.attach(&connect(Version::V5, true));
    let mut actions = Vec::new();
    let sub = crate::protocol::Subscribe {
        packet_id: 1,
        filters: vec![
            ("a".into(), SubscriptionOptions::qos(QoS::AtLeastOnce)),
            ("b".into(), SubscriptionOptions::qos(QoS::AtLeastOnce)),
            ("a/b/c/d".into(), SubscriptionOptions::qos(QoS::AtLeastOnce)),
        ],
        properties: Default::default(),
    };
    s.handle(Packet::Subscribe(sub), 0, &mut actions).unwrap();
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::SubAck { reasons, .. }
            if reasons[..] == [ReasonCode(1), ReasonCode::QUOTA_EXCEEDED, ReasonCode::TOPIC_FILTER_INVALID]
    )));
    let publish = |id: u16, topic: &'static str| Publish {
        qos: QoS::ExactlyOnce,
        packet_id: id,
        topic: topic.into(),
        ..Default::default()
    };
    let deep = s.handle(Packet::Publish(publish(1, "a/b/c/d/e")), 0, &mut actions);
    assert_eq!(deep.unwrap_err().reason, ReasonCode::TOPIC_NAME_INVALID);
    s.handle(Packet::Publish(publish(2, "t")), 0, &mut actions)
        .unwrap();
    let over = s.handle(Packet::Publish(publish(3, "t")), 0, &mut actions);
    assert_eq!(
        over.unwrap_err().reason,
        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED
    );
    assert_eq!(
        s.limit_hits,
        LimitHits {
            receive_maximum: 1,
            subscriptions: 1,
            topic_levels: 2,
        }
    );
}

/// Found by the `session` fuzz target: after a reconnect with a smaller Receive Maximum, an
/// acknowledgement for a message the client had from the previous connection (not resent
/// yet) left its id among those still to resend, so the window counted one outstanding
/// message too few and sent one more than the Receive Maximum allows [MQTT-3.3.4-7].
#[test]
fn an_ack_for_a_message_not_yet_resent_keeps_the_receive_maximum() {
    let mut s = session(SessionLimits {
        max_inflight: 3,
        ..Default::default()
    });
    let persistent = |receive_maximum: Option<u16>| {
        v5_connect(|c| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(60);
            c.properties.receive_maximum = receive_maximum;
        })
    };
    let c = persistent(None);
    s.attach(&c);
    s.connack(false, &c, None, None, 0);
    let m = message("t", QoS::AtLeastOnce);
    for _ in 0..3 {
        assert_eq!(s.deliver(&m, grant(QoS::AtLeastOnce), 0), Delivered::Sent);
    }
    sent(&mut s);
    s.detach();
    // Back with Receive Maximum 1: only id 1 is resent at once.
    let c = persistent(Some(1));
    s.attach(&c);
    s.connack(true, &c, None, None, 0);
    let ids = |packets: Vec<Packet>| -> Vec<u16> {
        packets
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.packet_id),
                _ => None,
            })
            .collect()
    };
    assert_eq!(ids(sent(&mut s)), vec![1]);
    // The client acknowledges id 3, which it got before the reconnect: 1 is still
    // unacknowledged, so nothing more may go out.
    let mut actions = Vec::new();
    s.handle(Packet::PubAck(PubAck::new(3)), 0, &mut actions)
        .unwrap();
    assert_eq!(ids(sent(&mut s)), Vec::<u16>::new());
    assert_eq!(s.inflight(), 2);
    // Id 1 acknowledged: id 2 is resent, with DUP.
    s.handle(Packet::PubAck(PubAck::new(1)), 0, &mut actions)
        .unwrap();
    match &sent(&mut s)[..] {
        [Packet::Publish(p)] => assert_eq!((p.packet_id, p.dup), (2, true)),
        other => panic!("{other:?}"),
    }
}
