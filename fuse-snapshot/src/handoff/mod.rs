//! Live handoff: a new process takes a mounted, serving FUSE session over from the
//! running one on the same `/dev/fuse` connection, without unmounting and without
//! the applications on the mount seeing an error.
//!
//! # The protocol
//! The running (old) process listens on a control socket ([`UpgradeListener`], a
//! unix stream socket, mode 0600). A new process connects ([`take_over`] or, step
//! by step, [`Takeover`]):
//!
//! 1. Both sides check the peer's credentials (`SO_PEERCRED`): the same effective
//!    uid, or root. Otherwise the connection is refused.
//! 2. New → old: `Hello { min_version, max_version, pid }`, the snapshot format
//!    versions the new process reads. Old → new: `Accept { version }`, or
//!    `Refuse { reason }` if it cannot write any of them. Nothing was touched.
//!    With pre-copy agreed (both sides offer it and the filesystem implements
//!    [`Precopy`](crate::Precopy)), the old process first sends the session's
//!    tables and its filesystem's state while still serving (`Precopy`), the new
//!    one decodes and prepares them and answers `Ready`, and rounds of what
//!    changed meanwhile may follow (`PrecopyRound`, each answered `Ready`); the
//!    snapshot of step 3 then carries only what changed since the last round
//!    ([`crate::precopy`]). The pre-copy has its own, longer timeout
//!    ([`HandoffOptions::precopy_timeout`]): nothing is paused during it.
//! 3. The old process **pauses** its workers ([`Running::pause`]): each finishes
//!    the request it is serving and parks, so no request is in flight in this
//!    process. It snapshots the session and the filesystem ([`crate::snapshot`],
//!    [`SnapshotFs::save`](crate::SnapshotFs::save)) and sends `Snapshot`: the
//!    snapshot bytes (bounded), and with `SCM_RIGHTS` the `/dev/fuse` descriptor,
//!    the `auto_unmount` helper's socket if any (so `fusermount3` does not unmount
//!    when the old process exits) and the filesystem's own descriptors.
//! 4. The new process decodes, validates and restores ([`crate::restore`],
//!    [`Mount::from_parts`](fuse_session::dev::Mount::from_parts)) and answers
//!    `Ack`, or `Nack { reason }`.
//! 5. On `Ack` the old process answers `Commit`, stops its workers without
//!    unmounting ([`Running::stop`]) and returns; the new one starts serving only
//!    after it has received `Commit`. Two processes never serve at once.
//!
//! On `Nack`, a malformed message, end of stream (the new process died) or a
//! timeout, the old process drops the pause and serves on: nothing was lost,
//! because nothing was served elsewhere. A new process that never receives `Commit`
//! exits without serving.
//!
//! The bytes of each message are in [`message`]; every decision above (what to
//! answer, when to pause, commit or roll back) is made by the pure state machines
//! of [`machine`], which the socket drivers here feed. Requests that arrive during the
//! handoff wait in the kernel's queue; the stall — from the pause to the new
//! process serving — is measured on both sides ([`HandoffStats::stall`]).
//!
//! # What is not covered
//! If the new process dies *after* `Commit`, the mount has no server: requests
//! wait (or fail after the negotiated `request_timeout`) until a process that
//! holds the connection serves it. Recovering from that is the job of the keeper
//! and the journal, not of the handoff.
//!
//! # References
//! - `unix(7)` (`SCM_RIGHTS`, `SO_PEERCRED`)
//! - systemd's file descriptor store (`sd_pid_notify_with_fds`, `FDSTORE=1`) and
//!   libfuse's `fuse_session_fd`, for the same idea elsewhere
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fuse_session::dev::MountError;
use fuse_session::serve::ServeError;

use crate::format::FormatError;

mod conn;
mod listener;
pub mod machine;
pub mod message;
mod run;
mod takeover;

