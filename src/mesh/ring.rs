//! The bounded single-producer single-consumer ring that carries messages between two shards.
//!
//! Owns the ring's memory and its slot protocol, the main `unsafe` of the crate. [`channel`]
//! makes one ring and splits it into two endpoints:
//!
//! - the [`Producer`] lives on the *sending* shard's thread: it stages items with
//!   [`Producer::try_push`] while the shard processes a read, and publishes the whole batch
//!   with one [`Producer::flush`] (then rings the consumer's [`Doorbell`](super::Doorbell));
//! - the [`Consumer`] lives on the *receiving* shard's thread: it takes items with
//!   [`Consumer::pop`] or a whole batch with [`Consumer::drain`].
//!
//! # Layout and indices
//!
//! The capacity is a power of two so a slot is `index & mask`. `head` (the next slot the
//! consumer reads) and `tail` (the end of what the producer has published) are free-running
//! `usize` counters that wrap at `usize::MAX`; the number of items is `tail - head` in wrapping
//! arithmetic, which stays right across the wrap because the capacity divides 2^64 (2^32).
//! Each counter sits on its own 128-byte line (two 64-byte lines: the adjacent-line
//! prefetcher pulls pairs), so the producer's stores to `tail` and the consumer's stores to
//! `head` never fight over one line (no false sharing). Each endpoint keeps a private copy
//! of the other side's counter and reloads the shared one only when its copy says the ring is
//! full (producer) or empty (consumer): while the ring is neither, an endpoint touches no line
//! the other side writes.
//!
//! # Slot ownership
//!
//! At any time the slots are split in three ranges (indices in wrapping order):
//!
//! | range | state | owned by |
//! | --- | --- | --- |
//! | `head .. tail` | initialised, published | the consumer (it may read them) |
//! | `tail .. staged` | initialised, not yet published | the producer |
//! | `staged .. head + capacity` | uninitialised | the producer (it may write them) |
//!
//! A slot moves from the producer to the consumer with the producer's `Release` store of
//! `tail` (read with `Acquire` by the consumer), and back with the consumer's `Release` store
//! of `head` (read with `Acquire` by the producer). Each endpoint accesses only slots of the
//! ranges it owns, so no slot is ever accessed from both threads without a happens-before
//! edge between the accesses.
//!
//! # Dropping
//!
//! Items staged but never flushed are dropped by the [`Producer`]'s `Drop` (they were never
//! sent). Published items not yet taken are dropped by whichever endpoint is dropped last
//! (`Arc`'s last-reference synchronisation makes the other side's writes visible to it). No
//! item is leaked and none is dropped twice, including when the closure given to
//! [`Consumer::drain`] panics.

use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::num::NonZeroUsize;
use core::ops::Deref;

use super::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

/// Aligns (and so pads) its contents to 128 bytes: two 64-byte cache lines, because x86's
/// adjacent-line prefetcher and some ARM cores move lines in pairs.
#[repr(align(128))]
pub(super) struct CacheLine<T>(pub(super) T);

