//! The file descriptor store: keeping `/dev/fuse` (and the journal, and the
//! filesystem's own descriptors) open while no daemon runs, so that a daemon that
//! crashed can be restarted on the same connection.
//!
//! This speaks systemd's protocol natively (no libsystemd), so the same daemon works
//! under systemd and under `fuse-live-keeper`, which implements the same protocol
//! without systemd:
//!
//! - While serving, the daemon sends its descriptors to the manager named by
//!   `NOTIFY_SOCKET`, each with `FDSTORE=1` and `FDNAME=`, then `READY=1`
//!   ([`FdStore::store`], [`FdStore::store_mount`], [`FdStore::ready`]). The
//!   manager keeps a duplicate of each.
//! - When the daemon dies abnormally, the manager starts it again and passes the
//!   stored descriptors back: `LISTEN_FDS=N` (numbers 3 to 3+N-1),
//!   `LISTEN_FDNAMES=a:b:...`, `LISTEN_PID` the new process's pid
//!   ([`FdStore::from_env`], [`FdStore::take_mount`]). A daemon that finds the
//!   `/dev/fuse` descriptor recovers instead of mounting.
//! - A clean stop says `STOPPING=1` ([`FdStore::stopping`]) and unmounts; the
//!   manager then closes what it kept.
//!
//! The pieces, a file per idea: [`message`] (the text of a message and the rules
//! for names), [`notify`] (the datagram socket, both ends, with the sender's
//! credentials), [`listen`] (descriptors passed at start), [`spawn`] (starting a
//! program with descriptors passed, for a keeper).
//!
//! # Names
//! The library stores the `/dev/fuse` descriptor as [`FUSE_DEVICE_FD`], the
//! `auto_unmount` socket as [`AUTO_UNMOUNT_FD`], the journal as [`JOURNAL_FD`],
//! and the filesystem's own descriptors (the [`FdSlot`]s of its saved state, in
//! slot order) as `fs-fd-0`, `fs-fd-1` ... ([`fs_fd_name`]).
//!
//! [`FdSlot`]: https://docs.rs/fuse-snapshot/latest/fuse_snapshot/fds/struct.FdSlot.html
//!
//! # References
//! - `sd_notify(3)`, `sd_pid_notify_with_fds(3)`, `sd_listen_fds(3)`,
//!   `systemd.service(5)` (`FileDescriptorStoreMax=`, `FileDescriptorStorePreserve=`)
//! - systemd's `docs/FILE_DESCRIPTOR_STORE.md`
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

pub mod listen;
pub mod message;
pub mod notify;
pub mod spawn;

pub use listen::{ListenFds, LISTEN_FDS_START};
pub use message::{check_fd_name, parse_message, MessageError, NotifyMessage};
pub use notify::{NotifyListener, NotifySocket, Received};
pub use spawn::spawn_with_fds;

use super::{Mount, MountError, MountMethod, MountParts};

/// The name of the stored `/dev/fuse` descriptor.
pub const FUSE_DEVICE_FD: &str = "fuse-device";
/// The name of the stored `auto_unmount` socket of a `fusermount3` mount.
pub const AUTO_UNMOUNT_FD: &str = "fuse-auto-unmount";
/// The name of the stored journal.
pub const JOURNAL_FD: &str = "fuse-journal";
/// Name of the request slots ([`RequestSlots`](crate::dev::RequestSlots), a memfd):
/// the requests read and not yet answered, for kernels without `NOTIFY_RESEND`.
pub const REQUEST_SLOTS_FD: &str = "fuse-request-slots";
/// Name of the fuse-over-io_uring entries' memory ([`RingArea`](crate::dev::RingArea),
/// a memfd): the requests held in ring entries, answered by a successor.
pub const RING_AREA_FD: &str = "fuse-ring-area";
/// The prefix of the names of the filesystem's own descriptors.
pub const FS_FD_PREFIX: &str = "fs-fd-";
/// The variable `fuse-live-keeper` sets for a process it starts to replace the
/// running daemon by a live handoff (on `SIGHUP`): that daemon's pid. See
/// [`FdStore::upgrade_from`].
pub const UPGRADE_FROM_ENV: &str = "FUSE_LIVE_UPGRADE_FROM";

