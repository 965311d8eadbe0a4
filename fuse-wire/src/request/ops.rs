//! One typed, borrowed view per opcode, and the body parser that builds it.
//!
//! # Representation
//!
//! - Fixed structs whose size never depended on the negotiated protocol are
//!   borrowed: `&'a abi::fuse_xxx_in` (alignment 1, so any address works).
//! - Fixed structs that older minors or absent flags send shorter are held **by
//!   value**, as a full `abi` struct: the bytes on the wire are copied in and the
//!   fields the connection does not have are zero. These are GETATTR (empty body
//!   before 7.9), READ/READDIR/READDIRPLUS and WRITE (24 bytes before 7.9), MKNOD
//!   and CREATE (8 bytes before 7.12), SETXATTR (8 bytes unless
//!   `FUSE_SETXATTR_EXT`, 7.33) and INIT (16 bytes before 7.36, 8 before 7.6; no
//!   other length). The
//!   structs are small and `Copy`; nothing is allocated. The layout is chosen by
//!   the negotiated minor, as the kernel chooses it (`fuse_adjust_compat` in
//!   `fs/fuse/dev.c`, `fuse_write_args_fill` in `fs/fuse/file.c`); where current
//!   kernels send the full struct anyway (GETATTR, READ), the extra bytes are
//!   ignored and the fields read as zero.
//! - Names are `&'a [u8]` without their NUL. Data is `&'a [u8]` of exactly the
//!   size the fixed struct declares.
//!
//! # Leniency
//!
//! Bytes after the last field an opcode defines are ignored: kernels grow
//! structs in later minors, and a request must not fail because it says more than
//! this crate understands. Missing bytes are [`ParseError::ShortBody`], a name
//! without its NUL is [`ParseError::MissingNul`], a count that does not fit is
//! [`ParseError::CountOverrun`].
use zerocopy::IntoBytes;

use crate::abi;
use crate::error::ParseError;
use crate::negotiated::Negotiated;
use crate::opcode::Opcode;
use crate::request::reader::Reader;

