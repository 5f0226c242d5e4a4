//! TEMPORARY stub, replaced by the real module.
use bytes::Bytes;
use super::error::Error;
pub fn validate_utf8(b: &[u8]) -> Result<(), Error> {
    let s = core::str::from_utf8(b).map_err(|_| Error::malformed("MQTT-1.5.4-1", "bad utf8"))?;
    if s.contains('\0') { return Err(Error::malformed("MQTT-1.5.4-2", "nul")); }
    Ok(())
}
#[derive(Clone, PartialEq, Eq, Hash, Default, Debug)]
pub struct Str(Bytes);
impl Str {
    pub fn new(b: Bytes) -> Result<Str, Error> { validate_utf8(&b)?; Ok(Str(b)) }
    pub fn from_static(s: &'static str) -> Str { Str(Bytes::from_static(s.as_bytes())) }
    pub(crate) fn new_unchecked(b: Bytes) -> Str { Str(b) }
    pub fn as_str(&self) -> &str { core::str::from_utf8(&self.0).unwrap() }
    pub fn as_bytes(&self) -> &[u8] { &self.0 }
    pub fn into_bytes(self) -> Bytes { self.0 }
    pub fn len(&self) -> usize { self.0.len() }
    pub fn is_empty(&self) -> bool { self.0.is_empty() }
}
