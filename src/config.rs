//! Broker configuration: the TOML file, its defaults, and every bound in one [`Limits`] struct.
//!
//! Loaded once on the main thread before any shard starts; shards get a read-only copy. Unknown
//! keys are errors (a typo must not silently fall back to a default), and every error is one
//! line naming the file, the line and what to fix.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TCP listeners, e.g. `["0.0.0.0:1883"]`.
    pub listen: Vec<SocketAddr>,
    /// Number of shards (threads); 0 = one per available core.
    pub shards: usize,
    /// Cores to run shards on, e.g. `"0-3,8"`; overrides `shards` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<String>,
    /// Pin each shard thread to its core.
    pub pin: bool,
    /// I/O driver: `auto` (io_uring, falling back to epoll), `uring` or `epoll`.
    pub io_driver: IoDriver,
    /// Log filter, e.g. `info` or `shardmq=debug`.
    pub log_level: String,
    /// Log line format: `text` (human-readable) or `json` (one object per line).
    pub log_format: LogFormat,
    /// Queue QoS 0 messages for offline persistent sessions too (QoS 1 and 2 always are).
    pub queue_qos0_offline: bool,
    /// MQTT 5.0 features the broker offers (announced in CONNACK and enforced).
    pub mqtt: Mqtt,
    /// Authentication.
    pub auth: Auth,
    /// Persistence of retained messages (and, later, sessions) across restarts.
    pub persistence: Persistence,
    /// Every bound the broker enforces.
    pub limits: Limits,
    /// MQTT over TLS listeners.
    pub tls: Tls,
    /// MQTT over WebSocket listeners.
    pub websocket: WebSocket,
    /// Prometheus metrics, health and `$SYS` topics.
    pub metrics: Metrics,
    /// Several nodes as one broker, through Redis.
    pub cluster: Cluster,
}

/// Clustering through Redis (off unless `redis` is set).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Redis URL, e.g. `redis://127.0.0.1:6379` (empty: no cluster).
    pub redis: String,
    /// This node's id (empty: generated once and kept in the data directory).
    pub node_id: String,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u32,
    /// Seconds without a heartbeat after which a node's routes are dropped.
    pub node_ttl_secs: u32,
    /// Forwards and route changes waiting for the cluster thread; a forward that finds it
    /// full is dropped (counted).
    pub queue: usize,
    /// How long a CONNECT resuming a session (Clean Start 0) waits for the session to
    /// arrive from the node the client was on; past it the client gets a new session.
    pub move_timeout_ms: u32,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            redis: String::new(),
            node_id: String::new(),
            heartbeat_secs: 2,
            node_ttl_secs: 6,
            queue: 65_536,
            move_timeout_ms: 2_000,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, message, fields).
    Json,
}

/// Observability: the Prometheus endpoint and the `$SYS` topics.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// HTTP listeners serving `/metrics` (Prometheus text format) and `/health`, e.g.
    /// `["127.0.0.1:9183"]` (none by default).
    pub listen: Vec<SocketAddr>,
    /// Seconds between `$SYS/broker/...` updates (mosquitto's topics; 0 = none).
    pub sys_interval: u32,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            sys_interval: 10,
        }
    }
}

/// MQTT over WebSocket (RFC 6455, subprotocol `mqtt`), plain and over TLS.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocket {
    /// WebSocket listeners, e.g. `["0.0.0.0:8083"]` (none by default).
    pub listen: Vec<SocketAddr>,
    /// Secure WebSocket listeners with the `[tls]` certificate, e.g. `["0.0.0.0:8084"]`
    /// (none by default).
    pub tls_listen: Vec<SocketAddr>,
    /// The HTTP path clients connect to; other paths get 404.
    pub path: String,
    /// Largest WebSocket frame accepted from a client, bytes (0: twice
    /// `limits.max_packet_size`); a larger one is answered with close code 1009.
    pub max_frame_size: u64,
}

impl Default for WebSocket {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            tls_listen: Vec::new(),
            path: "/mqtt".into(),
            max_frame_size: 0,
        }
    }
}

impl WebSocket {
    /// The frame size limit in force.
    pub fn frame_limit(&self, max_packet_size: u32) -> u64 {
        if self.max_frame_size == 0 {
            2 * u64::from(max_packet_size)
        } else {
            self.max_frame_size
        }
    }
}

