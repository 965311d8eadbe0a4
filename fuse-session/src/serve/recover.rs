//! After a crash: getting the requests the dead process had read but not answered
//! answered, by `NOTIFY_RESEND` where the kernel has it, else from the request
//! slots ([`crate::dev::slots`]). One step for every daemon:
//! [`Server::recover_requests`], before the workers read.
use std::io::IoSlice;

use fuse_wire::{abi, InitFlags, Opcode};

use crate::dev::slots::HeldRequest;
use crate::dev::{Channel, RequestSlots, WriteOutcome};
use crate::fs::Filesystem;
use crate::proto::{Outcome, ReplySpace, Session, OUT_HEADER_SIZE};
use crate::serve::{ServeError, Server};

/// How [`Server::recover_requests`] recovered the requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestRecovery {
    /// `NOTIFY_RESEND` was sent: the kernel queues them again (bit 63 set).
    Resent,
    /// They were answered from the request slots, with their original uniques.
    Slots,
    /// Neither was possible (no `FUSE_HAS_RESEND` and no slots): the requests the
    /// dead process read stay unanswered.
    Nothing,
}

/// What [`Server::recover_requests`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveredRequests {
    /// Which way.
    pub how: RequestRecovery,
    /// Requests found held in the slots, unanswered.
    pub held: usize,
    /// Replies the kernel took.
    pub answered: usize,
    /// Replies the kernel refused (`ENOENT`): the dead process had answered them
    /// after all (and died before recording it in its slot), or they were
    /// interrupted. A lookup such a reply counted is taken back.
    pub refused: usize,
    /// FORGET/BATCH_FORGET applied now (the dead process had not).
    pub forgets_applied: usize,
    /// FORGET/BATCH_FORGET dropped: applied before, or not known to be
    /// ([`StepHook::applied_before`](crate::StepHook::applied_before)).
    pub forgets_dropped: usize,
    /// INTERRUPT and NOTIFY_REPLY messages dropped (nothing waits for them).
    pub dropped: usize,
    /// Slots whose contents were invalid, skipped (logged).
    pub damaged: usize,
}

impl RecoveredRequests {
    fn new(how: RequestRecovery) -> Self {
        RecoveredRequests {
            how,
            held: 0,
            answered: 0,
            refused: 0,
            forgets_applied: 0,
            forgets_dropped: 0,
            dropped: 0,
            damaged: 0,
        }
    }
}

impl<F: Filesystem> Server<F> {
    /// Whether the kernel offered `FUSE_HAS_RESEND` (false before INIT).
    pub fn kernel_has_resend(&self) -> bool {
        kernel_has_resend(&self.session)
    }

    /// A restored session's recovery of the requests the dead process had read but
    /// not answered. Call it once, before [`Server::spawn`] (no worker may read
    /// yet), after the session's journal, if any, was resumed (replies go through
    /// the session's hook).
    ///
    /// - With `allow_resend` and a kernel that has `FUSE_HAS_RESEND`: sends
    ///   `NOTIFY_RESEND`; the kernel queues those requests again (bit 63 set) for
    ///   the workers. The slots, if given, are marked answered.
    /// - Otherwise, with `slots` (the dead process's, from the fd store): every
    ///   request a slot holds unanswered is run through the session as a resent
    ///   request (bit 63 set, so a journal answers it from its recorded reply
    ///   instead of running it twice) and answered with its original unique, which
    ///   the kernel still has in its processing list. A reply the kernel refuses
    ///   (`ENOENT`: the dead process had answered it) takes back the lookup it
    ///   counted, as any lost reply does: the session's counts may stay above the
    ///   kernel's after a crash, never below. FORGET/BATCH_FORGET are applied only if
    ///   the hook says the dead process had not ([`crate::StepHook::applied_before`]);
    ///   INTERRUPT and NOTIFY_REPLY are dropped. Each slot is marked answered after.
    /// - Otherwise nothing can be done (logged).
    ///
    /// A request the filesystem defers ([`crate::RequestContext::defer`]) is not
    /// answered here (its deferred reply would carry bit 63 and be refused): daemons
    /// that defer should rely on `NOTIFY_RESEND`.
    ///
    /// A slot file that cannot be read is logged and leaves those requests
    /// unanswered ([`RequestRecovery::Nothing`]): the mount is worth more.
    ///
    /// # Errors
    /// Writing to the device failing (other than a refused reply), or the
    /// connection having ended.
    pub fn recover_requests(
        &self,
        slots: Option<&RequestSlots>,
        allow_resend: bool,
    ) -> Result<RecoveredRequests, ServeError> {
        recover_requests(&self.session, &self.mount.channel()?, slots, allow_resend)
    }
}

