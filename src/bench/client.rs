//! The bench's MQTT clients, as monoio tasks on one bench thread: publishers, subscribers and
//! idle connections, all speaking through shardmq's own codec.
//!
//! - A **subscriber** connects, subscribes, waits for its SUBACK, then reads: it decodes every
//!   frame of a read, acknowledges QoS 1/2 deliveries with one write per read, checks each
//!   message's sequence number ([`SeqCheck`]), records its latency while measuring, and tells
//!   each publisher it heard from how many of its messages arrived (one atomic add per
//!   publisher per read).
//! - A **publisher** is a writer and a reader. The writer stamps a pre-encoded PUBLISH frame
//!   (sequence number, send time, packet id) batch by batch into one buffer and sends each
//!   batch with one write. It stays within its window twice over: unacknowledged QoS 1/2
//!   packet ids (capped by a 5.0 broker's Receive Maximum), and messages sent but not yet
//!   received by the subscribers (end to end, at every QoS), so a fast publisher cannot bury
//!   a broker in QoS 0 it will only drop. At a fixed rate it sends what is due each tick.
//!   The reader takes PUBACK / PUBREC / PUBCOMP and queues PUBREL for the writer.
//! - An **idle connection** connects and is kept open until the run ends.
//!
//! Every connection is a [`Link`]: plain TCP, or MQTT over WebSocket after an HTTP upgrade
//! (`--transport ws`); the clients above read and write MQTT bytes through it either way.
//!
//! Everything a coordinator needs crosses threads through [`Run`]: atomics updated once per
//! batch, never per message.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use monoio::net::TcpStream;

use super::args::{Plan, PubPlan, SubPlan, Transport};
use super::check::SeqCheck;
use super::link::{Link, LinkRead, first_line};
use super::payload::Stamp;
use crate::protocol::{
    ConnAck, Connect, Packet, Publish, QoS, Str, Subscribe, SubscriptionOptions, TopicFilter,
    TopicName, Version, decode,
};

/// The phases of a run, in order; the coordinator moves [`Run::phase`] forward.
pub mod phase {
    /// Clients connect and subscribe.
    pub const SETUP: u8 = 0;
    /// Publishers publish; nothing is measured yet.
    pub const WARMUP: u8 = 1;
    /// Throughput and latency count.
    pub const MEASURE: u8 = 2;
    /// Publishers stop; what is in flight arrives.
    pub const DRAIN: u8 = 3;
    /// Everything stops.
    pub const DONE: u8 = 4;
}

/// A publisher stalled this long with no end-to-end progress writes off its QoS 0 messages in
/// flight as lost (the broker dropped them) and goes on. Long enough that a VM's scheduling
/// pause is not taken for a drop: a write-off widens the window past what was asked.
const QOS0_STALL: Duration = Duration::from_secs(1);
/// Most messages in one write.
const BATCH: u64 = 256;
/// Most bytes of publishes in one write (a larger single message still goes alone).
const BATCH_BYTES: usize = 256 * 1024;
/// Bytes a read asks for.
const READ_SIZE: usize = 64 * 1024;

/// State shared by all bench threads and the coordinator.
#[derive(Debug)]
pub struct Run {
    /// The clock every stamp is relative to.
    pub start: Instant,
    phase: AtomicU8,
    /// Messages published, all phases.
    pub sent: AtomicU64,
    /// Messages received by subscribers (duplicates included), all phases.
    pub received: AtomicU64,
    /// Received payloads that no bench publisher of this run sent.
    pub foreign: AtomicU64,
    /// Clients connected (and, for subscribers, subscribed).
    pub ready: AtomicUsize,
    /// Clients that failed.
    pub failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// Times a QoS 0 publisher wrote off a stalled window.
    pub stalls: AtomicU64,
    /// One per publisher.
    pub pubs: Box<[PubShared]>,
}

/// What a publisher shares with the subscribers that hear it.
#[derive(Debug, Default)]
pub struct PubShared {
    /// Messages this publisher has sent.
    pub sent: AtomicU64,
    /// Deliveries of its messages, summed over its subscribers.
    pub delivered: AtomicU64,
    /// The publisher's writer, waiting for window.
    pub waker: AtomicWaker,
    /// The publisher has seen the drain (or ended) and sends no new message: `sent` is
    /// final. Until then the drain cannot tell a finished run from a batch being written.
    pub stopped: AtomicBool,
}

