//! `fuse-live-keeper`: keeps a FUSE daemon's descriptors while it restarts, for
//! systems without systemd (containers, CSI node plugins).
//!
//! ```text
//! fuse-live-keeper [--restart-limit N] [--restart-window SECONDS] [--restart-delay MS] [--fd-store-max N] -- CMD ARGS...
//! ```
//!
//! It runs `CMD ARGS...` as its direct child and implements systemd's file
//! descriptor store protocol for it: the child gets `NOTIFY_SOCKET` (an abstract
//! datagram socket of the keeper's) and stores descriptors there (`FDSTORE=1`,
//! `FDNAME=`, `FDSTOREREMOVE=1`); when it dies abnormally (killed by a signal, or a
//! non-zero exit status) the keeper starts it again with them (`LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`), so a fuse-live daemon recovers its mount on the
//! same `/dev/fuse` connection. It contains no filesystem code.
//!
//! - Messages are accepted only from the direct child (the sender's pid, which the
//!   kernel attaches to every datagram); others are refused with a log line, and
//!   their descriptors closed. Malformed messages are ignored with a log line.
//! - Restarts wait 100 ms (`--restart-delay`; 0 restarts at once, every time),
//!   doubling per restart still within the window, up to 5 s.
//!   More than N restarts (default 5) within the window (default 60 s) and the
//!   keeper gives up: it says so on stderr and exits 1, closing the descriptors it
//!   kept, which ends the FUSE connection (docs/RECOVERY.md: end states).
//! - SIGTERM and SIGINT are forwarded to the child; the keeper then exits with the
//!   child's status (0 after a clean unmount). A child that exits 0 on its own ends
//!   the keeper with 0 too. A stop signal that finds the child down (between a crash
//!   and its restart), or a crash while stopping, restarts it at once and forwards
//!   the signal when it says `READY=1`, so that it unmounts cleanly; a second signal
//!   while it is down ends the keeper.
//! - SIGHUP replaces the daemon by a live handoff: the keeper starts the same
//!   command as a successor (its direct child, with the stored descriptors and
//!   `FUSE_LIVE_UPGRADE_FROM=<daemon pid>`), which takes the mount over through the
//!   daemon's upgrade socket; the daemon names it with `MAINPID=` before it
//!   commits, and names itself again if it rolls back. The keeper restarts the
//!   daemon only once neither process can be serving (docs/RECOVERY.md, "Live
//!   upgrade under the keeper").
//! - `BARRIER=1` (`sd_notify_barrier(3)`) is answered by closing its descriptor.
//! - Standard input, output and error are the keeper's own, passed through.
//!
//! Exit status: the child's (0 on a clean stop), 128+N if it was killed by signal N
//! while stopping, 1 when giving up or stopped twice while no child ran, 2 for bad
//! usage.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fuse_session::dev::fdstore::{
    message::DEFAULT_FD_NAME, parse_message, spawn_with_fds, NotifyListener, Received,
    UPGRADE_FROM_ENV,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

const USAGE: &str = "usage: fuse-live-keeper [--restart-limit N] [--restart-window SECONDS] \
                     [--restart-delay MS] [--fd-store-max N] -- CMD ARGS...";
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A line on stderr. Never `eprintln!`, which panics when stderr is gone (a log
/// collector that died): the keeper must outlive that, since its exit would end the
/// FUSE connection.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "fuse-live-keeper: {}", format_args!($($t)*));
    }};
}

#[derive(Debug, PartialEq)]
struct Options {
    restart_limit: u32,
    restart_window: Duration,
    /// The first restart's delay (`--restart-delay`), doubled per recent restart.
    first_backoff: Duration,
    fd_store_max: usize,
    cmd: Vec<OsString>,
}

