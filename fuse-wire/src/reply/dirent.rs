//! Directory listings: the writer of READDIR / READDIRPLUS replies and the iterators
//! over a parsed one.
//!
//! A READDIR reply body is a sequence of `fuse_dirent` (24 bytes) each followed by its
//! name and zero padding to a multiple of 8; READDIRPLUS uses `fuse_direntplus`
//! (152 bytes: a `fuse_entry_out` then a `fuse_dirent`). The body may not exceed the
//! `size` of the request, and the kernel drops a trailing partial entry, so an entry
//! is written whole or not at all.
use core::mem::size_of;

use zerocopy::byteorder::native_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::attr::Entry;
use super::encode::{check_unique, out_header, OUT_HEADER_SIZE};
use super::name::validate_name;
use crate::abi;
use crate::encode::{pad8, Writer};
use crate::error::EncodeError;

const DIRENT_SIZE: usize = size_of::<abi::fuse_dirent>();
const DIRENTPLUS_SIZE: usize = size_of::<abi::fuse_direntplus>();

/// One directory entry of a READDIR reply (`fuse_dirent`, 7.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Dirent<'a> {
    /// Inode number shown to applications (`d_ino`).
    pub ino: u64,
    /// The offset of the *next* entry: the kernel passes it back as the READDIR
    /// `offset` to continue after this entry. Must not be 0.
    pub off: u64,
    /// `DT_*` file type (`DT_DIR` = 4, `DT_REG` = 8, ..., `DT_UNKNOWN` = 0).
    pub typ: u32,
    /// The name: non-empty, no `/` (the encoder also refuses NUL and more than
    /// [`NAME_MAX`](super::NAME_MAX) bytes).
    pub name: &'a [u8],
}

/// One directory entry of a READDIRPLUS reply (`fuse_direntplus`, 7.21).
///
/// An `entry` with a nonzero nodeid counts as a lookup, like a LOOKUP reply; an entry
/// with nodeid 0 gives the kernel nothing to cache and counts nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DirentPlus<'a> {
    /// The entry, as for LOOKUP.
    pub entry: Entry,
    /// The directory entry.
    pub dirent: Dirent<'a>,
}

/// Bytes one READDIR entry with a name of `namelen` bytes takes, padding included
/// (`FUSE_DIRENT_SIZE`): `24 + namelen` rounded up to 8.
pub const fn dirent_size(namelen: usize) -> usize {
    pad8(DIRENT_SIZE.saturating_add(namelen))
}

/// Bytes one READDIRPLUS entry with a name of `namelen` bytes takes, padding included
/// (`FUSE_DIRENTPLUS_SIZE`): `152 + namelen` rounded up to 8.
pub const fn direntplus_size(namelen: usize) -> usize {
    pad8(DIRENTPLUS_SIZE.saturating_add(namelen))
}

/// What [`DirentWriter::push`] did.
#[must_use = "Full means the entry was not written and the listing should end here"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The entry was written.
    Added,
    /// The entry does not fit in the buffer or in the requested size; nothing was
    /// written. Finish the reply; the kernel asks again from the last `off`.
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Unset,
    Plain,
    Plus,
}

/// Writes a READDIR or READDIRPLUS reply into a caller-owned buffer, entry by entry.
///
/// ```
/// use fuse_wire::reply::{Dirent, DirentWriter, Push};
/// let mut buf = [0u8; 4096];
/// // The kernel asked for `size` bytes (fuse_read_in.size).
/// let mut w = DirentWriter::new(&mut buf, 7, 4096).unwrap();
/// let d = Dirent { ino: 2, off: 1, typ: 8, name: b"hello.txt" };
/// assert_eq!(w.push(&d).unwrap(), Push::Added);
/// let len = w.finish().unwrap();
/// assert_eq!(len, 16 + 40);
/// ```
///
/// A writer is either plain ([`push`](Self::push)) or plus
/// ([`push_plus`](Self::push_plus)); mixing them fails with [`EncodeError::Invalid`].
pub struct DirentWriter<'a> {
    w: Writer<'a>,
    /// Largest body allowed.
    limit: usize,
    unique: u64,
    count: usize,
    kind: Kind,
}

impl core::fmt::Debug for DirentWriter<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DirentWriter")
            .field("unique", &self.unique)
            .field("body_len", &self.body_len())
            .field("limit", &self.limit)
            .field("count", &self.count)
            .finish()
    }
}

