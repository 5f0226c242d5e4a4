//! The doorbell: the idle → busy wake protocol between producers and a parked consumer shard.
//!
//! Owns the "parked" flag of one consumer shard (shared by all of that shard's inbound rings)
//! and the memory orderings that make waking it race-free. The actual wake is injected as a
//! [`Wake`] (the shard layer's eventfd / monoio unparker); the doorbell only decides *when* to
//! call it. Its two sides run on different threads:
//!
//! - the **consumer shard** (the one that owns the inbound rings) calls
//!   [`Doorbell::prepare_park`] before it sleeps and [`Doorbell::set_busy`] when it wakes up
//!   for any reason;
//! - each **producer shard**, after a [`Producer::flush`](super::Producer::flush) to this
//!   consumer published items, calls [`Doorbell::after_flush`] (or [`Doorbell::notify`]).
//!
//! # Protocol
//!
//! ```text
//! consumer (before sleeping)           producer (after publishing a batch)
//!   parked = true                        tail = new_tail        (ring: Release store)
//!   fence(SeqCst)                        fence(SeqCst)
//!   any inbound ring non-empty?          if parked && cas(parked, true -> false):
//!     yes: parked = false, run              wake()
//!     no:  sleep until woken
//! ```
//!
//! Only the producer whose compare-exchange turns `parked` from true to false wakes the
//! consumer, so a parked consumer costs at most one wake however many producers flush at
//! once, and one batch costs at most one wake; a consumer that has not announced `parked` (a
//! busy one) is never woken, and a producer reads the flag's line without writing it unless a
//! wake is due. (A `swap(false)` would do the same job but writes the line even when it
//! loses.)
//!
//! # Why two `SeqCst` fences
//!
//! Each side stores one location and then loads the other's (store buffering, as in Dekker's
//! algorithm). With only `Release` stores and `Acquire` loads, both loads may read the old
//! values: the consumer sees the ring empty *and* the producer sees `parked == false`, so the
//! consumer sleeps with a message waiting and nobody wakes it (a lost wakeup). Acquire/release
//! cannot forbid this, because neither load reads the other side's store, so no
//! synchronises-with edge exists. A `SeqCst` fence between the store and the load on *both*
//! sides does: all `SeqCst` fences are in one total order, and whichever fence comes first in
//! it, the side with the later fence loads a value at least as new as the other side's store.
//! If the consumer's fence is first, the producer sees `parked == true` (or a later `false`
//! written by another producer that has woken the consumer already) and wakes it; if the
//! producer's fence is first, the consumer's re-check sees the new `tail` and does not sleep.
//! The fences cost one full barrier per park and per flushed batch, not per message. (Making
//! only the flag operations `SeqCst` is not enough: the ring's `tail` store and load are
//! `Release`/`Acquire`, and the store → load pairs across the two locations are what need
//! ordering.) The loom test `doorbell_never_loses_a_wakeup` checks exactly this race.
//!
//! A wake may be spurious (a producer can ring just after the consumer found work on its own);
//! the consumer then finds nothing, and parks again. [`Wake`] implementations must not lose a
//! wake that arrives before the consumer actually sleeps (an eventfd counter or a thread-park
//! token have that property), since the bell may ring between the re-check and the sleep.

use core::fmt;

use super::ring::{CacheLine, FlushOutcome};
use super::sync::{AtomicBool, Ordering, fence};

/// Wakes one parked consumer shard. Injected into a [`Doorbell`]; the shard layer implements it
/// with an eventfd (or monoio's unparker).
///
/// A wake that arrives while the consumer is still on its way to sleep must make that sleep
/// return at once (eventfd counter semantics): the doorbell may ring between the consumer's
/// last re-check and its sleep.
pub trait Wake {
    /// Wakes the consumer. Called from a producer shard's thread, at most once per
    /// "parked" announcement.
    fn wake(&self);
}

/// What [`Doorbell::prepare_park`] decided.
#[must_use = "sleep only on `Park::Sleep`"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Park {
    /// Every inbound ring was empty after the announcement: sleep until woken. Any producer
    /// that publishes from now on will wake the consumer.
    Sleep,
    /// An inbound ring had items: do not sleep; the consumer is busy again (flag cleared).
    WorkFound,
}

/// One consumer shard's doorbell, shared (in an `Arc`) by the consumer and every producer that
/// sends to it.
pub struct Doorbell<W> {
    /// True while the consumer is parked or about to park. On its own 128-byte line: every
    /// producer reads it once per flush.
    parked: CacheLine<AtomicBool>,
    waker: W,
}

