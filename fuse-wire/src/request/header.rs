//! The request header alone: enough to answer a request whose body is malformed.
use core::mem::size_of;

use zerocopy::FromBytes;

use crate::abi;
use crate::error::ParseError;
use crate::opcode::Opcode;

/// A checked `fuse_in_header` and the bytes after it (body and extensions).
///
/// Returned by [`parse_header`]. Only the header's own consistency is checked
/// (at least 40 bytes, `len` equal to the number of bytes given), so a session can
/// still answer a request whose body or extensions fail to parse: it has
/// [`unique`](Self::unique) and [`opcode`](Self::opcode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestHeader<'a> {
    raw: &'a abi::fuse_in_header,
    payload: &'a [u8],
}

/// Checks and borrows the `fuse_in_header` at the start of `bytes` (7.0;
/// `total_extlen` 7.36).
///
/// `bytes` must be exactly one request as read from `/dev/fuse`: at least 40 bytes
/// ([`ParseError::ShortHeader`]) and exactly as long as the header's `len`
/// ([`ParseError::LengthMismatch`]). The body and extensions are not looked at.
/// Never panics, never allocates.
pub fn parse_header(bytes: &[u8]) -> Result<RequestHeader<'_>, ParseError> {
    let Ok((raw, payload)) = abi::fuse_in_header::ref_from_prefix(bytes) else {
        return Err(ParseError::ShortHeader {
            need: size_of::<abi::fuse_in_header>(),
            have: bytes.len(),
        });
    };
    let len = raw.len.get();
    if usize::try_from(len).ok() != Some(bytes.len()) {
        return Err(ParseError::LengthMismatch {
            header: len,
            buffer: bytes.len(),
        });
    }
    Ok(RequestHeader { raw, payload })
}

impl<'a> RequestHeader<'a> {
    /// The kernel's header struct, as sent.
    pub fn raw(&self) -> &'a abi::fuse_in_header {
        self.raw
    }

    /// Total length of the request in bytes, header included.
    pub fn len(&self) -> u32 {
        self.raw.len.get()
    }

    /// Always false: a checked header is at least 40 bytes long. (Present because
    /// `len` is.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The opcode (possibly one this crate does not know).
    pub fn opcode(&self) -> Opcode {
        Opcode(self.raw.opcode.get())
    }

    /// The request id exactly as sent, bit 63 ([`abi::FUSE_UNIQUE_RESEND`]) included.
    /// Replies must echo this value unchanged.
    pub fn unique(&self) -> u64 {
        self.raw.unique.get()
    }

    /// True if the kernel re-queued this request after `FUSE_NOTIFY_RESEND`
    /// (bit 63 of `unique`, 7.40). The same operation may already have been executed.
    pub fn is_resend(&self) -> bool {
        self.unique() & abi::FUSE_UNIQUE_RESEND != 0
    }

    /// The inode the request is about (0 for requests about no inode, such as INIT).
    pub fn nodeid(&self) -> u64 {
        self.raw.nodeid.get()
    }

    /// Effective uid of the calling process (in the connection's user namespace).
    pub fn uid(&self) -> u32 {
        self.raw.uid.get()
    }

    /// Effective gid of the calling process.
    pub fn gid(&self) -> u32 {
        self.raw.gid.get()
    }

    /// Thread group id of the calling process (0 for requests the kernel makes on
    /// its own, such as FORGET or RELEASE from a closing file).
    pub fn pid(&self) -> u32 {
        self.raw.pid.get()
    }

    /// Length of the extension area in bytes: `total_extlen * 8` (7.36).
    pub fn extensions_len(&self) -> usize {
        usize::from(self.raw.total_extlen.get()).saturating_mul(8)
    }

    /// Everything after the header: the body followed by the extension area.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}
