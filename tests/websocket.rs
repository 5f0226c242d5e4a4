//! MQTT over WebSocket and secure WebSocket (issue 8) over real sockets.
//!
//! - The RFC 6455 edges byte by byte, with a client made of std sockets and the crate's own
//!   WebSocket codec in its client role: handshake refusals and their HTTP status, an MQTT
//!   packet split over frames with a Ping between them, several packets in one frame, each
//!   framing violation answered with its close code while other clients go on, the close
//!   handshake both ways, WebSocket and TCP clients talking to each other, and the same over
//!   TLS (rustls client).
//! - Independent clients: paho-mqtt (`transport="websockets"`, `tests/paho/websocket.py`),
//!   MQTT.js under Node (`tests/websocket/mqttjs.mjs`) and MQTT.js in headless Chromium driven
//!   by playwright-core (`tests/websocket/browser.mjs`: the page shows a message a TCP client
//!   published). `scripts/test.sh` installs paho-mqtt, the npm packages and Chromium.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{Broker, Raw, WAIT, connect_packet, temp_dir};
use shardmq::protocol::{Packet, Publish, QoS, Subscribe, SubscriptionOptions, Version, decode};
use shardmq::websocket::{Control, Decoder, Role, encode_masked, opcode};

/// The listener `over` ("websocket", "secure websocket", "tls") the broker logged next.
fn listener(b: &Broker, over: &str) -> u16 {
    let line = b.line_containing(&format!("(mqtt over {over},"));
    let addr = line.split("listening on ").nth(1).unwrap();
    let addr: std::net::SocketAddr = addr.split_whitespace().next().unwrap().parse().unwrap();
    addr.port()
}

/// A broker with a WebSocket listener (and `extra` config); returns it and the port.
fn ws_broker(shards: usize, extra: &str) -> (Broker, u16, PathBuf) {
    let dir = temp_dir("ws");
    let config = dir.join("shardmq.toml");
    std::fs::write(
        &config,
        format!("[websocket]\nlisten = [\"127.0.0.1:0\"]\n{extra}"),
    )
    .unwrap();
    let b = Broker::start(shards, &["--config", config.to_str().unwrap()]);
    let port = listener(&b, "websocket");
    (b, port, dir)
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A WebSocket client over any byte stream, speaking MQTT in binary frames.
struct Ws<S: Read + Write> {
    stream: S,
    decoder: Decoder,
    raw: BytesMut,
    mqtt: BytesMut,
    controls: Vec<Control>,
    eof: bool,
}

fn request(path: &str, protocol: Option<&str>, key: &str) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        r += &format!("Sec-WebSocket-Protocol: {p}\r\n");
    }
    r + "\r\n"
}

/// Sends `req` and reads the HTTP response head; returns it and what followed it.
fn http<S: Read + Write>(stream: &mut S, req: &[u8]) -> (String, Vec<u8>) {
    stream.write_all(req).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            return (head, got[end + 4..].to_vec());
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&got).into_owned(), Vec::new()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

impl<S: Read + Write> Ws<S> {
    /// Upgrades `stream` offering subprotocol `mqtt`; panics unless the broker switches.
    fn open(mut stream: S) -> Self {
        let (head, rest) = http(
            &mut stream,
            request("/mqtt", Some("mqtt"), "dGhlIHNhbXBsZSBub25jZQ==").as_bytes(),
        );
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        assert!(head.contains("Sec-WebSocket-Protocol: mqtt"), "{head}");
        Ws {
            stream,
            decoder: Decoder::new(Role::Client, u64::MAX),
            raw: BytesMut::from(&rest[..]),
            mqtt: BytesMut::new(),
            controls: Vec::new(),
            eof: false,
        }
    }

    fn frame(&mut self, op: u8, fin: bool, payload: &[u8]) {
        let mut out = BytesMut::new();
        encode_masked(op, fin, payload, MASK, &mut out);
        self.stream.write_all(&out).unwrap();
    }

    fn send(&mut self, p: &Packet, version: Version) {
        let bytes = p.to_bytes(version).unwrap();
        self.frame(opcode::BINARY, true, &bytes);
    }

