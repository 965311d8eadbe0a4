//! passthrough: a real filesystem over a source directory, served with fuse-live,
//! with kernel passthrough for open files, that survives a live handoff.
//!
//! ```text
//! cargo run --release --example passthrough -- SOURCE MOUNTPOINT [--threads N] [--allow-other]
//!         [--no-passthrough] [--no-file-handles] [--ttl SECS] [--upgrade-socket PATH]
//!         [--transport auto|dev-fuse|io-uring] [--atomic-o-trunc]
//! cargo run --release --example passthrough -- --takeover PATH [--threads N] [--upgrade-socket PATH2]
//! ```
//!
//! Mounts SOURCE's contents at MOUNTPOINT with `default_permissions` (the kernel
//! checks permissions against the attributes), prints exactly one line
//! `ready MOUNTPOINT` on stdout once the mount serves, and runs until the
//! filesystem is unmounted or the process receives SIGINT or SIGTERM (then it
//! unmounts), and exits 0. Bad arguments print a usage line on stderr and exit 2; a
//! failure to mount or serve exits 1.
//!
//! - `--threads N`: at most N `/dev/fuse` worker threads (default 2): one per usable
//!   CPU to start, more while requests are held in the filesystem.
//! - `--allow-other`: let every user access the mount (the mount option).
//! - `--no-passthrough`: never use kernel passthrough (FUSE 7.40, Linux 6.9+);
//!   by default it is used when the kernel agrees and this process may register
//!   backing files (`CAP_SYS_ADMIN`), and the mount falls back to serving READ and
//!   WRITE itself otherwise.
//! - `--no-file-handles`: keep a descriptor per node instead of file handles
//!   (what happens anyway on filesystems without them, or without
//!   `CAP_DAC_READ_SEARCH`); a live handoff then passes every node's descriptor.
//! - `--ttl SECS`: how long the kernel caches names and attributes (default 1).
//! - `--atomic-o-trunc`: ask for `ATOMIC_O_TRUNC` (OPEN carries `O_TRUNC` and this
//!   process truncates: one SETATTR less per truncating open). Off by default:
//!   the kernel then refuses to truncate a running program's executable only after
//!   the OPEN emptied it (docs/CONFORMANCE.md).
//! - `--upgrade-socket PATH` / `--takeover PATH`: live handoff, as memfs: the new
//!   process takes over the mount, open files (their descriptors cross with
//!   `SCM_RIGHTS`, unlinked ones included), directory streams and passthrough
//!   backing ids.
//! - `--transport auto|dev-fuse|io-uring`: the kernel transport (default `auto`:
//!   io_uring where the kernel offers it — the `fuse` module parameter
//!   `enable_uring` is on — and this process may run on more than one CPU,
//!   `/dev/fuse` otherwise; `RUST_LOG=debug` says which it chose and why). As with
//!   memfs, a daemon that must survive its process (`--upgrade-socket`, or under a
//!   fd store) serves through `/dev/fuse` with `auto` and refuses `io-uring` before
//!   mounting, while io_uring mounts can be neither handed off nor recovered.
//!   An unknown value exits 2.
//!
//! - Under a fd store (`fuse-live-keeper -- passthrough SOURCE MOUNTPOINT ...`, or
//!   systemd with `FileDescriptorStoreMax=`): crash recovery. The session is
//!   journaled into a memfd kept in the store with the `/dev/fuse` descriptor; a
//!   restarted process recovers the mount instead of mounting (open files reopened
//!   by file handle, or taken from the store when they were unlinked while open;
//!   leaked backing ids released; intents checked), and prints `ready MOUNTPOINT`
//!   at each start. Not with `--upgrade-socket` or `--no-file-handles`. See
//!   docs/RECOVERY.md, "passthrough: crash recovery".
//!
//! **Run it as root, with `default_permissions` (always set here).** The daemon
//! acts on SOURCE with its own credentials; the kernel's permission checks are what
//! stop one user from reading another's files. A mount *without*
//! `default_permissions` would let every user who can reach the mount read, write,
//! chmod and delete anything in SOURCE that the daemon can (as root: everything),
//! because this filesystem does no permission checks of its own. New inodes are
//! given to the creating user (`fchownat`).
//!
//! Nothing resolves outside SOURCE: every name is one component (`.`, `..`, `/`,
//! NUL refused), opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! relative to its parent's descriptor; symlinks are never followed by the daemon
//! (the kernel follows them on the client's side, in the client's namespace).
//!
//! Logging goes to stderr; `RUST_LOG=error|warn|info|debug|trace` sets the level
//! (default `warn`).
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::os::fd::AsFd;
use std::sync::Arc;

