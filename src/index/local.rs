//! One shard's subscription index: Topic Filter × subscriber → subscription data.
//!
//! # Structure
//!
//! - **Exact filters** (no `+` or `#`) live in an [`AHashMap`] from the filter's bytes to its
//!   subscribers, so a publish costs one hash lookup of the whole topic for all of them.
//! - **Wildcard filters** live in an arena trie: nodes sit in one `Vec`, named by `u32` ids,
//!   and a node freed by pruning goes on a free list for the next insert to reuse. A node has
//!   its literal children by level (a short list, inline up to two, promoted to a hash map
//!   past 8 children and demoted again at 4), a dedicated `plus` child for a `+` level, the
//!   subscribers of the filters that end at it, and a `hash` slot holding the subscribers of
//!   the filter `{path to the node}/#` (`#` alone at the root), so `#` needs no node of its own.
//! - **Subscribers of one filter** are a vector of `(key, value)` pairs with one inline slot
//!   (most filters have one subscriber, which then costs no allocation beyond the filter).
//!   Up to 16 subscribers a key is found by a linear scan, which beats hashing at
//!   that size; past it a key → position map is built, so insert and remove stay O(1) (remove
//!   is a `swap_remove` that fixes the moved entry's position) for the 10 000 subscribers of a
//!   popular filter. The map is dropped again at 8 or fewer (hysteresis, so a filter
//!   hovering around the threshold does not rebuild it on every change).
//!
//! # Matching (MQTT 5.0 §4.7)
//!
//! Levels are compared byte for byte; `+` matches exactly one level, which may be empty; `#`
//! matches its parent level and any number of levels below (`a/#` matches `a`, `a/` and
//! `a/b/c`); empty levels are levels (`a//b` has three); and a topic starting with `$` never
//! matches a filter whose first level is `+` or `#` ([MQTT-4.7.2-1]), which the walk enforces
//! by skipping the root's `plus` and `hash` slots for such topics.
//!
//! The walk is iterative, with an explicit stack of (node, position in the topic) pairs that
//! holds at most one entry per topic level plus one, and stays inline (no allocation) up to 32
//! entries, so topics of up to 31 levels match without allocating; a deeper walk spills it to
//! the heap rather than recursing, so a 30 000-level filter cannot overflow the shard's stack.
//!
//! # Memory under churn
//!
//! Removing a filter's last subscriber removes its exact-map entry, or prunes the trie nodes
//! that no longer lead anywhere, so after every subscription is gone the trie is back to its
//! root alone. The arena `Vec` keeps its high-water length (freed slots are reused, never
//! returned); hash maps and subscriber vectors shrink once they are a quarter full, so a
//! filter that once had 10 000 subscribers does not keep their storage.
//!
//! Filters are expected to be valid (see [`crate::protocol::topic::validate_topic_filter`]);
//! on others the answers are unspecified, but nothing panics.

use core::fmt;
use core::hash::Hash;
use core::mem;

use ahash::AHashMap;
use smallvec::SmallVec;

/// Past this many subscribers on one filter, a key → position map is built.
const INDEX_ABOVE: usize = 16;
/// At or below this many subscribers, the key → position map is dropped again.
const UNINDEX_AT: usize = 8;
/// Past this many literal children, a node's children move from a list to a hash map.
const CHILDREN_MAP_ABOVE: usize = 8;
/// At or below this many literal children, a node's children move back to a list.
const CHILDREN_LIST_AT: usize = 4;
/// Inline capacity of the matching walk's stack: it holds at most one entry per topic level
/// plus one, so topics of up to `INLINE_WALK - 1` levels match without allocating.
const INLINE_WALK: usize = 32;
/// Below this capacity, collections are not worth shrinking.
const SHRINK_MIN_CAPACITY: usize = 64;

/// The trie's root node: always live, never freed, never anyone's child.
const ROOT: u32 = 0;

/// What [`LocalIndex::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted<V> {
    /// The value the same (filter, key) pair had before, which the new one replaced.
    pub replaced: Option<V>,
    /// Whether the filter had no subscriber on this shard before: the caller adds this shard
    /// to the filter's global route.
    pub first: bool,
}

/// What [`LocalIndex::remove`] took out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed<V> {
    /// The removed subscription's value.
    pub value: V,
    /// Whether that was the filter's last subscriber on this shard: the caller removes this
    /// shard from the filter's global route.
    pub last: bool,
}

/// One shard's subscription index.
///
/// `K` names a subscriber on this shard (a session slot, say) and `V` is the data of one
/// subscription (options, subscription identifier…). An entry is a (filter, key) pair: one
/// subscriber has at most one value per filter, and a new insert replaces it.
///
/// Owned by one shard and touched only by its thread: no locks.
pub struct LocalIndex<K, V> {
    /// Wildcard-free filters → their subscribers (never empty).
    exact: AHashMap<Box<[u8]>, Subscribers<K, V>>,
    /// The wildcard trie's arena; `nodes[ROOT]` is the root.
    nodes: Vec<Node<K, V>>,
    /// Ids of freed nodes, reused before the arena grows.
    free: Vec<u32>,
    /// Wildcard filters with at least one subscriber.
    wildcard_filters: usize,
    /// (filter, key) entries, exact and wildcard.
    len: usize,
}

impl<K, V> LocalIndex<K, V> {
    /// An empty index: no filters, a trie of one (root) node.
    pub fn new() -> Self {
        Self {
            exact: AHashMap::new(),
            nodes: vec![Node::new()],
            free: Vec::new(),
            wildcard_filters: 0,
            len: 0,
        }
    }

