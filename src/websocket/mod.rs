//! MQTT over WebSocket (RFC 6455), sans I/O: the opening handshake and the framing layer.
//!
//! Owns the WebSocket transport between the socket and the MQTT codec. The connection that
//! accepted a WebSocket listener's socket uses it in two phases:
//!
//! 1. **Handshake** ([`handshake()`]): call it with every byte read so far until it answers
//!    [`Handshake::Accept`] (write its `101` response, drop `consumed` bytes, go on with
//!    whatever follows: it is already frames) or [`Handshake::Reject`] (write the error
//!    response, close). The chosen [`Subprotocol`] is `mqtt` when offered, else `mqttv3.1`.
//! 2. **Frames** ([`Decoder`]): each read goes through [`Decoder::decode`], which appends the
//!    unmasked payload of binary frames to the buffer the MQTT decoder reads, so MQTT packets
//!    may span frames or share one (MQTT-6.0.0-2). Control frames come back one at a time:
//!    answer a Ping with [`encode_pong`], a Close with [`encode_close`]. A [`Violation`] names
//!    the close code to send before closing. Outgoing MQTT bytes go out as binary frames behind
//!    a [`header`].
//!
//! Nothing here touches a socket, reads a clock or starts a thread; it runs on the shard thread
//! that owns the connection, and is tested with byte tables, a property test and a fuzz target.

pub mod frame;
pub mod handshake;

pub use frame::{
    CloseCode, Control, Decoder, MAX_CONTROL_PAYLOAD, MAX_HEADER, Role, Violation, encode,
    encode_close, encode_masked, encode_pong, header, opcode,
};
pub use handshake::{Handshake, MAX_HEADERS, Subprotocol, accept_key, handshake};
