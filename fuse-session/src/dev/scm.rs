//! Bytes and file descriptors over a unix stream socket (`SCM_RIGHTS`), and the
//! credentials of the process at the other end (`SO_PEERCRED`).
//!
//! This is what a live handoff needs from the kernel: the old daemon sends its
//! `/dev/fuse` descriptor (and any other descriptors its filesystem holds) beside the
//! snapshot bytes, and each side checks who it is talking to before trusting it.
//!
//! # Kernel behaviour
//! - Descriptors ride on the bytes of the `sendmsg(2)` call that carried them; a
//!   `recvmsg(2)` on a stream socket never returns bytes of two sends with different
//!   control data, so the descriptors arrive with the first bytes of their message.
//! - At most `SCM_MAX_FD` (253) descriptors travel in one message. Receiving with a
//!   control buffer too small for them sets `MSG_CTRUNC` and the kernel closes the ones
//!   that did not fit; the receive here always leaves room for 253, so that never
//!   happens and no received descriptor is ever lost or leaked.
//! - `SO_PEERCRED` reports the pid, uid and gid of the peer as they were when it called
//!   `connect(2)` (or `listen(2)`, seen from the connecting side).
//!
//! # References
//! - `unix(7)` (`SCM_RIGHTS`, `SO_PEERCRED`), `cmsg(3)`, `sendmsg(2)`, `recvmsg(2)`
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};

/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// Who is at the other end of a unix socket (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's process id (at `connect`/`listen` time).
    pub pid: i32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
}

impl PeerCredentials {
    /// Whether this peer may take part in a handoff with a process running as `uid`:
    /// the same user, or root (on either side).
    pub fn trusted_by(&self, uid: u32) -> bool {
        self.uid == uid || self.uid == 0
    }
}

/// The credentials of the process at the other end of the unix socket `sock`.
///
/// # Errors
/// The error of `getsockopt(2)` (`ENOTSOCK`, or `ENOTCONN` on an unconnected socket).
pub fn peer_credentials(sock: impl AsFd) -> io::Result<PeerCredentials> {
    let c = getsockopt(&sock, sockopt::PeerCredentials)?;
    Ok(PeerCredentials {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// Sends all of `data` on the stream socket `sock`, with `fds` attached to its first
/// byte (`SCM_RIGHTS`). The descriptors stay open here: the receiver gets its own
/// references. `data` must not be empty when `fds` is not (descriptors need a byte to
/// ride on). Never raises `SIGPIPE` (`MSG_NOSIGNAL`): a vanished peer is `EPIPE`.
///
/// # Errors
/// `InvalidInput` for more than [`MAX_FDS_PER_MESSAGE`] descriptors or descriptors
/// without data; otherwise the error of `sendmsg(2)` (`EPIPE`, `ECONNRESET`,
/// `EAGAIN` on a send timeout ...).
pub fn send_with_fds(sock: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message; at most {MAX_FDS_PER_MESSAGE}",
                fds.len()
            ),
        ));
    }
    if data.is_empty() && !fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors need at least one byte of data to ride on",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let sock = sock.as_fd();
    let mut sent = 0;
    while sent < data.len() {
        let cmsgs = [ControlMessage::ScmRights(&raw)];
        // The descriptors go with the first chunk only.
        let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !raw.is_empty() {
            &cmsgs
        } else {
            &[]
        };
        let iov = [IoSlice::new(&data[sent..])];
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes from the stream socket `sock`, with the
/// descriptors that rode on them (close-on-exec). Returns the byte count (0 at end
/// of stream) and the descriptors, which the caller owns and which close when
/// dropped: a peer that sends descriptors nobody asked for cannot leak them here.
///
/// # Errors
/// The error of `recvmsg(2)` (`EAGAIN` on a receive timeout, `ECONNRESET` ...).
pub fn recv_with_fds(sock: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let sock = sock.as_fd();
    // Room for the most the kernel passes in one message: never MSG_CTRUNC.
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel has just installed `fd` in this process's
                    // descriptor table for this `SCM_RIGHTS` message (`unix(7)`): it is
                    // open, and no other code in the process has seen its number, so
                    // this `OwnedFd` is its only owner. nix hands received descriptors
                    // out as bare integers, which is why ownership is asserted here.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        return Ok((msg.bytes, fds));
    }
}

/// Receives exactly `buf.len()` bytes, collecting every descriptor that arrives on
/// them. Returns `Ok(false)` if the stream ended before the first byte (a clean end
/// between messages) and `UnexpectedEof` if it ended in the middle.
///
/// # Errors
/// As [`recv_with_fds`]; `UnexpectedEof`; `InvalidData` if more than
/// [`MAX_FDS_PER_MESSAGE`] descriptors arrive (they are closed).
pub fn recv_exact_with_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<bool> {
    let sock = sock.as_fd();
    let mut got = 0;
    while got < buf.len() {
        let (n, more) = recv_with_fds(sock, &mut buf[got..])?;
        fds.extend(more);
        if fds.len() > MAX_FDS_PER_MESSAGE {
            fds.clear();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer sent more descriptors than one message may carry",
            ));
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the peer closed the connection after {got} of {} bytes",
                    buf.len()
                ),
            ));
        }
        got += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn bytes_and_fds_round_trip() {
        let (a, b) = pair();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        send_with_fds(&a, b"hello", &[file.as_fd(), a.as_fd()]).unwrap();
        let mut buf = [0u8; 5];
        let mut fds = Vec::new();
        assert!(recv_exact_with_fds(&b, &mut buf, &mut fds).unwrap());
        assert_eq!(&buf, b"hello");
        assert_eq!(fds.len(), 2);
        let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & nix::libc::FD_CLOEXEC,
            0,
            "received fds are close-on-exec"
        );
        let me = peer_credentials(&b).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn eof_and_short_reads() {
        let (a, b) = pair();
        send_with_fds(&a, b"abc", &[]).unwrap();
        drop(a);
        let mut buf = [0u8; 5];
        let mut fds = Vec::new();
        let e = recv_exact_with_fds(&b, &mut buf, &mut fds).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!recv_exact_with_fds(&b, &mut buf, &mut fds).unwrap());
    }

    #[test]
    fn refuses_fds_without_data_and_too_many() {
        let (a, _b) = pair();
        assert!(send_with_fds(&a, b"", &[a.as_fd()]).is_err());
        let many: Vec<BorrowedFd<'_>> = (0..254).map(|_| a.as_fd()).collect();
        assert!(send_with_fds(&a, b"x", &many).is_err());
    }

    #[test]
    fn trust() {
        let p = |uid| PeerCredentials {
            pid: 1,
            uid,
            gid: 0,
        };
        assert!(p(1000).trusted_by(1000));
        assert!(p(0).trusted_by(1000));
        assert!(!p(1000).trusted_by(1001));
        assert!(!p(65534).trusted_by(0));
    }
}
