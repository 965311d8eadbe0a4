//! [`PassFs`]: the filesystem of a source directory, reached only through node
//! descriptors and `*at` calls, with kernel passthrough for open files.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use fuse_session::dev::fdstore::FdStore;
use fuse_session::dev::{backing, fhandle};
use fuse_session::wire::{FopenFlags, InitFlags};
use fuse_session::{
    AttrReply, DirEntries, DirEntriesPlus, Entry, Errno, FileType, Filesystem, InitWishes, Opened,
    ReadBuf, RequestContext, Result, SetAttr, Statfs, StatxReply, TimeOrNow, Xattr,
};
use fuse_session::{FuseOpenFlags, OpenFlags, RenameFlags, StatxAttributes, WriteFlags};
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::node::{self, component, open_beneath, stat_fd, Node};

/// Settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// How long the kernel caches names and attributes.
    pub ttl: Duration,
    /// Ask for kernel passthrough (`--no-passthrough` turns it off).
    pub passthrough: bool,
    /// Use file handles in node values (off: every node's descriptor is kept and
    /// passed on in a live handoff; for filesystems without handles, and tests).
    pub file_handles: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(1),
            passthrough: true,
            file_handles: true,
        }
    }
}

/// The filesystem's value for an open file or directory: an id into the open
/// descriptors of the process ([`PassFs`]'s table, passed on in a handoff) and the
/// kernel passthrough backing id it was opened with (0: none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// Key of the open descriptor.
    pub id: u64,
    /// Backing id (`FUSE_DEV_IOC_BACKING_OPEN`) this open uses, 0 for none.
    pub backing: i32,
}

/// An open backing file or directory.
pub struct OpenFile {
    /// The descriptor, opened with the caller's access mode.
    pub fd: OwnedFd,
    /// Serializes `lseek` + `getdents` on a directory stream.
    pub dir: Mutex<()>,
}

/// A backing id registered for an inode, shared by every passthrough open of it
/// (the kernel refuses two ids on one inode at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backing {
    /// The id.
    pub id: i32,
    /// Whether the registered file was opened for writing too.
    pub writable: bool,
    /// Open handles using it.
    pub refs: u64,
}

/// Kernel passthrough state.
pub struct Passthrough {
    /// A descriptor of this mount's `/dev/fuse` connection (set once serving).
    pub device: OnceLock<OwnedFd>,
    /// Passthrough is in use on this connection: every regular-file open is then
    /// either passthrough or `FOPEN_DIRECT_IO`, never page-cached (the kernel
    /// refuses cached and passthrough opens of one inode at once).
    pub on: AtomicBool,
    /// Backing ids per node.
    pub backings: Mutex<HashMap<Node, Backing>>,
    /// Ids released before the device was known (right after a takeover).
    pub pending_close: Mutex<Vec<i32>>,
}

/// What the crash journal knows of an open file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRec {
    /// The inode it is open on.
    pub node: Node,
    /// The open flags the descriptor was opened with (access mode, `O_APPEND`,
    /// `O_DIRECTORY`...; never `O_TRUNC` or `O_CREAT`): a successor reopens with them.
    pub flags: u32,
}

/// A non-idempotent operation about to run on the source, written to the
/// journal before it runs ([`PassFs::intent`]): a successor that gets the request
/// again (resent after a crash, its reply not in the journal) compares it with the
/// source to tell whether the dead process had already done it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The opcode's name (`"create"`, `"mkdir"`, `"unlink"`, `"rename"`,
    /// `"setxattr"`, `"open"`...).
    pub op: String,
    /// The parent directory; for SETXATTR, REMOVEXATTR and OPEN the node itself.
    pub parent: Node,
    /// The name in it; for SETXATTR and REMOVEXATTR the attribute's name.
    pub name: Vec<u8>,
    /// The inode the name held before (unlink, rmdir, rename's source, the file
    /// an `O_TRUNC` create found), if any.
    pub before: Option<Node>,
    /// The second name's inode before (rename's target, link's source node).
    pub other: Option<Node>,
    /// Wall-clock time (seconds, nanoseconds) just before the operation: a file the
    /// operation created was born at or after it.
    pub at: (i64, u32),
    /// What the operation's check needs beyond names and inodes.
    pub detail: Detail,
}

/// An intent as builds before 2026-12-07 wrote it (no [`Detail`]): still read from
/// a journal or a pre-copy round such a build left, as an [`Intent`] with
/// [`Detail::None`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentV1 {
    /// See [`Intent::op`].
    pub op: String,
    /// See [`Intent::parent`].
    pub parent: Node,
    /// See [`Intent::name`].
    pub name: Vec<u8>,
    /// See [`Intent::before`].
    pub before: Option<Node>,
    /// See [`Intent::other`].
    pub other: Option<Node>,
    /// See [`Intent::at`].
    pub at: (i64, u32),
}

impl From<IntentV1> for Intent {
    fn from(i: IntentV1) -> Intent {
        Intent {
            op: i.op,
            parent: i.parent,
            name: i.name,
            before: i.before,
            other: i.other,
            at: i.at,
            detail: Detail::None,
        }
    }
}

/// The part of an [`Intent`] particular to one kind of operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Detail {
    /// Names and inodes say it all.
    None,
    /// SETXATTR with `XATTR_CREATE`: the value to set, and the attribute's value
    /// before (`None`: it did not exist).
    XattrCreate {
        /// The value being set.
        value: ValueSum,
        /// The attribute's value before, if it existed.
        before: Option<ValueSum>,
    },
    /// REMOVEXATTR: whether the attribute existed before.
    XattrRemove {
        /// It existed.
        existed: bool,
    },
    /// OPEN, or CREATE of a name that may exist, with `O_TRUNC`: the file's state
    /// before (`None`: the name did not exist, a CREATE).
    Trunc {
        /// Size, blocks and times of the file before.
        before: Option<FileState>,
    },
}

/// An extended attribute's value as an intent keeps it: its length and a 64-bit
/// FNV-1a hash (values are up to 64 KiB; the journal keeps 12 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueSum {
    /// Length in bytes.
    pub len: u32,
    /// FNV-1a 64 of the bytes.
    pub hash: u64,
}

impl ValueSum {
    /// The sum of `v`.
    pub fn of(v: &[u8]) -> ValueSum {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in v {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        ValueSum {
            len: u32::try_from(v.len()).unwrap_or(u32::MAX),
            hash: h,
        }
    }
}

/// What a truncate changes in a file, as `fstat` shows it: size, blocks, and the
/// modification and change times (seconds, nanoseconds). Any change of the file
/// after the intent — the truncate, or a write — changes `ctime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// `st_size`.
    pub size: i64,
    /// `st_blocks`.
    pub blocks: i64,
    /// `st_mtime`, `st_mtime_nsec`.
    pub mtime: (i64, i64),
    /// `st_ctime`, `st_ctime_nsec`.
    pub ctime: (i64, i64),
}

impl FileState {
    /// The state of the inode `fd` is on.
    pub fn of(fd: BorrowedFd<'_>) -> Result<FileState> {
        let st = stat_fd(fd)?;
        Ok(FileState {
            size: st.st_size,
            blocks: st.st_blocks as i64,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        })
    }
}

/// One change of the journaled part of the state, as the crash journal records it
/// (in the order made; all are made under the journal's gate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A file or directory opened under this id.
    Open(u64, OpenRec),
    /// Id released.
    Close(u64),
    /// The backing id of a node set (`Some`) or released (`None`).
    Backing(Node, Option<Backing>),
    /// An intent as builds before 2026-12-07 noted it (read, never written).
    IntentV1(u64, Option<Box<IntentV1>>),
    /// An intent noted (`Some`) or done (`None`), by unique (without bit 63).
    Intent(u64, Option<Box<Intent>>),
}

