//! Serving a mount: worker threads over a transport, parking at request
//! boundaries, and a clean end on unmount or signal.
//!
//! # The pieces
//!
//! - `transport.rs`: the seam. A `Transport` receives a request, lends the session
//!   its bytes and a reply space, and sends the reply's parts; one worker loop
//!   (`run_worker`) runs the session's three steps (accept, call, respond; see
//!   [`crate::proto::step`]) for every transport.
//! - `device.rs`: the `/dev/fuse` transport (`read(2)`, `writev(2)` of the parts).
//! - `ring.rs`: the fuse-over-io_uring transport (one ring per CPU).
//! - `control.rs`: what the workers are asked to do (an enum: serving, paused,
//!   stopping, released) and where each one is (waiting, blocked in `read(2)`, in a
//!   request, parked, exited).
//! - `poke.rs`: waking workers blocked in `read(2)` by a lookup in the mount's root.
//! - `pool.rs`: how many `/dev/fuse` workers serve: one per usable CPU, more (up to
//!   the number asked) while requests are held in the filesystem.
//! - this file: [`Server`] and [`Running`], the public face.
//!
//! # Why `dup` and not `FUSE_DEV_IOC_CLONE`
//!
//! Every worker reads a `dup` of the same open file description, so all of them share
//! one processing queue in the kernel. `FUSE_DEV_IOC_CLONE` would give each worker its
//! own queue, and the kernel aborts a clone's unanswered requests when that fd is
//! closed. A restarted daemon must be able to ask the kernel to resend whatever the old
//! one had read but not answered (`FUSE_NOTIFY_RESEND` works per queue), so the library
//! keeps one queue. [`Channel::clone_queue`](crate::dev::Channel::clone_queue) remains
//! available for callers who accept that caveat.
//!
//! # Parking
//!
//! [`Running::pause`] sets the mode to paused and wakes every worker (its waker, or
//! a poke for one blocked in `read(2)`); each finishes the request it is serving,
//! parks, and `pause` returns once all are parked: no request is in flight in this
//! process, which is the state a snapshot needs.
//!
//! # Panics and requests that cannot finish
//!
//! A panic in a filesystem method is caught by the session's call step and answered
//! `EIO`; the worker goes on. What is left is a method that never returns. Pokes are
//! sent only from a detached thread (a poke can wait on the root directory's lock
//! held by such a request), and nothing waits for a poke: [`Running::unmount`] (and
//! so SIGTERM through [`Running::run_until_signal`]) waits for the workers a bounded
//! time ([`UNMOUNT_GRACE`]) and then leaves a stuck worker behind, logged;
//! [`Running::pause_within`] gives up after its bound and resumes.
//! [`Running::pause`] and [`Running::stop`] do wait for the request to finish
//! (a snapshot or a handoff needs every request answered), logging what they wait
//! for.
//!
//! # When a serving thread ends unexpectedly
//!
//! A worker, an io_uring queue's thread or the pool's watcher that ends for a
//! reason other than an orderly stop, pause, retirement or unmount (an error of the
//! kernel transport such as a REGISTER refused with `EOPNOTSUPP`, a panic outside
//! the filesystem's methods) would leave the requests it owns waiting forever (a
//! queue: every request from its CPU; a worker: the request it had read) while
//! the rest of the mount serves on. So it is not replaced: the first such end is
//! recorded, every other thread is asked to leave, and the session ends with
//! [`ServeError::ThreadFailed`] ([`Running::failure`], returned by
//! [`Running::run_until_signal`]), without unmounting. The daemon then exits
//! non-zero, as after a crash: under a fd store its successor recovers the mount
//! on the same connection and answers what the failed thread held (resent by the
//! kernel, or read back from the ring entry). Only an extra pool worker that could
//! not even set up (while others serve) is logged and left to the pool.
//!
//! # fuse-over-io_uring
//!
//! [`Server::spawn_uring`] serves through the kernel's io_uring transport instead
//! (see [`crate::dev::uring`]): a pinned thread and a ring per CPU, so that a request
//! is served on the CPU that issued it, with one `io_uring_enter` per request. INIT,
//! FORGET and INTERRUPT still come through one `/dev/fuse` worker. Parking works;
//! handing the mount to another process does not ([`Running::try_stop`]).
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuse_wire::InitFlags;

use crate::dev::uring::{self, EntryStart, UringQueue};
use crate::dev::{
    Channel, Mount, MountError, MountOptions, RequestSlots, RingArea, SlotData, SlotMark,
};
use crate::fs::Filesystem;
use crate::notify::Notifier;
use crate::proto::session::lock;
use crate::proto::Session;

mod control;
mod device;
mod poke;
mod pool;
mod recover;
mod ring;
mod transport;

use control::{Control, Mode, Phase, WorkerSlot};
use device::DeviceTransport;
use poke::{open_root, poke, poke_workers};
use recover::RingPlan;
pub use recover::{
    kernel_has_resend, recover_requests, RecoveredRequests, RecoveredRing, RequestRecovery,
};
use ring::RingTransport;
use transport::{run_worker, Transport};

/// Why serving failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// Mounting or unmounting failed.
    Mount(MountError),
    /// An IO error on the device or while starting threads.
    Io(io::Error),
    /// The kernel did not send INIT in time, or the connection closed before it.
    NoInit,
    /// fuse-over-io_uring was required ([`UringOptions::required`]) but cannot be
    /// used on this mount; the text says why and what to do.
    Uring(String),
    /// The operation is not possible with this mount's serving backend (e.g. a live
    /// handoff of a mount served through io_uring).
    Unsupported(&'static str),
    /// The filesystem panicked in [`Filesystem::init`] (the message is the
    /// panic's); INIT was answered `EIO`, so the kernel refused the mount.
    InitPanicked(String),
    /// The kernel does not offer these flags, which the filesystem requires
    /// ([`InitWishes::required`](crate::InitWishes::required)); INIT was answered
    /// `EPROTO`, so the kernel refused the mount.
    InitFlagsMissing(InitFlags),
    /// [`Running::pause_within`] gave up: these requests (worker, opcode, unique)
    /// were still in progress; the workers resumed.
    Busy(Vec<String>),
    /// A serving thread (an io_uring queue's, a `/dev/fuse` worker, the pool's
    /// watcher) ended for a reason other than an orderly stop, pause or unmount:
    /// an error of the kernel transport, or a panic outside the filesystem's
    /// methods. The other threads were stopped and the mount was *not* unmounted:
    /// as after a crash, a successor started from a fd store recovers it (see
    /// [`Running::failure`]).
    ThreadFailed {
        /// The thread's name (`fuse-uring-CPU`, `fuse-worker-N`, `fuse-pool`).
        thread: String,
        /// Why it ended.
        error: io::Error,
    },
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Mount(e) => write!(f, "{e}"),
            ServeError::Io(e) => write!(f, "FUSE device IO failed: {e}"),
            ServeError::NoInit => write!(
                f,
                "the kernel never sent INIT (or the mount went away before it); \
                 check that the mountpoint was not unmounted or aborted"
            ),
            ServeError::Uring(why) => write!(f, "cannot serve through io_uring: {why}"),
            ServeError::Unsupported(why) => write!(f, "{why}"),
            ServeError::InitPanicked(msg) => write!(
                f,
                "the filesystem panicked in init: {msg}; the mount was refused"
            ),
            ServeError::InitFlagsMissing(flags) => write!(
                f,
                "the kernel does not offer INIT flags the filesystem requires: {flags:?}; \
                 the mount was refused (use a kernel that has them)"
            ),
            ServeError::Busy(reqs) => write!(
                f,
                "could not pause: requests still in progress ({}); try again later",
                reqs.join(", ")
            ),
            ServeError::ThreadFailed { thread, error } => write!(
                f,
                "serving thread {thread} failed: {error}; serving stopped without unmounting \
                 (under a fd store a restarted daemon recovers the mount)"
            ),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Mount(e) => Some(e),
            ServeError::Io(e) => Some(e),
            ServeError::ThreadFailed { error, .. } => Some(error),
            ServeError::NoInit
            | ServeError::Uring(_)
            | ServeError::Unsupported(_)
            | ServeError::InitPanicked(_)
            | ServeError::InitFlagsMissing(_)
            | ServeError::Busy(_) => None,
        }
    }
}

