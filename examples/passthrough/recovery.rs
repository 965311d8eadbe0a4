//! passthrough's crash journal: its [`Precopy`] change recording, and what a
//! process started after a crash does before it serves.
//!
//! The journaled state is small and holds no descriptor: the source's node, the
//! open files and directories (id, node, open flags), the backing ids registered on
//! the connection (node, id, uses) and the highest one handed out, and the intents
//! of namespace operations whose reply the journal may not hold yet. Descriptors
//! are found again after the crash: the source by its path, open files by file
//! handle (`open_by_handle_at`, which fails for an inode number reused since: the
//! handle holds the inode's generation) and checked to be the same `(dev, ino)`,
//! or — for files that were unlinked while open — taken from the fd store, where
//! they were put before the unlink ([`stored_name`]). A file that can be found
//! neither way is *dead*: its reads and writes fail with `EIO`, never reach
//! another file.
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use fuse_session::dev::backing;
use fuse_session::dev::fdstore::FdStore;
use fuse_snapshot::{FdRestorer, FdSaver, FdSlot, Precopy};
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

use super::node::{stat_fd, Node};
use super::passfs::{
    lock, stored_name, Backing, Change, Config, Intent, IntentV1, OpenFile, OpenRec, PassFs,
};

/// How far past the highest journaled backing id a recovery looks for ids the
/// dead process registered but did not journal (at most one per request in
/// flight: the kernel hands ids out in increasing order).
pub const BACKING_SCAN: i32 = 256;

/// The journaled state of a [`PassFs`] (the checkpoint's part).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalBase {
    /// Settings.
    pub config: Config,
    /// The source directory's node.
    pub root: Node,
    /// The source's mount id.
    pub mount_id: Option<i32>,
    /// Kernel passthrough is in use.
    pub passthrough: bool,
    /// Open files and directories.
    pub opens: BTreeMap<u64, OpenRec>,
    /// Backing ids registered, by node.
    pub backings: Vec<(Node, Backing)>,
    /// The highest backing id handed out.
    pub last_backing: i32,
    /// Intents whose operation may have run without its reply being journaled.
    pub intents: BTreeMap<u64, Intent>,
    /// The next handle id.
    pub next_id: u64,
}

/// [`JournalBase`] as builds before 2026-12-07 wrote it (intents without
/// [`super::passfs::Detail`]); read only.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct JournalBaseV1 {
    config: Config,
    root: Node,
    mount_id: Option<i32>,
    passthrough: bool,
    opens: BTreeMap<u64, OpenRec>,
    backings: Vec<(Node, Backing)>,
    last_backing: i32,
    intents: BTreeMap<u64, IntentV1>,
    next_id: u64,
}

impl From<JournalBaseV1> for JournalBase {
    fn from(b: JournalBaseV1) -> JournalBase {
        JournalBase {
            config: b.config,
            root: b.root,
            mount_id: b.mount_id,
            passthrough: b.passthrough,
            opens: b.opens,
            backings: b.backings,
            last_backing: b.last_backing,
            intents: b.intents.into_iter().map(|(k, i)| (k, i.into())).collect(),
            next_id: b.next_id,
        }
    }
}

fn encode_err(e: postcard::Error) -> io::Error {
    io::Error::other(format!("encode the passthrough journal state: {e}"))
}

