//! memfs: a complete in-memory POSIX filesystem served with fuse-live.
//!
//! ```text
//! cargo run --release -p memfs -- MOUNTPOINT [--threads N] [--allow-other] [--auto-unmount] [--ttl SECS] [--size BYTES]
//!         [--upgrade-socket PATH] [--snapshot-dir DIR] [--transport auto|dev-fuse|io-uring]
//! cargo run --release -p memfs -- --takeover PATH [--threads N] [--upgrade-socket PATH2] [--snapshot-dir DIR]
//! ```
//!
//! Mounts at MOUNTPOINT (with `default_permissions`: the kernel checks permissions),
//! prints exactly one line `ready MOUNTPOINT` on stdout once the mount serves, and
//! runs until the filesystem is unmounted or the process receives SIGINT or SIGTERM
//! (then it unmounts), and exits 0. Bad arguments print a usage line on stderr and
//! exit 2; a failure to mount or serve exits 1.
//!
//! - `-o OPTIONS`: comma-separated mount options: `noatime`, `relatime` (the
//!   default), `strictatime`, `allow_other`, `auto_unmount` (`rw`, `nosuid`, `nodev`
//!   and `default_permissions` are accepted: memfs always mounts so). memfs follows
//!   the mount's access-time mode, also after a remount changes it (within a second).
//! - `--threads N`: at most N `/dev/fuse` worker threads (default 2): one per usable
//!   CPU to start, more while requests are held in the filesystem.
//! - `--allow-other`: let every user access the mount (the mount option).
//! - `--auto-unmount`: mount through `fusermount3` with `auto_unmount`, so that the
//!   mount goes away when the last process holding it dies; a live handoff passes the
//!   watcher's socket on, so a takeover does not trigger it.
//! - `--ttl SECS`: how long the kernel caches names and attributes (default 1,
//!   fractions allowed, 0 for none).
//! - `--size BYTES`: the most file data it holds (suffix K, M, G or T; default half
//!   of the machine's memory); beyond it writes fail with ENOSPC.
//! - `--upgrade-socket PATH`: listen on the unix socket PATH (mode 0600) for a new
//!   process that takes the mount over (live upgrade, see `fuse_snapshot::handoff`).
//!   When one does, this process stops serving without unmounting and exits 0.
//! - `--takeover PATH`: instead of mounting, take the mount over from the memfs that
//!   listens on PATH: files, contents, open files and directory streams carry over.
//!   Prints `ready MOUNTPOINT` once it serves, then listens on PATH itself (or on
//!   `--upgrade-socket`) so it can be replaced in turn. Exits 1 if the takeover
//!   fails (the old process then serves on).
//! - `--transport auto|dev-fuse|io-uring`: the kernel transport (default `auto`:
//!   io_uring where the kernel offers it — the `fuse` module parameter
//!   `enable_uring` is on — and this process may run on more than one CPU,
//!   `/dev/fuse` otherwise; `RUST_LOG=debug` says which it chose and why). Under a
//!   fd store `io-uring` is recovered after a crash (its ring entries are stored in
//!   a memfd; a request that reaches the dying process's ring can fail with
//!   ECANCELED: docs/RECOVERY.md "Crash recovery over io_uring"), and `auto` serves
//!   through `/dev/fuse`, which loses no call. With `--upgrade-socket`, `auto`
//!   serves through `/dev/fuse` (said at log level info) and `io-uring` serves
//!   through rings whose entries are in a memfd that the handoff passes on
//!   (docs/DESIGN.md, "Live handoff over io_uring"; not yet under a fd store).
//!   An unknown value exits 2.
//! - `--state FILE`: keep the contents across mounts. At start, if FILE exists, the
//!   filesystem is restored from it (a snapshot file, as `--snapshot-dir` writes;
//!   a damaged or unreadable file is an error, exit 1); at a clean end (unmounted,
//!   SIGTERM, SIGINT) the contents are written to FILE atomically (mode 0600). Files,
//!   contents, attributes and inode numbers carry over; open files, nodeids and
//!   unlinked-but-open files cannot (a new mount is a new connection:
//!   `fuse_snapshot::cold`). The saved filesystem's `--ttl` and `--size` apply. A
//!   process killed with SIGKILL saves nothing.
//! - `--no-resend`: under a fd store (crash recovery), recover as if the kernel had
//!   no `FUSE_HAS_RESEND`: the requests the dead process had read but not answered
//!   are answered from the request slots (`fuse_session::dev::slots`) instead of
//!   being resent by the kernel. Without a fd store it changes nothing.
//! - `--journal-compact-after BYTES`: under a fd store (crash recovery), compact
//!   the journal (a fresh checkpoint, a new log) once its log holds BYTES (suffix
//!   K, M, G or T; default 16M). Small values make compactions frequent (the
//!   fault-injection tests use this).
//! - `--journal-resume in-place|new-epoch`: under a fd store, how the journal goes
//!   on after a crash: `in-place` (default) continues the recovered log where it
//!   ended (its torn tail cut), `new-epoch` writes a fresh checkpoint of the whole
//!   state into a new epoch first (slower with much state; the fault-injection
//!   tests use it to reach the new epoch's header).
//! - `--snapshot-dir DIR`: on SIGUSR1, write a snapshot of the session and the
//!   contents to `DIR/memfs.snapshot` (atomically, mode 0600); the mount pauses only
//!   while the snapshot is taken (the stall is logged at level info).
//!
//! Under a fd store (`fuse-live-keeper -- memfs MOUNTPOINT`, or systemd: `NOTIFY_SOCKET`
//! set) memfs journals every request and recovers the mount after a crash; with
//! `--upgrade-socket PATH` it can also be replaced live: SIGHUP to the keeper starts
//! a successor (`FUSE_LIVE_UPGRADE_FROM`) that takes the mount over through PATH
//! and continues the journal (docs/RECOVERY.md). `--state` and `--auto-unmount` are
//! refused there.
//!
//! Logging goes to stderr; `RUST_LOG=error|warn|info|debug|trace` sets the level
//! (default `warn`).
//!
//! What it supports: regular files (sparse, in 4 KiB chunks), directories, symlinks,
//! hard links, device nodes, fifos and sockets, extended attributes (`user.`,
//! `trusted.`, `security.`), `renameat2` with `RENAME_NOREPLACE` and
//! `RENAME_EXCHANGE`, truncate, `fallocate` (allocate, `KEEP_SIZE`,
//! `PUNCH_HOLE`, `ZERO_RANGE`), `SEEK_DATA`/`SEEK_HOLE` (4 KiB granularity),
//! `copy_file_range`, `O_TMPFILE`, READDIRPLUS, and unlinked files that stay usable
//! while open. POSIX and BSD locks are left to the kernel (local to this mount).
//! The whole contents are one serde value (`state::State`).
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuse_session::dev::{Atime, MountOptions};
use fuse_session::serve::{Backend, Running, Server, TransportKind};

