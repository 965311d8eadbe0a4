//! The session as a plain value: [`SessionState`].
//!
//! Everything the kernel and this daemon agreed on — the kernel's INIT offer and the
//! negotiated result, every nodeid with its generation, lookup count and the
//! filesystem's node value, every open handle, every counter — in one struct with
//! public fields and a deterministic encoding (vectors sorted by id, no hash-map order).
//!
//! A state is untrusted input when it comes back (from a file or another process):
//! [`Session::restore`] only accepts one that passes [`SessionState::validate`],
//! whose errors say what is wrong.
use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use fuse_wire::abi;
use fuse_wire::InitFlags;

use crate::fs::Filesystem;
use crate::proto::handles::{HandleEntry, HandleKind, HandleTable};
use crate::proto::init::MIN_MINOR;
use crate::proto::nodes::{id_hash, NodeEntry, NodeTable, ROOT_ID};
use crate::proto::session::{lock, InitState, Session, SessionStats};

/// One nodeid the kernel holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeState<N> {
    /// The nodeid.
    pub nodeid: u64,
    /// Its generation.
    pub generation: u64,
    /// The kernel's lookup count (0 only for the root, which is not counted).
    pub lookups: u64,
    /// The filesystem's node value.
    pub node: N,
}

impl<N: Clone> NodeState<N> {
    /// The saved form of table entry `nodeid`.
    pub(crate) fn of(nodeid: u64, e: &NodeEntry<N>) -> Self {
        NodeState {
            nodeid,
            generation: e.generation,
            lookups: e.lookups,
            node: e.node.clone(),
        }
    }
}

/// One open file or directory handle.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandleState<H> {
    /// The fh the kernel holds.
    pub fh: u64,
    /// File or directory.
    pub kind: HandleKind,
    /// The nodeid it was opened on.
    pub nodeid: u64,
    /// The `open(2)` flags.
    pub flags: u32,
    /// The filesystem's handle value.
    pub handle: H,
}

/// The session's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// The next nodeid to assign.
    pub next_nodeid: u64,
    /// The next generation to assign.
    pub next_generation: u64,
    /// The next fh to assign.
    pub next_fh: u64,
    /// The next `unique` for NOTIFY_RETRIEVE.
    pub next_notify_unique: u64,
    /// Requests handled.
    pub requests: u64,
    /// Error replies.
    pub errors: u64,
    /// INTERRUPTs received.
    pub interrupts: u64,
    /// FORGET entries processed.
    pub forgets: u64,
    /// Malformed requests.
    pub malformed: u64,
}

/// The whole session as a value. See the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionState<N, H> {
    /// The kernel's INIT offer and the agreed result.
    pub init: InitState,
    /// Every nodeid, sorted by nodeid; the root (nodeid 1) first.
    pub nodes: Vec<NodeState<N>>,
    /// Every open handle, sorted by fh.
    pub handles: Vec<HandleState<H>>,
    /// Poll handles the kernel waits on (sorted).
    pub polls: Vec<u64>,
    /// With `allow_root`: the only uid besides root let in.
    pub only_uid: Option<u32>,
    /// The counters.
    pub counters: Counters,
}

impl<N, H> SessionState<N, H> {
    /// Whether the kernel offered `FUSE_HAS_RESEND` (7.40): a restored daemon may then
    /// ask it to resend requests the previous process read but did not answer.
    pub fn kernel_has_resend(&self) -> bool {
        self.init.offer.init_flags().contains(InitFlags::HAS_RESEND)
    }

    /// The read buffer the kernel requires on this connection, for `page_size`.
    pub fn read_buffer_size(&self, page_size: usize) -> usize {
        self.init.result.read_buffer_size(page_size)
    }
}

/// Why a [`SessionState`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// The protocol minor is outside what this library serves.
    UnsupportedMinor(u32),
    /// The INIT result is not something this library would have agreed.
    BadInit(&'static str),
    /// The root (nodeid 1) is missing, not first, or counted.
    BadRoot(&'static str),
    /// Nodeids are not strictly increasing (a duplicate or unsorted).
    NodeidsNotSorted(u64),
    /// A node other than the root has a zero lookup count.
    ZeroLookups(u64),
    /// Two nodeids carry equal node values.
    DuplicateNode(u64),
    /// A handle's fh is zero, duplicate or unsorted.
    BadFh(u64),
    /// A handle names a nodeid that is not in the table.
    HandleOnMissingNode {
        /// The handle.
        fh: u64,
        /// The missing nodeid.
        nodeid: u64,
    },
    /// A counter would hand out an id already in use.
    BadCounter(&'static str),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::UnsupportedMinor(m) => write!(
                f,
                "state is for protocol 7.{m}; this library serves 7.{MIN_MINOR} to 7.{}",
                abi::FUSE_KERNEL_MINOR_VERSION
            ),
            StateError::BadInit(why) => write!(f, "state's INIT result is invalid: {why}"),
            StateError::BadRoot(why) => write!(f, "state's root node is invalid: {why}"),
            StateError::NodeidsNotSorted(id) => {
                write!(
                    f,
                    "state's nodeids are duplicated or unsorted at nodeid {id}"
                )
            }
            StateError::ZeroLookups(id) => {
                write!(
                    f,
                    "state's nodeid {id} has a zero lookup count (it should have been forgotten)"
                )
            }
            StateError::DuplicateNode(id) => {
                write!(
                    f,
                    "state's nodeid {id} carries the same node value as another nodeid"
                )
            }
            StateError::BadFh(fh) => write!(f, "state's fh {fh} is zero, duplicated or unsorted"),
            StateError::HandleOnMissingNode { fh, nodeid } => {
                write!(
                    f,
                    "state's handle {fh} is open on nodeid {nodeid}, which is not in the table"
                )
            }
            StateError::BadCounter(which) => {
                write!(
                    f,
                    "state's counter {which} would reuse an id already in use"
                )
            }
        }
    }
}

