//! The new process's side: [`take_over`], or step by step with [`Takeover`].
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fuse_session::dev::{Mount, MountMethod, MountParts, RingArea};
use fuse_session::serve::{Running, Server, UringOptions};
use fuse_session::Session;

use super::conn::{Conn, Received};
use super::machine::{Incoming, NewAction, NewConfig, NewEvent, NewSide};
use super::message::{self, Kind, SnapshotMeta, WireMethod};
use super::{HandoffError, HandoffOptions, HandoffStats};
use crate::{FdRestorer, FormatError, SnapshotFs};

/// A connection to a running daemon that has agreed to hand its mount over (Hello
/// and Accept done, nothing paused yet). Next: [`Takeover::receive`].
pub struct Takeover {
    conn: Conn,
    machine: NewSide,
    peer_pid: i32,
    threads: usize,
    timeouts: (std::time::Duration, std::time::Duration),
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("version", &self.machine.version())
            .field("features", &self.machine.features())
            .field("peer_pid", &self.peer_pid)
            .finish_non_exhaustive()
    }
}

/// Performs the transport actions of `machine` (send, receive) until it asks for
/// something else, which is returned with the last message received (its body
/// and descriptors, for the action to use).
fn pump(
    conn: &Conn,
    machine: &mut NewSide,
    mut action: NewAction,
) -> (NewAction, Option<Received>) {
    let mut last = None;
    loop {
        action = match action {
            NewAction::Send(bytes) => match conn.send("send a message", &bytes, &[]) {
                Ok(()) => machine.handle(NewEvent::Sent),
                Err(e) => machine.handle(NewEvent::Failed(e)),
            },
            NewAction::Recv => match conn.recv("read the peer's message") {
                Ok(r) => {
                    let a = machine.handle(NewEvent::Received(Incoming {
                        kind: r.header.kind,
                        body: &r.body,
                        fds: r.fds.len(),
                    }));
                    last = Some(r);
                    a
                }
                Err(e) => machine.handle(NewEvent::Failed(e)),
            },
            NewAction::Abort { error, nack } => {
                if let Some(bytes) = &nack {
                    let _ = conn.send("send Nack", bytes, &[]);
                }
                return (NewAction::Abort { error, nack: None }, last);
            }
            other => return (other, last),
        };
    }
}

/// The error of a final Abort, or an out-of-order error for any other action.
fn abort_error(action: NewAction, state: &'static str) -> HandoffError {
    match action {
        NewAction::Abort { error, .. } => error,
        _ => HandoffError::OutOfOrder {
            state,
            event: "an unexpected action",
        },
    }
}