    /// The number of (filter, key) entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no entry.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of distinct filters with at least one subscriber.
    #[inline]
    pub fn filter_count(&self) -> usize {
        self.exact.len() + self.wildcard_filters
    }

    /// The number of live trie nodes, the root included: 1 for an index without wildcard
    /// filters. Memory accounting and tests use it to see that pruning works.
    #[inline]
    pub fn trie_node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

impl<K, V> Default for LocalIndex<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// A summary (counts), so neither `K` nor `V` needs to be `Debug`.
impl<K, V> fmt::Debug for LocalIndex<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIndex")
            .field("len", &self.len)
            .field("exact_filters", &self.exact.len())
            .field("wildcard_filters", &self.wildcard_filters)
            .field("trie_nodes", &self.trie_node_count())
            .finish_non_exhaustive()
    }
}

impl<K: Copy + Eq + Hash, V> LocalIndex<K, V> {
    /// Subscribes `key` to `filter` with `value`, replacing the value of an existing
    /// (filter, key) entry.
    ///
    /// # Panics
    ///
    /// When the trie would need more than `u32::MAX` nodes (memory runs out long before).
    #[must_use = "the caller updates the global routes when `first` is set"]
    pub fn insert(&mut self, filter: &[u8], key: K, value: V) -> Inserted<V> {
        let (replaced, first) = if is_wildcard(filter) {
            let subs = self.wildcard_slot_or_insert(filter);
            let first = subs.is_empty();
            let replaced = subs.insert(key, value);
            self.wildcard_filters += usize::from(first);
            (replaced, first)
        } else if let Some(subs) = self.exact.get_mut(filter) {
            (subs.insert(key, value), false)
        } else {
            let mut subs = Subscribers::new();
            subs.insert(key, value);
            self.exact.insert(filter.into(), subs);
            (None, true)
        };
        self.len += usize::from(replaced.is_none());
        Inserted { replaced, first }
    }

    /// Unsubscribes `key` from `filter`; `None` when there was no such entry.
    ///
    /// When that was the filter's last subscriber, its exact-map entry is removed, or the trie
    /// nodes it alone used are freed.
    pub fn remove(&mut self, filter: &[u8], key: K) -> Option<Removed<V>> {
        let removed = if is_wildcard(filter) {
            self.remove_wildcard(filter, key)?
        } else {
            let subs = self.exact.get_mut(filter)?;
            let value = subs.remove(key)?;
            let last = subs.is_empty();
            if last {
                self.exact.remove(filter);
                shrink_map(&mut self.exact);
            }
            Removed { value, last }
        };
        self.len -= 1;
        Some(removed)
    }

    /// The value of the (filter, key) entry.
    pub fn get(&self, filter: &[u8], key: K) -> Option<&V> {
        let subs = if is_wildcard(filter) {
            self.wildcard_slot(filter)?
        } else {
            self.exact.get(filter)?
        };
        subs.get(key)
    }

    /// Calls `f` once per (filter, key) entry whose filter matches the Topic Name `topic`, in
    /// no particular order.
    ///
    /// A subscriber with several matching filters (`a/+` and `a/#` for `a/b`) is reported once
    /// per filter, each time with that filter's value: the caller merges by key (MQTT 5.0
    /// §4.7.2 lets the server deliver once, with the highest QoS and every matching
    /// subscription identifier).
    ///
    /// Does not allocate for topics of up to 31 levels.
    #[inline]
    pub fn for_each_match(&self, topic: &[u8], mut f: impl FnMut(K, &V)) {
        self.walk(topic, &mut f);
    }

    /// The matching walk; returns whether its stack spilled to the heap.
    fn walk(&self, topic: &[u8], f: &mut impl FnMut(K, &V)) -> bool {
        if !self.exact.is_empty()
            && let Some(subs) = self.exact.get(topic)
        {
            subs.for_each(f);
        }
        if self.wildcard_filters == 0 {
            return false;
        }
        // [MQTT-4.7.2-1]: a leading `+` or `#` does not reach into `$` topics.
        let dollar = topic.first() == Some(&b'$');
        let root = &self.nodes[ROOT as usize];
        if !dollar {
            root.hash.for_each(f);
        }
        let mut stack: SmallVec<[(u32, usize); INLINE_WALK]> = SmallVec::new();
        let (level, next) = level_at(topic, 0);
        if let Some(child) = root.children.get(level) {
            stack.push((child, next));
        }
        if let (Some(plus), false) = (root.plus, dollar) {
            stack.push((plus, next));
        }
        // Each entry is a node reached by matching the levels before `pos`; `pos` past the
        // end means the topic has no level left.
        while let Some((id, pos)) = stack.pop() {
            let node = &self.nodes[id as usize];
            // `{path}/#` matches with any number of levels left, none included.
            node.hash.for_each(f);
            if pos > topic.len() {
                node.subs.for_each(f);
                continue;
            }
            let (level, next) = level_at(topic, pos);
            if let Some(child) = node.children.get(level) {
                stack.push((child, next));
            }
            if let Some(plus) = node.plus {
                stack.push((plus, next));
            }
        }
        stack.spilled()
    }

