//! The seam between the session and a kernel transport: the [`Transport`] trait,
//! and the one worker loop ([`run_worker`]) that every transport runs.
//!
//! A transport receives a request into memory of its own, lends the session the
//! request's bytes and a reply space ([`Exchange`]), and sends the reply the
//! session gives back in parts ([`ReplyParts`]) its own way: `/dev/fuse` with one
//! `writev` of the parts, fuse-over-io_uring by committing its entry (the parts
//! are already where the kernel reads them). The loop runs the session's three
//! steps between the two ([`Session::accept`], [`Session::call`],
//! [`Session::respond`]), so whatever watches the steps (a journal, through
//! [`StepHook`](crate::StepHook)) sees every transport's requests in one place.
use std::io;
use std::sync::atomic::Ordering;

use crate::fs::Filesystem;
use crate::proto::{Outcome, ReplyParts, ReplySpace, Session};
use crate::serve::control::{Control, Mode, Phase, WorkerSlot};

/// What waiting for the next request produced.
#[derive(Debug)]
pub(crate) enum Event {
    /// A request is ready in slot `n` (the device has one slot; a ring, one per
    /// entry): [`Transport::exchange`] it.
    Request(usize),
    /// The worker's waker fired: look at the mode.
    Woken,
    /// A reply that counted a lookup of this nodeid was not delivered (the ring
    /// reports it late, on the commit's completion).
    ReplyLost(u64),
    /// The connection ended (unmounted or aborted).
    Closed,
}

/// What sending a reply produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The kernel took it (or will report otherwise as [`Event::ReplyLost`]).
    Delivered,
    /// The request is gone (interrupted and ended): the reply was dropped.
    Gone,
    /// The connection ended.
    Closed,
}

/// One request lent to the session: its bytes, the space to encode its reply in,
/// and what sends the reply. The three borrow disjoint parts of the transport.
pub(crate) struct Exchange<'t, S> {
    /// The request in device layout, or why the transport could not make it one.
    pub(crate) request: Result<&'t [u8], &'static str>,
    pub(crate) space: ReplySpace<'t>,
    pub(crate) sender: &'t mut S,
}

/// A kernel transport of FUSE requests: receive a request, send a reply, wake.
pub(crate) trait Transport {
    /// The part of the transport that sends replies.
    type Sender;

    /// Makes the request buffers fit requests of `read_size` bytes (the
    /// session's read buffer size, which INIT sets).
    fn fit(&mut self, read_size: usize) -> io::Result<()> {
        let _ = read_size;
        Ok(())
    }

    /// Waits for the next event. `blocking`: the caller allows a wait that only a
    /// request or the connection's end ends (the device's blocking `read(2)`);
    /// otherwise the worker's waker must end the wait too.
    fn receive(&mut self, slot: &WorkerSlot, blocking: bool) -> io::Result<Event>;

    /// The request in slot `n`, its reply space and the sender, borrowed apart.
    fn exchange(&mut self, n: usize) -> Exchange<'_, Self::Sender>;