/// The crash-journal side of the filesystem (idle without a fd store).
#[derive(Default)]
pub struct Journaling {
    /// Changes since the last round; `None` while not recording.
    pub recorded: Mutex<Option<Vec<Change>>>,
    /// Every open file and directory, by id.
    pub opens: Mutex<BTreeMap<u64, OpenRec>>,
    /// Ids whose descriptor is in the fd store (the file was, or may be about to
    /// be, unlinked while open).
    pub stored: Mutex<HashSet<u64>>,
    /// Ids a recovery could not reopen as the same file: EIO.
    pub dead: Mutex<HashSet<u64>>,
    /// Intents of operations whose reply the journal may not hold.
    pub intents: Mutex<HashMap<u64, Intent>>,
    /// The highest backing id this connection has handed out to this filesystem.
    pub last_backing: AtomicI32,
    /// The fd store (set when running under one).
    pub store: OnceLock<Arc<FdStore>>,
    /// Restored from a crash journal (its own session checks apply).
    pub restored: AtomicBool,
    /// The backing ids the handles of the last session check use.
    pub checked: Mutex<Option<(Vec<i32>, HashSet<u64>)>>,
    /// Appends a journal record right now (set when journaling).
    pub flush: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// The fd-store name of open file `id`'s descriptor.
pub fn stored_name(id: u64) -> String {
    format!("pt-open-{id}")
}

/// The passthrough filesystem.
pub struct PassFs {
    /// The source directory (`O_RDONLY | O_DIRECTORY`).
    pub root_fd: OwnedFd,
    /// The source directory's node.
    pub root: Node,
    /// The source's mount id, when file handles are used.
    pub mount_id: Option<i32>,
    /// Settings.
    pub config: Config,
    /// Descriptors of the nodes the kernel knows (`O_PATH`, or any descriptor of
    /// the inode). Dropped at `forget`.
    pub nodes: Mutex<HashMap<Node, Arc<OwnedFd>>>,
    /// Open files and directories by [`Handle::id`].
    pub files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// The next [`Handle::id`].
    pub next_id: AtomicU64,
    /// Kernel passthrough.
    pub pt: Passthrough,
    /// This process runs as root: created inodes are given to the caller.
    pub chown: bool,
    /// Crash journal state.
    pub jr: Journaling,
    /// Ask for `ATOMIC_O_TRUNC` at INIT (`--atomic-o-trunc`; off by default: with
    /// it a running program's executable can be emptied by
    /// `open(O_RDONLY | O_TRUNC)`, docs/CONFORMANCE.md). Matters only when this
    /// process mounts: a successor or a recovery keeps the connection's INIT.
    pub atomic_o_trunc: bool,
}

/// The fault point (`fuse_session::fault`, `FUSE_LIVE_FAULT=POINT:N`) right after
/// non-idempotent operation `op` ran on the source and before its reply is
/// journaled — the window only the intents close. Reached by requests sent for
/// the first time only: a resent one (bit 63) passes, so the restarted process
/// answers it instead of aborting again at hit 1.
///
/// `passthrough-after-any` is the same instant for every such operation, resent
/// ones included: a process restarted after a crash there crashes again at the
/// resent request (the test of a second crash in the same request).
fn after_backing(ctx: &RequestContext<'_>, op: &str) {
    fuse_session::fault::point("passthrough-after-any");
    if ctx.unique & UNIQUE_RESEND != 0 {
        return;
    }
    hold(op);
    let point = match op {
        "create" => "passthrough-after-create",
        "mknod" => "passthrough-after-mknod",
        "mkdir" => "passthrough-after-mkdir",
        "symlink" => "passthrough-after-symlink",
        "link" => "passthrough-after-link",
        "rename" => "passthrough-after-rename",
        "unlink" => "passthrough-after-unlink",
        "rmdir" => "passthrough-after-rmdir",
        "setxattr" => "passthrough-after-setxattr",
        "removexattr" => "passthrough-after-removexattr",
        "open" => "passthrough-after-open-trunc",
        "setattr" => "passthrough-after-truncate",
        "tmpfile" => "passthrough-after-tmpfile",
        _ => return,
    };
    fuse_session::fault::point(point);
}

/// The environment variable of [`hold`]: `OP[,OP...]:DIR`.
pub const HOLD_ENV: &str = "FUSE_LIVE_PT_HOLD";

/// A testing aid: with [`HOLD_ENV`] set to `OP[,OP...]:DIR`, the first request
/// of each operation `OP` (as named in [`after_backing`]) in this process, once it
/// ran on the source and before its reply is written, creates `DIR/held-OP` and
/// waits until `DIR/go-OP` exists: a request in flight, for the handoff tests.
/// Unset: one initialized-`OnceLock` check.
fn hold(op: &str) {
    type Plan = (Vec<String>, std::path::PathBuf, Mutex<HashSet<String>>);
    static PLAN: std::sync::OnceLock<Option<Plan>> = std::sync::OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        let v = std::env::var(HOLD_ENV).ok()?;
        let (ops, dir) = v.split_once(':')?;
        let ops = ops.split(',').map(str::to_owned).collect();
        Some((
            ops,
            std::path::PathBuf::from(dir),
            Mutex::new(HashSet::new()),
        ))
    });
    let Some((ops, dir, done)) = plan else {
        return;
    };
    if !ops.iter().any(|o| o == op) || !lock(done).insert(op.to_owned()) {
        return;
    }
    let go = dir.join(format!("go-{op}"));
    if let Err(e) = std::fs::write(dir.join(format!("held-{op}")), b"") {
        log::error!("{HOLD_ENV}: cannot create the held marker: {e}");
        return;
    }
    log::warn!("{HOLD_ENV}: {op} held until {} exists", go.display());
    while !go.exists() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    log::warn!("{HOLD_ENV}: {op} goes on");
}

/// Bit 63 of a unique: the kernel resent the request.
pub const UNIQUE_RESEND: u64 = 1 << 63;

/// How far an intent's time is put back: file timestamps come from the kernel's
/// coarse clock, which may lag the wall clock by a tick.
const CLOCK_SLACK: Duration = Duration::from_millis(50);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_io(&e)
}

fn rx(e: rustix::io::Errno) -> Errno {
    Errno(e.raw_os_error())
}

/// Open flags passed to the backing file: the access mode and the flags that
/// change how it is written; never `O_CREAT`, `O_EXCL`, `O_NOCTTY`, `O_DIRECT`
/// (this process reads with unaligned buffers; the kernel handles `O_DIRECT`).
fn backing_flags(flags: i32) -> OFlags {
    let keep = nix::libc::O_ACCMODE
        | nix::libc::O_APPEND
        | nix::libc::O_TRUNC
        | nix::libc::O_SYNC
        | nix::libc::O_DSYNC
        | nix::libc::O_NOATIME;
    OFlags::from_bits_retain((flags & keep) as u32)
}

impl PassFs {
    /// A filesystem over the directory `root_fd` (opened `O_RDONLY | O_DIRECTORY`).
    ///
    /// # Errors
    /// The source cannot be stat'ed.
    pub fn new(root_fd: OwnedFd, config: Config) -> std::io::Result<PassFs> {
        let st = stat_fd(root_fd.as_fd()).map_err(|e| std::io::Error::from_raw_os_error(e.0))?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFDIR {
            return Err(std::io::Error::from_raw_os_error(nix::libc::ENOTDIR));
        }
        let mount_id = if config.file_handles {
            Self::probe_handles(root_fd.as_fd())
        } else {
            None
        };
        let root = node::node_of(root_fd.as_fd(), &st, mount_id);
        Self::from_parts(root_fd, root, mount_id, config)
    }

    /// Whether the source's filesystem gives file handles that this process may
    /// open again (`CAP_DAC_READ_SEARCH`); its mount id if so.
    fn probe_handles(root: BorrowedFd<'_>) -> Option<i32> {
        let (h, mount_id) = match fhandle::name_to_handle(root, c"", nix::libc::AT_EMPTY_PATH) {
            Ok(x) => x,
            Err(e) => {
                log::warn!("the source has no file handles ({e}); keeping a descriptor per node");
                return None;
            }
        };
        match fhandle::open_by_handle(root, &h, nix::libc::O_PATH) {
            Ok(_) => Some(mount_id),
            Err(e) => {
                log::warn!(
                    "cannot open by file handle ({e}; needs CAP_DAC_READ_SEARCH); keeping a \
                     descriptor per node"
                );
                None
            }
        }
    }

    /// Assembles a filesystem (new or restored).
    ///
    /// # Errors
    /// The source's descriptor cannot be duplicated (EMFILE).
    pub fn from_parts(
        root_fd: OwnedFd,
        root: Node,
        mount_id: Option<i32>,
        config: Config,
    ) -> std::io::Result<PassFs> {
        let root_path = Arc::new(root_fd.try_clone()?);
        let mut nodes = HashMap::new();
        nodes.insert(root.clone(), root_path);
        Ok(PassFs {
            root_fd,
            root,
            mount_id,
            config,
            nodes: Mutex::new(nodes),
            files: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            pt: Passthrough {
                device: OnceLock::new(),
                on: AtomicBool::new(false),
                backings: Mutex::new(HashMap::new()),
                pending_close: Mutex::new(Vec::new()),
            },
            chown: nix::unistd::geteuid().is_root(),
            jr: Journaling::default(),
            atomic_o_trunc: false,
        })
    }

    /// Gives the filesystem its mount's `/dev/fuse` descriptor once serving.
    /// `agreed`: INIT agreed passthrough. A new mount probes whether this process
    /// may register backing files (registering a memfd and releasing it); a
    /// restored one (`restored`) keeps the mode it was saved with. Returns whether
    /// passthrough is on.
    pub fn set_device(&self, device: OwnedFd, agreed: bool, restored: bool) -> bool {
        let device = self.pt.device.get_or_init(|| device);
        for id in std::mem::take(&mut *lock(&self.pt.pending_close)) {
            if let Err(e) = backing::backing_close(device.as_fd(), id) {
                log::warn!("releasing backing id {id}: {e}");
            }
        }
        if restored {
            return self.pt.on.load(Ordering::Relaxed);
        }
        if !self.config.passthrough {
            return false;
        }
        if !agreed {
            log::warn!(
                "the kernel did not agree to FUSE_PASSTHROUGH (needs Linux 6.9+); serving without"
            );
            return false;
        }
        // A backing file must be a regular file: a memfd is one, on no stack.
        let probe = rustix::fs::memfd_create(c"passthrough-probe", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(std::io::Error::from)
            .and_then(|f| backing::backing_open(device.as_fd(), f.as_fd()));
        match probe {
            Ok(id) => {
                let _ = backing::backing_close(device.as_fd(), id);
                self.pt.on.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                log::warn!(
                    "cannot register passthrough backing files ({e}; needs CAP_SYS_ADMIN); \
                     serving without"
                );
                false
            }
        }
    }

    fn entry(&self, node: Node, st: &rustix::fs::Stat) -> Result<Entry<Node>> {
        Ok(Entry {
            node,
            attr: node::attr_of(st)?,
            entry_ttl: self.config.ttl,
            attr_ttl: self.config.ttl,
        })
    }

    /// The descriptor of `node`: from the cache, or opened again by file handle
    /// (checked to be the same `(dev, ino)`); `ESTALE` if neither works.
    pub fn node_fd(&self, node: &Node) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = lock(&self.nodes).get(node) {
            return Ok(fd.clone());
        }
        let h = node.file_handle().ok_or(Errno::ESTALE)?;
        let fd = fhandle::open_by_handle(self.root_fd.as_fd(), &h, nix::libc::O_PATH)
            .map_err(|_| Errno::ESTALE)?;
        let st = stat_fd(fd.as_fd())?;
        if (st.st_dev, st.st_ino, st.st_mode & nix::libc::S_IFMT) != (node.dev, node.ino, node.kind)
        {
            return Err(Errno::ESTALE);
        }
        let fd = Arc::new(fd);
        Ok(lock(&self.nodes).entry(node.clone()).or_insert(fd).clone())
    }

