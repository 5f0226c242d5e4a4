//! One client connection: a reader task, and a writer task while there is something to send,
//! on the shard that accepted it.
//!
//! - The **reader** reads into the free tail of its buffer (`slice_mut(len..capacity)`: monoio
//!   would otherwise read over unparsed bytes at offset 0), decodes every whole frame, lets the
//!   session handle each, applies the resulting actions, and flushes the mesh once per read, so
//!   a burst of publishes becomes one batch per destination shard. A connection whose buffer
//!   is empty after light traffic reads into a small buffer, so an idle connection pins
//!   [`IDLE_BUFFER`] bytes, not a full read buffer, under its pending read.
//! - The **writer** is parked (an [`Outlet`] in [`ConnShared`], no task) until its session's
//!   transmit buffer holds bytes; then a task swaps the buffer with its spare and sends
//!   everything in one `write_all`, so all frames encoded during one loop turn go out in one
//!   send (TCP_NODELAY is on, so batching happens here, not in Nagle), and parks the outlet
//!   again once nothing is left. An idle connection thus costs one task, not two.
//!
//! Closing from outside (keep alive expiry, takeover, a write error) shuts the socket's read
//! side down, which ends the pending read with EOF on both io_uring and epoll; a read is never
//! raced against a timer and dropped. The writer sends what is left (a 5.0 DISCONNECT, say),
//! [lingers](super::linger) until the peer has it, then shuts the write side.
//!
//! Runs on the shard that accepted the socket, for the connection's whole life.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Split,
    Splitable,
};

use super::state::{Limit, Shard};
use super::throttle::Throttle;
use super::verify::{Verdict, Verification};
use super::websocket::{WsReader, WsWriter};
use super::wheel::Watched;
use crate::auth::hooks::{Authz, ClientInfo};
use crate::auth::{Client, Conversation, Reply};
use crate::protocol::session::{Session, check_connect, encode_refusal};
use crate::protocol::{Auth, Connect, Packet, ReasonCode, Str, Version, decode};

/// Read buffer of a connection that has gone quiet (bytes).
pub const IDLE_BUFFER: usize = 256;
/// A spare write buffer larger than this is released after a write (bytes).
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

/// What the shard and the connection's two tasks share.
pub struct ConnShared {
    /// Names the connection broker-wide (the directory records it).
    pub token: u64,
    fd: RawFd,
    /// The session slot once the connection owns a session.
    pub slot: Cell<Option<usize>>,
    heard: Cell<Option<u32>>,
    grace: Cell<u32>,
    closing: Cell<bool>,
    /// The writing side while no writer task runs (see [`Outlet`]).
    outlet: Cell<Option<Box<dyn Parked>>>,
    reader: Cell<Option<Waker>>,
    granted: RefCell<Option<Option<Box<Session>>>>,
    leftover: RefCell<BytesMut>,
    /// WebSocket control frames (Pong, Close) to send before anything else, framed.
    control: RefCell<BytesMut>,
    /// A WebSocket Close was queued: nothing may follow it (RFC 6455 §5.5.1).
    close_sent: Cell<bool>,
    /// Generation of the connection's keep alive wheel entry (see [`Filed`]).
    filed: Cell<u8>,
}

impl std::fmt::Debug for ConnShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnShared")
            .field("token", &self.token)
            .field("slot", &self.slot.get())
            .field("closing", &self.closing.get())
            .finish_non_exhaustive()
    }
}

impl ConnShared {
    pub(super) fn new(token: u64, fd: RawFd, now: u32, grace: u32) -> Self {
        Self {
            token,
            fd,
            slot: Cell::new(None),
            heard: Cell::new(Some(now)),
            grace: Cell::new(grace),
            closing: Cell::new(false),
            outlet: Cell::new(None),
            reader: Cell::new(None),
            granted: RefCell::new(None),
            leftover: RefCell::new(BytesMut::new()),
            control: RefCell::new(BytesMut::new()),
            close_sent: Cell::new(false),
            filed: Cell::new(0),
        }
    }

    /// Starts the writer if it is parked (there is something to send, or the connection
    /// is closing); a running writer looks again before it parks.
    pub fn wake_writer(&self) {
        if let Some(parked) = self.outlet.take() {
            parked.start();
        }
    }

    /// Queues a WebSocket control frame `encode` writes (a Close when `close`: the last
    /// one) and wakes the writer.
    pub fn send_control(&self, close: bool, encode: impl FnOnce(&mut BytesMut)) {
        if self.close_sent.get() {
            return;
        }
        encode(&mut self.control.borrow_mut());
        self.close_sent.set(close);
        self.wake_writer();
    }

