//! MQTT over WebSocket on a shard: the HTTP upgrade of an accepted stream (plain or TLS),
//! then the framing between a connection's reader and writer tasks and the socket, with the
//! sans-I/O codec in [`crate::websocket`].
//!
//! - **Reading** ([`WsReader`]): raw bytes are read into the reader's own buffer; the decoder
//!   unmasks data-frame payloads into the connection's MQTT buffer as they arrive (MQTT
//!   packets may span frames or share one, [MQTT-6.0.0-2]); a Ping is answered with a Pong,
//!   a Close with a Close (then EOF), a violation with a Close carrying the RFC's code.
//!   Control answers go to the connection's control buffer, which the writer sends first.
//! - **Writing** ([`WsWriter`]): all MQTT bytes of one writer turn go out as one binary
//!   frame. The buffer lent to the session to fill is split off a larger one, leaving room
//!   for the frame header in front, so the header is written in place and the frame goes out
//!   in one send without copying the payload (a copy only when the session outgrew the
//!   buffer).
//!
//! Runs on the shard that accepted the socket, for the connection's life.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::conn::{ConnShared, fill};
use crate::websocket::{
    CloseCode, Control, Decoder, Handshake, MAX_HEADER, Role, encode, encode_close, encode_pong,
    handshake, header, opcode,
};

/// Largest upgrade request read, bytes (browsers send cookies); a longer one gets 431.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Largest single read inside a large frame, bytes.
const MAX_READ: usize = 1024 * 1024;
/// An outgoing batch at least this large that does not sit behind its header room goes out
/// as two writes (header, then payload) rather than being copied behind a new header.
const COPY_LIMIT: usize = 64 * 1024;

/// Reads the HTTP upgrade request from `stream` and answers it (101, or the RFC's error and
/// then the caller closes). On success returns the bytes read past the request: the first
/// WebSocket frames. The caller bounds the time this takes (`limits.connect_timeout_secs`).
pub async fn upgrade<S: AsyncReadRent + AsyncWriteRent>(
    stream: &mut S,
    path: &str,
) -> Result<BytesMut, &'static str> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match handshake(&buf, path, MAX_REQUEST) {
            Handshake::Incomplete => match fill(stream, &mut buf, 1024).await {
                Ok(0) | Err(_) => return Err("closed during the WebSocket handshake"),
                Ok(_) => {}
            },
            Handshake::Accept {
                response, consumed, ..
            } => {
                let (res, _) = stream.write_all(response).await;
                res.map_err(|_| "write error during the WebSocket handshake")?;
                buf.advance(consumed);
                return Ok(buf);
            }
            Handshake::Reject { response, why } => {
                let _ = stream.write_all(response).await;
                return Err(why);
            }
        }
    }
}

/// The reading side of a WebSocket connection.
#[derive(Debug)]
pub struct WsReader {
    decoder: Decoder,
    /// Raw bytes read from the socket and not decoded yet (at most a partial header or
    /// control frame after a decode).
    raw: BytesMut,
}

impl WsReader {
    /// A reader refusing frames over `max_frame` bytes, starting with the bytes the client
    /// sent right behind its upgrade request.
    pub fn new(max_frame: u64, first: BytesMut) -> Self {
        WsReader {
            decoder: Decoder::new(Role::Server, max_frame),
            raw: first,
        }
    }

    /// Reads until MQTT bytes arrive and appends them to `buf`; returns how many. `Ok(0)` on
    /// EOF or after the client's Close (answered); an error after a protocol violation (a
    /// Close with the RFC's code is queued for the writer). Reads up to `want` raw bytes at a
    /// time.
    pub async fn fill(
        &mut self,
        rd: &mut impl AsyncReadRent,
        buf: &mut BytesMut,
        want: usize,
        conn: &ConnShared,
    ) -> io::Result<usize> {
        loop {
            let before = buf.len();
            loop {
                match self.decoder.decode(&mut self.raw, buf) {
                    Ok(None) => break,
                    Ok(Some(Control::Ping(payload))) => {
                        conn.send_control(false, |out| encode_pong(&payload, out));
                    }
                    Ok(Some(Control::Pong)) => {}
                    Ok(Some(Control::Close { code, .. })) => {
                        // Echo the status code (RFC 6455 §5.5.1), then the connection ends.
                        conn.send_control(true, |out| match code {
                            Some(c) => encode_close(CloseCode(c), "", out),
                            None => encode(opcode::CLOSE, &[], out),
                        });
                        return Ok(0);
                    }
                    Err(v) => {
                        tracing::debug!(token = conn.token, error = %v, "WebSocket violation");
                        conn.send_control(true, |out| encode_close(v.code, v.why, out));
                        return Err(io::Error::new(io::ErrorKind::InvalidData, v));
                    }
                }
            }
            let got = buf.len() - before;
            if got > 0 {
                return Ok(got);
            }
            // Inside a large frame, read the rest of it at once (bounded by the frame limit
            // the decoder enforces, like a TCP read buffer by `max_packet_size`): fewer reads,
            // and the payload stays in one buffer the MQTT decoder takes over without a copy.
            let rest = usize::try_from(self.decoder.remaining()).unwrap_or(usize::MAX);
            let want = want.max(rest.min(MAX_READ));
            if fill(rd, &mut self.raw, want).await? == 0 {
                return Ok(0);
            }
        }
    }
}

