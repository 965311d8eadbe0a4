//! passthrough's part in snapshots and live handoff ([`SnapshotFs`]).
//!
//! What crosses: the source directory's descriptor, the descriptor of every open
//! file and directory (by [`Handle::id`]), the descriptors of the nodes that cannot
//! be opened again by file handle (no handle, or unlinked), and the backing ids in
//! use with their counts. Everything else (the descriptor cache) is rebuilt lazily
//! from the node values' file handles.
//!
//! Backing ids belong to the `/dev/fuse` connection, which the successor inherits:
//! they stay registered across the handoff, the successor keeps counting their
//! uses and releases each with the last release of a handle that names it (handle
//! values carry their id). A process that dies leaves its ids registered until the
//! connection ends (unmount), or until a successor releases them: one restored
//! from a snapshot, or, under a fd store, the next process, which knows them from
//! the crash journal (`recovery.rs`).
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuse_session::{HandleState, NodeState};
use fuse_snapshot::{FdRestorer, FdSaver, FdSlot, SnapshotFs};
use serde::{Deserialize, Serialize};

use super::node::{stat_fd, Node};
use super::passfs::{lock, Backing, Config, Handle, OpenFile, PassFs};

/// The saved state of a [`PassFs`]: plain data with [`FdSlot`]s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassState {
    /// Settings.
    pub config: Config,
    /// The source directory's node and descriptor.
    pub root: (Node, FdSlot),
    /// The source's mount id (file handles in use).
    pub mount_id: Option<i32>,
    /// Nodes whose descriptor crosses (no file handle, or unlinked).
    pub nodes: Vec<(Node, FdSlot)>,
    /// Open files and directories.
    pub files: Vec<(u64, FdSlot)>,
    /// The next handle id.
    pub next_id: u64,
    /// Kernel passthrough is in use on the connection.
    pub passthrough: bool,
    /// Backing ids in use.
    pub backings: Vec<(Node, Backing)>,
}

impl SnapshotFs for PassFs {
    type State = PassState;

    fn save(&self, fds: &mut FdSaver) -> io::Result<PassState> {
        let root = (self.root.clone(), fds.add(self.root_fd.as_fd())?);
        let mut nodes = Vec::new();
        for (node, fd) in lock(&self.nodes).iter() {
            if *node == self.root {
                continue;
            }
            let unlinked = stat_fd(fd.as_fd()).map_or(true, |st| st.st_nlink == 0);
            if node.fh.is_none() || unlinked {
                nodes.push((node.clone(), fds.add(fd.as_fd())?));
            }
        }
        let mut files = Vec::new();
        for (id, f) in lock(&self.files).iter() {
            files.push((*id, fds.add(f.fd.as_fd())?));
        }
        files.sort_by_key(|(id, _)| *id);
        let backings = lock(&self.pt.backings)
            .iter()
            .map(|(n, b)| (n.clone(), *b))
            .collect();
        Ok(PassState {
            config: self.config,
            root,
            mount_id: self.mount_id,
            nodes,
            files,
            next_id: self.next_id.load(Ordering::Relaxed),
            passthrough: self.pt.on.load(Ordering::Relaxed),
            backings,
        })
    }

    fn restore(state: PassState, fds: &mut FdRestorer) -> Result<PassFs, String> {
        let same = |fd: &std::os::fd::OwnedFd, node: &Node, what: &str| -> Result<(), String> {
            let st = stat_fd(fd.as_fd()).map_err(|e| format!("{what}: fstat: {e}"))?;
            if (st.st_dev, st.st_ino, st.st_mode & nix::libc::S_IFMT)
                != (node.dev, node.ino, node.kind)
            {
                return Err(format!(
                    "{what}: the descriptor is not inode {}:{}",
                    node.dev, node.ino
                ));
            }
            Ok(())
        };
        let (root, slot) = state.root;
        let root_fd = fds.take(slot).ok_or("the source descriptor is missing")?;
        same(&root_fd, &root, "source")?;
        if !root.is_dir() {
            return Err("the source is not a directory".into());
        }
        let fs = PassFs::from_parts(root_fd, root, state.mount_id, state.config)
            .map_err(|e| format!("source descriptor: {e}"))?;
        {
            let mut nodes = lock(&fs.nodes);
            for (node, slot) in state.nodes {
                let fd = fds
                    .take(slot)
                    .ok_or(format!("node {}: descriptor missing", node.ino))?;
                same(&fd, &node, "node")?;
                if nodes.insert(node.clone(), Arc::new(fd)).is_some() {
                    return Err(format!("node {} twice", node.ino));
                }
            }
        }
        {
            let mut files = lock(&fs.files);
            for (id, slot) in state.files {
                let fd = fds
                    .take(slot)
                    .ok_or(format!("open file {id}: descriptor missing"))?;
                if id == 0 || id >= state.next_id {
                    return Err(format!("open file id {id} out of range"));
                }
                let f = OpenFile {
                    fd,
                    dir: std::sync::Mutex::new(()),
                };
                if files.insert(id, Arc::new(f)).is_some() {
                    return Err(format!("open file {id} twice"));
                }
            }
        }
        fs.next_id.store(state.next_id, Ordering::Relaxed);
        {
            let mut backings = lock(&fs.pt.backings);
            let mut ids = HashSet::new();
            for (node, b) in state.backings {
                if b.id <= 0 || b.refs == 0 || !ids.insert(b.id) {
                    return Err(format!("bad backing id entry {b:?}"));
                }
                if backings.insert(node, b).is_some() {
                    return Err("two backing ids for one inode".into());
                }
            }
            if !backings.is_empty() && !state.passthrough {
                return Err("backing ids without passthrough".into());
            }
        }
        fs.pt.on.store(state.passthrough, Ordering::Relaxed);
        Ok(fs)
    }

