//! Several shardmq nodes as one broker, coordinated through Redis (`--cluster redis://…`).
//!
//! What crosses Redis, and when:
//!
//! ```text
//!  first / last subscriber to a filter on this node (any shard):
//!      SADD / SREM shardmq:filters:{node} FILTER  +  PUBLISH shardmq:routes "+node\nFILTER"
//!  a PUBLISH on this node whose topic matches another node's filters:
//!      PUBLISH shardmq:to:{that node} MESSAGE      (once per interested node, never a broadcast)
//!  ... and a shared subscription group ($share/G/F, announced like a filter) with members on
//!  several nodes: the publishing node picks one node of the group, round-robin (itself too):
//!      PUBLISH shardmq:to:{chosen node} GROUP MESSAGE   (that node picks one member)
//!  a retained PUBLISH (cluster-wide state):
//!      HSET / HDEL shardmq:retained TOPIC MESSAGE  +  PUBLISH shardmq:retained-updates MESSAGE
//!      (every node delivers and keeps it; a node starting later loads the hash)
//!  every heartbeat_secs:  SET shardmq:node:{node} EX node_ttl_secs   (a dead node expires)
//! ```
//!
//! Each node keeps the other nodes' filters in a [`Routes`] (node index as the bit), so a
//! publish is matched locally, as against the shard routes. Threads off the shards own the
//! Redis connections (`link`: one Redis or a Redis Cluster): `shardmq-cluster-tx` (commands,
//! forwards, heartbeats, dead-node checks, session moves) and, in `receive`,
//! `shardmq-cluster-rx` (subscribed to `shardmq:routes` and, with one Redis, this node's
//! channel) plus, on a Redis Cluster, `shardmq-cluster-rx-node` (this node's sharded channel);
//! messages for this node go to a shard's inbox and ring its doorbell. Shards only `try_send` to the
//! sender (bounded by `limits.cluster_queue`; full = dropped and counted) and lock their inbox
//! once per pump turn. Redis unreachable: local traffic goes on, forwards are dropped
//! (counted), both threads retry with backoff and resynchronise (filters re-announced, other
//! nodes' filters reloaded) when it returns. Across nodes delivery is at most once (Redis
//! pub/sub); see the README.

mod link;
mod receive;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Commands;

use link::{Backend, Link};

use crate::index::{Routes, SharedRoutes};
use crate::protocol::TopicFilter;
use crate::protocol::session::{AppMessage, Message};

/// Forwards sent to Redis in one pipelined round trip, at most.
const MAX_PIPELINE: u64 = 1024;

/// Most nodes a node forwards to (the route masks are 64 bits).
pub const MAX_NODES: usize = 64;

/// What a shard asks the sender thread to do.
enum Out {
    /// Filter changes are waiting in [`Cluster::filters`].
    Wake,
    /// Forward a framed message (kind byte first) to the nodes in the mask.
    Publish(u64, Vec<u8>),
    /// A client with this id connected here: claim it in Redis, kick it off its old node.
    Claim(Vec<u8>),
    /// A retained message (topic, the message): kept in (or, empty, cleared from) Redis and
    /// broadcast to every node, which delivers and keeps it.
    Retained(Vec<u8>, Vec<u8>, bool),
    /// A client resuming its session connected here: claim it in Redis and, if it was on
    /// another live node, ask that node for the session (see [`Cluster::fetch`]).
    Fetch(Move),
    /// Send a session (its encoded image, or none) to the node that asked for it.
    Ship {
        to: String,
        client_id: Vec<u8>,
        image: Option<Vec<u8>>,
    },
}

/// A connection waiting for its session to come from another node.
#[derive(Debug)]
pub struct Move {
    /// The client identifier.
    pub client_id: crate::protocol::Str,
    /// The directory shard that asked (the answer goes to its inbox).
    pub directory: usize,
    /// The connecting shard and connection.
    pub shard: usize,
    /// The connecting connection's token.
    pub token: u64,
}

