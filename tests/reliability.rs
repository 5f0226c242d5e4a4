//! Misbehaving clients and resource exhaustion (issue 11), against the real binary: clients
//! that trickle bytes (slowloris) before and after CONNECT, a client that goes silent without
//! closing, a subscriber that never reads while publishers flood, 10 000 clients connecting
//! at once, a broker run out of file descriptors, and a session taken over again and again
//! while messages flow to it. Each test bounds its time and count, and checks that everyone
//! else keeps being served.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Broker, Raw, WAIT, connect_packet, run_bounded};
use shardmq::protocol::{
    Connect, Packet, PubAck, Publish, QoS, Subscribe, SubscriptionOptions, Version, Will,
};

/// A config file with `[limits]` lines, removed on drop.
struct Config(std::path::PathBuf);

impl Config {
    fn limits(name: &str, lines: &str) -> Config {
        let dir = common::temp_dir(name);
        let path = dir.join("shardmq.toml");
        std::fs::write(&path, format!("[limits]\n{lines}\n")).unwrap();
        Config(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        if let Some(d) = self.0.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn client(b: &Broker, id: &str, keep_alive: u16) -> Raw {
    let v = Version::V3_1_1;
    let mut r = Raw::connect(b.addr, v);
    r.send(&connect_packet(v, id, true, keep_alive));
    assert!(matches!(r.recv(), Some(Packet::ConnAck(a)) if a.reason.is_success()));
    r
}

fn subscribe(r: &mut Raw, filter: &str, qos: QoS) {
    r.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            shardmq::protocol::TopicFilter::new(filter.to_string()).unwrap(),
            SubscriptionOptions::qos(qos),
        )],
        properties: Default::default(),
    }));
    assert!(matches!(r.recv(), Some(Packet::SubAck(_))));
}

fn publish_packet(topic: &str, payload: Vec<u8>, qos: QoS, id: u16) -> Packet {
    Packet::Publish(Publish {
        qos,
        topic: shardmq::protocol::TopicName::new(topic.to_string()).unwrap(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
        payload: payload.into(),
        ..Default::default()
    })
}

fn encode(p: &Packet) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    p.encode(Version::V3_1_1, &mut out).unwrap();
    out.to_vec()
}

/// A bystander's round trip: PINGREQ answered.
fn still_served(r: &mut Raw) {
    r.send(&Packet::PingReq);
    assert!(
        matches!(r.recv(), Some(Packet::PingResp)),
        "bystander not served"
    );
}

/// Sends `bytes` one at a time, `gap` apart, until the broker closes the connection; returns
/// how many it took. Panics if all of them went through and it is still open after `WAIT`.
fn trickle(stream: &mut TcpStream, bytes: &[u8], gap: Duration, bystander: &mut Raw) -> usize {
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    for (i, b) in bytes.iter().enumerate() {
        if stream.write_all(std::slice::from_ref(b)).is_err() {
            return i;
        }
        std::thread::sleep(gap);
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => return i + 1,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return i + 1,
        }
        if i % 4 == 0 {
            still_served(bystander);
        }
    }
    panic!(
        "the connection stayed open through all {} bytes",
        bytes.len()
    );
}

#[test]
fn a_client_trickling_its_connect_is_cut_at_the_connect_timeout() {
    let config = Config::limits("slowloris-connect", "connect_timeout_secs = 2");
    let b = Broker::start(1, &["--config", config.path(), "--no-persistence"]);
    let mut bystander = client(&b, "bystander", 30);
    // A CONNECT padded with a long client id, sent a byte every 200 ms: 50 s if let through.
    let id = "x".repeat(240);
    let bytes = encode(&connect_packet(Version::V3_1_1, &id, true, 30));
    let mut slow = TcpStream::connect(b.addr).unwrap();
    let start = Instant::now();
    let sent = trickle(
        &mut slow,
        &bytes,
        Duration::from_millis(200),
        &mut bystander,
    );
    // A lower bound only: the 2 s timeout, checked by a one-second wheel.
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert!(sent < bytes.len());
    still_served(&mut bystander);
}

