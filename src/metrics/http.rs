//! The metrics HTTP listener: `GET /metrics` (Prometheus text format) and `GET /health`
//! (`200 ok` while the broker serves, `503` once it shuts down). One thread per listener
//! (`shardmq-metrics`), off the shards, one request per connection; a request is bounded in
//! size ([`MAX_REQUEST`]) and time ([`TIMEOUT`]) so a slow or hostile client cannot hold it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Largest request read, bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Read and write timeout of one request.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// What the listener serves.
pub trait Source: Send + Sync + 'static {
    /// The exposition text.
    fn metrics(&self) -> String;
    /// Whether the broker serves clients.
    fn healthy(&self) -> bool;
}

/// Serves `listener` on a thread of its own until the process ends.
pub fn spawn(listener: TcpListener, source: Arc<dyn Source>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("shardmq-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = answer(s, &*source) {
                            tracing::debug!("metrics request: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("metrics listener: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })
        .map(drop)
}

/// The response to a request head, or `None` while it is incomplete.
pub fn respond(request: &[u8], source: &dyn Source) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (status, kind, body) = match req.parse(request) {
        Ok(httparse::Status::Partial) => return None,
        Err(_) => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("/").split('?').next().unwrap_or("/");
            match (req.method, path) {
                (Some("GET"), "/metrics") => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    source.metrics(),
                ),
                (Some("GET"), "/health") if source.healthy() => {
                    ("200 OK", "text/plain", "ok\n".to_string())
                }
                (Some("GET"), "/health") => (
                    "503 Service Unavailable",
                    "text/plain",
                    "shutting down\n".to_string(),
                ),
                (Some("GET"), _) => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /health\n".into(),
                ),
                _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
            }
        }
    };
    Some(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn answer(mut s: TcpStream, source: &dyn Source) -> std::io::Result<()> {
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let response = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(r) = respond(&buf, source) {
            break r;
        }
        if buf.len() > MAX_REQUEST {
            break b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
        }
    };
    s.write_all(&response)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);
    impl Source for Fixed {
        fn metrics(&self) -> String {
            "shardmq_up 1\n".into()
        }
        fn healthy(&self) -> bool {
            self.0
        }
    }

    fn status(req: &str, healthy: bool) -> String {
        let r = respond(req.as_bytes(), &Fixed(healthy)).unwrap();
        String::from_utf8(r)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn routes_and_statuses() {
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&get("/metrics"), true), "HTTP/1.1 200 OK");
        assert_eq!(status(&get("/health"), true), "HTTP/1.1 200 OK");
        assert_eq!(
            status(&get("/health"), false),
            "HTTP/1.1 503 Service Unavailable"
        );
        assert_eq!(status(&get("/x"), true), "HTTP/1.1 404 Not Found");
        assert_eq!(
            status("POST /metrics HTTP/1.1\r\n\r\n", true),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(
            status("\x16\x03\x01garbage\r\n\r\n", true),
            "HTTP/1.1 400 Bad Request"
        );
        assert!(respond(b"GET /metrics HTTP/1.1\r\n", &Fixed(true)).is_none());
        let body = respond(get("/metrics").as_bytes(), &Fixed(true)).unwrap();
        assert!(
            String::from_utf8(body)
                .unwrap()
                .ends_with("\r\n\r\nshardmq_up 1\n")
        );
    }
}
