//! `SCRAM-SHA-256` (RFC 5802, RFC 7677) as an enhanced-authentication method.
//!
//! Over MQTT 5.0 (§4.12) the SCRAM messages travel as Authentication Data:
//!
//! ```text
//!  client                                                      server (ScramSha256)
//!    CONNECT  method=SCRAM-SHA-256  data=n,,n=user,r=cnonce      ------>
//!             <------  AUTH 0x18  data=r=cnonce+snonce,s=salt,i=4096
//!    AUTH 0x18  data=c=biws,r=cnonce+snonce,p=proof               ------>
//!             <------  CONNACK 0x00  data=v=server-signature
//!                      (or CONNACK 0x87 Not authorized)
//! ```
//!
//! The server keeps, per user, only a [`ScramCredential`] (salt, iteration count, StoredKey,
//! ServerKey), never the password; a credential is kept in a file as one line of
//! [`credential_line`]'s format, `user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
//! with base64 fields (PostgreSQL's verifier format behind the user name).
//!
//! - [`ScramSha256`]: the server side, an [`Authenticator`] over a credential store given at
//!   construction. An unknown user is not revealed before the proof: it is answered with a
//!   salt derived from its name and the store (so the same on every attempt) and the usual
//!   iteration count, and fails at the proof like a wrong password. Proofs are compared in
//!   constant time; server nonces come from the OS random number generator.
//! - [`ScramClient`]: the client side, for tests and shardmq's bench and test clients.
//!
//! Limits of this implementation: no channel binding (`SCRAM-SHA-256-PLUS`; a client asking
//! for it with `p=` is refused, `y` and `n` are accepted), and no SASLprep: user names and
//! passwords are compared and hashed as the UTF-8 they are, which is SASLprep's result for
//! ASCII. Deterministic apart from the nonces; no clock, no I/O.

use core::fmt;
use core::str::FromStr;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::enhanced::{AuthFailure, Authenticator, Exchange, Start, Step};

/// The Authentication Method name.
pub const METHOD: &str = "SCRAM-SHA-256";

/// The iteration count RFC 7677 names as the minimum (§4), and the one given to unknown users
/// when the store is empty.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// The largest iteration count [`ScramClient`] accepts from a server: a hostile server must not
/// make a client hash for minutes.
pub const MAX_CLIENT_ITERATIONS: u32 = 10_000_000;

/// Length of SHA-256 output, and so of StoredKey, ServerKey, proofs and signatures.
const KEY_LEN: usize = 32;

/// Random bytes in a nonce (24 base64 characters).
const NONCE_BYTES: usize = 18;

/// The longest SCRAM message accepted, in bytes: far more than any honest message needs.
const MAX_MESSAGE_LEN: usize = 4096;

type Key = [u8; KEY_LEN];
type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    // HMAC takes keys of any length; `new_from_slice` only fails for fixed-size-key MACs.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

fn xor(a: &Key, b: &Key) -> Key {
    core::array::from_fn(|i| a[i] ^ b[i])
}

/// The OS random number generator failed (it does not, on any Linux this broker runs on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngUnavailable(pub getrandom::Error);

impl fmt::Display for RngUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the OS random number generator failed: {}", self.0)
    }
}

impl std::error::Error for RngUnavailable {}

/// A fresh nonce: [`NONCE_BYTES`] random bytes in base64 (printable, no `,`).
fn random_nonce() -> Result<String, RngUnavailable> {
    let mut raw = [0u8; NONCE_BYTES];
    getrandom::fill(&mut raw).map_err(RngUnavailable)?;
    Ok(BASE64.encode(raw))
}

// ---------------------------------------------------------------------------------------------
// Credentials

