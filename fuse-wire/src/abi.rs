//! The kernel ABI: every struct of `include/uapi/linux/fuse.h` through protocol 7.45.
//!
//! Names are the kernel's, so that a reader can put this file beside the header.
//! Every integer field is an alignment-1, native-endian zerocopy type: a struct can be
//! read from any `&[u8]` at any address, with no panic path for misalignment. Padding is
//! an explicit field, zerocopy's derives reject hidden padding, and a compile-time
//! assertion pins each size to the kernel's.
//!
//! Each struct names the ABI minor that introduced it (or last changed its size) and,
//! where older minors used a shorter layout, the `*_COMPAT_*` size constant to use.
//!
//! # References
//! - Linux `include/uapi/linux/fuse.h` (protocol changelog at the top of the file)
//! - Linux `fs/fuse/dev.c`, `fs/fuse/inode.c`, `fs/fuse/dir.c`, `fs/fuse/file.c`
#![allow(non_camel_case_types)]

use core::mem::size_of;
use zerocopy::byteorder::native_endian::{I32, I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The protocol major version this crate speaks.
pub const FUSE_KERNEL_VERSION: u32 = 7;
/// The newest protocol minor version this crate knows (Linux 6.18 speaks 7.45).
pub const FUSE_KERNEL_MINOR_VERSION: u32 = 45;
/// The oldest minor version this crate parses (the first with `fuse_getattr_in`).
pub const FUSE_MIN_MINOR_VERSION: u32 = 9;
/// The nodeid of the root directory.
pub const FUSE_ROOT_ID: u64 = 1;
/// The kernel refuses read buffers smaller than this on `/dev/fuse`.
pub const FUSE_MIN_READ_BUFFER: usize = 8192;
/// Bit 63 of `unique`: set by the kernel on requests re-queued by `FUSE_NOTIFY_RESEND`
/// (7.40). Replies must echo `unique` exactly, bit included.
pub const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

/// Size of `fuse_entry_out` before 7.9 (no `blksize`/`flags` in `fuse_attr`).
pub const FUSE_COMPAT_ENTRY_OUT_SIZE: usize = 120;
/// Size of `fuse_attr_out` before 7.9.
pub const FUSE_COMPAT_ATTR_OUT_SIZE: usize = 96;
/// Size of `fuse_mknod_in` before 7.12 (no `umask`).
pub const FUSE_COMPAT_MKNOD_IN_SIZE: usize = 8;
/// Size of `fuse_write_in` before 7.9.
pub const FUSE_COMPAT_WRITE_IN_SIZE: usize = 24;
/// Size of `fuse_read_in` before 7.9 (same prefix as the compat write).
pub const FUSE_COMPAT_READ_IN_SIZE: usize = 24;
/// Size of `fuse_statfs_out` before 7.4.
pub const FUSE_COMPAT_STATFS_SIZE: usize = 48;
/// Size of `fuse_setxattr_in` without `FUSE_SETXATTR_EXT` (7.33).
pub const FUSE_COMPAT_SETXATTR_IN_SIZE: usize = 8;
/// Size of `fuse_init_out` before 7.5.
pub const FUSE_COMPAT_INIT_OUT_SIZE: usize = 8;
/// Size of `fuse_init_out` from 7.5 to 7.22.
pub const FUSE_COMPAT_22_INIT_OUT_SIZE: usize = 24;
/// Size of `fuse_init_in` before 7.36 (no `flags2`).
pub const FUSE_COMPAT_INIT_IN_SIZE: usize = 16;
/// Size of `fuse_open_in`/`fuse_create_in` prefix before 7.12 for CREATE (no umask).
pub const FUSE_COMPAT_CREATE_IN_SIZE: usize = 8;

/// Extension type of the supplementary-groups extension (7.37, `FUSE_CREATE_SUPP_GROUP`).
pub const FUSE_EXT_GROUPS: u32 = 32;
/// Extension types 0..=31 are a security context with that many entries (7.36).
pub const FUSE_MAX_NR_SECCTX: u32 = 31;

/// Size of the `in_out` area of `fuse_uring_req_header` (7.42).
pub const FUSE_URING_IN_OUT_HEADER_SZ: usize = 128;
/// Size of the `op_in` area of `fuse_uring_req_header` (7.42).
pub const FUSE_URING_OP_IN_OUT_SZ: usize = 128;
/// io_uring command: register a buffer and fetch a request (7.42).
pub const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
/// io_uring command: commit a reply and fetch the next request (7.42).
pub const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// `ioctl` number magic of `/dev/fuse`.
pub const FUSE_DEV_IOC_MAGIC: u8 = 229;
/// `FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t)` (7.11 kernels and later): attach a new
/// fd to an existing connection with its own processing queue.
pub const FUSE_DEV_IOC_CLONE: u32 = ioc(2, 0, 4);
/// `FUSE_DEV_IOC_BACKING_OPEN = _IOW(229, 1, struct fuse_backing_map)` (7.40).
pub const FUSE_DEV_IOC_BACKING_OPEN: u32 = ioc(1, 1, size_of::<fuse_backing_map>() as u32);
/// `FUSE_DEV_IOC_BACKING_CLOSE = _IOW(229, 2, uint32_t)` (7.40).
pub const FUSE_DEV_IOC_BACKING_CLOSE: u32 = ioc(1, 2, 4);

/// Linux's `_IOC(dir, type, nr, size)` for the generic ioctl layout (x86, arm, riscv).
const fn ioc(dir: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | (size << 16) | ((FUSE_DEV_IOC_MAGIC as u32) << 8) | nr
}

macro_rules! abi_struct {
    (
        $(#[$meta:meta])*
        $name:ident [$size:expr] {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash,
                 FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }
        impl Default for $name {
            /// All fields zero.
            fn default() -> Self {
                zerocopy::FromZeros::new_zeroed()
            }
        }
        const _: () = assert!(size_of::<$name>() == $size, concat!("size of ", stringify!($name)));
    };
}

abi_struct! {
    /// Header of every request the kernel sends (7.0; `total_extlen` 7.36).
    fuse_in_header [40] {
        /// Total length of the request, header included.
        len: U32,
        /// The operation ([`crate::Opcode`]).
        opcode: U32,
        /// Request id, echoed in the reply. Bit 63 marks a resent request (7.40).
        unique: U64,
        /// The inode the request is about.
        nodeid: U64,
        /// Effective uid of the calling process.
        uid: U32,
        /// Effective gid of the calling process.
        gid: U32,
        /// Thread group id of the calling process.
        pid: U32,
        /// Length of the extension area after the body, in units of 8 bytes (7.36).
        total_extlen: U16,
        /// Padding.
        padding: U16,
    }
}

abi_struct! {
    /// Header of every reply and notification the daemon writes (7.0).
    fuse_out_header [16] {
        /// Total length of the message, header included.
        len: U32,
        /// Zero or a negated errno; for notifications (unique 0) the notify code.
        error: I32,
        /// The request being answered, or 0 for a notification.
        unique: U64,
    }
}

abi_struct! {
    /// File attributes (7.0; `blksize` 7.9, `flags` 7.32).
    fuse_attr [88] {
        /// Inode number shown to applications.
        ino: U64,
        /// Size in bytes.
        size: U64,
        /// Blocks of 512 bytes allocated.
        blocks: U64,
        /// Access time, seconds.
        atime: U64,
        /// Modification time, seconds.
        mtime: U64,
        /// Status change time, seconds.
        ctime: U64,
        /// Access time, nanoseconds.
        atimensec: U32,
        /// Modification time, nanoseconds.
        mtimensec: U32,
        /// Status change time, nanoseconds.
        ctimensec: U32,
        /// File type and permission bits.
        mode: U32,
        /// Number of hard links.
        nlink: U32,
        /// Owner uid.
        uid: U32,
        /// Owner gid.
        gid: U32,
        /// Device number for device nodes.
        rdev: U32,
        /// Preferred I/O block size (7.9).
        blksize: U32,
        /// `FUSE_ATTR_*` flags (7.32).
        flags: U32,
    }
}

abi_struct! {
    /// A timestamp in `fuse_statx` (7.39).
    fuse_sx_time [16] {
        /// Seconds.
        tv_sec: I64,
        /// Nanoseconds.
        tv_nsec: U32,
        /// Reserved.
        reserved: I32,
    }
}

abi_struct! {
    /// Extended attributes for STATX (7.39), modelled on `struct statx`.
    fuse_statx [256] {
        /// `STATX_*` mask of valid fields.
        mask: U32,
        /// Preferred I/O block size.
        blksize: U32,
        /// `STATX_ATTR_*` attributes.
        attributes: U64,
        /// Number of hard links.
        nlink: U32,
        /// Owner uid.
        uid: U32,
        /// Owner gid.
        gid: U32,
        /// File type and mode.
        mode: U16,
        /// Spare.
        spare0: [U16; 1],
        /// Inode number.
        ino: U64,
        /// Size in bytes.
        size: U64,
        /// Blocks of 512 bytes.
        blocks: U64,
        /// Supported attributes.
        attributes_mask: U64,
        /// Access time.
        atime: fuse_sx_time,
        /// Birth time.
        btime: fuse_sx_time,
        /// Status change time.
        ctime: fuse_sx_time,
        /// Modification time.
        mtime: fuse_sx_time,
        /// Device major (device nodes).
        rdev_major: U32,
        /// Device minor (device nodes).
        rdev_minor: U32,
        /// Major of the containing device.
        dev_major: U32,
        /// Minor of the containing device.
        dev_minor: U32,
        /// Spare.
        spare2: [U64; 14],
    }
}

abi_struct! {
    /// Filesystem statistics (7.0; `frsize` 7.4).
    fuse_kstatfs [80] {
        /// Total blocks.
        blocks: U64,
        /// Free blocks.
        bfree: U64,
        /// Free blocks for unprivileged users.
        bavail: U64,
        /// Total inodes.
        files: U64,
        /// Free inodes.
        ffree: U64,
        /// Block size.
        bsize: U32,
        /// Maximum name length.
        namelen: U32,
        /// Fragment size (7.4).
        frsize: U32,
        /// Padding.
        padding: U32,
        /// Spare.
        spare: [U32; 6],
    }
}

abi_struct! {
    /// A POSIX or BSD lock (7.7).
    fuse_file_lock [24] {
        /// First byte.
        start: U64,
        /// Last byte (inclusive; `OFFSET_MAX` for end of file).
        end: U64,
        /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
        typ: U32,
        /// Thread group id of the lock holder.
        pid: U32,
    }
}

abi_struct! {
    /// Reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK (and part of CREATE, READDIRPLUS)
    /// (7.0; 128 bytes since 7.9, [`FUSE_COMPAT_ENTRY_OUT_SIZE`] before).
    fuse_entry_out [128] {
        /// The nodeid the kernel will use for this inode.
        nodeid: U64,
        /// Generation: nodeid:generation must be unique for the filesystem's lifetime.
        generation: U64,
        /// Name cache timeout, seconds.
        entry_valid: U64,
        /// Attribute cache timeout, seconds.
        attr_valid: U64,
        /// Name cache timeout, nanoseconds.
        entry_valid_nsec: U32,
        /// Attribute cache timeout, nanoseconds.
        attr_valid_nsec: U32,
        /// The attributes.
        attr: fuse_attr,
    }
}

abi_struct! {
    /// Body of FORGET (7.0).
    fuse_forget_in [8] {
        /// How many lookups to forget.
        nlookup: U64,
    }
}

abi_struct! {
    /// One entry of BATCH_FORGET (7.16).
    fuse_forget_one [16] {
        /// The nodeid.
        nodeid: U64,
        /// How many lookups to forget.
        nlookup: U64,
    }
}

abi_struct! {
    /// Body of BATCH_FORGET, followed by `count` [`fuse_forget_one`] (7.16).
    fuse_batch_forget_in [8] {
        /// Number of entries.
        count: U32,
        /// Unused.
        dummy: U32,
    }
}

abi_struct! {
    /// Body of GETATTR (7.9; empty before).
    fuse_getattr_in [16] {
        /// `FUSE_GETATTR_FH` when `fh` is valid.
        getattr_flags: U32,
        /// Unused.
        dummy: U32,
        /// File handle.
        fh: U64,
    }
}

abi_struct! {
    /// Reply to GETATTR and SETATTR (7.0; 104 bytes since 7.9, [`FUSE_COMPAT_ATTR_OUT_SIZE`] before).
    fuse_attr_out [104] {
        /// Attribute cache timeout, seconds.
        attr_valid: U64,
        /// Attribute cache timeout, nanoseconds.
        attr_valid_nsec: U32,
        /// Unused.
        dummy: U32,
        /// The attributes.
        attr: fuse_attr,
    }
}

abi_struct! {
    /// Body of STATX (7.39).
    fuse_statx_in [24] {
        /// `FUSE_GETATTR_FH` when `fh` is valid.
        getattr_flags: U32,
        /// Reserved.
        reserved: U32,
        /// File handle.
        fh: U64,
        /// `AT_STATX_*` sync flags.
        sx_flags: U32,
        /// `STATX_*` fields wanted.
        sx_mask: U32,
    }
}

abi_struct! {
    /// Reply to STATX (7.39).
    fuse_statx_out [288] {
        /// Attribute cache timeout, seconds.
        attr_valid: U64,
        /// Attribute cache timeout, nanoseconds.
        attr_valid_nsec: U32,
        /// Flags.
        flags: U32,
        /// Spare.
        spare: [U64; 2],
        /// The attributes.
        stat: fuse_statx,
    }
}

abi_struct! {
    /// Body of MKNOD, followed by the name (7.0; `umask` 7.12, [`FUSE_COMPAT_MKNOD_IN_SIZE`] before).
    fuse_mknod_in [16] {
        /// File type and mode.
        mode: U32,
        /// Device number.
        rdev: U32,
        /// The caller's umask (7.12).
        umask: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of MKDIR, followed by the name (7.0; `umask` 7.12).
    fuse_mkdir_in [8] {
        /// Mode.
        mode: U32,
        /// The caller's umask (7.12).
        umask: U32,
    }
}

abi_struct! {
    /// Body of RENAME, followed by the old and new names (7.0).
    fuse_rename_in [8] {
        /// The new parent directory.
        newdir: U64,
    }
}

abi_struct! {
    /// Body of RENAME2, followed by the old and new names (7.23).
    fuse_rename2_in [16] {
        /// The new parent directory.
        newdir: U64,
        /// `RENAME_NOREPLACE`, `RENAME_EXCHANGE`, `RENAME_WHITEOUT`.
        flags: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of LINK, followed by the new name (7.0).
    fuse_link_in [8] {
        /// The existing inode.
        oldnodeid: U64,
    }
}

abi_struct! {
    /// Body of SETATTR (7.0; `lock_owner` 7.9, `ctime` 7.23).
    fuse_setattr_in [88] {
        /// `FATTR_*` bits saying which fields are set.
        valid: U32,
        /// Padding.
        padding: U32,
        /// File handle (`FATTR_FH`).
        fh: U64,
        /// New size (`FATTR_SIZE`).
        size: U64,
        /// Lock owner (`FATTR_LOCKOWNER`).
        lock_owner: U64,
        /// Access time, seconds.
        atime: U64,
        /// Modification time, seconds.
        mtime: U64,
        /// Change time, seconds (7.23).
        ctime: U64,
        /// Access time, nanoseconds.
        atimensec: U32,
        /// Modification time, nanoseconds.
        mtimensec: U32,
        /// Change time, nanoseconds (7.23).
        ctimensec: U32,
        /// Mode (`FATTR_MODE`).
        mode: U32,
        /// Unused.
        unused4: U32,
        /// Owner (`FATTR_UID`).
        uid: U32,
        /// Group (`FATTR_GID`).
        gid: U32,
        /// Unused.
        unused5: U32,
    }
}

abi_struct! {
    /// Body of OPEN and OPENDIR (7.0; `open_flags` 7.34).
    fuse_open_in [8] {
        /// `open(2)` flags.
        flags: U32,
        /// `FUSE_OPEN_*` flags (7.34).
        open_flags: U32,
    }
}

abi_struct! {
    /// Body of CREATE and TMPFILE, followed by the name (7.3; `umask` 7.12, `open_flags` 7.34).
    fuse_create_in [16] {
        /// `open(2)` flags.
        flags: U32,
        /// Mode of the new file.
        mode: U32,
        /// The caller's umask (7.12).
        umask: U32,
        /// `FUSE_OPEN_*` flags (7.34).
        open_flags: U32,
    }
}

abi_struct! {
    /// Reply to OPEN, OPENDIR, and part of CREATE (7.0; `backing_id` 7.40).
    fuse_open_out [16] {
        /// File handle chosen by the daemon.
        fh: U64,
        /// `FOPEN_*` flags.
        open_flags: U32,
        /// Backing file id for `FOPEN_PASSTHROUGH` (7.40).
        backing_id: I32,
    }
}

abi_struct! {
    /// Body of RELEASE and RELEASEDIR (7.0; `release_flags`, `lock_owner` 7.8).
    fuse_release_in [24] {
        /// File handle.
        fh: U64,
        /// `open(2)` flags.
        flags: U32,
        /// `FUSE_RELEASE_*` flags.
        release_flags: U32,
        /// Lock owner.
        lock_owner: U64,
    }
}

abi_struct! {
    /// Body of FLUSH (7.0; `lock_owner` 7.7).
    fuse_flush_in [24] {
        /// File handle.
        fh: U64,
        /// Unused.
        unused: U32,
        /// Padding.
        padding: U32,
        /// Lock owner.
        lock_owner: U64,
    }
}

abi_struct! {
    /// Body of READ and READDIR(PLUS) (7.0; 40 bytes since 7.9, [`FUSE_COMPAT_READ_IN_SIZE`] before).
    fuse_read_in [40] {
        /// File handle.
        fh: U64,
        /// Offset.
        offset: U64,
        /// Bytes wanted.
        size: U32,
        /// `FUSE_READ_*` flags.
        read_flags: U32,
        /// Lock owner (7.9).
        lock_owner: U64,
        /// `open(2)` flags (7.9).
        flags: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of WRITE, followed by the data (7.0; 40 bytes since 7.9,
    /// [`FUSE_COMPAT_WRITE_IN_SIZE`] before).
    fuse_write_in [40] {
        /// File handle.
        fh: U64,
        /// Offset.
        offset: U64,
        /// Bytes of data following.
        size: U32,
        /// `FUSE_WRITE_*` flags.
        write_flags: U32,
        /// Lock owner (7.9).
        lock_owner: U64,
        /// `open(2)` flags (7.9).
        flags: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Reply to WRITE and COPY_FILE_RANGE (7.0).
    fuse_write_out [8] {
        /// Bytes written.
        size: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Reply to STATFS (7.0; 80 bytes since 7.4, [`FUSE_COMPAT_STATFS_SIZE`] before).
    fuse_statfs_out [80] {
        /// The statistics.
        st: fuse_kstatfs,
    }
}

abi_struct! {
    /// Body of FSYNC and FSYNCDIR (7.0).
    fuse_fsync_in [16] {
        /// File handle.
        fh: U64,
        /// `FUSE_FSYNC_FDATASYNC`.
        fsync_flags: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of SETXATTR, followed by name and value (7.0; 16 bytes with
    /// `FUSE_SETXATTR_EXT` (7.33), [`FUSE_COMPAT_SETXATTR_IN_SIZE`] without).
    fuse_setxattr_in [16] {
        /// Size of the value.
        size: U32,
        /// `XATTR_CREATE` / `XATTR_REPLACE`.
        flags: U32,
        /// `FUSE_SETXATTR_*` flags (7.33).
        setxattr_flags: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of GETXATTR and LISTXATTR; GETXATTR's name follows (7.0).
    fuse_getxattr_in [8] {
        /// Size of the caller's buffer (0: ask for the size).
        size: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Reply to GETXATTR/LISTXATTR when asked for the size (7.0).
    fuse_getxattr_out [8] {
        /// Size of the value or list.
        size: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of GETLK, SETLK, SETLKW (7.7; `lk_flags` 7.9).
    fuse_lk_in [48] {
        /// File handle.
        fh: U64,
        /// Lock owner.
        owner: U64,
        /// The lock.
        lk: fuse_file_lock,
        /// `FUSE_LK_FLOCK` for BSD locks (7.9).
        lk_flags: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Reply to GETLK (7.7).
    fuse_lk_out [24] {
        /// The conflicting lock, or `F_UNLCK`.
        lk: fuse_file_lock,
    }
}

abi_struct! {
    /// Body of ACCESS (7.3).
    fuse_access_in [8] {
        /// `R_OK`, `W_OK`, `X_OK`, `F_OK`.
        mask: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of INIT (7.0; 64 bytes with `flags2` since 7.36,
    /// [`FUSE_COMPAT_INIT_IN_SIZE`] before).
    fuse_init_in [64] {
        /// Kernel's major version.
        major: U32,
        /// Kernel's minor version.
        minor: U32,
        /// Maximum readahead (7.6).
        max_readahead: U32,
        /// Offered flags, bits 0..31.
        flags: U32,
        /// Offered flags, bits 32..63 (7.36, with `FUSE_INIT_EXT`).
        flags2: U32,
        /// Unused.
        unused: [U32; 11],
    }
}

abi_struct! {
    /// Reply to INIT (7.0; 64 bytes since 7.23, [`FUSE_COMPAT_22_INIT_OUT_SIZE`] from 7.5,
    /// [`FUSE_COMPAT_INIT_OUT_SIZE`] before; `max_stack_depth` 7.40, `request_timeout` 7.43).
    fuse_init_out [64] {
        /// Daemon's major version.
        major: U32,
        /// Daemon's minor version.
        minor: U32,
        /// Maximum readahead.
        max_readahead: U32,
        /// Agreed flags, bits 0..31.
        flags: U32,
        /// Maximum number of background requests (7.13).
        max_background: U16,
        /// Congestion threshold (7.13).
        congestion_threshold: U16,
        /// Maximum size of a WRITE.
        max_write: U32,
        /// Timestamp granularity in ns (7.23).
        time_gran: U32,
        /// Maximum pages per request, with `FUSE_MAX_PAGES` (7.28).
        max_pages: U16,
        /// log2 of the DAX mapping alignment (7.31).
        map_alignment: U16,
        /// Agreed flags, bits 32..63 (7.36).
        flags2: U32,
        /// Maximum stacking depth for passthrough (7.40).
        max_stack_depth: U32,
        /// Request timeout in seconds, with `FUSE_REQUEST_TIMEOUT` (7.43).
        request_timeout: U16,
        /// Unused.
        unused: [U16; 11],
    }
}

abi_struct! {
    /// Body of CUSE_INIT (7.12).
    cuse_init_in [16] {
        /// Kernel's major version.
        major: U32,
        /// Kernel's minor version.
        minor: U32,
        /// Unused.
        unused: U32,
        /// `CUSE_*` flags.
        flags: U32,
    }
}

abi_struct! {
    /// Reply to CUSE_INIT, followed by the device info strings (7.12).
    cuse_init_out [72] {
        /// Major version.
        major: U32,
        /// Minor version.
        minor: U32,
        /// Unused.
        unused: U32,
        /// `CUSE_*` flags.
        flags: U32,
        /// Maximum read size.
        max_read: U32,
        /// Maximum write size.
        max_write: U32,
        /// Character device major.
        dev_major: U32,
        /// Character device minor.
        dev_minor: U32,
        /// Spare.
        spare: [U32; 10],
    }
}

abi_struct! {
    /// Body of INTERRUPT (7.7).
    fuse_interrupt_in [8] {
        /// The `unique` of the request to interrupt.
        unique: U64,
    }
}

abi_struct! {
    /// Body of BMAP (7.8).
    fuse_bmap_in [16] {
        /// Block within the file.
        block: U64,
        /// Block size.
        blocksize: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Reply to BMAP (7.8).
    fuse_bmap_out [8] {
        /// Block within the device.
        block: U64,
    }
}

abi_struct! {
    /// Body of IOCTL, followed by `in_size` bytes of input (7.11).
    fuse_ioctl_in [32] {
        /// File handle.
        fh: U64,
        /// `FUSE_IOCTL_*` flags.
        flags: U32,
        /// The ioctl command.
        cmd: U32,
        /// The ioctl argument.
        arg: U64,
        /// Bytes of input following.
        in_size: U32,
        /// Bytes of output wanted.
        out_size: U32,
    }
}

abi_struct! {
    /// An iovec in an unrestricted IOCTL retry (7.16).
    fuse_ioctl_iovec [16] {
        /// Address in the caller.
        base: U64,
        /// Length.
        len: U64,
    }
}

abi_struct! {
    /// Reply to IOCTL, followed by iovecs (retry) or output (7.11).
    fuse_ioctl_out [16] {
        /// Return value of the ioctl.
        result: I32,
        /// `FUSE_IOCTL_RETRY` to retry with the iovecs that follow.
        flags: U32,
        /// Input iovecs following.
        in_iovs: U32,
        /// Output iovecs following.
        out_iovs: U32,
    }
}

abi_struct! {
    /// Body of POLL (7.11; `events` 7.21).
    fuse_poll_in [24] {
        /// File handle.
        fh: U64,
        /// Poll handle, for NOTIFY_POLL wakeups.
        kh: U64,
        /// `FUSE_POLL_SCHEDULE_NOTIFY`.
        flags: U32,
        /// Requested events (7.21).
        events: U32,
    }
}

abi_struct! {
    /// Reply to POLL (7.11).
    fuse_poll_out [8] {
        /// Ready events.
        revents: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of NOTIFY_POLL (7.11).
    fuse_notify_poll_wakeup_out [8] {
        /// The poll handle from POLL.
        kh: U64,
    }
}

abi_struct! {
    /// Body of FALLOCATE (7.19).
    fuse_fallocate_in [32] {
        /// File handle.
        fh: U64,
        /// Offset.
        offset: U64,
        /// Length.
        length: U64,
        /// `FALLOC_FL_*` mode.
        mode: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// A directory entry in a READDIR reply, followed by the name and padding to 8 (7.0).
    fuse_dirent [24] {
        /// Inode number.
        ino: U64,
        /// Offset of the next entry.
        off: U64,
        /// Length of the name.
        namelen: U32,
        /// `DT_*` type.
        typ: U32,
    }
}

abi_struct! {
    /// A directory entry in a READDIRPLUS reply, followed by the name and padding (7.21).
    fuse_direntplus [152] {
        /// The entry, as for LOOKUP (nodeid 0: no lookup done).
        entry_out: fuse_entry_out,
        /// The directory entry.
        dirent: fuse_dirent,
    }
}

abi_struct! {
    /// Body of NOTIFY_INVAL_INODE (7.12).
    fuse_notify_inval_inode_out [24] {
        /// The inode.
        ino: U64,
        /// Offset of the range to invalidate (negative: attributes only).
        off: I64,
        /// Length of the range (0 or less: to the end).
        len: I64,
    }
}

abi_struct! {
    /// Body of NOTIFY_INVAL_ENTRY, followed by the name and a NUL (7.12; `flags` 7.38).
    fuse_notify_inval_entry_out [16] {
        /// The parent directory.
        parent: U64,
        /// Length of the name.
        namelen: U32,
        /// `FUSE_EXPIRE_ONLY` (7.38).
        flags: U32,
    }
}

abi_struct! {
    /// Body of NOTIFY_DELETE, followed by the name and a NUL (7.18).
    fuse_notify_delete_out [24] {
        /// The parent directory.
        parent: U64,
        /// The deleted inode.
        child: U64,
        /// Length of the name.
        namelen: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of NOTIFY_STORE, followed by the data (7.15).
    fuse_notify_store_out [24] {
        /// The inode.
        nodeid: U64,
        /// Offset.
        offset: U64,
        /// Bytes of data.
        size: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of NOTIFY_RETRIEVE (7.15).
    fuse_notify_retrieve_out [32] {
        /// Echoed as the `unique` of the NOTIFY_REPLY request.
        notify_unique: U64,
        /// The inode.
        nodeid: U64,
        /// Offset.
        offset: U64,
        /// Bytes wanted.
        size: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Body of the NOTIFY_REPLY request answering a retrieve, followed by the data (7.15).
    fuse_notify_retrieve_in [40] {
        /// Unused.
        dummy1: U64,
        /// Offset.
        offset: U64,
        /// Bytes of data following.
        size: U32,
        /// Unused.
        dummy2: U32,
        /// Unused.
        dummy3: U64,
        /// Unused.
        dummy4: U64,
    }
}

abi_struct! {
    /// Body of NOTIFY_PRUNE, followed by `count` nodeids (7.45).
    fuse_notify_prune_out [16] {
        /// Number of nodeids following.
        count: U32,
        /// Padding.
        padding: U32,
        /// Spare.
        spare: U64,
    }
}

abi_struct! {
    /// Argument of `FUSE_DEV_IOC_BACKING_OPEN` (7.40).
    fuse_backing_map [16] {
        /// The backing file's fd.
        fd: I32,
        /// Flags.
        flags: U32,
        /// Padding.
        padding: U64,
    }
}

abi_struct! {
    /// Body of LSEEK (7.24).
    fuse_lseek_in [24] {
        /// File handle.
        fh: U64,
        /// Offset.
        offset: U64,
        /// `SEEK_SET`, `SEEK_CUR`, `SEEK_END`, `SEEK_DATA`, `SEEK_HOLE`.
        whence: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Reply to LSEEK (7.24).
    fuse_lseek_out [8] {
        /// The resulting offset.
        offset: U64,
    }
}

abi_struct! {
    /// Body of COPY_FILE_RANGE and COPY_FILE_RANGE_64 (7.28).
    fuse_copy_file_range_in [56] {
        /// Source file handle.
        fh_in: U64,
        /// Source offset.
        off_in: U64,
        /// Destination inode.
        nodeid_out: U64,
        /// Destination file handle.
        fh_out: U64,
        /// Destination offset.
        off_out: U64,
        /// Bytes to copy.
        len: U64,
        /// `copy_file_range(2)` flags.
        flags: U64,
    }
}

abi_struct! {
    /// Reply to COPY_FILE_RANGE_64 (7.45).
    fuse_copy_file_range_out [8] {
        /// Bytes copied.
        bytes_copied: U64,
    }
}

abi_struct! {
    /// Body of SETUPMAPPING (7.31, virtio-fs DAX).
    fuse_setupmapping_in [40] {
        /// File handle.
        fh: U64,
        /// File offset.
        foffset: U64,
        /// Length.
        len: U64,
        /// `FUSE_SETUPMAPPING_FLAG_*`.
        flags: U64,
        /// Offset in the DAX window.
        moffset: U64,
    }
}

abi_struct! {
    /// Body of REMOVEMAPPING, followed by `count` [`fuse_removemapping_one`] (7.31).
    fuse_removemapping_in [4] {
        /// Number of entries.
        count: U32,
    }
}

abi_struct! {
    /// One range of REMOVEMAPPING (7.31).
    fuse_removemapping_one [16] {
        /// Offset in the DAX window.
        moffset: U64,
        /// Length.
        len: U64,
    }
}

abi_struct! {
    /// Body of SYNCFS (7.34).
    fuse_syncfs_in [8] {
        /// Padding.
        padding: U64,
    }
}

abi_struct! {
    /// One security context in the security-context extension, followed by the
    /// NUL-terminated name and the context, padded to 8 (7.36).
    fuse_secctx [8] {
        /// Size of the context.
        size: U32,
        /// Padding.
        padding: U32,
    }
}

abi_struct! {
    /// Header of the security-context extension (7.36).
    fuse_secctx_header [8] {
        /// Total size, this header included.
        size: U32,
        /// Number of contexts.
        nr_secctx: U32,
    }
}

abi_struct! {
    /// Header of one request extension; `size` includes this header and is a multiple of 8 (7.36).
    fuse_ext_header [8] {
        /// Size of the extension, header included.
        size: U32,
        /// `FUSE_EXT_GROUPS`, or 0..=31 for a security context.
        typ: U32,
    }
}

abi_struct! {
    /// Body of the supplementary-groups extension, followed by `nr_groups` gids (7.37).
    fuse_supp_groups [4] {
        /// Number of groups.
        nr_groups: U32,
    }
}

abi_struct! {
    /// Trailer of `fuse_uring_req_header` (7.42).
    fuse_uring_ent_in_out [32] {
        /// Flags.
        flags: U64,
        /// Commit id to use in the reply (the request's `unique`).
        commit_id: U64,
        /// Bytes valid in the payload buffer.
        payload_sz: U32,
        /// Padding.
        padding: U32,
        /// Reserved.
        reserved: U64,
    }
}

abi_struct! {
    /// Per-entry header buffer of fuse-over-io-uring (7.42).
    fuse_uring_req_header [288] {
        /// `fuse_in_header` on fetch, `fuse_out_header` on commit.
        in_out: [u8; FUSE_URING_IN_OUT_HEADER_SZ],
        /// The opcode's fixed in-struct.
        op_in: [u8; FUSE_URING_OP_IN_OUT_SZ],
        /// The ring entry trailer.
        ring_ent_in_out: fuse_uring_ent_in_out,
    }
}

abi_struct! {
    /// Command data in the 80-byte area of an SQE128 (7.42).
    fuse_uring_cmd_req [24] {
        /// Flags.
        flags: U64,
        /// Entry identifier for commits.
        commit_id: U64,
        /// Queue index.
        qid: U16,
        /// Padding.
        padding: [u8; 6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // Values as computed by the kernel's _IOR/_IOW macros on x86_64.
        assert_eq!(FUSE_DEV_IOC_CLONE, 0x8004_e500);
        assert_eq!(FUSE_DEV_IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(FUSE_DEV_IOC_BACKING_CLOSE, 0x4004_e502);
    }
}