/// MQTT over TLS (rustls; TLS 1.2 and 1.3).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// TLS listeners, e.g. `["0.0.0.0:8883"]` (none by default).
    pub listen: Vec<SocketAddr>,
    /// The server's certificate chain (PEM, leaf first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<std::path::PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Refuse clients without a certificate signed by `ca_file`.
    pub require_certificate: bool,
    /// The client certificate's common name (CN) is the user name (for the ACL and the
    /// hooks); no password is checked. Needs `require_certificate`.
    pub use_identity_as_username: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
            shards: 0,
            cores: None,
            pin: true,
            io_driver: IoDriver::Auto,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            queue_qos0_offline: false,
            mqtt: Mqtt::default(),
            auth: Auth::default(),
            persistence: Persistence::default(),
            limits: Limits::default(),
            tls: Tls::default(),
            websocket: WebSocket::default(),
            metrics: Metrics::default(),
            cluster: Cluster::default(),
        }
    }
}

/// Persistence settings: the embedded store (see `crate::store`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Persistence {
    /// Keep retained messages in the embedded store (false: a pure in-memory broker).
    pub enabled: bool,
    /// Where the store lives.
    pub data_dir: std::path::PathBuf,
    /// `sync` (default): a QoS ≥ 1 PUBLISH is acknowledged only once every store write it
    /// caused is fsynced (group commit: one fsync per store batch). `relaxed`: acknowledged
    /// at once; every write reaches the OS within the store's next batch (survives
    /// `kill -9` after that) and is fsynced within `commit_interval_ms` (a crash may lose
    /// the last acknowledged messages, a power loss up to that much).
    pub durability: Durability,
    /// Milliseconds between fsyncs with `relaxed`.
    pub commit_interval_ms: u16,
    /// MiB the store's memtables may hold in all before they are flushed to disk.
    pub write_buffer_mib: u32,
    /// MiB of the store's block cache.
    pub cache_mib: u32,
}

impl Default for Persistence {
    fn default() -> Self {
        Self {
            enabled: true,
            data_dir: "shardmq-data".into(),
            durability: Durability::Sync,
            commit_interval_ms: 100,
            write_buffer_mib: 64,
            cache_mib: 32,
        }
    }
}

/// How durable a write must be before the broker moves on.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Written to the OS at once, fsynced on an interval.
    Relaxed,
    /// Committed and fsynced before a QoS ≥ 1 PUBLISH is acknowledged.
    Sync,
}

/// Authentication settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// A file of SCRAM-SHA-256 credentials (one `user:SCRAM-SHA-256$…` line each, as
    /// `shardmq scram-credential` prints them). When set, MQTT 5.0 clients may authenticate
    /// with Authentication Method `SCRAM-SHA-256` (enhanced authentication, §4.12).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scram_credentials: Option<std::path::PathBuf>,
    /// A password file in mosquitto's format (`user:$7$…` lines, as `shardmq passwd` or
    /// `mosquitto_passwd` write them). When set, a CONNECT with a user name must carry its
    /// password (else 3.1.1 return code 4 / 5.0 0x86).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// Whether a CONNECT without a user name is accepted (else 3.1.1 return code 5 / 5.0
    /// 0x87). Unset: true without a password file, false with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// An ACL file in mosquitto's format (`user`, `topic [read|write|readwrite|deny] T`,
    /// `pattern … %c %u`). When set, a client may publish and subscribe only where it allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<std::path::PathBuf>,
}

impl Auth {
    /// Whether clients without a user name are let in.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.password_file.is_none())
    }
}

/// MQTT 5.0 features: what CONNACK announces, and what the broker then enforces.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    /// Highest QoS accepted from publishers and granted to subscribers (0, 1 or 2; CONNACK
    /// Maximum QoS when below 2).
    pub maximum_qos: u8,
    /// Retained messages are kept (false: CONNACK Retain Available 0, and a PUBLISH with
    /// RETAIN is a protocol violation, DISCONNECT 0x9A).
    pub retain_available: bool,
    /// Filters with `+` or `#` are accepted (false: SUBACK 0xA2).
    pub wildcard_subscriptions: bool,
    /// Subscription Identifiers are accepted and attached on delivery (false: SUBACK 0xA1).
    pub subscription_identifiers: bool,
    /// `$share/{group}/{filter}` subscriptions are accepted (false: SUBACK 0x9E).
    pub shared_subscriptions: bool,
    /// Replace repeated topics with topic aliases on the way to clients that allow them
    /// (their CONNECT Topic Alias Maximum).
    pub server_topic_aliases: bool,
    /// Response Information for clients that ask for it; `%c` is replaced by the client
    /// identifier. Empty: none is sent.
    pub response_information: String,
}

impl Default for Mqtt {
    fn default() -> Self {
        Self {
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            shared_subscriptions: true,
            server_topic_aliases: true,
            response_information: "response/%c".into(),
        }
    }
}

