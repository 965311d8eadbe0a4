//! Benchmark: the stall a client sees while a daemon holding 100k nodeids is handed
//! over to a new process under load.
//!
//! ```text
//! cargo run --release --example handoff_bench -- [FILES] [HANDOFFS] [--svg PATH]
//!         [--transport auto|dev-fuse|io-uring]
//! ```
//!
//! Mounts memfs (a daemon process: this program run again with a hidden flag) with
//! a one-hour entry and attribute TTL, creates FILES files (default 100000) in 100
//! directories and stats them all, so that the kernel holds a nodeid for each. Then
//! client threads run a loop of operations that always reach the daemon (4 KiB
//! `pwrite` on a held file, create + unlink, `open` + `close`), timing each, while
//! the daemon is replaced HANDOFFS times (default 5). Prints the longest operation
//! during the handoffs (the client-visible stall), the same outside them, the
//! daemon-side stall and the snapshot size. Needs root and `/dev/fuse`.
//!
//! With `--svg PATH`, also writes a timeline of every client operation's latency
//! with the handoffs marked (each window, and its pause placed where the new
//! process reported ready) to PATH (`docs/bench/handoff-timeline.svg`).
//!
//! `--transport` picks how the first daemon serves (default `dev-fuse`, what the
//! figures so far were measured with), through `TransportKind::restartable`, as a
//! daemon that hands its mount off does: `auto` becomes `/dev/fuse` (which loses
//! no call in a handoff), and `io-uring` is handed off over io_uring (the ring
//! entries in a memfd passed on; docs/DESIGN.md). A transport the library could
//! not hand off would stop the benchmark before anything is mounted, with the
//! library's reason and exit code 1.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use fuse_live_testkit::{chart, field, spawn_with_lines, stop_process, wait_exit};
use fuse_session::dev::fusectl::{self, Watchdog};
use fuse_session::dev::MountOptions;
use fuse_session::serve::{Running, Server, TransportKind, UringOptions};
use fuse_snapshot::handoff::{self, HandoffOptions, UpgradeListener};

// memfs's own modules (the memfs workspace crate).
use memfs::fs;