    /// Looks `name` up in directory `parent_fd`: opens it `O_PATH` (never
    /// following a symlink, never leaving the directory) and caches the node.
    fn lookup_at(&self, parent_fd: BorrowedFd<'_>, name: &CString) -> Result<Entry<Node>> {
        let fd = open_beneath(parent_fd, name, OFlags::PATH, 0).map_err(io_errno)?;
        self.adopt(fd)
    }

    /// Makes the node of an open descriptor known (cached) and returns its entry.
    fn adopt(&self, fd: OwnedFd) -> Result<Entry<Node>> {
        let st = stat_fd(fd.as_fd())?;
        let node = node::node_of(fd.as_fd(), &st, self.mount_id);
        lock(&self.nodes)
            .entry(node.clone())
            .or_insert_with(|| Arc::new(fd));
        self.entry(node, &st)
    }

    /// Gives a new inode to the caller (this process creates as root): the
    /// caller's uid, and its gid unless the directory is set-group-ID (then the
    /// backing filesystem already gave the directory's group).
    fn give(
        &self,
        ctx: &RequestContext<'_>,
        fd: BorrowedFd<'_>,
        parent_fd: BorrowedFd<'_>,
    ) -> Result<()> {
        if !self.chown {
            return Ok(());
        }
        let pst = stat_fd(parent_fd)?;
        let gid = ctx
            .gid
            .filter(|_| pst.st_mode & nix::libc::S_ISGID == 0)
            .map(rustix::fs::Gid::from_raw);
        rustix::fs::chownat(
            fd,
            c"",
            ctx.uid.map(rustix::fs::Uid::from_raw),
            gid,
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(rx)
    }

    /// Creates `name` in `parent` with `make`, gives it to the caller, looks it up.
    fn create_node(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Node,
        name: &OsStr,
        op: &str,
        make: impl FnOnce(BorrowedFd<'_>, &CString) -> rustix::io::Result<()>,
    ) -> Result<Entry<Node>> {
        let name = component(name)?;
        let pfd = self.node_fd(parent)?;
        let prior = self.prior_intent(ctx);
        let key = self.intent(ctx, op, parent, name.as_bytes(), None, None, Detail::None);
        let made = make(pfd.as_fd(), &name);
        if made.is_ok() {
            after_backing(ctx, op);
        }
        let made = match made {
            // Resent after a crash, and the dead process had made it.
            Err(rustix::io::Errno::EXIST)
                if prior
                    .as_ref()
                    .is_some_and(|p| self.born_after(pfd.as_fd(), &name, p)) =>
            {
                log::warn!("{op} resent after a crash: the dead process had made it");
                Ok(())
            }
            r => r.map_err(rx),
        };
        self.done(key);
        made?;
        let fd = open_beneath(pfd.as_fd(), &name, OFlags::PATH, 0).map_err(io_errno)?;
        if let Err(e) = self.give(ctx, fd.as_fd(), pfd.as_fd()) {
            log::warn!("chown of a new inode failed: {e}");
        }
        self.adopt(fd)
    }

    /// Opens `node` again with `flags` (a regular file or directory): by file
    /// handle, else through its `/proc/self/fd` magic link.
    fn reopen(&self, node: &Node, flags: OFlags) -> Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = if let Some(h) = node.file_handle() {
            fhandle::open_by_handle(self.root_fd.as_fd(), &h, flags.bits() as i32).map_err(io_errno)
        } else {
            Err(Errno::ESTALE)
        };
        let fd = match fd {
            Ok(fd) => fd,
            Err(_) => {
                let path_fd = self.node_fd(node)?;
                rustix::fs::open(
                    node::proc_path(path_fd.as_fd()).as_c_str(),
                    flags,
                    Mode::empty(),
                )
                .map_err(rx)?
            }
        };
        let st = stat_fd(fd.as_fd())?;
        if (st.st_dev, st.st_ino) != (node.dev, node.ino) {
            return Err(Errno::ESTALE);
        }
        Ok(fd)
    }

    /// The flags a backing file is opened with for an open with `flags`. Under
    /// the crash journal without `O_APPEND`: the kernel sends every WRITE with
    /// its offset (the end of the file for an append), and a WRITE run again after
    /// a crash (resent, its reply not journaled) must write the same bytes at the
    /// same place, not append them a second time.
    fn open_flags(&self, flags: i32) -> OFlags {
        let f = backing_flags(flags);
        if self.journaling() {
            f - OFlags::APPEND
        } else {
            f
        }
    }

    /// Whether this filesystem runs under the crash journal (a fd store).
    fn journaling(&self) -> bool {
        self.jr.flush.get().is_some()
    }

    /// Records `c` for the crash journal (if recording).
    pub fn note(&self, c: Change) {
        if let Some(v) = lock(&self.jr.recorded).as_mut() {
            v.push(c);
        }
    }

    fn insert_file(&self, fd: OwnedFd, node: &Node, extra: OFlags) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let keep = OFlags::ACCMODE
            | OFlags::APPEND
            | OFlags::SYNC
            | OFlags::DSYNC
            | OFlags::NOATIME
            | OFlags::DIRECTORY;
        let flags = rustix::fs::fcntl_getfl(&fd).unwrap_or(OFlags::empty()) & keep | extra;
        // Open while unlinked (O_TMPFILE, or reopened through /proc): only this
        // descriptor keeps the inode; the fd store keeps it across a crash.
        let unlinked =
            node.kind == nix::libc::S_IFREG && stat_fd(fd.as_fd()).is_ok_and(|st| st.st_nlink == 0);
        lock(&self.files).insert(
            id,
            Arc::new(OpenFile {
                fd,
                dir: Mutex::new(()),
            }),
        );
        let rec = OpenRec {
            node: node.clone(),
            flags: flags.bits(),
        };
        lock(&self.jr.opens).insert(id, rec.clone());
        self.note(Change::Open(id, rec));
        if unlinked {
            self.store_file(id);
        }
        id
    }

    /// Keeps open file `id`'s descriptor in the fd store (under a fd store only),
    /// so that a successor gets the very file even once it is unlinked.
    pub fn store_file(&self, id: u64) {
        let Some(store) = self.jr.store.get() else {
            return;
        };
        if lock(&self.jr.stored).contains(&id) {
            return;
        }
        let Some(f) = lock(&self.files).get(&id).cloned() else {
            return;
        };
        match store.store(&stored_name(id), f.fd.as_fd()) {
            Ok(_) => {
                lock(&self.jr.stored).insert(id);
            }
            Err(e) => log::warn!("keeping open file {id} in the fd store: {e}"),
        }
    }

    /// Forgets open file `id` (released).
    fn drop_file(&self, id: u64) {
        lock(&self.files).remove(&id);
        lock(&self.jr.opens).remove(&id);
        lock(&self.jr.dead).remove(&id);
        self.note(Change::Close(id));
        if lock(&self.jr.stored).remove(&id) {
            if let Some(store) = self.jr.store.get() {
                if let Err(e) = store.remove(&stored_name(id)) {
                    log::warn!("removing open file {id} from the fd store: {e}");
                }
            }
        }
    }