/// What another node (or Redis) hands a shard.
#[derive(Debug)]
pub enum Inbound {
    /// A message to deliver to this node's subscribers (not to its shared groups: the
    /// publishing node chose the node of each group).
    Publish(Message),
    /// A message for one member of this node's shared subscription group (the key).
    Shared(TopicFilter, Message),
    /// A retained message to keep, delivering nothing (loaded from Redis).
    Retain(Message),
    /// A client with this id connected to another node: disconnect it here (0x8E) and end
    /// its session.
    Kick(crate::protocol::Str),
    /// A client with this id connected to another node (named) and resumes its session:
    /// disconnect it here (0x8E) and send that node the session.
    Surrender(crate::protocol::Str, String),
    /// To the directory shard: the answer to a [`Cluster::fetch`], with the session's
    /// encoded image if the other node had one.
    Moved(Move, Option<Vec<u8>>),
}

/// The other nodes this node knows, by route index.
#[derive(Debug, Default)]
struct Nodes {
    index: HashMap<String, usize>,
    ids: Vec<Option<String>>,
    filters: Vec<HashSet<Vec<u8>>>,
}

/// Settings of [`Cluster::start`].
#[derive(Clone, Debug)]
pub struct Options {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// This node's id.
    pub node_id: String,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u32,
    /// Seconds after its last heartbeat a node counts as dead.
    pub node_ttl_secs: u32,
    /// Forwards and filter changes waiting for the sender thread.
    pub queue: usize,
    /// How long a fetched session may take to arrive.
    pub move_timeout: Duration,
}

/// This node's view of the cluster, shared by its shards.
pub struct Cluster {
    /// This node's id.
    pub node_id: String,
    /// Other nodes' filters: topic → mask of node indices.
    pub routes: Routes,
    /// Other nodes' shared subscription groups: group key → mask of node indices.
    pub shared: SharedRoutes,
    nodes: Mutex<Nodes>,
    tx: SyncSender<Out>,
    /// Filter changes (first subscriber: true, last one gone: false) for the sender thread,
    /// apart from the bounded queue so that a shard never waits and none is lost; the sender
    /// takes them all every turn.
    filters: Mutex<Vec<(Vec<u8>, bool)>>,
    inbox: Vec<Mutex<Vec<Inbound>>>,
    /// Sessions asked from other nodes, by client id, with their deadlines.
    moves: Mutex<HashMap<Vec<u8>, (Move, Instant)>>,
    wake: Box<dyn Fn(usize) + Send + Sync>,
    /// Messages forwarded to other nodes (one per node).
    pub forwarded: AtomicU64,
    /// Messages received from other nodes.
    pub received: AtomicU64,
    /// Forwards dropped: queue full or Redis unreachable.
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn channel_to(node: &str) -> String {
    format!("shardmq:to:{node}")
}

fn filters_key(node: &str) -> String {
    format!("shardmq:filters:{node}")
}

fn node_key(node: &str) -> String {
    format!("shardmq:node:{node}")
}

const ROUTES: &str = "shardmq:routes";
/// Hash of topic → retained message, cluster-wide.
const RETAINED: &str = "shardmq:retained";
/// How long Redis remembers which node a client id is on (refreshed at each connect).
const CLAIM_TTL_SECS: u64 = 7 * 24 * 3600;
/// First byte of a message on a node's channel: a forwarded message ...
const KIND_MESSAGE: u8 = b'M';
/// ... or a client id to disconnect ...
const KIND_KICK: u8 = b'K';
/// ... or a message for a shared subscription group (u16 key length, key, message) ...
const KIND_SHARED: u8 = b'G';
/// ... or a request for a session ("node\nCLIENT ID": the node that wants it) ...
const KIND_FETCH: u8 = b'F';
/// ... or a session (u16 id length, id, 0 = none / 1 = the encoded image follows).
const KIND_SESSION: u8 = b'S';
/// Every retained publish, for every node ("node\nMESSAGE").
const RETAINED_UPDATES: &str = "shardmq:retained-updates";

/// The shard that takes a topic's messages from other nodes: one per topic keeps a topic's
/// messages in order.
fn topic_shard(topic: &[u8], shards: usize) -> usize {
    let hash = ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(topic);
    hash as usize % shards.max(1)
}

/// A message for a node's channel: the kind byte, for a shared group its key (u16 length
/// first), then the message.
fn framed(kind: u8, group: &[u8], msg: &AppMessage) -> Vec<u8> {
    let bytes = crate::store::codec::encode_message(msg, None);
    let mut out = Vec::with_capacity(bytes.len() + group.len() + 3);
    out.push(kind);
    if kind == KIND_SHARED {
        out.extend_from_slice(&(group.len() as u16).to_be_bytes());
        out.extend_from_slice(group);
    }
    out.extend_from_slice(&bytes);
    out
}

/// The group key and message of a [`KIND_SHARED`] payload (after the kind byte).
fn unframe_shared(b: &[u8]) -> Option<(TopicFilter, AppMessage)> {
    let len = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
    let key = b.get(2..2 + len)?;
    let key = shared_key(key)?;
    let (m, _) = crate::store::codec::decode_message(b.get(2 + len..)?).ok()?;
    Some((key, m))
}

/// `f` as a shared subscription group key, if it is one (`$share/G/F`).
fn shared_key(f: &[u8]) -> Option<TopicFilter> {
    if !f.starts_with(b"$share/") {
        return None;
    }
    TopicFilter::new(bytes::Bytes::copy_from_slice(f))
        .ok()
        .filter(|k| k.shared().is_some())
}

/// Backoff between reconnection attempts.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5_000))
}

