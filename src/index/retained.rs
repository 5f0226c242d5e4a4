//! A shard's replica of the retained messages.
//!
//! Every shard keeps its own copy (a retained PUBLISH is broadcast to all shards over the
//! mesh), so a SUBSCRIBE finds the retained messages it must send without leaving its shard.
//! Single-threaded, `&mut self`, owned by the shard's state.
//!
//! Messages sit in a trie of topic levels (nodes in a slab, children in a hash map per node),
//! so a filter walks only the branches it can match: a literal level follows one child, `+`
//! every child, `#` the whole subtree. The walk uses an explicit stack, so a topic of
//! thousands of levels cannot overflow the shard's stack. Deleting prunes nodes that lead
//! nowhere, so memory returns to the root alone once everything is deleted.
//!
//! Bounded by `Limits::max_retained_messages` and `Limits::max_retained_bytes` (topic plus
//! [`Weigh::weight`] of each message): a new topic past either is refused; a replacement
//! that fits in the bytes is always stored, one that does not removes the topic's old
//! message (a stale value is never served) and is refused. The caller counts refusals.

use ahash::AHashMap;
use slab::Slab;

/// What [`RetainedStore::set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// A new topic was stored.
    Stored,
    /// The topic's message was replaced.
    Replaced,
    /// The topic's message was deleted.
    Deleted,
    /// Delete of a topic with no retained message.
    NotFound,
    /// The store is full: the new topic was not stored.
    Refused,
    /// The replacement did not fit in the byte bound: the old message was removed and the
    /// new one not stored.
    RefusedRemoved,
}

/// The bytes a message counts against the byte bound (besides its topic).
pub trait Weigh {
    /// Bytes of the message beyond its topic.
    fn weight(&self) -> usize;
}

impl Weigh for u32 {
    fn weight(&self) -> usize {
        4
    }
}

#[derive(Debug)]
struct Node<M> {
    parent: usize,
    level: Box<[u8]>,
    children: AHashMap<Box<[u8]>, usize>,
    value: Option<(Box<[u8]>, M)>,
}

const ROOT: usize = 0;

/// One shard's retained messages. See the module documentation.
#[derive(Debug)]
pub struct RetainedStore<M> {
    nodes: Slab<Node<M>>,
    len: usize,
    max: usize,
    bytes: usize,
    max_bytes: usize,
}

