//! The journal wired to a serving session: a [`StepHook`] that records, before each
//! reply is sent, what the request changed, and the recovery that rebuilds session
//! and filesystem from the journal after a crash.
//!
//! **A log to a file is pre-copy rounds to a file.** At the checkpoint the session's
//! tables and the filesystem ([`Precopy`]) start recording their changes, and the
//! checkpoint is a pre-copy base. Then, for every request that may change
//! something (not those of [`records_nothing`]: GETATTR, READ, ...), in
//! [`StepHook::responding`] (after the filesystem call, before the reply leaves), one
//! record is appended ([`Record::Delta`]): the session's changes since the last
//! record (nodeids counted or forgotten, the handles only if they changed, the
//! counters: [`Session::journal_delta`]; the INIT result, fixed, is in the
//! checkpoint), the
//! filesystem's ([`Precopy::precopy_round`]), and, for a non-idempotent request
//! ([`records_reply`]), the reply itself. One record, so that a crash cannot keep a
//! request's effects without its reply. A LOOKUP (and the other requests of
//! [`records_if_changed`]) appends one only if something is due: records count
//! lookups ahead ([`LOOKUP_RESERVE`]), so a LOOKUP of a nodeid within the count
//! the journal holds for it needs none. A FORGET or BATCH_FORGET, which gets no
//! reply, is recorded on its own once handled ([`StepHook::unanswered`]): left for
//! the next answered request, a crash before that would recover lookup counts the
//! kernel has already dropped. Recovery decodes the base, applies every
//! record as a pre-copy round and the last as the final changes
//! ([`Precopy::restore_precopied`], [`Session::restore_precopied`]): the same
//! validated code paths as a live handoff.
//!
//! **Why a request's effects never reach the journal without its reply.** Records
//! are made under one gate. A non-idempotent request takes the gate in
//! [`StepHook::accepted`] and keeps it until its record (with its reply) is appended
//! in [`StepHook::responding`]; every other request that records takes it in
//! `responding` only.
//! So while a CREATE or WRITE runs, no other request's record can pick up its
//! half-made changes; its changes and its reply go into the journal together or not
//! at all. Mutations are serialized by this (fine for memfs; a filesystem that
//! mutates in parallel would want per-request change sets instead).
//!
//! **Exactly once after a crash.** The kernel resends (`NOTIFY_RESEND`) what the dead
//! process had read but not answered, with bit 63 of the unique set. A resent request
//! whose reply is in the journal is answered from there without calling the
//! filesystem ([`StepHook::recorded_reply`]); any other one had no effect that
//! reached the journal, and runs again. The kernel resends *every* request being
//! processed, including those the new process read before its `NOTIFY_RESEND` and
//! answers after it (that first reply is dropped: its unique lost the match); so a
//! resent request is also looked up among the replies this process recorded.
//!
//! **Compaction.** When the log passes [`JournalOptions::compact_after`] (and the
//! checkpoint's size), the request that noticed takes a new checkpoint under the
//! gate (a fresh pre-copy base, the session's and filesystem's recording restarted)
//! and writes it into a fresh area after giving the gate back, while other requests
//! go on recording. The
//! checkpoint carries the most recent recorded replies ([`KEEP_REPLIES`]): a reply
//! recorded but not yet written when the process died is among them.
//!
//! The journal and a live handoff's pre-copy use the same change recording: a
//! journaled session cannot also hand off with pre-copy.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};

use fuse_session::dev::JournalMap;
use fuse_session::wire::Opcode;
use fuse_session::{
    Accepted, Counters, HandleState, NodeChanges, NodeState, ReplyParts, Session, SessionChanges,
    StepHook,
};

use super::replay::recover_decoding;
use super::writer::Pieces;
use super::{Journal, JournalError, JournalOptions, Record, Recovered};
use crate::format::crc::{crc32, crc32_combine, crc32_update};
use crate::format::FormatError;
use crate::precopy::{begin_parts, decode_base, decode_checked, encode_checked_into, Precopy};
use crate::FdRestorer;
use fuse_session::Filesystem;

/// Replies kept in each checkpoint: the most recent ones recorded. A reply is
/// recorded just before it is written, so at a crash at most one per worker thread
/// is recorded and not yet written; this bounds the workers a journaled session may
/// have.
pub const KEEP_REPLIES: usize = 1024;

/// Bit 63 of a unique: the kernel resent the request (`FUSE_UNIQUE_RESEND`).
pub const UNIQUE_RESEND: u64 = 1 << 63;

/// True for requests whose reply is journaled with their effects, so that a resent
/// one is answered from the journal instead of running twice: those that change
/// the filesystem or the session in a way a second run would answer differently.
/// OPEN and OPENDIR are among them: run twice, the first run's handle would stay
/// in the session for good (the kernel never heard of it), still naming its nodeid
/// after the kernel forgot it, which the next recovery refuses as inconsistent.
pub fn records_reply(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::CREATE
            | Opcode::MKNOD
            | Opcode::MKDIR
            | Opcode::SYMLINK
            | Opcode::LINK
            | Opcode::UNLINK
            | Opcode::RMDIR
            | Opcode::RENAME
            | Opcode::RENAME2
            | Opcode::SETATTR
            | Opcode::WRITE
            | Opcode::FALLOCATE
            | Opcode::COPY_FILE_RANGE
            | Opcode::COPY_FILE_RANGE_64
            | Opcode::SETXATTR
            | Opcode::REMOVEXATTR
            | Opcode::TMPFILE
            | Opcode::SETLK
            | Opcode::SETLKW
            | Opcode::OPEN
            | Opcode::OPENDIR
            | Opcode::RELEASE
            | Opcode::RELEASEDIR
            | Opcode::IOCTL
    )
}

