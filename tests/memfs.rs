//! memfs end to end: the `memfs` example mounted on a real kernel mount (as root),
//! every operation exercised through std, rustix and nix from this process, with
//! permission checks from children that drop to `nobody`, and concurrent workloads.
//!
//! The `core` module tests memfs's state directly (no mount): the rules, the
//! invariants a restore checks, and serialization.
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use rustix::fs::{
    AtFlags, FallocateFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps, XattrFlags, CWD,
};
use rustix::io::Errno;

mod common;
use common::{as_user, can_mount, errno_of, nobody, pattern, Mounted};

// memfs's own modules (the memfs workspace crate).
use memfs::{data, fs as fs_impl, state};

/// Mounts memfs (with `allow_other`, so that children running as `nobody` get in)
/// unless this machine cannot mount, in which case the test is skipped.
fn memfs(test: &str) -> Option<Mounted> {
    memfs_with(test, &[], &[])
}

fn memfs_with(test: &str, args: &[&str], env: &[(&str, &str)]) -> Option<Mounted> {
    if !can_mount(test) {
        return None;
    }
    let mut all = vec!["--allow-other"];
    all.extend_from_slice(args);
    Some(Mounted::start("memfs", &all, env))
}

fn errno<T>(r: std::io::Result<T>) -> Errno {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => Errno::from_io_error(&e).expect("an OS error"),
    }
}

fn rerrno<T: std::fmt::Debug>(r: rustix::io::Result<T>) -> Errno {
    r.expect_err("expected an error")
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn free_blocks(m: &Mounted) -> u64 {
    rustix::fs::statvfs(&m.mnt).unwrap().f_bfree
}

/// Waits until `f` holds (the kernel sends FORGET and RELEASE asynchronously).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ts(secs: i64, nanos: i64) -> Timespec {
    Timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    }
}

fn mtime_of(md: &fs::Metadata) -> (i64, i64) {
    (md.mtime(), md.mtime_nsec())
}

fn ctime_of(md: &fs::Metadata) -> (i64, i64) {
    (md.ctime(), md.ctime_nsec())
}

#[test]
fn cli_contract() {
    if !can_mount("cli_contract") {
        return;
    }
    let bin = common::example_binary("memfs");
    for args in [
        &[][..],
        &["a", "b"],
        &["a", "--threads"],
        &["a", "--threads", "x"],
        &["a", "--nope"],
    ] {
        let out = std::process::Command::new(&bin)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "args {args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage: memfs MOUNTPOINT"),
            "args {args:?}"
        );
        assert!(out.stdout.is_empty());
    }
    // SIGTERM and SIGINT unmount and exit 0.
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut m = Mounted::start("memfs", &["--threads", "3", "--ttl", "0.5"], &[]);
        fs::write(m.path("x"), b"x").unwrap();
        m.signal(sig);
        let st = m
            .wait_exit(Duration::from_secs(30))
            .expect("exit on signal");
        assert_eq!(st.code(), Some(0), "{sig:?}");
        assert!(!common::is_fuse_mounted(&m.mnt));
    }
    // Unmounted from outside: exits 0 by itself.
    let mut m = Mounted::start("memfs", &[], &[]);
    nix::mount::umount(&m.mnt).unwrap();
    let st = m
        .wait_exit(Duration::from_secs(30))
        .expect("exit after umount");
    assert_eq!(st.code(), Some(0));
    assert!(!m.log_text().contains("ERROR"), "log: {}", m.log_text());
}

#[test]
fn files_holes_and_attributes() {
    let Some(m) = memfs("files_holes_and_attributes") else {
        return;
    };
    let p = m.path("f");
    fs::write(&p, b"hello world").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello world");
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_at(b"WORLD", 6).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello WORLD");
    let md = fs::metadata(&p).unwrap();
    assert_eq!(
        (md.len(), md.blocks(), md.nlink(), md.blksize()),
        (11, 8, 1, 4096)
    );
    assert!(md.is_file());
    chmod(&p, 0o640);
    assert_eq!(fs::metadata(&p).unwrap().mode(), 0o100640);
    // A write past the end leaves a hole that reads as zeros and costs nothing.
    f.write_at(b"x", 10_000).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.len(), md.blocks()), (10_001, 16));
    let mut buf = vec![1u8; 10_001];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..11], b"hello WORLD");
    assert!(buf[11..10_000].iter().all(|&b| b == 0));
    assert_eq!(buf[10_000], b'x');
    // Inode numbers: distinct per file, stable across renames, the root is 1.
    fs::write(m.path("g"), b"").unwrap();
    let (a, b) = (
        fs::metadata(&p).unwrap().ino(),
        fs::metadata(m.path("g")).unwrap().ino(),
    );
    assert_ne!(a, b);
    fs::rename(&p, m.path("f2")).unwrap();
    assert_eq!(fs::metadata(m.path("f2")).unwrap().ino(), a);
    assert_eq!(fs::metadata(&m.mnt).unwrap().ino(), 1);
    // A 1 TiB sparse file costs one chunk.
    let big = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("big"))
        .unwrap();
    big.set_len(1 << 40).unwrap();
    big.write_at(b"end", (1 << 40) - 3).unwrap();
    let md = big.metadata().unwrap();
    assert_eq!((md.len(), md.blocks()), (1 << 40, 8));
    let mut mid = vec![7u8; 1 << 16];
    big.read_exact_at(&mut mid, 1 << 39).unwrap();
    assert!(mid.iter().all(|&b| b == 0));
    let mut end = [0u8; 3];
    big.read_exact_at(&mut end, (1 << 40) - 3).unwrap();
    assert_eq!(&end, b"end");
    // A large write and read back (several max_write-sized requests).
    let data = pattern(1, 5 << 20);
    fs::write(m.path("large"), &data).unwrap();
    assert!(
        fs::read(m.path("large")).unwrap() == data,
        "5 MiB round trip"
    );
    // Names: 255 bytes fit, 256 do not.
    fs::write(m.path(&"n".repeat(255)), b"").unwrap();
    assert_eq!(
        errno(fs::write(m.path(&"n".repeat(256)), b"")),
        Errno::NAMETOOLONG
    );
    assert_eq!(
        errno(fs::metadata(m.path(&"n".repeat(256)))),
        Errno::NAMETOOLONG
    );
    assert_eq!(errno(fs::metadata(m.path("missing"))), Errno::NOENT);
    let st = rustix::fs::statvfs(&m.mnt).unwrap();
    assert_eq!((st.f_bsize, st.f_namemax), (4096, 255));
    assert!(st.f_blocks > st.f_bfree);
}

#[test]
fn directories_and_readdir() {
    let Some(m) = memfs("directories_and_readdir") else {
        return;
    };
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    assert_eq!(fs::metadata(&m.mnt).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
    for i in 0..3 {
        fs::create_dir(d.join(format!("sub{i}"))).unwrap();
    }
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 5);
    assert_eq!(errno(fs::create_dir(&d)), Errno::EXIST);
    assert_eq!(errno(fs::remove_dir(&d)), Errno::NOTEMPTY);
    assert_eq!(errno(fs::remove_file(d.join("sub0"))), Errno::ISDIR);
    fs::write(d.join("file"), b"").unwrap();
    assert_eq!(errno(fs::remove_dir(d.join("file"))), Errno::NOTDIR);
    assert_eq!(errno(fs::create_dir(d.join("file/x"))), Errno::NOTDIR);
    fs::remove_dir(d.join("sub2")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 4);
    // Many entries: listed over several READDIR(PLUS) requests, each exactly once.
    let big = m.path("big");
    fs::create_dir(&big).unwrap();
    let mut want: Vec<String> = (0..1500)
        .map(|i| format!("entry-with-a-longish-name-{i:05}"))
        .collect();
    for n in &want {
        File::create(big.join(n)).unwrap();
    }
    let mut got: Vec<String> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Attributes from the listing agree with stat.
    for e in fs::read_dir(&d).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        assert_eq!(e.metadata().unwrap().ino(), md.ino());
        assert_eq!(e.file_type().unwrap().is_dir(), md.is_dir());
    }
    // Removing entries while listing (rm -r): every entry is still seen exactly once.
    let mut seen = std::collections::BTreeSet::new();
    for e in fs::read_dir(&big).unwrap() {
        let e = e.unwrap();
        assert!(
            seen.insert(e.file_name()),
            "{:?} listed twice",
            e.file_name()
        );
        fs::remove_file(e.path()).unwrap();
    }
    assert_eq!(seen.len(), 1500);
    fs::remove_dir(&big).unwrap();
    // "." and ".." in listings.
    let mut names: Vec<_> = Vec::new();
    let dir =
        rustix::fs::openat(CWD, &d, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for e in rustix::fs::Dir::read_from(&dir).unwrap() {
        let e = e.unwrap();
        names.push((e.file_name().to_string_lossy().into_owned(), e.ino()));
    }
    names.sort();
    let root_ino = fs::metadata(&m.mnt).unwrap().ino();
    let d_ino = fs::metadata(&d).unwrap().ino();
    assert_eq!(
        &names[..2],
        &[(".".to_string(), d_ino), ("..".to_string(), root_ino)]
    );
}

