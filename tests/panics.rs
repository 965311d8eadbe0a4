//! A filesystem method that panics, or never returns, must not hang the mount.
//!
//! - `faulty` (examples/faulty.rs) panics in LOOKUP, READ, WRITE, READDIR and RMDIR
//!   for some names. Under load from several threads, each panicking call fails
//!   with EIO while every other call succeeds, and SIGTERM still unmounts and
//!   ends the process, with both transports.
//! - An RMDIR that does not return (it holds the root directory's lock in the
//!   kernel, so a poke would block on it): a bounded pause gives up naming it, and
//!   unmounting still returns.
mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{can_mount, errno_of, is_fuse_mounted, temp_dir, Mounted};
use fuse_session::dev::fusectl::Watchdog;
use fuse_session::dev::MountOptions;
use fuse_session::serve::{ServeError, Server};
use fuse_session::*;

/// Iterations of the workload per thread.
const ROUNDS: usize = 60;
const THREADS: usize = 4;

/// Counts of what one workload thread saw that was not what it should be.
#[derive(Default)]
struct Tally {
    wrong: Mutex<Vec<String>>,
    eio: AtomicUsize,
    ok: AtomicUsize,
}

impl Tally {
    fn expect_ok<T>(&self, what: &str, r: std::io::Result<T>) {
        match r {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.wrong.lock().unwrap().push(format!("{what}: {e}")),
        }
    }

    fn expect_eio<T>(&self, what: &str, r: std::io::Result<T>) {
        match errno_of(r) {
            nix::libc::EIO => {
                self.eio.fetch_add(1, Ordering::Relaxed);
            }
            e => self
                .wrong
                .lock()
                .unwrap()
                .push(format!("{what}: errno {e}, not EIO")),
        }
    }
}

/// One round of the workload: good calls and calls that make the daemon panic.
fn round(mnt: &Path, t: usize, i: usize, tally: &Tally) {
    tally.expect_ok("stat file", std::fs::metadata(mnt.join("file")));
    tally.expect_eio(
        "stat panic name",
        std::fs::metadata(mnt.join(format!("panic-{t}-{i}"))),
    );
    tally.expect_ok(
        "read file",
        std::fs::read(mnt.join("file")).and_then(|b| {
            if b == b"all is well\n" {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("read {b:?}")))
            }
        }),
    );
    tally.expect_eio(
        "read boomfile",
        std::fs::File::open(mnt.join("boomfile")).and_then(|mut f| {
            let mut s = Vec::new();
            f.read_to_end(&mut s)
        }),
    );
    tally.expect_eio(
        "write boomfile",
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("boomfile"))
            .and_then(|mut f| f.write_all(b"x")),
    );
    // The same byte as the file's first (the kernel's page cache keeps what is
    // written, and other threads read the file meanwhile).
    tally.expect_ok(
        "write file",
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("file"))
            .and_then(|mut f| f.write_all(b"a")),
    );
    tally.expect_eio(
        "list boomdir",
        std::fs::read_dir(mnt.join("boomdir")).and_then(|mut d| match d.next() {
            Some(r) => r.map(|_| ()),
            None => Ok(()),
        }),
    );
    tally.expect_ok(
        "list root",
        std::fs::read_dir(mnt).and_then(|d| d.collect::<std::io::Result<Vec<_>>>()),
    );
    tally.expect_eio("rmdir boom", std::fs::remove_dir(mnt.join("boom")));
    tally.expect_ok("stat dir", std::fs::metadata(mnt.join("dir")));
}

fn panics_under_load(test: &str, args: &[&str]) {
    if !can_mount(test) {
        return;
    }
    let m = Mounted::start("faulty", args, &[]);
    let tally = Arc::new(Tally::default());
    let load: Vec<_> = (0..THREADS)
        .map(|t| {
            let (mnt, tally) = (m.mnt.clone(), Arc::clone(&tally));
            std::thread::spawn(move || {
                for i in 0..ROUNDS {
                    round(&mnt, t, i, &tally);
                }
            })
        })
        .collect();
    for t in load {
        t.join().unwrap();
    }
    let wrong = tally.wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "unexpected results: {wrong:?}");
    assert_eq!(tally.eio.load(Ordering::Relaxed), THREADS * ROUNDS * 5);
    assert_eq!(tally.ok.load(Ordering::Relaxed), THREADS * ROUNDS * 5);
    // Still serving after all that.
    assert_eq!(std::fs::read(m.path("file")).unwrap(), b"all is well\n");
    let log = m.log_text();
    for what in [
        "lookup of",
        "read of boomfile",
        "write to boomfile",
        "readdir of boomdir",
        "rmdir of boom",
    ] {
        assert!(
            log.contains(what),
            "the panic '{what}' is in the log:\n{log}"
        );
    }
    let mnt = m.mnt.clone();
    let status = m.stop();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(!is_fuse_mounted(&mnt));
}

