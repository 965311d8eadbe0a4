//! The transport choice of memfs, passthrough and benchfs: `--transport
//! auto|dev-fuse|io-uring`, default `auto`. An unknown value is a usage error (exit
//! 2, the accepted values named), and `auto` says at debug level (`RUST_LOG=debug`)
//! which transport it chose and why: io_uring when the `fuse` module parameter
//! `enable_uring` is on and more than one CPU is usable, `/dev/fuse` with the reason
//! otherwise — with the process pinned to one CPU (`taskset -c 0`) it must pick
//! `/dev/fuse`. The expected line follows this machine's state, read as the test
//! runs (another test may switch `enable_uring` for a moment: the state is read
//! before and after the start, and either reading may explain the line).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Mounted;
use fuse_session::dev::uring;
use nix::unistd::Pid;

/// The reason `TransportKind::Auto` gives for this machine's state, when the daemon
/// may use `cpus` CPUs and the module parameter reads `enabled`.
fn expected_reason(enabled: Option<bool>, cpus: usize) -> &'static str {
    match enabled {
        Some(true) if cpus > 1 => "transport auto: io_uring (the kernel offers it,",
        Some(true) => "transport auto: /dev/fuse (one CPU usable",
        Some(false) => "transport auto: /dev/fuse (the fuse module parameter enable_uring is off)",
        None => "transport auto: /dev/fuse (no fuse-over-io_uring in this kernel)",
    }
}

/// How many CPUs this test process may use.
fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How one of the three daemons is started on a fresh directory.
#[derive(Clone, Copy, Debug)]
enum Daemon {
    Memfs,
    Passthrough,
    Benchfs,
}

impl Daemon {
    const ALL: [Daemon; 3] = [Daemon::Memfs, Daemon::Passthrough, Daemon::Benchfs];

    fn bin(self) -> &'static str {
        match self {
            Daemon::Memfs => "memfs",
            Daemon::Passthrough => "passthrough",
            Daemon::Benchfs => "benchfs",
        }
    }

    /// Arguments that make a valid command line for this daemon, with `extra` after.
    fn args(self, mnt: &Path, src: &Path, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = match self {
            Daemon::Memfs => vec![mnt.display().to_string()],
            Daemon::Passthrough => vec![src.display().to_string(), mnt.display().to_string()],
            Daemon::Benchfs => vec![mnt.display().to_string(), "0".into()],
        };
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// Starts the daemon with `RUST_LOG=debug` and the default transport; with
    /// `pin_cpu0`, from a thread pinned to CPU 0, so that the daemon inherits an
    /// affinity of one CPU (as under `taskset -c 0`).
    fn start(self, pin_cpu0: bool) -> Mounted {
        let bin = self.bin();
        let dir = common::temp_dir(&format!("auto-{bin}"));
        let (mnt, src) = (dir.join("mnt"), dir.join("src"));
        std::fs::create_dir(&mnt).expect("mountpoint");
        std::fs::create_dir(&src).expect("source");
        let args = self.args(&mnt, &src, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The affinity of the spawning thread is inherited; the test's own thread
        // spawns (a thread that ended would fire the child's parent-death signal).
        let saved = nix::sched::sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        if pin_cpu0 {
            uring::pin_to_cpu(0).expect("pin the spawning thread to CPU 0");
        }
        // The mountpoint is in `args` (passthrough wants SOURCE first); the ready
        // line must still name `dir/mnt`.
        let m = Mounted::take_over_in(bin, dir, "stderr.log", &args, &[("RUST_LOG", "debug")]);
        nix::sched::sched_setaffinity(Pid::from_raw(0), &saved).expect("restore the affinity");
        m
    }
}

/// The `transport auto:` lines of a daemon's log.
fn reason_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("transport auto:"))
        .collect()
}

fn check_reason(daemon: Daemon, pin_cpu0: bool) {
    let cpus = if pin_cpu0 { 1 } else { usable_cpus() };
    let before = uring::uring_enabled();
    let m = daemon.start(pin_cpu0);
    let after = uring::uring_enabled();
    let log = m.log_text();
    let lines = reason_lines(&log);
    assert_eq!(
        lines.len(),
        1,
        "{daemon:?} (pinned: {pin_cpu0}) says once why auto chose: {log}"
    );
    let ok = [before, after]
        .iter()
        .any(|&state| lines[0].contains(expected_reason(state, cpus)));
    assert!(
        ok,
        "{daemon:?} (pinned: {pin_cpu0}, {cpus} CPUs, enable_uring {before:?}/{after:?}) \
         gives the reason {:?}, not {:?}",
        lines[0],
        expected_reason(before, cpus)
    );
    if pin_cpu0 {
        assert!(
            lines[0].contains("transport auto: /dev/fuse"),
            "{daemon:?} on one CPU picks /dev/fuse: {}",
            lines[0]
        );
        assert!(
            !log.contains("serving through io_uring"),
            "{daemon:?} on one CPU serves through /dev/fuse: {log}"
        );
    } else if lines[0].contains("transport auto: io_uring") {
        assert!(
            log.contains("serving through io_uring"),
            "{daemon:?}: io_uring chosen and serving: {log}"
        );
    }
    // The mount serves whichever transport was chosen.
    let entries = std::fs::read_dir(&m.mnt)
        .expect("readdir the mount")
        .count();
    if let Daemon::Benchfs = daemon {
        assert_eq!(entries, 1001, "benchfs's tree; log: {}", m.log_text());
    }
    let st = m.stop();
    assert!(st.success(), "{daemon:?} exits 0 on SIGTERM: {st:?}");
}

#[test]
fn auto_says_which_transport_it_chose_and_why() {
    if !common::can_mount("auto_says_which_transport_it_chose_and_why") {
        return;
    }
    for d in Daemon::ALL {
        check_reason(d, false);
    }
}

#[test]
fn auto_on_one_cpu_serves_through_dev_fuse() {
    if !common::can_mount("auto_on_one_cpu_serves_through_dev_fuse") {
        return;
    }
    for d in Daemon::ALL {
        check_reason(d, true);
    }
}

#[test]
fn an_unknown_transport_is_a_usage_error() {
    let nowhere = PathBuf::from("/nonexistent-fuse-live-mountpoint");
    for d in Daemon::ALL {
        let bin = common::example_binary(d.bin());
        for bad in [
            vec!["--transport", "uring"],
            vec!["--transport=dev_fuse"],
            vec!["--transport", ""],
            vec!["--transport"],
        ] {
            let out = Command::new(&bin)
                .args(d.args(&nowhere, &nowhere, &bad))
                .output()
                .expect("run the daemon");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{d:?} {bad:?}: {err}");
            assert!(
                err.contains("usage:"),
                "{d:?} {bad:?} prints the usage: {err}"
            );
            let named = if bad.len() == 1 && bad[0] == "--transport" {
                err.contains("--transport needs a value")
            } else {
                err.contains("unknown transport") && err.contains("auto, dev-fuse or io-uring")
            };
            assert!(named, "{d:?} {bad:?} says what is wrong: {err}");
            assert!(!common::is_fuse_mounted(&nowhere));
        }
    }
    // benchfs's default from the environment (for the peers' run_all.sh).
    let out = Command::new(common::example_binary("benchfs"))
        .args(Daemon::Benchfs.args(&nowhere, &nowhere, &[]))
        .env("BENCHFS_TRANSPORT", "uring")
        .output()
        .expect("run benchfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("BENCHFS_TRANSPORT") && err.contains("unknown transport"),
        "{err}"
    );
}