use std::os::fd::AsFd;
use std::sync::Arc;

use fuse_session::dev::fdstore::{FdStore, JOURNAL_FD, REQUEST_SLOTS_FD, RING_AREA_FD};
use fuse_session::dev::{JournalMap, RequestSlots, RingArea};
use fuse_session::serve::UringOptions;
use fuse_session::wire::Opcode;
use fuse_session::{Accepted, ReplyParts, Session, StepHook};
use fuse_snapshot::handoff::{
    self, CommitObserver, Ended, HandoffOptions, Takeover, UpgradeListener,
};
use fuse_snapshot::journal::session::{recover_session, JournalHook, RecoveredSession};
use fuse_snapshot::journal::JournalOptions;
use fuse_snapshot::FdRestorer;
use memfs::fs::{Config, MemFs};

const USAGE: &str =
    "usage: memfs MOUNTPOINT [-o OPTIONS] [--threads N] [--allow-other] [--auto-unmount] \
     [--ttl SECS] [--size BYTES[K|M|G|T]] [--state FILE] [--upgrade-socket PATH] \
     [--snapshot-dir DIR] [--transport auto|dev-fuse|io-uring] \
     [--journal-compact-after BYTES] [--journal-resume in-place|new-epoch] \
     [--no-resend]\n       \
     memfs --takeover PATH [--threads N] [--state FILE] [--upgrade-socket PATH] \
     [--snapshot-dir DIR]";

/// Test hooks for the handoff tests (environment variable `MEMFS_HANDOFF_TEST`, read
/// by a `--takeover` process): `exit-after-receive` exits right after receiving the
/// snapshot (a process dying mid-restore), `nack-after-receive` refuses it,
/// `versions=MIN:MAX` announces those snapshot format versions; read by the first
/// daemon (under a fd store too), `hold-before-commit=DIR` holds each handoff paused before Commit: it
/// creates `DIR/paused` and waits (at most 4 s) for `DIR/go`, so that a test can
/// send requests that the paused process's ring entries hold.
const TEST_HOOK: &str = "MEMFS_HANDOFF_TEST";

/// The `hold-before-commit=DIR` test hook (see [`TEST_HOOK`]).
#[derive(Debug)]
struct HoldBeforeCommit(PathBuf);

/// The `hold-before-commit=DIR` hook, if [`TEST_HOOK`] asks for it.
fn hold_before_commit() -> Option<HoldBeforeCommit> {
    std::env::var(TEST_HOOK)
        .ok()
        .and_then(|v| v.strip_prefix("hold-before-commit=").map(PathBuf::from))
        .map(HoldBeforeCommit)
}