impl Run {
    pub fn new(publishers: usize) -> Self {
        Self {
            start: Instant::now(),
            phase: AtomicU8::new(phase::SETUP),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            stalls: AtomicU64::new(0),
            pubs: (0..publishers).map(|_| PubShared::default()).collect(),
        }
    }

    pub fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// Moves to `p` and wakes every publisher so it sees the change.
    pub fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::Release);
        for ps in self.pubs.iter() {
            ps.waker.wake();
        }
    }

    /// Records a client failure; the first message is kept for the report.
    pub fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::AcqRel);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(why);
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Where and how bench clients connect.
#[derive(Debug)]
pub struct Target {
    /// Publishers and idle connections connect here (--host / --port).
    pub addr: SocketAddr,
    /// Subscribers connect here (--sub-host / --sub-port; `addr` unless given), e.g. another
    /// node of a cluster.
    pub sub_addr: SocketAddr,
    pub sources: Vec<IpAddr>,
    pub version: Version,
    pub keep_alive: u16,
    /// Persistent sessions (Clean Session 0 / Session Expiry 300 s).
    pub persistent: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Plain MQTT, or MQTT over WebSocket after an HTTP upgrade.
    pub transport: Transport,
    /// The upgrade's request path (WebSocket).
    pub ws_path: String,
    /// The upgrade's Host header: the broker's name (or address) and port (WebSocket).
    pub http_host: String,
    /// The same for `sub_addr`.
    pub sub_http_host: String,
}

/// What a client is, which picks the address it connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
    Idle,
}

impl Target {
    /// The address `role` connects to, and its WebSocket Host header.
    fn endpoint(&self, role: Role) -> (SocketAddr, &str) {
        match role {
            Role::Subscriber => (self.sub_addr, &self.sub_http_host),
            Role::Publisher | Role::Idle => (self.addr, &self.http_host),
        }
    }

    /// Whether subscribers connect somewhere else than publishers.
    pub fn split(&self) -> bool {
        self.sub_addr != self.addr
    }
}

/// What one bench thread's tasks share.
#[derive(Debug)]
pub struct Local {
    pub run: std::sync::Arc<Run>,
    pub plan: std::sync::Arc<Plan>,
    pub target: std::sync::Arc<Target>,
    /// Latencies (ns) of messages received while measuring, or of connection handshakes.
    pub hist: RefCell<Histogram<u64>>,
    /// Sockets to shut down when the run ends.
    pub fds: RefCell<Vec<RawFd>>,
    /// Idle connections kept open (conn).
    pub held: RefCell<Vec<Link>>,
}

type Result<T> = std::result::Result<T, String>;

async fn next_packet(link: &mut Link, buf: &mut BytesMut, version: Version) -> Result<Packet> {
    loop {
        if let Some(p) = decode(buf, version, u32::MAX).map_err(|e| format!("decode: {e}"))? {
            return Ok(p);
        }
        if link.fill(buf, 4096).await? == 0 {
            return Err("the broker closed the connection".into());
        }
    }
}

async fn send(link: &mut Link, bytes: BytesMut) -> Result<()> {
    link.send(bytes).await.0
}

async fn tcp_connect(t: &Target, addr: SocketAddr, n: usize) -> std::io::Result<TcpStream> {
    if t.sources.is_empty() {
        return TcpStream::connect(addr).await;
    }
    let src = t.sources[n % t.sources.len()];
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(sock.into())?;
    stream.writable(false).await?;
    Ok(stream)
}

