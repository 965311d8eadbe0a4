//! Pre-copy: most of a filesystem's state crosses to the new process *before* the
//! mount is paused, so the stall of a live handoff depends on what changed during
//! the copy, not on how large the state is.
//!
//! A [`SnapshotFs`] takes part by also implementing [`Precopy`] and returning
//! [`PrecopyOps::new`] from [`SnapshotFs::precopy`]. A handoff then runs:
//!
//! 1. Old process, still serving: [`Precopy::precopy_begin`] starts recording what
//!    changes and returns the state as it is (the *base*, bytes the filesystem
//!    encodes as it likes, e.g. in chunks under short locks). It is sent to the new
//!    process, which decodes it ([`Precopy::decode_base`]) while the old process
//!    keeps serving, and answers that it is ready.
//!    Then, still serving, it may send *rounds* ([`Precopy::precopy_round`]): what
//!    changed since step 1 or the last round, which the new process applies to its
//!    base ([`Precopy::apply_round`]); rounds go on while they shrink (at most
//!    [`MAX_ROUNDS`], stopping once one is under [`ROUND_ENOUGH`] bytes), so that
//!    what is written during a long copy does not all wait for the pause.
//! 2. Old process, paused: [`Precopy::precopy_changes`] returns what changed since
//!    step 1 (or the last round) and stops recording. It travels in the snapshot in place of the whole
//!    state, beside the session's tables and the descriptors.
//! 3. New process, paused: [`Precopy::restore_precopied`] builds the filesystem from
//!    the base and the changes, and validates it (both are untrusted).
//!
//! If the handoff fails anywhere, [`Precopy::precopy_abort`] stops the recording
//! and the old process serves on, as without pre-copy.
//!
//! The base may be inconsistent (an item changed while it was being copied): that
//! is fine as long as every such item is among the changes of step 2, which carry
//! its final value.
use std::any::Any;
use std::io;

use fuse_session::{Filesystem, NodeChanges, PrecopiedState, Session, SessionChanges};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::format::crc::crc32;
use crate::format::{decode_unvalidated, encode_state, FormatError};
use crate::{FdRestorer, FdSaver, SnapshotFs};

/// A [`SnapshotFs`] whose state can be copied while it serves, then completed by
/// the changes made meanwhile: see the [module docs](self).
pub trait Precopy: SnapshotFs {
    /// The decoded base, as the new process keeps it until the changes arrive.
    type Base: Send + 'static;
    /// What changed between [`Precopy::precopy_begin`] and the pause.
    type Changes: Serialize + DeserializeOwned + Send + 'static;

    /// Old process, while serving (called from the handoff thread, concurrently
    /// with requests): start recording every change, then return the state as it
    /// is, encoded (what [`Precopy::decode_base`] reads). Hold locks only briefly:
    /// requests wait for them.
    ///
    /// # Errors
    /// The handoff is refused and the mount keeps being served; recording is
    /// stopped with [`Precopy::precopy_abort`].
    fn precopy_begin(&self) -> io::Result<Vec<u8>>;

    /// Old process, paused (no request in flight): everything that changed since
    /// [`Precopy::precopy_begin`], and stop recording. Descriptors the state needs
    /// go into `fds`, as in [`SnapshotFs::save`].
    ///
    /// # Errors
    /// The handoff is abandoned and the old process serves on.
    fn precopy_changes(&self, fds: &mut FdSaver) -> io::Result<Self::Changes>;

    /// Old process, while serving, after the base: what changed since
    /// [`Precopy::precopy_begin`] or the last round, recording on afresh. Hold
    /// locks only briefly. The default, `Ok(None)`, takes no rounds: everything
    /// changed during the copy crosses under the pause.
    ///
    /// # Errors
    /// The handoff is refused and the mount keeps being served.
    fn precopy_round(&self) -> io::Result<Option<Self::Changes>> {
        Ok(None)
    }

