//! The global shared-subscription routes: `$share/{group}/{filter}` → bitmask of the shards
//! holding members of that group.
//!
//! Shared by every shard (in an `Arc`). A publishing shard matches a topic against it once and,
//! for each matching group, sends the message to exactly one shard of the group's mask
//! (itself if it holds members, otherwise the next one round-robin); that shard picks one
//! member (see `shard::state`, "shared subscriptions"). A shard writes here only when its
//! first member of a group arrives or its last one leaves, so writes are rare: each builds a
//! new snapshot (group list plus a [`LocalIndex`] trie over the groups' filters) and swaps it
//! in with a compare-and-swap loop; reads load the current snapshot without locking, and an
//! empty table costs one load per publish.
//!
//! ```text
//!  PUBLISH sensors/1 ──► for_each_match ──► ("$share/g1/sensors/+", 0b0110)  ─► one of shards 1, 2
//!                                       └─► ("$share/g2/#",         0b0001)  ─► shard 0
//! ```

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::LocalIndex;
use super::routes::{MAX_SHARDS, ShardMask};
use crate::protocol::TopicFilter;

#[derive(Default)]
struct Snapshot {
    /// Group key (the whole `$share/...` filter) and its shard mask; index = trie key.
    groups: Vec<(TopicFilter, ShardMask)>,
    /// The groups' inner filters → position in `groups`.
    trie: LocalIndex<u32, ()>,
}

impl Snapshot {
    fn with(groups: Vec<(TopicFilter, ShardMask)>) -> Self {
        let mut trie = LocalIndex::new();
        for (i, (key, _)) in groups.iter().enumerate() {
            if let Some((_, inner)) = key.shared() {
                let _ = trie.insert(inner.as_bytes(), i as u32, ());
            }
        }
        Self { groups, trie }
    }
}

/// The shared-subscription routes. See the module documentation.
pub struct SharedRoutes {
    snapshot: ArcSwap<Snapshot>,
}

impl Default for SharedRoutes {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SharedRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRoutes")
            .field("groups", &self.len())
            .finish()
    }
}

impl SharedRoutes {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
        }
    }

    /// Groups with at least one shard.
    pub fn len(&self) -> usize {
        self.snapshot.load().groups.len()
    }

    /// Whether no group exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets `shard`'s bit for the group `key` (a `$share/` filter); true if newly set.
    pub fn add(&self, key: &TopicFilter, shard: usize) -> bool {
        self.change(key, shard, true)
    }

    /// Clears `shard`'s bit for the group `key`, dropping the group at mask 0; true if it
    /// was set.
    pub fn remove(&self, key: &TopicFilter, shard: usize) -> bool {
        self.change(key, shard, false)
    }

    fn change(&self, key: &TopicFilter, shard: usize, set: bool) -> bool {
        debug_assert!(shard < MAX_SHARDS && key.shared().is_some());
        if shard >= MAX_SHARDS || key.shared().is_none() {
            return false;
        }
        let bit = 1u64 << shard;
        let mut changed = false;
        self.snapshot.rcu(|s| {
            let pos = s.groups.iter().position(|(k, _)| k == key);
            let old = pos.map_or(0, |i| s.groups[i].1);
            let mask = if set { old | bit } else { old & !bit };
            changed = mask != old;
            if !changed {
                return Arc::clone(s);
            }
            let mut groups = s.groups.clone();
            match (pos, mask) {
                (Some(i), 0) => {
                    groups.swap_remove(i);
                }
                (Some(i), m) => groups[i].1 = m,
                (None, m) => groups.push((key.clone(), m)),
            }
            Arc::new(Snapshot::with(groups))
        });
        changed
    }

    /// The mask of the group `key` (0 when it has no shard).
    pub fn mask(&self, key: &TopicFilter) -> ShardMask {
        let s = self.snapshot.load();
        s.groups
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, m)| *m)
    }

    /// Calls `f` with each group whose filter matches `topic`, and its shard mask.
    #[inline]
    pub fn for_each_match(&self, topic: &[u8], mut f: impl FnMut(&TopicFilter, ShardMask)) {
        let s = self.snapshot.load();
        if s.groups.is_empty() {
            return;
        }
        s.trie.for_each_match(topic, |i, _| {
            let (key, mask) = &s.groups[i as usize];
            f(key, *mask);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(r: &SharedRoutes, topic: &str) -> Vec<(String, ShardMask)> {
        let mut v = Vec::new();
        r.for_each_match(topic.as_bytes(), |k, m| v.push((k.as_str().to_string(), m)));
        v.sort();
        v
    }

    #[test]
    fn groups_gain_and_lose_shards() {
        let r = SharedRoutes::new();
        let g1 = TopicFilter::from("$share/g1/a/+");
        let g2 = TopicFilter::from("$share/g2/#");
        assert!(r.add(&g1, 1));
        assert!(!r.add(&g1, 1));
        assert!(r.add(&g1, 2));
        assert!(r.add(&g2, 0));
        assert_eq!(
            matches(&r, "a/b"),
            vec![("$share/g1/a/+".into(), 0b110), ("$share/g2/#".into(), 0b1)]
        );
        assert_eq!(matches(&r, "x"), vec![("$share/g2/#".into(), 0b1)]);
        // `$` topics never match a leading wildcard.
        assert_eq!(matches(&r, "$SYS/x"), vec![]);
        assert!(r.remove(&g1, 1));
        assert_eq!(r.mask(&g1), 0b100);
        assert!(r.remove(&g1, 2));
        assert!(!r.remove(&g1, 2));
        assert_eq!(r.len(), 1);
        assert!(r.remove(&g2, 0));
        assert!(r.is_empty());
        assert_eq!(matches(&r, "a/b"), vec![]);
    }

    #[test]
    fn concurrent_writers_lose_no_bit() {
        let r = Arc::new(SharedRoutes::new());
        let key = TopicFilter::from("$share/g/t/#");
        let threads: Vec<_> = (0..4)
            .map(|s| {
                let r = r.clone();
                let key = key.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        r.add(&key, s);
                        r.remove(&key, s);
                    }
                    r.add(&key, s);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.mask(&key), 0b1111);
    }
}
