//! The three steps of one request — accept, call, respond — and what passes between
//! them.
//!
//! Every transport serves a request the same way:
//!
//! 1. [`Session::accept`] parses the bytes the transport received and counts the
//!    request. The [`StepHook`] sees it here ([`StepHook::accepted`]): "accepted
//!    unique U (opcode, bytes)".
//! 2. [`Session::call`] runs the request: the session's own bookkeeping and the
//!    [`Filesystem`] method. A panic in the filesystem is caught here and answered
//!    `EIO` (see the `# Panics` section of [`Session::call`]).
//! 3. [`Session::respond`] shows the reply to the [`StepHook`]
//!    ([`StepHook::responding`]: "reply for U (parts)") before the transport sends it.
//!
//! A reply is [`ReplyParts`]: the out header (by value), the fixed body and the bulk
//! data (borrowed), so that `/dev/fuse` writes them with one `writev` and
//! fuse-over-io_uring puts the header in its entry's header area and body and data
//! in the payload buffer, each without copying what is already in place
//! ([`ReplySpace::with_data_at`]).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuse_wire::request::{parse_header, Request};
use fuse_wire::{Opcode, ParseError};

use crate::fs::Filesystem;
use crate::proto::defer::ReplySender;
use crate::proto::session::{Session, PAYLOAD_OFFSET};
use crate::types::Errno;

/// Size of the out header (`struct fuse_out_header`).
pub const OUT_HEADER_SIZE: usize = fuse_wire::reply::OUT_HEADER_SIZE;

/// Watches the steps of every request, in one place for every transport: where a
/// write-ahead journal records "accepted" and "answered".
///
/// Both methods run on the worker thread that serves the request, before the
/// transport sends anything: a journal that must be durable before the reply leaves
/// writes from [`StepHook::responding`]. The one exception is a deferred request
/// ([`RequestContext::defer`](crate::RequestContext::defer)): its `responding`
/// runs on the thread that answers it, still before its reply is sent. Both default to doing nothing; the session
/// without a hook (the default) skips them with one branch.
///
/// Guarantees (tested in `tests/fake_kernel.rs`):
/// - [`StepHook::accepted`] is called exactly once for every request whose header
///   parses (a request whose header does not parse cannot be answered and is
///   dropped without a call);
/// - [`StepHook::responding`] is called exactly once for every request that gets a
///   reply — success, error, a body that does not parse, a panic in the
///   filesystem — after `accepted` for it, and never for requests the kernel expects
///   no reply to (FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY);
/// - [`StepHook::unanswered`] is called once for each of those, after it was
///   handled, when the transport finishes it ([`Session::respond`]).
pub trait StepHook: Send + Sync {
    /// A request was accepted: `request.unique()`, `request.opcode()`,
    /// `request.bytes()` are what a journal records.
    fn accepted(&self, request: &Accepted<'_>) {
        let _ = request;
    }

    /// Before the filesystem is called for `request`: a reply already recorded for
    /// it (a request the kernel resent after a crash, whose reply the journal
    /// holds), written into `out`, with its length. The session then sends those
    /// bytes (with `request`'s unique put in their header) instead of calling the
    /// filesystem. The default answers nothing.
    fn recorded_reply(&self, request: &Accepted<'_>, out: &mut [u8]) -> Option<usize> {
        let _ = (request, out);
        None
    }

    /// `reply` is about to be sent for `request`.
    fn responding(&self, request: &Accepted<'_>, reply: &ReplyParts<'_>) {
        let _ = (request, reply);
    }

    /// `request`, one the kernel expects no reply to (FORGET, BATCH_FORGET,
    /// INTERRUPT, NOTIFY_REPLY), has been handled: what it changed (a FORGET's lookup
    /// counts) is in the session now. No [`StepHook::responding`] follows, so a
    /// journal records such changes here; otherwise they would wait for the next
    /// answered request, and a crash before it would lose them. The default does
    /// nothing.
    fn unanswered(&self, request: &Accepted<'_>) {
        let _ = request;
    }

    /// After a crash, for a request that gets no reply (FORGET, BATCH_FORGET) found
    /// unanswered in a request slot ([`crate::dev::slots`]): whether the dead process
    /// had applied it already (`Some(true)`: it is dropped), had not (`Some(false)`:
    /// it is applied now), or unknown (`None`, the default: dropped, since a lookup
    /// count left above the kernel's only keeps a node longer, while one below it
    /// would lose a node the kernel still uses).
    fn applied_before(&self, request: &Accepted<'_>) -> Option<bool> {
        let _ = request;
        None
    }
}

