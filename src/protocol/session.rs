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
use std::sync::Arc;

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};

use super::encode::Delivery;
use super::error::Error;
use super::inflight::{AckOutcome, InWindow, IncomingQos2, OutState, OutWindow};
use super::packet::{
    ConnAck, Connect, Disconnect, Packet, PubAck, Publish, QoS, RetainHandling, SubAck,
    SubscriptionOptions, UnsubAck, Version, Will,
};
use super::reason::ReasonCode;
use super::string::Str;
use super::topic::{TopicFilter, TopicName};

/// An application message as the broker routes it: shared by every subscriber and shard it
/// reaches, with packet id 0 and DUP clear (each delivery sets its own).
pub type Message = Arc<Publish>;

/// The bounds one session enforces (from `config::Limits`).
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
        }
    }
}

/// What the shard must do after [`Session::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Route this message to its subscribers (and, if it has RETAIN set, to the retained
    /// store: an empty payload deletes).
    Publish(Message),
    /// The client subscribed to `filter` (`is_new`: it did not hold this filter before).
    /// Update the index and routes, then call [`Session::suback`] after the last one of the
    /// packet, then deliver retained messages as [`Session::retained_on_subscribe`] says.
    Subscribe {
        /// The filter (never a shared `$share/` one: those are refused in the SUBACK).
        filter: TopicFilter,
        /// The options granted.
        options: SubscriptionOptions,
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

/// What became of a message given to [`Session::deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Encoded into the transmit buffer.
    Sent,
    /// Waiting in the session's queue (offline, or behind the inflight window).
    Queued,
    /// Dropped: a QoS 0 message to an offline session or a slow consumer, or a full queue.
    Dropped,
}

/// Messages this session dropped, by cause (added to the shard's metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// QoS 0 messages dropped because the client was not reading (write buffer full).
    pub slow_consumer: u64,
    /// Messages dropped because the queue was full.
    pub queue_full: u64,
}

/// A message as queued for, or in flight to, this client.
#[derive(Clone, Debug)]
struct Outgoing {
    msg: Message,
    qos: QoS,
    retain: bool,
}

impl Outgoing {
    fn cost(&self) -> usize {
        self.msg.payload.len() + self.msg.topic.len()
    }
}

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
    will: Option<Will>,
    subscriptions: AHashMap<TopicFilter, SubscriptionOptions>,
    out: OutWindow<Outgoing>,
    inbound: InWindow,
    queue: VecDeque<Outgoing>,
    queued_bytes: usize,
    tx: BytesMut,
    limits: SessionLimits,
    /// What this session dropped so far.
    pub drops: DropCounts,
}

impl Session {
    /// A new, empty, offline session for `client_id`.
    pub fn new(client_id: Str, limits: SessionLimits) -> Self {
        Self {
            client_id,
            version: Version::V3_1_1,
            persistent: false,
            connected: false,
            keep_alive: 0,
            will: None,
            subscriptions: AHashMap::new(),
            out: OutWindow::new(limits.max_inflight.max(1)),
            inbound: InWindow::new(u16::MAX),
            queue: VecDeque::new(),
            queued_bytes: 0,
            tx: BytesMut::new(),
            limits,
            drops: DropCounts::default(),
        }
    }

    /// The client identifier.
    pub fn client_id(&self) -> &Str {
        &self.client_id
    }

    /// The protocol version of the current (or last) connection.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the session outlives its connection.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Keep alive in seconds as granted (0: none).
    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// The subscriptions held.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&TopicFilter, &SubscriptionOptions)> {
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
    /// persistence and, for 5.0, Receive Maximum.
    pub fn attach(&mut self, c: &Connect, max_keep_alive: u16) {
        self.version = c.version;
        self.connected = true;
        self.persistent = wants_persistence(c);
        self.will = c.will.clone();
        self.keep_alive = c.keep_alive;
        if c.version.is_v5()
            && max_keep_alive > 0
            && (c.keep_alive == 0 || c.keep_alive > max_keep_alive)
        {
            self.keep_alive = max_keep_alive;
        }
        let receive_max = if c.version.is_v5() {
            c.properties.receive_maximum.unwrap_or(u16::MAX)
        } else {
            u16::MAX
        };
        self.out
            .set_capacity(self.limits.max_inflight.min(receive_max).max(1));
        self.tx.clear();
    }

