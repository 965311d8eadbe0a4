//! Serving a real kernel mount through fuse-over-io_uring (`Server::spawn_uring`):
//! lookups, attributes, directory listings, reads of 4 KiB and 1 MiB with verified
//! contents, 2 MiB of writes (O_DIRECT and buffered) read back, concurrent readers
//! pinned to each CPU, FORGET traffic (which still comes
//! through `/dev/fuse`), pausing and a snapshot, a live handoff refused before
//! Commit (through fuse-snapshot's real handoff), unmount and abort, the
//! fallback when the kernel does not offer io_uring, and `benchfs --uring`.
//!
//! Needs root, `/dev/fuse` and a kernel with `CONFIG_FUSE_IO_URING`; the tests switch
//! the `fuse` module parameter `enable_uring` on. Under `CI` a missing capability is
//! a failure, elsewhere the tests print why and skip. The tests of this file run one
//! at a time (they switch a global kernel parameter and pin threads).
mod common;

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use fuse_session::dev::uring;
use fuse_session::dev::MountOptions;
use fuse_session::serve::{Backend, Running, ServeError, Server, UringOptions};
use fuse_session::*;
use fuse_session::{FuseOpenFlags, OpenFlags, WriteFlags};

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// How long a test may keep its mount before the watchdog aborts the connection.
const WATCHDOG: Duration = Duration::from_secs(120);

/// Small files s0..s{SMALL-1}, 4 KiB each; `big`, BIG bytes.
const SMALL: u64 = 300;
const SMALL_SIZE: u64 = 4096;
const BIG: u64 = 8 << 20;
const BIG_INO: u64 = 2;
const FIRST_SMALL: u64 = 3;
/// `w`: a writable file, kept in memory.
const W_INO: u64 = 500;

/// The byte at offset `o` of file `ino`: a pattern that differs between files, so a
/// misplaced page or a reply for the wrong file is seen.
fn byte(ino: u64, o: u64) -> u8 {
    ((o + ino * 7) % 251) as u8
}

/// Serializes the tests of this file.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// True if io_uring can be used here: root, `/dev/fuse`, and the module parameter
/// (switched on if it is off). Panics under `CI` when not.
fn uring_ready(test: &str) -> bool {
    if !common::can_mount(test) {
        return false;
    }
    let why = match uring::uring_enabled() {
        None => Some("this kernel has no fuse-over-io_uring (no enable_uring parameter)"),
        Some(true) => None,
        Some(false) => match std::fs::write(PARAM, "Y") {
            Ok(()) if uring::uring_enabled() == Some(true) => None,
            _ => Some("cannot switch the fuse module parameter enable_uring on"),
        },
    };
    match why {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => panic!("{test}: {why}"),
        Some(why) => {
            eprintln!("skipping {test}: {why}");
            false
        }
    }
}

/// A read-only tree: the root, `big`, and the small files.
struct Tree {
    /// The pattern of `big`, lent to READ replies (the zero-copy path).
    big: Vec<u8>,
    /// The contents of `w`.
    w: Mutex<Vec<u8>>,
}

impl Tree {
    fn new() -> Tree {
        Tree {
            big: (0..BIG).map(|o| byte(BIG_INO, o)).collect(),
            w: Mutex::new(Vec::new()),
        }
    }
}

fn attr(ino: u64) -> Option<FileAttr> {
    attr_of(ino, 0)
}

/// As [`attr`], with `w`'s current size.
fn attr_of(ino: u64, w_size: u64) -> Option<FileAttr> {
    Some(match ino {
        W_INO => FileAttr {
            size: w_size,
            blocks: w_size.div_ceil(512),
            ..FileAttr::new(ino, FileType::RegularFile, 0o644)
        },
        1 => FileAttr::new(1, FileType::Directory, 0o555),
        BIG_INO => FileAttr {
            size: BIG,
            blocks: BIG / 512,
            ..FileAttr::new(ino, FileType::RegularFile, 0o444)
        },
        i if (FIRST_SMALL..FIRST_SMALL + SMALL).contains(&i) => FileAttr {
            size: SMALL_SIZE,
            blocks: SMALL_SIZE / 512,
            ..FileAttr::new(ino, FileType::RegularFile, 0o444)
        },
        _ => return None,
    })
}

