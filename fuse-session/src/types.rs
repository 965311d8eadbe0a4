//! The plain values a [`Filesystem`](crate::Filesystem) speaks in: attributes, entries,
//! open results, errors. They are independent of the wire layout; the session converts
//! them to the kernel's structs for the negotiated protocol.
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuse_wire::reply;

pub use fuse_wire::reply::{FileLock, Statfs};

/// An error number returned to the kernel (and to the application) as `-errno`.
///
/// A newtype over the raw value with the common constants; any positive value is
/// accepted, since filesystems may return errors this list does not name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: Errno = Errno(nix::libc::$name);
            )*
        }
    };
}

errnos!(
    EPERM,
    ENOENT,
    EIO,
    ENXIO,
    EBADF,
    EAGAIN,
    ENOMEM,
    EACCES,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    ENFILE,
    EMFILE,
    ENOTTY,
    EFBIG,
    ENOSPC,
    ESPIPE,
    EROFS,
    EMLINK,
    ERANGE,
    ENAMETOOLONG,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENODATA,
    EOVERFLOW,
    EOPNOTSUPP,
    ESTALE,
    EINTR,
    ENOTSUP,
    EDEADLK,
    ENOLCK,
    E2BIG,
);

impl Errno {
    /// The raw positive error number.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// The error number of an `io::Error`, or `EIO` if it has none.
    pub fn from_io(e: &std::io::Error) -> Errno {
        Errno(
            e.raw_os_error()
                .filter(|&v| v > 0 && v < 4096)
                .unwrap_or(nix::libc::EIO),
        )
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno::from_io(&e)
    }
}

impl From<nix::errno::Errno> for Errno {
    fn from(e: nix::errno::Errno) -> Self {
        Errno(e as i32)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            nix::errno::Errno::from_raw(self.0).desc(),
            self.0
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Errno {}

/// The result type of filesystem operations.
pub type Result<T> = std::result::Result<T, Errno>;

/// The type of a file, as in the `S_IFMT` bits of a mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FileType {
    /// Regular file.
    RegularFile,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    NamedPipe,
    /// Unix socket.
    Socket,
}

impl FileType {
    /// The `S_IFMT` bits of this type.
    pub const fn mode_bits(self) -> u32 {
        match self {
            FileType::RegularFile => 0o100000,
            FileType::Directory => 0o040000,
            FileType::Symlink => 0o120000,
            FileType::CharDevice => 0o020000,
            FileType::BlockDevice => 0o060000,
            FileType::NamedPipe => 0o010000,
            FileType::Socket => 0o140000,
        }
    }

    /// The type encoded in `mode`'s `S_IFMT` bits, if valid.
    pub const fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & 0o170000 {
            0o100000 => FileType::RegularFile,
            0o040000 => FileType::Directory,
            0o120000 => FileType::Symlink,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            0o010000 => FileType::NamedPipe,
            0o140000 => FileType::Socket,
            _ => return None,
        })
    }

    /// The `DT_*` value used in directory entries.
    pub const fn dirent_type(self) -> u32 {
        self.mode_bits() >> 12
    }
}

/// Attributes of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileAttr {
    /// Inode number shown to applications (`st_ino`).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Allocated blocks of 512 bytes.
    pub blocks: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
    /// File type.
    pub kind: FileType,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    /// Number of hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
    /// `FUSE_ATTR_*` flags (7.32).
    pub flags: u32,
}

