//! The `/dev/fuse` worker pool: as many workers as the process has usable CPUs
//! (at most the number asked), and more, up to that number, only when a worker is
//! stuck in a request (blocked in the filesystem, or busy with one request for
//! long) while no other worker waits on the device.
//!
//! # Why not libfuse's rule
//!
//! libfuse starts another worker whenever one takes a request and none is left
//! waiting on the device. For a single synchronous caller that is two workers at
//! once, and on one CPU two workers waiting on the device cost as much as four:
//! the kernel wakes the worker that has waited longest (`fuse_dev_do_read` sleeps
//! exclusively, first in first out), not the one that just wrote the reply and
//! would have found the next request without sleeping, so every request pays a
//! wake-up and a switch to another thread (docs/DESIGN.md, "The `/dev/fuse`
//! worker pool", has the figures). Idle workers are the cost, so this pool keeps
//! none beyond one per CPU, and a *watcher* thread adds one when a request would
//! otherwise wait behind a worker that cannot serve it.
//!
//! # The watcher
//!
//! Every [`TICK`] while requests are served (and dozing otherwise, woken by
//! the next request: [`Control::request_entered`]), the watcher looks at the
//! workers' published phases. It starts a worker when no worker waits on the
//! device and one has been in the same request since the last tick and is either
//! asleep in the kernel (its thread's state in `/proc` is `S` or `D`: blocked in
//! the filesystem) or has been in it for [`LONG`]. A worker preempted in the middle
//! of a fast request (state `R`, a busy machine) is not a reason. Workers are only
//! started while the mode is [`Mode::Serving`], under the lock that changes the
//! mode: a pause never sees one appear, and a stop never leaves one behind.
//!
//! # Retiring
//!
//! When no look has seen that need for [`RETIRE_AFTER`], the watcher asks the
//! workers beyond the first ones to leave ([`Control::take_retirement`]): each
//! leaves at its next request boundary while serving. A retired worker's index,
//! and with it its request slot, goes to the next worker started.
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::dev::{Channel, RequestSlots};
use crate::fs::Filesystem;
use crate::proto::session::lock;
use crate::proto::Session;
use crate::serve::control::{Control, Mode, Phase, WorkerSlot};

/// How often the watcher looks while requests are served. Each look is a timed
/// wake-up of the watcher (about 20 µs of CPU in a KVM guest): at 1 ms that was
/// 3.6 % of a busy worker's CPU, at 5 ms it is under 1 %.
pub(crate) const TICK: Duration = Duration::from_millis(5);

/// How long one request may keep a running (not sleeping) worker before the
/// watcher starts another.
pub(crate) const LONG: Duration = Duration::from_millis(50);

/// How long the watcher dozes when no request was in progress over a tick (a
/// request that enters wakes it sooner).
const DOZE: Duration = Duration::from_millis(200);

/// How long no request may have needed an extra worker before the extra
/// workers retire.
const RETIRE_AFTER: Duration = Duration::from_secs(2);

/// The join handles of a mount's threads (workers, queue threads, the watcher).
pub(crate) type Handles = Arc<Mutex<Vec<JoinHandle<io::Result<()>>>>>;

/// What the watcher needs to start `/dev/fuse` workers, and the ones it started.
pub(crate) struct Pool<F: Filesystem> {
    pub(crate) session: Arc<Session<F>>,
    pub(crate) control: Arc<Control>,
    pub(crate) channel: Channel,
    pub(crate) slots: Option<Arc<RequestSlots>>,
    pub(crate) handles: Handles,
    /// Worker `i`'s published slot (None: never started); a worker whose thread
    /// ended leaves its index (and request slot) to the next one.
    pub(crate) workers: Vec<Option<Arc<WorkerSlot>>>,
    /// How many workers to keep (one per usable CPU, at most `max`).
    pub(crate) base: usize,
}

/// How many workers to start at once for `max` asked: one per usable CPU.
pub(crate) fn initial_workers(max: usize) -> usize {
    max.max(1).min(super::usable_cpus())
}

