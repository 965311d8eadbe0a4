//! The [`Filesystem`] trait: what a filesystem author implements.
//!
//! Operations are inode-level, like libfuse's low-level API, but they take and return
//! the filesystem's *own* values: a `Node` (whatever identifies an inode to the
//! filesystem: an inode number, a path, a key) and a `Handle` (whatever an open file
//! needs). The session turns nodes into the kernel's nodeids and handles into `fh`
//! numbers, counts lookups exactly as the kernel does, and calls [`Filesystem::forget`]
//! only when the kernel has forgotten a node. Because nodes and handles are serde
//! values, the session's tables are part of a snapshot by construction.
//!
//! Every method has a default: ENOSYS (or the conventional behaviour where the kernel
//! expects one, e.g. `flush`, `release`, `forget`). Methods take `&self` and may be
//! called from several worker threads at once.
//!
//! # What the library does for the filesystem
//!
//! - **Lookup counts and FORGET**: the session counts every reply that hands the
//!   kernel a nodeid (LOOKUP, CREATE, MKNOD, MKDIR, SYMLINK, LINK, TMPFILE, each
//!   READDIRPLUS entry but `.` and `..`) and calls [`Filesystem::forget`] only when
//!   the kernel's count reaches zero. Nodeid 1 is [`Filesystem::root`].
//! - **`O_TRUNC`**: [`InitWishes::default`] does not ask for `ATOMIC_O_TRUNC`, so the
//!   kernel truncates through [`Filesystem::setattr`] and `open` never sees
//!   `O_TRUNC`. Ask for `ATOMIC_O_TRUNC` only if `open` applies it.
//! - **INIT**: [`Filesystem::init`] sees what the kernel offered
//!   ([`InitWishes::offered`]); flags it wants but the kernel lacks are dropped,
//!   unless listed in [`InitWishes::required`], which makes INIT fail naming them.
//! - **Extended attribute sizes**: when `getxattr`/`listxattr` is called with
//!   `size` 0 (the caller probes for the size), a returned [`Xattr::Data`] is
//!   answered with its length; when it is larger than a non-zero `size`, the
//!   session answers `ERANGE`. So a filesystem may always return the whole value.
//! - **Directory listings**: [`DirEntries::push`] and [`DirEntriesPlus::push`] fail
//!   with [`Full`](crate::Full) when the reply is full: stop there, the kernel asks
//!   again from the last entry's offset.
//! - **The reserved name**: a LOOKUP of [`POKE_NAME`](crate::proto::POKE_NAME) in the
//!   root is the serving layer's wake-up poke; the session answers it `ENOENT`
//!   itself and never calls [`Filesystem::lookup`] for it, so a file of that name
//!   in the root cannot be looked up.
//! - **Panics**: a panic in a method is caught and answered `EIO` (in `init`, the
//!   mount is refused and [`Server::spawn`](crate::serve::Server::spawn) says so).
//! - **Answering later** (a SETLKW that waits for a lock, a READ or WRITE from a slow
//!   backend): take a token with [`RequestContext::defer`], return (the return
//!   value is then ignored), and answer the token later from any thread
//!   ([`DeferredReply`](crate::DeferredReply)). The worker serves other requests
//!   meanwhile. The answer goes through the same hook as any reply; a dropped token
//!   answers `EIO`; [`Running::pause`](crate::serve::Running::pause) (and so a
//!   snapshot or handoff) waits until no deferred request is outstanding.
//!   Deferrable: READ (`Vec<u8>`), WRITE (`u32`), SETLK, SETLKW, FSYNC, FSYNCDIR,
//!   FLUSH, FALLOCATE, ACCESS, SETXATTR, REMOVEXATTR (`()`).
//! - **Flag arguments** are typed ([`OpenFlags`], [`FuseOpenFlags`], [`WriteFlags`],
//!   [`RenameFlags`], [`AccessMask`]): newtypes over the kernel's bits, with
//!   constants, that keep unknown bits.
use std::ffi::OsStr;
use std::fmt::Debug;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::flags::{
    AccessMask, FuseOpenFlags, OpenFlags, RenameFlags, StatxAttributes, WriteFlags,
};
use crate::proto::bufs::{DirEntries, DirEntriesPlus, ReadBuf};
use crate::proto::init::InitWishes;
use crate::types::*;

