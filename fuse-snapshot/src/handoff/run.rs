//! A daemon's main loop with upgrades: [`serve_with_upgrades`], and
//! [`save_snapshot`] for a snapshot file taken while serving.
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuse_session::serve::Running;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::listener::{serve_upgrades, HandoffOutcome, UpgradeListener};
use super::{HandoffError, HandoffOptions};
use crate::{FdSaver, SnapshotFs};

/// Why [`serve_with_upgrades`] returned.
#[derive(Debug)]
#[non_exhaustive]
pub enum Ended {
    /// The filesystem was unmounted (by someone else), or the kernel sent DESTROY.
    Unmounted,
    /// SIGINT or SIGTERM: this process unmounted.
    Signal(i32),
    /// A new process took the mount over; this one stopped serving (and did not
    /// unmount). Exit now.
    HandedOff(Box<HandoffOutcome>),
}

/// The signals [`serve_with_upgrades`] handles: SIGINT, SIGTERM, SIGUSR1.
fn signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGUSR1);
    set
}

/// Blocks SIGINT, SIGTERM and SIGUSR1 in the calling thread and in every thread it
/// starts afterwards. Call it first thing in `main`, before any worker starts, when
/// using [`serve_with_upgrades`]: otherwise a SIGUSR1 reaching another thread kills
/// the process (its default action).
pub fn block_upgrade_signals() {
    let _ = signals().thread_block();
}

/// Serves until the mount goes away, a termination signal, or a committed handoff.
///
/// - With a `listener`, upgrade requests are served in a thread
///   ([`serve_upgrades`]); a committed one ends this with [`Ended::HandedOff`].
/// - SIGINT or SIGTERM: stop accepting upgrades (waiting for one in progress),
///   then unmount ([`Ended::Signal`]) — unless that handoff committed.
/// - SIGUSR1: `on_sigusr1(running)` runs (e.g. [`save_snapshot`]).
///
/// Block the signals in every thread first ([`block_upgrade_signals`]).
///
/// # Errors
/// Setting up the signal descriptor, or unmounting, failed; or a serving thread
/// ended unexpectedly ([`HandoffError::Serve`] with
/// [`ServeError::ThreadFailed`](fuse_session::serve::ServeError::ThreadFailed),
/// see [`Running::failure`]): the mount is left mounted, for a restart to
/// recover. A failed handoff is not an error here: it is logged, and serving goes
/// on.
pub fn serve_with_upgrades<F: SnapshotFs>(
    running: &Running<F>,
    listener: Option<&UpgradeListener>,
    options: &HandoffOptions,
    mut on_sigusr1: impl FnMut(&Running<F>),
) -> Result<Ended, HandoffError> {
    let io = |what| {
        move |e: nix::errno::Errno| HandoffError::Io {
            what,
            source: e.into(),
        }
    };
    let set = signals();
    set.thread_block().map_err(io("block signals"))?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io("create a signalfd"))?;
    std::thread::scope(|s| {
        let mut upgrades = listener.map(|l| s.spawn(move || serve_upgrades(running, l, options)));
        let finish_upgrades = |h: Option<std::thread::ScopedJoinHandle<'_, _>>| {
            listener.inspect(|l| l.close());
            match h.map(|h| h.join()) {
                Some(Ok(Ok(outcome))) => Some(outcome),
                _ => None,
            }
        };
        loop {
            if upgrades.as_ref().is_some_and(|h| h.is_finished()) {
                match upgrades.take().map(|h| h.join()) {
                    Some(Ok(Ok(outcome))) => return Ok(Ended::HandedOff(Box::new(outcome))),
                    Some(Ok(Err(HandoffError::NotServing | HandoffError::Closed))) => {}
                    Some(Ok(Err(e))) => {
                        log::error!("upgrade listener failed, serving on without it: {e}")
                    }
                    Some(Err(_)) => log::error!("upgrade thread panicked; serving on"),
                    None => {}
                }
            }
            // Read before the failure: a failing thread records it before any
            // thread leaves, so a mount found not serving is never taken for
            // an unmount when a thread failed.
            let serving = running.is_serving();
            if let Some(e) = running.failure() {
                // A serving thread failed: the others stopped; the mount stays
                // for a restart (a fd store's successor recovers it).
                if let Some(outcome) = finish_upgrades(upgrades.take()) {
                    return Ok(Ended::HandedOff(Box::new(outcome)));
                }
                return Err(HandoffError::Serve(e));
            }
            if !serving {
                if let Some(outcome) = finish_upgrades(upgrades.take()) {
                    return Ok(Ended::HandedOff(Box::new(outcome)));
                }
                // Unmounted from outside (or DESTROY): drop our handle quietly.
                let _ = running.unmount();
                running.session().shutdown();
                return Ok(Ended::Unmounted);
            }
            match sfd.read_signal() {
                Ok(Some(sig)) if sig.ssi_signo == Signal::SIGUSR1 as u32 => on_sigusr1(running),
                Ok(Some(sig)) => {
                    if let Some(outcome) = finish_upgrades(upgrades.take()) {
                        return Ok(Ended::HandedOff(Box::new(outcome)));
                    }
                    log::info!("signal {} received: unmounting", sig.ssi_signo);
                    running.unmount().map_err(|e| HandoffError::Io {
                        what: "unmount",
                        source: std::io::Error::other(e.to_string()),
                    })?;
                    return Ok(Ended::Signal(sig.ssi_signo as i32));
                }
                Ok(None) => {}
                Err(e) => return Err(io("read the signalfd")(e)),
            }
            let mut fds = [nix::poll::PollFd::new(
                sfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16));
        }
    })
}

/// A snapshot written by [`save_snapshot`].
#[derive(Clone, Debug)]
pub struct SavedSnapshot {
    /// Where.
    pub path: PathBuf,
    /// Its size.
    pub bytes: usize,
    /// How long the mount was paused (requests waited): parking plus encoding. The
    /// file is written after serving resumed.
    pub stall: Duration,
}

/// Writes a snapshot of `running` to `path` atomically (temporary file, mode 0600,
/// then rename; see [`crate::save_file`]): pause, snapshot, resume, then write.
/// The filesystem's descriptors, if any, are not saved (a file cannot hold them).
///
/// # Errors
/// [`HandoffError::Snapshot`] if the session could not be snapshotted (e.g. before
/// INIT); [`HandoffError::Io`] if writing failed.
pub fn save_snapshot<F: SnapshotFs>(
    running: &Running<F>,
    path: impl AsRef<Path>,
) -> Result<SavedSnapshot, HandoffError> {
    let start = Instant::now();
    let bytes = {
        let _paused = running.pause();
        let mut saver = FdSaver::new();
        crate::snapshot(running.session(), &mut saver)?
    };
    let stall = start.elapsed();
    let path = path.as_ref();
    crate::save_file(path, &bytes).map_err(|e| HandoffError::Io {
        what: "write the snapshot file",
        source: e,
    })?;
    Ok(SavedSnapshot {
        path: path.to_owned(),
        bytes: bytes.len(),
        stall,
    })
}
