//! Encoders of every notification (codes 1 to 9).
use core::mem::size_of;

use zerocopy::byteorder::native_endian::{I64, U32, U64};
use zerocopy::{Immutable, IntoBytes};

use crate::abi;
use crate::encode::Writer;
use crate::error::EncodeError;
use crate::flags::RequestFlags;
use crate::negotiated::Negotiated;
use crate::opcode::NotifyCode;
use crate::reply::{out_header, validate_name, OUT_HEADER_SIZE};

/// Size of the header part of a STORE notification: `fuse_out_header` +
/// `fuse_notify_store_out`.
pub const STORE_HEADER_SIZE: usize = OUT_HEADER_SIZE + size_of::<abi::fuse_notify_store_out>();

/// The kernel refuses offsets at or above `MAX_LFS_FILESIZE` (`i64::MAX` on 64-bit).
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

/// Fails when `proto` predates `code`.
fn check_minor(proto: &Negotiated, code: NotifyCode) -> Result<(), EncodeError> {
    let since = code.since_minor().unwrap_or(u32::MAX);
    if proto.minor < since {
        return Err(EncodeError::NotSupported {
            what: notify_name(code),
            since_minor: since,
            negotiated_minor: proto.minor,
        });
    }
    Ok(())
}

const fn notify_name(code: NotifyCode) -> &'static str {
    match code.0 {
        1 => "FUSE_NOTIFY_POLL",
        2 => "FUSE_NOTIFY_INVAL_INODE",
        3 => "FUSE_NOTIFY_INVAL_ENTRY",
        4 => "FUSE_NOTIFY_STORE",
        5 => "FUSE_NOTIFY_RETRIEVE",
        6 => "FUSE_NOTIFY_DELETE",
        7 => "FUSE_NOTIFY_RESEND",
        8 => "FUSE_NOTIFY_INC_EPOCH",
        9 => "FUSE_NOTIFY_PRUNE",
        _ => "unknown notification",
    }
}

/// Writes header + `fixed` + `tail` (+ a NUL when `nul`).
fn write_notify<T: IntoBytes + Immutable>(
    buf: &mut [u8],
    code: NotifyCode,
    fixed: &T,
    tail: &[u8],
    nul: bool,
) -> Result<usize, EncodeError> {
    let total = OUT_HEADER_SIZE
        .checked_add(size_of::<T>())
        .and_then(|n| n.checked_add(tail.len()))
        .and_then(|n| n.checked_add(usize::from(nul)))
        .ok_or(EncodeError::TooLarge {
            what: "notification",
        })?;
    let header = out_header(total, code.0, 0)?;
    let mut w = Writer::new(buf);
    w.reserve(total)?;
    w.put(&header)?;
    w.put(fixed)?;
    w.bytes(tail)?;
    if nul {
        w.bytes(&[0])?;
    }
    Ok(w.pos())
}

/// NOTIFY_POLL (7.11): wake up the poller waiting on handle `kh` (the `kh` of a POLL
/// request that had `FUSE_POLL_SCHEDULE_NOTIFY`).
pub fn poll_wakeup(buf: &mut [u8], proto: &Negotiated, kh: u64) -> Result<usize, EncodeError> {
    check_minor(proto, NotifyCode::POLL)?;
    let out = abi::fuse_notify_poll_wakeup_out { kh: U64::new(kh) };
    write_notify(buf, NotifyCode::POLL, &out, &[], false)
}

/// NOTIFY_INVAL_INODE (7.12): drop the cached attributes of inode `ino` and its
/// cached pages from `off` for `len` bytes (`len` <= 0: to the end of the file;
/// `off` < 0: attributes only).
pub fn inval_inode(
    buf: &mut [u8],
    proto: &Negotiated,
    ino: u64,
    off: i64,
    len: i64,
) -> Result<usize, EncodeError> {
    check_minor(proto, NotifyCode::INVAL_INODE)?;
    let out = abi::fuse_notify_inval_inode_out {
        ino: U64::new(ino),
        off: I64::new(off),
        len: I64::new(len),
    };
    write_notify(buf, NotifyCode::INVAL_INODE, &out, &[], false)
}

