//! The fuse control filesystem (`fusectl`, at `/sys/fs/fuse/connections`), and a
//! [`Watchdog`] that tears down a hung mount.
//!
//! Each FUSE connection has a directory named by its id (the kernel's device number
//! of the mount's superblock) holding `abort`, `waiting`, `max_background` and
//! `congestion_threshold`. Writing anything to `abort` aborts the connection: every
//! waiting and future request fails with `ENOTCONN` (or `ECONNABORTED` for requests
//! already read by the daemon) and reads of the device fail with `ENODEV`.
//!
//! # References
//! - Linux `fs/fuse/control.c`, Documentation/filesystems/fuse.rst ("Control
//!   filesystem"), `fs/fuse/dev.c` (`fuse_abort_conn`)
use super::mountid::{MountIdentity, Ownership};
use super::mountinfo;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where the control filesystem is mounted.
pub const CONNECTIONS_DIR: &str = "/sys/fs/fuse/connections";

/// The connection id of the FUSE mount at `mountpoint` (the topmost one there).
///
/// It is the mount's device number in the kernel's internal encoding
/// (`major << 20 | minor`; for ordinary FUSE mounts the major is 0, so it is the minor
/// of `st_dev`). Read from `/proc/self/mountinfo`, not with `stat(2)`, which would
/// block on a mount whose daemon does not answer.
///
/// # Errors
/// `NotFound` if no FUSE mount is at `mountpoint` (which should be canonical), or the
/// error of reading the mount table.
pub fn connection_id(mountpoint: impl AsRef<Path>) -> io::Result<u64> {
    let path = mountpoint.as_ref();
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    connection_at(&path)
}

/// [`connection_id`] without canonicalising: `path` must be as the mount table spells
/// it. Touches nothing but `/proc/self/mountinfo`, so it cannot block on a hung mount.
fn connection_at(path: &Path) -> io::Result<u64> {
    match mountinfo::find(path)? {
        Some(e) if e.fstype == "fuse" || e.fstype.starts_with("fuse.") => Ok(e.kernel_dev()),
        _ => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no FUSE mount at {}", path.display()),
        )),
    }
}

