//! Reading a notification as the kernel does (`fuse_notify` in `fs/fuse/dev.c`).
use core::mem::size_of;

use zerocopy::byteorder::native_endian::U64;
use zerocopy::FromBytes;

use crate::abi;
use crate::error::ParseError;
use crate::flags::RequestFlags;
use crate::opcode::{NotifyCode, Opcode};
use crate::reply::{KERNEL_NAME_MAX, OUT_HEADER_SIZE};

/// Errors of notifications carry no opcode; `Opcode(0)` stands for "notification".
const NOTIFY: Opcode = Opcode(0);

/// The kernel refuses offsets at or above `MAX_LFS_FILESIZE` (`i64::MAX` on 64-bit).
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

/// A parsed notification, borrowing from the parsed bytes.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notification<'a> {
    /// NOTIFY_POLL (7.11).
    Poll {
        /// The poll handle.
        kh: u64,
    },
    /// NOTIFY_INVAL_INODE (7.12).
    InvalInode {
        /// The inode.
        ino: u64,
        /// Start of the range (negative: attributes only).
        off: i64,
        /// Length of the range (0 or less: to the end).
        len: i64,
    },
    /// NOTIFY_INVAL_ENTRY (7.12; `flags` 7.38).
    InvalEntry {
        /// The directory.
        parent: u64,
        /// The name, without its NUL.
        name: &'a [u8],
        /// `FUSE_EXPIRE_ONLY` (7.38).
        flags: RequestFlags,
    },
    /// NOTIFY_STORE (7.15).
    Store {
        /// The inode.
        nodeid: u64,
        /// Where the data goes.
        offset: u64,
        /// The data.
        data: &'a [u8],
    },
    /// NOTIFY_RETRIEVE (7.15).
    Retrieve {
        /// `unique` of the NOTIFY_REPLY request the kernel will send.
        notify_unique: u64,
        /// The inode.
        nodeid: u64,
        /// Start of the range.
        offset: u64,
        /// Bytes wanted.
        size: u32,
    },
    /// NOTIFY_DELETE (7.18).
    Delete {
        /// The directory.
        parent: u64,
        /// The deleted inode.
        child: u64,
        /// The name, without its NUL.
        name: &'a [u8],
    },
    /// NOTIFY_RESEND (7.40).
    Resend,
    /// NOTIFY_INC_EPOCH (7.44).
    IncEpoch,
    /// NOTIFY_PRUNE (7.45).
    Prune {
        /// The nodeids to prune.
        nodeids: NodeIds<'a>,
    },
    /// A code this crate does not know (the kernel of 6.18 answers `EINVAL`).
    Unknown {
        /// The code from the header's `error` field.
        code: NotifyCode,
        /// The bytes after the header.
        body: &'a [u8],
    },
}

impl Notification<'_> {
    /// The notification's code.
    pub fn code(&self) -> NotifyCode {
        match self {
            Notification::Poll { .. } => NotifyCode::POLL,
            Notification::InvalInode { .. } => NotifyCode::INVAL_INODE,
            Notification::InvalEntry { .. } => NotifyCode::INVAL_ENTRY,
            Notification::Store { .. } => NotifyCode::STORE,
            Notification::Retrieve { .. } => NotifyCode::RETRIEVE,
            Notification::Delete { .. } => NotifyCode::DELETE,
            Notification::Resend => NotifyCode::RESEND,
            Notification::IncEpoch => NotifyCode::INC_EPOCH,
            Notification::Prune { .. } => NotifyCode::PRUNE,
            Notification::Unknown { code, .. } => *code,
        }
    }
}

/// The nodeids of a NOTIFY_PRUNE, read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeIds<'a> {
    ids: &'a [U64],
}

impl<'a> NodeIds<'a> {
    /// Number of nodeids left.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True if none is left.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl Iterator for NodeIds<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let (first, rest) = self.ids.split_first()?;
        self.ids = rest;
        Some(first.get())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.ids.len(), Some(self.ids.len()))
    }
}

impl ExactSizeIterator for NodeIds<'_> {}

fn short(what: &'static str, need: usize, have: usize) -> ParseError {
    ParseError::ShortBody {
        opcode: NOTIFY,
        what,
        need,
        have,
    }
}

fn invalid(reason: &'static str) -> ParseError {
    ParseError::Invalid {
        opcode: NOTIFY,
        reason,
    }
}

/// Reads a fixed struct that must be the whole body.
fn exact<'a, T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable>(
    body: &'a [u8],
    what: &'static str,
) -> Result<&'a T, ParseError> {
    let need = size_of::<T>();
    if body.len() < need {
        return Err(short(what, need, body.len()));
    }
    if body.len() > need {
        return Err(invalid(
            "notification body longer than its struct (kernel: EINVAL)",
        ));
    }
    T::ref_from_bytes(body).map_err(|_| short(what, need, body.len()))
}

/// The name after an entry notification's struct: exactly `namelen` bytes and a
/// NUL. The kernel checks the length (`ENAMETOOLONG` above its limit, `EINVAL` on a
/// size mismatch) but not that the last byte is NUL; this parser also requires the NUL.
fn name_with_nul<'a>(
    rest: &'a [u8],
    namelen: u32,
    what: &'static str,
) -> Result<&'a [u8], ParseError> {
    let namelen = usize::try_from(namelen).unwrap_or(usize::MAX);
    if namelen > KERNEL_NAME_MAX {
        return Err(invalid(
            "notification name longer than 4095 bytes (kernel: ENAMETOOLONG)",
        ));
    }
    // namelen <= 4095: no overflow.
    let need = namelen + 1;
    if rest.len() < need {
        return Err(short(what, need, rest.len()));
    }
    if rest.len() > need {
        return Err(invalid(
            "bytes after the notification's name (kernel: EINVAL)",
        ));
    }
    let (name, nul) = rest.split_at(namelen);
    if nul != [0] {
        return Err(ParseError::MissingNul {
            opcode: NOTIFY,
            what,
        });
    }
    Ok(name)
}

