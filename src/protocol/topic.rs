//! TEMPORARY stub, replaced by the real module.
use bytes::Bytes;
use super::error::Error;
pub fn validate_topic_name(b: &[u8]) -> Result<(), Error> {
    if b.is_empty() { return Err(Error::malformed("MQTT-4.7.3-1", "empty")); }
    if b.iter().any(|&c| c == b'+' || c == b'#') { return Err(Error::malformed("MQTT-3.3.2-2", "wild")); }
    super::string::validate_utf8(b)
}
pub fn validate_topic_filter(b: &[u8]) -> Result<(), Error> {
    if b.is_empty() { return Err(Error::malformed("MQTT-4.7.3-1", "empty")); }
    super::string::validate_utf8(b)
}
pub fn parse_shared(f: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = f.strip_prefix(b"$share/")?;
    let i = rest.iter().position(|&c| c == b'/')?;
    Some((&rest[..i], &rest[i + 1..]))
}
#[derive(Clone, PartialEq, Eq, Hash, Default, Debug)]
pub struct TopicName(Bytes);
impl TopicName {
    pub fn new(b: impl Into<Bytes>) -> Result<Self, Error> { let b = b.into(); validate_topic_name(&b)?; Ok(Self(b)) }
    pub fn from_static(s: &'static str) -> Self { Self(Bytes::from_static(s.as_bytes())) }
    pub(crate) fn new_unchecked(b: Bytes) -> Self { Self(b) }
    pub fn as_bytes(&self) -> &[u8] { &self.0 }
    pub fn len(&self) -> usize { self.0.len() }
    pub fn is_empty(&self) -> bool { self.0.is_empty() }
}
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TopicFilter(Bytes);
impl TopicFilter {
    pub fn new(b: impl Into<Bytes>) -> Result<Self, Error> { let b = b.into(); validate_topic_filter(&b)?; Ok(Self(b)) }
    pub fn from_static(s: &'static str) -> Self { Self(Bytes::from_static(s.as_bytes())) }
    pub(crate) fn new_unchecked(b: Bytes) -> Self { Self(b) }
    pub fn as_bytes(&self) -> &[u8] { &self.0 }
    pub fn len(&self) -> usize { self.0.len() }
    pub fn is_empty(&self) -> bool { self.0.is_empty() }
}