/// True for requests that get no record of their own: they change neither the
/// session's tables (no lookup counted, no handle made or dropped) nor anything a
/// client was promised by their reply. What they do change — the request counters,
/// a file's access time — is picked up by the next record, since each record holds
/// every change since the one before. Half of a `stat(2)` loop's records (its
/// GETATTRs) and a read loop's READs are saved so, and these requests no longer
/// wait for the record gate.
pub fn records_nothing(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::GETATTR
            | Opcode::STATX
            | Opcode::READ
            | Opcode::READLINK
            | Opcode::GETXATTR
            | Opcode::LISTXATTR
            | Opcode::STATFS
            | Opcode::ACCESS
            | Opcode::LSEEK
            | Opcode::BMAP
            | Opcode::GETLK
    )
}

/// True for requests whose only effect on the session is counting lookups (the
/// entries they answer), and that promise nothing by their reply beyond those
/// counts: they get a record only if something is due when they respond — a
/// nodeid noted in the session (a new one, a count past what the journal holds
/// for it: [`LOOKUP_RESERVE`]) or a change noted by the filesystem
/// ([`Precopy::precopy_pending`]). A stat loop's LOOKUPs of a known file, a
/// close's FLUSH, a failed LOOKUP so need no record. They still take the gate
/// before replying: a record being appended may be what covers their count.
pub fn records_if_changed(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::LOOKUP
            | Opcode::READDIRPLUS
            | Opcode::READDIR
            | Opcode::FLUSH
            | Opcode::FSYNC
            | Opcode::FSYNCDIR
    )
}

/// The most lookups of a nodeid a record counts ahead of the kernel
/// ([`Session::set_lookup_reserve`]). A record gives a nodeid counted `c` times
/// the count `c + min(LOOKUP_RESERVE, c - 1)`; the lookups up to that figure
/// need no record of their own. After a crash a count so exceeds the kernel's by
/// at most `min(LOOKUP_RESERVE, c - 1)` (never falls below it): such a nodeid is
/// never forgotten, its node kept until unmount. See docs/RECOVERY.md,
/// "Lookup counts counted ahead".
pub const LOOKUP_RESERVE: u32 = 64;

/// How far a recovery moves the NOTIFY_RETRIEVE unique counter past the
/// journal's figure: more than the retrieves a process can send between two
/// records.
pub const NOTIFY_UNIQUE_GAP: u64 = 1 << 32;

/// True for requests that take the record gate in [`StepHook::accepted`] and keep
/// it until their record: those whose reply is recorded, and FORGET/BATCH_FORGET,
/// whose record carries a marker (their unique, an empty reply) saying they were
/// applied, so that one found unanswered in a request slot after a crash is applied
/// at most once ([`StepHook::applied_before`]).
fn takes_gate(opcode: Opcode) -> bool {
    records_reply(opcode) || is_forget(opcode)
}

fn is_forget(opcode: Opcode) -> bool {
    matches!(opcode, Opcode::FORGET | Opcode::BATCH_FORGET)
}

/// One record's payload: the session's changes, the filesystem's (encoded), and a
/// non-idempotent request's `(unique, reply)`.
type Entry<F> = (
    SessionChanges<<F as Filesystem>::Node, <F as Filesystem>::Handle>,
    <F as Precopy>::Changes,
    Option<(u64, Vec<u8>)>,
);

/// The session's part of a [`Record::Delta`]: what [`SessionChanges`] holds,
/// without the INIT result and `only_uid` (they cannot change after INIT; the
/// checkpoint's first round carries them), and with the handles only when they
/// changed since the previous record (`None`: the previous record's, or the
/// checkpoint's first round's, still hold).
#[derive(serde::Serialize, serde::Deserialize)]
struct TablesDelta<N, H> {
    nodes: Vec<NodeState<N>>,
    forgotten: Vec<u64>,
    handles: Option<Vec<HandleState<H>>>,
    polls: Vec<u64>,
    counters: Counters,
}

/// A [`Record::Delta`]'s payload: as [`Entry`], the session's part a
/// [`TablesDelta`].
type DeltaEntry<F> = (
    TablesDelta<<F as Filesystem>::Node, <F as Filesystem>::Handle>,
    <F as Precopy>::Changes,
    Option<(u64, Vec<u8>)>,
);

/// The checkpoint: the pre-copy base, the first round after it (encoded
/// [`Entry`]), the recent replies. The format's definition: written by parts
/// ([`Bytes`], the replies from a deque) and read as [`CheckpointRef`], the same
/// bytes (a test holds all three to it).
#[cfg_attr(not(test), allow(dead_code))]
type Checkpoint = (Vec<u8>, Vec<u8>, Vec<(u64, Vec<u8>)>);

/// A [`Checkpoint`] read back without copying its two large parts (the same
/// bytes: postcard encodes a `Vec<u8>` and a `&[u8]` alike). Decoding the base
/// as a `Vec<u8>` went byte by byte: ~9 ms of a 10 MB checkpoint's recovery.
type CheckpointRef<'a> = (&'a [u8], &'a [u8], Vec<(u64, Vec<u8>)>);

/// Why a journaled session could not start or recover.
#[derive(Debug)]
pub enum RecoveryError {
    /// The journal storage.
    Journal(JournalError),
    /// Encoding or decoding the checkpoint or a record.
    Format(FormatError),
    /// A record of a kind this layer does not write.
    UnexpectedRecord(u64),
    /// The session is not initialized or not recording.
    NotReady(&'static str),
}

impl std::fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryError::Journal(e) => write!(f, "journal: {e}"),
            RecoveryError::Format(e) => write!(f, "journal contents: {e}"),
            RecoveryError::UnexpectedRecord(seq) => {
                write!(
                    f,
                    "journal record {seq} is of a kind the session does not write"
                )
            }
            RecoveryError::NotReady(why) => write!(f, "journal: {why}"),
        }
    }
}

impl std::error::Error for RecoveryError {}

impl From<JournalError> for RecoveryError {
    fn from(e: JournalError) -> Self {
        RecoveryError::Journal(e)
    }
}

impl From<FormatError> for RecoveryError {
    fn from(e: FormatError) -> Self {
        RecoveryError::Format(e)
    }
}

/// A lock that one thread may take in one call and release in another
/// ([`StepHook::accepted`] .. [`StepHook::responding`]).
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    free: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    held: bool,
    /// Threads waiting in [`Gate::take`].
    waiting: usize,
}

