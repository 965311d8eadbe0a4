//! Deferred replies on a real kernel mount: a filesystem defers every READ of
//! `slow` to a background thread, which answers only when the test says so. While
//! that read waits, the one worker that took it goes on serving other requests
//! (opens, reads of `fast`, stats) — the worker is not held. A pause meanwhile gives
//! up and names the deferred request; once answered, the reader gets the right data
//! and a pause succeeds. Through `/dev/fuse` (one worker) and through io_uring (the
//! test threads pinned to CPU 0, so that every request goes to queue 0's thread).
//!
//! Needs root and `/dev/fuse` (and `CONFIG_FUSE_IO_URING` for the second test);
//! under `CI` a missing capability is a failure, elsewhere the tests print why and
//! skip.
mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuse_session::dev::fusectl::{self, Watchdog};
use fuse_session::dev::{uring, MountOptions};
use fuse_session::serve::{Running, ServeError, Server, UringOptions};
use fuse_session::wire::FopenFlags;
use fuse_session::*;

const WATCHDOG: Duration = Duration::from_secs(120);
const SLOW: u64 = 2;
const FAST: u64 = 3;
const SIZE: u64 = 4096;

fn byte(ino: u64, o: u64) -> u8 {
    ((o + ino * 13) % 251) as u8
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// `slow` and `fast`, 4 KiB each, opened with direct I/O (every read reaches the
/// filesystem). READs of `slow` are deferred: the token goes to `tokens`.
struct SlowFs {
    tokens: Mutex<mpsc::Sender<DeferredReply<Vec<u8>>>>,
}

fn attr(ino: u64) -> Option<FileAttr> {
    Some(match ino {
        1 => FileAttr::new(1, FileType::Directory, 0o555),
        SLOW | FAST => FileAttr {
            size: SIZE,
            blocks: SIZE / 512,
            ..FileAttr::new(ino, FileType::RegularFile, 0o444)
        },
        _ => return None,
    })
}

impl Filesystem for SlowFs {
    type Node = u64;
    type Handle = u64;

    fn root(&self) -> u64 {
        1
    }

    fn lookup(&self, _: &RequestContext<'_>, _: &u64, name: &OsStr) -> Result<Entry<u64>> {
        let ino = match name.to_str() {
            Some("slow") => SLOW,
            Some("fast") => FAST,
            _ => return Err(Errno::ENOENT),
        };
        Ok(Entry {
            node: ino,
            attr: attr(ino).ok_or(Errno::ENOENT)?,
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        })
    }

    fn getattr(&self, _: &RequestContext<'_>, node: &u64, _: Option<&u64>) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: attr(*node).ok_or(Errno::ENOENT)?,
            ttl: Duration::ZERO,
        })
    }

    fn open(
        &self,
        _: &RequestContext<'_>,
        node: &u64,
        _: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<u64>> {
        Ok(Opened {
            flags: FopenFlags::DIRECT_IO,
            ..Opened::new(*node)
        })
    }

    fn read<'r>(
        &'r self,
        ctx: &RequestContext<'_>,
        node: &u64,
        _: &u64,
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        let end = (offset + u64::from(size)).min(SIZE);
        if *node == SLOW {
            let token = ctx.defer::<Vec<u8>>().ok_or(Errno::EIO)?;
            self.tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(token)
                .map_err(|_| Errno::EIO)?;
            return Ok(());
        }
        let data: Vec<u8> = (offset.min(end)..end).map(|o| byte(*node, o)).collect();
        out.copy_from(&data);
        Ok(())
    }
}

struct Mounted {
    running: Option<Running<SlowFs>>,
    mnt: PathBuf,
    dog: Option<Watchdog>,
}

impl Mounted {
    fn start(
        tag: &str,
        serve: impl FnOnce(Server<SlowFs>) -> std::result::Result<Running<SlowFs>, ServeError>,
    ) -> (Mounted, mpsc::Receiver<DeferredReply<Vec<u8>>>) {
        let dir = common::temp_dir(tag);
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("create mountpoint");
        let dog = Watchdog::arm(&mnt, None, WATCHDOG).expect("arm watchdog");
        let (tx, rx) = mpsc::channel();
        let mut m = Mounted {
            running: None,
            mnt,
            dog: Some(dog),
        };
        let fs = SlowFs {
            tokens: Mutex::new(tx),
        };
        let opts = MountOptions::new().fsname("deferred").read_only(true);
        let server = Server::mount(fs, &m.mnt, &opts).expect("mount");
        m.running = Some(serve(server).expect("serve"));
        (m, rx)
    }

    fn running(&self) -> &Running<SlowFs> {
        self.running.as_ref().expect("running")
    }

