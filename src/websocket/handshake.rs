//! The opening handshake (RFC 6455 §4): one HTTP/1.1 Upgrade request in, one HTTP response out.
//!
//! Owns the server's side of the handshake for MQTT over WebSocket: parsing the request with
//! `httparse`, checking every rule of RFC 6455 §4.1/§4.2.1 that a server must check, choosing
//! the MQTT subprotocol (`mqtt`, else `mqttv3.1`), and building either the `101 Switching
//! Protocols` response with its `Sec-WebSocket-Accept` or a complete HTTP error response.
//!
//! [`handshake`] is pure: the connection keeps every byte read so far and calls it again after
//! each read until it stops answering [`Handshake::Incomplete`]. No socket, no clock; it runs on
//! the shard thread that owns the connection.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The most header fields a handshake request may carry; more is refused with 431.
pub const MAX_HEADERS: usize = 32;

/// The GUID that RFC 6455 §1.3 appends to the client's key before hashing it.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A WebSocket subprotocol this broker speaks (RFC 6455 §1.9, MQTT 5.0 §6.0 / 3.1.1 §6.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subprotocol {
    /// `mqtt`: the name MQTT 3.1.1 and 5.0 register.
    Mqtt,
    /// `mqttv3.1`: the name used by MQTT 3.1 clients.
    MqttV31,
}

impl Subprotocol {
    /// The subprotocol's name as it appears in `Sec-WebSocket-Protocol`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Subprotocol::Mqtt => "mqtt",
            Subprotocol::MqttV31 => "mqttv3.1",
        }
    }
}

/// What to do with the bytes read so far on a connection that has not finished its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The request is not complete yet: read more and call again with all bytes so far.
    Incomplete,
    /// Switch protocols: write `response` (the whole HTTP 101 response), then speak WebSocket.
    /// `consumed` = length of the HTTP request in the input; bytes after it are already
    /// WebSocket frames.
    Accept {
        /// The complete `101 Switching Protocols` response.
        response: Vec<u8>,
        /// How many input bytes the HTTP request took.
        consumed: usize,
        /// The subprotocol chosen, `None` if the client offered none.
        protocol: Option<Subprotocol>,
    },
    /// Refuse: write `response` (a complete HTTP error response with `Connection: close` and
    /// `Content-Length`), then close. `why` is a one-line log reason.
    Reject {
        /// The complete HTTP error response.
        response: Vec<u8>,
        /// Why the request was refused, naming the rule it broke.
        why: &'static str,
    },
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2 item 5.4):
/// base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
pub fn accept_key(key: &str) -> String {
    accept_key_bytes(key.as_bytes())
}

fn accept_key_bytes(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    BASE64.encode(sha.finalize())
}

/// Answers the handshake request at the front of `input`, which holds every byte the client
/// has sent so far.
///
/// `path` is the endpoint's request path (`/mqtt`, say); a query string on the request is
/// ignored. A request still incomplete after `max_request` bytes, or complete but longer, is
/// refused with 431, so the caller never buffers more than `max_request` bytes for it.
pub fn handshake(input: &[u8], path: &str, max_request: usize) -> Handshake {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(input) {
        Ok(httparse::Status::Complete(n)) if n <= max_request => n,
        Ok(httparse::Status::Partial) if input.len() <= max_request => {
            return Handshake::Incomplete;
        }
        Ok(_) => return reject(431, "RFC 6585 §5: handshake request larger than the limit"),
        Err(httparse::Error::TooManyHeaders) => {
            return reject(431, "RFC 6585 §5: more than 32 header fields");
        }
        Err(_) => return reject(400, "RFC 6455 §4.1: malformed HTTP request"),
    };
    match check(&request, path) {
        Ok((key, protocol)) => Handshake::Accept {
            response: switching_protocols(key, protocol),
            consumed,
            protocol,
        },
        Err((status, why)) => reject(status, why),
    }
}