impl Takeover {
    /// Connects to the daemon listening on `path`, checks its credentials, and
    /// agrees on a snapshot format version, and on pre-copy if
    /// [`HandoffOptions::precopy`] (then the filesystem type given to
    /// [`Takeover::receive`] must implement [`Precopy`](crate::Precopy), or the
    /// handoff fails with [`HandoffError::PrecopyUnsupported`]).
    ///
    /// # Errors
    /// [`HandoffError::NoListener`], [`HandoffError::PeerNotTrusted`],
    /// [`HandoffError::Refused`] (the daemon's reason: e.g. no common version),
    /// [`HandoffError::Message`], timeouts and IO errors.
    pub fn connect(
        path: impl AsRef<Path>,
        options: &HandoffOptions,
    ) -> Result<Takeover, HandoffError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                HandoffError::NoListener(path.to_owned())
            }
            _ => HandoffError::Io {
                what: "connect to the upgrade socket",
                source: e,
            },
        })?;
        let conn = Conn::new(stream, options.timeout, options.max_snapshot);
        let mut machine = NewSide::new(NewConfig {
            versions: options.versions,
            precopy: options.precopy,
            pid: std::process::id(),
        });
        let mut peer_pid = 0;
        let peer = conn.check_peer().map(|p| peer_pid = p.pid);
        let first = machine.handle(NewEvent::PeerChecked(peer));
        match pump(&conn, &mut machine, first) {
            (NewAction::Agreed { .. }, _) => {
                fuse_session::fault::point("handoff-new-connected");
                Ok(Takeover {
                    conn,
                    machine,
                    peer_pid,
                    threads: options.threads,
                    timeouts: (options.timeout, options.precopy_timeout),
                })
            }
            (other, _) => Err(abort_error(other, "connecting")),
        }
    }

    /// Whether the daemon will pre-copy its filesystem's state before pausing.
    pub fn precopy(&self) -> bool {
        self.machine.features() & message::FEATURE_PRECOPY != 0
    }

    /// The snapshot format version agreed.
    pub fn version(&self) -> u16 {
        self.machine.version()
    }

    /// The running daemon's pid (from `SO_PEERCRED`).
    pub fn peer_pid(&self) -> i32 {
        self.peer_pid
    }

    /// Receives the snapshot and the descriptors (the daemon pauses now), and
    /// restores the session and the filesystem from them. On failure the daemon is
    /// told (Nack) and serves on.
    ///
    /// # Errors
    /// [`HandoffError::Refused`] (the daemon could not snapshot),
    /// [`HandoffError::Snapshot`] (the bytes do not decode or validate, or the
    /// filesystem refused its state), [`HandoffError::Mount`] (the first descriptor
    /// is not `/dev/fuse`), [`HandoffError::Message`], timeouts and IO errors.
    pub fn receive<F: SnapshotFs>(self) -> Result<Restored<F>, HandoffError> {
        let Takeover {
            conn,
            mut machine,
            peer_pid,
            threads,
            timeouts,
        } = self;
        let ops = F::precopy();
        let precopy = machine.features() & message::FEATURE_PRECOPY != 0;
        if precopy {
            conn.rearm(timeouts.1);
        }
        let mut action = machine.handle(NewEvent::Receive {
            can_precopy: ops.is_some(),
        });
        // Pre-copy: the daemon still serves while the base crosses and decodes, and
        // while rounds of changes cross, each answered Ready, until the Snapshot.
        let mut precopied = None;
        let mut precopy_bytes = 0;
        let mut precopy_time = std::time::Duration::ZERO;
        let (meta, offset, r) = loop {
            let (a, r) = pump(&conn, &mut machine, action);
            action = match (a, r, ops) {
                (NewAction::DecodeBase, Some(r), Some(ops)) => {
                    let decoded = (ops.decode_base)(&r.body);
                    precopy_bytes = r.body.len();
                    drop(r.body);
                    precopy_time = r.started.elapsed();
                    let decoded = decoded.map(|b| {
                        precopied = Some(b);
                        precopy_time
                    });
                    machine.handle(NewEvent::Prepared(decoded))
                }
                (NewAction::ApplyRound, Some(r), Some(ops)) => {
                    let applied = match precopied.as_mut() {
                        Some(base) => (ops.apply_round)(base, &r.body),
                        None => Err(FormatError::BadPrecopy("a round before the base".into())),
                    };
                    precopy_bytes += r.body.len();
                    machine.handle(NewEvent::Prepared(applied.map(|()| r.started.elapsed())))
                }
                (NewAction::Restore { meta, offset }, Some(r), _) => break (meta, offset, r),
                (other, _, _) => return Err(abort_error(other, "receiving")),
            };
        };
        conn.rearm(timeouts.0);
        let received = Instant::now();
        let transfer = received - r.started;
        let bytes = r.body.get(offset..).unwrap_or_default();
        let ring = machine.features() & message::FEATURE_URING != 0;
        let restored = restore_from::<F>(&meta, bytes, r.fds, precopied, ops, ring);
        let (session, mount, ring) = match restored {
            Ok(x) => {
                let a = machine.handle(NewEvent::Restored(Ok(())));
                match a {
                    NewAction::Decide => x,
                    other => return Err(abort_error(other, "restoring")),
                }
            }
            Err(e) => {
                let a = machine.handle(NewEvent::Restored(Err(e)));
                return Err(abort_error(pump(&conn, &mut machine, a).0, "restoring"));
            }
        };
        fuse_session::fault::point("handoff-new-received");
        let stats = HandoffStats {
            version: machine.version(),
            snapshot_bytes: bytes.len(),
            fds: meta.fd_count() as usize,
            nodes: session.node_count(),
            handles: session.handle_count(),
            precopy_bytes,
            precopy_rounds: machine.precopy_rounds(),
            precopy: precopy_time,
            snapshot_sent: meta.since_pause,
            restore: received.elapsed(),
            transfer,
            peer_pid,
            ..HandoffStats::default()
        };
        Ok(Restored {
            conn,
            machine,
            session,
            mount,
            ring,
            stats,
            threads,
        })
    }
}