use fs::MemFs;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match args.as_slice() {
        ["--daemon", mnt, sock, kind] => match kind.parse() {
            Ok(kind) => daemon(Some((Path::new(mnt), kind)), Path::new(sock)),
            Err(e) => Err(e.into()),
        },
        ["--takeover", sock] => daemon(None, Path::new(sock)),
        rest => {
            let mut svg = None;
            let mut transport = Ok(TransportKind::DevFuse);
            let mut plain = Vec::new();
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                if *a == "--svg" {
                    svg = it.next().map(PathBuf::from);
                } else if *a == "--transport" {
                    transport = it
                        .next()
                        .ok_or_else(|| "--transport needs a value".to_owned())
                        .and_then(|v| v.parse::<TransportKind>());
                } else if let Some(v) = a.strip_prefix("--transport=") {
                    transport = v.parse();
                } else {
                    plain.push(*a);
                }
            }
            // As a daemon that hands its mount off decides, before mounting.
            let kind = transport.and_then(|t| t.restartable("live handoff (handoff_bench)"));
            match (rest.contains(&"--svg"), &svg, kind) {
                (true, None, _) => Err("--svg needs a path".into()),
                (_, _, Err(e)) => Err(e.into()),
                (_, _, Ok(kind)) => {
                    let files = plain
                        .first()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(100_000);
                    let handoffs = plain.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
                    bench(files, handoffs, svg.as_deref(), kind)
                }
            }
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon: as the demo's, with a one-hour TTL; the first one (`mnt` given)
/// serves through the transport given with it.
fn daemon(mnt: Option<(&Path, TransportKind)>, sock: &Path) -> Res<()> {
    handoff::block_upgrade_signals();
    let options = HandoffOptions::new().threads(2);
    let mut out = std::io::stdout().lock();
    let (running, listener): (Running<MemFs>, _) = match mnt {
        Some((mnt, kind)) => {
            let listener = UpgradeListener::bind(sock)?;
            let config = fs::Config {
                ttl: Duration::from_secs(3600),
            };
            // 8 GiB: room for 2M inodes (memfs allows one per 4 KiB of capacity).
            let fs = MemFs::new(0, 0, 1 << 33, config);
            let opts = MountOptions::new().fsname("memfs").subtype("memfs");
            let server = Server::mount(fs, mnt, &opts)?;
            let running = if kind == TransportKind::IoUring {
                // The entries in a memfd the handoff passes on (as memfs does).
                let mut o = UringOptions::default();
                o.required = true;
                o.restartable = true;
                server.spawn_uring(&o)?
            } else {
                server.spawn_with(kind, 2)?
            };
            writeln!(out, "ready")?;
            (running, listener)
        }
        None => {
            let (running, s) = handoff::take_over::<MemFs>(sock, &options)?;
            let listener = UpgradeListener::bind_replacing(sock)?;
            writeln!(out, "ready")?;
            writeln!(
                out,
                "stats stall_us={} snapshot_sent_us={} transfer_us={} restore_us={} bytes={} nodes={} handles={} precopy_us={} precopy_bytes={} rounds={}",
                s.stall.as_micros(),
                s.snapshot_sent.as_micros(),
                s.transfer.as_micros(),
                s.restore.as_micros(),
                s.snapshot_bytes,
                s.nodes,
                s.handles,
                s.precopy.as_micros(),
                s.precopy_bytes,
                s.precopy_rounds
            )?;
            (running, listener)
        }
    };
    out.flush()?;
    drop(out);
    let ended = handoff::serve_with_upgrades(&running, Some(&listener), &options, |_| {})?;
    if let handoff::Ended::HandedOff(o) = ended {
        let s = o.stats;
        eprintln!(
            "old parked_us={} encode_us={} snapshot_sent_us={} stall_us={}",
            s.parked_in.as_micros(),
            s.encode.as_micros(),
            s.snapshot_sent.as_micros(),
            s.stall.as_micros()
        );
    }
    Ok(())
}

fn spawn(args: &[&Path], log: &Path) -> Res<(Child, mpsc::Receiver<String>)> {
    Ok(spawn_with_lines(
        Command::new(std::env::current_exe()?).args(args),
        log,
    )?)
}

struct Cleanup {
    dir: PathBuf,
    mnt: PathBuf,
    daemon: Option<Child>,
    watchdog: Option<Watchdog>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            stop_process(&mut d, &self.mnt, Duration::from_secs(20));
        }
        let _ = fusectl::tear_down(&self.mnt, None);
        drop(self.watchdog.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Timed operations: (end time, duration, succeeded) of each.
type Samples = Arc<Mutex<Vec<(Instant, Duration, bool)>>>;

fn client(mnt: PathBuf, id: usize, stop: Arc<AtomicBool>, samples: Samples) -> u64 {
    let held = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(mnt.join(format!("client-{id}")));
    let Ok(held) = held else {
        return 1;
    };
    let block = vec![id as u8; 4096];
    let mut failed = 0;
    let mut local = Vec::with_capacity(1 << 16);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let ok = match i % 3 {
            0 => held.write_all_at(&block, (i % 256) * 4096).is_ok(),
            1 => {
                let p = mnt.join(format!("tmp-{id}"));
                std::fs::write(&p, b"x").is_ok() && std::fs::remove_file(&p).is_ok()
            }
            _ => File::open(mnt.join("d0/f0")).is_ok(),
        };
        let end = Instant::now();
        local.push((end, end - t, ok));
        if !ok {
            failed += 1;
        }
        i += 1;
    }
    if let Ok(mut s) = samples.lock() {
        s.extend(local);
    }
    failed
}

fn bench(files: usize, handoffs: usize, svg: Option<&Path>, kind: TransportKind) -> Res<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root and /dev/fuse".into());
    }
    let dir = std::env::temp_dir().join(format!("fuse-live-hbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt)?;
    let mut c = Cleanup {
        dir: dir.clone(),
        mnt: mnt.clone(),
        daemon: None,
        watchdog: Some(Watchdog::arm(&mnt, None, Duration::from_secs(900))?),
    };
    let sock = dir.join("upgrade.sock");
    let kind = match kind {
        TransportKind::Auto => "auto",
        TransportKind::IoUring => "io-uring",
        _ => "dev-fuse",
    };
    println!("transport: {kind}");
    let (d, rx) = spawn(
        &[Path::new("--daemon"), &mnt, &sock, Path::new(kind)],
        &dir.join("daemon-0.log"),
    )?;
    c.daemon = Some(d);
    rx.recv_timeout(Duration::from_secs(30))
        .map_err(|_| "the daemon did not start")?;

    let t = Instant::now();
    let per_dir = files.div_ceil(100).max(1);
    for n in 0..files {
        let d = mnt.join(format!("d{}", n / per_dir));
        if n % per_dir == 0 {
            std::fs::create_dir(&d)?;
        }
        File::create(d.join(format!("f{}", n % per_dir)))?;
    }
    let mut seen = 0;
    for n in 0..files {
        let p = mnt.join(format!("d{}/f{}", n / per_dir, n % per_dir));
        std::fs::metadata(p)?;
        seen += 1;
    }
    println!(
        "created and stat'ed {seen} files in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let load_start = loadavg();
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let clients: Vec<_> = (0..2)
        .map(|id| {
            let (m, s, v) = (mnt.clone(), Arc::clone(&stop), Arc::clone(&samples));
            std::thread::spawn(move || client(m, id, s, v))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut windows = Vec::new();
    // When each new process reported ready (the end of its pause).
    let mut readies = Vec::new();
    let mut stats = Vec::new();
    for n in 1..=handoffs {
        let start = Instant::now();
        let (next, rx) = spawn(
            &[Path::new("--takeover"), &sock],
            &dir.join(format!("daemon-{n}.log")),
        )?;
        let mut old = c.daemon.replace(next).ok_or("no daemon")?;
        rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            format!(
                "takeover {n} failed: {}",
                std::fs::read_to_string(dir.join(format!("daemon-{n}.log"))).unwrap_or_default()
            )
        })?;
        readies.push(Instant::now());
        let line = rx.recv_timeout(Duration::from_secs(5))?;
        wait_exit(&mut old, Duration::from_secs(60)).ok_or("the old daemon did not exit")?;
        windows.push((start, Instant::now()));
        let old_log = std::fs::read_to_string(dir.join(format!("daemon-{}.log", n - 1)))?;
        let old_line = old_log
            .lines()
            .find(|l| l.starts_with("old "))
            .unwrap_or("");
        stats.push(format!("{line} {old_line}"));
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    let failed: u64 = clients.into_iter().map(|h| h.join().unwrap_or(1)).sum();
    let samples = samples.lock().map_err(|_| "poisoned")?.clone();
    let (mut during, mut outside) = (Duration::ZERO, Vec::new());
    // Per window: the longest operation overlapping it, and when it started
    // (relative to the window's start, negative if before).
    let mut worst = vec![(Duration::ZERO, 0f64); windows.len()];
    for (end, d, _) in &samples {
        let start = *end - *d;
        // An operation that overlaps a handoff window (from spawning the new process
        // until the old one exited).
        match windows.iter().position(|(a, b)| start < *b && *end > *a) {
            Some(w) => {
                during = during.max(*d);
                if *d > worst[w].0 {
                    let a = windows[w].0;
                    let at = if start >= a {
                        (start - a).as_secs_f64()
                    } else {
                        -(a - start).as_secs_f64()
                    };
                    worst[w] = (*d, at * 1e3);
                }
            }
            None => outside.push(*d),
        }
    }
    outside.sort();
    let pct = |p: f64| {
        outside
            .get(((outside.len() as f64 * p) as usize).min(outside.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "client operations: {} ({} failed); outside handoffs p50 {:?} p99 {:?} max {:?}",
        samples.len(),
        failed,
        pct(0.5),
        pct(0.99),
        outside.last().copied().unwrap_or_default()
    );
    println!("longest client operation overlapping a handoff: {during:?}");
    for (i, l) in stats.iter().enumerate() {
        println!(
            "handoff {}: daemon-side stall {:.1} ms (parked in {:.1} ms, encoded in {:.1} ms, \
             snapshot sent after {:.1} ms, transfer {:.1} ms, restore {:.1} ms), \
             {} snapshot bytes, {} nodeids, {} handles; before the pause: pre-copy of {} \
             bytes ({} rounds) in {:.1} ms; window {:.0} ms, longest client operation {:.1} ms from \
             {:+.1} ms",
            i + 1,
            field(l, "stall_us") as f64 / 1e3,
            field(l, "parked_us") as f64 / 1e3,
            field(l, "encode_us") as f64 / 1e3,
            field(l, "snapshot_sent_us") as f64 / 1e3,
            field(l, "transfer_us") as f64 / 1e3,
            field(l, "restore_us") as f64 / 1e3,
            field(l, "bytes"),
            field(l, "nodes"),
            field(l, "handles"),
            field(l, "precopy_bytes"),
            field(l, "rounds"),
            field(l, "precopy_us") as f64 / 1e3,
            (windows[i].1 - windows[i].0).as_secs_f64() * 1e3,
            worst[i].0.as_secs_f64() * 1e3,
            worst[i].1
        );
    }
    if let Some(path) = svg {
        let chart = timeline(&samples, t0, &windows, &readies, &stats, failed, files);
        let load = format!(
            "load average {load_start} at the start, {} at the end",
            loadavg()
        );
        write_timeline(path, chart, &load)?;
        println!("timeline written to {}", path.display());
    }
    if failed > 0 {
        return Err(format!("{failed} client operations failed").into());
    }
    Ok(())
}

/// The 1-minute load average ("?" if unknown).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The latency timeline of a run: every client operation from `t0` on, each
/// handoff's window and its pause (the daemon-side stall, ending when the new
/// process reported ready).
fn timeline(
    samples: &[(Instant, Duration, bool)],
    t0: Instant,
    windows: &[(Instant, Instant)],
    readies: &[Instant],
    stats: &[String],
    failed: u64,
    files: usize,
) -> chart::Timeline {
    let secs = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let ops: Vec<chart::Op> = samples
        .iter()
        .filter(|(end, ..)| *end >= t0)
        .map(|(end, d, ok)| chart::Op {
            end_s: secs(*end),
            latency_s: d.as_secs_f64(),
            ok: *ok,
        })
        .collect();
    let windows_s: Vec<(f64, f64)> = windows.iter().map(|(a, b)| (secs(*a), secs(*b))).collect();
    // The longest operation overlapping each window, and the operations outside all.
    let mut worst = vec![0f64; windows_s.len()];
    let mut outside = Vec::new();
    for o in &ops {
        let start = o.end_s - o.latency_s;
        match windows_s
            .iter()
            .position(|(a, b)| start < *b && o.end_s > *a)
        {
            Some(w) => worst[w] = worst[w].max(o.latency_s),
            None => outside.push(o.latency_s),
        }
    }
    outside.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        outside
            .get(((outside.len() as f64 * p) as usize).min(outside.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let events = windows_s
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let stall = stats.get(i).map_or(0, |l| field(l, "stall_us")) as f64 / 1e6;
            let ready = readies.get(i).map(|r| secs(*r));
            chart::Event {
                window: *w,
                pause: ready.map(|r| (r - stall, r)),
                label: format!(
                    "handoff {}: pause {}, longest op {}",
                    i + 1,
                    chart::fmt_secs(stall),
                    chart::fmt_secs(worst[i])
                ),
            }
        })
        .collect();
    let caption = vec![
        format!(
            "{} client operations (2 threads: 4 KiB pwrite, create + unlink, open + close), {} failed",
            chart::thousands(ops.len() as f64),
            failed,
        ),
        format!(
            "outside the handoffs: p50 {}, p99 {}, longest {}; longest overlapping a handoff {}",
            chart::fmt_secs(pct(0.5)),
            chart::fmt_secs(pct(0.99)),
            chart::fmt_secs(outside.last().copied().unwrap_or_default()),
            chart::fmt_secs(worst.iter().copied().fold(0.0, f64::max)),
        ),
        format!(
            "memfs with {files} files stat'ed (a nodeid each), the daemon replaced {} times with pre-copy",
            windows.len()
        ),
    ];
    chart::Timeline {
        title: "Client operation latency across live handoffs (handoff_bench)".into(),
        ops,
        events,
        caption,
    }
}

/// Writes the timeline with the machine's load in its caption.
fn write_timeline(path: &Path, mut chart: chart::Timeline, load: &str) -> Res<()> {
    chart.caption.push(format!(
        "a shared 2-core KVM guest, {load}; band: handoff window (new process started until the old one exited)"
    ));
    std::fs::write(path, chart.render())?;
    Ok(())
}
