//! Serving a real kernel mount in-process: the hello tree through the kernel, the
//! nodeid table after drop_caches, parking workers, notifications, unmount; and the
//! `hello` example's command-line contract.
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::Watchdog;
use fuse_session::dev::MountOptions;
use fuse_session::serve::Server;
use fuse_session::*;
use fuse_session::{FuseOpenFlags, OpenFlags};

mod common;
use common::{can_mount, example_binary};

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fuse-live-{tag}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// A directory of `n` files f0..f{n-1}, 5 bytes each ("fileN" truncated).
struct Files(u64);

fn attr(ino: u64) -> FileAttr {
    if ino == 1 {
        FileAttr::new(1, FileType::Directory, 0o755)
    } else {
        FileAttr {
            size: 5,
            blocks: 1,
            ..FileAttr::new(ino, FileType::RegularFile, 0o644)
        }
    }
}

impl Filesystem for Files {
    type Node = u64;
    type Handle = u64;
    fn root(&self) -> u64 {
        1
    }
    fn lookup(&self, _: &RequestContext<'_>, _: &u64, name: &OsStr) -> Result<Entry<u64>> {
        let i: u64 = name
            .to_str()
            .and_then(|s| s.strip_prefix('f'))
            .and_then(|s| s.parse().ok())
            .ok_or(Errno::ENOENT)?;
        if i >= self.0 {
            return Err(Errno::ENOENT);
        }
        Ok(Entry {
            node: i + 2,
            attr: attr(i + 2),
            entry_ttl: Duration::from_secs(60),
            attr_ttl: Duration::from_secs(60),
        })
    }
    fn getattr(&self, _: &RequestContext<'_>, n: &u64, _: Option<&u64>) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: attr(*n),
            ttl: Duration::from_secs(60),
        })
    }
    fn open(
        &self,
        _: &RequestContext<'_>,
        n: &u64,
        _: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<u64>> {
        Ok(Opened::new(*n))
    }
    fn read<'r>(
        &'r self,
        _: &RequestContext<'_>,
        n: &u64,
        _: &u64,
        off: u64,
        _: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        let text = format!("f{:04}", n - 2);
        let b = text.as_bytes();
        out.copy_from(&b[(off as usize).min(b.len())..]);
        Ok(())
    }
    fn opendir(&self, _: &RequestContext<'_>, n: &u64, _: i32) -> Result<Opened<u64>> {
        Ok(Opened::new(*n))
    }
    fn readdir(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        _: &u64,
        off: u64,
        out: &mut DirEntries<'_>,
    ) -> Result<()> {
        for i in off..self.0 {
            if out
                .push(
                    i + 2,
                    i + 1,
                    FileType::RegularFile,
                    OsStr::new(&format!("f{i}")),
                )
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
}

#[test]
fn serves_lookups_reads_and_forgets_back_to_the_root() {
    if !can_mount("serves_lookups_reads_and_forgets_back_to_the_root") {
        return;
    }
    let mnt = tempdir("serve");
    let opts = MountOptions::new()
        .fsname("files")
        .subtype("files")
        .read_only(true);
    let running = Server::mount(Files(200), &mnt, &opts)
        .unwrap()
        .spawn(2)
        .unwrap();
    let dog = Watchdog::arm(&mnt, None, Duration::from_secs(60)).unwrap();

    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 200);
    for i in (0..200).step_by(7) {
        let mut s = String::new();
        std::fs::File::open(mnt.join(format!("f{i}")))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, format!("f{i:04}")[..5]);
    }
    assert!(running.session().node_count() > 1, "lookups were counted");
    // Nothing open: dropping the kernel's dentries/inodes sends FORGETs for all of them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.session().node_count() > 1 && Instant::now() < deadline {
        drop_caches();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        running.session().node_count(),
        1,
        "only the root is left after drop_caches"
    );
    assert_eq!(running.session().handle_count(), 0);

    running.unmount().unwrap();
    assert!(!dog.disarm(), "finished before the watchdog");
    assert!(!running.is_serving());
    let _ = std::fs::remove_dir(&mnt);
}

