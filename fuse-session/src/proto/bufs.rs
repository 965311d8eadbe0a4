//! The output buffers a filesystem fills: READ data and directory listings.
use std::ffi::OsStr;
use std::hash::Hash;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use fuse_wire::reply::{self, Dirent, DirentPlus, DirentWriter, Push};

use crate::proto::nodes::{Forgotten, NodeTable};
use crate::types::{Entry, FileType};

/// Where a READ reply's data goes.
///
/// Either copy into [`ReadBuf::buffer`] (a page-aligned slice of the worker's reply
/// buffer, `size` bytes long) and call [`ReadBuf::filled`], or lend a slice of the
/// filesystem's own memory with [`ReadBuf::set`]: it is written to the kernel with
/// `writev` without a copy.
///
/// `'r` is the lifetime of memory the filesystem may lend (its `&self`), `'b` that of
/// the worker's buffer.
pub struct ReadBuf<'r, 'b> {
    space: &'b mut [u8],
    len: usize,
    lent: Option<&'r [u8]>,
}

impl<'r, 'b> ReadBuf<'r, 'b> {
    pub(crate) fn new(space: &'b mut [u8]) -> Self {
        ReadBuf {
            space,
            len: 0,
            lent: None,
        }
    }

    /// The space to copy data into: as many bytes as the kernel asked for.
    pub fn buffer(&mut self) -> &mut [u8] {
        self.lent = None;
        self.space
    }

    /// Declares that the first `n` bytes of [`ReadBuf::buffer`] hold the data
    /// (clamped to the buffer's length).
    pub fn filled(&mut self, n: usize) {
        self.lent = None;
        self.len = n.min(self.space.len());
    }

    /// Copies `data` (at most the requested size) into the buffer.
    pub fn copy_from(&mut self, data: &[u8]) {
        let n = data.len().min(self.space.len());
        self.space[..n].copy_from_slice(&data[..n]);
        self.filled(n);
    }

    /// Replies with `data` without copying it (at most the requested size is sent).
    pub fn set(&mut self, data: &'r [u8]) {
        let n = data.len().min(self.space.len());
        self.lent = Some(&data[..n]);
    }

    /// The requested size.
    pub fn capacity(&self) -> usize {
        self.space.len()
    }

    pub(crate) fn into_data(self) -> ReadData<'r> {
        match self.lent {
            Some(d) => ReadData::Lent(d),
            None => ReadData::InPlace(self.len),
        }
    }
}

pub(crate) enum ReadData<'r> {
    Lent(&'r [u8]),
    InPlace(usize),
}

/// The listing is full: the entry was not added. Stop, and continue from that
/// entry's offset in the next READDIR (the kernel sends one when it wants more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the directory listing is full")
    }
}

impl std::error::Error for Full {}

/// A READDIR listing being filled.
pub struct DirEntries<'a> {
    pub(crate) writer: DirentWriter<'a>,
    pub(crate) error: Option<fuse_wire::EncodeError>,
}

impl DirEntries<'_> {
    /// Adds an entry: inode number shown to applications, the offset of the *next*
    /// entry (what a later READDIR will pass to continue after this one), type and
    /// name. `Err(Full)` when the listing is full (the entry was not added): stop,
    /// and continue from this entry's offset next time.
    ///
    /// (fuser's `ReplyDirectory::add` returns `true` when *full*; this returns an
    /// error then, so a port must say what it means.)
    pub fn push(
        &mut self,
        ino: u64,
        next_offset: u64,
        kind: FileType,
        name: &OsStr,
    ) -> Result<(), Full> {
        if self.error.is_some() {
            return Err(Full);
        }
        let d = Dirent {
            ino,
            off: next_offset,
            typ: kind.dirent_type(),
            name: name.as_bytes(),
        };
        match self.writer.push(&d) {
            Ok(Push::Added) => Ok(()),
            Ok(Push::Full) => Err(Full),
            Err(e) => {
                self.error = Some(e);
                Err(Full)
            }
        }
    }
}

/// A READDIRPLUS listing being filled. Each entry that fits is looked up in the
/// session's nodeid table and counted (except `.` and `..`, which the kernel ignores).
pub struct DirEntriesPlus<'a, N: Clone + Eq + Hash> {
    pub(crate) writer: DirentWriter<'a>,
    pub(crate) nodes: &'a Mutex<NodeTable<N>>,
    pub(crate) error: Option<fuse_wire::EncodeError>,
    /// Nodes whose count went back to zero when their entry did not fit: the
    /// session calls `forget` for them after the listing.
    pub(crate) dropped: Vec<N>,
    /// Nodeids counted for entries in the listing: taken back if the filesystem
    /// panics before the listing is sent.
    pub(crate) counted: Vec<u64>,
}

impl<N: Clone + Eq + Hash> DirEntriesPlus<'_, N> {
    /// Takes back the lookups counted for the entries added so far (the listing
    /// will not be sent); nodes whose count reaches zero go to `dropped`.
    pub(crate) fn undo(&mut self) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for id in self.counted.drain(..) {
            if let Forgotten::Gone(node) = nodes.unlookup(id) {
                self.dropped.push(node);
            }
        }
    }

    /// Adds an entry with its attributes; `next_offset` as for
    /// [`DirEntries::push`]. `Err(Full)` when the listing is full (the entry was
    /// not added, and no lookup counted).
    pub fn push(&mut self, name: &OsStr, next_offset: u64, entry: &Entry<N>) -> Result<(), Full> {
        if self.error.is_some() {
            return Err(Full);
        }
        let name = name.as_bytes();
        let typ = entry.attr.kind.dirent_type();
        let dot = name == b"." || name == b"..";
        let mut wire = reply::Entry {
            nodeid: 0,
            generation: 0,
            entry_valid: entry.entry_ttl,
            attr_valid: entry.attr_ttl,
            attr: entry.attr.to_wire(),
        };
        let mut counted = None;
        if !dot {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let (id, generation) = nodes.lookup(&entry.node);
            wire.nodeid = id;
            wire.generation = generation;
            counted = Some(id);
        }
        let d = DirentPlus {
            entry: wire,
            dirent: Dirent {
                ino: entry.attr.ino,
                off: next_offset,
                typ,
                name,
            },
        };
        match self.writer.push_plus(&d) {
            Ok(Push::Added) => {
                if let Some(id) = counted {
                    self.counted.push(id);
                }
                Ok(())
            }
            other => {
                if let Some(id) = counted {
                    let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
                    if let Forgotten::Gone(node) = nodes.unlookup(id) {
                        self.dropped.push(node);
                    }
                }
                if let Err(e) = other {
                    self.error = Some(e);
                }
                Err(Full)
            }
        }
    }
}
