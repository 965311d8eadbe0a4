//! The nodeid table: the session's map between the kernel's nodeids and the
//! filesystem's own node values, with the kernel's lookup counts.
//!
//! # The lookup-count rule
//!
//! The kernel holds a reference count per nodeid, the *lookup count*. Every reply
//! that hands it a nodeid adds one: LOOKUP, CREATE, MKNOD, MKDIR, SYMLINK, LINK,
//! TMPFILE, and each READDIRPLUS entry except `.` and `..` (which the kernel ignores).
//! FORGET and BATCH_FORGET subtract the number they carry. When a count reaches zero
//! the kernel has forgotten the inode; only then may the filesystem drop it, and
//! only then may the nodeid be reused. Nodeid 1, the root, is never forgotten.
//!
//! Nodes are deduplicated: looking up the same node value twice gives the same
//! nodeid, so the kernel sees one inode. Nodeids are never reused within a session
//! (a 64-bit counter), and each new nodeid also gets a fresh generation, so the pair
//! is unique for the filesystem's lifetime as the kernel requires.
//!
//! # References
//! - Linux `fs/fuse/inode.c` (`fuse_iget`, `fuse_queue_forget`), `fs/fuse/readdir.c`
//!   (`fuse_direntplus_link`)
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A hasher for nodeids: they come from the session's own counter, never from an
/// adversary, so a multiplicative hash is safe and much cheaper than SipHash on the
/// per-request lookup.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        let x = self.0.rotate_left(5) ^ n;
        self.0 = (x ^ (x >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The [`IdHasher`] hash of any value.
pub(crate) fn id_hash<T: Hash + ?Sized>(v: &T) -> u64 {
    let mut h = IdHasher::default();
    v.hash(&mut h);
    h.finish()
}

/// A map keyed by nodeid or fh.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// The root's nodeid.
pub const ROOT_ID: u64 = fuse_wire::abi::FUSE_ROOT_ID;

/// One nodeid the kernel knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry<N> {
    /// The filesystem's value.
    pub node: N,
    /// The kernel's lookup count (the root's is not counted).
    pub lookups: u64,
    /// Generation of this nodeid.
    pub generation: u64,
    /// Lookups a journal already counts for this nodeid beyond `lookups` (see
    /// [`NodeTable::set_reserve`]).
    pub(crate) slack: Slack,
}

impl<N> NodeEntry<N> {
    /// An entry without reserved lookups.
    pub(crate) fn new(node: N, lookups: u64, generation: u64) -> Self {
        NodeEntry {
            node,
            lookups,
            generation,
            slack: Slack::default(),
        }
    }
}

/// Lookups a journal already holds for a nodeid beyond its count: valid only
/// while `epoch` is the table's (a new recording starts a new epoch, from
/// counts as they are).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Slack {
    epoch: u32,
    left: u32,
}

/// nodeid -> node, node -> nodeid, with lookup counts.
///
/// While *recording* (a pre-copy handoff, [`crate::proto::precopy`]) the table also
/// notes every nodeid whose entry is added, changed or removed.
#[derive(Clone, Debug)]
pub struct NodeTable<N: Clone + Eq + Hash> {
    by_id: IdMap<NodeEntry<N>>,
    by_node: HashMap<N, u64>,
    next_id: u64,
    next_generation: u64,
    changed: Option<HashSet<u64, BuildHasherDefault<IdHasher>>>,
    /// The filesystem's stable ids (`Filesystem::stable_id`), if it has them.
    stable: Option<StableIds<N>>,
    /// The most lookups a recorded count may reserve ([`NodeTable::set_reserve`]);
    /// 0: counts are recorded exactly.
    reserve: u32,
    /// Bumped by every [`NodeTable::start_recording`]: slack of an older epoch is
    /// void.
    epoch: u32,
}

/// A filesystem's stable nodeid and generation of a node.
pub(crate) type StableIds<N> = fn(&N) -> Option<(u64, u64)>;

/// `ids`, sorted.
fn sorted_ids(ids: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = ids.into_iter().collect();
    v.sort_unstable();
    v
}

