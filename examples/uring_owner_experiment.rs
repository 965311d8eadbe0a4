//! Experiment (docs/DESIGN.md, "Experiment: rings owned by a process that outlives
//! the daemon (SQPOLL)" and "Experiment: a keeper that submits for the daemon"): does
//! creating the fuse-over-io_uring rings in a process that outlives the daemon, with
//! `IORING_SETUP_SQPOLL` or with a keeper process submitting every command, close the
//! `ECANCELED` window of a `kill -9` (docs/RECOVERY.md), and at what cost?
//!
//! One binary, three or four roles, all forked from the first process (the
//! *supervisor*):
//! - the supervisor mounts, answers INIT on `/dev/fuse`, maps the entry area (shared
//!   anonymous memory, so every forked process sees it at the same address), starts a
//!   `stat()` loop pinned to each CPU, and kills the daemon with SIGKILL again and
//!   again, forking a successor each time;
//! - in `sqpoll` mode the supervisor also *owns the rings*: one SQPOLL ring per queue,
//!   the `/dev/fuse` fd registered as fixed file 0, the entries registered by it. The
//!   daemon and each successor map the same rings from the ring fd
//!   (`IoUring::from_fd`) and serve their completion queues;
//! - in `keeper` mode the supervisor owns rings without SQPOLL and forks a *keeper*
//!   that outlives every daemon: one thread per ring submits (`io_uring_enter`) what
//!   the daemon pushed on the ring's SQ when the daemon rings a doorbell (a futex word
//!   in the area), so every command's task is a keeper thread; the daemon never
//!   submits, it only waits for completions (`io_uring_enter(0, 1, GETEVENTS)`);
//! - in `plain` mode (today's design) each daemon creates its own rings (no SQPOLL, no
//!   `DEFER_TASKRUN`, like restartable rings); a successor registers fresh entries and
//!   commits the requests left in the entries by its predecessor.
//!
//! A successor over the owner's rings continues from the shared completion queue. Each
//! entry's state in the area says which request the dead daemon took from the queue
//! and which one it committed; every SQE carries a generation in its `user_data`
//! (bumped in the area before the push), so a CQE of a command whose request a
//! recovery answered again is recognised as stale, and a recovery accepts every
//! generation pushed since the taken CQE (the kernel refuses all but the first
//! commit of one request with `ENOENT`).
//!
//! The filesystem is a bare root directory: GETATTR, STATFS, LOOKUP (`ENOENT`),
//! everything else `ENOSYS`. Attributes are never cached, so every `stat()` is a
//! request.
//!
//! Usage (root, `/dev/fuse`, `enable_uring=Y`):
//! `uring_owner_experiment MODE[+FLAG...] [KILLS] [INTERVAL_MS] [SQ_IDLE_MS]`
//! with MODE `sqpoll`, `sqpoll1` (one SQPOLL thread shared by every ring), `keeper` or
//! `plain`, and flags `onering` (one ring for every queue, one daemon thread), `pin`
//! (daemon and keeper threads on their queue's CPU), `affN` (the SQPOLL thread on CPU
//! N), `affq` (each ring's SQPOLL thread on its queue's CPU), `free` (unpinned `stat()`
//! loops), `workN` (the daemon spins N µs per request). Prints the callers' errors,
//! the `stat()` rate and CPU use. A watchdog process aborts the connection and
//! detaches the mount if the run does not end in time.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fuse_session::dev::{fusectl, uring::queue_count, MountOptions};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// Entries per queue.
const DEPTH: usize = 2;
/// Per entry: a page holding the kernel's header buffer, the iovec array and the
/// daemon's marks, then the payload buffer (the kernel's default 32 pages).
const HEADER_SZ: usize = 4096;
const PAYLOAD_SZ: usize = 128 * 1024;
const ENT_SZ: usize = HEADER_SZ + PAYLOAD_SZ;
const IOV_AT: usize = 512;
/// Unique of the request the daemon took from the completion queue (stored before
/// the completion queue head moves past its CQE).
const TAKEN_AT: usize = 1024;
/// Unique of the last request whose commit the daemon submitted.
const DONE_AT: usize = 1032;
/// A copy of the request's `fuse_in_header`, taken before the reply overwrites it.
const SAVE_AT: usize = 1040;
/// Generation of the entry's command submitted last (in its CQE's `user_data`);
/// bumped before the command is pushed.
const GEN_AT: usize = 1088;
/// Generation of the CQE the daemon took last.
const TAKEN_GEN_AT: usize = 1096;
/// Lowest generation whose CQE may still come: after a recovery committed a request
/// again, every commit pushed since its CQE was taken may have reached the ring
/// (the first one the kernel sees goes through, the others are refused with
/// ENOENT). Kept in the area so that a successor killed before that is settled
/// hands it on.
const LO_GEN_AT: usize = 1104;
/// The SQ tail once the entry's last commit is published: a successor that reads
/// a tail at least this far knows the commit reached the ring (and must not write
/// into the entry, which the kernel may be filling again).
const PUSH_TAIL_AT: usize = 1112;
/// `keeper` mode, in the page of a ring's first entry: the ring's doorbell (a futex
/// word) the daemon bumps after pushing SQEs, and whether the keeper's thread for
/// the ring sleeps on it.
const BELL_AT: usize = 2048;
const SLEEPING_AT: usize = 2056;

/// A read-only view of a ring's SQ tail, mapped from the ring fd (any holder of the
/// fd may map it).
struct SqTail {
    ptr: *mut nix::libc::c_void,
    len: usize,
    head_at: usize,
    tail_at: usize,
}