impl<F: Filesystem> Pool<F> {
    /// A pool of at most `max` workers (none started yet).
    pub(crate) fn new(
        session: &Arc<Session<F>>,
        control: &Arc<Control>,
        channel: &Channel,
        slots: Option<Arc<RequestSlots>>,
        handles: Handles,
        max: usize,
    ) -> io::Result<Pool<F>> {
        let max = max.max(1);
        Ok(Pool {
            session: Arc::clone(session),
            control: Arc::clone(control),
            channel: channel.try_clone()?,
            slots,
            handles,
            workers: vec![None; max],
            base: initial_workers(max),
        })
    }

    /// Workers whose thread has not ended.
    fn live(&self) -> usize {
        self.workers
            .iter()
            .flatten()
            .filter(|w| w.phase() != Phase::Exited)
            .count()
    }

    /// Starts workers until `n` live (the first ones: at once, before INIT).
    pub(crate) fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.live() < n.min(self.workers.len()) {
            self.start_one()?;
        }
        Ok(())
    }

    /// Counts worker `i` as started by someone else (the worker that answers
    /// INIT before io_uring falls back to `/dev/fuse`).
    pub(crate) fn adopt(&mut self, i: usize, slot: Arc<WorkerSlot>) {
        if let Some(w) = self.workers.get_mut(i) {
            *w = Some(slot);
        }
    }

    /// Starts a worker at the first free index (with its request slot, if any).
    fn start_one(&mut self) -> io::Result<()> {
        let Some(i) = self
            .workers
            .iter()
            .position(|w| !w.as_ref().is_some_and(|w| w.phase() != Phase::Exited))
        else {
            return Ok(());
        };
        let request_slot = match &self.slots {
            Some(s) if i < s.len() => Some(s.buffer(i as u32)?),
            Some(s) => {
                log::warn!(
                    "{} request slots for up to {} workers: worker {i}'s requests are not \
                     kept for crash recovery",
                    s.len(),
                    self.workers.len()
                );
                None
            }
            None => None,
        };
        // Threads that ended (retired workers) are done with.
        lock(&self.handles).retain(|h| !h.is_finished());
        self.control.prune_exited();
        let (h, slot) =
            super::spawn_worker(i, &self.session, &self.channel, &self.control, request_slot)?;
        lock(&self.handles).push(h);
        self.workers[i] = Some(slot);
        Ok(())
    }

    /// Starts the watcher thread if more workers than the first may be needed.
    pub(crate) fn watch(self) -> io::Result<()> {
        if self.base >= self.workers.len() {
            return Ok(());
        }
        let handles = Arc::clone(&self.handles);
        let control = Arc::clone(&self.control);
        let h = std::thread::Builder::new()
            .name("fuse-pool".into())
            .spawn(move || {
                super::block_termination_signals();
                // A panic here would leave the mount without extra workers: it
                // ends the session as a worker's does (serve/mod.rs, "When a
                // serving thread ends unexpectedly").
                if let Err(p) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()))
                {
                    let msg = crate::proto::step::panic_message(p.as_ref());
                    control.fail("fuse-pool", &io::Error::other(format!("panicked: {msg}")));
                }
                Ok(())
            })?;
        lock(&handles).push(h);
        Ok(())
    }

    /// The watcher's loop; returns when the workers leave.
    fn run(mut self) {
        let control = Arc::clone(&self.control);
        // Per worker index, the unique it served at the last look and for how
        // many looks in a row.
        let mut seen: Vec<(u64, u32)> = vec![(0, 0); self.workers.len()];
        let long_ticks = (LONG.as_micros() / TICK.as_micros()).max(1) as u32;
        let mut quiet = false;
        let mut last_need = Instant::now();
        loop {
            if !control.pool_wait(if quiet { DOZE } else { TICK }, quiet) {
                return;
            }
            let mut idle = 0;
            let mut busy = 0;
            let mut moved = false;
            let mut stuck = false;
            for (w, s) in self.workers.iter().zip(seen.iter_mut()) {
                let Some(w) = w else { continue };
                // The phase first: `enter` publishes the unique before the phase.
                let phase = w.phase();
                let u = w.unique();
                let changed = s.0 != u;
                if changed {
                    moved = true;
                    *s = (u, 0);
                }
                match phase {
                    Phase::Waiting | Phase::Blocked => idle += 1,
                    Phase::InRequest => {
                        busy += 1;
                        if !changed {
                            s.1 = s.1.saturating_add(1);
                        }
                        // In the same request since the last look.
                        if s.1 > 0 {
                            stuck |= s.1 >= long_ticks || w.sleeps();
                        }
                    }
                    Phase::Parked | Phase::Exited => {}
                }
            }
            // Doze only when no request was served since the last look either.
            quiet = busy == 0 && !moved;
            let live = self.live();
            if idle == 0 && stuck {
                last_need = Instant::now();
                // Whatever was asked to retire is needed after all.
                control.retire.store(0, Ordering::Relaxed);
                if live < self.workers.len() {
                    match control.if_serving(|| self.start_one()) {
                        Some(Ok(())) => log::debug!(
                            "worker pool: a request is held and no worker waits on the \
                             device: {} workers of at most {}",
                            live + 1,
                            self.workers.len()
                        ),
                        Some(Err(e)) => log::error!("worker pool: cannot start a worker: {e}"),
                        None => {}
                    }
                }
            } else if live > self.base
                && last_need.elapsed() >= RETIRE_AFTER
                && control.retire.load(Ordering::Relaxed) == 0
            {
                // The extra workers were not needed for a while: each leaves
                // after its next request (an idle one costs nothing until then).
                last_need = Instant::now();
                control.retire.store(live - self.base, Ordering::Relaxed);
                log::debug!(
                    "worker pool: no request held for {RETIRE_AFTER:?}: {} extra workers retire",
                    live - self.base
                );
            }
        }
    }
}

