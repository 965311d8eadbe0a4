//! The demo: a FUSE daemon replaced by new processes, live, under load.
//!
//! ```text
//! cargo run --release --example demo [-- --svg PATH]
//! ```
//!
//! Mounts memfs in a temporary directory (as a daemon process: this program run
//! again with a hidden flag), starts a mixed workload in child processes (create,
//! write, read back and verify, rename, stat, readdir, with files held open the whole
//! time), replaces the daemon by a new process several times in the middle of it —
//! each new process takes the mount over from the previous one through its upgrade
//! socket, with the kernel connection, every nodeid and every open file — then
//! prints what happened and unmounts. Needs root (mount(2)) and `/dev/fuse`.
//!
//! With `--svg PATH`, also writes a timeline of every workload operation's latency
//! with the handoffs marked (`testkit::chart`) to PATH.
//!
//! Exit status 0 if every operation succeeded.
use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use fuse_session::dev::fusectl::Watchdog;
use fuse_session::dev::MountOptions;
use fuse_session::serve::{Running, Server};
use fuse_snapshot::handoff::{self, Ended, HandoffOptions, UpgradeListener};
use fuse_live_testkit::{
    chart, field, is_fuse_mounted, pattern, spawn_with_lines, stop_process, tear_down_if_mounted,
    wait_exit,
};

// memfs's own modules (the memfs workspace crate).
use memfs::fs;

use fs::MemFs;

/// How many times the daemon is replaced.
const HANDOFFS: usize = 5;
/// Workload processes.
const WORKERS: usize = 4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["--daemon", mnt, sock] => daemon(Some(Path::new(mnt)), Path::new(sock)),
        ["--takeover", sock] => daemon(None, Path::new(sock)),
        ["--worker", dir, id, stop, out, timings @ ..] => worker(
            Path::new(dir),
            id.parse().unwrap_or(0),
            Path::new(stop),
            Path::new(out),
            timings.first().map(Path::new),
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

// --- the daemon ----------------------------------------------------------------

/// The memfs daemon: mounts `mnt` (or takes the mount over from whoever listens on
/// `sock`), prints `ready` and, after a takeover, one `handoff ...` line of
/// statistics, then serves and listens on `sock` until replaced or stopped.
fn daemon(mnt: Option<&Path>, sock: &Path) -> Res<bool> {
    handoff::block_upgrade_signals();
    let options = HandoffOptions::new().threads(2);
    let mut out = std::io::stdout().lock();
    let (running, listener): (Running<MemFs>, _) = match mnt {
        Some(mnt) => {
            let listener = UpgradeListener::bind(sock)?;
            let uid = nix::unistd::geteuid().as_raw();
            let gid = nix::unistd::getegid().as_raw();
            let fs = MemFs::new(uid, gid, 1 << 30, fs::Config::default());
            let opts = MountOptions::new()
                .fsname("memfs")
                .subtype("memfs")
                .default_permissions(true);
            let running = Server::mount(fs, mnt, &opts)?.spawn(2)?;
            writeln!(out, "ready {}", mnt.display())?;
            (running, listener)
        }
        None => {
            let (running, stats) = handoff::take_over::<MemFs>(sock, &options)?;
            let listener = UpgradeListener::bind_replacing(sock)?;
            let mnt = running.mountpoint().unwrap_or_default();
            writeln!(out, "ready {}", mnt.display())?;
            writeln!(
                out,
                "handoff stall_us={} restore_us={} bytes={} nodes={} handles={} precopy_bytes={}",
                stats.stall.as_micros(),
                stats.restore.as_micros(),
                stats.snapshot_bytes,
                stats.nodes,
                stats.handles,
                stats.precopy_bytes
            )?;
            (running, listener)
        }
    };
    out.flush()?;
    drop(out);
    let ended = handoff::serve_with_upgrades(&running, Some(&listener), &options, |_| {})?;
    Ok(matches!(
        ended,
        Ended::HandedOff(_) | Ended::Signal(_) | Ended::Unmounted
    ))
}

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
    daemon: Option<Child>,
    workers: Vec<Child>,
    watchdog: Option<Watchdog>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(mut d) = self.daemon.take() {
            stop_process(&mut d, &self.mnt, Duration::from_secs(10));
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

/// Starts this program with `args` as a daemon; returns it and its stdout lines.
fn spawn_daemon(args: &[&Path], log: &Path) -> Res<(Child, mpsc::Receiver<String>)> {
    Ok(spawn_with_lines(
        Command::new(std::env::current_exe()?).args(args),
        log,
    )?)
}

fn expect_ready(rx: &mpsc::Receiver<String>, log: &Path) -> Res<()> {
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) if l.starts_with("ready ") => Ok(()),
        _ => Err(format!(
            "the daemon did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default().trim()
        )
        .into()),
    }
}

