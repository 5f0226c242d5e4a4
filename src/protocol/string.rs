//! MQTT UTF-8 Encoded Strings (MQTT 5.0 §1.5.4, 3.1.1 §1.5.3): their validation and [`Str`],
//! the owned, validated string every decoded string field becomes.
//!
//! A UTF-8 Encoded String must be well-formed UTF-8, so no surrogate code points
//! ([MQTT-1.5.4-1]), and must not contain U+0000 ([MQTT-1.5.4-2]); its two-byte length prefix
//! bounds it to 65 535 bytes. Both breaches make the packet malformed (0x81).
//!
//! [`validate_utf8`] reads eight bytes at a time and only hands the input to the full UTF-8
//! decoder once it has seen a byte with the high bit set, so pure-ASCII strings (nearly every
//! client identifier, topic and property) cost one pass of word operations.
//!
//! Pure; runs on whichever shard decodes; no I/O.

use core::fmt;
use core::ops::Deref;

use bytes::Bytes;

use super::error::Error;

/// `0x01` in every byte of a word.
pub(super) const LO: u64 = u64::from_le_bytes([0x01; 8]);
/// `0x80` in every byte of a word.
pub(super) const HI: u64 = u64::from_le_bytes([0x80; 8]);

/// The byte `c` in every byte of a word.
#[inline(always)]
pub(super) const fn splat(c: u8) -> u64 {
    LO * c as u64
}

/// Non-zero exactly when some byte of `w` is zero. The result's flag bits may also be set in
/// bytes above the first zero byte (a borrow runs up), so it answers "whether", not "where".
#[inline(always)]
pub(super) const fn has_zero_byte(w: u64) -> u64 {
    w.wrapping_sub(LO) & !w & HI
}

/// An 8-byte chunk as a word (byte order is irrelevant to the "any byte" tests above).
#[inline(always)]
pub(super) fn load(chunk: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(chunk);
    u64::from_le_bytes(a)
}

/// The last `tail.len() < 8` bytes as a word, padded with `fill`, which the caller picks so
/// that it can never raise a flag.
#[inline(always)]
pub(super) fn load_tail(tail: &[u8], fill: u8) -> u64 {
    // Two overlapping fixed-size loads instead of a variable-length copy through the stack,
    // which would defeat store-to-load forwarding on the hot path.
    let n = tail.len();
    debug_assert!(n < 8);
    let v = if n >= 4 {
        let lo = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
        let hi = u32::from_le_bytes([tail[n - 4], tail[n - 3], tail[n - 2], tail[n - 1]]) as u64;
        lo | hi << (8 * (n - 4))
    } else if n >= 2 {
        let lo = u16::from_le_bytes([tail[0], tail[1]]) as u64;
        let hi = u16::from_le_bytes([tail[n - 2], tail[n - 1]]) as u64;
        lo | hi << (8 * (n - 2))
    } else if n == 1 {
        tail[0] as u64
    } else {
        0
    };
    let mask = (1u64 << (8 * n)) - 1;
    (v & mask) | (u64::from_le_bytes([fill; 8]) & !mask)
}

/// Checks that `b` is an MQTT UTF-8 Encoded String's character data: well-formed UTF-8
/// ([MQTT-1.5.4-1]) with no U+0000 ([MQTT-1.5.4-2]). The length limit is not checked here.
///
/// When the input breaks both rules, the UTF-8 error is reported.
///
/// # Errors
///
/// A malformed-packet [`Error`] naming the statement broken.
pub fn validate_utf8(b: &[u8]) -> Result<(), Error> {
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let w = load(chunk);
        if (w | has_zero_byte(w)) & HI != 0 {
            return validate_utf8_slow(&b[at..]);
        }
        at += 8;
    }
    // The padding byte 'a' is neither zero nor high.
    let w = load_tail(chunks.remainder(), b'a');
    if (w | has_zero_byte(w)) & HI != 0 {
        return validate_utf8_slow(&b[at..]);
    }
    Ok(())
}

/// The rest of a string whose prefix was checked to be ASCII without NUL. Splitting there
/// cuts no character, so the whole is valid exactly when this rest is.
#[cold]
fn validate_utf8_slow(rest: &[u8]) -> Result<(), Error> {
    if !rest.is_ascii() && core::str::from_utf8(rest).is_err() {
        return Err(Error::malformed(
            "MQTT-1.5.4-1",
            "string is not well-formed UTF-8",
        ));
    }
    if rest.contains(&0) {
        return Err(Error::malformed("MQTT-1.5.4-2", "string contains U+0000"));
    }
    Ok(())
}