impl<W: Wake> Doorbell<W> {
    /// A doorbell for a consumer that starts busy, waking it with `waker`.
    pub fn new(waker: W) -> Self {
        Self {
            parked: CacheLine(AtomicBool::new(false)),
            waker,
        }
    }

    /// The injected waker.
    pub fn waker(&self) -> &W {
        &self.waker
    }

    /// Consumer: call before sleeping. Announces "parked", then runs `recheck`, which must
    /// look at *every* inbound ring of this consumer (for example
    /// `|| rings.iter_mut().any(|r| !r.is_empty())`) and return whether any holds items.
    ///
    /// On [`Park::Sleep`], sleep until the [`Wake`] fires (then call
    /// [`set_busy`](Self::set_busy)); on [`Park::WorkFound`], go on working.
    pub fn prepare_park(&self, recheck: impl FnOnce() -> bool) -> Park {
        self.parked.store(true, Ordering::Relaxed);
        // The consumer's half of the store → load pair (see the module doc): orders the
        // `parked` store before the rings' `tail` loads in `recheck`.
        fence(Ordering::SeqCst);
        if recheck() {
            self.set_busy();
            Park::WorkFound
        } else {
            Park::Sleep
        }
    }

    /// Consumer: call when it is running again (woken by the bell, by its own I/O or a timer,
    /// or after finding work), so producers stop ringing. Harmless if already busy.
    pub fn set_busy(&self) {
        // `Relaxed`: a producer that still reads `true` only causes a spurious wake; the next
        // `prepare_park` re-announces with its own fence.
        if self.parked.load(Ordering::Relaxed) {
            self.parked.store(false, Ordering::Relaxed);
        }
    }

    /// Whether the consumer has announced it is parked and no producer has woken it yet.
    /// A snapshot, for metrics and tests.
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }

    /// Producer: call after a flush to this consumer published items (see
    /// [`after_flush`](Self::after_flush)). Wakes the consumer if it announced "parked" and no
    /// other producer has woken it since. Returns whether this call woke it.
    pub fn notify(&self) -> bool {
        // The producer's half of the store → load pair (see the module doc): orders the
        // flush's `tail` store before the `parked` load below.
        fence(Ordering::SeqCst);
        // Load first: a busy consumer's line is only read, not written, by every flush.
        // The compare-exchange makes exactly one producer win a given announcement; unlike a
        // swap it writes nothing when it loses (the flag is already false), which keeps the
        // line clean and keeps loom 0.7 exact: a losing swap's write makes its model of the
        // modification order report a lost wakeup the memory model rules out. `Relaxed` is
        // enough: the flag carries no data, and the fences above order it against `tail`.
        if self.parked.load(Ordering::Relaxed)
            && self
                .parked
                .compare_exchange(true, false, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.waker.wake();
            true
        } else {
            false
        }
    }

    /// Producer: [`notify`](Self::notify) if `outcome` published anything. Returns whether
    /// this call woke the consumer.
    pub fn after_flush(&self, outcome: FlushOutcome) -> bool {
        outcome.may_need_wake() && self.notify()
    }
}

impl<W> fmt::Debug for Doorbell<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doorbell")
            .field("parked", &self.parked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(shardmq_loom)))]
mod tests {
    use super::*;
    use crate::mesh::channel;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    #[derive(Debug, Default)]
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn wakes(bell: &Doorbell<CountWakes>) -> usize {
        bell.waker().0.load(Ordering::Relaxed)
    }

    #[test]
    fn a_busy_consumer_is_never_woken() {
        let bell = Doorbell::new(CountWakes::default());
        let (mut tx, _rx) = channel::<u8>(4);
        for _ in 0..3 {
            let outcome = tx.push_flush(1).unwrap();
            assert!(!bell.after_flush(outcome));
        }
        assert_eq!(wakes(&bell), 0);
        assert!(!bell.is_parked());
    }

    #[test]
    fn a_parked_consumer_is_woken_once() {
        let bell = Doorbell::new(CountWakes::default());
        let (mut tx, mut rx) = channel::<u8>(4);
        assert_eq!(bell.prepare_park(|| !rx.is_empty()), Park::Sleep);
        assert!(bell.is_parked());
        assert!(
            !bell.after_flush(tx.flush()),
            "a flush that published nothing rings nothing"
        );
        assert!(bell.after_flush(tx.push_flush(1).unwrap()));
        assert!(
            !bell.after_flush(tx.push_flush(2).unwrap()),
            "the first ring cleared the flag"
        );
        assert!(!bell.notify());
        assert_eq!(wakes(&bell), 1);
        assert!(!bell.is_parked());
        bell.set_busy();
        assert_eq!(rx.drain(8, drop), 2);
    }