    /// Reads and decodes once more; false at EOF.
    fn read_more(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                self.eof = true;
                return false;
            }
            Ok(n) => self.raw.extend_from_slice(&chunk[..n]),
        }
        while let Some(c) = self
            .decoder
            .decode(&mut self.raw, &mut self.mqtt)
            .expect("the broker's frames follow RFC 6455")
        {
            self.controls.push(c);
        }
        true
    }

    /// The next MQTT packet, or `None` at EOF.
    fn recv(&mut self, version: Version) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.mqtt, version, u32::MAX).unwrap() {
                return Some(p);
            }
            if !self.read_more() {
                return None;
            }
        }
    }

    /// Reads to EOF; returns the close code the broker sent (panics if it sent no Close).
    fn close_code(&mut self) -> Option<u16> {
        while self.read_more() {}
        self.controls
            .iter()
            .find_map(|c| match c {
                Control::Close { code, .. } => Some(*code),
                _ => None,
            })
            .expect("a Close frame before the end")
    }
}

fn subscribe(topic: &'static str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(topic.into(), SubscriptionOptions::qos(qos))],
        properties: Default::default(),
    })
}

fn publish(topic: &'static str, qos: QoS, id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        qos,
        topic: topic.into(),
        packet_id: id,
        payload: bytes::Bytes::copy_from_slice(payload),
        ..Default::default()
    })
}

