//! Kernel passthrough backing files (protocol 7.40, Linux 6.9+).
//!
//! A filesystem that agreed `FUSE_PASSTHROUGH` in INIT (with a nonzero
//! `max_stack_depth`, and without `WRITEBACK_CACHE`) can register an open file with
//! the connection ([`backing_open`]) and answer OPEN or CREATE with
//! `FOPEN_PASSTHROUGH` and the returned id
//! ([`Opened::backing_id`](crate::Opened::backing_id)): the kernel then reads,
//! writes and maps that file itself, without sending READ or WRITE.
//!
//! The id belongs to the *connection*, not to the process that registered it: it
//! stays valid across a live handoff or a daemon crash for as long as the connection
//! lives, until [`backing_close`] (from any process holding a device fd of that
//! connection) or the end of the connection releases it. The kernel keeps its own
//! reference to the registered file, so the registering descriptor may be closed
//! right away.
//!
//! Kernel rules (`fs/fuse/backing.c`, `fs/fuse/iomode.c`, 6.18): registering needs
//! `CAP_SYS_ADMIN` in the initial user namespace (`EPERM` otherwise, and when
//! passthrough was not agreed); the file must support `read_iter`/`write_iter`
//! (`EOPNOTSUPP`) and sit on a filesystem stacked less deep than `max_stack_depth`
//! (`ELOOP`); `flags` must be 0. All passthrough opens of one FUSE inode must use the
//! same id at a time (`EBUSY` on open otherwise), and an inode open in passthrough
//! mode cannot be opened with page caching at the same time (`ETXTBSY`): open it
//! with `FOPEN_DIRECT_IO` instead.
//!
//! # References
//! - Linux `include/uapi/linux/fuse.h` (`struct fuse_backing_map`,
//!   `FUSE_DEV_IOC_BACKING_OPEN`, `FUSE_DEV_IOC_BACKING_CLOSE`)
//! - Linux `fs/fuse/backing.c`, `fs/fuse/passthrough.c`,
//!   Documentation/filesystems/fuse-passthrough.rst
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use fuse_wire::abi;
use zerocopy::byteorder::native_endian::{I32, U32, U64};

/// Registers `file` as a backing file with the connection of `device` (a
/// `/dev/fuse` descriptor of a mounted, initialized connection) and returns its
/// backing id (positive).
///
/// # Errors
/// The ioctl's errno: `EPERM` (passthrough not agreed, or no `CAP_SYS_ADMIN`),
/// `EOPNOTSUPP` (the file cannot be a backing file), `ELOOP` (stacked too deep),
/// `EINVAL`/`ENOTTY` (not a FUSE device, or a kernel without passthrough).
pub fn backing_open(device: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<i32> {
    let map = abi::fuse_backing_map {
        fd: I32::new(file.as_raw_fd()),
        flags: U32::new(0),
        padding: U64::new(0),
    };
    // SAFETY: FUSE_DEV_IOC_BACKING_OPEN is `_IOW(229, 1, struct fuse_backing_map)`:
    // the kernel copies 16 bytes from the pointer and writes nothing back. `map` is a
    // live `#[repr(C)]` struct of exactly those 16 bytes (fuse-wire checks the size
    // at compile time), borrowed for the duration of the call; `device` is an open
    // descriptor borrowed for the call.
    let r = unsafe {
        nix::libc::ioctl(
            device.as_raw_fd(),
            abi::FUSE_DEV_IOC_BACKING_OPEN as _,
            &map as *const abi::fuse_backing_map,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == 0 {
        // The kernel allocates ids from 1; 0 would mean "no backing file".
        return Err(io::Error::other("FUSE_DEV_IOC_BACKING_OPEN returned id 0"));
    }
    Ok(r)
}

/// Releases backing id `id` on the connection of `device`. Files already open with
/// it keep their own reference to the backing file.
///
/// # Errors
/// The ioctl's errno: `ENOENT` (no such id on this connection), `EPERM`.
pub fn backing_close(device: BorrowedFd<'_>, id: i32) -> io::Result<()> {
    let id: u32 = u32::try_from(id).map_err(|_| io::Error::from_raw_os_error(nix::libc::EINVAL))?;
    // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE is `_IOW(229, 2, uint32_t)`: the kernel
    // copies 4 bytes from the pointer. `id` is a live u32 borrowed for the call;
    // `device` is an open descriptor borrowed for the call.
    let r = unsafe {
        nix::libc::ioctl(
            device.as_raw_fd(),
            abi::FUSE_DEV_IOC_BACKING_CLOSE as _,
            &id as *const u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn not_a_fuse_device_is_an_error_not_a_crash() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(backing_open(f.as_fd(), f.as_fd()).is_err());
        assert!(backing_close(f.as_fd(), 1).is_err());
        assert_eq!(
            backing_close(f.as_fd(), -1).unwrap_err().raw_os_error(),
            Some(nix::libc::EINVAL)
        );
    }
}
