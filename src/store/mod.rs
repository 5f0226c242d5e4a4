//! Persistence: an embedded LSM store (fjall) on its own thread, so no shard ever waits for
//! the disk (DESIGN.md invariant 1).
//!
//! What it keeps: the retained messages; every persistent session's image (subscriptions,
//! expiry, unreleased incoming QoS 2 ids, delayed will), written when it parks; and each
//! QoS ≥ 1 delivery to a persistent session, appended when it is queued or sent and removed
//! when it completes (PUBACK, PUBREC, or dropped), connected or not; for QoS 2 also the
//! packet identifier each delivery went out under and whether its PUBREC came (`inflight`),
//! and the identifiers of incoming messages awaiting PUBREL (`inbound`). After a crash a
//! session comes back with every delivery not yet complete: QoS 2 ones in flight back in the
//! window under their identifiers (PUBLISH again with DUP, or PUBREL), everything else
//! queued (a QoS 1 message that was in flight goes out again under a new identifier, which
//! QoS 1 allows: at least once).
//!
//! Each shard numbers its writes. With `durability = "sync"` the store thread fsyncs every
//! batch (group commit: one fsync for whatever all the shards sent meanwhile) and then
//! publishes, per shard, the number of its last durable write ([`Store::durable`]) and wakes
//! that shard, which releases the acknowledgements waiting for it (`shard::durability`).
//!
//! ```text
//!  shard 0 ─┐  try_send (bounded channel; a full one is retried from the shard's backlog)
//!  shard 1 ─┼──────────────► store thread: drain everything pending into one batch,
//!  shard N ─┘                commit (to the OS: survives kill -9), then
//!                            relaxed: fsync every `commit_interval_ms` (fjall's timer)
//!                            sync:    fsync now, durable[shard] = its last write, wake it
//!  start-up: open (fjall replays its journal; a torn tail is cut off), check the format,
//!            read every retained message, hand them to the shards before accepting clients
//! ```
//!
//! A data directory whose store cannot be opened at all is moved aside (`<dir>.corrupt-<unix
//! seconds>`) with an error line, and the broker starts with an empty store: it never refuses
//! to start over a damaged store. One written by a newer format is refused with a line naming
//! both formats, so no data is lost by a downgrade.

pub mod codec;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use crate::protocol::inflight::OutState;
use crate::protocol::session::{AppMessage, Qos2Event, SessionImage};

/// The store format this version writes, recorded in the `meta` partition.
pub const STORE_FORMAT: u32 = 1;
/// Commands a batch takes at most before it is committed.
const MAX_BATCH: usize = 4096;

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The data directory.
    pub dir: PathBuf,
    /// Milliseconds between fsyncs of committed batches.
    pub commit_interval_ms: u16,
    /// Commands waiting for the store thread at most (the channel's bound).
    pub queue: usize,
    /// `durability = "sync"`: fsync every batch and publish each shard's durable write.
    pub sync: bool,
    /// MiB the memtables may hold in all (`persistence.write_buffer_mib`).
    pub write_buffer_mib: u32,
    /// MiB of block cache (`persistence.cache_mib`).
    pub cache_mib: u32,
    /// Shards that tag their writes (the size of [`Store::durable`]'s table).
    pub shards: usize,
}

/// Who sent a write and its number among that shard's writes (numbers start at 1).
#[derive(Clone, Copy, Debug)]
struct Tag {
    shard: u32,
    no: u64,
}

impl Tag {
    /// A write no shard waits for (tests, the main thread).
    const NONE: Tag = Tag {
        shard: u32::MAX,
        no: 0,
    };
}

/// Wakes shard `i` once writes it numbered became durable (its doorbell).
pub type WakeShard = Box<dyn Fn(usize) + Send>;

/// One write for the store thread.
#[derive(Debug)]
enum Cmd {
    /// Set (`Some`, an encoded record) or delete (`None`) the retained message of a topic.
    Retain {
        topic: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// Write a session's image (subscriptions, expiry, will: not its messages).
    Session { client_id: Vec<u8>, value: Vec<u8> },
    /// Deliveries to the session that are complete: forget them.
    Done { client_id: Vec<u8>, seqs: Vec<u64> },
    /// Append a delivery to a persistent session.
    Queue {
        client_id: Vec<u8>,
        seq: u64,
        value: Vec<u8>,
    },
    /// A persistent session's QoS 2 state changed (`inflight` / `inbound` partitions).
    Qos2 {
        client_id: Vec<u8>,
        event: Qos2Event,
    },
    /// The session ended: forget it and its queue.
    EndSession { client_id: Vec<u8> },
    /// Commit and fsync everything before, then answer.
    Sync(std::sync::mpsc::Sender<()>),
    /// An append whose completion came in the same batch: nothing to write.
    Cancelled,
}

/// What start-up found in the store.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Retained messages still alive, with the Unix second they expire at.
    pub retained: Vec<(AppMessage, Option<u64>)>,
    /// Persistent sessions still alive, with their deadlines.
    pub sessions: Vec<(SessionImage, codec::Deadlines)>,
    /// Sessions that had expired while the broker was down (deleted; their delayed wills
    /// are published at start-up).
    pub expired_sessions: Vec<SessionImage>,
    /// Records that could not be read (logged and deleted).
    pub unreadable: usize,
    /// Retained messages that had expired while the broker was down (deleted).
    pub expired: usize,
    /// How long recovery took.
    pub took: Duration,
}

