//! The benchmark filesystem: the same read-only tree, command line and INIT wishes as
//! the libfuse and fuser peers in the performance comparison (docs/BENCHMARKS.md), so
//! that the three libraries are measured on identical work.
//!
//! ```text
//! benchfs MOUNTPOINT TIMEOUT [--mt[=N]] [--transport[=]auto|dev-fuse|io-uring] [--uring] [--direct-io] [--keep-cache] [--max-read=BYTES] [--stats]
//! ```
//!
//! The tree (content generated, never stored: the byte at offset `o` is `o % 251`):
//!
//! ```text
//! /              dir,   ino 1, 0555
//! /big           1 GiB, ino 2, 0444
//! /f0000..f0999  4 KiB, ino 3..1002, 0444
//! ```
//!
//! - entry and attr timeout = TIMEOUT seconds (0: every `stat()` is a LOOKUP + GETATTR);
//! - INIT: libfuse 3.14's default wishes (ASYNC_READ, ATOMIC_O_TRUNC, AUTO_INVAL_DATA,
//!   ASYNC_DIO, PARALLEL_DIROPS, MAX_PAGES), max_write 1 MiB, max_background 16,
//!   congestion_threshold 12; mount options `ro` and `max_read=BYTES` (default 1 MiB);
//! - OPEN: no keep_cache unless `--keep-cache`; `--direct-io` answers FOPEN_DIRECT_IO;
//! - READ: zero-copy, a slice of one page-aligned pattern buffer lent to the reply;
//! - FORGET ignored (inodes are static), STATFS answered;
//! - `--mt[=N]`: N worker threads (4 with plain `--mt`), else one;
//! - `--transport auto|dev-fuse|io-uring` (or `--transport=...`; default `auto`):
//!   `auto` is `Server::spawn_with(TransportKind::Auto)` — io_uring where the kernel
//!   offers it (module parameter `enable_uring`) and more than one CPU is usable,
//!   else `/dev/fuse` (`RUST_LOG=debug` says which and why); `dev-fuse` is `--mt`
//!   workers reading `/dev/fuse`; `io-uring` is the same as `--uring`. The last
//!   of these flags wins; an unknown value exits 2. The environment variable
//!   `BENCHFS_TRANSPORT=auto|dev-fuse|io-uring` sets the default instead, so that
//!   the peers' `run_all.sh`, which passes every peer the same flags, can run each
//!   transport (`BENCHFS_TRANSPORT=dev-fuse` for the `/dev/fuse` rows measured
//!   before `auto` became the default);
//! - `--uring` (or the environment variable `BENCHFS_URING=1`, so that the peers'
//!   `run_all.sh` can run it unchanged; a `--transport` flag overrides it): serve
//!   through fuse-over-io_uring
//!   (`Server::spawn_uring`): one thread and ring per CPU, each pinned to its CPU,
//!   plus one `/dev/fuse` reader for FORGET and INTERRUPT. Fails with a clear error
//!   if the kernel does not offer it (module parameter `enable_uring`). `--mt=N`
//!   changes nothing then: there is one queue thread per CPU in either case;
//!   `BENCHFS_URING_DEPTH=N` sets the entries per queue (default 2);
//! - `--stats`: request counters on stderr at exit, in the peers' format.
//!
//! Logging goes to stderr; `RUST_LOG=error|warn|info|debug|trace` sets the level
//! (default `warn`).
//!
//! Prints `ready MOUNTPOINT` on stdout once the mount serves; exits 0 when unmounted
//! (`umount MOUNTPOINT`) or on SIGINT/SIGTERM (then it unmounts itself).
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, UNIX_EPOCH};

use fuse_session::dev::MountOptions;
use fuse_session::serve::{Backend, Server, TransportKind, UringOptions};
use fuse_session::wire::{FopenFlags, InitFlags};
use fuse_session::{
    AttrReply, DirEntries, Entry, Errno, FileAttr, FileType, Filesystem, InitWishes, Opened,
    ReadBuf, RequestContext, Result, Statfs,
};
use fuse_session::{FuseOpenFlags, OpenFlags};

const ROOT_INO: u64 = 1;
const BIG_INO: u64 = 2;
const SMALL_FIRST: u64 = 3;
const NSMALL: u64 = 1000;
const SMALL_SIZE: u64 = 4096;
const BIG_SIZE: u64 = 1 << 30;
const PATTERN_MOD: u64 = 251;
/// The largest READ served in one reply: the kernel never asks for more than
/// max_pages (256) pages.
const PAT_MAX: usize = 1 << 20;
const PAGE: usize = 4096;

