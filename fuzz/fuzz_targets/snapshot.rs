//! Fuzz target: see `fuse_snapshot::fuzzing::snapshot` for the input format and the
//! invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuse_snapshot::fuzzing::snapshot(data));
