//! Unit tests of the shard logic without sockets: several `Shard`s joined by real mesh
//! rings, sessions installed without connections, envelopes pumped by hand.
use super::*;
use crate::protocol::packet::{Connect, Packet, Subscribe, SubscriptionOptions, Version};
use bytes::Bytes;

fn shards(n: usize) -> Vec<Shard> {
    let (outs, ins) = crate::shard::run::full_mesh(n, 1024);
    let shared = Arc::new(Shared {
        config: Config::default(),
        routes: Routes::new(),
        shared_routes: SharedRoutes::new(),
        start: Instant::now(),
        doorbells: (0..n)
            .map(|_| Doorbell::new(ShardWaker::default()))
            .collect(),
        connections: AtomicUsize::new(0),
        persistent: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        effects: crate::shard::durability::Effects::new(n),
        dropped: AtomicU64::new(0),
        snapshots: (0..n).map(|_| Default::default()).collect(),
        cluster: None,
        authenticators: Arc::new(crate::auth::Authenticators::new()),
        start_unix: 0,
        assigned_prefix: "test".into(),
        store: None,
        shutdown: AtomicBool::new(false),
        seeded: AtomicUsize::new(n),
        verifier: None,
        acl: arc_swap::ArcSwapOption::empty(),
    });
    outs.into_iter()
        .zip(ins)
        .enumerate()
        .map(|(i, (o, inb))| Shard::new(i, shared.clone(), o, inb))
        .collect()
}

fn v5(id: &'static str, f: impl FnOnce(&mut Connect)) -> Connect {
    let mut c = Connect {
        version: Version::V5,
        clean_start: false,
        keep_alive: 0,
        client_id: Str::from(id),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    c.properties.session_expiry_interval = Some(100);
    f(&mut c);
    c
}

/// Installs a connected (attached) session with no socket and subscribes it.
fn member(
    sh: &mut Shard,
    id: &'static str,
    filter: &'static str,
    qos: QoS,
    sub_id: Option<u32>,
) -> usize {
    let mut s = Box::new(Session::new(Str::from(id), sh.limits.clone()));
    let c = v5(id, |_| {});
    s.attach(&c);
    s.connack(false, &c, None, None, 0);
    let slot = sh.install(s, 1000 + sh.sessions.len() as u64, None);
    let mut props = Properties::default();
    if let Some(i) = sub_id {
        props.subscription_identifiers = vec![i];
    }
    let sub = Subscribe {
        packet_id: 1,
        filters: vec![(TopicFilter::from(filter), SubscriptionOptions::qos(qos))],
        properties: props,
    };
    let mut actions = Vec::new();
    sh.sessions[slot]
        .session
        .handle(Packet::Subscribe(sub), 0, &mut actions)
        .unwrap();
    sh.apply(slot, &mut actions);
    let mut b = bytes::BytesMut::new();
    sh.sessions[slot].session.swap_tx(&mut b);
    slot
}

fn msg(topic: &'static str, qos: QoS) -> Message {
    Arc::new(AppMessage::new(Publish {
        qos,
        topic: topic.into(),
        payload: Bytes::from_static(b"x"),
        ..Default::default()
    }))
}

fn pump_all(s: &mut [Shard]) {
    for _ in 0..4 {
        for sh in s.iter_mut() {
            sh.flush();
        }
        for sh in s.iter_mut() {
            sh.pump(1024);
        }
    }
}

#[test]
fn shared_messages_go_to_a_connected_member_on_another_shard_first() {
    let mut s = shards(2);
    let a = member(&mut s[0], "a", "$share/g/t", QoS::AtLeastOnce, None);
    let b = member(&mut s[1], "b", "$share/g/t", QoS::AtLeastOnce, None);
    // a goes offline (persistent, parked); b is connected.
    let _ = s[0].sessions[a].session.detach();
    for _ in 0..10 {
        s[0].route(msg("t", QoS::AtLeastOnce));
    }
    pump_all(&mut s);
    let at_a = s[0].sessions[a].session.queued() + s[0].sessions[a].session.inflight();
    let at_b = s[1].sessions[b].session.queued() + s[1].sessions[b].session.inflight();
    assert_eq!(
        at_a, 0,
        "{at_a} of 10 went to the offline member while b ({at_b}) was online"
    );
}

#[test]
fn a_requeued_shared_message_gets_the_new_members_grant() {
    let mut s = shards(1);
    let a = member(&mut s[0], "a", "$share/g/t", QoS::AtLeastOnce, Some(7));
    let b = member(&mut s[0], "b", "$share/g/t", QoS::AtMostOnce, None);
    s[0].route(msg("t", QoS::AtLeastOnce));
    assert_eq!(s[0].sessions[a].session.inflight(), 1);
    let _ = s[0].sessions[a].session.detach();
    let taken = s[0].sessions[a].session.take_shared(true);
    s[0].requeue_shared(taken);
    let mut buf = bytes::BytesMut::new();
    s[0].sessions[b].session.swap_tx(&mut buf);
    let p = crate::protocol::decode(&mut buf, Version::V5, u32::MAX)
        .unwrap()
        .unwrap();
    let Packet::Publish(p) = p else { panic!() };
    assert_eq!(
        p.qos,
        QoS::AtMostOnce,
        "b subscribed at QoS 0, got {:?}",
        p.qos
    );
    assert!(
        p.properties.subscription_identifiers.is_empty(),
        "b got a's id {:?}",
        p.properties.subscription_identifiers
    );
}

#[test]
fn a_session_parked_by_a_closing_handoff_still_expires() {
    let mut s = shards(1);
    let watcher = member(&mut s[0], "w", "will/t", QoS::AtMostOnce, None);
    let mut sess = Box::new(Session::new(Str::from("c"), s[0].limits.clone()));
    let c = v5("c", |c| {
        c.properties.session_expiry_interval = Some(5);
        let mut wp = Properties::default();
        wp.will_delay_interval = Some(2);
        c.will = Some(Will {
            topic: "will/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: wp,
        });
    });
    sess.attach(&c);
    assert!(sess.detach().is_none()); // the will waits out its delay
    let conn = Rc::new(ConnShared::new(77, -1, 0, 10));
    conn.close();
    s[0].pending.insert(
        77,
        Pending {
            conn,
            client_id: Str::from("c"),
            superseded_by: None,
        },
    );
    s[0].on_handoff(77, Some(sess), None);
    assert!(s[0].has_session(&Str::from("c")));
    s[0].now = 1000;
    s[0].run_timers(1000);
    let mut buf = bytes::BytesMut::new();
    s[0].sessions[watcher].session.swap_tx(&mut buf);
    assert!(!buf.is_empty(), "the delayed will was never published");
    assert!(
        !s[0].has_session(&Str::from("c")),
        "the session never expired"
    );
}