/// What the server keeps for one user (RFC 5802 §3): enough to verify a proof and to prove
/// itself, not enough to log in as the user.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// Not empty.
    pub salt: Vec<u8>,
    /// At least 1.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl ScramCredential {
    /// The credential for `password` with this salt and iteration count (0 is taken as 1).
    /// Costs `iterations` HMACs: this is where SCRAM spends its brute-force resistance.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations = iterations.max(1);
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// [`from_password`](Self::from_password) with a fresh random 16-byte salt.
    pub fn generate(password: &str, iterations: u32) -> Result<Self, RngUnavailable> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(RngUnavailable)?;
        Ok(Self::from_password(password, &salt, iterations))
    }

    fn check(&self) -> Result<(), CredentialError> {
        if self.iterations == 0 {
            return Err(CredentialError::Iterations("0".into()));
        }
        if self.salt.is_empty() {
            return Err(CredentialError::EmptySalt);
        }
        Ok(())
    }
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> Key {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// The verifier, without the user name: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
impl fmt::Display for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{METHOD}${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

/// The keys are secrets (with them one can pose as the server): not printed.
impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("salt", &BASE64.encode(&self.salt))
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Parses the verifier [`Display`](fmt::Display) writes.
impl FromStr for ScramCredential {
    type Err = CredentialError;

    fn from_str(s: &str) -> Result<Self, CredentialError> {
        let rest = s
            .strip_prefix(METHOD)
            .and_then(|r| r.strip_prefix('$'))
            .ok_or(CredentialError::Format)?;
        let (params, keys) = rest.split_once('$').ok_or(CredentialError::Format)?;
        let (iterations, salt) = params.split_once(':').ok_or(CredentialError::Format)?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(CredentialError::Format)?;
        let iterations = match iterations.parse::<u32>() {
            Ok(n) if n > 0 && iterations.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(CredentialError::Iterations(iterations.into())),
        };
        let salt = BASE64
            .decode(salt)
            .map_err(|_| CredentialError::Base64("salt"))?;
        let credential = ScramCredential {
            salt,
            iterations,
            stored_key: decode_key(stored_key, "stored key")?,
            server_key: decode_key(server_key, "server key")?,
        };
        credential.check()?;
        Ok(credential)
    }
}

fn decode_key(b64: &str, what: &'static str) -> Result<Key, CredentialError> {
    let bytes = BASE64
        .decode(b64)
        .map_err(|_| CredentialError::Base64(what))?;
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| CredentialError::KeyLength(what, bytes.len()))
}

/// One line of a credential file: `user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
///
/// The user name is everything before the last `:SCRAM-SHA-256$` (base64 has no `:` or `$`), so
/// it may itself contain `:`; it may not be empty or contain control characters.
pub fn credential_line(username: &str, credential: &ScramCredential) -> String {
    format!("{username}:{credential}")
}

/// Parses one line of [`credential_line`]'s format (without its line break).
pub fn parse_credential_line(line: &str) -> Result<(String, ScramCredential), CredentialError> {
    let separator = format!(":{METHOD}$");
    let at = line.rfind(&separator).ok_or(CredentialError::Format)?;
    let username = &line[..at];
    check_username(username)?;
    let credential = line[at + 1..].parse()?;
    Ok((username.to_owned(), credential))
}

fn check_username(username: &str) -> Result<(), CredentialError> {
    if username.is_empty() {
        return Err(CredentialError::EmptyUser);
    }
    if username.chars().any(char::is_control) {
        return Err(CredentialError::ControlCharacter);
    }
    Ok(())
}

/// Parses a credential file: one [`credential_line`] per line; blank lines and lines starting
/// with `#` are skipped. A user listed twice is an error.
pub fn parse_credentials(text: &str) -> Result<Vec<(String, ScramCredential)>, LineError> {
    let mut users = Vec::new();
    let mut seen = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let at = |error| LineError { line: i + 1, error };
        let (user, credential) = parse_credential_line(line).map_err(at)?;
        if let Some(first) = seen.insert(user.clone(), i + 1) {
            return Err(at(CredentialError::DuplicateUser(user, first)));
        }
        users.push((user, credential));
    }
    Ok(users)
}

