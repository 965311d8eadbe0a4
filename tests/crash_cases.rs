//! Crash recovery's lesser cases on a real mount (`fuse-live-keeper -- memfs`):
//! what the kernel queues for the daemon while none runs.
//!
//! The daemon is stopped (SIGSTOP: nothing reads `/dev/fuse`, as between a crash
//! and the restart), callers block in requests, the kernel forgets inodes, the
//! callers are interrupted; then the stopped daemon is SIGKILLed. The restarted
//! daemon must answer the callers, must apply the FORGETs that waited (the next
//! recovery holds far fewer nodeids, and the session counted them), and lookups and
//! handles must stay valid through two more recoveries.
//!
//! The INTERRUPTs: a request interrupted before any daemon read it is flagged, and
//! the kernel queues its INTERRUPT when a daemon reads the request; if the reply
//! comes before a worker reads that INTERRUPT, the kernel withdraws it. memfs
//! answers at once, so how many INTERRUPTs the restarted daemon gets (0 to
//! `CALLERS`) is a race: printed, not asserted. What is asserted is that every
//! interrupted caller is answered (its data, or `EINTR`).
//!
//! The callers are this test binary run again (`cases_caller`, which does nothing
//! unless `FUSE_LIVE_CASES_CALLER` is set).
mod common;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use nix::sys::signal::{
    kill, sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::unistd::Pid;

/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);
const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");
const CALLER_ENV: &str = "FUSE_LIVE_CASES_CALLER";
/// Files looked up before the daemon stops, forgotten while it is stopped.
const FILES: usize = 200;
/// Callers blocked while the daemon is stopped.
const CALLERS: usize = 4;
/// memfs's worker threads (`--threads`).
const DAEMON_THREADS: usize = 2;

fn contents(i: usize) -> Vec<u8> {
    common::pattern(i as u64 + 1, 100 + i * 37)
}

/// SIGUSR1 in a caller: nothing, so that the signal interrupts without killing.
extern "C" fn on_usr1(_: std::ffi::c_int) {}

/// A caller: SIGUSR1 handled (so it interrupts, not kills), says `go`, reads the
/// file and prints `ok LEN` or `err ERRNO`.
#[test]
fn cases_caller() {
    let Ok(path) = std::env::var(CALLER_ENV) else {
        return;
    };
    let act = SigAction::new(
        SigHandler::Handler(on_usr1),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGUSR1, &act) }.expect("sigaction");
    // The process started with SIGUSR1 blocked (every thread of the harness):
    // only this thread, the one that blocks in the request, takes it.
    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    usr1.thread_unblock().expect("unblock SIGUSR1");
    println!("\ngo");
    let _ = std::io::stdout().flush();
    match std::fs::read(&path) {
        Ok(b) => println!("\nok {}", b.len()),
        Err(e) => println!("\nerr {}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn spawn_caller(path: &Path) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "cases_caller",
        "--exact",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CALLER_ENV, path)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    // SAFETY: only prctl(2) and sigprocmask(2) in the forked child, both
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            let mut usr1 = SigSet::empty();
            usr1.add(Signal::SIGUSR1);
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&usr1), None).map_err(std::io::Error::from)
        });
    }
    cmd.spawn().expect("spawn a caller")
}

/// The kernel stacks of every thread of `pid`.
fn stacks(pid: i32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("pid {pid}: gone\n");
    };
    tasks
        .filter_map(Result::ok)
        .map(|t| {
            let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
            format!("task {}:\n{stack}", t.file_name().to_string_lossy())
        })
        .collect()
}

/// True if a thread of `pid` waits in a FUSE request.
fn in_fuse_request(pid: i32) -> bool {
    stacks(pid).contains("fuse_")
}

/// Makes the kernel drop unused dentries and inodes (twice: a recently used one
/// gets a second chance), each FUSE inode dropped queueing a FORGET.
fn drop_caches() {
    for _ in 0..2 {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::write("/proc/sys/vm/drop_caches", "2"));
        });
        rx.recv_timeout(PATIENCE)
            .expect("drop_caches returns")
            .expect("drop_caches");
    }
}

