//! Crash recovery end to end: `fuse-live-keeper -- memfs MOUNTPOINT` on a real
//! mount, a workload in child processes (creates, writes checked byte for byte,
//! renames, unlinks, listings, a file held open across every crash and written
//! with pwrite/pread), while the daemon is SIGKILLed at random instants again and
//! again. Every application call must succeed, every byte must read back, and the
//! mount and its FUSE connection must stay the same ones.
//!
//! The workers are this test binary run again (`crash_worker`, which does nothing
//! unless `FUSE_LIVE_CRASH_WORKER` is set): separate processes, as applications are.
mod common;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuse_live::session::dev::fusectl::{self, Watchdog};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);
const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");
const WORKER_ENV: &str = "FUSE_LIVE_CRASH_WORKER";
/// Kills per run (`FUSE_LIVE_CRASH_KILLS` overrides). `CRASH_RUST_LOG` sets the
/// keeper's and memfs's log level (default `warn`).
const KILLS: u32 = 50;
const WORKERS: u32 = 3;
const HELD_BLOCKS: u64 = 16;
const BLOCK: usize = 4096;

/// A small deterministic generator (xorshift), seeded per run and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The contents of file `n` of worker `w`: length and bytes derived from both.
fn contents(w: u32, n: u64) -> Vec<u8> {
    let seed = (u64::from(w) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let len = 1 + (seed % 20_000) as usize;
    common::pattern(seed, len)
}

fn held_block(w: u32, i: u64) -> Vec<u8> {
    common::pattern((u64::from(w) << 40) ^ (i + 1), BLOCK)
}

/// One worker: runs until `stop` exists in the mount, checking every result.
/// Returns the number of operations, or what failed.
fn work(dir: &Path, w: u32, stop: &Path) -> Result<u64, String> {
    let e = |what: String| move |err: std::io::Error| format!("{what}: {err}");
    std::fs::create_dir(dir).map_err(e(format!("mkdir {}", dir.display())))?;
    let held_path = dir.join("held");
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&held_path)
        .map_err(e("create held".into()))?;
    let mut model = vec![0u8; HELD_BLOCKS as usize * BLOCK];
    held.set_len(model.len() as u64)
        .map_err(e("truncate held".into()))?;
    let mut ops = 3u64;
    let mut live: BTreeSet<String> = BTreeSet::new();
    live.insert("held".into());
    let mut n = 0u64;
    while !stop.exists() {
        n += 1;
        // Create and write, then read back.
        let data = contents(w, n);
        let f = dir.join(format!("f{n}"));
        {
            let mut file = File::create(&f).map_err(e(format!("create f{n}")))?;
            file.write_all(&data).map_err(e(format!("write f{n}")))?;
        }
        let back = std::fs::read(&f).map_err(e(format!("read f{n}")))?;
        if back != data {
            return Err(format!("f{n}: read back differs from what was written"));
        }
        // Rename, and the old name must be gone.
        let g = dir.join(format!("g{n}"));
        std::fs::rename(&f, &g).map_err(e(format!("rename f{n}")))?;
        if f.exists() {
            return Err(format!("f{n} still exists after its rename"));
        }
        live.insert(format!("g{n}"));
        // Unlink the one before.
        if n > 1 && n % 2 == 0 {
            let old = format!("g{}", n - 1);
            std::fs::remove_file(dir.join(&old)).map_err(e(format!("unlink {old}")))?;
            live.remove(&old);
            ops += 1;
        }
        // The file held open across every crash: pwrite a block, pread it.
        let blk = n % HELD_BLOCKS;
        let bytes = held_block(w, n);
        held.write_all_at(&bytes, blk * BLOCK as u64)
            .map_err(e(format!("pwrite held block {blk}")))?;
        model[blk as usize * BLOCK..][..BLOCK].copy_from_slice(&bytes);
        let mut got = vec![0u8; BLOCK];
        held.read_exact_at(&mut got, blk * BLOCK as u64)
            .map_err(e(format!("pread held block {blk}")))?;
        if got != bytes {
            return Err(format!("held block {blk}: read back differs"));
        }
        // The listing is exactly what this worker made.
        let listed: BTreeSet<String> = std::fs::read_dir(dir)
            .map_err(e("readdir".into()))?
            .map(|d| d.map(|d| d.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(e("readdir entry".into()))?;
        if listed != live {
            return Err(format!("listing {listed:?}, expected {live:?}"));
        }
        ops += 7;
    }
    // Everything this worker left must read back whole.
    for name in &live {
        let got = std::fs::read(dir.join(name)).map_err(e(format!("final read {name}")))?;
        let want = match name.strip_prefix('g') {
            Some(k) => contents(w, k.parse().map_err(|_| format!("bad name {name}"))?),
            None => model.clone(),
        };
        if got != want {
            return Err(format!("{name}: final contents differ"));
        }
        ops += 1;
    }
    let mut all = Vec::new();
    (&held)
        .read_to_end(&mut all)
        .map_err(e("read held through its descriptor".into()))?;
    if all != model {
        return Err("held: contents through the held descriptor differ".into());
    }
    Ok(ops + 1)
}

/// The worker's entry point in the re-run test binary.
#[test]
fn crash_worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let mut it = spec.splitn(3, ':');
    let w: u32 = it
        .next()
        .and_then(|s| s.parse().ok())
        .expect("worker number");
    let dir = PathBuf::from(it.next().expect("dir"));
    let stop = PathBuf::from(it.next().expect("stop file"));
    match work(&dir, w, &stop) {
        Ok(ops) => println!("\nops {ops}"),
        Err(e) => {
            println!("\nfailed {e}");
            std::process::exit(1);
        }
    }
}

fn spawn_worker(w: u32, dir: &Path, stop: &Path) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "crash_worker",
        "--exact",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(
        WORKER_ENV,
        format!("{w}:{}:{}", dir.display(), stop.display()),
    )
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
    cmd.spawn().expect("spawn a worker")
}