pub use listener::{serve_upgrades, HandoffOutcome, UpgradeListener};
pub use message::MessageError;
pub use run::{block_upgrade_signals, save_snapshot, serve_with_upgrades, Ended, SavedSnapshot};
pub use takeover::{take_over, Restored, Takeover};

#[allow(unused_imports)] // doc links
use fuse_session::serve::Running;

/// Settings of a handoff, on either side.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HandoffOptions {
    /// How long one handoff may take, from the connection to `Commit` — with
    /// pre-copy, from the connection to the pre-copy, and again from the new
    /// process's Ready to `Commit`. On the old side this bounds the stall of a
    /// failed handoff (the pause lasts at most this long before serving resumes).
    /// Default 5 s; keep it well under the negotiated `request_timeout`, if any.
    pub timeout: Duration,
    /// How long the pre-copy may take (sending, decoding and preparing the state
    /// while the old process serves: nothing is paused). Default 60 s.
    pub precopy_timeout: Duration,
    /// The largest snapshot accepted, in bytes. Default 1 GiB.
    pub max_snapshot: usize,
    /// The snapshot format versions the new process reads (sent in Hello). Default
    /// the versions this library reads.
    pub versions: (u16, u16),
    /// Worker threads the new process starts. Default 2.
    pub threads: usize,
    /// New side: offer to take a pre-copied filesystem state
    /// ([`crate::precopy`]), used when the running daemon's filesystem supports
    /// it. [`take_over`] offers it only if the filesystem type does. Old side:
    /// pre-copy only if this is true too (false for a journaled session, whose
    /// change recording the journal uses). Default true.
    pub precopy: bool,
    /// Old side: told just before `Commit` is sent, and when a handoff rolls back
    /// after that (see [`CommitObserver`]). Default none.
    pub commit_observer: Option<Arc<dyn CommitObserver>>,
}

/// Old side: sees the commit point of a handoff, e.g. to tell a supervisor which
/// process is the daemon from now on (`MAINPID=` to `fuse-live-keeper`) before the
/// new process starts serving.
pub trait CommitObserver: Send + Sync + fmt::Debug {
    /// The new process (`new_pid`, from `SO_PEERCRED`) has restored the snapshot
    /// and acked; `Commit` is sent next. An error aborts the handoff instead: no
    /// `Commit` is sent, the new process exits without serving, this one serves on.
    fn before_commit(&self, new_pid: i32) -> Result<(), String>;

    /// [`CommitObserver::before_commit`] succeeded, but `Commit` could not be sent
    /// (the new process died): this process serves on.
    fn rolled_back(&self);
}

impl Default for HandoffOptions {
    fn default() -> Self {
        HandoffOptions {
            timeout: Duration::from_secs(5),
            precopy_timeout: Duration::from_secs(60),
            max_snapshot: 1 << 30,
            versions: (1, crate::FORMAT_VERSION),
            threads: 2,
            precopy: true,
            commit_observer: None,
        }
    }
}

impl HandoffOptions {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`HandoffOptions::timeout`].
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets [`HandoffOptions::precopy_timeout`].
    pub fn precopy_timeout(mut self, t: Duration) -> Self {
        self.precopy_timeout = t;
        self
    }

    /// Sets [`HandoffOptions::max_snapshot`].
    pub fn max_snapshot(mut self, bytes: usize) -> Self {
        self.max_snapshot = bytes;
        self
    }

    /// Sets [`HandoffOptions::versions`].
    pub fn versions(mut self, min: u16, max: u16) -> Self {
        self.versions = (min, max);
        self
    }

    /// Sets [`HandoffOptions::threads`].
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Sets [`HandoffOptions::precopy`].
    pub fn precopy(mut self, on: bool) -> Self {
        self.precopy = on;
        self
    }

    /// Sets [`HandoffOptions::commit_observer`].
    pub fn commit_observer(mut self, observer: Arc<dyn CommitObserver>) -> Self {
        self.commit_observer = Some(observer);
        self
    }
}