/// Whether the kernel offered `session` `FUSE_HAS_RESEND` (false before INIT).
pub fn kernel_has_resend<F: Filesystem>(session: &Session<F>) -> bool {
    session
        .init_state()
        .is_some_and(|i| i.offer.init_flags().contains(InitFlags::HAS_RESEND))
}

/// [`Server::recover_requests`] for a session and a device descriptor of its
/// connection held apart (no worker may read the device meanwhile).
///
/// # Errors
/// As [`Server::recover_requests`].
pub fn recover_requests<F: Filesystem>(
    session: &Session<F>,
    chan: &Channel,
    slots: Option<&RequestSlots>,
    allow_resend: bool,
) -> Result<RecoveredRequests, ServeError> {
    if allow_resend && kernel_has_resend(session) {
        send_resend(session, chan)?;
        crate::trace::phase("NOTIFY_RESEND sent");
        let mut report = RecoveredRequests::new(RequestRecovery::Resent);
        if let Some(slots) = slots {
            // The kernel resends what they hold: a later recovery must not answer
            // those again from the slots.
            match slots.scan() {
                Ok(scan) => {
                    report.held = scan.held.len();
                    for h in &scan.held {
                        mark(slots, h);
                    }
                }
                Err(e) => log::error!("the request slots cannot be read: {e}"),
            }
        }
        return Ok(report);
    }
    let Some(slots) = slots else {
        log::warn!(
            "the kernel cannot resend requests (no FUSE_HAS_RESEND, or not asked to) and \
             there are no request slots: the requests the dead process had read stay \
             unanswered"
        );
        return Ok(RecoveredRequests::new(RequestRecovery::Nothing));
    };
    let scan = match slots.scan() {
        Ok(scan) => scan,
        Err(e) => {
            // Serving on beats giving up the mount: only the requests in flight
            // are lost (their callers wait).
            log::error!(
                "the request slots cannot be read ({e}): the requests the dead process had \
                 read stay unanswered"
            );
            return Ok(RecoveredRequests::new(RequestRecovery::Nothing));
        }
    };
    let mut report = RecoveredRequests::new(RequestRecovery::Slots);
    report.held = scan.held.len();
    report.damaged = scan.damaged.len();
    for (i, why) in &scan.damaged {
        log::warn!("request slot {i} skipped: {why}");
    }
    let mut out = vec![0u8; session.reply_buffer_size()];
    for held in &scan.held {
        let done = answer_held(session, chan, held, &mut out)?;
        log::info!(
            "request slot {}: {:?} unique={:#x}: {done:?}",
            held.slot,
            Opcode(held.opcode),
            held.unique
        );
        match done {
            Done::Answered => report.answered += 1,
            Done::Refused => report.refused += 1,
            Done::ForgetApplied => report.forgets_applied += 1,
            Done::ForgetDropped => report.forgets_dropped += 1,
            Done::Dropped => report.dropped += 1,
            Done::Unreadable => report.damaged += 1,
            Done::Other => {}
        }
        mark(slots, held);
    }
    if report.held > 0 || report.damaged > 0 {
        log::warn!("requests held in the slots at the crash: {report:?}");
    }
    Ok(report)
}

