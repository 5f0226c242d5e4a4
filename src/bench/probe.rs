//! What the bench reads off processes: the broker's CPU time and memory (from `/proc`, given
//! its pid) and the bench's own CPU time, so a report shows when the client was the limit.
//!
//! Runs on the bench's coordinating thread, once a second and at the measurement edges.

use std::time::Duration;

/// CPU time and memory of a process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// User + system CPU time over all its threads.
    pub cpu: Duration,
    /// Resident set size (bytes).
    pub rss: u64,
    /// Peak resident set size since the process started (bytes).
    pub hwm: u64,
}

/// Reads `pid`'s CPU time and memory; `None` if the process is gone or `/proc` is unreadable.
pub fn broker(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    Some(Sample {
        cpu: cpu_time(pid)?,
        rss: kib("VmRSS:")?,
        hwm: kib("VmHWM:").unwrap_or(0),
    })
}

/// Sum of the run time of all of `pid`'s threads: nanosecond `schedstat` where the kernel has
/// it, else clock-tick `stat` fields 14 and 15 (utime, stime).
fn cpu_time(pid: u32) -> Option<Duration> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut ns = 0u64;
        let mut any = false;
        for t in tasks.flatten() {
            let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
                continue;
            };
            if let Some(v) = s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
            {
                ns += v;
                any = true;
            }
        }
        if any {
            return Some(Duration::from_nanos(ns));
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// This process's user + system CPU time so far.
pub fn own_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage; RUSAGE_SELF needs nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Raises this process's open-file soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    crate::shard::fds::raise().map_or(0, |r| r.now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = broker(std::process::id()).expect("own /proc entry");
        assert!(s.rss > 0 && s.hwm >= s.rss / 2);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        assert!(broker(std::process::id()).unwrap().cpu > Duration::ZERO);
        assert!(own_cpu() > Duration::ZERO);
        assert_eq!(broker(u32::MAX), None);
        assert!(raise_nofile() >= 64);
    }
}
