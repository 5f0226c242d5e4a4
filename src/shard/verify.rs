//! The authentication thread: checks CONNECT user names and passwords against the password
//! file, off the shards, so that a storm of connects with wrong passwords (each one a PBKDF2
//! computation) costs this thread and not the shards' publishing.
//!
//! ```text
//!  shard (connection task)                 shardmq-auth thread
//!   verify(user, password) ── try_send ──►  PasswordFile::verify (PBKDF2-SHA512)
//!   .await  ◄──────── state + wake ───────  answer
//! ```
//!
//! The job channel is bounded (`limits.auth_queue`): a CONNECT that finds it full is refused
//! at once as "server busy" (counted), instead of queueing without end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use atomic_waker::AtomicWaker;

use crate::auth::password::PasswordFile;

const PENDING: u8 = 0;
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 2;

/// One answer on its way back to a connection task.
#[derive(Debug, Default)]
struct Answer {
    state: AtomicU8,
    waker: AtomicWaker,
}

struct Job {
    user: String,
    password: Vec<u8>,
    answer: Arc<Answer>,
}

/// A handle to the authentication thread (shared by every shard).
#[derive(Debug)]
pub struct Verifier {
    tx: SyncSender<Job>,
    /// The password file the thread checks against (replaced on SIGHUP).
    file: Arc<ArcSwap<PasswordFile>>,
    /// CONNECTs refused because the queue was full.
    pub busy: AtomicU64,
}

/// The queue was full: refuse the CONNECT as "server busy".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("user", &self.user).finish()
    }
}

impl Verifier {
    /// Starts the thread over `file`, with a queue of `queue` jobs.
    pub fn start(file: PasswordFile, queue: usize) -> Result<Verifier, String> {
        let (tx, rx) = sync_channel(queue.max(1));
        let file = Arc::new(ArcSwap::from_pointee(file));
        let theirs = file.clone();
        std::thread::Builder::new()
            .name("shardmq-auth".into())
            .spawn(move || run(&theirs, &rx))
            .map_err(|e| format!("cannot start the authentication thread: {e}"))?;
        Ok(Verifier {
            tx,
            file,
            busy: AtomicU64::new(0),
        })
    }

    /// Users in the password file.
    pub fn users(&self) -> usize {
        self.file.load().len()
    }

    /// Checks from now on against `file` (a reload); connected clients stay connected.
    pub fn replace(&self, file: PasswordFile) {
        self.file.store(Arc::new(file));
    }

    /// Checks `user` / `password`; resolves to whether they match the file.
    pub fn verify(&self, user: &str, password: &[u8]) -> Result<Verification, Busy> {
        let answer = Arc::new(Answer::default());
        let job = Job {
            user: user.to_string(),
            password: password.to_vec(),
            answer: answer.clone(),
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(Verification { answer }),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.busy.fetch_add(1, Ordering::Relaxed);
                Err(Busy)
            }
        }
    }
}

/// The pending result of [`Verifier::verify`].
#[derive(Debug)]
pub struct Verification {
    answer: Arc<Answer>,
}

impl Future for Verification {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let a = &self.answer;
        if a.state.load(Ordering::Acquire) == PENDING {
            a.waker.register(cx.waker());
            // Registered before the second look: an answer set in between is not missed.
            if a.state.load(Ordering::Acquire) == PENDING {
                return Poll::Pending;
            }
        }
        Poll::Ready(a.state.load(Ordering::Acquire) == ACCEPTED)
    }
}

fn run(file: &ArcSwap<PasswordFile>, rx: &Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let ok = file.load().verify(&job.user, &job.password);
        let state = if ok { ACCEPTED } else { REFUSED };
        job.answer.state.store(state, Ordering::Release);
        job.answer.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::PasswordHash;

    fn block_on(v: Verification) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut v = std::pin::pin!(v);
        loop {
            if let Poll::Ready(ok) = v.as_mut().poll(&mut cx) {
                return ok;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn answers_come_back_from_the_thread() {
        let mut f = PasswordFile::default();
        f.set("u", PasswordHash::new("pw", 10).unwrap()).unwrap();
        let v = Verifier::start(f, 4).unwrap();
        assert!(block_on(v.verify("u", b"pw").unwrap()));
        assert!(!block_on(v.verify("u", b"no").unwrap()));
        assert!(!block_on(v.verify("nobody", b"pw").unwrap()));
        let mut g = PasswordFile::default();
        g.set("nobody", PasswordHash::new("pw", 10).unwrap())
            .unwrap();
        v.replace(g);
        assert!(block_on(v.verify("nobody", b"pw").unwrap()), "reloaded");
        assert!(!block_on(v.verify("u", b"pw").unwrap()));
    }

    #[test]
    fn a_full_queue_says_busy() {
        let mut f = PasswordFile::default();
        f.set("u", PasswordHash::new("pw", 200_000).unwrap())
            .unwrap();
        let v = Verifier::start(f, 1).unwrap();
        // The thread is busy with the first for a while; the queue holds one more.
        let jobs: Vec<_> = (0..8).map(|_| v.verify("u", b"pw")).collect();
        assert!(jobs.iter().any(|j| j.is_err()));
        assert!(v.busy.load(Ordering::Relaxed) > 0);
    }
}