#[test]
fn pause_parks_every_worker_between_requests_and_resumes() {
    if !can_mount("pause_parks_every_worker_between_requests_and_resumes") {
        return;
    }
    let mnt = tempdir("pause");
    let opts = MountOptions::new().fsname("files").read_only(true);
    let running = Server::mount(Files(50), &mnt, &opts)
        .unwrap()
        .spawn(3)
        .unwrap();
    let dog = Watchdog::arm(&mnt, None, Duration::from_secs(60)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load: Vec<_> = (0..2)
        .map(|t| {
            let (stop, errors, ops, mnt) = (stop.clone(), errors.clone(), ops.clone(), mnt.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    // Open+read+close: OPEN, READ, FLUSH, RELEASE go through the daemon.
                    match std::fs::read(mnt.join(format!("f{}", i % 50))) {
                        Ok(b) if b.len() == 5 => ops.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 2;
                }
            })
        })
        .collect();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(20));
        let before = ops.load(Ordering::Relaxed);
        let guard = running.pause();
        // While parked, the session's tables do not move.
        let handles = running.session().handle_count();
        let nodes = running.session().node_count();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(running.session().handle_count(), handles);
        assert_eq!(running.session().node_count(), nodes);
        assert!(guard.parked_in < Duration::from_secs(10));
        drop(guard);
        assert!(ops.load(Ordering::Relaxed) >= before);
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "no failed operation across 20 pauses"
    );
    assert!(ops.load(Ordering::Relaxed) > 0);
    running.unmount().unwrap();
    assert!(!dog.disarm(), "finished before the watchdog");
    let _ = std::fs::remove_dir(&mnt);
}

#[test]
fn notifier_invalidates_and_refuses_unknown_nodes() {
    if !can_mount("notifier_invalidates_and_refuses_unknown_nodes") {
        return;
    }
    let mnt = tempdir("notify");
    let opts = MountOptions::new().fsname("files").read_only(true);
    let running = Server::mount(Files(5), &mnt, &opts)
        .unwrap()
        .spawn(1)
        .unwrap();
    let dog = Watchdog::arm(&mnt, None, Duration::from_secs(60)).unwrap();
    std::fs::metadata(mnt.join("f1")).unwrap();
    let n = running.notifier();
    assert_eq!(n.inval_inode(&3, 0, 0).unwrap(), Notified::Delivered);
    assert_eq!(
        n.inval_entry(&1, OsStr::new("f1"), false).unwrap(),
        Notified::Delivered
    );
    assert_eq!(
        n.inval_inode(&999, 0, 0).unwrap(),
        Notified::NotCached,
        "a node the kernel does not know"
    );
    assert_eq!(n.inc_epoch().unwrap(), Notified::Delivered);
    // The filesystem still works afterwards.
    assert_eq!(
        std::fs::read(mnt.join("f2")).unwrap(),
        b"f0002"[..5].to_vec()
    );
    running.unmount().unwrap();
    assert!(!dog.disarm(), "finished before the watchdog");
    let _ = std::fs::remove_dir(&mnt);
}

#[test]
fn retrieve_returns_the_cached_data_through_a_worker() {
    if !can_mount("retrieve_returns_the_cached_data_through_a_worker") {
        return;
    }
    let mnt = tempdir("retrieve");
    let opts = MountOptions::new().fsname("files").read_only(true);
    let running = Server::mount(Files(5), &mnt, &opts)
        .unwrap()
        .spawn(2)
        .unwrap();
    let dog = Watchdog::arm(&mnt, None, Duration::from_secs(60)).unwrap();
    // Reading f2 (node 4) leaves its page in the kernel's cache.
    assert_eq!(std::fs::read(mnt.join("f2")).unwrap(), b"f0002".to_vec());
    let (offset, data) = running
        .notifier()
        .retrieve(&4, 0, 4096, Duration::from_secs(20))
        .unwrap();
    assert_eq!((offset, data.as_slice()), (0, &b"f0002"[..]));
    running.unmount().unwrap();
    assert!(!dog.disarm(), "finished before the watchdog");
    let _ = std::fs::remove_dir(&mnt);
}

/// Counts what a step hook sees: accepted uniques (with opcodes) and replies.
#[derive(Default)]
struct Steps {
    accepted: std::sync::Mutex<Vec<(u64, u32)>>,
    replied: std::sync::Mutex<Vec<u64>>,
}

impl StepHook for Steps {
    fn accepted(&self, r: &Accepted<'_>) {
        self.accepted
            .lock()
            .unwrap()
            .push((r.unique(), r.opcode().0));
    }
    fn responding(&self, r: &Accepted<'_>, reply: &ReplyParts<'_>) {
        assert_eq!(reply.unique(), r.unique());
        self.replied.lock().unwrap().push(r.unique());
    }
}