#[test]
fn a_client_trickling_a_packet_after_connect_is_cut_by_keep_alive() {
    let b = Broker::start(1, &["--no-persistence"]);
    let mut bystander = client(&b, "bystander", 30);
    // Keep Alive 1 s: the broker waits 1.5 s (rounded up to 2) for a whole Control Packet.
    let mut slow = client(&b, "slow", 1);
    let bytes = encode(&publish_packet("trickle", vec![7; 100], QoS::AtMostOnce, 0));
    let sent = trickle(
        &mut slow.stream,
        &bytes,
        Duration::from_millis(200),
        &mut bystander,
    );
    assert!(
        sent < bytes.len(),
        "cut after {sent} of {} bytes",
        bytes.len()
    );
    still_served(&mut bystander);
}

#[test]
fn a_client_that_goes_silent_is_caught_by_keep_alive_and_its_will_published() {
    let b = Broker::start(1, &["--no-persistence"]);
    let mut watcher = client(&b, "watcher", 30);
    subscribe(&mut watcher, "wills/#", QoS::AtLeastOnce);
    let v = Version::V3_1_1;
    let mut silent = Raw::connect(b.addr, v);
    silent.send(&Packet::Connect(Box::new(Connect {
        version: v,
        clean_start: true,
        keep_alive: 1,
        client_id: "silent".into(),
        will: Some(Will {
            topic: "wills/silent".into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        }),
        username: None,
        password: None,
        properties: Default::default(),
    })));
    assert!(matches!(silent.recv(), Some(Packet::ConnAck(_))));
    // The socket stays open but nothing more is sent (as when a device loses power or its
    // network: no FIN ever arrives). Keep alive closes it and publishes the will.
    let start = Instant::now();
    match watcher.recv() {
        Some(Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], b"gone");
            watcher.send(&Packet::PubAck(PubAck::new(p.packet_id)));
        }
        other => panic!("the will expected, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(silent.expect_closed().is_empty());
}