impl SqTail {
    fn new(ring: &Ring) -> io::Result<SqTail> {
        const PARAMS: usize = 120;
        assert_eq!(std::mem::size_of::<io_uring::Parameters>(), PARAMS);
        let mut params = [0u8; PARAMS];
        // SAFETY: `Parameters` is `#[repr(transparent)]` over the kernel's
        // `struct io_uring_params`, 120 bytes of integers (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (ring.params() as *const io_uring::Parameters).cast::<u8>(),
                params.as_mut_ptr(),
                PARAMS,
            )
        };
        let word = |at: usize| {
            u32::from_ne_bytes(params[at..at + 4].try_into().unwrap_or_default()) as usize
        };
        // io_uring_params: sq_entries at 0; sq_off (io_sqring_offsets) at 40:
        // head, tail, ring_mask, ring_entries, flags, dropped, array.
        let (sq_entries, head_at, tail_at, array_at) = (word(0), word(40), word(44), word(64));
        let len = array_at + sq_entries * 4;
        // SAFETY: maps the ring fd's SQ ring (offset IORING_OFF_SQ_RING = 0)
        // read-only; the kernel checks the length.
        let ptr = unsafe {
            nix::libc::mmap(
                std::ptr::null_mut(),
                len,
                nix::libc::PROT_READ,
                nix::libc::MAP_SHARED,
                ring.as_raw_fd(),
                0,
            )
        };
        if ptr == nix::libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if head_at + 4 > len || tail_at + 4 > len {
            return Err(io::Error::other("SQ ring offsets out of the mapping"));
        }
        Ok(SqTail {
            ptr,
            len,
            head_at,
            tail_at,
        })
    }

    fn load(&self, at: usize) -> u32 {
        assert!(at + 4 <= self.len);
        // SAFETY: in bounds of the mapping, 4-aligned (the kernel's layout); head
        // and tail are atomics their writers store with release.
        unsafe {
            (*(self.ptr.cast::<u8>().add(at) as *const std::sync::atomic::AtomicU32))
                .load(Ordering::Acquire)
        }
    }

    fn get(&self) -> u32 {
        self.load(self.tail_at)
    }

    /// SQEs pushed and not yet consumed by the kernel.
    fn pending(&self) -> u32 {
        self.get().wrapping_sub(self.load(self.head_at))
    }
}

impl Drop for SqTail {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { nix::libc::munmap(self.ptr, self.len) };
    }
}
const ENT_IN_OUT_AT: usize = 256;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Counters shared by every process: per CPU ok / ECANCELED / other errors, then a
/// stop flag and the last other errno.
const STATS_WORDS: usize = 64;
const STOP: usize = 60;
const LAST_ERRNO: usize = 61;
/// Requests answered: LOOKUP, GETATTR, STATFS, others.
const ANSWERED: usize = 48;
/// Queues of the current daemon that have submitted their first commands.
const READY: usize = 62;
/// CPU time (user + system, µs) of the `stat()` loops, summed as each one ends.
const LOADER_CPU_US: usize = 54;
/// Times the keeper went to sleep on the doorbell, and SQEs it submitted.
const KEEPER_SLEEPS: usize = 55;
const KEEPER_SUBMITS: usize = 56;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The supervisor owns the rings (`sqpoll`, `sqpoll1`, `keeper`).
    Owner,
    /// Each daemon creates its own rings (today's design).
    Plain,
}

/// Per-mode choices beside who owns the rings.
#[derive(Clone, Copy)]
struct Setup {
    /// `sqpoll1`: one SQPOLL thread for every ring (`IORING_SETUP_ATTACH_WQ`).
    shared_thread: bool,
    /// `+affN`: the SQPOLL thread pinned to CPU N (`IORING_SETUP_SQ_AFF`).
    sq_cpu: Option<u32>,
    /// `+onering`: one ring for every queue, served by one daemon thread.
    one_ring: bool,
    /// `keeper`: the owner's rings without SQPOLL; a keeper process (forked by the
    /// supervisor, outliving every daemon) submits every SQE the daemon pushes when
    /// the daemon rings a doorbell (a futex word in shared memory), so the commands'
    /// task is the keeper's thread and their task work runs there.
    keeper: bool,
    /// `+pin`: each ring's daemon thread (and keeper thread) pinned to the CPU of
    /// the ring's first queue.
    pin: bool,
    /// `+affq`: each ring's SQPOLL thread pinned to the CPU of its first queue.
    aff_per_queue: bool,
    /// `+free`: the `stat()` loops are not pinned (one per CPU still).
    free_loaders: bool,
    /// `+workN`: the daemon spins N µs on every request before answering (a
    /// stand-in for a filesystem that does something).
    work_us: u64,
}

impl Setup {
    /// The queues each ring serves.
    fn rings(&self, queues: usize) -> Vec<std::ops::Range<usize>> {
        if self.one_ring {
            std::iter::once(0..queues).collect()
        } else {
            (0..queues).map(|q| q..q + 1).collect()
        }
    }
}