impl fuse_snapshot::handoff::CommitObserver for HoldBeforeCommit {
    fn before_commit(&self, _new_pid: i32) -> Result<(), String> {
        std::fs::write(self.0.join("paused"), b"").map_err(|e| e.to_string())?;
        let go = self.0.join("go");
        for _ in 0..400 {
            if go.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn rolled_back(&self) {}
}

/// The snapshot file `--snapshot-dir` writes.
const SNAPSHOT_FILE: &str = "memfs.snapshot";

/// The parsed command line.
#[derive(Debug)]
struct Args {
    /// Empty with `--takeover`.
    mountpoint: String,
    threads: usize,
    allow_other: bool,
    /// Mount through fusermount3 with `auto_unmount`: the mount goes when the last
    /// process holding it dies (survives handoffs).
    auto_unmount: bool,
    /// `-o noatime|relatime|strictatime`.
    atime: Option<Atime>,
    ttl: Duration,
    size: Option<u64>,
    upgrade_socket: Option<PathBuf>,
    takeover: Option<PathBuf>,
    snapshot_dir: Option<PathBuf>,
    /// `--state FILE`: contents loaded at start, saved at a clean end.
    state: Option<PathBuf>,
    /// `--no-resend`: recover from the request slots even if the kernel can resend.
    no_resend: bool,
    /// `--transport auto|dev-fuse|io-uring`.
    transport: TransportKind,
    /// `--journal-compact-after BYTES` (under a fd store).
    compact_after: Option<u64>,
    /// `--journal-resume new-epoch` (under a fd store): recovery writes a fresh
    /// checkpoint instead of continuing the log in place.
    resume_new_epoch: bool,
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut mountpoint = None;
    let mut threads = 2;
    let mut allow_other = false;
    let mut auto_unmount = false;
    let mut atime = None;
    let mut ttl = Duration::from_secs(1);
    let mut size = None;
    let mut upgrade_socket = None;
    let mut takeover = None;
    let mut snapshot_dir = None;
    let mut state = None;
    let mut no_resend = false;
    let mut transport = TransportKind::Auto;
    let mut compact_after = None;
    let mut resume_new_epoch = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--threads" => {
                let v = value("--threads")?;
                threads = v
                    .parse()
                    .ok()
                    .filter(|&n| (1..=256).contains(&n))
                    .ok_or(format!("bad --threads {v:?}"))?;
            }
            "-o" => {
                let v = value("-o")?;
                for opt in v.split(',') {
                    match opt {
                        "allow_other" => allow_other = true,
                        "auto_unmount" => auto_unmount = true,
                        "noatime" => atime = Some(Atime::NoAtime),
                        "relatime" => atime = Some(Atime::Relatime),
                        "strictatime" => atime = Some(Atime::StrictAtime),
                        // What mount(8) passes that is already memfs's behaviour.
                        "rw" | "default_permissions" | "nosuid" | "nodev" => {}
                        _ => return Err(format!("unsupported mount option {opt:?} in -o")),
                    }
                }
            }
            "--allow-other" if inline.is_none() => allow_other = true,
            "--auto-unmount" if inline.is_none() => auto_unmount = true,
            "--no-resend" if inline.is_none() => no_resend = true,
            "--ttl" => {
                let v = value("--ttl")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
                    .ok_or(format!("bad --ttl {v:?}"))?;
                ttl = Duration::from_secs_f64(secs);
            }
            "--size" => {
                let v = value("--size")?;
                size = Some(
                    parse_size(&v)
                        .filter(|&n| n > 0)
                        .ok_or(format!("bad --size {v:?}"))?,
                );
            }
            "--upgrade-socket" => upgrade_socket = Some(PathBuf::from(value("--upgrade-socket")?)),
            "--takeover" => takeover = Some(PathBuf::from(value("--takeover")?)),
            "--snapshot-dir" => snapshot_dir = Some(PathBuf::from(value("--snapshot-dir")?)),
            "--state" => state = Some(PathBuf::from(value("--state")?)),
            "--transport" => transport = value("--transport")?.parse()?,
            "--journal-compact-after" => {
                let v = value("--journal-compact-after")?;
                compact_after = Some(
                    parse_size(&v)
                        .filter(|&n| n > 0)
                        .ok_or(format!("bad --journal-compact-after {v:?}"))?,
                );
            }
            "--journal-resume" => {
                resume_new_epoch = match value("--journal-resume")?.as_str() {
                    "in-place" => false,
                    "new-epoch" => true,
                    v => return Err(format!("bad --journal-resume {v:?}")),
                };
            }
            f if f.starts_with('-') => return Err(format!("unknown option {f:?}")),
            _ if mountpoint.is_none() => mountpoint = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let mountpoint = match (mountpoint, &takeover) {
        (Some(_), Some(_)) => return Err("--takeover takes no MOUNTPOINT".into()),
        (None, Some(_)) => String::new(),
        (m, None) => m.ok_or("no MOUNTPOINT given")?,
    };
    Ok(Args {
        mountpoint,
        threads,
        allow_other,
        auto_unmount,
        atime,
        ttl,
        size,
        upgrade_socket,
        takeover,
        snapshot_dir,
        state,
        no_resend,
        transport,
        compact_after,
        resume_new_epoch,
    })
}

/// Half of the machine's memory, as tmpfs defaults to (1 GiB if unknown).
fn default_capacity() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kib.map_or(1 << 30, |k| k * 1024 / 2)
}

fn main() -> ExitCode {
    fuse_live_testkit::stderr_log::init("memfs");
    fuse_session::trace::phase("memfs: main");
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("memfs: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Termination signals (and SIGUSR1) wait in a queue until the serving loop reads
    // them, so one that arrives while mounting still unmounts cleanly.
    handoff::block_upgrade_signals();
    // Before any thread: claims LISTEN_FDS and NOTIFY_SOCKET (fuse-live-keeper or
    // systemd), removing them from the environment.
    let store = match FdStore::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("memfs: the fd store: {e}");
            return ExitCode::from(1);
        }
    };
    let served = if args.takeover.is_some() {
        take_over(&args)
    } else if store.is_supervised() {
        serve_journaled(&args, store)
    } else {
        serve(&args)
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memfs: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config { ttl: args.ttl };
    let capacity = args.size.unwrap_or_else(default_capacity);
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let fs = match &args.state {
        Some(path) if path.exists() => load_state(path, args)?,
        _ => MemFs::new(uid, gid, capacity, config),
    };
    let mut opts = MountOptions::new()
        .fsname("memfs")
        .subtype("memfs")
        .default_permissions(true)
        .allow_other(args.allow_other)
        .auto_unmount(args.auto_unmount);
    if let Some(a) = args.atime {
        opts = opts.atime(a);
    }
    let mountpoint = PathBuf::from(&args.mountpoint);
    // Bound before mounting: a path in use fails before anything is mounted.
    let listener = args
        .upgrade_socket
        .as_ref()
        .map(UpgradeListener::bind)
        .transpose()?;
    // Checked before mounting: a transport that cannot keep the promise is refused.
    let transport = match &listener {
        Some(_) => args
            .transport
            .restartable("live upgrade (--upgrade-socket)")?,
        None => args.transport,
    };
    let server = Server::mount(fs, &mountpoint, &opts)?;
    let running = if listener.is_some() && transport == TransportKind::IoUring {
        // Entries in a memfd, which the handoff passes on.
        server.spawn_uring(&restartable_uring(args))?
    } else {
        server.spawn_with(transport, args.threads)?
    };
    follow_mount(&running);
    ready(&args.mountpoint)?;
    let mut options = HandoffOptions::new().threads(args.threads);
    if let Some(hold) = hold_before_commit() {
        options = options.commit_observer(Arc::new(hold));
    }
    serve_until_done(&running, listener.as_ref(), args, options).map(drop)
}

/// The largest journal (address space reserved once; a memfd is sparse and is
/// compacted long before).
const JOURNAL_MAX: u64 = 8 << 30;

