//! Mounting a FUSE filesystem, and the [`Mount`] that represents a live one.
use super::channel::Channel;
use super::error::{libc_errno, MountError};
use super::fusermount;
use super::mountid::{self, MountIdentity, Ownership};
use super::mountinfo;
use super::options::MountOptions;
use nix::errno::Errno;
use nix::mount::MntFlags;
use nix::sys::stat::{fstat, major, minor, SFlag};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Child;

/// Device number of `/dev/fuse` (misc major 10, minor 229).
const FUSE_DEV_MAJOR: u64 = 10;
const FUSE_DEV_MINOR: u64 = 229;

/// How a mount was made, which decides how it is unmounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MountMethod {
    /// `mount(2)` by a privileged process; unmounted with `umount2(2)`.
    Syscall,
    /// By the setuid helper `fusermount3`; unmounted with `fusermount3 -u`.
    Fusermount {
        /// `auto_unmount` was requested: the helper keeps running and unmounts when the
        /// last copy of the socket in [`MountParts::auto_unmount_socket`] closes.
        auto_unmount: bool,
    },
}

/// A live FUSE mount: the `/dev/fuse` descriptor of its connection, where it is
/// mounted, and how.
///
/// **Dropping a `Mount` does not unmount.** The connection lives while any process
/// holds a descriptor of it, and this project hands live mounts to new processes
/// ([`Mount::into_parts`], [`Mount::from_parts`]). Unmount explicitly with
/// [`Mount::unmount`]. With `auto_unmount`, dropping leaves the helper's socket open
/// until the process exits, so the helper unmounts then, not at the drop.
///
/// # Kernel behaviour
/// Until the daemon answers INIT, every access to the mount blocks (even `stat` of the
/// mountpoint). When the last descriptor closes, the connection is aborted: pending and
/// future accesses fail with `ENOTCONN` until the mount is unmounted.
///
/// # References
/// - `mount(2)`, `umount(2)`, `fuse(4)`, Linux `fs/fuse/inode.c`
#[derive(Debug)]
pub struct Mount {
    device: OwnedFd,
    mountpoint: PathBuf,
    method: MountMethod,
    connection_id: Option<u64>,
    identity: Option<MountIdentity>,
    keepalive: Keepalive,
    helper: Option<Child>,
}

/// The `auto_unmount` socket of a [`Mount`]. Dropping it leaks the descriptor on
/// purpose: closing it would make `fusermount3` unmount now, while a dropped `Mount`
/// must stay mounted; it closes when the process exits.
#[derive(Debug)]
struct Keepalive(Option<OwnedFd>);

impl Drop for Keepalive {
    fn drop(&mut self) {
        if let Some(sock) = self.0.take() {
            let _ = sock.into_raw_fd();
        }
    }
}

/// A [`Mount`] taken apart, for handing it to another process (send `device` and
/// `auto_unmount_socket` over a unix socket with `SCM_RIGHTS`, the rest as data), and
/// for putting it back together with [`Mount::from_parts`].
#[derive(Debug)]
pub struct MountParts {
    /// The `/dev/fuse` descriptor (its open file description carries the processing
    /// queue: pass this one or a `dup` of it, not a `FUSE_DEV_IOC_CLONE`).
    pub device: OwnedFd,
    /// The canonical mountpoint.
    pub mountpoint: PathBuf,
    /// How it was mounted.
    pub method: MountMethod,
    /// The fusectl connection id, if known.
    pub connection_id: Option<u64>,
    /// With `auto_unmount`: the socket whose closing makes `fusermount3` unmount. Keep
    /// it open in whichever process serves the mount.
    pub auto_unmount_socket: Option<OwnedFd>,
}