/// The operation of a request, one variant per opcode, with the body's fields
/// borrowed from the request bytes.
///
/// See the module documentation of [`crate::request`] for which structs are
/// borrowed and which are held by value (compat layouts of older minors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation<'a> {
    /// LOOKUP (7.0): look up `name` in the directory `nodeid`. A successful reply
    /// adds one to the inode's lookup count.
    Lookup {
        /// The name, without NUL.
        name: &'a [u8],
    },
    /// FORGET (7.0): drop `nlookup` lookups of `nodeid`. Never answered.
    Forget {
        /// The body.
        arg: &'a abi::fuse_forget_in,
    },
    /// GETATTR (7.0): get attributes. The body is empty before 7.9 (current kernels
    /// send `fuse_getattr_in` anyway); then `arg` is all zero.
    Getattr {
        /// The body, zero-filled where the connection's layout is shorter.
        arg: abi::fuse_getattr_in,
    },
    /// SETATTR (7.1): set the attributes selected by `valid`.
    Setattr {
        /// The body.
        arg: &'a abi::fuse_setattr_in,
    },
    /// READLINK (7.0): read the target of the symlink `nodeid`. No body.
    Readlink,
    /// SYMLINK (7.1): create the symlink `name` in `nodeid` pointing to `target`.
    Symlink {
        /// The new link's name, without NUL.
        name: &'a [u8],
        /// The link's target, without NUL.
        target: &'a [u8],
    },
    /// MKNOD (7.1): create a node. `fuse_mknod_in` is 8 bytes before 7.12 (no
    /// `umask`, which is then zero).
    Mknod {
        /// The body, zero-filled where the connection's layout is shorter.
        arg: abi::fuse_mknod_in,
        /// The name, without NUL.
        name: &'a [u8],
    },
    /// MKDIR (7.1): create a directory.
    Mkdir {
        /// The body.
        arg: &'a abi::fuse_mkdir_in,
        /// The name, without NUL.
        name: &'a [u8],
    },
    /// UNLINK (7.1): remove `name` from the directory `nodeid`.
    Unlink {
        /// The name, without NUL.
        name: &'a [u8],
    },
    /// RMDIR (7.1): remove the directory `name` from the directory `nodeid`.
    Rmdir {
        /// The name, without NUL.
        name: &'a [u8],
    },
    /// RENAME (7.1): move `name` in `nodeid` to `newname` in `arg.newdir`.
    Rename {
        /// The body.
        arg: &'a abi::fuse_rename_in,
        /// The old name, without NUL.
        name: &'a [u8],
        /// The new name, without NUL.
        newname: &'a [u8],
    },
    /// LINK (7.1): create `newname` in the directory `nodeid` for `arg.oldnodeid`.
    Link {
        /// The body.
        arg: &'a abi::fuse_link_in,
        /// The new name, without NUL.
        newname: &'a [u8],
    },
    /// OPEN (7.1): open a file.
    Open {
        /// The body.
        arg: &'a abi::fuse_open_in,
    },
    /// READ (7.1): read data. `fuse_read_in` is 24 bytes before 7.9.
    Read {
        /// The body, zero-filled where the connection's layout is shorter.
        arg: abi::fuse_read_in,
    },
    /// WRITE (7.1): write `data` (exactly `arg.size` bytes). `fuse_write_in` is 24
    /// bytes before 7.9.
    Write {
        /// The body, zero-filled where the connection's layout is shorter.
        arg: abi::fuse_write_in,
        /// The data.
        data: &'a [u8],
    },
    /// STATFS (7.0): filesystem statistics. No body.
    Statfs,
    /// RELEASE (7.1): close a file.
    Release {
        /// The body.
        arg: &'a abi::fuse_release_in,
    },
    /// FSYNC (7.1): synchronise a file.
    Fsync {
        /// The body.
        arg: &'a abi::fuse_fsync_in,
    },
    /// SETXATTR (7.1): set the attribute `name` to `value` (exactly `arg.size`
    /// bytes). `fuse_setxattr_in` is 16 bytes with `FUSE_SETXATTR_EXT` (7.33), else
    /// 8 (`setxattr_flags` is then zero).
    Setxattr {
        /// The body, zero-filled where the connection's layout is shorter.
        arg: abi::fuse_setxattr_in,
        /// The attribute name, without NUL.
        name: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// GETXATTR (7.1): get the attribute `name` (`arg.size` 0 asks for its size).
    Getxattr {
        /// The body.
        arg: &'a abi::fuse_getxattr_in,
        /// The attribute name, without NUL.
        name: &'a [u8],
    },
    /// LISTXATTR (7.1): list attribute names (`arg.size` 0 asks for the size).
    Listxattr {
        /// The body.
        arg: &'a abi::fuse_getxattr_in,
    },
    /// REMOVEXATTR (7.1): remove the attribute `name`.
    Removexattr {
        /// The attribute name, without NUL.
        name: &'a [u8],
    },
    /// FLUSH (7.1): a `close(2)` of a file descriptor.
    Flush {
        /// The body.
        arg: &'a abi::fuse_flush_in,
    },
    /// INIT (7.0): start the session. Parsed whatever the negotiated protocol:
    /// the body is as long as the kernel's own minor makes it (8 bytes before 7.6,
    /// 16 before 7.36, 64 since); missing fields are zero. `flags2` means something
    /// only if `flags` has `FUSE_INIT_EXT`: use [`init_flags`](crate::request::init_flags).
    Init {
        /// The body, zero-filled where the kernel's layout is shorter.
        arg: abi::fuse_init_in,
    },
    /// OPENDIR (7.1): open a directory.
    Opendir {
        /// The body.
        arg: &'a abi::fuse_open_in,
    },
    /// READDIR (7.1): read directory entries. `fuse_read_in` is 24 bytes before 7.9.
    Readdir {
        /// The body, zero-filled where the connection's layout is shorter.
        arg: abi::fuse_read_in,
    },
    /// RELEASEDIR (7.1): close a directory.
    Releasedir {
        /// The body.
        arg: &'a abi::fuse_release_in,
    },
    /// FSYNCDIR (7.2): synchronise a directory.
    Fsyncdir {
        /// The body.
        arg: &'a abi::fuse_fsync_in,
    },
    /// GETLK (7.7): test for a lock.
    Getlk {
        /// The body.
        arg: &'a abi::fuse_lk_in,
    },
    /// SETLK (7.7): acquire or release a lock without waiting.
    Setlk {
        /// The body.
        arg: &'a abi::fuse_lk_in,
    },
    /// SETLKW (7.7): acquire a lock, waiting.
    Setlkw {
        /// The body.
        arg: &'a abi::fuse_lk_in,
    },
    /// ACCESS (7.3): check permissions.
    Access {
        /// The body.
        arg: &'a abi::fuse_access_in,
    },
    /// CREATE (7.3): create and open `name`. `fuse_create_in` is 8 bytes before
    /// 7.12 (`umask` and `open_flags` are then zero).
    Create {
        /// The body, zero-filled where the connection's layout is shorter.
        arg: abi::fuse_create_in,
        /// The name, without NUL.
        name: &'a [u8],
    },
    /// INTERRUPT (7.7): interrupt the request `arg.unique`. Never answer it with
    /// ENOSYS (that disables interrupts for the connection). The INTERRUPT's own
    /// `unique` is the interrupted one with bit 0 set (`FUSE_INT_REQ_BIT`).
    Interrupt {
        /// The body.
        arg: &'a abi::fuse_interrupt_in,
    },
    /// BMAP (7.8): map a file block to a device block.
    Bmap {
        /// The body.
        arg: &'a abi::fuse_bmap_in,
    },
    /// DESTROY (7.8): the filesystem is being unmounted. No body.
    Destroy,
    /// IOCTL (7.11): an ioctl with `data` (exactly `arg.in_size` bytes) as input.
    Ioctl {
        /// The body.
        arg: &'a abi::fuse_ioctl_in,
        /// The input data.
        data: &'a [u8],
    },
    /// POLL (7.11): poll for events.
    Poll {
        /// The body.
        arg: &'a abi::fuse_poll_in,
    },
    /// NOTIFY_REPLY (7.15): the kernel's answer to a NOTIFY_RETRIEVE, with `data`
    /// (exactly `arg.size` bytes). Its `unique` is the retrieve's `notify_unique`.
    /// Never answered.
    NotifyReply {
        /// The body.
        arg: &'a abi::fuse_notify_retrieve_in,
        /// The retrieved data.
        data: &'a [u8],
    },
    /// BATCH_FORGET (7.16): many FORGETs at once. Never answered. The header's
    /// `count` is `forgets.len()`; its `dummy` field is not kept.
    BatchForget {
        /// The entries.
        forgets: &'a [abi::fuse_forget_one],
    },
    /// FALLOCATE (7.19): allocate or punch space.
    Fallocate {
        /// The body.
        arg: &'a abi::fuse_fallocate_in,
    },
    /// READDIRPLUS (7.21): read directory entries with attributes.
    Readdirplus {
        /// The body, zero-filled where the connection's layout is shorter.
        arg: abi::fuse_read_in,
    },
    /// RENAME2 (7.23): rename with `RENAME_*` flags.
    Rename2 {
        /// The body.
        arg: &'a abi::fuse_rename2_in,
        /// The old name, without NUL.
        name: &'a [u8],
        /// The new name, without NUL.
        newname: &'a [u8],
    },
    /// LSEEK (7.24): `SEEK_DATA` / `SEEK_HOLE`.
    Lseek {
        /// The body.
        arg: &'a abi::fuse_lseek_in,
    },
    /// COPY_FILE_RANGE (7.28): copy a range; the reply's `size` is 32-bit.
    CopyFileRange {
        /// The body.
        arg: &'a abi::fuse_copy_file_range_in,
    },
    /// SETUPMAPPING (7.31, virtio-fs DAX): map a file range into the DAX window.
    Setupmapping {
        /// The body.
        arg: &'a abi::fuse_setupmapping_in,
    },
    /// REMOVEMAPPING (7.31, virtio-fs DAX): unmap ranges of the DAX window. The
    /// header's `count` is `mappings.len()`.
    Removemapping {
        /// The ranges.
        mappings: &'a [abi::fuse_removemapping_one],
    },
    /// SYNCFS (7.34): synchronise the whole filesystem (`nodeid` is the root).
    Syncfs {
        /// The body (padding only).
        arg: &'a abi::fuse_syncfs_in,
    },
    /// TMPFILE (7.37): create an unnamed file in the directory `nodeid`. The kernel
    /// sends it like CREATE but always with the full 16-byte `fuse_create_in` (its
    /// compat shortening applies to CREATE only); the name is a placeholder (`/` in
    /// current kernels).
    Tmpfile {
        /// The body.
        arg: &'a abi::fuse_create_in,
        /// The placeholder name, without NUL.
        name: &'a [u8],
    },
    /// STATX (7.39): extended attributes.
    Statx {
        /// The body.
        arg: &'a abi::fuse_statx_in,
    },
    /// COPY_FILE_RANGE_64 (7.45): copy a range; the reply carries a 64-bit count.
    CopyFileRange64 {
        /// The body.
        arg: &'a abi::fuse_copy_file_range_in,
    },
    /// CUSE_INIT (7.12): start a CUSE session. Parsed whatever the negotiated
    /// protocol.
    CuseInit {
        /// The body.
        arg: &'a abi::cuse_init_in,
    },
    /// An opcode this crate does not know: data, not an error. The caller should
    /// answer ENOSYS (unless the opcode is one the kernel never expects an answer to).
    Unknown {
        /// The opcode.
        opcode: Opcode,
        /// The body (between header and extensions).
        body: &'a [u8],
    },
}

