//! Serving a mount: worker threads over `dup`s of the device fd, parking at request
//! boundaries, and a clean end on unmount or signal.
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
//! Workers read with `O_NONBLOCK` and, when the queue is empty, wait on the device and
//! a [`Waker`]. [`Running::pause`] wakes every worker; each finishes the request it is
//! serving, parks, and `pause` returns once all are parked: no request is in flight in
//! this process, which is the state a snapshot needs.
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
//! # fuse-over-io_uring
//!
//! [`Server::spawn_uring`] serves through the kernel's io_uring transport instead
//! (see [`crate::dev::uring`]): a pinned thread and a ring per CPU, so that a request
//! is served on the CPU that issued it, with one `io_uring_enter` per request. INIT,
//! FORGET and INTERRUPT still come through one `/dev/fuse` worker. Parking works;
//! handing the mount to another process does not ([`Running::try_stop`]).
use std::io::{self, IoSlice};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::dev::uring::{self, Commit, RingEvent, UringQueue};
use crate::dev::{
    Channel, Mount, MountError, MountOptions, Received, RequestBuffer, Waker, WriteOutcome,
};
use crate::fs::Filesystem;
use crate::notify::Notifier;
use crate::proto::session::lock;
use crate::proto::{Outcome, ReplySpace, Session, POKE_NAME};

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
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Mount(e) => Some(e),
            ServeError::Io(e) => Some(e),
            ServeError::NoInit
            | ServeError::Uring(_)
            | ServeError::Unsupported(_)
            | ServeError::InitPanicked(_) => None,
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
     process or stopped without unmounting: the kernel keeps this process's ring entries \
     and offers no way to take them over; serve with Server::spawn for live handoff";

/// A mounted filesystem, not yet served.
pub struct Server<F: Filesystem> {
    session: Arc<Session<F>>,
    mount: Mount,
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
        if options.is_allow_root() {
            session.restrict_to_uid(Some(nix::unistd::geteuid().as_raw()));
        }
        Ok(Server {
            session: Arc::new(session),
            mount,
        })
    }

    /// Serves an existing session on an existing mount (a restored process).
    pub fn from_parts(session: Session<F>, mount: Mount) -> Self {
        Server {
            session: Arc::new(session),
            mount,
        }
    }

    /// The session.
    pub fn session(&self) -> &Arc<Session<F>> {
        &self.session
    }

    /// Starts `threads` workers (at least one) and waits until INIT has been
    /// answered (at most 30 s), so that the mount serves when this returns.
    pub fn spawn(self, threads: usize) -> Result<Running<F>, ServeError> {
        let running = self.start(threads)?;
        running.wait_init()?;
        running.enable_blocking_reads();
        Ok(running)
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
            for i in 1..options.fallback_threads.max(1) {
                let w = spawn_worker(i, &running.session, &running.device, &running.control)?;
                lock(&running.workers).push(w);
            }
            running.enable_blocking_reads();
            return Ok(running);
        }
        match running.start_queues(options) {
            Ok(queues) => {
                running.backend = Backend::Uring {
                    queues,
                    depth: options.depth,
                };
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
        let Server { session, mount } = self;
        let channel = mount.channel()?;
        let control = Arc::new(Control::default());
        if session.init_state().is_some() {
            // A restored session: INIT was answered by an earlier process.
            control.init_replied.store(true, Ordering::Release);
        }
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            workers.push(spawn_worker(i, &session, &channel, &control)?);
        }
        Ok(Running {
            session: Arc::clone(&session),
            control,
            workers: Mutex::new(workers),
            mount: Mutex::new(Some(mount)),
            device: channel.try_clone()?,
            notifier: Notifier::new(Arc::clone(&session), channel),
            backend: Backend::Device,
        })
    }
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
    /// `/dev/fuse` workers when falling back (default 1).
    pub fallback_threads: usize,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            depth: uring::DEFAULT_DEPTH,
            pin: true,
            required: false,
            fallback_threads: 1,
        }
    }
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