/// Marks `held` answered in its slot. A failure is logged, not returned: the
/// worst it allows is a later recovery answering the request again, which the
/// kernel refuses.
fn mark(slots: &RequestSlots, held: &HeldRequest) {
    if let Err(e) = slots.mark_answered(held.slot, held.unique) {
        log::error!("request slot {}: cannot mark it answered: {e}", held.slot);
    }
}

/// Sends NOTIFY_RESEND on `chan`.
fn send_resend<F: Filesystem>(session: &Session<F>, chan: &Channel) -> Result<(), ServeError> {
    let mut buf = [0u8; 64];
    let n = fuse_wire::notify::resend(&mut buf, &session.negotiated())
        .map_err(|e| std::io::Error::other(format!("encode NOTIFY_RESEND: {e}")))?;
    match chan.write(&[IoSlice::new(&buf[..n])])? {
        WriteOutcome::Closed => Err(ServeError::Io(std::io::Error::other(
            "NOTIFY_RESEND: the connection has ended",
        ))),
        WriteOutcome::Delivered | WriteOutcome::Gone => Ok(()),
    }
}

/// What became of one held request.
#[derive(Debug)]
enum Done {
    /// The kernel took the reply.
    Answered,
    /// The kernel refused it (answered before the crash, or interrupted).
    Refused,
    ForgetApplied,
    /// Applied before, or not known to have not been.
    ForgetDropped,
    /// INTERRUPT or NOTIFY_REPLY.
    Dropped,
    /// Its header does not parse.
    Unreadable,
    /// No reply (deferred by the filesystem, or dropped by the session: logged).
    Other,
}

/// Runs one held request through the session and answers it with its original
/// unique (see [`Server::recover_requests`]).
fn answer_held<F: Filesystem>(
    session: &Session<F>,
    chan: &Channel,
    held: &HeldRequest,
    out: &mut [u8],
) -> Result<Done, ServeError> {
    let opcode = Opcode(held.opcode);
    if matches!(opcode, Opcode::INTERRUPT | Opcode::NOTIFY_REPLY) {
        return Ok(Done::Dropped);
    }
    // Presented as the kernel would resend it (bit 63), so that a journal answers
    // it from its recorded reply.
    let mut bytes = held.bytes.clone();
    let resent = held.unique | abi::FUSE_UNIQUE_RESEND;
    if let Some(u) = bytes.get_mut(8..16) {
        u.copy_from_slice(&resent.to_ne_bytes());
    }
    let accepted = session.accept(&bytes);
    if !accepted.has_header() {
        return Ok(Done::Unreadable);
    }
    if opcode.is_unanswered() {
        // FORGET or BATCH_FORGET: applied only if known not to have been.
        if session.applied_before(&accepted) == Some(false) {
            let outcome = session.call(&accepted, ReplySpace::new(out));
            session.respond(&accepted, &outcome);
            return Ok(Done::ForgetApplied);
        }
        // Not run: the hook still sees it end (a journal releases what it took
        // for it in `accepted`).
        session.respond(&accepted, &Outcome::NoReply);
        return Ok(Done::ForgetDropped);
    }
    let outcome = session.call(&accepted, ReplySpace::new(out));
    session.respond(&accepted, &outcome);
    let parts = match &outcome {
        Outcome::Reply(parts) => parts,
        Outcome::Deferred => {
            log::warn!(
                "request slot {}: {opcode:?} unique={:#x} was deferred by the filesystem: \
                 its reply cannot reach the kernel",
                held.slot,
                held.unique
            );
            return Ok(Done::Other);
        }
        Outcome::Dropped(e) => {
            log::warn!("request slot {}: dropped: {e}", held.slot);
            return Ok(Done::Other);
        }
        Outcome::NoReply | Outcome::Retrieved { .. } => return Ok(Done::Other),
    };
    // The original unique: the kernel knows the request by it.
    let mut header = *parts.header();
    header[8..16].copy_from_slice(&held.unique.to_ne_bytes());
    let body = match parts.header_and_body() {
        Some(whole) => whole.get(OUT_HEADER_SIZE..).unwrap_or(&[]),
        None => parts.body(),
    };
    let iov = [
        IoSlice::new(&header),
        IoSlice::new(body),
        IoSlice::new(parts.data()),
    ];
    match chan.write(&iov) {
        Ok(WriteOutcome::Delivered) => Ok(Done::Answered),
        Ok(WriteOutcome::Gone) => {
            // Its re-run counted a lookup the kernel never will: take it back.
            if let Some(id) = parts.counted() {
                session.reply_lost(id);
            }
            Ok(Done::Refused)
        }
        Ok(WriteOutcome::Closed) => Err(ServeError::Io(std::io::Error::other(
            "the connection ended while answering held requests",
        ))),
        Err(e) => {
            log::error!(
                "request slot {}: {opcode:?} unique={:#x}: the reply failed: {e}",
                held.slot,
                held.unique
            );
            if let Some(id) = parts.counted() {
                session.reply_lost(id);
            }
            Ok(Done::Other)
        }
    }
}