    #[test]
    fn work_found_on_the_recheck_cancels_the_park() {
        let bell = Doorbell::new(CountWakes::default());
        let (mut tx, mut rx) = channel::<u8>(4);
        tx.try_push(1).unwrap();
        assert_eq!(
            bell.prepare_park(|| !rx.is_empty()),
            Park::Sleep,
            "staged is not sent"
        );
        let _ = tx.flush(); // published but the producer has not rung yet
        bell.set_busy(); // e.g. woken by its own socket
        assert_eq!(bell.prepare_park(|| !rx.is_empty()), Park::WorkFound);
        assert!(!bell.is_parked());
        assert!(!bell.notify(), "the consumer is busy again");
        assert_eq!(wakes(&bell), 0);
    }

    #[test]
    fn one_consumer_many_rings_one_flag() {
        let bell = Doorbell::new(CountWakes::default());
        let (mut tx_a, mut rx_a) = channel::<u8>(4);
        let (mut tx_b, mut rx_b) = channel::<u8>(4);
        let recheck = |a: &mut crate::mesh::Consumer<u8>, b: &mut crate::mesh::Consumer<u8>| {
            !a.is_empty() || !b.is_empty()
        };
        assert_eq!(
            bell.prepare_park(|| recheck(&mut rx_a, &mut rx_b)),
            Park::Sleep
        );
        assert!(bell.after_flush(tx_b.push_flush(1).unwrap()));
        assert!(
            !bell.after_flush(tx_a.push_flush(2).unwrap()),
            "already woken by ring b"
        );
        assert_eq!(wakes(&bell), 1);
        bell.set_busy();
        assert_eq!(
            bell.prepare_park(|| recheck(&mut rx_a, &mut rx_b)),
            Park::WorkFound
        );
    }

    /// Wakes a real thread with `Thread::unpark` (whose token keeps a wake that arrives before
    /// `park`, as an eventfd's counter does).
    #[derive(Debug)]
    struct Unpark {
        thread: std::thread::Thread,
        wakes: AtomicUsize,
    }

    impl Wake for Unpark {
        fn wake(&self) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
            self.thread.unpark();
        }
    }

    /// A consumer thread that really sleeps whenever its ring is empty, fed in batches by a
    /// producer thread: every item arrives in order, no sleep outlasts a published item (a lost
    /// wakeup would show as a 10 s sleep with items waiting), and there are no more wakes than
    /// batches.
    #[test]
    fn a_sleeping_consumer_thread_gets_every_batch() {
        const N: u64 = 200_000;
        let (mut tx, mut rx) = channel::<u64>(64);
        let bell = Arc::new(Doorbell::new(Unpark {
            thread: std::thread::current(),
            wakes: AtomicUsize::new(0),
        }));
        let producer = std::thread::spawn({
            let bell = Arc::clone(&bell);
            move || {
                let mut batches = 0usize;
                let mut next = 0;
                while next < N {
                    // Batch sizes 1..=13; pause now and then so the consumer parks often.
                    let end = (next + next % 13 + 1).min(N);
                    while next < end && tx.try_push(next).is_ok() {
                        next += 1;
                    }
                    let outcome = tx.flush();
                    batches += usize::from(outcome.may_need_wake());
                    bell.after_flush(outcome);
                    if next % 7 == 0 || !outcome.may_need_wake() {
                        std::thread::yield_now();
                    }
                }
                batches
            }
        });
        let mut expect = 0;
        let mut announcements = 0;
        while expect < N {
            let taken = rx.drain(32, |v| {
                assert_eq!(v, expect);
                expect += 1;
            });
            if taken > 0 {
                continue;
            }
            // Each announcement may be won by one wake, even when the recheck then finds
            // work (a producer can see `parked` between the store and `set_busy`).
            announcements += 1;
            if bell.prepare_park(|| !rx.is_empty()) == Park::Sleep {
                let start = Instant::now();
                std::thread::park_timeout(Duration::from_secs(10));
                assert!(
                    start.elapsed() < Duration::from_secs(10) || rx.is_empty(),
                    "lost wakeup: slept 10 s with items in the ring"
                );
                bell.set_busy();
            }
        }
        let batches = producer.join().unwrap();
        let wakes = bell.waker().wakes.load(Ordering::Relaxed);
        assert!(wakes <= batches, "{wakes} wakes for {batches} batches");
        assert!(
            wakes <= announcements,
            "{wakes} wakes for {announcements} announcements"
        );
    }
}