impl From<MountError> for ServeError {
    fn from(e: MountError) -> Self {
        ServeError::Mount(e)
    }
}

impl From<io::Error> for ServeError {
    fn from(e: io::Error) -> Self {
        ServeError::Io(e)
    }
}

/// How long [`Running::unmount`] waits for the kernel to end the connection (files
/// still open on the detached mount keep it alive) before stopping the workers.
pub const UNMOUNT_GRACE: Duration = Duration::from_secs(2);

/// Why a mount served through io_uring cannot be handed over or stopped.
const URING_NO_HANDOFF: &str = "a mount served through io_uring cannot be handed to another \
     process or stopped without unmounting: live handoff over io_uring is not built (crash \
     recovery under a fd store is); serve with Server::spawn for live handoff";

/// A mounted filesystem, not yet served.
pub struct Server<F: Filesystem> {
    session: Arc<Session<F>>,
    mount: Mount,
    /// Request slots the `/dev/fuse` workers read into (one each), if any.
    slots: Option<Arc<RequestSlots>>,
    /// A predecessor's ring area and what each queue does with its entries
    /// ([`Server::recover_ring`], [`Server::take_ring_live`]).
    ring: Option<(Arc<RingArea>, RingStart)>,
}

/// How the queues start on a predecessor's ring area.
#[derive(Debug)]
enum RingStart {
    /// After a crash: on the dead process's slots, as planned.
    Recover(RingPlan),
    /// A live handoff: on the queues marked `true` the predecessor's entries all
    /// hold a request (`recover::fill_entries`): no fresh entry, they are all
    /// adopted ([`Running::adopt_ring`]); on the others, fresh entries on the
    /// slots the predecessor (still serving until it releases its rings) does not
    /// own, and its held requests adopted later.
    Live(Vec<bool>),
}

impl<F: Filesystem> Server<F> {
    /// Mounts `fs` on `mountpoint` (see [`crate::dev::mount`]). The kernel sends INIT
    /// once workers read the device.
    pub fn mount(
        fs: F,
        mountpoint: impl AsRef<Path>,
        options: &MountOptions,
    ) -> Result<Self, ServeError> {
        let mount = crate::dev::mount(mountpoint, options)?;
        let mut session = Session::new(fs);
        session.set_page_size(system_page_size());
        if options.is_allow_root() {
            session.restrict_to_uid(Some(nix::unistd::geteuid().as_raw()));
        }
        Ok(Server {
            session: Arc::new(session),
            mount,
            slots: None,
            ring: None,
        })
    }

    /// Serves an existing session on an existing mount (a restored process).
    pub fn from_parts(mut session: Session<F>, mount: Mount) -> Self {
        session.set_page_size(system_page_size());
        Server {
            session: Arc::new(session),
            mount,
            slots: None,
            ring: None,
        }
    }

    /// A restored session's recovery of the requests held in the io_uring entries
    /// of the process that served it before (after `kill -9`): `area` is that
    /// process's [`RingArea`] (from the fd store), already mapped back at its
    /// address ([`RingArea::from_fd`]). Every request an entry holds unanswered is
    /// run through the session as a resent request (bit 63 set, so a journal
    /// answers it from its recorded reply instead of running it twice) and its
    /// reply written into the entry; [`Server::spawn_uring`] then commits it with
    /// its original unique, which adopts the kernel's entry, and commits again the
    /// replies the dead process had completed but perhaps not submitted (the
    /// kernel refuses those it had: exactly once). Other entries are registered
    /// anew, and each CPU's queue is poked so that requests that waited while no
    /// process served are fetched. Call it after the journal was resumed, before
    /// `spawn_uring` (which then serves through this area).
    ///
    /// A reply the kernel refuses (the request was interrupted and is gone) takes
    /// back the lookup it counted.
    pub fn recover_ring(&mut self, area: RingArea) -> RecoveredRing {
        let (report, plan) = recover::recover_ring(&self.session, &area, false);
        self.ring = Some((Arc::new(area), RingStart::Recover(plan)));
        report
    }

    /// A live handoff's successor serves through its predecessor's [`RingArea`]
    /// (received with the device fd, mapped back at its address with
    /// [`RingArea::from_fd`]). Call it after Commit, with the predecessor paused:
    /// every entry the predecessor has available is first given a request (a
    /// `statfs` from a child process pinned to the queue's CPU, which the paused
    /// predecessor does not answer), so that its rings close with no entry the
    /// kernel could cancel or hand a request to as they go. On such a queue
    /// [`Server::spawn_uring`] registers nothing: the successor serves on the
    /// predecessor's entries once it has adopted them, so the slots in use do not
    /// grow from one handoff to the next. On a queue that could not be filled (its
    /// CPU cannot be used, or not within 2 s, logged) it registers fresh entries
    /// on the slots the predecessor does not own, as they go to the head of the
    /// queue's available list. Once the predecessor has released its rings, call
    /// [`Running::adopt_ring`] to answer and adopt the requests its entries held.
    pub fn take_ring_live(&mut self, area: RingArea) {
        // First every entry the paused predecessor has available is given a
        // request (recover::fill_entries): its rings then close with none
        // available, and this process adopts them instead of registering more.
        let filled = match poke::open_root(self.mount.mountpoint(), None) {
            Ok(root) => recover::fill_entries(&root, &area),
            Err(e) => {
                log::warn!("cannot open the mount's root to fill the predecessor's entries: {e}");
                Vec::new()
            }
        };
        self.ring = Some((Arc::new(area), RingStart::Live(filled)));
    }

    /// Makes the `/dev/fuse` workers read requests into `slots` (worker `i` into slot
    /// `i`), a memfd the daemon stores in the fd store
    /// ([`REQUEST_SLOTS_FD`](crate::dev::fdstore::REQUEST_SLOTS_FD)): the requests
    /// a crashed process had read and not answered can then be answered by its
    /// successor on kernels without `NOTIFY_RESEND` ([`Server::recover_requests`]).
    /// Workers beyond the slots' number read into buffers of their own (logged).
    /// Not used by io_uring queues.
    pub fn set_request_slots(&mut self, slots: Arc<RequestSlots>) {
        self.slots = Some(slots);
    }

    /// The session.
    pub fn session(&self) -> &Arc<Session<F>> {
        &self.session
    }

    /// Installs the hook that sees every request's accept and respond steps (see
    /// [`StepHook`](crate::StepHook)), before serving starts. Returns `false` (and
    /// installs nothing) if the session is shared already (a clone of
    /// [`Server::session`] is alive).
    pub fn set_hook(&mut self, hook: Arc<dyn crate::StepHook>) -> bool {
        match Arc::get_mut(&mut self.session) {
            Some(s) => {
                s.set_hook(hook);
                true
            }
            None => false,
        }
    }

    /// Serves with up to `threads` `/dev/fuse` workers (at least one) and waits
    /// until INIT has been answered (at most 30 s), so that the mount serves when
    /// this returns.
    ///
    /// One worker per usable CPU starts at once (at most `threads`); more, up to
    /// `threads`, start only while a request is held in the filesystem (blocked,
    /// or running for long) and no worker waits on the device, and retire once
    /// not needed: on few CPUs, idle workers waiting on the device cost a wake-up
    /// and a thread switch per request (docs/DESIGN.md, "The `/dev/fuse` worker
    /// pool"). [`Running::workers`] tells how many serve.
    pub fn spawn(self, threads: usize) -> Result<Running<F>, ServeError> {
        let restored = self.session.init_state().is_some();
        let running = self.start(threads)?;
        crate::trace::phase("spawn: workers started");
        running.wait_init()?;
        crate::trace::phase("spawn: INIT answered");
        if restored {
            // A restored session (a recovery, a handoff's successor) serves as
            // soon as its workers read: its test poke can wait behind requests
            // already queued (the first recorded one may compact the journal,
            // tens of ms at 100k nodeids), so it is not waited for.
            running.enable_blocking_reads_later();
        } else {
            running.enable_blocking_reads();
            crate::trace::phase("spawn: blocking reads decided (a poke answered)");
        }
        Ok(running)
    }