impl<T> Deref for CacheLine<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One slot: written by the producer, read by the consumer (see the module's ownership table).
type Slot<T> = UnsafeCell<MaybeUninit<T>>;

/// The state both endpoints share (through one `Arc`).
///
/// `repr(C)` keeps the declared order: `head`'s line, `tail`'s line, then the read-only fields
/// on a third line of their own.
#[repr(C)]
struct Shared<T> {
    /// Next index the consumer reads. Written only by the consumer (`Release`).
    head: CacheLine<AtomicUsize>,
    /// End of the published items. Written only by the producer (`Release`).
    tail: CacheLine<AtomicUsize>,
    /// `capacity - 1`. Never changes.
    mask: usize,
    /// `capacity` slots. The boxed slice never changes; its slots do (see [`Slot`]).
    slots: Box<[Slot<T>]>,
}

impl<T> Shared<T> {
    #[inline(always)]
    fn slot(&self, index: usize) -> &Slot<T> {
        &self.slots[index & self.mask]
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // `&mut self` means both endpoints are gone; the last `Arc` drop synchronised with the
        // other one, so relaxed loads see the final counters. The `Consumer`'s `Drop` stored its
        // final `head`; the `Producer`'s `Drop` already dropped its unpublished items, so
        // exactly `head .. tail` remain initialised.
        let mut index = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        while index != tail {
            let slot = self.slot(index);
            // Advance first: if this item's `Drop` panics, the rest leak but none is dropped
            // twice.
            index = index.wrapping_add(1);
            slot.with_mut(|ptr| {
                // SAFETY: the slot is in `head .. tail`, so it holds an initialised value that
                // nobody has moved out (see the comment above); no endpoint remains to access it
                // concurrently, and we visit each index once.
                unsafe { (*ptr).assume_init_drop() }
            });
        }
    }
}

/// What [`Producer::flush`] did.
///
/// After `Published`, hand the outcome to the consumer's doorbell
/// ([`Doorbell::after_flush`](super::Doorbell::after_flush)): the consumer may have parked.
#[must_use = "after a flush that published items, ring the consumer's doorbell (`Doorbell::after_flush`)"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Nothing was staged, so nothing was published: the consumer needs no wake.
    Nothing,
    /// This many staged items became visible to the consumer with one store: the consumer
    /// may be parked and need waking.
    Published(NonZeroUsize),
}

impl FlushOutcome {
    /// How many items the flush published.
    pub const fn published(self) -> usize {
        match self {
            Self::Nothing => 0,
            Self::Published(n) => n.get(),
        }
    }

    /// Whether the consumer may need waking (the flush published something).
    pub const fn may_need_wake(self) -> bool {
        matches!(self, Self::Published(_))
    }
}

/// Creates a ring with room for `capacity` items, rounded up to a power of two (at least 1),
/// and returns its two endpoints.
///
/// # Panics
///
/// If the rounded capacity does not fit in a `usize`; it would not fit in memory either.
///
/// # Examples
///
/// ```
/// use shardmq::mesh::{FlushOutcome, channel};
///
/// let (mut tx, mut rx) = channel::<u32>(3);
/// assert_eq!(tx.capacity(), 4);
/// tx.try_push(1).unwrap();
/// tx.try_push(2).unwrap();
/// assert_eq!(rx.pop(), None, "staged items are invisible until flushed");
/// assert_eq!(tx.flush().published(), 2);
/// assert_eq!(rx.pop(), Some(1));
/// assert_eq!(rx.pop(), Some(2));
/// assert_eq!(tx.flush(), FlushOutcome::Nothing);
/// ```
pub fn channel<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    with_start(capacity, 0)
}

/// [`channel`] with both counters starting at `start`, so tests can cross `usize::MAX`.
fn with_start<T: Send>(capacity: usize, start: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity
        .max(1)
        .checked_next_power_of_two()
        .expect("mesh ring capacity overflows usize");
    let slots = (0..capacity)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let shared = Arc::new(Shared {
        head: CacheLine(AtomicUsize::new(start)),
        tail: CacheLine(AtomicUsize::new(start)),
        mask: capacity - 1,
        slots,
    });
    let producer = Producer {
        shared: Arc::clone(&shared),
        mask: capacity - 1,
        staged: start,
        published: start,
        cached_head: start,
        _not_sync: PhantomData,
    };
    let consumer = Consumer {
        shared,
        mask: capacity - 1,
        head: start,
        cached_tail: start,
        _not_sync: PhantomData,
    };
    (producer, consumer)
}

