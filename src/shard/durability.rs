//! `durability = "sync"`: a QoS ≥ 1 PUBLISH is acknowledged (PUBACK / PUBREC) only once every
//! store write its routing caused is fsynced, on the publishing shard and on the shards its
//! envelopes went to. Each shard owns one [`Tracker`]; the matrix of [`Effects`] is shared.
//!
//! ```text
//!  shard A (publisher's)                       shard B (a persistent subscriber's)
//!  route: own writes up to wA  ─── store ───► durable[A] ≥ wA
//!         envelope #k to B (durable flag) ──► deliver, append (B's write wB)
//!                                             after the ring batch: Effect{A, k} waits
//!                                             for durable[B] ≥ wB ─ store ─┐
//!  effected[A][B] ≥ k  ◄──────────────────────── effected[A][B] = k, ring A ┘
//!  PUBACK released (FIFO: [MQTT-4.6.0-2])
//! ```
//!
//! - Writes are numbered per shard (`PendingWrite::numbered`); the store thread publishes
//!   each shard's last durable number after the fsync of a batch and rings that shard.
//! - Only envelopes to shards holding persistent sessions carry the durable flag (a shard
//!   without any cannot write for a delivery), so clean-session traffic is acknowledged at
//!   once, as with `relaxed`. Envelopes with the flag are counted per (sender, receiver)
//!   pair; they are QoS ≥ 1 and never dropped, so both sides count the same sequence.
//! - A shared-subscription message passed on by B to C (its member left) makes B's effect
//!   for A wait for C's effect for B too.
//! - Waiting entries are released strictly in order, which keeps the acknowledgements of
//!   each connection in the order its PUBLISH packets came.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use crate::protocol::session::Ack;

/// What a released entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Send the held acknowledgement to the connection `token` (if it is still the one
    /// attached to the session at `slot`).
    Ack {
        /// The session's slot.
        slot: u32,
        /// The connection that sent the PUBLISH.
        token: u64,
        /// PUBACK or PUBREC, with the packet identifier.
        ack: Ack,
        /// Whether any subscriber matched (5.0 reason 0x10 otherwise).
        matched: bool,
    },
    /// Tell shard `source` that its first `upto` durable envelopes to this shard have taken
    /// effect here.
    Effect {
        /// The sending shard.
        source: u16,
        /// Its durable envelopes to this shard, counted from the start.
        upto: u64,
    },
}

/// One held release and what it waits for.
#[derive(Debug)]
pub struct Deferred {
    /// What to do once it is ready.
    pub release: Release,
    /// This shard's write that must be durable first (0: none).
    pub write: u64,
    /// (shard, count): this many durable envelopes sent to that shard must have taken
    /// effect there first.
    pub deps: SmallVec<[(u16, u64); 2]>,
}

/// `effected[a][b]`: how many of shard a's durable envelopes to shard b have taken effect
/// on b (written by b, read by a).
#[derive(Debug)]
pub struct Effects {
    n: usize,
    cells: Box<[AtomicU64]>,
}