/// The longest string a two-byte length prefix can describe (§1.5.4).
const MAX_LEN: usize = u16::MAX as usize;

/// A validated MQTT UTF-8 Encoded String: well-formed UTF-8, no U+0000, at most 65 535 bytes.
///
/// Holds the bytes it was decoded from (a [`Bytes`] slice of the packet), so building one
/// copies nothing. Derefs to `str`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Str(Bytes);

/// The accessors and formatting shared by the validated `Bytes` newtypes ([`Str`],
/// [`TopicName`](super::topic::TopicName), [`TopicFilter`](super::topic::TopicFilter)); each
/// type keeps its own constructors and `as_str` (with its own safety argument).
macro_rules! bytes_newtype {
    ($t:ident) => {
        impl $t {
            /// The bytes.
            #[inline]
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// The underlying [`Bytes`].
            #[inline]
            pub fn bytes(&self) -> &Bytes {
                &self.0
            }

            /// The underlying [`Bytes`], by value.
            #[inline]
            pub fn into_bytes(self) -> Bytes {
                self.0
            }

            /// The length in bytes.
            #[inline]
            pub fn len(&self) -> usize {
                self.0.len()
            }

            /// Whether it is empty.
            #[inline]
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            /// The same value in an allocation of its own, so that it no longer keeps the
            /// (larger) buffer it was decoded from alive.
            pub fn detached(&self) -> Self {
                Self(Bytes::copy_from_slice(&self.0))
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(super) use bytes_newtype;

bytes_newtype!(Str);

impl Str {
    /// Validates `b` ([`validate_utf8`] and the 65 535-byte limit of §1.5.4).
    ///
    /// # Errors
    ///
    /// A malformed-packet [`Error`] when `b` is too long, not well-formed UTF-8 or contains
    /// U+0000.
    pub fn new(b: Bytes) -> Result<Str, Error> {
        if b.len() > MAX_LEN {
            return Err(Error::malformed("§1.5.4", "string longer than 65535 bytes"));
        }
        validate_utf8(&b)?;
        Ok(Str(b))
    }

    /// A string from a literal.
    ///
    /// # Panics
    ///
    /// When `s` is not a valid MQTT string: it contains U+0000 or is longer than 65 535 bytes.
    pub fn from_static(s: &'static str) -> Str {
        match Str::new(Bytes::from_static(s.as_bytes())) {
            Ok(s) => s,
            Err(e) => panic!("{s:?} is not a valid MQTT string: {e}"),
        }
    }

    /// Wraps bytes the caller has already validated.
    ///
    /// The bytes MUST be well-formed UTF-8: [`Str::as_str`] relies on it without checking
    /// (debug builds assert it). They should also pass [`validate_utf8`] and the length limit.
    #[inline]
    pub(crate) fn new_unchecked(b: Bytes) -> Str {
        debug_assert!(
            core::str::from_utf8(&b).is_ok(),
            "Str::new_unchecked on invalid UTF-8"
        );
        Str(b)
    }

    /// The string.
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor guarantees the bytes are well-formed UTF-8: `new` checks
        // them with `validate_utf8`, `from_static` goes through `new`, `Default` is empty, and
        // `new_unchecked`'s contract (asserted in debug builds) requires it of its callers.
        // `Bytes` is immutable and the field is private, so nothing changes them afterwards.
        unsafe { core::str::from_utf8_unchecked(&self.0) }
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<Str> for str {
    fn eq(&self, other: &Str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<Str> for &str {
    fn eq(&self, other: &Str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// Panics like [`Str::from_static`] when the literal is not a valid MQTT string.
impl From<&'static str> for Str {
    fn from(s: &'static str) -> Str {
        Str::from_static(s)
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Deref for Str {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::reason::ReasonCode;

    fn rule(b: &[u8]) -> Option<&'static str> {
        validate_utf8(b).err().map(|e| e.rule)
    }

    /// What the rules say, the slow way.
    fn naive_rule(b: &[u8]) -> Option<&'static str> {
        match core::str::from_utf8(b) {
            Err(_) => Some("MQTT-1.5.4-1"),
            Ok(s) if s.contains('\0') => Some("MQTT-1.5.4-2"),
            Ok(_) => None,
        }
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"", None),
            (b"a", None),
            (b"hello world", None),
            (b"exactly8", None),
            (b"sixteen bytes!!!", None),
            ("h\u{e9}llo".as_bytes(), None),
            ("\u{65e5}\u{672c}\u{8a9e}".as_bytes(), None),
            ("\u{1F600} emoji".as_bytes(), None),
            // U+FEFF must be kept as is [MQTT-1.5.4-3]; it is valid.
            (b"\xEF\xBB\xBFbom", None),
            // Noncharacters and control characters are allowed (a receiver MAY refuse them).
            ("\u{FFFF}\u{1}\u{7F}\u{9F}".as_bytes(), None),
            ("\u{10FFFF}".as_bytes(), None),
            (b"\0", Some("MQTT-1.5.4-2")),
            (b"a\0b", Some("MQTT-1.5.4-2")),
            (b"abcdefgh\0", Some("MQTT-1.5.4-2")),
            ("\u{e9}\0".as_bytes(), Some("MQTT-1.5.4-2")),
            // Overlong encoding of U+0000 (modified UTF-8) is ill-formed, not a NUL.
            (b"\xC0\x80", Some("MQTT-1.5.4-1")),
            (b"\xC1\xBF", Some("MQTT-1.5.4-1")),
            // Surrogates U+D800 and U+DFFF.
            (b"\xED\xA0\x80", Some("MQTT-1.5.4-1")),
            (b"abc\xED\xBF\xBF", Some("MQTT-1.5.4-1")),
            // Above U+10FFFF.
            (b"\xF4\x90\x80\x80", Some("MQTT-1.5.4-1")),
            (b"\xFF", Some("MQTT-1.5.4-1")),
            (b"\xFE", Some("MQTT-1.5.4-1")),
            (b"\x80", Some("MQTT-1.5.4-1")),
            (b"\xE6\x97", Some("MQTT-1.5.4-1")),
            (b"abcdefg\xE6", Some("MQTT-1.5.4-1")),
            // Both broken: the UTF-8 error wins.
            (b"\0\xFF", Some("MQTT-1.5.4-1")),
            (b"\xFF\0", Some("MQTT-1.5.4-1")),
        ];
        for &(input, expected) in cases {
            assert_eq!(rule(input), expected, "{input:?}");
            assert_eq!(naive_rule(input), expected, "oracle disagrees on {input:?}");
        }
    }

    #[test]
    fn errors_are_malformed() {
        for input in [&b"\0"[..], b"\xFF"] {
            let e = validate_utf8(input).unwrap_err();
            assert_eq!(e.reason, ReasonCode::MALFORMED_PACKET);
        }
    }

    /// Every length from 0 to 20 with one odd byte at every position, so the odd byte lands
    /// in every lane of a full word and of the padded tail.
    #[test]
    fn word_boundaries() {
        for len in 0..=20 {
            let base = vec![b'x'; len];
            assert_eq!(rule(&base), None, "len {len}");
            for pos in 0..len {
                let mut v = base.clone();
                v[pos] = 0;
                assert_eq!(rule(&v), Some("MQTT-1.5.4-2"), "NUL at {pos} of {len}");
                for bad in [0x80, 0xBF, 0xC0, 0xC3, 0xE2, 0xF0, 0xF8, 0xFF] {
                    v[pos] = bad;
                    assert_eq!(rule(&v), Some("MQTT-1.5.4-1"), "{bad:#x} at {pos} of {len}");
                }
                // A valid two-byte character starting here.
                if pos + 1 < len {
                    let mut v = base.clone();
                    v[pos] = 0xC3;
                    v[pos + 1] = 0xA9;
                    assert_eq!(rule(&v), None, "é at {pos} of {len}");
                    // ... with a NUL after it, or before it.
                    for nul in 0..len {
                        if nul != pos && nul != pos + 1 {
                            let mut v = v.clone();
                            v[nul] = 0;
                            assert_eq!(rule(&v), Some("MQTT-1.5.4-2"), "é at {pos}, NUL at {nul}");
                        }
                    }
                }
                // A valid four-byte character starting here.
                if pos + 3 < len {
                    let mut v = base.clone();
                    v[pos..pos + 4].copy_from_slice("\u{1F600}".as_bytes());
                    assert_eq!(rule(&v), None, "emoji at {pos} of {len}");
                    // Truncated.
                    v[pos + 3] = b'x';
                    assert_eq!(
                        rule(&v),
                        Some("MQTT-1.5.4-1"),
                        "cut emoji at {pos} of {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn new_checks_everything() {
        assert_eq!(Str::new(Bytes::from_static(b"abc")).unwrap(), "abc");
        assert_eq!(
            Str::new(Bytes::from_static(b"a\0")).unwrap_err().rule,
            "MQTT-1.5.4-2"
        );
        assert_eq!(
            Str::new(Bytes::from_static(b"\xC0\x80")).unwrap_err().rule,
            "MQTT-1.5.4-1"
        );
        let max = Bytes::from(vec![b'a'; 65_535]);
        assert_eq!(Str::new(max).unwrap().len(), 65_535);
        let e = Str::new(Bytes::from(vec![b'a'; 65_536])).unwrap_err();
        assert_eq!(e.rule, "§1.5.4");
        assert_eq!(e.reason, ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn accessors_and_traits() {
        let s = Str::from_static("h\u{e9}llo");
        assert_eq!(s.as_str(), "h\u{e9}llo");
        assert_eq!(s.as_bytes(), "h\u{e9}llo".as_bytes());
        assert_eq!(s.bytes(), &Bytes::from_static("h\u{e9}llo".as_bytes()));
        assert_eq!(s.len(), 6);
        assert!(!s.is_empty());
        assert_eq!(format!("{s}"), "h\u{e9}llo");
        assert_eq!(format!("{s:?}"), "\"h\u{e9}llo\"");
        assert_eq!(format!("{:?}", Str::from_static("a\"b")), r#""a\"b""#);
        assert!(s == *"h\u{e9}llo");
        assert!(s == "h\u{e9}llo");
        assert!("h\u{e9}llo" == s);
        assert!(*"h\u{e9}llo" == s);
        assert!(s != "hello");
        let r: &str = s.as_ref();
        assert_eq!(r, "h\u{e9}llo");
        // Deref to str.
        assert!(s.starts_with("h\u{e9}"));
        assert_eq!(s.chars().count(), 5);
        let from: Str = "hello".into();
        assert_eq!(from, Str::new(Bytes::from_static(b"hello")).unwrap());
        let d = Str::default();
        assert!(d.is_empty());
        assert_eq!(d, "");
        let set: HashSet<Str> = [Str::from("a"), Str::from("b"), Str::from("a")].into();
        assert_eq!(set.len(), 2);
        assert_eq!(
            s.clone().into_bytes(),
            Bytes::from_static("h\u{e9}llo".as_bytes())
        );
        assert_eq!(Str::new_unchecked(Bytes::from_static(b"x")), "x");
    }

    #[test]
    #[should_panic(expected = "not a valid MQTT string")]
    fn from_static_panics_on_nul() {
        let _ = Str::from_static("a\0b");
    }

    #[test]
    #[should_panic(expected = "not a valid MQTT string")]
    fn from_panics_on_nul() {
        let _: Str = "\0".into();
    }

    /// Bytes drawn mostly from the interesting ones: ASCII, NUL, lead and continuation bytes,
    /// the pieces of surrogates and overlongs.
    fn tricky_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => Just(b'a'),
            1 => Just(0u8),
            1 => Just(0x7Fu8),
            2 => 0x80u8..=0xBF,
            1 => Just(0xC0u8),
            1 => Just(0xC3u8),
            1 => Just(0xE2u8),
            1 => Just(0xEDu8),
            1 => Just(0xF0u8),
            1 => Just(0xF4u8),
            1 => Just(0xFFu8),
        ];
        prop::collection::vec(byte, 0..40)
    }

    proptest! {
        #[test]
        fn agrees_with_std_on_bytes(b in prop::collection::vec(any::<u8>(), 0..64)) {
            let expected = core::str::from_utf8(&b).is_ok_and(|s| !s.contains('\0'));
            prop_assert_eq!(validate_utf8(&b).is_ok(), expected);
            prop_assert_eq!(rule(&b), naive_rule(&b));
        }

        #[test]
        fn agrees_with_std_on_tricky_bytes(b in tricky_bytes()) {
            let expected = core::str::from_utf8(&b).is_ok_and(|s| !s.contains('\0'));
            prop_assert_eq!(validate_utf8(&b).is_ok(), expected);
            prop_assert_eq!(rule(&b), naive_rule(&b));
        }

        #[test]
        fn agrees_with_std_on_strings(s in any::<String>()) {
            prop_assert_eq!(validate_utf8(s.as_bytes()).is_ok(), !s.contains('\0'));
            prop_assert_eq!(rule(s.as_bytes()), naive_rule(s.as_bytes()));
        }

        #[test]
        fn agrees_with_std_on_mostly_ascii_strings(s in "[a-z/\u{0}\u{e9}\u{1F600}]{0,40}") {
            prop_assert_eq!(validate_utf8(s.as_bytes()).is_ok(), !s.contains('\0'));
        }

        #[test]
        fn str_round_trips(s in "[^\u{0}]{0,40}") {
            let v = Str::new(Bytes::from(s.clone())).unwrap();
            prop_assert_eq!(v.as_str(), s.as_str());
        }
    }
}