    /// The subscribers slot of a wildcard filter, creating its trie path.
    fn wildcard_slot_or_insert(&mut self, filter: &[u8]) -> &mut Subscribers<K, V> {
        let (path, hash) = split_hash(filter);
        let mut id = ROOT;
        if let Some(path) = path {
            for level in path.split(|&c| c == b'/') {
                id = match self.nodes[id as usize].child(level) {
                    Some(child) => child,
                    None => {
                        let child = self.alloc_node();
                        self.nodes[id as usize].attach(level, child);
                        child
                    }
                };
            }
        }
        self.nodes[id as usize].slot_mut(hash)
    }

    /// The subscribers slot of a wildcard filter, if its trie path exists.
    fn wildcard_slot(&self, filter: &[u8]) -> Option<&Subscribers<K, V>> {
        let (path, hash) = split_hash(filter);
        let mut id = ROOT;
        if let Some(path) = path {
            for level in path.split(|&c| c == b'/') {
                id = self.nodes[id as usize].child(level)?;
            }
        }
        let node = &self.nodes[id as usize];
        Some(if hash { &node.hash } else { &node.subs })
    }

    /// Removes a wildcard entry, pruning the nodes its filter leaves unused.
    fn remove_wildcard(&mut self, filter: &[u8], key: K) -> Option<Removed<V>> {
        let (path, hash) = split_hash(filter);
        // ids[i + 1] is the child of ids[i] by levels[i].
        let mut ids: SmallVec<[u32; 16]> = SmallVec::new();
        let mut levels: SmallVec<[&[u8]; 16]> = SmallVec::new();
        ids.push(ROOT);
        let mut id = ROOT;
        if let Some(path) = path {
            for level in path.split(|&c| c == b'/') {
                id = self.nodes[id as usize].child(level)?;
                ids.push(id);
                levels.push(level);
            }
        }
        let subs = self.nodes[id as usize].slot_mut(hash);
        let value = subs.remove(key)?;
        let last = subs.is_empty();
        if last {
            self.wildcard_filters -= 1;
            for i in (1..ids.len()).rev() {
                if !self.nodes[ids[i] as usize].is_unused() {
                    break;
                }
                self.nodes[ids[i - 1] as usize].detach(levels[i - 1]);
                self.free_node(ids[i]);
            }
        }
        Some(Removed { value, last })
    }

    /// A fresh node: a reused slot, or a new one at the end of the arena.
    fn alloc_node(&mut self) -> u32 {
        if let Some(id) = self.free.pop() {
            return id;
        }
        let id = u32::try_from(self.nodes.len()).expect("more than u32::MAX trie nodes");
        self.nodes.push(Node::new());
        id
    }

    /// Returns an unused, detached node to the free list, dropping its storage.
    fn free_node(&mut self, id: u32) {
        self.nodes[id as usize] = Node::new();
        self.free.push(id);
    }
}

/// Whether a filter goes to the trie. On a valid filter `+` and `#` only appear as whole
/// levels, so a byte search is enough.
#[inline]
fn is_wildcard(filter: &[u8]) -> bool {
    filter.iter().any(|&c| c == b'+' || c == b'#')
}

/// Splits a trailing `#` level off a filter: the levels leading to the node (`None` for `#`
/// alone, which sits at the root) and whether the filter ends with `#`.
#[inline]
fn split_hash(filter: &[u8]) -> (Option<&[u8]>, bool) {
    if filter == b"#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix(b"/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

/// The topic level starting at `pos` (`pos <= topic.len()`) and the start of the next one,
/// or `topic.len() + 1` when it is the last.
#[inline]
fn level_at(topic: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = &topic[pos..];
    match rest.iter().position(|&c| c == b'/') {
        Some(i) => (&rest[..i], pos + i + 1),
        None => (rest, topic.len() + 1),
    }
}

/// Shrinks a hash map that has become a quarter full, keeping room to grow.
fn shrink_map<Q: Eq + Hash, T>(map: &mut AHashMap<Q, T>) {
    if map.capacity() > SHRINK_MIN_CAPACITY && map.len() * 4 < map.capacity() {
        let keep = map.len() * 2;
        map.shrink_to(keep);
    }
}

/// A trie node.
struct Node<K, V> {
    /// Children by literal level.
    children: Children,
    /// The child for a `+` level.
    plus: Option<u32>,
    /// Subscribers of the filter that ends at this node.
    subs: Subscribers<K, V>,
    /// Subscribers of the filter `{path to this node}/#` (`#` at the root).
    hash: Subscribers<K, V>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Self {
            children: Children::List(SmallVec::new()),
            plus: None,
            subs: Subscribers::new(),
            hash: Subscribers::new(),
        }
    }

    /// Whether nothing hangs off this node any more, so it can be pruned.
    fn is_unused(&self) -> bool {
        self.plus.is_none()
            && self.children.is_empty()
            && self.subs.is_empty()
            && self.hash.is_empty()
    }

    /// The child for a filter level (`+` or literal).
    #[inline]
    fn child(&self, level: &[u8]) -> Option<u32> {
        if level == b"+" {
            self.plus
        } else {
            self.children.get(level)
        }
    }

    /// Links a new child for a filter level this node has no child for yet.
    fn attach(&mut self, level: &[u8], child: u32) {
        if level == b"+" {
            self.plus = Some(child);
        } else {
            self.children.insert(level, child);
        }
    }

    /// Unlinks the child for a filter level.
    fn detach(&mut self, level: &[u8]) {
        if level == b"+" {
            self.plus = None;
        } else {
            self.children.remove(level);
        }
    }

    /// The subscribers of the filter ending here (`hash`: the one ending here with `/#`).
    fn slot_mut(&mut self, hash: bool) -> &mut Subscribers<K, V> {
        if hash { &mut self.hash } else { &mut self.subs }
    }
}

