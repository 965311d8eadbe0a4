//! Request extensions (7.36): the security context of a new inode
//! (`FUSE_SECURITY_CTX`) and the supplementary groups of the caller
//! (`FUSE_CREATE_SUPP_GROUP`, 7.37).
//!
//! The kernel appends them after the body of creating requests (CREATE, MKNOD,
//! MKDIR, SYMLINK, TMPFILE) and counts them, in units of 8 bytes, in
//! `fuse_in_header.total_extlen`. Each extension starts with a `fuse_ext_header`
//! `{size, type}` whose `size` includes the header and is a multiple of 8. Types
//! 0..=31 are a security context whose type is its number of entries (the
//! `fuse_secctx_header` overlays the extension header); type 32 is
//! `fuse_supp_groups`. Other types are skipped (a newer kernel may add some).
//!
//! # References
//! - Linux `include/uapi/linux/fuse.h` (`fuse_ext_header`, `fuse_secctx_header`)
//! - Linux `fs/fuse/dir.c` (`get_security_context`, `get_create_supp_group`)
use core::iter::FusedIterator;
use core::mem::size_of;

use zerocopy::byteorder::native_endian::U32;
use zerocopy::FromBytes;

use crate::abi;
use crate::encode::pad8;
use crate::error::ParseError;
use crate::opcode::Opcode;

/// One security context (7.36): the LSM's xattr name and the context value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SecCtx<'a> {
    /// The xattr name, such as `security.selinux`, without its NUL.
    pub name: &'a [u8],
    /// The context value, as the LSM produced it (often, but not always,
    /// NUL-terminated text).
    pub context: &'a [u8],
}

/// The extensions of a request (7.36), borrowed from its bytes and checked by
/// [`parse`](crate::request::parse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Extensions<'a> {
    raw: &'a [u8],
}

impl<'a> Extensions<'a> {
    /// The extensions of an area that `parse` validated.
    pub(crate) fn from_area(raw: &'a [u8]) -> Self {
        Extensions { raw }
    }

    /// The whole extension area as sent (`total_extlen * 8` bytes).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// True if the request carries no extension.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The extensions found in the (already validated) area. They are not stored in
    /// the request (which stays small and cheap to build); requests with extensions
    /// are rare and the area is short.
    fn found(&self) -> Found<'a> {
        if self.raw.is_empty() {
            return Found::default();
        }
        scan(self.raw, Opcode(0)).unwrap_or_default()
    }

    /// True if a security-context extension is present (7.36).
    pub fn has_security_context(&self) -> bool {
        self.found().secctx.is_some()
    }

    /// The security contexts (7.36, `FUSE_SECURITY_CTX`), in order.
    pub fn security_contexts(&self) -> SecCtxIter<'a> {
        match self.found().secctx {
            Some((left, rest)) => SecCtxIter { rest, left },
            None => SecCtxIter { rest: &[], left: 0 },
        }
    }

    /// The supplementary groups (7.37, `FUSE_CREATE_SUPP_GROUP`).
    pub fn supp_groups(&self) -> Option<&'a [U32]> {
        self.found().groups
    }
}

/// What the extension area holds.
#[derive(Clone, Copy, Default)]
struct Found<'a> {
    secctx: Option<(u32, &'a [u8])>,
    groups: Option<&'a [U32]>,
}

