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

use crate::dev::{Channel, Received, RequestBuffer, SlotData, SlotMark, Waker, WriteOutcome};
use std::sync::Arc;

use crate::proto::{ReplyParts, ReplySender, ReplySpace};
use crate::serve::control::WorkerSlot;
use crate::serve::transport::{Event, Exchange, Sent, Transport};

/// A `/dev/fuse` worker's transport: a `dup` of the device and its two buffers.
pub(crate) struct DeviceTransport {
    tx: DeviceTx,
    idle: IdleWait,
    req: RequestMem,
    out: RequestBuffer,
    /// Sends deferred replies (its own `dup` of the device).
    deferred: Arc<dyn ReplySender>,
    /// Length of the request in `req`.
    len: usize,
    /// The session's read buffer size the buffers were made for.
    size: usize,
}

/// Where a worker reads requests into: its own anonymous buffer, or a request slot
/// (a memfd that outlives the process, [`crate::dev::slots`]).
enum RequestMem {
    Anon(RequestBuffer),
    Slot(SlotData),
}

impl RequestMem {
    fn bytes(&self) -> &[u8] {
        match self {
            RequestMem::Anon(b) => b,
            RequestMem::Slot(s) => s,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            RequestMem::Anon(b) => b,
            RequestMem::Slot(s) => s,
        }
    }
}

/// The sending side of a worker: the device and, when the worker reads into a
/// request slot, that slot's `answered` word and the unique it holds.
pub(crate) struct DeviceTx {
    chan: Channel,
    slot: Option<(SlotMark, u64)>,
}

impl DeviceTx {
    /// The request in the slot is answered (or needs no answer): say so in the slot.
    #[inline]
    fn answered(&mut self) {
        if let Some((mark, unique)) = &mut self.slot {
            mark.mark(*unique);
        }
    }
}

impl DeviceTransport {
    /// A transport on `chan` with buffers for requests of `read_size` bytes
    /// (re-made when the session's size changes: [`Transport::fit`]); requests are
    /// read into `slot` instead when given.
    pub(crate) fn new(
        chan: Channel,
        waker: &Waker,
        read_size: usize,
        slot: Option<(SlotData, SlotMark)>,
    ) -> io::Result<Self> {
        let idle = IdleWait::new(&chan, waker)?;
        let deferred: Arc<dyn ReplySender> = Arc::new(DeviceSender {
            chan: chan.try_clone()?,
        });
        let (req, slot) = match slot {
            Some((data, mark)) if data.len() >= read_size => {
                (RequestMem::Slot(data), Some((mark, 0)))
            }
            Some((data, mark)) => {
                log::error!(
                    "request slot {} holds {} bytes, requests need {read_size}: this worker's \
                     requests are not kept for crash recovery",
                    mark.index(),
                    data.len()
                );
                (RequestMem::Anon(RequestBuffer::with_len(read_size)?), None)
            }
            None => (RequestMem::Anon(RequestBuffer::with_len(read_size)?), None),
        };
        Ok(DeviceTransport {
            deferred,
            tx: DeviceTx { chan, slot },
            idle,
            req,
            out: RequestBuffer::with_len(crate::proto::PAYLOAD_OFFSET + read_size)?,
            len: 0,
            size: read_size,
        })
    }
}

impl Transport for DeviceTransport {
    type Sender = DeviceTx;

    fn fit(&mut self, read_size: usize) -> io::Result<()> {
        if read_size != self.size {
            self.size = read_size;
            match &self.req {
                // A slot keeps serving while requests fit it.
                RequestMem::Slot(s) if s.len() >= read_size => {}
                RequestMem::Slot(_) => {
                    log::error!(
                        "requests of {read_size} bytes do not fit the request slot: this \
                         worker's requests are no longer kept for crash recovery"
                    );
                    self.tx.slot = None;
                    self.req = RequestMem::Anon(RequestBuffer::with_len(read_size)?);
                }
                RequestMem::Anon(_) => {
                    self.req = RequestMem::Anon(RequestBuffer::with_len(read_size)?);
                }
            }
            self.out = RequestBuffer::with_len(crate::proto::PAYLOAD_OFFSET + read_size)?;
        }
        Ok(())
    }

    fn receive(&mut self, slot: &WorkerSlot, blocking: bool) -> io::Result<Event> {
        let received = if blocking {
            self.tx.chan.read(self.req.bytes_mut())?
        } else {
            self.idle
                .read(&self.tx.chan, self.req.bytes_mut(), &slot.waker)?
        };
        Ok(match received {
            Received::Request(n) => {
                crate::fault::fallible("dev-request")?;
                self.len = n;
                if let (Some((_, unique)), RequestMem::Slot(data)) = (&mut self.tx.slot, &self.req)
                {
                    *unique = data.held_unique();
                }
                Event::Request(0)
            }
            Received::Woken => Event::Woken,
            Received::Closed => Event::Closed,
        })
    }

    fn exchange(&mut self, _: usize) -> Exchange<'_, DeviceTx> {
        Exchange {
            request: Ok(&self.req.bytes()[..self.len]),
            space: ReplySpace::new(&mut self.out).deferring(&self.deferred, 0),
            sender: &mut self.tx,
        }
    }

    fn send(tx: &mut DeviceTx, _: usize, reply: &ReplyParts<'_>) -> io::Result<Sent> {
        let sent = write_parts(&tx.chan, reply);
        if matches!(sent, Ok(Sent::Delivered | Sent::Gone)) {
            tx.answered();
        }
        sent
    }

    fn finish(tx: &mut DeviceTx, _: usize, _: Option<i32>) -> io::Result<()> {
        // The device needs nothing for a request without a reply; a slot records it
        // as done.
        tx.answered();
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
