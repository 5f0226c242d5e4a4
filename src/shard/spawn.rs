//! Starting shard threads: one thread per shard, pinned to its core *before* its runtime is
//! built (so the io_uring and every allocation the runtime makes are local to that core), with
//! the io driver chosen explicitly.
//!
//! Driver choice: monoio's fusion driver probes io_uring with a tiny ring but can still fail
//! when the real ring is created (memlock limits, ENOMEM) and then errors instead of falling
//! back. So `auto` builds an `IoUringDriver` runtime itself and, if that fails, an epoll
//! (`LegacyDriver`) runtime, and reports which one runs; `uring` fails instead of falling back.
//!
//! Runs on the main thread; everything after the runtime is built runs on the shard thread.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use crate::config::IoDriver;

/// Which driver a shard's runtime actually runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveDriver {
    /// io_uring.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl std::fmt::Display for ActiveDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActiveDriver::Uring => "io_uring",
            ActiveDriver::Epoll => "epoll",
        })
    }
}

/// io_uring submission-queue entries per shard.
const URING_ENTRIES: u32 = 1024;

/// Runs `make_future()` to completion on a fresh monoio runtime using `driver`.
///
/// `on_start` is told which driver runs (and, for `auto`, why io_uring was not used) before
/// the future starts. Must be called on the thread that will run the shard.
pub fn run_on_runtime<F, Fut>(
    driver: IoDriver,
    on_start: impl FnOnce(ActiveDriver, Option<io::Error>),
    make_future: F,
) -> io::Result<Fut::Output>
where
    F: FnOnce(ActiveDriver) -> Fut,
    Fut: Future,
{
    // Cooperative task running: completions are handled when the shard next enters the
    // kernel, not by interrupting it (Linux 5.19+); older kernels get a plain ring.
    let uring = || {
        let mut coop = io_uring::IoUring::builder();
        coop.setup_coop_taskrun();
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(URING_ENTRIES)
            .uring_builder(coop)
            .enable_timer()
            .build()
            .or_else(|_| {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(URING_ENTRIES)
                    .enable_timer()
                    .build()
            })
    };
    let epoll = || {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
    };
    match driver {
        IoDriver::Uring => {
            let mut rt = uring()?;
            on_start(ActiveDriver::Uring, None);
            Ok(rt.block_on(make_future(ActiveDriver::Uring)))
        }
        IoDriver::Epoll => {
            let mut rt = epoll()?;
            on_start(ActiveDriver::Epoll, None);
            Ok(rt.block_on(make_future(ActiveDriver::Epoll)))
        }
        IoDriver::Auto => match uring() {
            Ok(mut rt) => {
                on_start(ActiveDriver::Uring, None);
                Ok(rt.block_on(make_future(ActiveDriver::Uring)))
            }
            Err(why) => {
                let mut rt = epoll()?;
                on_start(ActiveDriver::Epoll, Some(why));
                Ok(rt.block_on(make_future(ActiveDriver::Epoll)))
            }
        },
    }
}

/// Starts a named thread for shard `index`, pinned to `core` when `pin` is set, that runs
/// `body` on it. Pinning failure is reported through the returned flag, not fatal.
pub fn spawn_pinned<T: Send + 'static>(
    index: usize,
    core: Option<usize>,
    body: impl FnOnce(bool) -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(format!("shard-{index}"))
        .spawn(move || {
            let pinned =
                core.is_some_and(|id| core_affinity::set_for_current(core_affinity::CoreId { id }));
            body(pinned)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_driver_choice_runs_a_future() {
        for choice in [IoDriver::Auto, IoDriver::Epoll, IoDriver::Uring] {
            let mut seen = None;
            let out = run_on_runtime(
                choice,
                |d, _| seen = Some(d),
                |d| async move {
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                    d
                },
            );
            match (choice, out) {
                (IoDriver::Epoll, Ok(d)) => assert_eq!(d, ActiveDriver::Epoll),
                (IoDriver::Uring, Ok(d)) | (IoDriver::Auto, Ok(d)) => assert_eq!(Some(d), seen),
                // A kernel without io_uring: only the explicit choice may fail.
                (IoDriver::Uring, Err(_)) => {}
                (c, Err(e)) => panic!("{c:?} failed: {e}"),
            }
        }
    }

    #[test]
    fn pinned_thread_runs_and_reports() {
        let h = spawn_pinned(0, Some(0), |pinned| {
            (std::thread::current().name().map(String::from), pinned)
        })
        .unwrap();
        let (name, pinned) = h.join().unwrap();
        assert_eq!(name.as_deref(), Some("shard-0"));
        assert!(pinned, "core 0 exists on every machine");
        let h = spawn_pinned(1, None, |pinned| pinned).unwrap();
        assert!(!h.join().unwrap());
    }
}
