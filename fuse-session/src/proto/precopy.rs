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
use crate::proto::state::{
    handle_states, node_table, Counters, HandleState, NodeState, SessionState, StateError,
};

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

    /// True if `nodeid` is in the table.
    pub fn contains(&self, nodeid: u64) -> bool {
        self.nodes.get(nodeid).is_some()
    }

    /// Applies one round of changes ([`Session::precopy_round`]) while the old
    /// process still serves; each change is checked as in
    /// [`Session::restore_precopied`], which applies the last ones.
    ///
    /// # Errors
    /// What is wrong with the changes; the base is then unusable.
    pub fn apply_round(&mut self, round: NodeChanges<N>) -> Result<(), StateError> {
        self.apply_nodes(round.nodes, &round.forgotten)
    }

    /// Applies changed and forgotten nodeids (both sorted), checking each.
    fn apply_nodes(
        &mut self,
        changed: Vec<NodeState<N>>,
        forgotten: &[u64],
    ) -> Result<(), StateError> {
        let nodes = &mut self.nodes;
        // Every changed nodeid leaves the table first, so that values may move
        // between nodeids (a rebind) without a false duplicate.
        let mut prev = 0;
        for &id in forgotten {
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
        let root_node = nodes.get(ROOT_ID).map(|e| e.node.clone());
        for n in &changed {
            if n.nodeid <= prev {
                return Err(StateError::NodeidsNotSorted(n.nodeid));
            }
            prev = n.nodeid;
            if forgotten.binary_search(&n.nodeid).is_ok() {
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
            self.nodeid_bound = self.nodeid_bound.max(n.nodeid.saturating_add(1));
            nodes.remove_id(n.nodeid);
        }
        for n in changed {
            if n.nodeid == ROOT_ID {
                continue;
            }
            let id = n.nodeid;
            nodes
                .insert_id(id, NodeEntry::new(n.node, n.lookups, n.generation))
                .map_err(|()| StateError::DuplicateNode(id))?;
        }
        Ok(())
    }
}

/// The nodeids that changed during one round of a pre-copy: their entries now, and
/// those forgotten; both sorted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeChanges<N> {
    /// Every nodeid added or changed, with its entry now.
    pub nodes: Vec<NodeState<N>>,
    /// Every nodeid forgotten.
    pub forgotten: Vec<u64>,
}

/// What a journal record needs of the session: [`SessionChanges`] without the
/// parts that cannot change after INIT, and the handles only when they changed
/// ([`Session::journal_delta`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalDelta<N, H> {
    /// Every nodeid added or changed since the last call, with its entry now.
    pub nodes: Vec<NodeState<N>>,
    /// Every nodeid forgotten since the last call.
    pub forgotten: Vec<u64>,
    /// Every open handle, sorted by fh, or `None` if the table is the one of
    /// the version the caller passed.
    pub handles: Option<Vec<HandleState<H>>>,
    /// The handle table's version: equal versions, equal tables (within one
    /// session's life).
    pub handles_version: u64,
    /// Poll handles the kernel waits on (sorted).
    pub polls: Vec<u64>,
    /// The counters.
    pub counters: Counters,
}

/// Nodeids copied per hold of the table's lock by [`Session::precopy_begin`].
pub const COPY_RANGE: u64 = 4096;

/// The entries now of the nodeids `changed` (sorted), each count with a
/// reservation made now if the table makes them ([`NodeTable::set_reserve`]:
/// only a journal's).
fn node_changes<N: Clone + Eq + Hash>(t: &mut NodeTable<N>, changed: Vec<u64>) -> NodeChanges<N> {
    let mut out = NodeChanges {
        nodes: Vec::new(),
        forgotten: Vec::new(),
    };
    for id in changed {
        match t.record_entry(id) {
            Some((lookups, e)) => out.nodes.push(NodeState {
                lookups,
                ..NodeState::of(id, e)
            }),
            None => out.forgotten.push(id),
        }
    }
    out
}

