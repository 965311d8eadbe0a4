//! The demo: mounts memfs in a temporary directory, runs a mixed workload on it
//! through the kernel from several threads, parks the workers a few times in the
//! middle (what a snapshot will do), prints what happened, and unmounts.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//! Needs root (mount(2)) or Debian's `fuse3` (fusermount3) and `/dev/fuse`.
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_live::session::dev::MountOptions;
use fuse_live::session::serve::Server;

#[path = "memfs/data.rs"]
#[allow(dead_code)]
mod data;
#[path = "memfs/fs.rs"]
#[allow(dead_code)]
mod fs;
#[path = "memfs/state.rs"]
#[allow(dead_code)]
mod state;

#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    failed: AtomicU64,
    bytes_verified: AtomicU64,
}

/// One worker's loop: create, write, read back and verify, rename, stat, readdir,
/// keeping one file open for the whole run.
fn work(dir: &Path, id: usize, until: Instant, t: &Tally) {
    let mut held = match std::fs::File::options()
        .create(true)
        .read(true)
        .write(true)
        .open(dir.join(format!("held-{id}")))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("worker {id}: {e}");
            t.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut round = 0u64;
    let check = |ok: bool| {
        t.ops.fetch_add(1, Ordering::Relaxed);
        if !ok {
            t.failed.fetch_add(1, Ordering::Relaxed);
        }
    };
    while Instant::now() < until {
        let payload: Vec<u8> = (0..4096 + (round as usize % 5000))
            .map(|i| (i as u64 * 31 + round + id as u64) as u8)
            .collect();
        let a = dir.join(format!("w{id}-{round}"));
        let b = dir.join(format!("w{id}-{round}.renamed"));
        check(std::fs::write(&a, &payload).is_ok());
        let back = std::fs::read(&a).unwrap_or_default();
        check(back == payload);
        if back == payload {
            t.bytes_verified
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
        check(std::fs::rename(&a, &b).is_ok());
        check(
            std::fs::metadata(&b)
                .map(|m| m.len() == payload.len() as u64)
                .unwrap_or(false),
        );
        check(
            std::fs::read_dir(dir)
                .map(|d| d.count() > 0)
                .unwrap_or(false),
        );
        // The held file: append a record and read it back through the same fd.
        let rec = round.to_le_bytes();
        let ok = held.seek(SeekFrom::Start(round * 8)).is_ok() && held.write_all(&rec).is_ok();
        let mut got = [0u8; 8];
        let ok = ok
            && held.seek(SeekFrom::Start(round * 8)).is_ok()
            && held.read_exact(&mut got).is_ok()
            && got == rec;
        check(ok);
        if round >= 3 {
            check(std::fs::remove_file(dir.join(format!("w{id}-{}.renamed", round - 3))).is_ok());
        }
        round += 1;
    }
}

fn main() {
    let dir: PathBuf = std::env::temp_dir().join(format!("fuse-live-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("demo: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let memfs = fs::MemFs::new(uid, gid, 1 << 30, fs::Config::default());
    let opts = MountOptions::new()
        .fsname("memfs")
        .subtype("memfs")
        .default_permissions(true);
    let running = match Server::mount(memfs, &dir, &opts).and_then(|s| s.spawn(2)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: {e}");
            let _ = std::fs::remove_dir(&dir);
            std::process::exit(1);
        }
    };
    let init = running.session().init_state().copied();
    println!("mounted memfs at {}", dir.display());
    if let Some(i) = init {
        println!(
            "  INIT: kernel 7.{} -> agreed 7.{}, max_write {} KiB, {} flags",
            i.offer.minor,
            i.result.minor,
            i.result.max_write / 1024,
            i.result.flags.count_ones()
        );
    }

    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(3);
    let workers: Vec<_> = (0..4)
        .map(|id| {
            let (dir, t) = (dir.clone(), Arc::clone(&tally));
            std::thread::spawn(move || work(&dir, id, until, &t))
        })
        .collect();
    // Park all daemon workers at a request boundary a few times while the load runs.
    let mut longest = Duration::ZERO;
    let mut pauses = 0;
    while Instant::now() + Duration::from_millis(300) < until {
        std::thread::sleep(Duration::from_millis(250));
        let guard = running.pause();
        let (nodes, handles) = (
            running.session().node_count(),
            running.session().handle_count(),
        );
        longest = longest.max(guard.parked_in);
        drop(guard);
        pauses += 1;
        if pauses == 1 {
            println!("  paused under load: {nodes} nodeids and {handles} open handles held by the session");
        }
    }
    for w in workers {
        let _ = w.join();
    }
    println!(
        "workload: {} operations from 4 threads, {} failed, {:.1} MiB written and verified",
        tally.ops.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.bytes_verified.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
    );
    println!("parked the daemon {pauses} times mid-workload; longest park took {longest:?}");
    let stats = running.session().stats();
    println!(
        "session: {} requests, {} error replies, {} forgets; {} nodeids, {} handles now",
        stats.requests.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
        stats.forgets.load(Ordering::Relaxed),
        running.session().node_count(),
        running.session().handle_count()
    );
    let failed = tally.failed.load(Ordering::Relaxed);
    if let Err(e) = running.unmount() {
        eprintln!("demo: unmount: {e}");
    }
    let _ = std::fs::remove_dir(&dir);
    println!("unmounted");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
