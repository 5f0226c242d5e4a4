//! One shard's state: its sessions, local index, retained replica, directory partition and
//! mesh endpoints, and the synchronous logic that ties them together (routing a publish,
//! applying a subscription, the takeover protocol). Everything here runs on the shard's own
//! thread, inside short `RefCell` borrows that never span an `.await`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;
use std::time::Instant;

use ahash::AHashMap;
use atomic_waker::AtomicWaker;
use slab::Slab;
use smallvec::SmallVec;

use super::conn::{ConnShared, Filed};
use super::durability::{Effect, Effects, HeldAck, Tracker};
use super::wheel::Wheel;
use crate::auth::hooks::Authz;
use crate::config::Config;
use crate::index::{LocalIndex, RetainedStore, Routes, SetOutcome, SharedRoutes, Weigh};
use crate::mesh::{Consumer, Doorbell, Envelope, Producer, Stub, Wake};
use crate::protocol::session::{
    Ack, Action, AppMessage, Delivered, Grant, Message, Outgoing, Session, SessionImage,
    SessionLimits, Subscription,
};
use crate::protocol::{Properties, Publish, QoS, ReasonCode, Str, TopicFilter, TopicName, Will};
use crate::store::PendingWrite;

/// Wakes a parked shard's mesh pump from another shard's thread.
#[derive(Debug, Default)]
pub struct ShardWaker {
    woken: AtomicBool,
    waker: AtomicWaker,
}

impl ShardWaker {
    /// Registers the pump's waker; returns true if a wake arrived since the last call.
    pub fn register(&self, w: &Waker) -> bool {
        self.waker.register(w);
        self.woken.swap(false, Ordering::Acquire)
    }
}

impl Wake for ShardWaker {
    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// What every shard shares: read-mostly tables and counters, behind `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// The configuration, read-only.
    pub config: Config,
    /// Filter → shards with subscribers.
    pub routes: Routes,
    /// Shared-subscription group → shards with members.
    pub shared_routes: SharedRoutes,
    /// The broker's clock origin: every shard counts seconds from it, so message expiry
    /// deadlines mean the same on every shard.
    pub start: Instant,
    /// One doorbell per shard.
    pub doorbells: Arc<[Doorbell<ShardWaker>]>,
    /// Connections open broker-wide (bounded by `Limits::max_connections`).
    pub connections: AtomicUsize,
    /// Messages dropped broker-wide (slow consumers, full queues, full rings).
    pub dropped: AtomicU64,
    /// MQTT 5.0 enhanced-authentication methods, by name.
    pub authenticators: Arc<crate::auth::Authenticators>,
    /// Unix time at `start` (converts message deadlines for the store).
    pub start_unix: u64,
    /// Starts every client identifier this broker assigns ([MQTT-3.1.3-6]): the node id in a
    /// cluster, else random per start, so that no assigned id repeats across nodes or
    /// restarts (a repeat would resume or take over somebody else's session).
    pub assigned_prefix: String,
    /// The embedded store, when persistence is on.
    pub store: Option<crate::store::Store>,
    /// Set once by [`run::Broker::shutdown`](super::run::Broker::shutdown): every shard
    /// tells its clients and closes them.
    pub shutdown: AtomicBool,
    /// Per shard: its persistent sessions (only a shard with some can write for a delivery;
    /// `durability = "sync"` waits only for those).
    pub persistent: Box<[AtomicUsize]>,
    /// Which durable envelopes took effect where (`durability = "sync"`).
    pub effects: Effects,
    /// Shards that have taken their recovered sessions and retained messages (none
    /// accepts clients before all have).
    pub seeded: AtomicUsize,
    /// The authentication thread, when `auth.password_file` is set.
    pub verifier: Option<super::verify::Verifier>,
    /// The ACL, when `auth.acl_file` is set (replaced on SIGHUP; a connection keeps the
    /// rules it connected with).
    pub acl: arc_swap::ArcSwapOption<crate::auth::acl::Acl>,
    /// Each shard's last metrics snapshot (written once per tick by its shard).
    pub snapshots: Vec<std::sync::Mutex<crate::metrics::ShardSnapshot>>,
    /// The cluster this node belongs to, if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// A configured limit whose hits are counted, one counter per limit per shard (merged on a
/// scrape). Session-level ones ([`crate::protocol::session::LimitHits`]) are counted in the
/// session and added to the shard's when it ends ([`Shard::limit_hits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `limits.max_connections` (broker-wide): a new connection was closed at accept.
    MaxConnections,
    /// `limits.max_connections_per_shard`: a new connection was closed at accept.
    MaxConnectionsPerShard,
    /// `limits.max_connect_rate_per_ip`: a new connection was closed at accept.
    ConnectRatePerIp,
    /// `limits.max_packet_size`: a client sent a larger packet (disconnected, 0x95).
    MaxPacketSize,
    /// `limits.max_client_id_len`: a CONNECT was refused (0x85 / 2).
    MaxClientIdLen,
    /// `limits.max_publish_rate`: a client was held back.
    PublishRate,
    /// `limits.receive_maximum`: a client sent more unreleased QoS 2 messages (0x93).
    ReceiveMaximum,
    /// `limits.max_inflight` (or the client's Receive Maximum): a delivery to a connected
    /// client waited in its queue behind a full window.
    MaxInflight,
    /// `limits.max_queued_messages` / `max_queued_bytes`: a message for a session was dropped.
    QueueFull,
    /// `limits.max_subscriptions`: a SUBSCRIBE was refused (0x97).
    MaxSubscriptions,
    /// `limits.max_topic_levels`: a topic or filter was refused.
    MaxTopicLevels,
    /// `limits.auth_queue`: a CONNECT was refused because the authentication thread was busy.
    AuthQueue,
    /// `limits.max_retained_messages` / `max_retained_bytes`: a retained message was not kept.
    RetainedStore,
    /// `limits.store_queue`: a store write was dropped.
    StoreQueue,
}

impl Limit {
    /// Every limit, in counter order.
    pub const ALL: [Limit; 14] = [
        Limit::MaxConnections,
        Limit::MaxConnectionsPerShard,
        Limit::ConnectRatePerIp,
        Limit::MaxPacketSize,
        Limit::MaxClientIdLen,
        Limit::PublishRate,
        Limit::ReceiveMaximum,
        Limit::MaxInflight,
        Limit::QueueFull,
        Limit::MaxSubscriptions,
        Limit::MaxTopicLevels,
        Limit::AuthQueue,
        Limit::RetainedStore,
        Limit::StoreQueue,
    ];

    /// The config key the counter is named after (a metric label).
    pub fn key(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::MaxConnectionsPerShard => "max_connections_per_shard",
            Limit::ConnectRatePerIp => "max_connect_rate_per_ip",
            Limit::MaxPacketSize => "max_packet_size",
            Limit::MaxClientIdLen => "max_client_id_len",
            Limit::PublishRate => "max_publish_rate",
            Limit::ReceiveMaximum => "receive_maximum",
            Limit::MaxInflight => "max_inflight",
            Limit::QueueFull => "max_queued",
            Limit::MaxSubscriptions => "max_subscriptions_per_client",
            Limit::MaxTopicLevels => "max_topic_levels",
            Limit::AuthQueue => "auth_queue",
            Limit::RetainedStore => "max_retained",
            Limit::StoreQueue => "store_queue",
        }
    }
}

/// Adds what a session counted of the session-level limits to `limits` (indexed as
/// [`Limit::ALL`]).
fn add_session_hits(limits: &mut [u64; Limit::ALL.len()], s: &Session) {
    let h = s.limit_hits;
    limits[Limit::ReceiveMaximum as usize] += u64::from(h.receive_maximum);
    limits[Limit::MaxSubscriptions as usize] += u64::from(h.subscriptions);
    limits[Limit::MaxTopicLevels as usize] += u64::from(h.topic_levels);
    limits[Limit::QueueFull as usize] += s.drops.queue_full;
}

fn add_drops(
    to: &mut crate::protocol::session::DropCounts,
    d: &crate::protocol::session::DropCounts,
) {
    to.slow_consumer += d.slow_consumer;
    to.queue_full += d.queue_full;
    to.expired += d.expired;
    to.too_large += d.too_large;
}

/// The token of a takeover by a connection on another node (no pending connection has it,
/// so the handoff that answers it is dropped).
const REMOTE_TOKEN: u64 = u64::MAX;

/// Topics of the broker's own status messages.
const SYS_PREFIX: &[u8] = b"$SYS/";

impl Shared {
    /// Every shard's last snapshot (a shard whose lock is poisoned counts as empty).
    pub fn snapshot_all(&self) -> Vec<crate::metrics::ShardSnapshot> {
        self.snapshots
            .iter()
            .map(|m| m.lock().map(|s| s.clone()).unwrap_or_default())
            .collect()
    }
}

/// Counters of one shard.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// PUBLISH packets received from clients.
    pub received: u64,
    /// Messages delivered to sessions (sent or queued).
    pub delivered: u64,
    /// QoS 0 publishes dropped because a ring and its overflow were full.
    pub ring_dropped: u64,
    /// Shared-subscription messages that found no member on any shard.
    pub shared_dropped: u64,
    /// Sessions ended by their Session Expiry Interval.
    pub sessions_expired: u64,
    /// PUBLISH packets received, by QoS.
    pub received_qos: [u64; 3],
    /// Messages delivered to sessions, by QoS of the delivery.
    pub delivered_qos: [u64; 3],
    /// MQTT bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Open connections, by [`crate::metrics::Transport::ALL`].
    pub connections: [u64; 4],
    /// Connections accepted, by transport.
    pub accepted: [u64; 4],
    /// `accept` failures: out of file descriptors (EMFILE / ENFILE), other errors.
    pub accept_errors: [u64; 2],
    /// CONNECTs refused for a bad user name or password.
    pub auth_bad_credentials: u64,
    /// CONNECTs refused as not authorized.
    pub auth_not_authorized: u64,
    /// What sessions that ended had dropped.
    pub ended_drops: crate::protocol::session::DropCounts,
    /// Hits of each [`Limit`] counted by the shard itself, indexed as [`Limit::ALL`]
    /// (sessions count theirs until they end).
    pub limits: [u64; Limit::ALL.len()],
}