impl Effects {
    /// The matrix for `n` shards, all zero.
    pub fn new(n: usize) -> Self {
        Self {
            n,
            cells: (0..n * n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many of `from`'s durable envelopes to `to` took effect.
    pub fn get(&self, from: usize, to: usize) -> u64 {
        self.cells[from * self.n + to].load(Ordering::Acquire)
    }

    /// Called by `to`: its effect count for `from`'s envelopes is now `upto`.
    pub fn set(&self, from: usize, to: usize, upto: u64) {
        self.cells[from * self.n + to].store(upto, Ordering::Release);
    }
}

/// One shard's side: what it sent and received with the durable flag, and its held
/// releases.
#[derive(Debug)]
pub struct Tracker {
    /// `durability = "sync"` with a store: hold acknowledgements.
    pub on: bool,
    queue: VecDeque<Deferred>,
    sent: Vec<u64>,
    received: Vec<u64>,
    /// Shards sent durable envelopes since [`begin`](Self::begin).
    unit_mask: u64,
    unit_writes: u64,
}

impl Tracker {
    /// A tracker for a shard among `n`.
    pub fn new(on: bool, n: usize) -> Self {
        Self {
            on,
            queue: VecDeque::new(),
            sent: vec![0; n],
            received: vec![0; n],
            unit_mask: 0,
            unit_writes: 0,
        }
    }

    /// Held releases.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Starts a unit of work (routing one PUBLISH, or one ring batch) whose effects a
    /// release will wait for; `writes` is the shard's write count now.
    pub fn begin(&mut self, writes: u64) {
        self.unit_mask = 0;
        self.unit_writes = writes;
    }

    /// A durable envelope goes to `dest`.
    pub fn sent(&mut self, dest: usize) {
        self.sent[dest] += 1;
        self.unit_mask |= 1 << dest;
    }

    /// A durable envelope came from `source`.
    pub fn received(&mut self, source: usize) {
        self.received[source] += 1;
    }

    /// Durable envelopes taken from `source` so far.
    pub fn received_from(&self, source: usize) -> u64 {
        self.received[source]
    }

    /// Ends the unit: holds `release` until what the unit caused is durable. `writes` is
    /// the shard's write count now. Returns the release back when nothing is held and the
    /// unit caused nothing to wait for (carry it out at once).
    pub fn end(&mut self, release: Release, writes: u64) -> Option<Release> {
        let write = if writes > self.unit_writes { writes } else { 0 };
        let mut deps = SmallVec::new();
        let mut mask = std::mem::take(&mut self.unit_mask);
        while mask != 0 {
            let d = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            deps.push((d as u16, self.sent[d]));
        }
        if write == 0 && deps.is_empty() && self.queue.is_empty() {
            return Some(release);
        }
        self.queue.push_back(Deferred {
            release,
            write,
            deps,
        });
        None
    }

    /// Whether the oldest held release is ready: this shard's writes are durable up to
    /// `durable`, and `effected(d)` tells how many of this shard's envelopes to `d` took
    /// effect.
    pub fn front_ready(&self, durable: u64, effected: impl Fn(usize) -> u64) -> bool {
        self.queue.front().is_some_and(|d| {
            d.write <= durable && d.deps.iter().all(|&(s, n)| effected(s as usize) >= n)
        })
    }

    /// Takes the oldest held release (call after [`front_ready`](Self::front_ready)).
    pub fn pop(&mut self) -> Option<Release> {
        self.queue.pop_front().map(|d| d.release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: u16) -> Release {
        Release::Ack {
            slot: 0,
            token: 1,
            ack: Ack::PubAck(id),
            matched: true,
        }
    }

    #[test]
    fn nothing_written_or_sent_is_released_at_once() {
        let mut t = Tracker::new(true, 2);
        t.begin(5);
        assert_eq!(t.end(ack(1), 5), Some(ack(1)));
        assert!(t.is_empty());
    }

    #[test]
    fn a_release_waits_for_its_write_then_for_the_other_shards_effect_in_order() {
        let mut t = Tracker::new(true, 3);
        t.begin(0);
        assert_eq!(t.end(ack(1), 1), None, "wrote #1");
        t.begin(1);
        t.sent(2);
        assert_eq!(t.end(ack(2), 1), None, "sent #1 to shard 2");
        t.begin(1);
        assert_eq!(t.end(ack(3), 1), None, "nothing itself, but behind 2");
        let none = |_| 0;
        assert!(!t.front_ready(0, none));
        assert!(t.front_ready(1, none));
        assert_eq!(t.pop(), Some(ack(1)));
        assert!(!t.front_ready(1, none), "shard 2 has not taken #1 yet");
        assert!(t.front_ready(1, |d| u64::from(d == 2)));
        assert_eq!(t.pop(), Some(ack(2)));
        assert!(t.front_ready(1, none));
        assert_eq!(t.pop(), Some(ack(3)));
        assert!(t.is_empty());
    }

    #[test]
    fn effects_are_per_ordered_pair() {
        let e = Effects::new(3);
        e.set(0, 2, 7);
        assert_eq!(e.get(0, 2), 7);
        assert_eq!(e.get(2, 0), 0);
    }
}
