//! Reading a reply as the kernel does: for fake kernels, property tests and fuzzing.
//!
//! The checks mirror `fuse_dev_do_write` and `copy_out_args` in the kernel's
//! `fs/fuse/dev.c`: the header's `len` equals the bytes written; `error` is 0 or
//! -1..=-511; an error reply has no body; a fixed-size body has exactly its size;
//! a variable body (data, listings, INIT) is at most what was asked for.
use core::mem::size_of;
use core::time::Duration;

use zerocopy::FromBytes;

use super::attr::{timeout_from_wire, Attr, Entry, FileLock, IoctlIovec, Open, Statfs};
use super::dirent::{self, DirentFault, Dirents, DirentsPlus};
use super::encode::{ERRNO_MAX, OUT_HEADER_SIZE};
use super::init::{CuseInitOut, InitOut, CUSE_INIT_INFO_MAX};
use crate::abi;
use crate::error::ParseError;
use crate::flags::{IoctlFlags, FUSE_IOCTL_MAX_IOV};
use crate::negotiated::Negotiated;
use crate::opcode::Opcode;

/// The body layout a reply is read as. [`ReplyShape::for_opcode`] gives the one
/// for each request; [`parse_as`] takes it explicitly where the opcode alone does
/// not decide (GETXATTR and LISTXATTR asked with size 0 are answered with
/// [`ReplyShape::XattrSize`]).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyShape {
    /// No body.
    Empty,
    /// `fuse_entry_out`.
    Entry,
    /// `fuse_attr_out`.
    Attr,
    /// `fuse_statx_out` (7.39).
    Statx,
    /// `fuse_open_out`.
    Open,
    /// `fuse_entry_out` + `fuse_open_out`.
    Create,
    /// `fuse_write_out`.
    Write,
    /// `fuse_statfs_out`.
    Statfs,
    /// Bytes.
    Data,
    /// `fuse_getxattr_out`.
    XattrSize,
    /// `fuse_lk_out`.
    Lk,
    /// `fuse_bmap_out`.
    Bmap,
    /// `fuse_ioctl_out` + data or iovecs.
    Ioctl,
    /// `fuse_poll_out`.
    Poll,
    /// `fuse_lseek_out`.
    Lseek,
    /// `fuse_copy_file_range_out` (7.45).
    CopyFileRange64,
    /// `fuse_dirent` list.
    Dirents,
    /// `fuse_direntplus` list (7.21).
    DirentsPlus,
    /// `fuse_init_out`.
    Init,
    /// `cuse_init_out` + device info.
    CuseInit,
    /// An opcode this crate does not know: the body is returned as is.
    Unknown,
}

impl ReplyShape {
    /// The shape of a successful reply to `opcode`, or `None` for requests the
    /// kernel never expects an answer to (FORGET, BATCH_FORGET, NOTIFY_REPLY).
    ///
    /// GETXATTR and LISTXATTR map to [`ReplyShape::Data`]; when the request's size
    /// was 0 the answer is [`ReplyShape::XattrSize`] instead.
    pub const fn for_opcode(opcode: Opcode) -> Option<ReplyShape> {
        use ReplyShape as S;
        Some(match opcode {
            Opcode::FORGET | Opcode::BATCH_FORGET | Opcode::NOTIFY_REPLY => return None,
            Opcode::LOOKUP | Opcode::MKNOD | Opcode::MKDIR | Opcode::SYMLINK | Opcode::LINK => {
                S::Entry
            }
            Opcode::GETATTR | Opcode::SETATTR => S::Attr,
            Opcode::STATX => S::Statx,
            Opcode::OPEN | Opcode::OPENDIR => S::Open,
            Opcode::CREATE | Opcode::TMPFILE => S::Create,
            Opcode::WRITE | Opcode::COPY_FILE_RANGE => S::Write,
            Opcode::STATFS => S::Statfs,
            Opcode::READ | Opcode::READLINK | Opcode::GETXATTR | Opcode::LISTXATTR => S::Data,
            Opcode::GETLK => S::Lk,
            Opcode::BMAP => S::Bmap,
            Opcode::IOCTL => S::Ioctl,
            Opcode::POLL => S::Poll,
            Opcode::LSEEK => S::Lseek,
            Opcode::COPY_FILE_RANGE_64 => S::CopyFileRange64,
            Opcode::READDIR => S::Dirents,
            Opcode::READDIRPLUS => S::DirentsPlus,
            Opcode::INIT => S::Init,
            Opcode::CUSE_INIT => S::CuseInit,
            Opcode::SETLK
            | Opcode::SETLKW
            | Opcode::UNLINK
            | Opcode::RMDIR
            | Opcode::RENAME
            | Opcode::RENAME2
            | Opcode::RELEASE
            | Opcode::RELEASEDIR
            | Opcode::FSYNC
            | Opcode::FSYNCDIR
            | Opcode::FLUSH
            | Opcode::SETXATTR
            | Opcode::REMOVEXATTR
            | Opcode::ACCESS
            | Opcode::FALLOCATE
            | Opcode::SYNCFS
            | Opcode::SETUPMAPPING
            | Opcode::REMOVEMAPPING
            | Opcode::DESTROY
            | Opcode::INTERRUPT => S::Empty,
            _ => S::Unknown,
        })
    }
}