    /// Whether the connection is being closed.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Closes the connection: ends the pending read with EOF and lets the writer send what is
    /// left, then finish.
    pub fn close(&self) {
        if self.closing.replace(true) {
            return;
        }
        if self.heard.get().is_some() {
            // SAFETY: `heard` is `Some` until the reader task finishes, and the reader holds
            // its half of the socket until then, so `fd` is still this connection's open
            // socket. shutdown(2) has no memory-safety preconditions beyond a valid fd.
            unsafe {
                libc::shutdown(self.fd, libc::SHUT_RD);
            }
        }
        self.wake_writer();
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// The directory granted this connection its client id, with the session to resume.
    pub fn grant(&self, session: Option<Box<Session>>) {
        *self.granted.borrow_mut() = Some(session);
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// Moves what the session still had to send to this connection's own buffer (the session
    /// is leaving the connection: disconnect or takeover).
    pub fn detach_from(&self, session: &mut Session) {
        let mut tx = BytesMut::new();
        session.swap_tx(&mut tx);
        self.leftover.borrow_mut().extend_from_slice(&tx);
        self.wake_writer();
    }

    fn set_grace(&self, grace: u32) {
        self.grace.set(grace);
    }
}

/// A connection as the keep alive wheel files it: with the filing generation, so that when
/// CONNACK shortens the grace from the connect timeout to 1.5 × Keep Alive and the connection
/// is filed again, the earlier entry drops out instead of being checked forever.
#[derive(Debug, Clone)]
pub struct Filed(pub Rc<ConnShared>, u8);

impl Filed {
    /// Files `conn` anew (invalidating its earlier entry).
    pub fn new(conn: &Rc<ConnShared>) -> Self {
        let generation = conn.filed.get().wrapping_add(1);
        conn.filed.set(generation);
        Filed(conn.clone(), generation)
    }
}

impl Watched for Filed {
    fn last_heard(&self) -> Option<u32> {
        if self.0.closing.get() || self.0.filed.get() != self.1 {
            None
        } else {
            self.0.heard.get()
        }
    }

    fn grace(&self) -> u32 {
        self.0.grace.get()
    }
}

/// What a connection runs over: a TCP socket, or TLS on one.
pub trait Transport: AsyncReadRent + AsyncWriteRent + Split + 'static {}

impl<S: AsyncReadRent + AsyncWriteRent + Split + 'static> Transport for S {}

/// Where an accepted connection came from, as CONNECT handling needs to know it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The remote address.
    pub peer: Option<SocketAddr>,
    /// Accepted on a TLS listener.
    pub tls: bool,
    /// The common name of the client certificate the TLS handshake verified.
    pub identity: Option<String>,
    /// The listener's transport, for the log: `tcp`, `tls`, `websocket` or `secure websocket`.
    pub transport: &'static str,
}

/// The reading side of a connection: the socket's read half, through the WebSocket decoder
/// on a WebSocket listener.
struct Source<S: Transport> {
    rd: OwnedReadHalf<S>,
    /// Boxed: most connections are plain MQTT, and this is part of every connection's task.
    ws: Option<Box<WsReader>>,
    /// MQTT bytes read and not yet added to the shard's count.
    uncounted: u64,
}

impl<S: Transport> Source<S> {
    /// Appends what the client sent next to `buf` (MQTT bytes); `Ok(0)` on EOF.
    async fn fill(
        &mut self,
        buf: &mut BytesMut,
        want: usize,
        conn: &ConnShared,
    ) -> std::io::Result<usize> {
        let n = match &mut self.ws {
            None => fill(&mut self.rd, buf, want).await,
            // Boxed: the WebSocket reader's state would otherwise make every connection's
            // task (plain TCP ones too) that much larger while it waits for bytes.
            Some(ws) => Box::pin(ws.fill(&mut self.rd, buf, want, conn)).await,
        }?;
        self.uncounted += n as u64;
        Ok(n)
    }
}

/// Serves one accepted connection until it closes. `fd` is its TCP socket (shut down to
/// close it). `ws`: the connection speaks WebSocket (its upgrade is done).
///
/// The setup runs at once; the returned task holds only what the connection needs while it
/// lives (an async fn would keep its arguments for its whole life), because every idle
/// connection is one such task.
pub fn serve<S: Transport>(
    shard: Rc<RefCell<Shard>>,
    stream: S,
    fd: RawFd,
    origin: Origin,
    ws: Option<WsReader>,
) -> impl std::future::Future<Output = ()> {
    let conn = {
        let mut s = shard.borrow_mut();
        let grace = s.shared.config.limits.connect_timeout_secs.max(1);
        let conn = Rc::new(ConnShared::new(s.new_token(), fd, s.now, grace));
        s.wheel.insert(Filed::new(&conn));
        conn
    };
    let transport = crate::metrics::Transport::of(origin.tls, ws.is_some()) as usize;
    {
        let mut s = shard.borrow_mut();
        s.stats.connections[transport] += 1;
        s.stats.accepted[transport] += 1;
    }
    let (rd, wr) = stream.into_split();
    let mut framing = ws.is_some().then(Box::<WsWriter>::default);
    let spare = match framing.as_mut() {
        Some(ws) => ws.prepare(BytesMut::new()),
        None => BytesMut::new(),
    };
    // Parked until there is something to send (the connection and its outlet refer to each
    // other until the writer's last run, at close, drops the outlet).
    conn.outlet.set(Some(Box::new(Outlet {
        shard: shard.clone(),
        conn: conn.clone(),
        wr,
        ws: framing,
        spare,
    })));
    let rd = Source {
        rd,
        ws: ws.map(Box::new),
        uncounted: 0,
    };
    run(shard, conn, rd, Box::new(origin), transport)
}

/// A connection's reading side until it ends, then its teardown.
async fn run<S: Transport>(
    shard: Rc<RefCell<Shard>>,
    conn: Rc<ConnShared>,
    mut rd: Source<S>,
    origin: Box<Origin>,
    transport: usize,
) {
    let origin_peer = origin.peer;
    // The handshake is boxed: its state (CONNECT, authentication) lives on the heap only
    // until CONNACK, so an idle connection's task is only as large as the packet loop's.
    let why = match Box::pin(handshake(&shard, &conn, &mut rd, origin)).await {
        // By reference: an async fn keeps its arguments for its whole life, so a moved
        // `Established` would take its space twice in every idle connection's task.
        Ok(mut e) => packets(&shard, &conn, &mut rd, &mut e).await,
        Err(why) => why,
    };
    if conn.slot.get().is_none() {
        tracing::debug!(token = conn.token, peer = ?origin_peer, why, "connection closed before CONNACK");
    }
    if let Some(slot) = conn.slot.get() {
        let authz = {
            let mut s = shard.borrow_mut();
            let entry = s.sessions.get(slot).filter(|e| e.token == conn.token);
            if let Some(e) = entry {
                tracing::info!(
                    client_id = %e.session.client_id().as_str(),
                    peer = %origin_peer.map_or_else(String::new, |p| p.to_string()),
                    version = version_label(e.session.version()),
                    reason = why,
                    "client disconnected"
                );
            }
            let authz = entry.and_then(|e| e.session.authz_shared());
            s.disconnected(slot, &conn);
            authz
        };
        if let Some((h, c)) = authz.as_deref().and_then(Authz::hooks) {
            h.on_disconnect(c, why);
        }
    }
    // From here the read half is dropped; `close` must not touch the fd any more.
    conn.heard.set(None);
    conn.closing.set(true);
    conn.wake_writer();
    drop(rd);
    let mut s = shard.borrow_mut();
    s.open_connections -= 1;
    s.stats.connections[transport] -= 1;
    s.shared.connections.fetch_sub(1, Ordering::Relaxed);
}

/// The protocol version as logged.
fn version_label(v: Version) -> &'static str {
    match v {
        Version::V3_1 => "3.1",
        Version::V3_1_1 => "3.1.1",
        Version::V5 => "5.0",
    }
}

