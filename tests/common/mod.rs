//! Shared helpers of the integration tests: start the real `shardmq` binary on a free port,
//! and a raw MQTT client on our codec for byte-exact protocol checks (the behaviour tests use
//! independent clients: rumqttc and mosquitto_pub/sub).

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardmq::protocol::{Connect, Packet, Str, Version, decode};

/// Bound for every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A broker process on 127.0.0.1, killed on drop.
pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: mpsc::Receiver<String>,
    /// The log lines up to and including "listening on".
    pub startup: Vec<String>,
    /// A data directory made for this broker alone, removed on drop.
    own_data_dir: Option<std::path::PathBuf>,
}

/// A fresh, empty directory under the system's temp dir, unique to this process and call.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("shardmq-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Broker {
    /// Starts `shardmq --listen 127.0.0.1:0 --shards N --no-pin` plus `extra` flags, with a
    /// data directory of its own unless `extra` names one (or turns persistence off).
    pub fn start(shards: usize, extra: &[&str]) -> Broker {
        Broker::start_via(&[], shards, extra)
    }

    /// [`start`](Self::start) with the open-file limit (soft and hard) set to `nofile` by
    /// util-linux `prlimit`, which then execs the broker (same process).
    pub fn start_with_nofile(nofile: u64, shards: usize, extra: &[&str]) -> Broker {
        let limit = format!("--nofile={nofile}:{nofile}");
        Broker::start_via(&["prlimit", &limit, "--"], shards, extra)
    }

    fn start_via(wrapper: &[&str], shards: usize, extra: &[&str]) -> Broker {
        let own_data_dir = (!extra
            .iter()
            .any(|a| *a == "--data-dir" || *a == "--no-persistence"))
        .then(|| temp_dir("data"));
        let bin = env!("CARGO_BIN_EXE_shardmq");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if let Some(d) = &own_data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0", "--no-pin", "--log-level", "info"])
            .args(["--shards", &shards.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shardmq");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Owned by a `Broker` from here on, so a failed start still kills the process.
        let mut b = Broker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: rx,
            startup: Vec::new(),
            own_data_dir,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = b
                .log
                .recv_timeout(left)
                .expect("shardmq did not report its listener in time");
            b.startup.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                b.addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                return b;
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next log line containing `needle` (earlier lines are skipped); panics after
    /// [`WAIT`].
    pub fn line_containing(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .log
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {needle:?} in time"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The broker's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.own_data_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A raw MQTT connection driven packet by packet with shardmq's own codec.
pub struct Raw {
    pub stream: TcpStream,
    pub version: Version,
    buf: BytesMut,
}

impl Raw {
    pub fn connect(addr: SocketAddr, version: Version) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            version,
            buf: BytesMut::new(),
        }
    }

    pub fn send(&mut self, p: &Packet) {
        let bytes = p.to_bytes(self.version).unwrap();
        self.stream.write_all(&bytes).unwrap();
    }

    pub fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).unwrap();
    }

    /// The next packet, or `None` when the broker closed the connection.
    pub fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, self.version, u32::MAX).unwrap() {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Sends a packet; false if the connection is gone (the broker was killed).
    pub fn try_send(&mut self, p: &Packet) -> bool {
        let bytes = p.to_bytes(self.version).unwrap();
        self.stream.write_all(&bytes).is_ok()
    }

    /// The next packet, or `None` when the connection closed, failed, or stayed silent for
    /// the read timeout.
    pub fn try_recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, self.version, u32::MAX).ok()? {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Expects the broker to close the connection (EOF) within the read timeout, skipping
    /// any packets before it.
    pub fn expect_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv() {
            seen.push(p);
        }
        seen
    }
}

/// Whether the mosquitto tool `tool` (from Debian's `package`) is installed. Without it the
/// test fails saying how to install it, unless `SHARDMQ_SKIP_MOSQUITTO` is set (then the
/// caller skips).
pub fn have_tool(tool: &str, package: &str) -> bool {
    let found = Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found && std::env::var_os("SHARDMQ_SKIP_MOSQUITTO").is_none() {
        panic!(
            "{tool} not found: install {package} (apt-get install -y {package}) or set SHARDMQ_SKIP_MOSQUITTO=1"
        );
    }
    found
}

/// Runs `cmd` (stdin closed, stdout and stderr read as it runs, so a talkative program cannot
/// block on a full pipe), killing it after `limit`; returns its exit code (`None`: killed)
/// and its output.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{:?} not found ({e}); run scripts/test.sh, which installs it",
                cmd.get_program()
            )
        });
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "--- stdout\n{}--- stderr\n{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (status, output)
}

/// A CONNECT packet.
pub fn connect_packet(version: Version, id: &str, clean: bool, keep_alive: u16) -> Packet {
    Packet::Connect(Box::new(Connect {
        version,
        clean_start: clean,
        keep_alive,
        client_id: Str::new(bytes::Bytes::copy_from_slice(id.as_bytes())).unwrap(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }))
}