    /// New process, while the old one still serves: apply one round to the base.
    /// The end state is only whole after the last changes: check then, in
    /// [`Precopy::restore_precopied`]. Untrusted input: an error, never a panic.
    ///
    /// # Errors
    /// A message saying what is wrong; the handoff is refused.
    fn apply_round(base: &mut Self::Base, changes: Self::Changes) -> Result<(), String> {
        let _ = (base, changes);
        Err("this filesystem takes no pre-copy rounds".into())
    }

    /// Start recording every change, as [`Precopy::precopy_begin`] does, without
    /// encoding the state: for a journal that goes on, after a crash, in the log
    /// it was recovered from (whose checkpoint and records already hold the
    /// state), so that [`Precopy::precopy_round`] then returns the changes since
    /// this call. Forgets earlier notes. Returns false if the filesystem cannot
    /// (the default): the journal then takes a fresh base instead.
    ///
    /// # Errors
    /// Recording could not start; the journal is not resumed.
    fn precopy_start(&self) -> io::Result<bool> {
        Ok(false)
    }

    /// Whether [`Precopy::precopy_round`] may have anything to return now that
    /// the last round did not: false only if no change was noted since the last
    /// round (or since recording started). A journal then skips the record of a
    /// request that changed nothing else (a LOOKUP within its reserved count,
    /// a FLUSH): what such a request did to the filesystem is in no record before
    /// its reply unless this says so. The default, true, always records.
    fn precopy_pending(&self) -> bool {
        true
    }

    /// Old process: stop recording without sending the changes (the handoff
    /// failed or was refused). Must be harmless when not recording.
    fn precopy_abort(&self);

    /// New process, while the old one still serves: decode the bytes of
    /// [`Precopy::precopy_begin`]. Untrusted input: an error, never a panic.
    ///
    /// # Errors
    /// A message saying what is wrong; the handoff is refused.
    fn decode_base(bytes: &[u8]) -> Result<Self::Base, String>;

    /// New process, paused: the filesystem from the base and the changes, taking
    /// its descriptors from `fds`. Validate the result as [`SnapshotFs::restore`]
    /// does: both parts are untrusted.
    ///
    /// # Errors
    /// A message saying what is wrong; the handoff is refused.
    fn restore_precopied(
        base: Self::Base,
        changes: Self::Changes,
        fds: &mut FdRestorer,
    ) -> Result<Self, String>
    where
        Self: Sized;
}

/// The most rounds of changes sent after the pre-copy.
pub const MAX_ROUNDS: u32 = 3;
/// A round smaller than this is the last: what is left is small enough for the
/// pause.
pub const ROUND_ENOUGH: usize = 64 * 1024;

type AnyBase = Box<dyn Any + Send>;
/// Takes one round's bytes (`None`: the filesystem takes no rounds).
type RoundFn<F> = fn(&Session<F>) -> Result<Option<Vec<u8>>, FormatError>;
/// Builds the session from the base and the changes' bytes.
type RestoreFn<F> = fn(AnyBase, &[u8], &mut FdRestorer) -> Result<Session<F>, FormatError>;

/// The pre-copy entry points of filesystem `F`, for the handoff code (which only
/// knows `F: SnapshotFs`). Made by [`PrecopyOps::new`] for an `F: Precopy`, and
/// returned by [`SnapshotFs::precopy`].
pub struct PrecopyOps<F: SnapshotFs> {
    pub(crate) begin: fn(&Session<F>) -> Result<Vec<u8>, FormatError>,
    pub(crate) abort: fn(&Session<F>),
    pub(crate) round: RoundFn<F>,
    pub(crate) apply_round: fn(&mut AnyBase, &[u8]) -> Result<(), FormatError>,
    pub(crate) changes: fn(&Session<F>, &mut FdSaver) -> Result<Vec<u8>, FormatError>,
    pub(crate) decode_base: fn(&[u8]) -> Result<AnyBase, FormatError>,
    pub(crate) restore: RestoreFn<F>,
}

impl<F: SnapshotFs> Clone for PrecopyOps<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: SnapshotFs> Copy for PrecopyOps<F> {}