/// Why a credential line was refused; displays as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialError {
    /// Not of the form at all.
    Format,
    EmptyUser,
    ControlCharacter,
    /// The iteration count, as written, is not a positive integer.
    Iterations(String),
    /// This field is not valid base64 (standard alphabet, padded).
    Base64(&'static str),
    /// This key decodes to this many bytes instead of 32.
    KeyLength(&'static str, usize),
    EmptySalt,
    /// This user was already listed on this line.
    DuplicateUser(String, usize),
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::Format => write!(
                f,
                "expected `user:{METHOD}$<iterations>:<salt>$<stored key>:<server key>` \
                 (base64 salt and keys)"
            ),
            CredentialError::EmptyUser => f.write_str("the user name is empty"),
            CredentialError::ControlCharacter => {
                f.write_str("the user name contains a control character")
            }
            CredentialError::Iterations(n) => {
                write!(f, "iteration count {n:?} is not a positive 32-bit integer")
            }
            CredentialError::Base64(what) => write!(f, "the {what} is not valid base64"),
            CredentialError::KeyLength(what, n) => {
                write!(f, "the {what} is {n} bytes, expected {KEY_LEN}")
            }
            CredentialError::EmptySalt => f.write_str("the salt is empty"),
            CredentialError::DuplicateUser(user, line) => {
                write!(f, "user {user:?} is already listed on line {line}")
            }
        }
    }
}

impl std::error::Error for CredentialError {}

/// A [`CredentialError`] on a line of a credential file (lines count from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub error: CredentialError,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

impl std::error::Error for LineError {}

/// [`ScramSha256::new`] was given an invalid credential or a user twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    Invalid {
        user: String,
        error: CredentialError,
    },
    Duplicate(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Invalid { user, error } => write!(f, "user {user:?}: {error}"),
            StoreError::Duplicate(user) => write!(f, "user {user:?} is listed twice"),
        }
    }
}

impl std::error::Error for StoreError {}

// ---------------------------------------------------------------------------------------------
// Message syntax (RFC 5802 §7)

/// `saslname` → user name: `=2C` is `,`, `=3D` is `=`, any other `=` is malformed.
fn decode_saslname(s: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        match escape {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err("a user name has a bad `=` escape"),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// User name → `saslname`.
fn encode_saslname(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ',' => out.push_str("=2C"),
            '=' => out.push_str("=3D"),
            c => out.push(c),
        }
    }
    out
}

/// `printable` minus `,`, not empty.
fn valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b',')
}

/// The value of attribute `name` at the start of `attr` (`name=value`).
fn attribute(attr: &str, name: u8) -> Option<&str> {
    match attr.as_bytes() {
        [n, b'=', ..] if *n == name => Some(&attr[2..]),
        _ => None,
    }
}

/// An extension attribute: `letter=value`.
fn is_extension(attr: &str) -> bool {
    matches!(attr.as_bytes(), [n, b'=', ..] if n.is_ascii_alphabetic())
}

fn message(data: &[u8]) -> Result<&str, &'static str> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err("the message is too long");
    }
    core::str::from_utf8(data).map_err(|_| "the message is not UTF-8")
}

/// A parsed client-first-message.
struct ClientFirst<'a> {
    /// `n,,` or `y,,` or with `a=authzid`: echoed back in client-final's `c=`.
    gs2_header: &'a str,
    authzid: Option<String>,
    bare: &'a str,
    username: String,
    nonce: &'a str,
}

fn parse_client_first(msg: &str) -> Result<ClientFirst<'_>, &'static str> {
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (flag, rest) = msg.split_once(',').ok_or("no gs2 header")?;
    match flag {
        "n" | "y" => {}
        _ if flag.starts_with("p=") => return Err("channel binding is not supported"),
        _ => return Err("a bad channel binding flag"),
    }
    let (authzid, bare) = rest.split_once(',').ok_or("no gs2 header")?;
    let authzid = match authzid {
        "" => None,
        a => Some(decode_saslname(attribute(a, b'a').ok_or("a bad authzid")?)?),
    };
    let gs2_header = &msg[..msg.len() - bare.len()];

    let mut attrs = bare.split(',');
    let mut first = attrs.next().unwrap_or("");
    if attribute(first, b'm').is_some() {
        return Err("a mandatory extension is not supported");
    }
    let username = attribute(first, b'n').ok_or("no user name")?;
    let username = decode_saslname(username)?;
    first = attrs.next().unwrap_or("");
    let nonce = attribute(first, b'r').ok_or("no nonce")?;
    if !valid_nonce(nonce) {
        return Err("a bad nonce");
    }
    if !attrs.all(is_extension) {
        return Err("a bad attribute");
    }
    Ok(ClientFirst {
        gs2_header,
        authzid,
        bare,
        username,
        nonce,
    })
}