/// The broker's `shardmq_…` value of a series, from its metrics endpoint.
fn metric(addr: SocketAddr, series: &str) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn metrics_addr(b: &Broker) -> SocketAddr {
    let line = b.line_containing("serving metrics on http://");
    let rest = line.split("serving metrics on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn a_subscriber_that_never_reads_keeps_the_broker_bounded_and_others_served() {
    let b = Broker::start(2, &["--no-persistence", "--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&b);
    // Two subscribers to everything that never read again: one at QoS 0, one at QoS 1
    // (with a small receive buffer, so the broker's side fills first).
    let mut stuck = Vec::new();
    for (id, qos) in [("stuck-0", QoS::AtMostOnce), ("stuck-1", QoS::AtLeastOnce)] {
        let mut r = client(&b, id, 0);
        socket2::SockRef::from(&r.stream)
            .set_recv_buffer_size(4096)
            .unwrap();
        subscribe(&mut r, "flood/#", qos);
        stuck.push(r);
    }
    // A pair that must keep going meanwhile.
    let mut sub = client(&b, "pair-sub", 30);
    subscribe(&mut sub, "pair/x", QoS::AtLeastOnce);
    let mut pair_pub = client(&b, "pair-pub", 30);
    let rss_before = b.rss_kib();
    // 4 publishers × 2 000 × 16 KiB = 125 MiB offered to each stuck subscriber.
    let addr = b.addr;
    let floods: Vec<_> = (0..4)
        .map(|p| {
            std::thread::spawn(move || {
                let v = Version::V3_1_1;
                let mut r = Raw::connect(addr, v);
                r.send(&connect_packet(v, &format!("flooder-{p}"), true, 30));
                assert!(matches!(r.recv(), Some(Packet::ConnAck(_))));
                let payload = vec![b'f'; 16 * 1024];
                for i in 0..2000u16 {
                    r.send(&publish_packet(
                        "flood/data",
                        payload.clone(),
                        QoS::AtLeastOnce,
                        i % 60000 + 1,
                    ));
                    assert!(matches!(r.recv(), Some(Packet::PubAck(_))));
                }
            })
        })
        .collect();
    let mut pair_got = 0;
    let mut peak = rss_before;
    for i in 0..200u16 {
        pair_pub.send(&publish_packet(
            "pair/x",
            i.to_be_bytes().to_vec(),
            QoS::AtLeastOnce,
            i + 1,
        ));
        assert!(matches!(pair_pub.recv(), Some(Packet::PubAck(_))));
        if let Some(Packet::Publish(p)) = sub.recv() {
            assert_eq!(&p.payload[..], i.to_be_bytes());
            sub.send(&Packet::PubAck(PubAck::new(p.packet_id)));
            pair_got += 1;
        }
        peak = peak.max(b.rss_kib());
    }
    for f in floods {
        f.join().unwrap();
    }
    peak = peak.max(b.rss_kib());
    assert_eq!(pair_got, 200, "the pair lost messages during the flood");
    // Bound: per stuck subscriber its write buffer (limits.max_write_buffer, 4 MiB) and its
    // queue (max_queued_bytes, 16 MiB), plus room for the allocator and the other clients.
    let bound_kib = 2 * (4 + 16) * 1024 + 48 * 1024;
    let grown = peak.saturating_sub(rss_before);
    println!(
        "RSS {rss_before} KiB before, peak {peak} KiB (+{grown} KiB) while 125 MiB were offered to each of two stuck subscribers; bound +{bound_kib} KiB"
    );
    assert!(grown < bound_kib, "RSS grew by {grown} KiB");
    // What was not delivered is counted.
    let deadline = Instant::now() + WAIT;
    loop {
        let slow = metric(
            metrics,
            "shardmq_messages_dropped_total{reason=\"slow_consumer\"}",
        );
        let full = metric(
            metrics,
            "shardmq_messages_dropped_total{reason=\"queue_full\"}",
        );
        if slow > 0.0 && full > 0.0 {
            println!("dropped: slow_consumer {slow}, queue_full {full}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drops not counted: slow_consumer {slow}, queue_full {full}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    still_served(&mut pair_pub);
    drop(stuck);
}

/// The hard open-file limit of this process (what a child may be given).
fn hard_nofile() -> u64 {
    let out = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(1024)
}

#[test]
fn ten_thousand_clients_connecting_at_once() {
    // The load generator needs one descriptor per client, as does the broker (separate
    // processes, each with this limit).
    let n = 10_000.min(hard_nofile().saturating_sub(200));
    let b = Broker::start(2, &["--no-persistence"]);
    let mut bench = Command::new(env!("CARGO_BIN_EXE_shardmq"));
    bench
        .args([
            "bench",
            "conn",
            "-n",
            &n.to_string(),
            "--inflight",
            &n.to_string(),
        ])
        .args(["-p", &b.port().to_string(), "-d", "1", "--warmup", "0"])
        .args(["--broker-pid", &b.child.id().to_string()]);
    let (code, out) = run_bounded(bench, Duration::from_secs(120));
    println!("{out}");
    assert_eq!(code, Some(0), "bench conn -n {n} failed:\n{out}");
    let json = out.lines().rfind(|l| l.starts_with('{')).unwrap();
    assert!(json.contains("\"failed_clients\":0"), "{json}");
    assert!(json.contains(&format!("\"connections\":{n}")), "{json}");
    // And the broker serves as before.
    let mut after = client(&b, "after", 30);
    still_served(&mut after);
}

/// CPU seconds the process has used (user + system), from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the state field.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn out_of_file_descriptors_the_broker_backs_off_and_recovers() {
    let mut b = Broker::start_with_nofile(
        64,
        1,
        &["--no-persistence", "--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = metrics_addr(&b);
    let mut bystander = client(&b, "bystander", 30);
    // Far more connections than descriptors: the first ones are served, the rest wait in the
    // listen backlog while accept fails with EMFILE.
    let v = Version::V3_1_1;
    let mut conns = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(b.addr).unwrap();
        s.write_all(&{
            let mut out = bytes::BytesMut::new();
            connect_packet(v, &format!("c{i}"), true, 30)
                .encode(v, &mut out)
                .unwrap();
            out
        })
        .unwrap();
        conns.push(s);
    }
    b.line_containing("out of file descriptors");
    let deadline = Instant::now() + WAIT;
    while metric(
        metrics,
        "shardmq_accept_errors_total{reason=\"open_files\"}",
    ) == 0.0
    {
        assert!(Instant::now() < deadline, "accept errors not counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Backing off, not spinning: over two seconds of exhaustion the broker uses a small
    // part of one core (a spinning accept loop would use all of it).
    let pid = b.child.id();
    let (cpu0, t0) = (cpu_secs(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let used = (cpu_secs(pid) - cpu0) / t0.elapsed().as_secs_f64();
    assert!(
        used < 0.5,
        "the broker used {used:.2} of a core while out of descriptors"
    );
    still_served(&mut bystander);
    assert!(b.alive());
    // Descriptors free up: the broker accepts again.
    drop(conns);
    b.line_containing("accepting connections again");
    let deadline = Instant::now() + WAIT;
    loop {
        let mut r = Raw::connect(b.addr, v);
        r.stream
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        r.send(&connect_packet(v, "late", true, 30));
        if matches!(r.try_recv(), Some(Packet::ConnAck(a)) if a.reason.is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the broker did not recover");
    }
    still_served(&mut bystander);
}

#[test]
fn a_session_taken_over_again_and_again_while_messages_flow_misses_none() {
    for shards in [1, 2] {
        let b = Broker::start(shards, &["--no-persistence"]);
        let v = Version::V3_1_1;
        let resume = || {
            let mut r = Raw::connect(b.addr, v);
            r.send(&connect_packet(v, "resumer", false, 30));
            assert!(matches!(r.recv(), Some(Packet::ConnAck(_))));
            r
        };
        let mut sub = resume();
        subscribe(&mut sub, "flow/#", QoS::AtLeastOnce);
        let total = 3000u32;
        let addr = b.addr;
        let publisher = std::thread::spawn(move || {
            let mut r = Raw::connect(addr, v);
            r.send(&connect_packet(v, "flow-pub", true, 30));
            assert!(matches!(r.recv(), Some(Packet::ConnAck(_))));
            for i in 0..total {
                let id = (i % 60000 + 1) as u16;
                r.send(&publish_packet(
                    "flow/x",
                    i.to_be_bytes().to_vec(),
                    QoS::AtLeastOnce,
                    id,
                ));
                assert!(matches!(r.recv(), Some(Packet::PubAck(_))));
                // About 2 000 a second: the takeovers fall among the messages.
                if i % 20 == 19 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        let mut got = std::collections::HashSet::new();
        let mut takeovers = 0;
        let deadline = Instant::now() + 2 * WAIT;
        while got.len() < total as usize {
            assert!(
                Instant::now() < deadline,
                "{shards} shards: {} of {total} arrived after {takeovers} takeovers; missing {:?}",
                got.len(),
                (0..total)
                    .filter(|i| !got.contains(i))
                    .take(20)
                    .collect::<Vec<_>>()
            );
            // Read (and acknowledge) for a moment, then take the session over with a new
            // connection; what the old one did not acknowledge comes again on the new one.
            sub.stream
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let until = Instant::now() + Duration::from_millis(30);
            while Instant::now() < until {
                match sub.try_recv() {
                    Some(Packet::Publish(p)) => {
                        got.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                        sub.send(&Packet::PubAck(PubAck::new(p.packet_id)));
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            if !publisher.is_finished() {
                sub = resume();
                takeovers += 1;
            }
        }
        publisher.join().unwrap();
        println!("{shards} shards: {total} of {total} arrived over {takeovers} takeovers");
        assert!(takeovers > 5);
    }
}

/// A 5.0 client that has fallen behind (the broker's send buffer to it is full) and keeps
/// writing while another connection takes its session over still gets DISCONNECT 0x8E
/// [MQTT-3.1.4-3]: the broker lingers until what it sent is acknowledged, discarding input,
/// instead of closing a socket with unread data (which resets it and drops the DISCONNECT
/// queued behind the backlog).
#[test]
fn a_client_taken_over_while_behind_and_still_writing_gets_its_disconnect() {
    for driver in ["uring", "epoll"] {
        let b = Broker::start(1, &["--no-persistence", "--io-driver", driver]);
        let v = Version::V5;
        let addr = b.addr;
        let mut flooder = client(&b, "flooder", 30);
        let payload = vec![b'x'; 4096];
        let rounds = 5;
        for round in 0..rounds {
            let mut old = Raw::connect(addr, v);
            old.send(&connect_packet(v, "behind", false, 30));
            assert!(matches!(old.recv(), Some(Packet::ConnAck(_))));
            subscribe(&mut old, "behind/#", QoS::AtMostOnce);
            // Fill the socket buffers towards the client, which does not read.
            let flood = encode(&publish_packet(
                "behind/x",
                payload.clone(),
                QoS::AtMostOnce,
                0,
            ));
            for _ in 0..1000 {
                flooder.send_bytes(&flood);
            }
            still_served(&mut flooder);
            // The client keeps writing (PINGREQ) through the takeover, so input is pending on
            // the broker's side when it closes the old connection.
            let mut writer = old.stream.try_clone().unwrap();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stopped = stop.clone();
            let pinger = std::thread::spawn(move || {
                let ping = [0xC0u8, 0];
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    if writer.write_all(&ping).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            std::thread::sleep(Duration::from_millis(50));
            let mut new = Raw::connect(addr, v);
            new.send(&connect_packet(v, "behind", false, 30));
            assert!(matches!(new.recv(), Some(Packet::ConnAck(_))));
            std::thread::sleep(Duration::from_millis(50));
            let seen = old.expect_closed();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            pinger.join().unwrap();
            let last = seen.iter().rev().find(|p| !matches!(p, Packet::PingResp));
            assert!(
                matches!(last, Some(Packet::Disconnect(d)) if d.reason.0 == 0x8E),
                "{driver}, round {round}: after {} packets the old connection ended with {:?}, not DISCONNECT 0x8E",
                seen.len(),
                last.map(|p| p.packet_type())
            );
            new.send(&Packet::Disconnect(Default::default()));
        }
        still_served(&mut flooder);
    }
}

/// A tmpfs of `mib` MiB mounted for one test, unmounted (and removed) on drop. Needs root,
/// which the test command has.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(mib: u32) -> SmallDisk {
        let dir = common::temp_dir("small-disk");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {mib} MiB tmpfs at {} (this test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The store's disk fills up while a persistent session's queue grows: the broker keeps
/// acknowledging and serving from memory, counts every failed write in
/// `store_failed_writes_total`, logs at the 1st, 2nd, 4th … failed batch (not once per
/// write), and once space is freed reopens the store and persists again (a session parked
/// after that survives a restart).
#[test]
fn a_full_disk_is_counted_the_broker_serves_on_and_the_store_recovers() {
    let disk = SmallDisk::mount(8);
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; 4 << 20]).unwrap();
    let data = disk.0.join("data");
    let data = data.to_str().unwrap();
    let mut b = Broker::start(1, &["--data-dir", data, "--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&b);
    let v = Version::V3_1_1;
    let park = |b: &Broker, id: &str| {
        let mut r = Raw::connect(b.addr, v);
        r.send(&connect_packet(v, id, false, 30));
        assert!(matches!(r.recv(), Some(Packet::ConnAck(_))));
        subscribe(&mut r, "disk/#", QoS::AtLeastOnce);
        r.send(&Packet::Disconnect(Default::default()));
    };
    park(&b, "parked");
    let mut publisher = client(&b, "disk-pub", 30);
    let mut bystander = client(&b, "disk-bystander", 30);
    // 400 messages of 16 KiB: 6.4 MiB for the 4 MiB left.
    let total = 400u32;
    let send = |p: &mut Raw, i: u32| {
        let mut payload = i.to_be_bytes().to_vec();
        payload.resize(16 << 10, b'd');
        p.send(&publish_packet(
            "disk/x",
            payload,
            QoS::AtLeastOnce,
            (i % 60000 + 1) as u16,
        ));
        assert!(
            matches!(p.recv(), Some(Packet::PubAck(_))),
            "message {i} not acknowledged"
        );
    };
    for i in 0..total {
        send(&mut publisher, i);
        if i % 50 == 0 {
            still_served(&mut bystander);
        }
    }
    let failed = metric(metrics, "shardmq_store_failed_writes_total");
    println!("disk full: {total} messages acknowledged, {failed} store writes failed");
    assert!(failed > 0.0, "the full disk was not counted");
    // Free the space; the store is reopened at most 5 s later and writes land again.
    std::fs::remove_file(&filler).unwrap();
    let mut failing_lines = 0;
    let mut next = total;
    let deadline = Instant::now() + 2 * WAIT;
    loop {
        assert!(Instant::now() < deadline, "the store did not recover");
        let mut recovered = false;
        for line in b.log.try_iter() {
            failing_lines += usize::from(line.contains("writes are failing"));
            recovered |= line.contains("writes succeed again");
        }
        if recovered {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        send(&mut publisher, next);
        next += 1;
    }
    println!(
        "{failing_lines} log lines about the failing writes; recovered after {} more messages",
        next - total
    );
    assert!(
        (1..=16).contains(&failing_lines),
        "{failing_lines} lines: the failures were not logged at powers of two"
    );
    // Everything acknowledged reaches the parked session (from memory), in order.
    let mut r = Raw::connect(b.addr, v);
    r.send(&connect_packet(v, "parked", false, 30));
    assert!(matches!(r.recv(), Some(Packet::ConnAck(a)) if a.session_present));
    for i in 0..next {
        match r.recv() {
            Some(Packet::Publish(p)) => {
                assert_eq!(u32::from_be_bytes(p.payload[..4].try_into().unwrap()), i);
                r.send(&Packet::PubAck(PubAck::new(p.packet_id)));
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    // The store works again: a session parked with a queued message now survives a restart.
    park(&b, "after");
    send(&mut publisher, u32::MAX);
    still_served(&mut publisher);
    b.child.kill().unwrap();
    let _ = b.child.wait();
    let b = Broker::start(1, &["--data-dir", data]);
    let mut r = Raw::connect(b.addr, v);
    r.send(&connect_packet(v, "after", false, 30));
    assert!(matches!(r.recv(), Some(Packet::ConnAck(a)) if a.session_present));
    assert!(
        matches!(r.recv(), Some(Packet::Publish(p)) if p.payload[..4] == u32::MAX.to_be_bytes()),
        "the message queued after the store recovered was lost in the restart"
    );
}

/// A 5.0 connection with an assigned client identifier, and the shard it landed on (the
/// identifier is `shardmq-{random}-{shard}-{token}`).
fn on_some_shard(b: &Broker) -> (Raw, usize) {
    let v = Version::V5;
    let mut r = Raw::connect(b.addr, v);
    r.send(&connect_packet(v, "", true, 30));
    let Some(Packet::ConnAck(a)) = r.recv() else {
        panic!("no CONNACK")
    };
    let id = a.properties.assigned_client_identifier.clone().unwrap();
    let shard = id.as_str().split('-').nth(2).unwrap().parse().unwrap();
    (r, shard)
}

/// Connections until one lands on `shard`.
fn on_shard(b: &Broker, shard: usize) -> Raw {
    for _ in 0..64 {
        let (r, s) = on_some_shard(b);
        if s == shard {
            return r;
        }
    }
    panic!("64 connections and none on shard {shard}");
}

/// Shard-to-shard rings of 64 slots and an overflow of 8 while a publisher on shard 0 floods a
/// subscriber on shard 1 (whose own window and queue are made large enough to take all): QoS 0 messages past the overflow are dropped and each drop is
/// counted (`messages_dropped_total{reason="ring_full"}`), so delivered + counted = sent;
/// QoS 1 messages are never dropped (the publisher is held back instead); and the broker
/// serves on.
#[test]
fn full_rings_drop_only_qos_0_and_count_every_drop() {
    let config = Config::limits(
        "rings",
        "ring_capacity = 64\nring_overflow = 8\nmax_queued_messages = 100000\nmax_inflight = 65535",
    );
    let b = Broker::start(
        2,
        &[
            "--no-persistence",
            "--config",
            config.path(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = metrics_addr(&b);
    let mut sub = on_shard(&b, 1);
    let v5_subscribe = |r: &mut Raw| {
        r.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                shardmq::protocol::TopicFilter::new("rings/#".to_string()).unwrap(),
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
            properties: Default::default(),
        }));
        assert!(matches!(r.recv(), Some(Packet::SubAck(_))));
    };
    v5_subscribe(&mut sub);
    let mut publisher = on_shard(&b, 0);
    let encode5 = |p: &Packet| p.to_bytes(Version::V5).unwrap().to_vec();
    let (qos0, qos1) = (20_000u32, 2_000u32);
    // Everything in a few large writes, so each read of the publishing shard yields
    // thousands of messages for the 2-slot ring.
    let mut burst = Vec::new();
    for i in 0..qos0 {
        burst.extend(encode5(&publish_packet(
            "rings/0",
            i.to_be_bytes().to_vec(),
            QoS::AtMostOnce,
            0,
        )));
    }
    for i in 0..qos1 {
        burst.extend(encode5(&publish_packet(
            "rings/1",
            i.to_be_bytes().to_vec(),
            QoS::AtLeastOnce,
            (i + 1) as u16,
        )));
    }
    let reader = std::thread::spawn(move || {
        let (mut got0, mut got1) = (0u32, Vec::new());
        sub.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        while let Some(p) = sub.try_recv() {
            if let Packet::Publish(p) = p {
                if p.qos == QoS::AtMostOnce {
                    got0 += 1;
                } else {
                    got1.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                    sub.send(&Packet::PubAck(PubAck::new(p.packet_id)));
                }
            }
        }
        (got0, got1)
    });
    publisher.send_bytes(&burst);
    let mut acks = 0;
    while acks < qos1 {
        match publisher.recv() {
            Some(Packet::PubAck(_)) => acks += 1,
            other => panic!("after {acks} PUBACKs: {other:?}"),
        }
    }
    let (got0, got1) = reader.join().unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // the metrics snapshot, once a second
    let ring_full = metric(
        metrics,
        "shardmq_messages_dropped_total{reason=\"ring_full\"}",
    ) as u32;
    let slow = metric(
        metrics,
        "shardmq_messages_dropped_total{reason=\"slow_consumer\"}",
    ) as u32;
    println!(
        "QoS 0: {qos0} sent, {got0} delivered, {ring_full} dropped at a full ring, {slow} as slow consumer; QoS 1: {qos1} sent, {} delivered",
        got1.len()
    );
    assert!(ring_full > 0, "the rings never filled");
    assert_eq!(
        got0 + ring_full + slow,
        qos0,
        "QoS 0 messages lost uncounted"
    );
    assert_eq!(
        got1,
        (0..qos1).collect::<Vec<_>>(),
        "QoS 1 messages lost or out of order"
    );
    still_served(&mut publisher);
}
