//! Topic Names and Topic Filters (MQTT 5.0 §4.7, shared subscriptions §4.8.2; 3.1.1 §4.7):
//! their validation, the shared-subscription form, and matching a filter against a name.
//!
//! Validation:
//! - Both are UTF-8 Encoded Strings ([MQTT-1.5.4-1], [MQTT-1.5.4-2]; U+0000 is also
//!   [MQTT-4.7.3-2]) of at least one character ([MQTT-4.7.3-1]) and at most 65 535 bytes
//!   ([MQTT-4.7.3-3]).
//! - A Topic Name carries no wildcard ([MQTT-3.3.2-2] for PUBLISH, [MQTT-4.7.0-1] in general).
//! - In a Topic Filter, `#` stands alone in the last level ([MQTT-4.7.1-1]) and `+` fills a
//!   whole level ([MQTT-4.7.1-2]).
//! - A filter starting `$share/` is a shared subscription, `$share/{ShareName}/{filter}`: the
//!   ShareName is at least one character ([MQTT-4.8.2-1]) without `/`, `+` or `#`, and is
//!   followed by `/` and a Topic Filter ([MQTT-4.8.2-2]).
//!
//! When an input breaks several rules, the string rules (UTF-8, then U+0000) are reported
//! before the topic rules, and among topic rules the first offending byte wins.
//!
//! Matching (§4.7.1, §4.7.2): levels are compared byte for byte with no normalisation
//! ([MQTT-4.7.3-4]); `+` matches exactly one level, which may be empty; `#` matches its parent
//! level and any number of levels below it; and a filter whose first character is a wildcard
//! never matches a name whose first character is `$` ([MQTT-4.7.2-1]).
//!
//! Pure; runs on whichever shard decodes or routes; no I/O, no allocation.

use core::fmt;

use bytes::Bytes;

use super::error::Error;
use super::reason::ReasonCode;
use super::string::{HI, has_zero_byte, load, load_tail, splat, validate_utf8};

/// The prefix that makes a Topic Filter a shared subscription (§4.8.2).
const SHARE_PREFIX: &[u8] = b"$share/";
/// The longest Topic Name or Topic Filter ([MQTT-4.7.3-3]).
const MAX_LEN: usize = u16::MAX as usize;

const PLUS: u64 = splat(b'+');
const HASH: u64 = splat(b'#');

/// Flags (in the high bit of a byte) when a word holds a `+` or a `#`.
#[inline(always)]
const fn wildcard_flags(w: u64) -> u64 {
    has_zero_byte(w ^ PLUS) | has_zero_byte(w ^ HASH)
}

/// Flags when a word holds a non-ASCII byte, a NUL, a `+` or a `#`.
#[inline(always)]
const fn name_flags(w: u64) -> u64 {
    (w & HI) | has_zero_byte(w) | wildcard_flags(w)
}

/// Checks a Topic Name: at least one character, an MQTT UTF-8 string, no wildcard.
///
/// One pass of 8-byte words looks for non-ASCII bytes, NUL, `+` and `#` at once; only when
/// one of them turns up does it work out which (decoding UTF-8 only if a non-ASCII byte is
/// there). The length limit is not checked here (see [`TopicName::new`]).
///
/// # Errors
///
/// A malformed-packet [`Error`]: [MQTT-4.7.3-1] when empty, [MQTT-1.5.4-1] / [MQTT-1.5.4-2]
/// for ill-formed UTF-8 / U+0000, [MQTT-3.3.2-2] for a wildcard character.
pub fn validate_topic_name(b: &[u8]) -> Result<(), Error> {
    if b.is_empty() {
        return Err(Error::malformed("MQTT-4.7.3-1", "empty topic name"));
    }
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        if name_flags(load(chunk)) != 0 {
            return topic_name_slow(&b[at..]);
        }
        at += 8;
    }
    // The padding byte 'a' raises no flag.
    if name_flags(load_tail(chunks.remainder(), b'a')) != 0 {
        return topic_name_slow(&b[at..]);
    }
    Ok(())
}

/// The rest of a Topic Name after a prefix of plain ASCII, which cuts no character.
#[cold]
fn topic_name_slow(rest: &[u8]) -> Result<(), Error> {
    validate_utf8(rest)?;
    if rest.iter().any(|&c| c == b'+' || c == b'#') {
        return Err(Error::malformed(
            "MQTT-3.3.2-2",
            "wildcard character in a topic name",
        ));
    }
    Ok(())
}

/// A refused filter the server answers per filter (SUBACK / UNSUBACK 0x8F).
const fn filter_error(rule: &'static str, what: &'static str) -> Error {
    Error::with_reason(rule, what, ReasonCode::TOPIC_FILTER_INVALID)
}

