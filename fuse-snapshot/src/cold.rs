//! Cold restore: a snapshot (typically a file) restored onto a *fresh* connection,
//! after the mount it was taken from has gone (unmounted, machine rebooted).
//!
//! A live handoff or crash recovery restores a snapshot onto the same `/dev/fuse`
//! connection, where the kernel still holds every nodeid, lookup count and file
//! handle the snapshot records. A fresh mount has none of them, so a cold restore
//! keeps only what does not depend on the connection:
//!
//! | carried over | not carried over |
//! | --- | --- |
//! | the filesystem's own state ([`SnapshotFs::restore`]): contents, inode numbers, attributes | nodeids, generations and lookup counts (the new connection starts at the root; nodeids are fresh) |
//! | the INIT settings that were agreed, as the wishes for the new INIT ([`ColdRestore::wishes`]): the kernel of the new connection agrees what it offers of them | open files and directory streams (file handles of the old connection; their processes saw the old mount go) |
//! | | anything the kernel kept: locks, the page cache, pending requests; `st_dev` |
//! | | file handles (`name_to_handle_at`) taken on the old mount: they name old nodeids |
//!
//! A filesystem should drop what only the old connection could reach (memfs drops
//! inodes that were unlinked but still open).
use fuse_session::{InitState, InitWishes};

use crate::fds::FdRestorer;
use crate::format::{decode_state, FormatError};
use crate::fs::SnapshotFs;

/// A snapshot restored for a fresh connection (see the [module docs](self)).
#[derive(Debug)]
pub struct ColdRestore<F> {
    /// The filesystem, rebuilt from its saved state.
    pub fs: F,
    /// The INIT exchange the snapshot recorded (the old connection's).
    pub init: InitState,
    /// How many nodeids the old connection had (dropped).
    pub dropped_nodes: usize,
    /// How many open file handles it had (dropped).
    pub dropped_handles: usize,
}

impl<F> ColdRestore<F> {
    /// The recorded INIT result as the wishes for the new connection's INIT: the
    /// same flags and sizes. The new kernel agrees what it offers of them (a newer
    /// or older kernel may offer more or less); a filesystem's own
    /// [`init`](fuse_session::Filesystem::init) can start from these.
    pub fn wishes(&self) -> InitWishes {
        let r = &self.init.result;
        InitWishes {
            flags: fuse_session::wire::InitFlags(r.flags),
            max_write: r.max_write,
            max_readahead: Some(r.max_readahead),
            max_background: r.max_background,
            congestion_threshold: r.congestion_threshold,
            time_gran: r.time_gran,
            request_timeout: r.request_timeout,
            max_stack_depth: r.max_stack_depth,
            ..InitWishes::default()
        }
    }
}

/// Restores the filesystem of snapshot `bytes` for a fresh connection: decodes and
/// validates the whole snapshot (the session's tables too, so that a damaged file
/// is refused rather than half-used), rebuilds the filesystem with
/// [`SnapshotFs::restore`] without descriptors (a file carries none), and drops the
/// connection's tables. Mount and serve `fs` as a new filesystem.
///
/// # Errors
/// Any decoding error, [`FormatError::FsRestore`] if the filesystem refused its
/// state (or needs descriptors, which a cold restore cannot give).
pub fn restore_cold<F: SnapshotFs>(bytes: &[u8]) -> Result<ColdRestore<F>, FormatError> {
    let (state, fs_state) = decode_state::<F::Node, F::Handle, F::State>(bytes)?;
    let mut fds = FdRestorer::empty();
    let fs = F::restore(fs_state, &mut fds).map_err(FormatError::FsRestore)?;
    Ok(ColdRestore {
        fs,
        init: state.init,
        dropped_nodes: state.nodes.len(),
        dropped_handles: state.handles.len(),
    })
}
