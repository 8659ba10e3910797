//! Bounded reading and writing of TLS's length-prefixed fields.
//!
//! Every read checks the remaining length first and fails with
//! [`CloakError::Malformed`]; nothing here allocates on the peer's say-so.

use crate::CloakError;

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CloakError> {
        if self.buf.len() < n {
            return Err(CloakError::Malformed("a field runs past its container"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CloakError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CloakError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u24(&mut self) -> Result<usize, CloakError> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A sub-reader over a field with a one-byte length prefix.
    pub(crate) fn prefixed8(&mut self) -> Result<Reader<'a>, CloakError> {
        let n = usize::from(self.u8()?);
        Ok(Reader::new(self.take(n)?))
    }

    /// A sub-reader over a field with a two-byte length prefix.
    pub(crate) fn prefixed16(&mut self) -> Result<Reader<'a>, CloakError> {
        let n = usize::from(self.u16()?);
        Ok(Reader::new(self.take(n)?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn expect_end(&self, what: &'static str) -> Result<(), CloakError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CloakError::Malformed(what))
        }
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Writes a length-prefixed field of `width` bytes (1, 2 or 3) around what
/// `body` appends. Lengths come from our own builders, never from a peer;
/// one too long for its prefix saturates (and the peer rejects it) rather
/// than panicking.
pub(crate) fn prefixed(out: &mut Vec<u8>, width: usize, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 3][..width]);
    body(out);
    let len = out.len() - at - width;
    let max = (1usize << (8 * width)) - 1;
    let bytes = (len.min(max) as u32).to_be_bytes();
    out[at..at + width].copy_from_slice(&bytes[4 - width..]);
}
