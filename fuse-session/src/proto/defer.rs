//! Deferred replies: a request the filesystem answers later, from any thread.
//!
//! A [`Filesystem`](crate::Filesystem) method that cannot answer at once (a SETLKW
//! that must wait for a lock, a READ from a slow backend) takes a
//! [`DeferredReply`] from its [`RequestContext`](crate::RequestContext)
//! ([`RequestContext::defer`](crate::RequestContext::defer)) and returns; the
//! worker goes on serving other requests. Whoever holds the token answers it once,
//! from any thread ([`DeferredReply::reply`], [`DeferredReply::error`]); a token
//! dropped unanswered answers `EIO`, so no request waits forever.
//!
//! The answer goes through the same respond step as a synchronous one: the
//! [`StepHook`] sees it ([`StepHook::responding`], on the answering thread), then
//! the transport's [`ReplySender`] sends it. Which operations can be deferred, and
//! with which answer type, is [`DeferredValue`]'s list: those whose reply needs no
//! session bookkeeping (no lookup to count, no handle to store).
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use fuse_wire::{reply, Negotiated, Opcode};

use crate::proto::session::lock;
use crate::proto::step::{Accepted, ReplyParts, StepHook};
use crate::types::Errno;

/// Sends the replies of deferred requests: what a transport gives the session
/// ([`ReplySpace::deferring`](crate::ReplySpace::deferring)) so that a request
/// answered later, on any thread, reaches the kernel.
pub trait ReplySender: Send + Sync {
    /// Sends `reply`, the answer to the request the transport tagged `tag` when it
    /// lent the reply space. Called once per deferred request, on the thread that
    /// answered it, after [`StepHook::responding`]. Errors are the sender's to log:
    /// the request is answered as far as the session is concerned.
    fn send_deferred(&self, tag: usize, reply: &ReplyParts<'_>);
}

/// The answer types of deferrable operations (sealed).
///
/// | type | operations |
/// |---|---|
/// | `()` | SETLK, SETLKW, FSYNC, FSYNCDIR, FLUSH, FALLOCATE, ACCESS, SETXATTR, REMOVEXATTR |
/// | `u32` (bytes written) | WRITE |
/// | `Vec<u8>` (the data, cut to the requested size) | READ |
pub trait DeferredValue: sealed::Sealed + Send + 'static {
    /// True if a request with `opcode` is answered with this type.
    fn answers(opcode: Opcode) -> bool;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl Sealed for u32 {}
    impl Sealed for Vec<u8> {}
}

impl DeferredValue for () {
    fn answers(opcode: Opcode) -> bool {
        matches!(
            opcode,
            Opcode::SETLK
                | Opcode::SETLKW
                | Opcode::FSYNC
                | Opcode::FSYNCDIR
                | Opcode::FLUSH
                | Opcode::FALLOCATE
                | Opcode::ACCESS
                | Opcode::SETXATTR
                | Opcode::REMOVEXATTR
        )
    }
}

impl DeferredValue for u32 {
    fn answers(opcode: Opcode) -> bool {
        opcode == Opcode::WRITE
    }
}

impl DeferredValue for Vec<u8> {
    fn answers(opcode: Opcode) -> bool {
        opcode == Opcode::READ
    }
}

/// Bookkeeping the session shares with its deferred tokens: the in-flight table
/// (interrupt flags) and the deferred requests not yet answered.
#[derive(Debug, Default)]
pub(crate) struct DeferShared {
    /// Requests running or deferred, with their interrupt flags.
    pub(crate) inflight: Mutex<InFlight>,
    /// Deferred requests not yet answered: unique → opcode.
    outstanding: Mutex<BTreeMap<u64, Opcode>>,
    answered: Condvar,
}

/// The interrupt flags of the requests in flight: those a thread is running (at
/// most one per serving thread, so a short list: registering and unregistering is a
/// push and a swap-remove, cheaper than a hash table on every request) and those
/// deferred (any number, keyed by unique).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    running: Vec<(u64, Arc<AtomicBool>)>,
    deferred: crate::proto::nodes::IdMap<Arc<AtomicBool>>,
}

impl InFlight {
    /// A thread starts running request `unique` with `flag`.
    #[inline]
    pub(crate) fn start(&mut self, unique: u64, flag: Arc<AtomicBool>) {
        self.running.push((unique, flag));
    }

    /// The thread running request `unique` is done with it (or it was deferred).
    #[inline]
    pub(crate) fn stop(&mut self, unique: u64) -> Option<Arc<AtomicBool>> {
        let i = self.running.iter().rposition(|(u, _)| *u == unique)?;
        Some(self.running.swap_remove(i).1)
    }