/// A request after [`Session::accept`]: the bytes as received and what parsing made
/// of them.
#[derive(Debug)]
pub struct Accepted<'r> {
    bytes: &'r [u8],
    parsed: Parsed<'r>,
}

#[derive(Debug)]
enum Parsed<'r> {
    /// The whole request parses.
    Request(Request<'r>),
    /// The header parses, the body does not: answered EIO (if it expects a reply).
    Malformed {
        unique: u64,
        opcode: Opcode,
        nodeid: u64,
        error: ParseError,
    },
    /// Not even the header parses: dropped.
    Unreadable(ParseError),
}

impl<'r> Accepted<'r> {
    /// Parses `bytes` as [`Session::accept`] does, without counting or logging
    /// (a deferred reply shows the hook its request again).
    pub(crate) fn reparse(bytes: &'r [u8], proto: &fuse_wire::Negotiated) -> Accepted<'r> {
        let parsed = match fuse_wire::parse(bytes, proto) {
            Ok(r) => Parsed::Request(r),
            Err(error) => match parse_header(bytes) {
                Ok(h) => Parsed::Malformed {
                    unique: h.unique(),
                    opcode: h.opcode(),
                    nodeid: h.nodeid(),
                    error,
                },
                Err(_) => Parsed::Unreadable(error),
            },
        };
        Accepted { bytes, parsed }
    }

    /// The request's bytes as the transport received them (device layout).
    #[inline]
    pub fn bytes(&self) -> &'r [u8] {
        self.bytes
    }

    /// The request's `unique` (0 if its header does not parse).
    #[inline]
    pub fn unique(&self) -> u64 {
        match &self.parsed {
            Parsed::Request(r) => r.unique(),
            Parsed::Malformed { unique, .. } => *unique,
            Parsed::Unreadable(_) => 0,
        }
    }

    /// The request's opcode (`Opcode(0)` if its header does not parse).
    #[inline]
    pub fn opcode(&self) -> Opcode {
        match &self.parsed {
            Parsed::Request(r) => r.opcode(),
            Parsed::Malformed { opcode, .. } => *opcode,
            Parsed::Unreadable(_) => Opcode(0),
        }
    }

    /// The nodeid the request is about (0 if its header does not parse).
    pub fn nodeid(&self) -> u64 {
        match &self.parsed {
            Parsed::Request(r) => r.nodeid(),
            Parsed::Malformed { nodeid, .. } => *nodeid,
            Parsed::Unreadable(_) => 0,
        }
    }

    /// The parsed request, if the whole request parses.
    pub fn request(&self) -> Option<&Request<'r>> {
        match &self.parsed {
            Parsed::Request(r) => Some(r),
            _ => None,
        }
    }

    /// Why the request does not parse, if it does not.
    pub fn parse_error(&self) -> Option<ParseError> {
        match &self.parsed {
            Parsed::Request(_) => None,
            Parsed::Malformed { error, .. } | Parsed::Unreadable(error) => Some(*error),
        }
    }

    /// True if the header parses (the request can be answered, and the hook saw it).
    pub fn has_header(&self) -> bool {
        !matches!(self.parsed, Parsed::Unreadable(_))
    }

    /// True if the kernel waits for a reply to this request (false for FORGET,
    /// BATCH_FORGET, INTERRUPT, NOTIFY_REPLY and unreadable requests).
    pub fn expects_reply(&self) -> bool {
        self.has_header() && !self.opcode().is_unanswered()
    }
}

/// One reply in parts: out header, fixed body, bulk data.
///
/// Written to the kernel as `header ++ body ++ data` (one message). `body` and
/// `data` borrow the worker's reply space (or, for `data`, memory the filesystem
/// lent with [`ReadBuf::set`](crate::ReadBuf::set)).
#[derive(Clone, Copy, Debug)]
pub struct ReplyParts<'a> {
    header: [u8; OUT_HEADER_SIZE],
    body: &'a [u8],
    data: &'a [u8],
    counted: Option<u64>,
    /// Header and body as the encoder wrote them, one slice (when it did).
    message: Option<&'a [u8]>,
}