/// A node's children by literal level.
enum Children {
    /// Few children: a linear scan, inline for up to two.
    List(SmallVec<[(Box<[u8]>, u32); 2]>),
    /// Many children: hashed.
    Map(AHashMap<Box<[u8]>, u32>),
}

impl Children {
    #[inline]
    fn get(&self, level: &[u8]) -> Option<u32> {
        match self {
            Self::List(list) => list.iter().find(|(l, _)| **l == *level).map(|&(_, id)| id),
            Self::Map(map) => map.get(level).copied(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::List(list) => list.is_empty(),
            Self::Map(map) => map.is_empty(),
        }
    }

    /// Adds a child for a level that has none.
    fn insert(&mut self, level: &[u8], id: u32) {
        match self {
            Self::List(list) if list.len() < CHILDREN_MAP_ABOVE => list.push((level.into(), id)),
            Self::List(list) => {
                let mut map: AHashMap<Box<[u8]>, u32> = list.drain(..).collect();
                map.insert(level.into(), id);
                *self = Self::Map(map);
            }
            Self::Map(map) => {
                map.insert(level.into(), id);
            }
        }
    }

    fn remove(&mut self, level: &[u8]) {
        match self {
            Self::List(list) => {
                if let Some(i) = list.iter().position(|(l, _)| **l == *level) {
                    list.swap_remove(i);
                }
            }
            Self::Map(map) => {
                map.remove(level);
                if map.len() <= CHILDREN_LIST_AT {
                    *self = Self::List(map.drain().collect());
                } else {
                    shrink_map(map);
                }
            }
        }
    }
}

/// The subscribers of one filter: `(key, value)` pairs with unique keys, plus a key →
/// position map once there are more than [`INDEX_ABOVE`].
struct Subscribers<K, V> {
    entries: SmallVec<[(K, V); 1]>,
    /// Present when `entries` is long; then `positions[k]` is the index of `k`'s entry.
    positions: Option<Box<AHashMap<K, usize>>>,
}

impl<K, V> Subscribers<K, V> {
    fn new() -> Self {
        Self {
            entries: SmallVec::new(),
            positions: None,
        }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Copy + Eq + Hash, V> Subscribers<K, V> {
    #[inline]
    fn for_each(&self, f: &mut impl FnMut(K, &V)) {
        for (k, v) in &self.entries {
            f(*k, v);
        }
    }

    fn position(&self, key: K) -> Option<usize> {
        match &self.positions {
            Some(map) => map.get(&key).copied(),
            None => self.entries.iter().position(|(k, _)| *k == key),
        }
    }

    fn get(&self, key: K) -> Option<&V> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    /// Adds or replaces `key`'s value; returns the replaced one.
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.position(key) {
            return Some(mem::replace(&mut self.entries[i].1, value));
        }
        self.entries.push((key, value));
        match &mut self.positions {
            Some(map) => {
                map.insert(key, self.entries.len() - 1);
            }
            None if self.entries.len() > INDEX_ABOVE => {
                let map = self
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (*k, i))
                    .collect();
                self.positions = Some(Box::new(map));
            }
            None => {}
        }
        None
    }