impl std::error::Error for StateError {}

impl<N: Eq + Hash, H> SessionState<N, H> {
    /// Checks that the state is internally consistent: supported minor, sane INIT
    /// result, the root first and uncounted, nodeids strictly increasing with non-zero
    /// counts and distinct node values, handles with distinct non-zero fhs on existing
    /// nodeids, counters beyond every id in use.
    pub fn validate(&self) -> Result<(), StateError> {
        self.validate_structure()?;
        // Distinct node values: sort (hash, index) pairs and compare the values only
        // where hashes collide. Sequential memory access, unlike a 1M-entry hash set.
        let mut keys: Vec<(u64, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (id_hash(&n.node), i))
            .collect();
        keys.sort_unstable();
        let mut run = 0;
        while run < keys.len() {
            let h = keys[run].0;
            let end = keys[run..]
                .iter()
                .position(|k| k.0 != h)
                .map_or(keys.len(), |p| run + p);
            for a in run..end {
                for b in a + 1..end {
                    let (x, y) = (&self.nodes[keys[a].1], &self.nodes[keys[b].1]);
                    if x.node == y.node {
                        return Err(StateError::DuplicateNode(x.nodeid.max(y.nodeid)));
                    }
                }
            }
            run = end;
        }
        Ok(())
    }

    /// Everything [`SessionState::validate`] checks but the distinct node values
    /// (which [`Session::restore`] checks while it builds the table, hashing each
    /// value once).
    pub(crate) fn validate_structure(&self) -> Result<(), StateError> {
        let r = &self.init.result;
        if r.minor < MIN_MINOR
            || r.minor > abi::FUSE_KERNEL_MINOR_VERSION
            || r.minor > self.init.offer.minor
        {
            return Err(StateError::UnsupportedMinor(r.minor));
        }
        if r.max_write < 4096 || r.max_write > 1 << 30 {
            return Err(StateError::BadInit("max_write outside 4 KiB..1 GiB"));
        }
        if InitFlags(r.flags).difference(self.init.offer.init_flags()) != InitFlags::EMPTY {
            return Err(StateError::BadInit("agreed flags the kernel did not offer"));
        }
        let Some(root) = self.nodes.first() else {
            return Err(StateError::BadRoot("no nodes"));
        };
        if root.nodeid != ROOT_ID {
            return Err(StateError::BadRoot("the first node is not nodeid 1"));
        }
        if root.lookups != 0 {
            return Err(StateError::BadRoot("the root has a lookup count"));
        }
        let mut prev = 0;
        for n in &self.nodes {
            if n.nodeid <= prev {
                return Err(StateError::NodeidsNotSorted(n.nodeid));
            }
            prev = n.nodeid;
            if n.nodeid != ROOT_ID && n.lookups == 0 {
                return Err(StateError::ZeroLookups(n.nodeid));
            }
        }
        let c = &self.counters;
        if c.next_nodeid <= prev {
            return Err(StateError::BadCounter("next_nodeid"));
        }
        let mut prev_fh = 0;
        for h in &self.handles {
            if h.fh <= prev_fh {
                return Err(StateError::BadFh(h.fh));
            }
            prev_fh = h.fh;
            if self
                .nodes
                .binary_search_by_key(&h.nodeid, |n| n.nodeid)
                .is_err()
            {
                return Err(StateError::HandleOnMissingNode {
                    fh: h.fh,
                    nodeid: h.nodeid,
                });
            }
        }
        if c.next_fh <= prev_fh {
            return Err(StateError::BadCounter("next_fh"));
        }
        Ok(())
    }
}

impl<F: Filesystem> Session<F> {
    /// The session as a value. For a consistent picture call it while no request is
    /// being handled (e.g. under [`Running::pause`](crate::serve::Running::pause));
    /// `None` before INIT (there is nothing to restore without it).
    pub fn snapshot(&self) -> Option<SessionState<F::Node, F::Handle>> {
        let init = *self.init.get()?;
        let (mut nodes, (next_nodeid, next_generation)) = {
            let t = lock(&self.nodes);
            let nodes: Vec<NodeState<F::Node>> =
                t.iter().map(|(id, e)| NodeState::of(id, e)).collect();
            (nodes, t.counters())
        };
        // Sorted after the lock is released: requests wait only for the copy.
        nodes.sort_unstable_by_key(|n| n.nodeid);
        let (handles, polls, counters) = self.snapshot_rest(next_nodeid, next_generation);
        Some(SessionState {
            init,
            nodes,
            handles,
            polls,
            only_uid: self.only_uid,
            counters,
        })
    }