use fuse_session::dev::fdstore::{FdStore, JOURNAL_FD};
use fuse_session::dev::{JournalMap, MountOptions};
use fuse_session::serve::{Backend, Running, Server, TransportKind};
use fuse_session::wire::InitFlags;
use fuse_session::Session;
use fuse_snapshot::handoff::{self, Ended, HandoffOptions, Takeover, UpgradeListener};
use fuse_snapshot::journal::session::{recover_session, JournalHook, RecoveredSession};
use fuse_snapshot::journal::JournalOptions;
use fuse_snapshot::FdRestorer;

#[allow(dead_code)]
mod node;
#[allow(dead_code)]
mod passfs;
mod recovery;
mod snapshot;

use passfs::{Config, PassFs};

const USAGE: &str = "usage: passthrough SOURCE MOUNTPOINT [--threads N] [--allow-other] \
     [--no-passthrough] [--no-file-handles] [--ttl SECS] [--upgrade-socket PATH] \
     [--transport auto|dev-fuse|io-uring] [--atomic-o-trunc]\n       \
     passthrough --takeover PATH [--threads N] [--upgrade-socket PATH]";

/// The parsed command line.
#[derive(Debug)]
struct Args {
    /// Empty with `--takeover`.
    source: String,
    /// Empty with `--takeover`.
    mountpoint: String,
    threads: usize,
    allow_other: bool,
    config: Config,
    upgrade_socket: Option<PathBuf>,
    takeover: Option<PathBuf>,
    /// `--transport auto|dev-fuse|io-uring`.
    transport: TransportKind,
    /// `--atomic-o-trunc`.
    atomic_o_trunc: bool,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut threads = 2;
    let mut allow_other = false;
    let mut config = Config::default();
    let mut upgrade_socket = None;
    let mut takeover = None;
    let mut transport = TransportKind::Auto;
    let mut atomic_o_trunc = false;
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
            "--allow-other" if inline.is_none() => allow_other = true,
            "--no-passthrough" if inline.is_none() => config.passthrough = false,
            "--no-file-handles" if inline.is_none() => config.file_handles = false,
            "--atomic-o-trunc" if inline.is_none() => atomic_o_trunc = true,
            "--ttl" => {
                let v = value("--ttl")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
                    .ok_or(format!("bad --ttl {v:?}"))?;
                config.ttl = Duration::from_secs_f64(secs);
            }
            "--upgrade-socket" => upgrade_socket = Some(PathBuf::from(value("--upgrade-socket")?)),
            "--takeover" => takeover = Some(PathBuf::from(value("--takeover")?)),
            "--transport" => transport = value("--transport")?.parse()?,
            f if f.starts_with('-') && f.len() > 1 => return Err(format!("unknown option {f:?}")),
            _ => positional.push(arg),
        }
    }
    let (source, mountpoint) = match (positional.len(), &takeover) {
        (0, Some(_)) => (String::new(), String::new()),
        (_, Some(_)) => return Err("--takeover takes no SOURCE or MOUNTPOINT".into()),
        (2, None) => (positional[0].clone(), positional[1].clone()),
        (0 | 1, None) => return Err("SOURCE and MOUNTPOINT are needed".into()),
        (_, None) => return Err(format!("unexpected argument {:?}", positional[2])),
    };
    Ok(Args {
        source,
        mountpoint,
        threads,
        allow_other,
        config,
        upgrade_socket,
        takeover,
        transport,
        atomic_o_trunc,
    })
}

fn main() -> ExitCode {
    fuse_live_testkit::stderr_log::init("passthrough");
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("passthrough: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    handoff::block_upgrade_signals();
    // Before any thread: claims LISTEN_FDS and NOTIFY_SOCKET (fuse-live-keeper or
    // systemd), removing them from the environment.
    let store = match FdStore::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("passthrough: the fd store: {e}");
            return ExitCode::from(1);
        }
    };
    // Modes come from the kernel with the caller's umask applied; this process's
    // own umask must not remove more.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    raise_fd_limit();
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
            eprintln!("passthrough: {e}");
            ExitCode::from(1)
        }
    }
}

