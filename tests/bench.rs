//! `shardmq bench` against a real broker: every scenario runs briefly, its checks pass, and
//! its JSON line carries the figures scripts/bench.sh reads. Also bad flags and an absent
//! broker give one line and a non-zero status.

mod common;

use std::process::Command;

use common::Broker;

/// Runs `shardmq bench ARGS -p PORT` and returns (exit status, stdout, stderr).
fn bench(broker: &Broker, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("bench")
        .args(args)
        .args(["-p", &broker.port().to_string(), "--quiet"])
        .args(["--broker-pid", &broker.child.id().to_string()])
        .output()
        .expect("run shardmq bench");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn every_message_scenario_delivers_and_checks() {
    let broker = Broker::start(2, &[]);
    for (args, deliveries_per_publish) in [
        (&["pairs", "-n", "4", "-q", "1"][..], 1),
        (&["fanin", "-P", "6", "-S", "2", "-q", "0"], 2),
        (&["fanout", "-P", "1", "-S", "5", "-q", "2", "-s", "100"], 5),
        (
            &["pairs", "-n", "3", "-q", "1", "--mqtt", "5", "-t", "2"],
            1,
        ),
        (&["pairs", "-n", "2", "-q", "0", "-r", "2000"], 1),
        // Persistent sessions: every delivery goes through the broker's store.
        (&["pairs", "-n", "3", "-q", "1", "--persistent"], 1),
        (
            &["pairs", "-n", "3", "-q", "2", "--persistent", "--mqtt", "5"],
            1,
        ),
    ] {
        let mut all = args.to_vec();
        all.extend(["-d", "1", "--warmup", "0.2"]);
        let (code, out, err) = bench(&broker, &all);
        assert_eq!(code, 0, "{args:?}\n{out}\n{err}");
        let r = json(&out);
        assert_eq!(r["ok"], true, "{args:?}: {out}");
        assert_eq!(r["lost"], 0, "{args:?}: {out}");
        assert_eq!(r["duplicates"], 0, "{args:?}: {out}");
        assert_eq!(r["reordered"], 0, "{args:?}: {out}");
        let sent = r["sent"].as_u64().unwrap();
        assert!(sent > 0, "{args:?}: nothing sent");
        assert_eq!(
            r["delivered"].as_u64().unwrap(),
            sent * deliveries_per_publish
        );
        assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["latency"]["samples"].as_u64().unwrap() > 0);
        assert!(r["broker"]["rss_max"].as_u64().unwrap() > 0);
        assert!(out.contains("result      ok"), "{out}");
    }
}

#[test]
fn conn_opens_and_holds_connections() {
    let broker = Broker::start(2, &[]);
    let (code, out, err) = bench(&broker, &["conn", "-n", "300", "-d", "0.5"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let r = json(&out);
    assert_eq!(r["delivered"], 300);
    assert!(r["broker"]["rss_per_conn"].as_f64().is_some());
    assert_eq!(r["latency"]["samples"], 300);
}

#[test]
fn shared_group_splits_the_stream_without_loss() {
    for shards in [1, 3] {
        let broker = Broker::start(shards, &[]);
        let (code, out, err) = bench(
            &broker,
            &["shared", "-q", "1", "-d", "1", "--warmup", "0.2"],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        let r = json(&out);
        assert_eq!(r["lost"], 0, "{out}");
        assert_eq!(r["duplicates"], 0, "{out}");
        assert!(r["delivered"].as_u64().unwrap() > 0, "{out}");
    }
}

#[test]
fn refused_subscriptions_and_bad_flags_fail_with_one_line() {
    // A broker with shared subscriptions turned off refuses them: the bench says so.
    let config = std::env::temp_dir().join(format!("shardmq-noshare-{}.toml", std::process::id()));
    std::fs::write(&config, "[mqtt]\nshared_subscriptions = false\n").unwrap();
    let broker = Broker::start(1, &["--config", config.to_str().unwrap()]);
    let (code, _, err) = bench(&broker, &["shared", "-d", "0.5"]);
    assert_eq!(code, 1);
    assert!(err.contains("refused"), "{err}");
    let _ = std::fs::remove_file(&config);
    let (code, _, err) = bench(&broker, &["pairs", "-s", "4"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("shardmq bench: --payload"), "{err}");
    drop(broker);
    let out = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["bench", "pairs", "-n", "1", "-p", "1", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connect to 127.0.0.1:1"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
