//! The `/dev/fuse` transport: `read(2)` a request into a page-aligned buffer,
//! `writev(2)` the reply's parts.
//!
//! # One wake-up per request
//!
//! An idle worker waits in its own `epoll` instance holding the device with
//! `EPOLLEXCLUSIVE` and its waker without. A request then wakes one idle worker, as
//! the kernel does for blocking readers (`fuse_dev_do_read` sleeps exclusively), and
//! not all of them: with `poll(2)`, every idle worker woke for every request, all but
//! one found the queue empty (`EAGAIN`) and went back to sleep. With 4 workers that
//! was 2.3 empty reads and polls per request and about half again the server CPU per
//! request of libfuse's multi-threaded loop (docs/BENCHMARKS.md).
//!
//! Once the mount is known to be reachable by pokes, workers read with a blocking
//! `read(2)` instead (one syscall per request, see [`Control::blocking`]).
use std::io::{self, IoSlice};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::dev::{Channel, Received, RequestBuffer, Waker, WriteOutcome};
use std::sync::Arc;

use crate::proto::{ReplyParts, ReplySender, ReplySpace};
use crate::serve::control::WorkerSlot;
use crate::serve::transport::{Event, Exchange, Sent, Transport};

/// A `/dev/fuse` worker's transport: a `dup` of the device and its two buffers.
pub(crate) struct DeviceTransport {
    chan: Channel,
    idle: IdleWait,
    req: RequestBuffer,
    out: RequestBuffer,
    /// Sends deferred replies (its own `dup` of the device).
    deferred: Arc<dyn ReplySender>,
    /// Length of the request in `req`.
    len: usize,
    /// The session's read buffer size the buffers were made for.
    size: usize,
}

impl DeviceTransport {
    /// A transport on `chan` with buffers for requests of `read_size` bytes
    /// (re-made when the session's size changes: [`Transport::fit`]).
    pub(crate) fn new(chan: Channel, waker: &Waker, read_size: usize) -> io::Result<Self> {
        let idle = IdleWait::new(&chan, waker)?;
        let deferred: Arc<dyn ReplySender> = Arc::new(DeviceSender {
            chan: chan.try_clone()?,
        });
        Ok(DeviceTransport {
            deferred,
            chan,
            idle,
            req: RequestBuffer::with_len(read_size)?,
            out: RequestBuffer::with_len(crate::proto::PAYLOAD_OFFSET + read_size)?,
            len: 0,
            size: read_size,
        })
    }
}

impl Transport for DeviceTransport {
    type Sender = Channel;

    fn fit(&mut self, read_size: usize) -> io::Result<()> {
        if read_size != self.size {
            self.size = read_size;
            self.req = RequestBuffer::with_len(read_size)?;
            self.out = RequestBuffer::with_len(crate::proto::PAYLOAD_OFFSET + read_size)?;
        }
        Ok(())
    }

    fn receive(&mut self, slot: &WorkerSlot, blocking: bool) -> io::Result<Event> {
        let received = if blocking {
            self.chan.read(&mut self.req)?
        } else {
            self.idle.read(&self.chan, &mut self.req, &slot.waker)?
        };
        Ok(match received {
            Received::Request(n) => {
                self.len = n;
                Event::Request(0)
            }
            Received::Woken => Event::Woken,
            Received::Closed => Event::Closed,
        })
    }

    fn exchange(&mut self, _: usize) -> Exchange<'_, Channel> {
        Exchange {
            request: Ok(&self.req[..self.len]),
            space: ReplySpace::new(&mut self.out).deferring(&self.deferred, 0),
            sender: &mut self.chan,
        }
    }

    fn send(chan: &mut Channel, _: usize, reply: &ReplyParts<'_>) -> io::Result<Sent> {
        write_parts(chan, reply)
    }

    fn finish(_: &mut Channel, _: usize, _: Option<i32>) -> io::Result<()> {
        // The device needs nothing for a request without a reply.
        Ok(())
    }
}

/// Sends deferred replies from any thread: its own `dup` of the device (replies
/// to `/dev/fuse` can be written by any thread, in any order).
struct DeviceSender {
    chan: Channel,
}

impl ReplySender for DeviceSender {
    fn send_deferred(&self, _: usize, reply: &ReplyParts<'_>) {
        match write_parts(&self.chan, reply) {
            Ok(Sent::Delivered) => {}
            Ok(Sent::Gone) => log::debug!(
                "deferred reply for unique {} not delivered: the request was interrupted",
                reply.unique()
            ),
            Ok(Sent::Closed) => log::debug!(
                "deferred reply for unique {} not delivered: the connection ended",
                reply.unique()
            ),
            Err(e) => log::error!(
                "sending the deferred reply for unique {} failed: {e}",
                reply.unique()
            ),
        }
    }
}

/// Writes the reply's parts with one `writev`.
fn write_parts(chan: &Channel, reply: &ReplyParts<'_>) -> io::Result<Sent> {
    {
        // One segment for header and body where the encoder wrote them together
        // (one user page to pin instead of two), else one per non-empty part.
        let (first, body) = match reply.header_and_body() {
            Some(whole) => (whole, &[][..]),
            None => (&reply.header()[..], reply.body()),
        };
        let mut iov = [IoSlice::new(first); 3];
        let mut n = 1;
        for part in [body, reply.data()] {
            if !part.is_empty() {
                iov[n] = IoSlice::new(part);
                n += 1;
            }
        }
        Ok(match chan.write(&iov[..n])? {
            WriteOutcome::Delivered => Sent::Delivered,
            WriteOutcome::Gone => Sent::Gone,
            WriteOutcome::Closed => Sent::Closed,
        })
    }
}

/// Where an idle worker sleeps: an `epoll` instance of its own with the device
/// (`EPOLLEXCLUSIVE`: a request wakes one idle worker, not all) and its waker.
///
/// It also remembers whether the last read found the queue empty: a worker serving
/// one synchronous caller then waits first and reads once (two syscalls per request)
/// instead of read (EAGAIN), wait, read (three). A busy queue keeps reading first.
struct IdleWait {
    epoll: Epoll,
    was_idle: bool,
}

impl IdleWait {
    fn new(chan: &Channel, waker: &Waker) -> io::Result<IdleWait> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            chan.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, 0),
        )?;
        epoll.add(waker.as_pollable(), EpollEvent::new(EpollFlags::EPOLLIN, 1))?;
        Ok(IdleWait {
            epoll,
            was_idle: false,
        })
    }

    /// Reads one request, or returns [`Received::Woken`] once `waker` fires: as
    /// [`Channel::read_or_wake`], but sleeping in [`IdleWait`] when the queue is empty.
    fn read(&mut self, chan: &Channel, buf: &mut [u8], waker: &Waker) -> io::Result<Received> {
        let mut wait = self.was_idle;
        loop {
            if waker.is_woken() {
                return Ok(Received::Woken);
            }
            if wait {
                // Readable, in error (the connection ended: the next read says so), or
                // woken: all end the wait. A spurious return only costs a loop.
                let mut events = [EpollEvent::empty(); 2];
                match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
                if waker.is_woken() {
                    return Ok(Received::Woken);
                }
            }
            match chan.try_read(buf)? {
                Some(r) => {
                    self.was_idle = wait;
                    return Ok(r);
                }
                None => wait = true,
            }
        }
    }
}
