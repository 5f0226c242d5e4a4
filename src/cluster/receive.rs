//! What this node hears from Redis, on the `shardmq-cluster-rx` thread(s): the broadcasts
//! (`shardmq:routes`, `shardmq:retained-updates`) and this node's channel
//! (`shardmq:to:{node}`), whose messages go to a shard's inbox.
//!
//! With one Redis a single subscription carries all three channels. On a Redis Cluster the
//! node channel is a sharded channel (`SSUBSCRIBE` on its slot's owner), read by a thread of
//! its own, `shardmq-cluster-rx-node`, while the broadcasts stay classic pub/sub on any node.
//! After every (re)subscription the other nodes' filters and the retained messages are
//! reloaded, so nothing announced while the subscription was down is missed.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::Commands;

use super::link::{Backend, pushed};
use super::{
    Cluster, Inbound, KIND_FETCH, KIND_KICK, KIND_MESSAGE, KIND_SESSION, KIND_SHARED, RETAINED,
    RETAINED_UPDATES, ROUTES, backoff, channel_to, filters_key, topic_shard, unframe_shared,
};
use crate::protocol::Str;
use crate::shard::state::directory_shard;

impl Cluster {
    /// Subscribes (again after every loss, with backoff) and hands what arrives on.
    pub(super) fn receive_loop(&self, backend: &Backend) {
        let mine = channel_to(&self.node_id);
        let mut channels = vec![ROUTES, RETAINED_UPDATES];
        if !backend.sharded() {
            channels.push(mine.as_str());
        }
        let mut attempt = 0u32;
        loop {
            let mut con = match backend.plain() {
                Ok(c) => c,
                Err(_) => {
                    attempt += 1;
                    std::thread::sleep(backoff(attempt));
                    continue;
                }
            };
            let mut ps = con.as_pubsub();
            // Subscribed first, then loaded: no route change falls between the two.
            if ps.subscribe(&channels).is_err() || self.resync(backend).is_err() {
                attempt += 1;
                std::thread::sleep(backoff(attempt));
                continue;
            }
            while let Ok(msg) = ps.get_message() {
                self.on_message(msg.get_channel_name(), msg.get_payload_bytes());
            }
            tracing::warn!("cluster: lost the Redis subscription; retrying");
            attempt = 1;
            std::thread::sleep(backoff(attempt));
        }
    }

    /// On a Redis Cluster: reads this node's sharded channel from its slot's owner, following
    /// the slot when it moves (Redis then ends the subscription with `sunsubscribe`).
    pub(super) fn receive_node_loop(&self, backend: &Backend) {
        let mine = channel_to(&self.node_id);
        let mut attempt = 0u32;
        loop {
            let mut con = match backend.shard_subscribe(&mine) {
                Ok(c) => c,
                Err(e) => {
                    if attempt == 0 {
                        tracing::warn!("cluster: cannot subscribe to {mine} ({e}); retrying");
                    }
                    attempt += 1;
                    std::thread::sleep(backoff(attempt));
                    continue;
                }
            };
            while let Ok(v) = con.recv_response() {
                let Some((kind, channel, payload)) = pushed(v) else {
                    continue;
                };
                match &kind[..] {
                    b"smessage" => self.on_message(&channel, &payload),
                    b"sunsubscribe" => break,
                    _ => {}
                }
            }
            tracing::warn!("cluster: the subscription to {mine} ended; subscribing again");
            attempt = 1;
            std::thread::sleep(backoff(attempt));
        }
    }

    /// One message from a subscribed channel.
    fn on_message(&self, channel: &str, payload: &[u8]) {
        if channel == ROUTES {
            let Some((&sign, rest)) = payload.split_first() else {
                return;
            };
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                return;
            };
            let node = String::from_utf8_lossy(&rest[..nl]);
            self.set_route(&node, &rest[nl + 1..], sign == b'+');
            return;
        }
        let message = if channel == RETAINED_UPDATES {
            let Some(nl) = payload.iter().position(|&b| b == b'\n') else {
                return;
            };
            if &payload[..nl] == self.node_id.as_bytes() {
                return;
            }
            &payload[nl + 1..]
        } else {
            match payload.split_first() {
                Some((&KIND_MESSAGE, rest)) => rest,
                Some((&KIND_SHARED, rest)) => {
                    if let Some((group, m)) = unframe_shared(rest) {
                        self.received.fetch_add(1, Ordering::Relaxed);
                        let shard = topic_shard(m.topic.as_bytes(), self.inbox.len());
                        self.push(shard, Inbound::Shared(group, Arc::new(m)));
                    }
                    return;
                }
                Some((&KIND_FETCH, rest)) => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        return;
                    };
                    let to = String::from_utf8_lossy(&rest[..nl]).into_owned();
                    if let Some((shard, id)) = self.directory_of(&rest[nl + 1..]) {
                        self.push(shard, Inbound::Surrender(id, to));
                    }
                    return;
                }
                Some((&KIND_SESSION, rest)) => return self.on_session(rest),
                Some((&KIND_KICK, id)) => {
                    if let Some((shard, id)) = self.directory_of(id) {
                        self.push(shard, Inbound::Kick(id));
                    }
                    return;
                }
                _ => return,
            }
        };
        let Ok((m, _)) = crate::store::codec::decode_message(message) else {
            return;
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        self.to_shard(m, true);
    }

    /// A client id from the wire and its directory shard.
    fn directory_of(&self, id: &[u8]) -> Option<(usize, Str)> {
        let id = Str::new(bytes::Bytes::copy_from_slice(id)).ok()?;
        Some((directory_shard(&id, self.inbox.len().max(1)), id))
    }

    /// A session (or word that there is none) from the node a client was on before.
    fn on_session(&self, b: &[u8]) {
        let Some(len) = b
            .get(..2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return;
        };
        let (Some(id), Some(&has)) = (b.get(2..2 + len), b.get(2 + len)) else {
            return;
        };
        let image = (has == 1).then(|| b[3 + len..].to_vec());
        let m = self
            .moves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match m {
            Some((m, _)) => self.moved(m, image),
            None if image.is_some() => tracing::warn!(
                client_id = %String::from_utf8_lossy(id),
                "cluster: a session came after its client gave up waiting; dropped"
            ),
            None => {}
        }
    }

    /// Reloads every other live node's filters and the retained messages (after
    /// (re)subscribing).
    fn resync(&self, backend: &Backend) -> redis::RedisResult<()> {
        let mut c = backend.connect()?;
        let keys: Vec<String> = c.keys("shardmq:node:*")?;
        let live: HashSet<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix("shardmq:node:").map(str::to_string))
            .collect();
        let known: Vec<String> = {
            let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes.index.keys().cloned().collect()
        };
        for id in known {
            self.drop_node(&id);
        }
        for id in live {
            if id == self.node_id {
                continue;
            }
            let filters: Vec<Vec<u8>> = c.smembers(filters_key(&id))?;
            for f in filters {
                self.set_route(&id, &f, true);
            }
        }
        let retained: Vec<(Vec<u8>, Vec<u8>)> = c.hgetall(RETAINED)?;
        for (_, value) in retained {
            if let Ok((m, _)) = crate::store::codec::decode_message(&value) {
                self.to_shard(m, false);
            }
        }
        Ok(())
    }
}
