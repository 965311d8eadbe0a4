//! Test support of fuse-live, shared by the end-to-end tests (`tests/`) and the
//! examples that run child processes (`demo`, `handoff_bench`): find the binary
//! cargo built, start it in a private temporary directory, read its stdout lines,
//! wait for its `ready` line, and always clean up (unmount, stop the process,
//! remove the directory), with a watchdog so that a hung mount can never hang a
//! test.
pub mod chart;
pub mod posix;
pub mod requests;
pub mod stderr_log;
pub mod workload;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long one test may keep its mount before the watchdog tears it down.
pub const WATCHDOG: Duration = Duration::from_secs(180);

/// How long a filesystem may take to print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// True if this test can mount FUSE filesystems (root and `/dev/fuse`). Otherwise
/// prints why and returns false, or panics when the environment variable `CI` is set:
/// CI must run every test.
pub fn can_mount(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let dev = Path::new("/dev/fuse").exists();
    if root && dev {
        return true;
    }
    let why = if !dev {
        "/dev/fuse is missing"
    } else {
        "not running as root"
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot mount under CI: {why}");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// True if this test can mount FUSE filesystems served through fuse-over-io_uring:
/// [`can_mount`], and the `fuse` module parameter `enable_uring` on. Otherwise prints
/// why and returns false, or panics under `CI` (CI turns the parameter on).
pub fn can_use_uring(test: &str) -> bool {
    if !can_mount(test) {
        return false;
    }
    if fuse_session::dev::uring::uring_enabled() != Some(true) {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI needs the fuse module parameter enable_uring on"
        );
        eprintln!("{test}: skipped: the fuse module parameter enable_uring is off");
        return false;
    }
    true
}

/// The path of example `name`, built for this test binary's profile: tests live in
/// `<target>/<profile>/deps/`, examples in `<target>/<profile>/examples/`.
///
/// `cargo test` builds examples, but `cargo test --test NAME` does not, and a binary
/// left from an earlier build may be stale: so the first call per example runs
/// `cargo build --example NAME` (a no-op when it is fresh).
///
/// `memfs` is no example but the binary of the `memfs` workspace crate, in
/// `<target>/<profile>/`: it is built with `cargo build -p memfs --bin memfs`; so
/// is `fuse-live-keeper`, the root package's binary (`--bin fuse-live-keeper`).
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps");
    let (bin, build_args) = if name == "memfs" {
        (profile_dir.join(name), ["-p", "memfs", "--bin", name])
    } else if name == "fuse-live-keeper" {
        (profile_dir.join(name), ["-p", "fuse-live", "--bin", name])
    } else {
        (
            profile_dir.join("examples").join(name),
            ["-p", "fuse-live", "--example", name],
        )
    };
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.contains(name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet"])
            .args(build_args);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build {} failed:\n{}",
            build_args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        built.insert(name.to_owned());
    }
    assert!(
        bin.exists(),
        "example binary {} not found after building it",
        bin.display()
    );
    bin
}

/// A fresh private directory under the system's temporary directory, mode 0755 so
/// that other users (tests that drop privileges) can reach a mount inside it.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("fuse-live-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

/// True if a FUSE filesystem is mounted exactly at `path` (read from the mount table,
/// never with `stat`, which could block on a hung mount).
pub fn is_fuse_mounted(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy().into_owned();
    table.lines().any(|l| {
        let mut f = l.split(' ');
        let (_src, mnt, ty) = (f.next(), f.next(), f.next());
        mnt == Some(want.as_str()) && ty.is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
    })
}

/// A running filesystem process with its mount. Dropping it stops the process
/// (SIGTERM, which unmounts), tears the mount down if it is still there, kills the
/// process if it does not exit, and removes the temporary directory.
pub struct Mounted {
    child: Option<Child>,
    /// The temporary directory holding the mountpoint and the log.
    pub dir: PathBuf,
    /// The mountpoint.
    pub mnt: PathBuf,
    /// The process's stderr.
    pub log: PathBuf,
    watchdog: Option<Watchdog>,
    /// False once [`Mounted::release_exited`] gave the mountpoint up.
    owns_mountpoint: bool,
}

