//! The Prometheus text exposition format (version 0.0.4) of the shards' snapshots: broker-wide
//! sums, and per-shard series for what is about one shard (busy ratio, rings). No I/O.

use std::fmt::Write;

use super::snapshot::{ShardSnapshot, Transport};
use super::{LATENCY_BUCKETS, LatencyRead};
use crate::shard::state::Limit;

/// What the exposition tells beside the shards' snapshots.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The broker's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Store commit latency, when persistence is on.
    pub store_commits: Option<LatencyRead>,
    /// Store writes that failed.
    pub store_failed: u64,
    /// The cluster's counters, when this node is in one.
    pub cluster: Option<ClusterRead>,
}

/// What the cluster threads counted.
#[derive(Clone, Debug, Default)]
pub struct ClusterRead {
    /// Other nodes this node routes to.
    pub nodes: u64,
    /// Messages sent over Redis (one per target node, one per retained broadcast).
    pub forwarded: u64,
    /// Messages received from other nodes.
    pub received: u64,
    /// Forwards dropped (queue full, Redis unreachable).
    pub dropped: u64,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.0,
            "# HELP shardmq_{name} {help}\n# TYPE shardmq_{name} {kind}"
        );
    }

    fn value(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "shardmq_{name} {v}");
        } else {
            let _ = writeln!(self.0, "shardmq_{name}{{{labels}}} {v}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.value(name, "", v);
    }
}

