//! Request encoders: bytes as the kernel writes them, for fake kernels, property
//! tests and fuzzers.
//!
//! [`encode`] writes any [`Operation`] with the given header fields and extensions
//! into a caller buffer, laid out for a negotiated protocol (compat sizes of older
//! minors honoured, exactly as [`parse`](crate::request::parse) reads them), and
//! returns the length. [`encoded_len`] says how long that will be.
//!
//! Rules the encoder follows:
//! - Every check happens before the first byte is written: on any error, including
//!   [`EncodeError::BufferTooSmall`], the buffer is untouched.
//! - Fields of by-value (compat) structs that the connection's layout lacks are
//!   dropped, as a kernel of that minor would not have them; parsing gives them back
//!   as zero.
//! - INIT is laid out for the kernel minor in `arg.minor` (64 bytes from 7.36,
//!   16 from 7.6, 8 before), not for `proto`: the kernel sends it before anything is
//!   negotiated.
//! - Declared sizes must match the data (`fuse_write_in.size`, `fuse_setxattr_in.size`,
//!   `fuse_ioctl_in.in_size`, `fuse_notify_retrieve_in.size`), else
//!   [`EncodeError::Invalid`]; counts of BATCH_FORGET and REMOVEMAPPING are taken
//!   from the slices.
//! - Names must not contain NUL ([`EncodeError::BadName`]); the encoder appends it.
//! - Whether an opcode exists in `proto.minor` is not checked: tests may want to
//!   send what a real kernel would not.
//! - [`Operation::Unknown`] writes its opcode and body verbatim (with a known opcode
//!   this produces that opcode's message, whatever the body).
use core::mem::size_of;

use zerocopy::byteorder::native_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

use crate::abi;
use crate::encode::{len_u32, pad8, Writer};
use crate::error::EncodeError;
use crate::negotiated::Negotiated;
use crate::request::ext::SecCtx;
use crate::request::ops::{compat_bytes, Operation};

/// The header fields of a request other than `len`, `opcode` and `total_extlen`,
/// which the encoder computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeaderFields {
    /// Request id; set bit 63 ([`abi::FUSE_UNIQUE_RESEND`]) for a resent request (7.40).
    pub unique: u64,
    /// The inode the request is about.
    pub nodeid: u64,
    /// Effective uid of the caller.
    pub uid: u32,
    /// Effective gid of the caller.
    pub gid: u32,
    /// Thread group id of the caller.
    pub pid: u32,
}

/// Extensions to append after the body (7.36), in the kernel's order: security
/// context, supplementary groups, then `raw`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExtensionArgs<'b> {
    /// A security-context extension with these entries (at most 31; an empty
    /// slice gives the empty extension the kernel sends when no LSM answers)
    /// (7.36, `FUSE_SECURITY_CTX`).
    pub security_contexts: Option<&'b [SecCtx<'b>]>,
    /// A supplementary-groups extension with these gids (7.37,
    /// `FUSE_CREATE_SUPP_GROUP`).
    pub supp_groups: Option<&'b [u32]>,
    /// Already-encoded extensions appended verbatim (for example
    /// [`Extensions::raw`](crate::request::Extensions::raw) of a parsed request);
    /// its length must be a multiple of 8.
    pub raw: &'b [u8],
}

impl ExtensionArgs<'_> {
    /// No extensions.
    pub const NONE: ExtensionArgs<'static> = ExtensionArgs {
        security_contexts: None,
        supp_groups: None,
        raw: &[],
    };
}

/// A part of a request body.
#[derive(Clone, Copy)]
enum Piece<'p> {
    /// Bytes written as they are.
    Bytes(&'p [u8]),
    /// A name, written followed by a NUL.
    Name(&'p [u8]),
    /// A small struct built by the encoder (count headers), of the given length.
    Inline([u8; 8], usize),
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match self {
            Piece::Bytes(b) => b.len(),
            Piece::Name(n) => n.len().saturating_add(1),
            Piece::Inline(_, n) => *n,
        }
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Piece::Bytes(b) => w.bytes(b),
            Piece::Name(n) => {
                w.bytes(n)?;
                w.bytes(&[0])
            }
            Piece::Inline(b, n) => w.bytes(b.get(..*n).unwrap_or(b)),
        }
    }
}