impl<M: Weigh> RetainedStore<M> {
    /// An empty store holding at most `max_messages` topics (0: none at all) of at most
    /// `max_bytes` in all.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        let mut nodes = Slab::new();
        nodes.insert(Node {
            parent: ROOT,
            level: Box::default(),
            children: AHashMap::new(),
            value: None,
        });
        Self {
            nodes,
            len: 0,
            max: max_messages,
            bytes: 0,
            max_bytes,
        }
    }

    /// Bytes held (topics plus message weights).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Retained messages stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn find(&self, topic: &[u8]) -> Option<usize> {
        let mut n = ROOT;
        for level in topic.split(|&b| b == b'/') {
            n = *self.nodes[n].children.get(level)?;
        }
        Some(n)
    }

    /// The retained message of `topic`.
    pub fn get(&self, topic: &[u8]) -> Option<&M> {
        let n = self.find(topic)?;
        self.nodes[n].value.as_ref().map(|(_, m)| m)
    }

    /// Stores (`Some`) or deletes (`None`) the retained message of `topic`.
    pub fn set(&mut self, topic: &[u8], message: Option<M>) -> SetOutcome {
        let Some(message) = message else {
            let Some(n) = self.find(topic) else {
                return SetOutcome::NotFound;
            };
            let Some((_, old)) = self.nodes[n].value.take() else {
                return SetOutcome::NotFound;
            };
            self.bytes -= topic.len() + old.weight();
            self.len -= 1;
            self.prune(n);
            return SetOutcome::Deleted;
        };
        let weight = topic.len() + message.weight();
        if let Some(n) = self.find(topic) {
            if let Some(v) = self.nodes[n].value.as_mut() {
                let held = self.bytes - (topic.len() + v.1.weight());
                if held + weight > self.max_bytes {
                    self.nodes[n].value = None;
                    self.bytes = held;
                    self.len -= 1;
                    self.prune(n);
                    return SetOutcome::RefusedRemoved;
                }
                v.1 = message;
                self.bytes = held + weight;
                return SetOutcome::Replaced;
            }
        }
        if self.len >= self.max || self.bytes + weight > self.max_bytes {
            return SetOutcome::Refused;
        }
        let mut n = ROOT;
        for level in topic.split(|&b| b == b'/') {
            n = match self.nodes[n].children.get(level) {
                Some(&c) => c,
                None => {
                    let c = self.nodes.insert(Node {
                        parent: n,
                        level: level.into(),
                        children: AHashMap::new(),
                        value: None,
                    });
                    self.nodes[n].children.insert(level.into(), c);
                    c
                }
            };
        }
        self.nodes[n].value = Some((topic.into(), message));
        self.len += 1;
        self.bytes += weight;
        SetOutcome::Stored
    }

    fn prune(&mut self, mut n: usize) {
        while n != ROOT && self.nodes[n].value.is_none() && self.nodes[n].children.is_empty() {
            let node = self.nodes.remove(n);
            let parent = node.parent;
            self.nodes[parent].children.remove(&node.level);
            if self.nodes[parent].children.capacity() > 4 * self.nodes[parent].children.len() {
                self.nodes[parent].children.shrink_to_fit();
            }
            n = parent;
        }
    }

    /// Calls `f(topic, message)` for every retained message whose topic matches `filter`,
    /// once each. A topic starting with `$` is not matched by a filter starting with a
    /// wildcard ([MQTT-4.7.2-1]).
    pub fn for_each_match(&self, filter: &[u8], mut f: impl FnMut(&[u8], &M)) {
        let levels: Vec<&[u8]> = filter.split(|&b| b == b'/').collect();
        let mut stack = vec![(ROOT, 0usize)];
        while let Some((n, depth)) = stack.pop() {
            let node = &self.nodes[n];
            if depth == levels.len() {
                if let Some((t, m)) = &node.value {
                    f(t, m);
                }
                continue;
            }
            let skip_dollar = |level: &[u8]| n == ROOT && level.first() == Some(&b'$');
            match levels[depth] {
                b"#" => {
                    // The parent level itself (`a/#` matches `a`), then the whole subtree.
                    if n != ROOT {
                        if let Some((t, m)) = &node.value {
                            f(t, m);
                        }
                    }
                    let mut sub: Vec<usize> = node
                        .children
                        .iter()
                        .filter(|(l, _)| !skip_dollar(l))
                        .map(|(_, &c)| c)
                        .collect();
                    while let Some(c) = sub.pop() {
                        let cn = &self.nodes[c];
                        if let Some((t, m)) = &cn.value {
                            f(t, m);
                        }
                        sub.extend(cn.children.values().copied());
                    }
                }
                b"+" => {
                    for (l, &c) in &node.children {
                        if !skip_dollar(l) {
                            stack.push((c, depth + 1));
                        }
                    }
                }
                literal => {
                    if let Some(&c) = node.children.get(literal) {
                        stack.push((c, depth + 1));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::matches;
    use proptest::prelude::*;

    fn found(s: &RetainedStore<u32>, filter: &str) -> Vec<u32> {
        let mut v = Vec::new();
        s.for_each_match(filter.as_bytes(), |_, &m| v.push(m));
        v.sort();
        v
    }

    #[test]
    fn set_replace_delete_and_match() {
        let mut s = RetainedStore::new(10, usize::MAX);
        assert_eq!(s.set(b"a", Some(1)), SetOutcome::Stored);
        assert_eq!(s.set(b"a/b", Some(2)), SetOutcome::Stored);
        assert_eq!(s.set(b"a//c", Some(3)), SetOutcome::Stored);
        assert_eq!(s.set(b"$SYS/x", Some(4)), SetOutcome::Stored);
        assert_eq!(s.set(b"a/b", Some(5)), SetOutcome::Replaced);
        assert_eq!(found(&s, "a/#"), vec![1, 3, 5]);
        assert_eq!(found(&s, "#"), vec![1, 3, 5]);
        assert_eq!(found(&s, "+/x"), Vec::<u32>::new());
        assert_eq!(found(&s, "$SYS/#"), vec![4]);
        assert_eq!(found(&s, "a/+"), vec![5]);
        assert_eq!(found(&s, "a/+/c"), vec![3]);
        assert_eq!(found(&s, "a/b"), vec![5]);
        assert_eq!(s.get(b"a/b"), Some(&5));
        assert_eq!(s.set(b"nope", None), SetOutcome::NotFound);
        for t in ["a", "a/b", "a//c", "$SYS/x"] {
            assert_eq!(s.set(t.as_bytes(), None), SetOutcome::Deleted);
        }
        assert!(s.is_empty());
        assert_eq!(s.nodes.len(), 1, "pruned back to the root");
    }

    #[test]
    fn the_limit_refuses_new_topics_only() {
        let mut s = RetainedStore::new(1, usize::MAX);
        assert_eq!(s.set(b"a", Some(1)), SetOutcome::Stored);
        assert_eq!(s.set(b"b", Some(2)), SetOutcome::Refused);
        assert_eq!(s.set(b"a", Some(3)), SetOutcome::Replaced);
        let mut none = RetainedStore::new(0, usize::MAX);
        assert_eq!(none.set(b"a", Some(1)), SetOutcome::Refused);
    }

    #[test]
    fn the_byte_bound_refuses_what_does_not_fit_and_never_keeps_a_stale_value() {
        // Each entry weighs its topic plus 4.
        let mut s = RetainedStore::new(100, 12);
        assert_eq!(s.set(b"aa", Some(1)), SetOutcome::Stored);
        assert_eq!(s.bytes(), 6);
        assert_eq!(s.set(b"bb", Some(2)), SetOutcome::Stored);
        assert_eq!(s.set(b"c", Some(3)), SetOutcome::Refused, "13 > 12");
        assert_eq!(
            s.set(b"aa", Some(4)),
            SetOutcome::Replaced,
            "same size fits"
        );
        assert_eq!(s.set(b"bb", None), SetOutcome::Deleted);
        assert_eq!(s.bytes(), 6);
        assert_eq!(s.set(b"c", Some(5)), SetOutcome::Stored);
        assert_eq!(s.bytes(), 11);
        let mut tight = RetainedStore::new(100, 6);
        assert_eq!(tight.set(b"aa", Some(1)), SetOutcome::Stored);
        assert_eq!(tight.set(b"aa", Some(2)), SetOutcome::Replaced);
        let mut tiny = RetainedStore::new(100, 5);
        assert_eq!(tiny.set(b"a", Some(1)), SetOutcome::Stored);
        let mut big = RetainedStore::new(100, 5);
        assert_eq!(big.set(b"a", Some(1)), SetOutcome::Stored);
        assert_eq!(big.set(b"a/b", Some(1)), SetOutcome::Refused);
        assert_eq!(big.get(b"a"), Some(&1));
        assert_eq!(big.len(), 1);
    }

    #[derive(Debug, PartialEq)]
    struct Sized(usize);

    impl Weigh for Sized {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn a_replacement_past_the_byte_bound_removes_the_old_message() {
        let mut s = RetainedStore::new(100, 10);
        assert_eq!(s.set(b"t", Some(Sized(4))), SetOutcome::Stored);
        assert_eq!(s.set(b"u", Some(Sized(3))), SetOutcome::Stored);
        assert_eq!(s.set(b"t", Some(Sized(9))), SetOutcome::RefusedRemoved);
        assert_eq!(s.get(b"t"), None);
        assert_eq!((s.len(), s.bytes()), (1, 4));
        assert_eq!(s.set(b"t", Some(Sized(5))), SetOutcome::Stored);
    }

    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "$s"])
    }

    proptest! {
        #[test]
        fn agrees_with_a_naive_model(
            ops in prop::collection::vec((prop::collection::vec(level(), 1..4), any::<bool>()), 1..40),
            filters in prop::collection::vec(
                prop::collection::vec(prop_oneof![level(), Just("+"), Just("#")], 1..4),
                1..10,
            ),
        ) {
            let mut s = RetainedStore::new(usize::MAX, usize::MAX);
            let mut model = std::collections::HashMap::new();
            for (i, (levels, set)) in ops.into_iter().enumerate() {
                let t = levels.join("/");
                if set {
                    s.set(t.as_bytes(), Some(i as u32));
                    model.insert(t, i as u32);
                } else {
                    s.set(t.as_bytes(), None);
                    model.remove(&t);
                }
            }
            for f in filters {
                let mut ls = Vec::new();
                for l in f {
                    ls.push(l);
                    if l == "#" {
                        break;
                    }
                }
                let f = ls.join("/");
                let mut want: Vec<u32> = model
                    .iter()
                    .filter(|(t, _)| matches(f.as_bytes(), t.as_bytes()))
                    .map(|(_, &v)| v)
                    .collect();
                want.sort();
                prop_assert_eq!(found(&s, &f), want, "filter {}", f);
            }
        }
    }
}