impl JournalBase {
    /// Applies one change (untrusted: an error for one that does not fit).
    fn apply(&mut self, c: Change) -> Result<(), String> {
        match c {
            Change::Open(id, rec) => {
                if id == 0 || id == u64::MAX {
                    return Err(format!("open file id {id} out of range"));
                }
                if self.opens.insert(id, rec).is_some() {
                    return Err(format!("open file {id} opened twice"));
                }
                self.next_id = self.next_id.max(id + 1);
            }
            Change::Close(id) => {
                if self.opens.remove(&id).is_none() {
                    return Err(format!("open file {id} released but not open"));
                }
            }
            Change::Backing(node, b) => {
                self.backings.retain(|(n, _)| *n != node);
                if let Some(b) = b {
                    // (No use: being released when the record was appended; a
                    // recovery releases it again, `PassFs::settle_backings`.)
                    if b.id <= 0 {
                        return Err(format!("bad backing id entry {b:?}"));
                    }
                    if self.backings.iter().any(|(_, o)| o.id == b.id) {
                        return Err(format!("backing id {} on two nodes", b.id));
                    }
                    self.last_backing = self.last_backing.max(b.id);
                    self.backings.push((node, b));
                }
            }
            Change::Intent(key, i) => match i {
                Some(i) => {
                    self.intents.insert(key, *i);
                }
                None => {
                    self.intents.remove(&key);
                }
            },
            Change::IntentV1(key, i) => match i {
                Some(i) => {
                    self.intents.insert(key, Intent::from(*i));
                }
                None => {
                    self.intents.remove(&key);
                }
            },
        }
        Ok(())
    }
}

impl Precopy for PassFs {
    type Base = JournalBase;
    type Changes = Vec<Change>;

    fn precopy_begin(&self) -> io::Result<Vec<u8>> {
        // Called under the journal's gate: no journaled change runs meanwhile.
        let mut recorded = lock(&self.jr.recorded);
        *recorded = Some(Vec::new());
        let base = JournalBase {
            config: self.config,
            root: self.root.clone(),
            mount_id: self.mount_id,
            passthrough: self.pt.on.load(Ordering::Relaxed),
            opens: lock(&self.jr.opens).clone(),
            backings: lock(&self.pt.backings)
                .iter()
                .map(|(n, b)| (n.clone(), *b))
                .collect(),
            last_backing: self.jr.last_backing.load(Ordering::Relaxed),
            intents: lock(&self.jr.intents)
                .iter()
                .map(|(k, i)| (*k, i.clone()))
                .collect(),
            next_id: self.next_id.load(Ordering::Relaxed),
        };
        postcard::to_allocvec(&base).map_err(encode_err)
    }

    fn precopy_changes(&self, _fds: &mut FdSaver) -> io::Result<Vec<Change>> {
        lock(&self.jr.recorded)
            .take()
            .ok_or_else(|| io::Error::other("passthrough was not recording changes"))
    }

    fn precopy_round(&self) -> io::Result<Option<Vec<Change>>> {
        let mut recorded = lock(&self.jr.recorded);
        match recorded.as_mut() {
            Some(v) => Ok(Some(std::mem::take(v))),
            None => Err(io::Error::other("passthrough was not recording changes")),
        }
    }

    fn precopy_pending(&self) -> bool {
        match lock(&self.jr.recorded).as_ref() {
            Some(v) => !v.is_empty(),
            None => true,
        }
    }

    fn apply_round(base: &mut JournalBase, changes: Vec<Change>) -> Result<(), String> {
        changes.into_iter().try_for_each(|c| base.apply(c))
    }

    fn precopy_abort(&self) {
        *lock(&self.jr.recorded) = None;
    }

    fn decode_base(bytes: &[u8]) -> Result<JournalBase, String> {
        let err = match postcard::take_from_bytes::<JournalBase>(bytes) {
            Ok((b, [])) => return Ok(b),
            Ok((_, rest)) => format!("passthrough state: {} trailing bytes", rest.len()),
            Err(e) => format!("passthrough state does not decode: {e}"),
        };
        // A checkpoint a build before 2026-12-07 wrote, with intents pending.
        match postcard::take_from_bytes::<JournalBaseV1>(bytes) {
            Ok((b, [])) if !b.intents.is_empty() => Ok(b.into()),
            _ => Err(err),
        }
    }