    /// Serves through the transport `kind` names: [`TransportKind::DevFuse`] as
    /// [`Server::spawn`] with `threads` workers, [`TransportKind::IoUring`] as
    /// [`Server::spawn_uring`] with io_uring required, and [`TransportKind::Auto`]
    /// (the default) io_uring where the kernel offers it (the `fuse` module
    /// parameter `enable_uring` is on) and this process may run on more than one
    /// CPU, `/dev/fuse` otherwise (falling back to `threads` `/dev/fuse` workers if
    /// INIT does not agree on io_uring). Logs at debug level what it chose and why.
    ///
    /// A mount served through io_uring cannot be handed to another process
    /// ([`Running::try_stop`]): pick [`TransportKind::DevFuse`] for a daemon that
    /// upgrades itself live.
    ///
    /// # Errors
    /// As [`Server::spawn`] and [`Server::spawn_uring`].
    pub fn spawn_with(self, kind: TransportKind, threads: usize) -> Result<Running<F>, ServeError> {
        let uring = match kind {
            TransportKind::DevFuse => {
                log::debug!("transport: /dev/fuse (asked for)");
                false
            }
            TransportKind::IoUring => {
                log::debug!("transport: io_uring (asked for)");
                true
            }
            TransportKind::Auto => auto_picks_uring(),
        };
        if uring {
            let o = UringOptions {
                required: kind == TransportKind::IoUring,
                fallback_threads: threads.max(1),
                ..UringOptions::default()
            };
            self.spawn_uring(&o)
        } else {
            self.spawn(threads)
        }
    }

    /// Serves through fuse-over-io_uring (see [`crate::dev::uring`]): asks for
    /// `FUSE_OVER_IO_URING` in INIT, answers INIT through `/dev/fuse`, then starts
    /// one thread per possible CPU, each pinned to its CPU with a ring of its own
    /// and `options.depth` registered entries, serving requests through the same
    /// [`Session`]. One `/dev/fuse` worker stays for what the kernel still sends
    /// there (FORGET, BATCH_FORGET, INTERRUPT, requests queued before the rings
    /// were ready).
    ///
    /// When the kernel did not offer `FUSE_OVER_IO_URING` (the `fuse` module
    /// parameter `enable_uring` is off, or the kernel predates 6.14), this serves
    /// through `/dev/fuse` with `options.fallback_threads` workers and logs a warning,
    /// or fails with [`ServeError::Uring`] if `options.required`.
    /// [`Running::backend`] tells which one serves.
    ///
    /// [`Running::pause`] works (every queue thread parks at a request boundary);
    /// a live handoff does not: [`Running::stop`] refuses and
    /// [`Running::with_mount`] returns `None` (docs/DESIGN.md says why).
    ///
    /// # Errors
    /// As [`Server::spawn`]; [`ServeError::Uring`] when a queue cannot be set up or
    /// registered (the mount is unmounted then).
    pub fn spawn_uring(self, options: &UringOptions) -> Result<Running<F>, ServeError> {
        self.session.want_io_uring(true);
        let mut running = self.start(1)?;
        running.wait_init()?;
        let agreed = running.session.init_state().is_some_and(|i| {
            fuse_wire::InitFlags(i.result.flags).contains(fuse_wire::InitFlags::OVER_IO_URING)
        });
        if !agreed {
            let why = match uring::uring_enabled() {
                Some(false) => {
                    "the kernel did not offer FUSE_OVER_IO_URING because the fuse module \
                     parameter enable_uring is off; as root, run \
                     `echo Y > /sys/module/fuse/parameters/enable_uring` before mounting"
                }
                None => {
                    "this kernel has no fuse-over-io_uring (CONFIG_FUSE_IO_URING, Linux 6.14 \
                     or later)"
                }
                Some(true) => {
                    "the kernel did not offer FUSE_OVER_IO_URING although enable_uring is on \
                     (was it switched on after this mount was made?)"
                }
            };
            if options.required {
                let _ = running.unmount();
                return Err(ServeError::Uring(why.to_owned()));
            }
            log::warn!("{why}: serving through /dev/fuse instead");
            let mut pool = pool::Pool::new(
                &running.session,
                &running.control,
                &running.device,
                None,
                Arc::clone(&running.workers),
                options.fallback_threads,
            )?;
            if let Some(first) = running.control.worker_slots().into_iter().next() {
                pool.adopt(0, first);
            }
            pool.fill(pool.base)?;
            pool.watch()?;
            running.enable_blocking_reads();
            return Ok(running);
        }
        crate::trace::phase("spawn_uring: INIT answered");
        match running.start_queues(options) {
            Ok((queues, depth)) => {
                crate::trace::phase("spawn_uring: queues started");
                running.backend = Backend::Uring { queues, depth };
                Ok(running)
            }
            Err(e) => {
                let _ = running.unmount();
                Err(e)
            }
        }
    }

    /// Starts `threads` `/dev/fuse` workers.
    fn start(self, threads: usize) -> Result<Running<F>, ServeError> {
        let Server {
            session,
            mount,
            slots,
            ring,
        } = self;
        let channel = mount.channel()?;
        let control = Arc::new(Control::default());
        if session.init_state().is_some() {
            // A restored session: INIT was answered by an earlier process.
            control.init_replied.store(true, Ordering::Release);
        }
        // One worker per usable CPU now, more (up to `threads`) when a request is
        // held while none waits on the device (`pool.rs`).
        let mut pool = pool::Pool::new(
            &session,
            &control,
            &channel,
            slots,
            pool::Handles::default(),
            threads,
        )?;
        pool.fill(pool.base)?;
        let workers = Arc::clone(&pool.handles);
        pool.watch()?;
        let waiters = Arc::clone(&control.retrieve_waiters);
        Ok(Running {
            session: Arc::clone(&session),
            control,
            workers,
            mount: Mutex::new(Some(mount)),
            device: channel.try_clone()?,
            notifier: Notifier::new(Arc::clone(&session), channel, waiters),
            backend: Backend::Device,
            ring: Mutex::new(ring.map(|(a, p)| (a, Some(p)))),
        })
    }
}

/// The system's page size, for the session (which does no IO itself).
fn system_page_size() -> u32 {
    u32::try_from(crate::dev::page_size()).unwrap_or(u32::MAX)
}

/// Options of [`Server::spawn_uring`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UringOptions {
    /// Registered entries per queue (requests a queue can hold at once), 1 to
    /// [`uring::MAX_DEPTH`]; default [`uring::DEFAULT_DEPTH`].
    pub depth: usize,
    /// Pin each queue's thread to its CPU (default true): the kernel queues a
    /// request on the queue of the CPU its caller runs on, so the request is then
    /// served on that CPU, without a cross-CPU wake-up.
    pub pin: bool,
    /// Fail with [`ServeError::Uring`] instead of falling back to `/dev/fuse`
    /// workers when the kernel does not offer io_uring (default false).
    pub required: bool,
    /// The most `/dev/fuse` workers when falling back, as [`Server::spawn`]
    /// (default 1).
    pub fallback_threads: usize,
    /// Keep the entries' memory in a memfd ([`Running::ring_area`]) that the
    /// daemon stores in its fd store, so that a successor after a crash can answer
    /// the requests held in them (default false: anonymous shared memory). Such
    /// rings are set up without `DEFER_TASKRUN` (docs/RECOVERY.md says why).
    pub restartable: bool,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            depth: uring::DEFAULT_DEPTH,
            pin: true,
            required: false,
            fallback_threads: 1,
            restartable: false,
        }
    }
}

