//! Starting a program with stored descriptors passed the `sd_listen_fds(3)` way:
//! descriptor `i` at number `3 + i`, `LISTEN_FDS`, `LISTEN_FDNAMES`, and
//! `LISTEN_PID` set to the new process's own pid.
//!
//! `LISTEN_PID` is only known after `fork(2)`, and the descriptors must be moved to
//! their numbers in the child, so this is `fork` and `execve` by hand rather than
//! `std::process::Command` (whose own descriptors, such as its exec-error pipe,
//! could sit at the numbers the protocol needs). Everything the child uses is
//! allocated before the fork; the child only makes async-signal-safe system calls.
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::libc;
use nix::unistd::{fork, ForkResult, Pid};

use super::listen::LISTEN_FDS_START;
use super::message::check_fd_name;

/// The variables this module sets; any inherited value is dropped.
const LISTEN_VARS: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
];

/// Room for `LISTEN_PID=` and a pid (at most 10 digits) and the NUL.
const PID_VAR_LEN: usize = 32;

/// Finds `program` as `execvp(3)` would: a name with a `/` is used as given,
/// another is looked up in the directories of `path` (`PATH`).
fn resolve(program: &OsStr, path: Option<&OsStr>) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    if program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty program name",
        ));
    }
    let path = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(path) {
        let cand = dir.join(program);
        if nix::unistd::access(&cand, nix::unistd::AccessFlags::X_OK).is_ok() && cand.is_file() {
            return Ok(cand);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found in PATH", Path::new(program).display()),
    ))
}

fn cstring(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or environment entry contains a NUL byte",
        )
    })
}

