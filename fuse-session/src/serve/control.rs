//! What every worker of a mount shares: what they are asked to do ([`Mode`]), where
//! each one is ([`Phase`], per worker), and how to wake them.
use std::path::PathBuf;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::dev::Waker;
use crate::notify::RetrieveWaiters;
use crate::proto::session::lock;

/// What the workers are asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    /// Serve requests.
    Serving = 0,
    /// Park at the next request boundary and stay parked
    /// ([`Running::pause`](super::Running::pause)).
    Paused = 1,
    /// Leave at the next request boundary: unmounting, or the connection ended.
    Stopping = 2,
    /// Leave at the next request boundary: the mount was released to another
    /// process ([`Running::stop`](super::Running::stop)); nobody unmounts it.
    Released = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Serving,
            1 => Mode::Paused,
            2 => Mode::Stopping,
            _ => Mode::Released,
        }
    }

    /// True for the modes in which workers leave.
    pub(crate) fn is_leaving(self) -> bool {
        matches!(self, Mode::Stopping | Mode::Released)
    }
}

/// Where one worker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Waiting for a request where its waker reaches it.
    Waiting = 0,
    /// In a blocking `read(2)` of the device: only a request (a poke) or the end of
    /// the connection wakes it.
    Blocked = 1,
    /// Serving a request (its unique and opcode are in the slot).
    InRequest = 2,
    /// Parked at a request boundary.
    Parked = 3,
    /// The thread has ended (or is about to).
    Exited = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Waiting,
            1 => Phase::Blocked,
            2 => Phase::InRequest,
            3 => Phase::Parked,
            _ => Phase::Exited,
        }
    }
}

/// One worker's published state. Written only by its worker (relaxed stores, two
/// per request), read by whoever pauses or stops.
#[derive(Debug)]
pub(crate) struct WorkerSlot {
    pub(crate) name: String,
    pub(crate) waker: Arc<Waker>,
    phase: AtomicU8,
    unique: AtomicU64,
    opcode: AtomicU32,
    /// The worker thread's id (0 until it runs), for the pool's look at its state.
    tid: AtomicI32,
    /// A pool worker, which leaves when the pool asks one to
    /// ([`Control::take_retirement`]).
    pub(crate) retirable: bool,
}

impl WorkerSlot {
    pub(crate) fn new(name: String) -> std::io::Result<WorkerSlot> {
        Ok(WorkerSlot {
            name,
            waker: Arc::new(Waker::new()?),
            phase: AtomicU8::new(Phase::Waiting as u8),
            unique: AtomicU64::new(0),
            opcode: AtomicU32::new(0),
            tid: AtomicI32::new(0),
            retirable: false,
        })
    }