impl Tree {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let w = self.w.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        attr_of(ino, w)
    }
}

impl Filesystem for Tree {
    type Node = u64;
    type Handle = u64;
    fn root(&self) -> u64 {
        1
    }
    fn lookup(&self, _: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<Entry<u64>> {
        if *parent != 1 {
            return Err(Errno::ENOTDIR);
        }
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let ino = if name == "big" {
            BIG_INO
        } else if name == "w" {
            W_INO
        } else {
            let k: u64 = name
                .strip_prefix('s')
                .and_then(|k| k.parse().ok())
                .filter(|&k| k < SMALL)
                .ok_or(Errno::ENOENT)?;
            FIRST_SMALL + k
        };
        Ok(Entry {
            node: ino,
            attr: self.attr(ino).ok_or(Errno::ENOENT)?,
            // No caching: every stat() is a LOOKUP and a GETATTR.
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
        })
    }
    fn getattr(&self, _: &RequestContext<'_>, n: &u64, _: Option<&u64>) -> Result<AttrReply> {
        Ok(AttrReply {
            attr: self.attr(*n).ok_or(Errno::ENOENT)?,
            ttl: Duration::ZERO,
        })
    }
    fn write(
        &self,
        _: &RequestContext<'_>,
        n: &u64,
        _: &u64,
        offset: u64,
        data: &[u8],
        _: WriteFlags,
        _: OpenFlags,
    ) -> Result<u32> {
        if *n != W_INO {
            return Err(Errno::EBADF);
        }
        let mut w = self.w.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset as usize + data.len();
        if w.len() < end {
            w.resize(end, 0);
        }
        w[offset as usize..end].copy_from_slice(data);
        Ok(data.len() as u32)
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
        size: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        if *n == W_INO {
            let w = self.w.lock().unwrap_or_else(|p| p.into_inner());
            let start = (off as usize).min(w.len());
            let end = (start + size as usize).min(w.len());
            out.copy_from(&w[start..end]);
            return Ok(());
        }
        let len = attr(*n).ok_or(Errno::ENOENT)?.size;
        let end = (off + u64::from(size)).min(len);
        if off >= end {
            return Ok(());
        }
        if *n == BIG_INO {
            // Lent: the session copies it into the ring's payload buffer.
            out.set(&self.big[off as usize..end as usize]);
        } else {
            // Copied in place, straight into the payload buffer.
            let buf = out.buffer();
            for (i, b) in buf[..(end - off) as usize].iter_mut().enumerate() {
                *b = byte(*n, off + i as u64);
            }
            out.filled((end - off) as usize);
        }
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
        for i in off..SMALL + 1 {
            let (ino, name) = if i == 0 {
                (BIG_INO, "big".to_owned())
            } else {
                (FIRST_SMALL + i - 1, format!("s{}", i - 1))
            };
            if out
                .push(ino, i + 1, FileType::RegularFile, OsStr::new(&name))
                .is_err()
            {
                break;
            }
        }
        Ok(())
    }
}

/// A mount of [`Tree`] served through io_uring, with a watchdog; unmounted (or torn
/// down) on drop.
struct UringMount {
    running: Option<Running<Tree>>,
    mnt: PathBuf,
    dog: Option<Watchdog>,
}

impl UringMount {
    fn start(tag: &str, options: &UringOptions) -> std::result::Result<UringMount, ServeError> {
        Self::start_with(tag, options, true)
    }