/// A handle to the store thread, one clone per shard. Sending never blocks.
#[derive(Clone, Debug)]
pub struct Store {
    tx: SyncSender<(Cmd, Tag)>,
    /// Writes that failed or were dropped because the store was unusable (see `Disk`).
    pub failed: Arc<AtomicU64>,
    /// Per shard: the number of its last write known durable (`sync` only).
    durable: Arc<[AtomicU64]>,
    /// How long each batch took to commit (and fsync), for the metrics.
    pub commits: Arc<crate::metrics::Latency>,
}

/// The current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How the keyspace is opened (again, after a failure).
#[derive(Clone, Copy, Debug)]
struct Tuning {
    /// fjall's fsync timer (`None` with `sync`, which fsyncs every batch itself).
    fsync_ms: Option<u16>,
    write_buffer_mib: u32,
    cache_mib: u32,
}

/// Opens the keyspace.
fn open_keyspace(dir: &Path, t: Tuning) -> fjall::Result<Keyspace> {
    const MIB: u64 = 1 << 20;
    fjall::Config::new(dir)
        .fsync_ms(t.fsync_ms.map(|ms| ms.max(1)))
        .max_write_buffer_size(u64::from(t.write_buffer_mib.max(1)) * MIB)
        .cache_size(u64::from(t.cache_mib) * MIB)
        // Background flush and compaction: the machine's shards need the cores.
        .flush_workers(1)
        .compaction_workers(1)
        .open()
}

