//! memfs: a complete in-memory POSIX filesystem served with fuse-live, as a library
//! (the filesystem, its state and its part in snapshots and live handoff) and the
//! `memfs` binary (`src/main.rs`, its command line).
//!
//! The whole contents are one serde value ([`state::State`]); [`fs::MemFs`] is the
//! [`Filesystem`](fuse_session::Filesystem) adapter over it and
//! [`snapshot`] its [`SnapshotFs`](fuse_snapshot::SnapshotFs) implementation.
// Its docs are for the project's developers and name private helpers.
#![allow(rustdoc::private_intra_doc_links)]
pub mod data;
pub mod fs;
pub mod in_process;
pub mod snapshot;
pub mod state;
mod wire;
