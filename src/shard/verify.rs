//! The authentication thread: checks CONNECT user names and passwords against the password
//! file, and asks the embedder's [`Hooks::authenticate`], off the shards, so that a storm of
//! connects with wrong passwords (each one a PBKDF2 computation) or a slow hook costs this
//! thread and not the shards' publishing.
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

use crate::auth::hooks::{AuthDecision, ClientInfo, Hooks};
use crate::auth::password::PasswordFile;
use crate::protocol::ReasonCode;

const PENDING: u8 = 0;
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 2;
const DEFAULT: u8 = 3;
const DENIED: u8 = 4;

/// One answer on its way back to a connection task.
#[derive(Debug, Default)]
struct Answer {
    state: AtomicU8,
    /// The reason of a [`Verdict::Denied`].
    reason: AtomicU8,
    waker: AtomicWaker,
}

enum Ask {
    /// Check a user name and password against the password file.
    Password(String),
    /// Ask the hooks about this client.
    Hook(ClientInfo),
}

struct Job {
    ask: Ask,
    password: Option<Vec<u8>>,
    answer: Arc<Answer>,
}

/// What the authentication thread answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password matches, or the hook allowed the client.
    Accepted,
    /// The password does not match (or the user is unknown).
    Refused,
    /// The hook refused the client with this reason.
    Denied(ReasonCode),
    /// The hook had no opinion.
    Default,
}

/// A handle to the authentication thread (shared by every shard).
pub struct Verifier {
    tx: SyncSender<Job>,
    /// The embedder's hooks, asked first.
    pub hooks: Option<Arc<dyn Hooks>>,
    /// The password file the thread checks against (replaced on SIGHUP).
    file: Arc<ArcSwap<PasswordFile>>,
    /// CONNECTs refused because the queue was full.
    pub busy: AtomicU64,
}

/// The queue was full: refuse the CONNECT as "server busy".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("users", &self.users())
            .field("hooks", &self.hooks.is_some())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Starts the thread over `file` (empty without a password file) and `hooks`, with a
    /// queue of `queue` jobs.
    pub fn start(
        file: PasswordFile,
        hooks: Option<Arc<dyn Hooks>>,
        queue: usize,
    ) -> Result<Verifier, String> {
        let (tx, rx) = sync_channel(queue.max(1));
        let file = Arc::new(ArcSwap::from_pointee(file));
        let (their_file, their_hooks) = (file.clone(), hooks.clone());
        std::thread::Builder::new()
            .name("shardmq-auth".into())
            .spawn(move || run(&their_file, their_hooks.as_deref(), &rx))
            .map_err(|e| format!("cannot start the authentication thread: {e}"))?;
        Ok(Verifier {
            tx,
            hooks,
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

    /// Checks `user` / `password` against the file: [`Verdict::Accepted`] or
    /// [`Verdict::Refused`].
    pub fn verify(&self, user: &str, password: &[u8]) -> Result<Verification, Busy> {
        self.ask(Ask::Password(user.to_string()), Some(password))
    }

    /// Asks the hooks whether `client` may connect.
    pub fn authenticate(
        &self,
        client: ClientInfo,
        password: Option<&[u8]>,
    ) -> Result<Verification, Busy> {
        self.ask(Ask::Hook(client), password)
    }

    fn ask(&self, ask: Ask, password: Option<&[u8]>) -> Result<Verification, Busy> {
        let answer = Arc::new(Answer::default());
        let job = Job {
            ask,
            password: password.map(<[u8]>::to_vec),
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
    type Output = Verdict;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Verdict> {
        let a = &self.answer;
        if a.state.load(Ordering::Acquire) == PENDING {
            a.waker.register(cx.waker());
            // Registered before the second look: an answer set in between is not missed.
            if a.state.load(Ordering::Acquire) == PENDING {
                return Poll::Pending;
            }
        }
        Poll::Ready(match a.state.load(Ordering::Acquire) {
            ACCEPTED => Verdict::Accepted,
            DENIED => Verdict::Denied(ReasonCode(a.reason.load(Ordering::Acquire))),
            DEFAULT => Verdict::Default,
            _ => Verdict::Refused,
        })
    }
}

fn run(file: &ArcSwap<PasswordFile>, hooks: Option<&dyn Hooks>, rx: &Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let password = job.password.as_deref();
        let state = match (&job.ask, hooks) {
            (Ask::Password(user), _) => {
                if file.load().verify(user, password.unwrap_or_default()) {
                    ACCEPTED
                } else {
                    REFUSED
                }
            }
            (Ask::Hook(client), Some(h)) => match h.authenticate(client, password) {
                AuthDecision::Allow => ACCEPTED,
                AuthDecision::Deny(reason) => {
                    // A success code would let the client in: refuse with 0x87 instead.
                    let reason = if reason.is_success() {
                        ReasonCode::NOT_AUTHORIZED
                    } else {
                        reason
                    };
                    job.answer.reason.store(reason.0, Ordering::Release);
                    DENIED
                }
                AuthDecision::Default => DEFAULT,
            },
            (Ask::Hook(_), None) => DEFAULT,
        };
        job.answer.state.store(state, Ordering::Release);
        job.answer.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::PasswordHash;

    fn block_on(v: Verification) -> bool {
        verdict(v) == Verdict::Accepted
    }

    fn verdict(v: Verification) -> Verdict {
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
        let v = Verifier::start(f, None, 4).unwrap();
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
        let v = Verifier::start(f, None, 1).unwrap();
        // The thread is busy with the first for a while; the queue holds one more.
        let jobs: Vec<_> = (0..8).map(|_| v.verify("u", b"pw")).collect();
        assert!(jobs.iter().any(|j| j.is_err()));
        assert!(v.busy.load(Ordering::Relaxed) > 0);
    }

    struct OnlyEven;
    impl Hooks for OnlyEven {
        fn authenticate(&self, c: &ClientInfo, _: Option<&[u8]>) -> AuthDecision {
            match c.client_id.len() % 3 {
                0 => AuthDecision::Allow,
                1 => AuthDecision::Deny(ReasonCode::BANNED),
                _ => AuthDecision::Default,
            }
        }
    }

    #[test]
    fn the_hook_answers_allow_deny_or_no_opinion() {
        let v = Verifier::start(PasswordFile::default(), Some(Arc::new(OnlyEven)), 4).unwrap();
        let ask = |id: &str| {
            let c = ClientInfo {
                client_id: id.into(),
                username: None,
                peer: None,
            };
            verdict(v.authenticate(c, None).unwrap())
        };
        assert_eq!(ask("abc"), Verdict::Accepted);
        assert_eq!(ask("a"), Verdict::Denied(ReasonCode::BANNED));
        assert_eq!(ask("ab"), Verdict::Default);
    }
}