/// Queues a packet for a connection that has no session yet (AUTH during CONNECT).
fn send_early(conn: &ConnShared, version: Version, p: &Packet) {
    let mut out = BytesMut::new();
    let _ = p.encode(version, &mut out);
    conn.leftover.borrow_mut().extend_from_slice(&out);
    conn.wake_writer();
}

/// The next whole packet of a connection that has no session yet, read in small reads (its
/// strings may be kept).
async fn next_packet<S: Transport>(
    rd: &mut Source<S>,
    buf: &mut BytesMut,
    conn: &ConnShared,
    version: Version,
    max_packet: u32,
) -> Result<Packet, &'static str> {
    loop {
        match decode(buf, version, max_packet) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(token = conn.token, error = %e, "malformed packet before CONNACK");
                return Err("malformed packet");
            }
        }
        match rd.fill(buf, IDLE_BUFFER, conn).await {
            Ok(0) | Err(_) => return Err("closed during authentication"),
            Ok(_) => {}
        }
        if conn.is_closing() {
            return Err("connect timeout");
        }
    }
}

/// Whether a CONNECT's user name and password let it in. The embedder's hooks are asked
/// first (on the authentication thread); without an opinion from them: without a user name,
/// as `auth.allow_anonymous` says (else 0x87 / return code 5); with one and a password file,
/// if the authentication thread finds them in it (else 0x86 / 4); with one and no password
/// file, as anonymous. A full authentication queue refuses with 0x89 / 3.
async fn check_password(
    shard: &Rc<RefCell<Shard>>,
    conn: &ConnShared,
    connect: &Connect,
    client: impl FnOnce() -> ClientInfo,
) -> Result<(), (ReasonCode, &'static str)> {
    let shared = shard.borrow().shared.clone();
    let password = connect.password.as_deref();
    let busy = || {
        shard.borrow_mut().stats.hit(Limit::AuthQueue);
        (ReasonCode::SERVER_BUSY, "authentication queue full")
    };
    if let Some(v) = shared.verifier.as_ref().filter(|v| v.hooks.is_some()) {
        let ask = v.authenticate(client(), password).map_err(|_| busy())?;
        match answer(conn, ask).await {
            Some(Verdict::Accepted) => return Ok(()),
            Some(Verdict::Denied(reason)) => return Err((reason, "refused by the hook")),
            Some(Verdict::Refused) => {
                return Err((ReasonCode::BAD_USER_NAME_OR_PASSWORD, "refused by the hook"));
            }
            Some(Verdict::Default) => {}
            None => return Err((ReasonCode::NOT_AUTHORIZED, "connect timeout")),
        }
    }
    let anonymous = shared.config.auth.anonymous_allowed();
    let with_file = shared.config.auth.password_file.is_some();
    let (Some(user), Some(verifier), true) = (&connect.username, &shared.verifier, with_file)
    else {
        return if connect.username.is_none() && !anonymous {
            Err((ReasonCode::NOT_AUTHORIZED, "anonymous client refused"))
        } else if connect.username.is_some() && !anonymous {
            // No password file to check the user name against.
            Err((ReasonCode::NOT_AUTHORIZED, "no password file: user refused"))
        } else {
            Ok(())
        };
    };
    let check = verifier
        .verify(user.as_str(), password.unwrap_or_default())
        .map_err(|_| busy())?;
    match answer(conn, check).await {
        Some(Verdict::Accepted) => Ok(()),
        Some(_) => Err((
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "bad user name or password",
        )),
        None => Err((ReasonCode::NOT_AUTHORIZED, "connect timeout")),
    }
}

