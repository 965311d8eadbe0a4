//! The whole filesystem as one plain serde value: the inode table, with the POSIX
//! rules of every operation.
//!
//! Nothing here knows about FUSE requests: operations take the caller's ids and
//! plain arguments and return inode numbers, attributes or an [`Errno`]. The
//! [`Filesystem`](fuse_session::Filesystem) adapter in `fs.rs` locks a `State`
//! and calls these methods, so the rules can be tested without a mount.
//!
//! Permission checks are the kernel's (the mount uses `default_permissions`); the
//! state still applies the rules the kernel leaves to the filesystem: set-group-ID
//! directories, clearing set-user-ID and set-group-ID bits on write, truncate and
//! chown, the rename rules, link counts and times.
//!
//! By concern: the inode table (`inode`), the POSIX operations (`ops`), change
//! recording for a pre-copy (`changes`) and the validation index of restored
//! state (`index`). The submodules share this module's imports (`use super::*`).
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use fuse_session::{Errno, FileAttr, FileType, SetAttr, Statfs, TimeOrNow};
use serde::{Deserialize, Serialize};

use crate::data::{chunk_span, FileData, CHUNK, MAX_FILE_SIZE};

/// Result of state operations.
pub type Result<T> = std::result::Result<T, Errno>;

/// The root directory's inode number (and FUSE nodeid).
pub const ROOT_INO: u64 = 1;
/// The longest name a directory entry may have.
pub const NAME_MAX: usize = 255;
/// The longest symlink target.
pub const PATH_MAX: usize = 4096;

const S_ISUID: u16 = 0o4000;
const S_ISGID: u16 = 0o2000;
const S_IXGRP: u16 = 0o0010;

/// `renameat2(2)` flags.
pub const RENAME_NOREPLACE: u32 = 1;
/// Swap the two names.
pub const RENAME_EXCHANGE: u32 = 2;
/// Leave a whiteout (overlayfs); not supported.
pub const RENAME_WHITEOUT: u32 = 4;

/// `fallocate(2)` modes.
pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
/// Deallocate the range (with `KEEP_SIZE`).
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
/// Zero the range, allocating it.
pub const FALLOC_FL_ZERO_RANGE: u32 = 0x10;

/// `lseek(2)` whence values the kernel forwards.
pub const SEEK_DATA: u32 = 3;
/// Next hole.
pub const SEEK_HOLE: u32 = 4;

/// `setxattr(2)` flags.
pub const XATTR_CREATE: i32 = 1;
/// Replace only.
pub const XATTR_REPLACE: i32 = 2;

/// Who is asking: the ids the kernel sent with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Effective (fs) uid.
    pub uid: u32,
    /// Effective (fs) gid.
    pub gid: u32,
}

impl Caller {
    /// The superuser (treated as having `CAP_FSETID`).
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };

    fn privileged(&self) -> bool {
        self.uid == 0
    }
}

mod changes;
mod index;
mod inode;
mod name;
mod ops;

pub use changes::{InodeChange, StateChanges};
pub use index::StateIndex;
pub use inode::{Body, Dir, DirEntry, Inode, Inodes, Noted, FIRST_COOKIE};
pub use name::Name;

/// The whole filesystem: a plain value (serde), so it can be saved and restored.
///
/// Inode numbers are never reused (a 64-bit counter), so an inode number is also a
/// stable FUSE node value. Inodes whose link count dropped to zero stay until the
/// kernel forgets them ([`State::forget`]): an unlinked file that is still open or
/// looked up keeps working.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    inodes: Inodes,
    next_ino: u64,
    /// Allocated chunks over all files.
    used_chunks: u64,
    /// How many chunks may be allocated (`ENOSPC` beyond).
    capacity_chunks: u64,
    /// How many inodes may exist.
    max_inodes: u64,
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        Err(Errno::ENAMETOOLONG)
    } else if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        Err(Errno::EINVAL)
    } else {
        Ok(())
    }
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

fn time_of(t: TimeOrNow, now: SystemTime) -> SystemTime {
    match t {
        TimeOrNow::Time(t) => t,
        TimeOrNow::Now => now,
    }
}

/// Bytes reported as a directory's size per entry, as tmpfs does.
const DIRENT_SIZE: u64 = 20;

impl State {
    /// An empty filesystem: a root directory `0755` owned by `uid:gid`, room for
    /// `capacity` bytes of data and as many inodes as data pages.
    pub fn new(uid: u32, gid: u32, capacity: u64) -> State {
        let now = SystemTime::now();
        let mut root = Inode::new(
            FileType::Directory,
            0o755,
            uid,
            gid,
            Body::Dir(Box::new(Dir::new(ROOT_INO))),
            now,
        );
        root.nlink = 2;
        let capacity_chunks = (capacity / CHUNK).max(1);
        let mut inodes = Inodes::default();
        inodes.insert(ROOT_INO, root);
        State {
            inodes,
            next_ino: ROOT_INO + 1,
            used_chunks: 0,
            capacity_chunks,
            max_inodes: capacity_chunks.max(1024),
        }
    }
}