/// What [`NodeTable::forget`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forgotten<N> {
    /// The count dropped but the kernel still holds the node.
    Still(u64),
    /// The count reached zero: the node is gone from the table and may be dropped.
    Gone(N),
    /// The nodeid is not in the table (or is the root): nothing happened.
    Unknown,
}

impl<N: Clone + Eq + Hash> NodeTable<N> {
    /// A table holding only the root.
    pub fn new(root: N) -> Self {
        let mut t = NodeTable {
            by_id: IdMap::default(),
            by_node: HashMap::new(),
            next_id: ROOT_ID + 1,
            next_generation: 1,
            changed: None,
            stable: None,
            reserve: 0,
            epoch: 0,
        };
        t.by_id.insert(ROOT_ID, NodeEntry::new(root.clone(), 0, 0));
        t.by_node.insert(root, ROOT_ID);
        t
    }

    /// Rebuilds a table from validated parts (unique ids, the root present, non-zero
    /// counts but the root's); fails with the nodeid of a node value seen twice.
    pub(crate) fn from_parts(
        entries: impl ExactSizeIterator<Item = (u64, NodeEntry<N>)>,
        next_id: u64,
        next_generation: u64,
    ) -> Result<Self, u64> {
        let n = entries.len();
        let mut t = NodeTable {
            by_id: IdMap::with_capacity_and_hasher(n, Default::default()),
            by_node: HashMap::with_capacity(n),
            next_id,
            next_generation,
            changed: None,
            stable: None,
            reserve: 0,
            epoch: 0,
        };
        for (id, e) in entries {
            if t.by_node.insert(e.node.clone(), id).is_some() {
                return Err(id);
            }
            t.by_id.insert(id, e);
        }
        Ok(t)
    }

    /// Numbers new nodes by `stable` where it gives an id that is free (see
    /// `Filesystem::stable_id`); the counters stay above every id handed out.
    pub(crate) fn with_stable_ids(mut self, stable: StableIds<N>) -> Self {
        self.stable = Some(stable);
        self
    }

    /// The node of `nodeid`.
    pub fn get(&self, nodeid: u64) -> Option<&NodeEntry<N>> {
        self.by_id.get(&nodeid)
    }

    /// The nodeid of `node`, if the kernel knows it.
    pub fn id_of(&self, node: &N) -> Option<u64> {
        self.by_node.get(node).copied()
    }

    fn note(&mut self, nodeid: u64) {
        if let Some(c) = &mut self.changed {
            c.insert(nodeid);
        }
    }