/// The sending end of a ring: owned by one shard thread.
///
/// Not `Clone` (a second producer would race the first on the same slots) and not `Sync`
/// (every operation that touches slots takes `&mut self`, and the type says so to the compiler
/// too). It is `Send`, so it can be built on one thread and moved to its shard.
///
/// ```compile_fail,E0599
/// let (tx, _rx) = shardmq::mesh::channel::<u64>(4);
/// let _second = tx.clone(); // no `clone` method: a producer is unique
/// ```
///
/// ```compile_fail,E0277
/// fn shared_between_threads<S: Sync>(_: &S) {}
/// let (tx, _rx) = shardmq::mesh::channel::<u64>(4);
/// shared_between_threads(&tx); // `Producer` is not `Sync`
/// ```
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Copy of `shared.mask`, on the producer's own line.
    mask: usize,
    /// Index of the next slot to write: the end of the staged items.
    staged: usize,
    /// The value last stored to `shared.tail`.
    published: usize,
    /// A value `shared.head` had, never ahead of it (the consumer only moves it forward).
    cached_head: usize,
    /// `Cell` is `Send + !Sync`: keeps `Producer` `!Sync` whatever `Shared` becomes.
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: a `Producer` is the one handle that writes slots and `tail`; moving it to another
// thread moves that role, and its private counters, with it: there is still exactly one producer
// and the slot protocol (see the module doc) does not depend on which thread runs it. The values
// it sends are taken out on the consumer's thread and values it drops may be dropped there too,
// hence `T: Send`. `Shared`'s atomics and the `Arc` are safe to use from any thread.
unsafe impl<T: Send> Send for Producer<T> {}

impl<T> Producer<T> {
    /// The ring's capacity (a power of two).
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Stages `value` in the next free slot without publishing it: the consumer sees it only
    /// after [`flush`](Self::flush). Gives the value back if the ring is full (counting staged
    /// items); a full ring never blocks.
    #[inline]
    pub fn try_push(&mut self, value: T) -> Result<(), T> {
        if self.staged.wrapping_sub(self.cached_head) > self.mask {
            // The copy says full: look at the real `head`. `Acquire` pairs with the consumer's
            // `Release` store of `head`, made after it moved the items out of the slots we are
            // about to reuse.
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            if self.staged.wrapping_sub(self.cached_head) > self.mask {
                return Err(value);
            }
        }
        let index = self.staged;
        self.shared.slot(index).with_mut(|ptr| {
            // SAFETY: `index - cached_head < capacity` and `cached_head <= head`, so slot
            // `index` is in the free range `staged .. head + capacity`, which only the producer
            // (us, through `&mut self`) accesses. If it held an item before, the consumer moved
            // that item out before its `Release` store of a `head` >= `cached_head`, which we
            // read with `Acquire` (now or when `cached_head` was loaded): that read
            // happens-before this write. The slot holds no live value, so overwriting it leaks
            // nothing.
            unsafe { ptr.write(MaybeUninit::new(value)) }
        });
        self.staged = index.wrapping_add(1);
        Ok(())
    }

    /// Publishes every staged item with one `Release` store of `tail`. Returns whether it
    /// published anything, i.e. whether the consumer's doorbell must be rung.
    #[inline]
    pub fn flush(&mut self) -> FlushOutcome {
        match NonZeroUsize::new(self.staged.wrapping_sub(self.published)) {
            None => FlushOutcome::Nothing,
            Some(n) => {
                // `Release`: the slot writes of `try_push` happen-before any `Acquire` load of
                // `tail` that reads this value, which is what hands the slots to the consumer.
                self.shared.tail.store(self.staged, Ordering::Release);
                self.published = self.staged;
                FlushOutcome::Published(n)
            }
        }
    }

    /// [`try_push`](Self::try_push) then [`flush`](Self::flush) (which also publishes anything
    /// staged before). On a full ring the value comes back and nothing is flushed.
    #[inline]
    pub fn push_flush(&mut self, value: T) -> Result<FlushOutcome, T> {
        self.try_push(value)?;
        Ok(self.flush())
    }

    /// How many more items [`try_push`](Self::try_push) would accept now. Reloads the
    /// consumer's `head` (one `Acquire` load), so the answer is exact at the time of the call
    /// and a lower bound afterwards (only the consumer frees slots).
    pub fn free_slots(&mut self) -> usize {
        self.cached_head = self.shared.head.load(Ordering::Acquire);
        self.capacity() - self.staged.wrapping_sub(self.cached_head)
    }

