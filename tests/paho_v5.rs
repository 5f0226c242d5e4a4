//! MQTT 5.0 features driven by a second independent client, Python paho-mqtt 2.1, where
//! rumqttc cannot send or see the detail (DISCONNECT with properties or reason 0x04, a
//! DISCONNECT that carries only its reason code, outgoing Correlation Data answered by another
//! client, ...). Each script in `tests/paho/` takes the broker's port, exits 0 on success and
//! prints what failed otherwise; it bounds its own run time, and so does this harness.
//!
//! Every script runs against a fresh broker with one shard and one with three.
//! `scripts/test.sh` installs paho-mqtt when it is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Broker;

/// Longer than any script's own watchdog (20 s), so a script reports its own timeout.
const SCRIPT_LIMIT: Duration = Duration::from_secs(40);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/paho")
        .join(name)
}

/// Fails with what to do when python3 or paho-mqtt is missing.
fn require_paho() {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import paho.mqtt, sys; sys.exit(paho.mqtt.__version__ < '2')",
        ])
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python paho-mqtt 2.x is not installed ({}); run scripts/test.sh, which installs \
             it (pip install paho-mqtt==2.1.0)",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "python3 not found ({e}); install Python 3 and run scripts/test.sh, which \
             installs paho-mqtt"
        ),
    }
}

/// Runs `tests/paho/NAME` against a broker, returning its exit status and output.
fn run_script(name: &str, b: &Broker) -> (Option<i32>, String) {
    let mut cmd = Command::new("python3");
    cmd.arg(script(name))
        .arg(b.port().to_string())
        // No __pycache__ left in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    common::run_bounded(cmd, SCRIPT_LIMIT)
}

/// Runs one script against a one-shard and a three-shard broker, side by side.
fn paho(name: &str) {
    require_paho();
    let failures: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = [1usize, 3]
            .into_iter()
            .map(|shards| {
                s.spawn(move || {
                    let b = Broker::start(shards, &[]);
                    (shards, run_script(name, &b))
                })
            })
            .collect();
        runs.into_iter()
            .filter_map(|r| {
                let (shards, (status, output)) = r.join().expect("harness thread");
                match status {
                    Some(0) => None,
                    Some(code) => Some(format!(
                        "{name} with {shards} shard(s): exit status {code}\n{output}"
                    )),
                    None => Some(format!(
                        "{name} with {shards} shard(s): killed after {SCRIPT_LIMIT:?} \
                         (or by a signal)\n{output}"
                    )),
                }
            })
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn paho_disconnect_changes_the_session_expiry() {
    paho("session_expiry.py");
}

#[test]
fn paho_topic_aliases_from_the_client() {
    paho("topic_alias.py");
}

#[test]
fn paho_will_on_disconnect_with_will_message() {
    paho("will.py");
}

#[test]
fn paho_request_response() {
    paho("request_response.py");
}

#[test]
fn paho_receive_maximum_with_manual_acks() {
    paho("receive_maximum.py");
}

#[test]
fn paho_publish_properties_and_subscription_identifiers() {
    paho("properties.py");
}

#[test]
fn paho_server_disconnect_on_takeover() {
    paho("server_disconnect.py");
}