    fn start_with(
        tag: &str,
        options: &UringOptions,
        read_only: bool,
    ) -> std::result::Result<UringMount, ServeError> {
        let dir = common::temp_dir(tag);
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("create mountpoint");
        let dog = Watchdog::arm(&mnt, None, WATCHDOG).expect("arm watchdog");
        let opts = MountOptions::new()
            .fsname("uringtree")
            .subtype("uringtree")
            .read_only(read_only);
        let mut m = UringMount {
            running: None,
            mnt,
            dog: Some(dog),
        };
        m.running = Some(Server::mount(Tree::new(), &m.mnt, &opts)?.spawn_uring(options)?);
        Ok(m)
    }

    fn running(&self) -> &Running<Tree> {
        self.running.as_ref().expect("running")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Unmounts, checks that every thread ended and nothing is left mounted.
    fn finish(mut self) {
        let running = self.running.take().expect("running");
        running.unmount().expect("unmount");
        running.join();
        assert!(!running.is_serving(), "every thread ended");
        assert!(!common::is_fuse_mounted(&self.mnt), "nothing left mounted");
        let dog = self.dog.take().expect("watchdog");
        assert!(!dog.disarm(), "finished before the watchdog");
    }
}

impl Drop for UringMount {
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

fn required() -> UringOptions {
    let mut o = UringOptions::default();
    o.required = true;
    o
}

fn check_content(ino: u64, offset: u64, data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        let o = offset + i as u64;
        assert_eq!(b, byte(ino, o), "file {ino}, offset {o}");
    }
}

fn read_at(path: &Path, offset: u64, len: usize, direct: bool) -> Vec<u8> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(nix::libc::O_DIRECT);
    }
    let mut f = o.open(path).expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    // Page-aligned memory, as O_DIRECT wants: a Vec of u64 pages is only 8-aligned,
    // so over-allocate and read into an aligned window.
    let mut raw = vec![0u8; len + 4096];
    let start = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[start..start + len];
    let mut got = 0;
    while got < len {
        let n = f.read(&mut buf[got..]).expect("read");
        if n == 0 {
            break;
        }
        got += n;
    }
    buf[..got].to_vec()
}

/// Published ring counts lag; a pause publishes every queue's.
fn ring_requests(r: &Running<Tree>) -> u64 {
    let _g = r.pause();
    r.ring_requests()
}

#[test]
fn uring_serves_stat_readdir_and_reads_with_verified_contents() {
    let _s = serial();
    if !uring_ready("uring_serves_stat_readdir_and_reads_with_verified_contents") {
        return;
    }
    let m = UringMount::start("uring-basic", &required()).expect("spawn_uring");
    let running = m.running();
    let queues = uring::queue_count();
    assert_eq!(
        running.backend(),
        Backend::Uring {
            queues,
            depth: uring::DEFAULT_DEPTH
        }
    );

    // stat: LOOKUP (the name travels in the payload buffer) and GETATTR.
    let md = std::fs::metadata(m.path("s17")).expect("stat s17");
    assert_eq!(md.len(), SMALL_SIZE);
    let md = std::fs::metadata(m.path("big")).expect("stat big");
    assert_eq!(md.len(), BIG);
    assert_eq!(
        std::fs::metadata(m.path("nope"))
            .unwrap_err()
            .raw_os_error(),
        Some(nix::libc::ENOENT)
    );

    // readdir: several READDIR requests (300 entries do not fit one page).
    let mut names: Vec<String> = std::fs::read_dir(&m.mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names.len() as u64, SMALL + 1);
    assert!(names.contains(&"big".to_owned()) && names.contains(&"s299".to_owned()));

    // 4 KiB reads, in place; each open drops the file's cache (no keep_cache).
    for k in [0u64, 1, 150, 299] {
        let data = std::fs::read(m.path(&format!("s{k}"))).expect("read small");
        assert_eq!(data.len() as u64, SMALL_SIZE);
        check_content(FIRST_SMALL + k, 0, &data);
    }
    // 1 MiB reads of lent data: buffered (readahead-sized READs) and O_DIRECT (one
    // 1 MiB READ each), at unaligned file offsets too.
    for (offset, direct) in [
        (0u64, false),
        (3 << 20, false),
        (1 << 20, true),
        (5 << 20, true),
    ] {
        let data = read_at(&m.path("big"), offset, 1 << 20, direct);
        assert_eq!(data.len(), 1 << 20, "offset {offset} direct {direct}");
        check_content(BIG_INO, offset, &data);
    }
    let tail = read_at(&m.path("big"), BIG - 1000, 1 << 20, false);
    assert_eq!(tail.len(), 1000, "a read across EOF stops at EOF");
    check_content(BIG_INO, BIG - 1000, &tail);

    let served = ring_requests(running);
    assert!(
        served > 50,
        "requests went through the rings, not /dev/fuse (served {served})"
    );
    m.finish();
}