/// Shared anonymous memory: inherited by every forked process at the same address.
struct Shared {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is shared memory the threads touch through atomics or, for an
// entry's buffers, only from the one thread serving the entry's queue.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(len: usize) -> io::Result<Shared> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; nothing
        // else refers to it.
        let ptr = unsafe {
            nix::libc::mmap(
                std::ptr::null_mut(),
                len,
                nix::libc::PROT_READ | nix::libc::PROT_WRITE,
                nix::libc::MAP_SHARED | nix::libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == nix::libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Shared {
            ptr: ptr.cast(),
            len,
        })
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        assert!(at % 8 == 0 && at + 8 <= self.len);
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned); the memory
        // lives as long as `self`; every access to these words is atomic.
        unsafe { &*(self.ptr.add(at) as *const AtomicU64) }
    }

    fn word32(&self, at: usize) -> &std::sync::atomic::AtomicU32 {
        assert!(at % 4 == 0 && at + 4 <= self.len);
        // SAFETY: as `word`: in bounds, aligned, only accessed atomically.
        unsafe { &*(self.ptr.add(at) as *const std::sync::atomic::AtomicU32) }
    }

    fn addr(&self, at: usize) -> *mut u8 {
        assert!(at <= self.len);
        // SAFETY: in bounds of the mapping.
        unsafe { self.ptr.add(at) }
    }

    fn read(&self, at: usize, out: &mut [u8]) {
        assert!(at + out.len() <= self.len);
        // SAFETY: in bounds; the kernel writes an entry only while its command is
        // pending, and the daemon reads it after the CQE (a torn read is only
        // possible in the recovery race the doc describes).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(at), out.as_mut_ptr(), out.len()) }
    }

    fn write(&self, at: usize, data: &[u8]) {
        assert!(at + data.len() <= self.len);
        // SAFETY: in bounds; the entry is with the daemon (not pending).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(at), data.len()) }
    }
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("uring_owner_experiment: {e}");
            std::process::exit(2);
        }
    }
}

fn run() -> io::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut setup = Setup {
        shared_thread: false,
        sq_cpu: None,
        one_ring: false,
        keeper: false,
        pin: false,
        aff_per_queue: false,
        free_loaders: false,
        work_us: 0,
    };
    let spec = args.first().map_or("sqpoll", String::as_str);
    let mut parts = spec.split('+');
    let mode = match parts.next() {
        Some("sqpoll") => Mode::Owner,
        Some("sqpoll1") => {
            setup.shared_thread = true;
            Mode::Owner
        }
        Some("keeper") => {
            setup.keeper = true;
            Mode::Owner
        }
        Some("plain") => Mode::Plain,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown mode {other:?} (sqpoll, sqpoll1, keeper or plain)"),
            ))
        }
    };
    for flag in parts {
        match flag {
            "onering" => setup.one_ring = true,
            "pin" => setup.pin = true,
            "affq" => setup.aff_per_queue = true,
            "free" => setup.free_loaders = true,
            work if work.starts_with("work") => {
                setup.work_us = work[4..].parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("bad flag {work:?}"))
                })?;
            }
            aff if aff.starts_with("aff") => {
                let cpu = aff[3..].parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("bad flag {aff:?}"))
                })?;
                setup.sq_cpu = Some(cpu);
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unknown flag {other:?} (onering, pin, affq, affN, free, workN)"),
                ))
            }
        }
    }
    let num = |i: usize, default: u64| -> io::Result<u64> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("bad number {s:?}"))
            })
        })
    };
    let kills = num(1, 30)?;
    let interval = num(2, 300)?;
    let idle = u32::try_from(num(3, 50)?).unwrap_or(50);
    if !nix::unistd::geteuid().is_root() {
        return Err(io::Error::other(
            "needs root (mount(2), io_uring on /dev/fuse)",
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(io::Error::other("no /dev/fuse"));
    }
    let uring_on = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);
    if !uring_on {
        return Err(io::Error::other(
            "fuse module parameter enable_uring is not Y",
        ));
    }
    let queues = queue_count();
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(STOP);

    let stats = Shared::new(STATS_WORDS * 8)?;
    let area = Shared::new(queues * DEPTH * ENT_SZ)?;
    for e in 0..queues * DEPTH {
        let base = e * ENT_SZ;
        let iov = [
            nix::libc::iovec {
                iov_base: area.addr(base).cast(),
                iov_len: 288,
            },
            nix::libc::iovec {
                iov_base: area.addr(base + HEADER_SZ).cast(),
                iov_len: PAYLOAD_SZ,
            },
        ];
        // SAFETY: two iovecs are plain integers and pointers; viewed as bytes.
        let bytes: [u8; 32] = unsafe { std::mem::transmute(iov) };
        area.write(base + IOV_AT, &bytes);
    }

    let mnt = std::env::temp_dir().join(format!("uring-owner-{}", std::process::id()));
    std::fs::create_dir_all(&mnt)?;
    let mount = fuse_session::dev::mount(&mnt, &MountOptions::new())
        .map_err(|e| io::Error::other(format!("mount: {e}")))?;
    let conn = mount.connection_id();
    let dev = mount.device().try_clone_to_owned()?;

    // The watchdog: a process, so that the supervisor stays single-threaded for fork.
    let budget = 20 + kills * (interval + 2000) / 1000;
    let watchdog = spawn(|| {
        std::thread::sleep(Duration::from_secs(budget));
        eprintln!("watchdog: tearing the mount down");
        let _ = fusectl::tear_down(&mnt, conn);
    })?;
    let result = experiment(
        mode, setup, spec, kills, interval, idle, queues, cpus, &stats, &area, &dev, &mnt,
    );
    let _ = kill(watchdog, Signal::SIGKILL);
    let _ = waitpid(watchdog, None);
    let _ = fusectl::tear_down(&mnt, conn);
    drop(mount);
    let _ = std::fs::remove_dir(&mnt);
    result
}

