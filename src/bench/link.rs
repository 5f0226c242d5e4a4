//! A bench client's byte pipe to the broker: a TCP stream carrying MQTT as is, or MQTT over
//! WebSocket (RFC 6455, subprotocol `mqtt`) on top of it.
//!
//! - **TCP**: reads and writes go straight to the socket, exactly as without this layer (no
//!   copy, no allocation).
//! - **WebSocket**: [`Link::websocket`] performs the HTTP upgrade right after the TCP connect;
//!   then every write goes out as one masked binary frame (the payload is copied once, masked,
//!   into a frame buffer the link keeps), and every read goes through a client
//!   [`Decoder`](crate::websocket::Decoder) that appends the unmasked payload to the caller's
//!   MQTT buffer, so MQTT packets may span frames or share one (MQTT-6.0.0-2). A Close ends
//!   the stream like EOF; a Ping is answered with a Pong where the link can write (the
//!   unsplit [`Link`]; the broker never pings on its own, it only answers).
//!
//! A publisher splits its link into a [`LinkRead`] for acknowledgements and a [`LinkWrite`]
//! for publishes, like a TCP stream. Everything runs on the bench thread that owns the
//! connection.

use std::hash::BuildHasher;
use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use monoio::buf::IoBuf;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use crate::websocket::{Control, Decoder, Role, accept_key, encode_masked, opcode};

type Result<T> = std::result::Result<T, String>;

/// Longest upgrade response read, bytes.
const MAX_RESPONSE: usize = 16 * 1024;

/// A connection to the broker, plain or WebSocket.
#[derive(Debug)]
pub struct Link {
    stream: TcpStream,
    ws: Option<(WsRead, WsWrite)>,
}

/// The reading half of a split [`Link`].
#[derive(Debug)]
pub struct LinkRead {
    rd: OwnedReadHalf<TcpStream>,
    ws: Option<WsRead>,
}

/// The writing half of a split [`Link`].
#[derive(Debug)]
pub struct LinkWrite {
    wr: OwnedWriteHalf<TcpStream>,
    ws: Option<WsWrite>,
}

/// WebSocket reading state: the frame decoder and the raw bytes it has not consumed yet (at
/// most a partial frame header or control frame between reads).
#[derive(Debug)]
struct WsRead {
    decoder: Decoder,
    raw: BytesMut,
}

/// WebSocket writing state: the mask source and the frame buffer, kept between writes.
#[derive(Debug)]
struct WsWrite {
    rng: XorShift,
    frame: BytesMut,
}

/// xorshift64: the source of the handshake key and the frame masks. RFC 6455 §5.3 wants masks
/// an attacker cannot predict (against cache poisoning by intermediaries); this is a load
/// generator talking to a broker its user runs, so a cheap per-connection generator will do.
#[derive(Debug, Clone, Copy)]
struct XorShift(u64);