/// Under a fd store (`fuse-live-keeper -- memfs MOUNTPOINT`, or systemd): a journaled
/// mount that survives the process. First start: mount, journal into a memfd, read
/// requests into request slots (another memfd), store the `/dev/fuse` descriptor,
/// the journal and the slots. A start that finds them in `LISTEN_FDS` recovers
/// instead: rebuilds session and contents from the journal, gets what the dead
/// process had read and not answered answered (the kernel resends it, or, without
/// `FUSE_HAS_RESEND` or with `--no-resend`, it is answered from the slots), and
/// serves the same connection.
fn serve_journaled(args: &Args, mut store: FdStore) -> Result<(), Box<dyn std::error::Error>> {
    if args.state.is_some() || args.auto_unmount {
        return Err(
            "under a fd store (crash recovery), --state and --auto-unmount are not supported"
                .into(),
        );
    }
    // Checked before anything is mounted or recovered: a live upgrade
    // (--upgrade-socket) and crash recovery both work over either transport;
    // auto picks /dev/fuse, which loses no call to a crash.
    let transport = match &args.upgrade_socket {
        Some(_) => args
            .transport
            .restartable("live upgrade (--upgrade-socket)")?,
        None => args
            .transport
            .recoverable("crash recovery (a fd store: fuse-live-keeper or systemd)"),
    };
    if let Some(from) = store.upgrade_from() {
        return take_over_journaled(args, store, from);
    }
    fuse_session::trace::phase("memfs: fd store claimed");
    // The dead process's io_uring entries, mapped back at their address first,
    // before the journal's large mapping could take the range.
    let old_ring = match store.take(RING_AREA_FD).map(RingArea::from_fd) {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            log::error!(
                "the stored io_uring entries cannot be used ({e}): the requests they held \
                 stay unanswered"
            );
            None
        }
        None => None,
    };
    fuse_session::trace::phase("memfs: ring area mapped back (if any)");
    // Bound before mounting or recovering: a path in use fails first. A stale
    // socket (a daemon that crashed) is replaced.
    let listener = args
        .upgrade_socket
        .as_ref()
        .map(UpgradeListener::bind)
        .transpose()?;
    let mountpoint = PathBuf::from(&args.mountpoint);
    let mut options = JournalOptions::default();
    if let Some(n) = args.compact_after {
        options.compact_after = n;
    }
    fuse_session::trace::phase("memfs: upgrade socket bound (if any)");
    let running = match store.take_mount(&mountpoint)? {
        Some(mount) => {
            let fd = store
                .take(JOURNAL_FD)
                .ok_or("the fd store holds the mount but no journal")?;
            let map = JournalMap::from_fd(fd, JOURNAL_MAX)?;
            fuse_session::trace::phase("memfs: journal mapped");
            let recovered = recover_session::<MemFs>(map, &mut FdRestorer::empty(), options)
                .map_err(|e| format!("recover from the journal: {e}"))?;
            let (records, replies, log_end) = (
                recovered.records,
                recovered.replies,
                format!("{:?}", recovered.log_end()),
            );
            fuse_session::trace::phase("memfs: journal recovered");
            let (mut session, hook, map, rec) = recovered.into_parts();
            fuse_session::trace::phase("memfs: recovered session taken apart");
            log::warn!(
                "recovering: {records} journal records replayed, {replies} recorded replies, \
                 log end {log_end}, {} nodeids, {} open handles, {} INTERRUPTs and {} FORGET \
                 entries so far",
                session.node_count(),
                session.handle_count(),
                session.stats().interrupts.load(Ordering::Relaxed),
                session.stats().forgets.load(Ordering::Relaxed)
            );
            session.set_hook(crash_test_hook(&hook));
            // The dead process's request slots (absent if it predates them).
            let old_slots = match store.take(REQUEST_SLOTS_FD).map(RequestSlots::from_fd) {
                Some(Ok(s)) => Some(s),
                Some(Err(e)) => {
                    log::error!("the stored request slots cannot be used: {e}");
                    None
                }
                None => None,
            };
            fuse_session::trace::phase("memfs: request slots mapped back");
            let mut server = Server::from_parts(session, mount);
            if args.resume_new_epoch {
                RecoveredSession::resume_new_epoch(&hook, server.session(), map, &rec)
            } else {
                RecoveredSession::resume(&hook, server.session(), map, &rec)
            }
            .map_err(|e| format!("resume the journal: {e}"))?;
            fuse_session::trace::phase("memfs: journal resumed");
            // Before any worker reads: NOTIFY_RESEND (the kernel resends every
            // request being processed, so sent later it would also resend requests
            // this process had just read and drop their first reply), or, without
            // it (or with --no-resend), the requests the slots hold answered with
            // their original uniques.
            let done = server
                .recover_requests(old_slots.as_ref(), !args.no_resend)
                .map_err(|e| format!("recover the requests in flight: {e}"))?;
            fuse_session::trace::phase("memfs: requests in flight recovered");
            log::warn!("requests in flight at the crash: {done:?}");
            // Slots for this process's workers: the same memfd when it fits.
            let read_size = server.session().read_buffer_size();
            let slots = match old_slots {
                Some(s) if s.len() >= args.threads && s.fits(read_size) => Arc::new(s),
                _ => {
                    let s = Arc::new(RequestSlots::memfd(
                        "memfs-request-slots",
                        args.threads,
                        read_size,
                    )?);
                    store.store(REQUEST_SLOTS_FD, s.fd())?;
                    s
                }
            };
            server.set_request_slots(slots);
            fuse_session::trace::phase("memfs: request slots set");
            let over_uring = server.session().init_state().is_some_and(|i| {
                fuse_session::wire::InitFlags(i.result.flags)
                    .contains(fuse_session::wire::InitFlags::OVER_IO_URING)
            });
            if over_uring {
                // Once a connection has used io_uring, requests only come through
                // rings: serve with rings, adopting the dead process's entries.
                match old_ring {
                    Some(area) => {
                        let done = server.recover_ring(area);
                        log::warn!("requests in the io_uring entries at the crash: {done:?}");
                    }
                    None => log::error!(
                        "the mount is served through io_uring but the fd store holds no ring \
                         entries: requests the dead process held stay unanswered"
                    ),
                }
                let running = server.spawn_uring(&restartable_uring(args))?;
                store_ring(&store, &running)?;
                running
            } else {
                server.spawn(args.threads)?
            }
        }
        None => {
            let config = Config { ttl: args.ttl };
            let capacity = args.size.unwrap_or_else(default_capacity);
            let uid = nix::unistd::geteuid().as_raw();
            let gid = nix::unistd::getegid().as_raw();
            let fs = MemFs::new(uid, gid, capacity, config);
            let mut opts = MountOptions::new()
                .fsname("memfs")
                .subtype("memfs")
                .default_permissions(true)
                .allow_other(args.allow_other);
            if let Some(a) = args.atime {
                opts = opts.atime(a);
            }
            let mount = fuse_session::dev::mount(&mountpoint, &opts)?;
            let mut session = Session::new(fs);
            let hook = JournalHook::<MemFs>::new(options);
            session.set_hook(crash_test_hook(&hook));
            let mut server = Server::from_parts(session, mount);
            // Sized for requests before INIT (the largest the kernel may send).
            let slots = Arc::new(RequestSlots::memfd(
                "memfs-request-slots",
                args.threads,
                server.session().read_buffer_size(),
            )?);
            server.set_request_slots(Arc::clone(&slots));
            let running = match transport {
                TransportKind::DevFuse => server.spawn(args.threads)?,
                kind => {
                    let mut o = restartable_uring(args);
                    o.required = kind == TransportKind::IoUring;
                    if kind == TransportKind::Auto && !fuse_session::serve::auto_picks_uring() {
                        server.spawn(args.threads)?
                    } else {
                        server.spawn_uring(&o)?
                    }
                }
            };
            store_ring(&store, &running)?;
            let map = JournalMap::memfd("memfs-journal", JOURNAL_MAX)?;
            let fd = map.fd().try_clone_to_owned()?;
            hook.start(running.session(), map)
                .map_err(|e| format!("start the journal: {e}"))?;
            store.store(JOURNAL_FD, fd.as_fd())?;
            store.store(REQUEST_SLOTS_FD, slots.fd())?;
            running.with_mount(|m| store.store_mount(m)).transpose()?;
            running
        }
    };
    follow_mount(&running);
    fuse_session::trace::phase("memfs: mount followed");
    store.ready()?;
    fuse_session::trace::phase("memfs: READY=1 sent to the fd store");
    ready(&args.mountpoint)?;
    fuse_session::trace::phase("memfs: ready line written");
    serve_journaled_until_done(&running, listener.as_ref(), args, Arc::new(store))
}

