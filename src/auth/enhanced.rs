//! MQTT 5.0 enhanced authentication (§4.12) as the embedder sees it.
//!
//! A client that puts an Authentication Method in CONNECT asks for a challenge / response
//! exchange of AUTH packets before the server's CONNACK; once connected it may start the same
//! exchange again at any time (re-authentication, §4.12.1) while its session goes on:
//!
//! ```text
//!  client                                 broker (Conversation)            Authenticator
//!    |  CONNECT  method=M, data=d0            |                                 |
//!    |--------------------------------------->|  Conversation::connect -------> |  start(d0)
//!    |                                        |  <------- Step::Continue(d1, x) |
//!    |          AUTH 0x18  method=M, data=d1  |                                 |
//!    |<---------------------------------------|                     Exchange x  |
//!    |  AUTH 0x18  method=M, data=d2          |                                 |
//!    |--------------------------------------->|  Conversation::auth ----------> |  x.next(d2)
//!    |                                        |  <----- Step::Success(d3, user) |
//!    |       CONNACK 0x00  method=M, data=d3  |   (or Step::Fail: CONNACK 0x87  |
//!    |<---------------------------------------|    Not authorized / 0x8C Bad    |
//!    |                                        |    authentication method)       |
//!    :              ... session runs ...      :                                 :
//!    |  AUTH 0x19  method=M, data=d4          |                                 |
//!    |--------------------------------------->|  Conversation::auth ----------> |  start(d4, re)
//!    |          AUTH 0x18  method=M, data=d5  |  <------- Step::Continue(d5, y) |
//!    |<---------------------------------------|                                 |
//!    |  AUTH 0x18  method=M, data=d6          |                                 |
//!    |--------------------------------------->|  Conversation::auth ----------> |  y.next(d6)
//!    |          AUTH 0x00  method=M, data=d7  |  <----- Step::Success(d7, user) |
//!    |<---------------------------------------|   (or Step::Fail: DISCONNECT    |
//!    |                                        |    0x87 / 0x8C, then close)     |
//! ```
//!
//! The pieces, from the method outwards:
//!
//! - [`Authenticator`]: one authentication method (`"SCRAM-SHA-256"`, …). One instance per
//!   broker, shared read-only by every shard; [`Authenticator::start`] answers the first data
//!   of an exchange (CONNECT's, or AUTH 0x19's) with a [`Step`].
//! - [`Exchange`]: the state of one exchange in progress, owned by the connection. Each AUTH
//!   0x18 from the client is fed to [`Exchange::next`], which consumes the exchange and hands
//!   it back inside [`Step::Continue`] only while more round trips are due, so an exchange that
//!   has succeeded or failed cannot be fed again.
//! - [`Authenticators`]: the registry of methods by name, built once at start-up.
//! - [`Conversation`]: one connection's side of §4.12, on top of the three: it checks the
//!   protocol rules (the method may not change, 0x18 only while an exchange is in progress,
//!   0x19 only after CONNACK, a re-authentication may not change the identity) and turns each
//!   step into the [`Reply`] packet to send. The broker may drive the traits itself instead.
//!
//! No I/O and no clock: the broker keeps its CONNECT timeout running until the CONNACK, and
//! everything here runs on the shard that owns the connection.

use core::fmt;

use crate::protocol::{Auth, ReasonCode};

/// What an exchange starts from: the client, and the Authentication Data of the CONNECT or of
/// the AUTH 0x19 that began the exchange (empty when the packet carried none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start<'a> {
    /// The client identifier the connection runs under (the assigned one if the server
    /// assigned it).
    pub client_id: &'a str,
    /// CONNECT's User Name, if any.
    pub username: Option<&'a str>,
    /// The Authentication Data; empty when the packet carried none.
    pub data: &'a [u8],
    /// `true` for a re-authentication (AUTH 0x19 after CONNACK), `false` for CONNECT.
    pub reauthentication: bool,
}

/// One authentication method, shared by every shard of the broker.
pub trait Authenticator: Send + Sync + 'static {
    /// The Authentication Method name this authenticator answers to, e.g. `"SCRAM-SHA-256"`.
    fn method(&self) -> &str;

    /// Answers the first Authentication Data of an exchange.
    fn start(&self, start: &Start<'_>) -> Step;
}

