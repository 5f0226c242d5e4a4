//! Several nodes through a real `redis-server` on a free loopback port (issue 10): a publish
//! on node A reaches exact and wildcard subscribers on B and C, retained messages are
//! cluster-wide (also for a node that starts later), a shared subscription spreads over the
//! nodes, a client taking over on another node brings its persistent session, and Redis killed
//! and restarted mid-test leaves local traffic alone while cross-node traffic resumes.
//! The same scenarios run again on a three-master Redis Cluster (`redis+cluster://`, sharded
//! pub/sub for the node channels). `scripts/test.sh` installs redis-server (and redis-cli).

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, Raw, WAIT, connect_packet};
use shardmq::protocol::{Packet, PubAck, Publish, QoS, Subscribe, SubscriptionOptions, Version};

/// A redis-server on 127.0.0.1, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server not found: run scripts/test.sh (apt-get install -y redis-server)",
            );
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three redis-server processes in cluster mode (one master each, slots split by
/// `redis-cli --cluster create`), killed on drop.
struct RedisCluster {
    servers: Vec<Redis>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = common::temp_dir("redis-cluster");
        let servers: Vec<Redis> = (0..3)
            .map(|i| {
                let port = free_port();
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .args(["--cluster-port", &free_port().to_string()])
                    .arg("--cluster-config-file")
                    .arg(dir.join(format!("nodes-{i}.conf")))
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server not found: run scripts/test.sh");
                let deadline = Instant::now() + WAIT;
                while TcpStream::connect(("127.0.0.1", port)).is_err() {
                    assert!(Instant::now() < deadline, "redis-server did not start");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Redis { child, port }
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for r in &servers {
            create.arg(format!("127.0.0.1:{}", r.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let (code, out) = common::run_bounded(create, WAIT);
        assert_eq!(code, Some(0), "redis-cli --cluster create failed: {out}");
        // Every node must see the whole slot map before shardmq connects.
        let deadline = Instant::now() + WAIT;
        for r in &servers {
            loop {
                let mut info = Command::new("redis-cli");
                info.args(["-p", &r.port.to_string(), "cluster", "info"]);
                let (_, out) = common::run_bounded(info, WAIT);
                if out.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster did not form: {out}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { servers, dir }
    }
}

impl Backend for RedisCluster {
    /// Two of the three nodes as seeds: the client learns the rest from them.
    fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.servers[0].port, self.servers[1].port
        )
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the nodes share: one Redis, or a Redis Cluster.
trait Backend {
    fn url(&self) -> String;
}

impl Backend for Redis {
    fn url(&self) -> String {
        Redis::url(self)
    }
}

fn node(redis: &impl Backend) -> Broker {
    Broker::start(2, &["--cluster", &redis.url(), "--no-persistence"])
}

fn client(b: &Broker, id: &str) -> Raw {
    let v = Version::V3_1_1;
    let mut r = Raw::connect(b.addr, v);
    r.send(&connect_packet(v, id, true, 30));
    assert!(matches!(r.recv(), Some(Packet::ConnAck(a)) if a.reason.is_success()));
    r
}

fn subscribe(r: &mut Raw, filter: &'static str) {
    r.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(filter.into(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
        properties: Default::default(),
    }));
    assert!(matches!(r.recv(), Some(Packet::SubAck(_))));
}

fn publish(r: &mut Raw, topic: &'static str, payload: String, qos: QoS, retain: bool) {
    let id = if qos == QoS::AtMostOnce { 0 } else { 1 };
    r.send(&Packet::Publish(Publish {
        qos,
        retain,
        topic: topic.into(),
        packet_id: id,
        payload: payload.into_bytes().into(),
        ..Default::default()
    }));
    if qos == QoS::AtLeastOnce {
        assert!(matches!(r.recv(), Some(Packet::PubAck(_))));
    }
}

/// The next PUBLISH payload `r` receives (acknowledged), or `None` within `wait`.
fn next(r: &mut Raw, wait: Duration) -> Option<String> {
    r.stream.set_read_timeout(Some(wait)).unwrap();
    let got = loop {
        match r.try_recv() {
            Some(Packet::Publish(p)) => {
                if p.qos != QoS::AtMostOnce {
                    r.send(&Packet::PubAck(PubAck::new(p.packet_id)));
                }
                break Some(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Some(_) => continue,
            None => break None,
        }
    };
    r.stream.set_read_timeout(Some(WAIT)).unwrap();
    got
}

/// Publishes probes on `from` until every subscriber in `to` got one (the routes crossed
/// Redis), then drains them.
fn until_routed(from: &mut Raw, topic: &'static str, to: &mut [&mut Raw]) {
    let deadline = Instant::now() + WAIT;
    let mut reached = vec![false; to.len()];
    while reached.iter().any(|r| !r) {
        assert!(
            Instant::now() < deadline,
            "routes did not cross Redis: {reached:?}"
        );
        publish(from, topic, "probe".into(), QoS::AtMostOnce, false);
        for (i, r) in to.iter_mut().enumerate() {
            while let Some(m) = next(r, Duration::from_millis(100)) {
                reached[i] |= m == "probe";
            }
        }
    }
}

#[test]
fn a_publish_on_one_node_reaches_exact_and_wildcard_subscribers_on_others() {
    let redis = Redis::start(free_port());
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    publish_reaches_other_nodes(&a, &b, &c);
}

fn publish_reaches_other_nodes(a: &Broker, b: &Broker, c: &Broker) {
    let mut exact = client(b, "exact-on-b");
    subscribe(&mut exact, "fleet/7/state");
    let mut wild = client(c, "wild-on-c");
    subscribe(&mut wild, "fleet/+/state");
    let mut local = client(a, "local-on-a");
    subscribe(&mut local, "fleet/#");
    let mut publisher = client(a, "pub-on-a");
    until_routed(
        &mut publisher,
        "fleet/7/state",
        &mut [&mut exact, &mut wild],
    );
    while next(&mut local, Duration::from_millis(100)).is_some() {}
    for i in 0..20 {
        publish(
            &mut publisher,
            "fleet/7/state",
            format!("m{i}"),
            QoS::AtLeastOnce,
            false,
        );
    }
    for (name, r) in [
        ("exact on B", &mut exact),
        ("wildcard on C", &mut wild),
        ("local on A", &mut local),
    ] {
        let got: Vec<String> = (0..20).filter_map(|_| next(r, WAIT)).collect();
        let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want, "{name}");
    }
    // A topic nobody on B or C wants does not reach them.
    publish(
        &mut publisher,
        "fleet/7/other",
        "no".into(),
        QoS::AtMostOnce,
        false,
    );
    assert_eq!(next(&mut exact, Duration::from_millis(300)), None);
}

#[test]
fn retained_messages_are_cluster_wide() {
    let redis = Redis::start(free_port());
    let (a, c) = (node(&redis), node(&redis));
    retained_crosses(&a, &c);
    // A node started afterwards loads it from Redis.
    let d = node(&redis);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = client(&d, "later-on-d");
        subscribe(&mut s, "cfg/site");
        if next(&mut s, Duration::from_millis(300)).as_deref() == Some("v1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node D did not load the retained message"
        );
    }
}

/// A retained message set on `a` is read by a new subscriber on `c`.
fn retained_crosses(a: &Broker, c: &Broker) {
    let mut publisher = client(a, "retainer");
    publish(
        &mut publisher,
        "cfg/site",
        "v1".into(),
        QoS::AtLeastOnce,
        true,
    );
    // A new subscriber on C gets it (once it crossed Redis).
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = client(c, "late-on-c");
        subscribe(&mut s, "cfg/#");
        if next(&mut s, Duration::from_millis(300)).as_deref() == Some("v1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retained message never reached node C"
        );
    }
}

#[test]
fn redis_restarting_leaves_local_traffic_alone_and_cross_node_traffic_resumes() {
    let port = free_port();
    let mut redis = Redis::start(port);
    let (a, b) = (node(&redis), node(&redis));
    let mut remote = client(&b, "remote-on-b");
    subscribe(&mut remote, "live/#");
    let mut local = client(&a, "local-on-a");
    subscribe(&mut local, "live/#");
    let mut publisher = client(&a, "pub-on-a");
    until_routed(&mut publisher, "live/x", &mut [&mut remote]);
    while next(&mut local, Duration::from_millis(100)).is_some() {}

    drop(redis);
    for i in 0..10 {
        publish(
            &mut publisher,
            "live/x",
            format!("down{i}"),
            QoS::AtLeastOnce,
            false,
        );
    }
    let got: Vec<String> = (0..10).filter_map(|_| next(&mut local, WAIT)).collect();
    assert_eq!(got.len(), 10, "local traffic while Redis is down: {got:?}");

    redis = Redis::start(port);
    // Both nodes reconnect, re-announce and reload their routes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        publish(
            &mut publisher,
            "live/x",
            "back".into(),
            QoS::AtMostOnce,
            false,
        );
        let mut seen = false;
        while let Some(m) = next(&mut remote, Duration::from_millis(200)) {
            seen |= m == "back";
        }
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cross-node traffic did not resume"
        );
    }
    drop(redis);
}

/// GET /metrics on `addr`.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

#[test]
fn a_node_that_dies_has_its_routes_expire() {
    let redis = Redis::start(free_port());
    let dir = common::temp_dir("cluster-ttl");
    let config = dir.join("shardmq.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nredis = {:?}\nheartbeat_secs = 1\nnode_ttl_secs = 2\n",
            redis.url()
        ),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap(), "--no-persistence"];
    let mut a_args = args.to_vec();
    a_args.extend(["--metrics-listen", "127.0.0.1:0"]);
    let a = Broker::start(2, &a_args);
    let line = a.line_containing("serving metrics on http://");
    let metrics: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let mut b = Broker::start(2, &args);
    let mut sub = client(&b, "doomed");
    subscribe(&mut sub, "ttl/#");
    let mut publisher = client(&a, "pub");
    until_routed(&mut publisher, "ttl/x", &mut [&mut sub]);
    assert_eq!(metric(&scrape(metrics), "shardmq_cluster_nodes"), 1.0);
    // SIGKILL: no goodbye, only the missing heartbeats tell.
    b.child.kill().unwrap();
    let _ = b.child.wait();
    let deadline = Instant::now() + WAIT;
    while metric(&scrape(metrics), "shardmq_cluster_nodes") != 0.0 {
        assert!(Instant::now() < deadline, "node B's routes did not expire");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing is forwarded to it any more.
    let before = metric(&scrape(metrics), "shardmq_cluster_forwarded_total");
    publish(
        &mut publisher,
        "ttl/x",
        "after".into(),
        QoS::AtLeastOnce,
        false,
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        metric(&scrape(metrics), "shardmq_cluster_forwarded_total"),
        before
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_client_id_connecting_to_another_node_takes_over() {
    let redis = Redis::start(free_port());
    let (a, b) = (node(&redis), node(&redis));
    let v = Version::V5;
    let mut first = Raw::connect(a.addr, v);
    first.send(&connect_packet(v, "mover", true, 30));
    assert!(matches!(first.recv(), Some(Packet::ConnAck(_))));
    // The claim reaches Redis before the second connection's (both are in order per node,
    // not across nodes): give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let mut second = Raw::connect(b.addr, v);
    second.send(&connect_packet(v, "mover", true, 30));
    assert!(matches!(second.recv(), Some(Packet::ConnAck(_))));
    let seen = first.expect_closed();
    assert!(
        matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == shardmq::protocol::ReasonCode::SESSION_TAKEN_OVER),
        "{seen:?}"
    );
    // The new connection stays.
    second.send(&Packet::PingReq);
    assert!(matches!(second.recv(), Some(Packet::PingResp)));
}

#[test]
fn a_shared_subscription_spreads_over_the_nodes() {
    let redis = Redis::start(free_port());
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    shared_group_spreads(&a, &b, &c);
}

fn shared_group_spreads(a: &Broker, b: &Broker, c: &Broker) {
    let group = "$share/workers/jobs/+";
    let mut members: Vec<(&str, Raw)> = vec![
        ("member on A", client(a, "worker-a")),
        ("member on B", client(b, "worker-b")),
        ("member on C", client(c, "worker-c")),
    ];
    for (_, m) in &mut members {
        subscribe(m, group);
    }
    // A plain subscriber on C gets every message besides; the group still gets each once.
    let mut plain = client(c, "plain-on-c");
    subscribe(&mut plain, "jobs/#");
    let mut publisher = client(a, "pub-on-a");
    // Probes until every member got one: both groups' routes crossed Redis.
    let deadline = Instant::now() + WAIT;
    let mut reached = [false; 3];
    while reached.iter().any(|r| !r) {
        assert!(Instant::now() < deadline, "groups not routed: {reached:?}");
        publish(
            &mut publisher,
            "jobs/1",
            "probe".into(),
            QoS::AtMostOnce,
            false,
        );
        for (i, (_, m)) in members.iter_mut().enumerate() {
            while let Some(p) = next(m, Duration::from_millis(100)) {
                reached[i] |= p == "probe";
            }
        }
    }
    while next(&mut plain, Duration::from_millis(100)).is_some() {}

    let total = 60;
    for i in 0..total {
        publish(
            &mut publisher,
            "jobs/1",
            format!("j{i}"),
            QoS::AtLeastOnce,
            false,
        );
    }
    let mut seen = std::collections::HashSet::new();
    let mut counts = Vec::new();
    for (name, m) in &mut members {
        let mut n = 0;
        while let Some(p) = next(m, Duration::from_millis(500)) {
            assert!(
                seen.insert(p.clone()),
                "{p} delivered twice to the group ({name})"
            );
            n += 1;
        }
        counts.push((*name, n));
    }
    assert_eq!(
        seen.len(),
        total,
        "the group got each message once: {counts:?}"
    );
    for (name, n) in &counts {
        // Round-robin over three nodes: a third each, give or take.
        assert!(
            (10..=30).contains(n),
            "{name} got {n} of {total}: {counts:?}"
        );
    }
    let got: Vec<String> = (0..total).filter_map(|_| next(&mut plain, WAIT)).collect();
    assert_eq!(got, (0..total).map(|i| format!("j{i}")).collect::<Vec<_>>());

    // The member on B leaves: its node's group route goes, the others share everything.
    members.remove(1);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "B's group route did not go");
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..6 {
            publish(
                &mut publisher,
                "jobs/2",
                format!("k{i}"),
                QoS::AtMostOnce,
                false,
            );
        }
        let after: usize = members.iter_mut().map(|(_, m)| drain(m)).sum();
        if after == 6 {
            break;
        }
    }
}

/// Reads and counts every message waiting for `r` (up to a short pause).
fn drain(r: &mut Raw) -> usize {
    let mut n = 0;
    while next(r, Duration::from_millis(300)).is_some() {
        n += 1;
    }
    n
}

/// A CONNECT resuming a session (Clean Start 0); the CONNACK's Session Present.
fn resume(b: &Broker, v: Version, id: &str) -> (Raw, bool) {
    let mut r = Raw::connect(b.addr, v);
    let mut p = connect_packet(v, id, false, 30);
    if let Packet::Connect(c) = &mut p {
        c.properties.session_expiry_interval = Some(600);
    }
    r.send(&p);
    match r.recv() {
        Some(Packet::ConnAck(a)) if a.reason.is_success() => (r, a.session_present),
        other => panic!("CONNACK expected, got {other:?}"),
    }
}

#[test]
fn a_persistent_session_moves_with_its_client_to_another_node() {
    let redis = Redis::start(free_port());
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    session_moves(&a, &b, &c);
}

fn session_moves(a: &Broker, b: &Broker, c: &Broker) {
    let v = Version::V3_1_1;
    let (mut first, present) = resume(a, v, "traveller");
    assert!(!present);
    subscribe(&mut first, "moving/#");
    first.send(&Packet::Disconnect(Default::default()));
    drop(first);
    // Queued on A while the client is away.
    let mut on_a = client(a, "pub-on-a");
    for i in 0..3 {
        publish(
            &mut on_a,
            "moving/1",
            format!("queued-{i}"),
            QoS::AtLeastOnce,
            false,
        );
    }
    // The client comes back on B: session present, the queue and subscription came along.
    let (mut back, present) = resume(b, v, "traveller");
    assert!(present, "the session moved from A to B");
    let got: Vec<String> = (0..3).filter_map(|_| next(&mut back, WAIT)).collect();
    assert_eq!(got, ["queued-0", "queued-1", "queued-2"]);
    // Its subscription is routed to B now: publishes on A and C reach it there.
    let mut on_c = client(c, "pub-on-c");
    until_routed(&mut on_c, "moving/2", &mut [&mut back]);
    until_routed(&mut on_a, "moving/3", &mut [&mut back]);
    publish(
        &mut on_c,
        "moving/2",
        "from-c".into(),
        QoS::AtLeastOnce,
        false,
    );
    assert_eq!(next(&mut back, WAIT).as_deref(), Some("from-c"));

    // 5.0, connected when it moves: the old connection is told 0x8E, an unacknowledged
    // delivery comes again (DUP) on the new node.
    let v = Version::V5;
    let (mut old, _) = resume(c, v, "roamer");
    subscribe(&mut old, "roam/#");
    publish(
        &mut on_c,
        "roam/1",
        "unacked".into(),
        QoS::AtLeastOnce,
        false,
    );
    assert!(
        matches!(old.recv(), Some(Packet::Publish(p)) if &p.payload[..] == b"unacked"),
        "delivered on C"
    );
    let (mut new, present) = resume(a, v, "roamer");
    assert!(present, "the session moved from C to A");
    let seen = old.expect_closed();
    assert!(
        matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == shardmq::protocol::ReasonCode::SESSION_TAKEN_OVER),
        "{seen:?}"
    );
    match new.recv() {
        Some(Packet::Publish(p)) => {
            assert!(p.dup, "a redelivery");
            assert_eq!(&p.payload[..], b"unacked");
        }
        other => panic!("redelivery expected, got {other:?}"),
    }
    // A client that never had a session anywhere gets none, at once.
    let (_, present) = resume(b, v, "newcomer");
    assert!(!present);
}

#[test]
fn nodes_on_a_redis_cluster_do_it_all() {
    let redis = RedisCluster::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    publish_reaches_other_nodes(&a, &b, &c);
    retained_crosses(&a, &c);
    shared_group_spreads(&a, &b, &c);
    session_moves(&a, &b, &c);
    // The forwards went over sharded pub/sub: each node channel lives on one Redis node.
    let mut channels = 0;
    for r in &redis.servers {
        let mut cmd = Command::new("redis-cli");
        cmd.args([
            "-p",
            &r.port.to_string(),
            "pubsub",
            "shardchannels",
            "shardmq:to:*",
        ]);
        let (_, out) = common::run_bounded(cmd, WAIT);
        channels += out.lines().filter(|l| l.starts_with("shardmq:to:")).count();
    }
    assert_eq!(channels, 3, "one sharded channel per shardmq node");
}
