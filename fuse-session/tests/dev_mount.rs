//! The `dev` IO layer against the real kernel: mount, INIT by hand, GETATTR by hand,
//! unmount, the watchdog, mount errors, the busy-path syscall count, and an
//! unprivileged mount through `fusermount3` as user `nobody`.
//!
//! Tests that need root, `/dev/fuse` or `fusermount3` print why and pass when those are
//! missing, unless `CI` is set, where they fail. Every test that mounts arms a
//! [`Watchdog`] (abort through fusectl, then lazy unmount), so a hang ends the test
//! instead of the machine's patience, and nothing stays mounted.
use fuse_session::dev::fusectl::{self, Watchdog};
use fuse_session::dev::{
    find_fusermount, mount, Channel, Mount, MountError, MountMethod, MountOptions, Received,
    RequestBuffer, Waker, WriteOutcome,
};
use fuse_wire::abi;
use std::io::IoSlice;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zerocopy::byteorder::native_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

const OP_GETATTR: u32 = 3;
const OP_FORGET: u32 = 2;
const OP_INIT: u32 = 26;
const OP_INTERRUPT: u32 = 36;
const OP_BATCH_FORGET: u32 = 42;
const ENOSYS: i32 = 38;

/// Env var that turns `unprivileged_child` from a no-op into the child's work.
const CHILD_ENV: &str = "FUSE_LIVE_DEV_CHILD_MOUNTPOINT";

// ---------------------------------------------------------------------------------
// Environment checks

fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Skip (print and return false) or, under CI, fail.
fn skip(reason: &str) -> bool {
    if in_ci() {
        panic!("CI is set, so this cannot be skipped: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

fn can_mount() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root to mount with mount(2)");
    }
    if !Path::new("/dev/fuse").exists() {
        return skip("/dev/fuse is missing (modprobe fuse, or --device /dev/fuse)");
    }
    true
}

// ---------------------------------------------------------------------------------
// Temporary directories

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory (mode 0755) under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("fuse-live-dev-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(p)
    }

    fn subdir(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir(&p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover mount makes this fail (EBUSY), which is what we want
        // to notice rather than recursively delete through.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tears down whatever FUSE mount is still at the mountpoint when dropped, so a failed
/// assertion leaves nothing mounted (the watchdog only covers hangs: dropping it
/// disarms it).
struct Cleanup(PathBuf);

impl Cleanup {
    fn new(mountpoint: &Path) -> Cleanup {
        Cleanup(std::fs::canonicalize(mountpoint).unwrap())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while fuse_mount_at(&self.0).is_some() {
            if let Err(e) = fusectl::tear_down(&self.0, None) {
                eprintln!("cleanup of {}: {e}", self.0.display());
                break;
            }
        }
    }
}

/// The FUSE mount at `path` in this process's mount table, as
/// (source, fstype, mount options, super options).
fn fuse_mount_at(path: &Path) -> Option<(String, String, String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    text.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        let dash = f.iter().position(|x| *x == "-")?;
        let fstype = f.get(dash + 1)?;
        (f.get(4) == Some(&want) && fstype.starts_with("fuse")).then(|| {
            (
                f[dash + 2].to_string(),
                fstype.to_string(),
                f[5].to_string(),
                f.get(dash + 3).unwrap_or(&"").to_string(),
            )
        })
    })
}

// ---------------------------------------------------------------------------------
// A hand-written daemon: just enough protocol for INIT and GETATTR

/// Write one reply: header + body.
fn reply(ch: &Channel, unique: u64, error: i32, body: &[u8]) -> WriteOutcome {
    let header = abi::fuse_out_header {
        len: U32::new((16 + body.len()) as u32),
        error: zerocopy::byteorder::native_endian::I32::new(error),
        unique: U64::new(unique),
    };
    ch.write(&[IoSlice::new(header.as_bytes()), IoSlice::new(body)])
        .expect("the kernel accepts a well-formed reply")
}

/// Read INIT and answer it with a minimal 7.45 `fuse_init_out`. Returns the kernel's
/// offer.
fn handshake(ch: &Channel, buf: &mut RequestBuffer) -> abi::fuse_init_in {
    let n = match ch.read(buf).unwrap() {
        Received::Request(n) => n,
        other => panic!("expected INIT, got {other:?}"),
    };
    let (h, rest) = abi::fuse_in_header::read_from_prefix(&buf[..n]).unwrap();
    assert_eq!(h.opcode.get(), OP_INIT, "the first request is INIT");
    assert_eq!(h.len.get() as usize, n);
    let (init, _) = abi::fuse_init_in::read_from_prefix(rest).unwrap();
    assert_eq!(init.major.get(), 7);
    let out = abi::fuse_init_out {
        major: U32::new(7),
        minor: U32::new(45),
        max_readahead: init.max_readahead,
        flags: U32::new(0),
        max_background: U16::new(16),
        congestion_threshold: U16::new(12),
        max_write: U32::new(4096),
        time_gran: U32::new(1),
        ..Default::default()
    };
    assert_eq!(
        reply(ch, h.unique.get(), 0, out.as_bytes()),
        WriteOutcome::Delivered
    );
    init
}

/// The root's attributes: a 0755 directory, inode 1.
fn root_attr() -> abi::fuse_attr_out {
    abi::fuse_attr_out {
        attr: abi::fuse_attr {
            ino: U64::new(1),
            mode: U32::new(0o040755),
            nlink: U32::new(2),
            blksize: U32::new(4096),
            uid: U32::new(nix::unistd::geteuid().as_raw()),
            gid: U32::new(nix::unistd::getegid().as_raw()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Answer one request: GETATTR with [`root_attr`], FORGETs and INTERRUPT with nothing,
/// anything else ENOSYS. Returns the opcode.
fn answer(ch: &Channel, req: &[u8]) -> u32 {
    let (h, _) = abi::fuse_in_header::read_from_prefix(req).unwrap();
    let op = h.opcode.get();
    match op {
        OP_GETATTR => {
            reply(ch, h.unique.get(), 0, root_attr().as_bytes());
        }
        OP_FORGET | OP_BATCH_FORGET | OP_INTERRUPT => {}
        _ => {
            reply(ch, h.unique.get(), -ENOSYS, &[]);
        }
    }
    op
}

/// Serve on `ch` until `waker` fires; returns the number of GETATTRs answered.
fn serve_until_woken(ch: &Channel, buf: &mut RequestBuffer, waker: &Waker) -> usize {
    let mut getattrs = 0;
    loop {
        match ch.read_or_wake(buf, waker).unwrap() {
            Received::Request(n) => {
                if answer(ch, &buf[..n]) == OP_GETATTR {
                    getattrs += 1;
                }
            }
            Received::Woken => return getattrs,
            Received::Closed => panic!("connection closed while serving"),
        }
    }
}

/// `stat` the mountpoint from another thread while serving, and check the result.
fn stat_while_serving(ch: &Channel, buf: &mut RequestBuffer, mountpoint: &Path) {
    let waker = Arc::new(Waker::new().unwrap());
    let w = Arc::clone(&waker);
    let mp = mountpoint.to_owned();
    let stat = std::thread::spawn(move || {
        let r = std::fs::metadata(&mp);
        w.wake().unwrap();
        r
    });
    let getattrs = serve_until_woken(ch, buf, &waker);
    let meta = stat
        .join()
        .unwrap()
        .expect("stat of the mountpoint succeeds");
    assert!(getattrs >= 1, "stat reached the daemon as GETATTR");
    assert!(meta.is_dir());
    assert_eq!(meta.ino(), 1);
    assert_eq!(meta.mode(), 0o040755);
    assert_eq!(meta.nlink(), 2);
}

fn assert_unmounted(path: &Path) {
    assert_eq!(
        fuse_mount_at(path),
        None,
        "{} is still mounted",
        path.display()
    );
}

// ---------------------------------------------------------------------------------
// Tests

#[test]
fn mount_init_getattr_unmount() {
    if !can_mount() {
        return;
    }
    let tmp = TempDir::new("basic");
    let mp = tmp.subdir("mnt");
    let _cleanup = Cleanup::new(&mp);
    let opts = MountOptions::new()
        .fsname("fuselive-test")
        .subtype("devtest")
        .default_permissions(true)
        .max_read(65536);
    let m = mount(&mp, &opts).expect("mount(2) as root");
    assert_eq!(m.method(), MountMethod::Syscall);
    let conn = m.connection_id().expect("connection id from mountinfo");
    let dog = Watchdog::arm(m.mountpoint(), Some(conn), Duration::from_secs(60)).unwrap();

    let (source, fstype, mopts, sopts) = fuse_mount_at(m.mountpoint()).expect("listed");
    assert_eq!(source, "fuselive-test");
    assert_eq!(fstype, "fuse.devtest");
    assert!(
        mopts.contains("nosuid") && mopts.contains("nodev"),
        "{mopts}"
    );
    for o in [
        "default_permissions",
        "max_read=65536",
        "user_id=0",
        "group_id=0",
    ] {
        assert!(sopts.split(',').any(|x| x == o), "{o} missing from {sopts}");
    }
    assert_eq!(fusectl::connection_id(m.mountpoint()).unwrap(), conn);

    let ch = m.channel().unwrap();
    let mut buf = RequestBuffer::for_any_protocol().unwrap();
    let init = handshake(&ch, &mut buf);
    assert!(init.minor.get() >= 9);

    // Serve the stat from a separate queue (FUSE_DEV_IOC_CLONE), then from a dup.
    let cloned = ch.clone_queue().expect("FUSE_DEV_IOC_CLONE");
    stat_while_serving(&cloned, &mut buf, m.mountpoint());
    drop(cloned);
    let dup = ch.try_clone().unwrap();
    stat_while_serving(&dup, &mut buf, m.mountpoint());

    let mountpoint = m.mountpoint().to_owned();
    m.unmount().expect("unmount");
    assert_unmounted(&mountpoint);
    // The superblock is gone, so the connection is aborted: reads say Closed.
    assert_eq!(dup.read(&mut buf).unwrap(), Received::Closed);
    assert!(!dog.disarm(), "the watchdog did not fire");
}

#[test]
fn watchdog_aborts_an_unanswered_request() {
    if !can_mount() {
        return;
    }
    let tmp = TempDir::new("watchdog");
    let mp = tmp.subdir("mnt");
    let _cleanup = Cleanup::new(&mp);
    let m = mount(&mp, &MountOptions::new().fsname("fuselive-watchdog")).unwrap();
    let ch = m.channel().unwrap();
    let mut buf = RequestBuffer::for_any_protocol().unwrap();
    handshake(&ch, &mut buf);

    let dog = Watchdog::arm(
        m.mountpoint(),
        m.connection_id(),
        Duration::from_millis(500),
    )
    .unwrap();
    let mp2 = m.mountpoint().to_owned();
    let start = Instant::now();
    let stat = std::thread::spawn(move || nix::sys::stat::stat(&mp2));
    // Take the GETATTR and never answer it.
    match ch.read(&mut buf).unwrap() {
        Received::Request(n) => {
            let (h, _) = abi::fuse_in_header::read_from_prefix(&buf[..n]).unwrap();
            assert_eq!(h.opcode.get(), OP_GETATTR);
        }
        other => panic!("expected GETATTR, got {other:?}"),
    }
    let err = stat
        .join()
        .unwrap()
        .expect_err("the watchdog aborts the request");
    assert!(
        err == nix::errno::Errno::ENOTCONN || err == nix::errno::Errno::ECONNABORTED,
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    // The reader learns the connection is gone.
    assert_eq!(ch.read(&mut buf).unwrap(), Received::Closed);
    // Detached by the watchdog (give its thread a moment to finish the unmount).
    let deadline = Instant::now() + Duration::from_secs(10);
    while fuse_mount_at(m.mountpoint()).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_unmounted(m.mountpoint());
    assert!(dog.disarm(), "the watchdog fired");
    // Unmounting a mount that is already gone succeeds.
    m.unmount().unwrap();
}

/// A test that fails (panics) while its watchdog is armed leaves no mount: the
/// watchdog tears the mount down as it is dropped during the unwinding.
#[test]
fn a_panic_with_an_armed_watchdog_tears_the_mount_down() {
    if !can_mount() {
        return;
    }
    let tmp = TempDir::new("watchdog-panic");
    let mp = tmp.subdir("mnt");
    let _cleanup = Cleanup::new(&mp);
    let m = mount(&mp, &MountOptions::new().fsname("fuselive-panic")).unwrap();
    let ch = m.channel().unwrap();
    let mut buf = RequestBuffer::for_any_protocol().unwrap();
    handshake(&ch, &mut buf);
    assert!(fuse_mount_at(m.mountpoint()).is_some());
    let where_ = m.mountpoint().to_owned();
    let conn = m.connection_id();
    let failed = std::thread::spawn(move || {
        let _dog = Watchdog::arm(&where_, conn, Duration::from_secs(600)).unwrap();
        panic!("a test failing with its mount up");
    })
    .join();
    assert!(failed.is_err(), "the thread panicked");
    assert_unmounted(m.mountpoint());
    // Disarmed normally, a watchdog leaves the mount alone.
    let m2 = mount(&mp, &MountOptions::new().fsname("fuselive-panic")).unwrap();
    let ch2 = m2.channel().unwrap();
    handshake(&ch2, &mut buf);
    drop(
        Watchdog::arm(
            m2.mountpoint(),
            m2.connection_id(),
            Duration::from_secs(600),
        )
        .unwrap(),
    );
    assert!(
        fuse_mount_at(m2.mountpoint()).is_some(),
        "dropped without a panic"
    );
    m2.unmount().unwrap();
    drop(ch);
    m.unmount().unwrap();
}

#[test]
fn missing_and_file_mountpoints_are_clear_errors() {
    let tmp = TempDir::new("errors");
    let missing = tmp.0.join("does-not-exist");
    let err = mount(&missing, &MountOptions::new()).unwrap_err();
    assert!(matches!(err, MountError::MountpointMissing(_)), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let file = tmp.0.join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = mount(&file, &MountOptions::new()).unwrap_err();
    assert!(matches!(err, MountError::NotADirectory(_)), "{err:?}");
    assert!(err.to_string().contains("not a directory"), "{err}");

    let dir = tmp.subdir("mnt");
    let err = mount(&dir, &MountOptions::new().fsname("a,allow_other")).unwrap_err();
    assert!(matches!(err, MountError::InvalidOption(_)), "{err:?}");
    assert!(err.to_string().contains("','"), "{err}");
    assert_eq!(fuse_mount_at(&dir), None);
}

#[test]
fn from_parts_refuses_a_non_fuse_descriptor() {
    let f = std::fs::File::open("/proc/self/mountinfo").unwrap();
    let parts = fuse_session::dev::MountParts {
        device: f.into(),
        mountpoint: PathBuf::from("/nonexistent"),
        method: MountMethod::Syscall,
        connection_id: None,
        auto_unmount_socket: None,
    };
    assert!(matches!(
        Mount::from_parts(parts),
        Err(MountError::NotFuseDevice)
    ));
}

#[test]
fn into_parts_and_back_keeps_the_mount_alive() {
    if !can_mount() {
        return;
    }
    let tmp = TempDir::new("parts");
    let mp = tmp.subdir("mnt");
    let _cleanup = Cleanup::new(&mp);
    let m = mount(&mp, &MountOptions::new().fsname("fuselive-parts")).unwrap();
    let dog = Watchdog::arm(m.mountpoint(), m.connection_id(), Duration::from_secs(60)).unwrap();
    let conn = m.connection_id();
    let parts = m.into_parts();
    assert!(fuse_mount_at(&parts.mountpoint).is_some());
    let m = Mount::from_parts(parts).unwrap();
    assert_eq!(m.connection_id(), conn);
    let ch = m.channel().unwrap();
    let mut buf = RequestBuffer::for_any_protocol().unwrap();
    handshake(&ch, &mut buf);
    stat_while_serving(&ch, &mut buf, m.mountpoint());
    let mountpoint = m.mountpoint().to_owned();
    m.unmount().unwrap();
    assert_unmounted(&mountpoint);
    assert!(!dog.disarm());
}

/// Reads per request on the busy path: with requests queued, `read_or_wake` makes one
/// `read(2)` per request and nothing else (`syscr` counts read-family syscalls of this
/// thread; an `EAGAIN` read, which would precede any `poll`, would show as an extra).
#[test]
fn busy_path_is_one_read_per_request() {
    if !can_mount() {
        return;
    }
    let tmp = TempDir::new("busy");
    let mp = tmp.subdir("mnt");
    let _cleanup = Cleanup::new(&mp);
    let m = mount(&mp, &MountOptions::new().fsname("fuselive-busy")).unwrap();
    let conn = m.connection_id().unwrap();
    let dog = Watchdog::arm(m.mountpoint(), Some(conn), Duration::from_secs(60)).unwrap();
    let ch = m.channel().unwrap();
    let mut buf = RequestBuffer::for_any_protocol().unwrap();
    handshake(&ch, &mut buf);

    const N: usize = 8;
    let stats: Vec<_> = (0..N)
        .map(|_| {
            let mp = m.mountpoint().to_owned();
            // stat(2), not statx with extra fields: a GETATTR, never a STATX.
            std::thread::spawn(move || nix::sys::stat::stat(&mp))
        })
        .collect();
    // Wait until all N GETATTRs are queued (fusectl's `waiting` counts them).
    let deadline = Instant::now() + Duration::from_secs(20);
    while fusectl::waiting(conn).unwrap() < N as u64 {
        assert!(Instant::now() < deadline, "requests did not queue");
        std::thread::sleep(Duration::from_millis(5));
    }
    let waker = Waker::new().unwrap();
    let mut requests = Vec::new();
    // What sampling itself costs (the reads of the /proc file by the first sample).
    let overhead = {
        let a = syscr();
        syscr() - a
    };
    let before = syscr();
    for _ in 0..N {
        match ch.read_or_wake(&mut buf, &waker).unwrap() {
            Received::Request(n) => requests.push(buf[..n].to_vec()),
            other => panic!("expected a request, got {other:?}"),
        }
    }
    let reads = syscr() - before - overhead;
    assert_eq!(reads, N as u64, "one read(2) per request on the busy path");
    for r in &requests {
        assert_eq!(answer(&ch, r), OP_GETATTR);
    }
    for s in stats {
        assert_eq!(s.join().unwrap().unwrap().st_ino, 1);
    }
    eprintln!("busy path: {reads} read syscalls for {N} requests");
    m.unmount().unwrap();
    assert!(!dog.disarm());
}

/// Read-family syscalls made by this thread so far.
fn syscr() -> u64 {
    // Reading the file costs read syscalls of this thread too: the caller measures
    // that overhead (two samples in a row) and subtracts it.
    let text = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    let line = text.lines().find(|l| l.starts_with("syscr:")).unwrap();
    line[6..].trim().parse().unwrap()
}

/// Mount as user `nobody` through `fusermount3`, in a child process.
#[test]
fn unprivileged_mount_through_fusermount3() {
    if !can_mount() {
        return;
    }
    if find_fusermount().is_none() {
        skip("fusermount3 is not installed (apt-get install fuse3)");
        return;
    }
    let nobody = match nix::unistd::User::from_name("nobody").unwrap() {
        Some(u) => u,
        None => {
            skip("there is no user nobody");
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode();
        if mode & 0o006 != 0o006 {
            skip(&format!(
                "/dev/fuse has mode {:o}: fusermount3 opens it as the calling user, so \
                 unprivileged mounts need mode 0666 (what distributions set; \
                 `chmod 0666 /dev/fuse`)",
                mode & 0o777
            ));
            return;
        }
    }
    let tmp = TempDir::new("user");
    let mp = tmp.subdir("mnt");
    let _cleanup = Cleanup::new(&mp);
    nix::unistd::chown(&mp, Some(nobody.uid), Some(nobody.gid)).unwrap();
    // A copy of this test binary that `nobody` can execute wherever the build is.
    let exe = tmp.0.join("dev_mount_child");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let dog = Watchdog::arm(&mp, None, Duration::from_secs(60)).unwrap();

    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(&exe)
        .args([
            "--exact",
            "unprivileged_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &mp)
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the unprivileged child hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "the unprivileged child failed: {status:?}"
    );
    assert_unmounted(&mp);
    assert!(!dog.disarm(), "the watchdog did not have to fire");
}

/// The child of `unprivileged_mount_through_fusermount3`; a no-op in a normal run.
#[test]
fn unprivileged_child() {
    let Some(mp) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mp = PathBuf::from(mp);
    assert!(
        !nix::unistd::geteuid().is_root(),
        "runs as an ordinary user"
    );
    let m = mount(
        &mp,
        &MountOptions::new()
            .fsname("fuselive-user")
            .subtype("devtest"),
    )
    .unwrap_or_else(|e| panic!("mount through fusermount3: {e}"));
    assert_eq!(
        m.method(),
        MountMethod::Fusermount {
            auto_unmount: false
        }
    );
    assert!(m.connection_id().is_some());
    let (source, fstype, _, sopts) = fuse_mount_at(m.mountpoint()).expect("listed");
    assert_eq!(source, "fuselive-user");
    assert_eq!(fstype, "fuse.devtest");
    let uid = format!("user_id={}", nix::unistd::getuid());
    assert!(sopts.split(',').any(|o| o == uid), "{sopts}");

    let ch = m.channel().unwrap();
    let mut buf = RequestBuffer::for_any_protocol().unwrap();
    handshake(&ch, &mut buf);
    stat_while_serving(&ch, &mut buf, m.mountpoint());
    let mountpoint = m.mountpoint().to_owned();
    m.unmount()
        .unwrap_or_else(|e| panic!("fusermount3 -u -z: {e}"));
    assert_unmounted(&mountpoint);
    assert_eq!(ch.read(&mut buf).unwrap(), Received::Closed);
}

/// `auto_unmount` goes through `fusermount3` even as root; an explicit unmount reaps
/// the helper, and closing the helper's socket (the last copy) makes it unmount.
#[test]
fn auto_unmount_through_fusermount3() {
    if !can_mount() {
        return;
    }
    if find_fusermount().is_none() {
        skip("fusermount3 is not installed (apt-get install fuse3)");
        return;
    }
    let tmp = TempDir::new("auto");
    let mp = tmp.subdir("mnt");
    let _cleanup = Cleanup::new(&mp);
    let dog = Watchdog::arm(&mp, None, Duration::from_secs(60)).unwrap();
    let opts = MountOptions::new()
        .fsname("fuselive-auto")
        .auto_unmount(true);

    // Explicit unmount.
    let m = mount(&mp, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.method(), MountMethod::Fusermount { auto_unmount: true });
    let ch = m.channel().unwrap();
    let mut buf = RequestBuffer::for_any_protocol().unwrap();
    handshake(&ch, &mut buf);
    stat_while_serving(&ch, &mut buf, m.mountpoint());
    let mountpoint = m.mountpoint().to_owned();
    m.unmount().unwrap_or_else(|e| panic!("{e}"));
    assert_unmounted(&mountpoint);
    drop(ch);

    // Closing the socket: the helper unmounts.
    let m = mount(&mp, &opts).unwrap_or_else(|e| panic!("{e}"));
    let parts = m.into_parts();
    let socket = parts.auto_unmount_socket.expect("the helper's socket");
    assert!(fuse_mount_at(&mountpoint).is_some());
    drop(socket);
    drop(parts.device);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fuse_mount_at(&mountpoint).is_some() {
        assert!(
            Instant::now() < deadline,
            "fusermount3 did not auto-unmount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!dog.disarm());
}
