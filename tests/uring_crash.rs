//! Crash recovery of a mount served through fuse-over-io_uring, under
//! `fuse-live-keeper`: memfs `--transport io-uring` keeps its ring entries in a
//! memfd in the fd store; after `kill -9` its successor maps them back at the same
//! address, answers the requests they held with their original uniques (adopting
//! the kernel's entries), registers fresh entries, drains the requests that waited
//! on every CPU's queue while no daemon ran, then says `ready`.
//!
//! Here requests are certainly in flight at the kill: a MKDIR from a thread pinned
//! to each CPU is held in the filesystem (memfs's `hold-mkdirs` test hook), so each
//! queue's thread is inside a request when the daemon dies; and requests are issued
//! from each CPU while no daemon runs. Every call must succeed, the mount and its
//! connection stay the same, and the kernel logs no warning up to the unmount.
//! (The kill -9 suite over io_uring is tests/crash.rs,
//! `memfs_survives_repeated_sigkill_over_io_uring`.)
//!
//! And a serving thread that fails (an io_uring queue's, or a `/dev/fuse`
//! worker's, by an injected error or panic) ends the daemon with its error,
//! without unmounting; the keeper's restart answers the request it held.
//! The `/dev/fuse` cases are here for the harness (they need no io_uring).
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use fuse_session::dev::uring;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");
/// memfs's io_uring queue depth (`UringOptions::default`).
const DEPTH: usize = uring::DEFAULT_DEPTH;
/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// Lines of the kernel log that report a warning or a bug.
fn kernel_warnings() -> Vec<String> {
    let out = Command::new("dmesg").output().expect("dmesg");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("WARNING:") || l.contains("cut here") || l.contains("BUG:"))
        .map(str::to_owned)
        .collect()
}

/// CPUs this process may run on.
fn cpus() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..uring::queue_count())
        .filter(|&c| uring::pin_to_cpu(c).is_ok())
        .take(n)
        .collect()
}

/// `f` on a thread pinned to `cpu`.
fn pinned<T: Send + 'static>(
    cpu: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        uring::pin_to_cpu(cpu).expect("pin to the CPU");
        f()
    })
}

struct Kept {
    keeper: Option<Child>,
    lines: mpsc::Receiver<String>,
    mnt: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    watchdog: Option<Watchdog>,
}

impl Kept {
    fn start(tag: &str, hook: &str, restart_delay_ms: u32) -> Kept {
        Kept::start_with(tag, hook, restart_delay_ms, |_, _| {})
    }

