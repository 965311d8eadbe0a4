//! The handoff protocol's decisions as two pure state machines, one per side,
//! apart from the socket driver that feeds them (`listener.rs` and
//! `takeover.rs`). No sockets, no clock, no filesystem here: so a keeper, a test
//! or a fuzzer can run a whole handoff, or an adversarial one, in memory.
//!
//! Each machine is driven one event at a time: [`OldSide::handle`] and
//! [`NewSide::handle`] take what just happened (a message received, a send
//! done, the transport failed, a local step's result) and answer with exactly
//! one action (receive the next message, send these bytes, take the snapshot,
//! commit, abort with this error ...). The driver performs the action and feeds
//! its outcome back. Once a machine has answered a final action
//! ([`OldAction::Committed`], [`OldAction::Abort`], [`NewAction::Serve`],
//! [`NewAction::Abort`]) it is [finished](OldSide::is_finished) and answers every
//! further event with [`HandoffError::OutOfOrder`]; so does an event that does
//! not fit the state (a driver bug, never a peer's doing).
//!
//! The machines decode every small message themselves (Hello, Accept, Refuse,
//! Ready, Ack, Nack, Commit, the fixed part of a Snapshot) and encode every small
//! message they answer, so a peer's bytes are judged in one place. Bulk bodies
//! (pre-copy, rounds, the snapshot bytes) stay with the driver, which the machine
//! tells what to do with them.
//!
//! Over io_uring ([`FEATURE_URING`]) Commit is followed by two steps the machines
//! model too: the new process fills the paused old one's available entries and
//! registers its own ([`NewAction::RegisterRings`]), says so (RingsReady), the
//! old one closes its rings ([`OldAction::ReleaseRings`]) and says so
//! (RingsReleased), and the new one adopts the old entries
//! ([`NewAction::AdoptRings`]). Both sides are committed by then: a failure there
//! (the peer gone, a wrong message) never rolls back; it is kept
//! ([`OldSide::after_commit_problem`], [`NewSide::after_commit_problem`]) for
//! the log and the steps go on, as the drivers did before these states existed.
//!
//! What the driver keeps to itself: the peer credential check (it feeds the
//! result), the deadlines (the pre-copy deadline from [`OldAction::TakeBase`] and
//! from [`NewEvent::Receive`] with pre-copy agreed; the ordinary one again from
//! [`OldAction::PauseAndSnapshot`] and from the Snapshot's arrival), and the
//! durations it measures (Ready, Ack and Commit carry them).
use std::time::Duration;

use super::message::{
    self, Hello, Kind, MessageError, SnapshotMeta, FEATURE_PRECOPY, FEATURE_URING,
};
use super::HandoffError;
use crate::format::FormatError;

/// A message the driver received: its kind, body and how many descriptors rode
/// on it. The header was already checked ([`message::parse_header`]); a header
/// that failed is fed as [`OldEvent::Failed`] / [`NewEvent::Failed`] with
/// [`HandoffError::Message`].
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// The kind.
    pub kind: Kind,
    /// The body.
    pub body: &'a [u8],
    /// How many descriptors arrived with it.
    pub fds: usize,
}

fn refuse_bytes(e: &HandoffError) -> Vec<u8> {
    message::encode_reason(Kind::Refuse, &e.to_string())
}

fn nack_bytes(e: &HandoffError) -> Vec<u8> {
    message::encode_reason(Kind::Nack, &e.to_string())
}

fn unexpected(got: Kind, expected: &'static str) -> HandoffError {
    HandoffError::Message(MessageError::Unexpected { got, expected })
}

