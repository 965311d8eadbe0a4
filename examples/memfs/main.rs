//! memfs: a complete in-memory POSIX filesystem served with fuse-live.
//!
//! ```text
//! cargo run --release --example memfs -- MOUNTPOINT [--threads N] [--allow-other] [--ttl SECS] [--size BYTES]
//! ```
//!
//! Mounts at MOUNTPOINT (with `default_permissions`: the kernel checks permissions),
//! prints exactly one line `ready MOUNTPOINT` on stdout once the mount serves, and
//! runs until the filesystem is unmounted or the process receives SIGINT or SIGTERM
//! (then it unmounts), and exits 0. Bad arguments print a usage line on stderr and
//! exit 2; a failure to mount or serve exits 1.
//!
//! - `--threads N`: worker threads (default 2).
//! - `--allow-other`: let every user access the mount (the mount option).
//! - `--ttl SECS`: how long the kernel caches names and attributes (default 1,
//!   fractions allowed, 0 for none).
//! - `--size BYTES`: the most file data it holds (suffix K, M, G or T; default half
//!   of the machine's memory); beyond it writes fail with ENOSPC.
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
use std::time::Duration;

use fuse_live::session::dev::MountOptions;
use fuse_live::session::serve::{block_termination_signals, Server};

mod data;
// Part of their API serves tests/memfs.rs (which compiles these files too) and
// snapshots, not this binary.
#[allow(dead_code)]
mod fs;
#[allow(dead_code)]
mod state;

use fs::{Config, MemFs};

const USAGE: &str =
    "usage: memfs MOUNTPOINT [--threads N] [--allow-other] [--ttl SECS] [--size BYTES[K|M|G|T]]";

/// The parsed command line.
#[derive(Debug)]
struct Args {
    mountpoint: String,
    threads: usize,
    allow_other: bool,
    ttl: Duration,
    size: Option<u64>,
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
    let mut ttl = Duration::from_secs(1);
    let mut size = None;
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
            f if f.starts_with('-') => return Err(format!("unknown option {f:?}")),
            _ if mountpoint.is_none() => mountpoint = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let mountpoint = mountpoint.ok_or("no MOUNTPOINT given")?;
    Ok(Args {
        mountpoint,
        threads,
        allow_other,
        ttl,
        size,
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

/// A minimal `log` backend: level from `RUST_LOG`, lines to stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let _ = writeln!(
                std::io::stderr(),
                "memfs {} {}: {}",
                r.level(),
                r.target(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

fn init_logging() {
    let level = match std::env::var("RUST_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}

fn main() -> ExitCode {
    init_logging();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("memfs: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Termination signals wait in a queue until `run_until_signal` reads them, so
    // one that arrives while mounting still unmounts cleanly.
    block_termination_signals();
    match serve(&args) {
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
    let fs = MemFs::new(uid, gid, capacity, config);
    let opts = MountOptions::new()
        .fsname("memfs")
        .subtype("memfs")
        .default_permissions(true)
        .allow_other(args.allow_other);
    let mountpoint = PathBuf::from(&args.mountpoint);
    let server = Server::mount(fs, &mountpoint, &opts)?;
    let running = server.spawn(args.threads)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {}", args.mountpoint)?;
        out.flush()?;
    }
    running.run_until_signal()?;
    let state = running.session().filesystem().lock_read();
    log::info!(
        "unmounted: {} inodes, {} bytes of data",
        state.inode_count(),
        state.used_bytes()
    );
    Ok(())
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
        assert!(parse(&["/a", "--ttl", "-1"]).is_err());
    }
}