/// A parsed reply: the request it answers and its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The `unique` of the request answered (bit 63 set for a resent request, 7.40).
    pub unique: u64,
    /// The body.
    pub body: ReplyBody<'a>,
}

/// The body of a parsed reply, borrowing from the parsed bytes.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyBody<'a> {
    /// The request failed with this errno (1..=511; the header carried its negation).
    Error(i32),
    /// Success without a body.
    Empty,
    /// LOOKUP, MKNOD, MKDIR, SYMLINK, LINK. Before 7.9 `attr.blksize` and
    /// `attr.flags` are not on the wire and read as 0.
    Entry(Entry),
    /// GETATTR, SETATTR (before 7.9: `blksize` and `flags` read as 0).
    Attr {
        /// Attribute cache timeout.
        attr_valid: Duration,
        /// The attributes.
        attr: Attr,
    },
    /// STATX (7.39).
    Statx {
        /// Attribute cache timeout.
        attr_valid: Duration,
        /// The reply's `flags`.
        flags: u32,
        /// The attributes.
        stat: &'a abi::fuse_statx,
    },
    /// OPEN, OPENDIR.
    Open(Open),
    /// CREATE, TMPFILE.
    Create {
        /// The new entry.
        entry: Entry,
        /// The open file.
        open: Open,
    },
    /// WRITE and COPY_FILE_RANGE: bytes written.
    Write(u32),
    /// STATFS (before 7.4 `frsize` is not on the wire and reads as 0).
    Statfs(Statfs),
    /// READ, READLINK, GETXATTR/LISTXATTR with a nonzero size: the bytes.
    Data(&'a [u8]),
    /// GETXATTR/LISTXATTR asked with size 0: the size needed.
    XattrSize(u32),
    /// GETLK: the conflicting lock (or `F_UNLCK`).
    Lk(FileLock),
    /// BMAP: the device block.
    Bmap(u64),
    /// IOCTL: the result and the output bytes.
    Ioctl {
        /// The ioctl's return value.
        result: i32,
        /// `fuse_ioctl_out.flags` (without `FUSE_IOCTL_RETRY`).
        flags: IoctlFlags,
        /// Output bytes.
        data: &'a [u8],
    },
    /// IOCTL answered with `FUSE_IOCTL_RETRY` (7.16 iovecs).
    IoctlRetry {
        /// `fuse_ioctl_out.flags`, `FUSE_IOCTL_RETRY` included.
        flags: IoctlFlags,
        /// Input ranges.
        in_iovs: IoctlIovecs<'a>,
        /// Output ranges.
        out_iovs: IoctlIovecs<'a>,
    },
    /// POLL: ready events.
    Poll(u32),
    /// LSEEK: the resulting offset.
    Lseek(u64),
    /// COPY_FILE_RANGE_64 (7.45): bytes copied.
    CopyFileRange64(u64),
    /// READDIR entries.
    Dirents(Dirents<'a>),
    /// READDIRPLUS entries (7.21).
    DirentsPlus(DirentsPlus<'a>),
    /// INIT.
    Init {
        /// The answer; fields beyond `body_len` read as 0, as the kernel reads them.
        out: InitOut,
        /// Bytes of `fuse_init_out` sent (8, 24 or 64 from our encoder).
        body_len: usize,
    },
    /// CUSE_INIT (7.12).
    CuseInit {
        /// The answer.
        out: CuseInitOut,
        /// The device info strings.
        dev_info: DevInfo<'a>,
    },
    /// The answer to an opcode this crate does not know: the raw body.
    Unknown(&'a [u8]),
}

/// The `fuse_ioctl_iovec`s of an IOCTL retry, read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoctlIovecs<'a> {
    iovs: &'a [abi::fuse_ioctl_iovec],
}

impl<'a> IoctlIovecs<'a> {
    /// Number of iovecs.
    pub fn len(&self) -> usize {
        self.iovs.len()
    }

    /// True if there is none.
    pub fn is_empty(&self) -> bool {
        self.iovs.is_empty()
    }

    /// The ABI structs.
    pub fn as_abi(&self) -> &'a [abi::fuse_ioctl_iovec] {
        self.iovs
    }
}

impl<'a> Iterator for IoctlIovecs<'a> {
    type Item = IoctlIovec;

    fn next(&mut self) -> Option<IoctlIovec> {
        let (first, rest) = self.iovs.split_first()?;
        self.iovs = rest;
        Some(IoctlIovec::from_abi(first))
    }
}

/// The NUL-terminated device info strings after `cuse_init_out` (`DEVNAME=...`).
/// Yields each string without its NUL; a last string without NUL is yielded too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevInfo<'a> {
    rest: &'a [u8],
}

