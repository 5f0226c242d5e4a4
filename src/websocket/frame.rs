//! WebSocket framing (RFC 6455 §5): an incremental frame decoder and the few encoders the
//! broker and the bench client need.
//!
//! Owns the base framing protocol after the handshake: frame headers, masking, fragmentation,
//! control frames and close codes, with every rule a receiver must enforce. No extension is
//! ever negotiated, so RSV bits are always an error. MQTT rides in binary frames only
//! (MQTT-6.0.0-1) and its packets need not line up with frame boundaries (MQTT-6.0.0-2), so the
//! [`Decoder`] turns the frames' payloads into one byte stream and never buffers a whole data
//! frame: memory use does not grow with the frame size.
//!
//! Pure: bytes in, bytes and control frames out. No socket, no clock; it runs on the shard
//! thread that owns the connection.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame opcodes (RFC 6455 §5.2, §11.8).
pub mod opcode {
    /// Continues a fragmented message (RFC 6455 §5.4).
    pub const CONTINUATION: u8 = 0x0;
    /// A text frame; refused, MQTT uses binary frames (MQTT-6.0.0-1).
    pub const TEXT: u8 = 0x1;
    /// A binary frame: the one data frame MQTT uses.
    pub const BINARY: u8 = 0x2;
    /// Close (RFC 6455 §5.5.1).
    pub const CLOSE: u8 = 0x8;
    /// Ping (RFC 6455 §5.5.2).
    pub const PING: u8 = 0x9;
    /// Pong (RFC 6455 §5.5.3).
    pub const PONG: u8 = 0xA;
}

/// The largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest frame header: 2 bytes, an 8-byte extended length and a 4-byte mask (RFC 6455
/// §5.2).
pub const MAX_HEADER: usize = 14;

// Bit fields of the first two header bytes (RFC 6455 §5.2).
const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const OPCODE: u8 = 0x0F;
const MASK: u8 = 0x80;
const LEN7: u8 = 0x7F;

/// Which end of the connection the [`Decoder`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The broker: decodes client frames, which must be masked (RFC 6455 §5.1).
    Server,
    /// A client (the bench, tests): decodes server frames, which must not be masked.
    Client,
}

/// A close status code (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutting down).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept (a text frame, here).
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1007: data inconsistent with its type (a close reason that is not UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a policy violation.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a frame too big to process.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: an unexpected condition on the server.
    pub const INTERNAL: CloseCode = CloseCode(1011);

    /// Whether this code may appear in a Close frame on the wire (RFC 6455 §7.4.1, §7.4.2):
    /// 1000–1003, 1007–1014 (1012–1014 as registered with IANA) and 3000–4999.
    pub const fn is_valid(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A protocol violation by the peer: send a Close with `code`, then close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The close code to send (RFC 6455 §7.4.1).
    pub code: CloseCode,
    /// The rule broken, naming its section; also usable as the Close frame's reason.
    pub why: &'static str,
}

impl Violation {
    const fn new(code: CloseCode, why: &'static str) -> Self {
        Violation { code, why }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close code {})", self.why, self.code)
    }
}

impl std::error::Error for Violation {}

/// A whole control frame, for the caller to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Ping: answer with a Pong carrying this payload ([`encode_pong`]).
    Ping(Bytes),
    /// Pong: nothing to do (its payload is dropped).
    Pong,
    /// Close: answer with a Close ([`encode_close`]) and close. `code` is `None` when the
    /// frame had no payload; `reason` is valid UTF-8.
    Close {
        /// The status code, already checked to be valid on the wire.
        code: Option<u16>,
        /// The reason, already checked to be UTF-8.
        reason: Bytes,
    },
}

/// One frame header, fully parsed and checked.
#[derive(Debug, Clone, Copy)]
struct Head {
    fin: bool,
    opcode: u8,
    len: u64,
    mask: Option<[u8; 4]>,
    /// Bytes the header takes, mask included.
    size: usize,
}

