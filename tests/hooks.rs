//! The embedder's hooks (issue 7), with the broker started in-process through the library
//! (`shard::run::start_with_hooks`) and driven over real sockets.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Raw, connect_packet};
use shardmq::auth::{AuthDecision, Authenticators, ClientInfo, Hooks};
use shardmq::config::{Config, DEFAULT_TOML};
use shardmq::protocol::{Packet, Publish, QoS, ReasonCode, Str, Version};

#[derive(Default)]
struct Counting {
    connects: AtomicUsize,
    publishes: AtomicUsize,
    disconnects: AtomicUsize,
}

impl Hooks for Counting {
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthDecision {
        match client.username.as_deref() {
            Some("banned") => AuthDecision::Deny(ReasonCode::BANNED),
            Some(user) => {
                let reversed: String = user.chars().rev().collect();
                if password == Some(reversed.as_bytes()) {
                    AuthDecision::Allow
                } else {
                    AuthDecision::Default
                }
            }
            None => AuthDecision::Default,
        }
    }

    fn authorize_publish(&self, _: &ClientInfo, topic: &str) -> bool {
        !topic.starts_with("admin/")
    }

    fn on_connect(&self, c: &ClientInfo) {
        assert!(c.peer.is_some(), "the hooks see the remote address");
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    fn on_publish(&self, _: &ClientInfo, topic: &str, _: &[u8]) {
        assert!(!topic.starts_with("admin/"), "only authorized publishes");
        self.publishes.fetch_add(1, Ordering::Relaxed);
    }

    fn on_disconnect(&self, _: &ClientInfo, _: &str) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
    }
}

fn login(addr: std::net::SocketAddr, user: &str, password: &str) -> (Raw, ReasonCode) {
    let mut raw = Raw::connect(addr, Version::V5);
    let mut c = connect_packet(Version::V5, &format!("hooks-{user}-{password}"), true, 30);
    if let Packet::Connect(c) = &mut c {
        c.username = Some(Str::new(user.to_string().into()).unwrap());
        c.password = Some(bytes::Bytes::from(password.to_string()));
    }
    raw.send(&c);
    match raw.recv() {
        Some(Packet::ConnAck(a)) => (raw, a.reason),
        other => panic!("{other:?}"),
    }
}

fn publish(raw: &mut Raw, topic: &'static str) -> ReasonCode {
    raw.send(&Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        topic: topic.into(),
        packet_id: 1,
        payload: bytes::Bytes::from_static(b"x"),
        ..Default::default()
    }));
    match raw.recv() {
        Some(Packet::PubAck(a)) => a.reason,
        other => panic!("{other:?}"),
    }
}

#[test]
fn hooks_authenticate_authorize_and_hear_what_happens() {
    let mut config = Config::from_toml(DEFAULT_TOML, "defaults").unwrap();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.shards = 2;
    config.pin = false;
    config.persistence.enabled = false;
    // Without the hooks' say-so and without a password file, nobody gets in.
    config.auth.allow_anonymous = Some(false);
    let hooks = Arc::new(Counting::default());
    let broker = shardmq::shard::run::start_with_hooks(
        config,
        Arc::new(Authenticators::new()),
        Some(hooks.clone()),
    )
    .unwrap();
    let addr = broker.addrs[0];
    let (mut alice, reason) = login(addr, "alice", "ecila");
    assert_eq!(reason, ReasonCode::SUCCESS, "the hook allowed her");
    assert_eq!(
        login(addr, "banned", "dennab").1,
        ReasonCode::BANNED,
        "the hook's reason"
    );
    assert_eq!(
        login(addr, "alice", "wrong").1,
        ReasonCode::NOT_AUTHORIZED,
        "no opinion: the built-in rules (anonymous off, no password file) refuse"
    );
    assert_eq!(publish(&mut alice, "admin/x"), ReasonCode::NOT_AUTHORIZED);
    assert_eq!(
        publish(&mut alice, "a/b"),
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(hooks.connects.load(Ordering::Relaxed), 1);
    assert_eq!(hooks.publishes.load(Ordering::Relaxed), 1);
    drop(alice);
    let deadline = std::time::Instant::now() + common::WAIT;
    while hooks.disconnects.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "on_disconnect was called"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    broker.shutdown(std::time::Duration::from_secs(2));
}
