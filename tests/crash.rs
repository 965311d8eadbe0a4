//! Crash recovery end to end: `fuse-live-keeper -- memfs MOUNTPOINT` on a real
//! mount, a workload in child processes, while the daemon is SIGKILLed at random
//! instants again and again: sometimes while it serves under load, sometimes right
//! after it said it is ready, sometimes while it is still recovering from the kill
//! before (two kills in quick succession). Every application call must succeed,
//! every byte must read back, and the mount and its FUSE connection must stay the
//! same ones.
//!
//! The workload, per worker process: creates written and read back byte for byte,
//! renames to new names, over existing names and across directories, unlinks,
//! mkdir and rmdir (and rmdir of a non-empty directory refused), every listing
//! checked against a model of what the worker made, a file held open across every
//! crash and written with pwrite/pread, and an `O_APPEND` file held open across
//! every crash whose records must all be there once each, in order. One more worker
//! uses the mount only through bind mounts of a directory and of a file of it,
//! made outside the mount (the LXCFS pattern: containers see a FUSE file through a
//! bind mount): creates, renames, unlinks, listings and pwrite/pread through the
//! binds, checked at the end through the binds and through the mount itself.
//!
//! The workers are this test binary run again (`crash_worker`, which does nothing
//! unless `FUSE_LIVE_CRASH_WORKER` is set): separate processes, as applications are.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuse_session::dev::fusectl::{self, Watchdog};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);
const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");
const WORKER_ENV: &str = "FUSE_LIVE_CRASH_WORKER";
/// Kills per run (`FUSE_LIVE_CRASH_KILLS` overrides). `CRASH_RUST_LOG` sets the
/// keeper's and memfs's log level (default `warn`).
const KILLS: u32 = 50;
/// Workers on the mount's own paths; one more works through the bind mounts.
const WORKERS: u32 = 3;
const HELD_BLOCKS: u64 = 16;
const BLOCK: usize = 4096;
/// A worker keeps at most this many files and subdirectories (then it removes).
const MAX_FILES: usize = 40;
const MAX_DIRS: usize = 6;
/// One record of the `O_APPEND` file: fixed length, numbered, checksummed.
const RECORD: usize = 36;