/// The incremental frame decoder of one connection.
///
/// Partial input is left in the caller's buffer: a frame header is consumed only once it is
/// whole (at most [`MAX_HEADER`] bytes), and a control frame only once header and payload are
/// both there (at most 6 + [`MAX_CONTROL_PAYLOAD`] bytes). Data payloads are consumed as they
/// arrive. So after `decode` returns `Ok(None)`, `input` holds fewer than
/// `MAX_HEADER + MAX_CONTROL_PAYLOAD` bytes, and the decoder itself keeps only the current data
/// frame's remaining length and mask.
///
/// After a [`Violation`] the decoder is spent: every later call returns the same violation.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    max_frame: u64,
    /// Payload bytes of the current data frame not yet consumed.
    remaining: u64,
    /// The current data frame's mask, if it is masked.
    mask: Option<[u8; 4]>,
    /// Offset into `mask` of the next payload byte (0..4).
    phase: usize,
    /// A data frame without FIN was seen and its message's final frame has not been.
    fragmented: bool,
    /// A Close frame was decoded.
    closed: bool,
    /// The violation that ended decoding.
    failed: Option<Violation>,
}

impl Decoder {
    /// A decoder for the `role` end of a connection that refuses frames whose payload is
    /// longer than `max_frame` bytes (RFC 6455 §7.4.1, 1009); `u64::MAX` means no limit.
    pub fn new(role: Role, max_frame: u64) -> Self {
        Decoder {
            role,
            max_frame,
            remaining: 0,
            mask: None,
            phase: 0,
            fragmented: false,
            closed: false,
            failed: None,
        }
    }

