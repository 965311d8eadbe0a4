//! One handoff connection: framed messages, descriptors, deadlines, credentials.
use std::io::{self, ErrorKind};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use fuse_session::dev::{peer_credentials, recv_exact_with_fds, send_with_fds, PeerCredentials};

use super::message::{parse_header, Header, MessageError, HEADER_LEN};
use super::HandoffError;

/// A connected handoff socket with an overall deadline.
pub(crate) struct Conn {
    stream: UnixStream,
    deadline: std::cell::Cell<Instant>,
    max_snapshot: usize,
}

/// A received message.
pub(crate) struct Received {
    /// When the header arrived.
    pub started: Instant,
    pub header: Header,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Conn {
    pub(crate) fn new(stream: UnixStream, timeout: Duration, max_snapshot: usize) -> Conn {
        Conn {
            stream,
            deadline: std::cell::Cell::new(Instant::now() + timeout),
            max_snapshot,
        }
    }

    /// Replaces the deadline: `timeout` from now (a new phase of the handoff).
    pub(crate) fn rearm(&self, timeout: Duration) {
        self.deadline.set(Instant::now() + timeout);
    }

    /// The peer's credentials, checked: the same effective uid as ours, or root.
    pub(crate) fn check_peer(&self) -> Result<PeerCredentials, HandoffError> {
        let peer = peer_credentials(&self.stream).map_err(|e| HandoffError::Io {
            what: "read the peer's credentials (SO_PEERCRED)",
            source: e,
        })?;
        let ours = nix::unistd::geteuid().as_raw();
        if !peer.trusted_by(ours) {
            return Err(HandoffError::PeerNotTrusted {
                peer_uid: peer.uid,
                peer_pid: peer.pid,
                our_uid: ours,
            });
        }
        Ok(peer)
    }

    fn arm(&self, what: &'static str) -> Result<(), HandoffError> {
        let left = self
            .deadline
            .get()
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandoffError::Timeout(what));
        }
        let set = self
            .stream
            .set_read_timeout(Some(left))
            .and_then(|()| self.stream.set_write_timeout(Some(left)));
        set.map_err(|e| HandoffError::Io { what, source: e })
    }

    fn io_error(what: &'static str, e: io::Error) -> HandoffError {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => HandoffError::Timeout(what),
            ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionAborted => HandoffError::PeerGone(what),
            _ => HandoffError::Io { what, source: e },
        }
    }

    /// Sends `bytes` with `fds` on its first byte.
    pub(crate) fn send(
        &self,
        what: &'static str,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), HandoffError> {
        self.arm(what)?;
        send_with_fds(&self.stream, bytes, fds).map_err(|e| Self::io_error(what, e))
    }

    /// Receives one message. End of stream before it is [`HandoffError::PeerGone`].
    pub(crate) fn recv(&self, what: &'static str) -> Result<Received, HandoffError> {
        self.arm(what)?;
        let mut h = [0u8; HEADER_LEN];
        let mut fds = Vec::new();
        match recv_exact_with_fds(&self.stream, &mut h, &mut fds) {
            Ok(true) => {}
            Ok(false) => return Err(HandoffError::PeerGone(what)),
            Err(e) => return Err(Self::io_error(what, e)),
        }
        let started = Instant::now();
        let header = parse_header(&h, self.max_snapshot).map_err(HandoffError::Message)?;
        let mut body = Vec::new();
        // Grow as the bytes arrive, not from the announced length alone: a peer that
        // announces a large body and sends nothing costs no memory.
        let mut got = 0;
        while got < header.len {
            let chunk = (header.len - got).min(1 << 20);
            body.resize(got + chunk, 0);
            let mut more = Vec::new();
            match recv_exact_with_fds(&self.stream, &mut body[got..got + chunk], &mut more) {
                Ok(true) => {}
                Ok(false) => return Err(HandoffError::PeerGone(what)),
                Err(e) => return Err(Self::io_error(what, e)),
            }
            if !more.is_empty() {
                return Err(HandoffError::Message(MessageError::BadBody {
                    kind: header.kind,
                    why: "descriptors arrived in the middle of the body",
                }));
            }
            got += chunk;
        }
        Ok(Received {
            started,
            header,
            body,
            fds,
        })
    }
}