#[test]
fn panics_in_methods_under_load_are_eio_and_sigterm_still_unmounts() {
    panics_under_load(
        "panics_in_methods_under_load_are_eio_and_sigterm_still_unmounts",
        &["--threads", "3"],
    );
}

#[test]
fn panics_under_load_through_io_uring_are_eio_and_sigterm_still_unmounts() {
    panics_under_load(
        "panics_under_load_through_io_uring_are_eio_and_sigterm_still_unmounts",
        &["--uring", "--threads", "2"],
    );
}

/// Root holds `file` and the directory `hang`, whose RMDIR does not return until
/// the test lets it (at most a minute).
#[derive(Default)]
struct Gate {
    entered: AtomicBool,
    release: Mutex<bool>,
    cond: Condvar,
}

struct Hanging(Arc<Gate>);

fn hattr(ino: u64) -> FileAttr {
    if ino == 3 {
        FileAttr::new(3, FileType::RegularFile, 0o644)
    } else {
        FileAttr {
            nlink: 2,
            ..FileAttr::new(ino, FileType::Directory, 0o755)
        }
    }
}

impl Filesystem for Hanging {
    type Node = u64;
    type Handle = ();

    fn root(&self) -> u64 {
        1
    }

    fn lookup(&self, _: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<Entry<u64>> {
        let node = match name.to_str() {
            Some("hang") if *parent == 1 => 2,
            Some("file") if *parent == 1 => 3,
            _ => return Err(Errno::ENOENT),
        };
        Ok(Entry {
            node,
            attr: hattr(node),
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        })
    }

    fn getattr(&self, _: &RequestContext<'_>, node: &u64, _: Option<&()>) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: hattr(*node),
            ttl: Duration::ZERO,
        })
    }

    fn rmdir(&self, _: &RequestContext<'_>, _: &u64, _: &OsStr) -> Result<()> {
        self.0.entered.store(true, Ordering::SeqCst);
        let g = self.0.release.lock().unwrap();
        let _ = self
            .0
            .cond
            .wait_timeout_while(g, Duration::from_secs(60), |r| !*r)
            .unwrap();
        Err(Errno::ENOTEMPTY)
    }
}

#[test]
fn a_request_that_does_not_return_does_not_hang_pause_within_or_unmount() {
    if !can_mount("a_request_that_does_not_return_does_not_hang_pause_within_or_unmount") {
        return;
    }
    let dir = temp_dir("hanging");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fs = Arc::new(Gate::default());
    let opts = MountOptions::new().fsname("hanging");
    let running = Server::mount(Hanging(Arc::clone(&fs)), &mnt, &opts)
        .unwrap()
        .spawn(2)
        .unwrap();
    let dog = Watchdog::arm(&mnt, None, Duration::from_secs(90)).unwrap();
    assert!(std::fs::metadata(mnt.join("file")).is_ok());
    // The caller holds the root directory's lock in the kernel until RMDIR answers.
    let caller = {
        let mnt = mnt.clone();
        std::thread::spawn(move || errno_of(std::fs::remove_dir(mnt.join("hang"))))
    };
    while !fs.entered.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    match running.pause_within(Duration::from_millis(300)) {
        Err(ServeError::Busy(reqs)) => assert!(
            reqs.iter().any(|r| r.contains("RMDIR")),
            "the stuck request is named: {reqs:?}"
        ),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("paused although a request is in progress"),
    }
    // Unmounting returns although a worker is stuck and pokes block on the lock.
    running.unmount().unwrap();
    assert!(!is_fuse_mounted(&mnt), "unmounted (lazily)");
    // Let the request finish: its caller gets the answer, the worker leaves.
    *fs.release.lock().unwrap() = true;
    fs.cond.notify_all();
    assert_eq!(caller.join().unwrap(), nix::libc::ENOTEMPTY);
    while running.is_serving() {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!dog.disarm(), "finished before the watchdog");
    let _ = std::fs::remove_dir_all(&dir);
}
