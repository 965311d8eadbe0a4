//! Thread CPU priority, so that background work (a handoff's pre-copy, while the
//! mount is served) yields the CPU to the threads that serve.
use std::io;

/// The nice value [`background`] runs its work at.
pub const BACKGROUND_NICE: i32 = 10;

/// Sets the calling thread's nice value (Linux keeps one per thread; -20 to 19,
/// higher is lower priority). Raising it needs no privilege; lowering it below what
/// it was needs `CAP_SYS_NICE`, so call this on a thread made for the purpose.
///
/// # Errors
/// The `setpriority(2)` error (`EACCES`, `EPERM`).
///
/// # References
/// - `setpriority(2)` ("the nice value is a per-thread attribute" on Linux),
///   `sched(7)`
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    let who = nix::libc::id_t::try_from(tid).map_err(|_| io::Error::other("negative tid"))?;
    // SAFETY: setpriority(2) takes three integers and reads or writes no memory of
    // this process; with PRIO_PROCESS and a thread id Linux changes only that thread.
    let r = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, who, nice) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs `f` on a new thread at nice [`BACKGROUND_NICE`] and returns its result:
/// for CPU-heavy work that should not delay serving. If the priority cannot be
/// changed, `f` runs at the normal one.
pub fn background<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let _ = set_thread_nice(BACKGROUND_NICE);
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
