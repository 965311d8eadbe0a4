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
use super::options::Atime;
use nix::libc;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

/// `statmount(2)`'s system call number: the same on every architecture that uses the
/// unified table (added in Linux 6.8); `None` where it is not known.
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
const SYS_STATMOUNT: Option<libc::c_long> = Some(457);
/// `statmount(2)`'s system call number: not known for this architecture.
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
const SYS_STATMOUNT: Option<libc::c_long> = None;

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
    match statmount(id, STATMOUNT_SB_BASIC) {
        Ok(_) => Some(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Some(false),
        Err(_) => None,
    }
}

/// `STATMOUNT_MNT_BASIC`: ask for the mount's ids, attributes and propagation.
const STATMOUNT_MNT_BASIC: u64 = 0x2;
/// Offsets in `struct statmount` (`include/uapi/linux/mount.h`, fixed since 6.8).
const STATMOUNT_MASK_AT: usize = 8;
const STATMOUNT_MNT_ATTR_AT: usize = 64;
/// `MOUNT_ATTR_*` bits of `mnt_attr`.
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// `statmount(2)` of mount `id` asking for `param`: the `struct statmount` bytes.
///
/// # Errors
/// `ENOENT` if there is no such mount; `Unsupported` where the system call number is
/// not known for this architecture; the system call's other errors (`ENOSYS` before
/// Linux 6.8).
fn statmount(id: u64, param: u64) -> io::Result<Vec<u8>> {
    let Some(nr) = SYS_STATMOUNT else {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    };
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
        param,
    };
    // Room for `struct statmount` (its fixed part is 512 bytes in 6.18) and
    // growth; the basic parameters asked for here carry no strings.
    let mut buf = vec![0u8; 1024];
    let len = buf.len();
    // SAFETY: `req` is a valid `struct mnt_id_req` of the size it declares, `buf`
    // is writable memory of `len` bytes that lives across the call, and flags 0 is
    // the only defined value. The kernel copies at most `len` bytes out.
    let rc = unsafe { libc::syscall(nr, &req as *const MntIdReq, buf.as_mut_ptr(), len, 0u32) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

/// A mount's access-time behaviour, from its per-mount flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccessTimes {
    /// `relatime`, `noatime` or `strictatime`.
    pub mode: Atime,
    /// `nodiratime`: directories' atime is never updated on access.
    pub nodiratime: bool,
}

impl AccessTimes {
    /// From per-mount options as `/proc/self/mountinfo` shows them (`rw,noatime`):
    /// `noatime` and `relatime` are named, `strictatime` is neither.
    pub fn from_options(options: &str) -> AccessTimes {
        let has = |o: &str| options.split(',').any(|x| x == o);
        let mode = if has("noatime") {
            Atime::NoAtime
        } else if has("relatime") {
            Atime::Relatime
        } else {
            Atime::StrictAtime
        };
        AccessTimes {
            mode,
            nodiratime: has("nodiratime"),
        }
    }

    /// Should an access at `now` update an atime, given the file's times and whether
    /// it is a directory? The kernel's rule (`atime_needs_update`,
    /// `relatime_need_update`) for this mode.
    pub fn update_due(
        &self,
        is_dir: bool,
        atime: std::time::SystemTime,
        mtime: std::time::SystemTime,
        ctime: std::time::SystemTime,
        now: std::time::SystemTime,
    ) -> bool {
        const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);
        match self.mode {
            Atime::NoAtime => false,
            _ if is_dir && self.nodiratime => false,
            Atime::StrictAtime => true,
            Atime::Relatime => {
                atime <= mtime
                    || atime <= ctime
                    || now.duration_since(atime).is_ok_and(|d| d >= DAY)
            }
        }
    }
}