    /// `fds` holds one descriptor: the source directory, opened again by path.
    /// Open files are not reopened here (see [`PassFs::reopen_files`]).
    fn restore_precopied(
        mut base: JournalBase,
        changes: Vec<Change>,
        fds: &mut FdRestorer,
    ) -> Result<PassFs, String> {
        changes.into_iter().try_for_each(|c| base.apply(c))?;
        let root_fd = fds
            .take(FdSlot(0))
            .ok_or("the source descriptor is missing")?;
        let st = stat_fd(root_fd.as_fd()).map_err(|e| format!("source: fstat: {e}"))?;
        if (st.st_dev, st.st_ino, st.st_mode & nix::libc::S_IFMT)
            != (base.root.dev, base.root.ino, base.root.kind)
            || !base.root.is_dir()
        {
            return Err(format!(
                "SOURCE is no longer the directory the journal names (inode {}:{})",
                base.root.dev, base.root.ino
            ));
        }
        if base.mount_id.is_none() {
            return Err("the journal's filesystem used no file handles".into());
        }
        let fs = PassFs::from_parts(root_fd, base.root, base.mount_id, base.config)
            .map_err(|e| format!("source descriptor: {e}"))?;
        if !base.backings.is_empty() && !base.passthrough {
            return Err("backing ids without passthrough".into());
        }
        fs.pt.on.store(base.passthrough, Ordering::Relaxed);
        *lock(&fs.pt.backings) = base.backings.into_iter().collect();
        fs.jr
            .last_backing
            .store(base.last_backing, Ordering::Relaxed);
        *lock(&fs.jr.opens) = base.opens;
        *lock(&fs.jr.intents) = base.intents.into_iter().collect();
        fs.next_id.store(base.next_id.max(1), Ordering::Relaxed);
        fs.jr.restored.store(true, Ordering::Relaxed);
        Ok(fs)
    }
}

/// What a recovery found, for the log and the tests.
#[derive(Debug, Default)]
pub struct Reopened {
    /// Open files reopened by file handle.
    pub by_handle: usize,
    /// Open files taken from the fd store (unlinked while open).
    pub from_store: usize,
    /// Open files found neither way (their I/O fails with EIO).
    pub dead: usize,
    /// Descriptors in the fd store the journal did not know (released, or stored
    /// just before the crash): removed.
    pub stale: usize,
}

impl PassFs {
    /// After a crash, before serving: gives every open file of the journal its
    /// descriptor again — the one in the fd store if there is one (kept there when
    /// it was, or was about to be, unlinked), else opened by file handle with its
    /// flags and checked to be the same inode; marks the others dead. Removes the
    /// store's descriptors the journal does not know.
    pub fn reopen_files(&self, store: &mut FdStore) -> Reopened {
        let mut out = Reopened::default();
        let opens: Vec<(u64, OpenRec)> = lock(&self.jr.opens)
            .iter()
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        let mut known = HashSet::new();
        for (id, rec) in opens {
            known.insert(stored_name(id));
            let stored = store.take(&stored_name(id));
            let from_store = stored.is_some();
            let fd = match stored {
                Some(fd) => Ok(fd),
                None => self.reopen_by_handle(&rec),
            };
            let fd = fd.and_then(|fd| {
                let st = stat_fd(fd.as_fd()).map_err(|e| e.to_string())?;
                if (st.st_dev, st.st_ino, st.st_mode & nix::libc::S_IFMT)
                    != (rec.node.dev, rec.node.ino, rec.node.kind)
                {
                    return Err("another inode".to_string());
                }
                Ok(fd)
            });
            match fd {
                Ok(fd) => {
                    if from_store {
                        out.from_store += 1;
                        lock(&self.jr.stored).insert(id);
                    } else {
                        out.by_handle += 1;
                    }
                    lock(&self.files).insert(
                        id,
                        Arc::new(OpenFile {
                            fd,
                            dir: Mutex::new(()),
                        }),
                    );
                }
                Err(e) => {
                    log::warn!(
                        "open file {id} (inode {}) cannot be found again ({e}): its I/O fails \
                         with EIO",
                        rec.node.ino
                    );
                    out.dead += 1;
                    lock(&self.jr.dead).insert(id);
                    if from_store {
                        let _ = store.remove(&stored_name(id));
                    }
                }
            }
        }
        let stale: Vec<String> = store
            .inherited()
            .names()
            .filter(|n| n.starts_with("pt-open-") && !known.contains(*n))
            .map(str::to_owned)
            .collect();
        for name in stale {
            drop(store.take(&name));
            let _ = store.remove(&name);
            out.stale += 1;
        }
        out
    }