/// Opens a connection to `role`'s address and completes the MQTT handshake; `n` picks the
/// source address.
pub async fn open(
    t: &Target,
    role: Role,
    n: usize,
    client_id: &str,
) -> Result<(Link, BytesMut, ConnAck)> {
    let (addr, http_host) = t.endpoint(role);
    let stream = tcp_connect(t, addr, n)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut link = match t.transport {
        Transport::Tcp => Link::tcp(stream),
        Transport::Ws => {
            let to = format!("{addr}{}", t.ws_path);
            Link::websocket(stream, http_host, &t.ws_path, &to).await?
        }
    };
    let mut connect = Packet::Connect(Box::new(Connect {
        version: t.version,
        // 5.0 starts clean and keeps the session (expiry below); 3.x keeps it by Clean
        // Session 0 (client ids are unique per run, so nothing old is resumed).
        clean_start: !t.persistent || t.version.is_v5(),
        keep_alive: t.keep_alive,
        client_id: Str::new(Bytes::copy_from_slice(client_id.as_bytes()))
            .map_err(|e| e.to_string())?,
        will: None,
        username: t
            .username
            .as_deref()
            .map(|u| Str::new(Bytes::copy_from_slice(u.as_bytes())))
            .transpose()
            .map_err(|e| e.to_string())?,
        password: t
            .password
            .as_deref()
            .map(|p| Bytes::copy_from_slice(p.as_bytes())),
        properties: Default::default(),
    }));
    if let (true, Packet::Connect(c)) = (t.persistent && t.version.is_v5(), &mut connect) {
        c.properties.session_expiry_interval = Some(300);
    }
    send(
        &mut link,
        connect.to_bytes(t.version).map_err(|e| e.to_string())?,
    )
    .await?;
    let mut buf = BytesMut::with_capacity(4096);
    let answer = next_packet(&mut link, &mut buf, t.version).await;
    if answer.is_err() && t.transport == Transport::Tcp && buf.starts_with(b"HTTP/") {
        return Err(format!(
            "the broker answered CONNECT in HTTP ({}): a WebSocket port? (--transport ws)",
            first_line(&buf)
        ));
    }
    match answer? {
        Packet::ConnAck(a) if a.reason.is_success() => Ok((link, buf, a)),
        Packet::ConnAck(a) => Err(format!("CONNECT refused: {}", a.reason.name())),
        p => Err(format!("expected CONNACK, got {}", p.packet_type().name())),
    }
}

/// A subscriber: subscribe, then receive and check until the run ends.
pub async fn subscriber(local: Rc<Local>, sp: SubPlan, checks: Rc<RefCell<Vec<SeqCheck>>>) {
    if let Err(e) = subscribe_and_receive(&local, &sp, &checks).await
        && local.run.phase() < phase::DONE
    {
        local.run.fail(format!("subscriber {}: {e}", sp.id));
    }
}

