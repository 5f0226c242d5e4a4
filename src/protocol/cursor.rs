//! Bounds-checked reading of a complete frame body, and the primitive writers.
//!
//! [`Reader`] walks a frame that is already fully buffered (the decoder checks the fixed header
//! first), so running out of bytes here means a length field overran its packet: a malformed
//! packet (MQTT 5.0 §1.5, §2.1.4), never "need more". Slices are zero-copy [`Bytes`] views.
//!
//! Pure; no I/O.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{EncodeError, Error};
use super::string::Str;
use super::varint;

const OVERRUN: Error = Error::malformed("§1.5", "a length field overruns the packet");

/// A cursor over one frame body.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        let b = *self.buf.get(self.pos).ok_or(OVERRUN)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        let s = self.buf.get(self.pos..self.pos + 2).ok_or(OVERRUN)?;
        self.pos += 2;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        let s = self.buf.get(self.pos..self.pos + 4).ok_or(OVERRUN)?;
        self.pos += 4;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// A Variable Byte Integer (§1.5.5).
    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u32, Error> {
        match varint::decode(&self.buf[self.pos..])? {
            Some((v, n)) => {
                self.pos += n;
                Ok(v)
            }
            None => Err(OVERRUN),
        }
    }

    /// `n` bytes as a zero-copy slice.
    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, Error> {
        if n > self.remaining() {
            return Err(OVERRUN);
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// Everything left.
    #[inline]
    pub(crate) fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }

    /// A two-byte-length-prefixed Binary Data field (§1.5.6).
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<Bytes, Error> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// A UTF-8 Encoded String (§1.5.4), validated.
    #[inline]
    pub(crate) fn string(&mut self) -> Result<Str, Error> {
        let b = self.binary()?;
        super::string::validate_utf8(&b)?;
        Ok(Str::new_unchecked(b))
    }

    /// The next `n` bytes as a sub-reader, advancing past them.
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, Error> {
        Ok(Reader::new(self.take(n)?))
    }
}

/// Writes a Binary Data / UTF-8 string field: two-byte length, then the bytes.
#[inline]
pub(crate) fn put_binary(out: &mut BytesMut, b: &[u8]) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong)?;
    out.put_u16(n);
    out.put_slice(b);
    Ok(())
}

/// Writes a Variable Byte Integer.
#[inline]
pub(crate) fn put_varint(out: &mut BytesMut, v: u32) {
    let mut tmp = [0u8; 4];
    let n = varint::encode(v, &mut tmp);
    out.put_slice(&tmp[..n]);
}