    /// Sends `reply` for the request in slot `n`.
    fn send(sender: &mut Self::Sender, n: usize, reply: &ReplyParts<'_>) -> io::Result<Sent>;

    /// Ends the request in slot `n` without a reply (the kernel expects none), or
    /// with `errno` when the request could not be read at all (`Some`).
    fn finish(sender: &mut Self::Sender, n: usize, errno: Option<i32>) -> io::Result<()>;

    /// Sends the answers of deferred requests that must go out on this worker's
    /// thread (a ring entry is committed by its queue's thread): called before
    /// each wait, after the worker's waker was reset.
    fn deliver_deferred(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// After each request, once the session no longer borrows the transport's
    /// buffers: complete what `send` had to defer.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The worker parks or leaves: publish what is kept locally.
    fn idle(&mut self, control: &Control) {
        let _ = control;
    }

    /// Counts a request served (for [`Running::ring_requests`](super::Running::ring_requests)).
    fn served(&mut self, control: &Control) {
        let _ = control;
    }
}

/// The worker loop, for every transport: wait for a request, run the session's
/// three steps, send the reply; park or leave at request boundaries as the mode
/// says.
pub(crate) fn run_worker<F: Filesystem, T: Transport>(
    session: &Session<F>,
    transport: &mut T,
    slot: &WorkerSlot,
    control: &Control,
) -> io::Result<()> {
    // Until this worker has seen INIT answered: a local flag, so that the request
    // path reads no shared state for it afterwards.
    let mut init_replied = control.init_replied.load(Ordering::Acquire);
    // The buffers fit the size INIT set once a fit ran after INIT: the size never
    // changes afterwards, so the request path stops asking.
    let mut fitted = false;
    loop {
        if slot.waker.is_woken() && control.mode() == Mode::Serving {
            // Woken for a pause or stop that has since ended: clear it (then the
            // mode is read again, so a wake that raced with this is not lost).
            slot.waker.reset()?;
        }
        match control.mode() {
            Mode::Serving if control.take_retirement(slot) => {
                // An extra pool worker no longer needed (`pool.rs`).
                transport.idle(control);
                return Ok(());
            }
            Mode::Serving => {}
            Mode::Paused => {
                // Answers handed over before the pause go out before parking.
                transport.deliver_deferred()?;
                transport.idle(control);
                control.park(slot)?;
                continue;
            }
            Mode::Stopping | Mode::Released => {
                transport.idle(control);
                return Ok(());
            }
        }
        transport.deliver_deferred()?;
        if !fitted {
            fitted = session.init_state().is_some();
            transport.fit(session.read_buffer_size())?;
        }
        let blocking = control.blocking.load(Ordering::Acquire);
        slot.set_phase(if blocking {
            Phase::Blocked
        } else {
            Phase::Waiting
        });
        match transport.receive(slot, blocking)? {
            Event::Request(n) => {
                transport.served(control);
                let Exchange {
                    request,
                    space,
                    sender,
                } = transport.exchange(n);
                let bytes = match request {
                    Ok(b) => b,
                    Err(why) => {
                        session.stats().malformed.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "{}: a request cannot be read ({why}): answering EIO",
                            slot.name
                        );
                        T::finish(sender, n, Some(nix::libc::EIO))?;
                        continue;
                    }
                };
                let accepted = session.accept(bytes);
                slot.enter(accepted.unique(), accepted.opcode().0);
                control.request_entered();
                let outcome = session.call(&accepted, space);
                session.respond(&accepted, &outcome);
                match outcome {
                    Outcome::Reply(parts) => match T::send(sender, n, &parts)
                        .inspect(|_| crate::fault::point("after-reply"))
                    {
                        Ok(Sent::Delivered) => {
                            if !init_replied && session.init_state().is_some() {
                                init_replied = true;
                                control.init_replied.store(true, Ordering::Release);
                            }
                        }
                        Ok(Sent::Gone) => {
                            log::debug!("reply not delivered: the request was interrupted");
                            if let Some(id) = parts.counted() {
                                session.reply_lost(id);
                            }
                        }
                        Ok(Sent::Closed) => {
                            session.shutdown();
                            control.connection_ended();
                            return Ok(());
                        }
                        Err(e) => {
                            log::error!("{}: sending a reply failed: {e}", slot.name);
                            if let Some(id) = parts.counted() {
                                session.reply_lost(id);
                            }
                        }
                    },
                    Outcome::Retrieved {
                        notify_unique,
                        offset,
                        data,
                    } => {
                        control
                            .retrieve_waiters
                            .deliver(notify_unique, offset, data);
                        T::finish(sender, n, None)?;
                    }
                    Outcome::NoReply => T::finish(sender, n, None)?,
                    // Sent later, by the thread that answers it.
                    Outcome::Deferred => {}
                    Outcome::Dropped(e) => {
                        log::warn!("{}: dropped a request: {e}", slot.name);
                        T::finish(sender, n, Some(nix::libc::EIO))?;
                    }
                }
                transport.flush()?;
            }
            Event::Woken => {}
            Event::ReplyLost(id) => session.reply_lost(id),
            Event::Closed => {
                log::info!("{}: the connection ended", slot.name);
                transport.idle(control);
                session.shutdown();
                control.connection_ended();
                return Ok(());
            }
        }
        if session.is_destroyed() {
            transport.idle(control);
            control.connection_ended();
            return Ok(());
        }
    }
}