impl<'a> DevInfo<'a> {
    /// The raw bytes not yet iterated.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for DevInfo<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        match self.rest.iter().position(|&b| b == 0) {
            Some(i) => {
                let s = self.rest.get(..i)?;
                self.rest = self.rest.get(i + 1..).unwrap_or(&[]);
                Some(s)
            }
            None => {
                let s = self.rest;
                self.rest = &[];
                Some(s)
            }
        }
    }
}

/// Parses the bytes of one reply to a request of `opcode`, on a connection that
/// negotiated `proto`.
///
/// Equivalent to [`parse_as`] with [`ReplyShape::for_opcode`]; a reply to FORGET,
/// BATCH_FORGET or NOTIFY_REPLY is an error (the kernel never expects one).
/// Never panics and never allocates.
pub fn parse<'a>(
    bytes: &'a [u8],
    opcode: Opcode,
    proto: &Negotiated,
) -> Result<Reply<'a>, ParseError> {
    let shape = ReplyShape::for_opcode(opcode).ok_or(ParseError::Invalid {
        opcode,
        reason: "the kernel never expects a reply to this request",
    })?;
    parse_as(bytes, opcode, shape, proto)
}

/// Parses the bytes of one reply as `shape`; `opcode` only labels errors.
pub fn parse_as<'a>(
    bytes: &'a [u8],
    opcode: Opcode,
    shape: ReplyShape,
    proto: &Negotiated,
) -> Result<Reply<'a>, ParseError> {
    let (header, body) =
        abi::fuse_out_header::ref_from_prefix(bytes).map_err(|_| ParseError::ShortHeader {
            need: OUT_HEADER_SIZE,
            have: bytes.len(),
        })?;
    let len = header.len.get();
    if usize::try_from(len).ok() != Some(bytes.len()) {
        return Err(ParseError::LengthMismatch {
            header: len,
            buffer: bytes.len(),
        });
    }
    let unique = header.unique.get();
    if unique == 0 {
        return Err(ParseError::Invalid {
            opcode,
            reason: "unique 0 marks a notification, not a reply (use notify::parse)",
        });
    }
    let error = header.error.get();
    if !(-ERRNO_MAX..=0).contains(&error) {
        return Err(ParseError::Invalid {
            opcode,
            reason: "reply error must be 0 or -1..=-511 (kernel: EINVAL)",
        });
    }
    if error != 0 {
        if !body.is_empty() {
            return Err(ParseError::Invalid {
                opcode,
                reason: "an error reply carries no body (kernel: EINVAL)",
            });
        }
        return Ok(Reply {
            unique,
            body: ReplyBody::Error(-error),
        });
    }
    let body = parse_body(body, opcode, shape, proto)?;
    Ok(Reply { unique, body })
}

