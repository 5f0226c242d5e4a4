//! `durability = "sync"`: a QoS ≥ 1 PUBLISH is acknowledged (PUBACK / PUBREC) only once every
//! store write its routing caused is fsynced, on the publishing shard and on the shards its
//! envelopes went to. Each shard owns one [`Tracker`]; the matrix of [`Effects`] is shared.
//!
//! ```text
//!  shard A (publisher's)                       shard B (a persistent subscriber's)
//!  route: own writes up to wA  ─── store ───► durable[A] ≥ wA
//!         envelope #k to B (durable flag) ──► deliver, append (B's write wB)
//!                                             after the ring batch: effect (A, k) waits
//!                                             for durable[B] ≥ wB ─ store ─┐
//!  effected[A][B] ≥ k  ◄──────────────────────── effected[A][B] = k, ring A ┘
//!  PUBACK released (in order: [MQTT-4.6.0-2])
//! ```
//!
//! - Writes are numbered per shard (`PendingWrite::numbered`); the store thread publishes
//!   each shard's last durable number after the fsync of a batch and rings that shard.
//! - Only envelopes to shards holding persistent sessions carry the durable flag (a shard
//!   without any cannot write for a delivery), so clean-session traffic is acknowledged at
//!   once, as with `relaxed`. Envelopes with the flag are counted per (sender, receiver)
//!   pair; they are QoS ≥ 1 and never dropped, so both sides count the same sequence.
//! - Two queues per shard, each released in order: held acknowledgements (which wait for
//!   this shard's writes and for other shards' effects) and effects (which wait for this
//!   shard's writes only). Effects never wait for acknowledgements or for other shards, so
//!   no two shards can wait for each other.
//! - Known gap: a shared-subscription message that its chosen shard passes on (every member
//!   there left while it travelled) is passed on without the flag, so its acknowledgement
//!   does not wait for the next shard's write.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use crate::protocol::session::Ack;

/// A held acknowledgement: send it to the connection `token` (if it is still the one
/// attached to the session at `slot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldAck {
    /// The session's slot.
    pub slot: u32,
    /// The connection that sent the PUBLISH.
    pub token: u64,
    /// PUBACK or PUBREC, with the packet identifier.
    pub ack: Ack,
    /// Whether any subscriber matched (5.0 reason 0x10 otherwise).
    pub matched: bool,
}

/// An effect to report: shard `source`'s first `upto` durable envelopes to this shard have
/// taken effect here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    /// The sending shard.
    pub source: u16,
    /// Its durable envelopes to this shard, counted from the start.
    pub upto: u64,
}