    /// Everything of a snapshot but the nodeid table: handles, polls, counters
    /// (with the table's `next_nodeid` and `next_generation`).
    #[allow(clippy::type_complexity)]
    pub(crate) fn snapshot_rest(
        &self,
        next_nodeid: u64,
        next_generation: u64,
    ) -> (Vec<HandleState<F::Handle>>, Vec<u64>, Counters) {
        let (handles, next_fh) = {
            let t = lock(&self.handles);
            (handle_states(&t), t.next_fh())
        };
        (
            handles,
            lock(&self.polls).iter().copied().collect(),
            self.counters_now(next_nodeid, next_generation, next_fh),
        )
    }

    /// The counters now, with the nodeid and handle tables' own.
    pub(crate) fn counters_now(
        &self,
        next_nodeid: u64,
        next_generation: u64,
        next_fh: u64,
    ) -> Counters {
        let s = &self.stats;
        Counters {
            next_nodeid,
            next_generation,
            next_fh,
            next_notify_unique: self.notify_unique.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            interrupts: s.interrupts.load(Ordering::Relaxed),
            forgets: s.forgets.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
        }
    }

    /// A session for `fs` in the state `state`, already initialized: no INIT will
    /// come (the kernel never re-sends it on a live connection). Refuses a state that
    /// does not [validate](SessionState::validate).
    pub fn restore(fs: F, state: SessionState<F::Node, F::Handle>) -> Result<Self, StateError> {
        state.validate_structure()?;
        let c = state.counters;
        let root = state.nodes.first().map(|n| n.node.clone());
        let fs_root = fs.root();
        if root.as_ref() != Some(&fs_root) {
            return Err(StateError::BadRoot(
                "the filesystem's root node differs from the state's",
            ));
        }
        let nodes = node_table(state.nodes, &c)?;
        Ok(Session::assemble(
            fs,
            state.init,
            nodes,
            state.handles,
            state.polls,
            state.only_uid,
            &c,
        ))
    }

    /// A restored session from its parts, all checked.
    pub(crate) fn assemble(
        fs: F,
        init: InitState,
        nodes: NodeTable<F::Node>,
        handles: Vec<HandleState<F::Handle>>,
        polls: Vec<u64>,
        only_uid: Option<u32>,
        c: &Counters,
    ) -> Self {
        let handles = HandleTable::from_parts(
            handles.into_iter().map(|h| {
                (
                    h.fh,
                    HandleEntry {
                        handle: h.handle,
                        kind: h.kind,
                        nodeid: h.nodeid,
                        flags: h.flags,
                    },
                )
            }),
            c.next_fh,
        );
        let once = OnceLock::new();
        let _ = once.set(init);
        let mut s = Session::new(fs);
        s.nodes = Mutex::new(nodes.with_stable_ids(F::stable_id));
        s.handles = Mutex::new(handles);
        s.init = once;
        s.polls = Mutex::new(polls.into_iter().collect::<BTreeSet<u64>>());
        s.notify_unique = AtomicU64::new(c.next_notify_unique.max(1));
        s.only_uid = only_uid;
        s.stats = SessionStats {
            requests: AtomicU64::new(c.requests),
            errors: AtomicU64::new(c.errors),
            interrupts: AtomicU64::new(c.interrupts),
            forgets: AtomicU64::new(c.forgets),
            malformed: AtomicU64::new(c.malformed),
            pokes: AtomicU64::new(0),
            panics: AtomicU64::new(0),
        };
        s.destroyed = AtomicBool::new(false);
        s.early_interrupts = Mutex::new(VecDeque::new());
        s
    }
}

/// The nodeid table of checked `nodes` (sorted, counted); fails on a node value
/// carried twice.
pub(crate) fn node_table<N: Clone + Eq + Hash>(
    nodes: Vec<NodeState<N>>,
    c: &Counters,
) -> Result<NodeTable<N>, StateError> {
    NodeTable::from_parts(
        nodes
            .into_iter()
            .map(|n| (n.nodeid, NodeEntry::new(n.node, n.lookups, n.generation))),
        c.next_nodeid,
        c.next_generation,
    )
    .map_err(StateError::DuplicateNode)
}

/// Every open handle of `t`, in handle order, as a snapshot holds them.
pub(crate) fn handle_states<H: Clone>(t: &HandleTable<H>) -> Vec<HandleState<H>> {
    t.sorted()
        .into_iter()
        .map(|(fh, e)| HandleState {
            fh,
            kind: e.kind,
            nodeid: e.nodeid,
            flags: e.flags,
            handle: e.handle.clone(),
        })
        .collect()
}
