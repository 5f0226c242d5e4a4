//! Authentication of MQTT clients, with no I/O and no clock.
//!
//! - [`enhanced`]: MQTT 5.0 enhanced authentication (§4.12) as the embedder sees it: the
//!   [`Authenticator`] trait (one per method, shared by every shard), the per-connection
//!   [`Exchange`] it starts, the [`Authenticators`] registry the broker looks a CONNECT's
//!   Authentication Method up in, and [`Conversation`], which drives one connection's CONNECT /
//!   AUTH / re-authentication rules and says which packet to answer with.
//! - [`hooks`]: the [`Hooks`] trait for embedders (authenticate, authorize, hear about
//!   connects, publishes, subscriptions) and [`hooks::Authz`], what a connection may do.
//! - [`password`]: password files in mosquitto's format (`user:$7$…`), parsed, written and
//!   verified (the broker verifies on its authentication thread, `shard::verify`).
//! - [`scram`]: the built-in `SCRAM-SHA-256` method (RFC 5802, RFC 7677): server side over a
//!   credential store, the credential line format kept in files, and the client side used by
//!   tests and bench clients.
//!
//! Everything here is bytes in, bytes and decisions out. The registry is built once and shared
//! read-only; a [`Conversation`] and its [`Exchange`] live on the shard that owns the
//! connection and are only touched by that shard's thread. The only outside resource is the OS
//! random number generator, read for SCRAM nonces.

pub mod acl;
pub mod enhanced;
pub mod hooks;
pub mod password;
pub mod scram;

pub use enhanced::{
    AuthFailure, Authenticator, Authenticators, Client, Conversation, DuplicateMethod, Exchange,
    Reply, Start, Step,
};
pub use hooks::{AuthDecision, ClientInfo, Hooks};
pub use scram::{ScramClient, ScramCredential, ScramSha256};