#[derive(Debug)]
struct Waiting<T> {
    what: T,
    /// This shard's write that must be durable first (0: none).
    write: u64,
    /// (shard, count): this many durable envelopes sent to that shard must have taken
    /// effect there first.
    deps: SmallVec<[(u16, u64); 2]>,
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

/// One shard's side: what it sent and received with the durable flag, and what it holds.
#[derive(Debug)]
pub struct Tracker {
    /// `durability = "sync"` with a store: hold acknowledgements.
    pub on: bool,
    acks: VecDeque<Waiting<HeldAck>>,
    effects: VecDeque<Waiting<Effect>>,
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
            acks: VecDeque::new(),
            effects: VecDeque::new(),
            sent: vec![0; n],
            received: vec![0; n],
            unit_mask: 0,
            unit_writes: 0,
        }
    }

    /// Held acknowledgements (bounded by `limits.store_queue`: publishers stop being read
    /// past it).
    pub fn held(&self) -> usize {
        self.acks.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.effects.is_empty()
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

    fn unit_write(&self, writes: u64) -> u64 {
        if writes > self.unit_writes { writes } else { 0 }
    }

    /// Ends a PUBLISH's unit: holds its acknowledgement until what routing caused is
    /// durable. `writes` is the shard's write count now. Returns it back when nothing is
    /// held and nothing needs waiting for (send it at once).
    pub fn end_ack(&mut self, ack: HeldAck, writes: u64) -> Option<HeldAck> {
        let write = self.unit_write(writes);
        let mut deps = SmallVec::new();
        let mut mask = std::mem::take(&mut self.unit_mask);
        while mask != 0 {
            let d = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            deps.push((d as u16, self.sent[d]));
        }
        if write == 0 && deps.is_empty() && self.acks.is_empty() {
            return Some(ack);
        }
        self.acks.push_back(Waiting {
            what: ack,
            write,
            deps,
        });
        None
    }

    /// Ends a ring batch's unit: holds the effect until this shard's writes in it are
    /// durable. Returns it back when it can be reported at once.
    pub fn end_effect(&mut self, effect: Effect, writes: u64) -> Option<Effect> {
        let write = self.unit_write(writes);
        self.unit_mask = 0;
        if write == 0 && self.effects.is_empty() {
            return Some(effect);
        }
        self.effects.push_back(Waiting {
            what: effect,
            write,
            deps: SmallVec::new(),
        });
        None
    }

    /// Whether the oldest held acknowledgement or effect is ready: this shard's writes are
    /// durable up to `durable`, and `effected(d)` tells how many of this shard's envelopes
    /// to `d` took effect.
    pub fn ready(&self, durable: u64, effected: impl Fn(usize) -> u64) -> bool {
        self.effects.front().is_some_and(|w| w.write <= durable)
            || self.acks.front().is_some_and(|w| {
                w.write <= durable && w.deps.iter().all(|&(s, n)| effected(s as usize) >= n)
            })
    }

    /// Takes the effects that are ready, oldest first.
    pub fn pop_effect(&mut self, durable: u64) -> Option<Effect> {
        if self.effects.front()?.write <= durable {
            return self.effects.pop_front().map(|w| w.what);
        }
        None
    }

    /// Takes the oldest held acknowledgement if it is ready.
    pub fn pop_ack(&mut self, durable: u64, effected: impl Fn(usize) -> u64) -> Option<HeldAck> {
        let w = self.acks.front()?;
        if w.write <= durable && w.deps.iter().all(|&(s, n)| effected(s as usize) >= n) {
            return self.acks.pop_front().map(|w| w.what);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: u16) -> HeldAck {
        HeldAck {
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
        assert_eq!(t.end_ack(ack(1), 5), Some(ack(1)));
        t.begin(5);
        let e = Effect { source: 1, upto: 3 };
        assert_eq!(t.end_effect(e, 5), Some(e));
        assert!(t.is_empty());
    }

    #[test]
    fn an_ack_waits_for_its_write_then_for_the_other_shards_effect_in_order() {
        let mut t = Tracker::new(true, 3);
        t.begin(0);
        assert_eq!(t.end_ack(ack(1), 1), None, "wrote #1");
        t.begin(1);
        t.sent(2);
        assert_eq!(t.end_ack(ack(2), 1), None, "sent #1 to shard 2");
        t.begin(1);
        assert_eq!(t.end_ack(ack(3), 1), None, "nothing itself, but behind 2");
        let none = |_| 0;
        assert!(!t.ready(0, none));
        assert_eq!(t.pop_ack(1, none), Some(ack(1)));
        assert!(!t.ready(1, none), "shard 2 has not taken #1 yet");
        assert_eq!(t.pop_ack(1, none), None);
        let two = |d| u64::from(d == 2);
        assert!(t.ready(1, two));
        assert_eq!(t.pop_ack(1, two), Some(ack(2)));
        assert_eq!(t.pop_ack(1, none), Some(ack(3)));
        assert!(t.is_empty());
    }

    #[test]
    fn effects_wait_for_writes_only_and_do_not_queue_behind_acks() {
        let mut t = Tracker::new(true, 2);
        t.begin(0);
        t.sent(1);
        assert_eq!(t.end_ack(ack(1), 0), None, "waits for shard 1");
        t.begin(0);
        let e = Effect { source: 1, upto: 1 };
        assert_eq!(t.end_effect(e, 2), None, "wrote #2");
        assert!(
            t.ready(2, |_| 0),
            "the effect is ready though the ack is not"
        );
        assert_eq!(t.pop_effect(2), Some(e));
        assert_eq!(t.pop_ack(2, |_| 0), None);
    }

    #[test]
    fn effects_are_per_ordered_pair() {
        let e = Effects::new(3);
        e.set(0, 2, 7);
        assert_eq!(e.get(0, 2), 7);
        assert_eq!(e.get(2, 0), 0);
    }
}