fn parse_args(args: Vec<OsString>) -> Result<Options, String> {
    let mut o = Options {
        restart_limit: 5,
        restart_window: Duration::from_secs(60),
        first_backoff: FIRST_BACKOFF,
        fd_store_max: 64,
        cmd: Vec::new(),
    };
    let mut it = args.into_iter();
    fn number(flag: &str, v: Option<OsString>) -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.to_str()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| format!("{flag} {:?}: not a number", v.to_string_lossy()))
    }
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--") => break,
            Some("--restart-limit") => {
                o.restart_limit = u32::try_from(number("--restart-limit", it.next())?)
                    .map_err(|_| "--restart-limit: too large".to_owned())?
            }
            Some("--restart-window") => {
                let s = number("--restart-window", it.next())?;
                if s == 0 || s > 365 * 24 * 3600 {
                    return Err("--restart-window: 1 to 31536000 seconds".into());
                }
                o.restart_window = Duration::from_secs(s);
            }
            Some("--restart-delay") => {
                let ms = number("--restart-delay", it.next())?;
                if ms > MAX_BACKOFF.as_millis() as u64 {
                    return Err(format!(
                        "--restart-delay: 0 to {} milliseconds",
                        MAX_BACKOFF.as_millis()
                    ));
                }
                o.first_backoff = Duration::from_millis(ms);
            }
            Some("--fd-store-max") => {
                let n = number("--fd-store-max", it.next())?;
                if n == 0 || n > 4096 {
                    return Err("--fd-store-max: 1 to 4096".into());
                }
                o.fd_store_max = n as usize;
            }
            Some("-h" | "--help") => return Err(String::new()),
            Some(s) if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => {
                o.cmd.push(a);
                break;
            }
        }
    }
    o.cmd.extend(it);
    if o.cmd.is_empty() {
        return Err("no command to run".into());
    }
    Ok(o)
}

/// One stored descriptor.
struct Stored {
    name: String,
    fd: OwnedFd,
    /// Drop it when it reports `POLLHUP`/`POLLERR` (unless the child said
    /// `FDPOLL=0`).
    poll: bool,
}

/// The descriptors kept for the child, in the order they were stored.
struct Store {
    entries: Vec<Stored>,
    max: usize,
}

impl Store {
    /// Stores `fds` under `name`, replacing what that name held. Refuses (closing
    /// them) descriptors beyond the maximum.
    fn add(&mut self, name: &str, fds: Vec<OwnedFd>, poll: bool) -> Result<(), String> {
        let replaced = self.remove(name);
        if self.entries.len() + fds.len() > self.max {
            return Err(format!(
                "storing {} more descriptors named {name:?} would exceed --fd-store-max {} \
                 ({} stored); closed them{}",
                fds.len(),
                self.max,
                self.entries.len(),
                if replaced > 0 {
                    " and the ones they replaced"
                } else {
                    ""
                }
            ));
        }
        for fd in fds {
            self.entries.push(Stored {
                name: name.to_owned(),
                fd,
                poll,
            });
        }
        Ok(())
    }

    /// Closes and forgets every descriptor named `name`; returns how many.
    fn remove(&mut self, name: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| e.name != name);
        before - self.entries.len()
    }

    /// Closes and forgets the descriptors (stored without `FDPOLL=0`) that report
    /// `POLLHUP` or `POLLERR` now, as systemd does; returns their names.
    ///
    /// Checked before each start rather than watched all the time: a `/dev/fuse`
    /// descriptor in a poll set wakes its poller at every request the kernel
    /// queues, which would cost the keeper a wake-up per FUSE request.
    fn drop_hung(&mut self) -> Vec<String> {
        let hung: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = self
                .entries
                .iter()
                .map(|e| PollFd::new(e.fd.as_fd(), PollFlags::empty()))
                .collect();
            if poll(&mut fds, PollTimeout::ZERO).is_err() {
                return Vec::new();
            }
            self.entries
                .iter()
                .zip(&fds)
                .map(|(e, f)| e.poll && f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut names = Vec::new();
        let mut i = 0;
        self.entries.retain(|e| {
            let drop = hung[i];
            i += 1;
            if drop {
                names.push(e.name.clone());
            }
            !drop
        });
        names
    }

    /// The names, `:`-separated as in `LISTEN_FDNAMES` (`none` for none).
    fn names(&self) -> String {
        if self.entries.is_empty() {
            return "none".to_owned();
        }
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        names.join(":")
    }
}