    /// Before `name` in `dir` may lose its last link (unlink, rmdir, rename over
    /// it): the node it names now, and under a fd store, the descriptors of its
    /// open files go to the store first, so that a crash right after the unlink
    /// cannot lose the only reference to a file an application still holds.
    fn victim(&self, dir: BorrowedFd<'_>, name: &CString) -> Option<Node> {
        let fd = open_beneath(dir, name, OFlags::PATH, 0).ok()?;
        let st = stat_fd(fd.as_fd()).ok()?;
        let node = node::node_of(fd.as_fd(), &st, self.mount_id);
        if self.jr.store.get().is_some() {
            let ids: Vec<u64> = lock(&self.jr.opens)
                .iter()
                .filter(|(_, r)| r.node == node)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.store_file(id);
            }
        }
        Some(node)
    }

    /// The intent of a request that the journal may hold from a dead process:
    /// only for a resent request (bit 63 of its unique).
    fn prior_intent(&self, ctx: &RequestContext<'_>) -> Option<Intent> {
        if ctx.unique & UNIQUE_RESEND == 0 {
            return None;
        }
        lock(&self.jr.intents)
            .get(&(ctx.unique & !UNIQUE_RESEND))
            .cloned()
    }

    /// Writes an intent to the journal before a non-idempotent operation runs
    /// (when journaling); returns the key for [`PassFs::done`]. A resent request
    /// whose intent the journal holds keeps that one: it describes the source
    /// before the first run, which a second crash must still be checked against.
    #[allow(clippy::too_many_arguments)]
    fn intent(
        &self,
        ctx: &RequestContext<'_>,
        op: &str,
        parent: &Node,
        name: &[u8],
        before: Option<Node>,
        other: Option<Node>,
        detail: Detail,
    ) -> Option<u64> {
        let flush = self.jr.flush.get()?;
        let key = ctx.unique & !UNIQUE_RESEND;
        if ctx.unique & UNIQUE_RESEND != 0 && lock(&self.jr.intents).contains_key(&key) {
            return Some(key);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(CLOCK_SLACK);
        let intent = Intent {
            op: op.to_owned(),
            parent: parent.clone(),
            name: name.to_vec(),
            before,
            other,
            at: (now.as_secs() as i64, now.subsec_nanos()),
            detail,
        };
        lock(&self.jr.intents).insert(key, intent.clone());
        self.note(Change::Intent(key, Some(Box::new(intent))));
        flush();
        Some(key)
    }

    /// The operation of intent `key` is done: its reply goes into the journal
    /// with this change, in the same record.
    fn done(&self, key: Option<u64>) {
        if let Some(k) = key {
            lock(&self.jr.intents).remove(&k);
            self.note(Change::Intent(k, None));
        }
    }

    /// The node `name` in `dir` names now, if any.
    fn node_at(&self, dir: BorrowedFd<'_>, name: &CString) -> Option<Node> {
        let fd = open_beneath(dir, name, OFlags::PATH, 0).ok()?;
        let st = stat_fd(fd.as_fd()).ok()?;
        Some(node::node_of(fd.as_fd(), &st, self.mount_id))
    }

    /// Whether `name` in `dir` was born (or, without a birth time, changed) at or
    /// after the intent: taken as the file the dead process created.
    fn born_after(&self, dir: BorrowedFd<'_>, name: &CString, intent: &Intent) -> bool {
        let Ok(fd) = open_beneath(dir, name, OFlags::PATH, 0) else {
            return false;
        };
        let Ok(sx) = rustix::fs::statx(
            &fd,
            c"",
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            rustix::fs::StatxFlags::BTIME | rustix::fs::StatxFlags::CTIME,
        ) else {
            return false;
        };
        let t = if sx.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0 {
            sx.stx_btime
        } else {
            sx.stx_ctime
        };
        (t.tv_sec, t.tv_nsec) >= intent.at
    }

    /// The regular file `name` in `dir` names now, and its state.
    fn file_at(&self, dir: BorrowedFd<'_>, name: &CString) -> Option<(Node, FileState)> {
        let fd = open_beneath(dir, name, OFlags::PATH, 0).ok()?;
        let st = stat_fd(fd.as_fd()).ok()?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            return None;
        }
        let node = node::node_of(fd.as_fd(), &st, self.mount_id);
        Some((node, FileState::of(fd.as_fd()).ok()?))
    }

    /// Whether `name` in `dir` still names the file of `O_TRUNC` intent `intent`
    /// and that file changed since the intent: taken as truncated by the dead
    /// process (and maybe written since).
    fn changed_since(&self, dir: BorrowedFd<'_>, name: &CString, intent: &Intent) -> bool {
        let Detail::Trunc { before: Some(b) } = intent.detail else {
            return false;
        };
        match self.file_at(dir, name) {
            Some((n, now)) => intent.before.as_ref() == Some(&n) && now != b,
            None => false,
        }
    }

    /// Sets the size of `node` (SETATTR), through its open file if writable.
    fn set_size(&self, node: &Node, fd: &FdRef, size: Option<u64>) -> Result<()> {
        let Some(size) = size else {
            return Ok(());
        };
        let writable = match fd {
            FdRef::File(f) => rustix::fs::fcntl_getfl(&f.fd)
                .map(|fl| fl.contains(OFlags::WRONLY) || fl.contains(OFlags::RDWR))
                .unwrap_or(false),
            FdRef::Path(_) => false,
        };
        if writable {
            return rustix::fs::ftruncate(fd.fd(), size).map_err(rx);
        }
        if node.kind != nix::libc::S_IFREG {
            return Err(if node.is_dir() {
                Errno::EISDIR
            } else {
                Errno::EINVAL
            });
        }
        let w = self.reopen(node, OFlags::WRONLY)?;
        rustix::fs::ftruncate(&w, size).map_err(rx)
    }

    /// How many backing ids this filesystem holds registered.
    pub fn backing_count(&self) -> usize {
        lock(&self.pt.backings).len()
    }

    /// How many files and directories are open.
    pub fn open_count(&self) -> usize {
        lock(&self.files).len()
    }

    /// The open file of `fh`; `EIO` for one a recovery could not reopen as the
    /// same file.
    pub fn file(&self, fh: &Handle) -> Result<Arc<OpenFile>> {
        if let Some(f) = lock(&self.files).get(&fh.id) {
            return Ok(f.clone());
        }
        if lock(&self.jr.dead).contains(&fh.id) {
            return Err(Errno::EIO);
        }
        Err(Errno::EBADF)
    }

    /// Turns an open regular file into the reply: with passthrough on, registers
    /// (or shares) the inode's backing id; otherwise, or when the backing file
    /// cannot serve this open, `FOPEN_DIRECT_IO` while passthrough is on.
    fn opened(&self, node: &Node, fd: OwnedFd, flags: i32) -> Opened<Handle> {
        let id = self.insert_file(fd, node, OFlags::empty());
        let mut handle = Handle { id, backing: 0 };
        // Before the device is known (the moment between the workers starting
        // and `set_device`) passthrough may still come on: no cached open then,
        // which would make a later passthrough open of the inode fail ETXTBSY.
        let undecided = self.config.passthrough && self.pt.device.get().is_none();
        if !self.pt.on.load(Ordering::Relaxed) && !undecided {
            return Opened::new(handle);
        }
        let writes = flags & nix::libc::O_ACCMODE != nix::libc::O_RDONLY;
        // A kernel passthrough write runs with this process's credentials
        // (CAP_FSETID), so the backing file system keeps set-user-ID; and under
        // HANDLE_KILLPRIV_V2 the kernel asks nothing. Opens for writing of such
        // files go through this process (direct I/O: WRITE with KILL_SUIDGID).
        let killable = writes
            && lock(&self.files)
                .get(&id)
                .and_then(|f| stat_fd(f.fd.as_fd()).ok())
                .is_some_and(|st| has_killable_bits(st.st_mode));
        let backing = if killable {
            None
        } else {
            self.backing_for(node, writes)
        };
        match backing {
            Some(b) => {
                handle.backing = b;
                Opened {
                    handle,
                    flags: FopenFlags::PASSTHROUGH,
                    backing_id: b,
                }
            }
            None => Opened {
                handle,
                flags: FopenFlags::DIRECT_IO,
                backing_id: 0,
            },
        }
    }

    /// The backing id for a passthrough open of `node`, counted; `None` when the
    /// device is not known yet, the backing file cannot be opened or registered,
    /// or it is read-only and this open writes.
    fn backing_for(&self, node: &Node, writes: bool) -> Option<i32> {
        let device = self.pt.device.get()?;
        let mut backings = lock(&self.pt.backings);
        // (One with no use is being released: never shared.)
        if let Some(b) = backings.get_mut(node).filter(|b| b.refs > 0) {
            if writes && !b.writable {
                return None;
            }
            b.refs += 1;
            let (id, b) = (b.id, *b);
            self.note(Change::Backing(node.clone(), Some(b)));
            return Some(id);
        }
        let (fd, writable) = match self.reopen(node, OFlags::RDWR) {
            Ok(fd) => (fd, true),
            Err(_) => (self.reopen(node, OFlags::RDONLY).ok()?, false),
        };
        if writes && !writable {
            return None;
        }
        match without_fsetid(|| backing::backing_open(device.as_fd(), fd.as_fd())) {
            Ok(id) => {
                let b = Backing {
                    id,
                    writable,
                    refs: 1,
                };
                backings.insert(node.clone(), b);
                self.jr.last_backing.fetch_max(id, Ordering::Relaxed);
                self.note(Change::Backing(node.clone(), Some(b)));
                Some(id)
            }
            Err(e) => {
                log::info!("no passthrough for inode {}: {e}", node.ino);
                None
            }
        }
    }

    /// Drops one use of `node`'s backing id `id`; releases it with the last.
    fn put_backing(&self, node: &Node, id: i32) {
        let mut backings = lock(&self.pt.backings);
        let Some(b) = backings.get_mut(node).filter(|b| b.id == id) else {
            log::error!("release of unknown backing id {id}");
            return;
        };
        b.refs = b.refs.saturating_sub(1);
        if b.refs > 0 {
            let b = *b;
            self.note(Change::Backing(node.clone(), Some(b)));
            return;
        }
        if let (Some(dev), Some(flush)) = (self.pt.device.get(), self.jr.flush.get()) {
            // Journaling: the id stays in the table with no use (closing) in a
            // record appended before the kernel releases it. Released first, a
            // crash before the record left a journal naming an id the kernel no
            // longer had, which a recovery then gave to an OPEN of the inode run
            // before the resent RELEASE: that open failed ENOENT. Recorded as
            // closing, a recovery releases it again (`settle_backings`: no handle
            // uses it), whether or not the kernel still had it. The gate of this
            // RELEASE keeps every other OPEN out meanwhile.
            let closing = *b;
            self.note(Change::Backing(node.clone(), Some(closing)));
            drop(backings);
            flush();
            fuse_session::fault::point("passthrough-before-backing-close");
            if let Err(e) = backing::backing_close(dev.as_fd(), id) {
                log::warn!("releasing backing id {id}: {e}");
            }
            fuse_session::fault::point("passthrough-after-backing-close");
            let mut backings = lock(&self.pt.backings);
            if backings.get(node).is_some_and(|b| b.id == id) {
                backings.remove(node);
                self.note(Change::Backing(node.clone(), None));
            }
            return;
        }
        backings.remove(node);
        self.note(Change::Backing(node.clone(), None));
        drop(backings);
        match self.pt.device.get() {
            Some(dev) => {
                if let Err(e) = backing::backing_close(dev.as_fd(), id) {
                    log::warn!("releasing backing id {id}: {e}");
                }
            }
            None => lock(&self.pt.pending_close).push(id),
        }
    }

    /// The descriptor to stat or change `node` through: the open file if given.
    fn fd_for(&self, node: &Node, fh: Option<&Handle>) -> Result<FdRef> {
        match fh {
            Some(h) => Ok(FdRef::File(self.file(h)?)),
            None => Ok(FdRef::Path(self.node_fd(node)?)),
        }
    }

    /// Lists directory stream `fh` from `offset` (a `d_off` cookie of the backing
    /// filesystem) into `add` until it returns false.
    fn readdir_any(
        &self,
        fh: &Handle,
        offset: u64,
        mut add: impl FnMut(&CString, u64, u64, FileType) -> bool,
    ) -> Result<()> {
        let file = self.file(fh)?;
        let _stream = lock(&file.dir);
        rustix::fs::seek(&file.fd, rustix::fs::SeekFrom::Start(offset)).map_err(rx)?;
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut dir = rustix::fs::RawDir::new(&file.fd, &mut buf);
        while let Some(e) = dir.next() {
            let e = e.map_err(rx)?;
            let name = CString::from(e.file_name());
            let kind = match dirent_kind(e.file_type()) {
                Some(k) => k,
                None => {
                    let st =
                        rustix::fs::statat(&file.fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW);
                    match st.ok().and_then(|st| FileType::from_mode(st.st_mode)) {
                        Some(k) => k,
                        None => continue,
                    }
                }
            };
            if !add(&name, e.ino(), e.next_entry_cookie(), kind) {
                break;
            }
        }
        Ok(())
    }
}

