//! Nodes: serde values that name a backing inode without holding it open, and the
//! `*at` helpers that reach inodes only relative to a node's descriptor.
//!
//! A [`Node`] is the backing inode's `(dev, ino)`, its type, and where the backing
//! filesystem has them a file handle (`name_to_handle_at`). A process keeps an
//! `O_PATH` descriptor per node the kernel knows ([`super::passfs::PassFs`]'s cache);
//! a successor reopens a node from its file handle (`open_by_handle_at`, checked
//! against `(dev, ino)`), or gets the descriptor itself beside the snapshot when
//! there is no handle, or when the inode is unlinked (the old process's
//! descriptor may be all that keeps it alive: a client's cwd in a removed
//! directory still gets GETATTR).
//!
//! Names are single path components: empty names, `.`, `..`, and names with `/` or
//! NUL are refused, and every open uses `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (plain `openat` with `O_NOFOLLOW`
//! where the kernel lacks `openat2`), so nothing resolves outside the source
//! directory and symlinks are never followed inside the daemon.
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use fuse_session::dev::fhandle::{self, FileHandle};
use fuse_session::{join_time, Errno, FileAttr, FileType, Result};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

/// The longest name a component may have (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// A file handle as saved: its type and bytes (at most 128, checked on use).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SavedHandle {
    /// `handle_type`.
    pub handle_type: i32,
    /// `f_handle`.
    pub bytes: Vec<u8>,
}

/// The filesystem's value for an inode: equal values are the same backing inode.
///
/// The file handle takes part in equality: an inode number reused after a delete
/// has a new handle (generation), so it is a new node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// Backing device (`st_dev`).
    pub dev: u64,
    /// Backing inode number (`st_ino`).
    pub ino: u64,
    /// `S_IFMT` bits of the backing inode.
    pub kind: u32,
    /// The file handle, when the backing filesystem gives one on the source's mount.
    pub fh: Option<SavedHandle>,
}

impl Node {
    /// The node's file type.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_mode(self.kind)
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == nix::libc::S_IFDIR
    }

    /// The handle in the form the library's call takes; `None` without one.
    pub fn file_handle(&self) -> Option<FileHandle> {
        self.fh.as_ref().map(|h| FileHandle {
            handle_type: h.handle_type,
            bytes: h.bytes.clone(),
        })
    }
}

/// Checks that `name` is one path component and returns it NUL-terminated:
/// `EINVAL` for an empty name, `.`, `..`, or a name holding `/` or NUL;
/// `ENAMETOOLONG` beyond [`NAME_MAX`].
pub fn component(name: &OsStr) -> Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    if b.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    CString::new(b).map_err(|_| Errno::EINVAL)
}

/// Set once `openat2` answered ENOSYS: use `openat` from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `name` (one component, checked) in directory `dir` with `flags` (plus
/// `O_NOFOLLOW | O_CLOEXEC`), never leaving `dir` and never following a symlink:
/// a symlink is opened as itself with `O_PATH`, and fails with `ELOOP` otherwise.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &CString,
    flags: OFlags,
    mode: u32,
) -> std::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_bits_truncate(mode);
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(dir, name.as_c_str(), flags, mode, resolve) {
            Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // openat2 fails EAGAIN when a rename raced the lookup: retry once.
            Err(rustix::io::Errno::AGAIN) => {
                return rustix::fs::openat2(dir, name.as_c_str(), flags, mode, resolve)
                    .map_err(Into::into)
            }
            r => return r.map_err(Into::into),
        }
    }
    rustix::fs::openat(dir, name.as_c_str(), flags, mode).map_err(Into::into)
}

/// `fstat` of any descriptor (an `O_PATH` one included).
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<rustix::fs::Stat> {
    rustix::fs::statat(fd, c"", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Errno(e.raw_os_error()))
}

/// The node of the inode `fd` refers to, with `st` its `fstat`. `mount_id`: the
/// source's mount id; a handle from another mount (a filesystem mounted inside
/// the source) is not kept, as the source's descriptor could not open it.
pub fn node_of(fd: BorrowedFd<'_>, st: &rustix::fs::Stat, handles: Option<i32>) -> Node {
    let fh = handles.and_then(|mount_id| {
        match fhandle::name_to_handle(fd.as_fd(), c"", nix::libc::AT_EMPTY_PATH) {
            Ok((h, m)) if m == mount_id => Some(SavedHandle {
                handle_type: h.handle_type,
                bytes: h.bytes,
            }),
            _ => None,
        }
    });
    Node {
        dev: st.st_dev,
        ino: st.st_ino,
        kind: st.st_mode & nix::libc::S_IFMT,
        fh,
    }
}

/// The kernel's 32-bit device number encoding (`new_encode_dev`) of a `dev_t`.
pub fn encode_rdev(rdev: u64) -> u32 {
    let (major, minor) = (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    );
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The `dev_t` of the kernel's 32-bit encoding (`new_decode_dev`).
pub fn decode_rdev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    nix::sys::stat::makedev(u64::from(major), u64::from(minor))
}

/// A time from `stat` seconds and nanoseconds (whose types vary by target).
fn time(secs: i64, nsecs: impl TryInto<u32>) -> std::time::SystemTime {
    join_time(secs, nsecs.try_into().unwrap_or(0).min(999_999_999))
}

/// Attributes of a backing inode as the mount shows them.
pub fn attr_of(st: &rustix::fs::Stat) -> Result<FileAttr> {
    let kind = FileType::from_mode(st.st_mode).ok_or(Errno::EIO)?;
    Ok(FileAttr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_rdev(st.st_rdev),
        blksize: st.st_blksize as u32,
        flags: 0,
    })
}

/// The path through which an `O_PATH` descriptor is reopened or used by calls that
/// take no descriptor (xattrs, chmod): `/proc/self/fd/N`, a magic link to the very
/// inode, which no rename can redirect.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    use std::os::fd::AsRawFd;
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        for bad in ["", ".", "..", "a/b", "/", "../etc"] {
            assert_eq!(component(OsStr::new(bad)), Err(Errno::EINVAL), "{bad:?}");
        }
        assert_eq!(component(OsStr::from_bytes(b"a\0b")), Err(Errno::EINVAL));
        assert_eq!(
            component(OsStr::new(&"x".repeat(256))),
            Err(Errno::ENAMETOOLONG)
        );
        assert!(component(OsStr::new("...")).is_ok());
    }

    #[test]
    fn rdev_round_trip() {
        for (ma, mi) in [(0u64, 0u64), (1, 3), (8, 1), (259, 65537), (4095, 0xfffff)] {
            let d = nix::sys::stat::makedev(ma, mi);
            assert_eq!(decode_rdev(encode_rdev(d)), d, "{ma}:{mi}");
        }
    }
}