#[test]
fn readdirplus_is_used() {
    let Some(m) = memfs_with("readdirplus_is_used", &[], &[("RUST_LOG", "debug")]) else {
        return;
    };
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..10 {
        fs::write(m.path(&format!("d/f{i}")), format!("{i}")).unwrap();
    }
    let sizes: u64 = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(sizes, 10);
    assert!(
        m.log_text().contains("<- READDIRPLUS"),
        "no READDIRPLUS in the log"
    );
}

#[test]
fn symlinks_and_hard_links() {
    let Some(m) = memfs("symlinks_and_hard_links") else {
        return;
    };
    let s = m.path("s");
    std::os::unix::fs::symlink("no/such/target", &s).unwrap();
    assert_eq!(fs::read_link(&s).unwrap(), Path::new("no/such/target"));
    let md = fs::symlink_metadata(&s).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!((md.len(), md.mode() & 0o777), (14, 0o777));
    assert_eq!(errno(fs::metadata(&s)), Errno::NOENT);
    let long = "x/".repeat(1000);
    std::os::unix::fs::symlink(&long, m.path("long")).unwrap();
    assert_eq!(fs::read_link(m.path("long")).unwrap(), Path::new(&long));
    std::os::unix::fs::symlink("l2", m.path("l1")).unwrap();
    std::os::unix::fs::symlink("l1", m.path("l2")).unwrap();
    assert_eq!(errno(fs::metadata(m.path("l1"))), Errno::LOOP);
    // Through a symlink to a file.
    fs::write(m.path("a"), b"one").unwrap();
    std::os::unix::fs::symlink("a", m.path("to-a")).unwrap();
    assert_eq!(fs::read(m.path("to-a")).unwrap(), b"one");
    // Hard links share the inode.
    fs::hard_link(m.path("a"), m.path("b")).unwrap();
    let (ma, mb) = (
        fs::metadata(m.path("a")).unwrap(),
        fs::metadata(m.path("b")).unwrap(),
    );
    assert_eq!((ma.ino(), ma.nlink(), mb.nlink()), (mb.ino(), 2, 2));
    fs::write(m.path("b"), b"two").unwrap();
    assert_eq!(fs::read(m.path("a")).unwrap(), b"two");
    fs::remove_file(m.path("a")).unwrap();
    assert_eq!(fs::metadata(m.path("b")).unwrap().nlink(), 1);
    assert_eq!(fs::read(m.path("b")).unwrap(), b"two");
    assert_eq!(errno(fs::hard_link(m.path("b"), m.path("b"))), Errno::EXIST);
    fs::create_dir(m.path("d")).unwrap();
    assert_eq!(errno(fs::hard_link(m.path("d"), m.path("d2"))), Errno::PERM);
    fs::hard_link(m.path("b"), m.path("d/b")).unwrap();
    assert_eq!(fs::metadata(m.path("d/b")).unwrap().nlink(), 2);
}

#[test]
fn device_nodes_fifos_and_sockets() {
    use rustix::fs::FileType as T;
    let Some(m) = memfs("device_nodes_fifos_and_sockets") else {
        return;
    };
    let mode = Mode::from_raw_mode(0o644);
    rustix::fs::mknodat(CWD, m.path("fifo"), T::Fifo, mode, 0).unwrap();
    rustix::fs::mknodat(
        CWD,
        m.path("null"),
        T::CharacterDevice,
        mode,
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        m.path("loop"),
        T::BlockDevice,
        mode,
        rustix::fs::makedev(7, 200),
    )
    .unwrap();
    rustix::fs::mknodat(CWD, m.path("plain"), T::RegularFile, mode, 0).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(m.path("sock")).unwrap();
    let st = |n: &str| rustix::fs::lstat(m.path(n)).unwrap();
    assert_eq!(T::from_raw_mode(st("fifo").st_mode), T::Fifo);
    assert_eq!(T::from_raw_mode(st("null").st_mode), T::CharacterDevice);
    assert_eq!(st("null").st_rdev, rustix::fs::makedev(1, 3));
    assert_eq!(T::from_raw_mode(st("loop").st_mode), T::BlockDevice);
    assert_eq!(st("loop").st_rdev, rustix::fs::makedev(7, 200));
    assert_eq!(T::from_raw_mode(st("plain").st_mode), T::RegularFile);
    assert_eq!(T::from_raw_mode(st("sock").st_mode), T::Socket);
    // A fifo on memfs is a pipe (the kernel serves it).
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("fifo"))
        .unwrap();
    f.write_all(b"through the pipe").unwrap();
    let mut buf = [0u8; 16];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"through the pipe");
    // FUSE mounts are nodev: the device node exists but cannot be opened.
    assert_eq!(errno(File::open(m.path("null"))), Errno::ACCESS);
    // A unix socket bound on memfs accepts connections.
    let mut c = std::os::unix::net::UnixStream::connect(m.path("sock")).unwrap();
    let (mut s, _) = sock.accept().unwrap();
    c.write_all(b"hi").unwrap();
    let mut two = [0u8; 2];
    s.read_exact(&mut two).unwrap();
    assert_eq!(&two, b"hi");
    assert_eq!(
        rerrno(rustix::fs::mknodat(CWD, m.path("fifo"), T::Fifo, mode, 0)),
        Errno::EXIST
    );
}

#[test]
fn extended_attributes() {
    let Some(m) = memfs("extended_attributes") else {
        return;
    };
    let p = m.path("f");
    fs::write(&p, b"").unwrap();
    let none = XattrFlags::empty();
    let ctime0 = ctime_of(&fs::metadata(&p).unwrap());
    std::thread::sleep(Duration::from_millis(20));
    rustix::fs::setxattr(&p, "user.a", b"1", none).unwrap();
    assert_ne!(
        ctime_of(&fs::metadata(&p).unwrap()),
        ctime0,
        "setxattr changes ctime"
    );
    rustix::fs::setxattr(&p, "user.b", &[7u8; 100], none).unwrap();
    let mut buf = [0u8; 256];
    let n = rustix::fs::getxattr(&p, "user.a", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"1");
    assert_eq!(rustix::fs::getxattr_query(&p, "user.b").unwrap(), 100);
    assert_eq!(
        rerrno(rustix::fs::getxattr(&p, "user.b", &mut buf[..10])),
        Errno::RANGE
    );
    assert_eq!(
        rerrno(rustix::fs::getxattr(&p, "user.none", &mut buf[..])),
        Errno::NODATA
    );
    assert_eq!(
        rerrno(rustix::fs::setxattr(&p, "user.a", b"2", XattrFlags::CREATE)),
        Errno::EXIST
    );
    assert_eq!(
        rerrno(rustix::fs::setxattr(
            &p,
            "user.c",
            b"2",
            XattrFlags::REPLACE
        )),
        Errno::NODATA
    );
    rustix::fs::setxattr(&p, "user.a", b"22", XattrFlags::REPLACE).unwrap();
    rustix::fs::setxattr(&p, "user.c", b"", XattrFlags::CREATE).unwrap();
    assert_eq!(rustix::fs::getxattr_query(&p, "user.c").unwrap(), 0);
    let n = rustix::fs::listxattr(&p, &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"user.a\0user.b\0user.c\0");
    assert_eq!(rustix::fs::listxattr_query(&p).unwrap(), n);
    assert_eq!(
        rerrno(rustix::fs::listxattr(&p, &mut buf[..5])),
        Errno::RANGE
    );
    rustix::fs::removexattr(&p, "user.b").unwrap();
    assert_eq!(rerrno(rustix::fs::removexattr(&p, "user.b")), Errno::NODATA);
    let n = rustix::fs::listxattr(&p, &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"user.a\0user.c\0");
    // The largest value the kernel allows.
    let big = pattern(3, 65536);
    rustix::fs::setxattr(&p, "user.big", &big, none).unwrap();
    let mut out = vec![0u8; 65536];
    assert_eq!(
        rustix::fs::getxattr(&p, "user.big", &mut out[..]).unwrap(),
        65536
    );
    assert!(out == big);
    // Namespaces: trusted (root), security; system (ACLs) and unknown are refused.
    rustix::fs::setxattr(&p, "trusted.t", b"t", none).unwrap();
    rustix::fs::setxattr(&p, "security.s", b"s", none).unwrap();
    assert_eq!(
        rerrno(rustix::fs::setxattr(&p, "system.other", b"x", none)),
        Errno::OPNOTSUPP
    );
    assert_eq!(
        rerrno(rustix::fs::setxattr(&p, "bogus.x", b"x", none)),
        Errno::OPNOTSUPP
    );
    // Directories carry user xattrs; symlinks may not (the kernel's rule).
    fs::create_dir(m.path("d")).unwrap();
    rustix::fs::setxattr(m.path("d"), "user.d", b"dir", none).unwrap();
    let n = rustix::fs::getxattr(m.path("d"), "user.d", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"dir");
    std::os::unix::fs::symlink("f", m.path("s")).unwrap();
    assert_eq!(
        rerrno(rustix::fs::lsetxattr(m.path("s"), "user.x", b"x", none)),
        Errno::PERM
    );
    rustix::fs::lsetxattr(m.path("s"), "trusted.x", b"x", none).unwrap();
}

