//! The mesh: how shards hand messages to each other, without locks.
//!
//! Owns the cross-shard transport: one bounded SPSC [`ring`] per *ordered* pair of shards (so
//! with N shards, N·(N−1) rings; shard A's ring to B is written only by A's thread and read only
//! by B's), and one [`doorbell`] per consumer shard, shared by all of its N−1 inbound rings.
//!
//! - A producer shard stages items per destination while it processes a read
//!   ([`Producer::try_push`]), publishes each destination's batch once at the end
//!   ([`Producer::flush`]: one `Release` store), and rings that destination's
//!   [`Doorbell`] ([`Doorbell::after_flush`]), which calls the injected [`Wake`] only if the
//!   consumer announced it was parking: one wake per idle → busy transition, none for a busy
//!   consumer.
//! - A consumer shard drains its inbound rings in batches ([`Consumer::drain`]: one `Acquire`
//!   load, one `Release` store per batch), and before parking calls
//!   [`Doorbell::prepare_park`], which re-checks every inbound ring after announcing itself.
//!
//! # A full ring never blocks
//!
//! [`Producer::try_push`] on a full ring gives the item back at once; a shard never waits for
//! another shard to drain (two shards waiting on each other's full rings would deadlock, and a
//! shard thread must not block anyway). What to do with the refused item is the shard layer's
//! policy, stated here because the ring's API is shaped for it:
//!
//! - **QoS ≥ 1**: keep it in the connection's bounded local overflow queue and stop reading
//!   from the publishing connection until the ring has room again ([`Producer::free_slots`]),
//!   so the backpressure reaches the publisher through TCP;
//! - **QoS 0**: drop it and count the drop in the shard's metrics.
//!
//! # Checking the ordering with loom
//!
//! The ring's slot hand-off and the doorbell's lost-wakeup race are model-checked with loom
//! (the atomics come from `sync.rs`, which picks loom's under `--cfg shardmq_loom`):
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg shardmq_loom" \
//!     cargo test --release --lib mesh -- --nocapture
//! ```
//!
//! `--nocapture` prints how many interleavings each model explored. With
//! `LOOM_MAX_PREEMPTIONS=2` the five models explore 18 to ~400 interleavings each, well under
//! a second in all. Without the bound loom explores every interleaving: up to ~180 000 for
//! one model, about 30 s in all on two cores. The first `--cfg shardmq_loom` build recompiles
//! every dependency (a few minutes), and only test builds have the `loom` dependency, so plain
//! `cargo build` with that flag fails by design. Removing either `SeqCst` fence of the
//! doorbell, or weakening any `Acquire`/`Release` of the ring's hand-off (the `tail` store in
//! `flush` and its loads, the `head` stores in `pop`/`drain` and its load in `try_push`) to
//! `Relaxed`, makes a model fail.

pub mod doorbell;
pub mod envelope;
pub mod ring;
mod sync;

pub use doorbell::{Doorbell, Park, Wake};
pub use envelope::{Envelope, Stub};
pub use ring::{Consumer, FlushOutcome, Producer, channel};
