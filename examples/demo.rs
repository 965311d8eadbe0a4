//! The demo: a FUSE daemon replaced by new processes live, and killed with SIGKILL,
//! under load, without one failed operation.
//!
//! ```text
//! cargo run --release --example demo [-- --svg PATH]
//! ```
//!
//! Mounts memfs in a temporary directory under `fuse-live-keeper`
//! (`fuse-live-keeper -- memfs MOUNTPOINT --upgrade-socket PATH`: the keeper holds
//! the mount's `/dev/fuse` descriptor and memfs's journal), starts a mixed workload
//! in child processes (create, write, read back and verify, rename, stat, readdir,
//! unlink, with files held open the whole time), and in the middle of it, in turn:
//!
//! - replaces the daemon by live handoff ([`HANDOFFS`] times): SIGHUP to the keeper
//!   starts a new memfs that takes the mount over from the running one through its
//!   upgrade socket, with the kernel connection, every nodeid and every open file,
//!   and continues its journal;
//! - kills the daemon with SIGKILL ([`KILLS`] times): the keeper restarts it with the
//!   stored descriptors, and it recovers the mount from the journal on the same
//!   connection, answering what the dead process had left unanswered.
//!
//! Then it prints, per event, the pause the workload saw (its slowest operation
//! across the event) and its failed operations, and unmounts (SIGTERM to the
//! keeper). Needs root (mount(2)) and `/dev/fuse`.
//!
//! With `--svg PATH`, also writes a timeline of every workload operation's latency
//! with the handoffs and the crashes marked (`testkit::chart`) to PATH.
//!
//! Exit status 0 if every operation succeeded.
use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use fuse_live_testkit::{
    chart, example_binary, field, is_fuse_mounted, pattern, spawn_with_lines, stop_process,
    tear_down_if_mounted, wait_exit,
};
use fuse_session::dev::fusectl::{self, Watchdog};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How many times the daemon is replaced by live handoff.
const HANDOFFS: usize = 4;
/// How many times the daemon is killed with SIGKILL.
const KILLS: usize = 4;
/// Workload processes.
const WORKERS: usize = 4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["--worker", dir, id, stop, out, timings] => worker(
            Path::new(dir),
            id.parse().unwrap_or(0),
            Path::new(stop),
            Path::new(out),
            Some(Path::new(timings)),
        ),
        [] => demo(None),
        ["--svg", path] => demo(Some(Path::new(path))),
        _ => Err("usage: demo [--svg PATH]".into()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

// --- the workload ----------------------------------------------------------------

/// One workload process: rounds of create, write, read back and verify, rename,
/// stat, readdir, unlink, plus a record written and read back through a file held
/// open for the whole run, until `stop` exists. Writes "ops failed bytes" to `out`,
/// and with `timings`, one line "END_NS LATENCY_NS OK" per operation there (the end
/// on the wall clock, shared by the processes; the latency on the monotonic clock).
fn worker(dir: &Path, id: u64, stop: &Path, out: &Path, timings: Option<&Path>) -> Res<bool> {
    let wdir = dir.join(format!("worker-{id}"));
    std::fs::create_dir(&wdir)?;
    let held = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(wdir.join("held"))?;
    let (mut ops, mut failed, mut bytes) = (0u64, 0u64, 0u64);
    // When the operation being checked started: after the previous check, or when
    // reset just before an operation.
    let started = Cell::new(Instant::now());
    let mut times: Vec<(u128, u128, bool)> = Vec::new();
    let mut check = |what: &str, r: std::io::Result<bool>| {
        ops += 1;
        if timings.is_some() {
            let end = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            let ok = matches!(r, Ok(true));
            times.push((end.as_nanos(), started.get().elapsed().as_nanos(), ok));
        }
        match r {
            Ok(true) => {}
            Ok(false) => {
                failed += 1;
                eprintln!("worker {id}: {what}: wrong result");
            }
            Err(e) => {
                failed += 1;
                eprintln!("worker {id}: {what}: {e}");
            }
        }
        started.set(Instant::now());
    };
    let mut round = 0u64;
    while !stop.exists() {
        let data = pattern(id << 32 | round, 1 + (round as usize * 4099) % 64_000);
        let (a, b) = (
            wdir.join(format!("new-{round}")),
            wdir.join(format!("done-{round}")),
        );
        started.set(Instant::now());
        check("create+write", std::fs::write(&a, &data).map(|_| true));
        check("read back", std::fs::read(&a).map(|d| d == data));
        bytes += data.len() as u64;
        check("rename", std::fs::rename(&a, &b).map(|_| true));
        check(
            "stat",
            std::fs::metadata(&b).map(|m| m.len() == data.len() as u64),
        );
        let listed = std::fs::read_dir(&wdir).map(|d| {
            let want = format!("done-{round}");
            d.filter_map(Result::ok)
                .any(|e| e.file_name() == want.as_str())
        });
        check("readdir", listed);
        let rec = round.to_le_bytes();
        let mut got = [0u8; 8];
        let held_ok = held
            .write_all_at(&rec, round * 8)
            .and_then(|()| held.read_exact_at(&mut got, round * 8))
            .map(|()| got == rec);
        check("held file", held_ok);
        if round >= 4 {
            let old = wdir.join(format!("done-{}", round - 4));
            check("unlink", std::fs::remove_file(old).map(|_| true));
        }
        round += 1;
    }
    let mut all = vec![0u8; round as usize * 8];
    let whole = held.read_exact_at(&mut all, 0).map(|()| {
        all.chunks(8)
            .enumerate()
            .all(|(i, c)| c == (i as u64).to_le_bytes())
    });
    check("held file, whole", whole);
    if let Some(path) = timings {
        let mut text = String::with_capacity(times.len() * 32);
        for (end, d, ok) in &times {
            text.push_str(&format!("{end} {d} {}\n", u8::from(*ok)));
        }
        std::fs::write(path, text)?;
    }
    std::fs::write(out, format!("{ops} {failed} {bytes}"))?;
    Ok(failed == 0)
}

// --- the orchestration -----------------------------------------------------------

/// Everything the demo started; dropping it stops and removes all of it.
struct Cleanup {
    dir: PathBuf,
    mnt: PathBuf,
    keeper: Option<Child>,
    workers: Vec<Child>,
    watchdog: Option<Watchdog>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(mut k) = self.keeper.take() {
            let pid = k.id();
            if stop_process(&mut k, &self.mnt, Duration::from_secs(15)).is_none() {
                for d in daemons(pid) {
                    let _ = kill(Pid::from_raw(d), Signal::SIGKILL);
                }
            }
        }
        tear_down_if_mounted(&self.mnt);
        if let Some(w) = self.watchdog.take() {
            if w.disarm() {
                eprintln!("demo: the watchdog had to tear the mount down");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The keeper's children (the daemons it runs).
fn daemons(keeper: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The one daemon, once the keeper runs exactly one (after a handoff the previous
/// daemon exits by itself).
fn the_daemon(keeper: u32) -> Res<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let [one] = daemons(keeper)[..] {
            return Ok(one);
        }
        if Instant::now() > deadline {
            return Err(format!("the keeper runs {:?}, not one daemon", daemons(keeper)).into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn expect_ready(rx: &mpsc::Receiver<String>, log: &Path, what: &str) -> Res<()> {
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) if l.starts_with("ready ") => Ok(()),
        _ => Err(format!(
            "no ready line {what}; keeper and memfs log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default().trim()
        )
        .into()),
    }
}

/// One handoff or crash, as the demo saw it.
struct Happened {
    label: String,
    /// From the SIGHUP or SIGKILL to the ready line, and until the previous daemon
    /// had exited.
    start: SystemTime,
    ready: SystemTime,
    end: SystemTime,
    /// The daemon's own pause (handoff: from its pause to the new one serving),
    /// microseconds; for a crash, none (the pause is from the kill to the ready).
    stall_us: Option<u64>,
}

fn demo(svg: Option<&Path>) -> Res<bool> {
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        return Err("needs root and /dev/fuse (it mounts with mount(2))".into());
    }
    let keeper_bin = example_binary("fuse-live-keeper");
    let memfs_bin = example_binary("memfs");
    let dir = std::env::temp_dir().join(format!("fuse-live-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt)?;
    let mut c = Cleanup {
        dir: dir.clone(),
        mnt: mnt.clone(),
        keeper: None,
        workers: Vec::new(),
        watchdog: Some(Watchdog::arm(&mnt, None, Duration::from_secs(300))?),
    };
    let sock = dir.join("upgrade.sock");
    let log = dir.join("keeper.log");
    let mut cmd = Command::new(&keeper_bin);
    cmd.args(["--restart-limit", "1000", "--restart-window", "1", "--"])
        .arg(&memfs_bin)
        .arg(&mnt)
        .args(["--threads", "2", "--upgrade-socket"])
        .arg(&sock)
        .env("RUST_LOG", "info");
    let (k, rx) = spawn_with_lines(&mut cmd, &log)?;
    let keeper = k.id();
    c.keeper = Some(k);
    expect_ready(&rx, &log, "at the first start")?;
    let conn = fusectl::connection_id(&mnt)?;
    println!(
        "mounted memfs at {} under fuse-live-keeper (pid {keeper}), daemon pid {}",
        mnt.display(),
        the_daemon(keeper)?
    );

    let stop = dir.join("stop");
    let exe = std::env::current_exe()?;
    let load_start = loadavg();
    let t0 = SystemTime::now();
    let timings = |id: usize| dir.join(format!("timings-{id}"));
    for id in 0..WORKERS {
        let w = Command::new(&exe)
            .arg("--worker")
            .arg(&mnt)
            .arg(id.to_string())
            .arg(&stop)
            .arg(dir.join(format!("result-{id}")))
            .arg(timings(id))
            .stdin(Stdio::null())
            .spawn()?;
        c.workers.push(w);
    }
    println!("workload: {WORKERS} processes creating, writing, verifying, renaming, listing");

    let mut events: Vec<Happened> = Vec::new();
    let (mut handoffs, mut kills) = (0, 0);
    while handoffs < HANDOFFS || kills < KILLS {
        std::thread::sleep(Duration::from_millis(500));
        let old = the_daemon(keeper)?;
        let start = SystemTime::now();
        let handoff = handoffs <= kills && handoffs < HANDOFFS || kills == KILLS;
        let label = if handoff {
            handoffs += 1;
            kill(Pid::from_raw(keeper as i32), Signal::SIGHUP)?;
            format!("handoff {handoffs}")
        } else {
            kills += 1;
            kill(Pid::from_raw(old), Signal::SIGKILL)?;
            format!("SIGKILL {kills}")
        };
        expect_ready(&rx, &log, &format!("after {label}"))?;
        let ready = SystemTime::now();
        let new = the_daemon(keeper)?;
        let end = SystemTime::now();
        let (stall_us, what) = if handoff {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let line = text
                .lines()
                .rev()
                .find(|l| l.contains(&format!("took over from pid {old}:")))
                .ok_or("the new daemon logged no handoff statistics")?;
            let stall = field(line, "stall_us");
            (
                Some(stall),
                format!(
                    "pid {old} -> pid {new} by live handoff: {} nodeids, {} open handles, \
                     {} snapshot bytes, daemon paused {:.2} ms",
                    field(line, "nodes"),
                    field(line, "handles"),
                    field(line, "snapshot_bytes"),
                    stall as f64 / 1000.0
                ),
            )
        } else {
            let back = ready.duration_since(start).unwrap_or_default();
            (
                None,
                format!(
                    "pid {old} killed, pid {new} recovered the mount from the fd store and the \
                     journal, serving {:.0} ms after the kill",
                    back.as_secs_f64() * 1000.0
                ),
            )
        };
        println!("{label}: {what}");
        events.push(Happened {
            label,
            start,
            ready,
            end,
            stall_us,
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    File::create(&stop)?;
    let (mut ops, mut failed, mut bytes) = (0u64, 0u64, 0u64);
    for (id, mut w) in std::mem::take(&mut c.workers).into_iter().enumerate() {
        let st = wait_exit(&mut w, Duration::from_secs(60));
        let text = std::fs::read_to_string(dir.join(format!("result-{id}"))).unwrap_or_default();
        let v: Vec<u64> = text.split(' ').filter_map(|s| s.parse().ok()).collect();
        if let [o, f, b] = v[..] {
            ops += o;
            failed += f;
            bytes += b;
        } else {
            failed += 1;
            eprintln!("worker {id} reported nothing ({st:?})");
        }
    }
    let all: Vec<chart::Op> = (0..WORKERS)
        .flat_map(|id| read_timings(&timings(id), t0))
        .collect();
    let secs = |t: SystemTime| t.duration_since(t0).unwrap_or_default().as_secs_f64();
    // Per event: the operations that ended between the event and the daemon
    // serving again (and a little after): the slowest is the pause the workload saw.
    let seen: Vec<(f64, usize, usize)> = events
        .iter()
        .map(|e| {
            let (a, b) = (secs(e.start), secs(e.end) + 0.05);
            let during: Vec<&chart::Op> = all
                .iter()
                .filter(|o| o.end_s >= a && o.end_s <= b)
                .collect();
            let slowest = during.iter().map(|o| o.latency_s).fold(0.0, f64::max);
            (
                slowest,
                during.len(),
                during.iter().filter(|o| !o.ok).count(),
            )
        })
        .collect();
    if let Some(path) = svg {
        let marks = events
            .iter()
            .map(|e| {
                let pause = match e.stall_us {
                    Some(us) => (secs(e.ready) - us as f64 / 1e6, secs(e.ready)),
                    None => (secs(e.start), secs(e.ready)),
                };
                let how = if e.stall_us.is_some() {
                    "pause"
                } else {
                    "down"
                };
                chart::Event {
                    window: (secs(e.start), secs(e.end)),
                    pause: Some(pause),
                    label: format!("{}: {how} {}", e.label, chart::fmt_secs(pause.1 - pause.0)),
                }
            })
            .collect();
        let longest_op = all.iter().map(|o| o.latency_s).fold(0.0, f64::max);
        let chart = chart::Timeline {
            title: "Workload operation latency across live handoffs and SIGKILLs (demo)".into(),
            caption: vec![
                format!(
                    "{} operations of {WORKERS} worker processes (create + write, read back, rename, stat, readdir, held-file write + read, unlink), {} failed",
                    chart::thousands(all.len() as f64),
                    all.iter().filter(|o| !o.ok).count()
                ),
                format!(
                    "longest {}; memfs under fuse-live-keeper, replaced {HANDOFFS} times by live handoff and killed {KILLS} times with SIGKILL; a shared machine, load average {load_start} at the start, {} at the end",
                    chart::fmt_secs(longest_op),
                    loadavg()
                ),
            ],
            ops: all.clone(),
            events: marks,
        };
        std::fs::write(path, chart.render())?;
        println!("timeline written to {}", path.display());
    }
    println!();
    println!("report:");
    println!(
        "  daemon replaced {HANDOFFS} times by live handoff and killed {KILLS} times with \
         SIGKILL, mid-workload, on one mount and one FUSE connection"
    );
    for (e, (slowest, n, bad)) in events.iter().zip(&seen) {
        println!(
            "  {:<10} the workload paused {:>8.2} ms (its slowest operation across it), {n} \
             operations during it, {bad} failed",
            format!("{}:", e.label),
            slowest * 1000.0
        );
    }
    println!(
        "  operations: {ops} done, {failed} failed; {:.1} MiB written and verified",
        bytes as f64 / f64::from(1 << 20)
    );
    let same = fusectl::connection_id(&mnt).ok() == Some(conn);
    println!(
        "  FUSE connection: {}",
        if same {
            "the same one throughout"
        } else {
            "CHANGED"
        }
    );
    // Unmount: SIGTERM the keeper, which has the daemon unmount, and both exit.
    if let Some(mut k) = c.keeper.take() {
        kill(Pid::from_raw(k.id() as i32), Signal::SIGTERM)?;
        let st = wait_exit(&mut k, Duration::from_secs(30)).ok_or("the keeper did not exit")?;
        if !st.success() {
            return Err(format!("the keeper exited with {st}").into());
        }
    }
    println!(
        "unmounted{}",
        if is_fuse_mounted(&mnt) {
            " (NOT: still mounted)"
        } else {
            ""
        }
    );
    Ok(failed == 0 && same)
}

/// The 1-minute load average ("?" if unknown).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// A worker's timings file as chart operations (seconds from `t0`); lines that do
/// not parse are skipped (a worker killed mid-write leaves a partial last line).
fn read_timings(path: &Path, t0: SystemTime) -> Vec<chart::Op> {
    let t0 = t0
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut p = l.split(' ').map(|v| v.parse::<u128>().ok());
            let (end, d, ok) = (p.next()??, p.next()??, p.next()??);
            Some(chart::Op {
                end_s: end.saturating_sub(t0) as f64 / 1e9,
                latency_s: d as f64 / 1e9,
                ok: ok == 1,
            })
        })
        .collect()
}