/// One descriptor per node the kernel knows: raise the soft limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let root = rustix::fs::open(
        args.source.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("cannot open SOURCE {:?}: {e}", args.source))?;
    let mut fs = PassFs::new(root, args.config)?;
    fs.atomic_o_trunc = args.atomic_o_trunc;
    let opts = MountOptions::new()
        .fsname(&args.source)
        .subtype("passthrough")
        .default_permissions(true)
        .allow_other(args.allow_other);
    let mountpoint = PathBuf::from(&args.mountpoint);
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
    let mount = fuse_session::dev::mount(&mountpoint, &opts)?;
    // Taken before serving: `Running::with_mount` refuses while io_uring serves.
    let device = mount.device().try_clone_to_owned()?;
    let running =
        Server::from_parts(Session::new(fs), mount).spawn_with(transport, args.threads)?;
    give_device_fd(&running, Some(device), false);
    ready(&args.mountpoint)?;
    serve_until_done(&running, listener.as_ref(), args)
}

/// The largest journal (address space reserved once; a memfd is sparse, and is
/// compacted long before).
const JOURNAL_MAX: u64 = 1 << 30;

fn open_source(source: &str) -> Result<std::os::fd::OwnedFd, String> {
    rustix::fs::open(
        source,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("cannot open SOURCE {source:?}: {e}"))
}

/// Under a fd store (`fuse-live-keeper -- passthrough SOURCE MOUNTPOINT`, or
/// systemd): a journaled mount that survives the process. First start: mount,
/// journal into a memfd, store the `/dev/fuse` descriptor and the journal. A start
/// that finds them in `LISTEN_FDS` recovers instead: the session and the
/// journaled state from the journal, the open files reopened (by file handle, or
/// from the fd store for files unlinked while open), leaked backing ids released,
/// then `NOTIFY_RESEND` and serving the same connection.
fn serve_journaled(args: &Args, mut store: FdStore) -> Result<(), Box<dyn std::error::Error>> {
    if args.upgrade_socket.is_some() {
        return Err("under a fd store (crash recovery), --upgrade-socket is not supported".into());
    }
    if !args.config.file_handles {
        return Err(
            "under a fd store (crash recovery), --no-file-handles is not supported: a \
             successor finds the nodes again by file handle"
                .into(),
        );
    }
    // Only /dev/fuse can be recovered: said (auto) or refused (io-uring) before
    // anything is mounted or recovered.
    args.transport
        .restartable("crash recovery (a fd store: fuse-live-keeper or systemd)")?;
    let mountpoint = PathBuf::from(&args.mountpoint);
    let options = JournalOptions::default();
    let running = match store.take_mount(&mountpoint)? {
        Some(mount) => {
            let fd = store
                .take(JOURNAL_FD)
                .ok_or("the fd store holds the mount but no journal")?;
            let map = JournalMap::from_fd(fd, JOURNAL_MAX)?;
            let root = open_source(&args.source)?;
            let recovered =
                recover_session::<PassFs>(map, &mut FdRestorer::new(vec![root]), options)
                    .map_err(|e| format!("recover from the journal: {e}"))?;
            let (records, replies) = (recovered.records, recovered.replies);
            let (session, hook, map, rec) = recovered.into_parts();
            let fs = session.filesystem();
            let unused = fs.settle_backings();
            let reopened = fs.reopen_files(&mut store);
            let device = mount.device().try_clone_to_owned()?;
            let agreed = session.init_state().is_some_and(|s| {
                InitFlags(s.result.flags).contains(InitFlags::PASSTHROUGH)
                    && s.result.max_stack_depth > 0
            });
            fs.set_device(device, agreed, true);
            let leaked = fs.release_leaked_backings();
            log::warn!(
                "recovering: {records} journal records replayed, {replies} recorded replies; \
                 open files: {} reopened by file handle, {} from the fd store, {} dead; {} stale \
                 stored descriptors removed; {} backing ids registered, {leaked} leaked ones \
                 released ({unused} unused ones); {} intents pending",
                reopened.by_handle,
                reopened.from_store,
                reopened.dead,
                reopened.stale,
                fs.backing_count(),
                passfs::lock(&fs.jr.intents).len(),
            );
            let resend = session.snapshot().is_some_and(|s| s.kernel_has_resend());
            // NOTIFY_RESEND before any worker reads (as memfs, see there).
            if resend {
                resend_now(&session, &mount)?;
            } else {
                log::warn!(
                    "the kernel cannot resend requests (no FUSE_HAS_RESEND): those the dead \
                     process had read stay unanswered"
                );
            }
            let server = Server::from_parts(session, mount);
            RecoveredSession::resume(&hook, server.session(), map, &rec)
                .map_err(|e| format!("resume the journal: {e}"))?;
            wire_journal(server.session(), &hook, store)?;
            let store = fd_store_of(server.session())?;
            (server.spawn(args.threads)?, store)
        }
        None => {
            let root = open_source(&args.source)?;
            let mut fs = PassFs::new(root, args.config)?;
            fs.atomic_o_trunc = args.atomic_o_trunc;
            if fs.mount_id.is_none() {
                return Err(
                    "crash recovery needs file handles on SOURCE (and CAP_DAC_READ_SEARCH)".into(),
                );
            }
            let opts = MountOptions::new()
                .fsname(&args.source)
                .subtype("passthrough")
                .default_permissions(true)
                .allow_other(args.allow_other);
            let mount = fuse_session::dev::mount(&mountpoint, &opts)?;
            let mut session = Session::new(fs);
            let hook = JournalHook::<PassFs>::new(options);
            session.set_hook(hook.clone());
            let server = Server::from_parts(session, mount);
            wire_journal(server.session(), &hook, store)?;
            let running = server.spawn(args.threads)?;
            give_device(&running, false);
            let map = JournalMap::memfd("passthrough-journal", JOURNAL_MAX)?;
            let fd = map.fd().try_clone_to_owned()?;
            hook.start(running.session(), map)
                .map_err(|e| format!("start the journal: {e}"))?;
            let store = fd_store_of(running.session())?;
            store.store(JOURNAL_FD, fd.as_fd())?;
            running.with_mount(|m| store.store_mount(m)).transpose()?;
            (running, store)
        }
    };
    let (running, store) = running;
    store.ready()?;
    ready(&args.mountpoint)?;
    let served = serve_until_done(&running, None, args);
    let _ = store.stopping();
    served
}

