//! passthrough end to end: the `passthrough` example serving a source directory (a
//! private temporary directory) on a real kernel mount, as root, with kernel
//! passthrough on and off; live handoff with files held open (unlinked ones
//! included); escapes out of the source refused.
//!
//! Every mount has a watchdog (abort through fusectl, lazy unmount), and every
//! daemon is stopped when a test ends, even when it fails. The `core` module calls
//! the filesystem directly (no mount) for the name and symlink rules.
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use fuse_session::dev::{recv_exact_with_fds, send_with_fds};
use fuse_session::{FuseOpenFlags, OpenFlags, RenameFlags};
use fuse_snapshot::handoff::message::{self, Hello, Kind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustix::io::Errno;

mod common;
use common::{as_user, can_mount, errno_of, example_binary, is_fuse_mounted, nobody, temp_dir};

#[allow(dead_code)]
#[path = "../examples/passthrough/node.rs"]
mod node;
#[allow(dead_code)]
#[path = "../examples/passthrough/passfs.rs"]
mod passfs;
#[allow(dead_code)]
#[path = "../examples/passthrough/snapshot.rs"]
mod snapshot;

const WATCHDOG: Duration = Duration::from_secs(150);
const WAIT: Duration = Duration::from_secs(30);

/// Kernel passthrough on (the default) or off (`--no-passthrough`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    On,
    Off,
}

const MODES: [Mode; 2] = [Mode::On, Mode::Off];

/// A passthrough daemon (and its successors) on one mount over a fresh source.
struct Pt {
    /// A filesystem mounted on `src` by the test (unmounted on drop).
    src_mount: bool,
    dir: PathBuf,
    src: PathBuf,
    mnt: PathBuf,
    sock: PathBuf,
    child: Option<Child>,
    generation: usize,
    watchdog: Option<Watchdog>,
}

fn spawn(args: &[&str], log: &Path) -> (Child, mpsc::Receiver<String>) {
    spawn_env(args, log, &[])
}