impl Control {
    /// The watcher waits `step` (or, `dozing`, until a request enters); false when
    /// the workers are leaving.
    fn pool_wait(&self, step: Duration, dozing: bool) -> bool {
        let g = lock(&self.park_lock);
        if self.mode().is_leaving() {
            return false;
        }
        if dozing {
            self.pool_dozing.store(true, Ordering::Relaxed);
        }
        let _g = self
            .cond
            .wait_timeout(g, step)
            .unwrap_or_else(|p| p.into_inner());
        self.pool_dozing.store(false, Ordering::Relaxed);
        !self.mode().is_leaving()
    }

    /// Runs `f` while holding the lock that changes the mode, if the workers serve.
    fn if_serving<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let _g = lock(&self.park_lock);
        (self.mode() == Mode::Serving).then(f)
    }
}

impl WorkerSlot {
    /// True if the worker's thread sleeps in the kernel (state `S` or `D` in
    /// `/proc`); false when it runs, or when its state cannot be read.
    fn sleeps(&self) -> bool {
        let Some(tid) = self.tid() else {
            return false;
        };
        std::fs::read(format!("/proc/self/task/{tid}/stat")).is_ok_and(|s| stat_sleeps(&s))
    }
}

/// True if a `/proc/.../stat` line says the task sleeps (state `S` or `D`). The
/// name can hold anything (spaces, parentheses), so the state is the first field
/// after the last `)`.
fn stat_sleeps(stat: &[u8]) -> bool {
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    matches!(
        stat.get(close + 1..)
            .and_then(|r| r.iter().find(|b| **b != b' ')),
        Some(b'S' | b'D')
    )
}

#[cfg(test)]
mod tests {
    use super::stat_sleeps;

    #[test]
    fn the_state_is_read_after_the_last_parenthesis() {
        assert!(stat_sleeps(b"12 (fuse-worker-0) S 1 2 3"));
        assert!(stat_sleeps(b"12 (a) R (b) D 1"));
        assert!(!stat_sleeps(b"12 (x) S) R 1 2"));
        assert!(!stat_sleeps(b"12 (fuse-worker-0) R 1"));
        assert!(!stat_sleeps(b"12 (no end"));
        assert!(!stat_sleeps(b"12 (x)"));
        assert!(!stat_sleeps(b""));
    }
}
