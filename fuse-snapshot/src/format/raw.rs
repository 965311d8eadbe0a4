//! The untyped view of a snapshot, for tools that do not know a filesystem's types.
use fuse_session::{Counters, HandleKind, InitState};

/// One nodeid, with its node value still encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawNode<'a> {
    /// The nodeid.
    pub nodeid: u64,
    /// Its generation.
    pub generation: u64,
    /// The kernel's lookup count.
    pub lookups: u64,
    /// The filesystem's node value, postcard-encoded.
    pub node: &'a [u8],
}

/// One open handle, with its handle value still encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawHandle<'a> {
    /// The fh.
    pub fh: u64,
    /// File or directory.
    pub kind: HandleKind,
    /// The nodeid it is open on.
    pub nodeid: u64,
    /// The `open(2)` flags.
    pub flags: u32,
    /// The filesystem's handle value, postcard-encoded.
    pub handle: &'a [u8],
}

/// A snapshot whose envelope was checked and whose body was decoded, but whose
/// filesystem values (nodes, handles, the filesystem's state) are still bytes.
///
/// Borrowed from the snapshot's bytes. Nothing beyond the envelope and the body's
/// structure is checked: [`decode_state`](super::decode_state) validates the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSnapshot<'a> {
    /// The format version it was written in.
    pub format_version: u16,
    /// The kernel's INIT offer and the agreed result.
    pub init: InitState,
    /// Every nodeid, in stored order (sorted, in a valid snapshot).
    pub nodes: Vec<RawNode<'a>>,
    /// Every open handle, in stored order (sorted by fh, in a valid snapshot).
    pub handles: Vec<RawHandle<'a>>,
    /// Poll handles the kernel waits on.
    pub polls: Vec<u64>,
    /// With `allow_root`: the only uid besides root let in.
    pub only_uid: Option<u32>,
    /// The session's counters.
    pub counters: Counters,
    /// The filesystem's own state, postcard-encoded.
    pub fs_state: &'a [u8],
}

impl RawSnapshot<'_> {
    /// Counts and sizes. `total_bytes` is the length of the snapshot it came from.
    pub fn summary(&self, total_bytes: usize) -> Summary {
        let file_handles = self
            .handles
            .iter()
            .filter(|h| h.kind == HandleKind::File)
            .count();
        Summary {
            format_version: self.format_version,
            total_bytes: total_bytes as u64,
            init: self.init,
            only_uid: self.only_uid,
            counters: self.counters,
            nodes: self.nodes.len() as u64,
            file_handles: file_handles as u64,
            dir_handles: (self.handles.len() - file_handles) as u64,
            polls: self.polls.len() as u64,
            node_value_bytes: self.nodes.iter().map(|n| n.node.len() as u64).sum(),
            handle_value_bytes: self.handles.iter().map(|h| h.handle.len() as u64).sum(),
            fs_state_bytes: self.fs_state.len() as u64,
        }
    }
}

/// What a snapshot holds, in numbers: see [`summarize`](super::summarize).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// The format version it was written in.
    pub format_version: u16,
    /// Size of the whole snapshot (header and body).
    pub total_bytes: u64,
    /// The kernel's INIT offer and the agreed result.
    pub init: InitState,
    /// With `allow_root`: the only uid besides root let in.
    pub only_uid: Option<u32>,
    /// The session's counters.
    pub counters: Counters,
    /// Nodeids (the root included).
    pub nodes: u64,
    /// Open file handles.
    pub file_handles: u64,
    /// Open directory handles.
    pub dir_handles: u64,
    /// Poll handles.
    pub polls: u64,
    /// Bytes of all encoded node values (without their length prefixes).
    pub node_value_bytes: u64,
    /// Bytes of all encoded handle values (without their length prefixes).
    pub handle_value_bytes: u64,
    /// Bytes of the filesystem's encoded state.
    pub fs_state_bytes: u64,
}

impl Summary {
    /// The whole snapshot's size divided by the number of nodeids (0 if none).
    pub fn bytes_per_nodeid(&self) -> f64 {
        if self.nodes == 0 {
            0.0
        } else {
            self.total_bytes as f64 / self.nodes as f64
        }
    }
}