impl FileAttr {
    /// Attributes of an empty inode `ino` of `kind` with permissions `perm`: size 0,
    /// owned by root, one link (two for a directory), every time at the epoch,
    /// 4 KiB I/O size. Change what differs with struct update syntax:
    /// `FileAttr { size: 5, ..FileAttr::new(2, FileType::RegularFile, 0o644) }`.
    pub const fn new(ino: u64, kind: FileType, perm: u16) -> FileAttr {
        let nlink = if matches!(kind, FileType::Directory) {
            2
        } else {
            1
        };
        FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The full mode: type bits and permission bits.
    pub const fn mode(&self) -> u32 {
        self.kind.mode_bits() | (self.perm as u32 & 0o7777)
    }

    /// The wire-level attributes.
    pub fn to_wire(&self) -> reply::Attr {
        let ts = |t: SystemTime| {
            let (sec, nsec) = split_time(t);
            reply::Timestamp::new(sec, nsec)
        };
        // Most attributes carry one time two or three times: a comparison is much
        // cheaper than a conversion (`duration_since`), which is on every LOOKUP and
        // GETATTR reply.
        let atime = ts(self.atime);
        let mtime = if self.mtime == self.atime {
            atime
        } else {
            ts(self.mtime)
        };
        let ctime = if self.ctime == self.mtime {
            mtime
        } else if self.ctime == self.atime {
            atime
        } else {
            ts(self.ctime)
        };
        reply::Attr {
            ino: self.ino,
            size: self.size,
            blocks: self.blocks,
            atime,
            mtime,
            ctime,
            mode: self.mode(),
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            blksize: self.blksize,
            flags: fuse_wire::AttrFlags(self.flags),
        }
    }
}

/// Splits a time into seconds since the epoch (negative before it) and nanoseconds.
pub fn split_time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// The time of `secs` seconds and `nsecs` nanoseconds since the epoch (negative before it).
pub fn join_time(secs: i64, nsecs: u32) -> SystemTime {
    let nsecs = nsecs.min(999_999_999);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

/// The reply to LOOKUP and to every operation that creates a name: the filesystem's
/// own node value, its attributes and how long the kernel may cache them.
///
/// The session assigns (or finds) the nodeid for `node` and counts the lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<N> {
    /// The filesystem's own value for this inode. Equal values are the same inode.
    pub node: N,
    /// The attributes.
    pub attr: FileAttr,
    /// How long the kernel may cache the name.
    pub entry_ttl: Duration,
    /// How long the kernel may cache the attributes.
    pub attr_ttl: Duration,
}

/// Attributes with their cache lifetime, the reply to GETATTR and SETATTR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrReply {
    /// The attributes.
    pub attr: FileAttr,
    /// How long the kernel may cache them.
    pub ttl: Duration,
}

/// The result of OPEN or OPENDIR: the filesystem's own handle value and `FOPEN_*` flags.
///
/// The session assigns the `fh` the kernel sees and keeps the handle in its table
/// (and in snapshots) until RELEASE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened<H> {
    /// The filesystem's handle value.
    pub handle: H,
    /// `FOPEN_*` flags (direct_io, keep_cache, ...).
    pub flags: fuse_wire::FopenFlags,
    /// With [`FopenFlags::PASSTHROUGH`](fuse_wire::FopenFlags::PASSTHROUGH) in
    /// `flags` (7.40): the backing id [`backing_open`](crate::dev::backing::backing_open)
    /// returned, whose file the kernel then reads and writes itself; 0 otherwise.
    /// The session only passes it on: the filesystem owns the id and releases it
    /// (e.g. at release), so keep it in the handle value if it must outlive a
    /// handoff.
    pub backing_id: i32,
}

impl<H> Opened<H> {
    /// An open result with no flags.
    pub fn new(handle: H) -> Self {
        Opened {
            handle,
            flags: fuse_wire::FopenFlags::EMPTY,
            backing_id: 0,
        }
    }
}

/// The arguments of SETATTR: each `Some` field is to be changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (and type bits, which must not change).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeOrNow>,
    /// New modification time.
    pub mtime: Option<TimeOrNow>,
    /// New change time (7.23).
    pub ctime: Option<SystemTime>,
    /// Lock owner, when given.
    pub lock_owner: Option<u64>,
    /// Kill suid/sgid (`FATTR_KILL_SUIDGID`, 7.33).
    pub kill_suidgid: bool,
}

/// A time to set: a given time or "now".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeOrNow {
    /// This time.
    Time(SystemTime),
    /// The current time.
    Now,
}

/// The answer to GETXATTR and LISTXATTR: the size when the caller asked for it
/// (size 0), the data otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Xattr {
    /// The size of the value or list.
    Size(u32),
    /// The value or the NUL-separated list.
    Data(Vec<u8>),
}

/// The answer to IOCTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoctlReply {
    /// The ioctl's return value and output bytes.
    Done {
        /// Return value.
        result: i32,
        /// Output data (at most `out_size` bytes).
        data: Vec<u8>,
    },
    /// Retry with these input and output areas (unrestricted ioctls only).
    Retry {
        /// Input areas in the caller.
        input: Vec<fuse_wire::reply::IoctlIovec>,
        /// Output areas in the caller.
        output: Vec<fuse_wire::reply::IoctlIovec>,
    },
}

