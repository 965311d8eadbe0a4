//! Reading requests from and writing replies to a `/dev/fuse` descriptor.
use super::waker::Waker;
use fuse_wire::abi;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// What a read from the device produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// A whole request of this many bytes is at the start of the buffer.
    Request(usize),
    /// The [`Waker`] fired (only from [`Channel::read_or_wake`]); no request was taken.
    Woken,
    /// The connection is gone (`ENODEV`, or `ECONNABORTED` after an abort): the filesystem was unmounted or the
    /// connection aborted. No further request will come.
    Closed,
}

/// What writing a reply or a notification produced, when the kernel accepted the
/// message's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The kernel took the message.
    Delivered,
    /// `ENOENT`. For a reply: the request is no longer waiting (it was interrupted and
    /// finished, or the connection was aborted); not an error of the daemon. For a
    /// notification: the kernel has no such inode or entry cached.
    Gone,
    /// `ENODEV` (or `ECONNABORTED`): the connection is gone (unmounted or aborted).
    Closed,
}

/// A `/dev/fuse` descriptor of a mounted connection: the daemon's end of the protocol.
///
/// Every method takes `&self`: one channel can be shared by many worker threads (the
/// kernel hands each request to exactly one reader, and each write is one message).
///
/// The descriptor is switched to `O_NONBLOCK` when the channel is made, so that reads
/// can be interrupted by a [`Waker`]. `O_NONBLOCK` belongs to the open file description:
/// every `dup` of the descriptor (in this process or another) sees it too.
/// [`Channel::read`] still blocks, by polling.
///
/// # Kernel behaviour
/// - A read returns exactly one request, and needs a buffer of at least
///   [`abi::FUSE_MIN_READ_BUFFER`] bytes; a request larger than the buffer is failed
///   by the kernel with `EIO` (and the read goes on to the next), so size buffers with
///   [`RequestBuffer`](super::RequestBuffer).
/// - A write must hold exactly one whole message (header included); a reply to a
///   request that is no longer waiting fails with `ENOENT`.
/// - A read on a descriptor that was never mounted fails with `EPERM`.
///
/// # References
/// - Linux `fs/fuse/dev.c` (`fuse_dev_do_read`, `fuse_dev_do_write`, `fuse_dev_poll`,
///   `fuse_dev_ioctl_clone`), `fuse(4)`
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

mod ioctl {
    // `FUSE_DEV_IOC_CLONE` reads a `uint32_t` (the source descriptor) from the caller,
    // although the kernel header declares it `_IOR`: the "bad" form takes the number
    // as the header computes it.
    nix::ioctl_write_ptr_bad!(fuse_dev_ioc_clone, fuse_wire::abi::FUSE_DEV_IOC_CLONE, u32);
}

impl Channel {
    /// Wrap a `/dev/fuse` descriptor, setting `O_NONBLOCK` on it.
    ///
    /// # Errors
    /// The error of `fcntl(2)` (`EBADF` if `fd` is closed, which an `OwnedFd` never is).
    pub fn new(fd: OwnedFd) -> io::Result<Channel> {
        let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
        if !flags.contains(OFlag::O_NONBLOCK) {
            fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
        Ok(Channel { fd })
    }

    /// Sets or clears `O_NONBLOCK` on the open file description (shared by every
    /// `dup` of it, in every process). With it cleared, [`Channel::read`] sleeps in
    /// the kernel's own exclusive wait (one syscall per request, as libfuse), and only
    /// a request — or the end of the connection — wakes a reader.
    ///
    /// # Errors
    /// The error of `fcntl(2)`.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let flags = OFlag::from_bits_retain(fcntl(&self.fd, FcntlArg::F_GETFL)?);
        let want = if on {
            flags | OFlag::O_NONBLOCK
        } else {
            flags - OFlag::O_NONBLOCK
        };
        if want != flags {
            fcntl(&self.fd, FcntlArg::F_SETFL(want))?;
        }
        Ok(())
    }

