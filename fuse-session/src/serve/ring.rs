//! The fuse-over-io_uring transport: one queue's ring (see [`crate::dev::uring`]).
//!
//! A request arrives in one of the queue's registered entries; it is copied into
//! device layout (header, op struct, payload: the session parses one contiguous
//! message). The session encodes the reply straight into the entry's payload
//! buffer ([`UringQueue::reply_space`]), so committing writes only the 16-byte out
//! header into the entry's header area; the commit also fetches the entry's next
//! request, in the same `io_uring_enter` that waits.
use std::io;
use std::sync::atomic::Ordering;

use crate::dev::uring::{self, Commit, Placed, RingCore, RingEvent, UringQueue};
use crate::dev::RequestBuffer;
use crate::proto::{ReplyParts, ReplySpace};
use crate::serve::control::{Control, WorkerSlot};
use crate::serve::transport::{Event, Exchange, Sent, Transport};

/// One io_uring queue's transport.
pub(crate) struct RingTransport {
    queue: UringQueue,
    /// The request of the current entry in device layout.
    req: RequestBuffer,
    /// Its length, or why it could not be read.
    taken: Result<usize, &'static str>,
    /// Requests served, published every 64 and when parking or leaving, so that
    /// queues on different CPUs do not share a cache line per request.
    served: u64,
}

impl RingTransport {
    /// A transport on `queue` (registered), for requests of up to `read_size` bytes.
    pub(crate) fn new(queue: UringQueue, read_size: usize) -> io::Result<Self> {
        Ok(RingTransport {
            queue,
            // Room for the op struct area and a page of slack beyond the read size.
            req: RequestBuffer::with_len(
                read_size + fuse_wire::abi::FUSE_URING_OP_IN_OUT_SZ + crate::dev::page_size(),
            )?,
            taken: Err("no request"),
            served: 0,
        })
    }

    pub(crate) fn qid(&self) -> u16 {
        self.queue.qid()
    }
}

impl Transport for RingTransport {
    type Sender = RingCore;

    fn receive(&mut self, slot: &WorkerSlot, _blocking: bool) -> io::Result<Event> {
        self.queue.arm_waker(slot.waker.as_pollable())?;
        Ok(match self.queue.next_event()? {
            RingEvent::Request(i) => {
                self.taken = self
                    .queue
                    .take_request(i, &mut self.req)
                    .map_err(|e| e.reason);
                Event::Request(i)
            }
            RingEvent::Woken => Event::Woken,
            RingEvent::ReplyLost(id) => Event::ReplyLost(id),
            RingEvent::Closed => Event::Closed,
        })
    }

    fn exchange(&mut self, n: usize) -> Exchange<'_, RingCore> {
        let (space, core) = self.queue.split(n);
        let request = match self.taken {
            Ok(len) => Ok(&self.req[..len]),
            Err(why) => Err(why),
        };
        Exchange {
            request,
            space: ReplySpace::with_data_at(space, uring::REPLY_DATA_AT).data_in_space(),
            sender: core,
        }
    }

    fn send(core: &mut RingCore, n: usize, reply: &ReplyParts<'_>) -> io::Result<Sent> {
        let (base, len) = core.space_of(n);
        let commit = match Placed::of_range(reply, base, len) {
            Some(p) => Commit::Reply(p),
            None => {
                log::error!("a reply is not in its ring entry's buffer: answering EIO");
                core.commit(n, Commit::Error(nix::libc::EIO))?;
                return Ok(Sent::Gone);
            }
        };
        core.commit(n, commit)?;
        // A commit the kernel refuses comes back as RingEvent::ReplyLost.
        Ok(Sent::Delivered)
    }

    fn finish(core: &mut RingCore, n: usize, errno: Option<i32>) -> io::Result<()> {
        core.commit(
            n,
            match errno {
                Some(e) => Commit::Error(e),
                None => Commit::Empty,
            },
        )
    }

    fn idle(&mut self, control: &Control) {
        control
            .ring_requests
            .fetch_add(std::mem::take(&mut self.served), Ordering::Relaxed);
    }

    fn served(&mut self, control: &Control) {
        self.served += 1;
        if self.served == 64 {
            self.idle(control);
        }
    }
}