impl<'a> DirentWriter<'a> {
    /// A writer for the reply to request `unique`, whose body may take at most
    /// `max_size` bytes (the request's `fuse_read_in.size`) and must fit `buf` after
    /// the 16-byte header.
    ///
    /// Fails with [`EncodeError::BufferTooSmall`] when `buf` cannot hold the header,
    /// or [`EncodeError::Invalid`] for `unique` 0.
    pub fn new(buf: &'a mut [u8], unique: u64, max_size: usize) -> Result<Self, EncodeError> {
        check_unique(unique)?;
        let room = buf
            .len()
            .checked_sub(OUT_HEADER_SIZE)
            .ok_or(EncodeError::BufferTooSmall {
                need: OUT_HEADER_SIZE,
                have: buf.len(),
            })?;
        // The header's length is a u32.
        let u32_room = (u32::MAX as usize).saturating_sub(OUT_HEADER_SIZE);
        let limit = room.min(max_size).min(u32_room);
        let mut w = Writer::new(buf);
        // Room for the header, written by `finish`.
        w.zeros(OUT_HEADER_SIZE)?;
        Ok(DirentWriter {
            w,
            limit,
            unique,
            count: 0,
            kind: Kind::Unset,
        })
    }

    /// Bytes of entries written so far (the header not included).
    pub fn body_len(&self) -> usize {
        self.w.pos().saturating_sub(OUT_HEADER_SIZE)
    }

    /// Bytes still available for entries.
    pub fn remaining(&self) -> usize {
        self.limit.saturating_sub(self.body_len())
    }

    /// Number of entries written.
    pub fn count(&self) -> usize {
        self.count
    }

    /// True if no entry was written (the reply then means "end of directory").
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn set_kind(&mut self, kind: Kind) -> Result<(), EncodeError> {
        if self.kind != Kind::Unset && self.kind != kind {
            return Err(EncodeError::Invalid {
                reason: "a listing is READDIR or READDIRPLUS: do not mix push and push_plus",
            });
        }
        self.kind = kind;
        Ok(())
    }

    /// Writes one entry of `size` bytes (fixed part, name, zero padding), or returns
    /// [`Push::Full`] when it does not fit the limit.
    fn write_entry(&mut self, fixed: &[u8], name: &[u8], size: usize) -> Result<Push, EncodeError> {
        match self.body_len().checked_add(size) {
            Some(end) if end <= self.limit => {}
            _ => return Ok(Push::Full),
        }
        // The limit is within the buffer, so none of these writes can fail.
        self.w.bytes(fixed)?;
        self.w.bytes(name)?;
        self.w.pad8()?;
        self.count += 1;
        Ok(Push::Added)
    }

    /// Appends a READDIR entry, or returns [`Push::Full`] (writing nothing) when it
    /// does not fit.
    ///
    /// Fails with [`EncodeError::BadName`] for an empty name, a name with NUL or `/`,
    /// or one longer than [`NAME_MAX`](super::NAME_MAX).
    pub fn push(&mut self, d: &Dirent<'_>) -> Result<Push, EncodeError> {
        validate_name(d.name)?;
        self.set_kind(Kind::Plain)?;
        let head = dirent_abi(d);
        self.write_entry(head.as_bytes(), d.name, dirent_size(d.name.len()))
    }

    /// Appends a READDIRPLUS entry (7.21), or returns [`Push::Full`] (writing nothing)
    /// when it does not fit. Names are checked as for [`push`](Self::push).
    pub fn push_plus(&mut self, d: &DirentPlus<'_>) -> Result<Push, EncodeError> {
        validate_name(d.dirent.name)?;
        self.set_kind(Kind::Plus)?;
        let head = abi::fuse_direntplus {
            entry_out: d.entry.to_abi(),
            dirent: dirent_abi(&d.dirent),
        };
        self.write_entry(
            head.as_bytes(),
            d.dirent.name,
            direntplus_size(d.dirent.name.len()),
        )
    }

    /// Writes the header and returns the length of the whole reply (header + entries).
    pub fn finish(mut self) -> Result<usize, EncodeError> {
        let total = self.w.pos();
        let header = out_header(total, 0, self.unique)?;
        self.w.patch(0, header.as_bytes())?;
        Ok(total)
    }
}

fn dirent_abi(d: &Dirent<'_>) -> abi::fuse_dirent {
    abi::fuse_dirent {
        ino: U64::new(d.ino),
        off: U64::new(d.off),
        // validate_name bounds the length by 1024.
        namelen: U32::new(d.name.len() as u32),
        typ: U32::new(d.typ),
    }
}

/// Reads the entry at the start of `body`: the fixed part, the name, and the rest
/// after the padding. `None` when anything is short.
fn split_dirent(body: &[u8]) -> Option<(abi::fuse_dirent, &[u8], &[u8])> {
    let (head, rest) = abi::fuse_dirent::read_from_prefix(body).ok()?;
    let namelen = usize::try_from(head.namelen.get()).ok()?;
    let name = rest.get(..namelen)?;
    let size = dirent_size(namelen);
    let next = body.get(size..)?;
    Some((head, name, next))
}

