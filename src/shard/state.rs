//! One shard's state: its sessions, local index, retained replica, directory partition and
//! mesh endpoints, and the synchronous logic that ties them together (routing a publish,
//! applying a subscription, the takeover protocol). Everything here runs on the shard's own
//! thread, inside short `RefCell` borrows that never span an `.await`.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;

use ahash::AHashMap;
use atomic_waker::AtomicWaker;
use slab::Slab;

use super::conn::ConnShared;
use super::wheel::Wheel;
use crate::config::Config;
use crate::index::{LocalIndex, RetainedStore, Routes};
use crate::mesh::{Consumer, Doorbell, Envelope, Producer, Wake};
use crate::protocol::session::{Action, Message, Session, SessionLimits};
use crate::protocol::{Publish, ReasonCode, Str, SubscriptionOptions, TopicFilter, Will};

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
    /// One doorbell per shard.
    pub doorbells: Vec<Doorbell<ShardWaker>>,
    /// Connections open broker-wide (bounded by `Limits::max_connections`).
    pub connections: AtomicUsize,
    /// Messages dropped broker-wide (slow consumers, full queues, full rings).
    pub dropped: AtomicU64,
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
    /// Session bounds from the config.
    pub limits: SessionLimits,
    index: LocalIndex<u32, SubscriptionOptions>,
    retained: RetainedStore<Message>,
    /// Sessions on this shard.
    pub sessions: Slab<Entry>,
    by_id: AHashMap<Str, usize>,
    directory: AHashMap<Str, (usize, u64)>,
    pending: AHashMap<u64, Pending>,
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
    pub wheel: Wheel<Rc<ConnShared>>,
    /// Counters.
    pub stats: Stats,
    matches: Vec<(u32, SubscriptionOptions)>,
    subscribed: Vec<(TopicFilter, SubscriptionOptions, bool)>,
}

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
        let limits = SessionLimits {
            max_inflight: l.max_inflight,
            max_queued_messages: l.max_queued_messages,
            max_queued_bytes: l.max_queued_bytes,
            queue_qos0_offline: shared.config.queue_qos0_offline,
            max_subscriptions: l.max_subscriptions_per_client,
            max_topic_levels: l.max_topic_levels,
            max_write_buffer: l.max_write_buffer,
        };
        let count = out.len();
        Self {
            id,
            count,
            retained: RetainedStore::new(l.max_retained_messages),
            shared,
            limits,
            index: LocalIndex::new(),
            sessions: Slab::new(),
            by_id: AHashMap::new(),
            directory: AHashMap::new(),
            pending: AHashMap::new(),
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
        }
    }

    /// A token naming a new connection, unique broker-wide.
    pub fn new_token(&mut self) -> u64 {
        self.next_token += 1;
        ((self.id as u64) << 48) | self.next_token
    }

    // ----- mesh -----

    /// Sends an envelope to shard `dest` (staged until [`flush`](Self::flush)).
    pub fn send(&mut self, dest: usize, env: Envelope) {
        if dest == self.id {
            self.local.push_back(env);
            if let Some(w) = self.pump_waker.take() {
                w.wake();
            }
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
    }

    /// Whether publishers on this shard should stop reading (a ring to another shard is full
    /// and its overflow holds messages).
    pub fn backpressured(&self) -> bool {
        self.overflow_len > 0
    }

    /// Publishes every staged batch with one store per ring and rings the doorbells.
    pub fn flush(&mut self) {
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
        !self.local.is_empty() || self.inbound.iter_mut().any(|c| !c.is_empty())
    }

    /// Processes up to `max` envelopes per inbound ring plus the local queue. Returns how many.
    pub fn pump(&mut self, max: usize) -> usize {
        let mut inbox = std::mem::take(&mut self.inbox);
        for c in &mut self.inbound {
            c.drain(max, |e| inbox.push(e));
        }
        let n = inbox.len() + self.local.len();
        for env in inbox.drain(..) {
            self.on_envelope(env);
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
            Envelope::Publish(m) => self.deliver_local(&m),
            Envelope::Retain(m) => self.set_retained(m),
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
            } => self.on_takeover(client_id, shard, token, old_token, clean),
            Envelope::Handoff { token, session } => self.on_handoff(token, session),
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

    fn on_claim(&mut self, client_id: Str, shard: usize, token: u64, clean: bool) {
        match self.directory.insert(client_id.clone(), (shard, token)) {
            None => self.send(
                shard,
                Envelope::Handoff {
                    token,
                    session: None,
                },
            ),
            Some((owner, old_token)) => self.send(
                owner,
                Envelope::Takeover {
                    client_id,
                    shard,
                    token,
                    old_token,
                    clean,
                },
            ),
        }
    }

    fn on_takeover(
        &mut self,
        client_id: Str,
        shard: usize,
        token: u64,
        old_token: u64,
        clean: bool,
    ) {
        if let Some(slot) = self.by_id.get(&client_id).copied() {
            let session = self.evict(slot, ReasonCode::SESSION_TAKEN_OVER);
            let session = (!clean).then_some(session);
            self.send(shard, Envelope::Handoff { token, session });
        } else if let Some(p) = self.pending.get_mut(&old_token) {
            p.superseded_by = Some((shard, token, clean));
        } else {
            self.send(
                shard,
                Envelope::Handoff {
                    token,
                    session: None,
                },
            );
        }
    }

    fn on_handoff(&mut self, token: u64, session: Option<Box<Session>>) {
        let Some(p) = self.pending.remove(&token) else {
            tracing::debug!(shard = self.id, token, "handoff for an unknown connection");
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
                },
            );
            return;
        }
        if p.conn.is_closing() {
            // The connection died while its claim travelled; this shard owns the client id
            // now. Keep a resumed session parked here, or hand the id back.
            match session {
                Some(s) if s.is_persistent() => {
                    self.install(s, p.conn.token, None);
                }
                _ => {
                    let d = directory_shard(&p.client_id, self.count);
                    let (client_id, token) = (p.client_id, p.conn.token);
                    self.send(d, Envelope::Release { client_id, token });
                }
            }
            return;
        }
        p.conn.grant(session);
    }

    /// Removes the subscription of the session at `slot` to `filter` from the local index,
    /// and this shard's route bit for the filter when it was the shard's last subscriber.
    fn unindex(&mut self, filter: &TopicFilter, slot: usize) {
        if let Some(r) = self.index.remove(filter.as_bytes(), slot as u32) {
            if r.last {
                self.shared.routes.remove(filter.as_bytes(), self.id);
            }
        }
    }

    /// Removes a session from this shard (takeover): kicks its connection with `reason`,
    /// publishes its will, unindexes its subscriptions. Returns the session.
    ///
    /// Known gap: between this eviction and the new shard installing the session's
    /// subscriptions, a publish matched only this session is routed to neither shard and the
    /// migrating session misses it. Closing that window needs a hand-over of the routes with
    /// forwarding (and de-duplication by message identity) from the old to the new shard.
    fn evict(&mut self, slot: usize, reason: ReasonCode) -> Box<Session> {
        let mut e = self.sessions.remove(slot);
        self.by_id.remove(e.session.client_id());
        for (filter, _) in e.session.subscriptions() {
            self.unindex(filter, slot);
        }
        if let Some(conn) = e.conn.take() {
            e.session.disconnect_with(reason);
            conn.detach_from(&mut e.session);
            conn.close();
            if let Some(will) = e.session.detach() {
                self.publish_will(will);
            }
        }
        e.session
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
        for (filter, options) in session.subscriptions() {
            if self
                .index
                .insert(filter.as_bytes(), slot as u32, *options)
                .first
            {
                self.shared.routes.add(filter.as_bytes(), self.id);
            }
        }
        self.by_id.insert(session.client_id().clone(), slot);
        self.sessions.insert(Entry {
            session,
            token,
            conn,
        })
    }

    /// The connection at `slot` with `token` ended. Publishes the will (when the session
    /// still holds one), and ends a non-persistent session (telling the directory).
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
        if let Some(will) = will {
            self.publish_will(will);
        }
        if !persistent {
            let mut e = self.sessions.remove(slot);
            self.by_id.remove(e.session.client_id());
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
        self.flush();
    }

    // ----- publish, subscribe -----

    fn publish_will(&mut self, will: Will) {
        let msg = Arc::new(Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            packet_id: 0,
            payload: will.payload,
            properties: Default::default(),
        });
        self.route(msg);
    }

    /// Routes a message: retained replicas everywhere if RETAIN is set, one envelope per other
    /// interested shard, local delivery if this shard is interested.
    pub fn route(&mut self, msg: Message) {
        if msg.retain {
            for d in 0..self.count {
                if d != self.id {
                    self.send(d, Envelope::Retain(msg.clone()));
                }
            }
            self.set_retained(msg.clone());
        }
        let mask = self.shared.routes.lookup(msg.topic.as_bytes());
        let mut others = mask & !(1u64 << self.id);
        while others != 0 {
            let d = others.trailing_zeros() as usize;
            others &= others - 1;
            self.send(d, Envelope::Publish(msg.clone()));
        }
        if mask & (1u64 << self.id) != 0 {
            self.deliver_local(&msg);
        }
    }

    fn set_retained(&mut self, msg: Message) {
        let topic = msg.topic.clone();
        let value = (!msg.payload.is_empty()).then_some(msg);
        self.retained.set(topic.as_bytes(), value);
    }

    /// Delivers a message to this shard's matching sessions, once per session at the highest
    /// granted QoS of its overlapping subscriptions.
    pub fn deliver_local(&mut self, msg: &Message) {
        let mut matches = std::mem::take(&mut self.matches);
        self.index
            .for_each_match(msg.topic.as_bytes(), |slot, o| matches.push((slot, *o)));
        if matches.len() > 1 {
            matches.sort_unstable_by_key(|(slot, _)| *slot);
            matches.dedup_by(|later, kept| {
                if later.0 == kept.0 {
                    kept.1.qos = kept.1.qos.max(later.1.qos);
                    kept.1.retain_as_published |= later.1.retain_as_published;
                    true
                } else {
                    false
                }
            });
        }
        for (slot, o) in matches.drain(..) {
            let Some(e) = self.sessions.get_mut(slot as usize) else {
                continue;
            };
            let retain = o.retain_as_published && msg.retain && e.session.version().is_v5();
            e.session.deliver(msg, o.qos, retain);
            self.stats.delivered += 1;
            if let Some(c) = &e.conn {
                c.wake_writer();
            }
        }
        self.matches = matches;
    }

    /// Carries out the actions a session's `handle` returned, for the session at `slot`.
    /// Returns `Some(publish_will)` if the client sent DISCONNECT.
    pub fn apply(&mut self, slot: usize, actions: &mut Vec<Action>) -> Option<bool> {
        let mut disconnect = None;
        for action in actions.drain(..) {
            match action {
                Action::Publish(m) => {
                    self.stats.received += 1;
                    self.route(m);
                }
                Action::Subscribe {
                    filter,
                    options,
                    is_new,
                } => {
                    if self
                        .index
                        .insert(filter.as_bytes(), slot as u32, options)
                        .first
                    {
                        self.shared.routes.add(filter.as_bytes(), self.id);
                    }
                    self.subscribed.push((filter, options, is_new));
                }
                Action::SubAck { packet_id, reasons } => {
                    let e = &mut self.sessions[slot];
                    e.session.suback(packet_id, reasons);
                    let mut subscribed = std::mem::take(&mut self.subscribed);
                    for (filter, options, is_new) in subscribed.drain(..) {
                        let e = &mut self.sessions[slot];
                        if !e.session.retained_on_subscribe(&options, is_new) {
                            continue;
                        }
                        let session = &mut e.session;
                        self.retained.for_each_match(filter.as_bytes(), |_, m| {
                            session.deliver(m, options.qos, true);
                        });
                    }
                    self.subscribed = subscribed;
                }
                Action::Unsubscribe(filter) => self.unindex(&filter, slot),
                Action::Disconnect { publish_will } => disconnect = Some(publish_will),
            }
        }
        disconnect
    }

    /// Whether `client_id` has a session on this shard (for tests and metrics).
    pub fn has_session(&self, client_id: &Str) -> bool {
        self.by_id.contains_key(client_id)
    }
}