impl Gate {
    fn take(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.held {
            s.waiting += 1;
            s = self.free.wait(s).unwrap_or_else(|e| e.into_inner());
            s.waiting -= 1;
        }
        s.held = true;
    }

    /// Wakes a waiter only if there is one: the standard condition variable's
    /// `notify_one` is a `futex` system call each time, waiter or not (one per
    /// record, ~3 % of a journaled `stat` loop's daemon CPU).
    fn give(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.held = false;
        let wake = s.waiting > 0;
        drop(s);
        if wake {
            self.free.notify_one();
        }
    }
}

thread_local! {
    /// This worker took the gate in `accepted` (address of the hook).
    static HOLDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What the hook keeps under the gate.
struct Live<F: Precopy> {
    session: Weak<Session<F>>,
    journal: Arc<Journal<JournalMap>>,
    recent: VecDeque<(u64, Vec<u8>)>,
    /// The journal failed: recording stopped (logged once).
    failed: bool,
    /// A compaction was handed out and has not finished: no second one is taken
    /// meanwhile (its checkpoint would be encoded for nothing, and refused).
    compacting: bool,
    /// Where each record is encoded: one buffer, not an allocation (and its
    /// growth) per record.
    buf: Vec<u8>,
    /// The version of the handle table the last appended record carried (whole
    /// or as unchanged); `None`: the next record carries the table whole (after
    /// a start, a resume or a checkpoint).
    handles_version: Option<u64>,
}

/// A record buffer grown past this by a large record is given back afterwards
/// (a 1 MiB WRITE's record, a little more than 1 MiB, is kept: allocating and
/// freeing it per record cost page faults each time).
const KEEP_BUF: usize = 4 << 20;

/// Payloads from this size on are checksummed for the record from their own
/// checksum ([`crc32_combine`]) instead of read again; below it, reading them
/// again is cheaper than the combination (~40 carry-less steps per bit of the
/// length).
const COMBINE_FROM: usize = 4096;

/// Appends a [`Record::Delta`] of `payload` (as [`encode_checked_into`] wrote
/// it: the body's CRC-32, then the body). The record's checksum covers the same
/// bytes; for a large payload it is derived from the body's checksum, so a
/// 1 MiB WRITE's data is checksummed once, not twice.
fn append_payload(
    journal: &Journal<JournalMap>,
    payload: &[u8],
) -> Result<super::Appended, JournalError> {
    let record = Record::Delta(payload);
    match payload.split_first_chunk::<4>() {
        Some((inner, body)) if payload.len() >= COMBINE_FROM => {
            let head = crc32(inner);
            let bytes_crc = crc32_combine(head, u32::from_le_bytes(*inner), body.len() as u64);
            journal.append_with_crc(&record, bytes_crc)
        }
        _ => journal.append(&record),
    }
}

/// The [`StepHook`] of a journaled session: see the [module docs](self).
pub struct JournalHook<F: Precopy> {
    gate: Gate,
    live: OnceLock<Mutex<Live<F>>>,
    /// Replies recovered from the journal, by unique (without the resend bit).
    recorded: HashMap<u64, Vec<u8>>,
    /// Made by [`recover_session`]: `recorded` holds every marker the journal had.
    recovered: bool,
    options: JournalOptions,
}

impl<F: Precopy> std::fmt::Debug for JournalHook<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalHook")
            .field("started", &self.live.get().is_some())
            .field("recorded_replies", &self.recorded.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<F> JournalHook<F>
where
    F: Precopy + Send + Sync + 'static,
{
    /// A hook for a new session (set it with [`Session::set_hook`] before serving,
    /// then [`JournalHook::start`] once INIT is answered). Until then it records
    /// nothing.
    pub fn new(options: JournalOptions) -> Arc<Self> {
        Arc::new(JournalHook {
            gate: Gate::default(),
            live: OnceLock::new(),
            recorded: HashMap::new(),
            recovered: false,
            options,
        })
    }

    /// Starts journaling `session` into `map` (empty): takes the checkpoint and
    /// creates the journal. Call once, after INIT was answered. Requests running
    /// meanwhile wait at their reply for the checkpoint's end.
    ///
    /// # Errors
    /// The session is not initialized; the checkpoint cannot be encoded; the
    /// journal cannot be created.
    pub fn start(&self, session: &Arc<Session<F>>, map: JournalMap) -> Result<(), RecoveryError> {
        self.begin_with(session, |checkpoint| {
            Journal::create_pieces(map, checkpoint, self.options)
        })
    }

    /// Continues the journal in `map` that another process wrote, in a new epoch
    /// whose checkpoint is `session`: for a process that took the mount over by a
    /// live handoff from a journaled daemon, after `Commit` and before serving
    /// ([`Restored::commit_then`](crate::handoff::Restored::commit_then)). That
    /// daemon is paused for good, so the journal holds exactly the state the
    /// handoff carried. Until the new epoch's header is written, a crash recovers
    /// the old epoch (that same state); from then on the new one. Set the hook on
    /// the session first.
    ///
    /// # Errors
    /// The journal does not read back (damaged), or the checkpoint cannot be
    /// encoded or written.
    pub fn take_over(
        &self,
        session: &Arc<Session<F>>,
        map: JournalMap,
    ) -> Result<(), RecoveryError> {
        let t = std::time::Instant::now();
        // Only where the log ends: the state is the session's, not the records'.
        let recovered = super::replay::scan(&map)?;
        let read = t.elapsed();
        let mut encoded = std::time::Duration::ZERO;
        let r = self.begin_with(session, |checkpoint| {
            encoded = t.elapsed() - read;
            Journal::resume_pieces(map, &recovered, checkpoint, self.options)
        });
        log::info!(
            "journal taken over: epoch {} (records up to {}) read in {read:?}, checkpoint \
             encoded in {encoded:?}, written in {:?}",
            recovered.epoch,
            recovered.next_seq,
            t.elapsed() - read - encoded
        );
        r
    }

    fn begin_with(
        &self,
        session: &Arc<Session<F>>,
        open: impl FnOnce(Pieces<'_>) -> Result<Journal<JournalMap>, JournalError>,
    ) -> Result<(), RecoveryError> {
        self.begin(session, |recent| {
            let checkpoint = checkpoint(session, recent)?;
            Ok(open(checkpoint.pieces(&mut [&[]; 4]))?)
        })
    }

    /// As [`JournalHook::begin_with`] without a checkpoint: the session and the
    /// filesystem record their changes already, from the state `open`'s journal
    /// holds.
    fn begin_live(
        &self,
        session: &Arc<Session<F>>,
        open: impl FnOnce() -> Result<Journal<JournalMap>, RecoveryError>,
    ) -> Result<(), RecoveryError> {
        self.begin(session, |_| open())
    }

    fn begin(
        &self,
        session: &Arc<Session<F>>,
        open: impl FnOnce(&VecDeque<(u64, Vec<u8>)>) -> Result<Journal<JournalMap>, RecoveryError>,
    ) -> Result<(), RecoveryError> {
        if self.live.get().is_some() {
            return Err(RecoveryError::NotReady("the journal was already started"));
        }
        self.gate.take();
        let made = (|| {
            let recent: VecDeque<(u64, Vec<u8>)> =
                self.recorded.iter().map(|(u, r)| (*u, r.clone())).collect();
            let journal = open(&recent)?;
            Ok::<_, RecoveryError>(Live {
                session: Arc::downgrade(session),
                journal: Arc::new(journal),
                compacting: false,
                recent,
                failed: false,
                buf: Vec::new(),
                handles_version: None,
            })
        })();
        let result = match made {
            Ok(live) => {
                let _ = self.live.set(Mutex::new(live));
                // From now on (the checkpoint, if any, and its first round hold
                // exact counts): records count lookups ahead.
                session.set_lookup_reserve(LOOKUP_RESERVE);
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.gate.give();
        result
    }

    fn me(&self) -> usize {
        self as *const Self as usize
    }

    /// Appends a record of what changed so far — the session's tables and the
    /// filesystem's recorded changes ([`Precopy::precopy_round`]), without a
    /// reply — *now*, instead of with the request's reply. For a filesystem that
    /// must have something in the journal before it acts on its backing store:
    /// an *intent* noted in its change recording before a non-idempotent call
    /// (create, unlink, rename...), which a successor finds if the process dies
    /// after the call and before the reply's record.
    ///
    /// Call it from inside a request (a filesystem method). A request whose
    /// opcode records its reply ([`records_reply`]) already holds the gate; any
    /// other takes it here for the append. Returns false when nothing was
    /// appended: the journal is not started, or failed earlier.
    pub fn record_now(&self) -> bool {
        let Some(live) = self.live.get() else {
            return false;
        };
        let held = HOLDS.with(|h| h.get()) == self.me();
        if !held {
            self.gate.take();
        }
        let (appended, compaction) = {
            let mut live = lock(live);
            if live.failed {
                (false, None)
            } else {
                match append(&mut live, None) {
                    Ok(compaction) => (true, compaction),
                    Err(e) => {
                        live.failed = true;
                        log::error!(
                            "the journal failed, recording stopped (a crash from now on loses \
                             state): {e}"
                        );
                        (false, None)
                    }
                }
            }
        };
        if !held {
            self.gate.give();
        }
        if let Some(c) = compaction {
            self.compact(c);
        }
        appended
    }

    /// Appends the record of one reply (under the gate). Returns the compaction to
    /// run once the gate is given back, if the log asks for one: it must be run
    /// (the checkpoint it holds restarted the change recording).
    #[must_use]
    fn record(&self, reply: Option<(u64, Vec<u8>)>) -> Option<Compaction> {
        let live = self.live.get()?;
        let mut live = lock(live);
        if live.failed {
            return None;
        }
        match append(&mut live, reply) {
            Ok(compaction) => compaction,
            Err(e) => {
                live.failed = true;
                log::error!(
                    "the journal failed, recording stopped (a crash from now on loses state): {e}"
                );
                None
            }
        }
    }

    /// Under the gate, for a request of [`records_if_changed`]: false if a
    /// record now would hold nothing the journal needs before its reply (no
    /// nodeid noted, no filesystem change noted; the counters, which move with
    /// every request, wait for the next record). Every change made before the
    /// gate was taken is either noted or in a record already appended.
    fn due(&self) -> bool {
        let Some(live) = self.live.get() else {
            return false;
        };
        let live = lock(live);
        if live.failed {
            return false;
        }
        match live.session.upgrade() {
            Some(session) => session.nodes_changed() || session.filesystem().precopy_pending(),
            None => false,
        }
    }

    /// Writes a checkpoint taken under the gate into a fresh area. Runs outside the
    /// gate and the hook's lock: other requests go on recording meanwhile (the
    /// journal copies what they append into the new area), so only the request that
    /// noticed waits for the write.
    fn compact(&self, c: Compaction) {
        let result = c
            .journal
            .compact_pieces(c.mark, c.checkpoint.pieces(&mut [&[]; 4]));
        if let Some(live) = self.live.get() {
            lock(live).compacting = false;
        }
        match result {
            Ok(()) => log::debug!("journal compacted at seq={}", c.mark.seq),
            // The journal is unchanged, but the recording restarted with the
            // checkpoint: the changes since the last record are recorded next.
            Err(JournalError::Compaction(e)) => log::warn!("journal compaction put off: {e}"),
            Err(e) => {
                if let Some(live) = self.live.get() {
                    lock(live).failed = true;
                }
                log::error!(
                    "the journal failed while compacting, recording stopped (a crash from \
                     now on loses state): {e}"
                );
            }
        }
    }
}

/// A compaction to run outside the gate: the checkpoint and the point in the log it
/// covers, taken together under the gate.
struct Compaction {
    journal: Arc<Journal<JournalMap>>,
    mark: super::Mark,
    checkpoint: CheckpointParts,
}

/// A [`Checkpoint`]'s bytes (as [`encode_checked`] writes it: CRC-32, then the
/// postcard encoding) in four parts, the two parts of the base as they were
/// encoded: `pre` (the CRC and the base's length), the session's base, the
/// filesystem's base, `post` (the first round and the replies).
struct CheckpointParts {
    pre: Vec<u8>,
    tables: Vec<u8>,
    fs: Vec<u8>,
    post: Vec<u8>,
    /// The CRC-32 of the four parts one after the other.
    crc: u32,
}

impl CheckpointParts {
    /// As the journal writes them (`parts` is where the slices are put).
    fn pieces<'a>(&'a self, parts: &'a mut [&'a [u8]; 4]) -> Pieces<'a> {
        *parts = [&self.pre, &self.tables, &self.fs, &self.post];
        Pieces {
            parts,
            crc: self.crc,
            len: parts.iter().map(|p| p.len() as u64).sum(),
        }
    }
}

/// The checkpoint: a pre-copy base (recording starts), the first round, `recent`.
/// The bytes of a `Checkpoint` (a test holds them to its encoding), without
/// copying the base: the filesystem's base is most of a checkpoint (all of
/// memfs's file data), and copying it into one buffer cost a copy into fresh
/// pages per compaction. Its checksums take one pass: the record's is derived
/// from the body's.
fn checkpoint<F: Precopy>(
    session: &Session<F>,
    recent: &VecDeque<(u64, Vec<u8>)>,
) -> Result<CheckpointParts, RecoveryError> {
    let (tables, fs) = begin_parts::<F>(session)?;
    let first = round::<F>(session, None)?;
    checkpoint_parts(tables, fs, &first, recent)
}

fn checkpoint_parts(
    tables: Vec<u8>,
    fs: Vec<u8>,
    first: &[u8],
    recent: &VecDeque<(u64, Vec<u8>)>,
) -> Result<CheckpointParts, RecoveryError> {
    let encode = |e: postcard::Error| FormatError::Encode(e.to_string());
    // A byte string is its length (a varint, as a `u64`'s) and its bytes.
    let base_len = (tables.len() + fs.len()) as u64;
    let mut pre = postcard::to_extend(&base_len, vec![0u8; 4]).map_err(encode)?;
    let post = postcard::to_allocvec(&(Bytes(first), recent)).map_err(encode)?;
    let body = [&pre[4..], &tables[..], &fs[..], &post[..]];
    let inner = body.iter().fold(0, |c, p| crc32_update(c, p));
    let body_len: usize = body.iter().map(|p| p.len()).sum();
    pre[..4].copy_from_slice(&inner.to_le_bytes());
    let crc = crc32_combine(crc32(&pre[..4]), inner, body_len as u64);
    Ok(CheckpointParts {
        pre,
        tables,
        fs,
        post,
        crc,
    })
}

/// Bytes that serialize as a byte string: postcard writes the same length and
/// bytes as for a `Vec<u8>`, which serde serializes a byte at a time (a 10 MB
/// checkpoint's base took ~10 ms so, each compaction).
struct Bytes<'a>(&'a [u8]);

impl serde::Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// The filesystem's changes since its last round (its part of a record).
fn fs_round<F: Precopy>(session: &Session<F>) -> Result<F::Changes, RecoveryError> {
    session
        .filesystem()
        .precopy_round()
        .map_err(|e| FormatError::FsSave(e.to_string()))?
        .ok_or(RecoveryError::NotReady(
            "the filesystem takes no pre-copy rounds",
        ))
}

/// One [`Entry`], encoded: what changed since the last. The reply is borrowed: a
/// reference encodes as the value it points to, so the bytes are an `Entry`'s.
fn round<F: Precopy>(
    session: &Session<F>,
    reply: Option<&(u64, Vec<u8>)>,
) -> Result<Vec<u8>, RecoveryError> {
    let mut out = Vec::new();
    round_into(session, reply, &mut out)?;
    Ok(out)
}

/// [`round`] into `out` (cleared first).
fn round_into<F: Precopy>(
    session: &Session<F>,
    reply: Option<&(u64, Vec<u8>)>,
    out: &mut Vec<u8>,
) -> Result<(), RecoveryError> {
    let tables = session
        .journal_changes()
        .ok_or(RecoveryError::NotReady("the session is not recording"))?;
    let fs = fs_round(session)?;
    Ok(encode_checked_into(&(tables, fs, reply), out)?)
}

/// One [`DeltaEntry`] into `out` (cleared first): what changed since the
/// record that carried the handle table of version `handles_since` (whole or
/// as unchanged). Returns the version of the table this one carries.
fn delta_into<F: Precopy>(
    session: &Session<F>,
    handles_since: Option<u64>,
    reply: Option<&(u64, Vec<u8>)>,
    out: &mut Vec<u8>,
) -> Result<u64, RecoveryError> {
    let d = session
        .journal_delta(handles_since)
        .ok_or(RecoveryError::NotReady("the session is not recording"))?;
    let fs = fs_round(session)?;
    let tables = TablesDelta {
        nodes: d.nodes,
        forgotten: d.forgotten,
        handles: d.handles,
        polls: d.polls,
        counters: d.counters,
    };
    encode_checked_into(&(tables, fs, reply), out)?;
    Ok(d.handles_version)
}

fn append<F: Precopy>(
    live: &mut Live<F>,
    reply: Option<(u64, Vec<u8>)>,
) -> Result<Option<Compaction>, RecoveryError> {
    let session = live
        .session
        .upgrade()
        .ok_or(RecoveryError::NotReady("the session is gone"))?;
    let mut payload = std::mem::take(&mut live.buf);
    let r = delta_into::<F>(&session, live.handles_version, reply.as_ref(), &mut payload)
        .and_then(|version| Ok((version, append_payload(&live.journal, &payload)?)));
    if payload.capacity() <= KEEP_BUF {
        live.buf = payload;
    }
    let (version, appended) = r?;
    live.handles_version = Some(version);
    if let Some((unique, _)) = &reply {
        log::trace!(
            "journal record seq={} epoch={} holds the reply of unique={unique:#x}",
            appended.seq,
            live.journal.epoch()
        );
    }
    if let Some(r) = reply {
        live.recent.push_back(r);
        while live.recent.len() > KEEP_REPLIES {
            live.recent.pop_front();
        }
    }
    if !appended.compact || live.compacting {
        return Ok(None);
    }
    // The mark and the checkpoint together, under the gate: the checkpoint holds
    // exactly what the records before the mark hold.
    let mark = live.journal.mark();
    let checkpoint = checkpoint(&session, &live.recent)?;
    // The records after the mark follow the checkpoint's first round in the new
    // epoch: the first of them carries the handles whole.
    live.handles_version = None;
    log::debug!("journal compaction at seq={}", mark.seq);
    live.compacting = true;
    Ok(Some(Compaction {
        journal: live.journal.clone(),
        mark,
        checkpoint,
    }))
}

impl<F> StepHook for JournalHook<F>
where
    F: Precopy + Send + Sync + 'static,
{
    fn accepted(&self, request: &Accepted<'_>) {
        let me = self.me();
        // A request that took the gate and got no reply (it cannot happen for the
        // opcodes that take it; never leave the gate held for good).
        if HOLDS.with(|h| h.replace(0)) == me {
            self.gate.give();
        }
        if takes_gate(request.opcode()) {
            self.gate.take();
            HOLDS.with(|h| h.set(me));
        }
    }

    fn recorded_reply(&self, request: &Accepted<'_>, out: &mut [u8]) -> Option<usize> {
        let unique = request.unique();
        if unique & UNIQUE_RESEND == 0 || is_forget(request.opcode()) {
            return None;
        }
        let key = unique & !UNIQUE_RESEND;
        let copy = |reply: &[u8], out: &mut [u8]| {
            // An empty entry is a FORGET's marker, never a reply.
            if reply.is_empty() {
                return None;
            }
            let dst = out.get_mut(..reply.len())?;
            dst.copy_from_slice(reply);
            Some(reply.len())
        };
        let n = match self.recorded.get(&key) {
            Some(reply) => copy(reply, out),
            // Not recovered, but maybe answered by this process: a request it read
            // before its NOTIFY_RESEND and answered after. The kernel resends every
            // request being processed (with bit 63 set) and drops the first reply
            // (its unique no longer matches), so the resent one must get the same
            // answer instead of running twice. The gate is held here (taken in
            // `accepted` for every opcode that records its reply), so no record is
            // being appended.
            None if records_reply(request.opcode()) => self.live.get().and_then(|live| {
                let live = lock(live);
                let (_, reply) = live.recent.iter().rev().find(|(u, _)| *u == key)?;
                copy(reply, out)
            }),
            None => None,
        };
        match n {
            Some(_) => log::info!(
                "{:?} unique={:#x}: answered from the journal",
                request.opcode(),
                unique
            ),
            None if records_reply(request.opcode()) => log::warn!(
                "{:?} unique={:#x} resent without a recorded reply: running it again",
                request.opcode(),
                unique
            ),
            None => {}
        }
        n
    }

    fn responding(&self, request: &Accepted<'_>, reply: &ReplyParts<'_>) {
        let me = self.me();
        let held = HOLDS.with(|h| h.replace(0)) == me;
        if !held && records_nothing(request.opcode()) {
            // What it changed (an access time, the request counters) goes into the
            // next record; nothing of it must be durable before this reply.
            return;
        }
        if !held {
            self.gate.take();
            if records_if_changed(request.opcode()) && !self.due() {
                self.gate.give();
                return;
            }
        }
        let keep = records_reply(request.opcode())
            .then(|| (request.unique() & !UNIQUE_RESEND, reply.to_vec()));
        let compaction = self.record(keep);
        self.gate.give();
        if let Some(c) = compaction {
            self.compact(c);
        }
    }

    /// A FORGET or BATCH_FORGET is recorded as soon as it is handled: the kernel
    /// has dropped those lookups for good, and a crash before the next answered
    /// request would otherwise recover counts above the kernel's (nodeids, and an
    /// unlinked file's data, never freed). It took the gate in `accepted`, so its
    /// effects and its marker (its unique with an empty reply, which
    /// [`StepHook::applied_before`] looks for after a crash) go into one record.
    fn unanswered(&self, request: &Accepted<'_>) {
        if HOLDS.with(|h| h.replace(0)) != self.me() {
            return;
        }
        let marker =
            is_forget(request.opcode()).then(|| (request.unique() & !UNIQUE_RESEND, Vec::new()));
        let compaction = self.record(marker);
        self.gate.give();
        if let Some(c) = compaction {
            self.compact(c);
        }
    }

    fn applied_before(&self, request: &Accepted<'_>) -> Option<bool> {
        if !is_forget(request.opcode()) {
            return None;
        }
        let key = request.unique() & !UNIQUE_RESEND;
        let marked = |r: &Vec<u8>| r.is_empty();
        if self.recorded.get(&key).is_some_and(marked) {
            return Some(true);
        }
        match self.live.get() {
            // FORGETs this process served since the journal (re)started.
            Some(live) => Some(
                lock(live)
                    .recent
                    .iter()
                    .any(|(u, r)| *u == key && marked(r)),
            ),
            // Not resumed yet: the recovered markers are all there is.
            None if self.recovered => Some(false),
            None => None,
        }
    }
}

/// A session rebuilt from a journal, not yet serving: see [`recover_session`].
pub struct RecoveredSession<F: Precopy> {
    /// The session (its hook is set), to serve with
    /// `Server::from_parts(session, mount)`.
    pub session: Session<F>,
    hook: Arc<JournalHook<F>>,
    recovered: Recovered,
    map: JournalMap,
    /// Records replayed.
    pub records: usize,
    /// Replies the journal holds, answered when the kernel resends their request.
    pub replies: usize,
}

impl<F: Precopy> std::fmt::Debug for RecoveredSession<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveredSession")
            .field("records", &self.records)
            .field("replies", &self.replies)
            .field("end", &self.recovered.end)
            .finish()
    }
}