async fn subscribe_and_receive(
    local: &Local,
    sp: &SubPlan,
    checks: &RefCell<Vec<SeqCheck>>,
) -> Result<()> {
    let (run, plan) = (&*local.run, &*local.plan);
    let version = local.target.version;
    let id = format!("{}-s{}", plan.id_prefix, sp.id);
    let (mut link, mut buf, _) = open(&local.target, Role::Subscriber, sp.id, &id).await?;
    local.fds.borrow_mut().push(link.fd());
    let filter = TopicFilter::new(Bytes::copy_from_slice(sp.filter.as_bytes()))
        .map_err(|e| format!("filter {}: {e}", sp.filter))?;
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(filter, SubscriptionOptions::qos(plan.qos))],
        properties: Default::default(),
    });
    send(&mut link, sub.to_bytes(version).map_err(|e| e.to_string())?).await?;
    match next_packet(&mut link, &mut buf, version).await? {
        Packet::SubAck(a) if a.reasons.first().is_some_and(|r| r.is_success()) => {}
        Packet::SubAck(a) => {
            return Err(format!(
                "SUBSCRIBE {} refused: {}",
                sp.filter,
                a.reasons.first().map_or("no reason code", |r| r.name())
            ));
        }
        p => return Err(format!("expected SUBACK, got {}", p.packet_type().name())),
    }
    run.ready.fetch_add(1, Ordering::AcqRel);

    let (lo, hi) = sp.from;
    let mut counts = vec![0u64; (hi - lo) as usize];
    let mut touched: Vec<usize> = Vec::new();
    let mut acks = BytesMut::with_capacity(4096);
    loop {
        if link.fill(&mut buf, READ_SIZE).await? == 0 {
            return Err("the broker closed the connection".into());
        }
        let now = run.now_ns();
        let measuring = run.phase() == phase::MEASURE;
        let (mut k, mut foreign) = (0u64, 0u64);
        {
            let mut checks = checks.borrow_mut();
            let mut hist = local.hist.borrow_mut();
            while let Some(p) =
                decode(&mut buf, version, u32::MAX).map_err(|e| format!("decode: {e}"))?
            {
                match p {
                    Packet::Publish(p) => {
                        let [a, b] = p.packet_id.to_be_bytes();
                        match p.qos {
                            QoS::AtMostOnce => {}
                            QoS::AtLeastOnce => acks.extend_from_slice(&[0x40, 2, a, b]),
                            QoS::ExactlyOnce => acks.extend_from_slice(&[0x50, 2, a, b]),
                        }
                        let Some(st) =
                            Stamp::read(&p.payload).filter(|s| (lo..hi).contains(&s.publisher))
                        else {
                            foreign += 1;
                            continue;
                        };
                        let i = (st.publisher - lo) as usize;
                        checks[i].record(st.seq);
                        if counts[i] == 0 {
                            touched.push(i);
                        }
                        counts[i] += 1;
                        if measuring {
                            hist.saturating_record(now.saturating_sub(st.sent_ns).max(1));
                        }
                        k += 1;
                    }
                    Packet::PubRel(r) => {
                        let [a, b] = r.packet_id.to_be_bytes();
                        acks.extend_from_slice(&[0x70, 2, a, b]);
                    }
                    Packet::Disconnect(d) => {
                        return Err(format!("the broker sent DISCONNECT {}", d.reason.name()));
                    }
                    _ => {}
                }
            }
        }
        for &i in &touched {
            let ps = &run.pubs[lo as usize + i];
            ps.delivered.fetch_add(counts[i], Ordering::AcqRel);
            ps.waker.wake();
            counts[i] = 0;
        }
        touched.clear();
        run.received.fetch_add(k, Ordering::AcqRel);
        if foreign > 0 {
            run.foreign.fetch_add(foreign, Ordering::Relaxed);
        }
        if !acks.is_empty() {
            send(&mut link, acks.split()).await?;
        }
    }
}

/// What a publisher's writer and reader share.
#[derive(Debug, Default)]
struct PubLocal {
    in_flight: Cell<u32>,
    /// Packet ids whose PUBREC arrived: PUBREL is due.
    rels: RefCell<Vec<u16>>,
    /// Packet ids in use.
    busy: RefCell<Vec<bool>>,
    closed: Cell<bool>,
}

/// A publisher: publish until the run drains, then finish the QoS 2 handshakes in flight.
pub async fn publisher(local: Rc<Local>, pp: PubPlan) {
    let r = publish(&local, &pp).await;
    local.run.pubs[pp.id as usize]
        .stopped
        .store(true, Ordering::Release);
    if let Err(e) = r
        && local.run.phase() < phase::DONE
    {
        local.run.fail(format!("publisher {}: {e}", pp.id));
    }
}

/// A PUBLISH frame to stamp copies of: where its payload and packet id sit.
struct Template {
    frame: Vec<u8>,
    payload_at: usize,
    id_at: Option<usize>,
}

impl Template {
    fn new(plan: &Plan, topic: &str) -> Result<Template> {
        let topic_name = TopicName::new(Bytes::copy_from_slice(topic.as_bytes()))
            .map_err(|e| format!("topic {topic}: {e}"))?;
        let p = Packet::Publish(Publish {
            qos: plan.qos,
            topic: topic_name,
            packet_id: u16::from(plan.qos != QoS::AtMostOnce),
            payload: Bytes::from(vec![0x5A; plan.payload]),
            ..Default::default()
        });
        let frame = p
            .to_bytes(plan.version)
            .map_err(|e| e.to_string())?
            .to_vec();
        let payload_at = frame.len() - plan.payload;
        let props = usize::from(plan.version == Version::V5);
        let id_at = (plan.qos != QoS::AtMostOnce).then(|| payload_at - props - 2);
        Ok(Template {
            frame,
            payload_at,
            id_at,
        })
    }
}