#[test]
fn handshake_refusals_get_the_rfc_status_and_close() {
    let (b, port, dir) = ws_broker(1, "");
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let cases: Vec<(String, &str)> = vec![
        (request("/other", Some("mqtt"), key), "HTTP/1.1 404"),
        (request("/mqtt", Some("chat"), key), "HTTP/1.1 400"),
        (request("/mqtt", Some("mqtt"), "c2hvcnQ="), "HTTP/1.1 400"),
        (
            request("/mqtt", Some("mqtt"), key).replace("Version: 13", "Version: 8"),
            "HTTP/1.1 426",
        ),
        (
            request("/mqtt", Some("mqtt"), key).replace("GET", "POST"),
            "HTTP/1.1 405",
        ),
        (
            request("/mqtt", Some("mqtt"), key).replace("Upgrade: websocket\r\n", ""),
            "HTTP/1.1 4",
        ),
        (
            format!(
                "GET /mqtt HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n",
                "a".repeat(20_000)
            ),
            "HTTP/1.1 431",
        ),
        ("SSH-2.0-OpenSSH_9.2\r\n\r\n".to_string(), "HTTP/1.1 400"),
    ];
    for (req, want) in cases {
        let mut s = tcp(port);
        let (head, _) = http(&mut s, req.as_bytes());
        assert!(head.starts_with(want), "{want} expected, got {head:?}");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    // Only `mqttv3.1` offered: it is chosen.
    let mut s = tcp(port);
    let (head, _) = http(&mut s, request("/mqtt", Some("mqttv3.1"), key).as_bytes());
    assert!(head.contains("Sec-WebSocket-Protocol: mqttv3.1"), "{head}");
    // The broker still serves a proper client.
    let mut ws = Ws::open(tcp(port));
    ws.send(
        &connect_packet(Version::V3_1_1, "after-refusals", true, 30),
        Version::V3_1_1,
    );
    assert!(matches!(ws.recv(Version::V3_1_1), Some(Packet::ConnAck(_))));
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn packets_split_over_frames_or_packed_in_one_and_tcp_clients_meet_websocket_ones() {
    let (b, port, dir) = ws_broker(2, "");
    let v = Version::V5;
    let mut ws = Ws::open(tcp(port));
    // CONNECT in three frames of one message, a Ping between the fragments (§5.4).
    let connect = connect_packet(v, "ws-split", true, 30).to_bytes(v).unwrap();
    ws.frame(opcode::BINARY, false, &connect[..3]);
    ws.frame(opcode::PING, true, b"are you there");
    ws.frame(opcode::CONTINUATION, false, &connect[3..7]);
    ws.frame(opcode::CONTINUATION, true, &connect[7..]);
    assert!(matches!(ws.recv(v), Some(Packet::ConnAck(_))));
    // SUBSCRIBE and a PUBLISH to the same topic, and half a PING, in one frame; the other
    // half of the PINGREQ in the next frame.
    let mut batch = subscribe("split/#", QoS::AtLeastOnce)
        .to_bytes(v)
        .unwrap()
        .to_vec();
    batch.extend_from_slice(
        &publish("split/1", QoS::AtLeastOnce, 9, b"self")
            .to_bytes(v)
            .unwrap(),
    );
    batch.push(0xC0);
    ws.frame(opcode::BINARY, true, &batch);
    ws.frame(opcode::BINARY, true, &[0x00]);
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(ws.recv(v).expect("SUBACK, PUBACK, PUBLISH, PINGRESP"));
    }
    assert!(
        seen.iter().any(|p| matches!(p, Packet::SubAck(_))),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id == 9)),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|p| matches!(p, Packet::PingResp)),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|p| matches!(p, Packet::Publish(m) if &m.payload[..] == b"self")),
        "{seen:?}"
    );
    // The Ping between the CONNECT's fragments was answered.
    assert!(ws.controls.iter().any(|c| matches!(c, Control::Pong)));
    // A TCP client publishes to the WebSocket subscriber (a 256 KiB payload spans many
    // reads), and subscribes to what the WebSocket client publishes.
    let mut t = Raw::connect(b.addr, v);
    t.send(&connect_packet(v, "tcp-peer", true, 30));
    assert!(matches!(t.recv(), Some(Packet::ConnAck(_))));
    t.send(&subscribe("to-tcp", QoS::AtLeastOnce));
    assert!(matches!(t.recv(), Some(Packet::SubAck(_))));
    let big = vec![0x5a; 256 * 1024];
    t.send(&publish("split/tcp", QoS::AtMostOnce, 0, &big));
    match ws.recv(v) {
        Some(Packet::Publish(m)) => assert!(m.payload[..] == big[..]),
        other => panic!("{other:?}"),
    }
    ws.send(&publish("to-tcp", QoS::AtMostOnce, 0, b"from ws"), v);
    match t.recv() {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"from ws"),
        other => panic!("{other:?}"),
    }
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_ping_is_answered_with_its_payload() {
    let (b, port, dir) = ws_broker(1, "");
    let mut ws = Ws::open(tcp(port));
    ws.frame(opcode::PING, true, b"hello");
    while !ws.controls.iter().any(|c| matches!(c, Control::Pong)) {
        assert!(ws.read_more(), "no Pong");
    }
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn framing_violations_get_their_close_code_and_others_are_served() {
    // A 64 KiB frame limit, so an oversized frame is cheap to announce.
    let (b, port, dir) = ws_broker(2, "max_frame_size = 65536\n");
    let v = Version::V3_1_1;
    let mut bystander = Ws::open(tcp(port));
    bystander.send(&connect_packet(v, "bystander", true, 30), v);
    assert!(matches!(bystander.recv(v), Some(Packet::ConnAck(_))));
    bystander.send(&subscribe("still/#", QoS::AtMostOnce), v);
    assert!(matches!(bystander.recv(v), Some(Packet::SubAck(_))));

    let connect = connect_packet(v, "offender", true, 30).to_bytes(v).unwrap();
    type Send = Box<dyn Fn(&mut Ws<TcpStream>)>;
    let cases: Vec<(&str, u16, Send)> = vec![
        (
            "unmasked client frame",
            1002,
            Box::new(|ws| ws.stream.write_all(&[0x82, 0x02, 0xC0, 0x00]).unwrap()),
        ),
        (
            "text frame",
            1003,
            Box::new(|ws| ws.frame(opcode::TEXT, true, b"{}")),
        ),
        (
            "oversized frame",
            1009,
            Box::new(|ws| ws.frame(opcode::BINARY, true, &vec![0; 70_000])),
        ),
        (
            "reserved opcode",
            1002,
            Box::new(|ws| ws.frame(3, true, b"x")),
        ),
        (
            "fragmented ping",
            1002,
            Box::new(|ws| ws.frame(opcode::PING, false, b"x")),
        ),
        (
            "continuation without a start",
            1002,
            Box::new(|ws| ws.frame(opcode::CONTINUATION, true, b"x")),
        ),
    ];
    for (what, code, send) in cases {
        let mut ws = Ws::open(tcp(port));
        ws.frame(opcode::BINARY, true, &connect);
        assert!(matches!(ws.recv(v), Some(Packet::ConnAck(_))), "{what}");
        send(&mut ws);
        assert_eq!(ws.close_code(), Some(code), "{what}");
    }
    // The close handshake: the client's Close (1000) is echoed, then the connection ends.
    let mut ws = Ws::open(tcp(port));
    ws.frame(opcode::CLOSE, true, &1000u16.to_be_bytes());
    assert_eq!(ws.close_code(), Some(1000));
    // The broker ends a connection (the client sent DISCONNECT) with a Close 1000.
    let mut ws = Ws::open(tcp(port));
    ws.send(&connect_packet(v, "leaver", true, 30), v);
    assert!(matches!(ws.recv(v), Some(Packet::ConnAck(_))));
    ws.send(&Packet::Disconnect(Default::default()), v);
    assert_eq!(ws.close_code(), Some(1000));
    // The bystander was served all along.
    let mut t = Raw::connect(b.addr, v);
    t.send(&connect_packet(v, "tcp", true, 30));
    assert!(matches!(t.recv(), Some(Packet::ConnAck(_))));
    t.send(&publish("still/here", QoS::AtMostOnce, 0, b"yes"));
    match bystander.recv(v) {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"yes"),
        other => panic!("{other:?}"),
    }
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

/// A server certificate for 127.0.0.1 and its CA, as PEM files in `dir`.
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "ws test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("server.pem", leaf.pem()),
        write("server.key", key.serialize_pem()),
    )
}