/// The name of the filesystem's descriptor in slot `slot` (`fs-fd-SLOT`).
pub fn fs_fd_name(slot: u32) -> String {
    format!("{FS_FD_PREFIX}{slot}")
}

/// What went wrong with the fd store.
#[derive(Debug)]
#[non_exhaustive]
pub enum FdStoreError {
    /// An environment variable of the protocol is malformed.
    Env {
        /// The variable.
        var: &'static str,
        /// Its value (cut to 120 characters).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `LISTEN_FDS` announces a descriptor that is not open.
    FdNotOpen {
        /// The descriptor number.
        fd: RawFd,
        /// How many `LISTEN_FDS` announced.
        count: usize,
    },
    /// A descriptor name breaks the protocol's rules ([`check_fd_name`]).
    InvalidName {
        /// The name (cut to 64 characters).
        name: String,
        /// Which rule.
        reason: &'static str,
    },
    /// The inherited `/dev/fuse` descriptor could not be made into a mount.
    Mount(MountError),
    /// A system call failed.
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for FdStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdStoreError::Env { var, value, reason } => write!(
                f,
                "{var}={value:?}: {reason}; fix or unset the variable (it is set by the \
                 service manager or fuse-live-keeper)"
            ),
            FdStoreError::FdNotOpen { fd, count } => write!(
                f,
                "LISTEN_FDS passes {count} descriptors from 3, but descriptor {fd} is not \
                 open: the program that started this one did not pass them"
            ),
            FdStoreError::InvalidName { name, reason } => {
                write!(f, "descriptor name {name:?} is not valid: {reason}")
            }
            FdStoreError::Mount(e) => write!(f, "inherited /dev/fuse descriptor: {e}"),
            FdStoreError::Io { what, source } => write!(f, "cannot {what}: {source}"),
        }
    }
}