/// The mount from the received descriptors, and the session from the snapshot
/// bytes (and the pre-copied base, if any).
fn restore_from<F: SnapshotFs>(
    meta: &SnapshotMeta,
    bytes: &[u8],
    fds: Vec<std::os::fd::OwnedFd>,
    precopied: Option<Box<dyn std::any::Any + Send>>,
    ops: Option<crate::PrecopyOps<F>>,
    ring: bool,
) -> Result<(Session<F>, Mount, Option<RingArea>), HandoffError> {
    let mut fds = fds;
    // With FEATURE_URING the last descriptor is the ring area: map it first, at
    // its recorded address, before restoring maps anything large.
    let ring = if ring {
        let fd = fds
            .pop()
            .ok_or(HandoffError::Message(message::MessageError::BadBody {
                kind: Kind::Snapshot,
                why: "no ring area descriptor",
            }))?;
        let area = RingArea::from_fd(fd).map_err(|e| HandoffError::Io {
            what: "map the io_uring ring area",
            source: e,
        })?;
        // Refused before Ack (the old process serves on) when a queue has no slot
        // for this process's own entries.
        let serving = area.generation().saturating_sub(1);
        if let Some(q) =
            (0..area.geometry().queues as usize).find(|&q| area.free_slots(q, serving).is_empty())
        {
            return Err(HandoffError::Io {
                what: "take over the io_uring queues",
                source: std::io::Error::other(format!(
                    "queue {q} of the ring area has no free slot (the old process owns all \
                     {} of them)",
                    area.geometry().slots
                )),
            });
        }
        Some(area)
    } else {
        None
    };
    let mut fds = fds.into_iter();
    let device = fds
        .next()
        .ok_or(HandoffError::Message(message::MessageError::BadBody {
            kind: Kind::Snapshot,
            why: "no /dev/fuse descriptor",
        }))?;
    let auto_unmount_socket = if meta.has_unmount_socket {
        fds.next()
    } else {
        None
    };
    let mut restorer = FdRestorer::new(fds.collect());
    let method = match meta.method {
        WireMethod::Syscall => MountMethod::Syscall,
        WireMethod::Fusermount => MountMethod::Fusermount {
            auto_unmount: false,
        },
        WireMethod::FusermountAutoUnmount => MountMethod::Fusermount { auto_unmount: true },
    };
    let mountpoint = PathBuf::from(OsStr::from_bytes(&meta.mountpoint));
    let mount = Mount::from_parts(MountParts {
        device,
        mountpoint,
        method,
        connection_id: meta.connection_id,
        auto_unmount_socket,
    })
    .map_err(HandoffError::Mount)?;
    let session = match (precopied, ops) {
        (Some(base), Some(ops)) => (ops.restore)(base, bytes, &mut restorer),
        _ => crate::restore::<F>(bytes, &mut restorer),
    }?;
    Ok((session, mount, ring))
}

/// A session restored from the running daemon's snapshot, not yet served: the
/// daemon is paused and waits for [`Restored::commit`] (Ack) or
/// [`Restored::refuse`] (Nack).
pub struct Restored<F: SnapshotFs> {
    conn: Conn,
    machine: NewSide,
    session: Session<F>,
    mount: Mount,
    /// The old process's io_uring entries ([`message::FEATURE_URING`]).
    ring: Option<RingArea>,
    stats: HandoffStats,
    threads: usize,
}

impl<F: SnapshotFs> std::fmt::Debug for Restored<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restored")
            .field("mount", &self.mount)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<F: SnapshotFs> Restored<F> {
    /// The restored session (already initialized).
    pub fn session(&self) -> &Session<F> {
        &self.session
    }

    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        self.mount.mountpoint()
    }

    /// The statistics so far (the stall is known after [`Restored::commit`]).
    pub fn stats(&self) -> HandoffStats {
        self.stats
    }

    /// Declines (Nack with `reason`): the daemon resumes serving. The received
    /// descriptors are closed; nothing is unmounted.
    pub fn refuse(self, reason: &str) {
        let Restored {
            conn, mut machine, ..
        } = self;
        let a = machine.handle(NewEvent::Decline(reason.to_owned()));
        let _ = pump(&conn, &mut machine, a);
    }

    /// Acks, waits for the daemon's Commit, and only then starts serving.
    ///
    /// # Errors
    /// No Commit (the daemon rolled back, died or timed out): nothing was served
    /// here and the descriptors are closed; [`HandoffError::Serve`] if the workers
    /// could not start after Commit (the mount then has no server).
    pub fn commit(self) -> Result<(Running<F>, HandoffStats), HandoffError> {
        self.commit_then(|_| Ok(()))
    }

    /// As [`Restored::commit`], and after Commit, before any worker reads the
    /// mount, runs `prepare` on the server: e.g. to install a
    /// [`StepHook`](fuse_session::StepHook) ([`Server::set_hook`]) and start a
    /// journal, so that nothing is served unrecorded.
    ///
    /// # Errors
    /// As [`Restored::commit`]; [`HandoffError::Prepare`] if `prepare` failed (the
    /// daemon has committed: the mount then has no server, as when the workers
    /// cannot start).
    pub fn commit_then(
        self,
        prepare: impl FnOnce(&mut Server<F>) -> Result<(), String>,
    ) -> Result<(Running<F>, HandoffStats), HandoffError> {
        let Restored {
            conn,
            mut machine,
            session,
            mount,
            ring,
            mut stats,
            threads,
        } = self;
        stats.restore = stats.restore.max(std::time::Duration::from_nanos(1));
        let a = match machine.handle(NewEvent::Ack(stats.restore)) {
            NewAction::Send(bytes) => {
                let sent = conn.send("send Ack", &bytes, &[]);
                if sent.is_ok() {
                    fuse_session::fault::point("handoff-new-acked");
                }
                match sent {
                    Ok(()) => machine.handle(NewEvent::Sent),
                    Err(e) => machine.handle(NewEvent::Failed(e)),
                }
            }
            other => other,
        };
        let (since_pause, rings) = match pump(&conn, &mut machine, a) {
            (NewAction::Serve { since_pause }, _) => (since_pause, false),
            (NewAction::RegisterRings { since_pause }, _) => (since_pause, true),
            (other, _) => return Err(abort_error(other, "committing")),
        };
        let committed = Instant::now();
        fuse_session::fault::point("handoff-new-committed");
        let mut server = Server::from_parts(session, mount);
        prepare(&mut server).map_err(HandoffError::Prepare)?;
        let running = match (ring, rings) {
            (None, false) => server.spawn(threads).map_err(HandoffError::Serve)?,
            (Some(area), true) => serve_rings(server, area, &conn, &mut machine, committed)?,
            // The machine's features and the descriptors received agree
            // (`restore_from` takes the ring area exactly with FEATURE_URING).
            _ => {
                return Err(HandoffError::OutOfOrder {
                    state: "committing",
                    event: "the ring area and the agreed features disagree",
                })
            }
        };
        stats.stall = since_pause + committed.elapsed();
        fuse_session::fault::point("handoff-new-serving");
        Ok((running, stats))
    }
}