    /// How many items are in the ring: staged plus published but not yet taken. An upper
    /// bound as soon as it returns (the consumer may take more).
    pub fn len(&self) -> usize {
        // Only a count: no slot access depends on this load, so `Relaxed` is enough.
        self.staged
            .wrapping_sub(self.shared.head.load(Ordering::Relaxed))
    }

    /// Whether the ring holds no item, staged or published (see [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many items are staged: pushed but not yet flushed.
    pub fn staged(&self) -> usize {
        self.staged.wrapping_sub(self.published)
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // Staged items were never published: they are ours to drop. Published ones are left
        // to the last endpoint (`Shared`'s `Drop`).
        while self.published != self.staged {
            let slot = self.shared.slot(self.published);
            // Advance first: if an item's `Drop` panics, the rest leak but none is dropped
            // twice (and `Shared`'s `Drop` never looks past the published `tail`).
            self.published = self.published.wrapping_add(1);
            slot.with_mut(|ptr| {
                // SAFETY: the slot is in the staged range `published .. staged`: `try_push`
                // initialised it on this thread, it was never published, so the consumer has
                // never accessed it and never will; we visit each staged index once.
                unsafe { (*ptr).assume_init_drop() }
            });
        }
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("staged", &self.staged())
            .field("published", &self.published)
            .field("cached_head", &self.cached_head)
            .finish()
    }
}

/// The receiving end of a ring: owned by one shard thread.
///
/// Not `Clone` and not `Sync`, for the same reasons as [`Producer`]; `Send`.
///
/// ```compile_fail,E0599
/// let (_tx, rx) = shardmq::mesh::channel::<u64>(4);
/// let _second = rx.clone(); // no `clone` method: a consumer is unique
/// ```
///
/// ```compile_fail,E0277
/// fn shared_between_threads<S: Sync>(_: &S) {}
/// let (_tx, rx) = shardmq::mesh::channel::<u64>(4);
/// shared_between_threads(&rx); // `Consumer` is not `Sync`
/// ```
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Copy of `shared.mask`, on the consumer's own line.
    mask: usize,
    /// Index of the next slot to read. `shared.head` lags it only inside `drain` (and after a
    /// panic in its closure, until the next call or `Drop` stores it).
    head: usize,
    /// A value `shared.tail` had, never ahead of it (the producer only moves it forward).
    cached_tail: usize,
    /// `Cell` is `Send + !Sync`: keeps `Consumer` `!Sync` whatever `Shared` becomes.
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: a `Consumer` is the one handle that reads slots and writes `head`; moving it moves that
// role, and its private counters, with it, so there is still exactly one consumer. It takes `T`
// values that another thread (the producer's) made, hence `T: Send`. `Shared`'s atomics and the
// `Arc` are safe to use from any thread.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T> Consumer<T> {
    /// The ring's capacity (a power of two).
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Reloads `tail` if the copy says fewer than `wanted` items are available; returns how
    /// many are available.
    #[inline(always)]
    fn available(&mut self, wanted: usize) -> usize {
        let available = self.cached_tail.wrapping_sub(self.head);
        if available >= wanted {
            return available;
        }
        // `Acquire` pairs with the producer's `Release` store of `tail`, made after it wrote
        // the slots up to that value.
        self.cached_tail = self.shared.tail.load(Ordering::Acquire);
        self.cached_tail.wrapping_sub(self.head)
    }

    /// Moves the item out of slot `head` and advances the private `head` (not the shared one).
    ///
    /// # Safety
    ///
    /// `head` must be before `cached_tail` (the slot is published and not yet taken).
    #[inline(always)]
    unsafe fn take(&mut self) -> T {
        let index = self.head;
        self.head = index.wrapping_add(1);
        self.shared.slot(index).with_mut(|ptr| {
            // SAFETY: the caller guarantees `index` is in `head .. cached_tail`, and
            // `cached_tail` came from an `Acquire` load of `tail` that read the producer's
            // `Release` store, made after it initialised this slot: the write happens-before
            // this read. The slot is in the consumer's range, which the producer does not touch
            // until we publish a `head` past it, and we advanced `head` above so this value is
            // read (moved out) exactly once.
            unsafe { (*ptr).assume_init_read() }
        })
    }

    /// Takes the oldest published item, if any (one `Release` store of `head`).
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.available(1) == 0 {
            return None;
        }
        // SAFETY: `available` returned at least 1, so `head` is before `cached_tail`.
        let value = unsafe { self.take() };
        // `Release`: our read of the slot happens-before the producer's `Acquire` load that
        // sees this `head` and reuses the slot.
        self.shared.head.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Takes up to `max` published items in order, calling `f` on each, with at most one
    /// `Acquire` load of `tail` (only if the cached copy holds fewer than `max`) and one
    /// `Release` store of `head` for the batch. Returns how many it took.
    ///
    /// If `f` panics, the items already passed to it count as taken and the rest stay in the
    /// ring; nothing is dropped twice.
    #[inline]
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        let n = self.available(max).min(max);
        if n == 0 {
            return 0;
        }
        for _ in 0..n {
            // SAFETY: fewer than `n` items taken so far and `n <= cached_tail - head` at the
            // start, so `head` is before `cached_tail`.
            f(unsafe { self.take() });
        }
        // `Release`, as in `pop`, once for the whole batch. (On a panic in `f`, `Drop` or the
        // next call stores the private `head`, which already counts the items `f` received.)
        self.shared.head.store(self.head, Ordering::Release);
        n
    }

    /// How many published items are waiting. Reloads `tail` (one `Acquire` load): exact at
    /// the time of the call, a lower bound afterwards (only the producer adds).
    pub fn len(&mut self) -> usize {
        self.cached_tail = self.shared.tail.load(Ordering::Acquire);
        self.cached_tail.wrapping_sub(self.head)
    }

    /// Whether no published item is waiting. Trusts the cached `tail` when it already shows
    /// items; otherwise reloads it (one `Acquire` load), which is what the doorbell's re-check
    /// before parking needs.
    #[inline]
    pub fn is_empty(&mut self) -> bool {
        self.available(1) == 0
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // Make `Shared`'s `Drop` see every item this consumer took, including any a panicking
        // `drain` closure received before the batch's store of `head`.
        self.shared.head.store(self.head, Ordering::Release);
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .finish()
    }
}