/// Checks a Topic Filter: at least one character, an MQTT UTF-8 string, wildcards placed as
/// §4.7.1 requires, and, when it starts with `$share/`, the shared-subscription form of §4.8.2.
/// The length limit is not checked here (see [`TopicFilter::new`]).
///
/// # Errors
///
/// - malformed packet (0x81): [MQTT-1.5.4-1] / [MQTT-1.5.4-2] for ill-formed UTF-8 / U+0000;
/// - Topic Filter invalid (0x8F): [MQTT-4.7.3-1] when empty, [MQTT-4.7.1-1] for a misplaced
///   `#`, [MQTT-4.7.1-2] for a `+` not alone in its level, [MQTT-4.8.2-1] for an empty
///   ShareName, [MQTT-4.8.2-2] for a ShareName holding `+` or `#`, or not followed by `/` and
///   a filter.
pub fn validate_topic_filter(b: &[u8]) -> Result<(), Error> {
    if b.is_empty() {
        return Err(filter_error("MQTT-4.7.3-1", "empty topic filter"));
    }
    validate_utf8(b)?;
    let filter = match b.strip_prefix(SHARE_PREFIX) {
        Some(rest) => shared_inner(rest)?,
        None => b,
    };
    validate_wildcards(filter)
}

/// Checks what follows `$share/` and returns the filter being shared.
fn shared_inner(rest: &[u8]) -> Result<&[u8], Error> {
    let slash = rest.iter().position(|&c| c == b'/');
    let name = &rest[..slash.unwrap_or(rest.len())];
    if name.is_empty() {
        return Err(filter_error("MQTT-4.8.2-1", "empty ShareName"));
    }
    if name.iter().any(|&c| c == b'+' || c == b'#') {
        return Err(filter_error(
            "MQTT-4.8.2-2",
            "wildcard character in a ShareName",
        ));
    }
    let Some(slash) = slash else {
        return Err(filter_error(
            "MQTT-4.8.2-2",
            "ShareName not followed by '/' and a filter",
        ));
    };
    let inner = &rest[slash + 1..];
    if inner.is_empty() {
        return Err(filter_error(
            "MQTT-4.8.2-2",
            "no topic filter after the ShareName",
        ));
    }
    Ok(inner)
}

/// Checks the placement of every `+` and `#` in `f`, skipping 8-byte words that hold neither.
fn validate_wildcards(f: &[u8]) -> Result<(), Error> {
    let mut chunks = f.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        if wildcard_flags(load(chunk)) != 0 {
            for i in at..at + 8 {
                check_wildcard_at(f, i)?;
            }
        }
        at += 8;
    }
    if wildcard_flags(load_tail(chunks.remainder(), b'a')) != 0 {
        for i in at..f.len() {
            check_wildcard_at(f, i)?;
        }
    }
    Ok(())
}

/// Checks the byte at `i` of `f` if it is a wildcard.
#[inline]
fn check_wildcard_at(f: &[u8], i: usize) -> Result<(), Error> {
    let last = i + 1 == f.len();
    let starts_level = i == 0 || f[i - 1] == b'/';
    match f[i] {
        b'#' if !(starts_level && last) => Err(filter_error(
            "MQTT-4.7.1-1",
            "'#' must be alone in the last level of a topic filter",
        )),
        b'+' if !(starts_level && (last || f[i + 1] == b'/')) => Err(filter_error(
            "MQTT-4.7.1-2",
            "'+' must occupy a whole level of a topic filter",
        )),
        _ => Ok(()),
    }
}

/// Splits a shared subscription's filter, `$share/{ShareName}/{filter}`, into the ShareName
/// and the filter it shares; `None` when `filter` does not start with `$share/` or has no
/// further `/`.
///
/// This only splits: on a filter that passed [`validate_topic_filter`] both parts are
/// non-empty and valid, on any other input they may be empty or hold wildcards.
pub fn parse_shared(filter: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let slash = rest.iter().position(|&c| c == b'/')?;
    Some((&rest[..slash], &rest[slash + 1..]))
}

