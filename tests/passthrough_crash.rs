//! passthrough crash recovery end to end: `fuse-live-keeper -- passthrough SOURCE
//! MOUNTPOINT` on a real mount over a temporary source directory, with kernel
//! passthrough on and with `--no-passthrough`.
//!
//! - repeated SIGKILLs of the daemon during a checked workload (O_EXCL creates,
//!   writes, renames, unlinks, listings; a file held open and written with
//!   pwrite/pread; an O_APPEND file; a file unlinked while open, read and written
//!   across every crash); every byte checked against the source directory at the
//!   end; the same mount and connection throughout; no backing id left
//!   registered; SIGTERM to the keeper unmounts and both exit 0;
//! - a crash in the window only the intents close (the operation ran on the
//!   source, its reply is not journaled; fault points `passthrough-after-OP`,
//!   `FUSE_LIVE_FAULT`): the resent O_EXCL create, mkdir, unlink, rename, link,
//!   SETXATTR with XATTR_CREATE and REMOVEXATTR each succeed once, as if run once;
//!   OPEN with O_TRUNC, SETATTR of the size and CREATE with O_TRUNC succeed once
//!   and do not truncate again the bytes another writer wrote into SOURCE while no
//!   daemon ran, also across a second crash in the same request; a TMPFILE
//!   succeeds once and the dead process's unnamed file is freed;
//! - a live handoff with a file unlinked while open, with the backing ids counted
//!   at the end.
//!
//! Backing ids: the kernel lists them nowhere these tests can look (the fdinfo of
//! `/dev/fuse` shows its connection only; fusectl has no entry), so they count them
//! with the kernel's own
//! answer: they take the connection's `/dev/fuse` descriptor from the process that
//! holds it (`pidfd_getfd`) once every file is closed and released, and
//! `FUSE_DEV_IOC_BACKING_CLOSE` every id up to [`SCAN`]: each success is an id
//! that was still registered, that is, leaked.
mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);
const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");
/// Kills per mode (`FUSE_LIVE_PT_CRASH_KILLS` overrides).
const KILLS: u32 = 15;
const WORKERS: u32 = 2;
const BLOCK: usize = 4096;
const HELD_BLOCKS: u64 = 8;
/// Backing ids looked at when counting.
const SCAN: i32 = 1 << 14;

/// Kernel passthrough on, or `--no-passthrough`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    On,
    Off,
}

fn contents(w: u32, n: u64) -> Vec<u8> {
    let seed = (u64::from(w) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let len = 1 + (seed % 20_000) as usize;
    common::pattern(seed, len)
}

fn block(tag: u64, i: u64) -> Vec<u8> {
    common::pattern((tag << 40) ^ (i + 1), BLOCK)
}

/// What a worker leaves: names with their contents, the held and the append
/// files' models.
struct Left {
    ops: u64,
    files: BTreeMap<String, Vec<u8>>,
}

/// One worker in `dir` (in the mount) until `stop`: every result checked.
fn work(dir: &Path, w: u32, stop: &AtomicBool) -> Result<Left, String> {
    let e = |what: String| move |err: std::io::Error| format!("{what}: {err}");
    std::fs::create_dir(dir).map_err(e(format!("mkdir {}", dir.display())))?;
    let open_rw = |name: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(name))
            .map_err(e(format!("create {name}")))
    };
    let held = open_rw("held")?;
    let mut held_model = vec![0u8; HELD_BLOCKS as usize * BLOCK];
    held.set_len(held_model.len() as u64)
        .map_err(e("truncate held".into()))?;
    let gone = open_rw("gone")?;
    let mut gone_model = vec![0u8; HELD_BLOCKS as usize * BLOCK];
    gone.set_len(gone_model.len() as u64)
        .map_err(e("truncate gone".into()))?;
    std::fs::remove_file(dir.join("gone")).map_err(e("unlink gone".into()))?;
    let mut app = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(dir.join("log"))
        .map_err(e("create log".into()))?;
    let mut app_model = Vec::new();
    let mut files = BTreeMap::new();
    let mut ops = 8u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // O_EXCL create and write, read back.
        let data = contents(w, n);
        let f = format!("f{n}");
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(&f))
                .map_err(e(format!("create (O_EXCL) {f}")))?;
            file.write_all(&data).map_err(e(format!("write {f}")))?;
        }
        let back = std::fs::read(dir.join(&f)).map_err(e(format!("read {f}")))?;
        if back != data {
            return Err(format!("{f}: read back differs"));
        }
        let g = format!("g{n}");
        std::fs::rename(dir.join(&f), dir.join(&g)).map_err(e(format!("rename {f}")))?;
        files.insert(g, data);
        if n > 1 && n % 2 == 0 {
            let old = format!("g{}", n - 1);
            std::fs::remove_file(dir.join(&old)).map_err(e(format!("unlink {old}")))?;
            files.remove(&old);
        }
        // The held file and the unlinked one: pwrite a block, pread it back.
        for (file, model, tag, what) in [
            (&held, &mut held_model, u64::from(w) * 2, "held"),
            (&gone, &mut gone_model, u64::from(w) * 2 + 1, "unlinked"),
        ] {
            let blk = n % HELD_BLOCKS;
            let bytes = block(tag, n);
            file.write_all_at(&bytes, blk * BLOCK as u64)
                .map_err(e(format!("pwrite {what} block {blk}")))?;
            model[blk as usize * BLOCK..][..BLOCK].copy_from_slice(&bytes);
            let mut got = vec![0u8; BLOCK];
            file.read_exact_at(&mut got, blk * BLOCK as u64)
                .map_err(e(format!("pread {what} block {blk}")))?;
            if got != bytes {
                return Err(format!("{what} block {blk}: read back differs"));
            }
        }
        // The append file.
        let line = format!("{w}:{n}:{}\n", "x".repeat((n % 50) as usize));
        app.write_all(line.as_bytes())
            .map_err(e("append to log".into()))?;
        app_model.extend_from_slice(line.as_bytes());
        // The listing is what this worker made.
        let mut listed: Vec<String> = std::fs::read_dir(dir)
            .map_err(e("readdir".into()))?
            .map(|d| d.map(|d| d.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(e("readdir entry".into()))?;
        listed.sort();
        let mut want: Vec<String> = files.keys().cloned().collect();
        want.extend(["held".to_string(), "log".to_string()]);
        want.sort();
        if listed != want {
            return Err(format!("listing {listed:?}, expected {want:?}"));
        }
        ops += 9;
    }
    // The unlinked file, whole, through its descriptor.
    let mut all = vec![0u8; gone_model.len()];
    gone.read_exact_at(&mut all, 0)
        .map_err(e("read the unlinked file".into()))?;
    if all != gone_model {
        return Err("the unlinked file's contents differ".into());
    }
    files.insert("held".into(), held_model);
    files.insert("log".into(), app_model);
    Ok(Left {
        ops: ops + 1,
        files,
    })
}

