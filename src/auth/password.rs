//! Password files in mosquitto's format, so existing mosquitto password files work: one
//! `user:hash` line per user, the hash either
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, 64-byte hash (mosquitto ≥ 2.0, and
//!   what `shardmq passwd` writes: 101 iterations, a 12-byte random salt, as mosquitto does), or
//! - `$6$<salt>$<hash>`: SHA-512 of the password then the salt (mosquitto ≤ 1.6),
//!
//! salts and hashes in padded standard base64. Parsing and formatting are pure; verifying is
//! CPU work (PBKDF2) that the broker runs on its authentication thread, never on a shard.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// PBKDF2 iterations `shardmq passwd` uses (mosquitto_passwd's default).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Salt bytes of a new hash (mosquitto_passwd's).
const SALT_BYTES: usize = 12;
/// Most PBKDF2 iterations a file may ask for: a hash costing more would let one CONNECT
/// occupy the authentication thread for seconds.
const MAX_ITERATIONS: u32 = 1_000_000;

/// One user's password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// PBKDF2 iterations.
        iterations: u32,
        /// The salt.
        salt: Vec<u8>,
        /// The 64-byte derived key.
        hash: Vec<u8>,
    },
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 {
        /// The salt.
        salt: Vec<u8>,
        /// The 64-byte digest.
        hash: Vec<u8>,
    },
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes stay out of logs.
        match self {
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "Pbkdf2Sha512 {{ iterations: {iterations}, .. }}")
            }
            PasswordHash::Sha512 { .. } => f.write_str("Sha512 { .. }"),
        }
    }
}

impl PasswordHash {
    /// A new PBKDF2-SHA512 hash of `password` with a random salt.
    pub fn new(password: &str, iterations: u32) -> Result<PasswordHash, String> {
        let mut salt = vec![0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
        let hash = pbkdf2_sha512(password, &salt, iterations);
        Ok(PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `password` is the one hashed (constant time in the comparison).
    pub fn verify(&self, password: &[u8]) -> bool {
        let computed = match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations, salt, ..
            } => pbkdf2_sha512_bytes(password, salt, *iterations),
            PasswordHash::Sha512 { salt, .. } => {
                let mut d = Sha512::new();
                d.update(password);
                d.update(salt);
                d.finalize().to_vec()
            }
        };
        let stored = match self {
            PasswordHash::Pbkdf2Sha512 { hash, .. } | PasswordHash::Sha512 { hash, .. } => hash,
        };
        computed.len() == stored.len() && bool::from(computed.ct_eq(stored))
    }

    /// The hash as the file keeps it (`$7$…` or `$6$…`).
    pub fn encode(&self) -> String {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => format!(
                "$7${iterations}${}${}",
                BASE64.encode(salt),
                BASE64.encode(hash)
            ),
            PasswordHash::Sha512 { salt, hash } => {
                format!("$6${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
        }
    }

    /// Parses a `$7$…` / `$6$…` hash.
    pub fn decode(s: &str) -> Result<PasswordHash, String> {
        let b64 = |field: &str, what: &str| {
            BASE64
                .decode(field)
                .map_err(|_| format!("the {what} is not base64"))
        };
        let parts: Vec<&str> = s.split('$').collect();
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .map_err(|_| format!("iterations {iterations:?} is not a number"))?;
                if iterations == 0 || iterations > MAX_ITERATIONS {
                    return Err(format!(
                        "iterations {iterations} out of range (1 to {MAX_ITERATIONS})"
                    ));
                }
                let hash = b64(hash, "hash")?;
                if hash.len() != 64 {
                    return Err(format!("a PBKDF2-SHA512 hash has 64 bytes, not {}", hash.len()));
                }
                Ok(PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt: b64(salt, "salt")?,
                    hash,
                })
            }
            ["", "6", salt, hash] => {
                let hash = b64(hash, "hash")?;
                if hash.len() != 64 {
                    return Err(format!("a SHA-512 hash has 64 bytes, not {}", hash.len()));
                }
                Ok(PasswordHash::Sha512 {
                    salt: b64(salt, "salt")?,
                    hash,
                })
            }
            _ => Err("not a $7$ (PBKDF2-SHA512) or $6$ (SHA-512) hash; a plain-text password file must be hashed first (`shardmq passwd` or `mosquitto_passwd -U`)".into()),
        }
    }
}

fn pbkdf2_sha512(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    pbkdf2_sha512_bytes(password.as_bytes(), salt, iterations)
}

