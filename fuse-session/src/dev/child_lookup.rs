//! A lookup made by a short-lived child process that shares this one's memory
//! (`clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does), for requests that must
//! not be a thread of this process: see [`lookup_in_child`].
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::libc;

/// Looks `name` up in the directory `dir` (`fstatat`, not following a symlink) from a
/// child process, and returns what the lookup returned: `Ok(())` if the name
/// exists, else its errno.
///
/// The child shares this process's memory and runs only async-signal-safe system
/// calls on a stack made here; this thread sleeps until it exits (`CLONE_VFORK`),
/// then reaps it. Before the lookup the child closes every descriptor but `dir`
/// (its own copies).
///
/// Why a child: a caller whose FUSE request has been read by the daemon waits for
/// the answer uninterruptibly, even when killed (the kernel's
/// `request_wait_answer`). When that caller is a thread of the daemon itself and the
/// daemon is being killed, the thread can never finish, so neither can the process:
/// its supervisor never sees it die and restarts nothing (the serving pokes found
/// this). A child waits alone: the daemon dies (this thread's wait for the child is
/// killable), the supervisor restarts it, and the new daemon answers the request
/// when the kernel resends it. Without a supervisor, the dying daemon's descriptors
/// are the connection's last ones (the child closed its copies): the connection
/// ends, and the child's request with it.
///
/// # Errors
/// The lookup's errno, or `clone(2)`'s.
pub fn lookup_in_child(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    in_child(dir, Some(name), None)
}

/// A `fstatfs` of `dir` from a child process (as [`lookup_in_child`]) that first
/// pins itself to `cpu`: the request is queued on that CPU's fuse-over-io_uring
/// queue (the kernel picks the queue by the caller's CPU), which pulls the
/// requests waiting there. No directory lock is taken.
///
/// # Errors
/// `EINVAL` if the CPU cannot be used; the `fstatfs` errno.
pub fn statfs_in_child_on(dir: BorrowedFd<'_>, cpu: usize) -> io::Result<()> {
    in_child(dir, None, Some(cpu))
}

fn in_child(dir: BorrowedFd<'_>, name: Option<&CStr>, cpu: Option<usize>) -> io::Result<()> {
    let mut set: libc::cpu_set_t = unsafe_zeroed_cpu_set();
    if let Some(c) = cpu {
        if c >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `c` is within the set's bits (checked above).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let mut stack = vec![0u8; 64 << 10];
    let mut child = Child {
        dir: dir.as_raw_fd(),
        name: name.map_or(std::ptr::null(), CStr::as_ptr),
        cpus: if cpu.is_some() {
            &set
        } else {
            std::ptr::null()
        },
        errno: 0,
    };
    let arg: *mut Child = &mut child;
    let top = stack.as_mut_ptr().wrapping_add(stack.len());
    let top = top.wrapping_sub(top as usize % 16);
    // SAFETY: the child runs `child_main` on `stack`, which outlives it: with
    // CLONE_VFORK this thread sleeps until the child has exited, and if this process
    // is killed meanwhile the memory stays mapped for the child, which shares it.
    // The child makes only async-signal-safe system calls on `child`'s fields,
    // prepared here, and writes one integer into it, read here after it exited.
    let pid = unsafe {
        libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK,
            arg.cast(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // A clone child with no exit signal is reaped with __WCLONE.
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::__WCLONE),
    );
    drop(stack);
    match child.errno {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// What the child needs, and where it leaves the lookup's errno.
#[repr(C)]
struct Child {
    dir: libc::c_int,
    /// Null: `fstatfs` instead of a lookup.
    name: *const libc::c_char,
    /// Not null: pin the child to these CPUs first.
    cpus: *const libc::cpu_set_t,
    errno: libc::c_int,
}

fn unsafe_zeroed_cpu_set() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is an array of integers: all zeroes is the empty set.
    unsafe { std::mem::zeroed() }
}

/// The child's whole life: close every descriptor but the directory's, pin itself
/// if asked, look the name up (or `fstatfs` the directory), leave the errno (0 if
/// it worked), exit.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    let child = arg.cast::<Child>();
    // SAFETY: `arg` is the `Child` the parent made and keeps alive until this child
    // has exited; only async-signal-safe system calls follow (close_range,
    // sched_setaffinity, fstatat or fstatfs)
    // on a descriptor and a C string the parent prepared. `close_range` failing
    // (before Linux 5.9) only leaves the copies open.
    unsafe {
        let fd = (*child).dir;
        if fd > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (fd - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (fd + 1) as u32, u32::MAX, 0u32);
        if !(*child).cpus.is_null()
            && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), (*child).cpus)
                != 0
        {
            (*child).errno = *libc::__errno_location();
            return 0;
        }
        let r = if (*child).name.is_null() {
            let mut sf = std::mem::MaybeUninit::<libc::statfs>::uninit();
            libc::fstatfs(fd, sf.as_mut_ptr())
        } else {
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            libc::fstatat(
                fd,
                (*child).name,
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        (*child).errno = if r == 0 { 0 } else { *libc::__errno_location() };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn finds_and_misses_names_like_fstatat() {
        let dir = std::fs::File::open("/").unwrap();
        assert!(lookup_in_child(dir.as_fd(), c"proc").is_ok());
        let e = lookup_in_child(dir.as_fd(), c"no such name here").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