impl MountIdentity {
    /// The access-time mode of this mount, as it is now (a remount can change it):
    /// from `statmount(2)` by unique id, or else from the mount table's entry at
    /// `mountpoint` if that is this mount's device.
    ///
    /// # Errors
    /// `NotFound` if the mount is gone or not at `mountpoint` (without unique ids);
    /// the error of reading the mount table.
    pub fn access_times(&self, mountpoint: &Path) -> io::Result<AccessTimes> {
        if let Some(id) = self.unique_id {
            match statmount(id, STATMOUNT_MNT_BASIC) {
                Ok(buf) => {
                    let asked = u64_at(&buf, STATMOUNT_MASK_AT).unwrap_or(0);
                    if asked & STATMOUNT_MNT_BASIC != 0 {
                        let attr = u64_at(&buf, STATMOUNT_MNT_ATTR_AT).unwrap_or(0);
                        let mode = if attr & MOUNT_ATTR_NOATIME != 0 {
                            Atime::NoAtime
                        } else if attr & MOUNT_ATTR_STRICTATIME != 0 {
                            Atime::StrictAtime
                        } else {
                            Atime::Relatime
                        };
                        return Ok(AccessTimes {
                            mode,
                            nodiratime: attr & MOUNT_ATTR_NODIRATIME != 0,
                        });
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "the mount is gone"))
                }
                Err(_) => {}
            }
        }
        match super::mountinfo::find(mountpoint)? {
            Some(e) if e.kernel_dev() == self.dev => {
                Ok(AccessTimes::from_options(&e.mount_options))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the mount is not at {}", mountpoint.display()),
            )),
        }
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
    fn access_times_of_the_root_and_from_options() {
        let root = MountIdentity::at(Path::new("/")).unwrap();
        let here = root.access_times(Path::new("/")).unwrap();
        let table = crate::dev::mountinfo::find(Path::new("/"))
            .unwrap()
            .unwrap();
        assert_eq!(here, AccessTimes::from_options(&table.mount_options));
        assert_eq!(AccessTimes::from_options("rw,noatime").mode, Atime::NoAtime);
        assert_eq!(
            AccessTimes::from_options("rw,nosuid").mode,
            Atime::StrictAtime
        );
        let r = AccessTimes::from_options("rw,relatime,nodiratime");
        assert_eq!((r.mode, r.nodiratime), (Atime::Relatime, true));
        let t = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let day = 24 * 3600;
        assert!(r.update_due(false, t(10), t(20), t(5), t(30)));
        assert!(!r.update_due(false, t(30), t(20), t(5), t(40)));
        assert!(r.update_due(false, t(30), t(20), t(5), t(30 + day)));
        assert!(!r.update_due(true, t(10), t(20), t(5), t(30)));
        let s = AccessTimes::from_options("rw");
        assert!(s.update_due(true, t(30), t(20), t(5), t(31)));
        assert!(!AccessTimes::from_options("noatime").update_due(false, t(1), t(2), t(2), t(3)));
    }

    #[test]
    fn ownership_decisions() {
        let root = MountIdentity::at(Path::new("/")).unwrap();
        let gone = MountIdentity {
            dev: root.dev,
            unique_id: Some(u64::MAX - 1),
        };
        let no_unique = MountIdentity {
            dev: root.dev,
            unique_id: None,
        };
        let other_dev = MountIdentity {
            dev: root.dev ^ 1,
            unique_id: None,
        };
        let p = Path::new("/");
        if root.unique_id.is_some() {
            // Same device number, another (vanished) mount: gone, never "top".
            assert_eq!(gone.check(p, true), Ownership::Gone);
            assert_eq!(gone.check(p, false), Ownership::Gone);
        }
        // Without unique ids the device number is trusted only while alive.
        assert_eq!(no_unique.check(p, true), Ownership::Top);
        assert_eq!(no_unique.check(p, false), Ownership::Unknown);
        assert_eq!(other_dev.check(p, true), Ownership::Covered);
        assert_eq!(other_dev.check(p, false), Ownership::Unknown);
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