    /// Starts noting every nodeid whose entry changes (forgets earlier notes).
    /// Reserved lookups of an earlier recording are void from now on: what
    /// this recording starts from holds the counts as they are.
    pub fn start_recording(&mut self) {
        self.changed = Some(HashSet::default());
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Lookup-count reservations for a write-ahead journal (0, the default:
    /// none). With `reserve` > 0, [`NodeTable::take_recorded_states`] gives a
    /// nodeid counted `c` times the figure `c + min(reserve, c - 1)` and notes
    /// that the journal holds that many; later lookups of it within that figure
    /// are not noted as changes, so they need no record. A recovered count so
    /// exceeds the kernel's by at most `min(reserve, c - 1)`; never falls below
    /// it. A pre-copy handoff must not use it (its rounds must be exact).
    pub fn set_reserve(&mut self, reserve: u32) {
        self.reserve = reserve;
    }

    /// True if some nodeid was noted since recording started or the last
    /// [`NodeTable::take_recorded`] (true when not recording: nothing is known).
    pub fn has_recorded(&self) -> bool {
        match &self.changed {
            Some(c) => !c.is_empty(),
            None => true,
        }
    }

    /// The entry of `nodeid` as a record of it says it: its count with a
    /// reservation made now, when reservations are on (see
    /// [`NodeTable::set_reserve`]); `None` if it is not in the table.
    pub(crate) fn record_entry(&mut self, nodeid: u64) -> Option<(u64, &NodeEntry<N>)> {
        let (reserve, epoch) = (self.reserve, self.epoch);
        let e = self.by_id.get_mut(&nodeid)?;
        let mut lookups = e.lookups;
        if reserve > 0 && nodeid != ROOT_ID {
            // At most the count less one: a nodeid the kernel holds once (most
            // of a tree walk's) is recorded exactly.
            let left = u64::from(reserve).min(lookups.saturating_sub(1));
            lookups = lookups.saturating_add(left);
            e.slack = Slack {
                epoch,
                left: left as u32,
            };
        }
        Some((lookups, e))
    }

    /// Stops noting; returns the nodeids noted, sorted (`None` if not recording).
    pub fn stop_recording(&mut self) -> Option<Vec<u64>> {
        Some(sorted_ids(self.changed.take()?))
    }

    /// The nodeids noted so far, sorted, recording on (empty if not recording).
    pub fn recorded(&self) -> Vec<u64> {
        sorted_ids(self.changed.iter().flatten().copied())
    }

    /// The nodeids noted so far, sorted, and recording goes on afresh (`None` if
    /// not recording).
    pub fn take_recorded(&mut self) -> Option<Vec<u64>> {
        let c = self.changed.as_mut()?;
        if c.is_empty() {
            return Some(Vec::new());
        }
        // Draining keeps the set's capacity, and clearing costs its capacity:
        // after a burst (a listing of 100 000 entries) every later round would
        // clear that much. A set much larger than what it holds is dropped.
        if c.capacity() > 4 * c.len() + 64 {
            return Some(sorted_ids(std::mem::take(c)));
        }
        Some(sorted_ids(c.drain()))
    }

    /// Removes `nodeid` outright (applying a pre-copy's changes).
    pub(crate) fn remove_id(&mut self, nodeid: u64) -> Option<NodeEntry<N>> {
        let e = self.by_id.remove(&nodeid)?;
        if self.by_node.get(&e.node) == Some(&nodeid) {
            self.by_node.remove(&e.node);
        }
        Some(e)
    }

    /// Inserts `nodeid` (not present) with `e`; fails if its node value is already
    /// another nodeid's (applying a pre-copy's changes).
    pub(crate) fn insert_id(&mut self, nodeid: u64, e: NodeEntry<N>) -> Result<(), ()> {
        if self.by_node.contains_key(&e.node) || self.by_id.contains_key(&nodeid) {
            return Err(());
        }
        self.by_node.insert(e.node.clone(), nodeid);
        self.by_id.insert(nodeid, e);
        Ok(())
    }

    /// Sets the counters (applying a pre-copy's changes).
    pub(crate) fn set_counters(&mut self, next_id: u64, next_generation: u64) {
        self.next_id = next_id;
        self.next_generation = next_generation;
    }

    /// Counts one lookup of `node`, assigning a nodeid if it is new.
    /// Returns `(nodeid, generation)`.
    pub fn lookup(&mut self, node: &N) -> (u64, u64) {
        if let Some(&id) = self.by_node.get(node) {
            if let Some(e) = self.by_id.get_mut(&id) {
                let generation = e.generation;
                if id != ROOT_ID {
                    e.lookups = e.lookups.saturating_add(1);
                    // Within what the journal holds already: no record needed.
                    if e.slack.left > 0 && e.slack.epoch == self.epoch {
                        e.slack.left -= 1;
                    } else {
                        self.note(id);
                    }
                }
                return (id, generation);
            }
        }
        let stable = self
            .stable
            .and_then(|f| f(node))
            .filter(|(id, _)| *id > ROOT_ID && *id < u64::MAX && !self.by_id.contains_key(id));
        let (id, generation) = match stable {
            Some((id, generation)) => {
                self.next_id = self.next_id.max(id + 1);
                self.next_generation = self.next_generation.max(generation.saturating_add(1));
                (id, generation)
            }
            None => {
                // Stable ids above the counter may already be taken.
                while self.by_id.contains_key(&self.next_id) {
                    self.next_id = self.next_id.wrapping_add(1).max(ROOT_ID + 1);
                }
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(ROOT_ID + 1);
                let generation = self.next_generation;
                self.next_generation = self.next_generation.wrapping_add(1);
                (id, generation)
            }
        };
        self.by_id
            .insert(id, NodeEntry::new(node.clone(), 1, generation));
        self.by_node.insert(node.clone(), id);
        self.note(id);
        (id, generation)
    }

    /// Takes back one lookup that the kernel never received (its reply could not be
    /// delivered). Same as a FORGET of 1.
    pub fn unlookup(&mut self, nodeid: u64) -> Forgotten<N> {
        self.forget(nodeid, 1)
    }

    /// Subtracts `nlookup` from `nodeid`'s count (FORGET, BATCH_FORGET).
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Forgotten<N> {
        if nodeid == ROOT_ID {
            return Forgotten::Unknown;
        }
        let Some(e) = self.by_id.get_mut(&nodeid) else {
            return Forgotten::Unknown;
        };
        e.lookups = e.lookups.saturating_sub(nlookup);
        let left = e.lookups;
        self.note(nodeid);
        if left > 0 {
            return Forgotten::Still(left);
        }
        match self.by_id.remove(&nodeid) {
            Some(e) => {
                self.by_node.remove(&e.node);
                Forgotten::Gone(e.node)
            }
            None => Forgotten::Unknown,
        }
    }

    /// Number of nodeids, the root included.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &NodeEntry<N>)> + '_ {
        self.by_id.iter().map(|(&id, e)| (id, e))
    }

    /// The next nodeid and generation that will be assigned.
    pub fn counters(&self) -> (u64, u64) {
        (self.next_id, self.next_generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_ids_come_back_after_a_forget() {
        // Nodes >= 100 have stable ids (node, 7); others are numbered by the table.
        fn stable(n: &u64) -> Option<(u64, u64)> {
            (*n >= 100).then_some((*n, 7))
        }
        let mut t = NodeTable::new(0u64).with_stable_ids(stable);
        assert_eq!(t.lookup(&500), (500, 7));
        assert_eq!(t.forget(500, 1), Forgotten::Gone(500));
        assert_eq!(t.lookup(&500), (500, 7), "same nodeid and generation again");
        // The counters stay above every id handed out (a snapshot's invariant).
        let (next_id, next_gen) = t.counters();
        assert!(next_id > 500 && next_gen > 7);
        // A node without a stable id never takes a stable one's nodeid.
        let (c, _) = t.lookup(&3);
        assert!(c > 500);
        // A stable id already taken: numbered by the table instead.
        let mut t = NodeTable::new(0u64).with_stable_ids(|n| Some((*n % 10 + 2, 0)));
        let (a, _) = t.lookup(&13);
        let (b, _) = t.lookup(&23);
        assert_eq!(a, 5);
        assert_ne!(b, a);
        // Nodeid 1 is the root's, whatever the filesystem says.
        let mut t = NodeTable::new(0u64).with_stable_ids(|_| Some((ROOT_ID, 0)));
        assert_ne!(t.lookup(&9).0, ROOT_ID);
    }

    #[test]
    fn dedup_count_and_forget() {
        let mut t = NodeTable::new(0u64);
        let (a, ga) = t.lookup(&7);
        let (b, gb) = t.lookup(&7);
        assert_eq!((a, ga), (b, gb));
        assert_eq!(t.get(a).map(|e| e.lookups), Some(2));
        assert_eq!(t.forget(a, 1), Forgotten::Still(1));
        assert_eq!(t.forget(a, 1), Forgotten::Gone(7));
        assert_eq!(t.forget(a, 1), Forgotten::Unknown);
        let (c, gc) = t.lookup(&7);
        assert_ne!((c, gc), (a, ga), "a forgotten nodeid is not reused");
        assert_eq!(t.lookup(&0).0, ROOT_ID);
        assert_eq!(t.forget(ROOT_ID, 5), Forgotten::Unknown);
        assert_eq!(t.len(), 2);
    }
}