/// io_uring options for a mount that must survive its process: the entries in a
/// memfd (stored by [`store_ring`]).
fn restartable_uring(args: &Args) -> UringOptions {
    let mut o = UringOptions::default();
    o.required = true;
    o.restartable = true;
    o.fallback_threads = args.threads;
    o
}

/// Stores the io_uring entries' memory in the fd store, when the mount is served
/// through io_uring (a successor answers the requests they hold).
fn store_ring(store: &FdStore, running: &Running<MemFs>) -> Result<(), Box<dyn std::error::Error>> {
    if !matches!(running.backend(), Backend::Uring { .. }) {
        return Ok(());
    }
    let area = running
        .ring_area()
        .ok_or("served through io_uring without a ring area")?;
    let fd = area
        .fd()
        .ok_or("the io_uring entries are not in a memfd: they cannot be stored")?;
    store.store(RING_AREA_FD, fd)?;
    Ok(())
}

/// Serves a journaled mount until done; a live handoff's successor must be the fd
/// store manager's (a sibling), and is named to it (`MAINPID=`) before Commit.
fn serve_journaled_until_done(
    running: &Running<MemFs>,
    listener: Option<&UpgradeListener>,
    args: &Args,
    store: Arc<FdStore>,
) -> Result<(), Box<dyn std::error::Error>> {
    // No pre-copy: the journal uses the session's and memfs's change recording.
    let options = HandoffOptions::new()
        .threads(args.threads)
        .precopy(false)
        .commit_observer(Arc::new(Handover {
            store: store.clone(),
            hold: hold_before_commit(),
        }));
    if !serve_until_done(running, listener, args, options)? {
        let _ = store.stopping();
    }
    Ok(())
}

/// Tells the fd store's manager (`fuse-live-keeper`) which process is the daemon
/// across a live handoff.
#[derive(Debug)]
struct Handover {
    store: Arc<FdStore>,
    /// The `hold-before-commit` test hook ([`TEST_HOOK`]), under the keeper too.
    hold: Option<HoldBeforeCommit>,
}

impl CommitObserver for Handover {
    fn before_commit(&self, new_pid: i32) -> Result<(), String> {
        if let Some(h) = &self.hold {
            h.before_commit(new_pid)?;
        }
        // Only a process the manager started (a sibling) may take over: the
        // manager supervises its direct children only, and would otherwise take
        // this process's exit for the daemon's end.
        let ours = nix::unistd::getppid().as_raw();
        match parent_of(new_pid) {
            Some(p) if p == ours => {}
            p => {
                return Err(format!(
                    "pid {new_pid} (parent {p:?}) was not started by the fd store's manager \
                     (pid {ours}): under fuse-live-keeper, send it SIGHUP to replace the daemon"
                ))
            }
        }
        match self.store.main_pid(new_pid as u32) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot name the successor to the manager: {e}")),
        }
    }

    fn rolled_back(&self) {
        if let Err(e) = self.store.main_pid(std::process::id()) {
            log::error!("cannot tell the manager the handoff rolled back: {e}");
        }
    }
}