/// What [`Server::recover_ring`] found in the ring entries of the dead process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveredRing {
    /// Entries that held an unanswered request, now answered in the entry (the
    /// reply is committed when the queues start).
    pub requests: usize,
    /// Of those, answered from a recorded reply because the request's payload was
    /// overwritten by its reply before it could be saved.
    pub payload_lost: usize,
    /// Entries that held a complete reply, committed again as they are (the
    /// kernel refuses those it already had: exactly once).
    pub replies: usize,
    /// Entries holding nothing, registered anew.
    pub empty: usize,
    /// Slots of the dead process left free: it held nothing there, and the queue
    /// has its depth of entries without them (a process that adopted entries in
    /// a live handoff served on more slots than its depth; a successor after a
    /// crash gives the extra ones back, so that handoffs and crashes never run a
    /// queue out of free slots).
    pub reclaimed: usize,
    /// Entries whose bytes did not add up (logged): the request they name is
    /// answered `EIO`.
    pub damaged: usize,
    /// Requests the filesystem deferred or dropped: their entries are registered
    /// anew and their callers get `ECONNABORTED` at unmount (logged).
    pub unanswered: usize,
}

/// The recovery plan of a ring area: per queue, the slots it serves and what it
/// does with each when it starts.
pub(crate) type RingPlan = Vec<Vec<(usize, crate::dev::uring::EntryStart)>>;

