//! The [`Session`] value and its bookkeeping.
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use fuse_wire::{InitFlags, Negotiated};

use crate::fs::Filesystem;
use crate::proto::defer::DeferShared;
use crate::proto::handles::HandleTable;
use crate::proto::init::{InitResult, InitWishes, KernelOffer};
use crate::proto::nodes::{Forgotten, NodeTable};
use crate::proto::step::StepHook;

/// Offset of READ payloads in the reply buffer: one page, so that data copied into
/// the buffer is page-aligned (an unaligned 1 MiB copy was measured 4-5x slower).
pub const PAYLOAD_OFFSET: usize = 4096;

/// What the kernel offered and what was agreed in INIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitState {
    /// The kernel's INIT request, kept whole.
    pub offer: KernelOffer,
    /// The agreed result.
    pub result: InitResult,
}

/// Counters of a session (monotonic; carried in snapshots).
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Requests handled.
    pub requests: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// INTERRUPTs received.
    pub interrupts: AtomicU64,
    /// FORGET and BATCH_FORGET entries processed.
    pub forgets: AtomicU64,
    /// Requests whose body did not parse (answered EIO) or whose header did not
    /// (dropped).
    pub malformed: AtomicU64,
    /// Wake-up pokes answered (see [`POKE_NAME`]); not carried in snapshots.
    pub pokes: AtomicU64,
    /// Panics caught in filesystem methods (each answered `EIO`); not carried in
    /// snapshots.
    pub panics: AtomicU64,
}

/// The name the serving layer looks up in the root to wake a worker blocked in
/// `read(2)` on the device (a *poke*). The session answers it ENOENT itself, without
/// calling the filesystem, so the name is reserved in the root directory.
pub const POKE_NAME: &str = ".fuse-live-wake.7f3c9a";

/// A FUSE session: the filesystem plus everything the kernel and the daemon agreed.
///
/// `Session` is `Sync`: several workers run requests through it at once, each in
/// three steps ([`Session::accept`], [`Session::call`], [`Session::respond`]; see
/// [`crate::proto::step`]).
pub struct Session<F: Filesystem> {
    pub(crate) fs: F,
    pub(crate) nodes: Mutex<NodeTable<F::Node>>,
    pub(crate) handles: Mutex<HandleTable<F::Handle>>,
    pub(crate) init: OnceLock<InitState>,
    pub(crate) wishes: Mutex<Option<InitWishes>>,
    /// In-flight requests (interrupt flags) and deferred ones, shared with the
    /// deferred tokens.
    pub(crate) deferred: Arc<DeferShared>,
    pub(crate) early_interrupts: Mutex<VecDeque<u64>>,
    /// Length of `early_interrupts`, read without the lock on every request.
    pub(crate) early_count: std::sync::atomic::AtomicUsize,
    pub(crate) polls: Mutex<BTreeSet<u64>>,
    pub(crate) notify_unique: AtomicU64,
    /// NOTIFY_RETRIEVEs sent and not yet answered, by notify unique.
    pub(crate) retrieves: Mutex<BTreeSet<u64>>,
    pub(crate) destroyed: AtomicBool,
    pub(crate) stats: SessionStats,
    pub(crate) page_size: u32,
    /// With `allow_root`: the only uids (besides 0) allowed in.
    pub(crate) only_uid: Option<u32>,
    /// Ask for `FUSE_OVER_IO_URING` in INIT (set by the io_uring serving backend).
    pub(crate) uring_wish: AtomicBool,
    /// Watches accept and respond (a journal); none by default.
    pub(crate) hook: Option<Arc<dyn StepHook>>,
    /// The message of a panic in [`Filesystem::init`], for the serving layer.
    pub(crate) init_panic: Mutex<Option<String>>,
    pub(crate) init_missing: Mutex<Option<InitFlags>>,
}

/// The page size a new session assumes until [`Session::set_page_size`].
pub const DEFAULT_PAGE_SIZE: u32 = 4096;

