//! The validation index: the checks of a restored [`State`], kept so that changes
//! can be checked in time proportional to them.
use super::*;

/// What checking a [`State`] found, kept so that changes can be checked without
/// going over the whole state again ([`State::apply_changes`]).
///
/// Each inode is checked on its own ([`check_inode`]); what crosses inodes is
/// counted: how often each inode is referenced (directory entries, and a live
/// directory's parent), which referenced inodes are missing, and the chunks in use.
#[derive(Debug, Default)]
pub struct StateIndex {
    /// Inode -> how often it is referenced (no entry: never).
    pub(super) refs: BTreeMap<u64, u32>,
    pub(super) missing: HashSet<u64>,
    /// Inodes that fail their own checks, with the first reason.
    pub(super) bad: BTreeMap<u64, String>,
    pub(super) used: u64,
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
            // Every entry's cookie names it in the listing, and (as many of each)
            // every listing cookie an entry: the entries sorted by cookie are the
            // listing. A sort (a pass for cookies already in order, as when names
            // were created in order) and a walk, not a tree search per entry.
            let mut by_cookie = Vec::with_capacity(d.entries.len());
            for (name, e) in &d.entries {
                check_name(name).map_err(|_| format!("directory {ino} has a bad name"))?;
                if e.cookie < FIRST_COOKIE || e.cookie >= d.next_cookie {
                    return Err(format!("directory {ino}: bad cookie"));
                }
                by_cookie.push((e.cookie, name.as_bytes()));
            }
            by_cookie.sort_unstable_by_key(|&(cookie, _)| cookie);
            let listed = d.order.iter().map(|(&c, n)| (c, n.as_bytes()));
            if !by_cookie.into_iter().eq(listed) {
                return Err(format!("directory {ino}: bad cookie"));
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
        let mut index = StateIndex::default();
        // Every reference, then counted and matched against the inode table in
        // one sorted walk each: a tree search and a hash-map entry per reference
        // were most of the time (a state of 100 000 inodes).
        let mut targets = Vec::new();
        for (&ino, inode) in &state.inodes {
            if let Err(e) = check_inode(ino, inode) {
                index.bad.insert(ino, e);
            }
            index.used = index.used.saturating_add(inode.chunks());
            targets.extend(refs_of(inode));
        }
        targets.sort_unstable();
        let mut counts: Vec<(u64, u32)> = Vec::new();
        for t in targets {
            match counts.last_mut() {
                Some((last, n)) if *last == t => *n = n.saturating_add(1),
                _ => counts.push((t, 1)),
            }
        }
        let mut inodes = state.inodes.map.keys().peekable();
        for &(t, _) in &counts {
            while inodes.next_if(|&&ino| ino < t).is_some() {}
            if inodes.peek() != Some(&&t) {
                index.missing.insert(t);
            }
        }
        index.refs = BTreeMap::from_iter(counts);
        index
    }

