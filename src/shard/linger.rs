//! The last step of closing a connection: wait, boundedly, until the peer has acknowledged
//! everything sent, discarding whatever it still sends, and only then send FIN.
//!
//! A connection closed from our side has had its read side shut down (that is how its
//! pending read ends, see [`conn`](super::conn)). Once the write side is shut down too, the
//! socket is in FIN-WAIT with receiving shut, and Linux answers any data that still arrives
//! with a reset (RFC 1122 §4.2.2.13; `TCPAbortOnData`), throwing away its send queue; so does
//! closing a socket with unread input. A client taken over while it was behind, and still
//! writing PUBACKs or PINGREQs, would then lose the DISCONNECT 0x8E queued behind its backlog
//! [MQTT-3.1.4-3] and see a reset instead.
//!
//! So before the write side is shut, the writer keeps the socket open until its send queue is
//! empty (`SIOCOUTQ`: unsent plus unacknowledged bytes), draining input meanwhile, for at most
//! [`CLOSE_LINGER`]. When the FIN then goes out, the peer's kernel has every byte before it;
//! what the peer sends after that may reset the connection, but no longer loses anything. A
//! peer that has gone (reset) or reads nothing costs one fd for [`CLOSE_LINGER`] at most.
//!
//! Runs on the connection's shard, in its writer task.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// How long a connection being closed may wait for its peer to take what was sent.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How often a lingering connection looks again.
const POLL: Duration = Duration::from_millis(5);
/// `SIOCOUTQ` (linux/sockios.h, the same number as `TIOCOUTQ`): bytes in a socket's send
/// queue, unsent or unacknowledged.
const SIOCOUTQ: libc::Ioctl = 0x5411;

/// Lingers on `fd` (a stream socket) until everything sent is acknowledged, the peer is
/// gone, or [`CLOSE_LINGER`] has passed. The caller keeps the socket open meanwhile and shuts
/// its write side after.
pub async fn linger(fd: RawFd) {
    let start = Instant::now();
    loop {
        let open = drain(fd);
        if !open || unacknowledged(fd) == 0 || start.elapsed() >= CLOSE_LINGER {
            return;
        }
        monoio::time::sleep(POLL).await;
    }
}

/// Reads and discards what is queued on `fd` without blocking; false if the socket failed
/// (the peer reset it: nothing more will be acknowledged).
fn drain(fd: RawFd) -> bool {
    let mut scratch = [0u8; 4096];
    loop {
        // SAFETY: the caller holds the socket open, so `fd` is this connection's socket;
        // `scratch` is a live, writable buffer of the length passed.
        let n = unsafe {
            libc::recv(
                fd,
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            n if n > 0 => continue,
            // The peer's FIN, or (read side shut down) an empty queue: sending goes on.
            0 => return true,
            _ => {
                let e = std::io::Error::last_os_error();
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                );
            }
        }
    }
}

/// Bytes sent on `fd` and not yet acknowledged (0 when unknown).
fn unacknowledged(fd: RawFd) -> libc::c_int {
    let mut queued: libc::c_int = 0;
    // SAFETY: `fd` is an open socket (see `drain`); SIOCOUTQ writes one c_int to the pointer,
    // which points at a live local.
    let r = unsafe { libc::ioctl(fd, SIOCOUTQ, &mut queued) };
    if r < 0 { 0 } else { queued }
}