#[cfg(all(test, shardmq_loom))]
mod loom_tests {
    use super::*;
    use crate::mesh::channel;
    use crate::mesh::sync::model;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;

    /// The injected wake, modelled: counts rings.
    #[derive(Debug, Default)]
    struct Rang(AtomicUsize);

    impl Wake for Rang {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The lost-wakeup race: a consumer announces "parked" and re-checks its ring while a
    /// producer publishes an item and rings. Whenever the consumer decides to sleep, the
    /// producer must have rung (exactly once); when it finds the item, it must not be asleep.
    #[test]
    fn doorbell_never_loses_a_wakeup() {
        model("doorbell", || {
            let bell = Arc::new(Doorbell::new(Rang::default()));
            let (mut tx, mut rx) = channel::<u32>(2);
            let producer = thread::spawn({
                let bell = Arc::clone(&bell);
                move || {
                    let outcome = tx.push_flush(7).unwrap();
                    bell.after_flush(outcome);
                }
            });
            let decision = bell.prepare_park(|| !rx.is_empty());
            producer.join().unwrap();
            let rang = bell.waker().0.load(Ordering::Relaxed);
            match decision {
                // "Sleeping": only a ring (now or already) can end the sleep.
                Park::Sleep => assert_eq!(rang, 1, "lost wakeup"),
                Park::WorkFound => assert!(rang <= 1),
            }
            // Woken (or never asleep): the item is there.
            bell.set_busy();
            assert_eq!(rx.pop(), Some(7));
        });
    }

    /// The injected wake as a real sleep: loom's `Notify` keeps a wake that comes before the
    /// `wait` (as an eventfd's counter does), and a sleep nobody ends is a deadlock loom reports.
    #[derive(Debug, Default)]
    struct Sleeper {
        notify: loom::sync::Notify,
        wakes: AtomicUsize,
    }

    impl Wake for Sleeper {
        fn wake(&self) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
            self.notify.notify();
        }
    }

    /// The whole cycle, twice: the consumer drains, parks when empty, really sleeps on
    /// [`Park::Sleep`], and becomes busy again on waking, while the producer sends two
    /// one-item batches. Both items arrive in order, the consumer never sleeps through one
    /// (loom would report the deadlock), and there is at most one wake per batch.
    #[test]
    fn park_and_wake_cycles_deliver_every_batch() {
        model("doorbell cycles", || {
            let bell = Arc::new(Doorbell::new(Sleeper::default()));
            let (mut tx, mut rx) = channel::<u32>(2);
            let producer = thread::spawn({
                let bell = Arc::clone(&bell);
                move || {
                    for item in [1, 2] {
                        bell.after_flush(tx.push_flush(item).unwrap());
                    }
                }
            });
            let mut got = Vec::new();
            while got.len() < 2 {
                if rx.drain(2, |v| got.push(v)) > 0 {
                    continue;
                }
                if bell.prepare_park(|| !rx.is_empty()) == Park::Sleep {
                    bell.waker().notify.wait();
                    bell.set_busy();
                }
            }
            producer.join().unwrap();
            assert_eq!(got, [1, 2]);
            let wakes = bell.waker().wakes.load(Ordering::Relaxed);
            assert!(wakes <= 2, "{wakes} wakes for 2 batches");
        });
    }

    /// Two producers on two rings into one parked consumer: one announcement costs at most one
    /// wake, and a sleeping consumer is always woken.
    #[test]
    fn two_producers_ring_at_most_once() {
        model("doorbell two producers", || {
            let bell = Arc::new(Doorbell::new(Rang::default()));
            let (tx_a, mut rx_a) = channel::<u32>(1);
            let (tx_b, mut rx_b) = channel::<u32>(1);
            let producers: Vec<_> = [tx_a, tx_b]
                .into_iter()
                .map(|mut tx| {
                    let bell = Arc::clone(&bell);
                    thread::spawn(move || {
                        bell.after_flush(tx.push_flush(1).unwrap());
                    })
                })
                .collect();
            let decision = bell.prepare_park(|| !rx_a.is_empty() || !rx_b.is_empty());
            for producer in producers {
                producer.join().unwrap();
            }
            let rang = bell.waker().0.load(Ordering::Relaxed);
            assert!(rang <= 1, "{rang} wakes for one announcement");
            if decision == Park::Sleep {
                assert_eq!(rang, 1, "lost wakeup");
            }
        });
    }
}