    /// Consumes bytes from the front of `input`. Payload bytes of binary and continuation
    /// frames are unmasked and appended to `out` as they arrive (a frame does not need to be
    /// whole: a 1 MiB frame arriving in 64 KiB reads yields 64 KiB each call), so memory use
    /// does not grow with frame size.
    ///
    /// Returns `Ok(Some(control))` when a whole control frame was decoded (handle it, then call
    /// again); `Ok(None)` when `input` is used up or holds only part of a frame header or of a
    /// control frame, which stays in `input` for the next call (see [`Decoder`]).
    /// `Err(Violation)` on a protocol violation: send a Close with its code and close.
    ///
    /// After a Close frame, later input is discarded and `Ok(None)` returned.
    pub fn decode(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Control>, Violation> {
        if let Some(violation) = self.failed {
            return Err(violation);
        }
        let result = self.run(input, out);
        if let Err(violation) = result {
            self.failed = Some(violation);
        }
        result
    }

    /// Payload bytes of the current data frame still to come (0 between frames): how much a
    /// reader may ask the socket for at once.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// True after a Close frame was decoded (later input is ignored).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// True while a fragmented message is open: its final frame has not arrived yet.
    pub fn in_message(&self) -> bool {
        self.fragmented
    }

    fn run(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Control>, Violation> {
        loop {
            if self.closed {
                input.clear();
                return Ok(None);
            }
            if self.remaining > 0 {
                if input.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
                // Unmasked where it lies, then handed over: O(1) when `out` is empty or
                // ends where the payload starts (one read buffer), a copy otherwise.
                let mut payload = input.split_to(n);
                if let Some(mask) = self.mask {
                    unmask(&mut payload, mask, self.phase);
                    self.phase = (self.phase + n) % 4;
                }
                out.unsplit(payload);
                self.remaining -= n as u64;
                continue;
            }
            let Some(head) = self.parse_head(input)? else {
                return Ok(None);
            };
            if is_control(head.opcode) {
                // At most 125 bytes (checked in parse_head), so `len` fits.
                let len = head.len as usize;
                let Some(body) = input.get(head.size..head.size + len) else {
                    return Ok(None);
                };
                let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
                let payload = &mut payload[..len];
                payload.copy_from_slice(body);
                if let Some(mask) = head.mask {
                    unmask(payload, mask, 0);
                }
                input.advance(head.size + len);
                return match head.opcode {
                    opcode::PING => Ok(Some(Control::Ping(Bytes::copy_from_slice(payload)))),
                    opcode::PONG => Ok(Some(Control::Pong)),
                    _ => self.close(payload).map(Some),
                };
            }
            input.advance(head.size);
            if head.opcode == opcode::BINARY {
                self.fragmented = !head.fin;
            } else if head.fin {
                self.fragmented = false;
            }
            self.remaining = head.len;
            self.mask = head.mask;
            self.phase = 0;
        }
    }

    /// Parses and checks the frame header at the front of `buf`; `Ok(None)` if it is not whole
    /// yet. Rules are checked as soon as the bytes they need are there.
    fn parse_head(&self, buf: &[u8]) -> Result<Option<Head>, Violation> {
        use CloseCode as C;
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fin = b0 & FIN != 0;
        let op = b0 & OPCODE;
        if b0 & RSV != 0 {
            return Err(Violation::new(
                C::PROTOCOL_ERROR,
                "RFC 6455 §5.2: RSV bit set without a negotiated extension",
            ));
        }
        match op {
            opcode::TEXT => {
                return Err(Violation::new(
                    C::UNSUPPORTED_DATA,
                    "MQTT-6.0.0-1: MQTT packets travel in binary frames",
                ));
            }
            opcode::BINARY if self.fragmented => {
                return Err(Violation::new(
                    C::PROTOCOL_ERROR,
                    "RFC 6455 §5.4: new data frame inside a fragmented message",
                ));
            }
            opcode::CONTINUATION if !self.fragmented => {
                return Err(Violation::new(
                    C::PROTOCOL_ERROR,
                    "RFC 6455 §5.4: continuation frame without a fragmented message",
                ));
            }
            opcode::BINARY | opcode::CONTINUATION => {}
            opcode::CLOSE | opcode::PING | opcode::PONG if !fin => {
                return Err(Violation::new(
                    C::PROTOCOL_ERROR,
                    "RFC 6455 §5.5: fragmented control frame",
                ));
            }
            opcode::CLOSE | opcode::PING | opcode::PONG => {}
            _ => {
                return Err(Violation::new(
                    C::PROTOCOL_ERROR,
                    "RFC 6455 §5.2: reserved opcode",
                ));
            }
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & MASK != 0;
        match (self.role, masked) {
            (Role::Server, false) => {
                return Err(Violation::new(
                    C::PROTOCOL_ERROR,
                    "RFC 6455 §5.1: client frame not masked",
                ));
            }
            (Role::Client, true) => {
                return Err(Violation::new(
                    C::PROTOCOL_ERROR,
                    "RFC 6455 §5.1: server frame masked",
                ));
            }
            _ => {}
        }
        let len7 = b1 & LEN7;
        if is_control(op) && usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(Violation::new(
                C::PROTOCOL_ERROR,
                "RFC 6455 §5.5: control frame payload longer than 125 bytes",
            ));
        }
        let not_minimal = Violation::new(
            C::PROTOCOL_ERROR,
            "RFC 6455 §5.2: payload length not minimally encoded",
        );
        let (len, mut size) = match len7 {
            126 => {
                let Some(&bytes) = buf.get(2..).and_then(<[u8]>::first_chunk::<2>) else {
                    return Ok(None);
                };
                let len = u16::from_be_bytes(bytes);
                if len < 126 {
                    return Err(not_minimal);
                }
                (u64::from(len), 4)
            }
            127 => {
                let Some(&bytes) = buf.get(2..).and_then(<[u8]>::first_chunk::<8>) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(bytes);
                if len >> 63 != 0 {
                    return Err(Violation::new(
                        C::PROTOCOL_ERROR,
                        "RFC 6455 §5.2: 64-bit payload length with the top bit set",
                    ));
                }
                if len <= u64::from(u16::MAX) {
                    return Err(not_minimal);
                }
                (len, 10)
            }
            len => (u64::from(len), 2),
        };
        if len > self.max_frame {
            return Err(Violation::new(
                C::TOO_BIG,
                "RFC 6455 §7.4.1: frame larger than the maximum frame size",
            ));
        }
        let mask = if masked {
            let Some(&mask) = buf.get(size..).and_then(<[u8]>::first_chunk::<4>) else {
                return Ok(None);
            };
            size += 4;
            Some(mask)
        } else {
            None
        };
        Ok(Some(Head {
            fin,
            opcode: op,
            len,
            mask,
            size,
        }))
    }

    /// Checks a Close frame's (unmasked) payload (RFC 6455 §5.5.1, §7.4, §8.1).
    fn close(&mut self, payload: &[u8]) -> Result<Control, Violation> {
        let control = match payload {
            [] => Control::Close {
                code: None,
                reason: Bytes::new(),
            },
            [_] => {
                return Err(Violation::new(
                    CloseCode::PROTOCOL_ERROR,
                    "RFC 6455 §5.5.1: close payload of one byte",
                ));
            }
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !CloseCode(code).is_valid() {
                    return Err(Violation::new(
                        CloseCode::PROTOCOL_ERROR,
                        "RFC 6455 §7.4: close code not allowed on the wire",
                    ));
                }
                if std::str::from_utf8(reason).is_err() {
                    return Err(Violation::new(
                        CloseCode::INVALID_PAYLOAD,
                        "RFC 6455 §8.1: close reason is not UTF-8",
                    ));
                }
                Control::Close {
                    code: Some(code),
                    reason: Bytes::copy_from_slice(reason),
                }
            }
        };
        self.closed = true;
        Ok(control)
    }
}

/// Whether `opcode` is a control opcode (RFC 6455 §5.5: the high bit of the opcode set).
const fn is_control(opcode: u8) -> bool {
    opcode & 0x8 != 0
}

/// XORs `buf` with `mask`, starting at mask byte `phase` (RFC 6455 §5.3).
///
/// Bytes before the first 8-byte aligned address go one by one; then 32-byte blocks are
/// XORed with the mask repeated and rotated to the phase where they start (a loop the
/// compiler turns into vector instructions), then the rest one by one.
fn unmask(buf: &mut [u8], mask: [u8; 4], phase: usize) {
    let lead = buf.as_ptr().align_offset(8).min(buf.len());
    let (head, body) = buf.split_at_mut(lead);
    for (i, b) in head.iter_mut().enumerate() {
        *b ^= mask[(phase + i) % 4];
    }
    let phase = phase + lead;
    let m = [0, 1, 2, 3].map(|i| mask[(phase + i) % 4]);
    let pattern: [u8; 32] = std::array::from_fn(|i| m[i % 4]);
    let (blocks, tail) = body.split_at_mut(body.len() / 32 * 32);
    for block in blocks.chunks_exact_mut(32) {
        for (b, p) in block.iter_mut().zip(pattern.iter()) {
            *b ^= p;
        }
    }
    for (b, m) in tail.iter_mut().zip(m.iter().cycle()) {
        *b ^= m;
    }
}

/// Writes the second header byte and the extended length; returns the header length so far.
fn put_len(mask_bit: u8, len: u64, out: &mut [u8; MAX_HEADER]) -> usize {
    if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    }
}

