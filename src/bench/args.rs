//! `shardmq bench` flags, and the plan they describe: which clients to start, on which bench
//! thread, publishing or subscribing to what.
//!
//! Runs on the main thread before any bench thread starts; a bad combination is one line and
//! exit status 2, like every other usage error.

use std::net::IpAddr;

use clap::{Args, ValueEnum};

use super::payload::STAMP_LEN;
use crate::protocol::{QoS, Version};

/// The load shapes, after emqtt-bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// P publishers on `<prefix>/<i>` → S subscribers on `<prefix>/#` (default 50 → 1).
    Fanin,
    /// P publishers on one topic → S subscribers on it (default 1 → 50).
    Fanout,
    /// N publisher/subscriber pairs, each on its own topic (default 100).
    Pairs,
    /// P publishers → one shared subscription `$share/bench/...` of S members (default 10 → 10).
    Shared,
    /// C idle connections opened at --rate per second or as fast as --inflight allows (default 5000).
    Conn,
}

/// How bench clients carry MQTT to the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT straight over TCP.
    #[default]
    Tcp,
    /// MQTT over WebSocket (RFC 6455, subprotocol mqtt): an HTTP upgrade to --ws-path after
    /// connecting, then every packet in masked binary frames.
    Ws,
}

/// The MQTT version a bench client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MqttVersion {
    #[value(name = "3.1")]
    V31,
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5")]
    V5,
}

impl From<MqttVersion> for Version {
    fn from(v: MqttVersion) -> Version {
        match v {
            MqttVersion::V31 => Version::V3_1,
            MqttVersion::V311 => Version::V3_1_1,
            MqttVersion::V5 => Version::V5,
        }
    }
}

/// Load generator: runs one scenario against a broker, checks every message, reports
/// delivered msg/s, latency, losses and (with --broker-pid) the broker's CPU and memory.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// The load shape.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Broker host (name or address).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Broker port.
    #[arg(long, short = 'p', default_value_t = 1883)]
    pub port: u16,

    /// Subscribers connect here instead (e.g. another node of a cluster); default: --host.
    #[arg(long, value_name = "HOST")]
    pub sub_host: Option<String>,

    /// Subscribers connect here instead (e.g. another node of a cluster); default: --port.
    #[arg(long, value_name = "PORT")]
    pub sub_port: Option<u16>,

    /// How clients reach the broker: tcp (plain MQTT) or ws (MQTT over WebSocket: an HTTP
    /// upgrade to --ws-path, then binary frames; point --port at the broker's `[websocket]`
    /// listener, e.g. 8083).
    #[arg(long, value_enum, default_value_t = Transport::Tcp, value_name = "TRANSPORT")]
    pub transport: Transport,

    /// The WebSocket request path (--transport ws): the broker's `websocket.path`.
    #[arg(long, default_value = "/mqtt", value_name = "PATH")]
    pub ws_path: String,

    /// Publishers (fanin, fanout, shared).
    #[arg(long, short = 'P', value_name = "N")]
    pub pubs: Option<usize>,

    /// Subscribers (fanin, fanout, shared).
    #[arg(long, short = 'S', value_name = "N")]
    pub subs: Option<usize>,

    /// Publisher/subscriber pairs (pairs) or connections (conn).
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<usize>,

    /// QoS of publishes and subscriptions.
    #[arg(long, short = 'q', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,

    /// Payload size in bytes (at least 20: publisher id, sequence number and timestamp).
    #[arg(long, short = 's', default_value_t = 64, value_name = "BYTES")]
    pub payload: usize,

    /// Fixed total rate: messages per second over all publishers (conn: connections per
    /// second). Without it, publishers go at full speed within --inflight.
    #[arg(long, short = 'r', value_name = "PER_SEC")]
    pub rate: Option<f64>,

    /// In-flight window per publisher: unacknowledged QoS 1/2 PUBLISHes and, at every QoS,
    /// messages sent but not yet received by the subscribers (default at QoS 0: 1000, fanin
    /// 10 000 / publishers, at most 256 KiB of payload; at QoS 1/2: 32; conn: concurrent
    /// handshakes, default 100).
    #[arg(long, short = 'w', value_name = "N")]
    pub inflight: Option<u32>,

    /// Seconds to measure, after the warm-up (conn: seconds to hold the connections).
    #[arg(long, short = 'd', default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,

    /// Seconds of traffic before measuring starts.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub warmup: f64,

    /// MQTT version (default 3.1.1; 5 for the shared scenario).
    #[arg(long = "mqtt", value_enum, value_name = "VERSION")]
    pub mqtt: Option<MqttVersion>,

    /// Local addresses to connect from, round robin, e.g. 127.0.0.1,127.0.0.2 (more than
    /// about 28 000 connections to one broker port need several).
    #[arg(long, value_delimiter = ',', value_name = "IP,...")]
    pub source: Vec<IpAddr>,

    /// The broker's process id: report its CPU time per delivered message and its memory.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,

    /// Bench threads (each an io_uring event loop; default half the cores, at least 1; conn:
    /// every core).
    #[arg(long, short = 't', value_name = "N")]
    pub threads: Option<usize>,

    /// First topic level of every bench topic.
    #[arg(long, default_value = "bench", value_name = "LEVEL")]
    pub prefix: String,

    /// Keep alive sent in CONNECT (seconds). Bench clients send no PINGREQ, so runs longer
    /// than 1.5 × this with QoS 0 subscribers need 0 (off).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub keepalive: u16,

    /// Persistent sessions for every client (3.1.1: Clean Session 0; 5.0: Session Expiry
    /// 300 s), so the broker keeps their QoS 1/2 deliveries in its store.
    #[arg(long)]
    pub persistent: bool,

    /// User name for every client.
    #[arg(long, short = 'u')]
    pub username: Option<String>,

    /// Password for every client.
    #[arg(long)]
    pub password: Option<String>,

    /// No progress lines, only the summary and the JSON line.
    #[arg(long)]
    pub quiet: bool,
}