/// Who is asking, and whether the kernel has interrupted the request.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// The request's `unique` (bit 63 set on resent requests).
    pub unique: u64,
    /// Effective uid of the caller; `None` when the kernel sent the invalid id
    /// (`FUSE_INVALID_UIDGID`, `(uid_t)-1`): on an idmapped mount (`ALLOW_IDMAP`)
    /// for requests that create nothing. Never treat `None` as a real user: it
    /// owns nothing and is in no group.
    pub uid: Option<u32>,
    /// Effective gid of the caller; `None` when the kernel sent the invalid id
    /// (see [`RequestContext::uid`]).
    pub gid: Option<u32>,
    /// Thread group id of the caller.
    pub pid: u32,
    /// The caller's umask, for operations that create (7.12).
    pub umask: Option<u32>,
    pub(crate) supp_groups: &'a [zerocopy::byteorder::native_endian::U32],
    pub(crate) interrupted: Option<&'a std::sync::atomic::AtomicBool>,
    pub(crate) defer: Option<&'a crate::proto::defer::DeferSeed<'a>>,
}

/// A uid or gid as the kernel sent it: `None` for the invalid id.
pub(crate) fn id_of(raw: u32) -> Option<u32> {
    (raw != RequestContext::INVALID_ID).then_some(raw)
}

impl RequestContext<'static> {
    /// A context for calling a [`Filesystem`](crate::Filesystem) directly, e.g. in
    /// its unit tests (the session builds the real ones from each request). `uid`
    /// and `gid` are as the kernel sends them:
    /// [`INVALID_ID`](RequestContext::INVALID_ID) becomes `None`.
    pub fn new(unique: u64, uid: u32, gid: u32, pid: u32) -> Self {
        RequestContext {
            unique,
            uid: id_of(uid),
            gid: id_of(gid),
            pid,
            umask: None,
            supp_groups: &[],
            interrupted: None,
            defer: None,
        }
    }
}

impl RequestContext<'_> {
    /// The id the kernel sends when it has no uid or gid for the request
    /// (`FUSE_INVALID_UIDGID`, `(uid_t)-1`); the context holds `None` instead.
    pub const INVALID_ID: u32 = u32::MAX;

    /// Supplementary groups the kernel sent with a create operation
    /// (`FUSE_CREATE_SUPP_GROUP`, 7.37): the one matching the parent's group.
    pub fn supp_groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.supp_groups.iter().map(|g| g.get())
    }

    /// True once the kernel sent INTERRUPT for this request: the caller got a signal.
    /// A long operation should stop and return [`Errno::EINTR`].
    pub fn interrupted(&self) -> bool {
        self.interrupted
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Defers this request's answer: returns the token to answer it with later, from
    /// any thread ([`DeferredReply`](crate::DeferredReply)), so that the worker is
    /// free to serve other requests meanwhile (a SETLKW that waits for a lock, a
    /// READ from a slow backend).
    ///
    /// Once this returned `Some`, the method's own return value is ignored: return
    /// anything (say `Err(Errno::EAGAIN)`) and answer through the token. The token
    /// answers `EIO` if dropped unanswered.
    ///
    /// `None` — answer synchronously as usual — when:
    /// - this request's operation is not answered with `T` (see
    ///   [`DeferredValue`](crate::DeferredValue): `()` for SETLK, SETLKW, FSYNC,
    ///   FSYNCDIR, FLUSH, FALLOCATE, ACCESS, SETXATTR, REMOVEXATTR; `u32` for
    ///   WRITE; `Vec<u8>` for READ). Operations whose reply makes the session count
    ///   a lookup or store a handle cannot be deferred yet;
    /// - the transport cannot send replies later (a context made with
    ///   [`RequestContext::new`], or [`Session::call`](crate::Session::call) with
    ///   a [`ReplySpace`](crate::ReplySpace) without
    ///   [`ReplySpace::deferring`](crate::ReplySpace::deferring));
    /// - a token was already taken for this request.
    pub fn defer<T: crate::DeferredValue>(&self) -> Option<crate::DeferredReply<T>> {
        self.defer.and_then(|seed| seed.take::<T>())
    }
}
