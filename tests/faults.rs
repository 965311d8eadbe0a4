//! Fault injection end to end: `fuse-live-keeper -- memfs MOUNTPOINT` on a real
//! mount with `FUSE_LIVE_FAULT=POINT:N-M` set for the daemon
//! (`fuse_session::fault`), so that every memfs the keeper starts aborts itself at
//! a journal boundary — after accepting a request, after the filesystem ran it,
//! after its reply was recorded, after it was sent, in the middle of a journal
//! record or header, at each step of a compaction, during recovery — while worker
//! processes run a verified workload (`fuse_live_testkit::workload`). Every
//! application call must succeed, every byte must read back, the mount and its
//! FUSE connection must stay the same ones, and SIGTERM to the keeper must unmount
//! with both exiting 0.
//!
//! The recovery points (`recover-read`, `recover-resume`) are reached only by a
//! recovering process, so the test SIGKILLs the daemon too there; each recovery
//! then aborts at the point or not (`1-2`: the hit is 1 or 2, and there is one).
//!
//! Quick tests (always on): each point until it fired `FUSE_LIVE_FAULT_CRASHES`
//! times (default 5). `every_point_many_times` (ignored: several minutes) runs
//! every point 20 times.
//!
//! The workers are this test binary run again (`fault_worker`, which does nothing
//! unless `FUSE_LIVE_FAULT_WORKER` is set).
mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);
const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");
const WORKER_ENV: &str = "FUSE_LIVE_FAULT_WORKER";
const WORKERS: u32 = 2;
/// memfs compacts its journal once the log holds this much: every few dozen files.
const COMPACT_AFTER: &str = "256K";
/// The line memfs prints on stderr just before aborting at a point.
const FAULT_LINE: &str = "fuse-live fault: aborting at ";

/// Each point, the hit range its daemons abort at, and whether the test must
/// SIGKILL the daemon to reach it (recovery points).
///
/// The ranges keep the first process alive until it stored its descriptors: it
/// serves INIT (a few request steps) and writes the journal's first header
/// before that, and a crash there cannot be recovered (docs/RECOVERY.md). They
/// also keep every process alive through its first few requests, among which is
/// its own poke of the mount at start (a crash while that is in flight hangs the
/// process: docs/RECOVERY.md, "Fault injection").
const POINTS: &[(&str, &str, bool)] = &[
    ("after-accept", "20-1500", false),
    ("after-call", "20-1500", false),
    ("after-record", "20-1500", false),
    ("after-reply", "20-1500", false),
    ("mid-record", "30-600", false),
    // One header at creation (the first process's hit 1, before it stored
    // anything), one per compaction (a resume's header is `resume-mid-header`).
    ("mid-header", "2-4", false),
    ("compact-checkpoint", "1-3", false),
    ("compact-copy", "1-3", false),
    ("compact-header", "1-3", false),
    ("compact-seal", "1-3", false),
    ("recover-read", "1-2", true),
    ("recover-resume", "1-2", true),
    // memfs resumes in place (the cut); with `--journal-resume new-epoch` (given
    // for this point only) it writes a new epoch's header instead.
    ("resume-cut", "1-2", true),
    ("resume-mid-header", "1-2", true),
];

/// memfs's arguments for `point` beyond the common ones.
fn extra_args(point: &str) -> &'static [&'static str] {
    match point {
        "resume-mid-header" => &["--journal-resume", "new-epoch"],
        _ => &[],
    }
}

/// The worker's entry point in the re-run test binary.
#[test]
fn fault_worker() {
    common::workload::run_from_env(WORKER_ENV);
}

fn spawn_worker(w: u32, dir: &Path, stop: &Path) -> Child {
    common::workload::spawn("fault_worker", WORKER_ENV, w, dir, stop)
}