/// Which io driver a shard's runtime uses.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoDriver {
    /// io_uring, or epoll when the kernel refuses io_uring (logged).
    Auto,
    /// io_uring only; fail to start without it.
    Uring,
    /// epoll only.
    Epoll,
}

/// Every queue, buffer and table bound, in one place (DESIGN.md invariant 2).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections the broker accepts in total; further ones are closed at accept.
    pub max_connections: usize,
    /// Connections one shard accepts (0: only `max_connections` applies); more are closed at
    /// accept, counted.
    pub max_connections_per_shard: usize,
    /// New connections a second from one source address, per shard (0: no limit); more are
    /// closed at accept, counted. With SO_REUSEPORT one address's connections spread over the
    /// shards, so the broker-wide rate is up to this times the shard count.
    pub max_connect_rate_per_ip: u32,
    /// Largest packet accepted from a client, whole frame, bytes (MQTT 5.0 Maximum Packet Size).
    pub max_packet_size: u32,
    /// Unacknowledged QoS 1/2 messages in flight to one client.
    pub max_inflight: u16,
    /// Messages queued for one session (offline or behind its inflight window).
    pub max_queued_messages: usize,
    /// Bytes of payload queued for one session.
    pub max_queued_bytes: usize,
    /// Slots in each shard-to-shard ring (rounded up to a power of two).
    pub ring_capacity: usize,
    /// Messages a shard holds for full rings while its publishers stop reading; past it, QoS 0
    /// publishes to a full ring are dropped (counted).
    pub ring_overflow: usize,
    /// Longest client identifier accepted, bytes.
    pub max_client_id_len: usize,
    /// Subscriptions one client may hold.
    pub max_subscriptions_per_client: usize,
    /// Levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Retained messages kept broker-wide; a new topic past it is not kept (the message is
    /// still delivered to subscribers).
    pub max_retained_messages: usize,
    /// Bytes of retained messages kept (topics and payloads, plus about 100 bytes each),
    /// per shard replica; a message past it is not kept, and one that would replace a kept
    /// message removes it (a stale value is never served).
    pub max_retained_bytes: usize,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u32,
    /// Largest keep alive the broker grants, seconds (0 = whatever the client asks).
    pub max_keep_alive_secs: u16,
    /// Bytes read from a socket at a time per connection (the read buffer grows up to
    /// `max_packet_size` only for a packet that needs it).
    pub read_buffer: usize,
    /// Bytes buffered for sending to one connection before it counts as a slow consumer.
    pub max_write_buffer: usize,
    /// QoS 1/2 PUBLISHes a client may have unacknowledged towards the broker (CONNACK
    /// Receive Maximum; a client that exceeds it is disconnected with 0x93).
    pub receive_maximum: u16,
    /// Topic aliases a client may set (CONNACK Topic Alias Maximum; 0 = none).
    pub max_topic_aliases: u16,
    /// Largest Session Expiry Interval granted, seconds (4294967295 = never expire). Also the
    /// lifetime of a 3.1 / 3.1.1 persistent session after its client disconnects.
    pub max_session_expiry_secs: u32,
    /// Writes waiting for the store thread (per broker); past it each shard holds them
    /// back in a backlog of the same size, and drops the oldest beyond (counted, logged).
    pub store_queue: usize,
    /// CONNECT password checks waiting for the authentication thread; a CONNECT that finds
    /// the queue full is refused at once (3.1.1 return code 3 / 5.0 0x89 Server busy).
    pub auth_queue: usize,
    /// PUBLISH packets a second one client may send (0: no limit). A client over it is
    /// throttled (its socket is not read until it is within the rate again), not
    /// disconnected; other clients are not slowed.
    pub max_publish_rate: u32,
    /// PUBLISH packets a client may send at once above its rate (0: one second's worth).
    pub publish_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_shard: 0,
            max_connect_rate_per_ip: 0,
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            ring_capacity: 4096,
            ring_overflow: 65_536,
            max_client_id_len: 256,
            max_subscriptions_per_client: 1000,
            max_topic_levels: 64,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 512 * 1024 * 1024,
            connect_timeout_secs: 10,
            max_keep_alive_secs: 0,
            read_buffer: 4096,
            max_write_buffer: 4 * 1024 * 1024,
            receive_maximum: 1024,
            max_topic_aliases: 64,
            max_session_expiry_secs: u32::MAX,
            store_queue: 65_536,
            auth_queue: 1024,
            max_publish_rate: 0,
            publish_burst: 0,
        }
    }
}

