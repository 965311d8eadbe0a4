//! Bit flags of the protocol, as newtypes with constants.
//!
//! Unknown bits are kept, never rejected: the kernel adds flags with each minor.
use core::fmt;
use core::ops::{BitAnd, BitAndAssign, BitOr, BitOrAssign, Not};

macro_rules! flag_type {
    (
        $(#[$meta:meta])*
        $name:ident($inner:ty) {
            $( $(#[$fm:meta])* $flag:ident = $val:expr; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub $inner);

        impl $name {
            $( $(#[$fm])* pub const $flag: $name = $name($val); )*

            /// No flag set.
            pub const EMPTY: $name = $name(0);

            /// Every named flag with its name, in bit order.
            pub const NAMED: &'static [(&'static str, $name)] = &[$((stringify!($flag), $name::$flag)),*];

            /// The raw bits.
            pub const fn bits(self) -> $inner { self.0 }

            /// True if every bit of `other` is set in `self`.
            pub const fn contains(self, other: $name) -> bool { self.0 & other.0 == other.0 }

            /// True if any bit of `other` is set in `self`.
            pub const fn intersects(self, other: $name) -> bool { self.0 & other.0 != 0 }

            /// `self` with the bits of `other` added.
            #[must_use]
            pub const fn union(self, other: $name) -> $name { $name(self.0 | other.0) }

            /// `self` restricted to the bits of `other`.
            #[must_use]
            pub const fn intersection(self, other: $name) -> $name { $name(self.0 & other.0) }

            /// `self` without the bits of `other`.
            #[must_use]
            pub const fn difference(self, other: $name) -> $name { $name(self.0 & !other.0) }

            /// True if no bit is set.
            pub const fn is_empty(self) -> bool { self.0 == 0 }
        }

        impl BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name { $name(self.0 | rhs.0) }
        }
        impl BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: $name) { self.0 |= rhs.0 }
        }
        impl BitAnd for $name {
            type Output = $name;
            fn bitand(self, rhs: $name) -> $name { $name(self.0 & rhs.0) }
        }
        impl BitAndAssign for $name {
            fn bitand_assign(&mut self, rhs: $name) { self.0 &= rhs.0 }
        }
        impl Not for $name {
            type Output = $name;
            fn not(self) -> $name { $name(!self.0) }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                let mut rest = self.0;
                let mut first = true;
                for (n, v) in Self::NAMED {
                    if v.0 != 0 && self.0 & v.0 == v.0 && rest & v.0 != 0 {
                        if !first { f.write_str(" | ")?; }
                        f.write_str(n)?;
                        first = false;
                        rest &= !v.0;
                    }
                }
                if rest != 0 {
                    if !first { f.write_str(" | ")?; }
                    write!(f, "{:#x}", rest)?;
                    first = false;
                }
                if first { f.write_str("0")?; }
                f.write_str(")")
            }
        }
    };
}