impl Stats {
    /// Counts a hit of `limit`; returns the count so far (callers log at 1, 2, 4 …).
    pub fn hit(&mut self, limit: Limit) -> u64 {
        let c = &mut self.limits[limit as usize];
        *c += 1;
        *c
    }

    /// The shard's own count of `limit`.
    pub fn hits(&self, limit: Limit) -> u64 {
        self.limits[limit as usize]
    }
}

/// A retained message weighs its payload and its properties' strings and binaries, roughly:
/// what the replica holds beyond the topic.
impl Weigh for Message {
    fn weight(&self) -> usize {
        self.payload.len() + std::mem::size_of::<AppMessage>()
    }
}

/// What a shard timer does when it fires (checked against the session's token first, so a
/// session that reconnected or went away meanwhile ignores it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Publish the session's delayed will.
    Will,
    /// End the session: its Session Expiry Interval ran out.
    Expire,
}

/// The members of one shared-subscription group on this shard.
#[derive(Debug, Default)]
struct Group {
    /// Session slot and its subscription, in arrival order.
    members: Vec<(u32, Subscription)>,
    /// Where the round-robin starts next.
    next: usize,
}

/// A session living on this shard, with its connection if one is attached.
#[derive(Debug)]
pub struct Entry {
    /// The session, boxed so a slab slot stays small (sessions are ~400 bytes).
    pub session: Box<Session>,
    /// The connection that owns it (the directory knows this token).
    pub token: u64,
    /// The attached connection.
    pub conn: Option<Rc<ConnShared>>,
    /// Counted in [`Shared::persistent`] (the session was persistent when installed).
    counted: bool,
    /// A stub left by a takeover: its session moved to another shard, what matches its
    /// (still indexed) filters is forwarded there.
    moved: Option<Box<Moved>>,
}

/// Where a stub's session went, and the filters the stub keeps indexed.
#[derive(Debug)]
struct Moved {
    shard: usize,
    token: u64,
    filters: Vec<TopicFilter>,
}

/// A message a stub forwarded, with its grant.
#[derive(Debug)]
struct Forwarded {
    msg: Message,
    qos: QoS,
    retain: bool,
    ids: Vec<u32>,
}

/// A stub waiting for every other shard to answer its fence.
#[derive(Debug)]
struct Fencing {
    left: usize,
    stub: Stub,
    to: (usize, u64),
}

/// A connection waiting for its directory claim to be granted.
#[derive(Debug)]
struct Pending {
    conn: Rc<ConnShared>,
    client_id: Str,
    /// A newer connection claimed the same client id meanwhile: on grant, pass the session on.
    superseded_by: Option<(usize, u64, bool)>,
}

/// One shard's state.
#[derive(Debug)]
pub struct Shard {
    /// This shard's index.
    pub id: usize,
    /// Number of shards.
    pub count: usize,
    /// What all shards share.
    pub shared: Arc<Shared>,
    /// Session bounds and features from the config, shared by this shard's sessions.
    pub limits: Arc<SessionLimits>,
    index: LocalIndex<u32, Subscription>,
    groups: AHashMap<TopicFilter, Group>,
    /// (deadline second, connection token, session slot, what): timers of parked sessions.
    timers: BinaryHeap<Reverse<(u32, u64, usize, Timer)>>,
    /// Round-robin position for groups on other shards.
    shared_next: usize,
    /// Round-robin position over the nodes of shared groups spread across the cluster.
    node_next: usize,
    /// Store writes its channel had no room for, retried on every flush.
    store_backlog: VecDeque<crate::store::PendingWrite>,
    /// Store writes made so far (each is numbered with its position).
    store_writes: u64,
    /// Acknowledgements and effects held for `durability = "sync"`.
    durability: Tracker,
    /// While seeding recovered sessions: first-subscriber filters whose routes are added in
    /// one go afterwards (adding wildcard routes one by one is quadratic).
    deferred_routes: Option<Vec<TopicFilter>>,
    retained: RetainedStore<Message>,
    /// Sessions on this shard.
    pub sessions: Slab<Entry>,
    by_id: AHashMap<Str, usize>,
    directory: AHashMap<Str, (usize, u64)>,
    pending: AHashMap<u64, Pending>,
    /// Sessions given up to another node (the directory shard's takeover token → the client
    /// id and the node that asked), until their owner shard hands them over.
    surrenders: AHashMap<u64, (Str, String)>,
    /// Sessions handed here by a takeover whose old shard keeps a stub, by connection
    /// token, until they are installed (then the old shard is told).
    stub_pending: AHashMap<u64, Stub>,
    /// Messages the old shard's stub forwarded before the session was installed here, by
    /// connection token (delivered by `install`).
    early: AHashMap<u64, Vec<Forwarded>>,
    /// Sessions installed here whose old shard's stub may still forward a message that also
    /// came directly: by connection token, the messages delivered meanwhile (held, so their
    /// addresses are not reused), for de-duplication.
    settling: AHashMap<u64, AHashMap<usize, Message>>,
    /// This shard's stubs waiting for their fences.
    fences: AHashMap<u64, Fencing>,
    out: Vec<Option<Producer<Envelope>>>,
    overflow: Vec<VecDeque<Envelope>>,
    overflow_len: usize,
    staged: u64,
    inbound: Vec<Consumer<Envelope>>,
    local: VecDeque<Envelope>,
    inbox: Vec<Envelope>,
    /// The mesh pump's waker, when it waits for local work.
    pub pump_waker: Option<Waker>,
    /// Seconds since the shard started (advanced by the ticker).
    pub now: u32,
    next_token: u64,
    /// The keep alive wheel.
    pub wheel: Wheel<Filed>,
    /// Counters.
    pub stats: Stats,
    matches: Vec<(u32, Subscription)>,
    subscribed: Vec<(TopicFilter, Subscription, bool)>,
    /// Connections open on this shard.
    pub open_connections: usize,
    /// New-connection buckets per source address (`limits.max_connect_rate_per_ip`).
    connect_rates: AHashMap<std::net::IpAddr, super::throttle::Throttle>,
}

/// Source addresses whose connect rate a shard tracks at most; past it, buckets that are
/// full again are forgotten (and, if none is, all of them).
const MAX_RATE_ENTRIES: usize = 65_536;

/// The directory shard of a client identifier.
pub fn directory_shard(client_id: &Str, shards: usize) -> usize {
    // A fixed hasher: every shard must compute the same partition.
    let h = ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(client_id.as_bytes());
    (h % shards as u64) as usize
}