/// Spawns `/dev/fuse` worker `i`.
fn spawn_worker<F: Filesystem>(
    i: usize,
    session: &Arc<Session<F>>,
    channel: &Channel,
    control: &Arc<Control>,
) -> io::Result<JoinHandle<io::Result<()>>> {
    let chan = channel.try_clone()?;
    let waker = Arc::new(Waker::new()?);
    lock(&control.wakers).push(Arc::clone(&waker));
    let session = Arc::clone(session);
    let control = Arc::clone(control);
    control.running.fetch_add(1, Ordering::AcqRel);
    let spawned = std::thread::Builder::new()
        .name(format!("fuse-worker-{i}"))
        .spawn({
            let control = Arc::clone(&control);
            move || {
                block_termination_signals();
                let r = worker(&session, &chan, &waker, &control);
                control.running.fetch_sub(1, Ordering::AcqRel);
                let _g = lock(&control.parked);
                control.cond.notify_all();
                if let Err(e) = &r {
                    log::error!("worker {i} stopped: {e}");
                }
                r
            }
        });
    if spawned.is_err() {
        control.running.fetch_sub(1, Ordering::AcqRel);
    }
    spawned
}

#[derive(Default)]
struct Control {
    /// Workers read with blocking `read(2)` and are woken by pokes.
    blocking: AtomicBool,
    /// The mountpoint and the device number of the mount's root, for pokes. No
    /// descriptor is kept open on the mount: it would keep a lazily unmounted
    /// connection alive and make a plain `umount` fail with EBUSY.
    root: Mutex<Option<(std::path::PathBuf, u64)>>,
    /// A poker thread is running.
    poking: AtomicBool,
    paused: AtomicBool,
    stop: AtomicBool,
    /// Set by [`Running::stop`]: the mount was released to another process.
    released: AtomicBool,
    /// A `/dev/fuse` worker delivered the INIT reply (the kernel has processed it).
    init_replied: AtomicBool,
    /// Requests served from io_uring entries.
    ring_requests: std::sync::atomic::AtomicU64,
    running: AtomicUsize,
    parked: Mutex<usize>,
    cond: Condvar,
    wakers: Mutex<Vec<Arc<Waker>>>,
}

impl Control {
    fn wake_all(&self) {
        for w in lock(&self.wakers).iter() {
            let _ = w.wake();
        }
    }

    /// True while some worker still has to see `paused` or `stop`.
    fn workers_to_reach(&self) -> bool {
        let running = self.running.load(Ordering::Acquire);
        if self.stop.load(Ordering::Acquire) {
            return running > 0;
        }
        self.paused.load(Ordering::Acquire) && *lock(&self.parked) < running
    }