flag_type! {
    /// INIT flags, all 64 bits: `flags` in the low half, `flags2` (7.36, with
    /// [`InitFlags::INIT_EXT`]) in the high half.
    InitFlags(u64) {
        /// Asynchronous read requests (7.0).
        ASYNC_READ = 1 << 0;
        /// Remote POSIX locks (7.7).
        POSIX_LOCKS = 1 << 1;
        /// Kernel sends file handles for fstat etc. (unused).
        FILE_OPS = 1 << 2;
        /// The filesystem handles O_TRUNC in OPEN (7.9).
        ATOMIC_O_TRUNC = 1 << 3;
        /// The filesystem handles lookups of "." and ".." (7.10).
        EXPORT_SUPPORT = 1 << 4;
        /// Writes larger than 4 KiB (7.9).
        BIG_WRITES = 1 << 5;
        /// Do not apply umask on create (7.12).
        DONT_MASK = 1 << 6;
        /// Splice write on the device (7.14).
        SPLICE_WRITE = 1 << 7;
        /// Splice move on the device (7.14).
        SPLICE_MOVE = 1 << 8;
        /// Splice read on the device (7.14).
        SPLICE_READ = 1 << 9;
        /// Remote BSD locks (7.17).
        FLOCK_LOCKS = 1 << 10;
        /// ioctl on directories (7.18).
        HAS_IOCTL_DIR = 1 << 11;
        /// Automatically invalidate cached pages (7.20).
        AUTO_INVAL_DATA = 1 << 12;
        /// READDIRPLUS (7.21).
        DO_READDIRPLUS = 1 << 13;
        /// Adaptive READDIRPLUS (7.21).
        READDIRPLUS_AUTO = 1 << 14;
        /// Asynchronous direct I/O (7.22).
        ASYNC_DIO = 1 << 15;
        /// Writeback cache (7.23).
        WRITEBACK_CACHE = 1 << 16;
        /// Zero-message opens (7.23).
        NO_OPEN_SUPPORT = 1 << 17;
        /// Parallel lookups and readdir (7.25).
        PARALLEL_DIROPS = 1 << 18;
        /// The filesystem kills suid/sgid/caps (7.26).
        HANDLE_KILLPRIV = 1 << 19;
        /// POSIX ACLs (7.26).
        POSIX_ACL = 1 << 20;
        /// Reading after abort returns ECONNABORTED (7.27).
        ABORT_ERROR = 1 << 21;
        /// `init_out.max_pages` is valid (7.28).
        MAX_PAGES = 1 << 22;
        /// Cache READLINK replies (7.28).
        CACHE_SYMLINKS = 1 << 23;
        /// Zero-message opendir (7.29).
        NO_OPENDIR_SUPPORT = 1 << 24;
        /// Only invalidate cached pages on explicit request (7.30).
        EXPLICIT_INVAL_DATA = 1 << 25;
        /// `init_out.map_alignment` is valid (7.31).
        MAP_ALIGNMENT = 1 << 26;
        /// Automount submounts (7.32).
        SUBMOUNTS = 1 << 27;
        /// Kill suid/sgid/caps, v2 semantics (7.33).
        HANDLE_KILLPRIV_V2 = 1 << 28;
        /// Extended `fuse_setxattr_in` (7.33).
        SETXATTR_EXT = 1 << 29;
        /// `flags2` is valid (7.36).
        INIT_EXT = 1 << 30;
        /// Reserved.
        INIT_RESERVED = 1 << 31;
        /// Security context on create operations (7.36).
        SECURITY_CTX = 1 << 32;
        /// Per-inode DAX (7.36).
        HAS_INODE_DAX = 1 << 33;
        /// Supplementary group on create operations (7.37).
        CREATE_SUPP_GROUP = 1 << 34;
        /// Expiry-only entry invalidation (7.38).
        HAS_EXPIRE_ONLY = 1 << 35;
        /// Shared mmap in direct-io mode (7.39).
        DIRECT_IO_ALLOW_MMAP = 1 << 36;
        /// Passthrough to backing files (7.40).
        PASSTHROUGH = 1 << 37;
        /// No export support (7.40).
        NO_EXPORT_SUPPORT = 1 << 38;
        /// The kernel can resend pending requests (7.40).
        HAS_RESEND = 1 << 39;
        /// Idmapped mounts (7.41).
        ALLOW_IDMAP = 1 << 40;
        /// fuse-over-io-uring (7.42).
        OVER_IO_URING = 1 << 41;
        /// `init_out.request_timeout` is valid (7.43).
        REQUEST_TIMEOUT = 1 << 42;
    }
}

