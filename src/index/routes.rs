//! The global routes: topic filter → bitmask of the shards that have subscribers to it.
//!
//! Shared by every shard (in an `Arc`): all of them read it on every publish, to decide which
//! shards get the message; a shard writes it only when its first local subscriber to a filter
//! arrives or its last one leaves (what [`LocalIndex`] reports), so writes are rare and
//! reads are lock-free:
//!
//! - **exact filters** (no `+`/`#`) live in a `papaya` concurrent hash map, read without
//!   locks; a bit is set or cleared with one atomic per-key `compute`, so two shards changing
//!   their bits of one filter at once never lose either, and an entry whose mask reaches 0
//!   is removed in the same step (memory stays bounded under churn);
//! - **wildcard filters** live in a [`LocalIndex`] trie (key = shard) behind an `ArcSwap`:
//!   a write builds a new trie from the filter list and swaps it in with a compare-and-swap
//!   loop (`rcu`), a read loads the current one without locking.
//!
//! A write has taken effect for every later lookup on any thread when `add` returns, which is
//! what lets a shard send SUBACK only once the new route is visible.

use std::sync::Arc;

use ahash::AHashMap;
use arc_swap::ArcSwap;
use papaya::{Compute, Operation};

use super::LocalIndex;

/// One bit per shard.
pub type ShardMask = u64;
/// Shards a mask can name.
pub const MAX_SHARDS: usize = 64;

#[derive(Default)]
struct Wild {
    masks: AHashMap<Box<[u8]>, ShardMask>,
    trie: LocalIndex<u8, ()>,
}

impl Wild {
    fn with(masks: AHashMap<Box<[u8]>, ShardMask>) -> Self {
        let mut trie = LocalIndex::new();
        for (f, &m) in &masks {
            let mut bits = m;
            while bits != 0 {
                let s = bits.trailing_zeros() as u8;
                bits &= bits - 1;
                let _ = trie.insert(f, s, ());
            }
        }
        Self { masks, trie }
    }
}

/// The routes table. See the module documentation.
pub struct Routes {
    exact: papaya::HashMap<Box<[u8]>, ShardMask, ahash::RandomState>,
    wild: ArcSwap<Wild>,
}

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("exact", &self.exact_len())
            .field("wildcard", &self.wildcard_len())
            .finish()
    }
}

fn is_wild(filter: &[u8]) -> bool {
    filter.iter().any(|&b| b == b'+' || b == b'#')
}

