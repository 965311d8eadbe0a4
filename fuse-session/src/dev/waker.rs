//! A level-triggered wake-up that interrupts [`Channel::read_or_wake`] without signals.
//!
//! [`Channel::read_or_wake`]: super::Channel::read_or_wake
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Wakes workers blocked in [`Channel::read_or_wake`](super::Channel::read_or_wake) so
/// they stop at a request boundary.
///
/// Level-triggered: once [`Waker::wake`] was called, every `read_or_wake` with this
/// waker returns [`Received::Woken`](super::Received::Woken) (before reading, so no
/// request is taken) until [`Waker::reset`]. Share it between threads by reference or
/// in an `Arc`; it is `Send + Sync`.
///
/// It is a flag (checked without a syscall on the busy path) plus a non-blocking pipe
/// whose read end is polled beside the device while idle.
///
/// # References
/// - `pipe(7)`, `poll(2)`
#[derive(Debug)]
pub struct Waker {
    flag: AtomicBool,
    read_end: OwnedFd,
    write_end: OwnedFd,
}

impl Waker {
    /// A new waker, not woken.
    ///
    /// # Errors
    /// The error of `pipe2(2)` (`EMFILE`, `ENFILE`).
    pub fn new() -> io::Result<Waker> {
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Waker {
            flag: AtomicBool::new(false),
            read_end,
            write_end,
        })
    }

    /// Wake every current and future `read_or_wake` with this waker, until
    /// [`Waker::reset`].
    ///
    /// # Errors
    /// An unexpected `write(2)` error. A full pipe (`EAGAIN`) is not an error: it is
    /// already readable.
    pub fn wake(&self) -> io::Result<()> {
        // The flag first: a reader that sees the pipe readable also sees the flag.
        if self.flag.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        loop {
            match nix::unistd::write(&self.write_end, &[1]) {
                Ok(_) | Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Clear the wake-up: `read_or_wake` blocks again.
    ///
    /// # Errors
    /// An unexpected `read(2)` error while draining the pipe.
    pub fn reset(&self) -> io::Result<()> {
        self.flag.store(false, Ordering::SeqCst);
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(&self.read_end, &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => return Ok(()),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// True if woken and not reset since.
    pub fn is_woken(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The descriptor that becomes readable when woken, for callers that poll it
    /// themselves (in an event loop, beside other descriptors).
    pub fn as_pollable(&self) -> BorrowedFd<'_> {
        self.read_end.as_fd()
    }

    /// Block until woken or `timeout` passes (`None`: no limit). Returns whether it is
    /// woken.
    ///
    /// # Errors
    /// An unexpected `poll(2)` error.
    pub fn wait(&self, timeout: Option<std::time::Duration>) -> io::Result<bool> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
        };
        loop {
            if self.is_woken() {
                return Ok(true);
            }
            let mut fds = [PollFd::new(self.read_end.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(self.is_woken()),
                Ok(_) => return Ok(self.is_woken()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn level_triggered_until_reset() {
        let w = Waker::new().unwrap();
        assert!(!w.is_woken());
        assert!(!w.wait(Some(Duration::from_millis(1))).unwrap());
        w.wake().unwrap();
        w.wake().unwrap();
        assert!(w.is_woken());
        assert!(w.wait(Some(Duration::from_millis(1))).unwrap());
        assert!(w.wait(None).unwrap());
        w.reset().unwrap();
        assert!(!w.is_woken());
        assert!(!w.wait(Some(Duration::from_millis(1))).unwrap());
    }
}