#[test]
fn rename_rules() {
    let Some(m) = memfs("rename_rules") else {
        return;
    };
    let p = |n: &str| m.path(n);
    fs::write(p("a"), b"A").unwrap();
    fs::write(p("b"), b"B").unwrap();
    let ino_a = fs::metadata(p("a")).unwrap().ino();
    fs::rename(p("a"), p("b")).unwrap();
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    assert_eq!(fs::metadata(p("b")).unwrap().ino(), ino_a);
    assert_eq!(errno(fs::metadata(p("a"))), Errno::NOENT);
    // Directory over an empty directory, and the parent's link count.
    for d in ["d1", "d2", "full", "full/x"] {
        fs::create_dir(p(d)).unwrap();
    }
    let root_links = fs::metadata(&m.mnt).unwrap().nlink();
    fs::rename(p("d1"), p("d2")).unwrap();
    assert_eq!(fs::metadata(&m.mnt).unwrap().nlink(), root_links - 1);
    assert_eq!(errno(fs::metadata(p("d1"))), Errno::NOENT);
    assert_eq!(errno(fs::rename(p("d2"), p("b"))), Errno::NOTDIR);
    assert_eq!(errno(fs::rename(p("b"), p("d2"))), Errno::ISDIR);
    assert_eq!(errno(fs::rename(p("d2"), p("full"))), Errno::NOTEMPTY);
    assert_eq!(
        errno(fs::rename(p("full"), p("full/x/inside"))),
        Errno::INVAL
    );
    assert_eq!(errno(fs::rename(p("nothing"), p("x"))), Errno::NOENT);
    // Moving a directory: link counts of both parents and its "..".
    let (full_links, x_ino) = (
        fs::metadata(p("full")).unwrap().nlink(),
        fs::metadata(p("full/x")).unwrap().ino(),
    );
    fs::rename(p("full/x"), p("d2/x")).unwrap();
    assert_eq!(fs::metadata(p("full")).unwrap().nlink(), full_links - 1);
    assert_eq!(fs::metadata(p("d2")).unwrap().nlink(), 3);
    assert_eq!(
        fs::metadata(p("d2/x/..")).unwrap().ino(),
        fs::metadata(p("d2")).unwrap().ino()
    );
    assert_eq!(fs::metadata(p("d2/x")).unwrap().ino(), x_ino);
    // Parents' times change.
    let before = fs::metadata(p("full")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::write(p("full/f"), b"").unwrap();
    fs::rename(p("full/f"), p("d2/f")).unwrap();
    let after = fs::metadata(p("full")).unwrap();
    assert_ne!(mtime_of(&before), mtime_of(&after));
    // RENAME_NOREPLACE.
    fs::write(p("n1"), b"1").unwrap();
    let e = rerrno(rustix::fs::renameat_with(
        CWD,
        p("n1"),
        CWD,
        p("b"),
        RenameFlags::NOREPLACE,
    ));
    assert_eq!(e, Errno::EXIST);
    rustix::fs::renameat_with(CWD, p("n1"), CWD, p("n2"), RenameFlags::NOREPLACE).unwrap();
    assert_eq!(fs::read(p("n2")).unwrap(), b"1");
    // RENAME_EXCHANGE of a file and a directory in different parents.
    fs::create_dir(p("P")).unwrap();
    fs::create_dir(p("Q")).unwrap();
    fs::write(p("P/file"), b"F").unwrap();
    fs::create_dir(p("Q/dir")).unwrap();
    let (pl, ql) = (
        fs::metadata(p("P")).unwrap().nlink(),
        fs::metadata(p("Q")).unwrap().nlink(),
    );
    rustix::fs::renameat_with(CWD, p("P/file"), CWD, p("Q/dir"), RenameFlags::EXCHANGE).unwrap();
    assert!(fs::metadata(p("P/file")).unwrap().is_dir());
    assert_eq!(fs::read(p("Q/dir")).unwrap(), b"F");
    assert_eq!(fs::metadata(p("P")).unwrap().nlink(), pl + 1);
    assert_eq!(fs::metadata(p("Q")).unwrap().nlink(), ql - 1);
    assert_eq!(
        fs::metadata(p("P/file/..")).unwrap().ino(),
        fs::metadata(p("P")).unwrap().ino()
    );
    let e = rerrno(rustix::fs::renameat_with(
        CWD,
        p("P/file"),
        CWD,
        p("Q/none"),
        RenameFlags::EXCHANGE,
    ));
    assert_eq!(e, Errno::NOENT);
    let e = rerrno(rustix::fs::renameat_with(
        CWD,
        p("P"),
        CWD,
        p("P/file/in"),
        RenameFlags::empty(),
    ));
    assert_eq!(e, Errno::INVAL);
    // Two names of one inode: rename does nothing.
    fs::hard_link(p("b"), p("h")).unwrap();
    fs::rename(p("b"), p("h")).unwrap();
    assert!(p("b").exists() && p("h").exists());
    assert_eq!(fs::metadata(p("h")).unwrap().nlink(), 2);
    // Renaming over a file that is open keeps the old contents readable.
    fs::write(p("victim"), b"old").unwrap();
    let mut open = File::open(p("victim")).unwrap();
    fs::write(p("new"), b"new").unwrap();
    fs::rename(p("new"), p("victim")).unwrap();
    let mut s = String::new();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(
        (s.as_str(), fs::read(p("victim")).unwrap()),
        ("old", b"new".to_vec())
    );
}

#[test]
fn truncate_fallocate_and_seek() {
    let Some(m) = memfs("truncate_fallocate_and_seek") else {
        return;
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("t"))
        .unwrap();
    f.write_all_at(&[0xaa; 10_000], 0).unwrap();
    f.set_len(5000).unwrap();
    let mut buf = vec![0u8; 5000];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0xaa));
    f.set_len(20_000).unwrap();
    let mut buf = vec![1u8; 15_000];
    f.read_exact_at(&mut buf, 5000).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "extended area reads zeros (the truncated tail was cleared)"
    );
    assert_eq!(f.metadata().unwrap().blocks(), 16);
    // Mode 0 allocates and extends.
    rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, 1 << 20).unwrap();
    let md = f.metadata().unwrap();
    assert_eq!((md.len(), md.blocks()), (1 << 20, 2048));
    // KEEP_SIZE allocates without changing the size; truncating frees it.
    let g = File::create(m.path("g")).unwrap();
    rustix::fs::fallocate(&g, FallocateFlags::KEEP_SIZE, 0, 65536).unwrap();
    let md = g.metadata().unwrap();
    assert_eq!((md.len(), md.blocks()), (0, 128));
    g.set_len(0).unwrap();
    assert_eq!(g.metadata().unwrap().blocks(), 0);
    // PUNCH_HOLE | KEEP_SIZE.
    let h = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("h"))
        .unwrap();
    h.write_all_at(&[0xbb; 3 * 4096], 0).unwrap();
    rustix::fs::fallocate(
        &h,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        4096,
        4096,
    )
    .unwrap();
    let md = h.metadata().unwrap();
    assert_eq!((md.len(), md.blocks()), (3 * 4096, 16));
    let mut buf = vec![0u8; 3 * 4096];
    h.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0xbb));
    assert!(buf[4096..8192].iter().all(|&b| b == 0));
    assert!(buf[8192..].iter().all(|&b| b == 0xbb));
    // SEEK_DATA / SEEK_HOLE.
    let data = |o| rustix::fs::seek(&h, rustix::fs::SeekFrom::Data(o));
    let hole = |o| rustix::fs::seek(&h, rustix::fs::SeekFrom::Hole(o));
    assert_eq!((data(0), hole(0)), (Ok(0), Ok(4096)));
    assert_eq!((data(4096), hole(8192)), (Ok(8192), Ok(3 * 4096)));
    assert_eq!(data(100), Ok(100));
    assert_eq!(data(3 * 4096), Err(Errno::NXIO));
    assert_eq!(hole(3 * 4096), Err(Errno::NXIO));
    // ZERO_RANGE zeroes inside allocated data; partial punches zero bytes.
    rustix::fs::fallocate(&h, FallocateFlags::ZERO_RANGE, 100, 200).unwrap();
    rustix::fs::fallocate(
        &h,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        9000,
        10,
    )
    .unwrap();
    h.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 0xbb) && buf[100..300].iter().all(|&b| b == 0));
    assert!(buf[300..4096].iter().all(|&b| b == 0xbb));
    assert!(buf[9000..9010].iter().all(|&b| b == 0) && buf[9010] == 0xbb && buf[8999] == 0xbb);
    // ZERO_RANGE past the end extends the file.
    rustix::fs::fallocate(&h, FallocateFlags::ZERO_RANGE, 3 * 4096, 4096).unwrap();
    assert_eq!(h.metadata().unwrap().len(), 4 * 4096);
    // Unsupported modes.
    let e = rerrno(rustix::fs::fallocate(
        &h,
        FallocateFlags::COLLAPSE_RANGE,
        0,
        4096,
    ));
    assert_eq!(e, Errno::OPNOTSUPP);
    assert_eq!(
        rerrno(rustix::fs::fallocate(
            &h,
            FallocateFlags::PUNCH_HOLE,
            0,
            4096
        )),
        Errno::OPNOTSUPP
    );
    // A sparse file: data only where written.
    let s = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("s"))
        .unwrap();
    s.set_len(1 << 20).unwrap();
    s.write_all_at(b"data", 512 << 10).unwrap();
    assert_eq!(
        rustix::fs::seek(&s, rustix::fs::SeekFrom::Data(0)),
        Ok(512 << 10)
    );
    assert_eq!(
        rustix::fs::seek(&s, rustix::fs::SeekFrom::Hole(512 << 10)),
        Ok((512 << 10) + 4096)
    );
    assert_eq!(rustix::fs::seek(&s, rustix::fs::SeekFrom::Hole(0)), Ok(0));
    // truncate(2) by path, shrinking to zero and growing again.
    rustix::fs::ftruncate(&s, 0).unwrap();
    assert_eq!(s.metadata().unwrap().blocks(), 0);
    s.set_len(10).unwrap();
    let mut ten = [9u8; 10];
    s.read_exact_at(&mut ten, 0).unwrap();
    assert_eq!(ten, [0; 10]);
}

