//! One client session as a state machine: packets in, bytes and actions out. No I/O, no clock.
//!
//! A `Session` lives on the shard that owns it (DESIGN.md invariant 4) and outlives its
//! connections when it is persistent (3.x Clean Session 0, 5.0 Session Expiry > 0). It owns:
//!
//! - the subscriptions the client holds (filter → options), mirrored by the shard into its
//!   local index and the global routes through [`Action`]s;
//! - the outgoing QoS 1/2 window ([`OutWindow`], packet-id allocation, replay with DUP on
//!   reconnect) and the incoming QoS 2 identifiers awaiting PUBREL ([`InWindow`], so a QoS 2
//!   message is delivered once even when the client resends it after reconnecting);
//! - the queue of messages waiting behind the window or for the client to come back, bounded
//!   by message count and payload bytes (when full: drop the oldest QoS 0 first, then refuse
//!   the new message, counting either in [`DropCounts`]);
//! - the will, kept until a DISCONNECT discards it or the shard publishes it;
//! - the transmit buffer: every packet for the client is encoded into it, and the
//!   connection's writer takes it whole once per loop turn ([`Session::swap_tx`]), so many
//!   frames go out in one send.
//!
//! ```text
//!  shard                         Session                         client
//!   │ check_connect(CONNECT) ─►  (client id rules)
//!   │ attach(CONNECT)        ─►  connected, will, keep alive
//!   │ connack(present)       ─►  CONNACK, replay window (DUP), drain queue ──► tx
//!   │ handle(packet)         ─►  acks into tx; Action::{Publish, Subscribe, Unsubscribe,
//!   │                            Disconnect} back to the shard
//!   │ deliver(msg, qos)      ─►  PUBLISH into tx, or window, or queue, or dropped
//!   │ detach()               ─►  offline; the will, if the loss was abnormal
//! ```
//!
//! The shard turns actions into index, routes and mesh work, and finishes a SUBSCRIBE by
//! calling [`Session::suback`] once the routes are visible (SUBACK never goes out before a
//! publish anywhere could reach the new subscriber), then delivers retained messages.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::Arc;

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::encode::Delivery;
use super::error::Error;
use super::inflight::{AckOutcome, InWindow, IncomingQos2, OutState, OutWindow};
use super::packet::{
    ConnAck, Connect, Disconnect, Packet, PubAck, Publish, QoS, RetainHandling, SubAck,
    SubscriptionOptions, UnsubAck, Version, Will,
};
use super::properties::Properties;
use super::reason::ReasonCode;
use super::string::Str;
use super::topic::{TopicFilter, TopicName};
use crate::auth::hooks::Authz;

/// An application message as the broker routes it: the PUBLISH (packet id 0, DUP clear, no
/// topic alias or subscription identifiers: each delivery sets its own), who published it
/// (for No Local) and when it expires (Message Expiry Interval, in broker seconds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppMessage {
    /// The message as published.
    pub publish: Publish,
    /// Client identifier of the publisher (empty for a message of the broker's own).
    pub origin: Str,
    /// The broker second at which the message expires, if it has a Message Expiry Interval.
    pub expires_at: Option<u32>,
}

impl AppMessage {
    /// A message with no publisher identity and no expiry.
    pub fn new(publish: Publish) -> Self {
        Self {
            publish,
            origin: Str::default(),
            expires_at: None,
        }
    }

    /// Whether the message's lifetime has passed at second `now`.
    #[inline]
    pub fn is_expired(&self, now: u32) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

impl Deref for AppMessage {
    type Target = Publish;
    #[inline]
    fn deref(&self) -> &Publish {
        &self.publish
    }
}

/// A message shared by every subscriber and shard it reaches.
pub type Message = Arc<AppMessage>;

/// The bounds and features one session enforces (from `config::Limits` and `config::Mqtt`),
/// shared by every session of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Outgoing QoS 1/2 messages unacknowledged at once (further capped by a 5.0 client's
    /// Receive Maximum).
    pub max_inflight: u16,
    /// Messages queued behind the window or while offline.
    pub max_queued_messages: usize,
    /// Payload bytes queued.
    pub max_queued_bytes: usize,
    /// Queue QoS 0 messages for an offline persistent session too.
    pub queue_qos0_offline: bool,
    /// Subscriptions the client may hold.
    pub max_subscriptions: usize,
    /// Levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Bytes waiting to be sent before QoS 0 messages to this client are dropped.
    pub max_write_buffer: usize,
    /// Largest keep alive granted (0: what the client asks); only 5.0 clients can be told.
    pub max_keep_alive: u16,
    /// Incoming QoS 2 messages awaiting PUBREL at once (CONNACK Receive Maximum).
    pub receive_maximum: u16,
    /// Topic aliases a client may set (CONNACK Topic Alias Maximum).
    pub max_topic_aliases: u16,
    /// Largest Session Expiry Interval granted; the lifetime of a 3.x persistent session.
    pub max_session_expiry: u32,
    /// Largest packet accepted (CONNACK Maximum Packet Size).
    pub max_packet_size: u32,
    /// Highest QoS accepted and granted.
    pub maximum_qos: QoS,
    /// Retained messages supported.
    pub retain_available: bool,
    /// Wildcard filters accepted.
    pub wildcard_subscriptions: bool,
    /// Subscription Identifiers accepted.
    pub subscription_identifiers: bool,
    /// Shared subscriptions accepted.
    pub shared_subscriptions: bool,
    /// Topic aliases sent to clients that allow them.
    pub server_topic_aliases: bool,
    /// Response Information template (`%c`: client id); empty for none.
    pub response_information: String,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 16 << 20,
            queue_qos0_offline: false,
            max_subscriptions: 1000,
            max_topic_levels: 64,
            max_write_buffer: 4 << 20,
            max_keep_alive: 0,
            receive_maximum: 1024,
            max_topic_aliases: 64,
            max_session_expiry: u32::MAX,
            max_packet_size: 1 << 20,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            shared_subscriptions: true,
            server_topic_aliases: true,
            response_information: String::new(),
        }
    }
}

/// One subscription as the session and the shard's index hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Subscription {
    /// The options granted (QoS already capped by the broker's Maximum QoS).
    pub options: SubscriptionOptions,
    /// The Subscription Identifier, 0 for none.
    pub id: u32,
}

/// How one message goes to one session: what its matching subscriptions grant. Borrowed
/// and `Copy`, so the per-delivery hot path builds and drops nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant<'a> {
    /// The highest QoS granted by the matching subscriptions.
    pub qos: QoS,
    /// The RETAIN flag the client sees.
    pub retain: bool,
    /// The Subscription Identifiers of the matching subscriptions (5.0).
    pub ids: &'a [u32],
    /// The shared subscription (`$share/...` filter) the message was chosen for, if any: it
    /// goes back to its group when this session leaves without acknowledging it.
    pub share: Option<&'a TopicFilter>,
    /// The store's sequence number for this delivery to a persistent session (0: not kept in
    /// the store); reported back by [`Session::drain_done`] when the delivery is complete.
    pub seq: u64,
}

impl Grant<'static> {
    /// A plain grant at `qos` with RETAIN `retain`.
    pub fn qos(qos: QoS, retain: bool) -> Self {
        Self {
            qos,
            retain,
            ids: &[],
            share: None,
            seq: 0,
        }
    }
}

