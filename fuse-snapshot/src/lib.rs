//! # fuse-snapshot
//!
//! The FUSE session as a value: the snapshot format, live handoff to a new
//! process, and crash recovery.
//!
//! # The snapshot format
//! A snapshot is a fixed header (magic `FUSELIVE`, format version, flags, body
//! length, CRC-32 of the body) followed by a postcard body with one enum variant
//! per format version: see [`format`](mod@format). Saved state is untrusted input: decoding
//! checks the envelope, the structure, each value and the session's consistency,
//! and reports a [`FormatError`] instead of panicking.
//!
//! - Typed, for a filesystem implementing [`SnapshotFs`]: [`snapshot`] /
//!   [`restore`] (a live [`Session`](fuse_session::Session)), or [`encode`] /
//!   [`decode`] (its state as values).
//! - Generic, for any value types: [`encode_state`] / [`decode_state`].
//! - Untyped, for tools: [`summarize`], [`decode_raw`].
//! - Files: [`save_file`] (atomic), [`load_file`] (bounded).
//! - Cold restore onto a fresh mount: [`restore_cold`] (what carries over and what
//!   cannot: [`ColdRestore`]).
//!
//! File descriptors a filesystem's state holds travel beside the snapshot as
//! [`FdSlot`]s: see [`fds`].
//!
//! # Live handoff
//! [`handoff`] hands a mounted, serving session to a new process on the same
//! `/dev/fuse` connection. With [`Precopy`] (see [`precopy`]) the state crosses
//! while the old process still serves and only what changed meanwhile crosses
//! under the pause, so the stall depends on the changes, not on the state's size.
//!
//! ```
//! use fuse_snapshot::{encode_state, decode_state, summarize};
//! use fuse_snapshot::session::{Counters, InitResult, InitState, KernelOffer, NodeState, SessionState};
//!
//! let state: SessionState<u64, ()> = SessionState {
//!     init: InitState {
//!         offer: KernelOffer { major: 7, minor: 45, max_readahead: 131072, flags: 0 },
//!         result: InitResult {
//!             minor: 45, flags: 0, max_write: 1 << 20, max_pages: 256,
//!             max_readahead: 131072, max_background: 16, congestion_threshold: 12,
//!             time_gran: 1, max_stack_depth: 0, request_timeout: 0,
//!         },
//!     },
//!     nodes: vec![NodeState { nodeid: 1, generation: 0, lookups: 0, node: 1 }],
//!     handles: vec![],
//!     polls: vec![],
//!     only_uid: None,
//!     counters: Counters { next_nodeid: 2, next_fh: 1, ..Counters::default() },
//! };
//! let bytes = encode_state(&state, &"my filesystem's state")?;
//! assert_eq!(summarize(&bytes)?.nodes, 1);
//! let (back, fs): (SessionState<u64, ()>, String) = decode_state(&bytes)?;
//! assert_eq!((back, fs.as_str()), (state, "my filesystem's state"));
//! # Ok::<(), fuse_snapshot::FormatError>(())
//! ```
//!
//! # Crash recovery
//! [`journal`]: a checkpoint (a snapshot in this format) and a write-ahead log of
//! checksummed records in a memory-mapped memfd or file that outlives the process;
//! [`journal::recover`] reads it back after a crash, cutting a torn tail.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use fuse_session as session;

pub mod cold;
pub mod fds;
mod file;
pub mod format;
mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod handoff;
pub mod journal;
pub mod precopy;

pub use cold::{restore_cold, ColdRestore};
pub use fds::{FdRestorer, FdSaver, FdSlot};
pub use file::{load_file, load_file_with_limit, save_file, DEFAULT_MAX_FILE_SIZE};
pub use format::{
    decode_raw, decode_state, encode_raw, encode_state, summarize, FormatError, RawHandle, RawNode,
    RawSnapshot, Summary, FORMAT_VERSION,
};
pub use fs::{decode, encode, restore, snapshot, SnapshotFs, StateOf};
pub use precopy::{Precopy, PrecopyOps};