/// A descriptor borrowed from the node cache or from an open file.
enum FdRef {
    Path(Arc<OwnedFd>),
    File(Arc<OpenFile>),
}

impl FdRef {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            FdRef::Path(f) => f.as_fd(),
            FdRef::File(f) => f.fd.as_fd(),
        }
    }
}

fn dirent_kind(t: rustix::fs::FileType) -> Option<FileType> {
    use rustix::fs::FileType as T;
    Some(match t {
        T::RegularFile => FileType::RegularFile,
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::CharacterDevice => FileType::CharDevice,
        T::BlockDevice => FileType::BlockDevice,
        T::Fifo => FileType::NamedPipe,
        T::Socket => FileType::Socket,
        _ => return None,
    })
}

fn timestamp(t: Option<TimeOrNow>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeOrNow::Time(t)) => {
            let (s, ns) = fuse_session::split_time(t);
            rustix::fs::Timespec {
                tv_sec: s,
                tv_nsec: ns.into(),
            }
        }
    }
}

/// The kernel's rule for a write or truncate by a caller without `CAP_FSETID`:
/// clears set-user-ID, and set-group-ID on a group-executable file, of the inode
/// `fd` is on (any descriptor, `O_PATH` too). This process writes and truncates
/// as root, which keeps the bits, and under `HANDLE_KILLPRIV_V2` the kernel
/// leaves the rule to it: the `KILL_SUIDGID` flags of WRITE, SETATTR, OPEN and
/// CREATE say when; FALLOCATE and COPY_FILE_RANGE carry none, so for them it
/// applies to every caller but root.
fn kill_suidgid(fd: BorrowedFd<'_>) -> Result<()> {
    let mode = stat_fd(fd)?.st_mode & 0o7777;
    let mut kill = nix::libc::S_ISUID;
    if mode & nix::libc::S_IXGRP != 0 {
        kill |= nix::libc::S_ISGID;
    }
    if mode & kill == 0 {
        return Ok(());
    }
    rustix::fs::chmodat(
        rustix::fs::CWD,
        node::proc_path(fd).as_c_str(),
        Mode::from_bits_truncate(mode & !kill),
        AtFlags::empty(),
    )
    .map_err(rx)
}

/// Runs `f` with `CAP_FSETID` out of this thread's effective capabilities. The
/// kernel keeps the credentials of the thread that registers a backing file
/// (`BACKING_OPEN`) and runs every kernel passthrough write with them; without
/// `CAP_FSETID` the source filesystem clears set-user-ID and set-group-ID on
/// those writes as it would for an unprivileged writer — also for a file that
/// got the bits after it was opened (the opens of files that have them at open
/// go through this process instead, see `PassFs::opened`). The price: a
/// privileged writer's kernel passthrough write clears them as well.
fn without_fsetid<T>(f: impl FnOnce() -> T) -> T {
    use rustix::thread::{capabilities, set_capabilities, CapabilitySet, CapabilitySets};
    let saved = capabilities(None)
        .ok()
        .filter(|c| c.effective.contains(CapabilitySet::FSETID));
    let dropped = saved.filter(|c| {
        let less = CapabilitySets {
            effective: c.effective - CapabilitySet::FSETID,
            ..*c
        };
        set_capabilities(None, less).is_ok()
    });
    let out = f();
    if let Some(c) = dropped {
        if let Err(e) = set_capabilities(None, c) {
            log::error!("cannot take CAP_FSETID back after registering a backing file: {e}");
        }
    }
    out
}

/// Whether `mode` has bits a write by a caller without `CAP_FSETID` clears.
fn has_killable_bits(mode: u32) -> bool {
    mode & nix::libc::S_ISUID != 0
        || mode & (nix::libc::S_ISGID | nix::libc::S_IXGRP)
            == (nix::libc::S_ISGID | nix::libc::S_IXGRP)
}

/// `open(O_TRUNC)` (`ATOMIC_O_TRUNC`: this process truncates) by an
/// unprivileged caller clears the bits as a truncate does: when the kernel
/// says so (`FUSE_OPEN_KILL_SUIDGID`), or the caller is not root (kernels
/// without `HANDLE_KILLPRIV_V2`).
fn kill_suid_on_trunc(
    ctx: &RequestContext<'_>,
    fd: BorrowedFd<'_>,
    flags: i32,
    open_flags: FuseOpenFlags,
) -> Result<()> {
    if flags & nix::libc::O_TRUNC == 0 {
        return Ok(());
    }
    if open_flags.contains(FuseOpenFlags::KILL_SUIDGID) || ctx.uid != Some(0) {
        kill_suidgid(fd)?;
    }
    Ok(())
}

