//! memfs takes part in snapshots and live handoff: its whole contents are one serde
//! value ([`MemFsImage`]) and it holds no file descriptors.
//!
//! For a live handoff it pre-copies ([`Precopy`]): the inode table is encoded
//! while the mount serves, in chunks of about [`PRECOPY_CHUNK`] bytes under the
//! read lock (writers wait for one chunk at most: a directory of many entries is
//! a chunk of its own), with every inode changed from the
//! start noted by the table itself ([`crate::state::Inodes`]); rounds while
//! serving, and then the pause, carry only the inodes noted since (a file
//! written in places: only those chunks) and the counters ([`MemFsChanges`]).
//!
//! The saved state is the postcard encoding of the image ([`MemFsBlob`]), written
//! straight from the live state under its read lock: no copy of the filesystem is
//! made while the mount is paused. (Cloning a 100k-inode state and then encoding
//! and dropping the clone cost about three times as much as encoding it in place:
//! docs/bench/2026-11-29-live-handoff.md.)
use std::fmt;
use std::io;

use fuse_session::{HandleState, NodeState};
use fuse_snapshot::{FdRestorer, FdSaver, Precopy, PrecopyOps, SnapshotFs};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fs::{Config, Handle, MemFs, MemFsImage};
use crate::state::{Noted, State, StateChanges, StateIndex};

/// Bytes encoded per hold of the read lock during a pre-copy (well under a
/// millisecond of work): a writer waits for at most that much, or one inode.
pub const PRECOPY_CHUNK: usize = 256 * 1024;

/// The pause between two chunks. Without it a writer starves: releasing the
/// read lock wakes the waiting writer and clears its flag, and this loop takes the
/// lock again long before the writer's thread runs (a cross-CPU wake-up costs
/// ~100 µs here); measured, client operations then waited for the whole copy
/// (30–50 ms at 100k inodes) instead of a chunk.
pub const PRECOPY_GAP: std::time::Duration = std::time::Duration::from_micros(200);

/// What changed in a memfs during a pre-copy: sent under the pause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemFsChanges {
    /// The settings.
    pub config: Config,
    /// The inodes that changed, and the counters.
    pub state: StateChanges,
}

/// A [`MemFsImage`] already encoded with postcard: an opaque byte string inside the
/// snapshot. Decoded (and validated) by [`SnapshotFs::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemFsBlob(pub Vec<u8>);

impl MemFsBlob {
    /// Decodes the image (untrusted bytes: an error, never a panic).
    pub fn image(&self) -> Result<MemFsImage, String> {
        decode_image(&self.0)
    }
}

