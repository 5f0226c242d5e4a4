//! Protocol edges over real sockets, driven byte-exactly with shardmq's own codec: QoS 2
//! exactly-once across a reconnect, keep alive enforcement, malformed input closing only its
//! own connection, a flood against a subscriber that never reads, and MQTT 5.0 clients.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, Raw, WAIT, connect_packet};
use shardmq::protocol::{
    Packet, PubAck, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, Version,
};

fn subscribe(raw: &mut Raw, filter: &'static str, qos: QoS) {
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(TopicFilter::from(filter), SubscriptionOptions::qos(qos))],
        properties: Default::default(),
    }));
    assert!(matches!(raw.recv(), Some(Packet::SubAck(_))));
}

fn session(b: &Broker, v: Version, id: &str, clean: bool) -> (Raw, bool) {
    let mut raw = Raw::connect(b.addr, v);
    let mut c = connect_packet(v, id, clean, 30);
    if let (Packet::Connect(c), Version::V5, false) = (&mut c, v, clean) {
        c.properties.session_expiry_interval = Some(300);
    }
    raw.send(&c);
    match raw.recv() {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.reason, ReasonCode::SUCCESS);
            (raw, a.session_present)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn publish(topic: &'static str, qos: QoS, id: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        qos,
        topic: topic.into(),
        packet_id: id,
        payload: Bytes::from_static(payload),
        ..Default::default()
    })
}

#[test]
fn qos2_is_delivered_exactly_once_across_a_reconnect() {
    for shards in [1, 3] {
        let b = Broker::start(shards, &[]);
        let (mut sub, _) = session(&b, Version::V3_1_1, "sub", true);
        subscribe(&mut sub, "x2/#", QoS::ExactlyOnce);
        let (mut p, _) = session(&b, Version::V3_1_1, "pub2", false);
        p.send(&publish("x2/t", QoS::ExactlyOnce, 9, b"once"));
        assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 9));
        drop(p); // gone before PUBREL
        let (mut p, present) = session(&b, Version::V3_1_1, "pub2", false);
        assert!(present);
        // The client retransmits the PUBLISH with DUP, then releases it.
        let mut again = publish("x2/t", QoS::ExactlyOnce, 9, b"once");
        if let Packet::Publish(x) = &mut again {
            x.dup = true;
        }
        p.send(&again);
        assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 9));
        p.send(&Packet::PubRel(PubAck::new(9)));
        assert!(matches!(p.recv(), Some(Packet::PubComp(a)) if a.packet_id == 9));
        // The subscriber got it once (QoS 2 flow on its side too).
        let got = sub.recv();
        let Some(Packet::Publish(m)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(m.payload.as_ref(), b"once");
        sub.send(&Packet::PubRec(PubAck::new(m.packet_id)));
        assert!(matches!(sub.recv(), Some(Packet::PubRel(_))));
        sub.send(&Packet::PubComp(PubAck::new(m.packet_id)));
        sub.stream
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let mut buf = [0u8; 64];
        let r = std::io::Read::read(&mut sub.stream, &mut buf);
        assert!(r.is_err(), "no second copy: {r:?}");
    }
}

#[test]
fn inflight_messages_are_resent_with_dup_on_reconnect() {
    let b = Broker::start(3, &[]);
    let (mut s, _) = session(&b, Version::V3_1_1, "dupper", false);
    subscribe(&mut s, "dup/t", QoS::AtLeastOnce);
    let (mut p, _) = session(&b, Version::V3_1_1, "p", true);
    p.send(&publish("dup/t", QoS::AtLeastOnce, 1, b"m"));
    assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
    let Some(Packet::Publish(first)) = s.recv() else {
        panic!()
    };
    assert!(!first.dup);
    drop(s); // never acknowledged
    let (mut s, present) = session(&b, Version::V3_1_1, "dupper", false);
    assert!(present);
    let Some(Packet::Publish(again)) = s.recv() else {
        panic!()
    };
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(again.payload, first.payload);
}