/// What a handoff cost, as one side saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandoffStats {
    /// The snapshot format version used.
    pub version: u16,
    /// Snapshot size in bytes.
    pub snapshot_bytes: usize,
    /// Descriptors passed (the device included).
    pub fds: usize,
    /// Nodeids in the session.
    pub nodes: usize,
    /// Open handles in the session.
    pub handles: usize,
    /// Bytes of the pre-copy, rounds included (0 without pre-copy).
    pub precopy_bytes: usize,
    /// Rounds of changes sent after the pre-copy, while serving.
    pub precopy_rounds: u32,
    /// The pre-copy, before the pause. Old side: from starting to record changes
    /// to the new process's Ready. New side: from the first byte of the pre-copy
    /// to its decoded base.
    pub precopy: Duration,
    /// Old side: time to park the workers.
    pub parked_in: Duration,
    /// Old side: the time to take and encode the snapshot (session tables and
    /// [`SnapshotFs::save`](crate::SnapshotFs::save)), after parking.
    pub encode: Duration,
    /// New side: the time from the first byte of the snapshot message to its last.
    pub transfer: Duration,
    /// From the pause to the snapshot sent (the old process's part).
    pub snapshot_sent: Duration,
    /// The new process's decode, validate and restore time (reported in Ack).
    pub restore: Duration,
    /// The stall: from the pause until requests are served again. Old side: until
    /// it sent Commit (the new process serves right after). New side: until its
    /// workers were started.
    pub stall: Duration,
    /// The other process's pid.
    pub peer_pid: i32,
}

