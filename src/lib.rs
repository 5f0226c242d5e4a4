//! shardmq: a thread-per-core MQTT 3.1 / 3.1.1 / 5.0 broker.
//!
//! The architecture (see `DESIGN.md` in the project's shared notes and the README):
//!
//! - [`config`], [`cli`]: the TOML config with every bound in one `Limits` struct, and the
//!   flags that override it.
//! - [`protocol`]: the codec and protocol rules. No I/O, no clock: bytes and `now` in,
//!   packets, bytes and deadlines out.
//! - [`index`]: each shard's own subscription index (exact filters in a hash map, wildcard
//!   filters in an arena trie), which a publish is matched against on every interested shard.
//! - [`shard`]: shard threads (pinned, io_uring with epoll fallback) and their SO_REUSEPORT
//!   listeners.
//! - [`mesh`]: the lock-free SPSC rings between shards (one per ordered pair, batched
//!   publishes) and the doorbell that wakes a parked shard once per idle → busy transition.
//! - [`auth`]: MQTT 5.0 enhanced authentication (AUTH exchanges) and built-in SCRAM-SHA-256.
//! - [`store`]: persistence in an embedded LSM store (fjall) on its own thread.
//! - [`bench`]: the load generator behind `shardmq bench`, built on the same codec.
//!
//! Later layers (shards, mesh rings, routes, transports, store, cluster) build on it.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod auth;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod index;
pub mod mesh;
pub mod metrics;
pub mod protocol;
pub mod shard;
pub mod store;
pub mod websocket;

/// The README's examples are compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
