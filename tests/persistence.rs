//! Persistence over real restarts: retained messages survive a graceful stop and `kill -9`,
//! expire while the broker is down, and a damaged store never stops the broker from
//! starting (issue 6, first part: retained messages).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Broker, Raw, WAIT, connect_packet, temp_dir};
use shardmq::protocol::{
    Packet, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
    Version,
};

fn start(shards: usize, dir: &Path) -> Broker {
    Broker::start(shards, &["--data-dir", dir.to_str().unwrap()])
}

fn client(b: &Broker, id: &str) -> Raw {
    let mut raw = Raw::connect(b.addr, Version::V5);
    raw.send(&connect_packet(Version::V5, id, true, 30));
    assert!(matches!(raw.recv(), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::SUCCESS));
    raw
}

/// Publishes a retained QoS 1 message (expiring after `expiry` seconds if given) and waits
/// for its PUBACK.
fn retain(raw: &mut Raw, topic: &str, payload: &[u8], expiry: Option<u32>, id: u16) {
    let mut p = Publish {
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: TopicName::new(Bytes::copy_from_slice(topic.as_bytes())).unwrap(),
        packet_id: id,
        payload: Bytes::copy_from_slice(payload),
        ..Default::default()
    };
    p.properties.message_expiry_interval = expiry;
    p.properties.content_type = Some("text/plain".into());
    raw.send(&Packet::Publish(p));
    assert!(matches!(raw.recv(), Some(Packet::PubAck(a)) if a.packet_id == id));
}

