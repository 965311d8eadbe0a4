//! A daemon that must survive its process says at startup which transport it
//! serves through: under a fd store (crash recovery) `auto` serves through
//! `/dev/fuse`, which loses no call to a crash, and `io-uring` is accepted
//! (tests/uring_crash.rs), while a live upgrade (`--upgrade-socket`) refuses
//! io_uring before it mounts anything: memfs `--transport auto|dev-fuse|io-uring`
//! under `fuse-live-keeper` and with `--upgrade-socket`.
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fuse_session::dev::fusectl::{self, Watchdog};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");

/// A guard against hangs, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

/// Waits for `child` to exit, killing it (and failing) after [`PATIENCE`].
fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    common::wait_exit(child, PATIENCE).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not exit")
    })
}

/// io_uring with an upgrade socket is served (live handoff over io_uring passes the
/// ring area on, docs/DESIGN.md), and says so at startup; SIGTERM unmounts.
#[test]
fn io_uring_with_an_upgrade_socket_serves_and_says_so() {
    if !common::can_mount("io_uring_with_an_upgrade_socket_serves_and_says_so") {
        return;
    }
    let dir = common::temp_dir("transport-upgrade");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let log = dir.join("memfs.log");
    let watchdog = Watchdog::arm(&mnt, None, common::WATCHDOG).expect("watchdog");
    let mut child = Command::new(common::example_binary("memfs"))
        .arg(&mnt)
        .arg("--upgrade-socket")
        .arg(dir.join("sock"))
        .args(["--transport", "io-uring"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).expect("log"))
        .spawn()
        .expect("run memfs");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let ready = rx.recv_timeout(PATIENCE);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if ready.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("memfs never said ready:\n{text}");
    }
    assert_eq!(ready.ok(), Some(format!("ready {}", mnt.display())));
    assert!(common::is_fuse_mounted(&mnt), "mounted");
    std::fs::write(mnt.join("f"), b"x").expect("write through the mount");
    assert!(
        text.contains("transport io_uring for live upgrade"),
        "the startup says what io_uring costs a live upgrade:\n{text}"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let st = wait_exit(&mut child, "memfs after SIGTERM");
    assert_eq!(
        st.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!common::is_fuse_mounted(&mnt), "unmounted on SIGTERM");
    assert!(!watchdog.disarm(), "the watchdog fired");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_under_a_fd_store_serves_dev_fuse_and_recovers_after_sigkill() {
    if !common::can_mount("auto_under_a_fd_store_serves_dev_fuse_and_recovers_after_sigkill") {
        return;
    }
    let dir = common::temp_dir("transport-auto");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let watchdog = Watchdog::arm(&mnt, None, common::WATCHDOG).expect("watchdog");
    let log = dir.join("keeper.log");
    let memfs = common::example_binary("memfs");
    let mut keeper = Command::new(KEEPER)
        .args(["--restart-delay", "0", "--"])
        .arg(&memfs)
        .arg(&mnt)
        .args(["--transport", "auto"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).expect("log"))
        .spawn()
        .expect("spawn the keeper");
    let out = keeper.stdout.take().expect("stdout");
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
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let next = |what: &str| match lines.recv_timeout(PATIENCE) {
            Ok(l) => assert_eq!(l, ready, "{what}"),
            Err(e) => panic!("no ready line {what} ({e}); log:\n{}", log_text()),
        };
        next("at the first start");
        let conn = fusectl::connection_id(&mnt).expect("fusectl connection");
        std::fs::write(mnt.join("kept"), b"across the crash").expect("write");
        let first = common::children(keeper.id());
        assert_eq!(first.len(), 1, "one daemon: {first:?}");
        kill(Pid::from_raw(first[0]), Signal::SIGKILL).expect("SIGKILL the daemon");
        next("after the SIGKILL");
        assert_eq!(
            std::fs::read(mnt.join("kept")).expect("read after recovery"),
            b"across the crash"
        );
        assert_eq!(
            fusectl::connection_id(&mnt).ok(),
            Some(conn),
            "same connection"
        );
        let text = log_text();
        assert_eq!(
            text.matches("transport auto: /dev/fuse, because crash recovery")
                .count(),
            2,
            "the choice is said at each start: {text}"
        );
    }));
    let _ = kill(Pid::from_raw(keeper.id() as i32), Signal::SIGTERM);
    let st = wait_exit(&mut keeper, "the keeper");
    if let Err(p) = result {
        let _ = fusectl::tear_down(&mnt, None);
        std::panic::resume_unwind(p);
    }
    assert_eq!(st.code(), Some(0), "log:\n{}", log_text());
    assert!(!common::is_fuse_mounted(&mnt), "unmounted on SIGTERM");
    assert!(!watchdog.disarm(), "the watchdog fired");
    let _ = std::fs::remove_dir_all(&dir);
}
