//! Which mount is at a path, by an identity the kernel never reuses.
//!
//! A FUSE connection id (the superblock's anonymous device number) and the mount id in
//! the first field of `/proc/self/mountinfo` are both freed when the mount goes and
//! handed to the next mount at once. A daemon that asks "is the FUSE mount at my
//! mountpoint still mine?" by device number therefore answers *yes* about a newer
//! daemon's mount when its own was unmounted from outside and another was mounted in
//! its place — and unmounts it.
//!
//! Linux 6.8 gives every mount a 64-bit id that is never reused while the system runs
//! (`STATX_MNT_ID_UNIQUE` from `statx(2)`, and `statmount(2)` to ask about a mount by
//! that id). [`MountIdentity`] records it, with the device number, when a mount is
//! made or adopted, and [`MountIdentity::check`] answers "is the mount at this path
//! mine" without sending the filesystem a request:
//! - the path is opened with `O_PATH` (no `open` reaches the filesystem) and
//!   `statx(AT_EMPTY_PATH | AT_STATX_DONT_SYNC)` asks only for the mount id, which no
//!   filesystem is asked for (FUSE answers from its cache, so a hung or not yet
//!   initialised mount does not block);
//! - the unique id decides when both sides know it;
//! - without it (kernels before 6.8), the device number decides only while the
//!   connection is alive: a live connection keeps its superblock and so its device
//!   number, which cannot then belong to anyone else. A dead connection with a
//!   matching device number is [`Ownership::Unknown`], and the caller leaves it
//!   alone.
//!
//! # References
//! - `statx(2)` (`STATX_MNT_ID_UNIQUE`), `statmount(2)`; Linux `fs/stat.c`
//!   (`vfs_statx_path`), `fs/namespace.c` (`mnt_id_unique`), `fs/fuse/dir.c`
//!   (`fuse_update_get_attr`: no request when nothing but the mount id is asked),
//!   `fs/fuse/dev.c` (`fuse_dev_poll`: `POLLERR` once the connection is aborted)
use nix::libc;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

/// `statmount(2)`'s system call number: the same on every architecture that uses the
/// unified table (added in Linux 6.8).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64"
))]
const SYS_STATMOUNT: libc::c_long = 457;

/// `STATMOUNT_SB_BASIC`: ask for the superblock's device number and type.
const STATMOUNT_SB_BASIC: u64 = 0x1;

/// Size of `struct mnt_id_req` version 0 (`MNT_ID_REQ_SIZE_VER0`).
const MNT_ID_REQ_SIZE_VER0: u32 = 24;

/// The identity of one mount: its device number (the FUSE connection id, reused) and,
/// where the kernel has it, its unique mount id (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MountIdentity {
    /// The superblock's device number in the kernel's internal encoding
    /// (`major << 20 | minor`), which is the fusectl connection id of a FUSE mount.
    pub dev: u64,
    /// `STATX_MNT_ID_UNIQUE` (Linux 6.8+), `None` on older kernels.
    pub unique_id: Option<u64>,
}

/// What [`MountIdentity::check`] found at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The topmost mount at the path is this one.
    Top,
    /// This mount still exists, but the topmost mount at the path is another one
    /// (mounted over it, or this one was moved).
    Covered,
    /// This mount no longer exists (unmounted, by anyone); the path shows another
    /// mount or none.
    Gone,
    /// It cannot be told (no unique mount ids on this kernel and the connection has
    /// ended): do not touch the path.
    Unknown,
}

impl MountIdentity {
    /// The identity of the topmost mount at `path`, read without asking the filesystem
    /// anything (see the module docs).
    ///
    /// # Errors
    /// The errors of `open(2)` with `O_PATH` and of `statx(2)`.
    pub fn at(path: &Path) -> io::Result<MountIdentity> {
        let fd = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Self::of_fd(fd.as_fd())
    }

