//! MQTT over TLS (issue 7) with independent clients: `mosquitto_pub` / `mosquitto_sub`
//! (OpenSSL) against the rustls listener, server-only and with client certificates required.
//! Certificates are made fresh per run with rcgen.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Broker, temp_dir};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 / localhost and a client certificate, as PEM
/// files in `dir`.
fn pki(dir: &Path) -> Pki {
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "shardmq test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (sc, sk) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
    let (cc, ck) = leaf(vec![], "device-1");
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", sc),
        server_key: write("server.key", sk),
        client_cert: write("client.pem", cc),
        client_key: write("client.key", ck),
    }
}

/// A broker with a plain listener (the harness's) and a TLS one; returns it and the TLS port.
fn tls_broker(dir: &Path, pki: &Pki, require: bool) -> (Broker, u16) {
    let config = dir.join("shardmq.toml");
    let mut text = format!(
        "[tls]\nlisten = [\"127.0.0.1:0\"]\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string()
    );
    if require {
        text += &format!(
            "ca_file = {:?}\nrequire_certificate = true\n",
            pki.ca.display().to_string()
        );
    }
    std::fs::write(&config, text).unwrap();
    let b = Broker::start(2, &["--config", config.to_str().unwrap()]);
    // The TLS listener is announced right after the plain one.
    let line = b
        .log
        .recv_timeout(common::WAIT)
        .expect("the TLS listener is logged");
    let port = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("not a listener line: {line}"))
        .port();
    assert!(line.contains("mqtt over tls"), "{line}");
    (b, port)
}

fn mosquitto(tool: &str, port: u16, args: &[&str]) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    c
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null())
        .output()
        .expect("run a mosquitto client")
}

#[test]
fn mosquitto_clients_talk_over_tls_and_to_plain_tcp_clients() {
    let dir = temp_dir("tls");
    let pki = pki(&dir);
    let (b, port) = tls_broker(&dir, &pki, false);
    let ca = pki.ca.to_str().unwrap();
    // A subscriber over TLS, another over plain TCP; one publish over TLS reaches both.
    let tls_sub = mosquitto(
        "mosquitto_sub",
        port,
        &["--cafile", ca, "-t", "t/#", "-C", "1", "-W", "10"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let tcp_sub = mosquitto(
        "mosquitto_sub",
        b.port(),
        &["-t", "t/#", "-C", "1", "-W", "10"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = run(mosquitto(
        "mosquitto_pub",
        port,
        &["--cafile", ca, "-t", "t/x", "-m", "over tls", "-q", "1"],
    ));
    assert!(out.status.success(), "{out:?}");
    for sub in [tls_sub, tcp_sub] {
        let out = sub.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");
    }
    // A client that does not trust the server's CA is refused by its own TLS check.
    let stranger = dir.join("stranger.pem");
    std::fs::write(
        &stranger,
        std::fs::read_to_string(&pki.client_cert).unwrap(),
    )
    .unwrap();
    let out = run(mosquitto(
        "mosquitto_pub",
        port,
        &[
            "--cafile",
            stranger.to_str().unwrap(),
            "-t",
            "t/x",
            "-m",
            "x",
        ],
    ));
    assert!(!out.status.success(), "{out:?}");
    // Plain MQTT on the TLS port is not a TLS handshake: closed, and the broker goes on.
    let out = run(mosquitto("mosquitto_pub", port, &["-t", "t/x", "-m", "x"]));
    assert!(!out.status.success(), "{out:?}");
    let out = run(mosquitto(
        "mosquitto_pub",
        port,
        &["--cafile", ca, "-t", "t/x", "-m", "still"],
    ));
    assert!(out.status.success(), "{out:?}");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_required_client_certificate_is_checked() {
    let dir = temp_dir("tls-client-cert");
    let pki = pki(&dir);
    let (b, port) = tls_broker(&dir, &pki, true);
    let ca = pki.ca.to_str().unwrap();
    let without = run(mosquitto(
        "mosquitto_pub",
        port,
        &["--cafile", ca, "-t", "t", "-m", "x"],
    ));
    assert!(
        !without.status.success(),
        "no client certificate: {without:?}"
    );
    let with = run(mosquitto(
        "mosquitto_pub",
        port,
        &[
            "--cafile",
            ca,
            "--cert",
            pki.client_cert.to_str().unwrap(),
            "--key",
            pki.client_key.to_str().unwrap(),
            "-t",
            "t",
            "-m",
            "x",
        ],
    ));
    assert!(
        with.status.success(),
        "with the client certificate: {with:?}"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
