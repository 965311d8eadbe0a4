//! Request opcodes and notification codes.
//!
//! Both are newtypes with constants, not enums: the kernel adds values, and an
//! unknown value is data to report, never undefined behaviour or a panic.
use core::fmt;

/// A request opcode (`enum fuse_opcode` in the kernel header).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Opcode(pub u32);

macro_rules! opcodes {
    ($( $(#[$m:meta])* $name:ident = $val:expr, $minor:expr; )*) => {
        impl Opcode {
            $( $(#[$m])* pub const $name: Opcode = Opcode($val); )*

            /// Every opcode this crate knows, in numeric order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// The kernel's name without the `FUSE_` prefix, or `None` for an unknown opcode.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $val => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// The protocol minor that introduced this opcode, or `None` if unknown.
            pub const fn since_minor(self) -> Option<u32> {
                match self.0 {
                    $( $val => Some($minor), )*
                    _ => None,
                }
            }
        }
    };
}

opcodes! {
    /// Look up a name in a directory (7.0).
    LOOKUP = 1, 0;
    /// Drop lookups of an inode; never answered (7.0).
    FORGET = 2, 0;
    /// Get attributes (7.0).
    GETATTR = 3, 0;
    /// Set attributes (7.1).
    SETATTR = 4, 1;
    /// Read a symlink (7.0).
    READLINK = 5, 0;
    /// Create a symlink (7.1).
    SYMLINK = 6, 1;
    /// Create a node (7.1).
    MKNOD = 8, 1;
    /// Create a directory (7.1).
    MKDIR = 9, 1;
    /// Remove a file (7.1).
    UNLINK = 10, 1;
    /// Remove a directory (7.1).
    RMDIR = 11, 1;
    /// Rename (7.1).
    RENAME = 12, 1;
    /// Create a hard link (7.1).
    LINK = 13, 1;
    /// Open a file (7.1).
    OPEN = 14, 1;
    /// Read data (7.1).
    READ = 15, 1;
    /// Write data (7.1).
    WRITE = 16, 1;
    /// Filesystem statistics (7.0).
    STATFS = 17, 0;
    /// Close a file (7.1).
    RELEASE = 18, 1;
    /// Synchronise a file (7.1).
    FSYNC = 20, 1;
    /// Set an extended attribute (7.1).
    SETXATTR = 21, 1;
    /// Get an extended attribute (7.1).
    GETXATTR = 22, 1;
    /// List extended attributes (7.1).
    LISTXATTR = 23, 1;
    /// Remove an extended attribute (7.1).
    REMOVEXATTR = 24, 1;
    /// Flush on close(2) (7.1).
    FLUSH = 25, 1;
    /// Start the session (7.0).
    INIT = 26, 0;
    /// Open a directory (7.1).
    OPENDIR = 27, 1;
    /// Read a directory (7.1).
    READDIR = 28, 1;
    /// Close a directory (7.1).
    RELEASEDIR = 29, 1;
    /// Synchronise a directory (7.2).
    FSYNCDIR = 30, 2;
    /// Test for a POSIX lock (7.7).
    GETLK = 31, 7;
    /// Acquire or release a POSIX lock (7.7).
    SETLK = 32, 7;
    /// Acquire a POSIX lock, waiting (7.7).
    SETLKW = 33, 7;
    /// Check access permissions (7.3).
    ACCESS = 34, 3;
    /// Create and open a file (7.3).
    CREATE = 35, 3;
    /// Interrupt a request (7.7).
    INTERRUPT = 36, 7;
    /// Map a block (7.8).
    BMAP = 37, 8;
    /// End the session (7.8).
    DESTROY = 38, 8;
    /// ioctl (7.11).
    IOCTL = 39, 11;
    /// poll (7.11).
    POLL = 40, 11;
    /// The kernel's answer to a NOTIFY_RETRIEVE; never answered (7.15).
    NOTIFY_REPLY = 41, 15;
    /// Forget many inodes; never answered (7.16).
    BATCH_FORGET = 42, 16;
    /// Allocate or punch space (7.19).
    FALLOCATE = 43, 19;
    /// Read a directory with attributes (7.21).
    READDIRPLUS = 44, 21;
    /// Rename with flags (7.23).
    RENAME2 = 45, 23;
    /// SEEK_DATA / SEEK_HOLE (7.24).
    LSEEK = 46, 24;
    /// Copy a range between files (7.28).
    COPY_FILE_RANGE = 47, 28;
    /// Set up a DAX mapping (7.31, virtio-fs).
    SETUPMAPPING = 48, 31;
    /// Remove DAX mappings (7.31, virtio-fs).
    REMOVEMAPPING = 49, 31;
    /// Synchronise the filesystem (7.34).
    SYNCFS = 50, 34;
    /// Create an unnamed temporary file (7.37).
    TMPFILE = 51, 37;
    /// statx (7.39).
    STATX = 52, 39;
    /// Copy a range, 64-bit result (7.45).
    COPY_FILE_RANGE_64 = 53, 45;
    /// Start a CUSE session (7.12).
    CUSE_INIT = 4096, 12;
}

impl Opcode {
    /// True for requests the kernel never expects an answer to
    /// (FORGET, BATCH_FORGET, NOTIFY_REPLY).
    pub const fn is_unanswered(self) -> bool {
        matches!(self.0, 2 | 41 | 42)
    }
}

impl fmt::Debug for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Opcode({})", self.0),
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A notification code, carried in `fuse_out_header.error` with `unique` 0
/// (`enum fuse_notify_code`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NotifyCode(pub i32);

impl NotifyCode {
    /// Wake up a poller (7.11).
    pub const POLL: NotifyCode = NotifyCode(1);
    /// Invalidate an inode's attributes and data (7.12).
    pub const INVAL_INODE: NotifyCode = NotifyCode(2);
    /// Invalidate a directory entry (7.12).
    pub const INVAL_ENTRY: NotifyCode = NotifyCode(3);
    /// Store data in the page cache (7.15).
    pub const STORE: NotifyCode = NotifyCode(4);
    /// Retrieve data from the page cache (7.15).
    pub const RETRIEVE: NotifyCode = NotifyCode(5);
    /// A directory entry was deleted (7.18).
    pub const DELETE: NotifyCode = NotifyCode(6);
    /// Resend every read-but-unanswered request (7.40, needs `FUSE_HAS_RESEND`).
    pub const RESEND: NotifyCode = NotifyCode(7);
    /// Increment the connection's epoch, invalidating all dentries (7.44).
    pub const INC_EPOCH: NotifyCode = NotifyCode(8);
    /// Prune unused inodes from the kernel's cache (7.45).
    pub const PRUNE: NotifyCode = NotifyCode(9);

    /// The protocol minor that introduced this code, or `None` if unknown.
    pub const fn since_minor(self) -> Option<u32> {
        Some(match self.0 {
            1 => 11,
            2 | 3 => 12,
            4 | 5 => 15,
            6 => 18,
            7 => 40,
            8 => 44,
            9 => 45,
            _ => return None,
        })
    }

    /// The kernel's name without the `FUSE_NOTIFY_` prefix, or `None` if unknown.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "POLL",
            2 => "INVAL_INODE",
            3 => "INVAL_ENTRY",
            4 => "STORE",
            5 => "RETRIEVE",
            6 => "DELETE",
            7 => "RESEND",
            8 => "INC_EPOCH",
            9 => "PRUNE",
            _ => return None,
        })
    }
}

impl fmt::Debug for NotifyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "NOTIFY_{n}"),
            None => write!(f, "NotifyCode({})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_table_is_complete_and_sorted() {
        // 1..=53 without the two holes the kernel never assigned (7 and 19), plus CUSE_INIT.
        let expect: usize = 53 - 2 + 1;
        assert_eq!(Opcode::ALL.len(), expect);
        assert!(Opcode::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Opcode(7).name(), None);
        assert_eq!(Opcode(19).name(), None);
        assert_eq!(Opcode::STATX.since_minor(), Some(39));
        assert_eq!(format!("{:?}", Opcode(999)), "Opcode(999)");
    }
}