/// Reads exactly `size` bytes (a compat prefix of `T` or all of it) and zero-fills
/// the rest of `T`.
fn exact<T: FromBytes + zerocopy::IntoBytes>(
    body: &[u8],
    opcode: Opcode,
    what: &'static str,
    size: usize,
) -> Result<T, ParseError> {
    check_exact(body, opcode, what, size)?;
    prefix_zero_filled(body, opcode, what)
}

/// Fails unless `body` is exactly `size` bytes.
fn check_exact(
    body: &[u8],
    opcode: Opcode,
    what: &'static str,
    size: usize,
) -> Result<(), ParseError> {
    if body.len() < size {
        return Err(ParseError::ShortBody {
            opcode,
            what,
            need: size,
            have: body.len(),
        });
    }
    if body.len() > size {
        return Err(ParseError::Invalid {
            opcode,
            reason: "reply body is longer than its fixed struct (kernel: EINVAL)",
        });
    }
    Ok(())
}

/// Reads `T` from `body`, which may be shorter than `T` (the missing tail reads as 0).
fn prefix_zero_filled<T: FromBytes + zerocopy::IntoBytes>(
    body: &[u8],
    opcode: Opcode,
    what: &'static str,
) -> Result<T, ParseError> {
    let mut v = T::new_zeroed();
    let dst = v.as_mut_bytes();
    let n = body.len().min(dst.len());
    let (d, s) = (dst.get_mut(..n), body.get(..n));
    match (d, s) {
        (Some(d), Some(s)) => {
            d.copy_from_slice(s);
            Ok(v)
        }
        _ => Err(ParseError::ShortBody {
            opcode,
            what,
            need: size_of::<T>(),
            have: body.len(),
        }),
    }
}