/// The writing side of a WebSocket connection: frames each batch of MQTT bytes.
#[derive(Debug, Default)]
pub struct WsWriter {
    /// The header room in front of the buffer the writer holds as its spare.
    ready: BytesMut,
    /// The header room in front of the buffer the session is filling.
    lent: BytesMut,
}

impl WsWriter {
    /// Turns an emptied write buffer into the spare the session will fill next, with
    /// [`MAX_HEADER`] bytes of header room split off its front.
    pub fn prepare(&mut self, mut b: BytesMut) -> BytesMut {
        b.clear();
        b.reserve(MAX_HEADER + 256);
        b.put_bytes(0, MAX_HEADER);
        let body = b.split_off(MAX_HEADER);
        self.ready = b;
        body
    }

    /// The spare was swapped into the session: its header room goes with it.
    pub fn lend(&mut self) {
        self.lent = std::mem::take(&mut self.ready);
    }

    /// One binary frame carrying `payload`, the buffer the session filled since the last
    /// [`lend`](Self::lend) (`lent: true`), or bytes from elsewhere (copied behind a header).
    /// Returns a header to write first when the payload is large and could not be framed in
    /// place, then the bytes to write (the payload, which comes back as the next spare).
    pub fn frame(&mut self, payload: BytesMut, lent: bool) -> (Option<BytesMut>, BytesMut) {
        let mut h = [0u8; MAX_HEADER];
        let n = header(opcode::BINARY, payload.len() as u64, &mut h);
        let mut head = if lent {
            std::mem::take(&mut self.lent)
        } else {
            BytesMut::new()
        };
        let in_place =
            head.len() == MAX_HEADER && head.as_ptr().wrapping_add(MAX_HEADER) == payload.as_ptr();
        if in_place {
            head[MAX_HEADER - n..].copy_from_slice(&h[..n]);
            // O(1): the payload sits right behind its header room.
            head.unsplit(payload);
            head.advance(MAX_HEADER - n);
            (None, head)
        } else if payload.len() >= COPY_LIMIT {
            (Some(BytesMut::from(&h[..n])), payload)
        } else {
            let mut f = BytesMut::with_capacity(n + payload.len());
            f.extend_from_slice(&h[..n]);
            f.extend_from_slice(&payload);
            (None, f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::{Decoder, Role};

    /// What a client decodes from frames the writer made.
    fn client_sees(frames: &[BytesMut]) -> Vec<u8> {
        let mut d = Decoder::new(Role::Client, u64::MAX);
        let mut input = BytesMut::new();
        for f in frames {
            input.extend_from_slice(f);
        }
        let mut out = BytesMut::new();
        assert!(d.decode(&mut input, &mut out).unwrap().is_none());
        assert!(input.is_empty());
        out.to_vec()
    }

    #[test]
    fn frames_are_written_in_place_behind_their_header_room() {
        let mut w = WsWriter::default();
        let mut spare = w.prepare(BytesMut::with_capacity(4096));
        let mut frames = Vec::new();
        for (i, len) in [5usize, 200, 70_000, 0, 3].into_iter().enumerate() {
            // The session fills the lent buffer ...
            w.lend();
            let mut filled = std::mem::replace(&mut spare, BytesMut::new());
            filled.put_bytes(i as u8, len);
            let within = filled.capacity() >= len;
            let ptr = filled.as_ptr();
            let (head, frame) = w.frame(filled, true);
            if let Some(h) = head {
                frames.push(h);
            }
            if len <= 200 && within {
                // ... and the frame is the same allocation, header right in front.
                assert_eq!(frame[frame.len() - len..].as_ptr(), ptr);
            }
            frames.push(frame.clone());
            spare = w.prepare(frame);
        }
        let mut want = Vec::new();
        for (i, len) in [5usize, 200, 70_000, 0, 3].into_iter().enumerate() {
            want.extend(std::iter::repeat_n(i as u8, len));
        }
        assert_eq!(client_sees(&frames), want);
    }

    #[test]
    fn bytes_from_elsewhere_are_copied_behind_a_header() {
        let mut w = WsWriter::default();
        let (head, frame) = w.frame(BytesMut::from(&b"\x20\x02\x00\x00"[..]), false);
        assert!(head.is_none());
        assert_eq!(&frame[..], b"\x82\x04\x20\x02\x00\x00");
        // A large batch from elsewhere: its header goes first, the payload is not copied.
        let big = BytesMut::from(&vec![7u8; 100_000][..]);
        let ptr = big.as_ptr();
        let (head, frame) = w.frame(big, false);
        assert_eq!(
            &head.unwrap()[..],
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x86, 0xa0]
        );
        assert_eq!(frame.as_ptr(), ptr);
    }
}
