//! The broker driven by mosquitto's own command-line clients (`mosquitto_pub`,
//! `mosquitto_sub`), an implementation independent of ours, across shards.
//!
//! `scripts/test.sh` installs `mosquitto-clients`; run outside it, the tests fail with a
//! message saying how to install them (set `SHARDMQ_SKIP_MOSQUITTO=1` to skip instead).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Broker;

fn have_clients() -> bool {
    common::have_tool("mosquitto_pub", "mosquitto-clients")
}

/// Starts `mosquitto_sub` for `count` messages on `filter`, waits until it has subscribed.
fn sub(
    b: &Broker,
    id: &str,
    filter: &str,
    qos: u8,
    count: usize,
    extra: &[&str],
) -> std::process::Child {
    let child = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.port().to_string()])
        .args(["-i", id, "-t", filter, "-q", &qos.to_string()])
        .args(["-C", &count.to_string(), "-W", "10", "-v"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto_sub");
    // mosquitto_sub prints nothing on SUBACK; a short pause lets it subscribe.
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn publish(b: &Broker, topic: &str, qos: u8, msg: &str, extra: &[&str]) {
    let st = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &b.port().to_string()])
        .args(["-t", topic, "-q", &qos.to_string(), "-m", msg])
        .args(extra)
        .status()
        .expect("run mosquitto_pub");
    assert!(st.success(), "mosquitto_pub failed: {st}");
}

fn output(child: std::process::Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn mosquitto_pub_to_mosquitto_sub_at_every_qos_and_version() {
    if !have_clients() {
        return;
    }
    for shards in [1, 3] {
        let b = Broker::start(shards, &[]);
        for (v, qos) in [
            ("mqttv311", 0),
            ("mqttv311", 1),
            ("mqttv31", 2),
            ("mqttv5", 1),
            ("mqttv5", 2),
        ] {
            let subs: Vec<_> = (0..4)
                .map(|i| sub(&b, &format!("s{i}"), "m/#", qos, 1, &["-V", v]))
                .collect();
            publish(&b, "m/x", qos, &format!("hello-{v}-{qos}"), &["-V", v]);
            for s in subs {
                assert_eq!(output(s), vec![format!("m/x hello-{v}-{qos}")]);
            }
        }
    }
}

#[test]
fn mosquitto_retained_and_persistent_session() {
    if !have_clients() {
        return;
    }
    let b = Broker::start(3, &[]);
    publish(&b, "ret/a", 1, "kept", &["-r"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        output(sub(&b, "r1", "ret/#", 1, 1, &[])),
        vec!["ret/a kept"]
    );
    // A persistent session (-c) queues while away.
    let first = sub(&b, "durable", "q/x", 1, 1, &["-c"]);
    publish(&b, "q/x", 1, "one", &[]);
    assert_eq!(output(first), vec!["q/x one"]);
    publish(&b, "q/x", 1, "while-away", &[]);
    let back = sub(&b, "durable", "q/x", 1, 1, &["-c"]);
    assert_eq!(output(back), vec!["q/x while-away"]);
}