/// True if daemon `pid` has handled everything the kernel queued: both its
/// workers sleep in `read(2)` on the device (a worker goes to sleep there only
/// when nothing is queued, and is woken as soon as something is).
fn idle(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let asleep_reading = tasks
        .filter_map(Result::ok)
        .filter(|t| {
            let state = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the command name in parentheses.
            let sleeping = state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('S'));
            let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
            sleeping && stack.contains("fuse_dev_do_read")
        })
        .count();
    asleep_reading >= DAEMON_THREADS
}

/// Waits until `cond` holds (a guard against hangs, not a timing assertion).
fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// On drop unless finished: aborts the connection, kills callers, keeper and
/// daemon (the daemon may be stopped), detaches the mount.
struct Cleanup {
    keeper: Option<Child>,
    callers: Vec<Child>,
    mnt: PathBuf,
    conn: Option<u64>,
    dir: PathBuf,
    finished: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(c) = self.conn {
                let _ = fusectl::abort(c);
            }
            for c in &mut self.callers {
                let _ = c.kill();
                let _ = c.wait();
            }
            if let Some(mut k) = self.keeper.take() {
                let daemons = common::children(k.id());
                let _ = k.kill();
                for d in daemons {
                    let _ = kill(Pid::from_raw(d), Signal::SIGKILL);
                }
                let _ = k.wait();
            }
            if common::is_fuse_mounted(&self.mnt) {
                let _ = fusectl::tear_down(&self.mnt, self.conn);
            }
        }
        if !common::is_fuse_mounted(&self.mnt) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The keeper's log and its daemons.
struct Keeper {
    pid: u32,
    log: PathBuf,
}