/// Which kernel transport [`Server::spawn_with`] serves through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// io_uring where the kernel offers it and more than one CPU is usable,
    /// `/dev/fuse` otherwise.
    #[default]
    Auto,
    /// `/dev/fuse` workers ([`Server::spawn`]); the one that live handoff needs.
    DevFuse,
    /// fuse-over-io_uring, required ([`Server::spawn_uring`]).
    IoUring,
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    /// `auto`, `dev-fuse` or `io-uring`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(TransportKind::Auto),
            "dev-fuse" => Ok(TransportKind::DevFuse),
            "io-uring" => Ok(TransportKind::IoUring),
            other => Err(format!(
                "unknown transport {other:?}: expected auto, dev-fuse or io-uring"
            )),
        }
    }
}

impl TransportKind {
    /// The transport for a daemon that hands its mount to a new process (live
    /// upgrade). `why` names that need, for the log and the error. (A daemon that
    /// is only recovered after a crash uses [`TransportKind::recoverable`]: every
    /// transport works there.)
    ///
    /// [`TransportKind::Auto`] becomes [`TransportKind::DevFuse`], said at info
    /// level; [`TransportKind::DevFuse`] stays. [`TransportKind::IoUring`] stays,
    /// logged with its cost: the daemon must serve with its entries in a memfd
    /// ([`UringOptions::restartable`]), which the handoff passes on; the new
    /// process fills every entry the old one has available before the old one
    /// closes its rings, and adopts them all ([`Server::take_ring_live`],
    /// [`Running::adopt_ring`]), so no request fails as they close; only on a
    /// queue whose CPU cannot be used (or whose entries were not filled within
    /// 2 s, logged) it registers fresh entries instead, and a request the kernel
    /// hands to an old entry there as the rings close fails with `ECANCELED`
    /// (docs/DESIGN.md, "io_uring handoffs that leave nothing available"). A
    /// daemon checks this at startup, before it mounts.
    ///
    /// # Errors
    /// None today (kept for a transport that cannot be handed over).
    pub fn restartable(self, why: &str) -> Result<TransportKind, String> {
        if self == TransportKind::IoUring {
            log::info!(
                "transport io_uring for {why}: the entries are kept in a memfd the handoff \
                 passes on and the new process adopts them all (a crash of a serving \
                 process can still fail a request with ECANCELED)"
            );
            return Ok(TransportKind::IoUring);
        }
        self.handoff_capable(why)
    }

    /// The transport for a daemon recovered after a crash from a fd store (no live
    /// handoff). `why` names that need, for the log.
    ///
    /// [`TransportKind::IoUring`] stays: the daemon keeps its entries in a memfd
    /// ([`UringOptions::restartable`], [`Running::ring_area`]) that it stores beside
    /// `/dev/fuse`, and its successor answers the requests they hold
    /// ([`Server::recover_ring`]); but a request that reaches a ring entry of the
    /// dying process after it can no longer copy it in fails with `ECANCELED`
    /// (a kernel window, docs/RECOVERY.md "Crash recovery over io_uring"), which
    /// is logged at startup. [`TransportKind::Auto`] therefore becomes
    /// [`TransportKind::DevFuse`], which loses no call to a crash, said at info
    /// level; [`TransportKind::DevFuse`] stays.
    pub fn recoverable(self, why: &str) -> TransportKind {
        match self {
            TransportKind::DevFuse => TransportKind::DevFuse,
            TransportKind::Auto => {
                log::info!(
                    "transport auto: /dev/fuse, because {why} loses no call to a crash there \
                     (over io_uring a request that reaches the dying process's ring can fail \
                     with ECANCELED; ask for io-uring to accept that)"
                );
                TransportKind::DevFuse
            }
            TransportKind::IoUring => {
                log::info!(
                    "transport io_uring for {why}: the requests held in the ring entries are \
                     answered after a crash, but a request that reaches the dying process's \
                     ring can fail with ECANCELED"
                );
                TransportKind::IoUring
            }
        }
    }

    fn handoff_capable(self, why: &str) -> Result<TransportKind, String> {
        match self {
            TransportKind::DevFuse => Ok(TransportKind::DevFuse),
            TransportKind::Auto => {
                log::info!(
                    "transport auto: /dev/fuse, because {why} loses no call there (over \
                     io_uring a request that reaches a crashing process's ring can fail with \
                     ECANCELED; ask for io-uring to take that risk)"
                );
                Ok(TransportKind::DevFuse)
            }
            // `restartable` answers for io_uring itself (it can be handed off).
            TransportKind::IoUring => Ok(TransportKind::IoUring),
        }
    }
}

/// What [`TransportKind::Auto`] picks: io_uring when the kernel offers it (the
/// `fuse` module parameter `enable_uring` is on) and this process may run on more
/// than one CPU (with one, a ring per CPU saves no wake-up). Logs the choice and
/// its reason at debug level.
pub fn auto_picks_uring() -> bool {
    let cpus = usable_cpus();
    match uring::uring_enabled() {
        Some(true) if cpus > 1 => {
            log::debug!("transport auto: io_uring (the kernel offers it, {cpus} CPUs usable)");
            true
        }
        Some(true) => {
            log::debug!("transport auto: /dev/fuse (one CPU usable: a ring per CPU gains nothing)");
            false
        }
        Some(false) => {
            log::debug!(
                "transport auto: /dev/fuse (the fuse module parameter enable_uring is off)"
            );
            false
        }
        None => {
            log::debug!("transport auto: /dev/fuse (no fuse-over-io_uring in this kernel)");
            false
        }
    }
}

/// How many CPUs this process may run on (its affinity mask), at least 1.
fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How a mount is being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Worker threads reading and writing `/dev/fuse`.
    Device,
    /// fuse-over-io_uring: a thread and a ring per queue (one queue per possible
    /// CPU), plus one `/dev/fuse` worker.
    Uring {
        /// Number of queues (rings).
        queues: usize,
        /// Registered entries per queue.
        depth: usize,
    },
}

/// Switches the workers of `control` to blocking reads once a test poke of the
/// mount at `mountpoint` is answered by `session` (see
/// [`Running::enable_blocking_reads`]); never once unmounting has begun
/// ([`Control::blocking_closed`], checked under the lock that publishes the root).
fn switch_to_blocking_reads<F: Filesystem>(
    session: &Session<F>,
    control: &Control,
    device: &Channel,
    mountpoint: std::path::PathBuf,
) {
    let root = match open_root(&mountpoint, None) {
        Ok(fd) => fd,
        Err(e) => {
            log::debug!("cannot open the mount's root ({e}): workers wait in epoll");
            return;
        }
    };
    let dev = match crate::dev::MountIdentity::of_fd(std::os::fd::AsFd::as_fd(&root)) {
        Ok(id) => id,
        Err(e) => {
            log::debug!("cannot stat the mount's root ({e}): workers wait in epoll");
            return;
        }
    };
    crate::trace::phase("blocking reads: the root opened, poking");
    let before = session.stats().pokes.load(Ordering::Relaxed);
    let answered = poke(&root).is_ok() && session.stats().pokes.load(Ordering::Relaxed) > before;
    drop(root);
    if !answered {
        log::debug!("a poke was not answered by this session: workers wait in epoll");
        return;
    }
    let mut published = lock(&control.root);
    if control.blocking_closed.load(Ordering::Acquire) || control.mode().is_leaving() {
        return;
    }
    if let Err(e) = device.set_nonblocking(false) {
        log::debug!("cannot clear O_NONBLOCK ({e}): workers wait in epoll");
        return;
    }
    *published = Some((mountpoint, dev));
    control.blocking.store(true, Ordering::Release);
}