    /// The same slot, for a pool worker (see [`WorkerSlot::retirable`]).
    pub(crate) fn retirable(self) -> WorkerSlot {
        WorkerSlot {
            retirable: true,
            ..self
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    pub(crate) fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    /// Records the calling thread as this worker's.
    pub(crate) fn set_current_thread(&self) {
        self.tid
            .store(nix::unistd::gettid().as_raw(), Ordering::Relaxed);
    }

    /// The worker thread's id, once it runs.
    pub(crate) fn tid(&self) -> Option<i32> {
        Some(self.tid.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// The unique of the request the worker serves or served last.
    pub(crate) fn unique(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }

    /// The worker took request `unique` with `opcode`.
    pub(crate) fn enter(&self, unique: u64, opcode: u32) {
        self.unique.store(unique, Ordering::Relaxed);
        self.opcode.store(opcode, Ordering::Relaxed);
        self.set_phase(Phase::InRequest);
    }

    /// What the worker is serving, for logs: "NAME: OPCODE unique=U".
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}: {} unique={}",
            self.name,
            fuse_wire::Opcode(self.opcode.load(Ordering::Relaxed)),
            self.unique.load(Ordering::Relaxed)
        )
    }
}

/// Shared by the workers of one mount and its [`Running`](super::Running).
#[derive(Default)]
pub(crate) struct Control {
    /// A [`Mode`].
    mode: AtomicU8,
    /// `/dev/fuse` workers read with blocking `read(2)` (woken by pokes).
    pub(crate) blocking: AtomicBool,
    /// The mountpoint and the identity (unique mount id) of the mount, for pokes. No
    /// descriptor is kept open on the mount: it would keep a lazily unmounted
    /// connection alive and make a plain `umount` fail with EBUSY.
    pub(crate) root: Mutex<Option<(PathBuf, crate::dev::MountIdentity)>>,
    /// A poker thread is running.
    pub(crate) poking: AtomicBool,
    /// Unmounting has begun: reads are not switched to blocking any more (a
    /// restored session's test poke may still be in flight then; it checks this
    /// under the `root` lock, which the unmount takes after setting it).
    pub(crate) blocking_closed: AtomicBool,
    /// A `/dev/fuse` worker delivered the INIT reply (the kernel has processed it).
    pub(crate) init_replied: AtomicBool,
    /// Requests served from io_uring entries.
    pub(crate) ring_requests: AtomicU64,
    /// Callers of `Notifier::retrieve` waiting for the kernel's data.
    pub(crate) retrieve_waiters: Arc<RetrieveWaiters>,
    workers: Mutex<Vec<Arc<WorkerSlot>>>,
    /// The worker pool's watcher dozes until a request enters
    /// ([`Control::request_entered`]).
    pub(crate) pool_dozing: AtomicBool,
    /// Pool workers the watcher asks to leave (extra workers no longer needed).
    pub(crate) retire: AtomicUsize,
    /// Parking, waiting for parked workers, changing the mode, starting a worker.
    pub(crate) park_lock: Mutex<()>,
    pub(crate) cond: Condvar,
    /// The first serving thread that ended unexpectedly, and why
    /// ([`Control::fail`]).
    failure: Mutex<Option<Failure>>,
}

/// A serving thread that ended for a reason other than an orderly stop, pause or
/// unmount: its name and its error (kept as parts: `io::Error` is not `Clone`).
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) thread: String,
    pub(crate) kind: std::io::ErrorKind,
    pub(crate) message: String,
}

impl Failure {
    /// The error, made anew (its kind and text; the text names an OS error's
    /// number).
    pub(crate) fn error(&self) -> std::io::Error {
        std::io::Error::new(self.kind, self.message.clone())
    }
}

impl Control {
    pub(crate) fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// Sets the mode; returns the one before. Wakes parked workers and waiters.
    pub(crate) fn set_mode(&self, m: Mode) -> Mode {
        let _g = lock(&self.park_lock);
        let before = Mode::from_u8(self.mode.swap(m as u8, Ordering::AcqRel));
        self.cond.notify_all();
        before
    }

    /// `from` becomes `to` only if the mode is `from`.
    pub(crate) fn change_mode(&self, from: Mode, to: Mode) -> bool {
        let _g = lock(&self.park_lock);
        let ok = self
            .mode
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.cond.notify_all();
        ok
    }