/// Request counters, printed with `--stats` (the same set as the peers).
#[derive(Default)]
struct Stats {
    lookup: AtomicU64,
    getattr: AtomicU64,
    open: AtomicU64,
    read: AtomicU64,
    read_bytes: AtomicU64,
    max_read: AtomicU64,
    release: AtomicU64,
    readdir: AtomicU64,
}

struct BenchFs {
    ttl: Duration,
    open_flags: FopenFlags,
    max_read: u32,
    stats_on: bool,
    stats: Stats,
    /// `pattern[pat_off + i] == i % 251` for `i < PAT_MAX + 251`; `pattern[pat_off]`
    /// is page-aligned, as in both peers (an unaligned source makes the kernel's copy
    /// several times slower on the reference host).
    pattern: Vec<u8>,
    pat_off: usize,
}

impl BenchFs {
    fn new(ttl: Duration, open_flags: FopenFlags, max_read: u32, stats_on: bool) -> Self {
        let len = PAT_MAX + PATTERN_MOD as usize;
        let mut pattern = vec![0u8; len + PAGE];
        let pat_off = (PAGE - pattern.as_ptr() as usize % PAGE) % PAGE;
        for (i, b) in pattern[pat_off..pat_off + len].iter_mut().enumerate() {
            *b = (i as u64 % PATTERN_MOD) as u8;
        }
        BenchFs {
            ttl,
            open_flags,
            max_read,
            stats_on,
            stats: Stats::default(),
            pattern,
            pat_off,
        }
    }

    #[inline]
    fn count(&self, c: &AtomicU64, n: u64) {
        if self.stats_on {
            c.fetch_add(n, Relaxed);
        }
    }

    fn print_stats(&self, forgets: u64) {
        let s = &self.stats;
        eprintln!(
            "benchfs stats: lookup={} getattr={} open={} read={} read_bytes={} \
             max_read_req={} release={} readdir={} forget={}",
            s.lookup.load(Relaxed),
            s.getattr.load(Relaxed),
            s.open.load(Relaxed),
            s.read.load(Relaxed),
            s.read_bytes.load(Relaxed),
            s.max_read.load(Relaxed),
            s.release.load(Relaxed),
            s.readdir.load(Relaxed),
            forgets
        );
    }
}

fn file_size(ino: u64) -> Option<u64> {
    match ino {
        BIG_INO => Some(BIG_SIZE),
        i if (SMALL_FIRST..SMALL_FIRST + NSMALL).contains(&i) => Some(SMALL_SIZE),
        _ => None,
    }
}