/// After Commit, over io_uring: registers this process's entries on the slots of
/// `area` the old process does not own, tells it (RingsReady), waits until it has
/// closed its rings (RingsReleased), then answers and adopts the requests its
/// entries held (docs/DESIGN.md, "Live handoff over io_uring").
fn serve_rings<F: SnapshotFs>(
    mut server: Server<F>,
    area: RingArea,
    conn: &Conn,
    machine: &mut NewSide,
    committed: Instant,
) -> Result<Running<F>, HandoffError> {
    server.take_ring_live(area);
    let mut o = UringOptions::default();
    o.required = true;
    o.restartable = true;
    let (running, a) = match server.spawn_uring(&o) {
        Ok(r) => {
            fuse_session::fault::point("handoff-new-rings-registered");
            let a = machine.handle(NewEvent::RingsRegistered(Ok(committed.elapsed())));
            (Some(r), a)
        }
        Err(e) => (
            None,
            machine.handle(NewEvent::RingsRegistered(Err(HandoffError::Serve(e)))),
        ),
    };
    let registered = committed.elapsed();
    // RingsReady, then RingsReleased (the machine answers AdoptRings however
    // that goes: committed, the old entries are adopted as they are).
    let running = match (running, pump(conn, machine, a).0) {
        (Some(r), NewAction::AdoptRings) => r,
        (_, other) => return Err(abort_error(other, "registering the rings")),
    };
    if let Some(e) = machine.after_commit_problem() {
        // The old process may still hold requests in its entries: adopt what
        // they hold anyway (its rings go when it exits), and say so.
        log::error!("after Commit: {e}; adopting the old process's entries as they are");
    }
    let released = committed.elapsed();
    let report = running.adopt_ring().map_err(HandoffError::Serve)?;
    log::info!(
        "io_uring handoff: adopted the old process's entries: {report:?}; after Commit: \
         registered in {registered:?}, the old rings released at {released:?}, adopted at {:?}",
        committed.elapsed()
    );
    Ok(running)
}

/// Takes the mount over from the daemon listening on `path`: connect, take the
/// pre-copied state if both sides support it, receive, restore, Ack, wait for
/// Commit, serve with `options.threads` workers. Returns the
/// running server and what the handoff cost.
///
/// # Errors
/// See [`Takeover::connect`], [`Takeover::receive`] and [`Restored::commit`]. On
/// every error before Commit the daemon serves on and nothing is served here.
pub fn take_over<F: SnapshotFs>(
    path: impl AsRef<Path>,
    options: &HandoffOptions,
) -> Result<(Running<F>, HandoffStats), HandoffError> {
    let options = options
        .clone()
        .precopy(options.precopy && F::precopy().is_some());
    Takeover::connect(path, &options)?.receive::<F>()?.commit()
}
