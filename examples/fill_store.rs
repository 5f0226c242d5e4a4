//! Fills a data directory through the store API, for measuring recovery: `R` retained
//! messages (`plant/<i/10000>/sensor/<i>`, 64 B), and `S` parked persistent sessions
//! (`device-<i>`, subscribed to `cmd/<i>/#` at QoS 1) with `Q` queued QoS 1 messages each.
//!
//! ```sh
//! cargo run --release --example fill_store -- /tmp/rec 1000000 100000 10
//! target/release/shardmq --data-dir /tmp/rec --listen 127.0.0.1:18899 --shards 2
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardmq::protocol::session::{AppMessage, Session, SessionLimits, Subscription};
use shardmq::protocol::{Publish, QoS, Str, SubscriptionOptions, TopicFilter, TopicName};
use shardmq::store::codec::{Deadlines, encode_delivery, encode_message, encode_session};
use shardmq::store::{PendingWrite, Store, StoreOptions, unix_now};

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map_or(default, |a| a.parse().expect("counts are numbers"))
}

/// Hands a write to the store thread, waiting while its channel is full.
fn put(store: &Store, mut w: PendingWrite) {
    loop {
        match store.retry(w) {
            Ok(()) => return,
            Err(back) => {
                w = back;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

fn message(topic: String, retain: bool) -> AppMessage {
    AppMessage::new(Publish {
        qos: QoS::AtLeastOnce,
        retain,
        topic: TopicName::new(Bytes::from(topic)).unwrap(),
        payload: Bytes::from(vec![b'x'; 64]),
        ..Default::default()
    })
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: fill_store DIR [RETAINED] [SESSIONS] [QUEUED_EACH]");
    let (retained, sessions, queued) = (arg(2, 1_000_000), arg(3, 100_000), arg(4, 10));
    let options = StoreOptions {
        dir: dir.into(),
        commit_interval_ms: 100,
        queue: 65_536,
        sync: false,
        shards: 1,
        write_buffer_mib: 64,
        cache_mib: 32,
    };
    let now = unix_now();
    let (store, _, thread) = Store::open(&options, now, Box::new(|_| {})).unwrap();
    let started = Instant::now();
    for i in 0..retained {
        let m = message(format!("plant/{}/sensor/{i}", i / 10_000), true);
        put(
            &store,
            PendingWrite::retained(m.topic.as_bytes(), Some(encode_message(&m, None))),
        );
    }
    let limits = Arc::new(SessionLimits::default());
    for i in 0..sessions {
        let id = format!("device-{i}");
        let session = Session::new(Str::new(Bytes::from(id.clone())).unwrap(), limits.clone());
        let mut image = session.image();
        image.expiry = u32::MAX;
        let filter = TopicFilter::new(Bytes::from(format!("cmd/{i}/#"))).unwrap();
        let sub = Subscription {
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            id: 0,
        };
        image.subscriptions.push((filter, sub));
        let value = encode_session(&image, Deadlines::default(), now);
        put(&store, PendingWrite::session(id.as_bytes(), value));
        for q in 0..queued {
            let m = message(format!("cmd/{i}/{q}"), false);
            let value = encode_delivery(&m, QoS::AtLeastOnce, false, &[], None, now);
            put(
                &store,
                PendingWrite::queued(id.as_bytes(), q as u64 + 1, value),
            );
        }
    }
    assert!(
        store.sync(Duration::from_secs(600)),
        "the store did not finish"
    );
    drop(store);
    thread.join().unwrap();
    println!(
        "wrote {retained} retained messages and {sessions} sessions x {queued} queued in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
