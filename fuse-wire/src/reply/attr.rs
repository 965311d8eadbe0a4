//! Plain Rust values of the common reply bodies, converting to and from the ABI
//! structs field by field (no allocation, no hidden cost).
use core::time::Duration;

use zerocopy::byteorder::native_endian::{I32, U32, U64};

use crate::abi;
use crate::flags::{AttrFlags, FopenFlags};

/// Builds a cache timeout from the two wire fields, clamping the nanoseconds to
/// 999 999 999 as the kernel's `fuse_time_to_jiffies` does (so no input can overflow).
pub(crate) const fn timeout_from_wire(secs: u64, nsecs: u32) -> Duration {
    let nsecs = if nsecs > 999_999_999 {
        999_999_999
    } else {
        nsecs
    };
    Duration::new(secs, nsecs)
}

/// A point in time as `fuse_attr` carries it: seconds since the epoch (negative
/// before 1970; the kernel reads the 64-bit field as signed) and nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub sec: i64,
    /// Nanoseconds within the second (should be below 10^9).
    pub nsec: u32,
}

impl Timestamp {
    /// A timestamp of `sec` seconds and `nsec` nanoseconds.
    pub const fn new(sec: i64, nsec: u32) -> Timestamp {
        Timestamp { sec, nsec }
    }
}

/// File attributes, as in `fuse_attr` (7.0; `blksize` 7.9, `flags` 7.32).
///
/// On a connection that negotiated a minor below 9, `blksize` and `flags` are not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Attr {
    /// Inode number shown to applications (`st_ino`).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Blocks of 512 bytes allocated.
    pub blocks: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
    /// File type and permission bits (`S_IFREG | 0o644` ...).
    pub mode: u32,
    /// Number of hard links.
    pub nlink: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Device number of a device node.
    pub rdev: u32,
    /// Preferred I/O block size (7.9; 0 lets the kernel choose).
    pub blksize: u32,
    /// `FUSE_ATTR_*` flags (7.32).
    pub flags: AttrFlags,
}

impl Attr {
    /// The ABI struct.
    pub const fn to_abi(&self) -> abi::fuse_attr {
        abi::fuse_attr {
            ino: U64::new(self.ino),
            size: U64::new(self.size),
            blocks: U64::new(self.blocks),
            atime: U64::new(self.atime.sec as u64),
            mtime: U64::new(self.mtime.sec as u64),
            ctime: U64::new(self.ctime.sec as u64),
            atimensec: U32::new(self.atime.nsec),
            mtimensec: U32::new(self.mtime.nsec),
            ctimensec: U32::new(self.ctime.nsec),
            mode: U32::new(self.mode),
            nlink: U32::new(self.nlink),
            uid: U32::new(self.uid),
            gid: U32::new(self.gid),
            rdev: U32::new(self.rdev),
            blksize: U32::new(self.blksize),
            flags: U32::new(self.flags.0),
        }
    }

    /// The value of an ABI struct.
    pub const fn from_abi(a: &abi::fuse_attr) -> Attr {
        Attr {
            ino: a.ino.get(),
            size: a.size.get(),
            blocks: a.blocks.get(),
            atime: Timestamp::new(a.atime.get() as i64, a.atimensec.get()),
            mtime: Timestamp::new(a.mtime.get() as i64, a.mtimensec.get()),
            ctime: Timestamp::new(a.ctime.get() as i64, a.ctimensec.get()),
            mode: a.mode.get(),
            nlink: a.nlink.get(),
            uid: a.uid.get(),
            gid: a.gid.get(),
            rdev: a.rdev.get(),
            blksize: a.blksize.get(),
            flags: AttrFlags(a.flags.get()),
        }
    }
}

impl From<Attr> for abi::fuse_attr {
    fn from(a: Attr) -> Self {
        a.to_abi()
    }
}

impl From<abi::fuse_attr> for Attr {
    fn from(a: abi::fuse_attr) -> Self {
        Attr::from_abi(&a)
    }
}

/// The answer to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK (and part of CREATE, TMPFILE and
/// READDIRPLUS), as in `fuse_entry_out` (7.0).
///
/// A `nodeid` of 0 is a negative entry: the kernel caches the absence of the name for
/// `entry_valid`. Each positive LOOKUP-like reply adds one to the node's lookup count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    /// The nodeid the kernel will use for the inode (0: negative entry).
    pub nodeid: u64,
    /// Generation: `(nodeid, generation)` must be unique over the filesystem's life.
    pub generation: u64,
    /// How long the kernel may cache the name.
    pub entry_valid: Duration,
    /// How long the kernel may cache the attributes.
    pub attr_valid: Duration,
    /// The attributes.
    pub attr: Attr,
}

impl Entry {
    /// The ABI struct.
    pub const fn to_abi(&self) -> abi::fuse_entry_out {
        abi::fuse_entry_out {
            nodeid: U64::new(self.nodeid),
            generation: U64::new(self.generation),
            entry_valid: U64::new(self.entry_valid.as_secs()),
            attr_valid: U64::new(self.attr_valid.as_secs()),
            entry_valid_nsec: U32::new(self.entry_valid.subsec_nanos()),
            attr_valid_nsec: U32::new(self.attr_valid.subsec_nanos()),
            attr: self.attr.to_abi(),
        }
    }