#[test]
fn a_silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let b = Broker::start(1, &[]);
    let mut raw = Raw::connect(b.addr, Version::V3_1_1);
    raw.send(&connect_packet(Version::V3_1_1, "sleepy", true, 1));
    assert!(matches!(raw.recv(), Some(Packet::ConnAck(_))));
    let start = Instant::now();
    assert!(raw.expect_closed().is_empty());
    // 1.5 s grace, checked by a one-second wheel: closed after at least 1 s, well before WAIT.
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[test]
fn a_connection_that_never_sends_connect_is_closed() {
    let b = Broker::start(1, &["--config", "/dev/null"]);
    let mut raw = Raw::connect(b.addr, Version::V3_1_1);
    // The default connect timeout is 10 s, within WAIT only barely; just check nothing is
    // sent and the broker still serves others meanwhile.
    let (_other, _) = session(&b, Version::V3_1_1, "other", true);
    raw.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert!(std::io::Read::read(&mut raw.stream, &mut buf).is_err());
}

#[test]
fn malformed_input_closes_only_that_connection() {
    for shards in [1, 3] {
        let b = Broker::start(shards, &[]);
        let (mut good, _) = session(&b, Version::V3_1_1, "good", true);
        subscribe(&mut good, "ok", QoS::AtMostOnce);
        let cases: Vec<Vec<u8>> = vec![
            vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x7f], // varint longer than 4 bytes
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),       // not MQTT at all
            vec![0x30, 0x02, 0x00, 0x00],             // PUBLISH before CONNECT
        ];
        for bytes in cases {
            let mut bad = Raw::connect(b.addr, Version::V3_1_1);
            bad.send_bytes(&bytes);
            bad.expect_closed();
        }
        // After CONNECT: a reserved flag bit set on SUBSCRIBE [MQTT-3.8.1-1].
        let (mut bad, _) = session(&b, Version::V3_1_1, "bad", true);
        bad.send_bytes(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00]);
        bad.expect_closed();
        // A 5.0 client gets DISCONNECT with the reason before the close.
        let (mut bad5, _) = session(&b, Version::V5, "bad5", true);
        bad5.send_bytes(&[0x30, 0x04, 0x00, 0x01, b'#', 0x00]); // wildcard in a topic name
        let seen = bad5.expect_closed();
        assert!(
            matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::MALFORMED_PACKET),
            "{seen:?}"
        );
        // The good client is still served.
        let (mut p, _) = session(&b, Version::V3_1_1, "p", true);
        p.send(&publish("ok", QoS::AtMostOnce, 0, b"still here"));
        assert!(
            matches!(good.recv(), Some(Packet::Publish(m)) if m.payload.as_ref() == b"still here")
        );
    }
}

#[test]
fn mqtt5_clients_connect_publish_and_subscribe() {
    let b = Broker::start(3, &[]);
    let (mut s, _) = session(&b, Version::V5, "v5sub", true);
    subscribe(&mut s, "v5/#", QoS::AtLeastOnce);
    let (mut p, _) = session(&b, Version::V5, "v5pub", true);
    p.send(&publish("v5/a", QoS::AtLeastOnce, 3, b"five"));
    assert!(matches!(p.recv(), Some(Packet::PubAck(a)) if a.packet_id == 3));
    assert!(matches!(s.recv(), Some(Packet::Publish(m)) if m.payload.as_ref() == b"five"));
    // A 3.1.1 publisher reaches the 5.0 subscriber too.
    let (mut p3, _) = session(&b, Version::V3_1_1, "v3pub", true);
    p3.send(&publish("v5/b", QoS::AtMostOnce, 0, b"three"));
    assert!(matches!(s.recv(), Some(Packet::Publish(m)) if m.payload.as_ref() == b"three"));
    // Empty client id: the broker assigns one and says which.
    let mut raw = Raw::connect(b.addr, Version::V5);
    raw.send(&connect_packet(Version::V5, "", true, 30));
    let Some(Packet::ConnAck(a)) = raw.recv() else {
        panic!()
    };
    assert!(a.properties.assigned_client_identifier.is_some());
}

