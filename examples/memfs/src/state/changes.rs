//! Change recording for a pre-copy handoff: what changed in a [`State`] while it
//! recorded, and applying those changes to a copy.
use super::*;

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

impl State {
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
        let c = self.inodes.changed.as_mut()?;
        if c.is_empty() {
            return Some(Vec::new());
        }
        // A map much larger than what it holds (after a burst of changes) is
        // dropped: draining keeps the capacity, and clearing costs it.
        if c.capacity() > 4 * c.len() + 64 {
            return Some(sorted_notes(std::mem::take(c)));
        }
        Some(sorted_notes(c.drain()))
    }

    /// True unless recording and no inode was noted since recording started or
    /// the last [`State::take_recorded`] (the counters and the settings move
    /// only with a noted inode).
    pub fn has_recorded(&self) -> bool {
        match &self.inodes.changed {
            Some(c) => !c.is_empty(),
            None => true,
        }
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
}
