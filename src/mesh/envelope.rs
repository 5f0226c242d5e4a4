//! What shards send each other over the mesh rings.
//!
//! Publishes (one `Arc` per interested shard, matched again against the receiver's own
//! index), retained-message updates (every shard keeps a replica), and the client-id
//! directory protocol that keeps one owner per session (DESIGN.md, "Sessions and client-id
//! takeover"):
//!
//! ```text
//!  connecting shard S          directory shard D = hash(id) % N        owner shard O
//!   Claim{id, S, token} ──────► records (S, token) as the owner
//!                               no previous owner: Handoff{token, None} ──► S
//!                               previous owner O:  Takeover{..} ──────────► O
//!                                                                           kicks the old
//!                                                                           connection (0x8E),
//!   ◄────────────────────────────────────── Handoff{token, session} ────── ships the session
//!   CONNACK (session present = the handoff carried one)                     (None if clean)
//!   ...
//!   session ends (clean) ── Release{id, token} ──► D forgets it if the token still matches
//! ```
//!
//! Built on the connecting or publishing shard, consumed on the receiving shard.

use crate::protocol::session::{Message, Session};
use crate::protocol::{Str, TopicFilter};

/// One message between shards.
#[derive(Debug)]
pub enum Envelope {
    /// A publish for the receiver's local subscribers.
    Publish {
        /// The message.
        msg: Message,
        /// The sender holds an acknowledgement until what this causes here is durable
        /// (`durability = "sync"`, see `shard::durability`).
        durable: bool,
    },
    /// A publish for one member of the shared subscription `group` (a `$share/` filter) on
    /// the receiver, which the publishing shard chose from the group's shard mask.
    Shared {
        /// The message.
        msg: Message,
        /// The group key.
        group: TopicFilter,
        /// Shards that already found no member (a member may leave while the message
        /// travels): the receiver passes it on to a shard not in this mask.
        tried: u64,
        /// As for [`Envelope::Publish`].
        durable: bool,
    },
    /// Set (or, with an empty payload, delete) a retained message in the receiver's replica.
    Retain(Message),
    /// To the directory shard: `shard` wants to own `client_id` for connection `token`.
    Claim {
        /// The client identifier.
        client_id: Str,
        /// The connecting shard.
        shard: usize,
        /// The connecting connection.
        token: u64,
        /// The new connection starts clean (discard any existing session).
        clean: bool,
    },
    /// To the current owner: give the session of `client_id` to `shard` / `token`.
    Takeover {
        /// The client identifier.
        client_id: Str,
        /// The new owner shard.
        shard: usize,
        /// The new owner connection.
        token: u64,
        /// The connection the directory knew as owner until now.
        old_token: u64,
        /// Discard the session instead of shipping it.
        clean: bool,
        /// The session leaves this node (another node asked for it): its store records end
        /// here.
        away: bool,
    },
    /// To the connecting shard: the claim of connection `token` is granted, with the existing
    /// session if there is one to resume.
    Handoff {
        /// The connection the grant is for.
        token: u64,
        /// The session to resume.
        session: Option<Box<Session>>,
        /// The session's old shard keeps a stub of it (see [`Stub`]) until the new owner
        /// has indexed it.
        stub: Option<Stub>,
    },
    /// From a session's old shard to its new one during a takeover: a message that matched
    /// the stub left there, with the grant the session's subscriptions gave it.
    Forward {
        /// The session's client identifier.
        client_id: Str,
        /// Its connection on the receiver.
        token: u64,
        /// The message.
        msg: Message,
        /// The granted QoS.
        qos: crate::protocol::QoS,
        /// The RETAIN flag the client sees.
        retain: bool,
        /// The matching Subscription Identifiers.
        ids: Vec<u32>,
    },
    /// To a session's old shard: the new owner (`shard`, connection `token`) has indexed the
    /// session, so the stub may go once every shard has seen that (a [`Envelope::Fence`]).
    Settled {
        /// The stub.
        stub: Stub,
        /// The new owner.
        shard: usize,
        /// Its connection.
        token: u64,
    },
    /// Answered with [`Envelope::FenceAck`]: everything the receiver sent to `from` before
    /// (on the same FIFO ring) has arrived by the time the answer does.
    Fence {
        /// The asking shard.
        from: usize,
        /// Which fence.
        id: u64,
    },
    /// The answer to a [`Envelope::Fence`].
    FenceAck {
        /// Which fence.
        id: u64,
    },
    /// To a session's new owner: the old shard's stub is gone; no more duplicates can come.
    Unsettle {
        /// The session's connection.
        token: u64,
    },
    /// To the directory shard: the session of `client_id` owned by `token` has ended.
    Release {
        /// The client identifier.
        client_id: Str,
        /// The connection that owned it.
        token: u64,
    },
}

/// Where a session's stub stays while its takeover settles: the old shard keeps the
/// session's subscriptions indexed on a stub slot that forwards what matches to the new
/// owner, so no publish falls between the two shards' routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stub {
    /// The old shard.
    pub shard: usize,
    /// The stub's slot there.
    pub slot: usize,
    /// The stub's token (the slot may be reused after).
    pub token: u64,
}

impl Envelope {
    /// Whether the envelope may be dropped when its ring and overflow are full: only QoS 0
    /// publishes may (counted); everything else carries state that must arrive.
    pub fn droppable(&self) -> bool {
        match self {
            Envelope::Publish { msg, .. } | Envelope::Shared { msg, .. } => {
                msg.qos == crate::protocol::QoS::AtMostOnce
            }
            _ => false,
        }
    }

    /// Whether the sender counts this envelope and waits for its effect (see
    /// `shard::durability`).
    pub fn is_durable(&self) -> bool {
        matches!(
            self,
            Envelope::Publish { durable: true, .. } | Envelope::Shared { durable: true, .. }
        )
    }
}