fn pbkdf2_sha512_bytes(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

/// The users of a password file, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: BTreeMap<String, PasswordHash>,
}

impl PasswordFile {
    /// Parses a file's text: `user:hash` per line; blank lines and `#` comments are skipped.
    /// Errors name the line.
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            // The user name is everything before the last ':' (hashes have none).
            let Some((user, hash)) = line.rsplit_once(':') else {
                return Err(format!("line {}: expected user:hash", i + 1));
            };
            if user.is_empty() {
                return Err(format!("line {}: empty user name", i + 1));
            }
            let hash = PasswordHash::decode(hash).map_err(|e| format!("line {}: {e}", i + 1))?;
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile { users })
    }

    /// The hash of `user`.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    /// Sets (adds or replaces) `user`'s hash.
    pub fn set(&mut self, user: &str, hash: PasswordHash) -> Result<(), String> {
        if user.is_empty() || user.contains(':') {
            return Err(format!(
                "user name {user:?}: must be non-empty and have no ':'"
            ));
        }
        self.users.insert(user.to_string(), hash);
        Ok(())
    }

    /// Removes `user`; whether it was there.
    pub fn remove(&mut self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }

    /// Users in the file.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The file's text, one `user:hash` line per user, sorted by name.
    pub fn encode(&self) -> String {
        self.users
            .iter()
            .map(|(u, h)| format!("{u}:{}\n", h.encode()))
            .collect()
    }

    /// Whether `user` exists and `password` is theirs.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.users.get(user).is_some_and(|h| h.verify(password))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by `mosquitto_passwd -c -b pw alice secret` (mosquitto 2.0.21).
    const MOSQUITTO: &str = "alice:$7$101$UT8aDND6mf9bBKv6$afFnnF8jhAHJJiUZxl4A/uAIdPJYDlknC9gWxaN5oc7OGFG9qWLQB2lDDaQLn39DG9YTKbRaejSOBldP2+eDEQ==\n";

    #[test]
    fn a_mosquitto_passwd_line_verifies() {
        let f = PasswordFile::parse(MOSQUITTO).unwrap();
        assert!(f.verify("alice", b"secret"));
        assert!(!f.verify("alice", b"Secret"));
        assert!(!f.verify("bob", b"secret"));
        assert_eq!(f.encode(), MOSQUITTO, "written back unchanged");
    }

    #[test]
    fn sha512_hashes_of_mosquitto_1_6_verify() {
        let salt = b"0123456789ab";
        let mut d = Sha512::new();
        d.update(b"pw");
        d.update(salt);
        let line = format!(
            "old:$6${}${}\n",
            BASE64.encode(salt),
            BASE64.encode(d.finalize())
        );
        let f = PasswordFile::parse(&line).unwrap();
        assert!(f.verify("old", b"pw"));
        assert!(!f.verify("old", b"px"));
    }

    #[test]
    fn new_hashes_verify_and_round_trip() {
        let mut f = PasswordFile::default();
        f.set(
            "carol",
            PasswordHash::new("p4ss", DEFAULT_ITERATIONS).unwrap(),
        )
        .unwrap();
        f.set("a user", PasswordHash::new("x", 5).unwrap()).unwrap();
        let again = PasswordFile::parse(&f.encode()).unwrap();
        assert_eq!(again, f);
        assert!(again.verify("carol", b"p4ss"));
        assert!(again.verify("a user", b"x"));
        assert!(f.remove("carol") && !f.remove("carol"));
        assert!(f.set("a:b", PasswordHash::new("x", 1).unwrap()).is_err());
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        for (text, want) in [
            ("# c\n\nalice\n", "line 3: expected user:hash"),
            ("alice:secret\n", "line 1: not a $7$"),
            ("alice:$7$x$AAAA$AAAA\n", "line 1: iterations \"x\""),
            (
                "alice:$7$0$AAAA$AAAA\n",
                "line 1: iterations 0 out of range",
            ),
            (
                "alice:$7$101$!!$AAAA\n",
                "line 1: a PBKDF2-SHA512 hash has 64 bytes",
            ),
            (":$6$AAAA$AAAA\n", "line 1: empty user name"),
        ] {
            let e = PasswordFile::parse(text).unwrap_err();
            assert!(
                e.starts_with(want) || e.contains(want.trim_start_matches("line 1: ")),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn hashes_stay_out_of_debug_output() {
        let f = PasswordFile::parse(MOSQUITTO).unwrap();
        assert!(!format!("{f:?}").contains("afFnnF8j"));
    }
}