#[test]
fn secure_websocket_carries_mqtt_over_tls() {
    let dir = temp_dir("wss");
    let (ca, cert, key) = pki(&dir);
    let (b, port, cfg_dir) = ws_broker(
        2,
        &format!(
            "tls_listen = [\"127.0.0.1:0\"]\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let _ = port;
    let wss = listener(&b, "secure websocket");
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut ws = Ws::open(rustls::StreamOwned::new(tls, tcp(wss)));
    let v = Version::V5;
    ws.send(&connect_packet(v, "wss-1", true, 30), v);
    assert!(matches!(ws.recv(v), Some(Packet::ConnAck(_))));
    ws.send(&subscribe("wss/#", QoS::AtLeastOnce), v);
    assert!(matches!(ws.recv(v), Some(Packet::SubAck(_))));
    let mut t = Raw::connect(b.addr, v);
    t.send(&connect_packet(v, "tcp", true, 30));
    assert!(matches!(t.recv(), Some(Packet::ConnAck(_))));
    let payload = vec![0xa5; 100_000];
    t.send(&publish("wss/x", QoS::AtLeastOnce, 3, &payload));
    match ws.recv(v) {
        Some(Packet::Publish(m)) => assert!(m.payload[..] == payload[..]),
        other => panic!("{other:?}"),
    }
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(cfg_dir);
}

// ----- independent clients -----

/// Longer than any script's own watchdog, so a script reports its own timeout.
const SCRIPT_LIMIT: Duration = Duration::from_secs(90);

/// Runs `program args` from the repository root, bounded by [`SCRIPT_LIMIT`]; panics with its
/// output unless it exits 0.
fn run(program: &str, args: &[&str]) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    let (status, out) = common::run_bounded(cmd, SCRIPT_LIMIT);
    println!("{out}");
    assert_eq!(status, Some(0), "{program} {args:?} failed:\n{out}");
}

/// Runs the Node script `tests/websocket/NAME` against a broker made for the independent
/// clients.
fn run_node(name: &str) {
    require_node_modules();
    let (b, ws, dir) = client_broker();
    let ws = format!("ws://127.0.0.1:{ws}/mqtt");
    let tcp = format!("mqtt://127.0.0.1:{}", b.port());
    let script = format!("tests/websocket/{name}");
    run("node", &[&script, "--ws-url", &ws, "--tcp-url", &tcp]);
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

/// Fails with what to do when the npm packages are not installed.
fn require_node_modules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/websocket/node_modules");
    assert!(
        dir.join("mqtt").is_dir() && dir.join("playwright-core").is_dir(),
        "tests/websocket/node_modules is missing: run scripts/test.sh (npm ci in tests/websocket)"
    );
}

/// A broker for the independent clients: 1 MiB payloads need more than the default packet
/// size.
fn client_broker() -> (Broker, u16, PathBuf) {
    ws_broker(2, "[limits]\nmax_packet_size = 4194304\n")
}

#[test]
fn paho_over_websocket() {
    let (b, ws, dir) = client_broker();
    let (ws, tcp) = (ws.to_string(), b.port().to_string());
    run(
        "python3",
        &[
            "tests/paho/websocket.py",
            "--host",
            "127.0.0.1",
            "--ws-port",
            &ws,
            "--tcp-port",
            &tcp,
        ],
    );
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mqtt_js_under_node_over_websocket() {
    run_node("mqttjs.mjs");
}

#[test]
fn mqtt_js_in_headless_chromium_shows_a_message_from_a_tcp_client() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/test.sh (apt-get install -y chromium)"
    );
    run_node("browser.mjs");
}