fn parse_body<'a>(
    body: &'a [u8],
    opcode: Opcode,
    shape: ReplyShape,
    proto: &Negotiated,
) -> Result<ReplyBody<'a>, ParseError> {
    use ReplyShape as S;
    Ok(match shape {
        S::Empty => {
            if !body.is_empty() {
                return Err(ParseError::Invalid {
                    opcode,
                    reason: "this reply has no body (kernel: EINVAL)",
                });
            }
            ReplyBody::Empty
        }
        S::Entry => {
            let e: abi::fuse_entry_out =
                exact(body, opcode, "fuse_entry_out", proto.entry_out_size())?;
            ReplyBody::Entry(Entry::from_abi(&e))
        }
        S::Attr => {
            let a: abi::fuse_attr_out =
                exact(body, opcode, "fuse_attr_out", proto.attr_out_size())?;
            ReplyBody::Attr {
                attr_valid: timeout_from_wire(a.attr_valid.get(), a.attr_valid_nsec.get()),
                attr: Attr::from_abi(&a.attr),
            }
        }
        S::Statx => {
            let need = size_of::<abi::fuse_statx_out>();
            check_exact(body, opcode, "fuse_statx_out", need)?;
            let s =
                abi::fuse_statx_out::ref_from_bytes(body).map_err(|_| ParseError::ShortBody {
                    opcode,
                    what: "fuse_statx_out",
                    need,
                    have: body.len(),
                })?;
            ReplyBody::Statx {
                attr_valid: timeout_from_wire(s.attr_valid.get(), s.attr_valid_nsec.get()),
                flags: s.flags.get(),
                stat: &s.stat,
            }
        }
        S::Open => {
            let o: abi::fuse_open_out = exact(
                body,
                opcode,
                "fuse_open_out",
                size_of::<abi::fuse_open_out>(),
            )?;
            ReplyBody::Open(Open::from_abi(&o))
        }
        S::Create => {
            // The kernel shortens the entry for CREATE before 7.9, not for TMPFILE
            // (`fuse_adjust_compat` lists LOOKUP, CREATE, MKNOD, MKDIR, SYMLINK and
            // LINK only).
            let esize = if opcode == Opcode::TMPFILE {
                size_of::<abi::fuse_entry_out>()
            } else {
                proto.entry_out_size()
            };
            let osize = size_of::<abi::fuse_open_out>();
            let need = esize + osize;
            if body.len() < need {
                return Err(ParseError::ShortBody {
                    opcode,
                    what: "fuse_entry_out + fuse_open_out",
                    need,
                    have: body.len(),
                });
            }
            let (eb, ob) = body.split_at(esize);
            let e: abi::fuse_entry_out = prefix_zero_filled(eb, opcode, "fuse_entry_out")?;
            let o: abi::fuse_open_out = exact(ob, opcode, "fuse_open_out", osize)?;
            ReplyBody::Create {
                entry: Entry::from_abi(&e),
                open: Open::from_abi(&o),
            }
        }
        S::Write => {
            let w: abi::fuse_write_out = exact(
                body,
                opcode,
                "fuse_write_out",
                size_of::<abi::fuse_write_out>(),
            )?;
            ReplyBody::Write(w.size.get())
        }
        S::Statfs => {
            let s: abi::fuse_statfs_out =
                exact(body, opcode, "fuse_statfs_out", proto.statfs_out_size())?;
            ReplyBody::Statfs(Statfs::from_abi(&s.st))
        }
        S::Data => ReplyBody::Data(body),
        S::XattrSize => {
            let x: abi::fuse_getxattr_out = exact(
                body,
                opcode,
                "fuse_getxattr_out",
                size_of::<abi::fuse_getxattr_out>(),
            )?;
            ReplyBody::XattrSize(x.size.get())
        }
        S::Lk => {
            let l: abi::fuse_lk_out =
                exact(body, opcode, "fuse_lk_out", size_of::<abi::fuse_lk_out>())?;
            ReplyBody::Lk(FileLock::from_abi(&l.lk))
        }
        S::Bmap => {
            let b: abi::fuse_bmap_out = exact(
                body,
                opcode,
                "fuse_bmap_out",
                size_of::<abi::fuse_bmap_out>(),
            )?;
            ReplyBody::Bmap(b.block.get())
        }
        S::Ioctl => parse_ioctl(body, opcode)?,
        S::Poll => {
            let p: abi::fuse_poll_out = exact(
                body,
                opcode,
                "fuse_poll_out",
                size_of::<abi::fuse_poll_out>(),
            )?;
            ReplyBody::Poll(p.revents.get())
        }
        S::Lseek => {
            let l: abi::fuse_lseek_out = exact(
                body,
                opcode,
                "fuse_lseek_out",
                size_of::<abi::fuse_lseek_out>(),
            )?;
            ReplyBody::Lseek(l.offset.get())
        }
        S::CopyFileRange64 => {
            let c: abi::fuse_copy_file_range_out = exact(
                body,
                opcode,
                "fuse_copy_file_range_out",
                size_of::<abi::fuse_copy_file_range_out>(),
            )?;
            ReplyBody::CopyFileRange64(c.bytes_copied.get())
        }
        S::Dirents => {
            dirent::validate(body, false).map_err(|f| fault(f, opcode))?;
            ReplyBody::Dirents(Dirents::new(body))
        }
        S::DirentsPlus => {
            dirent::validate(body, true).map_err(|f| fault(f, opcode))?;
            ReplyBody::DirentsPlus(DirentsPlus::new(body))
        }
        S::Init => {
            // A variable-size argument: the kernel accepts any length up to the
            // struct and reads the rest as zero.
            if body.len() > size_of::<abi::fuse_init_out>() {
                return Err(ParseError::Invalid {
                    opcode,
                    reason: "INIT reply longer than fuse_init_out (kernel: EINVAL)",
                });
            }
            let o: abi::fuse_init_out = prefix_zero_filled(body, opcode, "fuse_init_out")?;
            ReplyBody::Init {
                out: InitOut::from_abi(&o),
                body_len: body.len(),
            }
        }
        S::CuseInit => {
            let fixed = size_of::<abi::cuse_init_out>();
            if body.len() < fixed {
                return Err(ParseError::ShortBody {
                    opcode,
                    what: "cuse_init_out",
                    need: fixed,
                    have: body.len(),
                });
            }
            let (ob, info) = body.split_at(fixed);
            if info.len() > CUSE_INIT_INFO_MAX {
                return Err(ParseError::Invalid {
                    opcode,
                    reason: "CUSE device info longer than 4096 bytes (kernel: EINVAL)",
                });
            }
            let o: abi::cuse_init_out = prefix_zero_filled(ob, opcode, "cuse_init_out")?;
            ReplyBody::CuseInit {
                out: CuseInitOut::from_abi(&o),
                dev_info: DevInfo { rest: info },
            }
        }
        S::Unknown => ReplyBody::Unknown(body),
    })
}

