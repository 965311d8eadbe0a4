//! Records golden FUSE request vectors from the running kernel.
//!
//! ```text
//! cargo run -p fuse-live-tools --bin record_golden -- OUTDIR
//! ```
//!
//! A throwaway, self-contained FUSE daemon (it serves without `fuse-session`, whose
//! `dev::fusectl` it uses only for the watchdog): it opens
//! `/dev/fuse`, mounts a fresh directory under the temp dir with `mount(2)`, serves a
//! tiny in-memory filesystem with hand-built replies, and runs a workload through
//! `std::fs`, `nix` and `rustix` calls that makes the kernel send as many different
//! opcodes as it will. Every request the kernel sends is saved byte for byte as
//! `OUTDIR/NNNN-OPNAME.bin` (NNNN is the arrival order), and the INIT negotiation goes
//! to `OUTDIR/negotiated.txt`.
//!
//! A second, short session mounts a `fuseblk` filesystem on a loop device (made with
//! `losetup`) to record BMAP and DESTROY, which the kernel only sends to block-device
//! mounts. It is skipped, with a message, when no loop device can be set up.
//!
//! It needs root. Setting `RECORD_GOLDEN_STALL=1` leaves the first OPEN unanswered, to
//! check that the watchdog recovers. A watchdog aborts the connection through
//! `/sys/fs/fuse/connections/N/abort` and lazily unmounts if any step stalls, and the
//! recorder always unmounts at the end, so it leaves no mount and no process behind.
//!
//! The workload's tricks, so that the rarer opcodes appear:
//! - `LOOKUP("trigger-retrieve")` makes the daemon send `NOTIFY_RETRIEVE` for the
//!   cached `file`, and the kernel answers with a NOTIFY_REPLY request;
//! - `GETXATTR("user.golden.resend")` is not answered: the daemon sends
//!   `NOTIFY_RESEND` and the kernel resends it with bit 63 of `unique` set;
//! - a SETLKW on byte 4242 is held unanswered while a child process waits on it; the
//!   child is killed, the kernel sends INTERRUPT, the daemon answers EINTR;
//! - a child process with the supplementary group 4242 creates files in a directory
//!   of group 4242, so CREATE and MKDIR carry the `CREATE_SUPP_GROUP` extension;
//! - `COPY_FILE_RANGE_64` is refused with ENOSYS once, so the kernel falls back to
//!   `COPY_FILE_RANGE` and both are recorded;
//! - `echo 2 > /proc/sys/vm/drop_caches` at the end makes FORGET and BATCH_FORGET.
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl;
use fuse_wire::abi::{self, *};
use fuse_wire::{InitFlags, Opcode};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::libc;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{AccessFlags, Gid, Uid};
use zerocopy::byteorder::native_endian::{I32, I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the read buffer: at least header + max_write, and the kernel refuses reads
/// into buffers smaller than it needs.
const BUF_SIZE: usize = (1 << 20) + 4096;
/// `max_write` we announce in INIT.
const MAX_WRITE: u32 = 128 * 1024;
/// How long one workload step may take before the watchdog aborts the connection.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole session may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Byte offset of the SETLKW the daemon holds until it is interrupted.
const DELAYED_LOCK_START: u64 = 4242;
/// The supplementary group used to make the kernel send the supp-groups extension.
const SUPP_GID: u32 = 4242;
/// `notify_unique` of our NOTIFY_RETRIEVE.
const RETRIEVE_UNIQUE: u64 = 0x00c0_ffee;
/// Name whose LOOKUP makes the daemon send NOTIFY_RETRIEVE.
const TRIGGER_RETRIEVE: &[u8] = b"trigger-retrieve";
/// Extended attribute whose GETXATTR makes the daemon send NOTIFY_RESEND.
const TRIGGER_RESEND: &[u8] = b"user.golden.resend";
/// Fixed timestamps so replies are reproducible.
const TIME: u64 = 1_700_000_000;

/// INIT flags we accept when the kernel offers them: each makes more opcodes or more
/// request shapes appear (extensions, `flags2`, the longer `fuse_setxattr_in`, ...).
const WANTED: &[InitFlags] = &[
    InitFlags::ASYNC_READ,
    InitFlags::POSIX_LOCKS,
    InitFlags::ATOMIC_O_TRUNC,
    InitFlags::EXPORT_SUPPORT,
    InitFlags::BIG_WRITES,
    InitFlags::FLOCK_LOCKS,
    InitFlags::HAS_IOCTL_DIR,
    InitFlags::DO_READDIRPLUS,
    InitFlags::READDIRPLUS_AUTO,
    InitFlags::PARALLEL_DIROPS,
    InitFlags::ABORT_ERROR,
    InitFlags::MAX_PAGES,
    InitFlags::HANDLE_KILLPRIV_V2,
    InitFlags::SETXATTR_EXT,
    InitFlags::INIT_EXT,
    InitFlags::SECURITY_CTX,
    InitFlags::CREATE_SUPP_GROUP,
    InitFlags::HAS_RESEND,
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 4 && args[1] == "--child" {
        return child_main(&args[2], Path::new(&args[3]));
    }
    if args.len() != 2 || args[1].starts_with('-') {
        eprintln!("usage: record_golden OUTDIR   (as root)");
        return ExitCode::from(2);
    }
    if !Uid::effective().is_root() {
        eprintln!("record_golden: needs root (mount(2), drop_caches, fusectl)");
        return ExitCode::from(2);
    }
    match run(Path::new(&args[1])) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("record_golden: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Child-process helpers of the workload (they need their own process).
fn child_main(what: &str, path: &Path) -> ExitCode {
    let result = match what {
        "setlkw" => child_setlkw(path),
        "supp-create" => child_supp_create(path),
        _ => Err(io::Error::other("unknown child")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("record_golden child {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Waits on a lock the daemon never grants; the parent kills us, which makes the
/// kernel send INTERRUPT.
fn child_setlkw(path: &Path) -> io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let fl = flock(libc::F_WRLCK, DELAYED_LOCK_START as i64, 1);
    nix::fcntl::fcntl(&f, FcntlArg::F_SETLKW(&fl))?;
    Ok(())
}

/// Creates entries in a directory of group [`SUPP_GID`] while being a member of it:
/// the kernel then adds the supplementary-group extension.
fn child_supp_create(dir: &Path) -> io::Result<()> {
    nix::unistd::setgroups(&[Gid::from_raw(0), Gid::from_raw(SUPP_GID)])?;
    File::create(dir.join("supp-file"))?;
    fs::create_dir(dir.join("supp-dir"))?;
    Ok(())
}

fn flock(typ: libc::c_int, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: typ as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

/// Runs both sessions.
fn run(outdir: &Path) -> io::Result<()> {
    fs::create_dir_all(outdir)?;
    for entry in fs::read_dir(outdir)? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".bin") || name == "negotiated.txt" {
            fs::remove_file(&p)?;
        }
    }
    fusectl::ensure_mounted()?;
    let recorder = Arc::new(Recorder {
        dir: outdir.to_path_buf(),
        next: AtomicUsize::new(0),
    });
    let first = session(&recorder, None);
    let second = match LoopDevice::setup() {
        Ok(dev) => {
            let r = session(&recorder, Some(&dev.path));
            dev.detach();
            r
        }
        Err(e) => {
            eprintln!("record_golden: skipping the fuseblk session (BMAP, DESTROY): {e}");
            Ok(())
        }
    };
    first?;
    second?;
    eprintln!(
        "record_golden: {} requests saved in {}",
        recorder.next.load(Ordering::SeqCst),
        outdir.display()
    );
    Ok(())
}

/// Saves requests as numbered files.
struct Recorder {
    dir: PathBuf,
    next: AtomicUsize,
}

impl Recorder {
    fn save(&self, bytes: &[u8]) {
        let opcode = u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let name = match Opcode(opcode).name() {
            Some(n) => n.to_string(),
            None => format!("OPCODE_{opcode}"),
        };
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.join(format!("{n:04}-{name}.bin"));
        if let Err(e) = fs::write(&path, bytes) {
            eprintln!("record_golden: writing {}: {e}", path.display());
        }
    }
}

/// A loop device over a small image file, for the `fuseblk` session.
struct LoopDevice {
    path: String,
    image: PathBuf,
}

impl LoopDevice {
    fn setup() -> io::Result<LoopDevice> {
        let image = std::env::temp_dir().join(format!("fuse-golden-{}.img", std::process::id()));
        File::create(&image)?.set_len(1 << 20)?;
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&image)
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                let _ = fs::remove_file(&image);
                return Err(io::Error::other(format!(
                    "losetup failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )));
            }
            Err(e) => {
                let _ = fs::remove_file(&image);
                return Err(e);
            }
        };
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(LoopDevice { path, image })
    }

    fn detach(self) {
        match Command::new("losetup").arg("-d").arg(&self.path).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("record_golden: losetup -d {}: {other:?}", self.path),
        }
        let _ = fs::remove_file(&self.image);
    }
}

/// State shared by the daemon thread and the workload.
#[derive(Default)]
struct Shared {
    /// The daemon holds the marked SETLKW.
    setlkw_held: AtomicBool,
    /// The daemon answered INIT.
    init_done: AtomicBool,
}

/// One mount, served and exercised; `blockdev` selects a `fuseblk` mount.
fn session(recorder: &Arc<Recorder>, blockdev: Option<&str>) -> io::Result<()> {
    let kind = if blockdev.is_some() { "blk" } else { "fs" };
    let mnt = std::env::temp_dir().join(format!("fuse-golden-{}-{kind}", std::process::id()));
    fs::create_dir_all(&mnt)?;
    let dev = Arc::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")?,
    );
    let mut opts = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
        dev.as_raw_fd()
    );
    let fstype = if blockdev.is_some() {
        opts.push_str(",blksize=4096");
        "fuseblk"
    } else {
        "fuse"
    };
    let source = blockdev.unwrap_or("fuse-golden");
    if let Err(e) = nix::mount::mount(
        Some(source),
        &mnt,
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    ) {
        let _ = fs::remove_dir(&mnt);
        return Err(io::Error::other(format!("mount {fstype}: {e}")));
    }
    // The fusectl directory is named after the connection's dev_t in the kernel's
    // internal encoding (MKDEV: major << 20 | minor): the anonymous device of a
    // `fuse` mount (`fusectl::connection_id`), the block device of a `fuseblk` mount.
    let conn = match blockdev {
        None => fusectl::connection_id(&mnt).ok(),
        Some(bdev) => {
            let rdev = nix::sys::stat::stat(bdev)?.st_rdev;
            Some((nix::sys::stat::major(rdev) << 20) | nix::sys::stat::minor(rdev))
        }
    };
    eprintln!(
        "record_golden: mounted {fstype} at {} (connection {conn:?})",
        mnt.display()
    );

    let shared = Arc::new(Shared::default());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = {
        let dev = Arc::clone(&dev);
        let recorder = Arc::clone(recorder);
        let shared = Arc::clone(&shared);
        let outdir = recorder.dir.clone();
        let first_session = blockdev.is_none();
        thread::spawn(move || {
            let mut d = Daemon::new(dev, recorder, shared, outdir, first_session);
            d.serve();
            let _ = done_tx.send(());
        })
    };

    let (progress, progress_rx) = mpsc::channel::<String>();
    let aborted = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let mnt = mnt.clone();
        let aborted = Arc::clone(&aborted);
        thread::spawn(move || watchdog(progress_rx, conn, &mnt, &aborted))
    };

    let workload = {
        let mnt = mnt.clone();
        let shared = Arc::clone(&shared);
        let progress = progress.clone();
        let aborted = Arc::clone(&aborted);
        let blk = blockdev.is_some();
        thread::spawn(move || {
            let w = Workload {
                m: mnt,
                progress,
                shared,
                aborted,
            };
            if blk {
                w.run_blk();
            } else {
                w.run();
            }
        })
    };
    if workload.join().is_err() {
        eprintln!("record_golden: the workload thread panicked");
    }

    let _ = progress.send("unmount".into());
    if let Err(e) = nix::mount::umount2(&mnt, MntFlags::empty()) {
        eprintln!("record_golden: umount: {e}; detaching");
        let _ = nix::mount::umount2(&mnt, MntFlags::MNT_DETACH);
    }
    let _ = progress.send("wait for the daemon".into());
    if done_rx.recv_timeout(STEP_TIMEOUT).is_err() {
        eprintln!("record_golden: the daemon did not stop; aborting the connection");
        abort_connection(conn, &mnt);
        let _ = done_rx.recv_timeout(STEP_TIMEOUT);
    }
    drop(progress);
    let _ = watchdog.join();
    let _ = server.join();
    drop(dev);
    // Still mounted only after a failure above; EINVAL (nothing mounted) is fine.
    let _ = nix::mount::umount2(&mnt, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(&mnt);
    if aborted.load(Ordering::SeqCst) {
        return Err(io::Error::other(
            "the watchdog aborted the session; vectors are incomplete",
        ));
    }
    Ok(())
}

/// Aborts the connection if no progress is reported for [`STEP_TIMEOUT`] or the
/// session exceeds [`SESSION_TIMEOUT`]; returns when the progress channel closes.
fn watchdog(rx: mpsc::Receiver<String>, conn: Option<u64>, mnt: &Path, aborted: &AtomicBool) {
    let start = Instant::now();
    loop {
        match rx.recv_timeout(STEP_TIMEOUT) {
            Ok(step) => {
                eprintln!("record_golden: step {step}");
                if start.elapsed() > SESSION_TIMEOUT {
                    eprintln!("record_golden: session deadline passed");
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                eprintln!("record_golden: a step stalled");
                break;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
    aborted.store(true, Ordering::SeqCst);
    abort_connection(conn, mnt);
    // Drain until the session ends.
    while rx.recv().is_ok() {}
}

/// Aborts the FUSE connection through fusectl and lazily unmounts.
fn abort_connection(conn: Option<u64>, mnt: &Path) {
    if let Some(n) = conn {
        if let Err(e) = fusectl::abort(n) {
            eprintln!("record_golden: aborting connection {n}: {e}");
        }
    }
    if let Err(e) = nix::mount::umount2(mnt, MntFlags::MNT_DETACH) {
        eprintln!("record_golden: lazy umount: {e}");
    }
}

// ---------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------

struct Workload {
    m: PathBuf,
    progress: mpsc::Sender<String>,
    shared: Arc<Shared>,
    /// Set by the watchdog: the mount is gone, so the paths now name the bare
    /// directory under it and no further step may run.
    aborted: Arc<AtomicBool>,
}

impl Workload {
    fn p(&self, name: &str) -> PathBuf {
        self.m.join(name)
    }

    /// Runs one step, reporting it to the watchdog and logging its error.
    fn step(&self, name: &str, f: impl FnOnce() -> io::Result<()>) {
        if self.aborted.load(Ordering::SeqCst) {
            eprintln!("record_golden: step {name} skipped (connection aborted)");
            return;
        }
        let _ = self.progress.send(name.to_string());
        if let Err(e) = f() {
            eprintln!("record_golden: step {name} failed: {e}");
        }
    }

    fn run(&self) {
        self.step("stat root (GETATTR)", || {
            nix::sys::stat::stat(&self.m)?;
            Ok(())
        });
        self.step("negative LOOKUP", || {
            match nix::sys::stat::stat(&self.p("missing")) {
                Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(e.into()),
                Ok(_) => Err(io::Error::other("missing exists")),
            }
        });
        self.step(
            "CREATE, WRITE, fstat, FSYNC, FALLOCATE, LSEEK, POLL, IOCTL, locks",
            || {
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    .open(self.p("file"))?;
                f.write_all(b"hello, golden world\n")?;
                nix::sys::stat::fstat(&f)?;
                f.sync_all()?;
                f.sync_data()?;
                nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 32)?;
                nix::fcntl::fallocate(
                    &f,
                    nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    0,
                    8192,
                )?;
                nix::unistd::lseek(&f, 0, nix::unistd::Whence::SeekData)?;
                nix::unistd::lseek(&f, 0, nix::unistd::Whence::SeekHole)?;
                let mut fds = [nix::poll::PollFd::new(
                    f.as_fd(),
                    nix::poll::PollFlags::POLLIN | nix::poll::PollFlags::POLLOUT,
                )];
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8))?;
                rustix::fs::ioctl_getflags(&f)?;
                let mut probe = flock(libc::F_WRLCK, 0, 10);
                nix::fcntl::fcntl(&f, FcntlArg::F_GETLK(&mut probe))?;
                nix::fcntl::fcntl(&f, FcntlArg::F_SETLK(&flock(libc::F_WRLCK, 0, 10)))?;
                nix::fcntl::fcntl(&f, FcntlArg::F_SETLKW(&flock(libc::F_RDLCK, 20, 0)))?;
                nix::fcntl::fcntl(&f, FcntlArg::F_SETLK(&flock(libc::F_UNLCK, 0, 0)))?;
                Ok(())
            },
        );
        self.step("flock (SETLK/SETLKW with FUSE_LK_FLOCK)", || {
            let f = File::open(self.p("file"))?;
            let locked = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| e)?;
            let f = locked.unlock().map_err(|(_, e)| e)?;
            let locked = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock)
                .map_err(|(_, e)| e)?;
            drop(locked);
            Ok(())
        });
        self.step("OPEN, READ", || {
            let mut s = String::new();
            File::open(self.p("file"))?.read_to_string(&mut s)?;
            Ok(())
        });
        self.step("NOTIFY_RETRIEVE -> NOTIFY_REPLY", || {
            let _ = nix::sys::stat::stat(&self.m.join("trigger-retrieve"));
            thread::sleep(Duration::from_millis(100));
            Ok(())
        });
        self.step("OPEN with O_TRUNC (ATOMIC_O_TRUNC)", || {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(self.p("file"))?;
            f.write_all(b"golden, again\n")?;
            Ok(())
        });
        self.step("SETATTR mode/size/times/owner", || {
            fs::set_permissions(self.p("file"), fs::Permissions::from_mode(0o600))?;
            let f = OpenOptions::new().write(true).open(self.p("file"))?;
            f.set_len(5)?;
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(TIME))?;
            drop(f);
            nix::unistd::chown(
                &self.p("file"),
                Some(Uid::from_raw(0)),
                Some(Gid::from_raw(0)),
            )?;
            Ok(())
        });
        self.step("STATX (statx with STATX_BTIME)", || {
            let md = fs::metadata(self.p("file"))?;
            let _ = md.created();
            Ok(())
        });
        self.step("MKDIR, READDIRPLUS, READDIR, FSYNCDIR", || {
            fs::create_dir(self.p("dir"))?;
            fs::create_dir(self.p("dir/sub"))?;
            File::create(self.p("dir/a"))?;
            File::create(self.p("dir/b"))?;
            File::create(self.p("dir/c"))?;
            let n = fs::read_dir(self.p("dir"))?.count();
            if n != 4 {
                eprintln!("record_golden: read_dir gave {n} entries, not 4");
            }
            File::open(self.p("dir"))?.sync_all()?;
            Ok(())
        });
        self.step("LINK, SYMLINK, READLINK, MKNOD", || {
            fs::hard_link(self.p("file"), self.p("dir/hard"))?;
            std::os::unix::fs::symlink("file", self.p("sym"))?;
            fs::read_link(self.p("sym"))?;
            nix::sys::stat::mknod(
                &self.p("fifo"),
                SFlag::S_IFIFO,
                Mode::from_bits_truncate(0o644),
                0,
            )?;
            Ok(())
        });
        self.step("RENAME, RENAME2 (NOREPLACE, EXCHANGE)", || {
            fs::rename(self.p("dir/a"), self.p("moved"))?;
            let cwd = nix::fcntl::AT_FDCWD;
            nix::fcntl::renameat2(
                cwd,
                &self.p("dir/b"),
                cwd,
                &self.p("b2"),
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )?;
            nix::fcntl::renameat2(
                cwd,
                &self.p("b2"),
                cwd,
                &self.p("moved"),
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )?;
            Ok(())
        });
        self.step("SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR", || {
            let file = self.p("file");
            rustix::fs::setxattr(
                &file,
                "user.golden",
                b"value-1",
                rustix::fs::XattrFlags::CREATE,
            )?;
            let n = rustix::fs::getxattr_query(&file, "user.golden")?;
            let mut buf = vec![0u8; n];
            rustix::fs::getxattr(&file, "user.golden", &mut buf[..])?;
            let n = rustix::fs::listxattr_query(&file)?;
            let mut buf = vec![0u8; n];
            rustix::fs::listxattr(&file, &mut buf[..])?;
            rustix::fs::removexattr(&file, "user.golden")?;
            Ok(())
        });
        self.step("GETXATTR resent after NOTIFY_RESEND", || {
            let mut buf = [0u8; 64];
            match rustix::fs::getxattr(self.p("file"), "user.golden.resend", &mut buf[..]) {
                Err(rustix::io::Errno::NODATA) => Ok(()),
                Err(e) => Err(e.into()),
                Ok(_) => Ok(()),
            }
        });
        self.step("ACCESS, STATFS, syncfs", || {
            nix::unistd::access(&self.p("file"), AccessFlags::R_OK | AccessFlags::W_OK)?;
            nix::unistd::access(&self.m, AccessFlags::X_OK)?;
            nix::sys::statvfs::statvfs(&self.m)?;
            // SYNCFS only reaches daemons that set `fc->sync_fs` (virtiofs): this
            // records nothing on /dev/fuse, but will if a kernel starts sending it.
            rustix::fs::syncfs(File::open(&self.m)?)?;
            Ok(())
        });
        self.step("COPY_FILE_RANGE_64, COPY_FILE_RANGE", || {
            let src = File::open(self.p("file"))?;
            let dst = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.p("copy"))?;
            let (mut a, mut b) = (0u64, 0u64);
            rustix::fs::copy_file_range(&src, Some(&mut a), &dst, Some(&mut b), 3)?;
            rustix::fs::copy_file_range(&src, Some(&mut a), &dst, Some(&mut b), 2)?;
            Ok(())
        });
        self.step("TMPFILE", || {
            let fd = nix::fcntl::open(
                &self.p("dir"),
                OFlag::O_TMPFILE | OFlag::O_RDWR,
                Mode::from_bits_truncate(0o600),
            )?;
            nix::unistd::write(&fd, b"tmp")?;
            Ok(())
        });
        self.step("supplementary-group extension (child process)", || {
            fs::create_dir(self.p("gdir"))?;
            nix::unistd::chown(&self.p("gdir"), None, Some(Gid::from_raw(SUPP_GID)))?;
            let child = Command::new(std::env::current_exe()?)
                .args(["--child", "supp-create"])
                .arg(self.p("gdir"))
                .spawn()?;
            wait_child(child, Duration::from_secs(5))
        });
        self.step("SETLKW interrupted (INTERRUPT)", || {
            File::create(self.p("lockme"))?;
            let mut child = Command::new(std::env::current_exe()?)
                .args(["--child", "setlkw"])
                .arg(self.p("lockme"))
                .spawn()?;
            let start = Instant::now();
            while !self.shared.setlkw_held.load(Ordering::SeqCst) {
                if start.elapsed() > Duration::from_secs(3) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io::Error::other("the child's SETLKW never arrived"));
                }
                thread::sleep(Duration::from_millis(10));
            }
            // SIGKILL: the kernel queues INTERRUPT, then waits for our answer.
            child.kill()?;
            wait_child(child, Duration::from_secs(5))
        });
        self.step("UNLINK, RMDIR", || {
            fs::remove_file(self.p("sym"))?;
            fs::remove_file(self.p("fifo"))?;
            fs::remove_dir(self.p("dir/sub"))?;
            Ok(())
        });
        self.step("drop_caches (FORGET, BATCH_FORGET)", || {
            fs::write("/proc/sys/vm/drop_caches", "2")?;
            thread::sleep(Duration::from_millis(300));
            Ok(())
        });
    }

    /// The `fuseblk` session: BMAP through FIBMAP, DESTROY at unmount.
    fn run_blk(&self) {
        self.step("fuseblk: CREATE, WRITE, BMAP", || {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.p("blk"))?;
            f.write_all(b"block\n")?;
            let mut block: libc::c_int = 0;
            // SAFETY: FIBMAP (`_IO(0x00, 1)`) reads and writes one `int` through the
            // pointer, which points to a live, writable `c_int` for the whole call; the
            // fd is open for the duration of the call.
            let r = unsafe { libc::ioctl(f.as_raw_fd(), 1, &mut block as *mut libc::c_int) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
        let _ = self.shared.init_done.load(Ordering::SeqCst);
    }
}

/// Waits for a child with a timeout, killing it on timeout.
fn wait_child(mut child: Child, timeout: Duration) -> io::Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            eprintln!("record_golden: child exited: {status}");
            return Ok(());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("child timed out"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------
// The daemon: a tiny in-memory filesystem with hand-built replies
// ---------------------------------------------------------------------------------

struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    data: Vec<u8>,
    children: BTreeMap<Vec<u8>, u64>,
    parent: u64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Node {
    fn new(mode: u32, parent: u64, gid: u32) -> Node {
        Node {
            mode,
            uid: 0,
            gid,
            nlink: if mode & libc::S_IFMT == libc::S_IFDIR {
                2
            } else {
                1
            },
            data: Vec::new(),
            children: BTreeMap::new(),
            parent,
            xattrs: BTreeMap::new(),
        }
    }
    fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

struct Daemon {
    dev: Arc<File>,
    recorder: Arc<Recorder>,
    shared: Arc<Shared>,
    outdir: PathBuf,
    first_session: bool,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    next_fh: u64,
    minor: u32,
    flags: InitFlags,
    held_setlkw: Option<u64>,
    refused_cfr64: bool,
    /// `RECORD_GOLDEN_STALL=1`: never answer the first OPEN, to exercise the watchdog.
    stall: bool,
}

/// Reads a `T` from the front of `b` and advances it.
fn take<T: FromBytes>(b: &mut &[u8]) -> Option<T> {
    let (v, rest) = T::read_from_prefix(b).ok()?;
    *b = rest;
    Some(v)
}

/// Splits a NUL-terminated name off the front of `b`.
fn take_name<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = b.iter().position(|&c| c == 0)?;
    let name = &b[..end];
    *b = &b[end + 1..];
    Some(name)
}

fn bytes_of<T: IntoBytes + Immutable + KnownLayout>(v: &T) -> &[u8] {
    v.as_bytes()
}

impl Daemon {
    fn new(
        dev: Arc<File>,
        recorder: Arc<Recorder>,
        shared: Arc<Shared>,
        outdir: PathBuf,
        first_session: bool,
    ) -> Daemon {
        let mut nodes = HashMap::new();
        nodes.insert(abi::FUSE_ROOT_ID, Node::new(libc::S_IFDIR | 0o755, 1, 0));
        Daemon {
            dev,
            recorder,
            shared,
            outdir,
            first_session,
            nodes,
            next_ino: 2,
            next_fh: 1,
            minor: 0,
            flags: InitFlags::EMPTY,
            held_setlkw: None,
            refused_cfr64: false,
            stall: first_session && std::env::var_os("RECORD_GOLDEN_STALL").is_some(),
        }
    }

    fn serve(&mut self) {
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = match nix::unistd::read(&*self.dev, &mut buf) {
                Ok(n) => n,
                Err(Errno::EINTR) | Err(Errno::ENOENT) | Err(Errno::EAGAIN) => continue,
                Err(Errno::ENODEV) | Err(Errno::ECONNABORTED) => return,
                Err(e) => {
                    eprintln!("record_golden: read /dev/fuse: {e}");
                    return;
                }
            };
            let req = &buf[..n];
            let Some((h, _)) = fuse_in_header::read_from_prefix(req).ok() else {
                eprintln!("record_golden: short request of {n} bytes");
                continue;
            };
            let is_second_init = h.opcode.get() == Opcode::INIT.0 && !self.first_session;
            if !is_second_init {
                self.recorder.save(req);
            }
            self.handle(&h, &req[size_of::<fuse_in_header>()..]);
        }
    }

    fn reply(&self, unique: u64, errno: i32, parts: &[&[u8]]) {
        let len = size_of::<fuse_out_header>() + parts.iter().map(|p| p.len()).sum::<usize>();
        let h = fuse_out_header {
            len: U32::new(len as u32),
            error: I32::new(-errno),
            unique: U64::new(unique),
        };
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(h.as_bytes());
        for p in parts {
            out.extend_from_slice(p);
        }
        if let Err(e) = nix::unistd::write(&*self.dev, &out) {
            eprintln!("record_golden: reply to {unique:#x}: {e}");
        }
    }

    fn ok(&self, unique: u64, parts: &[&[u8]]) {
        self.reply(unique, 0, parts);
    }

    fn err(&self, unique: u64, errno: Errno) {
        self.reply(unique, errno as i32, &[]);
    }

    /// A notification: out-header with unique 0 and the code in `error`.
    fn notify(&self, code: i32, body: &[u8]) {
        let h = fuse_out_header {
            len: U32::new((size_of::<fuse_out_header>() + body.len()) as u32),
            error: I32::new(code),
            unique: U64::new(0),
        };
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(body);
        if let Err(e) = nix::unistd::write(&*self.dev, &out) {
            eprintln!("record_golden: notify {code}: {e}");
        }
    }

    fn attr(&self, ino: u64) -> fuse_attr {
        let n = &self.nodes[&ino];
        let size = n.data.len() as u64;
        fuse_attr {
            ino: U64::new(ino),
            size: U64::new(size),
            blocks: U64::new(size.div_ceil(512)),
            atime: U64::new(TIME),
            mtime: U64::new(TIME),
            ctime: U64::new(TIME),
            mode: U32::new(n.mode),
            nlink: U32::new(n.nlink),
            uid: U32::new(n.uid),
            gid: U32::new(n.gid),
            blksize: U32::new(4096),
            ..Default::default()
        }
    }

    fn entry(&self, ino: u64) -> fuse_entry_out {
        fuse_entry_out {
            nodeid: U64::new(ino),
            generation: U64::new(1),
            entry_valid: U64::new(3600),
            attr_valid: U64::new(0),
            attr: self.attr(ino),
            ..Default::default()
        }
    }

    fn attr_out(&self, ino: u64) -> fuse_attr_out {
        fuse_attr_out {
            attr: self.attr(ino),
            ..Default::default()
        }
    }

    fn open_out(&mut self) -> fuse_open_out {
        let fh = self.next_fh;
        self.next_fh += 1;
        fuse_open_out {
            fh: U64::new(fh),
            ..Default::default()
        }
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.nodes.get(&parent)?.children.get(name).copied()
    }

    /// Adds a node named `name` in `parent` (or unnamed if `name` is None).
    fn add(&mut self, parent: u64, name: Option<&[u8]>, mode: u32) -> Result<u64, Errno> {
        let Some(p) = self.nodes.get(&parent) else {
            return Err(Errno::ENOENT);
        };
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if let Some(name) = name {
            if p.children.contains_key(name) {
                return Err(Errno::EEXIST);
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = Node::new(mode, parent, 0);
        let is_dir = node.is_dir();
        self.nodes.insert(ino, node);
        if let (Some(name), Some(p)) = (name, self.nodes.get_mut(&parent)) {
            p.children.insert(name.to_vec(), ino);
            if is_dir {
                p.nlink += 1;
            }
        }
        Ok(ino)
    }

    fn remove(&mut self, parent: u64, name: &[u8], want_dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name).ok_or(Errno::ENOENT)?;
        let n = &self.nodes[&ino];
        if want_dir != n.is_dir() {
            return Err(if want_dir {
                Errno::ENOTDIR
            } else {
                Errno::EISDIR
            });
        }
        if want_dir && !n.children.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children.remove(name);
            if want_dir {
                p.nlink -= 1;
            }
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.nlink = n.nlink.saturating_sub(if want_dir { 2 } else { 1 });
        }
        Ok(())
    }

    fn handle(&mut self, h: &fuse_in_header, body: &[u8]) {
        if let Err(e) = self.dispatch(h, body) {
            self.err(h.unique.get(), e);
        }
    }

    /// Answers one request; an `Err` is answered as that errno.
    fn dispatch(&mut self, h: &fuse_in_header, body: &[u8]) -> Result<(), Errno> {
        let unique = h.unique.get();
        let nodeid = h.nodeid.get();
        let op = Opcode(h.opcode.get());
        let body_end = body.len().saturating_sub(h.total_extlen.get() as usize * 8);
        let mut b = &body[..body_end];
        match op {
            Opcode::INIT => self.init(unique, &mut b),
            Opcode::FORGET | Opcode::BATCH_FORGET | Opcode::NOTIFY_REPLY => Ok(()),
            Opcode::INTERRUPT => {
                if let Some(i) = take::<fuse_interrupt_in>(&mut b) {
                    if self.held_setlkw == Some(i.unique.get()) {
                        self.held_setlkw = None;
                        self.err(i.unique.get(), Errno::EINTR);
                    }
                }
                Ok(())
            }
            Opcode::DESTROY => {
                self.ok(unique, &[]);
                Ok(())
            }
            Opcode::LOOKUP => {
                let name = take_name(&mut b).unwrap_or_default();
                if name == TRIGGER_RETRIEVE {
                    if let Some(ino) = self.lookup(abi::FUSE_ROOT_ID, b"file") {
                        let n = fuse_notify_retrieve_out {
                            notify_unique: U64::new(RETRIEVE_UNIQUE),
                            nodeid: U64::new(ino),
                            offset: U64::new(0),
                            size: U32::new(4096),
                            padding: U32::new(0),
                        };
                        self.notify(fuse_wire::NotifyCode::RETRIEVE.0, n.as_bytes());
                    }
                }
                match self.lookup(nodeid, name) {
                    Some(ino) => {
                        let e = self.entry(ino);
                        self.ok(unique, &[e.as_bytes()]);
                        Ok(())
                    }
                    None => Err(Errno::ENOENT),
                }
            }
            Opcode::GETATTR => {
                if self.nodes.contains_key(&nodeid) {
                    let a = self.attr_out(nodeid);
                    self.ok(unique, &[a.as_bytes()]);
                    Ok(())
                } else {
                    Err(Errno::ENOENT)
                }
            }
            Opcode::STATX => self.statx(unique, nodeid),
            Opcode::SETATTR => self.setattr(unique, nodeid, &mut b),
            Opcode::CREATE | Opcode::TMPFILE => {
                let c = take::<fuse_create_in>(&mut b).ok_or(Errno::EINVAL)?;
                let name = take_name(&mut b).unwrap_or_default();
                let named = if op == Opcode::TMPFILE {
                    None
                } else {
                    Some(name)
                };
                let ino = self.add(nodeid, named, c.mode.get())?;
                let e = self.entry(ino);
                let o = self.open_out();
                self.ok(unique, &[e.as_bytes(), o.as_bytes()]);
                Ok(())
            }
            Opcode::MKNOD => {
                let c = take::<fuse_mknod_in>(&mut b).ok_or(Errno::EINVAL)?;
                let name = take_name(&mut b).ok_or(Errno::EINVAL)?;
                let ino = self.add(nodeid, Some(name), c.mode.get())?;
                let e = self.entry(ino);
                self.ok(unique, &[e.as_bytes()]);
                Ok(())
            }
            Opcode::MKDIR => {
                let c = take::<fuse_mkdir_in>(&mut b).ok_or(Errno::EINVAL)?;
                let name = take_name(&mut b).ok_or(Errno::EINVAL)?;
                let ino = self.add(nodeid, Some(name), libc::S_IFDIR | (c.mode.get() & 0o7777))?;
                let e = self.entry(ino);
                self.ok(unique, &[e.as_bytes()]);
                Ok(())
            }
            Opcode::SYMLINK => {
                let name = take_name(&mut b).ok_or(Errno::EINVAL)?;
                let target = take_name(&mut b).ok_or(Errno::EINVAL)?.to_vec();
                let ino = self.add(nodeid, Some(name), libc::S_IFLNK | 0o777)?;
                if let Some(n) = self.nodes.get_mut(&ino) {
                    n.data = target;
                }
                let e = self.entry(ino);
                self.ok(unique, &[e.as_bytes()]);
                Ok(())
            }
            Opcode::READLINK => {
                let n = self.nodes.get(&nodeid).ok_or(Errno::ENOENT)?;
                self.ok(unique, &[&n.data]);
                Ok(())
            }
            Opcode::LINK => {
                let l = take::<fuse_link_in>(&mut b).ok_or(Errno::EINVAL)?;
                let name = take_name(&mut b).ok_or(Errno::EINVAL)?;
                let old = l.oldnodeid.get();
                if !self.nodes.contains_key(&old) {
                    return Err(Errno::ENOENT);
                }
                if self.lookup(nodeid, name).is_some() {
                    return Err(Errno::EEXIST);
                }
                let p = self.nodes.get_mut(&nodeid).ok_or(Errno::ENOENT)?;
                p.children.insert(name.to_vec(), old);
                if let Some(n) = self.nodes.get_mut(&old) {
                    n.nlink += 1;
                }
                let e = self.entry(old);
                self.ok(unique, &[e.as_bytes()]);
                Ok(())
            }
            Opcode::UNLINK | Opcode::RMDIR => {
                let name = take_name(&mut b).ok_or(Errno::EINVAL)?;
                self.remove(nodeid, name, op == Opcode::RMDIR)?;
                self.ok(unique, &[]);
                Ok(())
            }
            Opcode::RENAME | Opcode::RENAME2 => {
                let (newdir, flags) = if op == Opcode::RENAME {
                    let r = take::<fuse_rename_in>(&mut b).ok_or(Errno::EINVAL)?;
                    (r.newdir.get(), 0)
                } else {
                    let r = take::<fuse_rename2_in>(&mut b).ok_or(Errno::EINVAL)?;
                    (r.newdir.get(), r.flags.get())
                };
                let old = take_name(&mut b).ok_or(Errno::EINVAL)?.to_vec();
                let new = take_name(&mut b).ok_or(Errno::EINVAL)?.to_vec();
                self.rename(nodeid, &old, newdir, &new, flags)?;
                self.ok(unique, &[]);
                Ok(())
            }
            Opcode::OPEN if self.stall => {
                self.stall = false;
                eprintln!("record_golden: RECORD_GOLDEN_STALL: leaving OPEN unanswered");
                Ok(())
            }
            Opcode::OPEN | Opcode::OPENDIR => {
                if !self.nodes.contains_key(&nodeid) {
                    return Err(Errno::ENOENT);
                }
                let o = take::<fuse_open_in>(&mut b).ok_or(Errno::EINVAL)?;
                if op == Opcode::OPEN && o.flags.get() as i32 & libc::O_TRUNC != 0 {
                    if let Some(n) = self.nodes.get_mut(&nodeid) {
                        n.data.clear();
                    }
                }
                let out = self.open_out();
                self.ok(unique, &[out.as_bytes()]);
                Ok(())
            }
            Opcode::READ => {
                let r = take::<fuse_read_in>(&mut b).ok_or(Errno::EINVAL)?;
                let n = self.nodes.get(&nodeid).ok_or(Errno::ENOENT)?;
                let start = (r.offset.get() as usize).min(n.data.len());
                let end = start
                    .saturating_add(r.size.get() as usize)
                    .min(n.data.len());
                self.ok(unique, &[&n.data[start..end]]);
                Ok(())
            }
            Opcode::WRITE => {
                let w = take::<fuse_write_in>(&mut b).ok_or(Errno::EINVAL)?;
                let size = w.size.get() as usize;
                let data = b.get(..size).ok_or(Errno::EINVAL)?;
                let n = self.nodes.get_mut(&nodeid).ok_or(Errno::ENOENT)?;
                let off = w.offset.get() as usize;
                if n.data.len() < off + size {
                    n.data.resize(off + size, 0);
                }
                n.data[off..off + size].copy_from_slice(data);
                let out = fuse_write_out {
                    size: U32::new(size as u32),
                    padding: U32::new(0),
                };
                self.ok(unique, &[out.as_bytes()]);
                Ok(())
            }
            Opcode::FLUSH
            | Opcode::RELEASE
            | Opcode::RELEASEDIR
            | Opcode::FSYNC
            | Opcode::FSYNCDIR
            | Opcode::ACCESS => {
                self.ok(unique, &[]);
                Ok(())
            }
            Opcode::READDIR | Opcode::READDIRPLUS => {
                let r = take::<fuse_read_in>(&mut b).ok_or(Errno::EINVAL)?;
                self.readdir(unique, nodeid, &r, op == Opcode::READDIRPLUS)
            }
            Opcode::STATFS => {
                let s = fuse_statfs_out {
                    st: fuse_kstatfs {
                        blocks: U64::new(1000),
                        bfree: U64::new(500),
                        bavail: U64::new(500),
                        files: U64::new(100),
                        ffree: U64::new(50),
                        bsize: U32::new(4096),
                        namelen: U32::new(255),
                        frsize: U32::new(4096),
                        ..Default::default()
                    },
                };
                self.ok(unique, &[s.as_bytes()]);
                Ok(())
            }
            Opcode::SETXATTR => {
                let len = if self.flags.contains(InitFlags::SETXATTR_EXT) {
                    size_of::<fuse_setxattr_in>()
                } else {
                    abi::FUSE_COMPAT_SETXATTR_IN_SIZE
                };
                let head = b.get(..4).ok_or(Errno::EINVAL)?;
                let size = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]) as usize;
                b = b.get(len..).ok_or(Errno::EINVAL)?;
                let name = take_name(&mut b).ok_or(Errno::EINVAL)?.to_vec();
                let value = b.get(..size).ok_or(Errno::EINVAL)?.to_vec();
                let n = self.nodes.get_mut(&nodeid).ok_or(Errno::ENOENT)?;
                n.xattrs.insert(name, value);
                self.ok(unique, &[]);
                Ok(())
            }
            Opcode::GETXATTR => {
                let g = take::<fuse_getxattr_in>(&mut b).ok_or(Errno::EINVAL)?;
                let name = take_name(&mut b).ok_or(Errno::EINVAL)?;
                if name == TRIGGER_RESEND && unique & abi::FUSE_UNIQUE_RESEND == 0 {
                    // Leave it unanswered and ask the kernel to resend it.
                    self.notify(fuse_wire::NotifyCode::RESEND.0, &[]);
                    return Ok(());
                }
                let n = self.nodes.get(&nodeid).ok_or(Errno::ENOENT)?;
                let v = n.xattrs.get(name).ok_or(Errno::ENODATA)?.clone();
                self.sized_reply(unique, g.size.get(), &v)
            }
            Opcode::LISTXATTR => {
                let g = take::<fuse_getxattr_in>(&mut b).ok_or(Errno::EINVAL)?;
                let n = self.nodes.get(&nodeid).ok_or(Errno::ENOENT)?;
                let mut list = Vec::new();
                for k in n.xattrs.keys() {
                    list.extend_from_slice(k);
                    list.push(0);
                }
                self.sized_reply(unique, g.size.get(), &list)
            }
            Opcode::REMOVEXATTR => {
                let name = take_name(&mut b).ok_or(Errno::EINVAL)?;
                let n = self.nodes.get_mut(&nodeid).ok_or(Errno::ENOENT)?;
                n.xattrs.remove(name).ok_or(Errno::ENODATA)?;
                self.ok(unique, &[]);
                Ok(())
            }
            Opcode::GETLK => {
                let out = fuse_lk_out {
                    lk: fuse_file_lock {
                        typ: U32::new(libc::F_UNLCK as u32),
                        ..Default::default()
                    },
                };
                self.ok(unique, &[out.as_bytes()]);
                Ok(())
            }
            Opcode::SETLK | Opcode::SETLKW => {
                let l = take::<fuse_lk_in>(&mut b).ok_or(Errno::EINVAL)?;
                if op == Opcode::SETLKW && l.lk.start.get() == DELAYED_LOCK_START {
                    self.held_setlkw = Some(unique);
                    self.shared.setlkw_held.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                self.ok(unique, &[]);
                Ok(())
            }
            Opcode::FALLOCATE => {
                let f = take::<fuse_fallocate_in>(&mut b).ok_or(Errno::EINVAL)?;
                let n = self.nodes.get_mut(&nodeid).ok_or(Errno::ENOENT)?;
                let end = (f.offset.get() + f.length.get()) as usize;
                if f.mode.get() & 1 == 0 && n.data.len() < end {
                    n.data.resize(end, 0);
                }
                self.ok(unique, &[]);
                Ok(())
            }
            Opcode::LSEEK => {
                let l = take::<fuse_lseek_in>(&mut b).ok_or(Errno::EINVAL)?;
                let n = self.nodes.get(&nodeid).ok_or(Errno::ENOENT)?;
                let size = n.data.len() as u64;
                let off = l.offset.get();
                if off >= size {
                    return Err(Errno::ENXIO);
                }
                let at = if l.whence.get() == libc::SEEK_HOLE as u32 {
                    size
                } else {
                    off
                };
                let out = fuse_lseek_out {
                    offset: U64::new(at),
                };
                self.ok(unique, &[out.as_bytes()]);
                Ok(())
            }
            Opcode::COPY_FILE_RANGE_64 if !self.refused_cfr64 => {
                // Refused once so the kernel falls back to COPY_FILE_RANGE as well.
                self.refused_cfr64 = true;
                Err(Errno::ENOSYS)
            }
            Opcode::COPY_FILE_RANGE | Opcode::COPY_FILE_RANGE_64 => {
                let c = take::<fuse_copy_file_range_in>(&mut b).ok_or(Errno::EINVAL)?;
                let src = self.nodes.get(&nodeid).ok_or(Errno::ENOENT)?;
                let start = (c.off_in.get() as usize).min(src.data.len());
                let end = start
                    .saturating_add(c.len.get() as usize)
                    .min(src.data.len());
                let chunk = src.data[start..end].to_vec();
                let dst = self
                    .nodes
                    .get_mut(&c.nodeid_out.get())
                    .ok_or(Errno::ENOENT)?;
                let off = c.off_out.get() as usize;
                if dst.data.len() < off + chunk.len() {
                    dst.data.resize(off + chunk.len(), 0);
                }
                dst.data[off..off + chunk.len()].copy_from_slice(&chunk);
                if op == Opcode::COPY_FILE_RANGE {
                    let out = fuse_write_out {
                        size: U32::new(chunk.len() as u32),
                        padding: U32::new(0),
                    };
                    self.ok(unique, &[out.as_bytes()]);
                } else {
                    let out = fuse_copy_file_range_out {
                        bytes_copied: U64::new(chunk.len() as u64),
                    };
                    self.ok(unique, &[out.as_bytes()]);
                }
                Ok(())
            }
            Opcode::POLL => {
                let p = take::<fuse_poll_in>(&mut b).ok_or(Errno::EINVAL)?;
                let ready = (libc::POLLIN | libc::POLLOUT) as u32;
                let out = fuse_poll_out {
                    revents: U32::new(p.events.get() & ready),
                    padding: U32::new(0),
                };
                self.ok(unique, &[out.as_bytes()]);
                Ok(())
            }
            Opcode::IOCTL => {
                let i = take::<fuse_ioctl_in>(&mut b).ok_or(Errno::EINVAL)?;
                let out = fuse_ioctl_out::default();
                let data = vec![0u8; (i.out_size.get() as usize).min(4096)];
                self.ok(unique, &[out.as_bytes(), &data]);
                Ok(())
            }
            Opcode::BMAP => {
                let i = take::<fuse_bmap_in>(&mut b).ok_or(Errno::EINVAL)?;
                let out = fuse_bmap_out { block: i.block };
                self.ok(unique, &[out.as_bytes()]);
                Ok(())
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    /// GETXATTR/LISTXATTR: the size when asked with size 0, else the value.
    fn sized_reply(&self, unique: u64, asked: u32, value: &[u8]) -> Result<(), Errno> {
        if asked == 0 {
            let out = fuse_getxattr_out {
                size: U32::new(value.len() as u32),
                padding: U32::new(0),
            };
            self.ok(unique, &[out.as_bytes()]);
        } else if (asked as usize) < value.len() {
            return Err(Errno::ERANGE);
        } else {
            self.ok(unique, &[value]);
        }
        Ok(())
    }

    fn init(&mut self, unique: u64, b: &mut &[u8]) -> Result<(), Errno> {
        let raw = *b;
        let i = take::<fuse_init_in>(b).ok_or(Errno::EINVAL)?;
        let offered = if i.flags.get() & InitFlags::INIT_EXT.low() != 0 {
            InitFlags::from_halves(i.flags.get(), i.flags2.get())
        } else {
            InitFlags::from_halves(i.flags.get(), 0)
        };
        let wanted = WANTED.iter().fold(InitFlags::EMPTY, |a, f| a | *f);
        let agreed = offered & wanted;
        let minor = i.minor.get().min(abi::FUSE_KERNEL_MINOR_VERSION);
        self.minor = minor;
        self.flags = agreed;
        let out = fuse_init_out {
            major: U32::new(abi::FUSE_KERNEL_VERSION),
            minor: U32::new(abi::FUSE_KERNEL_MINOR_VERSION),
            max_readahead: i.max_readahead,
            flags: U32::new(agreed.low()),
            max_background: U16::new(16),
            congestion_threshold: U16::new(12),
            max_write: U32::new(MAX_WRITE),
            time_gran: U32::new(1),
            max_pages: U16::new((MAX_WRITE / 4096) as u16),
            flags2: U32::new(agreed.high()),
            ..Default::default()
        };
        if self.first_session {
            let hex: String = raw.iter().map(|byte| format!("{byte:02x}")).collect();
            let text = format!(
                "# INIT negotiation of the golden vectors (written by tools/src/bin/record_golden.rs)\n\
                 kernel_major={}\nkernel_minor={}\nkernel_max_readahead={}\n\
                 kernel_flags={:#018x}\n\
                 minor={}\nflags={:#018x}\nmax_write={}\nmax_pages={}\n\
                 # fuse_init_in as sent (the body after the 40-byte header)\n\
                 init_in={}\n\
                 # offered: {:?}\n# agreed: {:?}\n",
                i.major.get(),
                i.minor.get(),
                i.max_readahead.get(),
                offered.bits(),
                minor,
                agreed.bits(),
                MAX_WRITE,
                MAX_WRITE / 4096,
                hex,
                offered,
                agreed,
            );
            if let Err(e) = fs::write(self.outdir.join("negotiated.txt"), text) {
                eprintln!("record_golden: writing negotiated.txt: {e}");
            }
        }
        eprintln!("record_golden: INIT minor {minor}, agreed {agreed:?}");
        self.ok(unique, &[out.as_bytes()]);
        self.shared.init_done.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn statx(&self, unique: u64, nodeid: u64) -> Result<(), Errno> {
        let n = self.nodes.get(&nodeid).ok_or(Errno::ENOENT)?;
        let t = fuse_sx_time {
            tv_sec: I64::new(TIME as i64),
            ..Default::default()
        };
        let size = n.data.len() as u64;
        let out = fuse_statx_out {
            stat: fuse_statx {
                mask: U32::new(libc::STATX_BASIC_STATS | libc::STATX_BTIME),
                blksize: U32::new(4096),
                nlink: U32::new(n.nlink),
                uid: U32::new(n.uid),
                gid: U32::new(n.gid),
                mode: U16::new(n.mode as u16),
                ino: U64::new(nodeid),
                size: U64::new(size),
                blocks: U64::new(size.div_ceil(512)),
                atime: t,
                btime: t,
                ctime: t,
                mtime: t,
                ..Default::default()
            },
            ..Default::default()
        };
        self.ok(unique, &[out.as_bytes()]);
        Ok(())
    }

    fn setattr(&mut self, unique: u64, nodeid: u64, b: &mut &[u8]) -> Result<(), Errno> {
        const FATTR_MODE: u32 = 1;
        const FATTR_UID: u32 = 2;
        const FATTR_GID: u32 = 4;
        const FATTR_SIZE: u32 = 8;
        let s = take::<fuse_setattr_in>(b).ok_or(Errno::EINVAL)?;
        let valid = s.valid.get();
        let n = self.nodes.get_mut(&nodeid).ok_or(Errno::ENOENT)?;
        if valid & FATTR_MODE != 0 {
            n.mode = (n.mode & libc::S_IFMT) | (s.mode.get() & 0o7777);
        }
        if valid & FATTR_UID != 0 {
            n.uid = s.uid.get();
        }
        if valid & FATTR_GID != 0 {
            n.gid = s.gid.get();
        }
        if valid & FATTR_SIZE != 0 {
            n.data.resize(s.size.get() as usize, 0);
        }
        let a = self.attr_out(nodeid);
        self.ok(unique, &[a.as_bytes()]);
        Ok(())
    }

    fn rename(
        &mut self,
        dir: u64,
        old: &[u8],
        newdir: u64,
        new: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        const NOREPLACE: u32 = 1;
        const EXCHANGE: u32 = 2;
        let src = self.lookup(dir, old).ok_or(Errno::ENOENT)?;
        let dst = self.lookup(newdir, new);
        if !self.nodes.get(&newdir).is_some_and(Node::is_dir) {
            return Err(Errno::ENOTDIR);
        }
        if flags & NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if flags & EXCHANGE != 0 {
            let dst = dst.ok_or(Errno::ENOENT)?;
            if let Some(d) = self.nodes.get_mut(&dir) {
                d.children.insert(old.to_vec(), dst);
            }
            if let Some(d) = self.nodes.get_mut(&newdir) {
                d.children.insert(new.to_vec(), src);
            }
            return Ok(());
        }
        if let Some(d) = self.nodes.get_mut(&dir) {
            d.children.remove(old);
        }
        if let Some(d) = self.nodes.get_mut(&newdir) {
            d.children.insert(new.to_vec(), src);
        }
        if let Some(n) = self.nodes.get_mut(&src) {
            n.parent = newdir;
        }
        Ok(())
    }

    /// READDIR/READDIRPLUS: at most two entries per reply, so a directory needs
    /// several requests and READDIRPLUS_AUTO makes the later ones plain READDIRs.
    fn readdir(
        &mut self,
        unique: u64,
        nodeid: u64,
        r: &fuse_read_in,
        plus: bool,
    ) -> Result<(), Errno> {
        let d = self.nodes.get(&nodeid).ok_or(Errno::ENOENT)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let mut entries: Vec<(Vec<u8>, u64)> =
            vec![(b".".to_vec(), nodeid), (b"..".to_vec(), d.parent)];
        entries.extend(d.children.iter().map(|(k, v)| (k.clone(), *v)));
        let mut out = Vec::new();
        let start = r.offset.get() as usize;
        for (i, (name, ino)) in entries.iter().enumerate().skip(start).take(2) {
            let mode = self.nodes.get(ino).map_or(libc::S_IFDIR, |n| n.mode);
            let dirent = fuse_dirent {
                ino: U64::new(*ino),
                off: U64::new(i as u64 + 1),
                namelen: U32::new(name.len() as u32),
                typ: U32::new((mode & libc::S_IFMT) >> 12),
            };
            let mut rec = Vec::new();
            if plus {
                let entry = if name.as_slice() == b"." || name.as_slice() == b".." {
                    fuse_entry_out::default()
                } else {
                    self.entry(*ino)
                };
                rec.extend_from_slice(bytes_of(&entry));
            }
            rec.extend_from_slice(dirent.as_bytes());
            rec.extend_from_slice(name);
            rec.resize(rec.len().next_multiple_of(8), 0);
            if out.len() + rec.len() > r.size.get() as usize {
                break;
            }
            out.extend_from_slice(&rec);
        }
        self.ok(unique, &[&out]);
        Ok(())
    }
}