/// An `O_PATH` descriptor of the inode open file `fd` is on, for the node
/// cache: a duplicate of the open file would keep it open (for writing, too)
/// until the kernel forgets the node, long after its release.
fn path_of(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    rustix::fs::open(
        node::proc_path(fd).as_c_str(),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(rx)
}

/// The sum of extended attribute `name`'s value on the file at `path`; `None`
/// when it does not exist. A value that cannot be read sums to one no value has
/// (length `u32::MAX`): never taken for the absent attribute, never equal to a
/// value being set.
fn xattr_sum(path: &CString, name: &OsStr) -> Option<ValueSum> {
    let mut buf = vec![0u8; 64 * 1024];
    match rustix::fs::getxattr(path.as_c_str(), name, &mut buf[..]) {
        Ok(n) => Some(ValueSum::of(&buf[..n])),
        Err(rustix::io::Errno::NODATA) => None,
        Err(_) => Some(ValueSum {
            len: u32::MAX,
            hash: 0,
        }),
    }
}

fn xattr_reply(size: u32, data: Vec<u8>) -> Result<Xattr> {
    if size == 0 {
        return Ok(Xattr::Size(
            u32::try_from(data.len()).map_err(|_| Errno::E2BIG)?,
        ));
    }
    if data.len() > size as usize {
        return Err(Errno::ERANGE);
    }
    Ok(Xattr::Data(data))
}

impl Filesystem for PassFs {
    type Node = Node;
    type Handle = Handle;

    fn root(&self) -> Node {
        self.root.clone()
    }

    fn init(&self, wishes: &mut InitWishes) -> Result<()> {
        // READDIRPLUS (adaptive); no writeback cache (passthrough requires that,
        // and every write then reaches the backing file with the writer's ids
        // checked by the kernel). Locks stay local to the kernel: they survive a
        // handoff with no state here. Direct I/O opens (the fallback while
        // passthrough is on) may still be mmapped.
        // No ATOMIC_O_TRUNC unless asked (`--atomic-o-trunc`): with it the kernel
        // checks that the file may be written (ETXTBSY: a running program's
        // executable) only after OPEN has truncated it here, so
        // `open(O_RDONLY | O_TRUNC)` could empty a running program. Without it the
        // kernel checks first and truncates by SETATTR (with its own intent). With
        // it, OPEN carries O_TRUNC and truncates here, its intent with the open's.
        wishes.flags |= InitFlags::DO_READDIRPLUS
            | InitFlags::READDIRPLUS_AUTO
            | InitFlags::DIRECT_IO_ALLOW_MMAP;
        wishes.flags = wishes
            .flags
            .difference(InitFlags::WRITEBACK_CACHE | InitFlags::ATOMIC_O_TRUNC);
        if self.atomic_o_trunc {
            wishes.flags |= InitFlags::ATOMIC_O_TRUNC;
        }
        // HANDLE_KILLPRIV_V2: this process clears set-user-ID and set-group-ID
        // where the kernel's rule says so (the KILL_SUIDGID flags, and
        // `kill_suidgid`), and the kernel sets SB_NOSEC on the mount. Without it
        // every write(2) first asks for `security.capability` (a GETXATTR round
        // trip per write, passthrough writes included: docs/BENCHMARKS.md).
        wishes.flags |= InitFlags::HANDLE_KILLPRIV_V2;
        if self.config.passthrough {
            wishes.flags |= InitFlags::PASSTHROUGH;
            // The backing files are on ordinary (unstacked) filesystems.
            wishes.max_stack_depth = 1;
        }
        Ok(())
    }

    fn forget(&self, node: Node) {
        if node != self.root {
            lock(&self.nodes).remove(&node);
        }
    }

    fn lookup(
        &self,
        _ctx: &RequestContext<'_>,
        parent: &Node,
        name: &OsStr,
    ) -> Result<Entry<Node>> {
        let name = component(name)?;
        let pfd = self.node_fd(parent)?;
        self.lookup_at(pfd.as_fd(), &name)
    }

    fn getattr(
        &self,
        _ctx: &RequestContext<'_>,
        node: &Node,
        fh: Option<&Handle>,
    ) -> Result<AttrReply> {
        let fd = self.fd_for(node, fh)?;
        let st = stat_fd(fd.fd())?;
        Ok(AttrReply {
            attr: node::attr_of(&st)?,
            ttl: self.config.ttl,
        })
    }

    fn setattr(
        &self,
        ctx: &RequestContext<'_>,
        node: &Node,
        fh: Option<&Handle>,
        set: &SetAttr,
    ) -> Result<AttrReply> {
        let fd = self.fd_for(node, fh)?;
        let mut size = set.size;
        let mut resent_done = false;
        if size.is_some() && self.journaling() {
            let now = FileState::of(fd.fd())?;
            let done_before = self
                .prior_intent(ctx)
                .is_some_and(|p| matches!(p.detail, Detail::Trunc { before: Some(b) } if b != now));
            if done_before {
                log::warn!("setattr resent after a crash: the dead process had changed the size");
                size = None;
                resent_done = true;
                self.done(Some(ctx.unique & !UNIQUE_RESEND));
            }
        }
        if let Some(mode) = set.mode {
            if node.kind == nix::libc::S_IFLNK {
                return Err(Errno::EOPNOTSUPP);
            }
            let mode = Mode::from_bits_truncate(mode & 0o7777);
            match &fd {
                FdRef::File(f) => rustix::fs::fchmod(&f.fd, mode).map_err(rx)?,
                FdRef::Path(p) => rustix::fs::chmodat(
                    rustix::fs::CWD,
                    node::proc_path(p.as_fd()).as_c_str(),
                    mode,
                    AtFlags::empty(),
                )
                .map_err(rx)?,
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            rustix::fs::chownat(
                fd.fd(),
                c"",
                set.uid.map(rustix::fs::Uid::from_raw),
                set.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(rx)?;
        }
        // A size change run again after later writes would undo them: under the
        // journal, an intent with the file's state just before it; a resent
        // SETATTR whose file changed since (looked at before this run changes
        // anything) takes the size change as done.
        let mut size_key = None;
        if size.is_some() && self.journaling() {
            let state = FileState::of(fd.fd())?;
            let detail = Detail::Trunc {
                before: Some(state),
            };
            size_key = self.intent(ctx, "setattr", node, b"", None, None, detail);
        }
        let sized = self.set_size(node, &fd, size);
        self.done(size_key);
        sized?;
        // HANDLE_KILLPRIV_V2: a truncate by a caller without CAP_FSETID, or a
        // chown (the backing chown clears them too).
        if set.kill_suidgid && node.kind == nix::libc::S_IFREG {
            kill_suidgid(fd.fd())?;
        }
        // A resent size change taken as done passes the same point (where a
        // second crash in one request is tested).
        if (size.is_some() && size_key.is_some()) || resent_done {
            after_backing(ctx, "setattr");
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = rustix::fs::Timestamps {
                last_access: timestamp(set.atime),
                last_modification: timestamp(set.mtime),
            };
            rustix::fs::utimensat(
                fd.fd(),
                c"",
                &ts,
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(rx)?;
        }
        let st = stat_fd(fd.fd())?;
        Ok(AttrReply {
            attr: node::attr_of(&st)?,
            ttl: self.config.ttl,
        })
    }

    fn readlink(&self, _ctx: &RequestContext<'_>, node: &Node) -> Result<Vec<u8>> {
        let fd = self.node_fd(node)?;
        let target = rustix::fs::readlinkat(fd.as_fd(), c"", Vec::new()).map_err(rx)?;
        Ok(target.into_bytes())
    }

    fn mknod(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Node,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry<Node>> {
        let kind = rustix::fs::FileType::from_raw_mode(mode);
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        let dev = node::decode_rdev(rdev);
        self.create_node(ctx, parent, name, "mknod", |p, n| {
            rustix::fs::mknodat(p, n.as_c_str(), kind, perm, dev)
        })
    }

    fn mkdir(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Node,
        name: &OsStr,
        mode: u32,
    ) -> Result<Entry<Node>> {
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        self.create_node(ctx, parent, name, "mkdir", |p, n| {
            rustix::fs::mkdirat(p, n.as_c_str(), perm)
        })
    }

    fn unlink(&self, ctx: &RequestContext<'_>, parent: &Node, name: &OsStr) -> Result<()> {
        self.remove(ctx, parent, name, "unlink", AtFlags::empty())
    }

    fn rmdir(&self, ctx: &RequestContext<'_>, parent: &Node, name: &OsStr) -> Result<()> {
        self.remove(ctx, parent, name, "rmdir", AtFlags::REMOVEDIR)
    }

    fn symlink(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Node,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<Entry<Node>> {
        let target = CString::new(target.as_bytes()).map_err(|_| Errno::EINVAL)?;
        self.create_node(ctx, parent, name, "symlink", |p, n| {
            rustix::fs::symlinkat(target.as_c_str(), p, n.as_c_str())
        })
    }

    fn rename(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Node,
        name: &OsStr,
        newparent: &Node,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let (name, newname) = (component(name)?, component(newname)?);
        let (p, np) = (self.node_fd(parent)?, self.node_fd(newparent)?);
        let prior = self.prior_intent(ctx);
        let exchange = flags.0 & nix::libc::RENAME_EXCHANGE != 0;
        if let Some(prior) = &prior {
            // Resent after a crash: done already if the names hold what the
            // dead process's rename would have left.
            let (now_src, now_dst) = (
                self.node_at(p.as_fd(), &name),
                self.node_at(np.as_fd(), &newname),
            );
            let moved = now_dst.is_some() && now_dst == prior.before;
            let done = if exchange {
                moved && now_src == prior.other
            } else {
                moved && now_src != prior.before
            };
            if done {
                log::warn!("rename resent after a crash: the dead process had done it");
                self.done(Some(ctx.unique & !UNIQUE_RESEND));
                return Ok(());
            }
        }
        // (Only under the crash journal: the intent's inodes, and the open files
        // of a target that may lose its last link; with EXCHANGE none does.)
        let journaling = self.journaling();
        let before = journaling.then(|| self.node_at(p.as_fd(), &name)).flatten();
        let other = match (journaling, exchange) {
            (false, _) => None,
            (true, true) => self.node_at(np.as_fd(), &newname),
            (true, false) => self.victim(np.as_fd(), &newname),
        };
        let key = self.intent(
            ctx,
            "rename",
            parent,
            name.as_bytes(),
            before,
            other,
            Detail::None,
        );
        let r = rustix::fs::renameat_with(
            p.as_fd(),
            name.as_c_str(),
            np.as_fd(),
            newname.as_c_str(),
            rustix::fs::RenameFlags::from_bits_retain(flags.0),
        )
        .map_err(rx);
        if r.is_ok() {
            after_backing(ctx, "rename");
        }
        self.done(key);
        r
    }

    fn link(
        &self,
        ctx: &RequestContext<'_>,
        node: &Node,
        newparent: &Node,
        newname: &OsStr,
    ) -> Result<Entry<Node>> {
        let newname = component(newname)?;
        let fd = self.node_fd(node)?;
        let np = self.node_fd(newparent)?;
        let prior = self.prior_intent(ctx);
        let key = self.intent(
            ctx,
            "link",
            newparent,
            newname.as_bytes(),
            None,
            Some(node.clone()),
            Detail::None,
        );
        let r = rustix::fs::linkat(
            fd.as_fd(),
            c"",
            np.as_fd(),
            newname.as_c_str(),
            AtFlags::EMPTY_PATH,
        );
        if r.is_ok() {
            after_backing(ctx, "link");
        }
        let r = match r {
            // Resent after a crash: the dead process had made this very link.
            Err(rustix::io::Errno::EXIST)
                if prior.is_some() && self.node_at(np.as_fd(), &newname).as_ref() == Some(node) =>
            {
                log::warn!("link resent after a crash: the dead process had made it");
                Ok(())
            }
            r => r.map_err(rx),
        };
        self.done(key);
        r?;
        self.lookup_at(np.as_fd(), &newname)
    }

    fn open(
        &self,
        ctx: &RequestContext<'_>,
        node: &Node,
        flags: OpenFlags,
        open_flags: FuseOpenFlags,
    ) -> Result<Opened<Handle>> {
        let flags = flags.0;
        if node.kind != nix::libc::S_IFREG {
            return Err(if node.is_dir() {
                Errno::EISDIR
            } else {
                Errno::EINVAL
            });
        }
        let mut oflags = self.open_flags(flags);
        let mut key = None;
        if oflags.contains(OFlags::TRUNC) && self.journaling() {
            // A truncate run again after later writes would destroy them: the
            // intent holds the file's state before, and a resent OPEN whose
            // file changed since takes the truncate as done.
            let state = FileState::of(self.node_fd(node)?.as_fd())?;
            let done_before = self.prior_intent(ctx).is_some_and(
                |p| matches!(p.detail, Detail::Trunc { before: Some(b) } if b != state),
            );
            if done_before {
                log::warn!("open resent after a crash: the dead process had truncated the file");
                oflags -= OFlags::TRUNC;
            }
            let detail = Detail::Trunc {
                before: Some(state),
            };
            key = self.intent(ctx, "open", node, b"", None, None, detail);
        }
        let fd = self.reopen(node, oflags);
        self.done(key);
        let fd = fd?;
        kill_suid_on_trunc(ctx, fd.as_fd(), flags, open_flags)?;
        let opened = self.opened(node, fd, flags);
        if key.is_some() {
            after_backing(ctx, "open");
        }
        Ok(opened)
    }

    fn read<'r>(
        &'r self,
        _ctx: &RequestContext<'_>,
        _node: &Node,
        fh: &Handle,
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        let file = self.file(fh)?;
        let buf = out.buffer();
        let len = buf.len().min(size as usize);
        let mut done = 0;
        while done < len {
            let n = rustix::io::pread(&file.fd, &mut buf[done..len], offset + done as u64)
                .map_err(rx)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        out.filled(done);
        Ok(())
    }

    fn write(
        &self,
        _ctx: &RequestContext<'_>,
        _node: &Node,
        fh: &Handle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
    ) -> Result<u32> {
        let file = self.file(fh)?;
        let n = rustix::io::pwrite(&file.fd, data, offset).map_err(rx)?;
        if write_flags.contains(WriteFlags::KILL_SUIDGID) {
            kill_suidgid(file.fd.as_fd())?;
        }
        u32::try_from(n).map_err(|_| Errno::EIO)
    }

    fn release(
        &self,
        _ctx: &RequestContext<'_>,
        node: &Node,
        fh: Handle,
        _flags: i32,
        _lock_owner: u64,
        _flush: bool,
    ) -> Result<()> {
        // The open file is noted closed first, so that the record appended
        // before a backing id is released (`put_backing`) holds the whole release;
        // its descriptor is dropped after the backing id: once this process holds
        // no descriptor of the file, the kernel holds none either (what the tests
        // count).
        let file = lock(&self.files).get(&fh.id).cloned();
        self.drop_file(fh.id);
        if fh.backing != 0 {
            self.put_backing(node, fh.backing);
        }
        drop(file);
        Ok(())
    }

    fn fsync(
        &self,
        _ctx: &RequestContext<'_>,
        _node: &Node,
        fh: &Handle,
        datasync: bool,
    ) -> Result<()> {
        let file = self.file(fh)?;
        if datasync {
            rustix::fs::fdatasync(&file.fd).map_err(rx)
        } else {
            rustix::fs::fsync(&file.fd).map_err(rx)
        }
    }

    fn opendir(
        &self,
        _ctx: &RequestContext<'_>,
        node: &Node,
        _flags: i32,
    ) -> Result<Opened<Handle>> {
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let fd = self.reopen(node, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(Opened::new(Handle {
            id: self.insert_file(fd, node, OFlags::DIRECTORY),
            backing: 0,
        }))
    }

    fn readdir(
        &self,
        _ctx: &RequestContext<'_>,
        _node: &Node,
        fh: &Handle,
        offset: u64,
        out: &mut DirEntries<'_>,
    ) -> Result<()> {
        self.readdir_any(fh, offset, |name, ino, next, kind| {
            out.push(ino, next, kind, OsStr::from_bytes(name.as_bytes()))
                .is_ok()
        })
    }

    fn readdirplus(
        &self,
        _ctx: &RequestContext<'_>,
        node: &Node,
        fh: &Handle,
        offset: u64,
        out: &mut DirEntriesPlus<'_, Node>,
    ) -> Result<()> {
        let dir_fd = self.node_fd(node)?;
        let dir_st = stat_fd(dir_fd.as_fd())?;
        let dir_entry = self.entry(node.clone(), &dir_st)?;
        self.readdir_any(fh, offset, |name, _ino, next, _kind| {
            let b = name.as_bytes();
            if b == b"." || b == b".." {
                // Not counted by the session; the kernel ignores their attributes.
                return out.push(OsStr::from_bytes(b), next, &dir_entry).is_ok();
            }
            match self.lookup_at(dir_fd.as_fd(), name) {
                Ok(entry) => out.push(OsStr::from_bytes(b), next, &entry).is_ok(),
                // Removed meanwhile: leave it out.
                Err(_) => true,
            }
        })
    }

    fn releasedir(
        &self,
        _ctx: &RequestContext<'_>,
        _node: &Node,
        fh: Handle,
        _flags: i32,
    ) -> Result<()> {
        self.drop_file(fh.id);
        Ok(())
    }

    fn fsyncdir(
        &self,
        ctx: &RequestContext<'_>,
        node: &Node,
        fh: &Handle,
        datasync: bool,
    ) -> Result<()> {
        self.fsync(ctx, node, fh, datasync)
    }

    fn statfs(&self, _ctx: &RequestContext<'_>, node: &Node) -> Result<Statfs> {
        let fd = self.node_fd(node)?;
        let s = rustix::fs::fstatvfs(fd.as_fd()).map_err(rx)?;
        Ok(Statfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    fn setxattr(
        &self,
        ctx: &RequestContext<'_>,
        node: &Node,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _setxattr_flags: u32,
    ) -> Result<()> {
        let path = self.xattr_path(node)?;
        // XATTR_CREATE is the one non-idempotent form (a second run: EEXIST).
        let create = flags & nix::libc::XATTR_CREATE != 0 && self.journaling();
        let prior = if create { self.prior_intent(ctx) } else { None };
        let key = if create {
            let detail = Detail::XattrCreate {
                value: ValueSum::of(value),
                before: xattr_sum(&path.1, name),
            };
            self.intent(ctx, "setxattr", node, name.as_bytes(), None, None, detail)
        } else {
            None
        };
        let r = rustix::fs::setxattr(
            path.1.as_c_str(),
            name,
            value,
            rustix::fs::XattrFlags::from_bits_retain(flags as u32),
        );
        let r = match r {
            // Resent after a crash: absent at the intent, it now holds the
            // value this request sets.
            Err(rustix::io::Errno::EXIST)
                if prior.as_ref().is_some_and(|p| {
                    matches!(p.detail, Detail::XattrCreate { value, before: None }
                        if xattr_sum(&path.1, name) == Some(value))
                }) =>
            {
                log::warn!("setxattr resent after a crash: the dead process had set it");
                Ok(())
            }
            r => r.map_err(rx),
        };
        self.done(key);
        if r.is_ok() && key.is_some() {
            after_backing(ctx, "setxattr");
        }
        r
    }

    fn getxattr(
        &self,
        _ctx: &RequestContext<'_>,
        node: &Node,
        name: &OsStr,
        size: u32,
    ) -> Result<Xattr> {
        if node.kind == nix::libc::S_IFLNK {
            return Err(Errno::ENODATA);
        }
        let path = self.xattr_path(node)?;
        let mut buf = vec![0u8; if size == 0 { 64 * 1024 } else { size as usize }];
        let n = rustix::fs::getxattr(path.1.as_c_str(), name, &mut buf[..]).map_err(rx)?;
        buf.truncate(n);
        xattr_reply(size, buf)
    }

    fn listxattr(&self, _ctx: &RequestContext<'_>, node: &Node, size: u32) -> Result<Xattr> {
        if node.kind == nix::libc::S_IFLNK {
            return xattr_reply(size, Vec::new());
        }
        let path = self.xattr_path(node)?;
        let mut buf = vec![0u8; if size == 0 { 64 * 1024 } else { size as usize }];
        let n = rustix::fs::listxattr(path.1.as_c_str(), &mut buf[..]).map_err(rx)?;
        buf.truncate(n);
        xattr_reply(size, buf)
    }

    fn removexattr(&self, ctx: &RequestContext<'_>, node: &Node, name: &OsStr) -> Result<()> {
        let path = self.xattr_path(node)?;
        let journaling = self.journaling();
        let prior = if journaling {
            self.prior_intent(ctx)
        } else {
            None
        };
        let key = if journaling {
            let detail = Detail::XattrRemove {
                existed: xattr_sum(&path.1, name).is_some(),
            };
            self.intent(
                ctx,
                "removexattr",
                node,
                name.as_bytes(),
                None,
                None,
                detail,
            )
        } else {
            None
        };
        let r = match rustix::fs::removexattr(path.1.as_c_str(), name) {
            // Resent after a crash: it existed at the intent and is gone.
            Err(rustix::io::Errno::NODATA)
                if prior
                    .as_ref()
                    .is_some_and(|p| p.detail == Detail::XattrRemove { existed: true }) =>
            {
                log::warn!("removexattr resent after a crash: the dead process had removed it");
                Ok(())
            }
            r => r.map_err(rx),
        };
        self.done(key);
        if r.is_ok() && key.is_some() {
            after_backing(ctx, "removexattr");
        }
        r
    }

    fn create(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Node,
        name: &OsStr,
        mode: u32,
        flags: OpenFlags,
        open_flags: FuseOpenFlags,
    ) -> Result<(Entry<Node>, Opened<Handle>)> {
        let flags = flags.0;
        let cname = component(name)?;
        let pfd = self.node_fd(parent)?;
        let oflags = self.open_flags(flags);
        let excl = flags & nix::libc::O_EXCL != 0;
        // O_TRUNC matters only for a file that exists already (never with O_EXCL).
        let trunc = !excl && oflags.contains(OFlags::TRUNC);
        let prior = self.prior_intent(ctx);
        let key = if self.journaling() {
            let (before, detail) = if trunc {
                match self.file_at(pfd.as_fd(), &cname) {
                    Some((n, st)) => (Some(n), Detail::Trunc { before: Some(st) }),
                    None => (None, Detail::Trunc { before: None }),
                }
            } else {
                (None, Detail::None)
            };
            self.intent(
                ctx,
                "create",
                parent,
                cname.as_bytes(),
                before,
                None,
                detail,
            )
        } else {
            None
        };
        let made = match open_beneath(
            pfd.as_fd(),
            &cname,
            oflags | OFlags::CREATE | OFlags::EXCL,
            mode & 0o7777,
        ) {
            Ok(fd) => Ok((fd, true)),
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => {
                // Resent after a crash: had the dead process made the file
                // (the name was free at the intent, and its inode is younger),
                // or truncated it (the same inode, changed since)?
                let dead_made = prior
                    .as_ref()
                    .is_some_and(|p| p.before.is_none() && self.born_after(pfd.as_fd(), &cname, p));
                let dead_truncated = !dead_made
                    && prior
                        .as_ref()
                        .is_some_and(|p| self.changed_since(pfd.as_fd(), &cname, p));
                if excl && !dead_made {
                    Err(Errno::EEXIST)
                } else {
                    if dead_made {
                        log::warn!("create resent after a crash: the dead process had made it");
                    } else if dead_truncated {
                        log::warn!(
                            "create resent after a crash: the dead process had truncated it"
                        );
                    }
                    // Open what is there: truncated unless the dead process did.
                    let f = if dead_made || dead_truncated {
                        oflags - OFlags::TRUNC
                    } else {
                        oflags
                    };
                    open_beneath(pfd.as_fd(), &cname, f, 0)
                        .map(|fd| (fd, dead_made))
                        .map_err(io_errno)
                }
            }
            Err(e) => Err(io_errno(e)),
        };
        self.done(key);
        let (fd, created) = made?;
        if created {
            if let Err(e) = self.give(ctx, fd.as_fd(), pfd.as_fd()) {
                log::warn!("chown of a new file failed: {e}");
            }
        } else {
            kill_suid_on_trunc(ctx, fd.as_fd(), flags, open_flags)?;
        }
        let path_fd = path_of(fd.as_fd())?;
        let entry = self.adopt(path_fd)?;
        if entry.node.kind != nix::libc::S_IFREG {
            return Err(Errno::EINVAL);
        }
        let opened = self.opened(&entry.node, fd, flags);
        after_backing(ctx, "create");
        Ok((entry, opened))
    }

    fn fallocate(
        &self,
        ctx: &RequestContext<'_>,
        _node: &Node,
        fh: &Handle,
        offset: u64,
        length: u64,
        mode: u32,
    ) -> Result<()> {
        let file = self.file(fh)?;
        rustix::fs::fallocate(
            &file.fd,
            rustix::fs::FallocateFlags::from_bits_retain(mode),
            offset,
            length,
        )
        .map_err(rx)?;
        if ctx.uid != Some(0) {
            kill_suidgid(file.fd.as_fd())?;
        }
        Ok(())
    }

    fn lseek(
        &self,
        _ctx: &RequestContext<'_>,
        _node: &Node,
        fh: &Handle,
        offset: u64,
        whence: u32,
    ) -> Result<u64> {
        let file = self.file(fh)?;
        let pos = match whence as i32 {
            nix::libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset),
            nix::libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset),
            _ => return Err(Errno::EINVAL),
        };
        // The kernel keeps the file position; this descriptor's is not used.
        rustix::fs::seek(&file.fd, pos).map_err(rx)
    }

    fn copy_file_range(
        &self,
        ctx: &RequestContext<'_>,
        _node_in: &Node,
        fh_in: &Handle,
        offset_in: u64,
        _node_out: &Node,
        fh_out: &Handle,
        offset_out: u64,
        len: u64,
        flags: u64,
    ) -> Result<u64> {
        if flags != 0 {
            return Err(Errno::EINVAL);
        }
        let (i, o) = (self.file(fh_in)?, self.file(fh_out)?);
        let (mut oi, mut oo) = (offset_in, offset_out);
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 30);
        let n = rustix::fs::copy_file_range(&i.fd, Some(&mut oi), &o.fd, Some(&mut oo), len)
            .map_err(rx)?;
        if ctx.uid != Some(0) {
            kill_suidgid(o.fd.as_fd())?;
        }
        Ok(n as u64)
    }

    fn statx(
        &self,
        _ctx: &RequestContext<'_>,
        node: &Node,
        fh: Option<&Handle>,
        _flags: u32,
        mask: u32,
    ) -> Result<StatxReply> {
        let fd = self.fd_for(node, fh)?;
        let sx = rustix::fs::statx(
            fd.fd(),
            c"",
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            rustix::fs::StatxFlags::from_bits_retain(mask) | rustix::fs::StatxFlags::BASIC_STATS,
        )
        .map_err(rx)?;
        let st = stat_fd(fd.fd())?;
        let btime = (sx.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0)
            .then(|| fuse_session::join_time(sx.stx_btime.tv_sec, sx.stx_btime.tv_nsec));
        Ok(StatxReply {
            attr: node::attr_of(&st)?,
            btime,
            attributes: StatxAttributes(sx.stx_attributes.bits()),
            attributes_mask: StatxAttributes(sx.stx_attributes_mask.bits()),
            ttl: self.config.ttl,
        })
    }

    fn tmpfile(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Node,
        mode: u32,
        flags: OpenFlags,
        _open_flags: FuseOpenFlags,
    ) -> Result<(Entry<Node>, Opened<Handle>)> {
        let flags = flags.0;
        let pfd = self.node_fd(parent)?;
        let mut oflags = self.open_flags(flags) | OFlags::TMPFILE | OFlags::CLOEXEC;
        if flags & nix::libc::O_ACCMODE == nix::libc::O_RDONLY {
            // O_TMPFILE needs write access.
            oflags |= OFlags::RDWR;
        }
        let fd = rustix::fs::openat(
            pfd.as_fd(),
            c".",
            oflags,
            Mode::from_bits_truncate(mode & 0o7777),
        )
        .map_err(rx)?;
        if let Err(e) = self.give(ctx, fd.as_fd(), pfd.as_fd()) {
            log::warn!("chown of a new file failed: {e}");
        }
        let entry = self.adopt(path_of(fd.as_fd())?)?;
        let opened = self.opened(&entry.node, fd, flags);
        // No intent: a TMPFILE run again makes another unnamed file, and the one
        // the dead process made is freed (its descriptors died with it, or the
        // recovery removes the fd store's copy, which the journal does not know).
        after_backing(ctx, "tmpfile");
        Ok((entry, opened))
    }

    fn syncfs(&self, _ctx: &RequestContext<'_>, _node: &Node) -> Result<()> {
        rustix::fs::syncfs(&self.root_fd).map_err(rx)
    }
}

impl PassFs {
    /// UNLINK and RMDIR, with their intent and the open files of the victim kept.
    fn remove(
        &self,
        ctx: &RequestContext<'_>,
        parent: &Node,
        name: &OsStr,
        op: &str,
        flags: AtFlags,
    ) -> Result<()> {
        let name = component(name)?;
        let pfd = self.node_fd(parent)?;
        let prior = self.prior_intent(ctx);
        let before = if self.journaling() {
            self.victim(pfd.as_fd(), &name)
        } else {
            None
        };
        if let Some(p) = &prior {
            // Resent after a crash: the dead process removed the name (and
            // someone may have made it anew since: that one stays).
            if p.before.is_some() && before != p.before {
                log::warn!("{op} resent after a crash: the dead process had done it");
                self.done(Some(ctx.unique & !UNIQUE_RESEND));
                return Ok(());
            }
        }
        let key = self.intent(ctx, op, parent, name.as_bytes(), before, None, Detail::None);
        let r = rustix::fs::unlinkat(pfd.as_fd(), name.as_c_str(), flags).map_err(rx);
        if r.is_ok() {
            after_backing(ctx, op);
        }
        self.done(key);
        r
    }

    /// The path for xattr calls on `node` (its `/proc/self/fd` magic link) and the
    /// descriptor it names, kept alive meanwhile. Symlinks: `EPERM` (there is no
    /// race-free way to reach a symlink's own xattrs from its descriptor; Linux
    /// refuses `user.` xattrs on them anyway); reading shows none.
    fn xattr_path(&self, node: &Node) -> Result<(Arc<OwnedFd>, CString)> {
        if node.kind == nix::libc::S_IFLNK {
            return Err(Errno::EPERM);
        }
        let fd = self.node_fd(node)?;
        let path = node::proc_path(fd.as_fd());
        Ok((fd, path))
    }
}