/// Reads every entry of `area` (the dead process's, mapped back at its address)
/// and answers the requests they hold through `session` (as resent requests, so
/// that a journal answers those whose reply it recorded), writing each reply into
/// its entry. Returns what each queue must do with each entry when it starts.
pub(crate) fn recover_ring<F: Filesystem>(
    session: &Session<F>,
    area: &crate::dev::RingArea,
    live: bool,
) -> (RecoveredRing, RingPlan) {
    use crate::dev::ring_area::EntryHolds;
    use crate::dev::uring::EntryStart;
    let geo = area.geometry();
    let mut report = RecoveredRing::default();
    let mut out = vec![0u8; session.reply_buffer_size()];
    let mut plan = Vec::with_capacity(geo.queues as usize);
    // The entries of the process before this one (generation - 1).
    let previous = area.generation().saturating_sub(1);
    for qid in 0..geo.queues as usize {
        let mut slots = area.slots_of(qid, previous);
        if !live && previous > 1 {
            // After a crash: the entries of the process before the dead one that
            // still hold a request or a reply. A live successor that died while
            // adopting them (after its predecessor released its rings, before
            // each was retagged) left them so; any other entry of that process
            // was retagged when adopted, or cancelled with its ring holding
            // nothing new. Committing a reply again that the kernel had is
            // refused harmlessly.
            slots.extend(area.slots_of(qid, previous - 1).into_iter().filter(|&j| {
                matches!(
                    area.inspect(qid, j),
                    EntryHolds::Request { .. } | EntryHolds::Reply(_)
                )
            }));
        }
        let mut q = Vec::with_capacity(slots.len());
        // After a crash: the slots that held nothing, registered below only as
        // far as the queue needs them to have `depth` entries.
        let mut empty = Vec::new();
        for j in slots {
            let start = match area.inspect(qid, j) {
                // A live predecessor's empty entries were cancelled with its
                // rings. A reply it wrote may still sit unsubmitted in its
                // submission queue when it closed the ring: committed again below
                // (the kernel refuses it if it had it: exactly once).
                EntryHolds::Nothing if live => continue,
                EntryHolds::Nothing => {
                    empty.push(j);
                    continue;
                }
                EntryHolds::Reply(unique) => {
                    log::info!(
                        "ring queue {qid} entry {j}: reply to unique={unique:#x} committed again"
                    );
                    report.replies += 1;
                    EntryStart::Commit(unique, None)
                }
                EntryHolds::Damaged(why, unique) => {
                    // The kernel may hold that request in the entry: an error
                    // reply ends it (refused harmlessly if it does not).
                    log::warn!(
                        "ring queue {qid} entry {j}: damaged ({why}): unique={unique:#x} \
                         answered EIO"
                    );
                    report.damaged += 1;
                    area.write_reply(qid, j, -nix::libc::EIO, unique, &[]);
                    EntryStart::Commit(unique, None)
                }
                EntryHolds::Request {
                    unique,
                    mut bytes,
                    payload_lost,
                } => {
                    let opcode = Opcode(u32::from_ne_bytes(
                        bytes[4..8].try_into().unwrap_or_default(),
                    ));
                    if payload_lost {
                        // Only requests with a payload too large for the save
                        // area lose it (WRITE, SETXATTR, SYMLINK), after their
                        // reply was recorded.
                        report.payload_lost += 1;
                        log::warn!(
                            "ring queue {qid} entry {j}: {opcode:?} unique={unique:#x}: its \
                             payload was overwritten; answered from its recorded reply"
                        );
                    }
                    let resent = unique | abi::FUSE_UNIQUE_RESEND;
                    bytes[8..16].copy_from_slice(&resent.to_ne_bytes());
                    let accepted = session.accept(&bytes);
                    let outcome = session.call(&accepted, ReplySpace::new(&mut out));
                    session.respond(&accepted, &outcome);
                    match &outcome {
                        Outcome::Reply(parts) => {
                            let whole = parts.to_vec();
                            let error = whole.get(4..8).map_or(-nix::libc::EIO, |b| {
                                i32::from_ne_bytes(b.try_into().unwrap_or_default())
                            });
                            let body = whole.get(OUT_HEADER_SIZE..).unwrap_or(&[]);
                            if body.len() > geo.payload_len as usize {
                                area.write_reply(qid, j, -nix::libc::EIO, unique, &[]);
                            } else {
                                area.write_reply(qid, j, error, unique, body);
                            }
                            log::info!(
                                "ring queue {qid} entry {j}: {opcode:?} unique={unique:#x} answered"
                            );
                            report.requests += 1;
                            EntryStart::Commit(unique, parts.counted())
                        }
                        // A request that takes no answer (NOTIFY_REPLY) is ended with
                        // an empty success, as in serving: the entry is adopted.
                        Outcome::NoReply | Outcome::Retrieved { .. } => {
                            area.write_reply(qid, j, 0, unique, &[]);
                            report.requests += 1;
                            EntryStart::Commit(unique, None)
                        }
                        Outcome::Dropped(e) => {
                            log::warn!(
                                "ring queue {qid} entry {j}: {opcode:?} unique={unique:#x}: \
                                 dropped ({e}): answering EIO"
                            );
                            area.write_reply(qid, j, -nix::libc::EIO, unique, &[]);
                            report.requests += 1;
                            EntryStart::Commit(unique, None)
                        }
                        Outcome::Deferred => {
                            log::warn!(
                                "ring queue {qid} entry {j}: {opcode:?} unique={unique:#x} was \
                                 deferred by the filesystem: its reply cannot reach the kernel \
                                 (its caller gets ECONNABORTED at unmount); the entry is \
                                 registered anew"
                            );
                            report.unanswered += 1;
                            if live {
                                continue;
                            }
                            EntryStart::Register
                        }
                    }
                }
            };
            q.push((j, start));
        }
        let need = (geo.depth as usize).saturating_sub(q.len());
        report.empty += need.min(empty.len());
        report.reclaimed += empty.len().saturating_sub(need);
        q.extend(
            empty
                .into_iter()
                .take(need)
                .map(|j| (j, EntryStart::Register)),
        );
        plan.push(q);
    }
    (report, plan)
}