/// Waits for the authentication thread's answer, or for the connection to be closed (the
/// connect timeout).
async fn answer(conn: &ConnShared, mut v: Verification) -> Option<Verdict> {
    poll_fn(|cx| {
        if let Poll::Ready(verdict) = std::pin::Pin::new(&mut v).poll(cx) {
            return Poll::Ready(Some(verdict));
        }
        if conn.is_closing() {
            return Poll::Ready(None);
        }
        conn.reader.set(Some(cx.waker().clone()));
        Poll::Pending
    })
    .await
}

/// Reads into the free tail of `buf` (monoio would otherwise read over unparsed bytes at
/// offset 0), first making room for `want` bytes when less than half of that is free.
/// `Ok(0)` on EOF. Also used by the bench clients.
pub async fn fill(
    rd: &mut impl AsyncReadRent,
    buf: &mut BytesMut,
    want: usize,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let b = std::mem::take(buf);
    let (res, slice) = rd.read(b.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    res
}

/// What the packet loop needs of a connection that got its CONNACK (kept small: it is part
/// of every idle connection's task).
struct Established {
    buf: BytesMut,
    version: Version,
    slot: usize,
    /// The enhanced authentication method's conversation, for re-authentication (5.0).
    reauth: Option<Box<Reauth>>,
    read_buffer: usize,
    max_packet: u32,
}

/// A 5.0 connection's enhanced authentication, kept for AUTH packets after CONNACK.
struct Reauth {
    conversation: Conversation,
    client_id: Str,
    username: Option<Str>,
}

/// From the first byte to CONNACK: CONNECT, authentication, the client id's claim, the
/// session installed. `Err`: why the connection ends.
async fn handshake<S: Transport>(
    shard: &Rc<RefCell<Shard>>,
    conn: &Rc<ConnShared>,
    rd: &mut Source<S>,
    origin: Box<Origin>,
) -> Result<Established, &'static str> {
    let peer = origin.peer;
    let (read_buffer, max_packet, max_client_id) = {
        let s = shard.borrow();
        let l = &s.shared.config.limits;
        (
            l.read_buffer.max(IDLE_BUFFER),
            l.max_packet_size,
            l.max_client_id_len,
        )
    };
    let mut buf = BytesMut::with_capacity(IDLE_BUFFER);

    // CONNECT: the first packet [MQTT-3.1.0-1], within the connect timeout (the wheel closes
    // the socket otherwise, ending the read).
    let mut connect: Box<Connect> = loop {
        match decode(&mut buf, Version::V3_1_1, max_packet) {
            Ok(Some(Packet::Connect(c))) => break c,
            Ok(Some(_)) => return Err("first packet was not CONNECT [MQTT-3.1.0-1]"),
            Ok(None) => {}
            Err(e) => {
                if e.reason == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION {
                    let mut out = BytesMut::new();
                    encode_refusal(Version::V3_1_1, e.reason, &mut out);
                    conn.leftover.borrow_mut().extend_from_slice(&out);
                    conn.wake_writer();
                }
                tracing::debug!(token = conn.token, error = %e, "bad CONNECT");
                return Err("malformed CONNECT");
            }
        }
        // Small reads: the CONNECT's strings (client id, will) point into this buffer and
        // keep it alive as long as the session, so it must not be a full read buffer.
        match rd.fill(&mut buf, IDLE_BUFFER, conn).await {
            Ok(0) | Err(_) => return Err("closed before CONNECT"),
            Ok(_) => {}
        }
        if conn.is_closing() {
            return Err("connect timeout");
        }
    };
    let version = connect.version;
    // The CONNECT's strings point into the read buffer; what the session keeps (the client
    // id, the will's topic and payload) is copied out, so that buffer is freed after CONNACK
    // (every idle connection would otherwise hold two).
    connect.client_id = connect.client_id.detached();
    if let Some(w) = connect.will.as_mut() {
        w.topic = w.topic.detached();
        w.payload = Bytes::copy_from_slice(&w.payload);
    }

    // `tls.use_identity_as_username`: on a TLS listener the verified client certificate's
    // common name is the user name, and no password is checked (as in mosquitto).
    let by_certificate = origin.tls && shard.borrow().shared.config.tls.use_identity_as_username;
    if by_certificate {
        match origin.identity {
            Some(cn) => connect.username = Some(Str::new_unchecked(cn.into())),
            None => {
                let mut out = BytesMut::new();
                encode_refusal(version, ReasonCode::NOT_AUTHORIZED, &mut out);
                conn.leftover.borrow_mut().extend_from_slice(&out);
                conn.wake_writer();
                return Err("client certificate without a common name");
            }
        }
    }

    // Enhanced authentication (§4.12): CONNECT names a method; AUTH packets go back and forth
    // until the method accepts (CONNACK 0x00 with its final data) or refuses. The connect
    // timeout bounds the whole exchange (nothing refreshes `heard` before CONNACK).
    let mut conversation: Option<Conversation> = None;
    let mut auth_done: Option<(Str, Option<Bytes>)> = None;
    if let (true, Some(method)) = (
        version.is_v5(),
        connect.properties.authentication_method.clone(),
    ) {
        let auths = shard.borrow().shared.authenticators.clone();
        let client = Client {
            client_id: connect.client_id.as_str(),
            username: connect.username.as_ref().map(|u| u.as_str()),
        };
        let data = connect
            .properties
            .authentication_data
            .as_deref()
            .unwrap_or(&[]);
        let (mut conv, mut reply) = Conversation::connect(&auths, client, method.as_str(), data);
        loop {
            match reply {
                Reply::Auth { reason, data } => {
                    let mut auth = Auth {
                        reason,
                        properties: Default::default(),
                    };
                    auth.properties.authentication_method = Some(method.clone());
                    auth.properties.authentication_data = data.map(Bytes::from);
                    send_early(conn, version, &Packet::Auth(auth));
                    let packet = match next_packet(rd, &mut buf, conn, version, max_packet).await {
                        Ok(p) => p,
                        Err(why) => return Err(why),
                    };
                    reply = match packet {
                        Packet::Auth(a) => conv.auth(&auths, client, &a),
                        Packet::Disconnect(_) => return Err("DISCONNECT during authentication"),
                        _ => Reply::ConnAck {
                            reason: ReasonCode::PROTOCOL_ERROR,
                            data: None,
                        },
                    };
                }
                Reply::ConnAck { reason, data } if reason.is_success() => {
                    auth_done = Some((method.clone(), data.map(Bytes::from)));
                    break;
                }
                Reply::ConnAck { reason, .. } | Reply::Disconnect { reason } => {
                    let mut out = BytesMut::new();
                    encode_refusal(version, reason, &mut out);
                    conn.leftover.borrow_mut().extend_from_slice(&out);
                    conn.wake_writer();
                    tracing::debug!(token = conn.token, %reason, "authentication refused");
                    return Err("authentication refused");
                }
            }
        }
        conversation = Some(conv);
    }

    // User name and password (unless enhanced authentication let the client in): checked on
    // the authentication thread against the password file.
    let who = |client_id: &str| ClientInfo {
        client_id: client_id.to_string(),
        username: connect.username.as_ref().map(|u| u.as_str().to_string()),
        peer,
    };
    if auth_done.is_none() && !by_certificate {
        let checked = check_password(shard, conn, &connect, || who(connect.client_id.as_str()));
        if let Err((reason, why)) = checked.await {
            {
                let mut s = shard.borrow_mut();
                if reason == ReasonCode::BAD_USER_NAME_OR_PASSWORD {
                    s.stats.auth_bad_credentials += 1;
                } else if reason != ReasonCode::SERVER_BUSY {
                    s.stats.auth_not_authorized += 1;
                }
            }
            let mut out = BytesMut::new();
            encode_refusal(version, reason, &mut out);
            conn.leftover.borrow_mut().extend_from_slice(&out);
            conn.wake_writer();
            tracing::debug!(token = conn.token, %reason, "{why}");
            return Err(why);
        }
    }

    // A will the broker could not publish as asked is refused with the CONNECT
    // [MQTT-3.2.2-12] (QoS above Maximum QoS: 0x9B; RETAIN without Retain Available: 0x9A).
    let will_refusal = {
        let s = shard.borrow();
        connect.will.as_ref().and_then(|w| {
            if w.qos > s.limits.maximum_qos {
                Some(ReasonCode::QOS_NOT_SUPPORTED)
            } else if w.retain && !s.limits.retain_available {
                Some(ReasonCode::RETAIN_NOT_SUPPORTED)
            } else {
                None
            }
        })
    };
    if let Some(reason) = will_refusal {
        let mut out = BytesMut::new();
        encode_refusal(version, reason, &mut out);
        conn.leftover.borrow_mut().extend_from_slice(&out);
        conn.wake_writer();
        return Err("will refused");
    }

    let accepted = {
        let s = shard.borrow();
        let token = conn.token;
        let id = s.id;
        check_connect(&connect, max_client_id, || {
            let prefix = &s.shared.assigned_prefix;
            Str::new_unchecked(format!("shardmq-{prefix}-{id}-{token:x}").into())
        })
    };
    let accepted = match accepted {
        Ok(a) => a,
        Err(reason) => {
            if connect.client_id.len() > max_client_id {
                shard.borrow_mut().stats.hit(Limit::MaxClientIdLen);
            }
            let mut out = BytesMut::new();
            encode_refusal(version, reason, &mut out);
            conn.leftover.borrow_mut().extend_from_slice(&out);
            conn.wake_writer();
            return Err("client identifier refused");
        }
    };

    // What the ACL and the hooks let this client do; a will it may not publish refuses the
    // CONNECT.
    let authz = {
        let s = shard.borrow();
        let user = connect.username.as_ref().map(|u| u.as_str());
        let acl = s
            .shared
            .acl
            .load()
            .as_ref()
            .map(|a| a.for_client(accepted.client_id.as_str(), user));
        let hooks = s.shared.verifier.as_ref().and_then(|v| v.hooks.clone());
        (acl.is_some() || hooks.is_some()).then(|| {
            Arc::new(Authz {
                client: who(accepted.client_id.as_str()),
                acl,
                hooks,
            })
        })
    };
    let will_denied = match (&authz, &connect.will) {
        (Some(z), Some(w)) => !z.allows_publish(w.topic.as_str()),
        _ => false,
    };
    if will_denied {
        let mut out = BytesMut::new();
        encode_refusal(version, ReasonCode::NOT_AUTHORIZED, &mut out);
        conn.leftover.borrow_mut().extend_from_slice(&out);
        conn.wake_writer();
        return Err("will topic denied by the ACL");
    }

    // Claim the client id from its directory shard; wait for the grant (with the session to
    // resume, if any).
    shard.borrow_mut().claim(
        conn.clone(),
        accepted.client_id.clone(),
        connect.clean_start,
    );
    let granted = poll_fn(|cx| {
        if let Some(g) = conn.granted.borrow_mut().take() {
            return Poll::Ready(Some(g));
        }
        if conn.is_closing() {
            return Poll::Ready(None);
        }
        conn.reader.set(Some(cx.waker().clone()));
        Poll::Pending
    })
    .await;
    let Some(granted) = granted else {
        return Err("superseded by a newer connection with the same client id");
    };

    let slot = {
        let mut s = shard.borrow_mut();
        let (mut session, present) = match granted {
            Some(old) if !connect.clean_start => (old, true),
            _ => (
                Box::new(Session::new(accepted.client_id.clone(), s.limits.clone())),
                false,
            ),
        };
        session.attach(&connect);
        session.set_authz(authz.clone());
        let keep_alive = session.keep_alive();
        let assigned = accepted.assigned.then_some(&accepted.client_id);
        let now = s.now;
        session.connack(present, &connect, assigned, auth_done.take(), now);
        let grace = if keep_alive == 0 {
            u32::MAX
        } else {
            u32::from(keep_alive) * 3 / 2 + 1
        };
        conn.set_grace(grace);
        conn.heard.set(Some(s.now));
        if keep_alive != 0 {
            s.wheel.insert(Filed::new(conn));
        }
        let slot = s.install(session, conn.token, Some(conn.clone()));
        conn.slot.set(Some(slot));
        conn.wake_writer();
        tracing::info!(
            client_id = %accepted.client_id.as_str(),
            peer = %peer.map_or_else(String::new, |p| p.to_string()),
            version = version_label(version),
            transport = origin.transport,
            clean_start = connect.clean_start,
            keep_alive,
            session_present = present,
            username = connect.username.as_ref().map_or("", |u| u.as_str()),
            "client connected"
        );
        slot
    };
    if let Some((h, c)) = authz.as_deref().and_then(Authz::hooks) {
        h.on_connect(c);
    }
    let username = connect.username.clone();
    drop(connect);

    Ok(Established {
        buf,
        version,
        slot,
        reauth: conversation.map(|conversation| {
            Box::new(Reauth {
                conversation,
                client_id: accepted.client_id,
                username,
            })
        }),
        read_buffer,
        max_packet,
    })
}

