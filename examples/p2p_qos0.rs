//! A small load loop until `shardmq bench` exists: one publisher, one subscriber, QoS 0,
//! against any MQTT 3.1.1 broker; prints messages per second delivered to the subscriber.
//!
//! ```text
//! cargo run --release --example p2p_qos0 -- 127.0.0.1:1883 [seconds=5] [payload=16]
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardmq::protocol::{
    Connect, Packet, Publish, QoS, Str, Subscribe, SubscriptionOptions, Version, decode,
};

fn connect(addr: &str, id: &'static str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    let c = Packet::Connect(Box::new(Connect {
        version: Version::V3_1_1,
        clean_start: true,
        keep_alive: 60,
        client_id: Str::from(id),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }));
    s.write_all(&c.to_bytes(Version::V3_1_1).unwrap()).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack[0], 0x20, "CONNACK");
    s
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:1883".into());
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);

    let mut sub = connect(&addr, "p2p-sub");
    let s = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![("p2p/t".into(), SubscriptionOptions::qos(QoS::AtMostOnce))],
        properties: Default::default(),
    });
    sub.write_all(&s.to_bytes(Version::V3_1_1).unwrap())
        .unwrap();
    let mut suback = [0u8; 5];
    sub.read_exact(&mut suback).unwrap();

    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let received = received.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            sub.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = BytesMut::with_capacity(1 << 20);
            let mut chunk = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                let n = match sub.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(_) => continue,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut k = 0;
                while let Ok(Some(_)) = decode(&mut buf, Version::V3_1_1, u32::MAX) {
                    k += 1;
                }
                received.fetch_add(k, Ordering::Relaxed);
            }
        })
    };

    let mut publisher = connect(&addr, "p2p-pub");
    let mut batch = BytesMut::new();
    let payload = Bytes::from(vec![b'x'; size]);
    for _ in 0..256 {
        Packet::Publish(Publish {
            topic: "p2p/t".into(),
            payload: payload.clone(),
            ..Default::default()
        })
        .encode(Version::V3_1_1, &mut batch)
        .unwrap();
    }
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if publisher.write_all(&batch).is_err() {
                    break;
                }
                sent += 256;
            }
            sent
        })
    };

    std::thread::sleep(Duration::from_secs(1)); // warm up
    let start_count = received.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let delivered = received.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let _ = counter.join();
    println!(
        "{addr}: {:.0} msg/s delivered (1 -> 1, QoS 0, {size} B payload, {secs} s; {sent} sent in total)",
        delivered as f64 / elapsed
    );
}