#[test]
fn copy_file_range_keeps_holes() {
    let Some(m) = memfs("copy_file_range_keeps_holes") else {
        return;
    };
    let src = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("src"))
        .unwrap();
    let body = pattern(5, 3 * 4096 + 10);
    src.write_all_at(&body, 0).unwrap();
    src.write_all_at(b"tail", 1 << 20).unwrap();
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("dst"))
        .unwrap();
    let total = src.metadata().unwrap().len();
    let (mut off_in, mut off_out) = (0u64, 0u64);
    while off_in < total {
        let len = (total - off_in) as usize;
        let n = rustix::fs::copy_file_range(&src, Some(&mut off_in), &dst, Some(&mut off_out), len)
            .unwrap();
        assert!(n > 0);
    }
    assert_eq!(
        fs::read(m.path("dst")).unwrap(),
        fs::read(m.path("src")).unwrap()
    );
    // Holes stay holes: memfs copied it (a generic fallback would write zeros).
    assert_eq!(
        dst.metadata().unwrap().blocks(),
        src.metadata().unwrap().blocks()
    );
    assert_eq!(dst.metadata().unwrap().blocks(), 5 * 8);
    // Within one file, to a non-overlapping range.
    let (mut i, mut o) = (0u64, 100_000u64);
    assert_eq!(
        rustix::fs::copy_file_range(&src, Some(&mut i), &src, Some(&mut o), 100).unwrap(),
        100
    );
    let mut got = [0u8; 100];
    src.read_exact_at(&mut got, 100_000).unwrap();
    assert_eq!(&got[..], &body[..100]);
    // From beyond the source's end: nothing.
    let (mut i, mut o) = (total + 10, 0u64);
    assert_eq!(
        rustix::fs::copy_file_range(&src, Some(&mut i), &dst, Some(&mut o), 100).unwrap(),
        0
    );
    // Overlapping ranges of one file are refused.
    let (mut i, mut o) = (0u64, 50u64);
    assert_eq!(
        rerrno(rustix::fs::copy_file_range(
            &src,
            Some(&mut i),
            &src,
            Some(&mut o),
            100
        )),
        Errno::INVAL
    );
}