/// One exchange in progress, owned by the connection that runs it.
pub trait Exchange: Send {
    /// Answers the Authentication Data of the client's next AUTH 0x18 (empty when absent).
    fn next(self: Box<Self>, data: &[u8]) -> Step;
}

/// The answer of an [`Authenticator`] or an [`Exchange`] to one message of the client.
pub enum Step {
    /// Not done: send AUTH 0x18 Continue authentication with `data`, and feed the client's
    /// next AUTH to `exchange`.
    Continue {
        data: Vec<u8>,
        exchange: Box<dyn Exchange>,
    },
    /// Authenticated: CONNACK 0x00 (or AUTH 0x00 ending a re-authentication), with `data` as
    /// its Authentication Data if any.
    Success {
        data: Option<Vec<u8>>,
        /// Who the client proved to be (the user name authorization should use), when the
        /// method authenticates a user name.
        identity: Option<String>,
    },
    /// Not authenticated.
    Fail(AuthFailure),
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Continue { data, .. } => f
                .debug_struct("Continue")
                .field("data", &String::from_utf8_lossy(data))
                .finish_non_exhaustive(),
            Step::Success { data, identity } => f
                .debug_struct("Success")
                .field("data", &data.as_deref().map(String::from_utf8_lossy))
                .field("identity", identity)
                .finish(),
            Step::Fail(failure) => f.debug_tuple("Fail").field(failure).finish(),
        }
    }
}

/// Why an exchange failed. What the client is told is only the [`ReasonCode`]; the rest is
/// for the broker's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// The method is not one this server supports, or not for this client: 0x8C.
    BadMethod,
    /// Wrong credentials, unknown user, tampered exchange: 0x87.
    NotAuthorized,
    /// The Authentication Data is not a message of the method; the detail is for the log.
    /// Told to the client as 0x87 (the packet itself was well formed).
    Malformed(&'static str),
}

impl AuthFailure {
    /// The reason code for CONNACK (before the connection is accepted) or DISCONNECT (a failed
    /// re-authentication); both packets may carry either code.
    pub const fn reason_code(self) -> ReasonCode {
        match self {
            AuthFailure::BadMethod => ReasonCode::BAD_AUTHENTICATION_METHOD,
            AuthFailure::NotAuthorized | AuthFailure::Malformed(_) => ReasonCode::NOT_AUTHORIZED,
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthFailure::BadMethod => f.write_str("bad authentication method"),
            AuthFailure::NotAuthorized => f.write_str("not authorized"),
            AuthFailure::Malformed(detail) => write!(f, "malformed authentication data: {detail}"),
        }
    }
}

/// The authentication methods a broker offers, by name: built once at start-up, then shared
/// read-only by every shard (behind an `Arc`).
#[derive(Default)]
pub struct Authenticators {
    methods: Vec<Box<dyn Authenticator>>,
}

/// [`Authenticators::add`] was given a second authenticator for a method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateMethod(pub String);

impl fmt::Display for DuplicateMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "authentication method {:?} is registered twice", self.0)
    }
}

impl std::error::Error for DuplicateMethod {}

impl Authenticators {
    /// No methods: every CONNECT with an Authentication Method gets CONNACK 0x8C.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a method; its name must not be registered already.
    pub fn add(&mut self, authenticator: impl Authenticator) -> Result<(), DuplicateMethod> {
        if self.get(authenticator.method()).is_some() {
            return Err(DuplicateMethod(authenticator.method().to_owned()));
        }
        self.methods.push(Box::new(authenticator));
        Ok(())
    }

    /// [`add`](Self::add), by value.
    pub fn with(mut self, authenticator: impl Authenticator) -> Result<Self, DuplicateMethod> {
        self.add(authenticator)?;
        Ok(self)
    }

    /// The authenticator for a CONNECT's Authentication Method (names are case-sensitive).
    pub fn get(&self, method: &str) -> Option<&dyn Authenticator> {
        // A handful of methods at most: a linear scan beats hashing.
        self.methods
            .iter()
            .find(|a| a.method() == method)
            .map(|a| &**a)
    }

    /// The registered method names, in registration order.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.methods.iter().map(|a| a.method())
    }

    pub fn len(&self) -> usize {
        self.methods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

impl fmt::Debug for Authenticators {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.methods()).finish()
    }
}