    /// As `start`, `more` adding to memfs's command (its arguments are in place,
    /// the keeper's too) given the test's directory.
    fn start_with(
        tag: &str,
        hook: &str,
        restart_delay_ms: u32,
        more: impl FnOnce(&mut Command, &Path),
    ) -> Kept {
        let dir = common::temp_dir(tag);
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let log = dir.join("keeper.log");
        let marker = dir.join("marker");
        let mut cmd = Command::new(KEEPER);
        cmd.args(["--restart-delay", &restart_delay_ms.to_string()])
            .args(["--restart-limit", "1000", "--"])
            .arg(common::example_binary("memfs"))
            .arg(&mnt)
            .args(["--threads", "2", "--transport", "io-uring"])
            .env("RUST_LOG", "info")
            .env("MEMFS_CRASH_TEST", format!("{hook}:{}", marker.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("log"));
        more(&mut cmd, &dir);
        // SAFETY: only prctl(2) in the forked child, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(300)).expect("watchdog");
        let mut keeper = cmd.spawn().expect("spawn fuse-live-keeper");
        let out = keeper.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let k = Kept {
            keeper: Some(keeper),
            lines,
            mnt,
            dir,
            log,
            watchdog: Some(watchdog),
        };
        k.next_ready("at the first start");
        k
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn next_ready(&self, what: &str) {
        let ready = format!("ready {}", self.mnt.display());
        match self.lines.recv_timeout(PATIENCE) {
            Ok(l) => assert_eq!(l, ready, "{what}"),
            Err(e) => panic!("no ready line {what} ({e}); log:\n{}", self.log_text()),
        }
    }

    fn daemon(&self) -> i32 {
        let kids = common::children(self.keeper.as_ref().expect("keeper").id());
        assert_eq!(kids.len(), 1, "one daemon: {kids:?}");
        kids[0]
    }

    /// SIGTERM: memfs unmounts, the keeper exits 0.
    fn stop(mut self) {
        let mut c = self.keeper.take().expect("keeper");
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let st = common::wait_exit(&mut c, PATIENCE).expect("the keeper exits");
        assert_eq!(st.code(), Some(0), "log:\n{}", self.log_text());
        assert!(!common::is_fuse_mounted(&self.mnt), "unmounted");
        let fired = self.watchdog.take().expect("watchdog").disarm();
        assert!(!fired, "the watchdog fired");
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(mut c) = self.keeper.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            if common::wait_exit(&mut c, Duration::from_secs(15)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if common::is_fuse_mounted(&self.mnt) {
            let _ = fusectl::tear_down(&self.mnt, None);
        }
        if !common::is_fuse_mounted(&self.mnt) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One MKDIR `d{CPU}/held-{tag}{CPU}` from each CPU, held in the filesystem
/// (memfs `hold-mkdirs:held-`): returns once each has reached it, so that every
/// queue's thread is inside one. `what` prefixes the wait's message.
fn hold_mkdirs(
    k: &Kept,
    cpus: &[usize],
    tag: &str,
    what: &str,
) -> Vec<std::thread::JoinHandle<std::io::Result<()>>> {
    let held = cpus
        .iter()
        .map(|&c| {
            let p = k.mnt.join(format!("d{c}/held-{tag}{c}"));
            pinned(c, move || std::fs::create_dir(&p))
        })
        .collect();
    for &c in cpus {
        wait_for(
            &k.dir.join(format!("marker.held-{tag}{c}")),
            &format!("{what}the MKDIR from CPU {c} reaching the filesystem"),
            &k.log,
        );
    }
    held
}

fn wait_for(path: &Path, what: &str, log: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < PATIENCE,
            "{what} never happened; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn requests_held_on_every_cpu_and_queued_ones_are_answered_after_sigkill() {
    const TEST: &str = "requests_held_on_every_cpu_and_queued_ones_are_answered_after_sigkill";
    if !common::can_use_uring(TEST) {
        return;
    }
    let warnings_before = kernel_warnings();
    let cpus = cpus();
    // The keeper waits a second before restarting: the requests issued after the
    // kill wait in the kernel's queues, with no daemon.
    let k = Kept::start("uring-crash-held", "hold-mkdirs:held-", 1000);
    let conn = fusectl::connection_id(&k.mnt).expect("fusectl connection");
    std::fs::write(k.mnt.join("before"), b"written before the kill").expect("write");

    // One MKDIR per CPU, held in the filesystem: each queue's thread is in it.
    // Each in a directory of its own (a MKDIR holds its parent's lock).
    for &c in &cpus {
        std::fs::create_dir(k.mnt.join(format!("d{c}"))).expect("mkdir");
    }
    let held = hold_mkdirs(&k, &cpus, "", "");
    let daemon = k.daemon();
    kill(Pid::from_raw(daemon), Signal::SIGKILL).expect("SIGKILL memfs");
    let start = Instant::now();
    while !gone(daemon) {
        assert!(start.elapsed() < PATIENCE, "memfs did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    // After its death (the kernel cancels the dead rings' available entries when
    // their last reference goes), requests from each CPU wait in its queue.
    std::thread::sleep(Duration::from_millis(200));
    let queued: Vec<_> = cpus
        .iter()
        .map(|&c| {
            let dir = k.mnt.clone();
            pinned(c, move || {
                let p = dir.join(format!("queued-{c}"));
                std::fs::write(&p, format!("queued on CPU {c}"))?;
                std::fs::read_to_string(&p)
            })
        })
        .collect();
    k.next_ready("after the kill");
    for (c, h) in cpus.iter().zip(held) {
        h.join()
            .expect("held thread")
            .unwrap_or_else(|e| panic!("the MKDIR held on CPU {c}: {e}; log:\n{}", k.log_text()));
        assert!(
            k.mnt.join(format!("d{c}/held-{c}")).is_dir(),
            "held-{c} made"
        );
    }
    for (c, h) in cpus.iter().zip(queued) {
        let text = h.join().expect("queued thread").unwrap_or_else(|e| {
            panic!(
                "the requests queued on CPU {c}: {e}; log:\n{}",
                k.log_text()
            )
        });
        assert_eq!(text, format!("queued on CPU {c}"));
    }
    assert_eq!(
        std::fs::read(k.mnt.join("before")).expect("read"),
        b"written before the kill"
    );
    assert_eq!(
        fusectl::connection_id(&k.mnt).ok(),
        Some(conn),
        "same connection"
    );
    let log = k.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("requests in the io_uring entries at the crash"))
        .unwrap_or_else(|| panic!("no ring recovery line; log:\n{log}"));
    let answered = line
        .split("requests: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or_else(|| panic!("cannot read {line}"));
    assert!(
        answered >= cpus.len(),
        "every held MKDIR was answered from its entry: {line}"
    );
    // A third process serves the same entries after a second kill.
    kill(Pid::from_raw(k.daemon()), Signal::SIGKILL).expect("SIGKILL memfs again");
    k.next_ready("after the second kill");
    for &c in &cpus {
        let dir = k.mnt.clone();
        let r = pinned(c, move || {
            std::fs::read_to_string(dir.join(format!("queued-{c}")))
        })
        .join()
        .expect("reader");
        assert_eq!(r.expect("read"), format!("queued on CPU {c}"));
    }
    k.stop();
    let warnings_after = kernel_warnings();
    assert_eq!(
        warnings_after.len(),
        warnings_before.len(),
        "no kernel warning: {:?}",
        &warnings_after[warnings_before.len().min(warnings_after.len())..]
    );
}

/// Live upgrades under the keeper over io_uring with requests sent during each
/// handoff's pause, 1 to 3 per CPU (held in the old process's ring entries,
/// adopted and answered by the new process, or queued in the kernel beyond
/// them), each followed by a SIGKILL while every queue's thread is
/// inside a held MKDIR (answered by the next process from the same ring area),
/// then three such SIGKILLs in a row, then more upgrades: more handoffs and recoveries than a queue has slots, every
/// call answered, the same connection, no kernel warning.
#[test]
fn handoffs_with_requests_held_in_the_pause_then_sigkills_under_the_keeper() {
    const TEST: &str = "handoffs_with_requests_held_in_the_pause_then_sigkills_under_the_keeper";
    /// Handoff, then SIGKILL, this many times; then SIGKILLs in a row; then
    /// twice as many handoffs again.
    const ROUNDS: usize = 5;
    const KILLS_IN_A_ROW: usize = 3;
    /// Most writes sent from one CPU during a pause: more than a queue's depth
    /// (those beyond the paused process's entries wait in the kernel's queue).
    const WRITERS: usize = 3;
    let writers = |r: usize| 1 + r % WRITERS;
    if !common::can_use_uring(TEST) {
        return;
    }
    let warnings_before = kernel_warnings();
    let cpus = cpus();
    let k = Kept::start_with(
        "uring-keeper-handoff",
        "hold-mkdirs:held-",
        100,
        |cmd, dir| {
            cmd.arg("--upgrade-socket")
                .arg(dir.join("upgrade.sock"))
                .env(
                    "MEMFS_HANDOFF_TEST",
                    format!("hold-before-commit={}", dir.display()),
                );
        },
    );
    let keeper = Pid::from_raw(k.keeper.as_ref().expect("keeper").id() as i32);
    let conn = fusectl::connection_id(&k.mnt).expect("fusectl connection");
    for &c in &cpus {
        std::fs::create_dir(k.mnt.join(format!("d{c}"))).expect("mkdir");
        for w in 0..WRITERS {
            std::fs::create_dir(k.mnt.join(format!("d{c}w{w}"))).expect("mkdir");
        }
    }
    // Where writer `w` of CPU `c` writes in round `r`.
    let file = |c: usize, w: usize, r: &str| k.mnt.join(format!("d{c}w{w}/{r}"));
    let (paused, go) = (k.dir.join("paused"), k.dir.join("go"));
    // One live upgrade with a write from each CPU sent while the old process is
    // paused (each CPU's in a directory of its own: a CREATE holds its parent's
    // lock). Returns the requests the new process adopted.
    let upgrade = |round: String, writers: usize| -> usize {
        let _ = std::fs::remove_file(&paused);
        let _ = std::fs::remove_file(&go);
        let before = one_daemon(&k);
        kill(keeper, Signal::SIGHUP).expect("SIGHUP");
        wait_for(&paused, &format!("{round}: the pause"), &k.log);
        let sent: Vec<_> = cpus
            .iter()
            .flat_map(|&c| (0..writers).map(move |w| (c, w)))
            .map(|(c, w)| {
                let p = file(c, w, &round);
                (
                    (c, w),
                    pinned(c, move || {
                        std::fs::write(&p, p.as_os_str().as_encoded_bytes())?;
                        std::fs::read(&p)
                    }),
                )
            })
            .collect();
        // Until the kernel has a request of each CPU in flight (in an entry of
        // the paused process: the test checks below that they were adopted).
        let waiting = format!("/sys/fs/fuse/connections/{conn}/waiting");
        let start = Instant::now();
        while std::fs::read_to_string(&waiting)
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .unwrap_or(0)
            < cpus.len() * writers
        {
            assert!(
                start.elapsed() < PATIENCE,
                "{round}: the requests never went out"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        File::create(&go).expect("go");
        k.next_ready(&format!("{round}: after the upgrade"));
        for ((c, w), h) in sent {
            let p = file(c, w, &round);
            let got = h.join().expect("writer").unwrap_or_else(|e| {
                panic!(
                    "{round}: write {w} from CPU {c}: {e}; log:\n{}",
                    k.log_text()
                )
            });
            assert_eq!(got, p.as_os_str().as_encoded_bytes(), "{round}");
        }
        let start = Instant::now();
        while !gone(before) {
            assert!(start.elapsed() < PATIENCE, "{round}: the old daemon exits");
            std::thread::sleep(Duration::from_millis(5));
        }
        adopted(&k.log_text()).last().copied().unwrap_or(0)
    };
    // A SIGKILL while each CPU's queue thread is inside a held MKDIR.
    let sigkill = |round: String| {
        let held = hold_mkdirs(&k, &cpus, &format!("{round}-"), &format!("{round}: "));
        kill(Pid::from_raw(one_daemon(&k)), Signal::SIGKILL).expect("SIGKILL memfs");
        k.next_ready(&format!("{round}: after the kill"));
        for (&c, h) in cpus.iter().zip(held) {
            h.join().expect("held thread").unwrap_or_else(|e| {
                panic!(
                    "{round}: the MKDIR held on CPU {c}: {e}; log:\n{}",
                    k.log_text()
                )
            });
            assert!(k.mnt.join(format!("d{c}/held-{round}-{c}")).is_dir());
        }
    };
    let mut adoptions = Vec::new();
    for r in 0..ROUNDS {
        adoptions.push(upgrade(format!("u{r}"), writers(r)));
        sigkill(format!("k{r}"));
    }
    // SIGKILLs in a row, each recovered from the entries the previous recovery
    // registered.
    for r in 0..KILLS_IN_A_ROW {
        sigkill(format!("kk{r}"));
    }
    for r in ROUNDS..3 * ROUNDS {
        adoptions.push(upgrade(format!("u{r}"), writers(r)));
    }
    let log = k.log_text();
    // Every write sent during a pause was held by the old process's entries
    // (one per CPU at least: RELEASEs may come too) and adopted.
    assert!(
        adoptions.iter().all(|&n| n >= cpus.len()),
        "requests adopted per handoff: {adoptions:?}; log:\n{log}"
    );
    // Every held MKDIR was answered from its entry by the next process.
    let recovered: Vec<usize> = log
        .lines()
        .filter(|l| l.contains("requests in the io_uring entries at the crash"))
        .map(|l| requests_field(l).unwrap_or_else(|| panic!("cannot read {l}")))
        .collect();
    assert_eq!(
        recovered.len(),
        ROUNDS + KILLS_IN_A_ROW,
        "one ring recovery per kill: {log}"
    );
    assert!(
        recovered.iter().all(|&n| n >= cpus.len()),
        "requests answered from the entries per kill: {recovered:?}"
    );
    // The slots each process served on, per queue (at its start, and after
    // adopting): its depth plus what it adopted, never growing from one process
    // to the next (a crash gives the extra ones back).
    let owned: Vec<Vec<usize>> = log
        .lines()
        .filter_map(|l| l.split("this process's").nth(1))
        .filter_map(|r| {
            let list = r.split('[').nth(1)?.split(']').next()?;
            list.split(',').map(|n| n.trim().parse().ok()).collect()
        })
        .collect();
    let most = owned.iter().flatten().copied().max().unwrap_or(0);
    assert!(
        owned.len() > 3 * ROUNDS && most <= 2 * DEPTH,
        "slots per queue served on: {owned:?}; log:\n{log}"
    );
    if std::env::var_os("URING_TEST_LOG").is_some() {
        eprintln!("{log}");
    }
    // Everything written is still there, on the same connection.
    for r in 0..3 * ROUNDS {
        for (c, w) in cpus
            .iter()
            .flat_map(|&c| (0..writers(r)).map(move |w| (c, w)))
        {
            let p = file(c, w, &format!("u{r}"));
            assert_eq!(
                std::fs::read(&p).expect("read"),
                p.as_os_str().as_encoded_bytes()
            );
        }
    }
    assert_eq!(
        fusectl::connection_id(&k.mnt).ok(),
        Some(conn),
        "same connection"
    );
    eprintln!(
        "{} handoffs (requests adopted: {adoptions:?}), {} SIGKILLs (requests answered \
         from the entries: {recovered:?}), {} CPUs, 0 failed; slots per queue served on, \
         process after process: {owned:?}",
        3 * ROUNDS,
        ROUNDS + KILLS_IN_A_ROW,
        cpus.len()
    );
    k.stop();
    let warnings_after = kernel_warnings();
    assert_eq!(
        warnings_after.len(),
        warnings_before.len(),
        "no kernel warning: {:?}",
        &warnings_after[warnings_before.len().min(warnings_after.len())..]
    );
}

/// The one daemon, once the keeper has exactly one child.
fn one_daemon(k: &Kept) -> i32 {
    let start = Instant::now();
    loop {
        let kids = common::children(k.keeper.as_ref().expect("keeper").id());
        if let [one] = kids[..] {
            return one;
        }
        assert!(start.elapsed() < PATIENCE, "children {kids:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `requests: N` of a `RecoveredRing` log line.
fn requests_field(line: &str) -> Option<usize> {
    line.split("requests: ")
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The requests each io_uring handoff adopted, in order (the new side's log).
fn adopted(log: &str) -> Vec<usize> {
    log.lines()
        .filter(|l| l.contains("adopted the old process's entries"))
        .filter_map(requests_field)
        .collect()
}

/// A serving thread that fails (the fault `FAULT`, armed by a file at the
/// instant chosen here, makes the thread that takes the next request fail with an
/// error or panic, as `enable_uring` switched off under a re-registering queue
/// did with `EOPNOTSUPP`) ends the daemon with a clear error and a non-zero exit,
/// without unmounting; the keeper restarts it on the same connection, and the
/// request the failed thread held (from a thread pinned to the last usable CPU)
/// is answered by the restarted daemon, as are later requests from every CPU.
/// Before the change, a failed queue thread left its CPU's requests waiting
/// forever while the daemon ran on. `thread` is the failed thread's name prefix
/// (`fuse-uring-`, `fuse-worker-`: whichever takes the next request).
fn a_failed_serving_thread_ends_the_daemon_and_the_keeper_recovers(
    tag: &str,
    transport: &str,
    fault: &str,
    thread: &str,
) {
    let warnings_before = kernel_warnings();
    let cpus = cpus();
    let cpu = *cpus.last().expect("a usable CPU");
    let injected = if fault.ends_with(":panic") {
        "failed: panicked: fuse-live fault: injected panic"
    } else {
        "failed: fuse-live fault: injected error"
    };
    // A restart delay: the test takes the arming file away before the restart.
    let k = Kept::start_with(tag, "hold-mkdir:never-held", 1000, |cmd, dir| {
        cmd.args(["--transport", transport])
            .env("FUSE_LIVE_FAULT", fault)
            .env("FUSE_LIVE_FAULT_ARM", dir.join("arm"));
    });
    let conn = fusectl::connection_id(&k.mnt).expect("fusectl connection");
    std::fs::write(k.mnt.join("before"), b"written before the failure").expect("write");
    std::fs::create_dir(k.mnt.join("d")).expect("mkdir");
    let daemon = k.daemon();
    let arm = k.dir.join("arm");
    std::fs::write(&arm, b"").expect("arm the fault");
    let held = {
        let p = k.mnt.join("d/made-across-the-failure");
        pinned(cpu, move || std::fs::create_dir(&p))
    };
    let start = Instant::now();
    while !gone(daemon) {
        assert!(
            start.elapsed() < PATIENCE,
            "the daemon did not end after its serving thread failed; log:\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::remove_file(&arm).expect("disarm the fault");
    k.next_ready("after the serving thread failed");
    held.join().expect("pinned thread").unwrap_or_else(|e| {
        panic!(
            "the call held by the failed thread: {e}; log:\n{}",
            k.log_text()
        )
    });
    assert!(k.mnt.join("d/made-across-the-failure").is_dir());
    for &c in &cpus {
        let dir = k.mnt.clone();
        let r = pinned(c, move || {
            let p = dir.join(format!("after-{c}"));
            std::fs::write(&p, format!("after on CPU {c}"))?;
            std::fs::read_to_string(&p)
        })
        .join()
        .expect("writer");
        assert_eq!(r.expect("write and read"), format!("after on CPU {c}"));
    }
    assert_eq!(
        std::fs::read(k.mnt.join("before")).expect("read"),
        b"written before the failure"
    );
    assert_eq!(
        fusectl::connection_id(&k.mnt).ok(),
        Some(conn),
        "same connection"
    );
    let log = k.log_text();
    assert!(
        log.contains(&format!("memfs: serving thread {thread}")) && log.contains(injected),
        "memfs ended with the failed thread's error; log:\n{log}"
    );
    assert!(
        log.contains("exited with status 1"),
        "the daemon exited non-zero; log:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("fuse-live fault: ") && l.contains(", pid "))
            .count(),
        1,
        "the fault fired once; log:\n{log}"
    );
    k.stop();
    let warnings_after = kernel_warnings();
    assert_eq!(
        warnings_after.len(),
        warnings_before.len(),
        "no kernel warning: {:?}",
        &warnings_after[warnings_before.len().min(warnings_after.len())..]
    );
}

#[test]
fn a_failed_io_uring_queue_ends_the_daemon_and_the_keeper_recovers_its_cpu() {
    const TEST: &str = "a_failed_io_uring_queue_ends_the_daemon_and_the_keeper_recovers_its_cpu";
    if !common::can_use_uring(TEST) {
        return;
    }
    a_failed_serving_thread_ends_the_daemon_and_the_keeper_recovers(
        "uring-queue-error",
        "io-uring",
        "uring-request:1:error",
        // The queue that takes the next request: the pinned caller's, unless
        // a background request (a RELEASE) reaches another queue first.
        "fuse-uring-",
    );
}

#[test]
fn a_panicking_io_uring_queue_ends_the_daemon_and_the_keeper_recovers_its_cpu() {
    const TEST: &str = "a_panicking_io_uring_queue_ends_the_daemon_and_the_keeper_recovers_its_cpu";
    if !common::can_use_uring(TEST) {
        return;
    }
    a_failed_serving_thread_ends_the_daemon_and_the_keeper_recovers(
        "uring-queue-panic",
        "io-uring",
        "uring-request:1:panic",
        "fuse-uring-",
    );
}

#[test]
fn a_panicking_dev_fuse_worker_ends_the_daemon_and_the_keeper_recovers() {
    const TEST: &str = "a_panicking_dev_fuse_worker_ends_the_daemon_and_the_keeper_recovers";
    if !common::can_mount(TEST) {
        return;
    }
    a_failed_serving_thread_ends_the_daemon_and_the_keeper_recovers(
        "dev-worker-panic",
        "dev-fuse",
        "dev-request:1:panic",
        "fuse-worker-",
    );
}

#[test]
fn a_failing_dev_fuse_worker_ends_the_daemon_and_the_keeper_recovers() {
    const TEST: &str = "a_failing_dev_fuse_worker_ends_the_daemon_and_the_keeper_recovers";
    if !common::can_mount(TEST) {
        return;
    }
    a_failed_serving_thread_ends_the_daemon_and_the_keeper_recovers(
        "dev-worker-error",
        "dev-fuse",
        "dev-request:1:error",
        "fuse-worker-",
    );
}

/// A `/dev/fuse` worker that fails on INIT (a fresh mount, no fd store): memfs
/// exits 1 with the failed thread's error, having unmounted (nobody could
/// recover the mount), and never says `ready`.
#[test]
fn a_worker_that_fails_on_init_ends_the_daemon_and_unmounts() {
    const TEST: &str = "a_worker_that_fails_on_init_ends_the_daemon_and_unmounts";
    if !common::can_mount(TEST) {
        return;
    }
    let dir = common::temp_dir("dev-worker-init-panic");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let log = dir.join("memfs.log");
    let out = dir.join("memfs.out");
    let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(120)).expect("watchdog");
    let mut child = Command::new(common::example_binary("memfs"))
        .arg(&mnt)
        .args(["--threads", "2", "--transport", "dev-fuse"])
        .env("FUSE_LIVE_FAULT", "dev-request:1:panic")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("out"))
        .stderr(File::create(&log).expect("log"))
        .spawn()
        .expect("spawn memfs");
    let status = common::wait_exit(&mut child, PATIENCE);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mounted = common::is_fuse_mounted(&mnt);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    if mounted {
        let _ = fusectl::tear_down(&mnt, None);
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "memfs exits 1; log:\n{text}"
    );
    assert!(
        text.contains("memfs: serving thread fuse-worker-")
            && text.contains("injected panic at dev-request (hit 1)"),
        "the error names the failed thread; log:\n{text}"
    );
    assert!(!mounted, "unmounted; log:\n{text}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap_or_default(),
        "",
        "no ready line"
    );
    assert!(!watchdog.disarm(), "the watchdog fired");
    let _ = std::fs::remove_dir_all(&dir);
}