#[test]
fn append_and_open_truncate() {
    let Some(m) = memfs("append_and_open_truncate") else {
        return;
    };
    let p = m.path("log");
    fs::write(&p, b"abc").unwrap();
    let mut a = OpenOptions::new().append(true).open(&p).unwrap();
    let mut b = OpenOptions::new().append(true).open(&p).unwrap();
    a.write_all(b"1").unwrap();
    b.write_all(b"2").unwrap();
    a.write_all(b"3").unwrap();
    // pwrite on an O_APPEND descriptor appends too (Linux).
    a.write_all_at(b"4", 0).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"abc1234");
    // Appends from several threads at once: none lost, none overwritten.
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut f = OpenOptions::new().append(true).open(&p).unwrap();
                for _ in 0..100 {
                    f.write_all(&[b'A' + t; 10]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = fs::read(&p).unwrap();
    assert_eq!(all.len(), 7 + 4000);
    for rec in all[7..].chunks(10) {
        assert!(rec.iter().all(|&c| c == rec[0]), "torn append");
    }
    // O_TRUNC truncates (the filesystem does it: ATOMIC_O_TRUNC) and updates times.
    let before = fs::metadata(&p).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let after = f.metadata().unwrap();
    assert_eq!((after.len(), after.blocks()), (0, 0));
    assert_ne!(mtime_of(&before), mtime_of(&after));
    assert_ne!(ctime_of(&before), ctime_of(&after));
    assert_eq!(fs::read(&p).unwrap(), b"");
    // O_CREAT | O_EXCL on an existing name.
    assert_eq!(
        errno(OpenOptions::new().write(true).create_new(true).open(&p)),
        Errno::EXIST
    );
    // O_CREAT | O_TRUNC on an existing file.
    fs::write(&p, b"again").unwrap();
    drop(
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap(),
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
}

/// A running program's executable can be neither written nor truncated through
/// `open(O_TRUNC)` (memfs does not take ATOMIC_O_TRUNC: with it the kernel checks
/// only after OPEN truncated).
#[test]
fn running_program_is_not_truncated() {
    let Some(m) = memfs("running_program_is_not_truncated") else {
        return;
    };
    fuse_live_testkit::posix::running_program_is_not_truncated(&m.path(""));
}

#[test]
fn tmpfile_and_unlinked_open_files() {
    let Some(m) = memfs("tmpfile_and_unlinked_open_files") else {
        return;
    };
    let baseline = free_blocks(&m);
    // O_TMPFILE: no name, link count 0, linkable.
    let fd = rustix::fs::openat(
        CWD,
        &m.mnt,
        OFlags::TMPFILE | OFlags::RDWR,
        Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let tmp = File::from(fd);
    tmp.write_all_at(b"temporary", 0).unwrap();
    assert_eq!(tmp.metadata().unwrap().nlink(), 0);
    let mut buf = [0u8; 9];
    tmp.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"temporary");
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&tmp));
    rustix::fs::linkat(
        CWD,
        proc_path.as_str(),
        CWD,
        m.path("linked"),
        AtFlags::SYMLINK_FOLLOW,
    )
    .unwrap();
    assert_eq!(fs::read(m.path("linked")).unwrap(), b"temporary");
    assert_eq!(tmp.metadata().unwrap().nlink(), 1);
    drop(tmp);
    // An unnamed file's data goes when it is closed.
    let fd = rustix::fs::openat(
        CWD,
        &m.mnt,
        OFlags::TMPFILE | OFlags::RDWR,
        Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let tmp = File::from(fd);
    tmp.write_all_at(&[1; 1 << 20], 0).unwrap();
    assert!(free_blocks(&m) <= baseline - 256);
    drop(tmp);
    eventually("the closed O_TMPFILE file is dropped", || {
        free_blocks(&m) >= baseline - 1
    });
    // Unlinked while open: still readable and writable, dropped when closed.
    let p = m.path("u");
    let data = pattern(9, 1 << 20);
    fs::write(&p, &data).unwrap();
    let used = free_blocks(&m);
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert_eq!(errno(fs::metadata(&p)), Errno::NOENT);
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    let mut back = vec![0u8; 1 << 20];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data);
    f.write_all_at(b"more", 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (1 << 20) + 4);
    assert_eq!(free_blocks(&m), used - 1);
    drop(f);
    eventually("the unlinked file is dropped after close", || {
        free_blocks(&m) >= baseline - 1
    });
    // An unlinked directory that is still open lists empty.
    fs::create_dir(m.path("gone")).unwrap();
    let d = rustix::fs::openat(
        CWD,
        m.path("gone"),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    fs::remove_dir(m.path("gone")).unwrap();
    let st = rustix::fs::fstat(&d).unwrap();
    assert_eq!(st.st_nlink, 0);
    let e = rerrno(rustix::fs::openat(
        &d,
        "new",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::from_raw_mode(0o600),
    ));
    assert_eq!(e, Errno::NOENT);
}

#[test]
fn times_and_utimens() {
    let Some(m) = memfs("times_and_utimens") else {
        return;
    };
    let p = m.path("t");
    fs::write(&p, b"x").unwrap();
    let md = fs::metadata(&p).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((md.mtime() - now).abs() <= 2 && md.mtime() == md.ctime());
    let born = rustix::fs::statx(CWD, &p, AtFlags::empty(), rustix::fs::StatxFlags::BTIME).unwrap();
    assert!(
        born.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0,
        "birth time reported"
    );
    assert!((born.stx_btime.tv_sec - now).abs() <= 2);
    // Exact times, with nanoseconds, beyond 2038 and before 1970.
    for (a, mt) in [
        ((1_000_000_000, 5), (2_000_000_000, 7)),
        ((4_000_000_000, 999_999_999), (-1000, 1)),
    ] {
        let times = Timestamps {
            last_access: ts(a.0, a.1),
            last_modification: ts(mt.0, mt.1),
        };
        rustix::fs::utimensat(CWD, &p, &times, AtFlags::empty()).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!(
            ((md.atime(), md.atime_nsec()), (md.mtime(), md.mtime_nsec())),
            (a, mt)
        );
    }
    // UTIME_OMIT keeps, UTIME_NOW sets the current time; both change ctime.
    let before = fs::metadata(&p).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let omit_now = Timestamps {
        last_access: ts(0, rustix::fs::UTIME_OMIT),
        last_modification: ts(0, rustix::fs::UTIME_NOW),
    };
    rustix::fs::utimensat(CWD, &p, &omit_now, AtFlags::empty()).unwrap();
    let after = fs::metadata(&p).unwrap();
    assert_eq!(
        (after.atime(), after.atime_nsec()),
        (before.atime(), before.atime_nsec())
    );
    assert!((after.mtime() - now).abs() <= 2);
    assert_ne!(ctime_of(&before), ctime_of(&after));
    // chmod changes ctime only; a write changes mtime and ctime.
    let t = Timestamps {
        last_access: ts(1_000_000, 0),
        last_modification: ts(2_000_000, 0),
    };
    rustix::fs::utimensat(CWD, &p, &t, AtFlags::empty()).unwrap();
    let before = fs::metadata(&p).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    chmod(&p, 0o600);
    let after = fs::metadata(&p).unwrap();
    assert_eq!(mtime_of(&after), (2_000_000, 0));
    assert_ne!(ctime_of(&before), ctime_of(&after));
    // Reading updates the atime when it is older than the mtime (relatime).
    let mut s = String::new();
    File::open(&p).unwrap().read_to_string(&mut s).unwrap();
    assert!(
        fs::metadata(&p).unwrap().atime() > 2_000_000,
        "read updated atime"
    );
    fs::write(&p, b"y").unwrap();
    let w = fs::metadata(&p).unwrap();
    assert!((w.mtime() - now).abs() <= 2 && w.ctime() >= w.mtime());
    // The directory's times change when entries come and go.
    let dir_before = fs::metadata(&m.mnt).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::remove_file(&p).unwrap();
    let dir_after = fs::metadata(&m.mnt).unwrap();
    assert_ne!(mtime_of(&dir_before), mtime_of(&dir_after));
    // utimes on a symlink itself.
    std::os::unix::fs::symlink("nowhere", m.path("sl")).unwrap();
    let t = Timestamps {
        last_access: ts(5, 0),
        last_modification: ts(6, 0),
    };
    rustix::fs::utimensat(CWD, m.path("sl"), &t, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    assert_eq!(fs::symlink_metadata(m.path("sl")).unwrap().mtime(), 6);
}

#[test]
fn permissions_as_nobody() {
    let Some(m) = memfs("permissions_as_nobody") else {
        return;
    };
    let (uid, gid) = nobody();
    let nob = |f: &dyn Fn() -> i32| as_user(uid, gid, f);
    let p = |n: &str| m.path(n);
    // The root is 0755 root: nobody cannot create there.
    assert_eq!(
        nob(&|| errno_of(File::create(m.path("x")))),
        libc_errno(Errno::ACCESS)
    );
    fs::create_dir(p("pub")).unwrap();
    chmod(&p("pub"), 0o777);
    assert_eq!(nob(&|| errno_of(fs::write(m.path("pub/mine"), b"n"))), 0);
    let md = fs::metadata(p("pub/mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (uid, gid));
    // Modes are enforced.
    fs::write(p("secret"), b"s").unwrap();
    chmod(&p("secret"), 0o600);
    assert_eq!(
        nob(&|| errno_of(fs::read(m.path("secret")))),
        libc_errno(Errno::ACCESS)
    );
    assert_eq!(
        nob(&|| errno_of(fs::OpenOptions::new().write(true).open(m.path("secret")))),
        libc_errno(Errno::ACCESS)
    );
    chmod(&p("secret"), 0o604);
    assert_eq!(nob(&|| errno_of(fs::read(m.path("secret")))), 0);
    // Only the owner may chmod; nobody may not give files away.
    assert_eq!(
        nob(&|| errno_of(fs::set_permissions(
            m.path("secret"),
            fs::Permissions::from_mode(0o777)
        ))),
        libc_errno(Errno::PERM)
    );
    assert_eq!(
        nob(&|| errno_of(std::os::unix::fs::chown(m.path("pub/mine"), Some(0), None))),
        libc_errno(Errno::PERM)
    );
    assert_eq!(
        nob(&|| errno_of(fs::set_permissions(
            m.path("pub/mine"),
            fs::Permissions::from_mode(0o640)
        ))),
        0
    );
    assert_eq!(fs::metadata(p("pub/mine")).unwrap().mode() & 0o7777, 0o640);
    // Sticky directory: others' files cannot be removed.
    fs::create_dir(p("sticky")).unwrap();
    chmod(&p("sticky"), 0o1777);
    fs::write(p("sticky/roots"), b"").unwrap();
    chmod(&p("sticky/roots"), 0o666);
    assert_eq!(
        nob(&|| errno_of(fs::remove_file(m.path("sticky/roots")))),
        libc_errno(Errno::PERM)
    );
    // A write by an unprivileged owner clears set-user-ID and set-group-ID.
    let s = p("pub/suid");
    fs::write(&s, b"#!").unwrap();
    std::os::unix::fs::chown(&s, Some(uid), Some(gid)).unwrap();
    chmod(&s, 0o6775);
    assert_eq!(
        nob(&|| errno_of(
            OpenOptions::new()
                .append(true)
                .open(m.path("pub/suid"))
                .and_then(|mut f| f.write_all(b"x"))
        )),
        0
    );
    assert_eq!(fs::metadata(&s).unwrap().mode() & 0o7777, 0o0775);
    // ... and so does truncate.
    chmod(&s, 0o6775);
    assert_eq!(
        nob(&|| errno_of(
            OpenOptions::new()
                .write(true)
                .open(m.path("pub/suid"))
                .and_then(|f| f.set_len(1))
        )),
        0
    );
    assert_eq!(fs::metadata(&s).unwrap().mode() & 0o7777, 0o0775);
    // Root (CAP_FSETID) writing keeps them; chown clears set-user-ID.
    let r = p("rootsuid");
    fs::write(&r, b"").unwrap();
    chmod(&r, 0o4755);
    fs::write(&r, b"root writes").unwrap();
    assert_eq!(fs::metadata(&r).unwrap().mode() & 0o7777, 0o4755);
    std::os::unix::fs::chown(&r, Some(uid), None).unwrap();
    assert_eq!(fs::metadata(&r).unwrap().mode() & 0o7777, 0o0755);
    // A set-group-ID directory passes its group (and, to directories, the bit) on.
    fs::create_dir(p("g")).unwrap();
    std::os::unix::fs::chown(p("g"), None, Some(1)).unwrap();
    chmod(&p("g"), 0o2777);
    assert_eq!(nob(&|| errno_of(fs::write(m.path("g/f"), b""))), 0);
    assert_eq!(nob(&|| errno_of(fs::create_dir(m.path("g/sub")))), 0);
    assert_eq!(fs::metadata(p("g/f")).unwrap().gid(), 1);
    let sub = fs::metadata(p("g/sub")).unwrap();
    assert_eq!((sub.gid(), sub.mode() & 0o2000), (1, 0o2000));
    // Search permission on directories.
    fs::create_dir(p("closed")).unwrap();
    fs::write(p("closed/f"), b"").unwrap();
    chmod(&p("closed"), 0o700);
    assert_eq!(
        nob(&|| errno_of(fs::metadata(m.path("closed/f")))),
        libc_errno(Errno::ACCESS)
    );
    // xattrs: user.* needs write permission, trusted.* needs CAP_SYS_ADMIN.
    let x = nob(&|| {
        errno_of(
            rustix::fs::setxattr(
                m.path("secret").as_path(),
                "user.n",
                b"1",
                XattrFlags::empty(),
            )
            .map_err(std::io::Error::from),
        )
    });
    assert_eq!(x, libc_errno(Errno::ACCESS));
    rustix::fs::setxattr(p("pub/mine"), "trusted.t", b"t", XattrFlags::empty()).unwrap();
    let x = nob(&|| {
        errno_of(
            rustix::fs::getxattr(
                m.path("pub/mine").as_path(),
                "trusted.t",
                &mut [0u8; 16][..],
            )
            .map_err(std::io::Error::from),
        )
    });
    assert_eq!(
        x,
        libc_errno(Errno::NODATA),
        "trusted.* is invisible to unprivileged users"
    );
}

fn libc_errno(e: Errno) -> i32 {
    e.raw_os_error()
}

#[test]
fn statfs_and_enospc() {
    let Some(m) = memfs_with("statfs_and_enospc", &["--size", "1M"], &[]) else {
        return;
    };
    let st = rustix::fs::statvfs(&m.mnt).unwrap();
    assert_eq!((st.f_blocks, st.f_bfree, st.f_bsize), (256, 256, 4096));
    fs::write(m.path("half"), vec![1u8; 512 << 10]).unwrap();
    assert_eq!(free_blocks(&m), 128);
    let e = errno(fs::write(m.path("more"), vec![2u8; 1 << 20]));
    assert_eq!(e, Errno::NOSPC);
    let f = File::create(m.path("alloc")).unwrap();
    assert_eq!(
        rerrno(rustix::fs::fallocate(
            &f,
            FallocateFlags::empty(),
            0,
            2 << 20
        )),
        Errno::NOSPC
    );
    // A sparse file is still fine.
    f.set_len(1 << 40).unwrap();
    fs::remove_file(m.path("half")).unwrap();
    fs::remove_file(m.path("more")).unwrap();
    eventually("space comes back", || free_blocks(&m) == 256);
    fs::write(m.path("again"), vec![3u8; 1 << 20]).unwrap();
    assert_eq!(free_blocks(&m), 0);
}

#[test]
fn concurrent_workers() {
    let Some(m) = memfs_with("concurrent_workers", &["--threads", "4", "--ttl", "0"], &[]) else {
        return;
    };
    let root = Arc::new(m.mnt.clone());
    for d in ["shared", "a", "b"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    const THREADS: u64 = 6;
    const ROUNDS: u64 = 60;
    let start = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let root = Arc::clone(&root);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                for r in 0..ROUNDS {
                    let seed = t * 1000 + r;
                    let data = pattern(seed, (seed as usize * 7919) % 200_000 + 1);
                    // Create under a temporary name, fill, rename into place, verify.
                    let tmp = root.join(format!("shared/.tmp-{t}-{r}"));
                    let fin = root.join(format!("shared/{t}-{r}"));
                    let mut f = File::create(&tmp).unwrap();
                    f.write_all(&data).unwrap();
                    drop(f);
                    fs::rename(&tmp, &fin).unwrap();
                    assert!(
                        fs::read(&fin).unwrap() == data,
                        "content of {}",
                        fin.display()
                    );
                    // Move between directories and back under another name.
                    let side = root
                        .join(if r % 2 == 0 { "a" } else { "b" })
                        .join(format!("{t}-{r}"));
                    fs::rename(&fin, &side).unwrap();
                    fs::rename(&side, &fin).unwrap();
                    // Rewrite part of an earlier file in place.
                    if r > 0 {
                        let prev = root.join(format!("shared/{t}-{}", r - 1));
                        let f = OpenOptions::new().write(true).open(&prev).unwrap();
                        f.write_all_at(b"REWRITTEN", 0).unwrap();
                    }
                    // List the shared directory while others change it.
                    if r % 10 == 0 {
                        let n = fs::read_dir(root.join("shared"))
                            .unwrap()
                            .filter_map(|e| e.ok())
                            .count();
                        assert!(n >= 1);
                    }
                    // Drop every third file.
                    if r % 3 == 2 {
                        fs::remove_file(root.join(format!("shared/{t}-{}", r - 2))).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker thread");
    }
    // Every remaining file has the expected contents.
    for t in 0..THREADS {
        for r in 0..ROUNDS {
            let p = root.join(format!("shared/{t}-{r}"));
            let removed = r % 3 == 0 && r + 2 < ROUNDS;
            assert_eq!(p.exists(), !removed, "{}", p.display());
            if removed {
                continue;
            }
            let seed = t * 1000 + r;
            let mut want = pattern(seed, (seed as usize * 7919) % 200_000 + 1);
            if r + 1 < ROUNDS {
                let n = want.len().min(9);
                want[..n].copy_from_slice(&b"REWRITTEN"[..n]);
                want.extend_from_slice(&b"REWRITTEN"[n..]);
            }
            assert!(fs::read(&p).unwrap() == want, "content of {}", p.display());
        }
    }
    assert_eq!(fs::read_dir(root.join("a")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(root.join("b")).unwrap().count(), 0);
    assert_eq!(m.stop().code(), Some(0));
}

#[test]
fn locks_are_local_to_the_kernel() {
    use rustix::fs::FlockOperation as L;
    let Some(m) = memfs("locks_are_local_to_the_kernel") else {
        return;
    };
    let p = m.path("lock");
    fs::write(&p, b"").unwrap();
    let rw = || OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let (a, b) = (rw(), rw());
    rustix::fs::flock(&a, L::NonBlockingLockExclusive).unwrap();
    assert_eq!(
        rustix::fs::flock(&b, L::NonBlockingLockExclusive),
        Err(Errno::WOULDBLOCK)
    );
    rustix::fs::flock(&a, L::Unlock).unwrap();
    rustix::fs::flock(&b, L::NonBlockingLockShared).unwrap();
    rustix::fs::flock(&a, L::NonBlockingLockShared).unwrap();
    rustix::fs::flock(&b, L::Unlock).unwrap();
    rustix::fs::flock(&a, L::Unlock).unwrap();
    // POSIX (fcntl) locks belong to the process: another process conflicts.
    rustix::fs::fcntl_lock(&a, L::NonBlockingLockExclusive).unwrap();
    let other = || {
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let r = rustix::fs::fcntl_lock(&f, L::NonBlockingLockShared);
        errno_of(r.map_err(std::io::Error::from))
    };
    assert_eq!(as_user(0, 0, other), libc_errno(Errno::AGAIN));
    rustix::fs::fcntl_lock(&a, L::Unlock).unwrap();
    assert_eq!(as_user(0, 0, other), 0);
    drop(b);
}

/// Unmounts an in-process mount when dropped (even when the test fails).
struct InProcess {
    running: Option<fuse_session::serve::Running<fs_impl::MemFs>>,
    mnt: std::path::PathBuf,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.unmount();
        }
        if common::is_fuse_mounted(&self.mnt) {
            let _ = fuse_session::dev::fusectl::tear_down(&self.mnt, None);
        }
        if let Some(dir) = self.mnt.parent() {
            if !common::is_fuse_mounted(&self.mnt) {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

#[test]
fn forgets_drop_unlinked_inodes_in_process() {
    use fuse_session::dev::fusectl::Watchdog;
    use fuse_session::dev::MountOptions;
    use fuse_session::serve::Server;
    if !can_mount("forgets_drop_unlinked_inodes_in_process") {
        return;
    }
    let mnt = common::temp_dir("memfs-inproc").join("mnt");
    let mut guard = InProcess {
        running: None,
        mnt: mnt.clone(),
    };
    fs::create_dir(&mnt).unwrap();
    let memfs = fs_impl::MemFs::new(0, 0, 1 << 30, fs_impl::Config::default());
    let opts = MountOptions::new()
        .fsname("memfs")
        .subtype("memfs")
        .default_permissions(true);
    let running = Server::mount(memfs, &mnt, &opts).unwrap().spawn(2).unwrap();
    guard.running = Some(running);
    let _dog = Watchdog::arm(&mnt, None, common::WATCHDOG).unwrap();
    let running = guard.running.as_ref().unwrap();
    let session = running.session();
    let state = || session.filesystem().lock_read();
    fs::write(mnt.join("a"), vec![1u8; 4096]).unwrap();
    fs::write(mnt.join("b"), vec![2u8; 8192]).unwrap();
    fs::create_dir(mnt.join("d")).unwrap();
    let open_b = File::open(mnt.join("b")).unwrap();
    let open_d = File::open(mnt.join("d")).unwrap();
    fs::remove_file(mnt.join("b")).unwrap();
    fs::remove_dir(mnt.join("d")).unwrap();
    let tmp = File::from(
        rustix::fs::openat(
            CWD,
            &mnt,
            OFlags::TMPFILE | OFlags::RDWR,
            Mode::from_raw_mode(0o600),
        )
        .unwrap(),
    );
    tmp.write_all_at(&[3u8; 4096], 0).unwrap();
    // Open, so still there: root, a, b, d and the unnamed file.
    assert_eq!(state().inode_count(), 5);
    assert_eq!(state().used_bytes(), 4 * 4096);
    drop((open_b, open_d, tmp));
    // Once the kernel forgets everything, only linked inodes remain.
    let deadline = Instant::now() + Duration::from_secs(20);
    while (session.node_count() > 1 || state().inode_count() > 2) && Instant::now() < deadline {
        let _ = fs::write("/proc/sys/vm/drop_caches", "2");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        session.node_count(),
        1,
        "the kernel forgot every nodeid but the root"
    );
    assert_eq!(state().inode_count(), 2, "root and a remain");
    assert_eq!(state().used_bytes(), 4096);
    // A fresh lookup finds the linked file again.
    assert_eq!(fs::read(mnt.join("a")).unwrap(), vec![1u8; 4096]);
    assert!(session.node_count() > 1);
    eventually("the read's RELEASE", || session.handle_count() == 0);
    drop(guard);
    assert!(!common::is_fuse_mounted(&mnt));
}

/// memfs's state without a mount: the rules, restore validation, serialization.
mod core {
    use super::data::{FileData, CHUNK};
    use super::fs_impl::{Config, MemFs};
    use super::state::*;
    use fuse_session::{Errno, FileType, SetAttr, TimeOrNow};

    const ROOT: Caller = Caller { uid: 0, gid: 0 };
    const USER: Caller = Caller {
        uid: 1000,
        gid: 1000,
    };

    fn fs() -> State {
        State::new(0, 0, 1 << 30)
    }

    fn names(s: &State, dir: u64, from: u64) -> Vec<(u64, String)> {
        s.dir(dir)
            .unwrap()
            .listing_from(from)
            .map(|(o, n, _)| (o, String::from_utf8_lossy(n).into_owned()))
            .collect()
    }

    #[test]
    fn data_chunks_holes_and_seek() {
        let mut f = FileData::default();
        f.write(CHUNK * 3 + 10, b"abc");
        assert_eq!((f.size(), f.chunk_count()), (CHUNK * 3 + 13, 1));
        let mut buf = vec![9u8; 20];
        assert_eq!(f.read(CHUNK * 3, &mut buf), 13);
        assert_eq!(&buf[..13], b"\0\0\0\0\0\0\0\0\0\0abc");
        assert_eq!(f.read(f.size(), &mut buf), 0);
        assert_eq!((f.seek_data(0), f.seek_hole(0)), (Some(CHUNK * 3), Some(0)));
        assert_eq!(f.seek_hole(CHUNK * 3 + 1), Some(CHUNK * 3 + 13));
        assert_eq!(f.seek_data(f.size()), None);
        f.set_size(CHUNK * 3 + 11);
        f.set_size(CHUNK * 4);
        let mut page = vec![9u8; CHUNK as usize];
        assert_eq!(f.read(CHUNK * 3 + 10, &mut page), CHUNK as usize - 10);
        assert_eq!(&page[..3], b"a\0\0", "shrinking zeroed the cut bytes");
        assert!(f.validate().is_ok());
        assert_eq!(f.missing_chunks(0, CHUNK * 4), 3);
        f.allocate(0, CHUNK * 2);
        assert_eq!(f.chunk_count(), 3);
        f.zero_range(0, CHUNK * 2, false);
        assert_eq!(f.chunk_count(), 1);
        f.write(0, &[1; 10]);
        f.zero_range(0, 10, false);
        assert_eq!(f.chunk_count(), 1, "a chunk left all zero is freed");
        f.set_size(0);
        assert_eq!(f.chunk_count(), 0);
        f.write(1 << 20, b"");
        assert_eq!(f.size(), 0, "an empty write does not extend");
    }

    #[test]
    fn readdir_cookies_survive_removal() {
        let mut s = fs();
        for i in 0..10 {
            s.mknod(ROOT, ROOT_INO, format!("f{i}").as_bytes(), 0o100644, 0)
                .unwrap();
        }
        let all = names(&s, ROOT_INO, 0);
        assert_eq!(all.len(), 10);
        // Continue after the 4th entry after removing entries already listed and
        // one not yet listed: the rest appear once, in order.
        let resume = all[3].0;
        for n in ["f0", "f1", "f2", "f3", "f7"] {
            s.unlink(ROOT_INO, n.as_bytes()).unwrap();
        }
        let rest: Vec<String> = names(&s, ROOT_INO, resume)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(rest, ["f4", "f5", "f6", "f8", "f9"]);
        // An entry renamed within its directory keeps its place (a listing in
        // progress shows it once), also over an existing name; RENAME_EXCHANGE keeps
        // both names in place.
        s.rename(ROOT_INO, b"f4", ROOT_INO, b"z", 0).unwrap();
        s.rename(ROOT_INO, b"f8", ROOT_INO, b"f5", 0).unwrap();
        s.rename(ROOT_INO, b"z", ROOT_INO, b"f9", RENAME_EXCHANGE)
            .unwrap();
        let now: Vec<String> = names(&s, ROOT_INO, 0).into_iter().map(|(_, n)| n).collect();
        assert_eq!(now, ["z", "f6", "f5", "f9"]);
        s.validate().unwrap();
        // Into another directory: the entry is new there, at its end.
        let d = s.mkdir(ROOT, ROOT_INO, b"d", 0o755).unwrap();
        s.mknod(ROOT, d, b"a", 0o100644, 0).unwrap();
        s.rename(ROOT_INO, b"f6", d, b"0", 0).unwrap();
        let there: Vec<String> = names(&s, d, 0).into_iter().map(|(_, n)| n).collect();
        assert_eq!(there, ["a", "0"]);
    }

    #[test]
    fn rename_rules_and_link_counts() {
        let mut s = fs();
        let a = s.mkdir(ROOT, ROOT_INO, b"a", 0o755).unwrap();
        let b = s.mkdir(ROOT, a, b"b", 0o755).unwrap();
        let f = s.mknod(ROOT, ROOT_INO, b"f", 0o100644, 0).unwrap();
        assert_eq!(s.rename(ROOT_INO, b"a", b, b"x", 0), Err(Errno::EINVAL));
        assert_eq!(s.rename(ROOT_INO, b"a", a, b"x", 0), Err(Errno::EINVAL));
        assert_eq!(s.rename(ROOT_INO, b"f", a, b"b", 0), Err(Errno::EISDIR));
        assert_eq!(s.rename(a, b"b", ROOT_INO, b"f", 0), Err(Errno::ENOTDIR));
        assert_eq!(
            s.rename(ROOT_INO, b"a", ROOT_INO, b"f", RENAME_NOREPLACE),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            s.rename(
                ROOT_INO,
                b"a",
                ROOT_INO,
                b"f",
                RENAME_NOREPLACE | RENAME_EXCHANGE
            ),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            s.rename(ROOT_INO, b"a", ROOT_INO, b"f", RENAME_WHITEOUT),
            Err(Errno::EINVAL)
        );
        assert_eq!(s.attr(ROOT_INO).unwrap().nlink, 3);
        // Move b up: a loses a link, the root gains one.
        s.rename(a, b"b", ROOT_INO, b"b", 0).unwrap();
        assert_eq!(
            (s.attr(a).unwrap().nlink, s.attr(ROOT_INO).unwrap().nlink),
            (2, 4)
        );
        assert_eq!(s.lookup(b, b"..").unwrap(), ROOT_INO);
        // Exchange a (dir) with f (file) across directories.
        s.rename(ROOT_INO, b"f", b, b"g", 0).unwrap();
        s.rename(ROOT_INO, b"a", b, b"g", RENAME_EXCHANGE).unwrap();
        assert_eq!(
            (
                s.lookup(ROOT_INO, b"a").unwrap(),
                s.lookup(b, b"g").unwrap()
            ),
            (f, a)
        );
        assert_eq!(
            (s.attr(ROOT_INO).unwrap().nlink, s.attr(b).unwrap().nlink),
            (3, 3)
        );
        assert_eq!(s.lookup(a, b"..").unwrap(), b);
        // Replacing an empty directory.
        let e = s.mkdir(ROOT, ROOT_INO, b"e", 0o755).unwrap();
        s.rename(b, b"g", ROOT_INO, b"e", 0).unwrap();
        assert_eq!(s.attr(e).unwrap().nlink, 0);
        assert_eq!(
            (s.attr(ROOT_INO).unwrap().nlink, s.attr(b).unwrap().nlink),
            (4, 2)
        );
        assert!(s.forget(e));
        assert!(!s.forget(a), "linked inodes are kept");
        assert!(s.validate().is_ok());
    }

    #[test]
    fn unlinked_inodes_live_until_forgotten() {
        let mut s = fs();
        let f = s.mknod(ROOT, ROOT_INO, b"f", 0o100644, 0).unwrap();
        s.write(ROOT, f, 0, &[1; 10_000], false).unwrap();
        assert_eq!(s.used_bytes(), 3 * CHUNK);
        s.link(f, ROOT_INO, b"g").unwrap();
        s.unlink(ROOT_INO, b"f").unwrap();
        assert!(!s.forget(f));
        s.unlink(ROOT_INO, b"g").unwrap();
        assert_eq!(s.attr(f).unwrap().nlink, 0);
        assert_eq!(s.write(ROOT, f, 10_000, b"still", false), Ok(5));
        assert!(s.forget(f));
        assert_eq!(s.used_bytes(), 0);
        assert_eq!(s.attr(f), Err(Errno::ENOENT));
        let t = s.tmpfile(ROOT, ROOT_INO, 0o600).unwrap();
        assert_eq!(s.attr(t).unwrap().nlink, 0);
        s.link(t, ROOT_INO, b"named").unwrap();
        assert!(!s.forget(t));
    }

    #[test]
    fn suid_sgid_and_group_inheritance() {
        let mut s = fs();
        let f = s.mknod(ROOT, ROOT_INO, b"f", 0o106775, 0).unwrap();
        s.write(ROOT, f, 0, b"root keeps", false).unwrap();
        assert_eq!(s.attr(f).unwrap().perm, 0o6775);
        s.write(USER, f, 0, b"user clears", false).unwrap();
        assert_eq!(s.attr(f).unwrap().perm, 0o0775);
        s.setattr(
            ROOT,
            f,
            &SetAttr {
                mode: Some(0o6745),
                ..SetAttr::default()
            },
        )
        .unwrap();
        s.setattr(
            ROOT,
            f,
            &SetAttr {
                uid: Some(5),
                ..SetAttr::default()
            },
        )
        .unwrap();
        assert_eq!(
            s.attr(f).unwrap().perm,
            0o2745,
            "chown clears suid; sgid without group x stays"
        );
        s.setattr(
            ROOT,
            f,
            &SetAttr {
                kill_suidgid: true,
                mode: None,
                ..SetAttr::default()
            },
        )
        .unwrap();
        assert_eq!(s.attr(f).unwrap().perm, 0o2745);
        s.setattr(
            ROOT,
            f,
            &SetAttr {
                mode: Some(0o6755),
                ..SetAttr::default()
            },
        )
        .unwrap();
        s.write(ROOT, f, 0, b"x", true).unwrap();
        assert_eq!(s.attr(f).unwrap().perm, 0o0755, "WRITE_KILL_SUIDGID");
        let g = s.mkdir(ROOT, ROOT_INO, b"g", 0o2775).unwrap();
        s.setattr(
            ROOT,
            g,
            &SetAttr {
                gid: Some(50),
                ..SetAttr::default()
            },
        )
        .unwrap();
        assert_eq!(
            s.attr(g).unwrap().perm & 0o2000,
            0o2000,
            "chown of a directory keeps sgid"
        );
        let sub = s.mkdir(USER, g, b"sub", 0o755).unwrap();
        let file = s.mknod(USER, g, b"file", 0o100644, 0).unwrap();
        assert_eq!(
            (s.attr(sub).unwrap().gid, s.attr(sub).unwrap().perm),
            (50, 0o2755)
        );
        assert_eq!(
            (s.attr(file).unwrap().gid, s.attr(file).unwrap().perm),
            (50, 0o644)
        );
        let t = s.setattr(
            USER,
            file,
            &SetAttr {
                atime: Some(TimeOrNow::Now),
                ..SetAttr::default()
            },
        );
        assert!(t.is_ok());
    }

    #[test]
    fn fallocate_copy_and_space() {
        let mut s = State::new(0, 0, 16 * CHUNK);
        let f = s.mknod(ROOT, ROOT_INO, b"f", 0o100644, 0).unwrap();
        assert_eq!(s.fallocate(f, 0, 17 * CHUNK, 0), Err(Errno::ENOSPC));
        s.fallocate(f, 0, 4 * CHUNK, FALLOC_FL_KEEP_SIZE).unwrap();
        assert_eq!(
            (s.attr(f).unwrap().size, s.attr(f).unwrap().blocks),
            (0, 32)
        );
        assert_eq!(
            s.fallocate(f, 0, CHUNK, FALLOC_FL_PUNCH_HOLE),
            Err(Errno::EOPNOTSUPP)
        );
        assert_eq!(s.fallocate(f, 0, CHUNK, 0x8), Err(Errno::EOPNOTSUPP));
        assert_eq!(s.fallocate(f, 0, 0, 0), Err(Errno::EINVAL));
        s.write(ROOT, f, 0, b"hello", false).unwrap();
        let g = s.mknod(ROOT, ROOT_INO, b"g", 0o100644, 0).unwrap();
        assert_eq!(s.copy_range(ROOT, f, 0, g, 10 * CHUNK, 100), Ok(5));
        let mut buf = [0u8; 5];
        s.read(g, 10 * CHUNK, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(s.attr(g).unwrap().blocks, 8);
        assert_eq!(s.copy_range(ROOT, f, 0, f, 2, 3), Err(Errno::EINVAL));
        assert_eq!(
            s.write(ROOT, g, 0, &vec![0; 20 * CHUNK as usize], false),
            Err(Errno::ENOSPC)
        );
        assert_eq!(s.statfs().bfree, 16 - 5);
        assert_eq!(s.lseek(f, 0, SEEK_HOLE), Ok(5));
        assert_eq!(s.lseek(f, 0, 0), Err(Errno::EINVAL));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn xattr_rules() {
        let mut s = fs();
        assert_eq!(s.setxattr(ROOT_INO, b"user.", b"", 0), Err(Errno::EINVAL));
        assert_eq!(
            s.setxattr(ROOT_INO, b"os2.x", b"", 0),
            Err(Errno::EOPNOTSUPP)
        );
        s.setxattr(ROOT_INO, b"user.k", b"v", XATTR_CREATE).unwrap();
        assert_eq!(
            s.setxattr(ROOT_INO, b"user.k", b"v", XATTR_CREATE),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            s.setxattr(ROOT_INO, b"user.q", b"v", XATTR_REPLACE),
            Err(Errno::ENODATA)
        );
        assert_eq!(s.getxattr(ROOT_INO, b"user.k").unwrap(), b"v");
        assert_eq!(s.listxattr(ROOT_INO).unwrap(), b"user.k\0");
        assert_eq!(s.removexattr(ROOT_INO, b"user.q"), Err(Errno::ENODATA));
    }

    #[test]
    fn restore_checks_invariants_and_round_trips() {
        let fs = MemFs::new(0, 0, 1 << 20, Config::default());
        let mut image = fs.snapshot();
        let s = &mut image.state;
        let d = s.mkdir(ROOT, ROOT_INO, b"d", 0o755).unwrap();
        let f = s.mknod(ROOT, d, b"f", 0o100600, 0).unwrap();
        s.write(ROOT, f, 5, b"data", false).unwrap();
        s.symlink(ROOT, d, b"l", b"f").unwrap();
        s.mknod(ROOT, d, b"p", 0o010644, 0).unwrap();
        s.setxattr(f, b"user.x", b"y", 0).unwrap();
        let bytes = postcard::to_allocvec(&image).unwrap();
        let back: super::fs_impl::MemFsImage = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, image);
        let restored = MemFs::restore(back).unwrap();
        let state = restored.lock_read();
        assert_eq!(state.lookup(d, b"f"), Ok(f));
        assert_eq!(state.attr(f).unwrap().kind, FileType::RegularFile);
        drop(state);
        // The MemFs itself serializes (under its lock) to the same bytes.
        assert_eq!(postcard::to_allocvec(&restored).unwrap(), bytes);
        let again: MemFs = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(again.snapshot(), image);
        // Damaged images never panic; those that still decode are checked, and a
        // dangling reference or a miscounted chunk is refused.
        let mut refused = 0;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            if let Ok(img) = postcard::from_bytes::<super::fs_impl::MemFsImage>(&bad) {
                refused += usize::from(MemFs::restore(img).is_err());
            }
        }
        assert!(refused > 0, "no damaged image was refused");
    }
}