/// Subscribes to `#` and collects the retained messages it gets, sorted by topic.
fn retained(b: &Broker, id: &str) -> Vec<(String, Vec<u8>, Publish)> {
    let mut raw = client(b, id);
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            TopicFilter::from("#"),
            SubscriptionOptions::qos(QoS::AtMostOnce),
        )],
        properties: Default::default(),
    }));
    assert!(matches!(raw.recv(), Some(Packet::SubAck(_))));
    // At QoS 0 (no window), then a PINGRESP: everything retained came before it.
    raw.send(&Packet::PingReq);
    let mut got = Vec::new();
    loop {
        match raw.recv() {
            Some(Packet::Publish(p)) => {
                assert!(p.retain);
                got.push((p.topic.as_str().to_string(), p.payload.to_vec(), p));
            }
            Some(Packet::PingResp) => break,
            other => panic!("{other:?}"),
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    got
}

fn topics(got: &[(String, Vec<u8>, Publish)]) -> Vec<&str> {
    got.iter().map(|(t, _, _)| t.as_str()).collect()
}

fn sigterm_and_wait(b: &mut Broker) {
    let pid = b.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + WAIT;
    while b.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "broker did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn retained_messages_survive_a_restart_and_expire_while_down() {
    for shards in [1, 3] {
        let dir = temp_dir("persist");
        let mut b = start(shards, &dir);
        let mut p = client(&b, "publisher");
        retain(&mut p, "plant/1/temp", b"21.5", None, 1);
        retain(&mut p, "plant/2/temp", b"19.0", None, 2);
        retain(&mut p, "plant/3/temp", b"gone", None, 3);
        retain(&mut p, "plant/3/temp", b"", None, 4); // deleted
        retain(&mut p, "plant/4/temp", b"brief", Some(1), 5);
        retain(&mut p, "plant/5/temp", b"long", Some(3600), 6);
        retain(&mut p, "plant/1/temp", b"22.0", None, 7); // replaced
        drop(p);
        sigterm_and_wait(&mut b);
        drop(b);
        // plant/4 expires while the broker is down.
        std::thread::sleep(Duration::from_millis(1500));
        let b = start(shards, &dir);
        let got = retained(&b, "reader");
        assert_eq!(
            topics(&got),
            ["plant/1/temp", "plant/2/temp", "plant/5/temp"],
            "{shards} shards"
        );
        assert_eq!(got[0].1, b"22.0");
        let long = &got[2].2;
        assert_eq!(
            long.properties.content_type.as_ref().unwrap().as_str(),
            "text/plain"
        );
        let left = long.properties.message_expiry_interval.unwrap();
        assert!(left <= 3600 && left > 0, "remaining expiry {left}");
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn retained_messages_survive_kill_9() {
    let dir = temp_dir("persist-kill");
    let mut b = start(2, &dir);
    let mut p = client(&b, "publisher");
    for i in 0..50u16 {
        retain(
            &mut p,
            &format!("k/{i}"),
            format!("v{i}").as_bytes(),
            None,
            i + 1,
        );
    }
    // relaxed durability: acknowledged writes reach the OS within the store thread's next
    // batch; give it that moment, then kill without any chance to flush.
    std::thread::sleep(Duration::from_millis(500));
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    drop(b);
    let b = start(2, &dir);
    let got = retained(&b, "reader");
    assert_eq!(got.len(), 50);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_store_does_not_stop_the_broker() {
    // A torn journal tail: the broker starts, keeps what is intact, and serves.
    let dir = temp_dir("persist-torn");
    let mut b = start(1, &dir);
    let mut p = client(&b, "publisher");
    for i in 0..20u16 {
        retain(&mut p, &format!("t/{i}"), &[b'x'; 200], None, i + 1);
    }
    drop(p);
    // Killed: the writes are only in the journal, whose tail is then torn.
    std::thread::sleep(Duration::from_millis(500));
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    drop(b);
    // The journal is preallocated: tear the end of what was written (the last batch
    // half-written, as a crash during the write would leave it).
    let journal = dir.join("journals").join("0");
    let mut bytes = std::fs::read(&journal).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    for b in &mut bytes[end.saturating_sub(100)..end] {
        *b = 0;
    }
    std::fs::write(&journal, &bytes).unwrap();
    let b = start(1, &dir);
    let got = retained(&b, "reader");
    assert!(
        got.len() < 20,
        "the torn tail is cut off ({} kept)",
        got.len()
    );
    assert!(
        got.iter().all(|(_, v, _)| v == &[b'x'; 200]),
        "what is kept is intact"
    );
    let mut p = client(&b, "publisher2");
    retain(&mut p, "t/new", b"after", None, 1);
    drop(b);
    // Garbage in every file: moved aside with an error line, the broker starts empty.
    for entry in walk(&dir) {
        std::fs::write(entry, b"not a store").unwrap();
    }
    let b = start(1, &dir);
    let got = retained(&b, "reader");
    assert!(got.is_empty());
    let moved = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with(&format!(
                "{}.corrupt-",
                dir.file_name().unwrap().to_string_lossy()
            ))
        })
        .map(|e| e.path())
        .collect::<Vec<_>>();
    assert_eq!(moved.len(), 1, "the damaged store is kept aside");
    drop(b);
    for m in moved {
        let _ = std::fs::remove_dir_all(m);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

#[test]
fn no_persistence_keeps_nothing() {
    let dir = temp_dir("persist-off");
    let b = Broker::start(
        1,
        &["--no-persistence", "--data-dir", dir.to_str().unwrap()],
    );
    let mut p = client(&b, "publisher");
    retain(&mut p, "x", b"y", None, 1);
    drop(b);
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing written"
    );
    let b = start(1, &dir);
    assert!(retained(&b, "reader").is_empty());
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

fn kill(b: &mut Broker, hard: bool) {
    if hard {
        // relaxed durability: what was acknowledged reaches the OS within the store
        // thread's next batch; give it that moment.
        std::thread::sleep(Duration::from_millis(500));
        b.child.kill().unwrap();
        b.child.wait().unwrap();
    } else {
        sigterm_and_wait(b);
    }
}

/// A persistent session (3.1.1 Clean Session 0, or 5.0 Session Expiry 300).
fn persistent(b: &Broker, v: Version, id: &str) -> (Raw, bool) {
    let mut raw = Raw::connect(b.addr, v);
    let mut c = connect_packet(v, id, false, 30);
    if let (Packet::Connect(c), Version::V5) = (&mut c, v) {
        c.properties.session_expiry_interval = Some(300);
    }
    raw.send(&c);
    match raw.recv() {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.reason, ReasonCode::SUCCESS);
            (raw, a.session_present)
        }
        other => panic!("{other:?}"),
    }
}

/// A persistent session subscribed to `filter` at `qos` (its SUBACK received).
fn subscribed(b: &Broker, v: Version, id: &str, filter: &'static str, qos: QoS) -> Raw {
    let (mut s, _) = persistent(b, v, id);
    s.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(TopicFilter::from(filter), SubscriptionOptions::qos(qos))],
        properties: Default::default(),
    }));
    assert!(matches!(s.recv(), Some(Packet::SubAck(_))));
    s
}

