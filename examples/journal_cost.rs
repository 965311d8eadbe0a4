//! Benchmark: the crash-recovery journal's CPU cost per request, in one process.
//!
//! ```text
//! cargo run --release --example journal_cost -- [lookup|orc|write] [COUNT] [ROUNDS]
//! ```
//!
//! A memfs session driven with request bytes (no mount, no kernel: what
//! `tests/journal_in_place.rs` does), journal off and on (a memfd journal, as
//! memfs has under `fuse-live-keeper`), alternated ROUNDS times (default 5). Each
//! round runs COUNT operations on one thread and prints the thread's CPU time
//! per operation (`/proc/thread-self/schedstat`: steadier than wall-clock time on
//! a shared machine) and the ratio off / on of the medians:
//!
//! - `lookup` (default; COUNT 100000): LOOKUP of one directory (stat1's journaled
//!   request: its GETATTR records nothing);
//! - `orc` (COUNT 50000): LOOKUP, OPEN, READ 4 KiB, RELEASE of one file of
//!   4 KiB (orc1's requests);
//! - `write` (COUNT 512): WRITE of 1 MiB at the end of one file (a 512 MiB file
//!   for the default), the file removed between rounds.
//!
//! Profile one side with `perf record -g -- target/release/examples/journal_cost
//! lookup 1000000 1` (the journaled half dominates).
use std::sync::Arc;

use fuse_live_testkit::requests::{name, request};
use fuse_session::Session;
use fuse_snapshot::journal::JournalOptions;
use memfs::fs::MemFs;

const LOOKUP: u32 = 1;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const RELEASE: u32 = 18;
const CREATE: u32 = 35;

/// This thread's CPU time so far (`/proc/thread-self/schedstat`, nanoseconds).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn session(journal: bool) -> Arc<Session<MemFs>> {
    if journal {
        let (session, _, _) = memfs::in_process::journaled(
            4 << 30,
            "journal-cost",
            64 << 30,
            JournalOptions::default(),
        );
        session
    } else {
        Arc::new(memfs::in_process::session(4 << 30))
    }
}

