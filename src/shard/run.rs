//! Starting the broker: listeners, the mesh, and one pinned thread per shard, each running its
//! accept loops, its mesh pump and its keep alive ticker.
//!
//! [`start`] runs on the main thread and returns once every shard reported that its runtime
//! is up (or with the first shard's error, phrased for the operator); the shard threads then
//! run until the process exits.
//!
//! Per shard, three kinds of task share one `Rc<RefCell<Shard>>`:
//!
//! - an **accept loop** per listener, spawning [`conn::serve`] per socket;
//! - the **mesh pump**: drains the inbound rings and the shard's own queue in batches,
//!   flushes outgoing batches, and parks behind the shard's doorbell when there is nothing
//!   to do (a producer wakes it once per idle → busy transition);
//! - the **ticker**: once a second advances the shard's clock and its keep alive wheel.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::conn::{self, ConnShared, Origin};
use super::durability::Effects;
use super::fds;
use super::listen::bind_shared;
use super::spawn::{run_on_runtime, spawn_pinned};
use super::state::directory_shard;
use super::state::{Limit, Shard, ShardWaker, Shared};
use super::tls::Tls;
use super::verify::Verifier;
use super::websocket::{self, WsReader};
use crate::auth::Hooks;
use crate::auth::acl::Acl;
use crate::auth::password::PasswordFile;
use crate::auth::{Authenticators, ScramSha256};
use crate::config::{Config, Durability};
use crate::index::routes::MAX_SHARDS;
use crate::index::{Routes, SharedRoutes};
use crate::mesh::{Consumer, Doorbell, Envelope, Park, Producer, Wake, channel};
use crate::metrics::sys::SysTopics;
use crate::protocol::ReasonCode;
use crate::protocol::session::{Message, SessionImage};
use crate::store::codec::Deadlines;
use crate::store::{Store, StoreOptions, unix_now};

/// Envelopes drained from one inbound ring per pump turn.
const PUMP_BATCH: usize = 256;
/// Listen backlog per shard listener.
const BACKLOG: i32 = 1024;

/// This node's cluster id: `cluster.node_id`, else the one kept in the data directory (made
/// there on first start), else (persistence off) a fresh one.
fn node_id(config: &Config) -> Result<String, String> {
    if !config.cluster.node_id.is_empty() {
        return Ok(config.cluster.node_id.clone());
    }
    let fresh = || {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| format!("cluster: no random node id: {e}"))?;
        Ok::<_, String>(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    };
    if !config.persistence.enabled {
        return fresh();
    }
    let path = config.persistence.data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = fresh()?;
    std::fs::create_dir_all(&config.persistence.data_dir)
        .and_then(|()| std::fs::write(&path, format!("{id}\n")))
        .map_err(|e| {
            format!(
                "cluster: cannot keep the node id in {}: {e}",
                path.display()
            )
        })?;
    Ok(id)
}

/// What the metrics listener reads: the shards' snapshots and the store's counters.
struct Exposition {
    shared: Arc<Shared>,
    store: Option<Store>,
}

impl Exposition {
    fn facts(&self) -> crate::metrics::prometheus::Facts {
        crate::metrics::prometheus::Facts {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.shared.start.elapsed().as_secs(),
            store_commits: self.store.as_ref().map(|s| s.commits.read()),
            store_failed: self
                .store
                .as_ref()
                .map_or(0, |s| s.failed.load(Ordering::Relaxed)),
            cluster: self.shared.cluster.as_ref().map(|c| c.read()),
        }
    }
}

impl crate::metrics::http::Source for Exposition {
    fn metrics(&self) -> String {
        let snapshots = self.shared.snapshot_all();
        crate::metrics::prometheus::render(&snapshots, &self.facts())
    }

    fn healthy(&self) -> bool {
        !self.shared.shutdown.load(Ordering::Acquire)
    }
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    /// The addresses actually listened on (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    /// Shard threads.
    pub threads: Vec<JoinHandle<()>>,
    /// Broker-wide shared state.
    pub shared: Arc<Shared>,
    /// The store and its thread, when persistence is on.
    pub store: Option<(Store, JoinHandle<()>)>,
    /// The TLS listeners' certificate, when there are any.
    pub certificates: Option<Arc<Tls>>,
}