/// The state, kernel wait channel and kernel stack of every thread of every
/// child of `pid`: what a daemon that does not die waits for.
fn stacks(pid: u32) -> String {
    let mut out = String::new();
    for d in common::children(pid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{d}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let p = t.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            let state = read("stat")
                .rsplit_once(") ")
                .map(|(_, r)| r.chars().next().unwrap_or('?'))
                .unwrap_or('?');
            out += &format!(
                "{} {} {state} {}\n{}",
                p.display(),
                read("comm").trim(),
                read("wchan"),
                read("stack")
            );
        }
    }
    out
}

/// What one point's run saw.
#[derive(Debug)]
struct Outcome {
    /// Aborts at the point (memfs's lines on stderr).
    faults: usize,
    /// SIGKILLs the test sent.
    kills: usize,
    /// Operations the workers made, all of them successful.
    ops: u64,
    /// Recoveries (memfs's "recovering:" lines).
    recoveries: usize,
    /// Recoveries that cut a torn record at the end of the log.
    cut: usize,
    /// Resent requests that had no recorded reply and ran again.
    rerun: usize,
}

/// Counts the lines of `log` that say memfs aborted at `point`.
fn faults_in(log: &str, point: &str) -> usize {
    // Anywhere in a line, not only at its start: the keeper and the daemon write
    // to the same log, and a keeper line can be cut by the daemon's fault line
    // ("daemon pid fuse-live fault: aborting at ...").
    log.match_indices(FAULT_LINE)
        .filter(|(i, _)| log[i + FAULT_LINE.len()..].split([' ', '\n']).next() == Some(point))
        .count()
}