/// The mount id (first field of `/proc/self/mountinfo`) of the mount at `path`.
fn mount_id(path: &Path) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&want))
            .then(|| f[0].parse().ok())
            .flatten()
    })
}

fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Stops the keeper (SIGTERM, then SIGKILL) and tears the mount down if left.
struct Cleanup {
    keeper: Option<Child>,
    workers: Vec<Child>,
    mnt: PathBuf,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(mut c) = self.keeper.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if common::is_fuse_mounted(&self.mnt) {
            let _ = fusectl::tear_down(&self.mnt, None);
        }
        if !common::is_fuse_mounted(&self.mnt) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn memfs_survives_repeated_sigkill_under_the_keeper() {
    survives_repeated_sigkill("memfs_survives_repeated_sigkill_under_the_keeper", &[]);
}

/// The same without `NOTIFY_RESEND`: the requests each dead daemon had read and not
/// answered are answered from its request slots.
#[test]
fn memfs_survives_repeated_sigkill_without_resend() {
    survives_repeated_sigkill(
        "memfs_survives_repeated_sigkill_without_resend",
        &["--no-resend"],
    );
}

/// The kill -9 run, with `memfs_args` added to memfs's command line.
fn survives_repeated_sigkill(test: &str, memfs_args: &[&str]) {
    if std::env::var_os(WORKER_ENV).is_some() || !common::can_mount(test) {
        return;
    }
    let kills: u32 = std::env::var("FUSE_LIVE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("crash test {memfs_args:?}: {kills} kills, seed {seed}");
    let mut rng = Rng(seed);
    let dir = common::temp_dir("crash");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let log = dir.join("keeper.log");
    let memfs = common::example_binary("memfs");
    let mut cmd = Command::new(KEEPER);
    cmd.args(["--restart-limit", "100000", "--restart-window", "1", "--"])
        .arg(&memfs)
        .arg(&mnt)
        .args(["--threads", "2"])
        .args(memfs_args)
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
    let watchdog = Watchdog::arm(&mnt, None, Duration::from_secs(900)).expect("watchdog");
    let mut keeper = cmd.spawn().expect("spawn fuse-live-keeper");
    let out = keeper.stdout.take().expect("stdout");
    let keeper_pid = keeper.id();
    let mut guard = Cleanup {
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
    let next_ready = |what: &str| match lines.recv_timeout(PATIENCE) {
        Ok(l) => assert_eq!(l, ready, "{what}"),
        Err(e) => panic!("no ready line {what} ({e}); keeper log:\n{}", log_text()),
    };
    next_ready("at the first start");
    let conn = fusectl::connection_id(&mnt).expect("fusectl connection");
    let id = mount_id(&mnt).expect("mount id");

    let stop = dir.join("stop");
    for w in 0..WORKERS {
        let child = spawn_worker(w, &mnt.join(format!("w{w}")), &stop);
        guard.workers.push(child);
    }
    let mut daemons = BTreeSet::new();
    for k in 0..kills {
        // A random instant: a short sleep, often none (mid-request under load).
        let ms = match rng.next() % 4 {
            0 => 0,
            1 => rng.next() % 20,
            _ => rng.next() % 300,
        };
        std::thread::sleep(Duration::from_millis(ms));
        let now = children(keeper_pid);
        assert_eq!(now.len(), 1, "one daemon before kill {k}: {now:?}");
        daemons.insert(now[0]);
        kill(Pid::from_raw(now[0]), Signal::SIGKILL).expect("kill memfs");
        next_ready(&format!("after kill {}", k + 1));
        // A worker that failed ends early: stop at once with its message.
        for (w, c) in guard.workers.iter_mut().enumerate() {
            if let Some(st) = c.try_wait().expect("try_wait") {
                let mut out = String::new();
                if let Some(o) = c.stdout.as_mut() {
                    let _ = o.read_to_string(&mut out);
                }
                panic!(
                    "worker {w} ended during the kills ({st}): {out}\nkeeper log:\n{}",
                    log_text()
                );
            }
        }
    }
    File::create(&stop).expect("stop file");
    let mut total = 0u64;
    for (w, c) in guard.workers.iter_mut().enumerate() {
        let mut out = String::new();
        c.stdout
            .as_mut()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("worker output");
        let st = c.wait().expect("wait worker");
        let ops = out
            .lines()
            .find_map(|l| l.strip_prefix("ops "))
            .and_then(|n| n.parse::<u64>().ok());
        assert!(
            st.success() && ops.is_some(),
            "worker {w} failed ({st}): {out}\nkeeper log:\n{}",
            log_text()
        );
        total += ops.unwrap_or(0);
    }
    guard.workers.clear();
    // memfs logs how each recovery got the requests in flight answered.
    let text = log_text();
    let field = |l: &str, name: &str| -> u64 {
        l.split(&format!("{name}: "))
            .nth(1)
            .and_then(|r| r.split([',', ' ']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (mut n, mut slots, mut answered, mut refused) = (0, 0, 0, 0);
    for l in text
        .lines()
        .filter(|l| l.contains("requests in flight at the crash"))
    {
        n += 1;
        if l.contains("how: Slots") {
            slots += 1;
            answered += field(l, "answered");
            refused += field(l, "refused");
        }
    }
    eprintln!(
        "crash test: {n} recoveries, {slots} from request slots: {answered} requests \
         answered from them, {refused} refused by the kernel"
    );
    eprintln!(
        "crash test: {kills} SIGKILLs survived, {total} operations by {WORKERS} workers, 0 failed"
    );
    assert_eq!(daemons.len(), kills as usize, "each kill hit a new daemon");
    assert_eq!(
        fusectl::connection_id(&mnt).expect("fusectl"),
        conn,
        "same connection"
    );
    assert_eq!(mount_id(&mnt), Some(id), "same mount");

    kill(Pid::from_raw(keeper_pid as i32), Signal::SIGTERM).expect("SIGTERM the keeper");
    let mut keeper = guard.keeper.take().expect("keeper");
    let st = common::wait_exit(&mut keeper, PATIENCE).expect("the keeper exits");
    assert_eq!(st.code(), Some(0), "keeper log:\n{}", log_text());
    assert!(!common::is_fuse_mounted(&mnt), "unmounted on SIGTERM");
    assert!(!watchdog.disarm(), "the watchdog fired");
    assert!(children(keeper_pid).is_empty());
}