/// Why a handoff, or listening for one, failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandoffError {
    /// A socket or file operation failed.
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Another process already listens on the upgrade socket.
    AlreadyListening(PathBuf),
    /// The upgrade socket path exists and is not a socket: it is left alone.
    NotASocket(PathBuf),
    /// Nobody listens on the upgrade socket.
    NoListener(PathBuf),
    /// The peer runs as another user (and neither side is root).
    PeerNotTrusted {
        /// The peer's uid.
        peer_uid: u32,
        /// The peer's pid.
        peer_pid: i32,
        /// Our effective uid.
        our_uid: u32,
    },
    /// The peer sent bytes that are not a valid message at this step.
    Message(MessageError),
    /// No common snapshot format version.
    VersionMismatch {
        /// The versions the new process reads.
        wanted: (u16, u16),
        /// The version the old process writes.
        offered: u16,
    },
    /// The other side refused (its reason).
    Refused(String),
    /// The snapshot could not be written or read.
    Snapshot(FormatError),
    /// The received descriptors do not match the message, or the first is not
    /// `/dev/fuse`.
    Mount(MountError),
    /// The new process could not start serving.
    Serve(ServeError),
    /// New side: what [`Restored::commit_then`] was to do after Commit, before
    /// serving, failed (the mount has no server).
    Prepare(String),
    /// A step took longer than the handoff timeout.
    Timeout(&'static str),
    /// The peer closed the connection.
    PeerGone(&'static str),
    /// Old side: the mount is no longer served here (unmounted, or already handed
    /// over).
    NotServing,
    /// Old side: the handoff failed and this process serves on (nothing lost).
    RolledBack(Box<HandoffError>),
    /// The upgrade listener was closed.
    Closed,
    /// Old side: the mount is served over io_uring, whose queues another process
    /// cannot take over; serve it with `Server::spawn` to make it replaceable.
    BackendUnsupported,
    /// New side: the running daemon agreed to pre-copy, but this filesystem type
    /// does not implement [`Precopy`](crate::Precopy) (connect with
    /// [`HandoffOptions::precopy`] false, or use [`take_over`], which offers it
    /// only when the type supports it).
    PrecopyUnsupported,
    /// A handoff state machine ([`machine`]) was fed an event that does not fit
    /// its state: a bug of the code driving it, not of the peer.
    OutOfOrder {
        /// The machine's state.
        state: &'static str,
        /// The event.
        event: &'static str,
    },
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffError::Io { what, source } => write!(f, "handoff: cannot {what}: {source}"),
            HandoffError::AlreadyListening(p) => write!(
                f,
                "a daemon already listens on {}: take over from it (--takeover), or use \
                 another socket path",
                p.display()
            ),
            HandoffError::NotASocket(p) => write!(
                f,
                "{} exists and is not a socket; it was left alone: remove it or choose \
                 another upgrade socket path",
                p.display()
            ),
            HandoffError::NoListener(p) => write!(
                f,
                "nobody listens on {}: is the daemon running with this upgrade socket?",
                p.display()
            ),
            HandoffError::PeerNotTrusted {
                peer_uid,
                peer_pid,
                our_uid,
            } => write!(
                f,
                "refused a handoff with pid {peer_pid} running as uid {peer_uid}: only the \
                 same user (uid {our_uid}) or root may take a mount over"
            ),
            HandoffError::Message(e) => write!(f, "handoff: {e}"),
            HandoffError::VersionMismatch { wanted, offered } => write!(
                f,
                "no common snapshot format: the new process reads versions {}..={}, the \
                 running one writes {offered}; upgrade through a release that reads both",
                wanted.0, wanted.1
            ),
            HandoffError::Refused(why) => write!(f, "handoff refused by the peer: {why}"),
            HandoffError::Snapshot(e) => write!(f, "handoff snapshot: {e}"),
            HandoffError::Mount(e) => write!(f, "handoff: the received mount is unusable: {e}"),
            // Not a handoff's: serving failed (serve_with_upgrades returns it).
            HandoffError::Serve(e @ ServeError::ThreadFailed { .. }) => write!(f, "{e}"),
            HandoffError::Serve(e) => write!(f, "handoff: cannot serve the mount: {e}"),
            HandoffError::Prepare(e) => write!(
                f,
                "handoff: committed, but preparing to serve failed (the mount has no server): {e}"
            ),
            HandoffError::Timeout(what) => write!(
                f,
                "handoff timed out while waiting to {what}; the running daemon keeps \
                 serving (raise the handoff timeout if the state is very large)"
            ),
            HandoffError::PeerGone(what) => {
                write!(
                    f,
                    "the other process closed the connection while waiting to {what}"
                )
            }
            HandoffError::NotServing => {
                write!(f, "the mount is no longer served by this process")
            }
            HandoffError::RolledBack(e) => {
                write!(
                    f,
                    "handoff failed, this process serves on (nothing lost): {e}"
                )
            }
            HandoffError::Closed => write!(f, "the upgrade listener was closed"),
            HandoffError::BackendUnsupported => write!(
                f,
                "this mount is served over io_uring, whose queues cannot be handed to \
                 another process (docs/DESIGN.md); serve it with Server::spawn (the \
                 /dev/fuse workers) to make the daemon replaceable"
            ),
            HandoffError::PrecopyUnsupported => write!(
                f,
                "the running daemon sends a pre-copied state but this filesystem type \
                 cannot take one; connect without offering pre-copy"
            ),
            HandoffError::OutOfOrder { state, event } => write!(
                f,
                "handoff driver error: event {event} while {state} (a bug in the program \
                 driving the handoff, not in the peer)"
            ),
        }
    }
}

impl std::error::Error for HandoffError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandoffError::Io { source, .. } => Some(source),
            HandoffError::Message(e) => Some(e),
            HandoffError::Snapshot(e) => Some(e),
            HandoffError::Mount(e) => Some(e),
            HandoffError::Serve(e) => Some(e),
            HandoffError::RolledBack(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<MessageError> for HandoffError {
    fn from(e: MessageError) -> Self {
        HandoffError::Message(e)
    }
}

impl From<FormatError> for HandoffError {
    fn from(e: FormatError) -> Self {
        HandoffError::Snapshot(e)
    }
}