    /// The descriptor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Give the descriptor back.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Another channel on the **same open file description** (`dup(2)`): one processing
    /// queue shared by both. This is what a live handoff passes on, so that the kernel
    /// can resend the requests read but not answered (`FUSE_NOTIFY_RESEND`).
    ///
    /// # Errors
    /// The error of `dup(2)` (`EMFILE`).
    pub fn try_clone(&self) -> io::Result<Channel> {
        Ok(Channel {
            fd: nix::unistd::dup(&self.fd)?,
        })
    }

    /// A channel with its **own processing queue** on the same connection
    /// (`FUSE_DEV_IOC_CLONE` on a fresh `/dev/fuse`), so that worker threads do not
    /// contend for one queue's lock.
    ///
    /// Caveat: requests read from a cloned queue and not yet answered are **aborted**
    /// (the callers get `ECONNABORTED`) when that queue's last descriptor closes, and
    /// `FUSE_NOTIFY_RESEND` only moves requests of the queue it is written to. A handoff
    /// must therefore quiesce or pass on every clone, not just the original.
    ///
    /// # Errors
    /// Opening `/dev/fuse` or the ioctl failed (`EINVAL` if this descriptor is not
    /// mounted yet).
    pub fn clone_queue(&self) -> io::Result<Channel> {
        let new: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(super::FUSE_DEVICE)?
            .into();
        let src = u32::try_from(self.fd.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `fuse_dev_ioc_clone` is `ioctl(fd, FUSE_DEV_IOC_CLONE, &src)`. `new` is
        // an open descriptor we own, and the kernel reads exactly one `u32` through the
        // pointer (`get_user(oldfd, (__u32 __user *)arg)` in fs/fuse/dev.c), which points
        // to `src`, a live, initialised local that outlives the call. It writes nothing.
        unsafe { ioctl::fuse_dev_ioc_clone(new.as_raw_fd(), &src) }?;
        Channel::new(new)
    }

    /// Read one request, blocking until one arrives or the connection closes.
    ///
    /// Never returns [`Received::Woken`]. Retries `EINTR` and `ENOENT` (a request that
    /// was interrupted before it was read is dropped by the kernel).
    ///
    /// # Errors
    /// `buf` smaller than [`abi::FUSE_MIN_READ_BUFFER`] (`InvalidInput`, checked before
    /// any syscall); `EPERM` if the descriptor is not mounted; other `read(2)`/`poll(2)`
    /// errors.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Received> {
        check_len(buf)?;
        loop {
            match self.read_once(buf)? {
                Some(r) => return Ok(r),
                None => self.poll_idle(None)?,
            }
        }
    }