impl InitFlags {
    /// Builds the flags from the two 32-bit halves of INIT.
    pub const fn from_halves(flags: u32, flags2: u32) -> InitFlags {
        InitFlags((flags as u64) | ((flags2 as u64) << 32))
    }
    /// The low half (`flags`).
    pub const fn low(self) -> u32 {
        self.0 as u32
    }
    /// The high half (`flags2`).
    pub const fn high(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

flag_type! {
    /// Flags of `fuse_open_out.open_flags`.
    FopenFlags(u32) {
        /// Bypass the page cache (7.2).
        DIRECT_IO = 1 << 0;
        /// Keep the page cache on open (7.2).
        KEEP_CACHE = 1 << 1;
        /// Not seekable (7.10).
        NONSEEKABLE = 1 << 2;
        /// Cache directory contents (7.28).
        CACHE_DIR = 1 << 3;
        /// Stream-like, no position (7.31).
        STREAM = 1 << 4;
        /// No flush on close (7.35).
        NOFLUSH = 1 << 5;
        /// Parallel direct writes (7.36).
        PARALLEL_DIRECT_WRITES = 1 << 6;
        /// Passthrough to `backing_id` (7.40).
        PASSTHROUGH = 1 << 7;
    }
}

flag_type! {
    /// `fuse_setattr_in.valid`.
    SetattrValid(u32) {
        /// `mode` is set.
        MODE = 1 << 0;
        /// `uid` is set.
        UID = 1 << 1;
        /// `gid` is set.
        GID = 1 << 2;
        /// `size` is set.
        SIZE = 1 << 3;
        /// `atime` is set.
        ATIME = 1 << 4;
        /// `mtime` is set.
        MTIME = 1 << 5;
        /// `fh` is set.
        FH = 1 << 6;
        /// Set atime to now (7.9).
        ATIME_NOW = 1 << 7;
        /// Set mtime to now (7.9).
        MTIME_NOW = 1 << 8;
        /// `lock_owner` is set (7.9).
        LOCKOWNER = 1 << 9;
        /// `ctime` is set (7.23).
        CTIME = 1 << 10;
        /// Kill suid and sgid (7.33).
        KILL_SUIDGID = 1 << 11;
    }
}

flag_type! {
    /// Small flag words of various requests (`getattr_flags`, `read_flags`,
    /// `write_flags`, `release_flags`, `lk_flags`, `fsync_flags`, `open_flags` of
    /// OPEN/CREATE, `setxattr_flags`, `flags` of POLL and of INVAL_ENTRY).
    /// The constants are grouped by the field they belong to.
    RequestFlags(u32) {
        /// `getattr_flags`: `fh` is valid (7.9).
        GETATTR_FH = 1 << 0;
        /// `write_flags`: delayed write from the page cache (7.9).
        WRITE_CACHE = 1 << 0;
        /// `write_flags`/`read_flags`: `lock_owner` is valid (7.9).
        WRITE_LOCKOWNER = 1 << 1;
        /// `write_flags`: kill suid and sgid (7.31).
        WRITE_KILL_SUIDGID = 1 << 2;
        /// `release_flags`: flush as well (7.7).
        RELEASE_FLUSH = 1 << 0;
        /// `release_flags`: unlock BSD locks (7.17).
        RELEASE_FLOCK_UNLOCK = 1 << 1;
        /// `lk_flags`: a BSD lock (7.9).
        LK_FLOCK = 1 << 0;
        /// `fsync_flags`: data only.
        FSYNC_FDATASYNC = 1 << 0;
        /// `open_flags` of OPEN/CREATE: kill suid and sgid if executable (7.34).
        OPEN_KILL_SUIDGID = 1 << 0;
        /// `setxattr_flags`: clear SGID when setting the access ACL (7.33).
        SETXATTR_ACL_KILL_SGID = 1 << 0;
        /// POLL `flags`: schedule a wakeup notification (7.11).
        POLL_SCHEDULE_NOTIFY = 1 << 0;
        /// INVAL_ENTRY `flags`: only expire the entry (7.38).
        EXPIRE_ONLY = 1 << 0;
    }
}

flag_type! {
    /// `fuse_ioctl_in.flags` and `fuse_ioctl_out.flags`.
    IoctlFlags(u32) {
        /// 32-bit compat ioctl on a 64-bit kernel (7.11).
        COMPAT = 1 << 0;
        /// Not restricted to well-formed ioctls; retry allowed (7.11).
        UNRESTRICTED = 1 << 1;
        /// Retry with new iovecs (7.11).
        RETRY = 1 << 2;
        /// 32-bit ioctl (7.16).
        BIT32 = 1 << 3;
        /// On a directory (7.18).
        DIR = 1 << 4;
        /// x32 compat ioctl (7.30).
        COMPAT_X32 = 1 << 5;
    }
}

/// Maximum number of iovecs in an IOCTL retry.
pub const FUSE_IOCTL_MAX_IOV: u32 = 256;

flag_type! {
    /// `fuse_attr.flags` (7.32).
    AttrFlags(u32) {
        /// The inode is a submount root (7.32).
        SUBMOUNT = 1 << 0;
        /// DAX for this file (7.36).
        DAX = 1 << 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn init_flags_halves_round_trip() {
        let f = InitFlags::ASYNC_READ | InitFlags::HAS_RESEND | InitFlags::REQUEST_TIMEOUT;
        assert_eq!(InitFlags::from_halves(f.low(), f.high()), f);
        assert_eq!(f.high(), (1 << 7) | (1 << 10));
    }

    #[test]
    fn debug_names_known_bits_and_keeps_unknown() {
        let f = InitFlags::ASYNC_READ | InitFlags(1 << 60);
        assert_eq!(
            format!("{f:?}"),
            "InitFlags(ASYNC_READ | 0x1000000000000000)"
        );
        assert_eq!(format!("{:?}", FopenFlags::EMPTY), "FopenFlags(0)");
    }
}
