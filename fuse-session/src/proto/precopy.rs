//! Pre-copy of the session's tables, for a live handoff whose stall does not grow
//! with the number of nodeids.
//!
//! The old process, still serving, takes a *base* with [`Session::precopy_begin`]:
//! an ordinary [`SessionState`], from which on the nodeid table notes every nodeid
//! whose entry changes. The new process validates the base and builds its tables
//! ([`PrecopiedState::new`]) while the old one serves on. Under the pause the old
//! process sends only [`SessionChanges`] ([`Session::precopy_changes`]): the
//! nodeids that changed since, the handles, the counters. The new process applies
//! them ([`Session::restore_precopied`]), checking each change as
//! [`SessionState::validate`] would have checked the whole state.
//!
//! Handles are sent whole: a session has far fewer open handles than nodeids, and
//! they change with every `open` and `close`.
use std::hash::Hash;

use crate::fs::Filesystem;
use crate::proto::nodes::{NodeEntry, NodeTable, ROOT_ID};
use crate::proto::session::{lock, InitState, Session};
use crate::proto::state::{node_table, Counters, HandleState, NodeState, SessionState, StateError};

/// What changed in a session since [`Session::precopy_begin`], and everything
/// besides the nodeid table: what the old process sends under the pause.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionChanges<N, H> {
    /// The INIT offer and result (they cannot change; checked against the base).
    pub init: InitState,
    /// Every nodeid added or changed since the base, with its entry now; sorted.
    pub nodes: Vec<NodeState<N>>,
    /// Every nodeid of the base the kernel has forgotten since; sorted.
    pub forgotten: Vec<u64>,
    /// Every open handle, sorted by fh.
    pub handles: Vec<HandleState<H>>,
    /// Poll handles the kernel waits on (sorted).
    pub polls: Vec<u64>,
    /// With `allow_root`: the only uid besides root let in.
    pub only_uid: Option<u32>,
    /// The counters.
    pub counters: Counters,
}

/// A validated base state with its nodeid table built, waiting for the changes
/// ([`Session::restore_precopied`]).
#[derive(Debug)]
pub struct PrecopiedState<N: Clone + Eq + Hash> {
    init: InitState,
    nodes: NodeTable<N>,
    /// No nodeid of the base is at or above this.
    nodeid_bound: u64,
}

impl<N: Clone + Eq + Hash> PrecopiedState<N> {
    /// Validates `base` ([`SessionState::validate`]) and builds its nodeid table.
    /// Its handles are ignored: the changes carry them all.
    ///
    /// # Errors
    /// What is wrong with the base.
    pub fn new<H>(base: SessionState<N, H>) -> Result<Self, StateError> {
        base.validate_structure()?;
        let nodeid_bound = base.nodes.last().map_or(ROOT_ID, |n| n.nodeid) + 1;
        let nodes = node_table(base.nodes, &base.counters)?;
        Ok(PrecopiedState {
            init: base.init,
            nodes,
            nodeid_bound,
        })
    }

    /// Nodeids in the base.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

impl<F: Filesystem> Session<F> {
    /// Starts a pre-copy: from now on the nodeid table notes every nodeid that
    /// changes, and the state as it is now is returned as the base (without
    /// handles: [`Session::precopy_changes`] carries them all). Call it while
    /// serving; it holds the table's lock while it copies (about as long as
    /// [`Session::snapshot`]). `None` before INIT.
    pub fn precopy_begin(&self) -> Option<SessionState<F::Node, F::Handle>> {
        self.init.get()?;
        let mut base = self.snapshot_with(NodeTable::start_recording)?;
        // The handles are copied after the table's lock is released, so they may
        // name a nodeid made since; the changes carry every handle anyway.
        base.handles.clear();
        Some(base)
    }