/// Starts `program` with `args` and the environment `env` (complete: nothing else
/// is inherited; any `LISTEN_*` entries in it are dropped), and with `fds` passed
/// as `LISTEN_FDS` (descriptor `i` at number `3 + i`, named by `LISTEN_FDNAMES`,
/// `LISTEN_PID` the child's pid). With no `fds`, no `LISTEN_*` variable is set.
///
/// The child keeps this process's standard input, output and error, starts with
/// an empty signal mask and `SIGPIPE` at its default action, and gets no other
/// descriptor of this process as long as they are close-on-exec (this library
/// opens all of its descriptors so). `program` is looked up in `PATH` of `env`
/// when it has no `/`.
///
/// Returns the child's pid; reap it with `waitpid(2)`.
///
/// # Errors
/// `NotFound` if the program is not found, `InvalidInput` for a NUL byte in an
/// argument or a bad descriptor name, the error of `execve(2)` (reported back
/// through a pipe; the failed child is reaped), or of `fork(2)`/`pipe2(2)`.
pub fn spawn_with_fds(
    program: &OsStr,
    args: &[OsString],
    env: &[(OsString, OsString)],
    fds: &[(&str, BorrowedFd<'_>)],
) -> io::Result<Pid> {
    for (name, _) in fds {
        check_fd_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    let n = fds.len();
    let limit = usize::try_from(super::listen::MAX_LISTEN_FDS).unwrap_or(usize::MAX);
    if n > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{n} descriptors to pass; at most {limit}"),
        ));
    }
    let path_var = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let exe = cstring(resolve(program, path_var)?.into_os_string().into_vec())?;

    // argv and envp, with their pointer arrays, all built before the fork.
    let mut argv_c = vec![cstring(program.as_bytes().to_vec())?];
    for a in args {
        argv_c.push(cstring(a.as_bytes().to_vec())?);
    }
    let mut env_c = Vec::with_capacity(env.len() + 3);
    for (k, v) in env {
        if LISTEN_VARS.iter().any(|l| k == l) {
            continue;
        }
        let mut e = k.as_bytes().to_vec();
        e.push(b'=');
        e.extend_from_slice(v.as_bytes());
        env_c.push(cstring(e)?);
    }
    if n > 0 {
        env_c.push(cstring(format!("LISTEN_FDS={n}").into_bytes())?);
        let names: Vec<&str> = fds.iter().map(|(name, _)| *name).collect();
        env_c.push(cstring(
            format!("LISTEN_FDNAMES={}", names.join(":")).into_bytes(),
        )?);
    }
    // Filled in by the child with its own pid.
    let mut pid_var = [0u8; PID_VAR_LEN];
    pid_var[..11].copy_from_slice(b"LISTEN_PID=");
    let argv: Vec<*const libc::c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    if n > 0 {
        envp.push(pid_var.as_ptr().cast());
    }
    envp.push(std::ptr::null());
    let sources: Vec<RawFd> = fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    // Where the child parks each descriptor before moving it into place.
    let mut parked: Vec<RawFd> = vec![-1; n];
    // Above every target number, so that parking never lands on a target.
    let park_min = LISTEN_FDS_START + RawFd::try_from(n).unwrap_or(RawFd::MAX - 3);
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;

    // SAFETY: the child branch below only makes async-signal-safe system calls
    // (getpid, fcntl, dup2, sigprocmask, signal, execve, write, _exit) and writes
    // into memory allocated before the fork; it never returns into Rust code that
    // could touch locks or the allocator, so forking a multi-threaded process is
    // sound here.
    match unsafe { fork() }? {
        ForkResult::Child => {
            // SAFETY: as above: plain system calls on numbers and on buffers that
            // live until execve (the child's copy of this stack frame).
            unsafe {
                child_exec(
                    &exe,
                    &argv,
                    &envp,
                    &mut pid_var,
                    &sources,
                    &mut parked,
                    park_min,
                    err_w.as_raw_fd(),
                )
            }
        }
        ForkResult::Parent { child } => {
            drop(err_w);
            let mut buf = [0u8; 4];
            let mut got = 0;
            while got < 4 {
                match nix::unistd::read(&err_r, &mut buf[got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if got == 0 {
                return Ok(child);
            }
            let _ = nix::sys::wait::waitpid(child, None);
            let errno = i32::from_ne_bytes(buf);
            Err(io::Error::new(
                io::Error::from_raw_os_error(errno).kind(),
                format!(
                    "cannot execute {}: {}",
                    Path::new(program).display(),
                    io::Error::from_raw_os_error(errno)
                ),
            ))
        }
    }
}

/// The child's side of [`spawn_with_fds`]: never returns.
///
/// # Safety
/// Call only in the child of a `fork`, with pointer arrays that end in a null
/// pointer and point at NUL-terminated strings that stay alive.
#[allow(clippy::too_many_arguments)]
unsafe fn child_exec(
    exe: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    pid_var: &mut [u8; PID_VAR_LEN],
    sources: &[RawFd],
    parked: &mut [RawFd],
    park_min: RawFd,
    err_w: RawFd,
) -> ! {
    let fail = |err_w: RawFd| -> ! {
        let e = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        let b = e.to_ne_bytes();
        // SAFETY: write(2) and _exit(2) are async-signal-safe; `b` is a live buffer.
        unsafe {
            libc::write(err_w, b.as_ptr().cast(), b.len());
            libc::_exit(127)
        }
    };
    // The error pipe itself must not sit where a passed descriptor goes.
    // SAFETY: fcntl(2) on a number; the copy is close-on-exec.
    let err_w = unsafe { libc::fcntl(err_w, libc::F_DUPFD_CLOEXEC, park_min) };
    if err_w < 0 {
        // SAFETY: _exit(2) is async-signal-safe. No pipe to report through; the
        // parent reads end of file and sees the child exit 127.
        unsafe { libc::_exit(127) }
    }
    if !sources.is_empty() {
        // LISTEN_PID=<our pid>, written into the buffer envp points at.
        // SAFETY: getpid(2) cannot fail.
        let mut pid = unsafe { libc::getpid() } as u32;
        let mut digits = [0u8; 10];
        let mut k = 0;
        loop {
            digits[k] = b'0' + (pid % 10) as u8;
            k += 1;
            pid /= 10;
            if pid == 0 || k == digits.len() {
                break;
            }
        }
        for i in 0..k {
            pid_var[11 + i] = digits[k - 1 - i];
        }
        pid_var[11 + k] = 0;
    }
    // Park every descriptor above the target range, then move each into place:
    // dup2 clears close-on-exec on the target; the parked copies close at exec.
    for (i, &src) in sources.iter().enumerate() {
        // SAFETY: fcntl(2) on numbers.
        let p = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, park_min) };
        if p < 0 {
            fail(err_w);
        }
        parked[i] = p;
    }
    for (i, &p) in parked.iter().enumerate() {
        let target = LISTEN_FDS_START + i as RawFd;
        // SAFETY: dup2(2) on numbers; the target range holds nothing of ours now.
        if unsafe { libc::dup2(p, target) } < 0 {
            fail(err_w);
        }
    }
    // SAFETY: sigprocmask(2) and sigaction(2) (through signal) on a zeroed set.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    fail(err_w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn env() -> Vec<(OsString, OsString)> {
        vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("LISTEN_PID".into(), "1".into()),
        ]
    }

    #[test]
    fn passes_fds_at_3_with_names_and_its_own_pid() {
        let (data_r, data_w) = nix::unistd::pipe().unwrap();
        std::fs::File::from(data_w).write_all(b"kept").unwrap();
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let script = r#"p=no; [ "$LISTEN_PID" = "$$" ] && p=yes; echo "$LISTEN_FDS $LISTEN_FDNAMES $p $(cat <&3)" >&4"#;
        let pid = spawn_with_fds(
            OsStr::new("sh"),
            &["-c".into(), script.into()],
            &env(),
            &[("data", data_r.as_fd()), ("out", out_w.as_fd())],
        )
        .unwrap();
        drop(out_w);
        let mut text = String::new();
        std::fs::File::from(out_r)
            .read_to_string(&mut text)
            .unwrap();
        let st = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(st, nix::sys::wait::WaitStatus::Exited(pid, 0));
        assert_eq!(text, "2 data:out yes kept\n");
    }

    #[test]
    fn stale_listen_variables_are_replaced_or_dropped() {
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // The environment given holds a stale LISTEN_PID=1: it is replaced.
        let pid = spawn_with_fds(
            OsStr::new("/bin/sh"),
            &["-c".into(), r#"echo "[${LISTEN_PID-unset}]" >&3"#.into()],
            &env(),
            &[("out", out_w.as_fd())],
        )
        .unwrap();
        drop(out_w);
        let mut text = String::new();
        std::fs::File::from(out_r)
            .read_to_string(&mut text)
            .unwrap();
        nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(
            text,
            format!("[{pid}]\n"),
            "the inherited LISTEN_PID=1 is replaced"
        );
        let pid = spawn_with_fds(
            OsStr::new("/bin/sh"),
            &[
                "-c".into(),
                r#"[ -z "${LISTEN_PID+x}${LISTEN_FDS+x}" ]"#.into(),
            ],
            &env(),
            &[],
        )
        .unwrap();
        let st = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(st, nix::sys::wait::WaitStatus::Exited(pid, 0));
    }

    #[test]
    fn exec_failures_are_errors() {
        let e = spawn_with_fds(OsStr::new("no-such-program-here"), &[], &env(), &[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = spawn_with_fds(OsStr::new("/etc/passwd"), &[], &env(), &[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let (r, _w) = nix::unistd::pipe().unwrap();
        let e = spawn_with_fds(OsStr::new("/bin/true"), &[], &env(), &[("a:b", r.as_fd())])
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
