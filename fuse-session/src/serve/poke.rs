//! Waking `/dev/fuse` workers blocked in `read(2)`: a *poke* is a lookup of
//! [`POKE_NAME`] in the mount's root, a request the session answers itself.
//!
//! A poke is a filesystem operation on the mount, so it can block: on the root
//! directory's lock while another request on the root is unanswered (an `rmdir` in
//! the root holds it until its reply), or forever on a request that never finishes.
//! So pokes are sent only from a detached helper thread, and nobody waits for that
//! thread: pausing and unmounting wait for the *workers*, with the bounds
//! [`Running::pause_within`](super::Running::pause_within) and
//! [`UNMOUNT_GRACE`](super::UNMOUNT_GRACE) give, never for a poke.
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::session::lock;
use crate::proto::POKE_NAME;
use crate::serve::control::{Control, Mode, Phase};

/// How many failed pokes in a row end a poker thread.
const POKE_FAILURES: u32 = 100;

/// Wakes workers blocked in `read(2)` by poking the mount from a helper thread,
/// while any is blocked and should not be (a pause, a stop, or reads switched back
/// to waker-driven waits). Nothing without a mount root to poke (reads are not
/// blocking then). Returns at once; a
/// poke sent while the last worker parks stays queued until the workers resume (or
/// the process exits).
pub(crate) fn poke_workers(control: &Arc<Control>) {
    if control.poking.swap(true, Ordering::AcqRel) {
        return;
    }
    let Some((path, dev)) = lock(&control.root).clone() else {
        control.poking.store(false, Ordering::Release);
        return;
    };
    let c = Arc::clone(control);
    let spawned = std::thread::Builder::new()
        .name("fuse-poker".into())
        .spawn(move || {
            super::block_termination_signals();
            let mut failures = 0;
            // Blocked readers must come out while workers are to park or leave, or
            // while reads are switched back to waker-driven waits (unmounting).
            let wanted =
                |c: &Control| c.mode() != Mode::Serving || !c.blocking.load(Ordering::Acquire);
            // With blocking reads on, a worker marked waiting may sleep in
            // read(2) too: the switch to blocking reads (a restored session's
            // comes while serving) caught it between its epoll wait and its read.
            let asleep = |c: &Control| {
                let blocking = c.blocking.load(Ordering::Acquire);
                c.count(|p| p == Phase::Blocked || (blocking && p == Phase::Waiting)) > 0
            };
            while wanted(&c) && asleep(&c) {
                match open_root(&path, Some(dev)).and_then(|root| poke(&root)) {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        if failures >= POKE_FAILURES {
                            log::warn!("waking workers by pokes failed {failures} times: {e}");
                            break;
                        }
                        log::debug!("waking a worker by a lookup in the mount's root failed: {e}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            c.poking.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        control.poking.store(false, Ordering::Release);
    }
}

/// An `O_PATH` descriptor of the root of the mount at `path`; with `ours`, only if
/// it is still that mount — by the never-reused unique mount id, not the device
/// number, which the kernel hands to the next FUSE mount at once (not another
/// filesystem mounted over it, nor a newer mount that reuses the number).
pub(crate) fn open_root(
    path: &Path,
    ours: Option<crate::dev::MountIdentity>,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    if let Some(ours) = ours {
        if crate::dev::MountIdentity::of_fd(std::os::fd::AsFd::as_fd(&fd))? != ours {
            return Err(io::Error::other(
                "another filesystem is mounted over the mountpoint",
            ));
        }
    }
    Ok(fd)
}

/// One poke: a lookup of [`POKE_NAME`] in the root, which the session answers ENOENT
/// (the kernel does not cache the negative entry, so every poke is a request).
///
/// Made by a child process ([`crate::dev::lookup_in_child`]), not by this thread: a
/// poke read by a worker of a daemon being killed would leave the poking thread
/// waiting for its answer uninterruptibly, and the process could never finish dying
/// (its keeper would restart nothing).
pub(crate) fn poke(root: &std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::AsFd;
    let name = std::ffi::CString::new(POKE_NAME).map_err(io::Error::other)?;
    match crate::dev::lookup_in_child(root.as_fd(), &name) {
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(()),
        Ok(()) => Err(io::Error::other("the poke name exists in the root")),
        Err(e) => Err(e),
    }
}
