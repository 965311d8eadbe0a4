//! A cursor over a request body: every read is bounds-checked and reports a
//! [`ParseError`] naming the opcode and the field, never a panic.
use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::ParseError;
use crate::opcode::Opcode;

/// Reads fixed structs, NUL-terminated names, sized byte runs and counted arrays
/// from the front of a body.
pub(crate) struct Reader<'a> {
    opcode: Opcode,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `body` of a request with `opcode` (used in errors).
    pub(crate) fn new(opcode: Opcode, body: &'a [u8]) -> Self {
        Reader { opcode, rest: body }
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    fn short(&self, what: &'static str, need: usize) -> ParseError {
        ParseError::ShortBody {
            opcode: self.opcode,
            what,
            need,
            have: self.rest.len(),
        }
    }

    /// Borrows a whole `T` from the front. `T` has alignment 1 (every ABI struct
    /// does), so the only possible failure is a short body.
    pub(crate) fn fixed<T>(&mut self, what: &'static str) -> Result<&'a T, ParseError>
    where
        T: FromBytes + KnownLayout + Immutable,
    {
        match T::ref_from_prefix(self.rest) {
            Ok((v, rest)) => {
                self.rest = rest;
                Ok(v)
            }
            Err(_) => Err(self.short(what, size_of::<T>())),
        }
    }

    /// Reads the first `wire_size` bytes of a `T` (a compat layout of an older
    /// minor, or the whole struct) into a zeroed `T`. Bytes of `T` beyond
    /// `wire_size` stay zero; a `wire_size` larger than `T` consumes the extra
    /// bytes and ignores them.
    pub(crate) fn compat<T>(
        &mut self,
        wire_size: usize,
        what: &'static str,
    ) -> Result<T, ParseError>
    where
        T: FromBytes + IntoBytes,
    {
        let src = self.bytes(wire_size, what)?;
        // The usual case, the whole struct on the wire: a fixed-size copy instead
        // of zeroing then copying a run of unknown length.
        if let Ok(v) = T::read_from_bytes(src) {
            return Ok(v);
        }
        let mut v = T::new_zeroed();
        let dst = v.as_mut_bytes();
        let n = core::cmp::min(dst.len(), src.len());
        if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
        Ok(v)
    }

    /// Takes exactly `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        match self.rest.split_at_checked(n) {
            Some((head, rest)) => {
                self.rest = rest;
                Ok(head)
            }
            None => Err(self.short(what, n)),
        }
    }

    /// Takes a NUL-terminated name and returns it without the NUL.
    #[inline]
    pub(crate) fn name(&mut self, what: &'static str) -> Result<&'a [u8], ParseError> {
        let Some(pos) = find_nul(self.rest) else {
            return Err(ParseError::MissingNul {
                opcode: self.opcode,
                what,
            });
        };
        let (name, rest) = self.rest.split_at_checked(pos).unwrap_or((self.rest, &[]));
        self.rest = rest.get(1..).unwrap_or(&[]);
        Ok(name)
    }

    /// Borrows `count` consecutive `T` from the front, with overflow-checked length.
    pub(crate) fn array<T>(&mut self, count: u64, what: &'static str) -> Result<&'a [T], ParseError>
    where
        T: FromBytes + Immutable,
    {
        let overrun = ParseError::CountOverrun {
            opcode: self.opcode,
            what,
            count,
            available: self.rest.len(),
        };
        let need = count
            .checked_mul(size_of::<T>() as u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(overrun)?;
        let (head, rest) = self.rest.split_at_checked(need).ok_or(overrun)?;
        let items = <[T]>::ref_from_bytes(head).map_err(|_| overrun)?;
        self.rest = rest;
        Ok(items)
    }
}

/// The index of the first NUL byte in `bytes`.
///
/// Names are scanned eight bytes at a time (a word has a zero byte iff
/// `(w - 0x01..01) & !w & 0x80..80` is nonzero; the lowest set bit of that mask
/// marks the first zero byte when the word is read little-endian), which roughly
/// halves the cost of LOOKUP-style parsing against a byte loop.
#[inline]
pub(crate) fn find_nul(bytes: &[u8]) -> Option<usize> {
    const LO: u64 = u64::from_le_bytes([0x01; 8]);
    const HI: u64 = u64::from_le_bytes([0x80; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0usize;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let zeros = w.wrapping_sub(LO) & !w & HI;
        if zeros != 0 {
            return Some(base + (zeros.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == 0)
        .map(|i| base + i)
}

#[cfg(test)]
mod tests {
    use super::find_nul;

    #[test]
    fn find_nul_agrees_with_a_byte_loop() {
        let mut buf = [0xffu8; 40];
        for len in 0..buf.len() {
            for nul in 0..=len {
                buf.fill(0x80);
                if let Some(b) = buf.get_mut(nul) {
                    *b = 0;
                }
                // Bytes 0x01 and 0x80 around the NUL are the classic traps.
                if nul > 0 {
                    buf[nul - 1] = 0x01;
                }
                let s = &buf[..len];
                assert_eq!(find_nul(s), s.iter().position(|&b| b == 0), "{s:?}");
            }
        }
    }
}