/// The client a [`Conversation`] authenticates, as [`Start`] passes it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

/// The packet a [`Conversation`] answers with. Every AUTH and the CONNACK of a successful
/// exchange carry the conversation's Authentication Method ([`Conversation::method`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send AUTH with this reason code: 0x18 Continue authentication, or 0x00 Success
    /// ending a re-authentication. `data` is its Authentication Data.
    Auth {
        reason: ReasonCode,
        data: Option<Vec<u8>>,
    },
    /// Send CONNACK with this reason code. 0x00: the connection is accepted (carry the method
    /// and `data` as Authentication Data); anything else: close after sending it.
    ConnAck {
        reason: ReasonCode,
        data: Option<Vec<u8>>,
    },
    /// Send DISCONNECT with this reason code and close (after CONNACK only).
    Disconnect { reason: ReasonCode },
}

/// One connection's enhanced authentication, from CONNECT to the last re-authentication.
///
/// Created by [`Conversation::connect`] for a CONNECT that carries an Authentication Method;
/// every AUTH packet the client sends afterwards goes to [`Conversation::auth`]. A connection
/// whose CONNECT has no Authentication Method has no conversation, and an AUTH from it is a
/// Protocol Error (the session already says so).
pub struct Conversation {
    method: String,
    identity: Option<String>,
    state: State,
}

enum State {
    /// The CONNECT's exchange is in progress; no CONNACK yet.
    Connecting(Box<dyn Exchange>),
    /// CONNACK 0x00 sent; AUTH 0x19 may start a re-authentication.
    Authenticated,
    /// A re-authentication is in progress.
    Reauthenticating(Box<dyn Exchange>),
    /// Failed: the connection is being closed.
    Closed,
}

impl Conversation {
    /// On a CONNECT carrying Authentication Method `method` (and `data`, empty when the CONNECT
    /// carries no Authentication Data): looks the method up and starts the exchange.
    pub fn connect(
        authenticators: &Authenticators,
        client: Client<'_>,
        method: &str,
        data: &[u8],
    ) -> (Self, Reply) {
        let mut conversation = Conversation {
            method: method.to_owned(),
            identity: None,
            state: State::Closed,
        };
        let Some(authenticator) = authenticators.get(method) else {
            let reason = ReasonCode::BAD_AUTHENTICATION_METHOD;
            return (conversation, Reply::ConnAck { reason, data: None });
        };
        let step = authenticator.start(&Start {
            client_id: client.client_id,
            username: client.username,
            data,
            reauthentication: false,
        });
        let reply = conversation.connect_step(step);
        (conversation, reply)
    }

    /// On every AUTH packet from the client.
    pub fn auth(
        &mut self,
        authenticators: &Authenticators,
        client: Client<'_>,
        auth: &Auth,
    ) -> Reply {
        let same_method = auth
            .properties
            .authentication_method
            .as_ref()
            .is_some_and(|m| m.as_str() == self.method);
        let data = auth
            .properties
            .authentication_data
            .as_deref()
            .unwrap_or(&[]);
        let reason = auth.reason;
        match core::mem::replace(&mut self.state, State::Closed) {
            // §4.12: the client answers a challenge with 0x18 and the same method; 0x19 before
            // CONNACK, or a changed method, is a Protocol Error.
            State::Connecting(exchange) => {
                if !same_method || reason != ReasonCode::CONTINUE_AUTHENTICATION {
                    let reason = ReasonCode::PROTOCOL_ERROR;
                    return Reply::ConnAck { reason, data: None };
                }
                self.connect_step(exchange.next(data))
            }
            // §4.12.1: re-authentication starts with 0x19 and the CONNECT's method
            // [MQTT-4.12.1-1]; 0x18 with no exchange in progress is a Protocol Error.
            State::Authenticated => {
                if !same_method || reason != ReasonCode::RE_AUTHENTICATE {
                    return Reply::Disconnect {
                        reason: ReasonCode::PROTOCOL_ERROR,
                    };
                }
                let Some(authenticator) = authenticators.get(&self.method) else {
                    return Reply::Disconnect {
                        reason: ReasonCode::BAD_AUTHENTICATION_METHOD,
                    };
                };
                let step = authenticator.start(&Start {
                    client_id: client.client_id,
                    username: client.username,
                    data,
                    reauthentication: true,
                });
                self.reauth_step(step)
            }
            State::Reauthenticating(exchange) => {
                if !same_method || reason != ReasonCode::CONTINUE_AUTHENTICATION {
                    return Reply::Disconnect {
                        reason: ReasonCode::PROTOCOL_ERROR,
                    };
                }
                self.reauth_step(exchange.next(data))
            }
            State::Closed => Reply::Disconnect {
                reason: ReasonCode::PROTOCOL_ERROR,
            },
        }
    }