impl Operation<'_> {
    /// The opcode of this operation.
    pub fn opcode(&self) -> Opcode {
        match self {
            Operation::Lookup { .. } => Opcode::LOOKUP,
            Operation::Forget { .. } => Opcode::FORGET,
            Operation::Getattr { .. } => Opcode::GETATTR,
            Operation::Setattr { .. } => Opcode::SETATTR,
            Operation::Readlink => Opcode::READLINK,
            Operation::Symlink { .. } => Opcode::SYMLINK,
            Operation::Mknod { .. } => Opcode::MKNOD,
            Operation::Mkdir { .. } => Opcode::MKDIR,
            Operation::Unlink { .. } => Opcode::UNLINK,
            Operation::Rmdir { .. } => Opcode::RMDIR,
            Operation::Rename { .. } => Opcode::RENAME,
            Operation::Link { .. } => Opcode::LINK,
            Operation::Open { .. } => Opcode::OPEN,
            Operation::Read { .. } => Opcode::READ,
            Operation::Write { .. } => Opcode::WRITE,
            Operation::Statfs => Opcode::STATFS,
            Operation::Release { .. } => Opcode::RELEASE,
            Operation::Fsync { .. } => Opcode::FSYNC,
            Operation::Setxattr { .. } => Opcode::SETXATTR,
            Operation::Getxattr { .. } => Opcode::GETXATTR,
            Operation::Listxattr { .. } => Opcode::LISTXATTR,
            Operation::Removexattr { .. } => Opcode::REMOVEXATTR,
            Operation::Flush { .. } => Opcode::FLUSH,
            Operation::Init { .. } => Opcode::INIT,
            Operation::Opendir { .. } => Opcode::OPENDIR,
            Operation::Readdir { .. } => Opcode::READDIR,
            Operation::Releasedir { .. } => Opcode::RELEASEDIR,
            Operation::Fsyncdir { .. } => Opcode::FSYNCDIR,
            Operation::Getlk { .. } => Opcode::GETLK,
            Operation::Setlk { .. } => Opcode::SETLK,
            Operation::Setlkw { .. } => Opcode::SETLKW,
            Operation::Access { .. } => Opcode::ACCESS,
            Operation::Create { .. } => Opcode::CREATE,
            Operation::Interrupt { .. } => Opcode::INTERRUPT,
            Operation::Bmap { .. } => Opcode::BMAP,
            Operation::Destroy => Opcode::DESTROY,
            Operation::Ioctl { .. } => Opcode::IOCTL,
            Operation::Poll { .. } => Opcode::POLL,
            Operation::NotifyReply { .. } => Opcode::NOTIFY_REPLY,
            Operation::BatchForget { .. } => Opcode::BATCH_FORGET,
            Operation::Fallocate { .. } => Opcode::FALLOCATE,
            Operation::Readdirplus { .. } => Opcode::READDIRPLUS,
            Operation::Rename2 { .. } => Opcode::RENAME2,
            Operation::Lseek { .. } => Opcode::LSEEK,
            Operation::CopyFileRange { .. } => Opcode::COPY_FILE_RANGE,
            Operation::Setupmapping { .. } => Opcode::SETUPMAPPING,
            Operation::Removemapping { .. } => Opcode::REMOVEMAPPING,
            Operation::Syncfs { .. } => Opcode::SYNCFS,
            Operation::Tmpfile { .. } => Opcode::TMPFILE,
            Operation::Statx { .. } => Opcode::STATX,
            Operation::CopyFileRange64 { .. } => Opcode::COPY_FILE_RANGE_64,
            Operation::CuseInit { .. } => Opcode::CUSE_INIT,
            Operation::Unknown { opcode, .. } => *opcode,
        }
    }
}