#[cfg(all(test, not(shardmq_loom)))]
mod tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::atomic::AtomicUsize as StdAtomicUsize;

    /// Counts its drops in a shared counter.
    #[derive(Debug)]
    struct Counted {
        id: u64,
        drops: std::sync::Arc<StdAtomicUsize>,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counted(drops: &std::sync::Arc<StdAtomicUsize>, id: u64) -> Counted {
        Counted {
            id,
            drops: drops.clone(),
        }
    }

    fn drops() -> std::sync::Arc<StdAtomicUsize> {
        std::sync::Arc::new(StdAtomicUsize::new(0))
    }

    #[test]
    fn capacity_rounds_up_to_a_power_of_two() {
        for (asked, got) in [(0, 1), (1, 1), (2, 2), (3, 4), (5, 8), (64, 64), (65, 128)] {
            let (tx, rx) = channel::<u8>(asked);
            assert_eq!((tx.capacity(), rx.capacity()), (got, got), "asked {asked}");
        }
    }

    #[test]
    #[should_panic(expected = "overflows")]
    fn capacity_too_large_panics() {
        let _ = channel::<u8>(usize::MAX);
    }

    #[test]
    fn head_and_tail_live_on_separate_128_byte_lines() {
        assert_eq!(align_of::<CacheLine<AtomicUsize>>(), 128);
        assert_eq!(core::mem::offset_of!(Shared<u64>, head), 0);
        assert_eq!(core::mem::offset_of!(Shared<u64>, tail), 128);
        assert!(core::mem::offset_of!(Shared<u64>, mask) >= 256);
    }

    #[test]
    fn full_ring_gives_the_value_back() {
        let (mut tx, mut rx) = channel::<String>(4);
        for i in 0..4 {
            tx.try_push(i.to_string()).unwrap();
        }
        assert_eq!(tx.try_push("extra".into()), Err("extra".to_string()));
        assert_eq!(tx.push_flush("again".into()), Err("again".to_string()));
        assert_eq!(tx.staged(), 4, "a refused push_flush flushes nothing");
        assert_eq!(tx.flush().published(), 4);
        assert_eq!(tx.try_push("still".into()), Err("still".to_string()));
        assert_eq!(rx.pop().as_deref(), Some("0"));
        tx.try_push("4".into()).unwrap();
        let _ = tx.flush();
        let mut got = Vec::new();
        assert_eq!(rx.drain(usize::MAX, |s| got.push(s)), 4);
        assert_eq!(got, ["1", "2", "3", "4"]);
    }

    #[test]
    fn fifo_order_with_pop_and_drain() {
        let (mut tx, mut rx) = channel::<u32>(16);
        for i in 0..10 {
            tx.try_push(i).unwrap();
        }
        assert_eq!(
            tx.flush(),
            FlushOutcome::Published(NonZeroUsize::new(10).unwrap())
        );
        assert_eq!(rx.pop(), Some(0));
        let mut got = Vec::new();
        assert_eq!(rx.drain(4, |v| got.push(v)), 4);
        assert_eq!(got, [1, 2, 3, 4]);
        assert_eq!(rx.drain(0, |_| unreachable!()), 0);
        assert_eq!(rx.drain(100, |v| got.push(v)), 5);
        assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(rx.pop(), None);
        assert_eq!(rx.drain(8, |_| unreachable!()), 0);
    }

    #[test]
    fn staged_items_are_invisible_until_flushed() {
        let (mut tx, mut rx) = channel::<u32>(8);
        assert_eq!(tx.flush(), FlushOutcome::Nothing);
        assert!(!tx.flush().may_need_wake());
        for i in 0..3 {
            tx.try_push(i).unwrap();
        }
        assert_eq!((tx.staged(), tx.len()), (3, 3));
        assert!(rx.is_empty());
        assert_eq!(rx.len(), 0);
        assert_eq!(rx.pop(), None);
        assert_eq!(rx.drain(8, |_| unreachable!()), 0);

        let outcome = tx.flush();
        assert!(outcome.may_need_wake());
        assert_eq!(outcome.published(), 3);
        assert_eq!(tx.staged(), 0);
        // A second batch is staged behind the first, published one.
        tx.try_push(3).unwrap();
        assert_eq!(rx.len(), 3);
        assert!(!rx.is_empty());
        let mut got = Vec::new();
        assert_eq!(rx.drain(8, |v| got.push(v)), 3);
        assert_eq!(rx.pop(), None, "item 3 is still only staged");
        assert_eq!(tx.push_flush(4).unwrap().published(), 2);
        rx.drain(8, |v| got.push(v));
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn free_slots_and_len_track_both_sides() {
        let (mut tx, mut rx) = channel::<u8>(4);
        assert_eq!((tx.free_slots(), tx.len(), tx.is_empty()), (4, 0, true));
        tx.try_push(1).unwrap();
        tx.try_push(2).unwrap();
        assert_eq!(
            (tx.free_slots(), tx.len()),
            (2, 2),
            "staged items take room"
        );
        let _ = tx.flush();
        assert_eq!(rx.pop(), Some(1));
        assert_eq!((tx.free_slots(), tx.len(), rx.len()), (3, 1, 1));
        assert_eq!(rx.pop(), Some(2));
        assert_eq!(
            (tx.free_slots(), tx.is_empty(), rx.is_empty()),
            (4, true, true)
        );
    }

    #[test]
    fn wraps_around_many_times() {
        let (mut tx, mut rx) = channel::<u64>(4);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        // Batches of 1..=4 items: the slot index wraps every few rounds, 25_000 times in all.
        for round in 0..40_000u64 {
            let batch = round % 4 + 1;
            for _ in 0..batch {
                tx.try_push(next_in).unwrap();
                next_in += 1;
            }
            assert_eq!(tx.flush().published(), batch as usize);
            if round % 2 == 0 {
                while let Some(v) = rx.pop() {
                    assert_eq!(v, next_out);
                    next_out += 1;
                }
            } else {
                let taken = rx.drain(usize::MAX, |v| {
                    assert_eq!(v, next_out);
                    next_out += 1;
                });
                assert_eq!(taken, batch as usize);
            }
        }
        assert_eq!((next_in, next_out), (100_000, 100_000));
    }

    #[test]
    fn counters_wrap_past_usize_max() {
        let drops = drops();
        let (mut tx, mut rx) = with_start::<Counted>(4, usize::MAX - 5);
        let mut expect = 0;
        for id in 0..40 {
            tx.try_push(counted(&drops, id)).unwrap();
            if id % 3 == 2 {
                let _ = tx.flush();
                rx.drain(2, |c| {
                    assert_eq!(c.id, expect);
                    expect += 1;
                });
            }
            if tx.free_slots() == 0 {
                let _ = tx.flush();
                while let Some(c) = rx.pop() {
                    assert_eq!(c.id, expect);
                    expect += 1;
                }
            }
        }
        let _ = tx.flush();
        while let Some(c) = rx.pop() {
            assert_eq!(c.id, expect);
            expect += 1;
        }
        assert_eq!(expect, 40);
        drop((tx, rx));
        assert_eq!(drops.load(Ordering::Relaxed), 40);
    }

    /// Leaves 3 items taken, 2 published, 1 staged.
    fn partly_used(
        drops: &std::sync::Arc<StdAtomicUsize>,
    ) -> (Producer<Counted>, Consumer<Counted>) {
        let (mut tx, mut rx) = channel(8);
        for id in 0..5 {
            tx.try_push(counted(drops, id)).unwrap();
        }
        let _ = tx.flush();
        for _ in 0..3 {
            drop(rx.pop().unwrap());
        }
        tx.try_push(counted(drops, 5)).unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 3);
        (tx, rx)
    }

    #[test]
    fn dropping_the_producer_first_frees_staged_now_and_published_with_the_consumer() {
        let drops = drops();
        let (tx, rx) = partly_used(&drops);
        drop(tx);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            4,
            "the staged item goes with the producer"
        );
        drop(rx);
        assert_eq!(drops.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn dropping_the_consumer_first_leaves_published_items_to_the_producer() {
        let drops = drops();
        let (mut tx, rx) = partly_used(&drops);
        drop(rx);
        assert_eq!(drops.load(Ordering::Relaxed), 3);
        // The producer can go on (nobody reads), up to the capacity, and frees it all.
        let _ = tx.flush();
        let mut pushed = 0;
        while let Ok(()) = tx.try_push(counted(&drops, 99)) {
            pushed += 1;
        }
        assert_eq!(pushed, 5, "3 of 8 slots still hold items");
        assert_eq!(
            drops.load(Ordering::Relaxed),
            4,
            "the refused item came back and went"
        );
        drop(tx);
        assert_eq!(drops.load(Ordering::Relaxed), 4 + 8);
    }

    #[test]
    fn a_panicking_drain_closure_drops_nothing_twice() {
        let drops = drops();
        let (mut tx, mut rx) = channel(8);
        for id in 0..6 {
            tx.try_push(counted(&drops, id)).unwrap();
        }
        let _ = tx.flush();
        let result = catch_unwind(AssertUnwindSafe(|| {
            rx.drain(5, |c| {
                if c.id == 2 {
                    panic!("closure fails on item 2");
                }
            })
        }));
        assert!(result.is_err());
        // Items 0, 1, 2 reached the closure (and were dropped by it); 3, 4, 5 remain.
        assert_eq!(drops.load(Ordering::Relaxed), 3);
        assert_eq!(rx.pop().map(|c| c.id), Some(3));
        assert_eq!(
            tx.free_slots(),
            6,
            "the next store of head covers the panicked batch"
        );
        drop(tx);
        drop(rx);
        assert_eq!(drops.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_panicking_drain_then_drop_drops_nothing_twice() {
        let drops = drops();
        let (mut tx, mut rx) = channel(4);
        for id in 0..4 {
            tx.try_push(counted(&drops, id)).unwrap();
        }
        let _ = tx.flush();
        let result = catch_unwind(AssertUnwindSafe(|| {
            rx.drain(4, |c| assert_ne!(c.id, 1, "closure fails on item 1"));
        }));
        assert!(result.is_err());
        drop(rx);
        drop(tx);
        assert_eq!(drops.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn zero_sized_items_are_counted() {
        let (mut tx, mut rx) = channel::<()>(2);
        assert!(tx.try_push(()).is_ok() && tx.try_push(()).is_ok());
        assert_eq!(tx.try_push(()), Err(()));
        let _ = tx.flush();
        assert_eq!(rx.drain(10, drop), 2);
    }

    #[test]
    fn endpoints_are_send() {
        fn send<S: Send>() {}
        send::<Producer<String>>();
        send::<Consumer<String>>();
    }

    #[test]
    fn a_million_items_cross_threads_in_order() {
        const N: u64 = 1_000_000;
        let (mut tx, mut rx) = channel::<u64>(64);
        let producer = std::thread::spawn(move || {
            let mut next = 0;
            while next < N {
                // Stage a batch of up to 16, then publish it with one store.
                let end = (next + 16).min(N);
                while next < end {
                    match tx.try_push(next) {
                        Ok(()) => next += 1,
                        Err(_) => break,
                    }
                }
                if tx.flush() == FlushOutcome::Nothing {
                    // Full: let the consumer run (2 cores, shared with builds).
                    std::thread::yield_now();
                }
            }
        });
        let mut expect = 0;
        while expect < N {
            let taken = rx.drain(32, |v| {
                assert_eq!(v, expect);
                expect += 1;
            });
            if taken == 0 {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert!(rx.is_empty());
    }
}

#[cfg(all(test, shardmq_loom))]
mod loom_tests {
    use super::*;
    use crate::mesh::sync::model;
    use loom::thread;

    /// Three items through a ring of two: the producer must wait for the consumer to free a
    /// slot, and every item arrives once, in order.
    #[test]
    fn three_items_through_capacity_two_in_order() {
        model("ring order", || {
            let (mut tx, mut rx) = channel::<u32>(2);
            let producer = thread::spawn(move || {
                tx.try_push(1).unwrap();
                tx.try_push(2).unwrap();
                let _ = tx.flush();
                // Full until the consumer takes one.
                while tx.try_push(3).is_err() {
                    thread::yield_now();
                }
                let _ = tx.flush();
            });
            let mut got = Vec::new();
            while got.len() < 3 {
                if rx.drain(2, |v| got.push(v)) == 0 {
                    thread::yield_now();
                }
            }
            assert_eq!(got, [1, 2, 3]);
            assert_eq!(rx.pop(), None);
            producer.join().unwrap();
        });
    }

    /// Both endpoints dropped at once on two threads, with a taken item, a published one and a
    /// staged (or refused) one: each is dropped exactly once, whichever endpoint goes last.
    #[test]
    fn concurrent_drops_free_each_item_once() {
        use loom::sync::atomic::AtomicUsize as Drops;

        #[derive(Debug)]
        struct Counted(Arc<Drops>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }

        model("ring drops", || {
            let drops = Arc::new(Drops::new(0));
            let (mut tx, mut rx) = channel::<Counted>(2);
            tx.try_push(Counted(drops.clone())).unwrap();
            let _ = tx.flush();
            let producer = thread::spawn({
                let drops = drops.clone();
                move || {
                    tx.try_push(Counted(drops.clone())).unwrap();
                    let _ = tx.flush();
                    // Staged if the consumer already took item 1, else refused and
                    // dropped here: counted either way.
                    let _ = tx.try_push(Counted(drops));
                    drop(tx);
                }
            });
            drop(rx.pop());
            drop(rx);
            producer.join().unwrap();
            assert_eq!(drops.load(Ordering::Relaxed), 3);
        });
    }
}