/// A parsed client-final-message.
struct ClientFinal<'a> {
    channel_binding: Vec<u8>,
    nonce: &'a str,
    without_proof: &'a str,
    proof: Key,
}

fn parse_client_final(msg: &str) -> Result<ClientFinal<'_>, &'static str> {
    let (without_proof, proof) = msg.rsplit_once(",p=").ok_or("no proof")?;
    let proof = BASE64
        .decode(proof)
        .map_err(|_| "the proof is not base64")?;
    let proof: Key = proof.try_into().map_err(|_| "the proof is not 32 bytes")?;
    let mut attrs = without_proof.split(',');
    let channel_binding =
        attribute(attrs.next().unwrap_or(""), b'c').ok_or("no channel binding")?;
    let channel_binding = BASE64
        .decode(channel_binding)
        .map_err(|_| "the channel binding is not base64")?;
    let nonce = attribute(attrs.next().unwrap_or(""), b'r').ok_or("no nonce")?;
    if !attrs.all(is_extension) {
        return Err("a bad attribute");
    }
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

// ---------------------------------------------------------------------------------------------
// Server

/// The server side of `SCRAM-SHA-256` over a fixed credential store.
pub struct ScramSha256 {
    users: HashMap<String, ScramCredential>,
    /// Key of the unknown users' salts: derived from every ServerKey, so secret while the store
    /// is, and the same across restarts with the same store.
    mock_key: Key,
    /// The iteration count most users have, given to unknown users too.
    mock_iterations: u32,
}

impl ScramSha256 {
    /// A server over these users (user name → credential).
    pub fn new(
        users: impl IntoIterator<Item = (String, ScramCredential)>,
    ) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        for (user, credential) in users {
            if let Err(error) = check_username(&user).and_then(|()| credential.check()) {
                return Err(StoreError::Invalid { user, error });
            }
            match map.entry(user) {
                Entry::Occupied(e) => return Err(StoreError::Duplicate(e.key().clone())),
                Entry::Vacant(e) => {
                    e.insert(credential);
                }
            }
        }
        Ok(Self::from_checked(map))
    }

    /// A server over a credential file's contents ([`parse_credentials`]).
    pub fn from_lines(text: &str) -> Result<Self, LineError> {
        // parse_credentials has checked every line and refused users listed twice.
        Ok(Self::from_checked(
            parse_credentials(text)?.into_iter().collect(),
        ))
    }

    fn from_checked(users: HashMap<String, ScramCredential>) -> Self {
        let mut names: Vec<&String> = users.keys().collect();
        names.sort();
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"shardmq SCRAM-SHA-256 mock salt")
            .expect("HMAC takes any key length");
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for name in names {
            mac.update(&users[name].server_key);
            *counts.entry(users[name].iterations).or_default() += 1;
        }
        let mock_iterations = counts
            .into_iter()
            .max_by_key(|&(iterations, count)| (count, iterations))
            .map_or(DEFAULT_ITERATIONS, |(iterations, _)| iterations);
        ScramSha256 {
            mock_key: mac.finalize().into_bytes().into(),
            mock_iterations,
            users,
        }
    }

    /// The number of users in the store.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// [`Authenticator::start`] with a given server nonce (tests use the RFC's).
    pub(crate) fn start_with_nonce(&self, start: &Start<'_>, server_nonce: &str) -> Step {
        let parsed = message(start.data).and_then(parse_client_first);
        let first = match parsed {
            Ok(first) => first,
            Err(detail) => return Step::Fail(AuthFailure::Malformed(detail)),
        };
        // PostgreSQL's clients send an empty `n=` and name the user elsewhere: here, in
        // CONNECT's User Name. When both name a user they must agree.
        let username = match (first.username.as_str(), start.username) {
            ("", Some(user)) => user.to_owned(),
            ("", None) => return Step::Fail(AuthFailure::Malformed("no user name")),
            (user, Some(connect_user)) if user != connect_user => {
                return Step::Fail(AuthFailure::NotAuthorized);
            }
            (user, _) => user.to_owned(),
        };
        // Acting for another user is not supported.
        if first.authzid.as_ref().is_some_and(|a| *a != username) {
            return Step::Fail(AuthFailure::NotAuthorized);
        }

        // The mock is computed for known users too, so that both take the same time.
        let mock = self.mock_credential(&username);
        let (credential, known) = match self.users.get(&username) {
            Some(credential) => (credential, true),
            None => (&mock, false),
        };
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        Step::Continue {
            data: server_first.clone().into_bytes(),
            exchange: Box::new(ServerFirstSent {
                gs2_header: first.gs2_header.as_bytes().to_vec(),
                auth_message_start: format!("{},{server_first},", first.bare),
                nonce,
                username,
                stored_key: credential.stored_key,
                server_key: credential.server_key,
                known,
            }),
        }
    }

    /// The same-looking credential an unknown user gets; its keys match no password.
    fn mock_credential(&self, username: &str) -> ScramCredential {
        let salt = hmac(&self.mock_key, &[b"salt", username.as_bytes()]);
        ScramCredential {
            salt: salt[..16].to_vec(),
            iterations: self.mock_iterations,
            stored_key: hmac(&self.mock_key, &[b"stored key", username.as_bytes()]),
            server_key: hmac(&self.mock_key, &[b"server key", username.as_bytes()]),
        }
    }
}