impl std::error::Error for FdStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FdStoreError::Mount(e) => Some(e),
            FdStoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<FdStoreError> for io::Error {
    fn from(e: FdStoreError) -> io::Error {
        let kind = match &e {
            FdStoreError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// A daemon's side of the fd store: the descriptors passed to it at start, and the
/// manager to send its descriptors to.
///
/// ```no_run
/// use fuse_session::dev::{fdstore::FdStore, mount, MountOptions};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut store = FdStore::from_env()?; // first thing in main, before threads
/// # let mountpoint = std::path::Path::new("/mnt");
/// if let Some(mount) = store.take_mount(mountpoint)? {
///     // recover: restore the session, serve `mount` (no INIT comes again)
/// } else {
///     // mount afresh; once serving:
///     let mount = mount(mountpoint, &MountOptions::new())?;
///     store.store_mount(&mount)?;
/// }
/// store.ready()?;
/// # Ok(()) }
/// ```
///
/// Without a manager (`NOTIFY_SOCKET` unset) the sending methods do nothing and
/// return `Ok(false)`.
#[derive(Debug, Default)]
pub struct FdStore {
    notify: Option<NotifySocket>,
    inherited: ListenFds,
    upgrade_from: Option<u32>,
}

impl FdStore {
    /// Reads the protocol's environment once: claims the passed descriptors
    /// ([`ListenFds::from_env`]) and remembers `NOTIFY_SOCKET`. Removes
    /// `NOTIFY_SOCKET` and the `LISTEN_*` variables from the environment, so that
    /// child processes (helpers the filesystem starts) neither see descriptors that
    /// are not theirs nor talk to the manager in the daemon's name. Call it early in
    /// `main`, before threads start.
    ///
    /// # Errors
    /// [`FdStoreError::Env`] for a malformed variable, [`FdStoreError::FdNotOpen`].
    pub fn from_env() -> Result<FdStore, FdStoreError> {
        let notify = NotifySocket::from_env();
        std::env::remove_var("NOTIFY_SOCKET");
        let upgrade = std::env::var_os(UPGRADE_FROM_ENV);
        std::env::remove_var(UPGRADE_FROM_ENV);
        let inherited = ListenFds::from_env()?;
        let upgrade_from = upgrade.map(|v| parse_pid(&v)).transpose()?;
        Ok(FdStore {
            notify: notify?,
            inherited,
            upgrade_from,
        })
    }

    /// A store over given parts (for tests, or a program that found them itself).
    pub fn new(notify: Option<NotifySocket>, inherited: ListenFds) -> FdStore {
        FdStore {
            notify,
            inherited,
            upgrade_from: None,
        }
    }

    /// `Some(pid)` if this process was started to take the mount over from the
    /// running daemon `pid` by a live handoff (`FUSE_LIVE_UPGRADE_FROM`, set by
    /// `fuse-live-keeper` on `SIGHUP`), instead of recovering it: connect to that
    /// daemon's upgrade socket. The passed descriptors are the same as for a
    /// restart (the journal, the mount's device).
    pub fn upgrade_from(&self) -> Option<u32> {
        self.upgrade_from
    }

    /// Tells the manager that `pid` is the daemon from now on (`MAINPID=`): a
    /// daemon handing its mount over to a successor says so before it commits, and
    /// names itself again if the handoff rolls back after that.
    ///
    /// # Errors
    /// As [`FdStore::notify`].
    pub fn main_pid(&self, pid: u32) -> Result<bool, FdStoreError> {
        self.notify(&format!("MAINPID={pid}\n"), &[])
    }

    /// Whether a manager listens (`NOTIFY_SOCKET` was set).
    pub fn is_supervised(&self) -> bool {
        self.notify.is_some()
    }

    /// The manager's socket, if any.
    pub fn notify_socket(&self) -> Option<&NotifySocket> {
        self.notify.as_ref()
    }

    /// Whether a `/dev/fuse` descriptor was passed: the daemon should recover the
    /// mount instead of mounting.
    pub fn is_recovering(&self) -> bool {
        self.inherited.contains(FUSE_DEVICE_FD)
    }

    /// The descriptors passed at start.
    pub fn inherited(&self) -> &ListenFds {
        &self.inherited
    }

    /// The descriptors passed at start, to take from.
    pub fn inherited_mut(&mut self) -> &mut ListenFds {
        &mut self.inherited
    }

    /// Takes the first passed descriptor named `name`.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.inherited.take(name)
    }

    /// Sends a raw message with descriptors. `Ok(false)` without a manager.
    ///
    /// # Errors
    /// [`FdStoreError::Io`] if sending failed (the manager is gone, or the message
    /// is too long).
    pub fn notify(&self, state: &str, fds: &[BorrowedFd<'_>]) -> Result<bool, FdStoreError> {
        let Some(sock) = &self.notify else {
            return Ok(false);
        };
        sock.send(state, fds).map_err(|source| FdStoreError::Io {
            what: "send a message to the service manager (NOTIFY_SOCKET)",
            source,
        })?;
        Ok(true)
    }

    /// Stores a duplicate of `fd` under `name`, replacing what was stored under
    /// that name before: sends `FDSTOREREMOVE=1` then `FDSTORE=1` (systemd keeps
    /// several descriptors of one name otherwise). The descriptor stays open here.
    ///
    /// # Errors
    /// [`FdStoreError::InvalidName`], or as [`FdStore::notify`].
    pub fn store(&self, name: &str, fd: BorrowedFd<'_>) -> Result<bool, FdStoreError> {
        let store = message::store_message(name)?;
        if !self.remove(name)? {
            return Ok(false);
        }
        self.notify(&store, &[fd])
    }

    /// Closes and forgets the stored descriptors named `name` (`FDSTOREREMOVE=1`).
    ///
    /// # Errors
    /// [`FdStoreError::InvalidName`], or as [`FdStore::notify`].
    pub fn remove(&self, name: &str) -> Result<bool, FdStoreError> {
        let msg = message::remove_message(name)?;
        self.notify(&msg, &[])
    }

    /// Stores the mount's `/dev/fuse` descriptor ([`FUSE_DEVICE_FD`]) and, for an
    /// `auto_unmount` mount, the helper's socket ([`AUTO_UNMOUNT_FD`]).
    ///
    /// # Errors
    /// As [`FdStore::store`].
    pub fn store_mount(&self, mount: &Mount) -> Result<bool, FdStoreError> {
        if !self.store(FUSE_DEVICE_FD, mount.device())? {
            return Ok(false);
        }
        if let Some(sock) = mount.auto_unmount_socket() {
            self.store(AUTO_UNMOUNT_FD, sock)?;
        }
        Ok(true)
    }

    /// Stores the filesystem's own descriptors (what
    /// `fuse_snapshot::FdSaver::into_fds` returns, in slot order) as `fs-fd-0` ...,
    /// and removes `fs-fd-N` for the next slot so that a stale descriptor of an
    /// earlier, longer list does not come back.
    ///
    /// # Errors
    /// As [`FdStore::store`].
    pub fn store_fs_fds<F: AsFd>(&self, fds: &[F]) -> Result<bool, FdStoreError> {
        for (i, fd) in fds.iter().enumerate() {
            let slot = u32::try_from(i).map_err(|_| FdStoreError::InvalidName {
                name: FS_FD_PREFIX.to_owned(),
                reason: "too many descriptors",
            })?;
            if !self.store(&fs_fd_name(slot), fd.as_fd())? {
                return Ok(false);
            }
        }
        let next = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        self.remove(&fs_fd_name(next))
    }

    /// Takes the filesystem's descriptors passed at start, `fs-fd-0` up to the
    /// first missing slot, in slot order: what `fuse_snapshot::FdRestorer::new`
    /// takes.
    pub fn take_fs_fds(&mut self) -> Vec<OwnedFd> {
        let mut out = Vec::new();
        for slot in 0u32.. {
            match self.inherited.take(&fs_fd_name(slot)) {
                Some(fd) => out.push(fd),
                None => break,
            }
        }
        out
    }

    /// Rebuilds the mount at `mountpoint` from the passed `/dev/fuse` descriptor, or
    /// `None` if none was passed (mount afresh then). Takes the `auto_unmount`
    /// socket too; the mount method is then `fusermount3` with `auto_unmount`, else
    /// `mount(2)` when running as root, else `fusermount3`.
    ///
    /// The mountpoint is not resolved through the mount itself (a `stat` of it
    /// would wait for this very process to serve): its parent is canonicalised and
    /// its last component joined.
    ///
    /// # Errors
    /// [`FdStoreError::Mount`] if the descriptor is not `/dev/fuse`;
    /// [`FdStoreError::Io`] if the mountpoint's parent cannot be resolved.
    pub fn take_mount(&mut self, mountpoint: &Path) -> Result<Option<Mount>, FdStoreError> {
        let Some(device) = self.inherited.take(FUSE_DEVICE_FD) else {
            return Ok(None);
        };
        let auto_unmount_socket = self.inherited.take(AUTO_UNMOUNT_FD);
        let method = if auto_unmount_socket.is_some() {
            MountMethod::Fusermount { auto_unmount: true }
        } else if nix::unistd::geteuid().is_root() {
            MountMethod::Syscall
        } else {
            MountMethod::Fusermount {
                auto_unmount: false,
            }
        };
        let mountpoint =
            resolve_without_entering(mountpoint).map_err(|source| FdStoreError::Io {
                what: "resolve the mountpoint's parent directory",
                source,
            })?;
        Mount::from_parts(MountParts {
            device,
            mountpoint,
            method,
            connection_id: None,
            auto_unmount_socket,
        })
        .map(Some)
        .map_err(FdStoreError::Mount)
    }

    /// Says the daemon serves (`READY=1`, and `MAINPID=` this process).
    ///
    /// # Errors
    /// As [`FdStore::notify`].
    pub fn ready(&self) -> Result<bool, FdStoreError> {
        self.notify(&format!("READY=1\nMAINPID={}\n", std::process::id()), &[])
    }

    /// Says the daemon is stopping on purpose (`STOPPING=1`).
    ///
    /// # Errors
    /// As [`FdStore::notify`].
    pub fn stopping(&self) -> Result<bool, FdStoreError> {
        self.notify("STOPPING=1\n", &[])
    }
}

/// A pid in an environment variable: a decimal number above 0.
fn parse_pid(v: &std::ffi::OsStr) -> Result<u32, FdStoreError> {
    v.to_str()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&p| p > 0 && p <= i32::MAX as u32)
        .ok_or_else(|| FdStoreError::Env {
            var: UPGRADE_FROM_ENV,
            value: v.to_string_lossy().chars().take(120).collect(),
            reason: "not a pid",
        })
}

/// `path` made absolute and free of symlinks without looking up its last
/// component (which may be a FUSE mount nobody serves yet).
fn resolve_without_entering(path: &Path) -> io::Result<std::path::PathBuf> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)?.join(name)),
        _ => Ok(abs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_from_takes_a_pid_only() {
        let p = |s: &str| parse_pid(std::ffi::OsStr::new(s)).ok();
        assert_eq!(p("1234"), Some(1234));
        for bad in ["", "0", "-1", "x", "12 ", "4294967295"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn without_a_manager_nothing_is_sent() {
        let mut s = FdStore::new(None, ListenFds::empty());
        assert!(!s.is_supervised() && !s.is_recovering());
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(!s.store("x", r.as_fd()).unwrap());
        assert!(!s.ready().unwrap());
        assert!(!s.stopping().unwrap());
        assert!(s.take_mount(Path::new("/nonexistent")).unwrap().is_none());
        assert!(s.store("bad:name", r.as_fd()).is_err());
    }

    #[test]
    fn store_sends_remove_then_store_and_fs_fds_keep_slot_order() {
        let l = NotifyListener::bind().unwrap();
        let s = FdStore::new(
            Some(NotifySocket::new(std::ffi::OsStr::new(l.name())).unwrap()),
            ListenFds::empty(),
        );
        let (r, w) = nix::unistd::pipe().unwrap();
        assert!(s.store_fs_fds(&[&r, &w]).unwrap());
        let mut got = Vec::new();
        while let Some(m) = l.recv().unwrap() {
            let p = parse_message(&m.bytes).unwrap();
            got.push((p.fdstore, p.fdstore_remove, p.fd_name.unwrap(), m.fds.len()));
        }
        let want = [
            (false, true, "fs-fd-0", 0),
            (true, false, "fs-fd-0", 1),
            (false, true, "fs-fd-1", 0),
            (true, false, "fs-fd-1", 1),
            (false, true, "fs-fd-2", 0),
        ];
        let got: Vec<_> = got
            .iter()
            .map(|(a, b, n, k)| (*a, *b, n.as_str(), *k))
            .collect();
        assert_eq!(got, want);
        assert!(s.ready().unwrap());
        let m = parse_message(&l.recv().unwrap().unwrap().bytes).unwrap();
        assert!(m.ready);
        assert_eq!(m.main_pid, Some(std::process::id()));
    }

    #[test]
    fn fs_fds_come_back_in_slot_order_up_to_a_gap() {
        let (a, b) = nix::unistd::pipe().unwrap();
        let c = a.try_clone().unwrap();
        let mut s = FdStore::new(
            None,
            ListenFds::from_fds(vec![
                ("fs-fd-1".to_owned(), b),
                ("fs-fd-0".to_owned(), a),
                ("fs-fd-3".to_owned(), c),
            ]),
        );
        assert_eq!(s.take_fs_fds().len(), 2);
        assert_eq!(s.inherited().names().collect::<Vec<_>>(), ["fs-fd-3"]);
    }

    #[test]
    fn a_passed_fd_that_is_not_fuse_is_refused() {
        let (a, _b) = nix::unistd::pipe().unwrap();
        let mut s = FdStore::new(
            None,
            ListenFds::from_fds(vec![(FUSE_DEVICE_FD.to_owned(), a)]),
        );
        assert!(s.is_recovering());
        let e = s.take_mount(Path::new("/tmp/x")).unwrap_err();
        assert!(
            matches!(e, FdStoreError::Mount(MountError::NotFuseDevice)),
            "{e}"
        );
    }
}