impl<'a> ReplyParts<'a> {
    /// A reply whose header and body are `message` (as the wire encoders write it),
    /// `counted` as in [`ReplyParts::counted`].
    ///
    /// `message` must hold at least the out header; a shorter one gives an `EIO`
    /// reply for `unique`.
    #[inline]
    pub(crate) fn encoded(message: &'a [u8], unique: u64, counted: Option<u64>) -> Self {
        match message.split_first_chunk::<OUT_HEADER_SIZE>() {
            Some((header, body)) => ReplyParts {
                header: *header,
                body,
                data: &[],
                counted,
                message: Some(message),
            },
            None => ReplyParts::error(unique, Errno::EIO),
        }
    }

    /// A success header for `data` (READ): no fixed body.
    #[inline]
    pub(crate) fn with_data(header: [u8; OUT_HEADER_SIZE], data: &'a [u8]) -> Self {
        ReplyParts {
            header,
            body: &[],
            data,
            counted: None,
            message: None,
        }
    }

    /// An error reply (a bare header). `errno` out of 1..=511 is sent as `EIO`.
    pub fn error(unique: u64, errno: Errno) -> Self {
        let errno = if (1..=fuse_wire::reply::ERRNO_MAX).contains(&errno.0) {
            errno.0
        } else {
            Errno::EIO.0
        };
        // The header is valid for every unique but 0, which no request has.
        let header =
            fuse_wire::reply::error_header(unique.max(1), errno).unwrap_or([0; OUT_HEADER_SIZE]);
        ReplyParts {
            header,
            body: &[],
            data: &[],
            counted: None,
            message: None,
        }
    }

    /// The out header (`struct fuse_out_header`: length, error, unique).
    #[inline]
    pub fn header(&self) -> &[u8; OUT_HEADER_SIZE] {
        &self.header
    }

    /// The fixed body (the op's reply struct, directory entries, xattr bytes ...).
    #[inline]
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Header and body as one slice, when the encoder wrote them together (the
    /// header there is the same as [`ReplyParts::header`]): a transport that
    /// gathers the parts (`writev`) sends one segment less, and the kernel pins
    /// one user page less per reply.
    #[inline]
    pub fn header_and_body(&self) -> Option<&'a [u8]> {
        self.message
    }

    /// The bulk data (READ), possibly lent by the filesystem.
    #[inline]
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The whole message's length: header, body and data.
    #[inline]
    pub fn len(&self) -> usize {
        OUT_HEADER_SIZE + self.body.len() + self.data.len()
    }

    /// Never true: a reply has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `unique` the reply answers.
    #[inline]
    pub fn unique(&self) -> u64 {
        u64::from_ne_bytes(self.header[8..16].try_into().unwrap_or_default())
    }

    /// The error (0 or a negative errno) in the header.
    #[inline]
    pub fn error_code(&self) -> i32 {
        i32::from_ne_bytes(self.header[4..8].try_into().unwrap_or_default())
    }

    /// A nodeid whose lookup this reply counted: if the reply cannot be delivered,
    /// call [`Session::reply_lost`] with it.
    #[inline]
    pub fn counted(&self) -> Option<u64> {
        self.counted
    }

    /// The message as one contiguous `Vec` (tests, fake kernels).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.header);
        v.extend_from_slice(self.body);
        v.extend_from_slice(self.data);
        v
    }
}

/// The outcome of a request: what the transport does next.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome<'a> {
    /// Send this reply.
    Reply(ReplyParts<'a>),
    /// Nothing to send (FORGET, BATCH_FORGET, INTERRUPT, a NOTIFY_REPLY nobody
    /// waits for).
    NoReply,
    /// The filesystem deferred the answer ([`RequestContext::defer`](crate::RequestContext::defer)):
    /// nothing to send now. The answer goes through the [`ReplySender`] the
    /// reply space named ([`ReplySpace::deferring`]), with the tag given there;
    /// the request (and, with fuse-over-io_uring, its entry) stays open until then.
    Deferred,
    /// Nothing to send; the kernel answered the NOTIFY_RETRIEVE `notify_unique`
    /// ([`Session::begin_retrieve`]) with `data`, cached at `offset`: hand it to
    /// whoever waits for it.
    Retrieved {
        /// The retrieve's notify unique.
        notify_unique: u64,
        /// Where the data starts in the file.
        offset: u64,
        /// The cached data (empty if nothing was cached).
        data: &'a [u8],
    },
    /// The header could not be parsed: nothing can be answered. Log and go on.
    Dropped(ParseError),
}

/// Where [`Session::call`] encodes a reply: the worker's reply buffer and the
/// offset at which a READ's data goes.
pub struct ReplySpace<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) data_at: usize,
    pub(crate) data_in_space: bool,
    pub(crate) defer: Option<(&'a Arc<dyn ReplySender>, usize)>,
}

