//! Benchmark: how long a `kill -9` of a journaled daemon holding many nodeids stalls
//! the applications on its mount.
//!
//! ```text
//! cargo run --release --example recovery_bench -- [FILES] [KILLS] [in-place|new-epoch] [--transport auto|dev-fuse|io-uring]
//! ```
//!
//! Runs memfs under `fuse-live-keeper` (both built by this program, in its own
//! profile) with a one-hour entry and attribute TTL and no restart delay, creates
//! FILES files (default 100000) in directories of 1000 and stats them all, so that
//! the kernel holds a nodeid for each and the journal a lookup for each. Then two
//! client threads run operations that always reach the daemon (`open` + `close` of
//! a file, 4 KiB `pwrite` on a file held open), timing each, while the daemon is
//! killed with SIGKILL KILLS times (default 5), a second apart. The third argument
//! is memfs's `--journal-resume` (default `in-place`: the recovered log goes on;
//! `new-epoch`: a fresh checkpoint is written first, as before in-place resume
//! existed). For each kill it prints:
//!
//! - `ready`: SIGKILL sent → the restarted daemon's `ready MOUNTPOINT` line (it has
//!   recovered the journal and serves);
//! - `first`: SIGKILL sent → the first client operation answered by the restarted
//!   daemon (ended after the killed process was a zombie);
//! - `slowest`: the longest client operation overlapping the crash (started before
//!   the `ready` line, ended after the kill);
//!
//! and, to compare with, the time to start and reap a memfs process that only
//! prints its usage (`start`): the part of `ready` that is process start, not
//! recovery. Any failed client operation is counted and makes the run fail.
//! Needs root and `/dev/fuse`.
//!
//! `--transport` is passed to memfs (default `dev-fuse`, what the figures so far
//! were measured with). Under the keeper memfs decides through
//! `TransportKind::recoverable`: `auto` serves through `/dev/fuse`, `io-uring`
//! through rings whose entries it keeps in a memfd (a request that reaches the
//! dying process's ring can fail with ECANCELED: such a failure is counted like
//! any other and makes the run fail).
//!
//! With `RECOVERY_BENCH_SAVE=FILE` in the environment, a copy of the daemon's
//! journal (as it is just before the first kill) is written to FILE. Then
//!
//! ```text
//! cargo run --release --example recovery_bench -- --replay FILE [REPS]
//! ```
//!
//! recovers that journal REPS times (default 10) in this process, without a mount
//! (each time from a fresh memfd holding the saved bytes), and prints how long each
//! phase took: read and check, decode and replay, restore, resume. Odd reps resume
//! the journal in place (memfs's default), even ones in a new epoch (a fresh
//! checkpoint: `--journal-resume new-epoch`), so both are measured interleaved;
//! after each, the journal is recovered once more and must hold the same session. The same code
//! paths as the daemon's recovery, without process start, the fd store or the
//! kernel: a steady figure to compare two builds by, and a process to profile
//! (`perf record -g -- target/release/examples/recovery_bench --replay FILE 20`).
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use fuse_live_testkit::children;
use fuse_session::dev::fusectl::{self, Watchdog};
use fuse_session::serve::TransportKind;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// How long to wait for a `ready` line before giving up.
const PATIENCE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let transport = match take_transport(&mut args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("recovery_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.first().is_some_and(|a| a == "--replay") {
        let reps = match args.get(2).map(|s| s.parse::<usize>()) {
            None => Ok(10),
            Some(Ok(n)) if n > 0 => Ok(n),
            Some(_) => Err("usage: recovery_bench --replay FILE [REPS]"),
        };
        let r = match (args.get(1), reps) {
            (Some(file), Ok(reps)) if args.len() <= 3 => replay(Path::new(file), reps),
            (_, Err(e)) => Err(e.into()),
            _ => Err("usage: recovery_bench --replay FILE [REPS]".into()),
        };
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("recovery_bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let parse = |i: usize, default: usize| -> Result<usize, String> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().map_err(|_| {
                format!("not a number: {s:?}; usage: recovery_bench [FILES] [KILLS] [MODE]")
            })
        })
    };
    let mode = args.get(2).map_or("in-place", String::as_str);
    let r = match (parse(0, 100_000), parse(1, 5)) {
        _ if !matches!(mode, "in-place" | "new-epoch") => {
            Err(format!("bad mode {mode:?}: in-place or new-epoch").into())
        }
        (Ok(files), Ok(kills)) if args.len() <= 3 => bench(files, kills, mode, transport),
        (Err(e), _) | (_, Err(e)) => Err(e.into()),
        _ => Err("usage: recovery_bench [FILES] [KILLS] [in-place|new-epoch]".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recovery_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Removes `--transport VALUE` (or `--transport=VALUE`) from `args` and returns
/// the transport for memfs (default `dev-fuse`), as `TransportKind::recoverable`
/// logs it for a daemon recovered after a crash.
fn take_transport(args: &mut Vec<String>) -> Result<&'static str, String> {
    let mut kind = TransportKind::DevFuse;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--transport" {
            let v = args.get(i + 1).ok_or("--transport needs a value")?;
            kind = v.parse()?;
            args.drain(i..i + 2);
        } else if let Some(v) = args[i].strip_prefix("--transport=") {
            kind = v.parse()?;
            args.remove(i);
        } else {
            i += 1;
        }
    }
    let _ = kind.recoverable("crash recovery (recovery_bench)");
    Ok(match kind {
        TransportKind::Auto => "auto",
        TransportKind::IoUring => "io-uring",
        _ => "dev-fuse",
    })
}