/// The fd store the filesystem was given by [`wire_journal`].
fn fd_store_of(session: &Session<PassFs>) -> Result<Arc<FdStore>, Box<dyn std::error::Error>> {
    Ok(session
        .filesystem()
        .jr
        .store
        .get()
        .cloned()
        .ok_or("no fd store")?)
}

/// Gives the filesystem the fd store and a way to append a journal record now
/// (for its intents).
fn wire_journal(
    session: &Arc<Session<PassFs>>,
    hook: &Arc<JournalHook<PassFs>>,
    store: FdStore,
) -> Result<(), Box<dyn std::error::Error>> {
    let fs = session.filesystem();
    if fs.jr.store.set(Arc::new(store)).is_err() {
        return Err("the fd store was already set".into());
    }
    let weak = Arc::downgrade(hook);
    let flush: Box<dyn Fn() + Send + Sync> = Box::new(move || {
        if let Some(h) = weak.upgrade() {
            h.record_now();
        }
    });
    let _ = fs.jr.flush.set(flush);
    Ok(())
}

/// Sends NOTIFY_RESEND on the mount's device: the requests the dead process read
/// and did not answer go back to the head of the queue, with bit 63 of `unique` set.
fn resend_now(
    session: &Session<PassFs>,
    mount: &fuse_session::dev::Mount,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut buf = [0u8; 64];
    let n = fuse_session::wire::notify::resend(&mut buf, &session.negotiated())
        .map_err(|e| format!("encode NOTIFY_RESEND: {e}"))?;
    let sent = nix::unistd::write(mount.device(), &buf[..n])
        .map_err(|e| format!("send NOTIFY_RESEND: {e}"))?;
    if sent != n {
        return Err(format!("NOTIFY_RESEND: {sent} of {n} bytes written").into());
    }
    Ok(())
}

/// Hands the filesystem a descriptor of its connection (for the backing ioctls).
fn give_device(running: &Running<PassFs>, restored: bool) {
    let device = match running.backend() {
        Backend::Uring { .. } => None,
        _ => running
            .with_mount(|m| m.device().try_clone_to_owned())
            .and_then(Result::ok),
    };
    give_device_fd(running, device, restored);
}

/// As [`give_device`], with the descriptor `device` of the connection.
fn give_device_fd(running: &Running<PassFs>, device: Option<std::os::fd::OwnedFd>, restored: bool) {
    let agreed = running.session().init_state().is_some_and(|s| {
        InitFlags(s.result.flags).contains(InitFlags::PASSTHROUGH) && s.result.max_stack_depth > 0
    });
    let fs = running.session().filesystem();
    match device {
        Some(d) => {
            let on = fs.set_device(d, agreed, restored);
            log::info!("kernel passthrough {}", if on { "on" } else { "off" });
        }
        None => log::warn!("no device descriptor: serving without kernel passthrough"),
    }
}

fn ready(mountpoint: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {mountpoint}")?;
    out.flush()
}

