//! The synchronisation primitives the mesh is built on, picked by `cfg`.
//!
//! Owns nothing at run time: it only re-exports. Normal builds get `std`'s atomics, `Arc` and
//! an [`UnsafeCell`] wrapper; builds with `RUSTFLAGS="--cfg shardmq_loom"` get loom's model-checked
//! versions of the same names, so [`super::ring`] and [`super::doorbell`] are written once and
//! checked by loom unchanged (see [`super`] for the command). Both sides of every ring (the
//! producer shard and the consumer shard) use these types.
//!
//! `std`'s `UnsafeCell` hands out a raw pointer with `get()`; loom's must see every access to
//! track it, so it offers `with`/`with_mut` closures instead. The wrapper below gives the `std`
//! cell the same closure API, and the ring uses only that.

#[cfg(shardmq_loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(shardmq_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(shardmq_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

#[cfg(not(shardmq_loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(shardmq_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

/// `std::cell::UnsafeCell` with loom's closure-based access API.
#[cfg(not(shardmq_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(shardmq_loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a raw pointer to the contents. Dereferencing it is the caller's `unsafe`
    /// business, exactly as with `std::cell::UnsafeCell::get`.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Runs `f` under loom (`loom::model`, which reads `LOOM_MAX_PREEMPTIONS` and friends from the
/// environment) and prints how many interleavings it explored and how long that took.
#[cfg(all(test, shardmq_loom))]
pub(crate) fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize as Count, Ordering::Relaxed};
    let runs = std::sync::Arc::new(Count::new(0));
    let counter = runs.clone();
    let start = std::time::Instant::now();
    loom::model(move || {
        counter.fetch_add(1, Relaxed);
        f();
    });
    eprintln!(
        "loom {name}: {} interleavings in {:.2?}",
        runs.load(Relaxed),
        start.elapsed()
    );
}