/// The number of `pid`'s descriptors that are open files (not `O_PATH`) in `src`.
fn open_files_in(pid: i32, src: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|d| {
            let Ok(target) = std::fs::read_link(d.path()) else {
                return false;
            };
            if !target.starts_with(src) || target == src {
                return false;
            }
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                d.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            flags & nix::libc::O_PATH as u32 == 0
        })
        .count()
}

/// Waits until `pid` holds no open file of `src` (the kernel sends RELEASE in
/// the background after the last close).
fn wait_released(pid: i32, src: &Path, log: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while open_files_in(pid, src) > 0 {
        if Instant::now() > deadline {
            let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter_map(|e| std::fs::read_link(e.path()).ok())
                        .map(|t| t.display().to_string())
                        .collect()
                })
                .unwrap_or_default();
            panic!("files stay open in pid {pid}: {fds:?}\nlog:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Counts the backing ids still registered on the connection whose `/dev/fuse`
/// descriptor `pid` holds, by releasing each (see the module docs): call only
/// once no file is open.
fn leaked_backing_ids(pid: i32) -> usize {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir");
    let num = dir
        .filter_map(Result::ok)
        .find(|d| std::fs::read_link(d.path()).is_ok_and(|t| t == Path::new("/dev/fuse")))
        .and_then(|d| d.file_name().to_str()?.parse::<i32>().ok())
        .expect("a /dev/fuse descriptor");
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("pidfd_open");
    let dev = rustix::process::pidfd_getfd(&pidfd, num, rustix::process::PidfdGetfdFlags::empty())
        .expect("pidfd_getfd");
    use std::os::fd::AsFd;
    (1..=SCAN)
        .filter(|&id| fuse_session::dev::backing::backing_close(dev.as_fd(), id).is_ok())
        .count()
}

/// Compares the source directory's files with what the workload left.
fn check_source(src: &Path, w: u32, left: &BTreeMap<String, Vec<u8>>) {
    let dir = src.join(format!("w{w}"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("source dir")
        .map(|d| d.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = left.keys().cloned().collect();
    assert_eq!(names, want, "worker {w}: the source holds other names");
    for (name, data) in left {
        let got = std::fs::read(dir.join(name)).expect("read source file");
        assert!(got == *data, "worker {w}: {name} in the source differs");
    }
}

/// The keeper and the mount, torn down whatever happens.
struct Keeper {
    child: Option<Child>,
    pid: u32,
    mnt: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    lines: mpsc::Receiver<String>,
    watchdog: Option<Watchdog>,
}

impl Keeper {
    fn start(test: &str, mode: Mode, env: &[(&str, String)]) -> Keeper {
        Self::start_with(test, mode, env, &[], &[])
    }

    /// The same, with more keeper options (before `--`) and daemon options.
    fn start_with(
        test: &str,
        mode: Mode,
        env: &[(&str, String)],
        keeper_args: &[&str],
        daemon_args: &[&str],
    ) -> Keeper {
        let dir = common::temp_dir(test);
        let (src, mnt) = (dir.join("src"), dir.join("mnt"));
        std::fs::create_dir(&src).expect("source");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let log = dir.join("keeper.log");
        let bin = common::example_binary("passthrough");
        let mut cmd = Command::new(KEEPER);
        cmd.args(["--restart-limit", "100000", "--restart-window", "1"])
            .args(keeper_args)
            .arg("--")
            .arg(&bin)
            .arg(&src)
            .arg(&mnt)
            .args(["--threads", "2", "--allow-other"])
            .args(daemon_args)
            .env(
                "RUST_LOG",
                std::env::var("CRASH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("log"));
        if mode == Mode::Off {
            cmd.arg("--no-passthrough");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: only prctl(2) in the forked child, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(600)).expect("watchdog");
        let mut child = cmd.spawn().expect("spawn fuse-live-keeper");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let k = Keeper {
            pid: child.id(),
            child: Some(child),
            mnt,
            dir,
            log,
            lines,
            watchdog: Some(watchdog),
        };
        k.next_ready("at the first start");
        k
    }

    fn src(&self) -> PathBuf {
        self.dir.join("src")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn next_ready(&self, what: &str) {
        let ready = format!("ready {}", self.mnt.display());
        match self.lines.recv_timeout(PATIENCE) {
            Ok(l) => assert_eq!(l, ready, "{what}"),
            Err(e) => panic!(
                "no ready line {what} ({e}); keeper log:\n{}",
                self.log_text()
            ),
        }
    }

    fn daemon(&self) -> i32 {
        let now = common::children(self.pid);
        assert_eq!(now.len(), 1, "one daemon: {now:?}");
        now[0]
    }

    /// SIGTERM to the keeper: the daemon unmounts, both exit 0, nothing left.
    fn stop(mut self) {
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM).expect("SIGTERM the keeper");
        let mut child = self.child.take().expect("keeper");
        let st = common::wait_exit(&mut child, PATIENCE).expect("the keeper exits");
        assert_eq!(st.code(), Some(0), "keeper log:\n{}", self.log_text());
        assert!(!common::is_fuse_mounted(&self.mnt), "unmounted on SIGTERM");
        assert!(common::children(self.pid).is_empty(), "no daemon left");
        let log = self.log_text();
        assert!(
            log.contains("exited with status 0 after the stop signal"),
            "the daemon exits 0: {log}"
        );
        if let Some(w) = self.watchdog.take() {
            assert!(!w.disarm(), "the watchdog fired");
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            if common::wait_exit(&mut c, Duration::from_secs(15)).is_none() {
                let _ = fusectl::tear_down(&self.mnt, None);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if common::is_fuse_mounted(&self.mnt) {
            let _ = fusectl::tear_down(&self.mnt, None);
        }
        if let Some(w) = self.watchdog.take() {
            let _ = w.disarm();
        }
        if !common::is_fuse_mounted(&self.mnt) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn repeated_sigkill(test: &str, mode: Mode) {
    if !common::can_mount(test) {
        return;
    }
    let kills: u32 = std::env::var("FUSE_LIVE_PT_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS);
    let seed = common::time_seed();
    eprintln!("{test}: {kills} kills, seed {seed}");
    let mut rng = common::Rng(seed);
    let k = Keeper::start(test, mode, &[]);
    let conn = fusectl::connection_id(&k.mnt).expect("fusectl connection");
    let id = common::mount_id(&k.mnt).expect("mount id");
    assert_eq!(
        leaked_backing_ids(k.daemon()),
        0,
        "none registered at first"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let dir = k.mnt.join(format!("w{w}"));
            let stop = stop.clone();
            std::thread::spawn(move || work(&dir, w, &stop))
        })
        .collect();
    let mut daemons = std::collections::BTreeSet::new();
    let started = Instant::now();
    if kills == 0 {
        std::thread::sleep(Duration::from_secs(3));
    }
    for n in 0..kills {
        let ms = match rng.next() % 4 {
            0 => 0,
            1 => rng.next() % 20,
            _ => rng.next() % 300,
        };
        std::thread::sleep(Duration::from_millis(ms));
        let d = k.daemon();
        daemons.insert(d);
        kill(Pid::from_raw(d), Signal::SIGKILL).expect("kill passthrough");
        k.next_ready(&format!("after kill {}", n + 1));
        if let Some(w) = workers.iter().position(|w| w.is_finished()) {
            stop.store(true, Ordering::Relaxed);
            let why = match workers.swap_remove(w).join() {
                Ok(Ok(_)) => "it stopped".to_owned(),
                Ok(Err(e)) => e,
                Err(_) => "it panicked".to_owned(),
            };
            panic!(
                "worker {w} ended during the kills ({why}); keeper log:\n{}",
                k.log_text()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!("{test}: kills done after {:?}", started.elapsed());
    let mut total = 0;
    let mut left = Vec::new();
    for (w, h) in workers.into_iter().enumerate() {
        match h.join().expect("worker panicked") {
            Ok(l) => {
                total += l.ops;
                left.push(l.files);
            }
            Err(e) => panic!("worker {w}: {e}\nkeeper log:\n{}", k.log_text()),
        }
    }
    eprintln!(
        "{test}: {kills} SIGKILLs survived, {total} operations by {WORKERS} workers, 0 failed"
    );
    assert_eq!(daemons.len(), kills as usize, "each kill hit a new daemon");
    assert_eq!(
        fusectl::connection_id(&k.mnt).expect("fusectl"),
        conn,
        "same connection"
    );
    assert_eq!(common::mount_id(&k.mnt), Some(id), "same mount");
    for (w, files) in left.iter().enumerate() {
        check_source(&k.src(), w as u32, files);
    }
    // Every file closed (the workers' descriptors dropped): once released, no
    // backing id may be left registered.
    let t = Instant::now();
    wait_released(k.daemon(), &k.src(), || k.log_text());
    eprintln!("{test}: files released after {:?}", t.elapsed());
    let leaked = leaked_backing_ids(k.daemon());
    let log = k.log_text();
    let recovered_leaks: usize = log
        .lines()
        .filter(|l| l.contains("registered by the dead process"))
        .count();
    eprintln!(
        "{test}: backing ids left registered at the end: {leaked}; released by recoveries \
         (registered by a killed daemon but not journaled): {recovered_leaks}"
    );
    assert_eq!(leaked, 0, "backing ids leaked; keeper log:\n{log}");
    assert!(
        !log.contains("cannot be found again"),
        "an open file was lost: {log}"
    );
    k.stop();
}

#[test]
fn repeated_sigkill_with_kernel_passthrough() {
    repeated_sigkill("pt-crash-on", Mode::On);
}

#[test]
fn repeated_sigkill_without_kernel_passthrough() {
    repeated_sigkill("pt-crash-off", Mode::Off);
}

/// The keeper of a passthrough that aborts (`FUSE_LIVE_FAULT`) at the first hit of
/// `passthrough-after-POINT` — the first time that operation ran on the source,
/// before its reply is journaled — and restarts it after `delay_ms`; with the
/// marker that disarms the fault (`FUSE_LIVE_FAULT_DISARM`) once created; the
/// daemon with `daemon_args`.
fn faulted(
    test: &str,
    mode: Mode,
    point: &str,
    delay_ms: u32,
    daemon_args: &[&str],
) -> (Keeper, PathBuf) {
    let dir = common::temp_dir(&format!("{test}-marker"));
    let disarm = dir.join("disarm");
    let k = Keeper::start_with(
        test,
        mode,
        &[
            ("FUSE_LIVE_FAULT", format!("passthrough-after-{point}:1")),
            ("FUSE_LIVE_FAULT_DISARM", disarm.display().to_string()),
        ],
        &["--restart-delay", &delay_ms.to_string()],
        daemon_args,
    );
    (k, disarm)
}

/// Waits until the daemon aborted at `passthrough-after-POINT`.
fn wait_abort(k: &Keeper, point: &str) {
    let line = format!("fuse-live fault: aborting at passthrough-after-{point} (hit 1)");
    let deadline = Instant::now() + PATIENCE;
    while !k.log_text().contains(&line) {
        assert!(
            Instant::now() < deadline,
            "no abort at {point}; keeper log:\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One crash in the window after `op` ran on the source and before its reply
/// was journaled, for each non-idempotent namespace operation: the application's
/// call succeeds once, with the effect of one run.
fn crash_after(test: &str, mode: Mode) {
    if !common::can_mount(test) {
        return;
    }
    for (op, name) in [
        ("create", "c"),
        ("mkdir", "d"),
        ("link", "l"),
        ("rename", "c"),
        ("unlink", "l"),
    ] {
        let (k, disarm) = faulted(&format!("{test}-{op}"), mode, op, 0, &[]);
        let m = |n: &str| k.mnt.join(n);
        // The setup each operation needs (the fault is armed on the named op only).
        if op != "create" {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m("c"))
                .expect("create c");
            f.write_all(b"payload").expect("write c");
        }
        if op == "unlink" {
            std::fs::hard_link(m("c"), m("l")).expect("link");
        }
        let r = match op {
            "create" => OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(m(name))
                .and_then(|mut f| f.write_all(b"payload")),
            "mkdir" => std::fs::create_dir(m(name)),
            "link" => std::fs::hard_link(m("c"), m(name)),
            "rename" => std::fs::rename(m(name), m("r")),
            _ => std::fs::remove_file(m(name)),
        };
        let log = k.log_text();
        assert!(r.is_ok(), "{op} across a crash: {r:?}\nkeeper log:\n{log}");
        wait_abort(&k, op);
        k.next_ready(&format!("after the crash in {op}"));
        let src = k.src();
        let exists = |n: &str| src.join(n).symlink_metadata().is_ok();
        match op {
            "create" => assert_eq!(std::fs::read(src.join("c")).unwrap(), b"payload"),
            "mkdir" => assert!(src.join("d").is_dir()),
            "link" => assert_eq!(std::fs::read(src.join("l")).unwrap(), b"payload"),
            "rename" => assert!(!exists("c") && exists("r")),
            _ => assert!(!exists("l") && exists("c")),
        }
        let log = k.log_text();
        assert!(
            log.contains(&format!("{op} resent after a crash")),
            "{op}: the resent request was answered from its intent:\n{log}"
        );
        k.stop();
        eprintln!("{test}: {op} across a crash in its window: one success, one effect");
        let _ = std::fs::remove_dir_all(disarm.parent().expect("marker dir"));
    }
}

#[test]
fn crash_after_the_operation_with_kernel_passthrough() {
    crash_after("pt-intent-on", Mode::On);
}

#[test]
fn crash_after_the_operation_without_kernel_passthrough() {
    crash_after("pt-intent-off", Mode::Off);
}

/// SETXATTR with `XATTR_CREATE` and REMOVEXATTR, each crashed after it ran on the
/// source and before its reply was journaled: the application's call succeeds
/// once (not `EEXIST`, not `ENODATA`), SOURCE shows one effect, and the same call
/// made again fails as a second call must.
fn crash_after_xattr(test: &str, mode: Mode) {
    if !common::can_mount(test) {
        return;
    }
    for op in ["setxattr", "removexattr"] {
        let (k, disarm) = faulted(&format!("{test}-{op}"), mode, op, 0, &[]);
        let (m, src) = (k.mnt.join("x"), k.src().join("x"));
        std::fs::write(&m, b"data").expect("write x");
        let create = rustix::fs::XattrFlags::CREATE;
        if op == "removexattr" {
            rustix::fs::setxattr(&m, "user.k", b"value", create).expect("setxattr");
        }
        let call = || match op {
            "setxattr" => rustix::fs::setxattr(&m, "user.k", b"value", create),
            _ => rustix::fs::removexattr(&m, "user.k"),
        };
        let r = call();
        assert!(
            r.is_ok(),
            "{op} across a crash: {r:?}\nkeeper log:\n{}",
            k.log_text()
        );
        wait_abort(&k, op);
        k.next_ready(&format!("after the crash in {op}"));
        std::fs::write(&disarm, b"").expect("disarm");
        let mut buf = [0u8; 64];
        let got = rustix::fs::getxattr(&src, "user.k", &mut buf[..]);
        let again = call();
        if op == "setxattr" {
            assert_eq!(&buf[..got.expect("the attribute in SOURCE")], b"value");
            assert_eq!(again, Err(rustix::io::Errno::EXIST), "a second create");
        } else {
            assert_eq!(got, Err(rustix::io::Errno::NODATA), "removed from SOURCE");
            assert_eq!(again, Err(rustix::io::Errno::NODATA), "a second remove");
        }
        let log = k.log_text();
        assert!(
            log.contains(&format!("{op} resent after a crash")),
            "{op}: the resent request was answered from its intent:\n{log}"
        );
        k.stop();
        eprintln!("{test}: {op} across a crash in its window: one success, one effect");
        let _ = std::fs::remove_dir_all(disarm.parent().expect("marker dir"));
    }
}

#[test]
fn crash_after_setxattr_create_or_removexattr_with_kernel_passthrough() {
    crash_after_xattr("pt-xattr-on", Mode::On);
}

#[test]
fn crash_after_setxattr_create_or_removexattr_without_kernel_passthrough() {
    crash_after_xattr("pt-xattr-off", Mode::Off);
}

/// How long the keeper waits before restarting the daemon in the truncate tests:
/// room for the other writer's write while no daemon runs (checked: the test
/// fails, never passes by luck, if the new daemon started first).
const RESTART_DELAY_MS: u32 = 3000;

/// `open(O_TRUNC)` (with `--atomic-o-trunc` an OPEN carrying `O_TRUNC`, by
/// default the kernel's SETATTR after the OPEN), SETATTR of the size
/// (`ftruncate`) and CREATE with `O_TRUNC`, each crashed after it ran on the
/// source and before its reply was journaled; while no daemon runs, another writer
/// writes the file straight into SOURCE. The application's call succeeds once, and
/// the resent request does not truncate again: the later bytes stay.
fn crash_after_truncate(test: &str, mode: Mode) {
    if !common::can_mount(test) {
        return;
    }
    for (op, atomic) in [
        ("open-trunc", true),
        ("open-trunc", false),
        ("truncate", false),
        ("create", false),
    ] {
        // Without ATOMIC_O_TRUNC the truncate of an open(O_TRUNC) is a SETATTR.
        let point = if op == "open-trunc" && !atomic {
            "truncate"
        } else {
            op
        };
        let args: &[&str] = if atomic { &["--atomic-o-trunc"] } else { &[] };
        let name = format!("{test}-{op}{}", if atomic { "-atomic" } else { "" });
        let (k, disarm) = faulted(&name, mode, point, RESTART_DELAY_MS, args);
        let (m, src) = (k.mnt.join("t"), k.src().join("t"));
        if op != "create" {
            std::fs::write(&m, b"0123456789abcdef").expect("write t");
        }
        let held = (op == "truncate").then(|| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&m)
                .expect("open t")
        });
        let d0 = k.daemon();
        let app = {
            let m = m.clone();
            std::thread::spawn(move || match (op, held) {
                ("truncate", Some(h)) => h.set_len(4).map(|()| Some(h)),
                ("open-trunc", _) => OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&m)
                    .map(drop)
                    .map(|()| None),
                _ => OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&m)
                    .map(drop)
                    .map(|()| None),
            })
        };
        wait_abort(&k, point);
        // Another writer, straight into SOURCE, while no daemon runs.
        let at = if op == "truncate" { 4 } else { 0 };
        OpenOptions::new()
            .write(true)
            .open(&src)
            .and_then(|f| f.write_all_at(b"LATER", at))
            .expect("the other writer's write");
        let restarted: Vec<i32> = common::children(k.pid)
            .into_iter()
            .filter(|&p| p != d0)
            .collect();
        assert!(
            restarted.is_empty(),
            "{op}: a daemon ({restarted:?}) started before the other writer's write (restart \
             delay {RESTART_DELAY_MS} ms): the test cannot tell"
        );
        std::fs::write(&disarm, b"").expect("disarm");
        let r = app.join().expect("the application thread");
        assert!(
            r.is_ok(),
            "{op} across a crash: {r:?}\nkeeper log:\n{}",
            k.log_text()
        );
        drop(r);
        k.next_ready(&format!("after the crash in {op}"));
        let want: &[u8] = if op == "truncate" {
            b"0123LATER"
        } else {
            b"LATER"
        };
        let got = std::fs::read(&src).expect("read t in SOURCE");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "{op}: the later write survives the resent request"
        );
        let said = match point {
            "open-trunc" => "open resent after a crash: the dead process had truncated",
            "truncate" => "setattr resent after a crash: the dead process had changed the size",
            _ => "create resent after a crash: the dead process had made it",
        };
        let log = k.log_text();
        assert!(
            log.contains(said),
            "{op}: not answered from its intent:\n{log}"
        );
        k.stop();
        eprintln!("{test}: {op} across a crash, a later write meanwhile: kept, one truncate");
        let _ = std::fs::remove_dir_all(disarm.parent().expect("marker dir"));
    }
}

/// The pids of the daemons that aborted at `passthrough-after-POINT`, once there
/// are `n` of them.
fn wait_aborts(k: &Keeper, point: &str, n: usize) -> Vec<i32> {
    let line = format!("fuse-live fault: aborting at passthrough-after-{point} (hit 1), pid ");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let pids: Vec<i32> = k
            .log_text()
            .lines()
            .filter_map(|l| l.strip_prefix(line.as_str())?.trim().parse().ok())
            .collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} aborts at {point}; keeper log:\n{}",
            pids.len(),
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A second crash in the same request: the truncate of an `open(O_TRUNC)` (an
/// OPEN carrying `O_TRUNC` with `--atomic-o-trunc`, else the kernel's SETATTR)
/// crashes after it truncated; another writer writes `LATER` into SOURCE; the
/// restarted daemon crashes again right after it ran the resent request (without
/// truncating); the third answers it. The call succeeds once and `LATER` stays:
/// the resent request keeps the intent of its first run (one written anew by the
/// second daemon would hold the state with `LATER`, and the third would truncate
/// it away).
fn crash_twice_in_one_truncate(test: &str, mode: Mode) {
    for atomic in [true, false] {
        crash_twice_in_one_truncate_as(test, mode, atomic);
    }
}

fn crash_twice_in_one_truncate_as(test: &str, mode: Mode, atomic: bool) {
    if !common::can_mount(test) {
        return;
    }
    let args: &[&str] = if atomic { &["--atomic-o-trunc"] } else { &[] };
    let test = &format!("{test}{}", if atomic { "-atomic" } else { "" });
    let (k, disarm) = faulted(test, mode, "any", RESTART_DELAY_MS, args);
    let (m, src) = (k.mnt.join("t"), k.src().join("t"));
    // Made in SOURCE: no request through the mount reaches the fault point first.
    std::fs::write(&src, b"0123456789abcdef").expect("write t in SOURCE");
    let d0 = k.daemon();
    let app = {
        let m = m.clone();
        std::thread::spawn(move || OpenOptions::new().write(true).truncate(true).open(&m))
    };
    let aborted = wait_aborts(&k, "any", 1);
    assert_eq!(
        aborted,
        vec![d0],
        "the first daemon aborted in the truncate"
    );
    OpenOptions::new()
        .write(true)
        .open(&src)
        .and_then(|f| f.write_all_at(b"LATER", 0))
        .expect("the other writer's write");
    let running: Vec<i32> = common::children(k.pid)
        .into_iter()
        .filter(|p| !aborted.contains(p))
        .collect();
    assert!(
        running.is_empty(),
        "a daemon ({running:?}) started before the other writer's write: the test cannot tell"
    );
    let aborted = wait_aborts(&k, "any", 2);
    std::fs::write(&disarm, b"").expect("disarm");
    let running: Vec<i32> = common::children(k.pid)
        .into_iter()
        .filter(|p| !aborted.contains(p))
        .collect();
    assert!(
        running.is_empty(),
        "a third daemon ({running:?}) started before the fault was disarmed"
    );
    let r = app.join().expect("the application thread");
    assert!(
        r.is_ok(),
        "open(O_TRUNC) across two crashes: {r:?}\nkeeper log:\n{}",
        k.log_text()
    );
    drop(r);
    let got = std::fs::read(&src).expect("read t in SOURCE");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "LATER",
        "the later write survives two resends"
    );
    let log = k.log_text();
    let said = if atomic {
        "open resent after a crash: the dead process had truncated"
    } else {
        "setattr resent after a crash: the dead process had changed the size"
    };
    assert_eq!(
        log.matches(said).count(),
        2,
        "both resends took it as done:\n{log}"
    );
    k.stop();
    eprintln!("{test}: open(O_TRUNC) across two crashes in one request: one truncate");
    let _ = std::fs::remove_dir_all(disarm.parent().expect("marker dir"));
}

#[test]
fn crash_twice_in_one_truncate_with_kernel_passthrough() {
    crash_twice_in_one_truncate("pt-twice-on", Mode::On);
}

#[test]
fn crash_twice_in_one_truncate_without_kernel_passthrough() {
    crash_twice_in_one_truncate("pt-twice-off", Mode::Off);
}

#[test]
fn crash_after_a_truncate_keeps_later_writes_with_kernel_passthrough() {
    crash_after_truncate("pt-trunc-on", Mode::On);
}

#[test]
fn crash_after_a_truncate_keeps_later_writes_without_kernel_passthrough() {
    crash_after_truncate("pt-trunc-off", Mode::Off);
}

/// TMPFILE crashed after the unnamed file was made and opened (its descriptor
/// stored in the fd store), before its reply was journaled: the resent request
/// makes the file the application gets and uses; the dead process's is freed
/// (its stored descriptor removed at recovery, its backing id released), so once
/// the application closes its file, nothing of SOURCE stays open anywhere.
fn crash_after_tmpfile(test: &str, mode: Mode) {
    if !common::can_mount(test) {
        return;
    }
    let (k, disarm) = faulted(test, mode, "tmpfile", 0, &[]);
    let src = k.src();
    let fd = rustix::fs::open(
        &k.mnt,
        rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    );
    let fd = match fd {
        Ok(fd) => fd,
        Err(e) => panic!(
            "O_TMPFILE across a crash: {e}\nkeeper log:\n{}",
            k.log_text()
        ),
    };
    wait_abort(&k, "tmpfile");
    k.next_ready("after the crash in tmpfile");
    std::fs::write(&disarm, b"").expect("disarm");
    let f = File::from(fd);
    f.write_all_at(b"unnamed data", 0)
        .expect("write the unnamed file");
    let mut back = [0u8; 12];
    f.read_exact_at(&mut back, 0).expect("read it back");
    assert_eq!(&back, b"unnamed data");
    let log = k.log_text();
    assert!(
        log.contains("1 stale stored descriptors removed"),
        "the dead process's unnamed file left the fd store at recovery:\n{log}"
    );
    assert_eq!(
        open_files_in(k.pid as i32, &src),
        1,
        "the keeper's fd store holds the application's unnamed file only"
    );
    drop(f);
    wait_released(k.daemon(), &src, || k.log_text());
    let deadline = Instant::now() + PATIENCE;
    while open_files_in(k.pid as i32, &src) > 0 {
        assert!(
            Instant::now() < deadline,
            "the fd store keeps a file of SOURCE"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(leaked_backing_ids(k.daemon()), 0, "backing ids leaked");
    k.stop();
    eprintln!("{test}: TMPFILE across a crash in its window: one file, the other freed");
    let _ = std::fs::remove_dir_all(disarm.parent().expect("marker dir"));
}

#[test]
fn crash_after_tmpfile_frees_the_first_file_with_kernel_passthrough() {
    crash_after_tmpfile("pt-tmpfile-on", Mode::On);
}

#[test]
fn crash_after_tmpfile_frees_the_first_file_without_kernel_passthrough() {
    crash_after_tmpfile("pt-tmpfile-off", Mode::Off);
}

/// A crash in the last RELEASE of a file's backing id, at `point` (`before`: its
/// record says the id is closing, the kernel still has it; `after`: the kernel
/// released it, the RELEASE's reply is not journaled). The recovered daemon
/// holds no backing id in its table (a build that released the id before
/// journaling it recovered a table naming an id the kernel no longer had: an
/// OPEN of the same inode run before the resent RELEASE got it, and the
/// application's open failed ENOENT — the kernel resends in an order the test
/// cannot choose, so this asserts the table, which that open depends on); the
/// file opens and reads through passthrough again; no backing id is left
/// registered.
fn crash_in_a_backing_release(test: &str, point: &str) {
    if !common::can_mount(test) {
        return;
    }
    let marker = common::temp_dir(&format!("{test}-marker"));
    let disarm = marker.join("disarm");
    let fault = format!("passthrough-{point}-backing-close");
    let k = Keeper::start_with(
        test,
        Mode::On,
        &[
            ("FUSE_LIVE_FAULT", format!("{fault}:1")),
            ("FUSE_LIVE_FAULT_DISARM", disarm.display().to_string()),
        ],
        &[],
        &[],
    );
    let first = k.daemon();
    let f = k.mnt.join("f");
    std::fs::write(&f, b"backed bytes").expect("create and write f");
    // The RELEASE of the close above is sent in the background: it crashes.
    let line = format!("fuse-live fault: aborting at {fault} (hit 1)");
    let deadline = Instant::now() + PATIENCE;
    while !k.log_text().contains(&line) {
        assert!(
            Instant::now() < deadline,
            "no abort at {fault}; keeper log:\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    k.next_ready(&format!("after the crash at {fault}"));
    std::fs::write(&disarm, b"").expect("disarm");
    assert_ne!(k.daemon(), first, "a new daemon");
    let log = k.log_text();
    let recovering = log
        .lines()
        .find(|l| l.contains("recovering:"))
        .unwrap_or_else(|| panic!("no recovery line:\n{log}"));
    assert!(
        recovering.contains(" 0 backing ids registered"),
        "the recovered table names no backing id (the only one was released): \
         {recovering}\nkeeper log:\n{log}"
    );
    let back = std::fs::read(&f).unwrap_or_else(|e| {
        panic!(
            "open and read f after the crash: {e}\nkeeper log:\n{}",
            k.log_text()
        )
    });
    assert_eq!(back, b"backed bytes");
    wait_released(k.daemon(), &k.src(), || k.log_text());
    assert_eq!(
        leaked_backing_ids(k.daemon()),
        0,
        "backing ids leaked; keeper log:\n{}",
        k.log_text()
    );
    k.stop();
    eprintln!("{test}: crash {point} releasing a backing id: none in the table, none leaked");
    let _ = std::fs::remove_dir_all(&marker);
}

#[test]
fn crash_before_a_backing_id_is_released() {
    crash_in_a_backing_release("pt-backing-before", "before");
}

#[test]
fn crash_after_a_backing_id_is_released() {
    crash_in_a_backing_release("pt-backing-after", "after");
}

/// Live handoff (no keeper): a file unlinked while open and a file held open
/// keep their bytes across two handoffs; once both are closed, the kernel holds
/// no backing id of the connection (counted as the module docs say), before the
/// first handoff and after the last.
#[test]
fn handoff_with_an_unlinked_open_file_leaks_no_backing_id() {
    let test = "pt-handoff-backing";
    if !common::can_mount(test) {
        return;
    }
    for mode in [Mode::On, Mode::Off] {
        let dir = common::temp_dir(test);
        let (src, mnt, sock) = (dir.join("src"), dir.join("mnt"), dir.join("up.sock"));
        std::fs::create_dir(&src).expect("source");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(300)).expect("watchdog");
        let bin = common::example_binary("passthrough");
        let spawn = |args: &[&std::ffi::OsStr], log: &str| {
            let mut cmd = Command::new(&bin);
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(File::create(dir.join(log)).expect("log"));
            let mut child = cmd.spawn().expect("spawn passthrough");
            let out = child.stdout.take().expect("stdout");
            let mut line = String::new();
            BufReader::new(out)
                .read_line(&mut line)
                .expect("ready line");
            assert_eq!(line.trim_end(), format!("ready {}", mnt.display()), "{log}");
            child
        };
        let mut args: Vec<&std::ffi::OsStr> = vec![
            src.as_os_str(),
            mnt.as_os_str(),
            "--allow-other".as_ref(),
            "--upgrade-socket".as_ref(),
            sock.as_os_str(),
        ];
        if mode == Mode::Off {
            args.push("--no-passthrough".as_ref());
        }
        let mut guard = Guarded {
            child: Some(spawn(&args, "d0.log")),
            mnt: mnt.clone(),
        };
        let pid = |g: &Guarded| g.child.as_ref().expect("daemon").id() as i32;
        assert_eq!(leaked_backing_ids(pid(&guard)), 0, "{mode:?}: at first");
        let held = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(mnt.join("held"))
            .expect("create held");
        let gone = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(mnt.join("gone"))
            .expect("create gone");
        std::fs::remove_file(mnt.join("gone")).expect("unlink gone");
        for round in 0..2u64 {
            let data = block(round, 7);
            held.write_all_at(&data, round * BLOCK as u64)
                .expect("pwrite held");
            gone.write_all_at(&data, round * BLOCK as u64)
                .expect("pwrite gone");
            let log = format!("d{}.log", round + 1);
            let next = spawn(&["--takeover".as_ref(), sock.as_os_str()], &log);
            let mut old = guard.child.replace(next).expect("daemon");
            let st = common::wait_exit(&mut old, PATIENCE).expect("the old daemon exits");
            assert!(st.success(), "{mode:?}: old daemon {st:?}");
            for r in 0..=round {
                let want = block(r, 7);
                let mut got = vec![0u8; BLOCK];
                gone.read_exact_at(&mut got, r * BLOCK as u64)
                    .expect("pread gone");
                assert!(got == want, "{mode:?}: unlinked file, block {r}");
                held.read_exact_at(&mut got, r * BLOCK as u64)
                    .expect("pread held");
                assert!(got == want, "{mode:?}: held file, block {r}");
            }
        }
        let mut want = block(0, 7);
        want.extend(block(1, 7));
        drop((held, gone));
        assert_eq!(std::fs::read(src.join("held")).expect("source"), want);
        wait_released(pid(&guard), &src, || {
            std::fs::read_to_string(dir.join("d2.log")).unwrap_or_default()
        });
        assert_eq!(
            leaked_backing_ids(pid(&guard)),
            0,
            "{mode:?}: backing ids left registered after two handoffs"
        );
        // The count sees registered ids: with passthrough, one for a file open
        // (which the count releases; the open file keeps working on the kernel's
        // own reference, and the daemon's release then finds the id gone).
        let again = File::open(mnt.join("held")).expect("open held");
        let open_ids = leaked_backing_ids(pid(&guard));
        assert_eq!(
            open_ids,
            if mode == Mode::On { 1 } else { 0 },
            "{mode:?}: backing ids while a file is open"
        );
        let mut got = vec![0u8; 2 * BLOCK];
        again.read_exact_at(&mut got, 0).expect("read held");
        assert!(got == want, "{mode:?}: held read again");
        drop(again);
        eprintln!(
            "{test} {mode:?}: 2 handoffs, {open_ids} backing id registered while a file \
             was open, 0 left registered after closing"
        );
        let mut daemon = guard.child.take().expect("daemon");
        kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let st = common::wait_exit(&mut daemon, PATIENCE).expect("exit on SIGTERM");
        assert!(st.success(), "{st:?}");
        assert!(!common::is_fuse_mounted(&mnt));
        assert!(!watchdog.disarm(), "the watchdog fired");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A daemon and its mount, torn down if a test fails midway.
struct Guarded {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            if common::wait_exit(&mut c, Duration::from_secs(15)).is_none() {
                let _ = fusectl::tear_down(&self.mnt, None);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if common::is_fuse_mounted(&self.mnt) {
            let _ = fusectl::tear_down(&self.mnt, None);
        }
    }
}

/// An open file whose inode is gone when the daemon restarts (removed from SOURCE
/// behind the mount, and freed when the killed daemon's descriptors closed) is
/// dead: its writes and reads fail with EIO and never reach another file, though
/// a new file may have taken its inode number. Without kernel passthrough only:
/// with it, the kernel's backing file keeps the inode, and the file goes on
/// working (the same file).
#[test]
fn an_open_file_gone_from_source_is_dead_after_a_crash() {
    let test = "pt-crash-dead";
    if !common::can_mount(test) {
        return;
    }
    let k = Keeper::start(test, Mode::Off, &[]);
    let src = k.src();
    std::fs::write(k.mnt.join("victim"), b"victim data").expect("write victim");
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(k.mnt.join("victim"))
        .expect("open victim");
    let mut buf = vec![0u8; 11];
    held.read_exact_at(&mut buf, 0).expect("read victim");
    assert_eq!(buf, b"victim data");
    // Behind the mount: the name goes, and other files come (one may get the
    // freed inode number).
    std::fs::remove_file(src.join("victim")).expect("unlink in SOURCE");
    kill(Pid::from_raw(k.daemon()), Signal::SIGKILL).expect("kill passthrough");
    for i in 0..20 {
        std::fs::write(src.join(format!("other{i}")), b"other data").expect("other");
    }
    k.next_ready("after the kill");
    let w = held.write_at(b"X", 0);
    assert_eq!(common::errno_of(w), nix::libc::EIO, "write to a dead file");
    let r = held.read_at(&mut buf, 0);
    assert_eq!(common::errno_of(r), nix::libc::EIO, "read of a dead file");
    for i in 0..20 {
        assert_eq!(
            std::fs::read(src.join(format!("other{i}"))).expect("other"),
            b"other data",
            "another file was reached"
        );
    }
    let log = k.log_text();
    assert!(log.contains("cannot be found again"), "{log}");
    drop(held);
    k.stop();
}