/// The packets of a connection after CONNACK, until it ends; returns why.
async fn packets<S: Transport>(
    shard: &Rc<RefCell<Shard>>,
    conn: &Rc<ConnShared>,
    rd: &mut Source<S>,
    e: &mut Established,
) -> &'static str {
    let (version, slot, read_buffer, max_packet) = (e.version, e.slot, e.read_buffer, e.max_packet);
    let Established { buf, reauth, .. } = e;
    let mut actions = Vec::new();
    let mut last_read = 0usize;
    let (rate, burst) = {
        let l = &shard.borrow().shared.config.limits;
        (l.max_publish_rate, l.publish_burst)
    };
    // Boxed: most connections have no publish rate limit, and this is part of every idle
    // connection's task.
    let mut throttle = Throttle::new(rate, burst, std::time::Instant::now()).map(Box::new);
    let mut published = 0u32;
    loop {
        // Handle every whole frame in the buffer.
        loop {
            let mut s = shard.borrow_mut();
            let now = s.now;
            let Some(e) = s.sessions.get_mut(slot).filter(|e| e.token == conn.token) else {
                return "session taken over";
            };
            match decode(buf, version, max_packet) {
                Ok(Some(Packet::Auth(a))) if reauth.is_some() => {
                    conn.heard.set(Some(now));
                    // Re-authentication (§4.12.1), on the method the CONNECT chose.
                    let Some(Reauth {
                        conversation: conv,
                        client_id,
                        username,
                    }) = reauth.as_deref_mut()
                    else {
                        break;
                    };
                    let auths = s.shared.authenticators.clone();
                    let Some(e) = s.sessions.get_mut(slot) else {
                        return "session taken over";
                    };
                    let client = Client {
                        client_id: client_id.as_str(),
                        username: username.as_ref().map(|u| u.as_str()),
                    };
                    match conv.auth(&auths, client, &a) {
                        Reply::Auth { reason, data } => {
                            let mut auth = Auth {
                                reason,
                                properties: Default::default(),
                            };
                            auth.properties.authentication_method =
                                Str::new(Bytes::copy_from_slice(conv.method().as_bytes())).ok();
                            auth.properties.authentication_data = data.map(Bytes::from);
                            e.session.send(&Packet::Auth(auth));
                            conn.wake_writer();
                        }
                        Reply::ConnAck { reason, .. } | Reply::Disconnect { reason } => {
                            e.session.disconnect_with(reason);
                            conn.wake_writer();
                            return "re-authentication refused";
                        }
                    }
                }
                Ok(Some(p)) => {
                    // Keep Alive counts whole Control Packets [MQTT-3.1.2-24]: bytes trickling
                    // in (a packet sent a byte at a time) do not keep a connection alive.
                    conn.heard.set(Some(now));
                    published += u32::from(matches!(p, Packet::Publish(_)));
                    let r = e.session.handle(p, now, &mut actions);
                    if let Err(err) = r {
                        tracing::debug!(token = conn.token, error = %err, "protocol error");
                        e.session.disconnect_because(err.reason, Some(err.what));
                        conn.wake_writer();
                        return "protocol error";
                    }
                    conn.wake_writer();
                    // A DISCONNECT: the session already dropped its will unless 5.0 reason
                    // 0x04 asked to publish it, which `disconnected` then does.
                    if s.apply(slot, &mut actions).is_some() {
                        s.flush();
                        return "DISCONNECT";
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(token = conn.token, error = %err, "malformed packet");
                    e.session.disconnect_because(err.reason, Some(err.what));
                    if err.reason == ReasonCode::PACKET_TOO_LARGE {
                        s.stats.hit(Limit::MaxPacketSize);
                    }
                    conn.wake_writer();
                    return "malformed packet";
                }
            }
        }
        shard.borrow_mut().flush();
        // Over its publish rate: this client is not read until it is within it again.
        if let Some(t) = throttle.as_mut() {
            let wait = t.take(std::mem::take(&mut published), std::time::Instant::now());
            if !wait.is_zero() {
                shard.borrow_mut().stats.hit(Limit::PublishRate);
                Box::pin(monoio::time::sleep(wait)).await;
                if conn.is_closing() {
                    return "closed";
                }
            }
        }
        // A full ring to another shard: stop reading until it drains (TCP backpressure).
        while shard.borrow().backpressured() {
            // Boxed: a `Sleep` is 640 bytes aligned to 128, and every idle connection's
            // future would carry that space.
            Box::pin(monoio::time::sleep(Duration::from_millis(1))).await;
            if conn.is_closing() {
                return "closed";
            }
        }
        if buf.is_empty() && last_read < read_buffer / 4 && buf.capacity() > IDLE_BUFFER {
            *buf = BytesMut::with_capacity(IDLE_BUFFER);
        }
        let want = if buf.capacity() <= IDLE_BUFFER && last_read < IDLE_BUFFER {
            IDLE_BUFFER
        } else {
            read_buffer
        };
        match rd.fill(buf, want, conn).await {
            Ok(0) => return "closed by peer",
            Err(_) => return "read error",
            Ok(n) => last_read = n,
        }
        if conn.is_closing() {
            return "closed by the broker";
        }
        let mut s = shard.borrow_mut();
        s.stats.bytes_in += std::mem::take(&mut rd.uncounted);
    }
}