impl Routes {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            exact: papaya::HashMap::with_hasher(ahash::RandomState::new()),
            wild: ArcSwap::from_pointee(Wild::default()),
        }
    }

    /// Sets `shard`'s bit for `filter`. Returns true if it was newly set. Visible to every
    /// later [`lookup`](Self::lookup) when this returns.
    pub fn add(&self, filter: &[u8], shard: usize) -> bool {
        self.change(filter, shard, true)
    }

    /// Sets `shard`'s bit for many filters at once (start-up, with recovered sessions): the
    /// wildcard trie is rebuilt once, not once per filter.
    pub fn add_many<'a>(&self, filters: impl IntoIterator<Item = &'a [u8]>, shard: usize) {
        debug_assert!(shard < MAX_SHARDS);
        if shard >= MAX_SHARDS {
            return;
        }
        let mut wild: Vec<&[u8]> = Vec::new();
        for f in filters {
            if is_wild(f) {
                wild.push(f);
            } else {
                self.change(f, shard, true);
            }
        }
        if wild.is_empty() {
            return;
        }
        let bit = 1u64 << shard;
        self.wild.rcu(|w| {
            let mut masks = w.masks.clone();
            for f in &wild {
                *masks.entry((*f).into()).or_insert(0) |= bit;
            }
            Arc::new(Wild::with(masks))
        });
    }

    /// Clears `shard`'s bit for `filter`, removing the entry at mask 0. Returns true if the
    /// bit was set.
    pub fn remove(&self, filter: &[u8], shard: usize) -> bool {
        self.change(filter, shard, false)
    }

    /// Sets (`set`) or clears `shard`'s bit for `filter`; true if the bit changed.
    fn change(&self, filter: &[u8], shard: usize, set: bool) -> bool {
        debug_assert!(shard < MAX_SHARDS);
        if shard >= MAX_SHARDS {
            return false;
        }
        let bit = 1u64 << shard;
        // The new mask, or None when the bit is already as asked.
        let next = |old: ShardMask| match (set, old & bit != 0) {
            (true, false) => Some(old | bit),
            (false, true) => Some(old & !bit),
            _ => None,
        };
        if is_wild(filter) {
            let mut changed = false;
            self.wild.rcu(|w| {
                let Some(mask) = next(w.masks.get(filter).copied().unwrap_or(0)) else {
                    changed = false;
                    return Arc::clone(w);
                };
                changed = true;
                let mut masks = w.masks.clone();
                if mask == 0 {
                    masks.remove(filter);
                } else {
                    masks.insert(filter.into(), mask);
                }
                Arc::new(Wild::with(masks))
            });
            return changed;
        }
        let guard = self.exact.guard();
        let r = self.exact.compute(
            filter.into(),
            |e| match next(e.map_or(0, |(_, &m)| m)) {
                None => Operation::Abort(()),
                Some(0) => Operation::Remove,
                Some(mask) => Operation::Insert(mask),
            },
            &guard,
        );
        !matches!(r, Compute::Aborted(()))
    }

    /// The shards with a subscription matching `topic`.
    #[inline]
    pub fn lookup(&self, topic: &[u8]) -> ShardMask {
        let mut mask = {
            let guard = self.exact.guard();
            self.exact.get(topic, &guard).copied().unwrap_or(0)
        };
        let wild = self.wild.load();
        if !wild.masks.is_empty() {
            wild.trie.for_each_match(topic, |s, _| mask |= 1u64 << s);
        }
        mask
    }

    /// Exact filters with a non-zero mask.
    pub fn exact_len(&self) -> usize {
        self.exact.len()
    }

    /// Wildcard filters with a non-zero mask.
    pub fn wildcard_len(&self) -> usize {
        self.wild.load().masks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::matches;
    use proptest::prelude::*;

    #[test]
    fn exact_wildcard_and_dollar_rules() {
        let r = Routes::new();
        assert!(r.add(b"a/b", 0));
        assert!(!r.add(b"a/b", 0));
        assert!(r.add(b"a/+", 1));
        assert!(r.add(b"#", 2));
        assert!(r.add(b"$SYS/#", 3));
        assert_eq!(r.lookup(b"a/b"), 0b0111);
        assert_eq!(r.lookup(b"a/c"), 0b0110);
        assert_eq!(r.lookup(b"$SYS/x"), 0b1000);
        assert_eq!((r.exact_len(), r.wildcard_len()), (1, 3));
        assert!(r.remove(b"a/b", 0));
        assert!(!r.remove(b"a/b", 0));
        assert_eq!(r.exact_len(), 0, "mask 0 removes the entry");
        assert!(r.remove(b"#", 2));
        assert_eq!(r.lookup(b"a/b"), 0b0010);
    }

    #[test]
    fn many_filters_at_once_match_like_one_by_one() {
        let r = Routes::new();
        r.add(b"a/+", 0);
        let filters: Vec<Vec<u8>> = (0..1000).map(|i| format!("d/{i}/#").into_bytes()).collect();
        r.add_many(
            filters
                .iter()
                .map(|f| f.as_slice())
                .chain([&b"e/x"[..], b"a/+"]),
            1,
        );
        assert_eq!(r.lookup(b"d/7/cmd"), 0b10);
        assert_eq!(r.lookup(b"e/x"), 0b10);
        assert_eq!(r.lookup(b"a/z"), 0b11);
        assert_eq!((r.exact_len(), r.wildcard_len()), (1, 1001));
        assert!(r.remove(b"d/7/#", 1));
        assert_eq!(r.lookup(b"d/7/cmd"), 0);
    }

    #[test]
    fn concurrent_writers_never_lose_bits() {
        let r = Arc::new(Routes::new());
        let filters: Vec<&[u8]> = vec![b"x/y", b"x/+", b"#", b"z"];
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                let filters = filters.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        for f in &filters {
                            r.add(f, t);
                            if i % 2 == 0 {
                                r.remove(f, t);
                            }
                            let _ = r.lookup(b"x/y");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The last iteration (499, odd) added every bit and kept it.
        assert_eq!(r.lookup(b"x/y"), 0b1111);
        for t in 0..4 {
            for f in &filters {
                assert!(r.remove(f, t));
            }
        }
        assert_eq!((r.exact_len(), r.wildcard_len()), (0, 0));
    }

    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "$s"])
    }

    fn filter() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![level(), Just("+"), Just("+"), Just("#")], 1..4).prop_map(
            |ls| {
                let mut out = Vec::new();
                for l in ls {
                    out.push(l);
                    if l == "#" {
                        break;
                    }
                }
                out.join("/")
            },
        )
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..4).prop_map(|ls| ls.join("/"))
    }

    proptest! {
        #[test]
        fn agrees_with_a_naive_model(
            ops in prop::collection::vec((any::<bool>(), filter(), 0usize..4), 1..40),
            topics in prop::collection::vec(topic(), 1..10),
        ) {
            let r = Routes::new();
            let mut model: std::collections::HashSet<(String, usize)> = Default::default();
            for (add, f, s) in ops {
                if add {
                    prop_assert_eq!(r.add(f.as_bytes(), s), model.insert((f, s)));
                } else {
                    prop_assert_eq!(r.remove(f.as_bytes(), s), model.remove(&(f, s)));
                }
            }
            for t in topics {
                let want = model
                    .iter()
                    .filter(|(f, _)| matches(f.as_bytes(), t.as_bytes()))
                    .fold(0u64, |m, (_, s)| m | 1 << s);
                prop_assert_eq!(r.lookup(t.as_bytes()), want, "topic {}", t);
            }
        }
    }
}
