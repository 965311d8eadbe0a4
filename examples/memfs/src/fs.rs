//! [`MemFs`]: the [`Filesystem`] adapter over a locked [`State`].
//!
//! Nodes are inode numbers (`u64`, never reused); handles are a small serde
//! [`Handle`]. Operations that only look take the read lock, so many workers serve
//! lookups, reads and listings at once; operations that change take the write lock.
//! A read or listing updates the atime under a short write lock only when due by
//! the mount's mode (`relatime` by default; `noatime`, `strictatime`, `nodiratime`
//! followed from the mount's flags).
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use fuse_session::dev::{AccessTimes, MountIdentity};

use fuse_session::wire::InitFlags;
use fuse_session::{
    AccessMask, AttrReply, DirEntries, DirEntriesPlus, Entry, Errno, FileType, Filesystem,
    FuseOpenFlags, InitWishes, OpenFlags, Opened, ReadBuf, RenameFlags, RequestContext, Result,
    SetAttr, Statfs, StatxAttributes, StatxReply, WriteFlags, Xattr,
};
use serde::{Deserialize, Serialize};

use crate::state::{Caller, State, ROOT_INO};

/// What an open file or directory carries: its inode and open flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// The inode opened.
    pub ino: u64,
    /// The `open(2)` flags.
    pub flags: i32,
}

/// Settings that are not part of the filesystem's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// How long the kernel may cache names and attributes.
    pub ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(1),
        }
    }
}

/// An in-memory POSIX filesystem. Its whole contents are one serde [`State`]
/// ([`MemFs::snapshot`], [`MemFs::restore`]).
#[derive(Debug)]
pub struct MemFs {
    state: RwLock<State>,
    config: Config,
    /// The mount's access-time mode, followed once [`MemFs::follow_mount`] says
    /// which mount; `relatime` until then. Not part of the contents.
    atime: Mutex<AtimeWatch>,
    /// After a cold restore: the INIT settings the snapshot recorded, the starting
    /// point of this connection's INIT. Not part of the contents.
    recorded_init: Option<InitWishes>,
}

/// Where memfs reads its mount's access-time mode from, and the last reading.
#[derive(Debug, Default)]
struct AtimeWatch {
    mount: Option<(MountIdentity, PathBuf)>,
    times: AccessTimes,
    read_at: Option<Instant>,
}

/// How long a reading of the mount's atime mode is used before it is read again (a
/// remount can change it; reading costs a system call).
const ATIME_MODE_REFRESH: Duration = Duration::from_secs(1);

/// The serialized form of a [`MemFs`]: settings and contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemFsImage {
    /// Settings.
    pub config: Config,
    /// Contents.
    pub state: State,
}

/// The caller as memfs's rules see it. The invalid id (`None`: an idmapped mount,
/// for requests that create nothing) becomes an id no file has and no group holds,
/// so it owns nothing and is in no group; the kernel always sends real ids with the
/// requests that create.
fn caller(ctx: &RequestContext<'_>) -> Caller {
    Caller {
        uid: ctx.uid.unwrap_or(RequestContext::INVALID_ID),
        gid: ctx.gid.unwrap_or(RequestContext::INVALID_ID),
    }
}

