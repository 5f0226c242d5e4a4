//! Subscription indexes: which subscribers a published topic reaches.
//!
//! Each shard owns one [`LocalIndex`] outright: the subscriptions of the sessions that live on
//! that shard, keyed by whatever names a subscriber there (a session slot) and carrying each
//! subscription's data (options, subscription identifier…). Only the owning shard's thread
//! touches it, so it has no locks, no atomics and no interior mutability; it is an ordinary
//! `&mut self` data structure that a shard keeps in its own state.
//!
//! A publish reaches a shard either from one of its own connections or over the mesh from the
//! publishing shard (see `DESIGN.md`, "Shards, mesh and routes"); either way the shard calls
//! [`LocalIndex::for_each_match`] on its own index and delivers to the subscribers it reports.
//! [`LocalIndex::insert`] and [`LocalIndex::remove`] tell the caller when a filter gains its
//! first or loses its last subscriber on this shard: those are the only moments the global
//! routes (filter → shards with subscribers) need updating.
//!
//! The index sees plain, already validated Topic Filters: a shared subscription's
//! `$share/{ShareName}/` prefix is stripped by the caller, which keeps the group bookkeeping.
//!
//! - [`local`]: exact filters in an ahash map, wildcard filters in an arena trie with
//!   dedicated `+` and `#` slots.
//! - [`routes`]: the global filter → shard-mask table, read lock-free on every publish.
//! - [`shared`]: the global `$share/{group}/{filter}` → shard-mask table.
//! - [`retained`]: a shard's replica of the retained messages, in a topic-level trie.

pub mod local;
pub mod retained;
pub mod routes;
pub mod shared;

pub use local::{Inserted, LocalIndex, Removed};
pub use retained::{RetainedStore, SetOutcome, Weigh};
pub use routes::{Routes, ShardMask};
pub use shared::SharedRoutes;