/// The child's state.
enum Child {
    Running(Pid),
    /// Dead; to be started again at this instant.
    Waiting(Instant),
}

struct Keeper {
    opts: Options,
    listener: NotifyListener,
    store: Store,
    env: Vec<(OsString, OsString)>,
    child: Child,
    /// SIGTERM/SIGINT was forwarded (this one): the next exit ends the keeper,
    /// unless the daemon crashed meanwhile (killed by another signal).
    stopping: Option<Signal>,
    /// A stop signal to forward once the daemon says `READY=1`: it came while the
    /// daemon was down, which is restarted so that it can unmount cleanly.
    pending_stop: Option<Signal>,
    /// When each restart within the window happened.
    restarts: VecDeque<Instant>,
    /// A live upgrade in progress (`SIGHUP`): the process started to take the
    /// mount over from the daemon, not yet named by it (`MAINPID=`).
    successor: Option<Pid>,
    /// The daemon that named its successor (`MAINPID=`) and is committing the
    /// handoff and exiting, or rolls it back (then it names itself again).
    former: Option<Pid>,
    /// The daemon may no longer serve: it is the previous daemon after its
    /// successor died, or the successor after the daemon died before naming it.
    /// Any exit of it (status 0 too) restarts the daemon from the store; a
    /// `MAINPID=` naming itself (a rolled-back handoff) clears this.
    tentative: bool,
}