/// The parent pid of `pid` (`/proc/PID/stat`), if it can be read.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Under the keeper, started on SIGHUP as the successor of the daemon `from`:
/// takes the mount over through `--upgrade-socket` (no pre-copy), continues the
/// journal (from the fd store) in a new epoch before serving, then serves and
/// listens for the next upgrade.
fn take_over_journaled(
    args: &Args,
    mut store: FdStore,
    from: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let path = args.upgrade_socket.clone().ok_or(
        "started to replace the daemon (FUSE_LIVE_UPGRADE_FROM) without --upgrade-socket: \
         no way to reach it",
    )?;
    let journal = store
        .take(JOURNAL_FD)
        .ok_or("started to replace the daemon, but the fd store holds no journal")?;
    // The mount's descriptor comes with the handoff (the same connection).
    drop(store.take(fuse_session::dev::fdstore::FUSE_DEVICE_FD));
    let options = HandoffOptions::new().threads(args.threads).precopy(false);
    let takeover = Takeover::connect(&path, &options)?;
    if takeover.peer_pid() != from as i32 {
        return Err(format!(
            "{} is served by pid {}, not by the daemon to replace (pid {from})",
            path.display(),
            takeover.peer_pid()
        )
        .into());
    }
    let restored = takeover.receive::<MemFs>()?;
    let map = JournalMap::from_fd(journal, JOURNAL_MAX)?;
    let mut journal_options = JournalOptions::default();
    if let Some(n) = args.compact_after {
        journal_options.compact_after = n;
    }
    let hook = JournalHook::<MemFs>::new(journal_options);
    let mut journal_time = Duration::ZERO;
    // The predecessor's request slots: its workers were parked with nothing in
    // flight, so every slot is answered and this process's workers read into them
    // (a crash of this process is then recovered from them without RESEND).
    let slots = match store.take(REQUEST_SLOTS_FD).map(RequestSlots::from_fd) {
        Some(Ok(s)) if s.len() >= args.threads => Some(Arc::new(s)),
        Some(Ok(_)) => None,
        Some(Err(e)) => {
            log::error!("the stored request slots cannot be used: {e}");
            None
        }
        None => None,
    };
    let (running, stats) = restored.commit_then(|server| {
        if !server.set_hook(crash_test_hook(&hook)) {
            return Err("the session is shared: cannot journal it".into());
        }
        if let Some(s) = &slots {
            if s.fits(server.session().read_buffer_size()) {
                server.set_request_slots(Arc::clone(s));
            } else {
                log::warn!("the request slots are too small for this session: not used");
            }
        }
        let t = std::time::Instant::now();
        hook.take_over(server.session(), map)
            .map_err(|e| format!("continue the journal: {e}"))?;
        journal_time = t.elapsed();
        fuse_session::fault::point("handoff-new-journaled");
        Ok(())
    })?;
    // The previous daemon has stopped serving and is exiting: replace its socket.
    let listener = match UpgradeListener::bind_replacing(&path) {
        Ok(l) => Some(l),
        Err(e) => {
            log::error!("serving without an upgrade socket: {e}");
            None
        }
    };
    // Logged before the ready line, which tools wait for.
    log::info!(
        "took over from pid {from}: snapshot_bytes={} nodes={} handles={} stall_us={} \
         restore_us={} journal_us={}",
        stats.snapshot_bytes,
        stats.nodes,
        stats.handles,
        stats.stall.as_micros(),
        stats.restore.as_micros(),
        journal_time.as_micros()
    );
    follow_mount(&running);
    store.ready()?;
    ready(&args.mountpoint)?;
    serve_journaled_until_done(&running, listener.as_ref(), args, Arc::new(store))
}

/// Test hooks for the crash-recovery tests (environment variable `MEMFS_CRASH_TEST`,
/// read under a fd store), each acting once: it first creates the file MARKER, and
/// does nothing when MARKER exists already (the restarted process).
/// - `hold-mkdir:NAME:MARKER`: a MKDIR of NAME never returns (a request held in the
///   filesystem when the test kills the process);
/// - `hold-mkdirs:PREFIX:MARKER`: every MKDIR of a name that starts with PREFIX
///   never returns, once per name (marker `MARKER.NAME`): requests held on several
///   io_uring queues at once;
/// - `die-after-record:NAME:MARKER`: right after the journal recorded the reply of a
///   CREATE of NAME, before it is sent, the process SIGKILLs itself.
const CRASH_TEST_HOOK: &str = "MEMFS_CRASH_TEST";

/// The session's hook: the journal's, wrapped by [`CrashTest`] when
/// `MEMFS_CRASH_TEST` asks for it.
fn crash_test_hook(journal: &Arc<JournalHook<MemFs>>) -> Arc<dyn StepHook> {
    let spec = std::env::var(CRASH_TEST_HOOK).unwrap_or_default();
    let mut parts = spec.splitn(3, ':');
    let (mode, name, marker) = (parts.next(), parts.next(), parts.next());
    let (Some(mode), Some(name), Some(marker)) = (mode, name, marker) else {
        return journal.clone();
    };
    let (hold, prefix) = match mode {
        "hold-mkdir" => (true, false),
        "hold-mkdirs" => (true, true),
        "die-after-record" => (false, false),
        _ => {
            log::error!("{CRASH_TEST_HOOK}: unknown hook {mode:?}, ignored");
            return journal.clone();
        }
    };
    Arc::new(CrashTest {
        inner: journal.clone(),
        hold,
        prefix,
        name: name.as_bytes().to_vec(),
        marker: PathBuf::from(marker),
    })
}

/// See [`CRASH_TEST_HOOK`].
struct CrashTest {
    inner: Arc<JournalHook<MemFs>>,
    /// `hold-mkdir` (else `die-after-record`).
    hold: bool,
    /// `hold-mkdirs`: NAME is a prefix, and the marker is per name.
    prefix: bool,
    name: Vec<u8>,
    marker: PathBuf,
}