/// What the shard must do after [`Session::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Route this message to its subscribers (and, if it has RETAIN set, to the retained
    /// store: an empty payload deletes), then call [`Session::ack`] with `ack` and whether
    /// any subscriber matched.
    Publish {
        /// The message.
        msg: Message,
        /// The acknowledgement the publisher is owed.
        ack: Ack,
    },
    /// The client subscribed to `filter` (`is_new`: it did not hold this filter before).
    /// Update the index and routes (or the shared group, for a `$share/` filter), then call
    /// [`Session::suback`] after the last one of the packet, then deliver retained messages as
    /// [`Session::retained_on_subscribe`] says.
    Subscribe {
        /// The filter as subscribed (a `$share/{group}/{filter}` one for a shared
        /// subscription).
        filter: TopicFilter,
        /// The subscription granted.
        sub: Subscription,
        /// Whether the filter is new to this session (false: it replaced a subscription).
        is_new: bool,
    },
    /// All filters of this SUBSCRIBE have been reported: send the SUBACK now
    /// ([`Session::suback`]) with these return codes.
    SubAck {
        /// The packet identifier of the SUBSCRIBE.
        packet_id: u16,
        /// One code per filter, in order.
        reasons: Vec<ReasonCode>,
    },
    /// The client unsubscribed from `filter` (which it held). Update the index and routes.
    Unsubscribe(TopicFilter),
    /// The client sent DISCONNECT: close the connection. `publish_will` is true only for a
    /// 5.0 DISCONNECT with reason 0x04 (Disconnect with Will Message).
    Disconnect {
        /// Publish the will anyway.
        publish_will: bool,
    },
}

/// The acknowledgement owed for a client's PUBLISH, sent once it is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// QoS 0: none.
    None,
    /// QoS 1: PUBACK for this packet identifier.
    PubAck(u16),
    /// QoS 2: PUBREC for this packet identifier.
    PubRec(u16),
}

/// A change of QoS 2 state the store must keep for a persistent session, so that after a
/// crash the session resends what it had in flight under the original packet identifiers
/// and PUBREL where PUBREC had come [MQTT-4.4.0-1], and does not deliver twice a QoS 2
/// message whose PUBREL had not come yet [MQTT-4.3.3-10] (see [`Session::drain_done`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos2Event {
    /// Outgoing: the delivery with store sequence `seq` went out as packet `id`.
    Sent { id: u16, seq: u64 },
    /// Outgoing: PUBREC came for packet `id` (delivery `seq`): PUBREL is owed.
    Released { id: u16, seq: u64 },
    /// Outgoing: packet `id` is complete (PUBCOMP, or dropped).
    Completed { id: u16 },
    /// Incoming: a QoS 2 PUBLISH with packet `id` was accepted; PUBREL is awaited.
    Received { id: u16 },
    /// Incoming: PUBREL came for packet `id`.
    Freed { id: u16 },
}

/// One thing the store must learn about a persistent session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreChange {
    /// The delivery with this store sequence number is complete.
    Done(u64),
    /// A QoS 2 state change.
    Qos2(Qos2Event),
}

/// What became of a message given to [`Session::deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Encoded into the transmit buffer.
    Sent,
    /// Waiting in the session's queue (offline, or behind the inflight window).
    Queued,
    /// Dropped: a QoS 0 message to an offline session or a slow consumer, a full queue, an
    /// expired message, or one larger than the client's Maximum Packet Size.
    Dropped,
}

/// Messages this session dropped, by cause (added to the shard's metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// QoS 0 messages dropped because the client was not reading (write buffer full).
    pub slow_consumer: u64,
    /// Messages dropped because the queue was full.
    pub queue_full: u64,
    /// Messages whose Message Expiry Interval passed before they could be sent.
    pub expired: u64,
    /// Messages larger than the client's Maximum Packet Size [MQTT-3.1.2-25].
    pub too_large: u64,
}

/// Limits this session ran into, by limit (added to the shard's metrics when it ends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitHits {
    /// More unreleased incoming QoS 2 messages than `receive_maximum` [MQTT-3.3.4-9].
    pub receive_maximum: u32,
    /// SUBSCRIBEs refused by `max_subscriptions`.
    pub subscriptions: u32,
    /// Topics and filters refused by `max_topic_levels`.
    pub topic_levels: u32,
}

/// A message as queued for, or in flight to, this client.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The message.
    pub msg: Message,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN as the client sees it.
    pub retain: bool,
    /// Subscription Identifiers and shared group, boxed: most deliveries have neither, and
    /// a window or queue entry stays small.
    extra: Option<Box<OutExtra>>,
    /// The store's sequence number of this delivery (0: not in the store).
    pub seq: u64,
}

/// The rarer parts of an [`Outgoing`].
#[derive(Clone, Debug)]
struct OutExtra {
    ids: SmallVec<[u32; 2]>,
    share: Option<TopicFilter>,
}

impl Outgoing {
    fn new(msg: Message, qos: QoS, grant: Grant<'_>) -> Self {
        let extra = (!grant.ids.is_empty() || grant.share.is_some()).then(|| {
            Box::new(OutExtra {
                ids: SmallVec::from_slice(grant.ids),
                share: grant.share.cloned(),
            })
        });
        Self {
            msg,
            qos,
            retain: grant.retain,
            extra,
            seq: grant.seq,
        }
    }

    fn cost(&self) -> usize {
        self.msg.payload.len() + self.msg.topic.len()
    }

    /// The Subscription Identifiers attached.
    pub fn ids(&self) -> &[u32] {
        self.extra.as_deref().map_or(&[], |e| &e.ids)
    }

    /// The shared subscription (`$share/` filter) the message was chosen for.
    pub fn share(&self) -> Option<&TopicFilter> {
        self.extra.as_deref().and_then(|e| e.share.as_ref())
    }
}

/// Everything a parked (offline, persistent) session is, as plain data: what the store keeps
/// and gives back after a restart ([`Session::image`], [`Session::from_image`]).
#[derive(Clone, Debug)]
pub struct SessionImage {
    /// The client identifier.
    pub client_id: Str,
    /// Protocol version of the last connection.
    pub version: Version,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry: u32,
    /// Subscriptions.
    pub subscriptions: Vec<(TopicFilter, Subscription)>,
    /// The outgoing window: packet id, state, and the message (absent once PUBREC'd).
    pub inflight: Vec<(u16, OutState, Option<Outgoing>)>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub inbound: Vec<u16>,
    /// Messages queued for the client.
    pub queue: Vec<Outgoing>,
    /// A will waiting out its delay.
    pub will: Option<Will>,
}

impl Outgoing {
    /// An outgoing message as the store gives it back.
    pub fn restored(
        msg: Message,
        qos: QoS,
        retain: bool,
        ids: &[u32],
        share: Option<TopicFilter>,
        seq: u64,
    ) -> Self {
        let grant = Grant {
            qos,
            retain,
            ids,
            share: share.as_ref(),
            seq,
        };
        Outgoing::new(msg, qos, grant)
    }
}

/// Topic aliases of one 5.0 connection, both directions (allocated only when used).
#[derive(Debug, Default)]
struct Aliases {
    /// Client → server: alias − 1 → topic.
    incoming: Vec<Option<TopicName>>,
    /// Server → client: topic → alias.
    outgoing: AHashMap<TopicName, u16>,
    /// The client's Topic Alias Maximum.
    outgoing_max: u16,
}

/// Longest topic the broker gives a topic alias towards a client: each alias keeps a copy of
/// its topic, so this bounds the alias table at `max_topic_aliases` × this many bytes.
const MAX_ALIASED_TOPIC: usize = 256;

/// A SUBSCRIBE entry refused: the SUBACK code and, for the Reason String, why.
type Refusal = (ReasonCode, &'static str);

/// The client identifier a CONNECT is accepted under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The identifier the session is keyed by.
    pub client_id: Str,
    /// Whether the broker assigned it (the client sent an empty one).
    pub assigned: bool,
}

/// Checks a CONNECT's client identifier and flags against the version's rules, returning
/// the identifier to use or the CONNACK refusal reason.
///
/// `assign` is called for an empty identifier the rules allow the broker to replace
/// (3.1.1 with Clean Session 1 [MQTT-3.1.3-6], 5.0 always [MQTT-3.1.3-6]).
pub fn check_connect(
    c: &Connect,
    max_client_id_len: usize,
    assign: impl FnOnce() -> Str,
) -> Result<Accepted, ReasonCode> {
    if c.client_id.len() > max_client_id_len {
        return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }
    if !c.client_id.is_empty() {
        return Ok(Accepted {
            client_id: c.client_id.clone(),
            assigned: false,
        });
    }
    match c.version {
        // 3.1 requires 1 to 23 characters.
        Version::V3_1 => Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        // [MQTT-3.1.3-7], [MQTT-3.1.3-8]: an empty id needs Clean Session 1.
        Version::V3_1_1 if !c.clean_start => Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        _ => Ok(Accepted {
            client_id: assign(),
            assigned: true,
        }),
    }
}

