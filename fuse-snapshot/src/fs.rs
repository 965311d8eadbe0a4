//! [`SnapshotFs`]: a filesystem whose own state rides along with the session's,
//! and the typed entry points built on it.
use std::io;

use fuse_session::{Filesystem, HandleState, NodeState, Session, SessionState};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::fds::{FdRestorer, FdSaver};
use crate::format::{decode_state, decode_unvalidated, encode_state, FormatError};
use crate::precopy::PrecopyOps;

/// A [`Filesystem`] that can be snapshotted and restored in another process.
///
/// The session already carries every node and handle value the kernel refers to;
/// this trait adds whatever *else* the filesystem keeps (its inode table, file
/// contents, a cache, open backing files) as one serde value, [`State`](Self::State).
///
/// Saved state is untrusted input when it comes back: `restore` must check what it
/// relies on and return an error rather than panic.
pub trait SnapshotFs: Filesystem {
    /// The filesystem's own state: plain data, with an [`FdSlot`](crate::FdSlot)
    /// wherever it holds a file descriptor.
    type State: Serialize + DeserializeOwned + Send + 'static;

    /// The filesystem's state now. Called while the session is paused (no request in
    /// flight), so it sees the same moment as the session's tables. Put each file
    /// descriptor the state needs into `fds` and keep the returned slot.
    ///
    /// # Errors
    /// Saving failed (typically a `dup` in [`FdSaver::add`]); the snapshot is
    /// abandoned and the old process keeps serving.
    fn save(&self, fds: &mut FdSaver) -> io::Result<Self::State>;

    /// The filesystem rebuilt from `state`, taking its descriptors from `fds` (empty
    /// for a snapshot read from a file).
    ///
    /// # Errors
    /// A message saying what is wrong with the state (or which descriptor is
    /// missing); the restore is refused.
    fn restore(state: Self::State, fds: &mut FdRestorer) -> Result<Self, String>
    where
        Self: Sized;

    /// Checks the restored filesystem against the session's tables before they are
    /// served: that every node and handle value given names something the
    /// filesystem has. Both came from the same untrusted snapshot, and each is
    /// consistent on its own only by its own checks. A whole restore passes every
    /// node; a pre-copied handoff passes the nodes that changed since the pre-copy
    /// (and every handle). The default accepts.
    ///
    /// # Errors
    /// A message saying what does not match; the restore is refused.
    fn check_session(
        &self,
        nodes: &[NodeState<Self::Node>],
        handles: &[HandleState<Self::Handle>],
    ) -> Result<(), String>
    where
        Self: Sized,
    {
        let _ = (nodes, handles);
        Ok(())
    }

    /// Pre-copy support for live handoff ([`crate::precopy`]): return
    /// `Some(PrecopyOps::new())` when the filesystem implements
    /// [`Precopy`](crate::Precopy), so that most of its state crosses before the
    /// mount is paused. The default, `None`, takes the whole state while paused.
    fn precopy() -> Option<PrecopyOps<Self>>
    where
        Self: Sized,
    {
        None
    }
}

/// The session state of filesystem `F`: its tables with `F`'s node and handle values.
pub type StateOf<F> = SessionState<<F as Filesystem>::Node, <F as Filesystem>::Handle>;

/// Encodes `session` and the filesystem's `fs_state` as a snapshot: the typed
/// form of [`encode_state`](crate::encode_state).
///
/// # Errors
/// As [`encode_state`](crate::encode_state).
pub fn encode<F: SnapshotFs>(
    session: &StateOf<F>,
    fs_state: &F::State,
) -> Result<Vec<u8>, FormatError> {
    encode_state(session, fs_state)
}

/// Decodes and validates a snapshot of filesystem `F`: the typed form of
/// [`decode_state`](crate::decode_state).
///
/// # Errors
/// As [`decode_state`](crate::decode_state).
pub fn decode<F: SnapshotFs>(bytes: &[u8]) -> Result<(StateOf<F>, F::State), FormatError> {
    decode_state(bytes)
}

/// Snapshots a live session: the session's tables and the filesystem's own state
/// ([`SnapshotFs::save`]), encoded. File descriptors the filesystem saved are in
/// `fds`, to be passed beside the bytes.
///
/// Call it while no request is being handled (e.g. under
/// [`Running::pause`](fuse_session::serve::Running::pause)).
///
/// # Errors
/// [`FormatError::NotInitialized`] before INIT, [`FormatError::FsSave`] if the
/// filesystem could not save, or an encoding error.
pub fn snapshot<F: SnapshotFs>(
    session: &Session<F>,
    fds: &mut FdSaver,
) -> Result<Vec<u8>, FormatError> {
    let state = session.snapshot().ok_or(FormatError::NotInitialized)?;
    let fs_state = session
        .filesystem()
        .save(fds)
        .map_err(|e| FormatError::FsSave(e.to_string()))?;
    encode::<F>(&state, &fs_state)
}

/// Restores a session from a snapshot: decodes it, rebuilds the filesystem with
/// [`SnapshotFs::restore`] (taking its descriptors from `fds`), checks the two
/// against each other ([`SnapshotFs::check_session`]), and hands both to
/// [`Session::restore`], which validates the state. The session is already
/// initialized; serve it on the inherited `/dev/fuse` connection.
///
/// # Errors
/// Any decoding error, [`FormatError::FsRestore`] if the filesystem refused its
/// state, [`FormatError::State`] if the session state is inconsistent.
pub fn restore<F: SnapshotFs>(
    bytes: &[u8],
    fds: &mut FdRestorer,
) -> Result<Session<F>, FormatError> {
    // Session::restore validates; no need to do it twice.
    let (state, fs_state) = decode_unvalidated::<F::Node, F::Handle, F::State>(bytes)?;
    let fs = F::restore(fs_state, fds).map_err(FormatError::FsRestore)?;
    fs.check_session(&state.nodes, &state.handles)
        .map_err(FormatError::FsRestore)?;
    Session::restore(fs, state).map_err(FormatError::State)
}