impl std::fmt::Debug for ReplySpace<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplySpace")
            .field("len", &self.buf.len())
            .field("data_at", &self.data_at)
            .field("data_in_space", &self.data_in_space)
            .field("deferring", &self.defer.map(|(_, tag)| tag))
            .finish()
    }
}

impl<'a> ReplySpace<'a> {
    /// `buf`, with READ data at [`PAYLOAD_OFFSET`] (page-aligned when `buf` is):
    /// for transports that send the parts with `writev`. `buf` should have
    /// [`Session::reply_buffer_size`] bytes; a smaller one makes READs fail `EIO`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        ReplySpace {
            buf,
            data_at: PAYLOAD_OFFSET,
            data_in_space: false,
            defer: None,
        }
    }

    /// `buf`, with READ data at `data_at`. fuse-over-io_uring passes its entry's
    /// buffer from [`OUT_HEADER_SIZE`] bytes before the payload buffer, with
    /// `data_at` = [`OUT_HEADER_SIZE`]: every body and every READ's data then lands
    /// at the start of the payload buffer, where the kernel reads it.
    pub fn with_data_at(buf: &'a mut [u8], data_at: usize) -> Self {
        ReplySpace {
            buf,
            data_at,
            data_in_space: false,
            defer: None,
        }
    }

    /// Makes every part of the reply lie in this space: data the filesystem lent
    /// ([`ReadBuf::set`](crate::ReadBuf::set)) is copied to `data_at` (the one copy
    /// a transport with fixed buffers cannot avoid), so that the transport can
    /// place the parts by their offsets.
    pub fn data_in_space(mut self) -> Self {
        self.data_in_space = true;
        self
    }

    /// Lets the filesystem defer this request
    /// ([`RequestContext::defer`](crate::RequestContext::defer)): its answer will
    /// be sent later, from the thread that gives it, through `sender` with `tag`
    /// (the transport's name for the request, e.g. its ring entry). Without this,
    /// requests cannot be deferred.
    pub fn deferring(mut self, sender: &'a Arc<dyn ReplySender>, tag: usize) -> Self {
        self.defer = Some((sender, tag));
        self
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

impl<F: Filesystem> Session<F> {
    /// Step 1: accepts the bytes of one request as the transport received them
    /// (device layout: `fuse_in_header`, op struct, further arguments) and counts it.
    /// Calls [`StepHook::accepted`] if the header parses.
    pub fn accept<'r>(&self, bytes: &'r [u8]) -> Accepted<'r> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let parsed = match fuse_wire::parse(bytes, &self.negotiated()) {
            Ok(r) => Parsed::Request(r),
            Err(error) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                match parse_header(bytes) {
                    Ok(h) => {
                        log::warn!(
                            "{} unique={}: malformed body: {error}",
                            h.opcode(),
                            h.unique()
                        );
                        Parsed::Malformed {
                            unique: h.unique(),
                            opcode: h.opcode(),
                            nodeid: h.nodeid(),
                            error,
                        }
                    }
                    Err(_) => {
                        log::warn!("dropping a request whose header does not parse: {error}");
                        Parsed::Unreadable(error)
                    }
                }
            }
        };
        let accepted = Accepted { bytes, parsed };
        if let Some(hook) = &self.hook {
            if accepted.has_header() {
                hook.accepted(&accepted);
            }
        }
        crate::fault::point("after-accept");
        accepted
    }

    /// Step 2: runs an accepted request — the session's bookkeeping and the
    /// filesystem's method — and encodes its reply into `space`.
    ///
    /// Every request whose header parses is answered exactly once (except those the
    /// kernel never expects an answer to: FORGET, BATCH_FORGET, INTERRUPT,
    /// NOTIFY_REPLY). A body that does not parse is answered EIO; an unknown opcode
    /// ENOSYS; a request before INIT, EIO.
    ///
    /// # Panics
    /// Never because of the filesystem: a panic in one of its methods is caught
    /// here, logged at error level with the request's opcode, unique and nodeid, and
    /// answered `EIO`; the worker goes on serving. This is sound for the session's
    /// tables because the session changes them only after a filesystem method
    /// returns (a lookup is counted, a handle stored, once the method gave the node
    /// or handle), with one exception handled explicitly: READDIRPLUS counts each
    /// entry as the filesystem adds it, and a panic there takes those counts back
    /// before the request is answered. Locks are never held across a filesystem
    /// call, so none is left poisoned (and a poisoned one would be taken anyway).
    /// The filesystem's own state is its business: a panicking method may have left
    /// it half-updated, which is why the panic is logged loudly.
    pub fn call<'a>(&'a self, request: &Accepted<'a>, space: ReplySpace<'a>) -> Outcome<'a> {
        let unique = request.unique();
        let ReplySpace {
            buf,
            data_at,
            data_in_space,
            defer,
        } = space;
        // Set once the filesystem took a deferred token.
        let taken = AtomicBool::new(false);
        let taken = &taken;
        let bytes = request.bytes;
        let req = match &request.parsed {
            Parsed::Request(r) => r,
            Parsed::Malformed { opcode, .. } => {
                if opcode.is_unanswered() {
                    return Outcome::NoReply;
                }
                return Outcome::Reply(self.error_parts(unique, Errno::EIO));
            }
            Parsed::Unreadable(e) => return Outcome::Dropped(*e),
        };
        if let Some(hook) = &self.hook {
            if let Some(n) = hook.recorded_reply(request, buf) {
                let buf: &'a mut [u8] = buf;
                let n = n.min(buf.len());
                if let Some(at) = buf.get_mut(8..16).filter(|_| n >= OUT_HEADER_SIZE) {
                    at.copy_from_slice(&unique.to_ne_bytes());
                }
                let buf: &'a [u8] = buf;
                return Outcome::Reply(ReplyParts::encoded(&buf[..n], unique, None));
            }
        }
        match catch_unwind(AssertUnwindSafe(move || {
            // Moves the `&mut` into the call (a plain argument would reborrow it and
            // make the closure FnMut, whose result could not borrow it).
            let buf = std::convert::identity(buf);
            self.run(req, buf, data_at, data_in_space, defer, bytes, taken)
        })) {
            Ok(outcome) => outcome,
            Err(_) if taken.load(Ordering::Acquire) => {
                // The token answers (dropped in the unwinding: EIO).
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "the filesystem panicked in {} (unique={unique}) after deferring it",
                    req.opcode()
                );
                Outcome::Deferred
            }
            Err(payload) => {
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                self.end(unique);
                log::error!(
                    "the filesystem panicked in {} (unique={unique}, nodeid={}): {}; answering EIO",
                    req.opcode(),
                    req.nodeid(),
                    panic_message(&*payload)
                );
                if req.opcode().is_unanswered() {
                    Outcome::NoReply
                } else {
                    Outcome::Reply(self.error_parts(unique, Errno::EIO))
                }
            }
        }
    }

    /// Step 3: the outcome is final; [`StepHook::responding`] sees its reply (if
    /// it has one) before the transport sends it, [`StepHook::unanswered`] a
    /// request the kernel expects no reply to.
    ///
    /// Fault points (`crate::fault`): `after-call` before the hook sees the
    /// reply, `after-record` after.
    #[inline]
    pub fn respond(&self, request: &Accepted<'_>, outcome: &Outcome<'_>) {
        crate::fault::point("after-call");
        match (&self.hook, outcome) {
            (Some(hook), Outcome::Reply(parts)) => hook.responding(request, parts),
            (Some(hook), Outcome::NoReply) if request.has_header() => hook.unanswered(request),
            _ => {}
        }
        crate::fault::point("after-record");
    }

    /// Asks the hook ([`StepHook::applied_before`]) whether a request found in a
    /// request slot after a crash was applied by the dead process; `None` without a
    /// hook.
    pub fn applied_before(&self, request: &Accepted<'_>) -> Option<bool> {
        self.hook.as_ref().and_then(|h| h.applied_before(request))
    }

    /// The three steps at once: [`Session::accept`], [`Session::call`] with
    /// [`ReplySpace::new`]`(out)`, [`Session::respond`]. `out` should have
    /// [`Session::reply_buffer_size`] bytes (page-aligned for best speed).
    pub fn handle<'a>(&'a self, request: &'a [u8], out: &'a mut [u8]) -> Outcome<'a> {
        let accepted = self.accept(request);
        let outcome = self.call(&accepted, ReplySpace::new(out));
        self.respond(&accepted, &outcome);
        outcome
    }

    /// An error reply, counted.
    pub(crate) fn error_parts(&self, unique: u64, errno: Errno) -> ReplyParts<'static> {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        log::debug!("-> unique={unique} error {errno}");
        ReplyParts::error(unique, errno)
    }
}