/// One publisher of the plan.
#[derive(Clone, Debug)]
pub struct PubPlan {
    pub id: u32,
    pub topic: String,
    pub thread: usize,
}

/// One subscriber of the plan.
#[derive(Clone, Debug)]
pub struct SubPlan {
    pub id: usize,
    pub filter: String,
    pub thread: usize,
    /// The publishers it hears: ids `from.0 .. from.1`.
    pub from: (u32, u32),
}

/// Everything the bench threads need to know, validated.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: Scenario,
    pub transport: Transport,
    pub version: Version,
    pub qos: QoS,
    pub payload: usize,
    pub rate: Option<f64>,
    pub window: u32,
    pub threads: usize,
    pub pubs: Vec<PubPlan>,
    pub subs: Vec<SubPlan>,
    /// conn: connections to open.
    pub conns: usize,
    /// How many subscribers receive each publisher's messages.
    pub fanout: u64,
    /// Whether every subscriber must see each publisher's messages in order (all but shared).
    pub ordered: bool,
    /// Client id prefix, unique per bench process.
    pub id_prefix: String,
}

/// Most clients one run starts.
pub const MAX_CLIENTS: usize = 1_000_000;

impl BenchArgs {
    /// Checks the flags and lays out the clients.
    pub fn plan(&self) -> Result<Plan, String> {
        let qos = QoS::from_u8(self.qos).ok_or("--qos: 0, 1 or 2")?;
        if self.payload < STAMP_LEN {
            return Err(format!(
                "--payload {}: at least {STAMP_LEN} bytes are needed for the publisher id, sequence number and timestamp",
                self.payload
            ));
        }
        if self.payload > 256 * 1024 * 1024 {
            return Err("--payload: at most 256 MiB (MQTT's limit)".into());
        }
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            return Err("--duration: a positive number of seconds".into());
        }
        if !(self.warmup >= 0.0 && self.warmup.is_finite()) {
            return Err("--warmup: zero or a positive number of seconds".into());
        }
        if let Some(r) = self.rate
            && !(r > 0.0 && r.is_finite())
        {
            return Err("--rate: a positive number per second".into());
        }
        if !self.ws_path.starts_with('/')
            || self.ws_path.contains(['?', '#'])
            || self.ws_path.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err(format!(
                "--ws-path {:?}: an HTTP path without spaces, e.g. /mqtt",
                self.ws_path
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(['+', '#', '/', '\0']) {
            return Err("--prefix: one topic level without '/', '+' or '#'".into());
        }
        let threads = match self.threads {
            Some(0) => return Err("--threads: at least 1".into()),
            Some(n) => n,
            // Opening connections is mostly kernel work in the connecting thread: conn uses
            // every core, the message scenarios half, leaving the rest to the broker.
            None => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if self.scenario == Scenario::Conn {
                    cores
                } else {
                    cores.div_ceil(2)
                }
            }
        };
        let version = self.mqtt.map(Version::from).unwrap_or(match self.scenario {
            Scenario::Shared => Version::V5,
            _ => Version::V3_1_1,
        });
        let window = match self.inflight {
            Some(0) => return Err("--inflight: at least 1".into()),
            Some(n) if qos != QoS::AtMostOnce && n > 65_535 => {
                return Err("--inflight: at most 65535 at QoS 1/2 (packet identifiers)".into());
            }
            Some(n) => n,
            None if self.scenario == Scenario::Conn => 100,
            // At QoS 0 the window is end to end: keep a subscriber's backlog near 10 000
            // messages however many publishers it hears, and a publisher's near 256 KiB.
            None if qos == QoS::AtMostOnce => {
                let per_sub = match self.scenario {
                    Scenario::Fanin => 10_000 / self.pubs.unwrap_or(50).max(1),
                    _ => 1000,
                };
                per_sub.min(256 * 1024 / self.payload).clamp(10, 1000) as u32
            }
            None => 32,
        };
        let (p, s) = match self.scenario {
            Scenario::Fanin => (self.pubs.unwrap_or(50), self.subs.unwrap_or(1)),
            Scenario::Fanout => (self.pubs.unwrap_or(1), self.subs.unwrap_or(50)),
            Scenario::Shared => (self.pubs.unwrap_or(10), self.subs.unwrap_or(10)),
            Scenario::Pairs => {
                let n = self.count.unwrap_or(100);
                (n, n)
            }
            Scenario::Conn => (0, 0),
        };
        let conns = if self.scenario == Scenario::Conn {
            self.count.unwrap_or(5000)
        } else {
            0
        };
        if self.scenario != Scenario::Conn && (p == 0 || s == 0) {
            return Err("--pubs, --subs, --count: at least 1".into());
        }
        if self.scenario == Scenario::Conn && conns == 0 {
            return Err("--count: at least 1 connection".into());
        }
        if p + s + conns > MAX_CLIENTS {
            return Err(format!("at most {MAX_CLIENTS} clients in one run"));
        }
        let pre = &self.prefix;
        let pubs = (0..p)
            .map(|i| PubPlan {
                id: i as u32,
                topic: match self.scenario {
                    Scenario::Fanin => format!("{pre}/{i}"),
                    Scenario::Fanout => format!("{pre}/fanout"),
                    Scenario::Pairs => format!("{pre}/pairs/{i}"),
                    _ => format!("{pre}/shared/{i}"),
                },
                thread: i % threads,
            })
            .collect();
        // Subscribers start on the thread after the publishers' first, so a pair spans two
        // threads when there are two.
        let subs = (0..s)
            .map(|j| SubPlan {
                id: j,
                filter: match self.scenario {
                    Scenario::Fanin => format!("{pre}/#"),
                    Scenario::Fanout => format!("{pre}/fanout"),
                    Scenario::Pairs => format!("{pre}/pairs/{j}"),
                    _ => format!("$share/bench/{pre}/shared/#"),
                },
                thread: (j + 1) % threads,
                from: match self.scenario {
                    Scenario::Pairs => (j as u32, j as u32 + 1),
                    _ => (0, p as u32),
                },
            })
            .collect();
        let fanout = match self.scenario {
            Scenario::Fanin | Scenario::Fanout => s as u64,
            _ => 1,
        };
        Ok(Plan {
            scenario: self.scenario,
            transport: self.transport,
            version,
            qos,
            payload: self.payload,
            rate: self.rate,
            window,
            threads,
            pubs,
            subs,
            conns,
            fanout,
            ordered: self.scenario != Scenario::Shared,
            id_prefix: format!("shardmq-bench-{}", std::process::id()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: BenchArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan, String> {
        T::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?
            .a
            .plan()
    }

    #[test]
    fn presets_lay_out_the_clients() {
        let p = plan(&["fanin", "-t", "2"]).unwrap();
        assert_eq!((p.pubs.len(), p.subs.len(), p.fanout), (50, 1, 1));
        assert_eq!(p.pubs[3].topic, "bench/3");
        assert_eq!(p.subs[0].filter, "bench/#");
        assert_eq!(p.subs[0].from, (0, 50));
        let p = plan(&["fanout"]).unwrap();
        assert_eq!((p.pubs.len(), p.subs.len(), p.fanout), (1, 50, 50));
        let p = plan(&["pairs", "-n", "3", "-q", "1"]).unwrap();
        assert_eq!(p.subs[2].from, (2, 3));
        assert_eq!(p.subs[2].filter, "bench/pairs/2");
        assert_eq!(p.window, 32);
        let p = plan(&["shared"]).unwrap();
        assert_eq!(p.version, Version::V5);
        assert!(!p.ordered);
        assert_eq!(p.subs[0].filter, "$share/bench/bench/shared/#");
        assert_eq!(plan(&["conn"]).unwrap().conns, 5000);
    }

    #[test]
    fn transport_defaults_to_tcp() {
        let t = |args: &[&str]| {
            T::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
                .map(|t| (t.a.transport, t.a.ws_path))
                .unwrap()
        };
        assert_eq!(t(&["pairs"]), (Transport::Tcp, "/mqtt".into()));
        assert_eq!(
            t(&["pairs", "--transport", "ws", "--ws-path", "/ws"]),
            (Transport::Ws, "/ws".into())
        );
    }

    #[test]
    fn subscribers_may_connect_elsewhere() {
        let t = |args: &[&str]| {
            T::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
                .map(|t| (t.a.host, t.a.port, t.a.sub_host, t.a.sub_port))
                .unwrap()
        };
        assert_eq!(t(&["pairs"]), ("127.0.0.1".into(), 1883, None, None));
        assert_eq!(
            t(&["pairs", "-p", "1883", "--sub-port", "1884"]),
            ("127.0.0.1".into(), 1883, None, Some(1884))
        );
        assert_eq!(
            t(&["fanin", "--sub-host", "node-b", "--sub-port", "2883"]),
            ("127.0.0.1".into(), 1883, Some("node-b".into()), Some(2883))
        );
        assert!(plan(&["pairs", "--sub-port", "1884"]).is_ok());
        let e = plan(&["pairs", "--sub-port", "70000"]).unwrap_err();
        assert!(e.contains("70000"), "{e}");
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        for (args, says) in [
            (&["pairs", "-s", "8"][..], "--payload"),
            (&["pairs", "-q", "3"], "3"),
            (&["pairs", "-d", "0"], "--duration"),
            (&["pairs", "-r", "0"], "--rate"),
            (&["pairs", "-q", "1", "-w", "70000"], "--inflight"),
            (&["pairs", "-t", "0"], "--threads"),
            (&["pairs", "--prefix", "a/b"], "--prefix"),
            (&["conn", "-n", "0"], "--count"),
            (
                &["pairs", "--transport", "ws", "--ws-path", "mqtt"],
                "--ws-path",
            ),
            (&["pairs", "--ws-path", "/a b"], "--ws-path"),
            (&["pairs", "--transport", "quic"], "quic"),
        ] {
            let e = plan(args).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }
}