impl<F: SnapshotFs> std::fmt::Debug for PrecopyOps<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrecopyOps")
    }
}

impl<F: Precopy> PrecopyOps<F> {
    /// The entry points of `F`'s [`Precopy`] implementation.
    pub fn new() -> Self {
        PrecopyOps {
            begin: begin::<F>,
            abort: abort::<F>,
            round: round::<F>,
            apply_round: apply_round::<F>,
            changes: changes::<F>,
            decode_base: |bytes| decode_base::<F>(bytes).map(|b| Box::new(b) as AnyBase),
            restore: restore_precopied::<F>,
        }
    }
}

impl<F: Precopy> Default for PrecopyOps<F> {
    fn default() -> Self {
        Self::new()
    }
}

/// The new process's base: the session's tables, built, and the filesystem's.
pub(crate) type Base<F> = (
    PrecopiedState<<F as Filesystem>::Node>,
    <F as Precopy>::Base,
);

/// The changes under the pause, as they travel.
type Changes<F> = (
    SessionChanges<<F as Filesystem>::Node, <F as Filesystem>::Handle>,
    <F as Precopy>::Changes,
);

/// The pre-copy: the session's base as an ordinary snapshot (with an empty
/// filesystem state), then the filesystem's base bytes:
/// `session_len u32 LE, session snapshot, filesystem bytes`.
pub(crate) fn begin<F: Precopy>(session: &Session<F>) -> Result<Vec<u8>, FormatError> {
    let (head, fs) = begin_parts(session)?;
    let mut out = Vec::with_capacity(head.len() + fs.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&fs);
    Ok(out)
}

/// [`begin`]'s bytes in two parts, not copied into one buffer: the session's
/// (`session_len u32 LE, session snapshot`) and the filesystem's.
pub(crate) fn begin_parts<F: Precopy>(
    session: &Session<F>,
) -> Result<(Vec<u8>, Vec<u8>), FormatError> {
    let state = session.precopy_begin().ok_or(FormatError::NotInitialized)?;
    let tables = encode_state(&state, &());
    drop(state);
    let fs = session
        .filesystem()
        .precopy_begin()
        .map_err(|e| FormatError::FsSave(e.to_string()));
    let (tables, fs) = match (tables, fs) {
        (Ok(t), Ok(f)) => (t, f),
        (Err(e), _) | (_, Err(e)) => {
            abort::<F>(session);
            return Err(e);
        }
    };
    let len = u32::try_from(tables.len())
        .map_err(|_| FormatError::Encode("the session's pre-copy exceeds 4 GiB".into()))?;
    let mut head = Vec::with_capacity(4 + tables.len());
    head.extend_from_slice(&len.to_le_bytes());
    head.extend_from_slice(&tables);
    Ok((head, fs))
}

fn abort<F: Precopy>(session: &Session<F>) {
    session.precopy_abort();
    session.filesystem().precopy_abort();
}

pub(crate) fn decode_base<F: Precopy>(bytes: &[u8]) -> Result<Base<F>, FormatError> {
    let (len, rest) = match bytes.split_first_chunk::<4>() {
        Some((len, rest)) => (u32::from_le_bytes(*len) as usize, rest),
        None => {
            return Err(FormatError::BadPrecopy(format!(
                "the pre-copy is {} bytes, too short for its 4-byte length",
                bytes.len()
            )))
        }
    };
    if len > rest.len() {
        return Err(FormatError::BadPrecopy(format!(
            "the pre-copy is truncated: its session part is {len} bytes, {} follow",
            rest.len()
        )));
    }
    let (tables, fs) = rest.split_at(len);
    // The filesystem's part (most of a large state) decodes on a second thread
    // while this one decodes the session's tables; errors in the same order as
    // one after the other (the tables' first). Without a thread, one after the
    // other.
    let fs_part = || F::decode_base(fs);
    let (tables, fs) = std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name("precopy-decode".into())
            .spawn_scoped(s, fs_part);
        let tables = decode_unvalidated::<F::Node, F::Handle, ()>(tables)
            .and_then(|(state, ())| PrecopiedState::new(state).map_err(FormatError::State));
        let fs = match spawned {
            Ok(h) => h
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => fs_part(),
        };
        (tables, fs)
    });
    let fs = fs.map_err(|e| FormatError::FsRestore(format!("the pre-copied state: {e}")));
    Ok((tables?, fs?))
}

