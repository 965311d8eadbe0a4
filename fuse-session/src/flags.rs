//! Typed flags the kernel sends with requests, so a filesystem never has to guess
//! which bits a plain integer holds.
//!
//! Each type is a newtype with constants, not an enum: the kernel adds bits, and an
//! unknown bit must survive as it came (see the project's style rule on codes the
//! kernel extends). The inner value is public for anything the constants miss.
//!
//! # References
//! - Linux `include/uapi/linux/fuse.h` (`FUSE_OPEN_*`, `FUSE_WRITE_*`), `include/uapi/linux/stat.h`
//! - `open(2)`, `rename(2)`, `access(2)`, `statx(2)`
use std::fmt;

use nix::libc;

macro_rules! flag_ops {
    ($t:ident, $inner:ty) => {
        impl $t {
            /// No flag set.
            pub const EMPTY: $t = $t(0);

            /// The raw bits.
            pub const fn bits(self) -> $inner {
                self.0
            }

            /// True if every bit of `other` is set in `self`.
            pub const fn contains(self, other: $t) -> bool {
                self.0 & other.0 == other.0
            }

            /// True if any bit of `other` is set in `self`.
            pub const fn intersects(self, other: $t) -> bool {
                self.0 & other.0 != 0
            }

            /// `self` without the bits of `other`.
            pub const fn difference(self, other: $t) -> $t {
                $t(self.0 & !other.0)
            }
        }

        impl std::ops::BitOr for $t {
            type Output = $t;
            fn bitor(self, rhs: $t) -> $t {
                $t(self.0 | rhs.0)
            }
        }

        impl std::ops::BitOrAssign for $t {
            fn bitor_assign(&mut self, rhs: $t) {
                self.0 |= rhs.0;
            }
        }

        impl std::ops::BitAnd for $t {
            type Output = $t;
            fn bitand(self, rhs: $t) -> $t {
                $t(self.0 & rhs.0)
            }
        }
    };
}

/// The `open(2)` flags of OPEN, CREATE, TMPFILE and WRITE (`O_*`).
///
/// The kernel has already removed `O_CREAT`, `O_EXCL` and `O_NOCTTY` for OPEN, and
/// `O_TRUNC` unless `ATOMIC_O_TRUNC` was agreed in INIT (then the filesystem must
/// apply it: see [`Filesystem::open`](crate::Filesystem::open)).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct OpenFlags(pub i32);

flag_ops!(OpenFlags, i32);

impl OpenFlags {
    /// The bits of the access mode (compare [`OpenFlags::access_mode`] with
    /// [`OpenFlags::RDONLY`], [`OpenFlags::WRONLY`] or [`OpenFlags::RDWR`]).
    pub const ACCMODE: OpenFlags = OpenFlags(libc::O_ACCMODE);
    /// Read only (the access mode 0: test with [`OpenFlags::access_mode`], not
    /// [`OpenFlags::contains`]).
    pub const RDONLY: OpenFlags = OpenFlags(libc::O_RDONLY);
    /// Write only.
    pub const WRONLY: OpenFlags = OpenFlags(libc::O_WRONLY);
    /// Read and write.
    pub const RDWR: OpenFlags = OpenFlags(libc::O_RDWR);
    /// Truncate to 0 on open (only present with `ATOMIC_O_TRUNC` agreed).
    pub const TRUNC: OpenFlags = OpenFlags(libc::O_TRUNC);
    /// Append: every write goes to the end of file.
    pub const APPEND: OpenFlags = OpenFlags(libc::O_APPEND);
    /// Create (CREATE only).
    pub const CREAT: OpenFlags = OpenFlags(libc::O_CREAT);
    /// Fail if the name exists (CREATE only).
    pub const EXCL: OpenFlags = OpenFlags(libc::O_EXCL);
    /// Non-blocking IO.
    pub const NONBLOCK: OpenFlags = OpenFlags(libc::O_NONBLOCK);
    /// Synchronous writes (data and metadata).
    pub const SYNC: OpenFlags = OpenFlags(libc::O_SYNC);
    /// Synchronous data writes.
    pub const DSYNC: OpenFlags = OpenFlags(libc::O_DSYNC);
    /// Direct IO (bypass the page cache).
    pub const DIRECT: OpenFlags = OpenFlags(libc::O_DIRECT);
    /// Do not update atime.
    pub const NOATIME: OpenFlags = OpenFlags(libc::O_NOATIME);
    /// Must be a directory.
    pub const DIRECTORY: OpenFlags = OpenFlags(libc::O_DIRECTORY);
    /// Large file offsets (always set by 64-bit kernels).
    pub const LARGEFILE: OpenFlags = OpenFlags(libc::O_LARGEFILE);

