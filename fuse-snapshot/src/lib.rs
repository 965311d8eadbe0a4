//! # fuse-snapshot
//!
//! The FUSE session as a value: the snapshot format, live handoff to a new
//! process, and crash recovery. Under construction: see the project README.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use fuse_session as session;
