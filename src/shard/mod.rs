//! Shards: the only code that awaits I/O.
//!
//! One shard per core, each a thread running its own monoio runtime that owns its connections,
//! sessions and local subscription index outright. This module starts them:
//!
//! - [`listen`]: per-shard SO_REUSEPORT listeners, bound on the main thread, refusing a port
//!   another process already holds;
//! - [`spawn`]: shard threads pinned before their runtime is built, with an explicit
//!   io_uring → epoll fallback;
//! - [`run`]: the broker's start (mesh rings, shard threads) and each shard's accept loops,
//!   mesh pump and keep alive ticker;
//! - [`state`]: one shard's sessions, index, retained replica, directory partition and mesh
//!   endpoints, and the routing and takeover logic over them;
//! - [`conn`]: a connection's reader and writer tasks;
//! - [`tls`] and [`websocket`]: the TLS handshake and the WebSocket upgrade and framing
//!   under a connection;
//! - [`wheel`]: the per-shard keep alive wheel;
//! - [`fds`]: the open-file limit, raised at start-up;
//! - [`linger`]: the bounded wait before a closed socket is released.

pub mod conn;
pub mod durability;
pub mod fds;
pub mod linger;
pub mod listen;
pub mod run;
pub mod spawn;
pub mod state;
pub mod throttle;
pub mod tls;
pub mod verify;
pub mod websocket;
pub mod wheel;