impl Cluster {
    /// Starts the two cluster threads. Redis need not be up yet: the node serves local
    /// traffic and joins when it is. `wake(shard)` rings a shard's doorbell.
    pub fn start(
        o: Options,
        shards: usize,
        wake: Box<dyn Fn(usize) + Send + Sync>,
    ) -> Result<Arc<Cluster>, String> {
        let backend = Backend::open(&o.url)?;
        let (tx, rx) = sync_channel(o.queue.max(16));
        let c = Arc::new(Cluster {
            node_id: o.node_id.clone(),
            routes: Routes::new(),
            shared: SharedRoutes::new(),
            nodes: Mutex::new(Nodes::default()),
            tx,
            filters: Mutex::new(Vec::new()),
            inbox: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
            moves: Mutex::new(HashMap::new()),
            wake,
            forwarded: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|e| format!("cannot start the cluster thread: {e}"))
        };
        if backend.sharded() {
            let (me, b) = (c.clone(), backend.clone());
            spawn(
                "shardmq-cluster-rx-node",
                Box::new(move || me.receive_node_loop(&b)),
            )?;
        }
        let (me, b) = (c.clone(), backend.clone());
        spawn("shardmq-cluster-rx", Box::new(move || me.receive_loop(&b)))?;
        let me = c.clone();
        spawn(
            "shardmq-cluster-tx",
            Box::new(move || me.send_loop(&backend, &o, rx)),
        )?;
        Ok(c)
    }

    /// A shard got its first (`add`) or lost its last subscriber to `filter`.
    pub fn filter(&self, filter: &[u8], add: bool) {
        if let Ok(mut f) = self.filters.lock() {
            f.push((filter.to_vec(), add));
        }
        // A full queue means the sender is busy and takes the filters on its next turn.
        let _ = self.tx.try_send(Out::Wake);
    }