impl Store {
    /// Opens (or creates) the store, recovers what it holds and starts the store thread.
    /// `start_unix` is the Unix time at which the broker's clock reads 0 (recovered deadlines
    /// are turned into it). Errors are one line.
    /// With `sync`, `wake` is called with a shard's index after its writes became durable.
    pub fn open(
        o: &StoreOptions,
        start_unix: u64,
        wake: WakeShard,
    ) -> Result<(Store, Recovered, JoinHandle<()>), String> {
        let started = Instant::now();
        std::fs::create_dir_all(&o.dir).map_err(|e| {
            format!(
                "persistence.data_dir {}: cannot create it: {e} (choose another with --data-dir, or --no-persistence)",
                o.dir.display()
            )
        })?;
        let tuning = Tuning {
            fsync_ms: (!o.sync).then_some(o.commit_interval_ms),
            write_buffer_mib: o.write_buffer_mib,
            cache_mib: o.cache_mib,
        };
        let ks = match open_keyspace(&o.dir, tuning) {
            Ok(ks) => ks,
            Err(e) => {
                let aside = PathBuf::from(format!("{}.corrupt-{}", o.dir.display(), unix_now()));
                tracing::error!(
                    "store in {} cannot be opened ({e}); moved it to {} and starting with an empty store",
                    o.dir.display(),
                    aside.display()
                );
                std::fs::rename(&o.dir, &aside).map_err(|e| {
                    format!(
                        "persistence.data_dir {}: cannot move the damaged store aside: {e}",
                        o.dir.display()
                    )
                })?;
                std::fs::create_dir_all(&o.dir).map_err(|e| e.to_string())?;
                open_keyspace(&o.dir, tuning)
                    .map_err(|e| format!("persistence.data_dir {}: {e}", o.dir.display()))?
            }
        };
        let fail = |e: fjall::Error| format!("persistence.data_dir {}: {e}", o.dir.display());
        let open = |name: &str| {
            ks.open_partition(name, PartitionCreateOptions::default())
                .map_err(fail)
        };
        let meta = open("meta")?;
        match meta.get("format").map_err(fail)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(&v[..])
                    .map(u32::from_be_bytes)
                    .unwrap_or(0);
                if found != STORE_FORMAT {
                    return Err(format!(
                        "persistence.data_dir {}: written in store format {found}; this shardmq {} reads format {STORE_FORMAT} (use the version that wrote it, or another --data-dir)",
                        o.dir.display(),
                        env!("CARGO_PKG_VERSION")
                    ));
                }
            }
            None => {
                meta.insert("format", STORE_FORMAT.to_be_bytes())
                    .map_err(fail)?;
            }
        }
        let parts = Parts::open(&ks).map_err(fail)?;
        let Parts {
            retained,
            sessions,
            queued,
            inflight,
            inbound,
        } = &parts;
        let mut rec = Recovered::default();
        let now = unix_now();
        let mut gone: Vec<Vec<u8>> = Vec::new();
        for kv in retained.iter() {
            let (k, v) = kv.map_err(fail)?;
            match codec::decode_message(&v) {
                Ok((_, Some(at))) if at <= now => {
                    rec.expired += 1;
                    gone.push(k.to_vec());
                }
                Ok((m, at)) if m.topic.as_bytes() == &k[..] => rec.retained.push((m, at)),
                Ok(_) => {
                    rec.unreadable += 1;
                    gone.push(k.to_vec());
                }
                Err(e) => {
                    tracing::warn!("store: skipping an unreadable retained record ({e})");
                    rec.unreadable += 1;
                    gone.push(k.to_vec());
                }
            }
        }
        for k in gone {
            retained.remove(k).map_err(fail)?;
        }
        let mut gone: Vec<Vec<u8>> = Vec::new();
        for kv in sessions.iter() {
            let (k, v) = kv.map_err(fail)?;
            let (mut image, d) = match codec::decode_session(&k, &v, start_unix) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("store: skipping an unreadable session record ({e})");
                    rec.unreadable += 1;
                    gone.push(k.to_vec());
                    continue;
                }
            };
            for kv in queued.prefix(queue_prefix(&k)) {
                let (qk, v) = kv.map_err(fail)?;
                let seq = qk
                    .len()
                    .checked_sub(8)
                    .and_then(|i| <[u8; 8]>::try_from(&qk[i..]).ok())
                    .map_or(0, u64::from_be_bytes);
                match codec::decode_outgoing(&v, start_unix, seq) {
                    Ok(o) => image.queue.push(o),
                    Err(e) => {
                        tracing::warn!("store: skipping an unreadable queued message ({e})");
                        rec.unreadable += 1;
                    }
                }
            }
            // QoS 2 deliveries that were in flight go back into the window under their packet
            // identifiers (PUBLISH again, or PUBREL where PUBREC had come).
            for kv in inflight.prefix(queue_prefix(&k)) {
                let (ik, v) = kv.map_err(fail)?;
                let Some((id, seq, released)) = codec::decode_inflight(&ik, &v) else {
                    rec.unreadable += 1;
                    continue;
                };
                if released {
                    image.inflight.push((id, OutState::AwaitPubComp, None));
                } else if let Some(i) = image.queue.iter().position(|o| o.seq == seq) {
                    let o = image.queue.remove(i);
                    image.inflight.push((id, OutState::AwaitPubRec, Some(o)));
                }
            }
            for kv in inbound.prefix(queue_prefix(&k)) {
                let (ik, _) = kv.map_err(fail)?;
                if let Some(id) = codec::decode_packet_id(&ik) {
                    if !image.inbound.contains(&id) {
                        image.inbound.push(id);
                    }
                }
            }
            // Written while connected: the session is parked from now on.
            let mut d = d;
            if d.session_end.is_none() && image.expiry != u32::MAX {
                d.session_end = Some(now + u64::from(image.expiry));
            }
            if d.session_end.is_some_and(|at| at <= now) {
                gone.push(k.to_vec());
                rec.expired_sessions.push(image);
            } else {
                rec.sessions.push((image, d));
            }
        }
        for k in gone {
            end_session(&ks, &parts, &k).map_err(fail)?;
        }
        rec.took = started.elapsed();
        let (tx, rx) = sync_channel(o.queue.max(1));
        let failed = Arc::new(AtomicU64::new(0));
        let durable: Arc<[AtomicU64]> = (0..o.shards).map(|_| AtomicU64::new(0)).collect();
        let commits = Arc::new(crate::metrics::Latency::default());
        let marks = Marks {
            sync: o.sync,
            durable: durable.clone(),
            wake,
            failed: failed.clone(),
            commits: commits.clone(),
        };
        let disk = Disk {
            dir: o.dir.clone(),
            tuning,
            open: Some((ks, parts)),
            failing: None,
        };
        let handle = std::thread::Builder::new()
            .name("shardmq-store".into())
            .spawn(move || run(disk, rx, &marks))
            .map_err(|e| format!("cannot start the store thread: {e}"))?;
        Ok((
            Store {
                tx,
                failed,
                durable,
                commits,
            },
            rec,
            handle,
        ))
    }

    /// Queues setting (or, with `None`, deleting) the retained message of `topic`. Returns
    /// the command back when the channel is full (the caller keeps it and retries).
    pub fn set_retained(&self, topic: &[u8], value: Option<Vec<u8>>) -> Result<(), PendingWrite> {
        self.retry(PendingWrite::retained(topic, value))
    }

    /// Hands a write to the store thread; gives it back when the channel has no room (the
    /// caller keeps it and retries).
    pub fn retry(&self, w: PendingWrite) -> Result<(), PendingWrite> {
        match self.tx.try_send((w.cmd, w.tag)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((cmd, tag))) => Err(PendingWrite { cmd, tag }),
            Err(TrySendError::Disconnected(_)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Commits and fsyncs everything queued so far, waiting at most `limit` (shutdown; called
    /// on the main thread, never on a shard). Returns whether it finished in time.
    pub fn sync(&self, limit: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + limit;
        let mut cmd = (Cmd::Sync(tx), Tag::NONE);
        loop {
            match self.tx.try_send(cmd) {
                Ok(()) => break,
                Err(TrySendError::Full(c)) if Instant::now() < deadline => {
                    cmd = c;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// The number of shard `shard`'s last write known durable (`sync`; 0 otherwise).
    pub fn durable(&self, shard: usize) -> u64 {
        self.durable
            .get(shard)
            .map_or(0, |d| d.load(Ordering::Acquire))
    }
}

/// A write for the store, built by a shard and handed over with [`Store::retry`] (or kept
/// in the shard's backlog while the channel is full).
#[derive(Debug)]
pub struct PendingWrite {
    cmd: Cmd,
    tag: Tag,
}

impl PendingWrite {
    fn new(cmd: Cmd) -> Self {
        Self {
            cmd,
            tag: Tag::NONE,
        }
    }

    /// Numbers the write as shard `shard`'s `no`th: [`Store::durable`] reports it once it
    /// is durable.
    pub fn numbered(mut self, shard: usize, no: u64) -> Self {
        self.tag = Tag {
            shard: shard as u32,
            no,
        };
        self
    }

    /// A retained-message write to keep in a backlog, unsent.
    pub fn retained(topic: &[u8], value: Option<Vec<u8>>) -> PendingWrite {
        PendingWrite::new(Cmd::Retain {
            topic: topic.to_vec(),
            value,
        })
    }

    /// Deliveries to a persistent session that are complete.
    pub fn done(client_id: &[u8], seqs: Vec<u64>) -> PendingWrite {
        PendingWrite::new(Cmd::Done {
            client_id: client_id.to_vec(),
            seqs,
        })
    }

    /// A persistent session's image (replacing what was stored for it).
    pub fn session(client_id: &[u8], value: Vec<u8>) -> PendingWrite {
        PendingWrite::new(Cmd::Session {
            client_id: client_id.to_vec(),
            value,
        })
    }

    /// A delivery to a persistent session, under its store sequence number.
    pub fn queued(client_id: &[u8], seq: u64, value: Vec<u8>) -> PendingWrite {
        PendingWrite::new(Cmd::Queue {
            client_id: client_id.to_vec(),
            seq,
            value,
        })
    }

    /// A QoS 2 state change of a persistent session.
    pub fn qos2(client_id: &[u8], event: Qos2Event) -> PendingWrite {
        PendingWrite::new(Cmd::Qos2 {
            client_id: client_id.to_vec(),
            event,
        })
    }

    /// The end of a session.
    pub fn end(client_id: &[u8]) -> PendingWrite {
        PendingWrite::new(Cmd::EndSession {
            client_id: client_id.to_vec(),
        })
    }
}

/// The store's partitions, owned by its thread.
struct Parts {
    retained: PartitionHandle,
    sessions: PartitionHandle,
    /// `client_id\0seq`: deliveries not yet complete.
    queued: PartitionHandle,
    /// `client_id\0packet_id`: outgoing QoS 2 in flight (store seq, PUBREC received).
    inflight: PartitionHandle,
    /// `client_id\0packet_id`: incoming QoS 2 awaiting PUBREL.
    inbound: PartitionHandle,
}

impl Parts {
    /// Opens (or creates) every partition but `meta`.
    fn open(ks: &Keyspace) -> fjall::Result<Parts> {
        let open = |name| ks.open_partition(name, PartitionCreateOptions::default());
        Ok(Parts {
            retained: open("retained")?,
            sessions: open("sessions")?,
            queued: open("queued")?,
            inflight: open("inflight")?,
            inbound: open("inbound")?,
        })
    }
}

/// How often a store whose writes fail is closed and opened again.
const REOPEN_EVERY: Duration = Duration::from_secs(5);

/// The store thread's keyspace, and what it does when writes start failing.
///
/// A failed write (the disk full, an I/O error) poisons fjall's keyspace: every later write
/// fails too. So the thread counts the failure (`store_failed_writes_total`), logs it at the
/// 1st, 2nd, 4th … failed batch, and every [`REOPEN_EVERY`] closes the keyspace and opens it
/// again (fjall replays its journal and cuts a torn tail). Writes in batches that come while
/// it is closed or still failing are dropped and counted; the broker goes on serving from
/// memory. Once a batch commits again the thread logs that it recovered. The writes dropped
/// meanwhile are not replayed: a session's messages acknowledged in that window live only in
/// memory until they are delivered.
struct Disk {
    dir: PathBuf,
    tuning: Tuning,
    open: Option<(Keyspace, Parts)>,
    failing: Option<Failing>,
}

/// Since when writes fail, how many batches failed, and when the keyspace was last reopened.
struct Failing {
    since: Instant,
    batches: u64,
    reopened: Instant,
}

impl Disk {
    /// The keyspace to write this batch to: `None` while failing and not yet reopened.
    fn ready(&mut self) -> Option<&(Keyspace, Parts)> {
        if let Some(f) = self.failing.as_mut() {
            if f.reopened.elapsed() >= REOPEN_EVERY {
                f.reopened = Instant::now();
                // The old handles go first: fjall holds the directory while they live.
                self.open = None;
                self.open = open_keyspace(&self.dir, self.tuning)
                    .and_then(|ks| Parts::open(&ks).map(|p| (ks, p)))
                    .map_err(|e| {
                        tracing::debug!("store: reopening {} failed: {e}", self.dir.display())
                    })
                    .ok();
            }
        }
        self.open.as_ref()
    }

    /// Notes how the last batch went: `failed` writes of `writes` failed, the last with
    /// `error` (`None`: dropped while the store was closed).
    fn batch_done(&mut self, writes: u64, failed: u64, error: Option<String>) {
        if failed > 0 {
            let f = self.failing.get_or_insert_with(|| Failing {
                since: Instant::now(),
                batches: 0,
                reopened: Instant::now(),
            });
            f.batches += 1;
            if f.batches.is_power_of_two() {
                tracing::error!(
                    "store {}: writes are failing ({} batches so far; {}): serving from memory, messages acknowledged now are not persisted; free space, the store is reopened every {} s",
                    self.dir.display(),
                    f.batches,
                    error
                        .as_deref()
                        .unwrap_or("the store is closed until it reopens"),
                    REOPEN_EVERY.as_secs()
                );
            }
        } else if writes > 0 {
            if let Some(f) = self.failing.take() {
                tracing::warn!(
                    "store {}: writes succeed again after {} s ({} batches failed; their writes are not replayed)",
                    self.dir.display(),
                    f.since.elapsed().as_secs(),
                    f.batches
                );
            }
        }
    }
}

/// The `queued` keys of a client: its id, a NUL (which no MQTT string holds), a sequence.
fn queue_prefix(client_id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 9);
    k.extend_from_slice(client_id);
    k.push(0);
    k
}

fn queue_key(client_id: &[u8], seq: u64) -> Vec<u8> {
    let mut k = queue_prefix(client_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn packet_key(client_id: &[u8], id: u16) -> Vec<u8> {
    let mut k = queue_prefix(client_id);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Forgets a session, its queue and its QoS 2 state, in one batch of its own.
fn end_session(ks: &Keyspace, p: &Parts, client_id: &[u8]) -> fjall::Result<()> {
    let mut batch = ks.batch();
    batch.remove(&p.sessions, client_id.to_vec());
    let prefix = queue_prefix(client_id);
    for part in [&p.queued, &p.inflight, &p.inbound] {
        for kv in part.prefix(&prefix) {
            let (k, _) = kv?;
            batch.remove(part, k);
        }
    }
    batch.commit()
}

/// One store batch being filled. A key may be written once per batch: fjall gives every
/// write of a batch the same sequence number, so an insert and a remove of one key in one
/// batch would leave either standing. A second write to a key commits what came before and
/// starts a new batch.
struct Batcher<'a> {
    ks: &'a Keyspace,
    batch: fjall::Batch,
    touched: ahash::AHashSet<(u8, Vec<u8>)>,
    /// Writes committed so far this round.
    writes: u64,
    failed: &'a AtomicU64,
    /// The last error this round, for the log.
    error: Option<String>,
}

impl<'a> Batcher<'a> {
    fn new(ks: &'a Keyspace, failed: &'a AtomicU64) -> Self {
        Self {
            ks,
            batch: ks.batch(),
            touched: ahash::AHashSet::new(),
            writes: 0,
            failed,
            error: None,
        }
    }

    /// Notes that partition `part` (an index) key `key` is written, committing first if
    /// the batch wrote it already.
    fn touch(&mut self, part: u8, key: &[u8]) {
        if self.touched.contains(&(part, key.to_vec())) {
            self.commit();
        }
        self.touched.insert((part, key.to_vec()));
    }

    fn insert(&mut self, part: u8, handle: &PartitionHandle, key: Vec<u8>, value: Vec<u8>) {
        self.touch(part, &key);
        self.batch.insert(handle, key, value);
    }

    fn remove(&mut self, part: u8, handle: &PartitionHandle, key: Vec<u8>) {
        self.touch(part, &key);
        self.batch.remove(handle, key);
    }

    /// Commits what the batch holds (a failure is counted and logged).
    fn commit(&mut self) {
        let batch = std::mem::replace(&mut self.batch, self.ks.batch());
        self.touched.clear();
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        self.writes += n;
        if let Err(e) = batch.commit() {
            self.failed.fetch_add(n, Ordering::Relaxed);
            self.error = Some(e.to_string());
        }
    }
}

/// What the store thread reports back to the shards.
struct Marks {
    sync: bool,
    durable: Arc<[AtomicU64]>,
    wake: WakeShard,
    failed: Arc<AtomicU64>,
    commits: Arc<crate::metrics::Latency>,
}

/// The store thread: group commit of whatever the shards sent since the last batch. A
/// delivery appended and completed within one batch (a consumer that keeps up while the disk
/// is behind) is written not at all. With `sync` every batch is fsynced before the shards
/// learn that their writes in it are durable.
fn run(mut disk: Disk, rx: Receiver<(Cmd, Tag)>, marks: &Marks) {
    let mut cmds: Vec<Cmd> = Vec::with_capacity(MAX_BATCH);
    // Per shard: its highest write number in this batch (0: none).
    let mut last: Vec<u64> = vec![0; marks.durable.len()];
    while let Ok(first) = rx.recv() {
        let mut take = |(c, tag): (Cmd, Tag)| {
            if let Some(n) = last.get_mut(tag.shard as usize) {
                *n = (*n).max(tag.no);
            }
            cmds.push(c);
        };
        take(first);
        let started = Instant::now();
        let mut n = 1;
        while n < MAX_BATCH {
            let Ok(c) = rx.try_recv() else { break };
            take(c);
            n += 1;
        }
        cancel_completed(&mut cmds);
        let failed_before = marks.failed.load(Ordering::Relaxed);
        let Some((ks, p)) = disk.ready() else {
            let dropped = cmds
                .drain(..)
                .filter(|c| !matches!(c, Cmd::Sync(_) | Cmd::Cancelled))
                .count();
            marks.failed.fetch_add(dropped as u64, Ordering::Relaxed);
            disk.batch_done(dropped as u64, dropped as u64, None);
            release(&mut last, marks);
            continue;
        };
        let mut b = Batcher::new(ks, &marks.failed);
        let mut waiting = Vec::new();
        for c in cmds.drain(..) {
            match c {
                Cmd::Retain { topic, value } => match value {
                    Some(v) => b.insert(0, &p.retained, topic, v),
                    None => b.remove(0, &p.retained, topic),
                },
                Cmd::Session { client_id, value } => b.insert(1, &p.sessions, client_id, value),
                Cmd::Done { client_id, seqs } => {
                    for seq in seqs {
                        b.remove(2, &p.queued, queue_key(&client_id, seq));
                    }
                }
                Cmd::Queue {
                    client_id,
                    seq,
                    value,
                } => b.insert(2, &p.queued, queue_key(&client_id, seq), value),
                Cmd::Qos2 { client_id, event } => match event {
                    Qos2Event::Sent { id, seq } | Qos2Event::Released { id, seq } => {
                        let released = matches!(event, Qos2Event::Released { .. });
                        let value = codec::encode_inflight(seq, released);
                        b.insert(3, &p.inflight, packet_key(&client_id, id), value);
                    }
                    Qos2Event::Completed { id } => {
                        b.remove(3, &p.inflight, packet_key(&client_id, id));
                    }
                    Qos2Event::Received { id } => {
                        b.insert(4, &p.inbound, packet_key(&client_id, id), Vec::new());
                    }
                    Qos2Event::Freed { id } => b.remove(4, &p.inbound, packet_key(&client_id, id)),
                },
                Cmd::EndSession { client_id } => {
                    // Everything before is committed first, so the prefix scans see it.
                    b.commit();
                    b.writes += 1;
                    if let Err(e) = end_session(ks, p, &client_id) {
                        marks.failed.fetch_add(1, Ordering::Relaxed);
                        b.error = Some(e.to_string());
                    }
                }
                Cmd::Cancelled => {}
                Cmd::Sync(done) => waiting.push(done),
            }
        }
        b.commit();
        let writes = b.writes;
        if writes > 0 {
            // Relaxed: hand the batch to the OS now (one write per batch), so it survives
            // the process being killed; fjall's timer fsyncs it. Sync: fsync it now.
            let mode = if marks.sync {
                PersistMode::SyncAll
            } else {
                PersistMode::Buffer
            };
            if let Err(e) = ks.persist(mode) {
                marks.failed.fetch_add(writes, Ordering::Relaxed);
                b.error = Some(e.to_string());
            }
            marks.commits.observe(started.elapsed());
        }
        if !waiting.is_empty() {
            if let Err(e) = ks.persist(PersistMode::SyncAll) {
                tracing::error!("store: fsync failed: {e}");
            }
            for w in waiting {
                let _ = w.send(());
            }
        }
        let failed = marks.failed.load(Ordering::Relaxed) - failed_before;
        let error = b.error.take();
        disk.batch_done(writes.max(failed), failed, error);
        release(&mut last, marks);
    }
    // Every shard is gone: make the last batches durable.
    if let Some((ks, _)) = disk.open.as_ref() {
        if let Err(e) = ks.persist(PersistMode::SyncAll) {
            tracing::error!("store: final fsync failed: {e}");
        }
    }
}

/// Publishes each shard's last write of the batch as durable (`sync`) and wakes it. A failed
/// batch is counted and logged, and its acknowledgements go out all the same: holding them
/// would stall the publishers for good.
fn release(last: &mut [u64], marks: &Marks) {
    for (shard, n) in last.iter_mut().enumerate() {
        if *n > 0 {
            if marks.sync {
                marks.durable[shard].store(*n, Ordering::Release);
                (marks.wake)(shard);
            }
            *n = 0;
        }
    }
}

/// Cancels, within one batch's commands, each append whose completion is in the same batch,
/// and that completion: nothing needs to reach the disk for either.
fn cancel_completed(cmds: &mut [Cmd]) {
    use std::collections::HashMap;
    let mut appended: HashMap<(Vec<u8>, u64), usize> = HashMap::new();
    let mut cancel: Vec<usize> = Vec::new();
    for (i, c) in cmds.iter_mut().enumerate() {
        match c {
            Cmd::Queue { client_id, seq, .. } => {
                appended.insert((client_id.clone(), *seq), i);
            }
            Cmd::Done { client_id, seqs } => {
                seqs.retain(|&seq| match appended.remove(&(client_id.clone(), seq)) {
                    Some(j) => {
                        cancel.push(j);
                        false
                    }
                    None => true,
                });
            }
            _ => {}
        }
    }
    for j in cancel {
        cmds[j] = Cmd::Cancelled;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Publish;

    fn options(dir: &Path) -> StoreOptions {
        StoreOptions {
            dir: dir.to_path_buf(),
            commit_interval_ms: 10,
            queue: 16,
            sync: false,
            shards: 1,
            write_buffer_mib: 8,
            cache_mib: 8,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shardmq-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn retained(topic: &'static str, payload: &'static [u8]) -> AppMessage {
        AppMessage::new(Publish {
            retain: true,
            topic: topic.into(),
            payload: bytes::Bytes::from_static(payload),
            ..Default::default()
        })
    }

    #[test]
    fn retained_messages_survive_a_reopen_and_expired_ones_do_not() {
        let dir = temp("reopen");
        {
            let (store, rec, thread) = Store::open(&options(&dir), 0, Box::new(|_| {})).unwrap();
            assert!(rec.retained.is_empty());
            let a = retained("a", b"1");
            store
                .set_retained(b"a", Some(codec::encode_message(&a, None)))
                .unwrap();
            let b = retained("b", b"2");
            store
                .set_retained(b"b", Some(codec::encode_message(&b, Some(1))))
                .unwrap();
            let c = retained("c", b"3");
            store
                .set_retained(b"c", Some(codec::encode_message(&c, None)))
                .unwrap();
            store.set_retained(b"c", None).unwrap();
            assert!(store.sync(Duration::from_secs(10)));
            drop(store);
            thread.join().unwrap();
        }
        let (_store, rec, _thread) = Store::open(&options(&dir), 0, Box::new(|_| {})).unwrap();
        let topics: Vec<&str> = rec.retained.iter().map(|(m, _)| m.topic.as_str()).collect();
        assert_eq!(topics, ["a"]);
        assert_eq!(rec.expired, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_another_format_is_refused_with_both_formats_named() {
        let dir = temp("format");
        {
            let ks = open_keyspace(
                &dir,
                Tuning {
                    fsync_ms: Some(10),
                    write_buffer_mib: 8,
                    cache_mib: 8,
                },
            )
            .unwrap();
            let meta = ks
                .open_partition("meta", PartitionCreateOptions::default())
                .unwrap();
            meta.insert("format", 7u32.to_be_bytes()).unwrap();
            ks.persist(PersistMode::SyncAll).unwrap();
        }
        let e = Store::open(&options(&dir), 0, Box::new(|_| {})).unwrap_err();
        assert!(
            e.contains("store format 7") && e.contains("reads format 1"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn image(id: &'static str) -> SessionImage {
        let s = crate::protocol::session::Session::new(
            crate::protocol::Str::from(id),
            Arc::new(Default::default()),
        );
        let mut image = s.image();
        image.expiry = u32::MAX;
        image
    }

    fn queued(n: u8) -> Vec<u8> {
        let m = Arc::new(retained("q", &[b'0'; 1]));
        let mut m = (*m).clone();
        m.publish.payload = bytes::Bytes::from(vec![n]);
        let o = crate::protocol::session::Outgoing::restored(
            Arc::new(m),
            crate::protocol::QoS::AtLeastOnce,
            false,
            &[],
            None,
            0,
        );
        codec::encode_outgoing(&o, 0)
    }

    fn reopen(dir: &Path) -> Recovered {
        let (store, rec, thread) = Store::open(&options(dir), 0, Box::new(|_| {})).unwrap();
        drop(store);
        thread.join().unwrap();
        rec
    }

    #[test]
    fn a_session_keeps_its_image_and_its_deliveries_until_they_complete() {
        let dir = temp("sessions");
        let write = |cmds: Vec<PendingWrite>| {
            let (store, _, thread) = Store::open(&options(&dir), 0, Box::new(|_| {})).unwrap();
            for w in cmds {
                store.retry(w).unwrap();
            }
            assert!(store.sync(Duration::from_secs(10)));
            drop(store);
            thread.join().unwrap();
        };
        let (store, _, thread) = Store::open(&options(&dir), 0, Box::new(|_| {})).unwrap();
        let d = codec::Deadlines::default();
        let park = |id| PendingWrite::session(id, codec::encode_session(&image("a"), d, 0));
        let first = vec![
            park(b"a"),
            PendingWrite::queued(b"a", 1, queued(1)),
            PendingWrite::queued(b"a", 2, queued(2)),
        ];
        // Delivery 1 completes; 3 arrives; the image is written again (parked again).
        let second = vec![
            PendingWrite::done(b"a", vec![1]),
            PendingWrite::queued(b"a", 3, queued(3)),
            park(b"a"),
        ];
        let end = vec![PendingWrite::end(b"a")];
        drop(store);
        thread.join().unwrap();
        write(first);
        let rec = reopen(&dir);
        assert_eq!(rec.sessions.len(), 1);
        let q: Vec<(u64, u8)> = rec.sessions[0]
            .0
            .queue
            .iter()
            .map(|o| (o.seq, o.msg.payload[0]))
            .collect();
        assert_eq!(q, [(1, 1), (2, 2)]);
        write(second);
        let rec = reopen(&dir);
        let q: Vec<u64> = rec.sessions[0].0.queue.iter().map(|o| o.seq).collect();
        assert_eq!(q, [2, 3]);
        write(end);
        assert!(reopen(&dir).sessions.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sync_reports_each_shards_last_durable_write_and_wakes_it() {
        let dir = temp("sync");
        let mut o = options(&dir);
        o.sync = true;
        o.shards = 2;
        let (woken_tx, woken) = std::sync::mpsc::channel();
        let wake = Box::new(move |shard| {
            let _ = woken_tx.send(shard);
        });
        let (store, _, thread) = Store::open(&o, 0, wake).unwrap();
        assert_eq!((store.durable(0), store.durable(1)), (0, 0));
        let value = codec::encode_message(&retained("a", b"1"), None);
        for no in 1..=3 {
            let w = PendingWrite::retained(b"a", Some(value.clone())).numbered(1, no);
            store.retry(w).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.durable(1) < 3 {
            assert_eq!(woken.recv_timeout(Duration::from_secs(10)), Ok(1));
            assert!(Instant::now() < deadline);
        }
        assert_eq!(store.durable(0), 0, "shard 0 wrote nothing");
        drop(store);
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_delivery_completed_within_its_batch_is_not_written() {
        let q = |seq| Cmd::Queue {
            client_id: b"a".to_vec(),
            seq,
            value: vec![seq as u8],
        };
        let mut cmds = vec![
            q(1),
            q(2),
            Cmd::Done {
                client_id: b"a".to_vec(),
                seqs: vec![1, 7],
            },
            Cmd::Done {
                client_id: b"b".to_vec(),
                seqs: vec![2],
            },
        ];
        cancel_completed(&mut cmds);
        assert!(matches!(cmds[0], Cmd::Cancelled));
        assert!(
            matches!(cmds[1], Cmd::Queue { seq: 2, .. }),
            "another client's 2 is not a's"
        );
        assert!(matches!(&cmds[2], Cmd::Done { seqs, .. } if seqs[..] == [7]));
        assert!(matches!(&cmds[3], Cmd::Done { seqs, .. } if seqs[..] == [2]));
    }
}
