//! MQTT over TLS (issue 7) with independent clients: `mosquitto_pub` / `mosquitto_sub`
//! (OpenSSL) and rumqttc (tokio-rustls) against the rustls listener, server-only and with
//! client certificates required, the certificate's common name as user name, and SIGHUP
//! reloads. Certificates are made fresh per run with rcgen.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Broker, temp_dir};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rumqttc::{
    Client, Connection, Event, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
/// `extra` is appended to the configuration (inside `[tls]`, or new sections).
fn tls_broker(dir: &Path, pki: &Pki, require: bool, extra: &str) -> (Broker, u16) {
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
    text += extra;
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

/// Sends SIGHUP and waits until the broker logs that it reloaded the TLS files.
fn reload(b: &Broker) {
    let pid = b.child.id().to_string();
    let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + common::WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = b.log.recv_timeout(left).expect("the reload is logged");
        if line.contains("SIGHUP: reloaded tls.cert_file, tls.key_file and tls.ca_file") {
            return;
        }
    }
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

/// Runs `mosquitto_pub` against `port` with `args`.
fn publish(port: u16, args: &[&str]) -> Output {
    run(mosquitto("mosquitto_pub", port, args))
}

/// `mosquitto_sub` for one message on `topic` (over TLS when `ca` is given), started.
fn subscriber(port: u16, ca: Option<&str>, topic: &str) -> std::process::Child {
    let mut args = vec!["-t", topic, "-C", "1", "-W", "10"];
    if let Some(ca) = ca {
        args.extend(["--cafile", ca]);
    }
    mosquitto("mosquitto_sub", port, &args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn mosquitto_clients_talk_over_tls_and_to_plain_tcp_clients() {
    let dir = temp_dir("tls");
    let pki = pki(&dir);
    let (b, port) = tls_broker(&dir, &pki, false, "");
    let ca = pki.ca.to_str().unwrap();
    // A subscriber over TLS, another over plain TCP; one publish over TLS reaches both.
    let tls_sub = subscriber(port, Some(ca), "t/#");
    let tcp_sub = subscriber(b.port(), None, "t/#");
    std::thread::sleep(Duration::from_millis(500));
    let out = publish(
        port,
        &["--cafile", ca, "-t", "t/x", "-m", "over tls", "-q", "1"],
    );
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
    let out = publish(
        port,
        &[
            "--cafile",
            stranger.to_str().unwrap(),
            "-t",
            "t/x",
            "-m",
            "x",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    // Plain MQTT on the TLS port is not a TLS handshake: closed, and the broker goes on.
    let out = publish(port, &["-t", "t/x", "-m", "x"]);
    assert!(!out.status.success(), "{out:?}");
    let out = publish(port, &["--cafile", ca, "-t", "t/x", "-m", "still"]);
    assert!(out.status.success(), "{out:?}");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_required_client_certificate_is_checked() {
    let dir = temp_dir("tls-client-cert");
    let pki = pki(&dir);
    let (b, port) = tls_broker(&dir, &pki, true, "");
    let ca = pki.ca.to_str().unwrap();
    let old_ca_pem = std::fs::read_to_string(&pki.ca).unwrap();
    let without = publish(port, &["--cafile", ca, "-t", "t", "-m", "x"]);
    assert!(
        !without.status.success(),
        "no client certificate: {without:?}"
    );
    let with = publish(
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
    );
    assert!(
        with.status.success(),
        "with the client certificate: {with:?}"
    );
    // SIGHUP reloads tls.ca_file: a client certificate from the old CA is refused after it,
    // one from the new CA accepted (the server certificate stays the old CA's).
    let fresh_dir = dir.join("fresh");
    std::fs::create_dir_all(&fresh_dir).unwrap();
    let fresh = crate::pki(&fresh_dir);
    std::fs::copy(&fresh.ca, &pki.ca).unwrap();
    reload(&b);
    let client = |p: &Pki| {
        let (cert, key) = (
            p.client_cert.to_str().unwrap(),
            p.client_key.to_str().unwrap(),
        );
        let server_ca = fresh_dir.join("server-ca.pem");
        publish(
            port,
            &[
                "--cafile",
                server_ca.to_str().unwrap(),
                "--cert",
                cert,
                "--key",
                key,
                "-t",
                "t",
                "-m",
                "x",
            ],
        )
    };
    // The server certificate was signed by the CA that is now gone from ca.pem.
    std::fs::write(fresh_dir.join("server-ca.pem"), old_ca_pem).unwrap();
    let old_client = client(&pki);
    assert!(
        !old_client.status.success(),
        "old CA's client: {old_client:?}"
    );
    let new_client = client(&fresh);
    assert!(
        new_client.status.success(),
        "new CA's client: {new_client:?}"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP reloads the certificate and key: new handshakes get the new ones, an open TLS
/// connection stays up.
#[test]
fn sighup_reloads_the_certificate() {
    let dir = temp_dir("tls-reload");
    let old = pki(&dir);
    let (b, port) = tls_broker(&dir, &old, false, "");
    let ca = old.ca.to_str().unwrap();
    let held = subscriber(port, Some(ca), "r");
    std::thread::sleep(Duration::from_millis(300));
    // A new CA and server certificate, written over the configured files.
    let fresh_dir = dir.join("fresh");
    std::fs::create_dir_all(&fresh_dir).unwrap();
    let fresh = pki(&fresh_dir);
    std::fs::copy(&fresh.server_cert, &old.server_cert).unwrap();
    std::fs::copy(&fresh.server_key, &old.server_key).unwrap();
    reload(&b);
    let out = publish(port, &["--cafile", ca, "-t", "r", "-m", "x"]);
    assert!(
        !out.status.success(),
        "the old CA no longer matches: {out:?}"
    );
    let new_ca = fresh.ca.to_str().unwrap();
    let out = publish(
        port,
        &[
            "--cafile",
            new_ca,
            "-t",
            "r",
            "-m",
            "after reload",
            "-q",
            "1",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = held.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "after reload",
        "the connection made before the reload stayed up"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rumqttc client over rustls (ring) trusting `pki`'s CA, presenting its client
/// certificate when `with_cert`.
fn rumqttc_tls(port: u16, pki: &Pki, id: &str, with_cert: bool) -> (Client, Connection) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_cert {
        let chain = CertificateDer::pem_file_iter(&pki.client_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&pki.client_key).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    Client::new(o, 100)
}

/// Drives `conn` until `f` accepts an event; panics on an error or after [`common::WAIT`].
fn until(conn: &mut Connection, mut f: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv_timeout(left) {
            Ok(Ok(e)) if f(&e) => return e,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection error: {e:?}"),
            Err(_) => panic!("timed out waiting for an event"),
        }
    }
}

fn suback(conn: &mut Connection) -> Vec<SubscribeReasonCode> {
    match until(conn, |e| matches!(e, Event::Incoming(Packet::SubAck(_)))) {
        Event::Incoming(Packet::SubAck(a)) => a.return_codes,
        _ => unreachable!(),
    }
}

fn next_payload(conn: &mut Connection) -> (String, Vec<u8>) {
    match until(conn, |e| matches!(e, Event::Incoming(Packet::Publish(_)))) {
        Event::Incoming(Packet::Publish(p)) => (p.topic, p.payload.to_vec()),
        _ => unreachable!(),
    }
}

#[test]
fn rumqttc_talks_over_rustls_with_tcp_clients() {
    let dir = temp_dir("tls-rumqttc");
    let pki = pki(&dir);
    let (b, port) = tls_broker(&dir, &pki, false, "");
    let (client, mut conn) = rumqttc_tls(port, &pki, "rustls-1", false);
    until(&mut conn, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    });
    client.subscribe("rt/#", QoS::AtLeastOnce).unwrap();
    assert_eq!(
        suback(&mut conn),
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // From itself over TLS, then from a plain TCP client.
    client
        .publish("rt/self", QoS::AtLeastOnce, false, vec![7u8; 64 * 1024])
        .unwrap();
    assert_eq!(
        next_payload(&mut conn),
        ("rt/self".into(), vec![7u8; 64 * 1024])
    );
    let out = publish(b.port(), &["-t", "rt/tcp", "-m", "from tcp", "-q", "1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        next_payload(&mut conn),
        ("rt/tcp".into(), b"from tcp".to_vec())
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tls.use_identity_as_username`: the client certificate's CN (`device-1`) is the user name
/// the ACL sees, with no password and anonymous clients refused; `%u` patterns expand to it.
#[test]
fn use_identity_as_username_takes_the_certificate_common_name() {
    let dir = temp_dir("tls-identity");
    let pki = pki(&dir);
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user device-1\ntopic readwrite fleet/#\n\npattern readwrite own/%u/#\n",
    )
    .unwrap();
    let passwords = dir.join("passwords");
    std::fs::write(&passwords, "").unwrap();
    let extra = format!(
        "use_identity_as_username = true\n[auth]\nallow_anonymous = false\npassword_file = {:?}\nacl_file = {:?}\n",
        passwords.display().to_string(),
        acl.display().to_string()
    );
    let (b, port) = tls_broker(&dir, &pki, true, &extra);
    let (client, mut conn) = rumqttc_tls(port, &pki, "identity-1", true);
    until(&mut conn, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    });
    client
        .subscribe("own/device-1/#", QoS::AtLeastOnce)
        .unwrap();
    assert_eq!(
        suback(&mut conn),
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    client
        .subscribe("own/device-2/#", QoS::AtLeastOnce)
        .unwrap();
    assert_eq!(
        suback(&mut conn),
        vec![SubscribeReasonCode::Failure],
        "not device-1's"
    );
    client.subscribe("fleet/#", QoS::AtLeastOnce).unwrap();
    assert_eq!(
        suback(&mut conn),
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    client
        .publish("own/device-1/state", QoS::AtLeastOnce, false, "on")
        .unwrap();
    assert_eq!(
        next_payload(&mut conn),
        ("own/device-1/state".into(), b"on".to_vec())
    );
    // The plain listener still wants a user name and password.
    let out = publish(b.port(), &["-t", "fleet/x", "-m", "x"]);
    assert!(!out.status.success(), "anonymous over TCP: {out:?}");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