#[test]
fn empty_client_id_rules_for_3_1_1() {
    let b = Broker::start(1, &[]);
    let mut raw = Raw::connect(b.addr, Version::V3_1_1);
    raw.send(&connect_packet(Version::V3_1_1, "", true, 30));
    assert!(matches!(raw.recv(), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::SUCCESS));
    let mut raw = Raw::connect(b.addr, Version::V3_1_1);
    raw.send(&connect_packet(Version::V3_1_1, "", false, 30));
    let seen = raw.expect_closed();
    // 3.1.1 return code 0x02, identifier rejected [MQTT-3.1.3-8].
    assert!(
        matches!(&seen[..], [Packet::ConnAck(a)] if a.reason.to_v3_connack() == 2),
        "{seen:?}"
    );
}

#[test]
fn a_flood_to_a_subscriber_that_never_reads_stays_bounded() {
    let b = Broker::start(2, &[]);
    // The stalled subscriber: subscribes, then never reads again.
    let (mut stalled, _) = session(&b, Version::V3_1_1, "stalled", true);
    subscribe(&mut stalled, "flood/#", QoS::AtLeastOnce);
    let base = b.rss_kib();
    // 200 MB of QoS 0 and QoS 1 traffic from one publisher.
    let mut publisher = TcpStream::connect(b.addr).unwrap();
    publisher.set_nodelay(true).unwrap();
    let mut frame = bytes::BytesMut::new();
    connect_packet(Version::V3_1_1, "flooder", true, 0)
        .encode(Version::V3_1_1, &mut frame)
        .unwrap();
    publisher.write_all(&frame).unwrap();
    let payload = Bytes::from(vec![b'x'; 16 * 1024]);
    let mut batch = bytes::BytesMut::new();
    for i in 0..64u16 {
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        Packet::Publish(Publish {
            qos,
            topic: "flood/t".into(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { i + 1 },
            payload: payload.clone(),
            ..Default::default()
        })
        .encode(Version::V3_1_1, &mut batch)
        .unwrap();
    }
    // Drain the publisher's acknowledgements on another thread so it never stalls itself.
    let mut acks = publisher.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut sink = [0u8; 65536];
        while std::io::Read::read(&mut acks, &mut sink).is_ok_and(|n| n > 0) {}
    });
    for _ in 0..200 {
        publisher.write_all(&batch).unwrap();
    }
    // A third client still gets service, promptly.
    let (mut s, _) = session(&b, Version::V3_1_1, "third", true);
    subscribe(&mut s, "side", QoS::AtMostOnce);
    let (mut p, _) = session(&b, Version::V3_1_1, "side-pub", true);
    p.send(&publish("side", QoS::AtMostOnce, 0, b"served"));
    assert!(matches!(s.recv(), Some(Packet::Publish(m)) if m.payload.as_ref() == b"served"));
    // Bounded: the stalled session holds at most its write buffer (4 MiB), its inflight
    // window and its queue (1000 messages / 16 MiB); nowhere near the 200 MB sent.
    let grown = b.rss_kib().saturating_sub(base);
    assert!(grown < 96 * 1024, "broker grew by {grown} KiB");
    drop(stalled.stream);
    let _ = WAIT;
}