/// `crc32 u32 LE` of the rest, then the postcard encoding of `value`: how rounds
/// and the changes under the pause travel.
pub(crate) fn encode_checked<T: Serialize>(value: &T) -> Result<Vec<u8>, FormatError> {
    let mut out =
        postcard::to_extend(value, vec![0u8; 4]).map_err(|e| FormatError::Encode(e.to_string()))?;
    let crc = crc32(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// [`encode_checked`] into `out` (cleared first), reusing its capacity: the
/// journal encodes every record so, into one buffer.
pub(crate) fn encode_checked_into<T: Serialize>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    let mut buf = std::mem::take(out);
    buf.clear();
    buf.extend_from_slice(&[0u8; 4]);
    let mut buf =
        postcard::to_extend(value, buf).map_err(|e| FormatError::Encode(e.to_string()))?;
    let crc = crc32(&buf[4..]);
    buf[..4].copy_from_slice(&crc.to_le_bytes());
    *out = buf;
    Ok(())
}

/// Reads what [`encode_checked`] wrote (`what` names it in errors). `T` may
/// borrow from `bytes` (a `Vec<u8>` encoded reads back as a `&[u8]`: postcard
/// writes both as a length and the bytes).
pub(crate) fn decode_checked<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    what: &str,
) -> Result<T, FormatError> {
    let Some((stored, body)) = bytes.split_first_chunk::<4>() else {
        return Err(FormatError::BadPrecopy(format!(
            "{what} are {} bytes, too short for their checksum",
            bytes.len()
        )));
    };
    let stored = u32::from_le_bytes(*stored);
    let computed = crc32(body);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { stored, computed });
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((c, [])) => Ok(c),
        Ok((_, rest)) => Err(FormatError::BadPrecopy(format!(
            "{what} have {} trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(FormatError::BadPrecopy(format!(
            "{what} do not decode: {e}"
        ))),
    }
}

/// One round: the filesystem's changes (none if it takes no rounds) and the
/// session's nodeids changed since the last.
fn round<F: Precopy>(session: &Session<F>) -> Result<Option<Vec<u8>>, FormatError> {
    let fs = session
        .filesystem()
        .precopy_round()
        .map_err(|e| FormatError::FsSave(e.to_string()))?;
    let Some(fs) = fs else {
        return Ok(None);
    };
    let nodes = session
        .precopy_round()
        .ok_or_else(|| FormatError::FsSave("no pre-copy in progress".into()))?;
    encode_checked(&(nodes, fs)).map(Some)
}

fn apply_round<F: Precopy>(base: &mut AnyBase, bytes: &[u8]) -> Result<(), FormatError> {
    let (tables, fs) = base.downcast_mut::<Base<F>>().ok_or_else(|| {
        FormatError::FsRestore("pre-copied base of another filesystem type".into())
    })?;
    let (nodes, changes): (NodeChanges<F::Node>, F::Changes) =
        decode_checked(bytes, "a pre-copy round's changes")?;
    tables.apply_round(nodes).map_err(FormatError::State)?;
    F::apply_round(fs, changes).map_err(FormatError::FsRestore)
}

/// The changes under the pause, as [`encode_checked`]: the session's and the
/// filesystem's.
fn changes<F: Precopy>(session: &Session<F>, fds: &mut FdSaver) -> Result<Vec<u8>, FormatError> {
    let tables = session
        .precopy_changes()
        .ok_or_else(|| FormatError::FsSave("no pre-copy in progress".into()))?;
    let fs = session
        .filesystem()
        .precopy_changes(fds)
        .map_err(|e| FormatError::FsSave(e.to_string()))?;
    encode_checked(&(tables, fs))
}