    /// Read one request if one is queued, without blocking: `Ok(None)` if none is.
    ///
    /// # Errors
    /// As [`Channel::read`].
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        check_len(buf)?;
        self.read_once(buf)
    }

    /// Read one request, or return [`Received::Woken`] once `waker` fires.
    ///
    /// The waker is checked before each read (an atomic load, no syscall), so a worker
    /// stops at a request boundary even when requests keep coming. On the busy path the
    /// cost is one `read(2)` per request; when idle, a `read` that fails with `EAGAIN`,
    /// then `poll(2)` on the device and the waker, then the `read` again.
    ///
    /// # Errors
    /// As [`Channel::read`].
    pub fn read_or_wake(&self, buf: &mut [u8], waker: &Waker) -> io::Result<Received> {
        check_len(buf)?;
        loop {
            if waker.is_woken() {
                return Ok(Received::Woken);
            }
            match self.read_once(buf)? {
                Some(r) => return Ok(r),
                None => self.poll_idle(Some(waker))?,
            }
        }
    }

    /// Write one message (reply or notification), gathered from `iov`, with one
    /// `writev(2)`.
    ///
    /// # Errors
    /// `EINVAL` for a malformed message (wrong length, unknown unique, bad error value),
    /// `E2BIG`, other `writev(2)` errors; a short write (which the kernel does not do)
    /// as `WriteZero`. `ENOENT` and `ENODEV` are not errors: see [`WriteOutcome`].
    pub fn write(&self, iov: &[IoSlice<'_>]) -> io::Result<WriteOutcome> {
        let total: usize = iov.iter().map(|s| s.len()).sum();
        loop {
            match sys_writev(self.fd.as_fd(), iov) {
                Ok(n) if n == total => return Ok(WriteOutcome::Delivered),
                Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
                Err(Errno::EINTR) => continue,
                Err(Errno::ENOENT) => return Ok(WriteOutcome::Gone),
                Err(Errno::ENODEV) | Err(Errno::ECONNABORTED) => return Ok(WriteOutcome::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One `read(2)`: `Ok(None)` on `EAGAIN`. Retries `EINTR` and `ENOENT`.
    fn read_once(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        loop {
            match sys_read(self.fd.as_fd(), buf) {
                Ok(n) => return Ok(Some(Received::Request(n))),
                Err(Errno::EINTR) | Err(Errno::ENOENT) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                // ECONNABORTED instead of ENODEV after an abort (fusectl, or the kernel's
                // request timeout) when FUSE_ABORT_ERROR was agreed.
                Err(Errno::ENODEV) | Err(Errno::ECONNABORTED) => return Ok(Some(Received::Closed)),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Wait until the device is readable (or in error: the next read reports it), or
    /// the waker fires.
    fn poll_idle(&self, waker: Option<&Waker>) -> io::Result<()> {
        let dev = PollFd::new(self.fd.as_fd(), PollFlags::POLLIN);
        let result = match waker {
            Some(w) => poll(
                &mut [dev, PollFd::new(w.as_pollable(), PollFlags::POLLIN)],
                PollTimeout::NONE,
            ),
            None => poll(&mut [dev], PollTimeout::NONE),
        };
        match result {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

// The request path's two syscalls go through `syscall(2)` rather than the C library's
// `read`/`writev`: those are cancellation points, and glibc brackets each with two
// atomic read-modify-writes of the thread's cancel state (`__pthread_enable_asynccancel`
// / `__pthread_disable_asynccancel`), four per request, for a cancellation Rust threads
// never use. Measured: docs/bench/2026-12-07-per-request-cost.md.

/// `read(2)` of `fd` into `buf`, without the C library's cancellation bookkeeping.
fn sys_read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `read(fd, ptr, len)` writes at most `len` bytes at `ptr`; `ptr` and `len`
    // come from `buf`, a live, exclusively borrowed slice, for the whole call. `fd` is
    // a descriptor borrowed for the call.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_read,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    usize::try_from(r).map_err(|_| Errno::last())
}

/// `writev(2)` of `iov` to `fd`, without the C library's cancellation bookkeeping.
fn sys_writev(fd: BorrowedFd<'_>, iov: &[IoSlice<'_>]) -> Result<usize, Errno> {
    let n = nix::libc::c_int::try_from(iov.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix (its documented
    // guarantee), so `iov` is an array of `n` valid iovecs, each pointing to bytes
    // borrowed for the call; the kernel only reads them. `fd` is borrowed for the call.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_writev,
            fd.as_raw_fd(),
            iov.as_ptr().cast::<nix::libc::iovec>(),
            n,
        )
    };
    usize::try_from(r).map_err(|_| Errno::last())
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Refuse buffers the kernel would refuse (`EINVAL`), before any syscall.
fn check_len(buf: &[u8]) -> io::Result<()> {
    if buf.len() < abi::FUSE_MIN_READ_BUFFER {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a /dev/fuse read buffer needs at least {} bytes, got {}",
                abi::FUSE_MIN_READ_BUFFER,
                buf.len()
            ),
        ))
    } else {
        Ok(())
    }
}