/// How long a live successor waits for the predecessor's available entries to be
/// filled (see [`fill_entries`]) before it falls back to fresh entries on a queue.
const FILL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A live successor, after Commit, before it registers anything: gives every
/// entry the paused predecessor has available a request of its own (a `statfs`
/// of the root from a child process pinned to the queue's CPU, which the
/// predecessor, paused, does not answer), and waits until each of its slots
/// holds a request. Returns, per queue, whether that happened.
///
/// Why: the predecessor's rings are then closed with no entry available, so the
/// kernel cancels none and hands none a request as they close (the `ECANCELED`
/// window of docs/DESIGN.md, "Live handoff over io_uring"); and the successor
/// needs no fresh slots on that queue: it adopts the predecessor's entries, all
/// of which hold a request, and serves on exactly them, so the slots in use do
/// not grow from one handoff to the next. Requests that come meanwhile wait in
/// the kernel's queue and are fetched by the adopting commits. A queue whose CPU
/// cannot be used (no caller can be on it either), or whose entries were not all
/// filled within [`FILL_WAIT`], is served as before: fresh entries first.
///
/// The `statfs` callers are threads of this process waiting on child processes;
/// they end when the adopted entries answer them.
pub(crate) fn fill_entries(root: &std::os::fd::OwnedFd, area: &crate::dev::RingArea) -> Vec<bool> {
    use crate::dev::ring_area::EntryHolds;
    let queues = area.geometry().queues as usize;
    let serving = area.generation().saturating_sub(1);
    let holding = |q: usize, j: usize| matches!(area.inspect(q, j), EntryHolds::Request { .. });
    let mut settled = vec![false; queues];
    let mut filled = vec![false; queues];
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    for (q, done) in settled.iter_mut().enumerate() {
        let slots = area.slots_of(q, serving);
        let pokes = slots.iter().filter(|&&j| !holding(q, j)).count();
        if slots.is_empty() {
            *done = true;
            continue;
        }
        for _ in 0..pokes {
            let fd = match root.try_clone() {
                Ok(f) => f,
                Err(e) => {
                    log::warn!("io_uring queue {q}: cannot fill the predecessor's entries: {e}");
                    *done = true;
                    break;
                }
            };
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fuse-fill-{q}"))
                .spawn(move || {
                    match crate::dev::statfs_in_child_on(std::os::fd::AsFd::as_fd(&fd), q) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                            let _ = tx.send(q);
                        }
                        Err(e) => log::debug!("io_uring queue {q}: a filling statfs: {e}"),
                    }
                });
            if let Err(e) = spawned {
                log::warn!("io_uring queue {q}: cannot fill the predecessor's entries: {e}");
                *done = true;
                break;
            }
        }
    }
    drop(tx);
    let deadline = std::time::Instant::now() + FILL_WAIT;
    loop {
        // A CPU that cannot be used: that queue is served with fresh entries.
        while let Ok(q) = rx.try_recv() {
            settled[q] = true;
        }
        for q in 0..queues {
            if !settled[q] && area.slots_of(q, serving).iter().all(|&j| holding(q, j)) {
                settled[q] = true;
                filled[q] = true;
            }
        }
        if settled.iter().all(|&s| s) {
            break;
        }
        if std::time::Instant::now() > deadline {
            log::warn!(
                "io_uring: the predecessor's entries of queues {:?} were not all filled within \
                 {FILL_WAIT:?}: fresh entries there (a request can fail with ECANCELED as its \
                 rings close)",
                (0..queues).filter(|&q| !settled[q]).collect::<Vec<_>>()
            );
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    filled
}