fn attr_of(ino: u64) -> Option<FileAttr> {
    let (kind, perm, size, nlink) = if ino == ROOT_INO {
        (FileType::Directory, 0o555, 4096, 2)
    } else {
        (FileType::RegularFile, 0o444, file_size(ino)?, 1)
    };
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    Some(FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        kind,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

/// `big` -> 2, `f0000`..`f0999` -> 3..1002.
fn name_to_ino(name: &OsStr) -> Option<u64> {
    let b = name.as_bytes();
    if b == b"big" {
        return Some(BIG_INO);
    }
    if b.len() == 5 && b[0] == b'f' && b[1..].iter().all(u8::is_ascii_digit) {
        let n = b[1..]
            .iter()
            .fold(0u64, |a, d| a * 10 + u64::from(d - b'0'));
        if n < NSMALL {
            return Some(SMALL_FIRST + n);
        }
    }
    None
}

impl Filesystem for BenchFs {
    /// The inode number.
    type Node = u64;
    /// Nothing: a read needs only the node.
    type Handle = ();

    fn root(&self) -> u64 {
        ROOT_INO
    }

    fn init(&self, wishes: &mut InitWishes) -> Result<()> {
        wishes.flags = InitFlags::ASYNC_READ
            | InitFlags::ATOMIC_O_TRUNC
            | InitFlags::AUTO_INVAL_DATA
            | InitFlags::ASYNC_DIO
            | InitFlags::PARALLEL_DIROPS
            | InitFlags::MAX_PAGES;
        wishes.max_write = 1 << 20;
        wishes.max_background = 16;
        wishes.congestion_threshold = 12;
        Ok(())
    }

    fn lookup(&self, _: &RequestContext<'_>, parent: &u64, name: &OsStr) -> Result<Entry<u64>> {
        self.count(&self.stats.lookup, 1);
        match (*parent, name_to_ino(name)) {
            (ROOT_INO, Some(ino)) => Ok(Entry {
                node: ino,
                attr: attr_of(ino).ok_or(Errno::ENOENT)?,
                entry_ttl: self.ttl,
                attr_ttl: self.ttl,
            }),
            _ => Err(Errno::ENOENT),
        }
    }

    fn getattr(&self, _: &RequestContext<'_>, node: &u64, _: Option<&()>) -> Result<AttrReply> {
        self.count(&self.stats.getattr, 1);
        Ok(AttrReply {
            attr: attr_of(*node).ok_or(Errno::ENOENT)?,
            ttl: self.ttl,
        })
    }

    fn open(
        &self,
        _: &RequestContext<'_>,
        node: &u64,
        flags: OpenFlags,
        _: FuseOpenFlags,
    ) -> Result<Opened<()>> {
        self.count(&self.stats.open, 1);
        if *node == ROOT_INO {
            return Err(Errno::EISDIR);
        }
        if file_size(*node).is_none() {
            return Err(Errno::ENOENT);
        }
        if flags.access_mode() != OpenFlags::RDONLY {
            return Err(Errno::EACCES);
        }
        Ok(Opened {
            handle: (),
            flags: self.open_flags,
            backing_id: 0,
        })
    }

    fn read<'r>(
        &'r self,
        _: &RequestContext<'_>,
        node: &u64,
        _: &(),
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<u64>,
        out: &mut ReadBuf<'r, '_>,
    ) -> Result<()> {
        let fsize = file_size(*node).ok_or(Errno::EIO)?;
        if self.stats_on {
            self.stats.read.fetch_add(1, Relaxed);
            self.stats.max_read.fetch_max(u64::from(size), Relaxed);
        }
        if offset >= fsize {
            return Ok(()); // EOF: an empty reply.
        }
        let len = (u64::from(size).min(fsize - offset) as usize).min(PAT_MAX);
        self.count(&self.stats.read_bytes, len as u64);
        let start = self.pat_off + (offset % PATTERN_MOD) as usize;
        out.set(&self.pattern[start..start + len]);
        Ok(())
    }

    /// Not implemented, as in both peers (neither libfuse_peer nor fuser_peer has a
    /// flush operation): the first FLUSH is answered ENOSYS and the kernel sends no
    /// more (`fc->no_flush`), so `close()` costs one request fewer. The library's
    /// default answers success, which would keep a FLUSH on every close and make this
    /// filesystem do more work than its peers.
    fn flush(&self, _: &RequestContext<'_>, _: &u64, _: &(), _: u64) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    fn release(
        &self,
        _: &RequestContext<'_>,
        _: &u64,
        _: (),
        _: i32,
        _: u64,
        _: bool,
    ) -> Result<()> {
        self.count(&self.stats.release, 1);
        Ok(())
    }

    fn opendir(&self, _: &RequestContext<'_>, node: &u64, _: i32) -> Result<Opened<()>> {
        if *node == ROOT_INO {
            Ok(Opened::new(()))
        } else {
            Err(Errno::ENOTDIR)
        }
    }

    /// Entry `i`: 0 `.`, 1 `..`, 2 `big`, 3.. the small files; its next offset is `i + 1`.
    fn readdir(
        &self,
        _: &RequestContext<'_>,
        node: &u64,
        _: &(),
        offset: u64,
        out: &mut DirEntries<'_>,
    ) -> Result<()> {
        self.count(&self.stats.readdir, 1);
        if *node != ROOT_INO {
            return Err(Errno::ENOTDIR);
        }
        let mut name = *b"f0000";
        for i in offset..3 + NSMALL {
            let (ino, kind, n): (u64, FileType, &[u8]) = match i {
                0 => (ROOT_INO, FileType::Directory, b"."),
                1 => (ROOT_INO, FileType::Directory, b".."),
                2 => (BIG_INO, FileType::RegularFile, b"big"),
                _ => {
                    let k = i - 3;
                    for (d, place) in name[1..].iter_mut().zip([1000, 100, 10, 1]) {
                        *d = b'0' + (k / place % 10) as u8;
                    }
                    (SMALL_FIRST + k, FileType::RegularFile, &name)
                }
            };
            if out.push(ino, i + 1, kind, OsStr::from_bytes(n)).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn statfs(&self, _: &RequestContext<'_>, _: &u64) -> Result<Statfs> {
        Ok(Statfs {
            blocks: (BIG_SIZE + NSMALL * SMALL_SIZE) / 4096,
            files: 3 + NSMALL,
            bsize: 4096,
            frsize: 4096,
            namelen: 255,
            ..Statfs::default()
        })
    }
}

const USAGE: &str = "usage: benchfs MOUNTPOINT TIMEOUT [--mt[=N]] \
     [--transport[=]auto|dev-fuse|io-uring] [--uring] [--direct-io] [--keep-cache] \
     [--max-read=BYTES] [--stats]";

/// The parsed command line.
#[derive(Debug, PartialEq)]
struct Args {
    mountpoint: std::path::PathBuf,
    timeout: f64,
    threads: usize,
    stats: bool,
    transport: TransportKind,
    open_flags: FopenFlags,
    max_read: u32,
}

/// The transport when no flag names one: `BENCHFS_TRANSPORT` (`transport_env`), else
/// io_uring if `BENCHFS_URING=1` (`uring_env`), else `auto`.
fn default_transport(
    uring_env: bool,
    transport_env: Option<&str>,
) -> std::result::Result<TransportKind, String> {
    match transport_env {
        Some(v) => v.parse().map_err(|e| format!("BENCHFS_TRANSPORT: {e}")),
        None if uring_env => Ok(TransportKind::IoUring),
        None => Ok(TransportKind::Auto),
    }
}

/// Parses the arguments after the program name, with `transport` unless a flag
/// names another.
fn parse_args(args: &[String], transport: TransportKind) -> std::result::Result<Args, String> {
    if args.len() < 2 {
        return Err("MOUNTPOINT and TIMEOUT are needed".into());
    }
    let mountpoint = std::path::PathBuf::from(&args[0]);
    let timeout: f64 = args[1]
        .parse()
        .ok()
        .filter(|t: &f64| t.is_finite() && *t >= 0.0)
        .ok_or(format!("bad TIMEOUT {:?}", args[1]))?;
    let mut a = Args {
        mountpoint,
        timeout,
        threads: 1,
        stats: false,
        transport,
        open_flags: FopenFlags::EMPTY,
        max_read: 1 << 20,
    };
    let mut it = args[2..].iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mt" => a.threads = 4,
            s if s.starts_with("--mt=") => {
                a.threads = s[5..]
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("bad {s:?}"))?
            }
            "--direct-io" => a.open_flags |= FopenFlags::DIRECT_IO,
            "--keep-cache" => a.open_flags |= FopenFlags::KEEP_CACHE,
            "--stats" => a.stats = true,
            "--uring" => a.transport = TransportKind::IoUring,
            "--transport" => a.transport = it.next().ok_or("--transport needs a value")?.parse()?,
            s if s.starts_with("--transport=") => a.transport = s[12..].parse()?,
            s if s.starts_with("--max-read=") => {
                a.max_read = s[11..]
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("bad {s:?}"))?
            }
            s => return Err(format!("unknown argument {s:?}")),
        }
    }
    Ok(a)
}