/// The contents of file `n` of worker `w`: length and bytes derived from both.
fn contents(w: u32, n: u64) -> Vec<u8> {
    let seed = (u64::from(w) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let len = 1 + (seed % 20_000) as usize;
    common::pattern(seed, len)
}

fn held_block(w: u32, i: u64) -> Vec<u8> {
    common::pattern((u64::from(w) << 40) ^ (i + 1), BLOCK)
}

/// Record `n` of worker `w`'s append file.
fn record(w: u32, n: u64) -> Vec<u8> {
    let sum = common::pattern((u64::from(w) << 48) ^ n, 8)
        .iter()
        .fold(0u64, |a, &b| (a << 8) | u64::from(b));
    let r = format!("{w:02} {n:016} {:016x}\n", sum & 0xffff_ffff_ffff);
    let mut r = r.into_bytes();
    r.resize(RECORD, b'.');
    r[RECORD - 1] = b'\n';
    r
}

fn err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> String {
    let what = what.into();
    move |e| format!("{what}: {e}")
}

/// The names in directory `dir`.
fn listing(dir: &Path) -> Result<BTreeSet<String>, String> {
    std::fs::read_dir(dir)
        .map_err(err(format!("readdir {}", dir.display())))?
        .map(|d| d.map(|d| d.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(err(format!("readdir entry of {}", dir.display())))
}

/// What a tree worker made: files by (directory, name) with the number of their
/// contents, and its subdirectories (one level: "" is the worker's own directory).
#[derive(Default)]
struct Model {
    files: BTreeMap<(String, String), u64>,
    dirs: BTreeSet<String>,
}

impl Model {
    fn path(root: &Path, d: &str, name: &str) -> PathBuf {
        if d.is_empty() {
            root.join(name)
        } else {
            root.join(d).join(name)
        }
    }

    /// What `d` must list (the root also holds "held", "append" and the subdirs).
    fn expected(&self, d: &str) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .files
            .keys()
            .filter(|(dir, _)| dir == d)
            .map(|(_, n)| n.clone())
            .collect();
        if d.is_empty() {
            names.extend(["held".to_string(), "append".to_string()]);
            names.extend(self.dirs.iter().filter(|s| !s.is_empty()).cloned());
        }
        names
    }

    fn pick_file(&self, rng: &mut common::Rng) -> Option<(String, String)> {
        let k = self.files.len();
        (k > 0).then(|| self.files.keys().nth(rng.below(k)).cloned())?
    }

    fn pick_dir(&self, rng: &mut common::Rng) -> String {
        let k = self.dirs.len();
        self.dirs
            .iter()
            .nth(rng.below(k))
            .cloned()
            .unwrap_or_default()
    }
}

/// A worker on its own directory of the mount: runs until `stop` exists, checking
/// every result. Returns the number of operations, or what failed.
fn work_tree(root: &Path, w: u32, stop: &Path) -> Result<u64, String> {
    std::fs::create_dir(root).map_err(err(format!("mkdir {}", root.display())))?;
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(root.join("held"))
        .map_err(err("create held"))?;
    let mut held_model = vec![0u8; HELD_BLOCKS as usize * BLOCK];
    held.set_len(held_model.len() as u64)
        .map_err(err("truncate held"))?;
    let mut append = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(root.join("append"))
        .map_err(err("create append"))?;
    let mut rng = common::Rng(0x5eed_0000 + u64::from(w) * 7919);
    let mut m = Model::default();
    m.dirs.insert(String::new());
    let mut ops = 4u64;
    let mut n = 0u64;
    while !stop.exists() {
        n += 1;
        // Create and write in some directory, then read back.
        let d = m.pick_dir(&mut rng);
        let name = format!("f{n}");
        let f = Model::path(root, &d, &name);
        let data = contents(w, n);
        {
            let mut file = File::create(&f).map_err(err(format!("create {d}/{name}")))?;
            file.write_all(&data)
                .map_err(err(format!("write {d}/{name}")))?;
        }
        if std::fs::read(&f).map_err(err(format!("read {d}/{name}")))? != data {
            return Err(format!(
                "{d}/{name}: read back differs from what was written"
            ));
        }
        m.files.insert((d.clone(), name), n);
        ops += 3;
        // One of: rename over an existing name, rename into another directory,
        // rename to a new name, unlink. Always unlink when there are too many.
        let choice = if m.files.len() > MAX_FILES {
            3
        } else {
            rng.below(4)
        };
        if let Some(a) = m.pick_file(&mut rng) {
            let from = Model::path(root, &a.0, &a.1);
            let target = match choice {
                0 => m.pick_file(&mut rng).filter(|b| *b != a),
                1 => {
                    let d2 = m.pick_dir(&mut rng);
                    Some((d2, format!("r{n}")))
                }
                2 => Some((a.0.clone(), format!("n{n}"))),
                _ => None,
            };
            match target {
                Some(b) => {
                    let to = Model::path(root, &b.0, &b.1);
                    std::fs::rename(&from, &to)
                        .map_err(err(format!("rename {}/{} -> {}/{}", a.0, a.1, b.0, b.1)))?;
                    let id = m.files.remove(&a).unwrap_or_default();
                    m.files.insert(b.clone(), id);
                    if from.exists() {
                        return Err(format!("{}/{} still exists after its rename", a.0, a.1));
                    }
                    let got = std::fs::read(&to).map_err(err(format!("read {}/{}", b.0, b.1)))?;
                    if got != contents(w, id) {
                        return Err(format!("{}/{}: contents differ after a rename", b.0, b.1));
                    }
                    ops += 3;
                }
                None if choice == 3 => {
                    std::fs::remove_file(&from).map_err(err(format!("unlink {}/{}", a.0, a.1)))?;
                    m.files.remove(&a);
                    ops += 1;
                }
                None => {}
            }
        }
        // mkdir now and then; rmdir: a non-empty one is refused, an empty one goes.
        if n % 5 == 0 && m.dirs.len() <= MAX_DIRS {
            let s = format!("s{n}");
            std::fs::create_dir(root.join(&s)).map_err(err(format!("mkdir {s}")))?;
            m.dirs.insert(s);
            ops += 1;
        } else if n % 5 == 3 && m.dirs.len() > 1 {
            let mut s = m.pick_dir(&mut rng);
            if s.is_empty() {
                s = m.dirs.iter().next_back().cloned().unwrap_or_default();
            }
            let inside: Vec<(String, String)> =
                m.files.keys().filter(|(d, _)| *d == s).cloned().collect();
            if !inside.is_empty() {
                match std::fs::remove_dir(root.join(&s)) {
                    Err(e) if e.raw_os_error() == Some(libc_enotempty()) => {}
                    other => return Err(format!("rmdir of non-empty {s}: {other:?}")),
                }
                for k in inside {
                    std::fs::remove_file(Model::path(root, &k.0, &k.1))
                        .map_err(err(format!("unlink {}/{}", k.0, k.1)))?;
                    m.files.remove(&k);
                    ops += 1;
                }
            }
            std::fs::remove_dir(root.join(&s)).map_err(err(format!("rmdir {s}")))?;
            m.dirs.remove(&s);
            ops += 2;
        }
        // The file held open across every crash: pwrite a block, pread it.
        let blk = n % HELD_BLOCKS;
        let bytes = held_block(w, n);
        held.write_all_at(&bytes, blk * BLOCK as u64)
            .map_err(err(format!("pwrite held block {blk}")))?;
        held_model[blk as usize * BLOCK..][..BLOCK].copy_from_slice(&bytes);
        let mut got = vec![0u8; BLOCK];
        held.read_exact_at(&mut got, blk * BLOCK as u64)
            .map_err(err(format!("pread held block {blk}")))?;
        if got != bytes {
            return Err(format!("held block {blk}: read back differs"));
        }
        // The append file held open across every crash: one record per round.
        append
            .write_all(&record(w, n))
            .map_err(err(format!("append record {n}")))?;
        ops += 3;
        // The listing of the directory written to, and of the root, are the model.
        let written = if m.dirs.contains(&d) { d.as_str() } else { "" };
        for dir in [written, ""] {
            let listed = listing(&root.join(dir))?;
            let want = m.expected(dir);
            if listed != want {
                return Err(format!("listing of {dir:?}: {listed:?}, expected {want:?}"));
            }
            ops += 1;
            if dir.is_empty() {
                break;
            }
        }
    }
    // Everything this worker left must read back whole, and list exactly.
    for ((d, name), id) in &m.files {
        let got = std::fs::read(Model::path(root, d, name))
            .map_err(err(format!("final read {d}/{name}")))?;
        if got != contents(w, *id) {
            return Err(format!("{d}/{name}: final contents differ"));
        }
        ops += 1;
    }
    for d in &m.dirs {
        let listed = listing(&root.join(d))?;
        if listed != m.expected(d) {
            return Err(format!("final listing of {d:?}: {listed:?}"));
        }
        ops += 1;
    }
    if std::fs::read(root.join("held")).map_err(err("final read held"))? != held_model {
        return Err("held: final contents differ".into());
    }
    let mut all = Vec::new();
    (&held)
        .read_to_end(&mut all)
        .map_err(err("read held through its descriptor"))?;
    if all != held_model {
        return Err("held: contents through the held descriptor differ".into());
    }
    drop(append);
    let log = std::fs::read(root.join("append")).map_err(err("final read append"))?;
    if log.len() as u64 != n * RECORD as u64 {
        return Err(format!(
            "append: {} bytes, expected {n} records of {RECORD}",
            log.len()
        ));
    }
    for (i, r) in log.chunks(RECORD).enumerate() {
        if r != record(w, i as u64 + 1).as_slice() {
            return Err(format!(
                "append: record {} is {:?}",
                i + 1,
                String::from_utf8_lossy(r)
            ));
        }
    }
    Ok(ops + 4)
}

fn libc_enotempty() -> i32 {
    nix::errno::Errno::ENOTEMPTY as i32
}

/// The worker on the bind mounts: `bdir` is a directory of the mount and `bfile`
/// a file of it, both bind-mounted outside the mount; `odir` and `ofile` are the
/// same seen through the mount, checked at the end.
fn work_bind(
    w: u32,
    bdir: &Path,
    bfile: &Path,
    odir: &Path,
    ofile: &Path,
    stop: &Path,
) -> Result<u64, String> {
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(bfile)
        .map_err(err("open the bound file"))?;
    let mut file_model = vec![0u8; HELD_BLOCKS as usize * BLOCK];
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    let mut ops = 1u64;
    let mut n = 0u64;
    while !stop.exists() {
        n += 1;
        let data = contents(w, n);
        let b = bdir.join(format!("b{n}"));
        {
            let mut f = File::create(&b).map_err(err(format!("create b{n} through the bind")))?;
            f.write_all(&data).map_err(err(format!("write b{n}")))?;
        }
        if std::fs::read(&b).map_err(err(format!("read b{n}")))? != data {
            return Err(format!("b{n}: read back through the bind differs"));
        }
        std::fs::rename(&b, bdir.join(format!("c{n}"))).map_err(err(format!("rename b{n}")))?;
        live.insert(format!("c{n}"), n);
        if n % 2 == 0 {
            let old = format!("c{}", n - 1);
            std::fs::remove_file(bdir.join(&old)).map_err(err(format!("unlink {old}")))?;
            live.remove(&old);
            ops += 1;
        }
        // The bound file, opened through its bind each round, and the held one.
        let blk = n % HELD_BLOCKS;
        let bytes = held_block(w, n);
        {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(bfile)
                .map_err(err("open the bound file"))?;
            f.write_all_at(&bytes, blk * BLOCK as u64)
                .map_err(err(format!("pwrite bound file block {blk}")))?;
        }
        file_model[blk as usize * BLOCK..][..BLOCK].copy_from_slice(&bytes);
        let mut got = vec![0u8; BLOCK];
        held.read_exact_at(&mut got, blk * BLOCK as u64)
            .map_err(err(format!("pread bound file block {blk}")))?;
        if got != bytes {
            return Err(format!("bound file block {blk}: read back differs"));
        }
        let listed = listing(bdir)?;
        let want: BTreeSet<String> = live.keys().cloned().collect();
        if listed != want {
            return Err(format!(
                "listing through the bind: {listed:?}, expected {want:?}"
            ));
        }
        ops += 9;
    }
    let want: BTreeSet<String> = live.keys().cloned().collect();
    for dir in [bdir, odir] {
        if listing(dir)? != want {
            return Err(format!("final listing of {} differs", dir.display()));
        }
        for (name, id) in &live {
            let got = std::fs::read(dir.join(name)).map_err(err(format!("final read {name}")))?;
            if got != contents(w, *id) {
                return Err(format!(
                    "{}: final contents differ",
                    dir.join(name).display()
                ));
            }
            ops += 1;
        }
    }
    for f in [bfile, ofile] {
        if std::fs::read(f).map_err(err(format!("final read {}", f.display())))? != file_model {
            return Err(format!("{}: final contents differ", f.display()));
        }
        ops += 1;
    }
    Ok(ops + 2)
}

/// The worker's entry point in the re-run test binary: `tree|W|DIR|STOP` or
/// `bind|W|BDIR|BFILE|ODIR|OFILE|STOP`.
#[test]
fn crash_worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let w: u32 = f
        .get(1)
        .and_then(|s| s.parse().ok())
        .expect("worker number");
    let p = |i: usize| PathBuf::from(f.get(i).expect("worker argument"));
    let done = match f[0] {
        "tree" => work_tree(&p(2), w, &p(3)),
        "bind" => work_bind(w, &p(2), &p(3), &p(4), &p(5), &p(6)),
        other => panic!("unknown worker kind {other}"),
    };
    match done {
        Ok(ops) => println!("\nops {ops}"),
        Err(e) => {
            println!("\nfailed {e}");
            std::process::exit(1);
        }
    }
}

fn spawn_worker(spec: String) -> Child {
    common::spawn_test_worker("crash_worker", (WORKER_ENV, &spec))
}

/// What a failed run leaves: on drop, unless `finished`, aborts the FUSE
/// connection (nothing can block on the mount after that), kills the workers, the
/// keeper and its daemon, detaches the bind mounts and the mount. A finished run
/// only removes the directory.
struct Cleanup {
    keeper: Option<Child>,
    workers: Vec<Child>,
    mnt: PathBuf,
    binds: Vec<PathBuf>,
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
            for w in &mut self.workers {
                let _ = w.kill();
                let _ = w.wait();
            }
            if let Some(mut k) = self.keeper.take() {
                let daemons = common::children(k.id());
                // The keeper first, or it would restart the daemon.
                let _ = k.kill();
                for d in daemons {
                    let _ = kill(Pid::from_raw(d), Signal::SIGKILL);
                }
                let _ = k.wait();
            }
            for b in &self.binds {
                let _ = nix::mount::umount2(b, MntFlags::MNT_DETACH);
            }
            if common::is_fuse_mounted(&self.mnt) {
                let _ = fusectl::tear_down(&self.mnt, self.conn);
            }
        }
        if !common::is_fuse_mounted(&self.mnt)
            && self.binds.iter().all(|b| common::mount_id(b).is_none())
        {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The keeper's stderr, where it logs `daemon pid P is ready` at each READY=1.
struct KeeperLog(PathBuf);

impl KeeperLog {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }

    fn is_ready(&self, pid: i32) -> bool {
        self.text().contains(&format!("daemon pid {pid} is ready"))
    }
}

/// The keeper and its daemon, as the test sees them.
struct Daemons<'a> {
    keeper: u32,
    log: &'a KeeperLog,
    /// Every daemon pid seen, in order.
    seen: Vec<i32>,
}

