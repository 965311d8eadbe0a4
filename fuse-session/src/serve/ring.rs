//! The fuse-over-io_uring transport: one queue's ring (see [`crate::dev::uring`]).
//!
//! A request arrives in one of the queue's registered entries in three places
//! (header, op struct, payload); the session parses one contiguous message in
//! device layout. Without a payload the request is copied (at most 168 bytes) and
//! the session encodes the reply straight into the entry's payload buffer
//! ([`UringQueue::reply_space`]), so committing writes only the 16-byte out header
//! into the entry's header area. With a payload (names, WRITE data), the header and
//! op struct are copied in front of the payload in the entry's buffer instead, so
//! the payload is not copied; the reply (small: an entry, a write count, xattr
//! bytes) is encoded into a staging area and copied into the entry after the
//! request is done with (`flush`). The commit also fetches the entry's next
//! request, in the same `io_uring_enter` that waits.
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};

use crate::dev::uring::{self, Commit, Placed, RequestAt, RingCore, RingEvent, UringQueue};
use crate::dev::{RequestBuffer, Waker};
use crate::proto::session::lock;
use crate::proto::{ReplyParts, ReplySender, ReplySpace};
use crate::serve::control::{Control, WorkerSlot};
use crate::serve::transport::{Event, Exchange, Sent, Transport};

/// Hands deferred replies to the queue's thread: a ring entry is committed by the
/// thread that owns the ring. The reply is copied (header, body, data: one
/// message) into the channel, and the queue's waker makes its thread look.
struct RingSender {
    tx: Mutex<mpsc::Sender<(usize, Vec<u8>)>>,
    waker: Arc<Waker>,
}

impl ReplySender for RingSender {
    fn send_deferred(&self, entry: usize, reply: &ReplyParts<'_>) {
        let sent = lock(&self.tx).send((entry, reply.to_vec()));
        if sent.is_err() {
            log::debug!(
                "deferred reply for unique {}: the io_uring queue has ended",
                reply.unique()
            );
            return;
        }
        if let Err(e) = self.waker.wake() {
            log::error!("waking an io_uring queue for a deferred reply: {e}");
        }
    }
}

/// One io_uring queue's transport.
pub(crate) struct RingTransport {
    queue: UringQueue,
    /// Where the current request is, or why it could not be read.
    taken: Result<RequestAt, &'static str>,
    /// Where replies to requests left in their entry are encoded (the entry's own
    /// reply space holds the request then), then copied into the entry.
    staging: RequestBuffer,
    /// Sends deferred replies to this queue's thread (`deferred_rx`), which
    /// commits them on their entries.
    deferred: Arc<dyn ReplySender>,
    deferred_rx: mpsc::Receiver<(usize, Vec<u8>)>,
    /// Requests served, published every 64 and when parking or leaving, so that
    /// queues on different CPUs do not share a cache line per request.
    served: u64,
}

impl RingTransport {
    /// A transport on `queue` (registered), for requests of up to `read_size` bytes.
    pub(crate) fn new(
        mut queue: UringQueue,
        read_size: usize,
        waker: Arc<Waker>,
    ) -> io::Result<Self> {
        let staging = RequestBuffer::with_len(read_size + crate::dev::page_size())?;
        queue
            .core()
            .set_staging_area(staging.as_ptr() as usize, staging.len());
        let (tx, deferred_rx) = mpsc::channel();
        Ok(RingTransport {
            deferred: Arc::new(RingSender {
                tx: Mutex::new(tx),
                waker,
            }),
            deferred_rx,
            queue,
            taken: Err("no request"),
            staging,
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
                // Tests fail the queue here, with the request held in its entry.
                crate::fault::fallible("uring-request")?;
                self.taken = self.queue.locate_request(i).map_err(|e| e.reason);
                Event::Request(i)
            }
            RingEvent::Woken => Event::Woken,
            RingEvent::ReplyLost(id) => Event::ReplyLost(id),
            RingEvent::Closed => Event::Closed,
        })
    }

    fn exchange(&mut self, n: usize) -> Exchange<'_, RingCore> {
        match self.taken {
            Ok(RequestAt::InEntry { start, len }) => {
                // The request occupies the entry's reply space: reply into the
                // staging area; `flush` copies it into the entry.
                let (request, core) = self.queue.request_in_entry(n, start, len);
                Exchange {
                    request: Ok(request),
                    space: ReplySpace::with_data_at(&mut self.staging, uring::REPLY_DATA_AT)
                        .data_in_space()
                        .deferring(&self.deferred, n),
                    sender: core,
                }
            }
            Ok(RequestAt::Copied(len)) => {
                // The request was copied into the entry's save area (where a
                // successor finds it after a crash).
                let (request, space, core) = self.queue.request_saved(n, len);
                Exchange {
                    request: Ok(request),
                    space: ReplySpace::with_data_at(space, uring::REPLY_DATA_AT)
                        .data_in_space()
                        .deferring(&self.deferred, n),
                    sender: core,
                }
            }
            Err(why) => {
                let (space, core) = self.queue.split(n);
                Exchange {
                    request: Err(why),
                    space: ReplySpace::with_data_at(space, uring::REPLY_DATA_AT)
                        .data_in_space()
                        .deferring(&self.deferred, n),
                    sender: core,
                }
            }
        }
    }

    fn send(core: &mut RingCore, n: usize, reply: &ReplyParts<'_>) -> io::Result<Sent> {
        let (base, len) = core.space_of(n);
        let (sbase, slen) = core.staging_area();
        let commit = match Placed::of_range(reply, base, len) {
            Some(p) => Commit::Reply(p),
            None if Placed::of_range(reply, sbase, slen).is_some() => {
                if let Some(p) = Placed::of_range(reply, sbase, slen) {
                    core.stage(n, p);
                }
                return Ok(Sent::Delivered);
            }
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

    fn deliver_deferred(&mut self) -> io::Result<()> {
        while let Ok((n, message)) = self.deferred_rx.try_recv() {
            let Some(space) = self.staging.get_mut(..message.len()) else {
                log::error!("a deferred reply does not fit the staging area: answering EIO");
                self.queue.core().commit(n, Commit::Error(nix::libc::EIO))?;
                continue;
            };
            space.copy_from_slice(&message);
            let unique = u64::from_ne_bytes(message[8..16].try_into().unwrap_or_default());
            let parts = ReplyParts::encoded(&self.staging[..message.len()], unique, None);
            Self::send(self.queue.core(), n, &parts)?;
            self.queue.commit_staged(&self.staging)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.queue.commit_staged(&self.staging)
    }

    fn idle(&mut self, control: &Control) {
        // Parking or leaving: replies committed since the last wait go out now.
        if let Err(e) = self.queue.core().submit_pending() {
            log::warn!(
                "io_uring queue {}: submitting before parking: {e}",
                self.queue.qid()
            );
        }
        control
            .ring_requests
            .fetch_add(std::mem::take(&mut self.served), Ordering::Relaxed);
    }

    fn served(&mut self, control: &Control) {
        self.served += 1;
        if self.served == 64 {
            control
                .ring_requests
                .fetch_add(std::mem::take(&mut self.served), Ordering::Relaxed);
        }
    }
}