    /// The flag of request `unique`, running or deferred.
    pub(crate) fn get(&self, unique: u64) -> Option<&Arc<AtomicBool>> {
        self.running
            .iter()
            .rev()
            .find(|(u, _)| *u == unique)
            .map(|(_, f)| f)
            .or_else(|| self.deferred.get(&unique))
    }
}

impl DeferShared {
    fn done(&self, unique: u64) {
        lock(&self.outstanding).remove(&unique);
        self.answered.notify_all();
    }

    /// Deferred requests not yet answered, as `(unique, opcode)`.
    pub(crate) fn outstanding(&self) -> Vec<(u64, Opcode)> {
        lock(&self.outstanding)
            .iter()
            .map(|(u, o)| (*u, *o))
            .collect()
    }

    /// Waits until no deferred request is outstanding, or `deadline` passes.
    /// True if none is.
    pub(crate) fn wait_none(&self, deadline: Option<Instant>) -> bool {
        let mut g = lock(&self.outstanding);
        loop {
            if g.is_empty() {
                return true;
            }
            match deadline {
                None => g = self.answered.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    g = self
                        .answered
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

/// What [`Session::call`](crate::Session::call) lends a request's context so that
/// the filesystem can defer it.
pub(crate) struct DeferSeed<'a> {
    pub(crate) sink: &'a Arc<dyn ReplySender>,
    pub(crate) tag: usize,
    pub(crate) shared: &'a Arc<DeferShared>,
    pub(crate) hook: Option<&'a Arc<dyn StepHook>>,
    pub(crate) bytes: &'a [u8],
    pub(crate) proto: Negotiated,
    pub(crate) unique: u64,
    pub(crate) opcode: Opcode,
    /// READ: the most data the kernel takes.
    pub(crate) max_data: usize,
    /// The running request's (reused) interrupt flag.
    pub(crate) flag: &'a AtomicBool,
    /// Set once a token was taken: the method's own result is then ignored.
    pub(crate) taken: &'a AtomicBool,
}

impl std::fmt::Debug for DeferSeed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferSeed")
            .field("unique", &self.unique)
            .field("opcode", &self.opcode)
            .finish_non_exhaustive()
    }
}

impl DeferSeed<'_> {
    /// The token, if this request's opcode is answered with `T` and none was taken.
    pub(crate) fn take<T: DeferredValue>(&self) -> Option<DeferredReply<T>> {
        if !T::answers(self.opcode) || self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // The worker's interrupt flag is reused for its next request: the deferred
        // request gets a flag of its own, swapped in under the in-flight lock so
        // that an INTERRUPT sets one or the other, never neither.
        let flag = {
            let mut inflight = lock(&self.shared.inflight);
            let own = Arc::new(AtomicBool::new(self.flag.load(Ordering::Relaxed)));
            inflight.stop(self.unique);
            inflight.deferred.insert(self.unique, Arc::clone(&own));
            own
        };
        lock(&self.shared.outstanding).insert(self.unique, self.opcode);
        Some(DeferredReply {
            pending: Some(Pending {
                unique: self.unique,
                opcode: self.opcode,
                max_data: self.max_data,
                bytes: match self.hook {
                    Some(_) => self.bytes.into(),
                    None => Box::default(),
                },
                proto: self.proto,
                sink: Arc::clone(self.sink),
                tag: self.tag,
                shared: Arc::clone(self.shared),
                hook: self.hook.cloned(),
                flag,
            }),
            _answer: PhantomData,
        })
    }
}

/// The answer to one request, owed: answer it once, from any thread, with
/// [`DeferredReply::reply`] or [`DeferredReply::error`].
///
/// Taken with [`RequestContext::defer`](crate::RequestContext::defer). Dropping it
/// unanswered answers `EIO` (logged): `EIO` and not `ENOSYS`, because the kernel
/// takes `ENOSYS` to FLUSH, FSYNC, SETLK, FALLOCATE... as "not implemented" and
/// stops sending that operation for the rest of the connection, while a lost
/// answer is a failure of this one request. It is also what the session answers
/// when a filesystem method panics.
///
/// `T` is the answer's type ([`DeferredValue`]): `()` for operations answered with
/// success alone, `u32` for WRITE, `Vec<u8>` for READ.
#[must_use = "a dropped token answers EIO"]
pub struct DeferredReply<T: DeferredValue> {
    pending: Option<Pending>,
    _answer: PhantomData<fn(T)>,
}