/// Forks a child running `f`, which then exits.
fn spawn(f: impl FnOnce()) -> io::Result<Pid> {
    // SAFETY: the supervisor is single-threaded when it forks; the child runs `f` and
    // exits without returning into the parent's code.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            f();
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { nix::libc::_exit(0) }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn experiment(
    mode: Mode,
    setup: Setup,
    spec: &str,
    kills: u64,
    interval: u64,
    idle: u32,
    queues: usize,
    cpus: usize,
    stats: &Shared,
    area: &Shared,
    dev: &OwnedFd,
    mnt: &Path,
) -> io::Result<bool> {
    answer_init(dev.as_fd())?;
    // Owner modes: the supervisor owns the rings and pushes the entries' REGISTERs
    // (issued by its SQPOLL thread, or by the keeper it forks below).
    let mut owned: Vec<Ring> = Vec::new();
    let layout = setup.rings(queues);
    if mode == Mode::Owner {
        for qs in &layout {
            let sub = Submit {
                keeper: setup.keeper,
                area,
                bell_at: qs.start * DEPTH * ENT_SZ,
            };
            let mut builder = IoUring::builder();
            if !setup.keeper {
                builder.setup_sqpoll(idle);
                if let Some(cpu) = setup.sq_cpu {
                    builder.setup_sqpoll_cpu(cpu);
                } else if setup.aff_per_queue {
                    builder.setup_sqpoll_cpu(u32::try_from(qs.start).unwrap_or(0));
                }
                if let (true, Some(first)) = (setup.shared_thread, owned.first()) {
                    builder.setup_attach_wq(first.as_raw_fd());
                }
            }
            let ring: Ring = builder.build(8)?;
            ring.submitter().register_files(&[dev.as_raw_fd()])?;
            for e in qs.start * DEPTH..qs.end * DEPTH {
                push(&sub, &ring, register_sqe(area, e, e / DEPTH, 0))?;
            }
            if !setup.keeper {
                ring.submit()?;
            }
            owned.push(ring);
        }
    }
    let keeper_pid = if setup.keeper {
        let rings = &owned;
        Some(spawn(move || {
            if let Err(e) = keeper(rings, setup, queues, area, stats) {
                eprintln!("keeper: {e}");
            }
        })?)
    } else {
        None
    };
    let machine_start = machine_cpu();
    let load_start_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_start = Instant::now();
    let mut loaders = Vec::new();
    for cpu in 0..cpus {
        let mnt = mnt.to_owned();
        let free = setup.free_loaders;
        loaders.push(spawn(move || load(cpu, free, &mnt, stats))?);
    }
    let mut daemon = spawn_daemon(mode, setup, &owned, area, stats, dev, queues, false)?;
    let mut stuck = false;
    let mut done_kills = 0;
    let mut drains = Vec::new();
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(interval + (k * 37) % 100));
        kill(daemon, Signal::SIGKILL).map_err(io::Error::from)?;
        waitpid(daemon, None).map_err(io::Error::from)?;
        done_kills += 1;
        let before: Vec<u64> = (0..cpus)
            .map(|c| stats.word(c * 24).load(Ordering::Relaxed))
            .collect();
        stats.word(READY * 8).store(0, Ordering::SeqCst);
        daemon = spawn_daemon(mode, setup, &owned, area, stats, dev, queues, true)?;
        if mode == Mode::Plain {
            let t = Instant::now();
            while stats.word(READY * 8).load(Ordering::SeqCst) < queues as u64
                && t.elapsed() < Duration::from_secs(2)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            // As `Running::drain_queues`: a request queued while a queue had no
            // entry is handed out only when an entry of that queue commits, and
            // the caller that queued it is blocked; a fresh request from each CPU
            // takes a fresh entry and drains the queue behind it.
            for cpu in 0..cpus {
                let mnt = mnt.to_owned();
                drains.push(spawn(move || {
                    pin(cpu);
                    let _ = nix::sys::statfs::statfs(&mnt);
                })?);
            }
        }
        // Every CPU's caller must make progress again (a lost request blocks one).
        let t = Instant::now();
        while (0..cpus).any(|c| stats.word(c * 24).load(Ordering::Relaxed) <= before[c] + 1) {
            if t.elapsed() > Duration::from_secs(5) {
                stuck = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if stuck {
            eprintln!("no progress 5 s after kill {}", k + 1);
            for e in 0..queues * DEPTH {
                eprintln!(
                    "  entry {e}: header unique {} taken {} done {}",
                    unique_of(area, e),
                    area.word(e * ENT_SZ + TAKEN_AT).load(Ordering::Acquire),
                    area.word(e * ENT_SZ + DONE_AT).load(Ordering::Acquire)
                );
            }
            if let Some(waiting) = fusectl::connection_id(mnt)
                .ok()
                .and_then(|c| fusectl::waiting(c).ok())
            {
                eprintln!("  requests waiting on the connection: {waiting}");
            }
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    stats.word(STOP * 8).store(1, Ordering::SeqCst);
    let elapsed = load_start.elapsed();
    if stuck {
        let _ = fusectl::tear_down(mnt, fusectl::connection_id(mnt).ok());
    }
    let sq_cpu = sqpoll_cpu_seconds();
    let machine = machine_cpu().since(&machine_start);
    let load_end_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let keeper_cpu = keeper_pid.map_or(0.0, process_cpu_seconds);
    for l in loaders.into_iter().chain(drains) {
        let _ = waitpid(l, None);
    }
    let _ = kill(daemon, Signal::SIGKILL);
    let _ = waitpid(daemon, None);
    if let Some(k) = keeper_pid {
        let _ = kill(k, Signal::SIGKILL);
        let _ = waitpid(k, None);
    }
    let (mut ok, mut canceled, mut other) = (0, 0, 0);
    for c in 0..cpus {
        ok += stats.word(c * 24).load(Ordering::Relaxed);
        canceled += stats.word(c * 24 + 8).load(Ordering::Relaxed);
        other += stats.word(c * 24 + 16).load(Ordering::Relaxed);
    }
    // Every child is reaped but the watchdog: loaders, daemons, drains, keeper.
    let children = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_or(0.0, |u| {
            let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        });
    let loaders_cpu = stats.word(LOADER_CPU_US * 8).load(Ordering::Relaxed) as f64 / 1e6;
    println!(
        "mode={spec} idle_ms={idle} kills={done_kills} stat_ok={ok} ecanceled={canceled} other_errors={other} \
         (last errno {}) stuck={stuck} elapsed={:.1}s stat_per_s={:.0}",
        stats.word(LAST_ERRNO * 8).load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
    );
    println!(
        "cpu_s: sqpoll={sq_cpu:.1} keeper={keeper_cpu:.1} loaders={loaders_cpu:.1} \
         daemons+keeper+drains={:.1} machine_busy={:.1} of {:.1} (other sessions included) \
         keeper_sleeps={} keeper_submits={} loadavg_start={} loadavg_end={}",
        (children - loaders_cpu).max(0.0),
        machine.0,
        machine.1,
        stats.word(KEEPER_SLEEPS * 8).load(Ordering::Relaxed),
        stats.word(KEEPER_SUBMITS * 8).load(Ordering::Relaxed),
        load_start_avg.split_whitespace().next().unwrap_or("?"),
        load_end_avg.split_whitespace().next().unwrap_or("?"),
    );
    drop(owned);
    Ok(!stuck && canceled == 0 && other == 0)
}

/// The machine's CPU time from `/proc/stat`: (busy, total) in seconds.
struct MachineCpu(f64, f64);

impl MachineCpu {
    fn since(&self, start: &MachineCpu) -> (f64, f64) {
        (self.0 - start.0, self.1 - start.1)
    }
}

fn machine_cpu() -> MachineCpu {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // "cpu  user nice system idle iowait irq softirq steal ..."
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    MachineCpu(
        total.saturating_sub(idle) as f64 / ticks,
        total as f64 / ticks,
    )
}

/// CPU seconds (user + system) of a live process, all its threads.
fn process_cpu_seconds(pid: Pid) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) as f64 / ticks
}

/// CPU seconds (user + system) the SQPOLL threads of this process used: the
/// threads named `iou-sqp-*` among its tasks.
fn sqpoll_cpu_seconds() -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut total = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ... utime stime": fields 14 and 15; comm may hold
        // spaces, so count from the closing parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("iou-sqp") {
            continue;
        }
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += field(11) + field(12);
    }
    total as f64 / ticks
}

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// A caller pinned to `cpu` (unless `free`): `stat()` on the mount root until told
/// to stop; its counters are those of `cpu`.
fn load(cpu: usize, free: bool, mnt: &Path, stats: &Shared) {
    if !free {
        pin(cpu);
    }
    let (ok, canceled, other) = (
        stats.word(cpu * 24),
        stats.word(cpu * 24 + 8),
        stats.word(cpu * 24 + 16),
    );
    while stats.word(STOP * 8).load(Ordering::Relaxed) == 0 {
        match std::fs::metadata(mnt) {
            Ok(_) => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ECANCELED) => {
                canceled.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                other.fetch_add(1, Ordering::Relaxed);
                let errno = u64::try_from(e.raw_os_error().unwrap_or(0)).unwrap_or(0);
                stats.word(LAST_ERRNO * 8).store(errno, Ordering::Relaxed);
                if e.raw_os_error() == Some(nix::libc::ENOTCONN) {
                    break;
                }
            }
        }
    }
    if let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let us = |v: nix::sys::time::TimeVal| {
            u64::try_from(v.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(v.tv_usec()).unwrap_or(0)
        };
        stats
            .word(LOADER_CPU_US * 8)
            .fetch_add(us(u.user_time()) + us(u.system_time()), Ordering::Relaxed);
    }
}