/// Renders the exposition of `shards` (index = shard id).
pub fn render(shards: &[ShardSnapshot], facts: &Facts) -> String {
    let m = ShardSnapshot::merge(shards);
    let mut o = Out(String::with_capacity(8 * 1024));
    o.family("build_info", "gauge", "The broker's version.");
    o.value("build_info", &format!("version=\"{}\"", facts.version), 1);
    o.one(
        "uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
        facts.uptime_secs,
    );
    o.one(
        "shards",
        "gauge",
        "Number of shards (threads).",
        shards.len(),
    );

    o.family(
        "connections",
        "gauge",
        "Open client connections, by transport.",
    );
    for t in Transport::ALL {
        o.value(
            "connections",
            &format!("transport=\"{}\"", t.label()),
            m.connections[t as usize],
        );
    }
    o.family(
        "connections_accepted_total",
        "counter",
        "Connections accepted, by transport.",
    );
    for t in Transport::ALL {
        let v = m.accepted[t as usize];
        o.value(
            "connections_accepted_total",
            &format!("transport=\"{}\"", t.label()),
            v,
        );
    }
    o.family(
        "accept_errors_total",
        "counter",
        "Failed accepts (the listener backs off and retries), by reason: open_files (EMFILE, ENFILE: the open-file limit) or other.",
    );
    for (reason, v) in ["open_files", "other"].iter().zip(m.accept_errors) {
        o.value("accept_errors_total", &format!("reason=\"{reason}\""), v);
    }
    o.family(
        "messages_received_total",
        "counter",
        "PUBLISH packets received from clients, by QoS.",
    );
    for (q, v) in m.received.iter().enumerate() {
        o.value("messages_received_total", &format!("qos=\"{q}\""), v);
    }
    o.family(
        "messages_sent_total",
        "counter",
        "Messages delivered to sessions (sent, in flight or queued), by QoS of the delivery.",
    );
    for (q, v) in m.delivered.iter().enumerate() {
        o.value("messages_sent_total", &format!("qos=\"{q}\""), v);
    }
    o.one(
        "bytes_received_total",
        "counter",
        "MQTT bytes read from clients.",
        m.bytes_in,
    );
    o.one(
        "bytes_sent_total",
        "counter",
        "Bytes written to clients.",
        m.bytes_out,
    );
    o.family(
        "messages_dropped_total",
        "counter",
        "Messages dropped, by reason.",
    );
    for (reason, v) in m.dropped.by_reason() {
        o.value("messages_dropped_total", &format!("reason=\"{reason}\""), v);
    }
    o.one(
        "retained_messages",
        "gauge",
        "Retained messages kept.",
        m.retained,
    );
    o.family(
        "sessions",
        "gauge",
        "Sessions: live (connected) or parked (persistent, offline).",
    );
    o.value("sessions", "state=\"live\"", m.sessions_live);
    o.value("sessions", "state=\"parked\"", m.sessions_parked);
    o.one(
        "sessions_expired_total",
        "counter",
        "Sessions ended by their expiry interval.",
        m.sessions_expired,
    );
    o.one(
        "subscriptions",
        "gauge",
        "Subscriptions held by sessions.",
        m.subscriptions,
    );
    o.one(
        "inflight_messages",
        "gauge",
        "QoS 1/2 messages in flight to clients.",
        m.inflight,
    );
    o.one(
        "queued_messages",
        "gauge",
        "Messages queued for sessions.",
        m.queued,
    );
    o.family(
        "auth_failures_total",
        "counter",
        "CONNECTs refused by authentication, by reason.",
    );
    o.value(
        "auth_failures_total",
        "reason=\"bad_credentials\"",
        m.auth_bad_credentials,
    );
    o.value(
        "auth_failures_total",
        "reason=\"not_authorized\"",
        m.auth_not_authorized,
    );
    o.family(
        "limit_hits_total",
        "counter",
        "Times a configured limit was hit, by the [limits] key it is named after.",
    );
    for l in Limit::ALL {
        o.value(
            "limit_hits_total",
            &format!("limit=\"{}\"", l.key()),
            m.limit_hits[l as usize],
        );
    }
    o.family(
        "shard_busy_ratio",
        "gauge",
        "Share of the last second the shard thread spent on the CPU.",
    );
    for (i, s) in shards.iter().enumerate() {
        o.value(
            "shard_busy_ratio",
            &format!("shard=\"{i}\""),
            format!("{:.4}", s.busy_ratio),
        );
    }
    o.family(
        "ring_occupancy_ratio",
        "gauge",
        "Share of the slots of the ring from one shard to another that are taken.",
    );
    for (i, s) in shards.iter().enumerate() {
        for (j, len) in s.ring_len.iter().enumerate() {
            if let Some(len) = len {
                let ratio = *len as f64 / s.ring_capacity.max(1) as f64;
                o.value(
                    "ring_occupancy_ratio",
                    &format!("from=\"{i}\",to=\"{j}\""),
                    format!("{ratio:.4}"),
                );
            }
        }
    }
    o.one(
        "store_backlog_writes",
        "gauge",
        "Store writes the shards hold back while the store thread's queue is full.",
        m.store_backlog,
    );
    if let Some(c) = &facts.cluster {
        o.one(
            "cluster_nodes",
            "gauge",
            "Other cluster nodes this node routes to.",
            c.nodes,
        );
        o.one(
            "cluster_forwarded_total",
            "counter",
            "Messages sent to other nodes over Redis (one per node; one per retained broadcast).",
            c.forwarded,
        );
        o.one(
            "cluster_received_total",
            "counter",
            "Messages received from other nodes.",
            c.received,
        );
        o.one(
            "cluster_dropped_total",
            "counter",
            "Forwards dropped: the cluster queue was full or Redis unreachable.",
            c.dropped,
        );
    }
    if let Some(c) = &facts.store_commits {
        o.family(
            "store_commit_seconds",
            "histogram",
            "Time the store thread took to commit (and with durability sync, fsync) one batch.",
        );
        for (b, v) in LATENCY_BUCKETS.iter().zip(c.cumulative) {
            o.value("store_commit_seconds_bucket", &format!("le=\"{b}\""), v);
        }
        o.value("store_commit_seconds_bucket", "le=\"+Inf\"", c.count);
        o.value("store_commit_seconds_sum", "", format!("{:.6}", c.sum));
        o.value("store_commit_seconds_count", "", c.count);
        o.one(
            "store_failed_writes_total",
            "counter",
            "Store writes that failed (logged).",
            facts.store_failed,
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_values_parse() {
        let s = ShardSnapshot {
            connections: [2, 0, 1, 0],
            received: [10, 3, 1],
            ring_len: vec![None, Some(1024)],
            ring_capacity: 4096,
            busy_ratio: 0.25,
            ..Default::default()
        };
        let text = render(
            &[
                s.clone(),
                ShardSnapshot {
                    ring_len: vec![Some(0), None],
                    ..s
                },
            ],
            &Facts {
                version: "0.1.0",
                uptime_secs: 5,
                store_commits: Some(LatencyRead::default()),
                store_failed: 0,
                cluster: Some(ClusterRead::default()),
            },
        );
        assert!(
            text.contains("shardmq_connections{transport=\"tcp\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("shardmq_messages_received_total{qos=\"1\"} 6\n"));
        assert!(text.contains("shardmq_ring_occupancy_ratio{from=\"0\",to=\"1\"} 0.2500\n"));
        assert!(text.contains("shardmq_limit_hits_total{limit=\"max_packet_size\"} 0\n"));
        assert!(text.contains("shardmq_store_commit_seconds_bucket{le=\"+Inf\"} 0\n"));
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split_whitespace().next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{line} has no # TYPE");
        }
    }
}