/// The full INIT flags a kernel offered in `arg` (7.36: bits 32..63 come from
/// `flags2`, which counts only if `flags` has [`InitFlags::INIT_EXT`]).
///
/// [`InitFlags::INIT_EXT`]: crate::InitFlags::INIT_EXT
pub fn init_flags(arg: &abi::fuse_init_in) -> crate::InitFlags {
    let flags = arg.flags.get();
    let ext = crate::InitFlags::INIT_EXT.low();
    let high = if flags & ext != 0 {
        arg.flags2.get()
    } else {
        0
    };
    crate::InitFlags::from_halves(flags, high)
}

/// Wire size of `fuse_getattr_in` on a connection (empty before 7.9).
pub(crate) const fn getattr_in_size(proto: &Negotiated) -> usize {
    if proto.minor < 9 {
        0
    } else {
        core::mem::size_of::<abi::fuse_getattr_in>()
    }
}

/// Wire size of the `fuse_init_in` a kernel of `kernel_minor` sends
/// (8 before 7.6, 16 before 7.36, 64 since).
pub(crate) const fn init_in_size(kernel_minor: u32) -> usize {
    if kernel_minor < 6 {
        8
    } else if kernel_minor < 36 {
        abi::FUSE_COMPAT_INIT_IN_SIZE
    } else {
        core::mem::size_of::<abi::fuse_init_in>()
    }
}