const NONE: Piece<'static> = Piece::Bytes(&[]);

fn name(n: &[u8]) -> Result<Piece<'_>, EncodeError> {
    if n.contains(&0) {
        return Err(EncodeError::BadName {
            reason: "a name in a request cannot contain a NUL byte",
        });
    }
    Ok(Piece::Name(n))
}

fn check_size(declared: u32, actual: usize, reason: &'static str) -> Result<(), EncodeError> {
    if usize::try_from(declared).ok() == Some(actual) {
        Ok(())
    } else {
        Err(EncodeError::Invalid { reason })
    }
}

fn count_header(count: usize, n: usize) -> Result<Piece<'static>, EncodeError> {
    let count = u32::try_from(count).map_err(|_| EncodeError::TooLarge {
        what: "count of entries",
    })?;
    let mut b = [0u8; 8];
    if let Some(d) = b.get_mut(..4) {
        d.copy_from_slice(U32::new(count).as_bytes());
    }
    Ok(Piece::Inline(b, n))
}

/// The body of `op` as at most three pieces.
fn pieces<'p>(op: &'p Operation<'_>, proto: &Negotiated) -> Result<[Piece<'p>; 3], EncodeError> {
    let compat = compat_bytes(op, proto).map(Piece::Bytes).unwrap_or(NONE);
    let p = match op {
        Operation::Lookup { name: n }
        | Operation::Unlink { name: n }
        | Operation::Rmdir { name: n }
        | Operation::Removexattr { name: n } => [name(n)?, NONE, NONE],
        Operation::Forget { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Getattr { .. }
        | Operation::Read { .. }
        | Operation::Readdir { .. }
        | Operation::Readdirplus { .. }
        | Operation::Init { .. } => [compat, NONE, NONE],
        Operation::Setattr { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Readlink | Operation::Statfs | Operation::Destroy => [NONE, NONE, NONE],
        Operation::Symlink { name: n, target } => [name(n)?, name(target)?, NONE],
        Operation::Mknod { name: n, .. } | Operation::Create { name: n, .. } => {
            [compat, name(n)?, NONE]
        }
        Operation::Tmpfile { arg, name: n } => [Piece::Bytes(arg.as_bytes()), name(n)?, NONE],
        Operation::Mkdir { arg, name: n } => [Piece::Bytes(arg.as_bytes()), name(n)?, NONE],
        Operation::Rename {
            arg,
            name: n,
            newname,
        } => [Piece::Bytes(arg.as_bytes()), name(n)?, name(newname)?],
        Operation::Rename2 {
            arg,
            name: n,
            newname,
        } => [Piece::Bytes(arg.as_bytes()), name(n)?, name(newname)?],
        Operation::Link { arg, newname } => [Piece::Bytes(arg.as_bytes()), name(newname)?, NONE],
        Operation::Open { arg } | Operation::Opendir { arg } => {
            [Piece::Bytes(arg.as_bytes()), NONE, NONE]
        }
        Operation::Write { arg, data } => {
            check_size(
                arg.size.get(),
                data.len(),
                "fuse_write_in.size differs from the data length",
            )?;
            [compat, Piece::Bytes(data), NONE]
        }
        Operation::Release { arg } | Operation::Releasedir { arg } => {
            [Piece::Bytes(arg.as_bytes()), NONE, NONE]
        }
        Operation::Fsync { arg } | Operation::Fsyncdir { arg } => {
            [Piece::Bytes(arg.as_bytes()), NONE, NONE]
        }
        Operation::Setxattr {
            arg,
            name: n,
            value,
        } => {
            check_size(
                arg.size.get(),
                value.len(),
                "fuse_setxattr_in.size differs from the value length",
            )?;
            [compat, name(n)?, Piece::Bytes(value)]
        }
        Operation::Getxattr { arg, name: n } => [Piece::Bytes(arg.as_bytes()), name(n)?, NONE],
        Operation::Listxattr { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Flush { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Getlk { arg } | Operation::Setlk { arg } | Operation::Setlkw { arg } => {
            [Piece::Bytes(arg.as_bytes()), NONE, NONE]
        }
        Operation::Access { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Interrupt { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Bmap { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Ioctl { arg, data } => {
            check_size(
                arg.in_size.get(),
                data.len(),
                "fuse_ioctl_in.in_size differs from the data length",
            )?;
            [Piece::Bytes(arg.as_bytes()), Piece::Bytes(data), NONE]
        }
        Operation::Poll { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::NotifyReply { arg, data } => {
            check_size(
                arg.size.get(),
                data.len(),
                "fuse_notify_retrieve_in.size differs from the data length",
            )?;
            [Piece::Bytes(arg.as_bytes()), Piece::Bytes(data), NONE]
        }
        Operation::BatchForget { forgets } => [
            count_header(forgets.len(), size_of::<abi::fuse_batch_forget_in>())?,
            Piece::Bytes(forgets.as_bytes()),
            NONE,
        ],
        Operation::Fallocate { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Lseek { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::CopyFileRange { arg } | Operation::CopyFileRange64 { arg } => {
            [Piece::Bytes(arg.as_bytes()), NONE, NONE]
        }
        Operation::Setupmapping { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Removemapping { mappings } => [
            count_header(mappings.len(), size_of::<abi::fuse_removemapping_in>())?,
            Piece::Bytes(mappings.as_bytes()),
            NONE,
        ],
        Operation::Syncfs { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Statx { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::CuseInit { arg } => [Piece::Bytes(arg.as_bytes()), NONE, NONE],
        Operation::Unknown { body, .. } => [Piece::Bytes(body), NONE, NONE],
    };
    Ok(p)
}

fn too_large() -> EncodeError {
    EncodeError::TooLarge {
        what: "request extensions",
    }
}

/// Length of one security-context entry with its padding.
fn secctx_entry_len(c: &SecCtx<'_>) -> Result<usize, EncodeError> {
    if c.name.contains(&0) {
        return Err(EncodeError::BadName {
            reason: "a security context name cannot contain a NUL byte",
        });
    }
    let used = size_of::<abi::fuse_secctx>()
        .checked_add(c.name.len())
        .and_then(|n| n.checked_add(1))
        .and_then(|n| n.checked_add(c.context.len()))
        .ok_or_else(too_large)?;
    let padded = pad8(used);
    if padded < used {
        return Err(too_large());
    }
    Ok(padded)
}

fn secctx_ext_len(ctxs: &[SecCtx<'_>]) -> Result<usize, EncodeError> {
    if ctxs.len() > abi::FUSE_MAX_NR_SECCTX as usize {
        return Err(EncodeError::Invalid {
            reason: "at most 31 security contexts fit the extension",
        });
    }
    let mut total = size_of::<abi::fuse_secctx_header>();
    for c in ctxs {
        total = total
            .checked_add(secctx_entry_len(c)?)
            .ok_or_else(too_large)?;
    }
    Ok(total)
}

fn groups_ext_len(gids: &[u32]) -> Result<usize, EncodeError> {
    let used = gids
        .len()
        .checked_mul(size_of::<u32>())
        .and_then(|n| n.checked_add(size_of::<abi::fuse_ext_header>()))
        .and_then(|n| n.checked_add(size_of::<abi::fuse_supp_groups>()))
        .ok_or_else(too_large)?;
    let padded = pad8(used);
    if padded < used {
        return Err(too_large());
    }
    Ok(padded)
}

/// Length of the extension area; fits `total_extlen` (a `u16` of 8-byte units).
fn ext_len(ext: &ExtensionArgs<'_>) -> Result<usize, EncodeError> {
    let mut total = 0usize;
    if let Some(ctxs) = ext.security_contexts {
        total = secctx_ext_len(ctxs)?;
    }
    if let Some(gids) = ext.supp_groups {
        total = total
            .checked_add(groups_ext_len(gids)?)
            .ok_or_else(too_large)?;
    }
    if ext.raw.len() % 8 != 0 {
        return Err(EncodeError::Invalid {
            reason: "raw extensions must be a multiple of 8 bytes long",
        });
    }
    total = total.checked_add(ext.raw.len()).ok_or_else(too_large)?;
    if total / 8 > usize::from(u16::MAX) {
        return Err(too_large());
    }
    Ok(total)
}

fn write_ext(w: &mut Writer<'_>, ext: &ExtensionArgs<'_>) -> Result<(), EncodeError> {
    if let Some(ctxs) = ext.security_contexts {
        let size = u32::try_from(secctx_ext_len(ctxs)?).map_err(|_| too_large())?;
        w.put(&abi::fuse_secctx_header {
            size: U32::new(size),
            nr_secctx: U32::new(u32::try_from(ctxs.len()).map_err(|_| too_large())?),
        })?;
        for c in ctxs {
            let padded = secctx_entry_len(c)?;
            let ctx_len = u32::try_from(c.context.len()).map_err(|_| too_large())?;
            w.put(&abi::fuse_secctx {
                size: U32::new(ctx_len),
                padding: U32::new(0),
            })?;
            w.bytes(c.name)?;
            w.bytes(&[0])?;
            w.bytes(c.context)?;
            let used = size_of::<abi::fuse_secctx>()
                .saturating_add(c.name.len())
                .saturating_add(1)
                .saturating_add(c.context.len());
            w.zeros(padded.saturating_sub(used))?;
        }
    }
    if let Some(gids) = ext.supp_groups {
        let padded = groups_ext_len(gids)?;
        w.put(&abi::fuse_ext_header {
            size: U32::new(u32::try_from(padded).map_err(|_| too_large())?),
            typ: U32::new(abi::FUSE_EXT_GROUPS),
        })?;
        w.put(&abi::fuse_supp_groups {
            nr_groups: U32::new(u32::try_from(gids.len()).map_err(|_| too_large())?),
        })?;
        for g in gids {
            w.put(&U32::new(*g))?;
        }
        let used = size_of::<abi::fuse_ext_header>()
            .saturating_add(size_of::<abi::fuse_supp_groups>())
            .saturating_add(gids.len().saturating_mul(size_of::<u32>()));
        w.zeros(padded.saturating_sub(used))?;
    }
    w.bytes(ext.raw)
}

/// The length [`encode`] will produce for `op` with `ext` on a connection `proto`,
/// after the same checks.
pub fn encoded_len(
    proto: &Negotiated,
    op: &Operation<'_>,
    ext: &ExtensionArgs<'_>,
) -> Result<usize, EncodeError> {
    let mut total = size_of::<abi::fuse_in_header>();
    for p in pieces(op, proto)? {
        total = total
            .checked_add(p.len())
            .ok_or(EncodeError::TooLarge { what: "request" })?;
    }
    total = total
        .checked_add(ext_len(ext)?)
        .ok_or(EncodeError::TooLarge { what: "request" })?;
    len_u32(total)?;
    Ok(total)
}

/// Encodes `op` as the kernel would send it on a connection that negotiated
/// `proto`, with `header`'s fields and the extensions `ext`, into the front of
/// `buf`. Returns the number of bytes written (also the header's `len`).
///
/// On any error nothing is written. See the [module documentation](self) for the
/// rules.
pub fn encode(
    buf: &mut [u8],
    proto: &Negotiated,
    header: &HeaderFields,
    op: &Operation<'_>,
    ext: &ExtensionArgs<'_>,
) -> Result<usize, EncodeError> {
    let total = encoded_len(proto, op, ext)?;
    let extlen = ext_len(ext)?;
    let total_extlen = u16::try_from(extlen / 8).map_err(|_| too_large())?;
    let mut w = Writer::new(buf);
    w.reserve(total)?;
    w.put(&abi::fuse_in_header {
        len: U32::new(len_u32(total)?),
        opcode: U32::new(op.opcode().0),
        unique: U64::new(header.unique),
        nodeid: U64::new(header.nodeid),
        uid: U32::new(header.uid),
        gid: U32::new(header.gid),
        pid: U32::new(header.pid),
        total_extlen: U16::new(total_extlen),
        padding: U16::new(0),
    })?;
    for p in pieces(op, proto)? {
        p.write(&mut w)?;
    }
    write_ext(&mut w, ext)?;
    debug_assert_eq!(w.pos(), total);
    Ok(total)
}
