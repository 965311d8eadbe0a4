//! The end-to-end tests' harness: the `fuse-live-testkit` crate (shared with the
//! examples that run child processes).
#![allow(unused_imports)]

pub use fuse_live_testkit::*;