/// The first level of `s` and what follows its `/`, if there is one.
#[inline]
fn split_level(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&c| c == b'/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// Whether the Topic Name `topic` matches the Topic Filter `filter` (§4.7).
///
/// `filter` is a plain filter: a `$share/{ShareName}/` prefix is not stripped here (see
/// [`TopicFilter::matches`], which does). Both arguments are expected to be valid; on others
/// the answer is unspecified, but the function neither panics nor allocates.
pub fn matches(filter: &[u8], topic: &[u8]) -> bool {
    // [MQTT-4.7.2-1]: a leading wildcard does not reach into `$` topics.
    if let (Some(b'+' | b'#'), Some(b'$')) = (filter.first(), topic.first()) {
        return false;
    }
    let (mut f, mut t) = (filter, topic);
    loop {
        let (f_level, f_rest) = split_level(f);
        if f_level == b"#" {
            return true;
        }
        let (t_level, t_rest) = split_level(t);
        if f_level != b"+" && f_level != t_level {
            return false;
        }
        match (f_rest, t_rest) {
            (Some(fr), Some(tr)) => (f, t) = (fr, tr),
            (None, None) => return true,
            // The topic ran out of levels: only a final `#`, which matches its parent, fits.
            (Some(fr), None) => return fr == b"#",
            (None, Some(_)) => return false,
        }
    }
}

/// A validated Topic Name: the topic of a PUBLISH or a Will.
///
/// Valid as [`validate_topic_name`] says and at most 65 535 bytes, except for the empty
/// [`Default`] value, which stands for the missing topic of an MQTT 5.0 PUBLISH that carries
/// only a Topic Alias (§3.3.2.3.4).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct TopicName(Bytes);

super::string::bytes_newtype!(TopicName);

impl TopicName {
    /// Validates `b` as a Topic Name.
    ///
    /// # Errors
    ///
    /// What [`validate_topic_name`] returns, and a malformed-packet [MQTT-4.7.3-3] error when
    /// `b` is longer than 65 535 bytes.
    pub fn new(b: impl Into<Bytes>) -> Result<Self, Error> {
        let b = b.into();
        if b.len() > MAX_LEN {
            return Err(Error::malformed(
                "MQTT-4.7.3-3",
                "topic name longer than 65535 bytes",
            ));
        }
        validate_topic_name(&b)?;
        Ok(Self(b))
    }

    /// A Topic Name from a literal.
    ///
    /// # Panics
    ///
    /// When `s` is not a valid Topic Name.
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(Bytes::from_static(s.as_bytes())) {
            Ok(t) => t,
            Err(e) => panic!("{s:?} is not a valid topic name: {e}"),
        }
    }

    /// Wraps bytes the caller has already validated (or, for an aliased PUBLISH, left empty).
    ///
    /// The bytes MUST be well-formed UTF-8: [`TopicName::as_str`] relies on it without
    /// checking (debug builds assert it).
    #[inline]
    pub(crate) fn new_unchecked(b: Bytes) -> Self {
        debug_assert!(
            core::str::from_utf8(&b).is_ok(),
            "TopicName::new_unchecked on invalid UTF-8"
        );
        Self(b)
    }

    /// The name.
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor guarantees the bytes are well-formed UTF-8: `new` checks
        // them with `validate_topic_name` (which runs `validate_utf8`), `from_static` goes
        // through `new`, `Default` is empty, and `new_unchecked`'s contract (asserted in debug
        // builds) requires it of its callers. `Bytes` is immutable and the field is private.
        unsafe { core::str::from_utf8_unchecked(&self.0) }
    }
}

/// Panics like [`TopicName::from_static`] when the literal is not a valid Topic Name.
impl From<&'static str> for TopicName {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

/// A validated Topic Filter, possibly a shared subscription's `$share/{ShareName}/{filter}`.
///
/// Valid as [`validate_topic_filter`] says and at most 65 535 bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter(Bytes);

super::string::bytes_newtype!(TopicFilter);

impl TopicFilter {
    /// Validates `b` as a Topic Filter.
    ///
    /// # Errors
    ///
    /// What [`validate_topic_filter`] returns, and a malformed-packet [MQTT-4.7.3-3] error
    /// when `b` is longer than 65 535 bytes.
    pub fn new(b: impl Into<Bytes>) -> Result<Self, Error> {
        let b = b.into();
        if b.len() > MAX_LEN {
            return Err(Error::malformed(
                "MQTT-4.7.3-3",
                "topic filter longer than 65535 bytes",
            ));
        }
        validate_topic_filter(&b)?;
        Ok(Self(b))
    }

    /// A Topic Filter from a literal.
    ///
    /// # Panics
    ///
    /// When `s` is not a valid Topic Filter.
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(Bytes::from_static(s.as_bytes())) {
            Ok(t) => t,
            Err(e) => panic!("{s:?} is not a valid topic filter: {e}"),
        }
    }

    /// Wraps bytes the caller has already validated.
    ///
    /// The bytes MUST be well-formed UTF-8: [`TopicFilter::as_str`] relies on it without
    /// checking (debug builds assert it). They should also pass [`validate_topic_filter`].
    #[inline]
    pub(crate) fn new_unchecked(b: Bytes) -> Self {
        debug_assert!(
            core::str::from_utf8(&b).is_ok(),
            "TopicFilter::new_unchecked on invalid UTF-8"
        );
        Self(b)
    }

    /// The filter, with any `$share/{ShareName}/` prefix.
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor guarantees the bytes are well-formed UTF-8: `new` checks
        // them with `validate_topic_filter` (which runs `validate_utf8`), `from_static` goes
        // through `new`, and `new_unchecked`'s contract (asserted in debug builds) requires it
        // of its callers. `Bytes` is immutable and the field is private.
        unsafe { core::str::from_utf8_unchecked(&self.0) }
    }

    /// For a shared subscription, its ShareName and the filter it shares.
    pub fn shared(&self) -> Option<(&str, &str)> {
        let s = self.as_str();
        let (name, inner) = parse_shared(s.as_bytes())?;
        // Both parts sit between ASCII bytes ('/' or the ends), so they are char boundaries.
        let start = SHARE_PREFIX.len();
        Some((&s[start..start + name.len()], &s[s.len() - inner.len()..]))
    }

    /// Whether `topic` matches this filter; a shared subscription matches with the filter it
    /// shares.
    pub fn matches(&self, topic: &TopicName) -> bool {
        let filter = parse_shared(&self.0).map_or(&self.0[..], |(_, inner)| inner);
        matches(filter, topic.as_bytes())
    }

    /// Whether the filter holds a `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.0.iter().any(|&c| c == b'+' || c == b'#')
    }
}