thread_local! {
    /// The reply buffer, one for every call (a fresh one per call is an `mmap`).
    static OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sends one request, returns the reply's error and the 8 bytes after the out
/// header (as `call`, with one reply buffer).
fn call(s: &Session<MemFs>, bytes: &[u8]) -> (i32, u64) {
    OUT.with_borrow_mut(|out| {
        out.resize(s.reply_buffer_size(), 0);
        let fuse_session::Outcome::Reply(parts) = s.handle(bytes, out) else {
            panic!("no reply");
        };
        let error = parts.error_code();
        let first = match parts.body().get(..8) {
            Some(b) if error == 0 => u64::from_ne_bytes(b.try_into().unwrap()),
            _ => 0,
        };
        (error, first)
    })
}

fn ok(session: &Session<MemFs>, bytes: &[u8], what: &str) -> u64 {
    let (error, first) = call(session, bytes);
    assert_eq!(error, 0, "{what}");
    first
}

fn create(s: &Session<MemFs>, unique: u64, n: &str) -> (u64, u64) {
    let mut body = Vec::new();
    body.extend_from_slice(&0o2u32.to_ne_bytes()); // O_RDWR
    body.extend_from_slice(&0o644u32.to_ne_bytes()); // mode
    body.extend_from_slice(&0u32.to_ne_bytes()); // umask
    body.extend_from_slice(&0u32.to_ne_bytes()); // open_flags
    body.extend_from_slice(&name(n));
    let mut out = vec![0u8; s.reply_buffer_size()];
    let req = request(CREATE, unique, 1, &body);
    let fuse_session::Outcome::Reply(parts) = s.handle(&req, &mut out) else {
        panic!("no reply");
    };
    let r = parts.to_vec();
    assert_eq!(i32::from_ne_bytes(r[4..8].try_into().unwrap()), 0, "create");
    let nodeid = u64::from_ne_bytes(r[16..24].try_into().unwrap());
    // fuse_entry_out is 128 bytes; fuse_open_out's fh follows.
    let fh = u64::from_ne_bytes(r[16 + 128..16 + 136].try_into().unwrap());
    (nodeid, fh)
}

fn io_body(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&fh.to_ne_bytes());
    b.extend_from_slice(&offset.to_ne_bytes());
    b.extend_from_slice(&size.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // write_flags / read_flags
    b.extend_from_slice(&0u64.to_ne_bytes()); // lock_owner
    b.extend_from_slice(&0u32.to_ne_bytes()); // flags
    b.extend_from_slice(&0u32.to_ne_bytes()); // padding
    b
}

fn release_body(fh: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&fh.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // flags
    b.extend_from_slice(&0u32.to_ne_bytes()); // release_flags
    b.extend_from_slice(&0u64.to_ne_bytes()); // lock_owner
    b
}

/// One round: CPU nanoseconds per operation.
fn round(mode: &str, count: u64, journal: bool) -> f64 {
    let s = session(journal);
    let mut u = 10u64;
    let mut next = || {
        u += 1;
        u
    };
    match mode {
        "lookup" => {
            let mut body = Vec::new();
            body.extend_from_slice(&0o755u32.to_ne_bytes());
            body.extend_from_slice(&0u32.to_ne_bytes());
            body.extend_from_slice(&name("a"));
            ok(&s, &request(MKDIR, next(), 1, &body), "mkdir");
            let req = request(LOOKUP, 1, 1, &name("a"));
            let t = cpu_ns();
            for _ in 0..count {
                ok(&s, &req, "lookup");
            }
            (cpu_ns() - t) as f64 / count as f64
        }
        "orc" => {
            let (ino, fh) = create(&s, next(), "f");
            let data = vec![7u8; 4096];
            let mut w = io_body(fh, 0, 4096);
            w.extend_from_slice(&data);
            ok(&s, &request(WRITE, next(), ino, &w), "write");
            ok(
                &s,
                &request(RELEASE, next(), ino, &release_body(fh)),
                "release",
            );
            let lookup = request(LOOKUP, 1, 1, &name("f"));
            let open = request(OPEN, 2, ino, &[0u8; 8]);
            let t = cpu_ns();
            for _ in 0..count {
                ok(&s, &lookup, "lookup");
                let fh = ok(&s, &open, "open");
                ok(&s, &request(READ, 3, ino, &io_body(fh, 0, 4096)), "read");
                ok(&s, &request(RELEASE, 5, ino, &release_body(fh)), "release");
            }
            (cpu_ns() - t) as f64 / count as f64
        }
        "write" => {
            let (ino, fh) = create(&s, next(), "w");
            let mut w = io_body(fh, 0, 1 << 20);
            let at = w.len();
            w.extend_from_slice(&vec![0u8; 1 << 20]);
            let t = cpu_ns();
            for i in 0..count {
                w[8..16].copy_from_slice(&(i << 20).to_ne_bytes());
                let (error, _) = call(&s, &request(WRITE, next(), ino, &w));
                assert_eq!(error, 0, "write {i} ({at})");
            }
            let per = (cpu_ns() - t) as f64 / count as f64;
            ok(
                &s,
                &request(RELEASE, next(), ino, &release_body(fh)),
                "release",
            );
            ok(&s, &request(UNLINK, next(), 1, &name("w")), "unlink");
            per
        }
        _ => panic!("mode: lookup, orc or write"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("lookup", String::as_str).to_string();
    let default = match mode.as_str() {
        "orc" => 50_000,
        "write" => 512,
        _ => 100_000,
    };
    let count: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(default);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let a = round(&mode, count, false);
        let b = round(&mode, count, true);
        println!("{mode} round {r}: off {a:.0} ns/op, on {b:.0} ns/op");
        off.push(a);
        on.push(b);
    }
    let (a, b) = (median(&mut off), median(&mut on));
    println!(
        "{mode}: median off {a:.0} ns/op, on {b:.0} ns/op, off/on {:.3} (journal +{:.0} ns/op)",
        a / b,
        b - a
    );
}
