//! Observability without touching the hot path: what each shard counts, merged on a read.
//!
//! - [`snapshot`]: the plain-data [`ShardSnapshot`] each shard copies out of its own counters
//!   once per tick (one second) into its slot in `Shared::snapshots` (a mutex locked once a
//!   second by the shard and once per scrape by a reader: no shared atomics per message).
//! - [`prometheus`]: the text exposition of the merged snapshots (no I/O).
//! - [`sys`]: mosquitto's `$SYS/broker/...` topics from the same snapshots (no I/O); shard 0
//!   publishes them every `metrics.sys_interval` seconds.
//! - [`http`]: the `/metrics` and `/health` listener, one thread (`shardmq-metrics`) off the
//!   shards.
//! - [`Latency`]: a fixed-bucket histogram the store thread fills with its commit times.

pub mod http;
pub mod prometheus;
pub mod snapshot;
pub mod sys;

use std::sync::atomic::{AtomicU64, Ordering};

pub use snapshot::{Dropped, ShardSnapshot, Transport};

/// Upper bounds of [`Latency`]'s buckets, seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram written by one thread (the store thread), read by scrapes.
#[derive(Debug, Default)]
pub struct Latency {
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// A read of a [`Latency`]: cumulative bucket counts, sum (seconds) and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyRead {
    /// Observations at or below each of [`LATENCY_BUCKETS`].
    pub cumulative: [u64; LATENCY_BUCKETS.len()],
    /// Sum of all observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Latency {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The histogram so far.
    pub fn read(&self) -> LatencyRead {
        let mut cumulative = [0u64; LATENCY_BUCKETS.len()];
        let mut running = 0;
        for (i, c) in cumulative.iter_mut().enumerate() {
            running += self.buckets[i].load(Ordering::Relaxed);
            *c = running;
        }
        LatencyRead {
            cumulative,
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn latency_buckets_are_cumulative() {
        let l = Latency::default();
        l.observe(Duration::from_micros(50));
        l.observe(Duration::from_micros(700));
        l.observe(Duration::from_secs(3));
        let r = l.read();
        assert_eq!(r.count, 3);
        assert_eq!(r.cumulative[0], 1);
        assert_eq!(r.cumulative[3], 2, "≤ 1 ms");
        assert_eq!(
            r.cumulative[LATENCY_BUCKETS.len() - 1],
            2,
            "3 s is above every bound"
        );
        assert!((r.sum - 3.00075).abs() < 1e-9);
    }
}