/// Panics like [`TopicFilter::from_static`] when the literal is not a valid Topic Filter.
impl From<&'static str> for TopicFilter {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const UTF8: &str = "MQTT-1.5.4-1";
    const NUL: &str = "MQTT-1.5.4-2";
    const EMPTY: &str = "MQTT-4.7.3-1";
    const WILDCARD_IN_NAME: &str = "MQTT-3.3.2-2";
    const HASH_PLACE: &str = "MQTT-4.7.1-1";
    const PLUS_PLACE: &str = "MQTT-4.7.1-2";
    const SHARE_NAME_EMPTY: &str = "MQTT-4.8.2-1";
    const SHARE_FORM: &str = "MQTT-4.8.2-2";

    fn name_rule(b: &[u8]) -> Option<&'static str> {
        validate_topic_name(b).err().map(|e| e.rule)
    }

    fn filter_rule(b: &[u8]) -> Option<&'static str> {
        validate_topic_filter(b).err().map(|e| e.rule)
    }

    /// The Topic Name rules, character by character.
    fn naive_name_rule(b: &[u8]) -> Option<&'static str> {
        let Ok(s) = core::str::from_utf8(b) else {
            return Some(UTF8);
        };
        if s.is_empty() {
            return Some(EMPTY);
        }
        if s.chars().any(|c| c == '\0') {
            return Some(NUL);
        }
        if s.chars().any(|c| c == '+' || c == '#') {
            return Some(WILDCARD_IN_NAME);
        }
        None
    }

    /// The Topic Filter rules, level by level (only used on strings without `$share/`).
    fn naive_filter_rule(s: &str) -> Option<&'static str> {
        if s.is_empty() {
            return Some(EMPTY);
        }
        if s.contains('\0') {
            return Some(NUL);
        }
        let levels: Vec<&str> = s.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            for c in level.chars() {
                if c == '#' && (*level != "#" || i != levels.len() - 1) {
                    return Some(HASH_PLACE);
                }
                if c == '+' && *level != "+" {
                    return Some(PLUS_PLACE);
                }
            }
        }
        None
    }

    /// Matching as the spec words it, over lists of levels, recursively.
    fn naive_matches(filter: &str, topic: &str) -> bool {
        fn go(f: &[&str], t: &[&str]) -> bool {
            match (f.first(), t.first()) {
                (Some(&"#"), _) => true,
                (Some(&"+"), Some(_)) => go(&f[1..], &t[1..]),
                (Some(a), Some(b)) if a == b => go(&f[1..], &t[1..]),
                (None, None) => true,
                _ => false,
            }
        }
        if (filter.starts_with('+') || filter.starts_with('#')) && topic.starts_with('$') {
            return false;
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        go(&f, &t)
    }

    #[test]
    fn topic_names() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"a", None),
            (b"/", None),
            (b"//", None),
            (b"/finance", None),
            (b"finance/", None),
            (b"sport/tennis/player1", None),
            (b"ACCOUNTS", None),
            (b"Accounts payable", None),
            (b"$SYS/monitor/Clients", None),
            (b"$", None),
            (b" ", None),
            (b"a long topic name of more than sixteen bytes", None),
            ("caf\u{e9}/\u{65e5}\u{672c}/\u{1F600}".as_bytes(), None),
            (b"", Some(EMPTY)),
            (b"+", Some(WILDCARD_IN_NAME)),
            (b"#", Some(WILDCARD_IN_NAME)),
            (b"sport/+", Some(WILDCARD_IN_NAME)),
            (b"sport/#", Some(WILDCARD_IN_NAME)),
            (b"a+b", Some(WILDCARD_IN_NAME)),
            (b"abcdefgh#", Some(WILDCARD_IN_NAME)),
            ("\u{e9}/+".as_bytes(), Some(WILDCARD_IN_NAME)),
            (b"\0", Some(NUL)),
            (b"sport\0", Some(NUL)),
            (b"\xFF", Some(UTF8)),
            (b"sport/\xC0\x80", Some(UTF8)),
            (b"\xED\xA0\x80", Some(UTF8)),
            // String rules come first: UTF-8, then NUL, then wildcards.
            (b"+\xFF", Some(UTF8)),
            (b"#\0", Some(NUL)),
            (b"+/\0", Some(NUL)),
            (b"\0\xFF", Some(UTF8)),
        ];
        for &(input, expected) in cases {
            assert_eq!(
                name_rule(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(naive_name_rule(input), expected, "oracle on {input:?}");
            if let Err(e) = validate_topic_name(input) {
                assert_eq!(e.reason, ReasonCode::MALFORMED_PACKET, "{input:?}");
            }
        }
    }

    #[test]
    fn topic_filters() {
        let cases: &[(&str, Option<&str>)] = &[
            // §4.7.1.2
            ("sport/tennis/player1/#", None),
            ("sport/#", None),
            ("#", None),
            ("sport/tennis/#", None),
            ("sport/tennis#", Some(HASH_PLACE)),
            ("sport/tennis/#/ranking", Some(HASH_PLACE)),
            // §4.7.1.3
            ("+", None),
            ("+/tennis/#", None),
            ("sport+", Some(PLUS_PLACE)),
            ("sport/+/player1", None),
            ("+/+", None),
            ("/+", None),
            // §4.7.2
            ("$SYS/#", None),
            ("$SYS/monitor/+", None),
            ("+/monitor/Clients", None),
            // §4.7.3
            ("/", None),
            ("/finance", None),
            ("Accounts payable", None),
            // More placements.
            ("//", None),
            ("+/+/+", None),
            ("a//+//#", None),
            ("/#", None),
            ("+/#", None),
            ("caf\u{e9}/+/\u{1F600}/#", None),
            ("##", Some(HASH_PLACE)),
            ("#/", Some(HASH_PLACE)),
            ("#/a", Some(HASH_PLACE)),
            ("a#", Some(HASH_PLACE)),
            ("#a", Some(HASH_PLACE)),
            ("a/#b", Some(HASH_PLACE)),
            ("a/b#/", Some(HASH_PLACE)),
            ("++", Some(PLUS_PLACE)),
            ("+a", Some(PLUS_PLACE)),
            ("a+", Some(PLUS_PLACE)),
            ("a/+b/c", Some(PLUS_PLACE)),
            ("a/b+/c", Some(PLUS_PLACE)),
            ("+#", Some(PLUS_PLACE)),
            ("#+", Some(HASH_PLACE)),
            ("a+#", Some(PLUS_PLACE)),
            ("abcdefghijklmnop+", Some(PLUS_PLACE)),
            ("abcdefghijklmno/#/", Some(HASH_PLACE)),
            ("", Some(EMPTY)),
            ("a\0", Some(NUL)),
            ("#\0", Some(NUL)),
            // Shared subscriptions (§4.8.2).
            ("$share/group/#", None),
            ("$share/group/sport/+/player1", None),
            ("$share/g/a", None),
            ("$share/g//", None),
            ("$share/g/$SYS/#", None),
            ("$share/g/$share/x", None),
            ("$share/caf\u{e9}/a", None),
            ("$share/g$/a", None),
            ("$share/", Some(SHARE_NAME_EMPTY)),
            ("$share//a", Some(SHARE_NAME_EMPTY)),
            ("$share//", Some(SHARE_NAME_EMPTY)),
            ("$share/group", Some(SHARE_FORM)),
            ("$share/group/", Some(SHARE_FORM)),
            ("$share/gr+oup/a", Some(SHARE_FORM)),
            ("$share/+/a", Some(SHARE_FORM)),
            ("$share/g#/a", Some(SHARE_FORM)),
            ("$share/#", Some(SHARE_FORM)),
            ("$share/+", Some(SHARE_FORM)),
            ("$share/g/a#", Some(HASH_PLACE)),
            ("$share/g/#/a", Some(HASH_PLACE)),
            ("$share/g/a+", Some(PLUS_PLACE)),
            ("$share/g/\0", Some(NUL)),
            // Not the shared form: ordinary filters.
            ("$share", None),
            ("$share+", Some(PLUS_PLACE)),
            ("$shared/a", None),
            ("$SHARE/g/a", None),
            ("share/g/a", None),
            ("a/$share/g", None),
        ];
        for &(input, expected) in cases {
            assert_eq!(filter_rule(input.as_bytes()), expected, "{input:?}");
            if !input.starts_with("$share/") {
                assert_eq!(naive_filter_rule(input), expected, "oracle on {input:?}");
            }
            if let Err(e) = validate_topic_filter(input.as_bytes()) {
                let reason = if e.rule.starts_with("MQTT-1.5.4") {
                    ReasonCode::MALFORMED_PACKET
                } else {
                    ReasonCode::TOPIC_FILTER_INVALID
                };
                assert_eq!(e.reason, reason, "{input:?}");
            }
        }
        let bytes: &[(&[u8], &str)] = &[
            (b"\xFF", UTF8),
            (b"a/\xC0\xAF", UTF8),
            (b"a#\xFF", UTF8),
            (b"$share/\xED\xA0\x80/a", UTF8),
        ];
        for &(input, expected) in bytes {
            let e = validate_topic_filter(input).unwrap_err();
            assert_eq!(
                (e.rule, e.reason),
                (expected, ReasonCode::MALFORMED_PACKET),
                "{input:?}"
            );
        }
    }

    /// Names of every length up to 20 with one odd byte at every position, so it lands in
    /// every lane of a full word and of the padded tail.
    #[test]
    fn name_word_boundaries() {
        for len in 1..=20 {
            let base = vec![b'x'; len];
            assert_eq!(name_rule(&base), None);
            for pos in 0..len {
                let bad: [(u8, &str); 6] = [
                    (b'+', WILDCARD_IN_NAME),
                    (b'#', WILDCARD_IN_NAME),
                    (0, NUL),
                    (0xFF, UTF8),
                    (0x80, UTF8),
                    (0xC3, UTF8),
                ];
                for (byte, rule) in bad {
                    let mut v = base.clone();
                    v[pos] = byte;
                    assert_eq!(name_rule(&v), Some(rule), "{byte:#x} at {pos} of {len}");
                }
                // Bytes one off the flagged ones are fine.
                for byte in [b'*', b',', b'"', b'$', b'/', 1, 0x7F] {
                    let mut v = base.clone();
                    v[pos] = byte;
                    assert_eq!(name_rule(&v), None, "{byte:#x} at {pos} of {len}");
                }
                if pos + 1 < len {
                    let mut v = base.clone();
                    v[pos..pos + 2].copy_from_slice("\u{e9}".as_bytes());
                    assert_eq!(name_rule(&v), None, "é at {pos} of {len}");
                    // A wildcard anywhere else is still found after the UTF-8 check.
                    for w in 0..len {
                        if w != pos && w != pos + 1 {
                            let mut v = v.clone();
                            v[w] = b'#';
                            assert_eq!(name_rule(&v), Some(WILDCARD_IN_NAME), "é {pos}, # {w}");
                        }
                    }
                }
            }
        }
    }

    /// Filters of every length up to 20 with a wildcard at every position.
    #[test]
    fn filter_word_boundaries() {
        for len in 1..=20 {
            let base = vec![b'x'; len];
            assert_eq!(filter_rule(&base), None);
            for pos in 0..len {
                // Inside a level: always misplaced (unless the level is that one byte).
                for (byte, rule) in [(b'#', HASH_PLACE), (b'+', PLUS_PLACE)] {
                    let mut v = base.clone();
                    v[pos] = byte;
                    let expected = if len == 1 { None } else { Some(rule) };
                    assert_eq!(
                        filter_rule(&v),
                        expected,
                        "{} at {pos} of {len}",
                        byte as char
                    );
                }
                // A whole level: '+' anywhere, '#' only last.
                let mut v = vec![b'/'; len];
                v[pos] = b'+';
                assert_eq!(filter_rule(&v), None, "/+/ at {pos} of {len}");
                v[pos] = b'#';
                let expected = if pos + 1 == len {
                    None
                } else {
                    Some(HASH_PLACE)
                };
                assert_eq!(filter_rule(&v), expected, "/#/ at {pos} of {len}");
                v[pos] = 0;
                assert_eq!(filter_rule(&v), Some(NUL), "NUL at {pos} of {len}");
                v[pos] = 0xFF;
                assert_eq!(filter_rule(&v), Some(UTF8), "0xFF at {pos} of {len}");
            }
        }
    }

    #[test]
    fn empty_name_and_filter() {
        let e = validate_topic_name(b"").unwrap_err();
        assert_eq!((e.rule, e.reason), (EMPTY, ReasonCode::MALFORMED_PACKET));
        let e = validate_topic_filter(b"").unwrap_err();
        assert_eq!(
            (e.rule, e.reason),
            (EMPTY, ReasonCode::TOPIC_FILTER_INVALID)
        );
    }

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            // MQTT 5.0 §4.7.1.2 (3.1.1 §4.7.1.2): '#'.
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport", true),
            ("#", "sport/tennis/player1", true),
            ("#", "/", true),
            ("sport/tennis/#", "sport/tennis", true),
            ("sport/tennis/#", "sport/tennis/player1", true),
            ("sport/tennis/#", "sport/tenniss", false),
            ("sport/tennis/#", "sport", false),
            // §4.7.1.3: '+'.
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+", "sport", true),
            ("+/tennis/#", "sport/tennis", true),
            ("+/tennis/#", "sport/tennis/player1/ranking", true),
            ("+/tennis/#", "sport/golf", false),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("sport/+/player1", "sport//player1", true),
            ("sport/+/player1", "sport/tennis/player2", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            // §4.7.2: topics beginning with '$'.
            ("#", "$SYS/monitor/Clients", false),
            ("#", "$SYS", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("+/#", "$SYS/x", false),
            ("+", "$", false),
            ("$", "$", true),
            ("a/+", "a/$b", true),
            ("a/#", "a/$b", true),
            ("+/$b", "a/$b", true),
            // §4.7.3: case, spaces, leading '/', '/' alone.
            ("ACCOUNTS", "Accounts", false),
            ("Accounts", "Accounts", true),
            ("Accounts payable", "Accounts payable", true),
            ("/finance", "finance", false),
            ("finance", "/finance", false),
            ("/finance", "/finance", true),
            ("/", "/", true),
            ("+/+", "/", true),
            ("+", "/", false),
            ("#", "/", true),
            ("/#", "/", true),
            ("/#", "//", true),
            // Empty levels.
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/c", false),
            ("a//c", "a//c", true),
            ("a//c", "a/c", false),
            ("a/+", "a/", true),
            ("a/", "a", false),
            ("a", "a/", false),
            ("+/+/+", "//", true),
            ("+/+", "//", false),
            ("a/#", "a", true),
            ("a/#", "a/", true),
            ("a/#", "ab", false),
            ("a/b/#", "a", false),
            ("+/#", "a", true),
            ("+/+/#", "a", false),
            // Plain levels.
            ("a/b", "a/b", true),
            ("a/b", "a/bc", false),
            ("a/bc", "a/b", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("caf\u{e9}", "cafe\u{301}", false),
        ];
        for &(filter, topic, expected) in cases {
            assert_eq!(
                matches(filter.as_bytes(), topic.as_bytes()),
                expected,
                "{filter} ~ {topic}"
            );
            assert_eq!(
                naive_matches(filter, topic),
                expected,
                "oracle: {filter} ~ {topic}"
            );
            assert_eq!(validate_topic_filter(filter.as_bytes()), Ok(()), "{filter}");
            assert_eq!(validate_topic_name(topic.as_bytes()), Ok(()), "{topic}");
            let (f, t) = (
                TopicFilter::from_static(filter),
                TopicName::from_static(topic),
            );
            assert_eq!(f.matches(&t), expected, "{filter} ~ {topic}");
            let shared = TopicFilter::new(format!("$share/g/{filter}")).unwrap();
            assert_eq!(shared.matches(&t), expected, "$share/g/{filter} ~ {topic}");
        }
    }

    #[test]
    fn shared_parsing() {
        assert_eq!(
            parse_shared(b"$share/g/a/b"),
            Some((&b"g"[..], &b"a/b"[..]))
        );
        assert_eq!(parse_shared(b"$share/g/#"), Some((&b"g"[..], &b"#"[..])));
        assert_eq!(parse_shared(b"$share//a"), Some((&b""[..], &b"a"[..])));
        assert_eq!(parse_shared(b"$share/g/"), Some((&b"g"[..], &b""[..])));
        assert_eq!(parse_shared(b"$share/g"), None);
        assert_eq!(parse_shared(b"$share/"), None);
        assert_eq!(parse_shared(b"$share"), None);
        assert_eq!(parse_shared(b"$SHARE/g/a"), None);
        assert_eq!(parse_shared(b"a/$share/g/a"), None);
        let f = TopicFilter::from_static("$share/caf\u{e9}/sport/+");
        assert_eq!(f.shared(), Some(("caf\u{e9}", "sport/+")));
        assert_eq!(TopicFilter::from_static("sport/+").shared(), None);
        // The filter being shared matches; the prefix is not part of the topic.
        assert!(f.matches(&TopicName::from_static("sport/tennis")));
        assert!(!f.matches(&TopicName::from_static("$share/caf\u{e9}/sport/tennis")));
        assert!(!TopicFilter::from_static("$share/g/#").matches(&TopicName::from_static("$SYS/a")));
        // A plain filter that spells "$share/..." matches literally.
        assert!(matches(b"$share/g/a", b"$share/g/a"));
        assert!(!matches(b"$share/g/a", b"a"));
    }

    #[test]
    fn topic_name_type() {
        let t = TopicName::from_static("sport/caf\u{e9}");
        assert_eq!(t.as_str(), "sport/caf\u{e9}");
        assert_eq!(t.as_bytes(), "sport/caf\u{e9}".as_bytes());
        assert_eq!(t.bytes(), &Bytes::from_static("sport/caf\u{e9}".as_bytes()));
        assert_eq!(t.len(), 11);
        assert!(!t.is_empty());
        assert_eq!(t.to_string(), "sport/caf\u{e9}");
        assert_eq!(format!("{t:?}"), "\"sport/caf\u{e9}\"");
        assert_eq!(
            t.clone().into_bytes(),
            Bytes::from_static("sport/caf\u{e9}".as_bytes())
        );
        let from: TopicName = "sport/caf\u{e9}".into();
        assert_eq!(from, t);
        assert_eq!(
            TopicName::new("a/b").unwrap(),
            TopicName::new(Bytes::from_static(b"a/b")).unwrap()
        );
        assert_eq!(TopicName::new(vec![b'a'; 65_535]).unwrap().len(), 65_535);
        let e = TopicName::new(vec![b'a'; 65_536]).unwrap_err();
        assert_eq!(
            (e.rule, e.reason),
            ("MQTT-4.7.3-3", ReasonCode::MALFORMED_PACKET)
        );
        assert_eq!(TopicName::new("a/+").unwrap_err().rule, WILDCARD_IN_NAME);
        assert_eq!(TopicName::new("").unwrap_err().rule, EMPTY);
        let d = TopicName::default();
        assert!(d.is_empty());
        assert_eq!(d.as_str(), "");
        assert_eq!(TopicName::new_unchecked(Bytes::new()), d);
        let set: HashSet<TopicName> = ["a".into(), "b".into(), "a".into()].into();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn topic_filter_type() {
        let f = TopicFilter::from_static("sport/+/#");
        assert_eq!(f.as_str(), "sport/+/#");
        assert_eq!(f.as_bytes(), b"sport/+/#");
        assert_eq!(f.bytes(), &Bytes::from_static(b"sport/+/#"));
        assert_eq!(f.len(), 9);
        assert!(!f.is_empty());
        assert_eq!(f.to_string(), "sport/+/#");
        assert_eq!(format!("{f:?}"), "\"sport/+/#\"");
        assert_eq!(f.clone().into_bytes(), Bytes::from_static(b"sport/+/#"));
        assert!(f.has_wildcards());
        assert!(TopicFilter::from_static("$share/g/#").has_wildcards());
        assert!(!TopicFilter::from_static("sport/tennis").has_wildcards());
        assert!(!TopicFilter::from_static("$share/g/a").has_wildcards());
        let from: TopicFilter = "sport/+/#".into();
        assert_eq!(from, f);
        let e = TopicFilter::new(vec![b'a'; 65_536]).unwrap_err();
        assert_eq!(
            (e.rule, e.reason),
            ("MQTT-4.7.3-3", ReasonCode::MALFORMED_PACKET)
        );
        assert_eq!(TopicFilter::new("a#").unwrap_err().rule, HASH_PLACE);
        assert_eq!(
            TopicFilter::new_unchecked(Bytes::from_static(b"x")).as_str(),
            "x"
        );
        let set: HashSet<TopicFilter> = ["#".into(), "+".into(), "#".into()].into();
        assert_eq!(set.len(), 2);
    }

    #[test]
    #[should_panic(expected = "not a valid topic name")]
    fn topic_name_from_static_panics() {
        let _ = TopicName::from_static("a/#");
    }

    #[test]
    #[should_panic(expected = "not a valid topic filter")]
    fn topic_filter_from_static_panics() {
        let _ = TopicFilter::from_static("a/#/b");
    }

    #[test]
    #[should_panic(expected = "not a valid topic filter")]
    fn topic_filter_from_panics() {
        let _: TopicFilter = "$share/g".into();
    }

    /// A valid filter from levels over a tiny alphabet, so filters and topics collide often.
    fn filter_strategy() -> impl Strategy<Value = String> {
        let level = prop_oneof![
            Just(""),
            Just("a"),
            Just("b"),
            Just("$"),
            Just("$a"),
            Just("ab"),
            Just("+"),
            Just("+"),
        ];
        (prop::collection::vec(level, 1..5), any::<bool>())
            .prop_map(|(levels, hash)| {
                let mut f = levels.join("/");
                if hash {
                    if f.is_empty() && levels.len() == 1 {
                        f.push('#');
                    } else {
                        f.push_str("/#");
                    }
                }
                f
            })
            .prop_filter("topic filters are not empty", |f| !f.is_empty())
    }

    /// A valid topic name over the same alphabet.
    fn topic_strategy() -> impl Strategy<Value = String> {
        let level = prop_oneof![
            Just(""),
            Just("a"),
            Just("b"),
            Just("$"),
            Just("$a"),
            Just("ab")
        ];
        prop::collection::vec(level, 1..6)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("topic names are not empty", |t| !t.is_empty())
    }

    proptest! {
        #[test]
        fn name_agrees_with_naive(b in prop::collection::vec(
            prop_oneof![
                6 => Just(b'a'), 2 => Just(b'/'), 1 => Just(b'$'), 1 => Just(b'+'), 1 => Just(b'#'),
                1 => Just(0u8), 1 => Just(0xC3u8), 1 => Just(0xA9u8), 1 => Just(0xFFu8),
            ],
            0..30,
        )) {
            prop_assert_eq!(name_rule(&b), naive_name_rule(&b));
        }

        #[test]
        fn name_agrees_with_naive_on_any_bytes(b in prop::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(name_rule(&b), naive_name_rule(&b));
        }

        #[test]
        fn name_agrees_with_naive_on_strings(s in any::<String>()) {
            prop_assert_eq!(name_rule(s.as_bytes()), naive_name_rule(s.as_bytes()));
        }

        #[test]
        fn filter_agrees_with_naive(s in "[ab$/+#\u{0}\u{e9}]{0,24}") {
            prop_assume!(!s.starts_with("$share/"));
            prop_assert_eq!(filter_rule(s.as_bytes()), naive_filter_rule(&s));
        }

        #[test]
        fn generated_filters_are_valid(f in filter_strategy()) {
            prop_assert_eq!(validate_topic_filter(f.as_bytes()), Ok(()));
        }

        #[test]
        fn matches_agrees_with_naive(f in filter_strategy(), t in topic_strategy()) {
            prop_assert_eq!(validate_topic_name(t.as_bytes()), Ok(()));
            prop_assert_eq!(matches(f.as_bytes(), t.as_bytes()), naive_matches(&f, &t), "{} ~ {}", f, t);
        }

        #[test]
        fn matches_agrees_with_naive_on_raw_strings(f in "[ab$/+#]{1,12}", t in "[ab$/]{1,12}") {
            prop_assume!(validate_topic_filter(f.as_bytes()).is_ok());
            prop_assert_eq!(matches(f.as_bytes(), t.as_bytes()), naive_matches(&f, &t), "{} ~ {}", f, t);
        }

        #[test]
        fn a_name_matches_itself(t in topic_strategy()) {
            prop_assert!(matches(t.as_bytes(), t.as_bytes()));
        }

        #[test]
        fn matches_never_panics(f in prop::collection::vec(any::<u8>(), 0..20),
                                t in prop::collection::vec(any::<u8>(), 0..20)) {
            let _ = matches(&f, &t);
        }

        #[test]
        fn shared_filters_validate_and_split(name in "[ab$]{1,4}", f in filter_strategy()) {
            let full = format!("$share/{name}/{f}");
            prop_assert_eq!(validate_topic_filter(full.as_bytes()), Ok(()));
            let tf = TopicFilter::new(full).unwrap();
            prop_assert_eq!(tf.shared(), Some((name.as_str(), f.as_str())));
        }
    }
}
