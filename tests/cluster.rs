//! Several nodes through a real `redis-server` on a free loopback port (issue 10): a publish
//! on node A reaches exact and wildcard subscribers on B and C, retained messages are
//! cluster-wide (also for a node that starts later), and Redis killed and restarted mid-test
//! leaves local traffic alone while cross-node traffic resumes. `scripts/test.sh` installs
//! redis-server.

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node(redis: &Redis) -> Broker {
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
    let mut exact = client(&b, "exact-on-b");
    subscribe(&mut exact, "fleet/7/state");
    let mut wild = client(&c, "wild-on-c");
    subscribe(&mut wild, "fleet/+/state");
    let mut local = client(&a, "local-on-a");
    subscribe(&mut local, "fleet/#");
    let mut publisher = client(&a, "pub-on-a");
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
    let mut publisher = client(&a, "retainer");
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
        let mut s = client(&c, "late-on-c");
        subscribe(&mut s, "cfg/#");
        if next(&mut s, Duration::from_millis(300)).as_deref() == Some("v1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retained message never reached node C"
        );
    }
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