impl Daemons<'_> {
    /// The current daemon once it is not `old` (a new start after a kill).
    fn next_after(&mut self, old: Option<i32>, what: &str) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = common::children(self.keeper);
            if let [pid] = now[..] {
                if Some(pid) != old {
                    if self.seen.last() != Some(&pid) {
                        self.seen.push(pid);
                    }
                    return pid;
                }
            }
            if Instant::now() > deadline {
                let mut msg = format!(
                    "no new daemon {what} (children of the keeper: {now:?})\n{}",
                    common::thread_stacks(self.keeper as i32)
                );
                let mut pids: BTreeSet<i32> = now.iter().copied().collect();
                pids.extend(old);
                for p in pids {
                    msg.push_str(&common::thread_stacks(p));
                }
                panic!("{msg}keeper log:\n{}", self.log.text());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until daemon `pid` has said READY=1 to the keeper.
    fn wait_ready(&self, pid: i32, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log.is_ready(pid) {
            if Instant::now() > deadline {
                panic!(
                    "daemon {pid} not ready {what}\n{}{}keeper log:\n{}",
                    common::thread_stacks(pid),
                    common::thread_stacks(self.keeper as i32),
                    self.log.text()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// How each kill is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KillAt {
    /// After a random pause (often none): mid-request under load.
    Serving,
    /// The moment the previous daemon said it is ready (just after a recovery).
    JustReady,
    /// Two kills: the daemon, then the one restarted for it before it is ready
    /// (during its recovery).
    Recovering,
}

#[test]
fn memfs_survives_repeated_sigkill_under_the_keeper() {
    crash_run("memfs_survives_repeated_sigkill_under_the_keeper", &[]);
}

/// The same without `NOTIFY_RESEND`: the requests each dead daemon had read and not
/// answered are answered from its request slots.
#[test]
fn memfs_survives_repeated_sigkill_without_resend() {
    crash_run(
        "memfs_survives_repeated_sigkill_without_resend",
        &["--no-resend"],
    );
}

/// The crash test with `extra` arguments for memfs (after `MOUNTPOINT --threads 2`).
fn crash_run(name: &str, extra: &[&str]) {
    if std::env::var_os(WORKER_ENV).is_some() || !common::can_mount(name) {
        return;
    }
    let kills: u32 = std::env::var("FUSE_LIVE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS);
    let seed = common::time_seed();
    eprintln!("{name}: {kills} kills, seed {seed}, memfs arguments {extra:?}");
    let mut rng = common::Rng(seed);
    let dir = common::temp_dir("crash");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let log = KeeperLog(dir.join("keeper.log"));
    let memfs = common::example_binary("memfs");
    let mut cmd = Command::new(KEEPER);
    // Backoff starts at 100 ms and doubles per restart within the window: a 1 s
    // window keeps it at 100-400 ms, and the limit is never the one reached.
    let limit = (2 * kills + 10).to_string();
    cmd.args(["--restart-limit", &limit, "--restart-window", "1", "--"])
        .arg(&memfs)
        .arg(&mnt)
        .args(["--threads", "2"])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("CRASH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log.0).expect("log"));
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
        binds: Vec::new(),
        conn: None,
        dir: dir.clone(),
        finished: false,
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
    let ready = format!("ready {mnt}", mnt = mnt.display());
    match lines.recv_timeout(PATIENCE) {
        Ok(l) => assert_eq!(l, ready, "at the first start"),
        Err(e) => panic!(
            "no ready line at the first start ({e}); keeper log:\n{}",
            log.text()
        ),
    }
    let mut daemons = Daemons {
        keeper: keeper_pid,
        log: &log,
        seen: Vec::new(),
    };
    let mut current = daemons.next_after(None, "at the first start");
    daemons.wait_ready(current, "at the first start");
    let conn = fusectl::connection_id(&mnt).expect("fusectl connection");
    guard.conn = Some(conn);
    let id = common::mount_id(&mnt).expect("mount id");

    // The LXCFS pattern: a directory and a file of the mount bound outside it.
    let shared = mnt.join("shared");
    let shared_file = mnt.join("shared_file");
    std::fs::create_dir(&shared).expect("mkdir shared");
    File::create(&shared_file)
        .and_then(|f| f.set_len(HELD_BLOCKS * BLOCK as u64))
        .expect("create shared_file");
    let bind_dir = dir.join("bind_dir");
    let bind_file = dir.join("bind_file");
    std::fs::create_dir(&bind_dir).expect("bind target dir");
    File::create(&bind_file).expect("bind target file");
    for (src, dst) in [(&shared, &bind_dir), (&shared_file, &bind_file)] {
        nix::mount::mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .unwrap_or_else(|e| panic!("bind {} on {}: {e}", src.display(), dst.display()));
        guard.binds.push(dst.clone());
    }
    let bind_ids: Vec<Option<u64>> = guard.binds.iter().map(|b| common::mount_id(b)).collect();

    let stop = dir.join("stop");
    for w in 0..WORKERS {
        let spec = format!(
            "tree|{w}|{}|{}",
            mnt.join(format!("w{w}")).display(),
            stop.display()
        );
        guard.workers.push(spawn_worker(spec));
    }
    let spec = format!(
        "bind|{WORKERS}|{}|{}|{}|{}|{}",
        bind_dir.display(),
        bind_file.display(),
        shared.display(),
        shared_file.display(),
        stop.display()
    );
    guard.workers.push(spawn_worker(spec));

    let mut placed: BTreeMap<KillAt, u32> = BTreeMap::new();
    // Second kills of a pair that found the daemon not yet ready.
    let mut unready = 0u32;
    let mut k = 0;
    let kill_one = |pid: i32, k: &mut u32| {
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill memfs");
        *k += 1;
    };
    while k < kills {
        let at = match rng.next() % 6 {
            0 => KillAt::JustReady,
            1 if kills - k >= 2 => KillAt::Recovering,
            _ => KillAt::Serving,
        };
        *placed.entry(at).or_default() += 1;
        if at == KillAt::Serving {
            let ms = match rng.next() % 3 {
                0 => rng.next() % 20,
                _ => rng.next() % 300,
            };
            std::thread::sleep(Duration::from_millis(ms));
        }
        kill_one(current, &mut k);
        if at == KillAt::Recovering {
            let next = daemons.next_after(Some(current), &format!("after kill {k}"));
            let ms = match rng.next() % 3 {
                0 => 0,
                1 => rng.next() % 5,
                _ => rng.next() % 40,
            };
            std::thread::sleep(Duration::from_millis(ms));
            if !log.is_ready(next) {
                unready += 1;
            }
            kill_one(next, &mut k);
            current = next;
        }
        current = daemons.next_after(Some(current), &format!("after kill {k}"));
        daemons.wait_ready(current, &format!("after kill {k}"));
        // A worker that failed ends early: stop at once with its message.
        for (w, c) in guard.workers.iter_mut().enumerate() {
            if let Some(st) = c.try_wait().expect("try_wait") {
                let mut out = String::new();
                if let Some(o) = c.stdout.as_mut() {
                    let _ = o.read_to_string(&mut out);
                }
                panic!(
                    "worker {w} ended during the kills ({st}): {out}\nkeeper log:\n{}",
                    log.text()
                );
            }
        }
    }
    File::create(&stop).expect("stop file");
    let mut total = 0u64;
    for (w, c) in guard.workers.iter_mut().enumerate() {
        let (st, out, ops) = common::worker_report(c);
        assert!(
            st.success() && ops.is_some(),
            "worker {w} failed ({st}): {out}\nkeeper log:\n{}",
            log.text()
        );
        total += ops.unwrap_or(0);
    }
    guard.workers.clear();
    // memfs logs how each recovery got the requests in flight answered.
    let text = log.text();
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
        "{name}: {k} SIGKILLs survived ({placed:?}; {unready} second kills before READY=1), \
         {} daemons, {total} operations by {} workers, 0 failed",
        daemons.seen.len(),
        WORKERS + 1
    );
    assert_eq!(
        daemons.seen.len(),
        k as usize + 1,
        "each kill hit a new daemon"
    );
    assert_eq!(
        fusectl::connection_id(&mnt).expect("fusectl"),
        conn,
        "same connection"
    );
    assert_eq!(common::mount_id(&mnt), Some(id), "same mount");
    let now: Vec<Option<u64>> = guard.binds.iter().map(|b| common::mount_id(b)).collect();
    assert_eq!(now, bind_ids, "the bind mounts stayed");
    // Every line the daemons printed is the ready line (one per start that got
    // that far).
    let printed: Vec<String> = lines.try_iter().collect();
    assert!(printed.iter().all(|l| *l == ready), "stdout: {printed:?}");

    // The binds hold the superblock: unmount them before the daemon unmounts.
    while let Some(b) = guard.binds.last() {
        nix::mount::umount2(b, MntFlags::empty())
            .unwrap_or_else(|e| panic!("unmount the bind {}: {e}", b.display()));
        guard.binds.pop();
    }
    kill(Pid::from_raw(keeper_pid as i32), Signal::SIGTERM).expect("SIGTERM the keeper");
    let mut keeper = guard.keeper.take().expect("keeper");
    let st = common::wait_exit(&mut keeper, PATIENCE).expect("the keeper exits");
    assert_eq!(st.code(), Some(0), "keeper log:\n{}", log.text());
    assert!(!common::is_fuse_mounted(&mnt), "unmounted on SIGTERM");
    assert!(!watchdog.disarm(), "the watchdog fired");
    assert!(common::children(keeper_pid).is_empty());
    guard.finished = true;
}
