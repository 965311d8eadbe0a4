//! A bounds-checked writer over a caller-owned buffer, shared by every encoder.
use zerocopy::{Immutable, IntoBytes};

use crate::error::EncodeError;

/// Writes into `buf` from the start; every write is checked against the end.
///
/// Encoders compute the total size first, call [`Writer::reserve`] once, and then
/// write without further failure, so a too-small buffer is reported before any byte
/// is written.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer at the start of `buf`.
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    /// Fails unless `total` bytes fit from the start of the buffer.
    pub(crate) fn reserve(&self, total: usize) -> Result<(), EncodeError> {
        if total > self.buf.len() {
            Err(EncodeError::BufferTooSmall {
                need: total,
                have: self.buf.len(),
            })
        } else {
            Ok(())
        }
    }

    /// Bytes written so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Appends raw bytes.
    pub(crate) fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let end = self
            .pos
            .checked_add(b.len())
            .ok_or(EncodeError::TooLarge { what: "message" })?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall { need: end, have: 0 })?;
        dst.copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    /// Appends the bytes of an ABI struct.
    pub(crate) fn put<T: IntoBytes + Immutable>(&mut self, v: &T) -> Result<(), EncodeError> {
        self.bytes(v.as_bytes())
    }

    /// Appends the first `n` bytes of an ABI struct (compat sizes of older minors).
    pub(crate) fn put_prefix<T: IntoBytes + Immutable>(
        &mut self,
        v: &T,
        n: usize,
    ) -> Result<(), EncodeError> {
        let b = v.as_bytes();
        self.bytes(b.get(..n).unwrap_or(b))
    }

    /// Appends `n` zero bytes.
    pub(crate) fn zeros(&mut self, n: usize) -> Result<(), EncodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(EncodeError::TooLarge { what: "message" })?;
        let have = self.buf.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall { need: end, have })?;
        dst.fill(0);
        self.pos = end;
        Ok(())
    }

    /// Appends zero bytes up to the next multiple of 8.
    pub(crate) fn pad8(&mut self) -> Result<(), EncodeError> {
        self.zeros(pad8(self.pos) - self.pos)
    }

    /// Overwrites bytes at `at` (used to patch a length after the body is written).
    pub(crate) fn patch(&mut self, at: usize, b: &[u8]) -> Result<(), EncodeError> {
        let have = self.buf.len();
        let end = at
            .checked_add(b.len())
            .ok_or(EncodeError::TooLarge { what: "message" })?;
        self.buf
            .get_mut(at..end)
            .ok_or(EncodeError::BufferTooSmall { need: end, have })?
            .copy_from_slice(b);
        Ok(())
    }
}

/// `n` rounded up to a multiple of 8 (saturating at the largest multiple of 8).
pub(crate) const fn pad8(n: usize) -> usize {
    match n.checked_add(7) {
        Some(v) => v & !7,
        None => usize::MAX & !7,
    }
}

/// Converts a total message length to the header's `u32`.
pub(crate) fn len_u32(total: usize) -> Result<u32, EncodeError> {
    u32::try_from(total).map_err(|_| EncodeError::TooLarge {
        what: "message length",
    })
}