/// What the writer takes out to send next.
enum Outgoing {
    /// Framed WebSocket control frames: sent as they are.
    Control,
    /// MQTT bytes the connection queued before (or after) it had a session.
    Leftover,
    /// MQTT bytes from the session's transmit buffer.
    Session,
    /// Nothing to send now: the writer parks.
    Idle,
    /// Nothing more: the connection is closing.
    Done,
}

/// A connection's writing side. Between bursts it is parked in [`ConnShared`] and no task
/// runs for it: [`ConnShared::wake_writer`] starts one, which sends until nothing is left
/// and parks the outlet again. So an idle connection is one task (its reader), not two.
pub(super) struct Outlet<S: Transport> {
    shard: Rc<RefCell<Shard>>,
    conn: Rc<ConnShared>,
    wr: OwnedWriteHalf<S>,
    /// Boxed: most connections are plain MQTT.
    ws: Option<Box<WsWriter>>,
    /// The buffer swapped with the session's transmit buffer at the next send.
    spare: BytesMut,
}

/// A parked [`Outlet`], whatever its transport.
pub(super) trait Parked {
    /// Spawns the writer task on the current shard.
    fn start(self: Box<Self>);
}

impl<S: Transport> Parked for Outlet<S> {
    fn start(self: Box<Self>) {
        monoio::spawn(write_out(self));
    }
}