/// Receives `n` PUBLISHes, completing each one's QoS flow; returns their payloads.
fn receive(raw: &mut Raw, n: usize) -> Vec<Vec<u8>> {
    use shardmq::protocol::PubAck;
    let mut got = Vec::new();
    while got.len() < n {
        match raw.recv() {
            Some(Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => raw.send(&Packet::PubAck(PubAck::new(p.packet_id))),
                    QoS::ExactlyOnce => raw.send(&Packet::PubRec(PubAck::new(p.packet_id))),
                }
                got.push(p.payload.to_vec());
            }
            Some(Packet::PubRel(r)) => raw.send(&Packet::PubComp(PubAck::new(r.packet_id))),
            other => panic!("after {} messages: {other:?}", got.len()),
        }
    }
    got
}

fn publish_numbered(p: &mut Raw, count: u16, qos: QoS, first_id: u16) {
    use shardmq::protocol::PubAck;
    for i in 0..count {
        let id = first_id + i;
        p.send(&Packet::Publish(Publish {
            qos,
            topic: "q/t".into(),
            packet_id: id,
            payload: Bytes::from(format!("{qos:?}-{i}")),
            ..Default::default()
        }));
        match (qos, p.recv()) {
            (QoS::AtLeastOnce, Some(Packet::PubAck(a))) if a.packet_id == id => {}
            (QoS::ExactlyOnce, Some(Packet::PubRec(a))) if a.packet_id == id => {
                p.send(&Packet::PubRel(PubAck::new(id)));
                assert!(matches!(p.recv(), Some(Packet::PubComp(c)) if c.packet_id == id));
            }
            (_, other) => panic!("{other:?}"),
        }
    }
}