fn restore_precopied<F: Precopy>(
    base: AnyBase,
    bytes: &[u8],
    fds: &mut FdRestorer,
) -> Result<Session<F>, FormatError> {
    let (tables, fs_base) = *base
        .downcast::<Base<F>>()
        .map_err(|_| FormatError::FsRestore("pre-copied base of another filesystem type".into()))?;
    let (session_changes, fs_changes): Changes<F> =
        decode_checked(bytes, "the pre-copy's changes")?;
    let fs = F::restore_precopied(fs_base, fs_changes, fds).map_err(FormatError::FsRestore)?;
    fs.check_session(&session_changes.nodes, &session_changes.handles)
        .map_err(FormatError::FsRestore)?;
    Session::restore_precopied(fs, tables, session_changes).map_err(FormatError::State)
}

#[cfg(test)]
mod tests {
    //! The pre-copy entry points in process, with a filesystem that takes no
    //! rounds (the default `precopy_round`) and one that does.
    use std::ffi::OsStr;
    use std::sync::Mutex;
    use std::time::Duration;

    use fuse_session::fake::FakeKernel;
    use fuse_session::{Entry, Errno, FileAttr, FileType, RequestContext, Result};
    use fuse_wire::InitFlags;

    use super::*;

    /// Root (node 0) holds `n0`..`n9`; its own state is a counter that every
    /// lookup bumps; with `rounds`, it takes pre-copy rounds.
    struct Counted {
        hits: Mutex<u64>,
        rounds: bool,
        recording: Mutex<Option<u64>>,
    }

    impl Counted {
        fn new(rounds: bool) -> Self {
            Counted {
                hits: Mutex::new(0),
                rounds,
                recording: Mutex::new(None),
            }
        }
    }

    impl Filesystem for Counted {
        type Node = u32;
        type Handle = u32;

        fn root(&self) -> u32 {
            0
        }

        fn lookup(&self, _: &RequestContext<'_>, _: &u32, name: &OsStr) -> Result<Entry<u32>> {
            let n: u32 = name
                .to_str()
                .and_then(|s| s.strip_prefix('n'))
                .and_then(|s| s.parse().ok())
                .filter(|&n| n < 10)
                .ok_or(Errno::ENOENT)?;
            *self.hits.lock().unwrap() += 1;
            Ok(Entry {
                node: n + 1,
                attr: FileAttr::new(u64::from(n) + 2, FileType::RegularFile, 0o644),
                entry_ttl: Duration::ZERO,
                attr_ttl: Duration::ZERO,
            })
        }
    }

    impl SnapshotFs for Counted {
        type State = u64;

        fn save(&self, _: &mut FdSaver) -> io::Result<u64> {
            Ok(*self.hits.lock().unwrap())
        }

        fn restore(state: u64, _: &mut FdRestorer) -> std::result::Result<Self, String> {
            let fs = Counted::new(false);
            *fs.hits.lock().unwrap() = state;
            Ok(fs)
        }

        fn precopy() -> Option<PrecopyOps<Self>> {
            Some(PrecopyOps::new())
        }
    }

    impl Precopy for Counted {
        type Base = u64;
        /// The counter now (the whole state is the change here).
        type Changes = u64;

        fn precopy_begin(&self) -> io::Result<Vec<u8>> {
            let hits = *self.hits.lock().unwrap();
            *self.recording.lock().unwrap() = Some(hits);
            Ok(hits.to_le_bytes().to_vec())
        }

        fn precopy_round(&self) -> io::Result<Option<u64>> {
            Ok(self.rounds.then(|| *self.hits.lock().unwrap()))
        }

        fn apply_round(base: &mut u64, changes: u64) -> std::result::Result<(), String> {
            *base = changes;
            Ok(())
        }

        fn precopy_changes(&self, _: &mut FdSaver) -> io::Result<u64> {
            self.recording
                .lock()
                .unwrap()
                .take()
                .ok_or_else(|| io::Error::other("not recording"))?;
            Ok(*self.hits.lock().unwrap())
        }