impl<S: Transport> Outlet<S> {
    /// Takes what to send next into `batch`.
    fn next(&mut self, batch: &mut BytesMut) -> Outgoing {
        let conn = &self.conn;
        {
            let mut control = conn.control.borrow_mut();
            if !control.is_empty() {
                *batch = control.split();
                return Outgoing::Control;
            }
        }
        if conn.close_sent.get() {
            // Nothing may follow a WebSocket Close.
            return Outgoing::Done;
        }
        {
            let mut left = conn.leftover.borrow_mut();
            if !left.is_empty() {
                *batch = left.split();
                return Outgoing::Leftover;
            }
        }
        if let Some(slot) = conn.slot.get() {
            let mut s = self.shard.borrow_mut();
            if let Some(e) = s.sessions.get_mut(slot).filter(|e| e.token == conn.token) {
                if e.session.tx_len() > 0 {
                    e.session.swap_tx(&mut self.spare);
                    if let Some(ws) = self.ws.as_mut() {
                        ws.lend();
                    }
                    *batch = std::mem::take(&mut self.spare);
                    return Outgoing::Session;
                }
            }
        }
        if conn.is_closing() {
            return Outgoing::Done;
        }
        Outgoing::Idle
    }
}

/// A connection's writer task: sends until nothing is left, then parks its outlet (or, when
/// the connection is closing, lingers and shuts the write side).
async fn write_out<S: Transport>(mut out: Box<Outlet<S>>) {
    loop {
        let mut batch = BytesMut::new();
        let what = out.next(&mut batch);
        let (head, frame) = match (&what, out.ws.as_mut()) {
            (Outgoing::Idle, _) => {
                let conn = out.conn.clone();
                conn.outlet.set(Some(out));
                return;
            }
            (Outgoing::Done, _) => break,
            (Outgoing::Control, _) | (_, None) => (None, batch),
            (Outgoing::Leftover, Some(ws)) => ws.frame(batch, false),
            (Outgoing::Session, Some(ws)) => ws.frame(batch, true),
        };
        if let Some(head) = head {
            if out.wr.write_all(head).await.0.is_err() {
                out.conn.close();
                break;
            }
        }
        let len = frame.len() as u64;
        let (res, mut written) = out.wr.write_all(frame).await;
        if res.is_ok() {
            out.shard.borrow_mut().stats.bytes_out += len;
        }
        if matches!(what, Outgoing::Session) {
            // The sent buffer becomes the next spare (a large one is released).
            written.clear();
            if written.capacity() > KEEP_WRITE_BUFFER {
                written = BytesMut::new();
            }
            out.spare = match out.ws.as_mut() {
                Some(ws) => ws.prepare(written),
                None => written,
            };
        }
        if res.is_err() {
            out.conn.close();
            break;
        }
    }
    if out.ws.is_some() && !out.conn.close_sent.replace(true) {
        // The broker ends the connection: a Close (1000) first (RFC 6455 §7.1.2).
        let mut close = BytesMut::new();
        crate::websocket::encode_close(crate::websocket::CloseCode::NORMAL, "", &mut close);
        let _ = out.wr.write_all(close).await;
    }
    // `out.wr` holds the socket open until this returns.
    super::linger::linger(out.conn.fd).await;
    let _ = out.wr.shutdown().await;
}
