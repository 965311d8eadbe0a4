//! The handle table: the `fh` values the kernel holds for open files and
//! directories, each bound to the filesystem's own handle value.
//!
//! The session assigns `fh` from a 64-bit counter (never reused within a session),
//! keeps the filesystem's handle, the nodeid it was opened on and the open flags, and
//! gives the handle back to the filesystem by value on RELEASE / RELEASEDIR.
use std::collections::hash_map::Entry;

use crate::proto::nodes::IdMap;

/// Whether a handle is an open file or an open directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum HandleKind {
    /// From OPEN or CREATE (or TMPFILE); closed by RELEASE.
    File,
    /// From OPENDIR; closed by RELEASEDIR.
    Dir,
}

/// One open handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleEntry<H> {
    /// The filesystem's handle value.
    pub handle: H,
    /// File or directory.
    pub kind: HandleKind,
    /// The nodeid it was opened on.
    pub nodeid: u64,
    /// The `open(2)` flags.
    pub flags: u32,
}

/// fh -> handle.
#[derive(Clone, Debug)]
pub struct HandleTable<H> {
    by_fh: IdMap<HandleEntry<H>>,
    next_fh: u64,
    /// Bumped by every insert and remove: equal versions, equal tables (the
    /// journal writes the table only when it changed).
    version: u64,
}

impl<H> Default for HandleTable<H> {
    fn default() -> Self {
        HandleTable {
            by_fh: IdMap::default(),
            next_fh: 1,
            version: 0,
        }
    }
}

impl<H> HandleTable<H> {
    /// Rebuilds a table from validated parts (distinct non-zero fhs).
    pub(crate) fn from_parts(
        entries: impl IntoIterator<Item = (u64, HandleEntry<H>)>,
        next_fh: u64,
    ) -> Self {
        HandleTable {
            by_fh: entries.into_iter().collect(),
            next_fh,
            version: 0,
        }
    }

    /// Stores a new handle and returns its fh.
    pub fn insert(&mut self, entry: HandleEntry<H>) -> u64 {
        let mut fh = self.next_fh;
        // One lookup per fh tried (the first, unless the counter wrapped).
        loop {
            if fh != 0 {
                if let Entry::Vacant(slot) = self.by_fh.entry(fh) {
                    slot.insert(entry);
                    break;
                }
            }
            fh = fh.wrapping_add(1);
        }
        self.next_fh = fh.wrapping_add(1);
        self.version = self.version.wrapping_add(1);
        fh
    }

    /// The handle of `fh`, if it is of `kind`.
    pub fn get(&self, fh: u64, kind: HandleKind) -> Option<&HandleEntry<H>> {
        self.by_fh.get(&fh).filter(|e| e.kind == kind)
    }

    /// The handle of `fh`, of either kind.
    pub fn get_any(&self, fh: u64) -> Option<&HandleEntry<H>> {
        self.by_fh.get(&fh)
    }

    /// Removes `fh` if it is of `kind`.
    pub fn remove(&mut self, fh: u64, kind: HandleKind) -> Option<HandleEntry<H>> {
        match self.by_fh.entry(fh) {
            Entry::Occupied(e) if e.get().kind == kind => {
                self.version = self.version.wrapping_add(1);
                Some(e.remove())
            }
            _ => None,
        }
    }

    /// Number of open handles.
    pub fn len(&self) -> usize {
        self.by_fh.len()
    }

    /// Every handle, sorted by fh (deterministic, for snapshots).
    pub fn sorted(&self) -> Vec<(u64, &HandleEntry<H>)> {
        let mut v: Vec<_> = self.by_fh.iter().map(|(&fh, e)| (fh, e)).collect();
        v.sort_unstable_by_key(|(fh, _)| *fh);
        v
    }

    /// Changes with every insert and remove: a table whose version is the same
    /// as before holds the same handles.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The next fh that will be tried.
    pub fn next_fh(&self) -> u64 {
        self.next_fh
    }
}
