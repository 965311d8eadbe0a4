//! # fuse-live
//!
//! A pure-Rust, low-level FUSE library for Linux whose whole session is a value.
//!
//! This facade re-exports the three crates of the workspace:
//!
//! - [`wire`]: the FUSE kernel protocol (7.9 to 7.45) as zero-copy typed messages;
//! - [`session`]: the session that serves a mount;
//! - [`snapshot`]: the session as a value on disk or over a socket.
//!
//! The examples (`cargo run --example NAME`) and the end-to-end tests of the
//! workspace belong to this package.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use fuse_session as session;
pub use fuse_snapshot as snapshot;
pub use fuse_wire as wire;