    /// Forwards `msg` (published on this node) to every other node with a matching filter.
    pub fn forward(&self, msg: &AppMessage) {
        if msg.retain {
            // Retained messages are cluster-wide state: one broadcast (every node delivers
            // and keeps it), Redis keeps the master copy for nodes that start later.
            let bytes = crate::store::codec::encode_message(msg, None);
            let clear = msg.payload.is_empty();
            if self
                .tx
                .try_send(Out::Retained(msg.topic.as_bytes().to_vec(), bytes, clear))
                .is_err()
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let nodes = self.routes.lookup(msg.topic.as_bytes());
        if nodes == 0 {
            return;
        }
        let bytes = framed(KIND_MESSAGE, &[], msg);
        match self.tx.try_send(Out::Publish(nodes, bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped
                    .fetch_add(u64::from(nodes.count_ones()), Ordering::Relaxed);
            }
        }
    }

    /// Sends `msg` (published on this node) to the node at index `node` for one member of its
    /// shared subscription group `group`.
    pub fn forward_shared(&self, node: usize, group: &TopicFilter, msg: &AppMessage) {
        let Some(bit) = 1u64.checked_shl(node as u32) else {
            return;
        };
        let bytes = framed(KIND_SHARED, group.as_bytes(), msg);
        if self.tx.try_send(Out::Publish(bit, bytes)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands a message from another node (or from Redis) to the shard that routes its topic.
    fn to_shard(&self, msg: AppMessage, deliver: bool) {
        let shard = topic_shard(msg.topic.as_bytes(), self.inbox.len());
        let msg = Arc::new(msg);
        self.push(
            shard,
            if deliver {
                Inbound::Publish(msg)
            } else {
                Inbound::Retain(msg)
            },
        );
    }

    fn push(&self, shard: usize, item: Inbound) {
        if let Some(slot) = self.inbox.get(shard)
            && let Ok(mut v) = slot.lock()
        {
            v.push(item);
        }
        (self.wake)(shard);
    }

    /// A client connected to this node with `client_id`: the cluster-wide registry records
    /// it, and the node it was on before (if another) disconnects it.
    pub fn claim(&self, client_id: &[u8]) {
        if self.tx.try_send(Out::Claim(client_id.to_vec())).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client resuming its session (Clean Start 0) connected here and this node has no
    /// session for it: the sender thread claims the client id in Redis (`SET … GET`); if it
    /// was on another live node, that node is asked for the session, which arrives as
    /// [`Inbound::Moved`] in `m.directory`'s inbox (within `move_timeout`, else without a
    /// session). Never waits: with Redis away or the queue full, the answer (no session)
    /// comes at once.
    pub fn fetch(&self, m: Move) {
        if let Err(e) = self.tx.try_send(Out::Fetch(m)) {
            let m = match e {
                TrySendError::Full(Out::Fetch(m)) | TrySendError::Disconnected(Out::Fetch(m)) => m,
                _ => return,
            };
            self.moved(m, None);
        }
    }

    fn moved(&self, m: Move, image: Option<Vec<u8>>) {
        let d = m.directory;
        self.push(d, Inbound::Moved(m, image));
    }

    /// Sends node `to` the session it asked for (its encoded image), or tells it there is
    /// none.
    pub fn ship(&self, to: String, client_id: &[u8], image: Option<Vec<u8>>) {
        let out = Out::Ship {
            to,
            client_id: client_id.to_vec(),
            image,
        };
        if self.tx.try_send(out).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters, for the metrics.
    pub fn read(&self) -> crate::metrics::prometheus::ClusterRead {
        let nodes = self.nodes.lock().map_or(0, |n| n.index.len() as u64);
        crate::metrics::prometheus::ClusterRead {
            nodes,
            forwarded: self.forwarded.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Messages from other nodes waiting for shard `shard`.
    pub fn take_inbox(&self, shard: usize) -> Vec<Inbound> {
        self.inbox
            .get(shard)
            .and_then(|m| m.lock().ok().map(|mut v| std::mem::take(&mut *v)))
            .unwrap_or_default()
    }

    /// Whether shard `shard` has messages from other nodes waiting.
    pub fn has_inbox(&self, shard: usize) -> bool {
        self.inbox
            .get(shard)
            .and_then(|m| m.lock().ok().map(|v| !v.is_empty()))
            .unwrap_or(false)
    }

    fn send_loop(&self, backend: &Backend, o: &Options, rx: Receiver<Out>) {
        let heartbeat = Duration::from_secs(u64::from(o.heartbeat_secs.max(1)));
        let mut local: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut carry: Option<Out> = None;
        let mut con: Option<Link> = None;
        let mut attempt = 0u32;
        let mut next_try = Instant::now();
        let mut next_beat = Instant::now();
        loop {
            if con.is_none() && Instant::now() >= next_try {
                match backend.connect() {
                    Ok(mut c) => {
                        if attempt > 0 {
                            tracing::info!("cluster: Redis reachable again");
                        }
                        attempt = 0;
                        // Announce this node and every filter it has (again).
                        let ok = self.beat(&mut c, o).is_ok()
                            && local.keys().all(|f| self.announce(&mut c, f, true).is_ok());
                        if ok {
                            con = Some(c);
                        }
                        next_beat = Instant::now() + heartbeat;
                    }
                    Err(e) => {
                        if attempt == 0 {
                            tracing::warn!(
                                "cluster: Redis unreachable ({e}); serving local traffic, retrying"
                            );
                        }
                        attempt += 1;
                        next_try = Instant::now() + backoff(attempt);
                    }
                }
            }
            let until = if con.is_some() {
                next_beat
            } else {
                next_try.min(next_beat)
            };
            let until = self.expire_moves().map_or(until, |d| d.min(until));
            let wait = until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let out = match carry
                .take()
                .map(Ok)
                .unwrap_or_else(|| rx.recv_timeout(wait))
            {
                Ok(out) => Some(out),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut failed = false;
            let changes =
                std::mem::take(&mut *self.filters.lock().unwrap_or_else(|e| e.into_inner()));
            for (f, add) in changes {
                let count = local.entry(f.clone()).or_insert(0);
                let announce = if add {
                    *count += 1;
                    *count == 1
                } else {
                    *count = count.saturating_sub(1);
                    *count == 0
                };
                if !add && *count == 0 {
                    local.remove(&f);
                }
                if announce
                    && !failed
                    && let Some(c) = con.as_mut()
                {
                    failed = self.announce(c, &f, add).is_err();
                }
            }
            match out {
                Some(Out::Wake) | None => {}
                Some(Out::Retained(topic, bytes, clear)) => {
                    if let Some(c) = con.as_mut() {
                        failed = self.retained(c, &topic, &bytes, clear).is_err();
                    } else {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Out::Claim(id)) => {
                    if let Some(c) = con.as_mut() {
                        failed = self.claim_in_redis(c, &id).is_err();
                    }
                }
                Some(Out::Fetch(m)) => match con.as_mut() {
                    Some(c) => {
                        if let Err((m, e)) = self.fetch_in_redis(c, m, o.move_timeout) {
                            failed = e.is_some();
                            self.moved(m, None);
                        }
                    }
                    None => self.moved(m, None),
                },
                Some(Out::Ship {
                    to,
                    client_id,
                    image,
                }) => match con.as_mut() {
                    Some(c) => {
                        let mut note = vec![KIND_SESSION];
                        note.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
                        note.extend_from_slice(&client_id);
                        match image {
                            Some(i) => {
                                note.push(1);
                                note.extend_from_slice(&i);
                            }
                            None => note.push(0),
                        }
                        failed = c.publish_to_node(&channel_to(&to), &note).is_err();
                    }
                    None => {
                        tracing::warn!(node = %to, "cluster: Redis unreachable; a session asked for by another node is not sent (it gets a new one)");
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Some(Out::Publish(mask, bytes)) => match con.as_mut() {
                    Some(c) => {
                        // One round trip for every forward queued meanwhile (pipelined).
                        let mut batch = Vec::new();
                        let mut sent = self.add_publish(&mut batch, mask, bytes);
                        while sent < MAX_PIPELINE {
                            match rx.try_recv() {
                                Ok(Out::Publish(m, b)) => {
                                    sent += self.add_publish(&mut batch, m, b)
                                }
                                Ok(other) => {
                                    carry = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        failed = c
                            .publish_many(batch.iter().map(|(ch, b)| (ch.as_str(), &b[..])))
                            .is_err();
                        if !failed {
                            self.forwarded.fetch_add(sent, Ordering::Relaxed);
                        }
                    }
                    None => {
                        self.dropped
                            .fetch_add(u64::from(mask.count_ones()), Ordering::Relaxed);
                    }
                },
            }
            if let Some(c) = con.as_mut()
                && !failed
                && Instant::now() >= next_beat
            {
                failed = self.beat(c, o).is_err() || self.expire_dead(c).is_err();
                next_beat = Instant::now() + heartbeat;
            }
            if failed {
                tracing::warn!(
                    "cluster: lost the Redis connection; serving local traffic, retrying"
                );
                con = None;
                attempt = 1;
                next_try = Instant::now() + backoff(attempt);
            }
        }
    }

    fn retained(
        &self,
        c: &mut Link,
        topic: &[u8],
        bytes: &[u8],
        clear: bool,
    ) -> redis::RedisResult<()> {
        if clear {
            c.hdel::<_, _, ()>(RETAINED, topic)?;
        } else {
            c.hset::<_, _, _, ()>(RETAINED, topic, bytes)?;
        }
        let mut note = Vec::with_capacity(self.node_id.len() + bytes.len() + 1);
        note.extend_from_slice(self.node_id.as_bytes());
        note.push(b'\n');
        note.extend_from_slice(bytes);
        c.publish::<_, _, ()>(RETAINED_UPDATES, note)?;
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `SET shardmq:client:{id} NODE GET`: the previous owner, if another node, is told to
    /// let the client go.
    fn claim_in_redis(&self, c: &mut Link, id: &[u8]) -> redis::RedisResult<()> {
        let mut key = b"shardmq:client:".to_vec();
        key.extend_from_slice(id);
        let before: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&self.node_id)
            .arg("EX")
            .arg(CLAIM_TTL_SECS)
            .arg("GET")
            .query(c)?;
        if let Some(old) = before.filter(|o| *o != self.node_id) {
            let mut note = vec![KIND_KICK];
            note.extend_from_slice(id);
            c.publish_to_node(&channel_to(&old), &note)?;
        }
        Ok(())
    }

    /// Claims `m.client_id` and, if another live node had it, asks that node for the
    /// session and files `m` to wait for it. `Err` hands `m` back to be answered at once
    /// (with the Redis error, if one happened).
    fn fetch_in_redis(
        &self,
        c: &mut Link,
        m: Move,
        timeout: Duration,
    ) -> Result<(), (Move, Option<redis::RedisError>)> {
        let id = m.client_id.as_bytes().to_vec();
        let mut key = b"shardmq:client:".to_vec();
        key.extend_from_slice(&id);
        let before: Option<String> = match redis::cmd("SET")
            .arg(&key)
            .arg(&self.node_id)
            .arg("EX")
            .arg(CLAIM_TTL_SECS)
            .arg("GET")
            .query(c)
        {
            Ok(b) => b,
            Err(e) => return Err((m, Some(e))),
        };
        let Some(old) = before.filter(|o| *o != self.node_id) else {
            return Err((m, None));
        };
        match c.exists::<_, bool>(node_key(&old)) {
            Ok(true) => {}
            Ok(false) => return Err((m, None)),
            Err(e) => return Err((m, Some(e))),
        }
        // Filed before asking, so that the answer never arrives first.
        self.moves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (m, Instant::now() + timeout));
        let mut note = vec![KIND_FETCH];
        note.extend_from_slice(self.node_id.as_bytes());
        note.push(b'\n');
        note.extend_from_slice(&id);
        if let Err(e) = c.publish_to_node(&channel_to(&old), &note) {
            let m = self
                .moves
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return match m {
                Some((m, _)) => Err((m, Some(e))),
                None => Ok(()),
            };
        }
        Ok(())
    }

    /// Answers (without a session) the fetches past their deadline; returns the next
    /// deadline.
    fn expire_moves(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut moves = self.moves.lock().unwrap_or_else(|e| e.into_inner());
        let late: Vec<Vec<u8>> = moves
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let next = moves.values().map(|(_, d)| *d).filter(|d| *d > now).min();
        let late: Vec<Move> = late
            .iter()
            .filter_map(|k| moves.remove(k).map(|(m, _)| m))
            .collect();
        drop(moves);
        for m in late {
            tracing::warn!(
                client_id = %m.client_id.as_str(),
                "cluster: the session did not come from the client's previous node in time; it starts a new one"
            );
            self.moved(m, None);
        }
        next
    }

    fn beat(&self, c: &mut Link, o: &Options) -> redis::RedisResult<()> {
        c.set_ex::<_, _, ()>(
            node_key(&self.node_id),
            "up",
            u64::from(o.node_ttl_secs.max(2)),
        )
    }

    fn announce(&self, c: &mut Link, f: &[u8], add: bool) -> redis::RedisResult<()> {
        if add {
            c.sadd::<_, _, ()>(filters_key(&self.node_id), f)?;
        } else {
            c.srem::<_, _, ()>(filters_key(&self.node_id), f)?;
        }
        let mut note = Vec::with_capacity(self.node_id.len() + f.len() + 2);
        note.push(if add { b'+' } else { b'-' });
        note.extend_from_slice(self.node_id.as_bytes());
        note.push(b'\n');
        note.extend_from_slice(f);
        c.publish::<_, _, ()>(ROUTES, note)
    }

    /// Adds the forwards of one framed message to `batch`; returns how many.
    fn add_publish(&self, batch: &mut Vec<(String, Arc<[u8]>)>, mask: u64, bytes: Vec<u8>) -> u64 {
        let targets: Vec<String> = {
            let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            (0..MAX_NODES)
                .filter(|i| mask & (1u64 << i) != 0)
                .filter_map(|i| nodes.ids.get(i).cloned().flatten())
                .collect()
        };
        let bytes: Arc<[u8]> = bytes.into();
        for t in &targets {
            batch.push((channel_to(t), bytes.clone()));
        }
        targets.len() as u64
    }

    /// Drops the routes of nodes whose heartbeat key expired.
    fn expire_dead(&self, c: &mut Link) -> redis::RedisResult<()> {
        let known: Vec<String> = {
            let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes.index.keys().cloned().collect()
        };
        for id in known {
            let alive: bool = c.exists(node_key(&id))?;
            if !alive {
                tracing::warn!(node = %id, "cluster: node stopped sending heartbeats; its routes are dropped");
                self.drop_node(&id);
            }
        }
        Ok(())
    }

    fn drop_node(&self, id: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = nodes.index.remove(id) {
            for f in std::mem::take(&mut nodes.filters[i]) {
                self.unroute(&f, i);
            }
            nodes.ids[i] = None;
        }
    }

    fn set_route(&self, node: &str, f: &[u8], add: bool) {
        if node == self.node_id {
            return;
        }
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let i = match nodes.index.get(node) {
            Some(&i) => i,
            None if !add => return,
            None => {
                let Some(i) =
                    (0..MAX_NODES).find(|&i| nodes.ids.get(i).is_none_or(|s| s.is_none()))
                else {
                    tracing::error!(
                        node,
                        "cluster: more than {MAX_NODES} nodes; this one is not routed to"
                    );
                    return;
                };
                if nodes.ids.len() <= i {
                    nodes.ids.resize(i + 1, None);
                    nodes.filters.resize_with(i + 1, HashSet::new);
                }
                nodes.ids[i] = Some(node.to_string());
                nodes.index.insert(node.to_string(), i);
                i
            }
        };
        if add {
            if nodes.filters[i].insert(f.to_vec()) {
                match shared_key(f) {
                    Some(key) => {
                        self.shared.add(&key, i);
                    }
                    None => {
                        self.routes.add(f, i);
                    }
                }
            }
        } else if nodes.filters[i].remove(f) {
            self.unroute(f, i);
        }
    }

    fn unroute(&self, f: &[u8], node: usize) {
        match shared_key(f) {
            Some(key) => {
                self.shared.remove(&key, node);
            }
            None => {
                self.routes.remove(f, node);
            }
        }
    }
}