    /// Encodes the CONNACK accepting the connection, then replays the inflight window (PUBLISH
    /// with DUP, or PUBREL [MQTT-4.4.0-1]) and sends what the queue holds, as the window allows.
    ///
    /// `assigned` is the identifier the broker chose for a 5.0 client that sent none.
    pub fn connack(
        &mut self,
        session_present: bool,
        requested_keep_alive: u16,
        assigned: Option<&Str>,
    ) {
        let mut ack = ConnAck {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        };
        if self.version.is_v5() {
            if let Some(id) = assigned {
                ack.properties.assigned_client_identifier = Some(id.clone());
            }
            if self.keep_alive != requested_keep_alive {
                ack.properties.server_keep_alive = Some(self.keep_alive);
            }
        }
        let _ = Packet::ConnAck(ack).encode(self.version, &mut self.tx);
        let version = self.version;
        for (id, state, msg) in self.out.replay() {
            match (state, msg) {
                (OutState::AwaitPubComp, _) => {
                    let _ = Packet::PubRel(PubAck::new(id)).encode(version, &mut self.tx);
                }
                (_, Some(o)) => {
                    let d = Delivery {
                        dup: true,
                        qos: o.qos,
                        retain: o.retain,
                        packet_id: id,
                    };
                    let _ = o.msg.encode_as(version, d, &mut self.tx);
                }
                (_, None) => {}
            }
        }
        self.pump();
    }

    /// Detaches the connection. Returns the will to publish, if the session still holds one
    /// (the connection ended without DISCONNECT). Unsent bytes are dropped; the window and
    /// queue stay for a persistent session's next connection.
    pub fn detach(&mut self) -> Option<Will> {
        self.connected = false;
        self.tx = BytesMut::new();
        self.will.take()
    }

    /// Encodes a 5.0 DISCONNECT with `reason` (3.x has no server DISCONNECT: the shard just
    /// closes). Used for protocol errors, takeover (0x8E), keep alive timeout (0x8D).
    pub fn disconnect_with(&mut self, reason: ReasonCode) {
        if self.version.is_v5() && self.connected {
            let d = Disconnect {
                reason,
                properties: Default::default(),
            };
            let _ = Packet::Disconnect(d).encode(self.version, &mut self.tx);
        }
    }