    fn check_session(
        &self,
        nodes: &[NodeState<Node>],
        handles: &[HandleState<Handle>],
    ) -> Result<(), String> {
        {
            let cache = lock(&self.nodes);
            for n in nodes {
                if n.node.fh.is_none() && !cache.contains_key(&n.node) {
                    return Err(format!(
                        "nodeid {} has no file handle and its descriptor did not cross",
                        n.nodeid
                    ));
                }
            }
        }
        if self.jr.restored.load(Ordering::Relaxed) {
            return self.check_recovered(handles);
        }
        let by_id: HashMap<u64, &Node> = nodes.iter().map(|n| (n.nodeid, &n.node)).collect();
        let files = lock(&self.files);
        let mut uses: HashMap<i32, (u64, Option<&Node>)> = HashMap::new();
        for h in handles {
            // (After a crash recovery, files are reopened once the session is
            // rebuilt: the journal's table of open files stands for them.)
            if !files.contains_key(&h.handle.id) && !lock(&self.jr.opens).contains_key(&h.handle.id)
            {
                return Err(format!("fh {}: open file {} is missing", h.fh, h.handle.id));
            }
            if h.handle.backing != 0 {
                let u = uses
                    .entry(h.handle.backing)
                    .or_insert((0, by_id.get(&h.nodeid).copied()));
                u.0 += 1;
            }
        }
        let backings = lock(&self.pt.backings);
        for (node, b) in backings.iter() {
            match uses.remove(&b.id) {
                Some((n, on)) if n == b.refs && on.map_or(true, |o| o == node) => {}
                other => {
                    return Err(format!(
                        "backing id {} counts {} uses, the handles {:?}",
                        b.id,
                        b.refs,
                        other.map(|o| o.0)
                    ))
                }
            }
        }
        if let Some(id) = uses.keys().next() {
            return Err(format!(
                "handles use backing id {id}, which is not registered"
            ));
        }
        Ok(())
    }
}

impl PassFs {
    /// [`SnapshotFs::check_session`] after a crash: every handle names an open file
    /// of the journal and a registered backing id. The uses of the backing ids
    /// are counted again from the handles afterwards
    /// ([`PassFs::settle_backings`]): the recovery checks single handles first
    /// (to drop orphans), then the whole table, which is kept here.
    fn check_recovered(&self, handles: &[HandleState<Handle>]) -> Result<(), String> {
        let opens = lock(&self.jr.opens);
        let backings = lock(&self.pt.backings);
        let mut uses = Vec::new();
        let mut ids = HashSet::new();
        for h in handles {
            ids.insert(h.handle.id);
            if !opens.contains_key(&h.handle.id) {
                return Err(format!("fh {}: open file {} is missing", h.fh, h.handle.id));
            }
            if h.handle.backing != 0 {
                if !backings.values().any(|b| b.id == h.handle.backing) {
                    return Err(format!(
                        "fh {} uses backing id {}, which is not registered",
                        h.fh, h.handle.backing
                    ));
                }
                uses.push(h.handle.backing);
            }
        }
        *lock(&self.jr.checked) = Some((uses, ids));
        Ok(())
    }

    /// After a crash: each backing id's uses counted from the session's handles
    /// (the last table [`SnapshotFs::check_session`] saw); ids no handle uses are
    /// released once the device is known, and open files no handle names (the
    /// recovery dropped their handle) are forgotten. Returns how many backing ids
    /// were unused.
    pub fn settle_backings(&self) -> usize {
        let Some((uses, ids)) = lock(&self.jr.checked).take() else {
            return 0;
        };
        lock(&self.jr.opens).retain(|id, _| {
            let used = ids.contains(id);
            if !used {
                log::warn!("open file {id}: no handle of the session names it; forgotten");
            }
            used
        });
        let mut backings = lock(&self.pt.backings);
        let mut unused = Vec::new();
        backings.retain(|_, b| {
            b.refs = uses.iter().filter(|&&u| u == b.id).count() as u64;
            if b.refs == 0 {
                unused.push(b.id);
            }
            b.refs > 0
        });
        let n = unused.len();
        lock(&self.pt.pending_close).extend(unused);
        n
    }
}