/// Is the caller of `ctx` in group `gid`: its fs gid, or one of its supplementary
/// groups (read from `/proc/PID/status`, since FUSE sends them only with creates).
/// A caller whose groups cannot be read is taken as not in the group, which clears
/// set-group-ID: the safe side.
fn in_group(ctx: &RequestContext<'_>, gid: u32) -> bool {
    if ctx.gid == Some(gid) {
        return true;
    }
    if ctx.pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", ctx.pid)) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

fn bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

impl MemFs {
    /// An empty filesystem whose root belongs to `uid:gid`, holding at most
    /// `capacity` bytes of file data.
    pub fn new(uid: u32, gid: u32, capacity: u64, config: Config) -> MemFs {
        MemFs {
            state: RwLock::new(State::new(uid, gid, capacity)),
            config,
            atime: Mutex::default(),
            recorded_init: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> Config {
        self.config
    }

    /// A copy of the whole filesystem, consistent at one instant.
    pub fn snapshot(&self) -> MemFsImage {
        MemFsImage {
            config: self.config,
            state: self.lock_read().clone(),
        }
    }

    /// A filesystem from a saved image, after checking every invariant (saved state
    /// is untrusted input).
    pub fn restore(image: MemFsImage) -> std::result::Result<MemFs, String> {
        image.state.validate()?;
        Ok(Self::from_checked(image))
    }

    /// A filesystem from an image already checked ([`State::validate`] or
    /// [`State::apply_changes`]).
    pub fn from_checked(image: MemFsImage) -> MemFs {
        MemFs {
            state: RwLock::new(image.state),
            config: image.config,
            atime: Mutex::default(),
            recorded_init: None,
        }
    }

    /// The read lock (a panicked writer cannot have left the state half-changed:
    /// every operation checks before it changes).
    pub fn lock_read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The write lock.
    pub fn lock_write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, state: &State, ino: u64) -> Result<Entry<u64>> {
        Ok(Entry {
            node: ino,
            attr: state.attr(ino)?,
            entry_ttl: self.config.ttl,
            attr_ttl: self.config.ttl,
        })
    }

    fn attr_reply(&self, state: &State, ino: u64) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: state.attr(ino)?,
            ttl: self.config.ttl,
        })
    }

    fn opened(ino: u64, flags: i32) -> Opened<Handle> {
        Opened::new(Handle { ino, flags })
    }

    /// Start this connection's INIT from the settings a snapshot recorded (a cold
    /// restore); memfs's own requirements are applied on top.
    pub fn use_recorded_init(&mut self, wishes: InitWishes) {
        self.recorded_init = Some(wishes);
    }

    /// Prepares a filesystem restored from a snapshot for a new mount: drops the
    /// inodes only the old mount's open files reached. Returns how many.
    pub fn prepare_cold(&mut self) -> usize {
        self.lock_write().drop_unlinked()
    }

    /// Follow the access-time mode (`noatime`, `relatime`, `strictatime`,
    /// `nodiratime`) of the mount `identity` at `mountpoint`: FUSE leaves atime to the
    /// filesystem, and the kernel does not say the mount's mode in requests. Read now
    /// and again at most every [`ATIME_MODE_REFRESH`] while accesses come (a remount
    /// takes effect within that time).
    pub fn follow_mount(&self, identity: MountIdentity, mountpoint: PathBuf) {
        let mut w = self.atime.lock().unwrap_or_else(PoisonError::into_inner);
        w.mount = Some((identity, mountpoint));
        w.read_at = None;
    }

    /// The mount's access-time mode, read again if the last reading is old.
    pub fn access_times(&self) -> AccessTimes {
        let mut w = self.atime.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = w.read_at.is_some_and(|t| t.elapsed() < ATIME_MODE_REFRESH);
        if !fresh {
            if let Some((id, path)) = &w.mount {
                match id.access_times(path) {
                    Ok(t) => w.times = t,
                    Err(e) => log::debug!("cannot read the mount's atime mode: {e}"),
                }
            }
            w.read_at = Some(Instant::now());
        }
        w.times
    }

    /// Updates the atime of `ino` after a read or listing if the mount's mode says so.
    fn accessed(&self, ino: u64) {
        let now = SystemTime::now();
        let times = self.access_times();
        if self.lock_read().atime_due_in(ino, now, &times) {
            self.lock_write().touch_atime(ino, now);
        }
    }
}

impl Filesystem for MemFs {
    type Node = u64;
    type Handle = Handle;

    fn root(&self) -> u64 {
        ROOT_INO
    }

    fn init(&self, wishes: &mut InitWishes) -> Result<()> {
        if let Some(recorded) = self.recorded_init {
            *wishes = recorded;
        }
        // READDIRPLUS (adaptive), "." and ".." lookups; no writeback cache, so the
        // kernel gives O_APPEND writes the end-of-file offset and every write reaches
        // us with the writer's ids. Locks stay local to the kernel.
        // No ATOMIC_O_TRUNC: with it the kernel checks that the file may be
        // written (ETXTBSY: a running program's executable) only after OPEN has
        // truncated it here, so `open(O_RDONLY | O_TRUNC)` emptied a running
        // program (pjdfstest open::etxtbsy, ~1 run in 50). Without it the kernel
        // checks first and truncates by SETATTR. `open` still applies O_TRUNC
        // (State::open) for a connection an older build negotiated with it.
        wishes.flags |=
            InitFlags::DO_READDIRPLUS | InitFlags::READDIRPLUS_AUTO | InitFlags::EXPORT_SUPPORT;
        wishes.flags = wishes
            .flags
            .difference(InitFlags::WRITEBACK_CACHE | InitFlags::ATOMIC_O_TRUNC);
        Ok(())
    }