/// Mount the control filesystem at [`CONNECTIONS_DIR`] unless it is already there.
///
/// # Errors
/// The error of `mount(2)` (`EPERM` without `CAP_SYS_ADMIN`; `ENODEV` if the kernel has
/// no fuse module), or of reading the mount table.
pub fn ensure_mounted() -> io::Result<()> {
    let dir = Path::new(CONNECTIONS_DIR);
    if is_mounted()? {
        return Ok(());
    }
    match nix::mount::mount(
        Some("fusectl"),
        dir,
        Some("fusectl"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        // EBUSY: mounted meanwhile by someone else.
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn is_mounted() -> io::Result<bool> {
    Ok(mountinfo::read()?
        .iter()
        .any(|e| e.fstype == "fusectl" && e.mount_point == Path::new(CONNECTIONS_DIR)))
}

fn control_file(conn: u64, name: &str) -> PathBuf {
    Path::new(CONNECTIONS_DIR).join(conn.to_string()).join(name)
}

/// Abort connection `conn`: every waiting and future request fails, the device reads
/// `ENODEV`. The mount stays until unmounted (accesses then fail with `ENOTCONN`).
/// Mounts the control filesystem first if needed.
///
/// # Errors
/// `NotFound` if there is no such connection; `EPERM`/`EACCES` unless the caller owns
/// the connection or is root; errors of [`ensure_mounted`].
pub fn abort(conn: u64) -> io::Result<()> {
    ensure_mounted()?;
    std::fs::write(control_file(conn, "abort"), b"1")
}

/// The number of requests of connection `conn` waiting to be read or answered.
///
/// # Errors
/// `NotFound` if there is no such connection; `InvalidData` if the file does not hold
/// a number; errors of [`ensure_mounted`].
pub fn waiting(conn: u64) -> io::Result<u64> {
    ensure_mounted()?;
    let text = std::fs::read_to_string(control_file(conn, "waiting"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("waiting: {text:?}")))
}

/// A deadline for a mount: unless disarmed in time, a thread aborts the connection
/// and lazily unmounts it, so that a hung test or tool ends instead of blocking
/// forever in an unanswered request.
///
/// When it fires it: finds the connection at the mountpoint (the id given or looked
/// up), aborts it through fusectl (mounting fusectl if needed), then detaches the mount
/// with `umount2(MNT_DETACH)`, or `fusermount3 -u -z` if that is not permitted. It
/// only touches the mountpoint if the FUSE mount there is the expected connection.
///
/// Dropping the watchdog disarms it (and joins its thread) — except while the
/// thread that drops it is panicking (a failed test): then it tears the mount down
/// at once, so that a failure leaves no mount behind.
///
/// # References
/// - [`abort`], `umount(2)`
#[derive(Debug)]
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    mountpoint: PathBuf,
    connection: Option<u64>,
    identity: Option<MountIdentity>,
}

#[derive(Debug)]
struct Shared {
    disarmed: Mutex<bool>,
    cond: Condvar,
    fired: AtomicBool,
}

impl Watchdog {
    /// Arm a watchdog on the FUSE mount at `mountpoint` that fires after `timeout`.
    /// `connection` is the connection id if known; if `None`, it is looked up when the
    /// watchdog fires (so a watchdog may be armed before the mount exists).
    ///
    /// # Errors
    /// The error of spawning the thread.
    pub fn arm(
        mountpoint: impl Into<PathBuf>,
        connection: Option<u64>,
        timeout: Duration,
    ) -> io::Result<Watchdog> {
        let mountpoint = mountpoint.into();
        let mountpoint = std::fs::canonicalize(&mountpoint).unwrap_or(mountpoint);
        // With a known connection that is on top now, remember the mount by its unique
        // id: if it is unmounted and another mount reuses the connection id before the
        // watchdog fires, the newer mount is left alone.
        let identity = connection.and_then(|c| {
            MountIdentity::at(&mountpoint)
                .ok()
                .filter(|id| id.dev == c && id.unique_id.is_some())
        });
        let shared = Arc::new(Shared {
            disarmed: Mutex::new(false),
            cond: Condvar::new(),
            fired: AtomicBool::new(false),
        });
        let theirs = Arc::clone(&shared);
        let deadline = Instant::now() + timeout;
        let ours = mountpoint.clone();
        let thread = std::thread::Builder::new()
            .name("fuse-watchdog".into())
            .spawn(move || {
                let mut disarmed = match theirs.disarmed.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                loop {
                    if *disarmed {
                        return;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    disarmed = match theirs.cond.wait_timeout(disarmed, deadline - now) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
                drop(disarmed);
                theirs.fired.store(true, Ordering::SeqCst);
                if let Err(e) = tear_down_identified(&mountpoint, connection, identity) {
                    log::warn!("watchdog on {}: {e}", mountpoint.display());
                }
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
            mountpoint: ours,
            connection,
            identity,
        })
    }

    /// True if the deadline passed and the watchdog fired.
    pub fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Disarm: the watchdog will not fire (if it has not already). Returns whether it
    /// had fired.
    pub fn disarm(mut self) -> bool {
        self.stop()
    }

    fn stop(&mut self) -> bool {
        match self.shared.disarmed.lock() {
            Ok(mut g) => *g = true,
            Err(p) => *p.into_inner() = true,
        }
        self.shared.cond.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.fired()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let fired = self.stop();
        if std::thread::panicking() && !fired {
            if let Err(e) = tear_down_identified(&self.mountpoint, self.connection, self.identity) {
                log::warn!("watchdog on {}: {e}", self.mountpoint.display());
            }
        }
    }
}

/// Tear down the FUSE mount at `mountpoint`: abort its connection through fusectl,
/// then detach it (`umount2(MNT_DETACH)`, or `fusermount3 -u -z` if that is refused
/// with `EPERM`). This is what a [`Watchdog`] does when it fires; tests call it to clean
/// up after a failure.
///
/// `mountpoint` is used as given (not canonicalised, which could touch the hung
/// mount): spell it as `/proc/self/mountinfo` does, as [`Mount::mountpoint`] does.
///
/// [`Mount::mountpoint`]: super::Mount::mountpoint
///
/// `connection` is the expected connection id; if given, the mountpoint is only
/// detached if the FUSE mount on top of it is that connection (the connection is
/// aborted either way). If `None`, whatever FUSE mount is on top of `mountpoint` is
/// torn down. Nothing mounted there, or a connection already gone, is not an error.
///
/// # Errors
/// Errors of [`abort`] other than `NotFound`, and of `umount2(2)` other than `EINVAL`
/// (not a mount point any more).
pub fn tear_down(mountpoint: impl AsRef<Path>, connection: Option<u64>) -> io::Result<()> {
    tear_down_identified(mountpoint.as_ref(), connection, None)
}

/// [`tear_down`] of the mount `identity` (recorded while it was known to be the
/// caller's): nothing is done once that mount is gone, since its connection id may
/// belong to a newer mount by now; if it is covered, its connection is aborted but
/// the mountpoint is left alone.
fn tear_down_identified(
    mountpoint: &Path,
    connection: Option<u64>,
    identity: Option<MountIdentity>,
) -> io::Result<()> {
    if let Some(id) = identity {
        // Without the device at hand, liveness is unknown: say "ended", so that only
        // the unique id (and statmount) can answer Top, Covered or Gone.
        match id.check(mountpoint, false) {
            Ownership::Gone => return Ok(()),
            Ownership::Covered => {
                return match abort(id.dev) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            Ownership::Top | Ownership::Unknown => {}
        }
    }
    let here = connection_at(mountpoint).ok();
    let conn = match (connection, here) {
        (Some(c), _) => c,
        (None, Some(c)) => c,
        (None, None) => return Ok(()),
    };
    let abort_result = abort(conn);
    if here == Some(conn) {
        match nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(Errno::EPERM) => {
                super::fusermount::unmount(mountpoint, true)
                    .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    match abort_result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