/// Serves until unmounted, a termination signal, or a handoff to a new process.
fn serve_until_done(
    running: &Running<PassFs>,
    listener: Option<&UpgradeListener>,
    args: &Args,
) -> Result<(), Box<dyn std::error::Error>> {
    let options = HandoffOptions::new().threads(args.threads);
    let ended = handoff::serve_with_upgrades(running, listener, &options, |_| {
        log::warn!("SIGUSR1: passthrough writes no snapshot files (its state is descriptors)");
    })?;
    if let Ended::HandedOff(outcome) = ended {
        let s = outcome.stats;
        log::info!(
            "handed over to pid {}: {} snapshot bytes, {} nodeids, {} handles, stall {:?}",
            s.peer_pid,
            s.snapshot_bytes,
            s.nodes,
            s.handles,
            s.stall
        );
        drop(outcome.mount);
    } else {
        let fs = running.session().filesystem();
        log::info!(
            "unmounted: {} backing ids registered, {} files open",
            fs.backing_count(),
            fs.open_count()
        );
    }
    Ok(())
}

/// `--takeover PATH`: take the mount over from the passthrough daemon listening on
/// PATH, serve it, and listen for the next upgrade.
fn take_over(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = &args.takeover else {
        return Err("no --takeover path".into());
    };
    let options = HandoffOptions::new().threads(args.threads);
    let restored = Takeover::connect(path, &options)?.receive::<PassFs>()?;
    let (running, stats) = restored.commit()?;
    give_device(&running, true);
    log::info!(
        "restored {} open files and {} backing ids",
        running.session().filesystem().open_count(),
        running.session().filesystem().backing_count()
    );
    let listen_on = args.upgrade_socket.as_ref().unwrap_or(path);
    let listener = UpgradeListener::bind_replacing(listen_on);
    let mountpoint = running
        .mountpoint()
        .map(|m| m.display().to_string())
        .unwrap_or_default();
    ready(&mountpoint)?;
    log::info!(
        "took over {mountpoint} from pid {}: {} snapshot bytes, {} nodeids, {} handles, \
         restore {:?}, stall {:?}",
        stats.peer_pid,
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
    serve_until_done(&running, listener.as_ref(), args)
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
            "/src",
            "/mnt",
            "--threads",
            "4",
            "--allow-other",
            "--no-passthrough",
        ])
        .unwrap();
        assert_eq!(
            (
                a.source.as_str(),
                a.mountpoint.as_str(),
                a.threads,
                a.allow_other
            ),
            ("/src", "/mnt", 4, true)
        );
        assert!(!a.config.passthrough);
        assert!(a.config.file_handles);
        assert!(!a.atomic_o_trunc);
        assert!(
            parse(&["/a", "/b", "--atomic-o-trunc"])
                .unwrap()
                .atomic_o_trunc
        );
        assert!(parse(&["/a", "/b", "--atomic-o-trunc=1"]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["/a"]).is_err());
        assert!(parse(&["/a", "/b", "/c"]).is_err());
        assert!(parse(&["/a", "/b", "--threads"]).is_err());
        assert!(parse(&["/a", "/b", "--threads", "0"]).is_err());
        assert!(parse(&["/a", "/b", "--bogus"]).is_err());
        assert!(parse(&["/a", "/b", "--no-passthrough=1"]).is_err());
        let t = parse(&["--takeover", "/run/s"]).unwrap();
        assert_eq!(t.takeover, Some(PathBuf::from("/run/s")));
        assert!(parse(&["/a", "/b", "--takeover", "/run/s"]).is_err());
    }

    #[test]
    fn transport_flag() {
        assert_eq!(parse(&["/s", "/m"]).unwrap().transport, TransportKind::Auto);
        for (v, want) in [
            ("auto", TransportKind::Auto),
            ("dev-fuse", TransportKind::DevFuse),
            ("io-uring", TransportKind::IoUring),
        ] {
            assert_eq!(
                parse(&["/s", "/m", "--transport", v]).unwrap().transport,
                want
            );
            let inline = format!("--transport={v}");
            assert_eq!(parse(&["/s", "/m", &inline]).unwrap().transport, want);
        }
        for bad in ["uring", "", "AUTO", "dev_fuse", "io-uring "] {
            let e = parse(&["/s", "/m", "--transport", bad]).unwrap_err();
            assert!(
                e.contains("unknown transport") && e.contains("auto, dev-fuse or io-uring"),
                "{bad:?}: {e}"
            );
        }
        let e = parse(&["/s", "/m", "--transport"]).unwrap_err();
        assert!(e.contains("--transport needs a value"), "{e}");
    }
}