/// A value a filesystem can use as its node or handle type.
pub trait StateValue: Clone + Debug + Send + Sync + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Debug + Send + Sync + Serialize + DeserializeOwned + 'static> StateValue for T {}

/// The poll handle the kernel gave with POLL when it wants a wakeup notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PollHandle(pub u64);

/// Extended attributes for STATX (7.39).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatxReply {
    /// The usual attributes.
    pub attr: FileAttr,
    /// Birth time, if known.
    pub btime: Option<std::time::SystemTime>,
    /// `STATX_ATTR_*` attributes set.
    pub attributes: StatxAttributes,
    /// The `STATX_ATTR_*` attributes this filesystem supports (set or not).
    pub attributes_mask: StatxAttributes,
    /// How long the kernel may cache them.
    pub ttl: std::time::Duration,
}

/// A FUSE filesystem. See the [module documentation](self).
#[allow(unused_variables, clippy::too_many_arguments, clippy::type_complexity)]
pub trait Filesystem: Send + Sync + 'static {
    /// The filesystem's value for an inode. Equal values are the same inode.
    type Node: StateValue + Eq + Hash;
    /// The filesystem's value for an open file or directory.
    type Handle: StateValue;

    /// The root directory's node (nodeid 1).
    fn root(&self) -> Self::Node;

    /// Called once with INIT, before any other operation: adjust `wishes` (flags,
    /// max_write, timeouts). The default keeps the library's defaults.
    fn init(&self, wishes: &mut InitWishes) -> Result<()> {
        Ok(())
    }

    /// The session ended (DESTROY, or the mount went away).
    fn destroy(&self) {}

    /// The kernel forgot `node` (its lookup count reached zero). Drop what only the
    /// kernel's reference kept alive (e.g. an unlinked inode).
    fn forget(&self, node: Self::Node) {}

    /// Stable nodeids: the nodeid and generation `node` should have, for a filesystem
    /// whose nodes have numbers of their own that are never reused (inode numbers
    /// of an in-memory or on-disk filesystem). `None` (the default): the session
    /// numbers nodes itself, and a nodeid the kernel forgot cannot be named again.
    ///
    /// With stable ids, a node the kernel forgot gets the same nodeid and
    /// generation when it is looked up again, and [`Filesystem::resolve_stable_id`]
    /// can name it from its nodeid alone: so file handles (`name_to_handle_at`, NFS
    /// export with `FUSE_EXPORT_SUPPORT`) stay valid after the kernel evicted the
    /// inode, across a handoff or crash recovery, and even across a cold restore.
    /// The pair must be unique over the filesystem's life (a nodeid never names two
    /// nodes with one generation); nodeid 1 is the root's. A node whose stable id is
    /// taken (by another node, or by a nodeid the session assigned) is numbered by the
    /// session instead.
    fn stable_id(node: &Self::Node) -> Option<(u64, u64)>
    where
        Self: Sized,
    {
        let _ = node;
        None
    }

    /// The node whose [`stable_id`](Filesystem::stable_id) has nodeid `nodeid`, if it
    /// still exists. The session asks when the kernel sends a request for a nodeid it
    /// forgot: `LOOKUP` of `.` (or `..`) on the nodeid of a file handle, which the
    /// kernel sends with `FUSE_EXPORT_SUPPORT` after it evicted the inode. The
    /// session checks that the node's stable id has this nodeid; the kernel checks
    /// the generation against the handle's. The default: `None` (`ESTALE`).
    fn resolve_stable_id(&self, nodeid: u64) -> Option<Self::Node> {
        let _ = nodeid;
        None
    }

    /// Looks up `name` in directory `parent`. Never called for the reserved wake-up
    /// name [`POKE_NAME`](crate::proto::POKE_NAME) in the root (the session answers
    /// it `ENOENT`).
    fn lookup(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Self::Node,
        name: &OsStr,
    ) -> Result<Entry<Self::Node>> {
        Err(Errno::ENOSYS)
    }

    /// Attributes of `node` (`fh` when the caller has the file open).
    fn getattr(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: Option<&Self::Handle>,
    ) -> Result<AttrReply> {
        Err(Errno::ENOSYS)
    }

    /// Changes attributes (chmod, chown, truncate, utimens).
    fn setattr(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: Option<&Self::Handle>,
        set: &SetAttr,
    ) -> Result<AttrReply> {
        Err(Errno::ENOSYS)
    }

    /// The target of a symlink.
    fn readlink(&self, ctx: &RequestContext<'_>, node: &Self::Node) -> Result<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    /// Creates a file node (regular, device, fifo, socket). `mode` has the type bits;
    /// `ctx.umask` is the caller's umask (already applied by the kernel unless
    /// `DONT_MASK` was agreed).
    fn mknod(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Self::Node,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry<Self::Node>> {
        Err(Errno::ENOSYS)
    }

    /// Creates a directory.
    fn mkdir(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Self::Node,
        name: &OsStr,
        mode: u32,
    ) -> Result<Entry<Self::Node>> {
        Err(Errno::ENOSYS)
    }

    /// Removes a non-directory name.
    fn unlink(&self, ctx: &RequestContext<'_>, parent: &Self::Node, name: &OsStr) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Removes an empty directory.
    fn rmdir(&self, ctx: &RequestContext<'_>, parent: &Self::Node, name: &OsStr) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Creates a symlink `name` -> `target`.
    fn symlink(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Self::Node,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<Entry<Self::Node>> {
        Err(Errno::ENOSYS)
    }

    /// Renames; `flags` are [`RenameFlags::NOREPLACE`], [`RenameFlags::EXCHANGE`],
    /// [`RenameFlags::WHITEOUT`] (RENAME2, 7.23; empty for plain RENAME).
    fn rename(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Self::Node,
        name: &OsStr,
        newparent: &Self::Node,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Creates a hard link to `node` as `newparent/newname`.
    fn link(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        newparent: &Self::Node,
        newname: &OsStr,
    ) -> Result<Entry<Self::Node>> {
        Err(Errno::ENOSYS)
    }

    /// Opens a file. `flags` are the `open(2)` flags; `open_flags` the FUSE ones
    /// ([`FuseOpenFlags::KILL_SUIDGID`], 7.34).
    ///
    /// `O_TRUNC`: by default ([`InitWishes::default`] does not ask for
    /// `ATOMIC_O_TRUNC`) the kernel truncates through [`Filesystem::setattr`] before
    /// OPEN and removes [`OpenFlags::TRUNC`] from `flags`, so an `open` that ignores
    /// it is correct. A filesystem that asks for `ATOMIC_O_TRUNC` in
    /// [`Filesystem::init`] must truncate here when `flags` has
    /// [`OpenFlags::TRUNC`], or old bytes stay behind.
    fn open(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        flags: OpenFlags,
        open_flags: FuseOpenFlags,
    ) -> Result<Opened<Self::Handle>> {
        Err(Errno::ENOSYS)
    }

    /// Reads up to `size` bytes at `offset` into `out` (copy into `out.buffer()`, or
    /// lend a slice of `self` with `out.set(..)` for a zero-copy reply). `flags` are
    /// the open flags; `lock_owner` is given when the kernel sent one
    /// (`FUSE_READ_LOCKOWNER`, for mandatory locking).
    ///
    /// To answer later (a slow backend), take `ctx.defer::<Vec<u8>>()` and answer
    /// the token with the data from any thread ([`RequestContext::defer`]).
    fn read<'r>(
        &'r self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        lock_owner: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Writes `data` at `offset`; returns the bytes written. `write_flags` are
    /// `FUSE_WRITE_*` ([`WriteFlags`]), `flags` the open flags (O_APPEND: the kernel
    /// gives the offset of the end of file as it knows it).
    ///
    /// To answer later, take `ctx.defer::<u32>()` ([`RequestContext::defer`]).
    fn write(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
    ) -> Result<u32> {
        Err(Errno::ENOSYS)
    }

    /// close(2) of one file descriptor. The default answers ENOSYS, after which the
    /// kernel stops sending FLUSH on this connection (one round trip less per
    /// `close(2)`), as with libfuse and fuser.
    fn flush(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        lock_owner: u64,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// The last reference to an open file went away; the handle is given back.
    /// The default drops it.
    fn release(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: Self::Handle,
        flags: i32,
        lock_owner: u64,
        flush: bool,
    ) -> Result<()> {
        Ok(())
    }

    /// fsync(2)/fdatasync(2).
    fn fsync(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        datasync: bool,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Opens a directory.
    fn opendir(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        flags: i32,
    ) -> Result<Opened<Self::Handle>> {
        Err(Errno::ENOSYS)
    }

    /// Lists entries from `offset` (0 = start; otherwise an offset given with an
    /// earlier entry) until `out` is full.
    fn readdir(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        offset: u64,
        out: &mut DirEntries<'_>,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Lists entries with their attributes (READDIRPLUS, 7.21); the session counts a
    /// lookup for each entry that fits, except `.` and `..`. Only sent when the
    /// filesystem asks for `DO_READDIRPLUS` in [`Filesystem::init`].
    fn readdirplus(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        offset: u64,
        out: &mut DirEntriesPlus<'_, Self::Node>,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// The last reference to an open directory went away. The default drops it.
    fn releasedir(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: Self::Handle,
        flags: i32,
    ) -> Result<()> {
        Ok(())
    }

    /// fsync(2) on a directory.
    fn fsyncdir(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        datasync: bool,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Filesystem statistics. The default reports an empty filesystem with
    /// 255-byte names, as libfuse does.
    fn statfs(&self, ctx: &RequestContext<'_>, node: &Self::Node) -> Result<Statfs> {
        Ok(Statfs {
            namelen: 255,
            bsize: 512,
            frsize: 512,
            ..Statfs::default()
        })
    }

    /// Sets an extended attribute. `flags`: XATTR_CREATE/REPLACE; `setxattr_flags`:
    /// `FUSE_SETXATTR_*` (7.33).
    fn setxattr(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        setxattr_flags: u32,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Gets an extended attribute: its size when `size` is 0, else the value
    /// (ERANGE if larger than `size`). Returning [`Xattr::Data`] is always right:
    /// the session answers the size probe (`size` 0) with its length, and `ERANGE`
    /// when it is larger than `size`.
    fn getxattr(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        name: &OsStr,
        size: u32,
    ) -> Result<Xattr> {
        Err(Errno::ENOSYS)
    }

    /// Lists extended attribute names (NUL-separated), or the list's size when
    /// `size` is 0. As for [`Filesystem::getxattr`], the session answers the size
    /// probe and `ERANGE` itself when given [`Xattr::Data`].
    fn listxattr(&self, ctx: &RequestContext<'_>, node: &Self::Node, size: u32) -> Result<Xattr> {
        Err(Errno::ENOSYS)
    }

    /// Removes an extended attribute.
    fn removexattr(&self, ctx: &RequestContext<'_>, node: &Self::Node, name: &OsStr) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// access(2) (not sent with `default_permissions`).
    fn access(&self, ctx: &RequestContext<'_>, node: &Self::Node, mask: AccessMask) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Creates and opens a regular file (CREATE). On ENOSYS the kernel falls back to
    /// MKNOD + OPEN. `flags` and `open_flags` as for [`Filesystem::open`].
    fn create(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Self::Node,
        name: &OsStr,
        mode: u32,
        flags: OpenFlags,
        open_flags: FuseOpenFlags,
    ) -> Result<(Entry<Self::Node>, Opened<Self::Handle>)> {
        Err(Errno::ENOSYS)
    }

    /// Tests for a POSIX lock conflicting with `lock`.
    fn getlk(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        owner: u64,
        lock: FileLock,
    ) -> Result<FileLock> {
        Err(Errno::ENOSYS)
    }

    /// Acquires or releases a lock (`sleep`: SETLKW; `flock`: a BSD lock).
    ///
    /// A SETLKW that must wait should not hold the worker: take
    /// `ctx.defer::<()>()` ([`RequestContext::defer`]), return, and answer the
    /// token once the lock is granted — or `EINTR` once
    /// [`DeferredReply::is_interrupted`](crate::DeferredReply::is_interrupted).
    #[allow(clippy::too_many_arguments)]
    fn setlk(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        owner: u64,
        lock: FileLock,
        sleep: bool,
        flock: bool,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Maps a file block to a device block (fuseblk).
    fn bmap(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        blocksize: u32,
        block: u64,
    ) -> Result<u64> {
        Err(Errno::ENOSYS)
    }

    /// ioctl(2).
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        flags: u32,
        cmd: u32,
        arg: u64,
        input: &[u8],
        out_size: u32,
    ) -> Result<IoctlReply> {
        Err(Errno::ENOSYS)
    }

    /// poll(2): returns the ready events. With `kh`, notify the kernel through
    /// [`Notifier::poll_wakeup`](crate::Notifier::poll_wakeup) when readiness changes.
    fn poll(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        kh: Option<PollHandle>,
        events: u32,
    ) -> Result<u32> {
        Err(Errno::ENOSYS)
    }

    /// fallocate(2), including FALLOC_FL_PUNCH_HOLE / KEEP_SIZE.
    fn fallocate(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// lseek(2) for SEEK_DATA / SEEK_HOLE (the kernel handles the others itself).
    fn lseek(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        offset: u64,
        whence: u32,
    ) -> Result<u64> {
        Err(Errno::ENOSYS)
    }

    /// copy_file_range(2); returns the bytes copied.
    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        ctx: &RequestContext<'_>,
        node_in: &Self::Node,
        fh_in: &Self::Handle,
        offset_in: u64,
        node_out: &Self::Node,
        fh_out: &Self::Handle,
        offset_out: u64,
        len: u64,
        flags: u64,
    ) -> Result<u64> {
        Err(Errno::ENOSYS)
    }

    /// statx(2) with fields GETATTR cannot carry (7.39). On ENOSYS the kernel uses
    /// GETATTR.
    fn statx(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: Option<&Self::Handle>,
        flags: u32,
        mask: u32,
    ) -> Result<StatxReply> {
        Err(Errno::ENOSYS)
    }

    /// Creates an unnamed temporary file in `parent` and opens it (O_TMPFILE, 7.37).
    fn tmpfile(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Self::Node,
        mode: u32,
        flags: OpenFlags,
        open_flags: FuseOpenFlags,
    ) -> Result<(Entry<Self::Node>, Opened<Self::Handle>)> {
        Err(Errno::ENOSYS)
    }

    /// syncfs(2) (7.34).
    fn syncfs(&self, ctx: &RequestContext<'_>, node: &Self::Node) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Maps `len` bytes of the file at `foffset` into the DAX window at `moffset`
    /// (SETUPMAPPING, 7.31). Only virtio-fs sends it; `flags` are
    /// `FUSE_SETUPMAPPING_FLAG_{WRITE,READ}`.
    fn setupmapping(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        fh: &Self::Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Removes DAX mappings, each `(moffset, len)` (REMOVEMAPPING, 7.31; virtio-fs
    /// only).
    fn removemapping(
        &self,
        ctx: &RequestContext<'_>,
        node: &Self::Node,
        mappings: &[(u64, u64)],
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }
}
