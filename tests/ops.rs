//! Operations (issue 9) over real sockets: the Prometheus endpoint's counters move with
//! traffic, `/health`, the `$SYS/broker/...` topics (read with `mosquitto_sub`, an independent
//! client), JSON log lines with the connect / disconnect fields, and SIGTERM during traffic.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, Raw, WAIT, connect_packet, have_tool, temp_dir};
use shardmq::protocol::{
    Packet, PubAck, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, Version,
};

/// The metrics address the broker logged.
fn metrics_addr(b: &Broker) -> SocketAddr {
    let line = b.line_containing("serving metrics on http://");
    let rest = line.split("serving metrics on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// GET `path`: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the series `series` (name with labels, exactly as exposed).
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in:\n{body}"))
        .parse()
        .unwrap()
}

/// Scrapes until `ok` accepts the body (the shards refresh their snapshots every second).
fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if ok(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}; last scrape:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn subscribe(topic: &'static str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(topic.into(), SubscriptionOptions::qos(qos))],
        properties: Default::default(),
    })
}

fn publish(topic: &'static str, qos: QoS, id: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        qos,
        topic: topic.into(),
        packet_id: id,
        payload: bytes::Bytes::from_static(payload),
        ..Default::default()
    })
}

fn session(b: &Broker, v: Version, id: &str) -> Raw {
    let mut r = Raw::connect(b.addr, v);
    r.send(&connect_packet(v, id, true, 30));
    assert!(matches!(r.recv(), Some(Packet::ConnAck(a)) if a.reason.is_success()));
    r
}

#[test]
fn metrics_counters_move_with_traffic_and_health_answers() {
    let b = Broker::start(2, &["--metrics-listen", "127.0.0.1:0", "--no-persistence"]);
    let addr = metrics_addr(&b);
    assert_eq!(get(addr, "/health").0, "HTTP/1.1 200 OK");
    assert_eq!(get(addr, "/nope").0, "HTTP/1.1 404 Not Found");
    let before = scrape_until(addr, "first snapshot", |body| {
        body.contains("shardmq_shards 2")
    });
    assert_eq!(
        value(&before, "shardmq_messages_received_total{qos=\"1\"}"),
        0.0
    );

    let mut sub = session(&b, Version::V5, "metrics-sub");
    sub.send(&subscribe("m/#", QoS::AtLeastOnce));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    let mut publ = session(&b, Version::V3_1_1, "metrics-pub");
    for id in 1..=10u16 {
        publ.send(&publish("m/x", QoS::AtLeastOnce, id, b"0123456789"));
        assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    }
    for _ in 0..10 {
        match sub.recv() {
            Some(Packet::Publish(p)) => sub.send(&Packet::PubAck(PubAck::new(p.packet_id))),
            other => panic!("{other:?}"),
        }
    }
    if let Packet::Publish(p) = &mut publish("m/r2", QoS::AtMostOnce, 0, b"kept") {
        p.retain = true;
        publ.send(&Packet::Publish(p.clone()));
    }
    // A refused CONNECT (client id too long) counts as a limit hit.
    let mut long = Raw::connect(b.addr, Version::V5);
    long.send(&connect_packet(Version::V5, &"x".repeat(300), true, 30));
    let _ = long.expect_closed();

    let body = scrape_until(addr, "counters after traffic", |body| {
        value(body, "shardmq_messages_received_total{qos=\"1\"}") >= 10.0
            && value(body, "shardmq_retained_messages") >= 1.0
            && value(
                body,
                "shardmq_limit_hits_total{limit=\"max_client_id_len\"}",
            ) >= 1.0
    });
    assert!(value(&body, "shardmq_messages_sent_total{qos=\"1\"}") >= 10.0);
    assert_eq!(value(&body, "shardmq_connections{transport=\"tcp\"}"), 2.0);
    assert!(
        value(
            &body,
            "shardmq_connections_accepted_total{transport=\"tcp\"}"
        ) >= 3.0
    );
    assert!(value(&body, "shardmq_bytes_received_total") > 100.0);
    assert!(value(&body, "shardmq_bytes_sent_total") > 100.0);
    assert_eq!(value(&body, "shardmq_subscriptions"), 1.0);
    assert_eq!(value(&body, "shardmq_sessions{state=\"live\"}"), 2.0);
    for shard in 0..2 {
        let busy = value(
            &body,
            &format!("shardmq_shard_busy_ratio{{shard=\"{shard}\"}}"),
        );
        assert!((0.0..=1.0).contains(&busy));
    }
    assert!(body.contains("shardmq_ring_occupancy_ratio{from=\"0\",to=\"1\"}"));
    // Persistence is off: no store series.
    assert!(!body.contains("shardmq_store_commit_seconds"));
    drop(b);
}