impl Shard {
    /// A shard with its mesh endpoints: `out[d]` sends to shard `d` (None for itself),
    /// `inbound` receives from every other shard.
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        out: Vec<Option<Producer<Envelope>>>,
        inbound: Vec<Consumer<Envelope>>,
    ) -> Self {
        let l = &shared.config.limits;
        let m = &shared.config.mqtt;
        let limits = Arc::new(SessionLimits {
            max_inflight: l.max_inflight,
            max_queued_messages: l.max_queued_messages,
            max_queued_bytes: l.max_queued_bytes,
            queue_qos0_offline: shared.config.queue_qos0_offline,
            max_subscriptions: l.max_subscriptions_per_client,
            max_topic_levels: l.max_topic_levels,
            max_write_buffer: l.max_write_buffer,
            max_keep_alive: l.max_keep_alive_secs,
            receive_maximum: l.receive_maximum,
            max_topic_aliases: l.max_topic_aliases,
            max_session_expiry: l.max_session_expiry_secs,
            max_packet_size: l.max_packet_size,
            maximum_qos: QoS::from_u8(m.maximum_qos).unwrap_or(QoS::ExactlyOnce),
            retain_available: m.retain_available,
            wildcard_subscriptions: m.wildcard_subscriptions,
            subscription_identifiers: m.subscription_identifiers,
            shared_subscriptions: m.shared_subscriptions,
            server_topic_aliases: m.server_topic_aliases,
            response_information: m.response_information.clone(),
        });
        let count = out.len();
        let sync = shared.store.is_some()
            && shared.config.persistence.durability == crate::config::Durability::Sync;
        Self {
            id,
            count,
            retained: RetainedStore::new(l.max_retained_messages, l.max_retained_bytes),
            shared,
            limits,
            index: LocalIndex::new(),
            groups: AHashMap::new(),
            timers: BinaryHeap::new(),
            shared_next: 0,
            node_next: 0,
            store_backlog: VecDeque::new(),
            store_writes: 0,
            durability: Tracker::new(sync, count),
            deferred_routes: None,
            sessions: Slab::new(),
            by_id: AHashMap::new(),
            directory: AHashMap::new(),
            pending: AHashMap::new(),
            surrenders: AHashMap::new(),
            stub_pending: AHashMap::new(),
            early: AHashMap::new(),
            settling: AHashMap::new(),
            fences: AHashMap::new(),
            out,
            overflow: (0..count).map(|_| VecDeque::new()).collect(),
            overflow_len: 0,
            staged: 0,
            inbound,
            local: VecDeque::new(),
            inbox: Vec::new(),
            pump_waker: None,
            now: 0,
            next_token: 0,
            wheel: Wheel::new(0),
            stats: Stats::default(),
            matches: Vec::new(),
            subscribed: Vec::new(),
            open_connections: 0,
            connect_rates: AHashMap::new(),
        }
    }

    /// A token naming a new connection, unique broker-wide.
    pub fn new_token(&mut self) -> u64 {
        self.next_token += 1;
        ((self.id as u64) << 48) | self.next_token
    }

    /// Whether a connection just accepted from `peer` may stay: this shard is under
    /// `limits.max_connections_per_shard` and `peer` under `max_connect_rate_per_ip`. Counts
    /// (and logs at 1, 2, 4 …) the refusals. The caller counts an admitted connection in
    /// `open_connections` and uncounts it when it ends.
    pub fn admit(&mut self, peer: std::net::IpAddr, now: Instant) -> bool {
        let l = &self.shared.config.limits;
        let (max, rate) = (l.max_connections_per_shard, l.max_connect_rate_per_ip);
        let why = if max > 0 && self.open_connections >= max {
            Some((
                Limit::MaxConnectionsPerShard,
                "limits.max_connections_per_shard reached",
            ))
        } else if rate > 0 {
            if self.connect_rates.len() >= MAX_RATE_ENTRIES {
                self.connect_rates.retain(|_, t| !t.is_full(now));
                if self.connect_rates.len() >= MAX_RATE_ENTRIES {
                    self.connect_rates.clear();
                }
            }
            let admitted = match self.connect_rates.get_mut(&peer) {
                Some(bucket) => bucket.try_take_one(now),
                None => {
                    let mut bucket = super::throttle::Throttle::new(rate, rate, now);
                    let admitted = bucket.as_mut().is_none_or(|b| b.try_take_one(now));
                    if let Some(b) = bucket {
                        self.connect_rates.insert(peer, b);
                    }
                    admitted
                }
            };
            (!admitted).then_some((
                Limit::ConnectRatePerIp,
                "limits.max_connect_rate_per_ip reached",
            ))
        } else {
            None
        };
        let Some((limit, why)) = why else {
            return true;
        };
        let refused = self.stats.hit(limit);
        if refused.is_power_of_two() {
            tracing::warn!(
                shard = self.id,
                refused,
                %peer,
                "{why}: closing new connections"
            );
        }
        false
    }

    /// Every limit's hits on this shard so far: the shard's own counters, those of the
    /// sessions that ended, and those of the live ones (read on a scrape, not per message).
    pub fn limit_hits(&self) -> [u64; Limit::ALL.len()] {
        let mut all = self.stats.limits;
        for (_, e) in &self.sessions {
            add_session_hits(&mut all, &e.session);
        }
        all
    }

    /// A copy of this shard's counters and gauges for the metrics (`busy_ratio` is the
    /// caller's: it measures the thread).
    pub fn snapshot(&self, busy_ratio: f64) -> crate::metrics::ShardSnapshot {
        let st = &self.stats;
        let mut drops = st.ended_drops;
        let (mut live, mut parked, mut subs, mut inflight, mut queued) = (0, 0, 0, 0, 0);
        for (_, e) in &self.sessions {
            add_drops(&mut drops, &e.session.drops);
            if e.conn.is_some() {
                live += 1;
            } else {
                parked += 1;
            }
            subs += e.session.subscription_count() as u64;
            inflight += e.session.inflight() as u64;
            queued += e.session.queued() as u64;
        }
        crate::metrics::ShardSnapshot {
            connections: st.connections,
            accepted: st.accepted,
            accept_errors: st.accept_errors,
            received: st.received_qos,
            delivered: st.delivered_qos,
            bytes_in: st.bytes_in,
            bytes_out: st.bytes_out,
            dropped: crate::metrics::Dropped {
                ring_full: st.ring_dropped,
                no_shared_member: st.shared_dropped,
                slow_consumer: drops.slow_consumer,
                queue_full: drops.queue_full,
                expired: drops.expired,
                too_large: drops.too_large,
            },
            retained: self.retained.len() as u64,
            sessions_live: live,
            sessions_parked: parked,
            sessions_expired: st.sessions_expired,
            subscriptions: subs,
            inflight,
            queued,
            auth_bad_credentials: st.auth_bad_credentials,
            auth_not_authorized: st.auth_not_authorized,
            limit_hits: self.limit_hits(),
            busy_ratio,
            ring_len: self
                .out
                .iter()
                .map(|p| p.as_ref().map(|p| p.len() as u64))
                .collect(),
            ring_capacity: self
                .out
                .iter()
                .flatten()
                .next()
                .map_or(0, |p| p.capacity() as u64),
            store_backlog: self.store_backlog.len() as u64,
        }
    }

    // ----- mesh -----

    /// Sends an envelope to shard `dest` (staged until [`flush`](Self::flush)).
    pub fn send(&mut self, dest: usize, env: Envelope) {
        if dest == self.id {
            self.local.push_back(env);
            self.wake_pump();
            return;
        }
        if self.overflow[dest].is_empty() {
            if let Some(p) = self.out[dest].as_mut() {
                match p.try_push(env) {
                    Ok(()) => {
                        self.staged |= 1 << dest;
                        return;
                    }
                    Err(back) => return self.spill(dest, back),
                }
            }
            return;
        }
        self.spill(dest, env);
    }

    /// Queues an envelope its ring has no room for. The publishing connections stop reading
    /// while anything waits here ([`backpressured`](Self::backpressured)), so the overflow
    /// only absorbs what one read produced; past `limits.ring_overflow` QoS 0 publishes are
    /// dropped (counted). Everything else carries state that must arrive and is always kept:
    /// it is bounded by the connections, not by traffic.
    fn spill(&mut self, dest: usize, env: Envelope) {
        if env.droppable() && self.overflow_len >= self.shared.config.limits.ring_overflow {
            self.stats.ring_dropped += 1;
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.overflow[dest].push_back(env);
        self.overflow_len += 1;
        // The pump retries the overflow (every millisecond while it holds anything): the
        // publishers that filled it stop reading, so nothing else would.
        self.wake_pump();
    }

    /// Wakes this shard's mesh pump if it is parked.
    fn wake_pump(&mut self) {
        if let Some(w) = self.pump_waker.take() {
            w.wake();
        }
    }

    /// Whether publishers on this shard should stop reading: a ring to another shard is full
    /// and its overflow holds messages, or the store is behind (this shard's store backlog is
    /// past half its bound), so the load slows to what the disk takes instead of the backlog
    /// dropping writes.
    pub fn backpressured(&self) -> bool {
        self.overflow_len > 0
            || self.store_behind()
            || self.durability.held() > self.shared.config.limits.store_queue
    }

    /// Whether this shard's store backlog is past half `limits.store_queue`: the shard also
    /// stops draining its inbound rings then (their deliveries to persistent sessions would
    /// add writes), which fills the rings and so holds back the publishers on other shards.
    pub fn store_behind(&self) -> bool {
        self.store_backlog.len() > self.shared.config.limits.store_queue / 2
    }

    /// Publishes every staged batch with one store per ring and rings the doorbells (and
    /// retries store writes that found its channel full).
    pub fn flush(&mut self) {
        if !self.store_backlog.is_empty() {
            self.retry_store();
        }
        // Retry overflow first, in order.
        if self.overflow_len > 0 {
            for dest in 0..self.count {
                while let Some(env) = self.overflow[dest].pop_front() {
                    let Some(p) = self.out[dest].as_mut() else {
                        break;
                    };
                    match p.try_push(env) {
                        Ok(()) => {
                            self.overflow_len -= 1;
                            self.staged |= 1 << dest;
                        }
                        Err(back) => {
                            self.overflow[dest].push_front(back);
                            break;
                        }
                    }
                }
            }
        }
        let mut staged = std::mem::take(&mut self.staged);
        while staged != 0 {
            let dest = staged.trailing_zeros() as usize;
            staged &= staged - 1;
            if let Some(p) = self.out[dest].as_mut() {
                let outcome = p.flush();
                self.shared.doorbells[dest].after_flush(outcome);
            }
        }
    }

    /// Whether any inbound ring or the local queue holds work.
    pub fn has_inbound(&mut self) -> bool {
        !self.local.is_empty()
            || self
                .shared
                .cluster
                .as_ref()
                .is_some_and(|c| c.has_inbox(self.id))
            || self.inbound.iter_mut().any(|c| !c.is_empty())
            || self.release_ready()
    }

    /// Processes up to `max` envelopes per inbound ring plus the local queue. Returns how many.
    /// While the store is behind, the rings are left to fill (see
    /// [`store_behind`](Self::store_behind)).
    pub fn pump(&mut self, max: usize) -> usize {
        if self.store_behind() {
            self.retry_store();
            if self.store_behind() {
                return 0;
            }
        }
        self.release_durable();
        let from_nodes = match &self.shared.cluster {
            Some(c) => c.take_inbox(self.id),
            None => Vec::new(),
        };
        let from_nodes_count = from_nodes.len();
        for i in from_nodes {
            match i {
                crate::cluster::Inbound::Publish(m) => self.route_from_cluster(m),
                crate::cluster::Inbound::Shared(group, m) => {
                    let mask = self.shared.shared_routes.mask(&group);
                    self.send_shared(m, group, mask, 0, false);
                }
                crate::cluster::Inbound::Retain(m) => self.retain_from_cluster(m),
                crate::cluster::Inbound::Kick(id) => self.kick_for_cluster(id),
                crate::cluster::Inbound::Surrender(id, to) => self.surrender_for_cluster(id, to),
                crate::cluster::Inbound::Moved(m, image) => self.moved_from_cluster(m, image),
            }
        }
        let mut inbox = std::mem::take(&mut self.inbox);
        let mut n = self.local.len() + from_nodes_count;
        for i in 0..self.inbound.len() {
            // `inbound` holds every other shard's ring, in shard order.
            let source = if i < self.id { i } else { i + 1 };
            if self.inbound[i].drain(max, |e| inbox.push(e)) == 0 {
                continue;
            }
            n += inbox.len();
            let before = self.durability.received_from(source);
            self.durability.begin(self.store_writes);
            for env in inbox.drain(..) {
                if env.is_durable() {
                    self.durability.received(source);
                }
                self.on_envelope(env);
            }
            let upto = self.durability.received_from(source);
            if upto > before {
                let effect = Effect {
                    source: source as u16,
                    upto,
                };
                if let Some(e) = self.durability.end_effect(effect, self.store_writes) {
                    self.report(e);
                }
            }
        }
        self.inbox = inbox;
        let mut k = self.local.len();
        while k > 0 {
            k -= 1;
            let Some(env) = self.local.pop_front() else {
                break;
            };
            self.on_envelope(env);
        }
        n
    }

    /// Overflowed envelopes waiting for ring space.
    pub fn overflow_len(&self) -> usize {
        self.overflow_len
    }

    fn on_envelope(&mut self, env: Envelope) {
        match env {
            Envelope::Publish { msg, .. } => self.deliver_local(&msg),
            Envelope::Shared {
                msg, group, tried, ..
            } => self.deliver_shared(msg, group, tried),
            Envelope::Retain(m) => {
                self.set_retained(m);
            }
            Envelope::Claim {
                client_id,
                shard,
                token,
                clean,
            } => self.on_claim(client_id, shard, token, clean),
            Envelope::Takeover {
                client_id,
                shard,
                token,
                old_token,
                clean,
                away,
            } => self.on_takeover(client_id, shard, token, old_token, clean, away),
            Envelope::Handoff {
                token,
                session,
                stub,
            } => self.on_handoff(token, session, stub),
            Envelope::Forward {
                client_id,
                token,
                msg,
                qos,
                retain,
                ids,
            } => {
                let f = Forwarded {
                    msg,
                    qos,
                    retain,
                    ids,
                };
                let slot = self.by_id.get(&client_id).copied();
                match slot.filter(|&s| self.sessions[s].token == token) {
                    Some(slot) => self.deliver_forwarded(slot, &f),
                    // Granted, not yet installed by its connection task: kept until it is.
                    None if self.stub_pending.contains_key(&token) => {
                        self.early.entry(token).or_default().push(f);
                    }
                    None => {}
                }
            }
            Envelope::Settled { stub, shard, token } => self.on_settled(stub, shard, token),
            Envelope::Fence { from, id } => self.send(from, Envelope::FenceAck { id }),
            Envelope::FenceAck { id } => {
                if let Some(f) = self.fences.get_mut(&id) {
                    f.left -= 1;
                    if f.left == 0
                        && let Some(f) = self.fences.remove(&id)
                    {
                        self.drop_stub(f.stub, f.to);
                    }
                }
            }
            Envelope::Unsettle { token } => {
                self.settling.remove(&token);
            }
            Envelope::Release { client_id, token } => {
                if self
                    .directory
                    .get(&client_id)
                    .is_some_and(|&(_, t)| t == token)
                {
                    self.directory.remove(&client_id);
                }
            }
        }
    }

    // ----- directory and takeover -----

    /// Registers a connection awaiting its claim and sends the claim to the directory shard.
    pub fn claim(&mut self, conn: Rc<ConnShared>, client_id: Str, clean: bool) {
        let token = conn.token;
        self.pending.insert(
            token,
            Pending {
                conn,
                client_id: client_id.clone(),
                superseded_by: None,
            },
        );
        let d = directory_shard(&client_id, self.count);
        self.send(
            d,
            Envelope::Claim {
                client_id,
                shard: self.id,
                token,
                clean,
            },
        );
        self.flush();
    }

    /// The directory's answer to a claim: the client id is free (granted at once, unless a
    /// cluster node may hold the session to resume: then it is fetched first), or its owner
    /// is told to hand the session over. In a cluster the client id is claimed in Redis too,
    /// so that another node holding it lets the client go.
    fn on_claim(&mut self, client_id: Str, shard: usize, token: u64, clean: bool) {
        let cluster = self.shared.cluster.clone();
        match self.directory.insert(client_id.clone(), (shard, token)) {
            None => {
                if let Some(c) = &cluster {
                    if !clean {
                        c.fetch(crate::cluster::Move {
                            client_id,
                            directory: self.id,
                            shard,
                            token,
                        });
                        return;
                    }
                    c.claim(client_id.as_bytes());
                }
                self.send(
                    shard,
                    Envelope::Handoff {
                        token,
                        session: None,
                        stub: None,
                    },
                )
            }
            Some((owner, old_token)) => {
                if let Some(c) = &cluster {
                    c.claim(client_id.as_bytes());
                }
                self.send(
                    owner,
                    Envelope::Takeover {
                        client_id,
                        shard,
                        token,
                        old_token,
                        clean,
                        away: false,
                    },
                )
            }
        }
    }

    /// The client `client_id` connected to node `to`, resuming its session: its owner here
    /// (if any) hands the session to this shard, which sends it on (see `on_handoff`).
    fn surrender_for_cluster(&mut self, client_id: Str, to: String) {
        let Some((owner, old_token)) = self.directory.remove(&client_id) else {
            if let Some(c) = &self.shared.cluster {
                c.ship(to, client_id.as_bytes(), None);
            }
            return;
        };
        tracing::info!(client_id = %client_id.as_str(), node = %to, "client connected to another node: its session moves there");
        let token = self.new_token();
        self.surrenders.insert(token, (client_id.clone(), to));
        self.send(
            owner,
            Envelope::Takeover {
                client_id,
                shard: self.id,
                token,
                old_token,
                clean: false,
                away: true,
            },
        );
    }

    /// The answer to a session fetched from another node: grant the waiting connection its
    /// client id with that session (or none).
    fn moved_from_cluster(&mut self, m: crate::cluster::Move, image: Option<Vec<u8>>) {
        let session = image.and_then(|b| {
            let start_unix = self.shared.start_unix;
            match crate::store::codec::decode_session(m.client_id.as_bytes(), &b, start_unix) {
                Ok((image, _)) => Some(Box::new(Session::from_image(image, self.limits.clone()))),
                Err(e) => {
                    tracing::warn!(client_id = %m.client_id.as_str(), "cluster: a session from another node is unreadable ({e}); the client starts a new one");
                    None
                }
            }
        });
        self.send(
            m.shard,
            Envelope::Handoff {
                token: m.token,
                session,
                stub: None,
            },
        );
    }

    fn on_takeover(
        &mut self,
        client_id: Str,
        shard: usize,
        token: u64,
        old_token: u64,
        clean: bool,
        away: bool,
    ) {
        if let Some(slot) = self.by_id.get(&client_id).copied() {
            // A session that goes on on this node leaves a stub here (see `Stub`).
            let keep = !clean && !away;
            let (mut session, stub) = self.evict(
                slot,
                ReasonCode::SESSION_TAKEN_OVER,
                clean,
                keep.then_some((shard, token)),
            );
            if away && session.in_store() {
                session.forget_store();
                self.store_write(PendingWrite::end(session.client_id().as_bytes()));
            }
            let session = (!clean).then_some(session);
            self.send(
                shard,
                Envelope::Handoff {
                    token,
                    session,
                    stub,
                },
            );
        } else if let Some(p) = self.pending.get_mut(&old_token) {
            p.superseded_by = Some((shard, token, clean));
        } else {
            self.send(
                shard,
                Envelope::Handoff {
                    token,
                    session: None,
                    stub: None,
                },
            );
        }
    }

    fn on_handoff(&mut self, token: u64, session: Option<Box<Session>>, stub: Option<Stub>) {
        if let Some((client_id, to)) = self.surrenders.remove(&token) {
            let start_unix = self.shared.start_unix;
            let image = session.filter(|s| s.is_persistent()).map(|s| {
                let d = crate::store::codec::Deadlines {
                    session_end: None,
                    will_due: None,
                };
                crate::store::codec::encode_session(&s.image(), d, start_unix)
            });
            if let Some(c) = &self.shared.cluster {
                c.ship(to, client_id.as_bytes(), image);
            }
            return;
        }
        let Some(p) = self.pending.remove(&token) else {
            tracing::debug!(shard = self.id, token, "handoff for an unknown connection");
            if let Some(stub) = stub {
                self.send(
                    stub.shard,
                    Envelope::Settled {
                        stub,
                        shard: self.id,
                        token,
                    },
                );
            }
            return;
        };
        if let Some((shard, new_token, clean)) = p.superseded_by {
            // A newer CONNECT with this client id won while this one waited: pass it on.
            p.conn.close();
            let session = if clean { None } else { session };
            self.send(
                shard,
                Envelope::Handoff {
                    token: new_token,
                    session,
                    stub,
                },
            );
            return;
        }
        if let Some(stub) = stub {
            // Told to the old shard once the session is installed (and indexed) here.
            self.stub_pending.insert(p.conn.token, stub);
        }
        if p.conn.is_closing() {
            // The connection died while its claim travelled; this shard owns the client id
            // now. Keep a resumed session parked here, or hand the id back.
            match session {
                Some(s) if s.is_persistent() => {
                    let slot = self.install(s, p.conn.token, None);
                    self.park(slot);
                }
                _ => {
                    if let Some(stub) = self.stub_pending.remove(&p.conn.token) {
                        let token = p.conn.token;
                        self.early.remove(&token);
                        self.send(
                            stub.shard,
                            Envelope::Settled {
                                stub,
                                shard: self.id,
                                token,
                            },
                        );
                    }
                    let d = directory_shard(&p.client_id, self.count);
                    let (client_id, token) = (p.client_id, p.conn.token);
                    self.send(d, Envelope::Release { client_id, token });
                }
            }
            return;
        }
        p.conn.grant(session);
    }

    // ----- subscriptions in the index, the routes and the shared groups -----

    /// Adds the subscription of the session at `slot` to `filter`: into the local index (and
    /// this shard's route bit when it is the shard's first subscriber), or, for a `$share/`
    /// filter, into its group (and the group's shard bit when it is the first member here).
    fn index_sub(&mut self, filter: &TopicFilter, slot: usize, sub: Subscription) {
        if filter.shared().is_some() {
            let g = self.groups.entry(filter.clone()).or_default();
            match g.members.iter_mut().find(|(s, _)| *s == slot as u32) {
                Some(m) => m.1 = sub,
                None => g.members.push((slot as u32, sub)),
            }
            if g.members.len() == 1 {
                self.shared.shared_routes.add(filter, self.id);
                if let Some(c) = &self.shared.cluster {
                    c.filter(filter.as_bytes(), true);
                }
            }
            return;
        }
        if self.index.insert(filter.as_bytes(), slot as u32, sub).first {
            match &mut self.deferred_routes {
                Some(later) => later.push(filter.clone()),
                None => {
                    self.shared.routes.add(filter.as_bytes(), self.id);
                    if let Some(c) = &self.shared.cluster {
                        c.filter(filter.as_bytes(), true);
                    }
                }
            }
        }
    }

    /// Removes the subscription of the session at `slot` to `filter` from the local index or
    /// its shared group, and this shard's route bit when it was the last one here.
    fn unindex(&mut self, filter: &TopicFilter, slot: usize) {
        if filter.shared().is_some() {
            let Some(g) = self.groups.get_mut(filter) else {
                return;
            };
            g.members.retain(|(s, _)| *s != slot as u32);
            if g.members.is_empty() {
                self.groups.remove(filter);
                self.shared.shared_routes.remove(filter, self.id);
                if let Some(c) = &self.shared.cluster {
                    c.filter(filter.as_bytes(), false);
                }
            }
            return;
        }
        if let Some(r) = self.index.remove(filter.as_bytes(), slot as u32) {
            if r.last {
                self.shared.routes.remove(filter.as_bytes(), self.id);
                if let Some(c) = &self.shared.cluster {
                    c.filter(filter.as_bytes(), false);
                }
            }
        }
    }

    /// Removes a session from this shard (takeover): kicks its connection with `reason`,
    /// publishes its will unless the session goes on (a will with a delay is cancelled by
    /// the new connection [MQTT-3.1.3-9]), unindexes its subscriptions. When the new
    /// connection starts `clean`, messages chosen for shared subscriptions go back to their
    /// groups. Returns the session, and the stub if one was left.
    ///
    /// With `to` (the new owner: shard, connection token) the session goes on there and a
    /// stub takes its slot: its plain subscriptions stay indexed here and what matches them
    /// is forwarded, until the new owner has indexed them and every shard has seen it (see
    /// `on_settled`); the new owner delivers a message that comes both ways once. So no
    /// publish falls between the two shards' routes. Not covered: shared subscriptions (a
    /// group message in that window goes to another member or is counted dropped), and a
    /// second takeover of the same session before the first settled.
    fn evict(
        &mut self,
        slot: usize,
        reason: ReasonCode,
        clean: bool,
        to: Option<(usize, u64)>,
    ) -> (Box<Session>, Option<Stub>) {
        let mut e = self.remove_entry(slot);
        self.by_id.remove(e.session.client_id());
        let filters: Vec<TopicFilter> = e.session.subscriptions().map(|(f, _)| f.clone()).collect();
        // The slab hands out the slot just freed next: the stub takes it, so the index
        // entries that name the slot stay right.
        let stub = to.filter(|_| self.sessions.vacant_key() == slot);
        let mut kept = Vec::new();
        for filter in filters {
            if stub.is_some() && filter.shared().is_none() {
                kept.push(filter);
            } else {
                self.unindex(&filter, slot);
            }
        }
        let stub = stub.map(|(shard, token)| {
            let stub_token = self.new_token();
            let placeholder = Session::new(e.session.client_id().clone(), self.limits.clone());
            let at = self.sessions.insert(Entry {
                session: Box::new(placeholder),
                token: stub_token,
                conn: None,
                counted: false,
                moved: Some(Box::new(Moved {
                    shard,
                    token,
                    filters: kept,
                })),
            });
            debug_assert_eq!(at, slot);
            Stub {
                shard: self.id,
                slot: at,
                token: stub_token,
            }
        });
        if let Some(conn) = e.conn.take() {
            e.session.disconnect_with(reason);
            conn.detach_from(&mut e.session);
            conn.close();
            let will = e.session.detach();
            let delayed = e.session.take_delayed_will();
            // The session goes on with the new connection: a delayed will is cancelled.
            if let Some(will) = will.or(if clean { delayed } else { None }) {
                self.publish_will(will, e.session.client_id().clone());
            }
        } else if clean {
            if let Some(will) = e.session.take_delayed_will() {
                self.publish_will(will, e.session.client_id().clone());
            }
        }
        if clean {
            self.requeue_shared(e.session.take_shared(true));
            if e.session.in_store() {
                self.store_write(PendingWrite::end(e.session.client_id().as_bytes()));
            }
        }
        (e.session, stub)
    }

    /// The new owner of a stub's session has indexed it: once every other shard has
    /// answered a fence (so nothing routed to this shard by the old routes is still on its
    /// way), the stub goes.
    fn on_settled(&mut self, stub: Stub, shard: usize, token: u64) {
        if self
            .sessions
            .get(stub.slot)
            .is_none_or(|e| e.token != stub.token)
        {
            return self.send(shard, Envelope::Unsettle { token });
        }
        if self.count == 1 {
            return self.drop_stub(stub, (shard, token));
        }
        let (id, me) = (self.new_token(), self.id);
        for d in (0..self.count).filter(|&d| d != me) {
            self.send(d, Envelope::Fence { from: me, id });
        }
        self.fences.insert(
            id,
            Fencing {
                left: self.count - 1,
                stub,
                to: (shard, token),
            },
        );
    }

    /// Delivers a message a stub forwarded to the session at `slot`.
    fn deliver_forwarded(&mut self, slot: usize, f: &Forwarded) {
        let grant = Grant {
            qos: f.qos,
            retain: f.retain,
            ids: &f.ids,
            share: None,
            seq: 0,
        };
        let now = self.now;
        self.deliver_to(slot, &f.msg, grant, now);
    }

    /// Removes a stub and its index entries, and tells the new owner no more duplicates
    /// can come.
    fn drop_stub(&mut self, stub: Stub, to: (usize, u64)) {
        if self
            .sessions
            .get(stub.slot)
            .is_none_or(|e| e.token != stub.token)
        {
            return self.send(to.0, Envelope::Unsettle { token: to.1 });
        }
        let e = self.sessions.remove(stub.slot);
        for f in e.moved.map(|m| m.filters).unwrap_or_default() {
            self.unindex(&f, stub.slot);
        }
        self.send(to.0, Envelope::Unsettle { token: to.1 });
    }

    /// Takes the entry at `slot` out of the slab (and out of the persistent count).
    fn remove_entry(&mut self, slot: usize) -> Entry {
        let e = self.sessions.remove(slot);
        add_session_hits(&mut self.stats.limits, &e.session);
        add_drops(&mut self.stats.ended_drops, &e.session.drops);
        if e.counted {
            self.shared.persistent[self.id].fetch_sub(1, Ordering::Release);
        }
        e
    }

    /// Installs the session for a granted connection (a resumed one, or a new one), indexes
    /// its subscriptions, and returns its slot.
    pub fn install(
        &mut self,
        session: Box<Session>,
        token: u64,
        conn: Option<Rc<ConnShared>>,
    ) -> usize {
        let slot = self.sessions.vacant_key();
        let subs: Vec<(TopicFilter, Subscription)> = session
            .subscriptions()
            .map(|(f, s)| (f.clone(), *s))
            .collect();
        for (filter, sub) in &subs {
            self.index_sub(filter, slot, *sub);
        }
        self.by_id.insert(session.client_id().clone(), slot);
        let connected = conn.is_some();
        let counted = session.is_persistent();
        if counted {
            self.shared.persistent[self.id].fetch_add(1, Ordering::Release);
        }
        let slot = self.sessions.insert(Entry {
            session,
            token,
            conn,
            counted,
            moved: None,
        });
        if let Some(stub) = self.stub_pending.remove(&token) {
            // Indexed here now: the old shard's stub may go, and until it has, a message
            // that comes both directly and through the stub is delivered once.
            self.settling.insert(token, AHashMap::new());
            for f in self.early.remove(&token).unwrap_or_default() {
                self.deliver_forwarded(slot, &f);
            }
            let shard = self.id;
            self.send(stub.shard, Envelope::Settled { stub, shard, token });
        }
        if connected && self.shared.store.is_some() {
            let e = &mut self.sessions[slot];
            if e.session.is_persistent() {
                self.store_image(slot, false);
            } else if e.session.in_store() {
                // Resumed without persistence (Session Expiry 0): the stored one is gone.
                e.session.forget_store();
                let w = PendingWrite::end(e.session.client_id().as_bytes());
                self.store_write(w);
            }
        }
        slot
    }

    /// The connection at `slot` with `token` ended. Publishes the will (when the session
    /// still holds one and has no delay to wait out), gives messages chosen for shared
    /// subscriptions back to their groups, and ends a non-persistent session (telling the
    /// directory); a persistent one is parked with timers for its delayed will and its
    /// Session Expiry Interval.
    pub fn disconnected(&mut self, slot: usize, conn: &ConnShared) {
        let Some(e) = self.sessions.get_mut(slot) else {
            return;
        };
        if e.token != conn.token {
            return;
        }
        e.conn = None;
        conn.detach_from(&mut e.session);
        let will = e.session.detach();
        let persistent = e.session.is_persistent();
        let client_id = e.session.client_id().clone();
        if let Some(will) = will {
            self.publish_will(will, client_id);
        }
        if persistent {
            self.park(slot);
        } else {
            self.end_session(slot);
        }
        self.flush();
    }

    /// Parks the offline persistent session at `slot`: its unacknowledged QoS 1 and queued
    /// shared-subscription messages go to the other members (it stays a member), and timers
    /// are set for its delayed will and its Session Expiry Interval.
    fn park(&mut self, slot: usize) {
        let Some(e) = self.sessions.get_mut(slot) else {
            return;
        };
        let (will_delay, expiry) = (e.session.will_delay(), e.session.expiry());
        let token = e.token;
        let taken = e.session.take_shared(false);
        self.requeue_shared(taken);
        self.store_done(slot);
        self.store_park(slot);
        {
            let now = self.now;
            // Stale timers (sessions that came back) are only skipped when due: rebuild the
            // heap when they outnumber the sessions, so it stays O(sessions).
            if self.timers.len() > 2 * self.sessions.len() + 1024 {
                let sessions = &self.sessions;
                self.timers.retain(|Reverse((_, token, slot, _))| {
                    sessions
                        .get(*slot)
                        .is_some_and(|e| e.token == *token && e.conn.is_none())
                });
            }
            if let Some(d) = will_delay {
                self.timers
                    .push(Reverse((now.saturating_add(d), token, slot, Timer::Will)));
            }
            if expiry != u32::MAX {
                self.timers.push(Reverse((
                    now.saturating_add(expiry),
                    token,
                    slot,
                    Timer::Expire,
                )));
            }
        }
    }

    /// Ends the session at `slot` for good: publishes a will still waiting out its delay,
    /// unindexes it and releases its client id at the directory.
    fn end_session(&mut self, slot: usize) {
        let mut e = self.remove_entry(slot);
        if e.session.in_store() {
            self.store_write(PendingWrite::end(e.session.client_id().as_bytes()));
        }
        self.by_id.remove(e.session.client_id());
        if let Some(will) = e.session.take_delayed_will() {
            self.publish_will(will, e.session.client_id().clone());
        }
        self.requeue_shared(e.session.take_shared(true));
        for filter in e.session.clear() {
            self.unindex(&filter, slot);
        }
        let client_id = e.session.client_id().clone();
        let d = directory_shard(&client_id, self.count);
        self.send(
            d,
            Envelope::Release {
                client_id,
                token: e.token,
            },
        );
    }

    /// Runs the timers due at second `now`: delayed wills and session expiry of parked
    /// sessions. A timer whose session reconnected (new token) or left does nothing.
    pub fn run_timers(&mut self, now: u32) {
        let mut fired = false;
        while let Some(Reverse((at, token, slot, what))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let live = self
                .sessions
                .get(slot)
                .is_some_and(|e| e.token == token && e.conn.is_none());
            if !live {
                continue;
            }
            fired = true;
            match what {
                Timer::Will => {
                    let e = &mut self.sessions[slot];
                    if let Some(will) = e.session.take_delayed_will() {
                        let origin = e.session.client_id().clone();
                        self.publish_will(will, origin);
                    }
                }
                Timer::Expire => {
                    self.stats.sessions_expired += 1;
                    self.end_session(slot);
                }
            }
        }
        if fired {
            self.flush();
        }
    }

    // ----- publish, subscribe -----

    /// Publishes the broker's `$SYS` topics as retained QoS 0 messages of its own.
    pub fn publish_sys(&mut self, topics: Vec<(String, String)>) {
        for (topic, payload) in topics {
            let Ok(topic) = crate::protocol::TopicName::new(bytes::Bytes::from(topic)) else {
                continue;
            };
            let publish = Publish {
                retain: true,
                topic,
                payload: bytes::Bytes::from(payload),
                ..Default::default()
            };
            self.route(Arc::new(AppMessage::new(publish)));
        }
    }

    /// Publishes a will as `origin`'s message: its properties (payload format, content type,
    /// response topic, correlation data, user properties, message expiry) become the
    /// message's; the Will Delay Interval is the will's alone.
    fn publish_will(&mut self, will: Will, origin: Str) {
        let mut properties: Properties = will.properties;
        if !properties.is_empty() {
            properties.will_delay_interval = None;
        }
        let expires_at = properties
            .message_expiry_interval
            .map(|e| self.now.saturating_add(e));
        let publish = Publish {
            dup: false,
            qos: will.qos.min(self.limits.maximum_qos),
            retain: will.retain && self.limits.retain_available,
            topic: will.topic,
            packet_id: 0,
            payload: will.payload,
            properties,
        };
        self.route(Arc::new(AppMessage {
            publish,
            origin,
            expires_at,
        }));
    }

    /// Routes a message: retained replicas everywhere if RETAIN is set, one envelope per other
    /// interested shard, local delivery if this shard is interested, and one envelope (or a
    /// local delivery) per matching shared-subscription group. Returns whether any
    /// subscriber (plain or shared, on any shard) matched.
    pub fn route(&mut self, msg: Message) -> bool {
        self.route_with(msg, false)
    }

    /// [`route`](Self::route), counting what it causes when the publisher `wait`s for it to
    /// be durable (see `shard::durability`).
    fn route_with(&mut self, msg: Message, wait: bool) -> bool {
        self.route_here(msg, wait, true)
    }

    /// The client `client_id` connected to another node: its connection here (if any) is
    /// closed with 0x8E Session taken over and its session ended. Runs on the client id's
    /// directory shard, which sends the owner shard a takeover no connection waits for.
    fn kick_for_cluster(&mut self, client_id: Str) {
        let Some((owner, old_token)) = self.directory.remove(&client_id) else {
            return;
        };
        tracing::info!(client_id = %client_id.as_str(), "client connected to another node: taken over");
        self.send(
            owner,
            Envelope::Takeover {
                client_id,
                shard: self.id,
                token: REMOTE_TOKEN,
                old_token,
                clean: true,
                away: false,
            },
        );
    }

    /// Keeps a retained message loaded from the cluster, on every shard, delivering nothing.
    fn retain_from_cluster(&mut self, msg: Message) {
        for d in 0..self.count {
            if d != self.id {
                self.send(d, Envelope::Retain(msg.clone()));
            }
        }
        self.set_retained(msg);
    }

    /// Routes a message another node forwarded: to this node's subscribers only.
    pub fn route_from_cluster(&mut self, msg: Message) {
        self.route_here(msg, false, false);
    }

    fn route_here(&mut self, msg: Message, wait: bool, forward: bool) -> bool {
        if forward && let Some(c) = &self.shared.cluster {
            c.forward(&msg);
        }
        if msg.retain {
            for d in 0..self.count {
                if d != self.id {
                    self.send(d, Envelope::Retain(msg.clone()));
                }
            }
            match self.set_retained(msg.clone()) {
                SetOutcome::Stored | SetOutcome::Replaced => {
                    self.store_retained(msg.topic.as_bytes(), Some(&msg));
                }
                SetOutcome::Deleted => self.store_retained(msg.topic.as_bytes(), None),
                SetOutcome::RefusedRemoved => {
                    self.retained_refused();
                    self.store_retained(msg.topic.as_bytes(), None);
                }
                SetOutcome::Refused => self.retained_refused(),
                SetOutcome::NotFound => {}
            }
        }
        let mask = self.shared.routes.lookup(msg.topic.as_bytes());
        let mut others = mask & !(1u64 << self.id);
        while others != 0 {
            let d = others.trailing_zeros() as usize;
            others &= others - 1;
            let durable = self.durable_to(d, wait);
            let msg = msg.clone();
            self.send(d, Envelope::Publish { msg, durable });
        }
        if mask & (1u64 << self.id) != 0 {
            self.deliver_local(&msg);
        }
        let mut matched = mask != 0;
        // A message from another node is for its plain subscribers here only: the node it
        // was published on chose the node of each shared group.
        if !forward {
            return matched;
        }
        // Shared groups: (key, shards here, other nodes) for each group matching the topic.
        let mut groups: SmallVec<[(TopicFilter, u64, u64); 2]> = SmallVec::new();
        if !self.shared.shared_routes.is_empty() {
            self.shared
                .shared_routes
                .for_each_match(msg.topic.as_bytes(), |k, m| groups.push((k.clone(), m, 0)));
        }
        if let Some(c) = &self.shared.cluster
            && !c.shared.is_empty()
        {
            c.shared.for_each_match(msg.topic.as_bytes(), |k, nodes| {
                match groups.iter_mut().find(|g| g.0 == *k) {
                    Some(g) => g.2 = nodes,
                    None => groups.push((k.clone(), 0, nodes)),
                }
            });
        }
        for (group, shards, nodes) in groups {
            matched = true;
            match self.pick_node(shards != 0, nodes) {
                Some(node) => {
                    if let Some(c) = &self.shared.cluster {
                        c.forward_shared(node, &group, &msg);
                    }
                }
                None => self.send_shared(msg.clone(), group, shards, 0, wait),
            }
        }
        matched
    }

    /// For a shared group with members on this node (`here`) and on the other nodes of
    /// `nodes`, the node that gets the next message, round-robin, a node counting once
    /// whatever its members: `None` for this one, else the other node's index.
    fn pick_node(&mut self, here: bool, nodes: u64) -> Option<usize> {
        if nodes == 0 {
            return None;
        }
        let n = nodes.count_ones() as usize + usize::from(here);
        self.node_next = self.node_next.wrapping_add(1);
        let k = self.node_next % n;
        if k == nodes.count_ones() as usize {
            return None;
        }
        let mut bits = nodes;
        for _ in 0..k {
            bits &= bits - 1;
        }
        Some(bits.trailing_zeros() as usize)
    }

    /// Counts (and logs at 1, 2, 4 … refusals) a retained message the bounds kept out.
    fn retained_refused(&mut self) {
        let refused = self.stats.hit(Limit::RetainedStore);
        if refused.is_power_of_two() {
            let l = &self.shared.config.limits;
            tracing::warn!(
                shard = self.id,
                refused,
                "retained message not kept: limits.max_retained_messages ({}) or max_retained_bytes ({}) reached",
                l.max_retained_messages,
                l.max_retained_bytes
            );
        }
    }

    /// Sends a message for the shared group `group` to one shard of `mask` not in `tried`,
    /// round-robin over those shards (this one included, delivering locally when chosen), so
    /// a group spread over shards is balanced across them whichever shard publishes.
    /// Counted as dropped when no shard is left.
    fn send_shared(&mut self, msg: Message, group: TopicFilter, mask: u64, tried: u64, wait: bool) {
        let me = 1u64 << self.id;
        let mut left = mask & !tried;
        if left & me != 0 && !self.groups.contains_key(&group) {
            left &= !me;
        }
        if left == 0 {
            self.stats.shared_dropped += 1;
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = left.count_ones() as usize;
        self.shared_next = self.shared_next.wrapping_add(1);
        let mut bits = left;
        for _ in 0..self.shared_next % n {
            bits &= bits - 1;
        }
        let dest = bits.trailing_zeros() as usize;
        if dest == self.id {
            return self.deliver_shared(msg, group, tried);
        }
        let durable = self.durable_to(dest, wait);
        self.send(
            dest,
            Envelope::Shared {
                msg,
                group,
                tried,
                durable,
            },
        );
    }

    /// Whether an envelope to `dest` carries the durable flag: the sender `wait`s for what
    /// it causes, and `dest` holds persistent sessions (no other can write for a delivery).
    /// Counts it.
    fn durable_to(&mut self, dest: usize, wait: bool) -> bool {
        let durable = wait && self.shared.persistent[dest].load(Ordering::Acquire) > 0;
        if durable {
            self.durability.sent(dest);
        }
        durable
    }

    /// Delivers a message to one member of the shared group `group` on this shard, chosen
    /// round-robin among the members that are connected and keeping up (window not full),
    /// else among the connected ones. With none connected here, the message goes on to a
    /// shard of the group not yet tried; only when every shard was tried does a parked
    /// (persistent, offline) member here queue it. The member gets it as its own
    /// subscription grants (QoS, Retain As Published, Subscription Identifier).
    fn deliver_shared(&mut self, msg: Message, group: TopicFilter, tried: u64) {
        let me = 1u64 << self.id;
        let mask = self.shared.shared_routes.mask(&group);
        let last_resort = mask & !(tried | me) == 0;
        let chosen = self.groups.get_mut(&group).and_then(|g| {
            let n = g.members.len();
            let start = g.next;
            let sessions = &self.sessions;
            let topic = msg.topic.as_str();
            let pick = |want: fn(&Session) -> bool| {
                (0..n).map(|k| (start + k) % n).find(|&i| {
                    sessions
                        .get(g.members[i].0 as usize)
                        .is_some_and(|e| want(&e.session) && e.session.may_read(topic))
                })
            };
            let i = pick(Session::has_room)
                .or_else(|| pick(Session::is_connected))
                .or_else(|| if last_resort { pick(|_| true) } else { None })?;
            g.next = (i + 1) % n;
            Some(g.members[i])
        });
        let Some((slot, sub)) = chosen else {
            // Passed on without the durable flag: this shard's effect for the sender must
            // not wait for another shard's (see `shard::durability`, known gap).
            return self.send_shared(msg, group, mask, tried | me, false);
        };
        let grant = Grant {
            qos: sub.options.qos,
            retain: sub.options.retain_as_published && msg.retain,
            ids: if sub.id != 0 {
                core::slice::from_ref(&sub.id)
            } else {
                &[]
            },
            share: Some(&group),
            seq: 0,
        };
        let now = self.now;
        self.deliver_to(slot as usize, &msg, grant, now);
    }

    /// Gives the messages a leaving session held for shared subscriptions back to their
    /// groups (another member gets them, as its own subscription grants).
    fn requeue_shared(&mut self, taken: Vec<Outgoing>) {
        for o in taken {
            let Some(group) = o.share().cloned() else {
                continue;
            };
            let mask = self.shared.shared_routes.mask(&group);
            self.send_shared(o.msg, group, mask, 0, false);
        }
    }

    fn set_retained(&mut self, msg: Message) -> SetOutcome {
        let topic = msg.topic.clone();
        let value = (!msg.payload.is_empty()).then_some(msg);
        self.retained.set(topic.as_bytes(), value)
    }

    /// Fills this shard's retained replica with what the store recovered at start-up.
    pub fn seed_retained(&mut self, messages: &[Message]) {
        for m in messages {
            self.set_retained(m.clone());
        }
    }

    /// Writes a retained message (or its deletion) to the store; the publishing shard does
    /// this once, the replicas do not.
    fn store_retained(&mut self, topic: &[u8], msg: Option<&Message>) {
        // The broker's own `$SYS` topics are refreshed after a restart, not kept.
        if self.shared.store.is_none() || topic.starts_with(SYS_PREFIX) {
            return;
        }
        let start_unix = self.shared.start_unix;
        let value = msg.map(|m| {
            let unix = m.expires_at.map(|at| start_unix + u64::from(at));
            crate::store::codec::encode_message(m, unix)
        });
        self.store_write(PendingWrite::retained(topic, value));
    }

    /// Hands a write to the store without waiting: behind a backlog it waits its turn (a
    /// later write must not overtake an earlier one); a full channel keeps it in the backlog,
    /// which past `limits.store_queue` drops its oldest (counted, logged).
    fn store_write(&mut self, w: PendingWrite) {
        if self.shared.store.is_none() {
            return;
        }
        self.store_writes += 1;
        let w = w.numbered(self.id, self.store_writes);
        if !self.store_backlog.is_empty() {
            self.retry_store();
        }
        let write = match &self.shared.store {
            Some(store) if self.store_backlog.is_empty() => store.retry(w),
            _ => Err(w),
        };
        if let Err(w) = write {
            self.store_backlog.push_back(w);
            // Behind, this shard's publishers stop reading (and flushing): the pump retries
            // the backlog then.
            if self.store_behind() {
                self.wake_pump();
            }
            if self.store_backlog.len() > self.shared.config.limits.store_queue {
                self.store_backlog.pop_front();
                let dropped = self.stats.hit(Limit::StoreQueue);
                // Logged at 1, 2, 4, 8 … drops: a line per drop would flood the log.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        shard = self.id,
                        dropped,
                        "store backlog full: writes dropped (the disk cannot keep up)"
                    );
                }
            }
        }
    }

    /// Writes the image of the persistent session at `slot`: when it parks (with its
    /// deadlines in Unix seconds), when it connects, and when its subscriptions change.
    fn store_park(&mut self, slot: usize) {
        self.store_image(slot, true);
    }

    fn store_image(&mut self, slot: usize, parked: bool) {
        if self.shared.store.is_none() {
            return;
        }
        let start_unix = self.shared.start_unix;
        let now_unix = start_unix + u64::from(self.now);
        let Some(e) = self.sessions.get_mut(slot) else {
            return;
        };
        if !e.session.is_persistent() {
            return;
        }
        let image = e.session.image_meta();
        let expiry = e.session.expiry();
        // A connected session has no deadline yet: after a crash, its expiry counts from
        // the restart.
        let d = crate::store::codec::Deadlines {
            session_end: (parked && expiry != u32::MAX).then(|| now_unix + u64::from(expiry)),
            will_due: if parked {
                e.session.will_delay().map(|d| now_unix + u64::from(d))
            } else {
                None
            },
        };
        let value = crate::store::codec::encode_session(&image, d, start_unix);
        e.session.mark_stored();
        let w = PendingWrite::session(image.client_id.as_bytes(), value);
        self.store_write(w);
    }

    /// Delivers `msg` to the session at `slot` as `grant` says. A QoS ≥ 1 delivery to a
    /// persistent session is also appended to the store (and removed when it completes,
    /// see [`store_done`](Self::store_done)), so it survives a crash.
    fn deliver_to(&mut self, slot: usize, msg: &Message, mut grant: Grant<'_>, now: u32) {
        let Some(e) = self.sessions.get_mut(slot) else {
            return;
        };
        if let Some(m) = &e.moved {
            let forward = Envelope::Forward {
                client_id: e.session.client_id().clone(),
                token: m.token,
                msg: msg.clone(),
                qos: grant.qos,
                retain: grant.retain,
                ids: grant.ids.to_vec(),
            };
            let to = m.shard;
            return self.send(to, forward);
        }
        if !self.settling.is_empty()
            && let Some(seen) = self.settling.get_mut(&e.token)
            && seen
                .insert(Arc::as_ptr(msg) as usize, msg.clone())
                .is_some()
        {
            return;
        }
        let qos = msg.qos.min(grant.qos);
        let keep =
            qos != QoS::AtMostOnce && e.session.is_persistent() && self.shared.store.is_some();
        if keep {
            grant.seq = e.session.next_store_seq();
        }
        let outcome = e.session.deliver(msg, grant, now);
        self.stats.delivered += 1;
        self.stats.delivered_qos[qos as usize] += 1;
        if let Some(c) = &e.conn {
            c.wake_writer();
            if outcome == Delivered::Queued {
                // Connected, so queued behind a full inflight window.
                self.stats.limits[Limit::MaxInflight as usize] += 1;
            }
        }
        if keep && outcome != Delivered::Dropped {
            let value = crate::store::codec::encode_delivery(
                msg,
                qos,
                grant.retain,
                grant.ids,
                grant.share,
                self.shared.start_unix,
            );
            let w = PendingWrite::queued(e.session.client_id().as_bytes(), grant.seq, value);
            self.store_write(w);
            // Sent at once: its packet identifier (QoS 2) goes to the store right behind it.
            self.store_done(slot);
        }
    }

    /// Removes from the store the deliveries the session at `slot` completed, and writes its
    /// QoS 2 state changes.
    fn store_done(&mut self, slot: usize) {
        if !self
            .sessions
            .get(slot)
            .is_some_and(|e| e.session.has_done())
        {
            return;
        }
        let Some(e) = self.sessions.get_mut(slot) else {
            return;
        };
        let mut seqs = Vec::new();
        let mut events: SmallVec<[crate::protocol::session::Qos2Event; 4]> = SmallVec::new();
        e.session
            .drain_done(|seq| seqs.push(seq), |ev| events.push(ev));
        let client_id = e.session.client_id().clone();
        if !seqs.is_empty() {
            self.store_write(PendingWrite::done(client_id.as_bytes(), seqs));
        }
        for ev in events {
            self.store_write(PendingWrite::qos2(client_id.as_bytes(), ev));
        }
    }

    /// Fills this shard with the persistent sessions the store recovered whose client ids
    /// this shard's directory partition owns: parked, with their timers (their images and
    /// deliveries are in the store already), and their routes added in one go.
    pub fn seed_sessions(&mut self, sessions: Vec<(SessionImage, crate::store::codec::Deadlines)>) {
        let start_unix = self.shared.start_unix;
        self.deferred_routes = Some(Vec::new());
        for (image, d) in sessions {
            let client_id = image.client_id.clone();
            let session = Box::new(Session::from_image(image, self.limits.clone()));
            let token = self.new_token();
            let slot = self.install(session, token, None);
            self.directory.insert(client_id, (self.id, token));
            let at = |unix: u64| unix.saturating_sub(start_unix).min(u64::from(u32::MAX)) as u32;
            if let Some(end) = d.session_end {
                self.timers
                    .push(Reverse((at(end), token, slot, Timer::Expire)));
            }
            if let Some(due) = d.will_due {
                self.timers
                    .push(Reverse((at(due), token, slot, Timer::Will)));
            }
        }
        if let Some(filters) = self.deferred_routes.take() {
            self.shared
                .routes
                .add_many(filters.iter().map(|f| f.as_bytes()), self.id);
            if let Some(c) = &self.shared.cluster {
                for f in &filters {
                    c.filter(f.as_bytes(), true);
                }
            }
        }
    }

    /// Publishes the delayed wills of sessions that expired while the broker was down.
    pub fn publish_expired_wills(&mut self, expired: Vec<SessionImage>) {
        for image in expired {
            if let Some(will) = image.will {
                self.publish_will(will, image.client_id);
            }
        }
        self.flush();
    }

    /// Whether a held acknowledgement or effect (`durability = "sync"`) is ready.
    fn release_ready(&self) -> bool {
        if self.durability.is_empty() {
            return false;
        }
        let Some(store) = &self.shared.store else {
            return false;
        };
        let (me, effects) = (self.id, &self.shared.effects);
        self.durability
            .ready(store.durable(me), |d| effects.get(me, d))
    }

    /// Reports the effects and sends the acknowledgements that are ready, oldest first.
    fn release_durable(&mut self) {
        if self.durability.is_empty() {
            return;
        }
        let Some(store) = &self.shared.store else {
            return;
        };
        let durable = store.durable(self.id);
        while let Some(e) = self.durability.pop_effect(durable) {
            self.report(e);
        }
        let shared = self.shared.clone();
        let me = self.id;
        while let Some(a) = self
            .durability
            .pop_ack(durable, |d| shared.effects.get(me, d))
        {
            self.send_ack(a);
        }
    }

    /// Sends a held acknowledgement, if its connection is still the session's.
    fn send_ack(&mut self, a: HeldAck) {
        let Some(e) = self.sessions.get_mut(a.slot as usize) else {
            return;
        };
        if e.token != a.token {
            return;
        }
        e.session.ack(a.ack, a.matched);
        if let Some(c) = &e.conn {
            c.wake_writer();
        }
    }

    /// Publishes an effect to the shard whose envelopes it counts, and rings that shard.
    fn report(&self, e: Effect) {
        let source = usize::from(e.source);
        self.shared.effects.set(source, self.id, e.upto);
        self.shared.doorbells[source].notify();
    }

    /// Hands the store what its channel had no room for before, in order.
    fn retry_store(&mut self) {
        let Some(store) = &self.shared.store else {
            self.store_backlog.clear();
            return;
        };
        while let Some(w) = self.store_backlog.pop_front() {
            if let Err(w) = store.retry(w) {
                self.store_backlog.push_front(w);
                return;
            }
        }
    }

    /// Delivers a message to this shard's matching sessions, once per session with the
    /// highest granted QoS of its overlapping subscriptions and all their Subscription
    /// Identifiers; a No Local subscription skips its own client's messages.
    pub fn deliver_local(&mut self, msg: &Message) {
        let mut matches = std::mem::take(&mut self.matches);
        self.index
            .for_each_match(msg.topic.as_bytes(), |slot, s| matches.push((slot, *s)));
        if matches.len() > 1 {
            matches.sort_unstable_by_key(|(slot, _)| *slot);
        }
        let now = self.now;
        let mut i = 0;
        while i < matches.len() {
            let slot = matches[i].0;
            let mut j = i + 1;
            while j < matches.len() && matches[j].0 == slot {
                j += 1;
            }
            let Some(e) = self
                .sessions
                .get_mut(slot as usize)
                .filter(|e| e.session.may_read(msg.topic.as_str()))
            else {
                i = j;
                continue;
            };
            let v5 = e.session.version().is_v5();
            let mut ids: SmallVec<[u32; 2]> = SmallVec::new();
            let grant = if j == i + 1 {
                // One subscription matched (the common case): no merging.
                let sub = &matches[i].1;
                i = j;
                let o = &sub.options;
                if o.no_local && msg.origin == *e.session.client_id() {
                    continue;
                }
                Grant {
                    qos: o.qos,
                    retain: o.retain_as_published && msg.retain && v5,
                    ids: if sub.id != 0 {
                        core::slice::from_ref(&sub.id)
                    } else {
                        &[]
                    },
                    share: None,
                    seq: 0,
                }
            } else {
                let mut grant: Option<Grant<'_>> = None;
                for (_, sub) in &matches[i..j] {
                    let o = &sub.options;
                    if o.no_local && msg.origin == *e.session.client_id() {
                        continue;
                    }
                    let g = grant.get_or_insert_with(Grant::default);
                    g.qos = g.qos.max(o.qos);
                    g.retain |= o.retain_as_published && msg.retain && v5;
                    if sub.id != 0 {
                        ids.push(sub.id);
                    }
                }
                i = j;
                let Some(mut grant) = grant else {
                    continue;
                };
                grant.ids = &ids;
                grant
            };
            // A QoS ≥ 1 delivery to a persistent session goes through the store; a stub's
            // is forwarded, and one to a session whose takeover is settling is de-duplicated
            // (both in `deliver_to`).
            if (e.session.is_persistent()
                && msg.qos != QoS::AtMostOnce
                && grant.qos != QoS::AtMostOnce
                && self.shared.store.is_some())
                || e.moved.is_some()
                || !self.settling.is_empty()
            {
                self.deliver_to(slot as usize, msg, grant, now);
                continue;
            }
            let outcome = e.session.deliver(msg, grant, now);
            self.stats.delivered += 1;
            self.stats.delivered_qos[msg.qos.min(grant.qos) as usize] += 1;
            if let Some(c) = &e.conn {
                c.wake_writer();
                if outcome == Delivered::Queued {
                    self.stats.limits[Limit::MaxInflight as usize] += 1;
                }
            }
        }
        matches.clear();
        self.matches = matches;
    }

    /// Carries out the actions a session's `handle` returned, for the session at `slot`.
    /// Returns `Some(publish_will)` if the client sent DISCONNECT.
    pub fn apply(&mut self, slot: usize, actions: &mut Vec<Action>) -> Option<bool> {
        let mut disconnect = None;
        let mut resubscribed = false;
        for action in actions.drain(..) {
            match action {
                Action::Publish { msg, ack } => {
                    self.stats.received += 1;
                    self.stats.received_qos[msg.qos as usize] += 1;
                    if let Some((h, c)) = self.sessions[slot].session.authz().and_then(Authz::hooks)
                    {
                        h.on_publish(c, msg.topic.as_str(), &msg.payload);
                    }
                    if ack == Ack::None || !self.durability.on {
                        let matched = self.route(msg);
                        self.sessions[slot].session.ack(ack, matched);
                        continue;
                    }
                    // durability = "sync": the acknowledgement waits for what routing wrote.
                    self.durability.begin(self.store_writes);
                    let matched = self.route_with(msg, true);
                    if matches!(ack, Ack::PubRec(_)) {
                        // The packet identifier awaiting PUBREL is part of what PUBREC waits
                        // for (a resent PUBLISH must not be routed twice).
                        self.store_done(slot);
                    }
                    let held = HeldAck {
                        slot: slot as u32,
                        token: self.sessions[slot].token,
                        ack,
                        matched,
                    };
                    if let Some(a) = self.durability.end_ack(held, self.store_writes) {
                        self.send_ack(a);
                    }
                }
                Action::Subscribe {
                    filter,
                    sub,
                    is_new,
                } => {
                    if let Some((h, c)) = self.sessions[slot].session.authz().and_then(Authz::hooks)
                    {
                        h.on_subscribe(c, filter.as_str());
                    }
                    self.index_sub(&filter, slot, sub);
                    self.subscribed.push((filter, sub, is_new));
                    resubscribed = true;
                }
                Action::SubAck { packet_id, reasons } => {
                    let e = &mut self.sessions[slot];
                    e.session.suback(packet_id, reasons);
                    let mut subscribed = std::mem::take(&mut self.subscribed);
                    let now = self.now;
                    let mut expired: Vec<TopicName> = Vec::new();
                    let mut found: Vec<Message> = Vec::new();
                    for (filter, sub, is_new) in subscribed.drain(..) {
                        let e = &mut self.sessions[slot];
                        if !e
                            .session
                            .retained_on_subscribe(&filter, &sub.options, is_new)
                        {
                            continue;
                        }
                        let session = &self.sessions[slot].session;
                        self.retained.for_each_match(filter.as_bytes(), |_, m| {
                            if m.is_expired(now) {
                                expired.push(m.topic.clone());
                            } else if session.may_read(m.topic.as_str()) {
                                found.push(m.clone());
                            }
                        });
                        let ids: &[u32] = if sub.id != 0 {
                            core::slice::from_ref(&sub.id)
                        } else {
                            &[]
                        };
                        for m in found.drain(..) {
                            let grant = Grant {
                                qos: sub.options.qos,
                                retain: true,
                                ids,
                                share: None,
                                seq: 0,
                            };
                            self.deliver_to(slot, &m, grant, now);
                        }
                    }
                    for topic in expired {
                        self.retained.set(topic.as_bytes(), None);
                        self.store_retained(topic.as_bytes(), None);
                    }
                    self.subscribed = subscribed;
                }
                Action::Unsubscribe(filter) => {
                    if let Some((h, c)) = self.sessions[slot].session.authz().and_then(Authz::hooks)
                    {
                        h.on_unsubscribe(c, filter.as_str());
                    }
                    self.unindex(&filter, slot);
                    resubscribed = true;
                }
                Action::Disconnect { publish_will } => disconnect = Some(publish_will),
            }
        }
        if self.shared.store.is_some() {
            self.store_done(slot);
            if resubscribed {
                self.store_image(slot, false);
            }
        }
        disconnect
    }

    /// Broker shutdown: every connected client gets DISCONNECT 0x8B (5.0) and is closed; the
    /// writers send what is left first.
    pub fn disconnect_all(&mut self, reason: ReasonCode) {
        for (_, e) in self.sessions.iter_mut() {
            if let Some(conn) = &e.conn {
                e.session.disconnect_with(reason);
                conn.close();
            }
        }
        for p in self.pending.values() {
            p.conn.close();
        }
    }

    /// Whether `client_id` has a session on this shard (for tests and metrics).
    pub fn has_session(&self, client_id: &Str) -> bool {
        self.by_id.contains_key(client_id)
    }
}

#[cfg(test)]
mod tests;