    fn reopen_by_handle(&self, rec: &OpenRec) -> Result<OwnedFd, String> {
        let h = rec.node.file_handle().ok_or("no file handle")?;
        let flags = OFlags::from_bits_retain(rec.flags) | OFlags::CLOEXEC | OFlags::NOCTTY;
        fuse_session::dev::fhandle::open_by_handle(self.root_fd.as_fd(), &h, flags.bits() as i32)
            .map_err(|e| e.to_string())
    }

    /// After a crash, once the device is known: releases the backing ids the dead
    /// process registered but did not journal (the kernel hands them out in
    /// increasing order, so they lie just past the highest journaled one; after
    /// the id space wraps, at `i32::MAX`, they would not be found). Returns how
    /// many were released.
    pub fn release_leaked_backings(&self) -> usize {
        let Some(dev) = self.pt.device.get() else {
            return 0;
        };
        if !self.pt.on.load(Ordering::Relaxed) {
            return 0;
        }
        let known: HashSet<i32> = lock(&self.pt.backings).values().map(|b| b.id).collect();
        // Ids up to the highest journaled one are known: each is in the table, or
        // was released before the record that dropped it.
        let last = self.jr.last_backing.load(Ordering::Relaxed).max(0);
        let mut closed = 0;
        for id in last.saturating_add(1)..=last.saturating_add(BACKING_SCAN) {
            if known.contains(&id) {
                continue;
            }
            if backing::backing_close(dev.as_fd(), id).is_ok() {
                log::warn!("released backing id {id}, registered by the dead process");
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ino: u64) -> Node {
        Node {
            dev: 1,
            ino,
            kind: nix::libc::S_IFREG,
            fh: None,
        }
    }

    fn base() -> JournalBase {
        JournalBase {
            config: Config::default(),
            root: Node {
                kind: nix::libc::S_IFDIR,
                ..node(2)
            },
            mount_id: Some(1),
            passthrough: true,
            opens: BTreeMap::new(),
            backings: Vec::new(),
            last_backing: 0,
            intents: BTreeMap::new(),
            next_id: 1,
        }
    }

    fn rec(ino: u64) -> OpenRec {
        OpenRec {
            node: node(ino),
            flags: 2,
        }
    }

    #[test]
    fn changes_apply_in_order() {
        let mut b = base();
        let bk = Backing {
            id: 7,
            writable: true,
            refs: 1,
        };
        PassFs::apply_round(
            &mut b,
            vec![
                Change::Open(3, rec(10)),
                Change::Backing(node(10), Some(bk)),
                Change::Open(4, rec(11)),
                Change::Close(3),
            ],
        )
        .unwrap();
        assert_eq!(b.opens.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!((b.next_id, b.last_backing), (5, 7));
        // A backing id with no use is one being released: kept (a recovery
        // releases it again).
        let closing = Backing { refs: 0, ..bk };
        PassFs::apply_round(&mut b, vec![Change::Backing(node(10), Some(closing))]).unwrap();
        assert_eq!(b.backings, vec![(node(10), closing)]);
        PassFs::apply_round(&mut b, vec![Change::Backing(node(10), None)]).unwrap();
        assert!(b.backings.is_empty());
        assert_eq!(b.last_backing, 7, "the highest id handed out stays");
        // Round trip of the encoded base.
        let bytes = postcard::to_allocvec(&b).unwrap();
        assert_eq!(PassFs::decode_base(&bytes).unwrap(), b);
    }

    #[test]
    fn intents_are_noted_and_done() {
        use super::super::passfs::{Detail, FileState, Intent, ValueSum};
        let intent = |op: &str, detail: Detail| Intent {
            op: op.into(),
            parent: node(5),
            name: b"user.k".to_vec(),
            before: None,
            other: None,
            at: (1, 2),
            detail,
        };
        let state = FileState {
            size: 10,
            blocks: 8,
            mtime: (3, 4),
            ctime: (5, 6),
        };
        let noted = [
            intent(
                "setxattr",
                Detail::XattrCreate {
                    value: ValueSum::of(b"v"),
                    before: None,
                },
            ),
            intent("removexattr", Detail::XattrRemove { existed: true }),
            intent(
                "open",
                Detail::Trunc {
                    before: Some(state),
                },
            ),
            intent("create", Detail::Trunc { before: None }),
        ];
        let mut b = base();
        let changes: Vec<Change> = noted
            .iter()
            .enumerate()
            .map(|(k, i)| Change::Intent(k as u64, Some(Box::new(i.clone()))))
            .chain([Change::Intent(1, None)])
            .collect();
        PassFs::apply_round(&mut b, changes).unwrap();
        assert_eq!(b.intents.keys().copied().collect::<Vec<_>>(), vec![0, 2, 3]);
        assert_eq!(b.intents[&2], noted[2]);
        let bytes = postcard::to_allocvec(&b).unwrap();
        assert_eq!(PassFs::decode_base(&bytes).unwrap(), b);
        // FNV-1a 64 of "a" (the published test vector), and lengths count.
        assert_eq!(ValueSum::of(b"a").hash, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(ValueSum::of(b"ab"), ValueSum::of(b"ba"));
    }

    /// What a build before 2026-12-07 left (intents without their detail), read
    /// as intents with `Detail::None`: its change records (variant 3) and a
    /// checkpoint with an intent pending.
    #[test]
    fn intents_of_earlier_builds_are_read() {
        use super::super::passfs::Detail;
        let old = IntentV1 {
            op: "unlink".into(),
            parent: node(5),
            name: b"f".to_vec(),
            before: Some(node(6)),
            other: None,
            at: (7, 8),
        };
        let new = Intent::from(old.clone());
        assert_eq!(new.detail, Detail::None);
        // Variant 3 is the one those builds wrote for an intent.
        let rec = postcard::to_allocvec(&Change::IntentV1(4, Some(Box::new(old.clone())))).unwrap();
        assert_eq!(rec[0], 3);
        let mut b = base();
        let change: Change = postcard::from_bytes(&rec).unwrap();
        PassFs::apply_round(&mut b, vec![change]).unwrap();
        assert_eq!(b.intents[&4], new);
        PassFs::apply_round(&mut b, vec![Change::IntentV1(4, None)]).unwrap();
        assert!(b.intents.is_empty());
        let b1 = base();
        let v1 = JournalBaseV1 {
            config: b1.config,
            root: b1.root.clone(),
            mount_id: b1.mount_id,
            passthrough: b1.passthrough,
            opens: BTreeMap::new(),
            backings: Vec::new(),
            last_backing: 3,
            intents: [(9, old)].into_iter().collect(),
            next_id: 2,
        };
        let bytes = postcard::to_allocvec(&v1).unwrap();
        let got = PassFs::decode_base(&bytes).unwrap();
        assert_eq!((got.last_backing, got.next_id), (3, 2));
        assert_eq!(got.intents[&9], new);
        // Cut short: an error in both layouts.
        assert!(PassFs::decode_base(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn bad_changes_are_refused() {
        let bad: Vec<Vec<Change>> = vec![
            vec![Change::Close(9)],
            vec![Change::Open(0, rec(1))],
            vec![Change::Open(u64::MAX, rec(1))],
            vec![Change::Open(3, rec(1)), Change::Open(3, rec(2))],
            vec![Change::Backing(
                node(1),
                Some(Backing {
                    id: 0,
                    writable: false,
                    refs: 1,
                }),
            )],
            vec![
                Change::Backing(
                    node(1),
                    Some(Backing {
                        id: 5,
                        writable: false,
                        refs: 1,
                    }),
                ),
                Change::Backing(
                    node(2),
                    Some(Backing {
                        id: 5,
                        writable: false,
                        refs: 1,
                    }),
                ),
            ],
        ];
        for changes in bad {
            let mut b = base();
            assert!(
                PassFs::apply_round(&mut b, changes.clone()).is_err(),
                "{changes:?}"
            );
        }
        // Damaged bytes: an error, never a panic.
        let bytes = postcard::to_allocvec(&base()).unwrap();
        for cut in 0..bytes.len() {
            assert!(PassFs::decode_base(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(PassFs::decode_base(&long).is_err());
    }
}