        fn precopy_abort(&self) {
            *self.recording.lock().unwrap() = None;
        }

        fn decode_base(bytes: &[u8]) -> std::result::Result<u64, String> {
            let b: [u8; 8] = bytes.try_into().map_err(|_| "not 8 bytes".to_string())?;
            Ok(u64::from_le_bytes(b))
        }

        fn restore_precopied(
            base: u64,
            changes: u64,
            _: &mut FdRestorer,
        ) -> std::result::Result<Self, String> {
            if changes < base {
                return Err(format!("the counter went back from {base} to {changes}"));
            }
            let fs = Counted::new(false);
            *fs.hits.lock().unwrap() = changes;
            Ok(fs)
        }
    }

    fn kernel(rounds: bool) -> FakeKernel<Counted> {
        let mut k = FakeKernel::new(Counted::new(rounds));
        let _ = k.init(45, InitFlags::INIT_EXT | InitFlags::MAX_PAGES);
        k
    }

    /// Base, optional round, lookups in between, changes: what the new process
    /// restores is the session and the filesystem at the end.
    fn hand_over(rounds: bool) -> u32 {
        let mut k = kernel(rounds);
        for i in 0..4 {
            k.lookup(1, format!("n{i}").as_bytes()).unwrap();
        }
        let ops = Counted::precopy().unwrap();
        let base = (ops.begin)(k.session()).unwrap();
        let mut prepared = (ops.decode_base)(&base).unwrap();
        k.lookup(1, b"n5").unwrap();
        let mut taken = 0;
        while let Some(round) = (ops.round)(k.session()).unwrap() {
            (ops.apply_round)(&mut prepared, &round).unwrap();
            taken += 1;
            k.lookup(1, b"n6").unwrap();
            if taken == 2 {
                break;
            }
        }
        k.forget(k.session().snapshot().unwrap().nodes[1].nodeid, 1);
        let changes = (ops.changes)(k.session(), &mut FdSaver::new()).unwrap();
        let want = k.session().snapshot().unwrap();
        let restored = (ops.restore)(prepared, &changes, &mut FdRestorer::new(Vec::new())).unwrap();
        assert_eq!(restored.snapshot().unwrap(), want);
        assert_eq!(
            *restored.filesystem().hits.lock().unwrap(),
            *k.session().filesystem().hits.lock().unwrap()
        );
        taken
    }

    #[test]
    fn without_rounds_the_changes_carry_everything() {
        assert_eq!(hand_over(false), 0, "the default precopy_round takes none");
    }

    #[test]
    fn with_rounds_each_is_applied_to_the_base() {
        assert_eq!(hand_over(true), 2);
    }

    #[test]
    fn abort_stops_recording_on_both_sides() {
        let k = kernel(false);
        let ops = Counted::precopy().unwrap();
        (ops.begin)(k.session()).unwrap();
        (ops.abort)(k.session());
        assert!(k.session().precopy_changes().is_none());
        assert!((ops.changes)(k.session(), &mut FdSaver::new()).is_err());
    }

    #[test]
    fn damaged_bytes_are_errors() {
        let k = kernel(true);
        let ops = Counted::precopy().unwrap();
        let base = (ops.begin)(k.session()).unwrap();
        for n in 0..base.len() {
            assert!((ops.decode_base)(&base[..n]).is_err(), "truncated at {n}");
        }
        let mut prepared = (ops.decode_base)(&base).unwrap();
        let round = (ops.round)(k.session()).unwrap().unwrap();
        let mut bad = round.clone();
        bad[0] ^= 1;
        assert!(matches!(
            (ops.apply_round)(&mut prepared, &bad),
            Err(FormatError::ChecksumMismatch { .. })
        ));
        let changes = (ops.changes)(k.session(), &mut FdSaver::new()).unwrap();
        assert!(matches!(
            (ops.restore)(prepared, &changes[..3], &mut FdRestorer::new(Vec::new())),
            Err(FormatError::BadPrecopy(_))
        ));
    }
}