/// Whether a CONNECT asks for a session that outlives the connection.
pub fn wants_persistence(c: &Connect) -> bool {
    if c.version.is_v5() {
        c.properties.session_expiry_interval.unwrap_or(0) > 0
    } else {
        !c.clean_start
    }
}

/// Encodes a CONNACK refusing the connection (3.x return code or 5.0 reason code).
pub fn encode_refusal(version: Version, reason: ReasonCode, out: &mut BytesMut) {
    let ack = ConnAck {
        session_present: false,
        reason,
        properties: Default::default(),
    };
    // A refusal CONNACK has no variable-length fields: encoding cannot fail.
    let _ = Packet::ConnAck(ack).encode(version, out);
}

/// A copy of `p` whose topic and payload live in their own right-sized buffers, so a message
/// kept past the read (queued, in flight, retained, sent to another shard) does not pin the
/// connection's whole read buffer.
pub fn detached(p: &Publish) -> Publish {
    Publish {
        dup: false,
        qos: p.qos,
        retain: p.retain,
        topic: TopicName::new_unchecked(Bytes::copy_from_slice(p.topic.as_bytes())),
        packet_id: 0,
        payload: Bytes::copy_from_slice(&p.payload),
        properties: p.properties.clone(),
    }
}

fn levels(b: &[u8]) -> usize {
    1 + b.iter().filter(|&&c| c == b'/').count()
}

/// One client's session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    client_id: Str,
    version: Version,
    persistent: bool,
    connected: bool,
    keep_alive: u16,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    expiry: u32,
    /// The CONNECT asked for expiry 0: a DISCONNECT may not raise it [MQTT-3.14.2-2].
    connect_expiry_zero: bool,
    /// The client wants Reason Strings (Request Problem Information, default 1).
    problem_info: bool,
    /// The client's Maximum Packet Size (`u32::MAX`: none).
    client_max_packet: u32,
    will: Option<Will>,
    /// A will whose Will Delay Interval runs while the session is offline.
    delayed_will: Option<Box<Will>>,
    subscriptions: AHashMap<TopicFilter, Subscription>,
    out: OutWindow<Outgoing>,
    inbound: InWindow,
    queue: VecDeque<Outgoing>,
    queued_bytes: usize,
    aliases: Option<Box<Aliases>>,
    /// The Reason String for the SUBACK being built (the first refused filter's).
    suback_why: Option<&'static str>,
    /// Window entries still to be resent after a reconnect (over the Receive Maximum).
    replay_pending: Vec<u16>,
    /// What the store must learn since the shard last looked: deliveries completed (their
    /// store sequence numbers) and QoS 2 state changes.
    changes: Vec<StoreChange>,
    /// The next store sequence number for a delivery to this session.
    store_seq: u64,
    /// The store may hold records of this session (an image or deliveries).
    image_stored: bool,
    tx: BytesMut,
    limits: Arc<SessionLimits>,
    /// What the ACL file and the embedder's hooks let this client do (`None`: everything).
    authz: Option<Arc<Authz>>,
    /// What this session dropped so far.
    pub drops: DropCounts,
    /// Limits this session ran into so far.
    pub limit_hits: LimitHits,
}

impl Session {
    /// A new, empty, offline session for `client_id` (copied into its own buffer: the id
    /// goes into every message the client publishes, for No Local, and must not keep the
    /// CONNECT's read buffer alive).
    pub fn new(client_id: Str, limits: Arc<SessionLimits>) -> Self {
        Self {
            client_id: Str::new_unchecked(Bytes::copy_from_slice(client_id.as_bytes())),
            version: Version::V3_1_1,
            persistent: false,
            connected: false,
            keep_alive: 0,
            expiry: 0,
            connect_expiry_zero: true,
            problem_info: true,
            client_max_packet: u32::MAX,
            will: None,
            delayed_will: None,
            subscriptions: AHashMap::new(),
            out: OutWindow::new(limits.max_inflight.max(1)),
            inbound: InWindow::new(limits.receive_maximum.max(1)),
            queue: VecDeque::new(),
            queued_bytes: 0,
            aliases: None,
            suback_why: None,
            replay_pending: Vec::new(),
            changes: Vec::new(),
            store_seq: 1,
            image_stored: false,
            tx: BytesMut::new(),
            limits,
            authz: None,
            drops: DropCounts::default(),
            limit_hits: LimitHits::default(),
        }
    }

    /// The client identifier.
    pub fn client_id(&self) -> &Str {
        &self.client_id
    }

    /// The session as plain data, for the store (meant for a parked session: the transmit
    /// buffer and the connection's topic aliases are not part of it).
    pub fn image(&self) -> SessionImage {
        SessionImage {
            inflight: self
                .out
                .replay()
                .map(|(id, state, o)| (id, state, o.cloned()))
                .collect(),
            queue: self.queue.iter().cloned().collect(),
            ..self.image_meta()
        }
    }

    /// A parked persistent session rebuilt from its image.
    pub fn from_image(image: SessionImage, limits: Arc<SessionLimits>) -> Self {
        let mut s = Session::new(image.client_id, limits);
        s.version = image.version;
        s.persistent = true;
        s.expiry = image.expiry;
        s.connect_expiry_zero = false;
        s.subscriptions = image.subscriptions.into_iter().collect();
        for (id, state, o) in image.inflight {
            s.out.restore(id, state, o);
        }
        for id in image.inbound {
            s.inbound.restore(id);
        }
        for o in image.queue {
            s.store_seq = s.store_seq.max(o.seq + 1);
            if s.queue.len() >= s.limits.max_queued_messages {
                s.drops.queue_full += 1;
                s.finished(Some(o));
                continue;
            }
            s.queued_bytes += o.cost();
            s.queue.push_back(o);
        }
        s.delayed_will = image.will.map(Box::new);
        s.image_stored = true;
        s
    }

    /// Whether the store may hold records of this session (an image or deliveries): its end
    /// must then be written too.
    pub fn in_store(&self) -> bool {
        self.image_stored
    }

    /// Notes that the store forgot this session (it is no longer persistent).
    pub fn forget_store(&mut self) {
        self.image_stored = false;
    }

    /// Notes that the store holds an image of this session.
    pub fn mark_stored(&mut self) {
        self.image_stored = true;
    }

    /// A new store sequence number for a delivery to this session (it moves with the
    /// session, so numbers never repeat for its client id).
    pub fn next_store_seq(&mut self) -> u64 {
        self.image_stored = true;
        let seq = self.store_seq;
        self.store_seq += 1;
        seq
    }

    /// Whether deliveries completed, or QoS 2 state changed, since the last
    /// [`drain_done`](Self::drain_done) / [`drain_qos2`](Self::drain_qos2).
    #[inline]
    pub fn has_done(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Records a QoS 2 state change if the store keeps this session.
    fn qos2_event(&mut self, e: Qos2Event) {
        if self.persistent && self.image_stored {
            self.changes.push(StoreChange::Qos2(e));
        }
    }

    /// Hands the shard, since the last call, the store sequence numbers of deliveries
    /// completed (acknowledged, dropped, or given to another member) through `done`, and
    /// the QoS 2 state changes through `qos2`, oldest first.
    pub fn drain_done(&mut self, mut done: impl FnMut(u64), mut qos2: impl FnMut(Qos2Event)) {
        for c in self.changes.drain(..) {
            match c {
                StoreChange::Done(seq) => done(seq),
                StoreChange::Qos2(e) => qos2(e),
            }
        }
    }

    fn finished(&mut self, o: Option<Outgoing>) {
        if let Some(o) = o.filter(|o| o.seq != 0) {
            self.changes.push(StoreChange::Done(o.seq));
        }
    }

    /// The session without its messages (subscriptions, expiry, unreleased incoming QoS 2
    /// ids, delayed will): the store keeps each message as its own record.
    pub fn image_meta(&self) -> SessionImage {
        SessionImage {
            client_id: self.client_id.clone(),
            version: self.version,
            expiry: self.expiry(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, s)| (f.clone(), *s))
                .collect(),
            inflight: Vec::new(),
            inbound: self.inbound.ids().to_vec(),
            queue: Vec::new(),
            will: self.delayed_will.as_deref().cloned(),
        }
    }