impl<F> RecoveredSession<F>
where
    F: Precopy + Send + Sync + 'static,
{
    /// How the log ended (a torn tail cut, or clean).
    pub fn log_end(&self) -> &super::LogEnd {
        &self.recovered.end
    }

    /// Continues the journal from the rebuilt session, before any request is
    /// served: `session` is the one `Server::from_parts` made of
    /// [`RecoveredSession::session`] (take it from `Server::session` before
    /// spawning). The recovered replies stay answerable.
    ///
    /// *In place* when the filesystem can start recording its changes without
    /// encoding its state ([`Precopy::precopy_start`]): the session and the
    /// filesystem start recording, and the recovered log goes on where it ended
    /// (its torn tail cut, [`Journal::continue_in_place`]); the session rebuilt is
    /// exactly the checkpoint and the records, so the next record's changes
    /// continue them. Otherwise as [`RecoveredSession::resume_new_epoch`].
    ///
    /// # Errors
    /// Recording cannot start; the cut or the checkpoint cannot be written.
    pub fn resume(
        hook: &Arc<JournalHook<F>>,
        session: &Arc<Session<F>>,
        map: JournalMap,
        recovered: &Recovered,
    ) -> Result<(), RecoveryError> {
        fuse_session::fault::point("recover-read");
        let t = std::time::Instant::now();
        let in_place = session
            .filesystem()
            .precopy_start()
            .map_err(|e| FormatError::FsSave(e.to_string()))?;
        if !in_place {
            return Self::new_epoch(hook, session, map, recovered, t);
        }
        if !session.start_change_recording() {
            session.filesystem().precopy_abort();
            return Err(RecoveryError::NotReady("the session is not initialized"));
        }
        hook.begin_live(session, || {
            Journal::continue_in_place(map, recovered, hook.options).map_err(Into::into)
        })?;
        log::info!(
            "journal resumed in place in {:.1} ms (epoch {}, from record {}, {})",
            t.elapsed().as_secs_f64() * 1e3,
            recovered.epoch,
            recovered.next_seq,
            recovered.end
        );
        fuse_session::fault::point("recover-resume");
        Ok(())
    }

    /// As [`RecoveredSession::resume`], but always in a new epoch: a fresh
    /// checkpoint of the whole rebuilt state is encoded and written into a free
    /// area, and the old log sealed ([`Journal::resume`]). Costs an encoding and a
    /// write of the whole state; the next recovery then replays no record from
    /// before this one.
    ///
    /// # Errors
    /// The checkpoint cannot be encoded or written.
    pub fn resume_new_epoch(
        hook: &Arc<JournalHook<F>>,
        session: &Arc<Session<F>>,
        map: JournalMap,
        recovered: &Recovered,
    ) -> Result<(), RecoveryError> {
        fuse_session::fault::point("recover-read");
        Self::new_epoch(hook, session, map, recovered, std::time::Instant::now())
    }

    fn new_epoch(
        hook: &Arc<JournalHook<F>>,
        session: &Arc<Session<F>>,
        map: JournalMap,
        recovered: &Recovered,
        t: std::time::Instant,
    ) -> Result<(), RecoveryError> {
        hook.begin_with(session, |checkpoint| {
            Journal::resume_pieces(map, recovered, checkpoint, hook.options)
        })?;
        log::info!(
            "journal resumed in a new epoch in {:.1} ms (a fresh checkpoint written)",
            t.elapsed().as_secs_f64() * 1e3
        );
        fuse_session::fault::point("recover-resume");
        Ok(())
    }

    /// The parts: the session, the hook, what [`RecoveredSession::resume`] needs.
    pub fn into_parts(self) -> (Session<F>, Arc<JournalHook<F>>, JournalMap, Recovered) {
        (self.session, self.hook, self.map, self.recovered)
    }
}

