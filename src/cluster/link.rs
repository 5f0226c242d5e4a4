//! The Redis connections of the cluster threads (`shardmq-cluster-*`, off the shards): one
//! Redis (`redis://host:port[/db]`) or a Redis Cluster (`redis+cluster://host:port,host:port`,
//! any reachable seeds) behind one interface.
//!
//! ```text
//!                       one Redis                 Redis Cluster (≥ 7)
//!  keys (filters,       that Redis                the key's slot owner (ClusterConnection
//!  claims, retained)                              follows MOVED / ASK)
//!  a node's channel     PUBLISH / SUBSCRIBE       SPUBLISH / SSUBSCRIBE: the channel's slot
//!  shardmq:to:{node}                              owner only (sharded pub/sub)
//!  broadcasts (routes,  PUBLISH / SUBSCRIBE       PUBLISH / SUBSCRIBE on any node (the cluster
//!  retained updates)                              bus relays them to every node)
//! ```
//!
//! With sharded pub/sub a forwarded message occupies only the Redis node that owns the target
//! node's channel, so the cluster's cross-node ceiling grows with its Redis nodes; the rare
//! broadcasts (filter changes, retained messages) cross the whole Redis Cluster.

use std::time::Duration;

use redis::{ConnectionLike, RedisResult, Value};

/// How long to wait for a Redis connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the cluster's Redis is.
#[derive(Clone)]
pub enum Backend {
    /// One Redis server.
    Single(redis::Client),
    /// A Redis Cluster: the client for keyed commands, and its seeds for subscriptions.
    Cluster {
        /// Follows the slot map for keyed commands.
        client: redis::cluster::ClusterClient,
        /// The configured nodes, tried in turn for plain connections.
        seeds: Vec<redis::Client>,
    },
}

impl Backend {
    /// Parses `cluster.redis`: `redis://…` (one Redis) or `redis+cluster://h1:p1,h2:p2`.
    pub fn open(url: &str) -> Result<Backend, String> {
        let bad = |e: &dyn std::fmt::Display| {
            format!(
                "cluster.redis {url:?}: {e}; use redis://HOST:PORT or redis+cluster://HOST:PORT,HOST:PORT"
            )
        };
        let Some(rest) = url.strip_prefix("redis+cluster://") else {
            return redis::Client::open(url)
                .map(Backend::Single)
                .map_err(|e| bad(&e));
        };
        let seeds: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| format!("redis://{s}"))
            .collect();
        if seeds.is_empty() {
            return Err(bad(&"no Redis Cluster node given"));
        }
        let clients = seeds
            .iter()
            .map(|s| redis::Client::open(s.as_str()))
            .collect::<RedisResult<Vec<_>>>()
            .map_err(|e| bad(&e))?;
        let client = redis::cluster::ClusterClient::builder(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(Duration::from_secs(2))
            .retries(2)
            .build()
            .map_err(|e| bad(&e))?;
        Ok(Backend::Cluster {
            client,
            seeds: clients,
        })
    }

    /// A connection for commands (keys follow their slots on a Redis Cluster).
    pub fn connect(&self) -> RedisResult<Link> {
        match self {
            Backend::Single(c) => c
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .map(Link::Single),
            Backend::Cluster { client, .. } => {
                client.get_connection().map(|c| Link::Cluster(Box::new(c)))
            }
        }
    }

    /// Whether node channels use sharded pub/sub (a Redis Cluster).
    pub fn sharded(&self) -> bool {
        matches!(self, Backend::Cluster { .. })
    }

    /// A plain connection: the Redis, or the first seed of a Redis Cluster that answers.
    pub fn plain(&self) -> RedisResult<redis::Connection> {
        match self {
            Backend::Single(c) => c.get_connection_with_timeout(CONNECT_TIMEOUT),
            Backend::Cluster { seeds, .. } => {
                let mut last = None;
                for s in seeds {
                    match s.get_connection_with_timeout(CONNECT_TIMEOUT) {
                        Ok(c) => return Ok(c),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Io, "no Redis Cluster node"))
                }))
            }
        }
    }

    /// A connection to the Redis Cluster node that owns `channel`'s slot, sharded-subscribed
    /// to it (`SSUBSCRIBE`; a `MOVED` answer names the owner, which is tried next).
    pub fn shard_subscribe(&self, channel: &str) -> RedisResult<redis::Connection> {
        let mut con = self.plain()?;
        for _ in 0..4 {
            let reply = redis::cmd("SSUBSCRIBE")
                .arg(channel)
                .query::<Value>(&mut con);
            match reply {
                Ok(_) => return Ok(con),
                Err(e) if e.redirect_node().is_some() => {
                    let Some((host, port)) = e.redirect_node().and_then(|(addr, _)| {
                        let (h, p) = addr.rsplit_once(':')?;
                        Some((h.to_string(), p.parse::<u16>().ok()?))
                    }) else {
                        return Err(e);
                    };
                    let client = redis::Client::open(format!("redis://{host}:{port}"))?;
                    con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "SSUBSCRIBE: redirected too often",
        )))
    }
}

/// A connection for commands.
pub enum Link {
    /// To one Redis.
    Single(redis::Connection),
    /// To a Redis Cluster (boxed: it holds a connection per Redis node and the slot map).
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl ConnectionLike for Link {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match self {
            Link::Single(c) => c.req_command(cmd),
            Link::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Link::Single(c) => c.check_connection(),
            Link::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Link::Single(c) => c.is_open(),
            Link::Cluster(c) => c.is_open(),
        }
    }
}

impl Link {
    /// The command that publishes on a node's channel.
    fn node_publish(&self) -> &'static str {
        match self {
            Link::Single(_) => "PUBLISH",
            Link::Cluster(_) => "SPUBLISH",
        }
    }

    /// Publishes `payload` on a node's channel.
    pub fn publish_to_node(&mut self, channel: &str, payload: &[u8]) -> RedisResult<()> {
        redis::cmd(self.node_publish())
            .arg(channel)
            .arg(payload)
            .query::<()>(self)
    }

    /// Publishes each (channel, payload) on its node's channel in one round trip (per Redis
    /// node).
    pub fn publish_many<'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> RedisResult<()> {
        let name = self.node_publish();
        match self {
            Link::Single(c) => {
                let mut pipe = redis::pipe();
                for (ch, p) in items {
                    pipe.cmd(name).arg(ch).arg(p).ignore();
                }
                pipe.query::<()>(c)
            }
            Link::Cluster(c) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for (ch, p) in items {
                    pipe.cmd(name).arg(ch).arg(p).ignore();
                }
                pipe.query::<()>(c)
            }
        }
    }
}

/// A message read from a subscription: (kind, channel, payload), e.g. ("smessage", …).
pub fn pushed(v: Value) -> Option<(Vec<u8>, String, Vec<u8>)> {
    let items = match v {
        Value::Array(items) => items,
        Value::Push { data, .. } => data,
        _ => return None,
    };
    let mut it = items.into_iter();
    let bytes = |v: Option<Value>| match v {
        Some(Value::BulkString(b)) => Some(b),
        Some(Value::SimpleString(s)) => Some(s.into_bytes()),
        _ => None,
    };
    let kind = bytes(it.next())?;
    let channel = String::from_utf8(bytes(it.next())?).ok()?;
    let payload = match it.next() {
        Some(Value::Int(n)) => n.to_string().into_bytes(),
        other => bytes(other)?,
    };
    Some((kind, channel, payload))
}
