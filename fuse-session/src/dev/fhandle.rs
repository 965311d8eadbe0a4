//! File handles (`name_to_handle_at(2)`, `open_by_handle_at(2)`): a value that names
//! an inode of a filesystem without holding it open, and survives the process.
//!
//! A passthrough filesystem keeps these in its node values: the value can be saved
//! and sent to another process, which opens the same inode again with
//! [`open_by_handle`] (that needs `CAP_DAC_READ_SEARCH`). Not every filesystem
//! exports handles (`EOPNOTSUPP`: procfs, ramfs, many FUSE filesystems).
//!
//! # References
//! - `name_to_handle_at(2)`, `open_by_handle_at(2)`
//! - Linux `fs/fhandle.c`, Documentation/filesystems/nfs/exporting.rst
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `MAX_HANDLE_SZ` of `<linux/exportfs.h>`: the largest handle the kernel makes.
pub const MAX_HANDLE_SZ: usize = 128;

/// A `struct file_handle` with room for the largest handle: 8-byte header
/// (`u32 handle_bytes`, `i32 handle_type`), then the bytes; aligned as the
/// kernel's struct.
#[repr(C, align(8))]
struct HandleBuf([u8; 8 + MAX_HANDLE_SZ]);

impl HandleBuf {
    fn new(handle_bytes: u32, handle_type: i32) -> HandleBuf {
        let mut b = HandleBuf([0; 8 + MAX_HANDLE_SZ]);
        b.0[..4].copy_from_slice(&handle_bytes.to_ne_bytes());
        b.0[4..8].copy_from_slice(&handle_type.to_ne_bytes());
        b
    }

    fn header(&self) -> (u32, i32) {
        let h = &self.0;
        (
            u32::from_ne_bytes([h[0], h[1], h[2], h[3]]),
            i32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
        )
    }
}

/// An opaque file handle: its type and bytes, as the filesystem made them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileHandle {
    /// `handle_type` (filesystem-specific).
    pub handle_type: i32,
    /// `f_handle`, at most [`MAX_HANDLE_SZ`] bytes.
    pub bytes: Vec<u8>,
}

/// The handle of `path` relative to `dir` (with `flags`, e.g. `AT_EMPTY_PATH` and
/// an empty `path` for `dir` itself; symlinks are not followed unless
/// `AT_SYMLINK_FOLLOW`), and the mount id it belongs to.
///
/// # Errors
/// The call's errno: `EOPNOTSUPP` (the filesystem has no handles), `ENOENT`, ...
pub fn name_to_handle(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
) -> io::Result<(FileHandle, i32)> {
    // handle_bytes: in, the room; out, the handle's size.
    let mut buf = HandleBuf::new(MAX_HANDLE_SZ as u32, 0);
    let mut mount_id: nix::libc::c_int = 0;
    // SAFETY: `buf` is a `struct file_handle`, 8-byte aligned, 8 + MAX_HANDLE_SZ bytes long, with
    // `handle_bytes` set to MAX_HANDLE_SZ, so the kernel writes at most that many
    // bytes after the header (it fails with EOVERFLOW if the handle is larger).
    // `path` is a NUL-terminated string and `mount_id` a live int, both borrowed for
    // the call; `dir` is an open descriptor borrowed for the call.
    let r = unsafe {
        nix::libc::name_to_handle_at(
            dir.as_raw_fd(),
            path.as_ptr(),
            (&mut buf as *mut HandleBuf).cast::<nix::libc::file_handle>(),
            &mut mount_id,
            flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let (len, handle_type) = buf.header();
    let len = (len as usize).min(MAX_HANDLE_SZ);
    let bytes = buf.0[8..8 + len].to_vec();
    Ok((FileHandle { handle_type, bytes }, mount_id))
}

/// Opens the inode `handle` names, on the filesystem of `mount` (any descriptor on
/// it), with `flags` (`O_PATH`, `O_RDWR`, ...; `O_CLOEXEC` is always added).
/// Symlinks are opened as themselves (with `O_PATH`).
///
/// # Errors
/// `EINVAL` for a handle longer than [`MAX_HANDLE_SZ`] (untrusted input is refused
/// here), else the call's errno: `ESTALE` (the inode is gone), `EPERM` (no
/// `CAP_DAC_READ_SEARCH`), ...
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle: &FileHandle,
    flags: i32,
) -> io::Result<OwnedFd> {
    if handle.bytes.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(nix::libc::EINVAL));
    }
    let mut buf = HandleBuf::new(handle.bytes.len() as u32, handle.handle_type);
    buf.0[8..8 + handle.bytes.len()].copy_from_slice(&handle.bytes);
    // SAFETY: `buf` holds a complete `struct file_handle` (header, then
    // `handle_bytes` <= MAX_HANDLE_SZ bytes, all inside the buffer), 8-byte aligned,
    // borrowed for the call; the kernel only reads it. `mount` is an open
    // descriptor borrowed for the call.
    let fd = unsafe {
        nix::libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut buf as *mut HandleBuf).cast::<nix::libc::file_handle>(),
            flags | nix::libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_by_handle_at returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn round_trip_on_the_temp_dir() {
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        let (h, _mnt) = match name_to_handle(dir.as_fd(), c"", nix::libc::AT_EMPTY_PATH) {
            Ok(x) => x,
            Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => return,
            Err(e) => panic!("name_to_handle: {e}"),
        };
        assert!(h.bytes.len() <= MAX_HANDLE_SZ);
        match open_by_handle(dir.as_fd(), &h, nix::libc::O_PATH) {
            Ok(fd) => {
                use std::os::unix::fs::MetadataExt;
                let a = std::fs::metadata(std::env::temp_dir()).unwrap();
                let b = nix::sys::stat::fstat(fd.as_fd()).unwrap();
                assert_eq!((a.dev(), a.ino()), (b.st_dev, b.st_ino));
            }
            // Unprivileged: open_by_handle_at needs CAP_DAC_READ_SEARCH.
            Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::EPERM)),
        }
    }

    #[test]
    fn oversized_handles_are_refused() {
        let dir = std::fs::File::open("/").unwrap();
        let h = FileHandle {
            handle_type: 1,
            bytes: vec![0; MAX_HANDLE_SZ + 1],
        };
        let e = open_by_handle(dir.as_fd(), &h, nix::libc::O_PATH).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EINVAL));
    }
}