/// Spawns a worker thread named `name` that runs [`run_worker`] over the
/// transport `make` builds on the thread (`Err` ends the thread before serving).
/// The slot is published before the thread starts, and marked exited when it
/// ends, however it ends (a panic in the library included).
fn spawn_thread<F: Filesystem, T: Transport>(
    slot: Arc<WorkerSlot>,
    session: &Arc<Session<F>>,
    control: &Arc<Control>,
    make: impl FnOnce(&WorkerSlot) -> io::Result<T> + Send + 'static,
) -> io::Result<JoinHandle<io::Result<()>>> {
    let name = slot.name.clone();
    control.add_worker(Arc::clone(&slot));
    let session = Arc::clone(session);
    let control = Arc::clone(control);
    let spawned = std::thread::Builder::new().name(name.clone()).spawn({
        let slot = Arc::clone(&slot);
        let control = Arc::clone(&control);
        move || {
            /// Marks the slot exited when the thread ends, even by a panic.
            struct Exit<'a>(&'a Control, &'a WorkerSlot);
            impl Drop for Exit<'_> {
                fn drop(&mut self) {
                    self.0.exited(self.1);
                }
            }
            let _exit = Exit(&control, &slot);
            slot.set_current_thread();
            block_termination_signals();
            // A panic in the filesystem is caught by the session's call step; one
            // anywhere else in the loop (the library, a hook) ends the thread as
            // an error does.
            let mut started = false;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut t = make(&slot)?;
                started = true;
                run_worker(&session, &mut t, &slot, &control)
            }))
            .unwrap_or_else(|p| {
                Err(io::Error::other(format!(
                    "panicked: {}",
                    crate::proto::step::panic_message(p.as_ref())
                )))
            });
            if let Err(e) = &r {
                if !started && slot.retirable && control.running() > 1 {
                    // An extra pool worker that could not set up (no descriptor,
                    // no memory): the others serve on; the pool tries again later.
                    log::error!("{name} could not start: {e}");
                } else {
                    control.fail(&name, e);
                }
            }
            r
        }
    });
    if spawned.is_err() {
        control.exited(&slot);
    }
    spawned
}

/// Spawns `/dev/fuse` worker `i` (a pool worker: it may be asked to retire);
/// returns its thread and its published slot.
fn spawn_worker<F: Filesystem>(
    i: usize,
    session: &Arc<Session<F>>,
    channel: &Channel,
    control: &Arc<Control>,
    request_slot: Option<(SlotData, SlotMark)>,
) -> io::Result<(JoinHandle<io::Result<()>>, Arc<WorkerSlot>)> {
    let chan = channel.try_clone()?;
    let size = session.read_buffer_size();
    let slot = Arc::new(WorkerSlot::new(format!("fuse-worker-{i}"))?.retirable());
    let h = spawn_thread(Arc::clone(&slot), session, control, move |slot| {
        DeviceTransport::new(chan, &slot.waker, size, request_slot)
    })?;
    Ok((h, slot))
}

/// A mount being served by worker threads.
pub struct Running<F: Filesystem> {
    session: Arc<Session<F>>,
    control: Arc<Control>,
    /// Workers, queue threads and the pool's watcher (which adds workers).
    workers: pool::Handles,
    mount: Mutex<Option<Mount>>,
    /// A descriptor of the connection, to switch it to blocking reads.
    device: Channel,
    notifier: Notifier<F>,
    backend: Backend,
    /// The io_uring entries' memory, and (once, at a recovery) what each queue
    /// does with its entries when it starts.
    ring: Mutex<Option<(Arc<RingArea>, Option<RingStart>)>>,
}

/// Workers stay parked while this guard lives (see [`Running::pause`]).
pub struct PauseGuard<'a> {
    control: &'a Control,
    /// How long parking took: the longest time a request could have waited.
    pub parked_in: Duration,
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        self.control.change_mode(Mode::Paused, Mode::Serving);
    }
}

impl<F: Filesystem> Running<F> {
    /// Waits until INIT has been answered (at most 30 s); unmounts on failure.
    fn wait_init(&self) -> Result<(), ServeError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.session.init_state().is_none()
            || !self.control.init_replied.load(Ordering::Acquire)
        {
            if let Some(msg) = self.session.init_panic() {
                let _ = self.unmount();
                return Err(ServeError::InitPanicked(msg));
            }
            if let Some(missing) = self.session.init_missing() {
                let _ = self.unmount();
                return Err(ServeError::InitFlagsMissing(missing));
            }
            if let Some(e) = self.failure() {
                // Only a fresh mount waits here (a restored session's INIT was
                // answered before): nobody could recover it, so it goes.
                let _ = self.unmount();
                return Err(e);
            }
            if self.control.running() == 0 || Instant::now() > deadline {
                if self.session.init_state().is_some() {
                    // Answered, but the reply was not delivered (the mount went away).
                    break;
                }
                let _ = self.unmount();
                return Err(ServeError::NoInit);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Starts one io_uring queue thread per possible CPU and waits until each has
    /// registered its entries. Returns the number of queues and their depth (a
    /// recovered area's).
    fn start_queues(&self, options: &UringOptions) -> Result<(usize, usize), ServeError> {
        let Some(init) = self.session.init_state() else {
            return Err(ServeError::NoInit);
        };
        if !(1..=uring::MAX_DEPTH).contains(&options.depth) {
            return Err(ServeError::Uring(format!(
                "a queue depth of {} is out of range (1 to {})",
                options.depth,
                uring::MAX_DEPTH
            )));
        }
        let page = crate::dev::page_size();
        let payload_len =
            UringQueue::payload_len_for(init.result.max_write, init.result.max_pages, page);
        let queues = uring::queue_count();
        let qid_max = u16::try_from(queues).map_err(|_| {
            ServeError::Uring(format!(
                "{queues} possible CPUs: more queues than supported"
            ))
        })?;
        let (area, how) = match lock(&self.ring).take() {
            Some((area, how)) => {
                if !area.fits(queues, payload_len) {
                    return Err(ServeError::Uring(format!(
                        "the ring area ({:?}) does not fit this connection ({queues} queues, \
                         {payload_len}-byte payloads)",
                        area.geometry()
                    )));
                }
                (area, how)
            }
            None => {
                let name = options.restartable.then_some("fuse-ring-area");
                let area = RingArea::new(name, queues, options.depth, payload_len)
                    .map_err(|e| ServeError::Uring(format!("the entries' memory: {e}")))?;
                (Arc::new(area), None)
            }
        };
        let depth = area.geometry().depth as usize;
        let recovering = matches!(how, Some(RingStart::Recover(_)));
        let how_filled = match &how {
            Some(RingStart::Live(f)) => Some(f.clone()),
            _ => None,
        };
        // Per queue: the slots it serves and what it does with each at start.
        let mut plans: Vec<(Vec<usize>, Vec<EntryStart>)> = match how {
            Some(RingStart::Recover(plan)) => {
                plan.into_iter().map(|q| q.into_iter().unzip()).collect()
            }
            Some(RingStart::Live(filled)) => {
                let serving = area.generation().saturating_sub(1);
                (0..queues)
                    .map(|q| {
                        if filled.get(q).copied().unwrap_or(false) {
                            // Adopted whole later: no fresh entry.
                            return (Vec::new(), Vec::new());
                        }
                        let free: Vec<usize> = area
                            .free_slots(q, serving)
                            .into_iter()
                            .take(depth)
                            .collect();
                        let n = free.len();
                        (free, vec![EntryStart::Register; n])
                    })
                    .collect()
            }
            None => (0..queues)
                .map(|_| ((0..depth).collect(), vec![EntryStart::Register; depth]))
                .collect(),
        };
        plans.resize_with(queues, || ((0..0).collect(), Vec::new()));
        let adopted_whole = |q: usize| matches!(&how_filled, Some(f) if f.get(q) == Some(&true));
        if let Some(q) = (0..queues).find(|&q| plans[q].0.is_empty() && !adopted_whole(q)) {
            return Err(ServeError::Uring(format!(
                "io_uring queue {q} has no free slot in the ring area (the predecessor owns \
                 every one of them)"
            )));
        }
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let mut started = 0;
        for (qid, (slots, start)) in (0..qid_max).zip(plans) {
            if slots.is_empty() {
                continue;
            }
            self.spawn_queue(qid, &area, slots, start, &tx, (options.pin, false))?;
            started += 1;
        }
        drop(tx);
        for _ in 0..started {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let hint = if e.raw_os_error() == Some(nix::libc::EPERM) {
                        " (is io_uring disabled by the sysctl kernel.io_uring_disabled?)"
                    } else {
                        ""
                    };
                    return Err(ServeError::Uring(format!("{e}{hint}")));
                }
                Err(_) => {
                    return Err(ServeError::Uring(
                        "an io_uring queue did not register within 10 s".to_owned(),
                    ))
                }
            }
        }
        log::info!(
            "serving through io_uring: {queues} queues of {depth} entries, {payload_len}-byte \
             payload buffers, entries at {:#x}{}; slots per queue {}, this process's {:?}",
            area.base(),
            if recovering { " (recovered)" } else { "" },
            area.geometry().slots,
            area.owned_per_queue()
        );
        *lock(&self.ring) = Some((area, None));
        crate::trace::phase("io_uring queues registered");
        if recovering {
            self.drain_queues(queues);
            crate::trace::phase("io_uring queues drained");
        }
        Ok((queues, depth))
    }