    /// Removes `key`'s entry; returns its value.
    fn remove(&mut self, key: K) -> Option<V> {
        let i = self.position(key)?;
        let (_, value) = self.entries.swap_remove(i);
        if let Some(map) = &mut self.positions {
            if self.entries.len() <= UNINDEX_AT {
                self.positions = None;
            } else {
                map.remove(&key);
                // The former last entry now sits at `i` (unless it was the one removed).
                if let Some(&(moved, _)) = self.entries.get(i) {
                    map.insert(moved, i);
                }
                shrink_map(map);
            }
        }
        if self.entries.capacity() > SHRINK_MIN_CAPACITY
            && self.entries.len() * 4 < self.entries.capacity()
        {
            self.entries.shrink_to_fit();
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::{matches, validate_topic_filter, validate_topic_name};
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// The reference matcher: split both into levels and follow §4.7 literally.
    fn naive_matches(filter: &str, topic: &str) -> bool {
        fn go(f: &[&str], t: &[&str]) -> bool {
            match (f.first(), t.first()) {
                (Some(&"#"), _) => f.len() == 1,
                (None, None) => true,
                (Some(&"+"), Some(_)) => go(&f[1..], &t[1..]),
                (Some(a), Some(b)) => a == b && go(&f[1..], &t[1..]),
                _ => false,
            }
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        go(&f, &t)
    }

    /// Every (key, value) the index reports for `topic`, sorted.
    fn hits<K: Copy + Eq + Hash + Ord, V: Clone + Ord>(
        idx: &LocalIndex<K, V>,
        topic: &str,
    ) -> Vec<(K, V)> {
        let mut out = Vec::new();
        idx.for_each_match(topic.as_bytes(), |k, v| out.push((k, v.clone())));
        out.sort();
        out
    }

    /// Keys reported for `topic`, sorted.
    fn keys<V>(idx: &LocalIndex<u32, V>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        idx.for_each_match(topic.as_bytes(), |k, _| out.push(k));
        out.sort_unstable();
        out
    }

    /// An index with one subscriber per filter, keyed by the filter's position.
    fn index_of(filters: &[&str]) -> LocalIndex<u32, ()> {
        let mut idx = LocalIndex::new();
        for (k, f) in (0..).zip(filters) {
            assert!(idx.insert(f.as_bytes(), k, ()).first, "{f}");
        }
        idx.check();
        idx
    }

    /// Asserts which of `filters` match each topic, against both reference matchers.
    fn assert_matching(filters: &[&str], cases: &[(&str, &[u32])]) {
        let idx = index_of(filters);
        for &(topic, expected) in cases {
            assert_eq!(keys(&idx, topic), expected, "topic {topic:?}");
            for (k, f) in (0..).zip(filters) {
                let m = expected.contains(&k);
                assert_eq!(naive_matches(f, topic), m, "naive {f:?} ~ {topic:?}");
                assert_eq!(
                    matches(f.as_bytes(), topic.as_bytes()),
                    m,
                    "{f:?} ~ {topic:?}"
                );
            }
        }
    }

    impl<K: Copy + Eq + Hash, V> Subscribers<K, V> {
        fn check(&self) {
            let keys: HashSet<K> = self.entries.iter().map(|(k, _)| *k).collect();
            assert_eq!(keys.len(), self.entries.len(), "duplicate keys");
            match &self.positions {
                Some(map) => {
                    assert!(self.entries.len() > UNINDEX_AT);
                    assert_eq!(map.len(), self.entries.len());
                    for (i, (k, _)) in self.entries.iter().enumerate() {
                        assert_eq!(map.get(k), Some(&i));
                    }
                }
                None => assert!(self.entries.len() <= INDEX_ABOVE),
            }
        }
    }

    impl<K: Copy + Eq + Hash, V> LocalIndex<K, V> {
        /// Checks every structural invariant.
        fn check(&self) {
            let mut entries = 0;
            for subs in self.exact.values() {
                assert!(!subs.is_empty(), "empty exact entry");
                subs.check();
                entries += subs.entries.len();
            }
            let mut reachable = HashSet::new();
            let mut filters = 0;
            let mut todo = vec![ROOT];
            while let Some(id) = todo.pop() {
                assert!(reachable.insert(id), "node {id} reached twice");
                let node = &self.nodes[id as usize];
                assert!(id == ROOT || !node.is_unused(), "unpruned node {id}");
                for subs in [&node.subs, &node.hash] {
                    subs.check();
                    entries += subs.entries.len();
                    filters += usize::from(!subs.is_empty());
                }
                match &node.children {
                    Children::List(l) => {
                        assert!(l.len() <= CHILDREN_MAP_ABOVE);
                        todo.extend(l.iter().map(|&(_, c)| c));
                    }
                    Children::Map(m) => {
                        assert!(m.len() > CHILDREN_LIST_AT);
                        todo.extend(m.values().copied());
                    }
                }
                todo.extend(node.plus);
            }
            let free: HashSet<u32> = self.free.iter().copied().collect();
            assert_eq!(free.len(), self.free.len(), "free list has duplicates");
            assert!(free.is_disjoint(&reachable), "a free node is reachable");
            assert_eq!(
                free.len() + reachable.len(),
                self.nodes.len(),
                "leaked node"
            );
            for &id in &self.free {
                assert!(self.nodes[id as usize].is_unused());
            }
            assert_eq!(entries, self.len);
            assert_eq!(filters, self.wildcard_filters);
            assert_eq!(self.is_empty(), self.len == 0);
        }
    }

    #[test]
    fn plus_matches_exactly_one_level() {
        assert_matching(
            &["a/+", "+", "+/b", "a/+/c", "+/+"],
            &[
                ("a/b", &[0, 2, 4]),
                ("a/", &[0, 4]),
                ("a", &[1]),
                ("", &[1]),
                ("/b", &[2, 4]),
                ("a/b/c", &[3]),
                ("a//c", &[3]),
                ("a/c", &[0, 4]),
                ("b/b", &[2, 4]),
                ("a/b/c/d", &[]),
            ],
        );
    }

    #[test]
    fn hash_matches_parent_and_below() {
        assert_matching(
            &["a/#", "#", "a/b/#", "+/#", "/#"],
            &[
                ("a", &[0, 1, 3]),
                ("a/", &[0, 1, 3]),
                ("a/b", &[0, 1, 2, 3]),
                ("a/b/c/d/e", &[0, 1, 2, 3]),
                ("ab", &[1, 3]),
                ("b", &[1, 3]),
                ("/", &[1, 3, 4]),
                ("/x/y", &[1, 3, 4]),
            ],
        );
    }

    #[test]
    fn dollar_topics_never_match_a_leading_wildcard() {
        assert_matching(
            &[
                "#", "+", "+/#", "+/b", "$x/#", "$x/+", "$x", "a/+", "a/#", "+/$x",
            ],
            &[
                ("$x", &[4, 6]),
                ("$x/b", &[4, 5]),
                ("$SYS/b", &[]),
                ("$", &[]),
                ("a/$x", &[0, 2, 7, 8, 9]),
                ("x", &[0, 1, 2]),
                ("x/b", &[0, 2, 3]),
            ],
        );
    }

    #[test]
    fn levels_compare_exactly_and_case_sensitively() {
        assert_matching(
            &["Accounts/+", "accounts/#", "a b/c", "caf\u{e9}/+", "a/bc"],
            &[
                ("Accounts/x", &[0]),
                ("accounts/x", &[1]),
                ("ACCOUNTS/x", &[]),
                ("a b/c", &[2]),
                ("a  b/c", &[]),
                ("caf\u{e9}/x", &[3]),
                ("cafe\u{301}/x", &[]),
                ("a/bc", &[4]),
                ("a/b", &[]),
                ("a/bcd", &[]),
            ],
        );
    }

    #[test]
    fn empty_levels_are_levels() {
        assert_matching(
            &["a//b", "a/+/b", "+/+/+", "/", "+/", "a/", "a"],
            &[
                ("a//b", &[0, 1, 2]),
                ("a/b", &[]),
                ("a///b", &[]),
                ("//", &[2]),
                ("/", &[3, 4]),
                ("a/", &[4, 5]),
                ("a", &[6]),
            ],
        );
    }

    #[test]
    fn overlapping_filters_report_a_subscriber_once_per_filter() {
        let mut idx = LocalIndex::new();
        for (f, v) in [("a/b", 1), ("a/+", 2), ("a/#", 3), ("#", 4), ("+/+", 5)] {
            assert!(idx.insert(f.as_bytes(), 7u8, v).first);
        }
        assert!(idx.insert(b"a/+", 8u8, 9).replaced.is_none());
        assert_eq!(
            hits(&idx, "a/b"),
            [(7, 1), (7, 2), (7, 3), (7, 4), (7, 5), (8, 9)]
        );
        assert_eq!(hits(&idx, "a/c"), [(7, 2), (7, 3), (7, 4), (7, 5), (8, 9)]);
        assert_eq!(hits(&idx, "a"), [(7, 3), (7, 4)]);
        idx.check();
    }

    #[test]
    fn insert_reports_first_and_replaced() {
        for filter in ["a/b", "a/+", "#", "a/#", "+"] {
            let f = filter.as_bytes();
            let mut idx = LocalIndex::new();
            assert_eq!(
                idx.insert(f, 1u32, "one"),
                Inserted {
                    replaced: None,
                    first: true
                },
                "{filter}"
            );
            assert_eq!(
                idx.insert(f, 2, "two"),
                Inserted {
                    replaced: None,
                    first: false
                }
            );
            assert_eq!(
                idx.insert(f, 1, "uno"),
                Inserted {
                    replaced: Some("one"),
                    first: false
                }
            );
            assert_eq!((idx.len(), idx.filter_count()), (2, 1));
            assert_eq!(idx.get(f, 1), Some(&"uno"));
            assert_eq!(idx.get(f, 2), Some(&"two"));
            assert_eq!(idx.get(f, 3), None);
            assert_eq!(idx.get(b"other", 1), None);
            assert_eq!(idx.get(b"other/+", 1), None);
            // Another filter is first again, even for the same key.
            assert!(idx.insert(b"x/+/y", 1, "x").first);
            assert!(idx.insert(b"x/y", 1, "x").first);
            assert_eq!((idx.len(), idx.filter_count()), (4, 3));
            idx.check();
        }
    }

    #[test]
    fn remove_reports_value_and_last() {
        for filter in ["a/b", "a/+", "#", "a/#", "+/+/#"] {
            let f = filter.as_bytes();
            let mut idx = LocalIndex::new();
            let _ = idx.insert(f, 1u32, 10u32);
            let _ = idx.insert(f, 2, 20);
            assert_eq!(idx.remove(f, 3), None, "{filter}");
            assert_eq!(idx.remove(b"zz", 1), None);
            assert_eq!(idx.remove(b"zz/+", 1), None);
            assert_eq!(
                idx.remove(f, 1),
                Some(Removed {
                    value: 10,
                    last: false
                })
            );
            assert_eq!(idx.remove(f, 1), None);
            assert_eq!((idx.len(), idx.filter_count()), (1, 1));
            assert_eq!(
                idx.remove(f, 2),
                Some(Removed {
                    value: 20,
                    last: true
                })
            );
            assert_eq!((idx.len(), idx.filter_count()), (0, 0));
            assert!(idx.is_empty());
            assert_eq!(idx.trie_node_count(), 1);
            assert!(keys(&idx, "a/b").is_empty());
            // And back.
            assert!(idx.insert(f, 2, 21).first);
            idx.check();
        }
    }

    #[test]
    fn removing_everything_prunes_the_trie_and_the_exact_map() {
        let filters = [
            "a/b/c",
            "a/+/c",
            "a/+/c/#",
            "a/#",
            "#",
            "+",
            "+/+/+/+/+",
            "/",
            "//+",
            "a/b/+/d",
            "$x/+",
            "a/b",
        ];
        let mut idx = LocalIndex::new();
        let empty = idx.trie_node_count();
        assert_eq!(empty, 1);
        for round in 0..3u32 {
            for (k, f) in filters.iter().enumerate() {
                for key in 0..3u32 {
                    let _ = idx.insert(f.as_bytes(), key, (round, k));
                }
            }
            idx.check();
            assert_eq!(idx.filter_count(), filters.len());
            assert!(idx.trie_node_count() > empty);
            // Remove in a different order each round.
            let mut order: Vec<usize> = (0..filters.len()).collect();
            order.rotate_left(round as usize * 5);
            for &i in &order {
                for key in 0..3u32 {
                    let r = idx.remove(filters[i].as_bytes(), key).unwrap();
                    assert_eq!(r.value, (round, i));
                    assert_eq!(r.last, key == 2);
                }
                idx.check();
            }
            assert!(idx.is_empty());
            assert_eq!(idx.filter_count(), 0);
            assert!(idx.exact.is_empty());
            assert_eq!(idx.trie_node_count(), empty);
        }
        // Freed slots were reused: the arena did not grow past the first round's peak.
        assert!(idx.nodes.len() <= 1 + filters.iter().map(|f| f.len()).sum::<usize>());
    }

    #[test]
    fn pruning_keeps_shared_prefixes() {
        let mut idx = index_of(&["a/b/+", "a/b/+/d", "a/#"]);
        let full = idx.trie_node_count();
        assert_eq!(full, 5); // root, a, b, +, d
        assert!(idx.remove(b"a/b/+/d", 1).unwrap().last);
        assert_eq!(idx.trie_node_count(), 4);
        assert_eq!(keys(&idx, "a/b/c"), [0, 2]);
        assert!(idx.remove(b"a/b/+", 0).unwrap().last);
        assert_eq!(idx.trie_node_count(), 2); // `a` still carries `a/#`
        assert_eq!(keys(&idx, "a/b/c"), [2]);
        assert!(idx.remove(b"a/#", 2).unwrap().last);
        assert_eq!(idx.trie_node_count(), 1);
        idx.check();
    }

    #[test]
    fn many_children_move_to_a_map_and_back() {
        let mut idx = LocalIndex::new();
        let names: Vec<String> = (0..40).map(|i| format!("n{i}/+")).collect();
        for (k, f) in (0u32..).zip(&names) {
            let _ = idx.insert(f.as_bytes(), k, ());
        }
        assert!(matches!(idx.nodes[0].children, Children::Map(_)));
        idx.check();
        for (k, f) in (0u32..).zip(&names) {
            assert_eq!(keys(&idx, &format!("n{k}/x")), [k], "{f}");
        }
        for (k, f) in (0u32..).zip(&names).skip(3) {
            assert!(idx.remove(f.as_bytes(), k).unwrap().last);
            idx.check();
        }
        assert!(matches!(idx.nodes[0].children, Children::List(_)));
        assert_eq!(keys(&idx, "n2/x"), [2]);
        assert_eq!(idx.trie_node_count(), 1 + 3 * 2);
    }

    /// A small deterministic generator for shuffles (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            usize::try_from(x % n as u64).unwrap()
        }

        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, self.below(i + 1));
            }
        }
    }

    #[test]
    fn ten_thousand_subscribers_on_one_filter() {
        const N: u32 = 10_000;
        for filter in ["a/b", "#", "a/+/c"] {
            let f = filter.as_bytes();
            let mut idx = LocalIndex::new();
            for k in 0..N {
                let ins = idx.insert(f, k, k * 2);
                assert_eq!((ins.replaced, ins.first), (None, k == 0));
            }
            // Replacing one keeps the count.
            assert_eq!(idx.insert(f, 77, 1).replaced, Some(154));
            let _ = idx.insert(f, 77, 154);
            assert_eq!((idx.len(), idx.filter_count()), (N as usize, 1));
            idx.check();
            let mut count = 0;
            idx.for_each_match(b"a/b/c", |_, _| count += 1);
            assert_eq!(count, if filter == "a/b" { 0 } else { N });
            let mut order: Vec<u32> = (0..N).collect();
            Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(f[0])).shuffle(&mut order);
            for (n, &k) in order.iter().enumerate() {
                let r = idx.remove(f, k).unwrap();
                assert_eq!(r.value, k * 2);
                assert_eq!(r.last, n + 1 == order.len(), "{filter}");
                assert_eq!(idx.get(f, k), None);
                if n % 997 == 0 {
                    idx.check();
                    for &left in &order[n + 1..] {
                        assert_eq!(idx.get(f, left), Some(&(left * 2)));
                    }
                }
            }
            assert!(idx.is_empty());
            assert!(idx.exact.is_empty());
            assert_eq!(idx.trie_node_count(), 1);
            idx.check();
        }
    }

    #[test]
    fn a_16_level_topic_matches_without_allocating() {
        // Worst case for the stack: a literal and a `+` child at every level.
        let lit: Vec<&str> = vec!["l"; 16];
        let mut idx = LocalIndex::new();
        let _ = idx.insert(lit.join("/").as_bytes(), 0u32, ());
        for i in 0..16 {
            let mut levels = lit.clone();
            levels[i] = "+";
            let _ = idx.insert(levels.join("/").as_bytes(), i as u32 + 1, ());
            levels.truncate(i + 1);
            levels.push("#");
            let _ = idx.insert(levels.join("/").as_bytes(), i as u32 + 100, ());
        }
        let _ = idx.insert(
            "+/".repeat(15).as_bytes().strip_suffix(b"/").unwrap(),
            999,
            (),
        );
        let _ = idx.insert(b"+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+", 1000, ());
        idx.check();
        let topic = lit.join("/");
        let mut n = 0;
        assert!(!idx.walk(topic.as_bytes(), &mut |_, _| n += 1));
        assert_eq!(n, 1 + 16 + 16 + 1);
        // The stack only spills when a topic is deeper than the inline capacity *and* the trie
        // branches along it: a chain of `+` with a literal side branch at every level.
        let mut deep = LocalIndex::new();
        for i in 0..40 {
            let _ = deep.insert(format!("{}l", "+/".repeat(i)).as_bytes(), i, ());
        }
        let topic = vec!["l"; 40].join("/");
        let mut got = Vec::new();
        assert!(deep.walk(topic.as_bytes(), &mut |k, _| got.push(k)));
        assert_eq!(got, [39]);
    }

    #[test]
    fn deep_filters_do_not_recurse() {
        let levels = 30_000;
        let filter = vec!["+"; levels].join("/");
        let topic = vec!["t"; levels].join("/");
        let mut idx = LocalIndex::new();
        let _ = idx.insert(filter.as_bytes(), 1u8, ());
        let _ = idx.insert(format!("{filter}/#").as_bytes(), 2, ());
        assert_eq!(idx.trie_node_count(), levels + 1);
        assert_eq!(keys_u8(&idx, &topic), [1, 2]);
        assert!(idx.remove(filter.as_bytes(), 1).unwrap().last);
        assert!(
            idx.remove(format!("{filter}/#").as_bytes(), 2)
                .unwrap()
                .last
        );
        assert_eq!(idx.trie_node_count(), 1);
    }

    fn keys_u8(idx: &LocalIndex<u8, ()>, topic: &str) -> Vec<u8> {
        let mut out = Vec::new();
        idx.for_each_match(topic.as_bytes(), |k, _| out.push(k));
        out.sort_unstable();
        out
    }

    #[test]
    fn debug_is_a_summary() {
        struct Opaque;
        let mut idx: LocalIndex<u8, Opaque> = LocalIndex::default();
        let _ = idx.insert(b"a/+", 1, Opaque);
        let _ = idx.insert(b"a/b", 1, Opaque);
        assert_eq!(
            format!("{idx:?}"),
            "LocalIndex { len: 2, exact_filters: 1, wildcard_filters: 1, trie_nodes: 3, .. }"
        );
    }

    /// A valid filter of 1–4 levels over a tiny alphabet, `#` only last.
    fn filter_strategy() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "$x", "", "+"]);
        (prop::collection::vec(level, 1..=4), any::<bool>())
            .prop_map(|(mut levels, hash)| {
                if hash {
                    *levels.last_mut().unwrap() = "#";
                }
                levels.join("/")
            })
            .prop_filter("topic filters are not empty", |f| !f.is_empty())
    }

    /// A valid topic name of 1–5 levels over the same alphabet.
    fn topic_strategy() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "$x", ""]);
        prop::collection::vec(level, 1..=5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("topic names are not empty", |t| !t.is_empty())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(prop::sample::Index, u8, u32),
        Remove(prop::sample::Index, u8),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<prop::sample::Index>(), 0u8..5, any::<u32>())
                .prop_map(|(f, k, v)| Op::Insert(f, k, v)),
            2 => (any::<prop::sample::Index>(), 0u8..5).prop_map(|(f, k)| Op::Remove(f, k)),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_a_naive_model(
            filters in prop::collection::vec(filter_strategy(), 1..10),
            ops in prop::collection::vec(op_strategy(), 1..80),
            topics in prop::collection::vec(topic_strategy(), 1..8),
        ) {
            for f in &filters {
                prop_assert_eq!(validate_topic_filter(f.as_bytes()), Ok(()));
            }
            for t in &topics {
                prop_assert_eq!(validate_topic_name(t.as_bytes()), Ok(()));
            }
            let mut idx = LocalIndex::new();
            let mut model: Vec<(String, u8, u32)> = Vec::new();
            for op in &ops {
                match op {
                    Op::Insert(i, key, value) => {
                        let f = i.get(&filters);
                        let first = !model.iter().any(|(mf, _, _)| mf == f);
                        let old = model.iter().position(|(mf, k, _)| mf == f && k == key);
                        let replaced = old.map(|p| mem::replace(&mut model[p].2, *value));
                        if old.is_none() {
                            model.push((f.clone(), *key, *value));
                        }
                        prop_assert_eq!(
                            idx.insert(f.as_bytes(), *key, *value),
                            Inserted { replaced, first }
                        );
                    }
                    Op::Remove(i, key) => {
                        let f = i.get(&filters);
                        let expected = model
                            .iter()
                            .position(|(mf, k, _)| mf == f && k == key)
                            .map(|p| {
                                let (_, _, value) = model.swap_remove(p);
                                let last = !model.iter().any(|(mf, _, _)| mf == f);
                                Removed { value, last }
                            });
                        prop_assert_eq!(idx.remove(f.as_bytes(), *key), expected);
                    }
                }
                idx.check();
                prop_assert_eq!(idx.len(), model.len());
                let distinct: HashSet<&str> = model.iter().map(|(f, _, _)| f.as_str()).collect();
                prop_assert_eq!(idx.filter_count(), distinct.len());
                for (f, k, v) in &model {
                    prop_assert_eq!(idx.get(f.as_bytes(), *k), Some(v));
                }
                for t in &topics {
                    let mut expected: Vec<(u8, u32)> = model
                        .iter()
                        .filter(|(f, _, _)| {
                            let m = naive_matches(f, t);
                            assert_eq!(m, matches(f.as_bytes(), t.as_bytes()), "{f} ~ {t}");
                            m
                        })
                        .map(|&(_, k, v)| (k, v))
                        .collect();
                    expected.sort_unstable();
                    prop_assert_eq!(hits(&idx, t), expected, "topic {}", t);
                }
            }
            // Tear down: everything pruned.
            for (f, k, _) in mem::take(&mut model) {
                prop_assert!(idx.remove(f.as_bytes(), k).is_some());
            }
            idx.check();
            prop_assert!(idx.is_empty());
            prop_assert_eq!(idx.filter_count(), 0);
            prop_assert!(idx.exact.is_empty());
            prop_assert_eq!(idx.trie_node_count(), 1);
        }
    }
}
