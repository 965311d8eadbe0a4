//! The POSIX operations on a [`State`]: lookups, creation, links, rename,
//! attributes, file data and extended attributes.
use super::*;

impl State {
    pub(super) fn get(&self, ino: u64) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn get_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// For a change that leaves a file's contents alone (attributes, times, link
    /// count, extended attributes): a pre-copy then sends only those.
    pub(super) fn get_mut_meta(&mut self, ino: u64) -> Result<&mut Inode> {
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
    pub(super) fn prepare_create(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
    ) -> Result<(u32, bool)> {
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

    pub(super) fn alloc_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// Links a new inode into `parent` under `name` and touches the parent.
    pub(super) fn attach(
        &mut self,
        parent: u64,
        name: &[u8],
        inode: Inode,
        now: SystemTime,
    ) -> Result<u64> {
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
            Body::Dir(Box::new(Dir::new(parent))),
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
    pub(super) fn unlinked(&mut self, ino: u64, now: SystemTime) {
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
    pub(super) fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
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
    pub(super) fn move_dir(&mut self, ino: u64, from: u64, to: u64) {
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
    pub(super) fn with_file<T>(
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
    pub(super) fn reserve(&self, n: u64) -> Result<()> {
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

    /// OPEN of an existing inode: applies `O_TRUNC`, which the kernel sends only
    /// on a connection that agreed `ATOMIC_O_TRUNC` (memfs no longer asks for it;
    /// a session restored from an older build's snapshot or journal may have it).
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
        times: &fuse_session::dev::AccessTimes,
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
