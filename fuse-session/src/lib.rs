//! # fuse-session
//!
//! The FUSE session: a sans-IO core that turns request bytes into reply bytes
//! and owns every nodeid and file handle, plus the `/dev/fuse` IO layer and
//! mounting. Under construction: see the project README for status.
#![deny(missing_docs)]

pub use fuse_wire as wire;