/// A configuration error, already phrased as the one line the user sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses TOML text; `origin` names the file in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let place = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" line {line}")
                })
                .unwrap_or_default();
            // toml's messages run over several lines; what they quote of the text (a key,
            // a value) may hold control characters too.
            let msg = escape_controls(&e.message().trim().replace('\n', "; "));
            ConfigError(format!("{origin}:{place}: {msg}"))
        })?;
        config
            .validate()
            .map_err(|m| ConfigError(format!("{origin}: {}", escape_controls(&m))))?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The settings as TOML, every key including defaults (unset options are left out); parses
    /// back to the same `Config` with [`Config::from_toml`].
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError(format!("cannot print the settings: {e}")))
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Err(
                "listen: at least one address is needed, e.g. listen = [\"0.0.0.0:1883\"]".into(),
            );
        }
        let t = &self.tls;
        if !t.listen.is_empty() && (t.cert_file.is_none() || t.key_file.is_none()) {
            return Err("tls.listen needs tls.cert_file and tls.key_file".into());
        }
        if !(1..=60_000).contains(&self.cluster.move_timeout_ms) {
            return Err(format!(
                "cluster.move_timeout_ms = {} is out of range; use 1 to 60000 (default 2000)",
                self.cluster.move_timeout_ms
            ));
        }
        let w = &self.websocket;
        if !w.tls_listen.is_empty() && (t.cert_file.is_none() || t.key_file.is_none()) {
            return Err("websocket.tls_listen needs tls.cert_file and tls.key_file".into());
        }
        if !w.path.starts_with('/') || w.path.contains(['?', '#', ' ']) {
            return Err(format!(
                "websocket.path: {:?} is not an HTTP path; use e.g. \"/mqtt\"",
                w.path
            ));
        }
        if t.require_certificate && t.ca_file.is_none() {
            return Err(
                "tls.require_certificate needs tls.ca_file (the CA client certificates chain to)"
                    .into(),
            );
        }
        if t.use_identity_as_username && !t.require_certificate {
            return Err(
                "tls.use_identity_as_username needs tls.require_certificate = true (and tls.ca_file)"
                    .into(),
            );
        }
        if let Some(c) = &self.cores {
            let list = parse_cores(c).map_err(|e| format!("cores: {e}"))?;
            if list.len() > 64 {
                return Err(format!(
                    "cores: {} cores listed; shardmq runs at most 64 shards",
                    list.len()
                ));
            }
        }
        if self.shards > 64 {
            return Err(format!(
                "shards: {} requested; shardmq runs at most 64 shards",
                self.shards
            ));
        }
        let l = &self.limits;
        if l.max_packet_size < 128 {
            return Err("limits.max_packet_size: must be at least 128 bytes".into());
        }
        if l.max_inflight == 0 {
            return Err(
                "limits.max_inflight: must be at least 1 (MQTT 5.0 Receive Maximum cannot be 0)"
                    .into(),
            );
        }
        if l.ring_capacity < 2 || l.ring_capacity > 1 << 20 {
            return Err("limits.ring_capacity: must be between 2 and 1048576".into());
        }
        if l.read_buffer < 64 {
            return Err("limits.read_buffer: must be at least 64 bytes".into());
        }
        if l.receive_maximum == 0 {
            return Err(
                "limits.receive_maximum: must be at least 1 (MQTT 5.0 Receive Maximum cannot be 0)"
                    .into(),
            );
        }
        if self.persistence.commit_interval_ms == 0 {
            return Err("persistence.commit_interval_ms: must be at least 1".into());
        }
        if !(1..=65_536).contains(&self.persistence.write_buffer_mib) {
            return Err("persistence.write_buffer_mib: must be between 1 and 65536".into());
        }
        if !(1..=65_536).contains(&self.persistence.cache_mib) {
            return Err("persistence.cache_mib: must be between 1 and 65536".into());
        }
        if l.store_queue == 0 {
            return Err("limits.store_queue: must be at least 1".into());
        }
        if self.mqtt.maximum_qos > 2 {
            return Err("mqtt.maximum_qos: must be 0, 1 or 2".into());
        }
        if l.max_client_id_len == 0 || l.max_client_id_len > 65_535 {
            return Err("limits.max_client_id_len: must be between 1 and 65535".into());
        }
        Ok(())
    }

    /// The cores shards run on: the `cores` list, or the first `shards` cores, or all.
    pub fn shard_cores(&self, available: usize) -> Vec<usize> {
        if let Some(c) = &self.cores {
            if let Ok(list) = parse_cores(c) {
                return list;
            }
        }
        let n = if self.shards == 0 {
            available.max(1)
        } else {
            self.shards
        };
        (0..n).map(|i| i % available.max(1)).collect()
    }
}

