//! The MQTT codec and protocol rules, with no I/O and no clock.
//!
//! Layers, bottom up (each usable on its own):
//!
//! ```text
//!  varint      Variable Byte Integer, branch-light
//!  header      fixed header: first-byte table, remaining length, maximum packet size
//!  string      MQTT UTF-8 strings (word-at-a-time ASCII fast path)
//!  topic       topic names and filters: validation, matching, $share parsing
//!  properties  MQTT 5.0 properties and where each may appear
//!  reason      MQTT 5.0 reason codes and the 3.x return-code mapping
//!  packet      the fifteen control packets as data
//!  decode      bytes → Packet, incremental, zero-copy
//!  encode      Packet → bytes, for 3.1, 3.1.1 or 5.0
//!  inflight    QoS 1/2 windows: packet ids out, QoS 2 ids awaiting PUBREL in
//!  session     one client's session as a state machine: packets in, bytes and actions out
//! ```
//!
//! One codec serves the three protocol versions (3 = "MQIsdp" 3.1, 4 = 3.1.1, 5 = 5.0); the
//! version is a parameter, not a separate code path. Encoder and decoder both handle every
//! packet in both directions, so the broker, the bench client and the tests share them.
//!
//! Nothing here touches a socket or reads a clock; it runs on whichever shard owns the
//! connection, and is tested with byte vectors, property tests and a fuzz target.

mod cursor;
pub mod decode;
pub mod encode;
pub mod error;
pub mod header;
pub mod inflight;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod session;
pub mod string;
pub mod topic;
pub mod varint;

pub use decode::decode;
pub use error::{EncodeError, Error};
pub use packet::*;
pub use properties::{Properties, PropertyValues};
pub use reason::ReasonCode;
pub use string::Str;
pub use topic::{TopicFilter, TopicName};