    /// The protocol version of the current (or last) connection.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Sets what this client may do, for the connection being attached (its user name and
    /// client id decide it).
    pub fn set_authz(&mut self, authz: Option<Arc<Authz>>) {
        self.authz = authz;
    }

    /// What this client may do, and who it is to the hooks.
    pub fn authz(&self) -> Option<&Authz> {
        self.authz.as_deref()
    }

    /// [`authz`](Self::authz), shared (to outlive the session).
    pub fn authz_shared(&self) -> Option<Arc<Authz>> {
        self.authz.clone()
    }

    /// Whether this client may receive a message on `topic`. Only ACL deny rules can refuse
    /// what a subscription allowed at SUBSCRIBE let in, so without any the answer is yes at
    /// no cost.
    #[inline]
    pub fn may_read(&self, topic: &str) -> bool {
        self.authz.as_ref().is_none_or(|a| a.may_read(topic))
    }

    /// Whether a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the session outlives its connection.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Seconds the session outlives its connection (`u32::MAX`: never expires; 0 for a
    /// session that ends with its connection).
    pub fn expiry(&self) -> u32 {
        if self.persistent { self.expiry } else { 0 }
    }

    /// Keep alive in seconds as granted (0: none).
    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// The subscriptions held.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&TopicFilter, &Subscription)> {
        self.subscriptions.iter()
    }

    /// Number of subscriptions held.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Messages queued (not counting the inflight window).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Messages in the outgoing window.
    pub fn inflight(&self) -> usize {
        self.out.len()
    }

    /// Whether a QoS 1/2 message given now would be sent at once (connected, nothing queued,
    /// room in the window): how shared subscriptions pick a member that is keeping up.
    pub fn has_room(&self) -> bool {
        self.connected && self.queue.is_empty() && self.out.has_room()
    }

    /// Bytes waiting in the transmit buffer.
    pub fn tx_len(&self) -> usize {
        self.tx.len()
    }

    /// Swaps the transmit buffer with `spare` (an empty buffer the writer owns), handing the
    /// writer everything encoded since its last turn.
    pub fn swap_tx(&mut self, spare: &mut BytesMut) {
        debug_assert!(spare.is_empty());
        core::mem::swap(&mut self.tx, spare);
    }

    /// Attaches a connection whose CONNECT was accepted: takes its version, keep alive
    /// (capped by `max_keep_alive` when non-zero, which only a 5.0 client can be told), will,
    /// persistence and session expiry, and for 5.0 its Receive Maximum, Maximum Packet Size,
    /// Topic Alias Maximum and Request Problem Information. A will still waiting out its delay
    /// from the previous connection is cancelled [MQTT-3.1.3-9].
    pub fn attach(&mut self, c: &Connect) {
        let l = &self.limits;
        self.version = c.version;
        self.connected = true;
        self.persistent = wants_persistence(c);
        self.expiry = if c.version.is_v5() {
            c.properties
                .session_expiry_interval
                .unwrap_or(0)
                .min(l.max_session_expiry)
        } else if self.persistent {
            l.max_session_expiry
        } else {
            0
        };
        self.connect_expiry_zero = c.properties.session_expiry_interval.unwrap_or(0) == 0;
        self.will = c.will.clone();
        self.delayed_will = None;
        self.keep_alive = c.keep_alive;
        let max_keep_alive = l.max_keep_alive;
        if c.version.is_v5()
            && max_keep_alive > 0
            && (c.keep_alive == 0 || c.keep_alive > max_keep_alive)
        {
            self.keep_alive = max_keep_alive;
        }
        let p = &c.properties;
        let v5 = c.version.is_v5();
        let receive_max = if v5 {
            p.receive_maximum.unwrap_or(u16::MAX)
        } else {
            u16::MAX
        };
        self.problem_info = !v5 || p.request_problem_information != Some(0);
        self.client_max_packet = if v5 {
            p.maximum_packet_size.unwrap_or(u32::MAX)
        } else {
            u32::MAX
        };
        let alias_out = if v5 && l.server_topic_aliases {
            // Each alias keeps a topic: bounded by the broker's own limit too.
            p.topic_alias_maximum.unwrap_or(0).min(l.max_topic_aliases)
        } else {
            0
        };
        self.aliases = (alias_out > 0).then(|| {
            Box::new(Aliases {
                outgoing_max: alias_out,
                ..Aliases::default()
            })
        });
        self.out
            .set_capacity(self.limits.max_inflight.min(receive_max).max(1));
        self.tx.clear();
    }

    /// Encodes the CONNACK accepting the connection, then replays the inflight window (PUBLISH
    /// with DUP, or PUBREL [MQTT-4.4.0-1]) and sends what the queue holds, as the window allows.
    ///
    /// For 5.0 the CONNACK announces the broker's limits and features (§3.2.2.3): Receive
    /// Maximum, Maximum Packet Size, Topic Alias Maximum, Maximum QoS and the availability
    /// flags when something is off, the granted Session Expiry and Server Keep Alive when they
    /// differ from what was asked, the Assigned Client Identifier, and Response Information
    /// when requested; `auth` is the Authentication Method and final data of an enhanced
    /// authentication that accepted the client.
    pub fn connack(
        &mut self,
        session_present: bool,
        c: &Connect,
        assigned: Option<&Str>,
        auth: Option<(Str, Option<Bytes>)>,
        now: u32,
    ) {
        let mut ack = ConnAck {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        };
        if self.version.is_v5() {
            let l = &self.limits;
            let p = &mut ack.properties;
            if let Some(id) = assigned {
                p.assigned_client_identifier = Some(id.clone());
            }
            if let Some((method, data)) = auth {
                p.authentication_method = Some(method);
                p.authentication_data = data;
            }
            if self.keep_alive != c.keep_alive {
                p.server_keep_alive = Some(self.keep_alive);
            }
            let asked = c.properties.session_expiry_interval.unwrap_or(0);
            if asked != self.expiry {
                p.session_expiry_interval = Some(self.expiry);
            }
            p.receive_maximum = Some(l.receive_maximum);
            p.maximum_packet_size = Some(l.max_packet_size);
            p.topic_alias_maximum = Some(l.max_topic_aliases);
            if l.maximum_qos != QoS::ExactlyOnce {
                p.maximum_qos = Some(l.maximum_qos as u8);
            }
            if !l.retain_available {
                p.retain_available = Some(0);
            }
            if !l.wildcard_subscriptions {
                p.wildcard_subscription_available = Some(0);
            }
            if !l.subscription_identifiers {
                p.subscription_identifier_available = Some(0);
            }
            if !l.shared_subscriptions {
                p.shared_subscription_available = Some(0);
            }
            if c.properties.request_response_information == Some(1)
                && !l.response_information.is_empty()
            {
                let info = l
                    .response_information
                    .replace("%c", self.client_id.as_str());
                p.response_information = Str::new(Bytes::from(info)).ok();
            }
        }
        self.encode_within_limit(&mut Packet::ConnAck(ack));
        let replay: Vec<(u16, OutState, Option<Outgoing>)> = self
            .out
            .replay()
            .map(|(id, state, o)| (id, state, o.cloned()))
            .collect();
        // The client's (new) Receive Maximum bounds the replay too [MQTT-3.3.4-7]: what is
        // over it is resent as acknowledgements free room (`pump`).
        let cap = usize::from(self.out.capacity());
        let mut sent = 0;
        self.replay_pending.clear();
        for (id, state, o) in replay {
            match (state, o) {
                (OutState::AwaitPubComp, _) => {
                    self.encode_id_only(0x62, id);
                    sent += 1;
                }
                (_, Some(_)) if sent >= cap => self.replay_pending.push(id),
                (_, Some(o)) => {
                    if self.encode_out(&o, true, id, now) {
                        sent += 1;
                    } else {
                        self.complete_unsendable(id, state);
                    }
                }
                (_, None) => {}
            }
        }
        self.pump(now);
    }

    /// A message in the window that can no longer be sent (too large for the client's new
    /// Maximum Packet Size): complete it as if delivered [MQTT-3.1.2-25].
    fn complete_unsendable(&mut self, id: u16, state: OutState) {
        let outcome = if state == OutState::AwaitPubRec {
            self.out.pubrec_failed(id)
        } else {
            self.out.puback(id)
        };
        if let AckOutcome::Completed(o) = outcome {
            self.finished(o);
        }
    }

    /// Resends window entries a reconnect could not replay at once (they were over the
    /// client's Receive Maximum), while fewer than Receive Maximum are outstanding.
    fn replay_more(&mut self, now: u32) {
        let cap = usize::from(self.out.capacity());
        while let Some(&id) = self.replay_pending.first() {
            // Every pending id is still in the window (`unpend`); saturating all the same.
            if self.out.len().saturating_sub(self.replay_pending.len()) >= cap {
                return;
            }
            // Rare (a reconnect with a smaller Receive Maximum) and short: a Vec will do.
            self.replay_pending.remove(0);
            let entry = self
                .out
                .replay()
                .find(|(i, _, _)| *i == id)
                .and_then(|(_, state, o)| Some((state, o?.clone())));
            if let Some((state, o)) = entry {
                if !self.encode_out(&o, true, id, now) {
                    self.complete_unsendable(id, state);
                }
            }
        }
    }

    /// Forgets a window entry still to be resent after the reconnect: the client acknowledged
    /// it (it had it from the previous connection), so it is outstanding no more, or
    /// outstanding on this connection (its PUBREL went out). Left in `replay_pending` it would
    /// count as not yet sent, and `replay_more` would send one more than the client's Receive
    /// Maximum allows [MQTT-3.3.4-7].
    fn unpend(&mut self, id: u16) {
        if !self.replay_pending.is_empty() {
            self.replay_pending.retain(|&p| p != id);
        }
    }

    /// Detaches the connection. Returns the will to publish now, if the session still holds
    /// one (the connection ended without DISCONNECT) and it has no Will Delay Interval to wait
    /// out (a session that ends now publishes at once); a delayed will stays in the session
    /// ([`will_delay`](Self::will_delay), [`take_delayed_will`](Self::take_delayed_will)).
    /// Unsent bytes are dropped; the window and queue stay for a persistent session's next
    /// connection.
    pub fn detach(&mut self) -> Option<Will> {
        self.connected = false;
        self.tx = BytesMut::new();
        self.aliases = None;
        self.replay_pending.clear();
        let will = self.will.take()?;
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        if delay > 0 && self.expiry() > 0 {
            self.delayed_will = Some(Box::new(will));
            return None;
        }
        Some(will)
    }

    /// Seconds until the delayed will is due, counted from the detach: the Will Delay
    /// Interval or the session's end, whichever comes first [MQTT-3.1.3-9]. `None` when no
    /// will waits.
    pub fn will_delay(&self) -> Option<u32> {
        let w = self.delayed_will.as_ref()?;
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        Some(delay.min(self.expiry()))
    }

    /// Takes the delayed will (its delay ran out, or the session ended).
    pub fn take_delayed_will(&mut self) -> Option<Will> {
        self.delayed_will.take().map(|w| *w)
    }

    /// Encodes any packet for the client (AUTH during re-authentication).
    pub fn send(&mut self, p: &Packet) {
        let _ = p.encode(self.version, &mut self.tx);
    }

    /// Encodes a 5.0 DISCONNECT with `reason` (3.x has no server DISCONNECT: the shard just
    /// closes). Used for takeover (0x8E), shutdown (0x8B), keep alive timeout (0x8D): the
    /// Reason String is the reason's name (some clients read the reason code only from a
    /// DISCONNECT that has properties).
    pub fn disconnect_with(&mut self, reason: ReasonCode) {
        self.disconnect_because(reason, Some(reason.name()));
    }

    /// [`disconnect_with`](Self::disconnect_with), with a Reason String when the client asked
    /// for problem information.
    pub fn disconnect_because(&mut self, reason: ReasonCode, why: Option<&'static str>) {
        if self.version.is_v5() && self.connected {
            let mut d = Disconnect {
                reason,
                properties: Default::default(),
            };
            if let Some(why) = why.filter(|_| self.problem_info) {
                d.properties.reason_string = Some(Str::from(why));
            }
            let mut p = Packet::Disconnect(d);
            self.encode_within_limit(&mut p);
        }
    }

    /// Encodes a DISCONNECT or SUBACK, leaving out its Reason String when the packet would
    /// exceed the client's Maximum Packet Size [MQTT-3.2.2-19], or a CONNACK, leaving out its
    /// Response Information (which the server may omit, §3.2.2.3.15, and whose size the
    /// configured template and the client id decide) [MQTT-3.1.2-24].
    fn encode_within_limit(&mut self, p: &mut Packet) {
        let before = self.tx.len();
        let _ = p.encode(self.version, &mut self.tx);
        if self.tx.len() - before <= self.client_max_packet as usize {
            return;
        }
        self.tx.truncate(before);
        match p {
            Packet::Disconnect(d) => d.properties.reason_string = None,
            Packet::SubAck(a) => a.properties.reason_string = None,
            Packet::ConnAck(a) => a.properties.response_information = None,
            _ => {}
        }
        let _ = p.encode(self.version, &mut self.tx);
    }

    /// Handles one packet from the connected client at broker second `now`. `Err` is a
    /// protocol violation: send [`disconnect_because`](Self::disconnect_because)`(err.reason)`
    /// and close.
    pub fn handle(
        &mut self,
        packet: Packet,
        now: u32,
        actions: &mut Vec<Action>,
    ) -> Result<(), Error> {
        let version = self.version;
        match packet {
            Packet::Publish(p) => self.publish_in(p, now, actions)?,
            Packet::PubAck(a) => {
                if let AckOutcome::Completed(o) = self.out.puback(a.packet_id) {
                    self.unpend(a.packet_id);
                    self.finished(o);
                    self.pump(now);
                }
            }
            Packet::PubRec(a) => {
                let failed = version.is_v5() && !a.reason.is_success();
                let outcome = if failed {
                    self.out.pubrec_failed(a.packet_id)
                } else {
                    self.out.pubrec(a.packet_id)
                };
                if !matches!(outcome, AckOutcome::Unknown) {
                    self.unpend(a.packet_id);
                }
                match outcome {
                    AckOutcome::SendPubRel(o) => {
                        // The client has the message: the store keeps only that PUBREL
                        // is owed.
                        if o.seq != 0 {
                            let (id, seq) = (a.packet_id, o.seq);
                            self.qos2_event(Qos2Event::Released { id, seq });
                        }
                        self.finished(Some(o));
                        self.encode_id_only(0x62, a.packet_id);
                    }
                    AckOutcome::ResendPubRel => self.encode_id_only(0x62, a.packet_id),
                    AckOutcome::Completed(o) => {
                        self.qos2_event(Qos2Event::Completed { id: a.packet_id });
                        self.finished(o);
                        self.pump(now);
                    }
                    AckOutcome::Unknown if version.is_v5() && !failed => {
                        let mut rel = PubAck::new(a.packet_id);
                        rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                        let _ = Packet::PubRel(rel).encode(version, &mut self.tx);
                    }
                    AckOutcome::Unknown => {}
                }
            }
            Packet::PubComp(a) => {
                if let AckOutcome::Completed(_) = self.out.pubcomp(a.packet_id) {
                    self.unpend(a.packet_id);
                    self.qos2_event(Qos2Event::Completed { id: a.packet_id });
                    self.pump(now);
                }
            }
            Packet::PubRel(a) => {
                let known = self.inbound.pubrel(a.packet_id);
                if known {
                    self.qos2_event(Qos2Event::Freed { id: a.packet_id });
                }
                if known || !version.is_v5() {
                    self.encode_id_only(0x70, a.packet_id);
                } else {
                    let mut comp = PubAck::new(a.packet_id);
                    comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    let _ = Packet::PubComp(comp).encode(version, &mut self.tx);
                }
            }
            Packet::Subscribe(s) => {
                // Checked for the whole packet first, so a violation leaves no filter half
                // applied.
                if s.filters
                    .iter()
                    .any(|(f, o)| o.no_local && f.shared().is_some())
                {
                    return Err(Error::protocol(
                        "MQTT-3.8.3-4",
                        "No Local set on a shared subscription",
                    ));
                }
                let id = s.properties.subscription_identifiers.first().copied();
                let mut reasons = Vec::with_capacity(s.filters.len());
                let mut why = None;
                for (filter, options) in s.filters {
                    let r = self.subscribe_one(filter, options, id, actions);
                    if let Err(e) = &r {
                        why.get_or_insert(*e);
                    }
                    reasons.push(r.unwrap_or_else(|(code, _)| code));
                }
                actions.push(Action::SubAck {
                    packet_id: s.packet_id,
                    reasons,
                });
                self.suback_why = why.map(|(_, text)| text);
            }
            Packet::Unsubscribe(u) => {
                let mut reasons = Vec::with_capacity(u.filters.len());
                for filter in u.filters {
                    if self.subscriptions.remove(&filter).is_some() {
                        actions.push(Action::Unsubscribe(filter));
                        reasons.push(ReasonCode::SUCCESS);
                    } else {
                        reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
                    }
                }
                let ack = UnsubAck {
                    packet_id: u.packet_id,
                    reasons,
                    properties: Default::default(),
                };
                let _ = Packet::UnsubAck(ack).encode(version, &mut self.tx);
            }
            Packet::PingReq => {
                let _ = Packet::PingResp.encode(version, &mut self.tx);
            }
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    if self.connect_expiry_zero && e != 0 {
                        return Err(Error::protocol(
                            "MQTT-3.14.2-2",
                            "DISCONNECT sets a Session Expiry Interval after CONNECT set 0",
                        ));
                    }
                    self.expiry = e.min(self.limits.max_session_expiry);
                    self.persistent = self.expiry > 0;
                }
                let publish_will = d.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE;
                if !publish_will {
                    // [MQTT-3.14.4-3]: a DISCONNECT discards the will.
                    self.will = None;
                }
                actions.push(Action::Disconnect { publish_will });
            }
            Packet::Connect(_) => {
                return Err(Error::protocol(
                    "MQTT-3.1.0-2",
                    "a second CONNECT on one connection",
                ));
            }
            Packet::Auth(_) => {
                return Err(Error::protocol(
                    "MQTT-4.12.0-1",
                    "AUTH without an authentication method",
                ));
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(Error::protocol("§2.1.2", "a packet only a server sends"));
            }
        }
        Ok(())
    }

    /// Resolves a client PUBLISH's Topic Alias (§3.3.2.3.4): sets it when the PUBLISH names a
    /// topic, looks it up when the topic is empty.
    fn resolve_alias(&mut self, p: &mut Publish) -> Result<(), Error> {
        let Some(alias) = p.properties.topic_alias else {
            if p.topic.is_empty() {
                return Err(Error::protocol(
                    "MQTT-3.3.2-1",
                    "PUBLISH with an empty topic and no Topic Alias",
                ));
            }
            return Ok(());
        };
        let max = self.limits.max_topic_aliases;
        if alias == 0 || alias > max {
            return Err(Error::with_reason(
                "MQTT-3.3.2-9",
                "Topic Alias 0 or above the broker's Topic Alias Maximum",
                ReasonCode::TOPIC_ALIAS_INVALID,
            ));
        }
        p.properties.topic_alias = None;
        let aliases = self.aliases.get_or_insert_with(Default::default);
        if aliases.incoming.len() < usize::from(max) {
            aliases.incoming.resize(usize::from(max), None);
        }
        let slot = &mut aliases.incoming[usize::from(alias) - 1];
        if p.topic.is_empty() {
            match slot {
                Some(t) => p.topic = t.clone(),
                None => {
                    return Err(Error::protocol(
                        "§3.3.2.3.4",
                        "PUBLISH names its topic by an alias that was never set",
                    ));
                }
            }
        } else {
            // Kept past this read: copy it out of the read buffer.
            *slot = Some(TopicName::new_unchecked(Bytes::copy_from_slice(
                p.topic.as_bytes(),
            )));
        }
        Ok(())
    }

    fn publish_in(
        &mut self,
        mut p: Publish,
        now: u32,
        actions: &mut Vec<Action>,
    ) -> Result<(), Error> {
        let version = self.version;
        if version.is_v5() && !p.properties.is_empty() {
            self.resolve_alias(&mut p)?;
            if !p.properties.subscription_identifiers.is_empty() {
                return Err(Error::protocol(
                    "MQTT-3.3.4-6",
                    "a client PUBLISH carries a Subscription Identifier",
                ));
            }
        } else if p.topic.is_empty() {
            return Err(Error::protocol(
                "MQTT-3.3.2-1",
                "PUBLISH with an empty topic and no Topic Alias",
            ));
        }
        // A topic shorter than the limit cannot have more levels than it: skip the count.
        if p.topic.len() >= self.limits.max_topic_levels
            && levels(p.topic.as_bytes()) > self.limits.max_topic_levels
        {
            self.limit_hits.topic_levels += 1;
            return Err(Error::with_reason(
                "§4.7",
                "topic name has more levels than the broker allows",
                ReasonCode::TOPIC_NAME_INVALID,
            ));
        }
        if p.retain && !self.limits.retain_available {
            return Err(Error::with_reason(
                "MQTT-3.3.1-7",
                "PUBLISH with RETAIN while Retain Available is 0",
                ReasonCode::RETAIN_NOT_SUPPORTED,
            ));
        }
        if p.qos > self.limits.maximum_qos {
            return Err(Error::with_reason(
                "MQTT-3.2.2-11",
                "PUBLISH with a QoS above the broker's Maximum QoS",
                ReasonCode::QOS_NOT_SUPPORTED,
            ));
        }
        let id = p.packet_id;
        // Not routed; QoS 1/2 publishers hear why (5.0; 3.1.1 acknowledgements cannot say
        // it), QoS 0 is dropped:
        let refused = if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // §3.3.2.3.2: the broker may check a payload declared UTF-8.
            Some(ReasonCode::PAYLOAD_FORMAT_INVALID)
        } else if self
            .authz
            .as_ref()
            .is_some_and(|a| !a.allows_publish(p.topic.as_str()))
        {
            // The ACL or a hook does not let this client publish there.
            Some(ReasonCode::NOT_AUTHORIZED)
        } else {
            None
        };
        if let Some(reason) = refused {
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.encode_ack(Ack::PubAck(id), reason),
                QoS::ExactlyOnce => self.encode_ack(Ack::PubRec(id), reason),
            }
            return Ok(());
        }
        let expires_at = p
            .properties
            .message_expiry_interval
            .map(|e| now.saturating_add(e));
        let keep = p.qos != QoS::AtMostOnce || p.retain;
        // The session's own copy of its id (see `new`): a reference count, not a copy.
        let origin = self.client_id.clone();
        let message = |p: Publish| {
            let publish = if keep {
                detached(&p)
            } else {
                // Delivered and dropped within this loop turn, or copied where it is kept.
                Publish {
                    dup: false,
                    packet_id: 0,
                    ..p
                }
            };
            Arc::new(AppMessage {
                publish,
                origin,
                expires_at,
            })
        };
        match p.qos {
            QoS::AtMostOnce => actions.push(Action::Publish {
                msg: message(p),
                ack: Ack::None,
            }),
            QoS::AtLeastOnce => actions.push(Action::Publish {
                msg: message(p),
                ack: Ack::PubAck(id),
            }),
            QoS::ExactlyOnce => match self.inbound.publish(id) {
                IncomingQos2::Deliver => {
                    self.qos2_event(Qos2Event::Received { id });
                    actions.push(Action::Publish {
                        msg: message(p),
                        ack: Ack::PubRec(id),
                    })
                }
                IncomingQos2::Duplicate => {
                    self.encode_id_only(0x50, id);
                }
                IncomingQos2::Exceeded => {
                    self.limit_hits.receive_maximum += 1;
                    return Err(Error::with_reason(
                        "MQTT-3.3.4-9",
                        "more unreleased QoS 2 messages than Receive Maximum",
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    ));
                }
            },
        }
        Ok(())
    }

    /// Acknowledges a routed PUBLISH: 5.0 publishers learn when no subscriber matched
    /// (0x10 No matching subscribers).
    pub fn ack(&mut self, ack: Ack, matched: bool) {
        let reason = if matched || !self.version.is_v5() {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        };
        self.encode_ack(ack, reason);
    }

    /// A successful PUBACK / PUBREC / PUBREL / PUBCOMP (`byte0` 0x40 / 0x50 / 0x62 / 0x70):
    /// type, length 2, packet identifier, in every version (a 5.0 success with no
    /// properties omits the reason code, §3.4.2.1). The common case, written directly.
    #[inline]
    fn encode_id_only(&mut self, byte0: u8, id: u16) {
        let [hi, lo] = id.to_be_bytes();
        self.tx.extend_from_slice(&[byte0, 2, hi, lo]);
    }

    fn encode_ack(&mut self, ack: Ack, reason: ReasonCode) {
        let (id, byte0) = match ack {
            Ack::None => return,
            Ack::PubAck(id) => (id, 0x40),
            Ack::PubRec(id) => (id, 0x50),
        };
        if reason == ReasonCode::SUCCESS || !self.version.is_v5() {
            return self.encode_id_only(byte0, id);
        }
        let mut a = PubAck::new(id);
        a.reason = reason;
        let p = if byte0 == 0x50 {
            Packet::PubRec(a)
        } else {
            Packet::PubAck(a)
        };
        let _ = p.encode(self.version, &mut self.tx);
    }

    /// One SUBSCRIBE entry (the packet's protocol rules were checked in `handle`): the
    /// granted QoS, or why it is refused.
    fn subscribe_one(
        &mut self,
        filter: TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
        actions: &mut Vec<Action>,
    ) -> Result<ReasonCode, Refusal> {
        let v5 = self.version.is_v5();
        let l = &self.limits;
        // 3.x has one failure code, 0x80.
        let fail = |code: ReasonCode, why: &'static str| {
            Err((
                if v5 {
                    code
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                },
                why,
            ))
        };
        let shared = filter.shared().is_some();
        if shared && !l.shared_subscriptions {
            return fail(
                ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                "shared subscriptions are disabled on this broker",
            );
        }
        if !l.wildcard_subscriptions && filter.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
            return fail(
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
                "wildcard subscriptions are disabled on this broker",
            );
        }
        if id.is_some() && !l.subscription_identifiers {
            return fail(
                ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are disabled on this broker",
            );
        }
        if levels(filter.as_bytes()) > l.max_topic_levels + 2 * usize::from(shared) {
            self.limit_hits.topic_levels += 1;
            return fail(
                ReasonCode::TOPIC_FILTER_INVALID,
                "the filter has more levels than the broker allows",
            );
        }
        if self
            .authz
            .as_ref()
            .is_some_and(|a| !a.allows_subscribe(filter.as_str()))
        {
            return fail(
                ReasonCode::NOT_AUTHORIZED,
                "the ACL (or a hook) does not let this client subscribe to the filter",
            );
        }
        let is_new = !self.subscriptions.contains_key(&filter);
        if is_new && self.subscriptions.len() >= l.max_subscriptions {
            self.limit_hits.subscriptions += 1;
            return fail(
                ReasonCode::QUOTA_EXCEEDED,
                "the client holds as many subscriptions as the broker allows",
            );
        }
        let options = SubscriptionOptions {
            qos: options.qos.min(l.maximum_qos),
            ..options
        };
        let sub = Subscription {
            options,
            id: id.unwrap_or(0),
        };
        self.subscriptions.insert(filter.clone(), sub);
        actions.push(Action::Subscribe {
            filter,
            sub,
            is_new,
        });
        // Granted QoS 0, 1 or 2 are reason codes 0x00, 0x01, 0x02.
        Ok(ReasonCode(options.qos as u8))
    }

    /// Encodes the SUBACK for a SUBSCRIBE whose routes are now visible.
    pub fn suback(&mut self, packet_id: u16, reasons: Vec<ReasonCode>) {
        let mut ack = SubAck {
            packet_id,
            reasons,
            properties: Default::default(),
        };
        if let Some(why) = self.suback_why.take().filter(|_| self.problem_info) {
            ack.properties.reason_string = Some(Str::from(why));
        }
        self.encode_within_limit(&mut Packet::SubAck(ack));
    }

    /// Whether retained messages go to the client for this subscription: always in 3.x (a
    /// replaced identical subscription re-sends them, [MQTT-3.8.4-3]); in 5.0 as Retain
    /// Handling says. Never for a shared subscription (§4.8.2).
    pub fn retained_on_subscribe(
        &self,
        filter: &TopicFilter,
        options: &SubscriptionOptions,
        is_new: bool,
    ) -> bool {
        if filter.shared().is_some() {
            return false;
        }
        if !self.version.is_v5() {
            return true;
        }
        match options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendIfNew => is_new,
            RetainHandling::DoNotSend => false,
        }
    }

    /// Takes the will (the shard publishes it on an abnormal loss, or when a DISCONNECT 0x04
    /// asked for it).
    pub fn take_will(&mut self) -> Option<Will> {
        self.will.take()
    }

    /// Delivers `msg` to this client as `grant` says, at broker second `now`: QoS 0 straight
    /// into the transmit buffer (dropped if the client is offline or not reading), QoS 1/2
    /// through the window, or the queue when the window is full or the client is offline.
    /// An expired message is dropped.
    pub fn deliver(&mut self, msg: &Message, grant: Grant<'_>, now: u32) -> Delivered {
        if msg.is_expired(now) {
            self.drops.expired += 1;
            return Delivered::Dropped;
        }
        let qos = msg.qos.min(grant.qos);
        if qos == QoS::AtMostOnce {
            if self.connected {
                if self.tx.len() >= self.limits.max_write_buffer {
                    self.drops.slow_consumer += 1;
                    return Delivered::Dropped;
                }
                let sent = self.encode_msg(msg, qos, grant.retain, grant.ids, false, 0, now);
                return if sent {
                    Delivered::Sent
                } else {
                    Delivered::Dropped
                };
            }
            if !(self.persistent && self.limits.queue_qos0_offline) {
                return Delivered::Dropped;
            }
            let copy = Arc::new(AppMessage {
                publish: detached(msg),
                origin: msg.origin.clone(),
                expires_at: msg.expires_at,
            });
            return self.enqueue(Outgoing::new(copy, qos, grant));
        }
        let o = Outgoing::new(msg.clone(), qos, grant);
        if self.connected && self.queue.is_empty() && self.out.has_room() {
            return self.send_windowed(o, now);
        }
        self.enqueue(o)
    }

    /// [`encode_msg`](Self::encode_msg) for a queued or inflight message.
    fn encode_out(&mut self, o: &Outgoing, dup: bool, packet_id: u16, now: u32) -> bool {
        self.encode_msg(&o.msg, o.qos, o.retain, o.ids(), dup, packet_id, now)
    }

    /// Encodes one delivery into the transmit buffer with this client's per-delivery
    /// properties (5.0: subscription identifiers, the remaining expiry, a topic alias).
    /// Returns false, encoding nothing, when the frame exceeds the client's Maximum Packet
    /// Size [MQTT-3.1.2-24].
    #[allow(
        clippy::too_many_arguments,
        reason = "the hot path: the delivery's fields, not a struct built per message"
    )]
    #[inline(always)]
    fn encode_msg(
        &mut self,
        msg: &Message,
        qos: QoS,
        retain: bool,
        ids: &[u32],
        dup: bool,
        packet_id: u16,
        now: u32,
    ) -> bool {
        let d = Delivery {
            dup,
            qos,
            retain,
            packet_id,
        };
        let before = self.tx.len();
        let version = self.version;
        let plain = !version.is_v5()
            || (ids.is_empty() && msg.expires_at.is_none() && self.aliases.is_none());
        if plain {
            let _ = msg.encode_as(version, d, &mut self.tx);
            if self.tx.len() - before > self.client_max_packet as usize {
                self.tx.truncate(before);
                self.drops.too_large += 1;
                return false;
            }
            return true;
        }
        let fits = self.encode_v5_extras(msg, d, ids, now);
        if !fits {
            self.drops.too_large += 1;
        }
        fits
    }

    /// The 5.0 delivery with its own property list: subscription identifiers, the remaining
    /// Message Expiry Interval, and a topic alias when the client allows them. A topic gets
    /// an alias only once a frame carrying it fits the client's Maximum Packet Size, so the
    /// client has learned every alias it is sent. Returns false, encoding nothing, when the
    /// frame does not fit even without a new alias.
    #[inline(never)]
    fn encode_v5_extras(&mut self, msg: &Message, d: Delivery, ids: &[u32], now: u32) -> bool {
        let mut props: Properties = msg.properties.clone();
        if !ids.is_empty() {
            props.subscription_identifiers = ids.to_vec();
        }
        if let Some(at) = msg.expires_at {
            // Onward delivery has started: at least 1 s (0 reads as "already expired").
            props.message_expiry_interval = Some(at.saturating_sub(now).max(1));
        }
        let max = self.client_max_packet as usize;
        let before = self.tx.len();
        let mut topic = msg.topic.as_bytes();
        let mut new_alias = None;
        if let Some(a) = self.aliases.as_deref().filter(|a| a.outgoing_max > 0) {
            if let Some(&alias) = a.outgoing.get(&msg.topic) {
                props.topic_alias = Some(alias);
                topic = &[];
            } else if a.outgoing.len() < usize::from(a.outgoing_max)
                && topic.len() <= MAX_ALIASED_TOPIC
            {
                let alias = a.outgoing.len() as u16 + 1;
                props.topic_alias = Some(alias);
                new_alias = Some(alias);
            }
        }
        let _ = msg.encode_with(self.version, d, topic, &props, &mut self.tx);
        if self.tx.len() - before > max {
            self.tx.truncate(before);
            if new_alias.is_none() {
                return false;
            }
            // Without the alias it may still fit; the topic then stays unaliased for now.
            props.topic_alias = None;
            new_alias = None;
            let _ = msg.encode_with(self.version, d, topic, &props, &mut self.tx);
            if self.tx.len() - before > max {
                self.tx.truncate(before);
                return false;
            }
        }
        if let (Some(alias), Some(a)) = (new_alias, self.aliases.as_deref_mut()) {
            // Its own copy: the message's topic may be a view of a read buffer.
            let key = TopicName::new_unchecked(Bytes::copy_from_slice(msg.topic.as_bytes()));
            a.outgoing.insert(key, alias);
        }
        true
    }

    fn enqueue(&mut self, o: Outgoing) -> Delivered {
        let cost = o.cost();
        while self.queue.len() >= self.limits.max_queued_messages
            || self.queued_bytes + cost > self.limits.max_queued_bytes
        {
            let oldest_qos0 = (o.qos != QoS::AtMostOnce)
                .then(|| self.queue.iter().position(|q| q.qos == QoS::AtMostOnce))
                .flatten();
            match oldest_qos0 {
                Some(i) => {
                    if let Some(gone) = self.queue.remove(i) {
                        self.queued_bytes -= gone.cost();
                    }
                    self.drops.queue_full += 1;
                }
                None => {
                    self.drops.queue_full += 1;
                    return Delivered::Dropped;
                }
            }
        }
        self.queued_bytes += cost;
        self.queue.push_back(o);
        Delivered::Queued
    }

    fn send_windowed(&mut self, o: Outgoing, now: u32) -> Delivered {
        let qos2 = o.qos == QoS::ExactlyOnce;
        let (msg, qos, retain) = (o.msg.clone(), o.qos, o.retain);
        let ids: SmallVec<[u32; 2]> = SmallVec::from_slice(o.ids());
        let seq = o.seq;
        match self.out.push(o, qos2) {
            Ok(packet_id) => {
                if qos2 && seq != 0 {
                    self.qos2_event(Qos2Event::Sent { id: packet_id, seq });
                }
                if self.encode_msg(&msg, qos, retain, &ids, false, packet_id, now) {
                    Delivered::Sent
                } else {
                    // Too large for the client: behave as if it had been delivered
                    // [MQTT-3.1.2-25].
                    let outcome = if qos2 {
                        self.out.pubrec_failed(packet_id)
                    } else {
                        self.out.puback(packet_id)
                    };
                    if let AckOutcome::Completed(o) = outcome {
                        self.finished(o);
                    }
                    Delivered::Dropped
                }
            }
            Err(o) => {
                // The window was full after all: keep the message at the head of the queue.
                self.queued_bytes += o.cost();
                self.queue.push_front(o);
                Delivered::Queued
            }
        }
    }

    /// Moves queued messages into the window (and QoS 0 ones straight out) while the client
    /// is connected and the window has room; expired ones are dropped on the way.
    fn pump(&mut self, now: u32) {
        if !self.replay_pending.is_empty() && self.connected {
            self.replay_more(now);
        }
        while self.connected {
            let Some(front) = self.queue.front() else {
                return;
            };
            if front.qos != QoS::AtMostOnce && !self.out.has_room() {
                return;
            }
            let Some(o) = self.queue.pop_front() else {
                return;
            };
            self.queued_bytes -= o.cost();
            if o.msg.is_expired(now) {
                self.drops.expired += 1;
                self.finished(Some(o));
                continue;
            }
            if o.qos == QoS::AtMostOnce {
                self.encode_out(&o, false, 0, now);
            } else {
                self.send_windowed(o, now);
            }
        }
    }

    /// Takes every queued and unacknowledged message that was chosen for a shared
    /// subscription (the session is leaving: they go to other members of their groups).
    /// QoS 2 messages already PUBREC'd stay: the client has them. Unacknowledged QoS 2
    /// messages are taken only when the session ends (`ending`): a parked session's client may
    /// hold one awaiting PUBREL, and giving it to another member would deliver it twice
    /// (§4.8.2 allows redirecting QoS 1 only).
    pub fn take_shared(&mut self, ending: bool) -> Vec<Outgoing> {
        let mut taken = Vec::new();
        if self.queue.iter().any(|o| o.share().is_some()) {
            let mut kept = VecDeque::with_capacity(self.queue.len());
            for mut o in self.queue.drain(..) {
                if o.share().is_some() {
                    self.queued_bytes -= o.cost();
                    if o.seq != 0 {
                        self.changes
                            .push(StoreChange::Done(std::mem::take(&mut o.seq)));
                    }
                    taken.push(o);
                } else {
                    kept.push_back(o);
                }
            }
            self.queue = kept;
        }
        let ids: Vec<(u16, bool)> = self
            .out
            .replay()
            .filter_map(|(id, state, o)| {
                let o = o?;
                let qos2 = o.qos == QoS::ExactlyOnce;
                (o.share().is_some() && state != OutState::AwaitPubComp && (ending || !qos2))
                    .then_some((id, qos2))
            })
            .collect();
        for (id, qos2) in ids {
            let outcome = if qos2 {
                self.out.pubrec_failed(id)
            } else {
                self.out.puback(id)
            };
            if let AckOutcome::Completed(Some(mut o)) = outcome {
                if o.seq != 0 {
                    self.changes
                        .push(StoreChange::Done(std::mem::take(&mut o.seq)));
                }
                taken.push(o);
            }
        }
        taken
    }

    /// Forgets every subscription (returning them, for the shard to remove from its index)
    /// and every queued and inflight message: the session starts clean.
    pub fn clear(&mut self) -> Vec<TopicFilter> {
        let filters = self.subscriptions.drain().map(|(f, _)| f).collect();
        self.queue.clear();
        self.queued_bytes = 0;
        self.replay_pending.clear();
        self.out = OutWindow::new(self.limits.max_inflight.max(1));
        self.inbound = InWindow::new(self.limits.receive_maximum.max(1));
        filters
    }
}

#[cfg(test)]
mod tests;