/// Reads INIT from the device and agrees to fuse-over-io_uring.
fn answer_init(dev: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let n = nix::unistd::read(dev, &mut buf).map_err(io::Error::from)?;
    if n < 56 || u32::from_ne_bytes(buf[4..8].try_into().unwrap_or_default()) != 26 {
        return Err(io::Error::other("the first request is not INIT"));
    }
    let unique = &buf[8..16];
    let max_readahead = &buf[48..52];
    let mut out = [0u8; 16 + 64];
    out[0..4].copy_from_slice(&80u32.to_ne_bytes());
    out[8..16].copy_from_slice(unique);
    let init = &mut out[16..];
    init[0..4].copy_from_slice(&7u32.to_ne_bytes());
    init[4..8].copy_from_slice(&45u32.to_ne_bytes());
    init[8..12].copy_from_slice(max_readahead);
    init[12..16].copy_from_slice(&(1u32 << 30).to_ne_bytes()); // FUSE_INIT_EXT
    init[16..18].copy_from_slice(&16u16.to_ne_bytes());
    init[18..20].copy_from_slice(&12u16.to_ne_bytes());
    init[20..24].copy_from_slice(&65536u32.to_ne_bytes());
    init[24..28].copy_from_slice(&1u32.to_ne_bytes());
    init[32..36].copy_from_slice(&(1u32 << 9).to_ne_bytes()); // FUSE_OVER_IO_URING (bit 41)
    nix::unistd::write(dev, &out).map_err(io::Error::from)?;
    Ok(())
}