#[test]
fn uring_serves_concurrent_readers_pinned_to_each_cpu() {
    let _s = serial();
    if !uring_ready("uring_serves_concurrent_readers_pinned_to_each_cpu") {
        return;
    }
    let m = UringMount::start("uring-cpus", &required()).expect("spawn_uring");
    let cpus = uring::queue_count();
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mnt = m.mnt.clone();
    let readers: Vec<_> = (0..cpus.min(online).max(1))
        .flat_map(|cpu| (0..2).map(move |t| (cpu, t)))
        .map(|(cpu, t)| {
            let mnt = mnt.clone();
            std::thread::spawn(move || {
                uring::pin_to_cpu(cpu).expect("pin the reader");
                for round in 0..40u64 {
                    let k = (round * 13 + cpu as u64 * 7 + t) % SMALL;
                    let data = std::fs::read(mnt.join(format!("s{k}"))).expect("read");
                    assert_eq!(data.len() as u64, SMALL_SIZE);
                    check_content(FIRST_SMALL + k, 0, &data);
                    let off = ((round + t) % 7) << 20;
                    let big = read_at(&mnt.join("big"), off, 1 << 20, true);
                    assert_eq!(big.len(), 1 << 20);
                    check_content(BIG_INO, off, &big);
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("a reader failed");
    }
    assert!(ring_requests(m.running()) > 0);
    m.finish();
}

#[test]
fn uring_forgets_come_through_the_device_and_empty_the_node_table() {
    let _s = serial();
    if !uring_ready("uring_forgets_come_through_the_device_and_empty_the_node_table") {
        return;
    }
    let m = UringMount::start("uring-forget", &required()).expect("spawn_uring");
    for k in 0..SMALL {
        std::fs::metadata(m.path(&format!("s{k}"))).expect("stat");
    }
    let session = m.running().session();
    assert!(session.node_count() > 1, "lookups were counted");
    // Nothing open: dropping dentries and inodes sends FORGET/BATCH_FORGET.
    let deadline = Instant::now() + Duration::from_secs(30);
    while session.node_count() > 1 && Instant::now() < deadline {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(session.node_count(), 1, "only the root is left");
    assert!(session.stats().forgets.load(Ordering::Relaxed) >= SMALL);
    // Still serving afterwards.
    check_content(
        FIRST_SMALL + 5,
        0,
        &std::fs::read(m.path("s5")).expect("read"),
    );
    m.finish();
}

#[test]
fn uring_pause_parks_the_queues_and_handoff_is_refused() {
    let _s = serial();
    if !uring_ready("uring_pause_parks_the_queues_and_handoff_is_refused") {
        return;
    }
    let m = UringMount::start("uring-pause", &required()).expect("spawn_uring");
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load: Vec<_> = (0..2)
        .map(|t| {
            let (stop, ops, mnt) = (stop.clone(), ops.clone(), m.mnt.clone());
            std::thread::spawn(move || {
                let mut k = t;
                while !stop.load(Ordering::Relaxed) {
                    let data = std::fs::read(mnt.join(format!("s{}", k % SMALL))).expect("read");
                    check_content(FIRST_SMALL + k % SMALL, 0, &data);
                    ops.fetch_add(1, Ordering::Relaxed);
                    k += 2;
                }
            })
        })
        .collect();
    let running = m.running();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(20));
        let guard = running.pause();
        let (handles, nodes) = (
            running.session().handle_count(),
            running.session().node_count(),
        );
        let served = running.ring_requests();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(running.session().handle_count(), handles, "parked");
        assert_eq!(running.session().node_count(), nodes, "parked");
        assert_eq!(
            running.ring_requests(),
            served,
            "no ring request while parked"
        );
        drop(guard);
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("a reader failed");
    }
    assert!(ops.load(Ordering::Relaxed) > 0);

    // A live handoff is refused, and the mount keeps being served.
    assert!(matches!(
        running.try_stop(),
        Err(ServeError::Unsupported(_))
    ));
    assert!(running.stop().is_none());
    assert!(running.with_mount(|_| ()).is_none());
    assert!(running.is_serving());
    check_content(FIRST_SMALL, 0, &std::fs::read(m.path("s0")).expect("read"));
    m.finish();
}

/// Every entry of a restartable area is tagged with the generation of the process
/// that registered it (1 for a new area), in the shared file where a successor
/// reads it, and the area has more slots, free for a live successor
/// (docs/DESIGN.md, "Live handoff over io_uring").
#[test]
fn uring_entries_carry_the_generation_that_registered_them() {
    let _s = serial();
    if !uring_ready("uring_entries_carry_the_generation_that_registered_them") {
        return;
    }
    let mut o = required();
    o.restartable = true;
    let m = UringMount::start("uring-owner", &o).expect("spawn_uring");
    for k in 0..SMALL {
        check_content(
            FIRST_SMALL + k,
            0,
            &std::fs::read(m.path(&format!("s{k}"))).expect("read"),
        );
    }
    let running = m.running();
    assert!(ring_requests(running) > 0, "served through the rings");
    let area = running.ring_area().expect("a ring area");
    assert!(area.fd().is_some(), "a memfd");
    assert_eq!(area.generation(), 1);
    assert_eq!(area.highest_owner(), 1);
    let depth = area.geometry().depth as usize;
    const SLOTS: usize = fuse_session::dev::ring_area::SLOTS_PER_ENTRY;
    assert_eq!(area.geometry().slots as usize, SLOTS * depth);
    for q in 0..area.geometry().queues as usize {
        let mut want = vec![1; depth];
        want.resize(SLOTS * depth, 0);
        assert_eq!(
            area.owners(q),
            want,
            "queue {q}: the first half registered by generation 1"
        );
        assert_eq!(
            area.free_slots(q, 1),
            (depth..SLOTS * depth).collect::<Vec<_>>(),
            "queue {q}: the other slots are free for a live successor"
        );
    }
    drop(area);
    m.finish();
}

#[test]
fn uring_threads_end_when_the_connection_is_aborted() {
    let _s = serial();
    if !uring_ready("uring_threads_end_when_the_connection_is_aborted") {
        return;
    }
    let mut m = UringMount::start("uring-abort", &required()).expect("spawn_uring");
    check_content(FIRST_SMALL, 0, &std::fs::read(m.path("s0")).expect("read"));
    // What a watchdog does on a hung mount: abort the connection through fusectl.
    fusectl::tear_down(&m.mnt, None).expect("abort the connection");
    let running = m.running.take().expect("running");
    running.join();
    assert!(!running.is_serving(), "every queue thread saw the end");
    assert!(!common::is_fuse_mounted(&m.mnt));
    let _ = running.unmount();
}

#[test]
fn uring_falls_back_or_fails_clearly_when_the_kernel_does_not_offer_it() {
    let _s = serial();
    if !uring_ready("uring_falls_back_or_fails_clearly_when_the_kernel_does_not_offer_it") {
        return;
    }
    std::fs::write(PARAM, "N").expect("switch enable_uring off");
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(PARAM, "Y");
        }
    }
    let _restore = Restore;

    let m = UringMount::start("uring-fallback", &UringOptions::default()).expect("fallback");
    assert_eq!(m.running().backend(), Backend::Device);
    check_content(
        FIRST_SMALL + 9,
        0,
        &std::fs::read(m.path("s9")).expect("read"),
    );
    assert_eq!(m.running().ring_requests(), 0);
    m.finish();

    match UringMount::start("uring-required", &required()) {
        Err(ServeError::Uring(why)) => {
            assert!(why.contains("enable_uring"), "says what to do: {why}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("io_uring was required but the kernel did not offer it"),
    }
}

#[test]
fn benchfs_uring_serves_the_bench_tree_and_exits_on_sigterm() {
    let _s = serial();
    if !uring_ready("benchfs_uring_serves_the_bench_tree_and_exits_on_sigterm") {
        return;
    }
    let m = common::Mounted::start("benchfs", &["0", "--uring", "--stats"], &[]);
    assert_eq!(std::fs::read_dir(&m.mnt).expect("readdir").count(), 1001);
    let data = std::fs::read(m.path("f0007")).expect("read f0007");
    assert_eq!(data.len(), 4096);
    assert!(data.iter().enumerate().all(|(o, &b)| b == (o % 251) as u8));
    let big = read_at(&m.path("big"), 1 << 20, 1 << 20, true);
    assert!(big
        .iter()
        .enumerate()
        .all(|(o, &b)| b == (((1 << 20) + o) % 251) as u8));
    let log = m.log_text();
    assert!(
        log.contains("backend=Uring"),
        "served through io_uring: {log}"
    );
    let st = m.stop();
    assert!(st.success(), "benchfs exited cleanly: {st:?}");
}

#[test]
fn uring_delivers_writes_whole_and_reads_them_back() {
    let _s = serial();
    if !uring_ready("uring_delivers_writes_whole_and_reads_them_back") {
        return;
    }
    let m = UringMount::start_with("uring-write", &required(), false).expect("spawn_uring");
    // O_DIRECT: one WRITE per 1 MiB (max_write), its data in the payload buffer after
    // the op struct; then a small unaligned buffered write in the middle.
    let len = (1usize << 20) * 2 + 4096;
    let mut raw = vec![0u8; len + 4096];
    let start = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[start..start + len];
    for (o, b) in buf.iter_mut().enumerate() {
        *b = byte(W_INO, o as u64);
    }
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(m.path("w"))
            .expect("open w for O_DIRECT writing");
        f.write_all(buf).expect("write");
    }
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.path("w"))
            .expect("open w");
        f.write_all_at(b"hello, ring", 12345).expect("pwrite");
    }
    let mut want = buf.to_vec();
    want[12345..12345 + 11].copy_from_slice(b"hello, ring");
    {
        let w = m.running().session().filesystem().w.lock().unwrap();
        assert_eq!(w.len(), len, "every byte arrived");
        assert!(*w == want, "the filesystem got exactly what was written");
    }
    let back = read_at(&m.path("w"), 0, len, true);
    assert!(back == want, "read back through the ring");
    assert_eq!(
        std::fs::metadata(m.path("w")).expect("stat w").len(),
        len as u64
    );
    m.finish();
}