impl Broker {
    /// Graceful shutdown: stops accepting, has every shard send DISCONNECT 0x8B (Server
    /// shutting down) to its 5.0 clients and close every connection, waits up to `grace` for
    /// the connections to finish writing, then flushes the store. Returns the connections
    /// still open.
    pub fn shutdown(&self, grace: Duration) -> usize {
        self.shared.shutdown.store(true, Ordering::Release);
        for bell in self.shared.doorbells.iter() {
            bell.waker().wake();
        }
        let deadline = Instant::now() + grace;
        let open = loop {
            let open = self.shared.connections.load(Ordering::Acquire);
            if open == 0 || Instant::now() >= deadline {
                break open;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some((store, _)) = &self.store {
            if !store.sync(Duration::from_secs(5)) {
                tracing::warn!("store: the final flush did not finish within 5 s");
            }
        }
        open
    }

    /// SIGHUP: reads the password file, the ACL file and the TLS certificate again (for
    /// connections from now on; connected clients stay connected with what they connected
    /// with). A file that does not
    /// load keeps the old one, with an error line. Returns what was reloaded, for the log.
    pub fn reload(&self) -> Vec<String> {
        let auth = &self.shared.config.auth;
        let mut done = Vec::new();
        if let (Some(path), Some(v)) = (&auth.password_file, &self.shared.verifier) {
            match load_password_file(path) {
                Ok(file) => {
                    done.push(format!("auth.password_file ({} users)", file.len()));
                    v.replace(file);
                }
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the password file loaded before"),
            }
        }
        if let Some(c) = &self.certificates {
            match c.reload() {
                Ok(()) => done.push("tls.cert_file, tls.key_file and tls.ca_file".into()),
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the certificate loaded before"),
            }
        }
        if let Some(path) = &auth.acl_file {
            match load_acl(path) {
                Ok(acl) => {
                    self.shared.acl.store(Some(Arc::new(acl)));
                    done.push("auth.acl_file".into());
                }
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the ACL loaded before"),
            }
        }
        done
    }
}

fn load_password_file(path: &std::path::Path) -> Result<PasswordFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth.password_file: cannot read {}: {e}", path.display()))?;
    PasswordFile::parse(&text).map_err(|e| format!("auth.password_file {}: {e}", path.display()))
}

fn load_acl(path: &std::path::Path) -> Result<Acl, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth.acl_file: cannot read {}: {e}", path.display()))?;
    Acl::parse(&text).map_err(|e| format!("auth.acl_file {}: {e}", path.display()))
}

/// The mesh of `n` shards: one ring per ordered pair. `outs[a][b]` sends from `a` to `b`
/// (`None` for `a == b`); `ins[b]` are the rings `b` receives on.
pub(crate) type Outs = Vec<Vec<Option<Producer<Envelope>>>>;

/// Builds [`Outs`] and the matching consumers, rings of `capacity` slots.
pub(crate) fn full_mesh(n: usize, capacity: usize) -> (Outs, Vec<Vec<Consumer<Envelope>>>) {
    let mut outs: Outs = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut ins: Vec<Vec<Consumer<Envelope>>> = (0..n).map(|_| Vec::new()).collect();
    for (from, row) in outs.iter_mut().enumerate() {
        for (to, slot) in row.iter_mut().enumerate() {
            if from != to {
                let (p, c) = channel(capacity);
                *slot = Some(p);
                ins[to].push(c);
            }
        }
    }
    (outs, ins)
}

/// What a shard starts with from the store.
struct Seed {
    /// Every retained message (each shard keeps a replica).
    retained: Arc<Vec<Message>>,
    /// The persistent sessions whose client ids this shard's directory partition owns.
    sessions: Vec<(SessionImage, Deadlines)>,
    /// Sessions that expired while the broker was down (their delayed wills go out).
    expired: Vec<SessionImage>,
}

/// Binds the listeners, builds the mesh and starts the shards, with the enhanced
/// authentication methods the configuration names (`auth.scram_credentials`). Errors are one
/// line.
pub fn start(config: Config) -> Result<Broker, String> {
    let mut auths = Authenticators::new();
    if let Some(path) = &config.auth.scram_credentials {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "auth.scram_credentials: cannot read {}: {e}",
                path.display()
            )
        })?;
        let scram = ScramSha256::from_lines(&text)
            .map_err(|e| format!("auth.scram_credentials {}: {e}", path.display()))?;
        auths.add(scram).map_err(|e| format!("auth: {e}"))?;
    }
    start_with(config, Arc::new(auths))
}