#[test]
fn store_commit_latency_and_auth_failures_are_exposed() {
    let dir = temp_dir("ops-auth");
    let passwords = dir.join("passwords");
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["passwd", "-c", "--password-stdin"])
        .arg(&passwords)
        .arg("alice")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"secret\n")?;
            c.wait()
        })
        .unwrap();
    assert!(out.success());
    let config = dir.join("shardmq.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\npassword_file = {:?}\n",
            passwords.display().to_string()
        ),
    )
    .unwrap();
    let b = Broker::start(
        1,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let addr = metrics_addr(&b);
    let mut bad = Raw::connect(b.addr, Version::V5);
    let mut c = connect_packet(Version::V5, "intruder", true, 30);
    if let Packet::Connect(c) = &mut c {
        c.username = Some("alice".into());
        c.password = Some(bytes::Bytes::from_static(b"wrong"));
    }
    bad.send(&c);
    assert!(
        matches!(bad.recv(), Some(Packet::ConnAck(a)) if a.reason == ReasonCode::BAD_USER_NAME_OR_PASSWORD)
    );
    // A persistent session's QoS 1 delivery goes through the store (a commit).
    let mut p = Raw::connect(b.addr, Version::V3_1_1);
    let mut c = connect_packet(Version::V3_1_1, "durable", false, 30);
    if let Packet::Connect(c) = &mut c {
        c.username = Some("alice".into());
        c.password = Some(bytes::Bytes::from_static(b"secret"));
    }
    p.send(&c);
    assert!(matches!(p.recv(), Some(Packet::ConnAck(_))));
    p.send(&subscribe("d", QoS::AtLeastOnce));
    assert!(matches!(p.recv(), Some(Packet::SubAck(_))));
    let body = scrape_until(addr, "auth failure and a store commit", |body| {
        value(
            body,
            "shardmq_auth_failures_total{reason=\"bad_credentials\"}",
        ) >= 1.0
            && value(body, "shardmq_store_commit_seconds_count") >= 1.0
    });
    assert!(value(&body, "shardmq_store_commit_seconds_bucket{le=\"+Inf\"}") >= 1.0);
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sys_topics_are_published_and_hidden_from_hash_subscribers() {
    if !have_tool("mosquitto_sub", "mosquitto-clients") {
        return;
    }
    let dir = temp_dir("ops-sys");
    let config = dir.join("shardmq.toml");
    std::fs::write(&config, "[metrics]\nsys_interval = 1\n").unwrap();
    let b = Broker::start(
        2,
        &["--config", config.to_str().unwrap(), "--no-persistence"],
    );
    // A '#' subscriber must not see $SYS topics [MQTT-4.7.2-1].
    let mut everything = session(&b, Version::V3_1_1, "hash");
    everything.send(&subscribe("#", QoS::AtMostOnce));
    assert!(matches!(everything.recv(), Some(Packet::SubAck(_))));
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.port().to_string()])
        .args(["-t", "$SYS/#", "-v", "-W", "5", "-C", "40"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for topic in [
        "$SYS/broker/version shardmq version",
        "$SYS/broker/uptime ",
        "$SYS/broker/clients/connected ",
        "$SYS/broker/clients/total ",
        "$SYS/broker/messages/received ",
        "$SYS/broker/messages/sent ",
        "$SYS/broker/bytes/received ",
        "$SYS/broker/subscriptions/count ",
        "$SYS/broker/retained messages/count ",
        "$SYS/broker/load/messages/received/1min ",
        "$SYS/broker/load/connections/15min ",
    ] {
        assert!(text.contains(topic), "{topic} missing from:\n{text}");
    }
    // The '#' subscriber got nothing meanwhile.
    everything
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(everything.try_recv().is_none(), "'#' matched a $SYS topic");
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn json_logs_carry_the_connect_and_disconnect_fields() {
    let b = Broker::start(1, &["--log-format", "json", "--no-persistence"]);
    let line = b.startup.last().unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO");
    let mut c = session(&b, Version::V5, "json-client");
    c.send(&Packet::Disconnect(Default::default()));
    let _ = c.expect_closed();
    let mut fields = Vec::new();
    let deadline = Instant::now() + WAIT;
    while fields.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = b
            .log
            .recv_timeout(left)
            .expect("connect and disconnect lines");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["client_id"] == "json-client" {
            fields.push(v);
        }
    }
    assert_eq!(fields[0]["message"], "client connected");
    assert_eq!(fields[0]["transport"], "tcp");
    assert_eq!(fields[0]["version"], "5.0");
    assert!(
        fields[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(fields[1]["message"], "client disconnected");
    assert_eq!(fields[1]["reason"], "DISCONNECT");
}

#[test]
fn sigterm_during_traffic_exits_zero_in_bounded_time_and_tells_v5_clients() {
    let mut b = Broker::start(2, &[]);
    let mut sub = session(&b, Version::V5, "term-sub");
    sub.send(&subscribe("load/#", QoS::AtLeastOnce));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    let addr = b.addr;
    let publisher = std::thread::spawn(move || {
        let mut p = Raw::connect(addr, Version::V5);
        p.send(&connect_packet(Version::V5, "term-pub", true, 30));
        let mut sent = 0u32;
        let mut id = 1u16;
        let deadline = Instant::now() + WAIT;
        // QoS 1 as fast as the socket takes it, until the broker goes away.
        while Instant::now() < deadline {
            if !p.try_send(&publish("load/x", QoS::AtLeastOnce, id, b"payload")) {
                break;
            }
            sent += 1;
            id = id.wrapping_add(1).max(1);
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let pid = b.child.id().to_string();
    let t0 = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The subscriber drains what it got, then the broker's DISCONNECT 0x8B.
    let mut last = None;
    while let Some(p) = sub.recv() {
        last = Some(p);
    }
    assert!(
        matches!(&last, Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SERVER_SHUTTING_DOWN),
        "{last:?}"
    );
    let code = loop {
        if let Some(s) = b.child.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the broker did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    let sent = publisher.join().unwrap();
    assert!(sent > 0);
    println!(
        "exited 0 {:?} after SIGTERM, with {sent} publishes sent",
        t0.elapsed()
    );
}

#[test]
fn the_container_configuration_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/docker.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["check-config", file])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0.0.0.0:9183"), "{text}");
}
