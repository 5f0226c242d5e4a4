//! The process's open-file limit: raised to the hard limit at start-up (on the main thread,
//! before any shard runs), read back for log lines when `accept` runs out of descriptors.

/// The soft and hard `RLIMIT_NOFILE`, or `None` if they cannot be read.
fn get() -> Option<libc::rlimit> {
    // SAFETY: an all-zero rlimit is a valid value for getrlimit to overwrite.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid, writable rlimit.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r)
}

/// This process's open-file soft limit now (0 if unknown).
pub fn soft_limit() -> u64 {
    get().map_or(0, |r| r.rlim_cur)
}

/// What [`raise`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit found.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising failed).
    pub now: u64,
    /// The hard limit (only root can raise it).
    pub hard: u64,
}

/// Raises the open-file soft limit to the hard limit (a broker holds one descriptor per
/// connection; the usual soft default of 1024 would cap it far below what it can serve).
pub fn raise() -> Option<Raised> {
    let r = get()?;
    let mut raised = Raised {
        before: r.rlim_cur,
        now: r.rlim_cur,
        hard: r.rlim_max,
    };
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit that only raises the soft limit to the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            raised.now = want.rlim_cur;
        }
    }
    Some(raised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let r = raise().expect("RLIMIT_NOFILE is readable");
        assert!(r.before <= r.now && r.now <= r.hard);
        assert_eq!(soft_limit(), r.now);
    }
}