    /// The access mode: one of [`OpenFlags::RDONLY`], [`OpenFlags::WRONLY`],
    /// [`OpenFlags::RDWR`] (or the raw value if the kernel sent something else).
    pub const fn access_mode(self) -> OpenFlags {
        OpenFlags(self.0 & libc::O_ACCMODE)
    }

    /// True if the file was opened for writing (write only or read-write).
    pub const fn writes(self) -> bool {
        matches!(self.0 & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
    }
}

impl fmt::Debug for OpenFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenFlags({:#o})", self.0)
    }
}

/// The FUSE-level flags of OPEN, CREATE and TMPFILE (`open_flags`, 7.34): what the
/// kernel asks the filesystem to do beyond `open(2)`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FuseOpenFlags(pub u32);

flag_ops!(FuseOpenFlags, u32);

impl FuseOpenFlags {
    /// `FUSE_OPEN_KILL_SUIDGID`: the open truncates (O_TRUNC) and the caller lacks
    /// CAP_FSETID: clear the set-user-ID bit, and set-group-ID if group-executable
    /// (only with `HANDLE_KILLPRIV_V2` agreed).
    pub const KILL_SUIDGID: FuseOpenFlags = FuseOpenFlags(1 << 0);
}

impl fmt::Debug for FuseOpenFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FuseOpenFlags({:#x})", self.0)
    }
}

/// The flags of RENAME2 (`renameat2(2)`); empty for plain RENAME.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RenameFlags(pub u32);

flag_ops!(RenameFlags, u32);

impl RenameFlags {
    /// Fail with EEXIST if the new name exists.
    pub const NOREPLACE: RenameFlags = RenameFlags(libc::RENAME_NOREPLACE);
    /// Swap the two names atomically (both must exist).
    pub const EXCHANGE: RenameFlags = RenameFlags(libc::RENAME_EXCHANGE);
    /// Leave a whiteout at the old name (overlay filesystems).
    pub const WHITEOUT: RenameFlags = RenameFlags(libc::RENAME_WHITEOUT);
}

impl fmt::Debug for RenameFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RenameFlags({:#x})", self.0)
    }
}

/// The mask of ACCESS (`access(2)`): which permissions to check. Empty
/// ([`AccessMask::EXISTS`]) asks only whether the file exists.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AccessMask(pub u32);

flag_ops!(AccessMask, u32);

impl AccessMask {
    /// `F_OK`: existence only (no bit set).
    pub const EXISTS: AccessMask = AccessMask(libc::F_OK as u32);
    /// `R_OK`.
    pub const READ: AccessMask = AccessMask(libc::R_OK as u32);
    /// `W_OK`.
    pub const WRITE: AccessMask = AccessMask(libc::W_OK as u32);
    /// `X_OK`.
    pub const EXECUTE: AccessMask = AccessMask(libc::X_OK as u32);
}

impl fmt::Debug for AccessMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessMask({:#o})", self.0)
    }
}

/// The `write_flags` of WRITE (`FUSE_WRITE_*`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct WriteFlags(pub u32);

flag_ops!(WriteFlags, u32);

impl WriteFlags {
    /// `FUSE_WRITE_CACHE`: a delayed write from the page cache (writeback cache);
    /// the request's uid/gid are not the writer's.
    pub const CACHE: WriteFlags = WriteFlags(1 << 0);
    /// `FUSE_WRITE_LOCKOWNER`: the request carries a lock owner.
    pub const LOCKOWNER: WriteFlags = WriteFlags(1 << 1);
    /// `FUSE_WRITE_KILL_SUIDGID` (7.31): clear the set-user-ID and set-group-ID bits
    /// (the writer lacks CAP_FSETID).
    pub const KILL_SUIDGID: WriteFlags = WriteFlags(1 << 2);
}

impl fmt::Debug for WriteFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriteFlags({:#x})", self.0)
    }
}

/// `STATX_ATTR_*`: file attributes reported by `statx(2)` (STATX, 7.39).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct StatxAttributes(pub u64);

flag_ops!(StatxAttributes, u64);

impl StatxAttributes {
    /// Compressed by the filesystem.
    pub const COMPRESSED: StatxAttributes = StatxAttributes(0x4);
    /// Immutable (`chattr +i`).
    pub const IMMUTABLE: StatxAttributes = StatxAttributes(0x10);
    /// Append only (`chattr +a`).
    pub const APPEND: StatxAttributes = StatxAttributes(0x20);
    /// Not to be dumped (`chattr +d`).
    pub const NODUMP: StatxAttributes = StatxAttributes(0x40);
    /// Encrypted.
    pub const ENCRYPTED: StatxAttributes = StatxAttributes(0x800);
    /// An automount trigger.
    pub const AUTOMOUNT: StatxAttributes = StatxAttributes(0x1000);
    /// The root of a mount.
    pub const MOUNT_ROOT: StatxAttributes = StatxAttributes(0x2000);
    /// fs-verity protected.
    pub const VERITY: StatxAttributes = StatxAttributes(0x10_0000);
    /// In the DAX state.
    pub const DAX: StatxAttributes = StatxAttributes(0x20_0000);
}

impl fmt::Debug for StatxAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatxAttributes({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_kernel() {
        assert_eq!(FuseOpenFlags::KILL_SUIDGID.0, 1);
        assert_eq!(WriteFlags::KILL_SUIDGID.0, 4);
        assert!(OpenFlags(libc::O_WRONLY | libc::O_TRUNC).contains(OpenFlags::TRUNC));
        assert!(OpenFlags(libc::O_RDWR).writes());
        assert!(!OpenFlags(libc::O_RDONLY | libc::O_APPEND).writes());
        assert_eq!(
            OpenFlags(libc::O_WRONLY | libc::O_APPEND).access_mode(),
            OpenFlags::WRONLY
        );
        let r = RenameFlags::NOREPLACE | RenameFlags::WHITEOUT;
        assert!(r.contains(RenameFlags::NOREPLACE) && !r.contains(RenameFlags::EXCHANGE));
        assert_eq!(AccessMask(6), AccessMask::READ | AccessMask::WRITE);
        assert_eq!(
            StatxAttributes::IMMUTABLE.0,
            libc::STATX_ATTR_IMMUTABLE as u64
        );
        assert_eq!(StatxAttributes::VERITY.0, libc::STATX_ATTR_VERITY as u64);
        assert_eq!(StatxAttributes::DAX.0, libc::STATX_ATTR_DAX as u64);
    }

    #[test]
    fn the_invalid_id_is_no_caller() {
        let ctx = crate::RequestContext::new(1, u32::MAX, u32::MAX, 7);
        assert_eq!((ctx.uid, ctx.gid), (None, None));
        let ctx = crate::RequestContext::new(1, 1000, 100, 7);
        assert_eq!((ctx.uid, ctx.gid), (Some(1000), Some(100)));
    }
}
