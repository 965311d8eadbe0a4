//! A tiny daemon for the fd store tests (tests/keeper.rs): no filesystem, just the
//! protocol. Run it under `fuse-live-keeper`.
//!
//! ```text
//! fdstore_child LABEL [--crash-on-start] [--exit-code N] [--garbage] [--intruder]
//!               [--handover FILE]
//! ```
//!
//! At each start it prints `pid N`, `notify SOCKET`, `inherited NAMES` (the
//! `LISTEN_FDNAMES` it got, `:`-separated) and `state N` on stdout: `N` is a counter
//! kept in a memfd stored as `state`, so it counts the starts that found the
//! descriptor. Then it stores the memfd again, sends `READY=1`, prints
//! `ready LABEL` and waits for SIGTERM or SIGINT, on which it sends `STOPPING=1`
//! and exits with `--exit-code` (default 0).
//!
//! - `--crash-on-start`: exits with status 3 right after storing, before `ready`.
//! - `--garbage`: first sends malformed messages, which the keeper must ignore.
//! - `--intruder`: first runs a grandchild that tries to store a descriptor named
//!   `intruder` and to remove `state`, which the keeper must refuse.
//! - `--handover FILE`: plays a live upgrade's messages for the keeper's SIGHUP
//!   (tests/keeper_handoff.rs). Started as a successor (`FUSE_LIVE_UPGRADE_FROM`),
//!   it prints `pid N` and `upgrade-from M`, stores nothing and waits; SIGUSR1 makes
//!   it say `READY=1` (it "serves"). Otherwise, once ready, SIGUSR1 makes it send
//!   `MAINPID=` the pid written in FILE (it "hands over") and SIGUSR2 `MAINPID=`
//!   its own (it "rolls back"); each prints `named N`.
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::process::Command;

use fuse_session::dev::fdstore::{FdStore, NotifySocket};
use nix::sys::signal::{SigSet, Signal};

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("fdstore_child: {what}: {e}");
    std::process::exit(10)
}

/// The grandchild of `--intruder`: talks to the keeper in its own name.
fn intrude(socket: &str) {
    let sock = NotifySocket::new(socket.as_ref()).unwrap_or_else(|e| fail("socket", e));
    let (r, _w) = nix::unistd::pipe().unwrap_or_else(|e| fail("pipe", e));
    sock.send("FDSTORE=1\nFDNAME=intruder", &[r.as_fd()])
        .unwrap_or_else(|e| fail("send", e));
    sock.send("FDSTOREREMOVE=1\nFDNAME=state", &[])
        .unwrap_or_else(|e| fail("send", e));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--intrude") {
        intrude(args.get(1).map_or("", String::as_str));
        return;
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    let label = args.first().cloned().unwrap_or_default();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let handover = args
        .iter()
        .position(|a| a == "--handover")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    if handover.is_some() {
        mask.add(Signal::SIGUSR1);
        mask.add(Signal::SIGUSR2);
    }
    let _ = mask.thread_block();
    let exit_code: i32 = args
        .iter()
        .position(|a| a == "--exit-code")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    let mut store = FdStore::from_env().unwrap_or_else(|e| fail("fd store", e));
    if let (Some(_), Some(from)) = (&handover, store.upgrade_from()) {
        successor(&store, from, &mask);
    }
    let notify = store
        .notify_socket()
        .map(|s| s.name().to_owned())
        .unwrap_or_default();
    let inherited: Vec<String> = store.inherited().names().map(str::to_owned).collect();
    let (state, n) = match store.take("state") {
        Some(fd) => {
            let f = std::fs::File::from(fd);
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, 0)
                .unwrap_or_else(|e| fail("read the state", e));
            (OwnedFd::from(f), u64::from_le_bytes(b) + 1)
        }
        None => (
            rustix::fs::memfd_create("fdstore-child-state", rustix::fs::MemfdFlags::CLOEXEC)
                .unwrap_or_else(|e| fail("memfd_create", e)),
            0,
        ),
    };
    std::fs::File::from(state.try_clone().unwrap_or_else(|e| fail("dup", e)))
        .write_all_at(&n.to_le_bytes(), 0)
        .unwrap_or_else(|e| fail("write the state", e));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "pid {}", std::process::id());
    let _ = writeln!(out, "notify {notify}");
    let _ = writeln!(out, "inherited {}", inherited.join(":"));
    let _ = writeln!(out, "state {n}");
    let _ = out.flush();

    if flag("--garbage") {
        if let Some(s) = store.notify_socket() {
            let (r, _w) = nix::unistd::pipe().unwrap_or_else(|e| fail("pipe", e));
            for m in ["hello world", "READY=maybe", "=1", "FDSTORE=1\nFDNAME=a:b"] {
                s.send(m, &[r.as_fd()]).unwrap_or_else(|e| fail("send", e));
            }
            s.send("FDSTORE=1\nFDNAME=nofds", &[])
                .unwrap_or_else(|e| fail("send", e));
        }
    }
    if flag("--intruder") {
        let exe = std::env::current_exe().unwrap_or_else(|e| fail("current_exe", e));
        let st = Command::new(exe)
            .args(["--intrude", &notify])
            .status()
            .unwrap_or_else(|e| fail("run the intruder", e));
        if !st.success() {
            fail("intruder", st);
        }
    }
    store
        .store("state", state.as_fd())
        .unwrap_or_else(|e| fail("store", e));
    if flag("--crash-on-start") {
        std::process::exit(3);
    }
    store.ready().unwrap_or_else(|e| fail("ready", e));
    let _ = writeln!(out, "ready {label}");
    let _ = out.flush();
    loop {
        match mask.wait() {
            Ok(Signal::SIGUSR1) => {
                let file = handover.as_deref().unwrap_or(std::path::Path::new(""));
                let pid: u32 = std::fs::read_to_string(file)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or_else(|| fail("read the successor's pid", file.display()));
                store.main_pid(pid).unwrap_or_else(|e| fail("MAINPID", e));
                let _ = writeln!(out, "named {pid}");
                let _ = out.flush();
            }
            Ok(Signal::SIGUSR2) => {
                store
                    .main_pid(std::process::id())
                    .unwrap_or_else(|e| fail("MAINPID", e));
                let _ = writeln!(out, "named {}", std::process::id());
                let _ = out.flush();
            }
            _ => break,
        }
    }
    let _ = store.stopping();
    std::process::exit(exit_code);
}

/// `--handover` started as a successor: waits; SIGUSR1 says READY=1.
fn successor(store: &FdStore, from: u32, mask: &SigSet) -> ! {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "pid {}", std::process::id());
    let _ = writeln!(out, "upgrade-from {from}");
    let _ = out.flush();
    loop {
        match mask.wait() {
            Ok(Signal::SIGUSR1) => {
                store.ready().unwrap_or_else(|e| fail("ready", e));
                let _ = writeln!(out, "serving");
                let _ = out.flush();
            }
            Ok(Signal::SIGUSR2) => {}
            _ => std::process::exit(0),
        }
    }
}