impl Keeper {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon once it is not `old` and has said READY=1.
    fn ready_daemon(&self, old: Option<i32>, what: &str) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let [pid] = common::children(self.pid)[..] {
                if Some(pid) != old && self.log().contains(&format!("daemon pid {pid} is ready")) {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no ready daemon {what}; keeper log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// What the `n`th recovery (from 1) logged.
    fn recovery(&self, n: usize) -> Recovered {
        let log = self.log();
        let line = log
            .lines()
            .filter(|l| l.contains("recovering: "))
            .nth(n - 1)
            .unwrap_or_else(|| panic!("no recovery {n} in the log:\n{log}"));
        let before = |word: &str| {
            line.split(", ")
                .find_map(|f| f.strip_suffix(word))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {word:?} in {line:?}"))
        };
        Recovered {
            nodes: before(" nodeids"),
            handles: before(" open handles"),
            interrupts: line
                .split(", ")
                .find_map(|f| f.strip_suffix(" FORGET entries so far"))
                .and_then(|f| f.split(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no INTERRUPTs in {line:?}")),
            forgets: line
                .split(" and ")
                .last()
                .and_then(|f| f.split(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no FORGETs in {line:?}")),
        }
    }
}

/// The session a recovery rebuilt, as memfs logs it.
struct Recovered {
    nodes: u64,
    handles: u64,
    /// The session's counters: INTERRUPTs received, FORGET entries processed.
    interrupts: u64,
    forgets: u64,
}

#[test]
fn interrupts_and_forgets_queued_while_no_daemon_runs() {
    let name = "interrupts_and_forgets_queued_while_no_daemon_runs";
    if std::env::var_os(CALLER_ENV).is_some() || !common::can_mount(name) {
        return;
    }
    let dir = common::temp_dir("crash-cases");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let log = dir.join("keeper.log");
    let mut cmd = Command::new(KEEPER);
    cmd.args(["--restart-limit", "10", "--restart-window", "1", "--"])
        .arg(common::example_binary("memfs"))
        .arg(&mnt)
        .args(["--threads", &DAEMON_THREADS.to_string()])
        .env(
            "RUST_LOG",
            std::env::var("CRASH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).expect("log"));
    // SAFETY: only prctl(2) in the forked child, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(600)).expect("watchdog");
    let mut child = cmd.spawn().expect("spawn fuse-live-keeper");
    let out = child.stdout.take().expect("stdout");
    let keeper = Keeper {
        pid: child.id(),
        log,
    };
    let mut guard = Cleanup {
        keeper: Some(child),
        callers: Vec::new(),
        mnt: mnt.clone(),
        conn: None,
        dir: dir.clone(),
        finished: false,
    };
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let first = lines
        .recv_timeout(PATIENCE)
        .expect("ready at the first start");
    assert_eq!(first, format!("ready {}", mnt.display()));
    let d1 = keeper.ready_daemon(None, "at the first start");
    let conn = fusectl::connection_id(&mnt).expect("connection");
    guard.conn = Some(conn);

    // Files looked up (each one nodeid), one held open across everything.
    let many = mnt.join("many");
    std::fs::create_dir(&many).expect("mkdir many");
    for i in 0..FILES {
        std::fs::write(many.join(format!("m{i}")), contents(i)).expect("write");
    }
    // The callers' files, each alone under its own name in the root (callers
    // looking up one name would wait for each other, not in a request).
    let targets: Vec<PathBuf> = (0..CALLERS).map(|i| mnt.join(format!("c{i}"))).collect();
    for (i, t) in targets.iter().enumerate() {
        std::fs::write(t, contents(i)).expect("write a caller's file");
    }
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(mnt.join("held"))
        .expect("create held");
    held.write_all_at(b"before", 0).expect("pwrite held");
    // Nothing in flight (a RELEASE still queued would pin its inode).
    wait_for(
        || fusectl::waiting(conn).ok() == Some(0),
        "no request in flight",
    );

    // No daemon reads from here on.
    kill(Pid::from_raw(d1), Signal::SIGSTOP).expect("SIGSTOP memfs");
    // The kernel forgets every unused inode: FORGETs queue for nobody.
    drop_caches();
    // Callers block in requests.
    let before = fusectl::waiting(conn).expect("waiting");
    for t in &targets {
        guard.callers.push(spawn_caller(t));
    }
    for c in &mut guard.callers {
        let mut line = String::new();
        let mut r = BufReader::new(c.stdout.as_mut().expect("stdout"));
        while line.trim() != "go" {
            line.clear();
            assert!(
                r.read_line(&mut line).expect("caller output") > 0,
                "caller ended"
            );
        }
    }
    let pids: Vec<i32> = guard.callers.iter().map(|c| c.id() as i32).collect();
    let deadline = Instant::now() + PATIENCE;
    while !(fusectl::waiting(conn).unwrap_or(0) >= before + CALLERS as u64
        && pids.iter().all(|&p| in_fuse_request(p)))
    {
        if Instant::now() > deadline {
            let mut msg = format!(
                "the callers never all blocked in a request (waiting {:?}, before {before})\n",
                fusectl::waiting(conn)
            );
            for c in &mut guard.callers {
                msg.push_str(&format!("caller {}: {:?}\n", c.id(), c.try_wait()));
                msg.push_str(&stacks(c.id() as i32));
            }
            panic!("{msg}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Interrupted while nobody reads: the kernel flags their requests and sends
    // the INTERRUPTs once a daemon has read them.
    for c in &guard.callers {
        kill(Pid::from_raw(c.id() as i32), Signal::SIGUSR1).expect("SIGUSR1 a caller");
    }
    kill(Pid::from_raw(d1), Signal::SIGKILL).expect("SIGKILL the stopped memfs");
    let d2 = keeper.ready_daemon(Some(d1), "after the kill of the stopped daemon");

    // Every caller was answered: its read, or EINTR if the daemon honoured the
    // interrupt.
    let mut answered = 0;
    let mut interrupted = 0;
    for (i, c) in guard.callers.iter_mut().enumerate() {
        let mut out = String::new();
        c.stdout
            .as_mut()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("caller output");
        let st = c.wait().expect("wait caller");
        assert!(st.success(), "caller {i}: {st} {out}");
        let want = format!("ok {}", contents(i).len());
        if out.lines().any(|l| l == want) {
            answered += 1;
        } else if out.lines().any(|l| l == "err 4") {
            interrupted += 1;
        } else {
            panic!("caller {i}: {out}");
        }
    }
    guard.callers.clear();
    eprintln!("{name}: {answered} callers answered, {interrupted} got EINTR");
    let r1 = keeper.recovery(1);
    assert!(r1.handles >= 1, "the held file's handle recovered");
    assert!(
        r1.nodes as usize > FILES,
        "the dead daemon's journal had every looked-up file: {} nodeids",
        r1.nodes
    );

    // The held file works. Then, once the daemon has handled everything queued
    // (both workers asleep reading the device) and with no request after, the
    // second recovery starts from what it did with the FORGETs: they are in the
    // journal by themselves.
    held.write_all_at(b"after1", 0)
        .expect("pwrite held after recovery");
    wait_for(|| idle(d2), "the first recovered daemon idle");
    kill(Pid::from_raw(d2), Signal::SIGKILL).expect("SIGKILL memfs");
    let d3 = keeper.ready_daemon(Some(d2), "after the second kill");
    let r2 = keeper.recovery(2);
    eprintln!(
        "{name}: nodeids {} at the first recovery, {} at the second; the daemon between \
         them got {} INTERRUPTs and {} FORGET entries",
        r1.nodes,
        r2.nodes,
        r2.interrupts - r1.interrupts,
        r2.forgets - r1.forgets
    );
    assert!(
        (r2.nodes as usize) + FILES <= r1.nodes as usize
            && (r2.forgets - r1.forgets) as usize >= FILES,
        "the FORGETs queued while no daemon ran were applied and journaled"
    );
    assert!(r2.handles >= 1);

    // Lookups after the FORGETs are counted right: every file is found and reads
    // back. Then FORGETs while the daemon runs and nothing follows them: the next
    // recovery must not keep the lookups the kernel dropped.
    for i in 0..FILES {
        assert_eq!(
            std::fs::read(many.join(format!("m{i}"))).expect("read after recovery"),
            contents(i)
        );
    }
    wait_for(
        || fusectl::waiting(conn).ok() == Some(0),
        "no request in flight",
    );
    drop_caches();
    wait_for(|| idle(d3), "the second recovered daemon idle");
    kill(Pid::from_raw(d3), Signal::SIGKILL).expect("SIGKILL memfs");
    let d4 = keeper.ready_daemon(Some(d3), "after the third kill");
    let r3 = keeper.recovery(3);
    eprintln!(
        "{name}: {} nodeids after {FILES} lookups and drop_caches with nothing after \
         ({} FORGET entries)",
        r3.nodes,
        r3.forgets - r2.forgets
    );
    assert!(
        (r3.nodes as usize) < FILES / 2,
        "FORGETs with no request after them were journaled: {} nodeids",
        r3.nodes
    );

    // Looked up again, one unlinked: a fourth recovery has them all.
    for i in 0..FILES {
        assert_eq!(
            std::fs::read(many.join(format!("m{i}"))).expect("read after recovery"),
            contents(i)
        );
    }
    std::fs::remove_file(many.join("m0")).expect("unlink m0");
    let mut got = [0u8; 6];
    held.read_exact_at(&mut got, 0).expect("pread held");
    assert_eq!(&got, b"after1");
    kill(Pid::from_raw(d4), Signal::SIGKILL).expect("SIGKILL memfs");
    keeper.ready_daemon(Some(d4), "after the fourth kill");
    let r4 = keeper.recovery(4);
    assert!(r4.nodes as usize >= FILES - 1, "{} nodeids", r4.nodes);
    assert!(r4.handles >= 1);
    for i in 1..FILES {
        assert_eq!(
            std::fs::read(many.join(format!("m{i}"))).expect("read after recovery"),
            contents(i)
        );
    }
    assert!(!many.join("m0").exists());
    held.write_all_at(b"after4", 0).expect("pwrite held");
    held.read_exact_at(&mut got, 0).expect("pread held");
    assert_eq!(&got, b"after4");
    let text = keeper.log();
    assert!(
        !text.contains("recovery dropped"),
        "a handle lost its nodeid:\n{text}"
    );
    drop(held);

    kill(Pid::from_raw(keeper.pid as i32), Signal::SIGTERM).expect("SIGTERM the keeper");
    let mut k = guard.keeper.take().expect("keeper");
    let st = common::wait_exit(&mut k, PATIENCE).expect("the keeper exits");
    assert_eq!(st.code(), Some(0), "keeper log:\n{}", keeper.log());
    assert!(!common::is_fuse_mounted(&mnt));
    assert!(!watchdog.disarm(), "the watchdog fired");
    guard.finished = true;
}