    /// The value of an ABI struct (nanoseconds above 999 999 999 are clamped, as the
    /// kernel does).
    pub const fn from_abi(e: &abi::fuse_entry_out) -> Entry {
        Entry {
            nodeid: e.nodeid.get(),
            generation: e.generation.get(),
            entry_valid: timeout_from_wire(e.entry_valid.get(), e.entry_valid_nsec.get()),
            attr_valid: timeout_from_wire(e.attr_valid.get(), e.attr_valid_nsec.get()),
            attr: Attr::from_abi(&e.attr),
        }
    }
}

impl From<Entry> for abi::fuse_entry_out {
    fn from(e: Entry) -> Self {
        e.to_abi()
    }
}

impl From<abi::fuse_entry_out> for Entry {
    fn from(e: abi::fuse_entry_out) -> Self {
        Entry::from_abi(&e)
    }
}

/// The answer to OPEN and OPENDIR (and part of CREATE and TMPFILE), as in
/// `fuse_open_out` (7.0; `backing_id` 7.40).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Open {
    /// The file handle the kernel passes back in every request on this open file.
    pub fh: u64,
    /// `FOPEN_*` flags.
    pub flags: FopenFlags,
    /// With [`FopenFlags::PASSTHROUGH`] (7.40): the id `FUSE_DEV_IOC_BACKING_OPEN`
    /// returned for the backing file; otherwise 0.
    pub backing_id: i32,
}

impl Open {
    /// The ABI struct.
    pub const fn to_abi(&self) -> abi::fuse_open_out {
        abi::fuse_open_out {
            fh: U64::new(self.fh),
            open_flags: U32::new(self.flags.0),
            backing_id: I32::new(self.backing_id),
        }
    }

    /// The value of an ABI struct.
    pub const fn from_abi(o: &abi::fuse_open_out) -> Open {
        Open {
            fh: o.fh.get(),
            flags: FopenFlags(o.open_flags.get()),
            backing_id: o.backing_id.get(),
        }
    }
}

impl From<Open> for abi::fuse_open_out {
    fn from(o: Open) -> Self {
        o.to_abi()
    }
}

impl From<abi::fuse_open_out> for Open {
    fn from(o: abi::fuse_open_out) -> Self {
        Open::from_abi(&o)
    }
}

/// Filesystem statistics, the answer to STATFS, as in `fuse_kstatfs` (7.0; `frsize` 7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Statfs {
    /// Total blocks of `frsize` bytes.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size (7.4).
    pub frsize: u32,
}

impl Statfs {
    /// The ABI struct.
    pub const fn to_abi(&self) -> abi::fuse_kstatfs {
        abi::fuse_kstatfs {
            blocks: U64::new(self.blocks),
            bfree: U64::new(self.bfree),
            bavail: U64::new(self.bavail),
            files: U64::new(self.files),
            ffree: U64::new(self.ffree),
            bsize: U32::new(self.bsize),
            namelen: U32::new(self.namelen),
            frsize: U32::new(self.frsize),
            padding: U32::new(0),
            spare: [U32::new(0); 6],
        }
    }

    /// The value of an ABI struct (padding and spare fields are ignored).
    pub const fn from_abi(s: &abi::fuse_kstatfs) -> Statfs {
        Statfs {
            blocks: s.blocks.get(),
            bfree: s.bfree.get(),
            bavail: s.bavail.get(),
            files: s.files.get(),
            ffree: s.ffree.get(),
            bsize: s.bsize.get(),
            namelen: s.namelen.get(),
            frsize: s.frsize.get(),
        }
    }
}

impl From<Statfs> for abi::fuse_kstatfs {
    fn from(s: Statfs) -> Self {
        s.to_abi()
    }
}

impl From<abi::fuse_kstatfs> for Statfs {
    fn from(s: abi::fuse_kstatfs) -> Self {
        Statfs::from_abi(&s)
    }
}

/// A POSIX lock, the answer to GETLK, as in `fuse_file_lock` (7.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileLock {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive (`OFFSET_MAX` for the end of the file).
    pub end: u64,
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK` (no conflict).
    pub typ: u32,
    /// Thread group id of the holder.
    pub pid: u32,
}

impl FileLock {
    /// The ABI struct.
    pub const fn to_abi(&self) -> abi::fuse_file_lock {
        abi::fuse_file_lock {
            start: U64::new(self.start),
            end: U64::new(self.end),
            typ: U32::new(self.typ),
            pid: U32::new(self.pid),
        }
    }

    /// The value of an ABI struct.
    pub const fn from_abi(l: &abi::fuse_file_lock) -> FileLock {
        FileLock {
            start: l.start.get(),
            end: l.end.get(),
            typ: l.typ.get(),
            pid: l.pid.get(),
        }
    }
}

impl From<FileLock> for abi::fuse_file_lock {
    fn from(l: FileLock) -> Self {
        l.to_abi()
    }
}

impl From<abi::fuse_file_lock> for FileLock {
    fn from(l: abi::fuse_file_lock) -> Self {
        FileLock::from_abi(&l)
    }
}

/// One iovec of an unrestricted IOCTL retry, as in `fuse_ioctl_iovec` (7.16):
/// an address range in the calling process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IoctlIovec {
    /// Start address in the caller's address space.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

impl IoctlIovec {
    /// The ABI struct.
    pub const fn to_abi(&self) -> abi::fuse_ioctl_iovec {
        abi::fuse_ioctl_iovec {
            base: U64::new(self.base),
            len: U64::new(self.len),
        }
    }

    /// The value of an ABI struct.
    pub const fn from_abi(v: &abi::fuse_ioctl_iovec) -> IoctlIovec {
        IoctlIovec {
            base: v.base.get(),
            len: v.len.get(),
        }
    }
}