/// The entries of a READDIR reply, as [`reply::parse`](super::parse) validated them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirents<'a> {
    body: &'a [u8],
}

impl<'a> Dirents<'a> {
    /// The entries of an already-validated body.
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Dirents { body }
    }

    /// The raw body bytes not yet iterated.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.body
    }
}

impl<'a> Iterator for Dirents<'a> {
    type Item = Dirent<'a>;

    fn next(&mut self) -> Option<Dirent<'a>> {
        let (head, name, next) = split_dirent(self.body)?;
        self.body = next;
        Some(Dirent {
            ino: head.ino.get(),
            off: head.off.get(),
            typ: head.typ.get(),
            name,
        })
    }
}

/// Reads the READDIRPLUS entry at the start of `body`.
fn split_direntplus(body: &[u8]) -> Option<(abi::fuse_direntplus, &[u8], &[u8])> {
    let (head, rest) = abi::fuse_direntplus::read_from_prefix(body).ok()?;
    let namelen = usize::try_from(head.dirent.namelen.get()).ok()?;
    let name = rest.get(..namelen)?;
    let size = direntplus_size(namelen);
    let next = body.get(size..)?;
    Some((head, name, next))
}

/// The entries of a READDIRPLUS reply, as [`reply::parse`](super::parse) validated them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirentsPlus<'a> {
    body: &'a [u8],
}

impl<'a> DirentsPlus<'a> {
    /// The entries of an already-validated body.
    pub(crate) fn new(body: &'a [u8]) -> Self {
        DirentsPlus { body }
    }

    /// The raw body bytes not yet iterated.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.body
    }
}

impl<'a> Iterator for DirentsPlus<'a> {
    type Item = DirentPlus<'a>;

    fn next(&mut self) -> Option<DirentPlus<'a>> {
        let (head, name, next) = split_direntplus(self.body)?;
        self.body = next;
        let d = &head.dirent;
        Some(DirentPlus {
            entry: Entry::from_abi(&head.entry_out),
            dirent: Dirent {
                ino: d.ino.get(),
                off: d.off.get(),
                typ: d.typ.get(),
                name,
            },
        })
    }
}

/// Why a listing body is malformed, for [`reply::parse`](super::parse).
pub(crate) enum DirentFault {
    /// Fewer bytes than the fixed part or the padded name need.
    Short {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// A field the kernel refuses with EIO.
    Invalid(&'static str),
}

/// Checks a READDIR (`plus` false) or READDIRPLUS body as the kernel's
/// `parse_dirfile` / `parse_dirplusfile` do, except that a trailing partial entry
/// (which the kernel silently drops) is an error here: our writer never makes one.
pub(crate) fn validate(body: &[u8], plus: bool) -> Result<(), DirentFault> {
    let (fixed, what) = if plus {
        (DIRENTPLUS_SIZE, "fuse_direntplus")
    } else {
        (DIRENT_SIZE, "fuse_dirent")
    };
    let mut rest = body;
    while !rest.is_empty() {
        let head_bytes = rest.get(..fixed).ok_or(DirentFault::Short {
            what,
            need: fixed,
            have: rest.len(),
        })?;
        // The fuse_dirent is the last 24 bytes of the fixed part in both layouts.
        let d_bytes = head_bytes.get(fixed - DIRENT_SIZE..).unwrap_or(&[]);
        let d = abi::fuse_dirent::ref_from_bytes(d_bytes)
            .map_err(|_| DirentFault::Invalid("malformed directory entry"))?;
        let namelen = usize::try_from(d.namelen.get()).unwrap_or(usize::MAX);
        if namelen == 0 {
            return Err(DirentFault::Invalid(
                "directory entry with an empty name (kernel: EIO)",
            ));
        }
        if namelen > super::name::KERNEL_NAME_MAX {
            return Err(DirentFault::Invalid(
                "directory entry name longer than 4095 bytes (kernel: EIO)",
            ));
        }
        let size = pad8(fixed + namelen);
        let entry = rest.get(..size).ok_or(DirentFault::Short {
            what: "directory entry name and padding",
            need: size,
            have: rest.len(),
        })?;
        let name = entry.get(fixed..fixed + namelen).unwrap_or(&[]);
        if name.contains(&b'/') {
            return Err(DirentFault::Invalid(
                "directory entry name contains '/' (kernel: EIO)",
            ));
        }
        rest = rest.get(size..).unwrap_or(&[]);
    }
    Ok(())
}