fn hook_sees_every_step(uring: bool) {
    let mnt = tempdir(if uring { "hook-uring" } else { "hook" });
    let opts = MountOptions::new().fsname("files").read_only(true);
    let mut server = Server::mount(Files(20), &mnt, &opts).unwrap();
    let steps = Arc::new(Steps::default());
    assert!(server.set_hook(steps.clone()));
    let running = if uring {
        server
            .spawn_uring(&fuse_session::serve::UringOptions::default())
            .unwrap()
    } else {
        server.spawn(2).unwrap()
    };
    let dog = Watchdog::arm(&mnt, None, Duration::from_secs(60)).unwrap();
    for i in 0..20 {
        assert_eq!(std::fs::read(mnt.join(format!("f{i}"))).unwrap().len(), 5);
        assert!(std::fs::metadata(mnt.join(format!("missing{i}"))).is_err());
    }
    drop_caches();
    running.unmount().unwrap();
    assert!(!dog.disarm(), "finished before the watchdog");
    let accepted = steps.accepted.lock().unwrap().clone();
    let mut replied = steps.replied.lock().unwrap().clone();
    let unanswered = [
        fuse_wire::Opcode::FORGET.0,
        fuse_wire::Opcode::BATCH_FORGET.0,
        fuse_wire::Opcode::INTERRUPT.0,
        fuse_wire::Opcode::DESTROY.0,
    ];
    let mut want: Vec<u64> = accepted
        .iter()
        .filter(|(_, op)| !unanswered.contains(op))
        .map(|(u, _)| *u)
        .collect();
    want.sort_unstable();
    replied.retain(|u| want.binary_search(u).is_ok());
    replied.sort_unstable();
    assert!(want.len() > 60, "{} requests seen", want.len());
    assert_eq!(replied, want, "one reply seen per answered request");
    let _ = std::fs::remove_dir(&mnt);
}

#[test]
fn the_step_hook_sees_every_request_through_dev_fuse() {
    if can_mount("the_step_hook_sees_every_request_through_dev_fuse") {
        hook_sees_every_step(false);
    }
}

#[test]
fn the_step_hook_sees_every_request_through_io_uring() {
    if can_mount("the_step_hook_sees_every_request_through_io_uring") {
        hook_sees_every_step(true);
    }
}

#[test]
fn hello_follows_the_command_line_contract() {
    if !can_mount("hello_follows_the_command_line_contract") {
        return;
    }
    let mnt = tempdir("hello");
    let mut child = Command::new(example_binary("hello"))
        .arg(&mnt)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The ready line, or kill the child after 30 s (never hang).
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = fuse_session::dev::fusectl::tear_down(&mnt, None);
        panic!("hello did not print its ready line in 30 s");
    };
    let dog = Watchdog::arm(&mnt, None, Duration::from_secs(60)).unwrap();
    assert_eq!(line.trim_end(), format!("ready {}", mnt.display()));
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello")).unwrap(),
        "Hello, world!\n"
    );
    assert_eq!(
        std::fs::write(mnt.join("hello"), "x")
            .unwrap_err()
            .raw_os_error(),
        Some(nix::libc::EROFS)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit 0 after SIGTERM: {status}");
    assert!(!dog.disarm(), "finished before the watchdog");
    let mounted = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounted.contains(mnt.to_str().unwrap()),
        "unmounted on SIGTERM"
    );
    // Bad arguments: usage and exit 2.
    let out = Command::new(example_binary("hello"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir(&mnt);
}

#[test]
fn unmount_returns_even_with_a_file_held_open() {
    if !can_mount("unmount_returns_even_with_a_file_held_open") {
        return;
    }
    let mnt = tempdir("held");
    let opts = MountOptions::new().fsname("files").read_only(true);
    let running = Server::mount(Files(3), &mnt, &opts)
        .unwrap()
        .spawn(2)
        .unwrap();
    let dog = Watchdog::arm(&mnt, None, Duration::from_secs(60)).unwrap();
    let held = std::fs::File::open(mnt.join("f1")).unwrap();
    let start = Instant::now();
    running.unmount().unwrap();
    assert!(!running.is_serving(), "workers stopped");
    assert!(start.elapsed() < Duration::from_secs(30));
    // The detached mount is gone from the namespace.
    let mounted = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounted.contains(mnt.to_str().unwrap()));
    drop(running);
    drop(held);
    drop(dog);
    let _ = std::fs::remove_dir(&mnt);
}
