//! The notify socket: sending messages (and descriptors) to a service manager, and,
//! for a keeper, receiving them with the sender's credentials.
//!
//! # Kernel behaviour
//! - `NOTIFY_SOCKET` names an `AF_UNIX` datagram socket: a path, or, with a leading
//!   `@`, a name in the abstract namespace (no file; it goes away with the socket).
//! - A datagram arrives whole or not at all; a receive buffer too small for it sets
//!   `MSG_TRUNC`, and a control buffer too small sets `MSG_CTRUNC` (the kernel then
//!   closes the descriptors that did not fit). The receive here leaves room for
//!   [`MAX_MESSAGE`] + 1 bytes and for [`MAX_FDS_PER_MESSAGE`] descriptors, and drops
//!   any message that still comes out truncated.
//! - With `SO_PASSCRED` set on the receiving socket, every datagram carries
//!   `SCM_CREDENTIALS` with the pid, uid and gid of the process that sent it, filled
//!   in by the kernel (a sender may only claim another pid with `CAP_SYS_ADMIN`).
//!   That is how a receiver knows who sent each message.
//!
//! # References
//! - `sd_notify(3)`, `unix(7)` (`SO_PASSCRED`, `SCM_CREDENTIALS`, abstract names)
use std::ffi::OsStr;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned,
    MsgFlags, SockFlag, SockType, UnixAddr,
};

use super::message::MAX_MESSAGE;
use super::FdStoreError;
use crate::dev::scm::{send_with_fds, MAX_FDS_PER_MESSAGE};

/// How long a send may wait for room in the receiver's queue.
const SEND_TIMEOUT_SECS: i64 = 10;

/// Where to send notify messages: the socket `NOTIFY_SOCKET` names.
#[derive(Clone, Debug)]
pub struct NotifySocket {
    addr: UnixAddr,
    name: String,
}

impl NotifySocket {
    /// The socket named `name`: an absolute path, or `@` and an abstract name.
    ///
    /// # Errors
    /// [`FdStoreError::Env`] if the name is empty, relative, or too long for a
    /// socket address.
    pub fn new(name: &OsStr) -> Result<NotifySocket, FdStoreError> {
        let bad = |reason: &'static str| FdStoreError::Env {
            var: "NOTIFY_SOCKET",
            value: name.to_string_lossy().chars().take(120).collect(),
            reason,
        };
        let bytes = name.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') if bytes.len() > 1 => UnixAddr::new_abstract(&bytes[1..])
                .map_err(|_| bad("the abstract name is too long"))?,
            Some(b'/') => UnixAddr::new(name).map_err(|_| bad("the path is too long"))?,
            Some(_) => return Err(bad("neither an absolute path nor @ and an abstract name")),
            None => return Err(bad("empty")),
        };
        Ok(NotifySocket {
            addr,
            name: name.to_string_lossy().into_owned(),
        })
    }

    /// The socket named by `NOTIFY_SOCKET`, or `None` if it is not set (no service
    /// manager listens). Does not change the environment.
    ///
    /// # Errors
    /// As [`NotifySocket::new`].
    pub fn from_env() -> Result<Option<NotifySocket>, FdStoreError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) => NotifySocket::new(&v).map(Some),
        }
    }

    /// The name, as `NOTIFY_SOCKET` gives it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) with `fds` attached, as
    /// one datagram from a fresh socket (as `sd_pid_notify_with_fds` does: nothing
    /// to reconnect when the manager restarts). The descriptors stay open here; the
    /// receiver gets its own references.
    ///
    /// # Errors
    /// `InvalidInput` for an empty or over-long (more than [`MAX_MESSAGE`] bytes)
    /// message or too many descriptors; otherwise the error of `socket(2)`,
    /// `connect(2)` or `sendmsg(2)` (`ECONNREFUSED` or `ENOENT` when nobody listens,
    /// `EAGAIN` when the receiver's queue stayed full for 10 s).
    pub fn send(&self, state: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if state.is_empty() || state.len() > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a notify message has 1 to {MAX_MESSAGE} bytes, not {}",
                    state.len()
                ),
            ));
        }
        let sock = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // A datagram send blocks while the receiver's queue is full: a manager
        // that stopped reading must not hang the daemon.
        setsockopt(
            &sock,
            sockopt::SendTimeout,
            &nix::sys::time::TimeVal::new(SEND_TIMEOUT_SECS, 0),
        )?;
        connect(sock.as_raw_fd(), &self.addr)?;
        send_with_fds(&sock, state.as_bytes(), fds)
    }
}

/// One message received on a [`NotifyListener`].
#[derive(Debug)]
pub struct Received {
    /// The sender's pid, uid and gid (`SCM_CREDENTIALS`); `None` if the kernel
    /// attached none (it always does with `SO_PASSCRED`).
    pub sender: Option<super::super::PeerCredentials>,
    /// The message bytes (untrusted; see [`parse_message`](super::parse_message)).
    pub bytes: Vec<u8>,
    /// The descriptors that came with it (close-on-exec; closed when dropped).
    pub fds: Vec<OwnedFd>,
    /// The message or its descriptors did not fit the buffers and were cut: ignore it.
    pub truncated: bool,
}