    /// Starts a thread serving queue `qid` on `slots` of `area` (`start[i]` for
    /// `slots[i]`); it reports on `tx` once its entries are registered (or failed).
    /// `pin`: to the queue's CPU; `adopting`: a live successor's adoption (a
    /// refused commit leaves its slot free).
    fn spawn_queue(
        &self,
        qid: u16,
        area: &Arc<RingArea>,
        slots: Vec<usize>,
        start: Vec<EntryStart>,
        tx: &std::sync::mpsc::Sender<io::Result<()>>,
        (pin, adopting): (bool, bool),
    ) -> Result<(), ServeError> {
        let Some(init) = self.session.init_state() else {
            return Err(ServeError::NoInit);
        };
        let page = crate::dev::page_size();
        let payload_len =
            UringQueue::payload_len_for(init.result.max_write, init.result.max_pages, page);
        let read_size = self.session.read_buffer_size();
        let device = self.device.try_clone()?;
        let tx = tx.clone();
        let area = Arc::clone(area);
        let make = move |slot: &WorkerSlot| {
            if pin {
                if let Err(e) = uring::pin_to_cpu(usize::from(qid)) {
                    log::debug!("cannot pin io_uring queue {qid} to its CPU: {e}");
                }
            }
            let setup = UringQueue::new(device.as_fd(), area, qid, &slots, payload_len)
                .and_then(|mut q| q.start(&start, !adopting).map(|()| q))
                .and_then(|q| RingTransport::new(q, read_size, Arc::clone(&slot.waker)));
            drop(device);
            match setup {
                Ok(t) => {
                    log::debug!("io_uring queue {} registered on slots {slots:?}", t.qid());
                    let _ = tx.send(Ok(()));
                    Ok(t)
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    Err(e)
                }
            }
        };
        let h = spawn_thread(
            Arc::new(WorkerSlot::new(format!("fuse-uring-{qid}"))?),
            &self.session,
            &self.control,
            make,
        )?;
        lock(&self.workers).push(h);
        Ok(())
    }