/// Parses the bytes of one daemon-to-kernel notification.
///
/// Checks the header (`len` equals the bytes given, `unique` is 0) and the body of
/// each known code as the kernel does, plus: a trailing NUL after entry names, no
/// body after RESEND / INC_EPOCH (the kernel ignores one). An unknown code is
/// [`Notification::Unknown`], not an error. The protocol minor is not checked.
/// Never panics and never allocates.
pub fn parse(bytes: &[u8]) -> Result<Notification<'_>, ParseError> {
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
    if header.unique.get() != 0 {
        return Err(invalid(
            "a notification has unique 0; this is a reply (use reply::parse)",
        ));
    }
    let code = NotifyCode(header.error.get());
    Ok(match code {
        NotifyCode::POLL => {
            let o: &abi::fuse_notify_poll_wakeup_out = exact(body, "fuse_notify_poll_wakeup_out")?;
            Notification::Poll { kh: o.kh.get() }
        }
        NotifyCode::INVAL_INODE => {
            let o: &abi::fuse_notify_inval_inode_out = exact(body, "fuse_notify_inval_inode_out")?;
            Notification::InvalInode {
                ino: o.ino.get(),
                off: o.off.get(),
                len: o.len.get(),
            }
        }
        NotifyCode::INVAL_ENTRY => {
            let (o, rest) =
                abi::fuse_notify_inval_entry_out::ref_from_prefix(body).map_err(|_| {
                    short(
                        "fuse_notify_inval_entry_out",
                        size_of::<abi::fuse_notify_inval_entry_out>(),
                        body.len(),
                    )
                })?;
            let name = name_with_nul(rest, o.namelen.get(), "NOTIFY_INVAL_ENTRY name")?;
            Notification::InvalEntry {
                parent: o.parent.get(),
                name,
                flags: RequestFlags(o.flags.get()),
            }
        }
        NotifyCode::STORE => {
            let (o, data) = abi::fuse_notify_store_out::ref_from_prefix(body).map_err(|_| {
                short(
                    "fuse_notify_store_out",
                    size_of::<abi::fuse_notify_store_out>(),
                    body.len(),
                )
            })?;
            if usize::try_from(o.size.get()).ok() != Some(data.len()) {
                return Err(invalid(
                    "NOTIFY_STORE size differs from the data length (kernel: EINVAL)",
                ));
            }
            if o.offset.get() >= MAX_LFS_FILESIZE {
                return Err(invalid(
                    "NOTIFY_STORE offset at or above MAX_LFS_FILESIZE (kernel: EINVAL)",
                ));
            }
            Notification::Store {
                nodeid: o.nodeid.get(),
                offset: o.offset.get(),
                data,
            }
        }
        NotifyCode::RETRIEVE => {
            let o: &abi::fuse_notify_retrieve_out = exact(body, "fuse_notify_retrieve_out")?;
            if o.offset.get() >= MAX_LFS_FILESIZE {
                return Err(invalid(
                    "NOTIFY_RETRIEVE offset at or above MAX_LFS_FILESIZE (kernel: EINVAL)",
                ));
            }
            Notification::Retrieve {
                notify_unique: o.notify_unique.get(),
                nodeid: o.nodeid.get(),
                offset: o.offset.get(),
                size: o.size.get(),
            }
        }
        NotifyCode::DELETE => {
            let (o, rest) = abi::fuse_notify_delete_out::ref_from_prefix(body).map_err(|_| {
                short(
                    "fuse_notify_delete_out",
                    size_of::<abi::fuse_notify_delete_out>(),
                    body.len(),
                )
            })?;
            let name = name_with_nul(rest, o.namelen.get(), "NOTIFY_DELETE name")?;
            Notification::Delete {
                parent: o.parent.get(),
                child: o.child.get(),
                name,
            }
        }
        NotifyCode::RESEND | NotifyCode::INC_EPOCH => {
            if !body.is_empty() {
                return Err(invalid("RESEND and INC_EPOCH are a bare header"));
            }
            if code == NotifyCode::RESEND {
                Notification::Resend
            } else {
                Notification::IncEpoch
            }
        }
        NotifyCode::PRUNE => {
            let (o, rest) = abi::fuse_notify_prune_out::ref_from_prefix(body).map_err(|_| {
                short(
                    "fuse_notify_prune_out",
                    size_of::<abi::fuse_notify_prune_out>(),
                    body.len(),
                )
            })?;
            let count = o.count.get();
            let need = usize::try_from(count)
                .ok()
                .and_then(|c| c.checked_mul(size_of::<u64>()));
            if need != Some(rest.len()) {
                return Err(ParseError::CountOverrun {
                    opcode: NOTIFY,
                    what: "NOTIFY_PRUNE nodeids",
                    count: u64::from(count),
                    available: rest.len(),
                });
            }
            let ids = <[U64]>::ref_from_bytes(rest)
                .map_err(|_| invalid("malformed NOTIFY_PRUNE nodeids"))?;
            Notification::Prune {
                nodeids: NodeIds { ids },
            }
        }
        _ => Notification::Unknown { code, body },
    })
}
