//! `fuse-live-keeper` end to end, with a protocol-only daemon
//! (examples/fdstore_child.rs): descriptors survive SIGKILL, restarts, the restart
//! limit, stop signals and exit statuses, refused and malformed messages; and with
//! a real FUSE mount (examples/keeper_hello.rs) that is recovered on the same
//! connection after SIGKILL.
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fuse_session::dev::fdstore::NotifySocket;
use fuse_session::dev::fusectl::{self, Watchdog};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long to wait for a line or an exit before calling the test hung (a guard
/// against hangs, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(60);

const KEEPER: &str = env!("CARGO_BIN_EXE_fuse-live-keeper");

/// One start of the daemon, as it reported itself.
#[derive(Debug, Default)]
struct Start {
    pid: i32,
    notify: String,
    inherited: String,
    state: u64,
    ready: Option<String>,
}

/// A running keeper with its daemon. Dropping it stops both (SIGTERM, then
/// SIGKILL) and checks nothing is left.
struct Kept {
    keeper: Option<Child>,
    lines: mpsc::Receiver<String>,
    dir: PathBuf,
    log: PathBuf,
    pids: Vec<i32>,
}

impl Kept {
    fn start(keeper_args: &[&str], program: &std::path::Path, args: &[&str]) -> Kept {
        Kept::start_in(common::temp_dir("keeper"), keeper_args, program, args)
    }

    /// As [`Kept::start`], in `dir` (removed on drop; a FUSE mount at `dir/mnt` is
    /// torn down first).
    fn start_in(
        dir: PathBuf,
        keeper_args: &[&str],
        program: &std::path::Path,
        args: &[&str],
    ) -> Kept {
        let log = dir.join("keeper.log");
        let mut cmd = Command::new(KEEPER);
        cmd.args(keeper_args)
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("log"));
        // SAFETY: the closure runs in the forked child before exec and only makes
        // the prctl(2) system call, which is async-signal-safe. If the test dies,
        // the keeper gets SIGTERM and stops its daemon.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().expect("spawn fuse-live-keeper");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Kept {
            keeper: Some(child),
            lines,
            dir,
            log,
            pids: Vec::new(),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn line(&self) -> String {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(l) => l,
            Err(e) => panic!(
                "no line from the daemon ({e}); keeper log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Reads one start of the daemon: its report, up to `ready` if `ready`.
    fn next_start(&mut self, ready: bool) -> Start {
        let mut s = Start::default();
        loop {
            let l = self.line();
            let (k, v) = l.split_once(' ').unwrap_or((l.as_str(), ""));
            match k {
                "pid" => {
                    s.pid = v.parse().expect("pid");
                    self.pids.push(s.pid);
                }
                "notify" => s.notify = v.to_owned(),
                "inherited" => s.inherited = v.to_owned(),
                "state" => {
                    s.state = v.parse().expect("state");
                    if !ready {
                        return s;
                    }
                }
                "ready" => {
                    s.ready = Some(v.to_owned());
                    return s;
                }
                _ => panic!("unexpected line {l:?}"),
            }
        }
    }

    fn signal_keeper(&self, sig: Signal) {
        if let Some(c) = &self.keeper {
            kill(Pid::from_raw(c.id() as i32), sig).expect("signal the keeper");
        }
    }

    fn wait(&mut self) -> ExitStatus {
        let child = self.keeper.as_mut().expect("keeper running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.keeper = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the keeper did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every daemon process this keeper ran is gone (reaped by the keeper).
    fn assert_no_leftovers(&self) {
        assert!(self.keeper.is_none(), "the keeper still runs");
        for &p in &self.pids {
            assert_eq!(
                kill(Pid::from_raw(p), None),
                Err(nix::errno::Errno::ESRCH),
                "daemon pid {p} is still there"
            );
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(mut c) = self.keeper.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            for &p in &self.pids {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        let mnt = self.dir.join("mnt");
        if common::is_fuse_mounted(&mnt) {
            let _ = fusectl::tear_down(&mnt, None);
        }
        if !common::is_fuse_mounted(&mnt) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn child_bin() -> PathBuf {
    common::example_binary("fdstore_child")
}

fn kill_pid(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).expect("signal the daemon");
}

#[test]
fn sigkill_restarts_the_daemon_with_its_stored_memfd() {
    let mut k = Kept::start(&[], &child_bin(), &["one"]);
    let s0 = k.next_start(true);
    assert_eq!((s0.state, s0.inherited.as_str()), (0, ""));
    assert_eq!(s0.ready.as_deref(), Some("one"));
    assert!(s0.notify.starts_with("@fuse-live-keeper/"), "{}", s0.notify);
    kill_pid(s0.pid, Signal::SIGKILL);
    let s1 = k.next_start(true);
    assert_ne!(s1.pid, s0.pid);
    assert_eq!(s1.inherited, "state", "LISTEN_FDNAMES after the restart");
    assert_eq!(s1.state, 1, "the memfd's contents survived the SIGKILL");
    assert_eq!(s1.notify, s0.notify, "the same keeper socket");
    kill_pid(s1.pid, Signal::SIGKILL);
    let s2 = k.next_start(true);
    assert_eq!((s2.state, s2.inherited.as_str()), (2, "state"));
    k.signal_keeper(Signal::SIGTERM);
    let st = k.wait();
    assert_eq!(st.code(), Some(0), "log:\n{}", k.log_text());
    let log = k.log_text();
    assert!(log.contains("killed by SIGKILL; restarting it in"), "{log}");
    assert!(log.contains("forwarding SIGTERM"), "{log}");
    k.assert_no_leftovers();
}

#[test]
fn a_non_zero_exit_restarts_and_a_zero_exit_ends_the_keeper() {
    // SIGTERM straight to the daemon (not through the keeper): it exits on its own.
    let mut k = Kept::start(&[], &child_bin(), &["x", "--exit-code", "5"]);
    let s0 = k.next_start(true);
    kill_pid(s0.pid, Signal::SIGTERM);
    let s1 = k.next_start(true);
    assert_eq!(
        s1.state, 1,
        "status 5 is a failure: restarted with the store"
    );
    assert!(k.log_text().contains("exited with status 5; restarting"));
    k.assert_no_leftovers_except_running();
    drop(k);

    let mut k = Kept::start(&[], &child_bin(), &["x"]);
    let s0 = k.next_start(true);
    kill_pid(s0.pid, Signal::SIGTERM);
    let st = k.wait();
    assert_eq!(
        st.code(),
        Some(0),
        "a daemon's own exit 0 ends the keeper with 0"
    );
    assert!(!k.log_text().contains("restarting"), "{}", k.log_text());
    k.assert_no_leftovers();
}

impl Kept {
    /// Every daemon pid but the last (the one running) is gone.
    fn assert_no_leftovers_except_running(&self) {
        for &p in &self.pids[..self.pids.len().saturating_sub(1)] {
            assert_eq!(kill(Pid::from_raw(p), None), Err(nix::errno::Errno::ESRCH));
        }
    }
}

#[test]
fn stop_signals_are_forwarded_and_the_exit_status_passes_through() {
    let mut k = Kept::start(&[], &child_bin(), &["x", "--exit-code", "7"]);
    k.next_start(true);
    k.signal_keeper(Signal::SIGTERM);
    assert_eq!(k.wait().code(), Some(7), "log:\n{}", k.log_text());
    k.assert_no_leftovers();

    let mut k = Kept::start(&[], &child_bin(), &["x"]);
    k.next_start(true);
    k.signal_keeper(Signal::SIGINT);
    assert_eq!(k.wait().code(), Some(0), "log:\n{}", k.log_text());
    assert!(k.log_text().contains("forwarding SIGINT"));
    k.assert_no_leftovers();
}

#[test]
fn a_stop_signal_during_a_crash_recovers_the_daemon_then_stops_it() {
    // SIGKILL to the daemon and SIGTERM to the keeper at once: whichever the keeper
    // sees first, the daemon is started again and stopped once ready, so that it
    // can unmount cleanly.
    let mut k = Kept::start(&[], &child_bin(), &["x"]);
    let s0 = k.next_start(true);
    kill_pid(s0.pid, Signal::SIGKILL);
    k.signal_keeper(Signal::SIGTERM);
    let s1 = k.next_start(true);
    assert_eq!((s1.state, s1.inherited.as_str()), (1, "state"));
    assert_eq!(k.wait().code(), Some(0), "log:\n{}", k.log_text());
    let log = k.log_text();
    assert!(
        log.contains("restarting it now so that it can unmount")
            || log.contains("while stopping: restarting it so that it can unmount"),
        "{log}"
    );
    assert!(log.contains("forwarding the pending SIGTERM"), "{log}");
    k.assert_no_leftovers();
}

#[test]
fn the_restart_limit_ends_with_a_clear_message() {
    let mut k = Kept::start(
        &["--restart-limit", "2", "--restart-window", "3600"],
        &child_bin(),
        &["x", "--crash-on-start"],
    );
    for n in 0..3 {
        let s = k.next_start(false);
        assert_eq!(s.state, n, "start {n}");
    }
    let st = k.wait();
    assert_eq!(st.code(), Some(1));
    let log = k.log_text();
    assert!(
        log.contains("restarted 2 times within 3600 s (--restart-limit 2): giving up"),
        "{log}"
    );
    assert!(log.contains("the FUSE connection ends"), "{log}");
    assert!(log.contains("restarting it in 100 ms"), "{log}");
    assert!(
        log.contains("restarting it in 200 ms"),
        "backoff doubles: {log}"
    );
    k.assert_no_leftovers();

    let mut k = Kept::start(
        &["--restart-limit", "0"],
        &child_bin(),
        &["x", "--crash-on-start"],
    );
    k.next_start(false);
    assert_eq!(k.wait().code(), Some(1), "limit 0: no restart at all");
    k.assert_no_leftovers();
}

#[test]
fn messages_from_other_processes_are_refused() {
    let mut k = Kept::start(&[], &child_bin(), &["x", "--intruder"]);
    let s0 = k.next_start(true);
    // And from this test process: it is not the keeper's child either.
    let sock = NotifySocket::new(s0.notify.as_ref()).expect("socket name");
    let (r, _w) = nix::unistd::pipe().expect("pipe");
    sock.send("FDSTORE=1\nFDNAME=outsider", &[r.as_fd()])
        .expect("send");
    sock.send("FDSTOREREMOVE=1\nFDNAME=state", &[])
        .expect("send");
    // The messages are queued before the kill: the keeper reads them first.
    kill_pid(s0.pid, Signal::SIGKILL);
    let s1 = k.next_start(true);
    assert_eq!(
        s1.inherited, "state",
        "neither the grandchild's nor the outsider's store or remove took effect"
    );
    assert_eq!(s1.state, 1);
    let log = k.log_text();
    let me = std::process::id();
    assert!(
        log.contains(&format!("refused a message from pid {me} ")),
        "{log}"
    );
    assert!(
        log.matches("refused a message from pid").count() >= 4,
        "grandchild (2) and test (2): {log}"
    );
    k.signal_keeper(Signal::SIGTERM);
    assert_eq!(k.wait().code(), Some(0));
    k.assert_no_leftovers();
}

#[test]
fn malformed_messages_are_ignored_with_a_log_line() {
    let mut k = Kept::start(&[], &child_bin(), &["x", "--garbage"]);
    let s0 = k.next_start(true);
    kill_pid(s0.pid, Signal::SIGKILL);
    let s1 = k.next_start(true);
    assert_eq!((s1.inherited.as_str(), s1.state), ("state", 1));
    let log = k.log_text();
    assert!(log.contains("\"hello world\" is not KEY=VALUE"), "{log}");
    assert!(log.contains("READY=\"maybe\", which is not valid"), "{log}");
    assert!(log.contains("bad FDNAME"), "{log}");
    assert!(log.contains("FDSTORE=1 without descriptors"), "{log}");
    k.signal_keeper(Signal::SIGTERM);
    assert_eq!(k.wait().code(), Some(0));
    k.assert_no_leftovers();
}

#[test]
fn usage_errors_and_missing_programs() {
    let out = Command::new(KEEPER).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: fuse-live-keeper"));
    let out = Command::new(KEEPER)
        .args(["--restart-limit", "many", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(KEEPER)
        .args(["--", "no-such-program-for-the-keeper"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot start no-such-program-for-the-keeper"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until process `pid` has died (a zombie or reaped).
fn wait_dead(pid: i32) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            // The state follows the command name in parentheses.
            Ok(s)
                if s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z')) =>
            {
                return
            }
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "pid {pid} does not die");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_sigkilled_daemon_recovers_its_mount_on_the_same_connection() {
    if !common::can_mount("a_sigkilled_daemon_recovers_its_mount_on_the_same_connection") {
        return;
    }
    let dir = common::temp_dir("keeper-mount");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let ckpt = dir.join("checkpoint");
    let watchdog = Watchdog::arm(&mnt, None, common::WATCHDOG).expect("watchdog");
    let hello = common::example_binary("keeper_hello");
    let mut k = Kept::start_in(
        dir.clone(),
        &[],
        &hello,
        &[mnt.to_str().expect("utf-8"), ckpt.to_str().expect("utf-8")],
    );
    let ready = format!("ready {}", mnt.display());
    assert_eq!(k.line(), ready);
    assert!(common::is_fuse_mounted(&mnt));
    let conn = fusectl::connection_id(&mnt).expect("fusectl connection");
    let id = common::mount_id(&mnt).expect("mount id");
    assert!(std::fs::metadata(&mnt).expect("stat the root").is_dir());
    let keeper_pid = k.keeper.as_ref().expect("keeper").id();
    let first = common::children(keeper_pid);
    assert_eq!(first.len(), 1, "one daemon: {first:?}");
    k.pids.push(first[0]);

    kill_pid(first[0], Signal::SIGKILL);
    // Read once the old daemon is dead, so that it cannot have read (and died
    // answering) a request of this read: with a checkpoint only, what the dead
    // daemon did after the checkpoint is lost (the journal is for that). Whether the
    // read reaches the kernel before or after the new daemon serves, it must
    // succeed: the connection never ends, the kernel queues the requests.
    wait_dead(first[0]);
    let reader = {
        let p = mnt.join("hello");
        std::thread::spawn(move || std::fs::read(p))
    };
    assert_eq!(k.line(), ready, "the daemon announced its recovery");
    let text = reader
        .join()
        .expect("reader")
        .expect("read hello across the crash");
    assert_eq!(text, b"Hello from a daemon that survives SIGKILL!\n");
    let second = common::children(keeper_pid);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second[0], first[0], "a new daemon process");
    k.pids.push(second[0]);
    assert_eq!(
        fusectl::connection_id(&mnt).expect("fusectl"),
        conn,
        "same connection"
    );
    assert_eq!(common::mount_id(&mnt), Some(id), "same mount");
    let listing: Vec<String> = std::fs::read_dir(&mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listing, ["hello"]);
    let log = k.log_text();
    assert!(
        log.contains("with 1 stored descriptors (fuse-device)"),
        "{log}"
    );
    assert!(
        log.contains(&format!("recovered the mount on connection Some({conn})")),
        "{log}"
    );

    k.signal_keeper(Signal::SIGTERM);
    let st = k.wait();
    assert_eq!(st.code(), Some(0), "log:\n{}", k.log_text());
    assert!(!common::is_fuse_mounted(&mnt), "unmounted on SIGTERM");
    assert!(!watchdog.disarm(), "the watchdog fired");
    k.assert_no_leftovers();
}

#[test]
fn systemd_notify_talks_to_the_keeper() {
    // systemd's own client, where installed: READY=1 from the direct child (the
    // shell execs it, so it keeps the child's pid), then its BARRIER=1 descriptor,
    // which the keeper answers by closing it (or systemd-notify would wait).
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("systemd-notify").is_file());
    if !found {
        eprintln!("skipping systemd_notify_talks_to_the_keeper: no systemd-notify in PATH");
        return;
    }
    let out = Command::new(KEEPER)
        .args([
            "--",
            "sh",
            "-c",
            "exec systemd-notify --pid=$$ --ready --status=hi",
        ])
        .output()
        .expect("run");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("is ready (0 stored descriptors: none)"),
        "{log}"
    );
    assert!(
        !log.contains("refused") && !log.contains("ignored"),
        "{log}"
    );
}

#[test]
fn bad_listen_variables_are_clear_errors() {
    let child = child_bin();
    let run = |vars: &str| {
        // `exec` keeps the shell's pid, so LISTEN_PID=$$ names the daemon.
        let script = format!("{vars} exec \"$0\" x");
        let out = Command::new("sh")
            .args(["-c", &script])
            .arg(&child)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("LISTEN_PID=$$ LISTEN_FDS=x");
    assert_eq!(code, Some(10), "{err}");
    assert!(
        err.contains("LISTEN_FDS=\"x\": not a count of descriptors"),
        "{err}"
    );
    let (code, err) = run("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=a:b");
    assert_eq!(code, Some(10), "{err}");
    assert!(err.contains("LISTEN_FDNAMES"), "{err}");
    // Descriptors 3 and 4 announced but not passed.
    let (code, err) = run("LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=a:b");
    assert_eq!(code, Some(10), "{err}");
    assert!(err.contains("descriptor 3 is not open"), "{err}");
    // Meant for another process: ignored, the daemon starts afresh (and, with
    // --crash-on-start, ends at once).
    let out = Command::new("sh")
        .args([
            "-c",
            "LISTEN_PID=1 LISTEN_FDS=5 exec \"$0\" x --crash-on-start",
        ])
        .arg(&child)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("inherited \nstate 0\n"));
}

#[test]
fn a_stop_signal_during_a_crash_still_unmounts_cleanly() {
    if !common::can_mount("a_stop_signal_during_a_crash_still_unmounts_cleanly") {
        return;
    }
    let dir = common::temp_dir("keeper-mount-stop");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let ckpt = dir.join("checkpoint");
    let watchdog = Watchdog::arm(&mnt, None, common::WATCHDOG).expect("watchdog");
    let hello = common::example_binary("keeper_hello");
    let mut k = Kept::start_in(
        dir.clone(),
        &[],
        &hello,
        &[mnt.to_str().expect("utf-8"), ckpt.to_str().expect("utf-8")],
    );
    let ready = format!("ready {}", mnt.display());
    assert_eq!(k.line(), ready);
    let keeper_pid = k.keeper.as_ref().expect("keeper").id();
    let first = common::children(keeper_pid);
    assert_eq!(first.len(), 1, "{first:?}");
    k.pids.push(first[0]);
    kill_pid(first[0], Signal::SIGKILL);
    k.signal_keeper(Signal::SIGTERM);
    assert_eq!(k.line(), ready, "recovered before stopping");
    k.pids.extend(common::children(keeper_pid));
    let st = k.wait();
    assert_eq!(st.code(), Some(0), "log:\n{}", k.log_text());
    assert!(
        !common::is_fuse_mounted(&mnt),
        "the recovered daemon unmounted; log:\n{}",
        k.log_text()
    );
    assert!(!watchdog.disarm(), "the watchdog fired");
    k.assert_no_leftovers();
}

#[test]
fn a_broken_stderr_does_not_bring_the_keeper_down() {
    // stderr on /dev/full: every log line fails to write; the keeper must go on
    // (its exit would end the connection), here through a restart and the limit.
    let out = Command::new(KEEPER)
        .args(["--restart-limit", "1", "--", "false"])
        .stderr(File::create("/dev/full").expect("/dev/full"))
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "gave up normally, no panic (101)"
    );
}