impl fuse_snapshot::SnapshotFs for Tree {
    type State = Vec<u8>;
    fn save(&self, _: &mut fuse_snapshot::FdSaver) -> std::io::Result<Vec<u8>> {
        Ok(self.w.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    fn restore(
        state: Vec<u8>,
        _: &mut fuse_snapshot::FdRestorer,
    ) -> std::result::Result<Self, String> {
        let t = Tree::new();
        *t.w.lock().unwrap_or_else(|p| p.into_inner()) = state;
        Ok(t)
    }
}

#[test]
fn uring_snapshot_works_and_a_live_handoff_is_refused_before_commit() {
    use fuse_snapshot::handoff::{serve_upgrades, take_over, HandoffOptions, UpgradeListener};
    let _s = serial();
    if !uring_ready("uring_snapshot_works_and_a_live_handoff_is_refused_before_commit") {
        return;
    }
    let m = UringMount::start("uring-handoff", &required()).expect("spawn_uring");
    let running = m.running();
    std::fs::metadata(m.path("s3")).expect("stat");
    {
        // What SIGUSR1's snapshot file does: pause, snapshot, resume.
        let _paused = running.pause();
        let bytes = fuse_snapshot::snapshot(running.session(), &mut fuse_snapshot::FdSaver::new())
            .expect("snapshot while the queues are parked");
        assert!(!bytes.is_empty());
    }
    let sock = m.mnt.parent().expect("temp dir").join("upgrade.sock");
    let listener = UpgradeListener::bind(&sock).expect("bind the upgrade socket");
    let opts = HandoffOptions::default();
    std::thread::scope(|s| {
        let old = s.spawn(|| serve_upgrades(running, &listener, &opts));
        let new = take_over::<Tree>(&sock, &opts);
        match new {
            Err(fuse_snapshot::handoff::HandoffError::Refused(why)) => {
                assert!(
                    why.contains("io_uring"),
                    "refused at once, saying why: {why}"
                )
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a new process took over an io_uring mount"),
        }
        // Refused before Commit: this process still serves.
        assert!(running.is_serving());
        check_content(
            FIRST_SMALL + 8,
            0,
            &std::fs::read(m.path("s8")).expect("read"),
        );
        listener.close();
        assert!(
            old.join().expect("serve_upgrades").is_err(),
            "closed, no handoff"
        );
    });
    assert!(common::is_fuse_mounted(&m.mnt));
    m.finish();
}

/// `Server::spawn_with(TransportKind::Auto)` serves through io_uring where the kernel
/// offers it and more than one CPU is usable, through `/dev/fuse` otherwise;
/// `DevFuse` always through `/dev/fuse`; the names parse as the CLIs spell them.
#[test]
fn transport_auto_picks_io_uring_where_offered() {
    use fuse_session::serve::TransportKind;
    assert_eq!("auto".parse::<TransportKind>(), Ok(TransportKind::Auto));
    assert_eq!(
        "dev-fuse".parse::<TransportKind>(),
        Ok(TransportKind::DevFuse)
    );
    assert_eq!(
        "io-uring".parse::<TransportKind>(),
        Ok(TransportKind::IoUring)
    );
    assert!("uring".parse::<TransportKind>().is_err());
    let _s = serial();
    if !uring_ready("transport_auto_picks_io_uring_where_offered") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (kind, tag) in [
        (TransportKind::Auto, "transport-auto"),
        (TransportKind::DevFuse, "transport-dev"),
    ] {
        let dir = common::temp_dir(tag);
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("create mountpoint");
        let dog = Watchdog::arm(&mnt, None, WATCHDOG).expect("arm watchdog");
        let opts = MountOptions::new()
            .fsname("uringtree")
            .subtype("uringtree")
            .read_only(true);
        let running = Server::mount(Tree::new(), &mnt, &opts)
            .and_then(|s| s.spawn_with(kind, 2))
            .expect("spawn_with");
        let data = std::fs::read(mnt.join("s1")).expect("read");
        check_content(FIRST_SMALL + 1, 0, &data);
        let expect_uring = kind == TransportKind::Auto && cpus > 1;
        assert_eq!(
            matches!(running.backend(), Backend::Uring { .. }),
            expect_uring,
            "{kind:?} with {cpus} usable CPUs served through {:?}",
            running.backend()
        );
        running.unmount().expect("unmount");
        running.join();
        assert!(!common::is_fuse_mounted(&mnt), "nothing left mounted");
        assert!(!dog.disarm(), "finished before the watchdog");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
