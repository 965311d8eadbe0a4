//! The inode table: directories, inodes and [`Inodes`], which notes the inodes
//! that change while a pre-copy records.
use super::*;

/// One directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The inode it names.
    pub ino: u64,
    /// Its position in the listing: stable while it exists, never reused, so a
    /// READDIR continuing from an offset neither skips nor repeats entries when
    /// others are added or removed meanwhile.
    pub cookie: u64,
}

/// A directory's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dir {
    /// The parent directory (the root is its own parent).
    pub parent: u64,
    /// Name -> entry.
    #[serde(deserialize_with = "crate::wire::map")]
    pub(super) entries: BTreeMap<Name, DirEntry>,
    /// Cookie -> name: the listing order.
    #[serde(deserialize_with = "crate::wire::map")]
    pub(super) order: BTreeMap<u64, Name>,
    /// The next cookie to hand out.
    pub(super) next_cookie: u64,
}

/// The first cookie of a directory's entries: READDIR offset 0 is `.`, 1 is `..`.
pub const FIRST_COOKIE: u64 = 2;

impl Dir {
    pub(super) fn new(parent: u64) -> Dir {
        Dir {
            parent,
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            next_cookie: FIRST_COOKIE,
        }
    }

    /// The inode `name` refers to.
    pub fn get(&self, name: &[u8]) -> Option<u64> {
        self.entries.get(name).map(|e| e.ino)
    }

    /// The number of entries (without `.` and `..`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the directory has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn insert(&mut self, name: &[u8], ino: u64) {
        self.remove(name);
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let name = Name::new(name);
        self.entries.insert(name.clone(), DirEntry { ino, cookie });
        self.order.insert(cookie, name);
    }

    pub(super) fn remove(&mut self, name: &[u8]) -> Option<u64> {
        let e = self.entries.remove(name)?;
        self.order.remove(&e.cookie);
        Some(e.ino)
    }

    /// Renames `name` to `newname` within this directory (replacing any entry
    /// `newname`), keeping the entry's cookie: the entry keeps its place in the
    /// listing, so a listing in progress shows it once, under one name or the other.
    /// Moving it to a fresh cookie would show it again to a reader that had passed it.
    pub(super) fn rename_within(&mut self, name: &[u8], newname: &[u8]) {
        let Some(e) = self.entries.get(name).copied() else {
            return;
        };
        self.remove(newname);
        self.entries.remove(name);
        let newname = Name::new(newname);
        self.entries.insert(newname.clone(), e);
        self.order.insert(e.cookie, newname);
    }

    /// Points the existing entry `name` at `ino`, keeping its cookie (RENAME_EXCHANGE:
    /// the names stay where they are, the inodes trade places).
    pub(super) fn repoint(&mut self, name: &[u8], ino: u64) {
        if let Some(e) = self.entries.get_mut(name) {
            e.ino = ino;
        }
    }

    /// Entries from READDIR offset `offset` on: `(offset of the next entry, name, ino)`.
    /// Offsets 0 and 1 (`.` and `..`) are the caller's.
    pub fn listing_from(&self, offset: u64) -> impl Iterator<Item = (u64, &[u8], u64)> + '_ {
        self.order
            .range(offset.max(FIRST_COOKIE)..)
            .filter_map(move |(&cookie, name)| {
                let ino = self.entries.get(name)?.ino;
                Some((cookie + 1, name.as_bytes(), ino))
            })
    }
}

/// What an inode holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A regular file's data.
    File(FileData),
    /// A directory's entries (boxed: an inode is 32 bytes smaller, and most
    /// inodes are not directories).
    Dir(Box<Dir>),
    /// A symlink's target.
    Symlink(#[serde(with = "crate::wire::bytes")] Vec<u8>),
    /// A device node, fifo or socket: no contents.
    Special,
}

/// One inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// The file type.
    pub kind: FileType,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links (directories: 2 + subdirectories; 0 once removed).
    pub nlink: u32,
    /// Device number of device nodes (the kernel's `new_encode_dev` form).
    pub rdev: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last data modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
    /// Creation.
    pub btime: SystemTime,
    /// Extended attributes, name -> value.
    #[serde(with = "crate::wire::bytes_both")]
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Contents.
    pub body: Body,
}

impl Inode {
    pub(super) fn new(
        kind: FileType,
        perm: u16,
        uid: u32,
        gid: u32,
        body: Body,
        now: SystemTime,
    ) -> Inode {
        Inode {
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: 1,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            btime: now,
            xattrs: BTreeMap::new(),
            body,
        }
    }

