//! Live upgrades under `fuse-live-keeper`, end to end on a real mount:
//! `fuse-live-keeper -- memfs MOUNTPOINT --upgrade-socket PATH`, a workload in
//! child processes (creates, writes checked byte for byte, renames, unlinks,
//! listings, a file held open throughout, written with pwrite/pread), while the
//! daemon is replaced by live handoffs (SIGHUP to the keeper) and killed with
//! SIGKILL, interleaved; then a crash injected at each step of a handoff, on each
//! side (`FUSE_LIVE_FAULT`). Every application call must succeed, every byte must
//! read back, the mount and its FUSE connection must stay the same ones, and
//! SIGTERM to the keeper must unmount and leave nothing behind.
//!
//! The workers are this test binary run again (`handoff_worker`, which does nothing
//! unless `FUSE_LIVE_HANDOFF_WORKER` is set), as in tests/crash.rs.
mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);
const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");
const WORKER_ENV: &str = "FUSE_LIVE_HANDOFF_WORKER";
const WORKERS: u32 = 3;
/// Live upgrades and SIGKILLs in the interleaved run (each).
const UPGRADES: u32 = 8;
const KILLS: u32 = 8;
/// Live upgrades in the io_uring run (twice as many as a queue has slots: the
/// slots of each process are reclaimed by the next ones);
/// `FUSE_LIVE_KEEPER_URING_UPGRADES` asks for more (32 were run while building it).
const URING_UPGRADES: u32 = 16;

/// The handoff steps a crash is injected at (`fuse_session::fault` points).
const OLD_STEPS: &[&str] = &[
    "handoff-old-accepted",
    "handoff-old-paused",
    "handoff-old-sent",
    "handoff-old-acked",
    "handoff-old-observed",
    "handoff-old-committed",
];
const NEW_STEPS: &[&str] = &[
    "handoff-new-connected",
    "handoff-new-received",
    "handoff-new-acked",
    "handoff-new-committed",
    "handoff-new-journaled",
    "handoff-new-serving",
];

/// The worker's entry point in the re-run test binary.
#[test]
fn handoff_worker() {
    common::workload::run_from_env(WORKER_ENV);
}

fn spawn_worker(w: u32, dir: &Path, stop: &Path) -> Child {
    common::workload::spawn("handoff_worker", WORKER_ENV, w, dir, stop)
}

/// The processes whose command line names `mnt` (the keeper and its daemons).
fn processes_naming(mnt: &Path) -> Vec<u32> {
    let want = mnt.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == want))
        })
        .collect()
}

/// A keeper running memfs with an upgrade socket, its workers, and what the test
/// checks at the end.
struct Run {
    guard: common::KeeperGuard,
    keeper_pid: u32,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    ready: String,
    conn: u64,
    id: u64,
    stop: PathBuf,
    _watchdog: Watchdog,
}