    fn finish(mut self) {
        let running = self.running.take().expect("running");
        running.unmount().expect("unmount");
        running.join();
        assert!(!running.is_serving(), "every thread ended");
        assert!(!common::is_fuse_mounted(&self.mnt), "nothing left mounted");
        assert!(!self.dog.take().expect("watchdog").disarm());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            if common::is_fuse_mounted(&self.mnt) {
                let _ = fusectl::tear_down(&self.mnt, None);
            }
            let _ = r.unmount();
        }
        if let Some(dog) = self.dog.take() {
            if dog.disarm() {
                eprintln!("watchdog fired on {}", self.mnt.display());
            }
        }
        if !common::is_fuse_mounted(&self.mnt) {
            if let Some(dir) = self.mnt.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Opens `path` and reads it with one `pread` at 0 (direct I/O: one READ).
fn read_all(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let mut v = vec![0u8; 2 * SIZE as usize];
    let n = f.read_at(&mut v, 0)?;
    v.truncate(n);
    Ok(v)
}

fn expected(ino: u64) -> Vec<u8> {
    (0..SIZE).map(|o| byte(ino, o)).collect()
}

/// The scenario, on a mount served by one worker for the test's requests.
/// `pin`: run the test's threads on CPU 0 (io_uring: queue 0).
fn deferred_read_does_not_hold_the_worker(
    m: Mounted,
    tokens: mpsc::Receiver<DeferredReply<Vec<u8>>>,
    pin: bool,
) {
    let slow = m.mnt.join("slow");
    let done = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let done = Arc::clone(&done);
        move || {
            if pin {
                uring::pin_to_cpu(0).expect("pin reader");
            }
            let r = read_all(&slow);
            done.store(true, Ordering::SeqCst);
            r
        }
    });
    // The first READ of `slow` is deferred: its token arrives here, and the
    // reader waits for its answer.
    let token = tokens.recv().expect("a deferred read");
    assert!(!token.is_interrupted());
    // Meanwhile the same worker serves everything else.
    for _ in 0..20 {
        assert_eq!(
            read_all(&m.mnt.join("fast")).expect("read fast"),
            expected(FAST)
        );
        assert_eq!(
            std::fs::metadata(m.mnt.join("slow")).expect("stat").len(),
            SIZE
        );
    }
    assert!(!done.load(Ordering::SeqCst), "the reader still waits");
    // A pause cannot complete with a request half-answered: it gives up and
    // names the deferred request, and the mount serves on.
    match m.running().pause_within(Duration::from_millis(300)) {
        Err(ServeError::Busy(reqs)) => {
            assert!(
                reqs.iter()
                    .any(|r| r.contains("deferred") && r.contains("READ")),
                "{reqs:?}"
            );
        }
        Ok(_) => panic!("paused with a deferred request unanswered"),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(
        read_all(&m.mnt.join("fast")).expect("read fast"),
        expected(FAST)
    );
    // The answer, from a background thread.
    let unique = token.unique();
    assert_ne!(unique, 0);
    let answer = std::thread::spawn(move || {
        let data = expected(SLOW);
        token.reply(data);
    });
    answer.join().expect("answer thread");
    let got = reader.join().expect("reader thread").expect("read slow");
    assert_eq!(got, expected(SLOW));
    // Nothing outstanding: a pause succeeds.
    let paused = m.running().pause();
    if pin {
        // The requests went through the rings (a pause publishes their counts).
        assert!(m.running().ring_requests() > 20, "served by io_uring");
    }
    drop(paused);
    m.finish();
}

#[test]
fn a_deferred_read_through_dev_fuse_leaves_the_one_worker_serving() {
    let _s = serial();
    let test = "a_deferred_read_through_dev_fuse_leaves_the_one_worker_serving";
    if !common::can_mount(test) {
        return;
    }
    let (m, tokens) = Mounted::start("deferred-dev", |s| s.spawn(1));
    deferred_read_does_not_hold_the_worker(m, tokens, false);
}

#[test]
fn a_deferred_read_through_io_uring_leaves_its_queue_serving() {
    let _s = serial();
    let test = "a_deferred_read_through_io_uring_leaves_its_queue_serving";
    if !common::can_mount(test) {
        return;
    }
    let why = match uring::uring_enabled() {
        None => Some("this kernel has no fuse-over-io_uring"),
        Some(true) => None,
        Some(false) => match std::fs::write("/sys/module/fuse/parameters/enable_uring", "Y") {
            Ok(()) if uring::uring_enabled() == Some(true) => None,
            _ => Some("cannot switch the fuse module parameter enable_uring on"),
        },
    };
    if let Some(why) = why {
        assert!(std::env::var_os("CI").is_none(), "{test}: {why}");
        eprintln!("skipping {test}: {why}");
        return;
    }
    // Every request of this thread and the reader goes to queue 0, whose thread
    // keeps the deferred READ's entry and serves on with its other entry.
    uring::pin_to_cpu(0).expect("pin the test thread");
    let mut options = UringOptions::default();
    options.required = true;
    let (m, tokens) = Mounted::start("deferred-uring", |s| s.spawn_uring(&options));
    assert!(matches!(
        m.running().backend(),
        fuse_session::serve::Backend::Uring { .. }
    ));
    deferred_read_does_not_hold_the_worker(m, tokens, true);
}