    /// Handles one packet from the connected client. `Err` is a protocol violation: send
    /// [`disconnect_with`](Self::disconnect_with)`(err.reason)` and close.
    pub fn handle(&mut self, packet: Packet, actions: &mut Vec<Action>) -> Result<(), Error> {
        let version = self.version;
        match packet {
            Packet::Publish(p) => self.publish_in(p, actions)?,
            Packet::PubAck(a) => {
                if let AckOutcome::Completed(_) = self.out.puback(a.packet_id) {
                    self.pump();
                }
            }
            Packet::PubRec(a) => {
                let failed = version.is_v5() && !a.reason.is_success();
                let outcome = if failed {
                    self.out.pubrec_failed(a.packet_id)
                } else {
                    self.out.pubrec(a.packet_id)
                };
                match outcome {
                    AckOutcome::SendPubRel(_) | AckOutcome::ResendPubRel => {
                        let _ =
                            Packet::PubRel(PubAck::new(a.packet_id)).encode(version, &mut self.tx);
                    }
                    AckOutcome::Completed(_) => self.pump(),
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
                    self.pump();
                }
            }
            Packet::PubRel(a) => {
                let mut comp = PubAck::new(a.packet_id);
                if !self.inbound.pubrel(a.packet_id) && version.is_v5() {
                    comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                let _ = Packet::PubComp(comp).encode(version, &mut self.tx);
            }
            Packet::Subscribe(s) => {
                let mut reasons = Vec::with_capacity(s.filters.len());
                for (filter, options) in s.filters {
                    reasons.push(self.subscribe_one(filter, options, actions));
                }
                actions.push(Action::SubAck {
                    packet_id: s.packet_id,
                    reasons,
                });
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

    fn publish_in(&mut self, p: Publish, actions: &mut Vec<Action>) -> Result<(), Error> {
        // A topic shorter than the limit cannot have more levels than it: skip the count.
        if p.topic.len() >= self.limits.max_topic_levels
            && levels(p.topic.as_bytes()) > self.limits.max_topic_levels
        {
            return Err(Error::with_reason(
                "§4.7",
                "topic name has more levels than the broker allows",
                ReasonCode::TOPIC_NAME_INVALID,
            ));
        }
        let version = self.version;
        let id = p.packet_id;
        let message = |p: Publish| {
            if p.qos == QoS::AtMostOnce && !p.retain {
                // Delivered and dropped within this loop turn, or copied where it is kept.
                Arc::new(Publish {
                    dup: false,
                    packet_id: 0,
                    ..p
                })
            } else {
                Arc::new(detached(&p))
            }
        };
        match p.qos {
            QoS::AtMostOnce => actions.push(Action::Publish(message(p))),
            QoS::AtLeastOnce => {
                actions.push(Action::Publish(message(p)));
                let _ = Packet::PubAck(PubAck::new(id)).encode(version, &mut self.tx);
            }
            QoS::ExactlyOnce => match self.inbound.publish(id) {
                IncomingQos2::Deliver => {
                    actions.push(Action::Publish(message(p)));
                    let _ = Packet::PubRec(PubAck::new(id)).encode(version, &mut self.tx);
                }
                IncomingQos2::Duplicate => {
                    let _ = Packet::PubRec(PubAck::new(id)).encode(version, &mut self.tx);
                }
                IncomingQos2::Exceeded => {
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

    fn subscribe_one(
        &mut self,
        filter: TopicFilter,
        options: SubscriptionOptions,
        actions: &mut Vec<Action>,
    ) -> ReasonCode {
        let v5 = self.version.is_v5();
        if filter.shared().is_some() {
            return if v5 {
                ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            };
        }
        if levels(filter.as_bytes()) > self.limits.max_topic_levels {
            return if v5 {
                ReasonCode::TOPIC_FILTER_INVALID
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            };
        }
        let is_new = !self.subscriptions.contains_key(&filter);
        if is_new && self.subscriptions.len() >= self.limits.max_subscriptions {
            return if v5 {
                ReasonCode::QUOTA_EXCEEDED
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            };
        }
        self.subscriptions.insert(filter.clone(), options);
        actions.push(Action::Subscribe {
            filter,
            options,
            is_new,
        });
        // Granted QoS 0, 1 or 2 are reason codes 0x00, 0x01, 0x02.
        ReasonCode(options.qos as u8)
    }

    /// Encodes the SUBACK for a SUBSCRIBE whose routes are now visible.
    pub fn suback(&mut self, packet_id: u16, reasons: Vec<ReasonCode>) {
        let ack = SubAck {
            packet_id,
            reasons,
            properties: Default::default(),
        };
        let _ = Packet::SubAck(ack).encode(self.version, &mut self.tx);
    }

    /// Whether retained messages go to the client for this subscription: always in 3.x (a
    /// replaced identical subscription re-sends them, [MQTT-3.8.4-3]); in 5.0 as Retain
    /// Handling says.
    pub fn retained_on_subscribe(&self, options: &SubscriptionOptions, is_new: bool) -> bool {
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

    /// Delivers `msg` to this client at `min(msg.qos, granted)` with the RETAIN flag `retain`:
    /// QoS 0 straight into the transmit buffer (dropped if the client is offline or not
    /// reading), QoS 1/2 through the window, or the queue when the window is full or the
    /// client is offline.
    pub fn deliver(&mut self, msg: &Message, granted: QoS, retain: bool) -> Delivered {
        let qos = msg.qos.min(granted);
        let o = Outgoing {
            msg: msg.clone(),
            qos,
            retain,
        };
        if qos == QoS::AtMostOnce {
            if self.connected {
                if self.tx.len() >= self.limits.max_write_buffer {
                    self.drops.slow_consumer += 1;
                    return Delivered::Dropped;
                }
                let d = Delivery {
                    dup: false,
                    qos,
                    retain,
                    packet_id: 0,
                };
                let _ = msg.encode_as(self.version, d, &mut self.tx);
                return Delivered::Sent;
            }
            if !(self.persistent && self.limits.queue_qos0_offline) {
                return Delivered::Dropped;
            }
            let o = Outgoing {
                msg: Arc::new(detached(msg)),
                ..o
            };
            return self.enqueue(o);
        }
        if self.connected && self.queue.is_empty() && self.out.has_room() {
            self.send_windowed(o);
            return Delivered::Sent;
        }
        self.enqueue(o)
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

    fn send_windowed(&mut self, o: Outgoing) {
        let qos2 = o.qos == QoS::ExactlyOnce;
        let msg = o.msg.clone();
        let (qos, retain) = (o.qos, o.retain);
        match self.out.push(o, qos2) {
            Ok(packet_id) => {
                let d = Delivery {
                    dup: false,
                    qos,
                    retain,
                    packet_id,
                };
                let _ = msg.encode_as(self.version, d, &mut self.tx);
            }
            Err(o) => {
                // The window was full after all: keep the message at the head of the queue.
                self.queued_bytes += o.cost();
                self.queue.push_front(o);
            }
        }
    }

    /// Moves queued messages into the window (and QoS 0 ones straight out) while the client
    /// is connected and the window has room.
    fn pump(&mut self) {
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
            if o.qos == QoS::AtMostOnce {
                let d = Delivery {
                    dup: false,
                    qos: o.qos,
                    retain: o.retain,
                    packet_id: 0,
                };
                let _ = o.msg.encode_as(self.version, d, &mut self.tx);
            } else {
                self.send_windowed(o);
            }
        }
    }

    /// Forgets every subscription (returning them, for the shard to remove from its index)
    /// and every queued and inflight message: the session starts clean.
    pub fn clear(&mut self) -> Vec<TopicFilter> {
        let filters = self.subscriptions.drain().map(|(f, _)| f).collect();
        self.queue.clear();
        self.queued_bytes = 0;
        self.out = OutWindow::new(self.limits.max_inflight.max(1));
        self.inbound = InWindow::new(u16::MAX);
        filters
    }
}

#[cfg(test)]
mod tests;