/// As [`spawn`], with more environment variables.
fn spawn_env(args: &[&str], log: &Path, env: &[(&str, String)]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(example_binary("passthrough"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(log).expect("create log"))
        .spawn()
        .expect("spawn passthrough");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    (child, rx)
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

impl Pt {
    fn start(test: &str, mode: Mode, extra: &[&str]) -> Option<Pt> {
        Pt::start_on(test, mode, extra, None, "src")
    }

    /// As [`Pt::start`], with the source on a new `fstype` filesystem.
    ///
    /// As [`Pt::start`], with the source at `src_rel` in the test's directory.
    fn start_on(
        test: &str,
        mode: Mode,
        extra: &[&str],
        fstype: Option<&str>,
        src_rel: &str,
    ) -> Option<Pt> {
        Pt::start_env(test, mode, extra, fstype, src_rel, &[])
    }

    /// As [`Pt::start_on`], with more environment variables for the first daemon.
    fn start_env(
        test: &str,
        mode: Mode,
        extra: &[&str],
        fstype: Option<&str>,
        src_rel: &str,
        env: &[(&str, String)],
    ) -> Option<Pt> {
        if !can_mount(test) {
            return None;
        }
        let dir = temp_dir(test);
        let src = dir.join(src_rel);
        let mnt = dir.join("mnt");
        fs::create_dir_all(&src).unwrap();
        let src_mount = match fstype {
            Some(t) => {
                nix::mount::mount(
                    Some("none"),
                    &src,
                    Some(t),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .unwrap_or_else(|e| panic!("mount {t}: {e}"));
                true
            }
            None => false,
        };
        fs::set_permissions(&src, fs::Permissions::from_mode(0o777)).unwrap();
        fs::create_dir(&mnt).unwrap();
        let sock = dir.join("upgrade.sock");
        let mut pt = Pt {
            src_mount,
            dir,
            src,
            mnt,
            sock,
            child: None,
            generation: 0,
            watchdog: None,
        };
        pt.watchdog = Some(Watchdog::arm(&pt.mnt, None, WATCHDOG).expect("watchdog"));
        let (src, mnt, sock) = (
            pt.src.to_string_lossy().into_owned(),
            pt.mnt.to_string_lossy().into_owned(),
            pt.sock.to_string_lossy().into_owned(),
        );
        let mut args = vec![
            src.as_str(),
            mnt.as_str(),
            "--allow-other",
            "--upgrade-socket",
            sock.as_str(),
        ];
        if mode == Mode::Off {
            args.push("--no-passthrough");
        }
        args.extend_from_slice(extra);
        let (child, rx) = spawn_env(&args, &pt.log(0), env);
        pt.child = Some(child);
        let line = rx.recv_timeout(WAIT);
        assert_eq!(
            line.as_deref(),
            Ok(format!("ready {mnt}").as_str()),
            "log:\n{}",
            pt.log_text()
        );
        assert!(is_fuse_mounted(&pt.mnt));
        let want = match mode {
            Mode::On => "kernel passthrough on",
            Mode::Off => "kernel passthrough off",
        };
        assert!(pt.log_text().contains(want), "log:\n{}", pt.log_text());
        Some(pt)
    }

    fn log(&self, generation: usize) -> PathBuf {
        self.dir.join(format!("daemon-{generation}.log"))
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log(self.generation)).unwrap_or_default()
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn s(&self, rel: &str) -> PathBuf {
        self.src.join(rel)
    }

    /// A new daemon takes the mount over; the old one must exit 0.
    fn handoff(&mut self) {
        let next = self.generation + 1;
        let sock = self.sock.to_string_lossy().into_owned();
        let (child, rx) = spawn(&["--takeover", &sock], &self.log(next));
        let line = rx.recv_timeout(WAIT);
        let mut old = self.child.replace(child).expect("a daemon");
        self.generation = next;
        assert_eq!(
            line.as_deref(),
            Ok(format!("ready {}", self.mnt.display()).as_str()),
            "takeover log:\n{}",
            self.log_text()
        );
        let st = wait_exit(&mut old, WAIT).expect("the old daemon exits after a handoff");
        assert!(st.success(), "old daemon: {st:?}");
    }

    /// SIGTERM: the daemon unmounts and exits 0; returns its log.
    fn stop(mut self) -> String {
        let mut child = self.child.take().expect("a daemon");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let st = wait_exit(&mut child, WAIT).expect("exit on SIGTERM");
        assert!(st.success(), "{st:?}");
        assert!(!is_fuse_mounted(&self.mnt));
        self.log_text()
    }
}

impl Drop for Pt {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            if wait_exit(&mut c, Duration::from_secs(15)).is_none() {
                let _ = fusectl::tear_down(&self.mnt, None);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if is_fuse_mounted(&self.mnt) {
            let _ = fusectl::tear_down(&self.mnt, None);
        }
        if let Some(w) = self.watchdog.take() {
            if w.disarm() {
                eprintln!("watchdog fired on {}", self.mnt.display());
            }
        }
        if self.src_mount {
            let _ = nix::mount::umount2(&self.src, nix::mount::MntFlags::MNT_DETACH);
        }
        if !is_fuse_mounted(&self.mnt) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn cli_contract() {
    let bin = example_binary("passthrough");
    for bad in [
        &[][..],
        &["/only-one"],
        &["/a", "/b", "--bogus"],
        &["/a", "/b", "--threads", "0"],
    ] {
        let out = Command::new(&bin).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage: passthrough SOURCE MOUNTPOINT")
        );
    }
    if !can_mount("cli_contract") {
        return;
    }
    let dir = temp_dir("pt-cli");
    let out = Command::new(&bin)
        .arg(dir.join("missing"))
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing SOURCE fails to mount"
    );
    let _ = fs::remove_dir_all(&dir);
    let pt = Pt::start("pt_cli_contract", Mode::On, &["--threads", "3"]).unwrap();
    pt.stop();
}

/// Reads, writes, appends, truncates; what the mount writes is in the source and
/// what the source gets is seen through the mount.
/// A running program's executable can be neither written nor truncated through
/// `open(O_TRUNC)`, kernel passthrough on and off (passthrough does not take
/// ATOMIC_O_TRUNC: with it the kernel checks only after OPEN truncated).
#[test]
fn running_program_is_not_truncated() {
    for mode in MODES {
        let Some(pt) = Pt::start("pt_running_program", mode, &[]) else {
            return;
        };
        fuse_live_testkit::posix::running_program_is_not_truncated(&pt.m(""));
    }
}

#[test]
fn file_data() {
    for mode in MODES {
        let Some(pt) = Pt::start("pt_file_data", mode, &[]) else {
            return;
        };
        let data = pattern(1, 3 << 20);
        fs::write(pt.m("f"), &data).unwrap();
        assert_eq!(fs::read(pt.s("f")).unwrap(), data, "{mode:?}");
        assert_eq!(fs::read(pt.m("f")).unwrap(), data);
        let f = rw(&pt.m("f"));
        f.write_all_at(b"XYZ", 4095).unwrap();
        let mut b = [0u8; 5];
        f.read_exact_at(&mut b, 4094).unwrap();
        assert_eq!(&b, &[data[4094], b'X', b'Y', b'Z', data[4098]]);
        f.set_len(10).unwrap();
        assert_eq!(fs::metadata(pt.s("f")).unwrap().len(), 10);
        drop(f);
        let mut a = OpenOptions::new().append(true).open(pt.m("f")).unwrap();
        a.write_all(b"++").unwrap();
        drop(a);
        assert_eq!(fs::read(pt.s("f")).unwrap().len(), 12);
        // O_TRUNC on open.
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(pt.m("f"))
            .unwrap();
        assert_eq!(fs::metadata(pt.m("f")).unwrap().len(), 0);
        // Written in the source behind the mount's back: seen once the attribute
        // cache (1 s) has expired, or at once through a passthrough read.
        fs::write(pt.s("g"), b"from the source").unwrap();
        assert_eq!(fs::read(pt.m("g")).unwrap(), b"from the source");
        let log = pt.stop();
        assert!(
            log.contains("0 backing ids registered, 0 files open"),
            "{log}"
        );
        // With passthrough the kernel reads and writes the backing files itself.
        let served = log.contains("<- READ ") || log.contains("<- WRITE ");
        assert_eq!(
            served,
            mode == Mode::Off,
            "{mode:?}: READ/WRITE reached the daemon"
        );
    }
}

#[test]
fn namespace_operations() {
    for mode in MODES {
        let Some(pt) = Pt::start("pt_namespace", mode, &[]) else {
            return;
        };
        fs::create_dir(pt.m("d")).unwrap();
        fs::write(pt.m("d/a"), b"a").unwrap();
        assert!(pt.s("d/a").is_file());
        // Hard links: same inode, two links, in the source too.
        fs::hard_link(pt.m("d/a"), pt.m("d/b")).unwrap();
        let (ma, mb) = (
            fs::metadata(pt.m("d/a")).unwrap(),
            fs::metadata(pt.m("d/b")).unwrap(),
        );
        assert_eq!((ma.ino(), ma.nlink()), (mb.ino(), 2));
        assert_eq!(
            fs::metadata(pt.s("d/b")).unwrap().ino(),
            fs::metadata(pt.s("d/a")).unwrap().ino()
        );
        // Symlinks are made and read, never followed by the daemon.
        std::os::unix::fs::symlink("a", pt.m("d/l")).unwrap();
        assert_eq!(fs::read_link(pt.m("d/l")).unwrap(), Path::new("a"));
        assert_eq!(fs::read_link(pt.s("d/l")).unwrap(), Path::new("a"));
        assert_eq!(fs::read(pt.m("d/l")).unwrap(), b"a");
        // Device nodes and fifos.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            pt.m("d/null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_bits_truncate(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        let st = fs::symlink_metadata(pt.s("d/null")).unwrap();
        assert_eq!(st.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(
            fs::symlink_metadata(pt.m("d/null")).unwrap().rdev(),
            st.rdev()
        );
        nix::unistd::mkfifo(
            &pt.m("d/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(pt.s("d/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        // readdir (and readdirplus) list everything once.
        let mut names: Vec<String> = fs::read_dir(pt.m("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b", "fifo", "l", "null"]);
        // A large directory, read in several READDIR(PLUS) requests.
        fs::create_dir(pt.m("many")).unwrap();
        for i in 0..300 {
            File::create(pt.s(&format!("many/file-with-a-long-name-{i:04}"))).unwrap();
        }
        assert_eq!(fs::read_dir(pt.m("many")).unwrap().count(), 300);
        // Renames: plain, NOREPLACE, EXCHANGE.
        fs::rename(pt.m("d/a"), pt.m("d/c")).unwrap();
        assert!(pt.s("d/c").exists() && !pt.s("d/a").exists());
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        assert_eq!(
            renameat_with(CWD, pt.m("d/c"), CWD, pt.m("d/b"), RenameFlags::NOREPLACE),
            Err(Errno::EXIST)
        );
        fs::write(pt.m("d/x"), b"x").unwrap();
        renameat_with(CWD, pt.m("d/x"), CWD, pt.m("d/fifo"), RenameFlags::EXCHANGE).unwrap();
        assert_eq!(fs::read(pt.s("d/fifo")).unwrap(), b"x");
        assert!(fs::symlink_metadata(pt.s("d/x"))
            .unwrap()
            .file_type()
            .is_fifo());
        // Unlink and rmdir.
        assert_eq!(errno_of(fs::remove_dir(pt.m("d"))), nix::libc::ENOTEMPTY);
        for n in ["b", "c", "l", "null", "fifo", "x"] {
            fs::remove_file(pt.m(&format!("d/{n}"))).unwrap();
        }
        fs::remove_dir(pt.m("d")).unwrap();
        assert!(!pt.s("d").exists());
        // chmod, chown, utimes reach the source.
        fs::write(pt.m("t"), b"").unwrap();
        fs::set_permissions(pt.m("t"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(fs::metadata(pt.s("t")).unwrap().mode() & 0o7777, 0o600);
        std::os::unix::fs::chown(pt.m("t"), Some(1234), Some(5678)).unwrap();
        let st = fs::metadata(pt.s("t")).unwrap();
        assert_eq!((st.uid(), st.gid()), (1234, 5678));
        let t = std::time::UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
        File::options()
            .write(true)
            .open(pt.m("t"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_eq!(fs::metadata(pt.s("t")).unwrap().modified().unwrap(), t);
        // New inodes belong to their creator.
        let (uid, gid) = nobody();
        let made = as_user(uid, gid, || {
            let p = pt.m("by-nobody");
            errno_of(fs::write(&p, b"n").and_then(|_| fs::create_dir(p.with_extension("d"))))
        });
        assert_eq!(made, 0);
        let st = fs::metadata(pt.s("by-nobody")).unwrap();
        assert_eq!((st.uid(), st.gid()), (uid, gid));
        assert_eq!(fs::metadata(pt.s("by-nobody.d")).unwrap().uid(), uid);
        // open(O_TRUNC) by an unprivileged user clears set-user-ID (the daemon
        // truncates as root, which would keep it); a write does too (the kernel's
        // SETATTR, or the backing write with passthrough).
        fs::write(pt.m("suid"), b"x").unwrap();
        for how in ["trunc", "write"] {
            fs::set_permissions(pt.m("suid"), fs::Permissions::from_mode(0o6777)).unwrap();
            let r = as_user(uid, gid, || {
                let mut o = OpenOptions::new();
                match how {
                    "trunc" => o.write(true).truncate(true),
                    _ => o.append(true),
                };
                errno_of(o.open(pt.m("suid")).and_then(|mut f| match how {
                    // Only the open: O_TRUNC alone must clear the bit.
                    "trunc" => Ok(()),
                    _ => f.write_all(b"y"),
                }))
            });
            assert_eq!(r, 0);
            let m = fs::metadata(pt.s("suid")).unwrap().mode() & 0o7777;
            assert_eq!(m, 0o777, "{mode:?} {how}: mode {m:o}");
        }
        // The bits set while an open for writing holds the file (with kernel
        // passthrough: an open that went to the kernel, registered without
        // CAP_FSETID), then a write through that open: cleared too.
        fs::write(pt.m("later"), b"x").unwrap();
        std::os::unix::fs::chown(pt.m("later"), Some(uid), Some(gid)).unwrap();
        fs::set_permissions(pt.m("later"), fs::Permissions::from_mode(0o666)).unwrap();
        let r = as_user(uid, gid, || {
            let f = OpenOptions::new().append(true).open(pt.m("later"));
            errno_of(f.and_then(|mut f| {
                f.set_permissions(fs::Permissions::from_mode(0o6777))?;
                f.write_all(b"y")
            }))
        });
        assert_eq!(r, 0);
        let m = fs::metadata(pt.s("later")).unwrap().mode() & 0o7777;
        assert_eq!(
            m, 0o777,
            "{mode:?}: bits set while open, then a write: mode {m:o}"
        );
        // default_permissions: nobody cannot write root's 0600 file.
        fs::set_permissions(pt.m("t"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(pt.m("t"), Some(0), Some(0)).unwrap();
        let denied = as_user(uid, gid, || {
            errno_of(OpenOptions::new().write(true).open(pt.m("t")))
        });
        assert_eq!(denied, nix::libc::EACCES);
        let log = pt.stop();
        // Listings came as READDIRPLUS (entries with attributes, counted lookups).
        assert!(log.contains("<- READDIRPLUS "), "{mode:?}");
    }
}

#[test]
fn xattrs_statfs_statx() {
    let Some(pt) = Pt::start("pt_xattrs", Mode::On, &[]) else {
        return;
    };
    fs::write(pt.m("f"), b"").unwrap();
    let p = pt.m("f");
    rustix::fs::setxattr(&p, "user.k", b"value", rustix::fs::XattrFlags::CREATE).unwrap();
    assert_eq!(
        rustix::fs::setxattr(&p, "user.k", b"v", rustix::fs::XattrFlags::CREATE),
        Err(Errno::EXIST)
    );
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(pt.s("f"), "user.k", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"value");
    let n = rustix::fs::getxattr(&p, "user.k", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"value");
    assert_eq!(
        rustix::fs::getxattr(&p, "user.k", &mut buf[..2]),
        Err(Errno::RANGE)
    );
    let n = rustix::fs::listxattr(&p, &mut buf[..]).unwrap();
    assert!(buf[..n].split(|&b| b == 0).any(|n| n == b"user.k"));
    rustix::fs::removexattr(&p, "user.k").unwrap();
    assert_eq!(
        rustix::fs::getxattr(&p, "user.k", &mut buf[..]),
        Err(Errno::NODATA)
    );
    // statfs is the source's.
    let (a, b) = (
        rustix::fs::statvfs(&pt.mnt).unwrap(),
        rustix::fs::statvfs(&pt.src).unwrap(),
    );
    assert_eq!(
        (a.f_blocks, a.f_bsize, a.f_files),
        (b.f_blocks, b.f_bsize, b.f_files)
    );
    // statx: birth time where the source has one.
    let sx = rustix::fs::statx(
        rustix::fs::CWD,
        &p,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::ALL,
    )
    .unwrap();
    let sy = rustix::fs::statx(
        rustix::fs::CWD,
        pt.s("f"),
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::ALL,
    )
    .unwrap();
    assert_eq!(sx.stx_ino, sy.stx_ino);
    if sy.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0 {
        assert_ne!(sx.stx_mask & rustix::fs::StatxFlags::BTIME.bits(), 0);
        assert_eq!(
            (sx.stx_btime.tv_sec, sx.stx_btime.tv_nsec),
            (sy.stx_btime.tv_sec, sy.stx_btime.tv_nsec)
        );
    }
    pt.stop();
}

#[test]
fn fallocate_seek_and_copy() {
    for mode in MODES {
        let Some(pt) = Pt::start("pt_falloc", mode, &[]) else {
            return;
        };
        use rustix::fs::{fallocate, seek, FallocateFlags, SeekFrom as S};
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(pt.m("sp"))
            .unwrap();
        f.write_all_at(&[1; 4096], 1 << 20).unwrap();
        assert_eq!(seek(&f, S::Data(0)).unwrap(), 1 << 20, "{mode:?}");
        assert_eq!(seek(&f, S::Hole(1 << 20)).unwrap(), (1 << 20) + 4096);
        fallocate(&f, FallocateFlags::KEEP_SIZE, 4 << 20, 8192).unwrap();
        assert_eq!(f.metadata().unwrap().len(), (1 << 20) + 4096);
        assert!(fs::metadata(pt.s("sp")).unwrap().blocks() >= 24);
        fallocate(
            &f,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            1 << 20,
            4096,
        )
        .unwrap();
        let mut b = [9u8; 16];
        f.read_exact_at(&mut b, 1 << 20).unwrap();
        assert_eq!(b, [0; 16]);
        fallocate(&f, FallocateFlags::empty(), 0, 3 << 20).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3 << 20);
        // copy_file_range between two files on the mount.
        let data = pattern(7, 100_000);
        fs::write(pt.m("from"), &data).unwrap();
        let (i, o) = (File::open(pt.m("from")).unwrap(), rw(&pt.m("sp")));
        let (mut oi, mut oo) = (10u64, 20u64);
        let n = rustix::fs::copy_file_range(&i, Some(&mut oi), &o, Some(&mut oo), 50_000).unwrap();
        assert!(n > 0);
        let mut got = vec![0u8; n];
        o.read_exact_at(&mut got, 20).unwrap();
        assert_eq!(got, data[10..10 + n]);
        let mut r = File::open(pt.s("sp")).unwrap();
        r.seek(SeekFrom::Start(20)).unwrap();
        let mut got2 = vec![0u8; n];
        r.read_exact(&mut got2).unwrap();
        assert_eq!(got2, got);
        drop((i, o, f));
        pt.stop();
    }
}

#[test]
fn tmpfile_unlinked_and_locks() {
    use rustix::fs::FlockOperation as L;
    for mode in MODES {
        let Some(pt) = Pt::start("pt_tmpfile", mode, &[]) else {
            return;
        };
        // O_TMPFILE: no name in the source until linked.
        let mut t = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_TMPFILE)
            .open(&pt.mnt)
            .unwrap();
        t.write_all(b"temporary").unwrap();
        assert_eq!(fs::read_dir(&pt.src).unwrap().count(), 0, "{mode:?}");
        let mut s = String::new();
        t.seek(SeekFrom::Start(0)).unwrap();
        t.read_to_string(&mut s).unwrap();
        assert_eq!(s, "temporary");
        drop(t);
        // An unlinked file stays usable while open.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(pt.m("u"))
            .unwrap();
        fs::remove_file(pt.m("u")).unwrap();
        assert!(!pt.s("u").exists());
        f.write_all_at(b"still here", 0).unwrap();
        let mut b = [0u8; 10];
        f.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"still here");
        assert_eq!(f.metadata().unwrap().nlink(), 0);
        drop(f);
        // Locks are the kernel's (local to the mount): flock, POSIX, OFD.
        fs::write(pt.m("lock"), b"").unwrap();
        let (a, b) = (rw(&pt.m("lock")), rw(&pt.m("lock")));
        rustix::fs::flock(&a, L::NonBlockingLockExclusive).unwrap();
        assert_eq!(
            rustix::fs::flock(&b, L::NonBlockingLockExclusive),
            Err(Errno::WOULDBLOCK)
        );
        rustix::fs::flock(&a, L::Unlock).unwrap();
        rustix::fs::fcntl_lock(&a, L::NonBlockingLockExclusive).unwrap();
        let p = pt.m("lock");
        let other = || {
            let f = rw(&p);
            errno_of(
                rustix::fs::fcntl_lock(&f, L::NonBlockingLockShared).map_err(std::io::Error::from),
            )
        };
        assert_eq!(as_user(0, 0, other), nix::libc::EAGAIN);
        rustix::fs::fcntl_lock(&a, L::Unlock).unwrap();
        assert_eq!(as_user(0, 0, other), 0);
        // OFD locks: per open file description, even within one process.
        let ofd = |f: &File, ty: i16| {
            let mut fl: nix::libc::flock = whole_file_flock();
            fl.l_type = ty;
            nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&fl))
        };
        ofd(&a, nix::libc::F_WRLCK as i16).unwrap();
        assert_eq!(
            ofd(&b, nix::libc::F_RDLCK as i16),
            Err(nix::errno::Errno::EAGAIN)
        );
        ofd(&a, nix::libc::F_UNLCK as i16).unwrap();
        ofd(&b, nix::libc::F_RDLCK as i16).unwrap();
        drop((a, b));
        pt.stop();
    }
}

/// A whole-file `struct flock` (type set by the caller).
fn whole_file_flock() -> nix::libc::flock {
    nix::libc::flock {
        l_type: 0,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Escapes: names that are not one component, symlinks (absolute, to /etc, and
/// relative with `..`) and a directory replaced by a symlink while the mount holds
/// it: nothing the daemon does lands outside the source.
#[test]
fn escapes_are_refused() {
    let Some(pt) = Pt::start("pt_escapes", Mode::On, &["--ttl", "0"]) else {
        return;
    };
    let outside = pt.dir.join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink("/etc", pt.s("etc")).unwrap();
    std::os::unix::fs::symlink(&outside, pt.s("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", pt.s("rel")).unwrap();
    // Shown as symlinks, with their targets, never as the directories they name.
    for n in ["etc", "abs", "rel"] {
        let st = fs::symlink_metadata(pt.m(n)).unwrap();
        assert!(st.file_type().is_symlink(), "{n}");
    }
    // `..` of the mount's root is the kernel's business (the mountpoint's parent),
    // never a lookup in the source's parent.
    assert_eq!(
        fs::canonicalize(pt.m("..")).unwrap(),
        fs::canonicalize(&pt.dir).unwrap()
    );
    // A directory the mount holds (cwd of a child, an open dir fd) and that is
    // replaced by a symlink to outside in the source: operations through the held
    // directory stay in the original directory.
    fs::create_dir(pt.s("d")).unwrap();
    let held = File::open(pt.m("d")).unwrap();
    fs::rename(pt.s("d"), pt.s("d.old")).unwrap();
    std::os::unix::fs::symlink(&outside, pt.s("d")).unwrap();
    let fd = rustix::fs::openat(
        &held,
        "created",
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
        rustix::fs::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    drop(fd);
    assert!(pt.s("d.old/created").exists());
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing created outside"
    );
    drop(held);
    pt.stop();
}

/// Live handoff with files held open: a plain file, an unlinked one and a
/// directory stream keep working across two handoffs; backing ids cross with
/// their counts and none is left registered once everything is closed.
#[test]
fn handoff_keeps_open_files() {
    for (mode, extra) in [
        (Mode::On, &["--ttl", "0"][..]),
        (Mode::Off, &["--ttl", "0"][..]),
        (Mode::On, &["--ttl", "0", "--no-file-handles"][..]),
    ] {
        let Some(mut pt) = Pt::start("pt_handoff", mode, extra) else {
            return;
        };
        // A removed directory still held open: its node lives on in the kernel.
        fs::create_dir(pt.m("removed")).unwrap();
        let removed = File::open(pt.m("removed")).unwrap();
        fs::remove_dir(pt.m("removed")).unwrap();
        fs::write(pt.m("kept"), b"0123456789").unwrap();
        let kept = rw(&pt.m("kept"));
        let reader = File::open(pt.m("kept")).unwrap();
        let gone = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(pt.m("gone"))
            .unwrap();
        gone.write_all_at(b"unlinked data", 0).unwrap();
        fs::remove_file(pt.m("gone")).unwrap();
        fs::create_dir(pt.m("dir")).unwrap();
        for i in 0..50 {
            fs::write(pt.m(&format!("dir/{i}")), b"").unwrap();
        }
        let mut stream = fs::read_dir(pt.m("dir")).unwrap();
        let first: Vec<_> = stream
            .by_ref()
            .take(10)
            .map(|e| e.unwrap().file_name())
            .collect();
        for round in 0..2 {
            pt.handoff();
            let log = pt.log_text();
            if mode == Mode::On {
                assert!(log.contains("kernel passthrough on"), "{log}");
                // kept (rw + ro share one id) and gone.
                assert!(
                    log.contains("and 2 backing ids"),
                    "{mode:?} {extra:?} round {round}: {log}"
                );
            } else {
                assert!(log.contains("and 0 backing ids"), "{log}");
            }
            kept.write_all_at(format!("round{round}").as_bytes(), 0)
                .unwrap();
            let mut b = [0u8; 10];
            reader.read_exact_at(&mut b, 0).unwrap();
            assert_eq!(&b[..6], format!("round{round}").as_bytes());
            let mut g = [0u8; 13];
            gone.read_exact_at(&mut g, 0).unwrap();
            assert_eq!(&g, b"unlinked data");
            // GETATTR on the removed directory (no attribute cache: --ttl 0).
            let st = removed.metadata().unwrap();
            assert!(st.is_dir() && st.nlink() <= 1, "{mode:?}: {st:?}");
            gone.write_all_at(b"U", 0).unwrap();
            gone.write_all_at(b"u", 0).unwrap();
            assert_eq!(
                fs::read(pt.s("kept")).unwrap()[..6],
                *format!("round{round}").as_bytes()
            );
            // New opens after the handoff work and share the inode's backing id.
            assert_eq!(fs::read(pt.m("kept")).unwrap().len(), 10);
        }
        let rest: Vec<_> = stream.map(|e| e.unwrap().file_name()).collect();
        assert_eq!(
            first.len() + rest.len(),
            50,
            "{mode:?}: the directory stream carried over"
        );
        drop((kept, reader, gone, removed));
        // Let the kernel's RELEASEs arrive (they are asynchronous).
        let deadline = Instant::now() + WAIT;
        let log = loop {
            pt.handoff();
            let log = pt.log_text();
            if log.contains("restored 0 open files and 0 backing ids") || Instant::now() > deadline
            {
                break log;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            log.contains("restored 0 open files and 0 backing ids"),
            "{log}"
        );
        let log = pt.stop();
        assert!(
            log.contains("0 backing ids registered, 0 files open"),
            "{log}"
        );
    }
}

/// The filesystem called directly, without a mount.
mod core {
    use super::*;
    use fuse_session::{Errno as FErrno, Filesystem, RequestContext};
    use passfs::{Config, PassFs};
    use std::ffi::OsStr;

    fn fs_over(dir: &Path) -> PassFs {
        let fd = rustix::fs::open(
            dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        PassFs::new(fd, Config::default()).unwrap()
    }

    #[test]
    fn names_and_symlinks() {
        let dir = temp_dir("pt-core");
        let src = dir.join("src");
        fs::create_dir(&src).unwrap();
        fs::write(dir.join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink("/etc", src.join("etc")).unwrap();
        std::os::unix::fs::symlink("..", src.join("up")).unwrap();
        fs::create_dir(src.join("sub")).unwrap();
        let fs = fs_over(&src);
        let ctx = RequestContext::new(1, 0, 0, 1);
        let root = fs.root();
        for bad in ["..", ".", "", "sub/../..", "a/b", "../secret"] {
            assert_eq!(
                fs.lookup(&ctx, &root, OsStr::new(bad)).map(|_| ()),
                Err(FErrno::EINVAL),
                "{bad:?}"
            );
        }
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            fs.lookup(&ctx, &root, OsStr::from_bytes(b"a\0b"))
                .map(|_| ()),
            Err(FErrno::EINVAL)
        );
        // A symlink is a symlink node: looking inside it fails, never follows.
        for link in ["etc", "up"] {
            let e = fs.lookup(&ctx, &root, OsStr::new(link)).unwrap();
            assert_eq!(e.node.kind, nix::libc::S_IFLNK);
            assert_eq!(
                fs.lookup(&ctx, &e.node, OsStr::new("passwd")).map(|_| ()),
                Err(FErrno::ENOTDIR)
            );
            assert_eq!(
                fs.lookup(&ctx, &e.node, OsStr::new("secret")).map(|_| ()),
                Err(FErrno::ENOTDIR)
            );
            assert!(fs
                .open(&ctx, &e.node, OpenFlags::RDONLY, FuseOpenFlags::EMPTY)
                .is_err());
            assert!(fs.opendir(&ctx, &e.node, 0).is_err());
        }
        // Creating through names with a separator is refused.
        assert_eq!(
            fs.mkdir(&ctx, &root, OsStr::new("../escape"), 0o755)
                .map(|_| ()),
            Err(FErrno::EINVAL)
        );
        assert_eq!(
            fs.rename(
                &ctx,
                &root,
                OsStr::new("sub"),
                &root,
                OsStr::new("../moved"),
                RenameFlags::EMPTY
            ),
            Err(FErrno::EINVAL)
        );
        assert!(!dir.join("escape").exists() && !dir.join("moved").exists());
        // A node value naming an inode the handle cannot find is stale, not a crash.
        let mut n = fs.lookup(&ctx, &root, OsStr::new("sub")).unwrap().node;
        fs.forget(n.clone());
        if let Some(h) = n.fh.as_mut() {
            h.bytes = vec![0xff; 200];
        }
        assert!(fs.getattr(&ctx, &n, None).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Sources on tmpfs (which has file handles) and ramfs (which has none: every
/// node's descriptor is kept and crosses a handoff), with passthrough on: data,
/// a handoff with an open unlinked file, names still resolvable after it.
#[test]
fn tmpfs_and_ramfs_sources() {
    for fstype in ["tmpfs", "ramfs"] {
        let Some(mut pt) = Pt::start_on("pt_sources", Mode::On, &[], Some(fstype), "src") else {
            return;
        };
        let handles = !pt.log_text().contains("no file handles");
        assert_eq!(handles, fstype == "tmpfs", "{fstype}: {}", pt.log_text());
        fs::create_dir_all(pt.m("a/b")).unwrap();
        fs::write(pt.m("a/b/f"), b"deep").unwrap();
        let held = rw(&pt.m("a/b/f"));
        let gone = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(pt.m("a/gone"))
            .unwrap();
        gone.write_all_at(b"gone", 0).unwrap();
        fs::remove_file(pt.m("a/gone")).unwrap();
        pt.handoff();
        assert!(
            pt.log_text().contains("and 2 backing ids"),
            "{fstype}: {}",
            pt.log_text()
        );
        let mut b = [0u8; 4];
        gone.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"gone");
        held.write_all_at(b"DEEP", 0).unwrap();
        assert_eq!(fs::read(pt.s("a/b/f")).unwrap(), b"DEEP");
        // Nodes the new process never saw before: resolved by handle or by the
        // descriptors that crossed.
        assert_eq!(fs::read(pt.m("a/b/f")).unwrap(), b"DEEP");
        fs::write(pt.m("a/b/g"), b"new").unwrap();
        assert_eq!(fs::read(pt.s("a/b/g")).unwrap(), b"new");
        drop((held, gone));
        pt.stop();
    }
}

/// A handoff needing more descriptors than one message carries (253) is
/// refused before anything is committed: the old daemon serves on, open files
/// keep working.
#[test]
fn handoff_beyond_the_descriptor_limit_is_refused() {
    let Some(mut pt) = Pt::start("pt_fd_limit", Mode::On, &[]) else {
        return;
    };
    let files: Vec<File> = (0..260)
        .map(|i| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(pt.m(&format!("f{i}")))
                .unwrap()
        })
        .collect();
    let sock = pt.sock.to_string_lossy().into_owned();
    let log = pt.dir.join("refused.log");
    let (mut child, _rx) = spawn(&["--takeover", &sock], &log);
    let st = wait_exit(&mut child, WAIT).expect("the takeover process exits");
    assert_eq!(st.code(), Some(1));
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("at most 253"), "{text}");
    for (i, f) in files.iter().enumerate() {
        f.write_all_at(format!("{i}").as_bytes(), 0).unwrap();
    }
    assert_eq!(fs::read(pt.s("f259")).unwrap(), b"259");
    drop(files);
    let _ = &mut pt;
    pt.stop();
}

/// Shared writable mappings through the mount reach the source file (with
/// passthrough the kernel maps the backing file).
#[test]
fn shared_mappings() {
    use nix::sys::mman::{mmap, msync, munmap, MapFlags, MsFlags, ProtFlags};
    for mode in MODES {
        let Some(pt) = Pt::start("pt_mmap", mode, &[]) else {
            return;
        };
        fs::write(pt.m("m"), vec![b'.'; 8192]).unwrap();
        let f = rw(&pt.m("m"));
        let len = std::num::NonZeroUsize::new(8192).unwrap();
        // SAFETY: a fresh shared mapping of an open file, used only through the
        // returned pointer within its length, then unmapped.
        unsafe {
            let p = mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &f,
                0,
            )
            .unwrap();
            let bytes = std::slice::from_raw_parts_mut(p.as_ptr().cast::<u8>(), 8192);
            assert_eq!(bytes[4096], b'.');
            bytes[4096..4102].copy_from_slice(b"mapped");
            msync(p, 8192, MsFlags::MS_SYNC).unwrap();
            munmap(p, 8192).unwrap();
        }
        drop(f);
        assert_eq!(
            &fs::read(pt.s("m")).unwrap()[4096..4102],
            b"mapped",
            "{mode:?}"
        );
        pt.stop();
    }
}

/// The saved state is untrusted: restore and the cross-check with the session's
/// tables refuse what does not add up (no mount needed).
mod restore {
    use super::{node, snapshot};
    use crate::passfs::{Backing, Config, Handle, PassFs};
    use fuse_session::{Filesystem, HandleKind, HandleState, NodeState, RequestContext};
    use fuse_snapshot::{FdRestorer, FdSaver, FdSlot, SnapshotFs};
    use std::ffi::OsStr;
    use std::os::fd::OwnedFd;

    fn saved(dir: &std::path::Path, config: Config) -> (snapshot::PassState, Vec<OwnedFd>, PassFs) {
        let fd = rustix::fs::open(
            dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let fs = PassFs::new(fd, config).unwrap();
        let mut saver = FdSaver::new();
        let state = fs.save(&mut saver).unwrap();
        (state, saver.into_fds(), fs)
    }

    fn dup(fds: &[OwnedFd]) -> FdRestorer {
        FdRestorer::new(fds.iter().map(|f| f.try_clone().unwrap()).collect())
    }

    fn node_state(nodeid: u64, node: node::Node) -> NodeState<node::Node> {
        NodeState {
            nodeid,
            generation: 0,
            lookups: 1,
            node,
        }
    }

    fn handle_state(fh: u64, nodeid: u64, handle: Handle) -> HandleState<Handle> {
        HandleState {
            fh,
            kind: HandleKind::File,
            nodeid,
            flags: 0,
            handle,
        }
    }

    #[test]
    fn bad_states_are_refused() {
        let dir = super::temp_dir("pt-restore");
        std::fs::write(dir.join("f"), b"x").unwrap();
        let ctx = RequestContext::new(1, 0, 0, 1);

        // Descriptor mode: a node's descriptor crosses; without it, refused.
        let no_handles = Config {
            file_handles: false,
            ..Config::default()
        };
        let (_, _, live) = saved(&dir, no_handles);
        let f = live
            .lookup(&ctx, &live.root(), OsStr::new("f"))
            .unwrap()
            .node;
        assert!(f.fh.is_none());
        let mut saver = FdSaver::new();
        let state = live.save(&mut saver).unwrap();
        let mut fds = saver.into_fds();
        // One more descriptor: the source directory again (not the node's inode).
        let other = FdSlot(fds.len() as u32);
        fds.push(live.root_fd.try_clone().unwrap());
        assert_eq!(state.nodes.len(), 1);
        let ok = PassFs::restore(state.clone(), &mut dup(&fds)).unwrap();
        ok.check_session(&[node_state(2, f.clone())], &[]).unwrap();
        assert!(ok.getattr(&ctx, &f, None).is_ok());
        let mut missing = state.clone();
        missing.nodes.clear();
        let fs = PassFs::restore(missing, &mut dup(&fds)).unwrap();
        assert!(fs
            .check_session(&[node_state(2, f.clone())], &[])
            .unwrap_err()
            .contains("did not cross"));
        // A descriptor that is not the node's inode, or no descriptor at all.
        let mut swapped = state.clone();
        swapped.nodes[0].1 = other;
        let e = PassFs::restore(swapped, &mut dup(&fds)).err().unwrap();
        assert!(e.contains("is not inode"), "{e}");
        let mut gone = state.clone();
        gone.root.1 = FdSlot(99);
        let e = PassFs::restore(gone, &mut dup(&fds)).err().unwrap();
        assert!(e.contains("missing"), "{e}");

        // Handles and backing ids must agree with the session's handles.
        let (mut state, mut fds, live) = saved(&dir, Config::default());
        let file = FdSlot(fds.len() as u32);
        fds.push(live.root_fd.try_clone().unwrap());
        state.passthrough = true;
        state.next_id = 10;
        state.files = vec![(3, file)];
        let root = state.root.0.clone();
        state.backings = vec![(
            root.clone(),
            Backing {
                id: 7,
                writable: true,
                refs: 2,
            },
        )];
        let fs = PassFs::restore(state.clone(), &mut dup(&fds)).unwrap();
        let h = |id, backing| Handle { id, backing };
        let nodes = [node_state(1, root.clone())];
        assert!(fs
            .check_session(
                &nodes,
                &[handle_state(1, 1, h(3, 7)), handle_state(2, 1, h(3, 7))]
            )
            .is_ok());
        // One use too few, an unknown id, a missing open file.
        assert!(fs
            .check_session(&nodes, &[handle_state(1, 1, h(3, 7))])
            .is_err());
        assert!(fs
            .check_session(
                &nodes,
                &[
                    handle_state(1, 1, h(3, 7)),
                    handle_state(2, 1, h(3, 7)),
                    handle_state(3, 1, h(3, 8))
                ]
            )
            .is_err());
        assert!(fs
            .check_session(
                &nodes,
                &[handle_state(1, 1, h(4, 7)), handle_state(2, 1, h(3, 7))]
            )
            .is_err());
        // Ids out of range, zero counts, ids without passthrough.
        let mut bad = state.clone();
        bad.files = vec![(10, file)];
        let e = PassFs::restore(bad, &mut dup(&fds)).err().unwrap();
        assert!(e.contains("out of range"), "{e}");
        let mut bad = state.clone();
        bad.backings[0].1.refs = 0;
        assert!(PassFs::restore(bad, &mut dup(&fds)).is_err());
        let mut bad = state.clone();
        bad.passthrough = false;
        assert!(PassFs::restore(bad, &mut dup(&fds)).is_err());
        // A forged, oversized file handle is a stale node, not a crash.
        let mut forged = root.clone();
        forged.ino += 1;
        forged.fh = Some(node::SavedHandle {
            handle_type: 1,
            bytes: vec![0; 4096],
        });
        assert!(fs.getattr(&ctx, &forged, None).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A rename race: while clients create, list and rename through `mnt/d`, the
/// source swaps `d` with a symlink to a directory outside it (`RENAME_EXCHANGE`,
/// thousands of times). The symlink is relative, `../outside`: from the daemon's
/// side it names an existing directory beside SOURCE, from the client's side
/// (the mount) a path that does not exist; so anything that appears in that
/// directory was made by the daemon following a symlink. Nothing may.
#[test]
fn rename_race_stays_inside() {
    let Some(pt) = Pt::start_on("pt_race", Mode::On, &["--ttl", "0"], None, "a/src") else {
        return;
    };
    let outside = pt.src.parent().unwrap().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o777)).unwrap();
    assert!(
        !pt.mnt.join("../outside").exists(),
        "the client cannot see it"
    );
    fs::create_dir(pt.s("d")).unwrap();
    std::os::unix::fs::symlink("../outside", pt.s("s")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (d, s, stop) = (pt.s("d"), pt.s("s"), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &d,
                    rustix::fs::CWD,
                    &s,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                n += 1;
            }
            n
        })
    };
    let mut made = 0;
    for i in 0..1500 {
        let p = pt.m(&format!("d/f{i}"));
        if fs::write(&p, b"x").is_ok() {
            made += 1;
        }
        let _ = fs::create_dir(pt.m(&format!("d/sub{i}")));
        let _ = fs::rename(pt.m(&format!("d/f{i}")), pt.m(&format!("d/g{i}")));
        let _ = fs::read_dir(pt.m("d")).map(|r| r.count());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0 && made > 0, "swaps {swaps}, files made {made}");
    let escaped: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(escaped.is_empty(), "made outside SOURCE: {escaped:?}");
    pt.stop();
}

/// Reads one handoff message: (kind, body, descriptors).
fn read_message(s: &UnixStream) -> Option<(Kind, Vec<u8>, Vec<OwnedFd>)> {
    let mut h = [0u8; message::HEADER_LEN];
    let mut fds = Vec::new();
    if !recv_exact_with_fds(s, &mut h, &mut fds).ok()? {
        return None;
    }
    let header = message::parse_header(&h, 1 << 30).ok()?;
    let mut body = vec![0u8; header.len];
    recv_exact_with_fds(s, &mut body, &mut fds).ok()?;
    Some((header.kind, body, fds))
}

/// Waits until `path` exists (made by the daemon), or panics with `log`.
fn wait_for(path: &Path, log: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared; log:\n{}",
            path.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The sockets process `pid` holds.
fn sockets_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| {
                fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

/// Requests in flight across a live handoff: an O_EXCL CREATE, a RENAME and a
/// MKDIR that ran on the source in the old daemon, their replies not yet written
/// (`FUSE_LIVE_PT_HOLD` holds each there). Outside a fd store passthrough writes
/// no intent: the old daemon's pause (`Running::pause`) waits for every request
/// in flight and answers it itself, so none is run twice. A handoff whose new
/// process goes away once it has the Snapshot (the test closes the connection),
/// one whose real successor crashes there (fault point), both rolled back with
/// the old daemon serving on, then one that commits: each call succeeds once,
/// with one effect, and the files stay readable through the successor.
#[test]
fn handoff_with_a_request_in_flight() {
    for mode in MODES {
        let marks = temp_dir("pt_inflight_marks");
        let env = [(
            passfs::HOLD_ENV,
            format!("create,rename,mkdir:{}", marks.display()),
        )];
        let Some(mut pt) = Pt::start_env("pt_inflight", mode, &[], None, "src", &env) else {
            return;
        };
        let old = pt.child.as_ref().expect("a daemon").id();

        // 1. A CREATE held in the old daemon; the new process dies after the
        //    Snapshot (here the test plays it: Hello, then the connection closes).
        let c = pt.m("c");
        let create = std::thread::spawn(move || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&c)
                .and_then(|mut f| f.write_all(b"payload"))
        });
        wait_for(&marks.join("held-create"), || pt.log_text());
        assert!(pt.s("c").exists(), "the held CREATE ran on the source");
        let s = UnixStream::connect(&pt.sock).expect("connect to the upgrade socket");
        s.set_read_timeout(Some(WAIT)).unwrap();
        let hello = Hello {
            min_version: 1,
            max_version: fuse_snapshot::FORMAT_VERSION,
            pid: std::process::id(),
            features: 0,
        };
        send_with_fds(&s, &hello.encode(), &[]).expect("send Hello");
        let (k, _, _) = read_message(&s).expect("Accept");
        assert_eq!(k, Kind::Accept, "log:\n{}", pt.log_text());
        // The old daemon pauses now; its pause waits for the held CREATE.
        fs::write(marks.join("go-create"), b"").unwrap();
        let (k, _, fds) = read_message(&s).expect("Snapshot");
        assert_eq!(k, Kind::Snapshot, "log:\n{}", pt.log_text());
        drop(fds);
        drop(s);
        let r = create.join().expect("the create thread");
        assert!(
            r.is_ok(),
            "{mode:?}: the CREATE in flight: {r:?}\nlog:\n{}",
            pt.log_text()
        );
        assert_eq!(fs::read(pt.s("c")).unwrap(), b"payload");
        let again = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(pt.m("c"));
        assert_eq!(
            again.map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AlreadyExists),
            "one file"
        );
        assert_eq!(
            pt.child.as_ref().expect("a daemon").id(),
            old,
            "the old daemon serves on"
        );
        fs::write(pt.m("after-rollback"), b"x").expect("the old daemon serves on");

        // 1b. A RENAME held in the old daemon; a real successor crashes once it
        //     has the Snapshot (fault point `handoff-new-received`: it aborts, as
        //     a SIGKILL would end it, before Ack). The old daemon serves on.
        let (from, to) = (pt.m("c"), pt.m("r"));
        let rename = std::thread::spawn(move || fs::rename(&from, &to));
        wait_for(&marks.join("held-rename"), || pt.log_text());
        assert!(pt.s("r").exists(), "the held RENAME ran on the source");
        let before = sockets_of(old);
        let go = marks.join("go-rename");
        let release = std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            while sockets_of(old) <= before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            fs::write(go, b"").unwrap();
        });
        let sock = pt.sock.to_string_lossy().into_owned();
        let crash_log = pt.dir.join("crashed-successor.log");
        let (mut successor, _rx) = spawn_env(
            &["--takeover", &sock],
            &crash_log,
            &[("FUSE_LIVE_FAULT", "handoff-new-received:1".to_owned())],
        );
        let st = wait_exit(&mut successor, WAIT).expect("the crashing successor ends");
        release.join().expect("the release thread");
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                st.signal(),
                Some(nix::libc::SIGABRT),
                "the successor crashed at handoff-new-received: {st:?}\n{}",
                fs::read_to_string(&crash_log).unwrap_or_default()
            );
        }
        let r = rename.join().expect("the rename thread");
        assert!(
            r.is_ok(),
            "{mode:?}: the RENAME in flight: {r:?}\nlog:\n{}",
            pt.log_text()
        );
        assert!(!pt.s("c").exists() && pt.s("r").exists(), "renamed once");
        assert_eq!(
            pt.child.as_ref().expect("a daemon").id(),
            old,
            "the old daemon serves on"
        );
        assert_eq!(fs::read(pt.m("r")).unwrap(), b"payload");

        // 2. A MKDIR held in the old daemon; a real successor takes over and
        //    commits. The hold ends once the old daemon accepted its connection.
        let d = pt.m("d");
        let mkdir = std::thread::spawn(move || fs::create_dir(&d));
        wait_for(&marks.join("held-mkdir"), || pt.log_text());
        assert!(pt.s("d").is_dir(), "the held MKDIR ran on the source");
        let before = sockets_of(old);
        let go = marks.join("go-mkdir");
        let release = std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            while sockets_of(old) <= before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            fs::write(go, b"").unwrap();
        });
        pt.handoff();
        release.join().expect("the release thread");
        let r = mkdir.join().expect("the mkdir thread");
        assert!(
            r.is_ok(),
            "{mode:?}: the MKDIR in flight: {r:?}\nlog:\n{}",
            pt.log_text()
        );
        assert!(pt.s("d").is_dir());
        assert_eq!(
            fs::create_dir(pt.m("d")).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AlreadyExists),
            "one directory"
        );
        assert_eq!(fs::read(pt.m("r")).unwrap(), b"payload");
        let mut names: Vec<String> = fs::read_dir(pt.m(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["after-rollback", "d", "r"]);
        pt.stop();
        let _ = fs::remove_dir_all(&marks);
        eprintln!(
            "{mode:?}: CREATE, RENAME and MKDIR in flight across two failed handoffs and a \
             committed one"
        );
    }
}