impl Mounted {
    /// Starts example `bin` on a new mountpoint with `args` after it and `env` set,
    /// and waits for its `ready MOUNTPOINT` line.
    pub fn start(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Mounted {
        let dir = temp_dir(bin);
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("create mountpoint");
        Mounted::start_in(bin, dir, "stderr.log", args, env)
    }

    /// As [`Mounted::start`], in the existing directory `dir` (removed when the
    /// value is dropped) on its existing `mnt` subdirectory, logging to `log_name`
    /// there: for tests that mount several processes one after another at one place.
    pub fn start_in(
        bin: &str,
        dir: PathBuf,
        log_name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Mounted {
        Mounted::spawn_in(bin, dir, log_name, true, args, env)
    }

    /// As [`Mounted::start_in`] for a process that takes over the mount at
    /// `dir/mnt` instead of mounting (`args` name where from, e.g. `--takeover
    /// SOCKET`): the mountpoint is not passed, but the `ready` line must name it.
    pub fn take_over_in(
        bin: &str,
        dir: PathBuf,
        log_name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Mounted {
        Mounted::spawn_in(bin, dir, log_name, false, args, env)
    }

    fn spawn_in(
        bin: &str,
        dir: PathBuf,
        log_name: &str,
        pass_mountpoint: bool,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Mounted {
        let exe = example_binary(bin);
        let mnt = dir.join("mnt");
        let log = dir.join(log_name);
        // The guard exists before anything can fail, so the directory never leaks.
        let mut m = Mounted {
            child: None,
            dir,
            mnt: mnt.clone(),
            log,
            watchdog: None,
            owns_mountpoint: true,
        };
        let mut cmd = Command::new(exe);
        if pass_mountpoint {
            cmd.arg(&mnt);
        }
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&m.log).expect("create log"));
        // SAFETY: the closure runs in the forked child before exec and only makes
        // the prctl(2) system call, which is async-signal-safe. If the test process
        // dies, the filesystem gets SIGTERM and unmounts itself.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().expect("spawn the example");
        let rx = stdout_lines(&mut child).expect("stdout");
        m.child = Some(child);
        // Armed before the mount exists: it looks the connection up when it fires.
        m.watchdog = Some(Watchdog::arm(&mnt, None, WATCHDOG).expect("arm watchdog"));
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => assert_eq!(
                line,
                format!("ready {}", mnt.display()),
                "first stdout line"
            ),
            Err(e) => panic!("{bin} printed no ready line ({e}); log:\n{}", m.log_text()),
        }
        assert!(
            is_fuse_mounted(&mnt),
            "ready printed but nothing is mounted at {}",
            mnt.display()
        );
        m
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the process wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let st = wait_exit(self.child.as_mut()?, timeout)?;
        self.child = None;
        Some(st)
    }

    /// For a process that has exited while another one now serves the same
    /// mountpoint: disarms the watchdog and forgets the mountpoint and directory
    /// (the other process's value cleans them up). Panics if the process still runs.
    pub fn release_exited(mut self) {
        assert!(self.child.is_none(), "release_exited of a running process");
        self.owns_mountpoint = false;
    }

    /// Stops the filesystem with SIGTERM and returns its exit status; the mount must
    /// be gone afterwards.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let st = self
            .wait_exit(Duration::from_secs(30))
            .expect("the filesystem did not exit on SIGTERM");
        assert!(
            !is_fuse_mounted(&self.mnt),
            "still mounted after the filesystem exited"
        );
        st
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.owns_mountpoint {
            if let Some(w) = self.watchdog.take() {
                w.disarm();
            }
            return;
        }
        if let Some(mut c) = self.child.take() {
            stop_process(&mut c, &self.mnt, Duration::from_secs(15));
        }
        tear_down_if_mounted(&self.mnt);
        if let Some(w) = self.watchdog.take() {
            if w.disarm() {
                eprintln!(
                    "watchdog fired on {}: the mount hung; log:\n{}",
                    self.mnt.display(),
                    self.log_text()
                );
            }
        }
        if !is_fuse_mounted(&self.mnt) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `f` in a forked child process that has dropped to user `uid` and group `gid`
/// (no supplementary groups) and returns what `f` returned (0..=255, e.g. an errno
/// or 0 for success). Use it for permission checks the kernel makes against the
/// caller's ids.
pub fn as_user(uid: u32, gid: u32, f: impl FnOnce() -> i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult, Gid, Uid};
    // SAFETY: the child only calls set*id, runs `f` (file system calls through std),
    // and leaves with _exit, never returning into the test harness. glibc's fork
    // handlers keep malloc usable in the child of a multi-threaded parent.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = (|| {
                nix::unistd::setgroups(&[]).ok()?;
                nix::unistd::setgid(Gid::from_raw(gid)).ok()?;
                nix::unistd::setuid(Uid::from_raw(uid)).ok()?;
                Some(f())
            })()
            .unwrap_or(254);
            // SAFETY: _exit is always safe to call; it skips the parent's atexit
            // handlers and destructors, which belong to the parent.
            unsafe { nix::libc::_exit(code.clamp(0, 255)) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, code) => code,
            other => panic!("child ended with {other:?}"),
        },
    }
}

/// The uid and gid of `nobody` (65534 where there is no such user).
pub fn nobody() -> (u32, u32) {
    let user = nix::unistd::User::from_name("nobody").ok().flatten();
    user.map_or((65534, 65534), |u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// The errno of an `io::Result` (0 for success), for [`as_user`] closures.
pub fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(255),
    }
}

/// Sends each line `child` writes to stdout (which must be piped) to the returned
/// channel, from a thread that reads to the end, so that the process never blocks
/// on a full pipe, even once the receiver is dropped.
///
/// # Errors
/// `InvalidInput` if the child's stdout is not piped (or was taken already).
pub fn stdout_lines(child: &mut Child) -> std::io::Result<mpsc::Receiver<String>> {
    let stdout = child.stdout.take().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "stdout is not piped")
    })?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok(rx)
}

