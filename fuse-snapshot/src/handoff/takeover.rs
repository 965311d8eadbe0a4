//! The new process's side: [`take_over`], or step by step with [`Takeover`].
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fuse_session::dev::{Mount, MountMethod, MountParts};
use fuse_session::serve::{Running, Server};
use fuse_session::Session;

use super::conn::Conn;
use super::message::{self, Hello, Kind, SnapshotMeta, WireMethod};
use super::{HandoffError, HandoffOptions, HandoffStats};
use crate::{FdRestorer, SnapshotFs};

/// A connection to a running daemon that has agreed to hand its mount over (Hello
/// and Accept done, nothing paused yet). Next: [`Takeover::receive`].
pub struct Takeover {
    conn: Conn,
    version: u16,
    features: u32,
    peer_pid: i32,
    threads: usize,
    timeouts: (std::time::Duration, std::time::Duration),
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("version", &self.version)
            .field("features", &self.features)
            .field("peer_pid", &self.peer_pid)
            .finish_non_exhaustive()
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
        let peer = conn.check_peer()?;
        let (min_version, max_version) = options.versions;
        let hello = Hello {
            min_version,
            max_version,
            pid: std::process::id(),
            features: if options.precopy {
                message::FEATURE_PRECOPY
            } else {
                0
            },
        };
        let sent = conn.send("send Hello", &hello.encode(), &[]);
        // A daemon that refuses at once (e.g. our uid) may close before reading
        // Hello: its Refuse is still there to read, and says more than EPIPE.
        let r = match conn.expect(
            "read Accept",
            &[Kind::Accept, Kind::Refuse],
            "Accept or Refuse",
        ) {
            Ok(r) => r,
            Err(e) => return Err(sent.err().unwrap_or(e)),
        };
        if r.header.kind == Kind::Refuse {
            return Err(HandoffError::Refused(message::decode_reason(&r.body)));
        }
        let (version, features) = message::decode_accept(&r.body)?;
        let unoffered = features & !hello.features;
        if unoffered != 0 || !(min_version..=max_version).contains(&version) {
            if unoffered != 0 {
                let e = HandoffError::Message(message::MessageError::BadBody {
                    kind: Kind::Accept,
                    why: "accepts a feature that was not offered",
                });
                let _ = conn.send(
                    "send Nack",
                    &message::encode_reason(Kind::Nack, &e.to_string()),
                    &[],
                );
                return Err(e);
            }
            let e = HandoffError::VersionMismatch {
                wanted: (min_version, max_version),
                offered: version,
            };
            let _ = conn.send(
                "send Nack",
                &message::encode_reason(Kind::Nack, &e.to_string()),
                &[],
            );
            return Err(e);
        }
        Ok(Takeover {
            conn,
            version,
            features,
            peer_pid: peer.pid,
            threads: options.threads,
            timeouts: (options.timeout, options.precopy_timeout),
        })
    }

    /// Whether the daemon will pre-copy its filesystem's state before pausing.
    pub fn precopy(&self) -> bool {
        self.features & message::FEATURE_PRECOPY != 0
    }

    /// The snapshot format version agreed.
    pub fn version(&self) -> u16 {
        self.version
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
        match self.receive_inner::<F>() {
            Ok(r) => Ok(r),
            Err((conn, e)) => {
                if let Some(conn) = conn {
                    let _ = conn.send(
                        "send Nack",
                        &message::encode_reason(Kind::Nack, &e.to_string()),
                        &[],
                    );
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn receive_inner<F: SnapshotFs>(self) -> Result<Restored<F>, (Option<Conn>, HandoffError)> {
        let Takeover {
            conn,
            version,
            features,
            peer_pid,
            threads,
            timeouts,
        } = self;
        // Pre-copy: the daemon still serves while the base crosses and decodes.
        let mut precopied = None;
        let mut precopy_bytes = 0;
        let mut precopy_time = std::time::Duration::ZERO;
        if features & message::FEATURE_PRECOPY != 0 {
            let Some(ops) = F::precopy() else {
                return Err((Some(conn), HandoffError::PrecopyUnsupported));
            };
            conn.rearm(timeouts.1);
            let r = match conn.expect(
                "read the pre-copied state",
                &[Kind::Precopy, Kind::Refuse],
                "Precopy",
            ) {
                Ok(r) => r,
                Err(e) => return Err((Some(conn), e)),
            };
            if r.header.kind == Kind::Refuse {
                return Err((None, HandoffError::Refused(message::decode_reason(&r.body))));
            }
            let base = match (ops.decode_base)(&r.body) {
                Ok(b) => b,
                Err(e) => return Err((Some(conn), HandoffError::Snapshot(e))),
            };
            precopy_bytes = r.body.len();
            drop(r.body);
            precopy_time = r.started.elapsed();
            if let Err(e) = conn.send(
                "send Ready",
                &message::encode_duration(Kind::Ready, precopy_time),
                &[],
            ) {
                return Err((None, e));
            }
            precopied = Some((ops, base));
        }
        // Rounds of changes while the daemon still serves, each answered Ready,
        // until the Snapshot (the daemon paused).
        let mut rounds = 0;
        let r = loop {
            let r = match conn.expect(
                "read the snapshot",
                &[Kind::Snapshot, Kind::Refuse, Kind::PrecopyRound],
                "Snapshot",
            ) {
                Ok(r) => r,
                Err(e) => return Err((Some(conn), e)),
            };
            if r.header.kind != Kind::PrecopyRound {
                break r;
            }
            let Some((ops, base)) = precopied.as_mut() else {
                let e = HandoffError::Message(message::MessageError::Unexpected {
                    got: Kind::PrecopyRound,
                    expected: "Snapshot (no pre-copy was agreed)",
                });
                return Err((Some(conn), e));
            };
            if let Err(e) = (ops.apply_round)(base, &r.body) {
                return Err((Some(conn), HandoffError::Snapshot(e)));
            }
            rounds += 1;
            precopy_bytes += r.body.len();
            if let Err(e) = conn.send(
                "send Ready",
                &message::encode_duration(Kind::Ready, r.started.elapsed()),
                &[],
            ) {
                return Err((None, e));
            }
        };
        conn.rearm(timeouts.0);
        if r.header.kind == Kind::Refuse {
            return Err((None, HandoffError::Refused(message::decode_reason(&r.body))));
        }
        let received = Instant::now();
        let transfer = received - r.started;
        let (meta, bytes) = match SnapshotMeta::decode(&r.body) {
            Ok(x) => x,
            Err(e) => return Err((Some(conn), e.into())),
        };
        if meta.fd_count() != r.fds.len() as u64 {
            let e = HandoffError::Message(message::MessageError::BadBody {
                kind: Kind::Snapshot,
                why: "the number of descriptors differs from what the message announces",
            });
            return Err((Some(conn), e));
        }
        let mut fds = r.fds.into_iter();
        let Some(device) = fds.next() else {
            return Err((
                Some(conn),
                HandoffError::Message(message::MessageError::BadBody {
                    kind: Kind::Snapshot,
                    why: "no /dev/fuse descriptor",
                }),
            ));
        };
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
        let mount = match Mount::from_parts(MountParts {
            device,
            mountpoint,
            method,
            connection_id: meta.connection_id,
            auto_unmount_socket,
        }) {
            Ok(m) => m,
            Err(e) => return Err((Some(conn), HandoffError::Mount(e))),
        };
        let restored = match precopied {
            Some((ops, base)) => (ops.restore)(base, bytes, &mut restorer),
            None => crate::restore::<F>(bytes, &mut restorer),
        };
        let session = match restored {
            Ok(s) => s,
            Err(e) => return Err((Some(conn), HandoffError::Snapshot(e))),
        };
        let stats = HandoffStats {
            version,
            snapshot_bytes: bytes.len(),
            fds: meta.fd_count() as usize,
            nodes: session.node_count(),
            handles: session.handle_count(),
            precopy_bytes,
            precopy_rounds: rounds,
            precopy: precopy_time,
            snapshot_sent: meta.since_pause,
            restore: received.elapsed(),
            transfer,
            peer_pid,
            ..HandoffStats::default()
        };
        Ok(Restored {
            conn,
            session,
            mount,
            stats,
            threads,
        })
    }
}

/// A session restored from the running daemon's snapshot, not yet served: the
/// daemon is paused and waits for [`Restored::commit`] (Ack) or
/// [`Restored::refuse`] (Nack).
pub struct Restored<F: SnapshotFs> {
    conn: Conn,
    session: Session<F>,
    mount: Mount,
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
        let _ = self.conn.send(
            "send Nack",
            &message::encode_reason(Kind::Nack, reason),
            &[],
        );
    }

    /// Acks, waits for the daemon's Commit, and only then starts serving.
    ///
    /// # Errors
    /// No Commit (the daemon rolled back, died or timed out): nothing was served
    /// here and the descriptors are closed; [`HandoffError::Serve`] if the workers
    /// could not start after Commit (the mount then has no server).
    pub fn commit(self) -> Result<(Running<F>, HandoffStats), HandoffError> {
        let Restored {
            conn,
            session,
            mount,
            mut stats,
            threads,
        } = self;
        stats.restore = stats.restore.max(std::time::Duration::from_nanos(1));
        conn.send(
            "send Ack",
            &message::encode_duration(Kind::Ack, stats.restore),
            &[],
        )?;
        let r = conn.expect("read Commit", &[Kind::Commit], "Commit")?;
        let committed = Instant::now();
        let since_pause = message::decode_duration(Kind::Commit, &r.body)?;
        let running = Server::from_parts(session, mount)
            .spawn(threads)
            .map_err(HandoffError::Serve)?;
        stats.stall = since_pause + committed.elapsed();
        Ok((running, stats))
    }
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