    /// Wakes workers blocked in `read(2)` by poking the mount (see [`POKE_NAME`])
    /// from a helper thread, until every worker has parked or stopped. A poke sent
    /// while the last worker parks stays queued until the workers resume (or the
    /// process exits); it never blocks the caller.
    fn poke_workers(self: &Arc<Self>) {
        if !self.blocking.load(Ordering::Acquire) || self.poking.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some((path, dev)) = lock(&self.root).clone() else {
            self.poking.store(false, Ordering::Release);
            return;
        };
        let control = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("fuse-poker".into())
            .spawn(move || {
                block_termination_signals();
                while control.workers_to_reach() {
                    match open_root(&path, Some(dev)).and_then(|root| poke(&root)) {
                        Ok(()) => {}
                        Err(e) => {
                            log::warn!(
                                "waking a worker by a lookup in the mount's root failed: {e}"
                            );
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                control.poking.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.poking.store(false, Ordering::Release);
        }
    }
}

/// An `O_PATH` descriptor of the root of the mount at `path`; with `dev`, only if
/// it is still that mount (not another filesystem mounted over it).
fn open_root(path: &Path, dev: Option<u64>) -> io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    if let Some(dev) = dev {
        if nix::sys::stat::fstat(&fd)?.st_dev != dev {
            return Err(io::Error::other(
                "another filesystem is mounted over the mountpoint",
            ));
        }
    }
    Ok(fd)
}

/// One poke: a lookup of [`POKE_NAME`] in the root, which the session answers ENOENT
/// (the kernel does not cache the negative entry, so every poke is a request).
fn poke(root: &std::os::fd::OwnedFd) -> io::Result<()> {
    use nix::fcntl::AtFlags;
    match nix::sys::stat::fstatat(root, POKE_NAME, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Ok(_) => Err(io::Error::other("the poke name exists in the root")),
        Err(e) => Err(e.into()),
    }
}

/// A mount being served by worker threads.
pub struct Running<F: Filesystem> {
    session: Arc<Session<F>>,
    control: Arc<Control>,
    workers: Mutex<Vec<JoinHandle<io::Result<()>>>>,
    mount: Mutex<Option<Mount>>,
    /// A descriptor of the connection, to switch it to blocking reads.
    device: Channel,
    notifier: Notifier<F>,
    backend: Backend,
}

/// Workers stay parked while this guard lives (see [`Running::pause`]).
pub struct PauseGuard<'a> {
    control: &'a Control,
    /// How long parking took: the longest time a request could have waited.
    pub parked_in: Duration,
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        let _g = lock(&self.control.parked);
        self.control.paused.store(false, Ordering::Release);
        self.control.cond.notify_all();
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
            if self.control.running.load(Ordering::Acquire) == 0 || Instant::now() > deadline {
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
    /// registered its entries. Returns the number of queues.
    fn start_queues(&self, options: &UringOptions) -> Result<usize, ServeError> {
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
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
        for qid in 0..qid_max {
            let session = Arc::clone(&self.session);
            let control = Arc::clone(&self.control);
            let device = self.device.try_clone()?;
            let waker = Arc::new(Waker::new()?);
            lock(&control.wakers).push(Arc::clone(&waker));
            let tx = tx.clone();
            let depth = options.depth;
            let pin = options.pin;
            control.running.fetch_add(1, Ordering::AcqRel);
            let spawned = std::thread::Builder::new()
                .name(format!("fuse-uring-{qid}"))
                .spawn({
                    let control = Arc::clone(&control);
                    move || {
                        block_termination_signals();
                        if pin {
                            if let Err(e) = uring::pin_to_cpu(usize::from(qid)) {
                                log::debug!("cannot pin io_uring queue {qid} to its CPU: {e}");
                            }
                        }
                        let setup = UringQueue::new(device.as_fd(), qid, depth, payload_len)
                            .and_then(|mut q| q.register().map(|()| q));
                        let r = match setup {
                            Ok(mut queue) => {
                                drop(device);
                                let _ = tx.send(Ok(()));
                                drop(tx);
                                uring_worker(&session, &mut queue, &waker, &control)
                            }
                            Err(e) => {
                                let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                                Err(e)
                            }
                        };
                        control.running.fetch_sub(1, Ordering::AcqRel);
                        let _g = lock(&control.parked);
                        control.cond.notify_all();
                        if let Err(e) = &r {
                            log::error!("io_uring queue {qid} stopped: {e}");
                        }
                        r
                    }
                });
            match spawned {
                Ok(h) => lock(&self.workers).push(h),
                Err(e) => {
                    control.running.fetch_sub(1, Ordering::AcqRel);
                    return Err(e.into());
                }
            }
        }
        drop(tx);
        for _ in 0..queues {
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
            "serving through io_uring: {queues} queues of {} entries, {payload_len}-byte payload buffers",
            options.depth
        );
        Ok(queues)
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
        let root = match open_root(&mountpoint, None) {
            Ok(fd) => fd,
            Err(e) => {
                log::debug!("cannot open the mount's root ({e}): workers wait in epoll");
                return;
            }
        };
        let dev = match nix::sys::stat::fstat(&root) {
            Ok(st) => st.st_dev,
            Err(e) => {
                log::debug!("cannot stat the mount's root ({e}): workers wait in epoll");
                return;
            }
        };
        let before = self.session.stats().pokes.load(Ordering::Relaxed);
        let answered =
            poke(&root).is_ok() && self.session.stats().pokes.load(Ordering::Relaxed) > before;
        drop(root);
        if !answered {
            log::debug!("a poke was not answered by this session: workers wait in epoll");
            return;
        }
        if let Err(e) = self.device.set_nonblocking(false) {
            log::debug!("cannot clear O_NONBLOCK ({e}): workers wait in epoll");
            return;
        }
        *lock(&self.control.root) = Some((mountpoint, dev));
        self.control.blocking.store(true, Ordering::Release);
    }

    /// Parks every worker at a request boundary and returns once all are parked
    /// (or have exited). Nothing is in flight in this process while the guard lives.
    pub fn pause(&self) -> PauseGuard<'_> {
        let start = Instant::now();
        self.control.paused.store(true, Ordering::Release);
        self.control.wake_all();
        self.control.poke_workers();
        let mut parked = lock(&self.control.parked);
        while *parked < self.control.running.load(Ordering::Acquire) {
            parked = self
                .control
                .cond
                .wait_timeout(parked, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            self.control.wake_all();
            drop(parked);
            self.control.poke_workers();
            parked = lock(&self.control.parked);
        }
        PauseGuard {
            control: &self.control,
            parked_in: start.elapsed(),
        }
    }

    /// True while at least one worker serves.
    pub fn is_serving(&self) -> bool {
        self.control.running.load(Ordering::Acquire) > 0
    }

    /// Unmounts (lazily) and waits for the workers to see the connection end.
    ///
    /// The unmount is lazy: the mount leaves the namespace at once, but the kernel
    /// keeps the connection while files on it are open, and the workers go on
    /// serving them. If the connection has not ended after
    /// [`UNMOUNT_GRACE`], the workers are stopped anyway; when this process exits
    /// and its device fds close, the kernel ends the connection and such files fail
    /// with ENOTCONN, as with any FUSE daemon that exits.
    pub fn unmount(&self) -> Result<(), ServeError> {
        if self.control.blocking.load(Ordering::Acquire) && self.is_serving() {
            // Back to waker-driven waits while the mount can still be poked: after
            // the unmount, workers blocked in read(2) could only be woken by the end
            // of the connection, which files left open would postpone.
            let guard = self.pause();
            self.control.blocking.store(false, Ordering::Release);
            *lock(&self.control.root) = None;
            if let Err(e) = self.device.set_nonblocking(true) {
                log::warn!("cannot set O_NONBLOCK back before unmounting: {e}");
            }
            drop(guard);
        }
        if let Some(m) = lock(&self.mount).take() {
            m.unmount()?;
        }
        let deadline = Instant::now() + UNMOUNT_GRACE;
        while self.is_serving() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.is_serving() {
            log::warn!("files are still open on the unmounted filesystem: stopping anyway");
            self.control.stop.store(true, Ordering::Release);
            self.control.wake_all();
            self.control.poke_workers();
            let _g = lock(&self.control.parked);
            self.control.cond.notify_all();
        }
        self.join_workers();
        Ok(())
    }

    /// Runs `f` on the mount, while this process holds it (not after [`Running::stop`]
    /// or [`Running::unmount`]): e.g. to `dup` its descriptors for a live handoff.
    ///
    /// `None` as well when the mount is served through io_uring
    /// ([`Backend::Uring`]): its descriptors must not be handed to another process,
    /// which could not take over the registered ring entries (docs/DESIGN.md), so a
    /// handoff that asks for them is refused before anything is committed.
    pub fn with_mount<R>(&self, f: impl FnOnce(&Mount) -> R) -> Option<R> {
        if matches!(self.backend, Backend::Uring { .. }) {
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
    /// [`ServeError::Unsupported`] with the io_uring backend: closing the rings
    /// leaves the kernel's ring entries of this connection in the "in userspace"
    /// state, with no way for another process to register in their place, so the
    /// mount could not be served by anyone; it keeps being served by this process.
    pub fn try_stop(&self) -> Result<Option<Mount>, ServeError> {
        if matches!(self.backend, Backend::Uring { .. }) {
            return Err(ServeError::Unsupported(URING_NO_HANDOFF));
        }
        self.control.released.store(true, Ordering::Release);
        self.control.stop.store(true, Ordering::Release);
        self.control.wake_all();
        self.control.poke_workers();
        {
            let _g = lock(&self.control.parked);
            self.control.cond.notify_all();
        }
        self.join_workers();
        Ok(lock(&self.mount).take())
    }

    /// Waits until every worker has exited (the mount went away, or DESTROY).
    pub fn join(&self) {
        self.join_workers();
        self.session.shutdown();
    }

    fn join_workers(&self) {
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers {
            let _ = w.join();
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
            if !self.is_serving() {
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
        if self.control.released.load(Ordering::Acquire) {
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

/// Where an idle worker sleeps: an `epoll` instance of its own with the device
/// (`EPOLLEXCLUSIVE`: a request wakes one idle worker, not all) and its waker.
///
/// It also remembers whether the last read found the queue empty: a worker serving
/// one synchronous caller then waits first and reads once (two syscalls per request)
/// instead of read (EAGAIN), wait, read (three). A busy queue keeps reading first.
struct IdleWait {
    epoll: Epoll,
    was_idle: std::cell::Cell<bool>,
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
            was_idle: std::cell::Cell::new(false),
        })
    }

    /// Reads one request, or returns [`Received::Woken`] once `waker` fires: as
    /// [`Channel::read_or_wake`], but sleeping in [`IdleWait`] when the queue is empty.
    fn read(&self, chan: &Channel, buf: &mut [u8], waker: &Waker) -> io::Result<Received> {
        let mut wait = self.was_idle.get();
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
                    self.was_idle.set(wait);
                    return Ok(r);
                }
                None => wait = true,
            }
        }
    }
}

fn worker<F: Filesystem>(
    session: &Session<F>,
    chan: &Channel,
    waker: &Waker,
    control: &Control,
) -> io::Result<()> {
    let idle = IdleWait::new(chan, waker)?;
    let mut size = session.read_buffer_size();
    let mut req = RequestBuffer::with_len(size)?;
    let mut out = RequestBuffer::with_len(session.reply_buffer_size())?;
    // Until this worker has seen INIT answered: a local flag, so that the request
    // path reads no shared state for it afterwards.
    let mut init_replied = control.init_replied.load(Ordering::Acquire);
    loop {
        if control.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        if control.paused.load(Ordering::Acquire) {
            park(control, waker)?;
            continue;
        }
        let want = session.read_buffer_size();
        if want != size {
            size = want;
            req = RequestBuffer::with_len(size)?;
            out = RequestBuffer::with_len(session.reply_buffer_size())?;
        }
        let received = if control.blocking.load(Ordering::Acquire) {
            chan.read(&mut req)?
        } else {
            idle.read(chan, &mut req, waker)?
        };
        let n = match received {
            Received::Request(n) => n,
            Received::Woken => {
                if !control.paused.load(Ordering::Acquire) && !control.stop.load(Ordering::Acquire)
                {
                    waker.reset()?;
                }
                continue;
            }
            Received::Closed => {
                log::info!("the mount went away: worker exits");
                session.shutdown();
                control.stop.store(true, Ordering::Release);
                control.wake_all();
                return Ok(());
            }
        };
        match session.handle(&req[..n], &mut out) {
            Outcome::Reply(parts) => {
                let mut iov = [IoSlice::new(parts.header()); 3];
                let mut n = 1;
                for part in [parts.body(), parts.data()] {
                    if !part.is_empty() {
                        iov[n] = IoSlice::new(part);
                        n += 1;
                    }
                }
                match chan.write(&iov[..n]) {
                    Ok(WriteOutcome::Delivered) => {
                        if !init_replied && session.init_state().is_some() {
                            init_replied = true;
                            control.init_replied.store(true, Ordering::Release);
                        }
                    }
                    Ok(WriteOutcome::Gone) => {
                        log::debug!("reply not delivered: the request was interrupted");
                        if let Some(id) = parts.counted() {
                            session.reply_lost(id);
                        }
                    }
                    Ok(WriteOutcome::Closed) => {
                        session.shutdown();
                        control.stop.store(true, Ordering::Release);
                        control.wake_all();
                        return Ok(());
                    }
                    Err(e) => {
                        log::error!("writing a reply failed: {e}");
                        if let Some(id) = parts.counted() {
                            session.reply_lost(id);
                        }
                    }
                }
            }
            Outcome::NoReply => {}
            Outcome::Dropped(_) => {}
        }
        if session.is_destroyed() {
            control.stop.store(true, Ordering::Release);
            control.wake_all();
            return Ok(());
        }
    }
}

/// Parks the calling worker while `control.paused` (and not stopped).
fn park(control: &Control, waker: &Waker) -> io::Result<()> {
    let mut parked = lock(&control.parked);
    *parked += 1;
    control.cond.notify_all();
    while control.paused.load(Ordering::Acquire) && !control.stop.load(Ordering::Acquire) {
        parked = control.cond.wait(parked).unwrap_or_else(|p| p.into_inner());
    }
    *parked -= 1;
    drop(parked);
    waker.reset()
}

/// One io_uring queue's thread: wait for a request in one of the queue's entries,
/// hand it to the session, commit the reply (which fetches the next request: the
/// commit is submitted by the same `io_uring_enter` that waits).
fn uring_worker<F: Filesystem>(
    session: &Session<F>,
    queue: &mut UringQueue,
    waker: &Waker,
    control: &Control,
) -> io::Result<()> {
    // A request as the device would have delivered it: header, op struct, payload.
    let mut req = RequestBuffer::with_len(session.read_buffer_size() + abi_room())?;
    // Counted locally, published every 64 requests and when parking or leaving, so
    // that the queues of different CPUs do not share a cache line per request.
    let mut served = 0u64;
    let publish = |served: &mut u64| {
        control
            .ring_requests
            .fetch_add(std::mem::take(served), Ordering::Relaxed);
    };
    loop {
        if control.stop.load(Ordering::Acquire) {
            publish(&mut served);
            return Ok(());
        }
        if control.paused.load(Ordering::Acquire) {
            publish(&mut served);
            park(control, waker)?;
            continue;
        }
        if waker.is_woken() {
            // Woken for a pause or stop that has since ended: clear it.
            waker.reset()?;
            continue;
        }
        queue.arm_waker(waker.as_pollable())?;
        match queue.next_event()? {
            RingEvent::Request(i) => {
                served += 1;
                if served == 64 {
                    publish(&mut served);
                }
                serve_ring_request(session, queue, i, &mut req)?;
            }
            RingEvent::Woken => {}
            RingEvent::ReplyLost(id) => session.reply_lost(id),
            RingEvent::Closed => {
                log::info!("io_uring queue {}: the connection ended", queue.qid());
                publish(&mut served);
                session.shutdown();
                control.stop.store(true, Ordering::Release);
                control.wake_all();
                return Ok(());
            }
        }
        if session.is_destroyed() {
            control.stop.store(true, Ordering::Release);
            control.wake_all();
            return Ok(());
        }
    }
}

/// Room beyond the read buffer size for a request reassembled from a ring entry
/// (the op struct area and a page of slack).
fn abi_room() -> usize {
    fuse_wire::abi::FUSE_URING_OP_IN_OUT_SZ + crate::dev::page_size()
}

/// Answers the request in entry `i` of `queue`: exactly one commit per request.
fn serve_ring_request<F: Filesystem>(
    session: &Session<F>,
    queue: &mut UringQueue,
    i: usize,
    req: &mut [u8],
) -> io::Result<()> {
    let n = match queue.take_request(i, req) {
        Ok(n) => n,
        Err(e) => {
            session.stats().malformed.fetch_add(1, Ordering::Relaxed);
            log::warn!("unique={}: {e}: answering EIO", queue.commit_id(i));
            return queue.commit(i, Commit::Error(nix::libc::EIO));
        }
    };
    let space = queue.reply_space(i);
    let base = space.as_ptr() as usize;
    let len = space.len();
    let accepted = session.accept(&req[..n]);
    let outcome = session.call(
        &accepted,
        ReplySpace::with_data_at(space, uring::REPLY_DATA_AT).data_in_space(),
    );
    let commit = match session.respond(&accepted, outcome) {
        Outcome::Reply(parts) => {
            let placed = uring::Placed::of_range(&parts, base, len);
            match placed {
                Some(p) => Commit::Reply(p),
                None => {
                    log::error!("a reply is not in the ring entry's buffer: answering EIO");
                    if let Some(id) = parts.counted() {
                        session.reply_lost(id);
                    }
                    Commit::Error(nix::libc::EIO)
                }
            }
        }
        Outcome::NoReply => Commit::Empty,
        Outcome::Dropped(e) => {
            log::warn!("a request from an io_uring entry does not parse ({e}): answering EIO");
            Commit::Error(nix::libc::EIO)
        }
    };
    queue.commit(i, commit)
}