/// NOTIFY_INVAL_ENTRY (7.12): drop the cached entry `name` in directory `parent`.
/// The name is followed by a NUL on the wire.
///
/// `flags` may hold [`RequestFlags::EXPIRE_ONLY`] (7.38: only mark the entry
/// expired, keeping it for open files and mounts). Fails with
/// [`EncodeError::NotSupported`] for nonzero flags before 7.38 (the field was
/// padding) and with [`EncodeError::BadName`] for a name that is empty, has NUL or
/// `/`, or is longer than [`NAME_MAX`](crate::reply::NAME_MAX).
pub fn inval_entry(
    buf: &mut [u8],
    proto: &Negotiated,
    parent: u64,
    name: &[u8],
    flags: RequestFlags,
) -> Result<usize, EncodeError> {
    check_minor(proto, NotifyCode::INVAL_ENTRY)?;
    if !flags.is_empty() && proto.minor < 38 {
        return Err(EncodeError::NotSupported {
            what: "FUSE_NOTIFY_INVAL_ENTRY flags (FUSE_EXPIRE_ONLY)",
            since_minor: 38,
            negotiated_minor: proto.minor,
        });
    }
    validate_name(name)?;
    let out = abi::fuse_notify_inval_entry_out {
        parent: U64::new(parent),
        // validate_name bounds the length by 1024.
        namelen: U32::new(name.len() as u32),
        flags: U32::new(flags.0),
    };
    write_notify(buf, NotifyCode::INVAL_ENTRY, &out, name, true)
}

/// NOTIFY_DELETE (7.18): the entry `name` of directory `parent`, which was inode
/// `child`, is gone; the kernel drops the dentry if it still points at `child`
/// (and reports the deletion to inotify watchers). Names are checked as for
/// [`inval_entry`].
pub fn delete(
    buf: &mut [u8],
    proto: &Negotiated,
    parent: u64,
    child: u64,
    name: &[u8],
) -> Result<usize, EncodeError> {
    check_minor(proto, NotifyCode::DELETE)?;
    validate_name(name)?;
    let out = abi::fuse_notify_delete_out {
        parent: U64::new(parent),
        child: U64::new(child),
        namelen: U32::new(name.len() as u32),
        padding: U32::new(0),
    };
    write_notify(buf, NotifyCode::DELETE, &out, name, true)
}

fn check_offset(offset: u64) -> Result<(), EncodeError> {
    if offset >= MAX_LFS_FILESIZE {
        return Err(EncodeError::Invalid {
            reason: "offset must be below MAX_LFS_FILESIZE (i64::MAX); the kernel answers EINVAL",
        });
    }
    Ok(())
}

fn store_out(
    nodeid: u64,
    offset: u64,
    len: usize,
) -> Result<abi::fuse_notify_store_out, EncodeError> {
    let size = u32::try_from(len).map_err(|_| EncodeError::TooLarge {
        what: "NOTIFY_STORE data",
    })?;
    check_offset(offset)?;
    Ok(abi::fuse_notify_store_out {
        nodeid: U64::new(nodeid),
        offset: U64::new(offset),
        size: U32::new(size),
        padding: U32::new(0),
    })
}

/// NOTIFY_STORE (7.15): put `data` into the page cache of inode `nodeid` at `offset`
/// (extending the cached size if needed). The inode must be a regular file the
/// kernel has cached (else `ENOENT`/`EINVAL` from the write).
///
/// Fails with [`EncodeError::Invalid`] for an offset at or above `i64::MAX` and
/// [`EncodeError::TooLarge`] when the message does not fit a `u32` length.
pub fn store(
    buf: &mut [u8],
    proto: &Negotiated,
    nodeid: u64,
    offset: u64,
    data: &[u8],
) -> Result<usize, EncodeError> {
    check_minor(proto, NotifyCode::STORE)?;
    let out = store_out(nodeid, offset, data.len())?;
    write_notify(buf, NotifyCode::STORE, &out, data, false)
}