#[test]
fn sigterm_tells_v5_clients_and_exits_zero() {
    for shards in [1, 3] {
        let mut b = Broker::start(shards, &[]);
        let mut v5: Vec<Raw> = (0..4)
            .map(|i| session(&b, Version::V5, &format!("stay{i}"), true).0)
            .collect();
        let (mut v3, _) = session(&b, Version::V3_1_1, "old", true);
        let pid = b.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        for raw in &mut v5 {
            let seen = raw.expect_closed();
            assert!(
                matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SERVER_SHUTTING_DOWN),
                "{seen:?}"
            );
        }
        assert!(
            v3.expect_closed().is_empty(),
            "3.1.1 has no server DISCONNECT"
        );
        let deadline = Instant::now() + WAIT;
        let code = loop {
            if let Some(s) = b.child.try_wait().unwrap() {
                break s.code();
            }
            assert!(Instant::now() < deadline, "broker did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(code, Some(0));
    }
}

/// Runs the SCRAM-SHA-256 exchange (§4.12) for `user`/`password` on a fresh v5 connection;
/// returns the connection and the CONNACK reason.
fn scram_connect(b: &Broker, user: &str, password: &str) -> (Raw, ReasonCode) {
    use shardmq::auth::ScramClient;
    use shardmq::protocol::{Auth, Str};
    let mut raw = Raw::connect(b.addr, Version::V5);
    let client = ScramClient::new(user, password).unwrap();
    let mut c = connect_packet(Version::V5, &format!("scram-{user}"), true, 30);
    if let Packet::Connect(c) = &mut c {
        c.properties.authentication_method = Some(Str::from("SCRAM-SHA-256"));
        c.properties.authentication_data = Some(Bytes::from(client.client_first()));
    }
    raw.send(&c);
    let server_first = match raw.recv() {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason, ReasonCode::CONTINUE_AUTHENTICATION);
            a.properties.authentication_data.clone().unwrap()
        }
        Some(Packet::ConnAck(a)) => return (raw, a.reason),
        other => panic!("{other:?}"),
    };
    let (fin, client_final) = client.server_first(&server_first).unwrap();
    let mut auth = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Default::default(),
    };
    auth.properties.authentication_method = Some(Str::from("SCRAM-SHA-256"));
    auth.properties.authentication_data = Some(Bytes::from(client_final));
    raw.send(&Packet::Auth(auth));
    match raw.recv() {
        Some(Packet::ConnAck(a)) => {
            if a.reason == ReasonCode::SUCCESS {
                let v = a.properties.authentication_data.clone().unwrap();
                fin.server_final(&v)
                    .expect("the server proves it knows the password");
                assert_eq!(
                    a.properties
                        .authentication_method
                        .as_ref()
                        .unwrap()
                        .as_str(),
                    "SCRAM-SHA-256"
                );
            }
            (raw, a.reason)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn scram_sha_256_enhanced_authentication() {
    let dir = std::env::temp_dir().join(format!("shardmq-scram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cred = std::process::Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["scram-credential", "alice"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"wonderland\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(cred.status.success());
    let creds = dir.join("scram");
    std::fs::write(&creds, &cred.stdout).unwrap();
    let config = dir.join("shardmq.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nscram_credentials = {:?}\n",
            creds.to_str().unwrap()
        ),
    )
    .unwrap();
    for shards in [1, 3] {
        let b = Broker::start(shards, &["--config", config.to_str().unwrap()]);
        let (mut ok, reason) = scram_connect(&b, "alice", "wonderland");
        assert_eq!(reason, ReasonCode::SUCCESS);
        subscribe(&mut ok, "auth/t", QoS::AtMostOnce);
        let (_, reason) = scram_connect(&b, "alice", "looking-glass");
        assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
        let (_, reason) = scram_connect(&b, "mallory", "x");
        assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
        // A method the broker does not offer.
        let mut raw = Raw::connect(b.addr, Version::V5);
        let mut c = connect_packet(Version::V5, "other", true, 30);
        if let Packet::Connect(c) = &mut c {
            c.properties.authentication_method = Some("KERBEROS".into());
        }
        raw.send(&c);
        assert!(matches!(raw.recv(),
            Some(Packet::ConnAck(a)) if a.reason == ReasonCode::BAD_AUTHENTICATION_METHOD));
        // The authenticated client still works.
        let (mut p, _) = session(&b, Version::V5, "auth-pub", true);
        p.send(&publish("auth/t", QoS::AtMostOnce, 0, b"hi"));
        assert!(matches!(ok.recv(), Some(Packet::Publish(m)) if m.payload.as_ref() == b"hi"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `limits.max_publish_rate`: a client flooding QoS 1 PUBLISHes is held to its rate (its
/// socket is not read meanwhile), while another client publishing within the rate is served
/// at once, not slowed down by the first.
#[test]
fn a_client_over_its_publish_rate_is_throttled_and_the_others_are_not() {
    let dir = common::temp_dir("throttle");
    let config = dir.join("shardmq.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_publish_rate = 400\npublish_burst = 100\n",
    )
    .unwrap();
    let b = Broker::start(1, &["--config", config.to_str().unwrap()]);
    let addr = b.addr;
    let flood = std::thread::spawn(move || {
        let mut raw = Raw::connect(addr, Version::V3_1_1);
        raw.send(&connect_packet(Version::V3_1_1, "flooder", true, 30));
        assert!(matches!(raw.recv(), Some(Packet::ConnAck(_))));
        let started = Instant::now();
        // 900 PUBLISHes in windows of 50: 100 pass as the burst, 800 more need 2 s at 400/s.
        for window in 0..18u16 {
            for i in 0..50u16 {
                raw.send(&Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    topic: "flood".into(),
                    packet_id: window * 50 + i + 1,
                    payload: Bytes::from_static(b"x"),
                    ..Default::default()
                }));
            }
            for _ in 0..50 {
                assert!(matches!(raw.recv(), Some(Packet::PubAck(_))));
            }
        }
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile a client well within the rate: 20 messages, one at a time.
    let mut calm = Raw::connect(addr, Version::V3_1_1);
    calm.send(&connect_packet(Version::V3_1_1, "calm", true, 30));
    assert!(matches!(calm.recv(), Some(Packet::ConnAck(_))));
    for id in 1..=20 {
        calm.send(&Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: "calm".into(),
            packet_id: id,
            payload: Bytes::from_static(b"y"),
            ..Default::default()
        }));
        assert!(matches!(calm.recv(), Some(Packet::PubAck(a)) if a.packet_id == id));
    }
    assert!(
        !flood.is_finished(),
        "the calm client finished while the flood was still held back"
    );
    let took = flood.join().unwrap();
    // A lower bound only (a slow machine makes it longer, never shorter). The broker reads
    // a window, answers it, then waits out the debt, so the last window's wait (50 / 400 s)
    // comes after its PUBACKs: (900 - 100 - 50) / 400 = 1.875 s.
    assert!(
        took >= Duration::from_millis(1850),
        "the flood took {took:?}"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that connects and sends CONNECT: whether it got a CONNACK (or was closed).
fn connects(addr: std::net::SocketAddr, id: &str) -> Option<Raw> {
    let mut raw = Raw::connect(addr, Version::V3_1_1);
    if !raw.try_send(&connect_packet(Version::V3_1_1, id, true, 30)) {
        return None;
    }
    matches!(raw.try_recv(), Some(Packet::ConnAck(_))).then_some(raw)
}

/// `limits.max_connections_per_shard` and `max_connect_rate_per_ip` close the excess
/// connections at accept; the broker goes on serving the others.
#[test]
fn connection_limits_close_the_excess_at_accept() {
    let dir = common::temp_dir("conn-limits");
    let config = dir.join("per-shard.toml");
    std::fs::write(&config, "[limits]\nmax_connections_per_shard = 3\n").unwrap();
    let b = Broker::start(1, &["--config", config.to_str().unwrap()]);
    let held: Vec<Raw> = (0..3)
        .map(|i| connects(b.addr, &format!("held-{i}")).expect("under the limit"))
        .collect();
    assert!(connects(b.addr, "fourth").is_none(), "the fourth is closed");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert!(connects(b.addr, "fourth").is_some(), "room again");
    drop(b);

    std::fs::write(&config, "[limits]\nmax_connect_rate_per_ip = 5\n").unwrap();
    let b = Broker::start(1, &["--config", config.to_str().unwrap()]);
    let started = Instant::now();
    let got: Vec<bool> = (0..12)
        .map(|i| connects(b.addr, &format!("rapid-{i}")).is_some())
        .collect();
    let took = started.elapsed();
    let admitted = got.iter().filter(|&&ok| ok).count();
    // 5 at once, then 5 a second: a bound that a slow machine only loosens.
    let allowed = 5 + (5.0 * took.as_secs_f64()).ceil() as usize;
    assert!(
        admitted >= 5 && admitted <= allowed,
        "{admitted} of 12 in {took:?}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert!(connects(b.addr, "later").is_some(), "the rate refills");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