/// Runs the workload on memfs under the keeper with `FUSE_LIVE_FAULT=point:range`
/// until the point fired `crashes` times, then checks everything and stops.
fn run(point: &str, range: &str, kill_too: bool, crashes: usize) -> Outcome {
    let seed = common::time_seed();
    let fault = format!("{point}:{range}");
    eprintln!("faults: FUSE_LIVE_FAULT={fault}, {crashes} crashes, seed {seed}");
    let mut rng = common::Rng(seed);
    let dir = common::temp_dir(&format!("fault-{point}"));
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let log = dir.join("keeper.log");
    let disarm = dir.join("disarm");
    let memfs = common::example_binary("memfs");
    let mut cmd = Command::new(KEEPER);
    cmd.args(["--restart-limit", "100000", "--restart-window", "1", "--"])
        .arg(&memfs)
        .arg(&mnt)
        .args(["--threads", "2", "--journal-compact-after", COMPACT_AFTER])
        .args(extra_args(point))
        .env("FUSE_LIVE_FAULT", &fault)
        .env("FUSE_LIVE_FAULT_DISARM", &disarm)
        .env(
            "RUST_LOG",
            std::env::var("FAULT_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).expect("log"));
    // SAFETY: only prctl(2) and setrlimit(2) in the forked child, both
    // async-signal-safe: the keeper stops with the test, and the aborting daemons
    // leave no core files.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
                .map_err(std::io::Error::from)
        });
    }
    let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(900)).expect("watchdog");
    let mut keeper = cmd.spawn().expect("spawn fuse-live-keeper");
    let out = keeper.stdout.take().expect("stdout");
    let keeper_pid = keeper.id();
    let mut guard = common::KeeperGuard {
        keeper: Some(keeper),
        workers: Vec::new(),
        mnt: mnt.clone(),
        dir: dir.clone(),
    };
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = format!("ready {}", mnt.display());
    match lines.recv_timeout(PATIENCE) {
        Ok(l) => assert_eq!(l, ready, "the first start"),
        Err(e) => panic!(
            "no ready line at the first start ({e}); log:\n{}",
            log_text()
        ),
    }
    let conn = fusectl::connection_id(&mnt).expect("fusectl connection");
    let id = common::mount_id(&mnt).expect("mount id");

    let stop = dir.join("stop");
    for w in 0..WORKERS {
        let child = spawn_worker(w, &mnt.join(format!("w{w}")), &stop);
        guard.workers.push(child);
    }
    // A worker that failed ends early: stop at once with its message.
    let check_workers = |workers: &mut Vec<Child>| {
        for (w, c) in workers.iter_mut().enumerate() {
            if let Some(st) = c.try_wait().expect("try_wait") {
                let mut out = String::new();
                if let Some(o) = c.stdout.as_mut() {
                    let _ = o.read_to_string(&mut out);
                }
                panic!(
                    "{fault}: worker {w} ended during the crashes ({st}): {out}\nlog:\n{}",
                    log_text()
                );
            }
        }
    };
    let mut kills = 0usize;
    let mut progress = (0usize, Instant::now());
    loop {
        let faults = faults_in(&log_text(), point);
        if faults >= crashes {
            break;
        }
        if faults != progress.0 {
            progress = (faults, Instant::now());
        }
        assert!(
            progress.1.elapsed() < PATIENCE,
            "{fault}: no abort at the point for {PATIENCE:?} ({faults} so far, {kills} \
             kills); daemon threads:\n{}\nlog:\n{}",
            stacks(keeper_pid),
            log_text()
        );
        check_workers(&mut guard.workers);
        if kill_too {
            // Let the daemon that serves serve a little, kill it, and wait for a
            // successor that serves: each recovering daemon aborts at the point
            // or not, and the keeper restarts it until one serves.
            std::thread::sleep(Duration::from_millis(rng.next() % 200));
            let now = common::children(keeper_pid);
            assert_eq!(now.len(), 1, "{fault}: one daemon before a kill: {now:?}");
            kill(Pid::from_raw(now[0]), Signal::SIGKILL).expect("kill memfs");
            kills += 1;
            match lines.recv_timeout(PATIENCE) {
                Ok(l) => assert_eq!(l, ready, "{fault}: a restart"),
                Err(e) => panic!(
                    "{fault}: no ready line ({e}); daemon threads:\n{}\nlog:\n{}",
                    stacks(keeper_pid),
                    log_text()
                ),
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    File::create(&stop).expect("stop file");
    let mut ops = 0u64;
    for (w, c) in guard.workers.iter_mut().enumerate() {
        let (st, out, n) = common::worker_report(c);
        assert!(
            st.success() && n.is_some(),
            "{fault}: worker {w} failed ({st}): {out}\nlog:\n{}",
            log_text()
        );
        ops += n.unwrap_or(0);
    }
    guard.workers.clear();
    assert_eq!(
        fusectl::connection_id(&mnt).expect("fusectl"),
        conn,
        "{fault}: same connection"
    );
    assert_eq!(common::mount_id(&mnt), Some(id), "{fault}: same mount");

    // No more faults from here on: a daemon that crashes while it unmounts can
    // hang for good (docs/RECOVERY.md, "Fault injection": a poke in flight).
    File::create(&disarm).expect("disarm file");
    kill(Pid::from_raw(keeper_pid as i32), Signal::SIGTERM).expect("SIGTERM the keeper");
    let keeper = guard.keeper.as_mut().expect("keeper");
    let Some(st) = common::wait_exit(keeper, PATIENCE) else {
        panic!(
            "{fault}: the keeper did not exit after SIGTERM; daemon threads:\n{}\nlog:\n{}",
            stacks(keeper_pid),
            log_text()
        );
    };
    guard.keeper = None;
    let text = log_text();
    assert_eq!(st.code(), Some(0), "{fault}: keeper log:\n{text}");
    assert!(
        !common::is_fuse_mounted(&mnt),
        "{fault}: unmounted on SIGTERM"
    );
    assert!(!watchdog.disarm(), "{fault}: the watchdog fired");
    assert!(common::children(keeper_pid).is_empty());
    // Every daemon that died was killed by the test or aborted at the point:
    // nothing else crashed, and none gave up with an error of its own.
    let faults = faults_in(&text, point);
    let aborted = text.matches("was killed by SIGABRT").count();
    let killed = text.matches("was killed by SIGKILL").count();
    let deaths = text.matches("daemon was killed by").count()
        + text.matches("daemon exited with status").count()
        - text
            .matches("daemon exited with status 0 after the stop signal")
            .count();
    assert_eq!(
        aborted, faults,
        "{fault}: SIGABRTs not at the point; log:\n{text}"
    );
    assert_eq!(killed, kills, "{fault}: log:\n{text}");
    assert_eq!(
        deaths,
        aborted + killed,
        "{fault}: other deaths; log:\n{text}"
    );
    assert!(faults >= crashes);
    let recoveries = text.matches("memfs: recovering: ").count();
    let cut = text.matches("log end Cut {").count();
    let rerun = text.matches("resent without a recorded reply").count();
    assert_eq!(
        recoveries,
        aborted + killed,
        "{fault}: a recovery per death"
    );
    if point == "mid-record" {
        // The point's claim: a torn record, which recovery cuts. (An abort in the
        // seal record a resume writes leaves the new epoch's log clean.)
        assert!(
            cut > 0,
            "{fault}: no recovery cut a torn record; log:\n{text}"
        );
    }
    eprintln!(
        "faults: {point}: {faults} aborts at the point, {kills} SIGKILLs, {recoveries} \
         recoveries ({cut} cut a torn record, {rerun} resent requests ran again), {ops} \
         operations by {WORKERS} workers, 0 failed"
    );
    Outcome {
        faults,
        kills,
        ops,
        recoveries,
        cut,
        rerun,
    }
}

fn crashes() -> usize {
    std::env::var("FUSE_LIVE_FAULT_CRASHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn quick(point: &str) {
    if std::env::var_os(WORKER_ENV).is_some() || !common::can_mount(point) {
        return;
    }
    let &(_, range, kill_too) = POINTS
        .iter()
        .find(|p| p.0 == point)
        .expect("a point of the table");
    let n = crashes();
    let o = run(point, range, kill_too, n);
    assert!(o.faults >= n && o.ops > 0, "{o:?}");
}

macro_rules! quick_tests {
    ($($name:ident => $point:literal,)*) => {
        $(
            #[doc = concat!("`", $point, "` fires a few times; the workload sees no error.")]
            #[test]
            fn $name() {
                quick($point);
            }
        )*
        /// Every point of the table has its quick test.
        #[test]
        fn every_point_has_a_quick_test() {
            let tested: BTreeSet<&str> = [$($point),*].into_iter().collect();
            let table: BTreeSet<&str> = POINTS.iter().map(|p| p.0).collect();
            assert_eq!(tested, table);
        }
    };
}

quick_tests! {
    after_accept => "after-accept",
    after_call => "after-call",
    after_record => "after-record",
    after_reply => "after-reply",
    mid_record => "mid-record",
    mid_header => "mid-header",
    compact_checkpoint => "compact-checkpoint",
    compact_copy => "compact-copy",
    compact_header => "compact-header",
    compact_seal => "compact-seal",
    recover_read => "recover-read",
    recover_resume => "recover-resume",
    resume_cut => "resume-cut",
    resume_mid_header => "resume-mid-header",
}

/// The heavy matrix: every point 20 times (`FUSE_LIVE_FAULT_CRASHES` overrides).
#[test]
#[ignore = "several minutes: every point many times"]
fn every_point_many_times() {
    if std::env::var_os(WORKER_ENV).is_some() || !common::can_mount("every_point_many_times") {
        return;
    }
    let n = std::env::var("FUSE_LIVE_FAULT_CRASHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut table = Vec::new();
    for &(point, range, kill_too) in POINTS {
        let o = run(point, range, kill_too, n);
        table.push((point, o));
    }
    for (point, o) in &table {
        eprintln!(
            "| `{point}` | {} | {} | {} | {} | {} | {} | 0 |",
            o.faults, o.kills, o.recoveries, o.cut, o.rerun, o.ops
        );
    }
}