fn cmd_area(commit_id: u64, qid: usize) -> [u8; 80] {
    let mut a = [0u8; 80];
    a[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    a[16..18].copy_from_slice(&u16::try_from(qid).unwrap_or(0).to_ne_bytes());
    a
}

fn register_sqe(area: &Shared, e: usize, qid: usize, generation: u64) -> squeue::Entry128 {
    let iov = area.addr(e * ENT_SZ + IOV_AT) as u64;
    let sqe = opcode::UringCmd80::new(types::Fixed(0), CMD_REGISTER)
        .cmd(cmd_area(0, qid))
        .addr(Some(iov))
        .build()
        .user_data(token(e, generation));
    // REGISTER wants the iovec count in the SQE's `len` (offset 24), which the
    // builder does not expose.
    // SAFETY: `Entry128` is 128 bytes of plain integers, `#[repr(C)]`.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    bytes[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above; any bytes are a valid SQE value.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

fn commit_sqe(e: usize, qid: usize, unique: u64, generation: u64) -> squeue::Entry128 {
    opcode::UringCmd80::new(types::Fixed(0), CMD_COMMIT_AND_FETCH)
        .cmd(cmd_area(unique, qid))
        .build()
        .user_data(token(e, generation))
}

/// How SQEs reach the kernel: `io_uring_enter` by the pusher (plain rings, or the
/// SQPOLL thread woken by it), or the keeper's doorbell for the ring.
#[derive(Clone, Copy)]
struct Submit<'a> {
    keeper: bool,
    area: &'a Shared,
    /// Where the ring's doorbell lies in the area (`BELL_AT` of its first entry).
    bell_at: usize,
}

impl Submit<'_> {
    /// Gets the pushed SQEs submitted: by this task (or the SQPOLL thread), or by
    /// the keeper.
    fn kick(&self, ring: &Ring) -> io::Result<()> {
        if !self.keeper {
            ring.submit()?;
            return Ok(());
        }
        let bell = self.area.word32(self.bell_at + BELL_AT);
        bell.fetch_add(1, Ordering::SeqCst);
        if self
            .area
            .word(self.bell_at + SLEEPING_AT)
            .load(Ordering::SeqCst)
            != 0
        {
            futex_wake(bell);
        }
        Ok(())
    }

    /// Waits for a completion (and, outside keeper mode, submits what was pushed).
    fn wait(&self, ring: &Ring) -> io::Result<()> {
        if !self.keeper {
            ring.submit_and_wait(1)?;
            return Ok(());
        }
        // SAFETY: no argument; to_submit 0: this task never issues a command on an
        // owner's ring in keeper mode (its task would then be the command's task).
        unsafe {
            ring.submitter().enter::<nix::libc::sigset_t>(
                0, 1, 1, // IORING_ENTER_GETEVENTS
                None,
            )?
        };
        Ok(())
    }
}

/// `FUTEX_WAIT` on a word of shared memory (not private: several processes).
fn futex_wait(word: &std::sync::atomic::AtomicU32, seen: u32) {
    // SAFETY: the word lives in a shared mapping that outlives the call; no timeout.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            word.as_ptr(),
            nix::libc::FUTEX_WAIT,
            seen,
            std::ptr::null::<nix::libc::timespec>(),
        )
    };
}

fn futex_wake(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: as `futex_wait`; wakes one waiter.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_futex,
            word.as_ptr(),
            nix::libc::FUTEX_WAKE,
            1,
        )
    };
}

/// The keeper (`keeper` mode): a process forked by the supervisor that outlives
/// every daemon. One thread per ring submits every SQE pushed on it, then sleeps on
/// the ring's doorbell. The commands' task is that thread: the kernel's task work
/// for them (the copy of a request into an available entry) interrupts its futex
/// wait and runs there, in a task that is not exiting when a daemon dies.
fn keeper(
    rings: &[Ring],
    setup: Setup,
    queues: usize,
    area: &Shared,
    stats: &Shared,
) -> io::Result<()> {
    std::thread::scope(|s| {
        for (ring, qs) in rings.iter().zip(setup.rings(queues)) {
            s.spawn(move || {
                if setup.pin && qs.len() == 1 {
                    pin(qs.start);
                }
                if let Err(e) = keep(ring, area, stats, qs.start * DEPTH * ENT_SZ) {
                    eprintln!("keeper {qs:?}: {e}");
                }
            });
        }
    });
    Ok(())
}