/// Mount a FUSE filesystem at `mountpoint`.
///
/// If the effective uid is 0 and `auto_unmount` is not requested, opens `/dev/fuse` and
/// calls `mount(2)` with source = fsname, type `fuse` or `fuse.SUBTYPE`, flags
/// [`MountOptions::mount_flags`] (`MS_NOSUID|MS_NODEV` by default), and data
/// `fd=N,rootmode=..,user_id=..,group_id=..` plus the options. If that is refused with
/// `EPERM` (root without `CAP_SYS_ADMIN`, as in some containers) and `fusermount3` is
/// available, falls back to it. Otherwise runs `fusermount3` (see
/// [`find_fusermount`](super::find_fusermount)) and receives the descriptor from it.
///
/// The mountpoint must be an existing directory. It is canonicalised first; the
/// mount table (`/proc/self/mountinfo`) gives the fusectl connection id afterwards
/// (not `stat`, which would wait for INIT).
///
/// The returned mount has not been initialised: the caller must read and answer the
/// kernel's INIT request next.
///
/// # Errors
/// [`MountError`]: `DeviceMissing`, `PermissionDenied`, `MountpointMissing`,
/// `NotADirectory`, `StaleMount`, `Busy`, `FusermountNotFound`, `FusermountFailed`,
/// `InvalidOption`, `Io`.
pub fn mount(mountpoint: impl AsRef<Path>, options: &MountOptions) -> Result<Mount, MountError> {
    let given = mountpoint.as_ref();
    let canonical = std::fs::canonicalize(given)
        .map_err(|e| MountError::from_mount_errno("resolve the mountpoint", e, given.to_owned()))?;
    let meta = std::fs::metadata(&canonical)
        .map_err(|e| MountError::from_mount_errno("stat the mountpoint", e, canonical.clone()))?;
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(canonical));
    }
    // Validate once, before any side effect.
    let fusermount_opts = options.fusermount_options()?;

    let privileged = nix::unistd::geteuid().is_root() && !options.is_auto_unmount();
    if privileged {
        match mount_syscall(&canonical, meta.mode(), options) {
            Err(MountError::PermissionDenied { .. }) if fusermount::find_fusermount().is_some() => {
                log::info!("mount(2) refused with EPERM; falling back to fusermount3");
            }
            other => return other,
        }
    }
    let helped = fusermount::mount(&canonical, &fusermount_opts, options.is_auto_unmount())?;
    let (keepalive, helper) = match helped.keepalive {
        Some((sock, child)) => (Some(sock), Some(child)),
        None => (None, None),
    };
    let connection_id = lookup_connection(&canonical);
    let identity = identify(&canonical, connection_id);
    Ok(Mount {
        device: helped.device,
        mountpoint: canonical,
        method: MountMethod::Fusermount {
            auto_unmount: options.is_auto_unmount(),
        },
        connection_id,
        identity,
        keepalive: Keepalive(keepalive),
        helper,
    })
}

/// Open `/dev/fuse` for reading and writing (close-on-exec).
pub(crate) fn open_device() -> Result<OwnedFd, MountError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(super::FUSE_DEVICE)
        .map(OwnedFd::from)
        .map_err(|e| match e.raw_os_error() {
            Some(libc_errno::ENOENT) | Some(libc_errno::ENODEV) | Some(libc_errno::ENXIO) => {
                MountError::DeviceMissing(e)
            }
            Some(libc_errno::EACCES) | Some(libc_errno::EPERM) => MountError::PermissionDenied {
                what: "open /dev/fuse",
                source: e,
            },
            _ => MountError::Io {
                what: "open /dev/fuse",
                source: e,
            },
        })
}

/// The privileged path: `mount(2)` ourselves.
fn mount_syscall(canonical: &Path, mode: u32, options: &MountOptions) -> Result<Mount, MountError> {
    let device = open_device()?;
    let rootmode = mode & SFlag::S_IFMT.bits();
    let data = options.kernel_options(
        device.as_raw_fd(),
        rootmode,
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )?;
    let source = options.source()?;
    let fstype = options.fstype()?;
    nix::mount::mount(
        Some(source),
        canonical,
        Some(fstype.as_str()),
        options.mount_flags(),
        Some(data.as_str()),
    )
    .map_err(|e| match e {
        Errno::ENODEV => MountError::DeviceMissing(e.into()),
        Errno::EINVAL => MountError::OptionsRejected {
            options: data.clone(),
            flags: format!("{:?}", options.mount_flags()),
            suspects: options.likely_rejected(),
        },
        e => MountError::from_mount_errno("mount(2)", e.into(), canonical.to_owned()),
    })?;
    let connection_id = lookup_connection(canonical);
    let identity = identify(canonical, connection_id);
    Ok(Mount {
        device,
        mountpoint: canonical.to_owned(),
        method: MountMethod::Syscall,
        connection_id,
        identity,
        keepalive: Keepalive(None),
        helper: None,
    })
}