/// Server-to-client frame header (FIN set, unmasked) for a payload of `len` bytes; returns the
/// header length (2, 4 or 10), the frame's first bytes being `out[..that]`.
///
/// `len` must be below 2^63 (RFC 6455 §5.2).
pub fn header(opcode: u8, len: u64, out: &mut [u8; MAX_HEADER]) -> usize {
    debug_assert!(len >> 63 == 0, "RFC 6455 §5.2: payload length below 2^63");
    out[0] = FIN | (opcode & OPCODE);
    put_len(0, len, out)
}

/// Appends a whole unmasked frame with FIN set, as a server sends it.
pub fn encode(opcode: u8, payload: &[u8], out: &mut BytesMut) {
    let mut head = [0u8; MAX_HEADER];
    let n = header(opcode, payload.len() as u64, &mut head);
    out.reserve(n + payload.len());
    out.put_slice(&head[..n]);
    out.put_slice(payload);
}

/// Appends an unmasked Close frame with `code` and `reason`, the reason truncated on a char
/// boundary to fit the 125-byte control payload (RFC 6455 §5.5.1). `code` should be one that
/// [`CloseCode::is_valid`] accepts.
pub fn encode_close(code: CloseCode, reason: &str, out: &mut BytesMut) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut head = [0u8; MAX_HEADER];
    let n = header(opcode::CLOSE, 2 + reason.len() as u64, &mut head);
    out.reserve(n + 2 + reason.len());
    out.put_slice(&head[..n]);
    out.put_u16(code.0);
    out.put_slice(reason);
}

/// Appends an unmasked Pong echoing `payload` (RFC 6455 §5.5.3), a Ping's payload; anything
/// past 125 bytes is dropped.
pub fn encode_pong(payload: &[u8], out: &mut BytesMut) {
    encode(
        opcode::PONG,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
        out,
    );
}