    /// Counts inode `ino` (about to be, or already, in `state`).
    pub(super) fn add(&mut self, ino: u64, inode: &Inode, state: &State) {
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
    pub(super) fn remove(&mut self, ino: u64, inode: &Inode) {
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

impl State {
    /// Checks every invariant of a restored state: it is untrusted input.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut index = StateIndex::build(self);
        index.finish(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state with directories, files, a hard link, a symlink, an xattr and
    /// data.
    fn sample() -> State {
        let mut s = State::new(0, 0, 1 << 30);
        let root = Caller::ROOT;
        for d in 0..5u8 {
            let dir = s.mkdir(root, ROOT_INO, &[b'd', b'0' + d], 0o755).unwrap();
            for f in 0..40u8 {
                let name = [b'f', b'0' + f / 10, b'0' + f % 10];
                let ino = s.mknod(root, dir, &name, 0o100644, 0).unwrap();
                if f % 7 == 0 {
                    s.write(root, ino, 4096 * u64::from(f), b"x", false)
                        .unwrap();
                }
                if f % 11 == 0 {
                    s.link(ino, ROOT_INO, &[b'l', b'0' + d, name[1], name[2]])
                        .unwrap();
                }
            }
            s.unlink(dir, b"f03").unwrap();
        }
        s.symlink(root, ROOT_INO, b"s", b"d0/f01").unwrap();
        s.setxattr(ROOT_INO, b"user.k", b"v", 0).unwrap();
        s
    }

    /// The index as counting one inode at a time builds it (the way changes
    /// keep it up to date).
    fn one_by_one(state: &State) -> StateIndex {
        let mut index = StateIndex::default();
        for (&ino, inode) in &state.inodes {
            index.add(ino, inode, state);
        }
        index
    }

    fn same(a: &StateIndex, b: &StateIndex) {
        assert_eq!(a.refs, b.refs);
        assert_eq!(a.missing, b.missing);
        assert_eq!(
            a.bad.keys().collect::<Vec<_>>(),
            b.bad.keys().collect::<Vec<_>>()
        );
        assert_eq!(a.used, b.used);
    }

    #[test]
    fn the_bulk_build_counts_as_adding_one_by_one() {
        let mut s = sample();
        same(&StateIndex::build(&s), &one_by_one(&s));
        s.validate().unwrap();
        // Inodes gone that entries still name: both report them missing.
        let gone: Vec<u64> = s
            .inodes
            .iter()
            .map(|(&i, _)| i)
            .step_by(9)
            .skip(1)
            .collect();
        for ino in &gone {
            s.inodes.map.remove(ino);
        }
        let built = StateIndex::build(&s);
        same(&built, &one_by_one(&s));
        assert!(!built.missing.is_empty());
        let err = s.validate().unwrap_err();
        assert!(err.contains("names the missing inode"), "{err}");
    }

    fn dir_of(s: &mut State, ino: u64) -> &mut Dir {
        match &mut s.inodes.map.get_mut(&ino).unwrap().body {
            Body::Dir(d) => d,
            _ => panic!("inode {ino} is not a directory"),
        }
    }

    #[test]
    fn a_listing_that_disagrees_with_the_names_is_refused() {
        let s = sample();
        let d = s.lookup(ROOT_INO, b"d1").unwrap();
        // Two names swapped in the listing.
        let mut bad = s.clone();
        let dir = dir_of(&mut bad, d);
        let (&c1, _) = dir.order.iter().next().unwrap();
        let (&c2, _) = dir.order.iter().nth(1).unwrap();
        let n1 = dir.order[&c1].clone();
        let n2 = std::mem::replace(dir.order.get_mut(&c2).unwrap(), n1);
        dir.order.insert(c1, n2);
        assert_eq!(
            bad.validate().unwrap_err(),
            format!("directory {d}: bad cookie")
        );
        // An entry's cookie moved to one the listing does not have.
        let mut bad = s.clone();
        let dir = dir_of(&mut bad, d);
        let next = dir.next_cookie;
        dir.next_cookie += 1;
        dir.entries.values_mut().next().unwrap().cookie = next;
        assert_eq!(
            bad.validate().unwrap_err(),
            format!("directory {d}: bad cookie")
        );
        // Beyond the next cookie.
        let mut bad = s.clone();
        let dir = dir_of(&mut bad, d);
        dir.next_cookie -= 1;
        assert_eq!(
            bad.validate().unwrap_err(),
            format!("directory {d}: bad cookie")
        );
        // Two entries sharing a cookie (and the listing one short).
        let mut bad = s.clone();
        let dir = dir_of(&mut bad, d);
        let cookies: Vec<u64> = dir.entries.values().map(|e| e.cookie).take(2).collect();
        dir.entries.values_mut().nth(1).unwrap().cookie = cookies[0];
        dir.order.remove(&cookies[1]);
        assert!(bad.validate().is_err());
        s.validate().unwrap();
    }
}