impl Keeper {
    /// Starts the command with the stored descriptors; with `upgrade_from`, as the
    /// successor of that daemon (`FUSE_LIVE_UPGRADE_FROM`).
    fn spawn(&mut self, upgrade_from: Option<Pid>) -> std::io::Result<Pid> {
        for name in self.store.drop_hung() {
            say!("stored descriptor {name:?} hung up (POLLHUP/POLLERR): closed, not passed on");
        }
        let fds: Vec<(&str, BorrowedFd<'_>)> = self
            .store
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.fd.as_fd()))
            .collect();
        let mut env = self.env.clone();
        if let Some(from) = upgrade_from {
            env.push((UPGRADE_FROM_ENV.into(), from.to_string().into()));
        }
        fuse_session::trace::phase("keeper: spawning the daemon");
        let pid = spawn_with_fds(&self.opts.cmd[0], &self.opts.cmd[1..], &env, &fds)?;
        fuse_session::trace::phase("keeper: daemon spawned");
        if !fds.is_empty() && upgrade_from.is_none() {
            say!(
                "started {} as pid {pid} with {} stored descriptors ({})",
                self.opts.cmd[0].to_string_lossy(),
                fds.len(),
                self.store.names()
            );
        }
        Ok(pid)
    }

    /// Acts on one message from the notify socket.
    fn message(&mut self, r: Received) {
        let Child::Running(child) = self.child else {
            say!(
                "refused a message from pid {}: no daemon runs",
                r.sender.map_or(-1, |s| s.pid)
            );
            return;
        };
        // The daemon, and during a live upgrade the other process of the handoff:
        // all direct children.
        let sender = match r.sender {
            Some(s)
                if s.pid == child.as_raw()
                    || Some(s.pid) == self.successor.map(Pid::as_raw)
                    || Some(s.pid) == self.former.map(Pid::as_raw) =>
            {
                Pid::from_raw(s.pid)
            }
            Some(s) => {
                say!(
                    "refused a message from pid {} (uid {}): only the daemon, pid {child}, may \
                     use the fd store; {} descriptors closed",
                    s.pid,
                    s.uid,
                    r.fds.len()
                );
                return;
            }
            None => {
                say!("refused a message without sender credentials");
                return;
            }
        };
        if r.truncated {
            say!("ignored a truncated message from the daemon (over 4096 bytes or 253 fds)");
            return;
        }
        let m = match parse_message(&r.bytes) {
            Ok(m) => m,
            Err(e) => {
                say!(
                    "ignored a message from the daemon: {e}; {} descriptors closed",
                    r.fds.len()
                );
                return;
            }
        };
        if let Some(p) = m.main_pid {
            self.main_pid(sender, p);
        }
        // The daemon may have changed: the rest concerns the current one.
        let Child::Running(child) = self.child else {
            return;
        };
        if m.fdstore_remove {
            match &m.fd_name {
                Some(name) => {
                    self.store.remove(name);
                }
                None => say!("ignored FDSTOREREMOVE=1 without FDNAME="),
            }
        }
        if m.fdstore {
            if r.fds.is_empty() {
                say!("ignored FDSTORE=1 without descriptors");
            } else {
                let name = m.fd_name.as_deref().unwrap_or(DEFAULT_FD_NAME);
                if let Err(e) = self.store.add(name, r.fds, m.fd_poll) {
                    say!("{e}");
                }
            }
        } else if m.barrier {
            // sd_notify_barrier: closing its descriptor (dropping it here) is the
            // answer; every earlier message has been processed.
        } else if !r.fds.is_empty() {
            say!("closed {} descriptors sent without FDSTORE=1", r.fds.len());
        }
        if m.ready && sender != child {
            say!("ignored READY=1 from pid {sender}: the daemon is pid {child}");
        } else if m.ready {
            say!(
                "daemon pid {child} is ready ({} stored descriptors: {})",
                self.store.entries.len(),
                self.store.names()
            );
            if let Some(sig) = self.pending_stop.take() {
                say!("forwarding the pending {sig} to the daemon, pid {child}");
                self.stopping = Some(sig);
                let _ = kill(child, sig);
            }
        }
        if m.stopping {
            say!("pid {sender} is stopping");
        }
    }

    /// `MAINPID=p` from `sender`: a live upgrade's handover, or its rollback.
    fn main_pid(&mut self, sender: Pid, p: u32) {
        let Child::Running(main) = self.child else {
            return;
        };
        let named = i32::try_from(p).ok().map(Pid::from_raw);
        if sender == main && named == self.successor {
            // The daemon commits its handoff next: supervise the successor.
            say!("daemon pid {main} hands the mount over to pid {p}, the daemon from now on");
            self.former = Some(main);
            self.successor = None;
            self.child = Child::Running(Pid::from_raw(p as i32));
            self.tentative = false;
            // A stop signal the old daemon got goes to the new one once it serves.
            if let Some(sig) = self.stopping.take() {
                self.pending_stop = Some(sig);
            }
        } else if Some(sender) == self.former && named == Some(sender) {
            // Commit could not be sent (the successor died): it serves on.
            say!("pid {sender} rolled the handoff back and serves on");
            self.successor = Some(main);
            self.former = None;
            self.take_back(sender);
        } else if sender == main && named == Some(main) {
            if self.tentative {
                say!("pid {main} rolled the handoff back and serves on");
                self.take_back(main);
            }
        } else {
            say!(
                "ignored MAINPID={p} from pid {sender}: the daemon must stay the keeper's direct \
                 child (pid {main}; a successor only through SIGHUP)"
            );
        }
    }

    /// `pid`, which had handed over, serves again (a rolled-back handoff).
    fn take_back(&mut self, pid: Pid) {
        self.child = Child::Running(pid);
        self.tentative = false;
        if let Some(sig) = self.pending_stop.take() {
            say!("forwarding the pending {sig} to the daemon, pid {pid}");
            self.stopping = Some(sig);
            let _ = kill(pid, sig);
        }
    }

    /// SIGHUP: start a successor that takes the mount over from the daemon by a
    /// live handoff (the daemon's own upgrade socket), with the stored descriptors.
    fn upgrade(&mut self) {
        let Child::Running(main) = self.child else {
            say!("SIGHUP while the daemon is down: no live upgrade (it is being restarted)");
            return;
        };
        if self.successor.is_some() || self.former.is_some() || self.tentative {
            say!("SIGHUP during a live upgrade: ignored");
            return;
        }
        if self.stopping.is_some() || self.pending_stop.is_some() {
            say!("SIGHUP while stopping: ignored");
            return;
        }
        match self.spawn(Some(main)) {
            Ok(pid) => {
                say!("SIGHUP: started pid {pid} to take the mount over from pid {main}");
                self.successor = Some(pid);
            }
            Err(e) => say!("SIGHUP: cannot start the successor: {e}"),
        }
    }

    /// Waits (at most 10 s, then kills) for the other processes of a live upgrade
    /// before the keeper exits, so that none is left behind.
    fn wait_others(&mut self) {
        for pid in [self.successor.take(), self.former.take()]
            .into_iter()
            .flatten()
        {
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Ok(WaitStatus::StillAlive) => {
                        say!("pid {pid} did not exit: killing it");
                        let _ = kill(pid, Signal::SIGKILL);
                        let _ = waitpid(pid, None);
                        break;
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    _ => break,
                }
            }
        }
    }

    fn drain(&mut self) {
        loop {
            match self.listener.recv() {
                Ok(Some(r)) => self.message(r),
                Ok(None) => return,
                Err(e) => {
                    say!("cannot read the notify socket: {e}");
                    return;
                }
            }
        }
    }

    /// The child died: decide what comes next. `Some(code)` ends the keeper.
    fn child_died(&mut self, status: WaitStatus) -> Option<u8> {
        let (how, code) = match status {
            WaitStatus::Exited(_, c) => (format!("exited with status {c}"), c),
            WaitStatus::Signaled(_, s, _) => (format!("was killed by {s}"), 128 + s as i32),
            _ => return None,
        };
        // Killed by a signal other than the stop signal: a crash, even while
        // stopping. Recover it, then stop it, so that it unmounts cleanly.
        let crashed = matches!(status, WaitStatus::Signaled(_, s, _) if Some(s) != self.stopping);
        if self.stopping.is_some() && !crashed {
            say!("daemon {how} after the stop signal; exiting");
            return Some(code.clamp(0, 255) as u8);
        }
        let tentative = std::mem::take(&mut self.tentative);
        if code == 0 && !tentative {
            return Some(0);
        }
        // Not a clean end. During a live upgrade the other process may serve, or
        // be about to exit: it is the daemon until it exits.
        if let Some(f) = self.former.take() {
            say!(
                "daemon {how} right after taking over; the previous daemon, pid {f}, serves on \
                 if it rolled the handoff back, otherwise it is restarted when that one exits"
            );
            self.child = Child::Running(f);
            self.tentative = true;
            if let Some(sig) = self.stopping.take() {
                self.pending_stop = Some(sig);
            }
            return None;
        }
        if let Some(s) = self.successor.take() {
            say!(
                "daemon {how} during a live upgrade, before handing over: its successor, pid \
                 {s}, gets no Commit and exits; then the daemon is restarted"
            );
            self.child = Child::Running(s);
            self.tentative = true;
            if let Some(sig) = self.stopping.take() {
                self.pending_stop = Some(sig);
            }
            return None;
        }
        if let Some(sig) = self.stopping.take() {
            self.pending_stop = Some(sig);
            say!("daemon {how} while stopping: restarting it so that it can unmount");
        }
        self.failed(&format!("daemon {how}"))
    }

    /// The child failed (or could not be started): restart it later, or give up.
    fn failed(&mut self, what: &str) -> Option<u8> {
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.opts.restart_window)
        {
            self.restarts.pop_front();
        }
        let recent = self.restarts.len();
        if recent >= self.opts.restart_limit as usize {
            say!(
                "{what}; it was restarted {recent} times within {} s (--restart-limit {}): \
                 giving up. Closing the {} stored descriptors ({}): the FUSE connection ends, \
                 programs using the mount get ENOTCONN, and the mount stays until it is \
                 unmounted (umount -l MOUNTPOINT, or fusermount3 -uz MOUNTPOINT).",
                self.opts.restart_window.as_secs(),
                self.opts.restart_limit,
                self.store.entries.len(),
                self.store.names()
            );
            return Some(1);
        }
        let delay = self
            .opts
            .first_backoff
            .saturating_mul(1u32 << recent.min(16))
            .min(MAX_BACKOFF);
        say!(
            "{what}; restarting it in {} ms (restart {} of at most {} within {} s)",
            delay.as_millis(),
            recent + 1,
            self.opts.restart_limit,
            self.opts.restart_window.as_secs()
        );
        self.restarts.push_back(now);
        self.child = Child::Waiting(now + delay);
        None
    }

    /// Reaps every dead child; returns the keeper's exit code if it should end.
    fn reap(&mut self) -> Option<u8> {
        // Messages the child sent before it died are queued already: act on them
        // while its pid cannot be reused yet (it is not reaped).
        self.drain();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return None,
                Ok(st) => {
                    let pid = st.pid();
                    if matches!(self.child, Child::Running(p) if Some(p) == pid) {
                        if let Some(code) = self.child_died(st) {
                            return Some(code);
                        }
                    } else if pid.is_some() && pid == self.successor {
                        self.successor = None;
                        say!(
                            "the successor, pid {}, ended ({st:?}): the live upgrade failed",
                            pid.map_or(0, Pid::as_raw)
                        );
                    } else if pid.is_some() && pid == self.former {
                        self.former = None;
                        say!(
                            "the previous daemon, pid {}, ended after handing over ({st:?})",
                            pid.map_or(0, Pid::as_raw)
                        );
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    say!("waitpid: {e}");
                    return None;
                }
            }
        }
    }

    fn signal(&mut self, sig: Signal) -> Option<u8> {
        match self.child {
            Child::Running(pid) => {
                // Also a second signal while a pending one waits for READY=1: the
                // daemon gets it at once.
                say!("forwarding {sig} to the daemon, pid {pid}");
                self.pending_stop = None;
                self.stopping = Some(sig);
                let _ = kill(pid, sig);
                None
            }
            Child::Waiting(_) if self.pending_stop.is_none() => {
                say!(
                    "{sig} while the daemon is down: restarting it now so that it can unmount; \
                     it gets {sig} once it is ready (another signal ends the keeper at once)"
                );
                self.pending_stop = Some(sig);
                self.child = Child::Waiting(Instant::now());
                None
            }
            Child::Waiting(_) => {
                say!(
                    "{sig} again while the daemon is down: exiting without it. Closing the {} \
                     stored descriptors: the FUSE connection ends and the mount stays until it \
                     is unmounted.",
                    self.store.entries.len()
                );
                Some(1)
            }
        }
    }

    fn run(&mut self, sfd: &SignalFd) -> u8 {
        let code = self.supervise(sfd);
        self.wait_others();
        code
    }

    fn supervise(&mut self, sfd: &SignalFd) -> u8 {
        match self.spawn(None) {
            Ok(pid) => self.child = Child::Running(pid),
            Err(e) => {
                say!("cannot start {}: {e}", self.opts.cmd[0].to_string_lossy());
                return 1;
            }
        }
        loop {
            let timeout = match self.child {
                Child::Running(_) => PollTimeout::NONE,
                Child::Waiting(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    // Round up so that the wake-up is never early.
                    let ms = left.as_millis().saturating_add(1).min(60_000) as u16;
                    PollTimeout::from(ms)
                }
            };
            let (sig_ready, msg_ready) = {
                let mut fds = [
                    PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        say!("poll: {e}");
                        return 1;
                    }
                }
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if msg_ready {
                self.drain();
            }
            if sig_ready {
                while let Ok(Some(info)) = sfd.read_signal() {
                    let code = match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => {
                            fuse_session::trace::phase("keeper: SIGCHLD");
                            self.reap()
                        }
                        Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => self.signal(s),
                        Ok(Signal::SIGHUP) => {
                            self.upgrade();
                            None
                        }
                        _ => None,
                    };
                    if let Some(code) = code {
                        return code;
                    }
                }
            }
            if let Child::Waiting(at) = self.child {
                if Instant::now() >= at {
                    match self.spawn(None) {
                        Ok(pid) => self.child = Child::Running(pid),
                        Err(e) => {
                            let what =
                                format!("cannot start {}: {e}", self.opts.cmd[0].to_string_lossy());
                            if let Some(code) = self.failed(&what) {
                                return code;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args_os().skip(1).collect()) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                say!("{e}");
            }
            let _ = writeln!(std::io::stderr(), "{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        say!("cannot block signals: {e}");
        return ExitCode::from(1);
    }
    let sfd = match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            say!("signalfd: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match NotifyListener::bind() {
        Ok(l) => l,
        Err(e) => {
            say!("cannot create the notify socket: {e}");
            return ExitCode::from(1);
        }
    };
    // The child's environment: ours, without what belongs to the protocol, plus
    // our notify socket. (A keeper started by systemd does not pass systemd's
    // socket or descriptors on: the daemon talks to the keeper only.)
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            !matches!(
                k.to_str(),
                Some(
                    "NOTIFY_SOCKET"
                        | "LISTEN_FDS"
                        | "LISTEN_PID"
                        | "LISTEN_FDNAMES"
                        | "LISTEN_PIDFDID"
                        | UPGRADE_FROM_ENV
                )
            )
        })
        .collect();
    env.push(("NOTIFY_SOCKET".into(), listener.name().into()));
    let mut keeper = Keeper {
        store: Store {
            entries: Vec::new(),
            max: opts.fd_store_max,
        },
        opts,
        listener,
        env,
        child: Child::Waiting(Instant::now()),
        stopping: None,
        pending_stop: None,
        restarts: VecDeque::new(),
        successor: None,
        former: None,
        tentative: false,
    };
    ExitCode::from(keeper.run(&sfd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn command_line() {
        let o = parse_args(args(&["--", "memfs", "/mnt", "--threads", "2"])).unwrap();
        assert_eq!(o.restart_limit, 5);
        assert_eq!(o.cmd, args(&["memfs", "/mnt", "--threads", "2"]));
        let o = parse_args(args(&[
            "--restart-limit",
            "0",
            "--restart-window",
            "9",
            "x",
        ]))
        .unwrap();
        assert_eq!((o.restart_limit, o.restart_window.as_secs()), (0, 9));
        assert_eq!(o.first_backoff, FIRST_BACKOFF);
        let o = parse_args(args(&["--restart-delay", "0", "--", "x"])).unwrap();
        assert_eq!(o.first_backoff, Duration::ZERO);
        assert_eq!(o.cmd, args(&["x"]));
        for bad in [
            &[][..],
            &["--"],
            &["--restart-limit"],
            &["--restart-limit", "x", "--", "a"],
            &["--restart-limit", "-1", "--", "a"],
            &["--restart-window", "0", "--", "a"],
            &["--fd-store-max", "0", "--", "a"],
            &["--restart-delay", "5001", "--", "a"],
            &["--bogus", "--", "a"],
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn store_replaces_names_and_bounds_its_size() {
        let mut s = Store {
            entries: Vec::new(),
            max: 3,
        };
        let fd = || nix::unistd::pipe().unwrap().0;
        s.add("a", vec![fd()], true).unwrap();
        s.add("b", vec![fd(), fd()], true).unwrap();
        s.add("a", vec![fd()], true).unwrap();
        assert_eq!(s.names(), "b:b:a");
        assert!(s.add("c", vec![fd()], true).is_err());
        assert_eq!(s.names(), "b:b:a");
        assert_eq!(s.remove("b"), 2);
        assert_eq!(s.remove("zz"), 0);
        s.add("c", vec![fd(), fd()], false).unwrap();
        assert_eq!(s.names(), "a:c:c");
    }

    #[test]
    fn descriptors_that_hung_up_are_dropped_unless_fdpoll_0() {
        let mut s = Store {
            entries: Vec::new(),
            max: 8,
        };
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let (r3, _w3) = nix::unistd::pipe().unwrap();
        s.add("hup", vec![r1], true).unwrap();
        s.add("hup-kept", vec![r2], false).unwrap();
        s.add("open", vec![r3], true).unwrap();
        drop((w1, w2));
        assert_eq!(s.drop_hung(), ["hup"]);
        assert_eq!(s.names(), "hup-kept:open");
    }
}