/// Checks that `m` is one of `kinds` and carries descriptors only if a Snapshot.
fn check_kind(
    m: &Incoming<'_>,
    kinds: &[Kind],
    expected: &'static str,
) -> Result<(), HandoffError> {
    if !kinds.contains(&m.kind) {
        return Err(unexpected(m.kind, expected));
    }
    if m.kind != Kind::Snapshot && m.fds != 0 {
        return Err(HandoffError::Message(MessageError::BadBody {
            kind: m.kind,
            why: "descriptors on a message that carries none",
        }));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Old side
// ---------------------------------------------------------------------------

/// What the old (running) process brings to a handoff.
#[derive(Clone, Copy, Debug)]
pub struct OldConfig {
    /// The snapshot format version it writes.
    pub version: u16,
    /// Whether its filesystem implements pre-copy.
    pub precopy: bool,
    /// Whether the mount is served over io_uring with its entries in anonymous
    /// memory (not transferable: refused).
    pub uring: bool,
    /// Whether the mount is served over io_uring with its entries in a memfd: handed
    /// over to a new process that offers [`FEATURE_URING`], refused to others.
    pub uring_area: bool,
    /// The largest pre-copy base or round it sends.
    pub max_snapshot: usize,
}

/// What happened, on the old side.
#[derive(Debug)]
pub enum OldEvent<'a> {
    /// The peer's credentials were checked (first event).
    PeerChecked(Result<(), HandoffError>),
    /// A message arrived (after [`OldAction::Recv`]).
    Received(Incoming<'a>),
    /// The transport failed: end of stream, timeout, IO error, a malformed header.
    Failed(HandoffError),
    /// What the last action sent went out.
    Sent,
    /// [`OldAction::TakeBase`] done: the base's length, or why not.
    BaseTaken(Result<usize, FormatError>),
    /// [`OldAction::TakeRound`] done: a round's length, none (the filesystem has
    /// no more rounds), or why not.
    RoundTaken(Result<Option<usize>, FormatError>),
    /// [`OldAction::PauseAndSnapshot`] done: the snapshot's length, or why not.
    SnapshotTaken(Result<usize, HandoffError>),
    /// [`OldAction::ReleaseRings`] done: this process's rings are closed; the
    /// time since the pause (sent in RingsReleased).
    RingsReleased(Duration),
}

/// What to do next, on the old side.
#[derive(Debug)]
pub enum OldAction {
    /// Receive one message; feed [`OldEvent::Received`] or [`OldEvent::Failed`].
    Recv,
    /// Send these bytes; feed [`OldEvent::Sent`] or [`OldEvent::Failed`].
    Send(Vec<u8>),
    /// Start the pre-copy while serving (the pre-copy deadline starts): take the
    /// base; feed [`OldEvent::BaseTaken`].
    TakeBase,
    /// Send the base (`Kind::Precopy`) or the round (`Kind::PrecopyRound`) just
    /// taken, header and body; feed [`OldEvent::Sent`] or [`OldEvent::Failed`].
    SendPrecopy(Kind),
    /// Take a round of changes while serving; feed [`OldEvent::RoundTaken`].
    TakeRound,
    /// Pause the workers (the ordinary deadline starts again) and take the
    /// snapshot (the changes since the pre-copy, with one); feed
    /// [`OldEvent::SnapshotTaken`].
    PauseAndSnapshot,
    /// Send the Snapshot message with the descriptors; feed [`OldEvent::Sent`] or
    /// [`OldEvent::Failed`].
    SendSnapshot,
    /// The new process restored (its restore time): send Commit with the stall;
    /// feed [`OldEvent::Sent`] or [`OldEvent::Failed`].
    Commit {
        /// The restore time the new process reported in Ack.
        restore: Duration,
    },
    /// Over io_uring, after Commit (and RingsReady, or its failure:
    /// [`OldSide::after_commit_problem`]): stop the workers for good without
    /// unmounting, which closes this process's rings; feed
    /// [`OldEvent::RingsReleased`].
    ReleaseRings,
    /// Final: Commit went out (over io_uring: and RingsReleased, or its failure).
    /// Stop the workers for good, without unmounting (if
    /// [`OldAction::ReleaseRings`] has not).
    Committed,
    /// Final: the handoff failed. Send `refuse` if any (best effort), drop the
    /// pause if one is held (serving resumes) and report `error`.
    Abort {
        /// Why (wrapped in [`HandoffError::RolledBack`] once paused).
        error: HandoffError,
        /// A Refuse to send first, if the peer should be told.
        refuse: Option<Vec<u8>>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OldState {
    CheckingPeer,
    AwaitHello,
    SendingAccept,
    TakingBase,
    SendingPrecopy(Kind, usize),
    AwaitReady(Kind, usize),
    TakingRound,
    Snapshotting,
    SendingSnapshot,
    AwaitAck,
    SendingCommit,
    AwaitRingsReady,
    ReleasingRings,
    SendingRingsReleased,
    Done,
}

impl OldState {
    fn name(self) -> &'static str {
        match self {
            OldState::CheckingPeer => "checking the peer",
            OldState::AwaitHello => "waiting for Hello",
            OldState::SendingAccept => "sending Accept",
            OldState::TakingBase => "taking the pre-copy",
            OldState::SendingPrecopy(..) => "sending the pre-copy",
            OldState::AwaitReady(..) => "waiting for Ready",
            OldState::TakingRound => "taking a pre-copy round",
            OldState::Snapshotting => "taking the snapshot",
            OldState::SendingSnapshot => "sending the snapshot",
            OldState::AwaitAck => "waiting for Ack",
            OldState::SendingCommit => "sending Commit",
            OldState::AwaitRingsReady => "waiting for RingsReady",
            OldState::ReleasingRings => "releasing the rings",
            OldState::SendingRingsReleased => "sending RingsReleased",
            OldState::Done => "finished",
        }
    }

    /// The fault point (`fuse_session::fault`) hit each time an event leaves
    /// the machine in this state: the step the driver is about to perform.
    fn fault_point(self) -> &'static str {
        match self {
            // The machine starts here and no event leaves it here: never hit.
            OldState::CheckingPeer => "handoff-old-checking-peer",
            OldState::AwaitHello => "handoff-old-await-hello",
            OldState::SendingAccept => "handoff-old-sending-accept",
            OldState::TakingBase => "handoff-old-taking-base",
            OldState::SendingPrecopy(..) => "handoff-old-sending-precopy",
            OldState::AwaitReady(..) => "handoff-old-await-ready",
            OldState::TakingRound => "handoff-old-taking-round",
            OldState::Snapshotting => "handoff-old-snapshotting",
            OldState::SendingSnapshot => "handoff-old-sending-snapshot",
            OldState::AwaitAck => "handoff-old-await-ack",
            OldState::SendingCommit => "handoff-old-sending-commit",
            OldState::AwaitRingsReady => "handoff-old-await-rings-ready",
            OldState::ReleasingRings => "handoff-old-releasing-rings",
            OldState::SendingRingsReleased => "handoff-old-sending-rings-released",
            OldState::Done => "handoff-old-done",
        }
    }

    fn paused(self) -> bool {
        matches!(
            self,
            OldState::Snapshotting
                | OldState::SendingSnapshot
                | OldState::AwaitAck
                | OldState::SendingCommit
                | OldState::AwaitRingsReady
                | OldState::ReleasingRings
                | OldState::SendingRingsReleased
        )
    }

    /// After Commit went out: nothing rolls back any more.
    fn committed(self) -> bool {
        matches!(
            self,
            OldState::AwaitRingsReady | OldState::ReleasingRings | OldState::SendingRingsReleased
        )
    }
}

fn event_name(e: &OldEvent<'_>) -> &'static str {
    match e {
        OldEvent::PeerChecked(_) => "PeerChecked",
        OldEvent::Received(_) => "Received",
        OldEvent::Failed(_) => "Failed",
        OldEvent::Sent => "Sent",
        OldEvent::BaseTaken(_) => "BaseTaken",
        OldEvent::RoundTaken(_) => "RoundTaken",
        OldEvent::SnapshotTaken(_) => "SnapshotTaken",
        OldEvent::RingsReleased(_) => "RingsReleased",
    }
}

/// The old (running) process's side of a handoff: see the [module docs](self).
#[derive(Debug)]
pub struct OldSide {
    config: OldConfig,
    state: OldState,
    hello: Option<Hello>,
    precopy: bool,
    precopy_bytes: usize,
    rounds: u32,
    /// The first thing that went wrong after Commit (io_uring steps).
    after_commit: Option<HandoffError>,
}

impl OldSide {
    /// A handoff about to start; the first event is [`OldEvent::PeerChecked`].
    pub fn new(config: OldConfig) -> OldSide {
        OldSide {
            config,
            state: OldState::CheckingPeer,
            hello: None,
            precopy: false,
            precopy_bytes: 0,
            rounds: 0,
            after_commit: None,
        }
    }

    /// The first thing that went wrong after Commit over io_uring (RingsReady
    /// missing or malformed, RingsReleased not sent, an event out of order): the
    /// handoff is committed all the same; the driver logs it.
    pub fn after_commit_problem(&self) -> Option<&HandoffError> {
        self.after_commit.as_ref()
    }

    /// Keeps the first problem after Commit.
    fn note(&mut self, e: HandoffError) {
        self.after_commit.get_or_insert(e);
    }

    /// The Hello received, once it is.
    pub fn hello(&self) -> Option<Hello> {
        self.hello
    }

    /// Whether pre-copy was agreed.
    pub fn precopy(&self) -> bool {
        self.precopy
    }

    /// Bytes of pre-copy sent and answered Ready, rounds included.
    pub fn precopy_bytes(&self) -> usize {
        self.precopy_bytes
    }

    /// Pre-copy rounds sent and answered Ready.
    pub fn precopy_rounds(&self) -> u32 {
        self.rounds
    }

    /// Whether the workers are paused (from [`OldAction::PauseAndSnapshot`] until a
    /// final action).
    pub fn paused(&self) -> bool {
        self.state.paused()
    }

    /// Whether a final action was given.
    pub fn is_finished(&self) -> bool {
        self.state == OldState::Done
    }

    /// Before Accept went out, the peer is told why (Refuse); after it, the peer
    /// only learns from the connection closing, except for local failures.
    fn fail(&mut self, error: HandoffError, tell: bool) -> OldAction {
        let paused = self.state.paused();
        self.state = OldState::Done;
        let refuse = tell.then(|| refuse_bytes(&error));
        let error = if paused {
            HandoffError::RolledBack(Box::new(error))
        } else {
            error
        };
        OldAction::Abort { error, refuse }
    }

    /// A failure of the peer or the transport.
    fn peer_failed(&mut self, error: HandoffError) -> OldAction {
        let tell = matches!(self.state, OldState::CheckingPeer | OldState::AwaitHello);
        self.fail(error, tell)
    }

    /// A failure here (the peer is told).
    fn local_failed(&mut self, error: HandoffError) -> OldAction {
        self.fail(error, true)
    }

    fn out_of_order(&mut self, event: &'static str) -> OldAction {
        let state = self.state.name();
        let e = HandoffError::OutOfOrder { state, event };
        if self.state.committed() {
            // Committed: never roll back; the workers stop for good.
            self.note(e);
            self.state = OldState::Done;
            return OldAction::Committed;
        }
        if self.state == OldState::Done {
            return OldAction::Abort {
                error: e,
                refuse: None,
            };
        }
        self.local_failed(e)
    }

    /// Takes one event, answers one action.
    ///
    /// Fault point (`fuse_session::fault`): `handoff-old-STATE` for the state
    /// the event left the machine in, before the action is performed.
    pub fn handle(&mut self, event: OldEvent<'_>) -> OldAction {
        let action = self.step(event);
        fuse_session::fault::point(self.state.fault_point());
        action
    }

    fn step(&mut self, event: OldEvent<'_>) -> OldAction {
        use OldState as S;
        let name = event_name(&event);
        match (self.state, event) {
            (S::Done, _) => self.out_of_order(name),
            // After Commit over io_uring: the rings are released whatever the
            // peer does.
            (S::AwaitRingsReady, OldEvent::Failed(e)) => {
                self.note(e);
                self.state = S::ReleasingRings;
                OldAction::ReleaseRings
            }
            (S::AwaitRingsReady, OldEvent::Received(m)) => {
                let ready = check_kind(&m, &[Kind::RingsReady], "RingsReady").and_then(|()| {
                    message::decode_duration(Kind::RingsReady, m.body)
                        .map(drop)
                        .map_err(HandoffError::from)
                });
                if let Err(e) = ready {
                    self.note(e);
                }
                self.state = S::ReleasingRings;
                OldAction::ReleaseRings
            }
            (S::ReleasingRings, OldEvent::RingsReleased(since_pause)) => {
                self.state = S::SendingRingsReleased;
                OldAction::Send(message::encode_duration(Kind::RingsReleased, since_pause))
            }
            (S::ReleasingRings, OldEvent::Failed(e)) => {
                self.note(e);
                self.state = S::Done;
                OldAction::Committed
            }
            (S::SendingRingsReleased, OldEvent::Sent) => {
                self.state = S::Done;
                OldAction::Committed
            }
            (S::SendingRingsReleased, OldEvent::Failed(e)) => {
                self.note(e);
                self.state = S::Done;
                OldAction::Committed
            }
            (_, OldEvent::Failed(e)) => self.peer_failed(e),
            (S::CheckingPeer, OldEvent::PeerChecked(r)) => match r {
                Ok(()) => {
                    self.state = S::AwaitHello;
                    OldAction::Recv
                }
                Err(e) => self.peer_failed(e),
            },
            (S::AwaitHello, OldEvent::Received(m)) => self.on_hello(m),
            (S::SendingAccept, OldEvent::Sent) => {
                if self.precopy {
                    self.state = S::TakingBase;
                    OldAction::TakeBase
                } else {
                    self.state = S::Snapshotting;
                    OldAction::PauseAndSnapshot
                }
            }
            (S::TakingBase, OldEvent::BaseTaken(r)) => match r {
                Ok(len) => self.send_precopy(Kind::Precopy, len),
                Err(e) => self.local_failed(HandoffError::Snapshot(e)),
            },
            (S::SendingPrecopy(kind, len), OldEvent::Sent) => {
                self.state = S::AwaitReady(kind, len);
                OldAction::Recv
            }
            (S::AwaitReady(kind, len), OldEvent::Received(m)) => self.on_ready(m, kind, len),
            (S::TakingRound, OldEvent::RoundTaken(r)) => match r {
                Ok(Some(len)) => self.send_precopy(Kind::PrecopyRound, len),
                Ok(None) => {
                    self.state = S::Snapshotting;
                    OldAction::PauseAndSnapshot
                }
                Err(e) => self.local_failed(HandoffError::Snapshot(e)),
            },
            (S::Snapshotting, OldEvent::SnapshotTaken(r)) => match r {
                Ok(_) => {
                    self.state = S::SendingSnapshot;
                    OldAction::SendSnapshot
                }
                Err(e) => self.local_failed(e),
            },
            (S::SendingSnapshot, OldEvent::Sent) => {
                self.state = S::AwaitAck;
                OldAction::Recv
            }
            (S::AwaitAck, OldEvent::Received(m)) => self.on_ack(m),
            (S::SendingCommit, OldEvent::Sent) if self.config.uring_area => {
                // The new process registers its entries first, then says so.
                self.state = S::AwaitRingsReady;
                OldAction::Recv
            }
            (S::SendingCommit, OldEvent::Sent) => {
                self.state = S::Done;
                OldAction::Committed
            }
            _ => self.out_of_order(name),
        }
    }

    fn on_hello(&mut self, m: Incoming<'_>) -> OldAction {
        if let Err(e) = check_kind(&m, &[Kind::Hello], "Hello") {
            return self.peer_failed(e);
        }
        let hello = match Hello::decode(m.body) {
            Ok(h) => h,
            Err(e) => return self.peer_failed(e.into()),
        };
        self.hello = Some(hello);
        // A ring-served mount (entries in a memfd) goes to a new process that
        // takes over rings; an older one is refused before anything is paused.
        if self.config.uring || (self.config.uring_area && hello.features & FEATURE_URING == 0) {
            return self.local_failed(HandoffError::BackendUnsupported);
        }
        let version = self.config.version;
        if !(hello.min_version..=hello.max_version).contains(&version) {
            return self.local_failed(HandoffError::VersionMismatch {
                wanted: (hello.min_version, hello.max_version),
                offered: version,
            });
        }
        self.precopy = self.config.precopy && hello.features & FEATURE_PRECOPY != 0;
        let mut features = if self.precopy { FEATURE_PRECOPY } else { 0 };
        if self.config.uring_area {
            features |= FEATURE_URING;
        }
        self.state = OldState::SendingAccept;
        OldAction::Send(message::encode_accept(version, features))
    }

    fn send_precopy(&mut self, kind: Kind, len: usize) -> OldAction {
        if len > self.config.max_snapshot {
            return self.local_failed(HandoffError::Snapshot(FormatError::FsSave(format!(
                "the pre-copy is {len} bytes, over the limit of {}",
                self.config.max_snapshot
            ))));
        }
        self.state = OldState::SendingPrecopy(kind, len);
        OldAction::SendPrecopy(kind)
    }

    fn on_ready(&mut self, m: Incoming<'_>, kind: Kind, len: usize) -> OldAction {
        if let Err(e) = check_kind(&m, &[Kind::Ready, Kind::Nack], "Ready or Nack") {
            return self.peer_failed(e);
        }
        if m.kind == Kind::Nack {
            return self.peer_failed(HandoffError::Refused(message::decode_reason(m.body)));
        }
        if let Err(e) = message::decode_duration(Kind::Ready, m.body) {
            return self.peer_failed(e.into());
        }
        self.precopy_bytes = self.precopy_bytes.saturating_add(len);
        if kind == Kind::PrecopyRound {
            self.rounds += 1;
            if len < crate::precopy::ROUND_ENOUGH {
                self.state = OldState::Snapshotting;
                return OldAction::PauseAndSnapshot;
            }
        }
        if self.rounds >= crate::precopy::MAX_ROUNDS {
            self.state = OldState::Snapshotting;
            return OldAction::PauseAndSnapshot;
        }
        self.state = OldState::TakingRound;
        OldAction::TakeRound
    }

    fn on_ack(&mut self, m: Incoming<'_>) -> OldAction {
        if let Err(e) = check_kind(&m, &[Kind::Ack, Kind::Nack], "Ack or Nack") {
            return self.peer_failed(e);
        }
        if m.kind == Kind::Nack {
            return self.peer_failed(HandoffError::Refused(message::decode_reason(m.body)));
        }
        match message::decode_duration(Kind::Ack, m.body) {
            Ok(restore) => {
                self.state = OldState::SendingCommit;
                OldAction::Commit { restore }
            }
            Err(e) => self.peer_failed(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------
// New side
// ---------------------------------------------------------------------------

/// What the new process brings to a handoff.
#[derive(Clone, Copy, Debug)]
pub struct NewConfig {
    /// The snapshot format versions it reads.
    pub versions: (u16, u16),
    /// Whether it offers pre-copy.
    pub precopy: bool,
    /// Its pid (sent in Hello).
    pub pid: u32,
}

/// What happened, on the new side.
#[derive(Debug)]
pub enum NewEvent<'a> {
    /// The peer's credentials were checked (first event).
    PeerChecked(Result<(), HandoffError>),
    /// A message arrived (after [`NewAction::Recv`]).
    Received(Incoming<'a>),
    /// The transport failed: end of stream, timeout, IO error, a malformed header.
    Failed(HandoffError),
    /// What the last action sent went out.
    Sent,
    /// After [`NewAction::Agreed`]: go on and receive the state; `can_precopy`
    /// says whether the filesystem type takes a pre-copy.
    Receive {
        /// Whether the filesystem type implements pre-copy.
        can_precopy: bool,
    },
    /// [`NewAction::DecodeBase`] or [`NewAction::ApplyRound`] done: the time it
    /// took since the message's first byte (sent in Ready), or why not.
    Prepared(Result<Duration, FormatError>),
    /// [`NewAction::Restore`] done, or why not.
    Restored(Result<(), HandoffError>),
    /// After [`NewAction::Decide`]: accept (Ack with the restore time).
    Ack(Duration),
    /// After [`NewAction::Decide`]: decline (Nack with this reason).
    Decline(String),
    /// [`NewAction::RegisterRings`] done: the time since Commit (sent in
    /// RingsReady), or why this process cannot serve.
    RingsRegistered(Result<Duration, HandoffError>),
}

fn new_event_name(e: &NewEvent<'_>) -> &'static str {
    match e {
        NewEvent::PeerChecked(_) => "PeerChecked",
        NewEvent::Received(_) => "Received",
        NewEvent::Failed(_) => "Failed",
        NewEvent::Sent => "Sent",
        NewEvent::Receive { .. } => "Receive",
        NewEvent::Prepared(_) => "Prepared",
        NewEvent::Restored(_) => "Restored",
        NewEvent::Ack(_) => "Ack",
        NewEvent::Decline(_) => "Decline",
        NewEvent::RingsRegistered(_) => "RingsRegistered",
    }
}

/// What to do next, on the new side.
#[derive(Debug)]
pub enum NewAction {
    /// Send these bytes; feed [`NewEvent::Sent`] or [`NewEvent::Failed`].
    Send(Vec<u8>),
    /// Receive one message; feed [`NewEvent::Received`] or [`NewEvent::Failed`].
    Recv,
    /// Hello and Accept done, nothing paused: a version and features are agreed.
    /// Feed [`NewEvent::Receive`] to go on.
    Agreed {
        /// The snapshot format version.
        version: u16,
        /// The features the old process will use.
        features: u32,
    },
    /// Decode the pre-copied base just received; feed [`NewEvent::Prepared`].
    DecodeBase,
    /// Apply the round just received to the base; feed [`NewEvent::Prepared`].
    ApplyRound,
    /// The Snapshot arrived (the old process is paused; the ordinary deadline
    /// starts again): restore from the bytes of its body from `offset` on, and
    /// the descriptors; feed [`NewEvent::Restored`].
    Restore {
        /// The fixed part of the message.
        meta: SnapshotMeta,
        /// Where the snapshot bytes start in the body.
        offset: usize,
    },
    /// Restored: the caller decides ([`NewEvent::Ack`] or [`NewEvent::Decline`]).
    Decide,
    /// Final: Commit arrived (with the old side's time since its pause). Serve.
    Serve {
        /// The old process's time from its pause to Commit.
        since_pause: Duration,
    },
    /// Commit arrived, over io_uring ([`FEATURE_URING`]): fill the paused old
    /// process's available entries and register this process's own
    /// (`Server::take_ring_live`, `Server::spawn_uring`); feed
    /// [`NewEvent::RingsRegistered`].
    RegisterRings {
        /// The old process's time from its pause to Commit.
        since_pause: Duration,
    },
    /// Final, over io_uring: the old process closed its rings (RingsReleased),
    /// or could not say so ([`NewSide::after_commit_problem`]): adopt its
    /// entries (`Running::adopt_ring`) and serve on.
    AdoptRings,
    /// Final: the handoff failed; send `nack` if any (best effort) and report
    /// `error`. Nothing was served here.
    Abort {
        /// Why.
        error: HandoffError,
        /// A Nack to send first, if the peer should be told.
        nack: Option<Vec<u8>>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NewState {
    CheckingPeer,
    SendingHello,
    AwaitAccept,
    Agreed,
    AwaitPrecopy,
    DecodingBase,
    SendingReady,
    AwaitSnapshot,
    ApplyingRound,
    Restoring,
    Deciding,
    SendingAck,
    AwaitCommit,
    RegisteringRings,
    SendingRingsReady,
    AwaitRingsReleased,
    Done,
}

impl NewState {
    fn name(self) -> &'static str {
        match self {
            NewState::CheckingPeer => "checking the peer",
            NewState::SendingHello => "sending Hello",
            NewState::AwaitAccept => "waiting for Accept",
            NewState::Agreed => "agreed",
            NewState::AwaitPrecopy => "waiting for the pre-copy",
            NewState::DecodingBase => "decoding the pre-copy",
            NewState::SendingReady => "sending Ready",
            NewState::AwaitSnapshot => "waiting for the snapshot",
            NewState::ApplyingRound => "applying a pre-copy round",
            NewState::Restoring => "restoring",
            NewState::Deciding => "deciding",
            NewState::SendingAck => "sending Ack",
            NewState::AwaitCommit => "waiting for Commit",
            NewState::RegisteringRings => "registering the rings",
            NewState::SendingRingsReady => "sending RingsReady",
            NewState::AwaitRingsReleased => "waiting for RingsReleased",
            NewState::Done => "finished",
        }
    }

    /// The fault point (`fuse_session::fault`) hit each time an event leaves
    /// the machine in this state: the step the driver is about to perform.
    fn fault_point(self) -> &'static str {
        match self {
            // The machine starts here and no event leaves it here: never hit.
            NewState::CheckingPeer => "handoff-new-checking-peer",
            NewState::SendingHello => "handoff-new-sending-hello",
            NewState::AwaitAccept => "handoff-new-await-accept",
            NewState::Agreed => "handoff-new-agreed",
            NewState::AwaitPrecopy => "handoff-new-await-precopy",
            NewState::DecodingBase => "handoff-new-decoding-base",
            NewState::SendingReady => "handoff-new-sending-ready",
            NewState::AwaitSnapshot => "handoff-new-await-snapshot",
            NewState::ApplyingRound => "handoff-new-applying-round",
            NewState::Restoring => "handoff-new-restoring",
            NewState::Deciding => "handoff-new-deciding",
            NewState::SendingAck => "handoff-new-sending-ack",
            NewState::AwaitCommit => "handoff-new-await-commit",
            NewState::RegisteringRings => "handoff-new-registering-rings",
            NewState::SendingRingsReady => "handoff-new-sending-rings-ready",
            NewState::AwaitRingsReleased => "handoff-new-await-rings-released",
            NewState::Done => "handoff-new-done",
        }
    }
}

/// The new process's side of a handoff: see the [module docs](self).
#[derive(Debug)]
pub struct NewSide {
    config: NewConfig,
    state: NewState,
    hello: Hello,
    /// A Hello that could not be sent: reported if no Refuse explains why.
    hello_failed: Option<HandoffError>,
    version: u16,
    features: u32,
    rounds: u32,
    /// The first thing that went wrong after Commit (io_uring steps).
    after_commit: Option<HandoffError>,
}

impl NewSide {
    /// A handoff about to start; the first event is [`NewEvent::PeerChecked`].
    pub fn new(config: NewConfig) -> NewSide {
        let (min_version, max_version) = config.versions;
        NewSide {
            config,
            state: NewState::CheckingPeer,
            hello: Hello {
                min_version,
                max_version,
                pid: config.pid,
                features: FEATURE_URING | if config.precopy { FEATURE_PRECOPY } else { 0 },
            },
            hello_failed: None,
            version: 0,
            features: 0,
            rounds: 0,
            after_commit: None,
        }
    }

    /// The first thing that went wrong after the rings were registered
    /// (RingsReady not sent, RingsReleased missing or malformed, an event out of
    /// order): the old entries are adopted all the same; the driver logs it.
    pub fn after_commit_problem(&self) -> Option<&HandoffError> {
        self.after_commit.as_ref()
    }

    /// Keeps the first problem after Commit and adopts the rings.
    fn adopt_noting(&mut self, e: HandoffError) -> NewAction {
        self.after_commit.get_or_insert(e);
        self.state = NewState::Done;
        NewAction::AdoptRings
    }

    /// The agreed snapshot format version (0 before Accept).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The agreed features (0 before Accept).
    pub fn features(&self) -> u32 {
        self.features
    }

    /// Pre-copy rounds applied.
    pub fn precopy_rounds(&self) -> u32 {
        self.rounds
    }

    /// Whether a final action was given.
    pub fn is_finished(&self) -> bool {
        self.state == NewState::Done
    }

    /// Whether a failure in the current state is told to the peer: from Accept
    /// on, the old process waits for our word; before, it has nothing to roll back.
    fn fail(&mut self, error: HandoffError, tell: bool) -> NewAction {
        self.state = NewState::Done;
        let nack = tell.then(|| nack_bytes(&error));
        NewAction::Abort { error, nack }
    }

    fn out_of_order(&mut self, event: &'static str) -> NewAction {
        let e = HandoffError::OutOfOrder {
            state: self.state.name(),
            event,
        };
        if matches!(
            self.state,
            NewState::SendingRingsReady | NewState::AwaitRingsReleased
        ) {
            // Registered and committed: serve on, adopting the old entries.
            return self.adopt_noting(e);
        }
        let tell = !matches!(
            self.state,
            NewState::Done
                | NewState::CheckingPeer
                | NewState::SendingHello
                | NewState::AwaitAccept
                | NewState::RegisteringRings
        );
        if self.state == NewState::Done {
            return NewAction::Abort {
                error: e,
                nack: None,
            };
        }
        self.fail(e, tell)
    }

    /// Takes one event, answers one action.
    ///
    /// Fault point (`fuse_session::fault`): `handoff-new-STATE` for the state
    /// the event left the machine in, before the action is performed.
    pub fn handle(&mut self, event: NewEvent<'_>) -> NewAction {
        let action = self.step(event);
        fuse_session::fault::point(self.state.fault_point());
        action
    }

    fn step(&mut self, event: NewEvent<'_>) -> NewAction {
        use NewState as S;
        let name = new_event_name(&event);
        match (self.state, event) {
            (S::Done, _) => self.out_of_order(name),
            (S::CheckingPeer, NewEvent::PeerChecked(r)) => match r {
                Ok(()) => {
                    self.state = S::SendingHello;
                    NewAction::Send(self.hello.encode())
                }
                Err(e) => self.fail(e, false),
            },
            // A daemon that refuses at once may close before reading Hello: its
            // Refuse is still there to read, and says more than EPIPE.
            (S::SendingHello, NewEvent::Sent) => {
                self.state = S::AwaitAccept;
                NewAction::Recv
            }
            (S::SendingHello, NewEvent::Failed(e)) => {
                self.hello_failed = Some(e);
                self.state = S::AwaitAccept;
                NewAction::Recv
            }
            (S::AwaitAccept, NewEvent::Failed(e)) => {
                let e = self.hello_failed.take().unwrap_or(e);
                self.fail(e, false)
            }
            (S::AwaitAccept, NewEvent::Received(m)) => self.on_accept(m),
            // Sending Ready or Ack failed (the peer is gone or stuck), or no Commit
            // came after Ack (the old side decides alone from there).
            (S::SendingReady | S::SendingAck | S::AwaitCommit, NewEvent::Failed(e)) => {
                self.fail(e, false)
            }
            // After Commit over io_uring, registered: the old entries are
            // adopted whatever the peer does.
            (S::SendingRingsReady | S::AwaitRingsReleased, NewEvent::Failed(e)) => {
                self.adopt_noting(e)
            }
            // Committed, not serving: nothing to tell the old side (it closes
            // its rings once RingsReady does not come).
            (S::RegisteringRings, NewEvent::Failed(e)) => self.fail(e, false),
            (S::RegisteringRings, NewEvent::RingsRegistered(r)) => match r {
                Ok(since_commit) => {
                    self.state = S::SendingRingsReady;
                    NewAction::Send(message::encode_duration(Kind::RingsReady, since_commit))
                }
                Err(e) => self.fail(e, false),
            },
            (S::SendingRingsReady, NewEvent::Sent) => {
                self.state = S::AwaitRingsReleased;
                NewAction::Recv
            }
            (S::AwaitRingsReleased, NewEvent::Received(m)) => {
                let released =
                    check_kind(&m, &[Kind::RingsReleased], "RingsReleased").and_then(|()| {
                        message::decode_duration(Kind::RingsReleased, m.body)
                            .map(drop)
                            .map_err(HandoffError::from)
                    });
                match released {
                    Ok(()) => {
                        self.state = S::Done;
                        NewAction::AdoptRings
                    }
                    Err(e) => self.adopt_noting(e),
                }
            }
            // Waiting for a message: the old side is told (if it still listens).
            (_, NewEvent::Failed(e)) => self.fail(e, true),
            (S::Agreed, NewEvent::Receive { can_precopy }) => {
                if self.features & FEATURE_PRECOPY == 0 {
                    self.state = S::AwaitSnapshot;
                    NewAction::Recv
                } else if can_precopy {
                    self.state = S::AwaitPrecopy;
                    NewAction::Recv
                } else {
                    self.fail(HandoffError::PrecopyUnsupported, true)
                }
            }
            (S::AwaitPrecopy, NewEvent::Received(m)) => {
                if let Err(e) = check_kind(&m, &[Kind::Precopy, Kind::Refuse], "Precopy") {
                    return self.fail(e, true);
                }
                if m.kind == Kind::Refuse {
                    return self.fail(HandoffError::Refused(message::decode_reason(m.body)), false);
                }
                self.state = S::DecodingBase;
                NewAction::DecodeBase
            }
            (S::DecodingBase | S::ApplyingRound, NewEvent::Prepared(r)) => match r {
                Ok(took) => {
                    if self.state == S::ApplyingRound {
                        self.rounds += 1;
                    }
                    self.state = S::SendingReady;
                    NewAction::Send(message::encode_duration(Kind::Ready, took))
                }
                Err(e) => self.fail(HandoffError::Snapshot(e), true),
            },
            (S::SendingReady, NewEvent::Sent) => {
                self.state = S::AwaitSnapshot;
                NewAction::Recv
            }
            (S::AwaitSnapshot, NewEvent::Received(m)) => self.on_snapshot(m),
            (S::Restoring, NewEvent::Restored(r)) => match r {
                Ok(()) => {
                    self.state = S::Deciding;
                    NewAction::Decide
                }
                Err(e) => self.fail(e, true),
            },
            (S::Deciding, NewEvent::Ack(restore)) => {
                self.state = S::SendingAck;
                NewAction::Send(message::encode_duration(Kind::Ack, restore))
            }
            (S::Deciding, NewEvent::Decline(reason)) => {
                self.state = S::Done;
                let nack = message::encode_reason(Kind::Nack, &reason);
                NewAction::Abort {
                    error: HandoffError::Refused(reason),
                    nack: Some(nack),
                }
            }
            (S::SendingAck, NewEvent::Sent) => {
                self.state = S::AwaitCommit;
                NewAction::Recv
            }
            (S::AwaitCommit, NewEvent::Received(m)) => {
                // Nothing is sent back after Ack: the old side decides alone.
                if let Err(e) = check_kind(&m, &[Kind::Commit], "Commit") {
                    return self.fail(e, false);
                }
                match message::decode_duration(Kind::Commit, m.body) {
                    Ok(since_pause) if self.features & FEATURE_URING != 0 => {
                        self.state = S::RegisteringRings;
                        NewAction::RegisterRings { since_pause }
                    }
                    Ok(since_pause) => {
                        self.state = S::Done;
                        NewAction::Serve { since_pause }
                    }
                    Err(e) => self.fail(e.into(), false),
                }
            }
            _ => self.out_of_order(name),
        }
    }

    fn on_accept(&mut self, m: Incoming<'_>) -> NewAction {
        if let Err(e) = check_kind(&m, &[Kind::Accept, Kind::Refuse], "Accept or Refuse") {
            return self.fail(e, false);
        }
        if m.kind == Kind::Refuse {
            return self.fail(HandoffError::Refused(message::decode_reason(m.body)), false);
        }
        let (version, features) = match message::decode_accept(m.body) {
            Ok(x) => x,
            Err(e) => return self.fail(e.into(), false),
        };
        if features & !self.hello.features != 0 {
            return self.fail(
                HandoffError::Message(MessageError::BadBody {
                    kind: Kind::Accept,
                    why: "accepts a feature that was not offered",
                }),
                true,
            );
        }
        let (min, max) = self.config.versions;
        if !(min..=max).contains(&version) {
            return self.fail(
                HandoffError::VersionMismatch {
                    wanted: (min, max),
                    offered: version,
                },
                true,
            );
        }
        self.version = version;
        self.features = features;
        self.state = NewState::Agreed;
        NewAction::Agreed { version, features }
    }

    fn on_snapshot(&mut self, m: Incoming<'_>) -> NewAction {
        if let Err(e) = check_kind(
            &m,
            &[Kind::Snapshot, Kind::Refuse, Kind::PrecopyRound],
            "Snapshot",
        ) {
            return self.fail(e, true);
        }
        match m.kind {
            Kind::Refuse => self.fail(HandoffError::Refused(message::decode_reason(m.body)), false),
            Kind::PrecopyRound if self.features & FEATURE_PRECOPY == 0 => self.fail(
                unexpected(Kind::PrecopyRound, "Snapshot (no pre-copy was agreed)"),
                true,
            ),
            Kind::PrecopyRound => {
                self.state = NewState::ApplyingRound;
                NewAction::ApplyRound
            }
            _ => {
                let (meta, bytes) = match SnapshotMeta::decode(m.body) {
                    Ok(x) => x,
                    Err(e) => return self.fail(e.into(), true),
                };
                if meta.fd_count() != m.fds as u64 {
                    return self.fail(
                        HandoffError::Message(MessageError::BadBody {
                            kind: Kind::Snapshot,
                            why: "the number of descriptors differs from what the message \
                                  announces",
                        }),
                        true,
                    );
                }
                let offset = m.body.len() - bytes.len();
                self.state = NewState::Restoring;
                NewAction::Restore { meta, offset }
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fault_points {
    use super::*;

    /// Every state an event can leave a machine in names a documented fault
    /// point (`fuse_session::fault::POINTS`).
    #[test]
    fn every_reachable_state_names_a_documented_point() {
        let known = |p: &str| fuse_session::fault::POINTS.iter().any(|(n, _)| *n == p);
        let old = [
            OldState::AwaitHello,
            OldState::SendingAccept,
            OldState::TakingBase,
            OldState::SendingPrecopy(Kind::Precopy, 0),
            OldState::AwaitReady(Kind::Precopy, 0),
            OldState::TakingRound,
            OldState::Snapshotting,
            OldState::SendingSnapshot,
            OldState::AwaitAck,
            OldState::SendingCommit,
            OldState::AwaitRingsReady,
            OldState::ReleasingRings,
            OldState::SendingRingsReleased,
            OldState::Done,
        ];
        for s in old {
            assert!(known(s.fault_point()), "{s:?}: {}", s.fault_point());
        }
        let new = [
            NewState::SendingHello,
            NewState::AwaitAccept,
            NewState::Agreed,
            NewState::AwaitPrecopy,
            NewState::DecodingBase,
            NewState::SendingReady,
            NewState::AwaitSnapshot,
            NewState::ApplyingRound,
            NewState::Restoring,
            NewState::Deciding,
            NewState::SendingAck,
            NewState::AwaitCommit,
            NewState::RegisteringRings,
            NewState::SendingRingsReady,
            NewState::AwaitRingsReleased,
            NewState::Done,
        ];
        for s in new {
            assert!(known(s.fault_point()), "{s:?}: {}", s.fault_point());
        }
        // 14 + 16 state points in the table, each used; the rest of the handoff
        // points are the drivers' (listener.rs, takeover.rs, and memfs's
        // `handoff-new-journaled`), 12 of them.
        let handoff = fuse_session::fault::POINTS
            .iter()
            .filter(|(n, _)| n.starts_with("handoff-"))
            .count();
        assert_eq!(handoff, old.len() + new.len() + 12);
    }
}
