//! The whole filesystem as one plain serde value: the inode table, with the POSIX
//! rules of every operation.
//!
//! Nothing here knows about FUSE requests: operations take the caller's ids and
//! plain arguments and return inode numbers, attributes or an [`Errno`]. The
//! [`Filesystem`](fuse_live::session::Filesystem) adapter in `fs.rs` locks a `State`
//! and calls these methods, so the rules can be tested without a mount.
//!
//! Permission checks are the kernel's (the mount uses `default_permissions`); the
//! state still applies the rules the kernel leaves to the filesystem: set-group-ID
//! directories, clearing set-user-ID and set-group-ID bits on write, truncate and
//! chown, the rename rules, link counts and times.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use fuse_live::session::{Errno, FileAttr, FileType, SetAttr, Statfs, TimeOrNow};
use serde::{Deserialize, Serialize};

use super::data::{chunk_span, FileData, CHUNK, MAX_FILE_SIZE};

/// Result of state operations.
pub type Result<T> = std::result::Result<T, Errno>;

/// The root directory's inode number (and FUSE nodeid).
pub const ROOT_INO: u64 = 1;
/// The longest name a directory entry may have.
pub const NAME_MAX: usize = 255;
/// The longest symlink target.
pub const PATH_MAX: usize = 4096;

const S_ISUID: u16 = 0o4000;
const S_ISGID: u16 = 0o2000;
const S_IXGRP: u16 = 0o0010;

/// `renameat2(2)` flags.
pub const RENAME_NOREPLACE: u32 = 1;
/// Swap the two names.
pub const RENAME_EXCHANGE: u32 = 2;
/// Leave a whiteout (overlayfs); not supported.
pub const RENAME_WHITEOUT: u32 = 4;

/// `fallocate(2)` modes.
pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
/// Deallocate the range (with `KEEP_SIZE`).
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
/// Zero the range, allocating it.
pub const FALLOC_FL_ZERO_RANGE: u32 = 0x10;

/// `lseek(2)` whence values the kernel forwards.
pub const SEEK_DATA: u32 = 3;
/// Next hole.
pub const SEEK_HOLE: u32 = 4;

/// `setxattr(2)` flags.
pub const XATTR_CREATE: i32 = 1;
/// Replace only.
pub const XATTR_REPLACE: i32 = 2;

/// Who is asking: the ids the kernel sent with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Effective (fs) uid.
    pub uid: u32,
    /// Effective (fs) gid.
    pub gid: u32,
}

impl Caller {
    /// The superuser (treated as having `CAP_FSETID`).
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };

    fn privileged(&self) -> bool {
        self.uid == 0
    }
}

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
    entries: BTreeMap<Vec<u8>, DirEntry>,
    /// Cookie -> name: the listing order.
    order: BTreeMap<u64, Vec<u8>>,
    /// The next cookie to hand out.
    next_cookie: u64,
}

/// The first cookie of a directory's entries: READDIR offset 0 is `.`, 1 is `..`.
pub const FIRST_COOKIE: u64 = 2;

impl Dir {
    fn new(parent: u64) -> Dir {
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

    fn insert(&mut self, name: &[u8], ino: u64) {
        self.remove(name);
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.entries.insert(name.to_vec(), DirEntry { ino, cookie });
        self.order.insert(cookie, name.to_vec());
    }

    fn remove(&mut self, name: &[u8]) -> Option<u64> {
        let e = self.entries.remove(name)?;
        self.order.remove(&e.cookie);
        Some(e.ino)
    }

    /// Renames `name` to `newname` within this directory (replacing any entry
    /// `newname`), keeping the entry's cookie: the entry keeps its place in the
    /// listing, so a listing in progress shows it once, under one name or the other.
    /// Moving it to a fresh cookie would show it again to a reader that had passed it.
    fn rename_within(&mut self, name: &[u8], newname: &[u8]) {
        let Some(e) = self.entries.get(name).copied() else {
            return;
        };
        self.remove(newname);
        self.entries.remove(name);
        self.entries.insert(newname.to_vec(), e);
        self.order.insert(e.cookie, newname.to_vec());
    }

    /// Points the existing entry `name` at `ino`, keeping its cookie (RENAME_EXCHANGE:
    /// the names stay where they are, the inodes trade places).
    fn repoint(&mut self, name: &[u8], ino: u64) {
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
                Some((cookie + 1, name.as_slice(), ino))
            })
    }
}

/// What an inode holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A regular file's data.
    File(FileData),
    /// A directory's entries.
    Dir(Dir),
    /// A symlink's target.
    Symlink(Vec<u8>),
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
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Contents.
    pub body: Body,
}