/// The short path of `parse` for LOOKUP, GETATTR, READ and WRITE with their full
/// (7.9+) layouts: the same result as [`parse_operation`] when it returns `Some`;
/// `None` for anything else, malformed input included (the general path then
/// reports it).
#[inline]
pub(crate) fn parse_hot<'a>(
    opcode: Opcode,
    body: &'a [u8],
    proto: &Negotiated,
) -> Option<Operation<'a>> {
    use zerocopy::FromBytes;
    match opcode {
        Opcode::LOOKUP => {
            let nul = crate::request::reader::find_nul(body)?;
            Some(Operation::Lookup {
                name: body.get(..nul)?,
            })
        }
        Opcode::GETATTR if proto.minor >= 9 => {
            let (arg, _) = abi::fuse_getattr_in::ref_from_prefix(body).ok()?;
            Some(Operation::Getattr { arg: *arg })
        }
        Opcode::READ if proto.minor >= 9 => {
            let (arg, _) = abi::fuse_read_in::read_from_prefix(body).ok()?;
            Some(Operation::Read { arg })
        }
        Opcode::WRITE if proto.minor >= 9 => {
            let (arg, rest) = abi::fuse_write_in::read_from_prefix(body).ok()?;
            let data = rest.get(..len(arg.size.get()))?;
            Some(Operation::Write { arg, data })
        }
        _ => None,
    }
}

