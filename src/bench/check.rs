//! Per-publisher delivery checks at one subscriber: loss, duplicates and reordering.
//!
//! A subscriber keeps one [`SeqCheck`] per publisher it should hear from. Sequence numbers
//! arrive in order on a healthy broker; a jump opens a *gap* (remembered as a range), a number
//! inside a remembered gap is a late (reordered) message, and a number below the highest seen
//! that is in no gap is a duplicate. Loss is counted at the end, when the publisher's total is
//! known: `sent − unique`.
//!
//! Gaps are bounded by [`MAX_GAPS`]: past it the oldest gap is forgotten (its messages still
//! count as lost if they never come, but one arriving later would then count as a duplicate).
//! Pure; one instance per (subscriber, publisher) on the subscriber's bench thread.

use std::collections::BTreeMap;

/// Most gaps remembered per (subscriber, publisher).
pub const MAX_GAPS: usize = 65_536;

/// The delivery record of one publisher's stream at one subscriber.
#[derive(Clone, Debug, Default)]
pub struct SeqCheck {
    /// One past the highest sequence number seen.
    next: u64,
    /// Missing ranges below `next`: start → end (exclusive).
    gaps: BTreeMap<u64, u64>,
    /// Distinct messages received.
    pub unique: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages that arrived after a later one from the same publisher.
    pub reordered: u64,
}

impl SeqCheck {
    /// Records the arrival of `seq`.
    #[inline]
    pub fn record(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
            self.unique += 1;
        } else if seq > self.next {
            if self.gaps.len() == MAX_GAPS {
                self.gaps.pop_first();
            }
            self.gaps.insert(self.next, seq);
            self.next = seq + 1;
            self.unique += 1;
        } else {
            self.late(seq);
        }
    }

    #[cold]
    fn late(&mut self, seq: u64) {
        let Some((&start, &end)) = self.gaps.range(..=seq).next_back() else {
            self.duplicates += 1;
            return;
        };
        if seq >= end {
            self.duplicates += 1;
            return;
        }
        self.gaps.remove(&start);
        if start < seq {
            self.gaps.insert(start, seq);
        }
        if seq + 1 < end {
            self.gaps.insert(seq + 1, end);
        }
        self.unique += 1;
        self.reordered += 1;
    }

    /// Messages that `sent` promised and never arrived.
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(seqs: &[u64]) -> SeqCheck {
        let mut c = SeqCheck::default();
        for &s in seqs {
            c.record(s);
        }
        c
    }

    /// Arrivals, sent, then the expected unique, duplicates, reordered and lost.
    type Case = (&'static [u64], u64, u64, u64, u64, u64);

    #[test]
    fn table() {
        let cases: &[Case] = &[
            (&[0, 1, 2, 3], 4, 4, 0, 0, 0),
            (&[0, 1, 1, 2], 3, 3, 1, 0, 0),
            (&[0, 2, 1, 3], 4, 4, 0, 1, 0),
            (&[0, 3], 4, 2, 0, 0, 2),
            (&[0, 3, 1, 1, 2], 4, 4, 1, 2, 0),
            (&[5, 0, 4, 4], 6, 3, 1, 2, 3),
            (&[], 2, 0, 0, 0, 2),
        ];
        for &(seqs, sent, unique, dups, reord, lost) in cases {
            let c = run(seqs);
            assert_eq!(
                (c.unique, c.duplicates, c.reordered, c.lost(sent)),
                (unique, dups, reord, lost),
                "{seqs:?}"
            );
        }
    }

    proptest! {
        /// Against a model that remembers every number: unique and duplicate counts agree
        /// for any arrival order with repeats.
        #[test]
        fn agrees_with_a_set(seqs in proptest::collection::vec(0u64..64, 0..200)) {
            let c = run(&seqs);
            let mut seen = std::collections::HashSet::new();
            let mut dups = 0;
            for s in &seqs {
                if !seen.insert(*s) {
                    dups += 1;
                }
            }
            prop_assert_eq!(c.unique, seen.len() as u64);
            prop_assert_eq!(c.duplicates, dups);
        }
    }
}