impl Authenticator for ScramSha256 {
    fn method(&self) -> &str {
        METHOD
    }

    fn start(&self, start: &Start<'_>) -> Step {
        match random_nonce() {
            Ok(nonce) => self.start_with_nonce(start, &nonce),
            Err(e) => {
                tracing::error!("SCRAM-SHA-256 refused client {:?}: {e}", start.client_id);
                Step::Fail(AuthFailure::NotAuthorized)
            }
        }
    }
}

impl fmt::Debug for ScramSha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSha256")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// The server has sent server-first and waits for client-final.
struct ServerFirstSent {
    gs2_header: Vec<u8>,
    /// `client-first-message-bare "," server-first-message ","`: AuthMessage less the end.
    auth_message_start: String,
    nonce: String,
    username: String,
    stored_key: Key,
    server_key: Key,
    known: bool,
}

impl Exchange for ServerFirstSent {
    fn next(self: Box<Self>, data: &[u8]) -> Step {
        let final_message = match message(data).and_then(parse_client_final) {
            Ok(m) => m,
            Err(detail) => return Step::Fail(AuthFailure::Malformed(detail)),
        };
        // Without channel binding, `c=` is the gs2 header again.
        if final_message.channel_binding != self.gs2_header {
            return Step::Fail(AuthFailure::NotAuthorized);
        }
        if final_message.nonce != self.nonce {
            return Step::Fail(AuthFailure::NotAuthorized);
        }
        let auth_message = [
            self.auth_message_start.as_bytes(),
            final_message.without_proof.as_bytes(),
        ];
        let client_signature = hmac(&self.stored_key, &auth_message);
        let client_key = xor(&final_message.proof, &client_signature);
        let proof_ok = sha256(&client_key).ct_eq(&self.stored_key);
        if !bool::from(proof_ok & subtle::Choice::from(u8::from(self.known))) {
            return Step::Fail(AuthFailure::NotAuthorized);
        }
        let server_signature = hmac(&self.server_key, &auth_message);
        Step::Success {
            data: Some(format!("v={}", BASE64.encode(server_signature)).into_bytes()),
            identity: Some(self.username),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// The client side of `SCRAM-SHA-256`: client-first for CONNECT's Authentication Data, then
/// [`server_first`](Self::server_first) turns the server's AUTH data into client-final, and
/// [`ScramClientFinal::server_final`] checks the CONNACK's data.
pub struct ScramClient {
    password: String,
    nonce: String,
    client_first_bare: String,
}

impl ScramClient {
    /// A client for this user and password, with a random nonce.
    pub fn new(username: &str, password: &str) -> Result<Self, RngUnavailable> {
        Ok(Self::build(username, password, random_nonce()?))
    }

    /// A client with a given nonce, for deterministic tests; `None` if the nonce is not
    /// printable ASCII without `,`. A fixed nonce in production would allow replays.
    pub fn with_nonce(username: &str, password: &str, nonce: &str) -> Option<Self> {
        valid_nonce(nonce).then(|| Self::build(username, password, nonce.to_owned()))
    }

    fn build(username: &str, password: &str, nonce: String) -> Self {
        ScramClient {
            password: password.to_owned(),
            client_first_bare: format!("n={},r={nonce}", encode_saslname(username)),
            nonce,
        }
    }

    /// The client-first-message, `n,,n=user,r=nonce`: CONNECT's Authentication Data.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Answers the server-first-message (the AUTH 0x18's data) with the client-final-message
    /// (the data of the client's AUTH 0x18). Costs the server's iteration count in HMACs.
    pub fn server_first(self, data: &[u8]) -> Result<(ScramClientFinal, Vec<u8>), ScramError> {
        let server_first = message(data).map_err(ScramError::Malformed)?;
        let mut attrs = server_first.split(',');
        let mut next = || attrs.next().unwrap_or("");
        let first = next();
        if attribute(first, b'm').is_some() {
            return Err(ScramError::Malformed(
                "a mandatory extension is not supported",
            ));
        }
        let nonce = attribute(first, b'r').ok_or(ScramError::Malformed("no nonce"))?;
        let salt = attribute(next(), b's').ok_or(ScramError::Malformed("no salt"))?;
        let iterations = attribute(next(), b'i').ok_or(ScramError::Malformed("no iterations"))?;
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) || !valid_nonce(nonce)
        {
            return Err(ScramError::Nonce);
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| ScramError::Malformed("the salt is not base64"))?;
        if salt.is_empty() {
            return Err(ScramError::Malformed("the salt is empty"));
        }
        let iterations = match iterations.parse::<u32>() {
            Ok(n @ 1..=MAX_CLIENT_ITERATIONS) if iterations.bytes().all(|b| b.is_ascii_digit()) => {
                n
            }
            _ => return Err(ScramError::Iterations),
        };

        let salted = salted_password(&self.password, &salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key = sha256(&client_key);
        let server_key = hmac(&salted, &[b"Server Key"]);
        // c=biws is base64("n,,").
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let proof = xor(&client_key, &hmac(&stored_key, &auth_message));
        let client_final = format!("{without_proof},p={}", BASE64.encode(proof));
        let expected = ScramClientFinal {
            server_signature: hmac(&server_key, &auth_message),
        };
        Ok((expected, client_final.into_bytes()))
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("client_first_bare", &self.client_first_bare)
            .finish_non_exhaustive()
    }
}

/// The client has sent client-final and waits for the server's signature.
#[derive(Debug)]
pub struct ScramClientFinal {
    server_signature: Key,
}

impl ScramClientFinal {
    /// Checks the server-final-message (the CONNACK's Authentication Data): `Ok` when the
    /// server proved it knows the user's ServerKey.
    pub fn server_final(self, data: &[u8]) -> Result<(), ScramError> {
        let msg = message(data).map_err(ScramError::Malformed)?;
        if let Some(error) = attribute(msg, b'e') {
            return Err(ScramError::Refused(error.to_owned()));
        }
        let signature = attribute(msg.split(',').next().unwrap_or(""), b'v')
            .ok_or(ScramError::Malformed("no server signature"))?;
        let signature = BASE64
            .decode(signature)
            .map_err(|_| ScramError::Malformed("the server signature is not base64"))?;
        if bool::from(signature.ct_eq(&self.server_signature[..])) {
            Ok(())
        } else {
            Err(ScramError::ServerSignature)
        }
    }
}

/// Why [`ScramClient`] refused a server message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScramError {
    Malformed(&'static str),
    /// The server nonce does not extend the client's.
    Nonce,
    /// The iteration count is not in 1..=[`MAX_CLIENT_ITERATIONS`].
    Iterations,
    /// The server said `e=…`.
    Refused(String),
    /// The server does not know the user's keys: it is not the server it claims to be.
    ServerSignature,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Malformed(detail) => write!(f, "malformed SCRAM message: {detail}"),
            ScramError::Nonce => f.write_str("the server nonce does not extend the client's"),
            ScramError::Iterations => write!(
                f,
                "the iteration count is not between 1 and {MAX_CLIENT_ITERATIONS}"
            ),
            ScramError::Refused(e) => write!(f, "the server refused: {e}"),
            ScramError::ServerSignature => f.write_str("the server signature is wrong"),
        }
    }
}

impl std::error::Error for ScramError {}

#[cfg(test)]
mod tests;