/// Reads the journal in `map` (after a crash: the memfd from the fd store) and
/// rebuilds the session and the filesystem: the checkpoint, then every record
/// (a torn tail is cut), each validated as a pre-copy round. The session gets a
/// [`JournalHook`] answering the recorded replies; serve it with
/// `Server::from_parts`, call [`RecoveredSession::resume`] before spawning, then
/// send `NOTIFY_RESEND`.
///
/// # Errors
/// The journal is damaged (not just torn at its end), or its contents do not
/// decode or validate: a [`RecoveryError`] saying which.
pub fn recover_session<F>(
    map: JournalMap,
    fds: &mut FdRestorer,
    options: JournalOptions,
) -> Result<RecoveredSession<F>, RecoveryError>
where
    F: Precopy + Send + Sync + 'static,
{
    let started = std::time::Instant::now();
    // The checkpoint decodes on a second thread while the log is read.
    let (recovered, decoded) = recover_decoding(&map, |checkpoint| {
        let t = std::time::Instant::now();
        let (base, first, replies): CheckpointRef<'_> =
            decode_checked(checkpoint, "the journal's checkpoint")?;
        let (tables, fs_base) = decode_base::<F>(base)?;
        let recorded: HashMap<u64, Vec<u8>> = replies.into_iter().collect();
        let pending: Entry<F> = decode_checked(first, "the checkpoint's first round")?;
        Ok::<_, RecoveryError>((tables, fs_base, recorded, pending, t.elapsed()))
    })?;
    let read = started.elapsed();
    let (mut tables, mut fs_base, mut recorded, mut pending, decoding) = decoded?;
    let mut count = 0;
    for (i, record) in recovered.records.iter().enumerate() {
        let seq = recovered.first_seq + i as u64;
        let next: Entry<F> = match record {
            // Every session part whole: what builds before kind 11 wrote.
            Record::FsChange(bytes) => decode_checked(bytes, "a journal record")?,
            Record::Delta(bytes) => {
                let (d, f, reply): DeltaEntry<F> = decode_checked(bytes, "a journal delta record")?;
                let prev = &mut pending.0;
                let tables = SessionChanges {
                    init: prev.init,
                    nodes: d.nodes,
                    forgotten: d.forgotten,
                    // Unchanged: the previous record's (taken: of the previous
                    // record only the nodes are applied below).
                    handles: d
                        .handles
                        .unwrap_or_else(|| std::mem::take(&mut prev.handles)),
                    polls: d.polls,
                    only_uid: prev.only_uid,
                    counters: d.counters,
                };
                (tables, f, reply)
            }
            _ => return Err(RecoveryError::UnexpectedRecord(seq)),
        };
        let (t, f, _) = std::mem::replace(&mut pending, next);
        tables
            .apply_round(NodeChanges {
                nodes: t.nodes,
                forgotten: t.forgotten,
            })
            .map_err(FormatError::State)?;
        F::apply_round(&mut fs_base, f).map_err(FormatError::FsRestore)?;
        // Taken, not copied: of the pending entry only the session and filesystem
        // parts are used later.
        if let Some((unique, reply)) = pending.2.take() {
            log::trace!("recovery: record seq={seq} holds the reply of unique={unique:#x}");
            recorded.insert(unique, reply);
        }
        count += 1;
    }
    let replayed = started.elapsed();
    let (mut t, f, _) = pending;
    // The counters are the last record's: requests that append no record
    // (GETATTR, a LOOKUP within its reserved count...) moved them since, and so
    // may a NOTIFY_RETRIEVE sent meanwhile, whose reply the kernel may still
    // deliver to this process. Its unique must not be handed out again.
    t.counters.next_notify_unique = t
        .counters
        .next_notify_unique
        .saturating_add(NOTIFY_UNIQUE_GAP);
    let fs = F::restore_precopied(fs_base, f, fds).map_err(FormatError::FsRestore)?;
    // A handle on a nodeid the kernel has forgotten cannot be used by the kernel (it
    // forgets a nodeid only once every file on it is released): an orphan, which a
    // request run twice across a crash can leave behind. Dropped, with a warning.
    // (The crash test found such orphans; which request leaves them is not yet
    // pinned down.)
    let before = t.handles.len();
    t.handles.retain(|h| {
        let forgotten = t.forgotten.binary_search(&h.nodeid).is_ok();
        let present = !forgotten
            && (t.nodes.iter().any(|n| n.nodeid == h.nodeid) || tables.contains(h.nodeid));
        let fs_has = fs.check_session(&[], std::slice::from_ref(h)).is_ok();
        if !(present && fs_has) {
            log::warn!(
                "recovery drops fh {} on nodeid {} (forgotten in the last record: \
                 {forgotten}, in the tables: {present}, in the filesystem: {fs_has})",
                h.fh,
                h.nodeid
            );
        }
        present && fs_has
    });
    if t.handles.len() != before {
        log::warn!(
            "recovery dropped {} handle(s) on nodeids the kernel no longer has",
            before - t.handles.len()
        );
    }
    fs.check_session(&t.nodes, &t.handles)
        .map_err(FormatError::FsRestore)?;
    let mut session = Session::restore_precopied(fs, tables, t).map_err(FormatError::State)?;
    let replies = recorded.len();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    log::info!(
        "journal recovered in {:.1} ms: read and checked, the checkpoint decoded meanwhile \
         {:.1} ms ({} bytes of checkpoint decoded in {:.1} ms, {} records), replayed {:.1} ms, \
         restored and validated {:.1} ms",
        ms(started.elapsed()),
        ms(read),
        recovered.checkpoint.len(),
        ms(decoding),
        recovered.records.len(),
        ms(replayed - read),
        ms(started.elapsed() - replayed)
    );
    let hook = Arc::new(JournalHook {
        gate: Gate::default(),
        live: OnceLock::new(),
        recorded,
        recovered: true,
        options,
    });
    session.set_hook(hook.clone());
    Ok(RecoveredSession {
        session,
        hook,
        recovered,
        map,
        records: count,
        replies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precopy::encode_checked;

    /// Checkpoints written as [`Checkpoint`] (every journal so far) read back as
    /// [`CheckpointRef`], the same values, and hostile bytes are refused.
    #[test]
    fn a_checkpoint_reads_back_borrowed() {
        let base: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let cp: Checkpoint = (
            base.clone(),
            vec![1, 2, 3],
            vec![(7, vec![9; 40]), (8, Vec::new())],
        );
        let bytes = encode_checked(&cp).unwrap();
        // What `checkpoint` writes (byte strings, the replies from a deque) is
        // the same bytes.
        let recent: VecDeque<(u64, Vec<u8>)> = cp.2.iter().cloned().collect();
        let fast = encode_checked(&(Bytes(&cp.0), Bytes(&cp.1), &recent)).unwrap();
        assert_eq!(fast, bytes);
        // And what `checkpoint` writes now: the base in two parts, not copied.
        for split in [0, 1, 4, 40_000, base.len()] {
            let (tables, fs) = base.split_at(split);
            let parts = checkpoint_parts(tables.to_vec(), fs.to_vec(), &cp.1, &recent).unwrap();
            let mut slots = [&[][..]; 4];
            let pieces = parts.pieces(&mut slots);
            assert_eq!(pieces.parts.concat(), bytes, "split at {split}");
            assert_eq!(
                (pieces.crc, pieces.len),
                (crc32(&bytes), bytes.len() as u64)
            );
        }
        let (b, f, r): CheckpointRef<'_> = decode_checked(&bytes, "a checkpoint").unwrap();
        assert_eq!((b, f, &r), (&base[..], &[1u8, 2, 3][..], &cp.2));
        // Truncated at every length: an error, never a panic.
        for n in [0, 3, 4, 5, 8, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode_checked::<CheckpointRef<'_>>(&bytes[..n], "a checkpoint").is_err());
        }
        // A length past the end (the checksum made right): refused.
        let mut forged = vec![0u8; 4];
        forged.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f, 1, 2]);
        let crc = crate::format::crc::crc32(&forged[4..]);
        forged[..4].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_checked::<CheckpointRef<'_>>(&forged, "a checkpoint").is_err());
    }
}