fn keep(ring: &Ring, area: &Shared, stats: &Shared, bell_at: usize) -> io::Result<()> {
    let view = SqTail::new(ring)?;
    let bell = area.word32(bell_at + BELL_AT);
    let sleeping = area.word(bell_at + SLEEPING_AT);
    loop {
        let seen = bell.load(Ordering::SeqCst);
        let n = view.pending();
        if n > 0 {
            // SAFETY: no argument; submits what the daemon pushed (the kernel reads
            // at most `n` SQEs between its head and the published tail).
            let done = unsafe { ring.submitter().enter::<nix::libc::sigset_t>(n, 0, 0, None) };
            match done {
                Ok(k) => {
                    stats
                        .word(KEEPER_SUBMITS * 8)
                        .fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        sleeping.store(1, Ordering::SeqCst);
        if bell.load(Ordering::SeqCst) == seen && view.pending() == 0 {
            stats
                .word(KEEPER_SLEEPS * 8)
                .fetch_add(1, Ordering::Relaxed);
            futex_wait(bell, seen);
        }
        sleeping.store(0, Ordering::SeqCst);
    }
}

fn push(sub: &Submit<'_>, ring: &Ring, sqe: squeue::Entry128) -> io::Result<()> {
    loop {
        // SAFETY: one thread uses the ring's submission queue; REGISTER's iovec array
        // and every buffer lie in the shared area, which outlives every ring.
        let pushed = unsafe { ring.submission_shared().push(&sqe) };
        if pushed.is_ok() {
            return Ok(());
        }
        sub.kick(ring)?;
        std::thread::yield_now();
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_daemon(
    mode: Mode,
    setup: Setup,
    owned: &[Ring],
    area: &Shared,
    stats: &Shared,
    dev: &OwnedFd,
    queues: usize,
    successor: bool,
) -> io::Result<Pid> {
    spawn(move || {
        if let Err(e) = daemon(mode, setup, owned, area, stats, dev, queues, successor) {
            eprintln!("daemon: {e}");
        }
    })
}

/// A daemon: serves every ring, one thread each. In owner modes it uses the
/// supervisor's rings, inherited over fork (the ring fds and their SQ/CQ mappings;
/// a process that is not a child would get the fds over SCM_RIGHTS and mmap them).
#[allow(clippy::too_many_arguments)]
fn daemon(
    mode: Mode,
    setup: Setup,
    owned: &[Ring],
    area: &Shared,
    stats: &Shared,
    dev: &OwnedFd,
    queues: usize,
    successor: bool,
) -> io::Result<()> {
    let layout = setup.rings(queues);
    let mut mine: Vec<Ring> = Vec::new();
    if mode == Mode::Plain {
        for _ in &layout {
            let ring: Ring = IoUring::builder().build(8)?;
            ring.submitter().register_files(&[dev.as_raw_fd()])?;
            mine.push(ring);
        }
    }
    let rings: &[Ring] = if mode == Mode::Owner { owned } else { &mine };
    std::thread::scope(|s| {
        for (ring, qs) in rings.iter().zip(layout) {
            let sub = Submit {
                keeper: setup.keeper && mode == Mode::Owner,
                area,
                bell_at: qs.start * DEPTH * ENT_SZ,
            };
            s.spawn(move || {
                if setup.pin && qs.len() == 1 {
                    pin(qs.start);
                }
                if let Err(e) = serve(
                    mode,
                    &sub,
                    ring,
                    area,
                    stats,
                    qs.clone(),
                    successor,
                    setup.work_us,
                ) {
                    eprintln!("queues {qs:?}: {e}");
                }
            });
        }
    });
    Ok(())
}

fn unique_of(area: &Shared, e: usize) -> u64 {
    let mut b = [0u8; 8];
    area.read(e * ENT_SZ + 8, &mut b);
    u64::from_ne_bytes(b)
}

/// The `user_data` of entry `e`'s command of generation `generation`.
fn token(e: usize, generation: u64) -> u64 {
    e as u64 | generation << 16
}

#[allow(clippy::too_many_arguments)]
fn serve(
    mode: Mode,
    sub: &Submit<'_>,
    ring: &Ring,
    area: &Shared,
    stats: &Shared,
    qs: std::ops::Range<usize>,
    successor: bool,
    work_us: u64,
) -> io::Result<()> {
    let first = qs.start * DEPTH;
    let count = qs.len() * DEPTH;
    // Generations of an entry's commands whose CQE is still expected, as a range:
    // the command submitted last and, after recoveries over an owner's ring, the
    // commits pushed for the same request before it. Any other CQE is stale.
    let mut accept: Vec<(u64, u64)> = vec![(1, 0); count];
    let sq_tail = if mode == Mode::Owner {
        Some(SqTail::new(ring)?)
    } else {
        None
    };
    // Read before this daemon pushes anything: what the predecessor published.
    let tail_at_start = sq_tail.as_ref().map_or(0, SqTail::get);
    for (k, acc) in accept.iter_mut().enumerate() {
        let e = first + k;
        let q = e / DEPTH;
        let gen_word = area.word(e * ENT_SZ + GEN_AT);
        let lo_word = area.word(e * ENT_SZ + LO_GEN_AT);
        let generation = gen_word.load(Ordering::Acquire);
        let lo = lo_word.load(Ordering::Acquire).min(generation);
        let taken = area.word(e * ENT_SZ + TAKEN_AT).load(Ordering::Acquire);
        let taken_gen = area.word(e * ENT_SZ + TAKEN_GEN_AT).load(Ordering::Acquire);
        let done = area.word(e * ENT_SZ + DONE_AT).load(Ordering::Acquire);
        let header = unique_of(area, e);
        let pending = match mode {
            // The kernel may be copying a request into an available entry right now:
            // trust only what the predecessor took from the completion queue.
            Mode::Owner => (taken != done).then_some(taken),
            // The predecessor's rings are gone: a request in the header that was not
            // committed is there for good.
            Mode::Plain => (successor && header != 0 && header != done).then_some(header),
        };
        let next = generation + 1;
        // Over an owner's ring, a commit the predecessor published goes through (or
        // has): the entry may already hold the next request, so recovery must leave
        // it alone and wait for that command's CQE.
        let published = mode == Mode::Owner
            && pending.is_some()
            && generation != taken_gen
            && (tail_at_start
                .wrapping_sub(area.word(e * ENT_SZ + PUSH_TAIL_AT).load(Ordering::Acquire) as u32)
                as i32)
                >= 0;
        if published {
            lo_word.store(generation, Ordering::Release);
            area.word(e * ENT_SZ + DONE_AT)
                .store(taken, Ordering::Release);
            *acc = (generation, generation);
            continue;
        }
        match pending {
            Some(u) => {
                if mode == Mode::Plain && taken != header {
                    save_request(area, e);
                }
                answer(area, stats, e, work_us);
                // Generations are bumped before a command is pushed: any one after
                // the taken CQE's may have reached the ring.
                let lo = if mode == Mode::Owner {
                    taken_gen + 1
                } else {
                    next
                };
                // The tail first: a bumped generation then always has its tail.
                if let Some(t) = &sq_tail {
                    area.word(e * ENT_SZ + PUSH_TAIL_AT)
                        .store(u64::from(t.get().wrapping_add(1)), Ordering::Release);
                }
                gen_word.store(next, Ordering::Release);
                lo_word.store(lo, Ordering::Release);
                push(sub, ring, commit_sqe(e, q, u, next))?;
                area.word(e * ENT_SZ + DONE_AT).store(u, Ordering::Release);
                *acc = (lo, next);
            }
            None if mode == Mode::Plain => {
                gen_word.store(next, Ordering::Release);
                lo_word.store(next, Ordering::Release);
                push(sub, ring, register_sqe(area, e, q, next))?;
                *acc = (next, next);
            }
            None => *acc = (lo, generation),
        }
    }
    sub.kick(ring)?;
    stats.word(READY * 8).fetch_add(1, Ordering::SeqCst);
    loop {
        match sub.wait(ring) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        loop {
            // SAFETY: one thread uses this ring's completion queue.
            let mut cq = unsafe { ring.completion_shared() };
            let Some(cqe) = cq.next() else { break };
            let e = (cqe.user_data() & 0xffff) as usize;
            let generation = cqe.user_data() >> 16;
            let Some(k) = e.checked_sub(first).filter(|&k| k < count) else {
                continue;
            };
            let q = e / DEPTH;
            let (lo, hi) = accept[k];
            if generation < lo || generation > hi {
                // Stale: the CQE of a command whose request a recovery answered, or
                // a refused duplicate commit.
                continue;
            }
            let res = cqe.result();
            if res < 0 {
                drop(cq);
                if lo < hi {
                    // A refused duplicate: another candidate is the live command.
                    continue;
                }
                if res == -nix::libc::ENOTCONN || res == -nix::libc::ECONNABORTED {
                    return Ok(());
                }
                if mode == Mode::Plain && successor {
                    // A recovery commit refused: the predecessor's went through
                    // before its ring died; register the entry again.
                    let next = area
                        .word(e * ENT_SZ + GEN_AT)
                        .fetch_add(1, Ordering::AcqRel)
                        + 1;
                    area.word(e * ENT_SZ + LO_GEN_AT)
                        .store(next, Ordering::Release);
                    push(sub, ring, register_sqe(area, e, q, next))?;
                    sub.kick(ring)?;
                    accept[k] = (next, next);
                    continue;
                }
                eprintln!(
                    "queue {q} entry {e} lost: {}",
                    io::Error::from_raw_os_error(-res)
                );
                continue;
            }
            accept[k] = (1, 0);
            let unique = unique_of(area, e);
            save_request(area, e);
            area.word(e * ENT_SZ + TAKEN_GEN_AT)
                .store(generation, Ordering::Release);
            area.word(e * ENT_SZ + TAKEN_AT)
                .store(unique, Ordering::Release);
            drop(cq);
            answer(area, stats, e, work_us);
            let gen_word = area.word(e * ENT_SZ + GEN_AT);
            let next = gen_word.load(Ordering::Acquire).max(generation) + 1;
            // The tail first: a bumped generation then always has its tail.
            if let Some(t) = &sq_tail {
                area.word(e * ENT_SZ + PUSH_TAIL_AT)
                    .store(u64::from(t.get().wrapping_add(1)), Ordering::Release);
            }
            gen_word.store(next, Ordering::Release);
            area.word(e * ENT_SZ + LO_GEN_AT)
                .store(next, Ordering::Release);
            push(sub, ring, commit_sqe(e, q, unique, next))?;
            sub.kick(ring)?;
            area.word(e * ENT_SZ + DONE_AT)
                .store(unique, Ordering::Release);
            accept[k] = (next, next);
        }
    }
}

/// Copies the request's `fuse_in_header` where a successor finds it after the reply
/// overwrote the header buffer.
fn save_request(area: &Shared, e: usize) {
    let mut head = [0u8; 40];
    area.read(e * ENT_SZ, &mut head);
    area.write(e * ENT_SZ + SAVE_AT, &head);
}

/// Writes the reply to the request in entry `e` (its header saved by
/// [`save_request`]).
fn answer(area: &Shared, stats: &Shared, e: usize, work_us: u64) {
    if work_us > 0 {
        let t = Instant::now();
        while t.elapsed() < Duration::from_micros(work_us) {
            std::hint::spin_loop();
        }
    }
    let base = e * ENT_SZ;
    let mut head = [0u8; 40];
    area.read(base + SAVE_AT, &mut head);
    let opcode = u32::from_ne_bytes(head[4..8].try_into().unwrap_or_default());
    let counter = match opcode {
        1 => ANSWERED,
        3 => ANSWERED + 1,
        17 => ANSWERED + 2,
        _ => ANSWERED + 3,
    };
    stats.word(counter * 8).fetch_add(1, Ordering::Relaxed);
    let mut body = [0u8; 104];
    let (error, len): (i32, usize) = match opcode {
        // GETATTR: fuse_attr_out, never cached.
        3 => {
            let attr = &mut body[16..];
            attr[0..8].copy_from_slice(&1u64.to_ne_bytes());
            attr[60..64].copy_from_slice(&(0o040_755u32).to_ne_bytes());
            attr[64..68].copy_from_slice(&2u32.to_ne_bytes());
            attr[80..84].copy_from_slice(&4096u32.to_ne_bytes());
            (0, 104)
        }
        // STATFS: fuse_kstatfs.
        17 => {
            body[40..44].copy_from_slice(&4096u32.to_ne_bytes());
            body[44..48].copy_from_slice(&255u32.to_ne_bytes());
            body[48..52].copy_from_slice(&4096u32.to_ne_bytes());
            (0, 80)
        }
        1 => (-nix::libc::ENOENT, 0),
        _ => (-nix::libc::ENOSYS, 0),
    };
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&u32::try_from(16 + len).unwrap_or(16).to_ne_bytes());
    out[4..8].copy_from_slice(&error.to_ne_bytes());
    out[8..16].copy_from_slice(&head[8..16]);
    area.write(base, &out);
    area.write(base + HEADER_SZ, &body[..len]);
    area.write(
        base + ENT_IN_OUT_AT + 16,
        &u32::try_from(len).unwrap_or(0).to_ne_bytes(),
    );
}