impl Inode {
    fn new(kind: FileType, perm: u16, uid: u32, gid: u32, body: Body, now: SystemTime) -> Inode {
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

    fn dir(&self) -> Result<&Dir> {
        match &self.body {
            Body::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self) -> Result<&mut Dir> {
        match &mut self.body {
            Body::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn file(&self) -> Result<&FileData> {
        match &self.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    fn chunks(&self) -> u64 {
        match &self.body {
            Body::File(f) => f.chunk_count(),
            _ => 0,
        }
    }

    /// Clears set-user-ID, and set-group-ID if group-executable (otherwise it marks
    /// mandatory locking, which a write does not clear): what a write, truncate or
    /// chown does.
    fn kill_suid_sgid(&mut self) {
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
    map: BTreeMap<u64, Inode>,
    #[serde(skip)]
    changed: Option<HashMap<u64, Noted>>,
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
    fn note(&mut self, ino: u64) {
        if let Some(c) = &mut self.changed {
            c.insert(ino, Noted::Whole);
        }
    }

    /// Notes `ino`'s attributes and the chunks `[first, last)` (`last` `u64::MAX`:
    /// every chunk from `first` on).
    fn note_data(&mut self, ino: u64, first: u64, last: u64) {
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

    fn get(&self, ino: &u64) -> Option<&Inode> {
        self.map.get(ino)
    }

    fn get_mut(&mut self, ino: &u64) -> Option<&mut Inode> {
        self.note(*ino);
        self.map.get_mut(ino)
    }

    /// For a change that leaves a file's contents alone: attributes, times, links,
    /// extended attributes.
    fn get_mut_meta(&mut self, ino: &u64) -> Option<&mut Inode> {
        self.note_data(*ino, 0, 0);
        self.map.get_mut(ino)
    }

    /// For a change of a file's attributes and of its chunks `[first, last)` only.
    fn get_mut_data(&mut self, ino: &u64, first: u64, last: u64) -> Option<&mut Inode> {
        self.note_data(*ino, first, last);
        self.map.get_mut(ino)
    }

    fn insert(&mut self, ino: u64, inode: Inode) {
        self.note(ino);
        self.map.insert(ino, inode);
    }

    fn remove(&mut self, ino: &u64) -> Option<Inode> {
        self.note(*ino);
        self.map.remove(ino)
    }

    fn contains_key(&self, ino: &u64) -> bool {
        self.map.contains_key(ino)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn iter(&self) -> std::collections::btree_map::Iter<'_, u64, Inode> {
        self.map.iter()
    }
}

impl<'a> IntoIterator for &'a Inodes {
    type Item = (&'a u64, &'a Inode);
    type IntoIter = std::collections::btree_map::Iter<'a, u64, Inode>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

/// What was noted, sorted by inode.
fn sorted_notes(notes: impl IntoIterator<Item = (u64, Noted)>) -> Vec<(u64, Noted)> {
    let mut v: Vec<(u64, Noted)> = notes.into_iter().collect();
    v.sort_unstable_by_key(|(ino, _)| *ino);
    v
}

/// How one inode changed during a pre-copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeChange {
    /// It no longer exists.
    Gone,
    /// Its value now.
    Whole(Inode),
    /// A regular file whose contents changed only in places: its value now, but
    /// its contents hold only the chunks listed (or from `from` on) that exist now;
    /// the copied file's other chunks are unchanged.
    Data {
        /// The inode now, with only the changed chunks.
        inode: Inode,
        /// Chunk indexes that changed (present in `inode`: their contents now;
        /// absent: a hole now), sorted.
        chunks: Vec<u64>,
        /// Every chunk at or beyond this index changed likewise.
        from: Option<u64>,
    },
}

/// What changed in a [`State`] while it recorded ([`State::start_recording`]):
/// every inode noted and the counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChanges {
    /// Inode number -> how it changed; sorted.
    pub inodes: Vec<(u64, InodeChange)>,
    /// The counters: `next_ino`, `used_chunks`, `capacity_chunks`, `max_inodes`.
    pub counters: [u64; 4],
}

/// What checking a [`State`] found, kept so that changes can be checked without
/// going over the whole state again ([`State::apply_changes`]).
///
/// Each inode is checked on its own ([`check_inode`]); what crosses inodes is
/// counted: how often each inode is referenced (directory entries, and a live
/// directory's parent), which referenced inodes are missing, and the chunks in use.
#[derive(Debug, Default)]
pub struct StateIndex {
    refs: std::collections::HashMap<u64, u32>,
    missing: HashSet<u64>,
    /// Inodes that fail their own checks, with the first reason.
    bad: BTreeMap<u64, String>,
    used: u64,
}

/// The inodes `inode` refers to: a directory's entries, and its parent unless it
/// was removed.
fn refs_of(inode: &Inode) -> impl Iterator<Item = u64> + '_ {
    let (parent, entries) = match &inode.body {
        Body::Dir(d) => (
            (inode.nlink != 0).then_some(d.parent),
            Some(d.entries.values().map(|e| e.ino)),
        ),
        _ => (None, None),
    };
    parent.into_iter().chain(entries.into_iter().flatten())
}

/// The checks of one inode that need no other inode.
fn check_inode(ino: u64, inode: &Inode) -> std::result::Result<(), String> {
    if ino == 0 {
        return Err("inode 0 exists".into());
    }
    if inode.perm & !0o7777 != 0 {
        return Err(format!("inode {ino} has type bits in its permissions"));
    }
    let kind_ok = match &inode.body {
        Body::File(f) => {
            f.validate().map_err(|e| format!("inode {ino}: {e}"))?;
            inode.kind == FileType::RegularFile
        }
        Body::Dir(d) => {
            if d.entries.len() != d.order.len() {
                return Err(format!("directory {ino}: listing and names disagree"));
            }
            for (name, e) in &d.entries {
                check_name(name).map_err(|_| format!("directory {ino} has a bad name"))?;
                if d.order.get(&e.cookie) != Some(name)
                    || e.cookie < FIRST_COOKIE
                    || e.cookie >= d.next_cookie
                {
                    return Err(format!("directory {ino}: bad cookie"));
                }
            }
            inode.kind == FileType::Directory
        }
        Body::Symlink(t) => inode.kind == FileType::Symlink && t.len() <= PATH_MAX,
        Body::Special => !matches!(
            inode.kind,
            FileType::RegularFile | FileType::Directory | FileType::Symlink
        ),
    };
    if !kind_ok {
        return Err(format!("inode {ino}: type and contents disagree"));
    }
    Ok(())
}

impl StateIndex {
    /// Checks every inode of `state` on its own and counts what crosses inodes.
    /// Finding nothing wrong yet: [`StateIndex::finish`] says whether the whole is
    /// consistent.
    pub fn build(state: &State) -> StateIndex {
        let mut index = StateIndex {
            refs: std::collections::HashMap::with_capacity(state.inodes.len()),
            ..StateIndex::default()
        };
        for (&ino, inode) in &state.inodes {
            index.add(ino, inode, state);
        }
        index
    }

    /// Counts inode `ino` (about to be, or already, in `state`).
    fn add(&mut self, ino: u64, inode: &Inode, state: &State) {
        if let Err(e) = check_inode(ino, inode) {
            self.bad.insert(ino, e);
        }
        self.used = self.used.saturating_add(inode.chunks());
        for t in refs_of(inode) {
            *self.refs.entry(t).or_insert(0) += 1;
            if t != ino && !state.inodes.contains_key(&t) {
                self.missing.insert(t);
            }
        }
    }

    /// Takes inode `ino` (about to leave `state`) out of the counts.
    fn remove(&mut self, ino: u64, inode: &Inode) {
        self.bad.remove(&ino);
        self.used = self.used.saturating_sub(inode.chunks());
        for t in refs_of(inode) {
            if let Some(n) = self.refs.get_mut(&t) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(&t);
                    self.missing.remove(&t);
                }
            }
        }
    }

    /// Whether `state`, which this index counts, is consistent.
    pub fn finish(&mut self, state: &State) -> std::result::Result<(), String> {
        if let Some((_, e)) = self.bad.iter().next() {
            return Err(e.clone());
        }
        self.missing.retain(|t| !state.inodes.contains_key(t));
        if let Some(t) = self.missing.iter().min() {
            return Err(format!("an inode names the missing inode {t}"));
        }
        let root = state.inodes.get(&ROOT_INO).ok_or("no root inode")?;
        if !matches!(root.body, Body::Dir(_)) {
            return Err("the root is not a directory".into());
        }
        if let Some((&last, _)) = state.inodes.map.last_key_value() {
            if last >= state.next_ino {
                return Err(format!(
                    "inode {last} is out of range (next {})",
                    state.next_ino
                ));
            }
        }
        if self.used != state.used_chunks {
            return Err(format!(
                "{} chunks counted, {} allocated",
                state.used_chunks, self.used
            ));
        }
        Ok(())
    }
}

/// The whole filesystem: a plain value (serde), so it can be saved and restored.
///
/// Inode numbers are never reused (a 64-bit counter), so an inode number is also a
/// stable FUSE node value. Inodes whose link count dropped to zero stay until the
/// kernel forgets them ([`State::forget`]): an unlinked file that is still open or
/// looked up keeps working.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    inodes: Inodes,
    next_ino: u64,
    /// Allocated chunks over all files.
    used_chunks: u64,
    /// How many chunks may be allocated (`ENOSPC` beyond).
    capacity_chunks: u64,
    /// How many inodes may exist.
    max_inodes: u64,
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        Err(Errno::ENAMETOOLONG)
    } else if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        Err(Errno::EINVAL)
    } else {
        Ok(())
    }
}

fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

fn time_of(t: TimeOrNow, now: SystemTime) -> SystemTime {
    match t {
        TimeOrNow::Time(t) => t,
        TimeOrNow::Now => now,
    }
}

/// Bytes reported as a directory's size per entry, as tmpfs does.
const DIRENT_SIZE: u64 = 20;

impl State {
    /// An empty filesystem: a root directory `0755` owned by `uid:gid`, room for
    /// `capacity` bytes of data and as many inodes as data pages.
    pub fn new(uid: u32, gid: u32, capacity: u64) -> State {
        let now = SystemTime::now();
        let mut root = Inode::new(
            FileType::Directory,
            0o755,
            uid,
            gid,
            Body::Dir(Dir::new(ROOT_INO)),
            now,
        );
        root.nlink = 2;
        let capacity_chunks = (capacity / CHUNK).max(1);
        let mut inodes = Inodes::default();
        inodes.insert(ROOT_INO, root);
        State {
            inodes,
            next_ino: ROOT_INO + 1,
            used_chunks: 0,
            capacity_chunks,
            max_inodes: capacity_chunks.max(1024),
        }
    }

    /// Checks every invariant of a restored state: it is untrusted input.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut index = StateIndex::build(self);
        index.finish(self)
    }

    /// Starts noting every inode that changes (pre-copy); forgets earlier notes.
    pub fn start_recording(&mut self) {
        self.inodes.changed = Some(HashMap::new());
    }

    /// Stops noting changes; returns what was noted, sorted by inode (`None` if
    /// not recording).
    pub fn stop_recording(&mut self) -> Option<Vec<(u64, Noted)>> {
        Some(sorted_notes(self.inodes.changed.take()?))
    }

    /// Appends the postcard encoding of `(ino, inode)` pairs from inode `from` on
    /// to `out` (the entries of the inode map, as [`State`] encodes them), until
    /// about `max_bytes` were added (at least one pair). Returns how many, and the
    /// inode number to continue from (`None`: done).
    pub fn encode_inodes(
        &self,
        from: u64,
        max_bytes: usize,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(u64, Option<u64>), postcard::Error> {
        let start = out.len();
        let mut n = 0u64;
        let mut it = self.inodes.map.range(from..).peekable();
        for (ino, inode) in it.by_ref() {
            let buf = std::mem::take(out);
            *out = postcard::to_extend(&(ino, inode), buf)?;
            n += 1;
            if out.len() - start >= max_bytes {
                break;
            }
        }
        Ok((n, it.peek().map(|(&ino, _)| ino)))
    }

    /// What was noted so far, sorted by inode, and noting goes on afresh (`None`
    /// if not recording): a pre-copy round.
    pub fn take_recorded(&mut self) -> Option<Vec<(u64, Noted)>> {
        Some(sorted_notes(self.inodes.changed.as_mut()?.drain()))
    }

    /// The counters, in the order [`State`] encodes them after the inode map.
    pub fn counters(&self) -> [u64; 4] {
        [
            self.next_ino,
            self.used_chunks,
            self.capacity_chunks,
            self.max_inodes,
        ]
    }

    /// The changes to send for the noted inodes `changed`: their values now, and
    /// of a file whose contents changed in places, only those places.
    pub fn changes(&self, changed: Vec<(u64, Noted)>) -> StateChanges {
        let inodes = changed
            .into_iter()
            .map(|(ino, noted)| {
                let change = match (self.inodes.get(&ino), noted) {
                    (None, _) => InodeChange::Gone,
                    (
                        Some(
                            i @ Inode {
                                body: Body::File(f),
                                ..
                            },
                        ),
                        Noted::Meta { chunks, from },
                    ) => InodeChange::Data {
                        inode: Inode {
                            xattrs: i.xattrs.clone(),
                            body: Body::File(f.only(&chunks, from)),
                            ..*i
                        },
                        chunks: chunks.into_iter().collect(),
                        from,
                    },
                    (Some(i), _) => InodeChange::Whole(i.clone()),
                };
                (ino, change)
            })
            .collect();
        StateChanges {
            inodes,
            counters: self.counters(),
        }
    }

    /// Applies `changes` (to a state copied while they were made), keeping `index`
    /// (built on this state) up to date, then checks the result: the same checks as
    /// [`State::validate`], in time proportional to the changes.
    pub fn apply_changes(
        &mut self,
        changes: StateChanges,
        index: &mut StateIndex,
    ) -> std::result::Result<(), String> {
        self.apply_round(changes, index)?;
        index.finish(self)
    }

    /// Applies one round of changes, keeping `index` up to date, without the
    /// final check (the state is whole only after the last changes).
    pub fn apply_round(
        &mut self,
        changes: StateChanges,
        index: &mut StateIndex,
    ) -> std::result::Result<(), String> {
        for (ino, change) in changes.inodes {
            if let Some(old) = self.inodes.get(&ino) {
                index.remove(ino, old);
            }
            let inode = match change {
                InodeChange::Gone => None,
                InodeChange::Whole(i) => Some(i),
                InodeChange::Data {
                    inode,
                    chunks,
                    from,
                } => {
                    let mut old = self
                        .inodes
                        .remove(&ino)
                        .ok_or_else(|| format!("inode {ino}: a data change of a missing inode"))?;
                    let (Body::File(data), Body::File(patch)) = (&mut old.body, inode.body) else {
                        return Err(format!("inode {ino}: a data change of a non-file"));
                    };
                    data.patch(patch, &chunks, from)
                        .map_err(|e| format!("inode {ino}: {e}"))?;
                    Some(Inode {
                        xattrs: inode.xattrs,
                        body: old.body,
                        ..inode
                    })
                }
            };
            match inode {
                Some(i) => {
                    index.add(ino, &i, self);
                    self.inodes.insert(ino, i);
                    index.missing.remove(&ino);
                }
                None => {
                    self.inodes.remove(&ino);
                    if index.refs.get(&ino).is_some_and(|&n| n > 0) {
                        index.missing.insert(ino);
                    }
                }
            }
        }
        [
            self.next_ino,
            self.used_chunks,
            self.capacity_chunks,
            self.max_inodes,
        ] = changes.counters;
        Ok(())
    }

    fn get(&self, ino: u64) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn get_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// For a change that leaves a file's contents alone (attributes, times, link
    /// count, extended attributes): a pre-copy then sends only those.
    fn get_mut_meta(&mut self, ino: u64) -> Result<&mut Inode> {
        self.inodes.get_mut_meta(&ino).ok_or(Errno::ENOENT)
    }

    /// The number of inodes (the root and unlinked-but-referenced ones included).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// True if inode `ino` exists.
    pub fn contains(&self, ino: u64) -> bool {
        self.inodes.contains_key(&ino)
    }

    /// Allocated data bytes over all files.
    pub fn used_bytes(&self) -> u64 {
        self.used_chunks * CHUNK
    }

    /// The attributes of `ino`.
    pub fn attr(&self, ino: u64) -> Result<FileAttr> {
        let i = self.get(ino)?;
        let (size, blocks) = match &i.body {
            Body::File(f) => (f.size(), f.chunk_count() * (CHUNK / 512)),
            Body::Dir(d) => ((d.len() as u64 + 2) * DIRENT_SIZE, 0),
            Body::Symlink(t) => (t.len() as u64, 0),
            Body::Special => (0, 0),
        };
        Ok(FileAttr {
            ino,
            size,
            blocks,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            kind: i.kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
            blksize: CHUNK as u32,
            flags: 0,
        })
    }

    /// The creation time of `ino`.
    pub fn btime(&self, ino: u64) -> Result<SystemTime> {
        Ok(self.get(ino)?.btime)
    }

    /// The inode `name` names in directory `parent` (`.` and `..` included).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<u64> {
        let dir = self.get(parent)?.dir()?;
        match name {
            b"." => Ok(parent),
            b".." => Ok(dir.parent),
            _ => {
                check_name(name)?;
                dir.get(name).ok_or(Errno::ENOENT)
            }
        }
    }

    /// The parent of directory `ino` (for `..` in listings).
    pub fn parent_of(&self, ino: u64) -> Result<u64> {
        let p = self.get(ino)?.dir()?.parent;
        Ok(if self.inodes.contains_key(&p) { p } else { ino })
    }

    /// The directory `ino`.
    pub fn dir(&self, ino: u64) -> Result<&Dir> {
        self.get(ino)?.dir()
    }

    /// Checks that `name` can be created in `parent` and returns the new inode's
    /// group and whether it inherits set-group-ID (directories in a set-group-ID
    /// directory).
    fn prepare_create(&self, caller: Caller, parent: u64, name: &[u8]) -> Result<(u32, bool)> {
        check_name(name)?;
        if is_dot(name) {
            return Err(Errno::EEXIST);
        }
        let p = self.get(parent)?;
        let dir = p.dir()?;
        if p.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if dir.get(name).is_some() {
            return Err(Errno::EEXIST);
        }
        if self.inodes.len() as u64 >= self.max_inodes {
            return Err(Errno::ENOSPC);
        }
        if p.perm & S_ISGID != 0 {
            Ok((p.gid, true))
        } else {
            Ok((caller.gid, false))
        }
    }

    fn alloc_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// Links a new inode into `parent` under `name` and touches the parent.
    fn attach(&mut self, parent: u64, name: &[u8], inode: Inode, now: SystemTime) -> Result<u64> {
        let is_dir = inode.kind == FileType::Directory;
        let ino = self.alloc_ino();
        self.inodes.insert(ino, inode);
        let p = self.get_mut(parent)?;
        p.dir_mut()?.insert(name, ino);
        if is_dir {
            p.nlink = p.nlink.saturating_add(1);
        }
        p.mtime = now;
        p.ctime = now;
        Ok(ino)
    }

    /// Creates a regular file, device node, fifo or socket (`mode` has the type).
    pub fn mknod(
        &mut self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> Result<u64> {
        let kind = FileType::from_mode(mode).ok_or(Errno::EINVAL)?;
        let body = match kind {
            FileType::RegularFile => Body::File(FileData::default()),
            FileType::Directory | FileType::Symlink => return Err(Errno::EINVAL),
            _ => Body::Special,
        };
        let (gid, _) = self.prepare_create(caller, parent, name)?;
        let now = SystemTime::now();
        let mut inode = Inode::new(kind, mode as u16, caller.uid, gid, body, now);
        if matches!(kind, FileType::CharDevice | FileType::BlockDevice) {
            inode.rdev = rdev;
        }
        self.attach(parent, name, inode, now)
    }

    /// Creates a directory.
    pub fn mkdir(&mut self, caller: Caller, parent: u64, name: &[u8], mode: u32) -> Result<u64> {
        let (gid, sgid) = self.prepare_create(caller, parent, name)?;
        let now = SystemTime::now();
        let mut perm = mode as u16 & 0o7777;
        if sgid {
            perm |= S_ISGID;
        }
        let mut inode = Inode::new(
            FileType::Directory,
            perm,
            caller.uid,
            gid,
            Body::Dir(Dir::new(parent)),
            now,
        );
        inode.nlink = 2;
        self.attach(parent, name, inode, now)
    }

    /// Creates a symlink `name` -> `target`.
    pub fn symlink(
        &mut self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<u64> {
        if target.len() > PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        let (gid, _) = self.prepare_create(caller, parent, name)?;
        let now = SystemTime::now();
        let inode = Inode::new(
            FileType::Symlink,
            0o777,
            caller.uid,
            gid,
            Body::Symlink(target.to_vec()),
            now,
        );
        self.attach(parent, name, inode, now)
    }

    /// Creates a regular file for CREATE, or opens the existing one (`O_EXCL`:
    /// EEXIST). Returns the inode and whether it was created.
    pub fn create(
        &mut self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(u64, bool)> {
        check_name(name)?;
        if let Some(ino) = self.get(parent)?.dir()?.get(name) {
            if flags & nix::libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            self.open(caller, ino, flags)?;
            return Ok((ino, false));
        }
        let mode = (mode & 0o7777) | FileType::RegularFile.mode_bits();
        self.mknod(caller, parent, name, mode, 0)
            .map(|ino| (ino, true))
    }

    /// Creates an unnamed regular file (O_TMPFILE): link count 0, kept until the
    /// kernel forgets it, unless `link`ed into a directory first.
    pub fn tmpfile(&mut self, caller: Caller, parent: u64, mode: u32) -> Result<u64> {
        let p = self.get(parent)?;
        p.dir()?;
        if p.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if self.inodes.len() as u64 >= self.max_inodes {
            return Err(Errno::ENOSPC);
        }
        let gid = if p.perm & S_ISGID != 0 {
            p.gid
        } else {
            caller.gid
        };
        let now = SystemTime::now();
        let mut inode = Inode::new(
            FileType::RegularFile,
            mode as u16,
            caller.uid,
            gid,
            Body::File(FileData::default()),
            now,
        );
        inode.nlink = 0;
        let ino = self.alloc_ino();
        self.inodes.insert(ino, inode);
        Ok(ino)
    }

    /// Adds the name `newparent/newname` for `ino`.
    pub fn link(&mut self, ino: u64, newparent: u64, newname: &[u8]) -> Result<()> {
        check_name(newname)?;
        if is_dot(newname) {
            return Err(Errno::EEXIST);
        }
        let inode = self.get(ino)?;
        if inode.kind == FileType::Directory {
            return Err(Errno::EPERM);
        }
        if inode.nlink == u32::MAX {
            return Err(Errno::EMLINK);
        }
        let p = self.get(newparent)?;
        if p.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if p.dir()?.get(newname).is_some() {
            return Err(Errno::EEXIST);
        }
        let now = SystemTime::now();
        let p = self.get_mut(newparent)?;
        p.dir_mut()?.insert(newname, ino);
        p.mtime = now;
        p.ctime = now;
        let inode = self.get_mut_meta(ino)?;
        inode.nlink += 1;
        inode.ctime = now;
        Ok(())
    }

    /// Drops one link of `ino` (all of a directory's).
    fn unlinked(&mut self, ino: u64, now: SystemTime) {
        if let Some(i) = self.inodes.get_mut_meta(&ino) {
            i.nlink = if i.kind == FileType::Directory {
                0
            } else {
                i.nlink.saturating_sub(1)
            };
            i.ctime = now;
        }
    }

    /// Removes a non-directory name.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        let ino = self.lookup(parent, name)?;
        if is_dot(name) {
            return Err(Errno::EISDIR);
        }
        if self.get(ino)?.kind == FileType::Directory {
            return Err(Errno::EISDIR);
        }
        let now = SystemTime::now();
        let p = self.get_mut(parent)?;
        p.dir_mut()?.remove(name);
        p.mtime = now;
        p.ctime = now;
        self.unlinked(ino, now);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        match name {
            b"." => return Err(Errno::EINVAL),
            b".." => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let ino = self.lookup(parent, name)?;
        if ino == ROOT_INO {
            return Err(Errno::EBUSY);
        }
        if !self.get(ino)?.dir()?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let now = SystemTime::now();
        let p = self.get_mut(parent)?;
        p.dir_mut()?.remove(name);
        p.nlink = p.nlink.saturating_sub(1);
        p.mtime = now;
        p.ctime = now;
        self.unlinked(ino, now);
        Ok(())
    }

    /// True if directory `ancestor` is `ino` or one of its ancestors.
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        // Bounded walk: a corrupt parent chain cannot loop forever.
        for _ in 0..=self.inodes.len() {
            if ino == ancestor {
                return true;
            }
            match self.inodes.get(&ino).and_then(|i| i.dir().ok()) {
                Some(d) if d.parent != ino => ino = d.parent,
                _ => return false,
            }
        }
        false
    }

    /// Renames `parent/name` to `newparent/newname` with the POSIX rules, or with
    /// `RENAME_NOREPLACE` / `RENAME_EXCHANGE` (`renameat2(2)`).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) != 0
            || flags & RENAME_NOREPLACE != 0 && flags & RENAME_EXCHANGE != 0
            || flags & RENAME_WHITEOUT != 0
        {
            return Err(Errno::EINVAL);
        }
        if is_dot(name) || is_dot(newname) {
            return Err(if flags & RENAME_NOREPLACE != 0 && is_dot(newname) {
                Errno::EEXIST
            } else {
                Errno::EBUSY
            });
        }
        check_name(newname)?;
        let src = self.lookup(parent, name)?;
        if self.get(newparent)?.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        let dst = self.get(newparent)?.dir()?.get(newname);
        let src_dir = self.get(src)?.kind == FileType::Directory;
        let now = SystemTime::now();
        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(Errno::ENOENT)?;
            if src == dst {
                return Ok(());
            }
            let dst_dir = self.get(dst)?.kind == FileType::Directory;
            if (src_dir && self.is_ancestor(src, newparent))
                || (dst_dir && self.is_ancestor(dst, parent))
            {
                return Err(Errno::EINVAL);
            }
            self.get_mut(parent)?.dir_mut()?.repoint(name, dst);
            self.get_mut(newparent)?.dir_mut()?.repoint(newname, src);
            if parent != newparent {
                if src_dir {
                    self.move_dir(src, parent, newparent);
                }
                if dst_dir {
                    self.move_dir(dst, newparent, parent);
                }
            }
            for ino in [parent, newparent] {
                let p = self.get_mut(ino)?;
                p.mtime = now;
                p.ctime = now;
            }
            for ino in [src, dst] {
                self.get_mut_meta(ino)?.ctime = now;
            }
            return Ok(());
        }
        if let Some(dst) = dst {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
            if dst == src {
                // Two names of one inode: POSIX says do nothing.
                return Ok(());
            }
            let target = self.get(dst)?;
            match (src_dir, target.kind == FileType::Directory) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !target.dir()?.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        if src_dir && self.is_ancestor(src, newparent) {
            return Err(Errno::EINVAL);
        }
        if let Some(dst) = dst {
            // Replace the target.
            let np = self.get_mut(newparent)?;
            np.dir_mut()?.remove(newname);
            if src_dir {
                np.nlink = np.nlink.saturating_sub(1);
            }
            self.unlinked(dst, now);
        }
        if parent == newparent {
            self.get_mut(parent)?
                .dir_mut()?
                .rename_within(name, newname);
        } else {
            self.get_mut(parent)?.dir_mut()?.remove(name);
            self.get_mut(newparent)?.dir_mut()?.insert(newname, src);
        }
        if src_dir && parent != newparent {
            self.move_dir(src, parent, newparent);
        }
        for ino in [parent, newparent] {
            let p = self.get_mut(ino)?;
            p.mtime = now;
            p.ctime = now;
        }
        self.get_mut_meta(src)?.ctime = now;
        Ok(())
    }

    /// Directory `ino` moved from `from` to `to`: its `..` and the parents' links.
    fn move_dir(&mut self, ino: u64, from: u64, to: u64) {
        if let Some(Body::Dir(d)) = self.inodes.get_mut(&ino).map(|i| &mut i.body) {
            d.parent = to;
        }
        if let Some(f) = self.inodes.get_mut(&from) {
            f.nlink = f.nlink.saturating_sub(1);
        }
        if let Some(t) = self.inodes.get_mut(&to) {
            t.nlink = t.nlink.saturating_add(1);
        }
    }

    /// A symlink's target.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match &self.get(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Runs `f` on the data of regular file `ino`, keeping the chunk count.
    /// Runs `f` on the contents of file `ino`, which changes only chunks
    /// `chunks` (`(first, last)`, `last` `u64::MAX` for every chunk from `first`).
    fn with_file<T>(
        &mut self,
        ino: u64,
        chunks: (u64, u64),
        f: impl FnOnce(&mut FileData) -> T,
    ) -> Result<T> {
        let inode = self
            .inodes
            .get_mut_data(&ino, chunks.0, chunks.1)
            .ok_or(Errno::ENOENT)?;
        let data = match &mut inode.body {
            Body::File(d) => d,
            Body::Dir(_) => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        };
        let before = data.chunk_count();
        let out = f(data);
        let after = data.chunk_count();
        self.used_chunks = (self.used_chunks + after).saturating_sub(before);
        Ok(out)
    }

    /// Fails with ENOSPC unless `n` more chunks fit.
    fn reserve(&self, n: u64) -> Result<()> {
        if self.used_chunks.saturating_add(n) > self.capacity_chunks {
            Err(Errno::ENOSPC)
        } else {
            Ok(())
        }
    }

    /// Changes attributes (chmod, chown, truncate, utimens). Permission checks are
    /// the kernel's (`default_permissions`); the kernel also computes the mode
    /// change that clears set-user-ID/set-group-ID on chown and truncate, and sends
    /// it with the request. Without a mode in the request, a chown of a
    /// non-directory and `kill_suidgid` clear them here, and so does a truncate by
    /// an unprivileged caller.
    pub fn setattr(&mut self, caller: Caller, ino: u64, set: &SetAttr) -> Result<()> {
        let now = SystemTime::now();
        if let Some(size) = set.size {
            if size > MAX_FILE_SIZE {
                return Err(Errno::EFBIG);
            }
            let old = self.get(ino)?.file()?.size();
            self.with_file(ino, (size.min(old) / CHUNK, u64::MAX), |f| f.set_size(size))?;
            let i = self.get_mut_meta(ino)?;
            if set.mtime.is_none() && size != old {
                i.mtime = now;
            }
            if set.mode.is_none() && !caller.privileged() {
                i.kill_suid_sgid();
            }
        }
        let i = self.get_mut_meta(ino)?;
        if let Some(mode) = set.mode {
            i.perm = mode as u16 & 0o7777;
        }
        if set.uid.is_some() || set.gid.is_some() {
            if let Some(uid) = set.uid {
                i.uid = uid;
            }
            if let Some(gid) = set.gid {
                i.gid = gid;
            }
            if set.mode.is_none() {
                i.kill_suid_sgid();
            }
        }
        if set.kill_suidgid && set.mode.is_none() {
            i.kill_suid_sgid();
        }
        if let Some(t) = set.atime {
            i.atime = time_of(t, now);
        }
        if let Some(t) = set.mtime {
            i.mtime = time_of(t, now);
        }
        i.ctime = set.ctime.unwrap_or(now);
        Ok(())
    }

    /// The kernel's rule for a data or size change by a caller without `CAP_FSETID`
    /// (`setattr_should_drop_suidgid`): set-user-ID goes; set-group-ID goes when the
    /// file is group-executable or the caller is not in the file's group
    /// (`in_group` answers that for the file's gid). Files only; privileged callers
    /// keep both.
    ///
    /// FUSE passes no flag for it on FALLOCATE (and, without `HANDLE_KILLPRIV`, its
    /// own SETATTR before a change clears set-group-ID only when group-executable),
    /// so memfs applies the whole rule itself after each such change.
    pub fn drop_privs(
        &mut self,
        caller: Caller,
        ino: u64,
        in_group: impl FnOnce(u32) -> bool,
    ) -> Result<()> {
        if caller.privileged() {
            return Ok(());
        }
        let i = self.get(ino)?;
        if i.kind != FileType::RegularFile || i.perm & (S_ISUID | S_ISGID) == 0 {
            return Ok(());
        }
        let drop_sgid = i.perm & S_ISGID != 0 && (i.perm & S_IXGRP != 0 || !in_group(i.gid));
        let i = self.get_mut_meta(ino)?;
        i.perm &= !S_ISUID;
        if drop_sgid {
            i.perm &= !S_ISGID;
        }
        Ok(())
    }

    /// The owner of `ino`.
    pub fn owner(&self, ino: u64) -> Result<u32> {
        Ok(self.get(ino)?.uid)
    }

    /// OPEN of an existing inode: applies `O_TRUNC` (the library agrees
    /// `ATOMIC_O_TRUNC`, so the kernel leaves it to the filesystem).
    pub fn open(&mut self, caller: Caller, ino: u64, flags: i32) -> Result<()> {
        let kind = self.get(ino)?.kind;
        match kind {
            FileType::Directory => return Err(Errno::EISDIR),
            FileType::Symlink => return Err(Errno::ELOOP),
            _ => {}
        }
        if flags & nix::libc::O_TRUNC != 0 && kind == FileType::RegularFile {
            let set = SetAttr {
                size: Some(0),
                mtime: Some(TimeOrNow::Now),
                ..SetAttr::default()
            };
            self.setattr(caller, ino, &set)?;
        }
        Ok(())
    }

    /// Reads file data into `buf`; returns the bytes read.
    pub fn read(&self, ino: u64, off: u64, buf: &mut [u8]) -> Result<usize> {
        Ok(self.get(ino)?.file()?.read(off, buf))
    }

    /// True if an access to `ino` now should update its atime under the mount's
    /// access-time mode `times`.
    pub fn atime_due_in(
        &self,
        ino: u64,
        now: SystemTime,
        times: &fuse_live::session::dev::AccessTimes,
    ) -> bool {
        self.inodes.get(&ino).is_some_and(|i| {
            times.update_due(
                i.kind == FileType::Directory,
                i.atime,
                i.mtime,
                i.ctime,
                now,
            )
        })
    }

    /// Sets the atime of `ino` to `now`.
    pub fn touch_atime(&mut self, ino: u64, now: SystemTime) {
        if let Some(i) = self.inodes.get_mut_meta(&ino) {
            i.atime = now;
        }
    }

    /// Writes `data` at `off`; returns the bytes written. Clears set-user-ID and
    /// set-group-ID when the caller is unprivileged or the kernel asks
    /// (`kill_suidgid`).
    pub fn write(
        &mut self,
        caller: Caller,
        ino: u64,
        off: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Result<u32> {
        let len = data.len() as u64;
        let end = off.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let missing = self.get(ino)?.file()?.missing_chunks(off, len);
        self.reserve(missing)?;
        self.with_file(ino, chunk_span(off, len), |f| f.write(off, data))?;
        let now = SystemTime::now();
        let i = self.get_mut_meta(ino)?;
        i.mtime = now;
        i.ctime = now;
        if kill_suidgid || !caller.privileged() {
            i.kill_suid_sgid();
        }
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    /// fallocate(2): mode 0 and `KEEP_SIZE` allocate, `PUNCH_HOLE | KEEP_SIZE`
    /// deallocates, `ZERO_RANGE` (with or without `KEEP_SIZE`) zeroes and allocates.
    /// Other modes: EOPNOTSUPP.
    pub fn fallocate(&mut self, ino: u64, off: u64, len: u64, mode: u32) -> Result<()> {
        let end = off.checked_add(len).ok_or(Errno::EFBIG)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let keep = mode & FALLOC_FL_KEEP_SIZE != 0;
        let file = self.get(ino)?.file()?;
        match mode & !FALLOC_FL_KEEP_SIZE {
            0 | FALLOC_FL_ZERO_RANGE => {
                self.reserve(file.missing_chunks(off, len))?;
                let zero = mode & FALLOC_FL_ZERO_RANGE != 0;
                self.with_file(ino, chunk_span(off, len), |f| {
                    if zero {
                        f.zero_range(off, len, true);
                    }
                    f.allocate(off, len);
                    if !keep && end > f.size() {
                        f.set_size(end);
                    }
                })?;
                if zero || !keep {
                    let now = SystemTime::now();
                    let i = self.get_mut_meta(ino)?;
                    i.mtime = now;
                    i.ctime = now;
                }
            }
            FALLOC_FL_PUNCH_HOLE if keep => {
                self.with_file(ino, chunk_span(off, len), |f| f.zero_range(off, len, false))?;
                let now = SystemTime::now();
                let i = self.get_mut_meta(ino)?;
                i.mtime = now;
                i.ctime = now;
            }
            _ => return Err(Errno::EOPNOTSUPP),
        }
        Ok(())
    }

    /// lseek(2) `SEEK_DATA` / `SEEK_HOLE` with chunk granularity.
    pub fn lseek(&self, ino: u64, off: u64, whence: u32) -> Result<u64> {
        let file = self.get(ino)?.file()?;
        let found = match whence {
            SEEK_DATA => file.seek_data(off),
            SEEK_HOLE => file.seek_hole(off),
            _ => return Err(Errno::EINVAL),
        };
        found.ok_or(Errno::ENXIO)
    }

    /// copy_file_range(2): copies up to `len` bytes (fewer at the source's end of
    /// file) without a buffer the size of the range; holes in the source stay holes.
    /// Overlapping ranges of one file are EINVAL, as the kernel's checks say.
    pub fn copy_range(
        &mut self,
        caller: Caller,
        ino_in: u64,
        off_in: u64,
        ino_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        let src = self.get(ino_in)?.file()?;
        let len = len.min(src.size().saturating_sub(off_in));
        if len == 0 {
            self.get(ino_out)?.file()?;
            return Ok(0);
        }
        let end_out = off_out.checked_add(len).ok_or(Errno::EFBIG)?;
        if end_out > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        if ino_in == ino_out && off_in < end_out && off_out < off_in + len {
            return Err(Errno::EINVAL);
        }
        // Space: at most the source's allocated chunks in the range, plus the two
        // partial chunks at the ends of the destination.
        let (first, last) = (off_in / CHUNK, (off_in + len).div_ceil(CHUNK));
        let mut data_chunks = 0u64;
        let mut idx = first;
        while let Some(k) = src.next_chunk(idx).filter(|&k| k < last) {
            data_chunks += 1;
            idx = k + 1;
        }
        self.reserve(
            data_chunks
                .saturating_add(2)
                .min(self.get(ino_out)?.file()?.missing_chunks(off_out, len)),
        )?;
        let end_in = off_in + len;
        let mut pos = off_in;
        let mut piece = vec![0u8; CHUNK as usize];
        while pos < end_in {
            let src = self.get(ino_in)?.file()?;
            let next = src
                .next_chunk(pos / CHUNK)
                .map(|k| (k * CHUNK).max(pos))
                .filter(|&s| s < end_in);
            let data_at = next.unwrap_or(end_in);
            if data_at > pos {
                let (o, n) = (off_out + (pos - off_in), data_at - pos);
                self.with_file(ino_out, chunk_span(o, n), |f| f.zero_range(o, n, false))?;
                pos = data_at;
                continue;
            }
            let to = end_in.min((pos / CHUNK + 1) * CHUNK);
            let n = (to - pos) as usize;
            let chunk = src.chunk_at(pos).ok_or(Errno::EIO)?;
            let from = (pos % CHUNK) as usize;
            piece[..n].copy_from_slice(&chunk[from..from + n]);
            let o = off_out + (pos - off_in);
            self.with_file(ino_out, chunk_span(o, n as u64), |f| {
                f.write(o, &piece[..n])
            })?;
            pos = to;
        }
        // Growing only: no chunk changes.
        self.with_file(ino_out, (0, 0), |f| {
            if end_out > f.size() {
                f.set_size(end_out);
            }
        })?;
        let now = SystemTime::now();
        let i = self.get_mut_meta(ino_out)?;
        i.mtime = now;
        i.ctime = now;
        if !caller.privileged() {
            i.kill_suid_sgid();
        }
        Ok(len)
    }

    /// Sets an extended attribute (`user.`, `trusted.`, `security.` namespaces).
    pub fn setxattr(&mut self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        check_xattr_name(name)?;
        let i = self.get_mut_meta(ino)?;
        let exists = i.xattrs.contains_key(name);
        if flags & XATTR_CREATE != 0 && exists {
            return Err(Errno::EEXIST);
        }
        if flags & XATTR_REPLACE != 0 && !exists {
            return Err(Errno::ENODATA);
        }
        i.xattrs.insert(name.to_vec(), value.to_vec());
        i.ctime = SystemTime::now();
        Ok(())
    }

    /// An extended attribute's value.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        check_xattr_name(name)?;
        self.get(ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(Errno::ENODATA)
    }

    /// The NUL-terminated names of all extended attributes.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for name in self.get(ino)?.xattrs.keys() {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    /// Removes an extended attribute.
    pub fn removexattr(&mut self, ino: u64, name: &[u8]) -> Result<()> {
        check_xattr_name(name)?;
        let i = self.get_mut_meta(ino)?;
        i.xattrs.remove(name).ok_or(Errno::ENODATA)?;
        i.ctime = SystemTime::now();
        Ok(())
    }

    /// statfs(2): 4 KiB blocks, the capacity and what is used.
    pub fn statfs(&self) -> Statfs {
        let free = self.capacity_chunks.saturating_sub(self.used_chunks);
        Statfs {
            blocks: self.capacity_chunks,
            bfree: free,
            bavail: free,
            files: self.max_inodes,
            ffree: self.max_inodes.saturating_sub(self.inodes.len() as u64),
            bsize: CHUNK as u32,
            namelen: NAME_MAX as u32,
            frsize: CHUNK as u32,
        }
    }

    /// The kernel forgot `ino`: drop it if no name links it any more.
    /// Returns whether it was dropped.
    /// Drops every inode no name links (unlinked files that were still open): for a
    /// cold restore onto a new mount, where no open file or nodeid of the old one
    /// survives. Returns how many were dropped.
    pub fn drop_unlinked(&mut self) -> usize {
        let gone: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(&ino, i)| ino != ROOT_INO && i.nlink == 0)
            .map(|(&ino, _)| ino)
            .collect();
        gone.into_iter().filter(|&ino| self.forget(ino)).count()
    }

    pub fn forget(&mut self, ino: u64) -> bool {
        if ino == ROOT_INO || self.inodes.get(&ino).map_or(true, |i| i.nlink > 0) {
            return false;
        }
        if let Some(i) = self.inodes.remove(&ino) {
            self.used_chunks = self.used_chunks.saturating_sub(i.chunks());
        }
        true
    }
}

/// Extended attribute names must be in a namespace memfs stores: `user.`,
/// `trusted.` or `security.` (the kernel checks who may use which). `system.` (POSIX
/// ACLs) is not supported: EOPNOTSUPP, as for unknown namespaces.
fn check_xattr_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(Errno::ERANGE);
    }
    let known = [&b"user."[..], b"trusted.", b"security."];
    match known.iter().find(|p| name.starts_with(p)) {
        Some(p) if name.len() > p.len() => Ok(()),
        Some(_) => Err(Errno::EINVAL),
        None => Err(Errno::EOPNOTSUPP),
    }
}