impl Run {
    /// Starts the keeper (with `fault` as `FUSE_LIVE_FAULT` for every daemon it
    /// starts, and `extra` appended to memfs's arguments) and the workers, once
    /// the mount serves.
    fn start(tag: &str, fault: Option<&str>, extra: &[&str]) -> Run {
        let dir = common::temp_dir(tag);
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let log = dir.join("keeper.log");
        let memfs = common::example_binary("memfs");
        let mut cmd = Command::new(KEEPER);
        cmd.args(["--restart-limit", "100000", "--restart-window", "1", "--"])
            .arg(&memfs)
            .arg(&mnt)
            .args(["--threads", "2", "--upgrade-socket"])
            .arg(dir.join("upgrade.sock"))
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("HANDOFF_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("FUSE_LIVE_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("log"));
        if let Some(f) = fault {
            cmd.env("FUSE_LIVE_FAULT", format!("{f}:1"));
        }
        // SAFETY: only prctl(2) and setrlimit(2) in the forked child, both
        // async-signal-safe: the keeper gets SIGTERM when the test dies, and an
        // injected abort leaves no core file.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
                    .map_err(std::io::Error::from)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(900)).expect("watchdog");
        let mut keeper = cmd.spawn().expect("spawn fuse-live-keeper");
        let out = keeper.stdout.take().expect("stdout");
        let keeper_pid = keeper.id();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let ready = format!("ready {}", mnt.display());
        let stop = dir.join("stop");
        let mut run = Run {
            guard: common::KeeperGuard {
                keeper: Some(keeper),
                workers: Vec::new(),
                mnt: mnt.clone(),
                dir: dir.clone(),
            },
            keeper_pid,
            lines,
            log,
            ready,
            conn: 0,
            id: 0,
            stop: stop.clone(),
            _watchdog: watchdog,
        };
        run.next_ready("at the first start");
        run.conn = fusectl::connection_id(&mnt).expect("fusectl connection");
        run.id = common::mount_id(&mnt).expect("mount id");
        for w in 0..WORKERS {
            let child = spawn_worker(w, &mnt.join(format!("w{w}")), &stop);
            run.guard.workers.push(child);
        }
        run
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn next_ready(&self, what: &str) {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(l) => assert_eq!(l, self.ready, "{what}"),
            Err(e) => panic!(
                "no ready line {what} ({e}); keeper log:\n{}",
                self.log_text()
            ),
        }
    }

    /// The one daemon, once the keeper has exactly one child.
    fn daemon(&self) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = common::children(self.keeper_pid);
            if let [one] = now[..] {
                return one;
            }
            assert!(
                Instant::now() < deadline,
                "the keeper has children {now:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Panics with its output if a worker has ended (failed) already.
    fn check_workers(&mut self) {
        let log = self.log_text();
        for (w, c) in self.guard.workers.iter_mut().enumerate() {
            if let Some(st) = c.try_wait().expect("try_wait") {
                let mut out = String::new();
                if let Some(o) = c.stdout.as_mut() {
                    let _ = o.read_to_string(&mut out);
                }
                panic!("worker {w} ended early ({st}): {out}\nkeeper log:\n{log}");
            }
        }
    }

    /// Stops the workers: every one must have succeeded. Returns the operations.
    fn finish_workers(&mut self) -> u64 {
        File::create(&self.stop).expect("stop file");
        let log = self.log_text();
        let mut total = 0u64;
        for (w, c) in self.guard.workers.iter_mut().enumerate() {
            let (st, out, ops) = common::worker_report(c);
            assert!(
                st.success() && ops.is_some(),
                "worker {w} failed ({st}): {out}\nkeeper log:\n{log}"
            );
            total += ops.unwrap_or(0);
        }
        self.guard.workers.clear();
        total
    }

    /// Same mount and connection; SIGTERM to the keeper unmounts, it exits 0 and
    /// leaves no process behind.
    fn stop_keeper(mut self) {
        let mnt = self.guard.mnt.clone();
        assert_eq!(
            fusectl::connection_id(&mnt).expect("fusectl"),
            self.conn,
            "same connection"
        );
        assert_eq!(common::mount_id(&mnt), Some(self.id), "same mount");
        kill(Pid::from_raw(self.keeper_pid as i32), Signal::SIGTERM).expect("SIGTERM the keeper");
        let mut keeper = self.guard.keeper.take().expect("keeper");
        let st = common::wait_exit(&mut keeper, PATIENCE).expect("the keeper exits");
        assert_eq!(st.code(), Some(0), "keeper log:\n{}", self.log_text());
        assert!(!common::is_fuse_mounted(&mnt), "unmounted on SIGTERM");
        assert_eq!(processes_naming(&mnt), Vec::<u32>::new(), "no daemon left");
        assert!(!self._watchdog.disarm(), "the watchdog fired");
    }
}

/// Several live upgrades through the keeper and SIGKILLs of the daemon,
/// interleaved, under a verified workload.
#[test]
fn live_upgrades_and_sigkills_interleaved_under_the_keeper() {
    if std::env::var_os(WORKER_ENV).is_some()
        || !common::can_mount("live_upgrades_and_sigkills_interleaved_under_the_keeper")
    {
        return;
    }
    upgrades_and_sigkills("khandoff", &[], UPGRADES, KILLS);
}

/// The same with memfs `--no-resend` (the path of kernels without
/// `NOTIFY_RESEND`): the request slots are handed from each daemon to its
/// successor in a live upgrade and answered from after each SIGKILL, so the
/// upgrades and the recoveries share one memfd of slots.
#[test]
fn live_upgrades_and_sigkills_interleaved_without_resend() {
    if std::env::var_os(WORKER_ENV).is_some()
        || !common::can_mount("live_upgrades_and_sigkills_interleaved_without_resend")
    {
        return;
    }
    upgrades_and_sigkills("knoresend", &["--no-resend"], UPGRADES, KILLS);
}