struct Pending {
    unique: u64,
    opcode: Opcode,
    max_data: usize,
    /// The request's bytes, kept for the hook (empty without one).
    bytes: Box<[u8]>,
    proto: Negotiated,
    sink: Arc<dyn ReplySender>,
    tag: usize,
    shared: Arc<DeferShared>,
    hook: Option<Arc<dyn StepHook>>,
    flag: Arc<AtomicBool>,
}

impl<T: DeferredValue> std::fmt::Debug for DeferredReply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pending {
            Some(p) => f
                .debug_struct("DeferredReply")
                .field("unique", &p.unique)
                .field("opcode", &p.opcode)
                .finish(),
            None => f.write_str("DeferredReply(answered)"),
        }
    }
}

impl<T: DeferredValue> DeferredReply<T> {
    /// The `unique` of the request this token answers.
    pub fn unique(&self) -> u64 {
        self.pending.as_ref().map_or(0, |p| p.unique)
    }

    /// The request's opcode.
    pub fn opcode(&self) -> Opcode {
        self.pending.as_ref().map_or(Opcode(0), |p| p.opcode)
    }

    /// True once the kernel sent INTERRUPT for this request (the caller got a
    /// signal): a long wait should stop and answer [`Errno::EINTR`].
    pub fn is_interrupted(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.flag.load(Ordering::Relaxed))
    }

    /// Answers with an error. `errno` out of 1..=511 is sent as `EIO`.
    pub fn error(mut self, errno: Errno) {
        if let Some(p) = self.pending.take() {
            p.finish(&ReplyParts::error(p.unique, errno));
        }
    }
}

macro_rules! answer {
    ($t:ty) => {
        impl DeferredReply<$t> {
            /// Answers with `result`: its value, or its error.
            pub fn answer(self, result: crate::types::Result<$t>) {
                match result {
                    Ok(v) => self.reply(v),
                    Err(e) => self.error(e),
                }
            }
        }
    };
}
answer!(());
answer!(u32);
answer!(Vec<u8>);

impl DeferredReply<()> {
    /// Answers success.
    pub fn reply(mut self, (): ()) {
        if let Some(p) = self.pending.take() {
            let mut msg = [0u8; reply::OUT_HEADER_SIZE];
            match reply::empty(&mut msg, p.unique) {
                Ok(n) => p.finish(&ReplyParts::encoded(&msg[..n], p.unique, None)),
                Err(_) => p.finish(&ReplyParts::error(p.unique, Errno::EIO)),
            }
        }
    }
}

impl DeferredReply<u32> {
    /// Answers WRITE: `written` bytes were written.
    pub fn reply(mut self, written: u32) {
        if let Some(p) = self.pending.take() {
            let mut msg = [0u8; reply::OUT_HEADER_SIZE + 8];
            match reply::write(&mut msg, p.unique, written) {
                Ok(n) => p.finish(&ReplyParts::encoded(&msg[..n], p.unique, None)),
                Err(_) => p.finish(&ReplyParts::error(p.unique, Errno::EIO)),
            }
        }
    }
}

impl DeferredReply<Vec<u8>> {
    /// Answers READ with `data`, cut to the size the kernel asked for.
    pub fn reply(mut self, data: Vec<u8>) {
        if let Some(p) = self.pending.take() {
            let data = &data[..data.len().min(p.max_data)];
            match reply::data_header(p.unique, data.len()) {
                Ok(h) => p.finish(&ReplyParts::with_data(h, data)),
                Err(_) => p.finish(&ReplyParts::error(p.unique, Errno::EIO)),
            }
        }
    }
}

impl<T: DeferredValue> Drop for DeferredReply<T> {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            log::error!(
                "a deferred {} (unique={}) was dropped unanswered: answering EIO",
                p.opcode,
                p.unique
            );
            p.finish(&ReplyParts::error(p.unique, Errno::EIO));
        }
    }
}

impl Pending {
    /// The respond step of a deferred request: the hook sees the reply, the
    /// transport sends it, and the request is no longer outstanding.
    fn finish(&self, parts: &ReplyParts<'_>) {
        {
            let mut inflight = lock(&self.shared.inflight);
            if inflight
                .deferred
                .get(&self.unique)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flag))
            {
                inflight.deferred.remove(&self.unique);
            }
        }
        if let Some(hook) = &self.hook {
            let accepted = Accepted::reparse(&self.bytes, &self.proto);
            hook.responding(&accepted, parts);
        }
        crate::fault::point("after-record");
        log::debug!(
            "-> unique={} deferred answer ({} bytes, error {})",
            self.unique,
            parts.len(),
            parts.error_code()
        );
        self.sink.send_deferred(self.tag, parts);
        crate::fault::point("after-reply");
        self.shared.done(self.unique);
    }
}