/// [`start`] with the embedder's own enhanced-authentication methods (the library's hook for
/// MQTT 5.0 AUTH exchanges: implement [`crate::auth::Authenticator`]).
pub fn start_with(config: Config, authenticators: Arc<Authenticators>) -> Result<Broker, String> {
    start_with_hooks(config, authenticators, None)
}

/// [`start_with`] and the embedder's [`Hooks`] (authenticate, authorize, hear about
/// connects, publishes and subscriptions; see [`crate::auth::hooks`]).
pub fn start_with_hooks(
    config: Config,
    authenticators: Arc<Authenticators>,
    hooks: Option<Arc<dyn Hooks>>,
) -> Result<Broker, String> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = config.shard_cores(available);
    let n = cores.len();
    if n == 0 || n > MAX_SHARDS {
        return Err(format!(
            "{n} shards requested; shardmq runs 1 to {MAX_SHARDS} shards (set --shards or --cores)"
        ));
    }

    // One descriptor per connection: the soft default (often 1024) would cap the broker.
    if let Some(r) = fds::raise() {
        if r.now > r.before {
            tracing::info!(
                "open-file limit raised from {} to {} (the hard limit)",
                r.before,
                r.now
            );
        } else {
            tracing::info!("open-file limit {} (hard limit {})", r.now, r.hard);
        }
        let max = config.limits.max_connections as u64;
        if max + 64 > r.now {
            tracing::warn!(
                "limits.max_connections ({max}) is above what the open-file limit ({}) allows: accepts fail (and back off) from about {} connections; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower max_connections",
                r.now,
                r.now.saturating_sub(64)
            );
        }
    }

    let queue = config.limits.auth_queue;
    if hooks.is_some() {
        tracing::info!("authentication: the embedder's hooks are asked first");
    }
    let verifier = match &config.auth.password_file {
        Some(path) => {
            let v = Verifier::start(load_password_file(path)?, hooks, queue)?;
            tracing::info!(
                "authentication: {} users in {}; anonymous clients {}",
                v.users(),
                path.display(),
                if config.auth.anonymous_allowed() {
                    "allowed (auth.allow_anonymous = true)"
                } else {
                    "refused"
                }
            );
            Some(v)
        }
        None => {
            if config.auth.anonymous_allowed() {
                tracing::info!("authentication: no password file; anonymous clients allowed");
            } else {
                tracing::info!(
                    "authentication: no password file and auth.allow_anonymous = false: only enhanced authentication (5.0) or the hooks let clients in"
                );
            }
            match hooks {
                Some(h) => Some(Verifier::start(PasswordFile::default(), Some(h), queue)?),
                None => None,
            }
        }
    };

    let acl = match &config.auth.acl_file {
        Some(path) => {
            let acl = load_acl(path)?;
            tracing::info!("authorization: ACL {}", path.display());
            Some(acl)
        }
        None => None,
    };

    // Recover the store before binding: clients are accepted only once everything is back.
    let start = Instant::now();
    let start_unix = unix_now();
    let mut sessions: Vec<Vec<(SessionImage, Deadlines)>> = (0..n).map(|_| Vec::new()).collect();
    let mut expired_sessions = Vec::new();
    let doorbells: Arc<[Doorbell<ShardWaker>]> = (0..n)
        .map(|_| Doorbell::new(ShardWaker::default()))
        .collect();
    let (store, seed) = if config.persistence.enabled {
        let options = StoreOptions {
            dir: config.persistence.data_dir.clone(),
            commit_interval_ms: config.persistence.commit_interval_ms,
            queue: config.limits.store_queue,
            sync: config.persistence.durability == Durability::Sync,
            shards: n,
            write_buffer_mib: config.persistence.write_buffer_mib,
            cache_mib: config.persistence.cache_mib,
        };
        let bells = doorbells.clone();
        let wake = Box::new(move |shard: usize| {
            bells[shard].notify();
        });
        let (store, rec, thread) = Store::open(&options, start_unix, wake)?;
        let queued: usize = rec.sessions.iter().map(|(s, _)| s.queue.len()).sum();
        tracing::info!(
            "store {}: recovered {} retained messages and {} sessions ({} queued messages) in {} ms ({} retained and {} sessions expired while down, {} unreadable records)",
            options.dir.display(),
            rec.retained.len(),
            rec.sessions.len(),
            queued,
            rec.took.as_millis(),
            rec.expired,
            rec.expired_sessions.len(),
            rec.unreadable
        );
        // A session lives on the shard owning its client id in the directory.
        for (image, d) in rec.sessions {
            let home = directory_shard(&image.client_id, n);
            sessions[home].push((image, d));
        }
        expired_sessions = rec.expired_sessions;
        let seed: Vec<Message> = rec
            .retained
            .into_iter()
            .map(|(mut m, at)| {
                // Deadlines are kept in Unix seconds; the broker's clock starts at 0 now.
                m.expires_at =
                    at.map(|at| at.saturating_sub(start_unix).min(u64::from(u32::MAX)) as u32);
                Arc::new(m)
            })
            .collect();
        (Some((store, thread)), seed)
    } else {
        tracing::info!("persistence off: nothing is kept across restarts");
        (None, Vec::new())
    };
    let seed = Arc::new(seed);

    let mut per_shard: Vec<Vec<Listener>> = (0..n).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    let certificates = if config.tls.listen.is_empty() && config.websocket.tls_listen.is_empty() {
        None
    } else {
        Some(Arc::new(Tls::new(&config.tls)?))
    };
    let kinds = [
        (&config.listen, false, false),
        (&config.tls.listen, true, false),
        (&config.websocket.listen, false, true),
        (&config.websocket.tls_listen, true, true),
    ];
    for (list, tls, websocket) in kinds {
        let kind = Kind {
            tls: if tls { certificates.clone() } else { None },
            websocket,
        };
        for addr in list {
            let ls = bind_shared(*addr, n, BACKLOG).map_err(|e| e.to_string())?;
            addrs.push((ls[0].local_addr().map_err(|e| e.to_string())?, kind.name()));
            for (i, l) in ls.into_iter().enumerate() {
                per_shard[i].push((l, kind.clone()));
            }
        }
    }

    let mut metrics_listeners = Vec::new();
    for addr in &config.metrics.listen {
        let l = std::net::TcpListener::bind(addr).map_err(|e| {
            format!("metrics.listen {addr}: {e}; pick another address or stop what listens there")
        })?;
        metrics_listeners.push(l);
    }

    let (outs, ins) = full_mesh(n, config.limits.ring_capacity);

    let cluster = if config.cluster.redis.is_empty() {
        None
    } else {
        let node_id = node_id(&config)?;
        let bells = doorbells.clone();
        let wake = Box::new(move |shard: usize| {
            bells[shard].notify();
        });
        let options = crate::cluster::Options {
            url: config.cluster.redis.clone(),
            node_id: node_id.clone(),
            heartbeat_secs: config.cluster.heartbeat_secs,
            node_ttl_secs: config.cluster.node_ttl_secs,
            queue: config.cluster.queue,
            move_timeout: std::time::Duration::from_millis(u64::from(
                config.cluster.move_timeout_ms,
            )),
        };
        let c = crate::cluster::Cluster::start(options, n, wake)?;
        tracing::info!(node = %node_id, "cluster: node {node_id} through {}", config.cluster.redis);
        Some(c)
    };

    // Random per start: assigned client ids never repeat across restarts or nodes.
    let mut prefix = [0u8; 6];
    getrandom::fill(&mut prefix).map_err(|e| format!("no randomness for client ids: {e}"))?;
    let assigned_prefix = prefix.iter().map(|x| format!("{x:02x}")).collect();
    let shared = Arc::new(Shared {
        assigned_prefix,
        routes: Routes::new(),
        shared_routes: SharedRoutes::new(),
        start,
        start_unix,
        store: store.as_ref().map(|(s, _)| s.clone()),
        doorbells,
        connections: AtomicUsize::new(0),
        persistent: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        effects: Effects::new(n),
        dropped: AtomicU64::new(0),
        shutdown: AtomicBool::new(false),
        seeded: AtomicUsize::new(0),
        verifier,
        acl: arc_swap::ArcSwapOption::new(acl.map(Arc::new)),
        authenticators,
        snapshots: (0..n).map(|_| Default::default()).collect(),
        cluster,
        config,
    });

    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
    let mut threads = Vec::with_capacity(n);
    let pin = shared.config.pin;
    let driver = shared.config.io_driver;
    for (i, ((out, inbound), listeners)) in outs.into_iter().zip(ins).zip(per_shard).enumerate() {
        let core = cores[i];
        let shared = shared.clone();
        let seed = Seed {
            retained: seed.clone(),
            sessions: std::mem::take(&mut sessions[i]),
            expired: if i == 0 {
                std::mem::take(&mut expired_sessions)
            } else {
                Vec::new()
            },
        };
        let ready = ready_tx.clone();
        let spawned = spawn_pinned(i, pin.then_some(core), move |pinned| {
            let ready2 = ready.clone();
            let res = run_on_runtime(
                driver,
                |d, why| {
                    let pin_note = match (pin, pinned) {
                        (false, _) => "not pinned".to_string(),
                        (true, true) => format!("pinned to core {core}"),
                        (true, false) => format!("pinning to core {core} failed"),
                    };
                    let fallback = why
                        .map(|e| format!(" (io_uring unavailable: {e})"))
                        .unwrap_or_default();
                    let _ = ready2.send(Ok(format!("shard {i}: {d}{fallback}, {pin_note}")));
                },
                move |_| shard_main(i, shared, out, inbound, listeners, seed),
            );
            if let Err(e) = res {
                let _ = ready.send(Err(format!(
                    "shard {i} could not start its io runtime: {e} (try --io-driver epoll)"
                )));
            }
        })
        .map_err(|e| format!("cannot start shard thread {i}: {e}"))?;
        threads.push(spawned);
    }
    drop(ready_tx);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(line)) => tracing::info!("{line}"),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a shard thread exited during start-up".into()),
        }
    }
    // Every shard has its recovered state before the broker says it is listening.
    while shared.seeded.load(Ordering::Acquire) < n {
        if threads.iter().any(|t| t.is_finished()) {
            return Err("a shard thread exited during start-up".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for (a, over) in &addrs {
        tracing::info!("listening on {a} (mqtt over {over}, {n} shards)");
    }
    let source: Arc<dyn crate::metrics::http::Source> = Arc::new(Exposition {
        shared: shared.clone(),
        store: store.as_ref().map(|(s, _)| s.clone()),
    });
    for l in metrics_listeners {
        let a = l.local_addr().map_err(|e| e.to_string())?;
        crate::metrics::http::spawn(l, source.clone())
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        tracing::info!("serving metrics on http://{a}/metrics and /health");
    }
    let addrs = addrs.into_iter().map(|(a, _)| a).collect();
    Ok(Broker {
        addrs,
        threads,
        shared,
        store,
        certificates,
    })
}

async fn shard_main(
    id: usize,
    shared: Arc<Shared>,
    out: Vec<Option<Producer<Envelope>>>,
    inbound: Vec<Consumer<Envelope>>,
    listeners: Vec<Listener>,
    seed: Seed,
) {
    let mut state = Shard::new(id, shared.clone(), out, inbound);
    state.seed_retained(&seed.retained);
    state.seed_sessions(seed.sessions);
    state.publish_expired_wills(seed.expired);
    // Recovered routes are visible now; clients are accepted once every shard is here.
    shared.seeded.fetch_add(1, Ordering::Release);
    let shard = Rc::new(RefCell::new(state));
    for (l, tls) in listeners {
        match monoio::net::TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_loop(shard.clone(), l, tls));
            }
            Err(e) => tracing::error!(shard = id, "cannot adopt listener: {e}"),
        }
    }
    monoio::spawn(ticker(shard.clone()));
    pump(shard, shared, id).await;
}

