//! Encode and decode time and size of snapshots of 10k, 100k and 1M nodeids with
//! an open handle on every tenth (u64 nodes, small handle structs).
//!
//! `cargo bench -p fuse-snapshot --bench format` (add `-- 10000` to pick sizes).
//! Prints the median of several runs; results are recorded in docs/BENCHMARKS.md.
//! Timings are never asserted: this is a measurement, not a test.
use std::hint::black_box;
use std::time::{Duration, Instant};

use fuse_snapshot::format::crc32;
use fuse_snapshot::{decode_raw, decode_state, encode_state};

#[path = "../tests/util/mod.rs"]
mod util;

fn median(mut f: impl FnMut() -> Duration, runs: usize) -> Duration {
    let mut t: Vec<Duration> = (0..runs).map(|_| f()).collect();
    t.sort();
    t[runs / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let v = black_box(f());
    (start.elapsed(), v)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000, 1_000_000]
    } else {
        sizes
    };
    println!(
        "| nodeids | handles | bytes | bytes/nodeid | encode ms | decode ms | encode+decode ms | (decode: crc ms, raw ms, validate ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let state = util::session(n);
        let fs = util::fs_state();
        let runs = if n >= 1_000_000 { 5 } else { 11 };
        let bytes = encode_state(&state, &fs).unwrap();
        let enc = median(|| time(|| encode_state(&state, &fs).unwrap()).0, runs);
        let dec = median(
            || time(|| decode_state::<u64, util::Handle, util::FsState>(&bytes).unwrap()).0,
            runs,
        );
        let crc = median(|| time(|| crc32(&bytes[24..])).0, runs);
        let raw = median(|| time(|| decode_raw(&bytes).unwrap()).0, runs);
        let validate = median(|| time(|| state.validate().unwrap()).0, runs);
        println!(
            "| {n} | {} | {} | {:.1} | {} | {} | {} | ({}, {}, {}) |",
            state.handles.len(),
            bytes.len(),
            bytes.len() as f64 / n as f64,
            ms(enc),
            ms(dec),
            ms(enc + dec),
            ms(crc),
            ms(raw),
            ms(validate),
        );
    }
}