    fn forget(&self, node: u64) {
        if self.lock_write().forget(node) {
            log::debug!("dropped unlinked inode {node}");
        }
    }

    fn lookup(&self, _ctx: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<Entry<u64>> {
        let state = self.lock_read();
        // `.` of any inode is itself: the kernel asks so (EXPORT_SUPPORT) to turn a
        // file handle of a regular file back into an inode.
        let ino = if bytes(name) == b"." && state.contains(*parent) {
            // An unlinked inode kept only for its open files or the kernel's lookup
            // count is not reachable by handle any more: ESTALE, as ext4 answers
            // (`EXT4_IGET_HANDLE` with no links). Without this a handle of a deleted
            // file opened again whenever the kernel's FORGET had not yet arrived.
            if state.attr(*parent)?.nlink == 0 {
                return Err(Errno::ESTALE);
            }
            *parent
        } else {
            state.lookup(*parent, bytes(name))?
        };
        self.entry(&state, ino)
    }

    /// Inode numbers are never reused within a filesystem's life (a cold restore
    /// keeps them): the nodeid is the inode number, with generation 0.
    fn stable_id(node: &u64) -> Option<(u64, u64)> {
        Some((*node, 0))
    }

    fn resolve_stable_id(&self, nodeid: u64) -> Option<u64> {
        self.lock_read().contains(nodeid).then_some(nodeid)
    }

    fn getattr(
        &self,
        _ctx: &RequestContext<'_>,
        node: &u64,
        _fh: Option<&Handle>,
    ) -> Result<AttrReply> {
        self.attr_reply(&self.lock_read(), *node)
    }

    fn setattr(
        &self,
        ctx: &RequestContext<'_>,
        node: &u64,
        _fh: Option<&Handle>,
        set: &SetAttr,
    ) -> Result<AttrReply> {
        let mut state = self.lock_write();
        let owner = state.owner(*node)?;
        state.setattr(caller(ctx), *node, set)?;
        // A truncate, or a mode change by someone who may not chmod (so the kernel's
        // removal of privileges before a write or fallocate): apply the whole rule.
        if set.size.is_some() || (set.mode.is_some() && ctx.uid != Some(owner)) {
            state.drop_privs(caller(ctx), *node, |gid| in_group(ctx, gid))?;
        }
        self.attr_reply(&state, *node)
    }

    fn readlink(&self, _ctx: &RequestContext<'_>, node: &u64) -> Result<Vec<u8>> {
        self.lock_read().readlink(*node)
    }

    fn mknod(
        &self,
        ctx: &RequestContext<'_>,
        parent: &u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry<u64>> {
        let mut state = self.lock_write();
        let ino = state.mknod(caller(ctx), *parent, bytes(name), mode, rdev)?;
        self.entry(&state, ino)
    }

    fn mkdir(
        &self,
        ctx: &RequestContext<'_>,
        parent: &u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<Entry<u64>> {
        let mut state = self.lock_write();
        let ino = state.mkdir(caller(ctx), *parent, bytes(name), mode)?;
        self.entry(&state, ino)
    }

    fn unlink(&self, _ctx: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<()> {
        self.lock_write().unlink(*parent, bytes(name))
    }

    fn rmdir(&self, _ctx: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<()> {
        self.lock_write().rmdir(*parent, bytes(name))
    }

    fn symlink(
        &self,
        ctx: &RequestContext<'_>,
        parent: &u64,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<Entry<u64>> {
        let mut state = self.lock_write();
        let ino = state.symlink(caller(ctx), *parent, bytes(name), bytes(target))?;
        self.entry(&state, ino)
    }

    fn rename(
        &self,
        _ctx: &RequestContext<'_>,
        parent: &u64,
        name: &OsStr,
        newparent: &u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        self.lock_write()
            .rename(*parent, bytes(name), *newparent, bytes(newname), flags.0)
    }

    fn link(
        &self,
        _ctx: &RequestContext<'_>,
        node: &u64,
        newparent: &u64,
        newname: &OsStr,
    ) -> Result<Entry<u64>> {
        let mut state = self.lock_write();
        state.link(*node, *newparent, bytes(newname))?;
        self.entry(&state, *node)
    }

    fn open(
        &self,
        ctx: &RequestContext<'_>,
        node: &u64,
        flags: OpenFlags,
        _open_flags: FuseOpenFlags,
    ) -> Result<Opened<Handle>> {
        let mut state = self.lock_write();
        state.open(caller(ctx), *node, flags.0)?;
        if flags.contains(OpenFlags::TRUNC) {
            state.drop_privs(caller(ctx), *node, |gid| in_group(ctx, gid))?;
        }
        Ok(Self::opened(*node, flags.0))
    }

    fn read<'r>(
        &'r self,
        _ctx: &RequestContext<'_>,
        node: &u64,
        _fh: &Handle,
        offset: u64,
        _size: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        let n = self.lock_read().read(*node, offset, out.buffer())?;
        out.filled(n);
        self.accessed(*node);
        Ok(())
    }

    fn write(
        &self,
        ctx: &RequestContext<'_>,
        node: &u64,
        _fh: &Handle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
    ) -> Result<u32> {
        let kill = write_flags.contains(WriteFlags::KILL_SUIDGID);
        let mut state = self.lock_write();
        if flags.contains(OpenFlags::APPEND) && log::log_enabled!(log::Level::Debug) {
            let size = state.attr(*node).map(|a| a.size).unwrap_or(0);
            if size != offset {
                log::debug!("O_APPEND write to inode {node} at {offset}, end of file is {size}");
            }
        }
        // Page-cache writeback (mmap) carries no meaningful caller: only the kernel's
        // explicit request clears set-user-ID there.
        let who = if write_flags.contains(WriteFlags::CACHE) {
            Caller::ROOT
        } else {
            caller(ctx)
        };
        let n = state.write(who, *node, offset, data, kill)?;
        state.drop_privs(who, *node, |gid| in_group(ctx, gid))?;
        Ok(n)
    }

    fn fsync(
        &self,
        _ctx: &RequestContext<'_>,
        _node: &u64,
        _fh: &Handle,
        _datasync: bool,
    ) -> Result<()> {
        Ok(())
    }

    fn opendir(&self, _ctx: &RequestContext<'_>, node: &u64, flags: i32) -> Result<Opened<Handle>> {
        self.lock_read().dir(*node)?;
        Ok(Self::opened(*node, flags))
    }

    fn readdir(
        &self,
        _ctx: &RequestContext<'_>,
        node: &u64,
        _fh: &Handle,
        offset: u64,
        out: &mut DirEntries<'_>,
    ) -> Result<()> {
        {
            let state = self.lock_read();
            let dir = state.dir(*node)?;
            let dots = [(".", *node, 1), ("..", state.parent_of(*node)?, 2)];
            let mut full = false;
            for (name, ino, next) in dots.into_iter().skip(offset.min(2) as usize) {
                if out
                    .push(ino, next, FileType::Directory, OsStr::new(name))
                    .is_err()
                {
                    full = true;
                    break;
                }
            }
            if !full {
                for (next, name, ino) in dir.listing_from(offset) {
                    let kind = state.attr(ino)?.kind;
                    if out.push(ino, next, kind, OsStr::from_bytes(name)).is_err() {
                        break;
                    }
                }
            }
        }
        self.accessed(*node);
        Ok(())
    }

    fn readdirplus(
        &self,
        _ctx: &RequestContext<'_>,
        node: &u64,
        _fh: &Handle,
        offset: u64,
        out: &mut DirEntriesPlus<'_, u64>,
    ) -> Result<()> {
        {
            let state = self.lock_read();
            let dir = state.dir(*node)?;
            let dots = [(".", *node, 1), ("..", state.parent_of(*node)?, 2)];
            let mut full = false;
            for (name, ino, next) in dots.into_iter().skip(offset.min(2) as usize) {
                if out
                    .push(OsStr::new(name), next, &self.entry(&state, ino)?)
                    .is_err()
                {
                    full = true;
                    break;
                }
            }
            if !full {
                for (next, name, ino) in dir.listing_from(offset) {
                    if out
                        .push(OsStr::from_bytes(name), next, &self.entry(&state, ino)?)
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        self.accessed(*node);
        Ok(())
    }

    fn fsyncdir(
        &self,
        _ctx: &RequestContext<'_>,
        _node: &u64,
        _fh: &Handle,
        _datasync: bool,
    ) -> Result<()> {
        Ok(())
    }

    fn statfs(&self, _ctx: &RequestContext<'_>, _node: &u64) -> Result<Statfs> {
        Ok(self.lock_read().statfs())
    }

    fn setxattr(
        &self,
        _ctx: &RequestContext<'_>,
        node: &u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _setxattr_flags: u32,
    ) -> Result<()> {
        self.lock_write().setxattr(*node, bytes(name), value, flags)
    }

    fn getxattr(
        &self,
        _ctx: &RequestContext<'_>,
        node: &u64,
        name: &OsStr,
        _size: u32,
    ) -> Result<Xattr> {
        // The session answers the size query and ERANGE from the data.
        self.lock_read()
            .getxattr(*node, bytes(name))
            .map(Xattr::Data)
    }

    fn listxattr(&self, _ctx: &RequestContext<'_>, node: &u64, _size: u32) -> Result<Xattr> {
        self.lock_read().listxattr(*node).map(Xattr::Data)
    }

    fn removexattr(&self, _ctx: &RequestContext<'_>, node: &u64, name: &OsStr) -> Result<()> {
        self.lock_write().removexattr(*node, bytes(name))
    }

    fn access(&self, _ctx: &RequestContext<'_>, node: &u64, _mask: AccessMask) -> Result<()> {
        // Only sent without `default_permissions`, which memfs always mounts with.
        self.lock_read().attr(*node).map(|_| ())
    }

    fn create(
        &self,
        ctx: &RequestContext<'_>,
        parent: &u64,
        name: &OsStr,
        mode: u32,
        flags: OpenFlags,
        _open_flags: FuseOpenFlags,
    ) -> Result<(Entry<u64>, Opened<Handle>)> {
        let mut state = self.lock_write();
        let (ino, _) = state.create(caller(ctx), *parent, bytes(name), mode, flags.0)?;
        Ok((self.entry(&state, ino)?, Self::opened(ino, flags.0)))
    }

    fn fallocate(
        &self,
        ctx: &RequestContext<'_>,
        node: &u64,
        _fh: &Handle,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> Result<()> {
        let mut state = self.lock_write();
        state.fallocate(*node, offset, length, mode)?;
        // Every mode that gets here changes size or data (the kernel refuses the
        // others for FUSE): privileges go as on a write.
        state.drop_privs(caller(ctx), *node, |gid| in_group(ctx, gid))
    }

    fn lseek(
        &self,
        _ctx: &RequestContext<'_>,
        node: &u64,
        _fh: &Handle,
        offset: u64,
        whence: u32,
    ) -> Result<u64> {
        self.lock_read().lseek(*node, offset, whence)
    }

    fn copy_file_range(
        &self,
        ctx: &RequestContext<'_>,
        node_in: &u64,
        _fh_in: &Handle,
        offset_in: u64,
        node_out: &u64,
        _fh_out: &Handle,
        offset_out: u64,
        len: u64,
        flags: u64,
    ) -> Result<u64> {
        if flags != 0 {
            return Err(Errno::EINVAL);
        }
        let mut state = self.lock_write();
        let n = state.copy_range(caller(ctx), *node_in, offset_in, *node_out, offset_out, len)?;
        if n > 0 {
            state.drop_privs(caller(ctx), *node_out, |gid| in_group(ctx, gid))?;
        }
        Ok(n)
    }

    fn statx(
        &self,
        _ctx: &RequestContext<'_>,
        node: &u64,
        _fh: Option<&Handle>,
        _flags: u32,
        _mask: u32,
    ) -> Result<StatxReply> {
        let state = self.lock_read();
        Ok(StatxReply {
            attr: state.attr(*node)?,
            btime: Some(state.btime(*node)?),
            attributes: StatxAttributes::EMPTY,
            attributes_mask: StatxAttributes::EMPTY,
            ttl: self.config.ttl,
        })
    }

    fn tmpfile(
        &self,
        ctx: &RequestContext<'_>,
        parent: &u64,
        mode: u32,
        flags: OpenFlags,
        _open_flags: FuseOpenFlags,
    ) -> Result<(Entry<u64>, Opened<Handle>)> {
        let mut state = self.lock_write();
        let ino = state.tmpfile(caller(ctx), *parent, mode)?;
        Ok((self.entry(&state, ino)?, Self::opened(ino, flags.0)))
    }

    fn syncfs(&self, _ctx: &RequestContext<'_>, _node: &u64) -> Result<()> {
        Ok(())
    }
}

impl Serialize for MemFs {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let state = self.lock_read();
        let mut s = serializer.serialize_struct("MemFsImage", 2)?;
        s.serialize_field("config", &self.config)?;
        s.serialize_field("state", &*state)?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for MemFs {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let image = MemFsImage::deserialize(deserializer)?;
        MemFs::restore(image).map_err(serde::de::Error::custom)
    }
}