/// What a listener speaks under MQTT.
#[derive(Clone, Debug)]
struct Kind {
    /// TLS first, with this configuration.
    tls: Option<Arc<Tls>>,
    /// Then (or directly) a WebSocket upgrade.
    websocket: bool,
}

impl Kind {
    fn name(&self) -> &'static str {
        match (self.tls.is_some(), self.websocket) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "websocket",
            (true, true) => "secure websocket",
        }
    }
}

/// One shard's socket of a listener, and what it speaks.
type Listener = (std::net::TcpListener, Kind);

/// The first pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

async fn accept_loop(shard: Rc<RefCell<Shard>>, listener: monoio::net::TcpListener, kind: Kind) {
    let max = shard.borrow().shared.config.limits.max_connections;
    // A publish accepted here before another shard has its recovered sessions (and their
    // routes) would miss them.
    let count = shard.borrow().count;
    while shard.borrow().shared.seeded.load(Ordering::Acquire) < count {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut failed = 0u64;
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if failed > 0 {
                    tracing::info!(failures = failed, "accepting connections again");
                    failed = 0;
                    backoff = ACCEPT_BACKOFF;
                }
                if shard.borrow().shared.shutdown.load(Ordering::Relaxed) {
                    drop(stream);
                    continue;
                }
                if !shard.borrow_mut().admit(peer.ip(), Instant::now()) {
                    drop(stream);
                    continue;
                }
                let open = shard
                    .borrow()
                    .shared
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                if open >= max {
                    shard
                        .borrow()
                        .shared
                        .connections
                        .fetch_sub(1, Ordering::Relaxed);
                    let refused = shard.borrow_mut().stats.hit(Limit::MaxConnections);
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            refused,
                            "max_connections ({max}) reached: refusing a connection"
                        );
                    }
                    drop(stream);
                    continue;
                }
                shard.borrow_mut().open_connections += 1;
                let _ = stream.set_nodelay(true);
                let fd = stream.as_raw_fd();
                let origin = Origin {
                    peer: Some(peer),
                    transport: kind.name(),
                    ..Origin::default()
                };
                if kind.tls.is_none() && !kind.websocket {
                    monoio::spawn(conn::serve(shard.clone(), stream, fd, origin, None));
                } else {
                    monoio::spawn(layered(shard.clone(), kind.clone(), stream, fd, origin));
                }
            }
            Err(e) => {
                // Out of file descriptors (or another failure): back off, doubling up to a
                // second, instead of spinning on a listener whose backlog stays full; log the
                // first failure and then at 2, 4, 8 … so that a long outage is not a flood.
                let fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                let failures = {
                    let mut s = shard.borrow_mut();
                    s.stats.accept_errors[usize::from(!fds)] += 1;
                    failed += 1;
                    failed
                };
                if failures.is_power_of_two() {
                    if fds {
                        tracing::warn!(
                            failures,
                            "accept failed: {e}; out of file descriptors (open-file limit {}): backing off; raise the limit (ulimit -n, systemd LimitNOFILE=) or limits.max_connections below it",
                            fds::soft_limit()
                        );
                    } else {
                        tracing::warn!(failures, "accept failed: {e}; backing off");
                    }
                }
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The TLS handshake and / or the WebSocket upgrade of an accepted socket, together within
/// `limits.connect_timeout_secs`, then the connection. A failed one closes the socket (logged
/// at debug: scanners are common).
async fn layered(
    shard: Rc<RefCell<Shard>>,
    kind: Kind,
    stream: monoio::net::TcpStream,
    fd: std::os::fd::RawFd,
    mut origin: Origin,
) {
    let (limit, path, max_frame) = {
        let s = shard.borrow();
        let c = &s.shared.config;
        (
            Duration::from_secs(u64::from(c.limits.connect_timeout_secs.max(1))),
            c.websocket.path.clone(),
            c.websocket.frame_limit(c.limits.max_packet_size),
        )
    };
    let upgrade = async {
        match &kind.tls {
            Some(tls) => {
                let (mut stream, identity) = tls.accept(stream).await.map_err(|e| e.to_string())?;
                origin.tls = true;
                origin.identity = identity;
                if !kind.websocket {
                    return Ok(Layers::Tls(stream));
                }
                let first = websocket::upgrade(&mut stream, &path).await?;
                Ok(Layers::SecureWebSocket(stream, first))
            }
            None => {
                let mut stream = stream;
                let first = websocket::upgrade(&mut stream, &path).await?;
                Ok(Layers::WebSocket(stream, first))
            }
        }
    };
    let ws = |first| Some(WsReader::new(max_frame, first));
    match monoio::time::timeout(limit, upgrade).await {
        Ok(Ok(Layers::Tls(s))) => conn::serve(shard, s, fd, origin, None).await,
        Ok(Ok(Layers::SecureWebSocket(s, first))) => {
            conn::serve(shard, s, fd, origin, ws(first)).await;
        }
        Ok(Ok(Layers::WebSocket(s, first))) => {
            conn::serve(shard, s, fd, origin, ws(first)).await;
        }
        outcome => {
            let why: String = match outcome {
                Ok(Err(e)) => e,
                _ => "timed out".into(),
            };
            tracing::debug!(peer = ?origin.peer, "{} handshake failed: {why}", kind.name());
            let mut s = shard.borrow_mut();
            s.open_connections -= 1;
            s.shared.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// An accepted socket after its handshakes.
enum Layers {
    Tls(super::tls::TlsStream),
    WebSocket(monoio::net::TcpStream, bytes::BytesMut),
    SecureWebSocket(super::tls::TlsStream, bytes::BytesMut),
}

async fn ticker(shard: Rc<RefCell<Shard>>) {
    let start = shard.borrow().shared.start;
    let sys_interval = u64::from(shard.borrow().shared.config.metrics.sys_interval);
    let mut sys = (shard.borrow().id == 0 && sys_interval > 0).then(SysTopics::default);
    let mut next_sys = 0u64;
    let mut expired: Vec<Rc<ConnShared>> = Vec::new();
    let mut cpu_before = thread_cpu_time();
    let mut wall_before = Instant::now();
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        let mut s = shard.borrow_mut();
        let now = start.elapsed().as_secs() as u32;
        s.now = now;
        s.wheel.advance(now, |c| expired.push(c.0));
        for c in expired.drain(..) {
            tracing::debug!(token = c.token, "keep alive expired");
            if let Some(slot) = c.slot.get() {
                if let Some(e) = s.sessions.get_mut(slot).filter(|e| e.token == c.token) {
                    e.session.disconnect_with(ReasonCode::KEEP_ALIVE_TIMEOUT);
                }
            }
            c.close();
        }
        s.run_timers(now);
        // The metrics snapshot: this thread's CPU time over the wall time since the last.
        let (cpu, wall) = (thread_cpu_time(), Instant::now());
        let busy = (cpu.saturating_sub(cpu_before)).as_secs_f64()
            / wall.duration_since(wall_before).as_secs_f64().max(1e-9);
        (cpu_before, wall_before) = (cpu, wall);
        let snapshot = s.snapshot(busy.clamp(0.0, 1.0));
        if let Ok(mut slot) = s.shared.snapshots[s.id].lock() {
            *slot = snapshot;
        }
        if let Some(sys) = sys.as_mut()
            && u64::from(now) >= next_sys
        {
            next_sys = u64::from(now) + sys_interval;
            let all = s.shared.snapshot_all();
            let topics = sys.update(&all, u64::from(now), env!("CARGO_PKG_VERSION"));
            s.publish_sys(topics);
            s.flush();
        }
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Yields to the other tasks of this shard once.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

async fn pump(shard: Rc<RefCell<Shard>>, shared: Arc<Shared>, id: usize) {
    let bell = &shared.doorbells[id];
    let mut shutting_down = false;
    loop {
        if !shutting_down && shared.shutdown.load(Ordering::Acquire) {
            shutting_down = true;
            shard
                .borrow_mut()
                .disconnect_all(ReasonCode::SERVER_SHUTTING_DOWN);
        }
        let (n, overflow, store_behind) = {
            let mut s = shard.borrow_mut();
            let n = s.pump(PUMP_BATCH);
            s.flush();
            (n, s.overflow_len(), s.store_behind())
        };
        if n > 0 {
            yield_now().await;
            continue;
        }
        // Rings to drain into full neighbours, or a store that is behind: retry shortly.
        if overflow > 0 || store_behind {
            monoio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        poll_fn(|cx| {
            let mut s = shard.borrow_mut();
            if bell.waker().register(cx.waker()) {
                return Poll::Ready(());
            }
            // A connection filled a ring's overflow or the store backlog meanwhile (and
            // woke us through `pump_waker`): retry them.
            if s.overflow_len() > 0 || s.store_behind() {
                return Poll::Ready(());
            }
            s.pump_waker = Some(cx.waker().clone());
            match bell.prepare_park(|| s.has_inbound()) {
                Park::WorkFound => Poll::Ready(()),
                Park::Sleep => Poll::Pending,
            }
        })
        .await;
        bell.set_busy();
        shard.borrow_mut().pump_waker = None;
    }
}