impl CrashTest {
    /// The request names NAME (its bytes hold `NAME\0`) and this is the first time.
    fn fires(&self, request: &Accepted<'_>, opcode: Opcode) -> bool {
        if self.prefix {
            // MKDIR: in header (40), fuse_mkdir_in (8), then the name.
            let name = request.bytes().get(48..).unwrap_or(&[]);
            let name = name.split(|&b| b == 0).next().unwrap_or(&[]);
            let mut marker = self.marker.clone().into_os_string();
            marker.push(".");
            marker.push(String::from_utf8_lossy(name).as_ref());
            return request.opcode() == opcode
                && name.starts_with(&self.name)
                && std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&marker)
                    .is_ok();
        }
        let n = self.name.len();
        request.opcode() == opcode
            && request
                .bytes()
                .windows(n + 1)
                .any(|w| w[..n] == self.name[..] && w[n] == 0)
            && std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.marker)
                .is_ok()
    }
}

impl StepHook for CrashTest {
    fn accepted(&self, request: &Accepted<'_>) {
        if self.hold && self.fires(request, Opcode::MKDIR) {
            log::warn!(
                "{CRASH_TEST_HOOK}: holding MKDIR unique={:#x}",
                request.unique()
            );
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        self.inner.accepted(request);
    }

    fn recorded_reply(&self, request: &Accepted<'_>, out: &mut [u8]) -> Option<usize> {
        self.inner.recorded_reply(request, out)
    }

    fn responding(&self, request: &Accepted<'_>, reply: &ReplyParts<'_>) {
        self.inner.responding(request, reply);
        if !self.hold && self.fires(request, Opcode::CREATE) {
            log::warn!(
                "{CRASH_TEST_HOOK}: dying after recording CREATE unique={:#x}",
                request.unique()
            );
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn unanswered(&self, request: &Accepted<'_>) {
        self.inner.unanswered(request);
    }

    fn applied_before(&self, request: &Accepted<'_>) -> Option<bool> {
        self.inner.applied_before(request)
    }
}

fn ready(mountpoint: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {mountpoint}")?;
    out.flush()
}

/// Serves until unmounted, a termination signal, or a handoff to a new process
/// (then returns true).
fn serve_until_done(
    running: &Running<MemFs>,
    listener: Option<&UpgradeListener>,
    args: &Args,
    options: HandoffOptions,
) -> Result<bool, Box<dyn std::error::Error>> {
    let ended = handoff::serve_with_upgrades(running, listener, &options, |running| {
        let Some(dir) = &args.snapshot_dir else {
            log::warn!("SIGUSR1 without --snapshot-dir: no snapshot written");
            return;
        };
        match handoff::save_snapshot(running, dir.join(SNAPSHOT_FILE)) {
            Ok(s) => log::info!(
                "snapshot written to {} ({} bytes, mount paused {:?})",
                s.path.display(),
                s.bytes,
                s.stall
            ),
            Err(e) => log::error!("snapshot to {} failed: {e}", dir.display()),
        }
    })?;
    match ended {
        Ended::HandedOff(outcome) => {
            let s = outcome.stats;
            log::info!(
                "handed over to pid {}: {} snapshot bytes, {} nodeids, {} handles, stall {:?}",
                s.peer_pid,
                s.snapshot_bytes,
                s.nodes,
                s.handles,
                s.stall
            );
            // Dropping the mount handle does not unmount: the new process serves it.
            drop(outcome.mount);
            return Ok(true);
        }
        _ => {
            {
                let state = running.session().filesystem().lock_read();
                log::info!(
                    "unmounted: {} inodes, {} bytes of data",
                    state.inode_count(),
                    state.used_bytes()
                );
            }
            if let Some(path) = &args.state {
                save_state(running, path)?;
            }
        }
    }
    Ok(false)
}

/// `--state FILE` at start: the contents of the snapshot in FILE, restored cold
/// (fresh nodeids; INIT starts from the recorded settings). A file that cannot be
/// used is an error, not an empty filesystem, which would overwrite it at the end.
fn load_state(path: &std::path::Path, args: &Args) -> Result<MemFs, Box<dyn std::error::Error>> {
    let bytes =
        fuse_snapshot::load_file(path).map_err(|e| format!("--state {}: {e}", path.display()))?;
    let cold = fuse_snapshot::restore_cold::<MemFs>(&bytes)
        .map_err(|e| format!("--state {}: {e}", path.display()))?;
    let wishes = cold.wishes();
    let mut fs = cold.fs;
    let dropped = fs.prepare_cold();
    fs.use_recorded_init(wishes);
    if args.ttl != fs.config().ttl {
        log::info!("--state: the saved --ttl {:?} applies", fs.config().ttl);
    }
    log::info!(
        "--state {}: restored {} inodes ({} unlinked ones dropped, {} nodeids and {} open \
         handles of the old mount not carried over)",
        path.display(),
        fs.lock_read().inode_count(),
        dropped,
        cold.dropped_nodes,
        cold.dropped_handles
    );
    Ok(fs)
}

/// `--state FILE` at a clean end (unmounted, SIGTERM, SIGINT): the session and the
/// contents, written atomically.
fn save_state(
    running: &Running<MemFs>,
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut fds = fuse_snapshot::FdSaver::new();
    let bytes = fuse_snapshot::snapshot(running.session(), &mut fds)
        .map_err(|e| format!("--state {}: snapshot: {e}", path.display()))?;
    fuse_snapshot::save_file(path, &bytes)
        .map_err(|e| format!("--state {}: write: {e}", path.display()))?;
    log::info!("--state {}: saved ({} bytes)", path.display(), bytes.len());
    Ok(())
}

/// Makes memfs follow its mount's access-time mode (a taken-over mount too).
fn follow_mount(running: &Running<MemFs>) {
    let found = match running.backend() {
        // `with_mount` refuses while io_uring serves (it is the handoff's door): the
        // identity is read at the mountpoint instead, without asking the filesystem.
        Backend::Uring { .. } => running.mountpoint().map(|p| {
            (
                fuse_session::dev::MountIdentity::at(&p)
                    .map_err(|e| log::debug!("the mount's identity: {e}"))
                    .ok(),
                p,
            )
        }),
        _ => running.with_mount(|m| (m.identity(), m.mountpoint().to_path_buf())),
    };
    match found {
        Some((Some(id), path)) => running.session().filesystem().follow_mount(id, path),
        _ => log::warn!("the mount's identity is unknown: atime follows relatime"),
    }
}

/// `--takeover PATH`: take the mount over from the memfs listening on PATH, serve
/// it, and listen for the next upgrade.
fn take_over(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = &args.takeover else {
        return Err("no --takeover path".into());
    };
    let hook = std::env::var(TEST_HOOK).unwrap_or_default();
    let mut options = HandoffOptions::new().threads(args.threads);
    if let Some(v) = hook.strip_prefix("versions=") {
        let (a, b) = v.split_once(':').ok_or("bad versions= hook")?;
        options = options.versions(a.parse()?, b.parse()?);
    }
    let restored = Takeover::connect(path, &options)?.receive::<MemFs>()?;
    match hook.as_str() {
        // Dies as a crashing process would: no Nack, the socket just closes.
        "exit-after-receive" => std::process::exit(3),
        "nack-after-receive" => {
            restored.refuse("refused by the MEMFS_HANDOFF_TEST hook");
            return Err("refused the snapshot (test hook)".into());
        }
        _ => {}
    }
    let (running, stats) = restored.commit()?;
    let listen_on = args.upgrade_socket.as_ref().unwrap_or(path);
    // The previous daemon has stopped serving and is exiting: replace its socket.
    let listener = UpgradeListener::bind_replacing(listen_on);
    let mountpoint = running
        .mountpoint()
        .map(|m| m.display().to_string())
        .unwrap_or_default();
    follow_mount(&running);
    ready(&mountpoint)?;
    log::info!(
        "took over {mountpoint} from pid {}: {} pre-copied bytes ({} rounds) in {:?} before \
         the pause, {} snapshot bytes, {} nodeids, {} handles, restore {:?}, stall {:?}",
        stats.peer_pid,
        stats.precopy_bytes,
        stats.precopy_rounds,
        stats.precopy,
        stats.snapshot_bytes,
        stats.nodes,
        stats.handles,
        stats.restore,
        stats.stall
    );
    let listener = match listener {
        Ok(l) => Some(l),
        Err(e) => {
            log::error!("serving without an upgrade socket: {e}");
            None
        }
    };
    let options = HandoffOptions::new().threads(args.threads);
    serve_until_done(&running, listener.as_ref(), args, options).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        let a = parse(&[
            "/mnt",
            "--threads",
            "4",
            "--allow-other",
            "--ttl=0.5",
            "--size",
            "1G",
        ])
        .unwrap();
        assert_eq!(
            (a.mountpoint.as_str(), a.threads, a.allow_other),
            ("/mnt", 4, true)
        );
        assert_eq!(a.ttl, Duration::from_millis(500));
        assert_eq!(a.size, Some(1 << 30));
        assert!(parse(&[]).is_err());
        assert!(parse(&["/a", "/b"]).is_err());
        assert!(parse(&["/a", "--threads"]).is_err());
        assert!(parse(&["/a", "--threads", "0"]).is_err());
        assert!(parse(&["/a", "--bogus"]).is_err());
        let o = parse(&["/a", "-o", "rw,noatime,allow_other"]).unwrap();
        assert_eq!((o.atime, o.allow_other), (Some(Atime::NoAtime), true));
        assert!(parse(&["/a", "-o", "exec,suid"]).is_err());
        assert!(parse(&["/a", "-o"]).is_err());
        let s = parse(&["/a", "--state", "/var/lib/m.state"]).unwrap();
        assert_eq!(s.state, Some(PathBuf::from("/var/lib/m.state")));
        assert!(parse(&["/a", "--ttl", "-1"]).is_err());
        let t = parse(&["--takeover", "/run/s", "--snapshot-dir=/d"]).unwrap();
        assert_eq!(t.takeover, Some(PathBuf::from("/run/s")));
        assert_eq!(t.snapshot_dir, Some(PathBuf::from("/d")));
        assert!(parse(&["/a", "--takeover", "/run/s"]).is_err());
        let u = parse(&["/a", "--upgrade-socket", "/run/s"]).unwrap();
        assert_eq!(u.upgrade_socket, Some(PathBuf::from("/run/s")));
        assert!(!u.no_resend);
        let r = parse(&["/a", "--no-resend", "--threads", "3"]).unwrap();
        assert!(r.no_resend);
        assert_eq!((r.mountpoint.as_str(), r.threads), ("/a", 3));
        assert!(parse(&["/a", "--no-resend=1"]).is_err());
    }

    #[test]
    fn transport_flag() {
        assert_eq!(parse(&["/a"]).unwrap().transport, TransportKind::Auto);
        for (v, want) in [
            ("auto", TransportKind::Auto),
            ("dev-fuse", TransportKind::DevFuse),
            ("io-uring", TransportKind::IoUring),
        ] {
            assert_eq!(parse(&["/a", "--transport", v]).unwrap().transport, want);
            let inline = format!("--transport={v}");
            assert_eq!(parse(&["/a", &inline]).unwrap().transport, want);
        }
        for bad in ["uring", "", "AUTO", "dev_fuse", "io-uring "] {
            let e = parse(&["/a", "--transport", bad]).unwrap_err();
            assert!(
                e.contains("unknown transport") && e.contains("auto, dev-fuse or io-uring"),
                "{bad:?}: {e}"
            );
        }
        let e = parse(&["/a", "--transport"]).unwrap_err();
        assert!(e.contains("--transport needs a value"), "{e}");
    }
}