/// The receiving end of a notify socket: what a keeper sets `NOTIFY_SOCKET` to for
/// its child. A non-blocking datagram socket in the abstract namespace (no file to
/// leave behind, whoever dies), with `SO_PASSCRED` so that each message says who
/// sent it.
#[derive(Debug)]
pub struct NotifyListener {
    sock: OwnedFd,
    name: String,
}

impl NotifyListener {
    /// Binds a new socket at a fresh abstract name `@fuse-live-keeper/PID/N`.
    ///
    /// # Errors
    /// The error of `socket(2)`, `setsockopt(2)` or `bind(2)`.
    pub fn bind() -> io::Result<NotifyListener> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let sock = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&sock, sockopt::PassCred, &true)?;
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for _ in 0..64 {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let name = format!("fuse-live-keeper/{}/{salt:x}-{n}", std::process::id());
            let addr = UnixAddr::new_abstract(name.as_bytes())?;
            match bind(sock.as_raw_fd(), &addr) {
                Ok(()) => {
                    return Ok(NotifyListener {
                        sock,
                        name: format!("@{name}"),
                    })
                }
                Err(Errno::EADDRINUSE) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free abstract socket name",
        ))
    }

    /// The value for the child's `NOTIFY_SOCKET` (`@` and the abstract name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Receives one queued message, or `None` if none is queued (the socket is
    /// non-blocking: poll it for `POLLIN`).
    ///
    /// # Errors
    /// The error of `recvmsg(2)`.
    pub fn recv(&self) -> io::Result<Option<Received>> {
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let mut space = nix::cmsg_space!(
            nix::sys::socket::UnixCredentials,
            [RawFd; MAX_FDS_PER_MESSAGE]
        );
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut fds = Vec::new();
            let mut sender = None;
            for cmsg in msg.cmsgs()? {
                match cmsg {
                    ControlMessageOwned::ScmRights(raw) => {
                        for fd in raw {
                            // SAFETY: the kernel has just installed `fd` in this
                            // process's descriptor table for this `SCM_RIGHTS`
                            // message (`unix(7)`): it is open and no other code has
                            // seen its number, so this `OwnedFd` is its only owner.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                    ControlMessageOwned::ScmCredentials(c) => {
                        sender = Some(super::super::PeerCredentials {
                            pid: c.pid(),
                            uid: c.uid(),
                            gid: c.gid(),
                        })
                    }
                    _ => {}
                }
            }
            let truncated = msg
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
                || msg.bytes > MAX_MESSAGE;
            let n = msg.bytes.min(MAX_MESSAGE);
            buf.truncate(n);
            return Ok(Some(Received {
                sender,
                bytes: buf,
                fds,
                truncated,
            }));
        }
    }
}

impl AsFd for NotifyListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn send_and_receive_with_credentials_and_fds() {
        let l = NotifyListener::bind().unwrap();
        assert!(l.name().starts_with("@fuse-live-keeper/"));
        assert!(l.recv().unwrap().is_none());
        let s = NotifySocket::new(OsStr::new(l.name())).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        std::fs::File::from(w).write_all(b"kept").unwrap();
        s.send("FDSTORE=1\nFDNAME=x", &[r.as_fd()]).unwrap();
        drop(r);
        let r = l.recv().unwrap().unwrap();
        assert_eq!(r.bytes, b"FDSTORE=1\nFDNAME=x");
        assert!(!r.truncated);
        let who = r.sender.unwrap();
        assert_eq!(who.pid, std::process::id() as i32);
        assert_eq!(r.fds.len(), 1);
        let mut g = std::fs::File::from(r.fds.into_iter().next().unwrap());
        let mut text = String::new();
        g.read_to_string(&mut text).unwrap();
        assert_eq!(text, "kept");
        assert!(l.recv().unwrap().is_none());
    }

    #[test]
    fn names_and_sizes() {
        assert!(NotifySocket::new(OsStr::new("")).is_err());
        assert!(NotifySocket::new(OsStr::new("@")).is_err());
        assert!(NotifySocket::new(OsStr::new("relative/path")).is_err());
        assert!(NotifySocket::new(OsStr::new(&format!("/{}", "x".repeat(200)))).is_err());
        assert!(NotifySocket::new(OsStr::new("/run/systemd/notify")).is_ok());
        let l = NotifyListener::bind().unwrap();
        let s = NotifySocket::new(OsStr::new(l.name())).unwrap();
        assert!(s.send("", &[]).is_err());
        assert!(s.send(&"A".repeat(MAX_MESSAGE + 1), &[]).is_err());
        s.send(&"A".repeat(MAX_MESSAGE), &[]).unwrap();
        let r = l.recv().unwrap().unwrap();
        assert_eq!(r.bytes.len(), MAX_MESSAGE);
        assert!(!r.truncated);
        drop(l);
        let e = s.send("READY=1", &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ECONNREFUSED));
    }
}