/// A masked frame as a client sends it (for the bench client and tests).
pub fn encode_masked(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4], out: &mut BytesMut) {
    let mut head = [0u8; MAX_HEADER];
    head[0] = if fin { FIN } else { 0 } | (opcode & OPCODE);
    let mut n = put_len(MASK, payload.len() as u64, &mut head);
    head[n..n + 4].copy_from_slice(&mask);
    n += 4;
    out.reserve(n + payload.len());
    out.put_slice(&head[..n]);
    let start = out.len();
    out.put_slice(payload);
    unmask(&mut out[start..], mask, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// What a connection sees from one stream: the data bytes, the control frames in order and
    /// the violation that ended it, if any.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        out: Vec<u8>,
        controls: Vec<Control>,
        error: Option<Violation>,
    }

    /// Feeds `chunks` one after another to a fresh decoder, decoding after each.
    fn feed<'a>(role: Role, max_frame: u64, chunks: impl IntoIterator<Item = &'a [u8]>) -> Seen {
        let mut decoder = Decoder::new(role, max_frame);
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        let mut controls = Vec::new();
        for chunk in chunks {
            input.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut input, &mut out) {
                    Ok(Some(c)) => controls.push(c),
                    Ok(None) => break,
                    Err(e) => {
                        return Seen {
                            out: out.to_vec(),
                            controls,
                            error: Some(e),
                        };
                    }
                }
            }
            assert!(input.len() < MAX_HEADER + MAX_CONTROL_PAYLOAD);
        }
        Seen {
            out: out.to_vec(),
            controls,
            error: None,
        }
    }

    fn server(stream: &[u8]) -> Seen {
        feed(Role::Server, u64::MAX, [stream])
    }

    fn masked(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_masked(op, fin, payload, M, &mut out);
        out.to_vec()
    }

    fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    }

    fn naive(buf: &mut [u8], mask: [u8; 4], phase: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[(phase + i) % 4];
        }
    }

    #[test]
    fn unmask_matches_the_byte_loop() {
        let data: Vec<u8> = (0..120u8)
            .map(|i| i.wrapping_mul(73).wrapping_add(5))
            .collect();
        for offset in 0..8 {
            for phase in 0..4 {
                for len in 0..100 {
                    let mut fast = data.clone();
                    let mut slow = data.clone();
                    unmask(&mut fast[offset..offset + len], M, phase);
                    naive(&mut slow[offset..offset + len], M, phase);
                    assert_eq!(fast, slow, "offset {offset} phase {phase} len {len}");
                }
            }
        }
    }

    #[test]
    fn header_lengths() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(header(opcode::BINARY, 0, &mut h), 2);
        assert_eq!(h[..2], [0x82, 0]);
        assert_eq!(header(opcode::BINARY, 125, &mut h), 2);
        assert_eq!(h[..2], [0x82, 125]);
        assert_eq!(header(opcode::BINARY, 126, &mut h), 4);
        assert_eq!(h[..4], [0x82, 126, 0, 126]);
        assert_eq!(header(opcode::BINARY, 65535, &mut h), 4);
        assert_eq!(h[..4], [0x82, 126, 0xff, 0xff]);
        assert_eq!(header(opcode::BINARY, 65536, &mut h), 10);
        assert_eq!(h[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn seven_sixteen_and_sixty_four_bit_lengths() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let seen = server(&masked(opcode::BINARY, true, &payload));
            assert_eq!(seen.error, None, "len {len}");
            assert_eq!(seen.out, payload, "len {len}");
            // The same frame one byte at a time.
            let frame = masked(opcode::BINARY, true, &payload);
            let seen = feed(Role::Server, u64::MAX, frame.chunks(1));
            assert_eq!(seen.out, payload, "len {len}, bytewise");
        }
    }

    #[test]
    fn exact_frame_bytes() {
        // RFC 6455 §5.7: a single-frame masked text "Hello" (here as binary).
        let frame = [
            0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(server(&frame).out, b"Hello");
        assert_eq!(masked(opcode::BINARY, true, b"Hello"), frame);
        // Unmasked, from a server.
        let frame = [0x82, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let seen = feed(Role::Client, u64::MAX, [&frame[..]]);
        assert_eq!(seen.out, b"Hello");
        let mut enc = BytesMut::new();
        encode(opcode::BINARY, b"Hello", &mut enc);
        assert_eq!(enc[..], frame);
    }

    #[test]
    fn several_frames_in_one_input() {
        let stream = cat(&[
            masked(opcode::BINARY, true, b"ab"),
            masked(opcode::BINARY, true, b""),
            masked(opcode::PING, true, b"p1"),
            masked(opcode::BINARY, false, b"cd"),
            masked(opcode::CONTINUATION, false, b""),
            masked(opcode::PONG, true, b"ignored"),
            masked(opcode::CONTINUATION, true, b"ef"),
            masked(opcode::CLOSE, true, &close_payload(1000, b"bye")),
            masked(opcode::BINARY, true, b"after close"),
        ]);
        let seen = server(&stream);
        assert_eq!(
            seen,
            Seen {
                out: b"abcdef".to_vec(),
                controls: vec![
                    Control::Ping(Bytes::from_static(b"p1")),
                    Control::Pong,
                    Control::Close {
                        code: Some(1000),
                        reason: Bytes::from_static(b"bye"),
                    },
                ],
                error: None,
            }
        );
    }

    #[test]
    fn ping_between_fragments() {
        let stream = cat(&[
            masked(opcode::BINARY, false, b"\x30\x05"),
            masked(opcode::PING, true, b"keep"),
            masked(opcode::CONTINUATION, false, b"\x00\x01"),
            masked(opcode::PING, true, b""),
            masked(opcode::CONTINUATION, true, b"t!x"),
            masked(opcode::BINARY, true, b"next"),
        ]);
        let seen = server(&stream);
        assert_eq!(seen.error, None);
        assert_eq!(seen.out, b"\x30\x05\x00\x01t!xnext");
        assert_eq!(
            seen.controls,
            [
                Control::Ping(Bytes::from_static(b"keep")),
                Control::Ping(Bytes::new())
            ]
        );
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let big: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let stream = cat(&[
            masked(opcode::BINARY, false, b"hello "),
            masked(opcode::PING, true, b"ping payload"),
            masked(opcode::CONTINUATION, true, b"world"),
            masked(opcode::BINARY, true, &big),
            masked(opcode::PONG, true, b""),
            masked(opcode::BINARY, true, b"x"),
            masked(opcode::CLOSE, true, &close_payload(1001, "gône".as_bytes())),
        ]);
        let whole = server(&stream);
        assert_eq!(whole.error, None);
        assert_eq!(whole.controls.len(), 3);
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            assert_eq!(feed(Role::Server, u64::MAX, [a, b]), whole, "split at {at}");
        }
        assert_eq!(feed(Role::Server, u64::MAX, stream.chunks(1)), whole);
    }

    #[test]
    fn a_partial_header_stays_in_input() {
        let frame = masked(opcode::BINARY, true, &[7u8; 200]);
        let mut decoder = Decoder::new(Role::Server, u64::MAX);
        let mut out = BytesMut::new();
        for end in 1..8 {
            let mut input = BytesMut::from(&frame[..end]);
            assert_eq!(decoder.decode(&mut input, &mut out), Ok(None));
            assert_eq!(input.len(), end, "nothing consumed from {end} header bytes");
        }
        let mut input = BytesMut::from(&frame[..20]);
        assert_eq!(decoder.decode(&mut input, &mut out), Ok(None));
        assert!(input.is_empty());
        assert_eq!(out[..], [7u8; 12]);
    }

    #[test]
    fn a_partial_control_frame_stays_in_input() {
        let frame = masked(opcode::PING, true, b"0123456789");
        let mut decoder = Decoder::new(Role::Server, u64::MAX);
        let mut out = BytesMut::new();
        let mut input = BytesMut::from(&frame[..frame.len() - 1]);
        assert_eq!(decoder.decode(&mut input, &mut out), Ok(None));
        assert_eq!(input.len(), frame.len() - 1);
        input.extend_from_slice(&frame[frame.len() - 1..]);
        assert_eq!(
            decoder.decode(&mut input, &mut out),
            Ok(Some(Control::Ping(Bytes::from_static(b"0123456789"))))
        );
        assert!(input.is_empty() && out.is_empty());
    }

    #[test]
    fn violations() {
        let m = |b0: u8, b1: u8| vec![b0, b1 | 0x80, 1, 2, 3, 4];
        let fragment = masked(opcode::BINARY, false, b"a");
        let mut cases: Vec<(String, Role, u64, Vec<u8>, u16)> = vec![
            (
                "unmasked to server".into(),
                Role::Server,
                u64::MAX,
                vec![0x82, 0x00],
                1002,
            ),
            (
                "masked to client".into(),
                Role::Client,
                u64::MAX,
                m(0x82, 0),
                1002,
            ),
            ("RSV1".into(), Role::Server, u64::MAX, m(0xc2, 0), 1002),
            ("RSV2".into(), Role::Server, u64::MAX, m(0xa2, 0), 1002),
            ("RSV3".into(), Role::Server, u64::MAX, m(0x92, 0), 1002),
            ("text".into(), Role::Server, u64::MAX, m(0x81, 0), 1003),
            (
                "text, client".into(),
                Role::Client,
                u64::MAX,
                vec![0x81, 0],
                1003,
            ),
            (
                "ping of 126".into(),
                Role::Server,
                u64::MAX,
                m(0x89, 126),
                1002,
            ),
            (
                "close of 127".into(),
                Role::Server,
                u64::MAX,
                m(0x88, 127),
                1002,
            ),
            (
                "ping no FIN".into(),
                Role::Server,
                u64::MAX,
                m(0x09, 0),
                1002,
            ),
            (
                "pong no FIN".into(),
                Role::Server,
                u64::MAX,
                m(0x0a, 0),
                1002,
            ),
            (
                "close no FIN".into(),
                Role::Server,
                u64::MAX,
                m(0x08, 0),
                1002,
            ),
            (
                "lone continuation".into(),
                Role::Server,
                u64::MAX,
                m(0x80, 0),
                1002,
            ),
            (
                "lone unfinished continuation".into(),
                Role::Server,
                u64::MAX,
                m(0x00, 0),
                1002,
            ),
            (
                "binary inside a message".into(),
                Role::Server,
                u64::MAX,
                cat(&[fragment.clone(), m(0x82, 0)]),
                1002,
            ),
            (
                "text inside a message".into(),
                Role::Server,
                u64::MAX,
                cat(&[fragment.clone(), m(0x81, 0)]),
                1003,
            ),
            (
                "continuation after the final fragment".into(),
                Role::Server,
                u64::MAX,
                cat(&[
                    fragment,
                    masked(opcode::CONTINUATION, true, b"b"),
                    m(0x80, 0),
                ]),
                1002,
            ),
            (
                "16-bit length under 126".into(),
                Role::Server,
                u64::MAX,
                vec![0x82, 0xfe, 0, 125, 1, 2, 3, 4],
                1002,
            ),
            (
                "64-bit length under 65536".into(),
                Role::Server,
                u64::MAX,
                vec![0x82, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4],
                1002,
            ),
            (
                "64-bit length, top bit".into(),
                Role::Server,
                u64::MAX,
                vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                1002,
            ),
            ("over max_frame".into(), Role::Server, 10, m(0x82, 11), 1009),
            (
                "64-bit over max_frame".into(),
                Role::Server,
                1 << 20,
                vec![0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 1],
                1009,
            ),
            (
                "close of one byte".into(),
                Role::Server,
                u64::MAX,
                masked(opcode::CLOSE, true, &[3]),
                1002,
            ),
            (
                "close reason not UTF-8".into(),
                Role::Server,
                u64::MAX,
                masked(opcode::CLOSE, true, &close_payload(1000, b"\xff\xfe")),
                1007,
            ),
            (
                "close reason cut mid-char".into(),
                Role::Server,
                u64::MAX,
                masked(
                    opcode::CLOSE,
                    true,
                    &close_payload(1000, &"é".as_bytes()[..1]),
                ),
                1007,
            ),
        ];
        for op in (3..=7).chain(0xb..=0xf) {
            cases.push((
                format!("reserved opcode {op:#x}"),
                Role::Server,
                u64::MAX,
                m(0x80 | op, 0),
                1002,
            ));
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            cases.push((
                format!("close code {code}"),
                Role::Server,
                u64::MAX,
                masked(opcode::CLOSE, true, &close_payload(code, b"")),
                1002,
            ));
        }
        for (name, role, max, stream, code) in cases {
            let seen = feed(role, max, [&stream[..]]);
            let error = seen.error.unwrap_or_else(|| panic!("{name}: accepted"));
            assert_eq!(error.code, CloseCode(code), "{name}: {error}");
            assert!(
                error.why.contains("§") || error.why.starts_with("MQTT-"),
                "{name}: {error}"
            );
            // The decoder stays failed.
            let seen_bytewise = feed(role, max, stream.chunks(1));
            assert_eq!(seen_bytewise.error, Some(error), "{name}, bytewise");
        }
    }

    #[test]
    fn a_failed_decoder_stays_failed() {
        let mut decoder = Decoder::new(Role::Server, u64::MAX);
        let mut out = BytesMut::new();
        let mut input = BytesMut::from(&[0x82u8, 0x00][..]);
        let error = decoder.decode(&mut input, &mut out).unwrap_err();
        let mut good = BytesMut::from(&masked(opcode::BINARY, true, b"x")[..]);
        assert_eq!(decoder.decode(&mut good, &mut out), Err(error));
        assert!(out.is_empty());
    }

    #[test]
    fn valid_close_codes() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1014, 3000, 4999,
        ] {
            let seen = server(&masked(
                opcode::CLOSE,
                true,
                &close_payload(code, "ok ✓".as_bytes()),
            ));
            assert_eq!(
                seen.controls,
                [Control::Close {
                    code: Some(code),
                    reason: Bytes::from("ok ✓".as_bytes())
                }],
                "code {code}"
            );
        }
        let seen = server(&masked(opcode::CLOSE, true, b""));
        assert_eq!(
            seen.controls,
            [Control::Close {
                code: None,
                reason: Bytes::new()
            }]
        );
    }

    #[test]
    fn closed_ignores_later_input() {
        let mut decoder = Decoder::new(Role::Server, u64::MAX);
        let mut out = BytesMut::new();
        let mut input = BytesMut::from(&masked(opcode::CLOSE, true, b"")[..]);
        input.extend_from_slice(b"garbage");
        assert!(!decoder.closed());
        assert!(matches!(
            decoder.decode(&mut input, &mut out),
            Ok(Some(Control::Close { .. }))
        ));
        assert!(decoder.closed());
        assert_eq!(decoder.decode(&mut input, &mut out), Ok(None));
        assert!(input.is_empty() && out.is_empty());
    }

    #[test]
    fn encoders() {
        let mut out = BytesMut::new();
        encode_pong(b"abc", &mut out);
        assert_eq!(out[..], [0x8a, 3, b'a', b'b', b'c']);

        // A 200-byte reason of two-byte chars is cut to 122 bytes (61 chars), not mid-char.
        let reason = "é".repeat(100);
        let mut out = BytesMut::new();
        encode_close(CloseCode::TOO_BIG, &reason, &mut out);
        assert_eq!(out[..4], [0x88, 124, 0x03, 0xf1]);
        assert_eq!(out.len(), 2 + 124);
        let seen = feed(Role::Client, u64::MAX, [&out[..]]);
        assert_eq!(
            seen.controls,
            [Control::Close {
                code: Some(1009),
                reason: Bytes::from("é".repeat(61))
            }]
        );

        let mut out = BytesMut::new();
        encode_close(CloseCode::NORMAL, &"a".repeat(200), &mut out);
        assert_eq!(out[1], 125);

        let mut out = BytesMut::new();
        encode_pong(&[1; 200], &mut out);
        assert_eq!(out[1], 125);
    }

    /// One frame in a generated stream.
    #[derive(Debug, Clone)]
    enum Piece {
        /// A data frame; `last` ends its message.
        Data {
            payload: Vec<u8>,
            last: bool,
            mask: [u8; 4],
        },
        Ping {
            payload: Vec<u8>,
            mask: [u8; 4],
        },
    }

    fn payload(lens: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u8>> {
        (lens, any::<u8>()).prop_map(|(len, seed)| {
            (0..len)
                .map(|i| seed.wrapping_add((i * 31) as u8))
                .collect()
        })
    }

    fn piece() -> impl Strategy<Value = Piece> {
        let data = prop_oneof![8 => payload(0..=300), 1 => payload(65_536..=70_000)];
        prop_oneof![
            4 => (data, any::<bool>(), any::<[u8; 4]>())
                .prop_map(|(payload, last, mask)| Piece::Data { payload, last, mask }),
            1 => (payload(0..=MAX_CONTROL_PAYLOAD), any::<[u8; 4]>())
                .prop_map(|(payload, mask)| Piece::Ping { payload, mask }),
        ]
    }

    proptest! {
        #[test]
        fn random_streams_in_random_chunks(
            pieces in prop::collection::vec(piece(), 0..24),
            sizes in prop::collection::vec(1usize..4096, 1..16),
        ) {
            let mut stream = BytesMut::new();
            let mut data = Vec::new();
            let mut pings = Vec::new();
            let mut open = false;
            for piece in &pieces {
                match piece {
                    Piece::Data { payload, last, mask } => {
                        let op = if open { opcode::CONTINUATION } else { opcode::BINARY };
                        encode_masked(op, *last, payload, *mask, &mut stream);
                        data.extend_from_slice(payload);
                        open = !last;
                    }
                    Piece::Ping { payload, mask } => {
                        encode_masked(opcode::PING, true, payload, *mask, &mut stream);
                        pings.push(Control::Ping(Bytes::copy_from_slice(payload)));
                    }
                }
            }
            if open {
                encode_masked(opcode::CONTINUATION, true, b"", [9, 8, 7, 6], &mut stream);
            }
            let mut chunks = Vec::new();
            let mut rest = &stream[..];
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                chunks.push(chunk);
                rest = tail;
            }
            let seen = feed(Role::Server, u64::MAX, chunks);
            prop_assert_eq!(seen.error, None);
            prop_assert_eq!(seen.out, data);
            prop_assert_eq!(seen.controls, pings);
        }
    }
}