impl<F: Filesystem> Session<F> {
    /// Starts a pre-copy: from now on the nodeid table notes every nodeid that
    /// changes, and the state as it is now is returned as the base (without
    /// handles: [`Session::precopy_changes`] carries them all). Call it while
    /// serving. `None` before INIT.
    ///
    /// The nodeids are copied in ranges of [`COPY_RANGE`], taking the table's lock
    /// once per range, so requests wait for one range at most (copying a million
    /// nodeids in one go held it ~30 ms). Nodes that change during the copy are
    /// left out of the base: they are among the changes, with their final value.
    pub fn precopy_begin(&self) -> Option<SessionState<F::Node, F::Handle>> {
        let init = *self.init.get()?;
        let (end, len) = {
            let mut t = lock(&self.nodes);
            t.start_recording();
            (t.counters().0, t.len())
        };
        // Nodeids are assigned in order, so [1, end) holds every nodeid of the
        // table; probing it is cheap unless most ids were forgotten long ago.
        let sparse = end.saturating_sub(1) > (len as u64).saturating_mul(4).saturating_add(1024);
        let mut nodes: Vec<NodeState<F::Node>> = if sparse {
            let mut v: Vec<NodeState<F::Node>> = lock(&self.nodes)
                .iter()
                .map(|(id, e)| NodeState::of(id, e))
                .collect();
            v.sort_unstable_by_key(|n| n.nodeid);
            v
        } else {
            let mut v = Vec::with_capacity(len);
            let mut id = ROOT_ID;
            while id < end {
                let stop = id.saturating_add(COPY_RANGE).min(end);
                let t = lock(&self.nodes);
                v.extend((id..stop).filter_map(|n| Some(NodeState::of(n, t.get(n)?))));
                drop(t);
                id = stop;
            }
            v
        };
        // Leave out what changed while copying (it may clash with what was copied
        // before, e.g. a value rebound from one nodeid to another).
        let (counters, changed) = {
            let t = lock(&self.nodes);
            (t.counters(), t.recorded())
        };
        if !changed.is_empty() {
            nodes.retain(|n| n.nodeid == ROOT_ID || changed.binary_search(&n.nodeid).is_err());
        }
        let (_, polls, counters) = self.snapshot_rest(counters.0, counters.1);
        Some(SessionState {
            init,
            nodes,
            handles: Vec::new(),
            polls,
            only_uid: self.only_uid,
            counters,
        })
    }

    /// Ends a pre-copy: what changed since [`Session::precopy_begin`]. Call it while
    /// no request is being handled (under
    /// [`Running::pause`](crate::serve::Running::pause)). `None` before INIT or
    /// when no pre-copy is in progress.
    pub fn precopy_changes(&self) -> Option<SessionChanges<F::Node, F::Handle>> {
        let init = *self.init.get()?;
        let (changed, (next_nodeid, next_generation)) = {
            let mut t = lock(&self.nodes);
            let changed = t.stop_recording()?;
            (node_changes(&mut t, changed), t.counters())
        };
        let (handles, polls, counters) = self.snapshot_rest(next_nodeid, next_generation);
        Some(SessionChanges {
            init,
            nodes: changed.nodes,
            forgotten: changed.forgotten,
            handles,
            polls,
            only_uid: self.only_uid,
            counters,
        })
    }

    /// What changed since [`Session::precopy_begin`] or the last call, with the
    /// handles and counters now, recording on: one entry of a write-ahead journal
    /// (`fuse_snapshot::journal`), which is a pre-copy whose rounds go to a file.
    /// Unlike [`Session::precopy_changes`] it may be called while serving: a change
    /// made meanwhile is in this call's result or the next one's. `None` before INIT
    /// or when no recording is in progress.
    pub fn journal_changes(&self) -> Option<SessionChanges<F::Node, F::Handle>> {
        let init = *self.init.get()?;
        let (changed, (next_nodeid, next_generation)) = {
            let mut t = lock(&self.nodes);
            let changed = t.take_recorded()?;
            (node_changes(&mut t, changed), t.counters())
        };
        let (handles, polls, counters) = self.snapshot_rest(next_nodeid, next_generation);
        Some(SessionChanges {
            init,
            nodes: changed.nodes,
            forgotten: changed.forgotten,
            handles,
            polls,
            only_uid: self.only_uid,
            counters,
        })
    }