/// The first [`STORE_HEADER_SIZE`] bytes of a NOTIFY_STORE (7.15) whose `data_len`
/// bytes of data the caller sends separately (`writev([header, data])`). Checks as
/// [`store`].
pub fn store_header(
    proto: &Negotiated,
    nodeid: u64,
    offset: u64,
    data_len: usize,
) -> Result<[u8; STORE_HEADER_SIZE], EncodeError> {
    check_minor(proto, NotifyCode::STORE)?;
    let out = store_out(nodeid, offset, data_len)?;
    let total = STORE_HEADER_SIZE
        .checked_add(data_len)
        .ok_or(EncodeError::TooLarge {
            what: "NOTIFY_STORE data",
        })?;
    let header = out_header(total, NotifyCode::STORE.0, 0)?;
    let mut bytes = [0u8; STORE_HEADER_SIZE];
    let mut w = Writer::new(&mut bytes);
    w.put(&header)?;
    w.put(&out)?;
    Ok(bytes)
}

/// NOTIFY_RETRIEVE (7.15): ask the kernel for up to `size` bytes of inode `nodeid`'s
/// page cache from `offset`. The kernel answers with a NOTIFY_REPLY request whose
/// `unique` is `notify_unique` (choose one not used by any request in flight).
///
/// Fails with [`EncodeError::Invalid`] for an offset at or above `i64::MAX`.
pub fn retrieve(
    buf: &mut [u8],
    proto: &Negotiated,
    notify_unique: u64,
    nodeid: u64,
    offset: u64,
    size: u32,
) -> Result<usize, EncodeError> {
    check_minor(proto, NotifyCode::RETRIEVE)?;
    check_offset(offset)?;
    let out = abi::fuse_notify_retrieve_out {
        notify_unique: U64::new(notify_unique),
        nodeid: U64::new(nodeid),
        offset: U64::new(offset),
        size: U32::new(size),
        padding: U32::new(0),
    };
    write_notify(buf, NotifyCode::RETRIEVE, &out, &[], false)
}

/// NOTIFY_RESEND (7.40): a bare 16-byte header. The kernel puts every request that
/// was read but not answered back at the head of the queue, with bit 63
/// ([`FUSE_UNIQUE_RESEND`](crate::abi::FUSE_UNIQUE_RESEND)) set in `unique`.
/// FORGETs and NOTIFY_REPLY are not resent.
pub fn resend(buf: &mut [u8], proto: &Negotiated) -> Result<usize, EncodeError> {
    check_minor(proto, NotifyCode::RESEND)?;
    write_notify(buf, NotifyCode::RESEND, &(), &[], false)
}

/// NOTIFY_INC_EPOCH (7.44): a bare 16-byte header. The kernel increments the
/// connection's epoch, so every dentry (and readdir cache) from before is
/// revalidated on next use.
pub fn inc_epoch(buf: &mut [u8], proto: &Negotiated) -> Result<usize, EncodeError> {
    check_minor(proto, NotifyCode::INC_EPOCH)?;
    write_notify(buf, NotifyCode::INC_EPOCH, &(), &[], false)
}

/// NOTIFY_PRUNE (7.45): `fuse_notify_prune_out` followed by the nodeids whose
/// inodes the kernel should evict from its cache if unused (dentries included);
/// the kernel then sends FORGETs as usual.
///
/// The kernel takes any count (it works through them 512 at a time); the only limit
/// is the `u32` message length, beyond which this fails with
/// [`EncodeError::TooLarge`].
pub fn prune(buf: &mut [u8], proto: &Negotiated, nodeids: &[u64]) -> Result<usize, EncodeError> {
    check_minor(proto, NotifyCode::PRUNE)?;
    let count = u32::try_from(nodeids.len()).map_err(|_| EncodeError::TooLarge {
        what: "NOTIFY_PRUNE nodeids",
    })?;
    let ids_len = nodeids
        .len()
        .checked_mul(size_of::<u64>())
        .ok_or(EncodeError::TooLarge {
            what: "NOTIFY_PRUNE nodeids",
        })?;
    let total = (OUT_HEADER_SIZE + size_of::<abi::fuse_notify_prune_out>())
        .checked_add(ids_len)
        .ok_or(EncodeError::TooLarge {
            what: "NOTIFY_PRUNE nodeids",
        })?;
    let header = out_header(total, NotifyCode::PRUNE.0, 0)?;
    let out = abi::fuse_notify_prune_out {
        count: U32::new(count),
        padding: U32::new(0),
        spare: U64::new(0),
    };
    let mut w = Writer::new(buf);
    w.reserve(total)?;
    w.put(&header)?;
    w.put(&out)?;
    for id in nodeids {
        w.put(&U64::new(*id))?;
    }
    Ok(w.pos())
}
