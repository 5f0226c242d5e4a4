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
    Arc::new(Publish {
        qos,
        topic: topic.into(),
        payload: Bytes::from_static(b"x"),
        ..Default::default()
    })
}

#[test]
fn qos1_window_queue_and_replay_with_dup() {
    let limits = SessionLimits {
        max_inflight: 1,
        ..Default::default()
    };
    let mut s = Session::new(Str::from("c"), limits);
    s.attach(&connect(Version::V3_1_1, false), 0);
    s.connack(false, 30, None);
    assert!(matches!(sent(&mut s)[..], [Packet::ConnAck(_)]));
    let m = message("t", QoS::AtLeastOnce);
    assert_eq!(s.deliver(&m, QoS::ExactlyOnce, false), Delivered::Sent);
    assert_eq!(s.deliver(&m, QoS::AtLeastOnce, false), Delivered::Queued);
    let first = match &sent(&mut s)[..] {
        [Packet::Publish(p)] => p.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!((first.qos, first.dup), (QoS::AtLeastOnce, false));
    // Reconnect without acknowledging: the same id again, with DUP.
    assert_eq!(s.detach(), None);
    s.attach(&connect(Version::V3_1_1, false), 0);
    s.connack(true, 30, None);
    match &sent(&mut s)[..] {
        [Packet::ConnAck(a), Packet::Publish(p)] => {
            assert!(a.session_present);
            assert_eq!((p.packet_id, p.dup), (first.packet_id, true));
        }
        other => panic!("{other:?}"),
    }
    let mut actions = Vec::new();
    s.handle(Packet::PubAck(PubAck::new(first.packet_id)), &mut actions)
        .unwrap();
    assert!(matches!(&sent(&mut s)[..], [Packet::Publish(p)] if !p.dup));
}

#[test]
fn qos2_inbound_is_delivered_once_until_pubrel() {
    let mut s = Session::new(Str::from("c"), SessionLimits::default());
    s.attach(&connect(Version::V3_1_1, false), 0);
    let mut actions = Vec::new();
    let p = Publish {
        qos: QoS::ExactlyOnce,
        packet_id: 7,
        topic: "t".into(),
        ..Default::default()
    };
    s.handle(Packet::Publish(p.clone()), &mut actions).unwrap();
    s.handle(Packet::Publish(Publish { dup: true, ..p }), &mut actions)
        .unwrap();
    assert_eq!(actions.len(), 1, "delivered once");
    s.handle(Packet::PubRel(PubAck::new(7)), &mut actions)
        .unwrap();
    let out = sent(&mut s);
    assert!(matches!(
        &out[..],
        [Packet::PubRec(_), Packet::PubRec(_), Packet::PubComp(c)] if c.packet_id == 7
    ));
}

#[test]
fn a_second_connect_is_a_protocol_error() {
    let mut s = Session::new(Str::from("c"), SessionLimits::default());
    s.attach(&connect(Version::V3_1_1, true), 0);
    let e = s
        .handle(
            Packet::Connect(Box::new(connect(Version::V3_1_1, true))),
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
    let mut s = Session::new(Str::from("c"), limits);
    s.attach(&connect(Version::V3_1_1, false), 0);
    assert!(s.detach().is_none());
    let q0 = message("a", QoS::AtMostOnce);
    let q1 = message("b", QoS::AtLeastOnce);
    assert_eq!(s.deliver(&q0, QoS::AtMostOnce, false), Delivered::Queued);
    assert_eq!(s.deliver(&q1, QoS::AtLeastOnce, false), Delivered::Queued);
    // Full: a QoS 1 message evicts the queued QoS 0 one.
    assert_eq!(s.deliver(&q1, QoS::AtLeastOnce, false), Delivered::Queued);
    assert_eq!(s.drops.queue_full, 1);
    // Full of QoS 1: refused.
    assert_eq!(s.deliver(&q1, QoS::AtLeastOnce, false), Delivered::Dropped);
    assert_eq!(s.deliver(&q0, QoS::AtMostOnce, false), Delivered::Dropped);
    assert_eq!(s.drops.queue_full, 3);
    assert_eq!(s.queued(), 2);
}

#[test]
fn a_slow_consumer_loses_qos0_not_qos1() {
    let limits = SessionLimits {
        max_write_buffer: 64,
        ..Default::default()
    };
    let mut s = Session::new(Str::from("c"), limits);
    s.attach(&connect(Version::V3_1_1, true), 0);
    let q0 = message("a", QoS::AtMostOnce);
    let mut dropped = 0;
    for _ in 0..100 {
        if s.deliver(&q0, QoS::AtMostOnce, false) == Delivered::Dropped {
            dropped += 1;
        }
    }
    assert!(dropped > 80, "{dropped}");
    assert_eq!(s.drops.slow_consumer, dropped);
    let q1 = message("b", QoS::AtLeastOnce);
    assert_ne!(s.deliver(&q1, QoS::AtLeastOnce, false), Delivered::Dropped);
}

#[test]
fn shared_subscriptions_are_refused_until_supported() {
    for (v, code) in [
        (Version::V3_1_1, ReasonCode::UNSPECIFIED_ERROR),
        (Version::V5, ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
    ] {
        let mut s = Session::new(Str::from("c"), SessionLimits::default());
        s.attach(&connect(v, true), 0);
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
        s.handle(Packet::Subscribe(sub), &mut actions).unwrap();
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