fn fault(f: DirentFault, opcode: Opcode) -> ParseError {
    match f {
        DirentFault::Short { what, need, have } => ParseError::ShortBody {
            opcode,
            what,
            need,
            have,
        },
        DirentFault::Invalid(reason) => ParseError::Invalid { opcode, reason },
    }
}

fn parse_ioctl(body: &[u8], opcode: Opcode) -> Result<ReplyBody<'_>, ParseError> {
    let (out, rest) =
        abi::fuse_ioctl_out::ref_from_prefix(body).map_err(|_| ParseError::ShortBody {
            opcode,
            what: "fuse_ioctl_out",
            need: size_of::<abi::fuse_ioctl_out>(),
            have: body.len(),
        })?;
    let flags = IoctlFlags(out.flags.get());
    if !flags.contains(IoctlFlags::RETRY) {
        return Ok(ReplyBody::Ioctl {
            result: out.result.get(),
            flags,
            data: rest,
        });
    }
    // As fuse_do_ioctl: at most FUSE_IOCTL_MAX_IOV iovecs in all (else ENOMEM), and
    // the bytes after fuse_ioctl_out are exactly the iovecs (else EIO).
    let n_in = out.in_iovs.get();
    let n_out = out.out_iovs.get();
    let count = u64::from(n_in) + u64::from(n_out);
    if count > u64::from(FUSE_IOCTL_MAX_IOV) {
        return Err(ParseError::CountOverrun {
            opcode,
            what: "ioctl iovecs",
            count,
            available: rest.len(),
        });
    }
    // count <= 256: no overflow.
    let iov_size = size_of::<abi::fuse_ioctl_iovec>();
    let need = count as usize * iov_size;
    if rest.len() != need {
        return Err(ParseError::CountOverrun {
            opcode,
            what: "ioctl iovecs",
            count,
            available: rest.len(),
        });
    }
    let (ib, ob) = rest.split_at(n_in as usize * iov_size);
    let ins = <[abi::fuse_ioctl_iovec]>::ref_from_bytes(ib).map_err(|_| ParseError::Invalid {
        opcode,
        reason: "malformed ioctl iovecs",
    })?;
    let outs = <[abi::fuse_ioctl_iovec]>::ref_from_bytes(ob).map_err(|_| ParseError::Invalid {
        opcode,
        reason: "malformed ioctl iovecs",
    })?;
    Ok(ReplyBody::IoctlRetry {
        flags,
        in_iovs: IoctlIovecs { iovs: ins },
        out_iovs: IoctlIovecs { iovs: outs },
    })
}