impl Serialize for MemFsBlob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for MemFsBlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = MemFsBlob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<MemFsBlob, E> {
                Ok(MemFsBlob(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<MemFsBlob, E> {
                Ok(MemFsBlob(v))
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

impl SnapshotFs for MemFs {
    type State = MemFsBlob;

    fn save(&self, _fds: &mut FdSaver) -> io::Result<MemFsBlob> {
        // `MemFs` serializes as a `MemFsImage` under its read lock, without a copy.
        postcard::to_allocvec(self)
            .map(MemFsBlob)
            .map_err(|e| io::Error::other(format!("encode the memfs state: {e}")))
    }

    fn restore(state: MemFsBlob, _fds: &mut FdRestorer) -> Result<MemFs, String> {
        MemFs::restore(state.image()?)
    }

    fn check_session(
        &self,
        nodes: &[NodeState<u64>],
        handles: &[HandleState<Handle>],
    ) -> Result<(), String> {
        let state = self.lock_read();
        if let Some(n) = nodes.iter().find(|n| !state.contains(n.node)) {
            return Err(format!(
                "nodeid {} names inode {}, which memfs does not have",
                n.nodeid, n.node
            ));
        }
        if let Some(h) = handles.iter().find(|h| !state.contains(h.handle.ino)) {
            return Err(format!(
                "fh {} names inode {}, which memfs does not have",
                h.fh, h.handle.ino
            ));
        }
        Ok(())
    }

    fn precopy() -> Option<PrecopyOps<MemFs>> {
        Some(PrecopyOps::new())
    }
}

impl MemFs {
    /// The changes noted so far, taken from the record by `take` (which stops the
    /// recording, or starts it afresh), under the write lock.
    fn noted_changes(
        &self,
        take: impl FnOnce(&mut State) -> Option<Vec<(u64, Noted)>>,
    ) -> io::Result<MemFsChanges> {
        let mut state = self.lock_write();
        let changed = take(&mut state).ok_or_else(|| {
            io::Error::other("memfs was not recording changes (no pre-copy in progress)")
        })?;
        Ok(MemFsChanges {
            config: self.config(),
            state: state.changes(changed),
        })
    }
}

/// Decodes a memfs image (untrusted bytes: an error, never a panic). Not validated.
fn decode_image(bytes: &[u8]) -> Result<MemFsImage, String> {
    match postcard::take_from_bytes::<MemFsImage>(bytes) {
        Ok((image, [])) => Ok(image),
        Ok((_, rest)) => Err(format!("memfs state: {} trailing bytes", rest.len())),
        Err(e) => Err(format!("memfs state does not decode: {e}")),
    }
}

fn encode_error(e: postcard::Error) -> io::Error {
    io::Error::other(format!("encode the memfs state: {e}"))
}

impl Precopy for MemFs {
    type Base = (MemFsImage, StateIndex);
    type Changes = MemFsChanges;

    fn precopy_begin(&self) -> io::Result<Vec<u8>> {
        self.lock_write().start_recording();
        // The bytes are those of a `MemFsImage`: the settings, the inode map
        // (length, then its entries), the counters. Entries are encoded a chunk at a
        // time; an inode that changes after its chunk is among the changes.
        let mut entries = Vec::new();
        let mut count = 0u64;
        let mut from = 0;
        loop {
            let state = self.lock_read();
            let (n, next) = state
                .encode_inodes(from, PRECOPY_CHUNK, &mut entries)
                .map_err(encode_error)?;
            count += n;
            drop(state);
            match next {
                Some(ino) => from = ino,
                None => break,
            }
            std::thread::sleep(PRECOPY_GAP);
        }
        let counters = self.lock_read().counters();
        let head = postcard::to_allocvec(&self.config()).map_err(encode_error)?;
        let head = postcard::to_extend(&count, head).map_err(encode_error)?;
        // The head goes before the entries in their own buffer, moved up in
        // place: a second buffer as large as the state (all of its file data)
        // was a copy into fresh pages, a page fault per 4 KiB, each checkpoint.
        let len = entries.len();
        entries.resize(len + head.len(), 0);
        entries.copy_within(..len, head.len());
        entries[..head.len()].copy_from_slice(&head);
        postcard::to_extend(&counters, entries).map_err(encode_error)
    }

    fn precopy_changes(&self, _fds: &mut FdSaver) -> io::Result<MemFsChanges> {
        self.noted_changes(State::stop_recording)
    }

    fn precopy_round(&self) -> io::Result<Option<MemFsChanges>> {
        self.noted_changes(State::take_recorded).map(Some)
    }

    fn apply_round(
        (image, index): &mut (MemFsImage, StateIndex),
        changes: MemFsChanges,
    ) -> Result<(), String> {
        image.config = changes.config;
        image.state.apply_round(changes.state, index)
    }

    fn precopy_pending(&self) -> bool {
        self.lock_read().has_recorded()
    }

    fn precopy_start(&self) -> io::Result<bool> {
        self.lock_write().start_recording();
        Ok(true)
    }

    fn precopy_abort(&self) {
        self.lock_write().stop_recording();
    }

    fn decode_base(bytes: &[u8]) -> Result<(MemFsImage, StateIndex), String> {
        let image = decode_image(bytes)?;
        // Checked now, while the old process still serves; the changes are checked
        // against this index under the pause.
        let index = StateIndex::build(&image.state);
        Ok((image, index))
    }

    fn restore_precopied(
        (mut image, mut index): (MemFsImage, StateIndex),
        changes: MemFsChanges,
        _fds: &mut FdRestorer,
    ) -> Result<MemFs, String> {
        image.config = changes.config;
        image.state.apply_changes(changes.state, &mut index)?;
        Ok(MemFs::from_checked(image))
    }
}