    /// The Authentication Method, for every AUTH and the successful CONNACK.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Who the client authenticated as, once CONNACK 0x00 has been sent.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// `true` once CONNACK 0x00 has been sent and until a re-authentication fails.
    pub fn is_authenticated(&self) -> bool {
        matches!(
            self.state,
            State::Authenticated | State::Reauthenticating(_)
        )
    }

    /// `true` while the CONNECT's exchange is in progress: until then the broker accepts only
    /// AUTH and DISCONNECT from the client, and keeps its CONNECT timeout running.
    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting(_))
    }

    fn connect_step(&mut self, step: Step) -> Reply {
        match step {
            Step::Continue { data, exchange } => {
                self.state = State::Connecting(exchange);
                Reply::Auth {
                    reason: ReasonCode::CONTINUE_AUTHENTICATION,
                    data: Some(data),
                }
            }
            Step::Success { data, identity } => {
                self.identity = identity;
                self.state = State::Authenticated;
                Reply::ConnAck {
                    reason: ReasonCode::SUCCESS,
                    data,
                }
            }
            Step::Fail(failure) => Reply::ConnAck {
                reason: failure.reason_code(),
                data: None,
            },
        }
    }

    fn reauth_step(&mut self, step: Step) -> Reply {
        match step {
            Step::Continue { data, exchange } => {
                self.state = State::Reauthenticating(exchange);
                Reply::Auth {
                    reason: ReasonCode::CONTINUE_AUTHENTICATION,
                    data: Some(data),
                }
            }
            // A connection keeps the identity it was accepted under: its session, will and
            // subscriptions were authorized for it.
            Step::Success { identity, .. } if identity != self.identity => Reply::Disconnect {
                reason: ReasonCode::NOT_AUTHORIZED,
            },
            Step::Success { data, .. } => {
                self.state = State::Authenticated;
                Reply::Auth {
                    reason: ReasonCode::SUCCESS,
                    data,
                }
            }
            Step::Fail(failure) => Reply::Disconnect {
                reason: failure.reason_code(),
            },
        }
    }
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Connecting(_) => "connecting",
            State::Authenticated => "authenticated",
            State::Reauthenticating(_) => "reauthenticating",
            State::Closed => "closed",
        };
        f.debug_struct("Conversation")
            .field("method", &self.method)
            .field("identity", &self.identity)
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, Str};
    use bytes::Bytes;

    /// A toy method: the client names a user in its first data; the server challenges with
    /// `"?"`, and the user's secret is its name reversed. First data `"!name"` succeeds at once.
    struct Reverse;

    struct Challenged {
        user: String,
    }

    impl Authenticator for Reverse {
        fn method(&self) -> &str {
            "REVERSE"
        }

        fn start(&self, start: &Start<'_>) -> Step {
            match core::str::from_utf8(start.data) {
                Ok(s) if s.starts_with('!') => Step::Success {
                    data: None,
                    identity: Some(s[1..].to_owned()),
                },
                Ok(s) if !s.is_empty() => Step::Continue {
                    data: b"?".to_vec(),
                    exchange: Box::new(Challenged { user: s.to_owned() }),
                },
                _ => Step::Fail(AuthFailure::Malformed("no user")),
            }
        }
    }

    impl Exchange for Challenged {
        fn next(self: Box<Self>, data: &[u8]) -> Step {
            let secret: String = self.user.chars().rev().collect();
            if data == secret.as_bytes() {
                Step::Success {
                    data: Some(b"welcome".to_vec()),
                    identity: Some(self.user),
                }
            } else {
                Step::Fail(AuthFailure::NotAuthorized)
            }
        }
    }

    fn registry() -> Authenticators {
        Authenticators::new().with(Reverse).unwrap()
    }

    const CLIENT: Client<'static> = Client {
        client_id: "c1",
        username: None,
    };

    fn auth(reason: ReasonCode, method: Option<&'static str>, data: &'static [u8]) -> Auth {
        let mut properties = Properties::default();
        properties.authentication_method = method.map(Str::from_static);
        properties.authentication_data = Some(Bytes::from_static(data));
        Auth { reason, properties }
    }

    fn connected(auths: &Authenticators) -> Conversation {
        let (mut c, _) = Conversation::connect(auths, CLIENT, "REVERSE", b"alice");
        let reply = c.auth(
            auths,
            CLIENT,
            &auth(ReasonCode(0x18), Some("REVERSE"), b"ecila"),
        );
        assert!(matches!(reply, Reply::ConnAck { reason, .. } if reason == ReasonCode::SUCCESS));
        c
    }

    #[test]
    fn a_challenge_and_a_response_connect() {
        let auths = registry();
        let (mut c, reply) = Conversation::connect(&auths, CLIENT, "REVERSE", b"alice");
        assert_eq!(
            reply,
            Reply::Auth {
                reason: ReasonCode::CONTINUE_AUTHENTICATION,
                data: Some(b"?".to_vec())
            }
        );
        assert!(c.is_connecting() && !c.is_authenticated());
        let reply = c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x18), Some("REVERSE"), b"ecila"),
        );
        assert_eq!(
            reply,
            Reply::ConnAck {
                reason: ReasonCode::SUCCESS,
                data: Some(b"welcome".to_vec())
            }
        );
        assert!(c.is_authenticated());
        assert_eq!(c.identity(), Some("alice"));
        assert_eq!(c.method(), "REVERSE");
    }

    #[test]
    fn the_first_data_may_be_enough() {
        let (c, reply) = Conversation::connect(&registry(), CLIENT, "REVERSE", b"!bob");
        let success = Reply::ConnAck {
            reason: ReasonCode::SUCCESS,
            data: None,
        };
        assert_eq!(reply, success);
        assert_eq!(c.identity(), Some("bob"));
    }

    #[test]
    fn an_unknown_method_is_refused_with_0x8c() {
        let (c, reply) = Conversation::connect(&registry(), CLIENT, "reverse", b"alice");
        assert_eq!(
            reply,
            Reply::ConnAck {
                reason: ReasonCode::BAD_AUTHENTICATION_METHOD,
                data: None
            }
        );
        assert!(!c.is_authenticated() && !c.is_connecting());
    }

    #[test]
    fn failures_before_connack_are_connack_codes() {
        let auths = registry();
        let (_, reply) = Conversation::connect(&auths, CLIENT, "REVERSE", b"");
        assert!(matches!(reply, Reply::ConnAck { reason, .. } if reason.0 == 0x87));

        let (mut c, _) = Conversation::connect(&auths, CLIENT, "REVERSE", b"alice");
        let reply = c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x18), Some("REVERSE"), b"alice"),
        );
        assert!(matches!(reply, Reply::ConnAck { reason, .. } if reason.0 == 0x87));
        // Once failed, the conversation answers nothing but a Protocol Error.
        let reply = c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x18), Some("REVERSE"), b"ecila"),
        );
        assert!(matches!(reply, Reply::Disconnect { reason } if reason.0 == 0x82));
    }

    #[test]
    fn protocol_errors_before_connack() {
        let auths = registry();
        for bad in [
            auth(ReasonCode(0x18), Some("OTHER"), b"ecila"),
            auth(ReasonCode(0x18), None, b"ecila"),
            auth(ReasonCode(0x19), Some("REVERSE"), b"ecila"),
            auth(ReasonCode(0x00), Some("REVERSE"), b"ecila"),
        ] {
            let (mut c, _) = Conversation::connect(&auths, CLIENT, "REVERSE", b"alice");
            let reply = c.auth(&auths, CLIENT, &bad);
            let expected = Reply::ConnAck {
                reason: ReasonCode::PROTOCOL_ERROR,
                data: None,
            };
            assert_eq!(reply, expected, "{bad:?}");
        }
    }

    #[test]
    fn reauthentication_runs_the_same_exchange_over_auth() {
        let auths = registry();
        let mut c = connected(&auths);
        let reply = c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x19), Some("REVERSE"), b"alice"),
        );
        assert_eq!(
            reply,
            Reply::Auth {
                reason: ReasonCode::CONTINUE_AUTHENTICATION,
                data: Some(b"?".to_vec())
            }
        );
        assert!(c.is_authenticated(), "the session goes on meanwhile");
        let reply = c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x18), Some("REVERSE"), b"ecila"),
        );
        assert_eq!(
            reply,
            Reply::Auth {
                reason: ReasonCode::SUCCESS,
                data: Some(b"welcome".to_vec())
            }
        );
        // And again.
        let reply = c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x19), Some("REVERSE"), b"!alice"),
        );
        let success = Reply::Auth {
            reason: ReasonCode::SUCCESS,
            data: None,
        };
        assert_eq!(reply, success);
    }

    #[test]
    fn a_failed_reauthentication_disconnects() {
        let auths = registry();
        let mut c = connected(&auths);
        c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x19), Some("REVERSE"), b"alice"),
        );
        let reply = c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x18), Some("REVERSE"), b"alice"),
        );
        let not_authorized = Reply::Disconnect {
            reason: ReasonCode::NOT_AUTHORIZED,
        };
        assert_eq!(reply, not_authorized);
        assert!(!c.is_authenticated());
    }

    #[test]
    fn a_reauthentication_may_not_change_the_identity() {
        let auths = registry();
        let mut c = connected(&auths);
        let reply = c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x19), Some("REVERSE"), b"!mallory"),
        );
        let not_authorized = Reply::Disconnect {
            reason: ReasonCode::NOT_AUTHORIZED,
        };
        assert_eq!(reply, not_authorized);
        assert_eq!(c.identity(), Some("alice"));
    }

    #[test]
    fn protocol_errors_after_connack() {
        let auths = registry();
        for bad in [
            // 0x18 with no exchange in progress.
            auth(ReasonCode(0x18), Some("REVERSE"), b"alice"),
            // [MQTT-4.12.1-1] the method of the CONNECT.
            auth(ReasonCode(0x19), Some("OTHER"), b"alice"),
            auth(ReasonCode(0x19), None, b"alice"),
            auth(ReasonCode(0x00), Some("REVERSE"), b"alice"),
        ] {
            let mut c = connected(&auths);
            let reply = c.auth(&auths, CLIENT, &bad);
            let protocol_error = Reply::Disconnect {
                reason: ReasonCode::PROTOCOL_ERROR,
            };
            assert_eq!(reply, protocol_error, "{bad:?}");
        }
        // 0x19 in the middle of a re-authentication.
        let mut c = connected(&auths);
        c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x19), Some("REVERSE"), b"alice"),
        );
        let reply = c.auth(
            &auths,
            CLIENT,
            &auth(ReasonCode(0x19), Some("REVERSE"), b"alice"),
        );
        assert!(matches!(reply, Reply::Disconnect { reason } if reason.0 == 0x82));
    }

    #[test]
    fn the_registry_finds_methods_by_exact_name() {
        let auths = registry();
        assert_eq!(auths.len(), 1);
        assert!(!auths.is_empty());
        assert!(auths.get("REVERSE").is_some());
        assert!(auths.get("REVERSE ").is_none());
        assert_eq!(auths.methods().collect::<Vec<_>>(), ["REVERSE"]);
        assert_eq!(format!("{auths:?}"), r#"["REVERSE"]"#);
        let err = registry().with(Reverse).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"authentication method "REVERSE" is registered twice"#
        );
        assert!(Authenticators::new().get("REVERSE").is_none());
    }

    #[test]
    fn failures_map_to_reason_codes() {
        assert_eq!(AuthFailure::BadMethod.reason_code().0, 0x8C);
        assert_eq!(AuthFailure::NotAuthorized.reason_code().0, 0x87);
        assert_eq!(AuthFailure::Malformed("x").reason_code().0, 0x87);
        for f in [
            AuthFailure::BadMethod,
            AuthFailure::NotAuthorized,
            AuthFailure::Malformed("x"),
        ] {
            for packet in [
                crate::protocol::PacketType::ConnAck,
                crate::protocol::PacketType::Disconnect,
            ] {
                assert!(f.reason_code().valid_in(packet), "{f} in {packet:?}");
            }
        }
    }
}