/// `text` with its control characters (line breaks, tabs, …) escaped as in Rust (`\n`), so an
/// error quoting a value of the user's stays one line.
fn escape_controls(text: &str) -> String {
    if !text.contains(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Parses a core list such as `0-3,8`: ranges and single cores, no duplicates.
pub fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let bad = || format!("'{part}' is not a core number or range (write e.g. 0-3,8)");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let n: usize = part.parse().map_err(|_| bad())?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(format!("range '{part}' runs backwards"));
        }
        if hi >= 4096 {
            return Err(format!("core {hi} is out of range"));
        }
        for c in lo..=hi {
            if out.contains(&c) {
                return Err(format!("core {c} is listed twice"));
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// The annotated default configuration shipped in the binary (`shardmq --print-config`).
pub const DEFAULT_TOML: &str = include_str!("../shardmq.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_is_the_default() {
        assert_eq!(
            Config::from_toml(DEFAULT_TOML, "shardmq.toml").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn errors_are_one_line_with_the_place() {
        let e = Config::from_toml("shards = 2\nlisen = [\"0.0.0.0:1\"]\n", "x.toml").unwrap_err();
        assert!(e.0.starts_with("x.toml: line 2:"), "{e}");
        assert!(e.0.contains("unknown field `lisen`"), "{e}");
        assert!(!e.0.contains('\n'));
        let e = Config::from_toml("[limits]\nmax_inflight = 0\n", "y.toml").unwrap_err();
        assert!(e.0.contains("limits.max_inflight"), "{e}");
        let e = Config::from_toml("io_driver = \"kqueue\"\n", "z.toml").unwrap_err();
        assert!(e.0.contains("line 1"), "{e}");
        // Found by the `config` fuzz target: a value or key the error quotes may hold line
        // breaks of its own (TOML escapes).
        let e = Config::from_toml("cores = \"0\\n1\"\n", "w.toml").unwrap_err();
        assert_eq!(
            e.0,
            "w.toml: cores: '0\\n1' is not a core number or range (write e.g. 0-3,8)"
        );
        let e = Config::from_toml("\"a\\rb\" = 1\n", "v.toml").unwrap_err();
        assert!(e.0.contains("unknown field `a\\rb`"), "{e}");
        assert!(!e.0.contains(['\n', '\r']), "{e}");
    }

    #[test]
    fn core_lists() {
        assert_eq!(parse_cores("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cores("5").unwrap(), vec![5]);
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores("1,1").is_err());
        assert!(parse_cores("a").is_err());
        let c = Config {
            shards: 3,
            ..Config::default()
        };
        assert_eq!(c.shard_cores(2), vec![0, 1, 0]);
        let c = Config {
            cores: Some("1".into()),
            ..Config::default()
        };
        assert_eq!(c.shard_cores(2), vec![1]);
    }

    #[test]
    fn printed_settings_parse_back() {
        let default = Config::default();
        let printed = default.to_toml().unwrap();
        assert_eq!(
            Config::from_toml(&printed, "printed").unwrap(),
            default,
            "{printed}"
        );

        let set = Config::from_toml(
            r#"
listen = ["127.0.0.1:1883", "[::1]:1884"]
cores = "0-1"
log_format = "json"
[auth]
password_file = "/etc/shardmq/passwd"
allow_anonymous = true
acl_file = "/etc/shardmq/acl"
[persistence]
durability = "relaxed"
data_dir = "/var/lib/shardmq"
[limits]
max_inflight = 7
[tls]
listen = ["0.0.0.0:8883"]
cert_file = "server.crt"
key_file = "server.key"
ca_file = "ca.crt"
require_certificate = true
[websocket]
tls_listen = ["0.0.0.0:8084"]
path = "/ws"
[metrics]
listen = ["127.0.0.1:9183"]
"#,
            "set.toml",
        )
        .unwrap();
        let printed = set.to_toml().unwrap();
        assert!(printed.contains("max_inflight = 7\n"), "{printed}");
        assert!(printed.contains("max_packet_size = 1048576\n"), "{printed}");
        assert!(
            printed.contains("password_file = \"/etc/shardmq/passwd\"\n"),
            "{printed}"
        );
        assert!(!printed.contains("scram_credentials"), "{printed}");
        assert_eq!(
            Config::from_toml(&printed, "printed").unwrap(),
            set,
            "{printed}"
        );
    }

    /// Every key of the config types as `section.key` (top-level keys bare), in declaration
    /// order, with whether it is set: a serializer that records the fields it is shown,
    /// including the unset options serde skips.
    fn config_keys(config: &Config) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        config
            .serialize(keys::Field {
                path: String::new(),
                out: &mut out,
            })
            .unwrap();
        out
    }

    mod keys {
        use serde::ser::{self, Serialize};

        #[derive(Debug)]
        pub struct Error(String);

        impl std::fmt::Display for Error {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for Error {}

        impl ser::Error for Error {
            fn custom<T: std::fmt::Display>(msg: T) -> Self {
                Error(msg.to_string())
            }
        }

        /// One value at `path`: a struct is a section whose fields are keys, anything else a key.
        pub struct Field<'a> {
            pub path: String,
            pub out: &'a mut Vec<(String, bool)>,
        }

        /// The fields of a section.
        pub struct Section<'a> {
            prefix: String,
            out: &'a mut Vec<(String, bool)>,
        }

        impl Section<'_> {
            fn path(&self, key: &str) -> String {
                if self.prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{}.{key}", self.prefix)
                }
            }
        }

        /// The inside of a value, which is not looked at.
        pub struct Ignore;

        impl Field<'_> {
            fn leaf(self) -> Result<(), Error> {
                self.out.push((self.path, true));
                Ok(())
            }
        }

        macro_rules! leaves {
            ($($method:ident($($ty:ty),*);)*) => {
                $(fn $method(self, $(_: $ty),*) -> Result<(), Error> {
                    self.leaf()
                })*
            };
        }

        impl<'a> ser::Serializer for Field<'a> {
            type Ok = ();
            type Error = Error;
            type SerializeSeq = Ignore;
            type SerializeTuple = Ignore;
            type SerializeTupleStruct = Ignore;
            type SerializeTupleVariant = Ignore;
            type SerializeMap = Ignore;
            type SerializeStruct = Section<'a>;
            type SerializeStructVariant = Ignore;

            leaves! {
                serialize_bool(bool);
                serialize_i8(i8);
                serialize_i16(i16);
                serialize_i32(i32);
                serialize_i64(i64);
                serialize_u8(u8);
                serialize_u16(u16);
                serialize_u32(u32);
                serialize_u64(u64);
                serialize_f32(f32);
                serialize_f64(f64);
                serialize_char(char);
                serialize_str(&str);
                serialize_bytes(&[u8]);
                serialize_none();
                serialize_unit();
                serialize_unit_struct(&'static str);
                serialize_unit_variant(&'static str, u32, &'static str);
            }

            fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
                value.serialize(self)
            }
            fn serialize_newtype_struct<T: Serialize + ?Sized>(
                self,
                _: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                value.serialize(self)
            }
            fn serialize_newtype_variant<T: Serialize + ?Sized>(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: &T,
            ) -> Result<(), Error> {
                self.leaf()
            }
            fn serialize_seq(self, _: Option<usize>) -> Result<Ignore, Error> {
                self.leaf().map(|()| Ignore)
            }
            fn serialize_tuple(self, _: usize) -> Result<Ignore, Error> {
                self.leaf().map(|()| Ignore)
            }
            fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Ignore, Error> {
                self.leaf().map(|()| Ignore)
            }
            fn serialize_tuple_variant(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: usize,
            ) -> Result<Ignore, Error> {
                self.leaf().map(|()| Ignore)
            }
            fn serialize_map(self, _: Option<usize>) -> Result<Ignore, Error> {
                self.leaf().map(|()| Ignore)
            }
            fn serialize_struct(self, _: &'static str, _: usize) -> Result<Section<'a>, Error> {
                Ok(Section {
                    prefix: self.path,
                    out: self.out,
                })
            }
            fn serialize_struct_variant(
                self,
                _: &'static str,
                _: u32,
                _: &'static str,
                _: usize,
            ) -> Result<Ignore, Error> {
                self.leaf().map(|()| Ignore)
            }
        }

        impl ser::SerializeStruct for Section<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                let path = self.path(key);
                value.serialize(Field {
                    path,
                    out: &mut *self.out,
                })
            }
            fn skip_field(&mut self, key: &'static str) -> Result<(), Error> {
                let path = self.path(key);
                self.out.push((path, false));
                Ok(())
            }
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }

        macro_rules! ignore {
            ($($trait:ident { $($method:ident($($arg:ident: $ty:ty),*);)* })*) => {
                $(impl ser::$trait for Ignore {
                    type Ok = ();
                    type Error = Error;
                    $(fn $method<T: Serialize + ?Sized>(
                        &mut self,
                        $($arg: $ty,)*
                        _: &T,
                    ) -> Result<(), Error> {
                        $(let _ = $arg;)*
                        Ok(())
                    })*
                    fn end(self) -> Result<(), Error> {
                        Ok(())
                    }
                })*
            };
        }

        ignore! {
            SerializeSeq { serialize_element(); }
            SerializeTuple { serialize_element(); }
            SerializeTupleStruct { serialize_field(); }
            SerializeTupleVariant { serialize_field(); }
            SerializeMap { serialize_key(); serialize_value(); }
            SerializeStructVariant { serialize_field(key: &'static str); }
        }
    }

    /// A key documented in `shardmq.toml`: set (`key = value`) or commented out
    /// (`# key = value`), with the comment above it or above its block of keys.
    #[derive(Debug)]
    struct DocKey {
        path: String,
        line: usize,
        meaning: Option<String>,
    }

    /// The keys `shardmq.toml` documents, in file order.
    fn documented_keys(text: &str) -> Vec<DocKey> {
        #[derive(PartialEq)]
        enum Prev {
            Blank,
            Comment,
            Key,
        }
        // `key = value` where the value is TOML, so prose such as `0 = none` is no key.
        let key_line = |section: &str, line: &str| -> Option<String> {
            let (key, _) = line.split_once(" = ")?;
            let ident = key.starts_with(|c: char| c.is_ascii_lowercase())
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            (ident && toml::from_str::<toml::Table>(line).is_ok()).then(|| {
                if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                }
            })
        };
        let mut keys = Vec::new();
        let mut section = String::new();
        let mut comment: Vec<&str> = Vec::new();
        let mut block: Option<String> = None;
        let mut prev = Prev::Blank;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('[') {
                if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    section = name.trim().to_string();
                }
                comment.clear();
                block = None;
                prev = Prev::Blank;
                continue;
            }
            let body = line.strip_prefix('#').map(str::trim);
            let key = key_line(&section, body.unwrap_or(line));
            match (body, key) {
                (Some(prose), None) => {
                    if prev == Prev::Key {
                        comment.clear();
                    }
                    comment.push(prose);
                    prev = Prev::Comment;
                }
                (_, Some(path)) => {
                    if prev == Prev::Comment {
                        let joined = comment.join(" ");
                        block = Some(joined.split_whitespace().collect::<Vec<_>>().join(" "));
                        comment.clear();
                    } else if prev == Prev::Blank {
                        block = None;
                    }
                    keys.push(DocKey {
                        path,
                        line: n + 1,
                        meaning: block.clone(),
                    });
                    prev = Prev::Key;
                }
                (None, None) => {
                    panic!("shardmq.toml line {}: not a key, comment or section", n + 1)
                }
            }
        }
        keys
    }

    #[test]
    fn documented_keys_take_the_comment_above_their_block() {
        let doc = documented_keys(
            "# Intro.\n\nbare = 1\n# The first\n#   two.\n# a = \"x\"\n# b = 2\n# 0 = none, prose\nc = [1]\n[s]\n# In s.\nd = true\n",
        );
        let got: Vec<(&str, Option<&str>)> = doc
            .iter()
            .map(|d| (d.path.as_str(), d.meaning.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("bare", None),
                ("a", Some("The first two.")),
                ("b", Some("The first two.")),
                ("c", Some("0 = none, prose")),
                ("s.d", Some("In s.")),
            ]
        );
    }

    #[test]
    fn every_key_is_documented_in_the_shipped_example() {
        let code = config_keys(&Config::default());
        let doc = documented_keys(DEFAULT_TOML);
        let mut problems = Vec::new();
        for (path, _) in &code {
            match doc.iter().find(|d| &d.path == path) {
                None => problems.push(format!(
                    "{path}: missing (add `key = default`, or `# key = example` for an unset \
                     option, under its [section] with a comment above it)"
                )),
                Some(DocKey {
                    line,
                    meaning: None,
                    ..
                }) => problems.push(format!("{path} (line {line}): no comment above it")),
                Some(_) => {}
            }
        }
        for d in &doc {
            if !code.iter().any(|(path, _)| path == &d.path) {
                problems.push(format!(
                    "{} (line {}): no such key in the code",
                    d.path, d.line
                ));
            }
            if doc.iter().filter(|e| e.path == d.path).count() > 1 {
                problems.push(format!("{} (line {}): documented twice", d.path, d.line));
            }
        }
        // Commented-out examples must at least have the right type.
        let mut section = "";
        for (n, line) in DEFAULT_TOML.lines().enumerate() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line;
            } else if let Some(body) = line.strip_prefix('#').map(str::trim) {
                if let Some(d) = doc.iter().find(|d| d.line == n + 1) {
                    if let Err(e) = toml::from_str::<Config>(&format!("{section}\n{body}\n")) {
                        let e = e.message().trim().replace('\n', "; ");
                        problems.push(format!("{} (line {}): bad example: {e}", d.path, d.line));
                    }
                }
            }
        }
        assert!(
            problems.is_empty(),
            "shardmq.toml and the config types disagree:\n{}",
            problems.join("\n")
        );
    }

    const README: &str = include_str!("../README.md");
    const REFERENCE_HEADING: &str = "## Configuration reference";

    /// The configuration reference table README.md should hold.
    fn expected_reference_table() -> String {
        let default = Config::default();
        // Each default exactly as `check-config` prints it.
        let printed = default.to_toml().unwrap();
        let mut section = String::new();
        let mut values = Vec::new();
        for line in printed.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{name}.");
            } else if let Some((key, value)) = line.split_once(" = ") {
                values.push((format!("{section}{key}"), value.to_string()));
            }
        }
        let doc = documented_keys(DEFAULT_TOML);
        let mut table = String::from("| key | default | meaning |\n|---|---|---|\n");
        for (path, set) in config_keys(&default) {
            let default = match values.iter().find(|(p, _)| p == &path) {
                Some((_, value)) => format!("`{value}`"),
                None if !set => "unset".to_string(),
                None => panic!("{path}: set, but not in the printed settings:\n{printed}"),
            };
            let meaning = doc
                .iter()
                .find(|d| d.path == path)
                .and_then(|d| d.meaning.clone())
                .unwrap_or_default();
            table.push_str(&format!(
                "| `{}` | {} | {} |\n",
                table_cell(&path),
                table_cell(&default),
                table_cell(&meaning)
            ));
        }
        table
    }

    /// Markdown table cell text: `|` escaped everywhere (GFM requires it in code spans too),
    /// `$` outside code spans (two of them would start inline math on GitHub).
    fn table_cell(text: &str) -> String {
        text.split('`')
            .enumerate()
            .map(|(i, part)| {
                let part = part.replace('|', "\\|");
                if i % 2 == 0 {
                    part.replace('$', "\\$")
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join("`")
    }

    /// The line range of the table in README's reference section: the first run of `|` lines
    /// (empty at the section's end when there is none).
    fn reference_table_lines(readme: &str) -> Option<std::ops::Range<usize>> {
        let lines: Vec<&str> = readme.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.trim_end() == REFERENCE_HEADING)?
            + 1;
        let end = lines[start..]
            .iter()
            .position(|l| l.starts_with("## "))
            .map_or(lines.len(), |i| start + i);
        let Some(first) = lines[start..end].iter().position(|l| l.starts_with('|')) else {
            return Some(end..end);
        };
        let first = start + first;
        let last = lines[first..end]
            .iter()
            .position(|l| !l.starts_with('|'))
            .map_or(end, |i| first + i);
        Some(first..last)
    }

    #[test]
    fn table_cells_are_escaped() {
        assert_eq!(table_cell("a|b"), "a\\|b");
        assert_eq!(table_cell("user:$7$ `x|$y`"), "user:\\$7\\$ `x\\|$y`");
    }

    #[test]
    fn readme_config_reference_matches_the_code() {
        let expected = expected_reference_table();
        if std::env::var_os("SHARDMQ_BLESS").is_some_and(|v| v == "1") {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
            let readme = std::fs::read_to_string(path).unwrap();
            let range = reference_table_lines(&readme)
                .unwrap_or_else(|| panic!("README.md has no `{REFERENCE_HEADING}` section"));
            let mut lines: Vec<&str> = readme.lines().collect();
            let mut table: Vec<&str> = expected.lines().collect();
            if range.is_empty() {
                table.push("");
            }
            lines.splice(range, table);
            let mut text = lines.join("\n");
            text.push('\n');
            std::fs::write(path, text).unwrap();
            eprintln!("README.md: configuration reference rewritten");
            return;
        }
        let range = reference_table_lines(README)
            .unwrap_or_else(|| panic!("README.md has no `{REFERENCE_HEADING}` section"));
        let actual: String = README.lines().collect::<Vec<_>>()[range]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            actual == expected,
            "README.md's configuration reference is out of date; replace its table with this \
             (or run `SHARDMQ_BLESS=1 cargo test --lib readme_config_reference`):\n\n{expected}"
        );
    }
}