async fn publish(local: &Rc<Local>, pp: &PubPlan) -> Result<()> {
    let (run, plan) = (&*local.run, &*local.plan);
    let ps = &run.pubs[pp.id as usize];
    let id = format!("{}-p{}", plan.id_prefix, pp.id);
    let n = plan.subs.len() + pp.id as usize;
    let (link, _, connack) = open(&local.target, Role::Publisher, n, &id).await?;
    local.fds.borrow_mut().push(link.fd());
    let qos1 = plan.qos != QoS::AtMostOnce;
    let window = if qos1 {
        plan.window.min(u32::from(
            connack.properties.receive_maximum.unwrap_or(u16::MAX),
        ))
    } else {
        plan.window
    };
    let template = Template::new(plan, &pp.topic)?;
    let shared = Rc::new(PubLocal::default());
    if qos1 {
        *shared.busy.borrow_mut() = vec![false; 1 << 16];
    }
    let (rd, mut wr) = link.into_split();
    monoio::spawn(read_acks(local.clone(), pp.id, rd, shared.clone()));
    run.ready.fetch_add(1, Ordering::AcqRel);
    while run.phase() == phase::SETUP {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }

    let fanout = plan.fanout;
    let per_sec = plan.rate.map(|r| r / plan.pubs.len() as f64);
    let started = Instant::now();
    let per_write = (BATCH_BYTES / template.frame.len()).clamp(1, BATCH as usize) as u64;
    let (mut seq, mut written_off, mut next_id) = (0u64, 0u64, 0u16);
    let mut out: Vec<u8> = Vec::with_capacity(template.frame.len() * per_write as usize);
    loop {
        let publishing = run.phase() < phase::DRAIN;
        if shared.closed.get() || run.phase() == phase::DONE {
            return Ok(());
        }
        if !publishing {
            // Checked before any new batch: once this is set, `sent` no longer moves.
            ps.stopped.store(true, Ordering::Release);
        }
        if !publishing && shared.in_flight.get() == 0 {
            // Done: say goodbye, so the broker sees a clean end and no will.
            return wr.send(vec![0xE0, 0]).await.0;
        }
        let delivered = ps.delivered.load(Ordering::Acquire);
        let outstanding = (seq * fanout).saturating_sub(delivered + written_off);
        let mut credit = if publishing {
            (u64::from(window) * fanout).saturating_sub(outstanding) / fanout
        } else {
            0
        };
        if qos1 {
            credit = credit.min(u64::from(window - shared.in_flight.get().min(window)));
        }
        let mut due_in = None;
        if let Some(r) = per_sec {
            let due = (r * started.elapsed().as_secs_f64()) as u64;
            if due <= seq {
                due_in = Some(
                    Duration::from_secs_f64((seq + 1) as f64 / r).saturating_sub(started.elapsed()),
                );
            }
            credit = credit.min(due.saturating_sub(seq));
        }
        let n = credit.min(per_write);
        let rels = std::mem::take(&mut *shared.rels.borrow_mut());
        if n == 0 && rels.is_empty() {
            match due_in {
                Some(d)
                    if credit == 0 && window_open(outstanding, window, fanout, &shared, qos1) =>
                {
                    monoio::time::sleep(d.max(Duration::from_millis(1))).await;
                }
                _ => {
                    let moved =
                        monoio::time::timeout(QOS0_STALL, progress(ps, &shared, delivered, run))
                            .await;
                    if moved.is_err() && !qos1 && publishing {
                        written_off =
                            (seq * fanout).saturating_sub(ps.delivered.load(Ordering::Acquire));
                        run.stalls.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            continue;
        }
        for id in rels {
            let [a, b] = id.to_be_bytes();
            out.extend_from_slice(&[0x62, 2, a, b]);
        }
        let sent_ns = run.now_ns();
        {
            let mut busy = shared.busy.borrow_mut();
            for _ in 0..n {
                let at = out.len();
                out.extend_from_slice(&template.frame);
                Stamp {
                    publisher: pp.id,
                    seq,
                    sent_ns,
                }
                .write(&mut out[at + template.payload_at..]);
                if let Some(id_at) = template.id_at {
                    loop {
                        next_id = next_id.checked_add(1).unwrap_or(1);
                        if !busy[next_id as usize] {
                            break;
                        }
                    }
                    busy[next_id as usize] = true;
                    out[at + id_at..at + id_at + 2].copy_from_slice(&next_id.to_be_bytes());
                    shared.in_flight.set(shared.in_flight.get() + 1);
                }
                seq += 1;
            }
        }
        let (r, back) = wr.send(out).await;
        out = back;
        out.clear();
        r?;
        if n > 0 {
            ps.sent.store(seq, Ordering::Release);
            run.sent.fetch_add(n, Ordering::AcqRel);
        }
    }
}

fn window_open(outstanding: u64, window: u32, fanout: u64, shared: &PubLocal, qos1: bool) -> bool {
    outstanding < u64::from(window) * fanout && (!qos1 || shared.in_flight.get() < window)
}

/// Resolves when anything that could open the window changes.
async fn progress(ps: &PubShared, shared: &PubLocal, delivered: u64, run: &Run) {
    let in_flight = shared.in_flight.get();
    let phase = run.phase();
    poll_fn(|cx| {
        ps.waker.register(cx.waker());
        if ps.delivered.load(Ordering::Acquire) != delivered
            || shared.in_flight.get() != in_flight
            || !shared.rels.borrow().is_empty()
            || shared.closed.get()
            || run.phase() != phase
        {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

async fn read_acks(local: Rc<Local>, id: u32, mut rd: LinkRead, shared: Rc<PubLocal>) {
    let run = &*local.run;
    let version = local.target.version;
    let waker = &run.pubs[id as usize].waker;
    let mut buf = BytesMut::with_capacity(4096);
    let why = loop {
        match rd.fill(&mut buf, 4096).await {
            Ok(0) => break "the broker closed the connection".to_string(),
            Ok(_) => {}
            Err(e) => break e,
        }
        let mut busy = shared.busy.borrow_mut();
        loop {
            match decode(&mut buf, version, u32::MAX) {
                Ok(None) => break,
                Ok(Some(Packet::PubAck(a) | Packet::PubComp(a))) => {
                    if let Some(b) = busy.get_mut(a.packet_id as usize)
                        && *b
                    {
                        *b = false;
                        shared.in_flight.set(shared.in_flight.get() - 1);
                    }
                }
                Ok(Some(Packet::PubRec(a))) => shared.rels.borrow_mut().push(a.packet_id),
                Ok(Some(Packet::Disconnect(d))) => {
                    drop(busy);
                    shared.closed.set(true);
                    waker.wake();
                    if run.phase() < phase::DONE {
                        run.fail(format!(
                            "publisher {id}: the broker sent DISCONNECT {}",
                            d.reason.name()
                        ));
                    }
                    return;
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    drop(busy);
                    shared.closed.set(true);
                    waker.wake();
                    run.fail(format!("publisher {id}: decode: {e}"));
                    return;
                }
            }
        }
        drop(busy);
        waker.wake();
    };
    shared.closed.set(true);
    waker.wake();
    // After the drain the publisher's own DISCONNECT ends the connection.
    if run.phase() < phase::DRAIN {
        run.fail(format!("publisher {id}: {why}"));
    }
}

/// An idle connection: connect, record the handshake time, hold it until the run ends.
pub async fn idle(local: Rc<Local>, n: usize) {
    let id = format!("{}-c{n}", local.plan.id_prefix);
    let t0 = Instant::now();
    match open(&local.target, Role::Idle, n, &id).await {
        Ok((link, _, _)) => {
            local
                .hist
                .borrow_mut()
                .saturating_record(t0.elapsed().as_nanos() as u64);
            local.fds.borrow_mut().push(link.fd());
            local.held.borrow_mut().push(link);
            local.run.ready.fetch_add(1, Ordering::AcqRel);
        }
        Err(e) => local.run.fail(format!("connection {n}: {e}")),
    }
}