/// Builds `what` (cargo arguments) in this program's profile and returns the path of
/// `bin` in that profile's directory.
fn built(what: &[&str], bin: &str) -> Res<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("this program is not in <target>/<profile>/examples")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"]).args(what);
    if profile.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let st = cmd.status()?;
    if !st.success() {
        return Err(format!("cargo build {} failed", what.join(" ")).into());
    }
    Ok(profile.join(bin))
}

/// Spins until `pid` is a zombie or gone (at most a second): the instant the killed
/// daemon can no longer answer anything.
fn wait_dead(pid: i32) -> Instant {
    let path = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&path) {
            // The state follows the parenthesised command name.
            Ok(s) if s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')) => break,
            Ok(_) => std::thread::yield_now(),
            Err(_) => break,
        }
    }
    Instant::now()
}

/// The keeper, its mount, and everything to undo on the way out.
struct Rig {
    keeper: Child,
    mnt: PathBuf,
    dir: PathBuf,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Rig {
    fn next_ready(&self, what: &str) -> Res<Instant> {
        let want = format!("ready {}", self.mnt.display());
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok((t, l)) if l == want => return Ok(t),
                Ok((_, l)) => eprintln!("recovery_bench: daemon says {l:?}"),
                Err(e) => return Err(format!("no ready line {what}: {e}").into()),
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.keeper.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.keeper.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(self.keeper.try_wait(), Ok(Some(_))) {
            if let Ok(c) = fusectl::connection_id(&self.mnt) {
                let _ = fusectl::abort(c);
            }
            let _ = self.keeper.kill();
            let _ = self.keeper.wait();
        }
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One timed client operation: start and end in µs since the run's origin.
#[derive(Clone, Copy)]
struct Op {
    start: u64,
    end: u64,
}

fn client(
    dir: PathBuf,
    files: usize,
    id: usize,
    origin: Instant,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    ops: Arc<Mutex<Vec<Op>>>,
) {
    let held = dir.join(format!("held{id}"));
    let h = match OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&held)
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!(
                "recovery_bench: client {id}: create {}: {e}",
                held.display()
            );
            failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let block = [id as u8; 4096];
    let mut mine = Vec::with_capacity(1 << 16);
    let mut i = id * 7919;
    while !stop.load(Ordering::Relaxed) {
        i = i.wrapping_add(104_729);
        let start = origin.elapsed().as_micros() as u64;
        let r = if i % 2 == 0 {
            let n = i % files;
            File::open(dir.join(format!("d{:03}/f{n}", n / 1000))).map(drop)
        } else {
            h.write_all_at(&block, ((i / 2) % 256 * 4096) as u64)
        };
        let end = origin.elapsed().as_micros() as u64;
        if let Err(e) = r {
            eprintln!("recovery_bench: client {id}: {e}");
            failed.fetch_add(1, Ordering::Relaxed);
        }
        mine.push(Op { start, end });
    }
    ops.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn bench(files: usize, kills: usize, mode: &str, transport: &str) -> Res<()> {
    let keeper = built(
        &["-p", "fuse-live", "--bin", "fuse-live-keeper"],
        "fuse-live-keeper",
    )?;
    let memfs = built(&["-p", "memfs", "--bin", "memfs"], "memfs")?;

    // Process start alone: memfs with no argument prints its usage and exits 2.
    let mut starts = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        Command::new(&memfs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        starts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let start_ms = median(&mut starts);

    let dir = std::env::temp_dir().join(format!("recovery-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("mnt"))?;
    let mnt = dir.join("mnt");
    let mut child = Command::new(&keeper)
        .args(["--restart-limit", "1000", "--restart-window", "1"])
        .args(["--restart-delay", "0", "--"])
        .arg(&memfs)
        .arg(&mnt)
        .args(["--threads", "2", "--ttl", "3600", "--journal-resume", mode])
        .args(["--transport", transport])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(dir.join("keeper.log"))?)
        .spawn()?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    let rig = Rig {
        keeper: child,
        mnt: mnt.clone(),
        dir: dir.clone(),
        lines,
    };
    rig.next_ready("at the first start")?;
    let _watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(1800))?;

    let t = Instant::now();
    for d in 0..files.div_ceil(1000) {
        std::fs::create_dir(mnt.join(format!("d{d:03}")))?;
    }
    for n in 0..files {
        File::create(mnt.join(format!("d{:03}/f{n}", n / 1000)))?;
    }
    for n in 0..files {
        std::fs::metadata(mnt.join(format!("d{:03}/f{n}", n / 1000)))?;
    }
    println!(
        "{files} files in {} directories created and looked up in {:.1} s",
        files.div_ceil(1000),
        t.elapsed().as_secs_f64()
    );

    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2)
        .map(|id| {
            let (m, s, f, o) = (mnt.clone(), stop.clone(), failed.clone(), ops.clone());
            std::thread::spawn(move || client(m, files, id, origin, s, f, o))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut crashes = Vec::new();
    // Per kill, CLOCK_MONOTONIC at the kill, at the death, at the ready line.
    let mut traces = Vec::new();
    for k in 0..kills {
        let pids = children(rig.keeper.id());
        let [pid] = pids[..] else {
            return Err(format!("the keeper has {} children, not 1", pids.len()).into());
        };
        if k == 0 {
            if let Some(to) = std::env::var_os("RECOVERY_BENCH_SAVE") {
                save_journal(pid, Path::new(&to))?;
            }
        }
        let killed_ns = fuse_session::trace::now_ns();
        let killed = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        let dead = wait_dead(pid);
        let dead_ns = fuse_session::trace::now_ns();
        let ready = rig.next_ready(&format!("after kill {}", k + 1))?;
        let ready_ns = fuse_session::trace::now_ns();
        traces.push([killed_ns, dead_ns, ready_ns]);
        crashes.push((killed, dead, ready));
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let ops = std::mem::take(&mut *ops.lock().unwrap_or_else(|p| p.into_inner()));
    let us = |t: Instant| t.duration_since(origin).as_micros() as u64;

    println!("process start (memfs printing its usage, median of 20): {start_ms:.2} ms");
    println!("kill  ready_ms  first_ms  slowest_ms  ops_overlapping");
    let (mut readys, mut firsts, mut slowests) = (Vec::new(), Vec::new(), Vec::new());
    for (k, (killed, dead, ready)) in crashes.iter().enumerate() {
        let (kill_us, dead_us, ready_us) = (us(*killed), us(*dead), us(*ready));
        // Answered by the restarted daemon: ended after the killed one was dead.
        let first = ops
            .iter()
            .filter(|o| o.end > dead_us)
            .map(|o| o.end)
            .min()
            .unwrap_or(u64::MAX);
        let overlapping: Vec<&Op> = ops
            .iter()
            .filter(|o| o.start <= ready_us && o.end >= kill_us)
            .collect();
        let slowest = overlapping
            .iter()
            .map(|o| o.end - o.start)
            .max()
            .unwrap_or(0);
        let (r, f, s) = (
            (ready_us - kill_us) as f64 / 1e3,
            first.saturating_sub(kill_us) as f64 / 1e3,
            slowest as f64 / 1e3,
        );
        println!(
            "{:>4}  {r:>8.1}  {f:>8.1}  {s:>10.1}  {:>15}",
            k + 1,
            overlapping.len()
        );
        readys.push(r);
        firsts.push(f);
        slowests.push(s);
    }
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "RESULT files={files} kills={kills} mode={mode} start_ms={start_ms:.2} ready_ms_median={:.1} \
         ready_ms_max={:.1} first_ms_median={:.1} first_ms_max={:.1} slowest_ms_max={:.1} \
         ops={} failed={}",
        median(&mut readys.clone()),
        max(&readys),
        median(&mut firsts.clone()),
        max(&firsts),
        max(&slowests),
        ops.len(),
        failed.load(Ordering::Relaxed)
    );
    let failed = failed.load(Ordering::Relaxed);
    // What each recovery replayed (memfs logs it at level warn).
    let log = std::fs::read_to_string(dir.join("keeper.log")).unwrap_or_default();
    for l in log
        .lines()
        .filter(|l| l.contains("recovering") || l.contains("journal re"))
    {
        println!("# {l}");
    }
    if fuse_session::trace::enabled() {
        print_trace(&log, &traces);
    }
    drop(rig);
    if failed > 0 {
        return Err(format!("{failed} client operations failed").into());
    }
    Ok(())
}

/// With `FUSE_LIVE_TRACE` set: the keeper's and the restarted daemons' phase
/// trace lines (`fuse_session::trace`, in the keeper's log), placed after each
/// kill: one row per phase, one column per kill, in ms after the SIGKILL. A phase
/// belongs to kill `k` if it came after it and before the next one.
fn print_trace(log: &str, kills: &[[u64; 3]]) {
    let mut phases: Vec<String> = Vec::new();
    let mut at: Vec<Vec<Option<f64>>> = Vec::new();
    let mut put = |what: &str, k: usize, ms: f64| {
        let i = phases.iter().position(|p| p == what).unwrap_or_else(|| {
            phases.push(what.to_owned());
            at.push(vec![None; kills.len()]);
            phases.len() - 1
        });
        // The first of a phase's lines after the kill (a phase seen twice, e.g.
        // by a recovery that crashed, keeps its first).
        at[i][k].get_or_insert(ms);
    };
    for (k, [killed, dead, ready]) in kills.iter().enumerate() {
        let ms = |ns: u64| ns.saturating_sub(*killed) as f64 / 1e6;
        put("bench: SIGKILL sent", k, 0.0);
        put("bench: the killed daemon is a zombie", k, ms(*dead));
        let end = kills.get(k + 1).map_or(u64::MAX, |n| n[0]);
        for l in log.lines() {
            if let Some((ns, _, what)) = fuse_session::trace::parse(l) {
                if ns >= *killed && ns < end {
                    put(what, k, ms(ns));
                }
            }
        }
        put("bench: ready line read", k, ms(*ready));
    }
    // In the order of the first kill's times.
    let mut order: Vec<usize> = (0..phases.len()).collect();
    order.sort_by(|&a, &b| {
        let t = |i: usize| at[i].iter().flatten().next().copied().unwrap_or(f64::MAX);
        t(a).total_cmp(&t(b))
    });
    println!("# phase trace: ms after SIGKILL, one column per kill");
    for i in order {
        let cols: Vec<String> = at[i]
            .iter()
            .map(|v| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")))
            .collect();
        println!("TRACE {:<56} {}", phases[i], cols.join(" "));
    }
}

/// The largest journal `--replay` maps (as memfs's).
const JOURNAL_MAX: u64 = 8 << 30;

/// Copies the journal memfd of daemon `pid` (`/memfd:memfs-journal`) to `to`.
fn save_journal(pid: i32, to: &Path) -> Res<()> {
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if target.to_string_lossy().starts_with("/memfd:memfs-journal") {
            let n = std::fs::copy(e.path(), to)?;
            println!("journal of pid {pid} saved to {} ({n} bytes)", to.display());
            return Ok(());
        }
    }
    Err(format!("daemon {pid} holds no memfs-journal memfd").into())
}

/// `--replay FILE REPS`: recovers the saved journal REPS times in this process.
fn replay(file: &Path, reps: usize) -> Res<()> {
    use fuse_session::dev::JournalMap;
    use fuse_snapshot::journal::session::{recover_session, RecoveredSession};
    use fuse_snapshot::journal::JournalOptions;
    use fuse_snapshot::FdRestorer;
    use memfs::fs::MemFs;

    if std::env::var_os("RUST_LOG").is_some() {
        log::set_logger(&StderrLog).map_err(|e| e.to_string())?;
        log::set_max_level(log::LevelFilter::Info);
    }
    let bytes = std::fs::read(file)?;
    println!(
        "replaying {} ({} bytes) {reps} times",
        file.display(),
        bytes.len()
    );
    println!("rep  mode       recover_ms  recover_cpu_ms  resume_ms  total_ms  records  nodeids");
    let (mut recovers, mut cpus) = (Vec::new(), Vec::new());
    let (mut resumes, mut totals) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let modes = ["in-place", "new-epoch"];
    for rep in 0..reps {
        let mode = rep % 2;
        let map = JournalMap::memfd("replay-journal", JOURNAL_MAX)?;
        map.grow(bytes.len() as u64)?;
        map.write(0, &bytes)?;
        let again = map.fd().try_clone_to_owned()?;
        // Recovered through a fresh mapping, as a new process maps it.
        let map = JournalMap::from_fd(map.fd().try_clone_to_owned()?, JOURNAL_MAX)?;
        let t = Instant::now();
        let cpu0 = process_cpu()?;
        let recovered =
            recover_session::<MemFs>(map, &mut FdRestorer::empty(), JournalOptions::default())?;
        let recover = t.elapsed();
        let cpu = process_cpu()? - cpu0;
        let records = recovered.records;
        let (session, hook, map, rec) = recovered.into_parts();
        let nodeids = session.node_count();
        let session = Arc::new(session);
        let t2 = Instant::now();
        if mode == 0 {
            RecoveredSession::resume(&hook, &session, map, &rec)?;
        } else {
            RecoveredSession::resume_new_epoch(&hook, &session, map, &rec)?;
        }
        let resume = t2.elapsed();
        let total = t.elapsed();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{rep:>3}  {:<9}  {:>10.1}  {:>14.1}  {:>9.1}  {:>8.1}  {records:>7}  {nodeids:>7}",
            modes[mode],
            ms(recover),
            ms(cpu),
            ms(resume),
            ms(total)
        );
        recovers.push(ms(recover));
        cpus.push(ms(cpu));
        resumes[mode].push(ms(resume));
        totals[mode].push(ms(total));
        // The resumed journal recovers the same session (a crash right now).
        let map = JournalMap::from_fd(again, JOURNAL_MAX)?;
        let re =
            recover_session::<MemFs>(map, &mut FdRestorer::empty(), JournalOptions::default())?;
        if re.session.node_count() != nodeids || re.session.handle_count() != session.handle_count()
        {
            return Err(format!(
                "rep {rep} ({}): recovered again, {} nodeids and {} handles, not {nodeids} and {}",
                modes[mode],
                re.session.node_count(),
                re.session.handle_count(),
                session.handle_count()
            )
            .into());
        }
    }
    println!(
        "RESULT replay reps={reps} recover_ms_median={:.1} recover_cpu_ms_median={:.1} \
         resume_ms_median in-place={:.1} new-epoch={:.1} total_ms_median in-place={:.1} \
         new-epoch={:.1}",
        median(&mut recovers),
        median(&mut cpus),
        median(&mut resumes[0]),
        median(&mut resumes[1]),
        median(&mut totals[0]),
        median(&mut totals[1]),
    );
    Ok(())
}

/// The CPU time (user and system) this process has used, over all its threads
/// (recovery decodes on two): a recovery's own cost, steadier than its
/// wall-clock time on a machine other work shares.
fn process_cpu() -> Res<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF)?;
    let us = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    Ok(us(u.user_time()) + us(u.system_time()))
}

/// With `RUST_LOG` set, `--replay` prints the library's phase timings (level info).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("{} {}: {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}
