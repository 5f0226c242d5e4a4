//! What one shard reports: a plain copy of its counters and gauges, taken on the shard
//! thread once per tick, and the broker-wide sum of all shards' copies.

use crate::shard::state::Limit;

/// What a connection speaks under MQTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS.
    Tls,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Transport {
    /// Every transport, in counter order.
    pub const ALL: [Transport; 4] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Wss,
    ];

    /// The transport of a connection accepted with or without TLS and WebSocket.
    pub fn of(tls: bool, websocket: bool) -> Self {
        match (tls, websocket) {
            (false, false) => Transport::Tcp,
            (true, false) => Transport::Tls,
            (false, true) => Transport::Ws,
            (true, true) => Transport::Wss,
        }
    }

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// Messages dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// QoS 0 publishes a full shard ring and its overflow had no room for.
    pub ring_full: u64,
    /// Shared-subscription messages no member on any shard took.
    pub no_shared_member: u64,
    /// QoS 0 messages for a client that was not reading (write buffer full).
    pub slow_consumer: u64,
    /// Messages for a session whose queue was full.
    pub queue_full: u64,
    /// Messages whose Message Expiry Interval passed first.
    pub expired: u64,
    /// Messages larger than the client's Maximum Packet Size.
    pub too_large: u64,
}

impl Dropped {
    /// Each reason with its metric label.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("ring_full", self.ring_full),
            ("no_shared_member", self.no_shared_member),
            ("slow_consumer", self.slow_consumer),
            ("queue_full", self.queue_full),
            ("expired", self.expired),
            ("too_large", self.too_large),
        ]
    }

    fn add(&mut self, o: &Dropped) {
        self.ring_full += o.ring_full;
        self.no_shared_member += o.no_shared_member;
        self.slow_consumer += o.slow_consumer;
        self.queue_full += o.queue_full;
        self.expired += o.expired;
        self.too_large += o.too_large;
    }
}

/// One shard's counters (since start) and gauges (now), as of its last tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardSnapshot {
    /// Open connections, by [`Transport::ALL`].
    pub connections: [u64; 4],
    /// Connections accepted since start, by [`Transport::ALL`].
    pub accepted: [u64; 4],
    /// `accept` failures since start: out of file descriptors, other.
    pub accept_errors: [u64; 2],
    /// PUBLISH packets received from clients, by QoS.
    pub received: [u64; 3],
    /// Messages delivered to sessions (sent, in flight or queued), by QoS of the delivery.
    pub delivered: [u64; 3],
    /// Bytes read from clients (MQTT bytes; WebSocket and TLS framing not counted).
    pub bytes_in: u64,
    /// Bytes written to clients (as sent on the socket's transport).
    pub bytes_out: u64,
    /// Messages dropped, by reason.
    pub dropped: Dropped,
    /// Retained messages in this shard's replica (every shard holds all of them).
    pub retained: u64,
    /// Sessions with a connection.
    pub sessions_live: u64,
    /// Persistent sessions without a connection.
    pub sessions_parked: u64,
    /// Sessions ended by their expiry interval, since start.
    pub sessions_expired: u64,
    /// Subscriptions held by this shard's sessions.
    pub subscriptions: u64,
    /// QoS 1/2 messages in flight to clients.
    pub inflight: u64,
    /// Messages queued for sessions (offline, or behind their inflight window).
    pub queued: u64,
    /// CONNECTs refused for bad credentials (0x86 / 4), since start.
    pub auth_bad_credentials: u64,
    /// CONNECTs refused as not authorized (0x87 / 5, anonymous refused, hooks), since start.
    pub auth_not_authorized: u64,
    /// Hits of each limit, by [`Limit::ALL`].
    pub limit_hits: [u64; Limit::ALL.len()],
    /// Share of the last tick the shard thread spent on the CPU (0 to 1).
    pub busy_ratio: f64,
    /// Envelopes waiting in this shard's ring to each other shard (`None` for itself).
    pub ring_len: Vec<Option<u64>>,
    /// Slots of each such ring.
    pub ring_capacity: u64,
    /// Store writes waiting in this shard's own backlog.
    pub store_backlog: u64,
}

impl ShardSnapshot {
    /// The broker-wide sum of `shards` (gauges summed too, but `retained`: every shard
    /// holds the same replica, so the largest; per-shard gauges are left empty).
    pub fn merge(shards: &[ShardSnapshot]) -> ShardSnapshot {
        let mut m = ShardSnapshot::default();
        for s in shards {
            for i in 0..4 {
                m.connections[i] += s.connections[i];
                m.accepted[i] += s.accepted[i];
            }
            for i in 0..2 {
                m.accept_errors[i] += s.accept_errors[i];
            }
            for q in 0..3 {
                m.received[q] += s.received[q];
                m.delivered[q] += s.delivered[q];
            }
            m.bytes_in += s.bytes_in;
            m.bytes_out += s.bytes_out;
            m.dropped.add(&s.dropped);
            m.retained = m.retained.max(s.retained);
            m.sessions_live += s.sessions_live;
            m.sessions_parked += s.sessions_parked;
            m.sessions_expired += s.sessions_expired;
            m.subscriptions += s.subscriptions;
            m.inflight += s.inflight;
            m.queued += s.queued;
            m.auth_bad_credentials += s.auth_bad_credentials;
            m.auth_not_authorized += s.auth_not_authorized;
            for (a, b) in m.limit_hits.iter_mut().zip(&s.limit_hits) {
                *a += b;
            }
            m.store_backlog += s.store_backlog;
        }
        m
    }

    /// Open connections over every transport.
    pub fn connections_total(&self) -> u64 {
        self.connections.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_counters_and_takes_the_largest_replica() {
        let a = ShardSnapshot {
            connections: [1, 0, 2, 0],
            received: [5, 1, 0],
            retained: 7,
            limit_hits: [1; Limit::ALL.len()],
            ..Default::default()
        };
        let b = ShardSnapshot {
            connections: [3, 1, 0, 0],
            received: [1, 0, 2],
            retained: 6,
            dropped: Dropped {
                queue_full: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let m = ShardSnapshot::merge(&[a, b]);
        assert_eq!(m.connections, [4, 1, 2, 0]);
        assert_eq!(m.connections_total(), 7);
        assert_eq!(m.received, [6, 1, 2]);
        assert_eq!(m.retained, 7);
        assert_eq!(m.dropped.queue_full, 4);
        assert_eq!(m.limit_hits[0], 1);
    }
}