    pub(super) fn dir(&self) -> Result<&Dir> {
        match &self.body {
            Body::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    pub(super) fn dir_mut(&mut self) -> Result<&mut Dir> {
        match &mut self.body {
            Body::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    pub(super) fn file(&self) -> Result<&FileData> {
        match &self.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    pub(super) fn chunks(&self) -> u64 {
        match &self.body {
            Body::File(f) => f.chunk_count(),
            _ => 0,
        }
    }

    /// Clears set-user-ID, and set-group-ID if group-executable (otherwise it marks
    /// mandatory locking, which a write does not clear): what a write, truncate or
    /// chown does.
    pub(super) fn kill_suid_sgid(&mut self) {
        if self.kind == FileType::Directory {
            return;
        }
        self.perm &= !S_ISUID;
        if self.perm & S_IXGRP != 0 {
            self.perm &= !S_ISGID;
        }
    }
}

/// The inode table: inode number -> inode, in order. It can record which inodes
/// change (are created, changed or dropped) while it does, for a pre-copy handoff:
/// every mutable access goes through one of its methods, which note the inode —
/// wholly ([`Inodes::get_mut`], [`Inodes::insert`], [`Inodes::remove`]), or, for
/// a regular file, only its attributes ([`Inodes::get_mut_meta`]) or attributes
/// and some chunks ([`Inodes::get_mut_data`]), so that writing to a large file
/// does not send all of it. Serialized as the map alone.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Inodes {
    /// Boxed: restoring moves 16 bytes per inode into the tree (through a `Vec`,
    /// [`crate::wire`]) instead of a whole inode twice, and the tree's nodes are
    /// small (for 100 000 inodes, about 40 MB less memory touched, each page a
    /// fault in a fresh process).
    #[serde(deserialize_with = "crate::wire::map")]
    pub(super) map: BTreeMap<u64, Box<Inode>>,
    #[serde(skip)]
    pub(super) changed: Option<HashMap<u64, Noted>>,
}

/// How much of an inode changed while recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Noted {
    /// Anything: send it whole.
    Whole,
    /// A file's attributes, and the contents of these chunks and of every chunk
    /// from `from` on (a shrinking truncate).
    Meta {
        /// Chunk indexes written, zeroed or freed.
        chunks: BTreeSet<u64>,
        /// Every chunk at or beyond this index may have changed.
        from: Option<u64>,
    },
}

impl PartialEq for Inodes {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Eq for Inodes {}

impl Inodes {
    pub(super) fn note(&mut self, ino: u64) {
        if let Some(c) = &mut self.changed {
            c.insert(ino, Noted::Whole);
        }
    }

    /// Notes `ino`'s attributes and the chunks `[first, last)` (`last` `u64::MAX`:
    /// every chunk from `first` on).
    pub(super) fn note_data(&mut self, ino: u64, first: u64, last: u64) {
        let Some(c) = &mut self.changed else {
            return;
        };
        let entry = c.entry(ino).or_insert_with(|| Noted::Meta {
            chunks: BTreeSet::new(),
            from: None,
        });
        if let Noted::Meta { chunks, from } = entry {
            if last == u64::MAX {
                *from = Some(from.map_or(first, |f| f.min(first)));
            } else {
                chunks.extend(first..last);
            }
        }
    }

    pub(super) fn get(&self, ino: &u64) -> Option<&Inode> {
        self.map.get(ino).map(|b| &**b)
    }

    pub(super) fn get_mut(&mut self, ino: &u64) -> Option<&mut Inode> {
        self.note(*ino);
        self.map.get_mut(ino).map(|b| &mut **b)
    }

    /// For a change that leaves a file's contents alone: attributes, times, links,
    /// extended attributes.
    pub(super) fn get_mut_meta(&mut self, ino: &u64) -> Option<&mut Inode> {
        self.note_data(*ino, 0, 0);
        self.map.get_mut(ino).map(|b| &mut **b)
    }

    /// For a change of a file's attributes and of its chunks `[first, last)` only.
    pub(super) fn get_mut_data(&mut self, ino: &u64, first: u64, last: u64) -> Option<&mut Inode> {
        self.note_data(*ino, first, last);
        self.map.get_mut(ino).map(|b| &mut **b)
    }

    pub(super) fn insert(&mut self, ino: u64, inode: Inode) {
        self.note(ino);
        self.map.insert(ino, Box::new(inode));
    }

    pub(super) fn remove(&mut self, ino: &u64) -> Option<Inode> {
        self.note(*ino);
        self.map.remove(ino).map(|b| *b)
    }

    pub(super) fn contains_key(&self, ino: &u64) -> bool {
        self.map.contains_key(ino)
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn iter(&self) -> InodesIter<'_> {
        self.map.iter().map(unbox)
    }
}

/// An entry of the table, its inode unboxed (the signature is the map's item).
#[allow(clippy::borrowed_box)]
fn unbox<'a>((ino, inode): (&'a u64, &'a Box<Inode>)) -> (&'a u64, &'a Inode) {
    (ino, inode)
}

/// The iterator over [`Inodes`], in inode order.
pub(super) type InodesIter<'a> = std::iter::Map<
    std::collections::btree_map::Iter<'a, u64, Box<Inode>>,
    fn((&'a u64, &'a Box<Inode>)) -> (&'a u64, &'a Inode),
>;

impl<'a> IntoIterator for &'a Inodes {
    type Item = (&'a u64, &'a Inode);
    type IntoIter = InodesIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
