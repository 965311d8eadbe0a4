//! Fuzz target: see `fuse_session::dev::slots::fuzzing::request_slots` for the input
//! format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuse_session::dev::slots::fuzzing::request_slots(data));