    /// The identity of the mount that `fd` (any descriptor, `O_PATH` too) is on.
    ///
    /// Two identities taken this way compare equal only for the same mount where the
    /// kernel has unique ids; before Linux 6.8 they compare device numbers, which is
    /// sound only while the caller's mount is pinned (by an open descriptor on it, or
    /// its live connection).
    ///
    /// # Errors
    /// The error of `statx(2)`.
    pub fn of_fd(fd: BorrowedFd<'_>) -> io::Result<MountIdentity> {
        let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
        let empty = c"";
        // SAFETY: `fd` is a valid descriptor for the duration of the call, `empty` is a
        // NUL-terminated string, and `stx` points at writable memory of the size of
        // `struct statx`, which the kernel fills (zeroed first, so every field is
        // initialised whether or not the kernel writes it).
        let rc = unsafe {
            libc::statx(
                fd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
                libc::STATX_MNT_ID_UNIQUE,
                stx.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zero-initialised above; `struct statx` is plain integers, valid for
        // any bit pattern.
        let stx = unsafe { stx.assume_init() };
        let dev = (u64::from(stx.stx_dev_major) << 20) | u64::from(stx.stx_dev_minor);
        let unique_id = (stx.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0).then_some(stx.stx_mnt_id);
        Ok(MountIdentity { dev, unique_id })
    }

    /// Is the topmost mount at `path` this one?
    ///
    /// `connection_alive` is whether this mount's FUSE connection still serves (see
    /// [`connection_alive`]); it decides only where unique ids are missing.
    pub fn check(&self, path: &Path, connection_alive: bool) -> Ownership {
        let here = Self::at(path).ok();
        match (self.unique_id, here.and_then(|h| h.unique_id)) {
            (Some(ours), Some(top)) if ours == top => return Ownership::Top,
            (Some(ours), _) => {
                return match mount_exists(ours) {
                    Some(true) => Ownership::Covered,
                    Some(false) => Ownership::Gone,
                    // No statmount: a live connection keeps its mount (the superblock
                    // ends the connection when it goes), so it exists somewhere.
                    None if connection_alive => Ownership::Covered,
                    None => Ownership::Unknown,
                };
            }
            (None, _) => {}
        }
        // No unique ids: the device number is ours for sure only while our
        // connection (and so our superblock) is alive.
        match here {
            Some(h) if h.dev == self.dev && connection_alive => Ownership::Top,
            _ if connection_alive => Ownership::Covered,
            _ => Ownership::Unknown,
        }
    }
}

/// Whether the mount with unique id `id` exists in this process's mount namespace:
/// `statmount(2)` answers `ENOENT` for one that is gone. `None` where the kernel has
/// no `statmount` (before 6.8) or it fails otherwise.
pub fn mount_exists(id: u64) -> Option<bool> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    ))]
    {
        // struct mnt_id_req { u32 size; u32 spare; u64 mnt_id; u64 param; }
        #[repr(C)]
        struct MntIdReq {
            size: u32,
            spare: u32,
            mnt_id: u64,
            param: u64,
        }
        let req = MntIdReq {
            size: MNT_ID_REQ_SIZE_VER0,
            spare: 0,
            mnt_id: id,
            param: STATMOUNT_SB_BASIC,
        };
        // Room for `struct statmount` (its fixed part is 512 bytes in 6.18) and
        // growth; the kernel writes at most `buf.len()` bytes.
        let mut buf = vec![0u64; 1024 / 8];
        let len = buf.len() * 8;
        // SAFETY: `req` is a valid `struct mnt_id_req` of the size it declares, `buf`
        // is writable memory of `len` bytes that lives across the call, and flags 0 is
        // the only defined value. The kernel copies at most `len` bytes out.
        let rc = unsafe {
            libc::syscall(
                SYS_STATMOUNT,
                &req as *const MntIdReq,
                buf.as_mut_ptr(),
                len,
                0u32,
            )
        };
        if rc == 0 {
            return Some(true);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOENT) => Some(false),
            _ => None,
        }
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )))]
    {
        let _ = id;
        None
    }
}

/// Whether the FUSE connection of `device` (a `/dev/fuse` descriptor) is still
/// alive: `poll(2)` reports `POLLERR` once it was aborted or its superblock went
/// (an unmount ends the connection when the last file on the mount closes).
pub fn connection_alive(device: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(device, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => !fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_an_identity_and_exists() {
        let id = MountIdentity::at(Path::new("/")).unwrap();
        if let Some(u) = id.unique_id {
            assert_ne!(mount_exists(u), Some(false));
            assert_eq!(id.check(Path::new("/"), true), Ownership::Top);
        }
    }

    #[test]
    fn a_made_up_mount_id_is_gone() {
        if MountIdentity::at(Path::new("/"))
            .unwrap()
            .unique_id
            .is_some()
        {
            // Unique ids count up from boot; this one is never reached.
            assert_eq!(mount_exists(u64::MAX - 1), Some(false));
        }
    }
}