/// The same over fuse-over-io_uring (memfs `--transport io-uring`): each live
/// upgrade hands the ring area on (the successor registers its own entries, then
/// adopts the requests the old process's entries held during the pause), and
/// each SIGKILL is recovered from the same ring area by a process the keeper
/// restarts (the requests the dead process's entries held are answered from
/// them).
#[test]
fn live_upgrades_and_sigkills_interleaved_over_io_uring() {
    if std::env::var_os(WORKER_ENV).is_some()
        || !common::can_use_uring("live_upgrades_and_sigkills_interleaved_over_io_uring")
    {
        return;
    }
    let upgrades = std::env::var("FUSE_LIVE_KEEPER_URING_UPGRADES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(URING_UPGRADES);
    upgrades_and_sigkills("kuring", &["--transport", "io-uring"], upgrades, 0);
}

fn upgrades_and_sigkills(tag: &str, extra: &[&str], want_upgrades: u32, want_kills: u32) {
    let seed = common::time_seed();
    eprintln!(
        "keeper handoff test {extra:?}: {want_upgrades} upgrades, {want_kills} kills, seed {seed}"
    );
    let mut rng = common::Rng(seed);
    let mut run = Run::start(tag, None, extra);
    let mut daemons = BTreeSet::new();
    let (mut upgrades, mut kills) = (0, 0);
    while upgrades < want_upgrades || kills < want_kills {
        let ms = match rng.next() % 3 {
            0 => 0,
            1 => rng.next() % 20,
            _ => rng.next() % 300,
        };
        std::thread::sleep(Duration::from_millis(ms));
        let before = run.daemon();
        assert!(daemons.insert(before), "a new daemon each time");
        let upgrade = kills >= want_kills || (upgrades < want_upgrades && rng.next() % 2 == 0);
        if upgrade {
            upgrades += 1;
            kill(Pid::from_raw(run.keeper_pid as i32), Signal::SIGHUP).expect("SIGHUP");
            run.next_ready(&format!("after upgrade {upgrades}"));
        } else {
            kills += 1;
            kill(Pid::from_raw(before), Signal::SIGKILL).expect("kill memfs");
            run.next_ready(&format!("after kill {kills}"));
        }
        run.check_workers();
        // The previous daemon has exited (after a handoff it exits by itself).
        let after = run.daemon();
        assert_ne!(after, before, "another process serves");
    }
    let total = run.finish_workers();
    let log = run.log_text();
    let handed = log.matches("hands the mount over to pid").count();
    assert_eq!(
        handed, want_upgrades as usize,
        "every upgrade was a handover:\n{log}"
    );
    if extra.contains(&"--no-resend") {
        // Each recovery answered from the slots, none through NOTIFY_RESEND.
        let by_slots = log
            .lines()
            .filter(|l| {
                l.contains("memfs: requests in flight at the crash") && l.contains("how: Slots")
            })
            .count();
        assert_eq!(
            by_slots, want_kills as usize,
            "every recovery used the slots:\n{log}"
        );
        assert!(!log.contains("how: Resent"), "no resend asked for:\n{log}");
    }
    eprintln!(
        "keeper handoff test {extra:?}: {want_upgrades} live upgrades and {want_kills} SIGKILLs, {total} \
         operations by {WORKERS} workers, 0 failed"
    );
    run.stop_keeper();
}

/// A crash injected at each step of a live upgrade, on either side: the mount
/// recovers (the old daemon serves on, or the new one serves, or the keeper
/// restarts the daemon from the fd store and the journal), 0 failed calls.
#[test]
fn a_crash_at_each_handoff_step_recovers() {
    if std::env::var_os(WORKER_ENV).is_some()
        || !common::can_mount("a_crash_at_each_handoff_step_recovers")
    {
        return;
    }
    let steps: Vec<&str> = OLD_STEPS.iter().chain(NEW_STEPS).copied().collect();
    crash_at_steps("kfault", &steps, &[]);
}

/// Over io_uring: a crash at each step of a live upgrade once the old daemon is
/// paused, on either side (the new one also after filling the old entries):
/// the old daemon serves on, or the new one serves, or the keeper restarts the
/// daemon, which answers what the entries of either process hold, from the same
/// ring area; 0 failed calls. Not `handoff-old-accepted` nor `handoff-new-serving`:
/// the old daemon still serves at the first, the new one serves at the second, and
/// a crash of a serving daemon can fail a call with `ECANCELED` (the kernel window
/// of docs/RECOVERY.md, "Crash recovery over io_uring": CI hit it once at
/// `handoff-new-serving`, a CREATE).
#[test]
fn a_crash_at_each_handoff_step_after_the_pause_recovers_over_io_uring() {
    if std::env::var_os(WORKER_ENV).is_some()
        || !common::can_use_uring(
            "a_crash_at_each_handoff_step_after_the_pause_recovers_over_io_uring",
        )
    {
        return;
    }
    let steps: Vec<&str> = OLD_STEPS[1..]
        .iter()
        .chain(NEW_STEPS)
        .copied()
        .filter(|s| *s != "handoff-new-serving")
        .chain(["handoff-new-rings-registered"])
        .collect();
    crash_at_steps("kfault-uring", &steps, &["--transport", "io-uring"]);
}

/// A crash injected at each of `steps` (see `a_crash_at_each_handoff_step_recovers`).
fn crash_at_steps(tag: &str, steps: &[&str], extra: &[&str]) {
    for step in steps {
        let mut run = Run::start(tag, Some(step), extra);
        // Some work before the upgrade.
        std::thread::sleep(Duration::from_millis(200));
        run.check_workers();
        let first = run.daemon();
        kill(Pid::from_raw(run.keeper_pid as i32), Signal::SIGHUP).expect("SIGHUP");
        let fired = format!("fuse-live fault: aborting at {step} (hit 1)");
        // Settled: the fault fired, one daemon runs, and it serves (it said
        // READY=1, or it is the first one and the handoff rolled back).
        let deadline = Instant::now() + PATIENCE;
        let serving = loop {
            let log = run.log_text();
            let now = common::children(run.keeper_pid);
            // The process the fault aborted (a zombie may still be listed).
            let aborted = log
                .lines()
                .find_map(|l| l.strip_prefix(fired.as_str())?.strip_prefix(", pid "))
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(aborted) = aborted {
                if let [one] = now[..]
                    .iter()
                    .copied()
                    .filter(|&p| p != aborted)
                    .collect::<Vec<_>>()[..]
                {
                    let ok = if one == first {
                        log.contains("the live upgrade failed")
                            || log.contains(&format!(
                                "pid {one} rolled the handoff back and serves on"
                            ))
                    } else {
                        log.contains(&format!("daemon pid {one} is ready"))
                    };
                    if ok {
                        break one;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{step}: not settled (children {now:?}); keeper log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // A daemon other than the first prints its ready line (the keeper logs its
        // READY=1 just before).
        if serving != first {
            run.next_ready(&format!("{step}: from pid {serving}"));
        }
        assert!(
            run.lines.try_recv().is_err(),
            "{step}: one ready line at most"
        );
        // More work after it, then every call checked.
        std::thread::sleep(Duration::from_millis(300));
        run.check_workers();
        let total = run.finish_workers();
        let log = run.log_text();
        let how = if serving == first {
            "the old daemon serves on"
        } else if log.contains(&format!(
            "started {} as pid {serving} with",
            common::example_binary("memfs").display()
        )) {
            "restarted from the fd store and the journal"
        } else {
            "the new daemon serves"
        };
        let expected: &[&str] = match step {
            // Dies before Commit: the successor gets none and exits, then the
            // keeper restarts the daemon from the fd store and the journal.
            s if s.starts_with("handoff-old-") && *s != "handoff-old-committed" => {
                &["restarted from the fd store and the journal"]
            }
            // Commit was sent: the successor serves.
            &"handoff-old-committed" => &["the new daemon serves"],
            // Dies before its Ack: the old daemon rolls back.
            &"handoff-new-connected" | &"handoff-new-received" => &["the old daemon serves on"],
            // Dies after its Ack: the old daemon rolls back if Commit cannot be
            // sent any more, or commits and exits, and the keeper restarts.
            &"handoff-new-acked" => &[
                "the old daemon serves on",
                "restarted from the fd store and the journal",
            ],
            // Dies after Commit: restarted from the journal (the old epoch, or the
            // successor's own).
            _ => &["restarted from the fd store and the journal"],
        };
        assert!(
            expected.contains(&how),
            "{step}: {how}, expected one of {expected:?}; keeper log:\n{log}"
        );
        eprintln!("{step}: {how}, {total} operations, 0 failed");
        run.stop_keeper();
    }
}

/// SIGTERM to the keeper right after SIGHUP, at several delays (before the
/// successor connects, during the handoff, after it): whichever process holds the
/// mount then unmounts it, the keeper exits 0, and no process is left.
#[test]
fn sigterm_during_a_live_upgrade_unmounts_cleanly() {
    if std::env::var_os(WORKER_ENV).is_some()
        || !common::can_mount("sigterm_during_a_live_upgrade_unmounts_cleanly")
    {
        return;
    }
    for delay_ms in [0u64, 1, 3, 10, 30] {
        let mut run = Run::start("kstop", None, &[]);
        // No workload: an unmount under a running program would fail its calls.
        run.finish_workers();
        std::fs::write(run.guard.mnt.join("kept"), b"x").expect("write");
        let keeper = Pid::from_raw(run.keeper_pid as i32);
        kill(keeper, Signal::SIGHUP).expect("SIGHUP");
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill(keeper, Signal::SIGTERM).expect("SIGTERM");
        let mut k = run.guard.keeper.take().expect("keeper");
        let st = common::wait_exit(&mut k, PATIENCE).expect("the keeper exits");
        let log = run.log_text();
        assert_eq!(
            st.code(),
            Some(0),
            "delay {delay_ms} ms; keeper log:\n{log}"
        );
        assert!(
            !common::is_fuse_mounted(&run.guard.mnt),
            "delay {delay_ms} ms: still mounted; keeper log:\n{log}"
        );
        assert_eq!(
            processes_naming(&run.guard.mnt),
            Vec::<u32>::new(),
            "delay {delay_ms} ms: no daemon left"
        );
        let handed = log.contains("hands the mount over to pid");
        eprintln!(
            "SIGTERM {delay_ms} ms after SIGHUP: {}, unmounted, keeper exit 0",
            if handed {
                "handed over first, then the new daemon stopped"
            } else {
                "the old daemon stopped"
            }
        );
    }
}

/// The keeper's rules for a live upgrade, played by `fdstore_child --handover`
/// (no filesystem): who is the daemon after `MAINPID=`, a rollback, and when a
/// crash of either process restarts it.
struct Played {
    keeper: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    file: PathBuf,
    dir: PathBuf,
}

impl Played {
    fn start(tag: &str) -> Played {
        let dir = common::temp_dir(tag);
        let log = dir.join("keeper.log");
        let file = dir.join("successor");
        let child = common::example_binary("fdstore_child");
        let mut cmd = Command::new(KEEPER);
        cmd.args(["--restart-limit", "100", "--"])
            .arg(&child)
            .args(["d", "--handover"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("log"));
        // SAFETY: only prctl(2) in the forked child, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut keeper = cmd.spawn().expect("spawn the keeper");
        let lines = common::stdout_lines(&mut keeper).expect("stdout");
        Played {
            keeper,
            lines,
            log,
            file,
            dir,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The next stdout line starting with `prefix` (others skipped), its rest.
    fn line(&self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(e) => panic!("no line {prefix:?} ({e}); keeper log:\n{}", self.log_text()),
            }
        }
    }

    fn pid(&self, prefix: &str) -> Pid {
        Pid::from_raw(self.line(prefix).trim().parse().expect("a pid"))
    }

    /// Waits until the keeper's log contains `what`.
    fn logged(&self, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log_text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "the keeper never logged {what:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGHUP: the successor starts; the daemon names it (MAINPID=).
    fn hand_over(&self, daemon: Pid) -> Pid {
        kill(Pid::from_raw(self.keeper.id() as i32), Signal::SIGHUP).expect("SIGHUP");
        let succ = self.pid("pid ");
        assert_eq!(self.line("upgrade-from "), daemon.to_string());
        std::fs::write(&self.file, succ.to_string()).expect("write the pid");
        kill(daemon, Signal::SIGUSR1).expect("SIGUSR1");
        assert_eq!(self.line("named "), succ.to_string());
        self.logged(&format!(
            "daemon pid {daemon} hands the mount over to pid {succ}, the daemon from now on"
        ));
        succ
    }

    fn stop(mut self) -> String {
        kill(Pid::from_raw(self.keeper.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let st = common::wait_exit(&mut self.keeper, PATIENCE).expect("the keeper exits");
        let log = self.log_text();
        assert_eq!(st.code(), Some(0), "keeper log:\n{log}");
        assert_eq!(
            processes_naming(&self.file),
            Vec::<u32>::new(),
            "nothing left"
        );
        let _ = std::fs::remove_dir_all(&self.dir);
        log
    }
}

impl Drop for Played {
    fn drop(&mut self) {
        if matches!(self.keeper.try_wait(), Ok(None)) {
            for p in common::children(self.keeper.id()) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            let _ = self.keeper.kill();
            let _ = self.keeper.wait();
        }
    }
}

#[test]
fn keeper_rules_rollback_after_mainpid_keeps_the_old_daemon() {
    if std::env::var_os(WORKER_ENV).is_some() {
        return;
    }
    let p = Played::start("krules-a");
    let d = p.pid("pid ");
    p.line("ready d");
    let s = p.hand_over(d);
    // A second SIGHUP during the upgrade is ignored.
    kill(Pid::from_raw(p.keeper.id() as i32), Signal::SIGHUP).expect("SIGHUP");
    p.logged("SIGHUP during a live upgrade: ignored");
    // The successor dies after it was named: the old daemon may serve (rollback).
    kill(s, Signal::SIGKILL).expect("kill the successor");
    p.logged("right after taking over; the previous daemon");
    kill(d, Signal::SIGUSR2).expect("SIGUSR2");
    assert_eq!(p.line("named "), d.to_string());
    p.logged(&format!("pid {d} rolled the handoff back and serves on"));
    // SIGTERM reaches the old daemon; no restart happened.
    let log = p.stop();
    assert!(!log.contains("restarting it"), "{log}");
    assert!(
        log.contains(&format!("forwarding SIGTERM to the daemon, pid {d}")),
        "{log}"
    );
}

#[test]
fn keeper_rules_a_crash_on_either_side_restarts_once_neither_runs() {
    if std::env::var_os(WORKER_ENV).is_some() {
        return;
    }
    // Committed, then the successor died: the old daemon exits 0 (as after a
    // commit), and only then is the daemon restarted, with the stored state.
    let p = Played::start("krules-b");
    let d = p.pid("pid ");
    p.line("ready d");
    let s = p.hand_over(d);
    kill(s, Signal::SIGKILL).expect("kill the successor");
    p.logged("right after taking over; the previous daemon");
    assert!(!p.log_text().contains("restarting it"));
    kill(d, Signal::SIGTERM).expect("the old daemon exits 0");
    let again = p.pid("pid ");
    assert_eq!(p.line("state "), "1", "restarted with the stored state");
    p.line("ready d");
    assert_ne!(again, d);
    p.stop();

    // The daemon dies before naming its successor: the successor gets no Commit;
    // when it exits (status 0 too), the daemon is restarted.
    let p = Played::start("krules-c");
    let d = p.pid("pid ");
    p.line("ready d");
    kill(Pid::from_raw(p.keeper.id() as i32), Signal::SIGHUP).expect("SIGHUP");
    let s = p.pid("pid ");
    kill(d, Signal::SIGKILL).expect("kill the daemon");
    p.logged("during a live upgrade, before handing over");
    assert!(!p.log_text().contains("restarting it"));
    kill(s, Signal::SIGTERM).expect("the successor exits 0");
    let again = p.pid("pid ");
    assert_eq!(p.line("state "), "1", "restarted with the stored state");
    assert_ne!(again, s);
    p.stop();

    // Handed over, the successor serves (READY=1): SIGTERM goes to it.
    let p = Played::start("krules-d");
    let d = p.pid("pid ");
    p.line("ready d");
    let s = p.hand_over(d);
    kill(d, Signal::SIGTERM).expect("the old daemon exits after its commit");
    p.logged(&format!(
        "the previous daemon, pid {d}, ended after handing over"
    ));
    kill(s, Signal::SIGUSR1).expect("the successor serves");
    p.line("serving");
    p.logged(&format!("daemon pid {s} is ready"));
    let log = p.stop();
    assert!(
        log.contains(&format!("forwarding SIGTERM to the daemon, pid {s}")),
        "{log}"
    );
}