/// Starts `cmd` with no stdin, stdout piped into the returned channel of lines
/// ([`stdout_lines`]) and stderr appended to a new file `log`.
///
/// # Errors
/// Of creating `log` or spawning the process.
pub fn spawn_with_lines(
    cmd: &mut Command,
    log: &Path,
) -> std::io::Result<(Child, mpsc::Receiver<String>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(log)?)
        .spawn()?;
    let rx = stdout_lines(&mut child)?;
    Ok((child, rx))
}

/// Waits up to `timeout` for `child` to exit; `None` if it still runs (or cannot be
/// waited for).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// Stops a filesystem process serving `mnt`: SIGTERM (it unmounts), and if it has
/// not exited within `grace`, tears the mount down (abort, lazy unmount) and kills
/// it. Returns its exit status if it exited by itself.
pub fn stop_process(child: &mut Child, mnt: &Path, grace: Duration) -> Option<ExitStatus> {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let st = wait_exit(child, grace);
    if st.is_none() {
        let _ = fusectl::tear_down(mnt, None);
        let _ = child.kill();
        let _ = child.wait();
    }
    st
}

/// Tears down (abort, lazy unmount) the FUSE mount at `mnt`, if there is one.
pub fn tear_down_if_mounted(mnt: &Path) {
    if is_fuse_mounted(mnt) {
        let _ = fusectl::tear_down(mnt, None);
    }
}

/// Deterministic pseudo-random bytes for (`seed`, `len`) (xorshift), for contents
/// that are written and then verified.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The number after `name=` in a line of space-separated `key=value` fields (0 if
/// there is none or it is no number).
pub fn field(line: &str, name: &str) -> u64 {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The direct children of process `pid` (read from every thread's
/// `/proc/PID/task/TID/children`: a child belongs to the thread that forked it).
pub fn children(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// The mount id (first field of `/proc/self/mountinfo`) of the mount at `path`.
pub fn mount_id(path: &Path) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&want))
            .then(|| f[0].parse().ok())
            .flatten()
    })
}

/// Where process `pid` and each of its threads sleep — name, state, `wchan` and
/// kernel stack — for a failure message (a daemon that does not die, a keeper
/// stuck).
pub fn thread_stacks(pid: i32) -> String {
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_else(|e| format!("({e})\n"));
    let mut out = format!("--- pid {pid}\n");
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        out.push_str("(no such process)\n");
        return out;
    };
    for t in tasks.flatten() {
        let base = t.path();
        let state = read(base.join("status"))
            .lines()
            .filter(|l| l.starts_with("Name:") || l.starts_with("State:"))
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "task {}: {state} wchan {}\n{}",
            t.file_name().to_string_lossy(),
            read(base.join("wchan")).trim(),
            read(base.join("stack"))
        ));
    }
    out
}

/// Starts this test binary again to run only the test `test` as a worker process,
/// with the environment variable `env` (name, value) telling it what to do; its
/// stdout is piped (the worker's report), stderr inherited. The worker gets
/// SIGKILL when the test process dies (`PR_SET_PDEATHSIG`).
pub fn spawn_test_worker(test: &str, env: (&str, &str)) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(env.0, env.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: only prctl(2) in the forked child, async-signal-safe: the worker dies
    // with the test.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    cmd.spawn().expect("spawn a test worker")
}

/// A seed for a test's random choices from the clock (odd, never 0), printed by the
/// test so that a failing run can be replayed.
pub fn time_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

/// Waits for a worker started with [`spawn_test_worker`] to exit and reads its
/// report: its exit status, its whole stdout, and the operation count of its
/// `ops N` line (`None` if it printed none: it failed).
pub fn worker_report(worker: &mut Child) -> (ExitStatus, String, Option<u64>) {
    use std::io::Read;
    let mut out = String::new();
    if let Some(o) = worker.stdout.as_mut() {
        o.read_to_string(&mut out).expect("worker output");
    }
    let st = worker.wait().expect("wait worker");
    let ops = out
        .lines()
        .find_map(|l| l.strip_prefix("ops "))
        .and_then(|n| n.parse::<u64>().ok());
    (st, out, ops)
}

/// What a test running a daemon under `fuse-live-keeper` with worker processes
/// leaves to undo, undone on drop: the workers killed, the keeper stopped (SIGTERM,
/// then SIGKILL after 15 s, and its daemons killed: the keeper does not take them
/// down with it), the mount torn down if still there, the directory removed once
/// nothing is mounted in it.
pub struct KeeperGuard {
    /// The keeper, until the test waits for it itself.
    pub keeper: Option<Child>,
    /// The worker processes.
    pub workers: Vec<Child>,
    /// The mountpoint.
    pub mnt: PathBuf,
    /// The test's directory (removed).
    pub dir: PathBuf,
}

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(mut c) = self.keeper.take() {
            let pid = c.id();
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            for d in children(pid) {
                let _ = kill(Pid::from_raw(d), Signal::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_fuse_mounted(&self.mnt) {
            let _ = fusectl::tear_down(&self.mnt, None);
        }
        if !is_fuse_mounted(&self.mnt) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A small deterministic generator (xorshift64), seeded per run (see
/// [`time_seed`]) and printed by the test, so that a failing run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 for `n` 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