/// The fusectl id of the FUSE mount on top of `canonical`, from the mount table.
fn lookup_connection(canonical: &Path) -> Option<u64> {
    match mountinfo::find(canonical) {
        Ok(Some(e)) if e.fstype == "fuse" || e.fstype.starts_with("fuse.") => Some(e.kernel_dev()),
        _ => None,
    }
}

/// The identity of the mount just made (or adopted) at `canonical`, if the mount on
/// top there is the connection `connection_id` (the caller's connection is alive, so
/// its device number is not anyone else's yet).
fn identify(canonical: &Path, connection_id: Option<u64>) -> Option<MountIdentity> {
    let id = MountIdentity::at(canonical).ok()?;
    if Some(id.dev) != connection_id {
        log::warn!(
            "the mount on top of {} is not the connection just mounted: its identity is unknown",
            canonical.display()
        );
        return None;
    }
    Some(id)
}

impl Mount {
    /// The `/dev/fuse` descriptor.
    pub fn device(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }

    /// The canonical mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// How the mount was made.
    pub fn method(&self) -> MountMethod {
        self.method
    }

    /// With `auto_unmount`: the socket whose closing makes `fusermount3` unmount (see
    /// [`MountParts::auto_unmount_socket`]); a live handoff passes a `dup` of it on.
    pub fn auto_unmount_socket(&self) -> Option<BorrowedFd<'_>> {
        self.keepalive.0.as_ref().map(|s| s.as_fd())
    }

    /// The fusectl connection id (the directory under `/sys/fs/fuse/connections`), if
    /// it was found in the mount table after mounting.
    pub fn connection_id(&self) -> Option<u64> {
        self.connection_id
    }

    /// The mount's identity (device number and the kernel's never-reused unique mount
    /// id), recorded when it was mounted or adopted; `None` if it could not be told.
    pub fn identity(&self) -> Option<MountIdentity> {
        self.identity
    }

    /// Is the topmost mount at the mountpoint still this one? Decided by the unique
    /// mount id, not by the device number the kernel hands to the next mount at once
    /// (see [`mountid`](super::mountid)).
    pub fn ownership(&self) -> Ownership {
        let alive = mountid::connection_alive(self.device.as_fd());
        match self.identity {
            Some(id) => id.check(&self.mountpoint, alive),
            None => self.ownership_by_table(alive),
        }
    }

    /// Without an identity: the mount table's device numbers, which are ours only
    /// while the connection lives.
    fn ownership_by_table(&self, alive: bool) -> Ownership {
        let (Some(id), true) = (self.connection_id, alive) else {
            return Ownership::Unknown;
        };
        let Ok(table) = mountinfo::read() else {
            return Ownership::Unknown;
        };
        let ours = |e: &mountinfo::MountEntry| e.kernel_dev() == id && e.fstype.starts_with("fuse");
        if !table.iter().any(ours) {
            return Ownership::Gone;
        }
        let top = table
            .iter()
            .rev()
            .find(|e| e.mount_point == self.mountpoint);
        if top.is_some_and(ours) {
            Ownership::Top
        } else {
            Ownership::Covered
        }
    }

    /// A [`Channel`] on a `dup` of the device: same open file description, same
    /// processing queue. Sets `O_NONBLOCK` on that description (see [`Channel`]).
    ///
    /// # Errors
    /// The error of `dup(2)` or `fcntl(2)`.
    pub fn channel(&self) -> io::Result<Channel> {
        Channel::new(nix::unistd::dup(&self.device)?)
    }

    /// Unmount lazily and close the device.
    ///
    /// A `Syscall` mount is detached with `umount2(MNT_DETACH)`, a `Fusermount` one
    /// with `fusermount3 -u -z` (then, with `auto_unmount`, the helper's socket is
    /// closed and the helper reaped). Lazy: the mount disappears from the namespace at
    /// once, and the superblock goes (aborting the connection) when its last user does.
    /// If the connection is no longer mounted anywhere, this succeeds and touches
    /// nothing: the mount at the mountpoint is only detached if it is this one by
    /// [`Mount::ownership`] — never a newer mount that was made at the same place after
    /// this one was unmounted from outside (and reuses its device number). Where that
    /// cannot be told (no unique mount ids before Linux 6.8, and the connection has
    /// ended), nothing is unmounted.
    ///
    /// # Errors
    /// `Busy` if another filesystem was mounted on top of this one (it is not this
    /// library's to remove); `PermissionDenied`; `FusermountFailed`; `Io`.
    pub fn unmount(mut self) -> Result<(), MountError> {
        match self.ownership() {
            Ownership::Top => {}
            Ownership::Covered => return Err(MountError::Busy(self.mountpoint.clone())),
            Ownership::Gone => return Ok(()),
            Ownership::Unknown => {
                log::info!(
                    "not unmounting {}: the connection has ended and the mount there cannot \
                     be told apart from a newer one",
                    self.mountpoint.display()
                );
                return Ok(());
            }
        }
        match self.method {
            MountMethod::Syscall => nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH)
                .map_err(|e| {
                    MountError::from_mount_errno("umount2(2)", e.into(), self.mountpoint.clone())
                })?,
            MountMethod::Fusermount { .. } => fusermount::unmount(&self.mountpoint, true)?,
        }
        drop(self.keepalive.0.take());
        if let Some(mut child) = self.helper.take() {
            let _ = child.wait();
        }
        Ok(())
    }

    /// Take the mount apart without unmounting (see [`MountParts`]).
    pub fn into_parts(self) -> MountParts {
        let Mount {
            device,
            mountpoint,
            method,
            connection_id,
            identity: _,
            mut keepalive,
            helper: _,
        } = self;
        MountParts {
            device,
            mountpoint,
            method,
            connection_id,
            auto_unmount_socket: keepalive.0.take(),
        }
    }

    /// Rebuild a mount from its parts, typically in a process that inherited them.
    ///
    /// Checks that `device` is a `/dev/fuse` descriptor (character device 10:229). It
    /// cannot check that it belongs to the mount at `mountpoint`; a missing
    /// `connection_id` is looked up in the mount table. The mount's identity
    /// ([`Mount::identity`]) is re-derived from the mountpoint while the connection is
    /// alive, so it need not travel in the parts.
    ///
    /// # Errors
    /// [`MountError::NotFuseDevice`]; `Io` if `fstat(2)` fails.
    pub fn from_parts(parts: MountParts) -> Result<Mount, MountError> {
        let st = fstat(&parts.device).map_err(|e| MountError::Io {
            what: "fstat the inherited descriptor",
            source: e.into(),
        })?;
        let is_chr = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
        #[allow(clippy::unnecessary_cast)]
        let rdev = st.st_rdev as u64;
        if !is_chr || major(rdev) != FUSE_DEV_MAJOR || minor(rdev) != FUSE_DEV_MINOR {
            return Err(MountError::NotFuseDevice);
        }
        let connection_id = parts
            .connection_id
            .or_else(|| lookup_connection(&parts.mountpoint));
        // Re-derived here rather than carried over: the inherited connection is
        // alive, so a mount at the mountpoint with its device number is its mount.
        let identity = if mountid::connection_alive(parts.device.as_fd()) {
            identify(&parts.mountpoint, connection_id)
        } else {
            None
        };
        Ok(Mount {
            device: parts.device,
            mountpoint: parts.mountpoint,
            method: parts.method,
            connection_id,
            identity,
            keepalive: Keepalive(parts.auto_unmount_socket),
            helper: None,
        })
    }
}