    /// Ends a pre-copy: what changed since [`Session::precopy_begin`]. Call it while
    /// no request is being handled (under
    /// [`Running::pause`](crate::serve::Running::pause)). `None` before INIT or
    /// when no pre-copy is in progress.
    pub fn precopy_changes(&self) -> Option<SessionChanges<F::Node, F::Handle>> {
        let init = *self.init.get()?;
        let (changed, nodes_now, (next_nodeid, next_generation)) = {
            let mut t = lock(&self.nodes);
            let changed = t.stop_recording()?;
            let now: Vec<Option<NodeState<F::Node>>> = changed
                .iter()
                .map(|&id| {
                    t.get(id).map(|e| NodeState {
                        nodeid: id,
                        generation: e.generation,
                        lookups: e.lookups,
                        node: e.node.clone(),
                    })
                })
                .collect();
            (changed, now, t.counters())
        };
        let (handles, polls, counters) = self.snapshot_rest(next_nodeid, next_generation);
        let mut nodes = Vec::new();
        let mut forgotten = Vec::new();
        for (id, now) in changed.into_iter().zip(nodes_now) {
            match now {
                Some(n) => nodes.push(n),
                None => forgotten.push(id),
            }
        }
        Some(SessionChanges {
            init,
            nodes,
            forgotten,
            handles,
            polls,
            only_uid: self.only_uid,
            counters,
        })
    }

    /// Stops a pre-copy without taking the changes (the handoff failed). Harmless
    /// when none is in progress.
    pub fn precopy_abort(&self) {
        lock(&self.nodes).stop_recording();
    }

    /// A session for `fs` from a pre-copied base and the changes made since,
    /// already initialized, as [`Session::restore`] makes one from a whole state.
    /// Each change is checked as [`SessionState::validate`] checks a whole state.
    ///
    /// # Errors
    /// What is wrong with the changes.
    pub fn restore_precopied(
        fs: F,
        base: PrecopiedState<F::Node>,
        changes: SessionChanges<F::Node, F::Handle>,
    ) -> Result<Self, StateError> {
        let PrecopiedState {
            init,
            mut nodes,
            nodeid_bound,
        } = base;
        if changes.init != init {
            return Err(StateError::BadInit(
                "the INIT result changed during the pre-copy",
            ));
        }
        let c = changes.counters;
        // Every changed nodeid leaves the table first, so that values may move
        // between nodeids (a rebind) without a false duplicate.
        let mut prev = 0;
        for &id in &changes.forgotten {
            if id <= prev {
                return Err(StateError::NodeidsNotSorted(id));
            }
            prev = id;
            if id == ROOT_ID {
                return Err(StateError::BadRoot("the root is forgotten"));
            }
            nodes.remove_id(id);
        }
        let mut prev = 0;
        let mut bound = nodeid_bound;
        let root_node = nodes.get(ROOT_ID).map(|e| e.node.clone());
        for n in &changes.nodes {
            if n.nodeid <= prev {
                return Err(StateError::NodeidsNotSorted(n.nodeid));
            }
            prev = n.nodeid;
            if changes.forgotten.binary_search(&n.nodeid).is_ok() {
                return Err(StateError::NodeidsNotSorted(n.nodeid));
            }
            if n.nodeid == ROOT_ID {
                if n.lookups != 0 || Some(&n.node) != root_node.as_ref() {
                    return Err(StateError::BadRoot("the root changed during the pre-copy"));
                }
                continue;
            }
            if n.lookups == 0 {
                return Err(StateError::ZeroLookups(n.nodeid));
            }
            bound = bound.max(n.nodeid.saturating_add(1));
            nodes.remove_id(n.nodeid);
        }
        for n in changes.nodes {
            if n.nodeid == ROOT_ID {
                continue;
            }
            let id = n.nodeid;
            nodes
                .insert_id(
                    id,
                    NodeEntry {
                        node: n.node,
                        lookups: n.lookups,
                        generation: n.generation,
                    },
                )
                .map_err(|()| StateError::DuplicateNode(id))?;
        }
        if c.next_nodeid < bound {
            return Err(StateError::BadCounter("next_nodeid"));
        }
        nodes.set_counters(c.next_nodeid, c.next_generation);

        let mut prev_fh = 0;
        for h in &changes.handles {
            if h.fh <= prev_fh {
                return Err(StateError::BadFh(h.fh));
            }
            prev_fh = h.fh;
            if nodes.get(h.nodeid).is_none() {
                return Err(StateError::HandleOnMissingNode {
                    fh: h.fh,
                    nodeid: h.nodeid,
                });
            }
        }
        if c.next_fh <= prev_fh {
            return Err(StateError::BadCounter("next_fh"));
        }
        if root_node.as_ref() != Some(&fs.root()) {
            return Err(StateError::BadRoot(
                "the filesystem's root node differs from the state's",
            ));
        }
        Ok(Session::assemble(
            fs,
            init,
            nodes,
            changes.handles,
            changes.polls,
            changes.only_uid,
            &c,
        ))
    }
}
