//! The result of a bench run: a human summary and one JSON line with the same figures.
//!
//! Built on the coordinating thread after every bench thread has ended.

use serde::Serialize;

use super::args::{Scenario, Transport};

/// Latency percentiles (microseconds).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// The broker's side of a run, read from `/proc/<pid>`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BrokerUse {
    pub pid: u32,
    /// Broker CPU time per delivered message (or per connection, conn), microseconds.
    pub cpu_us_per_msg: f64,
    /// Broker CPU time over wall time while measuring (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Largest RSS sampled while measuring (bytes).
    pub rss_max: u64,
    /// Peak RSS over the broker's life, VmHWM (bytes).
    pub rss_peak: u64,
    /// conn: RSS growth per connection held (bytes).
    pub rss_per_conn: Option<f64>,
}

/// Everything a run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    /// `tcp` or `ws` (MQTT over WebSocket).
    pub transport: Transport,
    /// Where the subscribers connected when not where the publishers did (--sub-host /
    /// --sub-port); absent from the JSON otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_addr: Option<String>,
    /// Where the publishers connected (for the summary; the JSON has only `sub_addr`).
    #[serde(skip)]
    pub pub_addr: String,
    pub mqtt: String,
    pub qos: u8,
    pub payload: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub connections: usize,
    /// Messages (conn: connections) per second asked for; `None` = full speed.
    pub rate: Option<f64>,
    pub inflight: u32,
    pub threads: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Deliveries per second while measuring (conn: connections opened per second).
    pub msgs_per_s: f64,
    /// Publishes per second while measuring.
    pub published_per_s: f64,
    pub sent: u64,
    pub delivered: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Received messages that no publisher of this run sent (other traffic on the topics).
    pub foreign: u64,
    /// QoS 0 windows a publisher wrote off after the broker dropped messages.
    pub stalls: u64,
    pub failed_clients: usize,
    pub first_error: Option<String>,
    pub latency: Latency,
    pub broker: Option<BrokerUse>,
    /// The bench's own CPU over wall time while measuring (1.0 = one core busy).
    pub client_cpu_cores: f64,
    pub cores: usize,
    /// Whether the checks passed: nothing lost at QoS 1/2, no duplicates at QoS 2, nothing
    /// out of order, no client failed.
    pub ok: bool,
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0} ")
    }
}

fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

impl Report {
    /// The summary lines a person reads.
    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let speed = match self.rate {
            Some(r) => format!("{}/s fixed", si(r).trim_end()),
            None => format!("full speed (window {})", self.inflight),
        };
        let scenario = format!("{:?}", self.scenario).to_lowercase();
        let over = match self.transport {
            Transport::Tcp => "",
            Transport::Ws => " over WebSocket",
        };
        if self.scenario == Scenario::Conn {
            let _ = writeln!(
                s,
                "shardmq bench conn: {} connections, MQTT {}{over}, {speed}, held {} s, {} threads",
                self.connections, self.mqtt, self.duration_s, self.threads
            );
            let _ = writeln!(
                s,
                "  connects    {}conn/s  ({} of {} connected)",
                si(self.msgs_per_s),
                self.delivered,
                self.connections
            );
            let _ = writeln!(
                s,
                "  handshake   p50 {}  p99 {}  p99.9 {}  max {}",
                ms(self.latency.p50_us),
                ms(self.latency.p99_us),
                ms(self.latency.p999_us),
                ms(self.latency.max_us)
            );
        } else {
            let _ = writeln!(
                s,
                "shardmq bench {scenario}: {} publishers -> {} subscribers, QoS {}, {} B, MQTT {}{over}, {speed}, {} s after {} s warm-up, {} threads",
                self.publishers,
                self.subscribers,
                self.qos,
                self.payload,
                self.mqtt,
                self.duration_s,
                self.warmup_s,
                self.threads
            );
            if let Some(a) = &self.sub_addr {
                let _ = writeln!(
                    s,
                    "  addresses   subscribers at {a}, publishers at {}",
                    self.pub_addr
                );
            }
            let _ = writeln!(
                s,
                "  delivered   {}msg/s   (published {}msg/s)",
                si(self.msgs_per_s),
                si(self.published_per_s)
            );
            let _ = writeln!(
                s,
                "  latency     p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                ms(self.latency.p50_us),
                ms(self.latency.p99_us),
                ms(self.latency.p999_us),
                ms(self.latency.max_us),
                self.latency.samples
            );
            let _ = writeln!(
                s,
                "  checks      {} sent, {} of {} expected deliveries arrived: lost {}, duplicates {}, reordered {}{}{}",
                self.sent,
                self.delivered,
                self.expected,
                self.lost,
                self.duplicates,
                self.reordered,
                if self.foreign > 0 {
                    format!(", foreign {}", self.foreign)
                } else {
                    String::new()
                },
                if self.stalls > 0 {
                    format!(", stalled windows {}", self.stalls)
                } else {
                    String::new()
                },
            );
        }
        if let Some(b) = &self.broker {
            let per = match b.rss_per_conn {
                Some(p) => format!(", {:.2} KiB per connection", p / 1024.0),
                None => format!(", {:.2} µs CPU per delivered message", b.cpu_us_per_msg),
            };
            let _ = writeln!(
                s,
                "  broker      pid {}: {:.2} cores{per}, RSS max {} (peak {})",
                b.pid,
                b.cpu_cores,
                mib(b.rss_max),
                mib(b.rss_peak)
            );
        }
        let _ = writeln!(
            s,
            "  client      {:.2} cores of {}{}",
            self.client_cpu_cores,
            self.cores,
            if self.client_cpu_cores > 0.9 * self.threads as f64 {
                " (the bench threads were saturated: add --threads or a machine)"
            } else {
                ""
            }
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(
                s,
                "  failed      {} clients; first: {e}",
                self.failed_clients
            );
        }
        let _ = writeln!(
            s,
            "  result      {}",
            if self.ok { "ok" } else { "CHECKS FAILED" }
        );
        s
    }

    /// The one JSON line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
