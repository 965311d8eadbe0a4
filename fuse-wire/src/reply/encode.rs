//! Encoders of every reply shape except directory listings (see
//! [`DirentWriter`](super::DirentWriter)).
//!
//! Each writes `fuse_out_header` and the body into a caller-owned buffer and returns
//! the number of bytes written, which is also the header's `len`. The size is checked
//! before any byte is written: on [`EncodeError::BufferTooSmall`] the buffer holds
//! nothing meaningful.
use core::mem::size_of;
use core::time::Duration;

use zerocopy::byteorder::native_endian::{I32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::attr::{Attr, Entry, FileLock, IoctlIovec, Open, Statfs};
use super::init::{CuseInitOut, InitOut, CUSE_INIT_INFO_MAX};
use crate::abi;
use crate::encode::{len_u32, Writer};
use crate::error::EncodeError;
use crate::flags::{FopenFlags, IoctlFlags, FUSE_IOCTL_MAX_IOV};
use crate::negotiated::Negotiated;

/// Size of `fuse_out_header`.
pub const OUT_HEADER_SIZE: usize = size_of::<abi::fuse_out_header>();

/// The largest errno a reply may carry: the kernel's `fuse_dev_do_write` rejects
/// `error <= -512` (and any positive value) with `EINVAL`.
pub const ERRNO_MAX: i32 = 511;

/// Fails for `unique` 0, which marks a notification, not a reply.
pub(crate) fn check_unique(unique: u64) -> Result<(), EncodeError> {
    if unique == 0 {
        Err(EncodeError::Invalid {
            reason: "unique 0 marks a notification; a reply must echo the request's unique",
        })
    } else {
        Ok(())
    }
}

/// The header of a message of `total` bytes.
pub(crate) fn out_header(
    total: usize,
    error: i32,
    unique: u64,
) -> Result<abi::fuse_out_header, EncodeError> {
    Ok(abi::fuse_out_header {
        len: U32::new(len_u32(total)?),
        error: I32::new(error),
        unique: U64::new(unique),
    })
}

/// Writes a success reply: header, then `fixed` (the first `fixed_len` bytes of it),
/// then `tail`.
fn write_reply<T: IntoBytes + Immutable>(
    buf: &mut [u8],
    unique: u64,
    fixed: &T,
    fixed_len: usize,
    tail: &[u8],
) -> Result<usize, EncodeError> {
    check_unique(unique)?;
    let total = OUT_HEADER_SIZE
        .checked_add(fixed_len)
        .and_then(|n| n.checked_add(tail.len()))
        .ok_or(EncodeError::TooLarge { what: "reply" })?;
    let header = out_header(total, 0, unique)?;
    let mut w = Writer::new(buf);
    w.reserve(total)?;
    w.put(&header)?;
    // The whole struct is the usual case: a copy of known size, inlined.
    if fixed_len == size_of::<T>() {
        w.put(fixed)?;
    } else {
        w.put_prefix(fixed, fixed_len)?;
    }
    if !tail.is_empty() {
        w.bytes(tail)?;
    }
    Ok(w.pos())
}

/// The 16 header bytes of an error reply, for callers that write the header alone.
///
/// `errno` is the positive error number (`ENOENT` = 2); the header carries its
/// negation. Fails with [`EncodeError::Invalid`] for 0 (use [`empty`]) or anything
/// above [`ERRNO_MAX`], which the kernel would refuse with `EINVAL` and then fail
/// the request with `EIO`.
pub fn error_header(unique: u64, errno: i32) -> Result<[u8; OUT_HEADER_SIZE], EncodeError> {
    check_unique(unique)?;
    if errno <= 0 || errno > ERRNO_MAX {
        return Err(EncodeError::Invalid {
            reason: "errno must be 1..=511 (positive; the kernel accepts -511..=-1 in the header)",
        });
    }
    let h = out_header(OUT_HEADER_SIZE, -errno, unique)?;
    let mut out = [0u8; OUT_HEADER_SIZE];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// An error reply (7.0): a bare header with `error = -errno`. Any request that
/// expects an answer may get one. See [`error_header`] for the allowed range.
pub fn error(buf: &mut [u8], unique: u64, errno: i32) -> Result<usize, EncodeError> {
    let h = error_header(unique, errno)?;
    let mut w = Writer::new(buf);
    w.reserve(OUT_HEADER_SIZE)?;
    w.bytes(&h)?;
    Ok(w.pos())
}

/// An empty success reply (7.0): a bare header with `error = 0`.
///
/// The answer to SETLK, SETLKW, UNLINK, RMDIR, RENAME, RENAME2, RELEASE, RELEASEDIR,
/// FSYNC, FSYNCDIR, FLUSH, SETXATTR, REMOVEXATTR, ACCESS, FALLOCATE, SYNCFS,
/// SETUPMAPPING, REMOVEMAPPING, DESTROY.
pub fn empty(buf: &mut [u8], unique: u64) -> Result<usize, EncodeError> {
    write_reply(buf, unique, &(), 0, &[])
}

/// The 16 header bytes of a success reply whose body of `payload_len` bytes the
/// caller sends separately, e.g. `writev([header, payload])` for a large READ
/// without copying it.
///
/// Fails with [`EncodeError::TooLarge`] when `16 + payload_len` does not fit the
/// header's `u32` length.
pub fn data_header(unique: u64, payload_len: usize) -> Result<[u8; OUT_HEADER_SIZE], EncodeError> {
    check_unique(unique)?;
    let total = OUT_HEADER_SIZE
        .checked_add(payload_len)
        .ok_or(EncodeError::TooLarge {
            what: "reply payload",
        })?;
    let h = out_header(total, 0, unique)?;
    let mut out = [0u8; OUT_HEADER_SIZE];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// A reply whose body is `data`, copied (7.0): READ, READLINK, GETXATTR and LISTXATTR
/// with a nonzero size (the value, or the NUL-separated name list). For large
/// payloads prefer [`data_header`] and a vectored write.
///
/// The kernel refuses a body larger than the size it asked for (`EINVAL`); a shorter
/// one is a short read.
pub fn data(buf: &mut [u8], unique: u64, data: &[u8]) -> Result<usize, EncodeError> {
    write_reply(buf, unique, &(), 0, data)
}

/// The answer to LOOKUP, MKNOD, MKDIR, SYMLINK and LINK: `fuse_entry_out` (7.0), sent
/// in its 120-byte compat size when the negotiated minor is below 9.
///
/// A negative entry (`nodeid` 0) is allowed for LOOKUP: the kernel caches the
/// absence of the name for `entry_valid`.
pub fn entry(
    buf: &mut [u8],
    unique: u64,
    proto: &Negotiated,
    entry: &Entry,
) -> Result<usize, EncodeError> {
    const FULL: usize = OUT_HEADER_SIZE + size_of::<abi::fuse_entry_out>();
    if proto.entry_out_size() != size_of::<abi::fuse_entry_out>() {
        return write_reply(buf, unique, &entry.to_abi(), proto.entry_out_size(), &[]);
    }
    // The usual case, built in place in the caller's buffer (the reply of every
    // LOOKUP): no intermediate copy of the 128-byte struct.
    check_unique(unique)?;
    let have = buf.len();
    let dst = buf
        .get_mut(..FULL)
        .ok_or(EncodeError::BufferTooSmall { need: FULL, have })?;
    let (h, e) = dst.split_at_mut(OUT_HEADER_SIZE);
    let (h, _) = abi::fuse_out_header::mut_from_prefix(h)
        .map_err(|_| EncodeError::BufferTooSmall { need: FULL, have })?;
    let (e, _) = abi::fuse_entry_out::mut_from_prefix(e)
        .map_err(|_| EncodeError::BufferTooSmall { need: FULL, have })?;
    *h = out_header(FULL, 0, unique)?;
    *e = entry.to_abi();
    Ok(FULL)
}

/// The answer to GETATTR and SETATTR: `fuse_attr_out` (7.0), sent in its 96-byte
/// compat size when the negotiated minor is below 9.
pub fn attr(
    buf: &mut [u8],
    unique: u64,
    proto: &Negotiated,
    attr_valid: Duration,
    attr: &Attr,
) -> Result<usize, EncodeError> {
    let out = abi::fuse_attr_out {
        attr_valid: U64::new(attr_valid.as_secs()),
        attr_valid_nsec: U32::new(attr_valid.subsec_nanos()),
        dummy: U32::new(0),
        attr: attr.to_abi(),
    };
    write_reply(buf, unique, &out, proto.attr_out_size(), &[])
}

/// The answer to STATX: `fuse_statx_out` (7.39). `flags` is the reply's `flags` field
/// (no flag is defined yet; pass 0).
pub fn statx(
    buf: &mut [u8],
    unique: u64,
    attr_valid: Duration,
    flags: u32,
    stat: &abi::fuse_statx,
) -> Result<usize, EncodeError> {
    let out = abi::fuse_statx_out {
        attr_valid: U64::new(attr_valid.as_secs()),
        attr_valid_nsec: U32::new(attr_valid.subsec_nanos()),
        flags: U32::new(flags),
        spare: [U64::new(0); 2],
        stat: *stat,
    };
    write_reply(buf, unique, &out, size_of::<abi::fuse_statx_out>(), &[])
}

/// Fails when `open` uses passthrough (a backing id or `FOPEN_PASSTHROUGH`) on a
/// connection older than 7.40, where the field is padding the kernel ignores.
fn check_open(proto: &Negotiated, open: &Open) -> Result<(), EncodeError> {
    if proto.minor < 40 && (open.backing_id != 0 || open.flags.contains(FopenFlags::PASSTHROUGH)) {
        return Err(EncodeError::NotSupported {
            what: "fuse_open_out.backing_id / FOPEN_PASSTHROUGH",
            since_minor: 40,
            negotiated_minor: proto.minor,
        });
    }
    Ok(())
}

/// The answer to OPEN and OPENDIR: `fuse_open_out` (7.0; `backing_id` 7.40).
///
/// Fails with [`EncodeError::NotSupported`] for a nonzero `backing_id` or
/// [`FopenFlags::PASSTHROUGH`] before 7.40.
pub fn open(
    buf: &mut [u8],
    unique: u64,
    proto: &Negotiated,
    open: &Open,
) -> Result<usize, EncodeError> {
    check_open(proto, open)?;
    write_reply(
        buf,
        unique,
        &open.to_abi(),
        size_of::<abi::fuse_open_out>(),
        &[],
    )
}

/// The answer to CREATE (7.3): `fuse_entry_out` (compat size before 7.9) followed
/// by `fuse_open_out`. Checks `open` as [`open()`] does. Answer TMPFILE with
/// [`tmpfile`]: its entry is never shortened.
pub fn create(
    buf: &mut [u8],
    unique: u64,
    proto: &Negotiated,
    entry: &Entry,
    open: &Open,
) -> Result<usize, EncodeError> {
    check_open(proto, open)?;
    let o = open.to_abi();
    write_reply(
        buf,
        unique,
        &entry.to_abi(),
        proto.entry_out_size(),
        o.as_bytes(),
    )
}

/// The answer to TMPFILE (7.37): the whole 128-byte `fuse_entry_out` followed by
/// `fuse_open_out`, whatever the negotiated minor (the kernel shortens the entry
/// before 7.9 for CREATE, not for TMPFILE: `fuse_adjust_compat` in
/// `fs/fuse/dev.c`). Checks `open` as [`open()`] does.
pub fn tmpfile(
    buf: &mut [u8],
    unique: u64,
    proto: &Negotiated,
    entry: &Entry,
    open: &Open,
) -> Result<usize, EncodeError> {
    check_open(proto, open)?;
    let o = open.to_abi();
    write_reply(
        buf,
        unique,
        &entry.to_abi(),
        size_of::<abi::fuse_entry_out>(),
        o.as_bytes(),
    )
}

/// The answer to WRITE (7.0) and COPY_FILE_RANGE (7.28): `fuse_write_out` with the
/// number of bytes written.
pub fn write(buf: &mut [u8], unique: u64, size: u32) -> Result<usize, EncodeError> {
    let out = abi::fuse_write_out {
        size: U32::new(size),
        padding: U32::new(0),
    };
    write_reply(buf, unique, &out, size_of::<abi::fuse_write_out>(), &[])
}

/// The answer to COPY_FILE_RANGE (7.28): `fuse_write_out`, the same as [`write()`].
/// A copy larger than `u32::MAX` needs COPY_FILE_RANGE_64 ([`copy_file_range_64`]).
pub fn copy_file_range(
    buf: &mut [u8],
    unique: u64,
    bytes_copied: u32,
) -> Result<usize, EncodeError> {
    write(buf, unique, bytes_copied)
}

/// The answer to COPY_FILE_RANGE_64: `fuse_copy_file_range_out` (7.45).
pub fn copy_file_range_64(
    buf: &mut [u8],
    unique: u64,
    bytes_copied: u64,
) -> Result<usize, EncodeError> {
    let out = abi::fuse_copy_file_range_out {
        bytes_copied: U64::new(bytes_copied),
    };
    write_reply(
        buf,
        unique,
        &out,
        size_of::<abi::fuse_copy_file_range_out>(),
        &[],
    )
}

/// The answer to STATFS: `fuse_statfs_out` (7.0), sent in its 48-byte compat size
/// (no `frsize`) when the negotiated minor is below 4.
pub fn statfs(
    buf: &mut [u8],
    unique: u64,
    proto: &Negotiated,
    st: &Statfs,
) -> Result<usize, EncodeError> {
    let out = abi::fuse_statfs_out { st: st.to_abi() };
    write_reply(buf, unique, &out, proto.statfs_out_size(), &[])
}

/// The answer to GETXATTR or LISTXATTR when the request's size was 0:
/// `fuse_getxattr_out` with the size of the value or of the name list (7.0).
pub fn xattr_size(buf: &mut [u8], unique: u64, size: u32) -> Result<usize, EncodeError> {
    let out = abi::fuse_getxattr_out {
        size: U32::new(size),
        padding: U32::new(0),
    };
    write_reply(buf, unique, &out, size_of::<abi::fuse_getxattr_out>(), &[])
}

/// The answer to GETLK: `fuse_lk_out` with the conflicting lock, or one of type
/// `F_UNLCK` when there is none (7.7).
pub fn lk(buf: &mut [u8], unique: u64, lock: &FileLock) -> Result<usize, EncodeError> {
    let out = abi::fuse_lk_out { lk: lock.to_abi() };
    write_reply(buf, unique, &out, size_of::<abi::fuse_lk_out>(), &[])
}

/// The answer to BMAP: `fuse_bmap_out` with the device block (7.8).
pub fn bmap(buf: &mut [u8], unique: u64, block: u64) -> Result<usize, EncodeError> {
    let out = abi::fuse_bmap_out {
        block: U64::new(block),
    };
    write_reply(buf, unique, &out, size_of::<abi::fuse_bmap_out>(), &[])
}

/// The answer to POLL: `fuse_poll_out` with the ready events (7.11).
pub fn poll(buf: &mut [u8], unique: u64, revents: u32) -> Result<usize, EncodeError> {
    let out = abi::fuse_poll_out {
        revents: U32::new(revents),
        padding: U32::new(0),
    };
    write_reply(buf, unique, &out, size_of::<abi::fuse_poll_out>(), &[])
}

/// The answer to LSEEK: `fuse_lseek_out` with the resulting offset (7.24).
pub fn lseek(buf: &mut [u8], unique: u64, offset: u64) -> Result<usize, EncodeError> {
    let out = abi::fuse_lseek_out {
        offset: U64::new(offset),
    };
    write_reply(buf, unique, &out, size_of::<abi::fuse_lseek_out>(), &[])
}

/// The answer to IOCTL: `fuse_ioctl_out` with the ioctl's return value, followed by
/// `data`, the output bytes (at most the request's `out_size`) (7.11).
pub fn ioctl(buf: &mut [u8], unique: u64, result: i32, data: &[u8]) -> Result<usize, EncodeError> {
    let out = abi::fuse_ioctl_out {
        result: I32::new(result),
        flags: U32::new(0),
        in_iovs: U32::new(0),
        out_iovs: U32::new(0),
    };
    write_reply(buf, unique, &out, size_of::<abi::fuse_ioctl_out>(), data)
}

/// The retry answer to an unrestricted IOCTL (`FUSE_IOCTL_UNRESTRICTED`, CUSE and
/// some FUSE ioctls): `fuse_ioctl_out` with `FUSE_IOCTL_RETRY` and the iovec counts,
/// followed by the input then the output `fuse_ioctl_iovec`s (7.16). The kernel
/// repeats the IOCTL with those ranges of the caller's memory.
///
/// Fails with [`EncodeError::NotSupported`] before 7.16 (older kernels read native
/// `struct iovec`s) and with [`EncodeError::TooLarge`] when there are more than
/// [`FUSE_IOCTL_MAX_IOV`] iovecs in all (the kernel fails the ioctl with `ENOMEM`).
pub fn ioctl_retry(
    buf: &mut [u8],
    unique: u64,
    proto: &Negotiated,
    in_iovs: &[IoctlIovec],
    out_iovs: &[IoctlIovec],
) -> Result<usize, EncodeError> {
    check_unique(unique)?;
    if proto.minor < 16 {
        return Err(EncodeError::NotSupported {
            what: "IOCTL retry with fuse_ioctl_iovec",
            since_minor: 16,
            negotiated_minor: proto.minor,
        });
    }
    let count = in_iovs
        .len()
        .checked_add(out_iovs.len())
        .filter(|&n| n <= FUSE_IOCTL_MAX_IOV as usize)
        .ok_or(EncodeError::TooLarge {
            what: "IOCTL retry iovecs (at most 256 in all)",
        })?;
    let iov_size = size_of::<abi::fuse_ioctl_iovec>();
    // count <= 256, so none of this can overflow.
    let total = OUT_HEADER_SIZE + size_of::<abi::fuse_ioctl_out>() + count * iov_size;
    let out = abi::fuse_ioctl_out {
        result: I32::new(0),
        flags: U32::new(IoctlFlags::RETRY.0),
        in_iovs: U32::new(in_iovs.len() as u32),
        out_iovs: U32::new(out_iovs.len() as u32),
    };
    let header = out_header(total, 0, unique)?;
    let mut w = Writer::new(buf);
    w.reserve(total)?;
    w.put(&header)?;
    w.put(&out)?;
    for v in in_iovs.iter().chain(out_iovs) {
        w.put(&v.to_abi())?;
    }
    Ok(w.pos())
}

/// The answer to INIT: `fuse_init_out` truncated to the size the *kernel's* minor
/// `kernel_minor` knows (`fuse_init_in.minor`; 8 bytes before 7.5, 24 before 7.23,
/// 64 after). See [`Negotiated::init_out_size`].
///
/// To refuse the kernel's major, answer with `major = 7` and the other fields zero;
/// to refuse the session, answer with [`error()`].
pub fn init(
    buf: &mut [u8],
    unique: u64,
    kernel_minor: u32,
    out: &InitOut,
) -> Result<usize, EncodeError> {
    write_reply(
        buf,
        unique,
        &out.to_abi(),
        Negotiated::init_out_size(kernel_minor),
        &[],
    )
}

/// The answer to CUSE_INIT: `cuse_init_out` followed by the device info strings,
/// each NUL-terminated, e.g. `["DEVNAME=mydev"]` (7.12).
///
/// Fails with [`EncodeError::Invalid`] for an empty string or one containing NUL,
/// and with [`EncodeError::TooLarge`] when the strings with their NULs exceed
/// [`CUSE_INIT_INFO_MAX`] bytes (the kernel refuses the reply).
pub fn cuse_init(
    buf: &mut [u8],
    unique: u64,
    out: &CuseInitOut,
    dev_info: &[&str],
) -> Result<usize, EncodeError> {
    check_unique(unique)?;
    let mut info_len: usize = 0;
    for s in dev_info {
        if s.is_empty() || s.as_bytes().contains(&0) {
            return Err(EncodeError::Invalid {
                reason: "CUSE device info strings must be non-empty and contain no NUL",
            });
        }
        info_len = info_len
            .checked_add(s.len())
            .and_then(|n| n.checked_add(1))
            .filter(|&n| n <= CUSE_INIT_INFO_MAX)
            .ok_or(EncodeError::TooLarge {
                what: "CUSE device info (at most 4096 bytes)",
            })?;
    }
    // info_len <= 4096: no overflow.
    let total = OUT_HEADER_SIZE + size_of::<abi::cuse_init_out>() + info_len;
    let header = out_header(total, 0, unique)?;
    let mut w = Writer::new(buf);
    w.reserve(total)?;
    w.put(&header)?;
    w.put(&out.to_abi())?;
    for s in dev_info {
        w.bytes(s.as_bytes())?;
        w.bytes(&[0])?;
    }
    Ok(w.pos())
}
