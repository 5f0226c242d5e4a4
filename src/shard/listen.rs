//! Binding the per-shard SO_REUSEPORT listeners, refusing a port another process holds.
//!
//! Runs on the main thread before shards start, so a bad address or a busy port is one clear
//! error and exit, never a half-started broker. For each configured address:
//!
//! 1. Probe: bind a plain socket (SO_REUSEADDR only, no SO_REUSEPORT). If that fails with
//!    "address in use", another process is listening there — a second broker would otherwise
//!    silently share the port through SO_REUSEPORT — so refuse to start.
//! 2. Bind one listener per shard with SO_REUSEPORT, so the kernel spreads new connections
//!    across shards. Port 0 is resolved by the first socket and reused by the others.
//!
//! The resulting std listeners are handed to the shard threads, which adopt them into their
//! own runtime.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Why a listener could not be bound, phrased for the operator.
#[derive(Debug)]
pub struct ListenError(pub String);

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ListenError {}

fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// How long a busy port is retried before it counts as another process's: a broker that
/// just exited (a restart) may hold its listening sockets a moment longer, while the kernel
/// tears down its io_uring instance (pending accepts keep them open).
const BUSY_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Fails when another process already listens on `addr` (after [`BUSY_GRACE`]).
fn probe(addr: SocketAddr) -> Result<(), ListenError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + BUSY_GRACE;
    loop {
        let socket = socket_for(addr)
            .map_err(|e| ListenError(format!("cannot create a socket for {addr}: {e}")))?;
        match socket.bind(&addr.into()).and_then(|()| socket.listen(1)) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() >= deadline {
                    return Err(ListenError(format!(
                        "cannot listen on {addr}: the port is already in use by another process; stop it or choose another address with --listen"
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(ListenError(format!("cannot listen on {addr}: {e}"))),
        }
    }
}

/// Binds `shards` SO_REUSEPORT listeners on `addr` (after probing for a foreign listener).
pub fn bind_shared(
    addr: SocketAddr,
    shards: usize,
    backlog: i32,
) -> Result<Vec<TcpListener>, ListenError> {
    probe(addr)?;
    let mut bound = addr;
    let mut out = Vec::with_capacity(shards);
    for _ in 0..shards {
        let l = (|| -> io::Result<TcpListener> {
            let socket = socket_for(bound)?;
            socket.set_reuse_port(true)?;
            socket.set_tcp_nodelay(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&bound.into())?;
            socket.listen(backlog)?;
            Ok(socket.into())
        })()
        .map_err(|e| ListenError(format!("cannot listen on {addr}: {e}")))?;
        if bound.port() == 0 {
            bound = l
                .local_addr()
                .map_err(|e| ListenError(format!("cannot listen on {addr}: {e}")))?;
        }
        out.push(l);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_all_shards() {
        let ls = bind_shared("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    #[test]
    fn a_foreign_listener_is_refused() {
        let foreign = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = foreign.local_addr().unwrap();
        let e = bind_shared(addr, 2, 16).unwrap_err();
        assert!(e.0.contains("already in use by another process"), "{e}");
        assert!(!e.0.contains('\n'));
    }

    #[test]
    fn a_foreign_reuseport_listener_is_refused_too() {
        // Another broker that itself uses SO_REUSEPORT must not be silently joined.
        let other = bind_shared("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
        let addr = other[0].local_addr().unwrap();
        assert!(bind_shared(addr, 1, 16).is_err());
    }
}