    /// As [`Session::journal_changes`], but the handles only if they changed:
    /// `handles_since` is the [`JournalDelta::handles_version`] of the handles
    /// the caller last wrote (`None`: write them). The INIT result and `only_uid`,
    /// which cannot change once INIT is answered, are left out. `None` before
    /// INIT or when no recording is in progress.
    pub fn journal_delta(
        &self,
        handles_since: Option<u64>,
    ) -> Option<JournalDelta<F::Node, F::Handle>> {
        self.init.get()?;
        let (changed, (next_nodeid, next_generation)) = {
            let mut t = lock(&self.nodes);
            let changed = t.take_recorded()?;
            (node_changes(&mut t, changed), t.counters())
        };
        let (handles, handles_version, next_fh) = {
            let t = lock(&self.handles);
            let version = t.version();
            let handles = (handles_since != Some(version)).then(|| handle_states(&t));
            (handles, version, t.next_fh())
        };
        let counters = self.counters_now(next_nodeid, next_generation, next_fh);
        Some(JournalDelta {
            nodes: changed.nodes,
            forgotten: changed.forgotten,
            handles,
            handles_version,
            polls: lock(&self.polls).iter().copied().collect(),
            counters,
        })
    }

    /// Lookup-count reservations of the nodeid table, for a write-ahead journal
    /// whose records give counts the kernel may not have reached yet (see
    /// `NodeTable::set_reserve`; 0, the default, records counts exactly). With
    /// `reserve` > 0 each nodeid's count in [`Session::journal_delta`] and
    /// [`Session::journal_changes`] is its count now plus up to `reserve` (never
    /// more than the count less one), and lookups within that figure are not
    /// noted as changes. Not for a pre-copy handoff: its rounds must be exact.
    pub fn set_lookup_reserve(&self, reserve: u32) {
        lock(&self.nodes).set_reserve(reserve);
    }

    /// True if a nodeid was counted, added or forgotten since the last
    /// [`Session::journal_delta`] (or recording is off): a record is due. False:
    /// every lookup since was within the reserved figures, and nothing else of
    /// the nodeid table changed.
    pub fn nodes_changed(&self) -> bool {
        lock(&self.nodes).has_recorded()
    }

    /// The version of the handle table now (see [`JournalDelta::handles_version`]).
    pub fn handles_version(&self) -> u64 {
        lock(&self.handles).version()
    }

    /// One round of a pre-copy, while serving: the nodeids that changed since
    /// [`Session::precopy_begin`] or the last round, recording on. The new process
    /// applies it to its base ([`PrecopiedState::apply_round`]) while this one
    /// serves on, so that less is left for the pause. `None` when no pre-copy is in
    /// progress.
    pub fn precopy_round(&self) -> Option<NodeChanges<F::Node>> {
        let mut t = lock(&self.nodes);
        let changed = t.take_recorded()?;
        Some(node_changes(&mut t, changed))
    }

    /// Starts recording which nodeids change, as [`Session::precopy_begin`] does,
    /// without copying the table: for a journal that goes on after a crash in the
    /// log it was recovered from ([`Session::journal_changes`] then returns the
    /// changes since this call). False (nothing started) if the session is not
    /// initialized.
    pub fn start_change_recording(&self) -> bool {
        if self.init.get().is_none() {
            return false;
        }
        lock(&self.nodes).start_recording();
        true
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
        if changes.init != base.init {
            return Err(StateError::BadInit(
                "the INIT result changed during the pre-copy",
            ));
        }
        let mut base = base;
        base.apply_nodes(changes.nodes, &changes.forgotten)?;
        let PrecopiedState {
            init,
            mut nodes,
            nodeid_bound: bound,
        } = base;
        let c = changes.counters;
        let root_node = nodes.get(ROOT_ID).map(|e| e.node.clone());
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