impl XorShift {
    /// Seeded from std's per-process random hash keys, distinct per call.
    fn new() -> Self {
        XorShift(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

impl Link {
    /// MQTT straight over `stream`.
    pub fn tcp(stream: TcpStream) -> Link {
        Link { stream, ws: None }
    }

    /// Upgrades `stream` to WebSocket: `GET path` with `host` as Host, subprotocol `mqtt`.
    /// Errors are one line naming `to` (`127.0.0.1:8083/mqtt`, say).
    pub async fn websocket(
        mut stream: TcpStream,
        host: &str,
        path: &str,
        to: &str,
    ) -> Result<Link> {
        let mut rng = XorShift::new();
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&rng.next().to_ne_bytes());
        nonce[8..].copy_from_slice(&rng.next().to_ne_bytes());
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        let (r, _) = stream.write_all(request.into_bytes()).await;
        r.map_err(|e| format!("WebSocket upgrade to {to}: write: {e}"))?;
        let mut buf = BytesMut::with_capacity(1024);
        let head = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    check_response(&res, &key)
                        .map_err(|e| format!("WebSocket upgrade to {to} {e}"))?;
                    break n;
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE => {}
                Ok(httparse::Status::Partial) => {
                    return Err(format!(
                        "WebSocket upgrade to {to}: no end of the response head in {MAX_RESPONSE} bytes"
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "WebSocket upgrade to {to}: not an HTTP response ({e}): {}",
                        first_line(&buf)
                    ));
                }
            }
            match crate::shard::conn::fill(&mut stream, &mut buf, 1024).await {
                // A reset: it closed with our request unread (an MQTT port does that).
                Ok(0) | Err(_) if buf.is_empty() => {
                    return Err(format!(
                        "WebSocket upgrade to {to}: the broker closed the connection before answering (is this its WebSocket port?)"
                    ));
                }
                Ok(0) => {
                    return Err(format!(
                        "WebSocket upgrade to {to}: the broker closed the connection mid-response: {}",
                        first_line(&buf)
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("WebSocket upgrade to {to}: read: {e}")),
            }
        };
        // Whatever follows the head is already frames.
        let raw = buf.split_off(head);
        Ok(Link {
            stream,
            ws: Some((
                WsRead {
                    decoder: Decoder::new(Role::Client, u64::MAX),
                    raw,
                },
                WsWrite {
                    rng,
                    frame: BytesMut::new(),
                },
            )),
        })
    }

    /// The socket, for shutting it down when the run ends.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Reads until MQTT bytes arrive and appends them to `buf`; returns how many, 0 at the end
    /// of the stream (EOF or a WebSocket Close). Reads up to `want` bytes at a time.
    pub async fn fill(&mut self, buf: &mut BytesMut, want: usize) -> Result<usize> {
        let Link { stream, ws } = self;
        let Some((rd, wr)) = ws else {
            return read(stream, buf, want).await;
        };
        let start = buf.len();
        loop {
            if let Some(ping) = rd.decode(buf)? {
                send_frame(stream, wr, opcode::PONG, &ping).await?;
                continue;
            }
            if let Some(n) = rd.done(buf, start) {
                return Ok(n);
            }
            if read(stream, &mut rd.raw, want).await? == 0 {
                return Ok(0);
            }
        }
    }

    /// Writes all of `bytes` (as one binary frame over WebSocket) and hands the buffer back.
    pub async fn send<B: IoBuf + Deref<Target = [u8]>>(&mut self, bytes: B) -> (Result<()>, B) {
        match &mut self.ws {
            None => write(&mut self.stream, bytes).await,
            Some((_, ws)) => {
                let r = send_frame(&mut self.stream, ws, opcode::BINARY, &bytes).await;
                (r, bytes)
            }
        }
    }

    /// Splits into a reading and a writing half that may be used by different tasks.
    pub fn into_split(self) -> (LinkRead, LinkWrite) {
        let (rd, wr) = self.stream.into_split();
        let (r, w) = match self.ws {
            Some((r, w)) => (Some(r), Some(w)),
            None => (None, None),
        };
        (LinkRead { rd, ws: r }, LinkWrite { wr, ws: w })
    }
}

impl LinkRead {
    /// [`Link::fill`], except that a Ping goes unanswered: the read half cannot write, and the
    /// broker never pings.
    pub async fn fill(&mut self, buf: &mut BytesMut, want: usize) -> Result<usize> {
        let Some(ws) = &mut self.ws else {
            return read(&mut self.rd, buf, want).await;
        };
        let start = buf.len();
        loop {
            while ws.decode(buf)?.is_some() {}
            if let Some(n) = ws.done(buf, start) {
                return Ok(n);
            }
            if read(&mut self.rd, &mut ws.raw, want).await? == 0 {
                return Ok(0);
            }
        }
    }
}

impl LinkWrite {
    /// [`Link::send`].
    pub async fn send<B: IoBuf + Deref<Target = [u8]>>(&mut self, bytes: B) -> (Result<()>, B) {
        match &mut self.ws {
            None => write(&mut self.wr, bytes).await,
            Some(ws) => {
                let r = send_frame(&mut self.wr, ws, opcode::BINARY, &bytes).await;
                (r, bytes)
            }
        }
    }
}

impl WsRead {
    /// Decodes the raw bytes read so far, appending MQTT bytes to `buf`, until they run out or
    /// a Ping comes (returned, for the caller to answer). Pongs are dropped; after a Close the
    /// decoder discards the rest.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>> {
        loop {
            match self.decoder.decode(&mut self.raw, buf) {
                Ok(None) | Ok(Some(Control::Close { .. })) => return Ok(None),
                Ok(Some(Control::Ping(payload))) => return Ok(Some(payload)),
                Ok(Some(Control::Pong)) => {}
                Err(v) => return Err(format!("WebSocket: {v}")),
            }
        }
    }

    /// After decoding: `Some` when the fill is over (bytes arrived since `start`, or the broker
    /// sent Close: 0), `None` when it must read more.
    fn done(&self, buf: &BytesMut, start: usize) -> Option<usize> {
        let got = buf.len() - start;
        (got > 0 || self.decoder.closed()).then_some(got)
    }
}

/// Checks a complete upgrade response: 101, `Upgrade: websocket`, the right
/// `Sec-WebSocket-Accept` and no subprotocol but `mqtt`. The error follows "upgrade to X ".
fn check_response(res: &httparse::Response<'_, '_>, key: &str) -> Result<()> {
    let status = || {
        format!(
            "HTTP/1.{} {} {}",
            res.version.unwrap_or(1),
            res.code.unwrap_or(0),
            res.reason.unwrap_or("")
        )
        .trim_end()
        .to_owned()
    };
    if res.code != Some(101) {
        return Err(format!("refused: {}", status()));
    }
    let header = |name: &str| {
        res.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(format!("failed: {} without Upgrade: websocket", status()));
    }
    match header("sec-websocket-accept") {
        Some(a) if a == accept_key(key) => {}
        Some(a) => {
            return Err(format!(
                "failed: Sec-WebSocket-Accept {a:?} does not match the key"
            ));
        }
        None => return Err("failed: no Sec-WebSocket-Accept".into()),
    }
    match header("sec-websocket-protocol") {
        Some(p) if p != "mqtt" => Err(format!("failed: subprotocol {p:?}, not mqtt")),
        _ => Ok(()),
    }
}

/// The first line of `b` (at most 120 bytes), for an error message.
pub fn first_line(b: &[u8]) -> String {
    let end = b
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .unwrap_or(b.len())
        .min(120);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

async fn read(io: &mut impl AsyncReadRent, buf: &mut BytesMut, want: usize) -> Result<usize> {
    crate::shard::conn::fill(io, buf, want)
        .await
        .map_err(|e| format!("read: {e}"))
}

async fn write<B: IoBuf>(io: &mut impl AsyncWriteRent, bytes: B) -> (Result<()>, B) {
    let (r, bytes) = io.write_all(bytes).await;
    (r.map(drop).map_err(|e| format!("write: {e}")), bytes)
}

/// Writes `payload` as one masked frame with FIN set.
async fn send_frame(
    io: &mut impl AsyncWriteRent,
    ws: &mut WsWrite,
    op: u8,
    payload: &[u8],
) -> Result<()> {
    let mut frame = std::mem::take(&mut ws.frame);
    frame.clear();
    let mask = (ws.rng.next() as u32).to_ne_bytes();
    encode_masked(op, true, payload, mask, &mut frame);
    let (r, frame) = write(io, frame).await;
    ws.frame = frame;
    r
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use monoio::net::TcpListener;

    use super::*;
    use crate::config::IoDriver;
    use crate::shard::spawn::run_on_runtime;
    use crate::websocket::{Handshake, Subprotocol, encode, handshake};

    /// Runs `f` on a bench-like event loop; a test that hangs fails after 10 s.
    fn on_runtime<Fut: Future>(f: impl FnOnce() -> Fut) -> Fut::Output {
        run_on_runtime(
            IoDriver::Auto,
            |_, _| {},
            |_| async {
                monoio::time::timeout(std::time::Duration::from_secs(10), f())
                    .await
                    .expect("the test finished within 10 s")
            },
        )
        .expect("a runtime")
    }

    /// A one-connection server: reads the upgrade request and checks it with the broker's own
    /// handshake, then writes `answer(response)` in one write (head and frames together).
    async fn serve_once(
        listener: TcpListener,
        answer: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) -> (TcpStream, BytesMut) {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        loop {
            match handshake(&buf, "/mqtt", 16 * 1024) {
                Handshake::Incomplete => {
                    assert!(
                        crate::shard::conn::fill(&mut s, &mut buf, 1024)
                            .await
                            .unwrap()
                            > 0
                    );
                }
                Handshake::Accept {
                    response,
                    consumed,
                    protocol,
                } => {
                    assert_eq!(protocol, Some(Subprotocol::Mqtt));
                    let (r, _) = s.write_all(answer(response)).await;
                    r.unwrap();
                    return (s, buf.split_off(consumed));
                }
                Handshake::Reject { why, .. } => panic!("the bench's request was refused: {why}"),
            }
        }
    }

    /// What the server decodes from the client until `want` MQTT bytes arrived, and the
    /// control frames it saw.
    async fn server_reads(
        s: &mut TcpStream,
        mut raw: BytesMut,
        want: usize,
        want_pongs: usize,
    ) -> (Vec<u8>, usize) {
        let mut d = Decoder::new(Role::Server, u64::MAX);
        let (mut out, mut pongs) = (BytesMut::new(), 0);
        loop {
            while let Some(c) = d.decode(&mut raw, &mut out).expect("masked client frames") {
                assert_eq!(c, Control::Pong);
                pongs += 1;
            }
            if out.len() >= want && pongs >= want_pongs {
                return (out.to_vec(), pongs);
            }
            assert!(crate::shard::conn::fill(s, &mut raw, 4096).await.unwrap() > 0);
        }
    }

    /// The server's frames behind its 101: data split across frames, a Ping between them,
    /// then a Close.
    fn frames_after(mut head: Vec<u8>) -> Vec<u8> {
        let mut f = BytesMut::new();
        encode(opcode::BINARY, b"hello ", &mut f);
        encode(opcode::PING, b"p", &mut f);
        encode(opcode::BINARY, b"world", &mut f);
        encode(opcode::CLOSE, &[], &mut f);
        head.extend_from_slice(&f);
        head
    }

    async fn read_all(mut fill: impl AsyncFnMut(&mut BytesMut) -> Result<usize>) -> Vec<u8> {
        let mut buf = BytesMut::new();
        while fill(&mut buf).await.unwrap() > 0 {}
        buf.to_vec()
    }

    #[test]
    fn upgrades_then_frames_both_ways() {
        on_runtime(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = monoio::spawn(async move {
                let (mut s, raw) = serve_once(listener, frames_after).await;
                server_reads(&mut s, raw, 3, 1).await
            });
            let stream = TcpStream::connect(addr).await.unwrap();
            let mut link = Link::websocket(stream, "localhost", "/mqtt", "x")
                .await
                .unwrap();
            let (r, _) = link.send(BytesMut::from(&b"abc"[..])).await;
            r.unwrap();
            assert_eq!(
                read_all(async |b: &mut BytesMut| link.fill(b, 4096).await).await,
                b"hello world"
            );
            // The Ping was answered before the data went on.
            assert_eq!(server.await, (b"abc".to_vec(), 1));
        });
    }

    #[test]
    fn split_halves_frame_and_unframe() {
        on_runtime(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = monoio::spawn(async move {
                let (mut s, raw) = serve_once(listener, frames_after).await;
                server_reads(&mut s, raw, 70_000 + 2, 0).await
            });
            let stream = TcpStream::connect(addr).await.unwrap();
            let link = Link::websocket(stream, "localhost", "/mqtt", "x")
                .await
                .unwrap();
            let (mut rd, mut wr) = link.into_split();
            let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
            let (r, back) = wr.send(big.clone()).await;
            r.unwrap();
            assert_eq!(back, big, "the buffer comes back as it was");
            wr.send(vec![0xE0, 0]).await.0.unwrap();
            assert_eq!(
                read_all(async |b: &mut BytesMut| rd.fill(b, 4096).await).await,
                b"hello world"
            );
            let mut want = big;
            want.extend([0xE0, 0]);
            // The read half leaves the Ping unanswered.
            assert_eq!(server.await, (want, 0));
        });
    }