fn demo(svg: Option<&Path>) -> Res<bool> {
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        return Err("needs root and /dev/fuse (it mounts with mount(2))".into());
    }
    let dir = std::env::temp_dir().join(format!("fuse-live-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt)?;
    let mut c = Cleanup {
        dir: dir.clone(),
        mnt: mnt.clone(),
        daemon: None,
        workers: Vec::new(),
        watchdog: Some(Watchdog::arm(&mnt, None, Duration::from_secs(120))?),
    };
    let sock = dir.join("upgrade.sock");
    let log = |n: usize| dir.join(format!("daemon-{n}.log"));

    let (d, rx) = spawn_daemon(&[Path::new("--daemon"), &mnt, &sock], &log(0))?;
    c.daemon = Some(d);
    expect_ready(&rx, &log(0))?;
    println!(
        "mounted memfs at {} (daemon pid {})",
        mnt.display(),
        c.daemon.as_ref().map_or(0, Child::id)
    );

    let stop = dir.join("stop");
    let exe = std::env::current_exe()?;
    let load_start = loadavg();
    let t0 = SystemTime::now();
    let timings = |id: usize| dir.join(format!("timings-{id}"));
    for id in 0..WORKERS {
        let mut cmd = Command::new(&exe);
        cmd.arg("--worker")
            .arg(&mnt)
            .arg(id.to_string())
            .arg(&stop)
            .arg(dir.join(format!("result-{id}")));
        if svg.is_some() {
            cmd.arg(timings(id));
        }
        let w = cmd.stdin(Stdio::null()).spawn()?;
        c.workers.push(w);
    }
    println!("workload: {WORKERS} processes creating, writing, verifying, renaming, listing");

    let (mut longest, mut snapshot_bytes, mut nodes, mut handles) = (0u64, 0u64, 0u64, 0u64);
    let mut precopy_bytes = 0u64;
    // Per handoff: (window start, ready, window end, stall).
    let mut events: Vec<(SystemTime, SystemTime, SystemTime, u64)> = Vec::new();
    for n in 1..=HANDOFFS {
        std::thread::sleep(Duration::from_millis(500));
        let start = SystemTime::now();
        let (next, rx) = spawn_daemon(&[Path::new("--takeover"), &sock], &log(n))?;
        let mut old = c.daemon.replace(next).ok_or("no daemon")?;
        expect_ready(&rx, &log(n))?;
        let ready = SystemTime::now();
        let stats = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "no handoff statistics")?;
        let st = wait_exit(&mut old, Duration::from_secs(30)).ok_or("old daemon did not exit")?;
        if !st.success() {
            return Err(format!("the old daemon exited with {st}").into());
        }
        let stall = field(&stats, "stall_us");
        events.push((start, ready, SystemTime::now(), stall));
        longest = longest.max(stall);
        snapshot_bytes = field(&stats, "bytes");
        nodes = field(&stats, "nodes");
        handles = field(&stats, "handles");
        precopy_bytes = field(&stats, "precopy_bytes");
        println!(
            "handoff {n}: pid {} -> pid {}: {} nodeids, {} open handles, {} bytes pre-copied \
             while serving, {} bytes of changes under the pause, stall {:.2} ms",
            old.id(),
            c.daemon.as_ref().map_or(0, Child::id),
            nodes,
            handles,
            precopy_bytes,
            snapshot_bytes,
            stall as f64 / 1000.0
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    File::create(&stop)?;
    let (mut ops, mut failed, mut bytes) = (0u64, 0u64, 0u64);
    for (id, mut w) in std::mem::take(&mut c.workers).into_iter().enumerate() {
        let st = wait_exit(&mut w, Duration::from_secs(30));
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
    if let Some(path) = svg {
        let ops: Vec<chart::Op> = (0..WORKERS)
            .flat_map(|id| read_timings(&timings(id), t0))
            .collect();
        let secs = |t: SystemTime| t.duration_since(t0).unwrap_or_default().as_secs_f64();
        let events = events
            .iter()
            .enumerate()
            .map(|(i, (a, r, b, stall))| {
                let stall = *stall as f64 / 1e6;
                chart::Event {
                    window: (secs(*a), secs(*b)),
                    pause: Some((secs(*r) - stall, secs(*r))),
                    label: format!("handoff {}: pause {}", i + 1, chart::fmt_secs(stall)),
                }
            })
            .collect();
        let longest_op = ops.iter().map(|o| o.latency_s).fold(0.0, f64::max);
        let chart = chart::Timeline {
            title: "Workload operation latency across live handoffs (demo)".into(),
            caption: vec![
                format!(
                    "{} operations of {WORKERS} worker processes (create + write, read back, rename, stat, readdir, held-file write + read, unlink), {} failed",
                    chart::thousands(ops.len() as f64),
                    ops.iter().filter(|o| !o.ok).count()
                ),
                format!(
                    "longest {}; memfs, the daemon replaced {HANDOFFS} times; a shared machine, load average {load_start} at the start, {} at the end",
                    chart::fmt_secs(longest_op),
                    loadavg()
                ),
            ],
            ops,
            events,
        };
        std::fs::write(path, chart.render())?;
        println!("timeline written to {}", path.display());
    }
    println!();
    println!("report:");
    println!("  daemon replaced {HANDOFFS} times, each by a new process, mid-workload");
    println!(
        "  operations: {ops} done, {failed} failed; {:.1} MiB written and verified",
        bytes as f64 / f64::from(1 << 20)
    );
    println!(
        "  longest stall: {:.2} ms (pause to the new process serving)",
        longest as f64 / 1000.0
    );
    println!(
        "  last handoff: {precopy_bytes} bytes pre-copied while serving, then {snapshot_bytes} \
         bytes under the pause ({nodes} nodeids, {handles} open handles)"
    );
    // Unmount: SIGTERM the current daemon, which unmounts and exits.
    if let Some(mut d) = c.daemon.take() {
        let pid = nix::unistd::Pid::from_raw(d.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let st = wait_exit(&mut d, Duration::from_secs(30)).ok_or("daemon did not exit")?;
        if !st.success() {
            return Err(format!("the daemon exited with {st}").into());
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
    Ok(failed == 0)
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
