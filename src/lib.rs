//! # fuse-live
//!
//! A pure-Rust, low-level FUSE library for Linux whose whole session is a value.
//!
//! The flat names at the root are what a filesystem author uses: the
//! [`Filesystem`] trait and the values its methods take and return, the
//! [`Server`] that mounts and serves it with its [`MountOptions`], and, to make a
//! daemon restartable, [`SnapshotFs`], [`Precopy`] and the handoff entry points
//! ([`serve_with_upgrades`], [`take_over`]). `docs/PORTING.md` ports a fuser or
//! libfuse filesystem to them.
//!
//! ```no_run
//! use fuse_live::{block_termination_signals, MountOptions, Server};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # struct MyFs;
//! # impl fuse_live::Filesystem for MyFs {
//! #     type Node = u64;
//! #     type Handle = ();
//! #     fn root(&self) -> u64 { 1 }
//! # }
//! block_termination_signals(); // first: SIGINT/SIGTERM wait for run_until_signal
//! let opts = MountOptions::new().fsname("myfs").default_permissions(true);
//! let running = Server::mount(MyFs, "/mnt/myfs", &opts)?.spawn(4)?;
//! running.run_until_signal()?; // until unmounted, or SIGINT/SIGTERM (then it unmounts)
//! # Ok(())
//! # }
//! ```
//!
//! A daemon that survives `kill -9` uses flat names too: the fd store
//! ([`FdStore`]), the journal ([`JournalMap`], [`JournalHook`], [`recover_session`])
//! and the parts a server is assembled from ([`Session`], [`mount`],
//! [`Server::from_parts`]); docs/RECOVERY.md shows the whole flow.
//!
//! Each item has one path. What goes beyond a filesystem author's needs lives in
//! the workspace's crates, used directly as dependencies, each with its own docs:
//!
//! - `fuse-wire`: the FUSE kernel protocol (7.9 to 7.45) as zero-copy typed messages;
//! - `fuse-session`: the session that serves a mount, the sans-IO core and fake
//!   kernels for tests, devices, the fd store protocol;
//! - `fuse-snapshot`: the session as a value on disk or over a socket, the handoff
//!   protocol's state machine, the journal's format.
//!
//! The examples (`cargo run --example NAME`) and the end-to-end tests of the
//! workspace belong to this package.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The Filesystem trait and what its methods take and return.
pub use fuse_session::{
    AccessMask, AttrReply, DeferredReply, DirEntries, DirEntriesPlus, Entry, Errno, FileAttr,
    FileLock, FileType, Filesystem, Full, FuseOpenFlags, InitWishes, IoctlReply, OpenFlags, Opened,
    PollHandle, ReadBuf, RenameFlags, RequestContext, Result, SetAttr, StateValue, Statfs,
    StatxAttributes, StatxReply, TimeOrNow, WriteFlags, Xattr,
};
// The kernel's flag sets an author sets: FOPEN_* in `Opened::flags`, INIT flags in
// `InitWishes`.
pub use fuse_wire::{FopenFlags, InitFlags};
// Notifications to the kernel (invalidation, poll wakeups).
pub use fuse_session::{Notified, Notifier, NotifyError};
// Mounting and serving.
pub use fuse_session::dev::{Atime, MountError, MountOptions, OptionError};
pub use fuse_session::serve::{
    block_termination_signals, Backend, Running, ServeError, Server, TransportKind,
};
// Crash recovery: the fd store that holds the connection while no daemon runs, the
// journal, and the parts a recovering daemon assembles its server from.
pub use fuse_session::dev::fdstore::{FdStore, JOURNAL_FD};
pub use fuse_session::dev::{mount, JournalMap, Mount};
pub use fuse_session::Session;
pub use fuse_snapshot::journal::session::{
    recover_session, JournalHook, RecoveredSession, RecoveryError,
};
pub use fuse_snapshot::journal::JournalOptions;
// Restartable daemons: the state as a value, pre-copy, live handoff, snapshot files.
pub use fuse_snapshot::handoff::{
    block_upgrade_signals, serve_with_upgrades, take_over, Ended, HandoffError, HandoffOptions,
    HandoffOutcome, HandoffStats, UpgradeListener,
};
// The session's node and handle records, as `SnapshotFs::check_session` sees them.
pub use fuse_session::{HandleState, NodeState};
pub use fuse_snapshot::{
    load_file, save_file, FdRestorer, FdSaver, FdSlot, Precopy, PrecopyOps, SnapshotFs, StateOf,
};

/// docs/PORTING.md: its Rust blocks (not marked `ignore`) compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/PORTING.md")]
struct PortingDoc;
