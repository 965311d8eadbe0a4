//! # fuse-session
//!
//! The FUSE session: a sans-IO core ([`proto`]) that turns request bytes into reply
//! bytes and owns every nodeid and file handle, the [`Filesystem`] trait a filesystem
//! author implements, and the IO layer ([`dev`], [`serve`]) that mounts and serves
//! `/dev/fuse` with worker threads.
//!
//! The session, not the filesystem, owns nodeids, lookup counts, generations and file
//! handles; a filesystem returns its own node and handle values, which are serde types,
//! so that the whole session can be snapshotted and restored in a new process.
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod dev;
pub mod fake;
#[doc(hidden)]
pub mod fault;
pub mod flags;
pub mod fs;
pub mod notify;
pub mod proto;
pub mod serve;
#[doc(hidden)]
pub mod trace;
pub mod types;

pub use flags::{AccessMask, FuseOpenFlags, OpenFlags, RenameFlags, StatxAttributes, WriteFlags};
pub use fs::{Filesystem, PollHandle, StateValue, StatxReply};
pub use fuse_wire as wire;
pub use notify::{Notified, Notifier, NotifyError};
pub use proto::bufs::{DirEntries, DirEntriesPlus, Full, ReadBuf};
pub use proto::defer::{DeferredReply, DeferredValue, ReplySender};
pub use proto::handles::HandleKind;
pub use proto::init::{InitResult, InitWishes, KernelOffer};
pub use proto::precopy::{JournalDelta, NodeChanges, PrecopiedState, SessionChanges};
pub use proto::state::{Counters, HandleState, NodeState, SessionState, StateError};
pub use proto::{Accepted, InitState, Outcome, ReplyParts, ReplySpace, Session, StepHook};
pub use types::*;
