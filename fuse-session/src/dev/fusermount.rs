//! Mounting and unmounting through the setuid helper `fusermount3`.
//!
//! `fusermount3 -o OPTS -- MOUNTPOINT`, run with `_FUSE_COMMFD=N` in its environment,
//! opens `/dev/fuse`, mounts, and sends the descriptor back over the unix socket `N`
//! (one byte of data with an `SCM_RIGHTS` control message). With `auto_unmount` it
//! then keeps running, and unmounts when the other end of that socket closes.
//!
//! # References
//! - `fusermount3(1)`, libfuse `util/fusermount.c` (the protocol), `unix(7)`
//!   (`SCM_RIGHTS`), `cmsg(3)`
use super::error::{libc_errno, MountError};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The helper's name.
const FUSERMOUNT: &str = "fusermount3";
/// The environment variable naming the socket descriptor.
const COMMFD_ENV: &str = "_FUSE_COMMFD";
/// Searched when `PATH` is unset.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Find `fusermount3` on `PATH` (or the usual system directories if `PATH` is unset).
///
/// Returns the first regular file named `fusermount3` with an execute bit set.
pub fn find_fusermount() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    std::env::split_paths(&path)
        .map(|dir| dir.join(FUSERMOUNT))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The result of a successful `fusermount3` mount.
#[derive(Debug)]
pub(crate) struct Helped {
    /// The `/dev/fuse` descriptor of the new mount.
    pub device: OwnedFd,
    /// With `auto_unmount`: our end of the socket (closing its last copy unmounts) and
    /// the still-running helper.
    pub keepalive: Option<(OwnedFd, Child)>,
}

/// Mount `mountpoint` with `fusermount3 -o options`.
pub(crate) fn mount(
    mountpoint: &Path,
    options: &str,
    auto_unmount: bool,
) -> Result<Helped, MountError> {
    let helper = find_fusermount().ok_or(MountError::FusermountNotFound)?;
    let io_err = |what| {
        move |e: Errno| MountError::Io {
            what,
            source: e.into(),
        }
    };
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io_err("create a socket pair for fusermount3"))?;
    // The helper's end must survive exec. It is made inheritable only now and closed
    // right after the spawn; a process another thread forks meanwhile may inherit it
    // too, which delays our seeing EOF if the helper fails, but cannot leak the mount.
    fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty()))
        .map_err(io_err("make the fusermount3 socket inheritable"))?;

    let mut cmd = Command::new(&helper);
    if !options.is_empty() {
        cmd.arg("-o").arg(options);
    }
    cmd.arg("--")
        .arg(mountpoint)
        .env(COMMFD_ENV, theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawned = cmd.spawn();
    drop(theirs);
    let mut child = spawned.map_err(|e| MountError::Io {
        what: "run fusermount3",
        source: e,
    })?;

    let received = receive_fd(&ours);
    match received {
        Ok(Some(device)) if auto_unmount => {
            // It keeps running; its stderr is not read any more (its writes get EPIPE).
            drop(child.stderr.take());
            Ok(Helped {
                device,
                keepalive: Some((ours, child)),
            })
        }
        Ok(Some(device)) => {
            drop(ours);
            let (status, stderr) = finish(child)?;
            if status != Some(0) {
                return Err(MountError::FusermountFailed { status, stderr });
            }
            Ok(Helped {
                device,
                keepalive: None,
            })
        }
        Ok(None) | Err(_) => {
            drop(ours);
            let (status, stderr) = finish(child)?;
            if let Err(e) = received {
                return Err(MountError::Io {
                    what: "receive the /dev/fuse descriptor from fusermount3",
                    source: e,
                });
            }
            Err(classify(status, stderr))
        }
    }
}

/// Collect the helper's stderr and exit status.
fn finish(mut child: Child) -> Result<(Option<i32>, String), MountError> {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        stderr = String::from_utf8_lossy(&bytes).into_owned();
    }
    let status = child.wait().map_err(|e| MountError::Io {
        what: "wait for fusermount3",
        source: e,
    })?;
    Ok((status.code(), stderr))
}

/// Turn a failed helper's message into the most specific error.
fn classify(status: Option<i32>, stderr: String) -> MountError {
    if stderr.contains("fuse device not found") {
        MountError::DeviceMissing(io::Error::from_raw_os_error(libc_errno::ENODEV))
    } else {
        MountError::FusermountFailed { status, stderr }
    }
}

/// Receive one descriptor sent with `SCM_RIGHTS`. `Ok(None)` on EOF without one.
/// Extra descriptors a misbehaving sender adds are received and closed.
fn receive_fd(sock: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    loop {
        let (n, fds) = super::scm::recv_with_fds(sock, &mut byte)?;
        if let Some(fd) = fds.into_iter().next() {
            return Ok(Some(fd));
        }
        if n == 0 {
            return Ok(None);
        }
        // A data byte without a descriptor: keep reading until one or EOF.
    }
}

/// Unmount `mountpoint` with `fusermount3 -u` (`-z` for lazy).
pub(crate) fn unmount(mountpoint: &Path, lazy: bool) -> Result<(), MountError> {
    let helper = find_fusermount().ok_or(MountError::FusermountNotFound)?;
    let mut cmd = Command::new(helper);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    cmd.arg("--").arg(mountpoint);
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| MountError::Io {
            what: "run fusermount3 -u",
            source: e,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("Device or resource busy") {
            return Err(MountError::Busy(mountpoint.to_owned()));
        }
        Err(MountError::FusermountFailed {
            status: out.status.code(),
            stderr,
        })
    }
}