/// Parses the body of a request with `opcode` on a connection with `proto`.
#[inline]
pub(crate) fn parse_operation<'a>(
    opcode: Opcode,
    body: &'a [u8],
    proto: &Negotiated,
) -> Result<Operation<'a>, ParseError> {
    let mut r = Reader::new(opcode, body);
    let op = match opcode {
        Opcode::LOOKUP => Operation::Lookup {
            name: r.name("name")?,
        },
        Opcode::FORGET => Operation::Forget {
            arg: r.fixed("fuse_forget_in")?,
        },
        Opcode::GETATTR => Operation::Getattr {
            arg: r.compat(getattr_in_size(proto), "fuse_getattr_in")?,
        },
        Opcode::SETATTR => Operation::Setattr {
            arg: r.fixed("fuse_setattr_in")?,
        },
        Opcode::READLINK => Operation::Readlink,
        Opcode::SYMLINK => Operation::Symlink {
            name: r.name("name")?,
            target: r.name("link target")?,
        },
        Opcode::MKNOD => Operation::Mknod {
            arg: r.compat(proto.mknod_in_size(), "fuse_mknod_in")?,
            name: r.name("name")?,
        },
        Opcode::MKDIR => Operation::Mkdir {
            arg: r.fixed("fuse_mkdir_in")?,
            name: r.name("name")?,
        },
        Opcode::UNLINK => Operation::Unlink {
            name: r.name("name")?,
        },
        Opcode::RMDIR => Operation::Rmdir {
            name: r.name("name")?,
        },
        Opcode::RENAME => Operation::Rename {
            arg: r.fixed("fuse_rename_in")?,
            name: r.name("old name")?,
            newname: r.name("new name")?,
        },
        Opcode::LINK => Operation::Link {
            arg: r.fixed("fuse_link_in")?,
            newname: r.name("new name")?,
        },
        Opcode::OPEN => Operation::Open {
            arg: r.fixed("fuse_open_in")?,
        },
        Opcode::READ => Operation::Read {
            arg: r.compat(proto.read_in_size(), "fuse_read_in")?,
        },
        Opcode::WRITE => {
            let arg: abi::fuse_write_in = r.compat(proto.write_in_size(), "fuse_write_in")?;
            let data = r.bytes(len(arg.size.get()), "write data")?;
            Operation::Write { arg, data }
        }
        Opcode::STATFS => Operation::Statfs,
        Opcode::RELEASE => Operation::Release {
            arg: r.fixed("fuse_release_in")?,
        },
        Opcode::FSYNC => Operation::Fsync {
            arg: r.fixed("fuse_fsync_in")?,
        },
        Opcode::SETXATTR => {
            let arg: abi::fuse_setxattr_in =
                r.compat(proto.setxattr_in_size(), "fuse_setxattr_in")?;
            let name = r.name("attribute name")?;
            let value = r.bytes(len(arg.size.get()), "attribute value")?;
            Operation::Setxattr { arg, name, value }
        }
        Opcode::GETXATTR => Operation::Getxattr {
            arg: r.fixed("fuse_getxattr_in")?,
            name: r.name("attribute name")?,
        },
        Opcode::LISTXATTR => Operation::Listxattr {
            arg: r.fixed("fuse_getxattr_in")?,
        },
        Opcode::REMOVEXATTR => Operation::Removexattr {
            name: r.name("attribute name")?,
        },
        Opcode::FLUSH => Operation::Flush {
            arg: r.fixed("fuse_flush_in")?,
        },
        Opcode::INIT => {
            // Whatever the negotiated protocol: the kernel's own minor decides the
            // size, and every kernel sent one of three: 8 bytes (before 7.6), 16
            // (before 7.36) or 64. Any other length is not a kernel's INIT (a
            // longer one is read as 64, as every struct a kernel may grow).
            let size = match r.rest().len() {
                n @ (8 | 16) => n,
                n if n >= core::mem::size_of::<abi::fuse_init_in>() => {
                    core::mem::size_of::<abi::fuse_init_in>()
                }
                _ => {
                    return Err(ParseError::Invalid {
                        opcode,
                        reason: "INIT body is not 8, 16 or 64 bytes long",
                    })
                }
            };
            Operation::Init {
                arg: r.compat(size, "fuse_init_in")?,
            }
        }
        Opcode::OPENDIR => Operation::Opendir {
            arg: r.fixed("fuse_open_in")?,
        },
        Opcode::READDIR => Operation::Readdir {
            arg: r.compat(proto.read_in_size(), "fuse_read_in")?,
        },
        Opcode::RELEASEDIR => Operation::Releasedir {
            arg: r.fixed("fuse_release_in")?,
        },
        Opcode::FSYNCDIR => Operation::Fsyncdir {
            arg: r.fixed("fuse_fsync_in")?,
        },
        Opcode::GETLK => Operation::Getlk {
            arg: r.fixed("fuse_lk_in")?,
        },
        Opcode::SETLK => Operation::Setlk {
            arg: r.fixed("fuse_lk_in")?,
        },
        Opcode::SETLKW => Operation::Setlkw {
            arg: r.fixed("fuse_lk_in")?,
        },
        Opcode::ACCESS => Operation::Access {
            arg: r.fixed("fuse_access_in")?,
        },
        Opcode::CREATE => Operation::Create {
            arg: r.compat(proto.create_in_size(), "fuse_create_in")?,
            name: r.name("name")?,
        },
        Opcode::INTERRUPT => Operation::Interrupt {
            arg: r.fixed("fuse_interrupt_in")?,
        },
        Opcode::BMAP => Operation::Bmap {
            arg: r.fixed("fuse_bmap_in")?,
        },
        Opcode::DESTROY => Operation::Destroy,
        Opcode::IOCTL => {
            let arg: &abi::fuse_ioctl_in = r.fixed("fuse_ioctl_in")?;
            let data = r.bytes(len(arg.in_size.get()), "ioctl input")?;
            Operation::Ioctl { arg, data }
        }
        Opcode::POLL => Operation::Poll {
            arg: r.fixed("fuse_poll_in")?,
        },
        Opcode::NOTIFY_REPLY => {
            let arg: &abi::fuse_notify_retrieve_in = r.fixed("fuse_notify_retrieve_in")?;
            let data = r.bytes(len(arg.size.get()), "retrieved data")?;
            Operation::NotifyReply { arg, data }
        }
        Opcode::BATCH_FORGET => {
            let arg: &abi::fuse_batch_forget_in = r.fixed("fuse_batch_forget_in")?;
            Operation::BatchForget {
                forgets: r.array(u64::from(arg.count.get()), "forget entries")?,
            }
        }
        Opcode::FALLOCATE => Operation::Fallocate {
            arg: r.fixed("fuse_fallocate_in")?,
        },
        Opcode::READDIRPLUS => Operation::Readdirplus {
            arg: r.compat(proto.read_in_size(), "fuse_read_in")?,
        },
        Opcode::RENAME2 => Operation::Rename2 {
            arg: r.fixed("fuse_rename2_in")?,
            name: r.name("old name")?,
            newname: r.name("new name")?,
        },
        Opcode::LSEEK => Operation::Lseek {
            arg: r.fixed("fuse_lseek_in")?,
        },
        Opcode::COPY_FILE_RANGE => Operation::CopyFileRange {
            arg: r.fixed("fuse_copy_file_range_in")?,
        },
        Opcode::SETUPMAPPING => Operation::Setupmapping {
            arg: r.fixed("fuse_setupmapping_in")?,
        },
        Opcode::REMOVEMAPPING => {
            let arg: &abi::fuse_removemapping_in = r.fixed("fuse_removemapping_in")?;
            Operation::Removemapping {
                mappings: r.array(u64::from(arg.count.get()), "mapping ranges")?,
            }
        }
        Opcode::SYNCFS => Operation::Syncfs {
            arg: r.fixed("fuse_syncfs_in")?,
        },
        Opcode::TMPFILE => Operation::Tmpfile {
            arg: r.fixed("fuse_create_in")?,
            name: r.name("name")?,
        },
        Opcode::STATX => Operation::Statx {
            arg: r.fixed("fuse_statx_in")?,
        },
        Opcode::COPY_FILE_RANGE_64 => Operation::CopyFileRange64 {
            arg: r.fixed("fuse_copy_file_range_in")?,
        },
        Opcode::CUSE_INIT => Operation::CuseInit {
            arg: r.fixed("cuse_init_in")?,
        },
        _ => Operation::Unknown { opcode, body },
    };
    Ok(op)
}