    /// A live handoff's successor, once its predecessor has released its rings:
    /// answers the requests the predecessor's entries held (received while it was
    /// paused) through the session, as [`Server::recover_ring`] does, and adopts
    /// those entries (a queue thread per queue that had any commits the replies;
    /// the entries then serve on in this process). Then pokes every CPU's queue.
    ///
    /// # Errors
    /// [`ServeError::Uring`] when the mount is not served through a ring area, or
    /// a queue cannot start.
    pub fn adopt_ring(&self) -> Result<RecoveredRing, ServeError> {
        let Some(area) = self.ring_area() else {
            return Err(ServeError::Uring("no ring area to adopt from".to_owned()));
        };
        let (report, plan) = recover::recover_ring(&self.session, &area, true);
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let mut started = 0;
        for (qid, q) in plan.into_iter().enumerate() {
            if q.is_empty() {
                continue;
            }
            let qid = u16::try_from(qid)
                .map_err(|_| ServeError::Uring(format!("queue {qid} out of range")))?;
            let (slots, start): (Vec<usize>, Vec<EntryStart>) = q.into_iter().unzip();
            log::info!("io_uring queue {qid}: adopting the predecessor's slots {slots:?}");
            self.spawn_queue(qid, &area, slots, start, &tx, (true, true))?;
            started += 1;
        }
        drop(tx);
        for _ in 0..started {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ServeError::Uring(e.to_string())),
                Err(_) => {
                    return Err(ServeError::Uring(
                        "an adopting io_uring queue did not start within 10 s".to_owned(),
                    ))
                }
            }
        }
        log::info!(
            "io_uring: after adopting, this process's slots per queue {:?} (of {})",
            area.owned_per_queue(),
            area.geometry().slots
        );
        self.drain_queues(area.geometry().queues as usize);
        Ok(report)
    }

    /// After a recovery: a request from each CPU (a `statfs` of the root, from a
    /// child process pinned to it), so that every queue fetches the requests that
    /// waited in it while no process served (a REGISTER does not pull them; a
    /// commit on that queue does, `fs/fuse/dev_uring.c`: `fuse_uring_do_register`
    /// only makes the entry available, `fuse_uring_commit_fetch` calls
    /// `fuse_uring_next_fuse_req`).
    fn drain_queues(&self, queues: usize) {
        let Some(mountpoint) = self.mountpoint() else {
            return;
        };
        let root = match open_root(&mountpoint, None) {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!("cannot open the mount's root to drain the io_uring queues: {e}");
                return;
            }
        };
        // One thread per CPU, so that a poke that is not answered (it would be a
        // bug) delays `ready` by a bounded time, not forever.
        let (tx, rx) = std::sync::mpsc::channel();
        for cpu in 0..queues {
            let fd = match root.try_clone() {
                Ok(f) => f,
                Err(e) => {
                    log::warn!("draining io_uring queue {cpu}: {e}");
                    continue;
                }
            };
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fuse-drain-{cpu}"))
                .spawn(move || {
                    let r = crate::dev::statfs_in_child_on(std::os::fd::AsFd::as_fd(&fd), cpu);
                    let _ = tx.send((cpu, r));
                });
            if let Err(e) = spawned {
                log::warn!("draining io_uring queue {cpu}: {e}");
            }
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, Ok(()))) => {}
                // An offline or forbidden CPU: no caller can be queued there now.
                Ok((cpu, Err(e))) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    log::debug!("io_uring queue {cpu}: not drained (CPU not usable)");
                }
                Ok((cpu, Err(e))) => log::warn!("draining io_uring queue {cpu}: {e}"),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    log::error!("draining the io_uring queues: a poke was not answered within 5 s");
                    break;
                }
            }
        }
    }

    /// The io_uring entries' memory, while the mount is served through io_uring:
    /// with [`UringOptions::restartable`] a memfd ([`RingArea::fd`]) for the fd
    /// store, which a successor maps back ([`RingArea::from_fd`]) and recovers
    /// from ([`Server::recover_ring`]).
    pub fn ring_area(&self) -> Option<Arc<RingArea>> {
        lock(&self.ring).as_ref().map(|(a, _)| Arc::clone(a))
    }

    /// Whether the io_uring entries are in a memfd a successor can map
    /// ([`UringOptions::restartable`]).
    fn ring_is_restartable(&self) -> bool {
        lock(&self.ring)
            .as_ref()
            .is_some_and(|(a, _)| a.fd().is_some())
    }

    /// Which transport serves the mount.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How many requests were served from io_uring entries so far (the rest came
    /// through `/dev/fuse`): 0 with [`Backend::Device`].
    pub fn ring_requests(&self) -> u64 {
        self.control.ring_requests.load(Ordering::Relaxed)
    }

    /// The session (tables, counters, the filesystem).
    pub fn session(&self) -> &Arc<Session<F>> {
        &self.session
    }

    /// Sends notifications to the kernel for this mount.
    pub fn notifier(&self) -> &Notifier<F> {
        &self.notifier
    }

    /// The mountpoint, while mounted.
    pub fn mountpoint(&self) -> Option<std::path::PathBuf> {
        lock(&self.mount)
            .as_ref()
            .map(|m| m.mountpoint().to_path_buf())
    }

    /// Switches the workers to blocking reads — one `read(2)` per request, the
    /// kernel's exclusive wake-up — once a test poke shows that the mount's root is
    /// reachable from this process, so that parking can still wake them (see
    /// [`POKE_NAME`]). Otherwise the workers keep waiting in `epoll` with a waker.
    fn enable_blocking_reads(&self) {
        let Some(mountpoint) = self.mountpoint() else {
            return;
        };
        switch_to_blocking_reads(&self.session, &self.control, &self.device, mountpoint);
    }

    /// As [`Running::enable_blocking_reads`], from a thread of its own: the
    /// workers wait in `epoll` until the test poke is answered. (A worker that a
    /// switch catches between `epoll` and its read sleeps in `read(2)` while
    /// marked waiting: the poker wakes such workers too, see `poke.rs`.)
    fn enable_blocking_reads_later(&self) {
        let Some(mountpoint) = self.mountpoint() else {
            return;
        };
        let device = match self.device.try_clone() {
            Ok(d) => d,
            Err(e) => {
                log::debug!("cannot duplicate the device ({e}): workers wait in epoll");
                return;
            }
        };
        let (session, control) = (Arc::clone(&self.session), Arc::clone(&self.control));
        let spawned = std::thread::Builder::new()
            .name("fuse-blocking".into())
            .spawn(move || {
                block_termination_signals();
                switch_to_blocking_reads(&session, &control, &device, mountpoint);
                crate::trace::phase("blocking reads decided (a poke answered)");
            });
        if let Err(e) = spawned {
            log::debug!("cannot start a thread to test a poke ({e}): workers wait in epoll");
        }
    }

    /// Parks every worker at a request boundary and returns once all are parked
    /// (or have exited). Nothing is in flight in this process while the guard lives.
    ///
    /// This waits for as long as a worker is in a request: a filesystem method that
    /// never returns makes it wait forever (it logs what it waits for every 5 s).
    /// [`Running::pause_within`] gives up after a bound instead.
    ///
    /// Deferred requests ([`RequestContext::defer`](crate::RequestContext::defer))
    /// count as in progress: the pause first waits, still serving, until none is
    /// outstanding, then parks the workers; if a request was deferred meanwhile,
    /// the workers serve on until it is answered and the pause starts over. A
    /// snapshot therefore never holds a request half-answered. A deferred request
    /// that is never answered (a SETLKW whose lock is never released) keeps
    /// `pause` waiting; `pause_within` gives up and names it.
    pub fn pause(&self) -> PauseGuard<'_> {
        loop {
            // Without a deadline the wait only ends when every worker has parked.
            if let Ok(g) = self.pause_until(None) {
                return g;
            }
        }
    }

    /// As [`Running::pause`], but gives up once `limit` has passed with a worker
    /// still in a request (a filesystem method that does not return) or a deferred
    /// request still unanswered: the workers resume and the error names the
    /// requests that were still running.
    ///
    /// # Errors
    /// [`ServeError::Busy`] after `limit`.
    pub fn pause_within(&self, limit: Duration) -> Result<PauseGuard<'_>, ServeError> {
        self.pause_until(Some(Instant::now() + limit))
    }

    fn pause_until(&self, deadline: Option<Instant>) -> Result<PauseGuard<'_>, ServeError> {
        let deferred = &self.session.deferred;
        loop {
            // Deferred requests are answered while the workers serve (a ring
            // entry is committed by its queue's thread, which must not be parked).
            if !deferred.wait_none(deadline) {
                return Err(ServeError::Busy(
                    deferred
                        .outstanding()
                        .into_iter()
                        .map(|(unique, opcode)| format!("deferred {opcode} unique={unique}"))
                        .collect(),
                ));
            }
            let guard = self.park_until(deadline)?;
            if deferred.outstanding().is_empty() {
                return Ok(guard);
            }
            // A request was deferred while the workers were parking: serve on
            // until it is answered, then park again.
            drop(guard);
        }
    }

    fn park_until(&self, deadline: Option<Instant>) -> Result<PauseGuard<'_>, ServeError> {
        let start = Instant::now();
        let c = &self.control;
        // Pausing a mount whose workers are leaving only waits for them to leave.
        c.change_mode(Mode::Serving, Mode::Paused);
        c.wake_all();
        poke_workers(c);
        let mut next_note = start + Duration::from_secs(5);
        let parked = c.wait_until(
            |c| {
                c.count(|p| !matches!(p, Phase::Parked | Phase::Exited)) == 0
                    || (c.mode().is_leaving() && c.running() == 0)
            },
            deadline,
            || {
                c.wake_all();
                poke_workers(c);
                if Instant::now() >= next_note {
                    next_note += Duration::from_secs(5);
                    log::warn!(
                        "pausing has waited {:?} for requests in progress: {:?}",
                        start.elapsed(),
                        c.in_requests()
                    );
                }
            },
        );
        if !parked {
            let waiting_on = c.in_requests();
            c.change_mode(Mode::Paused, Mode::Serving);
            return Err(ServeError::Busy(waiting_on));
        }
        Ok(PauseGuard {
            control: c,
            parked_in: start.elapsed(),
        })
    }

    /// Why serving ended, if a serving thread (an io_uring queue's, a `/dev/fuse`
    /// worker, the pool's watcher) ended for a reason other than an orderly
    /// stop, pause or unmount: an error of the kernel transport, or a panic
    /// outside the filesystem's methods (those are answered `EIO` and the worker
    /// goes on). Such a thread leaves the requests it owns unanswered (a queue:
    /// every request from its CPU), so the other threads are stopped at once
    /// ([`ServeError::ThreadFailed`]); this waits for them a bounded time
    /// ([`UNMOUNT_GRACE`], pokes included), leaving a stuck one behind, logged.
    /// The mount is not unmounted: the daemon should exit with the error (non-zero),
    /// as after a crash; a fd store (`fuse-live-keeper`, systemd) keeps the
    /// connection and the restarted daemon recovers it; without one, the
    /// connection ends with the process (`ENOTCONN`, as for any crash).
    ///
    /// [`Running::run_until_signal`] and `fuse_snapshot`'s `serve_with_upgrades`
    /// return this error; a daemon with a loop of its own calls this in it.
    pub fn failure(&self) -> Option<ServeError> {
        let failure = self.control.failure()?;
        let c = &self.control;
        if c.running() > 0 {
            c.wake_all();
            poke_workers(c);
            let deadline = Instant::now() + UNMOUNT_GRACE;
            if !c.wait_until(
                |c| c.running() == 0,
                Some(deadline),
                || {
                    c.wake_all();
                    poke_workers(c);
                },
            ) {
                log::error!(
                    "after {} failed, {} serving thread(s) did not stop and are left \
                     behind; requests in progress: {:?}",
                    failure.thread,
                    c.running(),
                    c.in_requests()
                );
            }
            self.join_finished_workers();
        }
        Some(ServeError::ThreadFailed {
            thread: failure.thread.clone(),
            error: failure.error(),
        })
    }

    /// How many serving threads have started and not ended: `/dev/fuse` workers
    /// (one per usable CPU at first, more up to the number asked while requests
    /// are held in the filesystem: docs/DESIGN.md, "The `/dev/fuse` worker pool")
    /// and, with io_uring, the queue threads.
    pub fn workers(&self) -> usize {
        self.control.running()
    }

    /// True while at least one worker serves.
    pub fn is_serving(&self) -> bool {
        self.control.running() > 0
    }

    /// Unmounts (lazily) and waits for the workers to see the connection end.
    ///
    /// The unmount is lazy: the mount leaves the namespace at once, but the kernel
    /// keeps the connection while files on it are open, and the workers go on
    /// serving them. If the connection has not ended after [`UNMOUNT_GRACE`], the
    /// workers are asked to stop, and those that have not within another
    /// [`UNMOUNT_GRACE`] (stuck in a filesystem method that does not return, or in
    /// a `read(2)` that nothing can wake any more) are left behind, logged: this
    /// never waits on a request that cannot finish. When this process exits and
    /// its device fds close, the kernel ends the connection and such files and
    /// requests fail with ENOTCONN, as with any FUSE daemon that exits.
    pub fn unmount(&self) -> Result<(), ServeError> {
        let c = &self.control;
        // A test poke still in flight (a restored session's) must not switch
        // reads on from now on.
        c.blocking_closed.store(true, Ordering::Release);
        drop(lock(&c.root));
        if c.blocking.swap(false, Ordering::AcqRel) {
            // Back to waker-driven waits while the mount can still be poked: after
            // the unmount, workers blocked in read(2) could only be woken by the end
            // of the connection, which files left open would postpone. A poke may
            // itself wait (on the root's lock held by a request that cannot
            // finish), so the wait for the blocked readers is bounded.
            if let Err(e) = self.device.set_nonblocking(true) {
                log::warn!("cannot set O_NONBLOCK back before unmounting: {e}");
            }
            poke_workers(c);
            let deadline = Instant::now() + UNMOUNT_GRACE;
            if !c.wait_until(
                |c| c.count(|p| p == Phase::Blocked) == 0,
                Some(deadline),
                || poke_workers(c),
            ) {
                log::warn!("a worker blocked in read(2) could not be woken before unmounting");
            }
            *lock(&c.root) = None;
        }
        if let Some(m) = lock(&self.mount).take() {
            m.unmount()?;
        }
        let deadline = Instant::now() + UNMOUNT_GRACE;
        if !c.wait_until(|c| c.running() == 0, Some(deadline), || {}) {
            log::warn!("files are still open on the unmounted filesystem: stopping anyway");
            c.set_mode(Mode::Stopping);
            c.wake_all();
            let deadline = Instant::now() + UNMOUNT_GRACE;
            if !c.wait_until(|c| c.running() == 0, Some(deadline), || c.wake_all()) {
                log::error!(
                    "{} worker(s) did not stop and are left behind; requests in progress: {:?}",
                    c.running(),
                    c.in_requests()
                );
            }
        }
        self.join_finished_workers();
        Ok(())
    }

    /// Runs `f` on the mount, while this process holds it (not after [`Running::stop`]
    /// or [`Running::unmount`]): e.g. to `dup` its descriptors for a live handoff.
    ///
    /// `None` as well when the mount is served through io_uring
    /// ([`Backend::Uring`]) with entries in anonymous memory: its descriptors must
    /// not be handed to another process, which could not answer the requests held
    /// in the entries (docs/DESIGN.md), so a handoff that asks for them is refused
    /// before anything is committed. With [`UringOptions::restartable`] the
    /// entries are in a memfd a successor maps back, and this works.
    pub fn with_mount<R>(&self, f: impl FnOnce(&Mount) -> R) -> Option<R> {
        if matches!(self.backend, Backend::Uring { .. }) && !self.ring_is_restartable() {
            log::error!("{URING_NO_HANDOFF}");
            return None;
        }
        lock(&self.mount).as_ref().map(f)
    }

    /// Stops the workers without unmounting: the mount stays, and whoever holds a
    /// device fd (a new process) can serve it. The filesystem is not told (no
    /// `destroy`): the session lives on elsewhere; [`Running::run_until_signal`] then
    /// returns without unmounting.
    ///
    /// Refused with the io_uring backend: this logs an error, keeps serving and
    /// returns `None` (see [`Running::try_stop`]).
    pub fn stop(&self) -> Option<Mount> {
        match self.try_stop() {
            Ok(m) => m,
            Err(e) => {
                log::error!("{e}");
                None
            }
        }
    }

    /// As [`Running::stop`], with an error instead of a log line when stopping is
    /// refused.
    ///
    /// # Errors
    /// [`ServeError::Unsupported`] with the io_uring backend over anonymous memory
    /// (with [`UringOptions::restartable`] this stops; a live successor registers
    /// first, see [`Server::take_ring_live`]): closing the rings
    /// leaves the kernel's ring entries of this connection in the "in userspace"
    /// state, with no way for another process to register in their place, so the
    /// mount could not be served by anyone; it keeps being served by this process.
    pub fn try_stop(&self) -> Result<Option<Mount>, ServeError> {
        // A ring-served mount with its entries in a memfd stops for a live
        // handoff: the queue threads leave, closing their rings (the kernel
        // cancels their available entries; those holding a request keep it for
        // the successor's `adopt_ring`). Over anonymous memory no one could.
        if matches!(self.backend, Backend::Uring { .. }) && !self.ring_is_restartable() {
            return Err(ServeError::Unsupported(URING_NO_HANDOFF));
        }
        self.control.set_mode(Mode::Released);
        self.control.wake_all();
        poke_workers(&self.control);
        // Waits for the workers to finish the requests they serve: a worker left
        // behind could serve one more request with this process's stale session
        // after another process took over. A handoff pauses first
        // (every worker parked), so this does not wait then.
        let start = Instant::now();
        self.control.wait_until(
            |c| c.running() == 0,
            None,
            || {
                self.control.wake_all();
                poke_workers(&self.control);
                if start.elapsed() > Duration::from_secs(5) {
                    log::warn!(
                        "stopping waits for requests in progress: {:?}",
                        self.control.in_requests()
                    );
                }
            },
        );
        self.join_workers();
        Ok(lock(&self.mount).take())
    }

    /// Waits until every worker has exited (the mount went away, or DESTROY, or a
    /// serving thread failed: then [`Running::failure`] says why).
    pub fn join(&self) {
        self.join_workers();
        self.session.shutdown();
    }

    fn join_workers(&self) {
        // Until none is left: the pool's watcher may have added workers while
        // the first ones were joined (it leaves with them).
        loop {
            let workers = std::mem::take(&mut *lock(&self.workers));
            if workers.is_empty() {
                return;
            }
            for w in workers {
                let _ = w.join();
            }
        }
    }

    /// Joins the workers whose thread has ended; detaches the others (they end
    /// with the process).
    fn join_finished_workers(&self) {
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers {
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }

    /// Serves until the filesystem is unmounted (by anyone) or the process receives
    /// SIGINT or SIGTERM, then unmounts and joins the workers. Call
    /// [`block_termination_signals`] at the start of `main`, so that a signal sent
    /// before this call is held for it instead of killing the process.
    pub fn run_until_signal(&self) -> Result<(), ServeError> {
        use nix::sys::signal::{SigSet, Signal};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block().map_err(io::Error::from)?;
        let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        loop {
            // Read before the failure: a failing thread records it before any
            // thread leaves (and the check after the join catches the rest).
            let serving = self.is_serving();
            if let Some(e) = self.failure() {
                return Err(e);
            }
            if !serving {
                break;
            }
            match sfd.read_signal() {
                Ok(Some(sig)) => {
                    log::info!("signal {} received: unmounting", sig.ssi_signo);
                    return self.unmount();
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&sfd),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        }
        self.join_workers();
        if let Some(e) = self.failure() {
            return Err(e);
        }
        if self.control.mode() == Mode::Released {
            // Stopped for a handoff: another process serves the session now.
            return Ok(());
        }
        // Unmounted from outside: the mount is gone; drop our handle quietly.
        if let Some(m) = lock(&self.mount).take() {
            let _ = m.unmount();
        }
        self.session.shutdown();
        Ok(())
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread, so that they reach the thread
/// that waits for them ([`Running::run_until_signal`]) and not a worker. Call it
/// first in `main`, before announcing that the mount serves: a signal that arrives
/// between the announcement and [`Running::run_until_signal`] would otherwise
/// take its default action and kill the process (the library's own threads block
/// both signals themselves).
pub fn block_termination_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    let _ = set.thread_block();
}
