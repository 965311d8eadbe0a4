//! The old process's side: [`UpgradeListener`] and [`serve_upgrades`].
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fuse_session::dev::{Mount, MountMethod};
use fuse_session::serve::{Backend, Running};

use super::conn::Conn;
use super::machine::{Incoming, OldAction, OldConfig, OldEvent, OldSide};
use super::message::{self, Kind, SnapshotMeta, WireMethod};
use super::{HandoffError, HandoffOptions, HandoffStats};
use crate::{FdSaver, PrecopyOps, SnapshotFs};

/// The control socket a running daemon listens on for a process that wants to take
/// its mount over.
///
/// The socket file is created with mode 0600 (bound under a temporary name,
/// `chmod`ed, then renamed into place, so it is never reachable with looser
/// permissions). Both ends also check each other's credentials.
#[derive(Debug)]
pub struct UpgradeListener {
    listener: Mutex<Option<UnixListener>>,
    path: PathBuf,
    /// (dev, ino) of the socket file this listener created: it only removes the path
    /// if it is still its own (a successor may have bound it since).
    identity: (u64, u64),
    closed: AtomicBool,
    /// Held for the whole of one handoff, so that [`UpgradeListener::close`] waits
    /// for one in progress.
    busy: Mutex<()>,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> HandoffError {
    move |source| HandoffError::Io { what, source }
}

impl UpgradeListener {
    /// Listens on `path`. A stale socket file there (nobody accepts on it) is
    /// replaced; a live one is [`HandoffError::AlreadyListening`]; anything that is
    /// not a socket is [`HandoffError::NotASocket`] and left alone.
    ///
    /// # Errors
    /// Those, and IO errors of creating the socket.
    pub fn bind(path: impl AsRef<Path>) -> Result<UpgradeListener, HandoffError> {
        let path = path.as_ref();
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(HandoffError::NotASocket(path.to_owned()))
            }
            Ok(_) => match UnixStream::connect(path) {
                Ok(_) => return Err(HandoffError::AlreadyListening(path.to_owned())),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    // Stale: replaced by the rename below.
                }
                Err(e) => return Err(io("probe the existing upgrade socket")(e)),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspect the upgrade socket path")(e)),
        }
        Self::bind_replacing(path)
    }

    /// Listens on `path`, replacing whatever socket is there without asking whether
    /// it is alive: for a process that has just taken the mount over from the
    /// daemon that listened there (which has stopped serving and is exiting).
    ///
    /// # Errors
    /// [`HandoffError::NotASocket`] if `path` exists and is not a socket; IO errors.
    pub fn bind_replacing(path: impl AsRef<Path>) -> Result<UpgradeListener, HandoffError> {
        let path = path.as_ref();
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if !m.file_type().is_socket() {
                return Err(HandoffError::NotASocket(path.to_owned()));
            }
        }
        let name = path
            .file_name()
            .ok_or_else(|| HandoffError::NotASocket(path.to_owned()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        if tmp.as_os_str().as_bytes().len() > 107 {
            return Err(HandoffError::Io {
                what: "bind the upgrade socket",
                source: std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "socket path too long for a unix socket (108 bytes); choose a shorter one",
                ),
            });
        }
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(io("bind the upgrade socket"))?;
        let finish = || -> std::io::Result<(u64, u64)> {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, path)?;
            let m = std::fs::symlink_metadata(path)?;
            Ok((m.dev(), m.ino()))
        };
        let identity = match finish() {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("put the upgrade socket in place")(e));
            }
        };
        listener
            .set_nonblocking(true)
            .map_err(io("make the upgrade socket non-blocking"))?;
        Ok(UpgradeListener {
            listener: Mutex::new(Some(listener)),
            path: path.to_owned(),
            identity,
            closed: AtomicBool::new(false),
            busy: Mutex::new(()),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting: waits for a handoff in progress to end (committed or rolled
    /// back), then closes the socket and removes its file (if still ours).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        self.shut();
    }

    fn shut(&self) {
        let taken = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if taken.is_some() {
            if let Ok(m) = std::fs::symlink_metadata(&self.path) {
                if (m.dev(), m.ino()) == self.identity {
                    let _ = std::fs::remove_file(&self.path);
                }
            }
        }
    }

    /// Closes the socket without removing the file: a successor is about to bind it.
    fn release(&self) {
        self.listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Waits up to `wait` for a connection. `Ok(None)` if none came.
    fn accept(&self, wait: Duration) -> Result<Option<UnixStream>, HandoffError> {
        let guard = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        let Some(l) = guard.as_ref() else {
            return Err(HandoffError::Closed);
        };
        match l.accept() {
            Ok((s, _)) => return Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(io("accept on the upgrade socket")(e)),
        }
        let mut fds = [nix::poll::PollFd::new(
            l.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
        match l.accept() {
            Ok((s, _)) => Ok(Some(s)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Ok(None)
            }
            Err(e) => Err(io("accept on the upgrade socket")(e)),
        }
    }
}

impl Drop for UpgradeListener {
    fn drop(&mut self) {
        self.shut();
    }
}

/// A committed handoff, on the old side: the new process serves the mount now.
#[derive(Debug)]
pub struct HandoffOutcome {
    /// What it cost.
    pub stats: HandoffStats,
    /// This process's handle on the mount, released by [`Running::stop`]. Drop it
    /// (that does not unmount) and exit.
    pub mount: Option<Mount>,
}

/// Serves upgrade requests for `running` until one commits (returns the outcome),
/// the listener is closed ([`HandoffError::Closed`]) or the mount is no longer
/// served ([`HandoffError::NotServing`]). Refused and rolled-back attempts are
/// logged and the loop goes on: the mount keeps being served.
///
/// # Errors
/// As above, or an error of the listening socket itself.
pub fn serve_upgrades<F: SnapshotFs>(
    running: &Running<F>,
    listener: &UpgradeListener,
    options: &HandoffOptions,
) -> Result<HandoffOutcome, HandoffError> {
    loop {
        if listener.closed.load(Ordering::Acquire) {
            return Err(HandoffError::Closed);
        }
        if !running.is_serving() {
            return Err(HandoffError::NotServing);
        }
        let Some(stream) = listener.accept(Duration::from_millis(100))? else {
            continue;
        };
        let busy = listener.busy.lock().unwrap_or_else(|p| p.into_inner());
        if listener.closed.load(Ordering::Acquire) {
            return Err(HandoffError::Closed);
        }
        match serve_one(running, stream, options) {
            Ok(outcome) => {
                listener.release();
                drop(busy);
                log::info!(
                    "handed the mount over to pid {} ({} snapshot bytes, stall {:?})",
                    outcome.stats.peer_pid,
                    outcome.stats.snapshot_bytes,
                    outcome.stats.stall
                );
                return Ok(outcome);
            }
            Err(e) => log::warn!("{e}"),
        }
    }
}

fn wire_method(m: MountMethod) -> WireMethod {
    match m {
        MountMethod::Fusermount { auto_unmount: true } => WireMethod::FusermountAutoUnmount,
        MountMethod::Fusermount { .. } => WireMethod::Fusermount,
        _ => WireMethod::Syscall,
    }
}

/// The mount's descriptors (dups) and its description.
struct MountOut {
    device: OwnedFd,
    unmount_socket: Option<OwnedFd>,
    method: WireMethod,
    connection_id: Option<u64>,
    mountpoint: Vec<u8>,
}

fn mount_out(m: &Mount) -> std::io::Result<MountOut> {
    Ok(MountOut {
        device: m.device().try_clone_to_owned()?,
        unmount_socket: m
            .auto_unmount_socket()
            .map(|s| s.try_clone_to_owned())
            .transpose()?,
        method: wire_method(m.method()),
        connection_id: m.connection_id(),
        mountpoint: m.mountpoint().as_os_str().as_bytes().to_vec(),
    })
}

/// A filesystem recording its changes for a pre-copy; stops it when dropped (the
/// snapshot already did on success; stopping again is harmless).
struct Recording<'a, F: SnapshotFs> {
    ops: PrecopyOps<F>,
    session: &'a fuse_session::Session<F>,
}

impl<F: SnapshotFs> Drop for Recording<'_, F> {
    fn drop(&mut self) {
        (self.ops.abort)(self.session);
    }
}

/// One upgrade connection, old side: the socket driver of [`OldSide`], which
/// makes every decision. Every error before `Commit` leaves this process serving.
fn serve_one<F: SnapshotFs>(
    running: &Running<F>,
    stream: UnixStream,
    options: &HandoffOptions,
) -> Result<HandoffOutcome, HandoffError> {
    stream
        .set_nonblocking(false)
        .map_err(io("configure the upgrade connection"))?;
    let conn = Conn::new(stream, options.timeout, 0);
    let ops = F::precopy();
    let version = crate::FORMAT_VERSION;
    let ring_area = matches!(running.backend(), Backend::Uring { .. })
        && running.ring_area().is_some_and(|a| a.fd().is_some());
    let mut machine = OldSide::new(OldConfig {
        version,
        precopy: ops.is_some() && options.precopy,
        uring: matches!(running.backend(), Backend::Uring { .. }) && !ring_area,
        uring_area: ring_area,
        max_snapshot: options.max_snapshot,
    });
    let mut peer_pid = 0;
    let peer = conn.check_peer().map(|p| peer_pid = p.pid);
    fuse_session::fault::point("handoff-old-accepted");
    let mut action = machine.handle(OldEvent::PeerChecked(peer));
    // The observer was told the commit is coming: tell it of a rollback too.
    let mut observed = false;

    // What the actions hold between steps.
    let mut recording: Option<Recording<'_, F>> = None;
    let mut precopy_body: Vec<u8> = Vec::new();
    let mut precopy_time = Duration::ZERO;
    let mut precopy_started = None;
    let mut start = Instant::now();
    let mut guard = None;
    let mut parked_in = Duration::ZERO;
    let mut encode = Duration::ZERO;
    let mut snapshot: Option<(Vec<u8>, MountOut, Vec<OwnedFd>)> = None;
    let mut snapshot_len = 0;
    let mut snapshot_sent = Duration::ZERO;
    let mut fd_count = 0;
    let mut restore = Duration::ZERO;
    let mut stall = Duration::ZERO;
    // The mount handle, once ReleaseRings stopped the workers (io_uring).
    let mut stopped: Option<Option<Mount>> = None;
    loop {
        action = match action {
            OldAction::Recv => match conn.recv("read the peer's message") {
                Ok(r) => machine.handle(OldEvent::Received(Incoming {
                    kind: r.header.kind,
                    body: &r.body,
                    fds: r.fds.len(),
                })),
                Err(e) => machine.handle(OldEvent::Failed(e)),
            },
            OldAction::Send(bytes) => sent(&mut machine, conn.send("send a message", &bytes, &[])),
            OldAction::TakeBase => {
                // Pre-copy, still serving: the filesystem records its changes from
                // here until the snapshot (or until this attempt ends, when the
                // guard stops it). Not at a lower priority: the copy takes the
                // tables' locks, which requests wait for.
                conn.rearm(options.precopy_timeout);
                precopy_started = Some(Instant::now());
                let session = running.session();
                let taken = match ops {
                    Some(ops) => {
                        let base = (ops.begin)(session);
                        recording = Some(Recording { ops, session });
                        base
                    }
                    None => Err(crate::FormatError::FsSave("no pre-copy".into())),
                };
                let taken = taken.map(|b| {
                    precopy_body = b;
                    precopy_body.len()
                });
                machine.handle(OldEvent::BaseTaken(taken))
            }
            OldAction::SendPrecopy(kind) => {
                let body = std::mem::take(&mut precopy_body);
                let r = conn
                    .send("send the pre-copy", &message::header(kind, body.len()), &[])
                    .and_then(|()| conn.send("send the pre-copy", &body, &[]));
                sent(&mut machine, r)
            }
            OldAction::TakeRound => {
                let taken = match &recording {
                    Some(r) => (r.ops.round)(running.session()),
                    None => Ok(None),
                };
                let taken = taken.map(|r| {
                    r.map(|b| {
                        precopy_body = b;
                        precopy_body.len()
                    })
                });
                machine.handle(OldEvent::RoundTaken(taken))
            }
            OldAction::PauseAndSnapshot => {
                if let Some(t) = precopy_started {
                    precopy_time = t.elapsed();
                }
                // The pause is bounded by the ordinary timeout. From here on every
                // early return drops the guard, which resumes serving.
                conn.rearm(options.timeout);
                start = Instant::now();
                let g = running.pause();
                parked_in = g.parked_in;
                guard = Some(g);
                let encode_start = Instant::now();
                fuse_session::fault::point("handoff-old-paused");
                let taken = take_snapshot(running, recording.as_ref().map(|r| r.ops), ring_area);
                encode = encode_start.elapsed();
                let taken = taken.map(|(bytes, out, fs_fds)| {
                    let len = bytes.len();
                    snapshot = Some((bytes, out, fs_fds));
                    len
                });
                machine.handle(OldEvent::SnapshotTaken(taken))
            }
            OldAction::SendSnapshot => {
                let r = match snapshot.take() {
                    Some((bytes, out, fs_fds)) => {
                        let meta = SnapshotMeta {
                            since_pause: start.elapsed(),
                            has_unmount_socket: out.unmount_socket.is_some(),
                            method: out.method,
                            connection_id: out.connection_id,
                            fs_fds: u32::try_from(fs_fds.len()).unwrap_or(u32::MAX),
                            mountpoint: out.mountpoint,
                        };
                        let mut fds: Vec<BorrowedFd<'_>> = vec![out.device.as_fd()];
                        fds.extend(out.unmount_socket.as_ref().map(|s| s.as_fd()));
                        fds.extend(fs_fds.iter().map(|f| f.as_fd()));
                        fd_count = fds.len();
                        snapshot_len = bytes.len();
                        let r = conn
                            .send("send the snapshot", &meta.encode(bytes.len()), &fds)
                            .and_then(|()| conn.send("send the snapshot", &bytes, &[]));
                        snapshot_sent = start.elapsed();
                        if r.is_ok() {
                            fuse_session::fault::point("handoff-old-sent");
                        }
                        r
                    }
                    None => Err(HandoffError::OutOfOrder {
                        state: "sending the snapshot",
                        event: "no snapshot taken",
                    }),
                };
                sent(&mut machine, r)
            }
            OldAction::Commit { restore: r } => {
                restore = r;
                fuse_session::fault::point("handoff-old-acked");
                if let Some(o) = &options.commit_observer {
                    if let Err(why) = o.before_commit(peer_pid) {
                        action = machine.handle(OldEvent::Failed(HandoffError::Refused(why)));
                        continue;
                    }
                    observed = true;
                    fuse_session::fault::point("handoff-old-observed");
                }
                stall = start.elapsed();
                let r = conn.send(
                    "send Commit",
                    &message::encode_duration(Kind::Commit, stall),
                    &[],
                );
                if r.is_ok() {
                    // Committed: the new process serves as soon as it reads
                    // Commit (over io_uring, once it has registered its entries).
                    fuse_session::fault::point("handoff-old-committed");
                }
                sent(&mut machine, r)
            }
            OldAction::ReleaseRings => {
                // Over io_uring: the new process has registered its own entries
                // (at the head of every queue) and said so; only now are this
                // process's rings closed (the workers are parked; they stop for
                // good, without unmounting).
                if let Some(e) = machine.after_commit_problem() {
                    // Committed: the session is the new process's either way.
                    log::error!("after Commit: {e}; closing the rings anyway");
                }
                stopped = Some(running.stop());
                machine.handle(OldEvent::RingsReleased(start.elapsed()))
            }
            OldAction::Committed => break,
            OldAction::Abort { error, refuse } => {
                if let Some(bytes) = refuse {
                    let _ = conn.send("refuse", &bytes, &[]);
                }
                if observed {
                    if let Some(o) = &options.commit_observer {
                        o.rolled_back();
                    }
                }
                // Dropping the guard (if paused) resumes serving; dropping the
                // recording stops it.
                drop(guard);
                drop(recording);
                return Err(error);
            }
        };
    }
    // Committed. The workers are parked (over io_uring: stopped already, by
    // ReleaseRings); stop them for good without unmounting.
    if stopped.is_none() {
        if let Some(e) = machine.after_commit_problem() {
            log::error!("after Commit: {e}; stopping anyway");
        }
    }
    let mount = match stopped {
        Some(m) => m,
        None => running.stop(),
    };
    drop(guard);
    drop(recording);
    let session = running.session();
    Ok(HandoffOutcome {
        stats: HandoffStats {
            version,
            snapshot_bytes: snapshot_len,
            fds: fd_count,
            nodes: session.node_count(),
            handles: session.handle_count(),
            precopy_bytes: machine.precopy_bytes(),
            precopy_rounds: machine.precopy_rounds(),
            precopy: precopy_time,
            parked_in,
            encode,
            transfer: Duration::ZERO,
            snapshot_sent,
            restore,
            stall,
            peer_pid,
        },
        mount,
    })
}

/// Feeds the outcome of a send.
fn sent(machine: &mut OldSide, r: Result<(), HandoffError>) -> OldAction {
    match r {
        Ok(()) => machine.handle(OldEvent::Sent),
        Err(e) => machine.handle(OldEvent::Failed(e)),
    }
}

/// Under the pause: the mount's descriptors, the snapshot (the changes since the
/// pre-copy, with one) and the filesystem's descriptors.
#[allow(clippy::type_complexity)]
fn take_snapshot<F: SnapshotFs>(
    running: &Running<F>,
    precopy: Option<PrecopyOps<F>>,
    ring_area: bool,
) -> Result<(Vec<u8>, MountOut, Vec<OwnedFd>), HandoffError> {
    let out = match running.with_mount(mount_out) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(io("duplicate the mount's descriptors")(e)),
        None => return Err(HandoffError::NotServing),
    };
    let mut saver = FdSaver::new();
    let bytes = match precopy {
        Some(ops) => (ops.changes)(running.session(), &mut saver),
        None => crate::snapshot(running.session(), &mut saver),
    }?;
    let mut fs_fds = saver.into_fds();
    if ring_area {
        // FEATURE_URING: the ring area goes last.
        let fd = running
            .ring_area()
            .and_then(|a| a.fd().map(|fd| fd.try_clone_to_owned()))
            .ok_or(HandoffError::NotServing)?
            .map_err(io("duplicate the ring area's descriptor"))?;
        fs_fds.push(fd);
    }
    let total = 1 + usize::from(out.unmount_socket.is_some()) + fs_fds.len();
    if total > fuse_session::dev::MAX_FDS_PER_MESSAGE {
        return Err(HandoffError::Io {
            what: "send the descriptors",
            source: std::io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{total} descriptors; one message carries at most {}",
                    fuse_session::dev::MAX_FDS_PER_MESSAGE
                ),
            ),
        });
    }
    Ok((bytes, out, fs_fds))
}