    /// The error a client gets when the server answers `head` to its upgrade request.
    fn upgrade_error(head: &'static str) -> String {
        on_runtime(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            // The server closes right after its answer.
            let server = monoio::spawn(async move {
                drop(serve_once(listener, |_| head.as_bytes().to_vec()).await);
            });
            let stream = TcpStream::connect(addr).await.unwrap();
            let e = Link::websocket(stream, "localhost", "/mqtt", "127.0.0.1:8083/mqtt")
                .await
                .unwrap_err();
            server.await;
            e
        })
    }

    #[test]
    fn a_refused_or_wrong_upgrade_is_one_line() {
        assert_eq!(
            upgrade_error("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            "WebSocket upgrade to 127.0.0.1:8083/mqtt refused: HTTP/1.1 404 Not Found"
        );
        for (head, says) in [
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                "Sec-WebSocket-Accept",
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "Upgrade: websocket",
            ),
            ("\x20\x02\x00\x00", "not an HTTP response"),
            ("HTTP/1.1 101 Switch", "mid-response: HTTP/1.1 101 Switch"),
        ] {
            let e = upgrade_error(head);
            assert!(e.contains(says) && !e.contains('\n'), "{head:?}: {e}");
        }
    }

    #[test]
    fn a_closed_port_says_so() {
        let e = on_runtime(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = monoio::spawn(async move { drop(listener.accept().await) });
            let stream = TcpStream::connect(addr).await.unwrap();
            let e = Link::websocket(stream, "h", "/mqtt", "x")
                .await
                .unwrap_err();
            server.await;
            e
        });
        assert!(e.contains("closed the connection before answering"), "{e}");
    }

    #[test]
    fn masks_and_keys_vary() {
        let (mut a, mut b) = (XorShift::new(), XorShift::new());
        assert_ne!(a.next(), b.next());
        let xs: std::collections::HashSet<u64> = (0..1000).map(|_| a.next()).collect();
        assert_eq!(xs.len(), 1000);
    }
}