#[test]
fn persistent_sessions_and_their_queues_survive_a_restart_and_kill_9() {
    for shards in [1, 3] {
        for hard in [false, true] {
            let dir = temp_dir("persist-sessions");
            let mut b = start(shards, &dir);
            for (v, id, qos) in [
                (Version::V3_1_1, "old-sub", QoS::AtLeastOnce),
                (Version::V5, "new-sub", QoS::ExactlyOnce),
            ] {
                let (mut s, _) = persistent(&b, v, id);
                s.send(&Packet::Subscribe(Subscribe {
                    packet_id: 1,
                    filters: vec![(TopicFilter::from("q/#"), SubscriptionOptions::qos(qos))],
                    properties: Default::default(),
                }));
                assert!(matches!(s.recv(), Some(Packet::SubAck(_))));
            }
            // Both subscribers are offline now (their sockets closed above).
            std::thread::sleep(Duration::from_millis(200));
            let mut p = client(&b, "publisher");
            publish_numbered(&mut p, 20, QoS::AtLeastOnce, 1);
            publish_numbered(&mut p, 5, QoS::ExactlyOnce, 100);
            drop(p);
            kill(&mut b, hard);
            drop(b);
            let b = start(shards, &dir);
            let mut expected: Vec<Vec<u8>> = (0..20)
                .map(|i| format!("AtLeastOnce-{i}").into_bytes())
                .chain((0..5).map(|i| format!("ExactlyOnce-{i}").into_bytes()))
                .collect();
            expected.sort();
            for (v, id) in [(Version::V3_1_1, "old-sub"), (Version::V5, "new-sub")] {
                let (mut s, present) = persistent(&b, v, id);
                assert!(
                    present,
                    "{id}: session present after restart ({shards} shards, hard {hard})"
                );
                let mut got = receive(&mut s, 25);
                got.sort();
                assert_eq!(got, expected, "{id}: every acknowledged message, once");
                // The subscription came back too.
                let mut p = client(&b, "publisher2");
                publish_numbered(&mut p, 1, QoS::AtLeastOnce, 500);
                assert_eq!(receive(&mut s, 1), [b"AtLeastOnce-0".to_vec()]);
            }
            drop(b);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[test]
fn a_session_that_expires_while_the_broker_is_down_is_gone_and_its_will_sent() {
    let dir = temp_dir("persist-expiry");
    let mut b = start(2, &dir);
    let mut raw = Raw::connect(b.addr, Version::V5);
    let mut c = connect_packet(Version::V5, "mortal", false, 30);
    if let Packet::Connect(c) = &mut c {
        c.properties.session_expiry_interval = Some(1);
        let mut will = shardmq::protocol::Will {
            topic: "wills/mortal".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
        };
        will.properties.will_delay_interval = Some(600);
        c.will = Some(will);
    }
    raw.send(&c);
    assert!(matches!(raw.recv(), Some(Packet::ConnAck(_))));
    drop(raw); // lost without DISCONNECT: the will waits for the session's end
    std::thread::sleep(Duration::from_millis(300));
    kill(&mut b, false);
    drop(b);
    std::thread::sleep(Duration::from_millis(1500));
    let b = start(2, &dir);
    let (_s, present) = persistent(&b, Version::V5, "mortal");
    assert!(!present, "the session expired while the broker was down");
    let got = retained(&b, "reader");
    assert_eq!(
        topics(&got),
        ["wills/mortal"],
        "its will went out at start-up"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A broker on a fresh data directory with a connected persistent session `live-sub`
/// subscribed to `q/#` at `qos`, and the `n` messages a publisher sent it at that QoS, as
/// the session received them (not acknowledged yet).
fn connected_with(
    shards: usize,
    v: Version,
    qos: QoS,
    n: u16,
) -> (std::path::PathBuf, Broker, Raw, Vec<Publish>) {
    let dir = temp_dir("persist-live");
    let b = start(shards, &dir);
    let mut s = subscribed(&b, v, "live-sub", "q/#", qos);
    let mut p = client(&b, "publisher");
    publish_numbered(&mut p, n, qos, 1);
    let got = (0..n)
        .map(|i| match s.recv() {
            Some(Packet::Publish(m)) => m,
            other => panic!("message {i}: {other:?}"),
        })
        .collect();
    (dir, b, s, got)
}

#[test]
fn a_connected_session_gets_back_what_it_had_not_acknowledged_after_kill_9() {
    use shardmq::protocol::PubAck;
    for shards in [1, 3] {
        let (dir, mut b, mut s, got) =
            connected_with(shards, Version::V3_1_1, QoS::AtLeastOnce, 10);
        let mut unacked = Vec::new();
        for (i, m) in got.into_iter().enumerate() {
            if i < 6 {
                s.send(&Packet::PubAck(PubAck::new(m.packet_id)));
            } else {
                unacked.push(m.payload.to_vec());
            }
        }
        // The PUBACKs are handled before the PINGRESP comes back.
        s.send(&Packet::PingReq);
        assert!(matches!(s.recv(), Some(Packet::PingResp)));
        kill(&mut b, true);
        drop((s, b));
        let b = start(shards, &dir);
        let (mut s, present) = persistent(&b, Version::V3_1_1, "live-sub");
        assert!(present);
        let mut got = receive(&mut s, 4);
        got.sort();
        unacked.sort();
        assert_eq!(got, unacked, "exactly what was not acknowledged comes back");
        s.send(&Packet::PingReq);
        assert!(
            matches!(s.recv(), Some(Packet::PingResp)),
            "and nothing more"
        );
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A small xorshift generator: the kill points vary per run, and the seed is printed so a
/// failing run can be repeated (`SHARDMQ_CRASH_SEED`).
struct Rng(u64);

impl Rng {
    fn from_env_or_time() -> Rng {
        let seed = std::env::var("SHARDMQ_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("kill points from SHARDMQ_CRASH_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Publishes numbered messages (every third at QoS 2, the others at QoS 1) in windows of 16
/// until the connection dies; returns the numbers the broker acknowledged (PUBACK, or
/// PUBREC: from then on the broker owns a QoS 2 message) and how many were sent.
fn publish_until_killed(addr: std::net::SocketAddr, first: u64) -> (Vec<u64>, u64) {
    use shardmq::protocol::PubAck;
    use std::collections::HashMap;
    let mut raw = Raw::connect(addr, Version::V3_1_1);
    let mut acked = Vec::new();
    if !raw.try_send(&connect_packet(Version::V3_1_1, "crash-pub", true, 30)) {
        return (acked, first);
    }
    if !matches!(raw.try_recv(), Some(Packet::ConnAck(_))) {
        return (acked, first);
    }
    let mut n = first;
    loop {
        let mut inflight: HashMap<u16, u64> = HashMap::new();
        let mut releasing = 0usize;
        for _ in 0..16 {
            let id = (n % 60_000 + 1) as u16;
            let qos = if n % 3 == 0 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            let p = Publish {
                qos,
                topic: "crash/t".into(),
                packet_id: id,
                payload: Bytes::from(n.to_string()),
                ..Default::default()
            };
            n += 1;
            if !raw.try_send(&Packet::Publish(p)) {
                return (acked, n);
            }
            inflight.insert(id, n - 1);
        }
        while !inflight.is_empty() || releasing > 0 {
            match raw.try_recv() {
                Some(Packet::PubAck(a)) => acked.extend(inflight.remove(&a.packet_id)),
                Some(Packet::PubRec(a)) => {
                    acked.extend(inflight.remove(&a.packet_id));
                    releasing += 1;
                    if !raw.try_send(&Packet::PubRel(PubAck::new(a.packet_id))) {
                        return (acked, n);
                    }
                }
                Some(Packet::PubComp(_)) => releasing -= 1,
                Some(other) => panic!("publisher got {other:?}"),
                None => return (acked, n),
            }
        }
    }
}

/// Takes everything a persistent session has queued (until 2 s of silence), completing each
/// message's QoS flow; returns the payloads as numbers, in arrival order.
fn drain(raw: &mut Raw) -> Vec<u64> {
    use shardmq::protocol::PubAck;
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut got = Vec::new();
    while let Some(p) = raw.try_recv() {
        match p {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => raw.send(&Packet::PubAck(PubAck::new(p.packet_id))),
                    QoS::ExactlyOnce => raw.send(&Packet::PubRec(PubAck::new(p.packet_id))),
                }
                if p.topic.as_str() == "crash/t" {
                    got.push(std::str::from_utf8(&p.payload).unwrap().parse().unwrap());
                }
            }
            Packet::PubRel(r) => raw.send(&Packet::PubComp(PubAck::new(r.packet_id))),
            other => panic!("subscriber got {other:?}"),
        }
    }
    got
}

/// Issue 6: with `durability = "sync"`, a publisher streams numbered QoS 1 and QoS 2
/// messages to a topic whose only subscribers are offline persistent sessions (one on each
/// shard's directory partition, so deliveries cross shards), and the broker is killed with
/// SIGKILL at a random point, restarted, and killed again, five times. Afterwards every
/// message the publisher got a PUBACK / PUBREC for is delivered (QoS 2 exactly once), the
/// retained message and the subscriptions are intact.
#[test]
fn every_acknowledged_message_survives_kill_9_at_random_points() {
    use std::collections::{BTreeMap, BTreeSet};
    let shards = 2;
    let dir = temp_dir("persist-crash");
    // Room for everything the rounds publish (1000 queued messages per session by default).
    let config = dir.with_extension("toml");
    std::fs::write(&config, "[limits]\nmax_queued_messages = 1000000\n").unwrap();
    let args = [
        "--data-dir",
        dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--durability",
        "sync",
    ];
    // One subscriber per directory partition: after the first restart each session lives
    // on its own shard, so whichever shard the publisher lands on, one delivery crosses.
    let mut ids: Vec<(String, QoS)> = Vec::new();
    for (home, qos) in [(0, QoS::AtLeastOnce), (1, QoS::ExactlyOnce)] {
        let id = (0..)
            .map(|i| format!("crash-sub-{i}"))
            .find(|id| {
                let id = shardmq::protocol::Str::new(Bytes::from(id.clone())).unwrap();
                shardmq::shard::state::directory_shard(&id, shards) == home
            })
            .unwrap();
        ids.push((id, qos));
    }
    let b = Broker::start(shards, &args);
    for (id, qos) in &ids {
        drop(subscribed(&b, Version::V3_1_1, id, "crash/#", *qos));
    }
    let mut c = client(&b, "crash-retainer");
    retain(&mut c, "crash/retained", b"kept", None, 1);
    drop(c);
    // The subscribers went offline when their sockets closed above.
    std::thread::sleep(Duration::from_millis(200));
    let mut b = Some(b);
    let mut rng = Rng::from_env_or_time();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut sent = 0u64;
    for round in 0..5 {
        let mut broker = b.take().unwrap_or_else(|| Broker::start(shards, &args));
        let addr = broker.addr;
        let first = sent;
        let publisher = std::thread::spawn(move || publish_until_killed(addr, first));
        let after = Duration::from_millis(50 + rng.below(450));
        std::thread::sleep(after);
        broker.child.kill().unwrap();
        broker.child.wait().unwrap();
        let (got, next) = publisher.join().unwrap();
        eprintln!(
            "round {round}: killed after {after:?}; {} of {} messages acknowledged",
            got.len(),
            next - first
        );
        acked.extend(got);
        sent = next;
        drop(broker);
    }
    assert!(
        acked.len() > 50,
        "the publisher got going ({} acked)",
        acked.len()
    );
    let b = Broker::start(shards, &args);
    assert_eq!(
        topics(&retained(&b, "crash-reader")),
        ["crash/retained"],
        "the retained message is intact"
    );
    for (id, qos) in &ids {
        let (mut s, present) = persistent(&b, Version::V3_1_1, id);
        assert!(present, "{id}: its session survived");
        let got = drain(&mut s);
        let mut times: BTreeMap<u64, usize> = BTreeMap::new();
        for n in &got {
            assert!(*n < sent, "{id}: got {n}, which was never sent");
            *times.entry(*n).or_default() += 1;
        }
        let lost: Vec<&u64> = acked.iter().filter(|n| !times.contains_key(n)).collect();
        assert!(
            lost.is_empty(),
            "{id}: {} acknowledged messages lost, first {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        if *qos == QoS::ExactlyOnce {
            let twice: Vec<_> = times
                .iter()
                .filter(|(n, k)| *n % 3 == 0 && **k > 1)
                .collect();
            assert!(
                twice.is_empty(),
                "{id}: QoS 2 messages delivered twice: {twice:?}"
            );
        }
        eprintln!(
            "{id}: {} delivered ({} distinct), every one of {} acknowledged among them",
            got.len(),
            times.len(),
            acked.len()
        );
        // The subscription came back too.
        let mut p = client(&b, "crash-pub-2");
        retain(&mut p, "crash/again", b"again", None, 9);
        drop(p);
        let mut s2 = s;
        assert!(matches!(s2.recv(), Some(Packet::Publish(m)) if &m.payload[..] == b"again"));
    }
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
}

/// [MQTT-4.4.0-1] across a crash: a connected persistent session's QoS 2 deliveries in
/// flight come back under their packet identifiers after kill -9: PUBREL for those the client
/// had sent PUBREC for, the PUBLISH again (DUP) for the others, and nothing else.
#[test]
fn qos2_deliveries_in_flight_keep_their_packet_identifiers_across_kill_9() {
    use shardmq::protocol::PubAck;
    for shards in [1, 2] {
        let (dir, mut b, mut s, got) = connected_with(shards, Version::V5, QoS::ExactlyOnce, 4);
        let ids: Vec<(u16, Vec<u8>)> = got
            .into_iter()
            .map(|m| (m.packet_id, m.payload.to_vec()))
            .collect();
        // PUBREC for the first two; PUBCOMP for none.
        for (id, _) in &ids[..2] {
            s.send(&Packet::PubRec(PubAck::new(*id)));
            assert!(matches!(s.recv(), Some(Packet::PubRel(r)) if r.packet_id == *id));
        }
        kill(&mut b, true);
        drop((s, b));
        let b = start(shards, &dir);
        let (mut s, present) = persistent(&b, Version::V5, "live-sub");
        assert!(present);
        for (id, _) in &ids[..2] {
            match s.recv() {
                Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, *id),
                other => panic!("expected PUBREL {id}, got {other:?}"),
            }
        }
        for (id, payload) in &ids[2..] {
            match s.recv() {
                Some(Packet::Publish(m)) => {
                    assert_eq!((m.packet_id, m.dup), (*id, true));
                    assert_eq!(&m.payload[..], &payload[..]);
                }
                other => panic!("expected PUBLISH {id} again, got {other:?}"),
            }
        }
        for (id, _) in &ids[..2] {
            s.send(&Packet::PubComp(PubAck::new(*id)));
        }
        for (id, _) in &ids[2..] {
            s.send(&Packet::PubRec(PubAck::new(*id)));
            assert!(matches!(s.recv(), Some(Packet::PubRel(r)) if r.packet_id == *id));
            s.send(&Packet::PubComp(PubAck::new(*id)));
        }
        s.send(&Packet::PingReq);
        assert!(
            matches!(s.recv(), Some(Packet::PingResp)),
            "and nothing more"
        );
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// [MQTT-4.3.3-10] across a crash: a QoS 2 PUBLISH the broker sent PUBREC for is not
/// delivered again when the publisher, reconnecting after kill -9, sends it again before
/// its PUBREL.
#[test]
fn an_unreleased_incoming_qos2_message_is_not_delivered_twice_after_kill_9() {
    use shardmq::protocol::PubAck;
    let dir = temp_dir("persist-qos2-in");
    let mut b = start(2, &dir);
    drop(subscribed(
        &b,
        Version::V5,
        "q2-reader",
        "q/#",
        QoS::ExactlyOnce,
    ));
    let once = Publish {
        qos: QoS::ExactlyOnce,
        topic: "q/once".into(),
        packet_id: 7,
        payload: Bytes::from_static(b"only once"),
        ..Default::default()
    };
    let (mut p, _) = persistent(&b, Version::V5, "q2-writer");
    p.send(&Packet::Publish(once.clone()));
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 7));
    kill(&mut b, true);
    drop((p, b));
    let b = start(2, &dir);
    let (mut p, present) = persistent(&b, Version::V5, "q2-writer");
    assert!(present);
    p.send(&Packet::Publish(Publish { dup: true, ..once }));
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 7));
    p.send(&Packet::PubRel(PubAck::new(7)));
    assert!(
        matches!(p.recv(), Some(Packet::PubComp(c)) if c.packet_id == 7 && c.reason == ReasonCode::SUCCESS),
        "the identifier was still awaiting its PUBREL"
    );
    let (mut s, _) = persistent(&b, Version::V5, "q2-reader");
    assert_eq!(receive(&mut s, 1), [b"only once".to_vec()]);
    let Some(Packet::PubRel(r)) = s.recv() else {
        panic!("PUBREL for the one delivery")
    };
    s.send(&Packet::PubComp(PubAck::new(r.packet_id)));
    s.send(&Packet::PingReq);
    match s.recv() {
        Some(Packet::PingResp) => {}
        other => panic!("delivered once, then {other:?}"),
    }
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