/// How many INTERRUPTs for not-yet-seen requests are remembered.
const EARLY_INTERRUPTS: usize = 64;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a filesystem callback must not wedge the whole mount.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<F: Filesystem> Session<F> {
    /// A new session for `fs`, before INIT. The nodeid table holds the root.
    pub fn new(fs: F) -> Self {
        let root = fs.root();
        Session {
            fs,
            nodes: Mutex::new(NodeTable::new(root).with_stable_ids(F::stable_id)),
            handles: Mutex::new(HandleTable::default()),
            init: OnceLock::new(),
            wishes: Mutex::new(None),
            deferred: Arc::default(),
            early_interrupts: Mutex::new(VecDeque::new()),
            early_count: std::sync::atomic::AtomicUsize::new(0),
            polls: Mutex::new(BTreeSet::new()),
            notify_unique: AtomicU64::new(1),
            retrieves: Mutex::new(BTreeSet::new()),
            destroyed: AtomicBool::new(false),
            stats: SessionStats::default(),
            page_size: DEFAULT_PAGE_SIZE,
            only_uid: None,
            uring_wish: AtomicBool::new(false),
            hook: None,
            init_panic: Mutex::new(None),
            init_missing: Mutex::new(None),
        }
    }

    /// Sets the system's page size (the serving layer passes the real one; the
    /// core does no IO, so a new session assumes [`DEFAULT_PAGE_SIZE`]). It bounds
    /// `max_pages` in INIT and sizes the read buffer. Values below 4096 are taken
    /// as 4096.
    pub fn set_page_size(&mut self, page_size: u32) {
        self.page_size = page_size.max(DEFAULT_PAGE_SIZE);
    }

    /// Refuses (EACCES) requests from callers other than `uid` and root: what the
    /// `allow_root` mount option means. The kernel only knows `allow_other`, so the
    /// daemon enforces the rest.
    pub fn restrict_to_uid(&mut self, uid: Option<u32>) {
        self.only_uid = uid;
    }

    /// Installs the hook that sees every request's accept and respond steps (see
    /// [`StepHook`]), replacing any earlier one. Install it before serving.
    pub fn set_hook(&mut self, hook: Arc<dyn StepHook>) {
        self.hook = Some(hook);
    }

    /// The message of a panic in [`Filesystem::init`], if INIT panicked (INIT was
    /// answered `EIO`, so the kernel refuses the mount).
    pub fn init_panic(&self) -> Option<String> {
        lock(&self.init_panic).clone()
    }

    /// The flags of [`InitWishes::required`](crate::InitWishes::required) the kernel
    /// did not offer, if INIT failed for that (INIT was answered `EPROTO`, so the
    /// kernel refuses the mount).
    pub fn init_missing(&self) -> Option<InitFlags> {
        *lock(&self.init_missing)
    }

    /// Adds `FUSE_OVER_IO_URING` to the flags the session asks for in INIT (after
    /// [`Filesystem::init`] adjusted the wishes), when the kernel offers it. Only
    /// useful before INIT; the io_uring serving backend sets it.
    pub fn want_io_uring(&self, on: bool) {
        self.uring_wish.store(on, Ordering::Relaxed);
    }

    /// The filesystem.
    pub fn filesystem(&self) -> &F {
        &self.fs
    }

    /// What INIT agreed, once it has been answered.
    pub fn init_state(&self) -> Option<&InitState> {
        self.init.get()
    }

    /// The wire protocol of this connection (the newest, before INIT).
    pub fn negotiated(&self) -> Negotiated {
        self.init
            .get()
            .map_or(Negotiated::BEFORE_INIT, |i| i.result.negotiated())
    }

    /// The read buffer size the kernel requires on this connection
    /// (a default of 1 MiB + a page before INIT).
    pub fn read_buffer_size(&self) -> usize {
        match self.init.get() {
            Some(i) => i.result.read_buffer_size(self.page_size as usize),
            None => (1 << 20) + self.page_size as usize,
        }
    }

    /// The reply buffer size [`Session::call`] needs: the payload offset plus the
    /// largest READ the kernel may ask for.
    pub fn reply_buffer_size(&self) -> usize {
        PAYLOAD_OFFSET + self.read_buffer_size()
    }

    /// True once DESTROY was handled: stop serving.
    pub fn is_destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Acquire)
    }

    /// The counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Number of nodeids the kernel holds (the root included).
    pub fn node_count(&self) -> usize {
        lock(&self.nodes).len()
    }

    /// Number of open file and directory handles.
    pub fn handle_count(&self) -> usize {
        lock(&self.handles).len()
    }

    /// The lookup count of `nodeid` (None if unknown).
    pub fn lookup_count(&self, nodeid: u64) -> Option<u64> {
        lock(&self.nodes).get(nodeid).map(|e| e.lookups)
    }

    /// A reply that counted a lookup of `nodeid` could not be delivered (the kernel
    /// dropped the request, e.g. it was interrupted): the kernel never counted that
    /// lookup, so take it back.
    pub fn reply_lost(&self, nodeid: u64) {
        let gone = lock(&self.nodes).unlookup(nodeid);
        if let Forgotten::Gone(node) = gone {
            self.guarded("forget", || self.fs.forget(node));
        }
    }

    /// Marks the session ended (the device reported the mount gone) and tells the
    /// filesystem, once.
    pub fn shutdown(&self) {
        if !self.destroyed.swap(true, Ordering::AcqRel) {
            self.guarded("destroy", || self.fs.destroy());
        }
    }

    /// Runs a filesystem callback outside a request (no one to answer): a panic
    /// in it is logged and counted, not passed on to the serving thread.
    fn guarded(&self, what: &str, f: impl FnOnce()) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            self.stats.panics.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "the filesystem panicked in {what}: {}",
                crate::proto::step::panic_message(&*payload)
            );
        }
    }

    /// Registers an in-flight request for interrupts, with `flag`.
    ///
    /// The flag is the calling thread's, reused from one request to the next (no
    /// allocation per request). That is safe because [`Session::interrupt`] sets a flag
    /// only under the in-flight lock and only while its request is registered, and
    /// [`Session::end`] unregisters under the same lock before the thread's next
    /// request resets the flag.
    pub(crate) fn begin(&self, unique: u64, flag: &Arc<AtomicBool>) {
        flag.store(false, Ordering::Relaxed);
        // Register first, then look for an INTERRUPT that overtook the request: an
        // interrupt either finds the request registered, or was remembered before
        // the registration (it holds the in-flight lock while it does both).
        lock(&self.deferred.inflight).start(unique, Arc::clone(flag));
        if self.early_count.load(Ordering::Acquire) > 0 {
            let mut early = lock(&self.early_interrupts);
            if let Some(pos) = early.iter().position(|&u| u == unique) {
                early.remove(pos);
                self.early_count.store(early.len(), Ordering::Release);
                flag.store(true, Ordering::Relaxed);
            }
        }
    }

    #[inline]
    pub(crate) fn end(&self, unique: u64) {
        // Dropped after the lock is released.
        let _flag = lock(&self.deferred.inflight).stop(unique);
    }

    /// INTERRUPT: flag the request if it is running, or remember it if the
    /// interrupt overtook the request.
    pub(crate) fn interrupt(&self, target: u64) {
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        let inflight = lock(&self.deferred.inflight);
        if let Some(flag) = inflight.get(target) {
            flag.store(true, Ordering::Relaxed);
            return;
        }
        let mut early = lock(&self.early_interrupts);
        if early.len() >= EARLY_INTERRUPTS {
            early.pop_front();
        }
        early.push_back(target);
        self.early_count.store(early.len(), Ordering::Release);
        drop(early);
        drop(inflight);
    }

    pub(crate) fn forget_one(&self, nodeid: u64, nlookup: u64) {
        self.stats.forgets.fetch_add(1, Ordering::Relaxed);
        let gone = lock(&self.nodes).forget(nodeid, nlookup);
        if let Forgotten::Gone(node) = gone {
            self.fs.forget(node);
        }
    }

    /// A NOTIFY_RETRIEVE is about to be sent: its `notify_unique`, remembered
    /// until the kernel's NOTIFY_REPLY comes back as [`Outcome::Retrieved`]
    /// (or [`Session::cancel_retrieve`]).
    ///
    /// [`Outcome::Retrieved`]: crate::proto::Outcome::Retrieved
    pub fn begin_retrieve(&self) -> u64 {
        let unique = self.notify_unique.fetch_add(1, Ordering::Relaxed);
        lock(&self.retrieves).insert(unique);
        unique
    }

    /// Stops waiting for the NOTIFY_REPLY of retrieve `unique` (it timed out, or
    /// the notification was not delivered): a late reply is then dropped.
    pub fn cancel_retrieve(&self, unique: u64) {
        lock(&self.retrieves).remove(&unique);
    }
}