/// An iterator over the security contexts of a request.
#[derive(Clone, Debug)]
pub struct SecCtxIter<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for SecCtxIter<'a> {
    type Item = SecCtx<'a>;

    fn next(&mut self) -> Option<SecCtx<'a>> {
        if self.left == 0 {
            return None;
        }
        match next_secctx(self.rest) {
            Ok((ctx, rest)) => {
                self.rest = rest;
                self.left -= 1;
                Some(ctx)
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.left).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

impl ExactSizeIterator for SecCtxIter<'_> {}
impl FusedIterator for SecCtxIter<'_> {}

/// Splits one `fuse_secctx` entry (struct, NUL-terminated name, context, padding
/// to 8) from the front of `bytes`.
fn next_secctx(bytes: &[u8]) -> Result<(SecCtx<'_>, &[u8]), &'static str> {
    let (head, after) = abi::fuse_secctx::ref_from_prefix(bytes)
        .map_err(|_| "fuse_secctx runs past the end of its extension")?;
    let nul = after
        .iter()
        .position(|&b| b == 0)
        .ok_or("security context name is not NUL-terminated")?;
    let (name, after_name) = after
        .split_at_checked(nul)
        .ok_or("bad security context name")?;
    let after_name = after_name.get(1..).unwrap_or(&[]);
    let ctx_len = usize::try_from(head.size.get()).map_err(|_| "security context too large")?;
    let (context, _) = after_name
        .split_at_checked(ctx_len)
        .ok_or("security context value runs past the end of its extension")?;
    let used = size_of::<abi::fuse_secctx>()
        .checked_add(nul)
        .and_then(|n| n.checked_add(1))
        .and_then(|n| n.checked_add(ctx_len))
        .ok_or("security context too large")?;
    let padded = pad8(used);
    if padded < used {
        return Err("security context too large");
    }
    let (_, rest) = bytes
        .split_at_checked(padded)
        .ok_or("security context padding runs past the end of its extension")?;
    Ok((SecCtx { name, context }, rest))
}

/// Splits `payload` into the body and its last `ext_len` bytes of extensions, and
/// checks the extensions of a request with `opcode`. Out of line: most requests
/// carry none and never get here.
#[inline(never)]
pub(crate) fn split_and_check(
    payload: &[u8],
    ext_len: usize,
    opcode: Opcode,
) -> Result<&[u8], ParseError> {
    let too_long = ParseError::BadExtension {
        reason: "total_extlen covers more bytes than the message has after its header",
    };
    let body_len = payload.len().checked_sub(ext_len).ok_or(too_long)?;
    let (body, area) = payload.split_at_checked(body_len).ok_or(too_long)?;
    scan(area, opcode)?;
    Ok(body)
}

/// Walks a non-empty extension area, checking every extension.
#[inline(never)]
fn scan(area: &[u8], opcode: Opcode) -> Result<Found<'_>, ParseError> {
    let bad = |reason| ParseError::BadExtension { reason };
    let mut ext = Found::default();
    let mut rest = area;
    while !rest.is_empty() {
        let (h, _) = abi::fuse_ext_header::ref_from_prefix(rest)
            .map_err(|_| bad("extension header runs past the end of the message"))?;
        let size = usize::try_from(h.size.get()).map_err(|_| bad("extension too large"))?;
        if size < size_of::<abi::fuse_ext_header>() {
            return Err(bad("extension size is smaller than its header"));
        }
        if size % 8 != 0 {
            return Err(bad("extension size is not a multiple of 8"));
        }
        let (this, after) = rest
            .split_at_checked(size)
            .ok_or(bad("extension runs past the end of the message"))?;
        let payload = this.get(size_of::<abi::fuse_ext_header>()..).unwrap_or(&[]);
        let typ = h.typ.get();
        if typ <= abi::FUSE_MAX_NR_SECCTX {
            if ext.secctx.is_some() {
                return Err(bad("two security-context extensions"));
            }
            let mut entries = payload;
            for _ in 0..typ {
                let (_, r) = next_secctx(entries).map_err(bad)?;
                entries = r;
            }
            ext.secctx = Some((typ, payload));
        } else if typ == abi::FUSE_EXT_GROUPS {
            if ext.groups.is_some() {
                return Err(bad("two supplementary-groups extensions"));
            }
            let (sg, gids) = abi::fuse_supp_groups::ref_from_prefix(payload)
                .map_err(|_| bad("supplementary-groups extension is too short"))?;
            let count = u64::from(sg.nr_groups.get());
            let overrun = ParseError::CountOverrun {
                opcode,
                what: "supplementary groups",
                count,
                available: gids.len(),
            };
            let need = usize::try_from(count)
                .ok()
                .and_then(|n| n.checked_mul(size_of::<U32>()))
                .ok_or(overrun)?;
            let (gids, _) = gids.split_at_checked(need).ok_or(overrun)?;
            ext.groups = Some(<[U32]>::ref_from_bytes(gids).map_err(|_| overrun)?);
        }
        rest = after;
    }
    Ok(ext)
}
