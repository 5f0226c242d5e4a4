//! Hooks for embedders (the crate is a library too): decide who connects and what they may
//! publish and subscribe to, and hear about connects, disconnects, publishes and
//! subscriptions, beside (or instead of) the password file and the ACL file.
//!
//! Where each runs:
//!
//! - [`Hooks::authenticate`] on the authentication thread (`shardmq-auth`), one CONNECT at a
//!   time: it may block (ask a database, a web service) without holding up any shard. Its
//!   queue is bounded by `limits.auth_queue` (full: CONNACK 0x89 Server busy).
//! - Every other hook on the shard thread that owns the connection, inline: it must return
//!   quickly and never block (hand slow work to a thread or channel of your own).
//!
//! Every method has a default that changes nothing, so an implementation overrides only what
//! it needs. [`Authz`] is what a connection carries: its ACL rules and the hooks, asked in that
//! order (both must allow).

use std::net::SocketAddr;
use std::sync::Arc;

use super::acl::{Access, ClientAcl};
use crate::protocol::ReasonCode;

/// Who a connection is, as the hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client identifier (the assigned one when the client sent none).
    pub client_id: String,
    /// The user name from CONNECT.
    pub username: Option<String>,
    /// The remote address.
    pub peer: Option<SocketAddr>,
}

/// What [`Hooks::authenticate`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the client in (the password file and `allow_anonymous` are not consulted).
    Allow,
    /// Refuse it: 5.0 clients get this reason (e.g. 0x86 Bad User Name or Password, 0x87 Not
    /// authorized, 0x8A Banned), 3.1.1 clients the closest return code.
    Deny(ReasonCode),
    /// No opinion: the password file and `allow_anonymous` decide, as without hooks.
    Default,
}

/// The hooks. See the module documentation for the thread each method runs on.
pub trait Hooks: Send + Sync + 'static {
    /// Decides whether a CONNECT may go on, given who it claims to be and its password.
    /// Runs on the authentication thread.
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthDecision {
        let _ = (client, password);
        AuthDecision::Default
    }

    /// Whether `client` may publish to `topic` (after the ACL allowed it). Shard thread.
    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> bool {
        let _ = (client, topic);
        true
    }

    /// Whether `client` may subscribe to `filter` (after the ACL allowed it). Shard thread.
    fn authorize_subscribe(&self, client: &ClientInfo, filter: &str) -> bool {
        let _ = (client, filter);
        true
    }

    /// `client` is connected (CONNACK sent). Shard thread.
    fn on_connect(&self, client: &ClientInfo) {
        let _ = client;
    }

    /// `client`'s connection ended, for `why`. Shard thread.
    fn on_disconnect(&self, client: &ClientInfo, why: &str) {
        let _ = (client, why);
    }

    /// `client` published `payload` on `topic` (authorized, about to be routed). Shard thread.
    fn on_publish(&self, client: &ClientInfo, topic: &str, payload: &[u8]) {
        let _ = (client, topic, payload);
    }

    /// `client` subscribed to `filter` (granted). Shard thread.
    fn on_subscribe(&self, client: &ClientInfo, filter: &str) {
        let _ = (client, filter);
    }

    /// `client` unsubscribed from `filter`. Shard thread.
    fn on_unsubscribe(&self, client: &ClientInfo, filter: &str) {
        let _ = (client, filter);
    }
}

/// What one connection may do: its ACL rules (`auth.acl_file`) and the embedder's hooks.
pub struct Authz {
    /// The client, as the hooks see it.
    pub client: ClientInfo,
    /// Its ACL rules, when an ACL file is configured.
    pub acl: Option<ClientAcl>,
    /// The embedder's hooks.
    pub hooks: Option<Arc<dyn Hooks>>,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("client", &self.client)
            .field("acl", &self.acl)
            .field("hooks", &self.hooks.is_some())
            .finish()
    }
}

impl Authz {
    /// Whether the client may publish to `topic`.
    pub fn allows_publish(&self, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|a| a.allows_topic(topic, Access::Write))
            && self
                .hooks
                .as_ref()
                .is_none_or(|h| h.authorize_publish(&self.client, topic))
    }

    /// Whether the client may subscribe to `filter`.
    pub fn allows_subscribe(&self, filter: &str) -> bool {
        self.acl.as_ref().is_none_or(|a| a.allows_subscribe(filter))
            && self
                .hooks
                .as_ref()
                .is_none_or(|h| h.authorize_subscribe(&self.client, filter))
    }

    /// Whether a message on `topic` may be delivered to the client: only ACL deny rules
    /// can refuse what its subscription let in.
    #[inline]
    pub fn may_read(&self, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|a| !a.has_deny() || a.allows_topic(topic, Access::Read))
    }

    /// The hooks and the client, when hooks are installed.
    pub fn hooks(&self) -> Option<(&dyn Hooks, &ClientInfo)> {
        self.hooks.as_deref().map(|h| (h, &self.client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::acl::Acl;

    struct NoAdmin;
    impl Hooks for NoAdmin {
        fn authorize_publish(&self, _: &ClientInfo, topic: &str) -> bool {
            !topic.starts_with("admin/")
        }
    }

    #[test]
    fn the_acl_and_the_hooks_must_both_allow() {
        let client = ClientInfo {
            client_id: "c".into(),
            username: Some("u".into()),
            peer: None,
        };
        let acl = Acl::parse("user u\ntopic readwrite #\ntopic deny secret/#\n").unwrap();
        let z = Authz {
            acl: Some(acl.for_client("c", Some("u"))),
            hooks: Some(Arc::new(NoAdmin)),
            client,
        };
        assert!(z.allows_publish("a/b"));
        assert!(!z.allows_publish("admin/x"), "the hook");
        assert!(!z.allows_publish("secret/x"), "the ACL");
        assert!(z.allows_subscribe("a/#"));
        assert!(!z.may_read("secret/x"));
        assert!(z.may_read("admin/x"), "hooks decide publishing only");
    }
}