    /// The connection ended or the session was destroyed: every worker leaves
    /// (a mount released to another process stays released).
    pub(crate) fn connection_ended(&self) {
        {
            let _g = lock(&self.park_lock);
            let _ = self.mode.compare_exchange(
                Mode::Serving as u8,
                Mode::Stopping as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            let _ = self.mode.compare_exchange(
                Mode::Paused as u8,
                Mode::Stopping as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            self.cond.notify_all();
        }
        self.wake_all();
    }

    /// Serving thread `thread` ended unexpectedly with `error`. Unless the
    /// workers are leaving already (an unmount, a stop, a handoff: then this is
    /// only logged), the first such failure is recorded and every other worker is
    /// asked to leave ([`Mode::Stopping`]): a mount with a dead queue or worker
    /// would leave the requests it owns (an io_uring queue: every request from its
    /// CPU) waiting forever while the rest serves on. The session then ends with
    /// the error ([`Running::failure`](super::Running::failure)), and the mount is
    /// left as after a crash, for a fd store's successor to recover.
    pub(crate) fn fail(&self, thread: &str, error: &std::io::Error) {
        let first = {
            let _g = lock(&self.park_lock);
            let mut f = lock(&self.failure);
            let first = f.is_none();
            if first && self.mode().is_leaving() {
                drop((f, _g));
                log::error!("{thread} ended while the workers were leaving: {error}");
                return;
            }
            if first {
                *f = Some(Failure {
                    thread: thread.to_owned(),
                    kind: error.kind(),
                    message: error.to_string(),
                });
            }
            self.mode.store(Mode::Stopping as u8, Ordering::Release);
            self.cond.notify_all();
            first
        };
        if first {
            log::error!(
                "{thread} ended unexpectedly: {error}; stopping the other serving threads \
                 (the mount is left for a restart to recover)"
            );
        } else {
            log::error!("{thread} ended unexpectedly too: {error}");
        }
        self.wake_all();
    }

    /// The first unexpected end of a serving thread, if any ([`Control::fail`]).
    pub(crate) fn failure(&self) -> Option<Failure> {
        lock(&self.failure).clone()
    }

    pub(crate) fn add_worker(&self, slot: Arc<WorkerSlot>) {
        lock(&self.workers).push(slot);
    }

    /// The workers' slots (the pool's watcher looks at them).
    pub(crate) fn worker_slots(&self) -> Vec<Arc<WorkerSlot>> {
        lock(&self.workers).clone()
    }

    /// A worker entered a request: wakes the pool's watcher if it dozes (one
    /// relaxed load otherwise).
    #[inline]
    pub(crate) fn request_entered(&self) {
        if self.pool_dozing.load(Ordering::Relaxed) {
            self.pool_dozing.store(false, Ordering::Relaxed);
            let _g = lock(&self.park_lock);
            self.cond.notify_all();
        }
    }

    /// True if the calling pool worker is to leave (the pool asked one to, and
    /// this one takes it): one relaxed load while nothing is asked.
    #[inline]
    pub(crate) fn take_retirement(&self, slot: &WorkerSlot) -> bool {
        slot.retirable
            && self.retire.load(Ordering::Relaxed) > 0
            && self
                .retire
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
    }

    /// Forgets the slots of workers whose thread has ended.
    pub(crate) fn prune_exited(&self) {
        lock(&self.workers).retain(|w| w.phase() != Phase::Exited);
    }

    pub(crate) fn wake_all(&self) {
        for w in lock(&self.workers).iter() {
            let _ = w.waker.wake();
        }
    }

    /// Number of workers whose thread has not ended.
    pub(crate) fn running(&self) -> usize {
        lock(&self.workers)
            .iter()
            .filter(|w| w.phase() != Phase::Exited)
            .count()
    }

    /// Workers in a phase that `pred` picks.
    pub(crate) fn count(&self, pred: impl Fn(Phase) -> bool) -> usize {
        lock(&self.workers)
            .iter()
            .filter(|w| pred(w.phase()))
            .count()
    }

    /// What the workers still serving a request are serving, for logs.
    pub(crate) fn in_requests(&self) -> Vec<String> {
        lock(&self.workers)
            .iter()
            .filter(|w| w.phase() == Phase::InRequest)
            .map(|w| w.describe())
            .collect()
    }

    /// Parks the calling worker while the mode is [`Mode::Paused`].
    pub(crate) fn park(&self, slot: &WorkerSlot) -> std::io::Result<()> {
        let mut g = lock(&self.park_lock);
        slot.set_phase(Phase::Parked);
        self.cond.notify_all();
        while self.mode() == Mode::Paused {
            g = self.cond.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        slot.set_phase(Phase::Waiting);
        drop(g);
        slot.waker.reset()
    }

    /// The calling worker's thread ends.
    pub(crate) fn exited(&self, slot: &WorkerSlot) {
        let _g = lock(&self.park_lock);
        slot.set_phase(Phase::Exited);
        self.cond.notify_all();
    }

    /// Waits until `done()` or `deadline` (None: no limit), re-running `nudge`
    /// every 50 ms (wakers, pokes). True if done.
    pub(crate) fn wait_until(
        &self,
        done: impl Fn(&Control) -> bool,
        deadline: Option<Instant>,
        mut nudge: impl FnMut(),
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let step = Duration::from_millis(50);
            let step = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    step.min(d - now)
                }
                None => step,
            };
            let g = lock(&self.park_lock);
            if done(self) {
                return true;
            }
            let _ = self
                .cond
                .wait_timeout(g, step)
                .unwrap_or_else(|p| p.into_inner());
            nudge();
        }
    }
}
