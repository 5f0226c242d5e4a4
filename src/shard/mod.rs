//! Shards: the only code that awaits I/O.
//!
//! One shard per core, each a thread running its own monoio runtime that owns its connections,
//! sessions and local subscription index outright. This module starts them:
//!
//! - [`listen`]: per-shard SO_REUSEPORT listeners, bound on the main thread, refusing a port
//!   another process already holds;
//! - [`spawn`]: shard threads pinned before their runtime is built, with an explicit
//!   io_uring → epoll fallback.
//!
//! The connection task, delivery and the keepalive wheel are built on these next.

pub mod listen;
pub mod spawn;