fn main() {
    // Before any thread starts and before `ready` is printed: a SIGTERM sent right
    // after `ready` must reach run_until_signal, not the default action.
    fuse_session::serve::block_termination_signals();
    fuse_live_testkit::stderr_log::init("benchfs");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let uring_env = std::env::var_os("BENCHFS_URING").is_some_and(|v| v == "1");
    let transport_env = std::env::var("BENCHFS_TRANSPORT").ok();
    let Args {
        mountpoint,
        timeout,
        threads,
        stats,
        transport,
        open_flags,
        max_read,
    } = match default_transport(uring_env, transport_env.as_deref())
        .and_then(|t| parse_args(&args, t))
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("benchfs: {e}\n{USAGE}");
            std::process::exit(2)
        }
    };
    let fs = BenchFs::new(
        Duration::from_secs_f64(timeout),
        open_flags,
        max_read,
        stats,
    );
    let opts = MountOptions::new()
        .fsname("benchfs")
        .subtype("benchfs")
        .read_only(true)
        .max_read(fs.max_read);
    let result = Server::mount(fs, &mountpoint, &opts)
        .and_then(|server| {
            if transport == TransportKind::IoUring {
                log::debug!("transport: io_uring (asked for)");
                let mut o = UringOptions::default();
                o.required = true;
                if let Some(d) = std::env::var("BENCHFS_URING_DEPTH")
                    .ok()
                    .and_then(|d| d.parse().ok())
                {
                    o.depth = d;
                }
                server.spawn_uring(&o)
            } else {
                server.spawn_with(transport, threads)
            }
        })
        .and_then(|running| {
            if stats {
                if let Some(init) = running.session().init_state() {
                    let r = &init.result;
                    eprintln!(
                        "benchfs: proto 7.{} max_readahead={} max_write={} max_pages={} \
                         offered={:?} agreed={:?} threads={threads} backend={:?}",
                        r.minor,
                        r.max_readahead,
                        r.max_write,
                        r.max_pages,
                        init.offer.init_flags(),
                        InitFlags(r.flags),
                        running.backend(),
                    );
                }
            }
            println!("ready {}", mountpoint.display());
            let _ = std::io::stdout().flush();
            let r = running.run_until_signal();
            if stats && matches!(running.backend(), Backend::Uring { .. }) {
                eprintln!(
                    "benchfs: {} requests served from io_uring entries",
                    running.ring_requests()
                );
            }
            if stats {
                let session = running.session();
                session
                    .filesystem()
                    .print_stats(session.stats().forgets.load(Relaxed));
            }
            r
        });
    if let Err(e) = result {
        eprintln!("benchfs: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str], uring_env: bool) -> std::result::Result<Args, String> {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        parse_args(&v, default_transport(uring_env, None)?)
    }

    #[test]
    fn transport_from_the_environment() {
        assert_eq!(default_transport(false, None), Ok(TransportKind::Auto));
        assert_eq!(default_transport(true, None), Ok(TransportKind::IoUring));
        assert_eq!(
            default_transport(true, Some("dev-fuse")),
            Ok(TransportKind::DevFuse)
        );
        assert_eq!(
            default_transport(false, Some("io-uring")),
            Ok(TransportKind::IoUring)
        );
        let e = default_transport(false, Some("uring")).unwrap_err();
        assert!(
            e.contains("BENCHFS_TRANSPORT") && e.contains("unknown transport"),
            "{e}"
        );
        // A flag still wins.
        let v: Vec<String> = ["/m", "0", "--transport=auto"].map(String::from).to_vec();
        let t = default_transport(false, Some("dev-fuse")).unwrap();
        assert_eq!(parse_args(&v, t).unwrap().transport, TransportKind::Auto);
    }

    #[test]
    fn transport_flag() {
        assert_eq!(
            parse(&["/m", "0"], false).unwrap().transport,
            TransportKind::Auto
        );
        assert_eq!(
            parse(&["/m", "0"], true).unwrap().transport,
            TransportKind::IoUring
        );
        for (args, want) in [
            (&["--transport", "auto"][..], TransportKind::Auto),
            (&["--transport=dev-fuse"], TransportKind::DevFuse),
            (&["--transport", "io-uring"], TransportKind::IoUring),
            (&["--uring"], TransportKind::IoUring),
            (&["--uring", "--transport=dev-fuse"], TransportKind::DevFuse),
            (&["--transport=auto", "--uring"], TransportKind::IoUring),
        ] {
            let mut all = vec!["/m", "0"];
            all.extend_from_slice(args);
            assert_eq!(parse(&all, false).unwrap().transport, want, "{args:?}");
        }
        // A flag overrides BENCHFS_URING=1.
        let a = parse(&["/m", "0", "--transport", "dev-fuse"], true).unwrap();
        assert_eq!(a.transport, TransportKind::DevFuse);
        for bad in ["uring", "", "AUTO", "dev_fuse"] {
            let e = parse(&["/m", "0", "--transport", bad], false).unwrap_err();
            assert!(e.contains("unknown transport"), "{bad:?}: {e}");
            let inline = format!("--transport={bad}");
            assert!(parse(&["/m", "0", &inline], false).is_err(), "{inline}");
        }
        assert!(parse(&["/m", "0", "--transport"], false)
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn other_arguments() {
        let a = parse(
            &[
                "/m",
                "0.5",
                "--mt=3",
                "--direct-io",
                "--max-read=4096",
                "--stats",
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            (a.timeout, a.threads, a.max_read, a.stats),
            (0.5, 3, 4096, true)
        );
        assert_eq!(a.open_flags, FopenFlags::DIRECT_IO);
        assert_eq!(parse(&["/m", "0", "--mt"], false).unwrap().threads, 4);
        for bad in [
            &["/m"][..],
            &["/m", "-1"],
            &["/m", "x"],
            &["/m", "0", "--mt=0"],
            &["/m", "0", "--max-read=0"],
            &["/m", "0", "--bogus"],
        ] {
            assert!(parse(bad, false).is_err(), "{bad:?}");
        }
    }
}
