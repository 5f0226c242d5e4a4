//! Persistence: an embedded LSM store (fjall) on its own thread, so no shard ever waits for
//! the disk (DESIGN.md invariant 1).
//!
//! What it keeps so far: the retained messages. Persistent sessions, their queues and inflight
//! windows, and `durability = "sync"` (acknowledging a QoS ≥ 1 PUBLISH only once it is
//! committed) are the next steps of issue 6 and are not built yet.
//!
//! ```text
//!  shard 0 ─┐  try_send (bounded channel; a full one is retried from the shard's backlog)
//!  shard 1 ─┼──────────────► store thread: drain everything pending into one batch,
//!  shard N ─┘                commit (to the OS: survives kill -9), fsync every
//!                            `commit_interval_ms` (survives power loss after that)
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

use crate::protocol::session::AppMessage;

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
}

/// One write for the store thread.
#[derive(Debug)]
enum Cmd {
    /// Set (`Some`, an encoded record) or delete (`None`) the retained message of a topic.
    Retain {
        topic: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// Commit and fsync everything before, then answer.
    Sync(std::sync::mpsc::Sender<()>),
}

/// What start-up found in the store.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Retained messages still alive, with the Unix second they expire at.
    pub retained: Vec<(AppMessage, Option<u64>)>,
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
    tx: SyncSender<Cmd>,
    /// Writes dropped because the store was unusable (logged once per batch).
    pub failed: Arc<AtomicU64>,
}

/// The current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn open_keyspace(dir: &Path, fsync_ms: u16) -> fjall::Result<Keyspace> {
    fjall::Config::new(dir)
        .fsync_ms(Some(fsync_ms.max(1)))
        // Background flush and compaction: the machine's shards need the cores.
        .flush_workers(1)
        .compaction_workers(1)
        .open()
}

impl Store {
    /// Opens (or creates) the store, recovers what it holds and starts the store thread.
    /// Errors are one line.
    pub fn open(o: &StoreOptions) -> Result<(Store, Recovered, JoinHandle<()>), String> {
        let started = Instant::now();
        std::fs::create_dir_all(&o.dir).map_err(|e| {
            format!(
                "persistence.data_dir {}: cannot create it: {e} (choose another with --data-dir, or --no-persistence)",
                o.dir.display()
            )
        })?;
        let ks = match open_keyspace(&o.dir, o.commit_interval_ms) {
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
                open_keyspace(&o.dir, o.commit_interval_ms)
                    .map_err(|e| format!("persistence.data_dir {}: {e}", o.dir.display()))?
            }
        };
        let fail = |e: fjall::Error| format!("persistence.data_dir {}: {e}", o.dir.display());
        let meta = ks
            .open_partition("meta", PartitionCreateOptions::default())
            .map_err(fail)?;
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
        let retained = ks
            .open_partition("retained", PartitionCreateOptions::default())
            .map_err(fail)?;
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
        rec.took = started.elapsed();
        let (tx, rx) = sync_channel(o.queue.max(1));
        let failed = Arc::new(AtomicU64::new(0));
        let thread_failed = failed.clone();
        let handle = std::thread::Builder::new()
            .name("shardmq-store".into())
            .spawn(move || run(ks, retained, rx, &thread_failed))
            .map_err(|e| format!("cannot start the store thread: {e}"))?;
        Ok((Store { tx, failed }, rec, handle))
    }

    /// Queues setting (or, with `None`, deleting) the retained message of `topic`. Returns
    /// the command back when the channel is full (the caller keeps it and retries).
    pub fn set_retained(&self, topic: &[u8], value: Option<Vec<u8>>) -> Result<(), PendingWrite> {
        self.send(Cmd::Retain {
            topic: topic.to_vec(),
            value,
        })
    }

    /// A retained-message write to keep in a backlog, unsent.
    pub fn pending_retained(&self, topic: &[u8], value: Option<Vec<u8>>) -> PendingWrite {
        PendingWrite(Cmd::Retain {
            topic: topic.to_vec(),
            value,
        })
    }

    /// Retries a write the channel had no room for.
    pub fn retry(&self, w: PendingWrite) -> Result<(), PendingWrite> {
        self.send(w.0)
    }

    fn send(&self, c: Cmd) -> Result<(), PendingWrite> {
        match self.tx.try_send(c) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(c)) => Err(PendingWrite(c)),
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
        let mut cmd = Cmd::Sync(tx);
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
}

/// A write the store's channel had no room for, kept by the shard for a retry.
#[derive(Debug)]
pub struct PendingWrite(Cmd);

/// The store thread: group commit of whatever the shards sent since the last batch.
fn run(ks: Keyspace, retained: PartitionHandle, rx: Receiver<Cmd>, failed: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut batch = ks.batch();
        let mut waiting = Vec::new();
        let mut n = 0usize;
        let mut apply = |c: Cmd, batch: &mut fjall::Batch| match c {
            Cmd::Retain {
                topic,
                value: Some(v),
            } => batch.insert(&retained, topic, v),
            Cmd::Retain { topic, value: None } => batch.remove(&retained, topic),
            Cmd::Sync(done) => waiting.push(done),
        };
        apply(first, &mut batch);
        while n < MAX_BATCH {
            let Ok(c) = rx.try_recv() else { break };
            apply(c, &mut batch);
            n += 1;
        }
        let writes = batch.len() as u64;
        if let Err(e) = batch.commit() {
            failed.fetch_add(writes, Ordering::Relaxed);
            tracing::error!("store: a batch of {writes} writes failed: {e}");
        }
        // Hand the batch to the OS now (one write per batch): it survives the process being
        // killed. The fsync comes from fjall's timer, or below when someone waits for it.
        if let Err(e) = ks.persist(PersistMode::Buffer) {
            tracing::error!("store: writing a batch to the OS failed: {e}");
        }
        if !waiting.is_empty() {
            if let Err(e) = ks.persist(PersistMode::SyncAll) {
                tracing::error!("store: fsync failed: {e}");
            }
            for w in waiting {
                let _ = w.send(());
            }
        }
    }
    // Every shard is gone: make the last batches durable.
    if let Err(e) = ks.persist(PersistMode::SyncAll) {
        tracing::error!("store: final fsync failed: {e}");
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
            let (store, rec, thread) = Store::open(&options(&dir)).unwrap();
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
        let (_store, rec, _thread) = Store::open(&options(&dir)).unwrap();
        let topics: Vec<&str> = rec.retained.iter().map(|(m, _)| m.topic.as_str()).collect();
        assert_eq!(topics, ["a"]);
        assert_eq!(rec.expired, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_another_format_is_refused_with_both_formats_named() {
        let dir = temp("format");
        {
            let ks = open_keyspace(&dir, 10).unwrap();
            let meta = ks
                .open_partition("meta", PartitionCreateOptions::default())
                .unwrap();
            meta.insert("format", 7u32.to_be_bytes()).unwrap();
            ks.persist(PersistMode::SyncAll).unwrap();
        }
        let e = Store::open(&options(&dir)).unwrap_err();
        assert!(
            e.contains("store format 7") && e.contains("reads format 1"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