/// A `u32` size field as a byte count. On targets where `usize` is narrower than
/// 32 bits an unrepresentable size saturates, and the following read fails cleanly.
fn len(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The bytes of the fixed struct of `op` as the connection `proto` lays it out,
/// for the by-value (compat) variants; `None` for the others.
pub(crate) fn compat_bytes<'o>(op: &'o Operation<'_>, proto: &Negotiated) -> Option<&'o [u8]> {
    let (bytes, n): (&[u8], usize) = match op {
        Operation::Getattr { arg } => (arg.as_bytes(), getattr_in_size(proto)),
        Operation::Mknod { arg, .. } => (arg.as_bytes(), proto.mknod_in_size()),
        Operation::Read { arg } | Operation::Readdir { arg } | Operation::Readdirplus { arg } => {
            (arg.as_bytes(), proto.read_in_size())
        }
        Operation::Write { arg, .. } => (arg.as_bytes(), proto.write_in_size()),
        Operation::Setxattr { arg, .. } => (arg.as_bytes(), proto.setxattr_in_size()),
        Operation::Create { arg, .. } => (arg.as_bytes(), proto.create_in_size()),
        Operation::Init { arg } => (arg.as_bytes(), init_in_size(arg.minor.get())),
        _ => return None,
    };
    Some(bytes.get(..n).unwrap_or(bytes))
}