/// A refusal: the HTTP status and the log reason.
type Refusal = (u16, &'static str);

/// Checks a complete request (RFC 6455 §4.2.1); returns the client's key and the subprotocol.
fn check<'a>(
    request: &httparse::Request<'_, 'a>,
    path: &str,
) -> Result<(&'a [u8], Option<Subprotocol>), Refusal> {
    if request.method != Some("GET") {
        return Err((405, "RFC 6455 §4.1: the opening handshake must be a GET"));
    }
    if request.version != Some(1) {
        return Err((400, "RFC 6455 §4.1: the opening handshake must be HTTP/1.1"));
    }
    let target = request.path.unwrap_or_default();
    let resource = target
        .split_once('?')
        .map_or(target, |(resource, _)| resource);
    if resource != path {
        return Err((404, "RFC 6455 §4.2.1: no WebSocket endpoint at this path"));
    }
    let fields = || request.headers.iter();
    let named = |name: &'static str| {
        fields()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    match named("host").count() {
        0 => return Err((400, "RFC 6455 §4.2.1: no Host header field")),
        1 => {}
        _ => return Err((400, "RFC 7230 §5.4: more than one Host header field")),
    }
    if !named("upgrade").any(|v| has_token(v, b"websocket")) {
        return Err((400, "RFC 6455 §4.2.1: Upgrade does not name websocket"));
    }
    if !named("connection").any(|v| has_token(v, b"upgrade")) {
        return Err((400, "RFC 6455 §4.2.1: Connection does not include Upgrade"));
    }
    let mut versions = named("sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.trim_ascii() == b"13" => {}
        _ => return Err((426, "RFC 6455 §4.2.1: Sec-WebSocket-Version is not 13")),
    }
    let mut keys = named("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.trim_ascii(),
        _ => return Err((400, "RFC 6455 §4.2.1: not exactly one Sec-WebSocket-Key")),
    };
    if !BASE64.decode(key).is_ok_and(|nonce| nonce.len() == 16) {
        return Err((
            400,
            "RFC 6455 §4.2.1: Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    let offered = named("sec-websocket-protocol").next().is_some();
    let mut protocol = None;
    for token in named("sec-websocket-protocol").flat_map(tokens) {
        match token {
            b"mqtt" => protocol = Some(Subprotocol::Mqtt),
            b"mqttv3.1" if protocol.is_none() => protocol = Some(Subprotocol::MqttV31),
            _ => {}
        }
    }
    if offered && protocol.is_none() {
        return Err((
            400,
            "no supported subprotocol (RFC 6455 §4.2.2, MQTT-6.0.0-3)",
        ));
    }
    Ok((key, protocol))
}

/// The elements of a comma separated header value (RFC 7230 §7), without surrounding
/// whitespace; empty elements are skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a comma separated header value holds `token`, compared case-insensitively.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// The `101 Switching Protocols` response (RFC 6455 §4.2.2 item 5).
fn switching_protocols(key: &[u8], protocol: Option<Subprotocol>) -> Vec<u8> {
    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    response.extend_from_slice(b"Sec-WebSocket-Accept: ");
    response.extend_from_slice(accept_key_bytes(key).as_bytes());
    response.extend_from_slice(b"\r\n");
    if let Some(protocol) = protocol {
        response.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        response.extend_from_slice(protocol.as_str().as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
    response
}

/// A complete error response that closes the connection; the body is `why`.
fn reject(status: u16, why: &'static str) -> Handshake {
    let (phrase, extra): (&str, &str) = match status {
        404 => ("Not Found", ""),
        405 => ("Method Not Allowed", "Allow: GET\r\n"),
        426 => ("Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
        431 => ("Request Header Fields Too Large", ""),
        _ => ("Bad Request", ""),
    };
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 {status} {phrase}\r\n{extra}Connection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Handshake::Reject {
        response: response.into_bytes(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// A good request with the given header lines in place of the defaults.
    fn request(request_line: &str, fields: &[&str]) -> Vec<u8> {
        let mut r = format!("{request_line}\r\n");
        for f in fields {
            r.push_str(f);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    const GOOD: &[&str] = &[
        "Host: broker.example:8080",
        "Upgrade: WebSocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: mqtt",
    ];

    /// GOOD with the field named `name` replaced by `with` (or dropped if `with` is None).
    fn good_but(name: &str, with: Option<&str>) -> Vec<u8> {
        let mut fields: Vec<&str> = GOOD
            .iter()
            .copied()
            .filter(|f| !f.starts_with(name))
            .collect();
        fields.extend(with);
        request("GET /mqtt HTTP/1.1", &fields)
    }

    fn status_of(h: &Handshake) -> u16 {
        match h {
            Handshake::Reject { response, .. } => {
                let text = std::str::from_utf8(response).unwrap();
                text[9..12].parse().unwrap()
            }
            Handshake::Accept { .. } => 101,
            Handshake::Incomplete => 0,
        }
    }

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn good_request_is_accepted() {
        let req = request("GET /mqtt HTTP/1.1", GOOD);
        let expected = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            Sec-WebSocket-Protocol: mqtt\r\n\r\n";
        assert_eq!(
            handshake(&req, "/mqtt", 4096),
            Handshake::Accept {
                response: expected.to_vec(),
                consumed: req.len(),
                protocol: Some(Subprotocol::Mqtt),
            }
        );
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let req = request(
            "GET /mqtt?clientId=a&x=1 HTTP/1.1",
            &[
                "host: h",
                "UPGRADE: websocket",
                "connection: UPGRADE",
                "SEC-WEBSOCKET-KEY:   dGhlIHNhbXBsZSBub25jZQ==  ",
                "sec-websocket-version: 13",
            ],
        );
        let Handshake::Accept {
            response, protocol, ..
        } = handshake(&req, "/mqtt", 4096)
        else {
            panic!("refused");
        };
        assert_eq!(protocol, None);
        let text = String::from_utf8(response).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!text.contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn subprotocol_choice() {
        let cases: &[(&[&str], Option<Subprotocol>)] = &[
            (&["Sec-WebSocket-Protocol: mqtt"], Some(Subprotocol::Mqtt)),
            (
                &["Sec-WebSocket-Protocol: mqttv3.1"],
                Some(Subprotocol::MqttV31),
            ),
            (
                &["Sec-WebSocket-Protocol: mqttv3.1, mqtt"],
                Some(Subprotocol::Mqtt),
            ),
            (
                &[
                    "Sec-WebSocket-Protocol: chat, mqttv3.1",
                    "Sec-WebSocket-Protocol: wamp,mqtt",
                ],
                Some(Subprotocol::Mqtt),
            ),
            (
                &[
                    "Sec-WebSocket-Protocol: chat",
                    "Sec-WebSocket-Protocol: mqttv3.1",
                ],
                Some(Subprotocol::MqttV31),
            ),
            (&[], None),
        ];
        for (protocols, expected) in cases {
            let mut fields: Vec<&str> = GOOD[..5].to_vec();
            fields.extend_from_slice(protocols);
            let h = handshake(&request("GET /mqtt HTTP/1.1", &fields), "/mqtt", 4096);
            let Handshake::Accept {
                response, protocol, ..
            } = h
            else {
                panic!("{protocols:?} refused: {h:?}");
            };
            assert_eq!(protocol, *expected, "{protocols:?}");
            let text = String::from_utf8(response).unwrap();
            match expected {
                Some(p) => assert!(
                    text.contains(&format!("\r\nSec-WebSocket-Protocol: {}\r\n", p.as_str()))
                ),
                None => assert!(!text.contains("Sec-WebSocket-Protocol")),
            }
        }
    }

    #[test]
    fn refusals() {
        let too_many: Vec<String> = (0..MAX_HEADERS).map(|i| format!("X-{i}: y")).collect();
        let mut too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        too_many.extend_from_slice(GOOD);
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("POST", request("POST /mqtt HTTP/1.1", GOOD), 405),
            ("HTTP/1.0", request("GET /mqtt HTTP/1.0", GOOD), 400),
            ("other path", request("GET /other HTTP/1.1", GOOD), 404),
            ("trailing slash", request("GET /mqtt/ HTTP/1.1", GOOD), 404),
            ("no Host", good_but("Host", None), 400),
            (
                "two Host",
                good_but("Host", Some("Host: a\r\nHost: b")),
                400,
            ),
            ("no Upgrade", good_but("Upgrade", None), 400),
            (
                "Upgrade h2c",
                good_but("Upgrade", Some("Upgrade: h2c")),
                400,
            ),
            ("no Connection", good_but("Connection", None), 400),
            (
                "Connection keep-alive",
                good_but("Connection", Some("Connection: keep-alive")),
                400,
            ),
            (
                "Connection upgraded",
                good_but("Connection", Some("Connection: upgraded")),
                400,
            ),
            ("no version", good_but("Sec-WebSocket-Version", None), 426),
            (
                "version 8",
                good_but("Sec-WebSocket-Version", Some("Sec-WebSocket-Version: 8")),
                426,
            ),
            ("no key", good_but("Sec-WebSocket-Key", None), 400),
            (
                "key not base64",
                good_but("Sec-WebSocket-Key", Some("Sec-WebSocket-Key: !!!!")),
                400,
            ),
            (
                "key of 15 bytes",
                good_but(
                    "Sec-WebSocket-Key",
                    Some("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"),
                ),
                400,
            ),
            (
                "two keys",
                good_but(
                    "Sec-WebSocket-Key",
                    Some(&format!(
                        "Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Key: {KEY}"
                    )),
                ),
                400,
            ),
            (
                "no MQTT subprotocol",
                good_but(
                    "Sec-WebSocket-Protocol",
                    Some("Sec-WebSocket-Protocol: chat, superchat"),
                ),
                400,
            ),
            (
                "empty subprotocol list",
                good_but("Sec-WebSocket-Protocol", Some("Sec-WebSocket-Protocol:")),
                400,
            ),
            ("33 headers", request("GET /mqtt HTTP/1.1", &too_many), 431),
            (
                "not HTTP",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
                400,
            ),
        ];
        for (name, req, status) in cases {
            let h = handshake(&req, "/mqtt", 4096);
            assert_eq!(status_of(&h), status, "{name}: {h:?}");
            let Handshake::Reject { response, why } = h else {
                unreachable!()
            };
            assert!(why.contains('§'), "{name}: {why}");
            let text = String::from_utf8(response).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains("\r\nConnection: close"), "{name}");
            assert!(
                head.contains(&format!("\r\nContent-Length: {}", body.len())),
                "{name}"
            );
            assert_eq!(body, format!("{why}\n"));
            match status {
                405 => assert!(head.contains("\r\nAllow: GET")),
                426 => assert!(head.contains("\r\nSec-WebSocket-Version: 13")),
                _ => {}
            }
        }
    }

    #[test]
    fn no_subprotocol_reason_is_the_documented_one() {
        let req = good_but(
            "Sec-WebSocket-Protocol",
            Some("Sec-WebSocket-Protocol: chat"),
        );
        let Handshake::Reject { why, .. } = handshake(&req, "/mqtt", 4096) else {
            panic!("accepted");
        };
        assert_eq!(
            why,
            "no supported subprotocol (RFC 6455 §4.2.2, MQTT-6.0.0-3)"
        );
    }

    #[test]
    fn size_limit() {
        let req = request("GET /mqtt HTTP/1.1", GOOD);
        // Incomplete and already over the limit.
        let h = handshake(&req[..100], "/mqtt", 99);
        assert_eq!(status_of(&h), 431);
        // Incomplete and exactly at the limit: keep reading.
        assert_eq!(handshake(&req[..100], "/mqtt", 100), Handshake::Incomplete);
        // Complete, but longer than the limit.
        assert_eq!(status_of(&handshake(&req, "/mqtt", req.len() - 1)), 431);
        // Complete at exactly the limit, with frames after it past the limit.
        let mut more = req.clone();
        more.extend_from_slice(&[0x82, 0x80, 1, 2, 3, 4]);
        assert_eq!(status_of(&handshake(&more, "/mqtt", req.len())), 101);
    }

    #[test]
    fn pipelined_frames_are_not_consumed() {
        let req = request("GET /mqtt HTTP/1.1", GOOD);
        let frames = [0x82, 0x82, 1, 2, 3, 4, 0x11, 0x02, 0x89, 0x80, 9, 9, 9, 9];
        let mut input = req.clone();
        input.extend_from_slice(&frames);
        let Handshake::Accept { consumed, .. } = handshake(&input, "/mqtt", 4096) else {
            panic!("refused");
        };
        assert_eq!(consumed, req.len());
        assert_eq!(&input[consumed..], &frames);
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        let req = request("GET /mqtt HTTP/1.1", GOOD);
        for end in 0..req.len() {
            assert_eq!(
                handshake(&req[..end], "/mqtt", 4096),
                Handshake::Incomplete,
                "prefix of {end} bytes"
            );
        }
        assert_eq!(status_of(&handshake(&req, "/mqtt", 4096)), 101);
    }
}
